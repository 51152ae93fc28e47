//! Gateways on a Redis Cluster (`redis.cluster_nodes`): a cluster of the test's own, three
//! masters, shared by two instances. A rate limit counts once across them while the clients'
//! keys spread over the masters; a logout on one is refused on the other at once; and the
//! master that holds the revocations restarting empty fails closed, then heals by itself
//! with nothing revoked forgotten.

use std::time::{Duration, Instant};

use portcullis::config::{Config, FailMode, Secret};

use crate::harness::cluster::RedisCluster;
use crate::harness::{empty, TestGateway, TestResponse};

/// `/app/**` needs a signed-in caller; `/limited/**` is public, six a minute per address.
const POLICY: &str = "version: 1
roles: [user, manager, admin]
rules:
  - name: limited
    paths: [\"/limited/**\"]
    allow: public
    rate_limit: { requests: 6, per: 1m, key: ip }
  - name: members
    paths: [\"/app/**\"]
    allow: authenticated
";

/// How long a condition polled for may take to come true.
const DEADLINE: Duration = Duration::from_secs(30);

/// The revocation lease of the tests where instances come and go: short, so that they settle
/// quickly.
const SHORT_LEASE: Duration = Duration::from_millis(500);

fn on_cluster(config: &mut Config, cluster: &RedisCluster, lease: Duration) {
    config.redis.cluster_nodes = cluster.seed_urls().into_iter().map(Secret::new).collect();
    // The single Redis of the base config is not used: this one is not even there.
    config.redis.url = Secret::new("redis://127.0.0.1:1/");
    config.redis.timeout = Duration::from_millis(300);
    config.redis.revocation_lease = lease;
    // A rate-limit check that fails in Redis must show, not be waved through.
    config.rate_limits.on_redis_error = FailMode::Deny;
    // Clients are told apart by the X-Forwarded-For the loopback (a trusted proxy) sends.
    config.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
}

/// Two instances sharing `cluster` and one key prefix, both following the revocation feed.
async fn two_instances(cluster: &RedisCluster, lease: Duration) -> (TestGateway, TestGateway) {
    let (first, _) =
        TestGateway::with_policy(POLICY, |config| on_cluster(config, cluster, lease)).await;
    let prefix = first.redis_prefix.clone();
    let (second, _) = TestGateway::with_policy(POLICY, |config| {
        on_cluster(config, cluster, lease);
        config.redis.key_prefix = prefix;
    })
    .await;
    first.revocation_copy_trusted().await;
    second.revocation_copy_trusted().await;
    (first, second)
}

/// `GET path` as sent by `client` through the trusted proxy.
async fn get_from(gateway: &TestGateway, client: &str, path: &str) -> TestResponse {
    let mut connection = gateway.h1().await;
    let request = connection
        .request("GET", path)
        .header("x-forwarded-for", client)
        .body(empty())
        .unwrap();
    connection.send_read(request).await
}

async fn status(gateway: &TestGateway, token: &str) -> u16 {
    gateway
        .call("GET", "/app/page", None, Some(token))
        .await
        .status
        .as_u16()
}

/// Asks until `gateway` answers `token` with `wanted`; a revoked token (`revoked`) must
/// never be let through meanwhile, not even while its master is away or being rebuilt.
async fn until_status(gateway: &TestGateway, token: &str, wanted: u16, revoked: bool, what: &str) {
    let mut last = 0;
    let polled = tokio::time::timeout(DEADLINE, async {
        loop {
            last = status(gateway, token).await;
            if revoked {
                assert_ne!(last, 200, "{what}: a revoked token was let through");
            }
            assert!(matches!(last, 200 | 401 | 503), "{what}: answered {last}");
            if last == wanted {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    assert!(
        polled.is_ok(),
        "{what}: never answered {wanted} (last {last})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_counts_once_across_instances_and_clients_spread_over_the_masters() {
    let cluster = RedisCluster::start().await;
    let (first, second) = two_instances(&cluster, SHORT_LEASE).await;

    // Six a minute for one address, through either instance: the seventh is refused by both.
    let client = "203.0.113.7";
    for n in 0..6 {
        let gateway = if n % 2 == 0 { &first } else { &second };
        let response = get_from(gateway, client, "/limited/page").await;
        assert_eq!(response.status, 200, "request {n}: {response:?}");
    }
    for gateway in [&first, &second] {
        let response = get_from(gateway, client, "/limited/page").await;
        assert_eq!(response.status, 429, "{response:?}");
        assert!(response.header("retry-after").is_some(), "{response:?}");
    }

    // Many clients at once, so that the instances' batches mix keys of many slots.
    let clients: Vec<String> = (0..40).map(|n| format!("198.51.100.{n}")).collect();
    let answers = futures_util::future::join_all(clients.iter().enumerate().map(|(n, client)| {
        let gateway = if n % 2 == 0 { &first } else { &second };
        get_from(gateway, client, "/limited/page")
    }))
    .await;
    for answer in &answers {
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    // Each client's log is a key of its own, on the master of its slot: more than one.
    let pattern = format!("{}rate-log:*", first.redis_prefix);
    let mut per_master = Vec::new();
    for index in 0..cluster.len() {
        per_master.push(cluster.keys_on(index, &pattern).await.len());
    }
    assert_eq!(per_master.iter().sum::<usize>(), 41, "{per_master:?}");
    assert!(
        per_master.iter().filter(|&&keys| keys > 0).count() > 1,
        "the clients' keys all sit on one master: {per_master:?}"
    );
    // And every revocation key sits on one master, with the epoch.
    let revocation = format!("{}{{revocation}}:*", first.redis_prefix);
    let mut holding = Vec::new();
    for index in 0..cluster.len() {
        if !cluster.keys_on(index, &revocation).await.is_empty() {
            holding.push(index);
        }
    }
    assert_eq!(holding.len(), 1, "revocation keys on masters {holding:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_through_one_instance_is_refused_by_the_other_on_the_next_request() {
    // A lease far longer than the test: a logout that returns before it was acknowledged by
    // both instances over sharded pub/sub, not waited out.
    let lease = Duration::from_secs(60);
    let cluster = RedisCluster::start().await;
    let (first, second) = two_instances(&cluster, lease).await;
    let account = first.signup("cluster-logout").await;
    let tokens = first.tokens(&account).await;
    let kept = first.tokens(&account).await;
    assert_eq!(status(&first, &tokens.access).await, 200);
    assert_eq!(status(&second, &tokens.access).await, 200);

    let started = Instant::now();
    let logout = first
        .call("POST", "/auth/logout", None, Some(&tokens.access))
        .await;
    assert_eq!(logout.status, 204, "{logout:?}");
    assert!(started.elapsed() < lease, "acknowledged, not waited out");
    // Both copies are trusted (and a copy would answer 200 from a stale list): the second
    // instance has the revocation.
    assert_eq!(status(&second, &tokens.access).await, 401);
    assert_eq!(status(&first, &tokens.access).await, 401);
    assert_eq!(
        status(&second, &kept.access).await,
        200,
        "the other session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revocation_master_restarting_empty_fails_closed_then_heals_without_forgetting() {
    // A lease far longer than the outage: trust must end because the subscription's loss is
    // seen at once (the crate's Disconnection push), not because the lease ran out.
    let lease = Duration::from_secs(60);
    let mut cluster = RedisCluster::start().await;
    let (first, second) = two_instances(&cluster, lease).await;
    let account = first.signup("cluster-restart").await;
    let revoked = first.tokens(&account).await;
    let kept = first.tokens(&account).await;
    let logout = first
        .call("POST", "/auth/logout", None, Some(&revoked.access))
        .await;
    assert_eq!(logout.status, 204, "{logout:?}");
    for gateway in [&first, &second] {
        assert_eq!(status(gateway, &revoked.access).await, 401);
        assert_eq!(status(gateway, &kept.access).await, 200);
    }
    let epoch = format!("{}{{revocation}}:epoch", first.redis_prefix);
    let master = cluster.master_of(&epoch).await;
    let rebuilds_before = first.metric("portcullis_revocation_rebuilds_total").await
        + second.metric("portcullis_revocation_rebuilds_total").await;

    cluster.kill(master);
    let killed = Instant::now();
    first.revocation_copy_untrusted().await;
    second.revocation_copy_untrusted().await;
    // Renewed every quarter lease (15 s), a copy could also lose trust at a failed renewal:
    // this bound holds either way, and fails only if the loss went unseen.
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "trust ended {:?} after the master died",
        killed.elapsed()
    );
    // revocation_on_redis_error: deny (the default). Once an instance has noticed, a live
    // token cannot be checked, and is refused with a 503, never let through unchecked.
    for (gateway, name) in [(&first, "first"), (&second, "second")] {
        until_status(gateway, &kept.access, 503, false, name).await;
        let answer = status(gateway, &revoked.access).await;
        assert!(answer == 401 || answer == 503, "{name}: answered {answer}");
        // Not ready while a master does not answer.
        assert_eq!(gateway.ops_get("/readyz").await.status, 503, "{name}");
    }

    cluster.start_again(master).await;
    // Each instance heals by itself: the revoked token stays refused throughout, the other
    // session works again once the state is rebuilt from Postgres.
    for (gateway, name) in [(&first, "first"), (&second, "second")] {
        until_status(gateway, &revoked.access, 401, true, name).await;
        until_status(gateway, &kept.access, 200, false, name).await;
        assert_eq!(status(gateway, &revoked.access).await, 401, "{name}");
        let ready = tokio::time::timeout(DEADLINE, async {
            while gateway.ops_get("/readyz").await.status != 200 {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await;
        assert!(ready.is_ok(), "{name}: ready again");
    }
    let rebuilds_after = first.metric("portcullis_revocation_rebuilds_total").await
        + second.metric("portcullis_revocation_rebuilds_total").await;
    assert!(
        rebuilds_after > rebuilds_before,
        "rebuilt from Postgres: {rebuilds_before} then {rebuilds_after}"
    );
    let mut node = cluster.node(master).await;
    let epoch_again: Option<String> = redis::cmd("GET")
        .arg(&epoch)
        .query_async(&mut node)
        .await
        .unwrap();
    assert!(epoch_again.is_some(), "a new epoch beside the revocations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_before_its_cluster_serves_once_the_cluster_is_up() {
    let mut cluster = RedisCluster::reserve();
    let (gateway, _) =
        TestGateway::with_policy(POLICY, |config| on_cluster(config, &cluster, SHORT_LEASE)).await;
    assert_eq!(gateway.ops_get("/readyz").await.status, 503);
    // No Redis: the limit cannot be checked, and Redis errors deny here.
    let refused = get_from(&gateway, "203.0.113.8", "/limited/page").await;
    assert_eq!(refused.status, 503, "{refused:?}");

    cluster.create().await;
    let served = tokio::time::timeout(DEADLINE, async {
        while get_from(&gateway, "203.0.113.9", "/limited/page")
            .await
            .status
            != 200
        {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "served once the cluster is up");
    let account = gateway.signup("cluster-late").await;
    let tokens = gateway.tokens(&account).await;
    // Until the first rebuild from Postgres is done (the cluster is new and empty), a
    // signed-in request fails closed; then it passes.
    until_status(&gateway, &tokens.access, 200, false, "once rebuilt").await;
    gateway.revocation_copy_trusted().await;
    let ready = tokio::time::timeout(DEADLINE, async {
        while gateway.ops_get("/readyz").await.status != 200 {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "ready once the cluster is up");
    let logout = gateway
        .call("POST", "/auth/logout", None, Some(&tokens.access))
        .await;
    assert_eq!(logout.status, 204, "{logout:?}");
    assert_eq!(status(&gateway, &tokens.access).await, 401);
}
