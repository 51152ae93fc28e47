//! The policy's behaviour as tables: decisions (the contract example and a stricter policy),
//! one invalid policy per validation rule with the exact place reported, shadowing warnings,
//! the matcher's cost on a 10,000-rule policy, and no panic on garbage.

use std::time::Duration;

use super::compile::Grant;
use super::*;

/// The contract's example (section 5), verbatim.
const CONTRACT: &str = r#"version: 1
roles: [user, manager, admin]          # lowest first; a higher role has every right of the lower ones
permissions:                           # a trailing * matches any suffix; "*" alone matches everything
  user:    ["read:*", "write:own"]
  manager: ["read:*", "write:project", "write:task"]
  admin:   ["*"]
rate_limit: { requests: 1000, per: 1h, key: ip }      # default for forwarded requests
rules:                                  # first match wins; no match means deny (401 anonymous / 403 signed in)
  - name: public assets
    paths: ["/health", "/static/**"]
    methods: [GET, HEAD]                # optional; default all methods
    allow: public                       # no token needed
  - name: admin area
    paths: ["/admin/**"]
    allow: { role: admin }              # admin or higher
  - name: project writes
    paths: ["/projects/**"]
    methods: [POST, PUT, PATCH, DELETE]
    allow: { permission: "write:project" }
  - name: own profile
    paths: ["/users/{user_id}", "/users/{user_id}/**"]
    allow: { owner: user_id, or_role: admin }   # path segment must equal the token's sub
  - name: signed-in users
    paths: ["/**"]
    allow: authenticated
    rate_limit: { requests: 100, per: 1m, key: user }
"#;

/// No catch-all and no default rate limit; hosts, deny, upstream, a rule's own rate limit,
/// inherited permissions and every kind of permission wildcard.
const STRICT: &str = r#"version: 1
roles: [guest, user, editor, admin]
permissions:
  guest: ["read:public"]
  user: ["read:*", "comment"]
  editor: ["write*", "read*"]
  admin: ["*"]
rules:
  - name: internal only
    paths: ["/internal/**"]
    hosts: [Internal.Example.com]
    allow: authenticated
    upstream: internal
  - name: blocked
    paths: ["/internal/secrets", "/blocked/**"]
    allow: deny
  - name: comments
    paths: ["/posts/{post}/comments"]
    methods: [POST]
    allow: { permission: comment }
    rate_limit: { requests: 10, per: 1m, key: user }
  - name: public reads
    paths: ["/posts/*"]
    methods: [GET]
    allow: { permission: "read:public" }
  - name: edit
    paths: ["/posts/{post}"]
    methods: [PUT]
    allow: { permission: "write:posts" }
  - name: readx
    paths: ["/readx"]
    allow: { permission: readx }
  - name: root
    paths: ["/"]
    allow: public
  - name: one segment
    paths: ["/files/*"]
    allow: public
"#;

/// `on_unauthenticated` on each kind of rule that can refuse an anonymous caller, left
/// unset on others, and a rule after a `deny` one.
const BROWSER: &str = r#"version: 1
roles: [user, admin]
rules:
  - name: api
    paths: ["/api/**"]
    allow: authenticated
    on_unauthenticated: deny
  - name: console
    paths: ["/console/**"]
    allow: { role: admin }
    on_unauthenticated: redirect
  - name: closed
    paths: ["/closed/**"]
    allow: deny
    on_unauthenticated: deny
  - name: closed by default
    paths: ["/attic/**"]
    allow: deny
  - name: profiles
    paths: ["/u/{id}"]
    allow: { owner: id }
    on_unauthenticated: deny
  - name: app
    paths: ["/app/**"]
    methods: [GET]
    allow: authenticated
"#;

fn policy(id: &str) -> Policy {
    let text = match id {
        "contract" => CONTRACT,
        "strict" => STRICT,
        "browser" => BROWSER,
        other => panic!("no policy {other}"),
    };
    let upstreams = ["internal".to_string()];
    match Policy::parse(text, Some(&upstreams)) {
        Ok((policy, warnings)) => {
            assert!(
                warnings.is_empty(),
                "{id}: unexpected warnings {warnings:?}"
            );
            policy
        }
        Err(errors) => panic!("{id}: {errors:?}"),
    }
}

const HOURLY_BY_IP: RateLimit = RateLimit {
    requests: 1000,
    per: Duration::from_secs(3600),
    key: RateKey::Ip,
};
const MINUTELY_BY_USER: RateLimit = RateLimit {
    requests: 100,
    per: Duration::from_secs(60),
    key: RateKey::User,
};
const COMMENTS: RateLimit = RateLimit {
    requests: 10,
    per: Duration::from_secs(60),
    key: RateKey::User,
};

