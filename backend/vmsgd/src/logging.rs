//! Log setup: stderr (env_logger) or the local syslog daemon.

use thiserror::Error;

use crate::config::LogTarget;

/// Errors setting up logging.
#[derive(Debug, Error)]
pub enum LoggingError {
    /// The syslog socket could not be reached.
    #[error("cannot connect to syslog: {0}")]
    Syslog(String),
    /// A logger was already installed.
    #[error("a logger is already installed")]
    AlreadySet,
}

/// Install the process-wide logger. `RUST_LOG`, when set, overrides `level`
/// for stderr logging.
pub fn init(target: LogTarget, level: log::LevelFilter) -> Result<(), LoggingError> {
    match target {
        LogTarget::Stderr => env_logger::Builder::new()
            .filter_level(level)
            .parse_env("RUST_LOG")
            .format_timestamp_micros()
            .try_init()
            .map_err(|_| LoggingError::AlreadySet),
        LogTarget::Syslog => syslog::init_unix(syslog::Facility::LOG_DAEMON, level)
            .map_err(|e| LoggingError::Syslog(e.to_string())),
    }
}
