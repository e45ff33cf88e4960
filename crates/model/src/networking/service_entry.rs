//! `ServiceEntry` (networking.istio.io): adds a service (usually an external one) to the mesh's
//! registry. Also home of [`Protocol`], the port protocol shared by ServiceEntry, Gateway and
//! Sidecar ports.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::sidecar::WorkloadLabelSelector;
pub use super::workload_entry::WorkloadEntry;

/// Istio's `ServiceEntry` spec.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntry {
    /// DNS names (a leading `*.` wildcard is allowed) matched against Host/authority and SNI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,

    /// Virtual IPs or CIDRs of the service; traffic to them is attributed to this entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,

    /// Static endpoints (only one of `endpoints` and `workloadSelector` may be set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntry>,

    /// Selects `WorkloadEntry` resources and pods by label (MESH_INTERNAL only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadLabelSelector>,

    /// Namespaces that can see this entry: `.` (own namespace), `*` (all), or names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,

    /// SANs the server certificate of the endpoints must carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

impl ServiceEntry {
    /// `location`, or its default `MESH_EXTERNAL` when unset.
    pub fn location(&self) -> Location {
        self.location.unwrap_or_default()
    }

    /// `resolution`, or its default `NONE` when unset.
    pub fn resolution(&self) -> Resolution {
        self.resolution.unwrap_or_default()
    }
}

/// A port of a `ServiceEntry`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    pub number: u32,

    /// When unset, Istio infers the protocol from the port name's prefix (`http-…`, `tls-…`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_protocol_is_unset"
    )]
    pub protocol: Option<Protocol>,

    pub name: String,

    /// Port on the endpoints; defaults to `number`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// Whether a `ServiceEntry` describes a service outside the mesh or one that is part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    #[default]
    MeshExternal,
    MeshInternal,
}

/// How the proxy finds the endpoints of a `ServiceEntry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Forward to the destination address the connection was already bound to.
    #[default]
    None,
    /// Use the addresses listed in `endpoints`.
    Static,
    /// Resolve the endpoint (or host) names asynchronously, using all returned addresses.
    Dns,
    /// Resolve names but only use the first address returned for new connections.
    DnsRoundRobin,
    /// Resolve the name from the request's Host or SNI (wildcard hosts, MESH_EXTERNAL only).
    DynamicDns,
}

/// Port protocol as Istio names it. Istio keeps this a string and compares it
/// case-insensitively, so `http` and `HTTP` are the same; unknown names are rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Https,
    Grpc,
    GrpcWeb,
    Http2,
    /// Istio's name for the explicit HTTP proxy (`HTTP_PROXY`) protocol.
    HttpProxy,
    Mongo,
    Mysql,
    Redis,
    Tcp,
    Tls,
    Udp,
}

impl Protocol {
    pub const ALL: [Protocol; 12] = [
        Protocol::Http,
        Protocol::Https,
        Protocol::Grpc,
        Protocol::GrpcWeb,
        Protocol::Http2,
        Protocol::HttpProxy,
        Protocol::Mongo,
        Protocol::Mysql,
        Protocol::Redis,
        Protocol::Tcp,
        Protocol::Tls,
        Protocol::Udp,
    ];

    /// The canonical (upper-case) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Https => "HTTPS",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-WEB",
            Protocol::Http2 => "HTTP2",
            Protocol::HttpProxy => "HTTP_PROXY",
            Protocol::Mongo => "MONGO",
            Protocol::Mysql => "MYSQL",
            Protocol::Redis => "REDIS",
            Protocol::Tcp => "TCP",
            Protocol::Tls => "TLS",
            Protocol::Udp => "UDP",
        }
    }

    /// Parses a protocol name in any case; `None` for names Istio does not know.
    pub fn parse(name: &str) -> Option<Protocol> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(name))
    }

    /// Traffic the proxy handles as HTTP requests (HTTP/1.1, HTTP/2, gRPC).
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http
                | Protocol::Http2
                | Protocol::Grpc
                | Protocol::GrpcWeb
                | Protocol::HttpProxy
        )
    }

    /// TLS traffic (routed by SNI, or terminated on a gateway server).
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }

    /// Traffic carried over TCP that is not inspected as HTTP (Istio's `IsTCP`).
    pub fn is_tcp(self) -> bool {
        matches!(
            self,
            Protocol::Tcp
                | Protocol::Https
                | Protocol::Tls
                | Protocol::Mongo
                | Protocol::Mysql
                | Protocol::Redis
        )
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown port protocol name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?}, expected one of {list}", list = protocol_list())]
pub struct UnknownProtocol(pub String);

