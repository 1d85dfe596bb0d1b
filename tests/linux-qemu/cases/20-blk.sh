# cases: blk-identity blk-data blk-mq blk-discard blk-ro blk-fs
# virtio-blk: the kernel's virtio_blk on vmsgd's blk 2 (data, 2 queues),
# blk 3 (read-only) and blk 4 (a file system). Sourced by guest-init.sh.
data=$(by_serial vmsg-data)
ro=$(by_serial vmsg-ro)
fs=$(by_serial vmsg-fs)
echo "guest: data=$data ro=$ro fs=$fs"

if wanted blk-identity; then (
    size=$(cat /sys/block/$data/size)
    serial=$(cat /sys/block/$data/serial)
    queues=$(ls /sys/block/$data/mq | wc -l)
    want=$((64 * MiB / 512))
    if [ "$size" = "$want" ] && [ "$serial" = vmsg-data ] && [ "$queues" = 2 ]; then
        pass blk-identity "$data: size=$size sectors serial=$serial mq=$queues"
    else
        fail blk-identity "$data: size=$size (want $want) serial=$serial mq=$queues (want 2)"
    fi
); fi

if wanted blk-data; then (
    # Buffered write + fsync, caches dropped, read back buffered and direct.
    run_or_fail blk-data $check pattern write /dev/$data $MiB $((4 * MiB)) "$seed" >/dev/null || exit
    echo 3 >/proc/sys/vm/drop_caches
    run_or_fail blk-data $check pattern check /dev/$data $MiB $((4 * MiB)) "$seed" >/dev/null || exit
    out=$(run_or_fail blk-data $check pattern check /dev/$data $MiB $((4 * MiB)) "$seed" --direct) || exit
    pass blk-data "/dev/$data 4 MiB at 1 MiB: written+fsync, caches dropped, $out"
); fi

if wanted blk-mq; then (
    # A writer pinned to each CPU: blk-mq maps each CPU to its own hardware
    # queue. One after the other: two CPUs submitting at once can wedge this
    # RFC kernel (its transfer sleeps under blk-mq's locks; README).
    for cpu in 0 1; do
        off=$(((16 + 4 * cpu) * MiB))
        run_or_fail blk-mq taskset -c $cpu $check pattern write /dev/$data $off $((4 * MiB)) $((seed + cpu)) --direct >/dev/null || exit
    done
    for cpu in 0 1; do
        off=$(((16 + 4 * cpu) * MiB))
        run_or_fail blk-mq taskset -c $cpu $check pattern check /dev/$data $off $((4 * MiB)) $((seed + cpu)) --direct >/dev/null || exit
    done
    pass blk-mq "/dev/$data: $(ls /sys/block/$data/mq | wc -l) hw queues, a writer pinned to each CPU in turn, both regions read back"
); fi

if wanted blk-discard; then (
    q=/sys/block/$data/queue
    dmax=$(cat $q/discard_max_bytes)
    zmax=$(cat $q/write_zeroes_max_bytes)
    if [ "$dmax" = 0 ] || [ "$zmax" = 0 ]; then
        fail blk-discard "the kernel does not use them: discard_max_bytes=$dmax write_zeroes_max_bytes=$zmax"
        exit
    fi
    for off in $((32 * MiB)) $((36 * MiB)); do
        run_or_fail blk-discard $check pattern write /dev/$data $off $((2 * MiB)) "$seed" --direct >/dev/null || exit
    done
    run_or_fail blk-discard $check blk-ioctl discard /dev/$data $((32 * MiB)) $MiB >/dev/null || exit
    run_or_fail blk-discard $check blk-ioctl zeroout /dev/$data $((36 * MiB)) $MiB >/dev/null || exit
    # Discard may leave anything (the spec promises nothing); our device
    # punches a hole, which reads as zeros. Write zeroes must read as zeros.
    run_or_fail blk-discard $check zeros /dev/$data $((36 * MiB)) $MiB >/dev/null || exit
    d=$($check zeros /dev/$data $((32 * MiB)) $MiB >/dev/null 2>&1 && echo zeros || echo data)
    # The second halves were not touched.
    run_or_fail blk-discard $check pattern check /dev/$data $((33 * MiB)) $MiB "$seed" --direct >/dev/null || exit
    run_or_fail blk-discard $check pattern check /dev/$data $((37 * MiB)) $MiB "$seed" --direct >/dev/null || exit
    pass blk-discard "discard_max_bytes=$dmax write_zeroes_max_bytes=$zmax; discarded 1 MiB reads $d, zeroed 1 MiB reads zeros, neighbours intact"
); fi

if wanted blk-ro; then (
    flag=$(cat /sys/block/$ro/ro)
    [ "$flag" = 1 ] || { fail blk-ro "/sys/block/$ro/ro is $flag"; exit; }
    # The block layer refuses to open it for writing...
    if dd if=/dev/zero of=/dev/$ro bs=4096 count=1 2>/dev/null; then
        fail blk-ro "the kernel let a write open /dev/$ro"
        exit
    fi
    # ...and with the kernel's flag cleared, the device itself refuses.
    blockdev --setrw /dev/$ro
    if dd if=/dev/zero of=/dev/$ro bs=4096 count=1 oflag=direct 2>/tmp/ro.err; then
        fail blk-ro "vmsgd accepted a write to a read-only device"
        exit
    fi
    err=$(grep -m1 '^dd:' /tmp/ro.err)
    blockdev --setro /dev/$ro
    out=$(run_or_fail blk-ro $check pattern check /dev/$ro 0 $MiB 7 --direct) || exit
    pass blk-ro "/dev/$ro ro=1, open for write refused, device write refused ($err), content $out"
); fi

if wanted blk-fs; then (
    head -c $((3 * MiB + 1234)) /dev/urandom >/tmp/src.bin
    cp /tmp/src.bin /share/src.bin
    mke2fs -q /dev/$fs >/tmp/mkfs.out 2>&1 || { fail blk-fs "mke2fs: $(cat /tmp/mkfs.out)"; exit; }
    mount -t ext2 /dev/$fs /mnt || { fail blk-fs "mount"; exit; }
    mkdir /mnt/dir && cp /tmp/src.bin /mnt/dir/copy.bin && sync
    umount /mnt || { fail blk-fs "umount"; exit; }
    echo 3 >/proc/sys/vm/drop_caches
    mount -t ext2 /dev/$fs /mnt || { fail blk-fs "remount"; exit; }
    if cmp /tmp/src.bin /mnt/dir/copy.bin; then
        umount /mnt
        pass blk-fs "/dev/$fs: mke2fs, mount, copy $(wc -c </tmp/src.bin) bytes, umount, remount, identical"
    else
        umount /mnt
        fail blk-fs "the copy differs after remount"
    fi
); fi

