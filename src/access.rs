//! The one access-token verifier. Forwarded requests, the `/auth` bearer routes and open
//! tunnels all read a caller's token here: from `Authorization: Bearer` or, in cookie mode,
//! the access cookie; verified for signature and claims once, then served from a per-worker
//! cache that re-checks the token's times on every use; and checked for revocation in Redis.
//!
//! What a verified token is forwarded as (the `X-Auth-*` identity headers) is made here too,
//! once per token, because the cache is what lets every later request share it.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, AUTHORIZATION, COOKIE, ORIGIN};
use http::{HeaderMap, Method};
use uuid::Uuid;

use crate::clock::Clock;
use crate::config::{normalize_origin, FailMode};
use crate::error::{GatewayError, RedisCheck};
use crate::limits::gate::{Gate, GateCheck, GateError};
use crate::token::{AccessClaims, TokenError, TokenKeys};

/// The access token a request carries, checked for signature, claims and expiry (not yet
/// for revocation, which needs Redis).
#[derive(Debug)]
pub enum TokenState {
    Absent,
    Invalid,
    Valid(Arc<VerifiedToken>, TokenSource),
}

/// Where a request's access token was read from. A cookie is sent by the browser on its
/// own, whichever page asked, so what a cookie authenticates needs checks (a WebSocket's
/// `Origin`) that a header a script had to set does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    AuthorizationHeader,
    Cookie,
}

/// A verified access token's claims and the identity headers it is forwarded with, made once
/// when the token is first verified and shared by every request that presents it.
#[derive(Debug)]
pub struct VerifiedToken {
    pub claims: AccessClaims,
    pub identity: IdentityHeaders,
}

impl VerifiedToken {
    fn new(claims: AccessClaims) -> VerifiedToken {
        VerifiedToken {
            identity: IdentityHeaders::new(&claims),
            claims,
        }
    }

    /// What the revocation check in Redis is asked about this token.
    pub fn revocation_key(&self) -> (&str, &str, u64) {
        (&self.claims.sid, &self.claims.sub, self.claims.iat)
    }
}

/// An authenticated caller of a bearer route: verified token, not revoked.
pub struct Principal {
    pub claims: AccessClaims,
    pub user_id: Uuid,
    pub session_id: Uuid,
}

/// Reads, verifies and caches access tokens, and checks them for revocation.
pub struct AccessVerifier {
    keys: Arc<TokenKeys>,
    verified: VerifiedTokens,
    /// Cookie mode: [`ACCESS_COOKIE`] is read as well as `Authorization`.
    cookie_mode: bool,
    gate: Gate,
    clock: Arc<Clock>,
    revocation_on_redis_error: FailMode,
    leeway_secs: u64,
    /// Where a cookie-authenticated unsafe request may come from ([`cross_site_refusal`]).
    cookie_origins: Arc<CookieOrigins>,
}

impl AccessVerifier {
    pub fn new(
        keys: Arc<TokenKeys>,
        cookie_mode: bool,
        gate: Gate,
        clock: Arc<Clock>,
        revocation_on_redis_error: FailMode,
        workers: usize,
        cookie_origins: Arc<CookieOrigins>,
    ) -> AccessVerifier {
        let leeway = keys.settings().leeway;
        AccessVerifier {
            keys,
            verified: VerifiedTokens::new(workers, leeway),
            cookie_mode,
            gate,
            clock,
            revocation_on_redis_error,
            leeway_secs: leeway.as_secs(),
            cookie_origins,
        }
    }

    /// Reads and verifies the access token of a request: signature and claims once per
    /// token, its times on every call.
    pub fn read(&self, headers: &HeaderMap) -> TokenState {
        let Some((token, source)) = self.bearer_token(headers) else {
            return TokenState::Absent;
        };
        self.check(token, source)
    }

    /// Verifies a token the gateway has just issued (a renewed session's), and caches it
    /// as [`read`](AccessVerifier::read) would, so the browser's next request with it is a
    /// cache hit.
    pub fn verify_issued(&self, token: &str) -> Option<Arc<VerifiedToken>> {
        match self.check(token, TokenSource::Cookie) {
            TokenState::Valid(verified, _) => Some(verified),
            TokenState::Absent | TokenState::Invalid => None,
        }
    }

