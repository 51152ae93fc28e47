//! The identity side as operators set it up: migrations (twice at once), asymmetric signing
//! keys published as JWKS, and rehashing when the Argon2 parameters change.

use std::sync::Arc;

use base64::Engine;

use crate::harness::identity::{sql, PASSWORD};
use crate::harness::{isolated_database, temp_dir, TestGateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_migrating_at_once_apply_each_migration_once() {
    let url = isolated_database("migrate_race").await;
    // The helper migrated it already; a second database starts empty for this test.
    let fresh = url.replace("migrate_race", "migrate_race_empty");
    let (client, connection) = tokio_postgres::connect(
        &format!("{}/postgres", crate::harness::POSTGRES),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let name = fresh.rsplit('/').next().unwrap();
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();

    let stores: Vec<_> = (0..4)
        .map(|_| {
            portcullis::store::Store::connect(&fresh, 2, std::time::Duration::from_secs(5)).unwrap()
        })
        .collect();
    let runs: Vec<_> = stores
        .into_iter()
        .map(|store| {
            tokio::spawn(async move { store.migrate().await.map(|applied| applied.len()) })
        })
        .collect();
    let mut applied = 0;
    for run in runs {
        applied += run
            .await
            .unwrap()
            .expect("every instance's migrate succeeds");
    }
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count();
    assert_eq!(
        applied, migrations,
        "each migration was applied by exactly one instance"
    );
    let (check, connection) = tokio_postgres::connect(&fresh, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let count: i64 = check
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count as usize, migrations);
}

fn pem(label: &str, der: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[tokio::test]
async fn asymmetric_keys_sign_with_a_kid_and_are_published() {
    let dir = temp_dir("keys");
    let rng = ring::rand::SystemRandom::new();
    let ed = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ec = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .unwrap();
    std::fs::write(dir.join("ed.pem"), pem("PRIVATE KEY", ed.as_ref())).unwrap();
    std::fs::write(dir.join("ec.pem"), pem("PRIVATE KEY", ec.as_ref())).unwrap();
    let keys_yaml = format!(
        "[{{kid: ed-2026, algorithm: EdDSA, private_key_path: {}}}, {{kid: ec-2025, algorithm: ES256, private_key_path: {}}}]",
        dir.join("ed.pem").display(),
        dir.join("ec.pem").display()
    );
    let keys: Vec<portcullis::config::SigningKeyConfig> =
        serde_norway::from_str(&keys_yaml).unwrap();
    let gateway = TestGateway::start_with(|config| {
        config.tokens.hs256_secret = None;
        config.tokens.signing_keys = keys;
        config.tokens.active_kid = Some("ed-2026".into());
    })
    .await;

    let jwks = gateway.get("/.well-known/jwks.json").await.json();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids.len(), 2, "{jwks}");
    assert!(kids.contains(&"ed-2026") && kids.contains(&"ec-2025"));
    assert!(
        !jwks.to_string().contains("\"d\""),
        "no private key material is published"
    );

    let account = gateway.signup("eddsa").await;
    let tokens = gateway.tokens(&account).await;
    let header = tokens.access.split('.').next().unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["kid"], "ed-2026");
    assert_eq!(
        gateway
            .call("GET", "/auth/me", None, Some(&tokens.access))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_hash_made_with_older_parameters_is_replaced_at_the_next_login() {
    let cheap = TestGateway::start().await;
    let account = cheap.signup("rehash").await;
    let before: String = sql(&format!(
        "SELECT password_hash FROM users WHERE id = '{}'",
        account.id
    ))
    .await[0]
        .get(0);
    assert!(before.contains("m=1024,t=1,p=1"), "{before}");

    let stronger = TestGateway::start_with(|config| {
        config.password.argon2.memory_kib = 2048;
        config.password.argon2.iterations = 2;
    })
    .await;
    assert_eq!(stronger.login(&account.email, PASSWORD).await.status, 200);
    let after: String = sql(&format!(
        "SELECT password_hash FROM users WHERE id = '{}'",
        account.id
    ))
    .await[0]
        .get(0);
    assert!(
        after.starts_with("$argon2id$v=19$m=2048,t=2,p=1$"),
        "{after}"
    );
    assert_eq!(
        stronger.login(&account.email, PASSWORD).await.status,
        200,
        "the new hash verifies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_logins_does_not_stop_forwarding() {
    let gateway = Arc::new(
        TestGateway::start_with(|config| config.password.argon2 = Default::default()).await,
    );
    let account = gateway.signup("burst").await;
    let flood: Vec<_> = (0..16)
        .map(|_| {
            let gateway = gateway.clone();
            let email = account.email.clone();
            tokio::spawn(async move { gateway.login(&email, PASSWORD).await.status.as_u16() })
        })
        .collect();
    // Forwarded requests are answered while the hashes run on their own bounded threads.
    for _ in 0..10 {
        assert_eq!(gateway.get("/app").await.status, 200);
    }
    for login in flood {
        assert_eq!(login.await.unwrap(), 200);
    }
}
