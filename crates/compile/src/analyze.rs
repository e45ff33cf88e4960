//! Analysis across resources, as `istioctl analyze` does it, with Istio's codes where Istio has
//! one for the same finding and sluice's own (`SLC01xx`) where a setup cannot work as its
//! author meant. Each module holds the checks about one kind; [`registry`] is the shared view
//! of what exists (hosts, gateways, subsets, workloads), [`kube`] the Kubernetes objects of the
//! input (Pods, Services, Namespaces), which some checks need and skip when absent.

mod authorization_policy;
mod deprecation;
mod destination_rule;
mod envoy_filter;
mod gateway;
mod host_patterns;
pub mod hosts;
mod kube;
mod registry;
mod service_entry;
mod sidecar;
mod telemetry;
mod virtual_service;
mod workload_selectors;

use std::collections::BTreeMap;

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
    /// A Squid-style `.example.com` host, which Istio never matches.
    pub const HOST_LEADING_DOT: &str = "SLC0109";
    /// `*.example.com` without `example.com`, while another resource names `example.com`.
    pub const WILDCARD_MISSES_APEX: &str = "SLC0110";
    /// An egress gateway server host `*` while the mesh is REGISTRY_ONLY.
    pub const MATCH_ALL_EGRESS_HOST: &str = "SLC0111";
}

/// Istio's codes used here (`pkg/config/analysis/msg/messages.yaml`).
pub mod istio_codes {
    pub const DEPRECATED: &str = "IST0002";
    pub const REFERENCED_RESOURCE_NOT_FOUND: &str = "IST0101";
    pub const CONFLICTING_MESH_GATEWAY_VS_HOSTS: &str = "IST0109";
    pub const CONFLICTING_SIDECAR_SELECTORS: &str = "IST0110";
    pub const MULTIPLE_SIDECARS_WITHOUT_SELECTOR: &str = "IST0111";
    pub const VS_DESTINATION_PORT_REQUIRED: &str = "IST0112";
    pub const NO_MATCHING_WORKLOADS: &str = "IST0127";
    pub const NO_SERVER_CERT_VERIFICATION_DR: &str = "IST0128";
    pub const NO_SERVER_CERT_VERIFICATION_PORT: &str = "IST0129";
    /// A VirtualService rule no request reaches / a match an earlier rule already takes
    /// (said by validation, where Istio's webhook warns about the same).
    pub const VS_UNREACHABLE_RULE: &str = "IST0130";
    pub const VS_INEFFECTIVE_MATCH: &str = "IST0131";
    pub const VS_HOST_NOT_IN_GATEWAY: &str = "IST0132";
    /// Said by validation, where Istio's webhook warns about the same.
    pub const SE_ADDRESSES_REQUIRED: &str = "IST0134";
    pub const GATEWAY_DUPLICATE_CERTIFICATE: &str = "IST0138";
    pub const INGRESS_ROUTE_RULES_NOT_AFFECTED: &str = "IST0140";
    pub const CONFLICTING_GATEWAYS: &str = "IST0145";
    pub const JWT_CLAIM_ROUTE_WITHOUT_REQUEST_AUTHN: &str = "IST0149";
    pub const INVALID_TELEMETRY_PROVIDER: &str = "IST0157";
    pub const CONFLICTING_TELEMETRY_SELECTORS: &str = "IST0159";
    pub const MULTIPLE_TELEMETRIES_WITHOUT_SELECTOR: &str = "IST0160";
    pub const GATEWAY_PORT_NOT_ON_SERVICE: &str = "IST0162";
    pub const REFERENCED_INTERNAL_GATEWAY: &str = "IST0165";
    pub const DR_SUBSET_SELECTS_NO_PODS: &str = "IST0173";
    pub const UNKNOWN_DR_HOST: &str = "IST0174";
    pub const CONFLICTING_SE_PROTOCOL: &str = "IST0177";
}

/// Runs every cross-resource check.
pub fn analyze(resources: &Resources) -> Vec<Diagnostic> {
    let registry = Registry::new(resources);
    let mut out = Vec::new();
    deprecation::analyze(&registry, &mut out);
    virtual_service::analyze(&registry, &mut out);
    destination_rule::analyze(&registry, &mut out);
    gateway::analyze(&registry, &mut out);
    service_entry::analyze(&registry, &mut out);
    sidecar::analyze(&registry, &mut out);
    telemetry::analyze(&registry, &mut out);
    authorization_policy::analyze(&registry, &mut out);
    envoy_filter::analyze(&registry, &mut out);
    host_patterns::analyze(&registry, &mut out);
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

/// A label selector as Kubernetes prints it (`app=a,version=v1`, keys sorted), which is how
/// Istio's messages name selectors.
pub(crate) fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
