//! The policy: parse (rejecting anything wrong with file:line:col), compile into a matcher
//! whose cost does not grow with the number of rules, and decide. Pure: no I/O.
//!
//! - `yaml`: text into a tree whose nodes know their line and column.
//! - `model`: that tree checked against the format (contract section 5), every problem
//!   reported at its node, as many as one pass can find.
//! - `matcher`: path patterns and the one segment trie all rules compile into.
//! - `compile`: roles, inherited permissions, the trie, and the shadowed-rule warnings.
//! - `evaluate`: a request and an identity into a [`Decision`], and what the shadow rules
//!   (`mode: report`) would have decided.
//! - `cases`: the file's own `tests:`, run through the same evaluation.

mod cases;
mod compile;
mod evaluate;
mod matcher;
mod model;
mod yaml;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// A problem found in a policy file, at a 1-based line and column (in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub severity: Severity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl Diagnostic {
    /// "FILE:LINE:COL: message" for errors, "FILE:LINE:COL: warning: message" for warnings:
    /// the shape editors and terminals turn into a link to the place.
    pub fn render(&self, file: &str) -> String {
        match self.severity {
            Severity::Error => format!("{file}:{}:{}: {}", self.line, self.column, self.message),
            Severity::Warning => {
                format!(
                    "{file}:{}:{}: warning: {}",
                    self.line, self.column, self.message
                )
            }
        }
    }
}

/// What a rate limit counts by: the client address, or the signed-in user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKey {
    Ip,
    User,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
    pub key: RateKey,
}

/// What a rule answers an anonymous browser navigation it refuses (contract 7,
/// `on_unauthenticated`): a redirect to the sign-in page, or the 401 every other client gets.
/// Only browser navigations are ever redirected; the gateway decides which requests are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnUnauthenticated {
    /// The default, also when no rule matched: an anonymous prober then gets the same answer
    /// from every path, whichever rule (or none) refuses it, so redirects do not map the policy.
    #[default]
    Redirect,
    Deny,
}

impl OnUnauthenticated {
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnauthenticated::Redirect => "redirect",
            OnUnauthenticated::Deny => "deny",
        }
    }
}

/// The parts of a request the policy looks at.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The Host, possibly with `:port`; compared without the port, case-insensitively.
    pub host: Option<&'a str>,
    /// Already normalised by the gateway: starts with '/', no query, no dot segments, no '//'.
    pub path: &'a str,
}

/// Who is calling, from a verified token.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub sub: &'a str,
    pub role: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `rate_limit` is the rule's own, else the policy default, else None. `upstream` is the
    /// rule's `upstream:` (None = the gateway's default).
    Allow {
        rule: usize,
        rate_limit: Option<RateLimit>,
        upstream: Option<String>,
    },
    /// 401: anonymous caller on a rule that needs identity, or anonymous on a deny/no-match.
    /// `rule` None = no rule matched. `on_unauthenticated` is the rule's, else the default
    /// (redirect), also when no rule matched.
    Unauthenticated {
        rule: Option<usize>,
        on_unauthenticated: OnUnauthenticated,
    },
    /// 403 with the client-facing detail, and why, for the metrics and the log.
    Forbidden {
        rule: Option<usize>,
        denial: Denial,
        detail: String,
    },
}

/// Why a signed-in caller is forbidden: which check of the rule refused, or that no rule
/// matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// The rule's `allow: { role: ... }`, and the caller's role ranks lower.
    Role,
    /// The rule's `allow: { permission: ... }`, and the caller's role is not granted it.
    Permission,
    /// The rule's `allow: { owner: ... }`, and the caller is neither the owner nor senior.
    Owner,
    /// The rule says `allow: deny`.
    Deny,
    /// No rule matched the request.
    NoRule,
}

impl Denial {
    /// A role or permission rule refused: a caller with more privileges would pass, which RFC
    /// 6750 §3.1 calls `insufficient_scope` (unlike an owner rule, `deny` or no rule at all).
    pub fn insufficient_scope(self) -> bool {
        matches!(self, Denial::Role | Denial::Permission)
    }
}

/// A decision as the access log, the metrics and `tests:` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    /// 401 (or, for a browser navigation, the redirect to sign in).
    Unauthenticated,
    /// 403.
    Forbidden,
}

impl Outcome {
    /// `allow`, `401` or `403`: the words of `tests:` and of the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Unauthenticated => "401",
            Outcome::Forbidden => "403",
        }
    }
}

impl Decision {
    pub fn outcome(&self) -> Outcome {
        match self {
            Decision::Allow { .. } => Outcome::Allow,
            Decision::Unauthenticated { .. } => Outcome::Unauthenticated,
            Decision::Forbidden { .. } => Outcome::Forbidden,
        }
    }

    /// The index of the rule that decided; None when no rule matched.
    pub fn rule(&self) -> Option<usize> {
        match self {
            Decision::Allow { rule, .. } => Some(*rule),
            Decision::Unauthenticated { rule, .. } | Decision::Forbidden { rule, .. } => *rule,
        }
    }
}

/// A checked, compiled policy. Immutable once built, so one can be shared by every worker.
pub struct Policy {
    /// Lowest first; a role's rank is its index.
    roles: Vec<String>,
    ranks: HashMap<String, usize>,
    /// By rank: what each role is granted, its own entries and every lower role's.
    grants: Vec<Vec<compile::Grant>>,
    default_rate_limit: Option<RateLimit>,
    rules: Vec<compile::Rule>,
    /// Literal segments as written, for `policy.case_sensitive: true`.
    trie: matcher::Trie,
    /// Literal segments in lower case: matching ignores letter case by default (contract
    /// 6.3), so that an upstream routing case-insensitively cannot be reached through
    /// `/ADMIN/x` under rules written for `/admin/**`.
    folded_trie: matcher::Trie,
    case_sensitive: bool,
    /// The rules with `mode: report`, in file order; not in the tries above, so a policy
    /// without any pays nothing for them.
    shadows: Vec<compile::Shadow>,
    /// The file's `tests:`.
    tests: Vec<model::TestCase>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("roles", &self.roles)
            .field("rules", &self.rules.len())
            .field("trie_nodes", &self.trie.node_count())
            .field("default_rate_limit", &self.default_rate_limit)
            .field("shadow_rules", &self.shadows.len())
            .field("tests", &self.tests.len())
            .finish()
    }
}

