//! YAML text → JSON-shaped values plus the position of every field.
//!
//! Built on saphyr's event parser (YAML 1.2, maintained; serde_yaml is deprecated). Working from
//! events rather than a document tree lets this module bound what untrusted input can cost —
//! nesting depth and alias expansion — before anything recursive runs, and record positions
//! under the same field paths that `serde_path_to_error` reports, so a typed error can be placed
//! at its line and column.

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr::Scalar;
use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span, Tag};
use serde_json::{Map, Number, Value};

use crate::source::FieldIndex;

/// Deeper nesting than this is refused: Istio resources nest about ten levels, and the limit
/// keeps recursive code (serde, drop) far from the stack's end on hostile input.
const MAX_DEPTH: usize = 64;
/// What anchors and aliases may copy per file, in bytes as [`weight`] counts them: this much
/// plus [`COPY_FACTOR`] times the file's size. Past it the file is refused ("billion laughs",
/// nested aliases or one long string aliased many times).
const COPY_BUDGET: usize = 4 << 20;
const COPY_FACTOR: usize = 4;
const COPY_MESSAGE: &str =
    "aliases expand to far more than the file's own size; such a file is refused";
/// Bytes the field-position index may take per file: this much plus [`INDEX_FACTOR`] times the
/// file's size (Istio's own test files, dense flow-style YAML included, need at most half of
/// that). Every path repeats its ancestors' keys, so a long key above many fields would grow
/// the index quadratically; past the budget, later fields are placed at their nearest recorded
/// ancestor.
const INDEX_BUDGET: usize = 1 << 20;
const INDEX_FACTOR: usize = 16;
/// What an index entry or a node costs beside its text.
const ENTRY_BYTES: usize = 48;

/// One YAML document with a non-null root.
#[derive(Debug)]
pub(crate) struct Document {
    pub value: Value,
    pub fields: FieldIndex,
    pub line: u32,
    pub column: u32,
}

/// Why a file is not valid YAML, and where (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub line: u32,
    pub column: u32,
    pub message: String,
}

enum Frame {
    Seq {
        path: String,
        items: Vec<Value>,
        anchor: usize,
    },
    Map {
        path: String,
        map: Map<String, Value>,
        key: Option<String>,
        anchor: usize,
    },
}

struct Builder<'a> {
    text: &'a str,
    frames: Vec<Frame>,
    anchors: HashMap<usize, (Value, usize)>,
    /// What anchors and aliases may still copy.
    copy_left: usize,
    /// What the field index may still take.
    index_left: usize,
    docs: Vec<Document>,
    fields: FieldIndex,
    root: Option<(Value, u32, u32)>,
}

pub(crate) fn parse(text: &str) -> Result<Vec<Document>, SyntaxError> {
    let mut b = Builder {
        text,
        frames: Vec::new(),
        anchors: HashMap::new(),
        copy_left: COPY_BUDGET.saturating_add(COPY_FACTOR.saturating_mul(text.len())),
        index_left: INDEX_BUDGET.saturating_add(INDEX_FACTOR.saturating_mul(text.len())),
        docs: Vec::new(),
        fields: FieldIndex::default(),
        root: None,
    };
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| b.scan_error(&e))?;
        b.event(event, span)?;
    }
    Ok(b.docs)
}

fn position(span: &Span) -> (u32, u32) {
    (
        u32::try_from(span.start.line()).unwrap_or(u32::MAX),
        u32::try_from(span.start.col() + 1).unwrap_or(u32::MAX),
    )
}

/// Roughly what a value takes in memory.
fn weight(v: &Value) -> usize {
    ENTRY_BYTES
        + match v {
            Value::String(s) => s.len(),
            Value::Array(a) => a.iter().map(weight).sum(),
            Value::Object(m) => m.iter().map(|(k, v)| k.len() + weight(v)).sum(),
            _ => 0,
        }
}

/// Takes `cost` from `left`; false, and nothing left, when it does not fit.
fn spend(left: &mut usize, cost: usize) -> bool {
    let fits = cost <= *left;
    *left = if fits { *left - cost } else { 0 };
    fits
}

