//! Real web framework apps (tests/frameworks) started as child processes on loopback, for the
//! suite that checks that what the gateway judged is what the framework executed.
//!
//! Each app implements the example policy's routes and answers, in an `X-Framework-Report`
//! header, which handler ran for which method and route parameters and the identity it read
//! through its framework's own API. The interpreters come from Debian (PHP, Node with
//! Express) and from tests/run's venv (Flask, Django, Starlette on uvicorn).

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{temp_dir, test_python};

/// How long an app may take to say which port it listens on.
const START_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framework {
    Flask,
    Django,
    Starlette,
    Express,
    Php,
}

impl Framework {
    pub const ALL: [Framework; 5] = [
        Framework::Flask,
        Framework::Django,
        Framework::Starlette,
        Framework::Express,
        Framework::Php,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Framework::Flask => "flask",
            Framework::Django => "django",
            Framework::Starlette => "starlette",
            Framework::Express => "express",
            Framework::Php => "php",
        }
    }

    fn command(self) -> Command {
        let python = |script: &str| {
            let mut command = Command::new(test_python());
            command.arg(apps_dir().join(script));
            command
        };
        match self {
            Framework::Flask => python("flask_app.py"),
            Framework::Django => python("django_app.py"),
            Framework::Starlette => python("asgi_app.py"),
            Framework::Express => {
                let mut command = Command::new("node");
                command
                    .arg(apps_dir().join("express_app.js"))
                    .env("NODE_PATH", "/usr/share/nodejs");
                command
            }
            Framework::Php => {
                let mut command = Command::new("php");
                // The built-in server serves one connection at a time unless told otherwise;
                // the gateway's pool keeps several open.
                command
                    .args(["-S", "127.0.0.1:0"])
                    .arg(apps_dir().join("php_router.php"))
                    .env("PHP_CLI_SERVER_WORKERS", "4");
                command
            }
        }
    }

    /// PHP's server names its address on stderr; the other apps print `PORT n` on stdout.
    fn announces_on_stderr(self) -> bool {
        self == Framework::Php
    }
}

fn apps_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/frameworks")
}

/// A running app; killed when dropped.
pub struct FrameworkApp {
    pub framework: Framework,
    pub port: u16,
    child: Child,
}

impl FrameworkApp {
    pub async fn start(framework: Framework) -> FrameworkApp {
        let log = temp_dir(framework.name()).join("app.log");
        let mut command = framework.command();
        command.current_dir(apps_dir()).stdin(Stdio::null());
        if framework.announces_on_stderr() {
            command
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(Stdio::piped());
        } else {
            command
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).unwrap());
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("{} did not start: {error}", framework.name()));
        let announcements: Box<dyn Read + Send> = match framework.announces_on_stderr() {
            true => Box::new(child.stderr.take().unwrap()),
            false => Box::new(child.stdout.take().unwrap()),
        };
        // The pipe is read on a thread of its own for the app's whole life, so that an app
        // that keeps writing to it never blocks on a full pipe.
        let (port_sender, port_receiver) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut port_sender = Some(port_sender);
            for line in BufReader::new(announcements).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = announced_port(&line) {
                    if let Some(sender) = port_sender.take() {
                        let _ = sender.send(port);
                    }
                }
            }
        });
        let port = match tokio::time::timeout(START_WAIT, port_receiver).await {
            Ok(Ok(port)) => port,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} never said which port it listens on; its log:\n{}",
                    framework.name(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        FrameworkApp {
            framework,
            port,
            child,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FrameworkApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `PORT 43210` (the suite's apps) or PHP's `Development Server (http://127.0.0.1:43210) started`.
fn announced_port(line: &str) -> Option<u16> {
    if let Some(port) = line.strip_prefix("PORT ") {
        return port.trim().parse().ok();
    }
    let after = line.split("Development Server (http://127.0.0.1:").nth(1)?;
    after.split(')').next()?.parse().ok()
}

#[test]
fn ports_are_read_from_either_announcement() {
    assert_eq!(announced_port("PORT 43210"), Some(43210));
    assert_eq!(
        announced_port(
            "[Mon Dec  7 03:11:52 2026] PHP 8.2.36 Development Server (http://127.0.0.1:43469) started"
        ),
        Some(43469)
    );
    assert_eq!(announced_port("[date] 127.0.0.1:5555 Accepted"), None);
}
