//! `Gateway` (networking.istio.io): the listeners (servers) of a gateway proxy selected by label.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::service_entry::Protocol;

/// Istio's `Gateway` spec.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<Server>,

    /// Labels of the gateway proxies this applies to (a plain map, not `matchLabels`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

impl Gateway {
    /// True when every selector label is present on the proxy with the same value.
    pub fn selects(&self, proxy_labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .iter()
            .all(|(k, v)| proxy_labels.get(k) == Some(v))
    }
}

/// One listener of a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    pub port: Port,

    /// IP or `unix://` socket to bind instead of all addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,

    /// Hosts exposed, as `[namespace/]dnsName` (`*` and `.` allowed as namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTLSSettings>,

    /// Not implemented by Istio; accepted so it can be reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<String>,

    /// Optional unique name, used e.g. as a stats prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Port of a gateway server. Unlike other ports, number, protocol and name are all required.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    pub number: u32,

    pub protocol: Protocol,

    pub name: String,

    /// Deprecated; has no effect on gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// TLS settings of a gateway server (also of a sidecar ingress listener).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTLSSettings {
    /// Answer plain HTTP requests with a 301 to HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<bool>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ServerTLSMode>,

    /// Path of the server certificate (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<String>,

    /// Path of the server private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,

    /// Path of the CA bundle that verifies client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,

    /// Path of a certificate revocation list for client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,

    /// Name of a secret holding the certificate, key and optionally CA (instead of paths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,

    /// Like `credentialName`, for several certificates (e.g. an RSA and an ECDSA one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_names: Vec<String>,

    /// Name of a secret holding only the CA bundle used to verify clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_credential_name: Option<String>,

    /// Like `serverCertificate`/`privateKey`, for several certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_certificates: Vec<TLSCertificate>,

    /// Accepted subject alternative names of client certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,

    /// Accepted base64 SHA-256 hashes of client certificate SPKIs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_spki: Vec<String>,

    /// Accepted hex SHA-256 hashes of client certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_hash: Vec<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<TLSProtocol>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_protocol_version: Option<TLSProtocol>,

    /// OpenSSL-style cipher suite names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
}

impl ServerTLSSettings {
    /// `mode`, or the proto default `PASSTHROUGH` when unset.
    pub fn mode(&self) -> ServerTLSMode {
        self.mode.unwrap_or_default()
    }
}

/// One certificate of `ServerTLSSettings.tlsCertificates` (file paths).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TLSCertificate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
}

/// `ServerTLSSettings.TLSmode`: what the server does with TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTLSMode {
    /// Route by SNI without terminating TLS.
    #[default]
    Passthrough,
    /// Terminate TLS; no client certificate requested.
    Simple,
    /// Terminate TLS and require a valid client certificate.
    Mutual,
    /// Like passthrough, but the destination is encoded in the SNI; no VirtualService needed.
    AutoPassthrough,
    /// Terminate mesh mTLS with the gateway's own workload identity.
    IstioMutual,
    /// Like MUTUAL, but a client certificate is optional (validated when sent).
    OptionalMutual,
}

/// TLS protocol versions for `minProtocolVersion` / `maxProtocolVersion`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Deserialize, Serialize,
)]
pub enum TLSProtocol {
    #[default]
    #[serde(rename = "TLS_AUTO")]
    TlsAuto,
    #[serde(rename = "TLSV1_0")]
    TlsV1_0,
    #[serde(rename = "TLSV1_1")]
    TlsV1_1,
    #[serde(rename = "TLSV1_2")]
    TlsV1_2,
    #[serde(rename = "TLSV1_3")]
    TlsV1_3,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn guide_egress_gateway() {
        let gw: Gateway = serde_json::from_value(json!({
            "selector": {"istio": "egressgateway"},
            "servers": [
                {
                    "port": {"number": 443, "name": "tls-github", "protocol": "TLS"},
                    "hosts": ["api.github.com"],
                    "tls": {"mode": "PASSTHROUGH"}
                },
                {
                    "port": {"number": 443, "name": "tls-stripe", "protocol": "TLS"},
                    "hosts": ["api.stripe.com"],
                    "tls": {"mode": "PASSTHROUGH"}
                }
            ]
        }))
        .expect("parses");
        let labels = BTreeMap::from([("istio".to_owned(), "egressgateway".to_owned())]);
        assert!(gw.selects(&labels));
        assert_eq!(gw.servers.len(), 2);
        assert_eq!(gw.servers[1].port.protocol, Protocol::Tls);
        assert_eq!(gw.servers[1].port.name, "tls-stripe");
        assert_eq!(
            gw.servers[0].tls.as_ref().map(ServerTLSSettings::mode),
            Some(ServerTLSMode::Passthrough)
        );
    }

    #[test]
    fn guide_gateway_tls_origination_and_production() {
        let gw: Gateway = serde_json::from_value(json!({
            "selector": {"istio": "egressgateway"},
            "servers": [{
                "port": {"number": 80, "name": "http", "protocol": "HTTP"},
                "hosts": ["api.external-service.com"]
            }]
        }))
        .expect("tls origination gateway");
        assert!(gw.servers[0].port.protocol.is_http());
        assert_eq!(gw.servers[0].tls, None);

        let gw: Gateway = serde_json::from_value(json!({
            "selector": {"istio": "egressgateway"},
            "servers": [{
                "port": {"number": 443, "name": "tls-payment", "protocol": "TLS"},
                "hosts": ["api.payment-provider.com"],
                "tls": {"mode": "PASSTHROUGH"}
            }]
        }))
        .expect("production gateway");
        assert_eq!(gw.servers[0].hosts, vec!["api.payment-provider.com"]);
    }

