//! IST0145: two Gateways on the same workload with a server on the same port and a host in
//! common. Envoy keeps one of them; which one is not defined.
//!
//! As Istio's `ConflictingGatewayAnalyzer`: Gateways are on the same workload when their
//! selectors are equal or a known workload matches both (a selector may be a subset of the
//! other); hosts conflict when written the same with the same `bind`, a wildcard and a name
//! it covers do not (Envoy picks the more specific one).

use std::collections::BTreeMap;

use sluice_model::networking::Gateway;
use sluice_model::networking::gateway::Server;
use sluice_model::{Diagnostic, Level, Resource};

use super::super::registry::Registry;
use super::super::{finding, istio_codes, selector_string};

pub(super) fn analyze(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    let gws = &reg.resources.gateways;
    for (i, gw) in gws.iter().enumerate() {
        for (s, server) in gw.spec.servers.iter().enumerate() {
            let mut others: Vec<String> = gws
                .iter()
                .enumerate()
                .filter(|(j, other)| *j != i && same_workload(reg, &gw.spec, &other.spec))
                .filter(|(_, other)| {
                    other
                        .spec
                        .servers
                        .iter()
                        .any(|o| o.port.number == server.port.number && share_host(server, o))
                })
                .map(|(_, other)| full_name(other))
                .collect();
            if others.is_empty() {
                continue;
            }
            others.sort();
            others.dedup();
            out.push(finding(
                gw,
                istio_codes::CONFLICTING_GATEWAYS,
                Level::Error,
                &format!("spec.servers[{s}]"),
                format!(
                    "Conflict with gateways {} (workload selector {}, port {}, hosts {}).",
                    others.join(","),
                    selector_string(&gw.spec.selector),
                    server.port.number,
                    server.hosts.join(",")
                ),
            ));
        }
    }
}

fn full_name(gw: &Resource<Gateway>) -> String {
    format!("{}/{}", gw.namespace(), gw.name())
}

/// Equal selectors, or a workload sluice knows (its gateway, Istio's default ingress, a pod of
/// the input) that both select.
fn same_workload(reg: &Registry<'_>, a: &Gateway, b: &Gateway) -> bool {
    if a.selector == b.selector {
        return true;
    }
    let both = |labels: &BTreeMap<String, String>| a.selects(labels) && b.selects(labels);
    reg.workloads.iter().any(|w| both(&w.labels)) || reg.kube.pods.iter().any(|p| both(&p.labels))
}

/// A host written the same way on both servers, bound to the same address.
fn share_host(a: &Server, b: &Server) -> bool {
    a.bind == b.bind
        && a.hosts
            .iter()
            .any(|ha| b.hosts.iter().any(|hb| ha.eq_ignore_ascii_case(hb)))
}
