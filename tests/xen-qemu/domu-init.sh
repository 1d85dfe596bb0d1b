#!/bin/busybox sh
# /init of the PV domU: load the Xen device modules, run the Rust frontend
# against vmsgd in dom0, power off. The verdict line goes to the console
# (hvc0), which xenconsoled in dom0 logs.
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys

fail() {
    echo "VMSG-VERDICT FAIL domu-init: $*"
    poweroff -f
}

while read -r ko; do
    insmod "/lib/modules/$ko" || fail "insmod $ko"
done </lib/modules/load-order
mount -t xenfs xenfs /proc/xen || fail "mount xenfs"

args=""
for w in $(cat /proc/cmdline); do
    case "$w" in
    vmsg.nonce=*) args="$args --nonce ${w#vmsg.nonce=}" ;;
    vmsg.devid=*) args="$args --devid ${w#vmsg.devid=}" ;;
    vmsg.wait=*) args="$args --wait ${w#vmsg.wait=}" ;;
    vmsg.hotplug=*) args="$args --hotplug ${w#vmsg.hotplug=}" ;;
    esac
done
echo "domu: $(uname -r), frontend args:$args"
# shellcheck disable=SC2086
/domu-frontend $args
echo "domu: frontend exited with $?"
poweroff -f