impl Builder<'_> {
    fn error(&self, span: &Span, message: impl Into<String>) -> SyntaxError {
        let (line, column) = position(span);
        SyntaxError {
            line,
            column,
            message: message.into(),
        }
    }

    fn scan_error(&self, e: &ScanError) -> SyntaxError {
        let line = u32::try_from(e.marker().line()).unwrap_or(u32::MAX);
        let column = u32::try_from(e.marker().col() + 1).unwrap_or(u32::MAX);
        if e.info() == "simple key expect ':'" {
            // The scanner notices the missing ':' only where the next token starts, often lines
            // later; the culprit is the last thing written before that point.
            if let Some((bad_line, bad_col, content)) = self.last_content_line_before(line, column)
            {
                return SyntaxError {
                    line: bad_line,
                    column: bad_col,
                    message: format!(
                        "`{content}` stands where a `key: value` entry was expected; a value \
                         inside a mapping needs a key"
                    ),
                };
            }
        }
        SyntaxError {
            line,
            column,
            message: e.info().to_owned(),
        }
    }

    /// The last line before (line, column) that holds something other than a comment, with the
    /// column of its first character and its trimmed text.
    fn last_content_line_before(&self, line: u32, column: u32) -> Option<(u32, u32, String)> {
        let lines: Vec<&str> = self.text.lines().collect();
        let upto = usize::try_from(line).ok()?.min(lines.len());
        for idx in (0..upto).rev() {
            let mut text = lines[idx];
            if idx + 1 == line as usize {
                let cut = text
                    .char_indices()
                    .nth((column as usize).saturating_sub(1))
                    .map_or(text.len(), |(i, _)| i);
                text = &text[..cut];
            }
            let content = text.split(" #").next().unwrap_or("").trim_end();
            let trimmed = content.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let col = content.len() - trimmed.len() + 1;
            return Some((idx as u32 + 1, col as u32, trimmed.to_owned()));
        }
        None
    }

    /// The field path a node starting now will have, and records its position when it is a
    /// sequence item (mapping values are recorded at their key).
    fn child_path(&mut self, span: &Span) -> String {
        let (line, column) = position(span);
        match self.frames.last() {
            None => String::new(),
            // Out of budget: nothing more is recorded.
            Some(_) if self.index_left == 0 => String::new(),
            Some(Frame::Seq { path, items, .. }) => {
                if !spend(&mut self.index_left, ENTRY_BYTES + path.len()) {
                    return String::new();
                }
                let p = format!("{path}[{}]", items.len());
                self.fields.insert(&p, line, column);
                p
            }
            Some(Frame::Map {
                path,
                key: Some(key),
                ..
            }) => {
                if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                }
            }
            // A container used as a mapping key (`complete` rejects it), or out of budget.
            Some(Frame::Map { .. }) => String::new(),
        }
    }

    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), SyntaxError> {
        match event {
            Event::DocumentStart(_) => {
                self.fields = FieldIndex::default();
                self.root = None;
                self.anchors.clear();
            }
            Event::DocumentEnd => {
                if let Some((value, line, column)) = self.root.take()
                    && !value.is_null()
                {
                    self.docs.push(Document {
                        value,
                        fields: std::mem::take(&mut self.fields),
                        line,
                        column,
                    });
                }
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if self.frames.len() >= MAX_DEPTH {
                    return Err(self.error(
                        &span,
                        format!("nesting deeper than {MAX_DEPTH} levels is not accepted"),
                    ));
                }
                if self.frames.is_empty() {
                    let (line, column) = position(&span);
                    self.root = Some((Value::Null, line, column));
                }
                let path = self.child_path(&span);
                self.frames
                    .push(if matches!(event, Event::SequenceStart(..)) {
                        Frame::Seq {
                            path,
                            items: Vec::new(),
                            anchor,
                        }
                    } else {
                        Frame::Map {
                            path,
                            map: Map::new(),
                            key: None,
                            anchor,
                        }
                    });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (value, anchor) = match self.frames.pop() {
                    Some(Frame::Seq { items, anchor, .. }) => (Value::Array(items), anchor),
                    Some(Frame::Map { map, anchor, .. }) => (Value::Object(map), anchor),
                    None => return Err(self.error(&span, "unbalanced collection end")),
                };
                self.remember(anchor, &value, &span)?;
                self.complete(value, &span, true)?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                let value = scalar(text, style, tag.as_ref()).ok_or_else(|| {
                    self.error(
                        &span,
                        "scalar does not fit its tag or is not a finite number",
                    )
                })?;
                if matches!(self.frames.last(), Some(Frame::Seq { .. })) {
                    self.child_path(&span);
                }
                self.remember(anchor, &value, &span)?;
                self.complete(value, &span, false)?;
            }
            Event::Alias(id) => {
                let Some((value, size)) = self.anchors.get(&id) else {
                    return Err(self.error(&span, "alias to an unknown anchor"));
                };
                if !spend(&mut self.copy_left, *size) {
                    return Err(self.error(&span, COPY_MESSAGE));
                }
                let value = value.clone();
                if matches!(self.frames.last(), Some(Frame::Seq { .. })) {
                    self.child_path(&span);
                }
                self.complete(value, &span, false)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
        Ok(())
    }

    /// Keeps a copy of an anchored value for its aliases; nested anchors copy their contents
    /// again, so the copy counts against the same budget as the aliases.
    fn remember(&mut self, anchor: usize, value: &Value, span: &Span) -> Result<(), SyntaxError> {
        if anchor > 0 {
            let size = weight(value);
            if !spend(&mut self.copy_left, size) {
                return Err(self.error(span, COPY_MESSAGE));
            }
            self.anchors.insert(anchor, (value.clone(), size));
        }
        Ok(())
    }

    /// Hands a finished node to its parent: a sequence item, a mapping key or a mapping value.
    fn complete(&mut self, value: Value, span: &Span, container: bool) -> Result<(), SyntaxError> {
        let (line, column) = position(span);
        match self.frames.last_mut() {
            None => {
                let (l, c) = self.root.as_ref().map_or((line, column), |r| (r.1, r.2));
                self.root = Some((value, l, c));
            }
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map { path, map, key, .. }) => match key.take() {
                Some(k) => {
                    map.insert(k, value);
                }
                None => {
                    let k = match value {
                        Value::String(s) => s,
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ if container => {
                            return Err(self.error(span, "a mapping key must be a scalar"));
                        }
                        _ => return Err(self.error(span, "a mapping key must not be null")),
                    };
                    if map.contains_key(&k) {
                        return Err(self.error(span, format!("duplicate key `{k}`")));
                    }
                    if spend(&mut self.index_left, ENTRY_BYTES + path.len() + k.len()) {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        self.fields.insert(&p, line, column);
                    }
                    *key = Some(k);
                }
            },
        }
        Ok(())
    }
}

