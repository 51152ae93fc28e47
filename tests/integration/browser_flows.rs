//! The sign-in flows of contract 7 in a real browser: headless Chromium signs in, registers,
//! resets a password, keeps its session across an expired access token, signs out, and is
//! attacked from other origins, all through the gateway's own pages and a real upstream. The
//! pages are used as their contract gives them: each field's `id` is its `name`, each form
//! has one `button[type=submit]`, errors are in `role="alert"`, each page has one `<h1>`.

use std::time::Duration;

use crate::harness::browser::{page_requests, Browser, Origin, GATEWAY_ORIGIN};
use crate::harness::identity::{Account, MAIL_WAIT};
use crate::harness::smtp::ReceivedMail;
use crate::harness::upstream::Seen;
use crate::harness::TestGateway;

const ACCESS: &str = "__Host-portcullis-access";
const REFRESH: &str = "__Host-portcullis-refresh";
const NEW_PASSWORD: &str = "Another-Secret-77";

/// Every application path needs a session; the gateway's own `/auth` pages are its own.
const POLICY: &str = r#"
version: 1
roles: [user, manager, admin]
rules:
  - name: app
    paths: ["/**"]
    allow: authenticated
"#;

async fn protected_gateway() -> TestGateway {
    TestGateway::with_policy(POLICY, |_| {}).await.0
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers
        .get(name)
        .map(|value| value.to_str().expect("an ASCII header"))
}

/// Percent-decodes a query value (`+` is a space in form encoding).
fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// The decoded value of `name` in the query of `path_and_query`.
fn query_value(path_and_query: &str, name: &str) -> Option<String> {
    let (_, query) = path_and_query.split_once('?')?;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| decode(value))
}

/// The link to `path` that `mail` carries, checked to be on the public URL.
fn mail_link(mail: &ReceivedMail, path: &str) -> String {
    let prefix = format!("{GATEWAY_ORIGIN}{path}?token=");
    let body = mail.body();
    let start = body
        .find(&prefix)
        .unwrap_or_else(|| panic!("a link starting {prefix} in {body}"));
    let link: String = body[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '<' && *c != '>')
        .collect();
    assert_eq!(
        Some(link[prefix.len()..].to_string()),
        mail.token(),
        "the link carries the mail's token"
    );
    link
}

/// The page contract every sign-in page keeps: one `<h1>`, every field's `id` its `name`.
async fn assert_page_contract(browser: &Browser) {
    assert_eq!(browser.find_all("h1").await.len(), 1, "one <h1>");
    for field in browser.find_all("input[name]").await {
        let name = field.attr("name").await.unwrap();
        let id = field.attr("id").await.unwrap();
        let kind = field.attr("type").await.unwrap().unwrap_or_default();
        if kind != "hidden" {
            assert_eq!(id, name, "a visible field's id is its name");
        }
    }
}

/// The value of the hidden field `name` in the current page.
async fn hidden(browser: &Browser, name: &str) -> String {
    browser
        .find(&format!("input[type=hidden][name={name}]"))
        .await
        .attr("value")
        .await
        .unwrap()
        .unwrap_or_default()
}

async fn alerts(browser: &Browser) -> Vec<String> {
    let mut texts = Vec::new();
    for alert in browser.find_all("[role=alert]").await {
        texts.push(alert.text().await.unwrap());
    }
    texts
}

/// On the sign-in page: types the credentials and submits.
async fn sign_in_here(browser: &Browser, email: &str, password: &str) {
    assert!(
        browser.gateway_path().await.starts_with("/auth/login"),
        "on the sign-in page"
    );
    browser.fill("email", email).await;
    browser.fill("password", password).await;
    browser.submit().await;
}

/// Opens `path`, is sent to sign in, signs in as `account` and is back on `path`.
async fn sign_in_via(browser: &Browser, path: &str, account: &Account) {
    browser.goto(path).await;
    assert_login_page_for(browser, path).await;
    sign_in_here(browser, &account.email, &account.password).await;
    browser.wait_for_path(path).await;
}

