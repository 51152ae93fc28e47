//! Integration tests: the gateway on real sockets, real TLS and a real upstream.
//! One binary; `harness` is shared, each other module covers one area.

mod harness;

mod auth_accounts;
mod auth_admin;
mod auth_fuzz;
mod auth_lockout;
mod auth_passwords;
mod auth_sessions;
mod auth_tokens;
mod browser;
mod browser_enforcement;
mod browser_flows;
mod corpus;
mod dependencies;
mod enforcement;
mod forward_auth;
mod forwarding;
mod frameworks;
mod hardening;
mod identity_setup;
mod lifecycle;
mod limits;
mod metrics;
mod pages;
mod policy_reload;
mod process;
mod redis_cluster;
mod revocation_durability;
mod slow_requests;
mod websocket;
