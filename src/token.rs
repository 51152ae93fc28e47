//! Access tokens (JWT) and opaque tokens: keys, issuing, verifying. Pure: no I/O except
//! `TokenKeys::load`, which reads key files; the current time is always passed in.
//!
//! # Verification
//! A signature is checked by ring (HS256: an HMAC compared in constant time) or by
//! jsonwebtoken's ring-backed verifier (ES256, EdDSA), and nothing else is left to a library.
//! Everything a JWT library would decide from the token itself or from the system clock is
//! decided here:
//! - the header is parsed here first, so members we do not implement (`crit`) and members that
//!   would let the token pick its own key (`jwk`, `jku`, `x5u`, `x5c`) are refused outright;
//! - the key is chosen by `kid` from the configured keys only, and the header's `alg` must be
//!   exactly that key's algorithm. This is what stops `none` and the HS256-with-public-key
//!   confusion: the algorithm follows from the key, never the other way round;
//! - the payload is read only once the signature holds, straight into the claims it must
//!   have (a forwarded request from a caller the gateway has not seen yet pays for this);
//! - every claim is checked against the `now` the caller passes, with an explicit leeway.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Map, Value};

/// The `type` claim of an access token. Other token kinds (refresh, verification, reset)
/// must never be accepted as a bearer access token, even if one were ever minted as a JWT.
const ACCESS_TYPE: &str = "access";

/// Far above any token issued here (well under 1 KiB); bounds the decoding work that an
/// unauthenticated caller can make us do.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// A shorter HMAC key is below SHA-256's security level (RFC 7518 §3.2).
const MIN_SECRET_LEN: usize = 32;

/// Claims that must all be present, in the order `check_claims` reports them missing.
#[cfg(test)]
const REQUIRED_CLAIMS: [&str; 10] = [
    "sub", "email", "role", "sid", "jti", "iat", "exp", "iss", "aud", "type",
];

/// Header members refused whatever their value: `crit` names extensions we do not
/// implement (RFC 7515 §4.1.11 says to reject then), and the others would let the token
/// supply or point at its own verification key.
const REFUSED_HEADER_MEMBERS: [&str; 5] = ["crit", "jwk", "jku", "x5u", "x5c"];

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccessClaims {
    /// User id (a uuid).
    pub sub: String,
    pub email: String,
    pub role: String,
    /// Session id.
    pub sid: String,
    pub jti: String,
    pub iat: u64,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    pub iss: String,
    pub aud: String,
    /// Always "access".
    #[serde(rename = "type")]
    pub token_type: String,
}

impl AccessClaims {
    /// Whether the token is within its times at `now` (seconds), as verification judges it:
    /// what a cache of verified tokens must re-check on every use.
    pub fn check_times(&self, now: u64, leeway_secs: u64) -> Result<(), TokenError> {
        check_times(self.iat, self.exp, self.nbf, now, leeway_secs)
    }

    /// The first instant (seconds) at which [`AccessClaims::check_times`] refuses for expiry.
    pub fn expires_at(&self, leeway_secs: u64) -> u64 {
        self.exp.saturating_add(leeway_secs)
    }
}

/// The one time rule for access tokens, with `leeway` either side.
fn check_times(
    iat: u64,
    exp: u64,
    nbf: Option<u64>,
    now: u64,
    leeway: u64,
) -> Result<(), TokenError> {
    // `exp` is the first instant the token is no longer valid (RFC 7519 §4.1.4).
    if now >= exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if nbf.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
        return Err(TokenError::NotYetValid);
    }
    // A token issued in the future was minted by a skewed or compromised clock.
    if iat > now.saturating_add(leeway) {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

/// The claims of a signed identity assertion (contract 8): who the caller is, for which
/// upstream (`aud`), and for how long (`exp`, a minute at most). Built by
/// `proxy::assertion` from a verified access token; no `jti` or `type`, so it can never pass
/// for an access token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AssertionClaims<'a> {
    pub iss: &'a str,
    pub aud: &'a str,
    pub sub: &'a str,
    pub email: &'a str,
    pub role: &'a str,
    pub sid: &'a str,
    pub iat: u64,
    pub exp: u64,
}

/// Mirror of the config enum; the integrator maps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    EdDsa,
    Es256,
}

impl KeyAlgorithm {
    fn jwt_algorithm(self) -> Algorithm {
        match self {
            KeyAlgorithm::EdDsa => Algorithm::EdDSA,
            KeyAlgorithm::Es256 => Algorithm::ES256,
        }
    }
}

pub struct SigningKeySource {
    pub kid: String,
    pub algorithm: KeyAlgorithm,
    /// PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----").
    pub private_key_pem: Vec<u8>,
}

impl fmt::Debug for SigningKeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeySource")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("private_key_pem", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    // Configuration.
    #[error("the HS256 secret must be at least 32 bytes")]
    SecretTooShort,
    #[error("no signing key: configure an HS256 secret or an asymmetric signing key")]
    NoSigningKey,
    #[error("active kid {0:?} names no configured signing key")]
    UnknownActiveKid(String),
    #[error("signing key {kid:?}: {reason}")]
    BadKey { kid: String, reason: String },
    #[error("cannot read key file {path}: {reason}")]
    ReadKey { path: String, reason: String },
    #[error("identity assertions need an asymmetric signing key")]
    NoAsymmetricKey,

    // Verification: every one of these means "invalid token" to the client; they are kept
    // apart for logs and tests.
    #[error("malformed token")]
    Malformed,
    #[error("token header has an unsupported member or typ")]
    UnsupportedHeader,
    #[error("token algorithm not allowed for its key")]
    AlgorithmNotAllowed,
    #[error("token names no configured key")]
    UnknownKid,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issuer not accepted")]
    WrongIssuer,
    #[error("token audience not accepted")]
    WrongAudience,
    #[error("token is not an access token")]
    WrongType,
    #[error("token lacks the {0:?} claim")]
    MissingClaim(&'static str),

    #[error("signing failed: {0}")]
    Signing(String),
}

/// A configured asymmetric key, public half only: it verifies, and is published in the JWKS.
struct VerifyingKey {
    kid: String,
    algorithm: KeyAlgorithm,
    decoding: DecodingKey,
    jwk: Value,
}

/// The one key that signs new tokens. HS256 carries no `kid` (see `select_key`).
struct Signer {
    algorithm: Algorithm,
    kid: Option<String>,
    key: EncodingKey,
}

pub struct TokenKeys {
    settings: TokenSettings,
    hs256: Option<ring::hmac::Key>,
    keys: Vec<VerifyingKey>,
    signer: Signer,
    /// The root of [`TokenKeys::derive_key`].
    derivation: ring::hkdf::Prk,
}

