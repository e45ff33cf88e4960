//! Matchers shared by listeners and routes: host patterns, string matchers, regexes that are
//! compiled once and serialize as their source.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A host pattern as Istio writes them: `api.example.com`, `*.example.com`, or `*`.
/// Matching ignores ASCII case; a wildcard matches one or more labels before its suffix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostMatch {
    Any,
    /// The suffix after `*`, including its leading dot, lower-cased (`.example.com`).
    Suffix(String),
    /// Lower-cased.
    Exact(String),
}

impl HostMatch {
    pub fn parse(pattern: &str) -> HostMatch {
        let p = pattern.to_ascii_lowercase();
        if p == "*" {
            HostMatch::Any
        } else if let Some(suffix) = p.strip_prefix('*') {
            HostMatch::Suffix(suffix.to_owned())
        } else {
            HostMatch::Exact(p)
        }
    }

    /// True when `host` (no port) matches. `host` is compared case-insensitively.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(e) => e.eq_ignore_ascii_case(host),
            HostMatch::Suffix(s) => {
                host.len() > s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }

    /// Envoy's precedence among matching patterns: exact first, then the longest suffix,
    /// then `*`. Higher is more specific.
    pub fn specificity(&self) -> usize {
        match self {
            HostMatch::Any => 0,
            HostMatch::Suffix(s) => 1 + s.len(),
            HostMatch::Exact(_) => usize::MAX,
        }
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Any => f.write_str("*"),
            HostMatch::Suffix(s) => write!(f, "*{s}"),
            HostMatch::Exact(e) => f.write_str(e),
        }
    }
}

impl Serialize for HostMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(HostMatch::parse(&String::deserialize(d)?))
    }
}

/// Picks, among `candidates`, the one whose host pattern matches `host` most specifically.
pub fn best_host_match<'a, T>(
    host: &str,
    candidates: impl IntoIterator<Item = (&'a HostMatch, T)>,
) -> Option<T> {
    candidates
        .into_iter()
        .filter(|(m, _)| m.matches(host))
        .max_by_key(|(m, _)| m.specificity())
        .map(|(_, t)| t)
}

/// A compiled regular expression (full match, as Envoy's `safe_regex`), serialized as its
/// source text.
#[derive(Clone)]
pub struct Regex {
    source: String,
    compiled: regex::Regex,
}

impl Regex {
    /// Compiles `source` anchored at both ends, as Envoy matches regexes against the whole value.
    pub fn new(source: &str) -> Result<Regex, regex::Error> {
        let compiled = regex::Regex::new(&format!("^(?:{source})$"))?;
        Ok(Regex {
            source: source.to_owned(),
            compiled,
        })
    }

    pub fn is_match(&self, value: &str) -> bool {
        self.compiled.is_match(value)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Replaces every match inside `value` (unanchored), for `uriRegexRewrite`.
    pub fn replace_all(&self, value: &str, with: &str) -> String {
        match regex::Regex::new(&self.source) {
            Ok(re) => re.replace_all(value, with).into_owned(),
            Err(_) => value.to_owned(),
        }
    }
}

impl fmt::Debug for Regex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Regex({:?})", self.source)
    }
}

impl PartialEq for Regex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for Regex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Regex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        Regex::new(&source).map_err(serde::de::Error::custom)
    }
}

/// Envoy's string matcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StringMatcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
    /// The value is present, whatever it is (Istio's `{}`).
    Present,
}

impl StringMatcher {
    pub fn matches(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            StringMatcher::Exact(e) if ignore_case => e.eq_ignore_ascii_case(value),
            StringMatcher::Exact(e) => e == value,
            StringMatcher::Prefix(p) if ignore_case => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            StringMatcher::Prefix(p) => value.starts_with(p.as_str()),
            StringMatcher::Regex(r) => r.is_match(value),
            StringMatcher::Present => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_match_as_envoy_domains() {
        let table = [
            ("*", "a.com", true),
            ("*.wikipedia.org", "en.wikipedia.org", true),
            ("*.wikipedia.org", "a.b.wikipedia.org", true),
            ("*.wikipedia.org", "wikipedia.org", false),
            ("*.wikipedia.org", "EN.Wikipedia.ORG", true),
            ("api.github.com", "API.GITHUB.COM", true),
            ("api.github.com", "api.github.co", false),
            ("*.é.com", "x.é.com", true),
        ];
        for (pattern, host, want) in table {
            assert_eq!(
                HostMatch::parse(pattern).matches(host),
                want,
                "{pattern} ~ {host}"
            );
        }
    }

    #[test]
    fn exact_beats_longest_suffix_beats_any() {
        let any = HostMatch::parse("*");
        let short = HostMatch::parse("*.org");
        let long = HostMatch::parse("*.wikipedia.org");
        let exact = HostMatch::parse("en.wikipedia.org");
        let c = [(&any, 0), (&short, 1), (&long, 2), (&exact, 3)];
        assert_eq!(best_host_match("en.wikipedia.org", c), Some(3));
        assert_eq!(best_host_match("de.wikipedia.org", c), Some(2));
        assert_eq!(best_host_match("x.org", c), Some(1));
        assert_eq!(best_host_match("x.com", c), Some(0));
    }

    #[test]
    fn regexes_match_the_whole_value_and_round_trip() {
        let r = Regex::new("/api/v[0-9]+").expect("valid");
        assert!(r.is_match("/api/v1"));
        assert!(!r.is_match("/api/v1/users"));
        let json = serde_json::to_string(&r).expect("ser");
        assert_eq!(json, "\"/api/v[0-9]+\"");
        let back: Regex = serde_json::from_str(&json).expect("de");
        assert_eq!(back, r);
    }

    #[test]
    fn string_matchers() {
        assert!(StringMatcher::Prefix("/API".into()).matches("/api/x", true));
        assert!(!StringMatcher::Prefix("/API".into()).matches("/api/x", false));
        assert!(StringMatcher::Exact("GET".into()).matches("GET", false));
        assert!(StringMatcher::Present.matches("", false));
        assert!(!StringMatcher::Prefix("ab".into()).matches("é", true));
    }
}
