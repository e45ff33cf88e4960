//! The demo's Istio configuration: the guide's files (embedded, unchanged but for the port
//! numbers when the demo may not bind 443 and 80), plus what the guide leaves to the cluster.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The guide's files the demo applies, by name.
const GUIDE: &[(&str, &str)] = &[
    (
        "production-egress-setup.yaml",
        include_str!("../../../../testdata/guide/production-egress-setup.yaml"),
    ),
    (
        "authz-egress-policy.yaml",
        include_str!("../../../../testdata/guide/authz-egress-policy.yaml"),
    ),
    (
        "gateway-tls-origination.yaml",
        include_str!("../../../../testdata/guide/gateway-tls-origination.yaml"),
    ),
    (
        "virtualservice-tls-origination.yaml",
        include_str!("../../../../testdata/guide/virtualservice-tls-origination.yaml"),
    ),
    (
        "destinationrule-tls-origination.yaml",
        include_str!("../../../../testdata/guide/destinationrule-tls-origination.yaml"),
    ),
    (
        "serviceentry-tls-origination.yaml",
        include_str!("../../../../testdata/guide/serviceentry-tls-origination.yaml"),
    ),
    (
        "envoyfilter-egress-ratelimit.yaml",
        include_str!("../../../../testdata/guide/envoyfilter-egress-ratelimit.yaml"),
    ),
    (
        "mesh-config.yaml",
        include_str!("../../../../testdata/guide/mesh-config.yaml"),
    ),
];

/// The ports the guide uses (443 for TLS, 80 for plain HTTP) or, where binding them needs
/// privileges the user does not have, unprivileged stand-ins.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub tls: u16,
    pub http: u16,
}

impl Ports {
    /// 443 and 80 when `ip` lets us bind them, else 8443 and 8080.
    pub fn for_ip(ip: IpAddr) -> Ports {
        let can = |port| std::net::TcpListener::bind((ip, port)).is_ok();
        if can(443) && can(80) {
            Ports { tls: 443, http: 80 }
        } else {
            Ports {
                tls: 8443,
                http: 8080,
            }
        }
    }

    pub fn remapped(&self) -> bool {
        self.tls != 443
    }

    /// `yaml` with the guide's port numbers replaced by these.
    fn apply(&self, yaml: &str) -> String {
        if !self.remapped() {
            return yaml.to_string();
        }
        let re = regex::Regex::new(r"\b(443|80)\b").expect("static regex");
        re.replace_all(yaml, |c: &regex::Captures<'_>| {
            if &c[1] == "443" {
                self.tls.to_string()
            } else {
                self.http.to_string()
            }
        })
        .into_owned()
    }
}

/// What the guide leaves to the cluster: the gateway's Service (a MESH_INTERNAL ServiceEntry
/// with the gateway's loopback address), mesh mTLS toward it, and one ALLOW rule so that
/// payment-service may use Step 5's TLS origination (the production setup's ALLOW policy
/// would otherwise deny every other host).
fn cluster(gateway: IpAddr, ports: Ports) -> String {
    let Ports { tls, http } = ports;
    format!(
        r#"# Written by `sluice demo`: what a cluster provides and the guide does not show.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: {tls}, name: tls, protocol: TLS}}
  - {{number: {http}, name: http, protocol: HTTP}}
  endpoints:
  # The label Istio puts on pods with a proxy: sidecars then use mesh mTLS (auto mTLS) on
  # ports no DestinationRule covers, as the production setup's covers only the TLS port.
  - address: {gateway}
    labels: {{security.istio.io/tlsMode: istio}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: egressgateway-mtls, namespace: istio-system}}
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: demo-allow-tls-origination, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: egressgateway}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/production/sa/payment-service]}}}}]
    to: [{{operation: {{hosts: [api.external-service.com, "api.external-service.com:{http}"], ports: ["{http}"]}}}}]
"#
    )
}

/// Writes the configuration into `dir`; returns the files (what `-c` takes).
pub fn write(dir: &Path, gateway: IpAddr, ports: Ports) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for (name, yaml) in GUIDE {
        let path = dir.join(name);
        std::fs::write(&path, ports.apply(yaml))?;
        files.push(path);
    }
    let path = dir.join("cluster.yaml");
    std::fs::write(&path, cluster(gateway, ports))?;
    files.push(path);
    Ok(files)
}
