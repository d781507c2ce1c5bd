#!/usr/bin/env bash
# User-space instructions per proxied HTTP/1.1 request, counted by callgrind: unlike
# requests/s, the count repeats from run to run whatever else the machine does. For
# mixr-proxy (outbound routing, inbound, inbound with policy answered from the check
# cache, the same with Reports to mixr) and nginx (one worker, keep-alive upstream), each serving 2,000 and then 12,000
# requests from h2load (8 connections); the difference over 10,000 leaves start-up out.
# Kernel work (the same system calls for both) and waiting are not counted.
#
#   apt-get install -y valgrind nginx-light nghttp2-client
#   cargo build --profile dist --bins && bash bench/scripts/proxy-instructions.sh
set -euo pipefail
BIN=${BIN:-target/dist}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT

"$BIN/mixr-bench" origin-server --addr-file "$WORK/origin.addr" &
for _ in $(seq 50); do [ -s "$WORK/origin.addr" ] && break; sleep 0.1; done
ORIGIN=$(grep -o 'http=[^ ]*' "$WORK/origin.addr" | cut -d= -f2)
cat > "$WORK/traffic.yaml" <<YAML
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: origin}
spec:
  hosts: [origin]
  ports: [{number: 80, name: http}]
  endpoints: [{address: 127.0.0.1, ports: {http: ${ORIGIN##*:}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: origin}
spec:
  hosts: [origin]
  http:
  - route: [{destination: {host: origin}}]
YAML
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1; user root; pid $WORK/nginx.pid; error_log stderr error;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream origin { server $ORIGIN; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:18480;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGINX

# count <requests> <url> <stop signal> <command...>: instructions of the command's run.
count() {
  local n=$1 url=$2 sig=$3; shift 3
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$@" 2>/dev/null &
  local pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null -H 'Host: origin' "$url" && break; sleep 0.2; done
  h2load --h1 -n "$n" -c 8 -H ':authority: origin' "$url" | grep -q "$n succeeded" || echo "warning: not all of $n succeeded" >&2
  kill -"$sig" $pid; wait $pid || true
  awk '/^summary/{print $2}' "$WORK"/cg.out*; rm -f "$WORK"/cg.out*
}
per_request() {
  local a b
  a=$(count 2000 "$@"); b=$(count 12000 "$@")
  echo $(( (b - a) / 10000 ))
}
proxy=("$BIN/mixr-proxy" --outbound-addr 127.0.0.1:18481 --inbound-addr 127.0.0.1:18482 --admin-addr 127.0.0.1:0
  --stats-addr 127.0.0.1:0 --config "$WORK/traffic.yaml" --worker-threads 1 --log-level error --app-addr "$ORIGIN")
nginx=$(per_request http://127.0.0.1:18480/ QUIT nginx -c "$WORK/nginx.conf" -g 'daemon off; master_process off;')
routing=$(per_request http://127.0.0.1:18481/ TERM "${proxy[@]}")
inbound=$(per_request http://127.0.0.1:18482/ TERM "${proxy[@]}")
: > "$WORK/empty.yaml"
"$BIN/mixr" serve --grpc-addr=127.0.0.1:18483 --monitoring-addr=127.0.0.1:0 --log-level=error --no-watch \
  --config "$WORK/empty.yaml" &
for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/18483) 2>/dev/null && break; sleep 0.1; done
policy=$(per_request http://127.0.0.1:18482/ TERM "${proxy[@]}" --mixr 127.0.0.1:18483 --disable-report-calls)
telemetry=$(per_request http://127.0.0.1:18482/ TERM "${proxy[@]}" --mixr 127.0.0.1:18483)
printf '%-20s %8s %8s\n' target instr/req "x nginx"
printf '%-20s %8d %8.2f\n' nginx "$nginx" 1
printf '%-20s %8d %8.2f\n' "mixr-proxy routing" "$routing" "$(echo "$routing / $nginx" | bc -l)"
printf '%-20s %8d %8.2f\n' "mixr-proxy inbound" "$inbound" "$(echo "$inbound / $nginx" | bc -l)"
printf '%-20s %8d %8.2f\n' "+ policy, cache hit" "$policy" "$(echo "$policy / $nginx" | bc -l)"
printf '%-20s %8d %8.2f  (%.2fx policy alone)\n' "+ reports" "$telemetry" "$(echo "$telemetry / $nginx" | bc -l)" \
  "$(echo "$telemetry / $policy" | bc -l)"
