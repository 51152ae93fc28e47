//! The `portcullis` command line. Its shape is part of the external contract; each command
//! loads what it needs, runs, and turns failure into a one-line message and an exit code
//! rather than a panic.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::app::App;
use crate::config::Config;
use crate::server::{self, Listeners};

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "An authentication gateway in front of unmodified applications"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (applies pending migrations first).
    Serve {
        #[arg(long, default_value = "config/gateway.yaml")]
        config: PathBuf,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long, default_value = "config/gateway.yaml")]
        config: PathBuf,
    },
    /// Validate, test or explain a policy file.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Exit 0 when this host's gateway answers ready on its ops listener, 1 otherwise
    /// (for container health checks).
    Health {
        #[arg(long, default_value = "config/gateway.yaml")]
        config: PathBuf,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Exit 0 when FILE is a valid policy and its `tests:` pass, 1 with
    /// `file:line:col: message` lines when not.
    Check { file: PathBuf },
    /// Run the `tests:` cases of FILE: exit 0 when all pass, 1 with a
    /// `file:line:col: message` line for each failing case.
    Test { file: PathBuf },
    /// Print which rule matches a request and the decision.
    Explain {
        file: PathBuf,
        #[arg(long)]
        method: String,
        #[arg(long)]
        path: String,
        /// The request's Host, for rules with `hosts:`.
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        user_id: Option<String>,
        #[arg(long)]
        anonymous: bool,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a verified user (bootstraps the first admin). Without --password-stdin a
    /// random password is generated and printed once.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        role: String,
        /// Read the password from standard input (one line).
        #[arg(long)]
        password_stdin: bool,
        #[arg(long, default_value = "config/gateway.yaml")]
        config: PathBuf,
    },
}

/// Entry point for the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Migrate { config } => migrate(&config),
        Command::Health { config } => health(&config),
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => policy_check(&file),
        Command::Policy {
            command: PolicyCommand::Test { file },
        } => policy_test(&file),
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    file,
                    method,
                    path,
                    host,
                    role,
                    user_id,
                    anonymous,
                },
        } => policy_explain(
            &file,
            &Asked {
                method: &method,
                path: &path,
                host: host.as_deref(),
                role: role.as_deref(),
                user_id: user_id.as_deref(),
                anonymous,
            },
        ),
        Command::User {
            command:
                UserCommand::Create {
                    email,
                    role,
                    password_stdin,
                    config,
                },
        } => create_user(&config, &email, &role, password_stdin),
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("portcullis: {message}");
    ExitCode::FAILURE
}

/// Reads and compiles a policy file, printing every diagnostic as `file:line:col: message`.
/// Also returns the file's hash, as the gateway shows it.
fn read_policy(file: &std::path::Path) -> Result<(crate::policy::Policy, String), ExitCode> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|error| fail(format!("{name}: {error}")))?;
    match crate::policy::Policy::parse(&text, None) {
        Ok((policy, warnings)) => {
            for warning in warnings {
                println!("{}", warning.render(&name));
            }
            Ok((policy, crate::live_policy::content_hash(&text)))
        }
        Err(diagnostics) => {
            for diagnostic in diagnostics {
                println!("{}", diagnostic.render(&name));
            }
            Err(ExitCode::FAILURE)
        }
    }
}

/// Runs the policy's `tests:` as the gateway judges requests (its path normalisation, with
/// the default settings), printing each failure as `file:line:col: message`. Returns how
/// many failed.
fn run_policy_tests(file: &std::path::Path, policy: &crate::policy::Policy) -> usize {
    let name = file.display().to_string();
    let failures = policy.run_tests(|path| crate::proxy::path::normalize_path(path, false));
    for failure in &failures {
        println!("{}", failure.render(&name));
    }
    failures.len()
}

fn policy_check(file: &std::path::Path) -> ExitCode {
    let policy = match read_policy(file) {
        Ok((policy, _)) => policy,
        Err(code) => return code,
    };
    let failed = run_policy_tests(file, &policy);
    if failed > 0 {
        eprintln!(
            "portcullis: {failed} of {} tests failed",
            policy.test_count()
        );
        return ExitCode::FAILURE;
    }
    println!(
        "{}: valid ({} rules, {} tests pass)",
        file.display(),
        policy.rule_count(),
        policy.test_count()
    );
    ExitCode::SUCCESS
}

fn policy_test(file: &std::path::Path) -> ExitCode {
    let policy = match read_policy(file) {
        Ok((policy, _)) => policy,
        Err(code) => return code,
    };
    let failed = run_policy_tests(file, &policy);
    let total = policy.test_count();
    if failed > 0 {
        eprintln!("portcullis: {failed} of {total} tests failed");
        return ExitCode::FAILURE;
    }
    println!("{}: {total} tests passed", file.display());
    ExitCode::SUCCESS
}

