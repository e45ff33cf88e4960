//! IST0101: a destination names a subset that no DestinationRule for its host defines, as
//! Istio's `virtualservice.DestinationRuleAnalyzer` checks it (whether or not the host itself
//! is known: the subset is missing either way).

use sluice_model::networking::VirtualService;
use sluice_model::{Diagnostic, Level, Resource};

use super::super::registry::Registry;
use super::super::{finding, hosts, istio_codes};
use super::destinations;

pub(super) fn analyze(
    reg: &Registry<'_>,
    vs: &Resource<VirtualService>,
    out: &mut Vec<Diagnostic>,
) {
    let ns = vs.namespace();
    for d in destinations(&vs.spec) {
        let Some(subset) = &d.dest.subset else {
            continue;
        };
        let host = hosts::qualify(&d.dest.host, ns);
        let defined = reg
            .destination_rules(&host, ns)
            .any(|dr| dr.spec.subsets.iter().any(|s| &s.name == subset));
        if defined {
            continue;
        }
        let what = if d.mirror { "mirror" } else { "host" };
        out.push(finding(
            vs,
            istio_codes::REFERENCED_RESOURCE_NOT_FOUND,
            Level::Error,
            &format!("{}.subset", d.path),
            format!("Referenced {what}+subset in destinationrule not found: \"{host}+{subset}\""),
        ));
    }
}
