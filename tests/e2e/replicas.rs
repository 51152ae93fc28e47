//! Three gateway replicas behind a balancer, under steady load, through the faults a fleet
//! meets: a logout seen by every replica at once, a replica killed, a rolling restart, a
//! replica cut off from Redis, Redis restarting empty.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::flows::{hello, login, logout, signed_up, until};
use crate::https::plain_get;
use crate::load::Load;
use crate::stack::Stack;

const REPLICAS: usize = 3;
/// `redis.revocation_lease` in config/gateway.compose.yaml.
const LEASE: Duration = Duration::from_secs(2);

struct Fleet {
    stack: Stack,
    containers: Vec<String>,
}

impl Fleet {
    fn gateway(&self, replica: usize) -> SocketAddr {
        self.stack.addr(&self.containers[replica], 8443)
    }

    fn ops(&self, replica: usize) -> SocketAddr {
        self.stack.addr(&self.containers[replica], 9901)
    }

    async fn ready(&self, replica: usize) -> (u16, String) {
        plain_get(self.ops(replica), "/readyz")
            .await
            .unwrap_or((0, "unreachable".to_string()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_behind_a_balancer_under_faults() {
    let stack = Stack::new("fleet", &["tests/e2e/compose.replicas.yml"]).shared_secret();
    crate::flows::prepare(&stack);
    let started = Instant::now();
    stack.up(REPLICAS, &[]);
    let fleet = Fleet {
        containers: stack.containers("gateway"),
        stack,
    };
    assert_eq!(fleet.containers.len(), REPLICAS);
    eprintln!(
        "e2e: {REPLICAS} replicas healthy in {:?}",
        started.elapsed()
    );
    let stack = &fleet.stack;
    let balancer = stack.addr(&stack.container("balancer"), 8443);
    let sink = stack.addr(&stack.container("mailpit"), 8025);

    // A logout through one replica is refused on the very next request through each other.
    let (email, _) = signed_up(fleet.gateway(0), sink, "fleet").await;
    for origin in 0..REPLICAS {
        let tokens = login(fleet.gateway(origin), &email).await;
        for replica in 0..REPLICAS {
            assert_eq!(
                hello(fleet.gateway(replica), &tokens.bearer()).await,
                Ok(200)
            );
        }
        let took = logout(fleet.gateway(origin), &tokens.bearer()).await;
        for replica in 0..REPLICAS {
            assert_eq!(
                hello(fleet.gateway(replica), &tokens.bearer()).await,
                Ok(401),
                "logged out through replica {origin}, still accepted by replica {replica}"
            );
        }
        eprintln!("e2e: logout through replica {origin} ({took:?}) refused next on every replica");
    }

    // Steady load through the balancer from here on.
    let (_, steady) = signed_up(balancer, sink, "steady").await;
    let load = Load::start(balancer, steady.bearer(), 8);
    let warm = Instant::now();
    until(
        "the balancer routes to every replica",
        Duration::from_secs(30),
        || async { load.since(warm).sent >= 100 },
    )
    .await;
    let baseline = load.since(warm);
    assert_eq!(baseline.failed, 0, "{baseline:?}");

    // One replica killed: only what it had in flight fails.
    let killed = Instant::now();
    stack.docker(&["kill", &fleet.containers[2]]);
    load.successes_after(killed, 300, Duration::from_secs(60))
        .await;
    let tally = load.since(killed);
    eprintln!(
        "e2e: replica killed: {} requests sent, {} failed, last failure {:?} after the kill: {:?}",
        tally.sent, tally.failed, tally.last_failure_after, tally.failures
    );
    assert!(
        tally.failed <= load.callers,
        "more failures than requests in flight: {tally:?}"
    );
    stack.docker(&["start", &fleet.containers[2]]);
    stack.wait_state(&fleet.containers[2], "healthy", Duration::from_secs(60));

    // A rolling restart with SIGTERM: every replica drains, none fails a request.
    let rolling = Instant::now();
    for container in &fleet.containers {
        let before = Instant::now();
        stack.docker(&["stop", "-t", "35", container]);
        let stopped = before.elapsed();
        stack.docker(&["start", container]);
        stack.wait_state(container, "healthy", Duration::from_secs(60));
        // The balancer's checks see it ready before the next one goes.
        load.successes_after(Instant::now(), 100, Duration::from_secs(30))
            .await;
        eprintln!("e2e: rolling restart: {container:.12} drained and stopped in {stopped:?}");
    }
    let tally = load.since(rolling);
    eprintln!(
        "e2e: rolling restart: {} requests sent, {} failed in {:?}",
        tally.sent,
        tally.failed,
        rolling.elapsed()
    );
    assert_eq!(tally.failed, 0, "{tally:?}");

    // One replica cut off from Redis: it stops trusting its revocation copy within the
    // lease and fails closed, says so on /readyz, and recovers by itself.
    let cut = 1;
    let victim = login(fleet.gateway(0), &email).await;
    assert_eq!(hello(fleet.gateway(cut), &victim.bearer()).await, Ok(200));
    let cut_off = Instant::now();
    let during_cut = Instant::now();
    stack.docker(&[
        "network",
        "disconnect",
        &format!("{}_cache", stack.project),
        &fleet.containers[cut],
    ]);
    let logout_took = logout(fleet.gateway(0), &victim.bearer()).await;
    until(
        "the cut-off replica stops trusting its revocation copy",
        LEASE + Duration::from_secs(3),
        || async {
            plain_get(fleet.ops(cut), "/metrics")
                .await
                .is_ok_and(|(_, metrics)| {
                    metrics.contains("\nportcullis_revocation_copy_trusted 0\n")
                })
        },
    )
    .await;
    let untrusted = cut_off.elapsed();
    assert!(untrusted < LEASE + Duration::from_secs(3), "{untrusted:?}");
    let not_ready = until(
        "the cut-off replica says it is not ready",
        Duration::from_secs(10),
        || async {
            let (status, body) = fleet.ready(cut).await;
            status == 503 && body.contains("redis")
        },
    )
    .await;
    // Never accepted there, however often it is asked while cut off.
    for _ in 0..20 {
        let status = hello(fleet.gateway(cut), &victim.bearer()).await.unwrap();
        assert_ne!(
            status, 200,
            "a revoked token was accepted by the cut-off replica"
        );
    }
    let answer_while_cut = hello(fleet.gateway(cut), &victim.bearer()).await.unwrap();
    eprintln!(
        "e2e: replica cut off from Redis: logout elsewhere took {logout_took:?}, copy \
         untrusted {untrusted:?} after the cut (lease {LEASE:?}), /readyz 503 after \
         {not_ready:?} more, the revoked token gets {answer_while_cut} there"
    );
    stack.docker(&[
        "network",
        "connect",
        &format!("{}_cache", stack.project),
        &fleet.containers[cut],
    ]);
    let recovered = until(
        "the cut-off replica recovers",
        Duration::from_secs(60),
        || async { fleet.ready(cut).await.0 == 200 },
    )
    .await;
    assert_eq!(hello(fleet.gateway(cut), &victim.bearer()).await, Ok(401));
    assert_eq!(hello(fleet.gateway(cut), &steady.bearer()).await, Ok(200));
    let tally = load.since(during_cut);
    eprintln!(
        "e2e: replica reconnected to Redis: ready again {recovered:?} after the reconnect \
         ({:?} after the cut); through the balancer meanwhile {} sent, {} failed",
        cut_off.elapsed(),
        tally.sent,
        tally.failed
    );

    // Redis restarts empty: no revoked token works again anywhere.
    let revoked = login(fleet.gateway(2), &email).await;
    logout(fleet.gateway(2), &revoked.bearer()).await;
    let emptied = Instant::now();
    stack.compose(&["rm", "-s", "-f", "redis"]);
    stack.docker(&["volume", "rm", &format!("{}_redis-data", stack.project)]);
    stack.compose(&["up", "-d", "--no-build", "--no-deps", "redis"]);
    let mut accepted_again = Vec::new();
    let back = loop {
        let mut all = true;
        for replica in 0..REPLICAS {
            if let Ok(200) = hello(fleet.gateway(replica), &revoked.bearer()).await {
                accepted_again.push(replica);
            }
            all &= hello(fleet.gateway(replica), &steady.bearer()).await == Ok(200);
        }
        if all {
            break emptied.elapsed();
        }
        assert!(
            emptied.elapsed() < Duration::from_secs(60),
            "the replicas did not serve again within 60s of Redis coming back empty"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for replica in 0..REPLICAS {
        assert_eq!(
            hello(fleet.gateway(replica), &revoked.bearer()).await,
            Ok(401)
        );
    }
    assert!(
        accepted_again.is_empty(),
        "a token revoked before Redis was emptied was accepted by replicas {accepted_again:?}"
    );
    let tally = load.since(emptied);
    eprintln!(
        "e2e: Redis restarted empty: every replica serves again {back:?} after the restart; \
         the revoked token refused throughout; through the balancer {} sent, {} failed",
        tally.sent, tally.failed
    );
    drop(load);
}
