//! The OpenAPI 3.0 document, generated from the route table so that every route, every
//! parameter and every status a route answers ([`RouteSpec::answers`]) is in it; and the
//! forward-auth route of contract 8, which answers proxies rather than clients and is
//! described here in full.

use serde_json::{json, Map, Value};

use super::routes::{Access, Param, ParamKind, RouteSpec, ROUTES};

/// The path of the forward-auth route (contract 8).
pub const FORWARD_AUTH_PATH: &str = "/auth/forward";

/// The methods forward-auth answers: any, since it judges the original request's.
const FORWARD_AUTH_METHODS: [&str; 7] =
    ["get", "head", "post", "put", "patch", "delete", "options"];

pub fn document() -> Value {
    let mut paths = Map::new();
    for spec in ROUTES {
        let entry = paths
            .entry(spec.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[spec.method.to_ascii_lowercase()] = operation(spec);
    }
    // Described here whether or not the route table has it: its answers are the decision
    // of a forwarded request, which the table's shape does not say.
    let mut forward = Map::new();
    for method in FORWARD_AUTH_METHODS {
        forward.insert(method.to_string(), forward_auth(method));
    }
    // Whatever the route table says forward-auth answers, when it lists it, is here too.
    for spec in ROUTES.iter().filter(|spec| spec.path == FORWARD_AUTH_PATH) {
        for operation in forward.values_mut() {
            if let Some(responses) = operation["responses"].as_object_mut() {
                for (status, description) in spec.answers() {
                    responses
                        .entry(status.to_string())
                        .or_insert_with(|| answer(status, description));
                }
            }
        }
    }
    paths.insert(FORWARD_AUTH_PATH.to_string(), Value::Object(forward));
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Portcullis",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The routes an authentication gateway answers itself. Every error is \
                JSON {\"detail\": \"...\"}."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" },
                "cookie": {
                    "type": "apiKey", "in": "cookie", "name": "__Host-portcullis-access",
                    "description": "The access cookie, in cookie mode (tokens.cookie.enabled)"
                }
            },
            "headers": headers(),
            "schemas": schemas(),
        }
    })
}

fn operation(spec: &RouteSpec) -> Value {
    let mut operation = json!({
        "summary": spec.summary,
        "operationId": format!("{:?}", spec.route),
        "responses": responses(spec),
    });
    if spec.access != Access::Public {
        operation["security"] = json!([{ "bearer": [] }, { "cookie": [] }]);
    }
    if let Some(schema) = spec.request {
        operation["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": reference(schema) } }
        });
    }
    let mut parameters: Vec<Value> = Vec::new();
    if spec.path.contains("{id}") {
        parameters.push(json!({
            "name": "id", "in": "path", "required": true,
            "schema": { "type": "string", "format": "uuid" }
        }));
    }
    parameters.extend(spec.params.iter().map(query_parameter));
    if !parameters.is_empty() {
        operation["parameters"] = Value::Array(parameters);
    }
    operation
}

fn query_parameter(param: &Param) -> Value {
    let schema = match param.kind {
        ParamKind::Text => json!({ "type": "string" }),
        ParamKind::Uuid => json!({ "type": "string", "format": "uuid" }),
        ParamKind::Integer { min, max, default } => {
            let mut schema =
                json!({ "type": "integer", "format": "int64", "minimum": min, "default": default });
            if let Some(max) = max {
                schema["maximum"] = max.into();
            }
            schema
        }
    };
    json!({
        "name": param.name, "in": "query", "required": false,
        "description": param.description, "schema": schema,
    })
}

fn reference(schema: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{schema}") })
}

fn responses(spec: &RouteSpec) -> Value {
    let mut responses = Map::new();
    for (status, description) in spec.answers() {
        let response = if status == spec.success {
            success(spec)
        } else {
            answer(status, description)
        };
        responses.insert(status.to_string(), response);
    }
    Value::Object(responses)
}

/// The success response: the route's schema, a page, the stylesheet, or nothing.
fn success(spec: &RouteSpec) -> Value {
    let content = match (spec.response, spec.method, spec.access) {
        (Some(schema), ..) => json!({ "application/json": { "schema": reference(schema) } }),
        _ if spec.path == "/auth/openapi.json" || spec.path == "/.well-known/jwks.json" => {
            json!({ "application/json": { "schema": { "type": "object" } } })
        }
        _ if spec.path.ends_with(".css") => {
            json!({ "text/css": { "schema": { "type": "string" } } })
        }
        (None, "GET" | "POST", Access::Public) if spec.success == 200 => {
            json!({ "text/html": { "schema": { "type": "string" } } })
        }
        _ => return json!({ "description": "Success" }),
    };
    json!({ "description": "Success", "content": content })
}

/// Any other answer: the gateway's JSON error, or a page for a form, or a redirect.
fn answer(status: u16, description: &str) -> Value {
    let mut response = match status {
        200 => json!({
            "description": description,
            "content": { "text/html": { "schema": { "type": "string" } } }
        }),
        202 | 204 => json!({ "description": description }),
        302 | 303 => json!({
            "description": description,
            "headers": { "Location": { "$ref": "#/components/headers/Location" } }
        }),
        _ => json!({
            "description": description,
            "content": { "application/json": { "schema": reference("Error") } }
        }),
    };
    match status {
        401 | 403 if description.contains("WWW-Authenticate") || status == 401 => {
            response["headers"] =
                json!({ "WWW-Authenticate": { "$ref": "#/components/headers/WWW-Authenticate" } });
        }
        429 => {
            response["headers"] =
                json!({ "Retry-After": { "$ref": "#/components/headers/Retry-After" } });
        }
        _ => {}
    }
    response
}