    fn check(&self, token: &str, source: TokenSource) -> TokenState {
        let now = self.clock.unix_now();
        match self.verified.get(token, now) {
            Cached::Valid(claims) => return TokenState::Valid(claims, source),
            Cached::Refused => return TokenState::Invalid,
            Cached::Unknown => {}
        }
        match self.keys.verify_access(token, now) {
            Ok(claims) => {
                let verified = Arc::new(VerifiedToken::new(claims));
                self.verified.put(token, &verified);
                TokenState::Valid(verified, source)
            }
            Err(error) => {
                // Only a refusal that time cannot undo is remembered: a token that is not
                // yet valid will be, later.
                if error != TokenError::NotYetValid {
                    self.verified.refuse(token);
                }
                tracing::debug!(%error, "access token refused");
                TokenState::Invalid
            }
        }
    }

    /// The caller of a bearer route: a valid token that has not been revoked. A Redis
    /// outage answers as `revocation_on_redis_error` says. A token the session cookie
    /// carried must also pass the cross-site check for `method`, as on forwarded requests.
    pub async fn authenticate(
        &self,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Principal, GatewayError> {
        let verified = match self.read(headers) {
            TokenState::Valid(verified, TokenSource::Cookie) => {
                if let Some(refusal) = cross_site_refusal(method, headers, &self.cookie_origins) {
                    return Err(refusal);
                }
                verified
            }
            TokenState::Valid(verified, TokenSource::AuthorizationHeader) => verified,
            TokenState::Absent => return Err(GatewayError::unauthorized("Not authenticated")),
            TokenState::Invalid => {
                return Err(GatewayError::invalid_token("Invalid or expired token"))
            }
        };
        let claims = &verified.claims;
        let (Ok(user_id), Ok(session_id)) =
            (Uuid::parse_str(&claims.sub), Uuid::parse_str(&claims.sid))
        else {
            return Err(GatewayError::invalid_token("Invalid or expired token"));
        };
        match self.revoked(&verified).await {
            Ok(true) => return Err(GatewayError::invalid_token("Token has been revoked")),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, on_redis_error = ?self.revocation_on_redis_error, "revocation check failed");
                GatewayError::on_redis_outage(
                    RedisCheck::Revocation,
                    self.revocation_on_redis_error,
                )?;
            }
        }
        Ok(Principal {
            claims: claims.clone(),
            user_id,
            session_id,
        })
    }

    /// Whether `verified` has been revoked (its session, or every token of its user issued
    /// before a cut-off): the same one-round-trip check forwarded requests make, without a
    /// rate bucket.
    pub async fn revoked(&self, verified: &VerifiedToken) -> Result<bool, GateError> {
        let check = GateCheck {
            bucket: None,
            token: Some(verified.revocation_key()),
            now_ms: self.clock.unix_millis(),
        };
        Ok(self.gate.check(&check).await?.revoked)
    }

    /// The first instant (milliseconds) at which `verified` is refused for expiry.
    pub fn expires_at_ms(&self, verified: &VerifiedToken) -> u64 {
        verified
            .claims
            .expires_at(self.leeway_secs)
            .saturating_mul(1000)
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The clock, to share with what must tell the same time (identity assertions).
    pub fn shared_clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    /// The keys tokens are verified with; the active one signs identity assertions.
    pub fn keys(&self) -> &Arc<TokenKeys> {
        &self.keys
    }

    /// The origins a cookie-authenticated request may come from.
    pub fn cookie_origins(&self) -> &Arc<CookieOrigins> {
        &self.cookie_origins
    }

    /// The token from `Authorization: Bearer`, or from the access cookie in cookie mode.
    /// Never from the query string.
    fn bearer_token<'h>(&self, headers: &'h HeaderMap) -> Option<(&'h str, TokenSource)> {
        if let Some(value) = headers.get(AUTHORIZATION) {
            let value = value.to_str().ok()?;
            let (scheme, token) = value.split_once(' ')?;
            return scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
                .filter(|token| !token.is_empty())
                .map(|token| (token, TokenSource::AuthorizationHeader));
        }
        if !self.cookie_mode {
            return None;
        }
        cookie(headers, ACCESS_COOKIE).map(|value| (value, TokenSource::Cookie))
    }
}

