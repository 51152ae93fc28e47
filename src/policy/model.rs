//! The policy file's meaning: walks the YAML tree, checks every key and value against the
//! format, and records each problem at the line:column of the node it is about. It keeps
//! going after a problem, so one run shows every mistake it can.

use std::time::Duration;

use crate::config::units::{self, DurationError, DurationSyntax};

use super::matcher::Pattern;
use super::yaml::{shorten, Node};
use super::{Diagnostic, OnUnauthenticated, Outcome, RateKey, RateLimit, Severity};

/// Where a node starts, kept for messages produced after reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn of(node: &Node) -> Pos {
        Pos {
            line: node.line,
            column: node.column,
        }
    }
}

/// The methods a rule may name, in bit order. TRACE and CONNECT are refused by the gateway
/// before the policy is asked, so a rule naming them would be a rule that never applies.
pub(crate) const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// The method's bit in a rule's method set; 0 for any other method, which only rules
/// without `methods` match.
pub(crate) fn method_bit(method: &str) -> u8 {
    METHODS
        .iter()
        .position(|m| *m == method)
        .map_or(0, |index| 1 << index)
}

/// What a rule's `allow` asks of the caller, with role names resolved to ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Access {
    Public,
    Authenticated,
    Deny,
    Role {
        rank: usize,
        name: String,
    },
    Permission(String),
    Owner {
        param: String,
        or_role: Option<usize>,
    },
}

/// A policy file that passed every check.
#[derive(Debug)]
pub(crate) struct Doc {
    pub roles: Vec<String>,
    /// By rank: each role's own permission entries.
    pub permissions: Vec<Vec<String>>,
    pub rate_limit: Option<RateLimit>,
    pub rules: Vec<RuleSpec>,
    pub tests: Vec<TestCase>,
}

#[derive(Debug)]
pub(crate) struct RuleSpec {
    pub name: String,
    pub pos: Pos,
    pub patterns: Vec<Pattern>,
    /// Bits from `method_bit`; None = every method.
    pub methods: Option<u8>,
    /// Lower-case host names without port; None = every host.
    pub hosts: Option<Vec<String>>,
    pub access: Access,
    pub access_pos: Pos,
    pub rate_limit: Option<RateLimit>,
    pub upstream: Option<String>,
    pub on_unauthenticated: Option<OnUnauthenticated>,
    /// `mode: report`: a shadow rule, which never decides (see `Policy::shadow_decisions`).
    pub shadow: bool,
}

/// One `tests:` case: a request, who makes it, and what the policy must answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TestCase {
    pub pos: Pos,
    pub method: String,
    /// As written: the runner normalises it as the gateway would.
    pub path: String,
    pub host: Option<String>,
    /// (user id, role); None = anonymous.
    pub caller: Option<(String, String)>,
    pub expect: Outcome,
    /// The name of the enforced rule that must decide.
    pub rule: Option<String>,
}

const TOP_KEYS: [&str; 6] = [
    "version",
    "roles",
    "permissions",
    "rate_limit",
    "rules",
    "tests",
];
const RULE_KEYS: [&str; 9] = [
    "name",
    "paths",
    "methods",
    "hosts",
    "allow",
    "rate_limit",
    "upstream",
    "on_unauthenticated",
    "mode",
];
const CASE_KEYS: [&str; 8] = [
    "method",
    "path",
    "host",
    "role",
    "user_id",
    "anonymous",
    "expect",
    "rule",
];
const ALLOW_KEYS: [&str; 4] = ["role", "permission", "owner", "or_role"];
const RATE_KEYS: [&str; 3] = ["requests", "per", "key"];
const ALLOW_FORMS: &str = "`allow` must be `public`, `authenticated`, `deny`, `{role: R}`, \
                           `{permission: P}` or `{owner: PARAM, or_role: R}`";

