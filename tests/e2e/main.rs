//! End-to-end tests against the docker compose stack users run (docker-compose.yml), with
//! the images built here from Debian's packages (tests/e2e/images.sh, compose.local.yml).
//! They need a Docker engine and a compose tool and fail, saying so, without them.
//!
//! Each test brings up a project of its own, named after it and this process, and tears
//! it down with its volumes afterwards, also when it fails (`PORTCULLIS_E2E_KEEP=1` keeps it
//! for a look). The tests print what they measure (requests sent, failed, time to recover):
//! `cargo test --test e2e -- --nocapture`.

mod cluster;
mod flows;
mod https;
mod load;
mod replicas;
mod stack;
mod user_stack;
