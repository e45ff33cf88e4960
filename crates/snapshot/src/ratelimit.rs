//! Envoy's HTTP local rate limit (`envoy.filters.http.local_ratelimit`), as the EnvoyFilters
//! that select a proxy configure it: per HTTP route configuration, the rate limit filters in
//! the order of the HTTP filter chain, and the per-route / per-virtual-host settings
//! (`typed_per_filter_config`) that replace a filter's own configuration where they apply.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The local rate limit of one HTTP route configuration (`http.80`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HttpRateLimits {
    /// The local rate limit filters of the HTTP filter chain, in chain order (all before the
    /// router).
    pub filters: Vec<RateLimitFilter>,
    /// `typed_per_filter_config`, by filter name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_route: BTreeMap<String, PerRoute>,
}

/// One `envoy.filters.http.local_ratelimit` instance in the HTTP filter chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateLimitFilter {
    /// The filter's name; per-route settings refer to it.
    pub name: String,
    /// The EnvoyFilter patch it came from (`EnvoyFilter istio-system/egress-ratelimit
    /// configPatches[0]`).
    pub origin: String,
    /// Envoy's `disabled`: the filter only runs where a route or virtual host configures it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// The filter-level configuration.
    pub config: LocalRateLimit,
}

/// Per-route settings of one filter name.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PerRoute {
    /// By virtual host name (`api.example.com:80`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub virtual_hosts: BTreeMap<String, LocalRateLimit>,
    /// By virtual host name, then route name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, BTreeMap<String, LocalRateLimit>>,
}

impl PerRoute {
    /// Envoy's most specific per-filter config: the route's, else its virtual host's.
    pub fn lookup(&self, vhost: &str, route: Option<&str>) -> Option<&LocalRateLimit> {
        route
            .and_then(|r| self.routes.get(vhost).and_then(|m| m.get(r)))
            .or_else(|| self.virtual_hosts.get(vhost))
    }
}

/// Envoy's `LocalRateLimit`, reduced to what sluice enforces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalRateLimit {
    /// Prefix of the filter's stats (`<stat_prefix>.http_local_rate_limit.rate_limited`).
    pub stat_prefix: String,
    /// `None`: the configuration limits nothing (a filter-level default for routes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_bucket: Option<TokenBucket>,
    /// Percentage (0–100) of requests the limit is checked for (`filter_enabled`).
    pub enabled_percent: f64,
    /// Percentage (0–100) of checked requests over the limit that are refused
    /// (`filter_enforced`).
    pub enforced_percent: f64,
    /// Status of refused requests (429 unless configured).
    pub status: u16,
    /// Headers added to the refusals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<HeaderToAdd>,
    /// Headers added to requests over the limit that are let through (not enforced).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add_when_not_enforced: Vec<HeaderToAdd>,
}

/// Envoy's `type.v3.TokenBucket`: starts full with `max_tokens`; every `fill_interval`
/// `tokens_per_fill` tokens are added, up to `max_tokens`; each request takes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenBucket {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    #[serde(with = "crate::route::duration")]
    pub fill_interval: Duration,
}

/// A header to add, with Envoy's `HeaderAppendAction`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderToAdd {
    /// Lower-cased.
    pub name: String,
    pub value: String,
    pub action: AppendAction,
}

/// Envoy's `HeaderValueOption.HeaderAppendAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}
