//! The browser harness itself, on an open policy: headless Chromium reaches the gateway at
//! its `public_url` through the test CA, gets the upstream's page, and reaches a second
//! origin whose forms post to the gateway (the ground the CSRF flows stand on).

use crate::harness::browser::{page_requests, Browser, Origin, GATEWAY_ORIGIN};
use crate::harness::TestGateway;

fn header<'a>(seen: &'a crate::harness::upstream::Seen, name: &str) -> Option<&'a str> {
    seen.headers
        .get(name)
        .map(|value| value.to_str().expect("an ASCII header"))
}

#[tokio::test]
async fn browser_reaches_the_upstream_at_the_public_url() {
    let gateway = TestGateway::start().await;
    let browser = Browser::start(gateway.https).await;

    browser.goto("/page/hello?greeting=hi%20there").await;

    assert_eq!(browser.status().await, 200);
    assert_eq!(
        browser.gateway_path().await,
        "/page/hello?greeting=hi%20there"
    );
    assert_eq!(
        browser.text("h1").await,
        "/page/hello?greeting=hi%20there",
        "the upstream's page, as the browser renders it"
    );
    assert_eq!(browser.text("#user").await, "anonymous");
    let requests = page_requests(&gateway);
    assert_eq!(requests.len(), 1, "{requests:?}");
    let seen = &requests[0];
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.target, "/page/hello?greeting=hi%20there");
    // The gateway accepted the browser's Host (the public_url's authority) and passed it on
    // as the forwarded host.
    assert_eq!(header(seen, "x-forwarded-host"), Some("gateway.test:8443"));
    assert_eq!(header(seen, "x-forwarded-proto"), Some("https"));
    assert!(
        header(seen, "user-agent").is_some_and(|agent| agent.contains("HeadlessChrome")),
        "a real headless Chromium: {:?}",
        header(seen, "user-agent")
    );
    assert!(
        header(seen, "accept").is_some_and(|accept| accept.starts_with("text/html")),
        "a browser navigation prefers HTML: {:?}",
        header(seen, "accept")
    );
    assert_eq!(header(seen, "sec-fetch-site"), Some("none"));

    let screenshot = browser.screenshot("smoke-upstream-page").await;
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 1000);
}

#[tokio::test]
async fn a_second_origin_is_reachable_and_posts_to_the_gateway_as_another_site() {
    let gateway = TestGateway::start().await;
    let form = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Other origin</title><link rel=\"icon\" href=\"data:,\"></head>\
         <body><h1>Other origin</h1>\
         <form method=\"post\" action=\"{GATEWAY_ORIGIN}/page/transfer\">\
         <input type=\"hidden\" name=\"amount\" value=\"1000\">\
         <button type=\"submit\">Send</button></form></body></html>"
    );
    let other = Origin::start("other.example:8444", vec![("/", form)]).await;
    let browser = Browser::start_with_hosts(gateway.https, &[other.host_rule()]).await;

    browser.goto(&other.url("/?from=test")).await;
    assert_eq!(browser.text("h1").await, "Other origin");
    let (origin, path, _) = browser.location().await;
    assert_eq!(origin, "https://other.example:8444");
    assert_eq!(path, "/?from=test");
    assert_eq!(other.seen_paths(), ["/?from=test"]);
    assert!(page_requests(&gateway).is_empty());

    // The open policy forwards the form's POST, so the upstream shows what a cross-site
    // submission looks like on arrival; the CSRF flows check the gateway refuses it when the
    // route needs a session.
    browser.submit().await;
    browser.wait_for_path("/page/transfer").await;
    assert_eq!(browser.text("h1").await, "/page/transfer");
    let requests = page_requests(&gateway);
    assert_eq!(requests.len(), 1, "{requests:?}");
    let seen = &requests[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body.as_ref(), b"amount=1000");
    assert_eq!(header(seen, "origin"), Some("https://other.example:8444"));
    assert_eq!(header(seen, "sec-fetch-site"), Some("cross-site"));
    assert_eq!(
        header(seen, "content-type"),
        Some("application/x-www-form-urlencoded")
    );
}
