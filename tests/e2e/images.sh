#!/usr/bin/env bash
# Builds the images the compose stack runs, on a machine that cannot pull from a registry:
# a Debian base image made with debootstrap from this machine's own apt mirror and
# `docker import`, then the gateway (from the host's release build), PostgreSQL, Redis, an
# SMTP sink, an echo upstream and HAProxy on top of it. Used by the e2e tests
# (tests/e2e/compose.local.yml names these tags) and by anyone running the stack without a
# registry.
#
# Each image is tagged with a hash of what it is built from, so a second run finds them all
# and takes seconds; the tags the compose files use (`:local`) point at the newest build.
#
#   tests/e2e/images.sh            build what is missing, then the gateway image
#   PORTCULLIS_BINARY=path ...     use this gateway binary instead of `cargo build --release`
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
say() { echo "images: $*" >&2; }

# Packages of the base image: each service image adds only files, never packages, so the
# only network access is debootstrap's, from the mirror apt already uses.
packages=postgresql,redis-server,haproxy,python3,ca-certificates

hash_of() { sha256sum | cut -c1-16; }

# The first Debian mirror and the release this machine's apt is configured with: read at run
# time, so no mirror host is written into the repository.
debian_mirror() {
    local uri
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }')
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; exit } }' \
            /etc/apt/sources.list)
    fi
    [ -n "$uri" ] || { say "no Debian mirror in /etc/apt/sources.list(.d)"; exit 1; }
    echo "$uri"
}

suite=$(. /etc/os-release && echo "${VERSION_CODENAME:?}")
base=portcullis-local/base:$(printf '%s %s' "$suite" "$packages" | hash_of)

if ! docker image inspect "$base" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { say "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
    mirror=$(debian_mirror)
    rootfs=$(mktemp -d /tmp/portcullis-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    say "debootstrap $suite from $mirror with $packages (a few minutes, once)"
    # minbase: no init system, no systemd; the packages' postinst scripts run in the chroot
    # but start nothing (debootstrap forbids services from starting).
    debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
        || { tail -n 30 "$rootfs.log" >&2; exit 1; }
    rm -f "$rootfs.log"
    # Apt lists and caches are not needed at run time; the Debian-made cluster neither
    # (the postgres image makes its own in its volume).
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/var/lib/postgresql/*/main "$rootfs"/etc/postgresql/*/main
    tar --numeric-owner -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    say "built $base"
fi

# build NAME DIR: an image from DIR/Dockerfile on the base, tagged by the hash of DIR and
# the base, and re-tagged :local.
build() {
    local name=$1 dir=$2 tag
    tag=portcullis-local/$name:$( (echo "$base"; cd "$dir" && find . -type f | sort | xargs sha256sum) | hash_of)
    if ! docker image inspect "$tag" >/dev/null 2>&1; then
        say "building $tag"
        # The classic builder: FROM an image that exists only here needs no registry. Its
        # deprecation notice is noise; the log is shown when a build fails.
        local log
        log=$(mktemp)
        DOCKER_BUILDKIT=0 docker build --build-arg BASE="$base" -t "$tag" "$dir" >"$log" 2>&1 \
            || { tail -n 30 "$log" >&2; rm -f "$log"; exit 1; }
        rm -f "$log"
    fi
    docker tag "$tag" "portcullis-local/$name:local"
}

for service in postgres redis smtp-sink echo haproxy; do
    build "$service" "$here/images/$service"
done

# The gateway: the host's release binary and the shipped configuration, in a context of
# their own (the repository with its target/ would be gigabytes to send to the daemon).
binary=${PORTCULLIS_BINARY:-}
if [ -z "$binary" ]; then
    say "cargo build --release"
    (cd "$repo" && cargo build --release --locked --bin portcullis)
    binary=$repo/target/release/portcullis
fi
context=$(mktemp -d /tmp/portcullis-gateway-image.XXXXXX)
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/portcullis"
cp -r "$repo/config" "$context/config"
cp "$here/images/gateway/Dockerfile" "$context/Dockerfile"
build gateway "$context"
say "ready: $(docker images --format '{{.Repository}}:{{.Tag}}' 'portcullis-local/*' | grep ':local$' | sort | tr '\n' ' ')"
