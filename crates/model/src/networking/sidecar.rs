//! `Sidecar` (networking.istio.io): what a workload's proxy listens on and which services it can
//! reach, including the outbound traffic policy (`REGISTRY_ONLY` / `ALLOW_ANY`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::destination_rule::ConnectionPoolSettings;
use super::gateway::ServerTLSSettings;
use super::service_entry::Protocol;
use super::virtual_service::Destination;

/// Istio's `Sidecar` spec.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sidecar {
    /// Workloads (in the Sidecar's namespace) this applies to; none means the namespace default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadLabelSelector>,

    /// Inbound listeners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IstioIngressListener>,

    /// Outbound listeners and the hosts each one exposes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<IstioEgressListener>,

    /// Default connection limits for inbound traffic of all ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,

    /// Handling of traffic to destinations that are not in the registry. When absent the mesh
    /// config's policy applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// Istio networking's own `WorkloadSelector` (`labels:`), used by `Sidecar` and by
/// `ServiceEntry.workloadSelector`. Not to be confused with [`crate::values::WorkloadSelector`]
/// (`matchLabels:`), used by the other kinds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadLabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl WorkloadLabelSelector {
    /// True when every label of the selector is present with the same value (an empty selector
    /// selects everything).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// An inbound listener of the sidecar.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioIngressListener {
    pub port: SidecarPort,

    /// IP to bind (no Unix sockets for ingress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<CaptureMode>,

    /// Where the application listens: `127.0.0.1:PORT`, `[::1]:PORT`, `0.0.0.0:PORT`, `[::]:PORT`
    /// or `unix:///path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<String>,

    /// TLS termination for traffic from outside the mesh (SIMPLE or MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTLSSettings>,

    /// Per-port inbound connection limits; overrides `inboundConnectionPool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// An outbound listener of the sidecar.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioEgressListener {
    /// Listener port (0 with a Unix socket bind); when absent, ports come from the hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<SidecarPort>,

    /// IP or `unix://` socket to bind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<CaptureMode>,

    /// Services exposed, as `namespace/dnsName` (`*`, `.` and `~` allowed as namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// Default handling of outbound traffic to unknown destinations.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<OutboundTrafficPolicyMode>,

    /// Where `ALLOW_ANY` traffic is sent instead of its original destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<Destination>,
}

impl OutboundTrafficPolicy {
    /// `mode`, or the proto default `REGISTRY_ONLY` when the policy is given without one.
    pub fn mode(&self) -> OutboundTrafficPolicyMode {
        self.mode.unwrap_or_default()
    }
}

/// `OutboundTrafficPolicy.Mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicyMode {
    /// Unknown destinations are refused (502 from the proxy).
    #[default]
    RegistryOnly,
    /// Unknown destinations are passed through.
    AllowAny,
}

/// How traffic reaches a listener bound to an IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaptureMode {
    /// Whatever the environment does.
    #[default]
    Default,
    /// Redirected by iptables.
    Iptables,
    /// Not captured: the application connects to the listener explicitly.
    None,
}

