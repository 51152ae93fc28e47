//! Header rewriting at the proxy boundary: hop-by-hop removal, stripping of
//! identity headers a client must not be able to forge, the X-Forwarded-*
//! family, the trusted client address, response security headers and request
//! ids.
//!
//! Everything here is pure (no I/O, no clock, no randomness of its own) and runs
//! on every proxied request, so names and values are built once at construction
//! and the per-request paths avoid allocating unless they must produce a new
//! header value.
//!
//! Order the calls on a request as: `remove_hop_by_hop`, `StripList::strip`,
//! `set_forwarded`, then add the gateway's own identity headers. Hop-by-hop
//! removal honours the client's `Connection` list, so it must run before the
//! gateway adds anything a client could name there.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

// Names the http crate has no constant for. Statics rather than consts: a
// HeaderName holds a `Bytes`, which clippy treats as interior-mutable.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_POWERED_BY: HeaderName = HeaderName::from_static("x-powered-by");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The fixed hop-by-hop set (RFC 9110 section 7.6.1 plus the legacy
/// `keep-alive` and `proxy-connection`), `Connection` first.
fn fixed_hop_by_hop() -> [&'static HeaderName; 9] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ]
}

/// Removes hop-by-hop headers: connection, keep-alive, proxy-connection,
/// proxy-authenticate, proxy-authorization, te, trailer, transfer-encoding,
/// upgrade, and every header named in any Connection header value
/// (comma-separated, any case, whitespace-tolerant).
///
/// Works on requests and responses alike. A caller proxying a protocol
/// upgrade (WebSocket) must read `Upgrade`/`Connection` before calling this and
/// set them again for the upstream itself.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names present finds which of the fixed set are there: most messages
    // carry one (`Connection`) or none, and a hashed lookup for each of the nine showed in
    // profiles.
    let fixed = fixed_hop_by_hop();
    let mut present = [false; 9];
    for name in headers.keys() {
        if let Some(index) = fixed.iter().position(|hop| *hop == name) {
            present[index] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    if present[0] {
        remove_connection_named(headers);
    }
    for (name, present) in fixed.into_iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
}

/// Removes every header a `Connection` header names.
fn remove_connection_named(headers: &mut HeaderMap) {
    // Only names that are actually present are collected, so the usual
    // `Connection: keep-alive` / `close` never allocates.
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(&header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let Ok(token) = std::str::from_utf8(token.trim_ascii()) else {
                continue;
            };
            // `contains_key(&str)` lower-cases on the stack; an invalid name is
            // simply absent.
            if token.is_empty() || !headers.contains_key(token) {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in &named {
        headers.remove(name);
    }
}

/// Always stripped, whatever the configured list says: the gateway's own identity
/// headers, and the headers that let a client change the method an upstream framework
/// acts on (the policy judged the real method).
const ALWAYS_STRIPPED: [&str; 4] = [
    "x-auth-*",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Compiled list of client-sent header names the gateway never forwards.
///
/// Patterns are names, optionally ending in `*` (prefix). Matching is
/// case-insensitive and treats `_` as `-` (so `X_Auth_User`, `x-auth_user-id`
/// match `x-auth-*`): many upstream frameworks (CGI, PHP, Django, Rails) fold
/// `_` and `-` together, so stripping only the `-` spelling would let a client
/// smuggle an identity header through. The method-override headers
/// `x-http-method-override`, `x-http-method`, `x-method-override` are always
/// included.
///
/// Only a trailing `*` is special. Empty patterns and a bare `*` are ignored:
/// the latter would strip every header, `Host` included, which is never what a
/// configuration means (configuration validation should reject it).
#[derive(Debug, Clone)]
pub struct StripList {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    /// Lower-case, with `_` already folded to `-`.
    name: Box<[u8]>,
    prefix: bool,
}

impl Pattern {
    fn matches(&self, name: &[u8]) -> bool {
        let head = if self.prefix {
            match name.get(..self.name.len()) {
                Some(head) => head,
                None => return false,
            }
        } else if name.len() == self.name.len() {
            name
        } else {
            return false;
        };
        head.iter()
            .zip(self.name.iter())
            .all(|(&a, &b)| fold(a) == b)
    }
}

/// The comparison form of a header-name byte: lower-case, and every byte other than a
/// letter or digit as `-`. Frameworks fold `_` (CGI, PHP, Django, Rails) and some fold `.`
/// into `-` or `_`, so `X.Auth.Role` and `X_Auth_Role` must be stripped like `X-Auth-Role`.
fn fold(b: u8) -> u8 {
    if b.is_ascii_alphanumeric() {
        b.to_ascii_lowercase()
    } else {
        b'-'
    }
}

/// Whether a header name, folded, is one that says where a request came from or what it
/// asked for before a proxy (the `X-Forwarded-*` family, `Forwarded`, `X-Real-IP`,
/// `X-Original-URI`): only a trusted proxy may send those.
fn is_forwarding_header(name: &str) -> bool {
    let name = name.as_bytes();
    let folded_eq = |expected: &[u8]| {
        name.len() == expected.len() && name.iter().zip(expected).all(|(&a, &b)| fold(a) == b)
    };
    let prefix = b"x-forwarded-";
    let forwarded_family = name.len() > prefix.len()
        && name[..prefix.len()]
            .iter()
            .zip(prefix)
            .all(|(&a, &b)| fold(a) == b);
    forwarded_family
        || folded_eq(b"forwarded")
        || folded_eq(b"x-real-ip")
        || folded_eq(b"x-original-uri")
}

/// Removes every header an untrusted peer may not send (see [`is_forwarding_header`]).
fn remove_forwarding_headers(headers: &mut HeaderMap) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if is_forwarding_header(name.as_str()) {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        headers.remove(name);
    }
}

impl StripList {
    pub fn new(patterns: &[String]) -> StripList {
        let mut compiled: Vec<Pattern> = Vec::with_capacity(patterns.len() + ALWAYS_STRIPPED.len());
        let all = ALWAYS_STRIPPED
            .iter()
            .copied()
            .chain(patterns.iter().map(String::as_str));
        for raw in all {
            let raw = raw.trim();
            let (name, prefix) = match raw.strip_suffix('*') {
                Some(head) => (head, true),
                None => (raw, false),
            };
            if name.is_empty() {
                continue;
            }
            let pattern = Pattern {
                name: name.bytes().map(fold).collect(),
                prefix,
            };
            if !compiled.contains(&pattern) {
                compiled.push(pattern);
            }
        }
        StripList { patterns: compiled }
    }

    /// Whether `name` (any case, `_` or `-`) is on the list.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.as_bytes();
        self.patterns.iter().any(|p| p.matches(name))
    }

    /// Removes every header on the list.
    pub fn strip(&self, headers: &mut HeaderMap) {
        // `Vec::new` does not allocate, so the common request with nothing to
        // strip costs only the comparisons.
        let mut doomed: Vec<HeaderName> = Vec::new();
        for name in headers.keys() {
            if self.matches(name.as_str()) {
                doomed.push(name.clone());
            }
        }
        for name in &doomed {
            headers.remove(name);
        }
    }
}

/// Whether `ip` is inside one of the trusted proxy networks. IPv4-mapped IPv6
/// addresses (`::ffff:a.b.c.d`, what a dual-stack listener reports for IPv4
/// peers) compare as IPv4.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let canonical = ip.to_canonical();
    trusted
        .iter()
        .any(|net| net.contains(&canonical) || (canonical != ip && net.contains(&ip)))
}

/// The client's address as the gateway will trust it: the TCP peer, unless the
/// peer is inside a trusted proxy CIDR, in which case walk X-Forwarded-For (all
/// values, comma-separated, in order) from the right and return the first entry
/// that is not itself trusted; unparseable entries stop the walk and the last
/// trusted hop is returned; if all are trusted return the left-most.
///
/// Walking from the right matters: everything left of the entry our nearest
/// trusted proxy appended was written by the client and proves nothing.
/// Empty entries (`a,,b`) are skipped; entries may carry a port
/// (`203.0.113.7:4711`, `[2001:db8::1]:443`) or brackets, as some proxies
/// write them. The result is canonical: an IPv4-mapped IPv6 address comes back
/// as IPv4, so logs and rate-limit keys see one spelling per client.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut last_trusted = peer;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        for entry in value.as_bytes().rsplit(|&b| b == b',') {
            let entry = entry.trim_ascii();
            if entry.is_empty() {
                continue;
            }
            let Some(ip) = parse_forwarded_ip(entry) else {
                return last_trusted;
            };
            let ip = ip.to_canonical();
            if !is_trusted(ip, trusted) {
                return ip;
            }
            last_trusted = ip;
        }
    }
    last_trusted
}

