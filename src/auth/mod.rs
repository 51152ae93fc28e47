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
mod input;
mod limits;
mod openapi;
mod pages;
mod renewal;
pub mod routes;
mod session;

pub(crate) use input::{is_valid_email, normalize_email, object, query_param, Call};
pub use pages::PageSettings;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, PRAGMA, USER_AGENT};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::access::{AccessVerifier, Principal};
use crate::clock::{rfc3339, Clock};
use crate::config::FailMode;
use crate::error::GatewayError;
use crate::limits::gate::{Gate, Limit};
use crate::limits::revocation::Revocations;
use crate::limits::RedisError;
use crate::password::{PasswordError, PasswordHasher, PasswordRules};
use crate::proxy::body::{client_body_failure, ClientBody};
use crate::proxy::response_body::GatewayBody;
use crate::store::{Store, StoreError, User};
use crate::token::TokenKeys;
use routes::{Access, Route, RouteSpec};

/// Settings the routes need, taken from the configuration.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub public_url: String,
    pub refresh_ttl: Duration,
    /// `tokens.refresh_reuse_grace`, for silent refresh only (`renewal.rs`).
    pub refresh_reuse_grace: Duration,
    pub verification_ttl: Duration,
    pub reset_ttl: Duration,
    pub max_failures: i32,
    pub lock_for: Duration,
    /// `lockout.key`: per account, or per account and client address.
    pub lockout_key: crate::config::LockoutKey,
    /// Cookie mode: sign-in answers also set the session cookies of contract 7.
    pub cookie_mode: bool,
    /// `/auth` bodies are small JSON documents; anything larger is refused early.
    pub max_body_bytes: usize,
    /// How long the body of a request may stay silent.
    pub body_read_timeout: std::time::Duration,
    pub limits: AuthLimits,
    /// What the sign-in pages show.
    pub pages: PageSettings,
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
    /// `rate_limits.login_failures_per_client`: failed logins per client, across accounts.
    pub login_failures: Option<Limit>,
    /// How IPv6 clients are counted: [`crate::limits::client_key`].
    pub ipv6_prefix: u8,
    pub on_redis_error: FailMode,
}

/// The dependencies and settings of every `/auth` route.
pub struct AuthService {
    pub(crate) store: Store,
    pub(crate) revocations: Revocations,
    pub(crate) keys: Arc<TokenKeys>,
    /// Verifies the bearer routes' callers, as it does forwarded requests'.
    pub(crate) access: Arc<AccessVerifier>,
    pub(crate) hasher: PasswordHasher,
    pub(crate) rules: PasswordRules,
    pub(crate) clock: Arc<Clock>,
    pub(crate) settings: AuthSettings,
    pub(crate) mail_waker: Arc<Notify>,
    pub(crate) gate: Gate,
    /// Failed logins per client address, across accounts (`limits.rs`).
    pub(crate) failures: crate::limits::failures::FailureLog,
    /// The sign-in pages' settings and form-token key.
    pages: pages::Pages,
    /// Kept up to date by [`AuthService::follow_revocations`] while the gateway serves.
    feed: crate::limits::feed::RevocationFeed,
    /// The policy in force defines the roles, their order, and the role new users get.
    pub(crate) policy: Arc<crate::live_policy::PolicySource>,
    pub(crate) metrics: crate::telemetry::metrics::AuthMetrics,
    /// Requests answered 202 without their mail, over the recipient's limit.
    mail_suppressed: std::sync::atomic::AtomicU64,
    /// Each task started by [`AuthService::after_answer`] holds a receiver until it ends, so
    /// shutdown (and a test) can wait until none is left.
    after_answer_work: tokio::sync::watch::Sender<()>,
}

type Reply = Result<Response<GatewayBody>, GatewayError>;

impl crate::proxy::OwnRoutes for Arc<AuthService> {
    fn serves(&self, path: &str) -> bool {
        routes::is_gateway_path(path)
    }

