//! Access-token verification cost: `cargo bench --bench token`.
//!
//! A forwarded request whose token the gateway has not seen yet (a new client, or one more
//! of many) pays for the whole verification: both segments decoded and parsed, the HMAC, the
//! claims checked. The figure is reported per token and as a ratio to the HMAC-SHA256 of the
//! same signing input alone, measured interleaved in the same run: the part no verifier can
//! skip, so the ratio says how much the rest costs on any machine.

use std::hint::black_box;
use std::time::{Duration, Instant};

use portcullis::token::{TokenKeys, TokenSettings};

const SECRET: &[u8] = b"token-benchmark-secret-at-least-32-bytes-long";
const TOKENS: usize = 1_000;
const ROUNDS: usize = 7;
const PASSES: usize = 50;
const NOW: u64 = 1_800_000_000;

fn main() {
    let settings = TokenSettings {
        issuer: "portcullis".into(),
        audience: "portcullis".into(),
        access_ttl: Duration::from_secs(900),
        leeway: Duration::from_secs(30),
    };
    let keys = TokenKeys::new(settings, Some(SECRET), Vec::new(), None)
        .expect("an HS256 secret is a valid key set");
    // Distinct tokens, as from distinct callers: nothing is cached between them.
    let tokens: Vec<String> = (0..TOKENS)
        .map(|n| {
            let (token, _) = keys
                .issue_access(
                    &uuid::Uuid::new_v4().to_string(),
                    &format!("caller{n}@example.com"),
                    "user",
                    &uuid::Uuid::new_v4().to_string(),
                    NOW,
                )
                .expect("HS256 signs");
            token
        })
        .collect();
    let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
    let signing_inputs: Vec<&str> = tokens
        .iter()
        .map(|token| &token[..token.rfind('.').expect("three segments")])
        .collect();

    let mut verify = Vec::with_capacity(ROUNDS);
    let mut hmac = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..PASSES {
            for token in &tokens {
                let claims = keys.verify_access(black_box(token), NOW);
                assert!(claims.is_ok(), "a freshly issued token verifies");
                black_box(claims.ok());
            }
        }
        verify.push(started.elapsed());
        let started = Instant::now();
        for _ in 0..PASSES {
            for input in &signing_inputs {
                black_box(ring::hmac::sign(&hmac_key, black_box(input.as_bytes())));
            }
        }
        hmac.push(started.elapsed());
    }

    let per_token_ns = |samples: &mut Vec<Duration>| {
        samples.sort();
        samples[samples.len() / 2].as_nanos() as f64 / (PASSES * TOKENS) as f64
    };
    let verify_ns = per_token_ns(&mut verify);
    let hmac_ns = per_token_ns(&mut hmac);
    println!(
        "token of {} bytes: verify_access {verify_ns:.0} ns, HMAC-SHA256 of its signing input \
         {hmac_ns:.0} ns; ratio {:.2} (median of {ROUNDS} rounds)",
        tokens[0].len(),
        verify_ns / hmac_ns
    );
}
