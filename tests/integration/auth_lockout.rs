//! The lock is absolute and logins in flight do not outlive account changes. Races are
//! forced, not hoped for: the test holds the user's row lock in a transaction of its own
//! (or makes the change in it), waits until the gateway's statements queue behind it, and
//! then lets them through, so the interleaving is the same on every run.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portcullis::password::{HashParams, PasswordHasher};
use portcullis::store::{LockoutScope, Store, UserPatch};
use serde_json::json;
use uuid::Uuid;

use crate::harness::identity::{sql, PASSWORD};
use crate::harness::{full, run_resources, TestGateway, TestResponse};

const WRONG: &str = "Wrong-Password-1";
const INVALID: &str = "Invalid email or password";
const NEWLY_LOCKED: &str = "Too many failed attempts. Account locked.";

/// A transaction of the test's own on the run's database, holding row locks the gateway's
/// statements have to wait behind.
struct Blocker {
    store: Store,
    transaction: deadpool_postgres::Transaction<'static>,
    pid: i32,
}

impl Blocker {
    async fn begin() -> Blocker {
        let store = Store::connect(&run_resources().database_url, 1, Duration::from_secs(5))
            .expect("the run's database URL parses");
        // Leaked so the transaction can borrow it for the rest of the test.
        let client: &'static mut deadpool_postgres::Object =
            Box::leak(Box::new(store.pool().get().await.unwrap()));
        let transaction = client.transaction().await.unwrap();
        let pid = transaction
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        Blocker {
            store,
            transaction,
            pid,
        }
    }

    async fn lock_user(&self, id: &str) {
        self.transaction
            .execute(
                "SELECT 1 FROM users WHERE id = $1 FOR UPDATE",
                &[&Uuid::parse_str(id).unwrap()],
            )
            .await
            .unwrap();
    }

