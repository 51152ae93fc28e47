//! Environment overrides: `PORTCULLIS_<SECTION>__<KEY>[__<SUBKEY>...]`
//! variables written into the file's YAML tree before it is deserialized
//! again, and the rules that decide which variable an error is blamed on.

use serde_norway::{Mapping, Value};

use super::{file_error, yaml_message, Config, ConfigError};

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "PORTCULLIS_";

/// Variables under [`ENV_PREFIX`] that configure the process rather than the
/// file (the command line reads them), so they are not treated as overrides.
pub const RESERVED_ENV_VARS: &[&str] = &["PORTCULLIS_CONFIG"];

/// `std::env::vars()` panics on a non-UTF-8 variable anywhere in the
/// environment; only ours need to be readable.
pub(super) fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(ENV_PREFIX) {
            continue;
        }
        let value = value.into_string().map_err(|_| ConfigError::Env {
            variable: name.to_owned(),
            message: "value is not valid UTF-8".to_owned(),
        })?;
        vars.push((name.to_owned(), value));
    }
    Ok(vars)
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Segment {
    Index(usize),
    Key(String),
}

#[derive(Debug)]
pub(super) struct EnvOverride {
    pub(super) variable: String,
    path: Vec<Segment>,
    /// The path as serde_norway and validation print it: `upstreams[0].url`.
    dotted: String,
    value: Value,
}

pub(super) fn collect_overrides(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<EnvOverride>, ConfigError> {
    let mut overrides = Vec::new();
    for (variable, raw) in env {
        let Some(rest) = variable.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if RESERVED_ENV_VARS.contains(&variable.as_str()) {
            continue;
        }
        let mut path = Vec::new();
        for part in rest.split("__") {
            if part.is_empty() {
                return Err(ConfigError::Env {
                    variable,
                    message:
                        "expected PORTCULLIS_<SECTION>__<KEY>[__<SUBKEY>...] with no empty segments"
                            .to_owned(),
                });
            }
            path.push(match part.parse::<usize>() {
                Ok(index) if part.bytes().all(|b| b.is_ascii_digit()) => Segment::Index(index),
                _ => Segment::Key(part.to_ascii_lowercase()),
            });
        }
        let dotted = dotted_path(&path);
        overrides.push(EnvOverride {
            variable,
            path,
            dotted,
            value: env_value(&raw),
        });
    }
    // Paths compare index segments numerically, so `__2__` is applied before
    // `__10__` and a list can grow one element at a time; a whole-section
    // variable sorts before the keys inside it, which then refine it.
    overrides.sort_by(|a, b| (&a.path, &a.variable).cmp(&(&b.path, &b.variable)));
    Ok(overrides)
}

fn dotted_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
        }
    }
    out
}

/// Turns a variable's value into YAML. Values that YAML would change are
/// kept as the literal string: `abc #x` would lose its "comment", `!x` would
/// become a tag, `0x1F` would become 31. Quoting (`'"null"'`) forces a string.
fn env_value(raw: &str) -> Value {
    let trimmed = raw.trim();
    match serde_norway::from_str::<Value>(trimmed) {
        Ok(value @ (Value::Sequence(_) | Value::Mapping(_))) if trimmed.starts_with(['[', '{']) => {
            value
        }
        Ok(value @ Value::String(_)) if trimmed.starts_with(['"', '\'']) => value,
        Ok(value @ (Value::Null | Value::Bool(_) | Value::Number(_)))
            if serde_norway::to_string(&value).is_ok_and(|text| text.trim_end() == trimmed) =>
        {
            value
        }
        _ => Value::String(raw.to_owned()),
    }
}

