//! The mesh side end to end with the `sluice` binary: sidecars with their own SVIDs reach the
//! egress gateway over mesh mTLS, the gateway enforces the guide's AuthorizationPolicies, and
//! REGISTRY_ONLY / ALLOW_ANY decide what leaves. Real processes, real TLS, a real DNS server,
//! curl as the client; every address is loopback.

use std::net::SocketAddr;
use std::time::Duration;

mod common;

use common::{ExternalHttps, Mesh, gateway_service, guide, https_via, sidecar};

use sluice_test_support::client::{curl, raw_tcp};
use sluice_test_support::{DnsServer, HttpUpstream, TcpUpstream, TempDir, free_loopback_addr};

/// Opens `CONNECT host:port` at the sidecar and returns the first line the far end sends.
async fn connect_via(proxy: SocketAddr, target: &str) -> Option<String> {
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\nhello\n");
    let got = raw_tcp(proxy, req.as_bytes(), Duration::from_secs(3))
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    rest.lines()
        .next()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
}

/// Guide Step 7 (`authz-egress-policy.yaml`): frontend reaches api.github.com; backend and
/// payment-processor reach api.stripe.com but not GitHub; namespace `data` reaches
/// external-db.example.com:5432; `processor` (not named) and a client that skips the sidecar
/// are refused.
#[tokio::test(flavor = "multi_thread")]
async fn step7_who_may_reach_which_external_host() {
    let mesh = Mesh::new();
    let db = TcpUpstream::start(SocketAddr::new(free_loopback_addr(), 5432), "postgres")
        .await
        .expect("db");
    let ext = ExternalHttps::start(
        "public-ca",
        "step7",
        [("api.github.com", "github"), ("api.stripe.com", "stripe")],
    )
    .await;
    let (dir, web_ca_file, github, dns) = (&ext.dir, &ext.ca_file, &ext.upstreams[0], &ext.dns);
    let gw_ip = free_loopback_addr();
    let se_db = std::fs::read_to_string(guide("serviceentry-database.yaml"))
        .expect("guide")
        .replace("192.168.1.100", &db.addr().ip().to_string())
        .replace("192.168.1.101", &db.addr().ip().to_string());
    std::fs::write(dir.join("serviceentry-database.yaml"), se_db).expect("write");
    std::fs::write(
        dir.join("stripe-and-db.yaml"),
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: stripe-api, namespace: default}
spec:
  hosts: [api.stripe.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  location: MESH_EXTERNAL
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: stripe-api-routing, namespace: default}
spec:
  hosts: [api.stripe.com]
  gateways: [mesh, egress-gateway]
  tls:
  - match: [{gateways: [mesh], port: 443, sniHosts: [api.stripe.com]}]
    route: [{destination: {host: istio-egressgateway.istio-system.svc.cluster.local, port: {number: 443}}}]
  - match: [{gateways: [egress-gateway], port: 443, sniHosts: [api.stripe.com]}]
    route: [{destination: {host: api.stripe.com, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: db-egress, namespace: default}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 5432, name: tcp-postgres, protocol: TCP}
    hosts: [external-db.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db-routing, namespace: default}
spec:
  hosts: [external-db.example.com]
  gateways: [mesh, db-egress]
  tcp:
  - match: [{gateways: [mesh], port: 5432}]
    route: [{destination: {host: istio-egressgateway.istio-system.svc.cluster.local, port: {number: 5432}}}]
  - match: [{gateways: [db-egress], port: 5432}]
    route: [{destination: {host: external-db.example.com, port: {number: 5432}}}]
"#,
    )
    .expect("write");
    let mut config = vec![
        guide("egress-gateway.yaml"),
        guide("virtualservice-github.yaml"),
        guide("destinationrule-github.yaml"),
        guide("serviceentry-github.yaml"),
        guide("mesh-config.yaml"),
        guide("authz-egress-policy.yaml"),
        dir.join("serviceentry-database.yaml").display().to_string(),
        dir.join("stripe-and-db.yaml").display().to_string(),
    ];
    config.push(gateway_service(
        dir,
        gw_ip,
        &[(443, "tls", "TLS"), (5432, "tcp-postgres", "TCP")],
    ));
    let _gw = ext.mesh_gateway(&mesh, gw_ip, &config, false).await;

    let mut sidecars = Vec::new();
    for (ns, sa) in [
        ("default", "frontend"),
        ("default", "backend"),
        ("payments", "payment-processor"),
        ("data", "etl"),
        ("default", "processor"),
    ] {
        let id = mesh.svid(ns, sa);
        sidecars.push(sidecar(&config, ns, sa, dns.addr(), Some(&id)).await);
    }
    let proxy = |i: usize| sidecars[i].1;
    let github_url = "https://api.github.com/repos";
    let stripe_url = "https://api.stripe.com/v1/charges";

    let body = https_via(proxy(0), web_ca_file, github_url)
        .await
        .expect("frontend → github");
    assert!(body.contains("\"upstream\":\"github\""), "{body}");
    assert!(
        https_via(proxy(0), web_ca_file, stripe_url).await.is_err(),
        "frontend → stripe"
    );
    for i in [1, 2] {
        let body = https_via(proxy(i), web_ca_file, stripe_url)
            .await
            .expect("→ stripe");
        assert!(body.contains("\"upstream\":\"stripe\""), "{body}");
        assert!(
            https_via(proxy(i), web_ca_file, github_url).await.is_err(),
            "{i} → github"
        );
    }
    assert_eq!(
        connect_via(proxy(3), "external-db.example.com:5432")
            .await
            .as_deref(),
        Some("postgres"),
        "namespace data reaches the database"
    );
    assert_eq!(
        connect_via(proxy(4), "external-db.example.com:5432").await,
        None
    );
    assert!(
        https_via(proxy(4), web_ca_file, github_url).await.is_err(),
        "processor → github"
    );

    // Skipping the sidecar: straight to the gateway, no mesh certificate, no principal.
    let out = curl(&[
        "-sS",
        "--max-time",
        "10",
        "--cacert",
        &web_ca_file.display().to_string(),
        "--resolve",
        &format!("api.github.com:443:{gw_ip}"),
        github_url,
    ])
    .await
    .expect("curl");
    assert!(
        !out.status.success(),
        "a client without a sidecar must be refused"
    );
    assert_eq!(
        github.requests(),
        1,
        "only frontend's request reached GitHub"
    );
}

