//! Configuration: this module owns `gateway.yaml`, from text to a checked
//! [`Config`]; [`Config::load`] is its only I/O.
//!
//! Loading happens in three steps, each with its own kind of error:
//!
//! 1. The file is deserialized straight into [`Config`], so mistakes in it
//!    are reported as `file:line:column: message`. Every field has a default,
//!    so an empty file is a complete configuration.
//! 2. If any `PORTCULLIS_*` variable is set, the file is re-read as a YAML
//!    tree, the variables are written into it
//!    (`PORTCULLIS_<SECTION>__<KEY>[__<SUBKEY>...]`, segments lower-cased, a
//!    numeric segment indexes a list) and the tree is deserialized again.
//!    Errors then name the variable rather than a line of the file.
//! 3. [`Config::validate`] checks what types cannot express (URL shapes,
//!    ranges, cross-field rules) and names the offending key by its dotted
//!    path, e.g. `upstreams[0].url`.
//!
//! The submodules split that work:
//!
//! - `schema`: the serde structs of every section and their defaults.
//! - [`units`]: durations and byte sizes as the files write them (pure; the
//!   policy file's durations are read by the same parser).
//! - `env`: the `PORTCULLIS_*` overrides and who is blamed for an error.
//! - `validate`: the semantic rules, and the typed values they produce.

mod env;
mod schema;
pub mod units;
mod validate;

use std::path::Path;

use http::Uri;
use serde::Deserialize;

pub use env::{ENV_PREFIX, RESERVED_ENV_VARS};
pub use schema::{
    parse_ip_net, Argon2Config, CookieConfig, CorsConfig, DatabaseConfig, FailMode, HeadersConfig,
    IdentityConfig, KeyAlgorithm, LockoutConfig, LockoutKey, LogFormat, PagesConfig,
    PasswordConfig, PasswordPreset, PolicyConfig, RateLimit, RateLimitsConfig, RedisConfig, Secret,
    ServerConfig, SigningKeyConfig, SmtpConfig, SmtpSecurity, TelemetryConfig, TlsConfig,
    TokensConfig, UpstreamConfig,
};
pub use units::{duration, size};
pub use validate::{normalize_origin, CorsPolicy, ValidationError};

use env::{apply_overrides, blame_for, collect_overrides, process_env};

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a configuration could not be loaded. Every variant displays as one
/// line that starts with where the problem is (file or environment variable).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {error}")]
    Read { file: String, error: std::io::Error },

    /// The file is not valid YAML or does not match the schema.
    #[error("{file}{}: {message}", location_suffix(*.location))]
    Parse {
        file: String,
        /// 1-based line and column, when the YAML library knows them.
        location: Option<Location>,
        message: String,
    },

    /// An environment override could not be applied or has a bad value.
    #[error("environment {variable}: {message}")]
    Env { variable: String, message: String },

    /// The configuration is well-formed but breaks a semantic rule.
    /// `origin` is the file name, or `environment VAR` when the offending key
    /// was set from the environment.
    #[error("{origin}: {error}")]
    Invalid {
        origin: String,
        error: ValidationError,
    },
}

/// A 1-based position in the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

fn location_suffix(location: Option<Location>) -> String {
    location
        .map(|l| format!(":{}:{}", l.line, l.column))
        .unwrap_or_default()
}

/// Error messages can quote user input; keep them on one line so log lines
/// and the CLI's single error line stay intact.
fn one_line(text: &str) -> String {
    text.replace('\r', "\\r").replace('\n', "\\n")
}

/// serde_norway appends " at line L column C" to its messages; we print the
/// location in `file:line:col` form instead, so drop it from the message.
fn yaml_message(error: &serde_norway::Error) -> String {
    let text = error.to_string();
    let text = match error.location() {
        Some(loc) => text.replacen(
            &format!(" at line {} column {}", loc.line(), loc.column()),
            "",
            1,
        ),
        None => text,
    };
    one_line(&text)
}

fn file_error(file: &str, error: &serde_norway::Error) -> ConfigError {
    ConfigError::Parse {
        file: file.to_owned(),
        location: error.location().map(|l| Location {
            line: l.line(),
            column: l.column(),
        }),
        message: yaml_message(error),
    }
}

