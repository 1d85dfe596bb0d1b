# cases: hotplug
# A device added by SIGHUP while the kernel's drivers use the others; its
# removal is refused (REMOVE deadlocks on this kernel). Sourced by
# guest-init.sh.

if wanted hotplug; then (
    cp /tmp/vmsgd.toml /tmp/vmsgd.toml.orig
    cat >>/tmp/vmsgd.toml <<EOF

[[guest.device]]
kind = "blk"
dev_num = 30
path = "/share/hot.img"
serial = "vmsg-hot"
EOF
    kill -HUP $vmsgd_pid
    out=$(run_or_fail hotplug $check wait-log /share/vmsgd.log "loopback device 30 added" 30000) || exit
    hot=$(by_serial vmsg-hot) || { fail hotplug "no block device with serial vmsg-hot"; exit; }
    run_or_fail hotplug $check pattern write /dev/$hot 0 $MiB $((seed + 5)) --direct >/dev/null || exit
    run_or_fail hotplug $check pattern check /dev/$hot 0 $MiB $((seed + 5)) --direct >/dev/null || exit
    # Removing it again: this kernel's REMOVE deadlocks, so vmsgd refuses
    # the removal (logged) and the device keeps working.
    cp /tmp/vmsgd.toml.orig /tmp/vmsgd.toml
    kill -HUP $vmsgd_pid
    run_or_fail hotplug $check wait-log /share/vmsgd.log "cannot be removed" 30000 >/dev/null || exit
    run_or_fail hotplug $check pattern check /dev/$hot 0 $MiB $((seed + 5)) --direct >/dev/null || exit
    pass hotplug "added dev 30 by SIGHUP: /dev/$hot appeared ($out), 1 MiB written and read back; removal refused as documented, device still served"
); fi

