//! Telemetry resources applied end to end: the `sluice` binary as the egress gateway, a real
//! HTTP upstream, real requests, the access log on the gateway's stdout and the metrics on its
//! `/stats/prometheus`. Every address is loopback. docs/telemetry.md says what these pin.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

mod common;

use common::{bin, gateway, guide};

use sluice_test_support::client::http_get;
use sluice_test_support::{DnsServer, HttpUpstream, SluiceProcess, TempDir, free_loopback_addr};

/// Routing for the tests, in `ns`: `api.partner.test/ok…` to the upstream's ServiceEntry
/// `backend.partner.internal` (so the routed host and the destination service differ), any
/// other path of it unrouted (404 `NR`), and `*.wild.test` routed by wildcard.
fn routing(ns: &str, upstream: IpAddr) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress, namespace: {ns}}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [api.partner.test, "*.wild.test"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend, namespace: {ns}}}
spec:
  hosts: [backend.partner.internal]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: "{upstream}"}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: partner, namespace: {ns}}}
spec:
  hosts: [api.partner.test, "*.wild.test"]
  gateways: [egress]
  http:
  - match: [{{uri: {{prefix: /ok}}}}]
    route: [{{destination: {{host: backend.partner.internal, port: {{number: 80}}}}}}]
"#
    )
}

struct Setup {
    gw: SluiceProcess,
    addr: SocketAddr,
    _upstream: HttpUpstream,
    _dns: DnsServer,
    _dir: TempDir,
}

/// The gateway (namespace `ns`) with the routing, `extra` YAML and `files`.
async fn start(name: &str, ns: &str, extra: &str, files: &[String]) -> Setup {
    let upstream = HttpUpstream::start(SocketAddr::new(free_loopback_addr(), 80), "partner")
        .await
        .expect("upstream");
    let dir = TempDir::new(name);
    let file = dir.join("config.yaml");
    std::fs::write(
        &file,
        format!("{}---\n{extra}", routing(ns, upstream.addr().ip())),
    )
    .expect("write config");
    let dns = DnsServer::start(Vec::<(&str, Vec<IpAddr>)>::new())
        .await
        .expect("dns");
    let mut config = files.to_vec();
    config.push(file.display().to_string());
    let (gw, bind) = gateway(&config, dns.addr(), &[("SLUICE_NAMESPACE", ns)]).await;
    Setup {
        gw,
        addr: SocketAddr::new(bind, 80),
        _upstream: upstream,
        _dns: dns,
        _dir: dir,
    }
}

async fn get(s: &Setup, host: &str, path: &str) -> u16 {
    http_get(s.addr, host, path).await.expect("request").0
}

/// The series of `metric` whose labels include `label`.
fn series(metrics: &str, metric: &str, label: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with(metric) && l.contains(label))
        .map(str::to_owned)
        .collect()
}

fn stats(gw: &SluiceProcess) -> String {
    let (status, text) = gw.admin_get("/stats/prometheus").expect("metrics");
    assert_eq!(status, 200);
    text
}