/// The browser is on the sign-in page with `rd` set to `path`.
async fn assert_login_page_for(browser: &Browser, path: &str) {
    let at = browser.gateway_path().await;
    assert!(at.starts_with("/auth/login?"), "sent to sign in: {at}");
    assert_eq!(query_value(&at, "rd").as_deref(), Some(path), "{at}");
}

/// The session cookies the browser holds now.
async fn session_cookies(browser: &Browser) -> (Option<String>, Option<String>) {
    (browser.cookie(ACCESS).await, browser.cookie(REFRESH).await)
}

/// Whether the API still takes `refresh` (a session that was ended refuses it).
async fn refresh_works(gateway: &TestGateway, refresh: &str) -> bool {
    let response = gateway
        .post(
            "/auth/refresh",
            serde_json::json!({ "refresh_token": refresh }),
        )
        .await;
    assert!(
        response.status == 200 || response.status == 401,
        "{response:?}"
    );
    response.status == 200
}

/// No request the upstream saw carried a session cookie (contract 7 names the two).
fn assert_no_session_cookie_forwarded(gateway: &TestGateway) {
    for seen in gateway.upstream.seen() {
        for cookie in seen.headers.get_all("cookie") {
            let cookie = cookie.to_str().unwrap();
            assert!(
                !cookie.contains(ACCESS) && !cookie.contains(REFRESH),
                "the upstream saw a session cookie on {}: {cookie}",
                seen.target
            );
        }
    }
}

#[tokio::test]
async fn an_anonymous_visit_signs_in_and_returns_to_the_page_with_its_query() {
    let gateway = protected_gateway().await;
    let account = gateway.signup("browser-login").await;
    let browser = Browser::start(gateway.https).await;
    let page = "/page/reports/2026?year=2026&q=a%20b";

    browser.goto(page).await;
    assert_login_page_for(&browser, page).await;
    assert_eq!(browser.status().await, 200);
    assert_page_contract(&browser).await;
    assert_eq!(hidden(&browser, "rd").await, page);
    assert!(!hidden(&browser, "csrf").await.is_empty(), "a form token");
    assert!(alerts(&browser).await.is_empty());
    assert!(
        page_requests(&gateway).is_empty(),
        "nothing reached the upstream before sign-in"
    );
    browser.screenshot("sign-in").await;

    sign_in_here(&browser, &account.email, &account.password).await;
    browser.wait_for_path(page).await;
    assert_eq!(browser.text("h1").await, page);
    assert_eq!(browser.text("#user").await, account.email);

    let requests = page_requests(&gateway);
    assert_eq!(requests.len(), 1, "{requests:?}");
    let seen = &requests[0];
    assert_eq!(seen.target, page);
    assert_eq!(header(seen, "x-auth-user-id"), Some(account.id.as_str()));
    assert_eq!(header(seen, "x-auth-email"), Some(account.email.as_str()));
    assert_eq!(header(seen, "x-auth-role"), Some("user"));
    assert_no_session_cookie_forwarded(&gateway);

    let (access, refresh) = session_cookies(&browser).await;
    assert!(
        access.is_some() && refresh.is_some(),
        "both session cookies"
    );
    for name in [ACCESS, REFRESH] {
        let cookie = browser.cookie_details(name).await.unwrap();
        assert_eq!(cookie.secure(), Some(true), "{cookie}");
        assert_eq!(cookie.http_only(), Some(true), "{cookie}");
        assert_eq!(
            cookie.same_site().map(|same_site| same_site.to_string()),
            Some("Lax".to_string()),
            "{cookie}"
        );
        assert_eq!(cookie.path(), Some("/"), "{cookie}");
        assert_eq!(cookie.domain(), Some("gateway.test"), "host-only: {cookie}");
    }
    // HttpOnly: the page's scripts cannot read them.
    let visible = browser.script("return document.cookie").await;
    assert!(
        !visible.as_str().unwrap_or("").contains("portcullis"),
        "{visible}"
    );
    browser.screenshot("signed-in-upstream-page").await;
}

