//! `EnvoyFilter` (`networking.istio.io/v1alpha3`): patches to the Envoy configuration Istio
//! generates.
//!
//! The resource is read in full, as Istio defines it. sluice is not Envoy, so it cannot apply
//! arbitrary patches; it understands exactly one use of the API — Envoy's HTTP local rate limit
//! filter, inserted into the HTTP connection manager and optionally configured per route or
//! virtual host — and [`EnvoyFilter::local_rate_limit`] turns each patch into either that typed
//! configuration or an [`UnsupportedPatch`] that says why it is not applied.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serializer};
use serde_json::{Map, Value};

use crate::security::authorization_policy::PolicyTargetReference;
use crate::values::Duration;

/// Spec of an `EnvoyFilter`.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyFilter {
    /// Workloads (by label) the patches apply to; absent means the namespace (or every workload,
    /// in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    /// Resources the patches are attached to, instead of a workload selector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// The patches, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_patches: Vec<EnvoyConfigObjectPatch>,
    /// Order among EnvoyFilters of the same context: lower first (negative before Istio's own
    /// defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}

/// The networking API's `WorkloadSelector`: `labels`, not `matchLabels`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// True when every label of the selector is present with the same value.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// `EnvoyFilter.EnvoyConfigObjectPatch`: where, on what, and how.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyConfigObjectPatch {
    #[serde(default)]
    pub apply_to: ApplyTo,
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<EnvoyConfigObjectMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<Patch>,
}

/// `EnvoyFilter.ApplyTo`: the kind of Envoy object a patch applies to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApplyTo {
    #[default]
    Invalid,
    Listener,
    FilterChain,
    NetworkFilter,
    HttpFilter,
    RouteConfiguration,
    VirtualHost,
    HttpRoute,
    Cluster,
    ExtensionConfig,
    Bootstrap,
    ListenerFilter,
}

impl ApplyTo {
    /// The proto name (`HTTP_FILTER`).
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyTo::Invalid => "INVALID",
            ApplyTo::Listener => "LISTENER",
            ApplyTo::FilterChain => "FILTER_CHAIN",
            ApplyTo::NetworkFilter => "NETWORK_FILTER",
            ApplyTo::HttpFilter => "HTTP_FILTER",
            ApplyTo::RouteConfiguration => "ROUTE_CONFIGURATION",
            ApplyTo::VirtualHost => "VIRTUAL_HOST",
            ApplyTo::HttpRoute => "HTTP_ROUTE",
            ApplyTo::Cluster => "CLUSTER",
            ApplyTo::ExtensionConfig => "EXTENSION_CONFIG",
            ApplyTo::Bootstrap => "BOOTSTRAP",
            ApplyTo::ListenerFilter => "LISTENER_FILTER",
        }
    }
}

impl fmt::Display for ApplyTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `EnvoyFilter.PatchContext`: which proxies and traffic direction a patch applies to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PatchContext {
    #[default]
    Any,
    SidecarInbound,
    SidecarOutbound,
    Gateway,
    Waypoint,
}

impl PatchContext {
    /// The proto name (`SIDECAR_OUTBOUND`).
    pub fn as_str(self) -> &'static str {
        match self {
            PatchContext::Any => "ANY",
            PatchContext::SidecarInbound => "SIDECAR_INBOUND",
            PatchContext::SidecarOutbound => "SIDECAR_OUTBOUND",
            PatchContext::Gateway => "GATEWAY",
            PatchContext::Waypoint => "WAYPOINT",
        }
    }
}

impl fmt::Display for PatchContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `EnvoyFilter.EnvoyConfigObjectMatch`: at most one of `listener`, `routeConfiguration`,
/// `cluster`, `waypoint`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyConfigObjectMatch {
    #[serde(default)]
    pub context: PatchContext,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<ListenerMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_configuration: Option<RouteConfigurationMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<WaypointMatch>,
}

/// `EnvoyFilter.ProxyMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyMatch {
    /// RE2 regular expression on the proxy's Istio version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_version: Option<String>,
    /// Exact matches on the proxy's node metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// `EnvoyFilter.ListenerMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<u32>,
    /// Not implemented by Istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_chain: Option<FilterChainMatch>,
    /// Name of a listener filter (`envoy.filters.listener.tls_inspector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_filter: Option<String>,
    /// Listener name (`0.0.0.0_443`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `EnvoyFilter.ListenerMatch.FilterChainMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterChainMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// `raw_buffer` or `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_protocol: Option<String>,
    /// Comma-separated ALPN values (`h2,http/1.1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_protocols: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u32>,
}

/// `EnvoyFilter.ListenerMatch.FilterMatch`: a network filter, and optionally a filter inside it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_filter: Option<SubFilterMatch>,
}

/// `EnvoyFilter.ListenerMatch.SubFilterMatch`: e.g. an HTTP filter inside the HTTP connection
/// manager.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubFilterMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `EnvoyFilter.RouteConfigurationMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfigurationMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<u32>,
    /// Gateway server port name (GATEWAY context only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// `namespace/name` of the Istio Gateway (GATEWAY context only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<VirtualHostMatch>,
    /// Route configuration name (`http.8080`, `https.443.https.my-gateway.ns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `EnvoyFilter.RouteConfigurationMatch.VirtualHostMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualHostMatch {
    /// Virtual host name, `host:port` as Istio generates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A domain the virtual host serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteMatch>,
}

/// `EnvoyFilter.RouteConfigurationMatch.RouteMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// Route name: the VirtualService HTTP route's `name`, or `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub action: RouteAction,
}

/// `EnvoyFilter.RouteConfigurationMatch.RouteMatch.Action`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RouteAction {
    #[default]
    Any,
    Route,
    Redirect,
    DirectResponse,
}

/// `EnvoyFilter.ClusterMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<u32>,
    /// Fully qualified service name (a ServiceEntry host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Exact cluster name (`outbound|443||api.github.com`, `PassthroughCluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `EnvoyFilter.WaypointMatch` (WAYPOINT context only).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<WaypointRouteMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<u32>,
}

/// `EnvoyFilter.WaypointMatch.RouteMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `EnvoyFilter.Patch`.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Patch {
    #[serde(default)]
    pub operation: PatchOperation,
    /// The Envoy configuration to merge, add or insert, in Envoy's own JSON/YAML form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default)]
    pub filter_class: FilterClass,
}

/// `EnvoyFilter.Patch.Operation`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PatchOperation {
    #[default]
    Invalid,
    Merge,
    Add,
    Remove,
    InsertBefore,
    InsertAfter,
    InsertFirst,
    Replace,
}

impl PatchOperation {
    /// The proto name (`INSERT_BEFORE`).
    pub fn as_str(self) -> &'static str {
        match self {
            PatchOperation::Invalid => "INVALID",
            PatchOperation::Merge => "MERGE",
            PatchOperation::Add => "ADD",
            PatchOperation::Remove => "REMOVE",
            PatchOperation::InsertBefore => "INSERT_BEFORE",
            PatchOperation::InsertAfter => "INSERT_AFTER",
            PatchOperation::InsertFirst => "INSERT_FIRST",
            PatchOperation::Replace => "REPLACE",
        }
    }
}

impl fmt::Display for PatchOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `EnvoyFilter.Patch.FilterClass`: where an `ADD`ed filter goes relative to Istio's own.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FilterClass {
    #[default]
    Unspecified,
    /// After Istio's authentication filters.
    Authn,
    /// After Istio's authorization filters.
    Authz,
    /// Before Istio's stats filters.
    Stats,
}

// ---------------------------------------------------------------------------------------------
// sluice's understanding: Envoy's HTTP local rate limit.
// ---------------------------------------------------------------------------------------------

/// The Envoy filter name under which the local rate limit is conventionally installed.
pub const LOCAL_RATE_LIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
/// Envoy's proto type of the HTTP local rate limit configuration.
pub const LOCAL_RATE_LIMIT_TYPE: &str =
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
/// The Envoy filter name of the global rate limit (and its older name).
pub const GLOBAL_RATE_LIMIT_FILTER: &str = "envoy.filters.http.ratelimit";
const LEGACY_GLOBAL_RATE_LIMIT_FILTER: &str = "envoy.rate_limit";
/// Envoy's proto type of the HTTP global rate limit configuration (and its v2 name).
pub const GLOBAL_RATE_LIMIT_TYPE: &str = "envoy.extensions.filters.http.ratelimit.v3.RateLimit";
const LEGACY_GLOBAL_RATE_LIMIT_TYPE: &str = "envoy.config.filter.http.rate_limit.v2.RateLimit";
/// Envoy's default timeout of a rate-limit service call.
pub const GLOBAL_RATE_LIMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(20);
const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
const LEGACY_HTTP_CONNECTION_MANAGER: &str = "envoy.http_connection_manager";
const EXPR_DESCRIPTOR_TYPE: &str = "envoy.extensions.rate_limit_descriptors.expr.v3.Descriptor";
/// Envoy refuses token buckets that refill faster than this.
const MIN_FILL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// One EnvoyFilter patch that sluice applies: part of a local rate limit.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LocalRateLimitPatch {
    /// The local rate limit HTTP filter, added to the HTTP connection manager (`HTTP_FILTER`).
    Filter(Box<LocalRateLimitFilter>),
    /// The global rate limit HTTP filter (`envoy.filters.http.ratelimit`, `HTTP_FILTER`).
    Global(Box<GlobalRateLimitFilter>),
    /// Per-route or per-virtual-host settings (`HTTP_ROUTE` / `VIRTUAL_HOST` `MERGE`).
    Route(Box<RouteLocalRateLimit>),
}

impl LocalRateLimitPatch {
    /// Position of the patch in `configPatches`.
    pub fn index(&self) -> usize {
        match self {
            LocalRateLimitPatch::Filter(f) => f.index,
            LocalRateLimitPatch::Global(g) => g.index,
            LocalRateLimitPatch::Route(r) => r.index,
        }
    }
}

/// An `HTTP_FILTER` patch that inserts the local rate limit filter.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalRateLimitFilter {
    /// Position of the patch in `configPatches`.
    pub index: usize,
    /// The patch's match, as written (context, listener/filter chain, proxy).
    pub match_: EnvoyConfigObjectMatch,
    /// How it is inserted: `ADD`, `INSERT_BEFORE`, `INSERT_AFTER`, `INSERT_FIRST` or `REPLACE`.
    pub operation: PatchOperation,
    pub filter_class: FilterClass,
    /// The filter's name; per-route settings refer to it in `typed_per_filter_config`.
    pub name: String,
    /// Envoy's `disabled`: the filter only runs where a route enables it.
    pub disabled: bool,
    /// Envoy's `is_optional`.
    pub is_optional: bool,
    /// The filter-level configuration. Without a `token_bucket` it limits nothing by itself
    /// (per-route settings then carry the buckets).
    pub config: LocalRateLimit,
}

