//! Configuration: this module owns loading and validating `gateway.yaml`:
//! raw serde structs with defaults, environment overrides, semantic
//! validation; `load` is the only I/O.
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

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Uri};
use ipnet::IpNet;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "PORTCULLIS_";

/// Variables under [`ENV_PREFIX`] that configure the process rather than the
/// file (the command line reads them), so they are not treated as overrides.
pub const RESERVED_ENV_VARS: &[&str] = &["PORTCULLIS_CONFIG"];

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

/// A broken semantic rule: `key` is the dotted path (`server.public_url`,
/// `upstreams[1].name`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ValidationError {
    pub key: String,
    pub message: String,
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError {
        key: key.into(),
        message: one_line(&message.into()),
    }
}

/// Error messages can quote user input; keep them on one line so log lines
/// and the CLI's single error line stay intact.
fn one_line(text: &str) -> String {
    text.replace('\r', "\\r").replace('\n', "\\n")
}

/// serde_yaml appends " at line L column C" to its messages; we print the
/// location in `file:line:col` form instead, so drop it from the message.
fn yaml_message(error: &serde_yaml::Error) -> String {
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

fn file_error(file: &str, error: &serde_yaml::Error) -> ConfigError {
    ConfigError::Parse {
        file: file.to_owned(),
        location: error.location().map(|l| Location {
            line: l.line(),
            column: l.column(),
        }),
        message: yaml_message(error),
    }
}

// ---------------------------------------------------------------------------
// Secret
// ---------------------------------------------------------------------------

/// A string that must not end up in logs: `Debug` and `Display` print
/// `[redacted]`; call [`Secret::expose`] where the value is really needed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

// ---------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------

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
    pub lockout: LockoutConfig,
    pub password: PasswordConfig,
    pub rate_limits: RateLimitsConfig,
    pub policy: PolicyConfig,
    pub telemetry: TelemetryConfig,
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
            lockout: LockoutConfig::default(),
            password: PasswordConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            policy: PolicyConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub https_listen: SocketAddr,
    /// `None` disables the plain-HTTP listener that redirects to HTTPS.
    pub http_listen: Option<SocketAddr>,
    pub ops_listen: SocketAddr,
    /// `https://host[:port]`, never with a trailing slash.
    #[serde(deserialize_with = "deserialize_public_url")]
    pub public_url: String,
    pub tls: TlsConfig,
    #[serde(deserialize_with = "duration::deserialize")]
    pub header_read_timeout: Duration,
    #[serde(deserialize_with = "size::deserialize_usize")]
    pub max_header_bytes: usize,
    #[serde(deserialize_with = "size::deserialize")]
    pub max_body_bytes: u64,
    pub max_connections: usize,
    #[serde(deserialize_with = "duration::deserialize")]
    pub drain_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
    /// Threads serving connections, each with its own event loop; 0 means one per core.
    pub worker_threads: usize,
    #[serde(deserialize_with = "deserialize_trusted_proxies")]
    pub trusted_proxies: Vec<IpNet>,
    pub allow_path_parameters: bool,
    /// Host names the gateway serves (contract 6.8); empty means the host of `public_url`.
    pub hosts: Vec<String>,
    /// Method tokens accepted besides GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS.
    pub extra_methods: Vec<String>,
    /// Whether a `_method` query parameter is let through to the upstream.
    pub allow_method_parameter: bool,
    /// How long a request body may stay silent before it is cut off with 408.
    #[serde(deserialize_with = "duration::deserialize")]
    pub body_read_timeout: Duration,
    /// The largest body the `/auth` JSON routes accept.
    #[serde(deserialize_with = "size::deserialize_usize")]
    pub max_auth_body_bytes: usize,
    /// How often an open WebSocket tunnel's token is checked for revocation again.
    #[serde(deserialize_with = "duration::deserialize")]
    pub websocket_recheck_interval: Duration,
}

impl ServerConfig {
    /// `hosts`, or the host of `public_url` when none are listed.
    pub fn served_hosts(&self) -> Vec<String> {
        if !self.hosts.is_empty() {
            return self.hosts.clone();
        }
        self.public_url
            .parse::<http::Uri>()
            .ok()
            .and_then(|uri| uri.host().map(str::to_owned))
            .into_iter()
            .collect()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            https_listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            http_listen: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            ops_listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            public_url: "https://localhost:8443".to_owned(),
            tls: TlsConfig::default(),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(30),
            http2_max_concurrent_streams: 128,
            worker_threads: 0,
            trusted_proxies: Vec::new(),
            allow_path_parameters: false,
            hosts: Vec::new(),
            extra_methods: Vec::new(),
            allow_method_parameter: false,
            body_read_timeout: Duration::from_secs(10),
            max_auth_body_bytes: 64 * 1024,
            websocket_recheck_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Without both paths the gateway serves a self-signed development
    /// certificate.
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
    #[serde(deserialize_with = "duration::deserialize")]
    pub handshake_timeout: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_path: None,
            key_path: None,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

// `name` and `url` have no sensible default for an entry someone wrote, so
// only the remaining fields default (no container-level `default`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    #[serde(deserialize_with = "deserialize_uri")]
    pub url: Uri,
    #[serde(
        default = "UpstreamConfig::default_connect_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub connect_timeout: Duration,
    /// Time until the upstream's response headers arrive.
    #[serde(
        default = "UpstreamConfig::default_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub timeout: Duration,
    #[serde(
        default = "UpstreamConfig::default_pool_idle_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub pool_idle_timeout: Duration,
    #[serde(default = "UpstreamConfig::default_pool_max_idle")]
    pub pool_max_idle: usize,
    #[serde(default = "default_true")]
    pub preserve_host: bool,
}

impl UpstreamConfig {
    /// An upstream with the default timeouts and pool settings.
    pub fn new(name: impl Into<String>, url: Uri) -> Self {
        UpstreamConfig {
            name: name.into(),
            url,
            connect_timeout: Self::default_connect_timeout(),
            timeout: Self::default_timeout(),
            pool_idle_timeout: Self::default_pool_idle_timeout(),
            pool_max_idle: Self::default_pool_max_idle(),
            preserve_host: true,
        }
    }

    fn default_connect_timeout() -> Duration {
        Duration::from_secs(5)
    }

    fn default_timeout() -> Duration {
        Duration::from_secs(30)
    }

    fn default_pool_idle_timeout() -> Duration {
        Duration::from_secs(90)
    }

    fn default_pool_max_idle() -> usize {
        256
    }
}

fn default_true() -> bool {
    true
}

/// Response headers added to every response; an empty string means the
/// header is not set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadersConfig {
    pub strict_transport_security: String,
    pub content_security_policy: String,
    pub x_content_type_options: String,
    pub x_frame_options: String,
    pub referrer_policy: String,
    /// Value of the `Server` header. Deliberately not a version.
    pub server: String,
    /// Request headers removed before forwarding, so a client cannot forge
    /// the identity headers the gateway adds. A trailing `*` is a prefix.
    pub strip_request: Vec<String>,
}

