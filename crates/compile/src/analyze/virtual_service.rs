//! VirtualService checks: referenced gateways, hosts and subsets exist (IST0101), hosts are
//! served by the gateways named (IST0132), one VirtualService per host on the mesh (IST0109),
//! and what REGISTRY_ONLY will refuse.

use std::collections::BTreeMap;

use sluice_model::mesh::OutboundTrafficPolicyMode;
use sluice_model::networking::VirtualService;
use sluice_model::networking::virtual_service::Destination;
use sluice_model::{Diagnostic, Level, Resource};

use super::registry::Registry;
use super::{codes, finding, hosts, istio_codes};

pub(super) fn analyze(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    let mut mesh_hosts: BTreeMap<String, Vec<&Resource<VirtualService>>> = BTreeMap::new();
    for vs in &reg.resources.virtual_services {
        gateway_references(reg, vs, out);
        hosts_in_gateways(reg, vs, out);
        for (path, dest) in destinations(&vs.spec) {
            destination(reg, vs, &path, dest, out);
        }
        if binds_mesh(&vs.spec) {
            for host in &vs.spec.hosts {
                let host = hosts::qualify(host, vs.namespace());
                mesh_hosts.entry(host).or_default().push(vs);
            }
            unregistered_mesh_hosts(reg, vs, out);
        }
    }
    for (host, list) in mesh_hosts {
        if list.len() < 2 {
            continue;
        }
        let names: Vec<String> = list
            .iter()
            .map(|v| format!("{}/{}", v.namespace(), v.name()))
            .collect();
        for vs in list {
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

/// A VirtualService with no `gateways` applies to the mesh, as does one that names `mesh`.
fn binds_mesh(vs: &VirtualService) -> bool {
    vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh")
}

/// Every gateway name the VirtualService uses, with its field path.
fn gateway_names(vs: &VirtualService) -> Vec<(String, &str)> {
    let mut names: Vec<(String, &str)> = vs
        .gateways
        .iter()
        .enumerate()
        .map(|(i, g)| (format!("spec.gateways[{i}]"), g.as_str()))
        .collect();
    for (i, r) in vs.http.iter().enumerate() {
        for (j, m) in r.match_.iter().enumerate() {
            for (k, g) in m.gateways.iter().enumerate() {
                names.push((format!("spec.http[{i}].match[{j}].gateways[{k}]"), g));
            }
        }
    }
    for (i, r) in vs.tls.iter().enumerate() {
        for (j, m) in r.match_.iter().enumerate() {
            for (k, g) in m.gateways.iter().enumerate() {
                names.push((format!("spec.tls[{i}].match[{j}].gateways[{k}]"), g));
            }
        }
    }
    for (i, r) in vs.tcp.iter().enumerate() {
        for (j, m) in r.match_.iter().enumerate() {
            for (k, g) in m.gateways.iter().enumerate() {
                names.push((format!("spec.tcp[{i}].match[{j}].gateways[{k}]"), g));
            }
        }
    }
    names
}

fn gateway_references(reg: &Registry<'_>, vs: &Resource<VirtualService>, out: &mut Vec<Diagnostic>) {
    for (path, name) in gateway_names(&vs.spec) {
        if name == "mesh" || reg.gateway(name, vs.namespace()).is_some() {
            continue;
        }
        out.push(finding(
            vs,
            istio_codes::REFERENCED_RESOURCE_NOT_FOUND,
            Level::Error,
            &path,
            format!("Referenced gateway not found: {name:?}"),
        ));
    }
}

/// IST0132: a host of the VirtualService that none of a named Gateway's servers accepts.
fn hosts_in_gateways(reg: &Registry<'_>, vs: &Resource<VirtualService>, out: &mut Vec<Diagnostic>) {
    for (i, name) in vs.spec.gateways.iter().enumerate() {
        let Some(gw) = reg.gateway(name, vs.namespace()) else {
            continue;
        };
        let missing: Vec<&str> = vs
            .spec
            .hosts
            .iter()
            .filter(|h| {
                !gw.spec.servers.iter().flat_map(|s| &s.hosts).any(|sh| {
                    let (ns, host) = hosts::split_namespace(sh);
                    let ns_ok = match ns {
                        None | Some("*") => true,
                        Some(".") => gw.namespace() == vs.namespace(),
                        Some(ns) => ns == vs.namespace(),
                    };
                    ns_ok && hosts::covers(host, h)
                })
            })
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            continue;
        }
        out.push(finding(
            vs,
            istio_codes::VS_HOST_NOT_IN_GATEWAY,
            Level::Warning,
            &format!("spec.gateways[{i}]"),
            format!(
                "one or more host {missing:?} defined in VirtualService {}/{} not found in Gateway {}/{}.",
                vs.namespace(),
                vs.name(),
                gw.namespace(),
                gw.name()
            ),
        ));
    }
}

/// Every destination of every route, mirror included, with its field path.
pub(crate) fn destinations(vs: &VirtualService) -> Vec<(String, &Destination)> {
    let mut list = Vec::new();
    for (i, r) in vs.http.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            list.push((format!("spec.http[{i}].route[{j}].destination"), &d.destination));
        }
        if let Some(m) = &r.mirror {
            list.push((format!("spec.http[{i}].mirror"), m));
        }
        for (j, m) in r.mirrors.iter().enumerate() {
            list.push((format!("spec.http[{i}].mirrors[{j}].destination"), &m.destination));
        }
    }
    for (i, r) in vs.tls.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            list.push((format!("spec.tls[{i}].route[{j}].destination"), &d.destination));
        }
    }
    for (i, r) in vs.tcp.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            list.push((format!("spec.tcp[{i}].route[{j}].destination"), &d.destination));
        }
    }
    list
}

