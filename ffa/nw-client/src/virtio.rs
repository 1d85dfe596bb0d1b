//! The driver side: spec-v2 frames over DIRECT_REQ2 (virtio-msg-v2.md §1,
//! §3, §8), the FF-A bus set-up, and split virtqueues (virtio 1.2 §2.7) in
//! the shared area, addressed by bus address `area_id << 48 | offset`.

use core::ptr;

use crate::ffa::{self, Ffa};
use crate::msg;
use crate::uart::Msg;
use crate::{DEVICE_UUID, Outcome};

/// Message ids (virtio-msg-v2.md §3.1, §4, §8.4).
const GET_DEVICE_INFO: u8 = 0x02;
const GET_DEVICE_FEATURES: u8 = 0x03;
const SET_DRIVER_FEATURES: u8 = 0x04;
const GET_DEVICE_STATUS: u8 = 0x07;
const SET_DEVICE_STATUS: u8 = 0x08;
const GET_VQUEUE: u8 = 0x09;
const SET_VQUEUE: u8 = 0x0A;
const EVENT_AVAIL: u8 = 0x41;
const EVENT_USED: u8 = 0x42;
const BUS_GET_DEVICES: u8 = 0x02;
const BUS_PING: u8 = 0x03;
const FFA_VERSION_MSG: u8 = 0x80;
const FFA_AREA_SHARE: u8 = 0x81;
const FFA_AREA_UNSHARE: u8 = 0x82;
const FFA_RESET: u8 = 0x83;
const FFA_EVENT_POLL: u8 = 0x84;
const FFA_EVENT_CONFIGURE: u8 = 0x85;
const FFA_ERROR: u8 = 0x87;
/// `type` bits.
const BUS: u8 = 0x02;
const RESPONSE: u8 = 0x01;
/// Queue size the client uses.
const QSIZE: u16 = 8;
/// EVENT_POLLs before a completion is declared lost (the partition works
/// synchronously: one is enough).
const POLLS: u32 = 4;

/// The shared area: memory of the client's, known to the device as
/// `area_id`.
#[derive(Debug)]
pub struct Area {
    base: *mut u8,
    len: usize,
    id: u16,
}

impl Area {
    /// `len` bytes at `base` (its physical address) as area `id`.
    pub fn new(base: *mut u8, len: usize, id: u16) -> Self {
        Self { base, len, id }
    }

    fn bus(&self, off: usize) -> u64 {
        (u64::from(self.id) << 48) | off as u64
    }

    fn write(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len);
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: inside the area (asserted), which is this program's.
            unsafe { ptr::write_volatile(self.base.add(off + i), b) };
        }
    }

    fn read(&self, off: usize, out: &mut [u8]) {
        assert!(off + out.len() <= self.len);
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: as in `write`.
            *b = unsafe { ptr::read_volatile(self.base.add(off + i)) };
        }
    }

    fn u16(&self, off: usize) -> u16 {
        let mut b = [0; 2];
        self.read(off, &mut b);
        u16::from_le_bytes(b)
    }

    fn u32(&self, off: usize) -> u32 {
        let mut b = [0; 4];
        self.read(off, &mut b);
        u32::from_le_bytes(b)
    }
}

fn u16_at(f: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([f[at], f[at + 1]])
}
fn u32_at(f: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]])
}

/// One virtqueue of the client, in the area.
#[derive(Clone, Copy, Debug)]
struct Queue {
    dev: u16,
    desc: usize,
    avail: usize,
    used: usize,
    next_avail: u16,
    last_used: u16,
}

/// The client's driver side over one partition.
pub struct Driver<'a> {
    ffa: &'a mut Ffa,
    sp: u16,
    area: Area,
    token: u16,
}

impl<'a> Driver<'a> {
    /// A driver for partition `sp` sharing `area`.
    pub fn new(ffa: &'a mut Ffa, sp: u16, area: Area) -> Self {
        Self {
            ffa,
            sp,
            area,
            token: 1,
        }
    }

    /// Send one frame (`type`, `msg_id`, `dev_num`, payload) and return the
    /// response registers.
    fn call(&mut self, ty: u8, msg_id: u8, dev: u16, payload: &[u8]) -> Result<[u8; 112], Msg> {
        self.token = self.token.wrapping_add(1).max(2);
        let mut f = [0u8; 112];
        f[0] = ty;
        f[1] = msg_id;
        f[2..4].copy_from_slice(&dev.to_le_bytes());
        f[4..6].copy_from_slice(&self.token.to_le_bytes());
        f[6..8].copy_from_slice(&((8 + payload.len()) as u16).to_le_bytes());
        f[8..8 + payload.len()].copy_from_slice(payload);
        let mut out = [0u8; 112];
        self.ffa
            .direct(self.sp, &DEVICE_UUID, &f[..8 + payload.len()], &mut out)
            .map_err(|e| msg!("DIRECT_REQ2 of {msg_id:#04x}: {e}"))?;
        Ok(out)
    }

