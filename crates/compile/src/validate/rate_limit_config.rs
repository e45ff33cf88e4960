//! The rate-limit service's configuration, checked as envoyproxy/ratelimit checks it when it
//! loads (`src/config/config_impl.go`), with its messages' meaning: an empty key, a duplicate
//! key/value on one level, a limit with no unit, a unit on an unlimited limit.

use std::collections::BTreeSet;

use sluice_model::rate_limit_service::{Descriptor, RateLimitConfig};

use super::Report;

/// Beyond this many requests per unit, the sliding-window log holds that many entries per
/// counter in Redis; said, because a per-day limit of millions costs memory.
const LARGE_LIMIT: u32 = 1_000_000;

pub fn validate(r: &mut Report<'_, RateLimitConfig>) {
    let spec = &r.resource().spec;
    if spec.domain.is_empty() {
        r.error("domain", "the rate limit domain must not be empty");
    }
    level(r, &spec.descriptors, "descriptors");
}

fn level(r: &mut Report<'_, RateLimitConfig>, descriptors: &[Descriptor], path: &str) {
    let mut seen = BTreeSet::new();
    for (i, d) in descriptors.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if d.key.is_empty() {
            r.error(&format!("{at}.key"), "a descriptor must have a key");
        }
        let value = d.value.as_deref().unwrap_or_default();
        if !seen.insert((d.key.as_str(), value)) {
            r.error(
                &at,
                format!(
                    "duplicate descriptor {:?}{}: the rate-limit service refuses this \
                     configuration",
                    d.key,
                    if value.is_empty() {
                        String::new()
                    } else {
                        format!(" = {value:?}")
                    }
                ),
            );
        }
        if let Some(l) = &d.rate_limit {
            let lp = format!("{at}.rate_limit");
            if l.unlimited {
                if l.unit.is_some() || l.requests_per_unit.is_some() {
                    r.error(
                        &lp,
                        "an unlimited rate limit must not have a unit or requests_per_unit",
                    );
                }
            } else if l.unit.is_none() {
                r.error(
                    &format!("{lp}.unit"),
                    "a rate limit needs a unit (second, minute, hour, day, week, month or year)",
                );
            } else if l.requests_per_unit.is_none() {
                r.warning(
                    &format!("{lp}.requests_per_unit"),
                    "requests_per_unit is missing, so it is 0: every request matching this \
                     descriptor is over the limit",
                );
            } else if l.requests_per_unit.is_some_and(|n| n > LARGE_LIMIT) {
                r.warning(
                    &format!("{lp}.requests_per_unit"),
                    format!(
                        "sluice's sliding window keeps one Redis entry per request it admits \
                         within the unit; more than {LARGE_LIMIT} per unit uses that much \
                         memory per counter"
                    ),
                );
            }
            if !l.replaces.is_empty() {
                r.not_supported(
                    &format!("{lp}.replaces"),
                    "`replaces` is not supported: both limits apply",
                );
            }
        }
        level(r, &d.descriptors, &format!("{at}.descriptors"));
    }
}

#[cfg(test)]
mod tests {
    use sluice_model::{Level, load_str};

    /// The service's load-time errors, each at its path.
    #[test]
    fn the_services_load_errors_are_reported() {
        let loaded = load_str(
            "limits.yaml",
            "\
domain: egress
descriptors:
- key: user
  rate_limit: {unit: second, requests_per_unit: 5}
- key: user
  rate_limit: {unit: minute, requests_per_unit: 50}
- key: path
  rate_limit: {requests_per_unit: 5}
- key: ldap
  rate_limit: {unlimited: true, unit: second}
- key: tier
  value: gold
  descriptors:
  - key: ''
    rate_limit: {unit: second, requests_per_unit: 1, replaces: [{name: x}]}
",
        );
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let diags = crate::validate::validate(&loaded.resources);
        let at = |path: &str, level: Level, needle: &str| {
            diags.iter().any(|d| {
                d.level == level && d.path.as_deref() == Some(path) && d.message.contains(needle)
            })
        };
        assert!(
            at("descriptors[1]", Level::Error, "duplicate descriptor"),
            "{diags:#?}"
        );
        assert!(
            at(
                "descriptors[2].rate_limit.unit",
                Level::Error,
                "needs a unit"
            ),
            "{diags:#?}"
        );
        assert!(
            at("descriptors[3].rate_limit", Level::Error, "unlimited"),
            "{diags:#?}"
        );
        assert!(
            at(
                "descriptors[4].descriptors[0].key",
                Level::Error,
                "must have a key"
            ),
            "{diags:#?}"
        );
        assert!(
            at(
                "descriptors[4].descriptors[0].rate_limit.replaces",
                Level::Warning,
                "not supported"
            ),
            "{diags:#?}"
        );
    }
}