    /// Waits (for the gateway's statements to queue, not for time to pass) until `count`
    /// backends wait behind this transaction, directly or behind one that does.
    async fn until_waiting(&self, count: i64) {
        let (client, connection) =
            tokio_postgres::connect(&run_resources().database_url, tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(connection);
        let waiting = || async {
            client
                .query_one(
                    "WITH RECURSIVE blocked(pid) AS (
                        SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))
                        UNION
                        SELECT a.pid FROM pg_stat_activity a, blocked b
                        WHERE b.pid = ANY(pg_blocking_pids(a.pid)))
                     SELECT count(*) FROM blocked",
                    &[&self.pid],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        };
        tokio::time::timeout(Duration::from_secs(20), async {
            while waiting().await < count {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{count} statements never queued behind the test's lock"));
    }

    async fn commit(self) {
        self.transaction.commit().await.unwrap();
    }
}

fn login_task(
    gateway: &Arc<TestGateway>,
    email: &str,
    password: &str,
) -> tokio::task::JoinHandle<TestResponse> {
    let gateway = gateway.clone();
    let (email, password) = (email.to_string(), password.to_string());
    tokio::spawn(async move { gateway.login(&email, &password).await })
}

async fn live_sessions(user_id: &str) -> i64 {
    sql(&format!(
        "SELECT count(*) FROM sessions WHERE user_id = '{user_id}' AND revoked_at IS NULL"
    ))
    .await[0]
        .get(0)
}

async fn audit_count(user_id: &str, event: &str) -> i64 {
    sql(&format!(
        "SELECT count(*) FROM audit_log WHERE user_id = '{user_id}' AND event = '{event}'"
    ))
    .await[0]
        .get(0)
}

/// Thirty wrong guesses and the right password all read the account before any failure is
/// committed and are all verified; only then are they let through to decide, in whatever
/// order the database grants the row. The lock is set exactly once and never cleared: the
/// right password logs in only if it got through before the lock, and every guess after the
/// lock is refused as locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_right_password_racing_thirty_guesses_never_beats_the_lock() {
    let gateway =
        Arc::new(TestGateway::start_with(|config| config.database.max_connections = 64).await);
    let account = gateway.signup("race").await;

    let blocker = Blocker::begin().await;
    blocker.lock_user(&account.id).await;
    let guesses: Vec<_> = (0..30)
        .map(|_| login_task(&gateway, &account.email, WRONG))
        .collect();
    let right = login_task(&gateway, &account.email, PASSWORD);
    blocker.until_waiting(31).await;
    blocker.commit().await;

    let mut details = Vec::new();
    for guess in guesses {
        let response = guess.await.unwrap();
        assert_eq!(response.status, 401, "{response:?}");
        details.push(response.detail());
    }
    let invalid = details.iter().filter(|detail| *detail == INVALID).count();
    let newly_locked = details.iter().filter(|d| *d == NEWLY_LOCKED).count();
    let refused_locked = details
        .iter()
        .filter(|detail| detail.starts_with("Account locked. Try again in"))
        .count();
    let right = right.await.unwrap();
    assert_eq!(newly_locked, 1, "locked once, never cleared: {details:?}");
    // Failures before a success do not count towards the lock; after it, exactly four
    // are answered as plain failures before the fifth locks.
    let before_success = if right.status == 200 {
        invalid - 4
    } else {
        assert_eq!(right.status, 401, "{right:?}");
        assert!(right.detail().contains("locked"), "{right:?}");
        assert!(right.json().get("access_token").is_none());
        0
    };
    assert!(before_success < 5, "a success after the lock: {details:?}");
    assert_eq!(invalid, 4 + before_success, "{details:?}");
    assert_eq!(refused_locked, 25 - before_success, "{details:?}");

    let row = &sql(&format!(
        "SELECT failed_login_attempts, locked_until > now() FROM users WHERE id = '{}'",
        account.id
    ))
    .await[0];
    assert_eq!(
        row.get::<_, i32>(0) as usize,
        30 - before_success,
        "every guess after the last success counted, exactly"
    );
    assert!(row.get::<_, bool>(1), "still locked");
    let order = sql(&format!(
        "SELECT event FROM audit_log WHERE user_id = '{}'
         AND event IN ('login_success', 'account_locked') ORDER BY id",
        account.id
    ))
    .await;
    let order: Vec<String> = order.iter().map(|row| row.get(0)).collect();
    assert_eq!(
        order.last().map(String::as_str),
        Some("account_locked"),
        "{order:?}"
    );
    assert_eq!(
        order.len(),
        1 + usize::from(right.status == 200),
        "{order:?}"
    );
}

/// A login that verified the right password before the lock was set, and decides after it,
/// is refused: the failures that lock the account commit (in the test's transaction) while
/// the login waits for the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_started_before_the_lock_is_refused_after_it() {
    let gateway = Arc::new(TestGateway::start().await);
    let account = gateway.signup("before-lock").await;
    let user_id = Uuid::parse_str(&account.id).unwrap();

    let blocker = Blocker::begin().await;
    blocker.lock_user(&account.id).await;
    let right = login_task(&gateway, &account.email, PASSWORD);
    blocker.until_waiting(1).await;
    let now = SystemTime::now();
    for _ in 0..5 {
        blocker
            .store
            .record_login_failure(
                &blocker.transaction,
                user_id,
                LockoutScope::Account,
                5,
                Duration::from_secs(30 * 60),
                now,
            )
            .await
            .unwrap();
    }
    blocker.commit().await;

    let right = right.await.unwrap();
    assert_eq!(right.status, 401, "the login beat the lock: {right:?}");
    assert!(right.detail().contains("locked"), "{right:?}");
    assert_eq!(live_sessions(&account.id).await, 0);
    let row = &sql(&format!(
        "SELECT failed_login_attempts, locked_until > now() FROM users WHERE id = '{}'",
        account.id
    ))
    .await[0];
    assert_eq!(
        row.get::<_, i32>(0),
        5,
        "the refusal did not reset the count"
    );
    assert!(row.get::<_, bool>(1), "the refusal did not clear the lock");
}

/// A refusal because the account is locked is audited and counted in the metrics.
#[tokio::test]
async fn a_refusal_for_a_lock_is_audited_and_counted() {
    let gateway = TestGateway::start().await;
    let account = gateway.signup("lock-hit").await;
    for _ in 0..5 {
        gateway.login(&account.email, WRONG).await;
    }
    let refused = gateway.login(&account.email, PASSWORD).await;
    assert!(refused.detail().contains("locked"), "{refused:?}");

    assert_eq!(audit_count(&account.id, "login_locked").await, 1);
    let metrics = String::from_utf8(gateway.ops_get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("\nportcullis_login_locked_refusals_total 1\n"),
        "{metrics}"
    );
}