/// Waits until the gateway has counted `n` requests (records are written when a response
/// ends, a moment after the client has it).
fn wait_counted(gw: &SluiceProcess, n: usize) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = stats(gw);
        let counted: f64 = text
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if counted as usize >= n {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} requests not counted:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The guide's Telemetry, unchanged: `destination_service` of `istio_requests_total` and of
/// `istio_request_duration_milliseconds` is the request's host (the routed one; a host only a
/// wildcard matched is `unknown`, never what the client wrote), other metrics keep the
/// destination service; every request is logged (`filter: "true"`).
#[tokio::test(flavor = "multi_thread")]
async fn the_guide_telemetry_labels_requests_by_their_host() {
    let s = start(
        "telemetry-guide",
        "istio-system",
        "",
        &[guide("telemetry-egress.yaml")],
    )
    .await;
    assert_eq!(get(&s, "api.partner.test", "/ok/guide").await, 200);
    assert_eq!(get(&s, "Attacker-123.wild.test", "/ok/wild").await, 200);
    let text = wait_counted(&s.gw, 2);
    for metric in [
        "istio_requests_total{",
        "istio_request_duration_milliseconds_count{",
    ] {
        let host = series(&text, metric, "destination_service=\"api.partner.test\"");
        assert_eq!(host.len(), 1, "{metric}:\n{text}");
        assert!(
            host[0].contains("destination_service_name=\"backend.partner.internal\""),
            "{}",
            host[0]
        );
        assert_eq!(
            series(&text, metric, "destination_service=\"unknown\"").len(),
            1,
            "{metric}:\n{text}"
        );
        assert!(!text.contains("ttacker-123"), "{text}");
    }
    // Not overridden: the destination service.
    let bytes = series(
        &text,
        "istio_request_bytes_count{",
        "destination_service=\"backend.partner.internal\"",
    );
    assert_eq!(bytes.len(), 1, "{text}");
    assert!(bytes[0].ends_with(" 2"), "{}", bytes[0]);
    // Logged through the `envoy` provider: standard output, Istio's default format.
    for path in ["/ok/guide", "/ok/wild"] {
        s.gw.wait_for_log(
            &format!("\"GET {path} HTTP/1.1\" 200"),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
}

const FAILURES_ONLY: &str = r#"
apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata: {name: failures, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  accessLogging:
  - providers: [{name: envoy}]
    filter: {expression: "response.code >= 400"}
"#;

/// `filter.expression: response.code >= 400` logs the failing request only.
#[tokio::test(flavor = "multi_thread")]
async fn a_filter_logs_only_the_failing_requests() {
    let s = start("telemetry-filter", "istio-system", FAILURES_ONLY, &[]).await;
    assert_eq!(get(&s, "api.partner.test", "/ok/good-request").await, 200);
    assert_eq!(
        get(&s, "api.partner.test", "/missing/bad-request").await,
        404
    );
    s.gw.wait_for_log(
        "\"GET /missing/bad-request HTTP/1.1\" 404 NR",
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    wait_counted(&s.gw, 2);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!s.gw.stdout().contains("good-request"), "{}", s.gw.stdout());
}

/// `disabled: true` turns logging off, meshConfig's `accessLogFile` included.
#[tokio::test(flavor = "multi_thread")]
async fn disabled_logs_nothing() {
    let extra = r#"
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {name: mesh, namespace: istio-system}
spec:
  meshConfig: {accessLogFile: /dev/stdout}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: quiet, namespace: istio-system}
spec:
  accessLogging:
  - disabled: true
"#;
    let s = start("telemetry-disabled", "istio-system", extra, &[]).await;
    assert_eq!(get(&s, "api.partner.test", "/ok/one").await, 200);
    assert_eq!(get(&s, "api.partner.test", "/missing/two").await, 404);
    // Counted (the records were written), yet no line.
    wait_counted(&s.gw, 2);
    std::thread::sleep(Duration::from_millis(300));
    let out = s.gw.stdout();
    assert!(
        !out.contains("/ok/one") && !out.contains("/missing/two"),
        "{out}"
    );
}

/// Mesh, namespace and workload levels: the mesh default turns logging off, the namespace
/// (`egress`, where this gateway runs) turns it on for failures, the workload-level
/// Telemetry (selecting `istio: egressgateway`) overrides that filter with its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_workload_telemetry_overrides_the_namespace_one() {
    let extra = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging: [{providers: [{name: envoy}], disabled: true}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: namespace, namespace: egress}
spec:
  accessLogging:
  - providers: [{name: envoy}]
    filter: {expression: "response.code >= 400"}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: gateway, namespace: egress}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  accessLogging:
  - providers: [{name: envoy}]
    filter: {expression: "response.code < 400 && request.url_path.startsWith('/ok')"}
"#;
    let s = start("telemetry-levels", "egress", extra, &[]).await;
    assert_eq!(
        get(&s, "api.partner.test", "/missing/bad-request").await,
        404
    );
    assert_eq!(get(&s, "api.partner.test", "/ok/good-request").await, 200);
    s.gw.wait_for_log(
        "\"GET /ok/good-request HTTP/1.1\" 200",
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    wait_counted(&s.gw, 2);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!s.gw.stdout().contains("bad-request"), "{}", s.gw.stdout());
}

/// An expression that does not parse is an error of `sluice analyze`, at the expression's
/// file and line, with the parser's message.
#[test]
fn analyze_locates_an_invalid_expression() {
    let dir = TempDir::new("telemetry-analyze");
    let file = dir.join("telemetry.yaml");
    std::fs::write(
        &file,
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata:\n  name: bad\n  namespace: istio-system\nspec:\n  accessLogging:\n  - providers: [{name: envoy}]\n    filter:\n      expression: \"response.code >=\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(bin())
        .arg("analyze")
        .arg(&file)
        .output()
        .expect("sluice analyze");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("must be a valid CEL expression"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.starts_with("Error"), "{line}");
    assert!(line.contains("telemetry.yaml:10)"), "{line}");
    assert!(line.contains("Syntax error"), "{line}");
}
