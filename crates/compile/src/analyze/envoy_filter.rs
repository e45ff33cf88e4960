//! EnvoyFilter ordering checks, as Istio's `envoyfilter.EnvoyPatchAnalyzer`: a relative patch
//! (INSERT_BEFORE/AFTER, REPLACE, REMOVE) in an EnvoyFilter without `priority` may land before
//! or after what it is relative to (IST0151); when an earlier patch with the same filter name
//! was pinned to a `proxyVersion`, the order may change with an upgrade (IST0155).
//!
//! The per-patch rules (IST0152–IST0154) are validation's. Each code is said once per
//! EnvoyFilter, at its first patch, as `istioctl analyze` deduplicates identical messages.

use std::collections::BTreeSet;

use serde_json::Value;
use sluice_model::networking::EnvoyFilter;
use sluice_model::networking::envoy_filter::EnvoyConfigObjectPatch;
use sluice_model::{Diagnostic, Level, Resource};

use super::finding;
use super::registry::Registry;
use crate::validate::envoy_filter::is_relative;

const RELATIVE_OPERATION: (&str, &str) = (
    "IST0151",
    "This EnvoyFilter does not have a priority and has a relative patch operation set which can \
     cause the EnvoyFilter not to be applied. Using the INSERT_FIRST of ADD option or setting the \
     priority may help in ensuring the EnvoyFilter is applied correctly.",
);
const RELATIVE_WITH_PROXY_VERSION: (&str, &str) = (
    "IST0155",
    "This EnvoyFilter does not have a priority and has a relative patch operation \
     (NSTERT_BEFORE/AFTER, REPLACE, MERGE, DELETE) and proxyVersion set which can cause the \
     EnvoyFilter not to be applied during an upgrade. Using the INSERT_FIRST or ADD option or \
     setting the priority may help in ensuring the EnvoyFilter is applied correctly.",
);

pub(super) fn analyze(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    let mut filters: Vec<&Resource<EnvoyFilter>> = reg.resources.envoy_filters.iter().collect();
    // Istio walks EnvoyFilters by namespace and name; which one comes first decides which gets
    // IST0155, so the walk must be the same.
    filters.sort_by_key(|f| (f.namespace(), f.name()));
    // Names of the filters patched under a `proxyVersion` so far, across EnvoyFilters.
    let mut pinned: Vec<String> = Vec::new();
    for ef in filters {
        let mut said = BTreeSet::new();
        for (i, cp) in ef.spec.config_patches.iter().enumerate() {
            // Istio stops at the first patch without a `patch` section.
            if cp.patch.is_none() {
                break;
            }
            let name = instance_name(cp);
            if ef.spec.priority.unwrap_or(0) == 0 && is_relative(cp) {
                let (code, message) = if pinned.contains(&name) {
                    RELATIVE_WITH_PROXY_VERSION
                } else {
                    RELATIVE_OPERATION
                };
                if said.insert(code) {
                    out.push(finding(
                        ef,
                        code,
                        Level::Warning,
                        &format!("spec.configPatches[{i}]"),
                        message.to_owned(),
                    ));
                }
            }
            let version = cp
                .match_
                .as_ref()
                .and_then(|m| m.proxy.as_ref())
                .and_then(|p| p.proxy_version.as_deref());
            if version.is_some_and(|v| !v.is_empty()) {
                pinned.push(name);
            }
        }
    }
}

/// The filter a patch is about, as Istio names it: the patch value's `name`, else the filter
/// its listener match names; empty when there is neither.
fn instance_name(cp: &EnvoyConfigObjectPatch) -> String {
    let Some(value) = cp.patch.as_ref().and_then(|p| p.value.as_ref()) else {
        return String::new();
    };
    match value.get("name") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => cp
            .match_
            .as_ref()
            .and_then(|m| m.listener.as_ref())
            .and_then(|l| l.filter_chain.as_ref())
            .and_then(|fc| fc.filter.as_ref())
            .and_then(|f| f.name.clone())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use sluice_model::load_str;

    use super::*;

    fn codes(yaml: &str) -> Vec<&'static str> {
        let loaded = load_str("ef.yaml", yaml);
        let reg = Registry::new(&loaded.resources);
        let mut out = Vec::new();
        analyze(&reg, &mut out);
        out.iter().map(|d| d.code).collect()
    }

    const PINNED_THEN_SAME_NAME: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: a, namespace: ns}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    match: {proxy: {proxyVersion: '^1\\.11.*'}}
    patch: {operation: INSERT_AFTER, value: {name: envoy.lua}}
  - applyTo: HTTP_FILTER
    patch: {operation: INSERT_BEFORE, value: {name: envoy.lua}}
  - applyTo: HTTP_FILTER
    patch: {operation: INSERT_BEFORE, value: {name: other}}
";

    #[test]
    fn a_relative_patch_after_a_pinned_one_of_the_same_filter_is_ist0155() {
        assert_eq!(codes(PINNED_THEN_SAME_NAME), ["IST0151", "IST0155"]);
    }

    #[test]
    fn priority_or_absolute_operations_silence_both() {
        let with_priority = PINNED_THEN_SAME_NAME.replace("spec:\n", "spec:\n  priority: 5\n");
        assert!(codes(&with_priority).is_empty());
        let absolute = PINNED_THEN_SAME_NAME
            .replace("INSERT_AFTER", "INSERT_FIRST")
            .replace("INSERT_BEFORE", "ADD");
        assert!(codes(&absolute).is_empty());
    }

    #[test]
    fn the_pinned_name_carries_over_to_later_envoy_filters() {
        let yaml = "\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: a, namespace: ns}
spec:
  priority: 1
  configPatches:
  - applyTo: HTTP_FILTER
    match: {proxy: {proxyVersion: '^1\\.11.*'}}
    patch: {operation: INSERT_AFTER, value: {name: envoy.lua}}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: b, namespace: ns}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    patch: {operation: REPLACE, value: {name: envoy.lua}}
";
        assert_eq!(codes(yaml), ["IST0155"]);
    }
}
