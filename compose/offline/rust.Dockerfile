# Offline stand-in for the official `rust:*-slim-bookworm` image (the build
# stage of compose/Dockerfile), for machines without a container registry:
# the Debian base plus the C toolchain rustc links with, the host's Rust
# toolchain (rustc, cargo, the standard library) and the crates of
# Cargo.lock (`cargo vendor` on the host, so the build needs no network),
# both copied in by scripts/stack-images.sh. Same variables as the official
# image.
#
# Offline only, to keep CI builds short without BuildKit's cache mounts: the
# workspace's dependencies compiled once into /src/target (compose/Dockerfile
# builds in /src), from the workspace manifests with empty sources (the
# skeleton the script makes), so the `cargo build` after `COPY . .` compiles
# only the workspace's own crates. Their stub artifacts are deleted, and so
# are the stub sources.
ARG BASE_IMAGE=syncdata-offline/debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rustup/toolchain/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY toolchain/ /usr/local/rustup/toolchain/
RUN install -d /usr/local/cargo/bin && rustc --version && cargo --version
COPY vendor/ /usr/local/cargo/vendor/
RUN printf '%s\n' '[source.crates-io]' 'replace-with = "vendored-sources"' \
        '[source.vendored-sources]' 'directory = "/usr/local/cargo/vendor"' \
        >/usr/local/cargo/config.toml
COPY skeleton/ /src/
RUN cd /src \
    && cargo build --release --locked -p syncdata-consumer -p syncdata-producer --bins \
    && rm -rf target/release/.fingerprint/syncdata-* target/release/build/syncdata-* \
        target/release/deps/*syncdata* target/release/syncdata target/release/syncdata-producer \
        target/release/*.d target/release/incremental \
    && find /src -mindepth 1 -maxdepth 1 ! -name target -exec rm -rf {} +
