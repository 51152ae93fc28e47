//! Forward-auth (contract 8): what request a proxy in front of the gateway asks about when it
//! calls `/auth/forward`. Pure: the request head the proxy sent in, the original request (or
//! a 400) out. The gateway judges that original request by the decision path of a forwarded
//! one (`Gateway::judge`); only reading it is here.
//!
//! A proxy names the original request in exactly one of three ways:
//! - nginx `auth_request`: `X-Original-Method` and `X-Original-URI`;
//! - Traefik `forwardAuth` and Caddy `forward_auth`: `X-Forwarded-Method` and
//!   `X-Forwarded-Uri`;
//! - Envoy `ext_authz` in HTTP mode: the request itself, its method the original's and its
//!   target the original's behind the path prefix `/auth/forward`.
//!
//! The original host is `X-Forwarded-Host` when sent, else the request's own `Host`. The
//! caller checks that the peer is a trusted proxy before any of this is believed.
//!
//! Everything that could be read two ways is refused, never guessed: two of the ways at once,
//! a header sent twice or in a second spelling (`X_Original_URI`), a method without its URI
//! or the reverse, an absolute URI naming another host, a `Forwarded-Proto` other than
//! `http` or `https`. The path itself is checked by the caller, strictly
//! (`path::canonical_target`): the gateway cannot rewrite what the proxy forwards.

use http::header::HeaderValue;
use http::{HeaderMap, Method};

use crate::error::GatewayError;

/// Where the gateway answers forward-auth; Envoy appends the original path to it.
pub const PATH: &str = "/auth/forward";

/// The request a proxy asks about, as it holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub method: Method,
    pub host: HeaderValue,
    /// Origin form (path and query) exactly as the proxy named it: not yet normalised.
    pub target: String,
}

/// Whether a request is a forward-auth: its normalised path is [`PATH`] or under it, or its
/// raw target starts under it (so that `/auth/forward/../x` is refused as a forward-auth
/// rather than forwarded as `/x`).
pub fn asks(raw_target: &str, path: &str) -> bool {
    let under = |path: &str| {
        path.strip_prefix(PATH)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
    };
    under(path) || under(raw_target)
}

/// The original request named by a forward-auth request's `method`, raw `target`, `headers`
/// and `host` (its own, already checked).
pub fn original_request(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    host: &HeaderValue,
) -> Result<Original, GatewayError> {
    let nginx_uri = single(headers, "x-original-uri")?;
    let nginx_method = single(headers, "x-original-method")?;
    let forwarded_uri = single(headers, "x-forwarded-uri")?;
    let forwarded_method = single(headers, "x-forwarded-method")?;
    // Envoy sends the prefix and then the original path, which starts with '/'.
    let envoy_target = target
        .strip_prefix(PATH)
        .filter(|rest| rest.starts_with('/'));

    let (method, uri) = match (nginx_uri, forwarded_uri, envoy_target) {
        (Some(uri), None, None) if forwarded_method.is_none() => (
            parse_method(nginx_method.ok_or_else(|| missing("X-Original-Method"))?)?,
            uri_text(uri)?,
        ),
        (None, Some(uri), None) if nginx_method.is_none() => (
            parse_method(forwarded_method.ok_or_else(|| missing("X-Forwarded-Method"))?)?,
            uri_text(uri)?,
        ),
        (None, None, Some(rest)) if nginx_method.is_none() && forwarded_method.is_none() => {
            (method.clone(), rest)
        }
        (None, None, None) if nginx_method.is_none() && forwarded_method.is_none() => {
            return Err(GatewayError::bad_request(
                "Forward-auth needs the original request: X-Original-URI, X-Forwarded-Uri or a path under /auth/forward",
            ))
        }
        (None, None, None) => return Err(missing("original URI")),
        _ => {
            return Err(GatewayError::bad_request(
                "Ambiguous original request: named in more than one way",
            ))
        }
    };

    let host = match single(headers, "x-forwarded-host")? {
        Some(forwarded) if !super::is_valid_host(forwarded) => {
            return Err(GatewayError::bad_request("Invalid X-Forwarded-Host header"))
        }
        Some(forwarded) => forwarded.clone(),
        None => host.clone(),
    };
    if let Some(proto) = single(headers, "x-forwarded-proto")? {
        let proto = proto.as_bytes();
        if !(proto.eq_ignore_ascii_case(b"https") || proto.eq_ignore_ascii_case(b"http")) {
            return Err(GatewayError::bad_request(
                "Invalid X-Forwarded-Proto header",
            ));
        }
    }
    let target = origin_form(uri, &host)?;
    Ok(Original {
        method,
        host,
        target: target.to_string(),
    })
}

