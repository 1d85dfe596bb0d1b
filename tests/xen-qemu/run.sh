#!/usr/bin/env bash
# The real-Xen end-to-end test: Xen 4.17 + a Debian dom0 + a PV domU under
# QEMU TCG. vmsgd serves the domU from dom0; the domU's init runs the Rust
# frontend (discovery, rng, blk write/flush/read-back) and prints a verdict;
# dom0 checks it and the blk image and prints the final line, which this
# script waits for (bounded) and turns into its exit status.
#
#   tests/xen-qemu/run.sh [SERVER]
#
# SERVER: vmsgd-watch (default: `vmsgd watch` with /etc/vmsgd/domains/domu1.toml),
#         xl-hook (dom0-config/vmsgd-xl-create: `xl create -p`, `vmsgd run --domain`, unpause),
#         example (xen/examples/dom0-serve.rs, a bring-up aid).
# Environment: VMSGD_XEN_CACHE (downloads and images), BOOT_TIMEOUT (s, default 300),
#              QEMU_SMP (default 2), KEEP_LOG=1 (print the whole serial log).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=tests/xen-qemu/common.sh
. "$here/common.sh"

server=${1:-vmsgd-watch}
boot_timeout=${BOOT_TIMEOUT:-300}
t0=$(date +%s)
elapsed() { echo "$(($(date +%s) - t0))s"; }

"$here/fetch.sh"
log "fetched ($(elapsed))"

# Static x86_64 binaries, built in their own target directory so that the
# crt-static flags never mix with the workspace's normal builds. vmsgd is
# built on its own, as a packager builds it: built together with the
# examples it would get vmsg-xen with their features (the fakes, the
# frontend), which the daemon never has.
target=x86_64-unknown-linux-gnu
tdir="$repo/target/xen-qemu"
examples=(-p vmsg-xen --example domu-frontend --example foreign-probe)
daemon=()
case "$server" in
example) examples+=(--example dom0-serve) ;;
vmsgd-watch | xl-hook) daemon=(-p vmsgd --bin vmsgd) ;;
*) die "unknown SERVER $server (vmsgd-watch, xl-hook, example)" ;;
esac
static_build() {
    (cd "$repo" && CARGO_TARGET_DIR="$tdir" RUSTFLAGS="-C target-feature=+crt-static" \
        timeout 1800 cargo build --quiet --release --target "$target" "$@")
}
static_build "${examples[@]}" || die "building the static examples failed"
if [ ${#daemon[@]} -gt 0 ]; then
    static_build "${daemon[@]}" || die "building the static vmsgd failed"
fi
bin="$tdir/$target/release"
bins="$CACHE/bin-$server"
rm -rf "$bins" && mkdir -p "$bins"
cp "$bin/examples/domu-frontend" "$bin/examples/foreign-probe" "$bins/"
[ "$server" = example ] && cp "$bin/examples/dom0-serve" "$bins/"
[ "$server" != example ] && cp "$bin/vmsgd" "$bins/"
for b in "$bins"/*; do
    case "$(LC_ALL=C ldd "$b" 2>&1 || true)" in *"=>"*) die "$b is not statically linked" ;; esac
done
log "built ($(elapsed))"

nonce=$(od -An -N6 -tu8 /dev/urandom | tr -d ' ')
out="$CACHE/images-$server"
SERVER=$server NONCE=$nonce "$here/build-images.sh" "$bins" "$out"
log "images built ($(elapsed))"

R="$CACHE/root"
qemu="$R/usr/bin/qemu-system-x86_64"
qver=$(cat "$CACHE/qemu-version")
# QEMU 7.2 crashes a PV dom0 with -cpu max; 8.0 and later are fine with it.
case "$qver" in
*:7.* | 7.*) cpu=qemu64 ;;
*) cpu=max ;;
esac
serial="$CACHE/serial-$server.log"
: >"$serial"
QEMU_MODULE_DIR="$R/usr/lib/x86_64-linux-gnu/qemu" \
    LD_LIBRARY_PATH="$R/usr/lib/x86_64-linux-gnu:$R/lib/x86_64-linux-gnu" \
    timeout --kill-after=10 "$boot_timeout" "$qemu" \
    -accel tcg -cpu "$cpu,+rdrand" -smp "${QEMU_SMP:-2}" -m 2048 \
    -L "$R/usr/share/qemu" -L "$R/usr/share/seabios" \
    -display none -monitor none -nic none -no-reboot \
    -serial "file:$serial" \
    -kernel "$out/xen" \
    -append "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M noreboot loglvl=warning guest_loglvl=warning" \
    -initrd "$out/vmlinuz console=hvc0 panic=-1 quiet,$out/dom0.cpio.gz" \
    </dev/null >"$CACHE/qemu-$server.out" 2>&1 &
qpid=$!
log "QEMU $qver (-cpu $cpu) started, pid $qpid, serial log $serial"

# Wait for dom0's final line, QEMU's end, or the time limit.
final=""
while :; do
    final=$(grep -a -m1 'VMSG-XEN-QEMU \(PASS\|FAIL\)' "$serial" || true)
    [ -n "$final" ] && break
    kill -0 "$qpid" 2>/dev/null || break
    sleep 1
done
# dom0 powers off after its final line; do not wait for Xen to do it.
kill "$qpid" 2>/dev/null || true
wait "$qpid" 2>/dev/null || true

if [ "${KEEP_LOG:-0}" = 1 ] || [ -z "$final" ] || [[ "$final" != *PASS* ]]; then
    echo "----- serial log ($serial) -----"
    tr -d '\r' <"$serial" | tail -n 200
    echo "----- qemu output -----"
    tail -n 20 "$CACHE/qemu-$server.out"
    echo "-----"
else
    tr -d '\r' <"$serial" | sed 's/\x1b\[[0-9;]*m//g' \
        | grep -a -E '^(dom0|domu\||vmsgd\||VMSG-FOREIGN|\[[0-9T:.-]+Z (INFO|WARN|ERROR))' | tail -n 60 || true
fi
[ -n "$final" ] || die "no final line from dom0 within ${boot_timeout}s (QEMU ended or timed out) after $(elapsed)"
final=$(echo "$final" | tr -d '\r')
echo "$final"
log "done in $(elapsed)"
[[ "$final" == "VMSG-XEN-QEMU PASS"* ]] || exit 1
