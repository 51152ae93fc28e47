//! The `/auth` routes: registration and verification, login with lockout, rotating refresh
//! sessions, logout, password reset and change, the admin API, and the documents the
//! gateway publishes (OpenAPI, JWKS).
//!
//! Handlers compose the pure cores (`token`, `password`) with the stores (`store`, `limits`)
//! and never touch HTTP framing beyond a parsed [`Call`]. Each request runs as a detached
//! task, so a client that hangs up cannot cancel work half done (a counted failure, a queued
//! mail). Revocation is written to Redis before Postgres changes, so an outage of either
//! answers 503 before anything is half-revoked.

mod account;
mod admin;
mod credentials;
mod limits;
mod openapi;
pub mod routes;
mod session;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, COOKIE, PRAGMA, USER_AGENT,
};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Map, Value};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::clock::{rfc3339, Clock};
use crate::config::FailMode;
use crate::error::GatewayError;
use crate::limits::gate::{Gate, GateCheck, Limit};
use crate::limits::revocation::Revocations;
use crate::limits::RedisError;
use crate::password::{PasswordError, PasswordHasher, PasswordRules};
use crate::proxy::body::{client_body_failure, ClientBody, GatewayBody};
use crate::store::{Store, StoreError, User};
use crate::token::{AccessClaims, TokenKeys};
use routes::{Access, Route, RouteSpec};

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
    pub identity: crate::proxy::enforce::IdentityHeaders,
}

impl VerifiedToken {
    fn new(claims: AccessClaims) -> VerifiedToken {
        VerifiedToken {
            identity: crate::proxy::enforce::IdentityHeaders::new(&claims),
            claims,
        }
    }
}

/// Marks a response that must not leak its URL (and so the token in it) as a referrer.
#[derive(Debug, Clone, Copy)]
pub struct NoReferrer;

/// Settings the routes need, taken from the configuration.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub public_url: String,
    pub refresh_ttl: Duration,
    pub verification_ttl: Duration,
    pub reset_ttl: Duration,
    pub max_failures: i32,
    pub lock_for: Duration,
    pub revocation_on_redis_error: FailMode,
    /// The access-token cookie, when cookie mode is on.
    pub access_cookie: Option<String>,
    /// `/auth` bodies are small JSON documents; anything larger is refused early.
    pub max_body_bytes: usize,
    /// How long the body of a request may stay silent.
    pub body_read_timeout: std::time::Duration,
    pub limits: AuthLimits,
}

/// Rate limits of the `/auth` routes (`limits.rs`): per client address, and per recipient
/// for the routes that send mail.
#[derive(Debug, Clone, Copy)]
pub struct AuthLimits {
    pub login: Limit,
    pub register: Limit,
    pub password_reset: Limit,
    pub default: Limit,
    pub per_recipient: Limit,
    /// How IPv6 clients are counted: [`crate::limits::client_key`].
    pub ipv6_prefix: u8,
    pub on_redis_error: FailMode,
}

/// The dependencies and settings of every `/auth` route.
pub struct AuthService {
    pub(crate) store: Store,
    pub(crate) revocations: Revocations,
    pub(crate) keys: TokenKeys,
    pub(crate) hasher: PasswordHasher,
    pub(crate) rules: PasswordRules,
    pub(crate) clock: Arc<Clock>,
    pub(crate) settings: AuthSettings,
    pub(crate) mail_waker: Arc<Notify>,
    pub(crate) gate: Gate,
    /// Kept up to date by [`AuthService::follow_revocations`] while the gateway serves.
    feed: crate::limits::feed::RevocationFeed,
    /// The policy in force defines the roles, their order, and the role new users get.
    pub(crate) policy: Arc<crate::server::policy_source::PolicySource>,
    /// Tokens whose signature and claims were already verified, for forwarded requests.
    pub(crate) verified: VerifiedTokens,
    pub(crate) metrics: crate::telemetry::metrics::AuthMetrics,
    /// Requests answered 202 without their mail, over the recipient's limit.
    mail_suppressed: std::sync::atomic::AtomicU64,
    /// Each task started by [`AuthService::after_answer`] holds a receiver until it ends, so
    /// shutdown (and a test) can wait until none is left.
    after_answer_work: tokio::sync::watch::Sender<()>,
}

