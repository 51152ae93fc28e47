//! A property over every `/auth` route: whatever JSON (or not-JSON) body, query or path a
//! client sends, the gateway answers below 500, in its JSON error shape, and keeps serving.
//!
//! Bodies come from a seeded generator: the fields each route reads, filled with values of
//! every JSON type and strings with NUL, control characters, lone-surrogate escapes, very long
//! runs and look-alikes of real values (a registered email, a real token); plus raw bytes that
//! are not JSON at all. The run is bounded: `PORTCULLIS_FUZZ_CASES` bodies per route (default
//! 40), from `PORTCULLIS_FUZZ_SEED` (default fixed, so a failure reproduces; CI may vary it).

use serde_json::{json, Map, Value};

use crate::harness::identity::unique_email;
use crate::harness::TestGateway;

/// xorshift64*: small, deterministic, good enough to pick shapes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const FIELDS: &[&str] = &[
    "email",
    "password",
    "name",
    "token",
    "refresh_token",
    "new_password",
    "current_password",
    "all",
    "role",
    "is_active",
];

fn text(rng: &mut Rng, real: &[String]) -> String {
    match rng.below(12) {
        0 => String::new(),
        1 => "\u{0}".into(),
        2 => format!("{}\u{0}", rng.pick(real)),
        3 => "a\r\nX-Injected: 1".into(),
        4 => "\u{7}\u{1b}[31m\u{7f}\u{85}".into(),
        5 => "x".repeat(rng.below(9000)),
        6 => "é\u{202e}\u{fe0f}😀\u{ffff}".into(),
        7 => rng.pick(real).clone(),
        8 => rng.pick(real).to_uppercase(),
        9 => format!(" {} ", rng.pick(real)),
        10 => "' OR 1=1 --".into(),
        _ => "Correct-Horse-42".into(),
    }
}

fn value(rng: &mut Rng, real: &[String], depth: usize) -> Value {
    match rng.below(if depth > 2 { 6 } else { 9 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.next() as i64),
        3 => json!(1e308),
        4 | 5 => Value::String(text(rng, real)),
        6 => Value::Array(
            (0..rng.below(4))
                .map(|_| value(rng, real, depth + 1))
                .collect(),
        ),
        7 => object(rng, real, depth + 1),
        _ => json!(-0.5),
    }
}

fn object(rng: &mut Rng, real: &[String], depth: usize) -> Value {
    object_of(rng, real, depth, FIELDS)
}

/// An object whose names are mostly `fields` (the ones the route reads).
fn object_of(rng: &mut Rng, real: &[String], depth: usize, fields: &[&str]) -> Value {
    let mut map = Map::new();
    for _ in 0..1 + rng.below(5) {
        // Mostly the fields routes read, mostly as strings: that is where input reaches
        // Postgres, the hasher and the logs.
        let (name, value) = if rng.below(5) == 0 {
            (text(rng, real), value(rng, real, depth))
        } else if rng.below(10) < 7 {
            (rng.pick(fields).to_string(), Value::String(text(rng, real)))
        } else {
            (rng.pick(fields).to_string(), value(rng, real, depth))
        };
        map.insert(name, value);
    }
    Value::Object(map)
}

