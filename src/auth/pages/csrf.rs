//! PURE: the signed token every sign-in form carries (contract 7, "the gateway's own forms
//! also carry a signed token").
//!
//! Design: a signed double-submit token. The browser holds a random nonce in the cookie
//! [`CSRF_COOKIE`] (`__Host-`, so no subdomain and no plain-HTTP page can plant one); each
//! form carries `issued_at.mac` with `mac = HMAC-SHA256(key, nonce "." issued_at)`. A POST
//! passes only when the field's MAC verifies for the nonce in the cookie and the token is
//! younger than [`CSRF_LIFETIME_SECS`]. A cross-site page can make the browser send the cookie but
//! can neither read it nor compute a MAC for it, so it cannot fill in the field.
//!
//! Why this and not a token stored server-side: it needs no state, so any instance of a
//! fleet verifies what another issued. The key is derived (HKDF) from the token-signing
//! secret that every instance already shares through its configuration
//! ([`crate::token::TokenKeys::derive_key`]); no new secret has to be distributed, and
//! changing the signing secret only makes forms open at that moment ask for a reload.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;

/// The cookie that holds the browser's nonce (defined with the session cookies, which the
/// gateway strips before forwarding, as it strips this one).
pub use crate::access::FORM_COOKIE as CSRF_COOKIE;

/// How long a rendered form may be submitted: long enough for a tab left open over a day.
pub const CSRF_LIFETIME_SECS: u64 = 24 * 3600;

/// Bytes of randomness in a nonce (encoded as 43 base64url characters).
const NONCE_BYTES: usize = 32;

/// What a refused form is told, the same words for every reason.
pub const CSRF_REFUSED: &str =
    "This form has expired or did not come from this site. Reload the page and try again.";

/// The HMAC key the form tokens are signed with.
pub struct CsrfKey(hmac::Key);

impl CsrfKey {
    pub fn new(key: hmac::Key) -> CsrfKey {
        CsrfKey(key)
    }

    /// The form field for `nonce` (the cookie's value), issued at `now` (Unix seconds).
    pub fn issue(&self, nonce: &str, now: u64) -> String {
        let mac = hmac::sign(&self.0, &signed_message(nonce, now));
        format!("{now}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()))
    }

    /// Whether `field` was issued for `nonce` by a holder of this key, no longer than
    /// [`CSRF_LIFETIME_SECS`] before `now` (and not after it).
    pub fn verify(&self, field: Option<&str>, nonce: Option<&str>, now: u64) -> bool {
        let (Some(field), Some(nonce)) = (field, nonce) else {
            return false;
        };
        if !is_nonce(nonce) {
            return false;
        }
        let Some((issued_at, mac)) = field.split_once('.') else {
            return false;
        };
        let Ok(issued_at) = issued_at.parse::<u64>() else {
            return false;
        };
        if issued_at > now || now - issued_at > CSRF_LIFETIME_SECS {
            return false;
        }
        let Ok(mac) = URL_SAFE_NO_PAD.decode(mac) else {
            return false;
        };
        hmac::verify(&self.0, &signed_message(nonce, issued_at), &mac).is_ok()
    }
}

fn signed_message(nonce: &str, issued_at: u64) -> Vec<u8> {
    format!("portcullis-form.{nonce}.{issued_at}").into_bytes()
}

/// Whether a cookie value has the shape of a nonce this module makes.
pub fn is_nonce(value: &str) -> bool {
    value.len() == 43
        && value
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// A fresh nonce from the system's secure random source.
pub fn new_nonce() -> String {
    let mut bytes = [0u8; NONCE_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system random source is available");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The `Set-Cookie` value that gives the browser `nonce`: a session cookie, `HttpOnly`
/// (no script needs it: the field is in the page), `SameSite=Lax` so that a tab opened from
/// a mail link keeps the nonce other open tabs were given.
pub fn nonce_cookie(nonce: &str) -> String {
    format!("{CSRF_COOKIE}={nonce}; Path=/; Secure; HttpOnly; SameSite=Lax")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> CsrfKey {
        CsrfKey::new(hmac::Key::new(hmac::HMAC_SHA256, &[byte; 32]))
    }

    #[test]
    fn a_token_verifies_for_its_nonce_within_its_lifetime() {
        let key = key(1);
        let nonce = new_nonce();
        assert!(is_nonce(&nonce));
        let now = 1_700_000_000;
        let field = key.issue(&nonce, now);
        assert!(key.verify(Some(&field), Some(&nonce), now));
        assert!(key.verify(Some(&field), Some(&nonce), now + CSRF_LIFETIME_SECS));
        // Another instance with the same configuration derives the same key.
        assert!(self::key(1).verify(Some(&field), Some(&nonce), now + 1));
    }

    #[test]
    fn refusals() {
        let key = key(1);
        let nonce = new_nonce();
        let other_nonce = new_nonce();
        let now = 1_700_000_000;
        let field = key.issue(&nonce, now);
        let forged_time = field.replacen(&now.to_string(), &(now + 10).to_string(), 1);
        let cases: &[(&str, Option<&str>, Option<&str>, u64)] = &[
            ("no field", None, Some(&nonce), now),
            ("no cookie", Some(&field), None, now),
            (
                "another browser's nonce",
                Some(&field),
                Some(&other_nonce),
                now,
            ),
            (
                "expired",
                Some(&field),
                Some(&nonce),
                now + CSRF_LIFETIME_SECS + 1,
            ),
            ("issued in the future", Some(&field), Some(&nonce), now - 1),
            ("time changed", Some(&forged_time), Some(&nonce), now + 20),
            ("empty", Some(""), Some(&nonce), now),
            ("no mac", Some("1700000000."), Some(&nonce), now),
            ("not base64", Some("1700000000.!!!"), Some(&nonce), now),
            ("not a time", Some("soon.abc"), Some(&nonce), now),
            ("malformed cookie", Some(&field), Some("short"), now),
        ];
        for (why, field, nonce, at) in cases {
            assert!(!key.verify(*field, *nonce, *at), "{why}");
        }
        // Signed with another key: another deployment, or a guess.
        let foreign = self::key(2).issue(&nonce, now);
        assert!(!key.verify(Some(&foreign), Some(&nonce), now));
    }

    #[test]
    fn the_cookie_is_host_only_and_unreadable_by_scripts() {
        let cookie = nonce_cookie("n");
        assert!(cookie.starts_with("__Host-portcullis-csrf=n;"));
        for attribute in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
        assert!(!cookie.contains("Domain"));
    }
}
