//! A differential corpus of hostile requests: raw bytes over real TLS (and a few HTTP/2
//! requests) to a real gateway, each row with the status the contract gives it and what, if
//! anything, the upstream must receive.
//!
//! The recording upstream is the judge of the second half: nothing refused may reach it, and a
//! forwarded request must arrive exactly as the gateway judged it — the method, the normalised
//! target, the body bytes, none of the headers the gateway strips, and the `X-Forwarded-*`
//! values the gateway sets. Every row of a table runs even when one fails; a test fails once, at
//! the end, with a table of every mismatch, so one run shows the whole picture.
//!
//! Rows are templates: `@HOST@` becomes `localhost:PORT`, `@PORT@` the gateway's port,
//! `@TOKEN@` a valid access token of a plain `user`, `@USER@` that user's id. Header values
//! that must never reach the upstream say `forged`, and no forwarded header may carry it.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::harness::upstream::Seen;
use crate::harness::{full, TestGateway};

/// How long a row may take in all; a gateway that neither answers nor closes costs this much.
const WAIT: Duration = Duration::from_secs(2);
/// After the head of an answer, how long a silent connection is given before the row ends.
const IDLE: Duration = Duration::from_millis(500);

/// The policy every corpus gateway enforces: GET-only static files, an admin area, permission-
/// guarded project writes, a public area for every method, one exact public page, one denied
/// page, and everything else for signed-in users.
const POLICY: &str = r#"
version: 1
roles: [user, manager, admin]
permissions:
  user:    ["read:*", "write:own"]
  manager: ["read:*", "write:project"]
  admin:   ["*"]
rules:
  - name: static assets
    paths: ["/static/**"]
    methods: [GET]
    allow: public
  - name: admin area
    paths: ["/admin/**"]
    allow: { role: admin }
  - name: project writes
    paths: ["/projects/**"]
    methods: [POST, PUT, PATCH, DELETE]
    allow: { permission: "write:project" }
  - name: public area
    paths: ["/public/**"]
    allow: public
  - name: docs page
    paths: ["/docs"]
    allow: public
  - name: blocked page
    paths: ["/blocked"]
    allow: deny
  - name: signed-in users
    paths: ["/**"]
    allow: authenticated
"#;

/// A bearer token line for the test's plain `user`.
const AUTH: &str = "Authorization: Bearer @TOKEN@\r\n";

/// A complete request that follows a refused one in the same write: if the gateway ever reads
/// it as a request of its own, the upstream sees `/public/smuggled`.
const SMUGGLED: &str =
    "GET /public/smuggled HTTP/1.1\r\nHost: @HOST@\r\nX-Corpus-Row: @ROW@\r\n\r\n";

/// Every request carries its row's index in this header, so that what reaches the upstream is
/// charged to the row that sent it even when it arrives after the gateway has answered (a
/// request the gateway gave up on with 502 may still reach the upstream a moment later).
const ROW_HEADER: &str = "x-corpus-row";

// --- the tables ---------------------------------------------------------------------------

#[tokio::test]
async fn methods() {
    let rows = vec![
        forwarded("GET", request("GET", "/public/m", ""), "GET", "/public/m"),
        forwarded(
            "HEAD",
            request("HEAD", "/public/m", ""),
            "HEAD",
            "/public/m",
        ),
        forwarded(
            "POST with a body",
            with_body("POST", "/public/m", "", "hello"),
            "POST",
            "/public/m",
        )
        .body(b"hello"),
        forwarded(
            "PUT with a body",
            with_body("PUT", "/public/m", "", "hello"),
            "PUT",
            "/public/m",
        )
        .body(b"hello"),
        forwarded(
            "PATCH with a body",
            with_body("PATCH", "/public/m", "", "hello"),
            "PATCH",
            "/public/m",
        )
        .body(b"hello"),
        forwarded(
            "DELETE",
            request("DELETE", "/public/m", ""),
            "DELETE",
            "/public/m",
        ),
        forwarded(
            "OPTIONS without Origin (not a preflight)",
            request("OPTIONS", "/public/m", ""),
            "OPTIONS",
            "/public/m",
        ),
        forwarded(
            "PURGE, listed in server.extra_methods",
            request("PURGE", "/public/m", ""),
            "PURGE",
            "/public/m",
        ),
        forwarded(
            "HEAD on a methods: [GET] rule",
            request("HEAD", "/static/m.css", ""),
            "HEAD",
            "/static/m.css",
        ),
        refused(
            "POST on a methods: [GET] rule falls to the next rule",
            with_body("POST", "/static/m.css", "", "hello"),
            401,
        ),
        refused("lower-case get", request("get", "/public/m", ""), 405),
        refused("mixed-case Get", request("Get", "/public/m", ""), 405),
        refused("lower-case delete", request("delete", "/public/m", ""), 405),
        refused(
            "lower-case post with a body",
            with_body("post", "/public/m", "", "hello"),
            405,
        ),
        refused(
            "lower-case options",
            request("options", "/public/m", ""),
            405,
        ),
        refused(
            "lower-case purge (extra methods are exact too)",
            request("purge", "/public/m", ""),
            405,
        ),
        refused("unknown FOO", request("FOO", "/public/m", ""), 405),
        refused("TRACE", request("TRACE", "/public/m", ""), 405),
        refused("lower-case trace", request("trace", "/public/m", ""), 405),
        refused(
            "TRACE on a protected path",
            request("TRACE", "/admin/x", ""),
            405,
        ),
        refused("TRACK (IIS)", request("TRACK", "/public/m", ""), 405),
        refused("DEBUG (IIS)", request("DEBUG", "/public/m", ""), 405),
        refused(
            "PROPFIND (WebDAV)",
            request("PROPFIND", "/public/m", ""),
            405,
        ),
        refused("MOVE (WebDAV)", request("MOVE", "/public/m", ""), 405),
        refused("QUERY", request("QUERY", "/public/m", ""), 405),
        refused(
            "CONNECT in authority form",
            "CONNECT @HOST@ HTTP/1.1\r\nHost: @HOST@\r\nConnection: close\r\n\r\n",
            405,
        ),
        refused(
            "a 2000-character method",
            request(&"A".repeat(2000), "/public/m", ""),
            405,
        ),
        refused(
            "_method query parameter on GET",
            request("GET", "/public/m?_method=DELETE", ""),
            400,
        ),
        refused(
            "_method query parameter on POST",
            with_body("POST", "/public/m?_method=PUT", "", "hello"),
            400,
        ),
        refused(
            "_method after another parameter",
            request("GET", "/public/m?a=1&_method=DELETE", ""),
            400,
        ),
        refused(
            "_method with an empty value",
            request("GET", "/public/m?_method=", ""),
            400,
        ),
        refused(
            "_method with its underscore percent-encoded",
            request("GET", "/public/m?%5Fmethod=DELETE", ""),
            400,
        ),
        forwarded(
            "a parameter that merely ends in _method",
            request("GET", "/public/m?x_method=DELETE", ""),
            "GET",
            "/public/m?x_method=DELETE",
        ),
        forwarded(
            "X-HTTP-Method-Override is removed",
            with_body(
                "POST",
                "/public/m",
                "X-HTTP-Method-Override: DELETE\r\n",
                "hello",
            ),
            "POST",
            "/public/m",
        )
        .body(b"hello")
        .without(&["x-http-method-override"]),
        forwarded(
            "X-HTTP-Method is removed",
            request("POST", "/public/m", "X-HTTP-Method: DELETE\r\n"),
            "POST",
            "/public/m",
        )
        .without(&["x-http-method"]),
        forwarded(
            "X-Method-Override is removed",
            request("POST", "/public/m", "X-Method-Override: DELETE\r\n"),
            "POST",
            "/public/m",
        )
        .without(&["x-method-override"]),
        forwarded(
            "X-HTTP-METHOD-OVERRIDE in upper case is removed",
            request("POST", "/public/m", "X-HTTP-METHOD-OVERRIDE: DELETE\r\n"),
            "POST",
            "/public/m",
        )
        .without(&["x-http-method-override"]),
        forwarded(
            "x_http_method_override with underscores is removed",
            request("POST", "/public/m", "x_http_method_override: DELETE\r\n"),
            "POST",
            "/public/m",
        )
        .without(&["x_http_method_override"]),
        forwarded(
            "GET on a write-guarded path as user",
            request("GET", "/projects/1", AUTH),
            "GET",
            "/projects/1",
        )
        .carrying("x-auth-user-id", Some("@USER@")),
        refused(
            "DELETE on a write-guarded path as user",
            request("DELETE", "/projects/1", AUTH),
            403,
        ),
        refused(
            "an override header cannot turn a POST into a GET",
            with_body(
                "POST",
                "/projects/1",
                &format!("{AUTH}X-HTTP-Method-Override: GET\r\n"),
                "hello",
            ),
            403,
        ),
        refused(
            "a _method parameter cannot turn a POST into a GET",
            with_body("POST", "/projects/1?_method=GET", AUTH, "hello"),
            400,
        ),
        refused(
            "lower-case delete cannot slip past methods: [DELETE]",
            request("delete", "/projects/1", AUTH),
            405,
        ),
    ];
    run("methods", rows, |config| {
        config.server.extra_methods = vec!["PURGE".to_string()];
    })
    .await;
}

