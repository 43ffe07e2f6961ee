//! From TOML errors and violation paths to spans in the source, with friendly messages.

use std::ops::Range;

use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{Reporter, Secondary, SourceError};
use crate::suggest;
use crate::units::HELP_SEP;
use crate::validate::{FieldPath, Seg, Target, Violation};

/// The parsed TOML document with spans, used to locate keys and values by path.
pub(crate) struct Doc<'a> {
    root: Option<Spanned<DeTable<'a>>>,
}

enum Node<'d, 'a> {
    Table(&'d DeTable<'a>),
    Array(&'d [Spanned<DeValue<'a>>]),
    Leaf,
}

fn node<'d, 'a>(v: &'d DeValue<'a>) -> Node<'d, 'a> {
    match v {
        DeValue::Table(t) => Node::Table(t),
        DeValue::Array(a) => Node::Array(a),
        _ => Node::Leaf,
    }
}

impl<'a> Doc<'a> {
    /// Parses `source` (which must already be valid TOML; otherwise lookups find nothing).
    pub fn parse(source: &'a str) -> Self {
        Doc {
            root: DeTable::parse(source).ok(),
        }
    }

    /// Span of the key or value at `path`; when the path does not fully resolve (e.g. `.path` of a
    /// route written as a plain string), the deepest value found; the start of the file if none.
    pub fn span(&self, path: &FieldPath, target: Target) -> Range<usize> {
        let Some(root) = &self.root else {
            return 0..0;
        };
        let mut best = 0..0;
        let mut cur = Node::Table(root.get_ref());
        for (i, seg) in path.0.iter().enumerate() {
            let last = i + 1 == path.0.len();
            let next = match (seg, &cur) {
                (Seg::Key(k), Node::Table(t)) => {
                    let Some((key, value)) = t.iter().find(|(key, _)| key.get_ref() == k) else {
                        break;
                    };
                    if last && target == Target::Key {
                        return key.span();
                    }
                    value
                }
                (Seg::Index(n), Node::Array(a)) => match a.get(*n) {
                    Some(v) => v,
                    None => break,
                },
                _ => break,
            };
            best = next.span();
            cur = node(next.get_ref());
        }
        best
    }

    /// The path of the key (or value) whose span is exactly `span`.
    pub fn path_at(&self, span: &Range<usize>) -> Option<(FieldPath, Target)> {
        fn walk(
            n: Node<'_, '_>,
            span: &Range<usize>,
            path: &mut Vec<Seg>,
        ) -> Option<(FieldPath, Target)> {
            match n {
                Node::Table(t) => {
                    for (k, v) in t.iter() {
                        path.push(Seg::Key(k.get_ref().to_string()));
                        if &k.span() == span {
                            return Some((FieldPath(path.clone()), Target::Key));
                        }
                        if &v.span() == span {
                            return Some((FieldPath(path.clone()), Target::Value));
                        }
                        if let Some(found) = walk(node(v.get_ref()), span, path) {
                            return Some(found);
                        }
                        path.pop();
                    }
                    None
                }
                Node::Array(a) => {
                    for (i, v) in a.iter().enumerate() {
                        path.push(Seg::Index(i));
                        if &v.span() == span {
                            return Some((FieldPath(path.clone()), Target::Value));
                        }
                        if let Some(found) = walk(node(v.get_ref()), span, path) {
                            return Some(found);
                        }
                        path.pop();
                    }
                    None
                }
                Node::Leaf => None,
            }
        }
        let root = self.root.as_ref()?;
        walk(Node::Table(root.get_ref()), span, &mut Vec::new())
    }
}

/// The words inside backticks in `s`, in order.
fn ticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// How a table is named in messages.
fn table_name(path: &FieldPath) -> String {
    if path.0.is_empty() {
        "at the top level".to_string()
    } else if path.0.iter().all(|s| matches!(s, Seg::Key(_))) {
        format!("in [{path}]")
    } else {
        format!("in `{path}`")
    }
}

