//! The compiled routing state: what a sluice proxy listens on, how it routes, where it sends.
//!
//! A [`Snapshot`] is an immutable value built by `sluice-compile` from Istio resources and
//! swapped whole into the running proxy; a connection reads the snapshot current when it starts
//! and keeps it to its end. It speaks Envoy's vocabulary (listeners, filter chains, routes,
//! clusters, endpoints), not Istio's, holds no I/O handles, and serializes deterministically:
//! `/config_dump` and `sluice proxy-config` print it as it is.

pub mod authz;
pub mod cel;
pub mod cluster;
pub mod listener;
pub mod matching;
pub mod ratelimit;
pub mod route;
pub mod telemetry;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use cluster::{Cluster, Discovery, Endpoint, LbPolicy, UpstreamTls};
pub use listener::{App, FilterChain, Listener, ServerTls};
pub use matching::{HostMatch, Regex, StringMatcher};
pub use route::{Route, RouteAction, RouteMatch, VirtualHost};

/// Names Envoy and Istio give to the clusters of refused and of unrouted-but-allowed traffic.
pub const BLACK_HOLE_CLUSTER: &str = "BlackHoleCluster";
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";

/// Which proxy this snapshot drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The egress gateway: listeners are bound on the Gateway servers' ports.
    Gateway,
    /// Beside a workload: listeners are virtual, one per destination port, reached through the
    /// explicit proxy.
    Sidecar,
}

/// What the sidecar does with traffic to a host no route names (Istio's
/// `outboundTrafficPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundPolicy {
    /// To `BlackHoleCluster`: HTTP 502, TLS/TCP closed.
    RegistryOnly,
    /// To `PassthroughCluster`: the original destination.
    AllowAny,
}

/// How request paths are normalised before authorization and routing, and as forwarded
/// (meshConfig `pathNormalization.normalization`; Istio's `DEFAULT` is `BASE`). Each mode is the
/// Envoy setting Istio gives its proxies for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalization {
    /// Paths are used as received (Istio warns this leaves DENY policies on paths bypassable).
    None,
    /// Envoy's `normalize_path`: RFC 3986 dot segments, unreserved escapes decoded, `\` as `/`.
    #[default]
    Base,
    /// `BASE`, then Envoy's `merge_slashes`.
    MergeSlashes,
    /// `%2F` and `%5C` decoded first (`path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD`),
    /// then `MERGE_SLASHES`.
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    pub fn is_base(&self) -> bool {
        *self == PathNormalization::Base
    }
}

/// Where and how each request or connection is logged (meshConfig `accessLogFile` and
/// `accessLogFormat`, Telemetry `accessLogging`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AccessLog {
    /// `None`: no access log. `/dev/stdout` is the usual value.
    pub path: Option<String>,
    /// Envoy format string; `None` for Istio's default text format.
    pub format: Option<String>,
    /// Emit JSON objects instead of text.
    pub json: bool,
    /// A CEL expression (Telemetry `accessLogging[].filter.expression`): an entry is written
    /// when it is true, and not when it is false or fails. `None`: every entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub role: Role,
    /// Labels of the proxy's workload (selects Gateways and policies).
    pub labels: BTreeMap<String, String>,
    /// Sorted by port.
    pub listeners: Vec<Listener>,
    /// By cluster name (`outbound|443||api.github.com`, `outbound|5432|replica|db.example.com`).
    pub clusters: BTreeMap<String, Cluster>,
    pub outbound_policy: OutboundPolicy,
    pub access_log: AccessLog,
    /// What the Telemetry resources that apply to this proxy configure: access logs that
    /// replace `access_log`, changes to Istio's metrics.
    #[serde(default, skip_serializing_if = "telemetry::Telemetry::is_default")]
    pub telemetry: telemetry::Telemetry,
    /// AuthorizationPolicies that apply to this proxy's workload, compiled.
    #[serde(default)]
    pub authz: authz::Policies,
    /// Envoy's HTTP local rate limit, by HTTP route configuration name (`http.80`): what the
    /// EnvoyFilters that select this proxy configure.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rate_limits: BTreeMap<String, ratelimit::HttpRateLimits>,
    /// The rate-limit service's descriptor trees, by domain (global rate limits).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rate_limit_domains: BTreeMap<String, Vec<ratelimit::DescriptorNode>>,
    /// Sidecar role: where a flow goes that no listener, chain or virtual host takes — the
    /// outbound policy compiled into routes, as Istio compiles it (`allow_any` to
    /// `PassthroughCluster`, `block_all` to `BlackHoleCluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// `BASE` (Istio's default) when absent, and not written then: snapshots from before this
    /// field read, and print, as they did.
    #[serde(default, skip_serializing_if = "PathNormalization::is_base")]
    pub path_normalization: PathNormalization,
}

/// The routes of traffic to destinations nothing registered (Istio's `allow_any` /
/// `block_all` virtual host and its PassthroughCluster / BlackHoleCluster TCP route).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fallback {
    /// Appended to every HTTP chain of a sidecar, too (domain `*`, so any other virtual host
    /// is more specific).
    pub http: VirtualHost,
    pub tcp: route::TcpRoute,
    /// The hosts ServiceEntries register for this proxy (patterns as written) and the ports
    /// they declare: a registered host on a port none of them declares is refused, not taken
    /// by this fallback.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registered: BTreeMap<String, Vec<u16>>,
}

impl Snapshot {
    /// An empty snapshot: listens on nothing, routes nothing.
    pub fn empty(role: Role) -> Self {
        Snapshot {
            role,
            labels: BTreeMap::new(),
            listeners: Vec::new(),
            clusters: BTreeMap::new(),
            outbound_policy: OutboundPolicy::AllowAny,
            access_log: AccessLog::default(),
            telemetry: telemetry::Telemetry::default(),
            authz: authz::Policies::default(),
            rate_limits: BTreeMap::new(),
            rate_limit_domains: BTreeMap::new(),
            fallback: None,
            path_normalization: PathNormalization::Base,
        }
    }

    pub fn listener(&self, port: u16) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.port == port)
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.get(name)
    }
}

/// Istio's cluster name: `outbound|<port>|<subset>|<host>`.
pub fn cluster_name(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}
