//! The egress gateway end to end: the `sluice` binary with the guide's configuration, real
//! upstream stand-ins with certificates from a test CA, a real DNS server mapping the external
//! names to loopback addresses, and real clients (curl). Every address is loopback; the
//! gateway binds the Gateway servers' real ports (443, 80) on its own 127.0.x.y address.

use std::net::{IpAddr, SocketAddr};

use std::time::Duration;

mod common;

use common::{ExternalHttps, bin, gateway, guide};

use sluice_test_support::client::{curl, http_get, https_get, raw_tcp};
use sluice_test_support::{
    DnsServer, HttpsUpstream, SluiceProcess, TcpUpstream, TempDir, TestCa, UpstreamOptions,
    free_loopback_addr,
};

/// A mesh config that logs every request to stdout in Istio's default format (the guide's
/// own format spreads an entry over several lines and names no cluster).
fn access_log(dir: &TempDir) -> String {
    let path = dir.join("access-log.yaml");
    std::fs::write(
        &path,
        "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: log, namespace: istio-system}\nspec:\n  meshConfig: {accessLogFile: /dev/stdout}\n",
    )
    .expect("write mesh config");
    path.display().to_string()
}

/// Guide Step 4, unchanged: TLS to api.github.com passes through the gateway by SNI and is
/// verified end to end by curl against the stand-in's CA; the gateway holds no certificate
/// for api.github.com, so it cannot have seen plaintext.
#[tokio::test(flavor = "multi_thread")]
async fn step4_tls_passthrough_to_api_github_com() {
    let ext = ExternalHttps::start(
        "github-ca",
        "step4",
        [("api.github.com", "github-stand-in")],
    )
    .await;
    let (dir, ca_file, dns) = (&ext.dir, &ext.ca_file, &ext.dns);
    let config = [
        guide("egress-gateway.yaml"),
        guide("virtualservice-github.yaml"),
        guide("destinationrule-github.yaml"),
        guide("serviceentry-github.yaml"),
        access_log(dir),
    ];
    let (gw, bind) = gateway(&config, dns.addr(), &[]).await;
    let out = curl(&[
        "-sS",
        "--cacert",
        &ca_file.display().to_string(),
        "--resolve",
        &format!("api.github.com:443:{bind}"),
        "https://api.github.com/repos/istio/istio",
    ])
    .await
    .expect("curl runs");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.contains("\"upstream\":\"github-stand-in\""), "{body}");
    assert!(body.contains("\"sni\":\"api.github.com\""), "{body}");
    assert!(body.contains("/repos/istio/istio"), "{body}");
    gw.wait_for_log("outbound|443||api.github.com", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}: {}", gw.stdout()));

    // What the gateway runs on, as `proxy-config` and /config_dump show it.
    let admin = gw.admin().to_string();
    let out = std::process::Command::new(bin())
        .args(["proxy-config", "all", "--admin", &admin])
        .output()
        .expect("proxy-config");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "SNI: api.github.com",
        "SNI: api.stripe.com",
        "Cluster: outbound|443||api.github.com",
        "STRICT_DNS",
    ] {
        assert!(text.contains(want), "proxy-config lacks {want:?}:\n{text}");
    }
    let (status, dump) = gw.admin_get("/config_dump").expect("config_dump");
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).expect("json");
    assert_eq!(dump["listeners"][0]["port"], 443);
    assert!(
        dump["clusters"]["outbound|443||api.github.com"].is_object(),
        "{dump}"
    );
    let (status, metrics) = gw.admin_get("/stats/prometheus").expect("metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("istio_tcp_connections_opened_total"),
        "{metrics}"
    );
}

