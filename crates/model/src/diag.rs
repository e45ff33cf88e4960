//! Diagnostics: what the loader, validation and analysis tell the user, in istioctl's shape.

use std::fmt::{self, Write};

use serde::{Serialize, Serializer};

use crate::source::Location;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Level {
    Error,
    Warning,
    Info,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Error => "Error",
            Level::Warning => "Warning",
            Level::Info => "Info",
        })
    }
}

/// One message. `code` is Istio's (`IST0101`) where Istio has one for the same finding, else
/// sluice's own (`SLC…`, listed in [`codes`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub code: &'static str,
    pub level: Level,
    pub message: String,
    /// `Kind namespace/name` of the resource concerned, as istioctl prints it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// `file:line` in istioctl's JSON; the column is given separately.
    #[serde(
        rename = "reference",
        serialize_with = "reference",
        skip_serializing_if = "Option::is_none"
    )]
    pub location: Option<Location>,
    /// The field the message is about (`spec.tls[0].match[0].gateways[0]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

fn reference<S: Serializer>(loc: &Option<Location>, s: S) -> Result<S::Ok, S::Error> {
    match loc {
        Some(loc) => s.serialize_str(&loc.reference()),
        None => s.serialize_none(),
    }
}

impl Diagnostic {
    pub fn new(code: &'static str, level: Level, message: impl Into<String>) -> Self {
        Diagnostic {
            code,
            level,
            message: message.into(),
            origin: None,
            location: None,
            path: None,
        }
    }

    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(code, Level::Error, message)
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(code, Level::Warning, message)
    }

    pub fn info(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(code, Level::Info, message)
    }

    pub fn at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }

    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.level == Level::Error
    }
}

/// istioctl's text form: `Error [IST0101] (VirtualService default/x file.yaml:15) message`,
/// with the column and field path added after the message when known. Names, paths and
/// messages come from config files, so their control characters are escaped.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.level, self.code)?;
        match (&self.origin, &self.location) {
            (Some(o), Some(l)) => write!(f, " ({} {})", Escaped(o), Escaped(&l.reference()))?,
            (Some(o), None) => write!(f, " ({})", Escaped(o))?,
            (None, Some(l)) => write!(f, " ({})", Escaped(&l.to_string()))?,
            (None, None) => {}
        }
        write!(f, " {}", Escaped(&self.message))?;
        if let Some(path) = &self.path {
            write!(f, " [at {}", Escaped(path))?;
            if let Some(l) = &self.location {
                write!(f, ", column {}", l.column)?;
            }
            f.write_str("]")?;
        }
        Ok(())
    }
}

/// Text with its control characters (a newline that would start a forged line, an ANSI
/// escape that would rewrite the terminal) and bidirectional overrides written as `\n`,
/// `\u{1b}`…
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// sluice's own codes, for findings Istio has no code for. Istio's own codes are used as
/// plain strings where they apply (`IST0101`…), so that tools keyed on them keep working.
pub mod codes {
    /// The file is not valid YAML.
    pub const YAML_SYNTAX: &str = "SLC0001";
    /// A field or value does not fit the kind's schema (unknown field, wrong type, bad enum).
    /// Istio reports the same finding as IST0106 SchemaValidationError.
    pub const SCHEMA: &str = "IST0106";
    /// A document is not an Istio resource sluice reads; it is skipped.
    pub const SKIPPED_KIND: &str = "SLC0002";
    /// An Istio kind or API version sluice does not know.
    pub const UNKNOWN_KIND: &str = "SLC0003";
    /// A file or directory could not be read.
    pub const IO: &str = "SLC0004";
    /// Two resources of the same kind share a namespace and name; the later one is ignored.
    pub const DUPLICATE_RESOURCE: &str = "SLC0005";
    /// A field sluice reads but does not act on (yet); it is reported, never silently dropped.
    pub const NOT_SUPPORTED: &str = "SLC0006";
    /// The given paths hold no resource at all.
    pub const EMPTY_INPUT: &str = "SLC0007";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_like_istioctl() {
        let d = Diagnostic::error(
            "IST0101",
            "Referenced gateway not found: \"egress-gateway\"",
        )
        .origin("VirtualService default/github-api-routing")
        .at(Location {
            file: "virtualservice-github.yaml".into(),
            line: 17,
            column: 7,
        });
        assert_eq!(
            d.to_string(),
            "Error [IST0101] (VirtualService default/github-api-routing virtualservice-github.yaml:17) Referenced gateway not found: \"egress-gateway\""
        );
        let json = serde_json::to_value(&d).expect("serializes");
        assert_eq!(json["reference"], "virtualservice-github.yaml:17");
        assert_eq!(json["level"], "Error");
        assert_eq!(json["code"], "IST0101");
    }

    #[test]
    fn text_from_config_cannot_forge_lines_or_colours() {
        let d = Diagnostic::warning("SLC0005", "bad\r\nError [IST0101] \u{1b}[2Jx\u{202e}")
            .origin("Gateway ns/g\n")
            .at(Location {
                file: "a\nb.yaml".into(),
                line: 1,
                column: 2,
            })
            .path("spec.\tx");
        let text = d.to_string();
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert_eq!(
            text,
            "Warning [SLC0005] (Gateway ns/g\\n a\\nb.yaml:1) bad\\r\\nError [IST0101] \
             \\u{1b}[2Jx\\u{202e} [at spec.\\tx, column 2]"
        );
        let located = Diagnostic::error("SLC0004", "m").at(Location {
            file: "\u{1b}]0;x\u{7}".into(),
            line: 1,
            column: 1,
        });
        assert_eq!(
            located.to_string(),
            "Error [SLC0004] (\\u{1b}]0;x\\u{7}:1:1) m"
        );
    }
}