fn set_path(node: &mut Value, path: &[Segment], walked: &str, value: Value) -> Result<(), String> {
    let Some((segment, rest)) = path.split_first() else {
        *node = value;
        return Ok(());
    };
    if node.is_null() {
        *node = match segment {
            Segment::Index(_) => {
                default_list(walked).unwrap_or_else(|| Value::Sequence(Vec::new()))
            }
            Segment::Key(_) => Value::Mapping(Mapping::new()),
        };
    }
    let here = dotted_path(std::slice::from_ref(segment));
    let next = match segment {
        Segment::Index(_) => format!("{walked}{here}"),
        Segment::Key(_) if walked.is_empty() => here,
        Segment::Key(_) => format!("{walked}.{here}"),
    };
    match (node, segment) {
        (Value::Mapping(map), Segment::Key(key)) => {
            let child = map.entry(Value::String(key.clone())).or_insert(Value::Null);
            set_path(child, rest, &next, value)
        }
        (Value::Mapping(map), Segment::Index(index)) => {
            // Not a list: let the schema reject the key as unknown.
            let child = map
                .entry(Value::String(index.to_string()))
                .or_insert(Value::Null);
            set_path(child, rest, &next, value)
        }
        (Value::Sequence(items), Segment::Index(index)) => {
            let len = items.len();
            if *index == len {
                items.push(Value::Null);
            }
            match items.get_mut(*index) {
                Some(child) => set_path(child, rest, &next, value),
                None => Err(format!(
                    "index {index} is out of range: `{walked}` has {len} entries (the next index appends one)"
                )),
            }
        }
        (Value::Sequence(_), Segment::Key(key)) => Err(format!(
            "`{walked}` is a list, so `{key}` must be a numeric index"
        )),
        _ => Err(format!("`{walked}` is a single value, not a section")),
    }
}

/// The default of a list-valued key as YAML. Absent sections default as a
/// whole, but a variable that edits one element of an absent list
/// (`PORTCULLIS_UPSTREAMS__0__URL`) means "this element of the default list",
/// so the list must exist in the tree first.
fn default_list(dotted: &str) -> Option<Value> {
    let defaults = Config::default();
    let strings = |items: &[String]| {
        Value::Sequence(items.iter().map(|s| Value::String(s.clone())).collect())
    };
    match dotted {
        "upstreams" => Some(Value::Sequence(
            defaults
                .upstreams
                .iter()
                .map(|upstream| {
                    // The other fields' serde defaults are the same ones
                    // `UpstreamConfig::new` uses.
                    let mut entry = Mapping::new();
                    entry.insert("name".into(), upstream.name.clone().into());
                    entry.insert("url".into(), upstream.url.to_string().into());
                    Value::Mapping(entry)
                })
                .collect(),
        )),
        "headers.strip_request" => Some(strings(&defaults.headers.strip_request)),
        "cors.allowed_methods" => Some(strings(&defaults.cors.allowed_methods)),
        "cors.allowed_headers" => Some(strings(&defaults.cors.allowed_headers)),
        _ => None,
    }
}

/// Deserializes a tree through YAML text (not `from_value`) so scalars are
/// read exactly as in the file: `issuer: 12345` is a string there too.
fn reparse(document: &Value) -> Result<Config, serde_norway::Error> {
    serde_norway::from_str(&serde_norway::to_string(document)?)
}

pub(super) fn apply_overrides(
    text: &str,
    source: &str,
    overrides: &[EnvOverride],
) -> Result<Config, ConfigError> {
    let mut document: Value = serde_norway::from_str(text).map_err(|e| file_error(source, &e))?;
    if document.is_null() {
        document = Value::Mapping(Mapping::new());
    }
    for o in overrides {
        set_path(&mut document, &o.path, "", o.value.clone()).map_err(|message| {
            ConfigError::Env {
                variable: o.variable.clone(),
                message,
            }
        })?;
    }
    let error = match reparse(&document) {
        Ok(config) => return Ok(config),
        Err(e) => yaml_message(&e),
    };
    match blame_for_parse_error(&error, overrides) {
        Some(o) => Err(ConfigError::Env {
            variable: o.variable.clone(),
            message: strip_known_path(&error, &o.dotted),
        }),
        // Unreachable in practice (the file alone parsed, so an override is
        // involved), but say where the message came from rather than guess.
        None => Err(ConfigError::Parse {
            file: format!("{source} with PORTCULLIS_* overrides"),
            location: None,
            message: error,
        }),
    }
}

/// Splits serde_norway's `path: message` form; paths in this schema are
/// snake_case keys, dots and `[n]` indexes.
fn split_error_path(message: &str) -> (&str, &str) {
    match message.split_once(": ") {
        Some((path, rest))
            if !path.is_empty()
                && path
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.[]".contains(&b)) =>
        {
            (path, rest)
        }
        _ => ("", message),
    }
}

