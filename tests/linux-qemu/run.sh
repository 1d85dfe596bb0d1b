#!/usr/bin/env bash
# Real Linux drivers against vmsgd: an arm64 Linux 6.12 with the RFC
# virtio-msg loopback bus boots under QEMU TCG; inside it vmsgd (static
# aarch64) serves rng, blk and i2c devices on the loopback and the kernel's
# own virtio_rng, virtio_blk and i2c-virtio drive them. The guest's /init
# (guest-init.sh) prints a verdict line per case; after it powered off, this
# script checks the images on the 9p share from the host and exits 0 only if
# every case passed.
#
#   tests/linux-qemu/run.sh [CASE ...]     # default: every case
#
# Cases: rng rng-rate blk-identity blk-data blk-mq blk-discard blk-ro blk-fs
#        i2c-stub i2c-allow i2c-unsupported i2c-lm75 i2c-eeprom i2c-at24
#        i2c-rdwr hotplug shutdown (the host checks follow from them).
# Environment: BOOT_TIMEOUT (s, default 300), KEEP_LOG=1 (print the serial
#              log even on success), VMSGD_LINUX_CACHE, VMSGD_TESTBEDS.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=tests/linux-qemu/common.sh
. "$here/common.sh"

# The cases: cases/NN-name.sh run in the guest in name order, each naming
# its verdicts on a "# cases:" line; cases/NN-name.host.sh prepare and check
# their side on the host.
mapfile -t all_cases < <(sed -n 's/^# cases: //p' "$here"/cases/*.sh | tr ' ' '\n' | grep .)
if [ $# -gt 0 ]; then cases=("$@"); else cases=("${all_cases[@]}"); fi
for c in "${cases[@]}"; do
    case " ${all_cases[*]} " in *" $c "*) ;; *) die "unknown case $c (${all_cases[*]})" ;; esac
done
boot_timeout=${BOOT_TIMEOUT:-300}
t0=$(date +%s)
elapsed() { echo "$(($(date +%s) - t0))s"; }

kdir=$("$here/build-kernel.sh" | tail -1)
[ -f "$kdir/Image" ] || die "no kernel in $kdir"
log "kernel ready ($(elapsed))"

# Static aarch64 vmsgd and the guest's check program (the same target
# directory as tools/cross-build-aarch64.sh, so CI builds them once), and
# the check program for the host.
target=aarch64-unknown-linux-gnu
if ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null
fi
rustup target add "$target" >/dev/null 2>&1
(cd "$repo" && CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    timeout 1800 cargo build --quiet --release --target "$target" \
    -p vmsgd --bin vmsgd -p vmsg-tests --example linux-guest-check) \
    || die "building the static aarch64 binaries failed"
(cd "$repo" && timeout 900 cargo build --quiet --release -p vmsg-tests --example linux-guest-check) \
    || die "building the host check program failed"
abin=$repo/target/$target/release
hostcheck=$repo/target/release/examples/linux-guest-check
log "binaries built ($(elapsed))"

# The run's folder (one per checkout, so worktrees can run side by side):
# the initramfs tree, the 9p share with the images.
run=$CACHE/run-$(echo "$repo" | sha256sum | cut -c1-8)
share=$run/share
rm -rf "$run" && mkdir -p "$run/root" "$share"
MiB=1048576
seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
# Kernel command-line additions a device's prepare phase may make.
extra_append=""
phase=prepare
for f in "$here"/cases/*.host.sh; do
    # shellcheck disable=SC1090
    . "$f"
done

r=$run/root
mkdir -p "$r/bin" "$r/usr/bin" "$r/usr/sbin" "$r/etc" "$r/proc" "$r/sys" "$r/dev" "$r/tmp" "$r/share" "$r/mnt"
cp "$CACHE/busybox" "$r/bin/busybox"
ln -s busybox "$r/bin/sh"
cp "$here/guest-init.sh" "$r/init"
chmod 0755 "$r/init"
mkdir -p "$r/cases"
cp "$here"/cases/*.sh "$r/cases/"
rm -f "$r"/cases/*.host.sh
cp "$abin/vmsgd" "$r/usr/sbin/vmsgd"
cp "$abin/examples/linux-guest-check" "$r/usr/bin/linux-guest-check"
aarch64-linux-gnu-strip "$r/usr/sbin/vmsgd" "$r/usr/bin/linux-guest-check"
cat "$here"/config/*.toml >"$r/etc/vmsgd.toml"
(cd "$r" && find . | sort | cpio --quiet -o -H newc -R 0:0 | gzip -1) >"$run/initramfs.cpio.gz"
log "initramfs $(stat -c %s "$run/initramfs.cpio.gz") bytes ($(elapsed))"

case_list=$(IFS=,; echo "${cases[*]}")
serial=$run/serial.log
q=$CACHE/qemu
tq=$(date +%s)
set +e
timeout --kill-after=10 "$boot_timeout" "$q/usr/bin/qemu-system-aarch64" -L "$q/usr/share/qemu" \
    -M virt -cpu cortex-a57 -smp 2 -m 512M -display none -monitor none -nic none -no-reboot \
    -serial "file:$serial" \
    -kernel "$kdir/Image" -initrd "$run/initramfs.cpio.gz" -dtb "$kdir/loopback.dtb" \
    -append "console=ttyAMA0 panic=-1 vmsg.cases=$case_list vmsg.seed=$seed $extra_append" \
    -fsdev "local,id=share,path=$run/share,security_model=none" \
    -device virtio-9p-device,fsdev=share,mount_tag=share \
    </dev/null >"$run/qemu.out" 2>&1
qstatus=$?
set -e
boot_s=$(($(date +%s) - tq))
log "QEMU exited with $qstatus after ${boot_s}s ($(elapsed))"

# Verdicts: the guest's, then the host's checks of what it left behind.
results=$run/results
grep -a '^VMSG-CASE ' "$serial" | tr -d '\r' >"$results" || true
host() { echo "VMSG-CASE $1 $2 $3" >>"$results"; }
ran() { grep -q "^VMSG-CASE $1 " "$results"; }
passed() { grep -q "^VMSG-CASE $1 PASS" "$results"; }
hc() { "$hostcheck" "$@" 2>&1; }

if [ "$qstatus" = 0 ] && grep -aq '^VMSG-GUEST-DONE' "$serial"; then
    # With vmsgd gone, the kernel's shutdown resets every device it left
    # registered and waits out its 4 s transfer timeout for each.
    done_at=$(sed -n 's/^VMSG-GUEST-DONE at \([0-9.]*\)s.*/\1/p' "$serial" | tr -d '\r')
    down_at=$(sed -n 's/^\[ *\([0-9.]*\)\] reboot: Power down.*/\1/p' "$serial" | tr -d '\r')
    host poweroff PASS "the guest powered off by itself: checks done at ${done_at:-?}s, power down at ${down_at:-?}s of guest uptime (QEMU ${boot_s}s)"
else
    host poweroff FAIL "QEMU exit $qstatus after ${boot_s}s (124: killed at BOOT_TIMEOUT=${boot_timeout}s)"
fi
phase=check
for f in "$here"/cases/*.host.sh; do
    # shellcheck disable=SC1090
    . "$f"
done

fails=0
for c in "${cases[@]}"; do
    ran "$c" || host "$c" FAIL "no verdict from the guest"
done
grep -q ' FAIL ' "$results" && fails=1
cat "$results"
if [ "$fails" != 0 ] || [ -n "${KEEP_LOG:-}" ]; then
    echo "----- serial log (last 200 lines): $serial"
    tail -n 200 "$serial"
    echo "----- vmsgd log (last 60 lines)"
    tail -n 60 "$run/share/vmsgd.log" 2>/dev/null || true
fi
if [ "$fails" != 0 ]; then
    echo "VMSG-LINUX-QEMU FAIL ($(elapsed), boot to verdict ${boot_s}s)"
    exit 1
fi
echo "VMSG-LINUX-QEMU PASS $(wc -l <"$results") checks ($(elapsed), boot to verdict ${boot_s}s)"