/// Whether the original request is a WebSocket handshake, for the origin check of a
/// cookie-authenticated one (contract 6.12). A proxy may have dropped the hop-by-hop
/// `Upgrade` and `Connection` from what it sends, so `Sec-WebSocket-Key` says so too.
pub fn asks_websocket(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::SEC_WEBSOCKET_KEY)
        || headers
            .get_all(http::header::UPGRADE)
            .iter()
            .any(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// The one value of the header `name` (lower case, `-` between words), counting every
/// spelling that folds to it as a proxy or framework may (`X_Original_URI`, `x.original.uri`):
/// `None` when absent, a 400 when there is more than one.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h HeaderValue>, GatewayError> {
    let mut found = None;
    for (header, value) in headers {
        if !folds_to(header.as_str(), name) {
            continue;
        }
        if found.is_some() {
            return Err(GatewayError::bad_request(format!(
                "Ambiguous original request: {} sent more than once",
                display(name)
            )));
        }
        found = Some(value);
    }
    Ok(found)
}

/// Whether `header` is `name` once every character other than a letter or digit is read as
/// `-` (the folding of contract 6.9).
fn folds_to(header: &str, name: &str) -> bool {
    header.len() == name.len()
        && header.bytes().zip(name.bytes()).all(|(a, b)| {
            let a = if a.is_ascii_alphanumeric() {
                a.to_ascii_lowercase()
            } else {
                b'-'
            };
            a == b
        })
}

