//! virtio-blk device rules (virtio 1.2 §5.2), checked through the blk
//! frontend. Every case needs device id 2.
//!
//! Cases that write use a *scratch area* at the end of the disk: they read
//! it first and write it back (and FLUSH) afterwards, so running the suite
//! against a disk with data on it leaves that data as it was — unless the
//! device itself breaks a rule. Cases that write are skipped on a read-only
//! device; the read-only rules are skipped on a writable one.

use std::time::Duration;

use super::{Case, CaseError, CaseResult, Ctx, Needs, ensure};
use crate::blk::{
    self, Blk, BlkOptions, Completion, RawRequest, Request, SECTOR_SIZE, STATUS_UNWRITTEN, Segment,
    VIRTIO_ID_BLOCK, WRITE_ZEROES_FLAG_UNMAP, feature, offset, req, status,
};
use crate::device::FeatureSet;

/// Sectors of the scratch area at the end of the disk (at least; rounded
/// up to two blocks).
const SCRATCH_SECTORS: u64 = 16;

pub(super) fn cases() -> Vec<Case> {
    let blk = Needs::DeviceId(VIRTIO_ID_BLOCK);
    vec![
        Case::new(
            "blk.config_padding_zero",
            "§5.2.5",
            "the device initializes the padding bytes unused0 and unused1 to 0",
            config_padding_zero,
        )
        .needs(blk),
        Case::new(
            "blk.wce_offered_with_flush",
            "§5.2.5",
            "a device offering VIRTIO_BLK_F_CONFIG_WCE also offers VIRTIO_BLK_F_FLUSH",
            wce_offered_with_flush,
        )
        .needs(blk),
        Case::new(
            "blk.wce_without_flush_writethrough",
            "§5.2.5",
            "with CONFIG_WCE negotiated but FLUSH not, writeback reads 0",
            wce_without_flush_writethrough,
        )
        .needs(blk),
        Case::new(
            "blk.wce_writeback_writable",
            "§5.2.4, §5.2.5",
            "with CONFIG_WCE the driver can switch writeback and reads back what it wrote",
            wce_writeback_writable,
        )
        .needs(blk),
        Case::new(
            "blk.config_limits_usable",
            "§5.2.4",
            "negotiated limits are usable: seg_max and size_max allow one sector, blk_size a power of two >= 512, num_queues within max_virtqueues, discard / write-zeroes limits non-zero",
            config_limits_usable,
        )
        .needs(blk),
        Case::new(
            "blk.capacity_bounds_reads",
            "§5.2.4, §5.2.6",
            "the last sector below capacity reads OK; reads at or across capacity complete with IOERR",
            capacity_bounds_reads,
        )
        .needs(blk),
        Case::new(
            "blk.out_of_range_write_ioerr",
            "§5.2.6",
            "a write across capacity completes with IOERR and changes nothing",
            out_of_range_write,
        )
        .needs(blk),
        Case::new(
            "blk.unknown_type_unsupp",
            "§5.2.6",
            "a request of an unknown or unsupported type completes with UNSUPP",
            unknown_type_unsupp,
        )
        .needs(blk),
        Case::new(
            "blk.bad_length_ioerr",
            "§5.2.6",
            "a read or write whose data is not a multiple of 512 bytes is not executed (IOERR)",
            bad_length_ioerr,
        )
        .needs(blk),
        Case::new(
            "blk.write_read_back",
            "§5.2.6",
            "data written with OUT (one or several data descriptors) reads back with IN",
            write_read_back,
        )
        .needs(blk),
        Case::new(
            "blk.flush_ok",
            "§5.2.6",
            "FLUSH (with VIRTIO_BLK_F_FLUSH) completes with OK after writes",
            flush_ok,
        )
        .needs(blk),
        Case::new(
            "blk.status_and_used_len",
            "§5.2.6, §2.7.8",
            "every request gets a status byte of OK, IOERR or UNSUPP; a successful one reports used len = data written + 1",
            status_and_used_len,
        )
        .needs(blk),
        Case::new(
            "blk.get_id",
            "§5.2.6",
            "GET_ID fills the 20-byte buffer: printable ASCII, NUL-padded after the first NUL",
            get_id,
        )
        .needs(blk),
        Case::new(
            "blk.ro_write_ioerr",
            "§5.2.6.2",
            "with VIRTIO_BLK_F_RO offered a write completes with IOERR and writes no data",
            ro_write_ioerr,
        )
        .needs(blk),
        Case::new(
            "blk.ro_flush_ok",
            "§5.2.6",
            "FLUSH on a read-only device completes with OK",
            ro_flush_ok,
        )
        .needs(blk),
        Case::new(
            "blk.discard_ok",
            "§5.2.6.2",
            "DISCARD of a range inside the disk completes with OK, past capacity with IOERR",
            discard_ok,
        )
        .needs(blk),
        Case::new(
            "blk.discard_unmap_unsupp",
            "§5.2.6.2",
            "a DISCARD segment with the unmap flag completes with UNSUPP",
            discard_unmap_unsupp,
        )
        .needs(blk),
        Case::new(
            "blk.unknown_segment_flag_unsupp",
            "§5.2.6.2",
            "DISCARD / WRITE_ZEROES with an unknown segment flag complete with UNSUPP",
            unknown_segment_flag_unsupp,
        )
        .needs(blk),
        Case::new(
            "blk.write_zeroes_reads_zero",
            "§5.2.6.2",
            "after WRITE_ZEROES (unmap set or clear) its range reads as zeroes and nothing else changed",
            write_zeroes_reads_zero,
        )
        .needs(blk),
        Case::new(
            "blk.mq_every_queue_serves",
            "§5.2.2, §5.2.6",
            "with VIRTIO_BLK_F_MQ every queue completes requests, on the queue they were posted to",
            mq_every_queue_serves,
        )
        .needs(blk),
    ]
}