    #[test]
    fn mutual_tls_server_with_every_field() {
        let gw: Gateway = serde_json::from_value(json!({
            "selector": {"app": "my-gateway"},
            "servers": [
                {
                    "port": {"number": 443, "name": "https", "protocol": "https"},
                    "bind": "127.0.0.1",
                    "hosts": ["ns1/*.example.com", "./api.example.com"],
                    "name": "main",
                    "defaultEndpoint": "127.0.0.1:8080",
                    "tls": {
                        "httpsRedirect": false,
                        "mode": "OPTIONAL_MUTUAL",
                        "serverCertificate": "/etc/certs/server.pem",
                        "privateKey": "/etc/certs/key.pem",
                        "caCertificates": "/etc/certs/ca.pem",
                        "caCrl": "/etc/certs/ca.crl",
                        "subjectAltNames": ["spiffe://cluster.local/ns/a/sa/b"],
                        "verifyCertificateSpki": ["abc="],
                        "verifyCertificateHash": ["AB:CD"],
                        "minProtocolVersion": "TLSV1_2",
                        "maxProtocolVersion": "TLSV1_3",
                        "cipherSuites": ["ECDHE-ECDSA-AES128-GCM-SHA256"],
                        "tlsCertificates": [
                            {"serverCertificate": "/rsa.pem", "privateKey": "/rsa.key"},
                            {"serverCertificate": "/ec.pem", "privateKey": "/ec.key", "caCertificates": "/ca.pem"}
                        ]
                    }
                },
                {
                    "port": {"number": 8443, "name": "mtls", "protocol": "HTTPS", "targetPort": 9443},
                    "hosts": ["*"],
                    "tls": {
                        "mode": "ISTIO_MUTUAL",
                        "credentialNames": ["rsa-cert", "ecdsa-cert"],
                        "caCertCredentialName": "client-ca",
                        "credentialName": "single"
                    }
                },
                {
                    "port": {"number": 80, "name": "http", "protocol": "HTTP"},
                    "hosts": ["*"],
                    "tls": {"httpsRedirect": true}
                }
            ]
        }))
        .expect("parses");
        let tls = gw.servers[0].tls.as_ref().expect("tls");
        assert_eq!(tls.mode(), ServerTLSMode::OptionalMutual);
        assert_eq!(tls.min_protocol_version, Some(TLSProtocol::TlsV1_2));
        assert!(tls.max_protocol_version > tls.min_protocol_version);
        assert_eq!(tls.tls_certificates.len(), 2);
        assert_eq!(gw.servers[0].port.protocol, Protocol::Https);
        assert_eq!(gw.servers[0].bind.as_deref(), Some("127.0.0.1"));
        let tls = gw.servers[1].tls.as_ref().expect("tls");
        assert_eq!(tls.mode(), ServerTLSMode::IstioMutual);
        assert_eq!(tls.credential_names, vec!["rsa-cert", "ecdsa-cert"]);
        assert_eq!(gw.servers[1].port.target_port, Some(9443));
        let tls = gw.servers[2].tls.as_ref().expect("tls");
        assert_eq!(tls.https_redirect, Some(true));
        assert_eq!(tls.mode(), ServerTLSMode::Passthrough);
        for (name, mode) in [
            ("SIMPLE", ServerTLSMode::Simple),
            ("MUTUAL", ServerTLSMode::Mutual),
            ("AUTO_PASSTHROUGH", ServerTLSMode::AutoPassthrough),
        ] {
            assert_eq!(
                serde_json::from_value::<ServerTLSMode>(json!(name)).expect(name),
                mode
            );
        }
    }

    #[test]
    fn port_requires_number_protocol_and_name() {
        let err = serde_json::from_value::<Gateway>(json!({
            "servers": [{"port": {"number": 80, "protocol": "HTTP"}, "hosts": ["*"]}]
        }))
        .expect_err("missing name");
        assert!(err.to_string().contains("missing field `name`"), "{err}");
    }

    #[test]
    fn unknown_field_is_rejected() {
        let err = serde_json::from_value::<Gateway>(json!({
            "servers": [{
                "port": {"number": 443, "name": "tls", "protocol": "TLS"},
                "hosts": ["*"],
                "tls": {"mode": "SIMPLE", "credentialname": "x"}
            }]
        }))
        .expect_err("unknown field");
        assert!(
            err.to_string().contains("unknown field `credentialname`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_enum_value_is_rejected() {
        let err = serde_json::from_value::<Gateway>(json!({
            "servers": [{
                "port": {"number": 443, "name": "tls", "protocol": "TLS"},
                "hosts": ["*"],
                "tls": {"mode": "TERMINATE"}
            }]
        }))
        .expect_err("unknown mode");
        assert!(err.to_string().contains("TERMINATE"), "{err}");
        let err =
            serde_json::from_value::<ServerTLSSettings>(json!({"minProtocolVersion": "TLSV1_4"}))
                .expect_err("unknown version");
        assert!(err.to_string().contains("TLSV1_4"), "{err}");
    }
}
