//! Logging and metrics. Logs are structured (`tracing`), pretty for people or JSON for
//! collectors; metrics are counters and histograms rendered for Prometheus.
//!
//! Invariant: nothing here or anywhere else logs request headers, so an `Authorization`
//! header, a cookie or a password in a body can never reach the log.

pub mod metrics;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global subscriber. `RUST_LOG`, when set, wins over the configured level so
/// an operator can turn up one module without editing the file.
pub fn init(config: &TelemetryConfig) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives),
        _ => EnvFilter::try_new(&config.log_level),
    }
    .map_err(|error| format!("telemetry.log_level: {error}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    result.map_err(|error| format!("cannot install the log subscriber: {error}"))
}
