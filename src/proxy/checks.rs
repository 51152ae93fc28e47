//! The checks every request on the HTTPS listener passes before anything else looks at it:
//! its method token, the host it addressed, the headers whose duplicates or bytes an upstream
//! could read differently, and a method override hidden in the query.
//!
//! Each is a pure function of the request head and the validated configuration, so that the
//! table tests below read like contract 6.7 to 6.9.

use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, COOKIE, HOST};
use http::Method;

use crate::error::GatewayError;

/// The methods the gateway accepts: the seven of contract 6.7, exactly as written, and the
/// operator's `server.extra_methods`. `TRACE` and `CONNECT` are never among them.
#[derive(Debug, Clone)]
pub struct AllowedMethods {
    extra: Vec<Method>,
}

impl AllowedMethods {
    /// `extra` is validated by the configuration: method tokens other than `TRACE` and
    /// `CONNECT`; any that does not parse is left out.
    pub fn new(extra: &[String]) -> AllowedMethods {
        AllowedMethods {
            extra: extra
                .iter()
                .filter_map(|name| Method::from_bytes(name.as_bytes()).ok())
                .filter(|method| *method != Method::TRACE && *method != Method::CONNECT)
                .collect(),
        }
    }

    /// `http` parses the standard methods only from their upper-case spelling; `delete`
    /// is an extension method, and so refused here rather than judged as something the
    /// policy's `methods: [DELETE]` does not name.
    pub fn allows(&self, method: &Method) -> bool {
        matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::POST
                | Method::PUT
                | Method::PATCH
                | Method::DELETE
                | Method::OPTIONS
        ) || self.extra.contains(method)
    }
}

/// The host names the gateway serves (`server.hosts`), lower-case and without a trailing
/// dot.
#[derive(Debug, Clone)]
pub struct ServedHosts {
    names: Vec<String>,
}

impl ServedHosts {
    pub fn new(names: &[String]) -> ServedHosts {
        ServedHosts {
            names: names.iter().map(|name| canonical_host(name)).collect(),
        }
    }

    /// Whether the authority (`host[:port]`, as `Host` or `:authority` carry it) names a
    /// served host. The port is not compared: the gateway may be published on another port
    /// than it listens on.
    pub fn serves(&self, authority: &str) -> bool {
        let host = bare_host(host_of(authority));
        self.names
            .iter()
            .any(|name| name.eq_ignore_ascii_case(host))
    }
}

/// Lower case, for the configured names; requests are compared without allocating.
fn canonical_host(host: &str) -> String {
    bare_host(host).to_ascii_lowercase()
}

