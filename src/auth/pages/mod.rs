//! The sign-in pages (contract 7): the HTML forms the gateway serves at `/auth/login`,
//! `/auth/register`, `/auth/verify-email`, `/auth/forgot-password`, `/auth/reset-password`
//! and `/auth/logout`, their form POSTs, and the one stylesheet.
//!
//! A form POST is the API call in another shape: its fields become the JSON body the route
//! takes, the same rate limits count it, the same handler (`register`, `sign_in`,
//! `verify_email`, `password_reset`, `password_reset_confirm`, `logout`) decides it, and a
//! refusal is shown inline in the API's own `detail` words. What this module adds is only
//! the browser's side: the signed form token ([`csrf`]), the `rd` rule ([`redirect`]), the
//! session cookies, and the HTML (askama templates under `templates/pages/`, compiled into
//! the binary and escaped by default). Pages never hold an access or refresh token.

pub(crate) mod csrf;
pub(crate) mod form;
pub(crate) mod redirect;

use std::sync::{Arc, LazyLock};

use askama::Template;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER, SET_COOKIE};
use http::{HeaderMap, Response, StatusCode};
use serde_json::{Map, Value};

use super::routes::{Route, RouteSpec};
use super::{query_param, AuthService, Call, Reply};
use crate::access::{cleared_session_cookies, cookie, session_cookies, REFRESH_COOKIE};
use crate::error::GatewayError;
use crate::proxy::response_body::GatewayBody;
use crate::token::{hash_opaque, TokenKeys};
use csrf::{CsrfKey, CSRF_COOKIE, CSRF_REFUSED};
use form::{field, parse_form};

/// What the pages show of the product (`pages:` in the configuration).
#[derive(Debug, Clone)]
pub struct PageSettings {
    pub product_name: String,
    /// A path on the gateway's own origin (validated with the configuration).
    pub logo_url: Option<String>,
}

/// The pages' settings and the key their form tokens are signed with.
pub(crate) struct Pages {
    settings: PageSettings,
    csrf: CsrfKey,
}

impl Pages {
    pub(crate) fn new(settings: PageSettings, keys: &TokenKeys) -> Pages {
        Pages {
            settings,
            csrf: CsrfKey::new(keys.derive_key(b"sign-in form csrf")),
        }
    }
}

/// The stylesheet's bytes, compiled in.
const STYLESHEET: &str = include_str!("../../../templates/pages/style.css");

/// Where pages link the stylesheet: its path with a hash of its content, so a changed
/// stylesheet has a new URL and the year-long cache never serves a stale one.
static STYLESHEET_HREF: LazyLock<String> = LazyLock::new(|| {
    let digest = hash_opaque(STYLESHEET);
    let version: String = digest[..6]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("/auth/assets/style.css?v={version}")
});

/// The routes whose POST also takes a browser's form.
pub(crate) fn takes_form(route: Route) -> bool {
    matches!(
        route,
        Route::Login
            | Route::Register
            | Route::VerifyEmail
            | Route::Logout
            | Route::ForgotPassword
            | Route::ResetPassword
    )
}

/// The API route a form-only path stands for: its limits and handler are that route's.
pub(crate) fn api_spec(spec: &'static RouteSpec) -> &'static RouteSpec {
    let api_route = match spec.route {
        Route::ForgotPassword => Route::PasswordReset,
        Route::ResetPassword => Route::PasswordResetConfirm,
        _ => return spec,
    };
    super::routes::ROUTES
        .iter()
        .find(|candidate| candidate.route == api_route)
        .expect("every API route is in the table")
}

/// The JSON body the API route takes, from the form's fields: only the fields that route
/// reads, so a missing one is refused in the API's words.
fn api_body(route: Route, fields: &[(String, String)]) -> Value {
    let names: &[&str] = match route {
        Route::Login => &["email", "password"],
        Route::Register => &["email", "password", "name"],
        Route::VerifyEmail => &["token"],
        Route::ForgotPassword => &["email"],
        Route::ResetPassword => &["token", "new_password"],
        _ => &[],
    };
    let mut body = Map::new();
    for name in names {
        if let Some(value) = field(fields, name) {
            body.insert((*name).to_string(), Value::String(value.to_string()));
        }
    }
    Value::Object(body)
}

// ---------------------------------------------------------------------------------------
// Templates. Every `{{ }}` is HTML-escaped by askama; nothing is marked safe.
// ---------------------------------------------------------------------------------------

/// What every page shows around its form.
struct Chrome<'a> {
    product_name: &'a str,
    logo_url: Option<&'a str>,
    stylesheet: &'static str,
}

