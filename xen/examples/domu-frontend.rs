//! The domU side of the real-Xen test (`tests/xen-qemu/`): runs as a PV
//! domU's init payload, connects `XenFrontend` on the real `/dev/xen/*`
//! nodes to vmsgd in dom0 and drives the devices it finds with vmsg-driver:
//! discovery, an rng read, and on a blk device a write, flush and read-back
//! of a pattern derived from the nonce dom0 passed on the kernel command
//! line. It prints one verdict line on its console:
//!
//! ```text
//! VMSG-VERDICT PASS devid=0 mode=grant devices=1,2 rng=4096 blk=65536@2048 nonce=… fnv=…
//! VMSG-VERDICT FAIL <stage>: <error>
//! ```
//!
//! The same binary checks the image in dom0 afterwards (`verify-image`),
//! independently of what the guest claimed.
//!
//! ```sh
//! domu-frontend [--devid N] [--nonce N] [--wait SECS] [--blk-sector S] [--blk-bytes B] [--hotplug DEV]
//! domu-frontend verify-image IMAGE --nonce N [--blk-sector S] [--blk-bytes B]
//! ```
//!
//! Build it static, so the busybox initramfs needs no libraries:
//! `RUSTFLAGS="-C target-feature=+crt-static" cargo build --release
//! --target x86_64-unknown-linux-gnu -p vmsg-xen --example domu-frontend`.

use std::fmt::Display;
use std::io::{Read, Seek, SeekFrom};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use vmsg_driver::Driver;
use vmsg_driver::blk::{Blk, VIRTIO_ID_BLOCK};
use vmsg_driver::rng::Rng;
use vmsg_driver::wire::{Event, device_bus_state};
use vmsg_xen::bus::{FrontendOptions, XenFrontend, XenHost, frontend_path, keys};
use vmsg_xen::xenstore::{XsClient, XsOps};

const VIRTIO_ID_RNG: u32 = 4;
const SECTOR: u64 = 512;
const RNG_BYTES: usize = 4096;
/// First line of the blk pattern; the rest of the header sector is zero.
const MAGIC: &str = "VMSG-XEN-BLK";

#[derive(Debug)]
struct Args {
    devid: u32,
    nonce: u64,
    wait: Duration,
    blk_sector: u64,
    blk_bytes: usize,
    /// After the checks, wait for this device to be hot-added (dom0 adds
    /// it to the domain file and sends SIGHUP) and read from it.
    hotplug: Option<u16>,
    verify: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        devid: 0,
        nonce: 0,
        wait: Duration::from_secs(60),
        blk_sector: 2048,
        blk_bytes: 64 * 1024,
        hotplug: None,
        verify: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--devid" => a.devid = num(&val("--devid")?)?,
            "--nonce" => a.nonce = num(&val("--nonce")?)?,
            "--wait" => a.wait = Duration::from_secs(num(&val("--wait")?)?),
            "--blk-sector" => a.blk_sector = num(&val("--blk-sector")?)?,
            "--blk-bytes" => a.blk_bytes = num(&val("--blk-bytes")?)?,
            "--hotplug" => a.hotplug = Some(num(&val("--hotplug")?)?),
            "verify-image" => a.verify = Some(val("verify-image")?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.blk_bytes < SECTOR as usize || a.blk_bytes % SECTOR as usize != 0 {
        return Err(format!(
            "--blk-bytes {} is not a positive multiple of 512",
            a.blk_bytes
        ));
    }
    Ok(a)
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("{s:?} is not a number"))
}