#[tokio::test]
async fn a_wrong_password_shows_an_error_on_the_sign_in_page() {
    let gateway = protected_gateway().await;
    let account = gateway.signup("browser-wrong").await;
    let browser = Browser::start(gateway.https).await;

    browser.goto("/page/secret").await;
    assert_login_page_for(&browser, "/page/secret").await;
    sign_in_here(&browser, &account.email, "Not-The-Password-1").await;

    assert!(browser.gateway_path().await.starts_with("/auth/login"));
    let alerts = alerts(&browser).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(!alerts[0].trim().is_empty());
    assert_page_contract(&browser).await;
    assert_eq!(session_cookies(&browser).await, (None, None));
    assert!(page_requests(&gateway).is_empty());
    browser.screenshot("sign-in-error").await;

    // The form still takes the right password, and still goes where it was asked to.
    sign_in_here(&browser, &account.email, &account.password).await;
    browser.wait_for_path("/page/secret").await;
    assert_eq!(browser.text("#user").await, account.email);
}

#[tokio::test]
async fn register_then_the_mailed_link_and_its_button_verify_then_sign_in() {
    let gateway = protected_gateway().await;
    let browser = Browser::start(gateway.https).await;
    let email = crate::harness::identity::unique_email("browser-register");
    let password = crate::harness::identity::PASSWORD;

    browser.goto("/auth/register").await;
    assert_eq!(browser.status().await, 200);
    assert_page_contract(&browser).await;
    browser.screenshot("register").await;
    browser.fill("name", "Browser User").await;
    browser.fill("email", &email).await;
    browser.fill("password", password).await;
    browser.submit().await;

    // The check-your-inbox page: no form to fill again, no error.
    assert_eq!(browser.status().await, 200);
    assert!(
        alerts(&browser).await.is_empty(),
        "{:?}",
        alerts(&browser).await
    );
    assert_eq!(browser.find_all("h1").await.len(), 1);
    assert!(browser.find_all("#password").await.is_empty());
    browser.screenshot("check-inbox").await;

    let mail = gateway.smtp.wait_for(&email, MAIL_WAIT).await;
    let link = mail_link(&mail, "/auth/verify-email");
    let verified = || async {
        crate::harness::identity::sql(&format!(
            "SELECT is_verified FROM users WHERE email = '{email}'"
        ))
        .await[0]
            .get::<_, bool>(0)
    };

    // Opening the link alone (as a mail scanner would) verifies nothing.
    browser.goto(&link).await;
    assert_eq!(browser.status().await, 200);
    assert_page_contract(&browser).await;
    assert_eq!(Some(hidden(&browser, "token").await), mail.token());
    browser.screenshot("verify").await;
    assert!(!verified().await, "a GET never spends the token");

    browser.submit().await;
    assert!(
        alerts(&browser).await.is_empty(),
        "{:?}",
        alerts(&browser).await
    );
    assert!(verified().await, "the button confirmed the address");
    browser.screenshot("verified").await;

    let account = Account {
        id: String::new(),
        email: email.clone(),
        password: password.to_string(),
    };
    sign_in_via(&browser, "/page/welcome", &account).await;
    assert_eq!(browser.text("#user").await, email);
    let seen = page_requests(&gateway).pop().unwrap();
    assert_eq!(header(&seen, "x-auth-email"), Some(email.as_str()));
}

#[tokio::test]
async fn a_password_reset_by_mail_ends_old_sessions_and_the_new_password_signs_in() {
    let gateway = protected_gateway().await;
    let account = gateway.signup("browser-reset").await;
    let old = gateway.tokens(&account).await;
    let browser = Browser::start(gateway.https).await;

    browser.goto("/auth/forgot-password").await;
    assert_eq!(browser.status().await, 200);
    assert_page_contract(&browser).await;
    browser.screenshot("forgot").await;
    browser.fill("email", &account.email).await;
    browser.submit().await;
    assert!(
        alerts(&browser).await.is_empty(),
        "{:?}",
        alerts(&browser).await
    );
    browser.screenshot("forgot-sent").await;

    // The first mail was the verification; the next is the reset.
    let mail = gateway.smtp.wait_for(&account.email, MAIL_WAIT).await;
    let link = mail_link(&mail, "/auth/reset-password");
    browser.goto(&link).await;
    assert_eq!(browser.status().await, 200);
    assert_page_contract(&browser).await;
    assert_eq!(Some(hidden(&browser, "token").await), mail.token());
    browser.screenshot("reset").await;
    browser.fill("new_password", NEW_PASSWORD).await;
    browser.submit().await;
    assert!(
        alerts(&browser).await.is_empty(),
        "{:?}",
        alerts(&browser).await
    );
    browser.screenshot("reset-done").await;

    assert!(
        !refresh_works(&gateway, &old.refresh).await,
        "the session from before the reset is gone"
    );
    let old_password = gateway.login(&account.email, &account.password).await;
    assert_eq!(old_password.status, 401, "{old_password:?}");

    let renewed = Account {
        password: NEW_PASSWORD.to_string(),
        ..account.clone()
    };
    sign_in_via(&browser, "/page/after-reset", &renewed).await;
    assert_eq!(browser.text("#user").await, account.email);
}

