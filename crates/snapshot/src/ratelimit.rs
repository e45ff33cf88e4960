//! Envoy's HTTP rate limits, as the EnvoyFilters that select a proxy configure them: per HTTP
//! route configuration, the local rate limit filters (`envoy.filters.http.local_ratelimit`) in
//! the order of the HTTP filter chain with the per-route / per-virtual-host settings
//! (`typed_per_filter_config`) that replace a filter's own configuration where they apply; the
//! global rate limit filter (`envoy.filters.http.ratelimit`) with the `rate_limits` actions of
//! virtual hosts and routes; and the rate-limit service's descriptor trees by domain.

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
    /// The global rate limit filter of the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalFilter>,
    /// `rate_limits` of virtual hosts and routes: the descriptors a request produces.
    #[serde(default, skip_serializing_if = "Actions::is_empty")]
    pub actions: Actions,
}

/// One `envoy.filters.http.ratelimit` in the HTTP filter chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlobalFilter {
    pub name: String,
    /// The EnvoyFilter patch it came from.
    pub origin: String,
    /// How many local rate limit filters run before it.
    pub position: usize,
    pub domain: String,
    /// Only policies of this stage apply.
    pub stage: u32,
    /// Longest wait for the shared store; past it the failure mode applies.
    #[serde(with = "crate::route::duration")]
    pub timeout: Duration,
    /// The store failed: refuse (`error_status`) instead of letting the request through.
    pub failure_mode_deny: bool,
    /// Status of refusals (429).
    pub status: u16,
    /// Status when the store failed and `failure_mode_deny` holds (500).
    pub error_status: u16,
    /// Add `x-envoy-ratelimited: true` to refusals (Envoy's default).
    pub x_envoy_ratelimited: bool,
    /// Add `x-ratelimit-limit`, `-remaining` and `-reset` (DRAFT_VERSION_03).
    pub x_ratelimit_headers: bool,
}

/// `rate_limits` by where they were merged. Envoy's default (`vh_rate_limits: OVERRIDE`): a
/// route's own policies, else its virtual host's.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Actions {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub virtual_hosts: BTreeMap<String, Vec<RateLimitPolicy>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, BTreeMap<String, Vec<RateLimitPolicy>>>,
}

impl Actions {
    pub fn is_empty(&self) -> bool {
        self.virtual_hosts.is_empty() && self.routes.is_empty()
    }

    /// The policies a request that selected `vhost` and `route` is checked against.
    pub fn lookup(&self, vhost: &str, route: Option<&str>) -> &[RateLimitPolicy] {
        route
            .and_then(|r| self.routes.get(vhost).and_then(|m| m.get(r)))
            .filter(|p| !p.is_empty())
            .or_else(|| self.virtual_hosts.get(vhost))
            .map_or(&[], Vec::as_slice)
    }
}

/// Envoy's `config.route.v3.RateLimit`: the actions whose entries, in order, form one
/// descriptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateLimitPolicy {
    pub stage: u32,
    pub actions: Vec<DescriptorAction>,
}

/// One producer of a descriptor entry. An action that produces nothing drops the whole
/// descriptor (Envoy), except `request_headers` with `skip_if_absent`, which drops its entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DescriptorAction {
    /// `("source_cluster", <this proxy's service cluster>)`, resolved by the compiler.
    SourceCluster { value: String },
    /// `("destination_cluster", <the routed cluster>)`.
    DestinationCluster,
    /// `(key, <header value>)`; lower-cased name, pseudo-headers are the request's.
    RequestHeaders {
        header: String,
        key: String,
        skip_if_absent: bool,
    },
    /// `("remote_address", <client IP>)`.
    RemoteAddress,
    /// `("masked_remote_address", <client IP network>)`.
    MaskedRemoteAddress { v4_prefix: u8, v6_prefix: u8 },
    /// `(key, value)`.
    GenericKey { key: String, value: String },
    /// `(key, value)` when the headers match (all of them) as `expect_match` says.
    HeaderValueMatch {
        key: String,
        value: String,
        expect_match: bool,
        headers: Vec<HeaderCondition>,
    },
    /// `(key, <peer identity>)`: the SPIFFE ID of the verified client certificate of the mesh
    /// hop (CEL `source.principal` / `connection.uri_san_peer_certificate`). No identity: the
    /// entry is skipped if `skip_if_absent`, else the descriptor is dropped.
    SourcePrincipal { key: String, skip_if_absent: bool },
}

/// One header condition of a `header_value_match`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeaderCondition {
    /// Lower-cased; `:path`, `:method`, `:authority`, `:scheme` are the request's.
    pub name: String,
    pub matcher: crate::matching::StringMatcher,
    /// With a `Present` matcher: `present_match`'s value (false: matches when absent).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub present: bool,
    pub ignore_case: bool,
    pub invert: bool,
    pub missing_as_empty: bool,
}

/// A node of the rate-limit service's descriptor tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DescriptorNode {
    pub key: String,
    /// `None`: any value, each with its own counter. A trailing `*` matches by prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<Limit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub descriptors: Vec<DescriptorNode>,
}

/// A limit of the rate-limit service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limit {
    /// `None`: unlimited (matched, counted as ok, never stored).
    pub requests_per_unit: Option<u32>,
    /// Seconds per unit (second 1 … year 365 days, as the service counts them).
    pub unit_seconds: u64,
    /// The unit's name, for display.
    pub unit: String,
    /// Evaluated and counted, never refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow_mode: bool,
}

/// The rate-limit service's lookup (envoyproxy/ratelimit `GetLimit`): walk the tree entry by
/// entry, preferring `key`+`value`, then a `value` wildcard, then `key` alone; the limit is the
/// node the last entry lands on, if the descriptor has exactly as many entries as levels walked.
pub fn find_limit<'a>(
    tree: &'a [DescriptorNode],
    entries: &[(String, String)],
) -> Option<&'a Limit> {
    let mut level = tree;
    for (i, (key, value)) in entries.iter().enumerate() {
        let node = level
            .iter()
            .find(|n| n.key == *key && n.value.as_deref() == Some(value.as_str()))
            .or_else(|| {
                level.iter().find(|n| {
                    n.key == *key
                        && n.value.as_deref().is_some_and(|v| {
                            v.strip_suffix('*').is_some_and(|p| value.starts_with(p))
                        })
                })
            })
            .or_else(|| level.iter().find(|n| n.key == *key && n.value.is_none()))?;
        if i + 1 == entries.len() {
            return node.limit.as_ref();
        }
        if node.descriptors.is_empty() {
            return None;
        }
        level = &node.descriptors;
    }
    None
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
