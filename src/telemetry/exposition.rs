//! The few pieces of the Prometheus text exposition format (0.0.4) every `/metrics`
//! renderer shares: the `# HELP` and `# TYPE` lines, a single-value family, label escaping.
//!
//! Hand rendering rather than the `prometheus-client` crate (checked at 0.26): the metrics
//! are plain atomics bumped on the request path and written out once per scrape. The crate
//! writes OpenMetrics text (`# EOF`, a counter family named without its `_total`), not the
//! 0.0.4 format operators scrape and alert on today; it adds `dtoa` and a derive-macro crate
//! to the build (its `syn`, `parking_lot` and `itoa` are in the tree already), its own
//! registry and locks; and the bounded labels (`capped`, fixed enums) would still be ours.

use std::fmt::Write as _;

/// A label value as the exposition format wants it: `\\`, `"` and newlines escaped.
pub fn label_value(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// The `# HELP` and `# TYPE` lines that open the family `name` of type `kind`.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing into a String cannot fail, hence the ignored results.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A family with one unlabelled sample.
pub fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// The label value that `name` is counted under when `known` distinct values are kept
/// already, `present` says whether `name` is one of them, and at most `cap` are kept: past
/// the cap a new name becomes `(other)`, so a series count never grows without bound.
pub fn capped(name: &str, present: bool, known: usize, cap: usize) -> &str {
    if present || known < cap {
        name
    } else {
        "(other)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let cases = [
            ("plain", "plain"),
            ("a \"quoted\" name", "a \\\"quoted\\\" name"),
            ("back\\slash", "back\\\\slash"),
            ("two\nlines", "two\\nlines"),
            ("", ""),
        ];
        for (raw, escaped) in cases {
            assert_eq!(label_value(raw), escaped, "{raw:?}");
        }
    }

    #[test]
    fn labels_are_capped() {
        // (name, present, known, cap, counted as)
        let cases = [
            ("a", false, 0, 2, "a"),
            ("b", false, 1, 2, "b"),
            ("c", false, 2, 2, "(other)"),
            ("a", true, 2, 2, "a"),
            ("a", true, 5, 2, "a"),
        ];
        for (name, present, known, cap, expected) in cases {
            assert_eq!(
                capped(name, present, known, cap),
                expected,
                "{name} {known}"
            );
        }
    }

    #[test]
    fn a_single_value_family() {
        let mut out = String::new();
        single(&mut out, "portcullis_x_total", "counter", "Xs.", 3);
        assert_eq!(
            out,
            "# HELP portcullis_x_total Xs.\n# TYPE portcullis_x_total counter\nportcullis_x_total 3\n"
        );
    }
}