/// The request `policy explain` is asked about.
struct Asked<'a> {
    method: &'a str,
    path: &'a str,
    host: Option<&'a str>,
    role: Option<&'a str>,
    user_id: Option<&'a str>,
    anonymous: bool,
}

fn policy_explain(file: &std::path::Path, asked: &Asked<'_>) -> ExitCode {
    use crate::policy::{Decision, Identity, Request};

    let (policy, hash) = match read_policy(file) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let (method, path) = (asked.method, asked.path);
    println!("policy: {hash}");
    // The gateway judges the normalised path; explain the same one.
    let normalised = match crate::proxy::path::normalize_path(path, false) {
        Ok(normalised) => normalised,
        Err(error) => {
            println!("request: {method} {path}");
            println!("decision: 400 ({error})");
            return ExitCode::SUCCESS;
        }
    };
    let method = method.to_ascii_uppercase();
    let identity = match (asked.anonymous, asked.role) {
        (false, Some(role)) => Some(Identity {
            sub: asked.user_id.unwrap_or("user"),
            role,
        }),
        _ => None,
    };
    let request = Request {
        method: &method,
        host: asked.host,
        path: &normalised,
    };
    let caller = match &identity {
        Some(identity) => format!("user {} with role {}", identity.sub, identity.role),
        None => "anonymous".to_string(),
    };
    let host = asked
        .host
        .map_or_else(String::new, |host| format!(" on host {host}"));
    println!("request: {method} {normalised}{host} as {caller}");
    let rule_line = |rule: Option<usize>| match rule {
        Some(index) => format!("rule #{} \"{}\"", index + 1, policy.rule_name(index)),
        None => "no rule matches".to_string(),
    };
    let said = |decision: &Decision| match decision {
        Decision::Allow { .. } => "allow".to_string(),
        Decision::Unauthenticated { .. } => "401 (Not authenticated)".to_string(),
        Decision::Forbidden { detail, .. } => format!("403 ({detail})"),
    };
    let decision = policy.evaluate(&request, identity.as_ref());
    println!("matches: {}", rule_line(decision.rule()));
    println!("decision: {}", said(&decision));
    match &decision {
        Decision::Allow {
            rate_limit,
            upstream,
            ..
        } => {
            if let Some(limit) = rate_limit {
                println!(
                    "rate limit: {} per {:?} by {:?}",
                    limit.requests, limit.per, limit.key
                );
            }
            println!("upstream: {}", upstream.as_deref().unwrap_or("(default)"));
        }
        Decision::Unauthenticated {
            rule,
            on_unauthenticated,
        } => {
            // Said only when the rule sets it: the default (a browser navigation is sent to
            // sign in) holds everywhere else and would only be noise.
            if rule.is_some_and(|index| policy.rule_on_unauthenticated(index).is_some()) {
                println!("on_unauthenticated: {}", on_unauthenticated.as_str());
            }
        }
        Decision::Forbidden { .. } => {}
    }
    // Shadow rules never decide; say what each that matches would have.
    for (rule, would) in policy.shadow_decisions(&request, identity.as_ref()) {
        println!(
            "shadow: {} (mode: report) would decide: {}",
            rule_line(Some(rule)),
            said(&would)
        );
    }
    ExitCode::SUCCESS
}

fn serve(config_path: &std::path::Path) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(error) => return fail(error),
    };
    if let Err(error) = crate::telemetry::init(&config.telemetry) {
        return fail(error);
    }
    // This runtime accepts connections and runs the ops listener, signals and the mail
    // worker; connections themselves are served by the worker threads (`workers`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(format!("cannot start the runtime: {error}")),
    };
    runtime.block_on(async {
        let app = match App::build(&config) {
            Ok(app) => app,
            Err(error) => return fail(error),
        };
        if let Err(error) = app.store().migrate().await {
            return fail(format!("cannot apply migrations: {error}"));
        }
        let listeners = match Listeners::bind(&config).await {
            Ok(listeners) => listeners,
            Err(error) => return fail(error),
        };
        tracing::info!(
            https = %listeners.https_addr(),
            http = %listeners
                .http_addr()
                .map_or_else(|| "off".to_string(), |addr| addr.to_string()),
            ops = %listeners.ops_addr(),
            "portcullis listening"
        );
        match server::serve(app, listeners, server::shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(error) => fail(error),
        }
    })
}

