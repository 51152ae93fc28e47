//! The composition root. [`App::build`] makes every shared part once, from a validated
//! configuration: the Postgres store, the Redis connections and the gate over them, the
//! revocation feed, the token keys and the one access-token verifier, the live policy, the
//! identity side (`auth`) and the forwarding side (`proxy`), TLS and metrics. Nothing else
//! constructs these; the server, the ops listener and the CLI use them from here.
//!
//! Configuration becomes domain values in [`convert`], so no module below reads the
//! configuration for another.

mod convert;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crate::access::{AccessVerifier, CookieOrigins};
use crate::auth::{AuthLimits, AuthParts, AuthService, AuthSettings};
use crate::clock::Clock;
use crate::config::{Config, ServerConfig};
use crate::limits::feed::RevocationFeed;
use crate::limits::gate::Gate;
use crate::limits::revocation::Revocations;
use crate::limits::{Redis, RedisError, Target as RedisTarget};
use crate::live_policy::PolicySource;
use crate::mail::{MailError, OutboxWorker};
use crate::password::{HashingPool, PasswordError, PasswordHasher};
use crate::proxy::enforce::{Enforcer, EnforcerSettings, FailModes};
use crate::proxy::{BuildError, Gateway};
use crate::store::{Store, StoreError};
use crate::telemetry::metrics::Metrics;
use crate::tls::{ReloadableTls, TlsError};
use crate::token::{TokenError, TokenKeys};

