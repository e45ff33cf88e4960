//! IST0162: a Gateway server listens on a port that no Kubernetes Service in front of the
//! gateway pods leads to, as Istio's `gateway.IngressGatewayPortAnalyzer`. Clients that reach
//! the gateway through that Service cannot reach the server.
//!
//! The pods are those of the input, plus Istio's default ingress gateway with its default
//! Service, which `istioctl analyze` assumes present when given files. A Service leads to a
//! server port when its `port` or `targetPort` is that number (Istio translates a Gateway port
//! equal to a Service port into the target port). A Gateway only sluice's gateway serves, with
//! no pod of it in the input, is skipped: sluice binds the server ports itself and nothing
//! shows which Service, if any, stands in front of it.

use std::collections::{BTreeMap, BTreeSet};

use sluice_model::networking::Gateway;
use sluice_model::{Diagnostic, Level, Resource};

use super::super::kube::TargetPort;
use super::super::registry::{Registry, WorkloadKind};
use super::super::{finding, istio_codes, selector_string};

/// Istio's default ingress gateway, as `istioctl analyze` adds it to files: a pod labelled
/// `istio=ingressgateway` in `istio-system`, behind a Service whose ports each forward to the
/// same number.
pub(in crate::analyze) struct DefaultIngress;

impl DefaultIngress {
    pub const POD: &'static str = "istio-ingressgateway-dummypod";
    const NAMESPACE: &'static str = "istio-system";
    const PORTS: [u32; 4] = [80, 443, 31400, 15443];

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([("istio".to_owned(), "ingressgateway".to_owned())])
    }

    /// True when `gw` selects the stand-in: it selects Istio's ingress labels, and the input
    /// does not hold the ingress pods itself.
    pub fn stands_in_for(reg: &Registry<'_>, gw: &Gateway) -> bool {
        let labels = Self::labels();
        gw.selects(&labels)
            && !reg.kube.pods.iter().any(|p| {
                p.namespace == Self::NAMESPACE
                    && labels.iter().all(|(k, v)| p.labels.get(k) == Some(v))
            })
    }
}

/// What the Services in front of the selected pods lead to.
enum Reachable {
    /// The pods the selector selects; `None` when it selects none.
    Ports(Option<BTreeSet<u32>>),
    /// A Service forwards to a named container port, which the input does not resolve:
    /// sluice cannot tell, so it says nothing.
    Unknown,
}

pub(super) fn analyze(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    for gw in &reg.resources.gateways {
        let Reachable::Ports(Some(ports)) = reachable_ports(reg, &gw.spec) else {
            continue;
        };
        report(gw, &ports, out);
    }
}

fn report(gw: &Resource<Gateway>, ports: &BTreeSet<u32>, out: &mut Vec<Diagnostic>) {
    let selector = selector_string(&gw.spec.selector);
    for (i, server) in gw.spec.servers.iter().enumerate() {
        let number = server.port.number;
        if ports.contains(&number) {
            continue;
        }
        out.push(finding(
            gw,
            istio_codes::GATEWAY_PORT_NOT_ON_SERVICE,
            Level::Warning,
            &format!("spec.servers[{i}].port.number"),
            format!(
                "The gateway is listening on a target port (port {number}) that is not defined \
                 in the Service associated with its workload instances (Pod selector \
                 {selector}). If you need to access the gateway port through the gateway \
                 Service, it will not be available."
            ),
        ));
    }
}

fn reachable_ports(reg: &Registry<'_>, gw: &Gateway) -> Reachable {
    let mut selected = false;
    let mut ports = BTreeSet::new();
    for pod in reg.kube.pods.iter().filter(|p| gw.selects(&p.labels)) {
        selected = true;
        let services = reg.kube.services.iter().filter(|s| {
            // A Service without selector selects no pod (its endpoints are kept by hand).
            s.namespace == pod.namespace
                && s.selector
                    .as_ref()
                    .is_some_and(|sel| sel.iter().all(|(k, v)| pod.labels.get(k) == Some(v)))
        });
        for svc in services {
            for p in &svc.tcp_ports {
                ports.insert(p.port);
                match &p.target {
                    TargetPort::Same => {}
                    TargetPort::Number(n) => {
                        ports.insert(*n);
                    }
                    TargetPort::Named(_) => return Reachable::Unknown,
                }
            }
        }
    }
    if DefaultIngress::stands_in_for(reg, gw) {
        selected = true;
        ports.extend(DefaultIngress::PORTS);
    }
    if !selected {
        return Reachable::Ports(None);
    }
    // Nothing of sluice's own gateway is in the input: it binds the server ports itself.
    let only_sluice = reg.kube.pods.iter().all(|p| !gw.selects(&p.labels))
        && reg
            .workloads
            .iter()
            .any(|w| w.kind == WorkloadKind::Sluice && gw.selects(&w.labels));
    if only_sluice {
        return Reachable::Ports(None);
    }
    Reachable::Ports(Some(ports))
}

#[cfg(test)]
mod tests {
    use sluice_model::load_str;

    use super::*;

    fn findings(yaml: &str) -> Vec<String> {
        let loaded = load_str("gw.yaml", yaml);
        let reg = Registry::new(&loaded.resources);
        let mut out = Vec::new();
        analyze(&reg, &mut out);
        out.iter()
            .map(|d| format!("{} {}", d.code, d.path.clone().unwrap_or_default()))
            .collect()
    }

    const CUSTOM: &str = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {app: my-gw}
  servers:
  - port: {number: PORT, name: http, protocol: HTTP}
    hosts: ['*']
---
apiVersion: v1
kind: Pod
metadata: {name: my-gw-1, namespace: default, labels: {app: my-gw}}
---
apiVersion: v1
kind: Service
metadata: {name: my-gw, namespace: default}
spec:
  selector: {app: my-gw}
  ports: [{name: http2, port: 80, targetPort: 8003}]
";

    #[test]
    fn a_server_port_no_service_leads_to_is_ist0162() {
        assert_eq!(
            findings(&CUSTOM.replace("PORT", "8004")),
            ["IST0162 spec.servers[0].port.number"]
        );
    }

    #[test]
    fn the_service_port_or_its_target_port_is_reachable() {
        assert!(findings(&CUSTOM.replace("PORT", "8003")).is_empty());
        assert!(findings(&CUSTOM.replace("PORT", "80")).is_empty());
    }

    #[test]
    fn the_default_ingress_is_assumed_with_its_default_ports() {
        let yaml = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - {port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}
  - {port: {number: 8004, name: http2, protocol: HTTP}, hosts: ['*']}
";
        assert_eq!(findings(yaml), ["IST0162 spec.servers[1].port.number"]);
    }

    #[test]
    fn sluices_own_gateway_and_named_target_ports_are_not_judged() {
        let sluice = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - {port: {number: 8443, name: tls, protocol: TLS}, hosts: ['*']}
";
        assert!(findings(sluice).is_empty());
        let named = CUSTOM
            .replace("PORT", "8004")
            .replace("targetPort: 8003", "targetPort: http");
        assert!(findings(&named).is_empty());
    }
}
