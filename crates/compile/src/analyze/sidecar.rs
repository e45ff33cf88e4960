//! Sidecar checks, as Istio's `sidecar.SelectorAnalyzer`: one Sidecar resource per workload
//! (IST0101, IST0110, IST0111; see [`workload_selectors`](super::workload_selectors)).
//!
//! Istio's IST0167 (a Sidecar in an ambient namespace has no effect) is not reported: sluice's
//! sidecar is deployed by hand beside the workload and applies the resource whatever the
//! namespace's dataplane mode.

use sluice_model::Diagnostic;

use super::istio_codes;
use super::registry::Registry;
use super::workload_selectors::{self, Kind, Selecting};

pub(super) fn analyze(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    let items: Vec<Selecting<'_, _>> = reg
        .resources
        .sidecars
        .iter()
        .map(|sc| Selecting {
            resource: sc,
            // An empty selector selects the whole namespace, as none does.
            selector: sc
                .spec
                .workload_selector
                .as_ref()
                .map(|s| &s.labels)
                .filter(|l| !l.is_empty()),
            selector_path: "spec.workloadSelector.labels",
        })
        .collect();
    let kind = Kind {
        plural: "Sidecars",
        same_pod: istio_codes::CONFLICTING_SIDECAR_SELECTORS,
        no_selector: istio_codes::MULTIPLE_SIDECARS_WITHOUT_SELECTOR,
    };
    workload_selectors::analyze(reg, &kind, &items, out);
}