/// The access token's cookie (contract 7), read in cookie mode.
pub const ACCESS_COOKIE: &str = "__Host-portcullis-access";
/// The refresh token's cookie (contract 7); only the gateway reads it.
pub const REFRESH_COOKIE: &str = "__Host-portcullis-refresh";
/// The nonce the sign-in pages' form tokens are bound to (`auth::pages::csrf`); only the
/// gateway reads it.
pub const FORM_COOKIE: &str = "__Host-portcullis-csrf";

/// The gateway's own cookies, which never reach the upstream.
const GATEWAY_COOKIES: [&str; 3] = [ACCESS_COOKIE, REFRESH_COOKIE, FORM_COOKIE];
/// What every one of [`GATEWAY_COOKIES`] starts with.
const GATEWAY_COOKIE_PREFIX: &[u8] = b"__Host-portcullis-";

/// `Set-Cookie` values for a signed-in browser: both tokens, `Secure; HttpOnly;
/// SameSite=Lax; Path=/` (the `__Host-` prefix makes browsers insist on exactly that), each
/// kept as long as its token lives.
pub fn session_cookies(
    access_token: &str,
    refresh_token: &str,
    access_max_age: std::time::Duration,
    refresh_max_age: std::time::Duration,
) -> Option<[HeaderValue; 2]> {
    Some([
        set_cookie(ACCESS_COOKIE, access_token, access_max_age.as_secs())?,
        set_cookie(REFRESH_COOKIE, refresh_token, refresh_max_age.as_secs())?,
    ])
}

/// The access cookie alone, for a session renewed within the refresh token's reuse grace
/// (its refresh cookie is already the newest).
pub fn access_cookie(access_token: &str, max_age: std::time::Duration) -> Option<HeaderValue> {
    set_cookie(ACCESS_COOKIE, access_token, max_age.as_secs())
}

/// `Set-Cookie` values that make a browser drop both session cookies.
pub fn cleared_session_cookies() -> [HeaderValue; 2] {
    [ACCESS_COOKIE, REFRESH_COOKIE].map(|name| {
        set_cookie(name, "", 0).expect("a cookie name and an empty value are a valid header")
    })
}

fn set_cookie(name: &str, value: &str, max_age_secs: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Max-Age={max_age_secs}; Secure; HttpOnly; SameSite=Lax"
    ))
    .ok()
}

/// The value of the cookie `name` in the request's `Cookie` headers, if sent once or more
/// (the first wins).
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(found, _)| *found == name)
        .map(|(_, value)| value)
}

