//! `vmsgd demo`: the quickstart. It writes a real config file and a sparse
//! disk image, starts the daemon from them on the local bus, and drives the
//! devices from a second process (`vmsgd demo-driver`) with the spec-derived
//! `vmsg-driver`: discovery, the init sequence, feature negotiation, I/O
//! (random bytes from the rngs; write, flush, read back and verify on the
//! disk; write and read the simulated EEPROM of the i2c adapter, read its
//! temperature sensor). Both sides print what they did.
//!
//! Part of the `vmsgd` binary, not of the vmsgd library: it is the one place
//! the daemon's package uses the driver side (`vmsg-driver`), so that the
//! quickstart is one command (docs/architecture.md, "Layering").

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::Args;
use vmsg_backend::instance::StopSignal;
use vmsg_driver::blk::{self, Blk, Segment};
use vmsg_driver::conformance::{SuiteConfig, run_suite_with};
use vmsg_driver::device::{FeatureSet, VirtioDevice};
use vmsg_driver::i2c::{self, I2c};
use vmsg_driver::rng::Rng;
use vmsg_driver::{Driver, DriverBus};

use vmsgd::config::{Config, log_level};
use vmsgd::daemon::Daemon;
use vmsgd::logging;

mod pattern;
use pattern::{DISK_SECTOR, ZEROED_SECTORS, disk_pattern};

/// Options of `vmsgd demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Random bytes to read from each rng.
    #[arg(long, default_value_t = 64)]
    pub bytes: usize,
    /// Daemon log level (error, warn, info, debug, trace).
    #[arg(long, default_value = "warn")]
    pub log_level: String,
    /// Size of the demo's disk image in MiB (sparse).
    #[arg(long, default_value_t = 64)]
    pub disk_mib: u64,
    /// Keep the demo's directory (config file, socket, disk image)
    /// afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// Options of the hidden `vmsgd demo-driver`.
#[derive(Debug, Args)]
pub struct DemoDriverArgs {
    /// The guest's local bus socket.
    #[arg(long)]
    pub socket: PathBuf,
    /// Random bytes to read from each rng.
    #[arg(long, default_value_t = 64)]
    pub bytes: usize,
    /// Bytes of pattern to write to each disk and read back.
    #[arg(long, default_value_t = DISK_BYTES)]
    pub disk_bytes: usize,
}

/// Bytes of pattern the demo driver writes to the disk by default.
const DISK_BYTES: usize = 1 << 20;
/// Where the simulated chips sit on the demo's i2c adapter.
const EEPROM_ADDR: u16 = 0x50;
const SENSOR_ADDR: u16 = 0x48;
/// The EEPROM page the demo writes, and what it writes there.
const EEPROM_AT: u8 = 0x10;
const EEPROM_TEXT: &[u8; 8] = b"vmsgd!\n\0";

