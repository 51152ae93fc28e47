//! The `/auth` route table: one list of method, path, access and description that both
//! dispatch and the OpenAPI document are built from, so the two cannot drift apart.

use http::Method;

use crate::error::GatewayError;

/// Every route the gateway serves itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Register,
    VerifyEmail,
    ResendVerification,
    Login,
    Refresh,
    Logout,
    PasswordReset,
    PasswordResetConfirm,
    PasswordChange,
    Me,
    Sessions,
    DeleteSession,
    AdminUsers,
    AdminUser,
    AdminPatchUser,
    AdminUnlock,
    AdminAudit,
    OpenApi,
    Jwks,
    /// Answered by the gateway's decision path before `/auth` dispatch (`proxy::forward_auth`);
    /// listed here so the route table names every route.
    Forward,
    // The sign-in pages (contract 7, `pages`). Their form POSTs go to the API routes of
    // the same path (a form body gets a page), except these two, which are forms only.
    LoginPage,
    RegisterPage,
    VerifyEmailPage,
    ForgotPasswordPage,
    ForgotPassword,
    ResetPasswordPage,
    ResetPassword,
    LogoutPage,
    Stylesheet,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    Bearer,
    Admin,
}

pub struct RouteSpec {
    pub method: &'static str,
    /// A literal path; `{id}` stands for one segment.
    pub path: &'static str,
    pub route: Route,
    pub access: Access,
    pub summary: &'static str,
    /// The request body's schema name in the OpenAPI components, if it takes one.
    pub request: Option<&'static str>,
    pub success: u16,
    /// The success response's schema name, if it has a body.
    pub response: Option<&'static str>,
}

// One line per route reads as the table it is; a struct literal each would hide it.
#[allow(clippy::too_many_arguments)]
const fn spec(
    method: &'static str,
    path: &'static str,
    route: Route,
    access: Access,
    summary: &'static str,
    request: Option<&'static str>,
    success: u16,
    response: Option<&'static str>,
) -> RouteSpec {
    RouteSpec {
        method,
        path,
        route,
        access,
        summary,
        request,
        success,
        response,
    }
}

use Access::{Admin, Bearer, Public};