#[tokio::test]
async fn an_expired_access_cookie_is_renewed_silently_on_the_next_navigation() {
    let (gateway, _) = TestGateway::with_policy(POLICY, |config| {
        config.tokens.access_ttl = Duration::from_secs(60);
    })
    .await;
    let account = gateway.signup("browser-refresh").await;
    let browser = Browser::start(gateway.https).await;
    sign_in_via(&browser, "/page/first", &account).await;
    let (access, refresh) = session_cookies(&browser).await;
    let (access, refresh) = (access.unwrap(), refresh.unwrap());

    // Past the access token's lifetime by the gateway's clock; the browser's cookie jar
    // still holds it, so the gateway sees an expired token and a valid refresh cookie.
    gateway.clock.advance(Duration::from_secs(5 * 60));
    browser.goto("/page/later?n=2").await;

    browser.wait_for_path("/page/later?n=2").await;
    assert_eq!(browser.text("#user").await, account.email);
    let seen = page_requests(&gateway).pop().unwrap();
    assert_eq!(seen.target, "/page/later?n=2");
    assert_eq!(header(&seen, "x-auth-email"), Some(account.email.as_str()));
    assert_eq!(header(&seen, "x-auth-user-id"), Some(account.id.as_str()));
    let (new_access, new_refresh) = session_cookies(&browser).await;
    let (new_access, new_refresh) = (new_access.unwrap(), new_refresh.unwrap());
    assert_ne!(new_access, access, "a new access cookie");
    assert_ne!(new_refresh, refresh, "the session was rotated");
    assert_no_session_cookie_forwarded(&gateway);

    // The renewed cookies carry on without another renewal.
    browser.goto("/page/third").await;
    browser.wait_for_path("/page/third").await;
    assert_eq!(browser.cookie(REFRESH).await.unwrap(), new_refresh);
}

#[tokio::test]
async fn signing_out_ends_the_session_and_the_next_visit_asks_to_sign_in() {
    let gateway = protected_gateway().await;
    let account = gateway.signup("browser-logout").await;
    let browser = Browser::start(gateway.https).await;
    sign_in_via(&browser, "/page/inside", &account).await;
    let refresh = browser.cookie(REFRESH).await.unwrap();

    browser.goto("/auth/logout").await;
    assert_eq!(browser.status().await, 200);
    assert_page_contract(&browser).await;
    browser.screenshot("logout").await;
    browser.submit().await;

    assert!(
        browser.gateway_path().await.starts_with("/auth/login"),
        "sent to the sign-in page"
    );
    assert_eq!(session_cookies(&browser).await, (None, None));
    assert!(
        !refresh_works(&gateway, &refresh).await,
        "the session ended"
    );

    let before = page_requests(&gateway).len();
    browser.goto("/page/inside").await;
    assert_login_page_for(&browser, "/page/inside").await;
    assert_eq!(page_requests(&gateway).len(), before, "not forwarded");
}

