//! Argon2id password hashing in PHC form and the password rules. Hashing is CPU-bound: it runs
//! on a few threads of its own (`HashingPool`), one hash per thread, at a lower scheduling
//! priority than the threads that forward requests, with a bounded number of callers allowed
//! to wait; so a burst of logins neither takes the cores forwarding needs, nor grows memory or
//! latency without bound (a caller beyond the queue is refused at once with
//! `PasswordError::Busy`).
//!
//! # The common-password list
//! `common-passwords.txt` beside this file is derived from the `passwords` frequency list of
//! zxcvbn, as shipped in the PyPI package `zxcvbn` 4.5.0 (`zxcvbn/frequency_lists.py`,
//! MIT licence, copyright (c) 2016 Daniel Wolf; the list itself comes from Dropbox's MIT-licensed
//! zxcvbn). Derivation: the 30,000 entries in frequency order, each trimmed and lower-cased,
//! those shorter than 4 characters or containing whitespace dropped, duplicates dropped keeping
//! the first, the first 20,000 kept. One password a line, no header, so every line is an entry.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, LazyLock, Mutex};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use ring::rand::{SecureRandom as _, SystemRandom};
use tokio::sync::{oneshot, Semaphore, TryAcquireError};

/// Lower-case entries; a password is looked up by its lower-cased form.
static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("common-passwords.txt")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect()
});

/// The configured rules (made from `config::PasswordConfig` in `app/convert.rs`; this
/// module never reads the configuration).
#[derive(Debug, Clone)]
pub struct PasswordRules {
    pub min_length: usize,
    pub max_bytes: usize,
    pub require_uppercase: bool,
    pub require_lowercase: bool,
    pub require_digit: bool,
    pub reject_common: bool,
    pub reject_email_local_part: bool,
    /// The lowest zxcvbn score (0 to 4) a password may have under `reject_common`; 0 turns
    /// the estimator off and leaves the list alone.
    pub min_strength: u8,
}

impl Default for PasswordRules {
    fn default() -> Self {
        PasswordRules {
            min_length: 8,
            max_bytes: 1024,
            require_uppercase: true,
            require_lowercase: true,
            require_digit: true,
            reject_common: true,
            reject_email_local_part: true,
            min_strength: DEFAULT_MIN_STRENGTH,
        }
    }
}

/// zxcvbn's 2 ("somewhat guessable: protection from unthrottled online attacks") is the least
/// a password behind a rate-limited, locking login may be; the NIST preset, which drops the
/// composition rules, asks for 3.
pub const DEFAULT_MIN_STRENGTH: u8 = 2;
pub const NIST_MIN_STRENGTH: u8 = 3;

/// The first rule a password breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordProblem {
    TooShort { min: usize },
    TooLong { max_bytes: usize },
    NoUppercase,
    NoLowercase,
    NoDigit,
    TooCommon,
    MatchesEmail,
}

impl PasswordProblem {
    /// The message shown to the client; the wording of most is part of the API contract.
    pub fn message(&self) -> String {
        match self {
            PasswordProblem::TooShort { min } => {
                format!("Password must be at least {min} characters")
            }
            PasswordProblem::TooLong { max_bytes } => {
                format!("Password must be at most {max_bytes} bytes")
            }
            PasswordProblem::NoUppercase => "Password must contain uppercase letter".to_owned(),
            PasswordProblem::NoLowercase => "Password must contain lowercase letter".to_owned(),
            PasswordProblem::NoDigit => "Password must contain a number".to_owned(),
            PasswordProblem::TooCommon => "Password is too common".to_owned(),
            PasswordProblem::MatchesEmail => {
                "Password must not be the email address or its local part".to_owned()
            }
        }
    }
}

