#!/bin/sh
# /init of the real-Linux test guest: vmsgd serves its devices on the
# kernel's RFC virtio-msg loopback and the kernel's own drivers (virtio_rng,
# virtio_blk) use them. Each case prints one line
#   VMSG-CASE <name> PASS|FAIL <facts or reason>
# and the guest ends with VMSG-GUEST-DONE and powers off. The host
# (run.sh) checks the images on the 9p share afterwards.
#
# Kernel command line: vmsg.cases=a,b,... (default: all), vmsg.seed=N.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox mkdir -p /proc /sys /dev /tmp /share /mnt
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
mount -t tmpfs tmpfs /tmp

check=/usr/bin/linux-guest-check
cmdline=$(cat /proc/cmdline)
arg() { echo "$cmdline" | tr ' ' '\n' | sed -n "s/^vmsg\.$1=//p"; }
cases=$(arg cases)
[ -n "$cases" ] || cases=all
seed=$(arg seed)
[ -n "$seed" ] || seed=1

# Cases the guest ran, and a stop for anything that went wrong before them.
pass() { echo "VMSG-CASE $1 PASS $2"; }
fail() { echo "VMSG-CASE $1 FAIL $2"; }
finish() {
    echo "VMSG-GUEST-DONE at $(cut -d' ' -f1 /proc/uptime)s"
    sync
    poweroff -f
}
wanted() { [ "$cases" = all ] || echo ",$cases," | grep -q ",$1,"; }
# Run a check and print its facts; on failure print the case's FAIL line
# with the check's error. (Its variables are prefixed: sh has no locals.)
run_or_fail() {
    _case=$1
    shift
    if ! _facts=$("$@" 2>&1); then
        fail "$_case" "$* -> $_facts"
        return 1
    fi
    echo "$_facts"
}

if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /share; then
    fail boot "9p share not mounted"
    finish
fi
# vmsgd's rng reads the guest's own CRNG (GRND_NONBLOCK) and holds requests
# while it is not ready; a blocking read makes the kernel seed it now (jitter
# entropy) instead of whenever interrupts have gathered enough under TCG.
t0=$(cut -d' ' -f1 /proc/uptime)
head -c 1 /dev/random >/dev/null
echo "guest: CRNG ready (asked at ${t0}s, ready at $(cut -d' ' -f1 /proc/uptime)s)"

cp /etc/vmsgd.toml /tmp/vmsgd.toml
vmsgd check-config /tmp/vmsgd.toml >/share/check-config.log 2>&1 || {
    fail boot "vmsgd check-config: $(tail -3 /share/check-config.log)"
    finish
}
vmsgd --config /tmp/vmsgd.toml >/share/vmsgd.log 2>&1 &
vmsgd_pid=$!
# The registrar adds the devices in dev_num order; each ADD returns once the
# kernel probed it, so the last block device's node means all are there.
if ! out=$($check wait-path /dev/vdc 60000 2>&1); then
    fail boot "devices did not appear: $out; vmsgd log: $(tail -5 /share/vmsgd.log)"
    finish
fi
echo "guest: devices up ($out) at $(cut -d' ' -f1 /proc/uptime)s"

# Block devices by serial, not by probe order.
by_serial() {
    for s in /sys/block/vd*/serial; do
        [ "$(cat "$s")" = "$1" ] && basename "$(dirname "$s")" && return 0
    done
    return 1
}
data=$(by_serial vmsg-data)
ro=$(by_serial vmsg-ro)
fs=$(by_serial vmsg-fs)
echo "guest: data=$data ro=$ro fs=$fs"

hwrng=/sys/class/misc/hw_random
MiB=1048576

if wanted rng; then (
    cur=$(cat $hwrng/rng_current)
    avail=$(cat $hwrng/rng_available)
    case "$cur" in virtio_rng.*) ;; *)
        fail rng "rng_current is '$cur' (available: $avail)"
        exit
        ;;
    esac
    n=$(echo "$avail" | tr ' ' '\n' | grep -c '^virtio_rng\.')
    [ "$n" = 2 ] || { fail rng "expected 2 virtio_rng in rng_available, got '$avail'"; exit; }
    out=$(run_or_fail rng $check rng /dev/hwrng 65536) || exit
    pass rng "rng_current=$cur available='$avail' $out"
); fi

