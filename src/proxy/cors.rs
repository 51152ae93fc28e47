//! The gateway's CORS policy: answering preflights and decorating actual
//! responses, so that the browser sees only the gateway's CORS settings.
//!
//! Pure: no I/O. The settings arrive checked and parsed as a
//! [`CorsPolicy`] (the config's rules are the only CORS rules); every header
//! value that does not depend on the request is built from it once in
//! [`Cors::new`].
//!
//! When no origins are configured CORS is disabled: preflights are forwarded
//! like any other request and upstream `Access-Control-*` headers pass through
//! untouched, so an application that does its own CORS keeps working.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;

use crate::config::CorsPolicy;

/// The answer to a possible preflight request.
#[derive(Debug)]
pub enum Preflight {
    /// Not a CORS preflight (or CORS disabled): handle the request normally.
    NotPreflight,
    /// Answer with 204 and these headers.
    Allowed(HeaderMap),
    /// A preflight the policy refuses: answer without CORS headers so the
    /// browser blocks the actual request.
    Refused,
}

/// Compiled CORS policy.
#[derive(Debug, Clone)]
pub struct Cors {
    /// Origins as configured minus any default port, compared ASCII
    /// case-insensitively.
    origins: Vec<Box<str>>,
    any_origin: bool,
    allow_credentials: bool,
    methods: Vec<Method>,
    /// Lower-case header names.
    headers: Vec<HeaderName>,
    allow_methods: HeaderValue,
    /// None when no request headers are allowed.
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: HeaderValue,
}

static ACCESS_CONTROL_PREFIX: &[u8] = b"access-control-";
const ANY: HeaderValue = HeaderValue::from_static("*");
const TRUE: HeaderValue = HeaderValue::from_static("true");
const VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");
const VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

impl Cors {
    /// Builds the response headers the policy always sends.
    pub fn new(policy: &CorsPolicy) -> Cors {
        let headers = policy.allowed_headers.clone();
        let allow_methods = joined(policy.methods.iter().map(Method::as_str));
        let allow_headers =
            (!headers.is_empty()).then(|| joined(headers.iter().map(HeaderName::as_str)));
        let expose_headers = (!policy.expose_headers.is_empty())
            .then(|| joined(policy.expose_headers.iter().map(HeaderName::as_str)));
        Cors {
            origins: policy.origins.clone(),
            any_origin: policy.any_origin,
            allow_credentials: policy.allow_credentials,
            methods: policy.methods.clone(),
            headers,
            allow_methods,
            allow_headers,
            expose_headers,
            max_age: HeaderValue::from(policy.max_age.as_secs()),
        }
    }

    /// The origins configured by name (not `"*"`), normalised.
    pub fn listed_origins(&self) -> &[Box<str>] {
        &self.origins
    }

    /// False when no origins are configured.
    pub fn is_enabled(&self) -> bool {
        self.any_origin || !self.origins.is_empty()
    }

