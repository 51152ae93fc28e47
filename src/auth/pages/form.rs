//! PURE: what kind of body a request carries (JSON for API clients, a form for browsers),
//! and the fields of a form body.

use http::header::CONTENT_TYPE;
use http::HeaderMap;

/// How a request to a route that answers both is to be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json`, or anything that is not a form: the API of contract 4, as before.
    Json,
    /// `application/x-www-form-urlencoded`: a browser's form, answered with a page or a
    /// redirect.
    Form,
}

/// A form body only when the `Content-Type` says so (parameters such as `charset` aside);
/// every other request is answered as the API always answered it.
pub fn body_kind(headers: &HeaderMap) -> BodyKind {
    match media_type(headers) {
        Some(media_type)
            if media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") =>
        {
            BodyKind::Form
        }
        _ => BodyKind::Json,
    }
}

/// Whether the request declared `Content-Type: application/json`. The API's login and
/// refresh set the session cookies only then: a cross-site page can post JSON-looking text as
/// `text/plain` without asking, but `application/json` only after a CORS preflight the
/// gateway allowed. So no other site can sign a browser into an account of its choosing
/// (login CSRF) through the API; the answer's body is the same either way.
pub fn declares_json(headers: &HeaderMap) -> bool {
    media_type(headers)
        .is_some_and(|media_type| media_type.eq_ignore_ascii_case("application/json"))
}

fn media_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(str::trim)
}

/// The fields of an `application/x-www-form-urlencoded` body, in order. `None` when the
/// body is not UTF-8 text.
pub fn parse_form(body: &[u8]) -> Option<Vec<(String, String)>> {
    let text = std::str::from_utf8(body).ok()?;
    Some(
        text.split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (
                    crate::auth::input::percent_decode(name),
                    crate::auth::input::percent_decode(value),
                )
            })
            .collect(),
    )
}

/// The first value of field `name`.
pub fn field<'f>(fields: &'f [(String, String)], name: &str) -> Option<&'f str> {
    fields
        .iter()
        .find(|(found, _)| found == name)
        .map(|(_, value)| value.as_str())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn content_negotiation() {
        let cases: &[(Option<&str>, BodyKind)] = &[
            (Some("application/x-www-form-urlencoded"), BodyKind::Form),
            (
                Some("application/x-www-form-urlencoded; charset=UTF-8"),
                BodyKind::Form,
            ),
            (Some("Application/X-WWW-Form-Urlencoded"), BodyKind::Form),
            (Some("application/json"), BodyKind::Json),
            (Some("application/json; charset=utf-8"), BodyKind::Json),
            (Some("text/plain"), BodyKind::Json),
            (Some("multipart/form-data; boundary=x"), BodyKind::Json),
            (None, BodyKind::Json),
        ];
        for (content_type, expected) in cases {
            let mut headers = HeaderMap::new();
            if let Some(content_type) = content_type {
                headers.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
            }
            assert_eq!(body_kind(&headers), *expected, "{content_type:?}");
            let json = content_type.is_some_and(|value| value.starts_with("application/json"));
            assert_eq!(declares_json(&headers), json, "{content_type:?}");
        }
    }

    #[test]
    fn form_fields_are_decoded() {
        let fields =
            parse_form(b"email=a%40b.example&password=p+w%26%3D&rd=%2Fapp%3Fx%3D1&empty=&flag")
                .unwrap();
        assert_eq!(field(&fields, "email"), Some("a@b.example"));
        assert_eq!(field(&fields, "password"), Some("p w&="));
        assert_eq!(field(&fields, "rd"), Some("/app?x=1"));
        assert_eq!(field(&fields, "empty"), Some(""));
        assert_eq!(field(&fields, "flag"), Some(""));
        assert_eq!(field(&fields, "missing"), None);
        assert!(parse_form(b"\xff=1").is_none());
        assert_eq!(parse_form(b"").unwrap(), vec![]);
    }
}
