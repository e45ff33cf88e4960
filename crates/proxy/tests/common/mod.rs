//! Shared by the proxy's integration tests: start a `Proxy` in-process on a fresh loopback
//! address with a snapshot written as JSON, read its access log, and small snapshot builders.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use sluice_proxy::{Proxy, ProxyConfig};
use sluice_snapshot::Snapshot;
use sluice_test_support::{TempDir, free_loopback_addr};
use tokio::sync::{oneshot, watch};

pub struct Running {
    pub ip: IpAddr,
    pub dir: TempDir,
    pub log: PathBuf,
    pub snapshots: watch::Sender<Arc<Snapshot>>,
    pub registry: Arc<std::sync::Mutex<Registry>>,
    /// The snapshot new connections (and new requests) are served by.
    pub applied: watch::Receiver<Arc<Snapshot>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), sluice_proxy::Error>>>,
}

impl Running {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, port)
    }

    /// The access log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 5s) for `n` access-log lines containing every needle.
    pub async fn wait_lines(&self, needles: &[&str], n: usize) {
        for _ in 0..100 {
            let text = self.log_text();
            let found = text
                .lines()
                .filter(|l| needles.iter().all(|x| l.contains(x)))
                .count();
            if found >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "fewer than {n} access-log lines with {needles:?} in:\n{}",
            self.log_text()
        );
    }

    /// Waits (up to 5s) for an access-log line containing every needle; returns it.
    pub async fn log_line(&self, needles: &[&str]) -> String {
        for _ in 0..100 {
            let text = self.log_text();
            if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no access-log line with {needles:?} in:\n{}",
            self.log_text()
        );
    }

    pub fn metrics(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        text
    }

    /// The value of the series `name{labels}` (`labels` as printed, e.g.
    /// `cluster_name="outbound|80||a.test"`), 0 when it is absent.
    pub fn metric(&self, name: &str, labels: &str) -> u64 {
        let prefix = format!("{name}{{{labels}}} ");
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse().expect("metric value"))
    }

    /// How many access-log lines so far contain every needle.
    pub fn count_lines(&self, needles: &[&str]) -> usize {
        self.log_text()
            .lines()
            .filter(|l| needles.iter().all(|x| l.contains(x)))
            .count()
    }

    /// Publishes a new snapshot (the access log keeps pointing at this proxy's file).
    pub fn publish(&self, mut snapshot: Value) {
        snapshot["access_log"] = json!({"path": self.log.to_string_lossy(), "json": false});
        let snapshot: Snapshot = serde_json::from_value(snapshot).expect("snapshot json");
        self.snapshots.send_replace(Arc::new(snapshot));
    }

    /// Publishes `snapshot` and waits (up to 5s) until the proxy serves it.
    pub async fn publish_applied(&self, mut snapshot: Value) {
        snapshot["access_log"] = json!({"path": self.log.to_string_lossy(), "json": false});
        let snapshot: Arc<Snapshot> =
            Arc::new(serde_json::from_value(snapshot).expect("snapshot json"));
        self.snapshots.send_replace(snapshot.clone());
        let mut applied = self.applied.clone();
        tokio::time::timeout(
            Duration::from_secs(5),
            applied.wait_for(|s| Arc::ptr_eq(s, &snapshot)),
        )
        .await
        .expect("applied within 5s")
        .expect("proxy running");
    }

    /// Stops the proxy and waits for its drain.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let r = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("proxy stops in time");
            r.expect("join").expect("proxy run");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts a proxy on a fresh loopback address; `snapshot` gets an access log in a temp dir.
pub async fn start(snapshot: Value, dns: Option<SocketAddr>) -> Running {
    start_with(snapshot, |c| c.dns_server = dns).await
}

pub async fn start_with(mut snapshot: Value, tweak: impl FnOnce(&mut ProxyConfig)) -> Running {
    let ip = free_loopback_addr();
    let dir = TempDir::new("proxy");
    let log = dir.join("access.log");
    snapshot["access_log"] = json!({"path": log.to_string_lossy(), "json": false});
    let snapshot: Snapshot = serde_json::from_value(snapshot).expect("snapshot json");
    let (tx, rx) = watch::channel(Arc::new(snapshot));
    let mut config = ProxyConfig {
        bind: ip,
        tls_inspect_timeout: Duration::from_millis(1500),
        drain_timeout: Duration::from_secs(2),
        // The tests' upstreams live on loopback, which the IP guard denies by default; the
        // guard's own tests narrow this.
        allow_ranges: vec!["127.0.0.0/8".parse().expect("range")],
        ..ProxyConfig::default()
    };
    tweak(&mut config);
    let mut registry = Registry::default();
    let proxy = Proxy::new(config, rx, &mut registry).expect("proxy");
    let mut ready = proxy.ready();
    let applied = proxy.applied();
    let (shutdown, on_shutdown) = oneshot::channel::<()>();
    let task = tokio::spawn(proxy.run(async move {
        let _ = on_shutdown.await;
    }));
    tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r))
        .await
        .expect("proxy ready in time")
        .expect("ready channel");
    Running {
        ip,
        dir,
        log,
        snapshots: tx,
        registry: Arc::new(std::sync::Mutex::new(registry)),
        applied,
        shutdown: Some(shutdown),
        task: Some(task),
    }
}

/// A snapshot for the gateway with these listeners and clusters.
pub fn snapshot(listeners: Vec<Value>, clusters: Vec<Value>) -> Value {
    let clusters: serde_json::Map<String, Value> = clusters
        .into_iter()
        .map(|c| (c["name"].as_str().expect("cluster name").to_owned(), c))
        .collect();
    json!({
        "role": "gateway",
        "labels": {"istio": "egressgateway"},
        "listeners": listeners,
        "clusters": clusters,
        "outbound_policy": "REGISTRY_ONLY",
        "access_log": {"path": null, "json": false},
    })
}

