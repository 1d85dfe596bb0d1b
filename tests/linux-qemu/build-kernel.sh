#!/usr/bin/env bash
# Build (or find in the cache) the arm64 test kernel the real-Linux harnesses
# boot: Debian's linux-source-6.12 with the RFC virtio-msg transport, its
# loopback bus and its FF-A bus (the FF-A test bed's patch carries the
# loopback patch whole), plus the loopback test bed's config and ours; and
# QEMU 7.2 (arm) and busybox-static (arm64), unpacked, never installed.
#
#   tests/linux-qemu/build-kernel.sh     # prints the kernel directory
#
# The kernel directory, $CACHE/kernel-KEY, is keyed by every input (patches,
# config fragments, the linux-source version, the recipe number below): a
# second run with the same inputs does nothing. Cold: 4-7 min on 2 cores.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=tests/linux-qemu/common.sh
. "$here/common.sh"
beds=$(find_testbeds "$repo")

need=(linux-source-6.12 gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu
    flex bison bc libssl-dev libelf-dev cpio device-tree-compiler make xz-utils gzip patch)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --no-upgrade "${missing[@]}" >/dev/null
fi

patches=("$beds/ffa/linux/linux-ffa-bus.patch" "$beds/ffa/linux/rfc-msg-size-fix.patch"
    "$beds/linux-virtio-msg/i2c-stub-builtin.patch")
fragments=("$beds/linux-virtio-msg/kernel.config" "$here/kernel-extra.config")
srcver=$(dpkg-query -W -f='${Version}' linux-source-6.12)
# Bump when the build steps below change what they produce.
recipe=1
key=$( (cat "${patches[@]}" "${fragments[@]}"; echo "$srcver recipe $recipe") | sha256sum | cut -c1-16)
out=$CACHE/kernel-$key
mkdir -p "$CACHE"
# One builder at a time per cache (a second waits, then finds it built).
exec 9>"$CACHE/build.lock"
flock 9

# QEMU 7.2 for arm, unpacked: installing it would replace the host's newer
# qemu-utils (backports), which Breaks qemu-system-common 7.2.
qroot=$CACHE/qemu
if [ ! -x "$qroot/usr/bin/qemu-system-aarch64" ]; then
    log "unpacking QEMU"
    rm -rf "$CACHE/qemu-debs" "$qroot" && mkdir -p "$CACHE/qemu-debs" "$qroot"
    (cd "$CACHE/qemu-debs" && apt-get download -qq qemu-system-arm qemu-system-common qemu-system-data)
    for f in "$CACHE"/qemu-debs/*.deb; do dpkg -x "$f" "$qroot"; done
    libs=()
    for l in $(apt-cache depends qemu-system-arm qemu-system-common | sed -n 's/^ *Depends: \(lib[^ <>]*\).*/\1/p' | sort -u); do
        dpkg -s "$l" >/dev/null 2>&1 || libs+=("$l")
    done
    if [ ${#libs[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --no-upgrade "${libs[@]}" >/dev/null
    fi
    rm -rf "$CACHE/qemu-debs"
fi

# busybox-static for arm64, from a private apt list (no foreign architecture
# added to the host).
if [ ! -x "$CACHE/busybox" ]; then
    log "fetching busybox-static (arm64)"
    lists=$CACHE/arm64-lists
    rm -rf "$lists" "$CACHE/bb" && mkdir -p "$lists/partial" "$CACHE/bb"
    o=(-oAPT::Architecture=arm64 -oAPT::Architectures=arm64 -oDir::State::Lists="$lists")
    apt-get "${o[@]}" update -qq
    (cd "$CACHE/bb" && apt-get "${o[@]}" download -qq busybox-static && dpkg -x busybox-static_*.deb x)
    cp "$CACHE/bb/x/bin/busybox" "$CACHE/busybox.tmp" && mv "$CACHE/busybox.tmp" "$CACHE/busybox"
    rm -rf "$CACHE/bb" "$lists"
fi

if [ -f "$out/Image" ] && [ -f "$out/loopback.dtb" ]; then
    log "kernel up to date: $out"
    echo "$out"
    exit 0
fi

log "building the kernel into $out (4-7 min cold on 2 cores)"
work=$CACHE/kernel-build
rm -rf "$work" && mkdir -p "$work/src" "$work/obj"
tar -xJf /usr/src/linux-source-6.12.tar.xz -C "$work/src" --strip-components=1
for p in "${patches[@]}"; do (cd "$work/src" && patch -p1 --quiet <"$p"); done
export ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-
make -C "$work/src" O="$work/obj" -s tinyconfig
(cd "$work/src" && scripts/kconfig/merge_config.sh -m -O "$work/obj" "$work/obj/.config" "${fragments[@]}" >/dev/null)
make -C "$work/src" O="$work/obj" -s olddefconfig
for s in $(cat "${fragments[@]}" | grep -o '^CONFIG_[A-Z0-9_]*=y'); do
    grep -qx "$s" "$work/obj/.config" || die "$s did not stick in the kernel .config"
done
t0=$(date +%s)
make -C "$work/src" O="$work/obj" -j"${JOBS:-$(($(nproc) + 1))}" Image >"$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log" >&2; die "kernel build failed"; }
log "kernel built in $(($(date +%s) - t0)) s"

staging=$out.tmp
rm -rf "$staging" && mkdir -p "$staging"
cp "$work/obj/arch/arm64/boot/Image" "$work/obj/.config" "$staging/"
# The loopback boot's tree: QEMU's own for this exact machine plus the pool.
q=$qroot/usr/bin/qemu-system-aarch64
"$q" -L "$qroot/usr/share/qemu" -M virt -cpu cortex-a57 -smp 2 -m 512M -nographic -nic none \
    -machine dumpdtb="$staging/virt.dtb" >/dev/null 2>&1 || true
[ -s "$staging/virt.dtb" ] || die "QEMU did not dump its device tree"
dtc -q -I dtb -O dts -o "$staging/virt.dts" "$staging/virt.dtb"
cat "$staging/virt.dts" "$beds/linux-virtio-msg/vmsglb.dtsi" >"$staging/loopback.dts"
dtc -q -I dts -O dtb -o "$staging/loopback.dtb" "$staging/loopback.dts"
rm -rf "$out" && mv "$staging" "$out"
rm -rf "$work"
# Kernels of older inputs are never used again.
for old in "$CACHE"/kernel-*; do
    [ "$old" = "$out" ] || [ ! -d "$old" ] || rm -rf "$old"
done
log "kernel ready: $out"
echo "$out"