/// Removes the gateway's own cookies (both session cookies and the form nonce) from the
/// request's `Cookie` headers (the upstream never sees them), keeping every other cookie
/// as sent.
pub fn remove_gateway_cookies(headers: &mut HeaderMap) {
    // Every forwarded request passes here; most carry none of the gateway's cookies, and
    // their headers are left exactly as they are, without rebuilding them. The searcher is
    // built once: building it took as many instructions as the search (callgrind).
    static PREFIX: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(GATEWAY_COOKIE_PREFIX));
    let finder = &*PREFIX;
    if !headers
        .get_all(COOKIE)
        .iter()
        .any(|value| finder.find(value.as_bytes()).is_some())
    {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(COOKIE)
        .iter()
        .map(|value| {
            String::from_utf8_lossy(value.as_bytes())
                .split(';')
                .map(str::trim)
                .filter(|pair| {
                    let name = pair.split_once('=').map_or(*pair, |(name, _)| name);
                    !pair.is_empty() && !GATEWAY_COOKIES.contains(&name)
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|value| !value.is_empty())
        .collect();
    headers.remove(COOKIE);
    for value in kept {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.append(COOKIE, value);
        }
    }
}

/// The origins whose pages may act on the session cookies: the gateway's own (the scheme,
/// host and port of `server.public_url`) and those the CORS settings list by name. A
/// configured `"*"` is not one: it admits any page only because it excludes credentials,
/// and a cookie is a credential. Used for cookie-authenticated WebSocket handshakes (contract
/// 6.12) and unsafe requests ([`cross_site_refusal`], contract 7).
#[derive(Debug)]
pub struct CookieOrigins {
    /// Lower case, default port elided ([`normalize_origin`]).
    origins: Vec<Box<str>>,
}

impl CookieOrigins {
    /// `listed` are the CORS origins named in the configuration, already normalised.
    pub fn new(public_url: &str, listed: &[Box<str>]) -> CookieOrigins {
        // `public_url` is validated as https://host[:port]; were it somehow not an origin,
        // only the CORS origins would be allowed, which fails closed.
        let own = normalize_origin(public_url).ok().map(Box::from);
        CookieOrigins {
            origins: own.into_iter().chain(listed.iter().cloned()).collect(),
        }
    }

    /// Whether a request with these headers comes from an allowed page: exactly one
    /// `Origin`, naming one of them (`null`, a missing or a repeated one never does).
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = single(headers, &ORIGIN).and_then(|value| value.to_str().ok()) else {
            return false;
        };
        normalize_origin(origin).is_ok_and(|origin| {
            self.origins
                .iter()
                .any(|allowed| allowed.as_ref() == origin.as_str())
        })
    }
}

/// Methods that change nothing (RFC 9110 9.2.1 safe methods): a page of any site may make
/// the browser send them with the cookies, so they are never how a session is misused.
pub fn is_safe_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The CSRF check of a request the session cookie authenticates (contract 7), `None` when
/// it passes: a safe method, or `Sec-Fetch-Site: same-origin` or `none` (typed or
/// bookmarked), or an `Origin` that [`CookieOrigins::allows`]. Anything else is 403: the
/// browser attached the cookie to a request another site's page made.
///
/// `Sec-Fetch-Site: same-site` is not enough: a sibling subdomain is same-site, and may be
/// anyone's. Its values are compared exactly, as the Fetch Metadata tokens they are; no page
/// can set the header, so a value a browser would not send is read as not sent, and the
/// `Origin` decides. A request with neither header is refused: every browser in use sends
/// `Origin` on unsafe requests, and a client that is not a browser should send its token in
/// `Authorization` instead.
pub fn cross_site_refusal(
    method: &Method,
    headers: &HeaderMap,
    origins: &CookieOrigins,
) -> Option<GatewayError> {
    if is_safe_method(method) {
        return None;
    }
    let fetch_site = single(headers, &SEC_FETCH_SITE).map(HeaderValue::as_bytes);
    if matches!(fetch_site, Some(b"same-origin" | b"none")) || origins.allows(headers) {
        return None;
    }
    Some(GatewayError::Forbidden(CROSS_SITE_REFUSED.into()))
}

/// The detail of a cross-site refusal.
pub const CROSS_SITE_REFUSED: &str = "Cross-site request refused";

static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// The header's value when it is there exactly once.
pub(crate) fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    values.next().is_none().then_some(value)
}

static X_AUTH_USER_ID: HeaderName = HeaderName::from_static("x-auth-user-id");
static X_AUTH_EMAIL: HeaderName = HeaderName::from_static("x-auth-email");
static X_AUTH_ROLE: HeaderName = HeaderName::from_static("x-auth-role");
static X_AUTH_SESSION_ID: HeaderName = HeaderName::from_static("x-auth-session-id");

/// The identity headers of contract 6.1 for one token, made when it is first verified.
#[derive(Debug)]
pub struct IdentityHeaders {
    /// A claim that cannot be a header value (a control character, say) is left out.
    values: [Option<HeaderValue>; 4],
}

static IDENTITY_NAMES: [&HeaderName; 4] = [
    &X_AUTH_USER_ID,
    &X_AUTH_EMAIL,
    &X_AUTH_ROLE,
    &X_AUTH_SESSION_ID,
];

impl IdentityHeaders {
    pub fn new(claims: &AccessClaims) -> IdentityHeaders {
        // Cloning a value onto a request shares its bytes (a reference count), not a copy.
        let value = |claim: &str| HeaderValue::from_str(claim).ok();
        IdentityHeaders {
            values: [
                value(&claims.sub),
                value(&claims.email),
                value(&claims.role),
                value(&claims.sid),
            ],
        }
    }

    /// Sets them, after every client-sent `X-Auth-*` is gone. Called by
    /// `proxy::identity::Identify::set` alone, which adds the signed assertion when it is on:
    /// whatever carries the identity carries the assertion too.
    pub(crate) fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in IDENTITY_NAMES.iter().zip(&self.values) {
            if let Some(value) = value {
                headers.insert((*name).clone(), value.clone());
            }
        }
    }
}