fn parse_forwarded_ip(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    text.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// Sets X-Forwarded-For/-Proto/-Host for the upstream.
///
/// When the peer is trusted, the peer's address is appended to the existing
/// X-Forwarded-For (all existing values joined with ", "), and client-sent
/// X-Forwarded-Proto / X-Forwarded-Host are kept if present; otherwise
/// every forwarding header the client sent goes (the whole `X-Forwarded-*`
/// family in any spelling, `Forwarded`, `X-Real-IP`, `X-Original-URI`: an
/// untrusted client could otherwise name any address, prefix or port), and
/// X-Forwarded-For is set to the peer address, X-Forwarded-Proto to `proto`,
/// X-Forwarded-Host to `host` (left out when host is None or empty).
///
/// The peer is written in canonical form (IPv4-mapped IPv6 as IPv4).
///
/// # Panics
/// If `proto` holds bytes not allowed in a header value; it is meant to be
/// `"http"` or `"https"`.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    peer_trusted: bool,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let peer = peer.to_canonical();
    if !peer_trusted {
        remove_forwarding_headers(headers);
    }
    let forwarded_for = if peer_trusted {
        appended_forwarded_for(headers, peer)
    } else {
        ip_value(peer)
    };
    headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);

    if !(peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        // An HTTP/1.0 request may have no Host at all; an empty
        // X-Forwarded-Host would only confuse the upstream.
        match host.filter(|host| !host.is_empty()) {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST.clone(), host.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// Existing X-Forwarded-For values joined with ", ", then the peer. One
/// allocation: the buffer becomes the header value without a copy.
fn appended_forwarded_for(headers: &HeaderMap, peer: IpAddr) -> HeaderValue {
    let mut buf: Vec<u8> = Vec::with_capacity(64);
    for value in headers.get_all(&X_FORWARDED_FOR) {
        let value = value.as_bytes().trim_ascii();
        if value.is_empty() {
            continue;
        }
        if !buf.is_empty() {
            buf.extend_from_slice(b", ");
        }
        buf.extend_from_slice(value);
    }
    if !buf.is_empty() {
        buf.extend_from_slice(b", ");
    }
    // Writing into a Vec cannot fail.
    let _ = write!(buf, "{peer}");
    // Every piece came from a valid header value, so this only falls back if
    // that invariant is ever broken.
    HeaderValue::try_from(buf).unwrap_or_else(|_| ip_value(peer))
}

fn ip_value(ip: IpAddr) -> HeaderValue {
    if let IpAddr::V4(v4) = ip {
        // The common case, written without the formatting machinery (it showed in profiles).
        let mut text = [0u8; 15];
        let mut len = 0;
        for (index, octet) in v4.octets().into_iter().enumerate() {
            if index > 0 {
                text[len] = b'.';
                len += 1;
            }
            if octet >= 100 {
                text[len] = b'0' + octet / 100;
                len += 1;
            }
            if octet >= 10 {
                text[len] = b'0' + octet / 10 % 10;
                len += 1;
            }
            text[len] = b'0' + octet % 10;
            len += 1;
        }
        return HeaderValue::from_bytes(&text[..len])
            .expect("digits and dots are a valid header value");
    }
    // 45 bytes holds the longest IPv6 text form.
    let mut text = String::with_capacity(45);
    let _ = write!(text, "{ip}");
    HeaderValue::try_from(text).expect("an IP address is a valid header value")
}

/// A security header configuration that cannot be turned into a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityHeaderError {
    header: String,
    problem: &'static str,
}

impl fmt::Display for SecurityHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "security header `{}`: {}", self.header, self.problem)
    }
}