    /// A request that must get its own response (same msg_id, dev, token).
    fn request(&mut self, ty: u8, msg_id: u8, dev: u16, payload: &[u8]) -> Result<[u8; 112], Msg> {
        let r = self.call(ty, msg_id, dev, payload)?;
        if r[0] != ty | RESPONSE || r[1] != msg_id || u16_at(&r, 4) != self.token {
            return Err(msg!(
                "request {ty:#04x}/{msg_id:#04x} dev {dev}: answer {:02x?}",
                &r[..12]
            ));
        }
        Ok(r)
    }

    fn bus(&mut self, msg_id: u8, payload: &[u8]) -> Result<[u8; 112], Msg> {
        self.request(BUS, msg_id, 0, payload)
    }

    fn transport(&mut self, msg_id: u8, dev: u16, payload: &[u8]) -> Result<[u8; 112], Msg> {
        self.request(0, msg_id, dev, payload)
    }

    fn version(&mut self, bus_version: u32, revision: u32) -> Result<[u8; 112], Msg> {
        let mut p = [0u8; 12];
        p[0..4].copy_from_slice(&bus_version.to_le_bytes());
        p[4..8].copy_from_slice(&revision.to_le_bytes());
        p[8..12].copy_from_slice(&0x0001_0002u32.to_le_bytes());
        self.bus(FFA_VERSION_MSG, &p)
    }

    /// VERSION probe, then the exact echo (§8.4).
    pub fn negotiate(&mut self) -> Outcome {
        let probe = self.version(0, 0)?;
        let (bv, rev, feat, areas) = (
            u32_at(&probe, 8),
            u32_at(&probe, 12),
            u32_at(&probe, 24),
            u16_at(&probe, 28),
        );
        if (bv, rev) != (0x0001_0000, 1) || feat & 0b11 != 0b11 {
            return Err(msg!(
                "probe answered bus {bv:#x} revision {rev} features {feat:#x}"
            ));
        }
        let echo = self.version(bv, rev)?;
        if echo[8..30] != probe[8..30] {
            return Err(msg!("the echo was not confirmed: {:02x?}", &echo[8..30]));
        }
        Ok(msg!(
            "v2 probe: bus 1.0, revision 1, bus features {feat:#x}, max areas {areas}; echo committed"
        ))
    }

    /// MEM_SHARE the area, AREA_SHARE it, EVENT_CONFIGURE poll.
    pub fn share_area(&mut self, pages: u32) -> Result<(u64, Msg), Msg> {
        let handle = self
            .ffa
            .mem_share(self.sp, self.area.base as u64, pages)
            .map_err(|e| msg!("MEM_SHARE: {e}"))?;
        let mut p = [0u8; 26];
        p[0..2].copy_from_slice(&self.area.id.to_le_bytes());
        p[2..10].copy_from_slice(&handle.to_le_bytes());
        p[18..22].copy_from_slice(&pages.to_le_bytes());
        p[22..26].copy_from_slice(&0x6F4u32.to_le_bytes());
        let r = self.bus(FFA_AREA_SHARE, &p)?;
        if u16_at(&r, 8) != self.area.id || u16_at(&r, 10) != 0 {
            return Err(msg!(
                "AREA_SHARE answered area {} result {}",
                u16_at(&r, 8),
                u16_at(&r, 10)
            ));
        }
        let r = self.bus(FFA_EVENT_CONFIGURE, &[0, 0, 0, 0])?;
        if u16_at(&r, 8) != 0 {
            return Err(msg!("EVENT_CONFIGURE poll: result {}", u16_at(&r, 8)));
        }
        Ok((
            handle,
            msg!(
                "MEM_SHARE {pages} pages: handle {handle:#x}; AREA_SHARE area {}: 0; EVENT_CONFIGURE poll: 0",
                self.area.id
            ),
        ))
    }