/// A request body: mostly an object of the route's fields, sometimes anything else.
fn body(rng: &mut Rng, real: &[String], fields: &[&str]) -> String {
    match rng.below(10) {
        0 => "{\"email\": \"\\ud800\", \"password\": \"\\udfff\"}".into(),
        1 => "{\"email\": ".into(),
        2 => "\u{0}\u{1}not json".into(),
        3 => value(rng, real, 0).to_string(),
        4 => format!("{{\"email\": \"{}\", \"email\": 5}}", rng.pick(real)),
        _ => object_of(rng, real, 0, fields).to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_auth_route_answers_any_body_below_500() {
    let gateway = TestGateway::start().await;
    let (admin, admin_tokens) = gateway.account_with_role("fuzz-admin", "admin").await;
    let user = gateway.signup("fuzz-user").await;
    let user_tokens = gateway.tokens(&user).await;
    let real = vec![
        user.email.clone(),
        admin.email.clone(),
        unique_email("fuzz-nobody"),
        user_tokens.refresh.clone(),
        user.id.clone(),
    ];
    let cases: usize = std::env::var("PORTCULLIS_FUZZ_CASES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(40);
    let seed: u64 = std::env::var("PORTCULLIS_FUZZ_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(0x5EED_F022);
    let mut rng = Rng(seed | 1);
    let id = user.id.clone();
    const ANY: &[&str] = FIELDS;
    let routes: Vec<(&str, String, bool, &[&str])> = vec![
        (
            "POST",
            "/auth/register".into(),
            false,
            &["email", "password", "name"],
        ),
        ("POST", "/auth/verify-email".into(), false, &["token"]),
        (
            "POST",
            "/auth/resend-verification".into(),
            false,
            &["email"],
        ),
        ("POST", "/auth/login".into(), false, &["email", "password"]),
        ("POST", "/auth/refresh".into(), false, &["refresh_token"]),
        (
            "POST",
            "/auth/logout".into(),
            true,
            &["refresh_token", "all"],
        ),
        ("POST", "/auth/password-reset".into(), false, &["email"]),
        (
            "POST",
            "/auth/password-reset/confirm".into(),
            false,
            &["token", "new_password"],
        ),
        (
            "POST",
            "/auth/password-change".into(),
            true,
            &["current_password", "new_password"],
        ),
        ("GET", "/auth/me".into(), true, ANY),
        ("GET", "/auth/sessions".into(), true, ANY),
        ("DELETE", "/auth/sessions/not-a-uuid".into(), true, ANY),
        ("DELETE", format!("/auth/sessions/{id}"), true, ANY),
        (
            "GET",
            "/auth/admin/users?limit=%00&q=%00%0a".into(),
            true,
            ANY,
        ),
        (
            "GET",
            "/auth/admin/users?limit=99999999999999999999&offset=-1".into(),
            true,
            ANY,
        ),
        ("GET", format!("/auth/admin/users/{id}"), true, ANY),
        (
            "PATCH",
            format!("/auth/admin/users/{id}"),
            true,
            &["role", "is_active", "name"],
        ),
        ("POST", format!("/auth/admin/users/{id}/unlock"), true, ANY),
        ("GET", "/auth/admin/audit?user_id=%00".into(), true, ANY),
        ("GET", "/auth/openapi.json".into(), false, ANY),
    ];
    let mut failures = Vec::new();
    for (method, path, signed_in, fields) in &routes {
        for case in 0..cases {
            let raw = body(&mut rng, &real, fields);
            // Admin routes with the admin's token; other signed-in routes with the user's
            // (whose session the bodies may end: that answer is a 401, still below 500).
            let bearer = if !signed_in {
                None
            } else if path.contains("/admin/") {
                Some(admin_tokens.access.as_str())
            } else {
                Some(user_tokens.access.as_str())
            };
            let mut client = gateway.h1().await;
            let mut request = client
                .request(method, path)
                .header("content-type", "application/json");
            if let Some(token) = bearer {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            let request = request.body(crate::harness::full(raw.clone())).unwrap();
            let response = client.send_read(request).await;
            let json_error = response.status.as_u16() < 400
                || response
                    .header("content-type")
                    .is_some_and(|kind| kind.starts_with("application/json"));
            if response.status.as_u16() >= 500 || !json_error {
                failures.push(format!(
                    "{method} {path} case {case}: {} {:?} for body {raw:?}",
                    response.status,
                    String::from_utf8_lossy(&response.body)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {} answers were 5xx or not JSON:\n{}",
        failures.len(),
        routes.len() * cases,
        failures.join("\n")
    );
    // Still serving.
    let mut client = gateway.h1().await;
    assert_eq!(client.get("/auth/openapi.json").await.status, 200);
}
