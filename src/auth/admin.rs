//! The admin API: list, read, change and unlock users; read the audit log. Admins cannot
//! grant a role above their own or leave the gateway without an active admin.

use http::StatusCode;
use uuid::Uuid;

use super::{
    db_error, json, object, query_param, status_only, store_error, user_json, AuthService, Call,
    Principal, Reply,
};
use crate::clock::{rfc3339, unix_seconds};
use crate::config::LockoutKey;
use crate::error::GatewayError;
use crate::store::{lockout_summary, UserPatch};

pub(super) const DEFAULT_PAGE: i64 = 50;
pub(super) const MAX_PAGE: i64 = 200;
pub(super) const MAX_AUDIT: i64 = 500;

impl AuthService {
    pub(super) async fn admin_users(&self, call: &Call) -> Reply {
        let limit = number_param(call, "limit", DEFAULT_PAGE, 1, MAX_PAGE)?;
        let offset = number_param(call, "offset", 0, 0, i64::MAX)?;
        let query = query_param(call, "q")?
            .map(|q| q.trim().to_string())
            .filter(|q| !q.is_empty());
        let (users, total) = self
            .store
            .list_users(query.as_deref(), limit, offset)
            .await
            .map_err(store_error)?;
        let items: Vec<_> = users.iter().map(user_json).collect();
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "items": items, "total": total }),
        ))
    }

    pub(super) async fn admin_user(&self, id: &str) -> Reply {
        let user_id = parse_user_id(id)?;
        let Some(user) = self.store.user_by_id(user_id).await.map_err(store_error)? else {
            return Err(GatewayError::NotFoundDetail("User not found"));
        };
        // Per address, the account's totals over its addresses: how many failures are
        // counted against it and until when at least one address is locked out.
        let (attempts, locked_until) = match self.settings.lockout_key {
            LockoutKey::Account => (user.failed_login_attempts, user.locked_until),
            LockoutKey::AccountAndIp => lockout_summary(
                &self
                    .store
                    .pair_lockouts(user_id)
                    .await
                    .map_err(store_error)?,
                self.now(),
            ),
        };
        let mut body = user_json(&user);
        body["failed_login_attempts"] = attempts.into();
        body["locked_until"] = locked_until.map(rfc3339).into();
        Ok(json(StatusCode::OK, &body))
    }

    /// A role change or a deactivation ends the user's sessions at once, everywhere. An
    /// admin cannot grant a role above their own, nor change a user who holds one, and
    /// cannot deactivate or demote the last active admin (themselves included): the active
    /// admins' rows are locked while that is decided, so two admins demoting each other at
    /// once cannot both succeed.
    pub(super) async fn admin_patch_user(
        &self,
        call: &Call,
        principal: &Principal,
        id: &str,
    ) -> Reply {
        let user_id = parse_user_id(id)?;
        let fields = object(call)?;
        let patch = UserPatch {
            role: fields.optional_string("role")?.map(str::to_string),
            is_active: fields.optional_bool("is_active")?,
            name: fields
                .optional_string("name")?
                .map(|name| name.trim().to_string()),
        };
        if let Some(role) = &patch.role {
            if !self.is_known_role(role) {
                return Err(GatewayError::unprocessable(format!("Unknown role: {role}")));
            }
            if !self.role_at_least(&principal.claims.role, role) {
                return Err(GatewayError::Forbidden(
                    "Cannot grant a role above your own".into(),
                ));
            }
        }
        if patch
            .name
            .as_ref()
            .is_some_and(|name| name.chars().count() > 200)
        {
            return Err(GatewayError::unprocessable(
                "Name must be at most 200 characters",
            ));
        }
        let admin_roles: Vec<String> = self
            .policy
            .current()
            .policy
            .roles()
            .iter()
            .filter(|role| self.role_at_least(role, "admin"))
            .cloned()
            .collect();
        let may_remove_an_admin = patch.is_active == Some(false)
            || patch
                .role
                .as_ref()
                .is_some_and(|role| !admin_roles.contains(role));

        let mut client = self.store.client().await.map_err(store_error)?;
        let transaction = self.store.begin(&mut client).await.map_err(db_error)?;
        // The admins first, then the target: every patch takes its locks in that order.
        let active_admins = if may_remove_an_admin {
            self.store
                .lock_active_users_with_roles(&transaction, &admin_roles)
                .await
                .map_err(store_error)?
        } else {
            Vec::new()
        };
        let Some(before) = self
            .store
            .lock_user(&transaction, user_id)
            .await
            .map_err(store_error)?
        else {
            return Err(GatewayError::NotFoundDetail("User not found"));
        };
        // A role the policy no longer defines ranks nowhere: any admin may fix it.
        if self.is_known_role(&before.role)
            && !self.role_at_least(&principal.claims.role, &before.role)
        {
            return Err(GatewayError::Forbidden(
                "Cannot change a user whose role is above your own".into(),
            ));
        }
        if may_remove_an_admin && removes_last_admin(&active_admins, user_id) {
            return Err(GatewayError::Conflict(
                "Cannot deactivate or demote the last active admin",
            ));
        }
        let role_changed = patch.role.as_ref().is_some_and(|role| *role != before.role);
        let deactivated = patch.is_active == Some(false) && before.is_active;
        let now = self.now();
        if role_changed || deactivated {
            // Redis first: a refused token everywhere before Postgres says the change happened.
            self.revoke_in_redis(&[], Some((user_id, unix_seconds(now))))
                .await?;
        }
        let Some(user) = self
            .store
            .update_user(&transaction, user_id, &patch, now)
            .await
            .map_err(store_error)?
        else {
            return Err(GatewayError::NotFoundDetail("User not found"));
        };
        let mut ended = Vec::new();
        if role_changed || deactivated {
            let reason = if deactivated {
                "deactivated"
            } else {
                "role changed"
            };
            ended = self
                .store
                .revoke_sessions_of(&transaction, user_id, None, reason, now)
                .await
                .map_err(store_error)?;
        }
        let actor = serde_json::json!(principal.user_id.to_string());
        if role_changed {
            let detail = serde_json::json!({ "from": before.role, "to": user.role, "by": actor });
            self.audit_in(&transaction, "role_changed", Some(user_id), call, detail)
                .await?;
        }
        if deactivated {
            self.audit_in(
                &transaction,
                "user_deactivated",
                Some(user_id),
                call,
                serde_json::json!({ "by": actor }),
            )
            .await?;
        }
        self.store.commit(transaction).await.map_err(db_error)?;
        self.revoke_in_redis(&ended, None).await?;
        Ok(json(StatusCode::OK, &user_json(&user)))
    }

    pub(super) async fn admin_unlock(&self, call: &Call, principal: &Principal, id: &str) -> Reply {
        let user_id = parse_user_id(id)?;
        if !self
            .store
            .unlock_user(user_id, self.now())
            .await
            .map_err(store_error)?
        {
            return Err(GatewayError::NotFoundDetail("User not found"));
        }
        self.audit(
            "user_unlocked",
            Some(user_id),
            call,
            serde_json::json!({ "by": principal.user_id.to_string() }),
        )
        .await?;
        Ok(status_only(StatusCode::NO_CONTENT))
    }

    pub(super) async fn admin_audit(&self, call: &Call) -> Reply {
        let limit = number_param(call, "limit", DEFAULT_PAGE, 1, MAX_AUDIT)?;
        let user_id = match query_param(call, "user_id")?.filter(|id| !id.is_empty()) {
            Some(id) => Some(
                Uuid::parse_str(&id)
                    .map_err(|_| GatewayError::unprocessable("user_id must be a UUID"))?,
            ),
            None => None,
        };
        let entries = self
            .store
            .audit_entries(user_id, limit)
            .await
            .map_err(store_error)?;
        let items: Vec<_> = entries
            .iter()
            .map(|entry| {
                serde_json::json!({
                    "at": rfc3339(entry.at),
                    "event": entry.event,
                    "user_id": entry.user_id.map(|id| id.to_string()),
                    "ip_address": entry.ip_address,
                    "detail": entry.detail,
                })
            })
            .collect();
        Ok(json(StatusCode::OK, &serde_json::Value::Array(items)))
    }
}

