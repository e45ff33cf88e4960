//! IST0101: a Gateway server's `credentialName` names no Secret in the namespace of the gateway
//! workload it selects (not the Gateway's own), as Istio's `gateway.SecretAnalyzer`. Said only
//! when the input holds Secrets: otherwise (sluice reads credentials from its
//! `--credentials-dir`) sluice cannot know.
//!
//! Istio's IST0161 (the Secret's certificate is invalid or expired) is not checked here: it
//! needs an X.509 parser, and the proxy refuses such a certificate when it loads it.

use sluice_model::{Diagnostic, Level};

use super::super::registry::Registry;
use super::super::{finding, istio_codes};

pub(super) fn analyze(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    if reg.kube.secrets.is_empty() {
        return;
    }
    for gw in &reg.resources.gateways {
        let workload_ns = reg
            .kube
            .pods
            .iter()
            .find(|p| gw.spec.selects(&p.labels))
            .map(|p| p.namespace)
            .or_else(|| {
                reg.workloads
                    .iter()
                    .find(|w| gw.spec.selects(&w.labels))
                    .map(|w| w.namespace.as_str())
            });
        // A Gateway that selects nothing is reported as such.
        let Some(ns) = workload_ns else { continue };
        for (i, server) in gw.spec.servers.iter().enumerate() {
            let Some(name) = server
                .tls
                .as_ref()
                .and_then(|t| t.credential_name.as_deref())
            else {
                continue;
            };
            if name.is_empty() || reg.kube.secrets.contains(&(ns, name)) {
                continue;
            }
            out.push(finding(
                gw,
                istio_codes::REFERENCED_RESOURCE_NOT_FOUND,
                Level::Error,
                &format!("spec.servers[{i}].tls.credentialName"),
                format!("Referenced credentialName not found: {name:?}"),
            ));
        }
    }
}