/// Port of a sidecar listener (every field optional, unlike a Gateway `Port`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// Deprecated; has no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::Duration;
    use serde_json::json;

    #[test]
    fn outbound_policy_empty_means_registry_only() {
        let sc: Sidecar =
            serde_json::from_value(json!({"outboundTrafficPolicy": {}})).expect("parses");
        let policy = sc.outbound_traffic_policy.expect("policy present");
        assert_eq!(policy.mode, None);
        assert_eq!(policy.mode(), OutboundTrafficPolicyMode::RegistryOnly);

        let sc: Sidecar = serde_json::from_value(json!({
            "outboundTrafficPolicy": {"mode": "ALLOW_ANY"}
        }))
        .expect("parses");
        assert_eq!(
            sc.outbound_traffic_policy.map(|p| p.mode()),
            Some(OutboundTrafficPolicyMode::AllowAny)
        );

        let sc: Sidecar = serde_json::from_value(json!({})).expect("empty sidecar");
        assert_eq!(sc.outbound_traffic_policy, None);
    }

    #[test]
    fn full_sidecar_parses() {
        let sc: Sidecar = serde_json::from_value(json!({
            "workloadSelector": {"labels": {"app": "ratings"}},
            "ingress": [{
                "port": {"number": 9080, "protocol": "HTTP", "name": "somename"},
                "bind": "0.0.0.0",
                "captureMode": "IPTABLES",
                "defaultEndpoint": "127.0.0.1:8080",
                "tls": {"mode": "SIMPLE", "serverCertificate": "/etc/c.pem", "privateKey": "/etc/k.pem"},
                "connectionPool": {"tcp": {"maxConnections": 10}}
            }],
            "egress": [
                {
                    "port": {"number": 3306, "protocol": "MYSQL", "name": "egressmysql"},
                    "bind": "127.0.0.1",
                    "captureMode": "NONE",
                    "hosts": ["*/mysql.foo.com"]
                },
                {"hosts": ["./*", "istio-system/*"]}
            ],
            "inboundConnectionPool": {"http": {"http1MaxPendingRequests": 1024, "idleTimeout": "1m30s"}},
            "outboundTrafficPolicy": {
                "mode": "ALLOW_ANY",
                "egressProxy": {"host": "istio-egressgateway.istio-system.svc.cluster.local", "port": {"number": 443}}
            }
        }))
        .expect("parses");

        let labels = BTreeMap::from([("app".to_owned(), "ratings".to_owned())]);
        assert!(
            sc.workload_selector
                .as_ref()
                .is_some_and(|s| s.matches(&labels))
        );
        let ingress = &sc.ingress[0];
        assert_eq!(ingress.port.protocol, Some(Protocol::Http));
        assert_eq!(ingress.capture_mode, Some(CaptureMode::Iptables));
        assert!(ingress.tls.is_some());
        assert_eq!(
            ingress
                .connection_pool
                .as_ref()
                .and_then(|p| p.tcp.as_ref())
                .and_then(|t| t.max_connections),
            Some(10)
        );
        assert_eq!(sc.egress[0].capture_mode, Some(CaptureMode::None));
        assert_eq!(
            sc.egress[0].port.as_ref().and_then(|p| p.protocol),
            Some(Protocol::Mysql)
        );
        assert_eq!(sc.egress[1].port, None);
        assert_eq!(sc.egress[1].hosts, vec!["./*", "istio-system/*"]);
        assert_eq!(
            sc.inbound_connection_pool
                .as_ref()
                .and_then(|p| p.http.as_ref())
                .and_then(|h| h.idle_timeout),
            Some(Duration::from_secs(90))
        );
        let proxy = sc
            .outbound_traffic_policy
            .and_then(|p| p.egress_proxy)
            .expect("egress proxy");
        assert_eq!(proxy.port.map(|p| p.number), Some(443));
    }

    #[test]
    fn unknown_field_is_rejected() {
        let err = serde_json::from_value::<Sidecar>(
            json!({"egress": [{"hosts": ["*/*"], "bindTo": "x"}]}),
        )
        .expect_err("unknown field");
        assert!(err.to_string().contains("unknown field `bindTo`"), "{err}");
        // The proto's selector says `labels`, not `matchLabels`.
        let err = serde_json::from_value::<Sidecar>(
            json!({"workloadSelector": {"matchLabels": {"app": "x"}}}),
        )
        .expect_err("matchLabels");
        assert!(
            err.to_string().contains("unknown field `matchLabels`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_enum_value_is_rejected() {
        let err = serde_json::from_value::<Sidecar>(
            json!({"outboundTrafficPolicy": {"mode": "DENY_ALL"}}),
        )
        .expect_err("unknown mode");
        assert!(err.to_string().contains("DENY_ALL"), "{err}");
        let err = serde_json::from_value::<Sidecar>(
            json!({"egress": [{"hosts": ["*/*"], "captureMode": "EBPF"}]}),
        )
        .expect_err("unknown capture mode");
        assert!(err.to_string().contains("EBPF"), "{err}");
    }
}