    fn answer(
        &self,
        request: Request<Incoming>,
        path: String,
        client_ip: IpAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<GatewayBody>> + Send + '_>>
    {
        Box::pin(self.handle(request, path, client_ip))
    }
}

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
            // A browser's form gets a page or a redirect; everything else the API's answer.
            Ok(call)
                if pages::takes_form(spec.route)
                    && pages::form::body_kind(&call.headers) == pages::form::BodyKind::Form =>
            {
                self.form_post(spec, call).await
            }
            Ok(call) => {
                self.dispatch(pages::api_spec(spec), id.as_deref(), &call)
                    .await
            }
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
            crate::proxy::headers::set_rate_headers(response.headers_mut(), &rate);
        }
        Ok(response)
    }

    async fn route(self: &Arc<Self>, spec: &RouteSpec, id: Option<&str>, call: &Call) -> Reply {
        let method = http::Method::from_bytes(spec.method.as_bytes())
            .expect("the route table names standard methods");
        let principal = match spec.access {
            Access::Public => None,
            Access::Bearer => Some(self.access.authenticate(&method, &call.headers).await?),
            Access::Admin => {
                let principal = self.access.authenticate(&method, &call.headers).await?;
                if !self.role_at_least(&principal.claims.role, "admin") {
                    return Err(GatewayError::InsufficientScope(
                        "Requires admin role".into(),
                    ));
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
            // The gateway answers forward-auth before it dispatches to these routes.
            Route::Forward => Err(GatewayError::NotFound),
            Route::LoginPage
            | Route::RegisterPage
            | Route::VerifyEmailPage
            | Route::ForgotPasswordPage
            | Route::ResetPasswordPage
            | Route::LogoutPage => self.page(spec.route, call).await,
            // Reached only with a JSON body: the API route the form stands for.
            Route::ForgotPassword => self.password_reset(call).await,
            Route::ResetPassword => self.password_reset_confirm(call).await,
            Route::Stylesheet => Ok(pages::stylesheet()),
        }
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
        self.store
            .audit(
                client,
                event,
                user_id,
                call.origin(),
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
        self.store
            .create_email_token(client, user.id, purpose, &token.hash, ttl, now)
            .await
            .map_err(store_error)?;
        crate::mail::enqueue(&self.store, client, &message)
            .await
            .map_err(db_error)
    }

    /// After the answer (see [`AuthService::after_answer`]): issues `user` an email token
    /// and queues its mail, with the audit entry `audit` names, in one transaction.
    pub(crate) fn email_token_after_answer(
        self: &Arc<Self>,
        user: User,
        purpose: crate::store::TokenPurpose,
        audit: Option<(&'static str, Call)>,
    ) {
        let what = match purpose {
            crate::store::TokenPurpose::VerifyEmail => "verification mail",
            crate::store::TokenPurpose::PasswordReset => "password reset mail",
        };
        self.after_answer(what, move |this| async move {
            let now = this.now();
            let mut client = this.store.client().await.map_err(store_error)?;
            let transaction = this.store.begin(&mut client).await.map_err(db_error)?;
            this.issue_email_token(&transaction, &user, purpose, now)
                .await?;
            if let Some((event, call)) = audit {
                this.audit_in(
                    &transaction,
                    event,
                    Some(user.id),
                    &call,
                    serde_json::json!({}),
                )
                .await?;
            }
            this.store.commit(transaction).await.map_err(db_error)?;
            this.mail_waker.notify_one();
            Ok(())
        });
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

/// Headers every `/auth` response carries: nothing here may be cached (but the versioned
/// stylesheet), and the reset and verification routes must not leak their URL as a referrer.
fn finish(mut response: Response<GatewayBody>, route: Option<Route>) -> Response<GatewayBody> {
    let headers = response.headers_mut();
    if route != Some(Route::Stylesheet) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    }
    if matches!(
        route,
        Some(
            Route::VerifyEmail
                | Route::ResendVerification
                | Route::PasswordReset
                | Route::PasswordResetConfirm
                | Route::VerifyEmailPage
                | Route::ForgotPassword
                | Route::ResetPasswordPage
                | Route::ResetPassword
        )
    ) {
        response
            .extensions_mut()
            .insert(crate::proxy::headers::NoReferrer);
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
    if let PasswordError::Busy = error {
        tracing::warn!("password hashing queue full: refused");
        return GatewayError::Unavailable("Too many sign-ins in progress; try again shortly");
    }
    tracing::error!(%error, "password hashing failed");
    GatewayError::Internal
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

/// What the composition root (`app`) hands the identity side: every shared part it needs.
pub struct AuthParts {
    pub store: Store,
    pub revocations: Revocations,
    pub feed: crate::limits::feed::RevocationFeed,
    pub gate: Gate,
    /// Failed logins per client address, across accounts.
    pub failures: crate::limits::failures::FailureLog,
    pub keys: Arc<TokenKeys>,
    pub access: Arc<AccessVerifier>,
    pub hasher: PasswordHasher,
    pub rules: PasswordRules,
    pub clock: Arc<Clock>,
    pub policy: Arc<crate::live_policy::PolicySource>,
    /// Wakes the outbox worker when a mail is queued.
    pub mail_waker: Arc<Notify>,
    pub settings: AuthSettings,
}

impl AuthService {
    pub fn new(parts: AuthParts) -> AuthService {
        let pages = pages::Pages::new(parts.settings.pages.clone(), &parts.keys);
        AuthService {
            store: parts.store,
            revocations: parts.revocations,
            keys: parts.keys,
            access: parts.access,
            hasher: parts.hasher,
            rules: parts.rules,
            clock: parts.clock,
            settings: parts.settings,
            mail_waker: parts.mail_waker,
            gate: parts.gate,
            failures: parts.failures,
            pages,
            feed: parts.feed,
            policy: parts.policy,
            metrics: Default::default(),
            mail_suppressed: std::sync::atomic::AtomicU64::new(0),
            after_answer_work: tokio::sync::watch::channel(()).0,
        }
    }

    /// Keeps this instance's copy of the revocation list current (and acknowledges other
    /// instances' revocations), for as long as it runs.
    pub async fn follow_revocations(&self) {
        self.feed.clone().run(self.revocations.clone()).await;
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
        let mut out = self.metrics.render();
        out.push_str(&self.render_mail_metrics());
        crate::telemetry::exposition::single(
            &mut out,
            "portcullis_password_verifications_total",
            "counter",
            "Argon2 verifications run, the dummy's for unknown emails included.",
            self.hasher.verifications(),
        );
        out
    }

    /// Whether Postgres and Redis answer now.
    pub async fn dependencies_up(&self) -> (bool, bool) {
        tokio::join!(self.store.ping(), self.revocations.ping())
    }
}
