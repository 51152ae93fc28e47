//! Request path canonicalisation: turning the path of a request target into the one canonical
//! path that is both matched by the policy and forwarded upstream, or refusing it as ambiguous.
//!
//! The policy and the upstream must see the same string, otherwise a rule can be bypassed by a
//! spelling that the two read differently (`/admin/../x`, `/%61dmin`, `/admin;x`). So the
//! gateway rewrites only what has a single meaning everywhere (escapes of unreserved
//! characters, repeated slashes, dot segments) and rejects anything that parsers are known to
//! disagree on instead of guessing.

use std::borrow::Cow;
use std::fmt;

/// Why a request path was refused. Every variant is answered with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    InvalidPercentEncoding,
    EncodedSlash,
    EncodedBackslash,
    EncodedNul,
    Backslash,
    ControlCharacter,
    InvalidUtf8,
    PathParameter,
    ForbiddenCharacter,
    LookalikeSeparator,
    /// Refused only where the gateway judges a path it does not forward itself
    /// ([`canonical_target`]).
    NotCanonical,
}

impl PathError {
    /// Client-facing text. It names the rule that was broken but never echoes the path, so it
    /// is safe to put in a response body.
    pub fn message(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "Invalid request path: must start with '/'",
            PathError::InvalidPercentEncoding => "Invalid request path: invalid percent-encoding",
            PathError::EncodedSlash => "Invalid request path: encoded slash",
            PathError::EncodedBackslash => "Invalid request path: encoded backslash",
            PathError::EncodedNul => "Invalid request path: encoded NUL",
            PathError::Backslash => "Invalid request path: backslash",
            PathError::ControlCharacter => "Invalid request path: control character",
            PathError::InvalidUtf8 => "Invalid request path: invalid UTF-8",
            PathError::PathParameter => "Invalid request path: path parameters are not allowed",
            PathError::ForbiddenCharacter => "Invalid request path: forbidden character",
            PathError::LookalikeSeparator => {
                "Invalid request path: encoded character that normalises to '/', '\\' or '.'"
            }
            PathError::NotCanonical => {
                "Invalid request path: dot segments, repeated slashes or escaped unreserved characters"
            }
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for PathError {}

/// Normalises an origin-form path (no query). `allow_path_parameters` permits ';'.
pub fn normalize_path(raw: &str, allow_path_parameters: bool) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }

    // One pass validates every byte and notes whether anything needs rewriting, so that the
    // common, already canonical path costs one scan and one copy.
    let mut has_escapes = false;
    let mut has_odd_segments = false;
    let mut segment_start = 1;
    let mut i = 1;
    while i < bytes.len() {
        i += match bytes[i] {
            b'%' => {
                check_decoded_byte(decode_escape(bytes, i)?, allow_path_parameters)?;
                has_escapes = true;
                3
            }
            b'/' => {
                let segment = &bytes[segment_start..i];
                has_odd_segments |= segment.is_empty() || is_dot_segment(segment);
                segment_start = i + 1;
                1
            }
            byte => {
                check_plain_byte(byte, allow_path_parameters)?;
                1
            }
        };
    }
    // An empty last segment is a trailing slash, which is kept as it is.
    has_odd_segments |= is_dot_segment(&bytes[segment_start..]);

    if !has_escapes && !has_odd_segments {
        return Ok(raw.to_owned());
    }
    // Escapes are settled first so that `%2e%2e` is seen as the `..` it decodes to upstream.
    let path = if has_escapes {
        Cow::Owned(canonicalize_escapes(raw)?)
    } else {
        Cow::Borrowed(raw)
    };
    Ok(merge_slashes_and_remove_dot_segments(&path))
}