/// The bytes written to the blk device: a header sector naming the nonce,
/// then a splitmix64 stream seeded with it.
fn pattern(nonce: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let header = format!("{MAGIC} nonce={nonce} len={len}\n");
    let h = header.len().min(SECTOR as usize);
    out[..h].copy_from_slice(&header.as_bytes()[..h]);
    let mut x = nonce ^ 0x9E37_79B9_7F4A_7C15;
    for chunk in out[SECTOR as usize..].chunks_mut(8) {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
    out
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn stage<T, E: Display>(what: &'static str, r: Result<T, E>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Wait (bounded) until dom0 has created our device directory.
fn wait_for_directory(devid: u32, wait: Duration) -> Result<(), String> {
    let mut xs = stage("open xenstore", XsClient::open())?;
    let domid: u16 = {
        let v = stage("read domid", xs.read("domid"))?;
        let s = String::from_utf8_lossy(&v);
        num(s.trim_end_matches('\0'))?
    };
    let dir = frontend_path(domid, devid);
    let backend = format!("{dir}/{}", keys::BACKEND);
    stage("watch", xs.watch(&backend, "vmsg-dir"))?;
    let deadline = Instant::now() + wait;
    loop {
        if stage("read", xs.try_read(&backend))?.is_some() {
            println!("domu-frontend: domain {domid}: {dir} is there");
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "wait: dom0 did not create {dir} within {}s",
                wait.as_secs()
            ));
        }
        stage("watch event", xs.next_event(Some(left)))?;
    }
}

fn run(a: &Args) -> Result<String, String> {
    wait_for_directory(a.devid, a.wait)?;
    let opts = FrontendOptions {
        devid: a.devid,
        state_timeout: a.wait,
        ..FrontendOptions::default()
    };
    let fe = stage("connect", XenFrontend::connect(&XenHost, &opts))?;
    let mode = if fe.grant_mode() { "grant" } else { "foreign" };
    let mut drv = stage("driver", Driver::new(Box::new(fe)))?.with_timeout(Duration::from_secs(30));
    stage("ping", drv.ping(0x5eed))?;
    let devices = stage("discover", drv.discover())?;
    if devices.is_empty() {
        return Err("discover: no devices".into());
    }
    let mut summary = Vec::new();
    let mut saw_rng = false;
    for &dev in &devices {
        let info = stage("get device info", drv.get_device_info(dev))?;
        drv = match info.device_id {
            VIRTIO_ID_RNG => {
                let mut rng = stage("rng open", Rng::open(drv, dev))?;
                let bytes = stage("rng read", rng.read(RNG_BYTES))?;
                if bytes.len() != RNG_BYTES {
                    return Err(format!("rng read: {} bytes", bytes.len()));
                }
                // Entropy, not a zeroed buffer: at least 64 distinct values.
                let mut seen = [false; 256];
                bytes.iter().for_each(|&b| seen[usize::from(b)] = true);
                let distinct = seen.iter().filter(|&&s| s).count();
                if distinct < 64 {
                    return Err(format!("rng read: only {distinct} distinct byte values"));
                }
                saw_rng = true;
                summary.push(format!("rng={}", bytes.len()));
                stage("rng close", rng.close())?
            }
            VIRTIO_ID_BLOCK => {
                let mut blk = stage("blk open", Blk::open(drv, dev))?;
                let need = a.blk_sector * SECTOR + a.blk_bytes as u64;
                let cap = blk.capacity() * SECTOR;
                if cap < need {
                    return Err(format!("blk: capacity {cap} bytes, need {need}"));
                }
                let data = pattern(a.nonce, a.blk_bytes);
                stage("blk write", blk.write(a.blk_sector, &data))?;
                stage("blk flush", blk.flush())?;
                let mut back = vec![0u8; data.len()];
                stage("blk read", blk.read(a.blk_sector, &mut back))?;
                if back != data {
                    let at = back.iter().zip(&data).position(|(x, y)| x != y);
                    return Err(format!("blk read-back differs at byte {at:?}"));
                }
                summary.push(format!(
                    "blk={}@{} fnv={:016x}",
                    data.len(),
                    a.blk_sector,
                    fnv1a(&data)
                ));
                stage("blk close", blk.close())?
            }
            other => {
                summary.push(format!("dev{dev}=type{other}"));
                drv
            }
        };
    }
    if !saw_rng {
        return Err(format!("discover: no rng among {devices:?}"));
    }
    if let Some(dev) = a.hotplug {
        drv = hot_added_rng(drv, dev, &devices, a.wait)?;
        summary.push(format!("hotplug=rng{dev}"));
    }
    let list: Vec<String> = devices.iter().map(u16::to_string).collect();
    let line = format!(
        "devid={} mode={mode} devices={} {} nonce={}",
        a.devid,
        list.join(","),
        summary.join(" "),
        a.nonce
    );
    drop(drv); // closes the frontend: Closing, wait for the backend, Closed
    Ok(line)
}

/// Wait for EVENT_DEVICE(`dev`, ADDED), then find `dev` in GET_DEVICES
/// and read from it as an rng.
fn hot_added_rng(
    mut drv: Driver,
    dev: u16,
    before: &[u16],
    wait: Duration,
) -> Result<Driver, String> {
    if before.contains(&dev) {
        return Err(format!("hotplug: device {dev} was there before the reload"));
    }
    // dom0 waits for this line before it edits the domain file.
    println!("domu: waiting for hot-added device {dev}");
    let added = |e: &Event| {
        matches!(e, Event::Device { device_number, state }
            if *device_number == dev && *state == device_bus_state::ADDED)
    };
    if stage("hotplug event", drv.wait_event_where(added, wait))?.is_none() {
        return Err(format!(
            "hotplug: no EVENT_DEVICE({dev}, ADDED) within {wait:?}"
        ));
    }
    let now = stage("hotplug discover", drv.discover())?;
    if !now.contains(&dev) {
        return Err(format!("hotplug: GET_DEVICES lists {now:?}, not {dev}"));
    }
    let info = stage("hotplug device info", drv.get_device_info(dev))?;
    if info.device_id != VIRTIO_ID_RNG {
        return Err(format!("hotplug: device {dev} is type {}", info.device_id));
    }
    let mut rng = stage("hotplug rng open", Rng::open(drv, dev))?;
    let bytes = stage("hotplug rng read", rng.read(RNG_BYTES))?;
    if bytes.len() != RNG_BYTES {
        return Err(format!("hotplug rng read: {} bytes", bytes.len()));
    }
    stage("hotplug rng close", rng.close())
}

/// dom0 side: does IMAGE hold the pattern for the nonce?
fn verify(image: &str, a: &Args) -> Result<String, String> {
    let mut f = stage("open image", std::fs::File::open(image))?;
    stage(
        "seek",
        f.seek(SeekFrom::Start(a.blk_sector * SECTOR)).map(|_| ()),
    )?;
    let mut got = vec![0u8; a.blk_bytes];
    stage("read image", f.read_exact(&mut got))?;
    let want = pattern(a.nonce, a.blk_bytes);
    if got != want {
        let at = got.iter().zip(&want).position(|(x, y)| x != y);
        let head = String::from_utf8_lossy(&got[..64]).replace('\n', "\\n");
        return Err(format!(
            "image {image} differs from the pattern at byte {at:?} (starts {head:?})"
        ));
    }
    Ok(format!(
        "image={image} blk={}@{} fnv={:016x} nonce={}",
        a.blk_bytes,
        a.blk_sector,
        fnv1a(&got),
        a.nonce
    ))
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("domu-frontend: {e}");
            return ExitCode::from(2);
        }
    };
    let (tag, result) = match &a.verify {
        Some(image) => ("VMSG-IMAGE", verify(image, &a)),
        None => ("VMSG-VERDICT", run(&a)),
    };
    match result {
        Ok(line) => {
            println!("{tag} PASS {line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{tag} FAIL {e}");
            ExitCode::FAILURE
        }
    }
}