/// `lockout.max_failures: 0` turns lockout off: failures are answered alike for ever, and
/// the right password still logs in.
#[tokio::test]
async fn max_failures_zero_turns_lockout_off() {
    let gateway = TestGateway::start_with(|config| config.lockout.max_failures = 0).await;
    let account = gateway.signup("no-lockout").await;
    for attempt in 1..=8 {
        let response = gateway.login(&account.email, WRONG).await;
        assert_eq!(response.detail(), INVALID, "attempt {attempt}");
    }
    let right = gateway.login(&account.email, PASSWORD).await;
    assert_eq!(right.status, 200, "{right:?}");
    assert_eq!(audit_count(&account.id, "account_locked").await, 0);
    let locked = sql(&format!(
        "SELECT locked_until IS NOT NULL FROM users WHERE id = '{}'",
        account.id
    ))
    .await;
    assert!(!locked[0].get::<_, bool>(0));
}

/// Guessing the current password through `password-change` is guessing a password: it is
/// counted like a failed login and locks the account the same way.
#[tokio::test]
async fn a_wrong_current_password_counts_as_a_failed_login() {
    let gateway = TestGateway::start().await;
    let account = gateway.signup("change-guess").await;
    let tokens = gateway.tokens(&account).await;
    let change = |current: &'static str| {
        let access = tokens.access.clone();
        let gateway = &gateway;
        async move {
            gateway
                .call(
                    "POST",
                    "/auth/password-change",
                    Some(
                        json!({ "current_password": current, "new_password": "Brand-New-Pass-9" }),
                    ),
                    Some(&access),
                )
                .await
        }
    };
    for attempt in 1..=4 {
        let response = change(WRONG).await;
        assert_eq!(response.status, 422, "attempt {attempt}: {response:?}");
        assert_eq!(response.detail(), "Current password is incorrect");
    }
    let attempts = sql(&format!(
        "SELECT failed_login_attempts FROM users WHERE id = '{}'",
        account.id
    ))
    .await;
    assert_eq!(attempts[0].get::<_, i32>(0), 4);

    let fifth = change(WRONG).await;
    assert_eq!(fifth.status, 403, "{fifth:?}");
    assert_eq!(fifth.detail(), NEWLY_LOCKED);
    // Locked now: neither the right current password nor a login gets through.
    let right = change(PASSWORD).await;
    assert_eq!(right.status, 403, "{right:?}");
    assert!(right.detail().contains("locked"), "{right:?}");
    let login = gateway.login(&account.email, PASSWORD).await;
    assert!(login.detail().contains("locked"), "{login:?}");
    assert_eq!(audit_count(&account.id, "password_changed").await, 0);
}

/// A login that read the account and verified the old password before a reset committed
/// gets no session after it, and its rehash (the parameters changed) does not write the old
/// password back over the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_in_flight_over_a_password_reset_gets_no_session() {
    let gateway = Arc::new(TestGateway::start().await);
    let account = gateway.signup("reset-race").await;
    // Stored under other parameters than the gateway's, so a successful login rehashes.
    let other_params = PasswordHasher::new(
        HashParams {
            memory_kib: 2048,
            iterations: 1,
            parallelism: 1,
        },
        1,
    )
    .unwrap();
    let old_hash = other_params.hash(PASSWORD).await.unwrap();
    sql(&format!(
        "UPDATE users SET password_hash = '{old_hash}' WHERE id = '{}'",
        account.id
    ))
    .await;
    let new_hash = other_params.hash("Reset-Password-77").await.unwrap();

    let blocker = Blocker::begin().await;
    let user_id = Uuid::parse_str(&account.id).unwrap();
    let now = SystemTime::now();
    blocker
        .store
        .set_password(&blocker.transaction, user_id, &new_hash, now)
        .await
        .unwrap();
    blocker
        .store
        .revoke_sessions_of(&blocker.transaction, user_id, None, "password reset", now)
        .await
        .unwrap();
    let login = login_task(&gateway, &account.email, PASSWORD);
    blocker.until_waiting(1).await;
    blocker.commit().await;

    let login = login.await.unwrap();
    assert_eq!(login.status, 401, "a session outlived the reset: {login:?}");
    assert_eq!(login.detail(), INVALID);
    assert_eq!(live_sessions(&account.id).await, 0);
    let stored: String = sql(&format!(
        "SELECT password_hash FROM users WHERE id = '{}'",
        account.id
    ))
    .await[0]
        .get(0);
    assert_eq!(stored, new_hash, "the reset's password stands");
    let new_login = gateway.login(&account.email, "Reset-Password-77").await;
    assert_eq!(new_login.status, 200, "{new_login:?}");
}