/// An `HTTP_FILTER` patch that inserts the global rate limit filter.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalRateLimitFilter {
    /// Position of the patch in `configPatches`.
    pub index: usize,
    pub match_: EnvoyConfigObjectMatch,
    pub operation: PatchOperation,
    pub name: String,
    pub disabled: bool,
    pub config: GlobalRateLimit,
}

/// Envoy's `envoy.extensions.filters.http.ratelimit.v3.RateLimit`. sluice is its own rate-limit
/// service (counters in Redis), so `rate_limit_service` is read but not dialled.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalRateLimit {
    /// The rate-limit service configuration's `domain` the descriptors are looked up in.
    pub domain: String,
    /// Only the route's `rate_limits` of this stage apply (0–10).
    #[serde(default, deserialize_with = "u32_lenient")]
    pub stage: u32,
    /// `internal`, `external` or `both` (Envoy's default).
    #[serde(
        default,
        alias = "requestType",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_type: Option<String>,
    /// How long a check may take; Envoy's default is 20ms.
    #[serde(
        default,
        deserialize_with = "opt_proto_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Refuse (500) instead of allowing when the service cannot answer.
    #[serde(default, alias = "failureModeDeny")]
    pub failure_mode_deny: bool,
    #[serde(default, alias = "rateLimitedAsResourceExhausted")]
    pub rate_limited_as_resource_exhausted: bool,
    #[serde(
        default,
        alias = "rateLimitService",
        skip_serializing_if = "Option::is_none"
    )]
    pub rate_limit_service: Option<Value>,
    #[serde(
        default,
        alias = "enableXRatelimitHeaders",
        skip_serializing_if = "Option::is_none"
    )]
    pub enable_x_ratelimit_headers: Option<XRateLimitHeadersRfcVersion>,
    #[serde(default, alias = "disableXEnvoyRatelimitedHeader")]
    pub disable_x_envoy_ratelimited_header: bool,
    /// Status of refusals; 429 unless set (Envoy ignores codes below 400).
    #[serde(
        default,
        alias = "rateLimitedStatus",
        skip_serializing_if = "Option::is_none"
    )]
    pub rate_limited_status: Option<HttpStatus>,
    /// Status when the service fails and `failure_mode_deny` holds; 500 unless set.
    #[serde(
        default,
        alias = "statusOnError",
        skip_serializing_if = "Option::is_none"
    )]
    pub status_on_error: Option<HttpStatus>,
    #[serde(default, alias = "statPrefix", skip_serializing_if = "Option::is_none")]
    pub stat_prefix: Option<String>,
}

impl GlobalRateLimit {
    /// The check's timeout, with Envoy's default.
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
            .map(|d| d.as_std())
            .unwrap_or(GLOBAL_RATE_LIMIT_TIMEOUT)
    }

    fn check(&self, path: &str) -> Result<(), String> {
        if self.domain.is_empty() {
            return Err(format!("{path}domain: required"));
        }
        if self.stage > 10 {
            return Err(format!(
                "{path}stage: {} is above Envoy's maximum of 10",
                self.stage
            ));
        }
        match self.request_type.as_deref() {
            None | Some("both") => {}
            Some(other) => {
                return Err(format!(
                    "{path}request_type: {other:?} is not supported (sluice cannot tell internal \
                     from external requests): use \"both\""
                ));
            }
        }
        Ok(())
    }
}

/// An `HTTP_ROUTE` or `VIRTUAL_HOST` `MERGE` patch: per-filter settings and/or the rate limit
/// actions that produce descriptors.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteLocalRateLimit {
    /// Position of the patch in `configPatches`.
    pub index: usize,
    /// `HTTP_ROUTE` or `VIRTUAL_HOST`.
    pub apply_to: ApplyTo,
    /// The patch's match, as written (context, route configuration / vhost / route).
    pub match_: EnvoyConfigObjectMatch,
    /// `typed_per_filter_config`: settings by filter name.
    pub per_filter_config: BTreeMap<String, LocalRateLimit>,
    /// `rate_limits` (`route.rate_limits` on a route): how request descriptors are built.
    pub rate_limits: Vec<RateLimit>,
}

/// Envoy's `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`, written in
/// Envoy's snake_case (lowerCamelCase accepted too, as protobuf JSON does).
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRateLimit {
    /// Stats prefix (required by Envoy).
    #[serde(alias = "statPrefix")]
    pub stat_prefix: String,
    /// Status of rate-limited responses; Envoy uses 429 when unset or below 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<HttpStatus>,
    #[serde(
        default,
        alias = "tokenBucket",
        skip_serializing_if = "Option::is_none"
    )]
    pub token_bucket: Option<TokenBucket>,
    /// Fraction of requests the limit is checked for; Envoy's default is 0%.
    #[serde(
        default,
        alias = "filterEnabled",
        skip_serializing_if = "Option::is_none"
    )]
    pub filter_enabled: Option<RuntimeFractionalPercent>,
    /// Fraction of checked requests actually rejected; Envoy's default is 0%.
    #[serde(
        default,
        alias = "filterEnforced",
        skip_serializing_if = "Option::is_none"
    )]
    pub filter_enforced: Option<RuntimeFractionalPercent>,
    #[serde(
        default,
        alias = "requestHeadersToAddWhenNotEnforced",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub request_headers_to_add_when_not_enforced: Vec<HeaderValueOption>,
    /// Headers added to rate-limited responses.
    #[serde(
        default,
        alias = "responseHeadersToAdd",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    /// Buckets selected by request descriptors (see [`RateLimit`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub descriptors: Vec<LocalRateLimitDescriptor>,
    #[serde(
        default,
        deserialize_with = "opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub stage: Option<u32>,
    /// One bucket per downstream connection instead of one per proxy.
    #[serde(
        default,
        alias = "localRateLimitPerDownstreamConnection",
        skip_serializing_if = "Option::is_none"
    )]
    pub local_rate_limit_per_downstream_connection: Option<bool>,
    #[serde(
        default,
        alias = "localClusterRateLimit",
        skip_serializing_if = "Option::is_none"
    )]
    pub local_cluster_rate_limit: Option<Value>,
    #[serde(
        default,
        alias = "enableXRatelimitHeaders",
        skip_serializing_if = "Option::is_none"
    )]
    pub enable_x_ratelimit_headers: Option<XRateLimitHeadersRfcVersion>,
    #[serde(
        default,
        alias = "vhRateLimits",
        skip_serializing_if = "Option::is_none"
    )]
    pub vh_rate_limits: Option<VhRateLimitsOptions>,
    #[serde(
        default,
        alias = "alwaysConsumeDefaultTokenBucket",
        skip_serializing_if = "Option::is_none"
    )]
    pub always_consume_default_token_bucket: Option<bool>,
    #[serde(
        default,
        alias = "rateLimitedAsResourceExhausted",
        skip_serializing_if = "Option::is_none"
    )]
    pub rate_limited_as_resource_exhausted: Option<bool>,
    /// Envoy's in-filter descriptor generation (not implemented by Envoy either); kept as
    /// written.
    #[serde(default, alias = "rateLimits", skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<Value>,
    #[serde(
        default,
        alias = "maxDynamicDescriptors",
        deserialize_with = "opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_dynamic_descriptors: Option<u32>,
}

impl LocalRateLimit {
    /// Fraction (0.0–1.0) of requests the limit is checked for; Envoy's default is none.
    pub fn enabled_fraction(&self) -> f64 {
        self.filter_enabled
            .as_ref()
            .map_or(0.0, RuntimeFractionalPercent::fraction)
    }

    /// Fraction (0.0–1.0) of checked requests that are rejected; Envoy's default is none.
    pub fn enforced_fraction(&self) -> f64 {
        self.filter_enforced
            .as_ref()
            .map_or(0.0, RuntimeFractionalPercent::fraction)
    }

    /// The status code of rate-limited responses (429 unless a code of 400 or more is set).
    pub fn status_code(&self) -> u16 {
        match self.status {
            Some(HttpStatus { code }) if code >= 400 => code,
            _ => 429,
        }
    }

    /// Checks Envoy's own constraints that serde cannot express.
    fn check(&self, path: &str) -> Result<(), String> {
        if self.stat_prefix.is_empty() {
            return Err(format!("{path}stat_prefix: must not be empty"));
        }
        if let Some(tb) = &self.token_bucket {
            tb.check(&format!("{path}token_bucket."))?;
        }
        for (i, d) in self.descriptors.iter().enumerate() {
            if d.entries.is_empty() {
                return Err(format!("{path}descriptors[{i}].entries: must not be empty"));
            }
            match &d.token_bucket {
                Some(tb) => tb.check(&format!("{path}descriptors[{i}].token_bucket."))?,
                None => return Err(format!("{path}descriptors[{i}].token_bucket: required")),
            }
        }
        for (i, h) in self
            .response_headers_to_add
            .iter()
            .chain(&self.request_headers_to_add_when_not_enforced)
            .enumerate()
        {
            if h.header.key.is_empty() {
                return Err(format!("{path}headers[{i}].header.key: must not be empty"));
            }
        }
        Ok(())
    }
}

/// Envoy's `type.v3.HttpStatus`; `code` is Envoy's `StatusCode` enum, written as a number or as
/// its name (`TooManyRequests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStatus {
    #[serde(deserialize_with = "status_code")]
    pub code: u16,
}

/// Envoy's `type.v3.TokenBucket`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Bucket size, and the tokens it starts with.
    #[serde(default, alias = "maxTokens", deserialize_with = "u32_lenient")]
    pub max_tokens: u32,
    /// Tokens added per interval; Envoy's default is 1.
    #[serde(
        default,
        alias = "tokensPerFill",
        deserialize_with = "opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub tokens_per_fill: Option<u32>,
    /// Refill interval (a protobuf duration: `"1s"`, `"0.5s"`, `"60s"`).
    #[serde(
        alias = "fillInterval",
        deserialize_with = "proto_duration",
        serialize_with = "ser_proto_duration"
    )]
    pub fill_interval: Duration,
}

impl TokenBucket {
    /// Tokens added per interval, with Envoy's default of 1.
    pub fn tokens_per_fill(&self) -> u32 {
        self.tokens_per_fill.unwrap_or(1)
    }

    fn check(&self, path: &str) -> Result<(), String> {
        if self.tokens_per_fill == Some(0) {
            return Err(format!("{path}tokens_per_fill: must be greater than 0"));
        }
        if self.fill_interval.as_std() < MIN_FILL_INTERVAL {
            return Err(format!(
                "{path}fill_interval: {} is shorter than Envoy's minimum of 50ms",
                ProtoDurationDisplay(self.fill_interval)
            ));
        }
        Ok(())
    }
}