/// Guide Step 5, unchanged: plain HTTP into the gateway leaves as HTTPS with the right SNI;
/// a wrong upstream certificate is a 503 with flag UF, never silently accepted. The DR names
/// no caCertificates, so the platform store is used — which honours SSL_CERT_FILE.
#[tokio::test(flavor = "multi_thread")]
async fn step5_tls_origination_and_a_wrong_certificate() {
    let ext = ExternalHttps::start(
        "external-ca",
        "step5",
        [("api.external-service.com", "external-stand-in")],
    )
    .await;
    let (ca_file, dns) = (&ext.ca_file, &ext.dns);
    let config = [
        guide("gateway-tls-origination.yaml"),
        guide("virtualservice-tls-origination.yaml"),
        guide("destinationrule-tls-origination.yaml"),
        guide("serviceentry-tls-origination.yaml"),
        guide("mesh-config.yaml"),
    ];
    let ca_env = ca_file.display().to_string();
    let (gw, bind) = gateway(&config, dns.addr(), &[("SSL_CERT_FILE", &ca_env)]).await;
    let (status, _, body) = http_get(
        SocketAddr::new(bind, 80),
        "api.external-service.com",
        "/data",
    )
    .await
    .expect("request");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"sni\":\"api.external-service.com\""),
        "{body}"
    );
    assert!(body.contains("external-stand-in"), "{body}");

    // The same name now answered by a server whose certificate another CA signed.
    let rogue_ca = TestCa::new("rogue-ca");
    let rogue = HttpsUpstream::start(
        SocketAddr::new(free_loopback_addr(), 443),
        &rogue_ca.server_cert(&["api.external-service.com"]),
        "rogue",
        UpstreamOptions::default(),
    )
    .await
    .expect("rogue upstream");
    dns.set("api.external-service.com", vec![rogue.addr().ip()]);
    // The DNS answer has a 5 s TTL, counted in the gateway process (no paused time there): ask
    // until the gateway re-resolves and dials the new address, bounded by a deadline well past
    // the TTL.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let (status, body) = loop {
        let (status, _, body) = http_get(
            SocketAddr::new(bind, 80),
            "api.external-service.com",
            "/data",
        )
        .await
        .expect("request");
        if status != 200 {
            break (status, body);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rogue upstream was never dialed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert_eq!(rogue.requests(), 0, "no request reached the rogue server");
    gw.wait_for_log("503 UF", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}: {}", gw.stdout()));
}

