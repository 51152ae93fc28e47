//! Portcullis: an authentication gateway. A reverse proxy that terminates HTTPS, serves its
//! own `/auth` routes, and forwards every other request to an unmodified upstream only after
//! checking the caller's token and the operator's policy.
//!
//! # Layout
//! Pure cores at the bottom, I/O around them, one composition root; dependencies point one
//! way (the README draws them).
//! - [`app`]: the composition root. `App::build` makes every shared part once.
//! - [`config`]: `gateway.yaml` with environment overrides, validated into typed values.
//! - [`error`]: typed failures mapped to status codes and client messages in one place.
//! - [`access`]: the one access-token verifier (cache, claims, revocation); the session
//!   cookies and the origins they may act from (CSRF).
//! - [`proxy`]: the request path: the front checks (`checks`, `path`, `headers`, `cors`,
//!   `framing`), enforcement (`enforce`, `navigation`), forwarding (`forward`, `pool`, the
//!   bodies), and [`proxy::OwnRoutes`] and [`proxy::renewal::SessionRenewal`], through which
//!   `/auth` and silent refresh are plugged in.
//! - [`auth`]: the `/auth` routes, composed from `access`, `token`, `password`, `store`,
//!   `limits`, `mail`.
//! - [`policy`] (pure): the policy language; [`live_policy`]: the copy in force, reloaded live.
//! - [`token`] (pure): access tokens and opaque tokens. [`password`]: Argon2id and the rules.
//! - [`store`]: Postgres (users, sessions, email tokens, outbox, audit) and migrations.
//! - [`limits`]: Redis (rate limits and revocation, batched by the gate). [`mail`]: the
//!   outbox worker and SMTP.
//! - [`clock`]: time passed in, so tests move it rather than wait for it.
//! - [`server`]: listeners, the redirect and ops listeners, graceful shutdown; [`tls`]:
//!   certificates and their reloads; [`workers`]: the worker threads.
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
