//! From a checked document to a `Policy`: role ranks, each role's grants with every lower
//! role's folded in (so a decision never walks the hierarchy), the rules, and the one trie
//! of all their patterns. Also the warnings that need the whole policy: rules no request
//! can reach, permissions no role holds, names used twice.

use std::collections::HashMap;

use super::matcher::Trie;
use super::model::{Access, Doc, Pos, RuleSpec};
use super::yaml::shorten;
use super::{Diagnostic, OnUnauthenticated, Policy, RateLimit, Severity};

/// One permission entry as granted to a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Grant {
    /// `*`: every permission.
    All,
    /// `read:*` (stored without the `*`): every permission starting with the prefix.
    Prefix(String),
    Exact(String),
}

impl Grant {
    fn new(entry: &str) -> Grant {
        match entry.strip_suffix('*') {
            Some("") => Grant::All,
            Some(prefix) => Grant::Prefix(prefix.to_string()),
            None => Grant::Exact(entry.to_string()),
        }
    }

    pub(crate) fn grants(&self, wanted: &str) -> bool {
        match self {
            Grant::All => true,
            Grant::Prefix(prefix) => wanted.starts_with(prefix.as_str()),
            Grant::Exact(entry) => entry == wanted,
        }
    }
}

/// A rule as the decision needs it.
#[derive(Debug)]
pub(crate) struct Rule {
    pub name: String,
    pub methods: Option<u8>,
    pub hosts: Option<Vec<String>>,
    pub access: Access,
    pub rate_limit: Option<RateLimit>,
    pub upstream: Option<String>,
    /// As written; `None` means the default.
    pub on_unauthenticated: Option<OnUnauthenticated>,
    /// `mode: report`.
    pub shadow: bool,
}

/// A shadow rule (`mode: report`) and its own patterns: it is asked about every request on
/// its own, whatever the enforced rules decided, so it gets tries of its own.
#[derive(Debug)]
pub(crate) struct Shadow {
    pub trie: Trie,
    pub folded_trie: Trie,
}

impl Rule {
    /// Whether the rule's `methods` and `hosts` filters let the request through. `host` is
    /// the request's host without its port.
    pub(crate) fn accepts(&self, method_bit: u8, host: Option<&str>) -> bool {
        let method_ok = self.methods.is_none_or(|mask| mask & method_bit != 0);
        let host_ok = match (&self.hosts, host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(hosts), Some(host)) => hosts.iter().any(|h| h.eq_ignore_ascii_case(host)),
        };
        method_ok && host_ok
    }
}

pub(crate) fn compile(doc: Doc, diagnostics: &mut Vec<Diagnostic>) -> Policy {
    let ranks: HashMap<String, usize> = doc
        .roles
        .iter()
        .enumerate()
        .map(|(rank, role)| (role.clone(), rank))
        .collect();
    let mut grants = Vec::with_capacity(doc.roles.len());
    let mut inherited: Vec<Grant> = Vec::new();
    for rank in 0..doc.roles.len() {
        for entry in doc.permissions.get(rank).into_iter().flatten() {
            let grant = Grant::new(entry);
            if !inherited.contains(&grant) {
                inherited.push(grant);
            }
        }
        grants.push(inherited.clone());
    }

    // Rule indexes stay the file's order, shadow rules included, so that `rule #N` and the
    // names in logs point at the file; only enforced rules go into the tries that decide.
    let patterns = || {
        doc.rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| !rule.shadow)
            .flat_map(|(index, rule)| rule.patterns.iter().map(move |p| (index, p)))
    };
    let trie = Trie::build(patterns(), false);
    let folded_trie = Trie::build(patterns(), true);
    let shadows = doc
        .rules
        .iter()
        .enumerate()
        .filter(|(_, rule)| rule.shadow)
        .map(|(index, rule)| {
            let own = || rule.patterns.iter().map(move |p| (index, p));
            Shadow {
                trie: Trie::build(own(), false),
                folded_trie: Trie::build(own(), true),
            }
        })
        .collect();
    warn_shadowed(&doc.rules, &trie, diagnostics);
    warn_duplicate_names(&doc.rules, diagnostics);
    // The highest role holds every grant there is.
    let everything = grants.last().map(Vec::as_slice).unwrap_or_default();
    for rule in &doc.rules {
        if let Access::Permission(wanted) = &rule.access {
            if !everything.iter().any(|grant| grant.grants(wanted)) {
                warn(
                    diagnostics,
                    rule.access_pos,
                    format!(
                        "no role is granted `{}`, so rule `{}` refuses everyone",
                        shorten(wanted),
                        shorten(&rule.name)
                    ),
                );
            }
        }
    }

    let rules = doc
        .rules
        .into_iter()
        .map(|spec| Rule {
            name: spec.name,
            methods: spec.methods,
            hosts: spec.hosts,
            access: spec.access,
            rate_limit: spec.rate_limit,
            upstream: spec.upstream,
            on_unauthenticated: spec.on_unauthenticated,
            shadow: spec.shadow,
        })
        .collect();
    Policy {
        roles: doc.roles,
        ranks,
        grants,
        default_rate_limit: doc.rate_limit,
        rules,
        trie,
        folded_trie,
        case_sensitive: false,
        shadows,
        tests: doc.tests,
    }
}

