#!/usr/bin/env bash
# Makes sure the services the tests talk to are up on loopback (Redis on 6379, PostgreSQL on
# 5432) and that the tools tests drive are installed: Prometheus (promtool and the server
# the telemetry test starts), Python's gRPC reflection client and Chromium (headless, for
# the Bookinfo page), kubernetes-validate, iproute2 and iptables (the network-namespace
# capture tests). Installs from Debian's packages (and pip) when absent, so a fresh
# machine passes too.
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

pg_up() { have pg_isready && pg_isready -q -h 127.0.0.1 -p 5432; }
if ! have pg_ctlcluster; then
  echo "installing postgresql"
  apt_install postgresql
  fresh_pg=1
fi
if ! pg_up; then
  echo "starting postgresql"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  for _ in $(seq 100); do pg_up && break; sleep 0.1; done
fi
if [ "${fresh_pg:-0}" = 1 ]; then
  # A new cluster authenticates by password; the tests connect as postgres over loopback
  # without one, as on the development machines (trust auth, database "test").
  hba=$(ls /etc/postgresql/*/main/pg_hba.conf | head -1)
  sed -i -E 's/^(host\s+all\s+all\s+127\.0\.0\.1\/32\s+)\S+/\1trust/' "$hba"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main reload
  su postgres -c "createdb test" 2>/dev/null || true
fi
pg_up || { echo "postgresql is not reachable on 127.0.0.1:5432" >&2; exit 1; }
echo "postgresql: $(psql -h 127.0.0.1 -U postgres -d test -tAc 'select version()' | cut -c1-40)"

if ! have promtool || ! have prometheus; then
  echo "installing prometheus (promtool)"
  apt_install --no-install-recommends prometheus
fi
echo "prometheus: $(prometheus --version 2>&1 | head -1)"

# tests/tests/reflection.rs drives mixr's reflection with Python's gRPC reflection client.
py_grpc() { python3 -c 'import grpc, grpc_reflection' >/dev/null 2>&1; }
if ! have python3; then
  echo "installing python3"
  apt_install python3 python3-pip
fi
if ! py_grpc && ! python3 -m pip --version >/dev/null 2>&1; then
  echo "installing pip"
  apt_install python3-pip
fi
if ! py_grpc; then
  echo "installing grpcio and grpcio-reflection (pip)"
  # Debian's own python3 refuses user-wide pip installs (PEP 668) unless told otherwise.
  python3 -m pip install -q grpcio grpcio-reflection 2>/dev/null ||
    python3 -m pip install -q --break-system-packages grpcio grpcio-reflection
fi
py_grpc || { echo "python3 cannot import grpc and grpc_reflection" >&2; exit 1; }
echo "python: $(python3 --version 2>&1), grpcio $(python3 -c 'import grpc; print(grpc.__version__)')"

# tests/tests/bookinfo_page.rs renders Bookinfo's product page in headless Chromium.
if ! have chromium; then
  echo "installing chromium"
  apt_install chromium
fi
echo "chromium: $(chromium --version 2>/dev/null | head -1)"

# Kubernetes manifests are checked against the API schema offline (no cluster here).
if ! have kubernetes-validate; then
  echo "installing kubernetes-validate"
  python3 -m pip install -q kubernetes-validate 2>/dev/null ||
    python3 -m pip install -q --break-system-packages kubernetes-validate
fi
echo "kubernetes-validate: $(kubernetes-validate --version 2>&1 | head -1)"

# tests/tests/capture.rs builds "pods" from network namespaces (ip netns, veth) and
# installs the sidecar's capture rules in them with iptables.
if ! have ip || ! have iptables || ! have ip6tables; then
  echo "installing iproute2 and iptables"
  apt_install iproute2 iptables
fi
echo "iptables: $(iptables --version 2>&1 | head -1)"