impl fmt::Debug for TokenKeys {
    // By hand: the keys hold secret material, and only kids and algorithms are safe to print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<(&str, KeyAlgorithm)> = self
            .keys
            .iter()
            .map(|k| (k.kid.as_str(), k.algorithm))
            .collect();
        f.debug_struct("TokenKeys")
            .field("hs256", &self.hs256.is_some())
            .field("keys", &keys)
            .field("signing_kid", &self.signer.kid)
            .field("signing_algorithm", &self.signer.algorithm)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// `hs256_secret` must be >= 32 bytes (error otherwise). `signing_keys` may be empty.
    /// `active_kid` chooses which asymmetric key signs; when None and signing keys exist, the
    /// first signs; when no signing keys exist, HS256 signs (error if there is no secret
    /// either). Every configured key verifies (rotation: old kids keep verifying until
    /// removed).
    pub fn new(
        settings: TokenSettings,
        hs256_secret: Option<&[u8]>,
        signing_keys: Vec<SigningKeySource>,
        active_kid: Option<&str>,
    ) -> Result<TokenKeys, TokenError> {
        if hs256_secret.is_some_and(|s| s.len() < MIN_SECRET_LEN) {
            return Err(TokenError::SecretTooShort);
        }

        let mut keys = Vec::with_capacity(signing_keys.len());
        let mut encoding_keys = Vec::with_capacity(signing_keys.len());
        for source in &signing_keys {
            if keys.iter().any(|k: &VerifyingKey| k.kid == source.kid) {
                return Err(bad_key(&source.kid, "duplicate kid"));
            }
            let (verifying, encoding) = parse_signing_key(source)?;
            keys.push(verifying);
            encoding_keys.push(encoding);
        }

        let active_index = match active_kid {
            Some(kid) => match keys.iter().position(|k| k.kid == kid) {
                Some(index) => Some(index),
                None => return Err(TokenError::UnknownActiveKid(kid.to_owned())),
            },
            None if keys.is_empty() => None,
            None => Some(0),
        };

        let signer = match (active_index, hs256_secret) {
            (Some(index), _) => {
                // Only the active private key is kept; the others are needed for their
                // public halves alone.
                let key = encoding_keys.swap_remove(index);
                Signer {
                    algorithm: keys[index].algorithm.jwt_algorithm(),
                    kid: Some(keys[index].kid.clone()),
                    key,
                }
            }
            (None, Some(secret)) => Signer {
                algorithm: Algorithm::HS256,
                kid: None,
                key: EncodingKey::from_secret(secret),
            },
            (None, None) => return Err(TokenError::NoSigningKey),
        };

        // The HS256 secret when there is one (it outlives asymmetric key rotations), else
        // the active private key: material every instance of a fleet has from its config.
        let derivation_material = match (hs256_secret, active_index) {
            (Some(secret), _) => secret,
            (None, Some(index)) => signing_keys[index].private_key_pem.as_slice(),
            (None, None) => return Err(TokenError::NoSigningKey),
        };
        let derivation =
            ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"portcullis derived keys v1")
                .extract(derivation_material);

        Ok(TokenKeys {
            settings,
            hs256: hs256_secret.map(|secret| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret)),
            keys,
            signer,
            derivation,
        })
    }

    /// Reads each key file (the only I/O here) and calls `new`.
    pub fn load(
        settings: TokenSettings,
        hs256_secret: Option<&[u8]>,
        keys: &[(String, KeyAlgorithm, PathBuf)],
        active_kid: Option<&str>,
    ) -> Result<TokenKeys, TokenError> {
        let mut sources = Vec::with_capacity(keys.len());
        for (kid, algorithm, path) in keys {
            let private_key_pem = std::fs::read(path).map_err(|e| TokenError::ReadKey {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            sources.push(SigningKeySource {
                kid: kid.clone(),
                algorithm: *algorithm,
                private_key_pem,
            });
        }
        TokenKeys::new(settings, hs256_secret, sources, active_kid)
    }

    /// An HMAC key for `purpose`, derived (HKDF-SHA256) from the signing secret: the same on
    /// every instance that shares the configuration, different per purpose, and revealing
    /// nothing about the secret. For MACs the fleet must agree on without sharing state
    /// (the sign-in forms' tokens).
    pub fn derive_key(&self, purpose: &[u8]) -> ring::hmac::Key {
        let purpose = [purpose];
        let okm = self
            .derivation
            .expand(&purpose, ring::hmac::HMAC_SHA256)
            .expect("one HMAC-SHA256 key is well within HKDF's output limit");
        ring::hmac::Key::from(okm)
    }

    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// Builds and signs access claims: iat = now, exp = now + access_ttl, fresh uuid jti,
    /// iss/aud from settings, type "access". `now` is unix seconds.
    pub fn issue_access(
        &self,
        sub: &str,
        email: &str,
        role: &str,
        sid: &str,
        now: u64,
    ) -> Result<(String, AccessClaims), TokenError> {
        let claims = AccessClaims {
            sub: sub.to_owned(),
            email: email.to_owned(),
            role: role.to_owned(),
            sid: sid.to_owned(),
            jti: uuid::Uuid::new_v4().to_string(),
            iat: now,
            exp: now.saturating_add(self.settings.access_ttl.as_secs()),
            nbf: None,
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            token_type: ACCESS_TYPE.to_owned(),
        };
        let mut header = Header::new(self.signer.algorithm);
        header.kid = self.signer.kid.clone();
        let token = jsonwebtoken::encode(&header, &claims, &self.signer.key)
            .map_err(|e| TokenError::Signing(e.to_string()))?;
        Ok((token, claims))
    }

    /// Whether new tokens are signed with an asymmetric key, which upstreams can verify with
    /// the JWKS alone (what an identity assertion needs).
    pub fn signs_asymmetrically(&self) -> bool {
        self.signer.kid.is_some()
    }

    /// Signs an identity assertion (contract 8) with the active asymmetric key, its `kid` in
    /// the header. An HS256 signer refuses: an upstream verifying it would hold the secret
    /// that mints access tokens.
    pub fn sign_assertion(&self, claims: &AssertionClaims<'_>) -> Result<String, TokenError> {
        if !self.signs_asymmetrically() {
            return Err(TokenError::NoAsymmetricKey);
        }
        let mut header = Header::new(self.signer.algorithm);
        header.kid = self.signer.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.signer.key)
            .map_err(|e| TokenError::Signing(e.to_string()))
    }

    /// Verifies an access token at `now` (unix seconds). Every error means "invalid token" to
    /// the client; the variant says why, for logs.
    pub fn verify_access(&self, token: &str, now: u64) -> Result<AccessClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut segments = token.split('.');
        let (header_b64, payload_b64, signature_b64) = match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some(h), Some(p), Some(s), None) => (h, p, s),
            _ => return Err(TokenError::Malformed),
        };
        // An empty signature is let through here so that an unsigned `alg: none` token is
        // reported as what it is (AlgorithmNotAllowed) rather than as a shape error.
        if payload_b64.is_empty() || !is_base64url(signature_b64) {
            return Err(TokenError::Malformed);
        }

        let header = decode_json_object(header_b64)?;
        if REFUSED_HEADER_MEMBERS
            .iter()
            .any(|m| header.contains_key(*m))
        {
            return Err(TokenError::UnsupportedHeader);
        }
        match header.get("typ") {
            None => {}
            Some(Value::String(typ)) if typ.eq_ignore_ascii_case("JWT") => {}
            Some(_) => return Err(TokenError::UnsupportedHeader),
        }
        let algorithm = match header.get("alg") {
            Some(Value::String(alg)) => match alg.as_str() {
                "HS256" => Algorithm::HS256,
                "EdDSA" => Algorithm::EdDSA,
                "ES256" => Algorithm::ES256,
                _ => return Err(TokenError::AlgorithmNotAllowed),
            },
            _ => return Err(TokenError::Malformed),
        };
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(TokenError::Malformed),
        };

        let key = self.select_key(kid)?;
        // jsonwebtoken would refuse this too; deciding it here keeps the rule in our code.
        if algorithm != key.algorithm() {
            return Err(TokenError::AlgorithmNotAllowed);
        }

        let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
        key.verify(signing_input, signature_b64)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TokenError::Malformed)?;
        let claims: PayloadClaims =
            serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        self.check_claims(claims, now)
    }

    /// JWKS of the public verification keys. A shared HS256 secret is never published, so
    /// with only HS256 configured this is `{"keys":[]}`.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<Value> = self.keys.iter().map(|k| k.jwk.clone()).collect();
        json!({ "keys": keys })
    }

    /// The key a token may be verified with, and the one algorithm it may use. HS256 has no
    /// kid, so a token with a kid can only mean an asymmetric key; this keeps the two key
    /// spaces apart.
    fn select_key(&self, kid: Option<&str>) -> Result<SignatureKey<'_>, TokenError> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid == kid)
                .map(|k| SignatureKey::Public(&k.decoding, k.algorithm.jwt_algorithm()))
                .ok_or(TokenError::UnknownKid),
            None => self
                .hs256
                .as_ref()
                .map(SignatureKey::Hmac)
                .ok_or(TokenError::UnknownKid),
        }
    }

    fn check_claims(&self, claims: PayloadClaims, now: u64) -> Result<AccessClaims, TokenError> {
        // Reported in the order of REQUIRED_CLAIMS (the tests hold the two together).
        let sub = claims.sub.ok_or(TokenError::MissingClaim("sub"))?;
        let email = claims.email.ok_or(TokenError::MissingClaim("email"))?;
        let role = claims.role.ok_or(TokenError::MissingClaim("role"))?;
        let sid = claims.sid.ok_or(TokenError::MissingClaim("sid"))?;
        let jti = claims.jti.ok_or(TokenError::MissingClaim("jti"))?;
        let iat = claims.iat.ok_or(TokenError::MissingClaim("iat"))?;
        let exp = claims.exp.ok_or(TokenError::MissingClaim("exp"))?;
        let iss = claims.iss.ok_or(TokenError::MissingClaim("iss"))?;
        let aud = claims.aud.ok_or(TokenError::MissingClaim("aud"))?;
        let token_type = claims.token_type.ok_or(TokenError::MissingClaim("type"))?;
        let nbf = claims.nbf;

        check_times(iat, exp, nbf, now, self.settings.leeway.as_secs())?;
        if iss != self.settings.issuer {
            return Err(TokenError::WrongIssuer);
        }
        let audience_ok = match &aud {
            Audience::One(aud) => *aud == self.settings.audience,
            Audience::Many(auds) => auds.contains(&self.settings.audience),
        };
        if !audience_ok {
            return Err(TokenError::WrongAudience);
        }
        if token_type != ACCESS_TYPE {
            return Err(TokenError::WrongType);
        }

        Ok(AccessClaims {
            sub,
            email,
            role,
            sid,
            jti,
            iat,
            exp,
            nbf,
            iss,
            // An array audience has been checked to contain ours, which is the one that
            // matters to the caller.
            aud: self.settings.audience.clone(),
            token_type,
        })
    }
}

