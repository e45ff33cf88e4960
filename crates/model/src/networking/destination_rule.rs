//! `DestinationRule` (networking.istio.io): what happens to traffic for a host after routing:
//! upstream TLS, connection pools, outlier detection, load balancing, subsets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::values::{Duration, PortSelector, WorkloadSelector};

/// Istio's `DestinationRule` spec.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRule {
    /// Registry host the rule applies to (short names are relative to the rule's namespace).
    pub host: String,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,

    /// Namespaces that can see this rule: `.`, `*` or names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,

    /// Restricts the rule to the selected workloads of its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
}

/// Policies for a destination (or, inside a subset, for that subset).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTLSSettings>,

    /// Per-port policies; a port entry replaces (does not merge with) the settings above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,

    /// Tunnel TCP to the host through HTTP CONNECT/POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelSettings>,

    /// Send a PROXY protocol header upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,

    /// Limit on concurrent retries relative to active requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

impl TrafficPolicy {
    /// The port-level policy for a port number, if one is given.
    pub fn port_settings(&self, port: u32) -> Option<&PortTrafficPolicy> {
        self.port_level_settings
            .iter()
            .find(|p| p.port.is_some_and(|s| s.number == port))
    }
}

/// `TrafficPolicy.PortTrafficPolicy`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTLSSettings>,
}

/// `TrafficPolicy.TunnelSettings`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSettings {
    /// `CONNECT` (default) or `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,

    pub target_host: String,

    pub target_port: u32,
}

/// `TrafficPolicy.ProxyProtocol`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyProtocol {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<ProxyProtocolVersion>,
}

/// `TrafficPolicy.ProxyProtocol.VERSION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
pub enum ProxyProtocolVersion {
    /// Text format.
    #[default]
    V1,
    /// Binary format.
    V2,
}

/// `TrafficPolicy.RetryBudget`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Allowed concurrent retries as a percentage of active plus pending requests (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,

    /// Retries always allowed regardless of the percentage (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retry_concurrency: Option<u32>,

    /// Window of past requests counted in the budget; only active requests when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_interval: Option<Duration>,
}

/// A named group of endpoints selected by labels, with its own policy.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    pub name: String,

    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Overrides the rule-level policy for this subset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Load balancing. `simple` and `consistentHash` are a oneof.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<SimpleLB>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHashLB>,

    /// Replaces the mesh-wide locality settings entirely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLoadBalancerSetting>,

    /// Deprecated: use `warmup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_duration_secs: Option<Duration>,

    /// Slow start for new endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<WarmupConfiguration>,
}

/// `LoadBalancerSettings.SimpleLB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLB {
    /// Let the proxy choose.
    #[default]
    Unspecified,
    /// Deprecated alias of LEAST_REQUEST.
    LeastConn,
    Random,
    /// Forward to the original destination address, no balancing.
    Passthrough,
    RoundRobin,
    LeastRequest,
}

/// `LoadBalancerSettings.ConsistentHashLB`. The hash key (`httpHeaderName`, `httpCookie`,
/// `useSourceIp`, `httpQueryParameterName`) is a oneof, and so is the algorithm (`ringHash`,
/// `maglev`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashLB {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<HTTPCookie>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<MagLev>,

    /// Deprecated: use `ringHash.minimumRingSize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

/// `ConsistentHashLB.RingHash`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

/// `ConsistentHashLB.MagLev`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MagLev {
    /// Must be a prime (65537 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
}

/// `ConsistentHashLB.HTTPCookie`: hash on a cookie, generating it when `ttl` is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HTTPCookie {
    pub name: String,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,

    /// Lifetime of a generated cookie; `0s` makes it a session cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,

    /// Extra attributes of a generated cookie (e.g. `SameSite`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<HTTPCookieAttribute>,
}

/// One attribute of a generated cookie.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HTTPCookieAttribute {
    pub name: String,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Slow start of new endpoints.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmupConfiguration {
    pub duration: Duration,

    /// Starting weight as a percentage of the full one (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_percent: Option<f64>,

    /// Ramp-up curve (1.0 = linear).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggression: Option<f64>,
}

/// Per-host connection limits (circuit breaking).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TCPSettings>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HTTPSettings>,
}

