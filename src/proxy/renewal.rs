//! Silent refresh (contract 7), as forwarding sees it: a browser whose access cookie has
//! expired presents its refresh cookie, and the session is renewed in the same round trip.
//! How a session is renewed is the identity side's business (`auth::renewal`); forwarding
//! only knows this trait, which the composition root plugs in, so that `proxy` never
//! depends on `auth`.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::HeaderValue;

use crate::access::VerifiedToken;

/// Renews a browser's session from its refresh cookie.
pub trait SessionRenewal: Send + Sync {
    /// Spends `refresh_token` (or, within the reuse grace, takes it once more) for a new
    /// access token of its session. `client_ip` and `user_agent` are the caller's, for the
    /// audit log.
    fn renew<'a>(
        &'a self,
        refresh_token: &'a str,
        client_ip: IpAddr,
        user_agent: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Renewal> + Send + 'a>>;
}

/// What a renewal came to.
pub enum Renewal {
    Renewed(Renewed),
    /// The refresh token is no good (unknown, expired, ended, or reused): the request goes
    /// on anonymously and the browser is told to drop its session cookies, so that it stops
    /// sending a dead token (each costs a Postgres round trip).
    Refused,
    /// Postgres (or signing) failed: nothing is known, the cookies are kept, and the request
    /// is answered 503 like any other whose dependency is down.
    Unavailable,
    /// Not tried: the client is over the refresh route's rate limit (or Redis cannot count
    /// and `on_redis_error` is `deny`). The request is answered with this, cookies kept:
    /// without it, a client sending garbage refresh cookies would cost a Postgres query each.
    Refusal(super::refusal::Refusal),
}

/// A renewed session: the caller to forward the request as, and the cookies the response
/// must set. The new refresh token exists only in `set_cookies`; losing them (a response
/// that never reaches the browser) leaves the browser with a spent token.
pub struct Renewed {
    /// The new access token, verified as any presented token would be.
    pub verified: Arc<VerifiedToken>,
    /// `Set-Cookie` values: both session cookies after a rotation, the access cookie alone
    /// within the reuse grace (the rotation that spent the token set the refresh cookie).
    pub set_cookies: Vec<HeaderValue>,
}

impl std::fmt::Debug for Renewed {
    /// The cookies carry tokens, which are never logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewed")
            .field("sub", &self.verified.claims.sub)
            .field("sid", &self.verified.claims.sid)
            .field("set_cookies", &self.set_cookies.len())
            .finish()
    }
}
