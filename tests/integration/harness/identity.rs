//! Helpers for the identity flows: unique accounts, JSON calls with or without a bearer
//! token, registration through the real verification email, and admins.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::{empty, full, run_resources, TestGateway, TestResponse};

pub const PASSWORD: &str = "Correct-Horse-42";
pub const MAIL_WAIT: Duration = Duration::from_secs(10);

/// The decoded JSON of a JWT's claims (its second segment), read without verifying it.
pub fn token_claims(token: &str) -> Value {
    token_segment(token, 1)
}

/// The decoded JSON of a JWT's header (its first segment), read without verifying it.
pub fn token_header(token: &str) -> Value {
    token_segment(token, 0)
}

fn token_segment(token: &str, index: usize) -> Value {
    use base64::Engine;
    let segment = token
        .split('.')
        .nth(index)
        .expect("a JWT has three segments");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(segment)
            .unwrap(),
    )
    .unwrap()
}

/// An address no other test (or run) uses.
pub fn unique_email(label: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{label}-{}-{}@example.com",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub email: String,
    pub password: String,
}

#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

impl TestGateway {
    /// A JSON request over a fresh HTTP/1.1 connection.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        bearer: Option<&str>,
    ) -> TestResponse {
        let mut client = self.h1().await;
        let mut request = client.request(method, path);
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(full(body.to_string()))
                .unwrap(),
            None => request.body(empty()).unwrap(),
        };
        client.send_read(request).await
    }

    pub async fn post(&self, path: &str, body: Value) -> TestResponse {
        self.call("POST", path, Some(body), None).await
    }

    pub async fn register(&self, email: &str, password: &str) -> TestResponse {
        self.post(
            "/auth/register",
            serde_json::json!({ "email": email, "password": password, "name": "Test User" }),
        )
        .await
    }

    /// Registers and verifies through the token in the real email.
    pub async fn signup(&self, label: &str) -> Account {
        let email = unique_email(label);
        let response = self.register(&email, PASSWORD).await;
        assert_eq!(response.status, 201, "{response:?}");
        let id = response.json()["id"].as_str().unwrap().to_string();
        let mail = self.smtp.wait_for(&email, MAIL_WAIT).await;
        let token = mail
            .token()
            .expect("the verification email carries a token");
        let verified = self
            .post("/auth/verify-email", serde_json::json!({ "token": token }))
            .await;
        assert_eq!(verified.status, 200, "{verified:?}");
        Account {
            id,
            email,
            password: PASSWORD.to_string(),
        }
    }

    pub async fn login(&self, email: &str, password: &str) -> TestResponse {
        self.post(
            "/auth/login",
            serde_json::json!({ "email": email, "password": password }),
        )
        .await
    }

    pub async fn tokens(&self, account: &Account) -> Tokens {
        let response = self.login(&account.email, &account.password).await;
        assert_eq!(response.status, 200, "{response:?}");
        let body = response.json();
        Tokens {
            access: body["access_token"].as_str().unwrap().to_string(),
            refresh: body["refresh_token"].as_str().unwrap().to_string(),
        }
    }

    /// A verified account given a role directly in this run's database (the way an
    /// operator's `portcullis user create` would), then logged in.
    pub async fn account_with_role(&self, label: &str, role: &str) -> (Account, Tokens) {
        let account = self.signup(label).await;
        sql(&format!(
            "UPDATE users SET role = '{role}' WHERE id = '{}'",
            account.id
        ))
        .await;
        let tokens = self.tokens(&account).await;
        (account, tokens)
    }
}

/// The session id (`sid` claim) an access token carries, read without checking it.
pub fn session_id(access: &str) -> String {
    use base64::Engine;
    let payload = access.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["sid"].as_str().unwrap().to_string()
}

/// Runs one statement against this run's database.
pub async fn sql(statement: &str) -> Vec<tokio_postgres::Row> {
    let (client, connection) =
        tokio_postgres::connect(&run_resources().database_url, tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    client.query(statement, &[]).await.unwrap()
}
