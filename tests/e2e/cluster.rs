//! Gateways on a three-master Redis Cluster (compose.cluster.yml): a limit counted once
//! across instances, with clients spread over the masters; a logout refused on the next
//! request everywhere; a restart of the master that holds the revocations.

use std::time::{Duration, Instant};

use crate::flows::{hello, login, logout, signed_up};
use crate::https::{must, plain_get};
use crate::stack::Stack;

const GATEWAYS: usize = 2;
const MASTERS: [&str; 3] = ["redis-1", "redis-2", "redis-3"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_on_a_redis_cluster() {
    let stack = Stack::new("cluster", &["tests/e2e/compose.cluster.yml"]).shared_secret();
    crate::flows::prepare(&stack);
    let started = Instant::now();
    stack.up(GATEWAYS, &[]);
    eprintln!(
        "e2e: {GATEWAYS} gateways on a 3-master cluster healthy in {:?}",
        started.elapsed()
    );
    let gateways = stack.containers("gateway");
    let gateway = |replica: usize| stack.addr(&gateways[replica], 8443);
    let ops = |replica: usize| stack.addr(&gateways[replica], 9901);
    let sink = stack.addr(&stack.container("mailpit"), 8025);
    let redis_cli = |master: &str, args: &[&str]| {
        let container = stack.container(master);
        let mut command = vec!["exec", container.as_str(), "redis-cli"];
        command.extend_from_slice(args);
        stack.docker(&command)
    };

    // A limit of 12 a minute per user, counted once whichever gateway is asked.
    let (email, limited) = signed_up(gateway(0), sink, "cluster").await;
    for request in 0..12 {
        let reply = must(
            gateway(request % GATEWAYS),
            "GET",
            "/limited/x",
            &[("authorization", &limited.bearer())],
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "request {request}: {}", reply.body);
    }
    for replica in 0..GATEWAYS {
        let reply = must(
            gateway(replica),
            "GET",
            "/limited/x",
            &[("authorization", &limited.bearer())],
            None,
        )
        .await;
        assert_eq!(reply.status, 429, "{}", reply.body);
    }
    // Many callers' counters spread over the masters.
    for user in 0..8 {
        let (_, tokens) = signed_up(gateway(user % GATEWAYS), sink, &format!("spread{user}")).await;
        let reply = must(
            gateway(user % GATEWAYS),
            "GET",
            "/limited/y",
            &[("authorization", &tokens.bearer())],
            None,
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    let keys: Vec<usize> = MASTERS
        .iter()
        .map(|master| redis_cli(master, &["DBSIZE"]).parse().unwrap())
        .collect();
    eprintln!("e2e: keys per master {keys:?}");
    assert!(
        keys.iter().filter(|&&count| count > 0).count() >= 2,
        "the keys did not spread over the masters: {keys:?}"
    );

    // A logout through one gateway is refused on the very next request through the other.
    let tokens = login(gateway(0), &email).await;
    assert_eq!(hello(gateway(1), &tokens.bearer()).await, Ok(200));
    logout(gateway(0), &tokens.bearer()).await;
    assert_eq!(hello(gateway(1), &tokens.bearer()).await, Ok(401));
    assert_eq!(hello(gateway(0), &tokens.bearer()).await, Ok(401));

    // The master holding the revocations restarts: revoked tokens stay refused, and every
    // gateway recovers by itself.
    let revocation_master = MASTERS
        .iter()
        .find(|master| redis_cli(master, &["EXISTS", "portcullis:{revocation}:epoch"]) == "1")
        .expect("one master holds the revocation epoch");
    let live = login(gateway(1), &email).await;
    let restart = Instant::now();
    stack.docker(&["restart", "-t", "10", &stack.container(revocation_master)]);
    let mut accepted = 0;
    let recovered = loop {
        let mut all = true;
        for replica in 0..GATEWAYS {
            if hello(gateway(replica), &tokens.bearer()).await == Ok(200) {
                accepted += 1;
            }
            all &= hello(gateway(replica), &live.bearer()).await == Ok(200)
                && plain_get(ops(replica), "/readyz")
                    .await
                    .is_ok_and(|(status, _)| status == 200);
        }
        if all {
            break restart.elapsed();
        }
        assert!(
            restart.elapsed() < Duration::from_secs(60),
            "the gateways did not recover from the master's restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        accepted, 0,
        "a revoked token was accepted during the restart"
    );
    // Still one cluster: a logout after the restart reaches every gateway at once.
    let after = login(gateway(1), &email).await;
    assert_eq!(hello(gateway(0), &after.bearer()).await, Ok(200));
    logout(gateway(1), &after.bearer()).await;
    assert_eq!(hello(gateway(0), &after.bearer()).await, Ok(401));
    eprintln!(
        "e2e: cluster master {revocation_master} (revocations) restarted: every gateway serves \
         again {recovered:?} after the restart began; the revoked token refused throughout"
    );
}
