#!/usr/bin/env bash
# The real secure world: TF-A's EL3 SPMC runs vmsgd's secure partition
# (ffa/sp) as BL32 under QEMU TCG, with two normal worlds in turn:
#
#   linux   Linux with the RFC virtio-msg FF-A bus driver (the kernel of
#           tests/linux-qemu): its own virtio_rng and virtio_blk use the
#           partition's devices (RFC framing, the pre-mapped DMA pool).
#   client  ffa/nw-client, a bare-metal driver side: spec-v2 framing over
#           DIRECT_REQ2, FF-A memory sharing (MEM_SHARE → AREA_SHARE → the
#           partition's retrieve → unshare → reclaim), EVENT_POLL, RESET,
#           and the round-trip benchmark.
#
#   tests/ffa-qemu/run.sh [linux] [client]     # default: both
#
# Each boot is bounded by BOOT_TIMEOUT (s, default 120); the exit status is
# 0 only if every VMSG-CASE line says PASS. KEEP_LOG=1 prints the serial
# logs even on success.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=tests/linux-qemu/common.sh
. "$repo/tests/linux-qemu/common.sh"
boot_timeout=${BOOT_TIMEOUT:-120}
worlds=("$@")
[ ${#worlds[@]} -gt 0 ] || worlds=(linux client)
t0=$(date +%s)
elapsed() { echo "$(($(date +%s) - t0))s"; }

kdir=$("$repo/tests/linux-qemu/build-kernel.sh" | tail -1)
beds=$(find_testbeds "$repo")
log "kernel ready ($(elapsed))"

rustup target add aarch64-unknown-none aarch64-unknown-linux-gnu >/dev/null 2>&1
(cd "$repo/ffa/sp" && timeout 900 cargo build --quiet --release) || die "building the partition failed"
(cd "$repo/ffa/nw-client" && timeout 900 cargo build --quiet --release) || die "building the client failed"
# The Linux normal world's check program, static aarch64 (as tests/linux-qemu).
(cd "$repo" && CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    timeout 1800 cargo build --quiet --release --target aarch64-unknown-linux-gnu \
    -p vmsg-tests --example linux-guest-check) || die "building the check program failed"
run=$CACHE/ffa-run-$(echo "$repo" | sha256sum | cut -c1-8)
rm -rf "$run" && mkdir -p "$run/root"
aarch64-linux-gnu-objcopy -O binary "$repo/ffa/sp/target/aarch64-unknown-none/release/vmsgd-sp" "$run/sp.bin"
aarch64-linux-gnu-objcopy -O binary "$repo/ffa/nw-client/target/aarch64-unknown-none/release/vmsg-ffa-nw-client" "$run/client.bin"
log "partition $(stat -c %s "$run/sp.bin") bytes, client $(stat -c %s "$run/client.bin") bytes ($(elapsed))"

q=$CACHE/qemu
machine=(-M virt,secure=on,gic-version=2 -cpu max -smp 2 -m 1024)
results=$run/results
: >"$results"
host() { echo "VMSG-CASE $1 $2 $3" >>"$results"; }
# boot NAME FIRMWARE [QEMU ARGS...]: run QEMU bounded, keep its serial log.
boot() {
    local name=$1 fw=$2
    shift 2
    local serial=$run/serial-$name.log status
    set +e
    timeout --kill-after=10 "$boot_timeout" "$q/usr/bin/qemu-system-aarch64" -L "$q/usr/share/qemu" \
        "${machine[@]}" -bios "$fw" "$@" \
        -display none -monitor none -nic none -no-reboot -serial "file:$serial" </dev/null >"$run/qemu-$name.out" 2>&1
    status=$?
    set -e
    grep -a '^VMSG-CASE ' "$serial" | tr -d '\r' >>"$results" || true
    log "$name: QEMU exited with $status ($(elapsed))"
    return $status
}

for world in "${worlds[@]}"; do
    case $world in
    linux)
        fw=$("$here/build-tfa.sh" "$run/sp.bin" "$repo/ffa/sp/manifest.dts" "$kdir/Image" "$CACHE/ffa-tfa" linux | tail -1)
        r=$run/root
        mkdir -p "$r/bin" "$r/usr/bin" "$r/proc" "$r/sys" "$r/dev" "$r/tmp"
        cp "$CACHE/busybox" "$r/bin/busybox"
        cp "$repo/target/aarch64-unknown-linux-gnu/release/examples/linux-guest-check" "$r/usr/bin/"
        aarch64-linux-gnu-strip "$r/usr/bin/linux-guest-check"
        ln -sf busybox "$r/bin/sh"
        cp "$here/nw-init.sh" "$r/init"
        chmod 0755 "$r/init"
        (cd "$r" && find . | sort | cpio --quiet -o -H newc -R 0:0 | gzip -1) >"$run/initramfs.cpio.gz"
        # The normal world's device tree: QEMU's own for this secure machine
        # (dumped with the same firmware: without it the tree has devices the
        # secure machine lacks), plus the driver's DMA pool, the initramfs the
        # loader places and the command line (TF-A passes the tree on; Linux
        # gets no other command line).
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
        if boot linux "$fw" -dtb "$run/nw.dtb" \
            -device "loader,file=$run/initramfs.cpio.gz,addr=$initrd_at,force-raw=on" \
            && grep -aq '^VMSG-NW-DONE' "$run/serial-linux.log"; then
            host ffa-poweroff PASS "the Linux normal world powered off by itself"
        else
            host ffa-poweroff FAIL "no clean power-off (124: killed at BOOT_TIMEOUT=${boot_timeout}s)"
        fi
        # The partition logs each device going live with the features the
        # driver negotiated: the kernel's own choice, as the partition saw it.
        for dev in 0 1; do
            line=$(grep -a "vmsgd-sp: device $dev live" "$run/serial-linux.log" | tr -d '\r' | head -1)
            feat=$(echo "$line" | sed -n 's/.*features \(0x[0-9a-f]*\).*/\1/p')
            if [ -n "$feat" ] && [ $((feat >> 32 & 3)) = 3 ]; then
                host "ffa-features-$dev" PASS "${line#vmsgd-sp: } (VERSION_1 and ACCESS_PLATFORM negotiated)"
            else
                host "ffa-features-$dev" FAIL "partition log: '${line:-no live line}'"
            fi
        done
        for c in ffa-probe ffa-rng ffa-blk; do
            grep -q "^VMSG-CASE $c " "$results" || host "$c" FAIL "no verdict from the Linux normal world"
        done
        ;;
    client)
        fw=$("$here/build-tfa.sh" "$run/sp.bin" "$repo/ffa/sp/manifest.dts" "$run/client.bin" "$CACHE/ffa-tfa-client" raw | tail -1)
        if boot client "$fw" && grep -aq '^VMSG-NW-CLIENT-DONE' "$run/serial-client.log"; then
            host nw-poweroff PASS "the client normal world finished and powered off"
        else
            host nw-poweroff FAIL "no clean end (124: killed at BOOT_TIMEOUT=${boot_timeout}s)"
        fi
        for c in nw-discover nw-version nw-area-share nw-devices nw-rng nw-blk nw-bench nw-unshare nw-reset; do
            grep -q "^VMSG-CASE $c " "$results" || host "$c" FAIL "no verdict from the client"
        done
        grep -a '^VMSG-FFA-BENCH' "$run/serial-client.log" | tr -d '\r' || true
        ;;
    *) die "unknown normal world $world (linux, client)" ;;
    esac
done

cat "$results"
if grep -q ' FAIL ' "$results" || [ -n "${KEEP_LOG:-}" ]; then
    for f in "$run"/serial-*.log; do
        echo "----- $f (last 120 lines)"
        tail -n 120 "$f"
    done
fi
if grep -q ' FAIL ' "$results"; then
    echo "VMSG-FFA-QEMU FAIL ($(elapsed))"
    exit 1
fi
echo "VMSG-FFA-QEMU PASS $(wc -l <"$results") checks ($(elapsed))"
