//! The configuration of Envoy's rate-limit service (envoyproxy/ratelimit): a `domain` and its
//! nested `descriptors`, each with an optional `rate_limit`. Istio's global rate-limit task
//! ships it as the `config.yaml` key of a ConfigMap; sluice reads that ConfigMap, or the same
//! YAML as a plain file among its inputs, and enforces it itself.
//!
//! Field names and meanings are the service's (`src/config/config_impl.go`): `key` is
//! required, `value` optional (absent: every value gets its own counter), `rate_limit` holds
//! `unit` and `requests_per_unit`, or `unlimited: true`; `shadow_mode` evaluates and counts but
//! never refuses.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// One rate-limit service configuration: the limits of one domain.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub domain: String,
    #[serde(default)]
    pub descriptors: Vec<Descriptor>,
}

/// One level of the descriptor tree.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    pub key: String,
    /// Absent: any value matches, and each value has its own counter. A trailing `*` matches
    /// values by prefix (the service's wildcard).
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub rate_limit: Option<Limit>,
    #[serde(default)]
    pub shadow_mode: bool,
    /// Per-value statistics in the service; accepted, sluice's metrics are per domain.
    #[serde(default)]
    pub detailed_metric: bool,
    #[serde(default)]
    pub descriptors: Vec<Descriptor>,
}

/// A `rate_limit` block.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    #[serde(default)]
    pub name: Option<String>,
    /// Names of limits this one replaces (not supported: reported by the compiler).
    #[serde(default)]
    pub replaces: Vec<Replaces>,
    #[serde(default)]
    pub unit: Option<Unit>,
    #[serde(default)]
    pub requests_per_unit: Option<u32>,
    #[serde(default)]
    pub unlimited: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Replaces {
    #[serde(default)]
    pub name: Option<String>,
}

/// The period of a limit. The service accepts any letter case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    pub const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Unit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Unit, D::Error> {
        let s = String::deserialize(d)?;
        Unit::ALL
            .into_iter()
            .find(|u| u.as_str().eq_ignore_ascii_case(&s))
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown unit {s:?}: expected second, minute, hour, day, week, month or year"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_task_config_is_read() {
        // acceptance/istio-tasks/rate-limit/01-global_rate_limit_1.yaml, data.config.yaml.
        let c: RateLimitConfig = serde_json::from_value(serde_json::json!({
            "domain": "ratelimit",
            "descriptors": [
                {"key": "PATH", "value": "/productpage",
                 "rate_limit": {"unit": "minute", "requests_per_unit": 1}},
                {"key": "PATH", "value": "api",
                 "rate_limit": {"unit": "minute", "requests_per_unit": 2}},
                {"key": "PATH", "rate_limit": {"unit": "MINUTE", "requests_per_unit": 100}}
            ]
        }))
        .expect("parses");
        assert_eq!(c.domain, "ratelimit");
        assert_eq!(c.descriptors.len(), 3);
        assert_eq!(c.descriptors[2].value, None);
        let l = c.descriptors[2].rate_limit.as_ref().expect("limit");
        assert_eq!(
            (l.unit, l.requests_per_unit),
            (Some(Unit::Minute), Some(100))
        );
    }

    #[test]
    fn unknown_fields_and_units_are_named() {
        let e = serde_json::from_value::<RateLimitConfig>(serde_json::json!({
            "domain": "d", "descriptors": [{"key": "k", "rate_limit": {"unit": "fortnight"}}]
        }))
        .expect_err("bad unit");
        assert!(e.to_string().contains("fortnight"), "{e}");
        let e = serde_json::from_value::<RateLimitConfig>(serde_json::json!({
            "domain": "d", "descriptors": [{"key": "k", "ratelimit": {}}]
        }))
        .expect_err("typo");
        assert!(e.to_string().contains("ratelimit"), "{e}");
    }
}
