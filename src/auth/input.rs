//! What a client sends to the `/auth` routes ([`Call`]), checked before anything uses it: the
//! JSON body's fields, query parameters, and email addresses. A malformed body is 400; a missing or
//! mistyped field, or text no field may hold, is 422.

use bytes::Bytes;
use http::HeaderMap;
use serde_json::{Map, Value};

use crate::error::GatewayError;

/// One parsed `/auth` request.
#[derive(Clone)]
pub(crate) struct Call {
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub ip: String,
    /// The client as per-address rate limits count it (an IPv6 client's network).
    pub limit_key: String,
    pub user_agent: Option<String>,
}

impl Call {
    /// Where the call came from, as the audit log and sessions record it.
    pub(crate) fn origin(&self) -> crate::store::Origin<'_> {
        crate::store::Origin {
            ip_address: Some(&self.ip),
            user_agent: self.user_agent.as_deref(),
        }
    }
}

/// The JSON object a request carried. Malformed JSON is 400; a missing or mistyped field is
/// 422 (see [`Fields`]).
pub(crate) fn object(call: &Call) -> Result<Fields, GatewayError> {
    if call.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Fields(Map::new()));
    }
    match serde_json::from_slice::<Value>(&call.body) {
        Ok(Value::Object(map)) => Ok(Fields(map)),
        Ok(_) => Err(GatewayError::bad_request(
            "Request body must be a JSON object",
        )),
        Err(_) => Err(GatewayError::bad_request("Malformed JSON")),
    }
}

pub(crate) struct Fields(Map<String, Value>);

/// The longest string any `/auth` field takes, in bytes. Passwords have their own, lower,
/// limit in the password rules; nothing else comes near this.
const MAX_FIELD_BYTES: usize = 4096;

/// Every string a client sends is checked here, before it can reach Postgres or a log: NUL
/// (which Postgres text refuses), other control characters (which have no place in an email,
/// a name or a token, and forge log lines), and length. Passwords may hold any character but
/// NUL; their own rules judge the rest.
fn check_text(name: &'static str, text: &str) -> Result<(), GatewayError> {
    if text.len() > MAX_FIELD_BYTES {
        return Err(GatewayError::unprocessable(format!(
            "Field '{name}' is too long"
        )));
    }
    let is_password = name.ends_with("password");
    let refused = |c: char| c == '\0' || (!is_password && c.is_control());
    if text.chars().any(refused) {
        return Err(GatewayError::unprocessable(format!(
            "Field '{name}' must not contain control characters"
        )));
    }
    Ok(())
}

impl Fields {
    pub fn string(&self, name: &'static str) -> Result<&str, GatewayError> {
        match self.0.get(name) {
            Some(Value::String(text)) => {
                check_text(name, text)?;
                Ok(text)
            }
            Some(_) => Err(GatewayError::unprocessable(format!(
                "Field '{name}' must be a string"
            ))),
            None => Err(GatewayError::unprocessable(format!(
                "Field '{name}' is required"
            ))),
        }
    }

    pub fn optional_string(&self, name: &'static str) -> Result<Option<&str>, GatewayError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => {
                check_text(name, text)?;
                Ok(Some(text))
            }
            Some(_) => Err(GatewayError::unprocessable(format!(
                "Field '{name}' must be a string"
            ))),
        }
    }

    pub fn optional_bool(&self, name: &'static str) -> Result<Option<bool>, GatewayError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(_) => Err(GatewayError::unprocessable(format!(
                "Field '{name}' must be a boolean"
            ))),
        }
    }
}

/// The query parameter `name`, percent-decoded; 400 when it decodes to control characters
/// or is longer than any field.
pub(crate) fn query_param(call: &Call, name: &'static str) -> Result<Option<String>, GatewayError> {
    let Some(query) = call.query.as_deref() else {
        return Ok(None);
    };
    let value = query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    });
    match value {
        Some(value) if check_text(name, &value).is_err() => Err(GatewayError::bad_request(
            format!("Invalid query parameter '{name}'"),
        )),
        value => Ok(value),
    }
}

pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => decoded.push(b' '),
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) => {
                        decoded.push(byte);
                        index += 2;
                    }
                    None => decoded.push(b'%'),
                }
            }
            byte => decoded.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// Emails are compared and stored trimmed and lower-cased.
pub(crate) fn normalize_email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

/// A deliberately plain check: one `@`, a sensible local part, a dotted domain of letters,
/// digits and hyphens. Deliverability is proven by the verification email, not here.
pub(crate) fn is_valid_email(email: &str) -> bool {
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    if local.is_empty()
        || local.len() > 64
        || domain.contains('@')
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return false;
    }
    let local_ok = local
        .chars()
        .all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    local_ok && domain_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_validation() {
        for valid in [
            "a@b.co",
            "first.last+tag@example.com",
            "x_y@sub.domain.org",
            "élodie@exemple.fr",
        ] {
            assert!(is_valid_email(valid), "{valid}");
        }
        for invalid in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a@@b.com",
            "a b@c.com",
            "a@b..com",
            ".a@b.com",
            "a.@b.com",
            "a..b@c.com",
            "a@-b.com",
            "a@b-.com",
            "a@b.com\n",
            "a@b_c.com",
        ] {
            assert!(!is_valid_email(invalid), "{invalid:?}");
        }
    }

    #[test]
    fn query_parameters_are_decoded() {
        let call = Call {
            query: Some("q=a%40b.com&limit=5&x=%zz&name=Ann+Lee".into()),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            ip: "127.0.0.1".into(),
            limit_key: "127.0.0.1".into(),
            user_agent: None,
        };
        let param = |name| query_param(&call, name).unwrap();
        assert_eq!(param("q").as_deref(), Some("a@b.com"));
        assert_eq!(param("limit").as_deref(), Some("5"));
        assert_eq!(param("x").as_deref(), Some("%zz"));
        assert_eq!(param("name").as_deref(), Some("Ann Lee"));
        assert_eq!(param("missing"), None);
    }
}