fn destination(
    reg: &Registry<'_>,
    vs: &Resource<VirtualService>,
    path: &str,
    dest: &Destination,
    out: &mut Vec<Diagnostic>,
) {
    let ns = vs.namespace();
    let host = hosts::qualify(&dest.host, ns);
    if !reg.is_registered(&host, ns) {
        out.push(if hosts::is_cluster_local(&host) {
            finding(
                vs,
                codes::CLUSTER_HOST_NOT_REGISTERED,
                Level::Warning,
                &format!("{path}.host"),
                format!(
                    "destination host {host:?} is a Kubernetes service name that no ServiceEntry \
                     registers: outside Kubernetes sluice resolves it only through a ServiceEntry \
                     with location MESH_INTERNAL, resolution STATIC and endpoints (inside \
                     Kubernetes, ignore this if the Service exists)"
                ),
            )
        } else {
            finding(
                vs,
                istio_codes::REFERENCED_RESOURCE_NOT_FOUND,
                Level::Error,
                &format!("{path}.host"),
                format!("Referenced host not found: {host:?}"),
            )
        });
        return;
    }
    if let Some(subset) = &dest.subset {
        let defined = reg
            .destination_rules(&host, ns)
            .any(|dr| dr.spec.subsets.iter().any(|s| &s.name == subset));
        if !defined {
            out.push(finding(
                vs,
                istio_codes::REFERENCED_RESOURCE_NOT_FOUND,
                Level::Error,
                &format!("{path}.subset"),
                format!("Referenced host+subset in destinationrule not found: \"{host}+{subset}\""),
            ));
        }
    }
    if let Some(port) = dest.port.map(|p| p.number) {
        let ses: Vec<_> = reg.service_entries(&host, ns).collect();
        let declared = ses.is_empty()
            || ses
                .iter()
                .any(|se| se.spec.ports.is_empty() || se.spec.ports.iter().any(|p| p.number == port));
        if !declared {
            out.push(finding(
                vs,
                codes::PORT_NOT_DECLARED,
                Level::Error,
                &format!("{path}.port.number"),
                format!(
                    "port {port} of {host:?} is not declared by its ServiceEntry, so there is no \
                     cluster to route to (Envoy answers 503 NC); add the port to the ServiceEntry"
                ),
            ));
        }
    }
}

/// Under REGISTRY_ONLY a sidecar refuses hosts no ServiceEntry registers, whatever a
/// VirtualService says about them.
fn unregistered_mesh_hosts(reg: &Registry<'_>, vs: &Resource<VirtualService>, out: &mut Vec<Diagnostic>) {
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