/// Checks in this order and reports the first problem: length in characters
/// (`chars().count()`) < min, byte length > max_bytes, uppercase, lowercase, digit, common list
/// (case-insensitive: lower-case the password and look it up), email local part (the password
/// compared case-insensitively with the part of `email` before the last '@', and with the whole
/// email).
///
/// Upper and lower case are Unicode-aware (so "É" counts as an uppercase letter); a digit is
/// ASCII 0-9 only, because that is what "a number" means to the people reading the message.
pub fn check_rules(
    password: &str,
    email: &str,
    rules: &PasswordRules,
) -> Result<(), PasswordProblem> {
    // Characters, not bytes, for the minimum: "ééééé" is five characters to the person typing it.
    if password.chars().count() < rules.min_length {
        return Err(PasswordProblem::TooShort {
            min: rules.min_length,
        });
    }
    // Bytes for the maximum: it bounds the work and the memory spent on the input.
    if password.len() > rules.max_bytes {
        return Err(PasswordProblem::TooLong {
            max_bytes: rules.max_bytes,
        });
    }
    if rules.require_uppercase && !password.chars().any(char::is_uppercase) {
        return Err(PasswordProblem::NoUppercase);
    }
    if rules.require_lowercase && !password.chars().any(char::is_lowercase) {
        return Err(PasswordProblem::NoLowercase);
    }
    if rules.require_digit && !password.chars().any(|c| c.is_ascii_digit()) {
        return Err(PasswordProblem::NoDigit);
    }
    let lowered = password.to_lowercase();
    if rules.reject_common && is_common(&lowered) {
        return Err(PasswordProblem::TooCommon);
    }
    if rules.reject_email_local_part && matches_email(&lowered, email) {
        return Err(PasswordProblem::MatchesEmail);
    }
    // Last: the estimator's verdict is the least specific, so a password that breaks a
    // plainer rule is told that rule.
    if rules.reject_common && too_guessable(password, email, rules.min_strength) {
        return Err(PasswordProblem::TooCommon);
    }
    Ok(())
}

/// Whether a lower-cased password is on the common list as it is, or once the usual
/// decorations are taken off: the digits and symbols people put before and after a word
/// (`password123!`, `!!qwerty`) and the usual character substitutions (`p@ssw0rd`, `l3tm31n`).
/// Guessing tools try exactly these variants first, so they add nothing to a listed word.
/// A core shorter than 4 characters is not looked up: the list holds no such entries, and a
/// two-letter core would say nothing about the password.
fn is_common(lowered: &str) -> bool {
    let listed_core = |text: &str| -> bool {
        let core = text.trim_matches(|c: char| !c.is_alphabetic());
        core.chars().count() >= 4 && COMMON_PASSWORDS.contains(core)
    };
    let plain = |text: &str| -> String { text.chars().map(undo_substitution).collect() };
    // Trailing digits and symbols are decorations far more often than substitutions
    // (`dr4g0n!2024`), so they come off before the substitutions are undone; a leading
    // symbol may be a substitution (`@dmin`), so it stays until after.
    let without_suffix = lowered.trim_end_matches(|c: char| !c.is_alphabetic());
    COMMON_PASSWORDS.contains(lowered)
        || listed_core(lowered)
        || listed_core(&plain(without_suffix))
        || listed_core(&plain(lowered))
}

/// Whether zxcvbn scores the password below `min_strength`, counting the email and its local
/// part as words a guesser knows. Scoring is bounded: the password is already at most
/// `max_bytes`, and zxcvbn looks at its first 100 characters only.
fn too_guessable(password: &str, email: &str, min_strength: u8) -> bool {
    if min_strength == 0 {
        return false;
    }
    let local_part = email.rsplit_once('@').map_or(email, |(local, _)| local);
    let score = zxcvbn::zxcvbn(password, &[email, local_part]).score();
    u8::from(score) < min_strength
}

/// The letter a substituted digit or symbol usually stands for.
fn undo_substitution(c: char) -> char {
    match c {
        '0' => 'o',
        '1' | '!' | '|' => 'i',
        '3' => 'e',
        '4' | '@' => 'a',
        '5' | '$' => 's',
        '7' | '+' => 't',
        '8' => 'b',
        '9' => 'g',
        other => other,
    }
}

/// `lowered_password` is already lower-cased. Empty candidates never match, so an empty email
/// (or one starting with '@') cannot reject an empty password when the length rule is off.
fn matches_email(lowered_password: &str, email: &str) -> bool {
    let local_part = email.rsplit_once('@').map_or(email, |(local, _)| local);
    [local_part, email]
        .iter()
        .any(|candidate| !candidate.is_empty() && candidate.to_lowercase() == lowered_password)
}

/// Argon2id parameters (from config::Argon2Config): memory in KiB, iterations, parallelism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("password hashing task failed")]
    Task,
    /// Every hashing thread is busy and the queue is full: refused at once rather than
    /// keeping the caller (and its connection) waiting behind a flood.
    #[error("too many password hashes waiting")]
    Busy,
}

