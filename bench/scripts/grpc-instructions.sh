#!/usr/bin/env bash
# User-space instructions per gRPC call, counted by callgrind, for the no-op tonic server
# and mixr: Envoy RLS (memquota, and redisquota fixed and rolling windows), ext_authz and
# Mixer Check (50 rules, a 10,000-entry list), the request bodies `mixr-bench h2load`
# sends. Each server answers 2,000 and then 12,000 calls from h2load (one connection,
# 64 streams); the difference over 10,000 leaves start-up out. Unlike CPU time, the count
# repeats from run to run whatever else the machine does. Kernel work is not counted.
#
#   apt-get install -y valgrind nghttp2-client
#   cargo build --release --bins && bash bench/scripts/grpc-instructions.sh [target...]
#
# Targets: noop-rls mixr-rls mixr-rls-fixed mixr-rls-rolling noop-authz mixr-authz
# noop-check mixr-check (default: all). MIXR names another mixr binary; CALLGRIND_OPTS adds callgrind options; KEEP=dir
# keeps each run's callgrind output there (for callgrind_annotate).
set -euo pipefail
BIN=${BIN:-target/release}
MIXR=${MIXR:-$BIN/mixr}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
"$BIN/mixr-bench" h2load --write-files "$WORK"

# count <requests> <name> <path> <body> <command...>: instructions of the command's run.
count() {
  local n=$1 name=$2 path=$3 body=$4; shift 4
  rm -f "$WORK/addr"
  TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind ${CALLGRIND_OPTS:-} --callgrind-out-file="$WORK/cg.out" \
    "$@" --addr-file "$WORK/addr" 2>/dev/null &
  local pid=$!
  for _ in $(seq 300); do [ -s "$WORK/addr" ] && break; sleep 0.2; done
  local addr
  addr=$(grep -o 'grpc=[^ ]*' "$WORK/addr" | cut -d= -f2)
  h2load -n "$n" -c 1 -m 64 --data="$body" -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://$addr$path" | grep -q "$n succeeded" || echo "warning: not all of $n succeeded" >&2
  kill -TERM $pid; wait $pid || true
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$WORK"/cg.out* "$KEEP/$name.$n.out"; fi
  awk '/^summary/{print $2}' "$WORK"/cg.out*; rm -f "$WORK"/cg.out*
}
per_call() {
  local a b
  a=$(count 2000 "$@"); b=$(count 12000 "$@")
  echo $(( (b - a) / 10000 ))
}
RLS=/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit
AUTHZ=/envoy.service.auth.v3.Authorization/Check
CHECK=/istio.mixer.v1.Mixer/Check
noop=("$BIN/mixr-bench" noop-server)
mixr() { echo "$MIXR serve --grpc-addr=127.0.0.1:0 --monitoring-addr=127.0.0.1:0 --no-watch --log-level=warn --config $WORK/$1"; }
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(noop-rls mixr-rls mixr-rls-fixed mixr-rls-rolling noop-authz mixr-authz noop-check mixr-check)
printf '%-18s %10s\n' target instr/call
for t in "${targets[@]}"; do
  case $t in
    noop-rls) r=$(per_call "$t" $RLS "$WORK/rls.bin" "${noop[@]}") ;;
    mixr-rls) r=$(per_call "$t" $RLS "$WORK/rls.bin" $(mixr rls-memquota.yaml)) ;;
    mixr-rls-fixed) r=$(per_call "$t" $RLS "$WORK/rls.bin" $(mixr rls-redis-fixed.yaml)) ;;
    mixr-rls-rolling) r=$(per_call "$t" $RLS "$WORK/rls.bin" $(mixr rls-redis-rolling.yaml)) ;;
    noop-authz) r=$(per_call "$t" $AUTHZ "$WORK/authz.bin" "${noop[@]}") ;;
    mixr-authz) r=$(per_call "$t" $AUTHZ "$WORK/authz.bin" $(mixr check.yaml)) ;;
    noop-check) r=$(per_call "$t" $CHECK "$WORK/check.bin" "${noop[@]}") ;;
    mixr-check) r=$(per_call "$t" $CHECK "$WORK/check.bin" $(mixr check.yaml)) ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
  printf '%-18s %10d\n' "$t" "$r"
done
