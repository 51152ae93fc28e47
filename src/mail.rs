//! Email: the outbox (mail is written in the same transaction as the change that causes it)
//! and the worker that sends it over SMTP with lettre, retrying with backoff, so an SMTP
//! outage delays mail but loses none. Also the message texts.
//!
//! Delivery is at least once, not exactly once: a batch of rows stays locked in one
//! transaction while it is sent, and if that transaction cannot commit (the database went
//! away, the process died) the mails already handed to the relay are sent again later. That
//! is the right side to err on for verification and reset links.
//!
//! Nothing here logs or stores a message body, because verification and reset mails carry
//! live tokens: logs name the outbox id, the recipient's domain and the error.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::GenericClient;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::{watch, Notify};

use crate::store::{PostgresOperation, Store};

/// One email as the outbox stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
}

/// Queues `mail` using the caller's client or transaction, so it commits or rolls back with
/// the change that caused it. After the transaction commits, call `notify_one()` on the
/// worker's [`OutboxWorker::waker`] so the mail goes out now rather than at the next poll.
pub async fn enqueue(
    store: &Store,
    client: &impl GenericClient,
    mail: &Mail,
) -> Result<(), tokio_postgres::Error> {
    let _timer = store.timer(PostgresOperation::EnqueueMail);
    let statement = client
        .prepare_cached("INSERT INTO mail_outbox (recipient, subject, body) VALUES ($1, $2, $3)")
        .await?;
    client
        .execute(&statement, &[&mail.to, &mail.subject, &mail.body])
        .await?;
    Ok(())
}

/// Mail an operator waits on: how much is still to be sent, and how long the oldest of it
/// has waited (0 when none is pending). Unsendable mail, pushed a century out
/// (`MARK_UNSENDABLE`), is left out: it will never leave, and counting it would hold an age
/// alert on for good. Reads the partial index of pending rows.
const BACKLOG: &str = "SELECT count(*), \
         COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 \
     FROM mail_outbox WHERE sent_at IS NULL AND next_attempt_at < now() + interval '1 year'";

/// The outbox backlog (for `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    pub pending: i64,
    pub oldest_age_seconds: f64,
}

/// Reads the outbox backlog with `client`.
pub async fn backlog(
    store: &Store,
    client: &impl GenericClient,
) -> Result<Backlog, tokio_postgres::Error> {
    let _timer = store.timer(PostgresOperation::OutboxBacklog);
    let row = client.query_one(BACKLOG, &[]).await?;
    Ok(Backlog {
        pending: row.try_get(0)?,
        oldest_age_seconds: row.try_get(1)?,
    })
}

// ---------------------------------------------------------------------------------------
// Message texts. Links are built only from the configured public URL: a Host header is
// attacker-controlled, and a reset link pointing at the attacker's host would leak the token.
// ---------------------------------------------------------------------------------------

/// Asks the user to confirm their address. `valid_for` is the verification token's lifetime
/// (`tokens.verification_ttl`), so the text never promises more than the token gives.
pub fn verification_mail(to: &str, public_url: &str, token: &str, valid_for: Duration) -> Mail {
    let link = link(public_url, "/auth/verify-email", token);
    Mail {
        to: to.to_owned(),
        subject: "Confirm your email address".to_owned(),
        body: format!(
            "Hello,\n\
             \n\
             Please confirm your email address by opening this link:\n\
             \n\
             {link}\n\
             \n\
             Or enter this code where you were asked for it:\n\
             \n\
             {token}\n\
             \n\
             The link and the code expire in {expiry}.\n\
             \n\
             If you did not create an account, you can ignore this email.\n",
            expiry = describe(valid_for),
        ),
    }
}

/// Carries a password-reset link; `valid_for` is the reset token's lifetime.
pub fn password_reset_mail(to: &str, public_url: &str, token: &str, valid_for: Duration) -> Mail {
    let link = link(public_url, "/auth/reset-password", token);
    Mail {
        to: to.to_owned(),
        subject: "Reset your password".to_owned(),
        body: format!(
            "Hello,\n\
             \n\
             Someone asked to reset the password of your account. To choose a new password, \
             open this link:\n\
             \n\
             {link}\n\
             \n\
             Or enter this code where you were asked for it:\n\
             \n\
             {token}\n\
             \n\
             The link and the code expire in {expiry} and work once.\n\
             \n\
             If you did not ask for this, ignore this email: your password has not changed.\n",
            expiry = describe(valid_for),
        ),
    }
}

