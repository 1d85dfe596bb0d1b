//! Engine tests against real files: both engines, long iovec lists,
//! linked operations, fallbacks, O_DIRECT rules.

use std::io;
use std::sync::Arc;

use super::*;

fn temp_file(size: u64) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    f.as_file().set_len(size).expect("set_len");
    f
}

fn open(path: &Path, read_only: bool, direct: bool) -> Arc<Disk> {
    Arc::new(
        Disk::open(
            path,
            DiskOptions {
                read_only,
                direct,
                bounce: false,
            },
        )
        .expect("open disk"),
    )
}

fn both(disk: &Arc<Disk>) -> Vec<Box<dyn BlockEngine>> {
    [Engine::Sync, Engine::IoUring]
        .into_iter()
        .map(|k| open_engine(k, Arc::clone(disk), 64).expect("engine"))
        .collect()
}

/// Run one request to completion.
///
/// # Safety
///
/// The ops' buffers must be valid until this returns.
unsafe fn run(engine: &mut dyn BlockEngine, ops: Vec<Op>) -> io::Result<()> {
    // SAFETY: forwarded from the caller; drain below waits for completion.
    unsafe { engine.submit(7, ops) }.expect("submit");
    engine.flush().expect("flush");
    let mut done = Vec::new();
    engine.drain(&mut done).expect("drain");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].token, 7);
    assert_eq!(engine.in_flight(), 0);
    done.remove(0).result
}

/// Iovecs over `buf` in `piece`-byte entries.
fn iovecs(buf: &mut [u8], piece: usize) -> IoVecs {
    let mut v = IoVecs::new();
    for chunk in buf.chunks_mut(piece) {
        v.push(chunk.as_mut_ptr(), chunk.len());
    }
    v
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) | 1)
        .collect()
}

#[test]
fn file_geometry() {
    let f = temp_file(3 << 20);
    let disk = open(f.path(), true, false);
    let info = disk.info();
    assert_eq!(info.size, 3 << 20);
    assert_eq!(info.logical_block_size, 512);
    assert!(info.physical_block_size.is_power_of_two());
    assert!(info.read_only);
    assert!(!disk.is_direct());
    assert_eq!(disk.path(), f.path());
    let err = Disk::open("/dev/null", DiskOptions::default()).expect_err("not a disk");
    assert!(matches!(err, EngineError::NotADisk(_)), "{err}");
}

#[test]
fn more_iovecs_than_iov_max() {
    let f = temp_file(4 << 20);
    let disk = open(f.path(), false, false);
    for (i, mut engine) in both(&disk).into_iter().enumerate() {
        let n = IOV_MAX + 77;
        let offset = (i as u64) << 20;
        let mut src = pattern(n * 512, i as u8);
        let op = Op::Write {
            offset,
            iov: iovecs(&mut src, 512),
        };
        // SAFETY: `src` outlives the request.
        unsafe { run(engine.as_mut(), vec![op]) }.expect("write");
        let mut dst = vec![0u8; n * 512];
        let op = Op::Read {
            offset,
            iov: iovecs(&mut dst, 512),
        };
        // SAFETY: `dst` outlives the request.
        unsafe { run(engine.as_mut(), vec![op]) }.expect("read");
        assert_eq!(dst, src, "{}", engine.name());
    }
}

#[test]
fn io_uring_keeps_many_requests_in_flight() {
    let f = temp_file(1 << 20);
    let disk = open(f.path(), false, false);
    let mut engine = UringEngine::new(Arc::clone(&disk), 16).expect("engine");
    // More requests than the ring has entries: submission makes room.
    let count = 600u64;
    let mut bufs: Vec<Vec<u8>> = (0..count).map(|i| vec![i as u8; 512]).collect();
    for (i, b) in bufs.iter_mut().enumerate() {
        let op = Op::Write {
            offset: i as u64 * 512,
            iov: iovecs(b, 512),
        };
        // SAFETY: `bufs` outlives the drain below.
        unsafe { engine.submit(i as u64, vec![op]) }.expect("submit");
    }
    engine.flush().expect("flush");
    let mut done = Vec::new();
    engine.drain(&mut done).expect("drain");
    assert_eq!(done.len(), count as usize);
    let mut tokens: Vec<u64> = done.iter().map(|c| c.token).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, (0..count).collect::<Vec<_>>());
    assert!(done.iter().all(|c| c.result.is_ok()));
    let data = std::fs::read(f.path()).expect("read");
    for i in 0..count as usize {
        assert!(data[i * 512..(i + 1) * 512].iter().all(|&b| b == i as u8));
    }
}