#[tokio::test]
async fn hosts() {
    let rows = vec![
        forwarded("served host with port", host("@HOST@"), "GET", "/public/h")
            .carrying("x-forwarded-host", Some("@HOST@")),
        forwarded("upper-case host", host("LOCALHOST:@PORT@"), "GET", "/public/h"),
        forwarded(
            "host with a trailing dot",
            host("localhost.:@PORT@"),
            "GET",
            "/public/h",
        ),
        forwarded(
            "upper-case host with a trailing dot",
            host("LOCALHOST.:@PORT@"),
            "GET",
            "/public/h",
        ),
        forwarded(
            "served host without a port",
            host("localhost"),
            "GET",
            "/public/h",
        ),
        forwarded(
            "served host with another port",
            host("localhost:1"),
            "GET",
            "/public/h",
        ),
        forwarded(
            "served IP address",
            host("127.0.0.1:@PORT@"),
            "GET",
            "/public/h",
        ),
        forwarded(
            "the public_url host",
            host("gateway.test"),
            "GET",
            "/public/h",
        ),
        forwarded(
            "the public_url host in mixed case with a trailing dot",
            host("Gateway.Test."),
            "GET",
            "/public/h",
        ),
        forwarded(
            "Host header name in odd case",
            "GET /public/h HTTP/1.1\r\nhOsT: @HOST@\r\nConnection: close\r\n\r\n",
            "GET",
            "/public/h",
        ),
        forwarded(
            "a client X-Forwarded-Host is replaced by Host",
            request("GET", "/public/h", "X-Forwarded-Host: forged.example\r\n"),
            "GET",
            "/public/h",
        )
        .carrying("x-forwarded-host", Some("@HOST@")),
        refused("unserved host", host("evil.example"), 421),
        refused(
            "unserved host with the gateway's port",
            host("evil.example:@PORT@"),
            421,
        ),
        refused(
            "served name as a prefix of an unserved one",
            host("localhost.evil.example"),
            421,
        ),
        refused(
            "served name as a prefix, with port",
            host("localhost.evil.example:@PORT@"),
            421,
        ),
        refused(
            "served name as a prefix, upper case",
            host("LOCALHOST.EVIL.EXAMPLE"),
            421,
        ),
        refused(
            "served name as a suffix without a dot",
            host("evillocalhost"),
            421,
        ),
        refused(
            "public_url host as a prefix",
            host("gateway.test.evil.example"),
            421,
        ),
        refused("another loopback address", host("127.0.0.2"), 421),
        refused("IPv6 loopback, not listed", host("[::1]:@PORT@"), 421),
        refused(
            "127.0.0.1 spelled as a decimal number",
            host("2130706433"),
            421,
        ),
        refused(
            "unserved host on a protected path",
            "GET /admin/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
            421,
        ),
        refused(
            "unserved host on the gateway's own routes",
            "GET /auth/nothing-here HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
            421,
        ),
        refused(
            "unserved host with a valid token",
            format!(
                "GET /private/h HTTP/1.1\r\nHost: evil.example\r\n{AUTH}Connection: close\r\n\r\n"
            ),
            421,
        ),
        refused(
            "missing Host",
            "GET /public/h HTTP/1.1\r\nConnection: close\r\n\r\n",
            400,
        ),
        refused("empty Host", host(""), 400),
        refused(
            "duplicate identical Host",
            "GET /public/h HTTP/1.1\r\nHost: @HOST@\r\nHost: @HOST@\r\nConnection: close\r\n\r\n",
            400,
        ),
        refused(
            "duplicate Host, served first",
            "GET /public/h HTTP/1.1\r\nHost: @HOST@\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
            400,
        ),
        refused(
            "duplicate Host, unserved first",
            "GET /public/h HTTP/1.1\r\nHost: evil.example\r\nHost: @HOST@\r\nConnection: close\r\n\r\n",
            400,
        ),
        refused("Host with userinfo", host("user@@HOST@"), 400),
        refused(
            "Host with the served name before an @",
            host("@HOST@@evil.example"),
            400,
        ),
        refused("Host with a path", host("@HOST@/admin"), 400),
        refused("Host with a space", host("local host"), 400),
        refused("Host with a comma list", host("@HOST@, evil.example"), 400),
        refused(
            "Host with a non-UTF-8 byte",
            concat(&[
                b"GET /public/h HTTP/1.1\r\nHost: local\xE9host:@PORT@\r\n",
                b"Connection: close\r\n\r\n",
            ]),
            400,
        ),
        forwarded(
            "absolute-form target matching Host",
            "GET https://@HOST@/public/h HTTP/1.1\r\nHost: @HOST@\r\nConnection: close\r\n\r\n",
            "GET",
            "/public/h",
        ),
        forwarded(
            "absolute-form target matching Host in another case",
            "GET https://LOCALHOST:@PORT@/public/h HTTP/1.1\r\nHost: @HOST@\r\nConnection: close\r\n\r\n",
            "GET",
            "/public/h",
        ),
        refused(
            "absolute-form authority differs from Host",
            "GET https://evil.example/public/h HTTP/1.1\r\nHost: @HOST@\r\nConnection: close\r\n\r\n",
            400,
        ),
        refused(
            "absolute-form authority served, Host not",
            "GET https://@HOST@/public/h HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
            400,
        ),
        refused(
            "absolute-form with userinfo",
            "GET https://user@@HOST@/public/h HTTP/1.1\r\nHost: @HOST@\r\nConnection: close\r\n\r\n",
            400,
        ),
        refused(
            "absolute-form agreeing with an unserved Host",
            "GET https://evil.example/public/h HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
            421,
        ),
        refused(
            "absolute-form path normalised before judging",
            "GET https://@HOST@/public/../admin/x HTTP/1.1\r\nHost: @HOST@\r\nConnection: close\r\n\r\n",
            401,
        ),
        refused(
            "HTTP/1.0 without Host",
            "GET /public/h HTTP/1.0\r\n\r\n",
            400,
        ),
        forwarded(
            "HTTP/1.0 with a served Host",
            "GET /public/h HTTP/1.0\r\nHost: @HOST@\r\n\r\n",
            "GET",
            "/public/h",
        ),
        refused(
            "HTTP/1.0 with an unserved Host",
            "GET /public/h HTTP/1.0\r\nHost: evil.example\r\n\r\n",
            421,
        ),
    ];
    run("hosts", rows, |_| {}).await;
}