/// Access tokens already verified, per worker thread, so a client presenting the same token
/// on every request pays for the signature and claim parsing once. Only what cannot change
/// is cached (the token's bytes fix its claims); the time checks run on every use, and
/// revocation is checked in Redis on every request as before.
///
/// Refused tokens are remembered too (an expired or foreign token sent to public assets is
/// common), but only as a keyed 64-bit hash: a client sending large garbage tokens cannot
/// fill memory with them, and a collision could only refuse, never accept.
pub(crate) struct VerifiedTokens {
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
        &self.shards[crate::server::workers::current_worker() % self.shards.len()]
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
            let claims = &verified.claims;
            let live = now < claims.exp.saturating_add(self.leeway)
                && claims
                    .nbf
                    .is_none_or(|nbf| now.saturating_add(self.leeway) >= nbf)
                && now.saturating_add(self.leeway) >= claims.iat;
            return if live {
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

/// One parsed `/auth` request.
#[derive(Clone)]
pub(crate) struct Call {
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub ip: String,
    /// The client as per-address rate limits count it (an IPv6 client's network).
    pub limit_key: String,
    pub user_agent: Option<String>,
}

/// An authenticated caller: verified token, not revoked.
pub(crate) struct Principal {
    pub claims: AccessClaims,
    pub user_id: Uuid,
    pub session_id: Uuid,
}

type Reply = Result<Response<GatewayBody>, GatewayError>;

impl AuthService {
    /// Answers a request for a gateway path (`routes::is_gateway_path`). `path` is the
    /// normalised path, `client_ip` the address the gateway trusts for this client.
    pub async fn handle(
        self: &Arc<Self>,
        request: Request<Incoming>,
        path: String,
        client_ip: IpAddr,
    ) -> Response<GatewayBody> {
        let service = self.clone();
        let task = tokio::spawn(async move { service.serve(request, path, client_ip).await });
        match task.await {
            Ok(response) => response,
            Err(error) => {
                tracing::error!(%error, "auth handler task failed");
                GatewayError::Internal.into_response()
            }
        }
    }

    async fn serve(
        self: &Arc<Self>,
        request: Request<Incoming>,
        path: String,
        client_ip: IpAddr,
    ) -> Response<GatewayBody> {
        let (spec, id) = match routes::match_route(request.method(), &path) {
            Ok(found) => found,
            Err(error) => {
                let mut response = error.into_response();
                if response.status() == StatusCode::METHOD_NOT_ALLOWED {
                    let allow = routes::allowed_methods(&path).join(", ");
                    if let Ok(allow) = HeaderValue::from_str(&allow) {
                        response.headers_mut().insert(ALLOW, allow);
                    }
                }
                return finish(response, None);
            }
        };
        let id = id.map(str::to_string);
        let result = match self.read_call(request, client_ip).await {
            Ok(call) => self.dispatch(spec, id.as_deref(), &call).await,
            Err(error) => Err(error),
        };
        let response = result.unwrap_or_else(GatewayError::into_response);
        finish(response, Some(spec.route))
    }

    async fn read_call(
        &self,
        request: Request<Incoming>,
        client_ip: IpAddr,
    ) -> Result<Call, GatewayError> {
        let (parts, body) = request.into_parts();
        let body = ClientBody::new(
            body,
            self.settings.max_body_bytes as u64,
            self.settings.body_read_timeout,
        )
        .collect()
        .await
        .map_err(|error| {
            client_body_failure(error.as_ref())
                .unwrap_or_else(|| GatewayError::bad_request("Request body could not be read"))
        })?
        .to_bytes();
        let user_agent = parts
            .headers
            .get(USER_AGENT)
            .and_then(|value| value.to_str().ok())
            .map(|agent| agent.chars().take(512).collect());
        Ok(Call {
            query: parts.uri.query().map(str::to_string),
            headers: parts.headers,
            body,
            ip: client_ip.to_string(),
            limit_key: crate::limits::client_key(client_ip, self.settings.limits.ipv6_prefix),
            user_agent,
        })
    }

    async fn dispatch(self: &Arc<Self>, spec: &RouteSpec, id: Option<&str>, call: &Call) -> Reply {
        let rate = self.rate_limit(spec.route, call).await?;
        // Every answer within the limit says how much is left, failures included.
        let mut response = match self.recipient_limit(spec.route, call).await {
            Ok(Some(without_mail)) => without_mail,
            Ok(None) => self
                .route(spec, id, call)
                .await
                .unwrap_or_else(GatewayError::into_response),
            Err(refusal) => return Err(refusal),
        };
        if let Some(rate) = rate {
            crate::proxy::enforce::set_rate_headers(response.headers_mut(), &rate);
        }
        Ok(response)
    }

    async fn route(self: &Arc<Self>, spec: &RouteSpec, id: Option<&str>, call: &Call) -> Reply {
        let principal = match spec.access {
            Access::Public => None,
            Access::Bearer => Some(self.authenticate(call).await?),
            Access::Admin => {
                let principal = self.authenticate(call).await?;
                if !self.role_at_least(&principal.claims.role, "admin") {
                    return Err(GatewayError::Forbidden("Requires admin role".into()));
                }
                Some(principal)
            }
        };
        let principal = principal.as_ref();
        match spec.route {
            Route::Register => self.register(call).await,
            Route::VerifyEmail => self.verify_email(call).await,
            Route::ResendVerification => self.resend_verification(call).await,
            Route::Login => self.login(call).await,
            Route::Refresh => self.refresh(call).await,
            Route::Logout => self.logout(call, required(principal)).await,
            Route::PasswordReset => self.password_reset(call).await,
            Route::PasswordResetConfirm => self.password_reset_confirm(call).await,
            Route::PasswordChange => self.password_change(call, required(principal)).await,
            Route::Me => self.me(required(principal)).await,
            Route::Sessions => self.sessions(required(principal)).await,
            Route::DeleteSession => {
                self.delete_session(required(principal), id.unwrap_or_default())
                    .await
            }
            Route::AdminUsers => self.admin_users(call).await,
            Route::AdminUser => self.admin_user(id.unwrap_or_default()).await,
            Route::AdminPatchUser => {
                self.admin_patch_user(call, required(principal), id.unwrap_or_default())
                    .await
            }
            Route::AdminUnlock => {
                self.admin_unlock(call, required(principal), id.unwrap_or_default())
                    .await
            }
            Route::AdminAudit => self.admin_audit(call).await,
            Route::OpenApi => Ok(json(StatusCode::OK, &openapi::document())),
            Route::Jwks => Ok(json(StatusCode::OK, &self.keys.jwks())),
        }
    }

    /// Verifies the caller's access token and that it has not been revoked.
    pub(crate) async fn authenticate(&self, call: &Call) -> Result<Principal, GatewayError> {
        let Some((token, _)) = self.bearer_token(&call.headers) else {
            return Err(GatewayError::unauthorized("Not authenticated"));
        };
        let claims = self
            .keys
            .verify_access(token, self.clock.unix_now())
            .map_err(|error| {
                tracing::debug!(%error, "access token refused");
                GatewayError::invalid_token("Invalid or expired token")
            })?;
        let (Ok(user_id), Ok(session_id)) =
            (Uuid::parse_str(&claims.sub), Uuid::parse_str(&claims.sid))
        else {
            return Err(GatewayError::invalid_token("Invalid or expired token"));
        };
        // The same one-round-trip check forwarded requests make, without a rate bucket.
        let check = GateCheck {
            bucket: None,
            token: Some((&claims.sid, &claims.sub, claims.iat)),
            now_ms: self.clock.unix_millis(),
        };
        match self.gate.check(&check).await {
            Ok(outcome) if outcome.revoked => {
                return Err(GatewayError::invalid_token("Token has been revoked"));
            }
            Ok(_) => {}
            Err(error) => match self.settings.revocation_on_redis_error {
                FailMode::Deny => {
                    tracing::warn!(%error, "revocation check failed; refusing (revocation_on_redis_error: deny)");
                    return Err(GatewayError::Unavailable("Revocation service unavailable"));
                }
                FailMode::Allow => {
                    tracing::warn!(%error, "revocation check failed; allowing (revocation_on_redis_error: allow)");
                }
            },
        }
        Ok(Principal {
            claims,
            user_id,
            session_id,
        })
    }

    /// Reads and verifies the access token of a forwarded request.
    pub fn read_access_token(&self, headers: &HeaderMap) -> TokenState {
        let Some((token, source)) = self.bearer_token(headers) else {
            return TokenState::Absent;
        };
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
                if error != crate::token::TokenError::NotYetValid {
                    self.verified.refuse(token);
                }
                tracing::debug!(%error, "access token refused");
                TokenState::Invalid
            }
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
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
        let cookie_name = self.settings.access_cookie.as_deref()?;
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == cookie_name)
            .map(|(_, value)| (value, TokenSource::Cookie))
    }

