//! Analysis across resources, as `istioctl analyze` does it, with Istio's codes where Istio has
//! one for the same finding and sluice's own (`SLC01xx`) where a setup cannot work as its
//! author meant. Each module holds the checks about one kind; [`registry`] is the shared view
//! of what exists (hosts, gateways, subsets, workloads).

mod authorization_policy;
mod destination_rule;
mod gateway;
pub mod hosts;
mod registry;
mod service_entry;
mod virtual_service;

use sluice_model::resource::IstioKind;
use sluice_model::{Diagnostic, Level, Resource, Resources};

pub use registry::Registry;

/// Codes of the findings Istio has no code for.
pub mod codes {
    /// A host only Kubernetes could resolve is not registered by any ServiceEntry.
    pub const CLUSTER_HOST_NOT_REGISTERED: &str = "SLC0101";
    /// A Gateway selects no workload sluice knows.
    pub const GATEWAY_SELECTS_NOTHING: &str = "SLC0102";
    /// A host is not registered while the mesh is REGISTRY_ONLY: traffic to it is refused.
    pub const HOST_NOT_REGISTERED: &str = "SLC0103";
    /// TLS origination configured for traffic that arrives already encrypted.
    pub const TLS_ON_PASSTHROUGH: &str = "SLC0104";
    /// ISTIO_MUTUAL toward something that does not speak mesh mTLS.
    pub const MESH_TLS_TO_EXTERNAL: &str = "SLC0105";
    /// A policy names principals or namespaces, but no hop to that gateway carries them.
    pub const PRINCIPALS_WITHOUT_MTLS: &str = "SLC0106";
    /// sluice evaluates this policy differently from Istio (on purpose; see the docs).
    pub const DIFFERS_FROM_ISTIO: &str = "SLC0107";
    /// A route sends mesh traffic to the egress gateway on a port no Gateway server listens on.
    pub const NO_GATEWAY_SERVER_FOR_PORT: &str = "SLC0108";
    /// A route names a port its ServiceEntry does not declare.
    pub const PORT_NOT_DECLARED: &str = "SLC0109";
}

/// Istio's codes used here.
pub mod istio_codes {
    pub const REFERENCED_RESOURCE_NOT_FOUND: &str = "IST0101";
    pub const CONFLICTING_MESH_GATEWAY_VS_HOSTS: &str = "IST0109";
    pub const NO_SERVER_CERT_VERIFICATION_DR: &str = "IST0128";
    pub const NO_SERVER_CERT_VERIFICATION_PORT: &str = "IST0129";
    pub const VS_HOST_NOT_IN_GATEWAY: &str = "IST0132";
    pub const CONFLICTING_GATEWAYS: &str = "IST0145";
    pub const UNKNOWN_DR_HOST: &str = "IST0174";
    pub const CONFLICTING_SE_PROTOCOL: &str = "IST0177";
}

/// Runs every cross-resource check.
pub fn analyze(resources: &Resources) -> Vec<Diagnostic> {
    let registry = Registry::new(resources);
    let mut out = Vec::new();
    virtual_service::analyze(&registry, &mut out);
    destination_rule::analyze(&registry, &mut out);
    gateway::analyze(&registry, &mut out);
    service_entry::analyze(&registry, &mut out);
    authorization_policy::analyze(&registry, &mut out);
    out
}

/// A finding about `resource`, placed at the field `path`.
pub(crate) fn finding<T: IstioKind>(
    resource: &Resource<T>,
    code: &'static str,
    level: Level,
    path: &str,
    message: String,
) -> Diagnostic {
    Diagnostic::new(code, level, message)
        .origin(resource.origin())
        .at(resource.source.location_of(path))
        .path(path)
}