/// The key a token's header selected.
enum SignatureKey<'a> {
    Hmac(&'a ring::hmac::Key),
    Public(&'a DecodingKey, Algorithm),
}

impl SignatureKey<'_> {
    fn algorithm(&self) -> Algorithm {
        match self {
            SignatureKey::Hmac(_) => Algorithm::HS256,
            SignatureKey::Public(_, algorithm) => *algorithm,
        }
    }

    /// `signature_b64` is already known to be base64url characters only.
    fn verify(&self, signing_input: &str, signature_b64: &str) -> Result<(), TokenError> {
        let valid = match self {
            SignatureKey::Hmac(key) => {
                // Not the length of a SHA-256 MAC: a wrong signature, like any other.
                let mut signature = [0u8; 32];
                matches!(
                    URL_SAFE_NO_PAD.decode_slice(signature_b64, &mut signature),
                    Ok(32)
                ) && ring::hmac::verify(key, signing_input.as_bytes(), &signature).is_ok()
            }
            SignatureKey::Public(key, algorithm) => jsonwebtoken::crypto::verify(
                signature_b64,
                signing_input.as_bytes(),
                key,
                *algorithm,
            )
            // Only a signature that is not base64 errs; its shape is wrong.
            .map_err(|_| TokenError::Malformed)?,
        };
        if valid {
            Ok(())
        } else {
            Err(TokenError::BadSignature)
        }
    }
}

/// The payload as read, before any check: each claim absent (or `null`, which counts as
/// absent) or of its one accepted type. Any other type, a time that is not a whole
/// non-negative number of seconds (`"9999999999"`, `1.5`, `-1`), a member given twice, or a
/// payload that is not an object fails the read, and the token is malformed. Other members
/// are ignored.
#[derive(serde::Deserialize)]
struct PayloadClaims {
    sub: Option<String>,
    email: Option<String>,
    role: Option<String>,
    sid: Option<String>,
    jti: Option<String>,
    iat: Option<u64>,
    exp: Option<u64>,
    nbf: Option<u64>,
    iss: Option<String>,
    aud: Option<Audience>,
    #[serde(rename = "type")]
    token_type: Option<String>,
}

/// `aud`: one audience, or an array of them (RFC 7519 §4.1.3).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