/// Envoy's `config.core.v3.RuntimeFractionalPercent`. sluice has no runtime layer, so only
/// `default_value` takes effect; `runtime_key` is kept for display.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFractionalPercent {
    #[serde(alias = "defaultValue")]
    pub default_value: FractionalPercent,
    #[serde(
        default,
        alias = "runtimeKey",
        skip_serializing_if = "String::is_empty"
    )]
    pub runtime_key: String,
}

impl RuntimeFractionalPercent {
    /// The default value as a fraction in 0.0–1.0 (capped at 1.0, as Envoy does).
    pub fn fraction(&self) -> f64 {
        self.default_value.fraction()
    }
}

/// Envoy's `type.v3.FractionalPercent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FractionalPercent {
    #[serde(default, deserialize_with = "u32_lenient")]
    pub numerator: u32,
    #[serde(default)]
    pub denominator: DenominatorType,
}

impl FractionalPercent {
    /// numerator / denominator, capped at 1.0.
    pub fn fraction(&self) -> f64 {
        let denominator = match self.denominator {
            DenominatorType::Hundred => 100.0,
            DenominatorType::TenThousand => 10_000.0,
            DenominatorType::Million => 1_000_000.0,
        };
        (f64::from(self.numerator) / denominator).min(1.0)
    }
}

/// Envoy's `type.v3.FractionalPercent.DenominatorType`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DenominatorType {
    #[default]
    Hundred,
    TenThousand,
    Million,
}

/// Envoy's `config.core.v3.HeaderValueOption`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueOption {
    pub header: HeaderValue,
    /// Deprecated by Envoy in favour of `append_action`; `false` means overwrite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<bool>,
    #[serde(
        default,
        alias = "appendAction",
        skip_serializing_if = "Option::is_none"
    )]
    pub append_action: Option<HeaderAppendAction>,
    #[serde(
        default,
        alias = "keepEmptyValue",
        skip_serializing_if = "Option::is_none"
    )]
    pub keep_empty_value: Option<bool>,
}

impl HeaderValueOption {
    /// The effective action: `append_action` if set, else `append` (`true` appends, `false`
    /// overwrites), else Envoy's default (append).
    pub fn effective_action(&self) -> HeaderAppendAction {
        match (self.append_action, self.append) {
            (Some(a), _) => a,
            (None, Some(false)) => HeaderAppendAction::OverwriteIfExistsOrAdd,
            (None, _) => HeaderAppendAction::AppendIfExistsOrAdd,
        }
    }
}

/// Envoy's `config.core.v3.HeaderValue`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValue {
    pub key: String,
    #[serde(default)]
    pub value: String,
    /// Base64 bytes, used instead of `value` when set.
    #[serde(default, alias = "rawValue", skip_serializing_if = "Option::is_none")]
    pub raw_value: Option<String>,
}

/// Envoy's `config.core.v3.HeaderValueOption.HeaderAppendAction`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HeaderAppendAction {
    #[default]
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

/// Envoy's `common.ratelimit.v3.LocalRateLimitDescriptor`: a bucket for requests whose
/// descriptor is exactly `entries`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRateLimitDescriptor {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<DescriptorEntry>,
    #[serde(
        default,
        alias = "tokenBucket",
        skip_serializing_if = "Option::is_none"
    )]
    pub token_bucket: Option<TokenBucket>,
}

/// Envoy's `common.ratelimit.v3.RateLimitDescriptor.Entry`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorEntry {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// Envoy's `common.ratelimit.v3.XRateLimitHeadersRFCVersion`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum XRateLimitHeadersRfcVersion {
    #[default]
    Off,
    #[serde(rename = "DRAFT_VERSION_03")]
    DraftVersion03,
}

/// Envoy's `common.ratelimit.v3.VhRateLimitsOptions`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VhRateLimitsOptions {
    #[default]
    Override,
    Include,
    Ignore,
}

/// Envoy's `config.route.v3.RateLimit` as sluice understands it: the actions whose results,
/// in order, form one request descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    pub stage: u32,
    /// Runtime key that disables this rate limit (kept for display; sluice has no runtime).
    pub disable_key: Option<String>,
    pub actions: Vec<RateLimitAction>,
}

/// One descriptor entry producer of a [`RateLimit`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RateLimitAction {
    /// `("source_cluster", <local service cluster>)`.
    SourceCluster,
    /// `("destination_cluster", <routed cluster>)`.
    DestinationCluster,
    /// `(descriptor_key, <value of header_name>)`; skipped when absent and `skip_if_absent`.
    RequestHeaders {
        header_name: String,
        descriptor_key: String,
        skip_if_absent: bool,
    },
    /// `("remote_address", <client address>)`.
    RemoteAddress,
    /// `(descriptor_key or "generic_key", descriptor_value)`.
    GenericKey {
        descriptor_value: String,
        descriptor_key: Option<String>,
    },
    /// `(descriptor_key or "header_match", descriptor_value)` when the request's headers match
    /// `headers` (all of them) as `expect_match` says.
    HeaderValueMatch {
        descriptor_key: Option<String>,
        descriptor_value: String,
        expect_match: bool,
        headers: Vec<HeaderMatcher>,
    },
    /// `("masked_remote_address", <client address masked to a CIDR>)`.
    MaskedRemoteAddress {
        v4_prefix_mask_len: Option<u32>,
        v6_prefix_mask_len: Option<u32>,
    },
    /// The `expr` descriptor extension: `(descriptor_key, <CEL expression text>)`.
    Expression {
        descriptor_key: String,
        text: String,
        skip_if_error: bool,
    },
}

/// Envoy's `config.route.v3.HeaderMatcher`, as rate limit actions use it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatcher {
    /// The header (`:path`, `:method`, `:authority` and `:scheme` are the request's).
    pub name: String,
    pub matcher: HeaderMatch,
    pub ignore_case: bool,
    pub invert_match: bool,
    pub treat_missing_header_as_empty: bool,
}

/// What a [`HeaderMatcher`] compares the header's value with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HeaderMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// RE2 syntax, matched against the whole value.
    Regex(String),
    /// `present_match`: the header is there (true) or absent (false).
    Present(bool),
}

/// Why sluice does not apply a patch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configPatches[{index}] ({apply_to} {operation}): {reason}")]
pub struct UnsupportedPatch {
    /// Position of the patch in `configPatches`.
    pub index: usize,
    pub apply_to: ApplyTo,
    pub operation: PatchOperation,
    pub reason: UnsupportedReason,
}

/// The reason in an [`UnsupportedPatch`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsupportedReason {
    #[error(
        "sluice applies only Envoy's local and global rate limits (HTTP_FILTER, HTTP_ROUTE and \
         VIRTUAL_HOST patches); {0} patches are not supported"
    )]
    ApplyTo(ApplyTo),
    #[error("operation {operation} is not supported on {apply_to} (supported: {supported})")]
    Operation {
        apply_to: ApplyTo,
        operation: PatchOperation,
        supported: &'static str,
    },
    #[error("context {0} is not supported (sluice has no waypoint)")]
    Context(PatchContext),
    #[error("an {apply_to} patch cannot match on {matched}; it would never apply")]
    Match {
        apply_to: ApplyTo,
        matched: &'static str,
    },
    #[error(
        "HTTP filters live in envoy.filters.network.http_connection_manager; a match on \
         network filter {0:?} never applies"
    )]
    NotHttpConnectionManager(String),
    #[error("the patch has no `patch` section")]
    MissingPatch,
    #[error("the patch has no value")]
    MissingValue,
    #[error("the patch value must be an object")]
    ValueNotObject,
    #[error("`{0}` in the patch value is not supported by sluice")]
    ValueField(String),
    #[error("filters delivered by config_discovery (ECDS) are not supported")]
    ConfigDiscovery,
    #[error(
        "filter type {0:?} is not supported; sluice implements only \
         envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
    )]
    FilterType(String),
    #[error("invalid rate limit configuration: {0}")]
    InvalidConfig(String),
    #[error("rate limit action `{0}` is not supported")]
    RateLimitAction(String),
}

impl EnvoyFilter {
    /// sluice's reading of every patch, in order: the local rate limit configuration it
    /// carries, or why it is not applied. Never panics, whatever the patch holds.
    pub fn local_rate_limit(&self) -> Vec<Result<LocalRateLimitPatch, UnsupportedPatch>> {
        self.config_patches
            .iter()
            .enumerate()
            .map(|(index, patch)| {
                recognise(index, patch).map_err(|reason| UnsupportedPatch {
                    index,
                    apply_to: patch.apply_to,
                    operation: patch
                        .patch
                        .as_ref()
                        .map(|p| p.operation)
                        .unwrap_or_default(),
                    reason,
                })
            })
            .collect()
    }
}

fn recognise(
    index: usize,
    p: &EnvoyConfigObjectPatch,
) -> Result<LocalRateLimitPatch, UnsupportedReason> {
    let m = p.match_.clone().unwrap_or_default();
    match p.apply_to {
        ApplyTo::HttpFilter | ApplyTo::HttpRoute | ApplyTo::VirtualHost => {}
        other => return Err(UnsupportedReason::ApplyTo(other)),
    }
    if m.context == PatchContext::Waypoint || m.waypoint.is_some() {
        return Err(UnsupportedReason::Context(PatchContext::Waypoint));
    }
    let patch = p.patch.as_ref().ok_or(UnsupportedReason::MissingPatch)?;
    let value = match &patch.value {
        None => return Err(UnsupportedReason::MissingValue),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(UnsupportedReason::ValueNotObject),
    };
    let mismatch = |matched| UnsupportedReason::Match {
        apply_to: p.apply_to,
        matched,
    };
    if p.apply_to == ApplyTo::HttpFilter {
        if m.route_configuration.is_some() {
            return Err(mismatch("a route configuration"));
        }
        if m.cluster.is_some() {
            return Err(mismatch("a cluster"));
        }
        let network_filter = m
            .listener
            .as_ref()
            .and_then(|l| l.filter_chain.as_ref())
            .and_then(|fc| fc.filter.as_ref())
            .and_then(|f| f.name.as_deref())
            .filter(|n| *n != HTTP_CONNECTION_MANAGER && *n != LEGACY_HTTP_CONNECTION_MANAGER);
        if let Some(name) = network_filter {
            return Err(UnsupportedReason::NotHttpConnectionManager(name.to_owned()));
        }
        match patch.operation {
            PatchOperation::Add
            | PatchOperation::InsertBefore
            | PatchOperation::InsertAfter
            | PatchOperation::InsertFirst
            | PatchOperation::Replace => {}
            operation => {
                return Err(UnsupportedReason::Operation {
                    apply_to: p.apply_to,
                    operation,
                    supported: "ADD, INSERT_BEFORE, INSERT_AFTER, INSERT_FIRST, REPLACE",
                });
            }
        }
        let filter = http_filter(value)?;
        Ok(match filter.3 {
            FilterConfig::Local(config) => {
                LocalRateLimitPatch::Filter(Box::new(LocalRateLimitFilter {
                    index,
                    match_: m,
                    operation: patch.operation,
                    filter_class: patch.filter_class,
                    name: filter.0,
                    disabled: filter.1,
                    is_optional: filter.2,
                    config,
                }))
            }
            FilterConfig::Global(config) => {
                LocalRateLimitPatch::Global(Box::new(GlobalRateLimitFilter {
                    index,
                    match_: m,
                    operation: patch.operation,
                    name: filter.0,
                    disabled: filter.1,
                    config,
                }))
            }
        })
    } else {
        if m.listener.is_some() {
            return Err(mismatch("a listener"));
        }
        if m.cluster.is_some() {
            return Err(mismatch("a cluster"));
        }
        if patch.operation != PatchOperation::Merge {
            return Err(UnsupportedReason::Operation {
                apply_to: p.apply_to,
                operation: patch.operation,
                supported: "MERGE",
            });
        }
        let (per_filter_config, rate_limits) = route_value(p.apply_to, value)?;
        Ok(LocalRateLimitPatch::Route(Box::new(RouteLocalRateLimit {
            index,
            apply_to: p.apply_to,
            match_: m,
            per_filter_config,
            rate_limits,
        })))
    }
}

