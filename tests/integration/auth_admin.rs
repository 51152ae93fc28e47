//! The admin API: access, pagination and search, changes that end sessions, unlock, audit.

use serde_json::json;

use crate::harness::identity::PASSWORD;
use crate::harness::TestGateway;

#[tokio::test]
async fn only_admins_reach_the_admin_api() {
    let gateway = TestGateway::start().await;
    let (_, user) = gateway.account_with_role("plain", "user").await;
    let (_, manager) = gateway.account_with_role("manager", "manager").await;
    for tokens in [&user, &manager] {
        let response = gateway
            .call("GET", "/auth/admin/users", None, Some(&tokens.access))
            .await;
        assert_eq!(response.status, 403);
        assert_eq!(response.detail(), "Requires admin role");
    }
    let anonymous = gateway.call("GET", "/auth/admin/users", None, None).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        anonymous.header("www-authenticate"),
        Some("Bearer realm=\"gateway.test\"")
    );
}

#[tokio::test]
async fn users_are_listed_with_pagination_and_search() {
    let gateway = TestGateway::start().await;
    let (_, admin) = gateway.account_with_role("list-admin", "admin").await;
    let tag = format!("findme{}", std::process::id());
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(gateway.signup(&tag).await.id);
    }
    let page = gateway
        .call(
            "GET",
            &format!("/auth/admin/users?q={tag}&limit=2&offset=0"),
            None,
            Some(&admin.access),
        )
        .await;
    assert_eq!(page.status, 200, "{page:?}");
    let body = page.json();
    assert_eq!(body["total"], 3);
    assert_eq!(body["items"].as_array().unwrap().len(), 2);
    let next = gateway
        .call(
            "GET",
            &format!(
                "/auth/admin/users?q={}&limit=2&offset=2",
                tag.to_uppercase()
            ),
            None,
            Some(&admin.access),
        )
        .await
        .json();
    assert_eq!(
        next["items"].as_array().unwrap().len(),
        1,
        "search is case-insensitive"
    );
    let mut seen: Vec<String> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(next["items"].as_array().unwrap())
        .map(|user| user["id"].as_str().unwrap().to_string())
        .collect();
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids);
    assert!(
        !page.body.windows(8).any(|window| window == b"password"),
        "no hash in the listing"
    );

    let bad = gateway
        .call(
            "GET",
            "/auth/admin/users?limit=0",
            None,
            Some(&admin.access),
        )
        .await;
    assert_eq!(bad.status, 422);
    let wildcard = gateway
        .call("GET", "/auth/admin/users?q=%25", None, Some(&admin.access))
        .await
        .json();
    assert_eq!(wildcard["total"], 0, "% in a search is a literal character");
}