/// What a case expects; `Allow(i)` means the policy's default rate limit and no upstream.
#[derive(Debug, Clone, Copy)]
enum Want {
    Allow(usize),
    AllowWith(usize, Option<RateLimit>, Option<&'static str>),
    /// Refused for lack of a token; a browser is sent to sign in (the default).
    Anonymous(Option<usize>),
    /// Refused for lack of a token, with `on_unauthenticated: deny`: a 401 for browsers too.
    AnonymousDeny(Option<usize>),
    Forbidden(Option<usize>, &'static str),
}

type Case = (
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
    Option<(&'static str, &'static str)>,
    Want,
);

use Want::{Allow, AllowWith, Anonymous, AnonymousDeny, Forbidden};
const NO_RULE: &str = "No rule allows this request";

// Contract rules: 0 public assets, 1 admin area, 2 project writes, 3 own profile, 4 signed-in users.
// Strict rules: 0 internal only, 1 blocked, 2 comments, 3 public reads, 4 edit, 5 readx,
// 6 root, 7 one segment.
#[rustfmt::skip]
const DECISIONS: &[Case] = &[
    // Public assets: with or without a token, `**` matching zero segments and deeper ones.
    ("contract", "GET",  None, "/health",               None,                       Allow(0)),
    ("contract", "GET",  None, "/health",               Some(("alice", "user")),    Allow(0)),
    ("contract", "GET",  None, "/health",               Some(("zed", "ghost")),     Allow(0)),
    ("contract", "HEAD", None, "/static/app.js",        None,                       Allow(0)),
    ("contract", "GET",  None, "/static",               None,                       Allow(0)),
    ("contract", "GET",  None, "/static/css/site.css",  None,                       Allow(0)),
    // A trailing slash never changes the decision.
    ("contract", "GET",  None, "/health/",              None,                       Allow(0)),
    ("contract", "GET",  None, "/admin/",               None,                       Anonymous(Some(1))),
    ("strict",   "GET",  None, "/readx/",               Some(("u", "user")),        Forbidden(Some(5), "Missing permission: readx")),
    // Methods filter: rule 0 skipped, the catch-all decides.
    ("contract", "POST", None, "/health",               None,                       Anonymous(Some(4))),
    ("contract", "POST", None, "/health",               Some(("alice", "user")),    AllowWith(4, Some(MINUTELY_BY_USER), None)),
    ("contract", "OPTIONS", None, "/static/app.js",     None,                       Anonymous(Some(4))),
    // Letter case is ignored by default (contract 6.3); `case_sensitive_matching` below.
    ("contract", "GET",  None, "/Static/app.js",        None,                       Allow(0)),
    ("contract", "GET",  None, "/HEALTH",               Some(("alice", "user")),    Allow(0)),
    ("contract", "GET",  None, "/ADMIN/users",          Some(("alice", "user")),    Forbidden(Some(1), "Requires admin role")),
    ("contract", "GET",  None, "/aDmIn",                None,                       Anonymous(Some(1))),
    // Admin area: `{role: admin}` is admin or higher.
    ("contract", "GET",  None, "/admin",                None,                       Anonymous(Some(1))),
    ("contract", "GET",  None, "/admin/users",          None,                       Anonymous(Some(1))),
    ("contract", "GET",  None, "/admin/users",          Some(("alice", "user")),    Forbidden(Some(1), "Requires admin role")),
    ("contract", "GET",  None, "/admin/users",          Some(("mia", "manager")),   Forbidden(Some(1), "Requires admin role")),
    ("contract", "GET",  None, "/admin/users",          Some(("root", "admin")),    Allow(1)),
    ("contract", "DELETE", None, "/admin/users/7/keys", Some(("root", "admin")),    Allow(1)),
    ("contract", "GET",  None, "/admin/users",          Some(("zed", "superuser")), Forbidden(Some(1), "Requires admin role")),
    ("contract", "GET",  None, "/administrator",        Some(("alice", "user")),    AllowWith(4, Some(MINUTELY_BY_USER), None)),
    // Project writes by permission: manager has it, user does not, admin through `*`.
    ("contract", "POST", None, "/projects/7",           None,                       Anonymous(Some(2))),
    ("contract", "POST", None, "/projects/7",           Some(("alice", "user")),    Forbidden(Some(2), "Missing permission: write:project")),
    ("contract", "POST", None, "/projects/7",           Some(("mia", "manager")),   Allow(2)),
    ("contract", "PUT",  None, "/projects/7/tasks/3",   Some(("root", "admin")),    Allow(2)),
    ("contract", "PATCH", None, "/projects",            Some(("alice", "user")),    Forbidden(Some(2), "Missing permission: write:project")),
    ("contract", "DELETE", None, "/projects/7",         Some(("zed", "ghost")),     Forbidden(Some(2), "Missing permission: write:project")),
    // GET is not in rule 2's methods, so the catch-all takes it.
    ("contract", "GET",  None, "/projects/7",           Some(("alice", "user")),    AllowWith(4, Some(MINUTELY_BY_USER), None)),
    ("contract", "GET",  None, "/projects/7",           None,                       Anonymous(Some(4))),
    // Own profile: the owner, another user, admin through or_role, a manager (not enough).
    ("contract", "GET",  None, "/users/alice",          Some(("alice", "user")),    Allow(3)),
    ("contract", "GET",  None, "/users/alice",          Some(("bob", "user")),      Forbidden(Some(3), "Not the owner")),
    ("contract", "GET",  None, "/users/alice",          Some(("root", "admin")),    Allow(3)),
    ("contract", "GET",  None, "/users/alice",          Some(("mia", "manager")),   Forbidden(Some(3), "Not the owner")),
    ("contract", "GET",  None, "/users/alice",          None,                       Anonymous(Some(3))),
    ("contract", "GET",  None, "/users/alice",          Some(("alice", "ghost")),   Allow(3)),
    // Nested below the captured segment, and the capture compared exactly.
    ("contract", "PUT",  None, "/users/alice/settings/email", Some(("alice", "user")), Allow(3)),
    ("contract", "GET",  None, "/users/alice/settings", Some(("bob", "user")),      Forbidden(Some(3), "Not the owner")),
    ("contract", "GET",  None, "/users/Alice",          Some(("alice", "user")),    Forbidden(Some(3), "Not the owner")),
    ("contract", "GET",  None, "/users/alice/",         Some(("alice", "user")),    Allow(3)),
    // `{user_id}` needs a segment: /users alone falls through to the catch-all.
    ("contract", "GET",  None, "/users",                None,                       Anonymous(Some(4))),
    ("contract", "GET",  None, "/users",                Some(("alice", "user")),    AllowWith(4, Some(MINUTELY_BY_USER), None)),
    // The capture keeps the path's own spelling.
    ("contract", "GET",  None, "/Users/alice",          Some(("alice", "user")),    Allow(3)),
    ("contract", "GET",  None, "/USERS/Alice",          Some(("alice", "user")),    Forbidden(Some(3), "Not the owner")),
    // The catch-all `/**` takes the root and anything deep; an unknown role is still signed in.
    ("contract", "GET",  None, "/",                     None,                       Anonymous(Some(4))),
    ("contract", "GET",  None, "/",                     Some(("alice", "user")),    AllowWith(4, Some(MINUTELY_BY_USER), None)),
    ("contract", "GET",  None, "/a/b/c/d/e",            Some(("mia", "manager")),   AllowWith(4, Some(MINUTELY_BY_USER), None)),
    ("contract", "GET",  None, "/a/b/c/d/e",            Some(("zed", "ghost")),     AllowWith(4, Some(MINUTELY_BY_USER), None)),
    // Hosts: case-insensitive, port stripped, no Host never matches a host filter.
    ("strict", "GET", Some("internal.example.com"),      "/internal/dash", Some(("u", "user")), AllowWith(0, None, Some("internal"))),
    ("strict", "GET", Some("INTERNAL.example.COM:8443"), "/internal/dash", Some(("u", "user")), AllowWith(0, None, Some("internal"))),
    ("strict", "GET", Some("internal.example.com"),      "/internal/dash", None,               Anonymous(Some(0))),
    ("strict", "GET", Some("other.example.com"),         "/internal/dash", Some(("u", "user")), Forbidden(None, NO_RULE)),
    ("strict", "GET", Some("other.example.com"),         "/internal/dash", None,               Anonymous(None)),
    ("strict", "GET", None,                              "/internal/dash", Some(("u", "user")), Forbidden(None, NO_RULE)),
    ("strict", "GET", Some("internal.example.com.evil"), "/internal/dash", Some(("u", "user")), Forbidden(None, NO_RULE)),
    // Deny: 401 anonymous, 403 signed in, whatever the role; an earlier rule still wins.
    ("strict", "GET", Some("other.example.com"),    "/internal/secrets", Some(("u", "user")),  Forbidden(Some(1), "Access denied")),
    ("strict", "GET", Some("other.example.com"),    "/internal/secrets", None,                Anonymous(Some(1))),
    ("strict", "GET", Some("internal.example.com"), "/internal/secrets", Some(("a", "admin")), AllowWith(0, None, Some("internal"))),
    ("strict", "GET", None,                         "/blocked",          Some(("a", "admin")), Forbidden(Some(1), "Access denied")),
    // A rule's own rate limit; inherited permissions (editor holds user's `comment`).
    ("strict", "POST", None, "/posts/9/comments", Some(("u", "user")),   AllowWith(2, Some(COMMENTS), None)),
    ("strict", "POST", None, "/posts/9/comments", Some(("e", "editor")), AllowWith(2, Some(COMMENTS), None)),
    ("strict", "POST", None, "/posts/9/comments", Some(("g", "guest")),  Forbidden(Some(2), "Missing permission: comment")),
    // No default rate limit: an allowed rule without its own has none.
    ("strict", "GET", None, "/posts/9", Some(("g", "guest")),  Allow(3)),
    // `methods: [GET]` judges HEAD too, so a HEAD cannot slip past to a looser rule.
    ("strict", "HEAD", None, "/posts/9", Some(("g", "guest")), Allow(3)),
    ("strict", "GET", None, "/posts/9", Some(("u", "user")),   Allow(3)),
    ("strict", "GET", None, "/posts/9", None,                  Anonymous(Some(3))),
    ("strict", "GET", None, "/posts/9", Some(("n", "nobody")), Forbidden(Some(3), "Missing permission: read:public")),
    // `write*` grants `write:posts`; `read:*` does not grant `readx`, `read*` does, `*` does.
    ("strict", "PUT", None, "/posts/9", Some(("u", "user")),   Forbidden(Some(4), "Missing permission: write:posts")),
    ("strict", "PUT", None, "/posts/9", Some(("e", "editor")), Allow(4)),
    ("strict", "GET", None, "/readx",   Some(("u", "user")),   Forbidden(Some(5), "Missing permission: readx")),
    ("strict", "GET", None, "/readx",   Some(("e", "editor")), Allow(5)),
    ("strict", "GET", None, "/readx",   Some(("a", "admin")),  Allow(5)),
    ("strict", "GET", None, "/readx",   Some(("g", "guest")),  Forbidden(Some(5), "Missing permission: readx")),
    // No method rule fits: no match at all.
    ("strict", "DELETE", None, "/posts/9", Some(("a", "admin")), Forbidden(None, NO_RULE)),
    ("strict", "DELETE", None, "/posts/9", None,                 Anonymous(None)),
    // `/` matches only the root; `*` is exactly one non-empty segment.
    ("strict", "GET", None, "/",          None,               Allow(6)),
    ("strict", "GET", None, "/files/a",   None,               Allow(7)),
    ("strict", "GET", None, "/files/a/b", None,               Anonymous(None)),
    ("strict", "GET", None, "/files/a/b", Some(("u", "user")), Forbidden(None, NO_RULE)),
    ("strict", "GET", None, "/files",     None,               Anonymous(None)),
    ("strict", "GET", None, "/files/",    None,               Anonymous(None)),
    ("strict", "GET", None, "/nothing",   Some(("u", "user")), Forbidden(None, NO_RULE)),
    // `on_unauthenticated` travels with the refusal for lack of a token, and only with it.
    // Browser rules: 0 api (deny), 1 console (redirect), 2 closed (deny), 3 closed by
    // default, 4 profiles (deny), 5 app (GET only, default).
    ("browser", "GET",  None, "/api/items",      None,                 AnonymousDeny(Some(0))),
    ("browser", "POST", None, "/api/items",      None,                 AnonymousDeny(Some(0))),
    ("browser", "GET",  None, "/API/items",      None,                 AnonymousDeny(Some(0))),
    ("browser", "GET",  None, "/api/items",      Some(("u", "user")),  Allow(0)),
    ("browser", "GET",  None, "/console",        None,                 Anonymous(Some(1))),
    ("browser", "GET",  None, "/console/users",  Some(("u", "user")),  Forbidden(Some(1), "Requires admin role")),
    ("browser", "GET",  None, "/closed/x",       None,                 AnonymousDeny(Some(2))),
    ("browser", "GET",  None, "/closed/x",       Some(("a", "admin")), Forbidden(Some(2), "Access denied")),
    // Unset on a `deny` rule: the default, as for every other refusal.
    ("browser", "GET",  None, "/attic/x",        None,                 Anonymous(Some(3))),
    ("browser", "GET",  None, "/u/7",            None,                 AnonymousDeny(Some(4))),
    ("browser", "GET",  None, "/u/7",            Some(("8", "user")),  Forbidden(Some(4), "Not the owner")),
    ("browser", "GET",  None, "/app/home",       None,                 Anonymous(Some(5))),
    // No rule matched (the method filter skips rule 5): the default, never a rule's setting.
    ("browser", "POST", None, "/app/home",       None,                 Anonymous(None)),
    ("browser", "GET",  None, "/elsewhere",      None,                 Anonymous(None)),
    ("browser", "GET",  None, "/elsewhere",      Some(("u", "user")),  Forbidden(None, NO_RULE)),
];

fn expected(policy: &Policy, want: Want) -> Decision {
    match want {
        Allow(rule) => Decision::Allow {
            rule,
            rate_limit: policy.default_rate_limit(),
            upstream: None,
        },
        AllowWith(rule, rate_limit, upstream) => Decision::Allow {
            rule,
            rate_limit,
            upstream: upstream.map(str::to_string),
        },
        Anonymous(rule) => Decision::Unauthenticated {
            rule,
            on_unauthenticated: OnUnauthenticated::Redirect,
        },
        AnonymousDeny(rule) => Decision::Unauthenticated {
            rule,
            on_unauthenticated: OnUnauthenticated::Deny,
        },
        Forbidden(rule, detail) => Decision::Forbidden {
            rule,
            denial: denial_of(detail),
            detail: detail.to_string(),
        },
    }
}

/// The denial the table's detail texts stand for: the table names the client's text, and
/// the evaluator must say the same thing in both.
fn denial_of(detail: &str) -> Denial {
    if detail == NO_RULE {
        Denial::NoRule
    } else if detail == "Access denied" {
        Denial::Deny
    } else if detail == "Not the owner" {
        Denial::Owner
    } else if detail.starts_with("Requires ") {
        Denial::Role
    } else if detail.starts_with("Missing permission: ") {
        Denial::Permission
    } else {
        panic!("the table names an unknown refusal: {detail}")
    }
}

#[test]
fn decision_table() {
    assert!(DECISIONS.len() >= 60, "{} cases", DECISIONS.len());
    let contract = policy("contract");
    let strict = policy("strict");
    let browser = policy("browser");
    assert_eq!(contract.default_rate_limit(), Some(HOURLY_BY_IP));
    assert_eq!(strict.default_rate_limit(), None);
    let mut failures = Vec::new();
    for (index, &(id, method, host, path, who, want)) in DECISIONS.iter().enumerate() {
        let policy = match id {
            "contract" => &contract,
            "strict" => &strict,
            _ => &browser,
        };
        let identity = who.map(|(sub, role)| Identity { sub, role });
        let got = policy.evaluate(&Request { method, host, path }, identity.as_ref());
        let want = expected(policy, want);
        if got != want {
            failures.push(format!("case {index}: {id} {method} {host:?} {path} as {who:?}\n   got {got:?}\n  want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn permission_wildcards() {
    #[rustfmt::skip]
    let table = [
        ("*",         "anything:at:all", true),
        ("read:*",    "read:projects",   true),
        ("read:*",    "read:",           true),
        ("read:*",    "readx",           false),
        ("read:*",    "read",            false),
        ("read*",     "readx",           true),
        ("read*",     "read:projects",   true),
        ("write:own", "write:own",       true),
        ("write:own", "write:owner",     false),
        ("write:own", "write:*",         false),
        ("re*d",      "read",            false),
        ("re*d",      "re*d",            true),
    ];
    for (entry, wanted, granted) in table {
        let grant = match entry.strip_suffix('*') {
            Some("") => Grant::All,
            Some(prefix) => Grant::Prefix(prefix.to_string()),
            None => Grant::Exact(entry.to_string()),
        };
        assert_eq!(grant.grants(wanted), granted, "{entry} grants {wanted}?");
    }
}

#[test]
fn roles_and_summary() {
    let policy = policy("contract");
    assert_eq!(policy.roles(), ["user", "manager", "admin"]);
    assert!(policy.is_role("manager") && !policy.is_role("Manager") && !policy.is_role("ghost"));
    assert!(policy.role_at_least("admin", "user"));
    assert!(policy.role_at_least("manager", "manager"));
    assert!(!policy.role_at_least("user", "manager"));
    assert!(!policy.role_at_least("ghost", "user"));
    assert!(!policy.role_at_least("admin", "ghost"));
    assert_eq!(policy.rule_count(), 5);
    assert_eq!(policy.rule_name(3), "own profile");
    assert_eq!(policy.rule_name(99), "");
    let summary = format!("{policy:?}");
    assert!(
        summary.contains("rules: 5") && summary.contains("manager"),
        "{summary}"
    );
    fn shareable<T: Send + Sync>() {}
    shareable::<Policy>();
}

#[test]
fn shipped_example_is_the_contract_and_clean() {
    let shipped = include_str!("../../config/policy.yaml");
    let (policy, warnings) = Policy::parse(shipped, None).expect("config/policy.yaml parses");
    assert!(warnings.is_empty(), "{warnings:?}");
    let contract = self::policy("contract");
    for &(id, method, host, path, who, _) in DECISIONS.iter().filter(|case| case.0 == "contract") {
        let identity = who.map(|(sub, role)| Identity { sub, role });
        let request = Request { method, host, path };
        assert_eq!(
            policy.evaluate(&request, identity.as_ref()),
            contract.evaluate(&request, identity.as_ref()),
            "{id} {method} {path}"
        );
    }
}

#[test]
fn ipv6_hosts_compare_without_port() {
    let text = "version: 1\nroles: [user]\nrules:\n  - {name: v6, paths: [/], hosts: [\"[::1]\", localhost], allow: public}\n";
    let (policy, _) = Policy::parse(text, None).expect("valid");
    for (host, matched) in [
        (Some("[::1]:8443"), true),
        (Some("[::1]"), true),
        (Some("LocalHost:80"), true),
        (Some("[::2]"), false),
        (None, false),
    ] {
        let decision = policy.evaluate(
            &Request {
                method: "GET",
                host,
                path: "/",
            },
            None,
        );
        assert_eq!(
            matches!(decision, Decision::Allow { rule: 0, .. }),
            matched,
            "{host:?}"
        );
    }
}

#[test]
fn upstreams_are_checked_only_when_given() {
    let text = "version: 1\nroles: [user]\nrules:\n  - name: r\n    paths: [\"/\"]\n    allow: public\n    upstream: billing\n";
    assert!(Policy::parse(text, None).is_ok());
    let known = ["app".to_string(), "billing".to_string()];
    assert!(Policy::parse(text, Some(&known)).is_ok());
    let errors = Policy::parse(text, Some(&known[..1])).expect_err("billing is unknown");
    assert_eq!((errors[0].line, errors[0].column), (7, 15));
    assert!(
        errors[0]
            .message
            .contains("unknown upstream `billing`; the gateway has: app"),
        "{errors:?}"
    );
}

/// A valid policy with `rule` (indented as a list item under `rules:`) as its only rule,
/// which starts on line 6.
fn one_rule(rule: &str) -> String {
    format!("version: 1\nroles: [user, admin]\npermissions:\n  user: [\"read:*\"]\nrules:\n{rule}")
}

#[test]
fn invalid_policies() {
    let r = |body: &str| one_rule(body);
    #[rustfmt::skip]
    let table: Vec<(String, usize, usize, &str)> = vec![
        // Unknown keys anywhere, named.
        (format!("{}extra: 1\n", one_rule("  - {name: r, paths: [/], allow: public}\n")), 7, 1, "unknown key `extra` in the policy"),
        (r("  - name: r\n    paths: [/]\n    allow: public\n    method: [GET]\n"), 9, 5, "unknown key `method` in a rule"),
        (r("  - name: r\n    paths: [/]\n    allow: {rol: admin}\n"), 8, 13, "unknown key `rol` in `allow`"),
        (r("  - name: r\n    paths: [/]\n    allow: public\n    rate_limit: {requests: 5, per: 1s, key: ip, burst: 9}\n"), 9, 49, "unknown key `burst` in `rate_limit`"),
        (r("  - name: r\n    paths: [/]\n    allow: public\n    allow: deny\n"), 9, 5, "duplicate key `allow`"),
        // version
        ("roles: [user]\nrules:\n  - {name: r, paths: [/], allow: public}\n".into(), 1, 1, "missing `version: 1`"),
        ("version: 2\nroles: [user]\nrules:\n  - {name: r, paths: [/], allow: public}\n".into(), 1, 10, "`version` must be 1, not `2`"),
        ("version: \"1\"\nroles: [user]\nrules:\n  - {name: r, paths: [/], allow: public}\n".into(), 1, 10, "`version` must be 1"),
        // roles
        ("version: 1\nrules:\n  - {name: r, paths: [/], allow: public}\n".into(), 1, 1, "missing `roles`"),
        ("version: 1\nroles: []\nrules:\n  - {name: r, paths: [/], allow: public}\n".into(), 2, 8, "`roles` must name at least one role"),
        ("version: 1\nroles: [user, admin, user]\nrules:\n  - {name: r, paths: [/], allow: public}\n".into(), 2, 22, "duplicate role `user`"),
        ("version: 1\nroles: [user, 7]\nrules:\n  - {name: r, paths: [/], allow: public}\n".into(), 2, 15, "role names must be strings"),
        // permissions
        ("version: 1\nroles: [user]\npermissions:\n  guest: [\"read:*\"]\nrules:\n  - {name: r, paths: [/], allow: public}\n".into(), 4, 3, "`permissions` names `guest`, which is not in `roles`"),
        ("version: 1\nroles: [user]\npermissions:\n  user: [\"read:*\", 5]\nrules:\n  - {name: r, paths: [/], allow: public}\n".into(), 4, 20, "permission entries must be strings, not `5`"),
        ("version: 1\nroles: [user]\npermissions:\n  user: [[read]]\nrules:\n  - {name: r, paths: [/], allow: public}\n".into(), 4, 10, "permission entries must be strings, not a list"),
        ("version: 1\nroles: [user]\npermissions:\n  user: read\nrules:\n  - {name: r, paths: [/], allow: public}\n".into(), 4, 9, "must be a list of strings"),
        // rules
        ("version: 1\nroles: [user]\n".into(), 1, 1, "missing `rules`"),
        ("version: 1\nroles: [user]\nrules: []\n".into(), 3, 8, "`rules` must hold at least one rule"),
        (r("  - paths: [/]\n    allow: public\n"), 6, 5, "rule needs a `name`"),
        (r("  - name: r\n    allow: public\n"), 6, 5, "rule `r` needs `paths`"),
        (r("  - name: r\n    paths: [/]\n"), 6, 5, "rule `r` needs `allow`"),
        (r("  - name: r\n    paths: []\n    allow: public\n"), 7, 12, "`paths` must hold at least one pattern"),
        (r("  - just a string\n"), 6, 5, "each rule must be a mapping"),
        // Path patterns, each error at the pattern.
        (r("  - name: r\n    paths: [\"a/b\"]\n    allow: public\n"), 7, 13, "path pattern `a/b` must start with `/`"),
        (r("  - name: r\n    paths: [\"/a//b\"]\n    allow: public\n"), 7, 13, "has an empty segment"),
        (r("  - name: r\n    paths: [\"/a/\"]\n    allow: public\n"), 7, 13, "ends with `/`; only the root pattern"),
        (r("  - name: r\n    paths: [\"/a/**/b\"]\n    allow: public\n"), 7, 13, "`**` must be the last segment"),
        (r("  - name: r\n    paths: [\"/a*\"]\n    allow: public\n"), 7, 13, "must be a whole segment, not part of `a*`"),
        (r("  - name: r\n    paths: [\"/a/x**\"]\n    allow: public\n"), 7, 13, "not part of `x**`"),
        (r("  - name: r\n    paths: [\"/a/{}\"]\n    allow: public\n"), 7, 13, "bad capture name `{}`"),
        (r("  - name: r\n    paths: [\"/a/{1x}\"]\n    allow: public\n"), 7, 13, "bad capture name `{1x}`"),
        (r("  - name: r\n    paths: [\"/a/{a b}\"]\n    allow: public\n"), 7, 13, "bad capture name `{a b}`"),
        (r("  - name: r\n    paths: [\"/a/x{id}\"]\n    allow: public\n"), 7, 13, "a capture must be a whole segment"),
        (r("  - name: r\n    paths: [\"/ok\", \"/a/{id}/b/{id}\"]\n    allow: public\n"), 7, 20, "capture `{id}` appears twice"),
        (r("  - name: r\n    paths: [7]\n    allow: public\n"), 7, 13, "path patterns must be strings"),
        // Methods.
        (r("  - name: r\n    paths: [/]\n    methods: [GET, FETCH]\n    allow: public\n"), 8, 20, "unknown method `FETCH`"),
        (r("  - name: r\n    paths: [/]\n    methods: [TRACE]\n    allow: public\n"), 8, 15, "method `TRACE` is refused by the gateway"),
        (r("  - name: r\n    paths: [/]\n    methods: [CONNECT]\n    allow: public\n"), 8, 15, "method `CONNECT` is refused by the gateway"),
        (r("  - name: r\n    paths: [/]\n    methods: [get]\n    allow: public\n"), 8, 15, "methods are upper-case: write `GET`"),
        (r("  - name: r\n    paths: [/]\n    methods: []\n    allow: public\n"), 8, 14, "`methods` must not be empty"),
        // Hosts.
        (r("  - name: r\n    paths: [/]\n    hosts: [\"a.example.com:8443\"]\n    allow: public\n"), 8, 13, "without the port: write `a.example.com`"),
        (r("  - name: r\n    paths: [/]\n    hosts: [\"*.example.com\"]\n    allow: public\n"), 8, 13, "is not a host name"),
        (r("  - name: r\n    paths: [/]\n    hosts: [\"[::1]:8443\"]\n    allow: public\n"), 8, 13, "without the port: write `[::1]`"),
        (r("  - name: r\n    paths: [/]\n    hosts: [\"::1\"]\n    allow: public\n"), 8, 13, "write an IPv6 address in brackets: `[::1]`"),
        // allow.
        (r("  - name: r\n    paths: [/]\n    allow: everyone\n"), 8, 12, "`allow` must be `public`, `authenticated`, `deny`"),
        (r("  - name: r\n    paths: [/]\n    allow: {}\n"), 8, 12, "`allow` must be `public`"),
        (r("  - name: r\n    paths: [/]\n    allow: [public]\n"), 8, 12, "`allow` must be `public`"),
        (r("  - name: r\n    paths: [/]\n    allow: {role: admin, permission: x}\n"), 8, 12, "exactly one of `role`, `permission` and `owner`"),
        (r("  - name: r\n    paths: [/]\n    allow: {permission: x, or_role: admin}\n"), 8, 37, "`or_role` only goes with `owner`"),
        (r("  - name: r\n    paths: [/]\n    allow: {role: boss}\n"), 8, 19, "unknown role `boss` (roles: user, admin)"),
        (r("  - name: r\n    paths: [\"/u/{id}\"]\n    allow: {owner: id, or_role: root}\n"), 8, 33, "unknown role `root`"),
        (r("  - name: r\n    paths: [\"/u/{id}\", \"/me\"]\n    allow: {owner: id}\n"), 8, 20, "owner `id` is not captured by path `/me`"),
        (r("  - name: r\n    paths: [\"/u/{uid}/**\"]\n    allow: {owner: id}\n"), 8, 20, "owner `id` is not captured by path `/u/{uid}/**`"),
        // on_unauthenticated: exactly `redirect` or `deny`.
        (r("  - name: r\n    paths: [/]\n    allow: authenticated\n    on_unauthenticated: login\n"), 9, 25, "`on_unauthenticated` must be `redirect` or `deny`, not `login`"),
        (r("  - name: r\n    paths: [/]\n    allow: authenticated\n    on_unauthenticated: Deny\n"), 9, 25, "`on_unauthenticated` must be `redirect` or `deny`, not `Deny`"),
        (r("  - name: r\n    paths: [/]\n    allow: authenticated\n    on_unauthenticated: [deny]\n"), 9, 25, "`on_unauthenticated` must be `redirect` or `deny`, not a list"),
        (r("  - name: r\n    paths: [/]\n    allow: authenticated\n    on_unauthenticated: {deny: true}\n"), 9, 25, "`on_unauthenticated` must be `redirect` or `deny`, not a mapping"),
        (r("  - name: r\n    paths: [/]\n    allow: authenticated\n    on_unauthenticated:\n"), 9, 23, "`on_unauthenticated` must be `redirect` or `deny`, not nothing (null)"),
        (r("  - name: r\n    paths: [/]\n    allow: authenticated\n    on_unauthenticated: 401\n"), 9, 25, "`on_unauthenticated` must be `redirect` or `deny`, not `401`"),
        (r("  - name: r\n    paths: [/]\n    allow: authenticated\n    on_unauthenticated: deny\n    on_unauthenticated: redirect\n"), 10, 5, "duplicate key `on_unauthenticated` in a rule"),
        (r("  - name: r\n    paths: [/]\n    allow: authenticated\n    on_unauthorized: deny\n"), 9, 5, "unknown key `on_unauthorized` in a rule; expected one of: name, paths, methods, hosts, allow, rate_limit, upstream, on_unauthenticated"),
        // Rate limits, top level and per rule.
        (r("  - name: r\n    paths: [/]\n    allow: public\n    rate_limit: {requests: 5, per: 5 parsecs, key: ip}\n"), 9, 36, "bad duration `5 parsecs`"),
        (r("  - name: r\n    paths: [/]\n    allow: public\n    rate_limit: {requests: 5, per: 0s, key: ip}\n"), 9, 36, "duration `0s` must be greater than zero"),
        (r("  - name: r\n    paths: [/]\n    allow: public\n    rate_limit: {requests: 5, per: 10, key: ip}\n"), 9, 36, "duration `10` is missing its unit"),
        (r("  - name: r\n    paths: [/]\n    allow: public\n    rate_limit: {requests: 5, per: 1.5h, key: ip}\n"), 9, 36, "bad duration `1.5h`"),
        (r("  - name: r\n    paths: [/]\n    allow: public\n    rate_limit: {requests: 0, per: 1s, key: ip}\n"), 9, 28, "`requests` must be at least 1"),
        (r("  - name: r\n    paths: [/]\n    allow: public\n    rate_limit: {requests: -5, per: 1s, key: ip}\n"), 9, 28, "`requests` must be a whole number"),
        (r("  - name: r\n    paths: [/]\n    allow: public\n    rate_limit: {requests: 5, per: 1s, key: session}\n"), 9, 45, "rate limit `key` must be `ip` or `user`, not `session`"),
        (r("  - name: r\n    paths: [/]\n    allow: public\n    rate_limit: {requests: 5, per: 1s}\n"), 9, 17, "`rate_limit` needs `key`"),
        ("version: 1\nroles: [user]\nrate_limit: {requests: 5, per: 3 fortnights, key: ip}\nrules:\n  - {name: r, paths: [/], allow: public}\n".into(), 3, 32, "bad duration `3 fortnights`"),
    ];
    let upstreams = ["app".to_string()];
    let mut failures = Vec::new();
    for (index, (text, line, column, needle)) in table.iter().enumerate() {
        let diagnostics = match Policy::parse(text, Some(&upstreams)) {
            Ok(_) => {
                failures.push(format!("case {index} ({needle}): accepted\n{text}"));
                continue;
            }
            Err(diagnostics) => diagnostics,
        };
        let hit = diagnostics
            .iter()
            .find(|d| d.severity == Severity::Error && d.message.contains(needle));
        match hit {
            Some(d) if (d.line, d.column) == (*line, *column) => {}
            _ => failures.push(format!(
                "case {index}: want {line}:{column} {needle:?}\n  got {:#?}\n{text}",
                diagnostics
                    .iter()
                    .map(|d| d.render("policy.yaml"))
                    .collect::<Vec<_>>()
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}

#[test]
fn every_error_in_one_pass() {
    let text = "version: 3\nroles: [user]\nrules:\n  - name: a\n    paths: [\"nope\"]\n    allow: {role: boss}\n  - name: b\n    paths: [/]\n    methods: [TRACE]\n    allow: sometimes\n";
    let errors = Policy::parse(text, None).expect_err("four errors");
    let places: Vec<(usize, usize)> = errors.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(
        places,
        [(1, 10), (5, 13), (6, 19), (9, 15), (10, 12)],
        "{errors:#?}"
    );
    assert!(errors.iter().all(|d| d.severity == Severity::Error));
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_blocks: String = (0..100)
        .map(|depth| format!("{}k:\n", "  ".repeat(depth)))
        .collect();
    let laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
    #[rustfmt::skip]
    let table: Vec<(&str, String, usize, &str)> = vec![
        ("garbage",      "{{{{ :: ]]".into(),                         1, "invalid YAML"),
        ("unclosed",     "version: [1\n".into(),                      2, "invalid YAML"),
        ("a list",       "- version\n- 1\n".into(),                   1, "a policy must be a mapping"),
        ("a scalar",     "just some text".into(),                     1, "a policy must be a mapping"),
        ("empty",        "".into(),                                   1, "the policy is empty"),
        ("comments",     "# nothing here\n".into(),                   1, "the policy is empty"),
        ("tabs",         "version: 1\nroles:\n\t- user\n".into(),     3, "invalid YAML"),
        ("two docs",     "version: 1\n---\nversion: 1\n".into(),      2, "one YAML document"),
        ("deep flow",    deep,                                        1, "invalid YAML: recursion limit"),
        ("deep blocks",  deep_blocks,                                 65, "nesting deeper than 64"),
        ("laughs",       laughs.into(),                               5, "aliases expand"),
        ("binary",       "\u{0}\u{1}\u{7f}\u{feff}".into(),           1, ""),
        ("bad alias",    "version: *nope\n".into(),                   1, ""),
    ];
    for (what, text, line, needle) in table {
        let errors = Policy::parse(&text, None)
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        let first = &errors[0];
        assert_eq!(first.severity, Severity::Error, "{what}");
        assert!(
            first.message.contains(needle) && first.line == line,
            "{what}: {errors:?}"
        );
    }
}

/// Mutations of the example, byte by byte: every outcome is a policy or errors, never a panic,
/// and an Err always holds an error.
#[test]
fn mutations_never_panic() {
    let inserts = [
        ":", "-", "[", "]", "{", "}", "'", "\"", "*", "&a ", "!", "\t", "\n", " ", "#", "%", "|",
        ">", "/", "é",
    ];
    let mut texts = Vec::new();
    let boundaries: Vec<usize> = (0..=CONTRACT.len())
        .filter(|&i| CONTRACT.is_char_boundary(i))
        .collect();
    for window in boundaries.windows(2) {
        let (at, next) = (window[0], window[1]);
        texts.push(format!("{}{}", &CONTRACT[..at], &CONTRACT[next..]));
        texts.push(CONTRACT[..at].to_string());
        for insert in inserts {
            texts.push(format!("{}{insert}{}", &CONTRACT[..at], &CONTRACT[at..]));
        }
    }
    let request = Request {
        method: "GET",
        host: Some("x:1"),
        path: "/users/alice/x",
    };
    let who = Identity {
        sub: "alice",
        role: "user",
    };
    for text in &texts {
        match Policy::parse(text, None) {
            Ok((policy, _)) => {
                policy.evaluate(&request, Some(&who));
                policy.evaluate(&request, None);
            }
            Err(errors) => assert!(
                errors.iter().any(|d| d.severity == Severity::Error),
                "{text}"
            ),
        }
    }
}

fn warnings_of(rules: &str) -> Vec<Diagnostic> {
    let text = one_rule(rules);
    match Policy::parse(&text, None) {
        Ok((_, warnings)) => warnings,
        Err(errors) => panic!("{errors:?}\n{text}"),
    }
}

#[test]
fn shadowed_rules_are_warned_about() {
    // (rules, expected warning lines; each message names the earlier rule)
    #[rustfmt::skip]
    let table: &[(&str, &[(usize, &str)])] = &[
        // `/a/**` takes everything under /a first.
        ("  - {name: wide, paths: [\"/a/**\"], allow: public}\n  - {name: narrow, paths: [\"/a/b\"], allow: deny}\n",
         &[(7, "rule `narrow` is never reached: the earlier rule `wide` (line 6)")]),
        // Different methods: both reachable (no false positive).
        ("  - {name: wide, paths: [\"/a/**\"], methods: [GET], allow: public}\n  - {name: narrow, paths: [\"/a/b\"], methods: [POST], allow: deny}\n", &[]),
        // The earlier rule takes only GET; the later one all methods.
        ("  - {name: wide, paths: [\"/a/**\"], methods: [GET], allow: public}\n  - {name: narrow, paths: [\"/a/b\"], allow: deny}\n", &[]),
        // The earlier rule's methods include the later one's.
        ("  - {name: wide, paths: [\"/a/**\"], methods: [GET, POST], allow: public}\n  - {name: narrow, paths: [\"/a/b\"], methods: [POST], allow: deny}\n",
         &[(7, "earlier rule `wide`")]),
        // Hosts: the earlier rule only for one host does not cover a rule for every host.
        ("  - {name: wide, paths: [\"/**\"], hosts: [a.com], allow: public}\n  - {name: narrow, paths: [\"/x\"], allow: deny}\n", &[]),
        ("  - {name: wide, paths: [\"/**\"], allow: public}\n  - {name: narrow, paths: [\"/x\"], hosts: [a.com], allow: deny}\n",
         &[(7, "earlier rule `wide`")]),
        // `*` covers a capture and a literal; a capture covers `*`.
        ("  - {name: star, paths: [\"/a/*\"], allow: public}\n  - {name: capture, paths: [\"/a/{id}\"], allow: deny}\n  - {name: literal, paths: [\"/a/b\"], allow: deny}\n",
         &[(7, "rule `capture` is never reached: the earlier rule `star`"), (8, "rule `literal` is never reached: the earlier rule `star`")]),
        // A literal does not cover `*`; `*` does not cover `**` below it.
        ("  - {name: literal, paths: [\"/a/b\"], allow: public}\n  - {name: star, paths: [\"/a/*\"], allow: deny}\n", &[]),
        ("  - {name: star, paths: [\"/a/*\"], allow: public}\n  - {name: deeper, paths: [\"/a/b/**\"], allow: deny}\n", &[]),
        ("  - {name: star, paths: [\"/a/*/**\"], allow: public}\n  - {name: zero, paths: [\"/a/**\"], allow: deny}\n", &[]),
        ("  - {name: rest, paths: [\"/a/**\"], allow: public}\n  - {name: deeper, paths: [\"/a/*/**\"], allow: deny}\n",
         &[(7, "earlier rule `rest`")]),
        // Every pattern must be covered by the same earlier rule.
        ("  - {name: x, paths: [\"/x\"], allow: public}\n  - {name: y, paths: [\"/y\"], allow: public}\n  - {name: both, paths: [\"/x\", \"/y\"], allow: deny}\n", &[]),
        ("  - {name: xy, paths: [\"/y\", \"/x\"], allow: public}\n  - {name: both, paths: [\"/x\", \"/y\"], allow: deny}\n",
         &[(7, "earlier rule `xy`")]),
        // The earliest covering rule is named.
        ("  - {name: first, paths: [\"/**\"], allow: public}\n  - {name: second, paths: [\"/a/**\"], allow: public}\n  - {name: third, paths: [\"/a/b\"], allow: deny}\n",
         &[(7, "rule `second` is never reached: the earlier rule `first`"), (8, "rule `third` is never reached: the earlier rule `first`")]),
        // The root pattern is covered by `/**` but not by `/*`.
        ("  - {name: one, paths: [\"/*\"], allow: public}\n  - {name: root, paths: [\"/\"], allow: deny}\n", &[]),
    ];
    for (rules, want) in table {
        let warnings = warnings_of(rules);
        assert!(
            warnings.iter().all(|w| w.severity == Severity::Warning),
            "{warnings:?}"
        );
        let matches = want.len() == warnings.len()
            && want.iter().zip(&warnings).all(|((line, needle), w)| {
                w.line == *line && w.column == 5 && w.message.contains(needle)
            });
        assert!(matches, "rules:\n{rules}\nwant {want:?}\n got {warnings:?}");
    }
}

#[test]
fn other_warnings() {
    let warnings = warnings_of("  - {name: a, paths: [\"/a\"], allow: {permission: \"write:all\"}}\n  - {name: a, paths: [\"/b\"], allow: public}\n");
    let messages: Vec<String> = warnings.iter().map(|w| w.render("p.yaml")).collect();
    assert_eq!(
        messages,
        [
            "p.yaml:6:37: warning: no role is granted `write:all`, so rule `a` refuses everyone",
            "p.yaml:7:5: warning: another rule is already named `a` (line 6); logs will not tell them apart",
        ]
    );
    let text = "version: 1\nroles: [user]\npermissions:\n  user: [\"re*d\"]\nrules:\n  - {name: r, paths: [/], allow: public}\n";
    let (_, warnings) = Policy::parse(text, None).expect("valid");
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].message.contains("`re*d` is matched literally") && warnings[0].line == 4,
        "{warnings:?}"
    );
}

#[test]
fn on_unauthenticated_is_kept_as_written_and_warned_about_where_it_cannot_apply() {
    let browser = policy("browser");
    let written: Vec<_> = (0..browser.rule_count())
        .map(|index| browser.rule_on_unauthenticated(index))
        .collect();
    use OnUnauthenticated::{Deny, Redirect};
    assert_eq!(
        written,
        [
            Some(Deny),
            Some(Redirect),
            Some(Deny),
            None,
            Some(Deny),
            None
        ]
    );
    assert_eq!(browser.rule_on_unauthenticated(99), None);
    let warnings =
        warnings_of("  - {name: open, paths: [/], allow: public, on_unauthenticated: deny}\n");
    let messages: Vec<String> = warnings.iter().map(|w| w.render("p.yaml")).collect();
    assert_eq!(
        messages,
        ["p.yaml:6:65: warning: `on_unauthenticated` has no effect on a `public` rule, which refuses nobody"]
    );
}

#[test]
fn matcher_cost_does_not_grow_with_rules() {
    let visits = |rules: usize| {
        let (policy, warnings) =
            Policy::parse(&synthetic(rules), None).expect("synthetic policy is valid");
        assert!(
            warnings.is_empty(),
            "{:?}",
            &warnings[..warnings.len().min(3)]
        );
        assert_eq!(policy.rule_count(), rules);
        let last = rules - 1;
        let path = format!("/svc{last}/items/42/history");
        let request = Request {
            method: "GET",
            host: None,
            path: &path,
        };
        let (decision, hit) = policy.evaluate_counting(
            &request,
            Some(&Identity {
                sub: "42",
                role: "user",
            }),
        );
        assert_eq!(
            decision,
            Decision::Allow {
                rule: last,
                rate_limit: policy.default_rate_limit(),
                upstream: None
            }
        );
        let miss = Request {
            method: "GET",
            host: None,
            path: "/nowhere/at/all",
        };
        let (decision, missed) = policy.evaluate_counting(&miss, None);
        assert_eq!(
            decision,
            Decision::Unauthenticated {
                rule: None,
                on_unauthenticated: OnUnauthenticated::Redirect
            }
        );
        (hit, missed)
    };
    let small = visits(10);
    let large = visits(10_000);
    assert_eq!(small, large, "visits for 10 rules vs 10,000");
    assert!(large.0 <= 8 && large.1 <= 2, "{large:?}");
}

#[test]
fn render_format() {
    let error = Diagnostic {
        line: 12,
        column: 7,
        message: "unknown role `boss`".into(),
        severity: Severity::Error,
    };
    let warning = Diagnostic {
        line: 3,
        column: 1,
        message: "rule `x` is never reached".into(),
        severity: Severity::Warning,
    };
    assert_eq!(
        error.render("config/policy.yaml"),
        "config/policy.yaml:12:7: unknown role `boss`"
    );
    assert_eq!(
        warning.render("p.yaml"),
        "p.yaml:3:1: warning: rule `x` is never reached"
    );
}

#[test]
fn case_sensitive_matching() {
    let mut contract = policy("contract");
    contract.set_case_sensitive(true);
    let alice = Identity {
        sub: "alice",
        role: "user",
    };
    let request = |path| Request {
        method: "GET",
        host: None,
        path,
    };
    assert!(matches!(
        contract.evaluate(&request("/ADMIN/users"), Some(&alice)),
        Decision::Allow { rule: 4, .. }
    ));
    assert!(matches!(
        contract.evaluate(&request("/admin/users"), Some(&alice)),
        Decision::Forbidden { rule: Some(1), .. }
    ));
    assert!(matches!(
        contract.evaluate(&request("/Static/app.js"), None),
        Decision::Unauthenticated { rule: Some(4), .. }
    ));
}

/// `mode` and `tests:` are checked like every other key: each mistake at its place.
#[test]
fn invalid_modes_and_test_cases() {
    const RULE: &str = "  - {name: r, paths: [/], allow: public}\n";
    const SHADOW: &str = "  - {name: s, paths: [/x], allow: deny, mode: report}\n";
    // The rules take lines 6 and 7, `tests:` line 8, the case line 9.
    let case = |case: &str| one_rule(&format!("{RULE}{SHADOW}tests:\n  - {case}\n"));
    #[rustfmt::skip]
    let table: Vec<(String, usize, usize, &str)> = vec![
        (one_rule("  - name: r\n    paths: [/]\n    allow: public\n    mode: shadow\n"), 9, 11, "`mode` must be `enforce` (the default) or `report`"),
        (one_rule("  - name: r\n    paths: [/]\n    allow: public\n    mode: Report\n"), 9, 11, "`mode` must be `enforce` (the default) or `report` (a shadow rule that never decides), not `Report`"),
        (one_rule(&format!("{RULE}tests: {{}}\n")), 7, 8, "`tests` must be a list of cases, not a mapping"),
        (case("just text"), 9, 5, "each test must be a mapping with `method`, `path` and `expect`"),
        (case("{method: GET, path: /, expect: allow, when: 1}"), 9, 43, "unknown key `when` in a test; expected one of: method, path, host, role, user_id, anonymous, expect, rule"),
        (case("{method: GET, path: /, expect: allow, method: POST}"), 9, 43, "duplicate key `method` in a test"),
        (case("{path: /, expect: allow}"), 9, 5, "a test needs `method`"),
        (case("{method: GET, expect: allow}"), 9, 5, "a test needs `path`"),
        (case("{method: GET, path: /}"), 9, 5, "a test needs `expect` (`allow`, `401` or `403`)"),
        (case("{method: get, path: /, expect: allow}"), 9, 14, "methods are upper-case: write `GET`"),
        (case("{method: [GET], path: /, expect: allow}"), 9, 14, "`method` must be a method such as `GET`, not a list"),
        (case("{method: GET, path: x, expect: allow}"), 9, 25, "`path` must be a request path starting with `/`, without a query, not `x`"),
        (case("{method: GET, path: /a?b=1, expect: allow}"), 9, 25, "`path` must be a request path starting with `/`, without a query"),
        (case("{method: GET, path: /, expect: 404}"), 9, 36, "`expect` must be `allow`, `401` or `403`, not `404`"),
        (case("{method: GET, path: /, expect: allowed}"), 9, 36, "`expect` must be `allow`, `401` or `403`, not `allowed`"),
        (case("{method: GET, path: /, expect: allow, rule: nope}"), 9, 49, "no rule is named `nope`"),
        (case("{method: GET, path: /x, expect: 401, rule: s}"), 9, 48, "rule `s` has `mode: report` and never decides; a test judges enforced rules only"),
        (case("{method: GET, path: /, anonymous: true, role: user, expect: allow}"), 9, 5, "an `anonymous: true` test has no `role` or `user_id`"),
        (case("{method: GET, path: /, user_id: u1, expect: allow}"), 9, 5, "a test with `user_id` needs the caller's `role`"),
        (case("{method: GET, path: /, anonymous: yes, expect: allow}"), 9, 39, "`anonymous` must be `true` or `false`, not `yes`"),
        (case("{method: GET, path: /, host: [a], expect: allow}"), 9, 34, "`host` must be a host name, not a list"),
        (case("{method: GET, path: /, role: {}, expect: allow}"), 9, 34, "`role` must be a role name, not a mapping"),
    ];
    let mut failures = Vec::new();
    for (index, (text, line, column, needle)) in table.iter().enumerate() {
        let diagnostics = match Policy::parse(text, None) {
            Ok(_) => {
                failures.push(format!("case {index} ({needle}): accepted\n{text}"));
                continue;
            }
            Err(diagnostics) => diagnostics,
        };
        let hit = diagnostics
            .iter()
            .find(|d| d.severity == Severity::Error && d.message.contains(needle));
        match hit {
            Some(d) if (d.line, d.column) == (*line, *column) => {}
            _ => failures.push(format!(
                "case {index}: want {line}:{column} {needle:?}\n  got {:#?}\n{text}",
                diagnostics
                    .iter()
                    .map(|d| d.render("policy.yaml"))
                    .collect::<Vec<_>>()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A role the policy does not know is a warning: a token may carry one.
    let (_, warnings) = Policy::parse(
        &case("{method: GET, path: /, role: ghost, expect: allow}"),
        None,
    )
    .expect("valid");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!((warnings[0].line, warnings[0].column), (9, 34));
    assert!(warnings[0]
        .message
        .contains("role `ghost` is not in `roles`"));
}

/// Rules 0 intranet (hosts), 1 admin, 2 profile (owner), 3 admin next (a shadow rule),
/// 4 public (GET only).
const CASES_POLICY: &str = r#"version: 1
roles: [user, admin]
rules:
  - name: intranet
    paths: ["/internal/**"]
    hosts: [intranet.example.com]
    allow: authenticated
  - name: admin
    paths: ["/admin/**"]
    allow: { role: admin }
  - name: profile
    paths: ["/u/{id}"]
    allow: { owner: id }
  - name: admin next
    paths: ["/admin/reports/**"]
    allow: { role: user }
    mode: report
  - name: public
    paths: ["/**"]
    methods: [GET]
    allow: public
"#;

/// Each case of a `tests:` list and what running it says: None when it passes, else the
/// message reported at the case.
#[test]
fn test_cases_run_through_normalisation_and_evaluation() {
    #[rustfmt::skip]
    let table: &[(&str, Option<&str>)] = &[
        ("{method: GET, path: /internal/a, host: intranet.example.com, role: user, expect: allow, rule: intranet}", None),
        ("{method: GET, path: /internal/a, host: \"INTRANET.example.com:8443\", expect: 401, rule: intranet}", None),
        // Without the host the intranet rule is skipped.
        ("{method: GET, path: /internal/a, role: user, expect: allow, rule: public}", None),
        // The path is normalised as the gateway does: dot segments, letter case.
        ("{method: GET, path: /static/../admin/x, role: user, expect: 403, rule: admin}", None),
        ("{method: GET, path: /ADMIN/x, role: admin, expect: allow, rule: admin}", None),
        ("{method: GET, path: /admin//x/, anonymous: true, expect: 401, rule: admin}", None),
        // A shadow rule never decides.
        ("{method: GET, path: /admin/reports/q1, role: user, expect: 403, rule: admin}", None),
        ("{method: GET, path: /u/7, role: user, user_id: 7, expect: allow, rule: profile}", None),
        ("{method: GET, path: /u/7, role: user, expect: 403}", None),
        // Failures: the outcome, the deciding rule, a path the gateway refuses, the host.
        ("{method: GET, path: /admin/x, role: user, expect: allow}",
         Some("test failed: GET /admin/x as user with role user: expected allow, got 403 from rule `admin` (Requires admin role)")),
        ("{method: POST, path: /x, expect: 401, rule: public}",
         Some("test failed: POST /x as anonymous: expected 401 from rule `public`, got 401 (no rule matches)")),
        ("{method: GET, path: /x, anonymous: true, expect: allow, rule: admin}",
         Some("test failed: GET /x as anonymous: expected allow from rule `admin`, got allow from rule `public`")),
        ("{method: GET, path: /a%2Fb, expect: allow}",
         Some("test failed: GET /a%2Fb as anonymous: expected allow, got 400 before any rule (Invalid request path: encoded slash)")),
        ("{method: GET, path: /internal/a, host: intranet.example.com, expect: allow}",
         Some("test failed: GET /internal/a on intranet.example.com as anonymous: expected allow, got 401 from rule `intranet`")),
        ("{method: DELETE, path: /u/7, role: user, user_id: \"7\", expect: 403}",
         Some("test failed: DELETE /u/7 as 7 with role user: expected 403, got allow from rule `profile`")),
    ];
    let mut text = format!("{CASES_POLICY}tests:\n");
    for (case, _) in table {
        text.push_str(&format!("  - {case}\n"));
    }
    let first = CASES_POLICY.lines().count() + 2;
    let (policy, warnings) = Policy::parse(&text, None).expect("valid");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(policy.test_count(), table.len());
    let normalize = |path: &str| crate::proxy::path::normalize_path(path, false);
    let got: Vec<(usize, usize, String)> = policy
        .run_tests(normalize)
        .into_iter()
        .map(|d| {
            assert_eq!(d.severity, Severity::Error);
            (d.line, d.column, d.message)
        })
        .collect();
    let want: Vec<(usize, usize, String)> = table
        .iter()
        .enumerate()
        .filter_map(|(index, (_, failure))| Some((first + index, 5, (*failure)?.to_string())))
        .collect();
    assert_eq!(got, want);

    // Cases judge as the gateway is configured: with exact matching, /ADMIN is not /admin.
    let (mut exact, _) = Policy::parse(&text, None).expect("valid");
    exact.set_case_sensitive(true);
    let failed_lines: Vec<usize> = exact.run_tests(normalize).iter().map(|d| d.line).collect();
    assert!(failed_lines.contains(&(first + 4)), "{failed_lines:?}");
    assert_eq!(failed_lines.len(), want.len() + 1);

    // A policy without tests has nothing to run.
    assert!(policy_without_tests().run_tests(normalize).is_empty());
}

fn policy_without_tests() -> Policy {
    Policy::parse(CASES_POLICY, None).expect("valid").0
}

/// The shipped policy pins every rule with a case, and every case passes.
#[test]
fn the_shipped_policy_tests_every_rule() {
    let shipped = include_str!("../../config/policy.yaml");
    let (policy, _) = Policy::parse(shipped, None).expect("config/policy.yaml parses");
    let failures = policy.run_tests(|path| crate::proxy::path::normalize_path(path, false));
    assert!(failures.is_empty(), "{failures:?}");
    for index in 0..policy.rule_count() {
        let name = policy.rule_name(index);
        assert!(
            shipped.contains(&format!("rule: {name} }}")),
            "no case names rule `{name}`"
        );
    }
}

/// Rules 0 admin, 1 reports for users (report), 2 lock down writes (report), 3 own page
/// (report), 4 public.
const SHADOW_POLICY: &str = r#"version: 1
roles: [user, admin]
rules:
  - name: admin
    paths: ["/admin/**"]
    allow: { role: admin }
  - name: reports for users
    paths: ["/admin/reports/**"]
    allow: { role: user }
    mode: report
  - name: lock down writes
    paths: ["/**"]
    methods: [POST, PUT, PATCH, DELETE]
    allow: deny
    mode: report
  - name: own page
    paths: ["/u/{id}"]
    allow: { owner: id }
    mode: report
  - name: public
    paths: ["/**"]
    allow: public
    mode: enforce
"#;

/// Method, path, caller, the enforced (rule, outcome), and each matching shadow rule's.
type ShadowCase = (
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
    (Option<usize>, Outcome),
    &'static [(usize, Outcome)],
);

/// What the enforced rules decide, and what each matching shadow rule would have.
#[test]
fn shadow_rules_never_decide_but_say_what_they_would() {
    use Outcome::{Allow as A, Forbidden as F, Unauthenticated as U};
    #[rustfmt::skip]
    let table: &[ShadowCase] = &[
        ("GET",  "/admin/reports/q1", Some(("u", "user")),  (Some(0), F), &[(1, A)]),
        ("GET",  "/admin/reports/q1", None,                 (Some(0), U), &[(1, U)]),
        ("GET",  "/ADMIN/Reports/q1", Some(("u", "user")),  (Some(0), F), &[(1, A)]),
        ("POST", "/admin/reports/q1", Some(("a", "admin")), (Some(0), A), &[(1, A), (2, F)]),
        ("POST", "/x",                None,                 (Some(4), A), &[(2, U)]),
        ("HEAD", "/x",                None,                 (Some(4), A), &[]),
        ("GET",  "/u/7",              Some(("7", "user")),  (Some(4), A), &[(3, A)]),
        ("GET",  "/u/7",              Some(("8", "user")),  (Some(4), A), &[(3, F)]),
        ("GET",  "/u/7/more",         Some(("8", "user")),  (Some(4), A), &[]),
        ("GET",  "/elsewhere",        None,                 (Some(4), A), &[]),
    ];
    let (policy, warnings) = Policy::parse(SHADOW_POLICY, None).expect("valid");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(policy.has_shadow_rules());
    assert_eq!(policy.rule_count(), 5);
    assert_eq!(policy.rule_name(2), "lock down writes");
    let shadows: Vec<bool> = (0..6).map(|index| policy.is_shadow_rule(index)).collect();
    assert_eq!(shadows, [false, true, true, true, false, false]);
    for &(method, path, who, (rule, outcome), want) in table {
        let identity = who.map(|(sub, role)| Identity { sub, role });
        let request = Request {
            method,
            host: None,
            path,
        };
        let decision = policy.evaluate(&request, identity.as_ref());
        assert_eq!(
            (decision.rule(), decision.outcome()),
            (rule, outcome),
            "{method} {path} {who:?}"
        );
        let got: Vec<(usize, Outcome)> = policy
            .shadow_decisions(&request, identity.as_ref())
            .iter()
            .map(|(rule, would)| (*rule, would.outcome()))
            .collect();
        assert_eq!(got, want, "{method} {path} {who:?}");
    }
    // Without shadow rules nothing is asked.
    let plain = self::policy("contract");
    assert!(!plain.has_shadow_rules());
    let request = Request {
        method: "POST",
        host: None,
        path: "/admin/x",
    };
    assert!(plain.shadow_decisions(&request, None).is_empty());
}

#[test]
fn a_shadow_rule_is_never_reported_as_unreachable_nor_hides_a_later_rule() {
    let text = "version: 1\nroles: [user]\nrules:\n  - {name: all, paths: [\"/**\"], allow: public, mode: report}\n  - {name: a, paths: [/a], allow: deny}\n  - {name: b, paths: [/a], allow: public, mode: report}\n";
    let (policy, warnings) = Policy::parse(text, None).expect("valid");
    assert!(warnings.is_empty(), "{warnings:?}");
    let request = Request {
        method: "GET",
        host: None,
        path: "/a",
    };
    assert_eq!(policy.evaluate(&request, None).rule(), Some(1));
    let shadows: Vec<usize> = policy
        .shadow_decisions(&request, None)
        .iter()
        .map(|(rule, _)| *rule)
        .collect();
    assert_eq!(shadows, [0, 2]);
}