#[test]
fn a_request_stops_at_its_first_failure() {
    let f = temp_file(4096);
    let disk = open(f.path(), false, false);
    for mut engine in both(&disk) {
        let mut a = vec![1u8; 512];
        let mut past_end = vec![0u8; 512];
        let mut b = vec![2u8; 512];
        let ops = vec![
            Op::Write {
                offset: 0,
                iov: iovecs(&mut a, 512),
            },
            Op::Read {
                offset: 8192,
                iov: iovecs(&mut past_end, 512),
            },
            Op::Write {
                offset: 512,
                iov: iovecs(&mut b, 512),
            },
        ];
        // SAFETY: the buffers outlive the request.
        let err = unsafe { run(engine.as_mut(), ops) }.expect_err("read past the end");
        assert_eq!(
            err.kind(),
            io::ErrorKind::UnexpectedEof,
            "{}",
            engine.name()
        );
        let data = std::fs::read(f.path()).expect("read");
        assert_eq!(&data[..512], &[1u8; 512][..], "{}", engine.name());
        assert_eq!(
            &data[512..1024],
            &[0u8; 512][..],
            "{}: not run",
            engine.name()
        );
        // Write then flush, linked.
        let ops = vec![
            Op::Write {
                offset: 512,
                iov: iovecs(&mut b, 512),
            },
            Op::Flush,
        ];
        // SAFETY: as above.
        unsafe { run(engine.as_mut(), ops) }.expect("write + flush");
        std::fs::write(f.path(), vec![0u8; 4096]).expect("reset file");
    }
}

#[test]
fn writes_to_a_read_only_disk_fail() {
    let f = temp_file(4096);
    let disk = open(f.path(), true, false);
    for mut engine in both(&disk) {
        let mut a = vec![1u8; 512];
        let op = Op::Write {
            offset: 0,
            iov: iovecs(&mut a, 512),
        };
        // SAFETY: `a` outlives the request.
        let err = unsafe { run(engine.as_mut(), vec![op]) }.expect_err("read-only");
        assert_eq!(err.raw_os_error(), Some(libc::EBADF), "{}", engine.name());
        // SAFETY: no buffers.
        unsafe { run(engine.as_mut(), vec![Op::Flush]) }.expect("flush works");
    }
}

/// Fill the file with a pattern, zero `[offset, offset + len)` through the
/// engine and check the result.
fn check_write_zeroes(
    engine: &mut dyn BlockEngine,
    path: &Path,
    offset: u64,
    len: u64,
    unmap: bool,
) {
    let size = std::fs::metadata(path).expect("meta").len() as usize;
    std::fs::write(path, pattern(size, 3)).expect("fill");
    let op = Op::WriteZeroes { offset, len, unmap };
    // SAFETY: no buffers.
    unsafe { run(engine, vec![op]) }.expect("write zeroes");
    let data = std::fs::read(path).expect("read");
    assert_eq!(data.len(), size, "size kept");
    let (a, b) = (offset as usize, (offset + len) as usize);
    assert!(
        data[a..b].iter().all(|&x| x == 0),
        "{}: zeroed",
        engine.name()
    );
    assert_eq!(&data[..a], &pattern(size, 3)[..a]);
    assert_eq!(&data[b..], &pattern(size, 3)[b..]);
}

#[test]
fn write_zeroes_and_discard_on_a_file() {
    let f = temp_file(4 << 20);
    let disk = open(f.path(), false, false);
    for mut engine in both(&disk) {
        check_write_zeroes(engine.as_mut(), f.path(), 4096, 65536, false);
        check_write_zeroes(engine.as_mut(), f.path(), 8192, 1 << 20, true);
        // SAFETY: no buffers.
        unsafe {
            run(
                engine.as_mut(),
                vec![Op::Discard {
                    offset: 0,
                    len: 1 << 20,
                }],
            )
        }
        .expect("discard");
    }
}

