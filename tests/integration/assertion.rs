//! The signed identity assertion (contract 8) through the real listener and the recording
//! upstream, verified as an upstream would verify it: with an independent JWT library
//! (PyJWT, `tests/python/verify_assertion.py`) against the gateway's `/.well-known/jwks.json`,
//! across a key rotation.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use portcullis::config::{Config, SigningKeyConfig};
use serde_json::Value;

use crate::harness::identity::{token_claims, token_header, Tokens};
use crate::harness::{temp_dir, test_python, Client, TestGateway};

/// A private key file of the given algorithm (`EdDSA` or `ES256`), and its config entry.
fn signing_key(dir: &Path, kid: &str, algorithm: &str) -> SigningKeyConfig {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = match algorithm {
        "EdDSA" => ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .unwrap()
            .as_ref()
            .to_vec(),
        _ => ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap()
        .as_ref()
        .to_vec(),
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(pkcs8);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    let path = dir.join(format!("{kid}.pem"));
    std::fs::write(
        &path,
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        ),
    )
    .unwrap();
    serde_norway::from_str(&format!(
        "{{kid: {kid}, algorithm: {algorithm}, private_key_path: {}}}",
        path.display()
    ))
    .unwrap()
}

/// A gateway signing assertions with `keys`, the last of them active.
async fn gateway_with(keys: &[SigningKeyConfig]) -> TestGateway {
    let keys = keys.to_vec();
    TestGateway::start_with(move |config: &mut Config| {
        config.tokens.hs256_secret = None;
        config.tokens.active_kid = keys.last().map(|key| key.kid.clone());
        config.tokens.signing_keys = keys;
        config.identity.assertion = true;
    })
    .await
}

/// The assertion the upstream saw on a signed-in request to `path`, sent on `client`'s
/// connection (a connection stays on one worker, and each worker keeps its own assertions).
async fn assertion_for(
    gateway: &TestGateway,
    client: &mut Client,
    tokens: &Tokens,
    path: &str,
) -> String {
    let request = client
        .request("GET", path)
        .header("authorization", format!("Bearer {}", tokens.access))
        .body(crate::harness::empty())
        .unwrap();
    let response = client.send_read(request).await;
    assert_eq!(response.status, 200, "{response:?}");
    let seen = gateway.upstream.last_seen();
    let values: Vec<_> = seen.headers.get_all("x-auth-assertion").iter().collect();
    assert_eq!(values.len(), 1, "exactly one assertion: {values:?}");
    values[0].to_str().unwrap().to_string()
}

/// What PyJWT says of `token` against the JWKS `gateway` publishes: the claims, or why not.
async fn verify(gateway: &TestGateway, token: &str, audience: &str) -> Result<Value, String> {
    let jwks = gateway.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.status, 200);
    verify_with(&jwks.json(), token, audience)
}