/// The section name (`""`, `"intent"`, …) used by [`suggest::SECTIONS`].
fn section_of(path: &FieldPath) -> String {
    path.to_string()
}

/// Rewrites serde's type names into TOML words.
fn toml_words(s: &str) -> String {
    let s = s.trim();
    if s.starts_with("struct ") || s == "a map" || s == "map" {
        return if s.starts_with('a') || s.starts_with("struct") {
            "a table".to_string()
        } else {
            "table".to_string()
        };
    }
    match s {
        "u32" | "u64" | "u16" | "u8" => "a whole number (0 or more)".to_string(),
        "i64" | "i32" => "a whole number".to_string(),
        "a sequence" => "an array".to_string(),
        "sequence" => "array".to_string(),
        "path string" => "a path string".to_string(),
        _ => s.replace("floating point", "float"),
    }
}

/// Help for a missing required key.
fn missing_help(key: &str, table: &FieldPath) -> String {
    let example = match (table.to_string().as_str(), key) {
        ("", "name") => "name = \"my-app\"",
        ("", "component") => "component = \"app.wasm\"",
        ("component", "path") => "path = \"target/wasm32-wasip2/release/app.wasm\"",
        (_, "max") => "replicas = { min = 0, max = 5 }",
        (_, "from") => "latency = { from = \"ap-southeast\", p99 = \"30ms\" }",
        (_, "p99") => "latency = { from = \"ap-southeast\", p99 = \"30ms\" }",
        (_, "path") => "{ path = \"/api\" }",
        _ => "",
    };
    if example.is_empty() {
        format!("add `{key}`")
    } else {
        format!("add `{example}`")
    }
}