impl Default for HeadersConfig {
    fn default() -> Self {
        HeadersConfig {
            strict_transport_security: "max-age=31536000; includeSubDomains".to_owned(),
            content_security_policy:
                "default-src 'self'; frame-ancestors 'none'; base-uri 'self'; object-src 'none'"
                    .to_owned(),
            x_content_type_options: "nosniff".to_owned(),
            x_frame_options: "DENY".to_owned(),
            referrer_policy: "strict-origin-when-cross-origin".to_owned(),
            server: "portcullis".to_owned(),
            strip_request: [
                "x-auth-*",
                "x-user-*",
                "x-forwarded-user",
                "x-forwarded-email",
                "x-remote-user",
                "remote-user",
                "x-original-url",
                "x-rewrite-url",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`) or `"*"`; empty disables CORS.
    pub allowed_origins: Vec<String>,
    pub allow_credentials: bool,
    pub allowed_methods: Vec<String>,
    pub allowed_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_age: Duration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            allowed_origins: Vec::new(),
            allow_credentials: false,
            allowed_methods: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
                .map(String::from)
                .to_vec(),
            allowed_headers: ["authorization", "content-type"].map(String::from).to_vec(),
            expose_headers: Vec::new(),
            max_age: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// A secret because it usually carries the password.
    pub url: Secret,
    pub max_connections: usize,
    #[serde(deserialize_with = "duration::deserialize")]
    pub connect_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: Secret::new("postgres://postgres@127.0.0.1:5432/portcullis"),
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: Secret,
    pub key_prefix: String,
    #[serde(deserialize_with = "duration::deserialize")]
    pub timeout: Duration,
    /// Check signed-in requests against this instance's pushed copy of the revocation list
    /// instead of reading Redis for each. Either way the instance follows the list and
    /// acknowledges revocations, so instances may differ in this setting.
    pub revocation_feed: bool,
    /// How long the copy is trusted after each confirmation from Redis, and the longest a
    /// revocation waits for an instance that does not acknowledge it.
    #[serde(deserialize_with = "duration::deserialize")]
    pub revocation_lease: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: Secret::new("redis://127.0.0.1:6379/"),
            key_prefix: "portcullis:".to_owned(),
            timeout: Duration::from_secs(1),
            revocation_feed: true,
            revocation_lease: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    Plain,
    #[serde(rename = "starttls")]
    StartTls,
    Tls,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub from: String,
    #[serde(deserialize_with = "duration::deserialize")]
    pub timeout: Duration,
    /// First delay before retrying a message that failed; doubles up to `retry_max`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub retry_initial: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub retry_max: Duration,
    /// How often the outbox is checked when nothing wakes the worker sooner.
    #[serde(deserialize_with = "duration::deserialize")]
    pub poll_interval: Duration,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            host: "127.0.0.1".to_owned(),
            port: 1025,
            security: SmtpSecurity::Plain,
            username: None,
            password: None,
            from: "Portcullis <no-reply@localhost>".to_owned(),
            timeout: Duration::from_secs(10),
            retry_initial: Duration::from_secs(5),
            retry_max: Duration::from_secs(600),
            poll_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KeyAlgorithm {
    #[serde(rename = "EdDSA")]
    EdDsa,
    #[serde(rename = "ES256")]
    Es256,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyConfig {
    pub kid: String,
    pub algorithm: KeyAlgorithm,
    pub private_key_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CookieConfig {
    pub enabled: bool,
    pub access_name: String,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            enabled: false,
            access_name: "portcullis_access".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    pub issuer: String,
    pub audience: String,
    #[serde(deserialize_with = "duration::deserialize")]
    pub access_ttl: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub refresh_ttl: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub verification_ttl: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub reset_ttl: Duration,
    /// Clock skew tolerated when checking `exp`/`nbf`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub leeway: Duration,
    pub hs256_secret: Option<Secret>,
    pub signing_keys: Vec<SigningKeyConfig>,
    pub active_kid: Option<String>,
    pub cookie: CookieConfig,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            issuer: "portcullis".to_owned(),
            audience: "portcullis".to_owned(),
            access_ttl: Duration::from_secs(30 * 60),
            refresh_ttl: Duration::from_secs(7 * 24 * 3600),
            verification_ttl: Duration::from_secs(24 * 3600),
            reset_ttl: Duration::from_secs(3600),
            leeway: Duration::ZERO,
            hs256_secret: None,
            signing_keys: Vec::new(),
            active_kid: None,
            cookie: CookieConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockoutConfig {
    /// Consecutive failed logins before the account is locked; 0 turns lockout
    /// off (nothing locks, no lock is enforced).
    pub max_failures: u32,
    #[serde(deserialize_with = "duration::deserialize")]
    pub duration: Duration,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        LockoutConfig {
            max_failures: 5,
            duration: Duration::from_secs(30 * 60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Argon2Config {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Config {
    // OWASP's recommended Argon2id minimum (19 MiB, t=2, p=1).
    fn default() -> Self {
        Argon2Config {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordConfig {
    pub min_length: usize,
    /// Caps hashing cost for absurdly long inputs.
    pub max_bytes: usize,
    pub require_uppercase: bool,
    pub require_lowercase: bool,
    pub require_digit: bool,
    pub reject_common: bool,
    pub reject_email_local_part: bool,
    /// `nist` drops the composition rules (NIST SP 800-63B) and relies on the length, the
    /// common check and the strength estimator, whose minimum it raises to 3.
    pub preset: PasswordPreset,
    /// The lowest zxcvbn score (0-4) a password may have; 0 leaves only the common list.
    pub min_strength: u8,
    pub argon2: Argon2Config,
    /// Password hashes computed at once; 0 means one fewer than the cores (at least one).
    pub max_concurrent_hashes: usize,
}

impl Default for PasswordConfig {
    fn default() -> Self {
        PasswordConfig {
            min_length: 8,
            max_bytes: 1024,
            require_uppercase: true,
            require_lowercase: true,
            require_digit: true,
            reject_common: true,
            reject_email_local_part: true,
            preset: PasswordPreset::Default,
            min_strength: crate::password::DEFAULT_MIN_STRENGTH,
            argon2: Argon2Config::default(),
            max_concurrent_hashes: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PasswordPreset {
    Default,
    Nist,
}

impl PasswordConfig {
    /// The rules the configuration asks for, the preset applied.
    pub fn rules(&self) -> crate::password::PasswordRules {
        let nist = self.preset == PasswordPreset::Nist;
        crate::password::PasswordRules {
            min_length: self.min_length,
            max_bytes: self.max_bytes,
            require_uppercase: self.require_uppercase && !nist,
            require_lowercase: self.require_lowercase && !nist,
            require_digit: self.require_digit && !nist,
            reject_common: self.reject_common,
            reject_email_local_part: self.reject_email_local_part,
            min_strength: if nist {
                self.min_strength.max(crate::password::NIST_MIN_STRENGTH)
            } else {
                self.min_strength
            },
        }
    }
}

// Both fields are required: each limit has its own default, so a partial
// entry would have nothing sensible to be completed from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests: u32,
    #[serde(deserialize_with = "duration::deserialize")]
    pub per: Duration,
}

impl RateLimit {
    pub fn new(requests: u32, per: Duration) -> Self {
        RateLimit { requests, per }
    }
}

/// What to do when Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    pub login: RateLimit,
    /// Also `resend-verification`'s: both send a verification email.
    pub register: RateLimit,
    pub password_reset: RateLimit,
    pub default: RateLimit,
    /// Each route that sends mail (register, resend-verification, password-reset) also
    /// counts per recipient address, whatever the client's, so that no one mail-bombs an
    /// inbox from many addresses.
    pub per_recipient: RateLimit,
    /// IPv6 clients are counted per network of this many leading bits (1..=128); a /64 is
    /// usually one subscriber.
    pub ipv6_prefix: u8,
    /// Rate limiting is a nuisance filter: failing open keeps the service up.
    pub on_redis_error: FailMode,
    /// Revocation is a security check: failing closed keeps revoked tokens out.
    pub revocation_on_redis_error: FailMode,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            login: RateLimit::new(5, Duration::from_secs(60)),
            register: RateLimit::new(3, Duration::from_secs(3600)),
            password_reset: RateLimit::new(3, Duration::from_secs(3600)),
            default: RateLimit::new(1000, Duration::from_secs(3600)),
            per_recipient: RateLimit::new(3, Duration::from_secs(3600)),
            ipv6_prefix: 64,
            on_redis_error: FailMode::Allow,
            revocation_on_redis_error: FailMode::Deny,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub path: PathBuf,
    /// Reload the policy when the file changes; SIGHUP reloads it either way.
    pub watch: bool,
    /// Match paths exactly; by default letter case is ignored (contract 6.3).
    pub case_sensitive: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            path: PathBuf::from("config/policy.yaml"),
            watch: true,
            case_sensitive: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// A tracing filter directive such as `info` or `portcullis=debug,info`.
    pub log_level: String,
    pub access_log: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::Pretty,
            log_level: "info".to_owned(),
            access_log: true,
        }
    }
}

// ---------------------------------------------------------------------------
// Field deserializers
// ---------------------------------------------------------------------------

/// Durations: `250ms`, `10s`, `5m`, `1h`, `7d`, or a plain integer of seconds.
pub mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};

    const EXPECTED: &str = "an integer followed by ms, s, m, h or d (e.g. 250ms, 10s, 5m, 1h, 7d)";

    pub fn parse(text: &str) -> Result<Duration, String> {
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(split);
        let millis_per_unit: u64 = match unit.trim_start() {
            "ms" => 1,
            "" | "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(format!("invalid duration {text:?}: expected {EXPECTED}")),
        };
        if digits.is_empty() {
            return Err(format!("invalid duration {text:?}: expected {EXPECTED}"));
        }
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(millis_per_unit))
            .map(Duration::from_millis)
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration: ")?;
            f.write_str(EXPECTED)
        }

        fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(secs))
        }

        fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Duration, E> {
            u64::try_from(secs)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("invalid duration {secs}: must not be negative")))
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "invalid duration {value}: expected {EXPECTED}"
            )))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            parse(text).map_err(E::custom)
        }
    }
}

/// Sizes in bytes: a plain integer, or an integer with `B`, `KiB`, `MiB`,
/// `GiB` or `TiB`. Decimal units (`MB`) are rejected rather than guessed.
pub mod size {
    use std::fmt;

    use serde::de::{self, Deserializer, Visitor};

    const EXPECTED: &str = "an integer of bytes, optionally followed by B, KiB, MiB, GiB or TiB (e.g. 16384, 512KiB, 10MiB)";

    pub fn parse(text: &str) -> Result<u64, String> {
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(split);
        let multiplier: u64 = match unit.trim_start() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            _ => return Err(format!("invalid size {text:?}: expected {EXPECTED}")),
        };
        if digits.is_empty() {
            return Err(format!("invalid size {text:?}: expected {EXPECTED}"));
        }
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(multiplier))
            .ok_or_else(|| format!("invalid size {text:?}: too large"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_any(SizeVisitor)
    }

    pub fn deserialize_usize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<usize, D::Error> {
        let bytes = deserialize(deserializer)?;
        usize::try_from(bytes)
            .map_err(|_| de::Error::custom(format!("invalid size {bytes}: too large")))
    }

    struct SizeVisitor;

    impl Visitor<'_> for SizeVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size: ")?;
            f.write_str(EXPECTED)
        }

        fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<u64, E> {
            Ok(bytes)
        }

        fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<u64, E> {
            u64::try_from(bytes)
                .map_err(|_| E::custom(format!("invalid size {bytes}: must not be negative")))
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<u64, E> {
            Err(E::custom(format!(
                "invalid size {value}: expected {EXPECTED}"
            )))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
            parse(text).map_err(E::custom)
        }
    }
}

/// Parses a trusted proxy entry: a CIDR network, or a bare address meaning
/// just that host (/32 or /128).
pub fn parse_ip_net(text: &str) -> Result<IpNet, String> {
    let trimmed = text.trim();
    if let Ok(net) = trimmed.parse::<IpNet>() {
        // Host bits are ignored when matching anyway; normalising makes the
        // value print as the network it means.
        return Ok(net.trunc());
    }
    if let Ok(ip) = trimmed.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "invalid trusted proxy {text:?}: expected an IP address (10.0.0.1) or a CIDR network (10.0.0.0/8)"
    ))
}

fn deserialize_trusted_proxies<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<IpNet>, D::Error> {
    // One element at a time, so serde_yaml reports the failing element's
    // line and index rather than the start of the list.
    struct Net(IpNet);

    impl<'de> Deserialize<'de> for Net {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_str(NetVisitor)
        }
    }

    struct NetVisitor;

    impl Visitor<'_> for NetVisitor {
        type Value = Net;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an IP address or CIDR network")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Net, E> {
            parse_ip_net(text).map(Net).map_err(E::custom)
        }
    }

    let nets = Vec::<Net>::deserialize(deserializer)?;
    Ok(nets.into_iter().map(|net| net.0).collect())
}

fn deserialize_uri<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Uri, D::Error> {
    let text = String::deserialize(deserializer)?;
    // http::Uri silently drops a fragment; refuse it rather than lose it.
    if text.contains('#') {
        return Err(de::Error::custom(format!(
            "invalid URL {text:?}: must not have a fragment"
        )));
    }
    text.parse::<Uri>()
        .map_err(|e| de::Error::custom(format!("invalid URL {text:?}: {e}")))
}

fn deserialize_public_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    Ok(trim_root_slash(&text).to_owned())
}

/// `https://host/` and `https://host` are the same origin; links are built
/// by appending paths, so keep the form without the slash.
fn trim_root_slash(url: &str) -> &str {
    match url.strip_suffix('/') {
        Some(rest) if url_tail(rest).is_empty() => rest,
        _ => url,
    }
}

/// The part of a URL after its authority (path, query, fragment).
fn url_tail(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme
        .find(['/', '?', '#'])
        .map_or("", |at| &after_scheme[at..])
}

// ---------------------------------------------------------------------------
// Loading and environment overrides
// ---------------------------------------------------------------------------

impl Config {
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
        let from_file: Config = serde_yaml::from_str(text).map_err(|e| file_error(source, &e))?;
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

/// `std::env::vars()` panics on a non-UTF-8 variable anywhere in the
/// environment; only ours need to be readable.
fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(ENV_PREFIX) {
            continue;
        }
        let value = value.into_string().map_err(|_| ConfigError::Env {
            variable: name.to_owned(),
            message: "value is not valid UTF-8".to_owned(),
        })?;
        vars.push((name.to_owned(), value));
    }
    Ok(vars)
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Segment {
    Index(usize),
    Key(String),
}

#[derive(Debug)]
struct EnvOverride {
    variable: String,
    path: Vec<Segment>,
    /// The path as serde_yaml and validation print it: `upstreams[0].url`.
    dotted: String,
    value: Value,
}

fn collect_overrides(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<EnvOverride>, ConfigError> {
    let mut overrides = Vec::new();
    for (variable, raw) in env {
        let Some(rest) = variable.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if RESERVED_ENV_VARS.contains(&variable.as_str()) {
            continue;
        }
        let mut path = Vec::new();
        for part in rest.split("__") {
            if part.is_empty() {
                return Err(ConfigError::Env {
                    variable,
                    message:
                        "expected PORTCULLIS_<SECTION>__<KEY>[__<SUBKEY>...] with no empty segments"
                            .to_owned(),
                });
            }
            path.push(match part.parse::<usize>() {
                Ok(index) if part.bytes().all(|b| b.is_ascii_digit()) => Segment::Index(index),
                _ => Segment::Key(part.to_ascii_lowercase()),
            });
        }
        let dotted = dotted_path(&path);
        overrides.push(EnvOverride {
            variable,
            path,
            dotted,
            value: env_value(&raw),
        });
    }
    // Paths compare index segments numerically, so `__2__` is applied before
    // `__10__` and a list can grow one element at a time; a whole-section
    // variable sorts before the keys inside it, which then refine it.
    overrides.sort_by(|a, b| (&a.path, &a.variable).cmp(&(&b.path, &b.variable)));
    Ok(overrides)
}

fn dotted_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
        }
    }
    out
}

/// Turns a variable's value into YAML. Values that YAML would change are
/// kept as the literal string: `abc #x` would lose its "comment", `!x` would
/// become a tag, `0x1F` would become 31. Quoting (`'"null"'`) forces a string.
fn env_value(raw: &str) -> Value {
    let trimmed = raw.trim();
    match serde_yaml::from_str::<Value>(trimmed) {
        Ok(value @ (Value::Sequence(_) | Value::Mapping(_))) if trimmed.starts_with(['[', '{']) => {
            value
        }
        Ok(value @ Value::String(_)) if trimmed.starts_with(['"', '\'']) => value,
        Ok(value @ (Value::Null | Value::Bool(_) | Value::Number(_)))
            if serde_yaml::to_string(&value).is_ok_and(|text| text.trim_end() == trimmed) =>
        {
            value
        }
        _ => Value::String(raw.to_owned()),
    }
}

fn set_path(node: &mut Value, path: &[Segment], walked: &str, value: Value) -> Result<(), String> {
    let Some((segment, rest)) = path.split_first() else {
        *node = value;
        return Ok(());
    };
    if node.is_null() {
        *node = match segment {
            Segment::Index(_) => {
                default_list(walked).unwrap_or_else(|| Value::Sequence(Vec::new()))
            }
            Segment::Key(_) => Value::Mapping(Mapping::new()),
        };
    }
    let here = dotted_path(std::slice::from_ref(segment));
    let next = match segment {
        Segment::Index(_) => format!("{walked}{here}"),
        Segment::Key(_) if walked.is_empty() => here,
        Segment::Key(_) => format!("{walked}.{here}"),
    };
    match (node, segment) {
        (Value::Mapping(map), Segment::Key(key)) => {
            let child = map.entry(Value::String(key.clone())).or_insert(Value::Null);
            set_path(child, rest, &next, value)
        }
        (Value::Mapping(map), Segment::Index(index)) => {
            // Not a list: let the schema reject the key as unknown.
            let child = map
                .entry(Value::String(index.to_string()))
                .or_insert(Value::Null);
            set_path(child, rest, &next, value)
        }
        (Value::Sequence(items), Segment::Index(index)) => {
            let len = items.len();
            if *index == len {
                items.push(Value::Null);
            }
            match items.get_mut(*index) {
                Some(child) => set_path(child, rest, &next, value),
                None => Err(format!(
                    "index {index} is out of range: `{walked}` has {len} entries (the next index appends one)"
                )),
            }
        }
        (Value::Sequence(_), Segment::Key(key)) => Err(format!(
            "`{walked}` is a list, so `{key}` must be a numeric index"
        )),
        _ => Err(format!("`{walked}` is a single value, not a section")),
    }
}

/// The default of a list-valued key as YAML. Absent sections default as a
/// whole, but a variable that edits one element of an absent list
/// (`PORTCULLIS_UPSTREAMS__0__URL`) means "this element of the default list",
/// so the list must exist in the tree first.
fn default_list(dotted: &str) -> Option<Value> {
    let defaults = Config::default();
    let strings = |items: &[String]| {
        Value::Sequence(items.iter().map(|s| Value::String(s.clone())).collect())
    };
    match dotted {
        "upstreams" => Some(Value::Sequence(
            defaults
                .upstreams
                .iter()
                .map(|upstream| {
                    // The other fields' serde defaults are the same ones
                    // `UpstreamConfig::new` uses.
                    let mut entry = Mapping::new();
                    entry.insert("name".into(), upstream.name.clone().into());
                    entry.insert("url".into(), upstream.url.to_string().into());
                    Value::Mapping(entry)
                })
                .collect(),
        )),
        "headers.strip_request" => Some(strings(&defaults.headers.strip_request)),
        "cors.allowed_methods" => Some(strings(&defaults.cors.allowed_methods)),
        "cors.allowed_headers" => Some(strings(&defaults.cors.allowed_headers)),
        _ => None,
    }
}

/// Deserializes a tree through YAML text (not `from_value`) so scalars are
/// read exactly as in the file: `issuer: 12345` is a string there too.
fn reparse(document: &Value) -> Result<Config, serde_yaml::Error> {
    serde_yaml::from_str(&serde_yaml::to_string(document)?)
}

fn apply_overrides(
    text: &str,
    source: &str,
    overrides: &[EnvOverride],
) -> Result<Config, ConfigError> {
    let mut document: Value = serde_yaml::from_str(text).map_err(|e| file_error(source, &e))?;
    if document.is_null() {
        document = Value::Mapping(Mapping::new());
    }
    for o in overrides {
        set_path(&mut document, &o.path, "", o.value.clone()).map_err(|message| {
            ConfigError::Env {
                variable: o.variable.clone(),
                message,
            }
        })?;
    }
    let error = match reparse(&document) {
        Ok(config) => return Ok(config),
        Err(e) => yaml_message(&e),
    };
    match blame_for_parse_error(&error, overrides) {
        Some(o) => Err(ConfigError::Env {
            variable: o.variable.clone(),
            message: strip_known_path(&error, &o.dotted),
        }),
        // Unreachable in practice (the file alone parsed, so an override is
        // involved), but say where the message came from rather than guess.
        None => Err(ConfigError::Parse {
            file: format!("{source} with PORTCULLIS_* overrides"),
            location: None,
            message: error,
        }),
    }
}

/// Splits serde_yaml's `path: message` form; paths in this schema are
/// snake_case keys, dots and `[n]` indexes.
fn split_error_path(message: &str) -> (&str, &str) {
    match message.split_once(": ") {
        Some((path, rest))
            if !path.is_empty()
                && path
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.[]".contains(&b)) =>
        {
            (path, rest)
        }
        _ => ("", message),
    }
}

/// Finds the variable responsible for a deserialization error from its key
/// path, so the error can name the variable.
fn blame_for_parse_error<'a>(
    message: &str,
    overrides: &'a [EnvOverride],
) -> Option<&'a EnvOverride> {
    let (path, rest) = split_error_path(message);
    // The variable that set exactly this key (the last one wins, as applied).
    if let Some(o) = overrides.iter().rev().find(|o| o.dotted == path) {
        return Some(o);
    }
    // The variable that introduced an unknown key.
    if let Some((field, _)) = rest
        .strip_prefix("unknown field `")
        .and_then(|r| r.split_once('`'))
    {
        let target = if path.is_empty() {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        };
        if let Some(o) = overrides.iter().find(|o| is_within(&o.dotted, &target)) {
            return Some(o);
        }
    }
    if path.is_empty() {
        return overrides.last();
    }
    // A variable that replaced a whole section containing the key, else one
    // that wrote inside the failing section (a list element it created that
    // lacks a required field).
    overrides
        .iter()
        .rev()
        .find(|o| is_within(path, &o.dotted))
        .or_else(|| overrides.iter().find(|o| is_within(&o.dotted, path)))
        .or_else(|| overrides.last())
}