/// Open the device with `features` (device-specific bits wanted), run `f`,
/// reset and give the session back to the context.
fn with_blk(
    c: &mut Ctx,
    features: Option<FeatureSet>,
    f: impl FnOnce(&mut Blk) -> CaseResult,
) -> CaseResult {
    let mut opts = BlkOptions {
        // A FLUSH may write back a host cache: allow more than a message.
        timeout: c.cfg.timeout.max(Duration::from_secs(10)),
        ..BlkOptions::default()
    };
    if let Some(fs) = features {
        opts.features = fs;
    }
    let dev = c.dev_num;
    let drv = c.take_driver();
    let mut disk = Blk::open_with(drv, dev, &opts)?;
    let res = f(&mut disk);
    match disk.close() {
        Ok(d) => c.put_driver(d),
        Err(e) if res.is_ok() => return Err(e.into()),
        Err(_) => {}
    }
    res
}

/// Sectors per block (`blk_size / 512`): the unit of every range here, so
/// the cases also work on a disk that needs aligned I/O.
fn unit(disk: &Blk) -> u64 {
    (u64::from(disk.limits().blk_size) / SECTOR_SIZE).max(1)
}

/// Run `f` on the scratch area (first sector, sectors), restoring its
/// contents afterwards. Skips on read-only or tiny disks.
fn with_scratch(disk: &mut Blk, f: impl FnOnce(&mut Blk, u64, u64) -> CaseResult) -> CaseResult {
    if disk.limits().read_only {
        return Err(CaseError::Skip("the device is read-only".into()));
    }
    let unit = unit(disk);
    let sectors = SCRATCH_SECTORS.div_ceil(unit).max(2) * unit;
    let cap = disk.capacity() / unit * unit;
    if cap < 2 * sectors {
        return Err(CaseError::Skip(format!(
            "capacity {} sectors is too small for a scratch area",
            disk.capacity()
        )));
    }
    let first = cap - sectors;
    let mut saved = vec![0u8; (sectors * SECTOR_SIZE) as usize];
    disk.read(first, &mut saved)?;
    let res = f(disk, first, sectors);
    let restore = disk.write(first, &saved).and_then(|()| {
        if disk.limits().flush {
            disk.flush()
        } else {
            Ok(())
        }
    });
    res?;
    restore?;
    Ok(())
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed as usize).wrapping_mul(31).wrapping_add(i * 7 + 1) as u8)
        .collect()
}

/// Submit `r` and return its completion, whatever the status.
fn run(disk: &mut Blk, r: &Request) -> Result<Completion, CaseError> {
    Ok(disk.execute(r)?)
}