/// A login that verified the password before a deactivation committed gets no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_in_flight_over_a_deactivation_gets_no_session() {
    let gateway = Arc::new(TestGateway::start().await);
    let account = gateway.signup("deactivate-race").await;

    let blocker = Blocker::begin().await;
    let user_id = Uuid::parse_str(&account.id).unwrap();
    let now = SystemTime::now();
    let patch = UserPatch {
        is_active: Some(false),
        ..UserPatch::default()
    };
    blocker
        .store
        .update_user(&blocker.transaction, user_id, &patch, now)
        .await
        .unwrap();
    blocker
        .store
        .revoke_sessions_of(&blocker.transaction, user_id, None, "deactivated", now)
        .await
        .unwrap();
    let login = login_task(&gateway, &account.email, PASSWORD);
    blocker.until_waiting(1).await;
    blocker.commit().await;

    let login = login.await.unwrap();
    assert_eq!(
        login.status, 401,
        "a session outlived the deactivation: {login:?}"
    );
    assert_eq!(login.detail(), "Account has been deactivated");
    assert_eq!(live_sessions(&account.id).await, 0);
}

/// A login that verified the password before a role change committed is decided against the
/// changed account: its token carries the new role and is accepted, never the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_in_flight_over_a_role_change_carries_the_new_role() {
    let gateway = Arc::new(TestGateway::start().await);
    let account = gateway.signup("role-race").await;

    let blocker = Blocker::begin().await;
    let user_id = Uuid::parse_str(&account.id).unwrap();
    let now = SystemTime::now();
    let patch = UserPatch {
        role: Some("manager".into()),
        ..UserPatch::default()
    };
    blocker
        .store
        .update_user(&blocker.transaction, user_id, &patch, now)
        .await
        .unwrap();
    blocker
        .store
        .revoke_sessions_of(&blocker.transaction, user_id, None, "role changed", now)
        .await
        .unwrap();
    let login = login_task(&gateway, &account.email, PASSWORD);
    blocker.until_waiting(1).await;
    blocker.commit().await;

    let login = login.await.unwrap();
    assert_eq!(login.status, 200, "{login:?}");
    assert_eq!(login.json()["user"]["role"], "manager");
    let access = login.json()["access_token"].as_str().unwrap().to_string();
    let me = gateway.call("GET", "/auth/me", None, Some(&access)).await;
    assert_eq!(me.status, 200, "{me:?}");
    assert_eq!(me.json()["role"], "manager");
}

/// A gateway behind a trusted proxy on the loopback (so requests name their client in
/// `X-Forwarded-For`) that locks per account and client address.
async fn per_address_gateway() -> TestGateway {
    TestGateway::start_with(|config| {
        config.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        config.lockout.key = portcullis::config::LockoutKey::AccountAndIp;
    })
    .await
}

/// A login as sent by `client` through the trusted proxy.
async fn login_from(
    gateway: &TestGateway,
    client: &str,
    email: &str,
    password: &str,
) -> TestResponse {
    let mut connection = gateway.h1().await;
    let request = connection
        .request("POST", "/auth/login")
        .header("x-forwarded-for", client)
        .header("content-type", "application/json")
        .body(full(
            json!({ "email": email, "password": password }).to_string(),
        ))
        .unwrap();
    connection.send_read(request).await
}

async fn lock_mails_to(recipient: &str) -> i64 {
    sql(&format!(
        "SELECT count(*) FROM mail_outbox WHERE recipient = '{recipient}' AND subject ILIKE '%locked%'"
    ))
    .await[0]
        .get(0)
}

async fn admin_view(gateway: &TestGateway, admin: &str, user_id: &str) -> serde_json::Value {
    let response = gateway
        .call(
            "GET",
            &format!("/auth/admin/users/{user_id}"),
            None,
            Some(admin),
        )
        .await;
    assert_eq!(response.status, 200, "{response:?}");
    response.json()
}

