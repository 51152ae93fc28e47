//! Path patterns and the segment trie every rule's patterns are compiled into. A request path
//! is walked once down the trie, so its cost follows the path's length and the few branches
//! that fit it, not the number of rules. Also answers, for the shadowing warning, which
//! earlier patterns match everything a later one does.

use std::collections::HashMap;

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Matches exactly this text.
    Literal(String),
    /// `*` (None) or `{name}` (captured): exactly one non-empty segment.
    One(Option<String>),
    /// `**`, last only: any number of segments, none included.
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    pub text: String,
    pub segments: Vec<Segment>,
}

impl Pattern {
    /// Parses `/a/*/{id}/**`; the error says what is wrong in words.
    pub(crate) fn parse(text: &str) -> Result<Pattern, String> {
        let shown = super::yaml::shorten(text);
        let Some(body) = text.strip_prefix('/') else {
            return Err(format!("path pattern `{shown}` must start with `/`"));
        };
        let mut segments = Vec::new();
        if body.is_empty() {
            // The root `/` alone: the path with no segments.
            return Ok(Pattern {
                text: text.to_string(),
                segments,
            });
        }
        let parts: Vec<&str> = body.split('/').collect();
        let last = parts.len() - 1;
        for (index, part) in parts.iter().enumerate() {
            let segment = match *part {
                "" if index == last => {
                    return Err(format!(
                        "path pattern `{shown}` ends with `/`; only the root pattern `/` may (write `{}` or `{}/**`)",
                        text.trim_end_matches('/'),
                        text.trim_end_matches('/')
                    ))
                }
                "" => return Err(format!("path pattern `{shown}` has an empty segment (`//`)")),
                "**" if index != last => {
                    return Err(format!("`**` must be the last segment, in `{shown}`"))
                }
                "**" => Segment::Rest,
                "*" => Segment::One(None),
                part if part.contains('*') => {
                    return Err(format!(
                        "`*` and `**` must be a whole segment, not part of `{}`, in `{shown}`",
                        super::yaml::shorten(part)
                    ))
                }
                part if part.starts_with('{') && part.ends_with('}') && part.len() >= 2 => {
                    let name = &part[1..part.len() - 1];
                    if !is_capture_name(name) {
                        return Err(format!(
                            "bad capture name `{}` in `{shown}`: use letters, digits and `_`, not starting with a digit",
                            super::yaml::shorten(part)
                        ));
                    }
                    if segments.iter().any(|s| matches!(s, Segment::One(Some(n)) if n == name)) {
                        return Err(format!("capture `{{{name}}}` appears twice in `{shown}`"));
                    }
                    Segment::One(Some(name.to_string()))
                }
                part if part.contains(['{', '}']) => {
                    return Err(format!(
                        "a capture must be a whole segment like `{{id}}`, not `{}`, in `{shown}`",
                        super::yaml::shorten(part)
                    ))
                }
                part => Segment::Literal(part.to_string()),
            };
            segments.push(segment);
        }
        Ok(Pattern {
            text: text.to_string(),
            segments,
        })
    }

    pub(crate) fn captures(&self, name: &str) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::One(Some(n)) if n == name))
    }
}

fn is_capture_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) if first.is_ascii_alphabetic() || first == '_' => {
            chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        _ => false,
    }
}

/// Where a pattern ends in the trie.
#[derive(Debug)]
pub(crate) struct Terminal {
    pub rule: usize,
    /// (segment index, name) of each `{name}` in the pattern: the captured values are the
    /// request's segments at those indexes, so the walk need not record anything.
    pub captures: Box<[(usize, Box<str>)]>,
}

impl Terminal {
    /// The request segment a capture took, if this pattern has that capture.
    pub(crate) fn capture<'p>(&self, name: &str, segments: &[&'p str]) -> Option<&'p str> {
        let (index, _) = self.captures.iter().find(|(_, n)| &**n == name)?;
        segments.get(*index).copied()
    }
}

#[derive(Debug, Default)]
struct TrieNode {
    literals: HashMap<Box<str>, usize>,
    /// The one child for `*` and every `{name}` at this depth; names live in the terminals.
    one: Option<usize>,
    /// Patterns that end exactly here, in rule order.
    ends: Vec<Terminal>,
    /// Patterns whose `**` starts here, in rule order: they match whatever follows.
    rest: Vec<Terminal>,
    /// The lowest rule index anywhere at or below this node, so a walk that already holds a
    /// lower one skips the whole branch.
    min_rule: usize,
}

/// Every rule's patterns in one segment trie (nodes in an arena; a child's id is always
/// greater than its parent's).
#[derive(Debug)]
pub(crate) struct Trie {
    nodes: Vec<TrieNode>,
}

