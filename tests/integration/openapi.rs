//! `/auth/openapi.json` as the real listener serves it: valid OpenAPI 3 (checked by the
//! `openapi-spec-validator` package), with every route of the route table, every parameter
//! and every status the table says a route answers; and no route answering a status the
//! document does not list, when each is called anonymously, with a bad body, and as a user
//! and an admin.

use std::process::Command;

use portcullis::auth::routes::{Route, ROUTES};
use serde_json::Value;

use crate::harness::{full, temp_dir, test_python, TestGateway};

#[tokio::test]
async fn the_served_document_is_valid_openapi() {
    let gateway = TestGateway::start().await;
    let response = gateway.get("/auth/openapi.json").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let document = response.json();
    assert_eq!(document["openapi"], "3.0.3");
    let file = temp_dir("openapi").join("openapi.json");
    std::fs::write(&file, document.to_string()).unwrap();
    let output = Command::new(test_python())
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate\n\
             validate(json.load(open(sys.argv[1])))\n\
             print('valid')",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "openapi-spec-validator refused the document: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "valid");

    // The validator notices a broken document (an empty required list is not OpenAPI 3.0).
    let mut broken = document.clone();
    broken["components"]["schemas"]["Error"]["required"] = serde_json::json!([]);
    std::fs::write(&file, broken.to_string()).unwrap();
    let output = Command::new(test_python())
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate\n\
             validate(json.load(open(sys.argv[1])))",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success(), "a broken document passed");
}

/// The operation of a route table entry in the served document.
fn operation<'d>(document: &'d Value, method: &str, path: &str) -> &'d Value {
    &document["paths"][path][method.to_ascii_lowercase()]
}

#[tokio::test]
async fn every_route_parameter_and_status_of_the_route_table_is_documented() {
    let gateway = TestGateway::start().await;
    let document = gateway.get("/auth/openapi.json").await.json();
    for spec in ROUTES {
        let operation = operation(&document, spec.method, spec.path);
        assert!(
            operation.is_object(),
            "{} {} missing",
            spec.method,
            spec.path
        );
        for (status, _) in spec.answers() {
            assert!(
                operation["responses"][status.to_string()].is_object(),
                "{} {}: {status} missing",
                spec.method,
                spec.path
            );
        }
        let parameters: Vec<(&str, &str)> = operation["parameters"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|p| (p["name"].as_str().unwrap(), p["in"].as_str().unwrap()))
                    .collect()
            })
            .unwrap_or_default();
        for param in spec.params {
            assert!(
                parameters.contains(&(param.name, "query")),
                "{} {}: query parameter {} missing",
                spec.method,
                spec.path,
                param.name
            );
        }
        if spec.path.contains("{id}") {
            assert!(parameters.contains(&("id", "path")), "{}", spec.path);
        }
    }
    // The admin list and audit take the parameters of contract 4.
    let names = |method, path| -> Vec<String> {
        operation(&document, method, path)["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("GET", "/auth/admin/users"), ["limit", "offset", "q"]);
    assert_eq!(names("GET", "/auth/admin/audit"), ["user_id", "limit"]);
    // Forward-auth (contract 8), any method, with the proxies' headers and its answers.
    for method in ["get", "post", "delete"] {
        let forward = &document["paths"]["/auth/forward"][method];
        for status in ["200", "302", "400", "401", "403", "429", "503"] {
            assert!(
                forward["responses"][status].is_object(),
                "{method} {status}"
            );
        }
        assert!(forward["responses"]["200"]["headers"]["X-Auth-Assertion"].is_object());
        let headers: Vec<&str> = forward["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for header in ["X-Original-URI", "X-Original-Method", "X-Forwarded-Uri"] {
            assert!(headers.contains(&header), "{header}");
        }
    }
}

#[tokio::test]
async fn no_route_answers_a_status_the_document_does_not_list() {
    let gateway = TestGateway::start().await;
    let document = gateway.get("/auth/openapi.json").await.json();
    let (_, user) = gateway.account_with_role("openapi-user", "user").await;
    let (_, admin) = gateway.account_with_role("openapi-admin", "admin").await;
    // Logging out ends the caller's session: those go last.
    let mut specs: Vec<_> = ROUTES.iter().collect();
    specs.sort_by_key(|spec| spec.route == Route::Logout);
    let unknown_id = "00000000-0000-4000-8000-000000000000";
    let mut seen = 0;
    for spec in specs {
        let path = spec.path.replace("{id}", unknown_id);
        let documented = &operation(&document, spec.method, spec.path)["responses"];
        let bodies: [(&str, &[u8]); 3] = [
            ("application/json", b"{}"),
            ("application/json", b"{"),
            (
                "application/x-www-form-urlencoded",
                b"email=a%40example.com",
            ),
        ];
        for token in [
            None,
            Some(user.access.as_str()),
            Some(admin.access.as_str()),
        ] {
            for (content_type, body) in bodies {
                let mut client = gateway.h1().await;
                let mut request = client
                    .request(spec.method, &path)
                    .header("content-type", content_type);
                if let Some(token) = token {
                    request = request.header("authorization", format!("Bearer {token}"));
                }
                let response = client
                    .send_read(request.body(full(body.to_vec())).unwrap())
                    .await;
                assert!(
                    documented[response.status.as_u16().to_string()].is_object(),
                    "{} {path} ({content_type} {:?}, {}) answered {}, which the document \
                     does not list",
                    spec.method,
                    String::from_utf8_lossy(body),
                    if token.is_some() {
                        "signed in"
                    } else {
                        "anonymous"
                    },
                    response.status
                );
                seen += 1;
            }
        }
    }
    assert_eq!(seen, ROUTES.len() * 9);
}