    pub(crate) fn role_at_least(&self, role: &str, needed: &str) -> bool {
        self.policy.current().policy.role_at_least(role, needed)
    }

    pub(crate) fn is_known_role(&self, role: &str) -> bool {
        self.policy.current().policy.is_role(role)
    }

    /// The lowest role: what a self-registered user gets. A policy always has one.
    pub(crate) fn default_role(&self) -> String {
        self.policy
            .current()
            .policy
            .roles()
            .first()
            .cloned()
            .unwrap_or_default()
    }

    /// Loads the principal's user, refusing a deleted or deactivated one.
    pub(crate) async fn principal_user(&self, principal: &Principal) -> Result<User, GatewayError> {
        match self
            .store
            .user_by_id(principal.user_id)
            .await
            .map_err(store_error)?
        {
            Some(user) if user.is_active => Ok(user),
            _ => Err(GatewayError::invalid_token("Invalid or expired token")),
        }
    }

    /// Ends sessions everywhere: Redis first (refused tokens), so a Redis outage fails the
    /// request before Postgres changes.
    pub(crate) async fn revoke_in_redis(
        &self,
        session_ids: &[Uuid],
        user_not_before: Option<(Uuid, u64)>,
    ) -> Result<(), GatewayError> {
        self.revocations
            .revoke(session_ids, user_not_before)
            .await
            .map_err(redis_error)
    }

