//! Which requests are a browser navigating (contract 7), and where such a request is sent to
//! sign in. Pure: header values in, a yes/no or a `Location` out.
//!
//! A navigation is a `GET` or `HEAD` without `Authorization` whose `Accept` prefers HTML:
//! `text/html`, named explicitly, ranks at least as high as `application/json`. Browsers
//! name `text/html` first in every navigation; scripts (`fetch`, XHR) and API clients do not,
//! and `*/*` alone (curl, most libraries) is not a browser. Only navigations are redirected:
//! everyone else keeps the 401 JSON it can act on.

use http::header::{ACCEPT, AUTHORIZATION};
use http::{HeaderMap, Method};

/// Where the sign-in page is; `rd` brings the browser back.
pub const SIGN_IN_PATH: &str = "/auth/login";

/// Whether a request is a browser navigation: `GET`/`HEAD`, no `Authorization`, and an
/// `Accept` that [`prefers_html`].
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    if headers.contains_key(AUTHORIZATION) {
        return false;
    }
    // A list header may be split over several lines; read as one list.
    let accept: Vec<&str> = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    prefers_html(&accept.join(","))
}

/// Whether an `Accept` value prefers HTML: `text/html` is listed with a q above zero, and
/// its q is at least that of `application/json`. Each type's q is that of the most specific
/// range that matches it (RFC 9110 12.5.1: `text/html` over `text/*` over `*/*`), so
/// `text/html;q=0.1, */*` prefers JSON. A range whose q is not a valid qvalue is ignored,
/// as if not sent.
pub fn prefers_html(accept: &str) -> bool {
    let mut html: Option<(u8, u16)> = None;
    let mut json: Option<(u8, u16)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim();
        let Some((kind, subtype)) = media.split_once('/') else {
            continue;
        };
        let Some(q) = quality(parts) else {
            continue;
        };
        let kind = kind.trim().to_ascii_lowercase();
        let subtype = subtype.trim().to_ascii_lowercase();
        let specificity =
            |wanted_kind: &str, wanted_subtype: &str| match (kind.as_str(), subtype.as_str()) {
                (k, s) if k == wanted_kind && s == wanted_subtype => Some(3),
                (k, "*") if k == wanted_kind => Some(2),
                ("*", "*") => Some(1),
                _ => None,
            };
        for (slot, wanted) in [
            (&mut html, ("text", "html")),
            (&mut json, ("application", "json")),
        ] {
            if let Some(rank) = specificity(wanted.0, wanted.1) {
                // The most specific range wins; among equally specific ones, the first.
                if slot.is_none_or(|(held, _)| rank > held) {
                    *slot = Some((rank, q));
                }
            }
        }
    }
    match html {
        // Named explicitly: a wildcard alone is not a browser.
        Some((3, html_q)) if html_q > 0 => json.is_none_or(|(_, json_q)| html_q >= json_q),
        _ => false,
    }
}

/// The range's q in thousandths (1000 when absent), or `None` when it is not a qvalue:
/// `0`, `0.`, up to three decimals, or `1` with zeros.
fn quality<'a>(parameters: impl Iterator<Item = &'a str>) -> Option<u16> {
    for parameter in parameters {
        let Some((name, value)) = parameter.split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("q") {
            continue;
        }
        let value = value.trim();
        let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
        if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let thousandths = fraction
            .bytes()
            .chain(std::iter::repeat(b'0'))
            .take(3)
            .fold(0u16, |sum, digit| sum * 10 + u16::from(digit - b'0'));
        return match whole {
            "0" => Some(thousandths),
            "1" if thousandths == 0 => Some(1000),
            _ => None,
        };
    }
    Some(1000)
}

