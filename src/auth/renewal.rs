//! Silent refresh (contract 7) on the identity side: [`SessionRenewal`] for the auth
//! service, so that forwarding can renew a browser's session from its refresh cookie in the
//! same round trip as the request it was making.
//!
//! It is the JSON refresh's rotation ([`AuthService::rotate_session`]) with one difference:
//! the reuse grace (`tokens.refresh_reuse_grace`). A browser sends every request it has
//! started with the cookies it had; when the access cookie has expired, all of them carry
//! the same refresh token, and the new cookies arrive only with the response of the one
//! that rotated it, after its upstream answered. Without a grace the second request would
//! present a spent token and end the session (reuse detection) in the middle of a page
//! load. Within the grace a token rotated that recently is taken once more, for an access
//! token of its still-live session alone: no second rotation, so the session keeps one
//! live refresh token, the one the first rotation set in the browser.
//!
//! The trade-off: a refresh token copied by an attacker and used within the grace after the
//! legitimate rotation (or the other way round) is not detected as reuse; it yields an
//! access token (never a refresh token) for the session, which ends with the access
//! token's lifetime or the session's revocation. Presented after the grace it is reuse as
//! before, and ends the session. `POST /auth/refresh` keeps no grace (see there).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;

use super::{AuthService, Call};
use crate::access::{access_cookie, session_cookies};
use crate::error::GatewayError;
use crate::proxy::renewal::{Renewal, Renewed, SessionRenewal};

impl SessionRenewal for Arc<AuthService> {
    fn renew<'a>(
        &'a self,
        refresh_token: &'a str,
        client_ip: IpAddr,
        user_agent: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Renewal> + Send + 'a>> {
        let service = self.clone();
        let call = Call {
            query: None,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            ip: client_ip.to_string(),
            limit_key: crate::limits::client_key(client_ip, self.settings.limits.ipv6_prefix),
            user_agent: user_agent.map(|agent| agent.chars().take(512).collect()),
        };
        let presented = refresh_token.to_string();
        Box::pin(async move {
            // Detached, like every /auth handler: a client that hangs up mid-rotation must
            // not leave a reuse unaudited or a revocation unwritten.
            let task = tokio::spawn(async move { service.renew_session(&presented, &call).await });
            task.await.unwrap_or_else(|error| {
                tracing::error!(%error, "session renewal task failed");
                Renewal::Unavailable
            })
        })
    }
}

impl AuthService {
    async fn renew_session(&self, presented: &str, call: &Call) -> Renewal {
        // Counted like the JSON refresh it stands in for, before Postgres is asked.
        if let Err(refusal) = self.rate_limit(super::routes::Route::Refresh, call).await {
            return Renewal::Refusal(refusal);
        }
        let grace = self.settings.refresh_reuse_grace;
        let rotation = match self.rotate_session(presented, call, grace).await {
            Ok(rotation) => rotation,
            Err(GatewayError::Unauthorized { .. }) => return Renewal::Refused,
            Err(error) => {
                tracing::warn!(%error, "could not renew a session");
                return Renewal::Unavailable;
            }
        };
        let Ok(access_token) = self.access_token(&rotation.user, rotation.session_id, rotation.now)
        else {
            return Renewal::Unavailable;
        };
        let Some(verified) = self.access.verify_issued(&access_token) else {
            tracing::error!("an access token the gateway just issued does not verify");
            return Renewal::Unavailable;
        };
        let access_ttl = self.keys.settings().access_ttl;
        let set_cookies = match &rotation.refresh_token {
            Some(refresh_token) => {
                // The refresh cookie lives as long as the session, which rotation never extends.
                let session_left = rotation
                    .session_expires_at
                    .duration_since(rotation.now)
                    .unwrap_or(Duration::ZERO);
                session_cookies(&access_token, refresh_token, access_ttl, session_left)
                    .map(Vec::from)
            }
            None => access_cookie(&access_token, access_ttl).map(|cookie| vec![cookie]),
        };
        match set_cookies {
            Some(set_cookies) => Renewal::Renewed(Renewed {
                verified,
                set_cookies,
            }),
            None => Renewal::Unavailable,
        }
    }
}
