//! What one proxy can see: the ServiceEntries, VirtualServices and DestinationRules visible from
//! its namespace, in Istio's order, and Istio's choice of DestinationRule for a host
//! (`pilot/pkg/model/push_context.go` `destinationRule`, `mergeDestinationRule`).

use std::collections::BTreeMap;

use sluice_model::Resource;
use sluice_model::Resources;
use sluice_model::mesh::MeshConfig;
use sluice_model::networking::destination_rule::{Subset, TrafficPolicy};
use sluice_model::networking::{DestinationRule, ServiceEntry, VirtualService};

use super::hosts::{self, MESH};

/// Istio's order among configs of one kind (`sortConfigByCreationTime`): creation time, then
/// `name.namespace`. Without timestamps (files), the name decides, so the order of input files
/// never matters.
pub fn istio_order<T>(r: &Resource<T>) -> (String, String) {
    let created = r
        .meta
        .creation_timestamp
        .as_ref()
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    (created, format!("{}.{}", r.name(), r.namespace()))
}

fn sorted<T>(items: &[Resource<T>]) -> Vec<&Resource<T>> {
    let mut out: Vec<&Resource<T>> = items.iter().collect();
    out.sort_by_key(|r| istio_order(r));
    out
}

/// A DestinationRule as Istio applies it to one host: the rules of one namespace for the most
/// specific matching host, merged (subsets concatenated, the first traffic policy kept).
#[derive(Debug, Clone)]
pub struct MergedRule<'a> {
    pub rules: Vec<&'a Resource<DestinationRule>>,
    pub traffic_policy: Option<(&'a TrafficPolicy, &'a Resource<DestinationRule>)>,
    /// With the rule that defines each, and its index there.
    pub subsets: Vec<(&'a Subset, &'a Resource<DestinationRule>, usize)>,
    /// Later rules whose own traffic policy Istio ignores because an earlier one has one.
    pub ignored_policies: Vec<&'a Resource<DestinationRule>>,
}

impl<'a> MergedRule<'a> {
    pub fn subset(&self, name: &str) -> Option<(&'a Subset, &'a Resource<DestinationRule>, usize)> {
        self.subsets
            .iter()
            .copied()
            .find(|(s, _, _)| s.name == name)
    }
}

pub struct Registry<'a> {
    pub proxy_ns: String,
    pub root_ns: String,
    labels: &'a BTreeMap<String, String>,
    entries: Vec<&'a Resource<ServiceEntry>>,
    virtual_services: Vec<&'a Resource<VirtualService>>,
    rules_by_ns: BTreeMap<String, Vec<&'a Resource<DestinationRule>>>,
    dr_default_export: Vec<String>,
}

impl<'a> Registry<'a> {
    pub fn new(
        resources: &'a Resources,
        mesh: &MeshConfig,
        proxy_ns: &str,
        root_ns: &str,
        labels: &'a BTreeMap<String, String>,
    ) -> Self {
        // The inputs' ServiceEntries first: they win over a Kubernetes Service of one host.
        let entries = sorted(&resources.service_entries)
            .into_iter()
            .chain(sorted(&resources.kube_services))
            .filter(|se| {
                hosts::visible(
                    &se.spec.export_to,
                    &mesh.default_service_export_to,
                    se.namespace(),
                    proxy_ns,
                )
            })
            .collect();
        let virtual_services = sorted(&resources.virtual_services)
            .into_iter()
            .filter(|vs| {
                hosts::visible(
                    &vs.spec.export_to,
                    &mesh.default_virtual_service_export_to,
                    vs.namespace(),
                    proxy_ns,
                )
            })
            .collect();
        let mut rules_by_ns: BTreeMap<String, Vec<&Resource<DestinationRule>>> = BTreeMap::new();
        for dr in sorted(&resources.destination_rules) {
            rules_by_ns
                .entry(dr.namespace().to_owned())
                .or_default()
                .push(dr);
        }
        Registry {
            proxy_ns: proxy_ns.to_owned(),
            root_ns: root_ns.to_owned(),
            labels,
            entries,
            virtual_services,
            rules_by_ns,
            dr_default_export: mesh.default_destination_rule_export_to.clone(),
        }
    }

