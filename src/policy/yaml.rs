//! The YAML layer: text into a small tree whose every node knows its line and column, so each
//! later complaint can point at the place it is about. The only file that uses the YAML
//! parser. A syntax error stops here: nothing after it can be located reliably.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Tag};

use super::{Diagnostic, Severity};

/// Far deeper than any policy needs; the cap keeps building, walking and dropping the tree
/// shallow whatever the input.
const MAX_DEPTH: usize = 64;
/// Nodes that aliases may copy in all. Without a cap a few lines of nested aliases (the
/// "billion laughs") expand into gigabytes.
const MAX_ALIAS_NODES: usize = 100_000;

/// One YAML node and where it starts (1-based line and column, in characters).
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub line: usize,
    pub column: usize,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    Scalar {
        text: String,
        kind: Kind,
    },
    Seq(Vec<Node>),
    /// Entries in file order, duplicates kept so the reader can point at them.
    Map(Vec<(Node, Node)>),
}

/// What a scalar is under the YAML 1.2 core schema: `1` is a number, `"1"` and `one` are
/// strings, `~` and an empty value are null.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Null,
    Bool,
    Int,
    Float,
    Str,
}

impl Node {
    /// The text of a string scalar (not a number, boolean or null).
    pub(crate) fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar {
                text,
                kind: Kind::Str,
            } => Some(text),
            _ => None,
        }
    }

    /// The text of any non-null scalar, as written.
    pub(crate) fn as_text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar {
                kind: Kind::Null, ..
            } => None,
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// A non-negative integer scalar (decimal, `0x` or `0o`), None for anything else or for
    /// one too large for a u64.
    pub(crate) fn as_u64(&self) -> Option<u64> {
        match &self.value {
            Value::Scalar {
                text,
                kind: Kind::Int,
            } => {
                let digits = text.strip_prefix('+').unwrap_or(text);
                if let Some(hex) = digits.strip_prefix("0x") {
                    u64::from_str_radix(hex, 16).ok()
                } else if let Some(octal) = digits.strip_prefix("0o") {
                    u64::from_str_radix(octal, 8).ok()
                } else {
                    digits.parse().ok()
                }
            }
            _ => None,
        }
    }

    pub(crate) fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(items) => Some(items),
            _ => None,
        }
    }

    pub(crate) fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// How a node reads in a message: its text for a scalar, its shape otherwise.
    pub(crate) fn describe(&self) -> String {
        match &self.value {
            Value::Scalar {
                kind: Kind::Null, ..
            } => "nothing (null)".to_string(),
            Value::Scalar { text, .. } => format!("`{}`", shorten(text)),
            Value::Seq(_) => "a list".to_string(),
            Value::Map(_) => "a mapping".to_string(),
        }
    }

    /// This node and everything under it, for the alias budget.
    fn count(&self) -> usize {
        match &self.value {
            Value::Scalar { .. } => 1,
            Value::Seq(items) => 1 + items.iter().map(Node::count).sum::<usize>(),
            Value::Map(entries) => {
                1 + entries
                    .iter()
                    .map(|(k, v)| k.count() + v.count())
                    .sum::<usize>()
            }
        }
    }
}

/// Keeps messages readable when a value is a whole paragraph.
pub(crate) fn shorten(text: &str) -> String {
    const MAX: usize = 60;
    if text.chars().count() <= MAX {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(MAX).collect();
        short.push('…');
        short
    }
}

/// A collection still being read.
enum Frame {
    Seq {
        line: usize,
        column: usize,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        line: usize,
        column: usize,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

fn error(line: usize, column: usize, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        line,
        column,
        message: message.into(),
        severity: Severity::Error,
    }
}

/// Reads one YAML document into a tree. The parser is driven event by event with an explicit
/// stack, so no input recurses deeply.
pub(crate) fn load(text: &str) -> Result<Node, Diagnostic> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut alias_nodes = 0usize;
    let mut root: Option<Node> = None;
    let mut documents = 0usize;