impl Policy {
    /// Matches paths exactly (`true`) or ignoring ASCII letter case (`false`, the default).
    pub fn set_case_sensitive(&mut self, case_sensitive: bool) {
        self.case_sensitive = case_sensitive;
    }

    /// Parses and compiles. `upstreams`: the upstream names the gateway has (a rule naming
    /// another is an error); None skips that check (for `policy check` without a gateway
    /// config). Ok carries warnings (e.g. shadowed rules); Err carries every error found (at
    /// least one), warnings may be included. Diagnostics come sorted by position. The
    /// file's `tests:` are read and checked here but run by [`Policy::run_tests`], once the
    /// caller has set how the gateway matches (`set_case_sensitive`).
    pub fn parse(
        text: &str,
        upstreams: Option<&[String]>,
    ) -> Result<(Policy, Vec<Diagnostic>), Vec<Diagnostic>> {
        let root = yaml::load(text).map_err(|error| vec![error])?;
        let mut diagnostics = Vec::new();
        let doc = model::read(&root, upstreams, &mut diagnostics);
        let failed = diagnostics.iter().any(|d| d.severity == Severity::Error);
        let result = match doc {
            Some(doc) if !failed => Ok(compile::compile(doc, &mut diagnostics)),
            _ => {
                if !failed {
                    // Unreachable by construction; never hand back an Err without an error.
                    diagnostics.push(Diagnostic {
                        line: 1,
                        column: 1,
                        message: "the policy could not be read".to_string(),
                        severity: Severity::Error,
                    });
                }
                Err(())
            }
        };
        diagnostics.sort_by_key(|d| (d.line, d.column));
        match result {
            Ok(policy) => Ok((policy, diagnostics)),
            Err(()) => Err(diagnostics),
        }
    }

    /// Lowest first.
    pub fn roles(&self) -> &[String] {
        &self.roles
    }

    pub fn is_role(&self, role: &str) -> bool {
        self.ranks.contains_key(role)
    }

    /// Whether `role` is `needed` or higher; false if either is not a role of this policy.
    pub fn role_at_least(&self, role: &str, needed: &str) -> bool {
        match (self.ranks.get(role), self.ranks.get(needed)) {
            (Some(have), Some(need)) => have >= need,
            _ => false,
        }
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The rule's `name`; "" for an index past the last rule.
    pub fn rule_name(&self, index: usize) -> &str {
        self.rules.get(index).map_or("", |rule| rule.name.as_str())
    }

    /// Whether any rule has `mode: report`.
    pub fn has_shadow_rules(&self) -> bool {
        !self.shadows.is_empty()
    }

    /// Whether the rule has `mode: report` (false for an index past the last rule).
    pub fn is_shadow_rule(&self, index: usize) -> bool {
        self.rules.get(index).is_some_and(|rule| rule.shadow)
    }

    /// The rule's `on_unauthenticated` when it sets one (for `policy explain`).
    pub fn rule_on_unauthenticated(&self, index: usize) -> Option<OnUnauthenticated> {
        self.rules
            .get(index)
            .and_then(|rule| rule.on_unauthenticated)
    }

    pub fn default_rate_limit(&self) -> Option<RateLimit> {
        self.default_rate_limit
    }

    /// First matching rule wins; see the contract's decision semantics.
    pub fn evaluate(&self, request: &Request<'_>, identity: Option<&Identity<'_>>) -> Decision {
        let mut visits = 0;
        self.decide(request, identity, &mut visits)
    }

    /// `evaluate`, also saying how many trie nodes the match looked at.
    #[cfg(test)]
    pub(crate) fn evaluate_counting(
        &self,
        request: &Request<'_>,
        identity: Option<&Identity<'_>>,
    ) -> (Decision, usize) {
        let mut visits = 0;
        let decision = self.decide(request, identity, &mut visits);
        (decision, visits)
    }
}

/// A valid policy with `rules` distinct rules (at least 1), for benchmarks. Rule `k` matches
/// `/svc{k}/items/{id}` and everything below it; rules cycle through the kinds of `allow`,
/// and odd rules take only GET and HEAD.
#[doc(hidden)]
pub fn synthetic(rules: usize) -> String {
    use std::fmt::Write as _;
    let mut yaml = String::from(
        "version: 1\nroles: [user, admin]\npermissions:\n  user: [\"read:*\"]\n  admin: [\"*\"]\n\
         rate_limit: { requests: 1000, per: 1h, key: ip }\nrules:\n",
    );
    for k in 0..rules.max(1) {
        let allow = match k % 5 {
            0 => "public",
            1 => "authenticated",
            2 => "{ role: admin }",
            3 => "{ permission: \"read:items\" }",
            _ => "{ owner: id, or_role: admin }",
        };
        let methods = if k % 2 == 1 {
            "\n    methods: [GET, HEAD]"
        } else {
            ""
        };
        let _ = write!(
            yaml,
            "  - name: rule {k}\n    paths: [\"/svc{k}/items/{{id}}\", \"/svc{k}/items/{{id}}/**\"]{methods}\n    allow: {allow}\n"
        );
    }
    yaml
}