const GUESSER: &str = "198.51.100.7";
const SECOND_GUESSER: &str = "198.51.100.99";
const OWNER: &str = "203.0.113.20";

/// `lockout.key: account_and_ip`: the guesser's address locks after `max_failures`, even
/// for the right password, while the owner's address logs in; the owner's success clears
/// nothing of the guesser's lock. A second address locking while the first lock holds is
/// audited but mails the owner no second time. The admin view sums the addresses' counts
/// and shows the lock in force; the account-wide columns are not used.
#[tokio::test]
async fn per_address_a_guesser_locks_only_their_own_address() {
    let gateway = per_address_gateway().await;
    let (_, admin) = gateway.account_with_role("pair-admin", "admin").await;
    let account = gateway.signup("pair-victim").await;
    for attempt in 1..=4 {
        let response = login_from(&gateway, GUESSER, &account.email, WRONG).await;
        assert_eq!(response.detail(), INVALID, "attempt {attempt}");
    }
    let locking = login_from(&gateway, GUESSER, &account.email, WRONG).await;
    assert_eq!(locking.status, 401, "{locking:?}");
    assert_eq!(locking.detail(), NEWLY_LOCKED);
    let refused = login_from(&gateway, GUESSER, &account.email, PASSWORD).await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(refused.detail().contains("locked"), "{refused:?}");

    let owner = login_from(&gateway, OWNER, &account.email, PASSWORD).await;
    assert_eq!(owner.status, 200, "{owner:?}");
    let still = login_from(&gateway, GUESSER, &account.email, PASSWORD).await;
    assert!(still.detail().contains("locked"), "{still:?}");
    assert_eq!(lock_mails_to(&account.email).await, 1);
    let body: String = sql(&format!(
        "SELECT body FROM mail_outbox WHERE recipient = '{}' AND subject ILIKE '%locked%'",
        account.email
    ))
    .await[0]
        .get(0);
    assert!(body.contains("still sign in from elsewhere"), "{body}");

    for _ in 0..5 {
        login_from(&gateway, SECOND_GUESSER, &account.email, WRONG).await;
    }
    let second = login_from(&gateway, SECOND_GUESSER, &account.email, PASSWORD).await;
    assert!(second.detail().contains("locked"), "{second:?}");
    assert_eq!(audit_count(&account.id, "account_locked").await, 2);
    assert_eq!(
        lock_mails_to(&account.email).await,
        1,
        "one mail per lockout"
    );

    // The guesser: 5 wrong and 2 refused while locked; the second: 5 and 1; the owner's
    // success left nothing behind.
    let view = admin_view(&gateway, &admin.access, &account.id).await;
    assert_eq!(view["failed_login_attempts"], 13, "{view}");
    assert!(view["locked_until"].is_string(), "{view}");
    let row = &sql(&format!(
        "SELECT failed_login_attempts, locked_until IS NULL FROM users WHERE id = '{}'",
        account.id
    ))
    .await[0];
    assert_eq!((row.get::<_, i32>(0), row.get::<_, bool>(1)), (0, true));
}

/// Unlocking an account in per-address mode clears every address's count and lock.
#[tokio::test]
async fn per_address_an_unlock_clears_every_address() {
    let gateway = per_address_gateway().await;
    let (_, admin) = gateway
        .account_with_role("pair-unlock-admin", "admin")
        .await;
    let account = gateway.signup("pair-unlock").await;
    for client in [GUESSER, SECOND_GUESSER] {
        for _ in 0..5 {
            login_from(&gateway, client, &account.email, WRONG).await;
        }
        let refused = login_from(&gateway, client, &account.email, PASSWORD).await;
        assert!(refused.detail().contains("locked"), "{client}: {refused:?}");
    }
    // A count below the limit from a third address is cleared too.
    login_from(&gateway, OWNER, &account.email, WRONG).await;

    let unlocked = gateway
        .call(
            "POST",
            &format!("/auth/admin/users/{}/unlock", account.id),
            None,
            Some(&admin.access),
        )
        .await;
    assert_eq!(unlocked.status, 204, "{unlocked:?}");
    let view = admin_view(&gateway, &admin.access, &account.id).await;
    assert_eq!(view["failed_login_attempts"], 0, "{view}");
    assert!(view["locked_until"].is_null(), "{view}");
    let pairs: i64 = sql(&format!(
        "SELECT count(*) FROM login_failures WHERE user_id = '{}'",
        account.id
    ))
    .await[0]
        .get(0);
    assert_eq!(pairs, 0);
    for client in [GUESSER, SECOND_GUESSER] {
        let response = login_from(&gateway, client, &account.email, PASSWORD).await;
        assert_eq!(response.status, 200, "{client}: {response:?}");
    }
}

