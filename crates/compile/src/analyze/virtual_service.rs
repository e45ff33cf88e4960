//! VirtualService checks, one module per question: do the named gateways exist and serve the
//! hosts ([`gateways`]), do the destinations exist ([`destinations`]) with the subsets named
//! ([`subsets`]), is each mesh host routed by one VirtualService ([`mesh_hosts`]), and do
//! routes on JWT claims have a RequestAuthentication to set them ([`jwt_claims`]).

mod destinations;
mod gateways;
mod jwt_claims;
mod mesh_hosts;
mod subsets;

use sluice_model::Diagnostic;
use sluice_model::networking::VirtualService;
use sluice_model::networking::virtual_service::Destination;

use super::registry::Registry;

pub(super) fn analyze(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    for vs in &reg.resources.virtual_services {
        gateways::analyze(reg, vs, out);
        destinations::analyze(reg, vs, out);
        subsets::analyze(reg, vs, out);
        jwt_claims::analyze(reg, vs, out);
    }
    mesh_hosts::analyze(reg, out);
}

/// The gateway a VirtualService with no `gateways` applies to, and the name for it.
pub(crate) const MESH: &str = "mesh";

/// A VirtualService with no `gateways` applies to the mesh, as does one that names `mesh`.
pub(crate) fn binds_mesh(vs: &VirtualService) -> bool {
    vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == MESH)
}

/// One destination of a route, or a mirror, with its field path.
pub(crate) struct RouteDestination<'v> {
    pub path: String,
    pub dest: &'v Destination,
    /// A copy of the traffic (`mirror`, `mirrors`), not where it goes.
    pub mirror: bool,
    /// Under `tls:` (routed by SNI, bytes passed through).
    pub tls: bool,
}

/// Every destination of every route, mirrors included.
pub(crate) fn destinations(vs: &VirtualService) -> Vec<RouteDestination<'_>> {
    let mut list = Vec::new();
    let mut push = |path: String, dest, mirror, tls| {
        list.push(RouteDestination {
            path,
            dest,
            mirror,
            tls,
        })
    };
    for (i, r) in vs.http.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            push(
                format!("spec.http[{i}].route[{j}].destination"),
                &d.destination,
                false,
                false,
            );
        }
        if let Some(m) = &r.mirror {
            push(format!("spec.http[{i}].mirror"), m, true, false);
        }
        for (j, m) in r.mirrors.iter().enumerate() {
            push(
                format!("spec.http[{i}].mirrors[{j}].destination"),
                &m.destination,
                true,
                false,
            );
        }
    }
    for (i, r) in vs.tls.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            push(
                format!("spec.tls[{i}].route[{j}].destination"),
                &d.destination,
                false,
                true,
            );
        }
    }
    for (i, r) in vs.tcp.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            push(
                format!("spec.tcp[{i}].route[{j}].destination"),
                &d.destination,
                false,
                false,
            );
        }
    }
    list
}