/// The guide's database ServiceEntry with its 192.168.x endpoints rewritten to loopback ones:
/// TCP reaches both STATIC endpoints, and the `replica` subset only the second.
#[tokio::test(flavor = "multi_thread")]
async fn static_tcp_endpoints_and_subsets() {
    let primary = TcpUpstream::start(SocketAddr::new(free_loopback_addr(), 5432), "primary")
        .await
        .expect("primary");
    let replica = TcpUpstream::start(SocketAddr::new(free_loopback_addr(), 5432), "replica")
        .await
        .expect("replica");
    let dir = TempDir::new("db");
    let se = std::fs::read_to_string(guide("serviceentry-database.yaml"))
        .expect("guide file")
        .replace("192.168.1.100", &primary.addr().ip().to_string())
        .replace("192.168.1.101", &replica.addr().ip().to_string());
    assert!(!se.contains("192.168."), "no test may send to 192.168.x");
    std::fs::write(dir.join("serviceentry-database.yaml"), se).expect("write");
    std::fs::write(
        dir.join("routing.yaml"),
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: db-gateway, namespace: default}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 5432, name: tcp-db, protocol: TCP}
    hosts: [external-db.example.com]
  - port: {number: 5433, name: tcp-db-replica, protocol: TCP}
    hosts: [external-db.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: [external-db.example.com]
  gateways: [db-gateway]
  tcp:
  - match: [{port: 5433}]
    route: [{destination: {host: external-db.example.com, subset: replica, port: {number: 5432}}}]
  - match: [{port: 5432}]
    route: [{destination: {host: external-db.example.com, port: {number: 5432}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: default}
spec:
  host: external-db.example.com
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets:
  - {name: primary, labels: {role: primary}}
  - {name: replica, labels: {role: replica}}
"#,
    )
    .expect("write");
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let (_gw, bind) = gateway(&[dir.path().display().to_string()], dns.addr(), &[]).await;
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..10 {
        let got = raw_tcp(
            SocketAddr::new(bind, 5432),
            b"ping\n",
            Duration::from_secs(2),
        )
        .await
        .expect("tcp");
        let banner = String::from_utf8_lossy(&got)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        *seen.entry(banner).or_default() += 1;
    }
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        ["primary", "replica"],
        "{seen:?}"
    );
    for _ in 0..5 {
        let got = raw_tcp(
            SocketAddr::new(bind, 5433),
            b"ping\n",
            Duration::from_secs(2),
        )
        .await
        .expect("tcp");
        assert!(
            got.starts_with(b"replica\n"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
}

/// At the gateway, what no route names is refused: HTTP 404 with flag NR, TLS closed
/// (filter_chain_not_found), each logged with its Host or SNI. Garbage and malformed HTTP
/// never stop the gateway from serving the next client.
#[tokio::test(flavor = "multi_thread")]
async fn unrouted_hosts_are_refused_and_logged_and_garbage_is_survived() {
    let ca = TestCa::new("ca");
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let config = [
        guide("egress-gateway.yaml"),
        guide("virtualservice-github.yaml"),
        guide("serviceentry-github.yaml"),
        guide("gateway-tls-origination.yaml"),
        guide("virtualservice-tls-origination.yaml"),
        guide("serviceentry-tls-origination.yaml"),
        guide("mesh-config.yaml"),
    ];
    let (gw, bind) = gateway(&config, dns.addr(), &[]).await;
    let (status, _, _) = http_get(SocketAddr::new(bind, 80), "unknown.example.org", "/")
        .await
        .expect("http");
    assert_eq!(status, 404);
    gw.wait_for_log("404 NR", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}: {}", gw.stdout()));
    let r = https_get(
        SocketAddr::new(bind, 443),
        "evil.example.org",
        "evil.example.org",
        "/",
        &ca.ca_root_store(),
        None,
    )
    .await;
    assert!(r.is_err(), "an unknown SNI must be refused: {r:?}");
    let logged = gw
        .wait_for_log("evil.example.org", Duration::from_secs(5))
        .is_ok()
        || gw
            .wait_for_stderr("evil.example.org", Duration::from_secs(1))
            .is_ok();
    assert!(
        logged,
        "the refused SNI is logged: {} {}",
        gw.stdout(),
        gw.stderr()
    );

    for garbage in [
        &b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"[..],
        b"\x16\x03\x01\xff\xff",
        b"\x00\x01\x02garbage\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: \x01\r\n\r\n",
        b"GET /\r\n\r\n",
    ] {
        for port in [443, 80] {
            let _ = raw_tcp(
                SocketAddr::new(bind, port),
                garbage,
                Duration::from_millis(500),
            )
            .await;
        }
    }
    let long_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let _ = raw_tcp(
        SocketAddr::new(bind, 80),
        long_header.as_bytes(),
        Duration::from_millis(500),
    )
    .await;
    let (status, _, _) = http_get(SocketAddr::new(bind, 80), "unknown.example.org", "/")
        .await
        .expect("still serving");
    assert_eq!(status, 404);
    assert_eq!(gw.admin_get("/ready").map(|r| r.0).ok(), Some(200));
}

/// Wildcard egress at the gateway: a `*.wikipedia.org` ServiceEntry with DYNAMIC_DNS and a
/// PASSTHROUGH server; each SNI is resolved on demand and reaches its own stand-in.
#[tokio::test(flavor = "multi_thread")]
async fn wildcard_egress_resolves_each_sni() {
    let ca = TestCa::new("wiki-ca");
    let en = HttpsUpstream::start(
        SocketAddr::new(free_loopback_addr(), 443),
        &ca.server_cert(&["en.wikipedia.org"]),
        "wiki-en",
        UpstreamOptions::default(),
    )
    .await
    .expect("en");
    let de = HttpsUpstream::start(
        SocketAddr::new(free_loopback_addr(), 443),
        &ca.server_cert(&["de.wikipedia.org"]),
        "wiki-de",
        UpstreamOptions::default(),
    )
    .await
    .expect("de");
    let dns = DnsServer::start([
        ("en.wikipedia.org", vec![en.addr().ip()]),
        ("de.wikipedia.org", vec![de.addr().ip()]),
    ])
    .await
    .expect("dns");
    let dir = TempDir::new("wiki");
    std::fs::write(
        dir.join("wikipedia.yaml"),
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wikipedia, namespace: default}
spec:
  hosts: ["*.wikipedia.org"]
  ports: [{number: 443, name: tls, protocol: TLS}]
  location: MESH_EXTERNAL
  resolution: DYNAMIC_DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: wiki-gateway, namespace: default}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: ["*.wikipedia.org"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wikipedia, namespace: default}
spec:
  hosts: ["*.wikipedia.org"]
  gateways: [wiki-gateway]
  tls:
  - match: [{port: 443, sniHosts: ["*.wikipedia.org"]}]
    route: [{destination: {host: "*.wikipedia.org", port: {number: 443}}}]
"#,
    )
    .expect("write");
    let (_gw, bind) = gateway(&[dir.path().display().to_string()], dns.addr(), &[]).await;
    let roots = ca.ca_root_store();
    for (name, want) in [
        ("en.wikipedia.org", "wiki-en"),
        ("de.wikipedia.org", "wiki-de"),
    ] {
        let (status, _, body) = https_get(
            SocketAddr::new(bind, 443),
            name,
            name,
            "/wiki/Rust",
            &roots,
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(status, 200);
        assert!(body.contains(want), "{name}: {body}");
    }
}

/// Runs `sluice demo --once` as a process (stopped by its PID if it runs over 90 s); returns
/// its exit status and stdout.
async fn demo_once(admin: SocketAddr) -> (std::process::ExitStatus, String, String) {
    use std::process::Stdio;
    let mut child = std::process::Command::new(bin())
        .args(["demo", "--once", "--admin", &admin.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("demo starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => break,
            None if std::time::Instant::now() > deadline => {
                // Child::kill sends SIGKILL to this PID only.
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "sluice demo --once ran over 90 s: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sluice demo --once`, as a process: each outcome it prints is the expected one, each with
/// its access-log entry and metric, and it exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn demo_once_shows_every_outcome() {
    let (status, text, stderr) = demo_once(SocketAddr::new(free_loopback_addr(), 15000)).await;
    assert!(status.success(), "{status:?}\n{text}\n{stderr}");
    for line in [
        "✔ allowed      payment-service → https://api.payment-provider.com/v1/pay: 200",
        "✔ originated   payment-service → http://api.external-service.com/data: 200",
        "✔ denied       reporting → http://api.external-service.com/data: 403 \"RBAC: access denied\"",
        "✔ blocked      payment-service → http://exfiltrate.example.net/upload: 502",
        "✔ rate limited 130 requests at once",
        "All outcomes as expected.",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains('✘'), "{text}");
    // The evidence is the real access log and metrics.
    for proof in [
        "\"GET /data HTTP/1.1\" 403",
        " 429 RL ",
        "\"GET /upload HTTP/1.1\" 502",
        "connection_security_policy=\"mutual_tls\"} 1",
        "envoy_http_local_rate_limit_enforced_total ",
        "sluice proxy-config listeners --admin",
        "/stats/prometheus",
        "/ui",
    ] {
        assert!(text.contains(proof), "missing {proof:?} in:\n{text}");
    }
    let limited = text
        .lines()
        .find_map(|l| {
            l.split(" × 429")
                .next()?
                .rsplit(' ')
                .next()?
                .parse::<u32>()
                .ok()
        })
        .expect("the count of 429s");
    assert!(limited > 0, "{text}");
}

/// Plain `sluice demo` stays up until Ctrl-C and then exits cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn demo_runs_and_stops_on_ctrl_c() {
    let admin = SocketAddr::new(free_loopback_addr(), 15000);
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["demo", "--admin", &admin.to_string()]);
    let mut demo = tokio::task::spawn_blocking(move || SluiceProcess::spawn_command(cmd, admin))
        .await
        .expect("join")
        .expect("demo ready");
    demo.wait_for_log("Press Ctrl-C", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}: {}", demo.stdout()));
    demo.signal("INT").expect("signal");
    let status = demo
        .wait_exit(Duration::from_secs(15))
        .expect("wait")
        .expect("exited after Ctrl-C");
    assert!(status.success(), "{status:?}: {}", demo.stderr());
}