fn warn(diagnostics: &mut Vec<Diagnostic>, pos: Pos, message: String) {
    diagnostics.push(Diagnostic {
        line: pos.line,
        column: pos.column,
        message,
        severity: Severity::Warning,
    });
}

/// A rule is shadowed when one earlier rule matches every request it would: each of its
/// patterns is covered by one of the earlier rule's, and the earlier rule's methods and hosts
/// include its own. Conservative: silence unless certain. The trie finds the covering rules,
/// so this stays cheap for large policies.
/// A shadow rule (`mode: report`) is asked about every request whatever comes before it,
/// so it is never reported, and it never hides a later rule.
fn warn_shadowed(rules: &[RuleSpec], trie: &Trie, diagnostics: &mut Vec<Diagnostic>) {
    for (index, rule) in rules.iter().enumerate().filter(|(_, rule)| !rule.shadow) {
        let mut candidates: Option<Vec<usize>> = None;
        for pattern in &rule.patterns {
            let covering = trie.subsumers(pattern, index);
            candidates = Some(match candidates {
                None => covering,
                Some(previous) => previous
                    .into_iter()
                    .filter(|i| covering.binary_search(i).is_ok())
                    .collect(),
            });
            if candidates.as_ref().is_some_and(Vec::is_empty) {
                break;
            }
        }
        let earlier = candidates
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| rules.get(i))
            .find(|earlier| filters_cover(earlier, rule));
        if let Some(earlier) = earlier {
            warn(
                diagnostics,
                rule.pos,
                format!(
                    "rule `{}` is never reached: the earlier rule `{}` (line {}) matches every request it would",
                    shorten(&rule.name),
                    shorten(&earlier.name),
                    earlier.pos.line
                ),
            );
        }
    }
}

/// Whether `earlier`'s methods and hosts include all of `later`'s (absent = all).
fn filters_cover(earlier: &RuleSpec, later: &RuleSpec) -> bool {
    let methods = match (earlier.methods, later.methods) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(wide), Some(narrow)) => wide & narrow == narrow,
    };
    let hosts = match (&earlier.hosts, &later.hosts) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(wide), Some(narrow)) => narrow.iter().all(|host| wide.contains(host)),
    };
    methods && hosts
}

fn warn_duplicate_names(rules: &[RuleSpec], diagnostics: &mut Vec<Diagnostic>) {
    let mut first: HashMap<&str, Pos> = HashMap::new();
    for rule in rules {
        match first.get(rule.name.as_str()) {
            Some(pos) => warn(
                diagnostics,
                rule.pos,
                format!(
                    "another rule is already named `{}` (line {}); logs will not tell them apart",
                    shorten(&rule.name),
                    pos.line
                ),
            ),
            None => {
                first.insert(&rule.name, rule.pos);
            }
        }
    }
}