/// Tells the owner that their password changed, so a takeover does not go unnoticed.
pub fn password_changed_mail(to: &str) -> Mail {
    Mail {
        to: to.to_owned(),
        subject: "Your password was changed".to_owned(),
        body: "Hello,\n\
               \n\
               The password of your account was just changed, and every session that was \
               signed in with the old password has been signed out.\n\
               \n\
               If this was you, there is nothing more to do. If it was not, reset your \
               password now and tell your administrator.\n"
            .to_owned(),
    }
}

/// Tells the owner that failed sign-ins locked their account for `minutes`: everywhere, or
/// with `lockout.key: account_and_ip` only for the address the attempts came from.
pub fn account_locked_mail(to: &str, minutes: u64, one_address: bool) -> Mail {
    let locked = if one_address {
        "sign-ins to your account from the network address they came from are blocked for \
         {lock}. You can still sign in from elsewhere, and from there again after that."
    } else {
        "your account is locked for {lock}. You can sign in again after that."
    }
    .replace("{lock}", &plural(minutes, "minute"));
    Mail {
        to: to.to_owned(),
        subject: "Your account was temporarily locked".to_owned(),
        body: format!(
            "Hello,\n\
             \n\
             After several failed sign-in attempts, {locked}\n\
             \n\
             If those attempts were not yours, someone may be guessing your password: once \
             the lock ends, sign in and change it.\n",
        ),
    }
}

/// `{public_url}{path}?token={token}`. A trailing slash on the URL is tolerated, and the
/// token is percent-encoded in case it ever holds more than URL-safe characters.
fn link(public_url: &str, path: &str, token: &str) -> String {
    let mut link = format!("{}{path}?token=", public_url.trim_end_matches('/'));
    for byte in token.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            link.push(char::from(byte));
        } else {
            link.push_str(&format!("%{byte:02X}"));
        }
    }
    link
}

/// A lifetime in words, rounded down so the text never overstates it: "24 hours",
/// "30 minutes", "45 seconds".
fn describe(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs >= 3600 && secs.is_multiple_of(3600) {
        plural(secs / 3600, "hour")
    } else if secs >= 60 {
        plural(secs / 60, "minute")
    } else {
        plural(secs, "second")
    }
}

fn plural(count: u64, unit: &str) -> String {
    if count == 1 {
        format!("1 {unit}")
    } else {
        format!("{count} {unit}s")
    }
}

// ---------------------------------------------------------------------------------------
// Settings and errors.
// ---------------------------------------------------------------------------------------

/// How the connection to the relay is secured; a mirror of the config enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// No TLS at all: for a relay on localhost or a test server.
    Plain,
    /// Plain connect, then STARTTLS, which is required (no fallback to plaintext).
    StartTls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
}

#[derive(Clone)]
pub struct MailerSettings {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `Name <addr>` or a bare address.
    pub from: String,
    /// For connecting and for each SMTP exchange.
    pub timeout: Duration,
    /// The wait after the first failure; it doubles with each further failure.
    pub retry_initial: Duration,
    /// The longest wait between two attempts at one mail.
    pub retry_max: Duration,
    /// How often the outbox is checked when nothing wakes the worker.
    pub poll_interval: Duration,
    /// The most rows one transaction claims.
    pub batch_size: i64,
}