/// `ConnectionPoolSettings.TCPSettings`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TCPSettings {
    /// Maximum HTTP/1 or TCP connections to a host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i32>,

    /// Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,

    /// Connections are closed after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,

    /// Close after this long without bytes either way (default 1h; `0s` disables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

/// `TCPSettings.TcpKeepalive`: SO_KEEPALIVE with optional overrides of the OS defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Duration>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
}

/// `ConnectionPoolSettings.HTTPSettings`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HTTPSettings {
    /// Requests queued waiting for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<i32>,

    /// Active requests to a host (HTTP/1.1 and HTTP/2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<i32>,

    /// 1 disables keep-alive; 0/unset is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<i32>,

    /// Outstanding retries across all hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i32>,

    /// Close pooled connections idle (no active requests) this long (default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,

    /// Use the client's HTTP version upstream (disables `h2UpgradePolicy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_client_protocol: Option<bool>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<i32>,
}

/// `HTTPSettings.H2UpgradePolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// Mesh default.
    #[default]
    Default,
    DoNotUpgrade,
    Upgrade,
}

/// Ejection of misbehaving hosts from the pool.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Deprecated: use `consecutive5xxErrors` / `consecutiveGatewayErrors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_errors: Option<i32>,

    /// Count local-origin failures (connect errors, timeouts) separately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_external_local_origin_errors: Option<bool>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failures: Option<u32>,

    /// 502/503/504 (or connect failures for TCP); 0 disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,

    /// Any 5xx (or connect failures for TCP); default 5, 0 disables.
    #[serde(
        rename = "consecutive5xxErrors",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_5xx_errors: Option<u32>,

    /// Time between ejection sweeps (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,

    /// Minimum ejection time, multiplied by the number of ejections (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<i32>,

    /// Outlier detection pauses when fewer hosts than this percentage are healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<i32>,
}

/// Upstream TLS (origination) settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTLSSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ClientTLSMode>,

    /// Path of the client certificate (MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,

    /// Path of the client private key (MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,

    /// Path of the CA bundle verifying the server; the platform store when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,

    /// Secret holding the client certificate, key and CA (instead of paths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,

    /// Accepted SANs of the server certificate (overrides the ServiceEntry's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,

    /// SNI to send; derived from the request's host when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,

    /// Skip verification of the server certificate's CA and SAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,

    /// Path of a certificate revocation list for the server certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
}

impl ClientTLSSettings {
    /// `mode`, or the proto default `DISABLE` when unset.
    pub fn mode(&self) -> ClientTLSMode {
        self.mode.unwrap_or_default()
    }
}

/// `ClientTLSSettings.TLSmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTLSMode {
    /// Plain connection.
    #[default]
    Disable,
    /// Originate TLS.
    Simple,
    /// Originate TLS with a client certificate.
    Mutual,
    /// Originate mesh mTLS with the workload's own identity.
    IstioMutual,
}

/// Locality-aware load balancing. `distribute`, `failover` and `failoverPriority` are mutually
/// exclusive.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLoadBalancerSetting {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<Distribute>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<Failover>,

    /// Ordered labels (`key` or `key=value`) used to rank endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// `LocalityLoadBalancerSetting.Distribute`: weights for traffic from one locality.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Distribute {
    /// `region/zone/subzone`, trailing `*` allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,

    /// Upstream locality to weight (weights should sum to 100).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub to: BTreeMap<String, u32>,
}

