#!/usr/bin/env bash
# Makes sure the services the tests talk to are up on loopback (Redis on 6379, PostgreSQL on
# 5432) and that Prometheus (promtool and the server the telemetry test starts) is
# installed. Installs from Debian's packages when absent, so a fresh machine passes too.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "$@" >/dev/null
}

redis_up() { have redis-cli && redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
if ! have redis-server || ! have redis-cli; then
  echo "installing redis-server"
  apt_install redis-server redis-tools
fi
if ! redis_up; then
  echo "starting redis-server on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 50); do redis_up && break; sleep 0.1; done
fi
redis_up || { echo "redis is not reachable on 127.0.0.1:6379" >&2; exit 1; }
echo "redis: $(redis-cli -h 127.0.0.1 -p 6379 info server | grep redis_version | tr -d '\r')"

if ! have promtool || ! have prometheus; then
  echo "installing prometheus (promtool)"
  apt_install --no-install-recommends prometheus
fi
echo "prometheus: $(prometheus --version 2>&1 | head -1)"