/// Guide Step 10 (`production-egress-setup.yaml`) as written: payment-service's TLS passes
/// through the gateway inside mesh mTLS; another service account is refused.
#[tokio::test(flavor = "multi_thread")]
async fn step10_production_setup_end_to_end() {
    let mesh = Mesh::new();
    let ext = ExternalHttps::start(
        "payments-ca",
        "step10",
        [("api.payment-provider.com", "payment-provider")],
    )
    .await;
    let (dir, web_ca_file, provider, dns) = (&ext.dir, &ext.ca_file, &ext.upstreams[0], &ext.dns);
    let gw_ip = free_loopback_addr();
    let config = vec![
        guide("production-egress-setup.yaml"),
        gateway_service(dir, gw_ip, &[(443, "tls", "TLS")]),
    ];
    let _gw = ext.mesh_gateway(&mesh, gw_ip, &config, false).await;
    let allowed = mesh.svid("production", "payment-service");
    let other = mesh.svid("production", "reporting");
    let (_s1, p1) = sidecar(
        &config,
        "production",
        "payment-service",
        dns.addr(),
        Some(&allowed),
    )
    .await;
    let (_s2, p2) = sidecar(&config, "production", "reporting", dns.addr(), Some(&other)).await;
    let url = "https://api.payment-provider.com/v1/pay";
    let body = https_via(p1, web_ca_file, url)
        .await
        .expect("payment-service is allowed");
    assert!(
        body.contains("\"sni\":\"api.payment-provider.com\""),
        "{body}"
    );
    assert!(
        https_via(p2, web_ca_file, url).await.is_err(),
        "reporting is refused"
    );
    assert_eq!(provider.requests(), 1);
}

