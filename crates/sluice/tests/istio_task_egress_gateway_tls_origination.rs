//! istio.io task "Egress Gateways with TLS Origination" (`testdata/acceptance/istio-tasks/egress-gateway-tls-origination`):
//! the sidecar sends plain HTTP over mesh mTLS to the egress gateway, which originates TLS to
//! edition.cnn.com. YAML unchanged, applied in the documented order with hot reload; the
//! stand-in's certificate is trusted by the gateway through `SSL_CERT_FILE` (the
//! DestinationRule names no CA).

mod common;
mod istio_tasks;

use istio_tasks::{
    Cnn, ConfigDir, GatewayAndSidecar, MyNginx, curl_heads, status_lines, wait_log_line,
};

const TASK: &str = "egress-gateway-tls-origination";

/// Part 1 (01, 02, 04, 06): `curl http://edition.cnn.com/politics` gets a single
/// `HTTP/1.1 200 OK` (no 301), and the gateway logs `GET /politics` with
/// `outbound|443||edition.cnn.com`.
#[tokio::test(flavor = "multi_thread")]
async fn tls_origination_at_the_egress_gateway() {
    let cnn = Cnn::start("gw-tls-origination").await;
    let ca_file = cnn.ca_file.clone();
    let cfg = ConfigDir::new("gw-tls-origination-config");
    cfg.apply("observability-logs-access-log", "01");
    let GatewayAndSidecar {
        mesh: _mesh,
        gw,
        sc,
        proxy,
    } = GatewayAndSidecar::start(&cfg, cnn.dns(), &[("SSL_CERT_FILE", &ca_file)]).await;
    let procs = [&gw, &sc];
    let follow = || {
        let (proxy, ca_file) = (proxy.clone(), ca_file.clone());
        async move {
            let out = curl_heads(&proxy, &ca_file, true, "http://edition.cnn.com/politics").await;
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
    let before = cnn.upstream().requests();
    assert_eq!(follow().await, ["HTTP/1.1 200 OK"]);
    assert_eq!(cnn.upstream().requests(), before + 1);
    let line = wait_log_line(&gw, &["GET /politics", "outbound|443||edition.cnn.com"]).await;
    assert!(line.contains("\"edition.cnn.com\""), "{line}");
}

/// Part 2 (08–13; 14 is the Gateway API variant's): nginx requiring client certificates answers `Welcome to nginx!` to
/// `curl http://my-nginx.mesh-external.svc.cluster.local` — port 80, which the my-nginx Service
/// (08) does not declare: the sidecar takes the mesh VirtualService's `port: 80` rule (11) to
/// the gateway over mesh mTLS, and the gateway originates mutual TLS with
/// `credentialName: client-credential` (13, applied with `-n istio-system`), the Secret the
/// task creates with kubectl in istio-system and default. The gateway logs the request with
/// `outbound|443||my-nginx.mesh-external.svc.cluster.local`.
#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_origination_at_the_gateway_with_credential_name() {
    let nginx = MyNginx::start().await;
    let cfg = ConfigDir::new("gw-mtls-origination-config");
    cfg.apply("observability-logs-access-log", "01");
    let GatewayAndSidecar {
        mesh: _mesh,
        gw,
        sc,
        proxy,
    } = GatewayAndSidecar::start(&cfg, nginx.dns.addr(), &[]).await;
    let procs = [&gw, &sc];
    cfg.step(&procs, || {
        cfg.apply(TASK, "08");
        for ns in ["istio-system", "default"] {
            cfg.write(
                &format!("client-credential-{ns}.yaml"),
                &nginx.client_credential(ns),
            );
        }
        cfg.apply(TASK, "09");
        cfg.apply(TASK, "11");
        cfg.apply_in(TASK, "13", "istio-system");
    })
    .await;
    nginx.expect_secrets(&gw);
    nginx
        .expect_welcome(
            &proxy,
            &gw,
            "outbound|443||my-nginx.mesh-external.svc.cluster.local",
        )
        .await;

    // `kubectl delete secret client-credential -n istio-system`: the gateway has no client
    // certificate any more, so the cluster refuses traffic (`502 UH`, as for any cluster sluice
    // cannot set up as written) rather than connect without one. The sidecar's kept-alive mesh
    // connection does not keep the old credential: its next request meets the new snapshot.
    cfg.step(&procs, || {
        cfg.delete_file("client-credential-istio-system.yaml")
    })
    .await;
    nginx.expect_refused(&proxy, &gw).await;
}