/// A raw request: header, `readable` data, `writable` data, status.
fn raw(
    rtype: u32,
    sector: u64,
    readable: Vec<blk::GuestBuf>,
    writable: Vec<blk::GuestBuf>,
) -> Request {
    Request::Raw(RawRequest {
        rtype,
        reserved: 0,
        sector,
        readable,
        writable,
    })
}

fn expect_status(c: &Completion, want: u8, what: &str) -> CaseResult {
    ensure!(
        c.status == want,
        "{what}: status {} ({}), expected {} ({})",
        c.status,
        status::name(c.status),
        want,
        status::name(want)
    );
    Ok(())
}

fn config_padding_zero(c: &mut Ctx) -> CaseResult {
    with_blk(c, None, |disk| {
        let size = disk.device().info().config_size;
        let cfg = disk.config();
        if size > offset::UNUSED0 {
            ensure!(cfg.unused0 == 0, "unused0 is {:#x}", cfg.unused0);
        }
        if size >= offset::UNUSED1 + 3 {
            ensure!(cfg.unused1 == [0; 3], "unused1 is {:x?}", cfg.unused1);
        }
        Ok(())
    })
}

fn wce_offered_with_flush(c: &mut Ctx) -> CaseResult {
    let offered = c.offered()?;
    if !offered.contains(feature::CONFIG_WCE) {
        return Err(CaseError::Skip("CONFIG_WCE not offered".into()));
    }
    ensure!(
        offered.contains(feature::FLUSH),
        "CONFIG_WCE offered without FLUSH"
    );
    Ok(())
}

fn wce_without_flush_writethrough(c: &mut Ctx) -> CaseResult {
    if !c.offered()?.contains(feature::CONFIG_WCE) {
        return Err(CaseError::Skip("CONFIG_WCE not offered".into()));
    }
    let chosen = c.to_features_ok(&[feature::CONFIG_WCE])?;
    ensure!(
        !chosen.contains(feature::FLUSH),
        "the policy chose FLUSH: {chosen:?}"
    );
    let dev = c.dev_num;
    let (_, b) = c.drv().get_config(dev, offset::WRITEBACK, 1)?;
    ensure!(
        b.first() == Some(&0),
        "writeback reads {b:?} with CONFIG_WCE and without FLUSH"
    );
    Ok(())
}

fn wce_writeback_writable(c: &mut Ctx) -> CaseResult {
    with_blk(c, None, |disk| {
        if !disk.limits().config_wce {
            return Err(CaseError::Skip("CONFIG_WCE not offered".into()));
        }
        let initial = disk.config().writeback;
        for want in [initial ^ 1, initial] {
            disk.set_writeback(want != 0)?;
            let got = disk.device().read_config(offset::WRITEBACK, 1)?;
            ensure!(got == [want], "wrote writeback = {want}, reads {got:?}");
        }
        Ok(())
    })
}

fn config_limits_usable(c: &mut Ctx) -> CaseResult {
    let max_vq = c.info()?.max_virtqueues;
    with_blk(c, None, |disk| {
        let cfg = *disk.config();
        let neg = disk.negotiated().clone();
        if neg.contains(feature::SEG_MAX) {
            ensure!(cfg.seg_max >= 1, "seg_max is 0");
        }
        if neg.contains(feature::SIZE_MAX) {
            ensure!(
                u64::from(cfg.size_max) >= SECTOR_SIZE,
                "size_max {} is less than a sector",
                cfg.size_max
            );
        }
        if neg.contains(feature::BLK_SIZE) {
            ensure!(
                cfg.blk_size >= 512 && cfg.blk_size.is_power_of_two(),
                "blk_size {} is not a power of two >= 512",
                cfg.blk_size
            );
        }
        if neg.contains(feature::MQ) {
            ensure!(
                cfg.num_queues >= 1 && u32::from(cfg.num_queues) <= max_vq,
                "num_queues {} with max_virtqueues {max_vq}",
                cfg.num_queues
            );
        }
        if neg.contains(feature::DISCARD) {
            ensure!(
                cfg.max_discard_sectors >= 1 && cfg.max_discard_seg >= 1,
                "discard limits {} sectors, {} segments",
                cfg.max_discard_sectors,
                cfg.max_discard_seg
            );
        }
        if neg.contains(feature::WRITE_ZEROES) {
            ensure!(
                cfg.max_write_zeroes_sectors >= 1 && cfg.max_write_zeroes_seg >= 1,
                "write-zeroes limits {} sectors, {} segments",
                cfg.max_write_zeroes_sectors,
                cfg.max_write_zeroes_seg
            );
        }
        let again = disk.reread_config()?;
        ensure!(
            again == cfg,
            "config changed between two reads: {cfg:?} then {again:?}"
        );
        Ok(())
    })
}

