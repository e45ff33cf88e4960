//! istio.io blog post "Routing egress traffic to wildcard destinations" (2023, egress-sni;
//! `testdata/acceptance/istio-tasks/blog-egress-sni`): the sidecar wraps `*.wikipedia.org` TLS
//! into mesh mTLS toward a gateway listener on 8443, and the gateway forwards each connection
//! to the host of the application's own (inner) SNI. The YAML unchanged: 01 (the gateway's
//! `kind: Service`, its Deployment and RBAC, skipped) and 02 (routing, Telemetry, the
//! `sni-magic` EnvoyFilter). en. and de.wikipedia.org are loopback stand-ins.

use std::net::SocketAddr;

mod common;
mod istio_tasks;

use common::{Mesh, gateway_at};
use istio_tasks::{ConfigDir, curl_sidecar, run_curl};
use sluice_test_support::{
    DnsServer, HttpsUpstream, TempDir, TestCa, UpstreamOptions, free_loopback_addr,
};

const TASK: &str = "blog-egress-sni";
const EN: &str = "<title>Wikipedia, the free encyclopedia</title>";
const DE: &str = "<title>Wikipedia – Die freie Enzyklopädie</title>";

/// The post's result: both titles, each from the server its own name resolves to, through the
/// gateway (the client sidecar logs `outbound|443|wildcard|egressgateway.istio-egress.svc.cluster.local`).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "the gateway side is an EnvoyFilter (`sni-magic`: internal listener, sni_dynamic_forward_proxy, tcp_proxy MERGE) which sluice ignores (it applies only the local_ratelimit and ratelimit HTTP filters); the gateway's own route is the post's dummy tcp route to `dummy.local`, so connections do not reach the inner SNI's host"]
async fn wildcard_tls_forwarded_by_the_inner_sni() {
    let ca = TestCa::new("public-ca");
    let tmp = TempDir::new("egress-sni");
    let ca_file = ca.write_ca_pem(tmp.path()).display().to_string();
    let mut wikis = Vec::new();
    for name in ["en", "de"] {
        wikis.push(
            HttpsUpstream::start(
                SocketAddr::new(free_loopback_addr(), 443),
                &ca.server_cert(&["*.wikipedia.org"]),
                name,
                UpstreamOptions::default()
                    .respond("/wiki/Main_Page", 200, EN)
                    .respond("/wiki/Wikipedia:Hauptseite", 200, DE),
            )
            .await
            .expect("wikipedia"),
        );
    }
    let gw_ip = free_loopback_addr();
    let dns = DnsServer::start([
        ("en.wikipedia.org", vec![wikis[0].addr().ip()]),
        ("de.wikipedia.org", vec![wikis[1].addr().ip()]),
        ("egressgateway.istio-egress.svc.cluster.local", vec![gw_ip]),
    ])
    .await
    .expect("dns");
    let mesh = Mesh::new();
    let cfg = ConfigDir::new("egress-sni-config");
    cfg.apply(TASK, "01");
    cfg.apply(TASK, "02");
    // The Deployment's pods: `istio: egressgateway`, service account `default` (the RoleBinding).
    let gw_id = mesh.svid("istio-egress", "default");
    let _gw = gateway_at(
        gw_ip,
        &[cfg.path()],
        dns.addr(),
        Some(&gw_id),
        &[("SLUICE_NAMESPACE", "istio-egress")],
    )
    .await;
    let sc_id = mesh.svid("default", "curl");
    let (sc, proxy) = curl_sidecar(&[cfg.path()], dns.addr(), Some(&sc_id)).await;
    let proxy = format!("http://{proxy}");
    for (url, title) in [
        ("https://en.wikipedia.org/wiki/Main_Page", EN),
        ("https://de.wikipedia.org/wiki/Wikipedia:Hauptseite", DE),
    ] {
        let out = run_curl(&["-x", &proxy, "--cacert", &ca_file, url]).await;
        assert_eq!(out.code, Some(0), "{url}: {}", out.stderr);
        assert_eq!(out.stdout, title);
    }
    assert_eq!((wikis[0].requests(), wikis[1].requests()), (1, 1));
    istio_tasks::wait_log_line(
        &sc,
        &["outbound|443|wildcard|egressgateway.istio-egress.svc.cluster.local"],
    )
    .await;
}