/// Reads the document. None when it is too broken to describe; every problem found, fatal
/// or not, is in `diagnostics` either way.
pub(crate) fn read(
    root: &Node,
    upstreams: Option<&[String]>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Doc> {
    let mut reader = Reader {
        diagnostics,
        upstreams,
        roles: None,
    };
    reader.document(root)
}

struct Reader<'a> {
    diagnostics: &'a mut Vec<Diagnostic>,
    upstreams: Option<&'a [String]>,
    /// None while `roles` is missing or unusable: role names are then left unchecked rather
    /// than each reported as unknown.
    roles: Option<Vec<String>>,
}

impl Reader<'_> {
    fn report(&mut self, node: &Node, severity: Severity, message: String) {
        self.diagnostics.push(Diagnostic {
            line: node.line,
            column: node.column,
            message,
            severity,
        });
    }

    fn error(&mut self, node: &Node, message: impl Into<String>) {
        self.report(node, Severity::Error, message.into());
    }

    fn warn(&mut self, node: &Node, message: impl Into<String>) {
        self.report(node, Severity::Warning, message.into());
    }

    /// The values of a mapping's known keys, in the order of `known`. Unknown, duplicate and
    /// non-text keys are reported at the key.
    fn fields<'n, const N: usize>(
        &mut self,
        entries: &'n [(Node, Node)],
        known: [&str; N],
        what: &str,
    ) -> [Option<&'n Node>; N] {
        let mut found = [None; N];
        for (key, value) in entries {
            let Some(name) = key.as_text() else {
                self.error(
                    key,
                    format!("keys in {what} must be names, not {}", key.describe()),
                );
                continue;
            };
            match known.iter().position(|k| *k == name) {
                Some(index) if found[index].is_some() => {
                    self.error(key, format!("duplicate key `{name}` in {what}"));
                }
                Some(index) => found[index] = Some(value),
                None => self.error(
                    key,
                    format!(
                        "unknown key `{}` in {what}; expected one of: {}",
                        shorten(name),
                        known.join(", ")
                    ),
                ),
            }
        }
        found
    }

    fn document(&mut self, root: &Node) -> Option<Doc> {
        let Some(entries) = root.as_map() else {
            self.error(
                root,
                format!(
                    "a policy must be a mapping with `version`, `roles`, `permissions` and `rules`, not {}",
                    root.describe()
                ),
            );
            return None;
        };
        let [version, roles, permissions, rate_limit, rules, tests] =
            self.fields(entries, TOP_KEYS, "the policy");
        match version {
            None => self.error(root, "missing `version: 1`"),
            Some(node) if node.as_u64() == Some(1) => {}
            Some(node) => self.error(
                node,
                format!("`version` must be 1, not {}", node.describe()),
            ),
        }
        self.roles = match roles {
            None => {
                self.error(root, "missing `roles` (the role names, lowest first)");
                None
            }
            Some(node) => self.roles(node),
        };
        let permissions = match permissions {
            Some(node) => self.permissions(node),
            None => vec![Vec::new(); self.roles.as_ref().map_or(0, Vec::len)],
        };
        let rate_limit = rate_limit.map(|node| self.rate_limit(node));
        let rules = match rules {
            None => {
                self.error(
                    root,
                    "missing `rules` (with none, every request is refused)",
                );
                Vec::new()
            }
            Some(node) => self.rules(node),
        };
        let tests = match tests {
            None => Vec::new(),
            Some(node) => self.tests(node, &rules),
        };
        let rate_limit = match rate_limit {
            None => None,
            Some(parsed) => Some(parsed?),
        };
        Some(Doc {
            roles: self.roles.clone()?,
            permissions,
            rate_limit,
            rules,
            tests,
        })
    }

    fn roles(&mut self, node: &Node) -> Option<Vec<String>> {
        let Some(items) = node.as_seq() else {
            self.error(
                node,
                format!(
                    "`roles` must be a list of role names, lowest first, not {}",
                    node.describe()
                ),
            );
            return None;
        };
        if items.is_empty() {
            self.error(node, "`roles` must name at least one role");
            return None;
        }
        let mut roles: Vec<String> = Vec::new();
        for item in items {
            match item.as_str() {
                Some("") => self.error(item, "a role name must not be empty"),
                Some(name) if roles.iter().any(|r| r == name) => {
                    self.error(item, format!("duplicate role `{}`", shorten(name)));
                }
                Some(name) => roles.push(name.to_string()),
                None => self.error(
                    item,
                    format!("role names must be strings, not {}", item.describe()),
                ),
            }
        }
        (!roles.is_empty()).then_some(roles)
    }

    /// Each role's own entries, by rank.
    fn permissions(&mut self, node: &Node) -> Vec<Vec<String>> {
        let mut by_rank = vec![Vec::new(); self.roles.as_ref().map_or(0, Vec::len)];
        let Some(entries) = node.as_map() else {
            self.error(
                node,
                format!(
                    "`permissions` must map role names to lists of permissions, not {}",
                    node.describe()
                ),
            );
            return by_rank;
        };
        let mut seen: Vec<&str> = Vec::new();
        for (key, value) in entries {
            let Some(role) = key.as_text() else {
                self.error(
                    key,
                    format!(
                        "keys in `permissions` must be role names, not {}",
                        key.describe()
                    ),
                );
                continue;
            };
            if seen.contains(&role) {
                self.error(
                    key,
                    format!("duplicate key `{}` in `permissions`", shorten(role)),
                );
                continue;
            }
            seen.push(role);
            // Outer None: roles unusable (already reported), so the name cannot be checked.
            let rank = self
                .roles
                .as_ref()
                .map(|roles| roles.iter().position(|r| r == role));
            if rank == Some(None) {
                self.error(
                    key,
                    format!(
                        "`permissions` names `{}`, which is not in `roles`",
                        shorten(role)
                    ),
                );
            }
            let Some(items) = value.as_seq() else {
                self.error(
                    value,
                    format!(
                        "the permissions of `{}` must be a list of strings, not {}",
                        shorten(role),
                        value.describe()
                    ),
                );
                continue;
            };
            for item in items {
                match item.as_str() {
                    Some("") => self.error(item, "a permission must not be empty"),
                    Some(entry) => {
                        if entry.strip_suffix('*').unwrap_or(entry).contains('*') {
                            self.warn(
                                item,
                                format!("`*` only matches at the end of a permission; `{}` is matched literally", shorten(entry)),
                            );
                        }
                        if let Some(Some(rank)) = rank {
                            if let Some(list) = by_rank.get_mut(rank) {
                                list.push(entry.to_string());
                            }
                        }
                    }
                    None => self.error(
                        item,
                        format!(
                            "permission entries must be strings, not {} (quote a lone \"*\")",
                            item.describe()
                        ),
                    ),
                }
            }
        }
        by_rank
    }

    fn rate_limit(&mut self, node: &Node) -> Option<RateLimit> {
        let Some(entries) = node.as_map() else {
            self.error(
                node,
                format!("`rate_limit` must be a mapping like `{{ requests: 100, per: 1m, key: ip }}`, not {}", node.describe()),
            );
            return None;
        };
        let [requests, per, key] = self.fields(entries, RATE_KEYS, "`rate_limit`");
        let requests = match requests {
            None => {
                self.error(node, "`rate_limit` needs `requests`");
                None
            }
            Some(value) => match value.as_u64().map(u32::try_from) {
                Some(Ok(0)) => {
                    self.error(value, "`requests` must be at least 1");
                    None
                }
                Some(Ok(count)) => Some(count),
                Some(Err(_)) => {
                    self.error(value, format!("`requests` must be at most {}", u32::MAX));
                    None
                }
                None => {
                    self.error(
                        value,
                        format!(
                            "`requests` must be a whole number of at least 1, not {}",
                            value.describe()
                        ),
                    );
                    None
                }
            },
        };
        let per = match per {
            None => {
                self.error(node, "`rate_limit` needs `per` (a duration such as `1m`)");
                None
            }
            Some(value) => match parse_duration(value) {
                Ok(duration) => Some(duration),
                Err(message) => {
                    self.error(value, message);
                    None
                }
            },
        };
        let key = match key {
            None => {
                self.error(node, "`rate_limit` needs `key` (`ip` or `user`)");
                None
            }
            Some(value) => match value.as_str() {
                Some("ip") => Some(RateKey::Ip),
                Some("user") => Some(RateKey::User),
                _ => {
                    self.error(
                        value,
                        format!(
                            "rate limit `key` must be `ip` or `user`, not {}",
                            value.describe()
                        ),
                    );
                    None
                }
            },
        };
        Some(RateLimit {
            requests: requests?,
            per: per?,
            key: key?,
        })
    }

    fn rules(&mut self, node: &Node) -> Vec<RuleSpec> {
        let Some(items) = node.as_seq() else {
            self.error(
                node,
                format!("`rules` must be a list of rules, not {}", node.describe()),
            );
            return Vec::new();
        };
        if items.is_empty() {
            self.error(
                node,
                "`rules` must hold at least one rule (with none, every request is refused)",
            );
        }
        items.iter().filter_map(|item| self.rule(item)).collect()
    }

    fn rule(&mut self, node: &Node) -> Option<RuleSpec> {
        let Some(entries) = node.as_map() else {
            self.error(
                node,
                format!(
                    "each rule must be a mapping with `name`, `paths` and `allow`, not {}",
                    node.describe()
                ),
            );
            return None;
        };
        let [name, paths, methods, hosts, allow, rate_limit, upstream, on_unauthenticated, mode] =
            self.fields(entries, RULE_KEYS, "a rule");
        let name = match name {
            None => {
                self.error(node, "rule needs a `name`");
                None
            }
            Some(value) => match value.as_text() {
                Some(text) if !text.trim().is_empty() => Some(text.to_string()),
                _ => {
                    self.error(
                        value,
                        format!(
                            "a rule's `name` must be non-empty text, not {}",
                            value.describe()
                        ),
                    );
                    None
                }
            },
        };
        let label = name
            .as_deref()
            .map_or_else(|| "rule".to_string(), |n| format!("rule `{}`", shorten(n)));
        let (patterns, patterns_ok) = match paths {
            None => {
                self.error(node, format!("{label} needs `paths`"));
                (Vec::new(), false)
            }
            Some(value) => self.paths(value),
        };
        let methods = methods.map(|value| self.methods(value));
        let hosts = hosts.map(|value| self.hosts(value));
        let access = match allow {
            None => {
                self.error(node, format!("{label} needs `allow`"));
                None
            }
            Some(value) => self.allow(value, &patterns),
        };
        let rate_limit = rate_limit.map(|value| self.rate_limit(value));
        let upstream = upstream.map(|value| self.upstream(value));
        let on_unauthenticated =
            on_unauthenticated.map(|value| self.on_unauthenticated(value, access.as_ref()));
        let shadow = match mode {
            None => Some(false),
            Some(value) => match value.as_str() {
                Some("enforce") => Some(false),
                Some("report") => Some(true),
                _ => {
                    self.error(
                        value,
                        format!(
                            "`mode` must be `enforce` (the default) or `report` (a shadow rule that never decides), not {}",
                            value.describe()
                        ),
                    );
                    None
                }
            },
        };
        if !patterns_ok {
            return None;
        }
        Some(RuleSpec {
            name: name?,
            pos: Pos::of(node),
            patterns,
            methods: match methods {
                None => None,
                Some(parsed) => Some(parsed?),
            },
            hosts: match hosts {
                None => None,
                Some(parsed) => Some(parsed?),
            },
            access: access?,
            access_pos: allow.map(Pos::of)?,
            rate_limit: match rate_limit {
                None => None,
                Some(parsed) => Some(parsed?),
            },
            upstream: match upstream {
                None => None,
                Some(parsed) => Some(parsed?),
            },
            on_unauthenticated: match on_unauthenticated {
                None => None,
                Some(parsed) => Some(parsed?),
            },
            shadow: shadow?,
        })
    }

    fn tests(&mut self, node: &Node, rules: &[RuleSpec]) -> Vec<TestCase> {
        let Some(items) = node.as_seq() else {
            self.error(
                node,
                format!("`tests` must be a list of cases, not {}", node.describe()),
            );
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| self.test_case(item, rules))
            .collect()
    }

    /// One case. Every key is checked like a rule's; a case naming a rule checks that an
    /// enforced rule of that name exists, so a typo is not a test that can never pass.
    fn test_case(&mut self, node: &Node, rules: &[RuleSpec]) -> Option<TestCase> {
        let Some(entries) = node.as_map() else {
            self.error(
                node,
                format!(
                    "each test must be a mapping with `method`, `path` and `expect`, not {}",
                    node.describe()
                ),
            );
            return None;
        };
        let [method, path, host, role, user_id, anonymous, expect, rule] =
            self.fields(entries, CASE_KEYS, "a test");
        let method = match method {
            None => {
                self.error(node, "a test needs `method`");
                None
            }
            Some(value) => match value.as_str() {
                Some(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_uppercase()) => {
                    Some(text.to_string())
                }
                Some(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphabetic()) => {
                    self.error(
                        value,
                        format!(
                            "methods are upper-case: write `{}`",
                            text.to_ascii_uppercase()
                        ),
                    );
                    None
                }
                _ => {
                    self.error(
                        value,
                        format!(
                            "`method` must be a method such as `GET`, not {}",
                            value.describe()
                        ),
                    );
                    None
                }
            },
        };
        let path = match path {
            None => {
                self.error(node, "a test needs `path`");
                None
            }
            Some(value) => match value.as_str() {
                Some(text) if text.starts_with('/') && !text.contains(['?', '#']) => {
                    Some(text.to_string())
                }
                _ => {
                    self.error(
                        value,
                        format!(
                            "`path` must be a request path starting with `/`, without a query, not {}",
                            value.describe()
                        ),
                    );
                    None
                }
            },
        };
        let host = match host {
            None => Some(None),
            Some(value) => match value.as_str() {
                Some(text) if !text.is_empty() => Some(Some(text.to_string())),
                _ => {
                    self.error(
                        value,
                        format!("`host` must be a host name, not {}", value.describe()),
                    );
                    None
                }
            },
        };
        let anonymous = match anonymous {
            None => Some(false),
            Some(value) => match value.as_text() {
                Some("true") if value_is_bool(value) => Some(true),
                Some("false") if value_is_bool(value) => Some(false),
                _ => {
                    self.error(
                        value,
                        format!(
                            "`anonymous` must be `true` or `false`, not {}",
                            value.describe()
                        ),
                    );
                    None
                }
            },
        };
        let role = match role {
            None => Some(None),
            Some(value) => match value.as_str() {
                Some(name) if !name.is_empty() => {
                    let known = self
                        .roles
                        .as_ref()
                        .is_none_or(|roles| roles.iter().any(|r| r == name));
                    if !known {
                        self.warn(
                            value,
                            format!(
                                "role `{}` is not in `roles`: the case is a signed-in caller with no role's rights",
                                shorten(name)
                            ),
                        );
                    }
                    Some(Some(name.to_string()))
                }
                _ => {
                    self.error(
                        value,
                        format!("`role` must be a role name, not {}", value.describe()),
                    );
                    None
                }
            },
        };
        let user_id = match user_id {
            None => Some(None),
            Some(value) => match value.as_text() {
                Some(text) if !text.is_empty() => Some(Some(text.to_string())),
                _ => {
                    self.error(
                        value,
                        format!("`user_id` must be a user id, not {}", value.describe()),
                    );
                    None
                }
            },
        };
        let caller = match (anonymous?, role?, user_id?) {
            (true, None, None) | (false, None, None) => None,
            (false, Some(role), user_id) => {
                // As `policy explain`: a caller without a user id is called `user`.
                Some((user_id.unwrap_or_else(|| "user".to_string()), role))
            }
            (false, None, Some(_)) => {
                self.error(node, "a test with `user_id` needs the caller's `role`");
                return None;
            }
            (true, _, _) => {
                self.error(node, "an `anonymous: true` test has no `role` or `user_id`");
                return None;
            }
        };
        let expect = match expect {
            None => {
                self.error(node, "a test needs `expect` (`allow`, `401` or `403`)");
                None
            }
            Some(value) => match value.as_text() {
                Some("allow") => Some(Outcome::Allow),
                Some("401") => Some(Outcome::Unauthenticated),
                Some("403") => Some(Outcome::Forbidden),
                _ => {
                    self.error(
                        value,
                        format!(
                            "`expect` must be `allow`, `401` or `403`, not {}",
                            value.describe()
                        ),
                    );
                    None
                }
            },
        };
        let rule = match rule {
            None => Some(None),
            Some(value) => {
                let name = value.as_text().unwrap_or_default();
                let named: Vec<&RuleSpec> = rules.iter().filter(|r| r.name == name).collect();
                if named.iter().any(|r| !r.shadow) {
                    Some(Some(name.to_string()))
                } else {
                    let message = if named.is_empty() {
                        format!("no rule is named {}", value.describe())
                    } else {
                        format!(
                            "rule {} has `mode: report` and never decides; a test judges enforced rules only",
                            value.describe()
                        )
                    };
                    self.error(value, message);
                    None
                }
            }
        };
        Some(TestCase {
            pos: Pos::of(node),
            method: method?,
            path: path?,
            host: host?,
            caller,
            expect: expect?,
            rule: rule?,
        })
    }

    /// `redirect` or `deny`, exactly. On a `public` rule it can never apply (nobody is
    /// refused there for lack of a token), which is worth a warning: the author likely
    /// meant another rule.
    fn on_unauthenticated(
        &mut self,
        node: &Node,
        access: Option<&Access>,
    ) -> Option<OnUnauthenticated> {
        let parsed = match node.as_str() {
            Some("redirect") => OnUnauthenticated::Redirect,
            Some("deny") => OnUnauthenticated::Deny,
            _ => {
                self.error(
                    node,
                    format!(
                        "`on_unauthenticated` must be `redirect` or `deny`, not {}",
                        node.describe()
                    ),
                );
                return None;
            }
        };
        if access == Some(&Access::Public) {
            self.warn(
                node,
                "`on_unauthenticated` has no effect on a `public` rule, which refuses nobody",
            );
        }
        Some(parsed)
    }

    /// The patterns that parsed, and whether all did (the owner check still wants the good
    /// ones when one is bad).
    fn paths(&mut self, node: &Node) -> (Vec<Pattern>, bool) {
        let Some(items) = node.as_seq() else {
            self.error(
                node,
                format!(
                    "`paths` must be a list of path patterns, not {}",
                    node.describe()
                ),
            );
            return (Vec::new(), false);
        };
        if items.is_empty() {
            self.error(node, "`paths` must hold at least one pattern");
            return (Vec::new(), false);
        }
        let mut patterns = Vec::new();
        let mut all_ok = true;
        for item in items {
            let parsed = match item.as_str() {
                Some(text) => Pattern::parse(text),
                None => Err(format!(
                    "path patterns must be strings, not {}",
                    item.describe()
                )),
            };
            match parsed {
                Ok(pattern) => patterns.push(pattern),
                Err(message) => {
                    self.error(item, message);
                    all_ok = false;
                }
            }
        }
        (patterns, all_ok)
    }

    fn methods(&mut self, node: &Node) -> Option<u8> {
        let Some(items) = node.as_seq() else {
            self.error(
                node,
                format!(
                    "`methods` must be a list of methods, not {}",
                    node.describe()
                ),
            );
            return None;
        };
        if items.is_empty() {
            self.error(
                node,
                "`methods` must not be empty; leave it out to allow every method",
            );
            return None;
        }
        let mut mask = 0u8;
        let mut all_ok = true;
        for item in items {
            let problem = match item.as_str() {
                Some(method @ ("TRACE" | "CONNECT")) => {
                    format!("method `{method}` is refused by the gateway before the policy is consulted; remove it")
                }
                Some(method) if method_bit(method) != 0 => {
                    mask |= method_bit(method);
                    // A HEAD is a GET without the body: a rule for GET judges both, so that
                    // HEAD cannot fall through to a later, looser rule.
                    if method == "GET" {
                        mask |= method_bit("HEAD");
                    }
                    continue;
                }
                Some(method) if method_bit(&method.to_ascii_uppercase()) != 0 => {
                    format!(
                        "methods are upper-case: write `{}`",
                        method.to_ascii_uppercase()
                    )
                }
                Some(method) => {
                    format!(
                        "unknown method `{}`; expected one of: {}",
                        shorten(method),
                        METHODS.join(", ")
                    )
                }
                None => format!("methods must be strings, not {}", item.describe()),
            };
            self.error(item, problem);
            all_ok = false;
        }
        all_ok.then_some(mask)
    }

    fn hosts(&mut self, node: &Node) -> Option<Vec<String>> {
        let Some(items) = node.as_seq() else {
            self.error(
                node,
                format!(
                    "`hosts` must be a list of host names, not {}",
                    node.describe()
                ),
            );
            return None;
        };
        if items.is_empty() {
            self.error(
                node,
                "`hosts` must not be empty; leave it out to allow every host",
            );
            return None;
        }
        let mut hosts = Vec::new();
        let mut all_ok = true;
        for item in items {
            let problem = match item.as_str() {
                Some(text) => match host_problem(text) {
                    None => {
                        hosts.push(text.to_ascii_lowercase());
                        continue;
                    }
                    Some(problem) => problem,
                },
                None => format!("host names must be strings, not {}", item.describe()),
            };
            self.error(item, problem);
            all_ok = false;
        }
        all_ok.then_some(hosts)
    }

    fn allow(&mut self, node: &Node, patterns: &[Pattern]) -> Option<Access> {
        let Some(entries) = node.as_map() else {
            return match node.as_str() {
                Some("public") => Some(Access::Public),
                Some("authenticated") => Some(Access::Authenticated),
                Some("deny") => Some(Access::Deny),
                _ => {
                    self.error(node, format!("{ALLOW_FORMS}, not {}", node.describe()));
                    None
                }
            };
        };
        let [role, permission, owner, or_role] = self.fields(entries, ALLOW_KEYS, "`allow`");
        let forms = [role, permission, owner]
            .iter()
            .filter(|form| form.is_some())
            .count();
        if forms > 1 {
            self.error(
                node,
                "`allow` takes exactly one of `role`, `permission` and `owner`",
            );
            return None;
        }
        if let (Some(extra), None) = (or_role, owner) {
            self.error(extra, "`or_role` only goes with `owner`");
            return None;
        }
        if let Some(value) = role {
            let rank = self.role_rank(value, "`role`")?;
            let name = value.as_str().unwrap_or_default().to_string();
            return Some(Access::Role { rank, name });
        }
        if let Some(value) = permission {
            return match value.as_str() {
                Some(wanted) if !wanted.is_empty() => Some(Access::Permission(wanted.to_string())),
                _ => {
                    self.error(
                        value,
                        format!(
                            "`permission` must be a permission name, not {}",
                            value.describe()
                        ),
                    );
                    None
                }
            };
        }
        let Some(value) = owner else {
            self.error(node, ALLOW_FORMS);
            return None;
        };
        let or_role = or_role.map(|role| self.role_rank(role, "`or_role`"));
        let Some(param) = value.as_str() else {
            self.error(
                value,
                format!(
                    "`owner` must name a capture of the rule's paths, not {}",
                    value.describe()
                ),
            );
            return None;
        };
        let mut captured = true;
        for pattern in patterns.iter().filter(|pattern| !pattern.captures(param)) {
            self.error(
                value,
                format!(
                    "owner `{}` is not captured by path `{}`: every path of the rule needs `{{{}}}`",
                    shorten(param),
                    shorten(&pattern.text),
                    shorten(param)
                ),
            );
            captured = false;
        }
        let or_role = match or_role {
            None => None,
            Some(rank) => Some(rank?),
        };
        captured.then(|| Access::Owner {
            param: param.to_string(),
            or_role,
        })
    }

    /// The rank of a role named by `node`, reporting an unknown one.
    fn role_rank(&mut self, node: &Node, what: &str) -> Option<usize> {
        let Some(name) = node.as_str() else {
            self.error(
                node,
                format!("{what} must be a role name, not {}", node.describe()),
            );
            return None;
        };
        let (rank, known) = self
            .roles
            .as_ref()
            .map(|roles| (roles.iter().position(|r| r == name), roles.join(", ")))?;
        if rank.is_none() {
            self.error(
                node,
                format!("unknown role `{}` (roles: {known})", shorten(name)),
            );
        }
        rank
    }

    fn upstream(&mut self, node: &Node) -> Option<String> {
        let name = match node.as_str() {
            Some(name) if !name.is_empty() => name,
            _ => {
                self.error(
                    node,
                    format!(
                        "`upstream` must be an upstream name, not {}",
                        node.describe()
                    ),
                );
                return None;
            }
        };
        if let Some(known) = self.upstreams {
            if !known.iter().any(|k| k == name) {
                let have = if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                };
                self.error(
                    node,
                    format!(
                        "unknown upstream `{}`; the gateway has: {have}",
                        shorten(name)
                    ),
                );
                return None;
            }
        }
        Some(name.to_string())
    }
}

