//! Policy evaluation cost at 10, 1,000 and 10,000 rules: `cargo bench --bench policy`.
//!
//! Each size is measured in the same run, interleaved, and reported as nanoseconds per
//! decision and as a ratio to the 10-rule policy, so the figure that matters (does cost grow
//! with the number of rules?) does not depend on how fast this machine happens to be.

use std::hint::black_box;
use std::time::{Duration, Instant};

use portcullis::policy::{synthetic, Identity, Policy, Request};

const SIZES: [usize; 3] = [10, 1_000, 10_000];
const ROUNDS: usize = 7;
const BATCH: usize = 200_000;

fn main() {
    let policies: Vec<(usize, Policy)> = SIZES
        .iter()
        .map(|&rules| {
            let started = Instant::now();
            let (policy, _) =
                Policy::parse(&synthetic(rules), None).expect("synthetic policies are valid");
            println!(
                "{rules:>6} rules: parsed and compiled in {:?}",
                started.elapsed()
            );
            (rules, policy)
        })
        .collect();
    let identity = Identity {
        sub: "42",
        role: "user",
    };

    // Per size: the first rule, the last rule, and a path no rule matches.
    let mut samples: Vec<Vec<[Duration; 3]>> = vec![Vec::new(); SIZES.len()];
    for _ in 0..ROUNDS {
        for (index, (rules, policy)) in policies.iter().enumerate() {
            let last = format!("/svc{}/items/42", rules - 1);
            let paths = ["/svc0/items/42", last.as_str(), "/nothing/here"];
            let mut timings = [Duration::ZERO; 3];
            for (slot, path) in paths.iter().enumerate() {
                let request = Request {
                    method: "GET",
                    host: None,
                    path,
                };
                let started = Instant::now();
                for _ in 0..BATCH {
                    black_box(policy.evaluate(black_box(&request), Some(black_box(&identity))));
                }
                timings[slot] = started.elapsed();
            }
            samples[index].push(timings);
        }
    }

    let median_ns = |size: usize, slot: usize| {
        let mut values: Vec<f64> = samples[size]
            .iter()
            .map(|timings| timings[slot].as_nanos() as f64 / BATCH as f64)
            .collect();
        values.sort_by(|a, b| a.total_cmp(b));
        values[values.len() / 2]
    };
    println!();
    println!("median ns per decision over {ROUNDS} interleaved rounds of {BATCH}:");
    println!(
        "{:>8}  {:>12}  {:>12}  {:>12}  {:>14}",
        "rules", "first rule", "last rule", "no match", "last vs 10"
    );
    for (index, rules) in SIZES.iter().enumerate() {
        println!(
            "{rules:>8}  {:>12.1}  {:>12.1}  {:>12.1}  {:>13.2}x",
            median_ns(index, 0),
            median_ns(index, 1),
            median_ns(index, 2),
            median_ns(index, 1) / median_ns(0, 1),
        );
    }
}