#[tokio::test]
async fn a_role_change_or_deactivation_ends_the_users_sessions() {
    let gateway = TestGateway::start().await;
    let (_, admin) = gateway.account_with_role("patch-admin", "admin").await;
    let target = gateway.signup("target").await;
    let tokens = gateway.tokens(&target).await;

    let detail = gateway
        .call(
            "GET",
            &format!("/auth/admin/users/{}", target.id),
            None,
            Some(&admin.access),
        )
        .await;
    assert_eq!(detail.status, 200);
    assert_eq!(detail.json()["failed_login_attempts"], 0);
    assert!(detail.json().get("locked_until").is_some());

    let unknown_role = gateway
        .call(
            "PATCH",
            &format!("/auth/admin/users/{}", target.id),
            Some(json!({ "role": "emperor" })),
            Some(&admin.access),
        )
        .await;
    assert_eq!(unknown_role.status, 422);
    let renamed = gateway
        .call(
            "PATCH",
            &format!("/auth/admin/users/{}", target.id),
            Some(json!({ "name": "Renamed" })),
            Some(&admin.access),
        )
        .await;
    assert_eq!(renamed.json()["name"], "Renamed");
    assert_eq!(
        gateway
            .call("GET", "/auth/me", None, Some(&tokens.access))
            .await
            .status,
        200,
        "a rename ends nothing"
    );

    let promoted = gateway
        .call(
            "PATCH",
            &format!("/auth/admin/users/{}", target.id),
            Some(json!({ "role": "manager" })),
            Some(&admin.access),
        )
        .await;
    assert_eq!(promoted.status, 200);
    assert_eq!(promoted.json()["role"], "manager");
    assert_eq!(
        gateway
            .call("GET", "/auth/me", None, Some(&tokens.access))
            .await
            .status,
        401
    );
    assert_eq!(
        gateway
            .post("/auth/refresh", json!({ "refresh_token": tokens.refresh }))
            .await
            .status,
        401
    );
    let relogin = gateway.login(&target.email, PASSWORD).await;
    assert_eq!(relogin.json()["user"]["role"], "manager");

    let fresh = gateway.tokens(&target).await;
    let deactivated = gateway
        .call(
            "PATCH",
            &format!("/auth/admin/users/{}", target.id),
            Some(json!({ "is_active": false })),
            Some(&admin.access),
        )
        .await;
    assert_eq!(deactivated.json()["is_active"], false);
    assert_eq!(
        gateway
            .call("GET", "/auth/me", None, Some(&fresh.access))
            .await
            .status,
        401
    );
    let login = gateway.login(&target.email, PASSWORD).await;
    assert_eq!(login.status, 401);
    assert_eq!(login.detail(), "Account has been deactivated");

    let missing = gateway
        .call(
            "GET",
            "/auth/admin/users/00000000-0000-0000-0000-000000000000",
            None,
            Some(&admin.access),
        )
        .await;
    assert_eq!(missing.status, 404);
    let garbage = gateway
        .call("GET", "/auth/admin/users/nope", None, Some(&admin.access))
        .await;
    assert_eq!(garbage.status, 404);
}

#[tokio::test]
async fn an_admin_unlocks_an_account_and_the_audit_log_tells_the_story() {
    let gateway = TestGateway::start().await;
    let (admin_account, admin) = gateway.account_with_role("audit-admin", "admin").await;
    let target = gateway.signup("locked").await;
    for _ in 0..5 {
        gateway.login(&target.email, "Wrong-Password-1").await;
    }
    assert!(gateway
        .login(&target.email, PASSWORD)
        .await
        .detail()
        .contains("locked"));
    let state = gateway
        .call(
            "GET",
            &format!("/auth/admin/users/{}", target.id),
            None,
            Some(&admin.access),
        )
        .await
        .json();
    assert_eq!(state["failed_login_attempts"], 6);
    assert!(state["locked_until"].is_string());

    let unlocked = gateway
        .call(
            "POST",
            &format!("/auth/admin/users/{}/unlock", target.id),
            None,
            Some(&admin.access),
        )
        .await;
    assert_eq!(unlocked.status, 204);
    assert_eq!(gateway.login(&target.email, PASSWORD).await.status, 200);

    let audit = gateway
        .call(
            "GET",
            &format!("/auth/admin/audit?user_id={}&limit=100", target.id),
            None,
            Some(&admin.access),
        )
        .await;
    assert_eq!(audit.status, 200);
    let entries = audit.json();
    let events: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["event"].as_str().unwrap())
        .collect();
    for expected in [
        "register",
        "email_verified",
        "login_failure",
        "account_locked",
        "user_unlocked",
        "login_success",
    ] {
        assert!(
            events.contains(&expected),
            "{expected} missing from {events:?}"
        );
    }
    let entry = &entries[0];
    for field in ["at", "event", "user_id", "ip_address", "detail"] {
        assert!(entry.get(field).is_some(), "{field}");
    }
    assert_eq!(entry["event"], "login_success", "newest first");
    assert_eq!(entry["ip_address"], "127.0.0.1");
    let unlock = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["event"] == "user_unlocked")
        .unwrap();
    assert_eq!(unlock["detail"]["by"], admin_account.id);

    let bad = gateway
        .call(
            "GET",
            "/auth/admin/audit?user_id=xyz",
            None,
            Some(&admin.access),
        )
        .await;
    assert_eq!(bad.status, 422);
}

