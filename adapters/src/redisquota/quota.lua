-- mixr redisquota: one atomic allocation. Mirrors adapters/src/quota/window.rs.
-- KEYS[1] counter hash, KEYS[2] bucket sorted set, KEYS[3] dedup record (same hash tag).
-- ARGV: algorithm ("rolling"|"fixed"), max, window_us, bucket_us, amount, best_effort
--       ("1"|"0"), dedup_ttl_ms ("0" = no dedup).
-- Returns {granted, remaining, reset_us}. Time is Redis's own clock, not the caller's.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local dedup_ttl = tonumber(ARGV[7])

if dedup_ttl > 0 then
  local earlier = redis.call('GET', KEYS[3])
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
  local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or '0')
  local expire = tonumber(redis.call('HGET', KEYS[1], 'expire') or '0')
  if now >= expire then
    tokens = 0
    expire = now + window
  end
  granted = decide(tokens)
  tokens = tokens + granted
  redis.call('HSET', KEYS[1], 'tokens', tokens, 'expire', expire)
  redis.call('PEXPIRE', KEYS[1], math.floor((expire - now) / 1000) + 1000)
  remaining = max - tokens
  reset = expire - now
else
  -- A grant in bucket b counts until tick b + 1 + n: a full window after it, at most one
  -- bucket more.
  local n = math.ceil(window / bucket)
  local tick = math.floor(now / bucket)
  local sum = tonumber(redis.call('HGET', KEYS[1], 'sum') or '0')
  local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', tick - 1 - n)
  for _, b in ipairs(old) do
    sum = sum - tonumber(redis.call('HGET', KEYS[1], 'b' .. b) or '0')
    redis.call('HDEL', KEYS[1], 'b' .. b)
  end
  if #old > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tick - 1 - n)
  end
  granted = decide(sum)
  if granted > 0 then
    redis.call('HINCRBY', KEYS[1], 'b' .. tick, granted)
    redis.call('ZADD', KEYS[2], tick, tick)
    sum = sum + granted
  end
  redis.call('HSET', KEYS[1], 'sum', sum)
  local ttl = math.floor((window + bucket) / 1000) * 2 + 1000
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  remaining = max - sum
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #oldest > 0 then
    reset = (tonumber(oldest[1]) + 1 + n) * bucket - now
  else
    reset = 0
  end
end
if remaining < 0 then remaining = 0 end

if dedup_ttl > 0 then
  redis.call('SET', KEYS[3], granted .. ',' .. remaining .. ',' .. reset, 'PX', dedup_ttl)
end
return {granted, remaining, reset}
