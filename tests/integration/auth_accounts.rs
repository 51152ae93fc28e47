//! Registration, the password rules, email verification over real SMTP, and the races.

use serde_json::json;

use crate::harness::identity::{unique_email, MAIL_WAIT, PASSWORD};
use crate::harness::TestGateway;

#[tokio::test]
async fn register_returns_the_user_object_and_never_a_password() {
    let gateway = TestGateway::start().await;
    let email = unique_email("Register");
    let response = gateway
        .register(&format!("  {}  ", email.to_uppercase()), PASSWORD)
        .await;
    assert_eq!(response.status, 201, "{response:?}");
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let user = response.json();
    let keys: Vec<&str> = user
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "created_at",
        "email",
        "id",
        "is_active",
        "is_verified",
        "last_login",
        "name",
        "role",
    ];
    expected.sort();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(sorted, expected);
    assert_eq!(user["email"], email.to_lowercase(), "stored normalised");
    assert_eq!(user["role"], "user");
    assert_eq!(user["is_verified"], false);
    assert_eq!(user["last_login"], serde_json::Value::Null);
    let text = response.body.to_ascii_lowercase();
    assert!(
        !String::from_utf8_lossy(&text).contains("password"),
        "{response:?}"
    );
    assert!(!String::from_utf8_lossy(&text).contains("argon2"));

    let again = gateway.register(&email.to_lowercase(), PASSWORD).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.detail(), "Email already registered");
}

#[tokio::test]
async fn password_rules_and_input_validation_answer_422_with_the_contract_messages() {
    let gateway = TestGateway::start().await;
    let email = unique_email("rules");
    let cases = [
        ("weak", "Password must be at least 8 characters"),
        ("alllowercase1", "Password must contain uppercase letter"),
        ("ALLUPPERCASE1", "Password must contain lowercase letter"),
        ("NoDigitsHere", "Password must contain a number"),
        ("Password1", "Password is too common"),
    ];
    for (password, message) in cases {
        let response = gateway.register(&email, password).await;
        assert_eq!(response.status, 422, "{password}: {response:?}");
        assert_eq!(response.detail(), message, "{password}");
    }
    let response = gateway.register("not-an-email", PASSWORD).await;
    assert_eq!(response.status, 422);
    assert_eq!(response.detail(), "Invalid email address");

    let missing = gateway
        .post("/auth/register", json!({ "email": email }))
        .await;
    assert_eq!(missing.status, 422);
    assert!(missing.detail().contains("password"));

    let mut client = gateway.h1().await;
    let request = client
        .request("POST", "/auth/register")
        .header("content-type", "application/json")
        .body(crate::harness::full("{\"email\": "))
        .unwrap();
    let malformed = client.send_read(request).await;
    assert_eq!(malformed.status, 400);
    assert_eq!(malformed.detail(), "Malformed JSON");

    // Nothing was created by any of the refused requests.
    let rows =
        crate::harness::identity::sql(&format!("SELECT 1 FROM users WHERE email = '{email}'"))
            .await;
    assert!(rows.is_empty());
}

#[tokio::test]
async fn the_verification_email_arrives_over_smtp_and_verifies_once() {
    let gateway = TestGateway::start().await;
    let email = unique_email("verify");
    assert_eq!(gateway.register(&email, PASSWORD).await.status, 201);
    let login = gateway.login(&email, PASSWORD).await;
    assert_eq!(login.status, 401);
    assert_eq!(login.detail(), "Please verify your email first");

    let mail = gateway.smtp.wait_for(&email, MAIL_WAIT).await;
    assert_eq!(mail.from, "no-reply@localhost", "sent from smtp.from");
    let body = mail.body();
    assert!(
        body.contains("https://gateway.test:8443/auth/verify-email?token="),
        "links use public_url: {body}"
    );
    let token = mail.token().unwrap();
    assert!(token.len() >= 43, "at least 256 bits");

    let verified = gateway
        .post("/auth/verify-email", json!({ "token": token }))
        .await;
    assert_eq!(verified.status, 200, "{verified:?}");
    assert_eq!(verified.json()["is_verified"], true);
    assert_eq!(verified.header("referrer-policy"), Some("no-referrer"));
    let again = gateway
        .post("/auth/verify-email", json!({ "token": token }))
        .await;
    assert_eq!(again.status, 400);
    assert_eq!(gateway.login(&email, PASSWORD).await.status, 200);

    let token_rows = crate::harness::identity::sql(&format!(
        "SELECT 1 FROM email_tokens WHERE token_hash = '\\x{}'::bytea",
        token
            .bytes()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    ))
    .await;
    assert!(
        token_rows.is_empty(),
        "the token itself is never stored, only its hash"
    );
}