/// Access tokens already verified, per worker thread, so a client presenting the same token
/// on every request pays for the signature and claim parsing once. Only what cannot change
/// is cached (the token's bytes fix its claims); the time checks run on every use, and
/// revocation is checked in Redis on every request as before.
///
/// Refused tokens are remembered too (an expired or foreign token sent to public assets is
/// common), but only as a keyed 64-bit hash: a client sending large garbage tokens cannot
/// fill memory with them, and a collision could only refuse, never accept.
struct VerifiedTokens {
    /// One set of maps per worker: each is only ever locked by its own thread.
    shards: Vec<std::sync::Mutex<Shard>>,
    /// Keys both maps; random per process, so nobody can aim tokens at one bucket.
    hasher: std::collections::hash_map::RandomState,
    leeway: u64,
}

#[derive(Default)]
struct Shard {
    /// Keyed by a hash of the token's signature segment alone (a few dozen bytes instead of
    /// the whole token); the entry holds the whole token, compared on every hit.
    valid: std::collections::HashMap<u64, (Box<str>, Arc<VerifiedToken>)>,
    /// Keyed by a hash of the whole token: a refused token need not have a signature of its own.
    refused: std::collections::HashSet<u64>,
}

enum Cached {
    Valid(Arc<VerifiedToken>),
    Refused,
    Unknown,
}

/// Entries per worker; a full map is simply emptied (tokens are re-verified on next use).
const VERIFIED_TOKENS_PER_WORKER: usize = 10_000;

impl VerifiedTokens {
    fn new(workers: usize, leeway: std::time::Duration) -> VerifiedTokens {
        VerifiedTokens {
            shards: (0..workers.max(1))
                .map(|_| std::sync::Mutex::default())
                .collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            leeway: leeway.as_secs(),
        }
    }

    fn shard(&self) -> &std::sync::Mutex<Shard> {
        &self.shards[crate::workers::current_worker() % self.shards.len()]
    }