/// `LocalityLoadBalancerSetting.Failover`: region to fail over to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Failover {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn guide_destinationrule_github() {
        let gw: DestinationRule = serde_json::from_value(json!({
            "host": "istio-egressgateway.istio-system.svc.cluster.local",
            "trafficPolicy": {
                "connectionPool": {
                    "tcp": {"maxConnections": 100, "connectTimeout": "10s"},
                    "http": {"h2UpgradePolicy": "UPGRADE", "http1MaxPendingRequests": 100, "http2MaxRequests": 1000}
                },
                "portLevelSettings": [{"port": {"number": 443}, "tls": {"mode": "ISTIO_MUTUAL"}}]
            }
        }))
        .expect("egress-gateway-tls");
        let tp = gw.traffic_policy.as_ref().expect("policy");
        let pool = tp.connection_pool.as_ref().expect("pool");
        let tcp = pool.tcp.as_ref().expect("tcp");
        assert_eq!(tcp.max_connections, Some(100));
        assert_eq!(tcp.connect_timeout, Some(Duration::from_secs(10)));
        let http = pool.http.as_ref().expect("http");
        assert_eq!(http.h2_upgrade_policy, Some(H2UpgradePolicy::Upgrade));
        assert_eq!(http.http1_max_pending_requests, Some(100));
        assert_eq!(http.http2_max_requests, Some(1000));
        let port = tp.port_settings(443).expect("port 443");
        assert_eq!(
            port.tls.as_ref().map(ClientTLSSettings::mode),
            Some(ClientTLSMode::IstioMutual)
        );
        assert!(tp.port_settings(80).is_none());

        let api: DestinationRule = serde_json::from_value(json!({
            "host": "api.github.com",
            "trafficPolicy": {"tls": {"mode": "SIMPLE", "sni": "api.github.com"}}
        }))
        .expect("github-api-tls");
        let tls = api.traffic_policy.and_then(|t| t.tls).expect("tls");
        assert_eq!(tls.mode(), ClientTLSMode::Simple);
        assert_eq!(tls.sni.as_deref(), Some("api.github.com"));
    }

    #[test]
    fn guide_destinationrule_mtls_external_and_tls_origination() {
        let dr: DestinationRule = serde_json::from_value(json!({
            "host": "secure-api.partner.com",
            "trafficPolicy": {"tls": {
                "mode": "MUTUAL",
                "clientCertificate": "/etc/istio/external-certs/client.crt",
                "privateKey": "/etc/istio/external-certs/client.key",
                "caCertificates": "/etc/istio/external-certs/ca.crt",
                "sni": "secure-api.partner.com"
            }}
        }))
        .expect("mtls external");
        let tls = dr.traffic_policy.and_then(|t| t.tls).expect("tls");
        assert_eq!(tls.mode(), ClientTLSMode::Mutual);
        assert_eq!(
            tls.ca_certificates.as_deref(),
            Some("/etc/istio/external-certs/ca.crt")
        );

        let dr: DestinationRule = serde_json::from_value(json!({
            "host": "api.external-service.com",
            "trafficPolicy": {
                "loadBalancer": {"simple": "ROUND_ROBIN"},
                "portLevelSettings": [{"port": {"number": 443}, "tls": {"mode": "SIMPLE", "sni": "api.external-service.com"}}]
            }
        }))
        .expect("tls origination");
        let tp = dr.traffic_policy.expect("policy");
        assert_eq!(
            tp.load_balancer.and_then(|l| l.simple),
            Some(SimpleLB::RoundRobin)
        );
        assert_eq!(
            tp.port_level_settings[0].port,
            Some(PortSelector { number: 443 })
        );
    }

    #[test]
    fn guide_production_destinationrule_with_outlier_detection() {
        let dr: DestinationRule = serde_json::from_value(json!({
            "host": "api.payment-provider.com",
            "trafficPolicy": {
                "tls": {"mode": "SIMPLE", "sni": "api.payment-provider.com"},
                "connectionPool": {
                    "tcp": {"maxConnections": 50, "connectTimeout": "5s"},
                    "http": {"http1MaxPendingRequests": 50, "http2MaxRequests": 100, "maxRequestsPerConnection": 10}
                },
                "outlierDetection": {
                    "consecutive5xxErrors": 5,
                    "interval": "30s",
                    "baseEjectionTime": "60s",
                    "maxEjectionPercent": 100
                }
            }
        }))
        .expect("parses");
        let tp = dr.traffic_policy.expect("policy");
        let od = tp.outlier_detection.expect("outlier detection");
        assert_eq!(od.consecutive_5xx_errors, Some(5));
        assert_eq!(od.interval, Some(Duration::from_secs(30)));
        assert_eq!(od.base_ejection_time, Some(Duration::from_secs(60)));
        assert_eq!(od.max_ejection_percent, Some(100));
        assert_eq!(
            tp.connection_pool
                .and_then(|p| p.http)
                .and_then(|h| h.max_requests_per_connection),
            Some(10)
        );
        let back = serde_json::to_value(&od).expect("ser");
        assert_eq!(back["consecutive5xxErrors"], json!(5));
        assert_eq!(back["interval"], json!("30s"));
    }

    #[test]
    fn subsets_and_every_policy_field() {
        let dr: DestinationRule = serde_json::from_value(json!({
            "host": "reviews.prod.svc.cluster.local",
            "exportTo": ["."],
            "workloadSelector": {"matchLabels": {"app": "productpage"}},
            "trafficPolicy": {
                "loadBalancer": {
                    "consistentHash": {
                        "httpCookie": {"name": "user", "path": "/", "ttl": "0s",
                                       "attributes": [{"name": "SameSite", "value": "Strict"}, {"name": "Secure"}]},
                        "maglev": {"tableSize": 65537},
                        "minimumRingSize": 1024
                    },
                    "localityLbSetting": {
                        "enabled": true,
                        "distribute": [{"from": "us-west/zone1/*", "to": {"us-west/zone1/*": 80, "us-west/zone2/*": 20}}],
                        "failover": [{"from": "us-east", "to": "eu-west"}],
                        "failoverPriority": ["topology.istio.io/network", "version=v1"]
                    },
                    "warmupDurationSecs": "60s",
                    "warmup": {"duration": "1m30s", "minimumPercent": 10, "aggression": 1.5}
                },
                "connectionPool": {
                    "tcp": {
                        "maxConnections": 100, "connectTimeout": "30ms",
                        "tcpKeepalive": {"probes": 9, "time": "7200s", "interval": "75s"},
                        "maxConnectionDuration": "1h", "idleTimeout": "0s"
                    },
                    "http": {"maxRetries": 3, "idleTimeout": "5m", "useClientProtocol": true,
                             "maxConcurrentStreams": 100, "h2UpgradePolicy": "DO_NOT_UPGRADE"}
                },
                "outlierDetection": {
                    "consecutiveErrors": 7, "splitExternalLocalOriginErrors": true,
                    "consecutiveLocalOriginFailures": 3, "consecutiveGatewayErrors": 2,
                    "minHealthPercent": 50
                },
                "tls": {
                    "mode": "MUTUAL", "credentialName": "client-credential",
                    "subjectAltNames": ["reviews.prod"], "insecureSkipVerify": false, "caCrl": "/etc/crl.pem"
                },
                "tunnel": {"protocol": "CONNECT", "targetHost": "proxy.example.com", "targetPort": 8080},
                "proxyProtocol": {"version": "V2"},
                "retryBudget": {"percent": 25.0, "minRetryConcurrency": 5, "budgetInterval": "10s"}
            },
            "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {
                    "name": "v2",
                    "labels": {"version": "v2"},
                    "trafficPolicy": {
                        "loadBalancer": {"simple": "LEAST_REQUEST"},
                        "connectionPool": {"http": {"http2MaxRequests": 10}},
                        "portLevelSettings": [{
                            "port": {"number": 9080},
                            "loadBalancer": {"consistentHash": {"useSourceIp": true, "ringHash": {"minimumRingSize": 2048}}},
                            "connectionPool": {"tcp": {"maxConnections": 1}},
                            "outlierDetection": {"consecutive5xxErrors": 0}
                        }]
                    }
                },
                {"name": "egress-sni", "trafficPolicy": {"tls": {"mode": "SIMPLE", "sni": "a.example.com"}}}
            ]
        }))
        .expect("parses");

        let sel = dr.workload_selector.as_ref().expect("selector");
        assert_eq!(
            sel.match_labels.get("app").map(String::as_str),
            Some("productpage")
        );
        let tp = dr.traffic_policy.as_ref().expect("policy");
        let lb = tp.load_balancer.as_ref().expect("lb");
        let ch = lb.consistent_hash.as_ref().expect("consistent hash");
        let cookie = ch.http_cookie.as_ref().expect("cookie");
        assert_eq!(cookie.ttl, Some(Duration::from_secs(0)));
        assert_eq!(cookie.attributes[1].value, None);
        assert_eq!(ch.maglev.as_ref().and_then(|m| m.table_size), Some(65537));
        assert_eq!(ch.minimum_ring_size, Some(1024));
        let locality = lb.locality_lb_setting.as_ref().expect("locality");
        assert_eq!(locality.distribute[0].to.get("us-west/zone1/*"), Some(&80));
        assert_eq!(locality.failover[0].to.as_deref(), Some("eu-west"));
        assert_eq!(
            lb.warmup.as_ref().map(|w| w.duration),
            Some(Duration::from_secs(90))
        );
        let tcp = tp
            .connection_pool
            .as_ref()
            .and_then(|p| p.tcp.as_ref())
            .expect("tcp");
        assert_eq!(tcp.connect_timeout, Some(Duration::from_millis(30)));
        assert_eq!(tcp.tcp_keepalive.as_ref().and_then(|k| k.probes), Some(9));
        assert_eq!(tcp.idle_timeout, Some(Duration::from_secs(0)));
        let tls = tp.tls.as_ref().expect("tls");
        assert_eq!(tls.insecure_skip_verify, Some(false));
        assert_eq!(tls.credential_name.as_deref(), Some("client-credential"));
        assert_eq!(tp.tunnel.as_ref().map(|t| t.target_port), Some(8080));
        assert_eq!(
            tp.proxy_protocol.as_ref().and_then(|p| p.version),
            Some(ProxyProtocolVersion::V2)
        );
        let budget = tp.retry_budget.as_ref().expect("budget");
        assert_eq!(budget.min_retry_concurrency, Some(5));

        assert_eq!(dr.subsets.len(), 3);
        assert!(dr.subsets[0].traffic_policy.is_none());
        let v2 = dr.subsets[1].traffic_policy.as_ref().expect("v2 policy");
        assert_eq!(
            v2.load_balancer.as_ref().and_then(|l| l.simple),
            Some(SimpleLB::LeastRequest)
        );
        let port = v2.port_settings(9080).expect("port 9080");
        let ch = port
            .load_balancer
            .as_ref()
            .and_then(|l| l.consistent_hash.as_ref())
            .expect("ch");
        assert_eq!(ch.use_source_ip, Some(true));
        assert_eq!(
            ch.ring_hash.as_ref().and_then(|r| r.minimum_ring_size),
            Some(2048)
        );
        assert_eq!(
            port.outlier_detection
                .as_ref()
                .and_then(|o| o.consecutive_5xx_errors),
            Some(0)
        );
        assert!(dr.subsets[2].labels.is_empty());
    }

    #[test]
    fn required_fields_are_reported() {
        let err = serde_json::from_value::<DestinationRule>(json!({"trafficPolicy": {}}))
            .expect_err("missing host");
        assert!(err.to_string().contains("missing field `host`"), "{err}");
        let err = serde_json::from_value::<DestinationRule>(json!({
            "host": "a", "subsets": [{"labels": {"v": "1"}}]
        }))
        .expect_err("missing subset name");
        assert!(err.to_string().contains("missing field `name`"), "{err}");
    }

    #[test]
    fn unknown_field_is_rejected() {
        let err = serde_json::from_value::<DestinationRule>(json!({
            "host": "a",
            "trafficPolicy": {"connectionPool": {"tcp": {"maxConnection": 1}}}
        }))
        .expect_err("unknown field");
        assert!(
            err.to_string().contains("unknown field `maxConnection`"),
            "{err}"
        );
        // The DestinationRule selector is `matchLabels`, not `labels`.
        let err = serde_json::from_value::<DestinationRule>(json!({
            "host": "a", "workloadSelector": {"labels": {"app": "x"}}
        }))
        .expect_err("labels");
        assert!(err.to_string().contains("unknown field `labels`"), "{err}");
    }

    #[test]
    fn unknown_enum_value_is_rejected() {
        let err = serde_json::from_value::<DestinationRule>(json!({
            "host": "a", "trafficPolicy": {"tls": {"mode": "PERMISSIVE"}}
        }))
        .expect_err("unknown tls mode");
        assert!(err.to_string().contains("PERMISSIVE"), "{err}");
        let err = serde_json::from_value::<DestinationRule>(json!({
            "host": "a", "trafficPolicy": {"loadBalancer": {"simple": "WEIGHTED"}}
        }))
        .expect_err("unknown lb");
        assert!(err.to_string().contains("WEIGHTED"), "{err}");
    }
}