/// Without a trailing dot or IPv6 brackets.
fn bare_host(host: &str) -> &str {
    host.trim_end_matches('.')
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// The host part of `host[:port]` or `[v6]:port`.
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Headers an upstream could read differently from the gateway: a second `Authorization`
/// (which one does the application take?), and `Authorization`, `Cookie` or `Host` bytes
/// that are not UTF-8 (which decoders read differently, or replace).
pub fn check_sensitive_headers(headers: &HeaderMap) -> Result<(), GatewayError> {
    let mut authorization = headers.get_all(AUTHORIZATION).iter();
    if authorization.next().is_some() && authorization.next().is_some() {
        return Err(GatewayError::bad_request("Duplicate Authorization header"));
    }
    for name in [&AUTHORIZATION, &COOKIE, &HOST] {
        if !headers.get_all(name).iter().all(is_utf8) {
            return Err(GatewayError::bad_request(format!(
                "Invalid {} header: not UTF-8",
                display_name(name)
            )));
        }
    }
    Ok(())
}

fn is_utf8(value: &HeaderValue) -> bool {
    // Nearly every value is ASCII, which is checked a word at a time.
    let bytes = value.as_bytes();
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

fn display_name(name: &http::HeaderName) -> &'static str {
    if name == AUTHORIZATION {
        "Authorization"
    } else if name == COOKIE {
        "Cookie"
    } else {
        "Host"
    }
}

/// Whether the query names a `_method` parameter (any case, percent-encoded or not): Rails,
/// Laravel and Symfony run the handler of the method it names, which the policy did not
/// judge.
pub fn has_method_override_parameter(query: &str) -> bool {
    query.split('&').any(|pair| {
        let key = pair.split('=').next().unwrap_or("");
        decoded_key_is(key, "_method")
    })
}

/// Compares a query key, percent-decoded and with `+` read as a space, to `expected`
/// ignoring ASCII case, without allocating.
fn decoded_key_is(key: &str, expected: &str) -> bool {
    let bytes = key.as_bytes();
    let mut expected = expected.bytes();
    let mut i = 0;
    while i < bytes.len() {
        let byte = match bytes[i] {
            b'%' => {
                let decoded = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                match decoded {
                    Some(decoded) => {
                        i += 3;
                        decoded
                    }
                    None => {
                        i += 1;
                        b'%'
                    }
                }
            }
            b'+' => {
                i += 1;
                b' '
            }
            other => {
                i += 1;
                other
            }
        };
        match expected.next() {
            Some(want) if want.eq_ignore_ascii_case(&byte) => {}
            _ => return false,
        }
    }
    expected.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_tokens() {
        let methods = AllowedMethods::new(&["PROPFIND".into(), "TRACE".into()]);
        #[rustfmt::skip]
        let cases: &[(&str, bool)] = &[
            ("GET", true), ("HEAD", true), ("POST", true), ("PUT", true), ("PATCH", true),
            ("DELETE", true), ("OPTIONS", true), ("PROPFIND", true),
            // Not exactly upper case, unknown, or refused whatever the configuration says.
            ("delete", false), ("Delete", false), ("get", false), ("FOO", false),
            ("trace", false), ("TRACE", false), ("CONNECT", false), ("propfind", false),
            ("MOVE", false),
        ];
        for (method, allowed) in cases {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(methods.allows(&method), *allowed, "{method}");
        }
    }

    #[test]
    fn served_hosts() {
        let hosts = ServedHosts::new(&["Gateway.Example".into(), "::1".into(), "app.test.".into()]);
        #[rustfmt::skip]
        let cases: &[(&str, bool)] = &[
            ("gateway.example", true), ("GATEWAY.EXAMPLE", true), ("gateway.example.", true),
            ("gateway.example:8443", true), ("gateway.example.:443", true), ("[::1]:8443", true),
            ("[::1]", true), ("app.test", true), ("app.test.", true),
            ("evil.example", false), ("gateway.example.evil.example", false),
            ("evilgateway.example", false), ("", false), ("gateway.example:", true),
            ("gateway.example:x", false), ("[::2]:8443", false),
        ];
        for (authority, served) in cases {
            assert_eq!(hosts.serves(authority), *served, "{authority}");
        }
    }

    #[test]
    fn sensitive_headers() {
        let header = |name: &'static str, value: &[u8]| {
            (
                http::HeaderName::from_static(name),
                HeaderValue::from_bytes(value).unwrap(),
            )
        };
        type Case = (Vec<(http::HeaderName, HeaderValue)>, Option<&'static str>);
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            (vec![header("authorization", b"Bearer a")], None),
            (vec![header("cookie", "s=caf\u{e9}".as_bytes())], None),
            (vec![header("authorization", b"Bearer a"), header("authorization", b"Bearer b")],
             Some("Duplicate Authorization header")),
            (vec![header("authorization", b"Bearer \xe9")], Some("Invalid Authorization header: not UTF-8")),
            (vec![header("cookie", b"s=\xff")], Some("Invalid Cookie header: not UTF-8")),
            (vec![header("host", b"caf\xe9.example")], Some("Invalid Host header: not UTF-8")),
            (vec![header("x-other", b"\xe9")], None),
        ];
        for (pairs, expected) in cases {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(name, value);
            }
            let got = check_sensitive_headers(&headers)
                .err()
                .map(|e| e.to_string());
            assert_eq!(got.as_deref(), expected, "{headers:?}");
        }
    }

    #[test]
    fn method_override_parameter() {
        #[rustfmt::skip]
        let cases: &[(&str, bool)] = &[
            ("_method=DELETE", true), ("a=1&_method=put", true), ("_METHOD=DELETE", true),
            ("%5Fmethod=DELETE", true), ("_%6Dethod=DELETE", true), ("_method", true),
            ("a=1&_method", true),
            ("method=DELETE", false), ("x_method=DELETE", false), ("_methods=1", false),
            ("a=_method", false), ("", false), ("_method%", false), ("%", false),
        ];
        for (query, found) in cases {
            assert_eq!(has_method_override_parameter(query), *found, "{query}");
        }
    }
}
