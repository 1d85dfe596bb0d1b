# Host side of cases/90-hotplug.sh (see 20-blk.host.sh for the phases).
case $phase in
prepare)
    truncate -s $((4 * MiB)) "$share/hot.img"
    ;;
check)
    if passed hotplug; then
        if out=$(hc pattern check "$share/hot.img" 0 $MiB $((seed + 5))); then
            host image-hotplug PASS "hot.img holds what the guest wrote to the hot-added device"
        else host image-hotplug FAIL "$out"; fi
    fi
    ;;
esac