impl std::error::Error for SecurityHeaderError {}

/// Security headers added to every response, precompiled. An empty value
/// means "don't set": the gateway neither adds the header nor touches the
/// upstream's.
#[derive(Debug, Clone)]
pub struct SecurityHeaders {
    set: Vec<(HeaderName, HeaderValue)>,
    /// None when the configured server name is empty: `Server` is then only
    /// removed.
    server: Option<HeaderValue>,
}

impl SecurityHeaders {
    /// `pairs` are (header name, value). `server` is the `Server` value to
    /// send; it may not contain `/`, because a product/version token is exactly
    /// the disclosure the contract forbids.
    pub fn new(
        pairs: &[(&str, &str)],
        server: &str,
    ) -> Result<SecurityHeaders, SecurityHeaderError> {
        let mut set = Vec::with_capacity(pairs.len());
        for &(name, value) in pairs {
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            let error = |problem| SecurityHeaderError {
                header: name.to_owned(),
                problem,
            };
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| error("invalid header name"))?;
            let value = HeaderValue::from_str(value).map_err(|_| error("invalid header value"))?;
            set.push((name, value));
        }
        let server = server.trim();
        let server_error = |problem| SecurityHeaderError {
            header: "server".to_owned(),
            problem,
        };
        if server.contains('/') {
            return Err(server_error("must not carry a version (no `/`)"));
        }
        let server = if server.is_empty() {
            None
        } else {
            Some(HeaderValue::from_str(server).map_err(|_| server_error("invalid header value"))?)
        };
        Ok(SecurityHeaders { set, server })
    }

    /// Overwrites each configured header, removes `X-Powered-By` and any
    /// `Server` header from the upstream and sets `Server: <server>`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        headers.remove(&X_POWERED_BY);
        match &self.server {
            Some(server) => {
                headers.insert(header::SERVER, server.clone());
            }
            None => {
                headers.remove(header::SERVER);
            }
        }
    }
}

