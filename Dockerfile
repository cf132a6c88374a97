# syntax=docker/dockerfile:1.7
#
# bedrock-broker: one static binary in a distroless, non-root image.
#
#   docker build -t ghcr.io/bedrock-broker/bedrock-broker:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ... --push .
#
# Stages (cargo-chef): planner writes the dependency recipe, cook builds only
# the dependencies (cached until Cargo.toml/Cargo.lock change), build compiles
# the crate. Alpine's Rust targets musl natively, so the binary is static
# (rustls + ring, no OpenSSL, no glibc) and runs on distroless/static.
# See docs/packaging.md.

# Keep equal to rust-toolchain.toml (checked by tests/packaging).
ARG RUST_VERSION=1.95.0
ARG ALPINE_VERSION=3.22
ARG CARGO_CHEF_VERSION=0.1.73

FROM rust:${RUST_VERSION}-alpine${ALPINE_VERSION} AS chef
ARG CARGO_CHEF_VERSION
# musl-dev: the C runtime ring's build script links against.
# hadolint ignore=DL3018
RUN apk add --no-cache musl-dev \
 && cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
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
RUN cargo build --release --locked --bin bedrock-broker \
 && cp target/release/bedrock-broker /bedrock-broker \
 && /bedrock-broker --version

# distroless/static: CA certificates, /etc/passwd with nonroot (65532),
# tzdata, nothing else (no shell, no package manager).
FROM gcr.io/distroless/static-debian12:nonroot
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
      org.opencontainers.image.base.name="gcr.io/distroless/static-debian12:nonroot"
COPY --from=build --chown=0:0 --chmod=0755 /bedrock-broker /bedrock-broker
# Numeric so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
# Sidecar proxy (loopback only), sidecar admin, webhook HTTPS, webhook admin.
EXPOSE 9787 9788 8443 9789
ENTRYPOINT ["/bedrock-broker"]
CMD ["sidecar"]