#[tokio::test]
async fn resend_verification_is_202_whether_or_not_the_email_exists() {
    let gateway = TestGateway::start().await;
    let unknown = gateway
        .post(
            "/auth/resend-verification",
            json!({ "email": unique_email("nobody") }),
        )
        .await;
    assert_eq!(unknown.status, 202);
    let email = unique_email("resend");
    assert_eq!(gateway.register(&email, PASSWORD).await.status, 201);
    let first = gateway
        .smtp
        .wait_for(&email, MAIL_WAIT)
        .await
        .token()
        .unwrap();
    let known = gateway
        .post("/auth/resend-verification", json!({ "email": email }))
        .await;
    assert_eq!(known.status, 202);
    let second = gateway
        .smtp
        .wait_for(&email, MAIL_WAIT)
        .await
        .token()
        .unwrap();
    assert_ne!(first, second);
    // Only the newest link works.
    assert_eq!(
        gateway
            .post("/auth/verify-email", json!({ "token": first }))
            .await
            .status,
        400
    );
    assert_eq!(
        gateway
            .post("/auth/verify-email", json!({ "token": second }))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_registrations_of_one_email_create_exactly_one_user() {
    let gateway = std::sync::Arc::new(TestGateway::start().await);
    let email = unique_email("race");
    let attempts: Vec<_> = (0..20)
        .map(|_| {
            let gateway = gateway.clone();
            let email = email.clone();
            tokio::spawn(async move { gateway.register(&email, PASSWORD).await.status.as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for attempt in attempts {
        statuses.push(attempt.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|status| **status == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|status| **status == 409).count(),
        19,
        "{statuses:?}"
    );
}

/// The outage test has a database (and so an outbox) of its own: with the run's shared
/// outbox, another test's gateway could deliver this message while this SMTP server is down.
#[tokio::test]
async fn mail_survives_an_smtp_outage() {
    let smtp = crate::harness::SmtpServer::start().await;
    let port = smtp.addr;
    smtp.stop();
    let database = crate::harness::isolated_database("smtp_outage").await;
    let upstream = crate::harness::Upstream::start().await;
    let mut config = crate::harness::base_config(&upstream.url(), port.port());
    config.database.url = portcullis::config::Secret::new(database.clone());
    let gateway = TestGateway::start_config(config, upstream).await;
    let email = unique_email("outage");
    assert_eq!(
        gateway.register(&email, PASSWORD).await.status,
        201,
        "registration does not wait for SMTP"
    );

    // The worker has tried and failed at least once; the message is still queued.
    let (client, connection) = tokio_postgres::connect(&database, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut attempted = false;
    for _ in 0..200 {
        let row = client
            .query_opt(
                "SELECT attempts, sent_at IS NULL FROM mail_outbox WHERE recipient = $1",
                &[&email],
            )
            .await
            .unwrap();
        if row.is_some_and(|row| row.get::<_, i32>(0) >= 1 && row.get::<_, bool>(1)) {
            attempted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(attempted, "a failed attempt was recorded and the mail kept");

    let revived = crate::harness::SmtpServer::start_on(port).await.unwrap();
    let mail = revived.wait_for(&email, MAIL_WAIT).await;
    assert!(mail.token().is_some());
    // The worker marks the row sent right after the server accepted it.
    let mut marked = false;
    for _ in 0..200 {
        let sent: i64 = client
            .query_one(
                "SELECT count(*) FROM mail_outbox WHERE recipient = $1 AND sent_at IS NOT NULL",
                &[&email],
            )
            .await
            .unwrap()
            .get(0);
        if sent == 1 {
            marked = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(marked, "the outbox row is marked sent");
    assert_eq!(revived.received().len(), 1, "delivered exactly once");
}

#[tokio::test]
async fn control_characters_and_nul_in_any_field_are_422_and_change_nothing() {
    let gateway = TestGateway::start().await;
    let email = unique_email("nul");
    let nul_email = format!("{email}\u{0}");
    let cases = [
        (
            "/auth/register",
            json!({ "email": nul_email, "password": PASSWORD, "name": "N" }),
        ),
        (
            "/auth/register",
            json!({ "email": email, "password": PASSWORD, "name": "a\nFAKE LOG LINE" }),
        ),
        (
            "/auth/register",
            json!({ "email": email, "password": format!("{PASSWORD}\u{0}"), "name": "N" }),
        ),
        ("/auth/resend-verification", json!({ "email": nul_email })),
        ("/auth/password-reset", json!({ "email": nul_email })),
        (
            "/auth/login",
            json!({ "email": nul_email, "password": PASSWORD }),
        ),
        ("/auth/verify-email", json!({ "token": "abc\u{0}" })),
        ("/auth/refresh", json!({ "refresh_token": "abc\u{7}" })),
        (
            "/auth/password-reset/confirm",
            json!({ "token": "t\u{0}", "new_password": PASSWORD }),
        ),
        (
            "/auth/register",
            json!({ "email": email, "password": PASSWORD, "name": "x".repeat(5000) }),
        ),
    ];
    let mut wrong = Vec::new();
    for (path, body) in cases {
        let response = gateway.post(path, body.clone()).await;
        let detail = serde_json::from_slice::<serde_json::Value>(&response.body)
            .ok()
            .and_then(|body| body["detail"].as_str().map(str::to_owned))
            .unwrap_or_default();
        if response.status != 422
            || !(detail.contains("control characters") || detail.contains("too long"))
        {
            wrong.push(format!("{path} {body}: {} {detail}", response.status));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let rows = crate::harness::identity::sql(&format!(
        "SELECT 1 FROM users WHERE email LIKE '{}%'",
        email.trim_end_matches("@example.com")
    ))
    .await;
    assert!(rows.is_empty(), "nothing was created");
}

#[tokio::test]
async fn a_listed_password_with_the_usual_decorations_is_too_common() {
    let gateway = TestGateway::start().await;
    let email = unique_email("decorated");
    for password in ["Password123!", "P@ssw0rd2024", "!Qwerty123"] {
        let response = gateway.register(&email, password).await;
        assert_eq!(response.status, 422, "{password}: {response:?}");
        assert_eq!(response.detail(), "Password is too common", "{password}");
    }
}

#[tokio::test]
async fn an_unverified_account_whose_link_lapsed_gives_its_address_back() {
    let gateway = TestGateway::start().await;
    let email = unique_email("squat");
    let first = gateway.register(&email, PASSWORD).await;
    assert_eq!(first.status, 201);
    // While the verification link is valid, the address is taken.
    assert_eq!(gateway.register(&email, PASSWORD).await.status, 409);

    gateway
        .clock
        .advance(std::time::Duration::from_secs(24 * 3600 + 60));
    let second = gateway.register(&email, PASSWORD).await;
    assert_eq!(second.status, 201, "{second:?}");
    assert_ne!(second.json()["id"], first.json()["id"], "a new account");
    let rows = crate::harness::identity::sql(&format!(
        "SELECT id FROM users WHERE lower(email) = lower('{email}')"
    ))
    .await;
    assert_eq!(rows.len(), 1, "the lapsed account is gone");

    // A verified account is never replaced.
    let verified = gateway.signup("verified").await;
    gateway
        .clock
        .advance(std::time::Duration::from_secs(48 * 3600));
    assert_eq!(
        gateway.register(&verified.email, PASSWORD).await.status,
        409
    );
}