/// The per-address lock is as absolute as the account's: a login from the address that
/// verified the right password before its lock was set, and decides after it, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_a_login_that_started_before_the_lock_is_refused_after_it() {
    let gateway = Arc::new(per_address_gateway().await);
    let account = gateway.signup("pair-before-lock").await;
    let user_id = Uuid::parse_str(&account.id).unwrap();

    let blocker = Blocker::begin().await;
    blocker.lock_user(&account.id).await;
    let right = {
        let gateway = gateway.clone();
        let email = account.email.clone();
        tokio::spawn(async move { login_from(&gateway, GUESSER, &email, PASSWORD).await })
    };
    blocker.until_waiting(1).await;
    let now = SystemTime::now();
    for _ in 0..5 {
        blocker
            .store
            .record_login_failure(
                &blocker.transaction,
                user_id,
                LockoutScope::Address(GUESSER),
                5,
                Duration::from_secs(30 * 60),
                now,
            )
            .await
            .unwrap();
    }
    blocker.commit().await;

    let right = right.await.unwrap();
    assert_eq!(right.status, 401, "the login beat the lock: {right:?}");
    assert!(right.detail().contains("locked"), "{right:?}");
    assert_eq!(live_sessions(&account.id).await, 0);
    let owner = login_from(&gateway, OWNER, &account.email, PASSWORD).await;
    assert_eq!(owner.status, 200, "{owner:?}");
}

/// Per address, concurrent failures are each counted and the pair locks exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_concurrent_failures_are_counted_exactly() {
    let gateway = Arc::new(
        TestGateway::start_with(|config| {
            config.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
            config.lockout.key = portcullis::config::LockoutKey::AccountAndIp;
            config.database.max_connections = 32;
        })
        .await,
    );
    let account = gateway.signup("pair-concurrent").await;
    let guesses: Vec<_> = (0..20)
        .map(|_| {
            let gateway = gateway.clone();
            let email = account.email.clone();
            tokio::spawn(async move { login_from(&gateway, GUESSER, &email, WRONG).await })
        })
        .collect();
    let mut newly_locked = 0;
    for guess in guesses {
        let response = guess.await.unwrap();
        assert_eq!(response.status, 401, "{response:?}");
        newly_locked += usize::from(response.detail() == NEWLY_LOCKED);
    }
    assert_eq!(newly_locked, 1);
    let count: i32 = sql(&format!(
        "SELECT failed_login_attempts FROM login_failures WHERE user_id = '{}'",
        account.id
    ))
    .await[0]
        .get(0);
    assert_eq!(count, 20);
    assert_eq!(audit_count(&account.id, "account_locked").await, 1);
    assert_eq!(lock_mails_to(&account.email).await, 1);
}

const SPRAYER: &str = "198.51.100.50";