/// Why the application could not be built from a validated configuration.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Gateway(#[from] BuildError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("tokens: {0}")]
    Token(#[from] TokenError),
    #[error("password: {0}")]
    Password(#[from] PasswordError),
    #[error("smtp: {0}")]
    Mail(#[from] MailError),
    #[error("policy:\n{0}")]
    Policy(String),
}

/// The assembled gateway: the shared parts every listener and task uses.
pub struct App {
    pub(crate) policy: Arc<PolicySource>,
    pub(crate) policy_watch: bool,
    pub(crate) store: Store,
    pub(crate) gate: Gate,
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) auth: Arc<AuthService>,
    pub(crate) mail_worker: Mutex<Option<OutboxWorker>>,
    pub(crate) tls: Arc<ReloadableTls>,
    pub(crate) metrics: Arc<Metrics>,
    /// The listeners' and connections' settings, for the server.
    pub(crate) server: ServerConfig,
    /// Worker threads serving connections: `server.worker_threads`, resolved once.
    pub(crate) worker_threads: usize,
    /// Set once shutdown begins: readiness then answers 503.
    pub(crate) draining: Arc<AtomicBool>,
}

impl App {
    pub fn build(config: &Config) -> Result<App, AppError> {
        Self::build_with_clock(config, Arc::new(Clock::system()))
    }

    /// As `build`, with the clock every expiry and lockout is measured by (tests pass one
    /// they can move forward). Nothing connects yet: Postgres and Redis are reached on first
    /// use, so the gateway can start while they are away and recover when they return.
    pub fn build_with_clock(config: &Config, clock: Arc<Clock>) -> Result<App, AppError> {
        let server = &config.server;
        let worker_threads = crate::workers::worker_count(server.worker_threads);
        let tls = ReloadableTls::new(
            server.tls.cert_path.as_deref(),
            server.tls.key_path.as_deref(),
            &public_host(&server.public_url)
                .into_iter()
                .collect::<Vec<_>>(),
        )?;
        if tls.is_self_signed() {
            tracing::warn!("no TLS certificate configured: serving a generated self-signed development certificate");
        }
        let metrics = Arc::new(Metrics::new());
        let upstream_names = config
            .upstreams
            .iter()
            .map(|upstream| upstream.name.clone())
            .collect();
        let policy = Arc::new(
            PolicySource::load(
                &config.policy.path,
                upstream_names,
                crate::live_policy::Matching {
                    case_sensitive: config.policy.case_sensitive,
                    allow_path_parameters: config.server.allow_path_parameters,
                },
            )
            .map_err(AppError::Policy)?,
        );

        let store = Store::connect(
            config.database.url.expose(),
            config.database.max_connections,
            config.database.connect_timeout,
        )?;
        let cluster_nodes: Vec<&str> = config
            .redis
            .cluster_nodes
            .iter()
            .map(|node| node.expose())
            .collect();
        let target = if cluster_nodes.is_empty() {
            RedisTarget::Single(config.redis.url.expose())
        } else {
            RedisTarget::Cluster(&cluster_nodes)
        };
        let redis = Redis::connect_for_workers(
            target,
            &config.redis.key_prefix,
            config.redis.timeout,
            worker_threads,
        )?;
        let tokens = &config.tokens;
        let token_lifetime = tokens.access_ttl + tokens.leeway;
        // Always followed, even when tokens are not checked against it: this instance's
        // revocations are published and acknowledged either way, so instances that do check
        // see them in time.
        let feed = RevocationFeed::new(
            redis.clone(),
            clock.clone(),
            token_lifetime,
            config.redis.revocation_lease,
            config.redis.revocation_feed,
            Some(store.clone()),
        );
        let gate = Gate::with_feed(redis.clone(), Some(feed.clone()));
        let keys = Arc::new(token_keys(config)?);
        let fail = FailModes {
            rate: config.rate_limits.on_redis_error,
            revocation: config.rate_limits.revocation_on_redis_error,
        };
        let cookie_mode = tokens.cookie.enabled;
        let cors = config
            .cors
            .policy()
            .map_err(|error| BuildError::Cors(error.to_string()))?;
        let access = Arc::new(AccessVerifier::new(
            keys.clone(),
            cookie_mode,
            gate.clone(),
            clock.clone(),
            fail.revocation,
            worker_threads,
            Arc::new(CookieOrigins::new(&server.public_url, &cors.origins)),
        ));

        let mail_worker = OutboxWorker::new(store.clone(), (&config.smtp).into())?;
        let limits = &config.rate_limits;
        let failures = crate::limits::failures::FailureLog::new(redis.clone());
        let auth = Arc::new(AuthService::new(AuthParts {
            store: store.clone(),
            revocations: Revocations::new(
                redis,
                token_lifetime,
                Some(feed.clone()),
                Some(store.clone()),
            ),
            feed,
            gate: gate.clone(),
            failures,
            keys,
            access: access.clone(),
            hasher: password_hasher(config)?,
            rules: (&config.password).into(),
            clock,
            policy: policy.clone(),
            mail_waker: mail_worker.waker(),
            settings: AuthSettings {
                public_url: server.public_url.clone(),
                refresh_ttl: tokens.refresh_ttl,
                refresh_reuse_grace: tokens.refresh_reuse_grace,
                verification_ttl: tokens.verification_ttl,
                reset_ttl: tokens.reset_ttl,
                max_failures: i32::try_from(config.lockout.max_failures).unwrap_or(i32::MAX),
                lock_for: config.lockout.duration,
                lockout_key: config.lockout.key,
                cookie_mode,
                max_body_bytes: server.max_auth_body_bytes,
                body_read_timeout: server.body_read_timeout,
                limits: AuthLimits {
                    login: (&limits.login).into(),
                    register: (&limits.register).into(),
                    password_reset: (&limits.password_reset).into(),
                    default: (&limits.default).into(),
                    per_recipient: (&limits.per_recipient).into(),
                    login_failures: limits.login_failures_per_client.as_ref().map(Into::into),
                    ipv6_prefix: limits.ipv6_prefix,
                    on_redis_error: limits.on_redis_error,
                },
                pages: crate::auth::PageSettings {
                    product_name: config.pages.product_name.clone(),
                    logo_url: config.pages.logo_url.clone(),
                },
            },
        }));

        let mut enforcer = Enforcer::new(
            EnforcerSettings {
                fail,
                ipv6_prefix: limits.ipv6_prefix,
                websocket_recheck_interval: server.websocket_recheck_interval,
            },
            policy.clone(),
            gate.clone(),
            access,
        );
        // Silent refresh needs the refresh cookie, which only cookie mode sets.
        if tokens.cookie.enabled {
            enforcer = enforcer.with_renewal(Arc::new(auth.clone()));
        }
        let gateway = Gateway::new(
            config,
            metrics.clone(),
            Arc::new(auth.clone()),
            enforcer,
            worker_threads,
        )?;
        Ok(App {
            policy,
            policy_watch: config.policy.watch,
            store,
            gate,
            gateway: Arc::new(gateway),
            auth,
            mail_worker: Mutex::new(Some(mail_worker)),
            tls: Arc::new(tls),
            metrics,
            server: server.clone(),
            worker_threads,
            draining: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn auth(&self) -> &Arc<AuthService> {
        &self.auth
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn policy(&self) -> &Arc<PolicySource> {
        &self.policy
    }

    /// Re-reads what can change without a restart: the TLS certificate and the policy. A
    /// failure keeps what is in force and is logged.
    pub fn reload(&self) {
        self.policy.reload();
        match self.tls.reload() {
            Ok(true) => tracing::info!("TLS certificate reloaded"),
            Ok(false) => {}
            Err(error) => {
                tracing::error!(%error, "TLS certificate reload failed; keeping the current certificate")
            }
        }
    }
}

fn public_host(public_url: &str) -> Option<String> {
    let uri: http::Uri = public_url.parse().ok()?;
    Some(uri.host()?.trim_matches(['[', ']']).to_string())
}

/// The signing and verifying keys: the configured HS256 secret or key files, or, with
/// neither, a random secret that lasts as long as the process.
fn token_keys(config: &Config) -> Result<TokenKeys, TokenError> {
    let tokens = &config.tokens;
    let generated;
    let secret = match &tokens.hs256_secret {
        Some(secret) => Some(secret.expose().as_bytes()),
        None if tokens.signing_keys.is_empty() => {
            tracing::warn!(
                "no tokens.hs256_secret and no signing keys configured: using a random secret; \
                 tokens will not survive a restart or verify on other instances"
            );
            let mut bytes = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .map_err(|_| TokenError::Signing("no randomness for a secret".into()))?;
            generated = bytes;
            Some(&generated[..])
        }
        None => None,
    };
    let key_files: Vec<_> = tokens
        .signing_keys
        .iter()
        .map(|key| {
            (
                key.kid.clone(),
                key.algorithm.into(),
                key.private_key_path.clone(),
            )
        })
        .collect();
    TokenKeys::load(
        tokens.into(),
        secret,
        &key_files,
        tokens.active_kid.as_deref(),
    )
}

fn password_hasher(config: &Config) -> Result<PasswordHasher, PasswordError> {
    // One core is always left to forwarding: with every core hashing, a login flood
    // tripled forwarded p99 on two cores (bench/login.sh).
    let cores = std::thread::available_parallelism().map_or(2, |cores| cores.get());
    let hashing_threads = match config.password.max_concurrent_hashes {
        0 => cores.saturating_sub(1).max(1),
        configured => configured,
    };
    // 64 waiting per thread is a few seconds of hashing at the shipped parameters: a burst of
    // sign-ins waits, a flood beyond it is refused at once instead of timing out.
    let max_queued = match config.password.max_queued_hashes {
        0 => hashing_threads.saturating_mul(64),
        configured => configured,
    };
    PasswordHasher::with_pool(
        (&config.password.argon2).into(),
        HashingPool {
            threads: hashing_threads,
            max_queued,
            nice: config.password.hashing_nice,
        },
    )
}
