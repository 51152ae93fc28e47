//! Portcullis: an authentication gateway. A reverse proxy that terminates HTTPS, serves its
//! own `/auth` routes, and forwards every other request to an unmodified upstream only after
//! checking the caller's token and the operator's policy.
//!
//! # Layout
//! - [`config`]: `gateway.yaml` with environment overrides, validated; the only file read.
//! - [`error`]: typed failures mapped to status codes and client messages in one place.
//! - [`proxy`]: the request path: `path` (pure normalisation), `headers` and `cors` (pure
//!   rewriting), `websocket` (pure upgrade checks), `forward` (the upstream client), `body`
//!   (streaming with limits).
//! - [`auth`]: the `/auth` routes, composed from `token`, `password`, `store`, `limits`, `mail`.
//! - [`token`] (pure): access tokens and opaque tokens. [`password`]: Argon2id and the rules.
//! - [`store`]: Postgres (users, sessions, email tokens, outbox, audit) and migrations.
//! - [`limits`]: Redis (revocation). [`mail`]: the outbox worker and SMTP.
//! - [`clock`]: time passed in, so tests move it rather than wait for it.
//! - [`server`]: listeners, TLS, the redirect and ops listeners, graceful shutdown.
//! - [`telemetry`]: logging and Prometheus metrics.
//! - [`cli`]: the `portcullis` command line; `main.rs` only calls it.

pub mod access;
pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod limits;
pub mod live_policy;
pub mod mail;
pub mod password;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod workers;
