//! Destination hosts of a VirtualService, as Istio's `virtualservice.DestinationHostAnalyzer`
//! checks them: the host is registered and visible where the VirtualService is used (IST0101),
//! the port is one it declares (IST0101 `host:port`) or is named when it declares several
//! (IST0112); and a gateway route without subset for a host that the mesh routes by subsets
//! (IST0140).

use sluice_model::networking::VirtualService;
use sluice_model::{Diagnostic, Level, Resource};

use super::super::registry::{self, Registry};
use super::super::{codes, finding, hosts, istio_codes};
use super::{MESH, RouteDestination, destinations};

pub(super) fn analyze(
    reg: &Registry<'_>,
    vs: &Resource<VirtualService>,
    out: &mut Vec<Diagnostic>,
) {
    for d in destinations(&vs.spec) {
        destination(reg, vs, &d, out);
    }
    subsets_skipped_at_gateway(reg, vs, out);
}

fn destination(
    reg: &Registry<'_>,
    vs: &Resource<VirtualService>,
    d: &RouteDestination<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let ns = vs.namespace();
    let host = hosts::qualify(&d.dest.host, ns);
    // The host must be visible wherever the VirtualService is used, i.e. its exportTo.
    let scopes = registry::scopes(&vs.spec.export_to, ns);
    let Some(backend) = reg.backend(&host, &scopes) else {
        // Unless the input shows Services of the host's namespace, sluice cannot tell a typo
        // from a Service it was not shown; it says what it needs instead of calling the host
        // missing. Its own gateway's service is always resolved through a ServiceEntry.
        let unknowable = hosts::is_cluster_local(&host)
            && (reg.is_gateway_service(&host) || !reg.shows_services_of(&host));
        out.push(if unknowable {
            finding(
                vs,
                codes::CLUSTER_HOST_NOT_REGISTERED,
                Level::Warning,
                &format!("{}.host", d.path),
                format!(
                    "destination host {host:?} is a Kubernetes service name that no ServiceEntry \
                     registers: outside Kubernetes sluice resolves it only through a ServiceEntry \
                     with location MESH_INTERNAL, resolution STATIC and endpoints, or the \
                     `kind: Service` itself among the inputs (`kubectl get svc -A -o yaml`)"
                ),
            )
        } else {
            let what = if d.mirror { "mirror host" } else { "host" };
            finding(
                vs,
                istio_codes::REFERENCED_RESOURCE_NOT_FOUND,
                Level::Error,
                &format!("{}.host", d.path),
                format!("Referenced {what} not found: {:?}", d.dest.host),
            )
        });
        return;
    };
    let ports = backend.ports();
    match d.dest.port.map(|p| p.number) {
        None if ports.len() > 1 => out.push(finding(
            vs,
            istio_codes::VS_DESTINATION_PORT_REQUIRED,
            Level::Error,
            &format!("{}.host", d.path),
            format!(
                "This VirtualService routes to a service {:?} that exposes multiple ports {}. \
                 Specifying a port in the destination is required to disambiguate.",
                d.dest.host,
                go_list(&ports)
            ),
        )),
        // A registration without ports is invalid on its own; validation says so.
        Some(port) if !ports.is_empty() && !ports.contains(&port) => out.push(finding(
            vs,
            istio_codes::REFERENCED_RESOURCE_NOT_FOUND,
            Level::Error,
            &format!("{}.port.number", d.path),
            format!(
                "Referenced host:port not found: \"{}:{port}\" (the port is not declared by its \
                 ServiceEntry or Service, so there is no cluster to route to and Envoy answers \
                 503 NC; add the port there)",
                d.dest.host
            ),
        )),
        _ => {}
    }
}

/// `[80 443]`, as Go prints the list in Istio's message.
fn go_list(ports: &[u32]) -> String {
    let items: Vec<String> = ports.iter().map(u32::to_string).collect();
    format!("[{}]", items.join(" "))
}

/// IST0140: a VirtualService bound to a gateway routes to a host without subset while another
/// VirtualService (for that host, on the mesh) splits it into subsets. The subsets apply to
/// sidecars only; at the gateway every request goes to all endpoints of the host.
fn subsets_skipped_at_gateway(
    reg: &Registry<'_>,
    vs: &Resource<VirtualService>,
    out: &mut Vec<Diagnostic>,
) {
    if !vs.spec.gateways.iter().any(|g| g != MESH) {
        return;
    }
    let ns = vs.namespace();
    for (i, rule) in vs.spec.http.iter().enumerate() {
        for (j, route) in rule.route.iter().enumerate() {
            if route.destination.subset.is_some() {
                continue;
            }
            let host = hosts::qualify(&route.destination.host, ns);
            for other in &reg.resources.virtual_services {
                if !splits_by_subset(other, &host) {
                    continue;
                }
                out.push(finding(
                    vs,
                    istio_codes::INGRESS_ROUTE_RULES_NOT_AFFECTED,
                    Level::Warning,
                    &format!("spec.http[{i}].route[{j}].destination.host"),
                    format!(
                        "Subset in virtual service {}/{} has no effect on ingress gateway {ns}/{} \
                         requests",
                        other.namespace(),
                        other.name(),
                        vs.name()
                    ),
                ));
            }
        }
    }
}

/// True when the VirtualService routes its own host `host` to subsets of it.
fn splits_by_subset(vs: &Resource<VirtualService>, host: &str) -> bool {
    let ns = vs.namespace();
    let routes_host = vs.spec.hosts.iter().any(|h| hosts::qualify(h, ns) == host);
    routes_host
        && vs.spec.http.iter().flat_map(|r| &r.route).any(|d| {
            d.destination.subset.is_some() && hosts::qualify(&d.destination.host, ns) == host
        })
}
