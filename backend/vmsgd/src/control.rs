//! The control socket (`[daemon] control_socket`): a read-only view of a
//! running daemon for `vmsgctl status` and `vmsgctl stats`.
//!
//! Protocol: a client connects, sends one line (`report`, at most
//! [`MAX_REQUEST`] bytes, within [`REQUEST_TIMEOUT`]) and reads one JSON
//! document (every guest: connection, devices, negotiated features, queue
//! states and every counter), then the daemon closes the connection. The
//! socket is created with mode 0600 before the privilege drop: root (and
//! the daemon's own user) only. Nothing here changes the daemon.
//!
//! The client half ([`query`]) and the formats `vmsgctl` prints (human
//! status and stats, Prometheus text) live here too, beside the document
//! they read.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, warn};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde_json::{Value, json};
use thiserror::Error;
use vmsg_backend::instance::{Inspector, InstanceReport, StopSignal};

/// Longest request line.
pub const MAX_REQUEST: usize = 64;
/// How long a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one guest may take to answer (it finishes at most one bounded
/// slice of work first).
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Errors of the control socket, both sides.
#[derive(Debug, Error)]
pub enum ControlError {
    /// An OS call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon's answer is not the document expected.
    #[error("{path}: malformed answer: {why}")]
    Malformed {
        /// The socket.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The guests a control socket reports on; shared, so that a process can
/// bind the socket before its guests exist (a Xen domain's backend binds
/// it before it confines itself, and creates its instance later).
pub type GuestSet = std::sync::Arc<std::sync::Mutex<Vec<(String, Inspector)>>>;

/// The control socket's server: a thread answering requests until stopped.
#[derive(Debug)]
pub struct ControlServer {
    thread: Option<JoinHandle<()>>,
    stop: StopSignal,
    path: PathBuf,
}

impl ControlServer {
    /// Bind `path` (mode 0600; a stale socket is replaced) and answer
    /// requests about `guests` on a thread of its own until `stop` fires.
    pub fn start(path: &Path, guests: GuestSet, stop: StopSignal) -> Result<Self, ControlError> {
        let io = |what| {
            move |source| ControlError::Io {
                what,
                path: path.to_path_buf(),
                source,
            }
        };
        if let Ok(md) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if md.file_type().is_socket() && UnixStream::connect(path).is_err() {
                std::fs::remove_file(path).map_err(io("removing the stale socket"))?;
            }
        }
        let listener = UnixListener::bind(path).map_err(io("binding"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io("chmod"))?;
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || serve(&listener, &guests, &thread_stop))
            .map_err(io("spawning the control thread"))?;
        Ok(Self {
            thread: Some(thread),
            stop,
            path: path.to_path_buf(),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: &UnixListener, guests: &GuestSet, stop: &StopSignal) {
    loop {
        // SAFETY: the stop signal's eventfd outlives this call.
        let stop_fd = unsafe { BorrowedFd::borrow_raw(stop.as_raw_fd()) };
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop_fd, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => {
                warn!("control socket: poll: {e}");
                return;
            }
        }
        if stop.is_triggered() {
            return;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let list = guests.lock().map(|g| g.clone()).unwrap_or_default();
                if let Err(e) = answer(stream, &list) {
                    debug!("control socket: {e}");
                }
            }
            Err(e) => debug!("control socket: accept: {e}"),
        }
    }
}

/// Read one request and answer it.
fn answer(stream: UnixStream, guests: &[(String, Inspector)]) -> std::io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST as u64)).read_line(&mut line)?;
    let reply = match line.trim() {
        "report" | "status" | "stats" => {
            let reports: Vec<(String, Option<InstanceReport>)> = guests
                .iter()
                .map(|(name, i)| (name.clone(), i.report(GUEST_TIMEOUT)))
                .collect();
            document(&reports)
        }
        other => json!({ "error": format!("unknown request {other:?}; send \"report\"") }),
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    (&stream).write_all(&out)
}

