# syntax=docker/dockerfile:1

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build output between image builds; the
# binary is copied out because the target mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tracely \
    && cp target/release/tracely /usr/local/bin/tracely

FROM debian:bookworm-slim
# curl serves the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --shell /usr/sbin/nologin tracely
COPY --from=builder /usr/local/bin/tracely /usr/local/bin/tracely
COPY nats/topology.toml /etc/tracely/topology.toml
ENV TRACELY_TOPOLOGY=/etc/tracely/topology.toml \
    TRACELY_HTTP_ADDR=0.0.0.0:8080
USER tracely
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["tracely"]
CMD ["run"]