if wanted rng-rate; then (
    # The rate-limited device is the second one registered.
    limited=$(cat $hwrng/rng_available | tr ' ' '\n' | grep '^virtio_rng\.' | sed -n 2p)
    echo "$limited" >$hwrng/rng_current
    # 4096 B/s with a one-second burst: 16 KiB take at least 3 s.
    out=$(run_or_fail rng-rate $check rng /dev/hwrng 16384) || exit
    first=$(cat $hwrng/rng_available | tr ' ' '\n' | grep '^virtio_rng\.' | sed -n 1p)
    echo "$first" >$hwrng/rng_current
    free=$(run_or_fail rng-rate $check rng /dev/hwrng 16384) || exit
    ms=$(echo "$out" | sed -n 's/.*ms=\([0-9]*\).*/\1/p')
    if [ "$ms" -ge 2900 ]; then
        pass rng-rate "limited($limited, 4096 B/s): $out; unlimited($first): $free"
    else
        fail rng-rate "16 KiB at 4096 B/s took ${ms} ms (< 2900): $out"
    fi
); fi

if wanted blk-identity; then (
    size=$(cat /sys/block/$data/size)
    serial=$(cat /sys/block/$data/serial)
    queues=$(ls /sys/block/$data/mq | wc -l)
    want=$((64 * MiB / 512))
    if [ "$size" = "$want" ] && [ "$serial" = vmsg-data ] && [ "$queues" = 2 ]; then
        pass blk-identity "$data: size=$size sectors serial=$serial mq=$queues"
    else
        fail blk-identity "$data: size=$size (want $want) serial=$serial mq=$queues (want 2)"
    fi
); fi

if wanted blk-data; then (
    # Buffered write + fsync, caches dropped, read back buffered and direct.
    run_or_fail blk-data $check pattern write /dev/$data $MiB $((4 * MiB)) "$seed" >/dev/null || exit
    echo 3 >/proc/sys/vm/drop_caches
    run_or_fail blk-data $check pattern check /dev/$data $MiB $((4 * MiB)) "$seed" >/dev/null || exit
    out=$(run_or_fail blk-data $check pattern check /dev/$data $MiB $((4 * MiB)) "$seed" --direct) || exit
    pass blk-data "/dev/$data 4 MiB at 1 MiB: written+fsync, caches dropped, $out"
); fi

if wanted blk-mq; then (
    # A writer pinned to each CPU: blk-mq maps each CPU to its own hardware
    # queue. One after the other: two CPUs submitting at once can wedge this
    # RFC kernel (its transfer sleeps under blk-mq's locks; README).
    for cpu in 0 1; do
        off=$(((16 + 4 * cpu) * MiB))
        run_or_fail blk-mq taskset -c $cpu $check pattern write /dev/$data $off $((4 * MiB)) $((seed + cpu)) --direct >/dev/null || exit
    done
    for cpu in 0 1; do
        off=$(((16 + 4 * cpu) * MiB))
        run_or_fail blk-mq taskset -c $cpu $check pattern check /dev/$data $off $((4 * MiB)) $((seed + cpu)) --direct >/dev/null || exit
    done
    pass blk-mq "/dev/$data: $(ls /sys/block/$data/mq | wc -l) hw queues, a writer pinned to each CPU in turn, both regions read back"
); fi

if wanted blk-discard; then (
    q=/sys/block/$data/queue
    dmax=$(cat $q/discard_max_bytes)
    zmax=$(cat $q/write_zeroes_max_bytes)
    if [ "$dmax" = 0 ] || [ "$zmax" = 0 ]; then
        fail blk-discard "the kernel does not use them: discard_max_bytes=$dmax write_zeroes_max_bytes=$zmax"
        exit
    fi
    for off in $((32 * MiB)) $((36 * MiB)); do
        run_or_fail blk-discard $check pattern write /dev/$data $off $((2 * MiB)) "$seed" --direct >/dev/null || exit
    done
    run_or_fail blk-discard $check blk-ioctl discard /dev/$data $((32 * MiB)) $MiB >/dev/null || exit
    run_or_fail blk-discard $check blk-ioctl zeroout /dev/$data $((36 * MiB)) $MiB >/dev/null || exit
    # Discard may leave anything (the spec promises nothing); our device
    # punches a hole, which reads as zeros. Write zeroes must read as zeros.
    run_or_fail blk-discard $check zeros /dev/$data $((36 * MiB)) $MiB >/dev/null || exit
    d=$($check zeros /dev/$data $((32 * MiB)) $MiB >/dev/null 2>&1 && echo zeros || echo data)
    # The second halves were not touched.
    run_or_fail blk-discard $check pattern check /dev/$data $((33 * MiB)) $MiB "$seed" --direct >/dev/null || exit
    run_or_fail blk-discard $check pattern check /dev/$data $((37 * MiB)) $MiB "$seed" --direct >/dev/null || exit
    pass blk-discard "discard_max_bytes=$dmax write_zeroes_max_bytes=$zmax; discarded 1 MiB reads $d, zeroed 1 MiB reads zeros, neighbours intact"
); fi

