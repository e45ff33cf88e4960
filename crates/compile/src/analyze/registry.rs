//! The shared view analyses ask questions of: which hosts are registered and visible where,
//! which Gateways exist, which subsets DestinationRules define, which workloads exist.

use std::collections::{BTreeMap, HashMap};

use sluice_model::mesh::OutboundTrafficPolicyMode;
use sluice_model::networking::service_entry::Location;
use sluice_model::networking::{DestinationRule, Gateway, ServiceEntry};
use sluice_model::{Resource, Resources};

use super::hosts;
use super::kube::{self, Kube, KubeGateway};

/// The labels sluice's gateway runs with unless `--labels` says otherwise.
pub fn default_gateway_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("istio".to_owned(), "egressgateway".to_owned())])
}

/// The service name of the egress gateway in Istio's default install.
pub const DEFAULT_GATEWAY_SERVICE: &str = "istio-egressgateway.istio-system.svc.cluster.local";

/// Istio's root namespace unless the mesh config names another: policies there apply mesh-wide.
const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// Who runs a workload a Gateway may select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    /// sluice's gateway: the default labels, or an egress gateway of an IstioOperator.
    Sluice,
    /// Istio's default ingress gateway, which `istioctl analyze` assumes present when given
    /// files only; sluice assumes it too, so Gateways for it are not reported as selecting
    /// nothing, though sluice does not serve them.
    IstioIngress,
}

/// A gateway workload: its labels and what it is, for messages.
pub struct Workload {
    pub labels: BTreeMap<String, String>,
    pub namespace: String,
    pub what: String,
    pub kind: WorkloadKind,
}

/// Where a host is looked up from: every namespace, or one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'s> {
    All,
    Namespace(&'s str),
}

/// The namespaces a resource in `ns` with `export_to` is used from, so where its destination
/// hosts must be visible (Istio's `GetDestinationHost`): its own namespace when `exportTo` is
/// empty, otherwise each entry (`.` its own, `*` every namespace).
pub fn scopes<'s>(export_to: &'s [String], ns: &'s str) -> Vec<Scope<'s>> {
    if export_to.is_empty() {
        return vec![Scope::Namespace(ns)];
    }
    export_to
        .iter()
        .map(|e| match e.as_str() {
            "*" => Scope::All,
            "." => Scope::Namespace(ns),
            other => Scope::Namespace(other),
        })
        .collect()
}

/// What registers a host: a ServiceEntry, or a Kubernetes Service given in the input.
#[derive(Clone, Copy)]
pub enum Backend<'s> {
    Entry(&'s Resource<ServiceEntry>),
    Service(&'s kube::Service<'s>),
}

impl Backend<'_> {
    pub fn ports(&self) -> Vec<u32> {
        match self {
            Backend::Entry(se) => se.spec.ports.iter().map(|p| p.number).collect(),
            Backend::Service(s) => s.ports.clone(),
        }
    }
}

