//! PURE: where a sign-in may send the browser afterwards (contract 7, `rd`). Only a plain
//! path on the gateway's own origin is followed; everything else falls back to `/`.
//!
//! The rule is an allow-list, not a list of known tricks: the value must start with exactly
//! one `/`, hold only visible ASCII that needs no quoting in a URL, and its path part must
//! have no escape that decodes to a separator, a dot, a control character or a percent sign,
//! and no `.`/`..` segment. So what the browser resolves is exactly the path that was
//! checked: no reading of `\`, `%2F`, a tab or a look-alike slash can turn it into another
//! host.

/// Where to go when `rd` is absent or refused.
pub const DEFAULT_REDIRECT: &str = "/";

/// Longer values are refused: no sign-in needs to carry more, and a huge `rd` would only
/// bloat every page and header it passes through.
const MAX_REDIRECT_BYTES: usize = 2048;

/// The validated target of `rd` (already percent-decoded once, as a query or form value is):
/// the value itself when it is a plain path on this origin, else [`DEFAULT_REDIRECT`].
pub fn safe_redirect(rd: Option<&str>) -> &str {
    match rd {
        Some(target) if is_own_path(target) => target,
        _ => DEFAULT_REDIRECT,
    }
}

/// Whether `target` is a plain path (with an optional query and fragment) on this origin.
pub fn is_own_path(target: &str) -> bool {
    if target.is_empty() || target.len() > MAX_REDIRECT_BYTES {
        return false;
    }
    // One leading slash, not two (`//host`), not a slash and a backslash (`/\host`).
    let Some(rest) = target.strip_prefix('/') else {
        return false;
    };
    if rest.starts_with(['/', '\\']) {
        return false;
    }
    if !target.bytes().all(allowed_byte) {
        return false;
    }
    let path_end = target.find(['?', '#']).unwrap_or(target.len());
    let (path, tail) = target.split_at(path_end);
    path_is_plain(path) && escapes_are_plain(tail, false)
}

/// Visible ASCII a URL carries as it is. Refused: controls, space, non-ASCII (look-alike
/// slashes such as `∕` or `／` among them), `\`, and the characters a URL must quote.
fn allowed_byte(byte: u8) -> bool {
    byte.is_ascii_graphic()
        && !matches!(
            byte,
            b'\\' | b'"' | b'<' | b'>' | b'`' | b'{' | b'}' | b'|' | b'^'
        )
}

/// The path: no `@` (nothing that reads as userinfo), no `.` or `..` segment, and no escape
/// that decodes to anything but a character that could have been written as it is.
fn path_is_plain(path: &str) -> bool {
    if path.contains('@') {
        return false;
    }
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return false;
    }
    escapes_are_plain(path, true)
}

/// Every `%` starts a two-hex-digit escape. In the path the escape may not decode to `/`,
/// `\`, `.`, `%`, a control, a space or a non-ASCII byte; in the query and fragment only
/// controls are refused, since there they cannot change where the browser goes.
fn escapes_are_plain(text: &str, in_path: bool) -> bool {
    let bytes = text.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let Some(decoded) = bytes
                .get(index + 1..index + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            else {
                return false;
            };
            let refused = decoded.is_ascii_control()
                || (in_path
                    && (matches!(decoded, b'/' | b'\\' | b'.' | b'%' | b' ')
                        || !decoded.is_ascii()));
            if refused {
                return false;
            }
            index += 3;
        } else {
            index += 1;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (rd as the handler receives it, where the browser is sent)
    #[rustfmt::skip]
    const REDIRECT_CASES: &[(&str, &str)] = &[
        // Plain paths on this origin are followed as they are.
        ("/", "/"),
        ("/app", "/app"),
        ("/app?x=1", "/app?x=1"),
        ("/app/page?x=1&y=2#top", "/app/page?x=1&y=2#top"),
        ("/a/b/c/", "/a/b/c/"),
        ("/caf%C3%A9", "/"),
        ("/search?q=%2F%2Fevil", "/search?q=%2F%2Fevil"),
        ("/search?q=100%25", "/search?q=100%25"),
        ("/file.txt", "/file.txt"),
        ("/a-b_c~d", "/a-b_c~d"),
        ("/app?next=https://evil.example", "/app?next=https://evil.example"),
        // Other origins and schemes.
        ("//evil", "/"),
        ("//evil.example/path", "/"),
        ("///evil", "/"),
        ("https://evil.example", "/"),
        ("http://evil.example/", "/"),
        ("https:evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("JavaScript:alert(1)", "/"),
        ("data:text/html,x", "/"),
        ("evil.example", "/"),
        ("app", "/"),
        ("", "/"),
        // Backslashes, which browsers read as slashes.
        ("/\\evil", "/"),
        ("\\\\evil", "/"),
        ("\\/evil", "/"),
        ("/app\\..\\..\\evil", "/"),
        // Percent-encoded separators, dots and controls in the path.
        ("/%2F%2Fevil", "/"),
        ("/%2f%2fevil", "/"),
        ("/%5Cevil", "/"),
        ("/%5cevil", "/"),
        ("/%09/evil", "/"),
        ("/%0A/evil", "/"),
        ("/%0D%0ASet-Cookie:x=1", "/"),
        ("/%00", "/"),
        ("/%7F", "/"),
        ("/%2E%2E/evil", "/"),
        ("/%252F%252Fevil", "/"),
        ("/%", "/"),
        ("/%zz", "/"),
        ("/%2", "/"),
        ("/app?x=%0A", "/"),
        // Raw whitespace and controls anywhere.
        ("/\t/evil", "/"),
        ("/\n/evil", "/"),
        ("/\r\n/evil", "/"),
        ("\t//evil", "/"),
        (" /x", "/"),
        ("/x ", "/"),
        ("/a b", "/"),
        ("/\u{0}", "/"),
        // Userinfo.
        ("/@evil", "/"),
        ("//user@evil", "/"),
        ("/app@evil.example", "/"),
        // Unicode look-alike slashes and full-width characters.
        ("/\u{2215}evil", "/"),
        ("/\u{FF0F}evil", "/"),
        ("\u{FF0F}\u{FF0F}evil", "/"),
        ("/\u{2044}evil", "/"),
        ("/\u{29F8}evil", "/"),
        ("/café", "/"),
        // Dot segments.
        ("/../..", "/"),
        ("/..", "/"),
        ("/./app", "/"),
        ("/app/../../evil", "/"),
        // Characters a URL must quote.
        ("/<script>", "/"),
        ("/\"x", "/"),
        ("/a|b", "/"),
    ];

    #[test]
    fn redirect_table() {
        for (rd, expected) in REDIRECT_CASES {
            assert_eq!(safe_redirect(Some(rd)), *expected, "rd = {rd:?}");
        }
    }

    #[test]
    fn absent_and_very_long_values_fall_back() {
        assert_eq!(safe_redirect(None), "/");
        let long = format!("/{}", "a".repeat(MAX_REDIRECT_BYTES));
        assert_eq!(safe_redirect(Some(&long)), "/");
        let longest = format!("/{}", "a".repeat(MAX_REDIRECT_BYTES - 1));
        assert_eq!(safe_redirect(Some(&longest)), longest);
    }
}