/// True when `a` is `b` or lies inside it (`server.tls.cert_path` inside
/// `server.tls`, `upstreams[0].url` inside `upstreams`).
fn is_within(a: &str, b: &str) -> bool {
    a == b
        || a.strip_prefix(b)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// The variable already names its key, so a `key: ` prefix that serde_yaml
/// put on the message for that key (or a section above it) is redundant.
fn strip_known_path(message: &str, dotted: &str) -> String {
    match split_error_path(message) {
        (path, rest) if !path.is_empty() && is_within(dotted, path) => rest.to_owned(),
        _ => message.to_owned(),
    }
}

/// The override that set the invalid key, or a section or key related to it.
fn blame_for<'a>(key: &str, overrides: &'a [EnvOverride]) -> Option<&'a EnvOverride> {
    overrides.iter().find(|o| o.dotted == key).or_else(|| {
        overrides
            .iter()
            .find(|o| is_within(key, &o.dotted) || is_within(&o.dotted, key))
    })
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// Checks a URL's authority: present, a host, a valid port, no userinfo.
/// Returns the parsed URI for the caller's scheme and path rules.
fn parse_url(text: &str) -> Result<Uri, String> {
    if text.contains('#') {
        return Err(format!("{text:?} must not have a fragment"));
    }
    let uri = text
        .parse::<Uri>()
        .map_err(|e| format!("{text:?} is not a valid URL: {e}"))?;
    let Some(authority) = uri.authority() else {
        return Err(format!("{text:?} has no host"));
    };
    if uri.scheme().is_none() {
        return Err(format!("{text:?} has no scheme"));
    }
    if authority.as_str().contains('@') {
        return Err("must not contain credentials".to_owned());
    }
    if authority.host().is_empty() {
        return Err(format!("{text:?} has no host"));
    }
    // http::Uri accepts `host:` and `host:99999`, reporting no port.
    let after_host = authority
        .as_str()
        .rsplit_once(']')
        .map_or(authority.as_str(), |(_, rest)| rest);
    if after_host.contains(':') && authority.port_u16().is_none() {
        return Err(format!("{text:?} has an invalid port"));
    }
    Ok(uri)
}

fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn require_positive(key: &str, value: Duration) -> Result<(), ValidationError> {
    if value.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(())
}

/// Two listeners collide on the same port if either binds every address.
/// Port 0 asks the OS for a free port, so it never collides.
fn listeners_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl Config {
    /// Semantic checks that the types cannot express. Returns the first
    /// problem found, naming its dotted key path.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.validate_server()?;
        self.validate_upstreams()?;
        self.validate_headers()?;
        self.validate_cors()?;
        self.validate_stores()?;
        self.validate_smtp()?;
        self.validate_tokens()?;
        self.validate_accounts()?;
        self.validate_rate_limits()?;
        if self.policy.path.as_os_str().is_empty() {
            return Err(invalid("policy.path", "must not be empty"));
        }
        if self.telemetry.log_level.trim().is_empty() {
            return Err(invalid("telemetry.log_level", "must not be empty"));
        }
        Ok(())
    }

    fn validate_server(&self) -> Result<(), ValidationError> {
        let s = &self.server;
        let mut listeners = vec![("server.https_listen", s.https_listen)];
        if let Some(addr) = s.http_listen {
            listeners.push(("server.http_listen", addr));
        }
        listeners.push(("server.ops_listen", s.ops_listen));
        for (i, (key, addr)) in listeners.iter().enumerate() {
            if let Some((other, _)) = listeners[..i]
                .iter()
                .find(|(_, earlier)| listeners_clash(*earlier, *addr))
            {
                return Err(invalid(*key, format!("{addr} collides with {other}")));
            }
        }

        let uri = parse_url(&s.public_url).map_err(|m| invalid("server.public_url", m))?;
        if uri.scheme_str() != Some("https") {
            return Err(invalid(
                "server.public_url",
                format!("must be an https:// URL (got {:?})", s.public_url),
            ));
        }
        if !matches!(url_tail(&s.public_url), "" | "/") {
            return Err(invalid(
                "server.public_url",
                format!(
                    "must be https://host[:port] with no path or query (got {:?})",
                    s.public_url
                ),
            ));
        }

        if s.tls.cert_path.is_some() != s.tls.key_path.is_some() {
            return Err(invalid(
                "server.tls",
                "cert_path and key_path must be set together (or neither, for a self-signed development certificate)",
            ));
        }
        require_positive("server.tls.handshake_timeout", s.tls.handshake_timeout)?;
        require_positive("server.header_read_timeout", s.header_read_timeout)?;
        require_positive(
            "server.websocket_recheck_interval",
            s.websocket_recheck_interval,
        )?;
        if !(1024..=1024 * 1024).contains(&s.max_header_bytes) {
            return Err(invalid(
                "server.max_header_bytes",
                format!(
                    "must be between 1024 and 1048576 (got {})",
                    s.max_header_bytes
                ),
            ));
        }
        if s.max_body_bytes == 0 {
            return Err(invalid(
                "server.max_body_bytes",
                "must be greater than zero",
            ));
        }
        if s.max_connections == 0 {
            return Err(invalid(
                "server.max_connections",
                "must be greater than zero",
            ));
        }
        require_positive("server.body_read_timeout", s.body_read_timeout)?;
        if !(1024..=16 * 1024 * 1024).contains(&s.max_auth_body_bytes) {
            return Err(invalid(
                "server.max_auth_body_bytes",
                format!(
                    "must be between 1024 and 16777216 (got {})",
                    s.max_auth_body_bytes
                ),
            ));
        }
        for (i, host) in s.hosts.iter().enumerate() {
            let valid = !host.is_empty()
                && host.parse::<http::uri::Authority>().is_ok_and(|authority| {
                    authority.port().is_none() && !authority.as_str().contains('@')
                })
                || host.parse::<std::net::Ipv6Addr>().is_ok();
            if !valid {
                return Err(invalid(
                    format!("server.hosts[{i}]"),
                    format!("{host:?} must be a host name or address, without a port"),
                ));
            }
        }
        for (i, method) in s.extra_methods.iter().enumerate() {
            let token = !method.is_empty()
                && method
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
            if !token || matches!(method.as_str(), "TRACE" | "CONNECT") {
                return Err(invalid(
                    format!("server.extra_methods[{i}]"),
                    format!("{method:?} must be an upper-case method token other than TRACE and CONNECT"),
                ));
            }
        }
        if s.http2_max_concurrent_streams == 0 {
            return Err(invalid(
                "server.http2_max_concurrent_streams",
                "must be greater than zero",
            ));
        }
        Ok(())
    }

    fn validate_upstreams(&self) -> Result<(), ValidationError> {
        if self.upstreams.is_empty() {
            return Err(invalid("upstreams", "at least one upstream is required"));
        }
        for (i, upstream) in self.upstreams.iter().enumerate() {
            let key = |field: &str| format!("upstreams[{i}].{field}");
            let name_ok = !upstream.name.is_empty()
                && upstream.name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if !name_ok {
                return Err(invalid(
                    key("name"),
                    format!("must match [a-z0-9_-]+ (got {:?})", upstream.name),
                ));
            }
            if self.upstreams[..i].iter().any(|u| u.name == upstream.name) {
                return Err(invalid(
                    key("name"),
                    format!("duplicate upstream name {:?}", upstream.name),
                ));
            }
            let text = upstream.url.to_string();
            let uri = parse_url(&text).map_err(|m| invalid(key("url"), m))?;
            match uri.scheme_str() {
                Some("http") => {}
                Some("https") => {
                    return Err(invalid(
                        key("url"),
                        format!(
                            "https upstreams are not supported yet; use http:// (got {text:?})"
                        ),
                    ))
                }
                _ => {
                    return Err(invalid(
                        key("url"),
                        format!("must be an http:// URL (got {text:?})"),
                    ))
                }
            }
            if uri.query().is_some() {
                return Err(invalid(
                    key("url"),
                    format!("must not have a query; only a path prefix is allowed (got {text:?})"),
                ));
            }
            require_positive(&key("connect_timeout"), upstream.connect_timeout)?;
            require_positive(&key("timeout"), upstream.timeout)?;
        }
        Ok(())
    }

    fn validate_headers(&self) -> Result<(), ValidationError> {
        let h = &self.headers;
        let values = [
            (
                "headers.strict_transport_security",
                &h.strict_transport_security,
            ),
            (
                "headers.content_security_policy",
                &h.content_security_policy,
            ),
            ("headers.x_content_type_options", &h.x_content_type_options),
            ("headers.x_frame_options", &h.x_frame_options),
            ("headers.referrer_policy", &h.referrer_policy),
            ("headers.server", &h.server),
        ];
        for (key, value) in values {
            if !value.is_empty() && HeaderValue::from_str(value).is_err() {
                return Err(invalid(
                    key,
                    format!("{value:?} is not a valid HTTP header value (control characters such as newlines are not allowed)"),
                ));
            }
        }
        for (i, name) in h.strip_request.iter().enumerate() {
            let base = name.strip_suffix('*').unwrap_or(name);
            let ok = !base.is_empty()
                && base
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(invalid(
                    format!("headers.strip_request[{i}]"),
                    format!("{name:?} must be a header name of [A-Za-z0-9_-], optionally ending in * to match a prefix"),
                ));
            }
        }
        Ok(())
    }

    fn validate_cors(&self) -> Result<(), ValidationError> {
        let c = &self.cors;
        let wildcard = c.allowed_origins.iter().any(|o| o == "*");
        if wildcard && c.allowed_origins.len() > 1 {
            return Err(invalid(
                "cors.allowed_origins",
                "\"*\" allows every origin, so it must be the only entry",
            ));
        }
        if wildcard && c.allow_credentials {
            return Err(invalid(
                "cors.allow_credentials",
                "cannot be true when cors.allowed_origins is \"*\" (browsers refuse credentials for a wildcard origin); list the origins instead",
            ));
        }
        for (i, origin) in c.allowed_origins.iter().enumerate() {
            if origin == "*" {
                continue;
            }
            let key = format!("cors.allowed_origins[{i}]");
            let uri = parse_url(origin).map_err(|m| invalid(&key, m))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) {
                return Err(invalid(
                    &key,
                    format!("{origin:?} must be an http:// or https:// origin"),
                ));
            }
            // Browsers send `Origin` without a path or trailing slash, so
            // anything more would never match.
            if !url_tail(origin).is_empty() {
                return Err(invalid(
                    &key,
                    format!(
                        "{origin:?} must be scheme://host[:port] with no path or trailing slash"
                    ),
                ));
            }
        }
        for (i, method) in c.allowed_methods.iter().enumerate() {
            let key = format!("cors.allowed_methods[{i}]");
            if Method::from_bytes(method.as_bytes()).is_err() {
                return Err(invalid(
                    key,
                    format!("{method:?} is not a valid HTTP method"),
                ));
            }
            // Methods are case-sensitive; `get` would never match a request.
            if method.bytes().any(|b| b.is_ascii_lowercase()) {
                return Err(invalid(
                    key,
                    format!("{method:?} must be upper-case (HTTP methods are case-sensitive)"),
                ));
            }
        }
        for (field, names) in [
            ("allowed_headers", &c.allowed_headers),
            ("expose_headers", &c.expose_headers),
        ] {
            for (i, name) in names.iter().enumerate() {
                if name != "*" && HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(invalid(
                        format!("cors.{field}[{i}]"),
                        format!("{name:?} is not a valid header name"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_stores(&self) -> Result<(), ValidationError> {
        // Never echo these URLs: they may carry passwords.
        let db = self.database.url.expose();
        if !(db.starts_with("postgres://") || db.starts_with("postgresql://")) {
            return Err(invalid(
                "database.url",
                "must start with postgres:// or postgresql://",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(invalid(
                "database.max_connections",
                "must be greater than zero",
            ));
        }
        require_positive("database.connect_timeout", self.database.connect_timeout)?;
        let redis = self.redis.url.expose();
        if !["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|scheme| redis.starts_with(scheme))
        {
            return Err(invalid(
                "redis.url",
                "must start with redis://, rediss://, redis+unix:// or unix://",
            ));
        }
        require_positive("redis.timeout", self.redis.timeout)?;
        if self.redis.revocation_lease < Duration::from_millis(20) {
            return Err(invalid("redis.revocation_lease", "must be at least 20ms"));
        }
        Ok(())
    }

    fn validate_smtp(&self) -> Result<(), ValidationError> {
        let s = &self.smtp;
        if s.host.trim().is_empty() {
            return Err(invalid("smtp.host", "must not be empty"));
        }
        if s.port == 0 {
            return Err(invalid("smtp.port", "must not be 0"));
        }
        if s.username.is_some() != s.password.is_some() {
            return Err(invalid(
                "smtp",
                "username and password must be set together (or neither, for an unauthenticated relay)",
            ));
        }
        if !s.from.contains('@') {
            return Err(invalid(
                "smtp.from",
                format!("{:?} must be an email address, optionally with a display name (Name <user@host>)", s.from),
            ));
        }
        require_positive("smtp.timeout", s.timeout)?;
        require_positive("smtp.retry_initial", s.retry_initial)?;
        require_positive("smtp.poll_interval", s.poll_interval)?;
        if s.retry_max < s.retry_initial {
            return Err(invalid(
                "smtp.retry_max",
                "must be at least smtp.retry_initial",
            ));
        }
        Ok(())
    }

    fn validate_tokens(&self) -> Result<(), ValidationError> {
        let t = &self.tokens;
        if t.issuer.is_empty() {
            return Err(invalid("tokens.issuer", "must not be empty"));
        }
        if t.audience.is_empty() {
            return Err(invalid("tokens.audience", "must not be empty"));
        }
        require_positive("tokens.access_ttl", t.access_ttl)?;
        require_positive("tokens.refresh_ttl", t.refresh_ttl)?;
        require_positive("tokens.verification_ttl", t.verification_ttl)?;
        require_positive("tokens.reset_ttl", t.reset_ttl)?;
        // RFC 7518 §3.2: an HS256 key must be at least as long as the hash.
        if t.hs256_secret
            .as_ref()
            .is_some_and(|s| s.expose().len() < 32)
        {
            return Err(invalid("tokens.hs256_secret", "must be at least 32 bytes"));
        }
        for (i, key) in t.signing_keys.iter().enumerate() {
            if key.kid.is_empty() {
                return Err(invalid(
                    format!("tokens.signing_keys[{i}].kid"),
                    "must not be empty",
                ));
            }
            if t.signing_keys[..i].iter().any(|k| k.kid == key.kid) {
                return Err(invalid(
                    format!("tokens.signing_keys[{i}].kid"),
                    format!("duplicate kid {:?}", key.kid),
                ));
            }
            if key.private_key_path.as_os_str().is_empty() {
                return Err(invalid(
                    format!("tokens.signing_keys[{i}].private_key_path"),
                    "must not be empty",
                ));
            }
        }
        if let Some(active) = &t.active_kid {
            if !t.signing_keys.iter().any(|k| &k.kid == active) {
                return Err(invalid(
                    "tokens.active_kid",
                    format!("{active:?} does not name a key in tokens.signing_keys"),
                ));
            }
        }
        if !is_token(&t.cookie.access_name) {
            return Err(invalid(
                "tokens.cookie.access_name",
                format!("{:?} is not a valid cookie name", t.cookie.access_name),
            ));
        }
        Ok(())
    }

    fn validate_accounts(&self) -> Result<(), ValidationError> {
        // 0 turns lockout off, and then the duration means nothing.
        if self.lockout.max_failures > 0 {
            require_positive("lockout.duration", self.lockout.duration)?;
        }
        if i32::try_from(self.lockout.max_failures).is_err() {
            return Err(invalid(
                "lockout.max_failures",
                format!("must be at most {}", i32::MAX),
            ));
        }
        let p = &self.password;
        if p.min_length == 0 {
            return Err(invalid("password.min_length", "must be at least 1"));
        }
        if p.max_bytes < p.min_length {
            return Err(invalid(
                "password.max_bytes",
                format!("must be at least password.min_length ({})", p.min_length),
            ));
        }
        if p.min_strength > 4 {
            return Err(invalid(
                "password.min_strength",
                format!(
                    "must be a zxcvbn score from 0 to 4 (got {})",
                    p.min_strength
                ),
            ));
        }
        let a = &p.argon2;
        if a.iterations == 0 {
            return Err(invalid("password.argon2.iterations", "must be at least 1"));
        }
        // Argon2's own limits (RFC 9106 §3.1), checked here so a bad value
        // fails at startup rather than on the first login.
        if !(1..=0x00ff_ffff).contains(&a.parallelism) {
            return Err(invalid(
                "password.argon2.parallelism",
                "must be between 1 and 16777215",
            ));
        }
        if u64::from(a.memory_kib) < 8 * u64::from(a.parallelism) {
            return Err(invalid(
                "password.argon2.memory_kib",
                format!(
                    "must be at least 8 × parallelism ({})",
                    8 * u64::from(a.parallelism)
                ),
            ));
        }
        Ok(())
    }

    fn validate_rate_limits(&self) -> Result<(), ValidationError> {
        let r = &self.rate_limits;
        for (name, limit) in [
            ("login", &r.login),
            ("register", &r.register),
            ("password_reset", &r.password_reset),
            ("default", &r.default),
            ("per_recipient", &r.per_recipient),
        ] {
            if limit.requests == 0 {
                return Err(invalid(
                    format!("rate_limits.{name}.requests"),
                    "must be greater than zero",
                ));
            }
            require_positive(&format!("rate_limits.{name}.per"), limit.per)?;
        }
        if !(1..=128).contains(&r.ipv6_prefix) {
            return Err(invalid(
                "rate_limits.ipv6_prefix",
                "must be between 1 and 128",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // In the real crate these resolve to <crate>/config/*.yaml as well.
    const SHIPPED_CONFIG: &str = include_str!("../config/gateway.yaml");
    const COMPOSE_CONFIG: &str = include_str!("../config/gateway.compose.yaml");

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_str(yaml, "test.yaml", no_env())
    }

    fn parse_env(yaml: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_yaml_str(yaml, "test.yaml", env(pairs))
    }

    fn defaults() -> Config {
        match parse("") {
            Ok(config) => config,
            Err(e) => panic!("empty document should be valid: {e}"),
        }
    }

    /// The key of the first validation error after `change`.
    fn invalid_key(change: impl FnOnce(&mut Config)) -> String {
        let mut config = defaults();
        change(&mut config);
        match config.validate() {
            Err(e) => e.key,
            Ok(()) => panic!("expected a validation error"),
        }
    }

    fn err(result: Result<Config, ConfigError>) -> ConfigError {
        match result {
            Err(e) => e,
            Ok(_) => panic!("expected an error"),
        }
    }

    #[test]
    fn lockout_max_failures_zero_turns_lockout_off_whatever_the_duration() {
        let config = match parse("lockout:\n  max_failures: 0\n  duration: 0s\n") {
            Ok(config) => config,
            Err(e) => panic!("max_failures 0 needs no duration: {e}"),
        };
        assert_eq!(config.lockout.max_failures, 0);
    }

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
        assert_eq!(empty.tokens.cookie.access_name, "portcullis_access");
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

    #[test]
    fn duration_and_size_formats() {
        assert_eq!(duration::parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration::parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration::parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration::parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(duration::parse("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(duration::parse("30"), Ok(Duration::from_secs(30)));
        for bad in ["", "s", "10x", "1.5s", "-1s", "99999999999999999999d"] {
            assert!(duration::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(size::parse("16384"), Ok(16384));
        assert_eq!(size::parse("512KiB"), Ok(512 * 1024));
        assert_eq!(size::parse("10MiB"), Ok(10 << 20));
        assert_eq!(size::parse("1GiB"), Ok(1 << 30));
        for bad in ["", "ten", "10MB", "1.5MiB", "99999999999TiB"] {
            assert!(size::parse(bad).is_err(), "{bad:?}");
        }
        let config = parse("server:\n  max_header_bytes: 32KiB\n  drain_timeout: 45\n").unwrap();
        assert_eq!(config.server.max_header_bytes, 32 * 1024);
        assert_eq!(config.server.drain_timeout, Duration::from_secs(45));
    }

    // --- environment overrides -----------------------------------------------

    #[test]
    fn env_overrides_a_string() {
        let config =
            parse_env("", &[("PORTCULLIS_DATABASE__URL", "postgres://u:p#w@db/x")]).unwrap();
        // The `#` would start a YAML comment; the value must survive verbatim.
        assert_eq!(config.database.url.expose(), "postgres://u:p#w@db/x");
        let config = parse_env("", &[("PORTCULLIS_TOKENS__ISSUER", "12345")]).unwrap();
        assert_eq!(config.tokens.issuer, "12345");
        let config = parse_env("", &[("PORTCULLIS_TOKENS__ISSUER", "0x1F")]).unwrap();
        assert_eq!(config.tokens.issuer, "0x1F");
        let secret = "0123456789abcdef0123456789abcdef";
        let config = parse_env("", &[("PORTCULLIS_TOKENS__HS256_SECRET", secret)]).unwrap();
        assert_eq!(
            config.tokens.hs256_secret.as_ref().map(Secret::expose),
            Some(secret)
        );
    }

    #[test]
    fn env_overrides_a_number_a_bool_and_null() {
        let config = parse_env(
            "server:\n  max_connections: 5\n",
            &[
                ("PORTCULLIS_SERVER__MAX_CONNECTIONS", "8443"),
                ("PORTCULLIS_SERVER__ALLOW_PATH_PARAMETERS", "true"),
                ("PORTCULLIS_SERVER__HTTP_LISTEN", "null"),
                ("PORTCULLIS_SERVER__MAX_BODY_BYTES", "1MiB"),
                ("PORTCULLIS_TELEMETRY__LOG_FORMAT", "json"),
            ],
        )
        .unwrap();
        assert_eq!(config.server.max_connections, 8443);
        assert!(config.server.allow_path_parameters);
        assert_eq!(config.server.http_listen, None);
        assert_eq!(config.server.max_body_bytes, 1 << 20);
        assert_eq!(config.telemetry.log_format, LogFormat::Json);
    }

    #[test]
    fn env_overrides_a_nested_key_creating_sections() {
        let config = parse_env(
            "",
            &[
                ("PORTCULLIS_SERVER__TLS__CERT_PATH", "/etc/tls/cert.pem"),
                ("PORTCULLIS_SERVER__TLS__KEY_PATH", "/etc/tls/key.pem"),
                (
                    "PORTCULLIS_CORS__ALLOWED_ORIGINS",
                    "[https://a.example.com, https://b.example.com]",
                ),
                ("UNRELATED", "ignored"),
                ("PORTCULLIS_CONFIG", "/etc/portcullis/gateway.yaml"),
            ],
        )
        .unwrap();
        assert_eq!(
            config.server.tls.cert_path,
            Some(PathBuf::from("/etc/tls/cert.pem"))
        );
        assert_eq!(
            config.server.tls.key_path,
            Some(PathBuf::from("/etc/tls/key.pem"))
        );
        assert_eq!(
            config.cors.allowed_origins,
            ["https://a.example.com", "https://b.example.com"]
        );
        // The file's `tls: null` section is replaced by a mapping too.
        let config = parse_env(
            "server:\n  tls:\n",
            &[("PORTCULLIS_SERVER__TLS__HANDSHAKE_TIMEOUT", "3s")],
        )
        .unwrap();
        assert_eq!(config.server.tls.handshake_timeout, Duration::from_secs(3));
    }

    #[test]
    fn env_overrides_a_sequence_element() {
        let config = parse_env(
            "",
            &[("PORTCULLIS_UPSTREAMS__0__URL", "http://10.0.0.5:9000/api")],
        )
        .unwrap();
        assert_eq!(config.upstreams[0].name, "app");
        assert_eq!(config.upstreams[0].url, "http://10.0.0.5:9000/api");
        // Editing an element of a list the file leaves at its default edits
        // the default list, so the rest of the element keeps its defaults.
        let config = parse_env("", &[("PORTCULLIS_UPSTREAMS__0__NAME", "app")]).unwrap();
        assert_eq!(config, Config::default());
        let config = parse_env(
            "",
            &[(
                "PORTCULLIS_CORS__ALLOWED_ORIGINS__0",
                "https://app.example.com",
            )],
        )
        .unwrap();
        assert_eq!(config.cors.allowed_origins, ["https://app.example.com"]);
        let config = parse_env(
            "",
            &[("PORTCULLIS_HEADERS__STRIP_REQUEST__8", "x-tenant-*")],
        )
        .unwrap();
        assert_eq!(config.headers.strip_request.len(), 9);
        assert_eq!(config.headers.strip_request[0], "x-auth-*");
        let config = parse_env(
            "",
            &[(
                "PORTCULLIS_UPSTREAMS",
                "[{name: one, url: \"http://one:1\"}]",
            )],
        )
        .unwrap();
        assert_eq!(
            config.upstreams,
            [UpstreamConfig::new("one", Uri::from_static("http://one:1"))]
        );
        // The next index appends, one field at a time.
        let config = parse_env(
            "",
            &[
                ("PORTCULLIS_UPSTREAMS__1__URL", "http://billing:8000"),
                ("PORTCULLIS_UPSTREAMS__1__NAME", "billing"),
            ],
        )
        .unwrap();
        assert_eq!(config.upstreams.len(), 2);
        assert_eq!(config.upstreams[1].name, "billing");
        let e = err(parse_env(
            "",
            &[("PORTCULLIS_UPSTREAMS__5__URL", "http://x:1")],
        ));
        assert!(
            e.to_string()
                .starts_with("environment PORTCULLIS_UPSTREAMS__5__URL: index 5 is out of range"),
            "{e}"
        );
    }

    #[test]
    fn env_unknown_key_is_an_error_naming_the_variable() {
        let e = err(parse_env(
            "",
            &[("PORTCULLIS_SERVER__HTTPS_LISTENER", "0.0.0.0:1")],
        ));
        let text = e.to_string();
        assert!(
            text.starts_with("environment PORTCULLIS_SERVER__HTTPS_LISTENER: unknown field `https_listener`, expected one of"),
            "{text}"
        );
        let text = err(parse_env(
            "",
            &[("PORTCULLIS_DATABASE_URL", "postgres://x")],
        ))
        .to_string();
        assert!(
            text.starts_with("environment PORTCULLIS_DATABASE_URL: unknown field `database_url`"),
            "{text}"
        );
        let text = err(parse_env("", &[("PORTCULLIS_SERVER____TLS", "x")])).to_string();
        assert!(
            text.starts_with("environment PORTCULLIS_SERVER____TLS: "),
            "{text}"
        );
        // Blame lands on the culprit, not on other variables that were fine.
        let text = err(parse_env(
            "",
            &[
                ("PORTCULLIS_SERVER__MAX_CONNECTIONS", "10"),
                ("PORTCULLIS_SERVER__NOPE", "1"),
                ("PORTCULLIS_SERVER__TLS__HANDSHAKE_TIMEOUT", "1s"),
            ],
        ))
        .to_string();
        assert!(
            text.starts_with("environment PORTCULLIS_SERVER__NOPE: unknown field `nope`"),
            "{text}"
        );
    }

    #[test]
    fn env_bad_value_is_an_error_naming_the_variable() {
        let e = err(parse_env(
            "",
            &[("PORTCULLIS_SERVER__MAX_BODY_BYTES", "ten")],
        ));
        assert!(
            matches!(&e, ConfigError::Env { variable, .. } if variable == "PORTCULLIS_SERVER__MAX_BODY_BYTES")
        );
        let text = e.to_string();
        assert!(
            text.starts_with("environment PORTCULLIS_SERVER__MAX_BODY_BYTES: invalid size \"ten\""),
            "{text}"
        );
        assert!(!text.contains(" at line "), "{text}");
        let text = err(parse_env(
            "",
            &[
                ("PORTCULLIS_SERVER__MAX_CONNECTIONS", "-3"),
                ("PORTCULLIS_TELEMETRY__ACCESS_LOG", "false"),
            ],
        ))
        .to_string();
        assert!(text.starts_with("environment PORTCULLIS_SERVER__MAX_CONNECTIONS: invalid type: integer `-3`, expected usize"), "{text}");
        // A file error still wins and still has its position.
        let text = err(parse_env(
            "server:\n  bogus: 1\n",
            &[("PORTCULLIS_SERVER__MAX_CONNECTIONS", "1")],
        ))
        .to_string();
        assert!(text.starts_with("test.yaml:2:3: "), "{text}");
    }

    #[test]
    fn env_value_that_breaks_a_rule_is_blamed_on_the_variable() {
        let text = err(parse_env(
            "",
            &[("PORTCULLIS_SERVER__PUBLIC_URL", "http://example.com")],
        ))
        .to_string();
        assert!(
            text.starts_with("environment PORTCULLIS_SERVER__PUBLIC_URL: server.public_url: must be an https:// URL"),
            "{text}"
        );
        let text = err(parse("server:\n  public_url: http://example.com\n")).to_string();
        assert!(
            text.starts_with("test.yaml: server.public_url: must be an https:// URL"),
            "{text}"
        );
    }

    // --- validation ------------------------------------------------------------

    #[test]
    fn public_url_must_be_an_https_origin() {
        assert_eq!(
            invalid_key(|c| c.server.public_url = "http://example.com".into()),
            "server.public_url"
        );
        assert_eq!(
            invalid_key(|c| c.server.public_url = "https://example.com/app".into()),
            "server.public_url"
        );
        assert_eq!(
            invalid_key(|c| c.server.public_url = "https://example.com?x=1".into()),
            "server.public_url"
        );
        assert_eq!(
            invalid_key(|c| c.server.public_url = "https://u:p@example.com".into()),
            "server.public_url"
        );
        assert_eq!(
            invalid_key(|c| c.server.public_url = "https://example.com:99999".into()),
            "server.public_url"
        );
        assert_eq!(
            invalid_key(|c| c.server.public_url = "example.com".into()),
            "server.public_url"
        );
        let config = parse("server:\n  public_url: https://gw.example.com:8443/\n").unwrap();
        assert_eq!(config.server.public_url, "https://gw.example.com:8443");
    }

    #[test]
    fn trusted_proxies_accept_bare_ips_and_reject_bad_cidrs() {
        let config =
            parse("server:\n  trusted_proxies: [10.0.0.1, \"::1\", 192.168.0.0/16, 10.1.2.3/8]\n")
                .unwrap();
        let nets: Vec<String> = config
            .server
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            nets,
            ["10.0.0.1/32", "::1/128", "192.168.0.0/16", "10.0.0.0/8"]
        );
        let text = err(parse(
            "server:\n  trusted_proxies:\n    - 10.0.0.0/8\n    - 10.0.0.0/33\n",
        ))
        .to_string();
        assert!(
            text.starts_with(
                "test.yaml:4:7: server.trusted_proxies[1]: invalid trusted proxy \"10.0.0.0/33\""
            ),
            "{text}"
        );
        assert!(parse("server:\n  trusted_proxies: [localhost]\n").is_err());
    }

    #[test]
    fn upstream_rules() {
        let yaml = "upstreams:\n  - { name: app, url: \"http://a:1\" }\n  - { name: app, url: \"http://b:1\" }\n";
        let text = err(parse(yaml)).to_string();
        assert_eq!(
            text,
            "test.yaml: upstreams[1].name: duplicate upstream name \"app\""
        );
        let text = err(parse(
            "upstreams:\n  - { name: app, url: \"https://a:1\" }\n",
        ))
        .to_string();
        assert!(
            text.starts_with("test.yaml: upstreams[0].url: https upstreams are not supported yet"),
            "{text}"
        );
        assert_eq!(invalid_key(|c| c.upstreams.clear()), "upstreams");
        assert_eq!(
            invalid_key(|c| c.upstreams[0].name = "App".into()),
            "upstreams[0].name"
        );
        assert_eq!(
            invalid_key(|c| c.upstreams[0].url = Uri::from_static("ftp://a/")),
            "upstreams[0].url"
        );
        assert_eq!(
            invalid_key(|c| c.upstreams[0].url = Uri::from_static("a:80")),
            "upstreams[0].url"
        );
        assert_eq!(
            invalid_key(|c| c.upstreams[0].url = Uri::from_static("http://a/x?y=1")),
            "upstreams[0].url"
        );
        assert_eq!(
            invalid_key(|c| c.upstreams[0].timeout = Duration::ZERO),
            "upstreams[0].timeout"
        );
        // A path prefix is fine; a missing url is a parse error.
        let config = parse("upstreams:\n  - { name: api, url: \"http://api:8000/v1\" }\n").unwrap();
        assert_eq!(config.upstreams[0].url.path(), "/v1");
        assert_eq!(config.upstreams[0].connect_timeout, Duration::from_secs(5));
        assert!(parse("upstreams:\n  - { name: api, url: \"http://api/#x\" }\n").is_err());
        assert!(err(parse("upstreams:\n  - { name: api }\n"))
            .to_string()
            .contains("missing field `url`"));
    }

    #[test]
    fn cors_rules() {
        let text = err(parse(
            "cors:\n  allowed_origins: [\"*\"]\n  allow_credentials: true\n",
        ))
        .to_string();
        assert!(
            text.starts_with("test.yaml: cors.allow_credentials: cannot be true"),
            "{text}"
        );
        assert!(parse("cors:\n  allowed_origins: [\"*\"]\n").is_ok());
        assert!(parse("cors:\n  allowed_origins: [https://app.example.com, \"http://localhost:5173\"]\n  allow_credentials: true\n").is_ok());
        assert_eq!(
            invalid_key(|c| c.cors.allowed_origins = vec!["https://a.com/".into()]),
            "cors.allowed_origins[0]"
        );
        assert_eq!(
            invalid_key(|c| c.cors.allowed_origins = vec!["a.com".into()]),
            "cors.allowed_origins[0]"
        );
        assert_eq!(
            invalid_key(|c| c.cors.allowed_origins = vec!["*".into(), "https://a.com".into()]),
            "cors.allowed_origins"
        );
        assert_eq!(
            invalid_key(|c| c.cors.allowed_methods.push("get".into())),
            "cors.allowed_methods[6]"
        );
        assert_eq!(
            invalid_key(|c| c.cors.allowed_headers.push("bad header".into())),
            "cors.allowed_headers[2]"
        );
    }

    #[test]
    fn token_rules() {
        let text = err(parse("tokens:\n  hs256_secret: too-short\n")).to_string();
        assert_eq!(
            text,
            "test.yaml: tokens.hs256_secret: must be at least 32 bytes"
        );
        assert!(!text.contains("too-short"));
        let keys = "tokens:\n  signing_keys:\n    - { kid: a, algorithm: EdDSA, private_key_path: /k/a.pem }\n    - { kid: b, algorithm: ES256, private_key_path: /k/b.pem }\n";
        let config = parse(&format!("{keys}  active_kid: b\n")).unwrap();
        assert_eq!(config.tokens.signing_keys[0].algorithm, KeyAlgorithm::EdDsa);
        assert_eq!(config.tokens.signing_keys[1].algorithm, KeyAlgorithm::Es256);
        let text = err(parse(&format!("{keys}  active_kid: c\n"))).to_string();
        assert_eq!(
            text,
            "test.yaml: tokens.active_kid: \"c\" does not name a key in tokens.signing_keys"
        );
        assert_eq!(
            invalid_key(|c| c.tokens.active_kid = Some("x".into())),
            "tokens.active_kid"
        );
        let dup = keys.replace("kid: b", "kid: a");
        assert_eq!(
            err(parse(&dup)).to_string(),
            "test.yaml: tokens.signing_keys[1].kid: duplicate kid \"a\""
        );
        assert!(parse(
            "tokens:\n  signing_keys:\n    - { kid: a, algorithm: RS256, private_key_path: /k }\n"
        )
        .is_err());
        assert_eq!(
            invalid_key(|c| c.tokens.cookie.access_name = "a b".into()),
            "tokens.cookie.access_name"
        );
    }

    #[test]
    fn header_values_must_be_legal() {
        let text = err(parse("headers:\n  server: \"portcullis\\r\\nX-Evil: 1\"\n")).to_string();
        assert!(text.starts_with("test.yaml: headers.server: "), "{text}");
        assert!(!text.contains('\n') && !text.contains('\r'), "{text:?}");
        assert_eq!(
            invalid_key(|c| c.headers.content_security_policy = "default-src\n'self'".into()),
            "headers.content_security_policy"
        );
        // Empty means "do not send".
        assert!(parse("headers:\n  strict_transport_security: \"\"\n").is_ok());
        assert_eq!(
            invalid_key(|c| c.headers.strip_request.push("x-a*b".into())),
            "headers.strip_request[8]"
        );
        assert_eq!(
            invalid_key(|c| c.headers.strip_request.push("*".into())),
            "headers.strip_request[8]"
        );
        assert_eq!(
            invalid_key(|c| c.headers.strip_request.push(String::new())),
            "headers.strip_request[8]"
        );
    }

    #[test]
    fn remaining_rules() {
        assert_eq!(
            invalid_key(|c| c.server.tls.cert_path = Some("/c.pem".into())),
            "server.tls"
        );
        assert_eq!(
            invalid_key(|c| c.server.max_header_bytes = 512),
            "server.max_header_bytes"
        );
        assert_eq!(
            invalid_key(|c| c.server.max_header_bytes = 2 << 20),
            "server.max_header_bytes"
        );
        assert_eq!(
            invalid_key(|c| c.server.max_body_bytes = 0),
            "server.max_body_bytes"
        );
        assert_eq!(
            invalid_key(|c| c.server.max_connections = 0),
            "server.max_connections"
        );
        assert_eq!(
            invalid_key(|c| c.lockout.duration = Duration::ZERO),
            "lockout.duration"
        );
        assert_eq!(
            invalid_key(|c| c.lockout.max_failures = u32::MAX),
            "lockout.max_failures"
        );
        assert_eq!(
            invalid_key(|c| c.server.http2_max_concurrent_streams = 0),
            "server.http2_max_concurrent_streams"
        );
        assert_eq!(
            invalid_key(|c| c.server.websocket_recheck_interval = Duration::ZERO),
            "server.websocket_recheck_interval"
        );
        assert_eq!(
            invalid_key(|c| c.server.ops_listen = "0.0.0.0:8443".parse().unwrap()),
            "server.ops_listen"
        );
        assert_eq!(
            invalid_key(|c| c.rate_limits.login.requests = 0),
            "rate_limits.login.requests"
        );
        assert_eq!(
            invalid_key(|c| c.rate_limits.default.per = Duration::ZERO),
            "rate_limits.default.per"
        );
        assert_eq!(
            invalid_key(|c| c.rate_limits.per_recipient.requests = 0),
            "rate_limits.per_recipient.requests"
        );
        assert_eq!(
            invalid_key(|c| c.rate_limits.ipv6_prefix = 0),
            "rate_limits.ipv6_prefix"
        );
        assert_eq!(
            invalid_key(|c| c.rate_limits.ipv6_prefix = 129),
            "rate_limits.ipv6_prefix"
        );
        assert_eq!(
            invalid_key(|c| c.database.url = Secret::new("mysql://x")),
            "database.url"
        );
        assert_eq!(
            invalid_key(|c| c.redis.url = Secret::new("http://x")),
            "redis.url"
        );
        assert_eq!(invalid_key(|c| c.smtp.username = Some("u".into())), "smtp");
        assert_eq!(
            invalid_key(|c| c.password.argon2.memory_kib = 4),
            "password.argon2.memory_kib"
        );
        assert_eq!(
            invalid_key(|c| c.password.max_bytes = 4),
            "password.max_bytes"
        );
        // Port 0 (ephemeral, as tests use) never collides.
        let mut config = defaults();
        for addr in [
            &mut config.server.https_listen,
            &mut config.server.ops_listen,
        ] {
            *addr = "127.0.0.1:0".parse().unwrap();
        }
        config.server.http_listen = Some("127.0.0.1:0".parse().unwrap());
        assert!(config.validate().is_ok());
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
