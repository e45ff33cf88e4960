//! DestinationRule checks: the host exists (IST0174, here), its subsets select endpoints
//! (IST0173, [`subsets`]), and upstream TLS verifies the server and fits the traffic it applies
//! to ([`tls`]: IST0128/IST0129 and sluice's own).

mod subsets;
mod tls;

use sluice_model::{Diagnostic, Level};

use super::registry::{self, Registry};
use super::{finding, hosts, istio_codes};

pub(super) fn analyze(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    for dr in &reg.resources.destination_rules {
        let host = hosts::qualify(&dr.spec.host, dr.namespace());
        // Looked up where the rule is used (its exportTo), as Istio does. sluice's own gateway
        // service is known without registration.
        let scopes = registry::scopes(&dr.spec.export_to, dr.namespace());
        let backend = reg.backend(&host, &scopes);
        if backend.is_none() && !reg.is_gateway_service(&host) {
            out.push(finding(
                dr,
                istio_codes::UNKNOWN_DR_HOST,
                Level::Warning,
                "spec.host",
                format!(
                    "The host {host} defined in the DestinationRule does not match any services in the mesh."
                ),
            ));
        }
        if let Some(backend) = backend {
            subsets::analyze(reg, dr, backend, out);
        }
        tls::analyze(reg, dr, &host, out);
    }
}