/// The configuration of a rate limit filter sluice runs.
enum FilterConfig {
    Local(LocalRateLimit),
    Global(GlobalRateLimit),
}

/// An Envoy `HttpFilter` value: name, disabled, is_optional, configuration.
fn http_filter(
    value: &Map<String, Value>,
) -> Result<(String, bool, bool, FilterConfig), UnsupportedReason> {
    let mut name = None;
    let mut typed_config = None;
    let mut disabled = false;
    let mut is_optional = false;
    for (key, v) in value {
        match key.as_str() {
            "name" => name = v.as_str(),
            "typed_config" | "typedConfig" => typed_config = Some(v),
            "disabled" => disabled = bool_field(key, v)?,
            "is_optional" | "isOptional" => is_optional = bool_field(key, v)?,
            "config_discovery" | "configDiscovery" => {
                return Err(UnsupportedReason::ConfigDiscovery);
            }
            other => return Err(UnsupportedReason::ValueField(other.to_owned())),
        }
    }
    let name = name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| UnsupportedReason::InvalidConfig("the filter has no name".into()))?;
    let Some(typed_config) = typed_config else {
        return Err(
            if [
                LOCAL_RATE_LIMIT_FILTER,
                GLOBAL_RATE_LIMIT_FILTER,
                LEGACY_GLOBAL_RATE_LIMIT_FILTER,
            ]
            .contains(&name)
            {
                UnsupportedReason::InvalidConfig("typed_config is required".into())
            } else {
                UnsupportedReason::FilterType(name.to_owned())
            },
        );
    };
    let config = match unwrap_typed(typed_config, "typed_config.")? {
        (LOCAL_RATE_LIMIT_TYPE, payload, at) => {
            FilterConfig::Local(local_rate_limit_payload(payload, &at)?)
        }
        (GLOBAL_RATE_LIMIT_TYPE | LEGACY_GLOBAL_RATE_LIMIT_TYPE, payload, at) => {
            let config: GlobalRateLimit = typed_payload(payload, &at)?;
            config
                .check(&at)
                .map_err(UnsupportedReason::InvalidConfig)?;
            FilterConfig::Global(config)
        }
        (other, _, _) => return Err(UnsupportedReason::FilterType(other.to_owned())),
    };
    Ok((name.to_owned(), disabled, is_optional, config))
}

fn bool_field(key: &str, v: &Value) -> Result<bool, UnsupportedReason> {
    v.as_bool()
        .ok_or_else(|| UnsupportedReason::InvalidConfig(format!("{key}: expected true or false")))
}

/// The value of an `HTTP_ROUTE` / `VIRTUAL_HOST` MERGE: `typed_per_filter_config` and rate
/// limit actions.
fn route_value(
    apply_to: ApplyTo,
    value: &Map<String, Value>,
) -> Result<(BTreeMap<String, LocalRateLimit>, Vec<RateLimit>), UnsupportedReason> {
    let mut per_filter = BTreeMap::new();
    let mut rate_limits = Vec::new();
    for (key, v) in value {
        match (key.as_str(), apply_to) {
            ("typed_per_filter_config" | "typedPerFilterConfig", _) => {
                let Value::Object(filters) = v else {
                    return Err(UnsupportedReason::InvalidConfig(format!(
                        "{key}: expected a map of filter name to configuration"
                    )));
                };
                for (filter, config) in filters {
                    let parsed = local_rate_limit_config(config, &format!("{key}.{filter}."))?;
                    if parsed.token_bucket.is_none() {
                        return Err(UnsupportedReason::InvalidConfig(format!(
                            "{key}.{filter}.token_bucket: required in per-route configuration"
                        )));
                    }
                    per_filter.insert(filter.clone(), parsed);
                }
            }
            ("route", ApplyTo::HttpRoute) => {
                let Value::Object(route) = v else {
                    return Err(UnsupportedReason::InvalidConfig(
                        "route: expected an object".into(),
                    ));
                };
                for (rkey, rv) in route {
                    match rkey.as_str() {
                        "rate_limits" | "rateLimits" => {
                            rate_limits.extend(parse_rate_limits(&format!("route.{rkey}"), rv)?);
                        }
                        other => {
                            return Err(UnsupportedReason::ValueField(format!("route.{other}")));
                        }
                    }
                }
            }
            ("rate_limits" | "rateLimits", ApplyTo::VirtualHost) => {
                rate_limits.extend(parse_rate_limits(key, v)?);
            }
            (other, _) => return Err(UnsupportedReason::ValueField(other.to_owned())),
        }
    }
    if per_filter.is_empty() && rate_limits.is_empty() {
        return Err(UnsupportedReason::MissingValue);
    }
    Ok((per_filter, rate_limits))
}

/// Decodes a per-filter config holding a `LocalRateLimit`, directly or in a `TypedStruct`.
fn local_rate_limit_config(v: &Value, path: &str) -> Result<LocalRateLimit, UnsupportedReason> {
    match unwrap_typed(v, path)? {
        (LOCAL_RATE_LIMIT_TYPE, payload, at) => local_rate_limit_payload(payload, &at),
        (other, _, _) => Err(UnsupportedReason::FilterType(other.to_owned())),
    }
}

fn local_rate_limit_payload(payload: Value, at: &str) -> Result<LocalRateLimit, UnsupportedReason> {
    let config: LocalRateLimit = typed_payload(payload, at)?;
    config.check(at).map_err(UnsupportedReason::InvalidConfig)?;
    Ok(config)
}

/// A `typed_config` written directly (`@type` and the fields) or as a `TypedStruct`: the
/// message type's name, its fields, and the path of those fields for messages.
fn unwrap_typed<'a>(
    v: &'a Value,
    path: &str,
) -> Result<(&'a str, Value, String), UnsupportedReason> {
    let invalid = |msg: String| UnsupportedReason::InvalidConfig(format!("{path}{msg}"));
    let Value::Object(obj) = v else {
        return Err(invalid("expected an object with an @type".into()));
    };
    let Some(ty) = obj.get("@type").and_then(Value::as_str) else {
        return Err(invalid("@type is missing".into()));
    };
    match type_name(ty) {
        "udpa.type.v1.TypedStruct" | "xds.type.v3.TypedStruct" => {
            let mut inner_type = None;
            let mut inner_value = None;
            for (key, field) in obj {
                match key.as_str() {
                    "@type" => {}
                    "type_url" | "typeUrl" => inner_type = field.as_str(),
                    "value" => inner_value = Some(field),
                    other => return Err(invalid(format!("{other}: unknown TypedStruct field"))),
                }
            }
            let Some(inner_type) = inner_type else {
                return Err(invalid("type_url is missing".into()));
            };
            let payload = match inner_value {
                None => Value::Object(Map::new()),
                Some(v @ Value::Object(_)) => v.clone(),
                Some(_) => return Err(invalid("value: expected an object".into())),
            };
            Ok((type_name(inner_type), payload, format!("{path}value.")))
        }
        name => {
            let mut fields = obj.clone();
            fields.remove("@type");
            Ok((name, Value::Object(fields), path.to_owned()))
        }
    }
}

/// Deserializes a filter's fields, naming the offending field on failure.
fn typed_payload<T: serde::de::DeserializeOwned>(
    payload: Value,
    payload_path: &str,
) -> Result<T, UnsupportedReason> {
    serde_path_to_error::deserialize(payload).map_err(|e| {
        let at = e.path().to_string();
        let msg = e.into_inner().to_string();
        if at == "." {
            UnsupportedReason::InvalidConfig(format!("{payload_path}: {msg}"))
        } else {
            UnsupportedReason::InvalidConfig(format!("{payload_path}{at}: {msg}"))
        }
    })
}

/// `type.googleapis.com/a.b.C` → `a.b.C`.
fn type_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