    pub(crate) async fn audit(
        &self,
        event: &str,
        user_id: Option<Uuid>,
        call: &Call,
        detail: Value,
    ) -> Result<(), GatewayError> {
        let client = self.store.client().await.map_err(store_error)?;
        self.audit_in(&client, event, user_id, call, detail).await
    }

    /// Writes an audit entry with the caller's client or transaction, stamped with the
    /// call's address and user agent.
    pub(crate) async fn audit_in(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        event: &str,
        user_id: Option<Uuid>,
        call: &Call,
        detail: Value,
    ) -> Result<(), GatewayError> {
        Store::audit(
            client,
            event,
            user_id,
            Some(&call.ip),
            call.user_agent.as_deref(),
            &detail,
            self.clock.now(),
        )
        .await
        .map_err(store_error)
    }

    /// Issues a single-use email token for `user` and queues the email that carries it, in
    /// the caller's transaction, so the token and its mail exist together or not at all.
    pub(crate) async fn issue_email_token(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        user: &User,
        purpose: crate::store::TokenPurpose,
        now: SystemTime,
    ) -> Result<(), GatewayError> {
        use crate::store::TokenPurpose;
        let token = crate::token::OpaqueToken::generate();
        let public_url = &self.settings.public_url;
        let (ttl, message) = match purpose {
            TokenPurpose::VerifyEmail => {
                let ttl = self.settings.verification_ttl;
                (
                    ttl,
                    crate::mail::verification_mail(&user.email, public_url, &token.token, ttl),
                )
            }
            TokenPurpose::PasswordReset => {
                let ttl = self.settings.reset_ttl;
                (
                    ttl,
                    crate::mail::password_reset_mail(&user.email, public_url, &token.token, ttl),
                )
            }
        };
        Store::create_email_token(client, user.id, purpose, &token.hash, ttl, now)
            .await
            .map_err(store_error)?;
        crate::mail::enqueue(client, &message)
            .await
            .map_err(db_error)
    }

