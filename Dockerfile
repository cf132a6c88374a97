# syntax=docker/dockerfile:1.7
#
# bedrock-broker: one binary in a distroless, non-root image.
#
#   docker build -t ghcr.io/bedrock-broker/bedrock-broker:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ... --push .
#
# Stages (cargo-chef): planner writes the dependency recipe, cook builds only
# the dependencies (cached until Cargo.toml/Cargo.lock change), build compiles
# the crate. The binary links glibc (rustls + aws-lc-rs, no OpenSSL) and runs on
# distroless/cc, whose glibc is Debian 12's like the build stage's: the same
# libc and malloc that `make bench` measures (see docs/performance.md).
# Nothing is fetched but the base images and crates. See docs/packaging.md.

# Keep equal to rust-toolchain.toml (checked by tests/packaging).
ARG RUST_VERSION=1.95.0
ARG CARGO_CHEF_VERSION=0.1.73

# bookworm = Debian 12, the release of distroless/cc-debian12 below: the
# binary needs a glibc at least as new as the one it was built against.
FROM rust:${RUST_VERSION}-bookworm AS chef
ARG CARGO_CHEF_VERSION
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS cook
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin bedrock-broker

FROM cook AS build
# The image has no .git: build.rs takes the revision for
# bedrock_broker_build_info from here ("unknown" when not given).
ARG REVISION=unknown
ENV BEDROCK_BROKER_REVISION=${REVISION}
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
# The functions a sidecar runs, placed together at link time (build.rs).
COPY link ./link
ENV BEDROCK_BROKER_HOT_CODE=1
# The release profile keeps the symbols the list names; the image needs none.
RUN cargo build --release --locked --bin bedrock-broker \
 && strip --strip-all -o /bedrock-broker target/release/bedrock-broker \
 && /bedrock-broker --version

# distroless/cc: glibc, libgcc, CA certificates, /etc/passwd with nonroot
# (65532), tzdata, nothing else (no shell, no package manager).
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="bedrock-broker" \
      org.opencontainers.image.description="Kubernetes sidecar that holds AWS credentials and SigV4-signs Amazon Bedrock calls; admission webhook that injects it" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/bedrock-broker/bedrock-broker" \
      org.opencontainers.image.url="https://github.com/bedrock-broker/bedrock-broker" \
      org.opencontainers.image.documentation="https://github.com/bedrock-broker/bedrock-broker/blob/main/docs/packaging.md" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
# glibc's malloc serves buffers of 128 KiB and more (request bodies) from
# their own mappings and unmaps them when freed. Its default threshold
# grows to the largest block freed, after which large bodies come from the
# heap arenas, which keep the memory: 74 MiB held after bursts of 5 MB
# bodies instead of 14 MiB. `make bench` runs the sidecar with this
# environment too (read from here).
ENV MALLOC_MMAP_THRESHOLD_=131072
# A request allocates and frees many small blocks; with many requests in
# flight more than the default 7 per size are free at once, the rest go to
# glibc's fast bins, and the next large allocation sweeps and merges them
# all (`malloc_consolidate`, 1.5–2.6 % of CPU samples at 64 connections). A
# deeper per-thread cache keeps them: at most 256 blocks of each size up to
# 1 KiB, 8.4 MiB per thread even if every slot filled (+1 MiB peak
# measured at 64 connections). docs/performance.md has the measurements.
ENV GLIBC_TUNABLES=glibc.malloc.tcache_count=256
# On distroless' PATH, so `kubectl exec POD -c bedrock-broker -- bedrock-broker
# credentials` finds it (the injector and the chart pass only args).
COPY --from=build --chown=0:0 --chmod=0755 /bedrock-broker /usr/local/bin/bedrock-broker
# Numeric so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
# Sidecar proxy (loopback only), sidecar admin, webhook HTTPS, webhook admin.
EXPOSE 9787 9788 8443 9789
ENTRYPOINT ["/usr/local/bin/bedrock-broker"]
CMD ["sidecar"]