fn verify_with(jwks: &Value, token: &str, audience: &str) -> Result<Value, String> {
    let dir = temp_dir("assertion");
    let jwks_file: PathBuf = dir.join("jwks.json");
    std::fs::write(&jwks_file, jwks.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/verify_assertion.py");
    let output = Command::new(test_python())
        .arg(script)
        .arg(&jwks_file)
        .arg(token)
        .arg(audience)
        .arg("portcullis")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if output.status.success() {
        Ok(serde_json::from_str(&stdout).unwrap())
    } else {
        assert_eq!(
            output.status.code(),
            Some(1),
            "the verifier refused rather than failed: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Err(stdout)
    }
}

#[tokio::test]
async fn signed_in_requests_carry_an_assertion_that_verifies_with_the_jwks() {
    let dir = temp_dir("assertion-keys");
    let gateway = gateway_with(&[signing_key(&dir, "ed-1", "EdDSA")]).await;
    let (account, tokens) = gateway.account_with_role("assertion", "manager").await;

    // A client's own assertion, in any spelling, never reaches the upstream.
    let mut client = gateway.h1().await;
    let request = client
        .request("GET", "/dashboard")
        .header("authorization", format!("Bearer {}", tokens.access))
        .header("x-auth-assertion", "forged")
        .header("X_Auth_Assertion", "forged")
        .body(crate::harness::empty())
        .unwrap();
    assert_eq!(client.send_read(request).await.status, 200);
    let seen = gateway.upstream.last_seen();
    let values: Vec<_> = seen.headers.get_all("x-auth-assertion").iter().collect();
    assert_eq!(values.len(), 1, "{values:?}");
    assert!(!seen.headers.iter().any(|(_, value)| value == "forged"));
    let assertion = values[0].to_str().unwrap().to_string();
    let session_id = seen.headers["x-auth-session-id"]
        .to_str()
        .unwrap()
        .to_string();

    assert_eq!(token_header(&assertion)["kid"], "ed-1");
    assert_eq!(token_header(&assertion)["alg"], "EdDSA");
    let claims = verify(&gateway, &assertion, "app").await.unwrap();
    assert_eq!(claims["iss"], "portcullis");
    assert_eq!(claims["aud"], "app", "the audience is the upstream's name");
    assert_eq!(claims["sub"], account.id.as_str());
    assert_eq!(claims["email"], account.email.as_str());
    assert_eq!(claims["role"], "manager");
    assert_eq!(claims["sid"], session_id.as_str());
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert!(iat <= gateway.clock.unix_now() && iat + 5 > gateway.clock.unix_now());
    assert_eq!(exp - iat, 60, "a minute by default");
    // The verifier really checks: another audience, or a changed byte, is refused.
    let refused = verify(&gateway, &assertion, "other-app").await.unwrap_err();
    assert!(refused.contains("InvalidAudienceError"), "{refused}");
    let mut tampered = assertion.clone().into_bytes();
    let at = assertion.rfind('.').unwrap() + 3;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let refused = verify(&gateway, &tampered, "app").await.unwrap_err();
    assert!(refused.contains("InvalidSignatureError"), "{refused}");
    // And the gateway never takes an assertion for an access token.
    let as_bearer = gateway
        .call("GET", "/auth/me", None, Some(&assertion))
        .await;
    assert_eq!(as_bearer.status, 401);

    // Anonymous requests carry none (the open policy lets them through).
    let anonymous = gateway.call("GET", "/dashboard", None, None).await;
    assert_eq!(anonymous.status, 200);
    let seen = gateway.upstream.last_seen();
    assert!(seen.headers.get("x-auth-assertion").is_none());
    assert!(seen.headers.get("x-auth-user-id").is_none());
    // Nor does a request whose token is invalid.
    gateway
        .call("GET", "/dashboard", None, Some("not-a-token"))
        .await;
    assert!(gateway
        .upstream
        .last_seen()
        .headers
        .get("x-auth-assertion")
        .is_none());
}

#[tokio::test]
async fn one_signature_serves_a_caller_until_half_its_life_is_gone() {
    let dir = temp_dir("assertion-keys");
    let gateway = gateway_with(&[signing_key(&dir, "es-1", "ES256")]).await;
    let (_, tokens) = gateway.account_with_role("assertion-cache", "user").await;
    let (_, other) = gateway.account_with_role("assertion-cache-2", "user").await;

    let mut client = gateway.h1().await;
    let first = assertion_for(&gateway, &mut client, &tokens, "/a").await;
    let claims = verify(&gateway, &first, "app").await.unwrap();
    let issued = claims["iat"].as_u64().unwrap();
    assert_eq!(claims["exp"].as_u64().unwrap(), issued + 60);
    for path in ["/b", "/c", "/d"] {
        assert_eq!(
            assertion_for(&gateway, &mut client, &tokens, path).await,
            first,
            "the same caller reuses its assertion"
        );
    }
    // Another caller has one of its own.
    let others = assertion_for(&gateway, &mut client, &other, "/a").await;
    assert_ne!(others, first);
    assert_ne!(
        verify(&gateway, &others, "app").await.unwrap()["sub"],
        claims["sub"]
    );

    // 29 s after it was signed (30 at most, should a second tick during the request), the
    // kept one has at least half of its minute left: still handed out.
    let to = |at: u64| Duration::from_secs(at.saturating_sub(gateway.clock.unix_now()));
    gateway.clock.advance(to(issued + 29));
    assert_eq!(
        assertion_for(&gateway, &mut client, &tokens, "/e").await,
        first
    );
    // 31 s after, less than half is left: a new one, valid a full minute from now.
    gateway.clock.advance(to(issued + 31));
    let renewed = assertion_for(&gateway, &mut client, &tokens, "/f").await;
    assert_ne!(renewed, first);
    // The gateway's clock is ahead of the system's now, which PyJWT would go by: the times
    // are read straight from the payload (the signature checks are the other tests').
    let claims = token_claims(&renewed);
    let reissued = claims["iat"].as_u64().unwrap();
    assert!(reissued >= issued + 31, "{reissued} {issued}");
    assert_eq!(claims["exp"].as_u64().unwrap(), reissued + 60);
    assert_eq!(
        assertion_for(&gateway, &mut client, &tokens, "/g").await,
        renewed
    );
}

#[tokio::test]
async fn after_a_key_rotation_old_and_new_assertions_verify_while_both_keys_are_published() {
    let dir = temp_dir("assertion-keys");
    let old_key = signing_key(&dir, "2026-01", "EdDSA");
    let new_key = signing_key(&dir, "2026-02", "ES256");

    // Before the rotation: the old key signs.
    let before = gateway_with(std::slice::from_ref(&old_key)).await;
    let (account, tokens) = before.account_with_role("rotation", "user").await;
    let old_assertion = assertion_for(&before, &mut before.h1().await, &tokens, "/before").await;
    assert_eq!(token_header(&old_assertion)["kid"], "2026-01");

    // The rotation: the new key is active, the old one still published (and verifying).
    let during = gateway_with(&[old_key.clone(), new_key.clone()]).await;
    let tokens = during.tokens(&account).await;
    let new_assertion = assertion_for(&during, &mut during.h1().await, &tokens, "/during").await;
    assert_eq!(token_header(&new_assertion)["kid"], "2026-02");
    assert_eq!(token_header(&new_assertion)["alg"], "ES256");
    let claims = verify(&during, &new_assertion, "app").await.unwrap();
    assert_eq!(claims["sub"], account.id.as_str());
    let claims = verify(&during, &old_assertion, "app").await.unwrap();
    assert_eq!(claims["sub"], account.id.as_str());

    // Once the old key is retired (no longer published), what it signed is refused.
    let after = gateway_with(std::slice::from_ref(&new_key)).await;
    let refused = verify(&after, &old_assertion, "app").await.unwrap_err();
    assert!(refused.contains("no published key"), "{refused}");
    assert!(verify(&after, &new_assertion, "app").await.is_ok());
}

#[tokio::test]
async fn assertions_with_only_an_hs256_secret_are_refused_at_startup() {
    let mut config = crate::harness::base_config("http://127.0.0.1:9", 25);
    config.identity.assertion = true;
    let error = config.validate().unwrap_err();
    assert_eq!(error.key, "identity.assertion");
    // A configuration built in code that skipped validation is refused when the gateway is
    // assembled, before anything listens.
    let error = match portcullis::app::App::build(&config) {
        Ok(_) => panic!("a gateway was built to sign assertions with HS256"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("identity.assertion"), "{error}");
}

#[tokio::test]
async fn the_audience_is_the_upstream_the_rule_sends_the_request_to() {
    let dir = temp_dir("assertion-keys");
    let key = signing_key(&dir, "ed-aud", "EdDSA");
    let reports = crate::harness::Upstream::start().await;
    let reports_url: http::Uri = reports.url().parse().unwrap();
    let policy = "version: 1
roles: [user, admin]
rules:
  - name: reports
    paths: [\"/reports/**\"]
    allow: authenticated
    upstream: reports
  - name: everything else
    paths: [\"/**\"]
    allow: authenticated
";
    let (gateway, _) = TestGateway::with_policy(policy, move |config| {
        config.tokens.hs256_secret = None;
        config.tokens.active_kid = Some(key.kid.clone());
        config.tokens.signing_keys = vec![key];
        config.identity.assertion = true;
        config
            .upstreams
            .push(portcullis::config::UpstreamConfig::new(
                "reports",
                reports_url,
            ));
    })
    .await;
    let (_, tokens) = gateway.account_with_role("assertion-aud", "user").await;
    let mut client = gateway.h1().await;
    let to_app = assertion_for(&gateway, &mut client, &tokens, "/home").await;
    let request = client
        .request("GET", "/reports/q3")
        .header("authorization", format!("Bearer {}", tokens.access))
        .body(crate::harness::empty())
        .unwrap();
    let response = client.send_read(request).await;
    assert_eq!(response.status, 200);
    let to_reports = reports.last_seen().headers["x-auth-assertion"]
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(to_app, to_reports, "one assertion per upstream");
    assert_eq!(
        verify(&gateway, &to_app, "app").await.unwrap()["aud"],
        "app"
    );
    assert_eq!(
        verify(&gateway, &to_reports, "reports").await.unwrap()["aud"],
        "reports"
    );
    // Each upstream's assertion is refused by the other.
    assert!(verify(&gateway, &to_reports, "app").await.is_err());
}

#[tokio::test]
async fn a_forward_auth_200_carries_the_assertion_a_forwarded_request_would() {
    let dir = temp_dir("assertion-keys");
    let key = signing_key(&dir, "ed-fwd", "EdDSA");
    let gateway = TestGateway::start_with(move |config: &mut Config| {
        config.tokens.hs256_secret = None;
        config.tokens.active_kid = Some(key.kid.clone());
        config.tokens.signing_keys = vec![key];
        config.identity.assertion = true;
        config.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let (account, tokens) = gateway.account_with_role("assertion-fwd", "user").await;
    let mut client = gateway.h1().await;
    let ask = |client: &Client, bearer: Option<&str>| {
        let mut request = client
            .request("GET", "/auth/forward")
            .header("x-original-method", "GET")
            .header("x-original-uri", "/app/x")
            .header("x-auth-assertion", "forged");
        if let Some(bearer) = bearer {
            request = request.header("authorization", format!("Bearer {bearer}"));
        }
        request.body(crate::harness::empty()).unwrap()
    };
    let request = ask(&client, Some(&tokens.access));
    let allowed = client.send_read(request).await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    let assertion = allowed.header("x-auth-assertion").unwrap().to_string();
    assert_ne!(assertion, "forged");
    let claims = verify(&gateway, &assertion, "app").await.unwrap();
    assert_eq!(claims["sub"], account.id.as_str());
    assert_eq!(claims["role"], "user");
    // The same caller's forwarded request on this connection gets the very same assertion.
    assert_eq!(
        assertion_for(&gateway, &mut client, &tokens, "/app/x").await,
        assertion
    );
    // An anonymous caller's 200 carries none, and never the one the client sent.
    let request = ask(&client, None);
    let anonymous = client.send_read(request).await;
    assert_eq!(anonymous.status, 200, "{anonymous:?}");
    assert_eq!(anonymous.header("x-auth-assertion"), None);
    assert_eq!(anonymous.header("x-auth-user-id"), None);
}
