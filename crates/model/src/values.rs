//! Value types shared by several Istio kinds, parsed once here so that no later stage handles
//! their string forms: durations, label selectors, string matches, port selectors.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration as Istio's CRDs accept it: Go's `time.ParseDuration` syntax (`10s`, `1m30s`,
/// `500ms`, `1.5h`), which is what `kubectl` users write. Negative durations are rejected here
/// because no Istio field accepts one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (write e.g. \"10s\", \"1m30s\", \"500ms\")")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

impl Duration {
    pub fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub fn as_std(self) -> std::time::Duration {
        self.0
    }

    /// Parses Go's duration syntax: one or more `<decimal><unit>` terms, units `ns`, `us`, `µs`,
    /// `ms`, `s`, `m`, `h`; a bare `0` is allowed.
    pub fn parse(input: &str) -> Result<Self, DurationError> {
        let err = |reason| DurationError {
            input: input.to_owned(),
            reason,
        };
        let s = input.trim();
        if s == "0" {
            return Ok(Duration::default());
        }
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.starts_with('-') {
            return Err(err("negative durations are not allowed"));
        }
        let s = s.strip_prefix('+').unwrap_or(s);
        let mut total_nanos: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| err("missing unit"))?;
            if num_len == 0 {
                return Err(err("expected a number"));
            }
            let (num, tail) = rest.split_at(num_len);
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_len);
            let unit_nanos: u128 = match unit {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60 * 1_000_000_000,
                "h" => 3_600 * 1_000_000_000,
                _ => return Err(err("unknown unit (use ns, us, ms, s, m or h)")),
            };
            let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
            if int_part.is_empty() && frac_part.is_empty() || frac_part.contains('.') {
                return Err(err("malformed number"));
            }
            let int: u128 = if int_part.is_empty() {
                0
            } else {
                int_part.parse().map_err(|_| err("number too large"))?
            };
            let mut nanos = int
                .checked_mul(unit_nanos)
                .ok_or_else(|| err("number too large"))?;
            let mut scale = unit_nanos;
            for digit in frac_part.bytes().take(18) {
                scale /= 10;
                nanos += u128::from(digit - b'0') * scale;
            }
            total_nanos = total_nanos
                .checked_add(nanos)
                .ok_or_else(|| err("number too large"))?;
            rest = tail;
        }
        let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| err("too large"))?;
        let sub = (total_nanos % 1_000_000_000) as u32;
        Ok(Duration(std::time::Duration::new(secs, sub)))
    }
}

impl fmt::Display for Duration {
    /// Prints the shortest exact Go-style form (`1m30s`, `500ms`), so that config dumps read like
    /// the YAML they came from.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        if d.subsec_nanos() != 0 {
            let nanos = d.as_nanos();
            return if nanos.is_multiple_of(1_000_000) {
                write!(f, "{}ms", nanos / 1_000_000)
            } else if nanos.is_multiple_of(1_000) {
                write!(f, "{}us", nanos / 1_000)
            } else {
                write!(f, "{nanos}ns")
            };
        }
        let secs = d.as_secs();
        let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Duration::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Istio's `WorkloadSelector` (`selector:` in AuthorizationPolicy, Telemetry, Sidecar…):
/// `matchLabels` only.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// True when every label of the selector is present with the same value. An empty selector
    /// selects every workload, as in Istio.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// Istio's `StringMatch`: exactly one of `exact`, `prefix`, `regex` (RE2 syntax).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// Istio's `PortSelector`: `{number: N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    #[serde(default)]
    pub number: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_go_does() {
        let ok = [
            ("10s", 10_000),
            ("1m30s", 90_000),
            ("500ms", 500),
            ("1.5s", 1_500),
            ("1h", 3_600_000),
            ("0", 0),
            (".5s", 500),
            ("2m0.25s", 120_250),
        ];
        for (input, ms) in ok {
            assert_eq!(
                Duration::parse(input).map(|d| d.0.as_millis()),
                Ok(ms),
                "{input}"
            );
        }
        for bad in [
            "",
            "10",
            "s",
            "-1s",
            "10x",
            "1..5s",
            "1e3s",
            "99999999999999999999h",
        ] {
            assert!(Duration::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn durations_print_in_their_shortest_form() {
        for s in ["90s", "1m30s", "500ms", "1h", "2h5s", "0s", "250us"] {
            let d = Duration::parse(s).expect(s);
            let printed = d.to_string();
            assert_eq!(Duration::parse(&printed), Ok(d), "{s} -> {printed}");
        }
        assert_eq!(
            Duration::parse("90s").map(|d| d.to_string()),
            Ok("1m30s".into())
        );
    }

    #[test]
    fn string_match_takes_one_of_three_forms() {
        let m: StringMatch = serde_json::from_str(r#"{"prefix":"/api"}"#).expect("prefix");
        assert_eq!(m, StringMatch::Prefix("/api".into()));
        assert!(serde_json::from_str::<StringMatch>(r#"{"glob":"x"}"#).is_err());
    }

    #[test]
    fn empty_selector_selects_everything() {
        let labels = BTreeMap::from([("istio".to_owned(), "egressgateway".to_owned())]);
        assert!(WorkloadSelector::default().matches(&labels));
        let sel = WorkloadSelector {
            match_labels: BTreeMap::from([("istio".into(), "ingressgateway".into())]),
        };
        assert!(!sel.matches(&labels));
    }
}
