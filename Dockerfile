# Builds the mixr binaries. Used by docker-compose.yml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --profile dist --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/dist/mixr /usr/local/bin/mixr
COPY --from=build /src/target/dist/mixr-proxy /usr/local/bin/mixr-proxy
COPY rules/examples /etc/mixr
EXPOSE 9091 15014
ENTRYPOINT ["/usr/local/bin/mixr"]
CMD ["serve", "--config", "/etc/mixr", "--grpc-addr", "0.0.0.0:9091", "--monitoring-addr", "0.0.0.0:15014"]
