#!/usr/bin/env bash
# Build what QEMU boots from the unpacked packages (fetch.sh) and the static
# Rust binaries: the Xen binary, the dom0 kernel and the dom0 initramfs,
# which carries the domU kernel and the domU initramfs.
#
#   tests/xen-qemu/build-images.sh BIN_DIR OUT_DIR
#
# BIN_DIR holds static x86_64 binaries: domu-frontend (always), vmsgd and/or
# dom0-serve (whichever SERVER needs). Settings (environment): SERVER
# (vmsgd-watch | xl-hook | example), NONCE, GUEST_TIMEOUT, IMAGE_SIZE.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=tests/xen-qemu/common.sh
. "$here/common.sh"

bin=${1:?usage: build-images.sh BIN_DIR OUT_DIR}
out=${2:?usage: build-images.sh BIN_DIR OUT_DIR}
: "${SERVER:=vmsgd-watch}" "${NONCE:=1}" "${GUEST_TIMEOUT:=180}" "${IMAGE_SIZE:=16M}"
R="$CACHE/root"
[ -f "$CACHE/fetched.stamp" ] || die "run fetch.sh first"
kver=$(cat "$CACHE/kver")
bb="$R/bin/busybox"
domu=domu1

rm -rf "$out" && mkdir -p "$out"
gzip -dc "$R/boot/xen-4.17-amd64.gz" >"$out/xen"
cp "$R/boot/vmlinuz-$kver" "$out/vmlinuz"

# Module dependencies, as busybox's depmod sees them.
[ -f "$R/lib/modules/$kver/modules.dep" ] || (cd "$R" && "$bb" depmod -b "$R" "$kver")
moddep="$R/lib/modules/$kver/modules.dep"
declare -A seen=()
order=()
add_mod() { # kernel/.../x.ko
    local m=$1 deps d
    [ -n "${seen[$m]:-}" ] && return
    seen[$m]=1
    deps=$(awk -v m="$m:" '$1 == m { $1 = ""; print }' "$moddep")
    for d in $deps; do add_mod "$d"; done
    order+=("$m")
}
modules() { # root module-names...
    local root=$1 name path
    shift
    seen=() order=()
    for name in "$@"; do
        path=$(awk -F: -v n="/$name.ko" 'index($1, n) && substr($1, length($1) - length(n) + 1) == n { print $1; exit }' "$moddep")
        [ -n "$path" ] || die "module $name not in $kver"
        add_mod "$path"
    done
    mkdir -p "$root/lib/modules"
    : >"$root/lib/modules/load-order"
    for m in "${order[@]}"; do
        cp "$R/lib/modules/$kver/$m" "$root/lib/modules/"
        basename "$m" >>"$root/lib/modules/load-order"
    done
}

base_root() { # root
    mkdir -p "$1/bin" "$1/dev" "$1/proc" "$1/sys" "$1/tmp" "$1/etc"
    cp "$bb" "$1/bin/busybox"
}

strip_copy() { # src dst
    cp "$1" "$2"
    strip --strip-all "$2" 2>/dev/null || true
    chmod 755 "$2"
}

mkcpio() { # root out.cpio.gz
    (cd "$1" && find . | LC_ALL=C sort | "$bb" cpio -o -H newc 2>/dev/null | gzip -1) >"$2"
}

# ---- domU -------------------------------------------------------------
droot="$out/domu-root"
base_root "$droot"
cp "$here/domu-init.sh" "$droot/init" && chmod 755 "$droot/init"
[ -x "$bin/domu-frontend" ] || die "$bin/domu-frontend missing"
strip_copy "$bin/domu-frontend" "$droot/domu-frontend"
modules "$droot" xen-evtchn xen-gntalloc xen-gntdev xenfs

# ---- dom0 -------------------------------------------------------------
root="$out/dom0-root"
base_root "$root"
cp "$here/dom0-init.sh" "$root/init" && chmod 755 "$root/init"
modules "$root" xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs

