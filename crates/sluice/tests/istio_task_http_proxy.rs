//! istio.io task "Using an External HTTPS Proxy" (`testdata/acceptance/istio-tasks/http-proxy`):
//! the corporate proxy is squid from Debian (started here with its own config on loopback,
//! stopped by PID; the test fails when squid is not installed), en.wikipedia.org a loopback
//! stand-in that squid resolves through its own hosts file. 03 is applied with the shell's
//! substitution of `$PROXY_IP` and `$PROXY_PORT`, as the doc's `kubectl apply` heredoc does.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
mod istio_tasks;

use common::squid::Squid;
use istio_tasks::{ConfigDir, curl_sidecar, run_curl, task_file, wait_log_line};
use sluice_test_support::{
    DnsServer, HttpsUpstream, TempDir, TestCa, UpstreamOptions, free_loopback_addr,
};

const TASK: &str = "http-proxy";
const EN: &str = "<title>Wikipedia, the free encyclopedia</title>";

async fn wikipedia(ca: &TestCa) -> HttpsUpstream {
    HttpsUpstream::start(
        SocketAddr::new(free_loopback_addr(), 443),
        &ca.server_cert(&["en.wikipedia.org"]),
        "wikipedia",
        UpstreamOptions::default().respond("/wiki/Main_Page", 200, EN),
    )
    .await
    .expect("wikipedia")
}

/// "Deploy an HTTPS proxy": from a pod outside the mesh,
/// `HTTPS_PROXY=$PROXY_IP:$PROXY_PORT curl https://en.wikipedia.org/wiki/Main_Page` prints the
/// title and squid logs `TCP_TUNNEL/200 ... CONNECT en.wikipedia.org:443`.
#[tokio::test(flavor = "multi_thread")]
async fn the_corporate_proxy_tunnels_to_wikipedia() {
    let ca = TestCa::new("public-ca");
    let tmp = TempDir::new("http-proxy");
    let ca_file = ca.write_ca_pem(tmp.path()).display().to_string();
    let wiki = wikipedia(&ca).await;
    let squid = Squid::start(
        free_loopback_addr(),
        &[("en.wikipedia.org", wiki.addr().ip())],
    )
    .await;
    let out = run_curl(&[
        "--proxy",
        &format!("http://{}", squid.addr),
        "--cacert",
        &ca_file,
        "https://en.wikipedia.org/wiki/Main_Page",
    ])
    .await;
    assert_eq!(out.stdout, EN, "{}", out.stderr);
    squid.wait_log("TCP_TUNNEL/200").await;
    let line = squid.wait_log("CONNECT en.wikipedia.org:443").await;
    assert!(line.contains("TCP_TUNNEL/200"), "{line}");
}

/// "Configure traffic to external HTTPS proxy" (03, REGISTRY_ONLY): the app's own CONNECT to
/// squid leaves through the sidecar as TCP to the ServiceEntry's address, logged as
/// `outbound|3128||my-company-proxy.com`. The app here speaks CONNECT to squid inside the
/// sidecar's tunnel (curl cannot nest two proxies; a captured pod does not need to).
#[tokio::test(flavor = "multi_thread")]
async fn the_apps_connect_through_the_sidecar_under_registry_only() {
    let ca = TestCa::new("public-ca");
    let wiki = wikipedia(&ca).await;
    let squid = Squid::start(
        free_loopback_addr(),
        &[("en.wikipedia.org", wiki.addr().ip())],
    )
    .await;
    let dns = DnsServer::start([("en.wikipedia.org", vec![wiki.addr().ip()])])
        .await
        .expect("dns");
    let cfg = ConfigDir::new("http-proxy-config");
    cfg.apply("egress-control", "01");
    cfg.apply("observability-logs-access-log", "01");
    let se = std::fs::read_to_string(task_file(TASK, "03"))
        .expect("03")
        .replace("$PROXY_IP", &squid.addr.ip().to_string())
        .replace("$PROXY_PORT", "3128");
    cfg.write("03-configure_traffic_to_external_https_proxy_1.yaml", &se);
    let (sc, proxy) = curl_sidecar(&[cfg.path()], dns.addr(), None).await;

    let mut s = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("sidecar");
    let target = squid.addr;
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "sidecar: {head}");
    s.write_all(b"CONNECT en.wikipedia.org:443 HTTP/1.1\r\nHost: en.wikipedia.org:443\r\n\r\n")
        .await
        .expect("write");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "squid: {head}");
    drop(s);
    squid.wait_log("CONNECT en.wikipedia.org:443").await;
    wait_log_line(&sc, &["outbound|3128||my-company-proxy.com"]).await;
}

async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            s.read(&mut chunk),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}