fn parse_rate_limits(path: &str, v: &Value) -> Result<Vec<RateLimit>, UnsupportedReason> {
    let invalid = |msg: String| UnsupportedReason::InvalidConfig(format!("{path}{msg}"));
    let Value::Array(items) = v else {
        return Err(invalid(": expected a list".into()));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(fields) = item else {
            return Err(invalid(format!("[{i}]: expected an object")));
        };
        let mut rl = RateLimit::default();
        for (key, fv) in fields {
            match key.as_str() {
                "stage" => {
                    rl.stage = u32_value(fv)
                        .ok_or_else(|| invalid(format!("[{i}].stage: expected a number")))?;
                }
                "disable_key" | "disableKey" => {
                    rl.disable_key = Some(
                        fv.as_str()
                            .ok_or_else(|| invalid(format!("[{i}].{key}: expected a string")))?
                            .to_owned(),
                    );
                }
                "actions" => {
                    let Value::Array(actions) = fv else {
                        return Err(invalid(format!("[{i}].actions: expected a list")));
                    };
                    for (j, a) in actions.iter().enumerate() {
                        rl.actions
                            .push(rate_limit_action(&format!("{path}[{i}].actions[{j}]"), a)?);
                    }
                }
                other => {
                    return Err(UnsupportedReason::ValueField(format!(
                        "{path}[{i}].{other}"
                    )));
                }
            }
        }
        if rl.actions.is_empty() {
            return Err(invalid(format!("[{i}].actions: must not be empty")));
        }
        out.push(rl);
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestHeadersAction {
    #[serde(alias = "headerName")]
    header_name: String,
    #[serde(alias = "descriptorKey")]
    descriptor_key: String,
    #[serde(default, alias = "skipIfAbsent")]
    skip_if_absent: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GenericKeyAction {
    #[serde(alias = "descriptorValue")]
    descriptor_value: String,
    #[serde(default, alias = "descriptorKey")]
    descriptor_key: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MaskedRemoteAddressAction {
    #[serde(default, alias = "v4PrefixMaskLen", deserialize_with = "opt_u32")]
    v4_prefix_mask_len: Option<u32>,
    #[serde(default, alias = "v6PrefixMaskLen", deserialize_with = "opt_u32")]
    v6_prefix_mask_len: Option<u32>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyAction {}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderValueMatchAction {
    #[serde(default, alias = "descriptorKey")]
    descriptor_key: Option<String>,
    #[serde(alias = "descriptorValue")]
    descriptor_value: String,
    #[serde(default, alias = "expectMatch")]
    expect_match: Option<bool>,
    headers: Vec<HeaderMatcherFields>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderMatcherFields {
    name: String,
    #[serde(default, alias = "exactMatch")]
    exact_match: Option<String>,
    #[serde(default, alias = "prefixMatch")]
    prefix_match: Option<String>,
    #[serde(default, alias = "suffixMatch")]
    suffix_match: Option<String>,
    #[serde(default, alias = "containsMatch")]
    contains_match: Option<String>,
    #[serde(default, alias = "safeRegexMatch")]
    safe_regex_match: Option<RegexMatcherFields>,
    #[serde(default, alias = "presentMatch")]
    present_match: Option<bool>,
    #[serde(default, alias = "stringMatch")]
    string_match: Option<StringMatcherFields>,
    #[serde(default, alias = "invertMatch")]
    invert_match: bool,
    #[serde(default, alias = "treatMissingHeaderAsEmpty")]
    treat_missing_header_as_empty: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RegexMatcherFields {
    #[serde(default, alias = "googleRe2")]
    #[allow(dead_code)] // accepted as Envoy does; RE2 is the only engine
    google_re2: Option<Value>,
    regex: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StringMatcherFields {
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    contains: Option<String>,
    #[serde(default, alias = "safeRegex")]
    safe_regex: Option<RegexMatcherFields>,
    #[serde(default, alias = "ignoreCase")]
    ignore_case: bool,
}

impl HeaderMatcherFields {
    fn into_matcher(self) -> Result<HeaderMatcher, String> {
        let mut ignore_case = false;
        let mut found = Vec::new();
        if let Some(v) = self.exact_match {
            found.push(HeaderMatch::Exact(v));
        }
        if let Some(v) = self.prefix_match {
            found.push(HeaderMatch::Prefix(v));
        }
        if let Some(v) = self.suffix_match {
            found.push(HeaderMatch::Suffix(v));
        }
        if let Some(v) = self.contains_match {
            found.push(HeaderMatch::Contains(v));
        }
        if let Some(v) = self.safe_regex_match {
            found.push(HeaderMatch::Regex(v.regex));
        }
        if let Some(v) = self.present_match {
            found.push(HeaderMatch::Present(v));
        }
        if let Some(sm) = self.string_match {
            ignore_case = sm.ignore_case;
            let mut inner = Vec::new();
            if let Some(v) = sm.exact {
                inner.push(HeaderMatch::Exact(v));
            }
            if let Some(v) = sm.prefix {
                inner.push(HeaderMatch::Prefix(v));
            }
            if let Some(v) = sm.suffix {
                inner.push(HeaderMatch::Suffix(v));
            }
            if let Some(v) = sm.contains {
                inner.push(HeaderMatch::Contains(v));
            }
            if let Some(v) = sm.safe_regex {
                inner.push(HeaderMatch::Regex(v.regex));
            }
            if inner.len() != 1 {
                return Err(
                    "string_match: expected exactly one of exact, prefix, suffix, \
                            contains, safe_regex"
                        .into(),
                );
            }
            found.extend(inner);
        }
        // Envoy: a matcher with no rule matches when the header is present.
        let matcher = match found.len() {
            0 => HeaderMatch::Present(true),
            1 => found.remove(0),
            _ => return Err("more than one match rule".into()),
        };
        Ok(HeaderMatcher {
            name: self.name.to_ascii_lowercase(),
            matcher,
            ignore_case,
            invert_match: self.invert_match,
            treat_missing_header_as_empty: self.treat_missing_header_as_empty,
        })
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExprDescriptor {
    #[serde(alias = "descriptorKey")]
    descriptor_key: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    parsed: Option<Value>,
    #[serde(default, alias = "skipIfError")]
    skip_if_error: bool,
}

fn rate_limit_action(path: &str, v: &Value) -> Result<RateLimitAction, UnsupportedReason> {
    let invalid = |msg: String| UnsupportedReason::InvalidConfig(format!("{path}{msg}"));
    let Value::Object(fields) = v else {
        return Err(invalid(": expected an object".into()));
    };
    let mut iter = fields.iter();
    let (kind, body) = match (iter.next(), iter.next()) {
        (Some(only), None) => only,
        _ => return Err(invalid(": expected exactly one action".into())),
    };
    fn typed<T: serde::de::DeserializeOwned>(
        path: &str,
        kind: &str,
        body: &Value,
    ) -> Result<T, UnsupportedReason> {
        serde_path_to_error::deserialize(body.clone()).map_err(|e| {
            let at = e.path().to_string();
            let at = if at == "." {
                String::new()
            } else {
                format!(".{at}")
            };
            UnsupportedReason::InvalidConfig(format!("{path}.{kind}{at}: {}", e.into_inner()))
        })
    }
    Ok(match kind.as_str() {
        "source_cluster" | "sourceCluster" => {
            typed::<EmptyAction>(path, kind, body)?;
            RateLimitAction::SourceCluster
        }
        "destination_cluster" | "destinationCluster" => {
            typed::<EmptyAction>(path, kind, body)?;
            RateLimitAction::DestinationCluster
        }
        "remote_address" | "remoteAddress" => {
            typed::<EmptyAction>(path, kind, body)?;
            RateLimitAction::RemoteAddress
        }
        "request_headers" | "requestHeaders" => {
            let a: RequestHeadersAction = typed(path, kind, body)?;
            RateLimitAction::RequestHeaders {
                header_name: a.header_name,
                descriptor_key: a.descriptor_key,
                skip_if_absent: a.skip_if_absent,
            }
        }
        "generic_key" | "genericKey" => {
            let a: GenericKeyAction = typed(path, kind, body)?;
            RateLimitAction::GenericKey {
                descriptor_value: a.descriptor_value,
                descriptor_key: a.descriptor_key.filter(|k| !k.is_empty()),
            }
        }
        "masked_remote_address" | "maskedRemoteAddress" => {
            let a: MaskedRemoteAddressAction = typed(path, kind, body)?;
            RateLimitAction::MaskedRemoteAddress {
                v4_prefix_mask_len: a.v4_prefix_mask_len,
                v6_prefix_mask_len: a.v6_prefix_mask_len,
            }
        }
        "header_value_match" | "headerValueMatch" => {
            let a: HeaderValueMatchAction = typed(path, kind, body)?;
            let mut headers = Vec::with_capacity(a.headers.len());
            for (i, h) in a.headers.into_iter().enumerate() {
                headers.push(h.into_matcher().map_err(|e| {
                    UnsupportedReason::InvalidConfig(format!("{path}.{kind}.headers[{i}]: {e}"))
                })?);
            }
            RateLimitAction::HeaderValueMatch {
                descriptor_key: a.descriptor_key.filter(|k| !k.is_empty()),
                descriptor_value: a.descriptor_value,
                expect_match: a.expect_match.unwrap_or(true),
                headers,
            }
        }
        "extension" => expression_action(path, body)?,
        other => return Err(UnsupportedReason::RateLimitAction(other.to_owned())),
    })
}

/// The `extension` action: only the `expr` descriptor with a CEL `text` is understood.
fn expression_action(path: &str, body: &Value) -> Result<RateLimitAction, UnsupportedReason> {
    let invalid = |msg: String| UnsupportedReason::InvalidConfig(format!("{path}.extension{msg}"));
    let Value::Object(ext) = body else {
        return Err(invalid(": expected an object".into()));
    };
    let mut typed_config = None;
    for (key, v) in ext {
        match key.as_str() {
            "name" => {}
            "typed_config" | "typedConfig" => typed_config = Some(v),
            other => return Err(invalid(format!(".{other}: unknown field"))),
        }
    }
    let Some(Value::Object(tc)) = typed_config else {
        return Err(invalid(".typed_config: required".into()));
    };
    let ty = tc.get("@type").and_then(Value::as_str).unwrap_or_default();
    let payload = match type_name(ty) {
        "udpa.type.v1.TypedStruct" | "xds.type.v3.TypedStruct" => {
            let inner = tc
                .get("type_url")
                .or_else(|| tc.get("typeUrl"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if type_name(inner) != EXPR_DESCRIPTOR_TYPE {
                return Err(UnsupportedReason::RateLimitAction(format!(
                    "extension {inner}"
                )));
            }
            tc.get("value")
                .cloned()
                .unwrap_or_else(|| Value::Object(Map::new()))
        }
        EXPR_DESCRIPTOR_TYPE => {
            let mut fields = tc.clone();
            fields.remove("@type");
            Value::Object(fields)
        }
        _ => {
            return Err(UnsupportedReason::RateLimitAction(format!(
                "extension {ty}"
            )));
        }
    };
    let d: ExprDescriptor = serde_path_to_error::deserialize(payload).map_err(|e| {
        let at = e.path().to_string();
        invalid(format!(".typed_config.value.{at}: {}", e.into_inner()))
    })?;
    if d.parsed.is_some() {
        return Err(UnsupportedReason::RateLimitAction(
            "extension expr with a parsed expression".into(),
        ));
    }
    let Some(text) = d.text.filter(|t| !t.is_empty()) else {
        return Err(invalid(".typed_config.value.text: required".into()));
    };
    Ok(RateLimitAction::Expression {
        descriptor_key: d.descriptor_key,
        text,
        skip_if_error: d.skip_if_error,
    })
}

// ---------------------------------------------------------------------------------------------
// Protobuf JSON scalars.
// ---------------------------------------------------------------------------------------------

/// A uint32 as protobuf JSON allows it: a number, or a string holding one.
fn u32_value(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn u32_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = Value::deserialize(d)?;
    u32_value(&v).ok_or_else(|| {
        serde::de::Error::custom(format!("expected an unsigned 32-bit integer, found {v}"))
    })
}

fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    u32_lenient(d).map(Some)
}

/// Envoy's `StatusCode` enum names.
const STATUS_CODES: &[(&str, u16)] = &[
    ("Continue", 100),
    ("OK", 200),
    ("Created", 201),
    ("Accepted", 202),
    ("NonAuthoritativeInformation", 203),
    ("NoContent", 204),
    ("ResetContent", 205),
    ("PartialContent", 206),
    ("MultiStatus", 207),
    ("AlreadyReported", 208),
    ("IMUsed", 226),
    ("MultipleChoices", 300),
    ("MovedPermanently", 301),
    ("Found", 302),
    ("SeeOther", 303),
    ("NotModified", 304),
    ("UseProxy", 305),
    ("TemporaryRedirect", 307),
    ("PermanentRedirect", 308),
    ("BadRequest", 400),
    ("Unauthorized", 401),
    ("PaymentRequired", 402),
    ("Forbidden", 403),
    ("NotFound", 404),
    ("MethodNotAllowed", 405),
    ("NotAcceptable", 406),
    ("ProxyAuthenticationRequired", 407),
    ("RequestTimeout", 408),
    ("Conflict", 409),
    ("Gone", 410),
    ("LengthRequired", 411),
    ("PreconditionFailed", 412),
    ("PayloadTooLarge", 413),
    ("URITooLong", 414),
    ("UnsupportedMediaType", 415),
    ("RangeNotSatisfiable", 416),
    ("ExpectationFailed", 417),
    ("MisdirectedRequest", 421),
    ("UnprocessableEntity", 422),
    ("Locked", 423),
    ("FailedDependency", 424),
    ("UpgradeRequired", 426),
    ("PreconditionRequired", 428),
    ("TooManyRequests", 429),
    ("RequestHeaderFieldsTooLarge", 431),
    ("InternalServerError", 500),
    ("NotImplemented", 501),
    ("BadGateway", 502),
    ("ServiceUnavailable", 503),
    ("GatewayTimeout", 504),
    ("HTTPVersionNotSupported", 505),
    ("VariantAlsoNegotiates", 506),
    ("InsufficientStorage", 507),
    ("LoopDetected", 508),
    ("NotExtended", 510),
    ("NetworkAuthenticationRequired", 511),
];

fn status_code<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let v = Value::deserialize(d)?;
    let code = match &v {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => STATUS_CODES
            .iter()
            .find(|(name, _)| name == s)
            .map(|(_, code)| *code)
            .or_else(|| s.parse().ok()),
        _ => None,
    };
    match code {
        Some(c) if (100..=599).contains(&c) => Ok(c),
        _ => Err(serde::de::Error::custom(format!(
            "unknown HTTP status code {v} (write e.g. 429 or TooManyRequests)"
        ))),
    }
}

/// Parses a protobuf JSON duration: decimal seconds with an `s` suffix (`"1s"`, `"0.5s"`).
fn parse_proto_duration(s: &str) -> Result<Duration, String> {
    let err = |why: &str| format!("invalid duration {s:?}: {why} (write e.g. \"1s\", \"0.5s\")");
    let body = s
        .strip_suffix('s')
        .ok_or_else(|| err("protobuf durations are seconds with an `s` suffix"))?;
    if body.starts_with('-') {
        return Err(err("must not be negative"));
    }
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if !body.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(err(
            "protobuf durations are decimal seconds with an `s` suffix",
        ));
    }
    if int.is_empty() && frac.is_empty() || !digits(int) || !digits(frac) || frac.len() > 9 {
        return Err(err("malformed number"));
    }
    let secs: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| err("too large"))?
    };
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let padded = format!("{frac:0<9}");
        padded.parse().map_err(|_| err("malformed number"))?
    };
    Ok(Duration(std::time::Duration::new(secs, nanos)))
}

fn opt_proto_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    proto_duration(d).map(Some)
}

fn proto_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_proto_duration(&s).map_err(serde::de::Error::custom)
}

/// Prints a duration in protobuf JSON form (`60s`, `0.5s`).
struct ProtoDurationDisplay(Duration);

impl fmt::Display for ProtoDurationDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0.as_std();
        let nanos = d.subsec_nanos();
        if nanos == 0 {
            write!(f, "{}s", d.as_secs())
        } else {
            let frac = format!("{nanos:09}");
            write!(f, "{}.{}s", d.as_secs(), frac.trim_end_matches('0'))
        }
    }
}

fn ser_proto_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&ProtoDurationDisplay(*d))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<EnvoyFilter, String> {
        serde_json::from_value::<EnvoyFilter>(v).map_err(|e| e.to_string())
    }

    fn limits() -> Value {
        json!({
            "filter_enabled": {
                "runtime_key": "local_rate_limit_enabled",
                "default_value": {"numerator": 100, "denominator": "HUNDRED"}
            },
            "filter_enforced": {
                "runtime_key": "local_rate_limit_enforced",
                "default_value": {"numerator": 100, "denominator": "HUNDRED"}
            }
        })
    }

    fn with(mut base: Value, extra: Value) -> Value {
        if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
            b.extend(e);
        }
        base
    }

    /// guide/envoyfilter-egress-ratelimit.yaml, spec.
    fn guide_filter() -> Value {
        json!({
            "workloadSelector": {"labels": {"istio": "egressgateway"}},
            "configPatches": [{
                "applyTo": "HTTP_FILTER",
                "match": {
                    "context": "GATEWAY",
                    "listener": {"filterChain": {"filter": {
                        "name": "envoy.filters.network.http_connection_manager",
                        "subFilter": {"name": "envoy.filters.http.router"}
                    }}}
                },
                "patch": {
                    "operation": "INSERT_BEFORE",
                    "value": {
                        "name": "envoy.filters.http.local_ratelimit",
                        "typed_config": {
                            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                            "type_url": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                            "value": with(limits(), json!({
                                "stat_prefix": "http_local_rate_limiter",
                                "token_bucket": {"max_tokens": 100, "tokens_per_fill": 10, "fill_interval": "1s"},
                                "response_headers_to_add": [
                                    {"append": false, "header": {"key": "x-rate-limited", "value": "true"}}
                                ]
                            }))
                        }
                    }
                }
            }]
        })
    }

    fn only_filter(ef: &EnvoyFilter) -> LocalRateLimitFilter {
        let mut out = ef.local_rate_limit();
        assert_eq!(out.len(), 1, "{out:?}");
        match out.pop() {
            Some(Ok(LocalRateLimitPatch::Filter(f))) => *f,
            other => panic!("expected a filter patch, got {other:?}"),
        }
    }

    #[test]
    fn guide_filter_is_read_in_full() {
        let ef = parse(guide_filter()).expect("guide envoy filter");
        assert_eq!(
            ef.workload_selector
                .as_ref()
                .map(|s| s.labels["istio"].as_str()),
            Some("egressgateway")
        );
        let p = &ef.config_patches[0];
        assert_eq!(p.apply_to, ApplyTo::HttpFilter);
        let m = p.match_.as_ref().expect("match");
        assert_eq!(m.context, PatchContext::Gateway);
        let filter = m
            .listener
            .as_ref()
            .and_then(|l| l.filter_chain.as_ref())
            .and_then(|fc| fc.filter.as_ref())
            .expect("filter match");
        assert_eq!(
            filter.sub_filter.as_ref().and_then(|s| s.name.as_deref()),
            Some("envoy.filters.http.router")
        );
        assert_eq!(
            p.patch.as_ref().map(|p| p.operation),
            Some(PatchOperation::InsertBefore)
        );
    }

    #[test]
    fn guide_filter_is_a_local_rate_limit() {
        let ef = parse(guide_filter()).expect("guide envoy filter");
        let f = only_filter(&ef);
        assert_eq!(f.index, 0);
        assert_eq!(f.name, LOCAL_RATE_LIMIT_FILTER);
        assert_eq!(f.operation, PatchOperation::InsertBefore);
        assert_eq!(f.match_.context, PatchContext::Gateway);
        let c = &f.config;
        assert_eq!(c.stat_prefix, "http_local_rate_limiter");
        let tb = c.token_bucket.expect("token bucket");
        assert_eq!(tb.max_tokens, 100);
        assert_eq!(tb.tokens_per_fill(), 10);
        assert_eq!(tb.fill_interval, Duration::from_secs(1));
        assert_eq!(c.enabled_fraction(), 1.0);
        assert_eq!(c.enforced_fraction(), 1.0);
        assert_eq!(c.status_code(), 429);
        let h = &c.response_headers_to_add[0];
        assert_eq!(
            (h.header.key.as_str(), h.header.value.as_str()),
            ("x-rate-limited", "true")
        );
        assert_eq!(
            h.effective_action(),
            HeaderAppendAction::OverwriteIfExistsOrAdd
        );
    }

    #[test]
    fn istio_task_filter_is_a_local_rate_limit() {
        // acceptance/istio-tasks/rate-limit/06-local_rate_limit_2.yaml, spec.
        let ef = parse(json!({
            "workloadSelector": {"labels": {"app": "productpage"}},
            "configPatches": [{
                "applyTo": "HTTP_FILTER",
                "match": {
                    "context": "SIDECAR_INBOUND",
                    "listener": {"filterChain": {"filter": {"name": "envoy.filters.network.http_connection_manager"}}}
                },
                "patch": {
                    "operation": "INSERT_BEFORE",
                    "value": {
                        "name": "envoy.filters.http.local_ratelimit",
                        "typed_config": {
                            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                            "type_url": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                            "value": with(limits(), json!({
                                "stat_prefix": "http_local_rate_limiter",
                                "token_bucket": {"max_tokens": 4, "tokens_per_fill": 4, "fill_interval": "60s"},
                                "response_headers_to_add": [
                                    {"append": false, "header": {"key": "x-local-rate-limit", "value": "true"}}
                                ]
                            }))
                        }
                    }
                }
            }]
        }))
        .expect("task filter");
        let f = only_filter(&ef);
        assert_eq!(f.match_.context, PatchContext::SidecarInbound);
        let tb = f.config.token_bucket.expect("bucket");
        assert_eq!((tb.max_tokens, tb.tokens_per_fill()), (4, 4));
        assert_eq!(tb.fill_interval, Duration::from_secs(60));
        assert_eq!(
            f.config.response_headers_to_add[0].header.key,
            "x-local-rate-limit"
        );
    }

    #[test]
    fn per_route_form_is_recognised() {
        // acceptance/istio-tasks/rate-limit/07-local_rate_limit_3.yaml, spec.
        let ef = parse(json!({
            "workloadSelector": {"labels": {"app": "productpage"}},
            "configPatches": [
                {
                    "applyTo": "HTTP_FILTER",
                    "match": {
                        "context": "SIDECAR_INBOUND",
                        "listener": {"filterChain": {"filter": {"name": "envoy.filters.network.http_connection_manager"}}}
                    },
                    "patch": {
                        "operation": "INSERT_BEFORE",
                        "value": {
                            "name": "envoy.filters.http.local_ratelimit",
                            "typed_config": {
                                "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                                "type_url": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                                "value": {"stat_prefix": "http_local_rate_limiter"}
                            }
                        }
                    }
                },
                {
                    "applyTo": "HTTP_ROUTE",
                    "match": {
                        "context": "SIDECAR_INBOUND",
                        "routeConfiguration": {"vhost": {"name": "inbound|http|9080", "route": {"action": "ANY"}}}
                    },
                    "patch": {
                        "operation": "MERGE",
                        "value": {"typed_per_filter_config": {"envoy.filters.http.local_ratelimit": {
                            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                            "type_url": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                            "value": with(limits(), json!({
                                "stat_prefix": "http_local_rate_limiter",
                                "token_bucket": {"max_tokens": 4, "tokens_per_fill": 4, "fill_interval": "60s"},
                                "response_headers_to_add": [
                                    {"append": false, "header": {"key": "x-local-rate-limit", "value": "true"}}
                                ]
                            }))
                        }}}
                    }
                }
            ]
        }))
        .expect("per-route filter");
        let out = ef.local_rate_limit();
        let Some(Ok(LocalRateLimitPatch::Filter(f))) = out.first() else {
            panic!("expected the filter first: {out:?}");
        };
        assert!(f.config.token_bucket.is_none());
        assert_eq!(f.config.enabled_fraction(), 0.0);
        let Some(Ok(LocalRateLimitPatch::Route(r))) = out.get(1) else {
            panic!("expected the route patch: {out:?}");
        };
        assert_eq!(r.index, 1);
        assert_eq!(r.apply_to, ApplyTo::HttpRoute);
        assert_eq!(
            r.match_
                .route_configuration
                .as_ref()
                .and_then(|rc| rc.vhost.as_ref())
                .and_then(|v| v.name.as_deref()),
            Some("inbound|http|9080")
        );
        let cfg = &r.per_filter_config[LOCAL_RATE_LIMIT_FILTER];
        assert_eq!(
            cfg.token_bucket.map(|tb| tb.fill_interval),
            Some(Duration::from_secs(60))
        );
        assert_eq!(cfg.enforced_fraction(), 1.0);
        assert!(r.rate_limits.is_empty());
    }

    #[test]
    fn descriptors_and_expression_actions_are_recognised() {
        // acceptance/outbound-traffic-policy/local-ratelimit/enable_envoy_local_ratelimit_sa.yaml
        let ef = parse(json!({
            "workloadSelector": {"labels": {"app": "srv"}},
            "configPatches": [
                {
                    "applyTo": "HTTP_FILTER",
                    "match": {"context": "SIDECAR_INBOUND"},
                    "patch": {"operation": "INSERT_BEFORE", "value": {
                        "name": "envoy.filters.http.local_ratelimit",
                        "typed_config": {
                            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                            "type_url": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                            "value": with(limits(), json!({
                                "stat_prefix": "http_local_rate_limiter",
                                "token_bucket": {"max_tokens": 1000, "tokens_per_fill": 1000, "fill_interval": "1s"},
                                "response_headers_to_add": [
                                    {"append": false, "header": {"key": "x-local-rate-limit", "value": "true"}}
                                ],
                                "descriptors": [{
                                    "entries": [{"key": "client_id", "value": "spiffe://cluster.local/ns/echo/sa/clt"}],
                                    "token_bucket": {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "600s"}
                                }]
                            }))
                        }
                    }}
                },
                {
                    "applyTo": "HTTP_ROUTE",
                    "match": {"context": "SIDECAR_INBOUND", "routeConfiguration": {"vhost": {"name": "inbound|http|80"}}},
                    "patch": {"operation": "MERGE", "value": {"route": {"rate_limits": [{"actions": [{
                        "extension": {"name": "custom", "typed_config": {
                            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                            "type_url": "type.googleapis.com/envoy.extensions.rate_limit_descriptors.expr.v3.Descriptor",
                            "value": {"descriptor_key": "client_id", "text": "connection.uri_san_peer_certificate"}
                        }}
                    }]}]}}}
                }
            ]
        }))
        .expect("descriptor filter");
        let out = ef.local_rate_limit();
        let Some(Ok(LocalRateLimitPatch::Filter(f))) = out.first() else {
            panic!("{out:?}");
        };
        let d = &f.config.descriptors[0];
        assert_eq!(d.entries[0].key, "client_id");
        assert_eq!(
            d.token_bucket.map(|tb| tb.fill_interval),
            Some(Duration::from_secs(600))
        );
        let Some(Ok(LocalRateLimitPatch::Route(r))) = out.get(1) else {
            panic!("{out:?}");
        };
        assert_eq!(
            r.rate_limits[0].actions,
            [RateLimitAction::Expression {
                descriptor_key: "client_id".into(),
                text: "connection.uri_san_peer_certificate".into(),
                skip_if_error: false,
            }]
        );
    }

    #[test]
    fn direct_typed_config_and_vhost_rate_limits_are_recognised() {
        let ef = parse(json!({"configPatches": [
            {
                "applyTo": "HTTP_FILTER",
                "patch": {"operation": "ADD", "filterClass": "AUTHZ", "value": {
                    "name": "my-limit",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                        "stat_prefix": "x",
                        "status": {"code": "ServiceUnavailable"},
                        "token_bucket": {"max_tokens": "5", "fill_interval": "0.5s"},
                        "filter_enabled": {"default_value": {"numerator": 50}},
                        "local_rate_limit_per_downstream_connection": true,
                        "response_headers_to_add": [{"append_action": "ADD_IF_ABSENT", "header": {"key": "a", "value": "b"}}]
                    }
                }}
            },
            {
                "applyTo": "VIRTUAL_HOST",
                "match": {"context": "GATEWAY", "routeConfiguration": {"vhost": {"name": ""}}},
                "patch": {"operation": "MERGE", "value": {"rate_limits": [{"actions": [
                    {"request_headers": {"header_name": ":path", "descriptor_key": "PATH"}},
                    {"generic_key": {"descriptor_value": "api"}},
                    {"remote_address": {}}
                ]}]}}
            }
        ]}))
        .expect("direct config");
        let out = ef.local_rate_limit();
        let Some(Ok(LocalRateLimitPatch::Filter(f))) = out.first() else {
            panic!("{out:?}");
        };
        assert_eq!(f.name, "my-limit");
        assert_eq!(f.filter_class, FilterClass::Authz);
        assert_eq!(f.config.status_code(), 503);
        let tb = f.config.token_bucket.expect("bucket");
        assert_eq!((tb.max_tokens, tb.tokens_per_fill()), (5, 1));
        assert_eq!(tb.fill_interval, Duration::from_millis(500));
        assert_eq!(f.config.enabled_fraction(), 0.5);
        assert_eq!(
            f.config.local_rate_limit_per_downstream_connection,
            Some(true)
        );
        assert_eq!(
            f.config.response_headers_to_add[0].effective_action(),
            HeaderAppendAction::AddIfAbsent
        );
        let back = serde_json::to_value(&f.config).expect("serialize");
        assert_eq!(
            back.pointer("/token_bucket/fill_interval"),
            Some(&json!("0.5s"))
        );
        let Some(Ok(LocalRateLimitPatch::Route(r))) = out.get(1) else {
            panic!("{out:?}");
        };
        assert_eq!(r.apply_to, ApplyTo::VirtualHost);
        assert_eq!(r.rate_limits[0].actions.len(), 3);
        assert_eq!(r.rate_limits[0].actions[2], RateLimitAction::RemoteAddress);
    }

    fn unsupported(spec: Value) -> UnsupportedPatch {
        let ef = parse(spec).expect("parses as an EnvoyFilter");
        match ef.local_rate_limit().pop() {
            Some(Err(e)) => e,
            other => panic!("expected an unsupported patch, got {other:?}"),
        }
    }

    #[test]
    fn cluster_merge_is_unsupported() {
        let e = unsupported(json!({"configPatches": [{
            "applyTo": "CLUSTER",
            "match": {"context": "SIDECAR_OUTBOUND", "cluster": {"service": "api.github.com", "portNumber": 443}},
            "patch": {"operation": "MERGE", "value": {"connect_timeout": "1s"}}
        }]}));
        assert_eq!(e.index, 0);
        assert_eq!(e.apply_to, ApplyTo::Cluster);
        assert_eq!(e.operation, PatchOperation::Merge);
        assert_eq!(e.reason, UnsupportedReason::ApplyTo(ApplyTo::Cluster));
        let msg = e.to_string();
        assert!(msg.contains("configPatches[0] (CLUSTER MERGE)"), "{msg}");
    }

    /// The Istio task's global rate limit filter (02-global_rate_limit_3.yaml) and its
    /// `header_value_match` action (05-global_rate_limit_advanced_case_2.yaml).
    #[test]
    fn global_rate_limit_and_header_value_match_are_recognised() {
        let ef = parse(json!({"configPatches": [{
            "applyTo": "HTTP_FILTER",
            "match": {"context": "GATEWAY", "listener": {"filterChain": {"filter": {"name": "envoy.filters.network.http_connection_manager"}}}},
            "patch": {"operation": "INSERT_BEFORE", "value": {
                "name": "envoy.filters.http.ratelimit",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                    "domain": "ratelimit",
                    "failure_mode_deny": true,
                    "timeout": "10s"
                }
            }}
        }, {
            "applyTo": "HTTP_ROUTE",
            "patch": {"operation": "MERGE", "value": {"route": {"rate_limits": [{"actions": [
                {"header_value_match": {"descriptor_key": "PATH", "descriptor_value": "api", "headers": [
                    {"name": ":path", "safe_regex_match": {"google_re2": {}, "regex": "/api/v1/products/[1-9]{1,2}"}}
                ]}}
            ]}]}}}
        }]}))
        .expect("parses");
        let out = ef.local_rate_limit();
        let Some(Ok(LocalRateLimitPatch::Global(g))) = out.first() else {
            panic!("{out:?}");
        };
        assert_eq!(g.config.domain, "ratelimit");
        assert!(g.config.failure_mode_deny);
        assert_eq!(g.config.timeout(), std::time::Duration::from_secs(10));
        let Some(Ok(LocalRateLimitPatch::Route(r))) = out.get(1) else {
            panic!("{out:?}");
        };
        assert_eq!(
            r.rate_limits[0].actions[0],
            RateLimitAction::HeaderValueMatch {
                descriptor_key: Some("PATH".into()),
                descriptor_value: "api".into(),
                expect_match: true,
                headers: vec![HeaderMatcher {
                    name: ":path".into(),
                    matcher: HeaderMatch::Regex("/api/v1/products/[1-9]{1,2}".into()),
                    ignore_case: false,
                    invert_match: false,
                    treat_missing_header_as_empty: false,
                }],
            }
        );
        // A global filter without a domain is Envoy's error too.
        let e = unsupported(json!({"configPatches": [{
            "applyTo": "HTTP_FILTER",
            "patch": {"operation": "INSERT_BEFORE", "value": {
                "name": "envoy.filters.http.ratelimit",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                    "domain": ""
                }
            }}
        }]}));
        assert!(
            matches!(e.reason, UnsupportedReason::InvalidConfig(_)),
            "{e}"
        );
    }

    #[test]
    fn other_patches_are_unsupported_with_a_reason() {
        // Another filter than the rate limits.
        let e = unsupported(json!({"configPatches": [{
            "applyTo": "HTTP_FILTER",
            "patch": {"operation": "INSERT_BEFORE", "value": {
                "name": "envoy.filters.http.ext_authz",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
                }
            }}
        }]}));
        assert!(
            matches!(&e.reason, UnsupportedReason::FilterType(t) if t.ends_with("ExtAuthz")),
            "{e}"
        );
        // Removing a filter.
        let e = unsupported(json!({"configPatches": [{
            "applyTo": "HTTP_FILTER",
            "patch": {"operation": "REMOVE"}
        }]}));
        assert_eq!(e.reason, UnsupportedReason::MissingValue);
        let e = unsupported(json!({"configPatches": [{
            "applyTo": "HTTP_FILTER",
            "patch": {"operation": "MERGE", "value": {"name": "envoy.filters.http.local_ratelimit"}}
        }]}));
        assert!(
            matches!(e.reason, UnsupportedReason::Operation { .. }),
            "{e}"
        );
        // A filter match on a non-HTTP network filter.
        let e = unsupported(json!({"configPatches": [{
            "applyTo": "HTTP_FILTER",
            "match": {"listener": {"filterChain": {"filter": {"name": "envoy.filters.network.tcp_proxy"}}}},
            "patch": {"operation": "ADD", "value": {"name": "x"}}
        }]}));
        assert_eq!(
            e.reason,
            UnsupportedReason::NotHttpConnectionManager("envoy.filters.network.tcp_proxy".into())
        );
        // An HCM MERGE.
        let e = unsupported(json!({"configPatches": [{
            "applyTo": "NETWORK_FILTER",
            "patch": {"operation": "MERGE", "value": {"name": "envoy.filters.network.http_connection_manager"}}
        }]}));
        assert_eq!(e.reason, UnsupportedReason::ApplyTo(ApplyTo::NetworkFilter));
        // Extra route fields next to the rate limit.
        let e = unsupported(json!({"configPatches": [{
            "applyTo": "HTTP_ROUTE",
            "patch": {"operation": "MERGE", "value": {"route": {"timeout": "1s"}}}
        }]}));
        assert_eq!(
            e.reason,
            UnsupportedReason::ValueField("route.timeout".into())
        );
    }

    #[test]
    fn invalid_local_rate_limit_settings_are_named() {
        let spec = |value: Value| {
            json!({"configPatches": [{
                "applyTo": "HTTP_FILTER",
                "patch": {"operation": "ADD", "value": {
                    "name": "envoy.filters.http.local_ratelimit",
                    "typed_config": {
                        "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                        "type_url": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                        "value": value
                    }
                }}
            }]})
        };
        let cases = [
            (
                json!({"stat_prefix": "x", "token_bucket": {"max_tokens": 1, "fill_interval": "1m"}}),
                "token_bucket.fill_interval",
            ),
            (
                json!({"stat_prefix": "x", "token_bucket": {"max_tokens": 1, "fill_interval": "0.01s"}}),
                "50ms",
            ),
            (
                json!({"stat_prefix": "x", "token_bucket": {"max_tokens": -1, "fill_interval": "1s"}}),
                "max_tokens",
            ),
            (
                json!({"stat_prefix": "x", "tokens_bucket": {}}),
                "tokens_bucket",
            ),
            (
                json!({"token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}),
                "stat_prefix",
            ),
            (
                json!({"stat_prefix": "x", "filter_enabled": {"default_value": {"numerator": 1, "denominator": "THOUSAND"}}}),
                "THOUSAND",
            ),
            (
                json!({"stat_prefix": "x", "status": {"code": "Teapot"}}),
                "Teapot",
            ),
        ];
        for (value, needle) in cases {
            let e = unsupported(spec(value.clone()));
            let msg = e.to_string();
            assert!(
                matches!(e.reason, UnsupportedReason::InvalidConfig(_)) && msg.contains(needle),
                "{value}: {msg}"
            );
        }
    }

    #[test]
    fn unknown_field_is_rejected_by_name() {
        let err = parse(json!({"configPatches": [{"applyTo": "HTTP_FILTER", "patches": {}}]}))
            .expect_err("unknown field");
        assert!(err.contains("patches"), "{err}");
        let err = parse(json!({"workloadSelector": {"matchLabels": {"a": "b"}}}))
            .expect_err("matchLabels is not EnvoyFilter's selector");
        assert!(err.contains("matchLabels"), "{err}");
    }

    #[test]
    fn unknown_enum_value_is_rejected_by_name() {
        let err =
            parse(json!({"configPatches": [{"applyTo": "HTTP_FILTERS"}]})).expect_err("applyTo");
        assert!(err.contains("HTTP_FILTERS"), "{err}");
        let err = parse(
            json!({"configPatches": [{"applyTo": "CLUSTER", "match": {"context": "INBOUND"}}]}),
        )
        .expect_err("context");
        assert!(err.contains("INBOUND"), "{err}");
        let err = parse(json!({"configPatches": [{"patch": {"operation": "PREPEND"}}]}))
            .expect_err("operation");
        assert!(err.contains("PREPEND"), "{err}");
    }

    #[test]
    fn every_match_field_round_trips() {
        let v = json!({
            "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "egress"}],
            "priority": -10,
            "configPatches": [
                {"applyTo": "LISTENER", "match": {
                    "context": "SIDECAR_OUTBOUND",
                    "proxy": {"proxyVersion": "^1\\.2.*", "metadata": {"ROUTER_MODE": "sni-dnat"}},
                    "listener": {
                        "portNumber": 443, "portName": "https", "listenerFilter": "envoy.filters.listener.tls_inspector",
                        "name": "0.0.0.0_443",
                        "filterChain": {"name": "fc", "sni": "a.example.com", "transportProtocol": "tls",
                            "applicationProtocols": "h2,http/1.1", "destinationPort": 443,
                            "filter": {"name": "envoy.filters.network.tcp_proxy"}}
                    }
                }, "patch": {"operation": "REMOVE", "filterClass": "UNSPECIFIED"}},
                {"applyTo": "ROUTE_CONFIGURATION", "match": {"context": "ANY", "routeConfiguration": {
                    "portNumber": 80, "portName": "http", "gateway": "istio-system/egress", "name": "http.80",
                    "vhost": {"name": "a:80", "domainName": "a", "route": {"name": "default", "action": "DIRECT_RESPONSE"}}
                }}, "patch": {"operation": "MERGE", "value": {}, "filterClass": "UNSPECIFIED"}},
                {"applyTo": "CLUSTER", "match": {"context": "ANY", "cluster": {
                    "portNumber": 443, "service": "a", "subset": "v1", "name": "outbound|443|v1|a"
                }}},
                {"applyTo": "HTTP_FILTER", "match": {"context": "WAYPOINT", "waypoint": {
                    "filter": {"name": "f", "subFilter": {"name": "g"}}, "route": {"name": "r"}, "portNumber": 8080
                }}},
                {"applyTo": "BOOTSTRAP"}, {"applyTo": "LISTENER_FILTER"}, {"applyTo": "EXTENSION_CONFIG"},
                {"applyTo": "FILTER_CHAIN"}, {"applyTo": "INVALID"}
            ]
        });
        let ef = parse(v.clone()).expect("every field");
        assert_eq!(ef.priority, Some(-10));
        assert_eq!(serde_json::to_value(&ef).ok(), Some(v));
        let out = ef.local_rate_limit();
        assert_eq!(out.len(), 9);
        assert!(out.iter().all(Result::is_err));
        let Some(Err(e)) = out.get(3) else {
            panic!("{out:?}");
        };
        assert_eq!(e.reason, UnsupportedReason::Context(PatchContext::Waypoint));
    }

    #[test]
    fn hostile_values_do_not_panic() {
        for value in [
            json!(null),
            json!([]),
            json!("x"),
            json!({"typed_config": 3}),
            json!({"name": 1, "typed_config": {"@type": 2}}),
            json!({"name": "n", "typed_config": {"@type": "/", "value": []}}),
            json!({"name": "n", "typed_config": {"@type": "x/udpa.type.v1.TypedStruct", "type_url": 1}}),
            json!({"typed_per_filter_config": {"a": null}}),
            json!({"route": {"rate_limits": [{"actions": [{}]}]}}),
            json!({"route": {"rate_limits": [{"actions": [{"extension": {"typed_config": {"@type": ""}}}]}]}}),
            json!({"route": {"rate_limits": [{"stage": 99999999999u64, "actions": []}]}}),
        ] {
            for apply_to in ["HTTP_FILTER", "HTTP_ROUTE", "VIRTUAL_HOST"] {
                for op in ["ADD", "MERGE"] {
                    let ef = parse(json!({"configPatches": [
                        {"applyTo": apply_to, "patch": {"operation": op, "value": value.clone()}}
                    ]}));
                    if let Ok(ef) = ef {
                        assert!(ef.local_rate_limit()[0].is_err(), "{apply_to} {op} {value}");
                    }
                }
            }
        }
    }

    #[test]
    fn proto_durations() {
        assert_eq!(parse_proto_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(
            parse_proto_duration("0.25s"),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(parse_proto_duration(".5s"), Ok(Duration::from_millis(500)));
        for bad in [
            "1",
            "1m",
            "-1s",
            "s",
            "1.2.3s",
            "1.0000000001s",
            "ab s",
            "99999999999999999999s",
        ] {
            assert!(parse_proto_duration(bad).is_err(), "{bad}");
        }
        for (d, s) in [
            (Duration::from_secs(60), "60s"),
            (Duration::from_millis(1500), "1.5s"),
        ] {
            assert_eq!(ProtoDurationDisplay(d).to_string(), s);
        }
    }
}