/// A page on another origin whose form posts to a protected route of the gateway; with
/// `auto`, it submits itself as soon as it loads.
fn attack_page(auto: bool) -> String {
    let onload = if auto {
        " onload=\"document.forms[0].submit()\""
    } else {
        ""
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Win a prize</title>\
         <link rel=\"icon\" href=\"data:,\"></head><body{onload}><h1>Win a prize</h1>\
         <form method=\"post\" action=\"{GATEWAY_ORIGIN}/page/transfer\">\
         <input type=\"hidden\" name=\"amount\" value=\"1000\">\
         <button type=\"submit\">Claim</button></form></body></html>"
    )
}

#[tokio::test]
async fn a_form_posted_from_another_origin_is_refused_and_never_forwarded() {
    let gateway = protected_gateway().await;
    let account = gateway.signup("browser-csrf").await;
    // Same site, other origin: the browser sends the SameSite=Lax cookies along, so only
    // the gateway's origin check stands in the way. Another site: the browser withholds them.
    let sibling = Origin::start("sibling.gateway.test:8444", vec![("/", attack_page(false))]).await;
    let evil = Origin::start("evil.example:8445", vec![("/", attack_page(true))]).await;
    let browser =
        Browser::start_with_hosts(gateway.https, &[sibling.host_rule(), evil.host_rule()]).await;
    sign_in_via(&browser, "/page/account", &account).await;

    // The control: the same session posts from the gateway's own origin, and it passes (the
    // refusals below are the origin check, not the policy or the method).
    browser.submit().await;
    assert_eq!(browser.gateway_path().await, "/page/account");
    assert_eq!(browser.status().await, 200);
    let own = page_requests(&gateway).pop().unwrap();
    assert_eq!(
        (own.method.as_str(), own.target.as_str()),
        ("POST", "/page/account")
    );
    assert_eq!(own.body.as_ref(), b"note=same-origin");
    assert_eq!(header(&own, "x-auth-email"), Some(account.email.as_str()));

    // Same site, other origin: the person clicks the attacker's button.
    browser.goto(&sibling.url("/")).await;
    assert_eq!(browser.text("h1").await, "Win a prize");
    browser.submit().await;
    assert_eq!(browser.gateway_path().await, "/page/transfer");
    assert_eq!(browser.status().await, 403, "refused as cross-origin");
    browser.screenshot("csrf-refused").await;

    // Another site: the page submits itself on load.
    browser.goto(&evil.url("/")).await;
    browser.wait_for_path("/page/transfer").await;
    assert_eq!(
        browser.status().await,
        401,
        "cross-site: no session cookie was sent, so no session"
    );

    let attacks: Vec<Seen> = gateway
        .upstream
        .seen()
        .into_iter()
        .filter(|seen| seen.target == "/page/transfer")
        .collect();
    assert!(attacks.is_empty(), "the upstream saw {attacks:?}");
    // The session itself is untouched: the gateway's own origin still gets through.
    browser.goto("/page/account").await;
    browser.wait_for_path("/page/account").await;
    assert_eq!(browser.text("#user").await, account.email);
}

#[tokio::test]
async fn a_sign_in_asked_to_return_off_origin_lands_on_the_gateways_root() {
    let gateway = protected_gateway().await;
    let account = gateway.signup("browser-rd").await;
    let evil = Origin::start("evil.example:443", vec![("/", "evil".to_string())]).await;
    let browser = Browser::start_with_hosts(gateway.https, &[evil.host_rule()]).await;

    let attempts = [
        "//evil.example",
        "%2F%2Fevil.example",
        "/%5Cevil.example",
        "https%3A%2F%2Fevil.example%2F",
        "/%09/evil.example",
    ];
    for (i, rd) in attempts.into_iter().enumerate() {
        if i > 0 {
            // Signed out again, as a new visitor would be (the last round left it on `/`).
            browser.forget_cookies().await;
        }
        browser.goto(&format!("/auth/login?rd={rd}")).await;
        assert_page_contract(&browser).await;
        sign_in_here(&browser, &account.email, &account.password).await;
        browser.wait_for_path("/").await;
        let seen = page_requests(&gateway)
            .pop()
            .expect("the root was forwarded");
        assert_eq!(seen.target, "/", "rd={rd}");
        assert_eq!(header(&seen, "x-auth-email"), Some(account.email.as_str()));
    }
    assert!(evil.seen_paths().is_empty(), "{:?}", evil.seen_paths());
}
