//! Password reset by email and password change: what ends, what is mailed, single use.

use std::sync::Arc;

use serde_json::json;

use crate::harness::identity::{unique_email, MAIL_WAIT, PASSWORD};
use crate::harness::TestGateway;

const NEW_PASSWORD: &str = "Another-Secret-77";

#[tokio::test]
async fn password_reset_sets_a_new_password_and_ends_every_session() {
    let gateway = TestGateway::start().await;
    let account = gateway.signup("reset").await;
    let before = gateway.tokens(&account).await;

    let unknown = gateway
        .post(
            "/auth/password-reset",
            json!({ "email": unique_email("nobody") }),
        )
        .await;
    assert_eq!(unknown.status, 202);
    assert_eq!(unknown.header("referrer-policy"), Some("no-referrer"));
    let requested = gateway
        .post("/auth/password-reset", json!({ "email": account.email }))
        .await;
    assert_eq!(requested.status, 202);
    let mail = gateway.smtp.wait_for(&account.email, MAIL_WAIT).await;
    assert!(
        mail.body()
            .contains("https://gateway.test:8443/auth/reset-password?token="),
        "{}",
        mail.body()
    );
    let token = mail.token().unwrap();

    let weak = gateway
        .post(
            "/auth/password-reset/confirm",
            json!({ "token": token, "new_password": "weak" }),
        )
        .await;
    assert_eq!(
        weak.status, 422,
        "a refused password leaves the token usable"
    );
    let confirmed = gateway
        .post(
            "/auth/password-reset/confirm",
            json!({ "token": token, "new_password": NEW_PASSWORD }),
        )
        .await;
    assert_eq!(confirmed.status, 204, "{confirmed:?}");
    assert_eq!(confirmed.header("referrer-policy"), Some("no-referrer"));

    assert_eq!(
        gateway
            .call("GET", "/auth/me", None, Some(&before.access))
            .await
            .status,
        401
    );
    assert_eq!(
        gateway
            .post("/auth/refresh", json!({ "refresh_token": before.refresh }))
            .await
            .status,
        401
    );
    assert_eq!(gateway.login(&account.email, PASSWORD).await.status, 401);
    assert_eq!(
        gateway.login(&account.email, NEW_PASSWORD).await.status,
        200
    );
    let confirmation = gateway.smtp.wait_for(&account.email, MAIL_WAIT).await;
    assert!(confirmation
        .subject()
        .unwrap_or_default()
        .to_lowercase()
        .contains("password"));

    let again = gateway
        .post(
            "/auth/password-reset/confirm",
            json!({ "token": token, "new_password": "Yet-Another-88" }),
        )
        .await;
    assert_eq!(again.status, 400, "a reset token works once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_token_used_twice_concurrently_works_once() {
    let gateway = Arc::new(TestGateway::start().await);
    let account = gateway.signup("reset-race").await;
    gateway
        .post("/auth/password-reset", json!({ "email": account.email }))
        .await;
    let token = gateway
        .smtp
        .wait_for(&account.email, MAIL_WAIT)
        .await
        .token()
        .unwrap();
    let racers: Vec<_> = ["First-Choice-11", "Second-Choice-22"]
        .into_iter()
        .map(|password| {
            let gateway = gateway.clone();
            let token = token.clone();
            tokio::spawn(async move {
                gateway
                    .post(
                        "/auth/password-reset/confirm",
                        json!({ "token": token, "new_password": password }),
                    )
                    .await
                    .status
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for racer in racers {
        statuses.push(racer.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, vec![204, 400]);
}

#[tokio::test]
async fn a_reset_token_expires_after_an_hour() {
    let gateway = TestGateway::start().await;
    let account = gateway.signup("reset-expiry").await;
    gateway
        .post("/auth/password-reset", json!({ "email": account.email }))
        .await;
    let token = gateway
        .smtp
        .wait_for(&account.email, MAIL_WAIT)
        .await
        .token()
        .unwrap();
    gateway.clock.advance(std::time::Duration::from_secs(3601));
    let response = gateway
        .post(
            "/auth/password-reset/confirm",
            json!({ "token": token, "new_password": NEW_PASSWORD }),
        )
        .await;
    assert_eq!(response.status, 400);
}

#[tokio::test]
async fn password_change_keeps_this_session_and_ends_the_others() {
    let gateway = TestGateway::start().await;
    let account = gateway.signup("change").await;
    let current = gateway.tokens(&account).await;
    let other = gateway.tokens(&account).await;

    let wrong = gateway
        .call(
            "POST",
            "/auth/password-change",
            Some(json!({ "current_password": "Not-The-One-9", "new_password": NEW_PASSWORD })),
            Some(&current.access),
        )
        .await;
    assert_eq!(wrong.status, 422);
    assert_eq!(wrong.detail(), "Current password is incorrect");
    let weak = gateway
        .call(
            "POST",
            "/auth/password-change",
            Some(json!({ "current_password": PASSWORD, "new_password": "short" })),
            Some(&current.access),
        )
        .await;
    assert_eq!(weak.detail(), "Password must be at least 8 characters");

    let changed = gateway
        .call(
            "POST",
            "/auth/password-change",
            Some(json!({ "current_password": PASSWORD, "new_password": NEW_PASSWORD })),
            Some(&current.access),
        )
        .await;
    assert_eq!(changed.status, 204, "{changed:?}");
    assert_eq!(
        gateway
            .call("GET", "/auth/me", None, Some(&current.access))
            .await
            .status,
        200
    );
    assert_eq!(
        gateway
            .call("GET", "/auth/me", None, Some(&other.access))
            .await
            .status,
        401
    );
    assert_eq!(
        gateway
            .post("/auth/refresh", json!({ "refresh_token": other.refresh }))
            .await
            .status,
        401
    );
    assert_eq!(
        gateway.login(&account.email, NEW_PASSWORD).await.status,
        200
    );
    let mail = gateway.smtp.wait_for(&account.email, MAIL_WAIT).await;
    assert!(mail
        .subject()
        .unwrap_or_default()
        .to_lowercase()
        .contains("password"));
}

/// Password reset and resend-verification must not take longer for an address that has an
/// account (the issue of a token and its mail) than for one that does not: they answer after
/// the one lookup every address costs, and write after the answer. With the token table held
/// locked, a write on the answer's path would hold the answer; here it must not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_and_resend_answer_before_they_write() {
    let database = crate::harness::isolated_database("answer_first").await;
    let url = database.clone();
    let gateway = TestGateway::start_with(move |config| {
        config.database.url = portcullis::config::Secret::new(url);
    })
    .await;
    let account = gateway.signup("answer-first").await;
    let unverified = unique_email("answer-first-unverified");
    assert_eq!(gateway.register(&unverified, PASSWORD).await.status, 201);

    let (locker, connection) = tokio_postgres::connect(&database, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; LOCK TABLE email_tokens IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    for (path, email) in [
        ("/auth/password-reset", &account.email),
        ("/auth/resend-verification", &unverified),
    ] {
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            gateway.post(path, json!({ "email": email })),
        )
        .await
        .unwrap_or_else(|_| panic!("{path} waited for its write"));
        assert_eq!(answer.status, 202, "{path}");
    }
    locker.batch_execute("COMMIT").await.unwrap();

    // The writes went ahead once the table was free.
    let (check, connection) = tokio_postgres::connect(&database, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let deadline = std::time::Instant::now() + MAIL_WAIT;
    loop {
        let issued: i64 = check
            .query_one(
                "SELECT count(*) FROM email_tokens t JOIN users u ON u.id = t.user_id \
                 WHERE (u.email = $1 AND t.purpose = 'password_reset') \
                    OR (u.email = $2 AND t.purpose = 'verify_email')",
                &[&account.email.to_lowercase(), &unverified.to_lowercase()],
            )
            .await
            .unwrap()
            .get(0);
        // The unverified account's registration issued one verification token already.
        if issued >= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the tokens were issued after the answer ({issued} found)"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A sign-in flood meets a bounded queue: with one hashing thread and one place to wait, the
/// logins beyond those two are answered 503 at once instead of queueing behind the flood.
#[tokio::test]
async fn sign_ins_beyond_the_hashing_queue_are_refused_with_503_at_once() {
    let gateway = TestGateway::start_with(|config| {
        config.password.max_concurrent_hashes = 1;
        config.password.max_queued_hashes = 1;
        // Costly enough that the first hash is still running when the last request arrives.
        config.password.argon2.memory_kib = 65_536;
        config.password.argon2.iterations = 4;
    })
    .await;
    // Connected (TLS done) before any request is sent, so that all arrive together.
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(gateway.h1().await);
    }
    let logins = clients.iter_mut().map(|client| {
        let request = client
            .request("POST", "/auth/login")
            .header("content-type", "application/json")
            .body(crate::harness::full(
                json!({ "email": unique_email("flood"), "password": PASSWORD }).to_string(),
            ))
            .unwrap();
        client.send_read(request)
    });
    let answers = futures_util::future::join_all(logins).await;
    let statuses: Vec<u16> = answers
        .iter()
        .map(|answer| answer.status.as_u16())
        .collect();
    assert!(
        statuses.iter().all(|status| [401, 503].contains(status)),
        "{statuses:?}"
    );
    // The first login had the thread and the second the place in the queue.
    assert!(
        statuses.iter().filter(|&&status| status == 401).count() >= 2,
        "{statuses:?}"
    );
    let busy = answers
        .iter()
        .find(|answer| answer.status == 503)
        .unwrap_or_else(|| panic!("no login was refused: {statuses:?}"));
    assert_eq!(
        busy.detail(),
        "Too many sign-ins in progress; try again shortly"
    );
    // Once the flood has passed, sign-in works again.
    assert_eq!(
        gateway
            .post(
                "/auth/login",
                json!({ "email": unique_email("after"), "password": PASSWORD })
            )
            .await
            .status,
        401
    );
}