fn protocol_list() -> String {
    Protocol::ALL
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl std::str::FromStr for Protocol {
    type Err = UnknownProtocol;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::parse(s).ok_or_else(|| UnknownProtocol(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Protocol;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a protocol name ({})", protocol_list())
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Protocol, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// `protocol: ""` is how a proto3 string is left unset, so Istio reads it as no protocol.
fn empty_protocol_is_unset<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Protocol>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Option<Protocol>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a protocol name ({})", protocol_list())
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            if v.is_empty() {
                return Ok(None);
            }
            v.parse().map(Some).map_err(E::custom)
        }
    }
    d.deserialize_option(Visitor)
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn guide_serviceentry_database() {
        let se: ServiceEntry = serde_json::from_value(json!({
            "hosts": ["external-db.example.com"],
            "ports": [{"number": 5432, "name": "tcp-postgres", "protocol": "TCP"}],
            "location": "MESH_EXTERNAL",
            "resolution": "STATIC",
            "endpoints": [
                {"address": "192.168.1.100", "ports": {"tcp-postgres": 5432}, "labels": {"role": "primary"}},
                {"address": "192.168.1.101", "ports": {"tcp-postgres": 5432}, "labels": {"role": "replica"}}
            ]
        }))
        .expect("parses");
        assert_eq!(se.resolution(), Resolution::Static);
        assert_eq!(se.location(), Location::MeshExternal);
        assert_eq!(se.ports[0].protocol, Some(Protocol::Tcp));
        assert_eq!(se.endpoints.len(), 2);
        assert_eq!(
            se.endpoints[1].labels.get("role").map(String::as_str),
            Some("replica")
        );
        assert_eq!(se.endpoints[0].port_for("tcp-postgres", 0), 5432);
    }

    #[test]
    fn an_empty_protocol_is_unset_and_an_unknown_one_refused() {
        let port = |protocol: serde_json::Value| {
            serde_json::from_value::<ServicePort>(
                json!({"number": 22, "name": "ssh", "protocol": protocol}),
            )
            .map(|p| p.protocol)
        };
        assert_eq!(port(json!("")).ok(), Some(None));
        assert_eq!(port(json!(null)).ok(), Some(None));
        assert_eq!(port(json!("tcp")).ok(), Some(Some(Protocol::Tcp)));
        let err = port(json!("SSH")).expect_err("unknown protocol");
        assert!(err.to_string().contains("SSH"), "{err}");
        assert!(port(json!(7)).is_err());
    }

    #[test]
    fn guide_serviceentries_github_tls_origination_and_production() {
        let github: ServiceEntry = serde_json::from_value(json!({
            "hosts": ["api.github.com"],
            "ports": [{"number": 443, "name": "https", "protocol": "TLS"}],
            "location": "MESH_EXTERNAL",
            "resolution": "DNS"
        }))
        .expect("github");
        assert_eq!(github.resolution(), Resolution::Dns);
        assert!(github.ports[0].protocol.is_some_and(Protocol::is_tls));

        let origination: ServiceEntry = serde_json::from_value(json!({
            "hosts": ["api.external-service.com"],
            "ports": [
                {"number": 80, "name": "http-port", "protocol": "HTTP"},
                {"number": 443, "name": "https-port", "protocol": "HTTPS"}
            ],
            "location": "MESH_EXTERNAL",
            "resolution": "DNS"
        }))
        .expect("tls origination");
        assert!(origination.ports[0].protocol.is_some_and(Protocol::is_http));
        assert_eq!(origination.ports[1].protocol, Some(Protocol::Https));

        let payment: ServiceEntry = serde_json::from_value(json!({
            "hosts": ["api.payment-provider.com"],
            "ports": [{"number": 443, "name": "https", "protocol": "TLS"}],
            "location": "MESH_EXTERNAL",
            "resolution": "DNS",
            "exportTo": [".", "istio-system"]
        }))
        .expect("payment");
        assert_eq!(payment.export_to, vec![".", "istio-system"]);
    }

    #[test]
    fn mesh_internal_static_entry_with_selector_and_every_field() {
        let se: ServiceEntry = serde_json::from_value(json!({
            "hosts": ["istio-egressgateway.istio-system.svc.cluster.local"],
            "addresses": ["240.240.0.1", "10.0.0.0/24"],
            "ports": [
                {"number": 443, "name": "tls", "protocol": "tls", "targetPort": 8443},
                {"number": 70000, "name": "big"}
            ],
            "location": "MESH_INTERNAL",
            "resolution": "DYNAMIC_DNS",
            "workloadSelector": {"labels": {"app": "details"}},
            "exportTo": ["*"],
            "subjectAltNames": ["spiffe://cluster.local/ns/istio-system/sa/egress"]
        }))
        .expect("parses");
        assert_eq!(se.location(), Location::MeshInternal);
        assert_eq!(se.resolution(), Resolution::DynamicDns);
        assert_eq!(se.ports[0].protocol, Some(Protocol::Tls));
        assert_eq!(se.ports[0].target_port, Some(8443));
        assert_eq!(se.ports[1].number, 70000);
        assert_eq!(se.ports[1].protocol, None);
        let sel = se.workload_selector.as_ref().expect("selector");
        assert_eq!(sel.labels.get("app").map(String::as_str), Some("details"));
        assert_eq!(
            serde_json::from_value::<Resolution>(json!("DNS_ROUND_ROBIN")).expect("rr"),
            Resolution::DnsRoundRobin
        );
    }

    #[test]
    fn defaults_follow_the_proto_zero_values() {
        let se: ServiceEntry =
            serde_json::from_value(json!({"hosts": ["a.example.com"]})).expect("min");
        assert_eq!(se.location(), Location::MeshExternal);
        assert_eq!(se.resolution(), Resolution::None);
    }

    #[test]
    fn protocol_is_case_insensitive_and_round_trips_upper_case() {
        for (input, want) in [
            ("http", Protocol::Http),
            ("Http2", Protocol::Http2),
            ("grpc-web", Protocol::GrpcWeb),
            ("GRPC", Protocol::Grpc),
            ("mysql", Protocol::Mysql),
            ("udp", Protocol::Udp),
            ("http_proxy", Protocol::HttpProxy),
        ] {
            let p: Protocol = serde_json::from_value(json!(input)).expect(input);
            assert_eq!(p, want);
            assert_eq!(serde_json::to_value(p).expect("ser"), json!(want.as_str()));
        }
        assert!(Protocol::Grpc.is_http() && !Protocol::Grpc.is_tls());
        assert!(Protocol::Https.is_tls() && !Protocol::Https.is_http());
        assert!(!Protocol::Tcp.is_http() && !Protocol::Tcp.is_tls());
    }

    #[test]
    fn unknown_protocol_lists_the_valid_ones() {
        let err = serde_json::from_value::<ServicePort>(
            json!({"number": 80, "name": "x", "protocol": "QUIC"}),
        )
        .expect_err("unknown protocol");
        let msg = err.to_string();
        assert!(msg.contains("\"QUIC\""), "{msg}");
        assert!(msg.contains("HTTP, HTTPS, GRPC, GRPC-WEB"), "{msg}");
    }

    #[test]
    fn unknown_field_is_rejected() {
        let err = serde_json::from_value::<ServiceEntry>(
            json!({"hosts": ["a.com"], "resolutions": "DNS"}),
        )
        .expect_err("unknown field");
        assert!(
            err.to_string().contains("unknown field `resolutions`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_enum_value_is_rejected() {
        let err = serde_json::from_value::<ServiceEntry>(
            json!({"hosts": ["a.com"], "resolution": "DNS_MAGIC"}),
        )
        .expect_err("unknown resolution");
        assert!(err.to_string().contains("DNS_MAGIC"), "{err}");
        let err = serde_json::from_value::<ServiceEntry>(
            json!({"hosts": ["a.com"], "location": "MESH_NEARBY"}),
        )
        .expect_err("unknown location");
        assert!(err.to_string().contains("MESH_NEARBY"), "{err}");
    }

    #[test]
    fn endpoints_reject_unknown_fields_too() {
        let err = serde_json::from_value::<ServiceEntry>(json!({
            "hosts": ["a.com"],
            "endpoints": [{"address": "1.2.3.4", "zone": "a"}]
        }))
        .expect_err("unknown endpoint field");
        assert!(err.to_string().contains("unknown field `zone`"), "{err}");
    }
}
