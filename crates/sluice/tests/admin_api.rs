//! The admin API of a running `sluice gateway` (security issue): loopback by default,
//! read-only, and bounded like every other listener — a connection that sends nothing is
//! closed at `--first-byte-timeout`, while a well-behaved client is answered.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use sluice_test_support::DnsServer;
use sluice_test_support::client::raw_tcp;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn the_admin_api_is_read_only_and_cuts_off_silent_clients() {
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let config = [guide("egress-gateway.yaml"), guide("mesh-config.yaml")];
    let (gw, bind) = gateway(&config, dns.addr(), &[("SLUICE_FIRST_BYTE_TIMEOUT", "1s")]).await;
    let admin = SocketAddr::new(bind, 15000);

    let mut silent = TcpStream::connect(admin).await.expect("connect");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a silent admin client stayed connected: {read:?}"
    );

    assert_eq!(gw.admin_get("/ready").map(|r| r.0).ok(), Some(200));
    for method in ["POST", "PUT", "DELETE"] {
        let reply = raw_tcp(
            admin,
            format!("{method} /config_dump HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
            Duration::from_secs(2),
        )
        .await
        .expect("request");
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 405"), "{method}: {reply}");
    }
}

/// The default admin address is loopback: nothing off the machine reaches it unless the
/// operator says `--admin`. Run inside a network namespace of its own (`unshare -n`), where
/// port 15000 is free and `lo` also carries a non-loopback address: the admin API answers on
/// 127.0.0.1 and refuses connections to the other address.
#[test]
fn the_default_admin_address_is_loopback() {
    let config = [guide("egress-gateway.yaml"), guide("mesh-config.yaml")];
    let script = r#"
set -u
ip link set lo up
ip addr add 10.99.0.1/32 dev lo
"$0" gateway -c "$1" -c "$2" --bind 127.0.0.1 >/dev/null 2>&1 &
pid=$!
ready=no
for _ in $(seq 1 100); do
  if curl -s -o /dev/null --max-time 1 http://127.0.0.1:15000/ready; then ready=yes; break; fi
  sleep 0.1
done
echo "loopback: $ready"
if curl -s -o /dev/null --max-time 2 http://10.99.0.1:15000/ready; then
  echo "other address: answered"
else
  echo "other address: refused"
fi
kill "$pid"
wait "$pid" 2>/dev/null
exit 0
"#;
    let out = std::process::Command::new("unshare")
        .args(["-n", "sh", "-c", script])
        .arg(bin())
        .args(&config)
        .output()
        .expect("unshare -n (root, util-linux, iproute2 and curl are needed)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("loopback: yes"), "{text}");
    assert!(text.contains("other address: refused"), "{text}");
}

/// Outlier ejection is visible where an operator looks: `/clusters` (Envoy's
/// `health_flags::/failed_outlier_check`, per-endpoint `rq_active`), its JSON form, and
/// `sluice proxy-config endpoints` (istioctl's STATUS / OUTLIER CHECK columns).
#[tokio::test(flavor = "multi_thread")]
async fn ejected_endpoints_show_in_clusters_and_proxy_config() {
    use sluice_test_support::client::http_get;
    use sluice_test_support::{HttpUpstream, TempDir, UpstreamOptions, free_loopback_addr};

    let good = HttpUpstream::start(SocketAddr::new(free_loopback_addr(), 80), "good")
        .await
        .expect("good");
    let bad = HttpUpstream::start_with(
        SocketAddr::new(free_loopback_addr(), 80),
        "bad",
        UpstreamOptions::default().respond("/", 500, "broken"),
    )
    .await
    .expect("bad");
    let dir = TempDir::new("admin-clusters");
    let file = dir.join("config.yaml");
    std::fs::write(
        &file,
        format!(
            r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [api.partner.test]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: partner, namespace: istio-system}}
spec:
  hosts: [api.partner.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: "{}"}}, {{address: "{}"}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: partner, namespace: istio-system}}
spec:
  host: api.partner.test
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection: {{consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 50}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: partner, namespace: istio-system}}
spec:
  hosts: [api.partner.test]
  gateways: [egress]
  http:
  - route: [{{destination: {{host: api.partner.test, port: {{number: 80}}}}}}]
"#,
            good.addr().ip(),
            bad.addr().ip()
        ),
    )
    .expect("write");
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let config = [file.display().to_string()];
    let (gw, bind) = gateway(&config, dns.addr(), &[]).await;
    let addr = SocketAddr::new(bind, 80);
    for _ in 0..6 {
        http_get(addr, "api.partner.test", "/")
            .await
            .expect("request");
    }
    let cluster = "outbound|80||api.partner.test";
    let (status, text) = gw.admin_get("/clusters").expect("/clusters");
    assert_eq!(status, 200);
    let bad_line = format!(
        "{cluster}::{}::health_flags::/failed_outlier_check",
        bad.addr()
    );
    let good_line = format!("{cluster}::{}::health_flags::healthy", good.addr());
    assert!(text.contains(&bad_line), "{text}");
    assert!(text.contains(&good_line), "{text}");
    let (_, json) = gw.admin_get("/clusters?format=json").expect("json");
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert!(parsed.as_array().is_some_and(|a| !a.is_empty()), "{json}");

    let out = std::process::Command::new(bin())
        .args(["proxy-config", "endpoints", "--admin"])
        .arg(gw.admin().to_string())
        .output()
        .expect("proxy-config");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let row = |ep: SocketAddr| {
        table
            .lines()
            .find(|l| l.starts_with(&ep.to_string()))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(row(bad.addr())[1..3], ["UNHEALTHY", "FAILED"], "{table}");
    assert_eq!(row(good.addr())[1..3], ["HEALTHY", "OK"], "{table}");
}

