//! The end user's side of the stack: accounts made the way a user makes them (register, the
//! mail, verify, sign in) and the tests' policy.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::https::{must, plain_get};
use crate::stack::Stack;

pub const PASSWORD: &str = "Tr0ub4dor&3-horse-staple";

/// The policy the tests start from: /hello needs a signed-in user, /public/** is open,
/// /limited/** allows each user 12 requests a minute.
pub const POLICY: &str = r#"version: 1
roles: [user, admin]
permissions:
  user: []
  admin: ["*"]
rate_limit: { requests: 100000, per: 1m, key: ip }
rules:
  - name: public
    paths: ["/public/**"]
    allow: public
  - name: hello
    paths: ["/hello", "/hello/**"]
    allow: authenticated
  - name: limited
    paths: ["/limited/**"]
    allow: authenticated
    rate_limit: { requests: 12, per: 1m, key: user }
"#;

/// The compose config with limits no test meets (every request comes from one address),
/// mail retried quickly, and the tests' policy.
pub fn prepare(stack: &Stack) {
    stack.edit_config(&[
        (
            "login: { requests: 5, per: 1m }",
            "login: { requests: 100000, per: 1m }",
        ),
        (
            "register: { requests: 3, per: 1h }",
            "register: { requests: 100000, per: 1m }",
        ),
        (
            "password_reset: { requests: 3, per: 1h }",
            "password_reset: { requests: 100000, per: 1m }",
        ),
        (
            "default: { requests: 1000, per: 1h }",
            "default: { requests: 100000, per: 1m }",
        ),
        (
            "per_recipient: { requests: 3, per: 1h }",
            "per_recipient: { requests: 100000, per: 1m }",
        ),
        ("retry_initial: 5s", "retry_initial: 200ms"),
        ("retry_max: 10m", "retry_max: 1s"),
        ("poll_interval: 5s", "poll_interval: 200ms"),
    ]);
    crate::stack::write(&stack.config_path("policy.yaml"), POLICY);
}

pub fn unique_email(label: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{label}-{}-{}@example.com",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The token in the newest mail to `to` whose subject is `subject`, waiting for it.
pub async fn mail_token(sink: SocketAddr, to: &str, subject: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Ok((200, list)) = plain_get(sink, "/api/v1/messages").await {
            let list: Value = serde_json::from_str(&list).unwrap();
            let found = list["messages"].as_array().unwrap().iter().find(|message| {
                message["Subject"] == subject
                    && message["To"]
                        .as_array()
                        .is_some_and(|to_list| to_list.iter().any(|r| r["Address"] == to))
            });
            if let Some(message) = found {
                let id = message["ID"].as_str().unwrap();
                let (_, text) = plain_get(sink, &format!("/api/v1/message/{id}"))
                    .await
                    .unwrap();
                let text: Value = serde_json::from_str(&text).unwrap();
                let text = text["Text"].as_str().unwrap();
                let start = text.find("token=").expect("a link with a token") + "token=".len();
                return text[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no mail {subject:?} to {to} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub struct Tokens {
    pub user_id: String,
    pub access: String,
    pub refresh: String,
}

impl Tokens {
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.access)
    }
}

/// Register → the verification mail → verify → sign in, all through `gateway`.
pub async fn signed_up(gateway: SocketAddr, sink: SocketAddr, label: &str) -> (String, Tokens) {
    let email = unique_email(label);
    let registered = must(
        gateway,
        "POST",
        "/auth/register",
        &[],
        Some(&json!({ "email": email, "password": PASSWORD, "name": label })),
    )
    .await;
    assert_eq!(registered.status, 201, "{}", registered.body);
    let token = mail_token(
        sink,
        &email,
        "Confirm your email address",
        Duration::from_secs(30),
    )
    .await;
    let verified = must(
        gateway,
        "POST",
        "/auth/verify-email",
        &[],
        Some(&json!({ "token": token })),
    )
    .await;
    assert_eq!(verified.status, 200, "{}", verified.body);
    assert_eq!(verified.json()["is_verified"], true);
    let tokens = login(gateway, &email).await;
    (email, tokens)
}

pub async fn login(gateway: SocketAddr, email: &str) -> Tokens {
    let login = must(
        gateway,
        "POST",
        "/auth/login",
        &[],
        Some(&json!({ "email": email, "password": PASSWORD })),
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.body);
    let body = login.json();
    Tokens {
        user_id: body["user"]["id"].as_str().unwrap().to_string(),
        access: body["access_token"].as_str().unwrap().to_string(),
        refresh: body["refresh_token"].as_str().unwrap().to_string(),
    }
}

/// Logs out the session of `bearer` through `gateway` (204 required): how long it took.
pub async fn logout(gateway: SocketAddr, bearer: &str) -> Duration {
    let start = Instant::now();
    let reply = must(
        gateway,
        "POST",
        "/auth/logout",
        &[("authorization", bearer)],
        Some(&json!({})),
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    start.elapsed()
}

/// GET /hello with a bearer token: the status.
pub async fn hello(gateway: SocketAddr, bearer: &str) -> Result<u16, String> {
    crate::https::call(gateway, "GET", "/hello", &[("authorization", bearer)], None)
        .await
        .map(|reply| reply.status)
}

/// Polls `condition` every 50 ms until it holds; the time it took.
pub async fn until<F, Fut>(what: &str, within: Duration, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
