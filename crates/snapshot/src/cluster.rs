//! Upstream clusters and their endpoints.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One upstream service at one port (and subset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub name: String,
    /// The service host (`api.github.com`), for logs and metrics.
    pub service: String,
    pub port: u16,
    pub discovery: Discovery,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    #[serde(with = "crate::route::duration")]
    pub connect_timeout: Duration,
    pub lb: LbPolicy,
    pub limits: Limits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<Outlier>,
    /// Speak HTTP/2 to the upstream (DestinationRule `h2UpgradePolicy: UPGRADE`, or
    /// protocol HTTP2/GRPC).
    #[serde(default)]
    pub http2: bool,
    /// The ServiceEntry's `addresses`: destinations its author named explicitly, which the
    /// destination IP guard lets this cluster reach even in ranges it denies by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<ipnet::IpNet>,
    /// DestinationRule `trafficPolicy.tunnel`: the endpoints are HTTP proxies, each connection
    /// asks them to `CONNECT` to this target first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<Tunnel>,
}

/// Tunnelling through an HTTP proxy (`tunnel: {protocol: CONNECT, targetHost, targetPort}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    pub target_host: String,
    pub target_port: u16,
}

/// Where endpoints come from (ServiceEntry `resolution`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    /// STATIC: these endpoints (addresses, or names resolved like DNS).
    Static { endpoints: Vec<Endpoint> },
    /// DNS / DNS_ROUND_ROBIN: resolve `host`, honouring TTLs.
    Dns { host: String, round_robin: bool },
    /// DYNAMIC_DNS (wildcard hosts): resolve the request's Host or the connection's SNI.
    DynamicDns,
    /// NONE: the destination the client connected to.
    OriginalDestination,
    /// Refuse (REGISTRY_ONLY's BlackHoleCluster).
    BlackHole,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// An IP address, or a host name to resolve.
    pub address: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LbPolicy {
    LeastRequest,
    RoundRobin,
    Random,
    Passthrough,
    /// DestinationRule `consistentHash`: the endpoint is looked up by a hash of the request
    /// (`key`) on a ring or a Maglev table (Envoy's RING_HASH and MAGLEV). Without a key, or
    /// when the request does not carry it, a random point is looked up.
    ConsistentHash {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<HashKey>,
        algorithm: HashAlgorithm,
    },
}

/// What a consistent-hash load balancer hashes (Istio's hash policy of the route).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    /// The value(s) of a request header (`httpHeaderName`, lower-cased).
    Header { name: String },
    /// A request cookie (`httpCookie`). With `ttl`, a request without the cookie gets one
    /// generated, hashed on, and set on the response (`0s`: a session cookie).
    Cookie {
        name: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        path: String,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "crate::route::opt_duration"
        )]
        ttl: Option<Duration>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attributes: Vec<CookieAttribute>,
    },
    /// The downstream peer's IP address (`useSourceIp`); also for TCP and TLS passthrough.
    SourceIp,
    /// The first value of a query parameter (`httpQueryParameterName`), as written.
    QueryParameter { name: String },
}

/// An attribute of a generated cookie (`SameSite=Strict`, `Secure`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CookieAttribute {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

/// How hashes map to endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashAlgorithm {
    /// Envoy's ring hash: each endpoint at `min_ring_size`-scaled points on a ring.
    RingHash { min_ring_size: u64 },
    /// Envoy's Maglev: a lookup table of `table_size` (a prime) entries.
    Maglev { table_size: u64 },
}

/// Circuit-breaker limits (DestinationRule `connectionPool`). `None` is no limit: Istio sets
/// Envoy's thresholds to their maximum when the DestinationRule says nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::route::opt_duration"
    )]
    pub idle_timeout: Option<Duration>,
    /// `tcp.maxConnectionDuration`: a connection made longer ago takes no new request.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::route::opt_duration"
    )]
    pub max_connection_duration: Option<Duration>,
    /// `tcp.tcpKeepalive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
}

/// SO_KEEPALIVE settings on upstream connections; `None` fields keep the system's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct TcpKeepalive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::route::opt_duration"
    )]
    pub time: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::route::opt_duration"
    )]
    pub interval: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outlier {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(with = "crate::route::duration")]
    pub interval: Duration,
    #[serde(with = "crate::route::duration")]
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
    /// Envoy's panic threshold (Istio's `minHealthPercent`): below this share of endpoints
    /// left in, every endpoint takes traffic again. `None`: only when none is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<u32>,
    /// `splitExternalLocalOriginErrors`: local-origin failures (connect failures, resets,
    /// timeouts) are counted apart, ejecting after this many in a row; responses alone count
    /// as 5xx / gateway errors. `None`: they count as 503 / 504 responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_origin_failures: Option<u32>,
}

/// TLS toward the upstream (DestinationRule `tls`). Part of the connection-pool key: two
/// clusters with different settings never share a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UpstreamTls {
    pub mode: UpstreamTlsMode,
    /// SNI to send; `None` sends the host being dialed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    pub trust: Trust,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PathBuf>,
    /// The server certificate must carry one of these names; empty: the SNI (or host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UpstreamTlsMode {
    Simple,
    Mutual,
    /// Mesh mTLS: the proxy's own workload certificate, the mesh trust bundle.
    IstioMutual,
}

/// Whom to trust for the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trust {
    /// The platform store (honours `SSL_CERT_FILE`).
    Platform,
    /// A CA bundle file (`caCertificates`).
    File(PathBuf),
    /// The mesh trust bundle (`ISTIO_MUTUAL`).
    Mesh,
    /// `insecureSkipVerify: true`.
    SkipVerify,
}
