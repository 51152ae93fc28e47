//! The OpenAPI 3 document, generated from the route table so that every route is in it.

use serde_json::{json, Map, Value};

use super::routes::{Access, ROUTES};

pub fn document() -> Value {
    let mut paths = Map::new();
    for spec in ROUTES {
        let mut operation = json!({
            "summary": spec.summary,
            "operationId": format!("{:?}", spec.route),
            "responses": responses(spec.success, spec.response, spec.access),
        });
        if spec.access != Access::Public {
            operation["security"] = json!([{ "bearer": [] }]);
        }
        if let Some(schema) = spec.request {
            operation["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
            });
        }
        if spec.path.contains("{id}") {
            operation["parameters"] = json!([{ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } }]);
        }
        let entry = paths
            .entry(spec.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[spec.method.to_ascii_lowercase()] = operation;
    }
    json!({
        "openapi": "3.0.3",
        "info": { "title": "Portcullis", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } },
            "schemas": schemas(),
        }
    })
}

fn responses(success: u16, schema: Option<&str>, access: Access) -> Value {
    let mut responses = Map::new();
    let ok = match schema {
        Some(schema) => json!({
            "description": "Success",
            "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
        }),
        None => json!({ "description": "Success" }),
    };
    responses.insert(success.to_string(), ok);
    let error = |description: &str| {
        json!({
            "description": description,
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
        })
    };
    responses.insert("400".into(), error("Malformed JSON"));
    responses.insert("422".into(), error("Validation failure"));
    responses.insert("503".into(), error("A dependency is down"));
    if access != Access::Public {
        responses.insert(
            "401".into(),
            error("Missing, invalid, expired or revoked token"),
        );
    }
    if access == Access::Admin {
        responses.insert("403".into(), error("Requires admin role"));
    }
    Value::Object(responses)
}

fn schemas() -> Value {
    let string = json!({ "type": "string" });
    let object = |properties: Value, required: &[&str]| json!({ "type": "object", "properties": properties, "required": required });
    let user = object(
        json!({
            "id": { "type": "string", "format": "uuid" }, "email": string, "name": string, "role": string,
            "is_active": { "type": "boolean" }, "is_verified": { "type": "boolean" },
            "created_at": { "type": "string", "format": "date-time" },
            "last_login": { "type": "string", "format": "date-time", "nullable": true }
        }),
        &[
            "id",
            "email",
            "name",
            "role",
            "is_active",
            "is_verified",
            "created_at",
            "last_login",
        ],
    );
    let tokens = json!({
        "access_token": string, "refresh_token": string,
        "token_type": { "type": "string", "enum": ["bearer"] }, "expires_in": { "type": "integer" }
    });
    let mut login = tokens.clone();
    login["user"] = json!({ "$ref": "#/components/schemas/User" });
    let mut admin_user = user.clone();
    admin_user["properties"]["failed_login_attempts"] = json!({
        "type": "integer",
        "description": "Failed logins counted against the account; with lockout.key \
            account_and_ip, the sum over its client addresses."
    });
    admin_user["properties"]["locked_until"] = json!({
        "type": "string", "format": "date-time", "nullable": true,
        "description": "The end of the account's lock; with lockout.key account_and_ip, the \
            latest lock in force for any of its client addresses."
    });
    json!({
        "Error": object(json!({ "detail": string }), &["detail"]),
        "User": user,
        "AdminUser": admin_user,
        "UserPage": object(json!({ "items": { "type": "array", "items": { "$ref": "#/components/schemas/User" } }, "total": { "type": "integer" } }), &["items", "total"]),
        "TokenResponse": object(tokens, &["access_token", "refresh_token", "token_type", "expires_in"]),
        "LoginResponse": object(login, &["access_token", "refresh_token", "token_type", "expires_in", "user"]),
        "SessionList": { "type": "array", "items": object(json!({
            "id": { "type": "string", "format": "uuid" }, "ip_address": string, "user_agent": string,
            "created_at": { "type": "string", "format": "date-time" }, "last_used_at": { "type": "string", "format": "date-time" },
            "expires_at": { "type": "string", "format": "date-time" }, "current": { "type": "boolean" }
        }), &["id", "created_at", "last_used_at", "expires_at", "current"]) },
        "AuditList": { "type": "array", "items": object(json!({
            "at": { "type": "string", "format": "date-time" }, "event": string,
            "user_id": { "type": "string", "format": "uuid", "nullable": true }, "ip_address": string, "detail": { "type": "object" }
        }), &["at", "event", "user_id", "ip_address", "detail"]) },
        "RegisterRequest": object(json!({ "email": string, "password": string, "name": string }), &["email", "password"]),
        "TokenRequest": object(json!({ "token": string }), &["token"]),
        "EmailRequest": object(json!({ "email": string }), &["email"]),
        "LoginRequest": object(json!({ "email": string, "password": string }), &["email", "password"]),
        "RefreshRequest": object(json!({ "refresh_token": string }), &["refresh_token"]),
        "LogoutRequest": object(json!({ "refresh_token": string, "all": { "type": "boolean" } }), &[]),
        "ResetConfirmRequest": object(json!({ "token": string, "new_password": string }), &["token", "new_password"]),
        "PasswordChangeRequest": object(json!({ "current_password": string, "new_password": string }), &["current_password", "new_password"]),
        "UserPatchRequest": object(json!({ "role": string, "is_active": { "type": "boolean" }, "name": string }), &[]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_has_every_route_and_every_schema_it_references() {
        let document = document();
        for spec in ROUTES {
            let operation = &document["paths"][spec.path][spec.method.to_ascii_lowercase()];
            assert!(
                operation.is_object(),
                "{} {} missing",
                spec.method,
                spec.path
            );
            assert!(operation["responses"][spec.success.to_string()].is_object());
        }
        let text = document.to_string();
        for reference in text.split("#/components/schemas/").skip(1) {
            let name: String = reference
                .chars()
                .take_while(|c| c.is_alphanumeric())
                .collect();
            assert!(
                document["components"]["schemas"][&name].is_object(),
                "schema {name} is referenced but missing"
            );
        }
    }
}
