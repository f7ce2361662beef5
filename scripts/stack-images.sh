#!/usr/bin/env bash
# Builds every image the local stack (compose/) needs without a container
# registry, from Debian's packages and crates.io:
#
#   syncdata-offline/debian:bookworm-slim   debootstrap --variant=minbase, docker import
#   syncdata-offline/rust:bookworm          + gcc, this machine's Rust toolchain and
#                                            the crates of Cargo.lock (cargo vendor),
#                                            compiled once (workspace manifests only)
#   syncdata-offline/postgres:15-bookworm   + postgresql-15 (compose/offline/)
#   syncdata-offline/nats:bookworm          + nats-server
#   syncdata-offline/prometheus:bookworm    + prometheus
#   syncdata:local, syncdata-source-db:local  compose/Dockerfile, compose/source-db/
#                                            (compose build with compose.offline.yaml)
#
# Idempotent and cached: the debootstrap runs only when the base image is
# missing, the Rust image only when the host toolchain, Cargo.lock or a
# workspace manifest changed (it is labelled with them), and the rest
# are docker builds whose layer cache makes a rerun with unchanged inputs a
# no-op. Needs root (debootstrap) and a reachable Docker engine.
#
#   bash scripts/stack-images.sh                 # build what is missing or stale
#   SYNCDATA_DEBIAN_MIRROR=http://… bash scripts/stack-images.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/compose-lib.sh
source scripts/compose-lib.sh

BASE=syncdata-offline/debian:bookworm-slim
RUST=syncdata-offline/rust:bookworm
MIRROR=${SYNCDATA_DEBIAN_MIRROR:-http://deb.debian.org/debian}

require_docker
find_compose

have_image() {
    docker image inspect "$1" >/dev/null 2>&1
}

step() {
    echo "==> $* ($(date -u +%T))"
}

started=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/stack-images.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- the Debian base: a minimal bookworm root, trimmed like debian:*-slim ---
if have_image "$BASE"; then
    step "$BASE exists"
else
    step "debootstrap bookworm -> $BASE"
    [ "$(id -u)" = 0 ] || die "debootstrap needs root"
    command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
    root="$work/root"
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
        { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    cat >"$root/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
    # As in the official slim images: no documentation, manuals or
    # translations from later installs, no package files kept.
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
DPKG
    cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
        "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
        "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/*
    tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' - "$BASE" >/dev/null
    rm -rf "$root"
fi

# --- the Rust build base: the host toolchain and the vendored crates ---
rust_version=$(rustc --version) || die "rustc is missing: the Rust build image copies this machine's toolchain"
metadata=$(cargo metadata --no-deps --locked --format-version 1)
manifests=$(jq -r '.packages[].manifest_path' <<<"$metadata" | sed "s|^$PWD/||" | sort)
# shellcheck disable=SC2086 # one path per line, none with spaces
deps_sum=$(cat Cargo.lock Cargo.toml $manifests | sha256sum | cut -d' ' -f1)
rust_labels=$(docker image inspect -f '{{ index .Config.Labels "syncdata.rustc" }} {{ index .Config.Labels "syncdata.deps" }}' "$RUST" 2>/dev/null || true)
if [ "$rust_labels" = "$rust_version $deps_sum" ]; then
    step "$RUST exists ($rust_version, dependencies $deps_sum)"
else
    step "$RUST from $rust_version, dependencies $deps_sum (Cargo.lock and manifests)"
    sysroot=$(rustc --print sysroot)
    ctx="$work/rust"
    mkdir -p "$ctx/toolchain/bin"
    cp compose/offline/rust.Dockerfile "$ctx/Dockerfile"
    cp "$sysroot/bin/rustc" "$sysroot/bin/cargo" "$ctx/toolchain/bin/"
    cp -a "$sysroot/lib" "$ctx/toolchain/"
    rm -rf "$ctx/toolchain/lib/rustlib/src" "$ctx/toolchain/lib/rustlib/rustc-src"
    cargo vendor --locked --quiet "$ctx/vendor" >/dev/null
    # The skeleton: every manifest and Cargo.lock, each target's source an
    # empty stub.
    for manifest in Cargo.toml $manifests; do
        install -D -m 0644 "$manifest" "$ctx/skeleton/$manifest"
    done
    cp Cargo.lock "$ctx/skeleton/"
    jq -r '.packages[].targets[] | "\(.kind | join(",")) \(.src_path)"' <<<"$metadata" |
        while read -r kind path; do
            stub="$ctx/skeleton/${path#"$PWD"/}"
            mkdir -p "$(dirname "$stub")"
            case "$kind" in
            lib | rlib | proc-macro) : >"$stub" ;;
            *) echo 'fn main() {}' >"$stub" ;;
            esac
        done
    docker build -q --label "syncdata.rustc=$rust_version" --label "syncdata.deps=$deps_sum" \
        --build-arg "BASE_IMAGE=$BASE" -t "$RUST" "$ctx" >/dev/null
    rm -rf "$ctx"
fi

# --- stand-ins for the official images the stack pulls ---
for spec in postgres:15-bookworm nats:bookworm prometheus:bookworm; do
    name=${spec%%:*}
    step "syncdata-offline/$spec"
    docker build -q --build-arg "BASE_IMAGE=$BASE" -t "syncdata-offline/$spec" \
        -f "compose/offline/$name.Dockerfile" compose/offline >/dev/null
done

# --- the project's own images, through compose.yaml and the override ---
step "${COMPOSE[*]} build (syncdata:local, syncdata-source-db:local)"
"${COMPOSE[@]}" -f compose/compose.yaml -f compose/compose.offline.yaml build

step "done in $(($(date +%s) - started)) s"
docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' |
    grep -E '^(syncdata-offline/|syncdata:local|syncdata-source-db:local)' | sort
