# Host side of cases/20-blk.sh, sourced by run.sh twice: phase=prepare
# (before the boot: the images) and phase=check (after the guest powered
# off: what the guest left in them).
img=$share/data.img
case $phase in
prepare)
    truncate -s $((64 * MiB)) "$img"
    truncate -s $((16 * MiB)) "$share/fs.img"
    truncate -s $((4 * MiB)) "$share/ro.img"
    "$hostcheck" pattern write "$share/ro.img" 0 $MiB 7 >/dev/null
    ro_sum=$(sha256sum <"$share/ro.img")
    ;;
check)
    if passed blk-data; then
        if out=$(hc pattern check "$img" $MiB $((4 * MiB)) "$seed"); then
            host image-data PASS "host reads the guest's pattern in data.img: $out"
        else host image-data FAIL "$out"; fi
    fi
    if passed blk-mq; then
        if a=$(hc pattern check "$img" $((16 * MiB)) $((4 * MiB)) "$seed") \
            && b=$(hc pattern check "$img" $((20 * MiB)) $((4 * MiB)) $((seed + 1))); then
            host image-mq PASS "both writers' regions in data.img"
        else host image-mq FAIL "${a:-} ${b:-}"; fi
    fi
    if passed blk-discard; then
        # A discard is a hint: on a share whose file system cannot punch
        # holes (9p) the device completes it without effect. Say which.
        holes=$(hc allocated "$img" $((32 * MiB)) $MiB)
        discarded=$(hc zeros "$img" $((32 * MiB)) $MiB >/dev/null && echo zeros || echo "old data")
        if z=$(hc zeros "$img" $((36 * MiB)) $MiB) \
            && n1=$(hc pattern check "$img" $((33 * MiB)) $MiB "$seed") \
            && n2=$(hc pattern check "$img" $((37 * MiB)) $MiB "$seed"); then
            host image-discard PASS "zeroed range reads zeros, neighbours intact; discarded range: $discarded, $holes"
        else host image-discard FAIL "${z:-} ${n1:-} ${n2:-}"; fi
    fi
    if ran blk-ro; then
        if [ "$(sha256sum <"$share/ro.img")" = "$ro_sum" ]; then
            host image-ro PASS "ro.img unchanged"
        else host image-ro FAIL "ro.img changed"; fi
    fi
    if passed blk-fs; then
        fsck=$(e2fsck -fn "$share/fs.img" 2>&1) && fsck_ok=1 || fsck_ok=0
        debugfs -R "dump /dir/copy.bin $run/copy.bin" "$share/fs.img" >/dev/null 2>&1 || true
        if [ "$fsck_ok" = 1 ] && cmp -s "$run/copy.bin" "$share/src.bin"; then
            host image-fs PASS "e2fsck clean; /dir/copy.bin (debugfs) equals the source"
        else host image-fs FAIL "fsck_ok=$fsck_ok $(echo "$fsck" | tail -2 | tr '\n' ' '); copy $(cmp "$run/copy.bin" "$share/src.bin" 2>&1)"; fi
    fi
    ;;
esac