/// A gateway on a database of its own, so that "the last active admin" means this test's.
async fn gateway_alone(label: &str, policy: Option<&str>) -> (TestGateway, String) {
    let database = crate::harness::isolated_database(label).await;
    let url = database.clone();
    let configure = move |config: &mut portcullis::config::Config| {
        config.database.url = portcullis::config::Secret::new(url);
    };
    let gateway = match policy {
        Some(policy) => TestGateway::with_policy(policy, configure).await.0,
        None => TestGateway::start_with(configure).await,
    };
    (gateway, database)
}

/// Makes a signed-up account an admin in `database`, then logs it in.
async fn admin_in(
    gateway: &TestGateway,
    database: &str,
    label: &str,
    role: &str,
) -> (
    crate::harness::identity::Account,
    crate::harness::identity::Tokens,
) {
    let account = gateway.signup(label).await;
    let (client, connection) = tokio_postgres::connect(database, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute(
            "UPDATE users SET role = $1 WHERE id = $2",
            &[&role, &uuid::Uuid::parse_str(&account.id).unwrap()],
        )
        .await
        .unwrap();
    let tokens = gateway.tokens(&account).await;
    (account, tokens)
}

#[tokio::test]
async fn the_last_active_admin_cannot_be_deactivated_or_demoted() {
    let (gateway, database) = gateway_alone("last_admin", None).await;
    let (only, only_tokens) = admin_in(&gateway, &database, "only-admin", "admin").await;
    let patch = |id: &str, body: serde_json::Value| {
        let path = format!("/auth/admin/users/{id}");
        let access = only_tokens.access.clone();
        let gateway = &gateway;
        async move {
            gateway
                .call("PATCH", &path, Some(body), Some(&access))
                .await
        }
    };
    for body in [json!({ "is_active": false }), json!({ "role": "manager" })] {
        let refused = patch(&only.id, body.clone()).await;
        assert_eq!(refused.status, 409, "{body}: {refused:?}");
        assert_eq!(
            refused.detail(),
            "Cannot deactivate or demote the last active admin"
        );
    }
    // A second admin may be demoted while the first remains, and then the first is the last.
    let (second, _) = admin_in(&gateway, &database, "second-admin", "admin").await;
    assert_eq!(
        patch(&second.id, json!({ "role": "user" })).await.status,
        200
    );
    assert_eq!(
        patch(&only.id, json!({ "is_active": false })).await.status,
        409
    );
    // A change that keeps the last admin an active admin is fine.
    let renamed = patch(
        &only.id,
        json!({ "name": "Still Admin", "is_active": true }),
    )
    .await;
    assert_eq!(renamed.status, 200, "{renamed:?}");
}

#[tokio::test]
async fn an_admin_cannot_grant_a_role_above_their_own() {
    let policy = "version: 1
roles: [user, admin, owner]
rules:
  - name: everything
    paths: [\"/**\"]
    allow: public
";
    let (gateway, database) = gateway_alone("grant_above", Some(policy)).await;
    let (_, admin) = admin_in(&gateway, &database, "grant-admin", "admin").await;
    let target = gateway.signup("grant-target").await;
    let path = format!("/auth/admin/users/{}", target.id);
    let above = gateway
        .call(
            "PATCH",
            &path,
            Some(json!({ "role": "owner" })),
            Some(&admin.access),
        )
        .await;
    assert_eq!(above.status, 403, "{above:?}");
    assert_eq!(above.detail(), "Cannot grant a role above your own");
    let equal = gateway
        .call(
            "PATCH",
            &path,
            Some(json!({ "role": "admin" })),
            Some(&admin.access),
        )
        .await;
    assert_eq!(equal.status, 200, "{equal:?}");
}
