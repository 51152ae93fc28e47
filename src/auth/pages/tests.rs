//! Rendering: user input is escaped, every form has the fields the browser tests rely on.

use super::*;

fn pages() -> Pages {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7; 32]);
    Pages {
        settings: PageSettings {
            product_name: "Acme <Portal>".to_string(),
            logo_url: None,
        },
        csrf: CsrfKey::new(key),
    }
}

fn render(route: Route, fields: &[(String, String)], error: Option<&str>) -> String {
    pages()
        .render_form(&FormView {
            route,
            fields,
            rd: "/app?x=1&y=2",
            error: error.map(str::to_string),
            csrf: "CSRF-TOKEN",
        })
        .unwrap()
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

#[test]
fn user_input_is_escaped() {
    let hostile = "\"><script>alert(1)</script>";
    let fields = owned(&[("email", hostile), ("name", hostile), ("token", hostile)]);
    for route in [
        Route::Login,
        Route::Register,
        Route::VerifyEmail,
        Route::ForgotPassword,
        Route::ResetPassword,
    ] {
        let html = render(route, &fields, Some(hostile));
        assert!(!html.contains("<script>"), "{route:?}: {html}");
        assert!(html.contains("&#60;script&#62;"), "{route:?}: {html}");
        assert!(html.contains("Acme &#60;Portal&#62;"), "{route:?}");
    }
    let message = pages()
        .render_message("Check your inbox", Some(format!("sent to {hostile}")), None)
        .unwrap();
    assert!(!message.contains("<script>"), "{message}");
}

#[test]
fn passwords_are_never_shown_again() {
    let fields = owned(&[
        ("email", "a@b.example"),
        ("password", "Secret-Pass-1"),
        ("new_password", "Secret-Pass-1"),
    ]);
    for route in [Route::Login, Route::Register, Route::ResetPassword] {
        let html = render(route, &fields, Some("Invalid email or password"));
        assert!(!html.contains("Secret-Pass-1"), "{route:?}");
    }
}

/// Every field's `id` equals its `name` and has a `<label for>` unless hidden; one submit
/// button per form; one `<h1>`; the error in `role="alert"`.
#[test]
fn form_contract() {
    #[rustfmt::skip]
    let forms: &[(Route, &[&str], &[&str])] = &[
        (Route::LoginPage, &["email", "password"], &["rd", "csrf"]),
        (Route::RegisterPage, &["name", "email", "password"], &["csrf"]),
        (Route::VerifyEmailPage, &[], &["token", "csrf"]),
        (Route::ForgotPasswordPage, &["email"], &["csrf"]),
        (Route::ResetPasswordPage, &["new_password"], &["token", "csrf"]),
        (Route::LogoutPage, &[], &["csrf"]),
    ];
    for (route, visible, hidden) in forms {
        let html = render(*route, &[], Some("Some detail"));
        for name in *visible {
            assert!(
                html.contains(&format!("id=\"{name}\" name=\"{name}\"")),
                "{route:?} {name}"
            );
            assert!(
                html.contains(&format!("<label for=\"{name}\">")),
                "{route:?} {name}"
            );
            assert!(html.contains("autocomplete="), "{route:?}");
        }
        for name in *hidden {
            assert!(
                html.contains(&format!("type=\"hidden\" id=\"{name}\" name=\"{name}\"")),
                "{route:?} {name}"
            );
        }
        assert_eq!(
            html.matches("<input").count(),
            visible.len() + hidden.len(),
            "{route:?}"
        );
        assert_eq!(
            html.matches("<button type=\"submit\">").count(),
            1,
            "{route:?}"
        );
        assert_eq!(html.matches("<button").count(), 1, "{route:?}");
        assert_eq!(html.matches("<h1>").count(), 1, "{route:?}");
        assert!(html.contains("role=\"alert\""), "{route:?}");
        assert!(html.contains(">Some detail</p>"), "{route:?}");
        assert!(html.contains("value=\"CSRF-TOKEN\""), "{route:?}");
        assert!(!html.contains("style="), "no inline style: {route:?}");
        assert!(!html.contains("<script"), "no script: {route:?}");
        assert!(html.contains(STYLESHEET_HREF.as_str()), "{route:?}");
    }
    let without_error = render(Route::LoginPage, &[], None);
    assert!(!without_error.contains("role=\"alert\""));
    assert!(without_error.contains("name=\"rd\" value=\"/app?x=1&#38;y=2\""));
}

#[test]
fn the_stylesheet_url_carries_its_version() {
    assert!(STYLESHEET_HREF.starts_with("/auth/assets/style.css?v="));
    assert_eq!(
        STYLESHEET_HREF.len(),
        "/auth/assets/style.css?v=".len() + 12
    );
    let response = stylesheet();
    assert_eq!(
        response.headers()[CACHE_CONTROL],
        "public, max-age=31536000, immutable"
    );
}