/// Splits off the query at the first '?', normalises the path, and appends '?' + query
/// byte-for-byte unchanged (an empty query "?" is kept as "?").
pub fn normalize_target(
    path_and_query: &str,
    allow_path_parameters: bool,
) -> Result<String, PathError> {
    // The query belongs to the upstream application; the policy matches paths only, so the
    // query is passed on exactly as the client sent it.
    match path_and_query.split_once('?') {
        None => normalize_path(path_and_query, allow_path_parameters),
        Some((path, query)) => {
            let mut target = normalize_path(path, allow_path_parameters)?;
            target.reserve(query.len() + 1);
            target.push('?');
            target.push_str(query);
            Ok(target)
        }
    }
}

/// [`normalize_target`] for a target the gateway judges but does not forward itself (the
/// original request of a forward-auth, which the proxy forwards as it holds it): the policy
/// must judge the very path the upstream gets, so a path that normalisation would rewrite
/// (dot segments, repeated slashes, escapes of unreserved characters) is refused rather than
/// judged under another name. Only the case of an escape's hex digits may differ: `%c3%a9`
/// and `%C3%A9` are read alike everywhere.
pub fn canonical_target(
    path_and_query: &str,
    allow_path_parameters: bool,
) -> Result<String, PathError> {
    let normalized = normalize_target(path_and_query, allow_path_parameters)?;
    // Every rewrite but the hex digits' case shortens the path, so a target of the same
    // length differs from its normal form in those digits at most.
    if normalized.len() != path_and_query.len() {
        return Err(PathError::NotCanonical);
    }
    Ok(normalized)
}

fn is_dot_segment(segment: &[u8]) -> bool {
    segment == b"." || segment == b".."
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

pub(super) fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Decodes the escape whose '%' is at `at`.
fn decode_escape(bytes: &[u8], at: usize) -> Result<u8, PathError> {
    let high = bytes.get(at + 1).copied().and_then(hex_value);
    let low = bytes.get(at + 2).copied().and_then(hex_value);
    match (high, low) {
        (Some(high), Some(low)) => Ok((high << 4) | low),
        _ => Err(PathError::InvalidPercentEncoding),
    }
}

/// Rules for what an escape decodes to. Bytes of 0x80 and above are checked afterwards as a
/// whole, because only the full sequence tells whether they form valid UTF-8.
fn check_decoded_byte(byte: u8, allow_path_parameters: bool) -> Result<(), PathError> {
    match byte {
        // Some upstreams decode before routing, which would turn these into a separator,
        // a Windows separator or a C string terminator behind the policy's back.
        b'/' => Err(PathError::EncodedSlash),
        b'\\' => Err(PathError::EncodedBackslash),
        0x00 => Err(PathError::EncodedNul),
        0x01..=0x1F | 0x7F => Err(PathError::ControlCharacter),
        b';' if !allow_path_parameters => Err(PathError::PathParameter),
        _ => Ok(()),
    }
}

/// Rules for a byte that appears literally (not '%' and not '/').
fn check_plain_byte(byte: u8, allow_path_parameters: bool) -> Result<(), PathError> {
    match byte {
        b'\\' => Err(PathError::Backslash),
        0x00..=0x1F | 0x7F => Err(PathError::ControlCharacter),
        // Upstreams that strip `;...` before routing would route `/admin;x` as `/admin`
        // while the policy saw a different path.
        b';' if !allow_path_parameters => Err(PathError::PathParameter),
        _ if is_unreserved(byte) => Ok(()),
        // RFC 3986 sub-delims and the rest of pchar.
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => Ok(()),
        b':' | b'@' => Ok(()),
        // Not pchar, but sent unescaped by common clients and read the same way by everyone.
        b'|' | b'^' | b'[' | b']' => Ok(()),
        // Everything else, including raw non-ASCII (its encoding would be a guess) and '?'
        // (a path with a literal '?' would gain a query when forwarded).
        _ => Err(PathError::ForbiddenCharacter),
    }
}

/// Decodes escapes of unreserved characters and upper-cases the hex digits of the others.
/// Expects a path whose bytes have already been checked.
fn canonicalize_escapes(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    // Literal bytes are ASCII by now, so only the escapes can make this invalid UTF-8.
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(char::from(bytes[i]));
            decoded.push(bytes[i]);
            i += 1;
            continue;
        }
        let byte = decode_escape(bytes, i)?;
        decoded.push(byte);
        if is_unreserved(byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(bytes[i + 1].to_ascii_uppercase()));
            out.push(char::from(bytes[i + 2].to_ascii_uppercase()));
        }
        i += 3;
    }
    // `from_utf8` also refuses overlong forms and surrogates, which some decoders accept and
    // turn into '/' or '.'.
    let decoded = std::str::from_utf8(&decoded).map_err(|_| PathError::InvalidUtf8)?;
    if decoded
        .chars()
        .any(|c| !c.is_ascii() && LOOKALIKE_SEPARATORS.binary_search(&c).is_ok())
    {
        return Err(PathError::LookalikeSeparator);
    }
    Ok(out)
}

