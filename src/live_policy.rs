//! Where the policy comes from: the file named in `gateway.yaml`, loaded at start, and
//! reloaded when it changes on disk (checked every quarter second) or on `SIGHUP`.
//!
//! A policy whose own `tests:` fail is refused like any other invalid edit (and cannot start
//! the gateway): each failing case is a `file:line:col: message` diagnostic.
//!
//! A reload swaps an `Arc`: requests already deciding keep the policy they started with,
//! the next one sees the new policy, and nothing is dropped. An edit that fails validation
//! is refused whole, every diagnostic is logged as `file:line:col: message`, the failure is
//! counted, and the policy in force stays.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::clock::unix_seconds;
use crate::policy::{Diagnostic, Policy, Severity};
use crate::telemetry::exposition::{family, label_value, single};

/// A compiled policy and what identifies it.
pub struct LoadedPolicy {
    pub policy: Policy,
    /// SHA-256 of the file's bytes, hex, first 16 characters.
    pub hash: String,
    pub loaded_at: SystemTime,
}

pub struct PolicySource {
    path: PathBuf,
    upstreams: Vec<String>,
    matching: Matching,
    current: RwLock<Arc<LoadedPolicy>>,
    /// The file's modification time and length when last read, to notice edits cheaply.
    seen: Mutex<Option<(SystemTime, u64)>>,
    reloads: AtomicU64,
    failures: AtomicU64,
}

/// The gateway settings that change what a policy decides, so that its `tests:` are run
/// as the gateway will judge requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct Matching {
    /// `policy.case_sensitive`.
    pub case_sensitive: bool,
    /// `server.allow_path_parameters`: whether a `;` in a path is let through normalisation.
    pub allow_path_parameters: bool,
}

/// How often the file is checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);

impl PolicySource {
    /// Loads the policy or returns every error as `file:line:col: message` lines.
    pub fn load(
        path: &Path,
        upstreams: Vec<String>,
        matching: Matching,
    ) -> Result<PolicySource, String> {
        let seen = fingerprint(path);
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        let loaded = compile(path, &text, &upstreams, matching)
            .map_err(|diagnostics| render_all(path, &diagnostics))?;
        Ok(PolicySource {
            path: path.to_path_buf(),
            upstreams,
            matching,
            current: RwLock::new(Arc::new(loaded)),
            seen: Mutex::new(seen),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<LoadedPolicy> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Re-reads the file. Returns whether a new policy is now in force; a file that did not
    /// change (same bytes) is not recompiled.
    pub fn reload(&self) -> bool {
        *self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = fingerprint(&self.path);
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(path = %self.path.display(), %error, "policy reload failed: cannot read the file; keeping the current policy");
                return false;
            }
        };
        if content_hash(&text) == self.current().hash {
            return false;
        }
        match compile(&self.path, &text, &self.upstreams, self.matching) {
            Ok(loaded) => {
                tracing::info!(path = %self.path.display(), hash = %loaded.hash, rules = loaded.policy.rule_count(), "policy reloaded");
                *self
                    .current
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(loaded);
                self.reloads.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(diagnostics) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                for diagnostic in &diagnostics {
                    tracing::error!(diagnostic = %diagnostic.render(&self.path.display().to_string()), "policy reload refused");
                }
                tracing::error!(path = %self.path.display(), errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count(), "policy reload failed; keeping the current policy");
                false
            }
        }
    }

    /// Reloads whenever the file's modification time or length changes.
    pub async fn watch(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(WATCH_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
            let now = fingerprint(&self.path);
            let changed = *self
                .seen
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                != now;
            if changed {
                self.reload();
            }
        }
    }

    /// Prometheus lines for the policy in force and its reloads.
    pub fn render_metrics(&self) -> String {
        let current = self.current();
        let mut out = String::with_capacity(1024);
        family(
            &mut out,
            "portcullis_policy_info",
            "gauge",
            "The policy in force, by content hash.",
        );
        out.push_str(&format!(
            "portcullis_policy_info{{hash=\"{}\",rules=\"{}\"}} 1\n",
            label_value(&current.hash),
            current.policy.rule_count()
        ));
        single(
            &mut out,
            "portcullis_policy_loaded_timestamp_seconds",
            "gauge",
            "When the policy in force was loaded.",
            unix_seconds(current.loaded_at),
        );
        single(
            &mut out,
            "portcullis_policy_reloads_total",
            "counter",
            "Policy edits put in force.",
            self.reloads.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "portcullis_policy_reload_failures_total",
            "counter",
            "Policy edits refused (the old policy stayed).",
            self.failures.load(Ordering::Relaxed),
        );
        out
    }
}

fn compile(
    path: &Path,
    text: &str,
    upstreams: &[String],
    matching: Matching,
) -> Result<LoadedPolicy, Vec<Diagnostic>> {
    let (mut policy, mut warnings) = Policy::parse(text, Some(upstreams))?;
    policy.set_case_sensitive(matching.case_sensitive);
    let failures = policy
        .run_tests(|path| crate::proxy::path::normalize_path(path, matching.allow_path_parameters));
    if !failures.is_empty() {
        warnings.extend(failures);
        warnings.sort_by_key(|d| (d.line, d.column));
        return Err(warnings);
    }
    for warning in &warnings {
        tracing::warn!(diagnostic = %warning.render(&path.display().to_string()), "policy warning");
    }
    Ok(LoadedPolicy {
        policy,
        hash: content_hash(text),
        loaded_at: SystemTime::now(),
    })
}

fn render_all(path: &Path, diagnostics: &[Diagnostic]) -> String {
    let file = path.display().to_string();
    diagnostics
        .iter()
        .map(|diagnostic| diagnostic.render(&file))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What identifies a policy file in `/metrics` (`portcullis_policy_info{hash}`), the access
/// log and `policy explain`: SHA-256 of its bytes, hex, first 16 characters.
pub fn content_hash(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn fingerprint(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}