/// Finds the variable responsible for a deserialization error from its key
/// path, so the error can name the variable.
fn blame_for_parse_error<'a>(
    message: &str,
    overrides: &'a [EnvOverride],
) -> Option<&'a EnvOverride> {
    let (path, rest) = split_error_path(message);
    // The variable that set exactly this key (the last one wins, as applied).
    if let Some(o) = overrides.iter().rev().find(|o| o.dotted == path) {
        return Some(o);
    }
    // The variable that introduced an unknown key.
    if let Some((field, _)) = rest
        .strip_prefix("unknown field `")
        .and_then(|r| r.split_once('`'))
    {
        let target = if path.is_empty() {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        };
        if let Some(o) = overrides.iter().find(|o| is_within(&o.dotted, &target)) {
            return Some(o);
        }
    }
    if path.is_empty() {
        return overrides.last();
    }
    // A variable that replaced a whole section containing the key, else one
    // that wrote inside the failing section (a list element it created that
    // lacks a required field).
    overrides
        .iter()
        .rev()
        .find(|o| is_within(path, &o.dotted))
        .or_else(|| overrides.iter().find(|o| is_within(&o.dotted, path)))
        .or_else(|| overrides.last())
}

/// True when `a` is `b` or lies inside it (`server.tls.cert_path` inside
/// `server.tls`, `upstreams[0].url` inside `upstreams`).
fn is_within(a: &str, b: &str) -> bool {
    a == b
        || a.strip_prefix(b)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// The variable already names its key, so a `key: ` prefix that serde_norway
/// put on the message for that key (or a section above it) is redundant.
fn strip_known_path(message: &str, dotted: &str) -> String {
    match split_error_path(message) {
        (path, rest) if !path.is_empty() && is_within(dotted, path) => rest.to_owned(),
        _ => message.to_owned(),
    }
}

/// The override that set the invalid key, or a section or key related to it.
pub(super) fn blame_for<'a>(key: &str, overrides: &'a [EnvOverride]) -> Option<&'a EnvOverride> {
    overrides.iter().find(|o| o.dotted == key).or_else(|| {
        overrides
            .iter()
            .find(|o| is_within(key, &o.dotted) || is_within(&o.dotted, key))
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use http::Uri;

    use super::super::test_support::*;
    use super::super::*;

    #[test]
    fn env_overrides_a_string() {
        let config =
            parse_env("", &[("PORTCULLIS_DATABASE__URL", "postgres://u:p#w@db/x")]).unwrap();
        // The `#` would start a YAML comment; the value must survive verbatim.
        assert_eq!(config.database.url.expose(), "postgres://u:p#w@db/x");
        let config = parse_env("", &[("PORTCULLIS_TOKENS__ISSUER", "12345")]).unwrap();
        assert_eq!(config.tokens.issuer, "12345");
        let config = parse_env("", &[("PORTCULLIS_TOKENS__ISSUER", "0x1F")]).unwrap();
        assert_eq!(config.tokens.issuer, "0x1F");
        let secret = "0123456789abcdef0123456789abcdef";
        let config = parse_env("", &[("PORTCULLIS_TOKENS__HS256_SECRET", secret)]).unwrap();
        assert_eq!(
            config.tokens.hs256_secret.as_ref().map(Secret::expose),
            Some(secret)
        );
    }

    #[test]
    fn env_overrides_a_number_a_bool_and_null() {
        let config = parse_env(
            "server:\n  max_connections: 5\n",
            &[
                ("PORTCULLIS_SERVER__MAX_CONNECTIONS", "8443"),
                ("PORTCULLIS_SERVER__ALLOW_PATH_PARAMETERS", "true"),
                ("PORTCULLIS_SERVER__HTTP_LISTEN", "null"),
                ("PORTCULLIS_SERVER__MAX_BODY_BYTES", "1MiB"),
                ("PORTCULLIS_TELEMETRY__LOG_FORMAT", "json"),
            ],
        )
        .unwrap();
        assert_eq!(config.server.max_connections, 8443);
        assert!(config.server.allow_path_parameters);
        assert_eq!(config.server.http_listen, None);
        assert_eq!(config.server.max_body_bytes, 1 << 20);
        assert_eq!(config.telemetry.log_format, LogFormat::Json);
    }

    #[test]
    fn env_overrides_a_nested_key_creating_sections() {
        let config = parse_env(
            "",
            &[
                ("PORTCULLIS_SERVER__TLS__CERT_PATH", "/etc/tls/cert.pem"),
                ("PORTCULLIS_SERVER__TLS__KEY_PATH", "/etc/tls/key.pem"),
                (
                    "PORTCULLIS_CORS__ALLOWED_ORIGINS",
                    "[https://a.example.com, https://b.example.com]",
                ),
                ("UNRELATED", "ignored"),
                ("PORTCULLIS_CONFIG", "/etc/portcullis/gateway.yaml"),
            ],
        )
        .unwrap();
        assert_eq!(
            config.server.tls.cert_path,
            Some(PathBuf::from("/etc/tls/cert.pem"))
        );
        assert_eq!(
            config.server.tls.key_path,
            Some(PathBuf::from("/etc/tls/key.pem"))
        );
        assert_eq!(
            config.cors.allowed_origins,
            ["https://a.example.com", "https://b.example.com"]
        );
        // The file's `tls: null` section is replaced by a mapping too.
        let config = parse_env(
            "server:\n  tls:\n",
            &[("PORTCULLIS_SERVER__TLS__HANDSHAKE_TIMEOUT", "3s")],
        )
        .unwrap();
        assert_eq!(config.server.tls.handshake_timeout, Duration::from_secs(3));
    }

    #[test]
    fn env_overrides_the_redis_cluster_nodes_like_any_list() {
        let nodes = |config: &Config| {
            config
                .redis
                .cluster_nodes
                .iter()
                .map(|node| node.expose().to_owned())
                .collect::<Vec<_>>()
        };
        let config = parse_env(
            "",
            &[(
                "PORTCULLIS_REDIS__CLUSTER_NODES",
                "[redis://10.0.0.1:7000, redis://10.0.0.2:7000]",
            )],
        )
        .unwrap();
        assert_eq!(
            nodes(&config),
            ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
        );
        let config = parse_env(
            "redis:\n  cluster_nodes: [redis://10.0.0.1:7000]\n",
            &[(
                "PORTCULLIS_REDIS__CLUSTER_NODES__1",
                "redis://10.0.0.2:7000",
            )],
        )
        .unwrap();
        assert_eq!(
            nodes(&config),
            ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
        );
        let config = parse_env(
            "",
            &[(
                "PORTCULLIS_REDIS__CLUSTER_NODES__0",
                "redis://10.0.0.3:7000",
            )],
        )
        .unwrap();
        assert_eq!(nodes(&config), ["redis://10.0.0.3:7000"]);
        let error = err(parse_env(
            "",
            &[("PORTCULLIS_REDIS__CLUSTER_NODES__0", "10.0.0.3:7000")],
        ))
        .to_string();
        assert_eq!(
            error,
            "environment PORTCULLIS_REDIS__CLUSTER_NODES__0: redis.cluster_nodes[0]: must start with redis://"
        );
    }

    #[test]
    fn env_overrides_a_sequence_element() {
        let config = parse_env(
            "",
            &[("PORTCULLIS_UPSTREAMS__0__URL", "http://10.0.0.5:9000/api")],
        )
        .unwrap();
        assert_eq!(config.upstreams[0].name, "app");
        assert_eq!(config.upstreams[0].url, "http://10.0.0.5:9000/api");
        // Editing an element of a list the file leaves at its default edits
        // the default list, so the rest of the element keeps its defaults.
        let config = parse_env("", &[("PORTCULLIS_UPSTREAMS__0__NAME", "app")]).unwrap();
        assert_eq!(config, Config::default());
        let config = parse_env(
            "",
            &[(
                "PORTCULLIS_CORS__ALLOWED_ORIGINS__0",
                "https://app.example.com",
            )],
        )
        .unwrap();
        assert_eq!(config.cors.allowed_origins, ["https://app.example.com"]);
        let config = parse_env(
            "",
            &[("PORTCULLIS_HEADERS__STRIP_REQUEST__8", "x-tenant-*")],
        )
        .unwrap();
        assert_eq!(config.headers.strip_request.len(), 9);
        assert_eq!(config.headers.strip_request[0], "x-auth-*");
        let config = parse_env(
            "",
            &[(
                "PORTCULLIS_UPSTREAMS",
                "[{name: one, url: \"http://one:1\"}]",
            )],
        )
        .unwrap();
        assert_eq!(
            config.upstreams,
            [UpstreamConfig::new("one", Uri::from_static("http://one:1"))]
        );
        // The next index appends, one field at a time.
        let config = parse_env(
            "",
            &[
                ("PORTCULLIS_UPSTREAMS__1__URL", "http://billing:8000"),
                ("PORTCULLIS_UPSTREAMS__1__NAME", "billing"),
            ],
        )
        .unwrap();
        assert_eq!(config.upstreams.len(), 2);
        assert_eq!(config.upstreams[1].name, "billing");
        let e = err(parse_env(
            "",
            &[("PORTCULLIS_UPSTREAMS__5__URL", "http://x:1")],
        ));
        assert!(
            e.to_string()
                .starts_with("environment PORTCULLIS_UPSTREAMS__5__URL: index 5 is out of range"),
            "{e}"
        );
    }

    #[test]
    fn env_unknown_key_is_an_error_naming_the_variable() {
        let e = err(parse_env(
            "",
            &[("PORTCULLIS_SERVER__HTTPS_LISTENER", "0.0.0.0:1")],
        ));
        let text = e.to_string();
        assert!(
            text.starts_with("environment PORTCULLIS_SERVER__HTTPS_LISTENER: unknown field `https_listener`, expected one of"),
            "{text}"
        );
        let text = err(parse_env(
            "",
            &[("PORTCULLIS_DATABASE_URL", "postgres://x")],
        ))
        .to_string();
        assert!(
            text.starts_with("environment PORTCULLIS_DATABASE_URL: unknown field `database_url`"),
            "{text}"
        );
        let text = err(parse_env("", &[("PORTCULLIS_SERVER____TLS", "x")])).to_string();
        assert!(
            text.starts_with("environment PORTCULLIS_SERVER____TLS: "),
            "{text}"
        );
        // Blame lands on the culprit, not on other variables that were fine.
        let text = err(parse_env(
            "",
            &[
                ("PORTCULLIS_SERVER__MAX_CONNECTIONS", "10"),
                ("PORTCULLIS_SERVER__NOPE", "1"),
                ("PORTCULLIS_SERVER__TLS__HANDSHAKE_TIMEOUT", "1s"),
            ],
        ))
        .to_string();
        assert!(
            text.starts_with("environment PORTCULLIS_SERVER__NOPE: unknown field `nope`"),
            "{text}"
        );
    }

    #[test]
    fn env_bad_value_is_an_error_naming_the_variable() {
        let e = err(parse_env(
            "",
            &[("PORTCULLIS_SERVER__MAX_BODY_BYTES", "ten")],
        ));
        assert!(
            matches!(&e, ConfigError::Env { variable, .. } if variable == "PORTCULLIS_SERVER__MAX_BODY_BYTES")
        );
        let text = e.to_string();
        assert!(
            text.starts_with("environment PORTCULLIS_SERVER__MAX_BODY_BYTES: invalid size \"ten\""),
            "{text}"
        );
        assert!(!text.contains(" at line "), "{text}");
        let text = err(parse_env(
            "",
            &[
                ("PORTCULLIS_SERVER__MAX_CONNECTIONS", "-3"),
                ("PORTCULLIS_TELEMETRY__ACCESS_LOG", "false"),
            ],
        ))
        .to_string();
        assert!(text.starts_with("environment PORTCULLIS_SERVER__MAX_CONNECTIONS: invalid type: integer `-3`, expected usize"), "{text}");
        // A file error still wins and still has its position.
        let text = err(parse_env(
            "server:\n  bogus: 1\n",
            &[("PORTCULLIS_SERVER__MAX_CONNECTIONS", "1")],
        ))
        .to_string();
        assert!(text.starts_with("test.yaml:2:3: "), "{text}");
    }

    #[test]
    fn env_value_that_breaks_a_rule_is_blamed_on_the_variable() {
        let text = err(parse_env(
            "",
            &[("PORTCULLIS_SERVER__PUBLIC_URL", "http://example.com")],
        ))
        .to_string();
        assert!(
            text.starts_with("environment PORTCULLIS_SERVER__PUBLIC_URL: server.public_url: must be an https:// URL"),
            "{text}"
        );
        let text = err(parse("server:\n  public_url: http://example.com\n")).to_string();
        assert!(
            text.starts_with("test.yaml: server.public_url: must be an https:// URL"),
            "{text}"
        );
    }
}
