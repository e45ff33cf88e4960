//! The Kubernetes objects some analyses look at (Pods, Services, Namespaces, Nodes, Gateway-API
//! Gateways), read from the loosely kept `others` of the input. They are present when the input
//! is a view of a cluster (`kubectl get -o yaml`, rendered manifests); analyses that need them
//! say nothing when they are absent, because then sluice cannot know.

use std::collections::BTreeMap;

use serde_json::Value;
use sluice_model::resource::OtherObject;
use sluice_model::{Resource, Resources};

/// The annotation Istio reads as a Service's `exportTo`.
const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

/// Node labels Istio copies onto the endpoints of pods scheduled there, so DestinationRule
/// subsets may select by locality.
const TOPOLOGY_LABELS: [&str; 3] = [
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];

/// A pod, or the pod template of a workload controller (Deployment…): what a selector can select.
pub struct Pod<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    /// The pod's labels, plus the locality labels of its node, as Istio's registry sees them.
    pub labels: BTreeMap<String, String>,
}

pub struct Service<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    /// `None` for a Service without selector (its endpoints are managed by hand).
    pub selector: Option<BTreeMap<String, String>>,
    /// The port numbers the Service declares.
    pub ports: Vec<u32>,
    /// The TCP ports with where they lead on the pods, for the gateway port check.
    pub tcp_ports: Vec<ServicePort>,
    /// From the `networking.istio.io/exportTo` annotation; empty means everywhere.
    pub export_to: Vec<String>,
}

impl Service<'_> {
    pub fn fqdn(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace).to_ascii_lowercase()
    }
}

/// A TCP port of a Service and the pod port it forwards to.
pub struct ServicePort {
    pub port: u32,
    pub target: TargetPort,
}

/// A Service port's `targetPort`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    /// Absent: the same number as the Service port.
    Same,
    Number(u32),
    /// A container port's name, which only the pod spec resolves.
    Named(String),
}

pub struct Namespace<'a> {
    pub name: &'a str,
}

/// A Gateway of the Kubernetes Gateway API: Istio serves it, sluice does not, but
/// VirtualServices may name it.
pub struct KubeGateway<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    /// Listener host names; a listener without one accepts every host.
    pub hostnames: Vec<Option<&'a str>>,
}

#[derive(Default)]
pub struct Kube<'a> {
    pub pods: Vec<Pod<'a>>,
    pub services: Vec<Service<'a>>,
    pub namespaces: Vec<Namespace<'a>>,
    pub gateways: Vec<KubeGateway<'a>>,
    /// Secrets as (namespace, name).
    pub secrets: Vec<(&'a str, &'a str)>,
}

impl<'a> Kube<'a> {
    pub fn new(resources: &'a Resources) -> Self {
        let nodes: BTreeMap<&str, &BTreeMap<String, String>> = resources
            .others
            .iter()
            .filter(|o| o.spec.kind == "Node")
            .map(|o| (o.name(), &o.meta.labels))
            .collect();
        let mut kube = Kube::default();
        for o in &resources.others {
            match o.spec.kind.as_str() {
                "Pod" => kube.pods.push(pod(o, &nodes)),
                "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                    kube.pods.extend(template(o));
                }
                "Service" if o.api_version == "v1" => kube.services.push(service(o)),
                "Namespace" => kube.namespaces.push(Namespace { name: o.name() }),
                "Secret" if o.api_version == "v1" => kube.secrets.push((o.namespace(), o.name())),
                "Gateway" if o.api_version.starts_with("gateway.networking.k8s.io/") => {
                    kube.gateways.push(kube_gateway(o));
                }
                _ => {}
            }
        }
        kube
    }
}

fn str_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn pod<'a>(
    o: &'a Resource<OtherObject>,
    nodes: &BTreeMap<&str, &BTreeMap<String, String>>,
) -> Pod<'a> {
    let mut labels = o.meta.labels.clone();
    let node = o
        .spec
        .body
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    if let Some(node) = node {
        if let Some(node_labels) = nodes.get(node) {
            // Istio does not match on empty locality labels, so they are not copied.
            for key in TOPOLOGY_LABELS {
                if let Some(v) = node_labels.get(key).filter(|v| !v.is_empty()) {
                    labels.insert(key.to_owned(), v.clone());
                }
            }
        }
        labels.insert("kubernetes.io/hostname".to_owned(), node.to_owned());
    }
    Pod {
        name: o.name(),
        namespace: o.namespace(),
        labels,
    }
}

/// The pod template of a workload controller, standing in for the pods it creates.
fn template(o: &Resource<OtherObject>) -> Option<Pod<'_>> {
    o.spec.body.pointer("/spec/template")?;
    Some(Pod {
        name: o.name(),
        namespace: o.namespace(),
        labels: str_map(o.spec.body.pointer("/spec/template/metadata/labels")),
    })
}

fn service(o: &Resource<OtherObject>) -> Service<'_> {
    let spec = o.spec.body.get("spec");
    let selector = spec
        .and_then(|s| s.get("selector"))
        .filter(|s| s.as_object().is_some_and(|m| !m.is_empty()))
        .map(|s| str_map(Some(s)));
    let ports = spec
        .and_then(|s| s.get("ports"))
        .and_then(Value::as_array)
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| p.get("port").and_then(Value::as_u64))
                .filter_map(|n| u32::try_from(n).ok())
                .collect()
        })
        .unwrap_or_default();
    let tcp_ports = spec
        .and_then(|s| s.get("ports"))
        .and_then(Value::as_array)
        .map(|ports| ports.iter().filter_map(tcp_port).collect())
        .unwrap_or_default();
    let export_to = o
        .meta
        .annotations
        .get(EXPORT_TO_ANNOTATION)
        .map(|a| {
            a.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Service {
        name: o.name(),
        namespace: o.namespace(),
        selector,
        ports,
        tcp_ports,
        export_to,
    }
}

/// A Service port as the API server stores it: the protocol defaults to TCP, which is the only
/// one a gateway listener serves.
fn tcp_port(p: &Value) -> Option<ServicePort> {
    let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
    if protocol != "TCP" {
        return None;
    }
    let port = u32::try_from(p.get("port")?.as_u64()?).ok()?;
    let target = match p.get("targetPort") {
        None | Some(Value::Null) => TargetPort::Same,
        Some(Value::String(name)) => match name.parse::<u32>() {
            Ok(n) => TargetPort::Number(n),
            Err(_) => TargetPort::Named(name.clone()),
        },
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map_or(TargetPort::Same, TargetPort::Number),
    };
    Some(ServicePort { port, target })
}

fn kube_gateway(o: &Resource<OtherObject>) -> KubeGateway<'_> {
    let hostnames = o
        .spec
        .body
        .pointer("/spec/listeners")
        .and_then(Value::as_array)
        .map(|ls| {
            ls.iter()
                .map(|l| {
                    l.get("hostname")
                        .and_then(Value::as_str)
                        .filter(|h| !h.is_empty())
                })
                .collect()
        })
        .unwrap_or_default();
    KubeGateway {
        name: o.name(),
        namespace: o.namespace(),
        hostnames,
    }
}
