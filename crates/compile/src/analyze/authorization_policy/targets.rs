//! What an AuthorizationPolicy refers to, as Istio's `authz.AuthorizationPoliciesAnalyzer`
//! checks it: it selects a workload (IST0127), and the namespaces its sources name exist
//! (IST0101). Both need the cluster's view: Pods (or workload controllers) for the first,
//! Namespaces for the second; without them in the input nothing is said.

use std::collections::BTreeMap;

use sluice_model::security::AuthorizationPolicy;
use sluice_model::{Diagnostic, Level, Resource};

use super::super::registry::Registry;
use super::super::{finding, istio_codes, selector_string};

pub(super) fn analyze(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    for ap in &reg.resources.authorization_policies {
        if reg.has_pods() {
            selects_workload(reg, ap, out);
        }
        if !reg.kube.namespaces.is_empty() {
            namespaces_exist(reg, ap, out);
        }
    }
}

/// IST0127: in the root namespace a selector must match a workload anywhere (without one the
/// policy is mesh-wide); elsewhere a workload of the policy's namespace. Workloads are the
/// Pods of the input and the gateways sluice knows (its own, Istio's default ingress).
fn selects_workload(
    reg: &Registry<'_>,
    ap: &Resource<AuthorizationPolicy>,
    out: &mut Vec<Diagnostic>,
) {
    let ns = ap.namespace();
    let selector = ap.spec.selector.as_ref().map(|s| &s.match_labels);
    // A policy with targetRefs applies to the Gateway or Service named, not by labels.
    if selector.is_none() && (ap.spec.target_ref.is_some() || !ap.spec.target_refs.is_empty()) {
        return;
    }
    let mesh_wide = ns == reg.root_namespace;
    if mesh_wide && selector.is_none() {
        return;
    }
    let matches = |labels: &BTreeMap<String, String>| {
        selector.is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
    };
    let in_scope = |workload_ns: &str| mesh_wide || workload_ns == ns;
    let found = reg
        .kube
        .pods
        .iter()
        .any(|p| in_scope(p.namespace) && matches(&p.labels))
        || reg
            .workloads
            .iter()
            .any(|w| in_scope(&w.namespace) && matches(&w.labels));
    if !found {
        out.push(finding(
            ap,
            istio_codes::NO_MATCHING_WORKLOADS,
            Level::Warning,
            if selector.is_some() {
                "spec.selector"
            } else {
                "metadata.namespace"
            },
            format!(
                "No matching workloads for this resource with the following labels: {}",
                selector.map(selector_string).unwrap_or_default()
            ),
        ));
    }
}

/// IST0101: a `namespaces` / `notNamespaces` entry (exact, `prefix*`, `*suffix` or `*`) that no
/// namespace matches. A namespace holding a resource of the input counts as existing too.
fn namespaces_exist(
    reg: &Registry<'_>,
    ap: &Resource<AuthorizationPolicy>,
    out: &mut Vec<Diagnostic>,
) {
    for (i, rule) in ap.spec.rules.iter().enumerate() {
        for (j, from) in rule.from.iter().enumerate() {
            let Some(src) = &from.source else { continue };
            let lists = [
                ("namespaces", &src.namespaces),
                ("notNamespaces", &src.not_namespaces),
            ];
            for (field, list) in lists {
                for (k, pattern) in list.iter().enumerate() {
                    let exists = reg
                        .kube
                        .namespaces
                        .iter()
                        .map(|n| n.name)
                        .chain(resource_namespaces(reg))
                        .any(|name| namespace_matches(pattern, name));
                    if exists {
                        continue;
                    }
                    out.push(finding(
                        ap,
                        istio_codes::REFERENCED_RESOURCE_NOT_FOUND,
                        Level::Error,
                        &format!("spec.rules[{i}].from[{j}].source.{field}[{k}]"),
                        format!("Referenced namespace not found: {pattern:?}"),
                    ));
                }
            }
        }
    }
}

/// The namespaces the input's resources are written in.
fn resource_namespaces<'r>(reg: &'r Registry<'_>) -> impl Iterator<Item = &'r str> + 'r {
    let r = reg.resources;
    let names = |m: &'r sluice_model::ObjectMeta| m.namespace.as_deref();
    r.service_entries
        .iter()
        .filter_map(move |x| names(&x.meta))
        .chain(r.gateways.iter().filter_map(move |x| names(&x.meta)))
        .chain(
            r.virtual_services
                .iter()
                .filter_map(move |x| names(&x.meta)),
        )
        .chain(
            r.destination_rules
                .iter()
                .filter_map(move |x| names(&x.meta)),
        )
        .chain(r.sidecars.iter().filter_map(move |x| names(&x.meta)))
        .chain(
            r.authorization_policies
                .iter()
                .filter_map(move |x| names(&x.meta)),
        )
        .chain(r.others.iter().filter_map(move |x| names(&x.meta)))
}

/// Istio's namespace patterns: `*`, `prefix*`, `*suffix`, or the name (any case).
fn namespace_matches(pattern: &str, ns: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return ns.ends_with(suffix);
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return ns.starts_with(prefix);
    }
    pattern.eq_ignore_ascii_case(ns)
}

#[cfg(test)]
mod tests {
    use super::namespace_matches;

    #[test]
    fn namespace_patterns_match_as_istio_does() {
        let table = [
            ("*", "any", true),
            ("prod-*", "prod-httpbin", true),
            ("prod-*", "httpbin", false),
            ("*-test", "httpbin-test", true),
            ("*-bogus", "httpbin", false),
            ("HttpBin", "httpbin", true),
        ];
        for (pattern, ns, want) in table {
            assert_eq!(namespace_matches(pattern, ns), want, "{pattern} vs {ns}");
        }
    }
}