pub fn listener(port: u16, chains: Vec<Value>) -> Value {
    json!({"name": format!("0.0.0.0_{port}"), "port": port, "chains": chains})
}

/// A TLS-passthrough chain for `sni` patterns, one TCP route to `cluster`.
pub fn passthrough_chain(name: &str, snis: &[&str], cluster: &str) -> Value {
    json!({
        "name": name,
        "match": {"transport": "tls", "server_names": snis},
        "app": {"tcp": {"routes": [{
            "name": name,
            "sni": snis,
            "clusters": [{"cluster": cluster, "weight": 100}],
        }]}},
    })
}

pub fn tcp_chain(name: &str, cluster: &str) -> Value {
    json!({
        "name": name,
        "match": {"transport": "plain"},
        "app": {"tcp": {"routes": [{
            "name": name,
            "clusters": [{"cluster": cluster, "weight": 100}],
        }]}},
    })
}

pub fn http_chain(port: u16, vhosts: Vec<Value>) -> Value {
    json!({
        "name": format!("http.{port}"),
        "match": {"transport": "plain"},
        "app": {"http": {"route_config": format!("http.{port}"), "virtual_hosts": vhosts}},
    })
}

pub fn vhost(domains: &[&str], routes: Vec<Value>) -> Value {
    json!({"name": format!("{}:80", domains[0]), "domains": domains, "routes": routes})
}

/// A route forwarding everything to `cluster`.
pub fn forward_route(name: &str, cluster: &str) -> Value {
    json!({
        "name": name,
        "match": {},
        "action": {"forward": {"clusters": [{"cluster": cluster, "weight": 100}]}},
    })
}

/// A cluster with `discovery`; `extra` fields are merged in.
pub fn cluster(name: &str, service: &str, port: u16, discovery: Value, extra: Value) -> Value {
    let mut c = json!({
        "name": name,
        "service": service,
        "port": port,
        "discovery": discovery,
        "connect_timeout": "1s",
        "lb": "ROUND_ROBIN",
        "limits": {},
    });
    if let (Some(obj), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    c
}

pub fn static_endpoints(addrs: &[SocketAddr]) -> Value {
    let eps: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"address": a.ip().to_string(), "port": a.port(), "weight": 1}))
        .collect();
    json!({"static": {"endpoints": eps}})
}

pub fn dns_discovery(host: &str) -> Value {
    json!({"dns": {"host": host, "round_robin": false}})
}

/// Parses an upstream stand-in's JSON description.
pub fn echo(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("upstream JSON ({e}): {body}"))
}

/// Reads an HTTP head (up to and including the blank line) byte by byte, so nothing after it
/// is consumed; panics when the peer closes first or is silent for 20 s.
pub async fn read_head(tcp: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut byte))
            .await
            .expect("an HTTP head in time")
            .expect("read");
        assert_eq!(n, 1, "closed before the end of the head: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A stand-in server's side of [`read_head`]: `None` when the peer closes before a whole head.
pub async fn read_request_head(tcp: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// One rule of a VirtualService's `http` list routing everything to `host` port 80, with
/// more `fields` of the rule (`name: api`, `retries: {…}`) in flow style.
pub fn route_rule(host: &str, fields: &str) -> String {
    let sep = if fields.is_empty() { "" } else { ", " };
    format!(
        "  - {{{fields}{sep}route: [{{destination: {{host: {host}, port: {{number: 80}}}}}}]}}\n"
    )
}

/// Istio YAML for one host at the gateway (`istio: egressgateway`, istio-system): an HTTP
/// server on `port` for `host`; a STATIC ServiceEntry registering `host` on port 80
/// (`protocol`) at `endpoints`; a VirtualService with the `http` `rules` ([`route_rule`]); a
/// DestinationRule with the `policy` (a flow mapping: its `trafficPolicy`) unless empty.
pub fn one_host_yaml(
    port: u16,
    host: &str,
    protocol: &str,
    endpoints: &[SocketAddr],
    rules: &str,
    policy: &str,
) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{address: \"{}\", ports: {{web: {}}}}}", a.ip(), a.port()))
        .collect();
    let mut yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: ["{host}"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: istio-system}}
spec:
  hosts: ["{host}"]
  ports: [{{number: 80, name: web, protocol: {protocol}}}]
  resolution: STATIC
  endpoints: [{eps}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api, namespace: istio-system}}
spec:
  hosts: ["{host}"]
  gateways: [gw]
  http:
{rules}"#,
        eps = eps.join(", ")
    );
    if !policy.is_empty() {
        yaml.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: istio-system}}\nspec:\n  host: {host}\n  trafficPolicy: {policy}\n"
        ));
    }
    yaml
}

/// Compiles Istio `yaml` for the gateway (`istio: egressgateway` in istio-system); a load
/// error or an Error-level finding fails the test. The other findings are returned.
pub fn compile_gateway(yaml: &str) -> (Snapshot, Vec<sluice_model::Diagnostic>) {
    let loaded = sluice_model::load_str("test.yaml", yaml);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    let (snapshot, diags) = sluice_compile::lower::compile(
        &loaded.resources,
        &sluice_compile::lower::CompileOptions::gateway(),
    );
    let errors: Vec<_> = diags
        .iter()
        .filter(|d| d.level == sluice_model::Level::Error)
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    (snapshot, diags)
}

/// Starts a proxy running `snapshot` (no DNS server).
pub async fn start_snapshot(snapshot: &Snapshot) -> Running {
    start(serde_json::to_value(snapshot).expect("snapshot json"), None).await
}
