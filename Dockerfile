# syntax=docker/dockerfile:1
# Multi-stage build: a release binary built on the Rust image, run on a small
# Debian image as a non-root user. Build with `docker build -t sluice .`.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits reuse the cached dependency layer. The
# manifest names the benches, so placeholders stand in for them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && for b in limits nats runtime; do echo 'fn main() {}' > "benches/$b.rs"; done \
 && cargo build --release --locked \
 && rm -rf src benches
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin sluice \
 && strip target/release/sluice

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /app sluice
WORKDIR /app
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
COPY automations ./automations
COPY config ./config
USER sluice
ENV SLUICE_LISTEN=0.0.0.0:3003 \
    SLUICE_WORKSPACES=/app/automations \
    SLUICE_SECRETS=/app/config/secrets \
    RUST_LOG=info
EXPOSE 3003
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:3003/sys/healthcheck || exit 1
ENTRYPOINT ["sluice"]
CMD ["serve"]