fn pairs(list: &[(&'static str, u64)]) -> Value {
    Value::Object(
        list.iter()
            .map(|(k, v)| ((*k).to_string(), json!(v)))
            .collect(),
    )
}

/// The JSON document of a report.
pub fn document(reports: &[(String, Option<InstanceReport>)]) -> Value {
    let guests: Vec<Value> = reports
        .iter()
        .map(|(name, r)| match r {
            None => json!({ "name": name, "responding": false }),
            Some(r) => {
                let d = &r.drops;
                json!({
                    "name": r.name,
                    "responding": true,
                    "connected": r.connected,
                    "profile": format!("{:?}", r.profile).to_lowercase(),
                    "max_msg_size": r.max_msg_size,
                    "connections": r.connections,
                    "frames": r.frames,
                    "drops": {
                        "malformed": d.malformed,
                        "unknown_msg_id": d.unknown_msg_id,
                        "unknown_device": d.unknown_device,
                        "unexpected": d.unexpected,
                        "device_dropped": d.device_dropped,
                        "bus_unhandled": d.bus_unhandled,
                    },
                    "bus": {
                        "frames_in": r.bus.frames_in,
                        "frames_out": r.bus.frames_out,
                        "doorbells_in": r.bus.doorbells_in,
                        "bad_slots": r.bus.bad_slots,
                        "extra": pairs(&r.bus_extra),
                    },
                    "log_lines_suppressed": r.log_suppressed,
                    "devices": r.devices.iter().map(|dev| json!({
                        "dev_num": dev.dev_num,
                        "name": dev.name,
                        "device_type": dev.device_type,
                        "status": dev.status,
                        "features_offered": dev.offered,
                        "features_negotiated": dev.negotiated,
                        "queues": dev.queues.iter().map(|q| json!({
                            "index": q.index,
                            "max_size": q.max_size,
                            "size": q.size,
                            "enabled": q.enabled,
                            "live": q.live,
                            "next_avail": q.next_avail,
                            "next_used": q.next_used,
                        })).collect::<Vec<_>>(),
                        "counters": {
                            "requests": dev.counters.requests,
                            "dropped": dev.counters.dropped,
                            "notifications": dev.counters.notifications,
                            "used_events": dev.counters.used_events,
                            "needs_reset": dev.counters.needs_reset,
                        },
                        "model": pairs(&dev.model),
                    })).collect::<Vec<_>>(),
                })
            }
        })
        .collect();
    json!({ "vmsgd": env!("CARGO_PKG_VERSION"), "guests": guests })
}

// ------------------------------------------------------------- client --

/// Ask the daemon behind `path` for its report.
pub fn query(path: &Path) -> Result<Value, ControlError> {
    let io = |what| {
        move |source| ControlError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut stream = UnixStream::connect(path).map_err(io("connecting to"))?;
    let timeout = Some(GUEST_TIMEOUT * 30);
    stream.set_read_timeout(timeout).map_err(io("setting up"))?;
    stream.write_all(b"report\n").map_err(io("writing to"))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(io("reading from"))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| ControlError::Malformed {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    if !doc.get("guests").is_some_and(Value::is_array) {
        return Err(ControlError::Malformed {
            path: path.to_path_buf(),
            why: doc
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no guests list")
                .to_string(),
        });
    }
    Ok(doc)
}

fn guests(doc: &Value) -> &[Value] {
    doc.get("guests")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn u(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("?")
}

/// Status bits in words.
fn status_words(status: u64) -> String {
    let names = [
        (1, "ACKNOWLEDGE"),
        (2, "DRIVER"),
        (8, "FEATURES_OK"),
        (4, "DRIVER_OK"),
        (64, "DEVICE_NEEDS_RESET"),
        (128, "FAILED"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| status & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        "reset".into()
    } else {
        set.join("|")
    }
}

/// `vmsgctl status` for people.
pub fn format_status(doc: &Value) -> String {
    let mut out = String::new();
    for g in guests(doc) {
        let name = s(g, "name");
        if g.get("responding") == Some(&Value::Bool(false)) {
            out.push_str(&format!("guest {name}: not responding\n"));
            continue;
        }
        let connected = g.get("connected").and_then(Value::as_bool).unwrap_or(false);
        out.push_str(&format!(
            "guest {name}: {} ({} profile{}), {} connection(s) so far\n",
            if connected {
                "connected"
            } else {
                "not connected"
            },
            s(g, "profile"),
            if connected {
                format!(", max message {} bytes", u(g, "max_msg_size"))
            } else {
                String::new()
            },
            u(g, "connections"),
        ));
        for d in g
            .get("devices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.push_str(&format!(
                "  device {} {} (type {}): status {} ({}), features offered {:#x}, negotiated {:#x}\n",
                u(d, "dev_num"),
                s(d, "name"),
                u(d, "device_type"),
                u(d, "status"),
                status_words(u(d, "status")),
                u(d, "features_offered"),
                u(d, "features_negotiated"),
            ));
            for q in d
                .get("queues")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let state = match (
                    q.get("live").and_then(Value::as_bool).unwrap_or(false),
                    q.get("enabled").and_then(Value::as_bool).unwrap_or(false),
                ) {
                    (true, _) => "live",
                    (false, true) => "enabled",
                    (false, false) if u(q, "size") > 0 => "configured",
                    _ => "idle",
                };
                out.push_str(&format!(
                    "    queue {}: {state}, size {}/{}, next avail {}, next used {}\n",
                    u(q, "index"),
                    u(q, "size"),
                    u(q, "max_size"),
                    u(q, "next_avail"),
                    u(q, "next_used"),
                ));
            }
        }
    }
    out
}

/// One sample: metric name, labels, value, help text.
type Sample = (String, Vec<(String, String)>, u64, &'static str);

/// Every counter, the one list the human and the Prometheus forms are made
/// from.
fn counters(doc: &Value) -> Vec<Sample> {
    let mut out = Vec::new();
    for g in guests(doc) {
        let guest = s(g, "name").to_string();
        let label = |extra: &[(&str, String)]| {
            let mut l = vec![("guest".to_string(), guest.clone())];
            l.extend(extra.iter().map(|(k, v)| ((*k).to_string(), v.clone())));
            l
        };
        if g.get("responding") == Some(&Value::Bool(false)) {
            out.push((
                "vmsgd_guest_responding".into(),
                label(&[]),
                0,
                "Whether the guest's thread answered.",
            ));
            continue;
        }
        out.push((
            "vmsgd_guest_responding".into(),
            label(&[]),
            1,
            "Whether the guest's thread answered.",
        ));
        out.push((
            "vmsgd_guest_connected".into(),
            label(&[]),
            u64::from(g.get("connected").and_then(Value::as_bool).unwrap_or(false)),
            "Whether a driver is connected.",
        ));
        out.push((
            "vmsgd_connections_total".into(),
            label(&[]),
            u(g, "connections"),
            "Connections served.",
        ));
        out.push((
            "vmsgd_frames_total".into(),
            label(&[]),
            u(g, "frames"),
            "Frames received from the guest.",
        ));
        if let Some(Value::Object(drops)) = g.get("drops") {
            for (reason, v) in drops {
                out.push((
                    "vmsgd_drops_total".into(),
                    label(&[("reason", reason.clone())]),
                    v.as_u64().unwrap_or(0),
                    "Frames dropped, by reason.",
                ));
            }
        }
        out.push((
            "vmsgd_log_lines_suppressed_total".into(),
            label(&[]),
            u(g, "log_lines_suppressed"),
            "Log lines of the guest suppressed by its rate limit.",
        ));
        if let Some(bus) = g.get("bus") {
            for key in ["frames_in", "frames_out", "doorbells_in", "bad_slots"] {
                out.push((
                    format!("vmsgd_bus_{key}_total"),
                    label(&[]),
                    u(bus, key),
                    "Bus counters of the current or last connection.",
                ));
            }
            if let Some(Value::Object(extra)) = bus.get("extra") {
                for (name, v) in extra {
                    out.push((
                        "vmsgd_bus_counter_total".into(),
                        label(&[("counter", name.clone())]),
                        v.as_u64().unwrap_or(0),
                        "Counters of this kind of bus (grant cache hits and maps, ...).",
                    ));
                }
            }
        }
        for d in g
            .get("devices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let dev = [
                ("dev_num", u(d, "dev_num").to_string()),
                ("device", s(d, "name").to_string()),
            ];
            out.push((
                "vmsgd_device_status".into(),
                label(&dev),
                u(d, "status"),
                "Device status bits.",
            ));
            if let Some(Value::Object(c)) = d.get("counters") {
                for (name, v) in c {
                    out.push((
                        format!("vmsgd_device_{name}_total"),
                        label(&dev),
                        v.as_u64().unwrap_or(0),
                        "Per-device counters of the device host.",
                    ));
                }
            }
            if let Some(Value::Object(m)) = d.get("model") {
                for (name, v) in m {
                    let mut l = label(&dev);
                    l.push(("counter".into(), name.clone()));
                    let (metric, help) = if name.ends_with("_now") {
                        ("vmsgd_device_gauge", "Device model gauges.")
                    } else {
                        (
                            "vmsgd_device_counter_total",
                            "Device model counters (bytes, requests by kind, errors).",
                        )
                    };
                    out.push((metric.into(), l, v.as_u64().unwrap_or(0), help));
                }
            }
        }
    }
    out
}

/// `vmsgctl stats` for people: one counter a line.
pub fn format_stats(doc: &Value) -> String {
    counters(doc)
        .into_iter()
        .map(|(metric, labels, value, _)| {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{metric} {} {value}\n", l.join(" "))
        })
        .collect()
}

/// Prometheus text exposition format (node-exporter's textfile collector,
/// or a scrape).
pub fn format_prometheus(doc: &Value) -> String {
    let mut out = String::new();
    let mut described = std::collections::BTreeSet::new();
    let mut rows = counters(doc);
    // Samples of a metric must be together, after its HELP and TYPE.
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    for (metric, labels, value, help) in rows {
        if described.insert(metric.clone()) {
            let kind = if metric.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            out.push_str(&format!("# HELP {metric} {help}\n# TYPE {metric} {kind}\n"));
        }
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| {
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                format!("{k}=\"{v}\"")
            })
            .collect();
        out.push_str(&format!("{metric}{{{}}} {value}\n", l.join(",")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        json!({
            "vmsgd": "0.1.0",
            "guests": [
                { "name": "web", "responding": true, "connected": true, "profile": "v2",
                  "max_msg_size": 264, "connections": 3, "frames": 42,
                  "drops": { "malformed": 2, "unknown_device": 1 },
                  "bus": { "frames_in": 40, "frames_out": 39, "doorbells_in": 7, "bad_slots": 0,
                           "extra": { "grant_cache_hits": 5 } },
                  "log_lines_suppressed": 9,
                  "devices": [ { "dev_num": 0, "name": "web/rng0", "device_type": 4, "status": 15,
                                 "features_offered": 1, "features_negotiated": 1,
                                 "queues": [ { "index": 0, "max_size": 256, "size": 64, "enabled": true,
                                               "live": true, "next_avail": 3, "next_used": 3 } ],
                                 "counters": { "requests": 10, "notifications": 3 },
                                 "model": { "bytes_served": 4096, "in_flight_now": 2 } } ] },
                { "name": "db \"x\"", "responding": false }
            ]
        })
    }

    #[test]
    fn prometheus_text_is_grouped_typed_and_escaped() {
        let text = format_prometheus(&sample());
        assert!(
            text.contains(
                "# TYPE vmsgd_frames_total counter\nvmsgd_frames_total{guest=\"web\"} 42\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("vmsgd_drops_total{guest=\"web\",reason=\"malformed\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("vmsgd_bus_counter_total{guest=\"web\",counter=\"grant_cache_hits\"} 5"),
            "{text}"
        );
        assert!(text.contains("vmsgd_device_counter_total{guest=\"web\",dev_num=\"0\",device=\"web/rng0\",counter=\"bytes_served\"} 4096"), "{text}");
        assert!(text.contains("# TYPE vmsgd_device_gauge gauge"), "{text}");
        assert!(
            text.contains("vmsgd_guest_responding{guest=\"db \\\"x\\\"\"} 0"),
            "{text}"
        );
        // Each metric's HELP/TYPE once, before its samples.
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let metric = line.split_whitespace().nth(2).expect("name");
            assert_eq!(
                text.matches(&format!("# TYPE {metric} ")).count(),
                1,
                "{metric}"
            );
        }
    }

    #[test]
    fn status_names_the_state_in_words() {
        let text = format_status(&sample());
        assert!(
            text.contains("guest web: connected (v2 profile, max message 264 bytes)"),
            "{text}"
        );
        assert!(
            text.contains("status 15 (ACKNOWLEDGE|DRIVER|FEATURES_OK|DRIVER_OK)"),
            "{text}"
        );
        assert!(
            text.contains("queue 0: live, size 64/256, next avail 3, next used 3"),
            "{text}"
        );
        assert!(text.contains("not responding"), "{text}");
        let stats = format_stats(&sample());
        assert!(
            stats.contains("vmsgd_device_requests_total guest=web dev_num=0 device=web/rng0 10"),
            "{stats}"
        );
    }
}