fn capacity_bounds_reads(c: &mut Ctx) -> CaseResult {
    with_blk(c, None, |disk| {
        let unit = unit(disk);
        let cap = disk.capacity();
        if cap < unit {
            return Err(CaseError::Skip(format!(
                "capacity {cap} is below one block"
            )));
        }
        let len = (unit * SECTOR_SIZE) as u32;
        let buf = disk.alloc_buf(2 * len)?;
        let last = cap / unit * unit - unit;
        let ok = run(
            disk,
            &Request::Read {
                sector: last,
                buf: buf.prefix(len),
            },
        )?;
        expect_status(
            &ok,
            status::OK,
            &format!("read of the last block (sector {last})"),
        )?;
        for (sector, n, what) in [
            (cap, len, "read at capacity"),
            (last + unit, len, "read just past the last block"),
            (last, 2 * len, "read across capacity"),
            (u64::MAX - unit + 1, len, "read whose end overflows"),
        ] {
            let c = run(disk, &raw(req::IN, sector, vec![], vec![buf.prefix(n)]))?;
            expect_status(&c, status::IOERR, &format!("{what} (sector {sector})"))?;
        }
        disk.free_buf(buf)?;
        Ok(())
    })
}

fn out_of_range_write(c: &mut Ctx) -> CaseResult {
    with_blk(c, None, |disk| {
        with_scratch(disk, |disk, first, sectors| {
            let unit = unit(disk);
            let len = (unit * SECTOR_SIZE) as usize;
            // The scratch area ends at the last whole block of the disk.
            let last = first + sectors - unit;
            let before = pattern(1, len);
            disk.write(last, &before)?;
            let buf = disk.alloc_buf(2 * len as u32)?;
            disk.write_buf(buf, &pattern(2, 2 * len))?;
            let c = run(disk, &raw(req::OUT, last, vec![buf], vec![]))?;
            expect_status(&c, status::IOERR, "write across capacity")?;
            let cap = disk.capacity();
            let c = run(
                disk,
                &raw(req::OUT, cap, vec![buf.prefix(len as u32)], vec![]),
            )?;
            expect_status(&c, status::IOERR, "write at capacity")?;
            disk.free_buf(buf)?;
            let mut after = vec![0u8; len];
            disk.read(last, &mut after)?;
            ensure!(
                after == before,
                "the refused write across capacity changed the last block"
            );
            Ok(())
        })
    })
}

fn unknown_type_unsupp(c: &mut Ctx) -> CaseResult {
    with_blk(c, None, |disk| {
        let neg = disk.negotiated().clone();
        let mut types = vec![2, 3, 5, 0x7fff, 0xdead_beef];
        if !neg.contains(feature::LIFETIME) {
            types.push(req::GET_LIFETIME);
        }
        if !neg.contains(feature::SECURE_ERASE) {
            types.push(req::SECURE_ERASE);
        }
        for t in types {
            let c = run(disk, &raw(t, 0, vec![], vec![]))?;
            expect_status(&c, status::UNSUPP, &format!("request type {t:#x}"))?;
        }
        Ok(())
    })
}

fn bad_length_ioerr(c: &mut Ctx) -> CaseResult {
    with_blk(c, None, |disk| {
        let buf = disk.alloc_buf(4096)?;
        let c = run(disk, &raw(req::IN, 0, vec![], vec![buf.prefix(100)]))?;
        expect_status(&c, status::IOERR, "IN of 100 bytes")?;
        if !disk.limits().read_only {
            let c = run(disk, &raw(req::OUT, 0, vec![buf.prefix(700)], vec![]))?;
            expect_status(&c, status::IOERR, "OUT of 700 bytes")?;
        }
        disk.free_buf(buf)?;
        Ok(())
    })
}

