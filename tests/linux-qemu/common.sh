# Shared by the real-Linux harness scripts (sourced).
#
# CACHE holds what is slow to make and keyed by its inputs: the kernel, the
# unpacked QEMU and busybox, a copy of the test-bed fixtures.
CACHE=${VMSGD_LINUX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmsgd-linux-qemu}
export CACHE

log() { printf 'linux-qemu: %s\n' "$*" >&2; }
die() {
    printf 'linux-qemu: FAIL: %s\n' "$*" >&2
    exit 1
}

# The fixtures this harness builds its kernel from (kernel patches, config
# fragments, device-tree pools) live in the machine's shared test beds, not in
# the repository. Found through $VMSGD_TESTBEDS, else as `shared/testbeds`
# beside the checkout or one of its parents. Each use refreshes a copy in the
# cache, so a clone elsewhere still finds the inputs of its cached kernel.
find_testbeds() {
    local dir=${VMSGD_TESTBEDS:-}
    if [ -z "$dir" ]; then
        local up=$1
        while [ "$up" != / ]; do
            up=$(dirname "$up")
            if [ -d "$up/shared/testbeds/linux-virtio-msg" ]; then dir=$up/shared/testbeds; break; fi
        done
    fi
    local copy=$CACHE/fixtures
    if [ -n "$dir" ] && [ -d "$dir/linux-virtio-msg" ]; then
        mkdir -p "$copy/linux-virtio-msg" "$copy/ffa/linux"
        cp "$dir"/linux-virtio-msg/{kernel.config,vmsglb.dtsi,i2c-stub-builtin.patch} "$copy/linux-virtio-msg/"
        cp "$dir"/ffa/linux/{linux-ffa-bus.patch,rfc-msg-size-fix.patch,vmsgffa.dtsi} "$copy/ffa/linux/"
        [ -f "$dir/ffa/arm-trusted-firmware-6a164dd.tar.gz" ] && cp -u "$dir/ffa/arm-trusted-firmware-6a164dd.tar.gz" "$copy/ffa/"
        echo "$copy"
    elif [ -f "$copy/linux-virtio-msg/kernel.config" ]; then
        log "test beds not found (set VMSGD_TESTBEDS); using the copy in $copy"
        echo "$copy"
    else
        die "test beds not found: set VMSGD_TESTBEDS to the folder holding linux-virtio-msg/ and ffa/"
    fi
}
