//! Resilience settings written as Istio YAML, compiled by `sluice-compile` and enforced by the
//! proxy against real upstream sockets on loopback: DestinationRule `connectionPool` (circuit
//! breakers, connect and idle timeouts, requests per connection, HTTP/2 upgrade),
//! VirtualService `retries`, `timeout` and `fault` — with Envoy's response flags and Envoy's
//! stat names. `docs/resilience.md` maps every field to the test that proves it.
//!
//! Time is only bounded from above, generously ([`PROMPT`]), except where a delay is the
//! feature (fault `fixedDelay`, idle timeouts), which is checked from below.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sluice_compile::lower::codes::NOT_SUPPORTED;
use sluice_test_support::TcpUpstream;
use sluice_test_support::client::{Reply, http_get, http_request};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const PORT: u16 = 8080;
const HOST: &str = "api.test";
const CLUSTER: &str = r#"cluster_name="outbound|80||api.test""#;
/// A generous bound for what must happen "at once" (well below Istio's 10 s default connect
/// timeout, the longest a pending request waits).
const PROMPT: Duration = Duration::from_secs(5);

const RETRY: &str = "envoy_cluster_upstream_rq_retry_total";
const RETRY_OVERFLOW: &str = "envoy_cluster_upstream_rq_retry_overflow_total";
const PENDING_OVERFLOW: &str = "envoy_cluster_upstream_rq_pending_overflow_total";
const CX_OVERFLOW: &str = "envoy_cluster_upstream_cx_overflow_total";
const RQ_TIMEOUT: &str = "envoy_cluster_upstream_rq_timeout_total";
const PER_TRY_TIMEOUT: &str = "envoy_cluster_upstream_rq_per_try_timeout_total";
const FAULT_PREFIX: &str = r#"stat_prefix="outbound_0.0.0.0_8080""#;

// ---------------------------------------------------------------------------------------------
// The upstream stand-in.

/// An HTTP/1.1 and h2c server whose answer depends on the first segment of the path:
/// - `/hold/…` waits until [`Upstream::release`], then 200;
/// - `/flaky/…` answers 503 to every third request for that exact path (the 3rd, 6th, …);
/// - `/fail/…` answers 503;
/// - `/fail-then-hold/…` answers 503 to the first request for that path, then as `/hold`;
/// - `/hang-then-ok/…` holds the first request for that path, answers later ones at once;
/// - `/slow-body/…` answers 200 and the first bytes of its body at once, the rest on release;
/// - anything else answers 200 (everything answers 503 when started with `failing`).
///
/// Responses carry `x-upstream-version`, the HTTP version the request arrived in.
struct Upstream {
    addr: SocketAddr,
    state: Arc<UpState>,
    task: tokio::task::JoinHandle<()>,
}

struct UpState {
    failing: bool,
    requests: AtomicU64,
    connections: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    per_path: Mutex<HashMap<String, u64>>,
    /// `true` once released: held requests are answered.
    gate: watch::Sender<bool>,
}

/// Counts a request out of `in_flight` when its handler ends.
struct Leave(Arc<UpState>);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, SeqCst);
    }
}