/// REGISTRY_ONLY through a sidecar (the guide's mesh-config.yaml): unregistered HTTP → 502,
/// CONNECT → closed; without it (Istio's default ALLOW_ANY) the same calls pass through; a
/// Sidecar resource overrides the mesh-wide mode for its namespace. The mode is switched by
/// editing the config while the sidecar runs (hot reload).
#[tokio::test(flavor = "multi_thread")]
async fn registry_only_and_allow_any_through_a_sidecar() {
    let web = HttpUpstream::start(SocketAddr::new(free_loopback_addr(), 80), "unregistered")
        .await
        .expect("http upstream");
    let tcp = TcpUpstream::start(SocketAddr::new(free_loopback_addr(), 443), "raw")
        .await
        .expect("tcp upstream");
    let dns = DnsServer::start([
        ("unregistered.example.org", vec![web.addr().ip()]),
        ("tunnel.example.org", vec![tcp.addr().ip()]),
    ])
    .await
    .expect("dns");
    let dir = TempDir::new("registry");
    let cfg = dir.join("config");
    std::fs::create_dir_all(&cfg).expect("mkdir");
    std::fs::write(
        cfg.join("serviceentry-github.yaml"),
        std::fs::read(guide("serviceentry-github.yaml")).expect("guide"),
    )
    .expect("write");
    let config = vec![cfg.display().to_string()];
    let (sc, proxy) = sidecar(&config, "default", "app", dns.addr(), None).await;

    let http = |proxy: SocketAddr| async move {
        let out = curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            "-x",
            &format!("http://{proxy}"),
            "http://unregistered.example.org/",
        ])
        .await
        .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Istio's default: ALLOW_ANY → PassthroughCluster.
    assert_eq!(http(proxy).await, "200");
    assert_eq!(
        connect_via(proxy, "tunnel.example.org:443")
            .await
            .as_deref(),
        Some("raw")
    );

    // The guide's mesh config switches to REGISTRY_ONLY (picked up without a restart).
    std::fs::copy(guide("mesh-config.yaml"), cfg.join("mesh-config.yaml")).expect("copy");
    sc.wait_for_stderr("configuration reloaded", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}: {}", sc.stderr()));
    // That line is logged just before the new snapshot goes to the data plane, which applies it
    // a moment later: ask until the mode changes (bounded), then check the answer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut status = http(proxy).await;
    while status == "200" && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = http(proxy).await;
    }
    assert_eq!(status, "502");
    assert_eq!(connect_via(proxy, "tunnel.example.org:443").await, None);
    // Refused before the tunnel opens, as Squid refuses a CONNECT.
    let refused = raw_tcp(
        proxy,
        b"CONNECT tunnel.example.org:443 HTTP/1.1\r\nHost: tunnel.example.org:443\r\n\r\n",
        Duration::from_secs(3),
    )
    .await
    .expect("connect");
    assert!(
        String::from_utf8_lossy(&refused).starts_with("HTTP/1.1 403"),
        "{}",
        String::from_utf8_lossy(&refused)
    );
    let logged = sc
        .wait_for_log("BlackHoleCluster", Duration::from_secs(5))
        .is_ok()
        || sc
            .wait_for_stderr("BlackHoleCluster", Duration::from_secs(1))
            .is_ok();
    assert!(
        logged,
        "refusals name BlackHoleCluster: {} {}",
        sc.stdout(),
        sc.stderr()
    );

    // A Sidecar resource in the workload's namespace overrides the mesh-wide mode.
    std::fs::write(
        cfg.join("sidecar.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: default}\nspec:\n  outboundTrafficPolicy: {mode: ALLOW_ANY}\n",
    )
    .expect("write");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while http(proxy).await != "200" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Sidecar override not applied: {}",
            sc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
