//! Live policy reloads: an edit is in force within a second without dropping a request; an
//! invalid edit is refused whole, counted, and the old policy stays.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::TestGateway;

const OPEN: &str = "version: 1
roles: [user]
rules:
  - name: open
    paths: [\"/**\"]
    allow: public
";

const CLOSED_ADMIN: &str = "version: 1
roles: [user]
rules:
  - name: admin closed
    paths: [\"/admin/**\"]
    allow: deny
  - name: open
    paths: [\"/**\"]
    allow: public
";

/// Replaces the file the way editors do: write a sibling, rename over.
fn replace(path: &Path, text: &str) {
    let staging = path.with_extension("tmp");
    std::fs::write(&staging, text).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

#[tokio::test]
async fn a_valid_edit_is_in_force_within_a_second() {
    let (gateway, path) = TestGateway::with_policy(OPEN, |_| {}).await;
    assert_eq!(gateway.get("/admin/x").await.status, 200);
    let before = String::from_utf8_lossy(&gateway.ops_get("/metrics").await.body).to_string();

    replace(&path, CLOSED_ADMIN);
    let edited = Instant::now();
    let mut in_force = None;
    while edited.elapsed() < Duration::from_secs(3) {
        if gateway.get("/admin/x").await.status == 401 {
            in_force = Some(edited.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let in_force = in_force.expect("the edit took effect");
    assert!(in_force <= Duration::from_secs(1), "took {in_force:?}");
    assert_eq!(gateway.metric("portcullis_policy_reloads_total").await, 1);
    let after = String::from_utf8_lossy(&gateway.ops_get("/metrics").await.body).to_string();
    let hash = |text: &str| {
        text.lines()
            .find(|line| line.starts_with("portcullis_policy_info"))
            .unwrap()
            .to_string()
    };
    assert_ne!(
        hash(&before),
        hash(&after),
        "the policy hash in /metrics changed"
    );
}

#[tokio::test]
async fn an_invalid_edit_is_refused_and_the_old_policy_stays() {
    let (gateway, path) = TestGateway::with_policy(CLOSED_ADMIN, |_| {}).await;
    replace(&path, "version: 1\nroles: [user]\nrules:\n  - name: broken\n    paths: [\"/a/**/b\"]\n    allow: public\n");
    let mut counted = false;
    for _ in 0..150 {
        if gateway
            .metric("portcullis_policy_reload_failures_total")
            .await
            == 1
        {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(counted, "the refused edit is counted");
    assert_eq!(
        gateway.get("/admin/x").await.status,
        401,
        "the old policy is still in force"
    );
    assert_eq!(gateway.get("/other").await.status, 200);
    assert_eq!(gateway.metric("portcullis_policy_reloads_total").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_drop_no_request() {
    let (gateway, path) = TestGateway::with_policy(OPEN, |_| {}).await;
    let gateway = Arc::new(gateway);
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (gateway, stop, served, failed) = (
                gateway.clone(),
                stop.clone(),
                served.clone(),
                failed.clone(),
            );
            tokio::spawn(async move {
                let mut client = gateway.h1().await;
                while !stop.load(Ordering::SeqCst) {
                    // Public in both versions of the policy: every request must succeed.
                    let request = client
                        .request("GET", "/page")
                        .body(crate::harness::empty())
                        .unwrap();
                    match client.try_send(request).await {
                        Ok(response) if response.status() == 200 => {
                            crate::harness::TestResponse::read(response).await;
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            client = gateway.h1().await;
                        }
                    }
                }
            })
        })
        .collect();
    for round in 1..=20u64 {
        replace(&path, if round % 2 == 1 { CLOSED_ADMIN } else { OPEN });
        let mut reloaded = false;
        for _ in 0..150 {
            if gateway.metric("portcullis_policy_reloads_total").await == round {
                reloaded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(reloaded, "reload {round} happened");
    }
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    assert!(
        served.load(Ordering::SeqCst) > 20,
        "requests ran throughout"
    );
}

#[tokio::test]
async fn an_edit_whose_own_tests_fail_is_refused_and_the_old_policy_stays() {
    let (gateway, path) = TestGateway::with_policy(CLOSED_ADMIN, |_| {}).await;
    // Valid YAML and rules, but its case expects the admin area to stay closed.
    let opened = format!("{OPEN}tests:\n  - {{ method: GET, path: /admin/x, expect: 401 }}\n");
    replace(&path, &opened);
    let mut counted = false;
    for _ in 0..150 {
        if gateway
            .metric("portcullis_policy_reload_failures_total")
            .await
            == 1
        {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(counted, "the refused edit is counted");
    assert_eq!(
        gateway.get("/admin/x").await.status,
        401,
        "the old policy is still in force"
    );
    assert_eq!(gateway.metric("portcullis_policy_reloads_total").await, 0);

    // The same edit with a case that holds is put in force.
    replace(
        &path,
        &format!(
            "{OPEN}tests:\n  - {{ method: GET, path: /admin/x, expect: allow, rule: open }}\n"
        ),
    );
    let mut in_force = false;
    for _ in 0..150 {
        if gateway.get("/admin/x").await.status == 200 {
            in_force = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(in_force, "a passing edit is put in force");
    assert_eq!(gateway.metric("portcullis_policy_reloads_total").await, 1);
}
