# syntax=docker/dockerfile:1
#
# The gateway-proxy image. Build it from the repository root:
#
#   docker build -t gateway-proxy .
#   docker build --build-arg TARGET_CPU=x86-64-v3 -t gateway-proxy .
#
# and run it with the configuration mounted at /config.json (see
# docs/configuration.md and docs/operations.md):
#
#   docker run -p 7878:7878 -v "$PWD/config.json:/config.json:ro" gateway-proxy

# Build stage. The Rust version must equal `channel` in rust-toolchain.toml
# (.ci/run checks this line).
FROM rust:1.95.0-bookworm AS build

# The CPU the binary is compiled for (`-C target-cpu`):
#   x86-64     any x86-64 machine (the default, most compatible)
#   x86-64-v3  AVX2, BMI2 and FMA: Intel Haswell (2013) and AMD Zen or newer
#   znver3     AMD Zen 3 (EPYC Milan) or newer only
# A binary built for x86-64-v3 or znver3 dies with SIGILL on older CPUs.
ARG TARGET_CPU=x86-64

WORKDIR /src
COPY . .
# The registry and target directories are BuildKit cache mounts: a rebuild
# downloads and compiles only what changed. The binary is copied out of the
# cache mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    RUSTFLAGS="-C target-cpu=${TARGET_CPU}" \
    cargo build --release --locked -p gateway-proxy \
 && cp target/release/gateway-proxy /usr/local/bin/gateway-proxy

# Runtime stage: the binary, CA certificates and a user without privileges.
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home \
      --shell /usr/sbin/nologin gateway-proxy \
 && mkdir /state && chown gateway-proxy:gateway-proxy /state

COPY --from=build /usr/local/bin/gateway-proxy /usr/local/bin/gateway-proxy

USER gateway-proxy
# Checkpoints: a restart or a new image RESUMEs every shard and keeps every
# client session (docs/operations.md). Keep the volume across containers.
ENV GATEWAY_PROXY_STATE_DIR=/state
VOLUME /state
# Clients' websockets and /metrics, /ready, /health, /shard-count (`port`).
EXPOSE 7878
ENTRYPOINT ["/usr/local/bin/gateway-proxy"]
CMD ["--config", "/config.json"]