// By hand so the password never reaches a log line.
impl fmt::Debug for MailerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailerSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("from", &self.from)
            .field("timeout", &self.timeout)
            .field("retry_initial", &self.retry_initial)
            .field("retry_max", &self.retry_max)
            .field("poll_interval", &self.poll_interval)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("smtp.from {from:?} is not a valid mailbox: {source}")]
    InvalidFrom {
        from: String,
        #[source]
        source: lettre::address::AddressError,
    },
    /// Building the TLS parameters for the relay failed.
    #[error("cannot set up TLS for the SMTP relay {host:?}: {source}")]
    Relay {
        host: String,
        #[source]
        source: lettre::transport::smtp::Error,
    },
    #[error("invalid mail settings: {0}")]
    InvalidSettings(&'static str),
    #[error("mail outbox database error: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("mail outbox database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

// ---------------------------------------------------------------------------------------
// The worker.
// ---------------------------------------------------------------------------------------

const CLAIM_DUE: &str = "SELECT id, recipient, subject, body, attempts, \
         (extract(epoch FROM created_at) * 1000000)::bigint AS created_us FROM mail_outbox \
     WHERE sent_at IS NULL AND next_attempt_at <= now() \
     ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED";

// clock_timestamp(), not now(): now() is the start of the claiming transaction, which can be
// several SMTP round trips in the past by the time a row is updated.
const MARK_SENT: &str = "UPDATE mail_outbox SET sent_at = clock_timestamp() WHERE id = $1";

const MARK_FAILED: &str = "UPDATE mail_outbox \
     SET attempts = attempts + 1, last_error = $2, \
         next_attempt_at = clock_timestamp() + make_interval(secs => $3) \
     WHERE id = $1";

// A mail that can never be sent (its recipient is not an address) stays in the table with
// its error for an operator to see, but is pushed out of reach instead of being retried
// forever. SMTP refusals, even 5xx ones, are retried: they are as often a relay
// misconfiguration that an operator fixes as a bad recipient, and the backoff caps their cost.
const MARK_UNSENDABLE: &str = "UPDATE mail_outbox \
     SET attempts = attempts + 1, last_error = $2, \
         next_attempt_at = clock_timestamp() + interval '100 years' \
     WHERE id = $1";

/// Seconds until the earliest pending row that was not yet due when the last batch was
/// claimed. Rows that were already due then and are still pending are locked by another
/// instance, which will send or reschedule them; counting them would make this worker spin.
const NEXT_DUE: &str =
    "SELECT EXTRACT(EPOCH FROM min(next_attempt_at) - clock_timestamp())::float8 \
     FROM mail_outbox WHERE sent_at IS NULL AND next_attempt_at > $1";

/// The most of an error kept in `last_error`.
const MAX_ERROR_CHARS: usize = 300;

/// Sends the outbox over SMTP. Several instances may run against one database: rows are
/// claimed with `FOR UPDATE SKIP LOCKED`, so none is sent by two of them.
pub struct OutboxWorker {
    /// Its pool, and the timings its statements are recorded in.
    store: Store,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    settings: MailerSettings,
    wake: Arc<Notify>,
}

/// What one claiming transaction did.
struct Batch {
    claimed: usize,
    sent: usize,
    /// The database's `now()` in the claiming transaction.
    claimed_at: SystemTime,
}

impl OutboxWorker {
    /// Checks the settings and builds the SMTP transport; connects to nothing yet.
    pub fn new(store: Store, settings: MailerSettings) -> Result<OutboxWorker, MailError> {
        if settings.batch_size < 1 {
            return Err(MailError::InvalidSettings("batch_size must be at least 1"));
        }
        if settings.timeout.is_zero() {
            return Err(MailError::InvalidSettings("timeout must be positive"));
        }
        // A zero backoff would leave a failing row due at once and the worker would spin on it.
        if settings.retry_initial.is_zero() {
            return Err(MailError::InvalidSettings("retry_initial must be positive"));
        }
        if settings.retry_max < settings.retry_initial {
            return Err(MailError::InvalidSettings(
                "retry_max must not be shorter than retry_initial",
            ));
        }
        if settings.poll_interval.is_zero() {
            return Err(MailError::InvalidSettings("poll_interval must be positive"));
        }
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|source| MailError::InvalidFrom {
                from: settings.from.clone(),
                source,
            })?;

        let relay_error = |source| MailError::Relay {
            host: settings.host.clone(),
            source,
        };
        let builder = match settings.security {
            SmtpSecurity::Plain => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.as_str())
            }
            SmtpSecurity::StartTls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&settings.host)
                    .map_err(relay_error)?
            }
            SmtpSecurity::Tls => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(&settings.host).map_err(relay_error)?
            }
        };
        let mut builder = builder.port(settings.port).timeout(Some(settings.timeout));
        if let Some(username) = &settings.username {
            builder = builder.credentials(Credentials::new(
                username.clone(),
                settings.password.clone().unwrap_or_default(),
            ));
        }

        Ok(OutboxWorker {
            store,
            transport: builder.build(),
            from,
            settings,
            wake: Arc::new(Notify::new()),
        })
    }

    /// Wakes the worker now (called after a transaction that enqueued mail commits), instead
    /// of waiting for the next poll. Use `notify_one()`: it is remembered if the worker is
    /// busy sending, where `notify_waiters()` would be lost.
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// Sends everything due, once: claims up to `batch_size` due rows at a time, oldest
    /// first, until a claim comes back short. Each row is either marked sent or gets
    /// `attempts + 1`, a short `last_error` and a `next_attempt_at` pushed out by the backoff
    /// (doubling from `retry_initial` up to `retry_max`). A recipient that is not an address
    /// is pushed out by 100 years instead, since retrying cannot help. Returns how many were
    /// sent. A database error is returned; an SMTP error is recorded on its row and is not an
    /// error of `send_due`.
    pub async fn send_due(&self) -> Result<usize, MailError> {
        let (sent, _) = self.drain(None).await?;
        Ok(sent)
    }

    /// Loops: sends until nothing more is due, then waits for the waker, the poll interval,
    /// or the earliest `next_attempt_at` if sooner. Stops when `shutdown` becomes true (or
    /// its sender is dropped), after finishing the batch in hand so that nothing sent goes
    /// unrecorded. Database and pool errors are logged and retried after `poll_interval`:
    /// the worker never exits on its own.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let poll = self.settings.poll_interval;
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            let pause = match self.drain(Some(&shutdown)).await {
                Ok((_, claimed_at)) => match self.until_next_due(claimed_at).await {
                    Ok(Some(wait)) => wait.min(poll),
                    Ok(None) => poll,
                    Err(error) => {
                        tracing::warn!(%error, "mail outbox: cannot read the next due time");
                        poll
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?poll, "mail outbox: database error");
                    poll
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        // The sender is gone, so no one can ever ask us to stop: the owner
                        // has shut down without saying so.
                        break;
                    }
                }
            }
        }
        tracing::debug!("mail outbox worker stopped");
    }

    /// Claims and sends batches until one comes back short (nothing more is due, or the rest
    /// is locked by another instance) or `shutdown` turns true. Returns how many were sent
    /// and the last claim's time.
    async fn drain(
        &self,
        shutdown: Option<&watch::Receiver<bool>>,
    ) -> Result<(usize, SystemTime), MailError> {
        let mut sent = 0;
        loop {
            let batch = self.send_batch().await?;
            sent += batch.sent;
            let full = i64::try_from(batch.claimed).unwrap_or(i64::MAX) >= self.settings.batch_size;
            if !full || shutdown.is_some_and(|rx| *rx.borrow()) {
                return Ok((sent, batch.claimed_at));
            }
        }
    }

    async fn send_batch(&self) -> Result<Batch, MailError> {
        let mut client = self.store.pool().get().await?;
        let tx = self.store.begin(&mut client).await?;
        let claim_timer = self.store.timer(PostgresOperation::OutboxClaim);
        let claimed_at: SystemTime = tx.query_one("SELECT now()", &[]).await?.get(0);
        let claim = tx.prepare_cached(CLAIM_DUE).await?;
        let rows = tx.query(&claim, &[&self.settings.batch_size]).await?;
        drop(claim_timer);
        let mut batch = Batch {
            claimed: rows.len(),
            sent: 0,
            claimed_at,
        };
        if rows.is_empty() {
            self.store.commit(tx).await?;
            return Ok(batch);
        }
        let mark_sent = tx.prepare_cached(MARK_SENT).await?;
        let mark_failed = tx.prepare_cached(MARK_FAILED).await?;
        let mark_unsendable = tx.prepare_cached(MARK_UNSENDABLE).await?;

        // Set once the relay fails without answering for a message (refused connection,
        // timeout, TLS failure): the rest of the batch would fail the same way, one timeout
        // each, with the rows locked all the while, so they are rescheduled untried.
        let mut relay_down: Option<String> = None;

        for row in &rows {
            let id: i64 = row.get("id");
            let recipient: &str = row.get("recipient");
            let attempts: i32 = row.get::<_, i32>("attempts").saturating_add(1);
            let domain = domain_of(recipient);

            if let Some(error) = &relay_down {
                let wait = backoff(
                    self.settings.retry_initial,
                    self.settings.retry_max,
                    attempts,
                );
                let _timer = self.store.timer(PostgresOperation::OutboxMark);
                tx.execute(&mark_failed, &[&id, error, &wait.as_secs_f64()])
                    .await?;
                tracing::debug!(
                    id,
                    domain,
                    attempts,
                    "mail not attempted: SMTP relay unreachable"
                );
                continue;
            }

            let created_us: i64 = row.get("created_us");
            let message_id = format!("<outbox.{id}.{created_us}@{}>", self.from.email.domain());
            let message = match self.message(
                message_id,
                recipient,
                row.get("subject"),
                row.get("body"),
            ) {
                Ok(message) => message,
                Err(error) => {
                    let _timer = self.store.timer(PostgresOperation::OutboxMark);
                    tx.execute(&mark_unsendable, &[&id, &error]).await?;
                    tracing::warn!(id, domain, %error, "mail cannot be sent; it will not be retried");
                    continue;
                }
            };

            match self.transport.send(message).await {
                Ok(_) => {
                    let _timer = self.store.timer(PostgresOperation::OutboxMark);
                    tx.execute(&mark_sent, &[&id]).await?;
                    batch.sent += 1;
                    tracing::info!(id, domain, "mail sent");
                }
                Err(error) => {
                    let text = short(&error);
                    let wait = backoff(
                        self.settings.retry_initial,
                        self.settings.retry_max,
                        attempts,
                    );
                    let timer = self.store.timer(PostgresOperation::OutboxMark);
                    tx.execute(&mark_failed, &[&id, &text, &wait.as_secs_f64()])
                        .await?;
                    drop(timer);
                    tracing::warn!(id, domain, attempts, retry_in = ?wait, error = %text, "mail send failed");
                    if !error.is_transient() && !error.is_permanent() {
                        relay_down = Some(text);
                    }
                }
            }
        }
        self.store.commit(tx).await?;
        Ok(batch)
    }

    /// The lettre message, or why this row can never become one.
    /// The Message-ID is derived from the outbox row, so a message sent again after a lost
    /// commit (delivery is at least once) carries the same id and mail clients drop the copy.
    fn message(
        &self,
        message_id: String,
        recipient: &str,
        subject: &str,
        body: String,
    ) -> Result<Message, String> {
        let to: Mailbox = recipient
            .parse()
            .map_err(|error| short(&format_args!("recipient is not a valid mailbox: {error}")))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(message_id))
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|error| short(&format_args!("cannot build the message: {error}")))
    }

    async fn until_next_due(&self, claimed_at: SystemTime) -> Result<Option<Duration>, MailError> {
        let client = self.store.pool().get().await?;
        let _timer = self.store.timer(PostgresOperation::OutboxNextDue);
        let statement = client.prepare_cached(NEXT_DUE).await?;
        let seconds: Option<f64> = client.query_one(&statement, &[&claimed_at]).await?.get(0);
        Ok(seconds.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)))
    }
}

