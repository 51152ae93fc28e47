//! The policy file's own `tests:` (contract 5): each case is a request, who makes it, and
//! the answer the policy must give (`allow`, `401` or `403`, optionally from a named rule).
//! A case runs through the same path normalisation and the same evaluation as a request at
//! the gateway; shadow rules (`mode: report`) never decide, so cases judge enforced rules
//! only. A failing case is an error at the case's line and column, like any other mistake
//! in the file.
//!
//! The normalisation is the gateway's (`proxy::path`), handed in by the caller: the policy
//! does not depend on the layer that forwards requests.

use std::fmt::Display;

use super::model::TestCase;
use super::yaml::shorten;
use super::{Decision, Diagnostic, Identity, Policy, Request, Severity};

impl Policy {
    /// How many `tests:` cases the file holds.
    pub fn test_count(&self) -> usize {
        self.tests.len()
    }

    /// Runs every case and returns one error per failing case, at the case, in file order.
    /// `normalize` is the gateway's path normalisation: a path it refuses is answered 400
    /// before any rule is asked, which no case expects.
    pub fn run_tests<E: Display>(
        &self,
        normalize: impl Fn(&str) -> Result<String, E>,
    ) -> Vec<Diagnostic> {
        self.tests
            .iter()
            .filter_map(|case| {
                let message = self.run_case(case, &normalize)?;
                Some(Diagnostic {
                    line: case.pos.line,
                    column: case.pos.column,
                    message,
                    severity: Severity::Error,
                })
            })
            .collect()
    }

    /// None when the case passes, else what went wrong, in words.
    fn run_case<E: Display>(
        &self,
        case: &TestCase,
        normalize: &impl Fn(&str) -> Result<String, E>,
    ) -> Option<String> {
        let caller = match &case.caller {
            Some((user_id, role)) => format!("{} with role {}", shorten(user_id), shorten(role)),
            None => "anonymous".to_string(),
        };
        let host = case
            .host
            .as_deref()
            .map_or_else(String::new, |host| format!(" on {}", shorten(host)));
        let asked = format!("{} {}{host} as {caller}", case.method, shorten(&case.path));
        let wanted = match &case.rule {
            Some(rule) => format!("{} from rule `{}`", case.expect.as_str(), shorten(rule)),
            None => case.expect.as_str().to_string(),
        };
        let path = match normalize(&case.path) {
            Ok(path) => path,
            Err(error) => {
                return Some(format!(
                    "test failed: {asked}: expected {wanted}, got 400 before any rule ({error})"
                ))
            }
        };
        let identity = case
            .caller
            .as_ref()
            .map(|(sub, role)| Identity { sub, role });
        let request = Request {
            method: &case.method,
            host: case.host.as_deref(),
            path: &path,
        };
        let decision = self.evaluate(&request, identity.as_ref());
        let decided_by = decision.rule().map(|index| self.rule_name(index));
        let outcome_ok = decision.outcome() == case.expect;
        let rule_ok = case
            .rule
            .as_deref()
            .is_none_or(|want| decided_by == Some(want));
        if outcome_ok && rule_ok {
            return None;
        }
        let detail = match &decision {
            Decision::Forbidden { detail, .. } => format!(" ({detail})"),
            _ => String::new(),
        };
        let by = match decided_by {
            Some(name) => format!("from rule `{}`", shorten(name)),
            None => "(no rule matches)".to_string(),
        };
        Some(format!(
            "test failed: {asked}: expected {wanted}, got {} {by}{detail}",
            decision.outcome().as_str()
        ))
    }
}