#[tokio::test]
async fn framing() {
    let rows = vec![
        // Content-Length with Transfer-Encoding, in every spelling.
        refused(
            "CL then TE chunked",
            smuggle(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            400,
        )
        .smuggling(),
        refused(
            "TE chunked then CL",
            smuggle(
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            400,
        )
        .smuggling(),
        refused(
            "CL.TE: the length covers a terminator and a prefix",
            smuggle(
                "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\nG",
            ),
            400,
        )
        .smuggling(),
        refused(
            "TE.CL: a zero length before a chunked body",
            smuggle(
                "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            400,
        )
        .smuggling(),
        refused(
            "CL with TE ' chunked' (extra space)",
            smuggle(
                "Content-Length: 5\r\nTransfer-Encoding:  chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            400,
        )
        .smuggling(),
        refused(
            "CL with TE tab-chunked",
            smuggle(
                "Content-Length: 5\r\nTransfer-Encoding:\tchunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            400,
        )
        .smuggling(),
        refused(
            "CL with TE 'chunked, identity'",
            smuggle(
                "Content-Length: 5\r\nTransfer-Encoding: chunked, identity\r\n",
                "hello",
            ),
            400,
        )
        .smuggling(),
        refused(
            "CL with TE 'identity, chunked'",
            smuggle(
                "Content-Length: 5\r\nTransfer-Encoding: identity, chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            400,
        )
        .smuggling(),
        refused(
            "CL with TE xchunked",
            smuggle(
                "Content-Length: 5\r\nTransfer-Encoding: xchunked\r\n",
                "hello",
            ),
            400,
        )
        .smuggling(),
        refused(
            "CL with TE identity",
            smuggle(
                "Content-Length: 5\r\nTransfer-Encoding: identity\r\n",
                "hello",
            ),
            400,
        )
        .smuggling(),
        refused(
            "TE identity alone",
            smuggle("Transfer-Encoding: identity\r\n", "hello"),
            400,
        )
        .smuggling(),
        refused(
            "TE xchunked alone",
            smuggle("Transfer-Encoding: xchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            400,
        )
        .smuggling(),
        refused(
            "TE 'chunked, chunked'",
            smuggle(
                "Transfer-Encoding: chunked, chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            400,
        )
        .smuggling(),
        refused(
            "TE chunked, then TE identity",
            smuggle(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            400,
        )
        .smuggling(),
        refused(
            "TE with a space before the colon",
            smuggle(
                "Transfer-Encoding : chunked\r\nContent-Length: 5\r\n",
                "hello",
            ),
            400,
        )
        .smuggling(),
        // Content-Length alone.
        refused(
            "two differing Content-Lengths",
            smuggle("Content-Length: 5\r\nContent-Length: 6\r\n", "hello"),
            400,
        )
        .smuggling(),
        refused(
            "Content-Length as a list",
            smuggle("Content-Length: 5, 6\r\n", "hello"),
            400,
        )
        .smuggling(),
        refused(
            "Content-Length with a plus sign",
            smuggle("Content-Length: +5\r\n", "hello"),
            400,
        )
        .smuggling(),
        refused(
            "negative Content-Length",
            smuggle("Content-Length: -5\r\n", "hello"),
            400,
        )
        .smuggling(),
        refused(
            "hexadecimal Content-Length",
            smuggle("Content-Length: 0x5\r\n", "hello"),
            400,
        )
        .smuggling(),
        refused(
            "Content-Length with a decimal point",
            smuggle("Content-Length: 5.0\r\n", "hello"),
            400,
        )
        .smuggling(),
        refused(
            "Content-Length overflowing 64 bits",
            smuggle("Content-Length: 18446744073709551621\r\n", "hello"),
            400,
        )
        .smuggling(),
        refused(
            "empty Content-Length",
            smuggle("Content-Length: \r\n", "hello"),
            400,
        )
        .smuggling(),
        // Chunked framing.
        refused(
            "chunk size overflow",
            smuggle(
                "Transfer-Encoding: chunked\r\n",
                "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
            ),
            400,
        )
        .smuggling(),
        refused(
            "negative chunk size",
            smuggle("Transfer-Encoding: chunked\r\n", "-5\r\nhello\r\n0\r\n\r\n"),
            400,
        )
        .smuggling(),
        refused(
            "chunk size with a plus sign",
            smuggle("Transfer-Encoding: chunked\r\n", "+5\r\nhello\r\n0\r\n\r\n"),
            400,
        )
        .smuggling(),
        refused(
            "chunk size with 0x",
            smuggle(
                "Transfer-Encoding: chunked\r\n",
                "0x5\r\nhello\r\n0\r\n\r\n",
            ),
            400,
        )
        .smuggling(),
        refused(
            "chunk size with a leading space",
            smuggle("Transfer-Encoding: chunked\r\n", " 5\r\nhello\r\n0\r\n\r\n"),
            400,
        )
        .smuggling(),
        refused(
            "chunk size not hexadecimal",
            smuggle("Transfer-Encoding: chunked\r\n", "5g\r\nhello\r\n0\r\n\r\n"),
            400,
        )
        .smuggling(),
        refused(
            "bare LF after the chunk size",
            smuggle("Transfer-Encoding: chunked\r\n", "5\nhello\r\n0\r\n\r\n"),
            400,
        )
        .smuggling(),
        refused(
            "bare LF after the chunk data",
            smuggle("Transfer-Encoding: chunked\r\n", "5\r\nhello\n0\r\n\r\n"),
            400,
        )
        .smuggling(),
        refused(
            "NUL in a chunk extension",
            smuggle(
                "Transfer-Encoding: chunked\r\n",
                "5;a\0b\r\nhello\r\n0\r\n\r\n",
            ),
            400,
        )
        .smuggling(),
        refused(
            "control byte in a chunk extension",
            smuggle(
                "Transfer-Encoding: chunked\r\n",
                "5;a\x01b\r\nhello\r\n0\r\n\r\n",
            ),
            400,
        )
        .smuggling(),
        refused(
            "DEL in a chunk extension",
            smuggle(
                "Transfer-Encoding: chunked\r\n",
                "5;a\x7fb\r\nhello\r\n0\r\n\r\n",
            ),
            400,
        )
        .smuggling(),
        refused(
            "bare CR in a chunk extension",
            smuggle(
                "Transfer-Encoding: chunked\r\n",
                "5;a\rb\r\nhello\r\n0\r\n\r\n",
            ),
            400,
        )
        .smuggling(),
        refused(
            "missing CRLF after the chunk data",
            smuggle("Transfer-Encoding: chunked\r\n", "5\r\nhello0\r\n\r\n"),
            400,
        )
        .smuggling(),
        refused(
            "chunk data longer than its size",
            smuggle("Transfer-Encoding: chunked\r\n", "3\r\nhello\r\n0\r\n\r\n"),
            400,
        )
        .smuggling(),
        // Well-formed bodies, forwarded byte for byte.
        forwarded(
            "Content-Length body",
            with_body("POST", "/public/f", "", "hello"),
            "POST",
            "/public/f",
        )
        .body(b"hello"),
        forwarded(
            "Content-Length: 0",
            with_body("POST", "/public/f", "", ""),
            "POST",
            "/public/f",
        ),
        forwarded(
            "chunked body",
            chunked("5\r\nhello\r\n0\r\n\r\n", "chunked"),
            "POST",
            "/public/f",
        )
        .body(b"hello"),
        forwarded(
            "chunked with an extension",
            chunked("5;name=value\r\nhello\r\n0\r\n\r\n", "chunked"),
            "POST",
            "/public/f",
        )
        .body(b"hello"),
        forwarded(
            "chunked with a trailer",
            chunked("5\r\nhello\r\n0\r\nX-Trailer: a\r\n\r\n", "chunked"),
            "POST",
            "/public/f",
        )
        .body(b"hello"),
        forwarded(
            "chunked in two chunks with upper-case hex",
            chunked("A\r\n0123456789\r\n2\r\nab\r\n0\r\n\r\n", "chunked"),
            "POST",
            "/public/f",
        )
        .body(b"0123456789ab"),
        forwarded(
            "chunk size with leading zeros",
            chunked("0005\r\nhello\r\n0\r\n\r\n", "chunked"),
            "POST",
            "/public/f",
        )
        .body(b"hello"),
        forwarded(
            "Transfer-Encoding: CHUNKED in upper case",
            chunked("5\r\nhello\r\n0\r\n\r\n", "CHUNKED"),
            "POST",
            "/public/f",
        )
        .body(b"hello"),
        // Request-line and header-syntax oddities.
        refused(
            "HTTP/2.0 in an HTTP/1 request line",
            "GET /public/f HTTP/2.0\r\nHost: @HOST@\r\nConnection: close\r\n\r\n",
            400,
        )
        .or_status(505),
        refused(
            "HTTP/1.2",
            "GET /public/f HTTP/1.2\r\nHost: @HOST@\r\nConnection: close\r\n\r\n",
            400,
        )
        .or_status(505),
        refused(
            "lower-case http/1.1",
            "GET /public/f http/1.1\r\nHost: @HOST@\r\nConnection: close\r\n\r\n",
            400,
        )
        .or_status(505),
        refused("HTTP/0.9-style request line", "GET /public/f\r\n\r\n", 400).or_status(505),
        refused(
            "space inside the target",
            "GET /public/a b HTTP/1.1\r\nHost: @HOST@\r\nConnection: close\r\n\r\n",
            400,
        )
        .or_status(505),
        refused(
            "tab between method and target",
            "GET\t/public/f HTTP/1.1\r\nHost: @HOST@\r\nConnection: close\r\n\r\n",
            400,
        ),
        refused(
            "tab between target and version",
            "GET /public/f\tHTTP/1.1\r\nHost: @HOST@\r\nConnection: close\r\n\r\n",
            400,
        )
        .or_status(505),
        refused(
            "two spaces after the method",
            "GET  /public/f HTTP/1.1\r\nHost: @HOST@\r\nConnection: close\r\n\r\n",
            400,
        ),
        refused(
            "trailing space after the version",
            "GET /public/f HTTP/1.1 \r\nHost: @HOST@\r\nConnection: close\r\n\r\n",
            400,
        )
        .or_status(505),
        refused(
            "obs-fold header continuation",
            request("GET", "/public/f", "X-A: a\r\n b\r\n"),
            400,
        ),
        refused(
            "header line without a colon",
            request("GET", "/public/f", "X-A a\r\n"),
            400,
        ),
        refused(
            "space inside a header name",
            request("GET", "/public/f", "X A: b\r\n"),
            400,
        ),
        refused(
            "space before a header colon",
            request("GET", "/public/f", "X-A : b\r\n"),
            400,
        ),
        refused(
            "CR inside a header value",
            request("GET", "/public/f", "X-A: a\rb\r\n"),
            400,
        ),
        refused(
            "NUL inside a header value",
            request("GET", "/public/f", "X-A: a\0b\r\n"),
            400,
        ),
    ];
    run("framing", rows, |_| {}).await;
}

#[tokio::test]
async fn headers() {
    let strip = |name: &'static str, line: &'static str, absent: &'static str| {
        forwarded(
            name,
            request("GET", "/public/hd", line),
            "GET",
            "/public/hd",
        )
        .without(&[absent])
    };
    let rows = vec![
        strip(
            "X-Auth-User-Id",
            "X-Auth-User-Id: forged\r\n",
            "x-auth-user-id",
        ),
        strip(
            "x-auth-user-id in odd case",
            "x-AUTH-user-ID: forged\r\n",
            "x-auth-user-id",
        ),
        strip(
            "X.Auth.User.Id with dots",
            "X.Auth.User.Id: forged\r\n",
            "x.auth.user.id",
        ),
        strip(
            "X_Auth_Role with underscores",
            "X_Auth_Role: forged\r\n",
            "x_auth_role",
        ),
        strip("X-Auth-Role", "X-Auth-Role: forged\r\n", "x-auth-role"),
        strip(
            "X_AUTH_EMAIL in upper case with underscores",
            "X_AUTH_EMAIL: forged\r\n",
            "x_auth_email",
        ),
        strip(
            "X-Auth-Session-Id",
            "X-Auth-Session-Id: forged\r\n",
            "x-auth-session-id",
        ),
        strip(
            "X-Auth-Anything (the whole X-Auth-* family)",
            "X-Auth-Anything: forged\r\n",
            "x-auth-anything",
        ),
        strip("X-User-Id", "X-User-Id: forged\r\n", "x-user-id"),
        strip("X_User_Role", "X_User_Role: forged\r\n", "x_user_role"),
        strip(
            "X-Forwarded-User",
            "X-Forwarded-User: forged\r\n",
            "x-forwarded-user",
        ),
        strip(
            "X_Forwarded_User (oauth2-proxy CVE-2020-11053)",
            "X_Forwarded_User: forged\r\n",
            "x_forwarded_user",
        ),
        strip(
            "X.Forwarded.User with dots",
            "X.Forwarded.User: forged\r\n",
            "x.forwarded.user",
        ),
        strip(
            "X-Forwarded-Email",
            "X-Forwarded-Email: forged\r\n",
            "x-forwarded-email",
        ),
        strip(
            "X-Remote-User",
            "X-Remote-User: forged\r\n",
            "x-remote-user",
        ),
        strip("Remote-User", "Remote-User: forged\r\n", "remote-user"),
        strip(
            "Remote_User with an underscore",
            "Remote_User: forged\r\n",
            "remote_user",
        ),
        strip(
            "X-Original-URL",
            "X-Original-URL: /admin/forged\r\n",
            "x-original-url",
        ),
        strip(
            "X_Original_URL with underscores",
            "X_Original_URL: /admin/forged\r\n",
            "x_original_url",
        ),
        strip(
            "X-Rewrite-URL",
            "X-Rewrite-URL: /admin/forged\r\n",
            "x-rewrite-url",
        ),
        strip(
            "X-Original-URI",
            "X-Original-URI: /admin/forged\r\n",
            "x-original-uri",
        ),
        strip(
            "X-Forwarded-Prefix",
            "X-Forwarded-Prefix: /forged\r\n",
            "x-forwarded-prefix",
        ),
        strip(
            "X-Forwarded-Port",
            "X-Forwarded-Port: 1\r\nX-Forwarded-Port: forged\r\n",
            "x-forwarded-port",
        ),
        strip(
            "X-Forwarded-Server",
            "X-Forwarded-Server: forged\r\n",
            "x-forwarded-server",
        ),
        strip(
            "X-Forwarded-Uri",
            "X-Forwarded-Uri: /admin/forged\r\n",
            "x-forwarded-uri",
        ),
        strip(
            "X-Forwarded-Method",
            "X-Forwarded-Method: forged\r\n",
            "x-forwarded-method",
        ),
        strip(
            "Forwarded",
            "Forwarded: for=1.2.3.4;host=forged.example;proto=http\r\n",
            "forwarded",
        ),
        strip("X-Real-IP", "X-Real-IP: 1.2.3.4\r\nX-Real-IP: forged\r\n", "x-real-ip"),
        forwarded(
            "a client X-Forwarded-For is replaced",
            request("GET", "/public/hd", "X-Forwarded-For: 1.2.3.4, forged\r\n"),
            "GET",
            "/public/hd",
        ),
        forwarded(
            "a client X-Forwarded-Proto is replaced",
            request("GET", "/public/hd", "X-Forwarded-Proto: forged\r\n"),
            "GET",
            "/public/hd",
        ),
        forwarded(
            "a client X-Forwarded-Host is replaced",
            request("GET", "/public/hd", "X-Forwarded-Host: forged.example\r\n"),
            "GET",
            "/public/hd",
        )
        .carrying("x-forwarded-host", Some("@HOST@")),
        // Hop-by-hop tricks: a client naming a header in Connection must not delete what the
        // gateway adds (Traefik CVE-2024-45410) nor keep what it strips.
        forwarded(
            "Connection naming X-Forwarded-For",
            "GET /public/hd HTTP/1.1\r\nHost: @HOST@\r\nConnection: close, X-Forwarded-For\r\n\r\n",
            "GET",
            "/public/hd",
        ),
        forwarded(
            "Connection naming X-Forwarded-Proto and -Host",
            "GET /public/hd HTTP/1.1\r\nHost: @HOST@\r\nConnection: close, X-Forwarded-Proto, X-Forwarded-Host\r\n\r\n",
            "GET",
            "/public/hd",
        )
        .carrying("x-forwarded-host", Some("@HOST@")),
        forwarded(
            "Connection naming X-Auth-User-Id for a signed-in caller",
            format!(
                "GET /private/hd HTTP/1.1\r\nHost: @HOST@\r\n{AUTH}Connection: close, X-Auth-User-Id\r\n\r\n"
            ),
            "GET",
            "/private/hd",
        )
        .carrying("x-auth-user-id", Some("@USER@")),
        forwarded(
            "Connection naming Authorization for a signed-in caller",
            format!(
                "GET /private/hd HTTP/1.1\r\nHost: @HOST@\r\n{AUTH}Connection: close, Authorization\r\n\r\n"
            ),
            "GET",
            "/private/hd",
        )
        .carrying("x-auth-user-id", Some("@USER@")),
        refused(
            "Connection naming Authorization does not authenticate an anonymous caller",
            "GET /private/hd HTTP/1.1\r\nHost: @HOST@\r\nConnection: close, Authorization\r\n\r\n",
            401,
        ),
        forwarded(
            "Connection naming a forged X-Auth-User-Id",
            "GET /public/hd HTTP/1.1\r\nHost: @HOST@\r\nX-Auth-User-Id: forged\r\nConnection: close, X-Auth-User-Id\r\n\r\n",
            "GET",
            "/public/hd",
        )
        .without(&["x-auth-user-id"]),
        strip("Keep-Alive", "Keep-Alive: forged\r\n", "keep-alive"),
        strip(
            "Proxy-Connection",
            "Proxy-Connection: forged\r\n",
            "proxy-connection",
        ),
        strip(
            "Proxy-Authorization",
            "Proxy-Authorization: Basic forged\r\n",
            "proxy-authorization",
        ),
        strip(
            "Upgrade without Connection: upgrade",
            "Upgrade: forged\r\n",
            "upgrade",
        ),
        // Identity.
        forwarded(
            "a valid token on a public route identifies the caller",
            request("GET", "/public/hd", AUTH),
            "GET",
            "/public/hd",
        )
        .carrying("x-auth-user-id", Some("@USER@")),
        forwarded(
            "an invalid token on a public route is ignored",
            request("GET", "/public/hd", "Authorization: Bearer not-a-token\r\n"),
            "GET",
            "/public/hd",
        )
        .without(&["x-auth-user-id", "x-auth-role"]),
        forwarded(
            "a forged X-Auth-User-Id beside a valid token",
            request(
                "GET",
                "/private/hd",
                &format!("{AUTH}X-Auth-User-Id: forged\r\n"),
            ),
            "GET",
            "/private/hd",
        )
        .carrying("x-auth-user-id", Some("@USER@")),
        refused(
            "two Authorization headers on a protected route",
            request("GET", "/private/hd", &format!("{AUTH}{AUTH}")),
            400,
        ),
        refused(
            "two Authorization headers, valid then garbage",
            request(
                "GET",
                "/private/hd",
                &format!("{AUTH}authorization: Bearer forged\r\n"),
            ),
            400,
        ),
        refused(
            "two Authorization headers on a public route",
            request(
                "GET",
                "/public/hd",
                "Authorization: Bearer forged\r\nAuthorization: Basic forged\r\n",
            ),
            400,
        ),
        refused(
            "non-UTF-8 byte in Authorization",
            concat(&[
                b"GET /public/hd HTTP/1.1\r\nHost: @HOST@\r\n",
                b"Authorization: Bearer forged\xE9\r\nConnection: close\r\n\r\n",
            ]),
            400,
        ),
        refused(
            "non-UTF-8 byte in Cookie",
            concat(&[
                b"GET /public/hd HTTP/1.1\r\nHost: @HOST@\r\n",
                b"Cookie: session=forged\xE9\r\nConnection: close\r\n\r\n",
            ]),
            400,
        ),
        refused(
            "non-UTF-8 byte in Cookie on a protected route",
            concat(&[
                b"GET /private/hd HTTP/1.1\r\nHost: @HOST@\r\n",
                b"Cookie: a=\xC3\x28\r\nConnection: close\r\n\r\n",
            ]),
            400,
        ),
    ];
    run("headers", rows, |_| {}).await;
}

#[tokio::test]
async fn paths() {
    let get = |target: &str| request("GET", target, "");
    let signed_in = |target: &str| request("GET", target, AUTH);
    let rows = vec![
        refused("/admin/x anonymous", get("/admin/x"), 401),
        refused("/admin/x as user", signed_in("/admin/x"), 403),
        refused("/ADMIN/x anonymous", get("/ADMIN/x"), 401),
        refused(
            "/ADMIN/x as user (case-insensitive)",
            signed_in("/ADMIN/x"),
            403,
        ),
        refused("/Admin/X as user", signed_in("/Admin/X"), 403),
        refused("/aDmIn as user", signed_in("/aDmIn"), 403),
        refused(
            "/static/../admin/x anonymous",
            get("/static/../admin/x"),
            401,
        ),
        refused(
            "/static/../admin/x as user",
            signed_in("/static/../admin/x"),
            403,
        ),
        refused("//admin/x anonymous", get("//admin/x"), 401),
        refused("//admin/x as user", signed_in("//admin/x"), 403),
        refused("///admin//x as user", signed_in("///admin//x"), 403),
        refused(
            "/static/%2e%2e/admin/x anonymous",
            get("/static/%2e%2e/admin/x"),
            401,
        ),
        refused(
            "/static/%2E%2E/admin/x as user",
            signed_in("/static/%2E%2E/admin/x"),
            403,
        ),
        refused(
            "/static/.%2e/admin/x as user",
            signed_in("/static/.%2e/admin/x"),
            403,
        ),
        refused(
            "/public//..//admin/x as user (Envoy merge_slashes)",
            signed_in("/public//..//admin/x"),
            403,
        ),
        refused("/admin/x/.. as user", signed_in("/admin/x/.."), 403),
        refused("/static/..%2fadmin", get("/static/..%2fadmin"), 400),
        refused("/admin%2fx", get("/admin%2fx"), 400),
        refused("/admin%2Fx", get("/admin%2Fx"), 400),
        refused(
            "/static%2f..%2fadmin/x (Istio)",
            get("/static%2f..%2fadmin/x"),
            400,
        ),
        refused(
            "/public/..%2f..%2fadmin (Envoy)",
            get("/public/..%2f..%2fadmin"),
            400,
        ),
        refused("/static/%5c..%5cadmin", get("/static/%5c..%5cadmin"), 400),
        refused("raw backslash", get("/static/..\\admin/x"), 400),
        refused("/static/a%00.css", get("/static/a%00.css"), 400),
        refused("/static/%zz", get("/static/%zz"), 400),
        refused("truncated escape /static/%2", get("/static/%2"), 400),
        refused("IIS %u escape", get("/static/%u002e%u002e/admin"), 400),
        refused("encoded tab", get("/static/a%09.css"), 400),
        refused("encoded DEL", get("/static/a%7f.css"), 400),
        refused(
            "encoded CRLF",
            get("/static/a%0d%0aX-Injected:%20forged"),
            400,
        ),
        refused("raw control byte", get("/static/a\x01.css"), 400),
        refused(
            "raw non-ASCII bytes",
            concat(&[
                b"GET /static/caf\xC3\xA9.css HTTP/1.1\r\nHost: @HOST@\r\n",
                b"Connection: close\r\n\r\n",
            ]),
            400,
        ),
        refused("/admin;x=1", get("/admin;x=1"), 400),
        refused("/admin/x;jsessionid=1", get("/admin/x;jsessionid=1"), 400),
        refused(
            "/static/..;/admin/x (Tomcat)",
            get("/static/..;/admin/x"),
            400,
        ),
        refused("encoded semicolon", get("/static/a.css%3bx"), 400),
        refused("asterisk-form target on GET", get("*"), 400),
        // A trailing slash never changes the decision.
        refused("/admin/ anonymous", get("/admin/"), 401),
        refused("/admin/ as user", signed_in("/admin/"), 403),
        forwarded("/docs anonymous", get("/docs"), "GET", "/docs"),
        forwarded(
            "/docs/ anonymous (judged like /docs)",
            get("/docs/"),
            "GET",
            "/docs/",
        ),
        refused("/blocked as user", signed_in("/blocked"), 403),
        refused(
            "/blocked/ as user (judged like /blocked)",
            signed_in("/blocked/"),
            403,
        ),
        refused("/BLOCKED/ as user", signed_in("/BLOCKED/"), 403),
        // Public paths, forwarded exactly as judged.
        forwarded(
            "/static/a.css",
            get("/static/a.css"),
            "GET",
            "/static/a.css",
        ),
        forwarded(
            "/static/./a.css",
            get("/static/./a.css"),
            "GET",
            "/static/a.css",
        ),
        forwarded(
            "/static//a.css",
            get("/static//a.css"),
            "GET",
            "/static/a.css",
        ),
        forwarded(
            "/static/x/../a.css",
            get("/static/x/../a.css"),
            "GET",
            "/static/a.css",
        ),
        forwarded(
            "/static/%2E/a.css",
            get("/static/%2E/a.css"),
            "GET",
            "/static/a.css",
        ),
        forwarded(
            "/%73tatic/a.css (unreserved decoded before judging)",
            get("/%73tatic/a.css"),
            "GET",
            "/static/a.css",
        ),
        refused(
            "/static/../../a.css leaves the public area",
            get("/static/../../a.css"),
            401,
        ),
        forwarded(
            "/STATIC/a.css (case-insensitive match)",
            get("/STATIC/a.css"),
            "GET",
            "/STATIC/a.css",
        ),
        forwarded(
            "/PUBLIC/x (case-insensitive match)",
            get("/PUBLIC/x"),
            "GET",
            "/PUBLIC/x",
        ),
        forwarded(
            "/DOCS (case-insensitive exact match)",
            get("/DOCS"),
            "GET",
            "/DOCS",
        ),
        forwarded(
            "query with an encoded slash kept as sent",
            get("/static/a.css?x=%2F"),
            "GET",
            "/static/a.css?x=%2F",
        ),
        forwarded(
            "query with dot segments kept as sent",
            get("/static/a.css?x=../../admin"),
            "GET",
            "/static/a.css?x=../../admin",
        ),
        forwarded(
            "query with invalid escapes kept as sent",
            get("/static/a.css?q=%zz"),
            "GET",
            "/static/a.css?q=%zz",
        ),
        forwarded(
            "normalised path with its query",
            get("/static/./x/../a.css?v=1&w=2"),
            "GET",
            "/static/a.css?v=1&w=2",
        ),
        forwarded(
            "empty query kept",
            get("/static/a.css?"),
            "GET",
            "/static/a.css?",
        ),
    ];
    run("paths", rows, |_| {}).await;
}

#[tokio::test]
async fn encodings() {
    let get = |target: &str| request("GET", target, "");
    let signed_in = |target: &str| request("GET", target, AUTH);
    let rows = vec![
        refused(
            "fullwidth solidus U+FF0F",
            get("/static/..%ef%bc%8fadmin/x"),
            400,
        ),
        refused(
            "fullwidth solidus, upper-case hex",
            get("/static/..%EF%BC%8Fadmin/x"),
            400,
        ),
        refused(
            "fullwidth full stop U+FF0E",
            get("/static/%ef%bc%8e%ef%bc%8e/admin/x"),
            400,
        ),
        refused(
            "one dot leader U+2024",
            get("/static/%e2%80%a4%e2%80%a4/admin/x"),
            400,
        ),
        refused(
            "two dot leader U+2025",
            get("/static/%e2%80%a5/admin/x"),
            400,
        ),
        refused(
            "division slash U+2215",
            get("/static/..%e2%88%95admin/x"),
            400,
        ),
        refused(
            "fullwidth reverse solidus U+FF3C",
            get("/static/..%ef%bc%bcadmin/x"),
            400,
        ),
        refused(
            "small full stop U+FE52",
            get("/static/%ef%b9%92%ef%b9%92/admin/x"),
            400,
        ),
        refused(
            "small reverse solidus U+FE68",
            get("/static/..%ef%b9%a8admin/x"),
            400,
        ),
        refused("overlong slash %c0%af", get("/static/..%c0%afadmin"), 400),
        refused(
            "overlong dots %c0%ae",
            get("/static/%c0%ae%c0%ae/admin"),
            400,
        ),
        refused(
            "three-byte overlong slash",
            get("/static/..%e0%80%afadmin"),
            400,
        ),
        refused(
            "four-byte overlong slash",
            get("/static/..%f0%80%80%afadmin"),
            400,
        ),
        refused(
            "overlong backslash %c1%9c",
            get("/static/..%c1%9cadmin"),
            400,
        ),
        refused("encoded UTF-16 surrogate", get("/static/%ed%a0%80"), 400),
        refused("lone continuation byte", get("/static/%80.css"), 400),
        refused("truncated sequence", get("/static/%e2%82.css"), 400),
        refused("byte 0xFF", get("/static/%ff.css"), 400),
        forwarded(
            "double encoding stays encoded",
            get("/static/%252e%252e/admin"),
            "GET",
            "/static/%252e%252e/admin",
        ),
        forwarded(
            "valid UTF-8 escapes get upper-case hex",
            get("/static/caf%c3%a9.css"),
            "GET",
            "/static/caf%C3%A9.css",
        ),
        forwarded(
            "a euro sign",
            get("/static/%e2%82%ac.css"),
            "GET",
            "/static/%E2%82%AC.css",
        ),
        forwarded(
            "/static/%61.css decodes an unreserved letter",
            get("/static/%61.css"),
            "GET",
            "/static/a.css",
        ),
        forwarded(
            "encoded tilde, hyphen, underscore",
            get("/static/%7e%2d%5f.css"),
            "GET",
            "/static/~-_.css",
        ),
        refused("/%61dmin/x anonymous", get("/%61dmin/x"), 401),
        refused("/%61dmin/x as user", signed_in("/%61dmin/x"), 403),
        refused(
            "/%41DMIN/x as user (decoded, then case-insensitive)",
            signed_in("/%41DMIN/x"),
            403,
        ),
        refused(
            "/static/%2e%2e/%61dmin/x as user",
            signed_in("/static/%2e%2e/%61dmin/x"),
            403,
        ),
    ];
    run("encodings", rows, |_| {}).await;
}

#[tokio::test]
async fn h2() {
    let rows = vec![
        forwarded(
            "GET",
            http2("GET", "@HOST@", "/public/x", &[]),
            "GET",
            "/public/x",
        ),
        forwarded(
            "POST with a body",
            http2_body("POST", "/public/x", b"hello"),
            "POST",
            "/public/x",
        )
        .body(b"hello"),
        forwarded(
            ":authority in upper case with a trailing dot",
            http2("GET", "LOCALHOST.:@PORT@", "/public/x", &[]),
            "GET",
            "/public/x",
        ),
        refused(
            ":authority evil.example",
            http2("GET", "evil.example", "/public/x", &[]),
            421,
        ),
        refused(
            ":authority localhost.evil.example",
            http2("GET", "localhost.evil.example:@PORT@", "/public/x", &[]),
            421,
        ),
        refused(
            "lower-case custom method",
            http2("foo", "@HOST@", "/public/x", &[]),
            405,
        ),
        refused(
            "lower-case get",
            http2("get", "@HOST@", "/public/x", &[]),
            405,
        ),
        refused("TRACE", http2("TRACE", "@HOST@", "/public/x", &[]), 405),
        refused(
            ":path with %2f",
            http2("GET", "@HOST@", "/static/..%2fadmin", &[]),
            400,
        ),
        refused(
            ":path with a fullwidth solidus",
            http2("GET", "@HOST@", "/static/..%ef%bc%8fadmin", &[]),
            400,
        ),
        refused(
            "_method query parameter",
            http2("POST", "@HOST@", "/public/x?_method=DELETE", &[]),
            400,
        ),
        refused(
            "two authorization headers",
            http2(
                "GET",
                "@HOST@",
                "/private/x",
                &[
                    ("authorization", b"Bearer @TOKEN@".as_slice()),
                    ("authorization", b"Bearer forged".as_slice()),
                ],
            ),
            400,
        ),
        forwarded(
            "x_auth_role is stripped",
            http2(
                "GET",
                "@HOST@",
                "/public/x",
                &[("x_auth_role", b"forged".as_slice())],
            ),
            "GET",
            "/public/x",
        )
        .without(&["x_auth_role"]),
        forwarded(
            "x.auth.user.id is stripped",
            http2(
                "GET",
                "@HOST@",
                "/public/x",
                &[("x.auth.user.id", b"forged".as_slice())],
            ),
            "GET",
            "/public/x",
        )
        .without(&["x.auth.user.id"]),
        forwarded(
            "x-http-method-override is stripped",
            http2(
                "POST",
                "@HOST@",
                "/public/x",
                &[("x-http-method-override", b"DELETE".as_slice())],
            ),
            "POST",
            "/public/x",
        )
        .without(&["x-http-method-override"]),
        refused(
            "/ADMIN/x as user",
            http2(
                "GET",
                "@HOST@",
                "/ADMIN/x",
                &[("authorization", b"Bearer @TOKEN@".as_slice())],
            ),
            403,
        ),
    ];
    run("h2", rows, |_| {}).await;
}

// --- building rows ------------------------------------------------------------------------

/// One request and what the gateway must do with it.
struct Row {
    name: &'static str,
    request: Outgoing,
    /// The contract's status; a second one only where the contract leaves the choice open.
    status: Vec<u16>,
    /// `None`: the upstream must see nothing at all.
    forwarded: Option<Forwarded>,
    /// The request is followed by bytes that must never be read as a request: read until the
    /// gateway closes (or the row's time is up) instead of stopping after the first answer.
    linger: bool,
}

enum Outgoing {
    Raw(Vec<u8>),
    Http2(Http2),
}

struct Http2 {
    method: &'static str,
    authority: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static [u8])>,
    body: &'static [u8],
}

/// What the upstream must receive for a forwarded row.
struct Forwarded {
    method: &'static str,
    target: &'static str,
    body: &'static [u8],
    absent: Vec<&'static str>,
    /// A header that must arrive, with its value (`None`: any value).
    present: Vec<(&'static str, Option<&'static str>)>,
}

/// A request answered `status` that never reaches the upstream.
fn refused(name: &'static str, request: impl Into<Outgoing>, status: u16) -> Row {
    Row {
        name,
        request: request.into(),
        status: vec![status],
        forwarded: None,
        linger: false,
    }
}

/// A request answered 200 that reaches the upstream as `method target`, without a body.
fn forwarded(
    name: &'static str,
    request: impl Into<Outgoing>,
    method: &'static str,
    target: &'static str,
) -> Row {
    Row {
        name,
        request: request.into(),
        status: vec![200],
        forwarded: Some(Forwarded {
            method,
            target,
            body: b"",
            absent: Vec::new(),
            present: Vec::new(),
        }),
        linger: false,
    }
}

impl Row {
    fn body(mut self, body: &'static [u8]) -> Row {
        self.forwarded.as_mut().expect("a forwarded row").body = body;
        self
    }

    fn without(mut self, names: &[&'static str]) -> Row {
        let forwarded = self.forwarded.as_mut().expect("a forwarded row");
        forwarded.absent.extend_from_slice(names);
        self
    }

    fn carrying(mut self, name: &'static str, value: Option<&'static str>) -> Row {
        let forwarded = self.forwarded.as_mut().expect("a forwarded row");
        forwarded.present.push((name, value));
        self
    }

    fn or_status(mut self, status: u16) -> Row {
        self.status.push(status);
        self
    }

    fn smuggling(mut self) -> Row {
        self.linger = true;
        self
    }

    fn is_head(&self) -> bool {
        match &self.request {
            Outgoing::Raw(raw) => raw.starts_with(b"HEAD "),
            Outgoing::Http2(request) => request.method == "HEAD",
        }
    }
}

impl From<Vec<u8>> for Outgoing {
    fn from(raw: Vec<u8>) -> Outgoing {
        Outgoing::Raw(raw)
    }
}

impl From<String> for Outgoing {
    fn from(raw: String) -> Outgoing {
        Outgoing::Raw(raw.into_bytes())
    }
}

impl From<&str> for Outgoing {
    fn from(raw: &str) -> Outgoing {
        Outgoing::Raw(raw.as_bytes().to_vec())
    }
}

impl From<Http2> for Outgoing {
    fn from(request: Http2) -> Outgoing {
        Outgoing::Http2(request)
    }
}

/// `METHOD TARGET HTTP/1.1` with the served Host, `headers` (whole lines), and
/// `Connection: close`.
fn request(method: &str, target: &str, headers: &str) -> Vec<u8> {
    format!("{method} {target} HTTP/1.1\r\nHost: @HOST@\r\n{headers}Connection: close\r\n\r\n")
        .into_bytes()
}

fn with_body(method: &str, target: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {target} HTTP/1.1\r\nHost: @HOST@\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `GET /public/h` with `host` as the only Host header.
fn host(host: &str) -> Vec<u8> {
    format!("GET /public/h HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// A well-formed chunked POST to `/public/f`.
fn chunked(body: &str, coding: &str) -> Vec<u8> {
    format!(
        "POST /public/f HTTP/1.1\r\nHost: @HOST@\r\nTransfer-Encoding: {coding}\r\nConnection: close\r\n\r\n{body}"
    )
    .into_bytes()
}

/// A POST to `/public/f` with `headers` and `body`, followed in the same write by
/// [`SMUGGLED`]; keep-alive, so a gateway that does not close reads the smuggled request.
fn smuggle(headers: &str, body: &str) -> Vec<u8> {
    format!("POST /public/f HTTP/1.1\r\nHost: @HOST@\r\n{headers}\r\n{body}{SMUGGLED}").into_bytes()
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn http2(
    method: &'static str,
    authority: &'static str,
    path: &'static str,
    headers: &[(&'static str, &'static [u8])],
) -> Http2 {
    Http2 {
        method,
        authority,
        path,
        headers: headers.to_vec(),
        body: b"",
    }
}

fn http2_body(method: &'static str, path: &'static str, body: &'static [u8]) -> Http2 {
    Http2 {
        body,
        ..http2(method, "@HOST@", path, &[])
    }
}

// --- running rows -------------------------------------------------------------------------

/// What the templates' placeholders stand for on one gateway.
struct Context {
    port: u16,
    token: String,
    user_id: String,
}

impl Context {
    fn render(&self, template: &[u8]) -> Vec<u8> {
        let host = format!("localhost:{}", self.port);
        let port = self.port.to_string();
        let mut out = template.to_vec();
        for (placeholder, value) in [
            (&b"@HOST@"[..], host.as_bytes()),
            (&b"@PORT@"[..], port.as_bytes()),
            (&b"@TOKEN@"[..], self.token.as_bytes()),
            (&b"@USER@"[..], self.user_id.as_bytes()),
        ] {
            out = replace(&out, placeholder, value);
        }
        out
    }

    fn text(&self, template: &str) -> String {
        String::from_utf8(self.render(template.as_bytes())).unwrap()
    }
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while !rest.is_empty() {
        if rest.starts_with(from) {
            out.extend_from_slice(to);
            rest = &rest[from.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

/// Starts a gateway with the corpus policy, signs up a plain `user` for the rows that need a
/// token, runs every row, and fails once with every mismatch.
async fn run(
    category: &str,
    rows: Vec<Row>,
    configure: impl FnOnce(&mut portcullis::config::Config),
) {
    // A category thinner than this has stopped being a corpus; HTTP/2 only repeats a few.
    assert!(
        category == "h2" || rows.len() >= 20,
        "{category}: only {} rows",
        rows.len()
    );
    let (gateway, _) = TestGateway::with_policy(POLICY, configure).await;
    let (account, tokens) = gateway
        .account_with_role(&format!("corpus-{category}"), "user")
        .await;
    let context = Context {
        port: gateway.https.port(),
        token: tokens.access,
        user_id: account.id,
    };
    let mut answers = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        answers.push(match &row.request {
            Outgoing::Raw(raw) => {
                let raw = mark(&context.render(raw), index);
                exchange(&gateway, &raw, row.linger).await
            }
            Outgoing::Http2(request) => exchange_h2(&gateway, &context, request, index).await,
        });
    }
    let (mut seen, unmarked) = attribute(&gateway, rows.len()).await;

    let mut mismatches = Vec::new();
    for ((row, answer), seen) in rows.iter().zip(&answers).zip(&mut seen) {
        let seen = std::mem::take(seen);
        let problems = judge(&context, row, answer, &seen);
        if !problems.is_empty() {
            mismatches.push(Mismatch {
                row: row.name,
                expected: expected(row),
                got: got(answer, &seen),
                problems,
            });
        }
    }
    if !unmarked.is_empty() {
        mismatches.push(Mismatch {
            row: "(no row marker)",
            expected: "nothing".to_string(),
            got: describe_seen(&unmarked),
            problems: vec!["requests the upstream cannot charge to a row".to_string()],
        });
    }
    report(category, rows.len(), &mismatches);
}

/// Inserts the row marker as the first header line (after the request line, whatever that
/// looks like) and fills in `@ROW@` where a template asks for it.
fn mark(raw: &[u8], index: usize) -> Vec<u8> {
    let index = index.to_string();
    let raw = replace(raw, b"@ROW@", index.as_bytes());
    match find(&raw, b"\r\n") {
        Some(end) => {
            let line = format!("X-Corpus-Row: {index}\r\n");
            [&raw[..end + 2], line.as_bytes(), &raw[end + 2..]].concat()
        }
        None => raw,
    }
}

/// Waits until the upstream has been quiet for a moment, then sorts what it saw by row.
async fn attribute(gateway: &TestGateway, rows: usize) -> (Vec<Vec<Seen>>, Vec<Seen>) {
    loop {
        let count = gateway.upstream.seen_count();
        tokio::time::sleep(IDLE).await;
        if gateway.upstream.seen_count() == count {
            break;
        }
    }
    let mut by_row = vec![Vec::new(); rows];
    let mut unmarked = Vec::new();
    for seen in gateway.upstream.seen() {
        let index = seen
            .headers
            .get(ROW_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<usize>().ok())
            .filter(|index| *index < rows);
        match index {
            Some(index) => by_row[index].push(seen),
            None => unmarked.push(seen),
        }
    }
    (by_row, unmarked)
}

/// Writes `raw` on a fresh TLS connection and reads the answer: until the gateway closes, the
/// row's time is up, or (unless lingering) the connection has been silent for [`IDLE`] after
/// the head of an answer.
async fn exchange(gateway: &TestGateway, raw: &[u8], linger: bool) -> Answer {
    let mut stream = gateway.raw_tls().await;
    // A gateway may answer and close before it has read everything; what it read decides.
    let _ = stream.write_all(raw).await;
    let _ = stream.flush().await;
    let deadline = Instant::now() + WAIT;
    let mut received = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let until = if !linger && find(&received, b"\r\n\r\n").is_some() {
            deadline.min(Instant::now() + IDLE)
        } else {
            deadline
        };
        match tokio::time::timeout_at(until, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
    Answer::parse(&received)
}

async fn exchange_h2(
    gateway: &TestGateway,
    context: &Context,
    request: &Http2,
    index: usize,
) -> Answer {
    let mut client = gateway.h2().await;
    let uri = format!(
        "https://{}{}",
        context.text(request.authority),
        request.path
    );
    let mut builder = http::Request::builder()
        .method(Method::from_bytes(request.method.as_bytes()).unwrap())
        .uri(uri)
        .version(http::Version::HTTP_2)
        .header(ROW_HEADER, index);
    for (name, value) in &request.headers {
        builder = builder.header(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(&context.render(value)).unwrap(),
        );
    }
    let request = builder
        .body(full(Bytes::from_static(request.body)))
        .unwrap();
    let Ok(Ok(response)) = tokio::time::timeout(WAIT, client.try_send(request)).await else {
        return Answer::default();
    };
    let (parts, body) = response.into_parts();
    let body = match tokio::time::timeout(WAIT, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes().to_vec(),
        _ => Vec::new(),
    };
    Answer {
        status: Some(parts.status.as_u16()),
        responses: 1,
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    }
}

/// What came back on one connection.
#[derive(Debug, Default)]
struct Answer {
    /// The first response's status; `None` when nothing parseable came back.
    status: Option<u16>,
    /// How many status lines the connection carried.
    responses: usize,
    /// The first response's headers, names lower-cased.
    headers: Vec<(String, String)>,
    /// The first response's body, de-chunked.
    body: Vec<u8>,
}

impl Answer {
    fn parse(received: &[u8]) -> Answer {
        let text = String::from_utf8_lossy(received);
        let responses = text.split('\n').filter(|line| is_status_line(line)).count();
        let Some(end) = find(received, b"\r\n\r\n") else {
            return Answer {
                status: text.lines().next().and_then(status_of),
                responses,
                ..Answer::default()
            };
        };
        let head = String::from_utf8_lossy(&received[..end]);
        let mut lines = head.split("\r\n");
        let status = lines.next().and_then(status_of);
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
            .collect();
        let rest = &received[end + 4..];
        let header = |name: &str| {
            headers
                .iter()
                .find(|(known, _)| known == name)
                .map(|(_, value)| value.as_str())
        };
        let body = if header("transfer-encoding").is_some_and(|coding| coding.contains("chunked")) {
            dechunk(rest)
        } else if let Some(length) = header("content-length").and_then(|v| v.parse().ok()) {
            rest[..rest.len().min(length)].to_vec()
        } else {
            rest.to_vec()
        };
        Answer {
            status,
            responses,
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, value)| value.as_str())
    }
}

fn is_status_line(line: &str) -> bool {
    line.starts_with("HTTP/1.") && status_of(line).is_some()
}

fn status_of(line: &str) -> Option<u16> {
    let code = line.get(9..12)?;
    (line.as_bytes().get(8) == Some(&b' ') && code.bytes().all(|b| b.is_ascii_digit()))
        .then(|| code.parse().ok())
        .flatten()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(end) = find(rest, b"\r\n") {
        let size_text = String::from_utf8_lossy(&rest[..end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            break;
        };
        rest = &rest[end + 2..];
        if size == 0 || rest.len() < size {
            body.extend_from_slice(&rest[..rest.len().min(size)]);
            break;
        }
        body.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or(&[]);
    }
    body
}

/// Every way `answer` and `seen` differ from the row.
fn judge(context: &Context, row: &Row, answer: &Answer, seen: &[Seen]) -> Vec<String> {
    let mut problems = Vec::new();
    match answer.status {
        Some(status) if row.status.contains(&status) => {}
        Some(status) => problems.push(format!("status {status}")),
        None => problems.push("no answer".to_string()),
    }
    if answer.responses > 1 {
        problems.push(format!("{} responses on one connection", answer.responses));
    }
    match &row.forwarded {
        None => {
            if !seen.is_empty() {
                problems.push(format!("reached the upstream: {}", describe_seen(seen)));
            }
        }
        Some(expected) => match seen {
            [one] => problems.extend(compare_forwarded(context, expected, one)),
            _ => problems.push(format!(
                "the upstream saw {} requests: {}",
                seen.len(),
                describe_seen(seen)
            )),
        },
    }
    // Anything 4xx/5xx that never reached the upstream is the gateway's own answer.
    if seen.is_empty() && answer.status.is_some_and(|status| status >= 400) {
        if let Some(problem) = gateway_error_problem(answer, row.is_head()) {
            problems.push(problem);
        }
    }
    problems
}

fn compare_forwarded(context: &Context, expected: &Forwarded, seen: &Seen) -> Vec<String> {
    let mut problems = Vec::new();
    if seen.method != expected.method {
        problems.push(format!("forwarded method {:?}", seen.method));
    }
    let target = context.text(expected.target);
    if seen.target != target {
        problems.push(format!("forwarded target {:?}", seen.target));
    }
    if seen.body[..] != *expected.body {
        problems.push(format!(
            "forwarded body {:?}",
            String::from_utf8_lossy(&seen.body)
        ));
    }
    for name in &expected.absent {
        if let Some(value) = seen.headers.get(*name) {
            problems.push(format!("forwarded {name}: {value:?}"));
        }
    }
    for (name, value) in &expected.present {
        let values: Vec<_> = seen.headers.get_all(*name).iter().collect();
        match (values.as_slice(), value) {
            ([_], None) => {}
            ([one], Some(value)) if one.as_bytes() == context.text(value).as_bytes() => {}
            _ => problems.push(format!("forwarded {name}: {values:?}")),
        }
    }
    // The gateway's own forwarding headers, whatever the client sent or named in Connection.
    for (name, value) in [
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-proto", "https"),
    ] {
        let values: Vec<_> = seen.headers.get_all(name).iter().collect();
        if values.len() != 1 || values[0] != value {
            problems.push(format!("forwarded {name}: {values:?}"));
        }
    }
    for (name, value) in &seen.headers {
        if expected.absent.contains(&name.as_str()) {
            continue;
        }
        if String::from_utf8_lossy(value.as_bytes())
            .to_ascii_lowercase()
            .contains("forged")
        {
            problems.push(format!("forwarded {name}: {value:?}"));
        }
    }
    problems
}

/// The contract's error shape: `Content-Type: application/json` and `{"detail": "..."}`.
/// The answer to a HEAD request has the headers of that shape but no body.
fn gateway_error_problem(answer: &Answer, head: bool) -> Option<String> {
    let content_type = answer.header("content-type");
    if content_type != Some("application/json") {
        return Some(format!("error content-type {content_type:?}"));
    }
    if head {
        return None;
    }
    let detail = serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|body| body.get("detail").map(|detail| detail.is_string()));
    (detail != Some(true)).then(|| {
        format!(
            "error body without a detail: {:?}",
            String::from_utf8_lossy(&answer.body)
        )
    })
}

// --- reporting ----------------------------------------------------------------------------

struct Mismatch {
    row: &'static str,
    expected: String,
    got: String,
    problems: Vec<String>,
}

fn expected(row: &Row) -> String {
    let statuses: Vec<String> = row.status.iter().map(u16::to_string).collect();
    let statuses = statuses.join("/");
    match &row.forwarded {
        None => format!("{statuses}, not forwarded"),
        Some(forwarded) => format!("{statuses}, {} {}", forwarded.method, forwarded.target),
    }
}

fn got(answer: &Answer, seen: &[Seen]) -> String {
    let status = answer
        .status
        .map_or("no answer".to_string(), |status| status.to_string());
    if seen.is_empty() {
        format!("{status}, not forwarded")
    } else {
        format!("{status}, {}", describe_seen(seen))
    }
}

fn describe_seen(seen: &[Seen]) -> String {
    seen.iter()
        .map(|seen| {
            format!(
                "{} {} ({} body bytes)",
                shorten(&seen.method),
                shorten(&seen.target),
                seen.body.len()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Keeps a table row readable when a method or target is thousands of characters long.
fn shorten(text: &str) -> String {
    const MAX: usize = 60;
    if text.chars().count() <= MAX {
        return text.to_string();
    }
    let kept: String = text.chars().take(MAX).collect();
    format!("{kept}… ({} chars)", text.chars().count())
}

/// Prints the category's count (for the run's log) and fails with every mismatch in a table.
fn report(category: &str, rows: usize, mismatches: &[Mismatch]) {
    eprintln!(
        "corpus {category}: {rows} rows, {} mismatches",
        mismatches.len()
    );
    if mismatches.is_empty() {
        return;
    }
    let mut table = format!(
        "{} of {rows} {category} rows do not match the contract:\n",
        mismatches.len()
    );
    for mismatch in mismatches {
        table.push_str(&format!(
            "  {:<58} | expected {:<40} | got {:<40} | {}\n",
            mismatch.row,
            mismatch.expected,
            mismatch.got,
            mismatch.problems.join("; ")
        ));
    }
    panic!("{table}");
}