    pub(crate) fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Runs `work` after the answer is sent, detached: for writes whose presence or absence
    /// must not show in the response time (the reset and verification mails, which exist
    /// only for some addresses). A failure is logged; the client has its 202 either way and
    /// may ask again.
    pub(crate) fn after_answer<F, W>(self: &Arc<Self>, what: &'static str, work: W)
    where
        W: FnOnce(Arc<Self>) -> F + Send + 'static,
        F: std::future::Future<Output = Result<(), GatewayError>> + Send + 'static,
    {
        let this = self.clone();
        let running = self.after_answer_work.subscribe();
        tokio::spawn(async move {
            if let Err(error) = work(this).await {
                tracing::error!(%error, what, "work after the answer failed");
            }
            drop(running);
        });
    }

    /// Resolves once no work started by [`AuthService::after_answer`] is left running: a
    /// client told 202 must find its reset token written even if the gateway stops now.
    pub async fn after_answer_settled(&self) {
        self.after_answer_work.closed().await;
    }
}

fn required(principal: Option<&Principal>) -> &Principal {
    principal.expect("routes with Bearer or Admin access are authenticated before dispatch")
}

/// Headers every `/auth` response carries: nothing here may be cached, and the reset and
/// verification routes must not leak their URL as a referrer.
fn finish(mut response: Response<GatewayBody>, route: Option<Route>) -> Response<GatewayBody> {
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    if matches!(
        route,
        Some(
            Route::VerifyEmail
                | Route::ResendVerification
                | Route::PasswordReset
                | Route::PasswordResetConfirm
        )
    ) {
        response.extensions_mut().insert(NoReferrer);
    }
    response
}

pub(crate) fn json(status: StatusCode, value: &Value) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(value.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(crate) fn status_only(status: StatusCode) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::empty());
    *response.status_mut() = status;
    response
}

/// Maps a store failure to what the client sees; the cause goes to the log.
pub(crate) fn store_error(error: StoreError) -> GatewayError {
    match error {
        StoreError::Unavailable(cause) => {
            tracing::warn!(%cause, "database unavailable");
            GatewayError::Unavailable("Database unavailable")
        }
        StoreError::Conflict => GatewayError::Conflict("Conflict"),
        StoreError::Database(cause) => {
            tracing::error!(error = %crate::error::chain(&cause), "database error");
            GatewayError::Internal
        }
    }
}

/// A failed query or transaction step, mapped like any store failure.
pub(crate) fn db_error(error: tokio_postgres::Error) -> GatewayError {
    store_error(error.into())
}

pub(crate) fn redis_error(error: RedisError) -> GatewayError {
    tracing::warn!(%error, "redis unavailable");
    GatewayError::Unavailable("Revocation service unavailable")
}

pub(crate) fn password_error(error: PasswordError) -> GatewayError {
    tracing::error!(%error, "password hashing failed");
    GatewayError::Internal
}

/// The JSON object a request carried. Malformed JSON is 400; a missing or mistyped field is
/// 422 (see [`Fields`]).
pub(crate) fn object(call: &Call) -> Result<Fields, GatewayError> {
    if call.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Fields(Map::new()));
    }
    match serde_json::from_slice::<Value>(&call.body) {
        Ok(Value::Object(map)) => Ok(Fields(map)),
        Ok(_) => Err(GatewayError::bad_request(
            "Request body must be a JSON object",
        )),
        Err(_) => Err(GatewayError::bad_request("Malformed JSON")),
    }
}

pub(crate) struct Fields(Map<String, Value>);

/// The longest string any `/auth` field takes, in bytes. Passwords have their own, lower,
/// limit in the password rules; nothing else comes near this.
const MAX_FIELD_BYTES: usize = 4096;