fn value_is_bool(node: &Node) -> bool {
    matches!(
        node.value,
        super::yaml::Value::Scalar {
            kind: super::yaml::Kind::Bool,
            ..
        }
    )
}

/// What is wrong with a `hosts` entry, if anything. The request's host is compared without
/// its port, so an entry is a bare name, an IPv4 address or a bracketed IPv6 address.
fn host_problem(host: &str) -> Option<String> {
    let shown = shorten(host);
    if host.is_empty() || host.contains(|c: char| c == '/' || c == '*' || c.is_whitespace()) {
        return Some(format!(
            "`{shown}` is not a host name (no scheme, path or wildcard)"
        ));
    }
    match host.strip_prefix('[').map(|rest| rest.split_once(']')) {
        Some(None) => Some(format!("`{shown}` is missing its closing `]`")),
        Some(Some((address, port))) if !port.is_empty() => Some(format!(
            "hosts are matched without the port: write `[{}]`",
            shorten(address)
        )),
        Some(Some(_)) => None,
        None => match host.matches(':').count() {
            0 => None,
            1 => Some(format!(
                "hosts are matched without the port: write `{}`",
                shorten(host.split(':').next().unwrap_or_default())
            )),
            _ => Some(format!("write an IPv6 address in brackets: `[{shown}]`")),
        },
    }
}

/// `500ms`, `10s`, `1m`, `1h`, `1d`: a whole number above zero and a unit.
/// The grammar is the gateway config's ([`units::parse_duration`]); the
/// policy's syntax wants the unit, and its messages quote the node.
fn parse_duration(node: &Node) -> Result<Duration, String> {
    let Some(text) = node.as_text() else {
        return Err(format!(
            "a duration must be a number and a unit such as `10s`, not {}",
            node.describe()
        ));
    };
    let shown = shorten(text);
    match units::parse_duration(text, DurationSyntax::POLICY) {
        Ok(duration) if duration.is_zero() => {
            Err(format!("duration `{shown}` must be greater than zero"))
        }
        Ok(duration) => Ok(duration),
        Err(DurationError::MissingUnit) => Err(format!(
            "duration `{shown}` is missing its unit (ms, s, m, h or d)"
        )),
        Err(DurationError::Malformed) => Err(format!(
            "bad duration `{shown}`: expected a whole number and a unit (ms, s, m, h, d), e.g. `10s`"
        )),
        Err(DurationError::TooLarge) => Err(format!("duration `{shown}` is too long")),
    }
}