fn write_read_back(c: &mut Ctx) -> CaseResult {
    with_blk(c, None, |disk| {
        with_scratch(disk, |disk, first, sectors| {
            let len = (sectors * SECTOR_SIZE) as usize;
            let data = pattern(first, len);
            disk.write(first, &data)?;
            let mut back = vec![0u8; len];
            disk.read(first, &mut back)?;
            ensure!(back == data, "IN does not return what OUT wrote");
            // The same through two data descriptors each way.
            let half = (len / 2) as u32;
            let a = disk.alloc_buf(half)?;
            let b = disk.alloc_buf(half)?;
            let data2 = pattern(first + 1, len);
            disk.write_buf(a, &data2[..half as usize])?;
            disk.write_buf(b, &data2[half as usize..])?;
            let c = run(disk, &raw(req::OUT, first, vec![a, b], vec![]))?;
            expect_status(&c, status::OK, "OUT with two data descriptors")?;
            disk.write_buf(a, &vec![0u8; half as usize])?;
            disk.write_buf(b, &vec![0u8; half as usize])?;
            let c = run(disk, &raw(req::IN, first, vec![], vec![a, b]))?;
            expect_status(&c, status::OK, "IN with two data descriptors")?;
            let mut got = vec![0u8; len];
            disk.read_buf(a, &mut got[..half as usize])?;
            disk.read_buf(b, &mut got[half as usize..])?;
            ensure!(
                got == data2,
                "two-descriptor IN does not return what OUT wrote"
            );
            disk.free_buf(a)?;
            disk.free_buf(b)?;
            Ok(())
        })
    })
}

fn flush_ok(c: &mut Ctx) -> CaseResult {
    with_blk(c, None, |disk| {
        if !disk.limits().flush {
            return Err(CaseError::Skip("FLUSH not offered".into()));
        }
        with_scratch(disk, |disk, first, sectors| {
            let len = (sectors * SECTOR_SIZE) as usize;
            disk.write(first, &pattern(3, len))?;
            let c = run(disk, &Request::Flush)?;
            expect_status(&c, status::OK, "FLUSH")?;
            Ok(())
        })
    })
}

fn status_and_used_len(c: &mut Ctx) -> CaseResult {
    with_blk(c, None, |disk| {
        let len = (unit(disk) * SECTOR_SIZE) as u32;
        let buf = disk.alloc_buf(len)?;
        let mut reqs = vec![
            (Request::Read { sector: 0, buf }, Some(len)),
            (Request::GetId, Some(blk::ID_BYTES as u32)),
            (raw(0x7fff, 0, vec![], vec![]), None),
            (raw(req::IN, disk.capacity(), vec![], vec![buf]), None),
        ];
        if disk.limits().flush {
            reqs.push((Request::Flush, Some(0)));
        }
        for (r, data_written) in reqs {
            let name = r.name();
            let c = run(disk, &r)?;
            ensure!(
                c.status != STATUS_UNWRITTEN,
                "{name}: the status byte was not written (used len {})",
                c.used_len
            );
            ensure!(
                matches!(c.status, status::OK | status::IOERR | status::UNSUPP),
                "{name}: status {} is not OK, IOERR or UNSUPP",
                c.status
            );
            ensure!(
                u64::from(c.used_len) <= c.writable_len,
                "{name}: used len {} exceeds the {} device-writable bytes",
                c.used_len,
                c.writable_len
            );
            if let (true, Some(n)) = (c.is_ok(), data_written) {
                ensure!(
                    c.used_len == n + 1,
                    "{name}: used len {} for {n} data bytes and the status byte",
                    c.used_len
                );
            }
        }
        disk.free_buf(buf)?;
        Ok(())
    })
}

fn get_id(c: &mut Ctx) -> CaseResult {
    with_blk(c, None, |disk| {
        let c = run(disk, &Request::GetId)?;
        expect_status(&c, status::OK, "GET_ID")?;
        let id = disk.id_of(&c)?;
        let end = id.iter().position(|&b| b == 0).unwrap_or(id.len());
        ensure!(
            id[..end].iter().all(|b| (0x20..0x7f).contains(b)),
            "GET_ID {id:x?} is not printable ASCII before its NUL"
        );
        ensure!(
            id[end..].iter().all(|&b| b == 0),
            "GET_ID {id:x?} has bytes after its NUL terminator"
        );
        Ok(())
    })
}