/// Converts a TOML parse or deserialization error into a located diagnostic.
pub(crate) fn toml_error(
    report: &Reporter<'_>,
    doc: &Doc<'_>,
    err: &toml::de::Error,
) -> SourceError {
    let raw = err.message().trim();
    let (raw, custom_help) = match raw.split_once(HELP_SEP) {
        Some((m, h)) => (m, Some(h.to_string())),
        None => (raw, None),
    };
    let span = err.span().unwrap_or(0..0);
    let found = doc.path_at(&span);

    // Syntax errors: the document did not parse at all.
    if doc.root.is_none() {
        let mut message = raw.to_string();
        if let Some(first) = message.get(..1) {
            let lower = first.to_ascii_lowercase();
            message.replace_range(..1, &lower);
        }
        let text = report.source.get(span.clone()).unwrap_or_default().trim();
        let (message, help) =
            if raw.contains("string values must be quoted") {
                (message, format!("quote text values: \"{text}\""))
            } else if raw.contains("duplicate key") && !text.is_empty() {
                (
                format!("duplicate key `{}`", text.trim_matches(['[', ']', '"', '\''])),
                "each key may appear only once per table (a `[table]` header also defines its key)"
                    .to_string(),
            )
            } else {
                (
                    message,
                    "the Aetherfile is TOML; see https://toml.io for its syntax".to_string(),
                )
            };
        let span = if span.is_empty() {
            span.start..span.start + 1
        } else {
            span
        };
        return report.error(
            span,
            format!("invalid TOML: {message}"),
            "here".to_string(),
            Some(help),
            None,
        );
    }

    if let Some(rest) = raw.strip_prefix("unknown field `") {
        let unknown = rest.split('`').next().unwrap_or_default();
        let expected: Vec<&str> = ticked(raw).into_iter().skip(1).collect();
        let table = match &found {
            Some((p, _)) => FieldPath(p.0[..p.0.len().saturating_sub(1)].to_vec()),
            None => FieldPath::default(),
        };
        let mut help = match suggest::closest(unknown, &expected) {
            Some(s) => format!("did you mean `{s}`?"),
            None if expected.is_empty() => "this table takes no keys".to_string(),
            None => format!(
                "expected one of: {}",
                expected
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let elsewhere = suggest::other_sections(unknown, &section_of(&table));
        if !elsewhere.is_empty() {
            help = format!(
                "`{unknown}` is a key of {}; move it there. ({help})",
                elsewhere.join(" and ")
            );
        }
        return report.error(
            span,
            format!("unknown key `{unknown}` {}", table_name(&table)),
            "unknown key".to_string(),
            Some(help),
            None,
        );
    }

    if let Some(rest) = raw.strip_prefix("missing field `") {
        let key = rest.split('`').next().unwrap_or_default();
        let table = match &found {
            Some((p, _)) => p.clone(),
            None => FieldPath::default(),
        };
        // The span covers the whole table; point at its start rather than all of it.
        let point = if table.0.is_empty() {
            0..0
        } else {
            let s = doc.span(&table, Target::Key);
            s.start..s.end
        };
        return report.error(
            point,
            format!("missing required key `{key}` {}", table_name(&table)),
            format!("`{key}` is required"),
            Some(missing_help(key, &table)),
            None,
        );
    }

    let path = found.as_ref().map(|(p, _)| p.clone());
    let field = |p: &Option<FieldPath>| match p {
        Some(p) if !p.0.is_empty() => format!(" for `{p}`"),
        _ => String::new(),
    };
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = raw.strip_prefix(prefix) {
            let (unexpected, expected) = rest
                .split_once(", expected ")
                .unwrap_or((rest, "something else"));
            let expected = toml_words(expected);
            let unexpected = toml_words(unexpected);
            let kind = if prefix.starts_with("invalid type") {
                "wrong type"
            } else {
                "invalid value"
            };
            return report.error(
                span,
                format!(
                    "{kind}{}: expected {expected}, found {unexpected}",
                    field(&path)
                ),
                format!("expected {expected}"),
                custom_help.or_else(|| Some(type_help(path.as_ref(), &expected))),
                None,
            );
        }
    }

    // Custom errors from our own types (sizes, durations, replicas) and anything else.
    let message = match &path {
        Some(p) if !p.0.is_empty() => format!("`{p}`: {raw}"),
        _ => raw.to_string(),
    };
    report.error(span, message, raw.to_string(), custom_help, None)
}

/// Help for a wrong type, with an example of the right one where we have one.
fn type_help(path: Option<&FieldPath>, expected: &str) -> String {
    let key = path.and_then(|p| p.0.last()).and_then(|s| match s {
        Seg::Key(k) => Some(k.as_str()),
        Seg::Index(_) => None,
    });
    let example = match key {
        Some("name") => "name = \"my-app\"",
        Some("version") => "version = \"1.0.0\"",
        Some("routes") => "routes = [\"/\", \"/api\"]",
        Some("regions") => "regions = [\"eu-west\", \"ap-southeast\"]",
        Some("spread") => "spread = true",
        Some("reachable") => "reachable = true",
        Some("fuel") => "fuel = 1000000",
        Some("max_concurrency") => "max_concurrency = 100",
        Some("outbound_http") => "outbound_http = [\"api.example.com\"]",
        Some("keyvalue") => "keyvalue = [\"sessions\"]",
        Some("env_from_host") => "env_from_host = [\"DATABASE_URL\"]",
        _ => "",
    };
    if example.is_empty() {
        format!("write {expected} here")
    } else {
        format!("for example `{example}`")
    }
}

/// Converts a rule violation into a located diagnostic.
pub(crate) fn violation(report: &Reporter<'_>, doc: &Doc<'_>, v: Violation) -> SourceError {
    let span = doc.span(&v.path, v.target);
    let secondary = v.also.map(|(path, target, label)| Secondary {
        span: doc.span(&path, target),
        label,
    });
    report.error(span, v.message, v.label, v.help, secondary)
}
