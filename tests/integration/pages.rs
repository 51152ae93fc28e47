//! The sign-in pages over real HTTPS (contract 7): each page renders with the fields the
//! browser tests rely on, form POSTs reuse the API's decisions and words, the signed form
//! token is required, and the mail links land on pages that spend a token only on POST.

use crate::harness::identity::{unique_email, Account, MAIL_WAIT, PASSWORD};
use crate::harness::{empty, full, TestGateway, TestResponse};

const NEW_PASSWORD: &str = "Another-Secret-77";

/// A browser's cookie jar, as far as these tests need one: name=value pairs sent back.
#[derive(Default, Clone)]
struct Jar(Vec<(String, String)>);

impl Jar {
    /// Keeps what a response set; a cookie set with `Max-Age=0` is dropped.
    fn take(&mut self, response: &TestResponse) {
        for value in response.headers.get_all("set-cookie") {
            let value = value.to_str().unwrap();
            let (pair, attributes) = value.split_once(';').unwrap_or((value, ""));
            let (name, cookie_value) = pair.split_once('=').unwrap();
            self.0.retain(|(kept, _)| kept != name);
            if !attributes.contains("Max-Age=0") {
                self.0.push((name.to_string(), cookie_value.to_string()));
            }
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(kept, _)| kept == name)
            .map(|(_, value)| value.as_str())
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn text(response: &TestResponse) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

/// The value of the form field `name` in a page (values here need no unescaping).
fn field_value(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no field {name} in {page}"))
        + marker.len();
    page[start..].split('"').next().unwrap().to_string()
}

/// The text of the page's `role="alert"` element.
fn alert(page: &str) -> String {
    let start = page
        .find("role=\"alert\"")
        .unwrap_or_else(|| panic!("no alert in {page}"));
    let after = &page[start..];
    let open = after.find('>').unwrap() + 1;
    let close = after.find("</").unwrap();
    after[open..close].to_string()
}

fn form_encode(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(text: &str) -> String {
    let mut encoded = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

impl TestGateway {
    async fn browser_get(&self, path: &str, jar: &mut Jar) -> TestResponse {
        let mut client = self.h1().await;
        let request = client
            .request("GET", path)
            .header("accept", "text/html")
            .header("cookie", jar.header())
            .body(empty())
            .unwrap();
        let response = client.send_read(request).await;
        jar.take(&response);
        response
    }

    async fn browser_post(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        jar: &mut Jar,
    ) -> TestResponse {
        let mut client = self.h1().await;
        let request = client
            .request("POST", path)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", jar.header())
            .body(full(form_encode(fields)))
            .unwrap();
        let response = client.send_read(request).await;
        jar.take(&response);
        response
    }

    /// Opens the page at `path` and submits its form with `fields` and the page's own
    /// hidden fields (csrf, and rd or token when the page has them).
    async fn submit(&self, path: &str, fields: &[(&str, &str)], jar: &mut Jar) -> TestResponse {
        let page = self.browser_get(path, jar).await;
        assert_eq!(page.status, 200, "{page:?}");
        let page = text(&page);
        let action = path.split('?').next().unwrap();
        let csrf = field_value(&page, "csrf");
        let mut all: Vec<(&str, String)> = vec![("csrf", csrf)];
        for hidden in ["rd", "token"] {
            if page.contains(&format!("name=\"{hidden}\" value=\"")) {
                all.push((hidden, field_value(&page, hidden)));
            }
        }
        let all: Vec<(&str, &str)> = fields
            .iter()
            .copied()
            .chain(all.iter().map(|(name, value)| (*name, value.as_str())))
            .collect();
        self.browser_post(action, &all, jar).await
    }
}

fn assert_html(response: &TestResponse) {
    assert_eq!(
        response.header("content-type"),
        Some("text/html; charset=utf-8"),
        "{response:?}"
    );
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert_eq!(text(response).matches("<h1>").count(), 1);
}

#[tokio::test]
async fn every_page_renders_its_form() {
    let gateway = TestGateway::start().await;
    #[rustfmt::skip]
    let pages: &[(&str, &[&str])] = &[
        ("/auth/login?rd=%2Fapp%3Fx%3D1", &["email", "password", "rd", "csrf"]),
        ("/auth/register", &["name", "email", "password", "csrf"]),
        ("/auth/verify-email?token=abc", &["token", "csrf"]),
        ("/auth/forgot-password", &["email", "csrf"]),
        ("/auth/reset-password?token=abc", &["token", "new_password", "csrf"]),
        ("/auth/logout", &["csrf"]),
    ];
    let mut stylesheet = None;
    for (path, fields) in pages {
        let mut jar = Jar::default();
        let page = gateway.browser_get(path, &mut jar).await;
        assert_eq!(page.status, 200, "{path}: {page:?}");
        assert_html(&page);
        let html = text(&page);
        for name in *fields {
            assert!(
                html.contains(&format!("id=\"{name}\" name=\"{name}\"")),
                "{path}: {name}"
            );
        }
        assert_eq!(
            html.matches("<button type=\"submit\">").count(),
            1,
            "{path}"
        );
        assert!(
            !html.contains("<script") && !html.contains("style="),
            "{path}"
        );
        // Under the default CSP: the pages load nothing but the gateway's own stylesheet.
        assert_eq!(
            page.header("content-security-policy"),
            Some("default-src 'self'; frame-ancestors 'none'; base-uri 'self'; object-src 'none'")
        );
        assert!(
            jar.get("__Host-portcullis-csrf").is_some(),
            "{path}: the form nonce cookie"
        );
        let csrf_cookie = page
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|value| value.to_str().unwrap())
            .find(|value| value.starts_with("__Host-portcullis-csrf="))
            .unwrap();
        assert!(
            csrf_cookie.contains("Secure")
                && csrf_cookie.contains("HttpOnly")
                && csrf_cookie.contains("Path=/")
        );
        let href_start = html
            .find("href=\"/auth/assets/style.css?v=")
            .expect("the stylesheet")
            + 6;
        stylesheet = Some(html[href_start..].split('"').next().unwrap().to_string());
    }
    let login = text(&gateway.get("/auth/login?rd=%2Fapp%3Fx%3D1").await);
    assert_eq!(field_value(&login, "rd"), "/app?x=1");
    let evil = text(&gateway.get("/auth/login?rd=%2F%2Fevil.example").await);
    assert_eq!(
        field_value(&evil, "rd"),
        "/",
        "a foreign rd is never put in the form"
    );

    let css = gateway.get(&stylesheet.unwrap()).await;
    assert_eq!(css.status, 200);
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(
        css.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
}

#[tokio::test]
async fn form_sign_in_sets_both_cookies_and_goes_to_rd() {
    let gateway = TestGateway::start().await;
    let account = gateway.signup("form-login").await;
    let mut jar = Jar::default();
    // A browser that already holds cookies gets new ones: a new session, no fixation.
    jar.0
        .push(("__Host-portcullis-access".into(), "planted".into()));
    jar.0
        .push(("__Host-portcullis-refresh".into(), "planted".into()));
    let signed_in = gateway
        .submit(
            "/auth/login?rd=%2Fapp%3Fx%3D1",
            &[("email", &account.email), ("password", PASSWORD)],
            &mut jar,
        )
        .await;
    assert_eq!(signed_in.status, 303, "{signed_in:?}");
    assert_eq!(signed_in.header("location"), Some("/app?x=1"));
    let set: Vec<&str> = signed_in
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().unwrap())
        .collect();
    for name in ["__Host-portcullis-access=", "__Host-portcullis-refresh="] {
        let cookie = set
            .iter()
            .find(|cookie| cookie.starts_with(name))
            .expect(name);
        for attribute in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
    }
    assert_ne!(jar.get("__Host-portcullis-access"), Some("planted"));
    assert!(!text(&signed_in).contains(jar.get("__Host-portcullis-access").unwrap()));

    // The access cookie authenticates.
    let mut client = gateway.h1().await;
    let request = client
        .request("GET", "/auth/me")
        .header("cookie", jar.header())
        .body(empty())
        .unwrap();
    let me = client.send_read(request).await;
    assert_eq!(me.status, 200, "{me:?}");
    assert_eq!(me.json()["email"], account.email.as_str());

    // A foreign rd falls back to /.
    let mut jar = Jar::default();
    let signed_in = gateway
        .submit(
            "/auth/login",
            &[
                ("email", &account.email),
                ("password", PASSWORD),
                ("rd", "//evil.example"),
            ],
            &mut jar,
        )
        .await;
    assert_eq!(signed_in.status, 303);
    assert_eq!(signed_in.header("location"), Some("/"));
}

#[tokio::test]
async fn a_bad_password_shows_the_api_detail_in_the_alert() {
    let gateway = TestGateway::start().await;
    let account = gateway.signup("form-bad").await;
    let mut jar = Jar::default();
    let refused = gateway
        .submit(
            "/auth/login?rd=%2Fapp",
            &[("email", &account.email), ("password", "Wrong-Password-1")],
            &mut jar,
        )
        .await;
    assert_eq!(refused.status, 401);
    assert_html(&refused);
    let page = text(&refused);
    assert_eq!(alert(&page), "Invalid email or password");
    assert_eq!(field_value(&page, "email"), account.email);
    assert_eq!(field_value(&page, "rd"), "/app", "rd survives a refusal");
    assert!(
        !page.contains("Wrong-Password-1"),
        "the password is never shown again"
    );
    assert!(jar.get("__Host-portcullis-access").is_none());
}

#[tokio::test]
async fn a_form_without_a_valid_token_is_refused() {
    let gateway = TestGateway::start().await;
    let account = gateway.signup("form-csrf").await;
    let credentials = [("email", account.email.as_str()), ("password", PASSWORD)];

    // No token, no cookie.
    let refused = gateway
        .browser_post("/auth/login", &credentials, &mut Jar::default())
        .await;
    assert_eq!(refused.status, 403);
    assert_html(&refused);
    assert!(
        alert(&text(&refused)).contains("Reload the page"),
        "{refused:?}"
    );
    assert!(refused
        .header("set-cookie")
        .is_some_and(|c| !c.contains("portcullis-access")));

    // A token from this browser's page but another browser's cookie.
    let mut mine = Jar::default();
    let page = text(&gateway.browser_get("/auth/login", &mut mine).await);
    let csrf = field_value(&page, "csrf");
    let mut theirs = Jar::default();
    gateway.browser_get("/auth/login", &mut theirs).await;
    let mut fields = credentials.to_vec();
    fields.push(("csrf", &csrf));
    let refused = gateway
        .browser_post("/auth/login", &fields, &mut theirs)
        .await;
    assert_eq!(refused.status, 403);
    assert!(theirs.get("__Host-portcullis-access").is_none());

    // The same token with its own cookie passes; JSON needs no token at all.
    let signed_in = gateway
        .browser_post("/auth/login", &fields, &mut mine)
        .await;
    assert_eq!(signed_in.status, 303, "{signed_in:?}");
    assert_eq!(gateway.login(&account.email, PASSWORD).await.status, 200);
    // Nor does a JSON logout, which still needs its bearer token.
    let json_logout = gateway
        .call("POST", "/auth/logout", Some(serde_json::json!({})), None)
        .await;
    assert_eq!(json_logout.status, 401);
}

/// The register form, the mail, and the verification page that spends its token only
/// when its button is pressed.
#[tokio::test]
async fn register_then_verify_through_the_mail_link() {
    let gateway = TestGateway::start().await;
    let email = unique_email("form-register");
    let mut jar = Jar::default();
    let weak = gateway
        .submit(
            "/auth/register",
            &[("name", "Ann"), ("email", &email), ("password", "weak")],
            &mut jar,
        )
        .await;
    assert_eq!(weak.status, 422);
    assert_eq!(
        alert(&text(&weak)),
        "Password must be at least 8 characters"
    );

    let registered = gateway
        .submit(
            "/auth/register",
            &[
                ("name", "Ann <b>Lee</b>"),
                ("email", &email),
                ("password", PASSWORD),
            ],
            &mut jar,
        )
        .await;
    assert_eq!(registered.status, 200, "{registered:?}");
    assert_html(&registered);
    assert!(text(&registered).contains("Check your inbox"));

    let mail = gateway.smtp.wait_for(&email, MAIL_WAIT).await;
    let body = mail.body();
    let link_start = body
        .find("https://gateway.test:8443/")
        .expect("a link to the public URL")
        + "https://gateway.test:8443".len();
    let link = body[link_start..]
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string();
    assert!(link.starts_with("/auth/verify-email?token="), "{link}");

    // Opening the link (twice: a mail scanner, then the user) spends nothing.
    let mut jar = Jar::default();
    for _ in 0..2 {
        let page = gateway.browser_get(&link, &mut jar).await;
        assert_eq!(page.status, 200);
        assert_eq!(text(&page).matches("<button type=\"submit\">").count(), 1);
    }
    assert_eq!(
        gateway.login(&email, PASSWORD).await.detail(),
        "Please verify your email first"
    );

    let confirmed = gateway.submit(&link, &[], &mut jar).await;
    assert_eq!(confirmed.status, 200, "{confirmed:?}");
    assert_eq!(confirmed.header("referrer-policy"), Some("no-referrer"));
    let page = text(&confirmed);
    assert!(page.contains("Email address confirmed"), "{page}");
    assert!(page.contains("href=\"/auth/login\""));
    assert_eq!(gateway.login(&email, PASSWORD).await.status, 200);

    // The token is spent now.
    let again = gateway.submit(&link, &[], &mut jar).await;
    assert_eq!(again.status, 400);
    assert_eq!(alert(&text(&again)), "Invalid or expired token");
}

#[tokio::test]
async fn forgot_then_reset_through_the_mail_link_ends_old_sessions() {
    let gateway = TestGateway::start().await;
    let account: Account = gateway.signup("form-reset").await;
    let before = gateway.tokens(&account).await;

    let mut jar = Jar::default();
    for email in [unique_email("nobody"), account.email.clone()] {
        let sent = gateway
            .submit("/auth/forgot-password", &[("email", &email)], &mut jar)
            .await;
        assert_eq!(sent.status, 200, "{sent:?}");
        assert!(
            text(&sent).contains("is on its way"),
            "always the same answer"
        );
    }
    let mail = gateway.smtp.wait_for(&account.email, MAIL_WAIT).await;
    let body = mail.body();
    let link_start =
        body.find("https://gateway.test:8443/").unwrap() + "https://gateway.test:8443".len();
    let link = body[link_start..]
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string();
    assert!(link.starts_with("/auth/reset-password?token="), "{link}");

    let weak = gateway
        .submit(&link, &[("new_password", "weak")], &mut jar)
        .await;
    assert_eq!(weak.status, 422);
    assert_eq!(
        alert(&text(&weak)),
        "Password must be at least 8 characters"
    );
    let reset = gateway
        .submit(&link, &[("new_password", NEW_PASSWORD)], &mut jar)
        .await;
    assert_eq!(reset.status, 200, "{reset:?}");
    let page = text(&reset);
    assert!(page.contains("Password changed"), "{page}");
    assert!(page.contains("href=\"/auth/login\""));

    assert_eq!(
        gateway
            .call("GET", "/auth/me", None, Some(&before.access))
            .await
            .status,
        401,
        "every old session ended"
    );
    assert_eq!(
        gateway.login(&account.email, NEW_PASSWORD).await.status,
        200
    );
}

#[tokio::test]
async fn the_logout_form_ends_the_session_and_clears_the_cookies() {
    let gateway = TestGateway::start().await;
    let account = gateway.signup("form-logout").await;
    let mut jar = Jar::default();
    let signed_in = gateway
        .submit(
            "/auth/login",
            &[("email", &account.email), ("password", PASSWORD)],
            &mut jar,
        )
        .await;
    assert_eq!(signed_in.status, 303);
    let session_cookies = jar.header();

    let logged_out = gateway.submit("/auth/logout", &[], &mut jar).await;
    assert_eq!(logged_out.status, 303, "{logged_out:?}");
    assert_eq!(logged_out.header("location"), Some("/auth/login"));
    let cleared: Vec<&str> = logged_out
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().unwrap())
        .filter(|value| value.contains("Max-Age=0"))
        .collect();
    assert_eq!(cleared.len(), 2, "{logged_out:?}");
    assert!(jar.get("__Host-portcullis-access").is_none());
    assert!(jar.get("__Host-portcullis-refresh").is_none());

    // The old cookies no longer work, anywhere.
    let mut client = gateway.h1().await;
    let request = client
        .request("GET", "/auth/me")
        .header("cookie", session_cookies)
        .body(empty())
        .unwrap();
    assert_eq!(client.send_read(request).await.status, 401);
}

/// A cross-site page can post JSON-looking text as `text/plain` without a CORS preflight:
/// the API answers it as before, but sets no session cookie, so no other site can sign a
/// browser into an account of its choosing.
#[tokio::test]
async fn api_login_sets_cookies_only_for_a_declared_json_body() {
    let gateway = TestGateway::start().await;
    let account = gateway.signup("text-plain").await;
    let body = serde_json::json!({ "email": account.email, "password": PASSWORD }).to_string();
    let mut client = gateway.h1().await;
    let request = client
        .request("POST", "/auth/login")
        .header("content-type", "text/plain")
        .body(full(body))
        .unwrap();
    let login = client.send_read(request).await;
    assert_eq!(login.status, 200, "{login:?}");
    assert!(login.json()["access_token"].is_string());
    assert_eq!(login.header("set-cookie"), None);

    let json = gateway.login(&account.email, PASSWORD).await;
    assert_eq!(json.headers.get_all("set-cookie").iter().count(), 2);
}

/// Instances share configuration, not memory: a form rendered by one is accepted by
/// another, and a form token signed under another configuration is refused.
#[tokio::test]
async fn a_form_from_one_instance_is_accepted_by_another() {
    let first = TestGateway::start().await;
    let second = TestGateway::start().await;
    let account = first.signup("two-instances").await;

    let mut jar = Jar::default();
    let page = text(&first.browser_get("/auth/login", &mut jar).await);
    let csrf = field_value(&page, "csrf");
    let fields = [
        ("email", account.email.as_str()),
        ("password", PASSWORD),
        ("csrf", csrf.as_str()),
    ];
    let signed_in = second.browser_post("/auth/login", &fields, &mut jar).await;
    assert_eq!(signed_in.status, 303, "{signed_in:?}");

    let elsewhere = TestGateway::start_with(|config| {
        config.tokens.hs256_secret = Some(portcullis::config::Secret::new(
            "another-secret-that-is-also-32-bytes-long",
        ));
    })
    .await;
    let mut jar = Jar::default();
    let page = text(&elsewhere.browser_get("/auth/login", &mut jar).await);
    let foreign = field_value(&page, "csrf");
    let fields = [
        ("email", account.email.as_str()),
        ("password", PASSWORD),
        ("csrf", foreign.as_str()),
    ];
    let refused = first.browser_post("/auth/login", &fields, &mut jar).await;
    assert_eq!(refused.status, 403);
}

/// The form counts failures like the API: the attempt that locks says so, and while locked
/// even the right password is refused with the minutes left; past the login limit, 429.
#[tokio::test]
async fn the_login_form_locks_like_the_api_and_is_rate_limited() {
    let gateway = TestGateway::start_with(|config| {
        config.rate_limits.login =
            portcullis::config::RateLimit::new(6, std::time::Duration::from_secs(60));
    })
    .await;
    let account = gateway.signup("form-lock").await;
    let mut jar = Jar::default();
    let mut last = String::new();
    for _ in 0..5 {
        let refused = gateway
            .submit(
                "/auth/login",
                &[("email", &account.email), ("password", "Wrong-Password-1")],
                &mut jar,
            )
            .await;
        assert_eq!(refused.status, 401);
        last = alert(&text(&refused));
    }
    assert_eq!(last, "Too many failed attempts. Account locked.");
    let locked = gateway
        .submit(
            "/auth/login",
            &[("email", &account.email), ("password", PASSWORD)],
            &mut jar,
        )
        .await;
    assert_eq!(locked.status, 401);
    assert!(alert(&text(&locked)).contains("locked"), "{locked:?}");
    assert!(jar.get("__Host-portcullis-access").is_none());

    let limited = gateway
        .submit(
            "/auth/login",
            &[("email", &account.email), ("password", PASSWORD)],
            &mut jar,
        )
        .await;
    assert_eq!(limited.status, 429);
    assert!(limited.header("retry-after").is_some());
    assert_eq!(alert(&text(&limited)), "Too many requests");
}
