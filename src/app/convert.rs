//! Configuration to domain values: the one place where a validated `config` type becomes
//! what `token`, `password`, `mail` and `limits` take, so those modules never read the
//! configuration themselves.

use crate::config;
use crate::limits::gate::Limit;
use crate::mail::{MailerSettings, SmtpSecurity};
use crate::password::{HashParams, PasswordRules, NIST_MIN_STRENGTH};
use crate::token::{KeyAlgorithm, TokenSettings};

impl From<&config::RateLimit> for Limit {
    fn from(limit: &config::RateLimit) -> Limit {
        Limit {
            requests: limit.requests,
            window: limit.per,
        }
    }
}

impl From<config::KeyAlgorithm> for KeyAlgorithm {
    fn from(algorithm: config::KeyAlgorithm) -> KeyAlgorithm {
        match algorithm {
            config::KeyAlgorithm::EdDsa => KeyAlgorithm::EdDsa,
            config::KeyAlgorithm::Es256 => KeyAlgorithm::Es256,
        }
    }
}

impl From<&config::TokensConfig> for TokenSettings {
    fn from(tokens: &config::TokensConfig) -> TokenSettings {
        TokenSettings {
            issuer: tokens.issuer.clone(),
            audience: tokens.audience.clone(),
            access_ttl: tokens.access_ttl,
            leeway: tokens.leeway,
        }
    }
}

impl From<&config::Argon2Config> for HashParams {
    fn from(argon2: &config::Argon2Config) -> HashParams {
        HashParams {
            memory_kib: argon2.memory_kib,
            iterations: argon2.iterations,
            parallelism: argon2.parallelism,
        }
    }
}

impl From<config::SmtpSecurity> for SmtpSecurity {
    fn from(security: config::SmtpSecurity) -> SmtpSecurity {
        match security {
            config::SmtpSecurity::Plain => SmtpSecurity::Plain,
            config::SmtpSecurity::StartTls => SmtpSecurity::StartTls,
            config::SmtpSecurity::Tls => SmtpSecurity::Tls,
        }
    }
}

/// How many outbox rows one pass of the mail worker claims.
const MAIL_BATCH_SIZE: i64 = 50;

impl From<&config::SmtpConfig> for MailerSettings {
    fn from(smtp: &config::SmtpConfig) -> MailerSettings {
        MailerSettings {
            host: smtp.host.clone(),
            port: smtp.port,
            security: smtp.security.into(),
            username: smtp.username.clone(),
            password: smtp
                .password
                .as_ref()
                .map(|password| password.expose().to_string()),
            from: smtp.from.clone(),
            timeout: smtp.timeout,
            retry_initial: smtp.retry_initial,
            retry_max: smtp.retry_max,
            poll_interval: smtp.poll_interval,
            batch_size: MAIL_BATCH_SIZE,
        }
    }
}

impl From<&config::PasswordConfig> for PasswordRules {
    /// The rules the configuration asks for, the preset applied: NIST drops the composition
    /// rules and leans on the strength estimate instead.
    fn from(password: &config::PasswordConfig) -> PasswordRules {
        let nist = password.preset == config::PasswordPreset::Nist;
        PasswordRules {
            min_length: password.min_length,
            max_bytes: password.max_bytes,
            require_uppercase: password.require_uppercase && !nist,
            require_lowercase: password.require_lowercase && !nist,
            require_digit: password.require_digit && !nist,
            reject_common: password.reject_common,
            reject_email_local_part: password.reject_email_local_part,
            min_strength: if nist {
                password.min_strength.max(NIST_MIN_STRENGTH)
            } else {
                password.min_strength
            },
        }
    }
}