pub const ROUTES: &[RouteSpec] = &[
    spec(
        "POST",
        "/auth/register",
        Route::Register,
        Public,
        "Register a user; a verification email is queued",
        Some("RegisterRequest"),
        201,
        Some("User"),
    ),
    spec(
        "POST",
        "/auth/verify-email",
        Route::VerifyEmail,
        Public,
        "Verify an email address with the emailed token",
        Some("TokenRequest"),
        200,
        Some("User"),
    ),
    spec(
        "POST",
        "/auth/resend-verification",
        Route::ResendVerification,
        Public,
        "Queue a new verification email (202 whether or not the email exists)",
        Some("EmailRequest"),
        202,
        None,
    ),
    spec(
        "POST",
        "/auth/login",
        Route::Login,
        Public,
        "Log in; returns an access token and a refresh token",
        Some("LoginRequest"),
        200,
        Some("LoginResponse"),
    ),
    spec(
        "POST",
        "/auth/refresh",
        Route::Refresh,
        Public,
        "Exchange a refresh token for new tokens; the refresh token is rotated",
        Some("RefreshRequest"),
        200,
        Some("TokenResponse"),
    ),
    spec(
        "POST",
        "/auth/logout",
        Route::Logout,
        Bearer,
        "End this session, the session of a refresh token, or all sessions",
        Some("LogoutRequest"),
        204,
        None,
    ),
    spec(
        "POST",
        "/auth/password-reset",
        Route::PasswordReset,
        Public,
        "Queue a password reset email (202 whether or not the email exists)",
        Some("EmailRequest"),
        202,
        None,
    ),
    spec(
        "POST",
        "/auth/password-reset/confirm",
        Route::PasswordResetConfirm,
        Public,
        "Set a new password with the emailed token; every session ends",
        Some("ResetConfirmRequest"),
        204,
        None,
    ),
    spec(
        "POST",
        "/auth/password-change",
        Route::PasswordChange,
        Bearer,
        "Change the password; other sessions end",
        Some("PasswordChangeRequest"),
        204,
        None,
    ),
    spec(
        "GET",
        "/auth/me",
        Route::Me,
        Bearer,
        "The caller's user object",
        None,
        200,
        Some("User"),
    ),
    spec(
        "GET",
        "/auth/sessions",
        Route::Sessions,
        Bearer,
        "The caller's live sessions",
        None,
        200,
        Some("SessionList"),
    ),
    spec(
        "DELETE",
        "/auth/sessions/{id}",
        Route::DeleteSession,
        Bearer,
        "End one of the caller's sessions",
        None,
        204,
        None,
    ),
    spec(
        "GET",
        "/auth/admin/users",
        Route::AdminUsers,
        Admin,
        "List users (query: limit, offset, q)",
        None,
        200,
        Some("UserPage"),
    ),
    spec(
        "GET",
        "/auth/admin/users/{id}",
        Route::AdminUser,
        Admin,
        "One user with login counters",
        None,
        200,
        Some("AdminUser"),
    ),
    spec(
        "PATCH",
        "/auth/admin/users/{id}",
        Route::AdminPatchUser,
        Admin,
        "Change role, active flag or name; a role change or deactivation ends the user's sessions",
        Some("UserPatchRequest"),
        200,
        Some("User"),
    ),
    spec(
        "POST",
        "/auth/admin/users/{id}/unlock",
        Route::AdminUnlock,
        Admin,
        "Clear a lockout",
        None,
        204,
        None,
    ),
    spec(
        "GET",
        "/auth/admin/audit",
        Route::AdminAudit,
        Admin,
        "Audit log, newest first (query: user_id, limit)",
        None,
        200,
        Some("AuditList"),
    ),
    spec(
        "GET",
        "/auth/openapi.json",
        Route::OpenApi,
        Public,
        "This document",
        None,
        200,
        None,
    ),
    spec(
        "GET",
        crate::proxy::forward_auth::PATH,
        Route::Forward,
        Public,
        "Forward-auth for a trusted proxy (any method): 200 with the identity headers when the request it names may pass, else the refusal it would get",
        None,
        200,
        None,
    ),
    spec(
        "GET",
        "/.well-known/jwks.json",
        Route::Jwks,
        Public,
        "Public keys that verify access tokens",
        None,
        200,
        None,
    ),
    // The sign-in pages: HTML for browsers. The API routes above of the same path also
    // take their form (application/x-www-form-urlencoded) and answer it with a page or a
    // redirect.
    page(
        "/auth/login",
        Route::LoginPage,
        "Sign-in page (query: rd, where to go after)",
    ),
    page("/auth/register", Route::RegisterPage, "Registration page"),
    page(
        "/auth/verify-email",
        Route::VerifyEmailPage,
        "The verification mail's link (query: token): a button that confirms",
    ),
    page(
        "/auth/forgot-password",
        Route::ForgotPasswordPage,
        "Page asking for the email to send a reset link to",
    ),
    form(
        "/auth/forgot-password",
        Route::ForgotPassword,
        "Form of the forgot-password page; as password-reset",
    ),
    page(
        "/auth/reset-password",
        Route::ResetPasswordPage,
        "The reset mail's link (query: token): new-password form",
    ),
    form(
        "/auth/reset-password",
        Route::ResetPassword,
        "Form of the reset-password page; as password-reset/confirm",
    ),
    page(
        "/auth/logout",
        Route::LogoutPage,
        "Sign-out page: one button",
    ),
    page(
        "/auth/assets/style.css",
        Route::Stylesheet,
        "The pages' stylesheet (cached for a year; its URL carries its version)",
    ),
];

const fn page(path: &'static str, route: Route, summary: &'static str) -> RouteSpec {
    spec("GET", path, route, Public, summary, None, 200, None)
}

const fn form(path: &'static str, route: Route, summary: &'static str) -> RouteSpec {
    spec("POST", path, route, Public, summary, None, 200, None)
}

/// Whether the gateway itself answers this (normalised) path.
pub fn is_gateway_path(path: &str) -> bool {
    path == "/auth" || path.starts_with("/auth/") || path == "/.well-known/jwks.json"
}

