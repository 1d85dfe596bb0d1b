#!/bin/busybox sh
# /init of dom0: bring up the Xen toolstack pieces (xenstored, xen-init-dom0,
# xenconsoled), start the vmsgd backend the way a user would, `xl create` a
# PV domU whose init runs the Rust frontend, collect the domU's verdict from
# its console log, check the blk image, print one final line and power off:
#
#   VMSG-XEN-QEMU PASS ...   or   VMSG-XEN-QEMU FAIL <why>
#
# Settings come from /etc/xen-qemu.env (written by build-images.sh).
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /dev/pts /run /tmp /var
mount -t devpts devpts /dev/pts # xenconsoled gives each guest a pty
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
ln -s /run /var/run
mkdir -p /run/xen /run/xenstored /var/lib/xen /var/log/xen/console /var/lib/vmsgd

export PATH=/bin:/usr/sbin:/usr/lib/xen-4.17/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
. /etc/xen-qemu.env

finish() { # verdict words...
    echo "VMSG-XEN-QEMU $*"
    sync
    poweroff -f
    sleep 30
}

step() { echo "dom0: $* ($(cut -d' ' -f1 /proc/uptime)s)"; }

while read -r ko; do
    insmod "/lib/modules/$ko" || finish FAIL "insmod $ko"
done </lib/modules/load-order
mount -t xenfs xenfs /proc/xen || finish FAIL "mount xenfs"

step "starting xenstored"
xenstored --pid-file /run/xenstored.pid || finish FAIL "xenstored"
timeout 30 xen-init-dom0 || finish FAIL "xen-init-dom0"
xenconsoled --log=guest --log-dir=/var/log/xen/console --pid-file=/run/xenconsoled.pid \
    || finish FAIL "xenconsoled"

step "dom0 up: $(xl info | grep -E '^(xen_version|total_memory|free_memory)' | tr -s ' ' | tr '\n' ' ')"

truncate -s "$IMAGE_SIZE" "/var/lib/vmsgd/$DOMU.img" || finish FAIL "creating the image"

case "$SERVER" in
vmsgd-watch)
    step "starting vmsgd watch"
    vmsgd watch --config-dir /etc/vmsgd/domains &
    server=$!
    step "xl create $DOMU"
    timeout 60 xl create "/etc/xen/$DOMU.cfg" || finish FAIL "xl create"
    ;;
xl-hook)
    step "xl create through the vmsgd hook"
    timeout 60 /etc/xen/scripts/vmsgd-xl-create "/etc/xen/$DOMU.cfg" || finish FAIL "vmsgd-xl-create"
    server=""
    ;;
example)
    step "xl create -p $DOMU"
    timeout 60 xl create -p "/etc/xen/$DOMU.cfg" || finish FAIL "xl create -p"
    domid=$(xl domid "$DOMU") || finish FAIL "xl domid"
    DOM0_SERVE_LOG=${DOM0_SERVE_LOG:-info} dom0-serve "$domid" "/var/lib/vmsgd/$DOMU.img" &
    server=$!
    xl unpause "$DOMU" || finish FAIL "xl unpause"
    ;;
*) finish FAIL "unknown SERVER=$SERVER" ;;
esac
domid=$(xl domid "$DOMU") || finish FAIL "xl domid after create"
step "domain $DOMU is $domid"
# Informational: what mapping the domU's frames 0..15 by number does on x86
# PV (foreign mode's mechanism; docs/xen-bus.md §10). Never fails the test.
if [ -x /usr/sbin/foreign-probe ]; then
    foreign-probe "$domid" 0 16 || true
fi