impl Trie {
    /// Builds the trie from (rule index, pattern) pairs given in rule order.
    /// `fold_case`: literal segments are stored in lower case, for a lookup with the path's
    /// segments in lower case (case-insensitive matching, contract 6.3).
    pub(crate) fn build<'p>(
        patterns: impl IntoIterator<Item = (usize, &'p Pattern)>,
        fold_case: bool,
    ) -> Trie {
        let mut nodes = vec![TrieNode::default()];
        let key = |text: &str| -> Box<str> {
            if fold_case {
                text.to_ascii_lowercase().into()
            } else {
                Box::from(text)
            }
        };
        for (rule, pattern) in patterns {
            let mut at = 0;
            let mut captures = Vec::new();
            let mut rest = false;
            for (index, segment) in pattern.segments.iter().enumerate() {
                let next = match segment {
                    Segment::Rest => {
                        rest = true;
                        break;
                    }
                    Segment::Literal(text) => nodes[at].literals.get(&key(text)).copied(),
                    Segment::One(name) => {
                        if let Some(name) = name {
                            captures.push((index, Box::from(name.as_str())));
                        }
                        nodes[at].one
                    }
                };
                at = match next {
                    Some(child) => child,
                    None => {
                        let child = nodes.len();
                        nodes.push(TrieNode::default());
                        match segment {
                            Segment::Literal(text) => {
                                nodes[at].literals.insert(key(text), child);
                            }
                            _ => nodes[at].one = Some(child),
                        }
                        child
                    }
                };
            }
            let terminal = Terminal {
                rule,
                captures: captures.into_boxed_slice(),
            };
            if rest {
                nodes[at].rest.push(terminal);
            } else {
                nodes[at].ends.push(terminal);
            }
        }
        // Children come after their parents, so one backward pass settles every minimum.
        for id in (0..nodes.len()).rev() {
            let node = &nodes[id];
            let mut min = usize::MAX;
            for t in node.ends.first().into_iter().chain(node.rest.first()) {
                min = min.min(t.rule);
            }
            for child in node.literals.values().copied().chain(node.one) {
                min = min.min(nodes[child].min_rule);
            }
            nodes[id].min_rule = min;
        }
        Trie { nodes }
    }

    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The terminal of the lowest-index rule that matches `segments` and that `accept` lets
    /// through (the method and host filters). Each trie node is reached at most once, by
    /// the one way down that fits the path; `visits` counts the nodes looked at.
    pub(crate) fn find(
        &self,
        segments: &[&str],
        mut accept: impl FnMut(usize) -> bool,
        visits: &mut usize,
    ) -> Option<&Terminal> {
        let mut best: Option<&Terminal> = None;
        let mut best_rule = usize::MAX;
        let mut pending = vec![(0usize, 0usize)];
        while let Some((id, depth)) = pending.pop() {
            *visits += 1;
            let Some(node) = self.nodes.get(id) else {
                continue;
            };
            if node.min_rule >= best_rule {
                continue;
            }
            let here = if depth == segments.len() {
                &node.ends[..]
            } else {
                &[][..]
            };
            for terminals in [&node.rest[..], here] {
                for terminal in terminals {
                    if terminal.rule >= best_rule {
                        break;
                    }
                    if accept(terminal.rule) {
                        best_rule = terminal.rule;
                        best = Some(terminal);
                        break;
                    }
                }
            }
            let Some(segment) = segments.get(depth) else {
                continue;
            };
            if let Some(&child) = node.literals.get(*segment) {
                pending.push((child, depth + 1));
            }
            // `*` and captures never take an empty segment (a trailing `/` in the path).
            if let (Some(child), false) = (node.one, segment.is_empty()) {
                pending.push((child, depth + 1));
            }
        }
        best
    }

    /// Rules below `before` with a pattern that matches every path `pattern` matches,
    /// ascending, without repeats. Walks the trie with the pattern in place of a path: a
    /// literal may go down a literal or a `*` branch, a `*` only down a `*` branch, and a
    /// `**` is covered only by another `**` at the same depth or above.
    pub(crate) fn subsumers(&self, pattern: &Pattern, before: usize) -> Vec<usize> {
        let mut found = Vec::new();
        let mut pending = vec![(0usize, 0usize)];
        while let Some((id, depth)) = pending.pop() {
            let Some(node) = self.nodes.get(id) else {
                continue;
            };
            let mut take = |terminals: &[Terminal]| {
                found.extend(
                    terminals
                        .iter()
                        .map(|t| t.rule)
                        .take_while(|&rule| rule < before),
                );
            };
            take(&node.rest);
            match pattern.segments.get(depth) {
                None => take(&node.ends),
                Some(Segment::Rest) => {}
                Some(Segment::Literal(text)) => {
                    if let Some(&child) = node.literals.get(text.as_str()) {
                        pending.push((child, depth + 1));
                    }
                    if let Some(child) = node.one {
                        pending.push((child, depth + 1));
                    }
                }
                Some(Segment::One(_)) => {
                    if let Some(child) = node.one {
                        pending.push((child, depth + 1));
                    }
                }
            }
        }
        found.sort_unstable();
        found.dedup();
        found
    }
}