    while let Some(next) = parser.next_event() {
        let (event, span) = match next {
            Ok(pair) => pair,
            Err(e) => {
                let at = e.marker();
                return Err(error(
                    at.line().max(1),
                    at.col() + 1,
                    format!("invalid YAML: {}", e.info()),
                ));
            }
        };
        let (line, column) = (span.start.line().max(1), span.start.col() + 1);
        let (node, anchor) = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(error(
                        line,
                        column,
                        "a policy file holds one YAML document; this starts a second",
                    ));
                }
                continue;
            }
            Event::Scalar(text, style, anchor, tag) => {
                let kind = resolve(&text, style, tag.as_deref());
                let value = Value::Scalar {
                    text: text.into_owned(),
                    kind,
                };
                (
                    Node {
                        line,
                        column,
                        value,
                    },
                    anchor,
                )
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(error(
                        line,
                        column,
                        format!("nesting deeper than {MAX_DEPTH} levels"),
                    ));
                }
                stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq {
                        line,
                        column,
                        anchor,
                        items: Vec::new(),
                    }
                } else {
                    Frame::Map {
                        line,
                        column,
                        anchor,
                        entries: Vec::new(),
                        key: None,
                    }
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq {
                    line,
                    column,
                    anchor,
                    items,
                }) => (
                    Node {
                        line,
                        column,
                        value: Value::Seq(items),
                    },
                    anchor,
                ),
                Some(Frame::Map {
                    line,
                    column,
                    anchor,
                    entries,
                    ..
                }) => (
                    Node {
                        line,
                        column,
                        value: Value::Map(entries),
                    },
                    anchor,
                ),
                None => return Err(error(line, column, "invalid YAML: unbalanced collection")),
            },
            Event::Alias(id) => {
                let Some(target) = anchors.get(&id) else {
                    return Err(error(
                        line,
                        column,
                        "alias to an anchor that is not defined before it",
                    ));
                };
                alias_nodes = alias_nodes.saturating_add(target.count());
                if alias_nodes > MAX_ALIAS_NODES {
                    return Err(error(
                        line,
                        column,
                        format!("aliases expand to more than {MAX_ALIAS_NODES} nodes"),
                    ));
                }
                let mut copy = target.clone();
                // Point at the alias: that is where the reader sees the value used.
                copy.line = line;
                copy.column = column;
                (copy, 0)
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => continue,
        };
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
    root.ok_or_else(|| {
        error(1, 1, "the policy is empty: expected a mapping with `version`, `roles`, `permissions` and `rules`")
    })
}

/// The YAML 1.2 core schema's reading of a scalar. Only plain (unquoted) scalars can be
/// anything but a string, and an explicit `!!str` makes one a string.
fn resolve(text: &str, style: ScalarStyle, tag: Option<&Tag>) -> Kind {
    if let Some(tag) = tag {
        if tag.is_yaml_core_schema() && tag.suffix == "str" {
            return Kind::Str;
        }
    }
    if style != ScalarStyle::Plain {
        return Kind::Str;
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Kind::Null,
        "true" | "True" | "TRUE" | "false" | "False" | "FALSE" => return Kind::Bool,
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF"
        | ".nan" | ".NaN" | ".NAN" => return Kind::Float,
        _ => {}
    }
    let all = |s: &str, f: fn(char) -> bool| !s.is_empty() && s.chars().all(f);
    if let Some(hex) = text.strip_prefix("0x") {
        if all(hex, |c| c.is_ascii_hexdigit()) {
            return Kind::Int;
        }
    }
    if let Some(octal) = text.strip_prefix("0o") {
        if all(octal, |c| ('0'..='7').contains(&c)) {
            return Kind::Int;
        }
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if all(unsigned, |c| c.is_ascii_digit()) {
        return Kind::Int;
    }
    if is_float(unsigned) {
        return Kind::Float;
    }
    Kind::Str
}

/// `[0-9]*(\.[0-9]*)?([eE][-+]?[0-9]+)?` with at least one digit before the exponent.
fn is_float(text: &str) -> bool {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((w, f)) => (w, f),
        None => (mantissa, ""),
    };
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if whole.len() + fraction.len() == 0 || !digits(whole) || !digits(fraction) {
        return false;
    }
    match exponent {
        None => true,
        Some(e) => {
            let e = e.strip_prefix(['-', '+']).unwrap_or(e);
            !e.is_empty() && digits(e)
        }
    }
}
