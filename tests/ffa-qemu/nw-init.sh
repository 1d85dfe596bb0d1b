#!/bin/sh
# /init of the FF-A normal world: Linux with the RFC virtio-msg FF-A bus
# driver probes vmsgd's secure partition over FF-A direct messages; the
# kernel's own virtio_rng and virtio_blk use the partition's devices. Each
# case prints VMSG-CASE <name> PASS|FAIL <facts>; then VMSG-NW-DONE.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
mount -t tmpfs tmpfs /tmp
check=/usr/bin/linux-guest-check
seed=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^vmsg\.seed=//p')
[ -n "$seed" ] || seed=1
pass() { echo "VMSG-CASE $1 PASS $2"; }
fail() { echo "VMSG-CASE $1 FAIL $2"; }
MiB=1048576

# ffa-probe: the partition's two devices, by virtio device id.
ids=""
for d in /sys/bus/virtio/devices/virtio*; do
    [ -e "$d/device" ] && ids="$ids $(basename "$d")=$(cat "$d/device")"
done
case "$ids" in
*=0x0004*) case "$ids" in *=0x0002*) pass ffa-probe "devices:$ids" ;; *) fail ffa-probe "no blk:$ids" ;; esac ;;
*) fail ffa-probe "no rng:$ids; $(dmesg | grep -i virtio-msg | tail -3 | tr '\n' ' ')" ;;
esac

# ffa-rng: virtio_rng is the current hwrng and its bytes are not constant.
cur=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)
case "$cur" in
virtio_rng.*)
    if out=$($check rng /dev/hwrng 4096 2>&1); then
        pass ffa-rng "rng_current=$cur $out"
    else
        fail ffa-rng "$out"
    fi
    ;;
*) fail ffa-rng "rng_current is '$cur'" ;;
esac

# ffa-blk: the RAM disk: size, serial, a pattern written (fsync), caches
# dropped, read back buffered and direct; the rest of the disk still zero.
if [ -b /dev/vda ]; then
    size=$(cat /sys/block/vda/size)
    serial=$(cat /sys/block/vda/serial 2>/dev/null)
    if ! w=$($check pattern write /dev/vda $MiB $MiB "$seed" 2>&1); then
        fail ffa-blk "write: $w"
    else
        echo 3 >/proc/sys/vm/drop_caches
        if a=$($check pattern check /dev/vda $MiB $MiB "$seed" 2>&1) \
            && b=$($check pattern check /dev/vda $MiB $MiB "$seed" --direct 2>&1) \
            && z=$($check zeros /dev/vda 0 $MiB 2>&1); then
            pass ffa-blk "vda size=$size sectors serial=$serial; $b; first MiB $z"
        else
            fail ffa-blk "size=$size serial=$serial: ${a:-} ${b:-} ${z:-}"
        fi
    fi
else
    fail ffa-blk "no /dev/vda"
fi

echo "VMSG-NW-DONE"
poweroff -f
