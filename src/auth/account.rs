//! Accounts: registration, email verification, and the caller's own user object.

use std::sync::Arc;

use http::StatusCode;

use super::{
    db_error, json, normalize_email, object, status_only, store_error, user_json, AuthService,
    Call, Principal, Reply,
};
use crate::error::GatewayError;

use crate::password::check_rules;
use crate::store::{NewUser, StoreError, TokenPurpose};
use crate::token::hash_opaque;

impl AuthService {
    pub(super) async fn register(&self, call: &Call) -> Reply {
        let fields = object(call)?;
        let email = normalize_email(fields.string("email")?);
        let password = fields.string("password")?;
        let name = fields.optional_string("name")?.unwrap_or("").trim();
        if !super::is_valid_email(&email) {
            return Err(GatewayError::unprocessable("Invalid email address"));
        }
        if name.chars().count() > 200 {
            return Err(GatewayError::unprocessable(
                "Name must be at most 200 characters",
            ));
        }
        check_rules(password, &email, &self.rules)
            .map_err(|problem| GatewayError::unprocessable(problem.message()))?;
        let password_hash = self
            .hasher
            .hash(password)
            .await
            .map_err(super::password_error)?;

        let now = self.now();
        let mut client = self.store.client().await.map_err(store_error)?;
        let transaction = self.store.begin(&mut client).await.map_err(db_error)?;
        let role = self.default_role();
        // An address held by an account that never verified it, whose link has lapsed, is
        // free again: the new registration replaces it.
        if let Some(replaced) = self
            .store
            .remove_lapsed_unverified(&transaction, &email, now)
            .await
            .map_err(store_error)?
        {
            self.audit_in(
                &transaction,
                "unverified_account_replaced",
                Some(replaced),
                call,
                serde_json::json!({}),
            )
            .await?;
        }
        let new_user = NewUser {
            email: &email,
            name,
            password_hash: &password_hash,
            role: &role,
            is_verified: false,
        };
        let user = match self.store.create_user(&transaction, &new_user, now).await {
            Ok(user) => user,
            Err(StoreError::Conflict) => {
                return Err(GatewayError::Conflict("Email already registered"))
            }
            Err(error) => return Err(store_error(error)),
        };
        self.issue_email_token(&transaction, &user, TokenPurpose::VerifyEmail, now)
            .await?;
        self.audit_in(
            &transaction,
            "register",
            Some(user.id),
            call,
            serde_json::json!({}),
        )
        .await?;
        self.store.commit(transaction).await.map_err(db_error)?;
        self.mail_waker.notify_one();
        Ok(json(StatusCode::CREATED, &user_json(&user)))
    }

    pub(super) async fn verify_email(&self, call: &Call) -> Reply {
        let fields = object(call)?;
        let token = fields.string("token")?;
        let now = self.now();
        let mut client = self.store.client().await.map_err(store_error)?;
        let transaction = self.store.begin(&mut client).await.map_err(db_error)?;
        let Some(user_id) = self
            .store
            .consume_email_token(
                &transaction,
                TokenPurpose::VerifyEmail,
                &hash_opaque(token),
                now,
            )
            .await
            .map_err(store_error)?
        else {
            return Err(GatewayError::bad_request("Invalid or expired token"));
        };
        let user = self
            .store
            .mark_verified(&transaction, user_id, now)
            .await
            .map_err(store_error)?;
        self.audit_in(
            &transaction,
            "email_verified",
            Some(user.id),
            call,
            serde_json::json!({}),
        )
        .await?;
        self.store.commit(transaction).await.map_err(db_error)?;
        Ok(json(StatusCode::OK, &user_json(&user)))
    }

    /// Always 202, so the answer does not tell whether an address is registered (nor
    /// whether it is verified): every address costs the same one lookup before the answer.
    pub(super) async fn resend_verification(self: &Arc<Self>, call: &Call) -> Reply {
        let fields = object(call)?;
        let email = normalize_email(fields.string("email")?);
        let user = self
            .store
            .user_by_email(&email)
            .await
            .map_err(store_error)?;
        if let Some(user) = user.filter(|user| !user.is_verified && user.is_active) {
            self.email_token_after_answer(user, TokenPurpose::VerifyEmail, None);
        }
        Ok(status_only(StatusCode::ACCEPTED))
    }

    pub(super) async fn me(&self, principal: &Principal) -> Reply {
        let user = self.principal_user(principal).await?;
        Ok(json(StatusCode::OK, &user_json(&user)))
    }
}
