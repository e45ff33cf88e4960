//! istio.io task "Egress Gateways with TLS Origination" (`testdata/acceptance/istio-tasks/egress-gateway-tls-origination`):
//! the sidecar sends plain HTTP over mesh mTLS to the egress gateway, which originates TLS to
//! edition.cnn.com. YAML unchanged, applied in the documented order with hot reload; the
//! stand-in's certificate is trusted by the gateway through `SSL_CERT_FILE` (the
//! DestinationRule names no CA).

use std::net::SocketAddr;

mod common;
mod istio_tasks;

use common::{Mesh, gateway_at};
use istio_tasks::{
    ConfigDir, Plain, PlainServer, curl_sidecar, gateway_svc, run_curl, status_lines, wait_log_line,
};
use sluice_test_support::{
    DnsServer, HttpsUpstream, TempDir, TestCa, UpstreamOptions, free_loopback_addr,
};

const TASK: &str = "egress-gateway-tls-origination";

/// Part 1 (01, 02, 04, 06): `curl http://edition.cnn.com/politics` gets a single
/// `HTTP/1.1 200 OK` (no 301), and the gateway logs `GET /politics` with
/// `outbound|443||edition.cnn.com`.
#[tokio::test(flavor = "multi_thread")]
async fn tls_origination_at_the_egress_gateway() {
    let ca = TestCa::new("public-ca");
    let tmp = TempDir::new("gw-tls-origination");
    let ca_file = ca.write_ca_pem(tmp.path()).display().to_string();
    let ip = free_loopback_addr();
    let _http = PlainServer::start_at(SocketAddr::new(ip, 80), Plain::RedirectToHttps).await;
    let https = HttpsUpstream::start(
        SocketAddr::new(ip, 443),
        &ca.server_cert(&["edition.cnn.com"]),
        "cnn",
        UpstreamOptions::default(),
    )
    .await
    .expect("cnn");
    let dns = DnsServer::start([("edition.cnn.com", vec![ip])])
        .await
        .expect("dns");
    let mesh = Mesh::new();
    let cfg = ConfigDir::new("gw-tls-origination-config");
    cfg.apply("observability-logs-access-log", "01");
    let gw_ip = free_loopback_addr();
    gateway_svc(
        &cfg,
        gw_ip,
        &[(80, "http", "HTTP"), (443, "https", "HTTPS")],
    );
    let gw_id = mesh.svid("istio-system", "istio-egressgateway-service-account");
    let gw = gateway_at(
        gw_ip,
        &[cfg.path()],
        dns.addr(),
        Some(&gw_id),
        &[
            ("SLUICE_RELOAD_INTERVAL", "100ms"),
            ("SSL_CERT_FILE", &ca_file),
        ],
    )
    .await;
    let sc_id = mesh.svid("default", "curl");
    let (sc, proxy) = curl_sidecar(&[cfg.path()], dns.addr(), Some(&sc_id)).await;
    let proxy = format!("http://{proxy}");
    let procs = [&gw, &sc];
    let follow = || {
        let (proxy, ca_file) = (proxy.clone(), ca_file.clone());
        async move {
            let out = run_curl(&[
                "-L",
                "-o",
                "/dev/null",
                "-D",
                "-",
                "-x",
                &proxy,
                "--cacert",
                &ca_file,
                "http://edition.cnn.com/politics",
            ])
            .await;
            assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
            status_lines(&out.stdout)
        }
    };

    cfg.step(&procs, || cfg.apply(TASK, "01")).await;
    assert_eq!(
        follow().await,
        ["HTTP/1.1 301 Moved Permanently", "HTTP/2 200"]
    );

    cfg.step(&procs, || {
        for f in ["02", "04", "06"] {
            cfg.apply(TASK, f);
        }
    })
    .await;
    let before = https.requests();
    assert_eq!(follow().await, ["HTTP/1.1 200 OK"]);
    assert_eq!(https.requests(), before + 1);
    let line = wait_log_line(&gw, &["GET /politics", "outbound|443||edition.cnn.com"]).await;
    assert!(line.contains("\"edition.cnn.com\""), "{line}");
}

/// Part 2 (08–14): nginx requiring client certificates answers `Welcome to nginx!` to
/// `curl http://my-nginx.mesh-external.svc.cluster.local`; the gateway's DestinationRule (13,
/// applied with `-n istio-system`) originates mutual TLS with `credentialName: client-credential`,
/// a Secret the task creates with kubectl.
#[test]
#[ignore = "needs Kubernetes Secrets among the inputs for credentialName (sluice reads it only from --credentials-dir), the namespace of 13 from `kubectl apply -n istio-system`, and the client calls port 80, which the my-nginx Service (08) does not declare: sluice's sidecar sends it to PassthroughCluster instead of the mesh VirtualService's port-80 rule (issue 15)"]
fn mutual_tls_origination_at_the_gateway_with_credential_name() {
    panic!("credentialName from a Kubernetes Secret is not supported");
}
