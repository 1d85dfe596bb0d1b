#!/usr/bin/env bash
# Build TF-A for QEMU virt (PLAT=qemu) with the SPMD and the EL3 SPMC around
# vmsgd's secure partition (BL32) and a normal-world Linux (BL33), into one
# QEMU -bios image. The TF-A source comes from the FF-A test bed (tarball,
# unpacked once into the cache); make is incremental, so a new partition or
# kernel only repacks the FIP.
#
#   tests/ffa-qemu/build-tfa.sh SP.bin MANIFEST.dts BL33 OUT [linux|raw]   # prints OUT/qemu_fw.bios
#
# BL33 is an arm64 Linux Image (linux, the default) or a raw binary entered
# at 0x60000000 (raw).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=tests/linux-qemu/common.sh
. "$repo/tests/linux-qemu/common.sh"
sp=$(readlink -f "$1"); manifest=$(readlink -f "$2"); bl33=$(readlink -f "$3"); out=$4; kind=${5:-linux}
beds=$(find_testbeds "$repo")
tarball=$beds/ffa/arm-trusted-firmware-6a164dd.tar.gz
[ -f "$tarball" ] || die "no TF-A source at $tarball"

need=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross device-tree-compiler build-essential python3-pyelftools)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --no-upgrade "${missing[@]}" >/dev/null
fi

src=$CACHE/tf-a-6a164dd
if [ ! -f "$src/Makefile" ]; then
    rm -rf "$src.tmp" && mkdir -p "$src.tmp"
    tar -xzf "$tarball" -C "$src.tmp" --strip-components=1
    mv "$src.tmp" "$src"
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
exec 9>"$CACHE/tf-a.lock"
flock 9
# DEBUG=1: the SPMC's checks and log lines (LOG_LEVEL 40 = info) are what
# a failed boot is diagnosed with.
make -C "$src" -j"${JOBS:-$(nproc)}" BUILD_BASE="$out/build" PLAT=qemu \
    CROSS_COMPILE=aarch64-linux-gnu- DEBUG=1 LOG_LEVEL=40 \
    SPD=spmd SPMD_SPM_AT_SEL2=0 SPMC_AT_EL3=1 CTX_INCLUDE_EL2_REGS=0 \
    ENABLE_SME_FOR_NS=0 ENABLE_SME_FOR_SWD=0 \
    BL32="$sp" BL33="$bl33" QEMU_TOS_FW_CONFIG_DTS="$manifest" \
    ARM_LINUX_KERNEL_AS_BL33=$([ "$kind" = linux ] && echo 1 || echo 0) all fip >"$out/build.log" 2>&1 \
    || { tail -30 "$out/build.log" >&2; die "TF-A build failed"; }
cp "$out/build/qemu/debug/qemu_fw.bios" "$out/qemu_fw.bios"
echo "$out/qemu_fw.bios"
