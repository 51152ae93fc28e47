//! Logging and metrics. Logs are structured (`tracing`), pretty for people or JSON for
//! collectors; metrics are counters and histograms rendered for Prometheus.
//!
//! Invariant: nothing here or anywhere else logs request headers, so an `Authorization`
//! header, a cookie or a password in a body can never reach the log.

pub mod exposition;
pub mod metrics;
pub mod process;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryConfig};

/// Libraries whose debug output can carry secrets: SQL parameters (tokio_postgres), SMTP
/// conversations with message bodies (lettre), frames and headers (hyper, h2, rustls).
/// They stay at `info` unless a directive names them explicitly.
const QUIET_LIBRARIES: [&str; 6] = [
    "tokio_postgres",
    "lettre",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
];

/// Installs the global subscriber. `RUST_LOG`, when set, wins over the configured level so
/// an operator can turn up one module without editing the file.
pub fn init(config: &TelemetryConfig) -> Result<(), String> {
    let directives = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => directives,
        _ => config.log_level.clone(),
    };
    let filter = EnvFilter::try_new(with_quiet_libraries(&directives))
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

/// Appends `library=info` for each quiet library the directives do not mention, when they
/// ask for debug or trace at all (at info and above the libraries follow the directives).
fn with_quiet_libraries(directives: &str) -> String {
    let mut full = directives.to_string();
    let verbose = directives.contains("debug") || directives.contains("trace");
    if !verbose {
        return full;
    }
    for library in QUIET_LIBRARIES {
        if !directives.contains(library) {
            if !full.is_empty() {
                full.push(',');
            }
            full.push_str(library);
            full.push_str("=info");
        }
    }
    full
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries_that_could_log_secrets_stay_at_info_unless_named() {
        let full = with_quiet_libraries("debug");
        assert!(full.starts_with("debug,"));
        for library in QUIET_LIBRARIES {
            assert!(full.contains(&format!("{library}=info")), "{full}");
        }
        let named = with_quiet_libraries("debug,h2=trace");
        assert!(
            named.contains("h2=trace") && !named.contains("h2=info"),
            "{named}"
        );
    }
}
