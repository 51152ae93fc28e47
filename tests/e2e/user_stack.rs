//! The stack as a user runs it (one gateway), end to end: an account's whole life, a live
//! policy edit, the ops endpoints, and a Postgres restart.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::flows::{self, hello, mail_token, signed_up, until, PASSWORD};
use crate::https::{must, plain_get};
use crate::stack::{write, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_stack_end_to_end() {
    // As the README runs it: no PORTCULLIS_HS256_SECRET, so a secret made up at start.
    let stack = Stack::new("user", &[]);
    flows::prepare(&stack);
    let started = Instant::now();
    stack.up(1, &[]);
    eprintln!("e2e: stack healthy in {:?}", started.elapsed());
    let gateway_container = stack.container("gateway");
    let gateway = stack.addr(&gateway_container, 8443);
    let ops = stack.addr(&gateway_container, 9901);
    let sink = stack.addr(&stack.container("mailpit"), 8025);

    // Register → mail → verify → login → a forwarded request carries the identity.
    let (email, tokens) = signed_up(gateway, sink, "life").await;
    let forwarded = must(
        gateway,
        "GET",
        "/hello/there?x=1",
        &[
            ("authorization", &tokens.bearer()),
            ("x-auth-role", "admin"),
        ],
        None,
    )
    .await;
    assert_eq!(forwarded.status, 200, "{}", forwarded.body);
    assert!(
        forwarded.body.contains("GET /hello/there?x=1 "),
        "{}",
        forwarded.body
    );
    assert_eq!(
        forwarded.echoed("X-Auth-User-Id"),
        Some(tokens.user_id.clone())
    );
    assert_eq!(forwarded.echoed("X-Auth-Email"), Some(email.clone()));
    assert_eq!(forwarded.echoed("X-Auth-Role").as_deref(), Some("user"));
    assert_eq!(
        forwarded.echoed("Authorization"),
        Some(tokens.bearer()),
        "the upstream sees the caller's token as sent"
    );
    let anonymous = must(gateway, "GET", "/hello", &[], None).await;
    assert_eq!(anonymous.status, 401);

    // Refresh rotates; the new access token works; logout ends it at once.
    let refreshed = must(
        gateway,
        "POST",
        "/auth/refresh",
        &[],
        Some(&json!({ "refresh_token": tokens.refresh })),
    )
    .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    let access = refreshed.json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let refresh = refreshed.json()["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(refresh, tokens.refresh);
    let bearer = format!("Bearer {access}");
    assert_eq!(hello(gateway, &bearer).await, Ok(200));
    flows::logout(gateway, &bearer).await;
    assert_eq!(hello(gateway, &bearer).await, Ok(401));
    let after_logout = must(
        gateway,
        "POST",
        "/auth/refresh",
        &[],
        Some(&json!({ "refresh_token": refresh })),
    )
    .await;
    assert_eq!(after_logout.status, 401, "{}", after_logout.body);

    // A policy edit on the mounted file takes effect within a second.
    let signed_in = flows::login(gateway, &email).await;
    assert_eq!(hello(gateway, &signed_in.bearer()).await, Ok(200));
    let edited = flows::POLICY.replace(
        "    paths: [\"/hello\", \"/hello/**\"]\n    allow: authenticated",
        "    paths: [\"/hello\", \"/hello/**\"]\n    allow: { role: admin }",
    );
    assert_ne!(edited, flows::POLICY);
    write(&stack.config_path("policy.yaml"), &edited);
    let took = until(
        "the policy edit takes effect",
        Duration::from_secs(1),
        || async { hello(gateway, &signed_in.bearer()).await == Ok(403) },
    )
    .await;
    eprintln!("e2e: policy edit in force after {took:?}");
    write(&stack.config_path("policy.yaml"), flows::POLICY);
    until("the policy is restored", Duration::from_secs(1), || async {
        hello(gateway, &signed_in.bearer()).await == Ok(200)
    })
    .await;

    // The ops listener.
    let (status, ready) = plain_get(ops, "/readyz").await.unwrap();
    assert_eq!((status, ready.as_str()), (200, r#"{"status":"ready"}"#));
    let (status, metrics) = plain_get(ops, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("portcullis_http_requests_total"),
        "{}",
        &metrics[..metrics.len().min(2000)]
    );
    let health = stack.docker(&[
        "exec",
        &gateway_container,
        "portcullis",
        "health",
        "--config",
        "config/gateway.compose.yaml",
    ]);
    assert_eq!(health, "ready");

    // Postgres restarts: /auth answers 503 meanwhile, then recovers; mail queued before the
    // outage (the mail sink is stopped, so it waits in the outbox) is delivered after it.
    stack.compose(&["stop", "mailpit"]);
    let reset = must(
        gateway,
        "POST",
        "/auth/password-reset",
        &[],
        Some(&json!({ "email": email })),
    )
    .await;
    assert_eq!(reset.status, 202);
    // The outbox row is written after the 202 (the answer never depends on it): wait for it
    // in the database itself, and for the send attempt that fails against the stopped sink.
    let postgres = stack.container("postgres");
    let pending = format!(
        "SELECT count(*) FROM mail_outbox WHERE recipient = '{email}' \
         AND subject = 'Reset your password' AND sent_at IS NULL AND attempts > 0"
    );
    until(
        "the reset mail waits in the outbox",
        Duration::from_secs(10),
        || async {
            stack.docker(&[
                "exec",
                &postgres,
                "psql",
                "-U",
                "portcullis",
                "-d",
                "portcullis",
                "-tAc",
                &pending,
            ]) == "1"
        },
    )
    .await;
    let outage = Instant::now();
    stack.compose(&["stop", "postgres"]);
    let login = must(
        gateway,
        "POST",
        "/auth/login",
        &[],
        Some(&json!({ "email": email, "password": PASSWORD })),
    )
    .await;
    assert_eq!(login.status, 503, "{}", login.body);
    assert!(login.json()["detail"].is_string());
    let (status, ready) = plain_get(ops, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("postgres"), "{ready}");
    stack.compose(&["start", "postgres"]);
    stack.wait_state(
        &stack.container("postgres"),
        "healthy",
        Duration::from_secs(60),
    );
    let recovered = until(
        "/auth/login works again",
        Duration::from_secs(30),
        || async {
            crate::https::call(
                gateway,
                "POST",
                "/auth/login",
                &[],
                Some(&json!({ "email": email, "password": PASSWORD })),
            )
            .await
            .is_ok_and(|reply| reply.status == 200)
        },
    )
    .await;
    eprintln!(
        "e2e: postgres restart: /auth 503 during the outage, login again {recovered:?} after \
         Postgres was healthy ({:?} after the stop)",
        outage.elapsed()
    );
    stack.compose(&["start", "mailpit"]);
    // A restarted container may come back on another address.
    let sink = stack.addr(&stack.container("mailpit"), 8025);
    let token = mail_token(sink, &email, "Reset your password", Duration::from_secs(30)).await;
    assert!(token.len() >= 32, "{token}");
    eprintln!("e2e: the reset mail queued before the outage arrived after it");
}
