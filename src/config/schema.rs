//! The schema of `gateway.yaml`: one serde struct per section, each with the
//! defaults an empty file gets, and the field deserializers that turn text
//! into typed values (URLs, networks) while the YAML position is still known.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use ipnet::IpNet;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::units::{duration, size};

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
    /// On shutdown, how long the gateway goes on accepting connections after `/readyz` has
    /// turned 503, so that a balancer polling it stops sending new ones before the listener
    /// closes (a connection the kernel completes as it closes would be reset).
    #[serde(deserialize_with = "duration::deserialize")]
    pub drain_delay: Duration,
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
            drain_delay: Duration::ZERO,
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
    /// The single Redis; unused when `cluster_nodes` names a cluster.
    pub url: Secret,
    /// Seed nodes of a Redis Cluster (`redis://host:port`), from which the client learns the
    /// others. Empty: the single Redis at `url`. Secrets, as they may carry a password.
    pub cluster_nodes: Vec<Secret>,
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
            cluster_nodes: Vec::new(),
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
    /// Cookie mode: the session cookies of contract 7 (`access::ACCESS_COOKIE`,
    /// `access::REFRESH_COOKIE`) are set on sign-in and accepted on requests. On by default:
    /// it is what lets browsers sign in at the gateway.
    pub enabled: bool,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig { enabled: true }
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
    /// How long after a refresh token was rotated the gateway's silent refresh still takes
    /// it for an access token of its live session instead of as reuse (requests of one
    /// browser racing on one expired cookie). 0 turns the grace off.
    #[serde(deserialize_with = "duration::deserialize")]
    pub refresh_reuse_grace: Duration,
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
    /// The `realm` of `WWW-Authenticate` on the gateway's 401s and scope 403s; `None` is
    /// the host of `server.public_url` ([`Config::realm`](super::Config::realm)).
    pub realm: Option<String>,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            issuer: "portcullis".to_owned(),
            audience: "portcullis".to_owned(),
            access_ttl: Duration::from_secs(30 * 60),
            refresh_ttl: Duration::from_secs(7 * 24 * 3600),
            refresh_reuse_grace: Duration::from_secs(10),
            verification_ttl: Duration::from_secs(24 * 3600),
            reset_ttl: Duration::from_secs(3600),
            leeway: Duration::ZERO,
            hs256_secret: None,
            signing_keys: Vec::new(),
            active_kid: None,
            cookie: CookieConfig::default(),
            realm: None,
        }
    }
}

/// What upstreams are told about the caller besides the `X-Auth-*` headers (contract 8).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// `X-Auth-Assertion` on every forwarded request of a signed-in caller: a JWT signed with
    /// the active asymmetric key. Off by default; needs a key in `tokens.signing_keys`.
    pub assertion: bool,
    /// How long an assertion is valid; at most a minute.
    #[serde(deserialize_with = "duration::deserialize")]
    pub assertion_ttl: Duration,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            assertion: false,
            assertion_ttl: Duration::from_secs(60),
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
    /// What the failures are counted against and the lock applies to.
    pub key: LockoutKey,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        LockoutConfig {
            max_failures: 5,
            duration: Duration::from_secs(30 * 60),
            key: LockoutKey::Account,
        }
    }
}

/// `lockout.key`: what failed logins are counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockoutKey {
    /// The account: failures from every address add up and the lock holds for all of them.
    /// Stops guessing spread over many addresses; anyone can lock the owner out.
    Account,
    /// The account as used from one client address (the address rate limits count by):
    /// each pair has its own count and lock. No one elsewhere can lock the owner out; a
    /// guesser with many addresses gets `max_failures` guesses from each.
    AccountAndIp,
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
    /// Sign-ins (and other hashing requests) that may wait for a hashing thread; the next one
    /// is answered 503 at once. 0 means 64 per hashing thread.
    pub max_queued_hashes: usize,
    /// The hashing threads' nice value (0-19): above the forwarding threads' 0, so that a
    /// login flood leaves forwarded requests their cores.
    pub hashing_nice: i32,
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
            max_queued_hashes: 0,
            hashing_nice: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PasswordPreset {
    Default,
    Nist,
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
    /// Failed logins from one client address across all accounts (password spraying): over
    /// it, the client's logins are refused with 429 before any password is verified. Off
    /// (`None`) unless set: the contract promises no such limit, and `login` already bounds
    /// each client's attempts.
    pub login_failures_per_client: Option<RateLimit>,
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
            login_failures_per_client: None,
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

/// The sign-in pages (contract 7).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PagesConfig {
    /// The name the pages show in their title and header.
    pub product_name: String,
    /// An image shown instead of the name: a path on the gateway's own origin (`/logo.svg`,
    /// served by the upstream), so the pages load nothing from elsewhere and the default
    /// CSP (`default-src 'self'`) allows it.
    pub logo_url: Option<String>,
}

impl Default for PagesConfig {
    fn default() -> Self {
        PagesConfig {
            product_name: "Portcullis".to_owned(),
            logo_url: None,
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
    // One element at a time, so serde_norway reports the failing element's
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
pub(super) fn url_tail(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme
        .find(['/', '?', '#'])
        .map_or("", |at| &after_scheme[at..])
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

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
}
