#!/usr/bin/env bash
# Runs the README's test command as a new user would: on a fresh clone of this checkout's
# HEAD, in a fresh container of the local Debian base image (tests/e2e/images.sh), which
# has nothing but Debian's minimal system and the stack's server packages. The host's Rust
# toolchain is lent read-only, and its CA certificates (a machine whose traffic passes a
# TLS-inspecting proxy trusts the proxy's CA there); everything else (a C compiler,
# Chromium, the database cluster, crates) the run installs or makes itself. The container has no Docker, so the
# e2e tests must fail, saying why; everything else must pass (hence `--no-fail-fast`, the
# default arguments, so the test binaries after the e2e one still run).
#
#   tests/e2e/fresh-machine.sh [cargo test arguments]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
base=$(docker images --format '{{.Repository}}:{{.Tag}}' portcullis-local/base | head -n 1)
[ -n "$base" ] || { echo "fresh-machine: run tests/e2e/images.sh first" >&2; exit 1; }
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_bin=$(dirname "$(command -v cargo)")
toolchain=$(rustup show active-toolchain | cut -d' ' -f1)
[ $# -gt 0 ] || set -- --no-fail-fast

clone=$(mktemp -d /tmp/portcullis-fresh.XXXXXX)
trap 'rm -rf "$clone"' EXIT
git clone -q "$repo" "$clone/portcullis"
echo "fresh-machine: $(git -C "$clone/portcullis" log --oneline -1) in $base"

docker run --rm \
    -v "$clone:/work" \
    -v "$rustup_home:/opt/rustup:ro" \
    -v "$cargo_bin:/opt/cargo-bin:ro" \
    -v "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}:/etc/ssl/certs/ca-certificates.crt:ro" \
    -e RUSTUP_HOME=/opt/rustup -e RUSTUP_TOOLCHAIN="$toolchain" \
    -e PATH=/opt/cargo-bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    -w /work/portcullis "$base" \
    bash -c 'set -e
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null
        tests/run "$@"' fresh-machine "$@"