    /// The ServiceEntry that registers `host` for this proxy: one in the proxy's namespace
    /// first, else the oldest (Istio's `ServiceForHostname`).
    pub fn service(&self, host: &str) -> Option<&'a Resource<ServiceEntry>> {
        self.entries
            .iter()
            .find(|se| registers(se, host) && se.namespace() == self.proxy_ns)
            .or_else(|| self.entries.iter().find(|se| registers(se, host)))
            .copied()
    }

    /// Every registered host with its ServiceEntry, sorted by host.
    pub fn services(&self) -> Vec<(String, &'a Resource<ServiceEntry>)> {
        let mut hosts: Vec<String> = self
            .entries
            .iter()
            .flat_map(|se| se.spec.hosts.iter().map(|h| h.to_ascii_lowercase()))
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
            .into_iter()
            .filter_map(|h| self.service(&h).map(|se| (h, se)))
            .collect()
    }

    /// The VirtualServices bound to `gateway` (`ns/name`, or `mesh`), in Istio's order.
    /// Delegates (no hosts) are never bound directly.
    pub fn virtual_services_for(&self, gateway: &str) -> Vec<&'a Resource<VirtualService>> {
        self.virtual_services
            .iter()
            .copied()
            .filter(|vs| !vs.spec.hosts.is_empty() && vs_gateways(vs).iter().any(|g| g == gateway))
            .collect()
    }

    /// Istio's DestinationRule for `host` as seen from the proxy: the proxy's namespace first
    /// (for a proxy in the root namespace, only its private rules), then the namespace of the
    /// service, then the root namespace (rules exported to the proxy).
    pub fn destination_rule(&self, host: &str, service_ns: Option<&str>) -> Option<MergedRule<'a>> {
        let proxy_ns = self.proxy_ns.as_str();
        let first = if proxy_ns != self.root_ns {
            self.rules_in(proxy_ns, host, Scope::All)
        } else {
            self.rules_in(proxy_ns, host, Scope::Private)
        };
        first
            .or_else(|| service_ns.and_then(|ns| self.rules_in(ns, host, Scope::Exported)))
            .or_else(|| self.rules_in(&self.root_ns, host, Scope::Exported))
    }

    fn rules_in(&self, ns: &str, host: &str, scope: Scope) -> Option<MergedRule<'a>> {
        let candidates: Vec<(&Resource<DestinationRule>, String)> = self
            .rules_by_ns
            .get(ns)?
            .iter()
            .copied()
            .filter(|dr| match &dr.spec.workload_selector {
                Some(sel) => ns == self.proxy_ns && sel.matches(self.labels),
                None => true,
            })
            .filter(|dr| match scope {
                Scope::All => true,
                Scope::Private => self.export_list(dr).iter().any(|e| e == "."),
                Scope::Exported => hosts::visible(
                    &dr.spec.export_to,
                    &self.dr_default_export,
                    ns,
                    &self.proxy_ns,
                ),
            })
            .map(|dr| (dr, hosts::fqdn(&dr.spec.host, ns)))
            .collect();
        let chosen = most_specific_host(host, candidates.iter().map(|(_, h)| h.as_str()))?;
        let group: Vec<&Resource<DestinationRule>> = candidates
            .iter()
            .filter(|(_, h)| *h == chosen)
            .map(|(dr, _)| *dr)
            .collect();
        Some(merge(group))
    }

    fn export_list(&self, dr: &Resource<DestinationRule>) -> Vec<String> {
        if dr.spec.export_to.is_empty() {
            self.dr_default_export.clone()
        } else {
            dr.spec.export_to.clone()
        }
    }
}

#[derive(Clone, Copy)]
enum Scope {
    All,
    Private,
    Exported,
}

fn registers(se: &Resource<ServiceEntry>, host: &str) -> bool {
    se.spec.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
}

/// A VirtualService's gateways, resolved; none written means `mesh`.
pub fn vs_gateways(vs: &Resource<VirtualService>) -> Vec<String> {
    if vs.spec.gateways.is_empty() {
        vec![MESH.to_owned()]
    } else {
        vs.spec
            .gateways
            .iter()
            .map(|g| hosts::resolve_gateway_name(g, vs.namespace()))
            .collect()
    }
}

/// Istio's `MostSpecificHostMatch`: the exact host first, else the longest wildcard that
/// covers it.
pub fn most_specific_host<'h>(
    needle: &str,
    candidates: impl Iterator<Item = &'h str> + Clone,
) -> Option<String> {
    if let Some(exact) = candidates.clone().find(|h| *h == needle) {
        return Some(exact.to_owned());
    }
    let bare = if hosts::is_wildcard(needle) {
        &needle[1..]
    } else {
        needle
    };
    candidates
        .filter(|h| hosts::is_wildcard(h) && bare.ends_with(&h[1..]))
        .max_by_key(|h| h.len())
        .map(str::to_owned)
}

/// Istio's `mergeDestinationRule` for rules of one namespace and host, oldest first: subsets
/// are concatenated (a repeated name is dropped), the first traffic policy wins.
fn merge(group: Vec<&Resource<DestinationRule>>) -> MergedRule<'_> {
    let mut out = MergedRule {
        rules: group.clone(),
        traffic_policy: None,
        subsets: Vec::new(),
        ignored_policies: Vec::new(),
    };
    for dr in group {
        if let Some(tp) = &dr.spec.traffic_policy {
            if out.traffic_policy.is_none() {
                out.traffic_policy = Some((tp, dr));
            } else {
                out.ignored_policies.push(dr);
            }
        }
        for (i, s) in dr.spec.subsets.iter().enumerate() {
            if !out.subsets.iter().any(|(have, _, _)| have.name == s.name) {
                out.subsets.push((s, dr, i));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_host_prefers_exact_then_longest_wildcard() {
        let hosts = ["*", "*.org", "*.wikipedia.org", "en.wikipedia.org"];
        let table = [
            ("en.wikipedia.org", Some("en.wikipedia.org")),
            ("de.wikipedia.org", Some("*.wikipedia.org")),
            ("*.wikipedia.org", Some("*.wikipedia.org")),
            ("a.org", Some("*.org")),
            ("a.com", Some("*")),
        ];
        for (needle, want) in table {
            assert_eq!(
                most_specific_host(needle, hosts.iter().copied()).as_deref(),
                want,
                "{needle}"
            );
        }
        assert_eq!(most_specific_host("a.com", ["b.com"].iter().copied()), None);
    }
}