/// How the hashing threads share the machine with forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashingPool {
    /// Hashes computed at once, each on a thread of its own (at least one).
    pub threads: usize,
    /// Callers that may wait for a thread; the next one gets `PasswordError::Busy`.
    pub max_queued: usize,
    /// The hashing threads' nice value (0-19; Linux). Above forwarding's 0, the scheduler runs
    /// a forwarded request's work first whenever both want a core, so a login flood costs
    /// forwarded requests little latency; hashing still gets every core nothing else wants.
    pub nice: i32,
}

impl HashingPool {
    /// `threads` at once, unbounded waiting, normal priority: for the CLI and tests.
    pub fn plain(threads: usize) -> HashingPool {
        HashingPool {
            threads,
            max_queued: usize::MAX,
            nice: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    Match { needs_rehash: bool },
    Mismatch,
}

/// Hashes and verifies on the threads of a `HashingPool`. Clone is cheap (Arc inside); the
/// threads end when the last clone is dropped.
#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    argon2: Argon2<'static>,
    params: HashParams,
    /// Bounds both CPU (one hash per thread) and memory (each hash holds `memory_kib`). A
    /// permit is held from before a job is sent until it has run, so the channel below never
    /// holds more jobs than there are threads.
    permits: Arc<Semaphore>,
    /// Callers waiting for a permit, and how many may.
    waiting: AtomicUsize,
    max_queued: usize,
    /// The hashing threads' work.
    jobs: mpsc::Sender<Job>,
    /// Verified in place of a missing user's hash, so "no such user" costs a full verification.
    dummy_hash: String,
    rng: SystemRandom,
    /// Argon2 verifications run, the dummy's included: every failed login costs exactly one,
    /// whether or not its email exists, which is what keeps the two indistinguishable.
    verifications: std::sync::atomic::AtomicU64,
}

impl PasswordHasher {
    /// Validates the parameters and precomputes the dummy hash, which costs one hash with these
    /// parameters on the calling thread: call it at start-up, not per request.
    pub fn new(params: HashParams, max_concurrent: usize) -> Result<PasswordHasher, PasswordError> {
        Self::with_pool(params, HashingPool::plain(max_concurrent))
    }

