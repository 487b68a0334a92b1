# syntax=docker/dockerfile:1
# certvol container image: the `certvol` binary on distroless (glibc, no shell).
#
# Build (from the repository root; the tag must match the Helm chart's default image,
# ghcr.io/certvol/certvol:<appVersion of manifests/charts/certvol/Chart.yaml>):
#
#   docker build -t ghcr.io/certvol/certvol:0.1.0 .
#
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 -t ... --push .
# (the builder compiles natively per platform; no protoc or other tools are needed).

# The builder is Debian bookworm so the binary links against the same glibc as the
# distroless/cc-debian12 runtime below. 1.95 is the toolchain the project is developed with
# (rust-version in Cargo.toml is the minimum, 1.88).
FROM docker.io/library/rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# --locked: the image is built from exactly the dependency versions in Cargo.lock.
# Cache mounts keep the registry and target dir between builds; the binary is copied out of the
# cached target dir because cache mounts are not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p certvol-driver --bin certvol \
    && install -D -m 0755 target/release/certvol /out/certvol

# cc (not static): the binary needs glibc and libgcc_s (ring). Runs as root: `certvol node`
# mounts tmpfs and bind-mounts into kubelet's pod directories (the DaemonSet is privileged).
FROM gcr.io/distroless/cc-debian12:latest
COPY --from=builder /out/certvol /usr/local/bin/certvol
USER 0:0
ENTRYPOINT ["/usr/local/bin/certvol"]
CMD ["node"]