    fn refused_key(&self, token: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, token)
    }

    fn valid_key(&self, token: &str) -> u64 {
        let signature = token.rsplit('.').next().unwrap_or(token);
        std::hash::BuildHasher::hash_one(&self.hasher, signature)
    }

    /// What is known of a token: verified (and still within its times), refused, or new.
    fn get(&self, token: &str, now: u64) -> Cached {
        let Ok(shard) = self.shard().lock() else {
            return Cached::Unknown;
        };
        let cached = shard
            .valid
            .get(&self.valid_key(token))
            .filter(|(cached, _)| **cached == *token);
        if let Some((_, verified)) = cached {
            return if verified.claims.check_times(now, self.leeway).is_ok() {
                Cached::Valid(verified.clone())
            } else {
                Cached::Unknown
            };
        }
        if shard.refused.contains(&self.refused_key(token)) {
            return Cached::Refused;
        }
        Cached::Unknown
    }

    fn put(&self, token: &str, verified: &Arc<VerifiedToken>) {
        if let Ok(mut shard) = self.shard().lock() {
            if shard.valid.len() >= VERIFIED_TOKENS_PER_WORKER {
                shard.valid.clear();
            }
            shard
                .valid
                .insert(self.valid_key(token), (token.into(), verified.clone()));
        }
    }

    fn refuse(&self, token: &str) {
        let key = self.refused_key(token);
        if let Ok(mut shard) = self.shard().lock() {
            if shard.refused.len() >= VERIFIED_TOKENS_PER_WORKER {
                shard.refused.clear();
            }
            shard.refused.insert(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(email: &str) -> AccessClaims {
        AccessClaims {
            sub: "6f1c0c4e-6b8e-4a55-9a55-0c1f8a1b2c3d".into(),
            email: email.into(),
            role: "admin".into(),
            sid: "0b5e7f3a-1d2c-4e5f-8a9b-0c1d2e3f4a5b".into(),
            jti: "j".into(),
            iat: 0,
            exp: 10,
            nbf: None,
            iss: "portcullis".into(),
            aud: "portcullis".into(),
            token_type: "access".into(),
        }
    }

    fn verified(iat: u64, exp: u64, nbf: Option<u64>) -> Arc<VerifiedToken> {
        Arc::new(VerifiedToken::new(AccessClaims {
            sub: "u".into(),
            email: "u@example.com".into(),
            role: "user".into(),
            sid: "s".into(),
            jti: "j".into(),
            iat,
            exp,
            nbf,
            iss: "i".into(),
            aud: "a".into(),
            token_type: "access".into(),
        }))
    }

    #[test]
    fn cached_tokens_still_expire_and_other_tokens_miss() {
        let cache = VerifiedTokens::new(1, std::time::Duration::ZERO);
        cache.put("token-a", &verified(100, 200, Some(150)));
        let valid = |token: &str, now: u64| matches!(cache.get(token, now), Cached::Valid(_));
        assert!(!valid("token-a", 149), "not yet valid");
        assert!(valid("token-a", 150));
        assert!(valid("token-a", 199));
        assert!(
            !valid("token-a", 200),
            "expired at exp, as verification says"
        );
        assert!(!valid("token-b", 150));
        assert!(!valid("token-", 150), "only the exact token hits");
        cache.refuse("forged");
        assert!(matches!(cache.get("forged", 150), Cached::Refused));
        assert!(matches!(cache.get("forged2", 150), Cached::Unknown));
    }

    #[test]
    fn a_token_sharing_only_the_signature_of_a_cached_one_misses() {
        let cache = VerifiedTokens::new(1, std::time::Duration::ZERO);
        cache.put("header.payload.signature", &verified(100, 200, None));
        assert!(matches!(
            cache.get("header.payload.signature", 150),
            Cached::Valid(_)
        ));
        // Same signature segment, different payload: one hash bucket, but not the same token.
        assert!(matches!(
            cache.get("header.forged.signature", 150),
            Cached::Unknown
        ));
        cache.refuse("header.forged.signature");
        assert!(
            matches!(cache.get("header.payload.signature", 150), Cached::Valid(_)),
            "refusing the forgery does not touch the verified token"
        );
    }

    #[test]
    fn a_full_cache_is_emptied_rather_than_grown() {
        let cache = VerifiedTokens::new(1, std::time::Duration::ZERO);
        for index in 0..VERIFIED_TOKENS_PER_WORKER + 1 {
            cache.put(&format!("token-{index}"), &verified(0, 10, None));
        }
        assert!(cache.shards[0].lock().unwrap().valid.len() <= VERIFIED_TOKENS_PER_WORKER);
        for index in 0..VERIFIED_TOKENS_PER_WORKER + 1 {
            cache.refuse(&format!("garbage-{index}"));
        }
        assert!(cache.shards[0].lock().unwrap().refused.len() <= VERIFIED_TOKENS_PER_WORKER);
    }

    #[test]
    fn session_cookies_are_host_only_secure_http_only_and_lax() {
        let [access, refresh] = session_cookies(
            "a.b.c",
            "r1",
            std::time::Duration::from_secs(1800),
            std::time::Duration::from_secs(604_800),
        )
        .expect("token characters are valid in a cookie");
        assert_eq!(
            access,
            "__Host-portcullis-access=a.b.c; Path=/; Max-Age=1800; Secure; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            refresh,
            "__Host-portcullis-refresh=r1; Path=/; Max-Age=604800; Secure; HttpOnly; SameSite=Lax"
        );
        for cleared in cleared_session_cookies() {
            let cleared = cleared.to_str().unwrap();
            assert!(cleared.contains("=; Path=/; Max-Age=0;"), "{cleared}");
        }
        assert!(
            session_cookies("bad\r\nvalue", "r", Default::default(), Default::default()).is_none()
        );
    }

    #[test]
    fn session_cookies_never_reach_the_upstream_and_others_do() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_static("theme=dark; __Host-portcullis-access=t; lang=fr"),
        );
        headers.append(
            COOKIE,
            HeaderValue::from_static("__Host-portcullis-refresh=r; __Host-portcullis-csrf=n"),
        );
        headers.append(COOKIE, HeaderValue::from_static("a=1;b=2"));
        assert_eq!(cookie(&headers, ACCESS_COOKIE), Some("t"));
        assert_eq!(cookie(&headers, REFRESH_COOKIE), Some("r"));
        remove_gateway_cookies(&mut headers);
        let left: Vec<_> = headers.get_all(COOKIE).iter().collect();
        assert_eq!(left, ["theme=dark; lang=fr", "a=1; b=2"]);
        assert_eq!(cookie(&headers, ACCESS_COOKIE), None);
        // Without any of the gateway's cookies the header is left exactly as sent.
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1;b=2"));
        remove_gateway_cookies(&mut headers);
        assert_eq!(headers.get(COOKIE).unwrap(), "a=1;b=2");
        // A name that only starts like a session cookie is someone else's.
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_static("__Host-portcullis-access2=x"),
        );
        remove_gateway_cookies(&mut headers);
        assert_eq!(headers.get(COOKIE).unwrap(), "__Host-portcullis-access2=x");
    }

    const OWN: &str = "https://gateway.example.com";
    const LISTED: &str = "https://app.example.com";

    fn cookie_origins(allowed: &[&str]) -> CookieOrigins {
        let settings = crate::config::CorsConfig {
            allowed_origins: allowed.iter().map(|origin| origin.to_string()).collect(),
            ..crate::config::CorsConfig::default()
        };
        let policy = settings.policy().expect("valid CORS settings");
        CookieOrigins::new(OWN, &policy.origins)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("valid name"),
                HeaderValue::from_str(value).expect("valid value"),
            );
        }
        headers
    }

    /// (allowed CORS origins, the request's `Origin` headers, allowed?)
    const ORIGIN_CASES: &[(&[&str], &[&str], bool)] = &[
        // The gateway's own origin, however it is spelled.
        (&[], &["https://gateway.example.com"], true),
        (&[], &["HTTPS://Gateway.Example.COM"], true),
        (&[], &["https://gateway.example.com:443"], true),
        // Another scheme, port or host is another origin.
        (&[], &["http://gateway.example.com"], false),
        (&[], &["https://gateway.example.com:8443"], false),
        (&[], &["https://evil.example"], false),
        (&[], &["https://gateway.example.com.evil.example"], false),
        // A CORS origin listed by name.
        (&[LISTED], &["https://app.example.com"], true),
        (
            &["https://app.example.com:443"],
            &["https://APP.example.com"],
            true,
        ),
        (&[LISTED], &["https://evil.example"], false),
        // "*" admits no page to use the cookie.
        (&["*"], &["https://evil.example"], false),
        (&["*"], &["https://gateway.example.com"], true),
        // No page, an opaque one, something that is no origin, or two.
        (&[], &[], false),
        (&[], &["null"], false),
        (&[], &[""], false),
        (&[], &["https://gateway.example.com/"], false),
        (&[], &["https://user@gateway.example.com"], false),
        (
            &[],
            &["https://gateway.example.com", "https://gateway.example.com"],
            false,
        ),
    ];

    #[test]
    fn cookie_origins_are_the_gateways_own_and_the_listed_cors_ones() {
        for (allowed, sent, expected) in ORIGIN_CASES {
            let pairs: Vec<(&str, &str)> = sent.iter().map(|origin| ("origin", *origin)).collect();
            assert_eq!(
                cookie_origins(allowed).allows(&headers(&pairs)),
                *expected,
                "allowed {allowed:?}, sent {sent:?}"
            );
        }
    }

    /// (method, request headers, passes?) for a cookie-authenticated request, with the
    /// gateway at `OWN` and `LISTED` an allowed CORS origin.
    type CsrfCase = (&'static str, &'static [(&'static str, &'static str)], bool);

    #[rustfmt::skip]
    const CSRF_CASES: &[CsrfCase] = &[
        // Safe methods are never checked, whoever's page sent them.
        ("GET",     &[("sec-fetch-site", "cross-site"), ("origin", "https://evil.example")], true),
        ("HEAD",    &[("sec-fetch-site", "cross-site")], true),
        ("OPTIONS", &[("origin", "https://evil.example")], true),
        ("TRACE",   &[], true),
        ("GET",     &[], true),
        // Unsafe methods with nothing to go by.
        ("POST",    &[], false),
        ("DELETE",  &[], false),
        ("PROPFIND", &[], false),
        // Fetch metadata: same-origin and none (typed, bookmarked) pass.
        ("POST",    &[("sec-fetch-site", "same-origin")], true),
        ("PUT",     &[("sec-fetch-site", "none")], true),
        ("POST",    &[("sec-fetch-site", "cross-site")], false),
        // same-site is a sibling subdomain, which may be anyone's.
        ("POST",    &[("sec-fetch-site", "same-site")], false),
        ("PATCH",   &[("sec-fetch-site", "same-site"), ("origin", "https://blog.example.com")], false),
        // Tokens are compared exactly; one a browser would not send counts as none.
        ("POST",    &[("sec-fetch-site", "Same-Origin")], false),
        ("POST",    &[("sec-fetch-site", " same-origin")], false),
        ("POST",    &[("sec-fetch-site", "same-origin"), ("sec-fetch-site", "same-origin")], false),
        ("POST",    &[("sec-fetch-site", "SAME-ORIGIN"), ("origin", "https://gateway.example.com")], true),
        // Origin: the gateway's own, however spelled, default port elided.
        ("POST",    &[("origin", "https://gateway.example.com")], true),
        ("POST",    &[("origin", "HTTPS://GATEWAY.example.COM")], true),
        ("POST",    &[("origin", "https://gateway.example.com:443")], true),
        ("POST",    &[("origin", "https://gateway.example.com:8443")], false),
        ("POST",    &[("origin", "http://gateway.example.com")], false),
        ("POST",    &[("origin", "https://blog.example.com")], false),
        ("POST",    &[("origin", "https://gateway.example.com.evil.example")], false),
        ("POST",    &[("origin", "null")], false),
        ("POST",    &[("origin", "null"), ("sec-fetch-site", "cross-site")], false),
        // An allowed CORS origin's page may, cross-site or not.
        ("POST",    &[("origin", "https://app.example.com"), ("sec-fetch-site", "cross-site")], true),
        ("DELETE",  &[("origin", "https://APP.example.com:443")], true),
        ("POST",    &[("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")], false),
    ];

    #[test]
    fn an_unsafe_cookie_request_must_come_from_the_gateway_or_an_allowed_origin() {
        let origins = cookie_origins(&[LISTED]);
        for (method, sent, passes) in CSRF_CASES {
            let method = Method::from_bytes(method.as_bytes()).expect("a method");
            let refusal = cross_site_refusal(&method, &headers(sent), &origins);
            assert_eq!(refusal.is_none(), *passes, "{method} {sent:?}");
            if let Some(refusal) = refusal {
                assert_eq!(
                    refusal,
                    GatewayError::Forbidden("Cross-site request refused".into())
                );
            }
        }
        // "*" in the CORS settings admits no page.
        let any = cookie_origins(&["*"]);
        let evil = headers(&[("origin", "https://evil.example")]);
        assert!(cross_site_refusal(&Method::POST, &evil, &any).is_some());
    }

    #[test]
    fn identity_headers_replace_whatever_was_there() {
        let identity = IdentityHeaders::new(&claims("ada@example.com"));
        let mut headers = HeaderMap::new();
        headers.append(&X_AUTH_ROLE, HeaderValue::from_static("spoofed"));
        headers.append(&X_AUTH_ROLE, HeaderValue::from_static("spoofed-too"));
        identity.insert_into(&mut headers);
        let one = |name: &HeaderName| {
            let values: Vec<_> = headers.get_all(name).iter().collect();
            assert_eq!(values.len(), 1, "{name}");
            values[0].to_str().expect("ascii").to_string()
        };
        assert_eq!(one(&X_AUTH_USER_ID), "6f1c0c4e-6b8e-4a55-9a55-0c1f8a1b2c3d");
        assert_eq!(one(&X_AUTH_EMAIL), "ada@example.com");
        assert_eq!(one(&X_AUTH_ROLE), "admin");
        assert_eq!(
            one(&X_AUTH_SESSION_ID),
            "0b5e7f3a-1d2c-4e5f-8a9b-0c1d2e3f4a5b"
        );
    }

    #[test]
    fn a_claim_that_cannot_be_a_header_value_is_left_out() {
        for email in ["ada@example.com\r\nX-Evil: 1", "ada\0@example.com"] {
            let identity = IdentityHeaders::new(&claims(email));
            let mut headers = HeaderMap::new();
            identity.insert_into(&mut headers);
            assert!(headers.get(&X_AUTH_EMAIL).is_none(), "{email:?}");
            assert_eq!(headers.get(&X_AUTH_ROLE).expect("set"), "admin");
        }
    }
}