#[test]
fn write_zeroes_falls_back_to_writing() {
    let f = temp_file(4 << 20);
    let disk = open(f.path(), false, false);
    disk.assume_no_fallocate();
    for mut engine in both(&disk) {
        // More than one zero buffer's worth, unaligned to it.
        check_write_zeroes(
            engine.as_mut(),
            f.path(),
            512,
            (ZERO_CHUNK as u64) * 2 + 1536,
            true,
        );
        // Discard does nothing, successfully.
        std::fs::write(f.path(), vec![5u8; 4 << 20]).expect("fill");
        // SAFETY: no buffers.
        unsafe {
            run(
                engine.as_mut(),
                vec![Op::Discard {
                    offset: 0,
                    len: 4096,
                }],
            )
        }
        .expect("discard");
        assert_eq!(std::fs::read(f.path()).expect("read")[0], 5);
    }
}

fn is_tmpfs(file: &std::fs::File) -> bool {
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a live, writable statfs buffer.
    let ret = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    ret == 0 && st.f_type == libc::TMPFS_MAGIC
}

#[test]
fn tmpfs_refusing_zero_range_falls_back() {
    // tmpfs punches holes but has no ZERO_RANGE: a real EOPNOTSUPP.
    let Ok(f) = tempfile::NamedTempFile::new_in("/dev/shm") else {
        return;
    };
    f.as_file().set_len(1 << 20).expect("set_len");
    for kind in [Engine::Sync, Engine::IoUring] {
        let disk = open(f.path(), false, false);
        let mut engine = open_engine(kind, Arc::clone(&disk), 8).expect("engine");
        check_write_zeroes(engine.as_mut(), f.path(), 4096, 8192, false);
        if is_tmpfs(f.as_file()) {
            assert!(!disk.zero_range_ok(), "{kind:?}: the refusal is remembered");
            assert!(disk.punch_hole_ok());
        }
        check_write_zeroes(engine.as_mut(), f.path(), 65536, 4096, true);
        // Whether or not it refused, a second request gives the same result.
        check_write_zeroes(engine.as_mut(), f.path(), 0, 512, false);
    }
}

#[test]
fn o_direct_alignment_rules() {
    let f = temp_file(1 << 20);
    let disk = open(f.path(), false, true);
    let lbs = disk.info().logical_block_size as usize;
    assert!(lbs >= 512 && lbs.is_power_of_two());
    for mut engine in both(&disk) {
        // A misaligned file offset fails cleanly.
        let mut buf = AlignedBuf::new(lbs, 4096).expect("buf");
        let op = Op::Read {
            offset: 100,
            iov: IoVecs::from_buf(&mut buf),
        };
        // SAFETY: `buf` outlives the request.
        let err = unsafe { run(engine.as_mut(), vec![op]) }.expect_err("misaligned offset");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{}", engine.name());
        // So does a length that is not whole blocks (when blocks exceed 512,
        // the device never sends less than 512).
        let mut short = AlignedBuf::new(4096, 4096).expect("buf");
        let mut iov = IoVecs::new();
        iov.push(short.as_mut_ptr(), lbs / 2);
        // SAFETY: `short` outlives the request.
        let err = unsafe { run(engine.as_mut(), vec![Op::Write { offset: 0, iov }]) }
            .expect_err("partial block");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{}", engine.name());

        // Misaligned memory is bounced, both ways.
        let mut raw = AlignedBuf::new(3 * lbs + 64, 4096).expect("buf");
        let src = pattern(2 * lbs, 9);
        raw.as_mut_slice()[8..8 + 2 * lbs].copy_from_slice(&src);
        let mut iov = IoVecs::new();
        // SAFETY: 8 + 2 * lbs is within the buffer.
        iov.push(unsafe { raw.as_mut_ptr().add(8) }, 2 * lbs);
        let op = Op::Write {
            offset: lbs as u64,
            iov,
        };
        // SAFETY: `raw` outlives the request.
        unsafe { run(engine.as_mut(), vec![op]) }.expect("bounced write");
        let mut back = AlignedBuf::new(3 * lbs + 64, 4096).expect("buf");
        let mut iov = IoVecs::new();
        // SAFETY: in bounds, as above.
        iov.push(unsafe { back.as_mut_ptr().add(24) }, 2 * lbs);
        let op = Op::Read {
            offset: lbs as u64,
            iov,
        };
        // SAFETY: `back` outlives the request.
        unsafe { run(engine.as_mut(), vec![op]) }.expect("bounced read");
        assert_eq!(&back.as_slice()[24..24 + 2 * lbs], src.as_slice());
        // Aligned memory goes straight through.
        let mut direct = AlignedBuf::new(lbs, 4096).expect("buf");
        let op = Op::Read {
            offset: lbs as u64,
            iov: IoVecs::from_buf(&mut direct),
        };
        // SAFETY: `direct` outlives the request.
        unsafe { run(engine.as_mut(), vec![op]) }.expect("aligned read");
        assert_eq!(direct.as_slice(), &src[..lbs]);
    }
}