pub struct Registry<'a> {
    pub resources: &'a Resources,
    pub outbound_mode: OutboundTrafficPolicyMode,
    pub root_namespace: String,
    gateways: HashMap<(&'a str, &'a str), &'a Resource<Gateway>>,
    /// The gateway workloads known without Pods: sluice's, and Istio's default ingress.
    pub workloads: Vec<Workload>,
    pub kube: Kube<'a>,
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
        let mut workloads = vec![
            Workload {
                labels: default_gateway_labels(),
                namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
                what: "sluice's gateway (istio=egressgateway unless --labels says otherwise)"
                    .into(),
                kind: WorkloadKind::Sluice,
            },
            Workload {
                labels: BTreeMap::from([("istio".to_owned(), "ingressgateway".to_owned())]),
                namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
                what: "Istio's default ingress gateway".into(),
                kind: WorkloadKind::IstioIngress,
            },
        ];
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
                let ns = gw.namespace.as_deref().unwrap_or(DEFAULT_ROOT_NAMESPACE);
                gateway_services.push(format!("{}.{ns}.svc.cluster.local", gw.name));
                workloads.push(Workload {
                    labels,
                    namespace: ns.to_owned(),
                    what: format!("egress gateway {} of {}", gw.name, op.origin()),
                    kind: WorkloadKind::Sluice,
                });
            }
        }
        let mesh = resources.mesh_config().map(|(m, _)| m);
        Registry {
            resources,
            outbound_mode: mesh
                .map(|m| m.outbound_mode())
                .unwrap_or(OutboundTrafficPolicyMode::AllowAny),
            root_namespace: mesh
                .and_then(|m| m.root_namespace.clone())
                .unwrap_or_else(|| DEFAULT_ROOT_NAMESPACE.to_owned()),
            gateways,
            workloads,
            kube: Kube::new(resources),
            gateway_services,
        }
    }

    /// True when the input holds Pods (or workload controllers), as `istioctl analyze` on a
    /// cluster sees them; then a selector that matches none of them is certainly wrong.
    pub fn has_pods(&self) -> bool {
        !self.kube.pods.is_empty()
    }

    /// The Gateway a VirtualService in `ns` names as `reference` (`name`, `ns/name`, or the
    /// deprecated `name.ns.svc.cluster.local`).
    pub fn gateway(&self, reference: &str, ns: &str) -> Option<&'a Resource<Gateway>> {
        let (gns, name) = gateway_ref(reference, ns);
        self.gateways.get(&(gns, name)).copied()
    }

    /// The Kubernetes Gateway-API Gateway named by `reference`, when no Istio Gateway has that
    /// name (as Istio looks them up).
    pub fn kube_gateway(&self, reference: &str, ns: &str) -> Option<&KubeGateway<'a>> {
        let (gns, name) = gateway_ref(reference, ns);
        self.kube
            .gateways
            .iter()
            .find(|g| g.namespace == gns && g.name == name)
    }

    /// True when the Gateway selects sluice's gateway or a workload given in the input.
    pub fn serves(&self, gw: &Gateway) -> bool {
        self.workloads
            .iter()
            .any(|w| w.kind == WorkloadKind::Sluice && gw.selects(&w.labels))
            || self.kube.pods.iter().any(|p| gw.selects(&p.labels))
    }

    /// Gateways that select sluice's gateway or a workload given in the input.
    pub fn active_gateways(&self) -> impl Iterator<Item = &'a Resource<Gateway>> + '_ {
        self.resources
            .gateways
            .iter()
            .filter(|g| self.serves(&g.spec))
    }

    /// ServiceEntries visible from namespace `from` that register `host`.
    pub fn service_entries<'s>(
        &'s self,
        host: &'s str,
        from: &'s str,
    ) -> impl Iterator<Item = &'a Resource<ServiceEntry>> + 's {
        self.resources.service_entries.iter().filter(move |se| {
            exported_to(&se.spec.export_to, se.namespace(), from)
                && se
                    .spec
                    .hosts
                    .iter()
                    .any(|h| hosts::covers(&hosts::qualify(h, se.namespace()), host))
        })
    }

    /// What registers the (qualified) `host` for a resource used from `scopes`: a ServiceEntry
    /// or Kubernetes Service visible in one of them, exact names before wildcards, as Istio
    /// looks destinations up.
    pub fn backend(&self, host: &str, scopes: &[Scope<'_>]) -> Option<Backend<'_>> {
        let visible = |export_to: &[String], owner: &str| {
            scopes.iter().any(|s| match s {
                Scope::All => export_to.is_empty() || export_to.iter().any(|e| e == "*"),
                Scope::Namespace(ns) => exported_to(export_to, owner, ns),
            })
        };
        let host = host.to_ascii_lowercase();
        let entry = |wildcard: bool| {
            self.resources.service_entries.iter().find(|se| {
                visible(&se.spec.export_to, se.namespace())
                    && se.spec.hosts.iter().any(|h| {
                        let h = hosts::qualify(h, se.namespace());
                        if wildcard {
                            h.starts_with('*') && hosts::covers(&h, &host)
                        } else {
                            h == host
                        }
                    })
            })
        };
        if let Some(se) = entry(false) {
            return Some(Backend::Entry(se));
        }
        if let Some(svc) = self
            .kube
            .services
            .iter()
            .find(|s| s.fqdn() == host && visible(&s.export_to, s.namespace))
        {
            return Some(Backend::Service(svc));
        }
        entry(true).map(Backend::Entry)
    }

    /// True when the input holds a Kubernetes Service of the namespace a cluster-local `host`
    /// (`name.ns.svc…`) names, so that a missing one is missing, not merely not shown.
    pub fn shows_services_of(&self, host: &str) -> bool {
        let ns = host.split('.').nth(1).unwrap_or_default();
        self.kube.services.iter().any(|s| s.namespace == ns)
    }

    /// True when `host` is registered for namespace `from`: by a ServiceEntry, or by a
    /// Kubernetes Service given in the input.
    pub fn is_registered(&self, host: &str, from: &str) -> bool {
        self.backend(host, &[Scope::Namespace(from)]).is_some()
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
        assert_eq!(
            gateway_ref("istio-system/egress", "default"),
            ("istio-system", "egress")
        );
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
        assert!(exported_to(
            &v(&[".", "istio-system"]),
            "prod",
            "istio-system"
        ));
    }

    #[test]
    fn hosts_are_found_where_they_are_exported_to() {
        let yaml = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: other}
spec: {hosts: [api.example.com], exportTo: [default], ports: [{number: 443, name: https}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: default}
spec: {hosts: ['*.eu.example.com'], ports: [{number: 80, name: http}]}
---
apiVersion: v1
kind: Service
metadata:
  name: details
  namespace: default
  annotations: {networking.istio.io/exportTo: banana}
spec: {ports: [{port: 9080}, {port: 9090}]}
";
        let loaded = sluice_model::load_str("t.yaml", yaml);
        let reg = Registry::new(&loaded.resources);
        let ns = Scope::Namespace;
        let table = [
            ("api.example.com", vec![ns("default")], Some(vec![443])),
            ("api.example.com", vec![ns("other")], None),
            ("api.example.com", vec![Scope::All], None),
            ("reviews.eu.example.com", vec![ns("x")], Some(vec![80])),
            (
                "details.default.svc.cluster.local",
                vec![ns("banana")],
                Some(vec![9080, 9090]),
            ),
            (
                "details.default.svc.cluster.local",
                vec![ns("default")],
                None,
            ),
        ];
        for (host, scopes, want) in table {
            let got = reg.backend(host, &scopes).map(|b| b.ports());
            assert_eq!(got, want, "{host} from {scopes:?}");
        }
    }

    #[test]
    fn pods_carry_their_node_locality() {
        let yaml = "\
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: default, labels: {app: a}}
spec: {nodeName: n1}
---
apiVersion: v1
kind: Node
metadata:
  name: n1
  labels: {topology.kubernetes.io/zone: z1, topology.kubernetes.io/region: ''}
";
        let loaded = sluice_model::load_str("t.yaml", yaml);
        let reg = Registry::new(&loaded.resources);
        let labels = &reg.kube.pods[0].labels;
        assert_eq!(
            labels
                .get("topology.kubernetes.io/zone")
                .map(String::as_str),
            Some("z1")
        );
        assert_eq!(
            labels.get("kubernetes.io/hostname").map(String::as_str),
            Some("n1")
        );
        // Istio does not match on empty locality labels.
        assert!(!labels.contains_key("topology.kubernetes.io/region"));
    }

    #[test]
    fn export_to_names_the_namespaces_a_rule_is_used_from() {
        let v = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(scopes(&v(&[]), "a"), vec![Scope::Namespace("a")]);
        let list = v(&[".", "b", "*"]);
        assert_eq!(
            scopes(&list, "a"),
            vec![Scope::Namespace("a"), Scope::Namespace("b"), Scope::All]
        );
    }
}