/// Request ids: keep a client's X-Request-Id when it is 1..=128 visible ASCII
/// chars (0x21..=0x7E), else generate a new one.
///
/// A generated id is the mixed seed as 16 hex chars, `-`, then a counter as 16
/// hex chars: unique within the process without a syscall per id, and distinct
/// across processes as long as the seeds differ (seed from start time and pid).
#[derive(Debug)]
pub struct RequestIds {
    /// 16 hex chars of the mixed seed, then `-`.
    prefix: [u8; 17],
    next: AtomicU64,
}

const MAX_REQUEST_ID_LEN: usize = 128;

impl RequestIds {
    pub fn new(seed: u64) -> Self {
        let mut prefix = [b'-'; 17];
        write_hex(splitmix64(seed), &mut prefix[..16]);
        RequestIds {
            prefix,
            next: AtomicU64::new(0),
        }
    }

    pub fn take_or_generate(&self, headers: &HeaderMap) -> HeaderValue {
        if let Some(value) = headers.get(&X_REQUEST_ID) {
            if is_acceptable_request_id(value.as_bytes()) {
                return value.clone();
            }
        }
        // Relaxed: only uniqueness matters, not ordering with other memory.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 33];
        id[..17].copy_from_slice(&self.prefix);
        write_hex(n, &mut id[17..]);
        HeaderValue::from_bytes(&id).expect("hex digits and '-' are valid header bytes")
    }
}

/// Visible ASCII only, so an id is safe to log and to echo into a response.
fn is_acceptable_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len()) && id.iter().all(|&b| (0x21..=0x7e).contains(&b))
}

/// Spreads a possibly low-entropy seed (a timestamp, a pid) over all 64 bits.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes `n` as 16 lower-case hex digits into `out[..16]`.
fn write_hex(n: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, slot) in out[..16].iter_mut().enumerate() {
        let shift = 60 - 4 * i;
        *slot = DIGITS[((n >> shift) & 0xf) as usize];
    }
}

/// Marks a response that must not leak its URL (and so a token in it) as a referrer: it is
/// sent with `Referrer-Policy: no-referrer` whatever the configured policy.
#[derive(Debug, Clone, Copy)]
pub struct NoReferrer;