log="/var/log/xen/console/guest-$DOMU.log"
i=0
# Hot-add (vmsgd's own processes only): once the domU's frontend waits for
# device 3, add an rng there to the domain file and SIGHUP its backend,
# the way an operator would (`systemctl reload vmsgd-watch` does the same).
if [ "$SERVER" != example ]; then
    while [ "$i" -lt "$GUEST_TIMEOUT" ]; do
        grep -a -q 'waiting for hot-added device' "$log" 2>/dev/null && break
        grep -a -q 'VMSG-VERDICT' "$log" 2>/dev/null && break
        xl domid "$DOMU" >/dev/null 2>&1 || break
        sleep 1
        i=$((i + 1))
    done
    if grep -a -q 'waiting for hot-added device' "$log" 2>/dev/null; then
        printf '\n[[guest.device]]\nkind = "rng"\ndev_num = 3\n' >>"/etc/vmsgd/domains/$DOMU.toml"
        pids=$(ps | awk '/[v]msgd run --domain/ { print $1 }')
        [ -n "$pids" ] || finish FAIL "hot-add: no vmsgd run process to signal"
        step "hot-add: rng as device 3, SIGHUP to $pids"
        # shellcheck disable=SC2086
        kill -HUP $pids
    fi
fi

# Wait (bounded) for the verdict in the guest's console log.
verdict=""
while [ "$i" -lt "$GUEST_TIMEOUT" ]; do
    verdict=$(grep -a -m1 'VMSG-VERDICT' "$log" 2>/dev/null)
    [ -n "$verdict" ] && break
    xl domid "$DOMU" >/dev/null 2>&1 || break
    sleep 1
    i=$((i + 1))
done
# The domU powers itself off after its verdict; give it a bounded while.
j=0
while xl domid "$DOMU" >/dev/null 2>&1 && [ "$j" -lt 30 ]; do
    sleep 1
    j=$((j + 1))
done
step "entropy: $(cat /proc/sys/kernel/random/entropy_avail) $(dmesg | grep -i -m2 crng | tr '\n' ' ')"
step "guest console log:"
sed 's/^/domu| /' "$log" 2>/dev/null | tr -d '\r'
[ -n "$verdict" ] || finish FAIL "no verdict from the domU within ${GUEST_TIMEOUT}s"
case "$verdict" in
*"VMSG-VERDICT PASS"*) ;;
*) finish FAIL "domU: $(echo "$verdict" | tr -d '\r')" ;;
esac
if xl domid "$DOMU" >/dev/null 2>&1; then
    xl destroy "$DOMU"
    finish FAIL "the domU did not power off after its verdict"
fi

check=$(domu-frontend verify-image "/var/lib/vmsgd/$DOMU.img" --nonce "$NONCE")
echo "dom0: $check"
case "$check" in
"VMSG-IMAGE PASS"*) ;;
*) finish FAIL "image check: $check" ;;
esac

# The backend notices the domain's death, removes its directories and ends.
backend_running() {
    case "$SERVER" in
    example) kill -0 "$server" 2>/dev/null ;;
    *) ps | grep -q '[v]msgd run --domain' ;;
    esac
}
k=0
while backend_running && [ "$k" -lt 30 ]; do
    sleep 1
    k=$((k + 1))
done
backend_running && finish FAIL "the backend did not end within 30s of the domain's death"
step "the backend ended with the domain"
if [ "$SERVER" = xl-hook ]; then
    sed 's/^/vmsgd| /' "/var/log/vmsgd/$DOMU.log"
fi
if [ "$SERVER" = vmsgd-watch ]; then
    kill -0 "$server" 2>/dev/null || finish FAIL "vmsgd watch died"
    kill -TERM "$server"
    k=0
    while kill -0 "$server" 2>/dev/null && [ "$k" -lt 15 ]; do
        sleep 1
        k=$((k + 1))
    done
    kill -0 "$server" 2>/dev/null && finish FAIL "vmsgd watch did not end on SIGTERM"
    step "vmsgd watch ended on SIGTERM"
fi
if [ -n "${EXTRA_CHECK:-}" ]; then
    extra=$($EXTRA_CHECK 2>&1) || finish FAIL "extra check: $extra"
fi
finish PASS "$(echo "$verdict" | tr -d '\r' | sed 's/.*VMSG-VERDICT PASS //') image=ok"
