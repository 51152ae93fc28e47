//! Sessions: login with lockout, refresh rotation with reuse detection, logout, and the
//! caller's session list.

use std::time::{Duration, SystemTime};

use http::header::SET_COOKIE;
use http::StatusCode;
use uuid::Uuid;

use super::{
    db_error, json, normalize_email, object, password_error, status_only, store_error, user_json,
    AuthService, Call, Principal, Reply,
};
use crate::clock::{rfc3339, unix_seconds};
use crate::config::LockoutKey;
use crate::error::GatewayError;
use crate::mail;
use crate::password::Verification;
use crate::store::{
    CommitVerdict, LockoutScope, LoginFailure, RefreshOutcome, Rehash, SessionRow, User,
};
use crate::telemetry::metrics::LoginOutcome;
use crate::token::{hash_opaque, OpaqueToken};

const INVALID_CREDENTIALS: &str = "Invalid email or password";

/// What a presented refresh token got: a rotation, or within a silent refresh's grace the
/// session alone (its caller issues an access token for it).
pub(super) struct Rotation {
    pub user: User,
    pub session_id: Uuid,
    /// The new refresh token; `None` within the grace, where the rotation that spent the
    /// presented token already made the session's only live one.
    pub refresh_token: Option<String>,
    /// Fixed at login; the refresh cookie lives no longer.
    pub session_expires_at: SystemTime,
    pub now: SystemTime,
}
pub(super) const NEWLY_LOCKED: &str = "Too many failed attempts. Account locked.";
const DEACTIVATED: &str = "Account has been deactivated";
const UNVERIFIED: &str = "Please verify your email first";
/// How every answer for a locked account opens ([`locked_detail`]).
const LOCKED_PREFIX: &str = "Account locked.";

/// A login refused, with how it is counted (`portcullis_logins_total{outcome}`): the outcome
/// is decided where the refusal is made, beside the answer, never read back from its text.
#[derive(Debug)]
pub(super) struct LoginRefusal {
    pub outcome: LoginOutcome,
    pub error: GatewayError,
}

impl LoginRefusal {
    pub(super) fn new(outcome: LoginOutcome, error: GatewayError) -> LoginRefusal {
        LoginRefusal { outcome, error }
    }
}

/// What the login did not decide itself (a malformed body, Postgres or Redis down, a
/// password hashing failure) is an error; every refusal it decides names its outcome.
impl From<GatewayError> for LoginRefusal {
    fn from(error: GatewayError) -> LoginRefusal {
        LoginRefusal::new(LoginOutcome::Error, error)
    }
}

impl FailureAnswer {
    /// The answer to a counted failure, and how the login is counted.
    fn refusal(self, now: SystemTime) -> LoginRefusal {
        match self {
            FailureAnswer::Invalid => LoginRefusal::new(
                LoginOutcome::Invalid,
                GatewayError::unauthorized(INVALID_CREDENTIALS),
            ),
            FailureAnswer::NewlyLocked => LoginRefusal::new(
                LoginOutcome::Locked,
                GatewayError::unauthorized(NEWLY_LOCKED),
            ),
            FailureAnswer::Locked(until) => {
                LoginRefusal::new(LoginOutcome::Locked, locked(until, now))
            }
        }
    }
}

/// Why a password-verified account cannot sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unusable {
    Deactivated,
    Unverified,
}

impl Unusable {
    fn of(user: &User) -> Option<Unusable> {
        if !user.is_active {
            Some(Unusable::Deactivated)
        } else if !user.is_verified {
            Some(Unusable::Unverified)
        } else {
            None
        }
    }

    /// The audit's reason, the login's outcome, the client's detail.
    fn parts(self) -> (&'static str, LoginOutcome, &'static str) {
        match self {
            Unusable::Deactivated => ("deactivated", LoginOutcome::Deactivated, DEACTIVATED),
            Unusable::Unverified => ("unverified", LoginOutcome::Unverified, UNVERIFIED),
        }
    }
}

/// What a counted failure is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FailureAnswer {
    Invalid,
    /// This very attempt locked the account.
    NewlyLocked,
    /// The account was already locked when this attempt was counted.
    Locked(SystemTime),
}