xbin=/usr/lib/xen-4.17/bin
mkdir -p "$root$xbin" "$root/lib/x86_64-linux-gnu" "$root/lib64" "$root/usr/sbin"
libpath="$R/usr/lib/x86_64-linux-gnu:$R/lib/x86_64-linux-gnu"
copy_libs() { # binary: its shared libraries, unpacked Xen ones first
    local lib
    local deps
    deps=$(LD_LIBRARY_PATH=$libpath ldd "$1") || die "ldd $1 failed"
    case "$deps" in *"not found"*) die "$1: $(echo "$deps" | grep 'not found' | tr -s ' \t' ' ')" ;; esac
    for lib in $(echo "$deps" | awk '$3 ~ /^\// { print $3 }'); do
        cp -L "$lib" "$root/lib/x86_64-linux-gnu/"
    done
}
for b in xl xenstored xen-init-dom0 xenconsoled; do
    cp "$R$xbin/$b" "$root$xbin/$b"
    copy_libs "$R$xbin/$b"
done
cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
# glibc dlopens libgcc_s for thread cancellation and unwinding; xl needs it.
# (No early exit in pipelines: with pipefail a SIGPIPEd writer fails the script.)
ldconfig=$(command -v ldconfig || echo /sbin/ldconfig) # not in a user's PATH
gcc_s=$("$ldconfig" -p | awk '/libgcc_s\.so\.1 .*x86-64/ && !f { f = $NF } END { print f }')
[ -n "$gcc_s" ] || die "libgcc_s.so.1 not found on this host"
cp -L "$gcc_s" "$root/lib/x86_64-linux-gnu/"

mkdir -p "$root/etc/xen/scripts" "$root/etc/vmsgd/domains" "$root/boot"
: >"$root/etc/xen/xl.conf"
cp "$out/vmlinuz" "$root/boot/vmlinuz"
mkcpio "$droot" "$root/boot/domu.cpio.gz"
# With vmsgd's own processes serving (watch, xl hook), dom0 hot-adds an rng
# as device 3 once the domU is waiting for it (dom0-init.sh).
hotplug=""
case "$SERVER" in vmsgd-watch | xl-hook) hotplug=" vmsg.hotplug=3" ;; esac
cat >"$root/etc/xen/$domu.cfg" <<EOF
name = "$domu"
type = "pv"
kernel = "/boot/vmlinuz"
ramdisk = "/boot/domu.cpio.gz"
extra = "console=hvc0 panic=-1 quiet vmsg.nonce=$NONCE vmsg.wait=60$hotplug"
memory = 192
vcpus = 1
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "destroy"
EOF

# The backend, as a user installs it.
strip_copy "$bin/domu-frontend" "$root/usr/sbin/domu-frontend"
[ -x "$bin/foreign-probe" ] && strip_copy "$bin/foreign-probe" "$root/usr/sbin/foreign-probe"
case "$SERVER" in
example)
    strip_copy "$bin/dom0-serve" "$root/usr/sbin/dom0-serve"
    ;;
vmsgd-watch | xl-hook)
    strip_copy "$bin/vmsgd" "$root/usr/sbin/vmsgd"
    sed "s|@IMAGE@|/var/lib/vmsgd/$domu.img|" "$here/domain.toml.in" \
        >"$root/etc/vmsgd/domains/$domu.toml"
    cp "$repo/dom0-config/vmsgd-xl-create" "$root/etc/xen/scripts/vmsgd-xl-create"
    chmod 755 "$root/etc/xen/scripts/vmsgd-xl-create"
    ;;
*) die "unknown SERVER=$SERVER" ;;
esac

cat >"$root/etc/xen-qemu.env" <<EOF
SERVER=$SERVER
DOMU=$domu
NONCE=$NONCE
GUEST_TIMEOUT=$GUEST_TIMEOUT
IMAGE_SIZE=$IMAGE_SIZE
DOM0_SERVE_LOG=${DOM0_SERVE_LOG:-info}
EOF
mkcpio "$root" "$out/dom0.cpio.gz"
rm -rf "$root" "$droot"
log "images in $out: $(du -sh "$out/dom0.cpio.gz" | cut -f1) dom0 initramfs"
