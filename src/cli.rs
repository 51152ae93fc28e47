//! The `portcullis` command line. Its shape is part of the external contract; each command
//! loads what it needs, runs, and turns failure into a one-line message and an exit code
//! rather than a panic.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::server::{self, App, Listeners};

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
    /// Validate or explain a policy file.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Exit 0 when FILE is a valid policy, 1 with `file:line:col: message` lines when not.
    Check { file: PathBuf },
    /// Print which rule matches a request and the decision.
    Explain {
        file: PathBuf,
        #[arg(long)]
        method: String,
        #[arg(long)]
        path: String,
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
    /// Create a verified user (bootstraps the first admin).
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        password_stdin: bool,
    },
}

/// Entry point for the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Migrate { .. } => not_yet("migrate", "the identity store"),
        Command::Policy { .. } => not_yet("policy", "the policy engine"),
        Command::User { .. } => not_yet("user", "the identity store"),
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("portcullis: {message}");
    ExitCode::FAILURE
}

/// Commands whose subsystem has not landed yet say so plainly instead of pretending.
fn not_yet(command: &str, subsystem: &str) -> ExitCode {
    eprintln!(
        "portcullis: `{command}` is not available in this build: {subsystem} has not landed yet"
    );
    ExitCode::from(2)
}

fn serve(config_path: &std::path::Path) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(error) => return fail(error),
    };
    if let Err(error) = crate::telemetry::init(&config.telemetry) {
        return fail(error);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
        let listeners = match Listeners::bind(&config).await {
            Ok(listeners) => listeners,
            Err(error) => return fail(error),
        };
        tracing::info!(
            https = %listeners.https_addr(),
            http = ?listeners.http_addr(),
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
