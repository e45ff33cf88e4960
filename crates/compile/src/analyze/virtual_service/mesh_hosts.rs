//! Hosts routed for the mesh: one VirtualService per host where it is visible (IST0109), and
//! what REGISTRY_ONLY will refuse (sluice's SLC0103).

use std::collections::BTreeMap;

use sluice_model::mesh::OutboundTrafficPolicyMode;
use sluice_model::networking::VirtualService;
use sluice_model::{Diagnostic, Level, Resource};

use super::super::registry::Registry;
use super::super::{codes, finding, hosts, istio_codes};
use super::binds_mesh;

/// The scope of a VirtualService exported everywhere.
const EVERYWHERE: &str = "*";

pub(super) fn analyze(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    conflicting_hosts(reg, out);
    for vs in &reg.resources.virtual_services {
        if binds_mesh(&vs.spec) {
            unregistered_hosts(reg, vs, out);
        }
    }
}

/// IST0109, as Istio's `ConflictingMeshGatewayHostsAnalyzer`: sidecars merge no two
/// VirtualServices for one host; which one wins is undefined. Hosts are grouped by where they
/// are exported to; one exported to some namespaces also conflicts with a host it overlaps
/// that is exported everywhere. Each VirtualService is reported once.
fn conflicting_hosts(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    let mut groups: BTreeMap<(String, String), Vec<&Resource<VirtualService>>> = BTreeMap::new();
    for vs in reg
        .resources
        .virtual_services
        .iter()
        .filter(|v| binds_mesh(&v.spec))
    {
        let ns = vs.namespace();
        let export = &vs.spec.export_to;
        let mut scopes: Vec<String> = if export.is_empty() || export.iter().any(|e| e == EVERYWHERE)
        {
            vec![EVERYWHERE.to_owned()]
        } else {
            export
                .iter()
                .map(|e| if e == "." { ns.to_owned() } else { e.clone() })
                .collect()
        };
        scopes.sort();
        scopes.dedup();
        for scope in scopes {
            for host in &vs.spec.hosts {
                let list = groups
                    .entry((scope.clone(), hosts::qualify(host, ns)))
                    .or_default();
                if !list.iter().any(|v| std::ptr::eq(*v, vs)) {
                    list.push(vs);
                }
            }
        }
    }
    let mut reported: Vec<&Resource<VirtualService>> = Vec::new();
    for ((scope, host), list) in &groups {
        let mut all = list.clone();
        if scope != EVERYWHERE {
            for ((other_scope, other_host), others) in &groups {
                if other_scope == EVERYWHERE && hosts::overlap(host, other_host) {
                    for v in others {
                        if !all.iter().any(|a| std::ptr::eq(*a, *v)) {
                            all.push(v);
                        }
                    }
                }
            }
        }
        if all.len() < 2 {
            continue;
        }
        let names: Vec<String> = all
            .iter()
            .map(|v| format!("{}/{}", v.namespace(), v.name()))
            .collect();
        for vs in all {
            if reported.iter().any(|r| std::ptr::eq(*r, vs)) {
                continue;
            }
            reported.push(vs);
            out.push(finding(
                vs,
                istio_codes::CONFLICTING_MESH_GATEWAY_VS_HOSTS,
                Level::Error,
                "spec.hosts",
                format!(
                    "The VirtualServices {} associated with mesh gateway define the same host {host} \
                     which can lead to undefined behavior. This can be fixed by merging the \
                     conflicting VirtualServices into a single resource.",
                    names.join(",")
                ),
            ));
        }
    }
}

/// Under REGISTRY_ONLY a sidecar refuses hosts no ServiceEntry registers, whatever a
/// VirtualService says about them.
fn unregistered_hosts(
    reg: &Registry<'_>,
    vs: &Resource<VirtualService>,
    out: &mut Vec<Diagnostic>,
) {
    if reg.outbound_mode != OutboundTrafficPolicyMode::RegistryOnly {
        return;
    }
    for (i, host) in vs.spec.hosts.iter().enumerate() {
        let q = hosts::qualify(host, vs.namespace());
        if q.contains('*') || reg.is_registered(&q, vs.namespace()) {
            continue;
        }
        out.push(finding(
            vs,
            codes::HOST_NOT_REGISTERED,
            Level::Warning,
            &format!("spec.hosts[{i}]"),
            format!(
                "host {q:?} is routed for the mesh but no ServiceEntry registers it; with \
                 outboundTrafficPolicy REGISTRY_ONLY sidecars refuse it (HTTP 502, TLS/TCP closed)"
            ),
        ));
    }
}