impl FailureAnswer {
    pub(super) fn of(failure: &LoginFailure, now: SystemTime) -> FailureAnswer {
        if failure.newly_locked {
            return FailureAnswer::NewlyLocked;
        }
        match failure.locked_until.filter(|until| *until > now) {
            Some(until) => FailureAnswer::Locked(until),
            None => FailureAnswer::Invalid,
        }
    }
}

/// Why an attempt is counted as a failed login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    UnknownEmail,
    WrongPassword,
    /// A wrong `current_password` on `password-change`.
    WrongCurrentPassword,
    /// Any attempt while the account is locked, before its password is checked.
    Locked,
}

impl Failure {
    fn reason(self) -> &'static str {
        match self {
            Failure::UnknownEmail => "unknown email",
            Failure::WrongPassword => "wrong password",
            Failure::WrongCurrentPassword => "wrong current password",
            Failure::Locked => "locked",
        }
    }
}

/// What a login from the client address `limit_key` counts its failures against.
pub(super) fn lockout_scope(key: LockoutKey, limit_key: &str) -> LockoutScope<'_> {
    match key {
        LockoutKey::Account => LockoutScope::Account,
        LockoutKey::AccountAndIp => LockoutScope::Address(limit_key),
    }
}

/// How many times a login decides again after the account changed under it (a role change
/// or an activation change that left the verified password valid) before giving up.
const COMMIT_TRIES: usize = 3;

impl AuthService {
    /// Unknown email and wrong password answer alike and cost alike: a dummy hash is
    /// verified when there is no user. Every failure is counted in one SQL statement. A
    /// verified password succeeds only by [`AuthService::commit_login`], which decides on
    /// the locked row, so a lock or an account change made while the password was being
    /// verified is never missed.
    pub(super) async fn login(&self, call: &Call) -> Reply {
        let body = self.sign_in(call).await?;
        Ok(self.token_response(&body, call))
    }

    /// The login itself, for the API and the sign-in form alike: the token body of a new
    /// session (with the user object), or the refusal.
    pub(super) async fn sign_in(&self, call: &Call) -> Result<serde_json::Value, GatewayError> {
        match self.try_sign_in(call).await {
            Ok(body) => {
                self.metrics.login(LoginOutcome::Success);
                Ok(body)
            }
            Err(refusal) => {
                self.metrics.login(refusal.outcome);
                Err(refusal.error)
            }
        }
    }

    async fn try_sign_in(&self, call: &Call) -> Result<serde_json::Value, LoginRefusal> {
        let fields = object(call)?;
        let email = normalize_email(fields.string("email")?);
        let password = fields.string("password")?;
        // Before anything else, so that a client over its failures costs no password check.
        let place = self.take_failure_place(call).await?;
        let now = self.now();
        let user = self
            .store
            .user_by_email(&email)
            .await
            .map_err(store_error)?;
        let user = self.in_lockout_scope(user, call).await?;

        if let Some(user) = &user {
            if self.lock_of(user, now).is_some() {
                return Err(self.failed_login(user, Failure::Locked, call, now).await?);
            }
        }

        let stored = user.as_ref().map(|user| user.password_hash.as_str());
        let verification = self
            .hasher
            .verify(password, stored)
            .await
            .map_err(password_error)?;
        let Some(user) = user else {
            self.record_failure(None, &email, Failure::UnknownEmail, call, now)
                .await?;
            return Err(FailureAnswer::Invalid.refusal(now));
        };
        let needs_rehash = match verification {
            Verification::Match { needs_rehash } => {
                // Not a failure, whatever comes of it (a lock, an unverified email).
                self.give_back_failure_place(place).await;
                needs_rehash
            }
            Verification::Mismatch => {
                return Err(self
                    .failed_login(&user, Failure::WrongPassword, call, now)
                    .await?)
            }
        };
        self.refuse_unusable(&user, call).await?;

        let rehash = if needs_rehash {
            Some(self.hasher.hash(password).await.map_err(password_error)?)
        } else {
            None
        };
        let refresh = OpaqueToken::generate();
        let (user, session, now) = self
            .commit_login(user, rehash.as_deref(), &refresh.hash, call)
            .await?;
        let mut body = self.token_body(&user, session.id, &refresh.token, now)?;
        body["user"] = user_json(&user);
        Ok(body)
    }