    /// As `new`, with the threads' priority and the queue's bound given.
    pub fn with_pool(
        params: HashParams,
        pool: HashingPool,
    ) -> Result<PasswordHasher, PasswordError> {
        // Checked here because argon2's own check computes `8 * p` and would overflow (a panic
        // in debug builds) for a p beyond its maximum.
        if params.parallelism > Params::MAX_P_COST {
            return Err(PasswordError::Params(format!(
                "parallelism {} exceeds the maximum {}",
                params.parallelism,
                Params::MAX_P_COST
            )));
        }
        let argon2_params = Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            None,
        )
        .map_err(|error| PasswordError::Params(error.to_string()))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon2_params);
        let rng = SystemRandom::new();
        let dummy_hash = hash_with(&argon2, &rng, b"portcullis-dummy-password")?;
        // Zero permits would make every call wait forever, and tokio panics above MAX_PERMITS.
        let threads = pool.threads.clamp(1, Semaphore::MAX_PERMITS.min(1024));
        let jobs = start_threads(threads, pool.nice)?;
        Ok(PasswordHasher {
            inner: Arc::new(Inner {
                argon2,
                params,
                permits: Arc::new(Semaphore::new(threads)),
                waiting: AtomicUsize::new(0),
                max_queued: pool.max_queued,
                jobs,
                dummy_hash,
                verifications: std::sync::atomic::AtomicU64::new(0),
                rng,
            }),
        })
    }

    /// A PHC string `$argon2id$v=19$m=...,t=...,p=...$salt$hash` with a fresh random 16-byte salt.
    pub async fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let password = password.to_owned();
        self.run_blocking(move |inner| hash_with(&inner.argon2, &inner.rng, password.as_bytes()))
            .await?
    }

    /// `stored` None means "no such user": the dummy hash is verified instead and the result is
    /// always Mismatch, so an unknown email costs the same time as a wrong password. A stored
    /// hash that fails to parse is a Mismatch (and not a panic). needs_rehash is true when the
    /// stored hash is not argon2id or its m/t/p differ from the current params.
    pub async fn verify(
        &self,
        password: &str,
        stored: Option<&str>,
    ) -> Result<Verification, PasswordError> {
        let password = password.to_owned();
        let stored = stored.map(str::to_owned);
        self.run_blocking(move |inner| {
            inner.verify_blocking(password.as_bytes(), stored.as_deref())
        })
        .await
    }

    pub fn params(&self) -> HashParams {
        self.inner.params
    }

    /// How many Argon2 verifications have run (real and dummy).
    pub fn verifications(&self) -> u64 {
        self.inner
            .verifications
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `work` on a hashing thread while holding a permit. The permit is taken before the
    /// job is sent, so waiting callers queue here (at most `max_queued` of them), and it moves
    /// into the job so it is released only when the work has finished, even if the caller's
    /// future is dropped meanwhile.
    async fn run_blocking<T, F>(&self, work: F) -> Result<T, PasswordError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> T + Send + 'static,
    {
        let permit = match Arc::clone(&self.inner.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(PasswordError::Task),
            Err(TryAcquireError::NoPermits) => {
                let _place = QueuePlace::take(&self.inner).ok_or(PasswordError::Busy)?;
                Arc::clone(&self.inner.permits)
                    .acquire_owned()
                    .await
                    .map_err(|_closed| PasswordError::Task)?
            }
        };
        let (done, result) = oneshot::channel();
        let inner = Arc::clone(&self.inner);
        self.inner
            .jobs
            .send(Box::new(move || {
                let result = work(&inner);
                // Given back before the caller hears, so a caller that goes on to hash again
                // finds its own permit free.
                drop(permit);
                let _ = done.send(result);
            }))
            .map_err(|_stopped| PasswordError::Task)?;
        result.await.map_err(|_panicked| PasswordError::Task)
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A caller's place in the queue for a permit, given back when dropped (also when the caller
/// gives up waiting).
struct QueuePlace<'a>(&'a AtomicUsize);

impl<'a> QueuePlace<'a> {
    fn take(inner: &'a Inner) -> Option<QueuePlace<'a>> {
        let ahead = inner.waiting.fetch_add(1, Ordering::AcqRel);
        let place = QueuePlace(&inner.waiting);
        (ahead < inner.max_queued).then_some(place)
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Starts the hashing threads; they run jobs until the returned sender is dropped.
fn start_threads(threads: usize, nice: i32) -> Result<mpsc::Sender<Job>, PasswordError> {
    let (jobs, queue) = mpsc::channel::<Job>();
    let queue = Arc::new(Mutex::new(queue));
    for index in 0..threads {
        let queue = Arc::clone(&queue);
        std::thread::Builder::new()
            .name(format!("portcullis-hash-{index}"))
            .spawn(move || {
                lower_priority(nice);
                loop {
                    // The lock is held only while waiting for the next job, not while it runs.
                    let job = match queue.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_poisoned) => return,
                    };
                    let Ok(job) = job else { return };
                    // A panicking job drops its result sender (its caller gets `Task`); the
                    // thread lives on, so the pool never shrinks.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .map_err(|error| {
                PasswordError::Hash(format!("cannot start a hashing thread: {error}"))
            })?;
    }
    Ok(jobs)
}

/// Gives the calling thread (Linux: nice is per thread) the nice value `nice`.
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority with the caller's own thread id only changes its scheduling.
        let tid = unsafe { libc::gettid() };
        let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
        if result != 0 {
            tracing::warn!(
                nice,
                error = %std::io::Error::last_os_error(),
                "could not lower the hashing threads' priority"
            );
        }
    }
}

impl Inner {
    fn verify_blocking(&self, password: &[u8], stored: Option<&str>) -> Verification {
        self.verifications
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let parsed = stored.and_then(|stored| PasswordHash::new(stored).ok());
        let Some(hash) = parsed.filter(usable) else {
            // No user, or a stored hash we cannot use: spend the same time as a real check so
            // the response time does not tell the two apart from a wrong password.
            let _ = self.verify_dummy(password);
            return Verification::Mismatch;
        };
        // Any failure here (wrong password, or a hash naming an algorithm or parameters argon2
        // rejects) means this password cannot be shown to match: a Mismatch, not an error.
        match self.argon2.verify_password(password, &hash) {
            Ok(()) => Verification::Match {
                needs_rehash: self.needs_rehash(&hash),
            },
            Err(_) => Verification::Mismatch,
        }
    }

    fn verify_dummy(&self, password: &[u8]) -> bool {
        PasswordHash::new(&self.dummy_hash)
            .map(|hash| self.argon2.verify_password(password, &hash).is_ok())
            .unwrap_or(false)
    }

    fn needs_rehash(&self, hash: &PasswordHash<'_>) -> bool {
        if hash.algorithm != Algorithm::Argon2id.ident() {
            return true;
        }
        // argon2 treats a missing version as 0x13 when verifying, so this does too.
        if hash
            .version
            .is_some_and(|version| version != u32::from(Version::V0x13))
        {
            return true;
        }
        match Params::try_from(hash) {
            Ok(stored) => {
                stored.m_cost() != self.params.memory_kib
                    || stored.t_cost() != self.params.iterations
                    || stored.p_cost() != self.params.parallelism
            }
            Err(_) => true,
        }
    }
}

/// Rejects a stored hash whose parallelism argon2 would overflow on (see `PasswordHasher::new`);
/// everything else is left to argon2's own validation.
fn usable(hash: &PasswordHash<'_>) -> bool {
    match hash.params.get_decimal("p") {
        Some(p) => p <= Params::MAX_P_COST,
        None => true,
    }
}

fn hash_with(
    argon2: &Argon2<'_>,
    rng: &SystemRandom,
    password: &[u8],
) -> Result<String, PasswordError> {
    let mut salt_bytes = [0u8; 16];
    rng.fill(&mut salt_bytes)
        .map_err(|_| PasswordError::Hash("the system random source failed".to_owned()))?;
    let salt = SaltString::encode_b64(&salt_bytes)
        .map_err(|error| PasswordError::Hash(error.to_string()))?;
    argon2
        .hash_password(password, &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| PasswordError::Hash(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const FAST: HashParams = HashParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn fast_hasher() -> PasswordHasher {
        PasswordHasher::new(FAST, 2).expect("valid parameters")
    }

    #[test]
    fn common_list_is_large_lowercase_and_has_the_usual_suspects() {
        assert!(
            COMMON_PASSWORDS.len() >= 10_000,
            "only {} entries",
            COMMON_PASSWORDS.len()
        );
        for entry in COMMON_PASSWORDS.iter() {
            assert_eq!(
                *entry,
                entry.to_lowercase(),
                "entry {entry:?} is not lower-case"
            );
        }
        for expected in [
            "password",
            "123456",
            "qwerty",
            "letmein",
            "password1",
            "trustno1",
            "letmein1",
        ] {
            assert!(COMMON_PASSWORDS.contains(expected), "{expected} missing");
        }
        // Every line is a password: no header, no blank lines.
        let lines = include_str!("common-passwords.txt").lines().count();
        assert_eq!(lines, COMMON_PASSWORDS.len());
    }

    #[test]
    fn rules_table() {
        use PasswordProblem::*;
        let defaults = PasswordRules::default();
        let email = "alice.smith1@example.com";
        let long = format!("Aa1{}", "x".repeat(1022)); // 1025 bytes
        let cases: Vec<(&str, &str, Option<PasswordProblem>, Option<&str>)> = vec![
            (
                "abc",
                "too short reported before missing uppercase",
                Some(TooShort { min: 8 }),
                Some("Password must be at least 8 characters"),
            ),
            (
                "",
                "empty",
                Some(TooShort { min: 8 }),
                Some("Password must be at least 8 characters"),
            ),
            // 7 characters but 14 bytes: still too short, since characters are counted.
            (
                "Éé1éééé",
                "multi-byte counted as characters",
                Some(TooShort { min: 8 }),
                None,
            ),
            // 8 characters, 15 bytes: long enough, and Unicode case counts.
            ("Éé1çñøüß", "multi-byte meets min length", None, None),
            (
                &long,
                "over max bytes",
                Some(TooLong { max_bytes: 1024 }),
                Some("Password must be at most 1024 bytes"),
            ),
            (
                "lowercase1",
                "no uppercase",
                Some(NoUppercase),
                Some("Password must contain uppercase letter"),
            ),
            (
                "UPPERCASE1",
                "no lowercase",
                Some(NoLowercase),
                Some("Password must contain lowercase letter"),
            ),
            (
                "NoDigitsHere",
                "no digit",
                Some(NoDigit),
                Some("Password must contain a number"),
            ),
            (
                "Password1",
                "common",
                Some(TooCommon),
                Some("Password is too common"),
            ),
            ("TrustNo1", "common, mixed case", Some(TooCommon), None),
            (
                "LetMeIn1",
                "common, case-insensitive",
                Some(TooCommon),
                None,
            ),
            (
                "Alice.Smith1",
                "email local part",
                Some(MatchesEmail),
                Some("Password must not be the email address or its local part"),
            ),
            (
                "ALICE.smith1@Example.com",
                "whole email",
                Some(MatchesEmail),
                None,
            ),
            ("Correct-Horse-7", "good password", None, None),
            // The usual decorations of a listed word are as common as the word.
            (
                "Password123!",
                "digits and a symbol after",
                Some(TooCommon),
                None,
            ),
            ("!!Password1", "symbols before", Some(TooCommon), None),
            ("P@ssw0rd1", "substitutions", Some(TooCommon), None),
            (
                "Dr4g0n!2024",
                "substitutions and decorations",
                Some(TooCommon),
                None,
            ),
            (
                "Summer2024!",
                "a listed word and a year",
                Some(TooCommon),
                None,
            ),
            (
                "Tr0ub4dor&3x",
                "an unlisted word with substitutions",
                None,
                None,
            ),
            ("Zx9!Qw7#Lm2$", "no word at all", None, None),
            ("@Dmin2024", "a leading substitution", Some(TooCommon), None),
        ];
        for (password, what, expected, message) in cases {
            let got = check_rules(password, email, &defaults);
            assert_eq!(got, expected.map_or(Ok(()), Err), "{what}: {password:?}");
            if let (Some(problem), Some(message)) = (expected, message) {
                assert_eq!(problem.message(), message, "{what}");
            }
        }
    }

    #[test]
    fn the_estimator_refuses_what_a_guesser_tries_first() {
        let defaults = PasswordRules::default();
        let email = "dana.kim@example.com";
        for weak in ["Aaaaaaaa1", "Qwertyui1", "Dana.Kim2024", "01011990Ab"] {
            assert_eq!(
                check_rules(weak, email, &defaults),
                Err(PasswordProblem::TooCommon),
                "{weak}"
            );
        }
        for strong in ["Correct-Horse-42", "vX9#kq2Lm!t", "Tr0ub4dor&3x"] {
            assert_eq!(check_rules(strong, email, &defaults), Ok(()), "{strong}");
        }
    }

    #[test]
    fn the_nist_preset_drops_composition_and_leans_on_the_estimator() {
        let nist = PasswordRules::from(&crate::config::PasswordConfig {
            preset: crate::config::PasswordPreset::Nist,
            ..crate::config::PasswordConfig::default()
        });
        assert!(!nist.require_uppercase && !nist.require_lowercase && !nist.require_digit);
        assert_eq!(nist.min_strength, NIST_MIN_STRENGTH);
        let email = "dana.kim@example.com";
        // No upper case, no digit: fine under NIST when it is hard to guess.
        assert_eq!(
            check_rules("correct horse battery staple", email, &nist),
            Ok(())
        );
        assert_eq!(
            check_rules("short", email, &nist),
            Err(PasswordProblem::TooShort { min: 8 })
        );
        for weak in ["password123!", "abcdefgh12", "qwertyuiop", "dana.kim2024"] {
            assert_eq!(
                check_rules(weak, email, &nist),
                Err(PasswordProblem::TooCommon),
                "{weak}"
            );
        }
    }

    #[test]
    fn multi_byte_max_is_in_bytes() {
        let rules = PasswordRules {
            max_bytes: 10,
            ..PasswordRules::default()
        };
        // 8 characters, 12 bytes.
        assert_eq!(
            check_rules("Ab1déééé", "x@example.com", &rules),
            Err(PasswordProblem::TooLong { max_bytes: 10 })
        );
        assert_eq!(check_rules("Kq7#vX2m", "x@example.com", &rules), Ok(()));
    }

    #[test]
    fn too_short_message_uses_the_configured_minimum() {
        assert_eq!(
            PasswordProblem::TooShort { min: 12 }.message(),
            "Password must be at least 12 characters"
        );
    }

    #[test]
    fn local_part_is_before_the_last_at() {
        let rules = PasswordRules::default();
        assert_eq!(
            check_rules("Odd@Name1", "odd@name1@example.com", &rules),
            Err(PasswordProblem::MatchesEmail)
        );
        // No '@' at all: the whole string is both candidates.
        assert_eq!(
            check_rules("Plain9Name", "plain9name", &rules),
            Err(PasswordProblem::MatchesEmail)
        );
    }

    #[test]
    fn rules_turned_off_pass() {
        let off = PasswordRules {
            min_length: 0,
            max_bytes: usize::MAX,
            require_uppercase: false,
            require_lowercase: false,
            require_digit: false,
            reject_common: false,
            reject_email_local_part: false,
            min_strength: 4,
        };
        for password in ["", "abc", "password", "123456", "alice.smith1", "ALLCAPS"] {
            assert_eq!(
                check_rules(password, "alice.smith1@example.com", &off),
                Ok(()),
                "{password:?}"
            );
        }
        // An empty email matches nothing, even an empty password.
        let email_only = PasswordRules {
            reject_email_local_part: true,
            ..off
        };
        assert_eq!(check_rules("", "", &email_only), Ok(()));
        assert_eq!(check_rules("", "@example.com", &email_only), Ok(()));
    }

    #[test]
    fn invalid_params_are_typed_errors() {
        let bad = [
            HashParams {
                memory_kib: 1,
                iterations: 1,
                parallelism: 1,
            },
            HashParams {
                memory_kib: 64,
                iterations: 0,
                parallelism: 1,
            },
            HashParams {
                memory_kib: 64,
                iterations: 1,
                parallelism: 0,
            },
            HashParams {
                memory_kib: 64,
                iterations: 1,
                parallelism: u32::MAX,
            },
        ];
        for params in bad {
            assert!(
                matches!(
                    PasswordHasher::new(params, 2),
                    Err(PasswordError::Params(_))
                ),
                "{params:?}"
            );
        }
    }

    #[tokio::test]
    async fn hash_then_verify_matches_without_rehash() {
        let hasher = fast_hasher();
        let hash = hasher.hash("Correct-Horse-7").await.unwrap();
        assert_eq!(
            hasher.verify("Correct-Horse-7", Some(&hash)).await.unwrap(),
            Verification::Match {
                needs_rehash: false
            }
        );
        assert_eq!(hasher.params(), FAST);
    }

    #[tokio::test]
    async fn wrong_password_is_mismatch() {
        let hasher = fast_hasher();
        let hash = hasher.hash("Correct-Horse-7").await.unwrap();
        assert_eq!(
            hasher.verify("Correct-Horse-8", Some(&hash)).await.unwrap(),
            Verification::Mismatch
        );
    }

    #[tokio::test]
    async fn unknown_user_is_mismatch() {
        let hasher = fast_hasher();
        assert_eq!(
            hasher.verify("Correct-Horse-7", None).await.unwrap(),
            Verification::Mismatch
        );
        // Even the dummy's own password does not match when there is no user.
        assert_eq!(
            hasher
                .verify("portcullis-dummy-password", None)
                .await
                .unwrap(),
            Verification::Mismatch
        );
    }

    #[tokio::test]
    async fn phc_string_has_the_expected_prefix_and_16_byte_salt() {
        let hash = fast_hasher().hash("Correct-Horse-7").await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");
        let parsed = PasswordHash::new(&hash).unwrap();
        let mut salt = [0u8; 64];
        assert_eq!(
            parsed.salt.unwrap().decode_b64(&mut salt).unwrap().len(),
            16
        );
    }

    #[tokio::test]
    async fn same_password_hashes_differently() {
        let hasher = fast_hasher();
        let first = hasher.hash("Correct-Horse-7").await.unwrap();
        let second = hasher.hash("Correct-Horse-7").await.unwrap();
        assert_ne!(first, second);
    }

    #[tokio::test]
    async fn other_params_match_and_need_rehash() {
        let current = fast_hasher();
        for other in [
            HashParams {
                memory_kib: 128,
                ..FAST
            },
            HashParams {
                iterations: 2,
                ..FAST
            },
            HashParams {
                memory_kib: 64,
                iterations: 1,
                parallelism: 2,
            },
        ] {
            let old = PasswordHasher::new(other, 1).unwrap();
            let hash = old.hash("Correct-Horse-7").await.unwrap();
            assert_eq!(
                current
                    .verify("Correct-Horse-7", Some(&hash))
                    .await
                    .unwrap(),
                Verification::Match { needs_rehash: true },
                "{other:?}"
            );
            assert_eq!(
                current.verify("wrong", Some(&hash)).await.unwrap(),
                Verification::Mismatch
            );
        }
    }

    #[tokio::test]
    async fn other_argon2_variant_matches_and_needs_rehash() {
        let params = Params::new(64, 1, 1, None).unwrap();
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, params);
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        let hash = argon2i
            .hash_password(b"Correct-Horse-7", &salt)
            .unwrap()
            .to_string();
        assert!(hash.starts_with("$argon2i$"));
        assert_eq!(
            fast_hasher()
                .verify("Correct-Horse-7", Some(&hash))
                .await
                .unwrap(),
            Verification::Match { needs_rehash: true }
        );
    }

    #[tokio::test]
    async fn garbage_stored_hash_is_mismatch() {
        let hasher = fast_hasher();
        for stored in [
            "",
            "not a hash",
            "$argon2id$",
            "$argon2id$v=19$m=64,t=1,p=1$garbage",
            "$argon2id$v=19$m=64,t=1,p=0$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=19$m=64,t=1,p=4294967295$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=99$m=64,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
            "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
            "$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA",
        ] {
            assert_eq!(
                hasher
                    .verify("Correct-Horse-7", Some(stored))
                    .await
                    .unwrap(),
                Verification::Mismatch,
                "{stored:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_hashes_all_succeed_and_return_their_permits() {
        let hasher = fast_hasher();
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let hasher = hasher.clone();
                tokio::spawn(async move {
                    let password = format!("Correct-Horse-{i}");
                    let hash = hasher.hash(&password).await?;
                    hasher.verify(&password, Some(&hash)).await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(
                task.await.unwrap().unwrap(),
                Verification::Match {
                    needs_rehash: false
                }
            );
        }
        assert_eq!(hasher.inner.permits.available_permits(), 2);
    }

    #[tokio::test]
    async fn hashing_waits_for_a_permit() {
        // Take every permit from outside: a hash must not start until one is given back.
        let hasher = fast_hasher();
        let held = Arc::clone(&hasher.inner.permits)
            .acquire_many_owned(2)
            .await
            .unwrap();
        let pending = tokio::spawn({
            let hasher = hasher.clone();
            async move { hasher.hash("Correct-Horse-7").await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!pending.is_finished(), "hashed without a permit");
        drop(held);
        let hash = tokio::time::timeout(Duration::from_secs(10), pending)
            .await
            .expect("hash finished once a permit was free")
            .unwrap()
            .unwrap();
        assert!(hash.starts_with("$argon2id$"));
    }

    #[tokio::test]
    async fn default_config_params_round_trip() {
        // The shipped configuration (OWASP's 19 MiB, t=2, p=1): one real-cost hash, to show the
        // parameters reach the PHC string. argon2 is optimised even in dev builds, so it is quick.
        let params = HashParams {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        };
        let hasher = PasswordHasher::new(params, 2).unwrap();
        let hash = hasher.hash("Correct-Horse-7").await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert_eq!(
            hasher.verify("Correct-Horse-7", Some(&hash)).await.unwrap(),
            Verification::Match {
                needs_rehash: false
            }
        );
    }

    #[tokio::test]
    async fn a_caller_beyond_the_queue_is_refused_at_once_and_the_queue_drains() {
        let hasher = PasswordHasher::with_pool(
            FAST,
            HashingPool {
                threads: 1,
                max_queued: 1,
                nice: 0,
            },
        )
        .unwrap();
        let held = Arc::clone(&hasher.inner.permits)
            .acquire_owned()
            .await
            .unwrap();
        // The first caller to find no thread free waits in the one place...
        let queued = tokio::spawn({
            let hasher = hasher.clone();
            async move { hasher.hash("Correct-Horse-7").await }
        });
        while hasher.inner.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        // ...the next is refused without waiting.
        assert!(matches!(
            hasher.verify("Correct-Horse-7", None).await,
            Err(PasswordError::Busy)
        ));
        drop(held);
        let hash = queued.await.unwrap().unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert_eq!(hasher.inner.waiting.load(Ordering::Acquire), 0);
        // With the thread free again, a caller is served.
        assert!(hasher.verify("Correct-Horse-7", Some(&hash)).await.is_ok());
    }

    #[tokio::test]
    async fn hashing_threads_run_at_the_configured_nice_value() {
        let hasher = PasswordHasher::with_pool(
            FAST,
            HashingPool {
                threads: 1,
                max_queued: 4,
                nice: 7,
            },
        )
        .unwrap();
        let nice = hasher
            .run_blocking(|_inner| {
                // SAFETY: reads the calling thread's own priority.
                unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
            })
            .await
            .unwrap();
        assert_eq!(nice, 7);
    }

    #[tokio::test]
    async fn a_panicking_job_fails_its_caller_and_the_thread_lives_on() {
        let hasher = PasswordHasher::with_pool(FAST, HashingPool::plain(1)).unwrap();
        let failed = hasher
            .run_blocking(|_inner| -> u32 { panic!("a job that panics") })
            .await;
        assert!(matches!(failed, Err(PasswordError::Task)));
        let hash = hasher.hash("Correct-Horse-7").await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
    }

    #[test]
    fn zero_concurrency_is_clamped_to_one() {
        let hasher = PasswordHasher::new(FAST, 0).unwrap();
        assert_eq!(hasher.inner.permits.available_permits(), 1);
    }
}
