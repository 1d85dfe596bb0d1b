#!/bin/sh
# /init of the FF-A normal world: Linux with the RFC virtio-msg FF-A bus
# driver, whose devices vmsgd's secure partition serves.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
echo "nw: up at $(cut -d' ' -f1 /proc/uptime)s; cmdline: $(cat /proc/cmdline)"
ls /sys/bus/virtio/devices/ 2>&1
dmesg | grep -i -E 'ffa|virtio' | tail -20
echo "VMSG-FFA-DONE"
poweroff -f