    /// GET_DEVICES: the rng at 0 and the blk at 1.
    pub fn devices(&mut self) -> Outcome {
        let r = self.bus(BUS_GET_DEVICES, &[0, 0, 16, 0])?;
        let (offset, next, count) = (u16_at(&r, 8), u16_at(&r, 10), u16_at(&r, 12));
        let bitmap = r[14];
        if offset != 0 || next != 0 || count == 0 || bitmap & 0b11 != 0b11 {
            return Err(msg!(
                "GET_DEVICES: offset {offset} next {next} count {count} bitmap {bitmap:#04x}"
            ));
        }
        Ok(msg!("GET_DEVICES: count {count}, bitmap {bitmap:#04x}"))
    }

    fn status(&mut self, dev: u16, status: u32) -> Result<u32, Msg> {
        let r = self.transport(SET_DEVICE_STATUS, dev, &status.to_le_bytes())?;
        Ok(u32_at(&r, 8))
    }

    /// The §3 initialisation of device `dev` with one queue at `qoff`:
    /// its device id and offered feature words.
    fn init(&mut self, dev: u16, qoff: usize) -> Result<(Queue, u32, u64), Msg> {
        let info = self.transport(GET_DEVICE_INFO, dev, &[])?;
        let device_id = u32_at(&info, 8);
        let blocks = u32_at(&info, 32);
        self.status(dev, 0)?;
        self.status(dev, 1)?;
        self.status(dev, 3)?;
        let f = self.transport(GET_DEVICE_FEATURES, dev, &[0, 0, 0, 0, 2, 0, 0, 0])?;
        let offered = u64::from(u32_at(&f, 16)) | (u64::from(u32_at(&f, 20)) << 32);
        // VERSION_1 and ACCESS_PLATFORM (bus addresses).
        let want: u64 = (1 << 32) | (1 << 33);
        if offered & want != want || blocks < 2 {
            return Err(msg!("device {dev}: offers {offered:#x} in {blocks} blocks"));
        }
        let mut p = [0u8; 16];
        p[4..8].copy_from_slice(&2u32.to_le_bytes());
        p[12..16].copy_from_slice(&((want >> 32) as u32).to_le_bytes());
        self.transport(SET_DRIVER_FEATURES, dev, &p)?;
        if self.status(dev, 0xb)? & 0x8 == 0 {
            return Err(msg!("device {dev}: FEATURES_OK refused"));
        }
        let vq = self.transport(GET_VQUEUE, dev, &0u32.to_le_bytes())?;
        let max = u32_at(&vq, 12);
        if max < u32::from(QSIZE) {
            return Err(msg!("device {dev}: queue 0 max size {max}"));
        }
        let q = Queue {
            dev,
            desc: qoff,
            avail: qoff + 0x100,
            used: qoff + 0x200,
            next_avail: 0,
            last_used: 0,
        };
        self.area.write(qoff, &[0u8; 0x400]);
        let mut s = [0u8; 40];
        s[4..8].copy_from_slice(&1u32.to_le_bytes());
        s[8..12].copy_from_slice(&u32::from(QSIZE).to_le_bytes());
        s[16..24].copy_from_slice(&self.area.bus(q.desc).to_le_bytes());
        s[24..32].copy_from_slice(&self.area.bus(q.avail).to_le_bytes());
        s[32..40].copy_from_slice(&self.area.bus(q.used).to_le_bytes());
        self.transport(SET_VQUEUE, dev, &s)?;
        let vq = self.transport(GET_VQUEUE, dev, &0u32.to_le_bytes())?;
        if u32_at(&vq, 20) & 1 != 1 || vq[24..48] != s[16..40] {
            return Err(msg!(
                "device {dev}: GET_VQUEUE after SET_VQUEUE: {:02x?}",
                &vq[8..48]
            ));
        }
        if self.status(dev, 0xf)? != 0xf {
            return Err(msg!("device {dev}: DRIVER_OK refused"));
        }
        Ok((q, device_id, offered))
    }