#[derive(Template)]
#[template(path = "pages/login.html")]
struct LoginPage<'a> {
    chrome: Chrome<'a>,
    error: Option<String>,
    email: &'a str,
    rd: &'a str,
    csrf: &'a str,
}

#[derive(Template)]
#[template(path = "pages/register.html")]
struct RegisterPage<'a> {
    chrome: Chrome<'a>,
    error: Option<String>,
    name: &'a str,
    email: &'a str,
    csrf: &'a str,
}

#[derive(Template)]
#[template(path = "pages/verify_email.html")]
struct VerifyEmailPage<'a> {
    chrome: Chrome<'a>,
    error: Option<String>,
    token: &'a str,
    csrf: &'a str,
}

#[derive(Template)]
#[template(path = "pages/forgot_password.html")]
struct ForgotPasswordPage<'a> {
    chrome: Chrome<'a>,
    error: Option<String>,
    email: &'a str,
    csrf: &'a str,
}

#[derive(Template)]
#[template(path = "pages/reset_password.html")]
struct ResetPasswordPage<'a> {
    chrome: Chrome<'a>,
    error: Option<String>,
    token: &'a str,
    csrf: &'a str,
}

#[derive(Template)]
#[template(path = "pages/logout.html")]
struct LogoutPage<'a> {
    chrome: Chrome<'a>,
    error: Option<String>,
    csrf: &'a str,
}

/// A page that only says something: what happened, and where to go next.
#[derive(Template)]
#[template(path = "pages/message.html")]
struct MessagePage<'a> {
    chrome: Chrome<'a>,
    error: Option<String>,
    heading: &'a str,
    text: Option<String>,
    link_href: Option<&'a str>,
    link_label: &'a str,
}

/// A form's page: which form, the values to show again, and the refusal to show.
struct FormView<'a> {
    route: Route,
    fields: &'a [(String, String)],
    /// `rd` for the login form, validated.
    rd: &'a str,
    error: Option<String>,
    csrf: &'a str,
}

impl Pages {
    fn chrome(&self) -> Chrome<'_> {
        Chrome {
            product_name: &self.settings.product_name,
            logo_url: self.settings.logo_url.as_deref(),
            stylesheet: STYLESHEET_HREF.as_str(),
        }
    }

    /// The HTML of a form's page. Passwords are never shown again.
    fn render_form(&self, view: &FormView<'_>) -> Result<String, askama::Error> {
        let value = |name| field(view.fields, name).unwrap_or("");
        let chrome = self.chrome();
        let error = view.error.clone();
        let csrf = view.csrf;
        match view.route {
            Route::LoginPage | Route::Login => LoginPage {
                chrome,
                error,
                email: value("email"),
                rd: view.rd,
                csrf,
            }
            .render(),
            Route::RegisterPage | Route::Register => RegisterPage {
                chrome,
                error,
                name: value("name"),
                email: value("email"),
                csrf,
            }
            .render(),
            Route::VerifyEmailPage | Route::VerifyEmail => VerifyEmailPage {
                chrome,
                error,
                token: value("token"),
                csrf,
            }
            .render(),
            Route::ForgotPasswordPage | Route::ForgotPassword => ForgotPasswordPage {
                chrome,
                error,
                email: value("email"),
                csrf,
            }
            .render(),
            Route::ResetPasswordPage | Route::ResetPassword => ResetPasswordPage {
                chrome,
                error,
                token: value("token"),
                csrf,
            }
            .render(),
            _ => LogoutPage {
                chrome,
                error,
                csrf,
            }
            .render(),
        }
    }

    fn render_message(
        &self,
        heading: &str,
        text: Option<String>,
        link: Option<(&str, &str)>,
    ) -> Result<String, askama::Error> {
        MessagePage {
            chrome: self.chrome(),
            error: None,
            heading,
            text,
            link_href: link.map(|(href, _)| href),
            link_label: link.map_or("", |(_, label)| label),
        }
        .render()
    }
}

// ---------------------------------------------------------------------------------------
// Answers.
// ---------------------------------------------------------------------------------------

/// `GET /auth/assets/style.css`: cached for a year, since its URL changes with its content.
pub(crate) fn stylesheet() -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(STYLESHEET));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    response
}

