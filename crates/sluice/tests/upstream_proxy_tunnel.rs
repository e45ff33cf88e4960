//! The gateway sends an egress route through an upstream HTTP proxy (a corporate proxy, squid
//! from Debian here) when the route's destination is that proxy and its DestinationRule says
//! `trafficPolicy.tunnel: {protocol: CONNECT, targetHost, targetPort}` — Istio's own shape for
//! tunnelling (istio/istio#31830, #57556 ask for it at the egress gateway). TLS passed through
//! the tunnel, and plain HTTP that the gateway originates TLS for inside the tunnel; a proxy
//! that refuses the CONNECT leaves the request failed (`UF`) with its answer in the log.
//! Loopback only: squid resolves the partner's name through its own hosts file to a loopback
//! stand-in; every process is stopped by its PID.

use std::net::{IpAddr, SocketAddr};

mod common;

use common::gateway;
use common::squid::Squid;
use sluice_test_support::client::curl;
use sluice_test_support::{DnsServer, HttpsUpstream, TempDir, TestCa, UpstreamOptions};

const PARTNER: &str = "api.partner.test";

fn config(proxy: IpAddr, ca_file: &str) -> String {
    // The proxy under three names: one per way through it (a TCP port's host is one per
    // ServiceEntry, IST0106).
    let entries: String = ["corp-proxy", "corp-proxy-tls", "corp-proxy-refusing"]
        .iter()
        .map(|name| {
            format!(
                "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: istio-system}}\nspec:\n  hosts: [{name}.internal]\n  ports: [{{number: 3128, name: tcp-proxy, protocol: TCP}}]\n  resolution: STATIC\n  endpoints: [{{address: \"{proxy}\"}}]\n"
            )
        })
        .collect();
    format!(
        r#"apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {{name: mesh, namespace: istio-system}}
spec:
  meshConfig: {{accessLogFile: /dev/stdout}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 443, name: tls, protocol: TLS}}
    hosts: [{PARTNER}, refused.partner.test]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [{PARTNER}]
{entries}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: through-corp-proxy, namespace: istio-system}}
spec:
  host: corp-proxy.internal
  trafficPolicy:
    tunnel: {{protocol: CONNECT, targetHost: {PARTNER}, targetPort: 443}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-through-corp-proxy, namespace: istio-system}}
spec:
  host: corp-proxy-tls.internal
  trafficPolicy:
    tunnel: {{targetHost: {PARTNER}, targetPort: 443}}
    tls: {{mode: SIMPLE, caCertificates: {ca_file}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: refused-by-corp-proxy, namespace: istio-system}}
spec:
  host: corp-proxy-refusing.internal
  trafficPolicy:
    tunnel: {{protocol: CONNECT, targetHost: {PARTNER}, targetPort: 8443}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: partner, namespace: istio-system}}
spec:
  hosts: [{PARTNER}]
  gateways: [egress]
  tls:
  - match: [{{port: 443, sniHosts: [{PARTNER}]}}]
    route: [{{destination: {{host: corp-proxy.internal, port: {{number: 3128}}}}}}]
  http:
  - route: [{{destination: {{host: corp-proxy-tls.internal, port: {{number: 3128}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: refused, namespace: istio-system}}
spec:
  hosts: [refused.partner.test]
  gateways: [egress]
  tls:
  - match: [{{port: 443, sniHosts: [refused.partner.test]}}]
    route: [{{destination: {{host: corp-proxy-refusing.internal, port: {{number: 3128}}}}}}]
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_tunnels_through_an_upstream_connect_proxy() {
    let ca = TestCa::new("partner-ca");
    let partner = HttpsUpstream::start(
        SocketAddr::new(sluice_test_support::free_loopback_addr(), 443),
        &ca.server_cert(&[PARTNER, "refused.partner.test"]),
        "partner",
        UpstreamOptions::default().respond("/", 200, "partner says hello"),
    )
    .await
    .expect("partner");
    let squid = Squid::start(
        sluice_test_support::free_loopback_addr(),
        &[(PARTNER, partner.addr().ip())],
    )
    .await;
    let dir = TempDir::new("tunnel");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).expect("ca");
    let file = dir.join("config.yaml");
    std::fs::write(
        &file,
        config(squid.addr.ip(), &ca_file.display().to_string()),
    )
    .expect("config");
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let (gw, bind) = gateway(&[file.display().to_string()], dns.addr(), &[]).await;
    let ca_path = ca_file.display().to_string();

    // TLS passthrough, through the tunnel: the client's own TLS reaches the partner.
    let resolve = format!("{PARTNER}:443:{bind}");
    let url = format!("https://{PARTNER}/");
    let out = curl(&["-sS", "--cacert", &ca_path, "--resolve", &resolve, &url])
        .await
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "partner says hello");
    let line = squid.wait_log(&format!("CONNECT {PARTNER}:443")).await;
    assert!(line.contains("TCP_TUNNEL/200"), "{line}");
    let line = log_line(&gw, "outbound|3128||corp-proxy.internal");
    assert!(
        line.contains(&squid.addr.to_string()),
        "the upstream is the proxy: {line}"
    );

    // Plain HTTP at the gateway, TLS originated to the partner inside the tunnel (its name,
    // the tunnel's target, is the SNI and the name verified).
    let resolve = format!("{PARTNER}:80:{bind}");
    let url = format!("http://{PARTNER}/");
    let out = curl(&["-sS", "--resolve", &resolve, &url])
        .await
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "partner says hello");
    let line = log_line(&gw, "outbound|3128||corp-proxy-tls.internal");
    assert!(line.contains("\"GET / HTTP/1.1\" 200"), "{line}");
    assert_eq!(partner.requests(), 2);

    // squid refuses CONNECT to a port other than 443 (the task's proxy.conf): the connection
    // fails, nothing reaches the partner, and the gateway says why.
    let resolve = format!("refused.partner.test:443:{bind}");
    let out = curl(&[
        "-sS",
        "--cacert",
        &ca_path,
        "--resolve",
        &resolve,
        "https://refused.partner.test/",
    ])
    .await
    .expect("curl");
    assert!(!out.status.success());
    let line = log_line(&gw, "outbound|3128||corp-proxy-refusing.internal");
    assert!(line.contains(" UF "), "{line}");
    assert!(
        line.contains("\"tunnel to api.partner.test:8443: the proxy answered CONNECT with 403\""),
        "the proxy's answer is in the log: {line}"
    );
    assert_eq!(partner.requests(), 2);
}

/// The gateway's access-log line containing `needle`, waited for (5 s).
fn log_line(gw: &sluice_test_support::SluiceProcess, needle: &str) -> String {
    gw.wait_for_log(needle, std::time::Duration::from_secs(5))
        .expect("logged");
    gw.stdout()
        .lines()
        .find(|l| l.contains(needle))
        .map(str::to_owned)
        .expect("the line")
}
