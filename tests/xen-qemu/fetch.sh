#!/usr/bin/env bash
# Fetch what the real-Xen harness boots, from Debian, without installing it:
# `apt-get download` + `dpkg -x` into the cache directory. Nothing here runs a
# maintainer script or touches the host's package state.
#
#   tests/xen-qemu/fetch.sh            # idempotent; prints the cache directory
#
# Environment: VMSGD_XEN_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/vmsgd-xen-qemu).
#
# Layout of the cache:
#   debs/            the .deb files
#   root/            all of them unpacked on top of each other (dpkg -x)
#   kver             the kernel version (e.g. 6.1.0-56-amd64)
#   fetched.stamp    written last; its content is the package list
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/xen-qemu/common.sh
. "$here/common.sh"

mkdir -p "$CACHE/debs"

# The kernel: whatever linux-image-amd64 points at today (a 6.1 bookworm one).
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null \
    | awk '/Depends: linux-image-6\.1\.0-[0-9]+-amd64$/ && !k {k = $2} END {print k}')
[ -n "$kpkg" ] || die "cannot find the kernel package linux-image-amd64 depends on (apt-get update?)"

# The emulator: QEMU from the configured suites, unpacked with the libraries
# this host lacks (whatever `apt-get install -s` would add). Installing it
# instead would remove the host's qemu-utils 10.0 from bookworm-backports
# (shared/reference/testbeds.md); unpacking leaves the host alone.
qemu_pkgs="qemu-system-x86 qemu-system-common qemu-system-data seabios"
# The Xen libraries are fetched always (the host may have other versions from
# libxen-dev); dom0 takes them from the unpacked tree and the rest (libc,
# libgcc_s, zlib, ...) from the host.
xen_pkgs="xen-hypervisor-4.17-amd64 xen-utils-4.17 xen-utils-common
    libxencall1 libxendevicemodel1 libxenevtchn1 libxenforeignmemory1 libxengnttab1
    libxenhypfs1 libxenmisc4.17 libxenstore4 libxentoolcore1 libxentoollog1 libyajl2"
want="$(echo $xen_pkgs) $kpkg busybox-static $qemu_pkgs"

missing_deps() { # packages `apt-get install` would add for $@, minus what we fetch anyway
    LC_ALL=C apt-get install -s --no-install-recommends "$@" 2>/dev/null \
        | awk '/^Inst / {print $2}'
}
deps=$(missing_deps $qemu_pkgs | grep -E '^lib' | sort -u | tr '\n' ' ' || true)
all=$(echo "$want $deps" | tr ' ' '\n' | grep -v '^$' | sort -u | tr '\n' ' ')

if [ -f "$CACHE/fetched.stamp" ] && [ "$(cat "$CACHE/fetched.stamp")" = "$all" ]; then
    log "cache up to date: $CACHE"
    exit 0
fi

log "downloading: $all"
(cd "$CACHE/debs" && timeout 900 apt-get download $all) \
    || die "apt-get download failed (network, or run apt-get update)"

rm -rf "$CACHE/root" && mkdir -p "$CACHE/root"
for p in $all; do
    deb=$(ls -t "$CACHE/debs/${p}_"*.deb 2>/dev/null | sed -n 1p)
    [ -n "$deb" ] || die "no .deb for $p in $CACHE/debs"
    dpkg -x "$deb" "$CACHE/root"
done
echo "${kpkg#linux-image-}" >"$CACHE/kver"
dpkg-deb -f "$(ls -t "$CACHE/debs/qemu-system-x86_"*.deb | sed -n 1p)" Version >"$CACHE/qemu-version"
echo "$all" >"$CACHE/fetched.stamp"
log "unpacked into $CACHE/root (kernel $(cat "$CACHE/kver"), qemu $(cat "$CACHE/qemu-version"))"