fn health(config_path: &std::path::Path) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(error) => return fail(error),
    };
    // Shorter than any sensible health-check timeout, so the probe reports the reason
    // itself rather than being killed.
    let probe = server::ops::probe_ready(config.server.ops_listen, Duration::from_secs(3));
    match block_on(probe) {
        Ok(Ok(())) => {
            println!("ready");
            ExitCode::SUCCESS
        }
        Ok(Err(reason)) => fail(format!("not ready: {reason}")),
        Err(code) => code,
    }
}

/// A runtime for the one-shot commands.
fn block_on<T>(future: impl std::future::Future<Output = T>) -> Result<T, ExitCode> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Ok(runtime.block_on(future)),
        Err(error) => Err(fail(format!("cannot start the runtime: {error}"))),
    }
}

fn load_store(config_path: &std::path::Path) -> Result<(Config, crate::store::Store), ExitCode> {
    let config = Config::load(config_path).map_err(fail)?;
    let store = crate::store::Store::connect(
        config.database.url.expose(),
        2,
        config.database.connect_timeout,
    )
    .map_err(fail)?;
    Ok((config, store))
}

fn migrate(config_path: &std::path::Path) -> ExitCode {
    let (_, store) = match load_store(config_path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    match block_on(store.migrate()) {
        Ok(Ok(applied)) if applied.is_empty() => {
            println!("migrations: up to date");
            ExitCode::SUCCESS
        }
        Ok(Ok(applied)) => {
            for name in applied {
                println!("applied {name}");
            }
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => fail(format!("cannot apply migrations: {error}")),
        Err(code) => code,
    }
}

fn create_user(
    config_path: &std::path::Path,
    email: &str,
    role: &str,
    password_stdin: bool,
) -> ExitCode {
    use crate::password::{check_rules, HashParams, PasswordHasher};

    let (config, store) = match load_store(config_path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let email = crate::auth::normalize_email(email);
    if !crate::auth::is_valid_email(&email) {
        return fail("Invalid email address");
    }
    // The policy file defines the roles.
    let policy_text = match std::fs::read_to_string(&config.policy.path) {
        Ok(text) => text,
        Err(error) => return fail(format!("{}: {error}", config.policy.path.display())),
    };
    let roles: Vec<String> = match crate::policy::Policy::parse(&policy_text, None) {
        Ok((policy, _)) => policy.roles().to_vec(),
        Err(_) => {
            return fail(format!(
                "{} is not a valid policy (see `portcullis policy check`)",
                config.policy.path.display()
            ))
        }
    };
    if !roles.iter().any(|known| known == role) {
        return fail(format!(
            "unknown role {role:?}; known roles: {}",
            roles.join(", ")
        ));
    }
    let (password, generated) = if password_stdin {
        let mut line = String::new();
        if let Err(error) = std::io::stdin().read_line(&mut line) {
            return fail(format!(
                "cannot read the password from standard input: {error}"
            ));
        }
        (line.trim_end_matches(['\r', '\n']).to_string(), false)
    } else {
        (crate::token::OpaqueToken::generate().token, true)
    };
    let rules = crate::password::PasswordRules::from(&config.password);
    // A generated password is 256 random bits; the character-class rules are for people.
    if !generated {
        if let Err(problem) = check_rules(&password, &email, &rules) {
            return fail(problem.message());
        }
    }
    let result = block_on(async {
        store
            .migrate()
            .await
            .map_err(|error| format!("cannot apply migrations: {error}"))?;
        let argon2 = &config.password.argon2;
        let hasher = PasswordHasher::new(
            HashParams {
                memory_kib: argon2.memory_kib,
                iterations: argon2.iterations,
                parallelism: argon2.parallelism,
            },
            1,
        )
        .map_err(|error| error.to_string())?;
        let hash = hasher
            .hash(&password)
            .await
            .map_err(|error| error.to_string())?;
        let client = store
            .pool()
            .get()
            .await
            .map_err(|error| format!("database unavailable: {error}"))?;
        let user = crate::store::NewUser {
            email: &email,
            name: "",
            password_hash: &hash,
            role,
            is_verified: true,
        };
        match store
            .create_user(&client, &user, std::time::SystemTime::now())
            .await
        {
            Ok(user) => Ok(user.id),
            Err(crate::store::StoreError::Conflict) => Err("Email already registered".to_string()),
            Err(error) => Err(error.to_string()),
        }
    });
    match result {
        Ok(Ok(id)) => {
            println!("created user {id} <{email}> with role {role}");
            if generated {
                println!("password: {password}");
            }
            ExitCode::SUCCESS
        }
        Ok(Err(message)) => fail(message),
        Err(code) => code,
    }
}
