//! istio.io task "Envoy Access Logs" (`testdata/acceptance/istio-tasks/observability-logs-access-log`):
//! access logging turned on by the Telemetry API (01) or by meshConfig (02, the IstioOperator
//! fragment), then `curl -sS -v httpbin:8000/status/418` from the curl pod; its sidecar logs
//! the request in Envoy's default format with `outbound|8000||httpbin.default.svc.cluster.local`.
//! httpbin is the sample's `kind: Service` (port 8000 → 8080) and a loopback stand-in.

use std::net::SocketAddr;

mod common;
mod istio_tasks;

use istio_tasks::{ConfigDir, Plain, PlainServer, curl_sidecar, run_curl, wait_log_line};
use sluice_test_support::{DnsServer, free_loopback_addr};

const TASK: &str = "observability-logs-access-log";

/// The httpbin sample's Service, as `kubectl get svc httpbin -o yaml` gives it.
const HTTPBIN_SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: default, labels: {app: httpbin, service: httpbin}}
spec:
  selector: {app: httpbin}
  ports:
  - {name: http, port: 8000, targetPort: 8080}
"#;

async fn teapot(file: &str) {
    let httpbin =
        PlainServer::start_at(SocketAddr::new(free_loopback_addr(), 8080), Plain::Httpbin).await;
    let dns = DnsServer::start([("httpbin.default.svc.cluster.local", vec![httpbin.ip()])])
        .await
        .expect("dns");
    let cfg = ConfigDir::new("access-log-config");
    cfg.write("httpbin-service.yaml", HTTPBIN_SERVICE);
    cfg.apply(TASK, file);
    let (sc, proxy) = curl_sidecar(&[cfg.path()], dns.addr(), None).await;
    let out = run_curl(&[
        "-v",
        "-x",
        &format!("http://{proxy}"),
        "http://httpbin.default.svc.cluster.local:8000/status/418",
    ])
    .await;
    assert!(out.stderr.contains("< HTTP/1.1 418"), "{}", out.stderr);
    let line = wait_log_line(
        &sc,
        &[
            "\"GET /status/418 HTTP/1.1\" 418",
            "outbound|8000||httpbin.default.svc.cluster.local",
        ],
    )
    .await;
    assert!(line.contains("\"curl/"), "{line}");
    assert!(
        line.contains("\"httpbin.default.svc.cluster.local:8000\""),
        "{line}"
    );
}

/// "Using Telemetry API" (01): Telemetry `mesh-default` in the root namespace, provider envoy.
#[tokio::test(flavor = "multi_thread")]
async fn telemetry_api_turns_on_the_access_log() {
    teapot("01").await;
}

/// "Using Mesh Config" (02): `meshConfig.accessLogFile: /dev/stdout`.
#[tokio::test(flavor = "multi_thread")]
async fn mesh_config_turns_on_the_access_log() {
    teapot("02").await;
}

/// The doc's own request uses the short name `httpbin:8000`, which the pod's resolver
/// completes with its search domains (`default.svc.cluster.local`).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "sluice's sidecar is an explicit proxy: the client's resolver search domains do not apply, and a CONNECT-less `GET http://httpbin:8000/` is not matched to httpbin.default.svc.cluster.local by short name"]
async fn the_short_name_httpbin_8000() {
    let httpbin =
        PlainServer::start_at(SocketAddr::new(free_loopback_addr(), 8080), Plain::Httpbin).await;
    let dns = DnsServer::start([("httpbin.default.svc.cluster.local", vec![httpbin.ip()])])
        .await
        .expect("dns");
    let cfg = ConfigDir::new("access-log-short");
    cfg.write("httpbin-service.yaml", HTTPBIN_SERVICE);
    cfg.apply(TASK, "01");
    let (sc, proxy) = curl_sidecar(&[cfg.path()], dns.addr(), None).await;
    let out = run_curl(&[
        "-v",
        "-x",
        &format!("http://{proxy}"),
        "http://httpbin:8000/status/418",
    ])
    .await;
    assert!(out.stderr.contains("< HTTP/1.1 418"), "{}", out.stderr);
    wait_log_line(&sc, &["outbound|8000||httpbin.default.svc.cluster.local"]).await;
}

/// The server side of the doc's log (`inbound|8000||`, SNI
/// `outbound_.8000_._.httpbin.default.svc.cluster.local`) is httpbin's own sidecar.
#[test]
#[ignore = "out of scope: sluice is an egress proxy; it has no inbound (server-side) sidecar listener"]
fn the_server_side_inbound_log_line() {
    panic!("no inbound sidecar");
}