/// `rate_limits.login_failures_per_client`: one address guessing across accounts is refused
/// with 429 and `Retry-After` once its failures fill the window, before any password is
/// verified (the right one included), while another address is unaffected. A login whose
/// password matched is not a failure.
#[tokio::test]
async fn password_spraying_from_one_address_is_refused_before_any_password_check() {
    let gateway = TestGateway::start_with(|config| {
        config.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        config.rate_limits.login_failures_per_client = Some(portcullis::config::RateLimit::new(
            3,
            Duration::from_secs(3600),
        ));
    })
    .await;
    let accounts = [
        gateway.signup("spray-1").await,
        gateway.signup("spray-2").await,
        gateway.signup("spray-3").await,
    ];
    // A success from the address takes nothing from its budget.
    let first = login_from(&gateway, SPRAYER, &accounts[0].email, PASSWORD).await;
    assert_eq!(first.status, 200, "{first:?}");
    for target in [&accounts[0].email, &accounts[1].email] {
        let response = login_from(&gateway, SPRAYER, target, WRONG).await;
        assert_eq!(response.detail(), INVALID, "{target}");
    }
    let unknown = login_from(&gateway, SPRAYER, "nobody-spray@example.com", WRONG).await;
    assert_eq!(unknown.detail(), INVALID);

    let verified = gateway
        .metric("portcullis_password_verifications_total")
        .await;
    for (email, password) in [(&accounts[2].email, PASSWORD), (&accounts[1].email, WRONG)] {
        let refused = login_from(&gateway, SPRAYER, email, password).await;
        assert_eq!(refused.status, 429, "{refused:?}");
        assert!(!refused.detail().is_empty(), "{refused:?}");
        let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=3600).contains(&retry), "{retry}");
    }
    assert_eq!(
        gateway
            .metric("portcullis_password_verifications_total")
            .await,
        verified,
        "a refused attempt verified a password"
    );
    assert_eq!(
        gateway
            .metric("portcullis_login_failure_limit_refusals_total")
            .await,
        2
    );
    // The refused attempt on the third account never reached it.
    assert_eq!(audit_count(&accounts[2].id, "login_failure").await, 0);

    let elsewhere = login_from(&gateway, OWNER, &accounts[2].email, PASSWORD).await;
    assert_eq!(elsewhere.status, 200, "{elsewhere:?}");
}

/// The failed-login limit is exact under concurrency: of ten guesses sent at once from one
/// address with room for three, exactly three verify a password and the rest get 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_spraying_verifies_no_more_than_the_limit() {
    let gateway = Arc::new(
        TestGateway::start_with(|config| {
            config.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
            config.rate_limits.login_failures_per_client = Some(
                portcullis::config::RateLimit::new(3, Duration::from_secs(3600)),
            );
        })
        .await,
    );
    let account = gateway.signup("spray-concurrent").await;
    let verified = gateway
        .metric("portcullis_password_verifications_total")
        .await;
    let guesses: Vec<_> = (0..10)
        .map(|_| {
            let gateway = gateway.clone();
            let email = account.email.clone();
            tokio::spawn(async move { login_from(&gateway, SPRAYER, &email, WRONG).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for guess in guesses {
        statuses.push(guess.await.unwrap().status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [401, 401, 401, 429, 429, 429, 429, 429, 429, 429]);
    assert_eq!(
        gateway
            .metric("portcullis_password_verifications_total")
            .await
            - verified,
        3
    );
}

/// Per address, a wrong `current_password` counts against the caller's address: it locks
/// password changes and logins from there, not from elsewhere, and the change that then
/// goes through from elsewhere clears every address's lock.
#[tokio::test]
async fn per_address_a_wrong_current_password_counts_against_the_address() {
    let gateway = per_address_gateway().await;
    let account = gateway.signup("pair-change").await;
    let tokens = gateway.tokens(&account).await;
    let change = |client: &'static str, current: &'static str| {
        let access = tokens.access.clone();
        let gateway = &gateway;
        async move {
            let mut connection = gateway.h1().await;
            let body = json!({ "current_password": current, "new_password": "Brand-New-Pass-9" });
            let request = connection
                .request("POST", "/auth/password-change")
                .header("x-forwarded-for", client)
                .header("authorization", format!("Bearer {access}"))
                .header("content-type", "application/json")
                .body(full(body.to_string()))
                .unwrap();
            connection.send_read(request).await
        }
    };
    for _ in 0..4 {
        assert_eq!(change(GUESSER, WRONG).await.status, 422);
    }
    let fifth = change(GUESSER, WRONG).await;
    assert_eq!(
        (fifth.status.as_u16(), fifth.detail()),
        (403, NEWLY_LOCKED.to_string())
    );
    let right = change(GUESSER, PASSWORD).await;
    assert_eq!(right.status, 403, "{right:?}");
    let login = login_from(&gateway, GUESSER, &account.email, PASSWORD).await;
    assert!(login.detail().contains("locked"), "{login:?}");

    let elsewhere = change(OWNER, PASSWORD).await;
    assert_eq!(elsewhere.status, 204, "{elsewhere:?}");
    let after = login_from(&gateway, GUESSER, &account.email, "Brand-New-Pass-9").await;
    assert_eq!(
        after.status, 200,
        "a new password clears every address: {after:?}"
    );
}