fn html(status: StatusCode, rendered: Result<String, askama::Error>) -> Response<GatewayBody> {
    let body = match rendered {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(%error, "a page template failed to render");
            return GatewayError::Internal.into_response();
        }
    };
    let mut response = Response::new(GatewayBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

fn see_other(location: &str) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    // A validated `rd` is visible ASCII, so it is always a valid header value.
    let location = HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static("/"));
    response.headers_mut().insert(LOCATION, location);
    response
}

/// The browser's form nonce: the one its cookie holds, or a new one with the `Set-Cookie`
/// that gives it.
fn form_nonce(headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    if let Some(nonce) = cookie(headers, CSRF_COOKIE).filter(|nonce| csrf::is_nonce(nonce)) {
        return (nonce.to_string(), None);
    }
    let nonce = csrf::new_nonce();
    let set_cookie = HeaderValue::from_str(&csrf::nonce_cookie(&nonce)).ok();
    (nonce, set_cookie)
}

impl AuthService {
    fn unix_now(&self) -> u64 {
        crate::clock::unix_seconds(self.now())
    }

    /// A page's `GET`: the empty form (the verify and reset forms with the mail's token,
    /// the login form with its validated `rd`). A `GET` never spends a token.
    pub(super) async fn page(&self, route: Route, call: &Call) -> Reply {
        let (nonce, set_cookie) = form_nonce(&call.headers);
        let csrf = self.pages.csrf.issue(&nonce, self.unix_now());
        // A malformed query parameter is treated as absent: the form is shown regardless.
        let param = |name| query_param(call, name).ok().flatten();
        let fields: Vec<(String, String)> = param("token")
            .map(|token| ("token".to_string(), token))
            .into_iter()
            .collect();
        let rd = param("rd");
        let view = FormView {
            route,
            fields: &fields,
            rd: redirect::safe_redirect(rd.as_deref()),
            error: None,
            csrf: &csrf,
        };
        let mut response = html(StatusCode::OK, self.pages.render_form(&view));
        if let Some(set_cookie) = set_cookie {
            response.headers_mut().append(SET_COOKIE, set_cookie);
        }
        Ok(response)
    }

    /// A form's POST: the signed form token first (a refused form does nothing and counts
    /// nothing), then the API route's limits and handler, then a page or a redirect.
    pub(super) async fn form_post(self: &Arc<Self>, spec: &'static RouteSpec, call: Call) -> Reply {
        let route = spec.route;
        let Some(fields) = parse_form(&call.body) else {
            let error = GatewayError::bad_request("Malformed form");
            return Ok(self.form_refused(route, &[], &call.headers, error));
        };
        let nonce = cookie(&call.headers, CSRF_COOKIE);
        if !self
            .pages
            .csrf
            .verify(field(&fields, "csrf"), nonce, self.unix_now())
        {
            let error = GatewayError::Forbidden(CSRF_REFUSED.into());
            return Ok(self.form_refused(route, &fields, &call.headers, error));
        }

        let api_route = api_spec(spec).route;
        let api_call = Call {
            body: api_body(route, &fields).to_string().into(),
            ..call
        };
        let rate = match self.rate_limit(api_route, &api_call).await {
            Ok(rate) => rate,
            Err(refusal) => {
                return Ok(self.form_refused(route, &fields, &api_call.headers, refusal.error))
            }
        };
        let outcome = match self.recipient_limit(api_route, &api_call).await {
            // Over the recipient's limit, forgot-password answers as always, without mail.
            Ok(Some(_without_mail)) => self.form_done(route, &fields),
            Ok(None) => self.form_action(route, &fields, &api_call).await,
            Err(refusal) => Err(refusal),
        };
        let mut response = outcome
            .unwrap_or_else(|error| self.form_refused(route, &fields, &api_call.headers, error));
        if let Some(rate) = rate {
            crate::proxy::headers::set_rate_headers(response.headers_mut(), &rate);
        }
        Ok(response)
    }

    /// Runs the API handler of a form, then answers its success.
    async fn form_action(
        self: &Arc<Self>,
        route: Route,
        fields: &[(String, String)],
        call: &Call,
    ) -> Reply {
        match route {
            Route::Login => {
                let body = self.sign_in(call).await?;
                let target = redirect::safe_redirect(field(fields, "rd"));
                let mut response = see_other(target);
                self.set_session_cookies(&mut response, &body);
                return Ok(response);
            }
            Route::Register => {
                self.register(call).await?;
            }
            Route::VerifyEmail => {
                self.verify_email(call).await?;
            }
            Route::ForgotPassword => {
                self.password_reset(call).await?;
            }
            Route::ResetPassword => {
                self.password_reset_confirm(call).await?;
            }
            Route::Logout => {
                self.end_browser_session(call).await?;
                let mut response = see_other("/auth/login");
                for cleared in cleared_session_cookies() {
                    response.headers_mut().append(SET_COOKIE, cleared);
                }
                return Ok(response);
            }
            _ => return Err(GatewayError::NotFound),
        }
        self.form_done(route, fields)
    }