/// Forward-auth (contract 8): a proxy in front asks whether to let a request through.
fn forward_auth(method: &str) -> Value {
    let header = |name: &str, description: &str| {
        json!({ "name": name, "in": "header", "required": false, "description": description,
                "schema": { "type": "string" } })
    };
    let error = |description: &str| answer(400, description);
    let mut unauthorized = answer(401, "No valid token where the policy needs one");
    unauthorized["description"] = "Missing, invalid, expired or revoked token where the \
        policy needs one (WWW-Authenticate says which)"
        .into();
    let identity =
        |description: &str| json!({ "description": description, "schema": { "type": "string" } });
    json!({
        "summary": "Forward-auth: decide a request for a proxy in front (nginx auth_request, \
            Traefik forwardAuth, Caddy forward_auth, Envoy ext_authz in HTTP mode); any method",
        "description": "Judges the original request the headers describe exactly as a \
            forwarded request is judged: path normalisation and rejection, host, token, \
            revocation, rate limit, policy. The original-request headers are believed only \
            from server.trusted_proxies.",
        "operationId": format!("ForwardAuth{}", capitalized(method)),
        "security": [{}, { "bearer": [] }, { "cookie": [] }],
        "parameters": [
            header("X-Original-URI", "nginx auth_request: the original path and query"),
            header("X-Original-Method", "nginx auth_request: the original method"),
            header("X-Forwarded-Method", "Traefik, Caddy: the original method"),
            header("X-Forwarded-Proto", "Traefik, Caddy: the original scheme"),
            header("X-Forwarded-Host", "Traefik, Caddy: the original Host"),
            header("X-Forwarded-Uri", "Traefik, Caddy: the original path and query"),
        ],
        "responses": {
            "200": {
                "description": "Allowed. For a signed-in caller, the identity headers to pass \
                    upstream (and the signed assertion when identity.assertion is on); none for \
                    an anonymous one",
                "headers": {
                    "X-Auth-User-Id": identity("The caller's user id"),
                    "X-Auth-Email": identity("The caller's email"),
                    "X-Auth-Role": identity("The caller's role"),
                    "X-Auth-Session-Id": identity("The caller's session id"),
                    "X-Auth-Assertion": identity("A JWT signed with the gateway's active key \
                        (iss, aud, sub, email, role, sid, iat, exp), verifiable with \
                        /.well-known/jwks.json"),
                }
            },
            "302": answer(302, "A browser navigation without a token: to /auth/login?rd=<the original URL>"),
            "400": error("Original-request headers from a peer that is not a trusted proxy, a \
                malformed or ambiguous original URI, or a path the gateway refuses"),
            "401": unauthorized,
            "403": answer(403, "The policy refuses the caller (WWW-Authenticate: \
                error=\"insufficient_scope\" for a role or permission rule)"),
            "405": answer(405, "The original method is not one the gateway accepts"),
            "421": answer(421, "The original Host is not served by this gateway"),
            "429": answer(429, "Rate limit exceeded; Retry-After says when to try again"),
            "431": answer(431, "Request headers too large"),
            "503": answer(503, "A dependency the decision needs (Redis) is down"),
        }
    })
}

fn capitalized(method: &str) -> String {
    let mut chars = method.chars();
    chars
        .next()
        .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

fn headers() -> Value {
    json!({
        "WWW-Authenticate": {
            "description": "Bearer realm=\"...\", with error=\"invalid_token\" when the token \
                sent was refused, or error=\"insufficient_scope\" on a 403 of a role or \
                permission rule (RFC 6750 §3)",
            "schema": { "type": "string" }
        },
        "Retry-After": {
            "description": "Seconds until a retry can succeed",
            "schema": { "type": "integer" }
        },
        "Location": {
            "description": "Where to go next",
            "schema": { "type": "string" }
        }
    })
}

fn schemas() -> Value {
    let string = json!({ "type": "string" });
    // OpenAPI 3.0 wants `required` absent rather than empty.
    let object = |properties: Value, required: &[&str]| {
        let mut schema = json!({ "type": "object", "properties": properties });
        if !required.is_empty() {
            schema["required"] = json!(required);
        }
        schema
    };
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
    login["user"] = reference("User");
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
        "UserPage": object(json!({ "items": { "type": "array", "items": reference("User") }, "total": { "type": "integer" } }), &["items", "total"]),
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
        for (prefix, section) in [
            ("#/components/schemas/", "schemas"),
            ("#/components/headers/", "headers"),
        ] {
            for reference in text.split(prefix).skip(1) {
                let name: String = reference
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '-')
                    .collect();
                assert!(
                    document["components"][section][&name].is_object(),
                    "{section} {name} is referenced but missing"
                );
            }
        }
        assert!(
            !text.contains("\"required\":[]"),
            "OpenAPI 3.0 has no empty required list"
        );
    }
}
