# Shared by the harness scripts (sourced).
CACHE=${VMSGD_XEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmsgd-xen-qemu}
export CACHE

log() { printf 'xen-qemu: %s\n' "$*" >&2; }
die() {
    printf 'xen-qemu: FAIL: %s\n' "$*" >&2
    exit 1
}
