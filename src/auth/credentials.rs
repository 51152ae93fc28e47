//! Passwords: reset by email, confirmation with the emailed token, and change (which checks
//! the current password under the same failure count and lock as a login).

use std::time::SystemTime;

use std::sync::Arc;

use http::StatusCode;
use uuid::Uuid;

use super::session::{locked_detail, Failure, FailureAnswer, NEWLY_LOCKED};
use super::{
    db_error, normalize_email, object, password_error, status_only, store_error, AuthService, Call,
    Principal, Reply,
};
use crate::clock::unix_seconds;
use crate::error::GatewayError;
use crate::mail;
use crate::password::{check_rules, Verification};
use crate::store::{CommitVerdict, LoginFailure, TokenPurpose};
use crate::token::hash_opaque;

impl AuthService {
    /// Always 202, so the answer does not tell whether an address is registered: both kinds
    /// of address cost the same one lookup before the answer, and the token and its mail are
    /// written after it (see [`AuthService::after_answer`]).
    pub(super) async fn password_reset(self: &Arc<Self>, call: &Call) -> Reply {
        let fields = object(call)?;
        let email = normalize_email(fields.string("email")?);
        let user = self
            .store
            .user_by_email(&email)
            .await
            .map_err(store_error)?;
        if let Some(user) = user.filter(|user| user.is_active) {
            self.email_token_after_answer(
                user,
                TokenPurpose::PasswordReset,
                Some(("password_reset_requested", call.clone())),
            );
        }
        Ok(status_only(StatusCode::ACCEPTED))
    }

    /// Sets the new password and ends every session. The token is spent in the same
    /// transaction, so of two concurrent uses exactly one succeeds.
    pub(super) async fn password_reset_confirm(&self, call: &Call) -> Reply {
        let fields = object(call)?;
        let token = fields.string("token")?;
        let new_password = fields.string("new_password")?;
        let hash = hash_opaque(token);
        let now = self.now();

        // Check the password against its owner's rules before spending the token, so a
        // rejected password leaves the link usable.
        let owner = self
            .store
            .reset_token_owner(&hash, now)
            .await
            .map_err(store_error)?;
        let Some(email) = owner else {
            return Err(GatewayError::bad_request("Invalid or expired token"));
        };
        check_rules(new_password, &email, &self.rules)
            .map_err(|problem| GatewayError::unprocessable(problem.message()))?;
        let password_hash = self
            .hasher
            .hash(new_password)
            .await
            .map_err(password_error)?;

        let mut client = self.store.client().await.map_err(store_error)?;
        let transaction = self.store.begin(&mut client).await.map_err(db_error)?;
        let Some(user_id) = self
            .store
            .consume_email_token(&transaction, TokenPurpose::PasswordReset, &hash, now)
            .await
            .map_err(store_error)?
        else {
            return Err(GatewayError::bad_request("Invalid or expired token"));
        };
        // Redis first: if it is down, nothing has changed yet.
        self.revoke_in_redis(&[], Some((user_id, unix_seconds(now))))
            .await?;
        let new_password = NewPassword {
            user_id,
            password_hash: &password_hash,
            keep_session: None,
            reason: "password reset",
            audit_event: "password_reset_completed",
        };
        self.set_password_in(transaction, new_password, call, now)
            .await?;
        Ok(status_only(StatusCode::NO_CONTENT))
    }