/// The whole file: one field per top-level section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub headers: HeadersConfig,
    pub cors: CorsConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub smtp: SmtpConfig,
    pub tokens: TokensConfig,
    pub identity: IdentityConfig,
    pub lockout: LockoutConfig,
    pub password: PasswordConfig,
    pub rate_limits: RateLimitsConfig,
    pub policy: PolicyConfig,
    pub telemetry: TelemetryConfig,
    pub pages: PagesConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            upstreams: vec![UpstreamConfig::new(
                "app",
                Uri::from_static("http://127.0.0.1:3000"),
            )],
            headers: HeadersConfig::default(),
            cors: CorsConfig::default(),
            database: DatabaseConfig::default(),
            redis: RedisConfig::default(),
            smtp: SmtpConfig::default(),
            tokens: TokensConfig::default(),
            identity: IdentityConfig::default(),
            lockout: LockoutConfig::default(),
            password: PasswordConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            policy: PolicyConfig::default(),
            telemetry: TelemetryConfig::default(),
            pages: PagesConfig::default(),
        }
    }
}

impl Config {
    /// The realm the gateway's `WWW-Authenticate` names: `tokens.realm`, else the host of
    /// `server.public_url`, else `portcullis`.
    pub fn realm(&self) -> String {
        if let Some(realm) = &self.tokens.realm {
            return realm.clone();
        }
        self.server
            .public_url
            .parse::<Uri>()
            .ok()
            .and_then(|uri| uri.host().map(str::to_ascii_lowercase))
            .filter(|host| !host.is_empty())
            .unwrap_or_else(|| "portcullis".to_owned())
    }

    /// Reads the file and the process environment (its `PORTCULLIS_*`
    /// variables), the only I/O.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            file: file.clone(),
            error,
        })?;
        Self::from_yaml_str(&text, &file, process_env()?)
    }

    /// `source` names the file in messages; `env` is the set of
    /// (name, value) pairs to consider.
    pub fn from_yaml_str(
        text: &str,
        source: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        // Deserializing the text itself (not a Value) is what gives errors
        // their line and column.
        let from_file: Config = serde_norway::from_str(text).map_err(|e| file_error(source, &e))?;
        let overrides = collect_overrides(env)?;
        let config = if overrides.is_empty() {
            from_file
        } else {
            apply_overrides(text, source, &overrides)?
        };
        config.validate().map_err(|error| ConfigError::Invalid {
            origin: blame_for(&error.key, &overrides).map_or_else(
                || source.to_owned(),
                |o| format!("environment {}", o.variable),
            ),
            error,
        })?;
        Ok(config)
    }
}

#[cfg(test)]
mod test_support {
    use super::*;

    pub(super) fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub(super) fn parse(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_str(yaml, "test.yaml", no_env())
    }

    pub(super) fn parse_env(yaml: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_yaml_str(yaml, "test.yaml", env(pairs))
    }

    pub(super) fn defaults() -> Config {
        match parse("") {
            Ok(config) => config,
            Err(e) => panic!("empty document should be valid: {e}"),
        }
    }

    /// The key of the first validation error after `change`.
    pub(super) fn invalid_key(change: impl FnOnce(&mut Config)) -> String {
        let mut config = defaults();
        change(&mut config);
        match config.validate() {
            Err(e) => e.key,
            Ok(()) => panic!("expected a validation error"),
        }
    }