    /// Refuses a deactivated or unverified account (after its password matched).
    async fn refuse_unusable(&self, user: &User, call: &Call) -> Result<(), LoginRefusal> {
        let Some(unusable) = Unusable::of(user) else {
            return Ok(());
        };
        let (reason, outcome, detail) = unusable.parts();
        self.audit(
            "login_failure",
            Some(user.id),
            call,
            serde_json::json!({ "reason": reason }),
        )
        .await?;
        Err(LoginRefusal::new(
            outcome,
            GatewayError::unauthorized(detail),
        ))
    }

    /// The caller's lockout scope ([`lockout_scope`]).
    pub(super) fn lockout_scope<'a>(&self, call: &'a Call) -> LockoutScope<'a> {
        lockout_scope(self.settings.lockout_key, &call.limit_key)
    }

    /// `user` with the failure count and lock of the caller's scope: per address, its pair's
    /// (read for an unknown email too, so that both cost the same statements).
    pub(super) async fn in_lockout_scope(
        &self,
        user: Option<User>,
        call: &Call,
    ) -> Result<Option<User>, GatewayError> {
        let LockoutScope::Address(key) = self.lockout_scope(call) else {
            return Ok(user);
        };
        let id = user.as_ref().map_or(Uuid::nil(), |user| user.id);
        let client = self.store.client().await.map_err(store_error)?;
        let (attempts, locked_until) = self
            .store
            .pair_lockout(&client, id, key)
            .await
            .map_err(store_error)?;
        Ok(user.map(|mut user| {
            user.failed_login_attempts = attempts;
            user.locked_until = locked_until;
            user
        }))
    }

    /// The end of `user`'s lock at `now`, unless lockout is turned off.
    pub(super) fn lock_of(&self, user: &User, now: SystemTime) -> Option<SystemTime> {
        self.lockout_on().then(|| user.locked_at(now)).flatten()
    }

    pub(super) fn lockout_on(&self) -> bool {
        self.settings.max_failures > 0
    }

    /// Decides a login whose password matched `read`, with the user row locked: a lock
    /// that holds now refuses it (and is never cleared by it), a changed password refuses
    /// it, and a role or activation change makes it decide again on the changed row. The
    /// session is created and the success audited in the same transaction, so a change of
    /// the account commits either before the login (which then fails) or after its session
    /// exists (which the change then ends). Times are taken at the decision, so the token
    /// is issued no earlier than any change the login saw.
    async fn commit_login(
        &self,
        mut read: User,
        rehash: Option<&str>,
        refresh_hash: &[u8],
        call: &Call,
    ) -> Result<(User, SessionRow, SystemTime), LoginRefusal> {
        for _ in 0..COMMIT_TRIES {
            let now = self.now();
            let mut client = self.store.client().await.map_err(store_error)?;
            let transaction = self.store.begin(&mut client).await.map_err(db_error)?;
            let Some(current) = self
                .store
                .lock_user_in_scope(&transaction, read.id, self.lockout_scope(call))
                .await
                .map_err(store_error)?
            else {
                // Deleted since its password was verified.
                return Err(FailureAnswer::Invalid.refusal(now));
            };
            match current.commit_verdict(&read, self.lockout_on(), now) {
                CommitVerdict::Proceed => {}
                CommitVerdict::Locked(until) => {
                    drop(transaction);
                    self.refused_locked(&current, call).await?;
                    return Err(FailureAnswer::Locked(until).refusal(now));
                }
                CommitVerdict::PasswordChanged => {
                    return Err(FailureAnswer::Invalid.refusal(now));
                }
                CommitVerdict::AccountChanged => {
                    drop(transaction);
                    self.refuse_unusable(&current, call).await?;
                    read = current;
                    continue;
                }
            }
            let rehash = rehash.map(|new_hash| Rehash {
                new_hash,
                verified_hash: &read.password_hash,
            });
            let user = self
                .store
                .record_login_success(&transaction, read.id, rehash, now)
                .await
                .map_err(store_error)?;
            if let LockoutScope::Address(key) = self.lockout_scope(call) {
                self.store
                    .clear_pair_failures(&transaction, read.id, key)
                    .await
                    .map_err(store_error)?;
            }
            let session = self
                .store
                .create_session(
                    &transaction,
                    user.id,
                    refresh_hash,
                    call.origin(),
                    self.settings.refresh_ttl,
                    now,
                )
                .await
                .map_err(store_error)?;
            self.audit_in(
                &transaction,
                "login_success",
                Some(user.id),
                call,
                serde_json::json!({ "session_id": session.id.to_string() }),
            )
            .await?;
            self.store.commit(transaction).await.map_err(db_error)?;
            return Ok((user, session, now));
        }
        // The account kept changing under the login: let the client try again.
        Err(GatewayError::Unavailable("Account changed during login; try again").into())
    }

    /// Audits and counts an attempt with a right password refused because the account is
    /// locked. It is not counted as a failure: no password was guessed wrong.
    pub(super) async fn refused_locked(
        &self,
        user: &User,
        call: &Call,
    ) -> Result<(), GatewayError> {
        self.metrics.login_locked_refusal();
        self.audit(
            "login_locked",
            Some(user.id),
            call,
            serde_json::json!({
                "reason": "locked when the attempt was decided",
                "attempts": user.failed_login_attempts,
                "locked_until": user.locked_until.map(rfc3339),
            }),
        )
        .await?;
        Ok(())
    }

    /// Counts a failed attempt on an existing account and says what to answer: the attempt
    /// that reaches the limit locks the account and emails its owner; one that finds it
    /// locked is refused as locked.
    async fn failed_login(
        &self,
        user: &User,
        kind: Failure,
        call: &Call,
        now: SystemTime,
    ) -> Result<LoginRefusal, GatewayError> {
        let answer = match self
            .record_failure(Some(user), &user.email, kind, call, now)
            .await?
        {
            // Deleted since it was read: a wrong password for no one.
            None => FailureAnswer::Invalid,
            Some(failure) => FailureAnswer::of(&failure, now),
        };
        Ok(answer.refusal(now))
    }

    /// Counts a failed login and writes its audit entry in one transaction. Every failure
    /// runs the same statements with one commit, whether or not the email exists (the
    /// update then matches no row), so the database does not tell the cases apart by time.
    /// The attempt that locks the account also queues the email telling its owner (unless
    /// another address's lock already told them: [`LoginFailure::mails_owner`]) and audits
    /// the lockout, committed with it. An attempt that finds the account locked is
    /// audited as `login_locked` and counted in the metrics.
    pub(super) async fn record_failure(
        &self,
        user: Option<&User>,
        email: &str,
        kind: Failure,
        call: &Call,
        now: SystemTime,
    ) -> Result<Option<LoginFailure>, GatewayError> {
        let reason = kind.reason();
        let user_id = user.map(|user| user.id);
        let mut client = self.store.client().await.map_err(store_error)?;
        let transaction = self.store.begin(&mut client).await.map_err(db_error)?;
        let failure = self
            .store
            .record_login_failure(
                &transaction,
                user_id.unwrap_or(Uuid::nil()),
                self.lockout_scope(call),
                self.settings.max_failures,
                self.settings.lock_for,
                now,
            )
            .await
            .map_err(store_error)?;
        let lock_hit = failure
            .as_ref()
            .and_then(|failure| match FailureAnswer::of(failure, now) {
                FailureAnswer::Locked(until) => Some(until),
                _ => None,
            });
        let (event, detail) = match (&failure, user, lock_hit) {
            (Some(failure), Some(_), Some(until)) => (
                "login_locked",
                serde_json::json!({
                    "reason": reason,
                    "attempts": failure.attempts,
                    "locked_until": rfc3339(until),
                }),
            ),
            (Some(failure), Some(_), None) => (
                "login_failure",
                serde_json::json!({ "reason": reason, "attempts": failure.attempts }),
            ),
            _ => (
                "login_failure",
                serde_json::json!({ "reason": reason, "email": email }),
            ),
        };
        self.audit_in(&transaction, event, user_id, call, detail)
            .await?;
        let newly_locked = failure.filter(|failure| failure.newly_locked);
        let mailed = newly_locked.is_some_and(|failure| failure.mails_owner());
        if let (Some(failure), Some(user)) = (newly_locked, user) {
            let minutes = minutes_until(failure.locked_until.unwrap_or(now), now);
            if mailed {
                mail::enqueue(
                    &self.store,
                    &transaction,
                    &mail::account_locked_mail(
                        &user.email,
                        minutes,
                        matches!(self.lockout_scope(call), LockoutScope::Address(_)),
                    ),
                )
                .await
                .map_err(db_error)?;
            }
            self.audit_in(
                &transaction,
                "account_locked",
                Some(user.id),
                call,
                serde_json::json!({ "minutes": minutes, "mailed": mailed }),
            )
            .await?;
        }
        self.store.commit(transaction).await.map_err(db_error)?;
        if newly_locked.is_some() && user.is_some() {
            self.metrics.lockout();
        }
        if mailed {
            self.mail_waker.notify_one();
        }
        if lock_hit.is_some() {
            self.metrics.login_locked_refusal();
        }
        Ok(failure)
    }

    /// `POST /auth/refresh`: always a rotation, with no grace. A JSON client holds its
    /// tokens itself and can send one refresh at a time, the contract promises it a new
    /// refresh token (which a grace answer has none of), and any grace would let a stolen
    /// token go unnoticed for that long.
    pub(super) async fn refresh(&self, call: &Call) -> Reply {
        let fields = object(call)?;
        let presented = fields.string("refresh_token")?;
        let rotation = self.rotate_session(presented, call, Duration::ZERO).await?;
        let Some(refresh_token) = &rotation.refresh_token else {
            // Only a grace answers without a new token, and there is none here.
            return Err(GatewayError::unauthorized("Invalid refresh token"));
        };
        let body = self.token_body(
            &rotation.user,
            rotation.session_id,
            refresh_token,
            rotation.now,
        )?;
        Ok(self.token_response(&body, call))
    }

    /// Spends a refresh token for a new one (see [`Store::rotate_refresh`] for `grace`). A
    /// token presented again after it was rotated, outside the grace, ends its session:
    /// access tokens everywhere at once, audited and counted. Any refusal is 401.
    pub(super) async fn rotate_session(
        &self,
        presented: &str,
        call: &Call,
        grace: Duration,
    ) -> Result<Rotation, GatewayError> {
        let now = self.now();
        let next = OpaqueToken::generate();
        let outcome = self
            .store
            .rotate_refresh(&hash_opaque(presented), &next.hash, now, grace)
            .await
            .map_err(store_error)?;
        match outcome {
            RefreshOutcome::Rotated { session, user } => Ok(Rotation {
                user: *user,
                session_id: session.id,
                refresh_token: Some(next.token),
                session_expires_at: session.expires_at,
                now,
            }),
            RefreshOutcome::Grace {
                session_id,
                session_expires_at,
                user,
            } => {
                self.metrics.refresh_grace();
                Ok(Rotation {
                    user: *user,
                    session_id,
                    refresh_token: None,
                    session_expires_at,
                    now,
                })
            }
            RefreshOutcome::Reused {
                session_id,
                user_id,
            } => {
                self.metrics.refresh_reuse();
                // The session is already ended in Postgres; its access tokens end too.
                if let Err(error) = self.revocations.revoke_sessions(&[session_id]).await {
                    tracing::warn!(%error, "could not revoke a reused session's access tokens in Redis");
                }
                self.audit(
                    "refresh_reuse_detected",
                    Some(user_id),
                    call,
                    serde_json::json!({ "session_id": session_id.to_string() }),
                )
                .await?;
                Err(GatewayError::unauthorized("Invalid refresh token"))
            }
            RefreshOutcome::Invalid => Err(GatewayError::unauthorized("Invalid refresh token")),
        }
    }

    /// Ends the caller's session, the session a given refresh token belongs to (if it is the
    /// caller's), or with `{"all": true}` every session of the caller.
    pub(super) async fn logout(&self, call: &Call, principal: &Principal) -> Reply {
        let fields = object(call)?;
        let all = fields.optional_bool("all")?.unwrap_or(false);
        let now = self.now();
        if all {
            self.revoke_in_redis(
                &[principal.session_id],
                Some((principal.user_id, unix_seconds(now))),
            )
            .await?;
            let client = self.store.client().await.map_err(store_error)?;
            let ended = self
                .store
                .revoke_sessions_of(&client, principal.user_id, None, "logout all", now)
                .await
                .map_err(store_error)?;
            drop(client);
            self.revoke_in_redis(&ended, None).await?;
            self.audit(
                "logout_all",
                Some(principal.user_id),
                call,
                serde_json::json!({ "sessions": ended.len() }),
            )
            .await?;
            return Ok(status_only(StatusCode::NO_CONTENT));
        }
        let session_id = match fields.optional_string("refresh_token")? {
            Some(refresh) => match self
                .store
                .session_of_refresh(&hash_opaque(refresh), now)
                .await
                .map_err(store_error)?
            {
                Some((session_id, owner)) if owner == principal.user_id => session_id,
                _ => return Err(GatewayError::unauthorized("Invalid refresh token")),
            },
            None => principal.session_id,
        };
        self.revoke_in_redis(&[session_id], None).await?;
        self.store
            .revoke_session(principal.user_id, session_id, "logout", now)
            .await
            .map_err(store_error)?;
        self.audit(
            "logout",
            Some(principal.user_id),
            call,
            serde_json::json!({ "session_id": session_id.to_string() }),
        )
        .await?;
        Ok(status_only(StatusCode::NO_CONTENT))
    }

    pub(super) async fn sessions(&self, principal: &Principal) -> Reply {
        let sessions = self
            .store
            .list_sessions(principal.user_id, self.now())
            .await
            .map_err(store_error)?;
        let items: Vec<serde_json::Value> = sessions
            .iter()
            .map(|session| {
                serde_json::json!({
                    "id": session.id.to_string(),
                    "ip_address": session.ip_address,
                    "user_agent": session.user_agent,
                    "created_at": rfc3339(session.created_at),
                    "last_used_at": rfc3339(session.last_used_at),
                    "expires_at": rfc3339(session.expires_at),
                    "current": session.id == principal.session_id,
                })
            })
            .collect();
        Ok(json(StatusCode::OK, &serde_json::Value::Array(items)))
    }

    /// Another user's session answers exactly like a missing one.
    pub(super) async fn delete_session(&self, principal: &Principal, id: &str) -> Reply {
        let Ok(session_id) = Uuid::parse_str(id) else {
            return Err(GatewayError::NotFoundDetail("Session not found"));
        };
        let now = self.now();
        let owned = self
            .store
            .list_sessions(principal.user_id, now)
            .await
            .map_err(store_error)?
            .iter()
            .any(|session| session.id == session_id);
        if !owned {
            return Err(GatewayError::NotFoundDetail("Session not found"));
        }
        self.revoke_in_redis(&[session_id], None).await?;
        self.store
            .revoke_session(principal.user_id, session_id, "deleted by user", now)
            .await
            .map_err(store_error)?;
        Ok(status_only(StatusCode::NO_CONTENT))
    }

    /// A signed access token for `user` in session `session_id`, issued at `now`.
    pub(super) fn access_token(
        &self,
        user: &User,
        session_id: Uuid,
        now: SystemTime,
    ) -> Result<String, GatewayError> {
        let (access_token, _claims) = self
            .keys
            .issue_access(
                &user.id.to_string(),
                &user.email,
                &user.role,
                &session_id.to_string(),
                unix_seconds(now),
            )
            .map_err(|error| {
                tracing::error!(%error, "could not sign an access token");
                GatewayError::Internal
            })?;
        Ok(access_token)
    }

    /// The token response shared by login and refresh.
    fn token_body(
        &self,
        user: &User,
        session_id: Uuid,
        refresh_token: &str,
        now: SystemTime,
    ) -> Result<serde_json::Value, GatewayError> {
        let access_token = self.access_token(user, session_id, now)?;
        Ok(serde_json::json!({
            "access_token": access_token,
            "refresh_token": refresh_token,
            "token_type": "bearer",
            "expires_in": self.keys.settings().access_ttl.as_secs(),
        }))
    }

    /// The 200 that carries a token body, with the session cookies in cookie mode when the
    /// request declared a JSON body (see [`super::pages::form::declares_json`]).
    fn token_response(
        &self,
        body: &serde_json::Value,
        call: &Call,
    ) -> http::Response<crate::proxy::response_body::GatewayBody> {
        let mut response = json(StatusCode::OK, body);
        if super::pages::form::declares_json(&call.headers) {
            self.set_session_cookies_in_cookie_mode(&mut response, body);
        }
        response
    }

    /// In cookie mode both tokens also go into the session cookies of contract 7, which
    /// scripts cannot read.
    fn set_session_cookies_in_cookie_mode(
        &self,
        response: &mut http::Response<crate::proxy::response_body::GatewayBody>,
        body: &serde_json::Value,
    ) {
        if !self.settings.cookie_mode {
            return;
        }
        let access_token = body["access_token"].as_str().unwrap_or_default();
        let refresh_token = body["refresh_token"].as_str().unwrap_or_default();
        let Some(cookies) = crate::access::session_cookies(
            access_token,
            refresh_token,
            self.keys.settings().access_ttl,
            self.settings.refresh_ttl,
        ) else {
            return;
        };
        for cookie in cookies {
            response.headers_mut().append(SET_COOKIE, cookie);
        }
    }
}

