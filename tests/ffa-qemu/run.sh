#!/usr/bin/env bash
# The real secure world: TF-A's EL3 SPMC runs vmsgd's secure partition
# (ffa/sp) as BL32, and a Linux normal world with the RFC virtio-msg FF-A
# bus driver (the kernel of tests/linux-qemu) uses the partition's devices
# with its own virtio drivers. Everything under QEMU TCG, bounded in time.
#
#   tests/ffa-qemu/run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=tests/linux-qemu/common.sh
. "$repo/tests/linux-qemu/common.sh"
boot_timeout=${BOOT_TIMEOUT:-120}
t0=$(date +%s)
elapsed() { echo "$(($(date +%s) - t0))s"; }

kdir=$("$repo/tests/linux-qemu/build-kernel.sh" | tail -1)
beds=$(find_testbeds "$repo")
log "kernel ready ($(elapsed))"

rustup target add aarch64-unknown-none aarch64-unknown-linux-gnu >/dev/null 2>&1
(cd "$repo/ffa/sp" && timeout 900 cargo build --quiet --release) || die "building the partition failed"
# The normal world's check program, static aarch64 (as tests/linux-qemu).
(cd "$repo" && CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    timeout 1800 cargo build --quiet --release --target aarch64-unknown-linux-gnu \
    -p vmsg-tests --example linux-guest-check) || die "building the check program failed"
run=$CACHE/ffa-run-$(echo "$repo" | sha256sum | cut -c1-8)
rm -rf "$run" && mkdir -p "$run/root"
aarch64-linux-gnu-objcopy -O binary "$repo/ffa/sp/target/aarch64-unknown-none/release/vmsgd-sp" "$run/sp.bin"
log "partition $(stat -c %s "$run/sp.bin") bytes ($(elapsed))"

fw=$("$here/build-tfa.sh" "$run/sp.bin" "$repo/ffa/sp/manifest.dts" "$kdir/Image" "$CACHE/ffa-tfa" | tail -1)
log "TF-A built ($(elapsed))"

r=$run/root
mkdir -p "$r/bin" "$r/usr/bin" "$r/proc" "$r/sys" "$r/dev" "$r/tmp"
cp "$CACHE/busybox" "$r/bin/busybox"
cp "$repo/target/aarch64-unknown-linux-gnu/release/examples/linux-guest-check" "$r/usr/bin/"
aarch64-linux-gnu-strip "$r/usr/bin/linux-guest-check"
ln -s busybox "$r/bin/sh"
cp "$here/nw-init.sh" "$r/init"
chmod 0755 "$r/init"
(cd "$r" && find . | sort | cpio --quiet -o -H newc -R 0:0 | gzip -1) >"$run/initramfs.cpio.gz"

# The normal world's device tree: QEMU's own for this secure machine (dumped
# with the same firmware: without it the tree has devices the secure machine
# lacks), plus the driver's DMA pool, the initramfs the loader places and the
# command line (TF-A passes the tree on; Linux gets no other command line).
q=$CACHE/qemu
machine=(-M virt,secure=on,gic-version=2 -cpu max -smp 2 -m 1024)
"$q/usr/bin/qemu-system-aarch64" -L "$q/usr/share/qemu" "${machine[@]}" -bios "$fw" \
    -display none -nic none -machine dumpdtb="$run/virt.dtb" >/dev/null 2>&1 || true
[ -s "$run/virt.dtb" ] || die "QEMU did not dump its device tree"
initrd_at=0x48000000
seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
initrd_end=$(printf '0x%x' $((initrd_at + $(stat -c %s "$run/initramfs.cpio.gz"))))
{
    dtc -q -I dtb -O dts "$run/virt.dtb"
    echo "/ {"
    cat "$beds/ffa/linux/vmsgffa.dtsi"
    echo "};"
    cat <<DTS
/ {
	chosen {
		/delete-property/ rng-seed;
		/delete-property/ kaslr-seed;
		bootargs = "console=ttyAMA0 panic=-1 virtio_msg_ffa.used_poll_ms=5 vmsg.seed=$seed";
		linux,initrd-start = <0x0 $initrd_at>;
		linux,initrd-end = <0x0 $initrd_end>;
	};
};
DTS
} >"$run/nw.dts"
dtc -q -I dts -O dtb -o "$run/nw.dtb" "$run/nw.dts"

serial=$run/serial.log
set +e
timeout --kill-after=10 "$boot_timeout" "$q/usr/bin/qemu-system-aarch64" -L "$q/usr/share/qemu" \
    "${machine[@]}" -bios "$fw" -dtb "$run/nw.dtb" \
    -device "loader,file=$run/initramfs.cpio.gz,addr=$initrd_at,force-raw=on" \
    -display none -monitor none -nic none -no-reboot -serial "file:$serial" </dev/null >"$run/qemu.out" 2>&1
qstatus=$?
set -e
log "QEMU exited with $qstatus ($(elapsed))"

results=$run/results
grep -a '^VMSG-CASE ' "$serial" | tr -d '\r' >"$results" || true
host() { echo "VMSG-CASE $1 $2 $3" >>"$results"; }
if [ "$qstatus" = 0 ] && grep -aq '^VMSG-NW-DONE' "$serial"; then
    host ffa-poweroff PASS "the normal world powered off by itself"
else
    host ffa-poweroff FAIL "QEMU exit $qstatus (124: killed at BOOT_TIMEOUT=${boot_timeout}s)"
fi
# The partition logs each device going live with the features the driver
# negotiated: the kernel's own choice, as the partition saw it.
for dev in 0 1; do
    line=$(grep -a "vmsgd-sp: device $dev live" "$serial" | tr -d '\r' | head -1)
    feat=$(echo "$line" | sed -n 's/.*features \(0x[0-9a-f]*\).*/\1/p')
    if [ -n "$feat" ] && [ $((feat >> 32 & 3)) = 3 ]; then
        host ffa-features-$dev PASS "${line#vmsgd-sp: } (VERSION_1 and ACCESS_PLATFORM negotiated)"
    else
        host ffa-features-$dev FAIL "partition log: '${line:-no live line}'"
    fi
done
for c in ffa-probe ffa-rng ffa-blk; do
    grep -q "^VMSG-CASE $c " "$results" || host "$c" FAIL "no verdict from the normal world"
done
cat "$results"
if grep -q ' FAIL ' "$results" || [ -n "${KEEP_LOG:-}" ]; then
    echo "----- serial log (last 150 lines): $serial"
    tail -n 150 "$serial"
fi
if grep -q ' FAIL ' "$results"; then
    echo "VMSG-FFA-QEMU FAIL ($(elapsed))"
    exit 1
fi
echo "VMSG-FFA-QEMU PASS $(wc -l <"$results") checks ($(elapsed))"
