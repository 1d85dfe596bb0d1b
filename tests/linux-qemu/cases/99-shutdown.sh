# cases: shutdown
# Last: vmsgd's SIGTERM on this kernel. Sourced by guest-init.sh.

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