/// `RateLimit-Limit`, `-Remaining` and `-Reset` (seconds) on an allowed response.
pub fn set_rate_headers(headers: &mut HeaderMap, rate: &crate::limits::gate::RateOutcome) {
    headers.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(rate.limit));
    headers.insert(
        RATELIMIT_REMAINING.clone(),
        HeaderValue::from(rate.remaining),
    );
    headers.insert(
        RATELIMIT_RESET.clone(),
        HeaderValue::from(crate::error::ceil_seconds(rate.reset)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for &(name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn hop_by_hop_fixed_set_is_removed() {
        let mut headers = map(&[
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "trailers"),
            ("trailer", "expires"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("authorization", "Bearer x"),
            ("content-type", "text/plain"),
        ]);
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "content-type"]);
    }

    #[test]
    fn hop_by_hop_removes_headers_named_in_connection() {
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            // (Connection values, headers removed, headers kept)
            (&["X-Foo"], &["x-foo"], &["x-bar"]),
            (&["close, X-Foo"], &["x-foo"], &["x-bar"]),
            (&["  x-foo ,\tX-BAR  "], &["x-foo", "x-bar"], &["x-baz"]),
            (&["x-foo", "X-Bar"], &["x-foo", "x-bar"], &["x-baz"]),
            (&[",, ,x-foo,"], &["x-foo"], &["x-bar"]),
            (&["x-absent, not a token"], &[], &["x-foo", "x-bar"]),
        ];
        for &(connection, removed, kept) in cases {
            let mut headers = map(&[("x-foo", "1"), ("x-bar", "2"), ("x-baz", "3")]);
            for value in connection {
                headers.append(header::CONNECTION, HeaderValue::from_str(value).unwrap());
            }
            remove_hop_by_hop(&mut headers);
            for name in removed {
                assert!(
                    !headers.contains_key(*name),
                    "{connection:?}: {name} should be removed"
                );
            }
            for name in kept {
                assert!(
                    headers.contains_key(*name),
                    "{connection:?}: {name} should be kept"
                );
            }
            assert!(!headers.contains_key(header::CONNECTION));
        }
    }

    fn default_strip_list() -> StripList {
        let patterns: Vec<String> = [
            "X-Auth-*",
            "x-user-*",
            "x-forwarded-user",
            "x-forwarded-email",
            "x-remote-user",
            "remote-user",
            "x-original-url",
            "x-rewrite-url",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        StripList::new(&patterns)
    }

    #[test]
    fn strip_list_matching() {
        let list = default_strip_list();
        let cases = [
            ("x-auth-user", true),
            ("X-Auth-User", true),
            ("X_Auth_User", true),
            ("x-auth_user-id", true),
            ("x-auth-", true),
            ("x-auth", false),
            ("x-authorization", false),
            ("authorization", false),
            ("x-user-email", true),
            ("X_USER_ROLES", true),
            ("x-forwarded-user", true),
            ("x_forwarded_user", true),
            ("x-forwarded-users", false),
            ("x-forwarded-for", false),
            ("remote-user", true),
            ("REMOTE_USER", true),
            ("x-remote-user", true),
            ("x-original-url", true),
            ("x-rewrite-url", true),
            ("x-http-method-override", true),
            ("X_HTTP_METHOD", true),
            ("x-method-override", true),
            ("x-http-methods", false),
            ("content-type", false),
            ("", false),
        ];
        for (name, expected) in cases {
            assert_eq!(list.matches(name), expected, "{name}");
        }
    }

    #[test]
    fn strip_list_ignores_empty_and_bare_star_patterns() {
        let list = StripList::new(&["".to_owned(), "*".to_owned(), "  ".to_owned()]);
        assert!(!list.matches("host"));
        assert!(list.matches("x-http-method-override"));
        assert_eq!(list.patterns.len(), ALWAYS_STRIPPED.len());
    }

    #[test]
    fn identity_headers_are_stripped_whatever_the_list_says() {
        let list = StripList::new(&["x-custom".to_owned()]);
        for name in [
            "x-auth-user-id",
            "X_Auth_Role",
            "x.auth.email",
            "X-AUTH-SESSION-ID",
            "x-custom",
        ] {
            assert!(list.matches(name), "{name}");
        }
        assert!(!list.matches("x-authx"));
    }

    #[test]
    fn look_alike_names_fold_to_the_stripped_name() {
        let list = default_strip_list();
        for name in [
            "X.Auth.User.Id",
            "x~auth~role",
            "X_Forwarded_User",
            "x.forwarded.email",
            "remote.user",
        ] {
            assert!(list.matches(name), "{name}");
        }
    }

    #[test]
    fn forwarding_headers_in_any_spelling() {
        #[rustfmt::skip]
        let cases = [
            ("x-forwarded-prefix", true), ("X-Forwarded-Port", true), ("x_forwarded_server", true),
            ("x.forwarded.uri", true), ("x-forwarded-method", true), ("forwarded", true),
            ("x-real-ip", true), ("X_Real_IP", true), ("x-original-uri", true),
            ("x-forwarded-", false), ("x-forwardedfor", false), ("forwarded-x", false),
            ("x-original-url", false), ("accept", false),
        ];
        for (name, expected) in cases {
            assert_eq!(is_forwarding_header(name), expected, "{name}");
        }
    }

    #[test]
    fn strip_removes_every_match_and_keeps_the_rest() {
        let list = default_strip_list();
        let mut headers = map(&[
            ("x-auth-user", "mallory"),
            ("x-auth-user", "again"),
            ("x_auth_roles", "admin"),
            ("x-user-id", "1"),
            ("remote_user", "root"),
            ("x-http-method-override", "DELETE"),
            ("host", "app.example"),
            ("authorization", "Bearer t"),
        ]);
        list.strip(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "host"]);

        let mut untouched = map(&[("host", "a"), ("accept", "*/*")]);
        list.strip(&mut untouched);
        assert_eq!(untouched.len(), 2);
    }

    #[test]
    fn trust_check_handles_mapped_ipv4() {
        let trusted = nets(&["10.0.0.0/8", "fd00::/8"]);
        let cases = [
            ("10.1.2.3", true),
            ("11.1.2.3", false),
            ("::ffff:10.1.2.3", true),
            ("::ffff:11.1.2.3", false),
            ("fd12::1", true),
            ("2001:db8::1", false),
        ];
        for (addr, expected) in cases {
            assert_eq!(is_trusted(ip(addr), &trusted), expected, "{addr}");
        }
        assert!(!is_trusted(ip("10.0.0.1"), &[]));
    }

    #[test]
    fn client_ip_walks_forwarded_for_from_the_right() {
        let trusted = nets(&["10.0.0.0/8", "192.168.0.0/16"]);
        // (peer, X-Forwarded-For values, expected client)
        let cases: &[(&str, &[&str], &str)] = &[
            // Untrusted peer: header ignored whatever it says.
            ("203.0.113.9", &["1.1.1.1"], "203.0.113.9"),
            ("::ffff:203.0.113.9", &["1.1.1.1"], "203.0.113.9"),
            // Trusted peer without the header: the peer.
            ("10.0.0.1", &[], "10.0.0.1"),
            // First untrusted from the right; spoofed left entries ignored.
            ("10.0.0.1", &["6.6.6.6, 198.51.100.4"], "198.51.100.4"),
            (
                "10.0.0.1",
                &["6.6.6.6, 198.51.100.4, 10.0.0.2"],
                "198.51.100.4",
            ),
            // Several header lines are one list, in order.
            (
                "10.0.0.1",
                &["6.6.6.6, 198.51.100.4", "192.168.1.1"],
                "198.51.100.4",
            ),
            (
                "10.0.0.1",
                &["198.51.100.4", "10.9.9.9,192.168.1.1"],
                "198.51.100.4",
            ),
            // All trusted: the left-most.
            ("10.0.0.1", &["192.168.1.1, 10.0.0.7"], "192.168.1.1"),
            // Unparseable stops the walk at the last trusted hop.
            ("10.0.0.1", &["198.51.100.4, garbage, 10.0.0.7"], "10.0.0.7"),
            ("10.0.0.1", &["198.51.100.4, unknown"], "10.0.0.1"),
            // Empty entries are skipped; whitespace tolerated.
            ("10.0.0.1", &[" 198.51.100.4 ,, "], "198.51.100.4"),
            ("10.0.0.1", &[""], "10.0.0.1"),
            // Ports, brackets, IPv6 and mapped IPv4 entries.
            ("10.0.0.1", &["198.51.100.4:4711"], "198.51.100.4"),
            ("10.0.0.1", &["[2001:db8::7]:443"], "2001:db8::7"),
            ("10.0.0.1", &["[2001:db8::7]"], "2001:db8::7"),
            ("10.0.0.1", &["2001:db8::7"], "2001:db8::7"),
            (
                "10.0.0.1",
                &["198.51.100.4, ::ffff:10.0.0.3"],
                "198.51.100.4",
            ),
            ("::ffff:10.0.0.1", &["198.51.100.4"], "198.51.100.4"),
        ];
        for &(peer, forwarded, expected) in cases {
            let mut headers = HeaderMap::new();
            for value in forwarded {
                headers.append(&X_FORWARDED_FOR, HeaderValue::from_str(value).unwrap());
            }
            assert_eq!(
                client_ip(ip(peer), &headers, &trusted),
                ip(expected),
                "{peer} {forwarded:?}"
            );
        }
    }

    #[test]
    fn ip_values_are_the_addresses_text_form() {
        for octet in 0..=255u8 {
            for ip in [
                [octet, 0, 0, 0],
                [0, octet, 9, 10],
                [255, 99, octet, 100],
                [1, 2, 3, octet],
            ] {
                let ip = IpAddr::from(ip);
                assert_eq!(ip_value(ip).to_str().unwrap(), ip.to_string());
            }
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(ip_value(v6).to_str().unwrap(), "2001:db8::1");
    }

    #[test]
    fn set_forwarded_untrusted_peer_replaces_everything() {
        let mut headers = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
        ]);
        let host = HeaderValue::from_static("app.example");
        set_forwarded(
            &mut headers,
            ip("::ffff:203.0.113.9"),
            false,
            "http",
            Some(&host),
        );
        assert_eq!(values(&headers, "x-forwarded-for"), ["203.0.113.9"]);
        assert_eq!(values(&headers, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&headers, "x-forwarded-host"), ["app.example"]);
        assert!(!headers.contains_key("forwarded"));
        assert!(!headers.contains_key("x-real-ip"));

        let mut headers = map(&[("x-forwarded-host", "evil.example")]);
        set_forwarded(&mut headers, ip("2001:db8::1"), false, "https", None);
        assert_eq!(values(&headers, "x-forwarded-for"), ["2001:db8::1"]);
        assert_eq!(values(&headers, "x-forwarded-proto"), ["https"]);
        assert!(!headers.contains_key("x-forwarded-host"));

        let mut headers = map(&[("x-forwarded-host", "evil.example")]);
        set_forwarded(
            &mut headers,
            ip("2001:db8::1"),
            false,
            "https",
            Some(&HeaderValue::from_static("")),
        );
        assert!(!headers.contains_key("x-forwarded-host"));
    }

    #[test]
    fn set_forwarded_trusted_peer_appends_and_keeps() {
        let host = HeaderValue::from_static("edge.example");
        // (existing X-Forwarded-For values, expected result)
        let cases: &[(&[&str], &str)] = &[
            (&[], "10.0.0.1"),
            (&["198.51.100.4"], "198.51.100.4, 10.0.0.1"),
            (
                &["198.51.100.4, 10.0.0.9", " 10.0.0.8 "],
                "198.51.100.4, 10.0.0.9, 10.0.0.8, 10.0.0.1",
            ),
            (&["", "198.51.100.4"], "198.51.100.4, 10.0.0.1"),
        ];
        for &(existing, expected) in cases {
            let mut headers = map(&[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "app.example"),
                ("forwarded", "for=198.51.100.4"),
                ("x-real-ip", "198.51.100.4"),
            ]);
            for value in existing {
                headers.append(&X_FORWARDED_FOR, HeaderValue::from_str(value).unwrap());
            }
            set_forwarded(&mut headers, ip("10.0.0.1"), true, "http", Some(&host));
            assert_eq!(
                values(&headers, "x-forwarded-for"),
                [expected],
                "{existing:?}"
            );
            assert_eq!(values(&headers, "x-forwarded-proto"), ["https"]);
            assert_eq!(values(&headers, "x-forwarded-host"), ["app.example"]);
            assert!(headers.contains_key("forwarded"));
            assert!(headers.contains_key("x-real-ip"));
        }

        // Trusted but the proxy sent no proto/host: ours are filled in.
        let mut headers = HeaderMap::new();
        set_forwarded(&mut headers, ip("10.0.0.1"), true, "https", Some(&host));
        assert_eq!(values(&headers, "x-forwarded-proto"), ["https"]);
        assert_eq!(values(&headers, "x-forwarded-host"), ["edge.example"]);
    }

    const DEFAULT_SECURITY: &[(&str, &str)] = &[
        (
            "Strict-Transport-Security",
            "max-age=31536000; includeSubDomains",
        ),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
        (
            "Content-Security-Policy",
            "default-src 'none'; frame-ancestors 'none'",
        ),
    ];

    #[test]
    fn security_headers_overwrite_and_hide_software() {
        let security = SecurityHeaders::new(DEFAULT_SECURITY, "portcullis").unwrap();
        let mut headers = map(&[
            ("x-frame-options", "ALLOWALL"),
            ("x-frame-options", "SAMEORIGIN"),
            ("server", "Apache/2.4.1 (Unix)"),
            ("x-powered-by", "PHP/8.1"),
            ("content-type", "text/html"),
        ]);
        security.apply(&mut headers);
        assert_eq!(values(&headers, "x-frame-options"), ["DENY"]);
        assert_eq!(values(&headers, "x-content-type-options"), ["nosniff"]);
        assert_eq!(
            values(&headers, "strict-transport-security"),
            ["max-age=31536000; includeSubDomains"]
        );
        assert_eq!(values(&headers, "referrer-policy"), ["no-referrer"]);
        assert_eq!(
            values(&headers, "content-security-policy"),
            ["default-src 'none'; frame-ancestors 'none'"]
        );
        assert_eq!(values(&headers, "server"), ["portcullis"]);
        assert!(!headers.contains_key("x-powered-by"));
        assert_eq!(values(&headers, "content-type"), ["text/html"]);
    }

    #[test]
    fn security_headers_empty_value_leaves_upstream_alone() {
        let security = SecurityHeaders::new(
            &[("Content-Security-Policy", ""), ("X-Frame-Options", "DENY")],
            "",
        )
        .unwrap();
        let mut headers = map(&[
            ("content-security-policy", "default-src 'self'"),
            ("server", "nginx"),
        ]);
        security.apply(&mut headers);
        assert_eq!(
            values(&headers, "content-security-policy"),
            ["default-src 'self'"]
        );
        assert_eq!(values(&headers, "x-frame-options"), ["DENY"]);
        assert!(!headers.contains_key("server"));
    }

    #[test]
    fn security_headers_reject_bad_configuration() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("bad name", "x")], "portcullis"),
            (&[("x-ok", "line\nbreak")], "portcullis"),
            (&[], "portcullis/1.0"),
            (&[], "bad\u{7f}"),
        ];
        for &(pairs, server) in cases {
            let err = SecurityHeaders::new(pairs, server).unwrap_err();
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn request_id_kept_when_acceptable() {
        let ids = RequestIds::new(7);
        let long_ok = "a".repeat(128);
        let too_long = "a".repeat(129);
        let cases: &[(&str, bool)] = &[
            ("abc-123", true),
            ("!~", true),
            (&long_ok, true),
            (&too_long, false),
            ("has space", false),
            ("tab\there", false),
            ("", false),
        ];
        for &(id, kept) in cases {
            let headers = map(&[("x-request-id", id)]);
            let got = ids.take_or_generate(&headers);
            assert_eq!(got.as_bytes() == id.as_bytes(), kept, "{id:?}");
        }
        let mut non_ascii = HeaderMap::new();
        non_ascii.insert(
            &X_REQUEST_ID,
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert_ne!(ids.take_or_generate(&non_ascii).as_bytes(), b"caf\xc3\xa9");
    }

    #[test]
    fn generated_request_ids_are_unique_and_well_formed() {
        let ids = RequestIds::new(42);
        let first = ids.take_or_generate(&HeaderMap::new());
        let second = ids.take_or_generate(&HeaderMap::new());
        assert_ne!(first, second);
        for id in [&first, &second] {
            let text = id.to_str().unwrap();
            assert_eq!(text.len(), 33);
            let (seed, counter) = text.split_once('-').unwrap();
            assert_eq!(seed.len(), 16);
            assert_eq!(counter.len(), 16);
            assert!(text
                .bytes()
                .all(|b| b == b'-' || b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        assert_eq!(&first.to_str().unwrap()[17..], "0000000000000000");
        assert_eq!(&second.to_str().unwrap()[17..], "0000000000000001");
        // Different seeds give different prefixes, even adjacent ones.
        let other = RequestIds::new(43).take_or_generate(&HeaderMap::new());
        assert_ne!(first.as_bytes()[..16], other.as_bytes()[..16]);
    }

    #[test]
    fn request_ids_are_unique_across_threads() {
        let ids = std::sync::Arc::new(RequestIds::new(1));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let ids = ids.clone();
                std::thread::spawn(move || {
                    (0..1000)
                        .map(|_| ids.take_or_generate(&HeaderMap::new()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<HeaderValue> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        all.dedup();
        assert_eq!(all.len(), 4000);
    }

    #[test]
    fn hex_and_mixing() {
        let mut out = [0u8; 16];
        write_hex(0x0123_4567_89ab_cdef, &mut out);
        assert_eq!(&out, b"0123456789abcdef");
        // Reference value of splitmix64 for seed 0.
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
    }
}
