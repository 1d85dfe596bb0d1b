#!/usr/bin/env bash
# Build vmsgd as a static aarch64 Linux binary (the kernels with the
# virtio-msg loopback bus are arm64 boards and VMs; see
# docs/linux-user-bus.md). Installs what it needs: Debian's cross gcc (as the
# linker, for the static glibc of the target) and the rustup target.
#
#   tools/cross-build-aarch64.sh            # -> target/aarch64-unknown-linux-gnu/release/vmsgd
#
# Choice: aarch64-unknown-linux-gnu with `-C target-feature=+crt-static`
# (static glibc). Nothing in vmsgd resolves names or users, so glibc's NSS
# caveats for static binaries do not apply; io-uring ships aarch64 bindings.
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
linker=aarch64-linux-gnu-gcc

if ! command -v "$linker" >/dev/null 2>&1 || ! command -v aarch64-linux-gnu-readelf >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu >/dev/null
fi
rustup target add "$target" >/dev/null

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER="$linker"
# Only the target's crates get crt-static; build scripts stay host binaries.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
cargo build --release -p vmsgd --bin vmsgd --target "$target"

out="target/$target/release/vmsgd"
# Static: no program interpreter, no shared libraries.
if aarch64-linux-gnu-readelf -l "$out" | grep -q 'INTERP'; then
    echo "error: $out has a program interpreter (not static)" >&2
    exit 1
fi
if aarch64-linux-gnu-readelf -d "$out" 2>/dev/null | grep -q 'NEEDED'; then
    echo "error: $out needs shared libraries:" >&2
    aarch64-linux-gnu-readelf -d "$out" | grep NEEDED >&2
    exit 1
fi
machine=$(aarch64-linux-gnu-readelf -h "$out" | sed -n 's/ *Machine: *//p')
case "$machine" in
    *AArch64*) ;;
    *) echo "error: $out is for '$machine', not AArch64" >&2; exit 1 ;;
esac
echo "built $out (static, $machine, $(stat -c %s "$out") bytes)"
