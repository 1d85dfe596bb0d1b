# cases: rng rng-rate
# virtio-rng: vmsgd's rng 0 (unlimited) and rng 1 (4096 B/s), driven by the
# kernel's virtio_rng through /dev/hwrng. Sourced by guest-init.sh.
hwrng=/sys/class/misc/hw_random

if wanted rng; then (
    cur=$(cat $hwrng/rng_current)
    avail=$(cat $hwrng/rng_available)
    case "$cur" in virtio_rng.*) ;; *)
        fail rng "rng_current is '$cur' (available: $avail)"
        exit
        ;;
    esac
    n=$(echo "$avail" | tr ' ' '\n' | grep -c '^virtio_rng\.')
    [ "$n" = 2 ] || { fail rng "expected 2 virtio_rng in rng_available, got '$avail'"; exit; }
    out=$(run_or_fail rng $check rng /dev/hwrng 65536) || exit
    pass rng "rng_current=$cur available='$avail' $out"
); fi

if wanted rng-rate; then (
    # The rate-limited device is the second one registered.
    limited=$(cat $hwrng/rng_available | tr ' ' '\n' | grep '^virtio_rng\.' | sed -n 2p)
    echo "$limited" >$hwrng/rng_current
    # 4096 B/s with a one-second burst: 16 KiB take at least 3 s.
    out=$(run_or_fail rng-rate $check rng /dev/hwrng 16384) || exit
    first=$(cat $hwrng/rng_available | tr ' ' '\n' | grep '^virtio_rng\.' | sed -n 1p)
    echo "$first" >$hwrng/rng_current
    free=$(run_or_fail rng-rate $check rng /dev/hwrng 16384) || exit
    ms=$(echo "$out" | sed -n 's/.*ms=\([0-9]*\).*/\1/p')
    if [ "$ms" -ge 2900 ]; then
        pass rng-rate "limited($limited, 4096 B/s): $out; unlimited($first): $free"
    else
        fail rng-rate "16 KiB at 4096 B/s took ${ms} ms (< 2900): $out"
    fi
); fi