fn ro_write_ioerr(c: &mut Ctx) -> CaseResult {
    if !c.offered()?.contains(feature::RO) {
        return Err(CaseError::Skip(
            "the device is writable (RO not offered)".into(),
        ));
    }
    with_blk(c, None, |disk| {
        let len = (unit(disk) * SECTOR_SIZE) as usize;
        let mut before = vec![0u8; len];
        disk.read(0, &mut before)?;
        let buf = disk.alloc_buf(len as u32)?;
        let other: Vec<u8> = before.iter().map(|b| !b).collect();
        disk.write_buf(buf, &other)?;
        let c = run(disk, &raw(req::OUT, 0, vec![buf], vec![]))?;
        expect_status(&c, status::IOERR, "OUT on a read-only device")?;
        disk.free_buf(buf)?;
        let mut after = vec![0u8; len];
        disk.read(0, &mut after)?;
        ensure!(after == before, "the refused write changed sector 0");
        Ok(())
    })
}

fn ro_flush_ok(c: &mut Ctx) -> CaseResult {
    let offered = c.offered()?;
    if !offered.contains(feature::RO) {
        return Err(CaseError::Skip(
            "the device is writable (RO not offered)".into(),
        ));
    }
    if !offered.contains(feature::FLUSH) {
        return Err(CaseError::Skip("FLUSH not offered".into()));
    }
    with_blk(c, None, |disk| {
        let c = run(disk, &Request::Flush)?;
        expect_status(&c, status::OK, "FLUSH on a read-only device")
    })
}

fn need_discard(disk: &Blk) -> CaseResult {
    if disk.limits().discard.is_none() {
        return Err(CaseError::Skip("DISCARD not offered".into()));
    }
    Ok(())
}

fn discard_ok(c: &mut Ctx) -> CaseResult {
    with_blk(c, None, |disk| {
        need_discard(disk)?;
        with_scratch(disk, |disk, first, sectors| {
            let c = run(
                disk,
                &Request::Discard(vec![Segment::new(first, sectors as u32)]),
            )?;
            expect_status(&c, status::OK, "DISCARD of the scratch area")?;
            let c = run(
                disk,
                &Request::Discard(vec![Segment::new(first + sectors - 1, 2)]),
            )?;
            expect_status(&c, status::IOERR, "DISCARD across capacity")?;
            Ok(())
        })
    })
}

/// A DISCARD or WRITE_ZEROES request with raw segments (bypassing the
/// frontend's flag checks).
fn raw_segments(disk: &mut Blk, rtype: u32, segs: &[Segment]) -> Result<Completion, CaseError> {
    let mut bytes = Vec::new();
    for s in segs {
        bytes.extend_from_slice(&s.sector.to_le_bytes());
        bytes.extend_from_slice(&s.num_sectors.to_le_bytes());
        bytes.extend_from_slice(&s.flags.to_le_bytes());
    }
    let buf = disk.alloc_buf(bytes.len() as u32)?;
    disk.write_buf(buf, &bytes)?;
    let c = run(disk, &raw(rtype, 0, vec![buf], vec![]));
    disk.free_buf(buf)?;
    c
}

fn discard_unmap_unsupp(c: &mut Ctx) -> CaseResult {
    with_blk(c, None, |disk| {
        need_discard(disk)?;
        with_scratch(disk, |disk, first, sectors| {
            let seg = Segment {
                sector: first,
                num_sectors: sectors as u32,
                flags: WRITE_ZEROES_FLAG_UNMAP,
            };
            let c = raw_segments(disk, req::DISCARD, &[seg])?;
            expect_status(&c, status::UNSUPP, "DISCARD with the unmap flag")
        })
    })
}

