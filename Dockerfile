# The mixr image: `mixr` (the default command) and `mixr-proxy`, built with the dist
# profile (what the benchmarks measure). docker-compose.yml runs both from it. The programs
# run as an unprivileged user; mixr reads its config from /etc/mixr (mount your own,
# read-only) and writes only to its data directory, /var/lib/mixr (a volume).
FROM rust:1-bookworm AS build
WORKDIR /src
# .dockerignore keeps target/ (gigabytes) and .git out of the build context.
COPY . .
RUN cargo build --profile dist --locked --bin mixr --bin mixr-proxy

FROM debian:bookworm-slim
# iptables: the init container `mixr-proxy inject` adds runs `mixr-proxy iptables --apply`.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 iptables \
    && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid and gid, so that `runAsNonRoot` can verify them and volume owners
# are predictable. A new named volume takes the owner of the image's directory.
RUN groupadd --system --gid 10001 mixr \
    && useradd --system --uid 10001 --gid mixr --home-dir /var/lib/mixr --no-create-home \
       --shell /usr/sbin/nologin mixr \
    && install -d -o mixr -g mixr -m 0750 /var/lib/mixr
COPY --from=build /src/target/dist/mixr /usr/local/bin/mixr
COPY --from=build /src/target/dist/mixr-proxy /usr/local/bin/mixr-proxy
COPY rules/examples /etc/mixr
# Read by `mixr serve` (its --data-dir): sqllog's SQLite files and stdio's log files go
# here, whatever command line the container is given.
ENV MIXR_DATA_DIR=/var/lib/mixr
VOLUME ["/var/lib/mixr"]
USER 10001:10001
# mixr: gRPC, monitoring. mixr-proxy (same image, other entrypoint): outbound, inbound,
# admin, stats.
EXPOSE 9091 15014 15001 15006 15000 15090
# For the default command; a container running mixr-proxy overrides it (as compose does).
HEALTHCHECK --interval=5s --timeout=3s --retries=10 \
    CMD ["/usr/local/bin/mixr", "probe", "http://127.0.0.1:15014/readyz"]
ENTRYPOINT ["/usr/local/bin/mixr"]
CMD ["serve", "--config", "/etc/mixr", "--grpc-addr", "0.0.0.0:9091", "--monitoring-addr", "0.0.0.0:15014"]
