//! IST0138: two Gateways on the same workload serve the same certificate, as Istio's
//! `gateway.CertificateAnalyzer`. A client that coalesces HTTP/2 connections (a browser, or any
//! HTTP/2 client that reuses a connection for every name the certificate covers) sends requests
//! for one Gateway's hosts over the connection the other accepted, and gets 404s.
//!
//! Gateways are compared when the other's selector holds every label of this one's (an empty
//! selector compares with every Gateway), in any namespace. Certificates are the same when both
//! servers name the same `credentialName`, or neither names one and both files agree.

use std::collections::{BTreeMap, BTreeSet};

use sluice_model::networking::gateway::ServerTLSSettings;
use sluice_model::{Diagnostic, Level};

use super::super::registry::Registry;
use super::super::{finding, istio_codes};

pub(super) fn analyze(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    let gws = &reg.resources.gateways;
    for (i, gw) in gws.iter().enumerate() {
        let mut reported = BTreeSet::new();
        for (j, other) in gws.iter().enumerate() {
            if i == j || !subset(&gw.spec.selector, &other.spec.selector) {
                continue;
            }
            let shared = gw
                .spec
                .servers
                .iter()
                .filter_map(|s| s.tls.as_ref())
                .any(|a| {
                    other
                        .spec
                        .servers
                        .iter()
                        .filter_map(|s| s.tls.as_ref())
                        .any(|b| same_certificate(a, b))
                });
            if !shared || !reported.insert(j) {
                continue;
            }
            out.push(finding(
                gw,
                istio_codes::GATEWAY_DUPLICATE_CERTIFICATE,
                Level::Warning,
                "metadata.name",
                format!(
                    "Duplicate certificate in multiple gateways [{}/{} {}/{}] may cause 404s if \
                     clients re-use HTTP2 connections.",
                    gw.namespace(),
                    gw.name(),
                    other.namespace(),
                    other.name()
                ),
            ));
        }
    }
}

/// True when every label of `a` is in `b` with the same value (an empty `a` is in any).
fn subset(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> bool {
    a.iter().all(|(k, v)| b.get(k) == Some(v))
}

fn same_certificate(a: &ServerTLSSettings, b: &ServerTLSSettings) -> bool {
    let named = |t: &ServerTLSSettings| t.credential_name.clone().filter(|n| !n.is_empty());
    let file = |f: &Option<String>| f.clone().filter(|f| !f.is_empty());
    match (named(a), named(b)) {
        (Some(x), Some(y)) => x == y,
        (None, None) => {
            let (Some(ca), Some(cb)) = (file(&a.server_certificate), file(&b.server_certificate))
            else {
                return false;
            };
            let (Some(ka), Some(kb)) = (file(&a.private_key), file(&b.private_key)) else {
                return false;
            };
            ca == cb && ka == kb
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use sluice_model::load_str;

    use super::*;

    fn origins(yaml: &str) -> Vec<String> {
        let loaded = load_str("gw.yaml", yaml);
        let reg = Registry::new(&loaded.resources);
        let mut out = Vec::new();
        analyze(&reg, &mut out);
        out.iter()
            .filter(|d| d.code == "IST0138")
            .map(|d| d.origin.clone().unwrap_or_default())
            .collect()
    }

    const TWO: &str = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: a, namespace: ns}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: SIMPLE, credentialName: CRED_A}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: b, namespace: ns}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [b.example.com]
    tls: {mode: SIMPLE, credentialName: CRED_B}
";

    #[test]
    fn one_credential_on_two_gateways_is_ist0138_on_each() {
        let yaml = TWO.replace("CRED_A", "shared").replace("CRED_B", "shared");
        assert_eq!(origins(&yaml), ["Gateway ns/a", "Gateway ns/b"]);
    }

    #[test]
    fn different_credentials_or_workloads_are_not() {
        assert!(origins(&TWO.replace("CRED_A", "one").replace("CRED_B", "two")).is_empty());
        let apart = TWO
            .replace("CRED_A", "shared")
            .replace("CRED_B", "shared")
            .replacen("istio: egressgateway", "istio: other", 1);
        assert!(origins(&apart).is_empty());
    }
}
