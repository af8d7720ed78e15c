# One image with all three service binaries; docker-compose.yml picks the binary with `command`.
# Build: docker build -t user-data-services .

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the crates.io downloads and the target directory between builds; the
# binaries are copied out in the same step because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
    && mkdir -p /out \
    && cp target/release/command-api target/release/projector target/release/query-api /out/

FROM debian:bookworm-slim AS runtime
# ca-certificates for TLS to a managed database or broker; curl for the compose healthchecks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --no-create-home app
COPY --from=builder /out/ /usr/local/bin/
USER app
ENV LOG_FORMAT=json \
    RUST_LOG=info
CMD ["command-api"]
