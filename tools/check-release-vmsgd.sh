#!/usr/bin/env bash
# The release vmsgd carries no test fakes, no benchmark and no domU-side Xen
# code (docs/architecture.md, "Layering"): builds it the way a packager does
# and looks for them in the binary, symbols and debug info included.
#
#   tools/check-release-vmsgd.sh            # cargo build --release -p vmsgd --bin vmsgd, then check
#   tools/check-release-vmsgd.sh BINARY     # check BINARY only (no build, no cargo tree)
set -euo pipefail
cd "$(dirname "$0")/.."

# What must not be in dom0's binary, as its names appear in symbols, debug
# info and log targets. The feature that compiles each is in parentheses.
forbidden=(
    'vmsg_xen::fake'            # fake Xen, fake handles, fake xenstored (vmsg-xen/fake)
    'FakeXen'                   # FakeXen, FakeXenstored, FakeXenError (vmsg-xen/fake)
    'FakeDomain'                # (vmsg-xen/fake)
    'vmsg_xen::bench'           # the Xen benchmark, now `vmsgctl bench xen`
    'vmsg_xen::bus::frontend::' # the domU frontend (vmsg-xen/frontend)
    'XenFrontend'               # (vmsg-xen/frontend)
    'vmsg_backend::fake'        # FakeBus (vmsg-backend/fake)
    'FakeBus'                   # (vmsg-backend/fake)
    'fake_kernel'               # the loopback kernel fake (vmsg-backend/fake-kernel)
    'FakeLoopbackKernel'        # (vmsg-backend/fake-kernel)
    'vmsg_devices::blk::engine::fake' # FakeEngine, FakeDisk (vmsg-devices/fake)
    'FakeEngine'                # (vmsg-devices/fake)
    'vmsg_device_core::fake'    # FakeMemory (vmsg-device-core/fake)
    'FakeMemory'                # (vmsg-device-core/fake)
    'vmsg_driver::fake'         # vmsg-driver's test device (cfg(test) only)
    'FakeBlk'                   # (cfg(test) only)
)
# What must be there, so that a search that finds nothing means something.
expected=(
    'vmsg_xen::bus::backend'    # the dom0 side of the Xen bus
    'vmsgd::daemon'
    'vmsg_device_core::blk::request' # the shared blk parser the daemon uses
)

features_check() {
    # Features the daemon's build turns on in the workspace crates, and those
    # any workspace member turns on through a normal dependency (one build
    # of several members unifies them).
    local bad=0 tree
    for scope in "-p vmsgd" "--workspace"; do
        # shellcheck disable=SC2086 # $scope is two words on purpose
        tree=$(cargo tree $scope -e normal,build -f '{p} [{f}]' --prefix none)
        if grep -E '^vmsg[-a-z]* .*\[[^]]*(fake|frontend)' <<<"$tree" | sort -u | grep .; then
            echo "FAIL: cargo tree $scope: a fake or the Xen frontend is enabled in a normal build (above)"
            bad=1
        fi
    done
    return "$bad"
}

binary_check() {
    local bin=$1 bad=0 words p n
    [ -s "$bin" ] || { echo "FAIL: no binary at $bin"; return 1; }
    words=$(mktemp)
    # shellcheck disable=SC2064 # expand now: $words is local
    trap "rm -f '$words'" RETURN
    { strings -a "$bin"; nm -C "$bin" 2>/dev/null || true; } >"$words"
    for p in "${expected[@]}"; do
        if ! grep -qF -- "$p" "$words"; then
            echo "FAIL: '$p' not found in $bin: is it stripped? Then the search below proves nothing."
            bad=1
        fi
    done
    for p in "${forbidden[@]}"; do
        n=$(grep -cF -- "$p" "$words" || true)
        if [ "$n" -ne 0 ]; then
            echo "FAIL: $n occurrence(s) of '$p' in $bin, e.g.:"
            grep -m3 -F -- "$p" "$words" | cut -c1-160 | sed "s/^/    /"
            bad=1
        fi
    done
    if [ "$bad" -eq 0 ]; then
        echo "ok: $bin ($(stat -c %s "$bin") bytes) holds none of: ${forbidden[*]}"
    fi
    return "$bad"
}

if [ $# -ge 1 ]; then
    binary_check "$1"
    exit
fi

status=0
features_check || status=1
cargo build --release -p vmsgd --bin vmsgd
binary_check "${CARGO_TARGET_DIR:-target}/release/vmsgd" || status=1
exit "$status"