/// Whether a patch that takes `target` out of the admins (a demotion or deactivation)
/// leaves no active admin. `active_admins` are the active admins, locked.
fn removes_last_admin(active_admins: &[Uuid], target: Uuid) -> bool {
    active_admins.contains(&target) && active_admins.len() == 1
}

/// A user id in the path that is not a UUID names no user.
fn parse_user_id(id: &str) -> Result<Uuid, GatewayError> {
    Uuid::parse_str(id).map_err(|_| GatewayError::NotFoundDetail("User not found"))
}

fn number_param(
    call: &Call,
    name: &'static str,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, GatewayError> {
    let Some(text) = query_param(call, name)? else {
        return Ok(default);
    };
    match text.parse::<i64>() {
        Ok(value) if (min..=max).contains(&value) => Ok(value),
        _ if max == i64::MAX => Err(GatewayError::unprocessable(format!(
            "{name} must be a whole number of at least {min}"
        ))),
        _ => Err(GatewayError::unprocessable(format!(
            "{name} must be a whole number from {min} to {max}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_active_admin_stays() {
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        // (active admins, target, last admin removed)
        let cases: &[(&[Uuid], Uuid, bool)] = &[
            (&[a], a, true),
            (&[a, b], a, false),
            (&[a, b], b, false),
            (&[a], c, false),
            (&[], c, false),
        ];
        for (admins, target, expected) in cases {
            assert_eq!(
                removes_last_admin(admins, *target),
                *expected,
                "{admins:?} {target}"
            );
        }
    }
}
