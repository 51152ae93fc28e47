//! One decision: find the first rule that fits the request (one walk down the trie), then
//! hold the caller to that rule's `allow`.

use super::matcher::Terminal;
use super::model::{method_bit, Access};
use super::{Decision, Identity, OnUnauthenticated, Policy, Request};

impl Policy {
    pub(super) fn decide(
        &self,
        request: &Request<'_>,
        identity: Option<&Identity<'_>>,
        visits: &mut usize,
    ) -> Decision {
        // The gateway hands over normalised paths; anything else matches no rule.
        let Some(body) = request.path.strip_prefix('/') else {
            return no_rule(identity);
        };
        // A trailing slash never changes the decision: `/admin/` is judged as `/admin`.
        let body = body.strip_suffix('/').unwrap_or(body);
        let segments: Vec<&str> = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').collect()
        };
        let method = method_bit(request.method);
        let host = request.host.map(host_part);
        let accept = |rule: usize| {
            self.rules
                .get(rule)
                .is_some_and(|r| r.accepts(method, host))
        };
        // Captures keep the path's own spelling; only the walk down the trie folds case.
        let found = if self.case_sensitive || !body.bytes().any(|b| b.is_ascii_uppercase()) {
            let trie = if self.case_sensitive {
                &self.trie
            } else {
                &self.folded_trie
            };
            trie.find(&segments, accept, visits)
        } else {
            let lower = body.to_ascii_lowercase();
            let folded: Vec<&str> = if lower.is_empty() {
                Vec::new()
            } else {
                lower.split('/').collect()
            };
            self.folded_trie.find(&folded, accept, visits)
        };
        let Some(terminal) = found else {
            return no_rule(identity);
        };
        self.apply(terminal, &segments, identity)
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
        let forbidden = |detail: String| Decision::Forbidden {
            rule: Some(index),
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
            Access::Deny => forbidden("Access denied".to_string()),
            Access::Role { rank: needed, name } => {
                if rank.is_some_and(|have| have >= *needed) {
                    allow()
                } else {
                    forbidden(format!("Requires {name} role"))
                }
            }
            Access::Permission(wanted) => {
                let granted = rank
                    .and_then(|have| self.grants.get(have))
                    .is_some_and(|grants| grants.iter().any(|grant| grant.grants(wanted)));
                if granted {
                    allow()
                } else {
                    forbidden(format!("Missing permission: {wanted}"))
                }
            }
            Access::Owner { param, or_role } => {
                let owner = terminal.capture(param, segments) == Some(caller.sub);
                let senior = or_role.is_some_and(|needed| rank.is_some_and(|have| have >= needed));
                if owner || senior {
                    allow()
                } else {
                    forbidden("Not the owner".to_string())
                }
            }
        }
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