/// Characters that an upstream normalising the path (Unicode NFKC, as Python, .NET and some
/// routers do, or a "best fit" code page) can turn into `/`, `\` or `.`, and so into a path
/// the policy never judged: every code point whose NFKC form contains one of the three
/// (generated with Python's `unicodedata`), plus the slash and dot look-alikes that NFKC keeps
/// but other mappings fold (division and fraction slash, big solidi, set minus, ideographic
/// full stops). Sorted, for the binary search.
const LOOKALIKE_SEPARATORS: &[char] = &[
    '\u{2024}',
    '\u{2025}',
    '\u{2026}',
    '\u{2044}',
    '\u{2100}',
    '\u{2101}',
    '\u{2105}',
    '\u{2106}',
    '\u{2215}',
    '\u{2216}',
    '\u{2488}',
    '\u{2489}',
    '\u{248A}',
    '\u{248B}',
    '\u{248C}',
    '\u{248D}',
    '\u{248E}',
    '\u{248F}',
    '\u{2490}',
    '\u{2491}',
    '\u{2492}',
    '\u{2493}',
    '\u{2494}',
    '\u{2495}',
    '\u{2496}',
    '\u{2497}',
    '\u{2498}',
    '\u{2499}',
    '\u{249A}',
    '\u{249B}',
    '\u{29F8}',
    '\u{29F9}',
    '\u{3002}',
    '\u{33C2}',
    '\u{33C7}',
    '\u{33D8}',
    '\u{FE19}',
    '\u{FE30}',
    '\u{FE52}',
    '\u{FE68}',
    '\u{FF0E}',
    '\u{FF0F}',
    '\u{FF3C}',
    '\u{FF61}',
    '\u{1F100}',
];

