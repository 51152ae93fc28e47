//! Steady load for the fault tests: a few callers on a runtime of their own (so the test's
//! blocking docker commands never stall them), each sending one request after another on
//! a new connection through the balancer, every outcome recorded with its time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Outcome {
    pub at: Instant,
    pub failure: Option<String>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub callers: usize,
}

/// What happened in a window of the load.
#[derive(Debug)]
pub struct Tally {
    pub sent: usize,
    pub failed: usize,
    pub failures: Vec<String>,
    pub last_failure_after: Option<Duration>,
}

impl Load {
    pub fn start(target: SocketAddr, bearer: String, callers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, outcomes) = (stop.clone(), outcomes.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let mut tasks = Vec::new();
                    for _ in 0..callers {
                        let (stop, outcomes, bearer) =
                            (stop.clone(), outcomes.clone(), bearer.clone());
                        tasks.push(tokio::spawn(async move {
                            while !stop.load(Ordering::Relaxed) {
                                let reply = crate::https::call(
                                    target,
                                    "GET",
                                    "/hello",
                                    &[("authorization", &bearer)],
                                    None,
                                )
                                .await;
                                let failure = match reply {
                                    Ok(reply) if reply.status == 200 => None,
                                    Ok(reply) => Some(format!("{} {}", reply.status, reply.body)),
                                    Err(error) => Some(error),
                                };
                                let failed = failure.is_some();
                                outcomes.lock().unwrap().push(Outcome {
                                    at: Instant::now(),
                                    failure,
                                });
                                if failed {
                                    // A failing target is not hammered in a tight loop.
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                            }
                        }));
                    }
                    for task in tasks {
                        let _ = task.await;
                    }
                });
            })
        };
        Load {
            stop,
            outcomes,
            thread: Some(thread),
            callers,
        }
    }

    pub fn since(&self, start: Instant) -> Tally {
        let outcomes = self.outcomes.lock().unwrap();
        let window: Vec<&Outcome> = outcomes.iter().filter(|o| o.at >= start).collect();
        let failures: Vec<&Outcome> = window
            .iter()
            .copied()
            .filter(|o| o.failure.is_some())
            .collect();
        Tally {
            sent: window.len(),
            failed: failures.len(),
            last_failure_after: failures.last().map(|o| o.at - start),
            failures: failures
                .iter()
                .take(10)
                .map(|o| o.failure.clone().unwrap())
                .collect(),
        }
    }

    /// Waits until `count` more requests succeeded after `start`.
    pub async fn successes_after(&self, start: Instant, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let tally = self.since(start);
            if tally.sent - tally.failed >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {count} requests succeeded within {within:?}: {tally:?}",
                tally.sent - tally.failed
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
