//! Resources that apply to the workloads they select, one per workload (Sidecar, Telemetry):
//! a selector selects a pod of its namespace (IST0101), no two select the same pod
//! (IST0110 / IST0159), and no two in a namespace have no selector (IST0111 / IST0160). The
//! proxy would take one of them; which one is not defined.
//!
//! Pods are needed to say the first two; without Pods in the input they are skipped.

use std::collections::BTreeMap;

use sluice_model::resource::IstioKind;
use sluice_model::{Diagnostic, Level, Resource};

use super::registry::Registry;
use super::{finding, istio_codes, selector_string};

/// One resource: its selector (`None` for the namespace-wide one) and where that is written.
pub(super) struct Selecting<'a, T> {
    pub resource: &'a Resource<T>,
    pub selector: Option<&'a BTreeMap<String, String>>,
    pub selector_path: &'static str,
}

/// The kind's codes and its plural for messages.
pub(super) struct Kind {
    pub plural: &'static str,
    pub same_pod: &'static str,
    pub no_selector: &'static str,
}

pub(super) fn analyze<T: IstioKind>(
    reg: &Registry<'_>,
    kind: &Kind,
    items: &[Selecting<'_, T>],
    out: &mut Vec<Diagnostic>,
) {
    // pod (namespace, name) → indexes of the items selecting it
    let mut by_pod: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
    let mut by_namespace: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let ns = item.resource.namespace();
        let Some(selector) = item.selector else {
            by_namespace.entry(ns).or_default().push(i);
            continue;
        };
        if !reg.has_pods() {
            continue;
        }
        let mut found = false;
        for pod in reg.kube.pods.iter().filter(|p| p.namespace == ns) {
            if selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)) {
                found = true;
                by_pod.entry((pod.namespace, pod.name)).or_default().push(i);
            }
        }
        if !found {
            out.push(finding(
                item.resource,
                istio_codes::REFERENCED_RESOURCE_NOT_FOUND,
                Level::Error,
                item.selector_path,
                format!(
                    "Referenced selector not found: {:?}",
                    selector_string(selector)
                ),
            ));
        }
    }
    let names = |list: &[usize]| {
        let names: Vec<&str> = list.iter().map(|i| items[*i].resource.name()).collect();
        format!("[{}]", names.join(" "))
    };
    // Each resource once, naming the first pod it shares.
    let mut reported = vec![false; items.len()];
    for ((ns, pod), list) in &by_pod {
        if list.len() < 2 {
            continue;
        }
        for i in list {
            if std::mem::replace(&mut reported[*i], true) {
                continue;
            }
            out.push(finding(
                items[*i].resource,
                kind.same_pod,
                Level::Error,
                "metadata.name",
                format!(
                    "The {} {} in namespace {ns:?} select the same workload pod {pod:?}, which can \
                     lead to undefined behavior.",
                    kind.plural,
                    names(list)
                ),
            ));
        }
    }
    for (ns, list) in &by_namespace {
        if list.len() < 2 {
            continue;
        }
        for i in list {
            out.push(finding(
                items[*i].resource,
                kind.no_selector,
                Level::Error,
                "metadata.name",
                format!(
                    "The {} {} in namespace {ns:?} have no workload selector, which can lead to \
                     undefined behavior.",
                    kind.plural,
                    names(list)
                ),
            ));
        }
    }
}