/// `proxy-config --admin` takes a host name, and an admin API that does not answer is reported
/// as timed out (not a bare I/O error).
#[tokio::test(flavor = "multi_thread")]
async fn proxy_config_names_hosts_and_timeouts() {
    // Accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let out = tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(bin())
            .args(["proxy-config", "listeners", "--admin"])
            .arg(format!("localhost:{port}"))
            .output()
            .expect("proxy-config");
        drop(silent);
        out
    })
    .await
    .expect("join");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("timed out"), "{err}");
    let bad = std::process::Command::new(bin())
        .args(["proxy-config", "listeners", "--admin", "no-port-here"])
        .output()
        .expect("proxy-config");
    assert_eq!(bad.status.code(), Some(2), "a usage error");
}

/// A connection whose request head does not arrive within `--request-head-timeout` is closed
/// and counted on `/stats/prometheus`, apart from one that sends nothing at all (closed at
/// `--first-byte-timeout`); a well-behaved client is served meanwhile.
#[tokio::test]
async fn slow_request_heads_are_closed_and_counted() {
    use tokio::io::AsyncWriteExt;

    let upstream = sluice_test_support::HttpUpstream::start(
        SocketAddr::new(sluice_test_support::free_loopback_addr(), 80),
        "partner",
    )
    .await
    .expect("upstream");
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let dir = sluice_test_support::TempDir::new("head-timeout");
    let cfg = dir.join("gateway.yaml");
    std::fs::write(
        &cfg,
        format!(
            "{}{}",
            http_gateway("[api.partner.test]"),
            http_route("partner", "api.partner.test", upstream.addr().ip())
        ),
    )
    .expect("write");
    let (gw, bind) = gateway(
        &[cfg.display().to_string()],
        dns.addr(),
        &[
            ("SLUICE_FIRST_BYTE_TIMEOUT", "300ms"),
            ("SLUICE_REQUEST_HEAD_TIMEOUT", "600ms"),
        ],
    )
    .await;
    let listener = SocketAddr::new(bind, 80);

    let silent = TcpStream::connect(listener).await.expect("connect");
    let mut half = TcpStream::connect(listener).await.expect("connect");
    half.write_all(b"GET / HTTP/1.1\r\nHost: api.partner.test\r\n")
        .await
        .expect("write");
    let (status, _, body) =
        sluice_test_support::client::http_get(listener, "api.partner.test", "/")
            .await
            .expect("served");
    assert_eq!(status, 200, "{body}");
    for mut tcp in [silent, half] {
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a slow client stayed connected: {read:?}"
        );
    }
    let (code, stats) = gw.admin_get("/stats/prometheus").expect("stats");
    assert_eq!(code, 200);
    for (reason, n) in [("request_head_timeout", 1.0), ("first_byte_timeout", 1.0)] {
        let name = format!(r#"sluice_refused_total{{check="limit",reason="{reason}"}}"#);
        assert_eq!(metric(&stats, &name), n, "{name} in\n{stats}");
    }
}

/// The admin API holds at most 128 connections: with 128 open (each served once and kept
/// alive), the next is closed at once without an answer, and counted on `/stats/prometheus`
/// as `sluice_refused_total{check="limit",reason="admin_max_connections"}` once room is made.
#[tokio::test]
async fn the_admin_api_holds_at_most_its_max_connections_and_counts_the_rest() {
    use tokio::io::AsyncWriteExt;

    // `--admin-max-connections` (default 128), smaller here to keep the test short.
    const LIMIT: usize = 16;
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let config = [guide("egress-gateway.yaml"), guide("mesh-config.yaml")];
    // Held connections wait for their next request head: far longer than the test takes.
    let (gw, bind) = gateway(
        &config,
        dns.addr(),
        &[
            ("SLUICE_FIRST_BYTE_TIMEOUT", "120s"),
            ("SLUICE_ADMIN_MAX_CONNECTIONS", "16"),
        ],
    )
    .await;
    let admin = SocketAddr::new(bind, 15000);

    // Opens a connection and has one request answered on it: it then holds a permit. `None`
    // when it was closed instead (a connection of the start-up probes still held one).
    async fn served(admin: SocketAddr) -> Option<TcpStream> {
        let mut tcp = TcpStream::connect(admin).await.expect("connect");
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
            .await
            .ok()?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 512];
        while !reply.ends_with(b"ok\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
                .await
                .expect("an answer or a close in time")
                .ok()?;
            if n == 0 {
                return None;
            }
            reply.extend_from_slice(&buf[..n]);
        }
        assert!(reply.starts_with(b"HTTP/1.1 200"), "{reply:?}");
        Some(tcp)
    }

    let mut held = Vec::new();
    let mut attempts = 0;
    while held.len() < LIMIT {
        attempts += 1;
        assert!(attempts <= LIMIT + 16, "could not hold {LIMIT} connections");
        if let Some(tcp) = served(admin).await {
            held.push(tcp);
        }
    }
    // The next one is accepted and closed at once.
    let mut extra = TcpStream::connect(admin).await.expect("connect");
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), extra.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the connection over the limit was not closed: {read:?}"
    );

    // Room again once some close; the refusal was counted.
    held.truncate(LIMIT - 8);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let stats = loop {
        match gw.admin_get("/stats/prometheus") {
            Ok((200, stats)) => break stats,
            other => assert!(
                std::time::Instant::now() < until,
                "no room after connections closed: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let name = r#"sluice_refused_total{check="limit",reason="admin_max_connections"}"#;
    assert!(metric(&stats, name) >= 1.0, "{name} in\n{stats}");
}
