//! Sessions: login with lockout, refresh rotation with reuse detection, logout, and the
//! caller's session list.

use std::time::{Duration, SystemTime};

use http::header::{HeaderValue, SET_COOKIE};
use http::StatusCode;
use uuid::Uuid;

use super::{
    db_error, json, normalize_email, object, password_error, status_only, store_error, user_json,
    AuthService, Call, Principal, Reply,
};
use crate::clock::{rfc3339, unix_seconds};
use crate::error::GatewayError;
use crate::mail;
use crate::password::Verification;
use crate::store::{LoginFailure, RefreshOutcome, Store, User};
use crate::token::{hash_opaque, OpaqueToken};

const INVALID_CREDENTIALS: &str = "Invalid email or password";

impl AuthService {
    /// Unknown email and wrong password answer alike and cost alike: a dummy hash is
    /// verified when there is no user. Every failure is counted in one SQL statement.
    pub(super) async fn login(&self, call: &Call) -> Reply {
        let fields = object(call)?;
        let email = normalize_email(fields.string("email")?);
        let password = fields.string("password")?;
        let now = self.now();
        let user = self
            .store
            .user_by_email(&email)
            .await
            .map_err(store_error)?;

        if let Some(user) = &user {
            if let Some(until) = user.locked_at(now) {
                self.record_failure(Some(user), &email, "locked", call, now)
                    .await?;
                return Err(locked(until, now));
            }
        }

        let stored = user.as_ref().map(|user| user.password_hash.as_str());
        let verification = self
            .hasher
            .verify(password, stored)
            .await
            .map_err(password_error)?;
        let Some(user) = user else {
            self.record_failure(None, &email, "unknown email", call, now)
                .await?;
            return Err(GatewayError::unauthorized(INVALID_CREDENTIALS));
        };
        let needs_rehash = match verification {
            Verification::Match { needs_rehash } => needs_rehash,
            Verification::Mismatch => return Err(self.failed_login(&user, call, now).await?),
        };
        let refusal = if !user.is_active {
            Some(("deactivated", "Account has been deactivated"))
        } else if !user.is_verified {
            Some(("unverified", "Please verify your email first"))
        } else {
            None
        };
        if let Some((reason, detail)) = refusal {
            self.audit(
                "login_failure",
                Some(user.id),
                call,
                serde_json::json!({ "reason": reason }),
            )
            .await?;
            return Err(GatewayError::unauthorized(detail));
        }

        let rehash = if needs_rehash {
            Some(self.hasher.hash(password).await.map_err(password_error)?)
        } else {
            None
        };
        let user = self
            .store
            .record_login_success(user.id, rehash.as_deref(), now)
            .await
            .map_err(store_error)?;
        let refresh = OpaqueToken::generate();
        let session = self
            .store
            .create_session(
                user.id,
                &refresh.hash,
                Some(&call.ip),
                call.user_agent.as_deref(),
                self.settings.refresh_ttl,
                now,
            )
            .await
            .map_err(store_error)?;
        self.audit(
            "login_success",
            Some(user.id),
            call,
            serde_json::json!({ "session_id": session.id.to_string() }),
        )
        .await?;
        let mut body = self.token_body(&user, session.id, &refresh.token, now)?;
        body["user"] = user_json(&user);
        let access_token = body["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut response = json(StatusCode::OK, &body);
        self.set_access_cookie(&mut response, &access_token);
        Ok(response)
    }

    /// Counts a wrong password; the attempt that reaches the limit locks the account and
    /// emails its owner.
    async fn failed_login(
        &self,
        user: &User,
        call: &Call,
        now: SystemTime,
    ) -> Result<GatewayError, GatewayError> {
        let Some(failure) = self
            .record_failure(Some(user), &user.email, "wrong password", call, now)
            .await?
        else {
            // Deleted since it was read: a wrong password for no one.
            return Ok(GatewayError::unauthorized(INVALID_CREDENTIALS));
        };
        if failure.newly_locked {
            return Ok(GatewayError::unauthorized(
                "Too many failed attempts. Account locked.",
            ));
        }
        if let Some(until) = failure.locked_until.filter(|until| *until > now) {
            return Ok(locked(until, now));
        }
        Ok(GatewayError::unauthorized(INVALID_CREDENTIALS))
    }

    /// Counts a failed login and writes its audit entry in one transaction. Every failure
    /// runs the same statements with one commit, whether or not the email exists (the
    /// update then matches no row), so the database does not tell the cases apart by time.
    /// The attempt that locks the account also queues the email telling its owner and
    /// audits the lockout, committed with it.
    async fn record_failure(
        &self,
        user: Option<&User>,
        email: &str,
        reason: &str,
        call: &Call,
        now: SystemTime,
    ) -> Result<Option<LoginFailure>, GatewayError> {
        let user_id = user.map(|user| user.id);
        let mut client = self.store.client().await.map_err(store_error)?;
        let transaction = client.transaction().await.map_err(db_error)?;
        let failure = Store::record_login_failure(
            &transaction,
            user_id.unwrap_or(Uuid::nil()),
            self.settings.max_failures,
            self.settings.lock_for,
            now,
        )
        .await
        .map_err(store_error)?;
        let detail = match (&failure, user) {
            (Some(failure), Some(_)) => {
                serde_json::json!({ "reason": reason, "attempts": failure.attempts })
            }
            _ => serde_json::json!({ "reason": reason, "email": email }),
        };
        self.audit_in(&transaction, "login_failure", user_id, call, detail)
            .await?;
        let newly_locked = failure.filter(|failure| failure.newly_locked);
        if let (Some(failure), Some(user)) = (newly_locked, user) {
            let minutes = minutes_until(failure.locked_until.unwrap_or(now), now);
            mail::enqueue(
                &transaction,
                &mail::account_locked_mail(&user.email, minutes),
            )
            .await
            .map_err(db_error)?;
            self.audit_in(
                &transaction,
                "account_locked",
                Some(user.id),
                call,
                serde_json::json!({ "minutes": minutes }),
            )
            .await?;
        }
        transaction.commit().await.map_err(db_error)?;
        if newly_locked.is_some() {
            self.mail_waker.notify_one();
        }
        Ok(failure)
    }

    pub(super) async fn refresh(&self, call: &Call) -> Reply {
        let fields = object(call)?;
        let presented = fields.string("refresh_token")?;
        let now = self.now();
        let next = OpaqueToken::generate();
        let outcome = self
            .store
            .rotate_refresh(&hash_opaque(presented), &next.hash, now)
            .await
            .map_err(store_error)?;
        match outcome {
            RefreshOutcome::Rotated { session, user } => {
                let body = self.token_body(&user, session.id, &next.token, now)?;
                let access_token = body["access_token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let mut response = json(StatusCode::OK, &body);
                self.set_access_cookie(&mut response, &access_token);
                Ok(response)
            }
            RefreshOutcome::Reused {
                session_id,
                user_id,
            } => {
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
            let ended =
                Store::revoke_sessions_of(&client, principal.user_id, None, "logout all", now)
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

    /// The token response shared by login and refresh.
    fn token_body(
        &self,
        user: &User,
        session_id: Uuid,
        refresh_token: &str,
        now: SystemTime,
    ) -> Result<serde_json::Value, GatewayError> {
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
        Ok(serde_json::json!({
            "access_token": access_token,
            "refresh_token": refresh_token,
            "token_type": "bearer",
            "expires_in": self.keys.settings().access_ttl.as_secs(),
        }))
    }

    /// In cookie mode the access token also goes into a cookie scripts cannot read.
    fn set_access_cookie(
        &self,
        response: &mut http::Response<crate::proxy::body::GatewayBody>,
        access_token: &str,
    ) {
        let Some(name) = &self.settings.access_cookie else {
            return;
        };
        let cookie = format!(
            "{name}={access_token}; Path=/; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
            self.keys.settings().access_ttl.as_secs()
        );
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(SET_COOKIE, value);
        }
    }
}

fn minutes_until(until: SystemTime, now: SystemTime) -> u64 {
    let left = until.duration_since(now).unwrap_or(Duration::ZERO);
    left.as_secs().div_ceil(60).max(1)
}

fn locked(until: SystemTime, now: SystemTime) -> GatewayError {
    let minutes = minutes_until(until, now);
    let unit = if minutes == 1 { "minute" } else { "minutes" };
    GatewayError::unauthorized(format!("Account locked. Try again in {minutes} {unit}."))
}
