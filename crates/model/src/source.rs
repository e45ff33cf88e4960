//! Where a resource and each of its fields came from, so that every message can point at a
//! file, line and column.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

/// A position in a config file; line and column are 1-based, as editors show them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Location {
    pub file: Arc<str>,
    pub line: u32,
    pub column: u32,
}

impl Location {
    /// `file:line`, the `reference` form istioctl prints.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Positions of the fields of one YAML document, keyed by field path (`spec.servers[0].hosts[1]`).
/// A mapping entry is recorded at its key, a sequence item at the item.
#[derive(Debug, Default)]
pub(crate) struct FieldIndex {
    positions: HashMap<Box<str>, (u32, u32)>,
}

impl FieldIndex {
    pub(crate) fn insert(&mut self, path: &str, line: u32, column: u32) {
        self.positions.insert(path.into(), (line, column));
    }

    pub(crate) fn find_exact(&self, path: &str) -> Option<(u32, u32)> {
        self.positions.get(path).copied()
    }

    /// The recorded position of `path`, or of its nearest recorded ancestor.
    fn find(&self, mut path: &str) -> Option<(u32, u32)> {
        loop {
            if let Some(pos) = self.positions.get(path) {
                return Some(*pos);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

/// The origin of one resource: its file, where its document starts, and where its fields are.
#[derive(Debug, Clone)]
pub struct Source {
    file: Arc<str>,
    line: u32,
    column: u32,
    fields: Arc<FieldIndex>,
    /// Prepended to field paths: a resource that is an item of a `List` is `items[3]`.
    prefix: Arc<str>,
    /// Position in load order; later definitions win where Istio's would.
    order: u64,
}

impl Source {
    pub(crate) fn new(file: Arc<str>, line: u32, column: u32, fields: Arc<FieldIndex>) -> Self {
        Source {
            file,
            line,
            column,
            fields,
            prefix: "".into(),
            order: 0,
        }
    }

    /// The source of an item nested at `prefix` (an element of a `List`), starting where that
    /// item is written.
    pub(crate) fn nested(&self, prefix: &str) -> Self {
        let at = self.location_of(prefix);
        let full = if self.prefix.is_empty() {
            prefix.to_owned()
        } else {
            format!("{}.{prefix}", self.prefix)
        };
        Source {
            line: at.line,
            column: at.column,
            prefix: full.into(),
            ..self.clone()
        }
    }

    pub(crate) fn with_order(mut self, order: u64) -> Self {
        self.order = order;
        self
    }

    /// Position in load order (0 for the first resource loaded).
    pub fn order(&self) -> u64 {
        self.order
    }

    /// A source for resources built in code (tests, defaults), with no field positions.
    pub fn synthetic(name: &str) -> Self {
        Source::new(name.into(), 1, 1, Arc::default())
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    /// Where the resource's document starts.
    pub fn location(&self) -> Location {
        Location {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
        }
    }

    /// True when the document writes the field at `path` itself. Lets analysis look at what
    /// the typed model leaves out, such as the addresses Istio allocated into a `status`.
    pub fn has_field(&self, path: &str) -> bool {
        let full = if self.prefix.is_empty() {
            path.to_owned()
        } else {
            format!("{}.{path}", self.prefix)
        };
        self.fields.find_exact(&full).is_some()
    }

    /// Where the field at `path` (e.g. `spec.gateways[1]`) is written; the nearest enclosing
    /// field when that one is absent, and the document when nothing encloses it.
    pub fn location_of(&self, path: &str) -> Location {
        let full;
        let path = if self.prefix.is_empty() {
            path
        } else {
            full = format!("{}.{path}", self.prefix);
            &full
        };
        match self.fields.find(path) {
            Some((line, column)) => Location {
                file: self.file.clone(),
                line,
                column,
            },
            None => self.location(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_paths_fall_back_to_the_nearest_ancestor() {
        let mut idx = FieldIndex::default();
        idx.insert("spec", 5, 1);
        idx.insert("spec.hosts", 6, 3);
        idx.insert("spec.hosts[0]", 7, 5);
        let src = Source::new("a.yaml".into(), 1, 1, Arc::new(idx));
        assert_eq!(src.location_of("spec.hosts[0]").line, 7);
        assert_eq!(src.location_of("spec.hosts[3]").line, 6);
        assert_eq!(src.location_of("spec.ports[0].number").line, 5);
        assert_eq!(src.location_of("status").line, 1);
        assert_eq!(src.location_of("spec.hosts[0]").reference(), "a.yaml:7");
        assert!(src.has_field("spec.hosts[0]"));
        assert!(!src.has_field("spec.hosts[3]"));
        assert!(!src.has_field("status"));
    }
}
