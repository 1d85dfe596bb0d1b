//! [`DriverBus`] over vmsgd's local bus client (Unix socket + memfd guest RAM
//! + message rings + eventfds). Plumbing only: frames pass through unchanged.
//!
//! The wire profile is the hello's profile id (`LocalClientOptions::profile`,
//! docs/local-bus.md): [`profile_id`] maps a [`Profile`] to it; a daemon
//! configured for another profile refuses the handshake.
//!
//! The client's `polling` option is the ring doorbell mode of the local bus,
//! not the §3.16 agreement to drop EVENT_USED, so [`DriverBus::polling_only`]
//! is false unless set with [`LocalDriverBus::set_polling_only`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;
use vmsg_backend::local::{LocalBusClient, LocalBusError, LocalClientOptions, RejectCode};

/// How long [`connector`] retries while the daemon still serves the
/// previous connection (it accepts one driver per socket).
pub const BUSY_RETRY: Duration = Duration::from_secs(3);

use crate::bus::{BusIoError, DriverBus};
use crate::wire::Profile;

/// The local-bus hello's profile id of `p` (0 = v2, 1 = v1, 2 = rfc2).
pub fn profile_id(p: Profile) -> u8 {
    match p {
        Profile::V2 => 0,
        Profile::V1 => 1,
        Profile::Rfc2 => 2,
    }
}

/// The profile of a local-bus hello profile id.
pub fn profile_from_id(id: u8) -> Option<Profile> {
    match id {
        0 => Some(Profile::V2),
        1 => Some(Profile::V1),
        2 => Some(Profile::Rfc2),
        _ => None,
    }
}

/// Client options for `profile`: the default geometry with the profile id set.
pub fn options_for(profile: Profile) -> LocalClientOptions {
    LocalClientOptions {
        profile: profile_id(profile),
        ..LocalClientOptions::default()
    }
}

fn bus_err(e: LocalBusError) -> BusIoError {
    BusIoError::Backend(Box::new(e))
}

/// A local-bus connection usable as a [`DriverBus`].
#[derive(Debug)]
pub struct LocalDriverBus {
    client: LocalBusClient,
    profile: Profile,
    polling_only: bool,
}

impl LocalDriverBus {
    /// Connects to the guest socket at `path`.
    pub fn connect(path: &Path, opts: &LocalClientOptions) -> Result<Self, BusIoError> {
        let profile = opts_profile(opts)?;
        let client = LocalBusClient::connect(path, opts).map_err(bus_err)?;
        Ok(Self::new(client).with_profile(profile))
    }

    /// Connects, retrying for up to `patience` while the daemon answers
    /// "busy" (the previous connection's EOF may not be processed yet).
    pub fn connect_retrying(
        path: &Path,
        opts: &LocalClientOptions,
        patience: Duration,
    ) -> Result<Self, BusIoError> {
        let profile = opts_profile(opts)?;
        let deadline = Instant::now() + patience;
        loop {
            match LocalBusClient::connect(path, opts) {
                Ok(c) => return Ok(Self::new(c).with_profile(profile)),
                Err(LocalBusError::Rejected {
                    code: RejectCode::Busy,
                    ..
                }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(bus_err(e)),
            }
        }
    }

    /// Wraps an existing client (connected with profile v2; see
    /// [`LocalDriverBus::with_profile`] otherwise).
    pub fn new(client: LocalBusClient) -> Self {
        LocalDriverBus {
            client,
            profile: Profile::V2,
            polling_only: false,
        }
    }

    /// Declares the profile the client's hello asked for.
    pub fn with_profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// Declares that used notifications were agreed to be polling-only (§3.16).
    pub fn set_polling_only(&mut self, polling_only: bool) {
        self.polling_only = polling_only;
    }

    /// The underlying client.
    pub fn client(&self) -> &LocalBusClient {
        &self.client
    }
}

fn opts_profile(opts: &LocalClientOptions) -> Result<Profile, BusIoError> {
    profile_from_id(opts.profile).ok_or_else(|| {
        BusIoError::Refused(format!("unknown local-bus profile id {}", opts.profile))
    })
}

impl DriverBus for LocalDriverBus {
    fn max_msg_size(&self) -> usize {
        self.client.max_msg_size()
    }

    fn profile(&self) -> Profile {
        self.profile
    }

    fn transport_features(&self) -> u32 {
        self.client.transport_features()
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), BusIoError> {
        self.client.send(frame).map_err(bus_err)
    }

    fn recv(
        &mut self,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<Option<usize>, BusIoError> {
        self.client.recv(buf, timeout).map_err(bus_err)
    }

    fn memory(&self) -> &Arc<GuestMemoryMmap<()>> {
        self.client.memory()
    }

    fn polling_only(&self) -> bool {
        self.polling_only
    }
}

/// A `make_bus` for [`crate::conformance::run_suite`]: a fresh local-bus
/// connection to `path` on every call (retrying while the daemon is busy).
pub fn connector(
    path: impl Into<PathBuf>,
    opts: LocalClientOptions,
) -> impl FnMut() -> Result<Box<dyn DriverBus>, BusIoError> {
    let path = path.into();
    move || {
        Ok(
            Box::new(LocalDriverBus::connect_retrying(&path, &opts, BUSY_RETRY)?)
                as Box<dyn DriverBus>,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_to_missing_socket_fails_cleanly() {
        let path =
            std::env::temp_dir().join(format!("vmsg-driver-missing-{}.sock", std::process::id()));
        let e =
            LocalDriverBus::connect(&path, &LocalClientOptions::default()).expect_err("no daemon");
        assert!(matches!(e, BusIoError::Backend(_)), "{e}");
        let mut make = connector(path, LocalClientOptions::default());
        assert!(make().is_err());
    }
}
