-- mixr redisquota: one atomic allocation. Mirrors adapters/src/quota/window.rs.
-- KEYS[1] counter hash, KEYS[2] dedup record (same hash tag).
-- ARGV: algorithm ("rolling"|"fixed"), max, window_us, bucket_us, amount, best_effort
--       ("1"|"0"), dedup_ttl_ms ("0" = no dedup).
-- Returns {granted, remaining, reset_us}. Time is Redis's own clock, not the caller's.
--
-- Redis's CPU is what every replica shares, and each redis.call costs it about a
-- microsecond on top of the script's own start: the common paths below make 2 to 4 calls
-- (TIME, one read of every field they need, and writes only when something changed).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local dedup_ttl = tonumber(ARGV[7])

if dedup_ttl > 0 then
  local earlier = redis.call('GET', KEYS[2])
  if earlier then
    local g, r, z = string.match(earlier, '(%-?%d+),(%-?%d+),(%-?%d+)')
    return {tonumber(g), tonumber(r), tonumber(z)}
  end
end

local max = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local bucket = tonumber(ARGV[4])
local amount = tonumber(ARGV[5])
local best_effort = ARGV[6] == '1'

local function decide(used)
  local available = max - used
  if available < 0 then available = 0 end
  if amount <= available then return amount end
  if best_effort then return available end
  return 0
end

local granted, remaining, reset
if ARGV[1] == 'fixed' then
  -- Fields: tokens (granted in this window), expire (its end, in Redis µs). The key lives
  -- a second past the window's end; a window's expiry is set once, when it starts.
  local v = redis.call('HMGET', KEYS[1], 'tokens', 'expire')
  local tokens = tonumber(v[1] or '0')
  local expire = tonumber(v[2] or '0')
  if now >= expire then
    tokens = 0
    expire = now + window
    granted = decide(0)
    redis.call('HSET', KEYS[1], 'tokens', granted, 'expire', expire)
    redis.call('PEXPIRE', KEYS[1], math.floor(window / 1000) + 1000)
  else
    granted = decide(tokens)
    if granted > 0 then
      redis.call('HINCRBY', KEYS[1], 'tokens', granted)
    end
  end
  tokens = tokens + granted
  remaining = max - tokens
  reset = expire - now
else
  -- Fields: sum (of the live buckets), lo and hi (the oldest and newest bucket holding
  -- grants), b<tick> (grants in that bucket). A grant in bucket b counts until tick
  -- b + 1 + n: a full window after it, at most one bucket more. One key holds it all
  -- (earlier versions kept the ticks in a second key, a sorted set), and buckets are
  -- retired from lo.
  local n = math.ceil(window / bucket)
  local tick = math.floor(now / bucket)
  local cutoff = tick - 1 - n -- buckets at or before this no longer count
  local v = redis.call('HMGET', KEYS[1], 'sum', 'lo', 'hi', 'b' .. tick)
  local sum = tonumber(v[1] or '0')
  local lo = tonumber(v[2])
  local hi = tonumber(v[3])
  local current = tonumber(v[4] or '0')
  -- A counter an older mixr wrote has a sum but no lo: its buckets are read whole.
  local legacy = not lo and sum ~= 0
  local changed = false
  if legacy or (lo and lo <= cutoff) then
    changed = true
    if not legacy and hi <= cutoff then
      -- Every bucket retired: start over.
      redis.call('DEL', KEYS[1])
      sum, lo, hi, current = 0, nil, nil, 0
    else
      -- Retire the buckets up to cutoff, and find the oldest and newest left. Live
      -- buckets span at most n + 2 ticks; a long span (tiny buckets) is read as the
      -- whole hash rather than tick by tick.
      local found = {}
      if not legacy and hi - lo < 64 then
        local fields = {}
        for b = lo, hi do fields[#fields + 1] = 'b' .. b end
        local vals = redis.call('HMGET', KEYS[1], unpack(fields))
        for i = 1, #fields do
          if vals[i] then found[#found + 1] = {lo + i - 1, tonumber(vals[i])} end
        end
      else
        local all = redis.call('HGETALL', KEYS[1])
        for i = 1, #all, 2 do
          local b = string.match(all[i], '^b(%-?%d+)$')
          if b then found[#found + 1] = {tonumber(b), tonumber(all[i + 1])} end
        end
      end
      local retired = {}
      lo, hi = nil, nil
      for _, e in ipairs(found) do
        if e[1] <= cutoff then
          sum = sum - e[2]
          retired[#retired + 1] = 'b' .. e[1]
        else
          if not lo or e[1] < lo then lo = e[1] end
          if not hi or e[1] > hi then hi = e[1] end
        end
      end
      if #retired > 0 then redis.call('HDEL', KEYS[1], unpack(retired)) end
      -- No bucket left: nothing counts, whatever the sum said.
      if not lo then sum = 0 end
    end
  end
  granted = decide(sum)
  if granted > 0 then
    sum = sum + granted
    if not lo or tick < lo then lo = tick end
    if not hi or tick > hi then hi = tick end
    redis.call('HSET', KEYS[1], 'sum', sum, 'lo', lo, 'hi', hi, 'b' .. tick, current + granted)
    redis.call('PEXPIRE', KEYS[1], math.floor((window + bucket) / 1000) * 2 + 1000)
  elseif changed and lo then
    redis.call('HSET', KEYS[1], 'sum', sum, 'lo', lo, 'hi', hi)
  elseif changed then
    redis.call('DEL', KEYS[1])
  end
  remaining = max - sum
  if lo then
    reset = (lo + 1 + n) * bucket - now
  else
    reset = 0
  end
end
if remaining < 0 then remaining = 0 end

if dedup_ttl > 0 then
  redis.call('SET', KEYS[2], granted .. ',' .. remaining .. ',' .. reset, 'PX', dedup_ttl)
end
return {granted, remaining, reset}
