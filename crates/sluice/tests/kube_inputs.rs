//! Kubernetes objects among the inputs, as the cluster would give them: a `kind: Service`
//! registers `<name>.<ns>.svc.cluster.local` with its ports (protocol from the port name),
//! resolved by DNS — or by its EndpointSlice when one is given — so a VirtualService can
//! route to it with no hand-written ServiceEntry. Loopback only.

use std::net::{IpAddr, SocketAddr};

mod common;

use common::gateway;
use sluice_test_support::client::http_get;
use sluice_test_support::{DnsServer, HttpUpstream, TempDir, free_loopback_addr};

fn config(extra: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [api.partner.test]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: partner, namespace: istio-system}}
spec:
  hosts: [api.partner.test]
  gateways: [egress]
  http:
  - route: [{{destination: {{host: backend.shop.svc.cluster.local, port: {{number: 8080}}}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: shop}}
spec:
  selector: {{app: backend}}
  ports:
  - {{name: http-api, port: 8080, targetPort: 80}}
---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {{name: mesh, namespace: istio-system}}
spec:
  meshConfig: {{accessLogFile: /dev/stdout}}
{extra}"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_in_the_inputs_is_routable_by_its_cluster_name() {
    // The Service's port 8080 targets port 80 of its pods.
    let upstream = HttpUpstream::start(SocketAddr::new(free_loopback_addr(), 80), "backend")
        .await
        .expect("upstream");
    let dns = DnsServer::start([("backend.shop.svc.cluster.local", vec![upstream.addr().ip()])])
        .await
        .expect("dns");
    let dir = TempDir::new("kube-inputs");
    let file = dir.join("config.yaml");
    std::fs::write(&file, config("")).expect("write");
    let (gw, bind) = gateway(&[file.display().to_string()], dns.addr(), &[]).await;
    let reply = http_get(SocketAddr::new(bind, 80), "api.partner.test", "/x")
        .await
        .expect("request");
    assert_eq!(reply.0, 200, "{}", reply.2);
    assert!(reply.2.contains("\"upstream\":\"backend\""), "{}", reply.2);
    gw.wait_for_log(
        "outbound|8080||backend.shop.svc.cluster.local",
        std::time::Duration::from_secs(5),
    )
    .expect("logged against the Service's cluster");
    // The guide's PromQL selects `source_workload="istio-egressgateway"`: the gateway names
    // itself so (default labels `istio=egressgateway`).
    let (_, stats) = gw.admin_get("/stats/prometheus").expect("stats");
    assert!(
        stats.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("source_workload=\"istio-egressgateway\"")),
        "{stats}"
    );
    drop(gw);

    // With an EndpointSlice, its ready addresses are the endpoints (no DNS needed), on the
    // slice's port for the Service port's name.
    let other = HttpUpstream::start(SocketAddr::new(free_loopback_addr(), 80), "sliced")
        .await
        .expect("upstream");
    let slice = format!(
        r#"---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: backend-1, namespace: shop, labels: {{kubernetes.io/service-name: backend}}}}
addressType: IPv4
ports: [{{name: http-api, port: {}}}]
endpoints:
- addresses: ["{}"]
"#,
        other.addr().port(),
        other.addr().ip()
    );
    std::fs::write(&file, config(&slice)).expect("write");
    let empty_dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let (_gw, bind) = gateway(&[file.display().to_string()], empty_dns.addr(), &[]).await;
    let reply = http_get(SocketAddr::new(bind, 80), "api.partner.test", "/y")
        .await
        .expect("request");
    assert_eq!(reply.0, 200, "{}", reply.2);
    assert!(reply.2.contains("\"upstream\":\"sliced\""), "{}", reply.2);
}