    /// A preflight is OPTIONS with both Origin and Access-Control-Request-Method.
    ///
    /// Allowed when the origin is allowed (ASCII case-insensitive exact match,
    /// or `"*"` configured), the requested method is in allowed_methods, and
    /// every name in Access-Control-Request-Headers (comma-separated,
    /// case-insensitive) is in allowed_headers. The returned headers are
    /// Access-Control-Allow-Origin (the origin itself; `"*"` only when `"*"` is
    /// configured, which excludes credentials), -Allow-Methods,
    /// -Allow-Headers (when any are configured), -Max-Age (seconds),
    /// -Allow-Credentials: true when configured, and Vary: Origin,
    /// Access-Control-Request-Method, Access-Control-Request-Headers.
    pub fn preflight(&self, method: &Method, headers: &HeaderMap) -> Preflight {
        if !self.is_enabled() || method != Method::OPTIONS {
            return Preflight::NotPreflight;
        }
        let (Some(origin), Some(requested_method)) = (
            headers.get(header::ORIGIN),
            headers.get(header::ACCESS_CONTROL_REQUEST_METHOD),
        ) else {
            return Preflight::NotPreflight;
        };
        if !self.origin_allowed(origin)
            || !self.method_allowed(requested_method)
            || !self.request_headers_allowed(headers)
        {
            return Preflight::Refused;
        }

        let mut answer = HeaderMap::with_capacity(8);
        answer.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin(origin),
        );
        answer.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.allow_methods.clone(),
        );
        if let Some(allow_headers) = &self.allow_headers {
            answer.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers.clone());
        }
        answer.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        if self.allow_credentials {
            answer.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
        answer.insert(header::VARY, VARY_PREFLIGHT);
        Preflight::Allowed(answer)
    }

    /// Decorates an actual (non-preflight) response.
    ///
    /// Upstream-sent Access-Control-* headers are removed first, so the
    /// gateway's settings are the only ones a browser sees. When the request
    /// carried an allowed Origin: Access-Control-Allow-Origin,
    /// -Allow-Credentials (when configured) and -Expose-Headers (when
    /// configured) are set. `Vary: Origin` is appended to every response while
    /// CORS is enabled, not only to allowed ones: the response differs by
    /// Origin either way, and a shared cache must not hand a response stored
    /// for one origin (or for none) to another.
    ///
    /// Does nothing while CORS is disabled.
    pub fn apply(&self, request_origin: Option<&HeaderValue>, response_headers: &mut HeaderMap) {
        if !self.is_enabled() {
            return;
        }
        remove_access_control(response_headers);
        if let Some(origin) = request_origin.filter(|o| self.origin_allowed(o)) {
            response_headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                self.allow_origin(origin),
            );
            if self.allow_credentials {
                response_headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
            }
            if let Some(expose) = &self.expose_headers {
                response_headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
            }
        }
        if !varies_by_origin(response_headers) {
            response_headers.append(header::VARY, VARY_ORIGIN);
        }
    }

    fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        let origin = origin.as_bytes();
        // "null" (sandboxed frames, file: pages, some redirects) is never a
        // real site; it is only allowed through the explicit "*".
        self.any_origin
            || self
                .origins
                .iter()
                .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin))
    }

    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        // `any_origin` implies no credentials (refused by the config), so "*" is
        // exactly what the browser needs; cloning the request's value is a
        // reference-count bump, not a copy.
        if self.any_origin {
            ANY
        } else {
            origin.clone()
        }
    }

    fn method_allowed(&self, requested: &HeaderValue) -> bool {
        let requested = requested.as_bytes().trim_ascii();
        self.methods
            .iter()
            .any(|m| m.as_str().as_bytes().eq_ignore_ascii_case(requested))
    }

    fn request_headers_allowed(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .flat_map(|value| value.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|name| !name.is_empty())
            .all(|name| {
                self.headers
                    .iter()
                    .any(|allowed| allowed.as_str().as_bytes().eq_ignore_ascii_case(name))
            })
    }
}

/// Method and header names are tokens, so a list of them is a valid value.
fn joined<'a>(items: impl Iterator<Item = &'a str>) -> HeaderValue {
    let mut text = String::new();
    for item in items {
        if !text.is_empty() {
            text.push_str(", ");
        }
        text.push_str(item);
    }
    HeaderValue::try_from(text).expect("tokens joined by \", \" are a valid header value")
}

fn remove_access_control(headers: &mut HeaderMap) {
    // Allocates only when the upstream actually sent CORS headers.
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if name.as_str().as_bytes().starts_with(ACCESS_CONTROL_PREFIX) {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        headers.remove(name);
    }
}