/// Every string a client sends is checked here, before it can reach Postgres or a log: NUL
/// (which Postgres text refuses), other control characters (which have no place in an email,
/// a name or a token, and forge log lines), and length. Passwords may hold any character but
/// NUL; their own rules judge the rest.
fn check_text(name: &'static str, text: &str) -> Result<(), GatewayError> {
    if text.len() > MAX_FIELD_BYTES {
        return Err(GatewayError::unprocessable(format!(
            "Field '{name}' is too long"
        )));
    }
    let is_password = name.ends_with("password");
    let refused = |c: char| c == '\0' || (!is_password && c.is_control());
    if text.chars().any(refused) {
        return Err(GatewayError::unprocessable(format!(
            "Field '{name}' must not contain control characters"
        )));
    }
    Ok(())
}

impl Fields {
    pub fn string(&self, name: &'static str) -> Result<&str, GatewayError> {
        match self.0.get(name) {
            Some(Value::String(text)) => {
                check_text(name, text)?;
                Ok(text)
            }
            Some(_) => Err(GatewayError::unprocessable(format!(
                "Field '{name}' must be a string"
            ))),
            None => Err(GatewayError::unprocessable(format!(
                "Field '{name}' is required"
            ))),
        }
    }

    pub fn optional_string(&self, name: &'static str) -> Result<Option<&str>, GatewayError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => {
                check_text(name, text)?;
                Ok(Some(text))
            }
            Some(_) => Err(GatewayError::unprocessable(format!(
                "Field '{name}' must be a string"
            ))),
        }
    }

    pub fn optional_bool(&self, name: &'static str) -> Result<Option<bool>, GatewayError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(_) => Err(GatewayError::unprocessable(format!(
                "Field '{name}' must be a boolean"
            ))),
        }
    }
}

/// The query parameter `name`, percent-decoded; 400 when it decodes to control characters
/// or is longer than any field.
pub(crate) fn query_param(call: &Call, name: &'static str) -> Result<Option<String>, GatewayError> {
    let Some(query) = call.query.as_deref() else {
        return Ok(None);
    };
    let value = query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    });
    match value {
        Some(value) if check_text(name, &value).is_err() => Err(GatewayError::bad_request(
            format!("Invalid query parameter '{name}'"),
        )),
        value => Ok(value),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => decoded.push(b' '),
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) => {
                        decoded.push(byte);
                        index += 2;
                    }
                    None => decoded.push(b'%'),
                }
            }
            byte => decoded.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// The user object of the contract: never a hash or a token.
pub(crate) fn user_json(user: &User) -> Value {
    serde_json::json!({
        "id": user.id.to_string(),
        "email": user.email,
        "name": user.name,
        "role": user.role,
        "is_active": user.is_active,
        "is_verified": user.is_verified,
        "created_at": rfc3339(user.created_at),
        "last_login": user.last_login.map(rfc3339),
    })
}

/// Emails are compared and stored trimmed and lower-cased.
pub(crate) fn normalize_email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

/// A deliberately plain check: one `@`, a sensible local part, a dotted domain of letters,
/// digits and hyphens. Deliverability is proven by the verification email, not here.
pub(crate) fn is_valid_email(email: &str) -> bool {
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    if local.is_empty()
        || local.len() > 64
        || domain.contains('@')
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return false;
    }
    let local_ok = local
        .chars()
        .all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    local_ok && domain_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_validation() {
        for valid in [
            "a@b.co",
            "first.last+tag@example.com",
            "x_y@sub.domain.org",
            "élodie@exemple.fr",
        ] {
            assert!(is_valid_email(valid), "{valid}");
        }
        for invalid in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a@@b.com",
            "a b@c.com",
            "a@b..com",
            ".a@b.com",
            "a.@b.com",
            "a..b@c.com",
            "a@-b.com",
            "a@b-.com",
            "a@b.com\n",
            "a@b_c.com",
        ] {
            assert!(!is_valid_email(invalid), "{invalid:?}");
        }
    }

    #[test]
    fn query_parameters_are_decoded() {
        let call = Call {
            query: Some("q=a%40b.com&limit=5&x=%zz&name=Ann+Lee".into()),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            ip: "127.0.0.1".into(),
            limit_key: "127.0.0.1".into(),
            user_agent: None,
        };
        let param = |name| query_param(&call, name).unwrap();
        assert_eq!(param("q").as_deref(), Some("a@b.com"));
        assert_eq!(param("limit").as_deref(), Some("5"));
        assert_eq!(param("x").as_deref(), Some("%zz"));
        assert_eq!(param("name").as_deref(), Some("Ann Lee"));
        assert_eq!(param("missing"), None);
    }
}