    /// Changes the password; the caller's session stays, every other one ends. Checking
    /// `current_password` is a login in all but name: a wrong one is counted as a failed
    /// login and can lock the account, and while it is locked no change goes through (403,
    /// since the caller's token is fine). The change is decided on the locked user row like
    /// a login.
    pub(super) async fn password_change(&self, call: &Call, principal: &Principal) -> Reply {
        let fields = object(call)?;
        let current = fields.string("current_password")?;
        let new_password = fields.string("new_password")?;
        let user = self.principal_user(principal).await?;
        let Some(user) = self.in_lockout_scope(Some(user), call).await? else {
            return Err(GatewayError::invalid_token("Invalid or expired token"));
        };
        let now = self.now();
        if self.lock_of(&user, now).is_some() {
            let failure = self
                .record_failure(Some(&user), &user.email, Failure::Locked, call, now)
                .await?;
            return Err(change_refusal(failure.as_ref(), now));
        }
        match self
            .hasher
            .verify(current, Some(&user.password_hash))
            .await
            .map_err(password_error)?
        {
            Verification::Match { .. } => {}
            Verification::Mismatch => {
                let failure = self
                    .record_failure(
                        Some(&user),
                        &user.email,
                        Failure::WrongCurrentPassword,
                        call,
                        now,
                    )
                    .await?;
                return Err(change_refusal(failure.as_ref(), now));
            }
        }
        check_rules(new_password, &user.email, &self.rules)
            .map_err(|problem| GatewayError::unprocessable(problem.message()))?;
        let password_hash = self
            .hasher
            .hash(new_password)
            .await
            .map_err(password_error)?;
        let now = self.now();

        let mut client = self.store.client().await.map_err(store_error)?;
        let transaction = self.store.begin(&mut client).await.map_err(db_error)?;
        let Some(locked_row) = self
            .store
            .lock_user_in_scope(&transaction, user.id, self.lockout_scope(call))
            .await
            .map_err(store_error)?
        else {
            return Err(GatewayError::invalid_token("Invalid or expired token"));
        };
        match locked_row.commit_verdict(&user, self.lockout_on(), now) {
            CommitVerdict::Proceed => {}
            CommitVerdict::Locked(until) => {
                drop(transaction);
                self.refused_locked(&locked_row, call).await?;
                return Err(GatewayError::Forbidden(locked_detail(until, now).into()));
            }
            // Changed or reset meanwhile: what was checked is no longer the current password.
            CommitVerdict::PasswordChanged => {
                return Err(GatewayError::unprocessable(CURRENT_INCORRECT));
            }
            // A role or activation change ended every session, the caller's included.
            CommitVerdict::AccountChanged => {
                return Err(GatewayError::invalid_token("Invalid or expired token"));
            }
        }
        // Redis first, with the decision made: a refused change revokes nothing.
        let others: Vec<_> = self
            .store
            .list_sessions(user.id, now)
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|session| session.id)
            .filter(|id| *id != principal.session_id)
            .collect();
        self.revoke_in_redis(&others, None).await?;
        let new_password = NewPassword {
            user_id: user.id,
            password_hash: &password_hash,
            keep_session: Some(principal.session_id),
            reason: "password change",
            audit_event: "password_changed",
        };
        // Sessions started between the list and the commit are ended there too.
        self.set_password_in(transaction, new_password, call, now)
            .await?;
        Ok(status_only(StatusCode::NO_CONTENT))
    }

    /// What a new password does, reset or changed, in the transaction that decided it: the
    /// hash is set, every session but the one kept ends, the "password changed" mail and the
    /// audit event are written; then the commit, and the ended sessions' revocation in Redis.
    async fn set_password_in(
        &self,
        transaction: deadpool_postgres::Transaction<'_>,
        new_password: NewPassword<'_>,
        call: &Call,
        now: SystemTime,
    ) -> Result<(), GatewayError> {
        let NewPassword {
            user_id,
            password_hash,
            keep_session,
            reason,
            audit_event,
        } = new_password;
        let user = self
            .store
            .set_password(&transaction, user_id, password_hash, now)
            .await
            .map_err(store_error)?;
        let ended = self
            .store
            .revoke_sessions_of(&transaction, user_id, keep_session, reason, now)
            .await
            .map_err(store_error)?;
        mail::enqueue(
            &self.store,
            &transaction,
            &mail::password_changed_mail(&user.email),
        )
        .await
        .map_err(db_error)?;
        self.audit_in(
            &transaction,
            audit_event,
            Some(user_id),
            call,
            serde_json::json!({ "sessions_ended": ended.len() }),
        )
        .await?;
        self.store.commit(transaction).await.map_err(db_error)?;
        self.mail_waker.notify_one();
        self.revoke_in_redis(&ended, None).await
    }
}

/// A password about to replace a user's, and how the change is recorded.
struct NewPassword<'a> {
    user_id: Uuid,
    password_hash: &'a str,
    /// The session that stays signed in (the caller's, on a change).
    keep_session: Option<Uuid>,
    /// Why the other sessions ended, as the sessions table records it.
    reason: &'a str,
    audit_event: &'a str,
}

const CURRENT_INCORRECT: &str = "Current password is incorrect";

/// The answer to a counted wrong (or locked-out) `current_password`.
fn change_refusal(failure: Option<&LoginFailure>, now: SystemTime) -> GatewayError {
    match failure.map(|failure| FailureAnswer::of(failure, now)) {
        Some(FailureAnswer::NewlyLocked) => GatewayError::Forbidden(NEWLY_LOCKED.into()),
        Some(FailureAnswer::Locked(until)) => {
            GatewayError::Forbidden(locked_detail(until, now).into())
        }
        Some(FailureAnswer::Invalid) | None => GatewayError::unprocessable(CURRENT_INCORRECT),
    }
}