/// `/auth/login?rd=<target>`: the normalised path and query the browser asked for,
/// percent-encoded as one query value (all but unreserved characters and `/`), so that the
/// sign-in page gets it back exactly once decoded.
pub fn sign_in_location(target: &str) -> String {
    let mut location = String::with_capacity(SIGN_IN_PATH.len() + 4 + target.len() * 3);
    location.push_str(SIGN_IN_PATH);
    location.push_str("?rd=");
    for byte in target.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'/') {
            location.push(char::from(byte));
        } else {
            location.push_str(&format!("%{byte:02X}"));
        }
    }
    location
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const CHROME: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7";
    const FIREFOX: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

    /// (what, Accept, prefers HTML?)
    #[rustfmt::skip]
    const ACCEPT_CASES: &[(&str, &str, bool)] = &[
        // What browsers send for a navigation.
        ("Chrome",                     CHROME,                                   true),
        ("Firefox and Safari",         FIREFOX,                                  true),
        ("bare text/html",             "text/html",                              true),
        ("letter case",                "TEXT/HTML",                              true),
        ("spaces and params",          " text/html ; level=1 ; Q=0.9 , */*;q=0.8", true),
        // Equal rank is enough; lower is not.
        ("equal to JSON",              "application/json, text/html",            true),
        ("equal q",                    "text/html;q=0.5, application/json;q=0.5", true),
        ("below JSON",                 "application/json, text/html;q=0.9",      false),
        ("JSON through a wildcard",    "text/html;q=0.1, */*",                   false),
        ("JSON through application/*", "text/html;q=0.5, application/*",         false),
        ("application/* lower",        "text/html, application/*;q=0.2",         true),
        // The most specific range decides, wherever it stands.
        ("specific JSON lower",        "*/*, application/json;q=0.1, text/html;q=0.2", true),
        ("specific HTML refused",      "text/*, text/html;q=0",                  false),
        // Not browsers: scripts, API clients, curl, images, nothing.
        ("JSON only",                  "application/json",                       false),
        ("wildcard alone",             "*/*",                                    false),
        ("text/* is not text/html",    "text/*",                                 false),
        ("an image",                   "image/avif,image/webp,*/*;q=0.8",        false),
        ("empty",                      "",                                       false),
        ("HTML refused",               "text/html;q=0",                          false),
        ("HTML refused, 0.000",        "text/html;q=0.000, application/json;q=0", false),
        ("xhtml is not text/html",     "application/xhtml+xml",                  false),
        ("no slash",                   "html",                                   false),
        // A q that is no qvalue drops its range.
        ("q above 1",                  "text/html;q=1.5",                        false),
        ("q with 4 decimals",          "text/html;q=0.9999",                     false),
        ("q not a number",             "text/html;q=high",                       false),
        ("bad q on the JSON range",    "application/json;q=x, text/html;q=0.2",  true),
        ("q=1.000",                    "text/html;q=1.000, application/json",    true),
        ("q=0.",                       "text/html;q=0., application/json;q=0",   false),
    ];

    #[test]
    fn accept_prefers_html_only_when_it_names_it_at_least_as_high_as_json() {
        for (what, accept, expected) in ACCEPT_CASES {
            assert_eq!(prefers_html(accept), *expected, "{what}: {accept:?}");
        }
    }

    #[test]
    fn a_navigation_is_a_get_or_head_without_authorization() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(*name, HeaderValue::from_static(value));
            }
            map
        };
        let browser = [("accept", FIREFOX)];
        let cases: &[(Method, HeaderMap, bool)] = &[
            (Method::GET, headers(&browser), true),
            (Method::HEAD, headers(&browser), true),
            (Method::POST, headers(&browser), false),
            (Method::DELETE, headers(&browser), false),
            (Method::OPTIONS, headers(&browser), false),
            (
                Method::GET,
                headers(&[("accept", FIREFOX), ("authorization", "Bearer x")]),
                false,
            ),
            (Method::GET, headers(&[]), false),
            (
                Method::GET,
                headers(&[("accept", "application/json")]),
                false,
            ),
            // Split over two lines, still one list.
            (
                Method::GET,
                headers(&[
                    ("accept", "application/json;q=0.5"),
                    ("accept", "text/html"),
                ]),
                true,
            ),
            (
                Method::GET,
                headers(&[
                    ("accept", "text/html;q=0.5"),
                    ("accept", "application/json"),
                ]),
                false,
            ),
        ];
        for (method, headers, expected) in cases {
            assert_eq!(
                is_navigation(method, headers),
                *expected,
                "{method} {headers:?}"
            );
        }
    }

    #[test]
    fn the_sign_in_location_carries_the_target_encoded_once() {
        let cases = [
            ("/", "/auth/login?rd=/"),
            ("/app", "/auth/login?rd=/app"),
            ("/app?x=1&y=2", "/auth/login?rd=/app%3Fx%3D1%26y%3D2"),
            ("/a%20b?q=%2F", "/auth/login?rd=/a%2520b%3Fq%3D%252F"),
            ("/caf\u{e9}", "/auth/login?rd=/caf%C3%A9"),
            ("/p?next=//evil#x", "/auth/login?rd=/p%3Fnext%3D//evil%23x"),
            ("/x?", "/auth/login?rd=/x%3F"),
            ("/x?a+b", "/auth/login?rd=/x%3Fa%2Bb"),
        ];
        for (target, expected) in cases {
            assert_eq!(sign_in_location(target), expected, "{target}");
        }
    }
}