/// Why the identity side could not be assembled from a validated configuration.
#[derive(Debug, thiserror::Error)]
pub enum AuthBuildError {
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("tokens: {0}")]
    Token(#[from] crate::token::TokenError),
    #[error("password: {0}")]
    Password(#[from] PasswordError),
    #[error("smtp: {0}")]
    Mail(#[from] crate::mail::MailError),
}

impl AuthService {
    /// Assembles the routes' dependencies and the outbox worker that sends their mail.
    /// Nothing connects yet: Postgres and Redis are reached on first use, so the gateway
    /// can start while they are away and recover when they return.
    pub fn from_config(
        config: &crate::config::Config,
        clock: Arc<Clock>,
        policy: Arc<crate::server::policy_source::PolicySource>,
    ) -> Result<(AuthService, crate::mail::OutboxWorker), AuthBuildError> {
        use crate::config::{KeyAlgorithm as ConfigAlgorithm, SmtpSecurity as ConfigSecurity};
        use crate::mail::{MailerSettings, OutboxWorker, SmtpSecurity};
        use crate::password::HashParams;
        use crate::token::{KeyAlgorithm, TokenSettings};

        let store = Store::connect(
            config.database.url.expose(),
            config.database.max_connections,
            config.database.connect_timeout,
        )?;
        let redis = crate::limits::Redis::connect_for_workers(
            config.redis.url.expose(),
            &config.redis.key_prefix,
            config.redis.timeout,
            crate::server::workers::worker_count(config.server.worker_threads),
        )?;
        let redis_for_gate = redis.clone();
        // Always followed, even when tokens are not checked against it: this instance's
        // revocations are published and acknowledged either way, so instances that do check
        // see them in time.
        let feed = crate::limits::feed::RevocationFeed::new(
            redis.clone(),
            clock.clone(),
            config.tokens.access_ttl + config.tokens.leeway,
            config.redis.revocation_lease,
            config.redis.revocation_feed,
            Some(store.clone()),
        );
        let tokens = &config.tokens;
        let settings = TokenSettings {
            issuer: tokens.issuer.clone(),
            audience: tokens.audience.clone(),
            access_ttl: tokens.access_ttl,
            leeway: tokens.leeway,
        };
        let generated;
        let secret = match &tokens.hs256_secret {
            Some(secret) => Some(secret.expose().as_bytes()),
            None if tokens.signing_keys.is_empty() => {
                tracing::warn!(
                    "no tokens.hs256_secret and no signing keys configured: using a random secret; \
                     tokens will not survive a restart or verify on other instances"
                );
                let mut bytes = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                    .map_err(|_| {
                        crate::token::TokenError::Signing("no randomness for a secret".into())
                    })?;
                generated = bytes;
                Some(&generated[..])
            }
            None => None,
        };
        let key_files: Vec<_> = tokens
            .signing_keys
            .iter()
            .map(|key| {
                let algorithm = match key.algorithm {
                    ConfigAlgorithm::EdDsa => KeyAlgorithm::EdDsa,
                    ConfigAlgorithm::Es256 => KeyAlgorithm::Es256,
                };
                (key.kid.clone(), algorithm, key.private_key_path.clone())
            })
            .collect();
        let keys = TokenKeys::load(settings, secret, &key_files, tokens.active_kid.as_deref())?;

        let argon2 = &config.password.argon2;
        // One core is always left to forwarding: with every core hashing, a login flood
        // tripled forwarded p99 on two cores (bench/login.sh).
        let cores = std::thread::available_parallelism().map_or(2, |cores| cores.get());
        let hashing_threads = match config.password.max_concurrent_hashes {
            0 => cores.saturating_sub(1).max(1),
            configured => configured,
        };
        let hasher = PasswordHasher::new(
            HashParams {
                memory_kib: argon2.memory_kib,
                iterations: argon2.iterations,
                parallelism: argon2.parallelism,
            },
            hashing_threads,
        )?;
        let rules = config.password.rules();

        let smtp = &config.smtp;
        let worker = OutboxWorker::new(
            store.pool().clone(),
            MailerSettings {
                host: smtp.host.clone(),
                port: smtp.port,
                security: match smtp.security {
                    ConfigSecurity::Plain => SmtpSecurity::Plain,
                    ConfigSecurity::StartTls => SmtpSecurity::StartTls,
                    ConfigSecurity::Tls => SmtpSecurity::Tls,
                },
                username: smtp.username.clone(),
                password: smtp
                    .password
                    .as_ref()
                    .map(|password| password.expose().to_string()),
                from: smtp.from.clone(),
                timeout: smtp.timeout,
                retry_initial: smtp.retry_initial,
                retry_max: smtp.retry_max,
                poll_interval: smtp.poll_interval,
                batch_size: 50,
            },
        )?;

        let service = AuthService {
            revocations: Revocations::new(
                redis,
                tokens.access_ttl + tokens.leeway,
                Some(feed.clone()),
                Some(store.clone()),
            ),
            store,
            keys,
            hasher,
            rules,
            clock,
            settings: AuthSettings {
                public_url: config.server.public_url.clone(),
                refresh_ttl: tokens.refresh_ttl,
                verification_ttl: tokens.verification_ttl,
                reset_ttl: tokens.reset_ttl,
                max_failures: i32::try_from(config.lockout.max_failures).unwrap_or(i32::MAX),
                lock_for: config.lockout.duration,
                revocation_on_redis_error: config.rate_limits.revocation_on_redis_error,
                access_cookie: tokens
                    .cookie
                    .enabled
                    .then(|| tokens.cookie.access_name.clone()),
                max_body_bytes: config.server.max_auth_body_bytes,
                body_read_timeout: config.server.body_read_timeout,
                limits: AuthLimits {
                    login: limit(&config.rate_limits.login),
                    register: limit(&config.rate_limits.register),
                    password_reset: limit(&config.rate_limits.password_reset),
                    default: limit(&config.rate_limits.default),
                    per_recipient: limit(&config.rate_limits.per_recipient),
                    ipv6_prefix: config.rate_limits.ipv6_prefix,
                    on_redis_error: config.rate_limits.on_redis_error,
                },
            },
            mail_waker: worker.waker(),
            gate: Gate::with_feed(redis_for_gate, Some(feed.clone())),
            feed,
            policy,
            verified: VerifiedTokens::new(
                crate::server::workers::worker_count(config.server.worker_threads),
                tokens.leeway,
            ),
            metrics: Default::default(),
            mail_suppressed: std::sync::atomic::AtomicU64::new(0),
            after_answer_work: tokio::sync::watch::channel(()).0,
        };
        Ok((service, worker))
    }

    /// Keeps this instance's copy of the revocation list current (and acknowledges other
    /// instances' revocations), for as long as it runs.
    pub async fn follow_revocations(&self) {
        self.feed.clone().run().await;
    }

    /// Whether signed-in requests are checked against the local revocation copy now.
    pub fn revocation_copy_trusted(&self) -> bool {
        self.feed.trusted()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The identity routes' counters, in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        format!("{}{}", self.metrics.render(), self.render_mail_metrics())
    }

    /// Whether Postgres and Redis answer now.
    pub async fn dependencies_up(&self) -> (bool, bool) {
        tokio::join!(self.store.ping(), self.revocations.ping())
    }
}

fn limit(config: &crate::config::RateLimit) -> Limit {
    Limit {
        requests: config.requests,
        window: config.per,
    }
}

#[cfg(test)]
mod verified_tokens_tests {
    use super::*;

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
}