pub(super) fn minutes_until(until: SystemTime, now: SystemTime) -> u64 {
    let left = until.duration_since(now).unwrap_or(Duration::ZERO);
    left.as_secs().div_ceil(60).max(1)
}

fn locked(until: SystemTime, now: SystemTime) -> GatewayError {
    GatewayError::unauthorized(locked_detail(until, now))
}

/// `Account locked. Try again in N minutes.`
pub(super) fn locked_detail(until: SystemTime, now: SystemTime) -> String {
    let minutes = minutes_until(until, now);
    let unit = if minutes == 1 { "minute" } else { "minutes" };
    format!("{LOCKED_PREFIX} Try again in {minutes} {unit}.")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each refusal a login decides, the outcome it is counted under and the answer the
    /// client gets: the label values are what operators alert on, and must not drift.
    #[test]
    fn login_refusals_carry_their_outcome() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let later = now + Duration::from_secs(600);
        #[rustfmt::skip]
        let cases: Vec<(LoginRefusal, &str, GatewayError)> = vec![
            (FailureAnswer::Invalid.refusal(now), "invalid", GatewayError::unauthorized(INVALID_CREDENTIALS)),
            (FailureAnswer::NewlyLocked.refusal(now), "locked", GatewayError::unauthorized(NEWLY_LOCKED)),
            (FailureAnswer::Locked(later).refusal(now), "locked", GatewayError::unauthorized("Account locked. Try again in 10 minutes.")),
            (unusable(Unusable::Deactivated), "deactivated", GatewayError::unauthorized(DEACTIVATED)),
            (unusable(Unusable::Unverified), "unverified", GatewayError::unauthorized(UNVERIFIED)),
            (GatewayError::bad_request("email is required").into(), "error", GatewayError::bad_request("email is required")),
            (GatewayError::Unavailable("Database unavailable").into(), "error", GatewayError::Unavailable("Database unavailable")),
        ];
        for (refusal, label, answer) in cases {
            assert_eq!(refusal.outcome.label(), label, "{refusal:?}");
            assert_eq!(refusal.error, answer, "{refusal:?}");
        }
    }

    fn unusable(unusable: Unusable) -> LoginRefusal {
        let (_, outcome, detail) = unusable.parts();
        LoginRefusal::new(outcome, GatewayError::unauthorized(detail))
    }

    #[test]
    fn an_account_is_unusable_when_deactivated_first_then_unverified() {
        // (active, verified, unusable)
        let cases = [
            (true, true, None),
            (false, true, Some(Unusable::Deactivated)),
            (false, false, Some(Unusable::Deactivated)),
            (true, false, Some(Unusable::Unverified)),
        ];
        for (active, verified, expected) in cases {
            let user = User {
                id: Uuid::nil(),
                email: "a@example.com".into(),
                name: String::new(),
                password_hash: String::new(),
                role: "user".into(),
                is_active: active,
                is_verified: verified,
                failed_login_attempts: 0,
                locked_until: None,
                last_login: None,
                created_at: SystemTime::UNIX_EPOCH,
                security_version: 0,
            };
            assert_eq!(Unusable::of(&user), expected, "{active} {verified}");
        }
    }

    /// (`lockout.key`, the caller's rate-limit key, what failures count against)
    #[test]
    fn lockout_scopes() {
        let cases: &[(LockoutKey, &str, LockoutScope<'_>)] = &[
            (LockoutKey::Account, "203.0.113.9", LockoutScope::Account),
            (
                LockoutKey::AccountAndIp,
                "203.0.113.9",
                LockoutScope::Address("203.0.113.9"),
            ),
            (
                LockoutKey::AccountAndIp,
                "2001:db8::/64",
                LockoutScope::Address("2001:db8::/64"),
            ),
        ];
        for &(key, limit_key, expected) in cases {
            assert_eq!(
                lockout_scope(key, limit_key),
                expected,
                "{key:?} {limit_key}"
            );
        }
    }
}