/// The route for a method and normalised path, and the `{id}` segment when it has one.
/// An unknown path is 404; a known path with another method is 405.
pub fn match_route<'p>(
    method: &Method,
    path: &'p str,
) -> Result<(&'static RouteSpec, Option<&'p str>), GatewayError> {
    let mut path_matched = false;
    for spec in ROUTES {
        let Some(id) = match_path(spec.path, path) else {
            continue;
        };
        path_matched = true;
        if spec.method == method.as_str() {
            return Ok((spec, id));
        }
    }
    if path_matched {
        Err(GatewayError::MethodNotAllowed)
    } else {
        Err(GatewayError::NotFound)
    }
}

/// `Some(None)` for a literal match, `Some(Some(id))` when `{id}` matched one non-empty
/// segment, `None` otherwise.
fn match_path<'p>(pattern: &str, path: &'p str) -> Option<Option<&'p str>> {
    let mut captured = None;
    let mut pattern_segments = pattern.split('/');
    let mut path_segments = path.split('/');
    loop {
        match (pattern_segments.next(), path_segments.next()) {
            (None, None) => return Some(captured),
            (Some("{id}"), Some(segment)) if !segment.is_empty() => captured = Some(segment),
            (Some(expected), Some(segment)) if expected == segment => {}
            _ => return None,
        }
    }
}

/// The methods a path accepts, for the `Allow` header of a 405.
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    ROUTES
        .iter()
        .filter(|spec| match_path(spec.path, path).is_some())
        .map(|spec| spec.method)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_by_method_and_path() {
        type Case<'a> = (&'a str, &'a str, Result<(Route, Option<&'a str>), u16>);
        let cases: &[Case] = &[
            ("POST", "/auth/login", Ok((Route::Login, None))),
            ("GET", "/auth/login", Ok((Route::LoginPage, None))),
            ("PUT", "/auth/login", Err(405)),
            ("GET", "/auth/logout", Ok((Route::LogoutPage, None))),
            (
                "POST",
                "/auth/forgot-password",
                Ok((Route::ForgotPassword, None)),
            ),
            (
                "GET",
                "/auth/assets/style.css",
                Ok((Route::Stylesheet, None)),
            ),
            (
                "POST",
                "/auth/password-reset",
                Ok((Route::PasswordReset, None)),
            ),
            (
                "POST",
                "/auth/password-reset/confirm",
                Ok((Route::PasswordResetConfirm, None)),
            ),
            (
                "DELETE",
                "/auth/sessions/abc",
                Ok((Route::DeleteSession, Some("abc"))),
            ),
            ("DELETE", "/auth/sessions/", Err(404)),
            ("GET", "/auth/admin/users", Ok((Route::AdminUsers, None))),
            (
                "GET",
                "/auth/admin/users/42",
                Ok((Route::AdminUser, Some("42"))),
            ),
            (
                "PATCH",
                "/auth/admin/users/42",
                Ok((Route::AdminPatchUser, Some("42"))),
            ),
            (
                "POST",
                "/auth/admin/users/42/unlock",
                Ok((Route::AdminUnlock, Some("42"))),
            ),
            ("GET", "/auth/admin/users/42/unlock", Err(405)),
            ("GET", "/auth/nothing", Err(404)),
            ("GET", "/auth", Err(404)),
            ("GET", "/.well-known/jwks.json", Ok((Route::Jwks, None))),
            ("GET", "/auth/me/", Err(404)),
        ];
        for (method, path, expected) in cases {
            let method: Method = method.parse().unwrap();
            let got = match_route(&method, path)
                .map(|(spec, id)| (spec.route, id))
                .map_err(|error| error.status().as_u16());
            assert_eq!(&got, expected, "{method} {path}");
        }
    }

    #[test]
    fn every_route_is_unique() {
        for (index, spec) in ROUTES.iter().enumerate() {
            for other in &ROUTES[index + 1..] {
                assert!(
                    !(spec.method == other.method && spec.path == other.path),
                    "{} {}",
                    spec.method,
                    spec.path
                );
            }
        }
    }
}
