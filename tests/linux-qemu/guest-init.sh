#!/bin/sh
# /init of the real-Linux test guest: vmsgd serves its devices on the
# kernel's RFC virtio-msg loopback and the kernel's own drivers (virtio_rng,
# virtio_blk) use them. The cases are in /cases/*.sh (tests/linux-qemu/cases),
# sourced in name order. Each case prints one line
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
# To stderr (the console too): a FAIL inside $(run_or_fail ...) is not captured.
fail() { echo "VMSG-CASE $1 FAIL $2" >&2; }
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
# The registrar adds the devices in dev_num order, each once the kernel
# probed it: the last configured device's line means all are there.
last=$(sed -n 's/^dev_num = \([0-9]*\)/\1/p' /tmp/vmsgd.toml | sort -n | tail -1)
if ! out=$($check wait-log /share/vmsgd.log "loopback device $last added" 60000 2>&1); then
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
MiB=1048576

# One file per device (and the lifecycle cases last), in name order.
for f in /cases/*.sh; do
    . "$f"
done

finish