impl UpState {
    async fn wait_open(&self) {
        let mut rx = self.gate.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(
    state: Arc<UpState>,
    req: Request<Incoming>,
) -> Result<Response<UpBody>, Infallible> {
    state.requests.fetch_add(1, SeqCst);
    let now = state.in_flight.fetch_add(1, SeqCst) + 1;
    state.max_in_flight.fetch_max(now, SeqCst);
    let _leave = Leave(state.clone());
    let version = format!("{:?}", req.version());
    let path = req.uri().path().to_owned();
    let seen = {
        let mut map = state.per_path.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(path.clone()).or_insert(0);
        *n += 1;
        *n - 1
    };
    let _ = req.into_body().collect().await;
    let kind = path.trim_start_matches('/').split('/').next().unwrap_or("");
    if kind == "slow-body" {
        let st = state.clone();
        let frames = futures_util::stream::unfold(0, move |step| {
            let st = st.clone();
            async move {
                match step {
                    0 => Some((Ok(Frame::data(Bytes::from_static(b"start "))), 1)),
                    1 => {
                        st.wait_open().await;
                        Some((Ok(Frame::data(Bytes::from_static(b"end"))), 2))
                    }
                    _ => None,
                }
            }
        });
        return Ok(Response::new(StreamBody::new(frames).boxed()));
    }
    let status = match kind {
        _ if state.failing => 503,
        "hold" => {
            state.wait_open().await;
            200
        }
        "flaky" if seen % 3 == 2 => 503,
        "fail" => 503,
        "fail-then-hold" if seen == 0 => 503,
        "fail-then-hold" => {
            state.wait_open().await;
            200
        }
        "hang-then-ok" if seen == 0 => {
            state.wait_open().await;
            200
        }
        _ => 200,
    };
    Ok(Response::builder()
        .status(status)
        .header("x-upstream-version", version)
        .body(Full::new(Bytes::from(status.to_string())).boxed())
        .expect("response"))
}

impl Upstream {
    async fn start() -> Upstream {
        Upstream::start_with(false).await
    }

    async fn start_with(failing: bool) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (gate, _) = watch::channel(false);
        let state = Arc::new(UpState {
            failing,
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            per_path: Mutex::new(HashMap::new()),
            gate,
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                st.connections.fetch_add(1, SeqCst);
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(st.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Upstream { addr, state, task }
    }

    fn release(&self) {
        self.state.gate.send_replace(true);
    }

    fn requests(&self) -> u64 {
        self.state.requests.load(SeqCst)
    }

    fn connections(&self) -> u64 {
        self.state.connections.load(SeqCst)
    }

    fn in_flight(&self) -> u64 {
        self.state.in_flight.load(SeqCst)
    }

    fn max_in_flight(&self) -> u64 {
        self.state.max_in_flight.load(SeqCst)
    }

    /// Requests for exactly `path`.
    fn seen(&self, path: &str) -> u64 {
        let map = self
            .state
            .per_path
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.get(path).copied().unwrap_or(0)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.release();
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Istio YAML and the gateway.

/// One VirtualService HTTP rule routing to [`HOST`]: `fields` are more flow-mapping entries
/// (`match`, `retries`, `timeout`, `fault`), or empty.
fn rule(fields: &str) -> String {
    route_rule(HOST, fields)
}

fn istio(protocol: &str, endpoints: &[SocketAddr], rules: &str, policy: &str) -> String {
    one_host_yaml(PORT, HOST, protocol, endpoints, rules, policy)
}

/// Compiles `yaml` for the gateway — no errors, and nothing reported as not supported: every
/// field these tests use is enforced — and starts a proxy running it.
async fn gateway(yaml: &str) -> Running {
    let (snapshot, diags) = compile_gateway(yaml);
    let unsupported: Vec<_> = diags.iter().filter(|d| d.code == NOT_SUPPORTED).collect();
    assert!(unsupported.is_empty(), "{unsupported:#?}");
    start_snapshot(&snapshot).await
}

async fn get(gw: &Running, path: &str) -> Reply {
    http_get(gw.addr(PORT), HOST, path).await.expect("request")
}

/// [`get`], failing rather than panicking when the exchange breaks off.
async fn get_raw(gw: &Running, path: &str) -> Result<Reply, String> {
    http_get(gw.addr(PORT), HOST, path)
        .await
        .map_err(|e| format!("{e:#}"))
}

/// A request running in the background.
fn spawn_get(gw: &Running, path: &str) -> tokio::task::JoinHandle<Reply> {
    let (addr, path) = (gw.addr(PORT), path.to_owned());
    tokio::spawn(async move { http_get(addr, HOST, &path).await.expect("request") })
}

/// Polls `done` every 10 ms until it holds or [`PROMPT`] has passed; the caller asserts.
async fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PROMPT;
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn version(reply: &Reply) -> &str {
    reply
        .1
        .get("x-upstream-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

// ---------------------------------------------------------------------------------------------
// connectionPool.

/// `tcp.maxConnections: 1` + `http.http1MaxPendingRequests: 1`: with one request in flight
/// (held by the upstream) and one pending, every further concurrent request is refused at
/// once — 503 `UO`, `upstream_rq_pending_overflow` — and none is queued past the limit or
/// reaches the upstream while the held one lasts. After the release everything flows again,
/// over the one connection.
#[tokio::test]
async fn http1_max_connections_and_pending_requests_overflow_at_once() {
    let up = Upstream::start().await;
    let gw = gateway(&istio(
        "HTTP",
        &[up.addr],
        &rule(""),
        "{connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}}",
    ))
    .await;
    let held = spawn_get(&gw, "/hold/a");
    wait_until(|| up.in_flight() == 1).await;
    assert_eq!(up.in_flight(), 1, "the held request reached the upstream");

    let started = Instant::now();
    let others: Vec<_> = (0..4).map(|i| spawn_get(&gw, &format!("/q/{i}"))).collect();
    // One of the four waits for the connection; the other three overflow.
    gw.wait_lines(&[" 503 UO upstream_overflow "], 3).await;
    assert!(started.elapsed() < PROMPT, "{:?}", started.elapsed());
    assert!(
        !held.is_finished(),
        "refused while the held request is in flight"
    );
    assert_eq!(up.requests(), 1, "nothing went past the limit");
    assert_eq!(gw.metric(PENDING_OVERFLOW, CLUSTER), 3);
    assert!(gw.metric(CX_OVERFLOW, CLUSTER) >= 4, "{}", gw.metrics());

    up.release();
    assert_eq!(held.await.expect("join").0, 200);
    let mut codes = Vec::new();
    for t in others {
        codes.push(t.await.expect("join").0);
    }
    codes.sort_unstable();
    assert_eq!(
        codes,
        [200, 503, 503, 503],
        "the pending request was served"
    );
    for i in 0..10 {
        assert_eq!(get(&gw, &format!("/after/{i}")).await.0, 200);
    }
    assert_eq!(gw.count_lines(&[" 503 UO "]), 3);
    assert_eq!(gw.metric(PENDING_OVERFLOW, CLUSTER), 3);
    assert_eq!(up.max_in_flight(), 1, "never two requests at once");
    assert_eq!(up.connections(), 1, "never a second connection");
}

/// `http.h2UpgradePolicy: UPGRADE` makes the gateway speak HTTP/2 (h2c) upstream, and
/// `http.http2MaxRequests: 1` then bounds the requests in flight on the shared connection:
/// the others are refused at once (503 `UO`, no pending queue for this limit).
#[tokio::test]
async fn http2_max_requests_overflow_at_once() {
    let up = Upstream::start().await;
    let gw = gateway(&istio(
        "HTTP",
        &[up.addr],
        &rule(""),
        "{connectionPool: {http: {http2MaxRequests: 1, h2UpgradePolicy: UPGRADE}}}",
    ))
    .await;
    let held = spawn_get(&gw, "/hold/a");
    wait_until(|| up.in_flight() == 1).await;
    assert_eq!(up.in_flight(), 1);

    let started = Instant::now();
    let others: Vec<_> = (0..3).map(|i| spawn_get(&gw, &format!("/q/{i}"))).collect();
    for t in others {
        assert_eq!(t.await.expect("join").0, 503);
    }
    assert!(started.elapsed() < PROMPT, "{:?}", started.elapsed());
    assert!(!held.is_finished());
    gw.wait_lines(&[" 503 UO upstream_overflow "], 3).await;
    assert_eq!(gw.metric(PENDING_OVERFLOW, CLUSTER), 3);
    assert_eq!(
        gw.metric(CX_OVERFLOW, CLUSTER),
        0,
        "no connection was wanted"
    );
    assert_eq!(up.requests(), 1);

    up.release();
    let reply = held.await.expect("join");
    assert_eq!((reply.0, version(&reply)), (200, "HTTP/2.0"));
    for i in 0..5 {
        let reply = get(&gw, &format!("/after/{i}")).await;
        assert_eq!((reply.0, version(&reply)), (200, "HTTP/2.0"));
    }
    assert_eq!(up.max_in_flight(), 1);
    assert_eq!(up.connections(), 1, "one shared HTTP/2 connection");
}

/// `http.maxRequestsPerConnection` retires a connection after that many requests (HTTP/1.1
/// and HTTP/2), and `http.idleTimeout` one left unused that long (both protocols).
#[tokio::test]
async fn requests_per_connection_and_idle_timeout_retire_connections() {
    for (policy, h2, n, want) in [
        (
            "{connectionPool: {http: {maxRequestsPerConnection: 1}}}",
            false,
            4,
            4,
        ),
        (
            "{connectionPool: {http: {maxRequestsPerConnection: 2, h2UpgradePolicy: UPGRADE}}}",
            true,
            6,
            3,
        ),
        ("{}", false, 4, 1),
        (
            "{connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}",
            true,
            4,
            1,
        ),
    ] {
        let up = Upstream::start().await;
        let gw = gateway(&istio("HTTP", &[up.addr], &rule(""), policy)).await;
        for i in 0..n {
            let reply = get(&gw, &format!("/r/{i}")).await;
            assert_eq!(reply.0, 200);
            assert_eq!(version(&reply) == "HTTP/2.0", h2, "{policy}");
        }
        assert_eq!(up.connections(), want, "{policy}: {n} requests");
    }
    for policy in [
        "{connectionPool: {http: {idleTimeout: 0.5s}}}",
        "{connectionPool: {tcp: {idleTimeout: 0.5s}}}",
        "{connectionPool: {http: {idleTimeout: 0.5s, h2UpgradePolicy: UPGRADE}}}",
    ] {
        let up = Upstream::start().await;
        let gw = gateway(&istio("HTTP", &[up.addr], &rule(""), policy)).await;
        assert_eq!(get(&gw, "/one").await.0, 200);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(get(&gw, "/two").await.0, 200);
        assert_eq!(
            up.connections(),
            2,
            "{policy}: a connection idle past the timeout is not reused"
        );
    }
}

/// An idle pooled HTTP/1.1 connection that its upstream closes is released by the gateway
/// without waiting for a request to find it closed, or for the idle timeout (300 s by
/// default): its slot in `upstream_cx_active` frees and its socket closes. The next request
/// goes on a new connection, unharmed.
#[tokio::test]
async fn a_pooled_connection_closed_by_its_upstream_is_released_while_idle() {
    let listener = TcpListener::bind((sluice_test_support::free_loopback_addr(), 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicU64::new(0));
    let seen = accepted.clone();
    let server = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            seen.fetch_add(1, SeqCst);
            tokio::spawn(async move {
                if read_request_head(&mut tcp).await.is_none() {
                    return;
                }
                let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                let _ = tokio::io::AsyncWriteExt::write_all(&mut tcp, reply).await;
                // Keep-alive was offered; the server closes the connection a moment later.
                tokio::time::sleep(Duration::from_millis(100)).await;
            });
        }
    });
    let gw = gateway(&istio("HTTP", &[addr], &rule(""), "{}")).await;
    const ACTIVE: &str = "envoy_cluster_upstream_cx_active";
    assert_eq!(get(&gw, "/one").await.0, 200);
    wait_until(|| gw.metric(ACTIVE, CLUSTER) == 0).await;
    assert_eq!(
        gw.metric(ACTIVE, CLUSTER),
        0,
        "the closed connection is released while idle"
    );
    let close_wait = std::process::Command::new("ss")
        .args(["-tn", "state", "close-wait"])
        .arg(format!("dport = :{}", addr.port()))
        .output()
        .expect("ss (iproute2)");
    let lines = String::from_utf8_lossy(&close_wait.stdout).lines().count();
    assert!(lines <= 1, "no socket left half-closed: {lines} lines");
    assert_eq!(get(&gw, "/two").await.0, 200);
    assert_eq!(
        accepted.load(SeqCst),
        2,
        "the second request on a new connection"
    );
    gw.wait_lines(&[" 200 "], 2).await;
    server.abort();
}

/// `tcp.maxConnectionDuration`: a connection older than this takes no new request (HTTP/1.1
/// and HTTP/2), though it is neither idle past its timeout nor at its request cap.
#[tokio::test]
async fn max_connection_duration_retires_old_connections() {
    for policy in [
        "{connectionPool: {tcp: {maxConnectionDuration: 0.4s}}}",
        "{connectionPool: {tcp: {maxConnectionDuration: 0.4s}, http: {h2UpgradePolicy: UPGRADE}}}",
    ] {
        let up = Upstream::start().await;
        let gw = gateway(&istio("HTTP", &[up.addr], &rule(""), policy)).await;
        assert_eq!(get(&gw, "/one").await.0, 200);
        assert_eq!(get(&gw, "/two").await.0, 200);
        assert_eq!(up.connections(), 1, "{policy}: reused while young");
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(get(&gw, "/three").await.0, 200);
        assert_eq!(
            up.connections(),
            2,
            "{policy}: an old connection is not reused"
        );
    }
}

/// `tcp.tcpKeepalive`: the gateway's upstream sockets carry SO_KEEPALIVE, as `ss` shows for
/// the pooled connection (`timer:(keepalive,…)`).
#[tokio::test]
async fn tcp_keepalive_is_set_on_upstream_connections() {
    let up = Upstream::start().await;
    let gw = gateway(&istio(
        "HTTP",
        &[up.addr],
        &rule(""),
        "{connectionPool: {tcp: {tcpKeepalive: {time: 45s, interval: 5s, probes: 3}}}}",
    ))
    .await;
    assert_eq!(get(&gw, "/one").await.0, 200);
    let out = std::process::Command::new("ss")
        .args(["-tno", "state", "established"])
        .arg(format!("dport = :{}", up.addr.port()))
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.contains(&up.addr.to_string()))
        .unwrap_or_else(|| panic!("no connection to {} in:\n{text}", up.addr));
    assert!(row.contains("timer:(keepalive"), "{row}");
}

/// `tcp.connectTimeout` bounds the dial, TLS handshake included: an upstream that accepts and
/// never answers the ClientHello fails the request (503 `UF`) after 0.3 s, not Istio's 10 s.
#[tokio::test]
async fn connect_timeout_bounds_the_dial() {
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = silent.local_addr().expect("addr");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let gw = gateway(&istio(
        "HTTP",
        &[addr],
        &rule("retries: {attempts: 0}"),
        "{connectionPool: {tcp: {connectTimeout: 0.3s}}, tls: {mode: SIMPLE, insecureSkipVerify: true}}",
    ))
    .await;
    let started = Instant::now();
    let (status, _, body) = get(&gw, "/").await;
    assert_eq!(status, 503, "{body}");
    assert!(started.elapsed() < PROMPT, "{:?}", started.elapsed());
    let line = gw.log_line(&[" 503 UF "]).await;
    assert!(line.contains("delayed connect error"), "{line}");
    holder.abort();
}

/// For TCP routes `tcp.maxConnections` is Envoy's TCP proxy check: a connection over the limit
/// is closed at once (`UO`, `upstream_cx_overflow`), not queued; once the first one ends,
/// the next gets through.
#[tokio::test]
async fn tcp_max_connections_refuse_at_once() {
    let db = TcpUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)), "db")
        .await
        .expect("tcp upstream");
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 9000, name: tcp, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: istio-system}}
spec:
  hosts: [db.test]
  ports: [{{number: 9000, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: "{ip}", ports: {{tcp: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [gw]
  tcp: [{{match: [{{port: 9000}}], route: [{{destination: {{host: db.test, port: {{number: 9000}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db, namespace: istio-system}}
spec:
  host: db.test
  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: 1}}}}}}
"#,
        ip = db.addr().ip(),
        port = db.addr().port()
    );
    let gw = gateway(&yaml).await;
    let banner = |mut tcp: TcpStream| async move {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(PROMPT, tcp.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap_or(0);
        (buf[..n].to_vec(), tcp)
    };
    let first = TcpStream::connect(gw.addr(9000)).await.expect("connect");
    let (got, first) = banner(first).await;
    assert_eq!(got, b"db\n");
    let started = Instant::now();
    let second = TcpStream::connect(gw.addr(9000)).await.expect("connect");
    let (got, _) = banner(second).await;
    assert!(got.is_empty(), "closed, not served: {got:?}");
    assert!(started.elapsed() < PROMPT);
    gw.log_line(&[" UO ", "outbound|9000||db.test"]).await;
    assert_eq!(
        gw.metric(CX_OVERFLOW, r#"cluster_name="outbound|9000||db.test""#),
        1
    );
    assert_eq!(db.connections(), 1);
    drop(first);
    // The first connection's slot frees when its copy ends.
    let deadline = Instant::now() + PROMPT;
    loop {
        let tcp = TcpStream::connect(gw.addr(9000)).await.expect("connect");
        if banner(tcp).await.0 == b"db\n" {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// retries and timeouts.

/// `retries: {attempts: 3, retryOn: 5xx}` and `{…, retryOn: gateway-error,connect-failure,
/// refused-stream}` against an upstream failing exactly one request in three: every failure
/// is retried (`upstream_rq_retry`), and the clients see (at least 99 % — here all) 200s.
#[tokio::test]
async fn retries_ride_over_an_upstream_failing_one_in_three() {
    let up = Upstream::start().await;
    let rules = [
        rule("match: [{uri: {prefix: /flaky/5xx}}], retries: {attempts: 3, retryOn: 5xx}"),
        rule(
            "match: [{uri: {prefix: /flaky/gw}}], retries: {attempts: 3, retryOn: \"gateway-error,connect-failure,refused-stream\"}",
        ),
    ]
    .concat();
    let gw = gateway(&istio("HTTP", &[up.addr], &rules, "")).await;
    const N: u64 = 150;
    for path in ["/flaky/5xx", "/flaky/gw"] {
        let before = (up.requests(), gw.metric(RETRY, CLUSTER));
        let mut ok = 0u64;
        for _ in 0..N {
            if get(&gw, path).await.0 == 200 {
                ok += 1;
            }
        }
        assert!(ok * 100 >= N * 99, "{path}: {ok} of {N} succeeded");
        let sent = up.requests() - before.0;
        let failed = up.seen(path) / 3;
        assert_eq!(up.seen(path), sent, "{path}");
        assert!(failed >= N / 3 - 1, "{path}: the upstream failed {failed}");
        assert_eq!(sent, N + failed, "{path}: one retry per failure");
        assert_eq!(gw.metric(RETRY, CLUSTER) - before.1, failed, "{path}");
    }
    assert_eq!(gw.count_lines(&["URX"]), 0);
    assert_eq!(gw.metric(RETRY_OVERFLOW, CLUSTER), 0);
}

/// DestinationRule `http.maxRetries` is Envoy's retry circuit breaker: with one retry in
/// flight (held by the upstream), another request's retry overflows — it is not made,
/// `upstream_rq_retry_overflow` counts it, and the upstream's own 503 is the answer, flagged
/// `UO`. Once the retry in flight ends, `attempts` applies in full again (1 + 3 tries, `URX`).
#[tokio::test]
async fn max_retries_bounds_retries_in_flight() {
    let up = Upstream::start().await;
    let gw = gateway(&istio(
        "HTTP",
        &[up.addr],
        &rule("retries: {attempts: 3, retryOn: 5xx}"),
        "{connectionPool: {http: {maxRetries: 1}}}",
    ))
    .await;
    let retrying = spawn_get(&gw, "/fail-then-hold/a");
    wait_until(|| up.seen("/fail-then-hold/a") == 2 && up.in_flight() == 1).await;
    assert_eq!(up.seen("/fail-then-hold/a"), 2, "the retry is in flight");
    assert_eq!(gw.metric(RETRY, CLUSTER), 1);

    let started = Instant::now();
    let (status, _, body) = get(&gw, "/fail/b").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "503"),
        "the upstream's answer"
    );
    assert!(started.elapsed() < PROMPT);
    assert_eq!(up.seen("/fail/b"), 1, "not retried");
    assert_eq!(gw.metric(RETRY_OVERFLOW, CLUSTER), 1);
    assert_eq!(gw.metric(RETRY, CLUSTER), 1);
    gw.log_line(&["\"GET /fail/b HTTP/1.1\" 503 UO via_upstream "])
        .await;
    assert!(!retrying.is_finished());

    up.release();
    assert_eq!(retrying.await.expect("join").0, 200);
    let (status, _, _) = get(&gw, "/fail/c").await;
    assert_eq!(status, 503);
    assert_eq!(up.seen("/fail/c"), 4, "one try and three retries");
    assert_eq!(gw.metric(RETRY, CLUSTER), 4);
    assert_eq!(gw.metric(RETRY_OVERFLOW, CLUSTER), 1);
    gw.log_line(&["\"GET /fail/c HTTP/1.1\" 503 URX via_upstream "])
        .await;
}

/// `perTryTimeout` cuts a hung attempt and retries it (`upstream_rq_per_try_timeout`); when
/// every try hangs the answer is 504 `UT,URX`; the route `timeout` bounds all tries together
/// (504 `UT`, `upstream_rq_timeout`) however many attempts are left.
#[tokio::test]
async fn per_try_and_route_timeouts() {
    let up = Upstream::start().await;
    let rules = [
        rule(
            "match: [{uri: {prefix: /hang-then-ok/}}], retries: {attempts: 2, perTryTimeout: 0.2s, retryOn: 5xx}",
        ),
        rule(
            "match: [{uri: {prefix: /hold/per-try}}], retries: {attempts: 1, perTryTimeout: 0.2s, retryOn: 5xx}",
        ),
        rule(
            "match: [{uri: {prefix: /hold/route}}], timeout: 0.6s, retries: {attempts: 20, perTryTimeout: 0.25s, retryOn: 5xx}",
        ),
        rule("match: [{uri: {prefix: /slow-body/}}], timeout: 0.5s"),
    ]
    .concat();
    let gw = gateway(&istio("HTTP", &[up.addr], &rules, "")).await;

    let started = Instant::now();
    assert_eq!(get(&gw, "/hang-then-ok/a").await.0, 200);
    assert!(started.elapsed() < PROMPT);
    assert_eq!(up.seen("/hang-then-ok/a"), 2, "the hung try was retried");
    assert_eq!(gw.metric(PER_TRY_TIMEOUT, CLUSTER), 1);
    assert_eq!(gw.metric(RETRY, CLUSTER), 1);

    let started = Instant::now();
    let (status, _, body) = get(&gw, "/hold/per-try").await;
    assert_eq!((status, body.as_str()), (504, "upstream request timeout"));
    assert!(started.elapsed() < PROMPT);
    assert_eq!(up.seen("/hold/per-try"), 2);
    assert_eq!(gw.metric(PER_TRY_TIMEOUT, CLUSTER), 3);
    gw.log_line(&["\"GET /hold/per-try HTTP/1.1\" 504 UT,URX "])
        .await;

    let started = Instant::now();
    let (status, _, body) = get(&gw, "/hold/route").await;
    assert_eq!((status, body.as_str()), (504, "upstream request timeout"));
    assert!(started.elapsed() < PROMPT);
    assert!(
        up.seen("/hold/route") < 21,
        "cut before the attempts ran out"
    );
    assert_eq!(gw.metric(RQ_TIMEOUT, CLUSTER), 1);
    gw.log_line(&["\"GET /hold/route HTTP/1.1\" 504 UT response_timeout "])
        .await;

    // The route timeout runs until the response is complete: a body still streaming when it
    // fires is cut (the client sees the response break off), as Envoy resets the stream.
    let started = Instant::now();
    let cut = tokio::time::timeout(PROMPT, get_raw(&gw, "/slow-body/a"))
        .await
        .expect("cut before the upstream finished");
    assert!(cut.is_err(), "{cut:?}");
    assert!(started.elapsed() < PROMPT);
    assert_eq!(gw.metric(RQ_TIMEOUT, CLUSTER), 2);
    up.release();
}

/// A request whose body is buffered (up to 64 KiB with a length) is retried; a larger one is
/// streamed to the upstream once and not retried — Envoy too stops retrying a request whose
/// body outgrew its buffer.
#[tokio::test]
async fn streamed_bodies_are_not_retried() {
    let up = Upstream::start().await;
    let gw = gateway(&istio(
        "HTTP",
        &[up.addr],
        &rule("retries: {attempts: 3, retryOn: 5xx}"),
        "",
    ))
    .await;
    let post = |path: &str, size: usize| {
        Request::post(path)
            .header("host", HOST)
            .body("x".repeat(size))
            .expect("request")
    };
    let (status, _, _) = http_request(gw.addr(PORT), post("/fail/small", 1024))
        .await
        .expect("small");
    assert_eq!(status, 503);
    assert_eq!(
        up.seen("/fail/small"),
        4,
        "buffered: one try and three retries"
    );
    assert_eq!(gw.metric(RETRY, CLUSTER), 3);

    let (status, _, _) = http_request(gw.addr(PORT), post("/fail/big", 100 * 1024))
        .await
        .expect("big");
    assert_eq!(status, 503);
    assert_eq!(up.seen("/fail/big"), 1, "streamed: sent once");
    assert_eq!(gw.metric(RETRY, CLUSTER), 3);
    let line = gw.log_line(&["/fail/big"]).await;
    assert!(line.contains(" 503 - via_upstream "), "{line}");
}

/// A retry goes to an endpoint not tried yet (Istio's `previous_hosts` predicate, on unless
/// `retryIgnorePreviousHosts: false`, with 5 re-picks). Two endpoints picked at RANDOM, one
/// always failing (503, or refusing connections), one retry: a request fails only if the
/// first pick and all six picks of its retry hit the bad endpoint, p = 1/2 · (1/2)^6 = 1/128.
/// Without the predicate p = 1/4. With n requests the test allows n/10 failures: for n = 100,
/// P(Binomial(100, 1/128) > 10) < 1e-9, while P(Binomial(100, 1/4) ≤ 10) < 1e-4.
#[tokio::test]
async fn retries_avoid_the_endpoints_already_tried() {
    let good = Upstream::start().await;
    let bad = Upstream::start_with(true).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    for (bad_addr, retry_on) in [(bad.addr, "5xx"), (closed, "connect-failure")] {
        let gw = gateway(&istio(
            "HTTP",
            &[good.addr, bad_addr],
            &rule(&format!("retries: {{attempts: 1, retryOn: {retry_on}}}")),
            "{loadBalancer: {simple: RANDOM}}",
        ))
        .await;
        const N: usize = 100;
        let mut failed = 0;
        for i in 0..N {
            if get(&gw, &format!("/p/{i}")).await.0 != 200 {
                failed += 1;
            }
        }
        assert!(failed <= N / 10, "{retry_on}: {failed} of {N} failed");
        assert!(
            gw.metric(RETRY, CLUSTER) >= 10,
            "{retry_on}: the bad endpoint was tried"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// fault.

/// `fault.abort {httpStatus: 503, percentage: 50}` over n = 400 requests: the aborted count
/// is Binomial(n, p = 0.5), mean n·p = 200, sd sqrt(n·p·(1−p)) = 10. The test accepts mean ±
/// 4.5 sd; a correct implementation falls outside with probability 2·Φ(−4.5) ≈ 6.8e-6.
/// Aborts carry flag `FI`, reach no upstream, and are counted in Envoy's
/// `fault.aborts_injected`. `fault.delay {fixedDelay: 0.2s, percentage: 100}` holds every
/// request at least 0.2 s (flag `DI`, `fault.delays_injected`).
#[tokio::test]
async fn faults_abort_and_delay() {
    let up = Upstream::start().await;
    let rules = [
        rule(
            "match: [{uri: {prefix: /abort}}], fault: {abort: {httpStatus: 503, percentage: {value: 50}}}",
        ),
        rule(
            "match: [{uri: {prefix: /delay}}], fault: {delay: {fixedDelay: 0.2s, percentage: {value: 100}}}",
        ),
    ]
    .concat();
    let gw = gateway(&istio("HTTP", &[up.addr], &rules, "")).await;

    const N: u64 = 400;
    const P: f64 = 0.5;
    const WORKERS: u64 = 8;
    let addr = gw.addr(PORT);
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            tokio::spawn(async move {
                let mut codes = Vec::new();
                for i in 0..N / WORKERS {
                    let path = format!("/abort/{w}/{i}");
                    codes.push(http_get(addr, HOST, &path).await.expect("request").0);
                }
                codes
            })
        })
        .collect();
    let mut aborted = 0u64;
    for w in workers {
        for code in w.await.expect("join") {
            match code {
                503 => aborted += 1,
                200 => {}
                other => panic!("status {other}"),
            }
        }
    }
    let n = N as f64;
    let mean = n * P;
    let tolerance = 4.5 * (n * P * (1.0 - P)).sqrt();
    assert!(
        (aborted as f64 - mean).abs() <= tolerance,
        "{aborted} of {N} aborted, expected {mean} ± {tolerance}"
    );
    assert_eq!(
        up.requests(),
        N - aborted,
        "aborted requests reach no upstream"
    );
    gw.wait_lines(&[" 503 FI fault_filter_abort "], aborted as usize)
        .await;
    assert_eq!(gw.count_lines(&[" FI "]), aborted as usize);
    assert_eq!(
        gw.metric("envoy_http_fault_aborts_injected_total", FAULT_PREFIX),
        aborted
    );

    for i in 0..3 {
        let started = Instant::now();
        assert_eq!(get(&gw, &format!("/delay/{i}")).await.0, 200);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
    gw.wait_lines(&[" 200 DI via_upstream "], 3).await;
    assert_eq!(
        gw.metric("envoy_http_fault_delays_injected_total", FAULT_PREFIX),
        3
    );
}
