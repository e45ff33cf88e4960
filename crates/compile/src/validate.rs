//! Per-resource validation, with Istio's admission-webhook rules and messages
//! (`pkg/config/validation` in istio/istio). Each kind has its own module; shared rules
//! (host names, ports, labels) live in [`rules`].

mod authorization_policy;
mod destination_rule;
pub(crate) mod envoy_filter;
mod gateway;
mod mesh;
mod peer_authentication;
mod rate_limit_config;
pub mod rules;
mod service_entry;
mod sidecar;
mod telemetry;
mod virtual_service;
mod workload_entry;

use sluice_model::diag::codes;
use sluice_model::resource::IstioKind;
use sluice_model::{Diagnostic, Level, Resource, Resources};

/// Istio's code for a resource its webhook would reject.
pub const INVALID: &str = "IST0106";

/// Collects the findings about one resource, each placed at the field it concerns.
pub struct Report<'a, T> {
    resource: &'a Resource<T>,
    origin: String,
    out: &'a mut Vec<Diagnostic>,
}

impl<'a, T: IstioKind> Report<'a, T> {
    pub fn new(resource: &'a Resource<T>, out: &'a mut Vec<Diagnostic>) -> Self {
        Report {
            origin: resource.origin(),
            resource,
            out,
        }
    }
}

impl<'a, T> Report<'a, T> {
    pub fn resource(&self) -> &'a Resource<T> {
        self.resource
    }

    fn push(&mut self, code: &'static str, level: Level, path: &str, message: String) {
        let at = self.resource.source.location_of(path);
        self.out.push(
            Diagnostic::new(code, level, message)
                .origin(self.origin.clone())
                .at(at)
                .path(path),
        );
    }

    /// A rule Istio's webhook enforces: the resource would be rejected.
    pub fn error(&mut self, path: &str, message: impl Into<String>) {
        self.push(INVALID, Level::Error, path, message.into());
    }

    /// Accepted by Istio, but almost certainly not what was meant.
    pub fn warning(&mut self, path: &str, message: impl Into<String>) {
        self.push(INVALID, Level::Warning, path, message.into());
    }

    /// A field sluice reads but does not act on; said out loud rather than ignored.
    pub fn not_supported(&mut self, path: &str, message: impl Into<String>) {
        self.push(codes::NOT_SUPPORTED, Level::Warning, path, message.into());
    }

    /// Any other finding with its own code (e.g. IST0002 Deprecated).
    pub fn with_code(&mut self, code: &'static str, level: Level, path: &str, message: String) {
        self.push(code, level, path, message);
    }
}

/// Validates every resource on its own.
pub fn validate(resources: &Resources) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    macro_rules! each {
        ($field:ident, $module:ident) => {
            for r in &resources.$field {
                $module::validate(&mut Report::new(r, &mut out));
            }
        };
    }
    let mesh = service_entry::MeshContext::of(resources);
    for r in &resources.service_entries {
        service_entry::validate(&mut Report::new(r, &mut out), mesh);
    }
    each!(gateways, gateway);
    each!(virtual_services, virtual_service);
    each!(destination_rules, destination_rule);
    each!(sidecars, sidecar);
    each!(workload_entries, workload_entry);
    each!(envoy_filters, envoy_filter);
    each!(authorization_policies, authorization_policy);
    each!(peer_authentications, peer_authentication);
    each!(telemetries, telemetry);
    each!(istio_operators, mesh);
    each!(rate_limit_configs, rate_limit_config);
    for r in &resources.mesh_configs {
        mesh::validate_mesh_config(&mut Report::new(r, &mut out), &r.spec, "");
    }
    out
}
