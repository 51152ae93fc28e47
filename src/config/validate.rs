//! Validation: the semantic rules of `gateway.yaml` that types cannot
//! express (URL shapes, ranges, cross-field rules), each error naming its key
//! by dotted path. Where the proxy needs parsed values (CORS), the rules
//! produce them, so no other module checks the same settings again.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Uri};

use super::schema::url_tail;
use super::{one_line, Config, CorsConfig};

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

/// Checks a URL's authority: present, a host, a valid port, no userinfo.
/// Returns the parsed URI for the caller's scheme and path rules.
/// `rate_limits.login_failures_per_client` is an exact log: this many entries a client at most.
const MAX_LOGIN_FAILURES_PER_CLIENT: u32 = 1000;

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

/// A path on this origin: one leading `/` (not `//`, not `/\`), visible ASCII only, no
/// backslash, no escape, no quote. What the pages link to from the logo's `src`.
fn is_own_origin_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    !rest.starts_with('/')
        && path.len() <= 2048
        && path.bytes().all(|byte| {
            byte.is_ascii_graphic()
                && !matches!(byte, b'\\' | b'%' | b'"' | b'\'' | b'<' | b'>' | b'`')
        })
}

/// A Redis Cluster seed node: `redis://[user:password@]host[:port][/0]`. Never echoed: it may
/// carry a password.
fn check_cluster_node(text: &str) -> Result<(), &'static str> {
    const SHAPE: &str = "must be a redis://host:port URL";
    if !text.starts_with("redis://") {
        return Err("must start with redis://");
    }
    if text.contains(['#', '?']) {
        return Err(SHAPE);
    }
    let uri = text.parse::<Uri>().map_err(|_| SHAPE)?;
    let Some(authority) = uri.authority() else {
        return Err(SHAPE);
    };
    if authority.host().is_empty() {
        return Err("has no host");
    }
    let host_and_port = authority
        .as_str()
        .rsplit_once('@')
        .map_or(authority.as_str(), |(_, rest)| rest);
    let after_host = host_and_port
        .rsplit_once(']')
        .map_or(host_and_port, |(_, rest)| rest);
    if after_host.contains(':') && authority.port_u16().is_none_or(|port| port == 0) {
        return Err("has an invalid port");
    }
    if !matches!(uri.path(), "" | "/" | "/0") {
        return Err("must not name a database: a cluster has only database 0");
    }
    Ok(())
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
        self.cors.policy()?;
        self.validate_stores()?;
        self.validate_smtp()?;
        self.validate_tokens()?;
        self.validate_identity()?;
        self.validate_accounts()?;
        self.validate_rate_limits()?;
        if self.policy.path.as_os_str().is_empty() {
            return Err(invalid("policy.path", "must not be empty"));
        }
        if self.telemetry.log_level.trim().is_empty() {
            return Err(invalid("telemetry.log_level", "must not be empty"));
        }
        self.validate_pages()
    }

    fn validate_pages(&self) -> Result<(), ValidationError> {
        let name = &self.pages.product_name;
        if name.trim().is_empty()
            || name.chars().count() > 100
            || name.chars().any(char::is_control)
        {
            return Err(invalid(
                "pages.product_name",
                "must be 1 to 100 characters without control characters",
            ));
        }
        if let Some(logo) = &self.pages.logo_url {
            if !is_own_origin_path(logo) {
                return Err(invalid(
                    "pages.logo_url",
                    "must be a path on the gateway's own origin, such as /logo.svg",
                ));
            }
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
        for (index, node) in self.redis.cluster_nodes.iter().enumerate() {
            check_cluster_node(node.expose())
                .map_err(|message| invalid(format!("redis.cluster_nodes[{index}]"), message))?;
        }
        if !self.redis.cluster_nodes.is_empty() && self.redis.key_prefix.contains(['{', '}']) {
            // The first `{...}` in a key is its hash tag: one in the prefix would put every key
            // in one slot, and the keys' own tags would no longer say which keys go together.
            return Err(invalid(
                "redis.key_prefix",
                "must not contain { or } with redis.cluster_nodes: braces in a key name its hash slot",
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
        // The grace is how long a stolen refresh token goes unnoticed after a rotation; it
        // exists for requests racing one page load, which a minute more than covers.
        if t.refresh_reuse_grace > Duration::from_secs(60) {
            return Err(invalid(
                "tokens.refresh_reuse_grace",
                "must be at most 1m (0 turns it off)",
            ));
        }
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
        // Written into a quoted string of `WWW-Authenticate` (RFC 9110 §11.2): no quote,
        // backslash or control character can end it early or forge another parameter.
        if let Some(realm) = &t.realm {
            if realm.is_empty()
                || realm.len() > 200
                || realm
                    .chars()
                    .any(|c| c == '"' || c == '\\' || !(' '..='~').contains(&c))
            {
                return Err(invalid(
                    "tokens.realm",
                    "must be 1 to 200 printable ASCII characters without \" or \\",
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
        Ok(())
    }

    fn validate_identity(&self) -> Result<(), ValidationError> {
        let identity = &self.identity;
        // Upstreams hold on to nothing longer than this: a leaked assertion is good for a
        // minute at most (contract 8).
        if identity.assertion_ttl.is_zero() || identity.assertion_ttl > Duration::from_secs(60) {
            return Err(invalid(
                "identity.assertion_ttl",
                "must be more than 0s and at most 1m",
            ));
        }
        // Only a public key lets an upstream verify without being able to sign: with an
        // HS256 secret alone, every upstream that verifies could forge any identity.
        if identity.assertion && self.tokens.signing_keys.is_empty() {
            return Err(invalid(
                "identity.assertion",
                "needs an asymmetric signing key (EdDSA or ES256) in tokens.signing_keys; \
                 an HS256 secret cannot sign assertions upstreams verify",
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
        if !(0..=19).contains(&p.hashing_nice) {
            // Negative values would need privileges and would put hashing ahead of forwarding.
            return Err(invalid("password.hashing_nice", "must be between 0 and 19"));
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
        ]
        .into_iter()
        .chain(
            r.login_failures_per_client
                .as_ref()
                .map(|limit| ("login_failures_per_client", limit)),
        ) {
            if limit.requests == 0 {
                return Err(invalid(
                    format!("rate_limits.{name}.requests"),
                    "must be greater than zero",
                ));
            }
            require_positive(&format!("rate_limits.{name}.per"), limit.per)?;
        }
        // Kept as an exact log of failure times, read whole by each login.
        if r.login_failures_per_client
            .as_ref()
            .is_some_and(|limit| limit.requests > MAX_LOGIN_FAILURES_PER_CLIENT)
        {
            return Err(invalid(
                "rate_limits.login_failures_per_client.requests",
                format!("must be at most {MAX_LOGIN_FAILURES_PER_CLIENT}"),
            ));
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

/// The CORS settings checked and parsed: what `proxy::cors` serves, so the
/// gateway has one set of CORS rules, these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsPolicy {
    /// The origins listed by name, in [`normalize_origin`] form.
    pub origins: Vec<Box<str>>,
    /// `allowed_origins: ["*"]`; never together with credentials.
    pub any_origin: bool,
    pub allow_credentials: bool,
    /// Without duplicates; the CORS-safelisted GET, HEAD and POST when the
    /// list is empty.
    pub methods: Vec<Method>,
    /// Lower-case (as [`HeaderName`] keeps them), without duplicates.
    pub allowed_headers: Vec<HeaderName>,
    /// Lower-case, without duplicates.
    pub expose_headers: Vec<HeaderName>,
    pub max_age: Duration,
}

/// Methods a browser may send cross-origin without a preflight.
const SAFELISTED_METHODS: [Method; 3] = [Method::GET, Method::HEAD, Method::POST];

impl CorsConfig {
    /// Checks the settings and parses them into the values the proxy uses.
    /// [`Config::validate`] runs this, so a configuration that loaded always
    /// has a policy; the proxy asks for it again rather than keep a copy
    /// that could drift from the settings.
    pub fn policy(&self) -> Result<CorsPolicy, ValidationError> {
        let c = self;
        let wildcard = c.allowed_origins.iter().any(|o| o == "*");
        if wildcard && c.allowed_origins.len() > 1 {
            return Err(invalid(
                "cors.allowed_origins",
                "\"*\" allows every origin, so it must be the only entry",
            ));
        }
        // Echoing any origin with credentials would let every web site make
        // authenticated requests as the visitor.
        if wildcard && c.allow_credentials {
            return Err(invalid(
                "cors.allow_credentials",
                "cannot be true when cors.allowed_origins is \"*\" (browsers refuse credentials for a wildcard origin); list the origins instead",
            ));
        }
        let mut origins = Vec::with_capacity(c.allowed_origins.len());
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
            // Also refuses what a URL may hold but an origin may not, such
            // as a `*` in the host.
            let normal = normalize_origin(origin).map_err(|m| invalid(&key, m))?;
            origins.push(normal.into_boxed_str());
        }
        let mut methods = Vec::with_capacity(c.allowed_methods.len());
        for (i, method) in c.allowed_methods.iter().enumerate() {
            let key = format!("cors.allowed_methods[{i}]");
            let Ok(parsed) = Method::from_bytes(method.as_bytes()) else {
                return Err(invalid(
                    key,
                    format!("{method:?} is not a valid HTTP method"),
                ));
            };
            // Methods are case-sensitive; `get` would never match a request.
            if method.bytes().any(|b| b.is_ascii_lowercase()) {
                return Err(invalid(
                    key,
                    format!("{method:?} must be upper-case (HTTP methods are case-sensitive)"),
                ));
            }
            // A token to HTTP, but Access-Control-Allow-Methods: * means
            // "any method" only without credentials; name them instead.
            if method == "*" {
                return Err(invalid(key, "\"*\" is not supported; list the methods"));
            }
            if !methods.contains(&parsed) {
                methods.push(parsed);
            }
        }
        if methods.is_empty() {
            methods = SAFELISTED_METHODS.to_vec();
        }
        let allowed_headers = header_names("allowed_headers", &c.allowed_headers)?;
        let expose_headers = header_names("expose_headers", &c.expose_headers)?;
        Ok(CorsPolicy {
            origins,
            any_origin: wildcard,
            allow_credentials: c.allow_credentials,
            methods,
            allowed_headers,
            expose_headers,
            max_age: c.max_age,
        })
    }
}

/// Parses `cors.<field>`, dropping repeats (names compare lower-cased).
fn header_names(field: &str, names: &[String]) -> Result<Vec<HeaderName>, ValidationError> {
    let mut parsed: Vec<HeaderName> = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let key = || format!("cors.{field}[{i}]");
        // `*` means "any" only without credentials, and never for
        // Authorization; name the headers instead.
        if name == "*" {
            return Err(invalid(
                key(),
                "\"*\" is not supported; list the header names",
            ));
        }
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            return Err(invalid(
                key(),
                format!("{name:?} is not a valid header name"),
            ));
        };
        if !parsed.contains(&header) {
            parsed.push(header);
        }
    }
    Ok(parsed)
}

/// Checks `scheme://host[:port]` and drops a default port, since browsers
/// never send one in Origin and a configured `:443` would otherwise never
/// match. Lower-cases the rest, so equal origins compare equal as strings.
///
/// The form [`CorsPolicy::origins`] are kept in; the proxy puts a request's
/// `Origin` through it too before comparing.
pub fn normalize_origin(origin: &str) -> Result<String, String> {
    let invalid = |why: &str| Err(format!("invalid allowed origin {origin:?}: {why}"));
    if origin.eq_ignore_ascii_case("null") {
        return invalid(
            "\"null\" is sent by sandboxed and file: documents and must not be trusted",
        );
    }
    let Some((scheme, host)) = origin.split_once("://") else {
        return invalid("expected scheme://host[:port]");
    };
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return invalid("bad scheme");
    }
    if host.is_empty()
        || host
            .bytes()
            .any(|b| b"/?#*@".contains(&b) || !b.is_ascii_graphic())
    {
        return invalid("expected scheme://host[:port] with no path, wildcard or credentials");
    }
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => Some(":443"),
        "http" => Some(":80"),
        _ => None,
    };
    let host = match default_port {
        Some(port) => host.strip_suffix(port).unwrap_or(host),
        None => host,
    };
    Ok(format!("{scheme}://{}", host.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Method, Uri};

    use super::super::test_support::*;
    use super::super::*;

    #[test]
    fn lockout_max_failures_zero_turns_lockout_off_whatever_the_duration() {
        let config = match parse("lockout:\n  max_failures: 0\n  duration: 0s\n") {
            Ok(config) => config,
            Err(e) => panic!("max_failures 0 needs no duration: {e}"),
        };
        assert_eq!(config.lockout.max_failures, 0);
    }

    /// (`lockout.key` as written, what it means, or None when refused).
    #[test]
    fn lockout_keys() {
        let cases: &[(&str, Option<LockoutKey>)] = &[
            ("", Some(LockoutKey::Account)),
            ("  key: account\n", Some(LockoutKey::Account)),
            ("  key: account_and_ip\n", Some(LockoutKey::AccountAndIp)),
            ("  key: ip\n", None),
            ("  key: Account\n", None),
        ];
        for (line, expected) in cases {
            let parsed = parse(&format!("lockout:\n  max_failures: 5\n{line}"));
            assert_eq!(
                parsed.ok().map(|config| config.lockout.key),
                *expected,
                "{line:?}"
            );
        }
    }

    /// (seed node, the message it is refused with, or None when accepted).
    const CLUSTER_NODES: &[(&str, Option<&str>)] = &[
        ("redis://10.0.0.1:7000", None),
        ("redis://10.0.0.1:7000/", None),
        ("redis://10.0.0.1:7000/0", None),
        ("redis://redis-1", None),
        ("redis://[::1]:7000", None),
        // A password belongs to the URL, as it does in redis.url.
        ("redis://:s3cret@10.0.0.1:7000", None),
        ("redis://user:s3cret@10.0.0.1:7000", None),
        ("10.0.0.1:7000", Some("must start with redis://")),
        ("rediss://10.0.0.1:7000", Some("must start with redis://")),
        ("http://10.0.0.1:7000", Some("must start with redis://")),
        ("redis://", Some("must be a redis://host:port URL")),
        ("redis://:7000", Some("has no host")),
        (
            "redis://10.0.0.1:7000?protocol=3",
            Some("must be a redis://host:port URL"),
        ),
        (
            "redis://10.0.0.1:7000#x",
            Some("must be a redis://host:port URL"),
        ),
        ("redis://10.0.0.1:99999", Some("has an invalid port")),
        ("redis://10.0.0.1:0", Some("has an invalid port")),
        ("redis://10.0.0.1:x", Some("has an invalid port")),
        (
            "redis://10.0.0.1:7000/3",
            Some("must not name a database: a cluster has only database 0"),
        ),
    ];

    #[test]
    fn cluster_nodes_are_redis_urls_and_never_echoed() {
        for &(node, refused) in CLUSTER_NODES {
            let mut config = defaults();
            config.redis.cluster_nodes =
                vec![Secret::new("redis://10.0.0.9:7000"), Secret::new(node)];
            match (config.validate(), refused) {
                (Ok(()), None) => {}
                (Err(error), Some(message)) => {
                    assert_eq!(error.key, "redis.cluster_nodes[1]", "{node}");
                    assert_eq!(error.message, message, "{node}");
                }
                (result, _) => panic!("{node}: {result:?}"),
            }
        }
        let mut config = defaults();
        config.redis.cluster_nodes = vec![Secret::new("redis://:s3cret@10.0.0.1:7000/5")];
        let error = config.validate().unwrap_err().to_string();
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn braces_in_the_key_prefix_are_refused_only_for_a_cluster() {
        let mut config = defaults();
        config.redis.key_prefix = "app{1}:".into();
        assert_eq!(config.validate(), Ok(()), "harmless in a single Redis");
        config.redis.cluster_nodes = vec![Secret::new("redis://10.0.0.1:7000")];
        assert_eq!(config.validate().unwrap_err().key, "redis.key_prefix");
    }

    #[test]
    fn public_url_must_be_an_https_origin() {
        for refused in [
            "http://example.com",
            "https://example.com/app",
            "https://example.com?x=1",
            "https://u:p@example.com",
            "https://example.com:99999",
            "example.com",
        ] {
            assert_eq!(
                invalid_key(|c| c.server.public_url = refused.into()),
                "server.public_url",
                "{refused}"
            );
        }
        let config = parse("server:\n  public_url: https://gw.example.com:8443/\n").unwrap();
        assert_eq!(config.server.public_url, "https://gw.example.com:8443");
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
        // The rules the proxy used to apply on its own are part of the one set.
        assert_eq!(
            invalid_key(|c| c.cors.allowed_methods.push("*".into())),
            "cors.allowed_methods[6]"
        );
        assert_eq!(
            invalid_key(|c| c.cors.allowed_headers.push("*".into())),
            "cors.allowed_headers[2]"
        );
        assert_eq!(
            invalid_key(|c| c.cors.expose_headers.push("*".into())),
            "cors.expose_headers[0]"
        );
        for origin in [
            "https://*.example.com",
            " https://a.com",
            "https://a.com ",
            "null",
        ] {
            assert_eq!(
                invalid_key(|c| c.cors.allowed_origins = vec![origin.into()]),
                "cors.allowed_origins[0]",
                "{origin:?}"
            );
        }
    }

    #[test]
    fn cors_policy_is_parsed_once_from_the_settings() {
        let mut config = defaults();
        config.cors.allowed_origins = vec![
            "HTTPS://App.Example.com:443".into(),
            "http://localhost:5173".into(),
        ];
        config.cors.allowed_methods = vec!["GET".into(), "PURGE".into(), "GET".into()];
        config.cors.allowed_headers = vec!["Authorization".into(), "authorization".into()];
        config.cors.expose_headers = vec!["X-Request-Id".into()];
        let policy = config.cors.policy().unwrap();
        let origins: Vec<&str> = policy.origins.iter().map(|o| &**o).collect();
        assert_eq!(
            origins,
            ["https://app.example.com", "http://localhost:5173"]
        );
        assert!(!policy.any_origin);
        assert_eq!(
            policy.methods,
            [Method::GET, Method::from_bytes(b"PURGE").unwrap()]
        );
        assert_eq!(policy.allowed_headers, [http::header::AUTHORIZATION]);
        assert_eq!(policy.expose_headers, ["x-request-id"]);
        assert_eq!(policy.max_age, Duration::from_secs(600));
        // No methods listed: the CORS-safelisted ones.
        config.cors.allowed_methods.clear();
        config.cors.allowed_origins = vec!["*".into()];
        let policy = config.cors.policy().unwrap();
        assert!(policy.any_origin && policy.origins.is_empty());
        assert_eq!(policy.methods, [Method::GET, Method::HEAD, Method::POST]);
    }

    #[test]
    fn token_rules() {
        assert_eq!(
            err(parse("tokens:\n  refresh_reuse_grace: 61s\n")).to_string(),
            "test.yaml: tokens.refresh_reuse_grace: must be at most 1m (0 turns it off)"
        );
        for grace in ["0s", "1m"] {
            let config = parse(&format!("tokens:\n  refresh_reuse_grace: {grace}\n")).unwrap();
            assert!(config.tokens.refresh_reuse_grace <= Duration::from_secs(60));
        }
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
    }

    #[test]
    fn identity_assertions_need_an_asymmetric_key_and_a_short_lifetime() {
        assert!(!parse("").unwrap().identity.assertion);
        let text = err(parse(
            "tokens:\n  hs256_secret: 0123456789abcdef0123456789abcdef\nidentity:\n  assertion: true\n",
        ))
        .to_string();
        assert!(
            text.starts_with("test.yaml: identity.assertion: needs an asymmetric signing key"),
            "{text}"
        );
        let keyed = "tokens:\n  signing_keys:\n    - { kid: a, algorithm: EdDSA, private_key_path: /k/a.pem }\nidentity:\n  assertion: true\n";
        let config = parse(keyed).unwrap();
        assert!(config.identity.assertion);
        assert_eq!(config.identity.assertion_ttl, Duration::from_secs(60));
        for ttl in ["0s", "61s"] {
            assert_eq!(
                err(parse(&format!("{keyed}  assertion_ttl: {ttl}\n"))).to_string(),
                "test.yaml: identity.assertion_ttl: must be more than 0s and at most 1m"
            );
        }
        let config = parse(&format!("{keyed}  assertion_ttl: 20s\n")).unwrap();
        assert_eq!(config.identity.assertion_ttl, Duration::from_secs(20));
    }

    #[test]
    fn the_realm_is_configurable_and_defaults_to_the_public_host() {
        assert_eq!(parse("").unwrap().realm(), "localhost");
        let config = parse("server:\n  public_url: https://Gateway.example:8443/\n").unwrap();
        assert_eq!(config.realm(), "gateway.example");
        let config = parse("tokens:\n  realm: Example API\n").unwrap();
        assert_eq!(config.realm(), "Example API");
        for bad in ["\"\"", "'a\"b'", "'a\\b'", "\"a\\tb\"", "\"é\""] {
            assert_eq!(
                err(parse(&format!("tokens:\n  realm: {bad}\n"))).to_string(),
                "test.yaml: tokens.realm: must be 1 to 200 printable ASCII characters without \" or \\",
                "{bad}"
            );
        }
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
    fn pages_rules() {
        assert!(parse("pages:\n  product_name: Acme\n  logo_url: /static/logo.svg\n").is_ok());
        for logo in [
            "https://cdn.example/logo.svg",
            "//cdn.example/logo.svg",
            "logo.svg",
            "/\\\\evil",
            "/a b",
            "javascript:x",
            "/%2F%2Fevil",
        ] {
            assert_eq!(
                invalid_key(|c| c.pages.logo_url = Some(logo.into())),
                "pages.logo_url",
                "{logo}"
            );
        }
        for name in ["", "  ", "a\nb"] {
            assert_eq!(
                invalid_key(|c| c.pages.product_name = name.into()),
                "pages.product_name",
                "{name:?}"
            );
        }
        assert!(
            parse("pages:\n  colour: red\n").is_err(),
            "unknown keys are refused"
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
            invalid_key(|c| c.rate_limits.login_failures_per_client =
                Some(RateLimit::new(0, Duration::from_secs(60)))),
            "rate_limits.login_failures_per_client.requests"
        );
        assert_eq!(
            invalid_key(|c| c.rate_limits.login_failures_per_client =
                Some(RateLimit::new(1001, Duration::from_secs(60)))),
            "rate_limits.login_failures_per_client.requests"
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
        assert_eq!(
            invalid_key(|c| c.redis.cluster_nodes = vec![
                Secret::new("redis://10.0.0.1:7000"),
                Secret::new("10.0.0.2:7000"),
            ]),
            "redis.cluster_nodes[1]"
        );
        assert_eq!(
            invalid_key(|c| {
                c.redis.cluster_nodes = vec![Secret::new("redis://10.0.0.1:7000")];
                c.redis.key_prefix = "app{1}:".into();
            }),
            "redis.key_prefix"
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
        assert_eq!(
            invalid_key(|c| c.password.hashing_nice = -5),
            "password.hashing_nice"
        );
        assert_eq!(
            invalid_key(|c| c.password.hashing_nice = 20),
            "password.hashing_nice"
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
}