/// The header's name as people write it, for a client-facing detail.
fn display(name: &str) -> String {
    name.split('-')
        .map(|word| match word {
            "uri" => "URI".to_string(),
            word => {
                let mut chars = word.chars();
                chars.next().map_or_else(String::new, |first| {
                    first.to_ascii_uppercase().to_string() + chars.as_str()
                })
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn missing(what: &str) -> GatewayError {
    GatewayError::bad_request(format!("Missing original request: no {what}"))
}

fn parse_method(value: &HeaderValue) -> Result<Method, GatewayError> {
    if value.is_empty() {
        return Err(GatewayError::bad_request("Invalid original method"));
    }
    Method::from_bytes(value.as_bytes())
        .map_err(|_| GatewayError::bad_request("Invalid original method"))
}

fn uri_text(value: &HeaderValue) -> Result<&str, GatewayError> {
    value
        .to_str()
        .ok()
        .filter(|text| !text.is_empty())
        .ok_or_else(|| GatewayError::bad_request("Invalid original URI"))
}

/// The origin form of the original URI: as it is when it starts with `/`; for an absolute
/// URI, its path and query, provided its authority is the original host (contract 6.3).
fn origin_form<'u>(uri: &'u str, host: &HeaderValue) -> Result<&'u str, GatewayError> {
    if uri.starts_with('/') {
        return Ok(uri);
    }
    let scheme_end = ["https://", "http://"]
        .iter()
        .find(|scheme| {
            uri.get(..scheme.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(scheme))
        })
        .map(|scheme| scheme.len())
        .ok_or_else(|| GatewayError::bad_request("Invalid original URI"))?;
    let rest = &uri[scheme_end..];
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) if rest.as_bytes()[at] == b'/' => (&rest[..at], &rest[at..]),
        // `http://host?x` and `http://host` name the root.
        _ => return Err(GatewayError::bad_request("Invalid original URI")),
    };
    if !authority.as_bytes().eq_ignore_ascii_case(host.as_bytes()) {
        return Err(GatewayError::bad_request(
            "Original URI names another host than the original Host",
        ));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    /// (what, method of the request, its target, its headers, the original it names or the
    /// status and detail it is refused with). The request's own `Host` is `app.test`.
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
        Result<(&'static str, &'static str, &'static str), &'static str>,
    );

    #[rustfmt::skip]
    const CASES: &[Case] = &[
        // nginx auth_request.
        ("nginx", "GET", "/auth/forward", &[("x-original-method", "POST"), ("x-original-uri", "/admin/x?y=1")], Ok(("POST", "app.test", "/admin/x?y=1"))),
        ("nginx, host from X-Forwarded-Host", "GET", "/auth/forward", &[("x-original-method", "GET"), ("x-original-uri", "/"), ("x-forwarded-host", "other.test")], Ok(("GET", "other.test", "/"))),
        ("nginx, raw path kept for the caller's checks", "GET", "/auth/forward", &[("x-original-method", "GET"), ("x-original-uri", "/a/../b")], Ok(("GET", "app.test", "/a/../b"))),
        ("nginx, absolute URI of the same host", "GET", "/auth/forward", &[("x-original-method", "GET"), ("x-original-uri", "HTTPS://App.Test/x")], Ok(("GET", "app.test", "/x"))),
        ("nginx, no method", "GET", "/auth/forward", &[("x-original-uri", "/x")], Err("Missing original request: no X-Original-Method")),
        ("nginx, no URI", "GET", "/auth/forward", &[("x-original-method", "GET")], Err("Missing original request: no original URI")),
        ("nginx, empty URI", "GET", "/auth/forward", &[("x-original-method", "GET"), ("x-original-uri", "")], Err("Invalid original URI")),
        ("nginx, empty method", "GET", "/auth/forward", &[("x-original-method", ""), ("x-original-uri", "/")], Err("Invalid original method")),
        ("nginx, two URIs", "GET", "/auth/forward", &[("x-original-method", "GET"), ("x-original-uri", "/public"), ("x-original-uri", "/admin")], Err("Ambiguous original request: X-Original-URI sent more than once")),
        ("nginx, a second spelling", "GET", "/auth/forward", &[("x-original-method", "GET"), ("x-original-uri", "/public"), ("x_original_uri", "/admin")], Err("Ambiguous original request: X-Original-URI sent more than once")),
        ("nginx, two methods", "GET", "/auth/forward", &[("x-original-method", "GET"), ("x-original-method", "DELETE"), ("x-original-uri", "/")], Err("Ambiguous original request: X-Original-Method sent more than once")),
        ("nginx, absolute URI of another host", "GET", "/auth/forward", &[("x-original-method", "GET"), ("x-original-uri", "https://evil.test/admin")], Err("Original URI names another host than the original Host")),
        ("nginx, absolute URI with userinfo", "GET", "/auth/forward", &[("x-original-method", "GET"), ("x-original-uri", "https://app.test@evil.test/admin")], Err("Original URI names another host than the original Host")),
        ("nginx, authority only", "GET", "/auth/forward", &[("x-original-method", "GET"), ("x-original-uri", "https://app.test")], Err("Invalid original URI")),
        ("nginx, asterisk", "GET", "/auth/forward", &[("x-original-method", "OPTIONS"), ("x-original-uri", "*")], Err("Invalid original URI")),
        ("nginx, relative", "GET", "/auth/forward", &[("x-original-method", "GET"), ("x-original-uri", "admin")], Err("Invalid original URI")),
        ("nginx, another scheme", "GET", "/auth/forward", &[("x-original-method", "GET"), ("x-original-uri", "ftp://app.test/x")], Err("Invalid original URI")),
        ("nginx, method not a token", "GET", "/auth/forward", &[("x-original-method", "GET /x"), ("x-original-uri", "/")], Err("Invalid original method")),
        // Traefik forwardAuth and Caddy forward_auth.
        ("traefik", "GET", "/auth/forward", &[("x-forwarded-method", "DELETE"), ("x-forwarded-uri", "/projects/1"), ("x-forwarded-host", "app.test"), ("x-forwarded-proto", "https")], Ok(("DELETE", "app.test", "/projects/1"))),
        ("traefik, no method", "GET", "/auth/forward", &[("x-forwarded-uri", "/x")], Err("Missing original request: no X-Forwarded-Method")),
        ("traefik, two hosts", "GET", "/auth/forward", &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/"), ("x-forwarded-host", "app.test"), ("x-forwarded-host", "evil.test")], Err("Ambiguous original request: X-Forwarded-Host sent more than once")),
        ("traefik, a host list", "GET", "/auth/forward", &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/"), ("x-forwarded-host", "app.test, evil.test")], Err("Invalid X-Forwarded-Host header")),
        ("traefik, a host with userinfo", "GET", "/auth/forward", &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/"), ("x-forwarded-host", "app.test@evil.test")], Err("Invalid X-Forwarded-Host header")),
        ("traefik, odd proto", "GET", "/auth/forward", &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/"), ("x-forwarded-proto", "gopher")], Err("Invalid X-Forwarded-Proto header")),
        ("traefik, two protos", "GET", "/auth/forward", &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/"), ("x-forwarded-proto", "https"), ("x-forwarded-proto", "http")], Err("Ambiguous original request: X-Forwarded-Proto sent more than once")),
        // Envoy ext_authz.
        ("envoy", "PATCH", "/auth/forward/users/7?x=1", &[], Ok(("PATCH", "app.test", "/users/7?x=1"))),
        ("envoy, the root", "GET", "/auth/forward/", &[], Ok(("GET", "app.test", "/"))),
        ("envoy, dot segments kept for the caller's checks", "GET", "/auth/forward/../admin", &[], Ok(("GET", "app.test", "/../admin"))),
        // Two ways at once, or none.
        ("nginx and traefik", "GET", "/auth/forward", &[("x-original-method", "GET"), ("x-original-uri", "/public"), ("x-forwarded-method", "GET"), ("x-forwarded-uri", "/admin")], Err("Ambiguous original request: named in more than one way")),
        ("nginx URI, traefik method", "GET", "/auth/forward", &[("x-original-uri", "/public"), ("x-forwarded-method", "GET")], Err("Ambiguous original request: named in more than one way")),
        ("traefik URI, nginx method", "GET", "/auth/forward", &[("x-forwarded-uri", "/public"), ("x-original-method", "GET")], Err("Ambiguous original request: named in more than one way")),
        ("nginx and envoy", "GET", "/auth/forward/admin", &[("x-original-method", "GET"), ("x-original-uri", "/public")], Err("Ambiguous original request: named in more than one way")),
        ("envoy with a method header", "GET", "/auth/forward/admin", &[("x-forwarded-method", "DELETE")], Err("Ambiguous original request: named in more than one way")),
        ("nothing", "GET", "/auth/forward", &[], Err("Forward-auth needs the original request: X-Original-URI, X-Forwarded-Uri or a path under /auth/forward")),
        ("a query is not a path", "GET", "/auth/forward?/admin", &[], Err("Forward-auth needs the original request: X-Original-URI, X-Forwarded-Uri or a path under /auth/forward")),
        ("a method alone", "GET", "/auth/forward", &[("x-forwarded-method", "GET")], Err("Missing original request: no original URI")),
    ];

    #[test]
    fn every_way_of_naming_the_original_request_reads_one_way_or_is_refused() {
        let host = HeaderValue::from_static("app.test");
        for (what, method, target, headers, expected) in CASES {
            let method: Method = method.parse().unwrap();
            let got = original_request(&method, target, &head(headers), &host);
            match (got, expected) {
                (Ok(original), Ok((method, host, target))) => {
                    assert_eq!(original.method.as_str(), *method, "{what}");
                    assert_eq!(original.host, host, "{what}");
                    assert_eq!(original.target, *target, "{what}");
                }
                (Err(refusal), Err(detail)) => {
                    assert_eq!(refusal.status(), http::StatusCode::BAD_REQUEST, "{what}");
                    assert_eq!(refusal.to_string(), *detail, "{what}");
                }
                (got, _) => panic!("{what}: {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn a_websocket_handshake_shows_by_its_key_or_its_upgrade() {
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[("upgrade", "websocket"), ("connection", "upgrade")], true),
            (&[("upgrade", "WebSocket")], true),
            (&[("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")], true),
            (&[("upgrade", "h2c")], false),
            (&[("connection", "upgrade")], false),
            (&[], false),
        ];
        for (headers, expected) in cases {
            assert_eq!(asks_websocket(&head(headers)), *expected, "{headers:?}");
        }
    }

    #[test]
    fn forward_auth_is_the_path_and_what_is_under_it() {
        let cases = [
            ("/auth/forward", "/auth/forward", true),
            ("/auth/forward?x", "/auth/forward", true),
            ("/auth/forward/a", "/auth/forward/a", true),
            ("/auth/forward/../../admin", "/admin", true),
            ("/x/../auth/forward", "/auth/forward", true),
            ("/auth/forwarded", "/auth/forwarded", false),
            ("/auth/forwardx/a", "/auth/forwardx/a", false),
            ("/auth/me", "/auth/me", false),
            ("/AUTH/forward", "/AUTH/forward", false),
        ];
        for (raw, path, expected) in cases {
            assert_eq!(asks(raw, path), expected, "{raw}");
        }
    }
}