    pub(super) fn err(result: Result<Config, ConfigError>) -> ConfigError {
        match result {
            Err(e) => e,
            Ok(_) => panic!("expected an error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::test_support::*;
    use super::*;

    // In the real crate these resolve to <crate>/config/*.yaml as well.
    const SHIPPED_CONFIG: &str = include_str!("../../config/gateway.yaml");
    const COMPOSE_CONFIG: &str = include_str!("../../config/gateway.compose.yaml");

    // --- shipped files -----------------------------------------------------

    #[test]
    fn shipped_config_is_exactly_the_defaults() {
        let shipped = Config::from_yaml_str(SHIPPED_CONFIG, "config/gateway.yaml", no_env())
            .unwrap_or_else(|e| panic!("{e}"));
        let empty = defaults();
        assert_eq!(shipped, empty);
        assert_eq!(shipped, Config::default());
        // Spot checks against the schema, so a wrong Default impl is caught
        // even though the file was written to match it.
        assert_eq!(empty.server.https_listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(
            empty.server.http_listen,
            Some("0.0.0.0:8080".parse().unwrap())
        );
        assert_eq!(empty.server.ops_listen, "127.0.0.1:9901".parse().unwrap());
        assert_eq!(empty.server.public_url, "https://localhost:8443");
        assert_eq!(empty.server.max_header_bytes, 16384);
        assert_eq!(empty.server.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(empty.server.tls.handshake_timeout, Duration::from_secs(10));
        assert_eq!(empty.upstreams.len(), 1);
        assert_eq!(empty.upstreams[0].name, "app");
        assert_eq!(empty.upstreams[0].url, "http://127.0.0.1:3000");
        assert_eq!(
            empty.upstreams[0].pool_idle_timeout,
            Duration::from_secs(90)
        );
        assert!(empty.upstreams[0].preserve_host);
        assert_eq!(empty.headers.strip_request.len(), 8);
        assert_eq!(empty.cors.max_age, Duration::from_secs(600));
        assert_eq!(
            empty.database.url.expose(),
            "postgres://postgres@127.0.0.1:5432/portcullis"
        );
        assert_eq!(empty.redis.key_prefix, "portcullis:");
        assert_eq!(empty.smtp.security, SmtpSecurity::Plain);
        assert_eq!(empty.smtp.password, None);
        assert_eq!(empty.tokens.refresh_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(empty.tokens.hs256_secret, None);
        assert!(empty.tokens.cookie.enabled);
        assert_eq!(empty.password.argon2.memory_kib, 19_456);
        assert_eq!(
            empty.rate_limits.login,
            RateLimit::new(5, Duration::from_secs(60))
        );
        assert_eq!(
            empty.rate_limits.per_recipient,
            RateLimit::new(3, Duration::from_secs(3600))
        );
        assert_eq!(empty.rate_limits.ipv6_prefix, 64);
        assert_eq!(empty.rate_limits.on_redis_error, FailMode::Allow);
        assert_eq!(empty.rate_limits.revocation_on_redis_error, FailMode::Deny);
        assert_eq!(empty.policy.path, PathBuf::from("config/policy.yaml"));
        assert_eq!(empty.telemetry.log_format, LogFormat::Pretty);
    }

    #[test]
    fn compose_config_points_at_compose_services() {
        let compose =
            Config::from_yaml_str(COMPOSE_CONFIG, "config/gateway.compose.yaml", no_env())
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(compose.server.https_listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(
            compose.server.http_listen,
            Some("0.0.0.0:8080".parse().unwrap())
        );
        assert_eq!(compose.server.ops_listen, "0.0.0.0:9901".parse().unwrap());
        assert_eq!(compose.upstreams[0].url, "http://upstream:8000");
        assert_eq!(
            compose.database.url.expose(),
            "postgres://postgres@postgres:5432/portcullis"
        );
        assert_eq!(compose.redis.url.expose(), "redis://redis:6379/");
        assert_eq!(compose.smtp.host, "mailpit");
        assert_eq!(compose.smtp.port, 1025);
        // Everything else stays at the defaults.
        let mut expected = Config::default();
        expected.server.ops_listen = compose.server.ops_listen;
        expected.upstreams = compose.upstreams.clone();
        expected.database.url = compose.database.url.clone();
        expected.redis.url = compose.redis.url.clone();
        expected.smtp.host = compose.smtp.host.clone();
        // JSON lines for `docker compose logs` and log shippers.
        expected.telemetry.log_format = LogFormat::Json;
        // Behind a balancer that polls /readyz: it takes a stopping replica out first.
        expected.server.drain_delay = std::time::Duration::from_secs(1);
        assert_eq!(compose, expected);
    }

    #[test]
    fn empty_and_comment_only_documents_are_the_defaults() {
        assert_eq!(defaults(), Config::default());
        assert_eq!(parse("# nothing here\n").unwrap(), Config::default());
        assert_eq!(parse("server:\n  tls:\n").unwrap(), Config::default());
        assert!(Config::default().validate().is_ok());
    }

    // --- file errors ---------------------------------------------------------

    #[test]
    fn unknown_top_level_key_reports_line_and_column() {
        let e = err(parse("server:\n  max_connections: 5\nserverr:\n  x: 1\n"));
        match &e {
            ConfigError::Parse {
                file,
                location,
                message,
            } => {
                assert_eq!(file, "test.yaml");
                assert_eq!(*location, Some(Location { line: 3, column: 1 }));
                assert!(
                    message.starts_with("unknown field `serverr`, expected one of"),
                    "{message}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let text = e.to_string();
        assert!(
            text.starts_with("test.yaml:3:1: unknown field `serverr`"),
            "{text}"
        );
        assert!(!text.contains(" at line "), "location is doubled: {text}");
        assert!(!text.contains('\n'));
    }

    #[test]
    fn unknown_nested_key_names_its_section_and_position() {
        let yaml = "server:\n  tls:\n    handshake_timeout: 5s\n    cert_paht: /x.pem\n";
        let text = err(parse(yaml)).to_string();
        assert!(
            text.starts_with(
                "test.yaml:4:5: server.tls: unknown field `cert_paht`, expected one of"
            ),
            "{text}"
        );
        let text = err(parse("server:\n  htps_listen: 0.0.0.0:1\n")).to_string();
        assert!(
            text.starts_with("test.yaml:2:3: server: unknown field `htps_listen`"),
            "{text}"
        );
    }

    #[test]
    fn type_and_syntax_errors_carry_the_position() {
        let text = err(parse("server:\n  max_body_bytes: ten\n")).to_string();
        assert!(
            text.starts_with("test.yaml:2:19: server.max_body_bytes: invalid size \"ten\""),
            "{text}"
        );
        let text = err(parse("server: [\n")).to_string();
        assert!(text.starts_with("test.yaml:"), "{text}");
        assert!(!text.contains('\n'));
        let text = err(parse("smtp:\n  security: ssl\n")).to_string();
        assert!(
            text.contains("smtp.security: unknown variant `ssl`"),
            "{text}"
        );
    }

    #[test]
    fn duplicate_keys_are_refused_with_a_position() {
        let text = err(parse(
            "server:\n  max_connections: 5\n  max_connections: 6\n",
        ))
        .to_string();
        assert!(
            // The YAML library points at the section's first key, as it always has.
            text.starts_with("test.yaml:2:3: server: duplicate field `max_connections`"),
            "{text}"
        );
        // The tree that environment overrides are written into refuses them too.
        let text = err(parse_env(
            "redis:\n  url: redis://a/\nredis:\n  url: redis://b/\n",
            &[("PORTCULLIS_REDIS__TIMEOUT", "2s")],
        ))
        .to_string();
        assert!(text.starts_with("test.yaml:"), "{text}");
        assert!(text.contains("duplicate"), "{text}");
    }

    #[test]
    fn bad_duration_and_bad_size_are_rejected() {
        let text = err(parse("tokens:\n  access_ttl: 5 parsecs\n")).to_string();
        assert!(
            text.starts_with("test.yaml:2:15: tokens.access_ttl: invalid duration \"5 parsecs\""),
            "{text}"
        );
        assert!(parse("tokens:\n  access_ttl: -5\n").is_err());
        assert!(parse("tokens:\n  access_ttl: 1.5\n").is_err());
        let text = err(parse("server:\n  max_body_bytes: 10MB\n")).to_string();
        assert!(text.contains("invalid size \"10MB\""), "{text}");
        assert!(parse("server:\n  max_body_bytes: -1\n").is_err());
    }

    // --- secrets and messages ------------------------------------------------------

    #[test]
    fn secrets_are_redacted() {
        let secret = Secret::new("hunter2-hunter2-hunter2-hunter2-!");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(secret.to_string(), "[redacted]");
        assert_eq!(secret.clone().expose(), "hunter2-hunter2-hunter2-hunter2-!");
        let config = parse_env(
            "smtp:\n  username: mailer\n",
            &[
                ("PORTCULLIS_SMTP__PASSWORD", "smtp-pass-123"),
                ("PORTCULLIS_DATABASE__URL", "postgres://u:db-pass-456@db/x"),
                (
                    "PORTCULLIS_TOKENS__HS256_SECRET",
                    "jwt-secret-jwt-secret-jwt-secret-789",
                ),
            ],
        )
        .unwrap();
        let debug = format!("{config:?}");
        for value in ["smtp-pass-123", "db-pass-456", "jwt-secret"] {
            assert!(!debug.contains(value), "{value} leaked");
        }
        // Rejected secrets are not echoed either.
        let text = err(parse_env(
            "",
            &[("PORTCULLIS_DATABASE__URL", "mysql://u:db-pass-456@db")],
        ))
        .to_string();
        assert!(!text.contains("db-pass-456"), "{text}");
    }

    #[test]
    fn load_reads_the_file_and_reports_missing_files() {
        let missing = Path::new("/nonexistent/portcullis/gateway.yaml");
        let text = match Config::load(missing) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("loaded a missing file"),
        };
        assert!(
            text.starts_with("/nonexistent/portcullis/gateway.yaml: cannot read: "),
            "{text}"
        );
        assert!(!text.contains('\n'));
    }
}