fn unknown_segment_flag_unsupp(c: &mut Ctx) -> CaseResult {
    with_blk(c, None, |disk| {
        let l = *disk.limits();
        if l.discard.is_none() && l.write_zeroes.is_none() {
            return Err(CaseError::Skip(
                "neither DISCARD nor WRITE_ZEROES offered".into(),
            ));
        }
        with_scratch(disk, |disk, first, sectors| {
            let mut before = vec![0u8; (sectors * SECTOR_SIZE) as usize];
            disk.read(first, &mut before)?;
            let seg = Segment {
                sector: first,
                num_sectors: sectors as u32,
                flags: 1 << 1,
            };
            if l.discard.is_some() {
                let c = raw_segments(disk, req::DISCARD, &[seg])?;
                expect_status(&c, status::UNSUPP, "DISCARD with flag bit 1")?;
            }
            if l.write_zeroes.is_some() {
                let c = raw_segments(disk, req::WRITE_ZEROES, &[seg])?;
                expect_status(&c, status::UNSUPP, "WRITE_ZEROES with flag bit 1")?;
                let mut after = vec![0u8; before.len()];
                disk.read(first, &mut after)?;
                ensure!(after == before, "the refused WRITE_ZEROES changed data");
            }
            Ok(())
        })
    })
}

fn write_zeroes_reads_zero(c: &mut Ctx) -> CaseResult {
    with_blk(c, None, |disk| {
        if disk.limits().write_zeroes.is_none() {
            return Err(CaseError::Skip("WRITE_ZEROES not offered".into()));
        }
        let unit = unit(disk);
        with_scratch(disk, |disk, first, sectors| {
            let len = (sectors * SECTOR_SIZE) as usize;
            let u = (unit * SECTOR_SIZE) as usize;
            for unmap in [false, true] {
                let data = pattern(first + u64::from(unmap), len);
                disk.write(first, &data)?;
                // Zero the second block only (and, with two segments, the
                // last one too).
                let mut segs = vec![Segment::new(first + unit, unit as u32)];
                let two = disk.limits().write_zeroes.is_some_and(|w| w.max_seg >= 2);
                if two {
                    segs.push(Segment::new(first + sectors - unit, unit as u32));
                }
                if unmap {
                    for s in &mut segs {
                        s.flags = WRITE_ZEROES_FLAG_UNMAP;
                    }
                }
                let c = run(disk, &Request::WriteZeroes(segs))?;
                expect_status(&c, status::OK, &format!("WRITE_ZEROES (unmap {unmap})"))?;
                let mut want = data.clone();
                want[u..2 * u].fill(0);
                if two {
                    want[len - u..].fill(0);
                }
                let mut got = vec![0xA5u8; len];
                disk.read(first, &mut got)?;
                if got != want {
                    let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
                    return Err(CaseError::Fail(format!(
                        "after WRITE_ZEROES (unmap {unmap}) byte {at} of the scratch area reads {:#x}, expected {:#x}",
                        got[at], want[at]
                    )));
                }
            }
            Ok(())
        })
    })
}

fn mq_every_queue_serves(c: &mut Ctx) -> CaseResult {
    with_blk(c, None, |disk| {
        if !disk.negotiated().contains(feature::MQ) || disk.num_queues() < 2 {
            return Err(CaseError::Skip("MQ not offered (one queue)".into()));
        }
        let unit = unit(disk);
        let len = (unit * SECTOR_SIZE) as u32;
        let span = disk.capacity() / unit * unit;
        if span == 0 {
            return Err(CaseError::Skip("the disk is smaller than one block".into()));
        }
        let n = disk.num_queues();
        let mut bufs = Vec::new();
        let mut tags = Vec::new();
        // Several requests on every queue at once, then one notification
        // per queue.
        for q in 0..n {
            for i in 0..4u64 {
                let buf = disk.alloc_buf(len)?;
                let sector = (u64::from(q) * 4 + i) * unit % span;
                tags.push((q, disk.submit(q, &Request::Read { sector, buf })?));
                bufs.push(buf);
            }
        }
        disk.kick()?;
        let mut done = Vec::new();
        while done.len() < tags.len() {
            disk.wait(&mut done)?;
        }
        for (q, tag) in tags {
            let Some(c) = done.iter().find(|c| c.tag == tag) else {
                return Err(CaseError::Fail(format!("request {tag:?} never completed")));
            };
            ensure!(
                c.queue == q,
                "posted on queue {q}, completed on {}",
                c.queue
            );
            expect_status(c, status::OK, &format!("read on queue {q}"))?;
        }
        for b in bufs {
            disk.free_buf(b)?;
        }
        Ok(())
    })
}