fn scalar(text: Cow<'_, str>, style: ScalarStyle, tag: Option<&Cow<'_, Tag>>) -> Option<Value> {
    Some(
        match Scalar::parse_from_cow_and_metadata(text, style, tag)? {
            Scalar::Null => Value::Null,
            Scalar::Boolean(b) => Value::Bool(b),
            Scalar::Integer(i) => Value::Number(i.into()),
            Scalar::FloatingPoint(f) => Value::Number(Number::from_f64(f.into_inner())?),
            Scalar::String(s) => Value::String(s.into_owned()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_values_and_positions() {
        let text = "# leading comment\n---\na: 1\nb:\n  - x\n  - {c: \"443\", d: true}\n---\n---\nkind: Z\n";
        let docs = parse(text).expect("valid");
        assert_eq!(docs.len(), 2, "the empty document is dropped");
        assert_eq!(docs[0].line, 3);
        assert_eq!(
            docs[0].value,
            serde_json::json!({"a": 1, "b": ["x", {"c": "443", "d": true}]})
        );
        assert_eq!(docs[0].fields.find_exact("b[1].c"), Some((6, 6)));
        assert_eq!(docs[0].fields.find_exact("b[0]"), Some((5, 5)));
        assert_eq!(docs[0].fields.find_exact("a"), Some((3, 1)));
        assert_eq!(docs[1].line, 9);
    }

    #[test]
    fn anchors_expand_within_a_budget() {
        let docs = parse("a: &x {k: v}\nb: *x\n").expect("valid");
        assert_eq!(docs[0].value["b"]["k"], "v");
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..8 {
            let prev = if i == 0 { 'a' } else { (b'a' + i) as char };
            let next = (b'a' + i + 1) as char;
            bomb.push_str(&format!(
                "{next}: &{next} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let err = parse(&bomb).expect_err("a billion laughs must be refused");
        assert!(err.message.contains("aliases expand"), "{err:?}");
    }

    #[test]
    fn a_long_string_aliased_many_times_is_refused() {
        let long = "x".repeat(64 << 10);
        let aliases = ["*a"; 200].join(", ");
        let text = format!("a: &a \"{long}\"\nb: [{aliases}]\n");
        let err = parse(&text).expect_err("13 MiB of copies from 64 KiB of text");
        assert!(err.message.contains("aliases expand"), "{err:?}");
        assert_eq!(err.line, 2, "{err:?}");
        // A few copies are what anchors are for.
        let few = ["*a"; 4].join(", ");
        let docs = parse(&format!("a: &a \"{long}\"\nb: [{few}]\n")).expect("within budget");
        assert_eq!(docs[0].value["b"][3].as_str().map(str::len), Some(64 << 10));
    }

    #[test]
    fn nested_anchors_count_their_copies() {
        let mut text = String::new();
        for depth in 0..60 {
            text.push_str(&format!("{}k{depth}: &a{depth}\n", "  ".repeat(depth)));
        }
        text.push_str(&format!(
            "{}leaf: {}\n",
            "  ".repeat(60),
            "x".repeat(256 << 10)
        ));
        let err = parse(&text).expect_err("each anchor copies the 256 KiB leaf again");
        assert!(err.message.contains("aliases expand"), "{err:?}");
    }

    #[test]
    fn a_long_key_above_many_fields_does_not_grow_the_index_quadratically() {
        let key = "k".repeat(64 << 10);
        // An explicit key (`? `) may be longer than a plain key's 1024 characters.
        let mut text = format!("? {key}\n:\n");
        for i in 0..2000 {
            text.push_str(&format!("  f{i}: 1\n"));
        }
        let docs = parse(&text).expect("valid");
        assert_eq!(docs[0].value[&key]["f1999"], 1, "every value is still read");
        let fields = &docs[0].fields;
        assert_eq!(fields.find_exact(&format!("{key}.f0")), Some((3, 3)));
        // 2000 paths of 64 KiB would be 128 MiB of index for 80 KiB of text.
        assert_eq!(fields.find_exact(&format!("{key}.f1999")), None);
    }

    #[test]
    fn hostile_nesting_is_refused_not_overflowed() {
        let deep = "[".repeat(100_000);
        assert!(parse(&deep).is_err());
        let deep_block = "- ".repeat(10_000) + "x\n";
        let err = parse(&deep_block).expect_err("too deep");
        assert!(err.message.contains("nesting"), "{err:?}");
    }

    #[test]
    fn duplicate_keys_are_errors_with_their_line() {
        let err = parse("a: 1\nb: 2\na: 3\n").expect_err("duplicate");
        assert_eq!(err.line, 3);
        assert!(err.message.contains("duplicate key `a`"), "{err:?}");
    }

    #[test]
    fn a_bare_value_in_a_mapping_points_at_itself() {
        let text = "spec:\n  selector:\n    x: y\n  # a comment\n  {}\n";
        let err = parse(text).expect_err("invalid");
        assert_eq!((err.line, err.column), (5, 3), "{err:?}");
        assert!(err.message.contains("`{}`"), "{err:?}");
    }

    #[test]
    fn garbage_never_panics() {
        for text in [
            "\u{0}",
            "{",
            "]",
            ": :",
            "- - -\n  :",
            "&a *a",
            "!!int x",
            "a: !!float nan",
            "\t- x",
            "key: 'unterminated",
            "? [a]\n: b",
            "*unknown",
        ] {
            let _ = parse(text);
        }
    }
}