/// The demo's configuration: one guest with a plain rng, a rate-limited one,
/// a two-queue disk on `demo.img` and an i2c adapter with a simulated
/// EEPROM (contents in `eeprom.bin`) and temperature sensor, on the local
/// bus.
fn demo_config(dir: &Path) -> String {
    format!(
        r#"# Written by `vmsgd demo`; the same format as /etc/vmsgd/*.toml.
[daemon]
log = "stderr"

[[guest]]
name = "demo"
bus = {{ kind = "local", socket = "{}" }}

[[guest.device]]
kind = "rng"
dev_num = 0

[[guest.device]]
kind = "rng"
dev_num = 1
rate_limit = 65536

[[guest.device]]
kind = "blk"
dev_num = 2
path = "{}"
serial = "vmsgd-demo-disk"
num_queues = 2

[[guest.device]]
kind = "i2c"
dev_num = 3

[[guest.device.chip]]
model = "24c02"
addr = {EEPROM_ADDR:#04x}
file = "{}"

[[guest.device.chip]]
model = "lm75"
addr = {SENSOR_ADDR:#04x}
temperature_mc = 21500
"#,
        dir.join("demo.sock").display(),
        dir.join("demo.img").display(),
        dir.join("eeprom.bin").display()
    )
}

/// Run the quickstart. Exit status: success only if the driver process
/// succeeded.
pub fn run(args: &DemoArgs) -> ExitCode {
    let level = log_level(&args.log_level).unwrap_or(log::LevelFilter::Info);
    if let Err(e) = logging::init(vmsgd::config::LogTarget::Stderr, level) {
        eprintln!("vmsgd demo: {e}");
        return ExitCode::FAILURE;
    }
    match run_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmsgd demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(args: &DemoArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("vmsgd-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("vmsgd.toml");
    std::fs::write(&config_path, demo_config(&dir))?;
    let image = dir.join("demo.img");
    std::fs::File::create(&image)?.set_len(args.disk_mib.max(1) << 20)?;
    println!("== vmsgd demo");
    println!("config {}:", config_path.display());
    for line in demo_config(&dir)
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        println!("  {line}");
    }
    let config = Config::load(&config_path)?;
    let stop = StopSignal::new()?;
    let daemon = Daemon::start(&config, stop)?;
    let socket = dir.join("demo.sock");
    println!(
        "disk image: {} ({} MiB, sparse)",
        image.display(),
        args.disk_mib.max(1)
    );
    println!("daemon: serving guest \"demo\" on {}", socket.display());
    let _ = std::io::stdout().flush();

    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let status = Command::new(exe)
        .arg("demo-driver")
        .arg("--socket")
        .arg(&socket)
        .arg("--bytes")
        .arg(args.bytes.to_string())
        .arg("--disk-bytes")
        .arg(DISK_BYTES.to_string())
        .status()?;
    let elapsed = started.elapsed();
    // The driver disconnected, so the guest's counters are final.
    let stats = daemon.stats("demo");
    daemon.shutdown()?;
    let on_image = check_image(&image);
    let on_eeprom = check_eeprom(&dir.join("eeprom.bin"));
    if let Some(stats) = stats {
        println!("== daemon side (guest \"demo\")");
        println!("frames received: {}", stats.frames);
        println!(
            "frames dropped: {} malformed ({} unknown id), {} unknown device, {} unexpected, {} refused by a device",
            stats.drops.malformed,
            stats.drops.unknown_msg_id,
            stats.drops.unknown_device,
            stats.drops.unexpected,
            stats.drops.device_dropped
        );
        for (dev, c) in &stats.devices {
            println!(
                "device {dev}: {} requests answered, {} notifications, {} EVENT_USED sent",
                c.requests, c.notifications, c.used_events
            );
        }
    }
    match &on_image {
        Ok(summary) => println!("== disk image after the run: {summary}"),
        Err(e) => println!("== disk image after the run: FAILED: {e}"),
    }
    match &on_eeprom {
        Ok(summary) => println!("== EEPROM backing file after the run: {summary}"),
        Err(e) => println!("== EEPROM backing file after the run: FAILED: {e}"),
    }
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        "== driver process {} after {:.0?}",
        if status.success() {
            "succeeded"
        } else {
            "FAILED"
        },
        elapsed
    );
    Ok(
        if status.success() && on_image.is_ok() && on_eeprom.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

/// The driver half of the demo, in its own process.
pub fn run_driver(args: &DemoDriverArgs) -> ExitCode {
    match drive(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo driver: {e}");
            ExitCode::FAILURE
        }
    }
}

fn connect(socket: &Path) -> Result<Box<dyn DriverBus>, Box<dyn std::error::Error>> {
    Ok(Box::new(vmsg_driver::local::LocalDriverBus::connect(
        socket,
        &vmsg_backend::local::LocalClientOptions::default(),
    )?))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn drive(args: &DemoDriverArgs) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "== driver side (pid {}, connected to {})",
        std::process::id(),
        args.socket.display()
    );
    let mut drv = Driver::new(connect(&args.socket)?)?;
    println!(
        "bus: max message {} bytes, transport features {:#x}",
        drv.max_msg_size(),
        drv.transport_features()
    );
    let t = Instant::now();
    drv.ping(0x5EED_F00D)?;
    println!("PING answered in {:.1?}", t.elapsed());
    let devices = drv.discover()?;
    println!("GET_DEVICES: {} device(s): {:?}", devices.len(), devices);
    for &dev_num in &devices {
        let probed = VirtioDevice::probe(drv, dev_num)?;
        let info = *probed.info();
        println!(
            "device {dev_num}: device_id {} vendor {:#010x} feature blocks {} config {} bytes, {} queue(s)",
            info.device_id,
            info.vendor_id,
            info.num_feature_blocks,
            info.config_size,
            info.max_virtqueues
        );
        drv = probed.into_driver();
        if info.device_id == blk::VIRTIO_ID_BLOCK {
            drv = disk(drv, dev_num, args.disk_bytes)?;
            continue;
        }
        if info.device_id == i2c::VIRTIO_ID_I2C_ADAPTER {
            drv = adapter(drv, dev_num)?;
            continue;
        }
        if info.device_id != vmsg_driver::rng::VIRTIO_ID_RNG {
            continue;
        }
        let mut rng = Rng::open(drv, dev_num)?;
        let negotiated = rng.device().negotiated().clone();
        println!(
            "  features offered {}, negotiated {}",
            features(rng.device().offered()),
            features(&negotiated)
        );
        let t = Instant::now();
        let bytes = rng.read(args.bytes)?;
        println!(
            "  read {} random bytes in {:.1?}: {}",
            bytes.len(),
            t.elapsed(),
            hex(&bytes)
        );
        drv = rng.close()?;
    }
    // One driver per guest bus at a time: hang up before the suite connects.
    drop(drv);
    // A quick subset of the conformance suite, a fresh connection per case.
    let dev = devices.first().copied().unwrap_or(0);
    let socket = args.socket.clone();
    let mut make = || connect(&socket).map_err(|e| e.to_string());
    let cfg = SuiteConfig {
        filter: "info.,status.,features.,vq.".into(),
        drop_window: Duration::from_millis(50),
        ..SuiteConfig::default()
    };
    let report = run_suite_with(&mut make, dev, &cfg);
    let summary = report.to_string();
    println!(
        "conformance subset on device {dev}: {}",
        summary.lines().last().unwrap_or_default()
    );
    if !report.success() {
        print!("{report}");
        return Err("conformance failures".into());
    }
    Ok(())
}

/// Read the pattern the driver left on the image file, from the host side.
fn check_image(image: &Path) -> Result<String, Box<dyn std::error::Error>> {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let file = std::fs::File::open(image)?;
    let meta = file.metadata()?;
    let zeroed = (ZEROED_SECTORS * blk::SECTOR_SIZE) as usize;
    let start = DISK_SECTOR * blk::SECTOR_SIZE;
    let mut got = vec![0u8; DISK_BYTES];
    file.read_exact_at(&mut got, start)?;
    let want = disk_pattern(DISK_SECTOR, DISK_BYTES);
    if got[..zeroed].iter().any(|&b| b != 0) {
        return Err(format!("bytes {start}.. are not the zeroes WRITE_ZEROES left").into());
    }
    if got[zeroed..] != want[zeroed..] {
        return Err("the pattern written through virtio-blk is not on the image".into());
    }
    Ok(format!(
        "{} MiB, {} KiB allocated; the pattern the driver wrote is there",
        meta.len() >> 20,
        (meta.blocks() * 512) >> 10
    ))
}

/// What the demo's EEPROM must hold after the run, read from the host side:
/// the demo's text at its page, erased (0xff) elsewhere.
fn check_eeprom(file: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let got = std::fs::read(file)?;
    let mut want = vec![0xffu8; 256];
    let at = usize::from(EEPROM_AT);
    want[at..at + EEPROM_TEXT.len()].copy_from_slice(EEPROM_TEXT);
    if got != want {
        return Err(format!("{} does not hold what the driver wrote", file.display()).into());
    }
    Ok(format!(
        "{} bytes; bytes {at:#04x}.. hold {:?} as written through virtio-i2c",
        got.len(),
        String::from_utf8_lossy(&EEPROM_TEXT[..6])
    ))
}

/// Drive a virtio-i2c adapter: find the chips, write a page of the
/// EEPROM and read it back in one combined transaction, read the
/// temperature, and show what an absent address answers.
fn adapter(drv: Driver, dev_num: u16) -> Result<Driver, Box<dyn std::error::Error>> {
    let mut bus = I2c::open(drv, dev_num)?;
    println!(
        "  features offered {}, negotiated {}",
        i2c_features(bus.device().offered()),
        i2c_features(&bus.negotiated().clone())
    );
    let t = Instant::now();
    let found = bus.scan(0x08..=0x77)?;
    println!(
        "  scan (zero-length reads of 0x08..=0x77) in {:.1?}: targets at {}",
        t.elapsed(),
        found
            .iter()
            .map(|a| format!("{a:#04x}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut page = vec![EEPROM_AT];
    page.extend_from_slice(EEPROM_TEXT);
    if !bus.write(EEPROM_ADDR, &page)? {
        return Err("the EEPROM refused a page write".into());
    }
    let back = bus
        .write_read(EEPROM_ADDR, &[EEPROM_AT], EEPROM_TEXT.len() as u32)?
        .ok_or("the EEPROM refused a read")?;
    if back != EEPROM_TEXT {
        return Err(format!("EEPROM read back {back:02x?}, wrote {EEPROM_TEXT:02x?}").into());
    }
    println!(
        "  24c02 at {EEPROM_ADDR:#04x}: wrote {:?} at {EEPROM_AT:#04x} (a page write), read it back with write-then-read (repeated START): identical",
        String::from_utf8_lossy(&EEPROM_TEXT[..6])
    );
    let t = bus
        .write_read(SENSOR_ADDR, &[0x00], 2)?
        .ok_or("the sensor refused a read")?;
    let reg = i16::from_be_bytes([t[0], t[1]]);
    println!(
        "  lm75 at {SENSOR_ADDR:#04x}: temperature register {:02x}{:02x} = {:.1} °C",
        t[0],
        t[1],
        f64::from(reg >> 7) / 2.0
    );
    let r = bus.transfer(&[
        i2c::Segment::write(0x33, &[0x00]),
        i2c::Segment::read(EEPROM_ADDR, 1),
    ])?;
    println!(
        "  a transaction starting at absent 0x33: statuses {:?} (the NACK fails the rest of it, unattempted)",
        r.iter()
            .map(|r| if r.ok() { "OK" } else { "ERR" })
            .collect::<Vec<_>>()
    );
    if r.iter().any(vmsg_driver::i2c::Reply::ok) {
        return Err("a transaction to an absent address succeeded".into());
    }
    Ok(bus.close()?)
}

fn i2c_features(f: &FeatureSet) -> String {
    let names: Vec<String> = f
        .bits()
        .iter()
        .map(|&b| match b {
            i2c::F_ZERO_LENGTH_REQUEST => "ZERO_LENGTH_REQUEST".into(),
            b => features(&FeatureSet::from_bits(&[b])),
        })
        .collect();
    names.join("|")
}

/// Drive a virtio-blk: identify it, write a pattern, flush, read it back
/// and verify, zero part of it and verify again.
fn disk(drv: Driver, dev_num: u16, len: usize) -> Result<Driver, Box<dyn std::error::Error>> {
    let mut disk = Blk::open(drv, dev_num)?;
    let negotiated = disk.negotiated().clone();
    println!(
        "  features offered {}, negotiated {}",
        blk_features(disk.device().offered()),
        blk_features(&negotiated)
    );
    let cfg = *disk.config();
    let lim = *disk.limits();
    println!(
        "  capacity {} sectors ({} MiB), blk_size {}, seg_max {}, size_max {}, {} queue(s) of {}, cache {}",
        lim.capacity,
        (lim.capacity * blk::SECTOR_SIZE) >> 20,
        lim.blk_size,
        lim.seg_max,
        lim.size_max,
        disk.num_queues(),
        disk.queue_size(),
        if cfg.writeback != 0 {
            "writeback"
        } else {
            "writethrough"
        }
    );
    println!("  GET_ID: {:?}", disk.serial()?);
    // A whole number of sectors, and within the disk.
    let cap_bytes = lim.capacity * blk::SECTOR_SIZE;
    let len = (len as u64).min(cap_bytes / 2) / blk::SECTOR_SIZE * blk::SECTOR_SIZE;
    let len = len as usize;
    let sector = DISK_SECTOR.min(lim.capacity / 2);
    let data = disk_pattern(sector, len);
    let t = Instant::now();
    disk.write(sector, &data)?;
    let wrote = t.elapsed();
    let t = Instant::now();
    disk.flush_all()?;
    let flushed = t.elapsed();
    let mut back = vec![0u8; len];
    let t = Instant::now();
    disk.read(sector, &mut back)?;
    let read = t.elapsed();
    if back != data {
        let at = back
            .iter()
            .zip(&data)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(format!("read-back differs from what was written at byte {at}").into());
    }
    println!(
        "  wrote {} KiB at sector {sector} in {wrote:.1?}, FLUSH on {} queue(s) in {flushed:.1?}, read back in {read:.1?}: identical",
        len >> 10,
        disk.num_queues()
    );
    let zeroed = (ZEROED_SECTORS * blk::SECTOR_SIZE) as usize;
    if lim.write_zeroes.is_some() && len >= 2 * zeroed {
        disk.write_zeroes(&[Segment::unmap(sector, ZEROED_SECTORS as u32)])?;
        disk.flush()?;
        let mut z = vec![0xAAu8; 2 * zeroed];
        disk.read(sector, &mut z)?;
        if z[..zeroed].iter().any(|&b| b != 0) || z[zeroed..] != data[zeroed..2 * zeroed] {
            return Err("WRITE_ZEROES did not zero exactly its range".into());
        }
        println!(
            "  WRITE_ZEROES (unmap) of sectors {sector}..{}, FLUSH: they read back as zeroes, the sectors after them intact",
            sector + ZEROED_SECTORS
        );
    }
    Ok(disk.close()?)
}

fn blk_features(f: &FeatureSet) -> String {
    let names: Vec<String> = f
        .bits()
        .iter()
        .map(|&b| match b {
            blk::feature::SIZE_MAX => "SIZE_MAX".into(),
            blk::feature::SEG_MAX => "SEG_MAX".into(),
            blk::feature::GEOMETRY => "GEOMETRY".into(),
            blk::feature::RO => "RO".into(),
            blk::feature::BLK_SIZE => "BLK_SIZE".into(),
            blk::feature::FLUSH => "FLUSH".into(),
            blk::feature::TOPOLOGY => "TOPOLOGY".into(),
            blk::feature::CONFIG_WCE => "CONFIG_WCE".into(),
            blk::feature::MQ => "MQ".into(),
            blk::feature::DISCARD => "DISCARD".into(),
            blk::feature::WRITE_ZEROES => "WRITE_ZEROES".into(),
            b => features(&FeatureSet::from_bits(&[b])),
        })
        .collect();
    names.join("|")
}

fn features(f: &FeatureSet) -> String {
    let names: Vec<String> = f
        .bits()
        .iter()
        .map(|&b| match b {
            28 => "INDIRECT_DESC".into(),
            29 => "EVENT_IDX".into(),
            32 => "VERSION_1".into(),
            33 => "ACCESS_PLATFORM".into(),
            40 => "RING_RESET".into(),
            b => format!("bit{b}"),
        })
        .collect();
    names.join("|")
}
