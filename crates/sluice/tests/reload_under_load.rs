//! Reloads lose nothing: a `sluice gateway` under steady load — new connections and kept-alive
//! ones for HTTP, kept-alive requests inside TLS passthrough tunnels — while its configuration
//! is rewritten 100 times over a minute, valid and invalid alternately. No request fails, no
//! tunnel breaks; each valid change is in effect within a second; each invalid one is rejected
//! and counted. Loopback only; every process is stopped by its PID.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

mod common;

use common::{gateway, http_route, metric};
use sluice_test_support::client::http_get;
use sluice_test_support::{
    DnsServer, HttpUpstream, HttpsUpstream, TempDir, TestCa, UpstreamOptions, free_loopback_addr,
};

const REWRITES: usize = 100;
const EVERY: Duration = Duration::from_millis(600);

/// HTTP for `a.test` (and `b.test` when `with_b`) to the HTTP stand-in; TLS passthrough for
/// `tls.test` to the HTTPS stand-in.
fn config(http: IpAddr, tls: IpAddr, with_b: bool) -> String {
    let hosts = if with_b {
        r#"["a.test", "b.test"]"#
    } else {
        r#"["a.test"]"#
    };
    let mut out = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: {hosts}
  - port: {{number: 443, name: tls, protocol: TLS}}
    hosts: [tls.test]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tls, namespace: istio-system}}
spec:
  hosts: [tls.test]
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints: [{{address: "{tls}"}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tls, namespace: istio-system}}
spec:
  hosts: [tls.test]
  gateways: [egress]
  tls:
  - match: [{{port: 443, sniHosts: [tls.test]}}]
    route: [{{destination: {{host: tls.test, port: {{number: 443}}}}}}]
"#
    );
    let http_hosts: &[&str] = if with_b {
        &["a.test", "b.test"]
    } else {
        &["a.test"]
    };
    for (i, h) in http_hosts.iter().enumerate() {
        out.push_str(&http_route(&format!("http{i}"), h, http));
    }
    out
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Tally {
    fn count(&self, ok: bool) {
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn get(host: &str) -> Request<Empty<Bytes>> {
    Request::get("/load")
        .header("host", host)
        .body(Empty::new())
        .expect("request")
}

/// Requests on one kept-alive HTTP/1.1 connection until `stop`.
async fn keep_alive_http(addr: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    while !stop.load(Ordering::Relaxed) {
        let ok = match send.send_request(get("a.test")).await {
            Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
            Err(_) => false,
        };
        tally.count(ok);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Requests inside one TLS passthrough tunnel (kept alive) until `stop`.
async fn tunnel(addr: SocketAddr, ca: Arc<TestCa>, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut cfg = sluice_test_support::ca::client_config(ca.ca_root_store(), None);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("tls.test").expect("name"), tcp)
        .await
        .expect("TLS through the gateway");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    while !stop.load(Ordering::Relaxed) {
        let ok = match send.send_request(get("tls.test")).await {
            Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
            Err(_) => false,
        };
        tally.count(ok);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A new connection per request until `stop`.
async fn new_connections(addr: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    while !stop.load(Ordering::Relaxed) {
        let ok = matches!(http_get(addr, "a.test", "/load").await, Ok(r) if r.0 == 200);
        tally.count(ok);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_reloads_under_load_lose_nothing() {
    let ca = Arc::new(TestCa::new("reload-ca"));
    let http_up = HttpUpstream::start(SocketAddr::new(free_loopback_addr(), 80), "http")
        .await
        .expect("http stand-in");
    let tls_up = HttpsUpstream::start(
        SocketAddr::new(free_loopback_addr(), 443),
        &ca.server_cert(&["tls.test"]),
        "tls",
        UpstreamOptions::default(),
    )
    .await
    .expect("https stand-in");
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let dir = TempDir::new("reload-load");
    let file = dir.join("config.yaml");
    let (hip, tip) = (http_up.addr().ip(), tls_up.addr().ip());
    std::fs::write(&file, config(hip, tip, false)).expect("write");
    let (gw, bind) = gateway(
        &[file.display().to_string()],
        dns.addr(),
        &[("SLUICE_RELOAD_INTERVAL", "200ms")],
    )
    .await;
    let (http_addr, tls_addr) = (SocketAddr::new(bind, 80), SocketAddr::new(bind, 443));

    let stop = Arc::new(AtomicBool::new(false));
    let (kept, tunnels, fresh) = (
        Arc::new(Tally::default()),
        Arc::new(Tally::default()),
        Arc::new(Tally::default()),
    );
    let mut load = Vec::new();
    for _ in 0..3 {
        load.push(tokio::spawn(keep_alive_http(
            http_addr,
            stop.clone(),
            kept.clone(),
        )));
        load.push(tokio::spawn(tunnel(
            tls_addr,
            ca.clone(),
            stop.clone(),
            tunnels.clone(),
        )));
    }
    load.push(tokio::spawn(new_connections(
        http_addr,
        stop.clone(),
        fresh.clone(),
    )));

    let mut slowest = Duration::ZERO;
    for i in 0..REWRITES {
        let written = Instant::now();
        if i % 2 == 1 {
            // Each invalid config is read and rejected before the next write replaces it
            // (waited for, bounded: on a loaded machine a fixed pause could be too short).
            let rejected = |gw: &sluice_test_support::SluiceProcess| {
                let (_, stats) = gw.admin_get("/stats/prometheus").expect("stats");
                metric(&stats, "sluice_config_reloads_total{result=\"rejected\"}")
            };
            let before = rejected(&gw);
            std::fs::write(&file, format!("kind: [unclosed {i}")).expect("write invalid");
            while rejected(&gw) <= before {
                assert!(
                    written.elapsed() < Duration::from_secs(5),
                    "rewrite {i}: the invalid config was not rejected within 5s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(EVERY.saturating_sub(written.elapsed())).await;
            continue;
        }
        let with_b = i % 4 == 0;
        std::fs::write(&file, config(hip, tip, with_b)).expect("write valid");
        let want = if with_b { 200 } else { 404 };
        loop {
            let got = http_get(http_addr, "b.test", "/").await.expect("probe").0;
            if got == want {
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(3),
                "rewrite {i}: b.test still {got} after {:?}",
                written.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        slowest = slowest.max(written.elapsed());
        tokio::time::sleep(EVERY.saturating_sub(written.elapsed())).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }

    let report = |t: &Tally| {
        (
            t.ok.load(Ordering::Relaxed),
            t.failed.load(Ordering::Relaxed),
        )
    };
    let (k, t, f) = (report(&kept), report(&tunnels), report(&fresh));
    eprintln!(
        "kept-alive {k:?}, tunnels {t:?}, new connections {f:?} (ok, failed); slowest change {slowest:?}"
    );
    assert_eq!((k.1, t.1, f.1), (0, 0, 0), "failed requests");
    assert!(k.0 > 1000 && t.0 > 300 && f.0 > 300, "the load ran");
    assert!(
        slowest <= Duration::from_secs(1),
        "a valid change took {slowest:?} to apply"
    );
    let (_, stats) = gw.admin_get("/stats/prometheus").expect("stats");
    let valid = (REWRITES / 2) as f64;
    assert_eq!(
        metric(&stats, "sluice_config_reloads_total{result=\"rejected\"}"),
        valid
    );
    assert_eq!(
        metric(&stats, "sluice_config_reloads_total{result=\"applied\"}"),
        valid
    );
    assert_eq!(tls_up.connections(), 3, "no tunnel was re-opened");
}
