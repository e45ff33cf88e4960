//! The resilience fields the data plane does not run are reported, each with its path and
//! what is left out (`SLC0006`); the fields it runs are lowered without a report. `docs/resilience.md` lists every field; the proxy's
//! `tests/resilience.rs` proves the enforced ones on real sockets.

use std::time::Duration;

use sluice_compile::lower::codes::NOT_SUPPORTED;
use sluice_compile::lower::{CompileOptions, compile};
use sluice_model::{Diagnostic, Level, load_str};
use sluice_snapshot::Snapshot;

const BASE: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: [api.example.com]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
"#;

const CLUSTER: &str = "outbound|80||api.example.com";

/// [`BASE`], a VirtualService rule with `rule_fields` (flow-mapping entries) routing to the
/// host, and a DestinationRule whose `trafficPolicy` is `policy` unless empty.
fn compile_with(rule_fields: &str, policy: &str) -> (Snapshot, Vec<Diagnostic>) {
    let sep = if rule_fields.is_empty() { "" } else { ", " };
    let mut yaml = format!(
        "{BASE}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: api, namespace: default}}\nspec:\n  hosts: [api.example.com]\n  gateways: [gw]\n  http:\n  - {{{rule_fields}{sep}route: [{{destination: {{host: api.example.com, port: {{number: 80}}}}}}]}}\n"
    );
    if !policy.is_empty() {
        yaml.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: default}}\nspec:\n  host: api.example.com\n  trafficPolicy: {policy}\n"
        ));
    }
    let loaded = load_str("resilience.yaml", &yaml);
    let mut diags = loaded.diagnostics.clone();
    let (snapshot, more) = compile(&loaded.resources, &CompileOptions::gateway());
    diags.extend(more);
    (snapshot, diags)
}

/// The diagnostics at `path` (a suffix of the diagnostic's path).
fn at<'a>(diags: &'a [Diagnostic], path: &str) -> Vec<&'a Diagnostic> {
    diags
        .iter()
        .filter(|d| d.path.as_deref().is_some_and(|p| p.ends_with(path)))
        .collect()
}

fn assert_reported(diags: &[Diagnostic], path: &str, what: &str) {
    let found = at(diags, path);
    assert!(
        found.iter().any(|d| d.code == NOT_SUPPORTED
            && d.level == Level::Warning
            && d.message.contains(what)
            && d.message.contains("not supported")),
        "{path}: no SLC0006 saying {what:?} in {diags:#?}"
    );
}

#[test]
fn traffic_policy_fields_left_out_are_reported() {
    for (policy, path, what) in [
        (
            "{connectionPool: {http: {useClientProtocol: true}}}",
            "connectionPool.http.useClientProtocol",
            "using the client's HTTP version upstream",
        ),
        (
            "{connectionPool: {http: {maxConcurrentStreams: 10}}}",
            "connectionPool.http.maxConcurrentStreams",
            "a limit of concurrent HTTP/2 streams",
        ),
        (
            "{outlierDetection: {consecutiveErrors: 3}}",
            "outlierDetection.consecutiveErrors",
            "the deprecated consecutiveErrors",
        ),
        (
            "{retryBudget: {percent: 20, minRetryConcurrency: 3}}",
            "trafficPolicy.retryBudget",
            "a retry budget",
        ),
    ] {
        let (s, d) = compile_with("", policy);
        assert_reported(&d, path, what);
        assert!(s.cluster(CLUSTER).is_some(), "the rest still applies");
    }
}

#[test]
fn connection_pool_fields_run_are_lowered_without_a_report() {
    let policy = "{connectionPool: {tcp: {maxConnections: 3, connectTimeout: 0.25s, idleTimeout: 20s}, http: {http1MaxPendingRequests: 4, http2MaxRequests: 5, maxRequestsPerConnection: 6, maxRetries: 7, idleTimeout: 30s, h2UpgradePolicy: UPGRADE}}}";
    let (s, d) = compile_with("", policy);
    let reported: Vec<_> = d
        .iter()
        .filter(|d| d.code == NOT_SUPPORTED || d.level == Level::Error)
        .collect();
    assert!(reported.is_empty(), "{reported:#?}");
    let c = s.cluster(CLUSTER).expect("cluster");
    assert_eq!(c.connect_timeout, Duration::from_millis(250));
    assert_eq!(c.limits.max_connections, Some(3));
    assert_eq!(c.limits.max_pending_requests, Some(4));
    assert_eq!(c.limits.max_requests, Some(5));
    assert_eq!(c.limits.max_requests_per_connection, Some(6));
    assert_eq!(c.limits.max_retries, Some(7));
    assert_eq!(
        c.limits.idle_timeout,
        Some(Duration::from_secs(30)),
        "http.idleTimeout wins over tcp.idleTimeout, as in Istio"
    );
    assert!(c.http2);
}

#[test]
fn retry_and_fault_fields_left_out_are_reported() {
    for (rule, path, what) in [
        (
            "retries: {attempts: 2, backoff: 1s}",
            "retries.backoff",
            "a retry backoff interval",
        ),
        (
            "retries: {attempts: 2, retryRemoteLocalities: true}",
            "retries.retryRemoteLocalities",
            "retrying in other localities",
        ),
        (
            "retries: {attempts: 2, retryIgnorePreviousHosts: false}",
            "retries.retryIgnorePreviousHosts",
            "retrying on hosts already tried",
        ),
        (
            "fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 10}}}",
            "fault.abort",
            "aborting with a gRPC status",
        ),
        // Istio's webhook rejects the next two (sluice's `validate` too); the compiler still
        // says what it leaves out.
        (
            "fault: {abort: {http2Error: REFUSED_STREAM, percentage: {value: 10}}}",
            "fault.abort",
            "aborting with an HTTP/2 error",
        ),
        (
            "fault: {delay: {exponentialDelay: 1s, percentage: {value: 10}}}",
            "fault.delay.exponentialDelay",
            "an exponential delay",
        ),
    ] {
        let (_, d) = compile_with(rule, "");
        assert_reported(&d, path, what);
    }
}

#[test]
fn retry_timeout_and_fault_fields_run_are_lowered_without_a_report() {
    let (_, d) = compile_with(
        "timeout: 3s, retries: {attempts: 3, perTryTimeout: 1s, retryOn: \"5xx,reset,connect-failure,refused-stream,retriable-4xx,cancelled,unavailable,409\", retryIgnorePreviousHosts: true}, fault: {delay: {fixedDelay: 1s, percentage: {value: 5}}, abort: {httpStatus: 503, percentage: {value: 5}}}",
        "",
    );
    let reported: Vec<_> = d
        .iter()
        .filter(|d| d.code == NOT_SUPPORTED || d.level == Level::Error)
        .collect();
    assert!(reported.is_empty(), "{reported:#?}");
}