fn is_base64url(segment: &str) -> bool {
    segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn decode_json_object(segment: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

fn bad_key(kid: &str, reason: &str) -> TokenError {
    TokenError::BadKey {
        kid: kid.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Checks a configured private key and derives its public half. The verifying key is built
/// from the same base64url coordinates that the JWKS publishes, so what we verify with is
/// exactly what relying parties are told to verify with.
fn parse_signing_key(source: &SigningKeySource) -> Result<(VerifyingKey, EncodingKey), TokenError> {
    let kid = source.kid.as_str();
    if kid.is_empty() {
        return Err(bad_key(kid, "empty kid"));
    }
    let der = pkcs8_der_from_pem(&source.private_key_pem).map_err(|reason| bad_key(kid, reason))?;
    match source.algorithm {
        KeyAlgorithm::EdDsa => {
            // `maybe_unchecked` accepts the PKCS#8 v1 files that `openssl genpkey` writes
            // (no embedded public key); jsonwebtoken signs through the same call.
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
                .map_err(|_| bad_key(kid, "not an Ed25519 PKCS#8 private key"))?;
            let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
            let decoding = DecodingKey::from_ed_components(&x)
                .map_err(|_| bad_key(kid, "cannot build the Ed25519 public key"))?;
            let jwk = json!({
                "kty": "OKP", "crv": "Ed25519", "x": x,
                "kid": kid, "alg": "EdDSA", "use": "sig",
            });
            let verifying = VerifyingKey {
                kid: kid.to_owned(),
                algorithm: source.algorithm,
                decoding,
                jwk,
            };
            Ok((verifying, EncodingKey::from_ed_der(&der)))
        }
        KeyAlgorithm::Es256 => {
            let pair = EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &der,
                &SystemRandom::new(),
            )
            .map_err(|_| bad_key(kid, "not a P-256 PKCS#8 private key"))?;
            // ring gives the uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
            let public = pair.public_key().as_ref();
            let (Some(0x04), Some(x), Some(y), 65) = (
                public.first().copied(),
                public.get(1..33),
                public.get(33..65),
                public.len(),
            ) else {
                return Err(bad_key(kid, "unexpected P-256 public key encoding"));
            };
            let x = URL_SAFE_NO_PAD.encode(x);
            let y = URL_SAFE_NO_PAD.encode(y);
            let decoding = DecodingKey::from_ec_components(&x, &y)
                .map_err(|_| bad_key(kid, "cannot build the P-256 public key"))?;
            let jwk = json!({
                "kty": "EC", "crv": "P-256", "x": x, "y": y,
                "kid": kid, "alg": "ES256", "use": "sig",
            });
            let verifying = VerifyingKey {
                kid: kid.to_owned(),
                algorithm: source.algorithm,
                decoding,
                jwk,
            };
            Ok((verifying, EncodingKey::from_ec_der(&der)))
        }
    }
}

/// The DER inside a PKCS#8 "PRIVATE KEY" PEM block. The reasons name the problem, never
/// the content.
fn pkcs8_der_from_pem(pem: &[u8]) -> Result<Vec<u8>, &'static str> {
    let text = std::str::from_utf8(pem).map_err(|_| "not PEM text")?;
    let Some(start) = text.find(PEM_BEGIN) else {
        return Err(if text.contains("-----BEGIN EC PRIVATE KEY-----") {
            "SEC1 EC key: convert it to PKCS#8 (openssl pkcs8 -topk8 -nocrypt)"
        } else if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            "encrypted private keys are not supported"
        } else {
            "no PKCS#8 \"BEGIN PRIVATE KEY\" PEM block"
        });
    };
    let body = &text[start + PEM_BEGIN.len()..];
    let Some(end) = body.find(PEM_END) else {
        return Err("PEM block has no END line");
    };
    let base64: String = body[..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    STANDARD
        .decode(base64)
        .map_err(|_| "PEM body is not valid base64")
}

/// Opaque bearer secrets (refresh tokens, email tokens): 32 random bytes from ring's
/// SystemRandom, base64url without padding (43 chars).
pub struct OpaqueToken {
    pub token: String,
    /// `hash_opaque(&token)`: what is stored and looked up.
    pub hash: [u8; 32],
}

impl fmt::Debug for OpaqueToken {
    // By hand: the token is a bearer secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpaqueToken").finish_non_exhaustive()
    }
}

impl OpaqueToken {
    /// # Panics
    /// If the operating system's random source fails. There is no safe fallback for a
    /// bearer secret, so this stops rather than issue a guessable token.
    pub fn generate() -> OpaqueToken {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system random source failed");
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let hash = hash_opaque(&token);
        OpaqueToken { token, hash }
    }
}

/// SHA-256 of the token's text (what is stored and looked up). A fast hash is enough: the
/// token carries 256 random bits, so there is nothing to brute-force.
pub fn hash_opaque(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    use base64::engine::general_purpose::URL_SAFE;
    use jsonwebtoken::Validation;
    use ring::hmac;

    const NOW: u64 = 1_700_000_000;
    const TTL: u64 = 900;
    const SECRET: &[u8] = b"test-hs256-secret-0123456789abcdef";
    const ISSUER: &str = "https://auth.example.test";
    const AUDIENCE: &str = "portcullis-api";
    const SUB: &str = "6f1c8f3e-6a44-4c51-9d2a-0d7c1b2e3f40";

    fn settings() -> TokenSettings {
        settings_with_leeway(0)
    }

    fn settings_with_leeway(leeway: u64) -> TokenSettings {
        TokenSettings {
            issuer: ISSUER.to_owned(),
            audience: AUDIENCE.to_owned(),
            access_ttl: Duration::from_secs(TTL),
            leeway: Duration::from_secs(leeway),
        }
    }

    /// PKCS#8 DER wrapped as PEM, base64 in 64-character lines.
    fn pem(der: &[u8]) -> Vec<u8> {
        let b64 = STANDARD.encode(der);
        let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str("-----END PRIVATE KEY-----\n");
        out.into_bytes()
    }

    struct TestKey {
        kid: &'static str,
        algorithm: KeyAlgorithm,
        pkcs8: Vec<u8>,
    }

    impl TestKey {
        fn ed(kid: &'static str) -> TestKey {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
            TestKey {
                kid,
                algorithm: KeyAlgorithm::EdDsa,
                pkcs8: pkcs8.as_ref().to_vec(),
            }
        }

        fn es(kid: &'static str) -> TestKey {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &SystemRandom::new(),
            )
            .unwrap();
            TestKey {
                kid,
                algorithm: KeyAlgorithm::Es256,
                pkcs8: pkcs8.as_ref().to_vec(),
            }
        }

        fn source(&self) -> SigningKeySource {
            SigningKeySource {
                kid: self.kid.to_owned(),
                algorithm: self.algorithm,
                private_key_pem: pem(&self.pkcs8),
            }
        }

        fn public_key(&self) -> Vec<u8> {
            match self.algorithm {
                KeyAlgorithm::EdDsa => Ed25519KeyPair::from_pkcs8(&self.pkcs8)
                    .unwrap()
                    .public_key()
                    .as_ref()
                    .to_vec(),
                KeyAlgorithm::Es256 => EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    &self.pkcs8,
                    &SystemRandom::new(),
                )
                .unwrap()
                .public_key()
                .as_ref()
                .to_vec(),
            }
        }

        fn sign(&self, message: &[u8]) -> Vec<u8> {
            match self.algorithm {
                KeyAlgorithm::EdDsa => Ed25519KeyPair::from_pkcs8(&self.pkcs8)
                    .unwrap()
                    .sign(message)
                    .as_ref()
                    .to_vec(),
                KeyAlgorithm::Es256 => {
                    let rng = SystemRandom::new();
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &self.pkcs8, &rng)
                        .unwrap()
                        .sign(&rng, message)
                        .unwrap()
                        .as_ref()
                        .to_vec()
                }
            }
        }

        /// A token with any header and claims, properly signed by this key.
        fn craft(&self, header: &Value, claims: &Value) -> String {
            craft(header, claims, |m| self.sign(m))
        }
    }

    fn b64_json(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    fn craft(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
        craft_raw(&b64_json(header), &b64_json(claims), sign)
    }

    fn craft_raw(
        header_b64: &str,
        payload_b64: &str,
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> String {
        let message = format!("{header_b64}.{payload_b64}");
        let signature = URL_SAFE_NO_PAD.encode(sign(message.as_bytes()));
        format!("{message}.{signature}")
    }

    fn hmac_sha256(secret: &[u8], message: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), message)
            .as_ref()
            .to_vec()
    }

    /// An HS256 token signed with the test secret, with any header and claims.
    fn hs(header: &Value, claims: &Value) -> String {
        craft(header, claims, |m| hmac_sha256(SECRET, m))
    }

    fn hs_header() -> Value {
        json!({"alg": "HS256", "typ": "JWT"})
    }

    fn good_claims() -> Value {
        json!({
            "sub": SUB, "email": "ada@example.test", "role": "user", "sid": "session-1",
            "jti": "jti-1", "iat": NOW, "exp": NOW + TTL, "iss": ISSUER, "aud": AUDIENCE,
            "type": "access",
        })
    }

    fn with(mut claims: Value, name: &str, value: Value) -> Value {
        claims[name] = value;
        claims
    }

    fn without(mut claims: Value, name: &str) -> Value {
        claims.as_object_mut().unwrap().remove(name);
        claims
    }

    fn hs_keys() -> TokenKeys {
        TokenKeys::new(settings(), Some(SECRET), vec![], None).unwrap()
    }

    fn keys_with(keys: &[&TestKey], active: Option<&str>) -> TokenKeys {
        let sources = keys.iter().map(|k| k.source()).collect();
        TokenKeys::new(settings(), None, sources, active).unwrap()
    }

    fn header_of(token: &str) -> Value {
        let header = token.split('.').next().unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()
    }

    fn issue(keys: &TokenKeys) -> (String, AccessClaims) {
        keys.issue_access(SUB, "ada@example.test", "user", "session-1", NOW)
            .unwrap()
    }

    fn err(result: Result<TokenKeys, TokenError>) -> TokenError {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    // Round trips.

    #[test]
    fn hs256_round_trip() {
        let keys = hs_keys();
        let (token, claims) = issue(&keys);
        assert_eq!(claims.sub, SUB);
        assert_eq!(claims.email, "ada@example.test");
        assert_eq!(claims.role, "user");
        assert_eq!(claims.sid, "session-1");
        assert_eq!(claims.iat, NOW);
        assert_eq!(claims.exp, NOW + TTL);
        assert_eq!(claims.nbf, None);
        assert_eq!(claims.iss, ISSUER);
        assert_eq!(claims.aud, AUDIENCE);
        assert_eq!(claims.token_type, "access");
        assert!(uuid::Uuid::parse_str(&claims.jti).is_ok());
        assert_eq!(header_of(&token), json!({"alg": "HS256", "typ": "JWT"}));
        assert_eq!(keys.verify_access(&token, NOW), Ok(claims));
    }

    #[test]
    fn assertions_are_signed_by_the_active_asymmetric_key_only() {
        let claims = AssertionClaims {
            iss: ISSUER,
            aud: "app",
            sub: SUB,
            email: "ada@example.test",
            role: "user",
            sid: "session-1",
            iat: NOW,
            exp: NOW + 60,
        };
        assert!(!hs_keys().signs_asymmetrically());
        assert_eq!(
            hs_keys().sign_assertion(&claims),
            Err(TokenError::NoAsymmetricKey)
        );
        for key in [TestKey::ed("ed-1"), TestKey::es("es-1")] {
            let old = TestKey::ed("old");
            let keys = keys_with(&[&old, &key], Some(key.kid));
            assert!(keys.signs_asymmetrically());
            let assertion = keys.sign_assertion(&claims).unwrap();
            let header = header_of(&assertion);
            assert_eq!(header["kid"], key.kid);
            // Verified here by the public key alone, as an upstream would.
            let decoding = match key.algorithm {
                KeyAlgorithm::EdDsa => DecodingKey::from_ed_der(&key.public_key()),
                KeyAlgorithm::Es256 => {
                    let point = key.public_key();
                    DecodingKey::from_ec_components(
                        &URL_SAFE_NO_PAD.encode(&point[1..33]),
                        &URL_SAFE_NO_PAD.encode(&point[33..65]),
                    )
                    .unwrap()
                }
            };
            let mut validation = Validation::new(key.algorithm.jwt_algorithm());
            validation.set_audience(&["app"]);
            validation.set_issuer(&[ISSUER]);
            validation.validate_exp = false;
            let decoded = jsonwebtoken::decode::<Value>(&assertion, &decoding, &validation)
                .unwrap()
                .claims;
            assert_eq!(
                decoded,
                json!({
                    "iss": ISSUER, "aud": "app", "sub": SUB, "email": "ada@example.test",
                    "role": "user", "sid": "session-1", "iat": NOW, "exp": NOW + 60,
                })
            );
            // It is no access token: the gateway itself refuses it as a bearer token.
            assert!(keys.verify_access(&assertion, NOW).is_err());
        }
    }

    #[test]
    fn jti_is_fresh_per_token() {
        let keys = hs_keys();
        assert_ne!(issue(&keys).1.jti, issue(&keys).1.jti);
    }

    #[test]
    fn issued_payload_serialises_type_and_omits_nbf() {
        let (token, _) = issue(&hs_keys());
        let payload = token.split('.').nth(1).unwrap();
        let payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(payload["type"], "access");
        assert!(payload.get("nbf").is_none());
        assert!(payload.get("token_type").is_none());
    }

    #[test]
    fn eddsa_round_trip_with_kid() {
        let key = TestKey::ed("ed-1");
        let keys = keys_with(&[&key], Some("ed-1"));
        let (token, claims) = issue(&keys);
        assert_eq!(
            header_of(&token),
            json!({"alg": "EdDSA", "typ": "JWT", "kid": "ed-1"})
        );
        assert_eq!(keys.verify_access(&token, NOW + 1), Ok(claims));
    }

    #[test]
    fn es256_round_trip_with_kid() {
        let key = TestKey::es("ec-1");
        let keys = keys_with(&[&key], None);
        let (token, claims) = issue(&keys);
        assert_eq!(
            header_of(&token),
            json!({"alg": "ES256", "typ": "JWT", "kid": "ec-1"})
        );
        assert_eq!(keys.verify_access(&token, NOW + 1), Ok(claims));
    }

    #[test]
    fn crafted_tokens_from_the_test_helpers_verify() {
        // The negative tests below rely on these helpers producing valid tokens.
        let ed = TestKey::ed("ed-1");
        let keys = TokenKeys::new(settings(), Some(SECRET), vec![ed.source()], None).unwrap();
        let ed_header = json!({"alg": "EdDSA", "typ": "JWT", "kid": "ed-1"});
        assert!(keys
            .verify_access(&ed.craft(&ed_header, &good_claims()), NOW)
            .is_ok());
        assert!(keys
            .verify_access(&hs(&hs_header(), &good_claims()), NOW)
            .is_ok());
    }

    #[test]
    fn absent_typ_is_accepted() {
        let token = hs(&json!({"alg": "HS256"}), &good_claims());
        assert!(hs_keys().verify_access(&token, NOW).is_ok());
    }

    // Key configuration and rotation.

    #[test]
    fn first_key_signs_when_no_active_kid_and_hs256_still_verifies() {
        let (a, b) = (TestKey::ed("a"), TestKey::es("b"));
        let sources = vec![a.source(), b.source()];
        let keys = TokenKeys::new(settings(), Some(SECRET), sources, None).unwrap();
        let (token, _) = issue(&keys);
        assert_eq!(header_of(&token)["kid"], "a");
        assert!(keys.verify_access(&token, NOW).is_ok());
        // A token without a kid is still an HS256 token and still verifies.
        let hs_token = issue(&hs_keys()).0;
        assert!(keys.verify_access(&hs_token, NOW).is_ok());
    }

    #[test]
    fn active_kid_chooses_the_signer() {
        let (a, b) = (TestKey::ed("a"), TestKey::es("b"));
        let keys = keys_with(&[&a, &b], Some("b"));
        let (token, _) = issue(&keys);
        assert_eq!(header_of(&token)["kid"], "b");
        assert_eq!(header_of(&token)["alg"], "ES256");
    }

    #[test]
    fn rotation_old_kid_verifies_until_removed() {
        let (old, new) = (TestKey::ed("2024-01"), TestKey::es("2024-06"));
        let before = keys_with(&[&old], None);
        let (old_token, old_claims) = issue(&before);

        let during = keys_with(&[&old, &new], Some("2024-06"));
        assert_eq!(during.verify_access(&old_token, NOW), Ok(old_claims));
        let (new_token, _) = issue(&during);
        assert_eq!(header_of(&new_token)["kid"], "2024-06");
        assert!(during.verify_access(&new_token, NOW).is_ok());

        let after = keys_with(&[&new], None);
        assert_eq!(
            after.verify_access(&old_token, NOW),
            Err(TokenError::UnknownKid)
        );
        assert!(after.verify_access(&new_token, NOW).is_ok());
    }

    #[test]
    fn secret_shorter_than_32_bytes_is_refused() {
        let short = [7u8; 31];
        assert_eq!(
            err(TokenKeys::new(settings(), Some(&short), vec![], None)),
            TokenError::SecretTooShort
        );
        assert!(TokenKeys::new(settings(), Some(&[7u8; 32]), vec![], None).is_ok());
        // Refused even when an asymmetric key signs: the secret would still verify.
        let ed = TestKey::ed("ed");
        assert_eq!(
            err(TokenKeys::new(
                settings(),
                Some(&short),
                vec![ed.source()],
                None
            )),
            TokenError::SecretTooShort
        );
    }

    #[test]
    fn unknown_active_kid_is_refused() {
        let ed = TestKey::ed("ed");
        assert_eq!(
            err(TokenKeys::new(
                settings(),
                None,
                vec![ed.source()],
                Some("nope")
            )),
            TokenError::UnknownActiveKid("nope".to_owned())
        );
        assert_eq!(
            err(TokenKeys::new(
                settings(),
                Some(SECRET),
                vec![],
                Some("nope")
            )),
            TokenError::UnknownActiveKid("nope".to_owned())
        );
    }

    #[test]
    fn no_key_at_all_is_refused() {
        assert_eq!(
            err(TokenKeys::new(settings(), None, vec![], None)),
            TokenError::NoSigningKey
        );
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        let ed = TestKey::ed("ed");
        let es = TestKey::es("es");
        let body_line = String::from_utf8(pem(&ed.pkcs8))
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .to_owned();

        let cases: Vec<(SigningKeySource, &str)> = vec![
            (
                SigningKeySource {
                    kid: "ed".into(),
                    algorithm: KeyAlgorithm::Es256,
                    private_key_pem: pem(&ed.pkcs8),
                },
                "not a P-256",
            ),
            (
                SigningKeySource {
                    kid: "es".into(),
                    algorithm: KeyAlgorithm::EdDsa,
                    private_key_pem: pem(&es.pkcs8),
                },
                "not an Ed25519",
            ),
            (
                SigningKeySource {
                    kid: "x".into(),
                    algorithm: KeyAlgorithm::EdDsa,
                    private_key_pem: b"garbage".to_vec(),
                },
                "no PKCS#8",
            ),
            (
                SigningKeySource {
                    kid: "x".into(),
                    algorithm: KeyAlgorithm::Es256,
                    private_key_pem:
                        b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"
                            .to_vec(),
                },
                "SEC1",
            ),
            (
                SigningKeySource {
                    kid: "x".into(),
                    algorithm: KeyAlgorithm::EdDsa,
                    private_key_pem:
                        b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n".to_vec(),
                },
                "base64",
            ),
            (
                SigningKeySource {
                    kid: "".into(),
                    algorithm: KeyAlgorithm::EdDsa,
                    private_key_pem: pem(&ed.pkcs8),
                },
                "empty kid",
            ),
        ];
        for (source, expected) in cases {
            let kid = source.kid.clone();
            let e = err(TokenKeys::new(settings(), None, vec![source], None));
            match &e {
                TokenError::BadKey { kid: k, reason } => {
                    assert_eq!(*k, kid);
                    assert!(reason.contains(expected), "{reason}");
                }
                other => panic!("expected BadKey, got {other:?}"),
            }
            assert!(!e.to_string().contains(&body_line));
        }

        let duplicate = vec![ed.source(), ed.source()];
        assert!(matches!(
            err(TokenKeys::new(settings(), None, duplicate, None)),
            TokenError::BadKey { reason, .. } if reason == "duplicate kid"
        ));
    }

    #[test]
    fn load_reads_key_files() {
        let ed = TestKey::ed("ed-file");
        let dir = std::env::temp_dir().join(format!("portcullis-token-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ed.pem");
        std::fs::write(&path, pem(&ed.pkcs8)).unwrap();

        let entries = [("ed-file".to_owned(), KeyAlgorithm::EdDsa, path.clone())];
        let keys = TokenKeys::load(settings(), None, &entries, None).unwrap();
        let (token, claims) = issue(&keys);
        assert_eq!(keys.verify_access(&token, NOW), Ok(claims));

        let missing = [(
            "gone".to_owned(),
            KeyAlgorithm::EdDsa,
            dir.join("missing.pem"),
        )];
        match err(TokenKeys::load(settings(), None, &missing, None)) {
            TokenError::ReadKey { path, .. } => assert!(path.ends_with("missing.pem")),
            other => panic!("expected ReadKey, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // Time.

    #[test]
    fn expired_at_exactly_exp() {
        let keys = hs_keys();
        let (token, _) = issue(&keys);
        assert!(keys.verify_access(&token, NOW + TTL - 1).is_ok());
        assert_eq!(
            keys.verify_access(&token, NOW + TTL),
            Err(TokenError::Expired)
        );
        assert_eq!(
            keys.verify_access(&token, u64::MAX),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn leeway_extends_exp_by_exactly_the_leeway() {
        let keys = TokenKeys::new(settings_with_leeway(30), Some(SECRET), vec![], None).unwrap();
        let (token, _) = issue(&keys);
        let exp = NOW + TTL;
        assert!(keys.verify_access(&token, exp + 30 - 1).is_ok());
        assert_eq!(
            keys.verify_access(&token, exp + 30),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn exp_near_u64_max_does_not_overflow() {
        let keys = TokenKeys::new(settings_with_leeway(30), Some(SECRET), vec![], None).unwrap();
        let token = hs(&hs_header(), &with(good_claims(), "exp", json!(u64::MAX)));
        assert!(keys.verify_access(&token, NOW).is_ok());
    }

    #[test]
    fn nbf_in_the_future_is_not_yet_valid() {
        let keys = hs_keys();
        let token = hs(&hs_header(), &with(good_claims(), "nbf", json!(NOW + 10)));
        assert_eq!(
            keys.verify_access(&token, NOW),
            Err(TokenError::NotYetValid)
        );
        assert!(keys.verify_access(&token, NOW + 10).is_ok());

        let lenient = TokenKeys::new(settings_with_leeway(10), Some(SECRET), vec![], None).unwrap();
        assert!(lenient.verify_access(&token, NOW).is_ok());
        assert_eq!(
            lenient.verify_access(&token, NOW - 1),
            Err(TokenError::NotYetValid)
        );

        let past = hs(&hs_header(), &with(good_claims(), "nbf", json!(NOW - 10)));
        assert_eq!(keys.verify_access(&past, NOW).unwrap().nbf, Some(NOW - 10));
    }

    #[test]
    fn iat_in_the_future_is_not_yet_valid() {
        let keys = hs_keys();
        let token = hs(&hs_header(), &with(good_claims(), "iat", json!(NOW + 5)));
        assert_eq!(
            keys.verify_access(&token, NOW),
            Err(TokenError::NotYetValid)
        );
        let lenient = TokenKeys::new(settings_with_leeway(5), Some(SECRET), vec![], None).unwrap();
        assert!(lenient.verify_access(&token, NOW).is_ok());
    }

    // Signatures and algorithms.

    #[test]
    fn tampered_payload_is_a_bad_signature() {
        let hs_only = hs_keys();
        let ed = TestKey::ed("ed");
        let es = TestKey::es("es");
        let asymmetric = keys_with(&[&ed, &es], None);
        let es_signed = keys_with(&[&ed, &es], Some("es"));
        let forged_payload = b64_json(&with(good_claims(), "role", json!("admin")));

        for (keys, token) in [
            (&hs_only, issue(&hs_only).0),
            (&asymmetric, issue(&asymmetric).0),
            (&asymmetric, issue(&es_signed).0),
        ] {
            let parts: Vec<&str> = token.split('.').collect();
            let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
            assert_eq!(
                keys.verify_access(&tampered, NOW),
                Err(TokenError::BadSignature)
            );
        }
    }

    #[test]
    fn wrong_signing_key_is_a_bad_signature() {
        let other_secret = TokenKeys::new(settings(), Some(&[9u8; 32]), vec![], None).unwrap();
        let (token, _) = issue(&other_secret);
        assert_eq!(
            hs_keys().verify_access(&token, NOW),
            Err(TokenError::BadSignature)
        );

        // Another key presenting a configured kid.
        let (real, impostor) = (TestKey::ed("ed"), TestKey::ed("ed"));
        let keys = keys_with(&[&real], None);
        let token = issue(&keys_with(&[&impostor], None)).0;
        assert_eq!(
            keys.verify_access(&token, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn empty_or_truncated_signature_is_refused() {
        let keys = hs_keys();
        let (token, _) = issue(&keys);
        let (message, _) = token.rsplit_once('.').unwrap();
        assert_eq!(
            keys.verify_access(&format!("{message}."), NOW),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            keys.verify_access(&token[..token.len() - 2], NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn alg_none_is_not_allowed() {
        let ed = TestKey::ed("ed");
        let both = TokenKeys::new(settings(), Some(SECRET), vec![ed.source()], None).unwrap();
        let payload = b64_json(&good_claims());
        for header in [
            json!({"alg": "none", "typ": "JWT"}),
            json!({"alg": "none", "typ": "JWT", "kid": "ed"}),
            json!({"alg": "None"}),
            json!({"alg": "NONE", "kid": "ed"}),
        ] {
            let unsigned = format!("{}.{payload}.", b64_json(&header));
            for keys in [&hs_keys(), &both] {
                assert_eq!(
                    keys.verify_access(&unsigned, NOW),
                    Err(TokenError::AlgorithmNotAllowed),
                    "{header}"
                );
            }
        }
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        // Key confusion: the attacker knows the public key (it is in the JWKS) and signs an
        // HS256 token with it as the HMAC secret, naming the asymmetric kid.
        let forged_claims = with(good_claims(), "role", json!("admin"));
        for key in [TestKey::ed("asym"), TestKey::es("asym")] {
            let public = key.public_key();
            let with_hs =
                TokenKeys::new(settings(), Some(SECRET), vec![key.source()], None).unwrap();
            let without_hs = keys_with(&[&key], None);
            let jwk = without_hs.jwks()["keys"][0].clone();
            let secrets: Vec<Vec<u8>> = vec![
                public.clone(),
                jwk["x"].as_str().unwrap().as_bytes().to_vec(),
                serde_json::to_vec(&jwk).unwrap(),
            ];
            for secret in &secrets {
                let with_kid = craft(
                    &json!({"alg": "HS256", "typ": "JWT", "kid": "asym"}),
                    &forged_claims,
                    |m| hmac_sha256(secret, m),
                );
                let no_kid = craft(&hs_header(), &forged_claims, |m| hmac_sha256(secret, m));
                for keys in [&with_hs, &without_hs] {
                    assert_eq!(
                        keys.verify_access(&with_kid, NOW),
                        Err(TokenError::AlgorithmNotAllowed)
                    );
                }
                assert_eq!(
                    with_hs.verify_access(&no_kid, NOW),
                    Err(TokenError::BadSignature)
                );
                assert_eq!(
                    without_hs.verify_access(&no_kid, NOW),
                    Err(TokenError::UnknownKid)
                );
            }
        }
    }

    #[test]
    fn algorithms_other_than_the_keys_are_not_allowed() {
        let ed = TestKey::ed("ed");
        let es = TestKey::es("es");
        let keys = TokenKeys::new(
            settings(),
            Some(SECRET),
            vec![ed.source(), es.source()],
            None,
        )
        .unwrap();
        let cases = [
            // (alg, kid, signer) — each signed properly with some key, so only alg decides.
            ("RS256", Some("ed"), &ed),
            ("ES384", Some("es"), &es),
            ("PS256", Some("es"), &es),
            ("HS512", None, &ed),
            ("HS384", None, &ed),
            ("ES256", Some("ed"), &es),
            ("EdDSA", Some("es"), &ed),
            ("ES256", None, &es),
            ("EdDSA", None, &ed),
            ("hs256", None, &ed),
        ];
        for (alg, kid, signer) in cases {
            let mut header = json!({"alg": alg, "typ": "JWT"});
            if let Some(kid) = kid {
                header["kid"] = json!(kid);
            }
            let token = signer.craft(&header, &good_claims());
            assert_eq!(
                keys.verify_access(&token, NOW),
                Err(TokenError::AlgorithmNotAllowed),
                "{alg} {kid:?}"
            );
        }
    }

    #[test]
    fn kid_naming_no_key_is_unknown() {
        let ed = TestKey::ed("ed");
        let both = TokenKeys::new(settings(), Some(SECRET), vec![ed.source()], None).unwrap();
        let stray = ed.craft(&json!({"alg": "EdDSA", "kid": "nope"}), &good_claims());
        assert_eq!(both.verify_access(&stray, NOW), Err(TokenError::UnknownKid));

        // HS256 has no kid: a kid on an HS256 token never selects the secret.
        let hs_with_kid = hs(&json!({"alg": "HS256", "kid": "hs"}), &good_claims());
        assert_eq!(
            both.verify_access(&hs_with_kid, NOW),
            Err(TokenError::UnknownKid)
        );
        assert_eq!(
            hs_keys().verify_access(&hs_with_kid, NOW),
            Err(TokenError::UnknownKid)
        );

        // No kid and no HS256 secret: nothing to verify with.
        let asymmetric = keys_with(&[&ed], None);
        let no_kid = ed.craft(&json!({"alg": "EdDSA"}), &good_claims());
        assert_eq!(
            asymmetric.verify_access(&no_kid, NOW),
            Err(TokenError::UnknownKid)
        );
    }

    #[test]
    fn unsupported_header_members_are_refused() {
        let ed = TestKey::ed("ed");
        let both = TokenKeys::new(settings(), Some(SECRET), vec![ed.source()], None).unwrap();
        let jwk = both.jwks()["keys"][0].clone();
        let extras = [
            ("crit", json!(["exp"])),
            ("crit", json!([])),
            ("jwk", jwk),
            ("jku", json!("https://attacker.example/jwks.json")),
            ("x5u", json!("https://attacker.example/cert.pem")),
            ("x5c", json!(["MIIB"])),
            ("jku", Value::Null),
            ("typ", json!("at+jwt")),
            ("typ", json!("JWS")),
            ("typ", json!(1)),
        ];
        for (name, value) in extras {
            let mut ed_header = json!({"alg": "EdDSA", "typ": "JWT", "kid": "ed"});
            ed_header[name] = value.clone();
            let mut hs_header = hs_header();
            hs_header[name] = value;
            for token in [
                ed.craft(&ed_header, &good_claims()),
                hs(&hs_header, &good_claims()),
            ] {
                assert_eq!(
                    both.verify_access(&token, NOW),
                    Err(TokenError::UnsupportedHeader),
                    "{name}"
                );
            }
        }
        let lower_typ = hs(&json!({"alg": "HS256", "typ": "jwt"}), &good_claims());
        assert!(both.verify_access(&lower_typ, NOW).is_ok());
    }

    // Claims.

    #[test]
    fn wrong_issuer_audience_or_type_is_refused() {
        let keys = hs_keys();
        let cases = [
            (
                "iss",
                json!("https://evil.example"),
                TokenError::WrongIssuer,
            ),
            ("iss", json!(""), TokenError::WrongIssuer),
            ("aud", json!("other-api"), TokenError::WrongAudience),
            (
                "aud",
                json!(["other-api", "another"]),
                TokenError::WrongAudience,
            ),
            ("aud", json!([]), TokenError::WrongAudience),
            ("type", json!("refresh"), TokenError::WrongType),
            ("type", json!("verification"), TokenError::WrongType),
            ("type", json!("reset"), TokenError::WrongType),
            ("type", json!("Access"), TokenError::WrongType),
        ];
        for (name, value, expected) in cases {
            let token = hs(&hs_header(), &with(good_claims(), name, value.clone()));
            assert_eq!(
                keys.verify_access(&token, NOW),
                Err(expected),
                "{name}={value}"
            );
        }
    }

    #[test]
    fn audience_array_containing_ours_is_accepted() {
        let keys = hs_keys();
        let aud = json!(["other-api", AUDIENCE]);
        let token = hs(&hs_header(), &with(good_claims(), "aud", aud));
        assert_eq!(keys.verify_access(&token, NOW).unwrap().aud, AUDIENCE);
    }

    #[test]
    fn each_missing_claim_is_reported_by_name() {
        let keys = hs_keys();
        for name in REQUIRED_CLAIMS {
            for claims in [
                without(good_claims(), name),
                with(good_claims(), name, Value::Null),
            ] {
                let token = hs(&hs_header(), &claims);
                assert_eq!(
                    keys.verify_access(&token, NOW),
                    Err(TokenError::MissingClaim(name)),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn non_numeric_or_mistyped_claims_are_malformed() {
        let keys = hs_keys();
        let cases = [
            ("exp", json!("9999999999")),
            ("iat", json!("1700000000")),
            ("nbf", json!("1700000000")),
            ("exp", json!(9_999_999_999.5)),
            ("exp", json!(-1)),
            ("exp", json!(true)),
            ("nbf", json!({})),
            ("sub", json!(42)),
            ("email", json!(["a@b"])),
            ("iss", json!([ISSUER])),
            ("type", json!(["access"])),
            ("aud", json!(7)),
            ("aud", json!([AUDIENCE, 7])),
        ];
        for (name, value) in cases {
            let token = hs(&hs_header(), &with(good_claims(), name, value.clone()));
            assert_eq!(
                keys.verify_access(&token, NOW),
                Err(TokenError::Malformed),
                "{name}={value}"
            );
        }
    }

    #[test]
    fn a_claim_given_twice_is_malformed() {
        // Two `sub` members: which one a reader takes differs between JSON parsers, so a
        // signed token that says it twice is refused rather than read one way here and
        // another by the upstream or an audit tool.
        let keys = hs_keys();
        let good = serde_json::to_string(&good_claims()).unwrap();
        let twice = good.replacen('{', "{\"sub\":\"someone-else\",", 1);
        assert_ne!(twice, good);
        let sign = |m: &[u8]| hmac_sha256(SECRET, m);
        let token = craft_raw(
            &b64_json(&hs_header()),
            &URL_SAFE_NO_PAD.encode(twice),
            sign,
        );
        assert_eq!(keys.verify_access(&token, NOW), Err(TokenError::Malformed));
        // The same payload without the second member verifies, so the refusal is the repeat's.
        let once = craft_raw(&b64_json(&hs_header()), &URL_SAFE_NO_PAD.encode(good), sign);
        assert_eq!(keys.verify_access(&once, NOW).unwrap().sub, SUB);
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let keys = hs_keys();
        let (token, _) = issue(&keys);
        let parts: Vec<&str> = token.split('.').collect();
        let sign = |m: &[u8]| hmac_sha256(SECRET, m);
        let header = b64_json(&hs_header());
        let payload = b64_json(&good_claims());
        let cases = vec![
            String::new(),
            "abc".to_owned(),
            format!("{}.{}", parts[0], parts[1]),
            format!("{token}.extra"),
            format!(".{}.{}", parts[1], parts[2]),
            format!("{}..{}", parts[0], parts[2]),
            format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
            format!("{}.{}.a+b/", parts[0], parts[1]),
            craft_raw("!!!", &payload, sign),
            craft_raw(&URL_SAFE_NO_PAD.encode("not json"), &payload, sign),
            craft_raw(&URL_SAFE_NO_PAD.encode("[1,2]"), &payload, sign),
            // Padded base64url: a valid header apart from the padding.
            craft_raw(
                &URL_SAFE.encode("{\"alg\":\"HS256\",\"typ\":\"JWT\"}\n"),
                &payload,
                sign,
            ),
            craft_raw(&b64_json(&json!({"typ": "JWT"})), &payload, sign),
            craft_raw(&b64_json(&json!({"alg": 1})), &payload, sign),
            craft_raw(
                &b64_json(&json!({"alg": "HS256", "kid": 5})),
                &payload,
                sign,
            ),
            // Validly signed, but the payload is not a JSON object.
            craft_raw(&header, &URL_SAFE_NO_PAD.encode("not json"), sign),
            craft_raw(&header, &URL_SAFE_NO_PAD.encode("[1,2,3]"), sign),
            craft_raw(&header, &URL_SAFE_NO_PAD.encode("\"claims\""), sign),
            craft_raw(&header, "!!!", sign),
            format!("{token}{}", "A".repeat(MAX_TOKEN_LEN)),
        ];
        for bad in cases {
            assert_eq!(
                keys.verify_access(&bad, NOW),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
    }

    // JWKS.

    /// What a relying party would use: signature checks only (the claims are compared below).
    fn signature_only(alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::new();
        validation
    }

    #[test]
    fn jwks_publishes_the_eddsa_key() {
        let ed = TestKey::ed("ed-1");
        let keys = keys_with(&[&ed], None);
        let jwks = keys.jwks();
        let jwk = &jwks["keys"][0];
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
        let x = jwk["x"].as_str().unwrap();
        assert_eq!(
            *jwk,
            json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "ed-1", "alg": "EdDSA", "use": "sig"})
        );
        assert_eq!(URL_SAFE_NO_PAD.decode(x).unwrap(), ed.public_key());

        // A relying party building its key from the JWKS alone verifies our token.
        let (token, claims) = issue(&keys);
        let published = DecodingKey::from_ed_components(x).unwrap();
        let data = jsonwebtoken::decode::<AccessClaims>(
            &token,
            &published,
            &signature_only(Algorithm::EdDSA),
        )
        .unwrap();
        assert_eq!(data.claims, claims);
        assert_eq!(data.header.kid.as_deref(), Some("ed-1"));
    }

    #[test]
    fn jwks_publishes_the_es256_key() {
        let es = TestKey::es("ec-1");
        let keys = keys_with(&[&es], None);
        let jwks = keys.jwks();
        let jwk = &jwks["keys"][0];
        let (x, y) = (jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap());
        assert_eq!(
            *jwk,
            json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": "ec-1", "alg": "ES256", "use": "sig"})
        );
        let mut point = vec![0x04];
        point.extend(URL_SAFE_NO_PAD.decode(x).unwrap());
        point.extend(URL_SAFE_NO_PAD.decode(y).unwrap());
        assert_eq!(point, es.public_key());

        let (token, claims) = issue(&keys);
        let published = DecodingKey::from_ec_components(x, y).unwrap();
        let data = jsonwebtoken::decode::<AccessClaims>(
            &token,
            &published,
            &signature_only(Algorithm::ES256),
        )
        .unwrap();
        assert_eq!(data.claims, claims);
    }

    #[test]
    fn derived_keys_agree_across_instances_and_differ_by_purpose_and_secret() {
        let mac = |keys: &TokenKeys, purpose: &[u8]| {
            hmac::sign(&keys.derive_key(purpose), b"message")
                .as_ref()
                .to_vec()
        };
        let one = hs_keys();
        let another_instance = hs_keys();
        assert_eq!(mac(&one, b"forms"), mac(&another_instance, b"forms"));
        assert_ne!(mac(&one, b"forms"), mac(&one, b"other"));
        let other_secret = TokenKeys::new(settings(), Some(&[9u8; 32]), vec![], None).unwrap();
        assert_ne!(mac(&one, b"forms"), mac(&other_secret, b"forms"));
        // Never the HS256 key itself.
        assert_ne!(mac(&one, b"forms"), hmac_sha256(SECRET, b"message"));
        // Without a secret, the active private key is the root, the same for each instance.
        let ed = TestKey::ed("ed-1");
        let asymmetric = TokenKeys::new(settings(), None, vec![ed.source()], None).unwrap();
        let again = TokenKeys::new(settings(), None, vec![ed.source()], None).unwrap();
        assert_eq!(mac(&asymmetric, b"forms"), mac(&again, b"forms"));
        assert_ne!(mac(&asymmetric, b"forms"), mac(&one, b"forms"));
    }

    #[test]
    fn jwks_lists_every_verifying_key_and_never_the_secret() {
        let (a, b) = (TestKey::ed("a"), TestKey::es("b"));
        let keys = TokenKeys::new(
            settings(),
            Some(SECRET),
            vec![a.source(), b.source()],
            Some("b"),
        )
        .unwrap();
        let jwks = keys.jwks();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, ["a", "b"]);
        let text = jwks.to_string();
        assert!(!text.contains("oct"));
        assert!(!text.contains(&URL_SAFE_NO_PAD.encode(SECRET)));
        assert!(!text.contains("\"d\""));
    }

    #[test]
    fn jwks_is_empty_with_only_hs256() {
        assert_eq!(hs_keys().jwks(), json!({"keys": []}));
    }

    // Opaque tokens.

    #[test]
    fn opaque_tokens_are_43_chars_random_and_hashed() {
        let a = OpaqueToken::generate();
        let b = OpaqueToken::generate();
        assert_eq!(a.token.len(), 43);
        assert!(is_base64url(&a.token));
        assert_eq!(URL_SAFE_NO_PAD.decode(&a.token).unwrap().len(), 32);
        assert_ne!(a.token, b.token);
        assert_eq!(a.hash, hash_opaque(&a.token));
        assert_ne!(a.hash, b.hash);
        assert!(!format!("{a:?}").contains(&a.token));
    }

    #[test]
    fn hash_opaque_is_sha256_of_the_text() {
        // FIPS 180-2 test vector for "abc".
        let expected: [u8; 32] = [
            0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
            0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61,
            0xf2, 0x00, 0x15, 0xad,
        ];
        assert_eq!(hash_opaque("abc"), expected);
        assert_eq!(hash_opaque("abc"), hash_opaque("abc"));
        assert_ne!(hash_opaque("abc"), hash_opaque("abd"));
    }

    // Debug output.

    #[test]
    fn debug_output_holds_no_key_material() {
        let ed = TestKey::ed("ed-debug");
        let source = ed.source();
        let pem_text = String::from_utf8(source.private_key_pem.clone()).unwrap();
        let pem_body: Vec<&str> = pem_text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let keys = TokenKeys::new(settings(), Some(SECRET), vec![source], None).unwrap();

        let debug = format!("{keys:?} {:?}", ed.source());
        assert!(debug.contains("ed-debug"), "{debug}");
        assert!(debug.contains("EdDsa"), "{debug}");
        let secret_text = std::str::from_utf8(SECRET).unwrap();
        assert!(!debug.contains(secret_text));
        assert!(!debug.contains(&format!("{:?}", &SECRET[..8])));
        assert!(!debug.contains(&format!("{:?}", &ed.pkcs8[..8])));
        for line in pem_body {
            assert!(!debug.contains(line));
        }
    }
}
