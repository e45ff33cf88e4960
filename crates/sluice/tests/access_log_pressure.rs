//! An access log whose reader cannot keep up never slows traffic: the gateway logs to a named
//! pipe nobody reads (every write would block), requests are served as fast as with the log
//! going to a file, and the lines that could not be written are counted in
//! `sluice_access_log_dropped_total`. Loopback only.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

mod common;

use common::{gateway, http_gateway, http_route, metric};
use sluice_test_support::client::http_get;
use sluice_test_support::{DnsServer, HttpUpstream, TempDir, free_loopback_addr};

/// Beyond the writer's queue (4096 lines), so some lines must be dropped.
const REQUESTS: usize = 5200;

fn config(upstream: IpAddr, log: &str) -> String {
    format!(
        r#"{}{}---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {{name: mesh, namespace: istio-system}}
spec:
  meshConfig: {{accessLogFile: "{log}"}}
"#,
        http_gateway("[api.partner.test]"),
        http_route("partner", "api.partner.test", upstream)
    )
}

/// `n` requests from 4 clients; how long each took on average, all answered 200.
async fn run(addr: SocketAddr, n: usize) -> Duration {
    let started = Instant::now();
    let tasks = (0..4).map(|_| {
        tokio::spawn(async move {
            for _ in 0..n / 4 {
                let r = http_get(addr, "api.partner.test", "/")
                    .await
                    .expect("request");
                assert_eq!(r.0, 200);
            }
        })
    });
    for t in futures_util::future::join_all(tasks).await {
        t.expect("client");
    }
    started.elapsed() / n as u32
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_access_log_drops_lines_not_requests() {
    let upstream = HttpUpstream::start(SocketAddr::new(free_loopback_addr(), 80), "partner")
        .await
        .expect("upstream");
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let dir = TempDir::new("log-pressure");
    let ip = upstream.addr().ip();

    let file_cfg = dir.join("file.yaml");
    let log_file = dir.join("access.log");
    std::fs::write(&file_cfg, config(ip, &log_file.display().to_string())).expect("write");
    let (gw, bind) = gateway(&[file_cfg.display().to_string()], dns.addr(), &[]).await;
    let baseline = run(SocketAddr::new(bind, 80), REQUESTS / 4).await;
    drop(gw);

    let fifo = dir.join("stuck.pipe");
    sluice_test_support::tempdir::mkfifo(&fifo);
    let fifo_cfg = dir.join("fifo.yaml");
    std::fs::write(&fifo_cfg, config(ip, &fifo.display().to_string())).expect("write");
    let (gw, bind) = gateway(&[fifo_cfg.display().to_string()], dns.addr(), &[]).await;
    let stuck = run(SocketAddr::new(bind, 80), REQUESTS).await;
    let (_, stats) = gw.admin_get("/stats/prometheus").expect("stats");
    let dropped = metric(&stats, "sluice_access_log_dropped_total");
    eprintln!(
        "per request, log to a file: {baseline:?}; to a stuck pipe: {stuck:?}; dropped {dropped}"
    );
    assert!(
        dropped > 0.0,
        "the lines that could not be written are counted"
    );
    // Generous: the point is that requests never wait for the log (they would stall for
    // good), not a benchmark on a shared machine.
    assert!(
        stuck < baseline * 2 + Duration::from_millis(2),
        "a stuck log slowed requests: {stuck:?} against {baseline:?}"
    );
}