/// The wait after the `attempts`-th failure: `initial`, doubling each time, capped at `max`.
fn backoff(initial: Duration, max: Duration, attempts: i32) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 31) as u32;
    initial
        .checked_mul(1u32 << doublings)
        .map_or(max, |wait| wait.min(max))
}

/// The part of an address after the last `@`: as much of a recipient as the logs show.
fn domain_of(recipient: &str) -> &str {
    recipient.rsplit_once('@').map_or("?", |(_, domain)| domain)
}

/// An error as text for `last_error`: one line, bounded.
fn short(error: &dyn fmt::Display) -> String {
    error
        .to_string()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_ERROR_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://gw.example";

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let initial = Duration::from_secs(30);
        let max = Duration::from_secs(3600);
        assert_eq!(backoff(initial, max, 1), Duration::from_secs(30));
        assert_eq!(backoff(initial, max, 2), Duration::from_secs(60));
        assert_eq!(backoff(initial, max, 3), Duration::from_secs(120));
        assert_eq!(backoff(initial, max, 7), Duration::from_secs(1920));
        assert_eq!(backoff(initial, max, 8), max);
        assert_eq!(backoff(initial, max, i32::MAX), max);
        assert_eq!(backoff(initial, max, 0), initial);
        assert_eq!(backoff(Duration::MAX, Duration::MAX, 40), Duration::MAX);
    }

    #[test]
    fn verification_mail_links_to_the_public_url_and_shows_the_token() {
        let mail = verification_mail("a@b.example", URL, "tok_EN-1", Duration::from_secs(86400));
        assert_eq!(mail.to, "a@b.example");
        assert!(mail
            .body
            .contains("https://gw.example/auth/verify-email?token=tok_EN-1\n"));
        assert!(mail.body.lines().any(|line| line == "tok_EN-1"));
        assert!(mail.body.contains("24 hours"));
        assert_eq!(mail.body.matches("https://").count(), 1);
    }

    #[test]
    fn reset_mail_links_to_the_public_url_with_its_lifetime() {
        let mail = password_reset_mail("a@b.example", URL, "abc", Duration::from_secs(3600));
        assert!(mail
            .body
            .contains("https://gw.example/auth/reset-password?token=abc\n"));
        assert!(mail.body.contains("1 hour "));
        let mail = password_reset_mail(
            "a@b.example",
            "https://gw.example/",
            "abc",
            Duration::from_secs(1800),
        );
        assert!(mail
            .body
            .contains("https://gw.example/auth/reset-password?token=abc\n"));
        assert!(mail.body.contains("30 minutes"));
    }

    #[test]
    fn tokens_are_percent_encoded_in_links() {
        assert_eq!(
            link(URL, "/x", "a b&c=d"),
            "https://gw.example/x?token=a%20b%26c%3Dd"
        );
    }

    #[test]
    fn notice_mails_carry_no_links() {
        let changed = password_changed_mail("a@b.example");
        let locked = account_locked_mail("a@b.example", 15, false);
        assert!(locked
            .body
            .contains("your account is locked for 15 minutes"));
        assert!(account_locked_mail("a@b.example", 1, false)
            .body
            .contains("1 minute."));
        let one_address = account_locked_mail("a@b.example", 30, true);
        assert!(one_address.body.contains("blocked for 30 minutes"));
        assert!(one_address.body.contains("still sign in from elsewhere"));
        for mail in [changed, locked, one_address] {
            assert!(!mail.body.contains("http"), "{mail:?}");
            assert!(!mail.subject.is_empty());
        }
    }

    #[test]
    fn durations_are_described_without_overstating() {
        assert_eq!(describe(Duration::from_secs(86400)), "24 hours");
        assert_eq!(describe(Duration::from_secs(3600)), "1 hour");
        assert_eq!(describe(Duration::from_secs(5400)), "90 minutes");
        assert_eq!(describe(Duration::from_secs(119)), "1 minute");
        assert_eq!(describe(Duration::from_secs(45)), "45 seconds");
    }

    #[test]
    fn settings_debug_hides_the_password() {
        let settings = MailerSettings {
            host: "smtp.example".into(),
            port: 587,
            security: SmtpSecurity::StartTls,
            username: Some("mailer".into()),
            password: Some("hunter2-secret".into()),
            from: "Portcullis <no-reply@gw.example>".into(),
            timeout: Duration::from_secs(10),
            retry_initial: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            poll_interval: Duration::from_secs(30),
            batch_size: 50,
        };
        let debug = format!("{settings:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(
            debug.contains("[redacted]") && debug.contains("mailer"),
            "{debug}"
        );
    }

    #[test]
    fn errors_are_kept_short_and_on_one_line() {
        let long = "x".repeat(1000) + "\r\nsecond line";
        assert_eq!(short(&long).chars().count(), MAX_ERROR_CHARS);
        assert!(!short(&"a\r\nb").contains('\n'));
        assert_eq!(domain_of("user@example.com"), "example.com");
        assert_eq!(domain_of("nonsense"), "?");
    }
}