#[test]
fn malformed_requests_are_refused() {
    let f = temp_file(4096);
    let disk = open(f.path(), false, false);
    for mut engine in both(&disk) {
        // SAFETY: no buffers.
        let r = unsafe { engine.submit(1, Vec::new()) };
        assert!(matches!(r, Err(EngineError::BadRequest(0))));
        let ops = (0..=MAX_OPS).map(|_| Op::Flush).collect();
        // SAFETY: no buffers.
        let r = unsafe { engine.submit(1, ops) };
        assert!(matches!(r, Err(EngineError::BadRequest(256))));
        assert_eq!(engine.in_flight(), 0);
        // Zero-length operations complete at once.
        let ops = vec![
            Op::Read {
                offset: 0,
                iov: IoVecs::new(),
            },
            Op::Discard { offset: 0, len: 0 },
            Op::WriteZeroes {
                offset: 0,
                len: 0,
                unmap: false,
            },
        ];
        // SAFETY: no buffers.
        unsafe { run(engine.as_mut(), ops) }.expect("nothing to do");
    }
}

#[test]
fn io_uring_signals_its_eventfd() {
    let f = temp_file(4096);
    let disk = open(f.path(), false, false);
    let mut engine = UringEngine::new(disk, 4).expect("engine");
    let fd = engine.event_fd().expect("fd");
    // SAFETY: no buffers.
    unsafe { engine.submit(3, vec![Op::Flush]) }.expect("submit");
    engine.flush().expect("flush");
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call.
    assert_eq!(unsafe { libc::poll(&mut p, 1, 10_000) }, 1);
    let mut done = Vec::new();
    engine.reap(&mut done).expect("reap");
    assert_eq!(done.len(), 1);
    assert!(done[0].result.is_ok());
    // Reaping reset the eventfd.
    p.revents = 0;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::poll(&mut p, 1, 0) }, 0);
}

#[test]
fn bounce_copies_every_read_and_write_through_a_buffer_of_ours() {
    let f = temp_file(1 << 20);
    let disk = Arc::new(
        Disk::open(
            f.path(),
            DiskOptions {
                read_only: false,
                direct: false,
                bounce: true,
            },
        )
        .expect("open disk"),
    );
    // Even aligned memory is replaced by a bounce buffer: the kernel never
    // gets the guest's addresses.
    let mut guest = AlignedBuf::new(8192, 4096).expect("buf");
    let guest_ptr = guest.as_mut_ptr();
    let mut op = Op::Write {
        offset: 0,
        iov: IoVecs::from_buf(&mut guest),
    };
    let mut budget = 0;
    // SAFETY: `guest` outlives the op.
    let b = unsafe { prepare_direct(&disk, &mut op, &mut budget) }
        .expect("prepared")
        .expect("bounced");
    assert_eq!(budget, 8192);
    let Op::Write { iov, .. } = &op else {
        panic!("op changed kind")
    };
    assert!(
        iov.as_slice()
            .iter()
            .all(|v| v.iov_base.cast::<u8>() != guest_ptr)
    );
    drop(b);

    for mut engine in both(&disk) {
        let src = pattern(3 * 512 + 100, 5);
        let mut w = AlignedBuf::new(src.len(), 64).expect("buf");
        w.as_mut_slice().copy_from_slice(&src);
        let op = Op::Write {
            offset: 4096,
            iov: IoVecs::from_buf(&mut w),
        };
        // SAFETY: `w` outlives the request.
        unsafe { run(engine.as_mut(), vec![op]) }.expect("bounced write");
        let mut r = AlignedBuf::new(src.len(), 64).expect("buf");
        let op = Op::Read {
            offset: 4096,
            iov: IoVecs::from_buf(&mut r),
        };
        // SAFETY: `r` outlives the request.
        unsafe { run(engine.as_mut(), vec![op]) }.expect("bounced read");
        assert_eq!(r.as_slice(), src.as_slice(), "{}", engine.name());
    }
}
