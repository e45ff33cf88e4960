//! The shared view analyses ask questions of: which hosts are registered and visible where,
//! which Gateways exist, which subsets DestinationRules define, which gateway workloads exist.

use std::collections::{BTreeMap, HashMap};

use sluice_model::mesh::OutboundTrafficPolicyMode;
use sluice_model::networking::service_entry::Location;
use sluice_model::networking::{DestinationRule, Gateway, ServiceEntry};
use sluice_model::{Resource, Resources};

use super::hosts;

/// The labels sluice's gateway runs with unless `--labels` says otherwise.
pub fn default_gateway_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("istio".to_owned(), "egressgateway".to_owned())])
}

/// The service name of the egress gateway in Istio's default install.
pub const DEFAULT_GATEWAY_SERVICE: &str = "istio-egressgateway.istio-system.svc.cluster.local";

/// A workload a Gateway may select: its labels and what it is, for messages.
pub struct Workload {
    pub labels: BTreeMap<String, String>,
    pub what: String,
}

pub struct Registry<'a> {
    pub resources: &'a Resources,
    pub outbound_mode: OutboundTrafficPolicyMode,
    gateways: HashMap<(&'a str, &'a str), &'a Resource<Gateway>>,
    pub workloads: Vec<Workload>,
    /// True when the input holds Pods, as `istioctl analyze` on a cluster sees them; then a
    /// selector that matches none of them is certainly wrong.
    pub has_pods: bool,
    /// Service hosts that reach an egress gateway.
    pub gateway_services: Vec<String>,
}

impl<'a> Registry<'a> {
    pub fn new(resources: &'a Resources) -> Self {
        let gateways = resources
            .gateways
            .iter()
            .map(|g| ((g.namespace(), g.name()), g))
            .collect();
        let mut workloads = vec![Workload {
            labels: default_gateway_labels(),
            what: "sluice's gateway (istio=egressgateway unless --labels says otherwise)".into(),
        }];
        let mut gateway_services = vec![DEFAULT_GATEWAY_SERVICE.to_owned()];
        for op in &resources.istio_operators {
            let Some(components) = &op.spec.components else {
                continue;
            };
            for gw in &components.egress_gateways {
                if gw.enabled == Some(false) {
                    continue;
                }
                let mut labels = gw.label.clone();
                if labels.is_empty() {
                    labels = default_gateway_labels();
                }
                let ns = gw.namespace.as_deref().unwrap_or("istio-system");
                gateway_services.push(format!("{}.{ns}.svc.cluster.local", gw.name));
                workloads.push(Workload {
                    labels,
                    what: format!("egress gateway {} of {}", gw.name, op.origin()),
                });
            }
        }
        let mut has_pods = false;
        for other in &resources.others {
            if other.spec.kind == "Pod" {
                has_pods = true;
                workloads.push(Workload {
                    labels: other.meta.labels.clone(),
                    what: format!("pod {}/{}", other.namespace(), other.name()),
                });
            }
        }
        let outbound_mode = resources
            .mesh_config()
            .map(|(m, _)| m.outbound_mode())
            .unwrap_or(OutboundTrafficPolicyMode::AllowAny);
        Registry {
            resources,
            outbound_mode,
            gateways,
            workloads,
            has_pods,
            gateway_services,
        }
    }

    /// The Gateway a VirtualService in `ns` names as `reference` (`name`, `ns/name`, or the
    /// deprecated `name.ns.svc.cluster.local`).
    pub fn gateway(&self, reference: &str, ns: &str) -> Option<&'a Resource<Gateway>> {
        let (gns, name) = gateway_ref(reference, ns);
        self.gateways.get(&(gns, name)).copied()
    }

    /// Gateways that select one of the known gateway workloads.
    pub fn active_gateways(&self) -> impl Iterator<Item = &'a Resource<Gateway>> + '_ {
        self.resources
            .gateways
            .iter()
            .filter(|g| self.workloads.iter().any(|w| g.spec.selects(&w.labels)))
    }

    /// ServiceEntries visible from namespace `from` that register `host`.
    pub fn service_entries<'s>(
        &'s self,
        host: &'s str,
        from: &'s str,
    ) -> impl Iterator<Item = &'a Resource<ServiceEntry>> + 's {
        self.resources.service_entries.iter().filter(move |se| {
            exported_to(&se.spec.export_to, se.namespace(), from)
                && se.spec.hosts.iter().any(|h| hosts::covers(h, host))
        })
    }

    /// True when `host` is registered for namespace `from`: by a ServiceEntry, or by a
    /// Kubernetes Service given in the input.
    pub fn is_registered(&self, host: &str, from: &str) -> bool {
        self.service_entries(host, from).next().is_some()
            || self.resources.others.iter().any(|o| {
                o.spec.kind == "Service"
                    && format!("{}.{}.svc.cluster.local", o.name(), o.namespace()) == host
            })
    }

    /// True when `host` is registered only as MESH_EXTERNAL.
    pub fn is_external(&self, host: &str, from: &str) -> bool {
        let mut ses = self.service_entries(host, from).peekable();
        ses.peek().is_some() && ses.all(|se| se.spec.location() == Location::MeshExternal)
    }

    /// DestinationRules for `host` visible from namespace `from`.
    pub fn destination_rules<'s>(
        &'s self,
        host: &'s str,
        from: &'s str,
    ) -> impl Iterator<Item = &'a Resource<DestinationRule>> + 's {
        self.resources.destination_rules.iter().filter(move |dr| {
            exported_to(&dr.spec.export_to, dr.namespace(), from)
                && hosts::covers(&hosts::qualify(&dr.spec.host, dr.namespace()), host)
        })
    }

    pub fn is_gateway_service(&self, host: &str) -> bool {
        self.gateway_services.iter().any(|s| s == host)
    }
}

fn gateway_ref<'r>(reference: &'r str, ns: &'r str) -> (&'r str, &'r str) {
    if let Some((gns, name)) = reference.split_once('/') {
        return (gns, name);
    }
    if let Some(rest) = reference.strip_suffix(".svc.cluster.local")
        && let Some((name, gns)) = rest.split_once('.')
    {
        return (gns, name);
    }
    (ns, reference)
}

/// Istio's `exportTo` visibility: empty or `*` is everywhere, `.` the owner's namespace, `~`
/// nowhere, otherwise the namespaces listed.
pub fn exported_to(export_to: &[String], owner: &str, from: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == from || (e == "." && owner == from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_references_resolve_as_istio_does() {
        assert_eq!(gateway_ref("egress", "default"), ("default", "egress"));
        assert_eq!(gateway_ref("istio-system/egress", "default"), ("istio-system", "egress"));
        assert_eq!(
            gateway_ref("egress.istio-system.svc.cluster.local", "default"),
            ("istio-system", "egress")
        );
    }

    #[test]
    fn export_to_limits_visibility() {
        let v = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(exported_to(&v(&[]), "a", "b"));
        assert!(exported_to(&v(&["*"]), "a", "b"));
        assert!(exported_to(&v(&["."]), "a", "a"));
        assert!(!exported_to(&v(&["."]), "a", "b"));
        assert!(!exported_to(&v(&["~"]), "a", "a"));
        assert!(exported_to(&v(&[".", "istio-system"]), "prod", "istio-system"));
    }
}