if wanted blk-ro; then (
    flag=$(cat /sys/block/$ro/ro)
    [ "$flag" = 1 ] || { fail blk-ro "/sys/block/$ro/ro is $flag"; exit; }
    # The block layer refuses to open it for writing...
    if dd if=/dev/zero of=/dev/$ro bs=4096 count=1 2>/dev/null; then
        fail blk-ro "the kernel let a write open /dev/$ro"
        exit
    fi
    # ...and with the kernel's flag cleared, the device itself refuses.
    blockdev --setrw /dev/$ro
    if dd if=/dev/zero of=/dev/$ro bs=4096 count=1 oflag=direct 2>/tmp/ro.err; then
        fail blk-ro "vmsgd accepted a write to a read-only device"
        exit
    fi
    err=$(grep -m1 '^dd:' /tmp/ro.err)
    blockdev --setro /dev/$ro
    out=$(run_or_fail blk-ro $check pattern check /dev/$ro 0 $MiB 7 --direct) || exit
    pass blk-ro "/dev/$ro ro=1, open for write refused, device write refused ($err), content $out"
); fi

if wanted blk-fs; then (
    head -c $((3 * MiB + 1234)) /dev/urandom >/tmp/src.bin
    cp /tmp/src.bin /share/src.bin
    mke2fs -q /dev/$fs >/tmp/mkfs.out 2>&1 || { fail blk-fs "mke2fs: $(cat /tmp/mkfs.out)"; exit; }
    mount -t ext2 /dev/$fs /mnt || { fail blk-fs "mount"; exit; }
    mkdir /mnt/dir && cp /tmp/src.bin /mnt/dir/copy.bin && sync
    umount /mnt || { fail blk-fs "umount"; exit; }
    echo 3 >/proc/sys/vm/drop_caches
    mount -t ext2 /dev/$fs /mnt || { fail blk-fs "remount"; exit; }
    if cmp /tmp/src.bin /mnt/dir/copy.bin; then
        umount /mnt
        pass blk-fs "/dev/$fs: mke2fs, mount, copy $(wc -c </tmp/src.bin) bytes, umount, remount, identical"
    else
        umount /mnt
        fail blk-fs "the copy differs after remount"
    fi
); fi

if wanted hotplug; then (
    cp /tmp/vmsgd.toml /tmp/vmsgd.toml.orig
    cat >>/tmp/vmsgd.toml <<EOF

[[guest.device]]
kind = "blk"
dev_num = 5
path = "/share/hot.img"
serial = "vmsg-hot"
EOF
    kill -HUP $vmsgd_pid
    out=$(run_or_fail hotplug $check wait-path /dev/vdd 30000) || exit
    hot=$(by_serial vmsg-hot) || { fail hotplug "no block device with serial vmsg-hot"; exit; }
    run_or_fail hotplug $check pattern write /dev/$hot 0 $MiB $((seed + 5)) --direct >/dev/null || exit
    run_or_fail hotplug $check pattern check /dev/$hot 0 $MiB $((seed + 5)) --direct >/dev/null || exit
    # Removing it again: this kernel's REMOVE deadlocks, so vmsgd refuses
    # the removal (logged) and the device keeps working.
    cp /tmp/vmsgd.toml.orig /tmp/vmsgd.toml
    kill -HUP $vmsgd_pid
    run_or_fail hotplug $check wait-log /share/vmsgd.log "cannot be removed" 30000 >/dev/null || exit
    run_or_fail hotplug $check pattern check /dev/$hot 0 $MiB $((seed + 5)) --direct >/dev/null || exit
    pass hotplug "added dev 5 by SIGHUP: /dev/$hot appeared ($out), 1 MiB written and read back; removal refused as documented, device still served"
); fi

if wanted shutdown; then (
    # SIGTERM must end vmsgd promptly even with the kernel's devices bound
    # (it does not call this kernel's deadlocking REMOVE).
    kill -TERM $vmsgd_pid
    if out=$($check wait-exit $vmsgd_pid 5000 2>&1); then
        pass shutdown "vmsgd ended on SIGTERM ($out); devices left registered"
    else
        fail shutdown "$out; vmsgd log: $(tail -3 /share/vmsgd.log)"
    fi
); fi

finish
