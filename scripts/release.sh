#!/usr/bin/env bash
# Release binaries of syncdata and syncdata-producer, packaged with their
# man pages, shell completions, README and licence.
#
#   bash scripts/release.sh              # static (x86_64-unknown-linux-musl)
#   bash scripts/release.sh --dynamic    # linked against the build host's glibc
#
# The static build needs the musl target of the Rust toolchain and Debian's
# musl-tools (for the C parts: ring, the bundled SQLite); both are installed
# when missing (rustup, apt-get). The result goes to dist/:
#
#   dist/syncdata-<version>-<target>.tar.gz   bin/, share/man/man1/,
#                                             share/completions/, README.md, LICENSE
#   dist/SHA256SUMS
#
# Static binaries run on any x86_64 Linux; they use musl's allocator, which
# is slower than glibc's under many threads: where the last few percent of
# apply throughput matter, build with --dynamic on the machine's own
# distribution.
set -euo pipefail

cd "$(dirname "$0")/.."

mode=static
case "${1:-}" in
    "") ;;
    --dynamic) mode=dynamic ;;
    -h | --help)
        sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "release.sh: unknown argument '$1' (try --help)" >&2
        exit 2
        ;;
esac

step() {
    echo "==> $*"
}

host=$(rustc -vV | sed -n 's/^host: //p')
if [ "$mode" = static ]; then
    case "$host" in
        x86_64-*-linux-*) triple=x86_64-unknown-linux-musl ;;
        aarch64-*-linux-*) triple=aarch64-unknown-linux-musl ;;
        *)
            echo "release.sh: no static target known for $host; use --dynamic" >&2
            exit 2
            ;;
    esac
    if ! rustup target list --installed | grep -qx "$triple"; then
        step "rustup target add $triple"
        rustup target add "$triple"
    fi
    if ! command -v musl-gcc >/dev/null; then
        step "apt-get install musl-tools"
        if [ "$(id -u)" -eq 0 ]; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q musl-tools >/dev/null
        else
            sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q musl-tools >/dev/null
        fi
    fi
    # The C parts (ring, libsqlite3-sys) compile with musl's gcc wrapper.
    cc_var="CC_$(tr '-' '_' <<<"$triple")"
    export "$cc_var=musl-gcc"
    target_args=(--target "$triple")
else
    triple=$host
    target_args=()
fi

target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
if [ "$mode" = static ]; then
    out="$target_dir/$triple/release"
else
    out="$target_dir/release"
fi

step "cargo build --release --locked ($triple)"
cargo build --release --locked "${target_args[@]}" -p syncdata-consumer -p syncdata-producer --bins

version=$(cargo metadata --format-version 1 --no-deps |
    jq -r '.packages[] | select(.name == "syncdata-consumer") | .version')
name="syncdata-$version-$triple"
stage=$(mktemp -d "${TMPDIR:-/tmp}/syncdata-release.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root="$stage/$name"
mkdir -p "$root/bin" "$root/share/man/man1" "$root/share/completions"

step "packaging $name"
for bin in syncdata syncdata-producer; do
    install -m 0755 "$out/$bin" "$root/bin/$bin"
    strip "$root/bin/$bin"
    "$root/bin/$bin" man --dir "$root/share/man/man1" >/dev/null
    for shell in bash zsh fish; do
        "$root/bin/$bin" completions "$shell" >"$root/share/completions/$bin.$shell"
    done
done
cp README.md "$root/"
[ -f LICENSE ] && cp LICENSE "$root/"

if [ "$mode" = static ]; then
    # A static binary has no program interpreter and no shared libraries.
    for bin in syncdata syncdata-producer; do
        if file "$root/bin/$bin" | grep -q "dynamically linked"; then
            echo "release.sh: $bin is dynamically linked although the build was static" >&2
            exit 1
        fi
    done
fi

mkdir -p dist
tar -C "$stage" -czf "dist/$name.tar.gz" "$name"
(cd dist && sha256sum -- *.tar.gz >SHA256SUMS)

step "built dist/$name.tar.gz"
"$root/bin/syncdata" --version
"$root/bin/syncdata-producer" --version
file "$root/bin/syncdata" | sed 's/^[^:]*: //'
ls -l "$root/bin"