    /// The page that says a form's work is done.
    fn form_done(&self, route: Route, fields: &[(String, String)]) -> Reply {
        let pages = &self.pages;
        let sign_in = Some(("/auth/login", "Sign in"));
        let email = field(fields, "email").unwrap_or("").trim();
        let rendered = match route {
            Route::Register => pages.render_message(
                "Check your inbox",
                Some(format!(
                    "We sent a mail to {email}. Open the link in it to confirm your address, then sign in."
                )),
                None,
            ),
            Route::VerifyEmail => pages.render_message(
                "Email address confirmed",
                Some("Your email address is confirmed. You can now sign in.".to_string()),
                sign_in,
            ),
            Route::ForgotPassword => pages.render_message(
                "Check your inbox",
                Some(format!(
                    "If an account exists for {email}, a mail with a link to choose a new password is on its way."
                )),
                sign_in,
            ),
            Route::ResetPassword => pages.render_message(
                "Password changed",
                Some("Your password was changed and every session was signed out.".to_string()),
                sign_in,
            ),
            _ => return Err(GatewayError::NotFound),
        };
        Ok(html(StatusCode::OK, rendered))
    }

    /// A refused form, shown again with the API's detail in its alert and a fresh form
    /// token, with the refusal's status (and `Retry-After` for a rate limit).
    fn form_refused(
        &self,
        route: Route,
        fields: &[(String, String)],
        headers: &HeaderMap,
        error: GatewayError,
    ) -> Response<GatewayBody> {
        let (nonce, set_cookie) = form_nonce(headers);
        let csrf = self.pages.csrf.issue(&nonce, self.unix_now());
        let view = FormView {
            route,
            fields,
            rd: redirect::safe_redirect(field(fields, "rd")),
            error: Some(error.to_string()),
            csrf: &csrf,
        };
        let mut response = html(error.status(), self.pages.render_form(&view));
        if let Some(set_cookie) = set_cookie {
            response.headers_mut().append(SET_COOKIE, set_cookie);
        }
        if let GatewayError::TooManyRequests { retry_after_secs } = error {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
        }
        response
    }

    /// Both session cookies from a token body, replacing whatever the browser held.
    fn set_session_cookies(&self, response: &mut Response<GatewayBody>, body: &Value) {
        let access = body["access_token"].as_str().unwrap_or_default();
        let refresh = body["refresh_token"].as_str().unwrap_or_default();
        let lifetimes = (self.keys.settings().access_ttl, self.settings.refresh_ttl);
        if let Some(cookies) = session_cookies(access, refresh, lifetimes.0, lifetimes.1) {
            for cookie in cookies {
                response.headers_mut().append(SET_COOKIE, cookie);
            }
        }
    }

    /// Ends the browser's session: the one its access cookie names, through the API's
    /// logout; or, when that has expired, the one its refresh cookie belongs to. A browser
    /// with neither has nothing to end.
    async fn end_browser_session(&self, call: &Call) -> Result<(), GatewayError> {
        if let Ok(principal) = self
            .access
            .authenticate(&http::Method::POST, &call.headers)
            .await
        {
            let logout_call = Call {
                body: "{}".into(),
                ..call.clone()
            };
            self.logout(&logout_call, &principal).await?;
            return Ok(());
        }
        let Some(refresh) = cookie(&call.headers, REFRESH_COOKIE) else {
            return Ok(());
        };
        let now = self.now();
        let Some((session_id, user_id)) = self
            .store
            .session_of_refresh(&hash_opaque(refresh), now)
            .await
            .map_err(super::store_error)?
        else {
            return Ok(());
        };
        self.revoke_in_redis(&[session_id], None).await?;
        self.store
            .revoke_session(user_id, session_id, "logout", now)
            .await
            .map_err(super::store_error)?;
        self.audit(
            "logout",
            Some(user_id),
            call,
            serde_json::json!({ "session_id": session_id.to_string() }),
        )
        .await
    }
}

#[cfg(test)]
mod tests;