    /// Make a chain of (offset, len, device-writable) available, kick, and
    /// collect the used entry through EVENT_POLL.
    fn transfer(&mut self, q: &mut Queue, chain: &[(usize, u32, bool)]) -> Result<u32, Msg> {
        for (i, &(off, len, write)) in chain.iter().enumerate() {
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&self.area.bus(off).to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            let mut flags = if write { 2u16 } else { 0 };
            if i + 1 < chain.len() {
                flags |= 1;
            }
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&((i + 1) as u16).to_le_bytes());
            self.area.write(q.desc + 16 * i, &d);
        }
        let slot = usize::from(q.next_avail % QSIZE);
        self.area.write(q.avail + 4 + 2 * slot, &0u16.to_le_bytes());
        q.next_avail = q.next_avail.wrapping_add(1);
        self.area.write(q.avail + 2, &q.next_avail.to_le_bytes());
        // EVENT_AVAIL: an event; over direct it is answered with the
        // header-only bus response carrying its token (§8.3).
        let mut ev = [0u8; 8];
        ev[4..8].copy_from_slice(&0u32.to_le_bytes());
        let ack = self.call(0, EVENT_AVAIL, q.dev, &ev)?;
        if ack[0] != BUS | RESPONSE || u16_at(&ack, 4) != self.token || u16_at(&ack, 6) != 8 {
            return Err(msg!("EVENT_AVAIL ack {:02x?}", &ack[..8]));
        }
        for _ in 0..POLLS {
            let r = self.call(BUS, FFA_EVENT_POLL, 0, &[])?;
            if r[0] == 0 && r[1] == EVENT_USED && u16_at(&r, 2) == q.dev {
                let used = self.area.u16(q.used + 2);
                if used == q.last_used {
                    return Err(msg!("EVENT_USED without a used entry"));
                }
                let slot = usize::from(q.last_used % QSIZE);
                q.last_used = q.last_used.wrapping_add(1);
                return Ok(self.area.u32(q.used + 4 + 8 * slot + 4));
            }
            if r[1] == FFA_ERROR {
                return Err(msg!("EVENT_POLL: ERROR"));
            }
        }
        Err(msg!("no EVENT_USED after {POLLS} polls"))
    }

    /// virtio-rng: 64 bytes through the queue, not constant.
    pub fn rng(&mut self) -> Outcome {
        let (mut q, id, offered) = self.init(0, 0x0000)?;
        if id != 4 {
            return Err(msg!("device 0 is type {id}, not rng"));
        }
        self.area.write(0x2000, &[0u8; 64]);
        let len = self.transfer(&mut q, &[(0x2000, 64, true)])?;
        let mut data = [0u8; 64];
        self.area.read(0x2000, &mut data);
        let distinct = (0..=255u8).filter(|v| data.contains(v)).count();
        if len != 64 || distinct < 16 {
            return Err(msg!("used len {len}, {distinct} distinct byte values"));
        }
        Ok(msg!(
            "device 0 (type 4, offers {offered:#x}): 64 bytes in the area, {distinct} distinct values"
        ))
    }

    fn blk_request(
        &mut self,
        q: &mut Queue,
        kind: u32,
        sector: u64,
        data: usize,
        len: u32,
    ) -> Result<(u32, u8), Msg> {
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&kind.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        self.area.write(0x3000, &hdr);
        self.area.write(0x3100, &[0xff]);
        let used = if len == 0 {
            self.transfer(q, &[(0x3000, 16, false), (0x3100, 1, true)])?
        } else {
            let write = kind == 0;
            self.transfer(
                q,
                &[(0x3000, 16, false), (data, len, write), (0x3100, 1, true)],
            )?
        };
        let mut status = [0u8];
        self.area.read(0x3100, &mut status);
        Ok((used, status[0]))
    }

    /// virtio-blk: 4 KiB written at sector 16, flushed, read back.
    pub fn blk(&mut self) -> Outcome {
        let (mut q, id, offered) = self.init(1, 0x1000)?;
        if id != 2 {
            return Err(msg!("device 1 is type {id}, not blk"));
        }
        let mut pattern = [0u8; 4096];
        for (i, b) in pattern.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(7);
        }
        self.area.write(0x4000, &pattern);
        let (_, s) = self.blk_request(&mut q, 1, 16, 0x4000, 4096)?;
        if s != 0 {
            return Err(msg!("OUT status {s}"));
        }
        let (_, s) = self.blk_request(&mut q, 4, 0, 0, 0)?;
        if s != 0 {
            return Err(msg!("FLUSH status {s}"));
        }
        self.area.write(0x5000, &[0u8; 4096]);
        let (used, s) = self.blk_request(&mut q, 0, 16, 0x5000, 4096)?;
        let mut back = [0u8; 4096];
        self.area.read(0x5000, &mut back);
        if s != 0 || used != 4097 || back != pattern {
            return Err(msg!(
                "IN status {s} used {used}, data {}",
                if back == pattern { "equal" } else { "differs" }
            ));
        }
        Ok(msg!(
            "device 1 (type 2, offers {offered:#x}): 4 KiB written at sector 16, flushed, read back equal (used 4097)"
        ))
    }

    /// Round trips in one boot: a bare DIRECT_REQ2 echo (the nil UUID, which
    /// the partition answers at once), a bus PING, an rng request of 64
    /// bytes and a 4 KiB blk read, each through EVENT_AVAIL and EVENT_POLL.
    /// The four are interleaved round by round, so a slow stretch of the
    /// host slows them alike; TCG times are only meaningful as ratios.
    pub fn bench(&mut self, rounds: u32) -> Outcome {
        let (_, frq) = ffa::ticks();
        let (mut rq, _, _) = self.init(0, 0x0000)?;
        let (mut bq, _, _) = self.init(1, 0x1000)?;
        let mut total = [0u64; 4];
        // The first fifth warms up (TCG translates the paths on first use).
        let warm = rounds / 5;
        for round in 0..warm + rounds {
            let mut lap = [0u64; 4];
            let (a, _) = ffa::ticks();
            let mut out = [0u8; 112];
            self.ffa
                .direct(self.sp, &[0; 16], &[0x5a; 16], &mut out)
                .map_err(|e| msg!("echo: {e}"))?;
            if out[..16] != [0x5a; 16] {
                return Err(msg!("echo changed the payload"));
            }
            let (b, _) = ffa::ticks();
            let r = self.bus(BUS_PING, &round.to_le_bytes())?;
            if u32_at(&r, 8) != round {
                return Err(msg!("PING echo"));
            }
            let (c, _) = ffa::ticks();
            self.transfer(&mut rq, &[(0x2000, 64, true)])?;
            let (d, _) = ffa::ticks();
            let (_, s) = self.blk_request(&mut bq, 0, 16, 0x5000, 4096)?;
            if s != 0 {
                return Err(msg!("IN status {s}"));
            }
            let (e, _) = ffa::ticks();
            lap[0] = b - a;
            lap[1] = c - b;
            lap[2] = d - c;
            lap[3] = e - d;
            if round >= warm {
                for (t, l) in total.iter_mut().zip(lap) {
                    *t += l;
                }
            }
        }
        let ns = |t: u64| t * 1_000_000_000 / frq.max(1) / u64::from(rounds.max(1));
        let [echo, ping, rng, blk] = total.map(ns);
        let ratio = |x: u64| x as f64 / echo.max(1) as f64;
        let _ = core::fmt::Write::write_fmt(
            &mut crate::uart::Uart,
            format_args!(
                "VMSG-FFA-BENCH rounds={rounds} echo_ns={echo} ping_ns={ping} rng64_ns={rng} blk4k_ns={blk} ping/echo={:.2} rng/echo={:.2} blk/echo={:.2}\n",
                ratio(ping),
                ratio(rng),
                ratio(blk)
            ),
        );
        Ok(msg!(
            "per round trip (TCG, interleaved): echo {echo} ns; PING {:.2}x, rng 64 B {:.2}x, blk 4 KiB read {:.2}x the echo",
            ratio(ping),
            ratio(rng),
            ratio(blk)
        ))
    }

    /// Reset both devices, AREA_UNSHARE, then MEM_RECLAIM.
    pub fn unshare(&mut self, handle: u64) -> Outcome {
        for dev in [0, 1] {
            self.status(dev, 0)?;
            let mut settled = false;
            for _ in 0..100 {
                let r = self.transport(GET_DEVICE_STATUS, dev, &[])?;
                if u32_at(&r, 8) == 0 {
                    settled = true;
                    break;
                }
            }
            if !settled {
                return Err(msg!("device {dev} did not finish its reset"));
            }
        }
        let r = self.bus(FFA_AREA_UNSHARE, &self.area.id.to_le_bytes())?;
        if u16_at(&r, 10) != 0 {
            return Err(msg!("AREA_UNSHARE result {}", u16_at(&r, 10)));
        }
        self.ffa
            .mem_reclaim(handle)
            .map_err(|e| msg!("MEM_RECLAIM after the partition relinquished: {e}"))?;
        Ok(msg!(
            "devices reset; AREA_UNSHARE: 0 (the partition relinquished); MEM_RECLAIM {handle:#x}: success"
        ))
    }

    /// RESET: the partition forgets the negotiation.
    pub fn reset(&mut self) -> Outcome {
        let r = self.bus(FFA_RESET, &[])?;
        if u16_at(&r, 8) != 0 {
            return Err(msg!("RESET result {}", u16_at(&r, 8)));
        }
        let r = self.call(BUS, BUS_GET_DEVICES, 0, &[0, 0, 16, 0])?;
        if r[1] != FFA_ERROR {
            return Err(msg!(
                "GET_DEVICES after RESET was answered: {:02x?}",
                &r[..8]
            ));
        }
        Ok(msg!("RESET: 0; GET_DEVICES before a new VERSION: ERROR"))
    }
}