/// Whether Vary already covers Origin (`Origin` listed, or `*`).
fn varies_by_origin(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::VARY)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|token| token == b"*" || token.eq_ignore_ascii_case(b"origin"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{CorsConfig, ValidationError};

    /// The proxy serves what the config's rules make of the settings.
    fn compile(settings: &CorsConfig) -> Result<Cors, ValidationError> {
        settings.policy().map(|policy| Cors::new(&policy))
    }

    fn settings(origins: &[&str], credentials: bool) -> CorsConfig {
        CorsConfig {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_credentials: credentials,
            allowed_methods: vec!["GET".into(), "POST".into(), "DELETE".into()],
            allowed_headers: vec![
                "Authorization".into(),
                "Content-Type".into(),
                "X-Requested-With".into(),
            ],
            expose_headers: vec!["X-Request-Id".into(), "ETag".into()],
            max_age: Duration::from_secs(600),
        }
    }

    fn request(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for &(name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
        headers.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn construction_validates_settings() {
        let bad_origins = [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://*.example.com",
            "null",
            "https://",
            "ht tp://x",
            "https://user@app.example.com",
        ];
        for origin in bad_origins {
            assert!(compile(&settings(&[origin], false)).is_err(), "{origin}");
        }
        assert!(compile(&settings(&["*"], true)).is_err());
        assert!(compile(&settings(&["*"], false)).is_ok());

        let mut bad = settings(&["https://a.example"], false);
        bad.allowed_methods = vec!["GE T".into()];
        assert!(compile(&bad).is_err());
        // HTTP methods are case-sensitive, so `delete` would never match.
        bad.allowed_methods = vec!["delete".into()];
        assert!(compile(&bad).is_err());
        bad.allowed_methods = vec!["*".into()];
        assert!(compile(&bad).is_err());
        let mut bad = settings(&["https://a.example"], false);
        bad.allowed_headers = vec!["bad header".into()];
        assert!(compile(&bad).is_err());
        let mut bad = settings(&["https://a.example"], false);
        bad.expose_headers = vec!["*".into()];
        assert!(compile(&bad).is_err());
    }

    #[test]
    fn enabled_only_with_origins() {
        assert!(!compile(&CorsConfig::default()).unwrap().is_enabled());
        assert!(compile(&settings(&["https://a.example"], false))
            .unwrap()
            .is_enabled());
        assert!(compile(&settings(&["*"], false)).unwrap().is_enabled());
    }

    /// (method, request headers, expected: None = NotPreflight, Some(allowed?))
    type PreflightCase = (
        Method,
        &'static [(&'static str, &'static str)],
        Option<bool>,
    );

    #[test]
    fn preflight_decisions() {
        let cors = compile(&settings(
            &["https://app.example.com", "http://localhost:3000"],
            true,
        ))
        .unwrap();
        let cases: &[PreflightCase] = &[
            (
                Method::GET,
                &[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "GET"),
                ],
                None,
            ),
            (
                Method::OPTIONS,
                &[("origin", "https://app.example.com")],
                None,
            ),
            (
                Method::OPTIONS,
                &[("access-control-request-method", "GET")],
                None,
            ),
            (
                Method::OPTIONS,
                &[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "GET"),
                ],
                Some(true),
            ),
            (
                Method::OPTIONS,
                &[
                    ("origin", "HTTPS://App.Example.COM"),
                    ("access-control-request-method", "POST"),
                ],
                Some(true),
            ),
            (
                Method::OPTIONS,
                &[
                    ("origin", "http://localhost:3000"),
                    ("access-control-request-method", "DELETE"),
                ],
                Some(true),
            ),
            (
                Method::OPTIONS,
                &[
                    ("origin", "https://evil.example"),
                    ("access-control-request-method", "GET"),
                ],
                Some(false),
            ),
            (
                Method::OPTIONS,
                &[("origin", "null"), ("access-control-request-method", "GET")],
                Some(false),
            ),
            (
                Method::OPTIONS,
                &[
                    ("origin", "https://app.example.com.evil"),
                    ("access-control-request-method", "GET"),
                ],
                Some(false),
            ),
            (
                Method::OPTIONS,
                &[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "PUT"),
                ],
                Some(false),
            ),
            (
                Method::OPTIONS,
                &[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "POST"),
                    (
                        "access-control-request-headers",
                        "content-type, AUTHORIZATION ,x-requested-with",
                    ),
                ],
                Some(true),
            ),
            (
                Method::OPTIONS,
                &[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "POST"),
                    ("access-control-request-headers", "content-type"),
                    ("access-control-request-headers", "x-secret"),
                ],
                Some(false),
            ),
            (
                Method::OPTIONS,
                &[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "POST"),
                    ("access-control-request-headers", ""),
                ],
                Some(true),
            ),
        ];
        for (method, headers, expected) in cases {
            let got = cors.preflight(method, &request(headers));
            match (expected, &got) {
                (None, Preflight::NotPreflight)
                | (Some(true), Preflight::Allowed(_))
                | (Some(false), Preflight::Refused) => {}
                _ => panic!("{method} {headers:?}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn allowed_preflight_headers_with_credentials() {
        let cors = compile(&settings(&["https://app.example.com"], true)).unwrap();
        let headers = request(&[
            ("origin", "https://App.example.com"),
            ("access-control-request-method", "DELETE"),
            ("access-control-request-headers", "authorization"),
        ]);
        let Preflight::Allowed(answer) = cors.preflight(&Method::OPTIONS, &headers) else {
            panic!("expected an allowed preflight");
        };
        assert_eq!(
            get(&answer, "access-control-allow-origin"),
            Some("https://App.example.com")
        );
        assert_eq!(
            get(&answer, "access-control-allow-methods"),
            Some("GET, POST, DELETE")
        );
        assert_eq!(
            get(&answer, "access-control-allow-headers"),
            Some("authorization, content-type, x-requested-with")
        );
        assert_eq!(get(&answer, "access-control-max-age"), Some("600"));
        assert_eq!(
            get(&answer, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(
            get(&answer, "vary"),
            Some("Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
        );
        assert!(answer.get("access-control-expose-headers").is_none());
    }

    #[test]
    fn wildcard_origin_without_credentials() {
        let mut s = settings(&["*"], false);
        s.allowed_methods.clear();
        s.allowed_headers.clear();
        let cors = compile(&s).unwrap();
        let headers = request(&[
            ("origin", "https://anyone.example"),
            ("access-control-request-method", "HEAD"),
        ]);
        let Preflight::Allowed(answer) = cors.preflight(&Method::OPTIONS, &headers) else {
            panic!("expected an allowed preflight");
        };
        assert_eq!(get(&answer, "access-control-allow-origin"), Some("*"));
        assert_eq!(
            get(&answer, "access-control-allow-methods"),
            Some("GET, HEAD, POST")
        );
        assert!(answer.get("access-control-allow-headers").is_none());
        assert!(answer.get("access-control-allow-credentials").is_none());

        // No allowed headers: any requested header refuses the preflight.
        let headers = request(&[
            ("origin", "https://anyone.example"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "x-custom"),
        ]);
        assert!(matches!(
            cors.preflight(&Method::OPTIONS, &headers),
            Preflight::Refused
        ));
    }

    #[test]
    fn default_ports_in_configured_origins_are_ignored() {
        let cors = compile(&settings(
            &[
                "https://app.example.com:443",
                "http://a.example:80",
                "http://b.example:8080",
            ],
            false,
        ))
        .unwrap();
        for (origin, allowed) in [
            ("https://app.example.com", true),
            ("http://a.example", true),
            ("http://b.example:8080", true),
            ("http://b.example", false),
            ("http://app.example.com", false),
        ] {
            let mut response = HeaderMap::new();
            cors.apply(Some(&HeaderValue::from_static(origin)), &mut response);
            assert_eq!(
                response.contains_key("access-control-allow-origin"),
                allowed,
                "{origin}"
            );
        }
    }

    #[test]
    fn apply_to_actual_responses() {
        let cors = compile(&settings(&["https://app.example.com"], true)).unwrap();
        let upstream = || {
            request(&[
                ("access-control-allow-origin", "*"),
                ("access-control-allow-credentials", "true"),
                ("access-control-allow-headers", "*"),
                ("content-type", "application/json"),
                ("vary", "Accept-Encoding"),
            ])
        };

        let mut response = upstream();
        cors.apply(
            Some(&HeaderValue::from_static("https://app.example.com")),
            &mut response,
        );
        assert_eq!(
            get(&response, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            get(&response, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(
            get(&response, "access-control-expose-headers"),
            Some("x-request-id, etag")
        );
        assert!(response.get("access-control-allow-headers").is_none());
        let vary: Vec<&str> = response
            .get_all("vary")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(vary, ["Accept-Encoding", "Origin"]);
        assert_eq!(get(&response, "content-type"), Some("application/json"));

        // Disallowed or missing origin: upstream CORS removed, nothing added.
        for origin in [Some(HeaderValue::from_static("https://evil.example")), None] {
            let mut response = upstream();
            cors.apply(origin.as_ref(), &mut response);
            assert!(
                response
                    .keys()
                    .all(|n| !n.as_str().starts_with("access-control-")),
                "{origin:?}: {response:?}"
            );
            assert_eq!(response.get_all("vary").iter().count(), 2);
        }
    }

    #[test]
    fn apply_does_not_duplicate_vary() {
        let cors = compile(&settings(&["https://app.example.com"], false)).unwrap();
        let origin = HeaderValue::from_static("https://app.example.com");
        for existing in ["origin", "Accept-Encoding, Origin", "*"] {
            let mut response = request(&[("vary", existing)]);
            cors.apply(Some(&origin), &mut response);
            assert_eq!(response.get_all("vary").iter().count(), 1, "{existing}");
        }
    }

    #[test]
    fn disabled_cors_leaves_everything_alone() {
        let cors = compile(&CorsConfig::default()).unwrap();
        let headers = request(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "GET"),
        ]);
        assert!(matches!(
            cors.preflight(&Method::OPTIONS, &headers),
            Preflight::NotPreflight
        ));

        let mut response = request(&[("access-control-allow-origin", "https://app.example.com")]);
        let before = response.clone();
        cors.apply(
            Some(&HeaderValue::from_static("https://app.example.com")),
            &mut response,
        );
        assert_eq!(response, before);
    }
}
