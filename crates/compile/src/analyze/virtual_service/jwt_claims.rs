//! IST0149: a VirtualService routes on JWT claims (`@request.auth.claims…` headers) at a
//! Gateway whose pods no RequestAuthentication covers, as Istio's
//! `virtualservice.JWTClaimRouteAnalyzer`. Without one, no JWT is validated, the claims are
//! never set, and the route never matches.
//!
//! sluice does not read RequestAuthentication (the loader refuses the kind), so every pod such
//! a Gateway selects is reported: the input's pods, and Istio's default ingress gateway, which
//! `istioctl analyze` assumes present. A Gateway only sluice's gateway serves, with no pod in the
//! input, is not judged here: Istio would not either, having no pod to look at.

use sluice_model::networking::VirtualService;
use sluice_model::{Diagnostic, Level, Resource};

use super::super::gateway::DefaultIngress;
use super::super::registry::Registry;
use super::super::{finding, istio_codes};
use super::MESH;

/// The header prefix Istio reads as a JWT claim.
const CLAIM_PREFIX: &str = "@request.auth.claims";

pub(super) fn analyze(
    reg: &Registry<'_>,
    vs: &Resource<VirtualService>,
    out: &mut Vec<Diagnostic>,
) {
    let Some(key) = claim_key(&vs.spec) else {
        return;
    };
    let ns = vs.namespace();
    for (i, name) in vs.spec.gateways.iter().enumerate() {
        if name == MESH {
            continue;
        }
        // A missing Gateway is the gateway analysis's IST0101.
        let Some(gw) = reg.gateway(name, ns) else {
            continue;
        };
        let mut pods: Vec<&str> = reg
            .kube
            .pods
            .iter()
            .filter(|p| gw.spec.selects(&p.labels))
            .map(|p| p.name)
            .collect();
        if DefaultIngress::stands_in_for(reg, &gw.spec) {
            pods.push(DefaultIngress::POD);
        }
        let gw_name = format!("{}/{}", gw.namespace(), gw.name());
        for pod in pods {
            out.push(finding(
                vs,
                istio_codes::JWT_CLAIM_ROUTE_WITHOUT_REQUEST_AUTHN,
                Level::Error,
                &format!("spec.gateways[{i}]"),
                format!(
                    "The virtual service uses the JWT claim based routing (key: {key}) but found \
                     no request authentication for the gateway ({gw_name}) pod ({pod}). The \
                     request authentication must first be applied for the gateway pods to \
                     validate the JWT token and make the claims available for routing."
                ),
            ));
        }
    }
}

/// The first header key of an HTTP match that names a JWT claim.
fn claim_key(vs: &VirtualService) -> Option<&str> {
    vs.http
        .iter()
        .flat_map(|h| &h.match_)
        .flat_map(|m| m.headers.keys().chain(m.without_headers.keys()))
        .map(String::as_str)
        .find(|k| k.starts_with(CLAIM_PREFIX))
}

#[cfg(test)]
mod tests {
    use sluice_model::load_str;

    use super::*;

    fn codes(yaml: &str) -> Vec<&'static str> {
        let loaded = load_str("vs.yaml", yaml);
        let reg = Registry::new(&loaded.resources);
        let mut out = Vec::new();
        for vs in &loaded.resources.virtual_services {
            analyze(&reg, vs, &mut out);
        }
        out.iter().map(|d| d.code).collect()
    }

    const VS: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: foo, namespace: default}
spec:
  hosts: [foo.com]
  gateways: [foo-gateway]
  http:
  - match:
    - headers: {'HEADER': {exact: foo}}
    route:
    - destination: {host: foo.default.svc.cluster.local}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: foo-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [foo.com]
";

    #[test]
    fn a_claim_route_at_a_gateway_is_ist0149() {
        assert_eq!(
            codes(&VS.replace("HEADER", "@request.auth.claims.foo")),
            ["IST0149"]
        );
    }

    #[test]
    fn a_plain_header_route_is_not() {
        assert!(codes(&VS.replace("HEADER", "x-user")).is_empty());
    }
}
