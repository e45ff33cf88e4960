//! Gateway checks: the selector selects a gateway (IST0101 / sluice's SLC0102, here), the
//! credentials named exist ([`credentials`], IST0101), no two Gateways claim the same port
//! and host on the same workload ([`conflicts`], IST0145), the Service in front of the gateway
//! pods leads to each server port ([`ports`], IST0162), and no two Gateways share a
//! certificate ([`certificates`], IST0138).

mod certificates;
mod conflicts;
mod credentials;
mod ports;

use sluice_model::{Diagnostic, Level};

pub(super) use ports::DefaultIngress;

use super::registry::Registry;
use super::{codes, finding, istio_codes, selector_string};

pub(super) fn analyze(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    for gw in &reg.resources.gateways {
        if reg.serves(&gw.spec) {
            continue;
        }
        let selector = selector_string(&gw.spec.selector);
        // Istio's default ingress gateway is assumed present (as istioctl does for files), so a
        // Gateway for it is no error; sluice still says that it does not serve it.
        let selects_known = reg.workloads.iter().any(|w| gw.spec.selects(&w.labels));
        out.push(if reg.has_pods() && !selects_known {
            finding(
                gw,
                istio_codes::REFERENCED_RESOURCE_NOT_FOUND,
                Level::Error,
                "spec.selector",
                format!("Referenced selector not found: {selector:?}"),
            )
        } else {
            finding(
                gw,
                codes::GATEWAY_SELECTS_NOTHING,
                Level::Warning,
                "spec.selector",
                format!(
                    "selector {selector:?} selects no gateway sluice knows: sluice's gateway runs \
                     with labels istio=egressgateway unless --labels says otherwise, so this \
                     Gateway opens no listener there"
                ),
            )
        });
    }
    credentials::analyze(reg, out);
    conflicts::analyze(reg, out);
    ports::analyze(reg, out);
    certificates::analyze(reg, out);
}
