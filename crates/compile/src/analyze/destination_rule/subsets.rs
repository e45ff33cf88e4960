//! IST0173: a subset whose labels select none of the host's endpoints, so requests routed to it
//! find no upstream (Envoy: 503 UH), as Istio's `destinationrule.PodNotSelectedAnalyzer`.
//!
//! The endpoints are what the input shows: the Pods (with their node's locality labels) a
//! Kubernetes Service selects, or a ServiceEntry's own endpoints and the WorkloadEntries and
//! Pods its workloadSelector selects. Where the input cannot show them (a Service without
//! selector, a DNS ServiceEntry without endpoints) nothing is said.

use std::collections::BTreeMap;

use sluice_model::networking::DestinationRule;
use sluice_model::{Diagnostic, Level, Resource};

use super::super::registry::{Backend, Registry};
use super::super::{finding, istio_codes};

pub(super) fn analyze(
    reg: &Registry<'_>,
    dr: &Resource<DestinationRule>,
    backend: Backend<'_>,
    out: &mut Vec<Diagnostic>,
) {
    if dr.spec.subsets.is_empty() {
        return;
    }
    let Some(endpoints) = endpoint_labels(reg, backend) else {
        return;
    };
    for (i, subset) in dr.spec.subsets.iter().enumerate() {
        // A subset without labels is every endpoint; if there are none, the subset is not why.
        if subset.labels.is_empty() {
            continue;
        }
        let selects = endpoints
            .iter()
            .any(|labels| subset.labels.iter().all(|(k, v)| labels.get(k) == Some(v)));
        if !selects {
            out.push(finding(
                dr,
                istio_codes::DR_SUBSET_SELECTS_NO_PODS,
                Level::Error,
                &format!("spec.subsets[{i}].labels"),
                format!(
                    "The Subset {} defined in the DestinationRule does not select any pods. Which \
                     may lead to 503 UH (NoHealthyUpstream).",
                    subset.name
                ),
            ));
        }
    }
}

/// The label sets of the endpoints behind `backend`, or `None` when the input cannot tell.
fn endpoint_labels<'r>(
    reg: &'r Registry<'_>,
    backend: Backend<'r>,
) -> Option<Vec<&'r BTreeMap<String, String>>> {
    match backend {
        Backend::Service(svc) => {
            let selector = svc.selector.as_ref()?;
            Some(
                reg.kube
                    .pods
                    .iter()
                    .filter(|p| p.namespace == svc.namespace)
                    .filter(|p| selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
                    .map(|p| &p.labels)
                    .collect(),
            )
        }
        Backend::Entry(se) => {
            let mut labels: Vec<&BTreeMap<String, String>> =
                se.spec.endpoints.iter().map(|e| &e.labels).collect();
            let workloads_shown = !reg.resources.workload_entries.is_empty() || reg.has_pods();
            if let Some(sel) = se
                .spec
                .workload_selector
                .as_ref()
                .filter(|_| workloads_shown)
            {
                let ns = se.namespace();
                labels.extend(
                    reg.resources
                        .workload_entries
                        .iter()
                        .filter(|we| we.namespace() == ns && sel.matches(&we.spec.labels))
                        .map(|we| &we.spec.labels),
                );
                labels.extend(
                    reg.kube
                        .pods
                        .iter()
                        .filter(|p| p.namespace == ns && sel.matches(&p.labels))
                        .map(|p| &p.labels),
                );
            } else if se.spec.endpoints.is_empty() {
                // DNS resolution, or workloads the input does not show.
                return None;
            }
            Some(labels)
        }
    }
}
