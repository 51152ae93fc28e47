//! One decision: find the first rule that fits the request (one walk down the trie), then
//! hold the caller to that rule's `allow`.

use super::matcher::{Terminal, Trie};
use super::model::{method_bit, Access};
use super::{Decision, Denial, Identity, OnUnauthenticated, Policy, Request};

impl Policy {
    pub(super) fn decide(
        &self,
        request: &Request<'_>,
        identity: Option<&Identity<'_>>,
        visits: &mut usize,
    ) -> Decision {
        // The gateway hands over normalised paths; anything else matches no rule.
        let Some(body) = path_body(request.path) else {
            return no_rule(identity);
        };
        let segments = split(body);
        match self.find(
            &self.trie,
            &self.folded_trie,
            request,
            body,
            &segments,
            visits,
        ) {
            Some(terminal) => self.apply(terminal, &segments, identity),
            None => no_rule(identity),
        }
    }

    /// What each shadow rule (`mode: report`) that matches the request would decide, in
    /// file order: (rule index, decision). The enforced decision is not changed by any of
    /// them; nothing is asked when the policy has no shadow rule.
    pub fn shadow_decisions(
        &self,
        request: &Request<'_>,
        identity: Option<&Identity<'_>>,
    ) -> Vec<(usize, Decision)> {
        if self.shadows.is_empty() {
            return Vec::new();
        }
        let Some(body) = path_body(request.path) else {
            return Vec::new();
        };
        let segments = split(body);
        let mut visits = 0;
        self.shadows
            .iter()
            .filter_map(|shadow| {
                let terminal = self.find(
                    &shadow.trie,
                    &shadow.folded_trie,
                    request,
                    body,
                    &segments,
                    &mut visits,
                )?;
                Some((terminal.rule, self.apply(terminal, &segments, identity)))
            })
            .collect()
    }

    /// The first rule in `trie` (or `folded_trie`, when matching ignores case) that fits
    /// the request: path, method and host.
    fn find<'t>(
        &self,
        trie: &'t Trie,
        folded_trie: &'t Trie,
        request: &Request<'_>,
        body: &str,
        segments: &[&str],
        visits: &mut usize,
    ) -> Option<&'t Terminal> {
        let method = method_bit(request.method);
        let host = request.host.map(host_part);
        let accept = |rule: usize| {
            self.rules
                .get(rule)
                .is_some_and(|r| r.accepts(method, host))
        };
        // Captures keep the path's own spelling; only the walk down the trie folds case.
        if self.case_sensitive || !body.bytes().any(|b| b.is_ascii_uppercase()) {
            let trie = if self.case_sensitive {
                trie
            } else {
                folded_trie
            };
            trie.find(segments, accept, visits)
        } else {
            let lower = body.to_ascii_lowercase();
            folded_trie.find(&split(&lower), accept, visits)
        }
    }

    fn apply(
        &self,
        terminal: &Terminal,
        segments: &[&str],
        identity: Option<&Identity<'_>>,
    ) -> Decision {
        let index = terminal.rule;
        let Some(rule) = self.rules.get(index) else {
            return no_rule(identity);
        };
        let allow = || Decision::Allow {
            rule: index,
            rate_limit: rule.rate_limit.or(self.default_rate_limit),
            upstream: rule.upstream.clone(),
        };
        let forbidden = |denial: Denial, detail: String| Decision::Forbidden {
            rule: Some(index),
            denial,
            detail,
        };
        let Some(caller) = identity else {
            return match rule.access {
                Access::Public => allow(),
                _ => Decision::Unauthenticated {
                    rule: Some(index),
                    on_unauthenticated: rule.on_unauthenticated.unwrap_or_default(),
                },
            };
        };
        let rank = self.ranks.get(caller.role).copied();
        match &rule.access {
            Access::Public | Access::Authenticated => allow(),
            Access::Deny => forbidden(Denial::Deny, "Access denied".to_string()),
            Access::Role { rank: needed, name } => {
                if rank.is_some_and(|have| have >= *needed) {
                    allow()
                } else {
                    forbidden(Denial::Role, format!("Requires {name} role"))
                }
            }
            Access::Permission(wanted) => {
                let granted = rank
                    .and_then(|have| self.grants.get(have))
                    .is_some_and(|grants| grants.iter().any(|grant| grant.grants(wanted)));
                if granted {
                    allow()
                } else {
                    forbidden(Denial::Permission, format!("Missing permission: {wanted}"))
                }
            }
            Access::Owner { param, or_role } => {
                let owner = terminal.capture(param, segments) == Some(caller.sub);
                let senior = or_role.is_some_and(|needed| rank.is_some_and(|have| have >= needed));
                if owner || senior {
                    allow()
                } else {
                    forbidden(Denial::Owner, "Not the owner".to_string())
                }
            }
        }
    }
}

/// The path without its leading `/` and a trailing one: a trailing slash never changes the
/// decision (`/admin/` is judged as `/admin`). None for a path not starting with `/`.
fn path_body(path: &str) -> Option<&str> {
    let body = path.strip_prefix('/')?;
    Some(body.strip_suffix('/').unwrap_or(body))
}

fn split(body: &str) -> Vec<&str> {
    if body.is_empty() {
        Vec::new()
    } else {
        body.split('/').collect()
    }
}

fn no_rule(identity: Option<&Identity<'_>>) -> Decision {
    match identity {
        None => Decision::Unauthenticated {
            rule: None,
            on_unauthenticated: OnUnauthenticated::default(),
        },
        Some(_) => Decision::Forbidden {
            rule: None,
            denial: Denial::NoRule,
            detail: "No rule allows this request".to_string(),
        },
    }
}

/// The host without its port: `Example.com:8443` → `Example.com`, `[::1]:8443` → `[::1]`.
fn host_part(host: &str) -> &str {
    if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.split(':').next().unwrap_or(host)
    }
}