/// Drops empty segments, then applies RFC 3986 §5.2.4 with `..` clamped at the root.
/// Expects a path starting with '/'.
fn merge_slashes_and_remove_dot_segments(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    // Whether the result names a directory: the last segment was empty, `.` or `..`.
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = true;
        match segment {
            "" | "." => {}
            ".." => {
                let parent = out.rfind('/').unwrap_or(0);
                out.truncate(parent);
            }
            _ => {
                out.push('/');
                out.push_str(segment);
                trailing_slash = false;
            }
        }
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathError::*;

    const STRICT: bool = false;
    const PARAMS: bool = true;

    /// (input, allow_path_parameters, expected)
    const PATH_CASES: &[(&str, bool, Result<&str, PathError>)] = &[
        // Already canonical paths come back unchanged.
        ("/", STRICT, Ok("/")),
        // Encoded characters that NFKC (or a best-fit mapping) turns into a separator or dot.
        (
            "/static/..%ef%bc%8fadmin/x",
            STRICT,
            Err(LookalikeSeparator),
        ),
        (
            "/static/%EF%BC%8E%EF%BC%8E/admin",
            STRICT,
            Err(LookalikeSeparator),
        ),
        ("/a/%e2%80%a4%e2%80%a4/b", STRICT, Err(LookalikeSeparator)),
        ("/a%e2%88%95b", STRICT, Err(LookalikeSeparator)),
        ("/a%ef%bc%bcb", STRICT, Err(LookalikeSeparator)),
        ("/a%e2%81%84b", STRICT, Err(LookalikeSeparator)),
        ("/%f0%9f%84%80", STRICT, Err(LookalikeSeparator)),
        // Other non-ASCII characters are fine.
        ("/caf%C3%A9", STRICT, Ok("/caf%C3%A9")),
        ("/%e2%80%a5x", STRICT, Err(LookalikeSeparator)),
        ("/a/b", STRICT, Ok("/a/b")),
        ("/a/b/", STRICT, Ok("/a/b/")),
        ("/Admin/Users", STRICT, Ok("/Admin/Users")),
        ("/a..b/", STRICT, Ok("/a..b/")),
        ("/.well-known/x", STRICT, Ok("/.well-known/x")),
        ("/a/.b/..c/...", STRICT, Ok("/a/.b/..c/...")),
        ("/a:b@c!$&'()*+,=", STRICT, Ok("/a:b@c!$&'()*+,=")),
        ("/a|b^c[d]", STRICT, Ok("/a|b^c[d]")),
        // Repeated slashes merge.
        ("//", STRICT, Ok("/")),
        ("//a///b", STRICT, Ok("/a/b")),
        ("/a//", STRICT, Ok("/a/")),
        // Dot segments are removed, clamped at the root, and keep the trailing slash.
        ("/./a", STRICT, Ok("/a")),
        ("/../a", STRICT, Ok("/a")),
        ("/a/./b", STRICT, Ok("/a/b")),
        ("/a/b/../c", STRICT, Ok("/a/c")),
        ("/a/.", STRICT, Ok("/a/")),
        ("/a/..", STRICT, Ok("/")),
        ("/a/b/..", STRICT, Ok("/a/")),
        ("/a/b/../", STRICT, Ok("/a/")),
        ("/.", STRICT, Ok("/")),
        ("/..", STRICT, Ok("/")),
        ("/../../..", STRICT, Ok("/")),
        ("/a/../../b", STRICT, Ok("/b")),
        ("/a//../b", STRICT, Ok("/b")),
        // Encoded dots are dots.
        ("/a/%2e/b", STRICT, Ok("/a/b")),
        ("/a/b/%2E%2e/c", STRICT, Ok("/a/c")),
        ("/a/b/.%2e/c", STRICT, Ok("/a/c")),
        ("/a/%2e%2E", STRICT, Ok("/")),
        ("/%2e%2e/%2e%2e/etc", STRICT, Ok("/etc")),
        // Escapes of unreserved characters decode; others keep their place with upper-case hex.
        ("/%41", STRICT, Ok("/A")),
        ("/%61dmin", STRICT, Ok("/admin")),
        ("/%7E", STRICT, Ok("/~")),
        ("/%7e%2D%5f%30", STRICT, Ok("/~-_0")),
        ("/%20", STRICT, Ok("/%20")),
        ("/a%2cb", STRICT, Ok("/a%2Cb")),
        ("/%3f%23", STRICT, Ok("/%3F%23")),
        ("/caf%C3%A9", STRICT, Ok("/caf%C3%A9")),
        ("/caf%c3%a9", STRICT, Ok("/caf%C3%A9")),
        (
            "/%E2%82%AC/%F0%9F%98%80",
            STRICT,
            Ok("/%E2%82%AC/%F0%9F%98%80"),
        ),
        // Encoded separators, NUL and control characters.
        ("/a%2fb", STRICT, Err(EncodedSlash)),
        ("/a%2Fb", STRICT, Err(EncodedSlash)),
        ("/a%5cb", STRICT, Err(EncodedBackslash)),
        ("/a%5Cb", STRICT, Err(EncodedBackslash)),
        ("/a%00b", STRICT, Err(EncodedNul)),
        ("/a%0a", STRICT, Err(ControlCharacter)),
        ("/a%0D%0A", STRICT, Err(ControlCharacter)),
        ("/a%7f", STRICT, Err(ControlCharacter)),
        // Broken percent-encoding.
        ("/%zz", STRICT, Err(InvalidPercentEncoding)),
        ("/%4", STRICT, Err(InvalidPercentEncoding)),
        ("/%4g", STRICT, Err(InvalidPercentEncoding)),
        ("/a%", STRICT, Err(InvalidPercentEncoding)),
        ("/%%41", STRICT, Err(InvalidPercentEncoding)),
        // Escapes must decode to valid UTF-8.
        ("/%C0%AF", STRICT, Err(InvalidUtf8)),
        ("/%E0%80%AF", STRICT, Err(InvalidUtf8)),
        ("/%80", STRICT, Err(InvalidUtf8)),
        ("/%E2%82", STRICT, Err(InvalidUtf8)),
        ("/%E2%82/x", STRICT, Err(InvalidUtf8)),
        ("/%C3a", STRICT, Err(InvalidUtf8)),
        ("/%ED%A0%80", STRICT, Err(InvalidUtf8)),
        ("/%F4%90%80%80", STRICT, Err(InvalidUtf8)),
        // Raw characters.
        ("/a\\b", STRICT, Err(Backslash)),
        ("/a\0b", STRICT, Err(ControlCharacter)),
        ("/a\tb", STRICT, Err(ControlCharacter)),
        ("/a\nb", STRICT, Err(ControlCharacter)),
        ("/a\x7fb", STRICT, Err(ControlCharacter)),
        ("/café", STRICT, Err(ForbiddenCharacter)),
        ("/a b", STRICT, Err(ForbiddenCharacter)),
        ("/a\"b", STRICT, Err(ForbiddenCharacter)),
        ("/<a>", STRICT, Err(ForbiddenCharacter)),
        ("/a`b", STRICT, Err(ForbiddenCharacter)),
        ("/{a}", STRICT, Err(ForbiddenCharacter)),
        ("/a#b", STRICT, Err(ForbiddenCharacter)),
        ("/a?b", STRICT, Err(ForbiddenCharacter)),
        // Path parameters only by configuration, encoded or not.
        ("/a;b", STRICT, Err(PathParameter)),
        ("/a%3bb", STRICT, Err(PathParameter)),
        ("/a;b", PARAMS, Ok("/a;b")),
        ("/a%3bb", PARAMS, Ok("/a%3Bb")),
        ("/a;x=1/../b", PARAMS, Ok("/b")),
        // The first error in the path wins.
        ("/a%2f%zz", STRICT, Err(EncodedSlash)),
        ("/a\\%2f", STRICT, Err(Backslash)),
        // Not origin form.
        ("a/b", STRICT, Err(NotAbsolute)),
        ("", STRICT, Err(NotAbsolute)),
        ("*", STRICT, Err(NotAbsolute)),
        ("%2Fa", STRICT, Err(NotAbsolute)),
    ];

    /// (input, allow_path_parameters, expected)
    const TARGET_CASES: &[(&str, bool, Result<&str, PathError>)] = &[
        ("/a", STRICT, Ok("/a")),
        ("/a?b=1", STRICT, Ok("/a?b=1")),
        ("/a?", STRICT, Ok("/a?")),
        ("/?", STRICT, Ok("/?")),
        ("/a/../b?x=../..//y", STRICT, Ok("/b?x=../..//y")),
        ("//x?//y", STRICT, Ok("/x?//y")),
        ("/%7e?%7e%2f%2e%2e", STRICT, Ok("/~?%7e%2f%2e%2e")),
        ("/a?x;y", STRICT, Ok("/a?x;y")),
        ("/a?b?c", STRICT, Ok("/a?b?c")),
        ("/a?q=é \\", STRICT, Ok("/a?q=é \\")),
        ("/a;b?c", STRICT, Err(PathParameter)),
        ("/a;b?c;d", PARAMS, Ok("/a;b?c;d")),
        ("/a%2f?x", STRICT, Err(EncodedSlash)),
        ("a?x", STRICT, Err(NotAbsolute)),
        ("?x", STRICT, Err(NotAbsolute)),
    ];

    fn check(
        name: &str,
        cases: &[(&str, bool, Result<&str, PathError>)],
        normalize: fn(&str, bool) -> Result<String, PathError>,
    ) {
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|&(input, allow, expected)| {
                let actual = normalize(input, allow);
                (actual.as_deref().map_err(|e| *e) != expected).then(|| {
                    format!("{input:?} (allow_path_parameters={allow}): got {actual:?}, want {expected:?}")
                })
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{name} failed:\n{}",
            failures.join("\n")
        );
    }

    fn check_idempotent(
        name: &str,
        cases: &[(&str, bool, Result<&str, PathError>)],
        normalize: fn(&str, bool) -> Result<String, PathError>,
    ) {
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|&(input, allow, _)| {
                let output = normalize(input, allow).ok()?;
                let again = normalize(&output, allow);
                (again.as_deref() != Ok(output.as_str()))
                    .then(|| format!("{input:?} -> {output:?} -> {again:?}"))
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{name} not idempotent:\n{}",
            failures.join("\n")
        );
    }

    #[test]
    fn lookalike_separators_are_sorted() {
        assert!(LOOKALIKE_SEPARATORS
            .windows(2)
            .all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn normalize_path_cases() {
        check("normalize_path", PATH_CASES, normalize_path);
    }

    #[test]
    fn normalize_target_cases() {
        check("normalize_target", TARGET_CASES, normalize_target);
    }

    /// What forward-auth accepts of an original request's target: what normalisation would
    /// leave as it is, and nothing it would rewrite.
    #[test]
    fn canonical_target_cases() {
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/admin/users?x=1", Ok("/admin/users?x=1")),
            ("/ADMIN/Users", Ok("/ADMIN/Users")),
            ("/a/b/", Ok("/a/b/")),
            ("/caf%C3%A9", Ok("/caf%C3%A9")),
            ("/caf%c3%a9", Ok("/caf%C3%A9")),
            ("/a?../..//%2e%2e", Ok("/a?../..//%2e%2e")),
            ("/public/../admin", Err(NotCanonical)),
            ("/public/%2e%2e/admin", Err(NotCanonical)),
            ("/public/%2E%2E/admin", Err(NotCanonical)),
            ("/./admin", Err(NotCanonical)),
            ("//admin", Err(NotCanonical)),
            ("/admin//x", Err(NotCanonical)),
            ("/%61dmin", Err(NotCanonical)),
            ("/admin/.", Err(NotCanonical)),
            ("/admin%2fx", Err(EncodedSlash)),
            ("/admin;x", Err(PathParameter)),
            ("admin", Err(NotAbsolute)),
            ("/a%zz", Err(InvalidPercentEncoding)),
        ];
        for (input, expected) in cases {
            assert_eq!(
                canonical_target(input, STRICT)
                    .as_deref()
                    .map_err(|error| *error),
                *expected,
                "{input}"
            );
        }
    }

    #[test]
    fn normalizing_an_output_again_changes_nothing() {
        check_idempotent("normalize_path", PATH_CASES, normalize_path);
        check_idempotent("normalize_target", TARGET_CASES, normalize_target);
    }

    #[test]
    fn messages_are_client_facing() {
        let all = [
            NotAbsolute,
            InvalidPercentEncoding,
            EncodedSlash,
            EncodedBackslash,
            EncodedNul,
            Backslash,
            ControlCharacter,
            InvalidUtf8,
            PathParameter,
            ForbiddenCharacter,
            LookalikeSeparator,
            NotCanonical,
        ];
        for error in all {
            assert!(
                error.message().starts_with("Invalid request path"),
                "{error:?}"
            );
            assert_eq!(error.to_string(), error.message());
        }
        assert_eq!(
            EncodedSlash.message(),
            "Invalid request path: encoded slash"
        );
    }
}
