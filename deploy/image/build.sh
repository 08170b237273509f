#!/usr/bin/env bash
# Builds an OCI image of sfzb-host without a container daemon: a minimal rootfs of Debian's
# own packages (glibc, libgcc, CA certificates), the release binary, a non-root user, put
# into an OCI image layout by umoci. Push it with `skopeo copy oci:DIR:TAG docker://…`.
#
#   deploy/image/build.sh [--binary PATH] [--out DIR] [--tag TAG]
#
# Needs root (the files in the image are owned by root and the state directory by the
# sfzb user), umoci, apt-get with its package lists (`apt-get update`), and dpkg-deb; the
# binary must be built on the Debian release whose glibc goes into the image (this one).
# The same binary, packages and SOURCE_DATE_EPOCH give the same image digest.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
binary="${CARGO_TARGET_DIR:-$repo/target}/release/sfzb-host"
out="$repo/dist/oci"
tag=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    *) echo "usage: $0 [--binary PATH] [--out DIR] [--tag TAG]" >&2; exit 2 ;;
  esac
done

fail() { echo "image: $*" >&2; exit 1; }
[ -x "$binary" ] || fail "no sfzb-host binary at $binary: run 'cargo build --release' or pass --binary"
command -v umoci >/dev/null || fail "umoci is missing: apt-get install umoci"
command -v strip >/dev/null && command -v readelf >/dev/null || fail "strip and readelf are missing: apt-get install binutils"
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || fail "apt-get and dpkg-deb are needed (Debian or Ubuntu)"
[ "$(id -u)" = 0 ] || fail "run as root (files in the image must be owned by root and by the sfzb user)"

version=$("$binary" --version | awk '{print $2}')
[ -n "$tag" ] || tag=$version
# Reproducible: every timestamp in the image is this one.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)}"
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
uid=65532

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mkdir -p "$work/debs" "$rootfs"

# glibc and libgcc_s are what the binary links (rustls: no OpenSSL); the CA certificates are
# what rustls trusts for Salesforce and Databricks.
packages=(libc6 libgcc-s1 ca-certificates)
(cd "$work/debs" && apt-get download -q -o APT::Sandbox::User=root "${packages[@]}" >/dev/null) \
  || fail "apt-get download ${packages[*]} failed: run 'apt-get update' first"
for deb in "$work"/debs/*.deb; do
  dpkg-deb -x "$deb" "$rootfs"
  dpkg-deb -f "$deb" Package Version | paste -sd' ' >>"$work/packages.txt"
done

for lib in $(readelf -d "$binary" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
  [ -n "$(find "$rootfs" -name "$lib" -print -quit)" ] \
    || fail "the binary needs $lib, which the image lacks: add its package to the list above"
done

# What update-ca-certificates would make, without running a maintainer script.
mkdir -p "$rootfs/etc/ssl/certs"
find "$rootfs/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort | xargs cat \
  >"$rootfs/etc/ssl/certs/ca-certificates.crt"
rm -rf "$rootfs/usr/share/doc" "$rootfs/usr/share/man" "$rootfs/usr/share/lintian" \
  "$rootfs/usr/share/locale" "$rootfs/usr/sbin" "$rootfs/usr/bin" "$rootfs/etc/ca-certificates.conf"

install -D -m 0755 "$binary" "$rootfs/usr/local/bin/sfzb-host"
# Without the release profile's line tables (436 MB → 90 MB); symbols stay for backtraces.
strip --strip-debug "$rootfs/usr/local/bin/sfzb-host"
mkdir -p "$rootfs/usr/share/sfzb-host"
LC_ALL=C sort "$work/packages.txt" >"$rootfs/usr/share/sfzb-host/packages.txt"
cat >"$rootfs/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/usr/sbin/nologin
sfzb:x:$uid:$uid:sfzb-host:/var/lib/sfzb:/usr/sbin/nologin
PASSWD
cat >"$rootfs/etc/group" <<GROUP
root:x:0:
sfzb:x:$uid:
GROUP
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
# /proc, /sys and /dev are mount points for the runtime.
mkdir -p "$rootfs/tmp" "$rootfs/var/lib/sfzb" "$rootfs/etc/sfzb" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
chmod 1777 "$rootfs/tmp"
chown "$uid:$uid" "$rootfs/var/lib/sfzb"
find "$rootfs" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

# The image must run as it is: the program interpreter, glibc, the user.
chroot --userspec="$uid:$uid" "$rootfs" /usr/local/bin/sfzb-host --version >/dev/null \
  || fail "the binary does not run inside the image's rootfs (wrong Debian release?)"

if [ -e "$out" ]; then
  [ -f "$out/oci-layout" ] || fail "$out exists and is not an OCI image layout; not overwriting it"
  rm -rf "$out"
fi
mkdir -p "$(dirname "$out")"
umoci init --layout "$out"
umoci new --image "$out:$tag"
umoci insert --image "$out:$tag" --history.created "$created" \
  --history.created_by "deploy/image/build.sh" "$rootfs" /
umoci config --image "$out:$tag" --created "$created" --history.created "$created" \
  --author "sfzb-host" --os linux --architecture "$(dpkg --print-architecture)" \
  --config.user "$uid:$uid" \
  --config.entrypoint /usr/local/bin/sfzb-host --config.cmd run \
  --config.workingdir /var/lib/sfzb \
  --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --config.env SFZB_STATE_DIR=/var/lib/sfzb/state \
  --config.env SFZB_CACHE_DIR=/var/lib/sfzb/cache \
  --config.exposedports 9464/tcp \
  --config.label org.opencontainers.image.title=sfzb-host \
  --config.label "org.opencontainers.image.version=$version" \
  --config.label "org.opencontainers.image.created=$created"
umoci gc --layout "$out"
echo "image: $out:$tag ($(du -sh "$out" | cut -f1))"
