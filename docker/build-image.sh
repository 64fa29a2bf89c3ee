#!/usr/bin/env bash
# Builds the berth container image FROM scratch without pulling anything: copies the berth
# binary, every shared library `ldd` lists, the dynamic loader and the system CA bundle into
# a build context, then runs `docker build` with docker/Dockerfile.
#
# Usage: docker/build-image.sh [-b BINARY] [-t TAG]
#   -b BINARY  use this berth binary instead of running `cargo build --release --locked`
#   -t TAG     image tag (default berth:local)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
binary=""
tag="berth:local"
while getopts "b:t:h" opt; do
  case "$opt" in
    b) binary=$OPTARG ;;
    t) tag=$OPTARG ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
  esac
done

if [ -z "$binary" ]; then
  (cd "$root" && cargo build --release --locked)
  binary="${CARGO_TARGET_DIR:-$root/target}/release/berth"
fi
[ -x "$binary" ] || { echo "build-image.sh: no executable at $binary" >&2; exit 1; }

ctx=$(mktemp -d "${TMPDIR:-/tmp}/berth-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
rootfs="$ctx/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$ctx/cache"
cp "$binary" "$rootfs/usr/local/bin/berth"

# Every absolute path in ldd's output: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x..)"
# and the loader line "/lib64/ld-linux-x86-64.so.2 (0x..)". Each is copied to the same path
# inside the image, dereferencing symlinks (the loader path is what PT_INTERP names, and
# /lib64 is itself a symlink on merged-/usr systems).
# A static binary (ldd: "not a dynamic executable") needs none, so ldd may fail here.
libs=$( (ldd "$binary" 2>/dev/null || true) | grep -o '/[^ ]*' | sort -u || true)
[ -n "$libs" ] || echo "build-image.sh: ldd lists no libraries; assuming a static binary" >&2
for lib in $libs; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done

ca=/etc/ssl/certs/ca-certificates.crt
if [ -f "$ca" ]; then
  cp -L "$ca" "$rootfs$ca"
else
  echo "build-image.sh: warning: no $ca (apt-get install ca-certificates); image has no CA bundle" >&2
fi

# A user table so the numeric uid has a name in logs and `ps`; nothing in berth needs it.
printf 'root:x:0:0:root:/root:/sbin/nologin\nberth:x:65532:65532:berth:/var/lib/berth:/sbin/nologin\n' \
  > "$rootfs/etc/passwd"
printf 'root:x:0:\nberth:x:65532:\n' > "$rootfs/etc/group"

cp "$here/Dockerfile" "$ctx/Dockerfile"
# DOCKER_BUILDKIT=0: the classic builder needs no BuildKit frontend image and no network.
DOCKER_BUILDKIT=0 docker build --network none -q -t "$tag" "$ctx" >/dev/null
echo "$tag"
