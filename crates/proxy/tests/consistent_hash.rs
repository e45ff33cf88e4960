//! DestinationRule `loadBalancer.consistentHash`, end to end on loopback: Istio YAML compiled
//! by `sluice-compile`, served by the proxy, real upstreams that say which one answered.
//!
//! Envoy's behaviour checked here: a key (header, cookie, client IP, query parameter) keeps
//! landing on one endpoint while different keys spread over several; a cookie with a `ttl`
//! that the request lacks is generated and set on the response, and then sticks; an ejected
//! endpoint's keys move to others while every other key stays where it was (ring hash and
//! Maglev); TCP with `useSourceIp` hashes the client's address too.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use sluice_model::Level;
use sluice_test_support::{HttpUpstream, TcpUpstream, UpstreamOptions};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpSocket, TcpStream};

const PORT: u16 = 8080;
const TCP_PORT: u16 = 9000;
const HOST: &str = "sticky.example.com";
const TCP_HOST: &str = "db.example.com";
const ENDPOINTS: usize = 4;
const KEYS: usize = 24;
const RING: &str = "";
const MAGLEV: &str = ", maglev: {tableSize: 65537}";

/// A gateway routing `HOST` (HTTP on `PORT`) to `http` and `TCP_HOST` (TCP on `TCP_PORT`)
/// to `tcp`, with `load_balancer` (and `outlier`, if any) as the DestinationRules' policy.
fn config(
    http: &[SocketAddr],
    tcp: &[SocketAddr],
    load_balancer: &str,
    outlier: Option<&str>,
) -> String {
    let endpoints = |addrs: &[SocketAddr], port: &str| {
        addrs
            .iter()
            .map(|a| {
                format!(
                    "{{address: \"{}\", ports: {{{port}: {}}}}}",
                    a.ip(),
                    a.port()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let outlier = outlier
        .map(|o| format!("\n    outlierDetection: {o}"))
        .unwrap_or_default();
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: {PORT}, name: http, protocol: HTTP}}
    hosts: ["{HOST}"]
  - port: {{number: {TCP_PORT}, name: tcp, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: sticky, namespace: istio-system}}
spec:
  hosts: ["{HOST}"]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{http_endpoints}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: istio-system}}
spec:
  hosts: ["{TCP_HOST}"]
  ports: [{{number: 7000, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{tcp_endpoints}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: sticky, namespace: istio-system}}
spec:
  hosts: ["{HOST}"]
  gateways: [gw]
  http:
  - name: sticky
    route: [{{destination: {{host: "{HOST}", port: {{number: 80}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [gw]
  tcp:
  - match: [{{port: {TCP_PORT}}}]
    route: [{{destination: {{host: "{TCP_HOST}", port: {{number: 7000}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: sticky, namespace: istio-system}}
spec:
  host: "{HOST}"
  trafficPolicy:
    loadBalancer: {load_balancer}{outlier}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db, namespace: istio-system}}
spec:
  host: "{TCP_HOST}"
  trafficPolicy:
    loadBalancer: {load_balancer}
"#,
        http_endpoints = endpoints(http, "http"),
        tcp_endpoints = endpoints(tcp, "tcp"),
    )
}

struct Setup {
    gw: Running,
    http: Vec<HttpUpstream>,
    _tcp: Vec<TcpUpstream>,
}

/// `consistentHash: {<key>, <algorithm>}` (`key`: YAML of its hash key; `algorithm`: `RING`,
/// the default, or `MAGLEV`), over `ENDPOINTS` HTTP and TCP upstreams. Every HTTP upstream
/// answers `/fail` with a 500.
async fn setup(key: &str, algorithm: &str, outlier: Option<&str>) -> Setup {
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut http = Vec::new();
    let mut tcp = Vec::new();
    for i in 0..ENDPOINTS {
        let opts = UpstreamOptions::default().respond("/fail", 500, "broken");
        http.push(
            HttpUpstream::start_with(local, &format!("e{i}"), opts)
                .await
                .expect("http upstream"),
        );
        tcp.push(
            TcpUpstream::start(local, &format!("t{i}"))
                .await
                .expect("tcp upstream"),
        );
    }
    let yaml = config(
        &http.iter().map(HttpUpstream::addr).collect::<Vec<_>>(),
        &tcp.iter().map(TcpUpstream::addr).collect::<Vec<_>>(),
        &format!("{{consistentHash: {{{key}{algorithm}}}}}"),
        outlier,
    );
    let (snapshot, diags) = compile_gateway(&yaml);
    let findings: Vec<_> = diags
        .iter()
        .filter(|d| d.level != Level::Info && d.message.contains("consistent"))
        .collect();
    assert!(findings.is_empty(), "{findings:#?}");
    Setup {
        gw: start_snapshot(&snapshot).await,
        http,
        _tcp: tcp,
    }
}

/// A GET on a new connection from `source` (a loopback address; the kernel's choice when
/// `None`); status, headers, and the upstream that answered (`x-upstream`).
async fn get_from(
    gw: &Running,
    source: Option<IpAddr>,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, HeaderMap, String) {
    let addr = gw.addr(PORT);
    let tcp = match source {
        Some(ip) => {
            let socket = TcpSocket::new_v4().expect("socket");
            socket.bind(SocketAddr::new(ip, 0)).expect("bind source");
            socket.connect(addr).await.expect("connect")
        }
        None => TcpStream::connect(addr).await.expect("connect"),
    };
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        let conn = tokio::spawn(conn);
        let mut req = Request::get(path).header("host", HOST);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = sender
            .send_request(req.body(Empty::<Bytes>::new()).expect("request"))
            .await
            .expect("response");
        let (parts, body) = resp.into_parts();
        let _ = body.collect().await;
        conn.abort();
        parts
    };
    let parts = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("an answer in time");
    let upstream = parts
        .headers
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (parts.status.as_u16(), parts.headers, upstream)
}

async fn get(gw: &Running, path: &str, headers: &[(&str, &str)]) -> (u16, HeaderMap, String) {
    get_from(gw, None, path, headers).await
}

/// Which upstream answers each key, asked `rounds` times: panics unless every key stays on
/// one upstream.
async fn owners(
    gw: &Running,
    keys: &[String],
    rounds: usize,
    request: impl Fn(&str) -> (String, Vec<(&'static str, String)>),
) -> BTreeMap<String, String> {
    let mut owner = BTreeMap::new();
    for _ in 0..rounds {
        for key in keys {
            let (path, headers) = request(key);
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (status, _, upstream) = get(gw, &path, &headers).await;
            assert_eq!(status, 200, "{key}");
            let first = owner.entry(key.clone()).or_insert_with(|| upstream.clone());
            assert_eq!(*first, upstream, "key {key} moved");
        }
    }
    owner
}

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("user-{i}")).collect()
}

fn spread(owner: &BTreeMap<String, String>) -> BTreeSet<&str> {
    owner.values().map(String::as_str).collect()
}

fn by_header(key: &str) -> (String, Vec<(&'static str, String)>) {
    ("/".to_owned(), vec![("x-user", key.to_owned())])
}

#[tokio::test]
async fn header_keys_stick_and_spread_on_the_ring() {
    let s = setup("httpHeaderName: x-user", RING, None).await;
    let owner = owners(&s.gw, &keys(), 3, by_header).await;
    assert!(spread(&owner).len() > 1, "one endpoint for all: {owner:?}");
    // A request without the header still goes somewhere (Envoy: a random point).
    for _ in 0..4 {
        assert_eq!(get(&s.gw, "/", &[]).await.0, 200);
    }
    let served: u64 = s.http.iter().map(HttpUpstream::requests).sum();
    assert_eq!(served, (3 * KEYS + 4) as u64);
}

#[tokio::test]
async fn header_keys_stick_and_spread_in_the_maglev_table() {
    let s = setup("httpHeaderName: X-User", MAGLEV, None).await;
    let owner = owners(&s.gw, &keys(), 3, by_header).await;
    assert!(spread(&owner).len() > 1, "one endpoint for all: {owner:?}");
}

#[tokio::test]
async fn query_parameter_keys_stick_and_spread() {
    let s = setup("httpQueryParameterName: user", RING, None).await;
    let owner = owners(&s.gw, &keys(), 3, |k| {
        (format!("/items?page=2&user={k}"), Vec::new())
    })
    .await;
    assert!(spread(&owner).len() > 1, "one endpoint for all: {owner:?}");
}

#[tokio::test]
async fn a_cookie_with_a_ttl_is_set_and_then_sticks() {
    let s = setup(
        "httpCookie: {name: sticky, path: /, ttl: 3600s}",
        RING,
        None,
    )
    .await;
    let mut cookies = BTreeSet::new();
    let mut upstreams = BTreeSet::new();
    for _ in 0..12 {
        let (status, headers, first) = get(&s.gw, "/", &[]).await;
        assert_eq!(status, 200);
        let set = headers
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .expect("set-cookie")
            .to_owned();
        // Envoy's generated cookie: a quoted hex value, the TTL, the path, HttpOnly.
        let (pair, attrs) = set.split_once("; ").expect("attributes");
        assert_eq!(attrs, "Max-Age=3600; Path=/; HttpOnly", "{set}");
        let value = pair.strip_prefix("sticky=").expect("the cookie's name");
        assert!(value.len() == 18 && value.starts_with('"'), "{set}");
        cookies.insert(value.to_owned());
        upstreams.insert(first.clone());
        // The cookie sent back keeps the client on the endpoint that set it; no new one.
        let cookie = format!("sticky={value}");
        for _ in 0..3 {
            let (status, headers, again) = get(&s.gw, "/", &[("cookie", &cookie)]).await;
            assert_eq!(status, 200);
            assert_eq!(again, first, "{cookie}");
            assert!(headers.get("set-cookie").is_none());
        }
    }
    // Each new connection (a new client port) gets its own cookie.
    assert!(cookies.len() > 1, "{cookies:?}");
    assert!(upstreams.len() > 1, "{upstreams:?}");
    // Cookies the client made up stick as well.
    let owner = owners(&s.gw, &keys(), 2, |k| {
        ("/".to_owned(), vec![("cookie", format!("a=b; sticky={k}"))])
    })
    .await;
    assert!(spread(&owner).len() > 1, "{owner:?}");
}

#[tokio::test]
async fn a_cookie_without_a_ttl_is_never_set() {
    let s = setup("httpCookie: {name: sticky}", MAGLEV, None).await;
    for _ in 0..4 {
        let (status, headers, _) = get(&s.gw, "/", &[]).await;
        assert_eq!(status, 200);
        assert!(headers.get("set-cookie").is_none());
    }
    let owner = owners(&s.gw, &keys(), 2, |k| {
        ("/".to_owned(), vec![("cookie", format!("sticky={k}"))])
    })
    .await;
    assert!(spread(&owner).len() > 1, "{owner:?}");
}

#[tokio::test]
async fn the_source_ip_picks_the_endpoint() {
    let s = setup("useSourceIp: true", RING, None).await;
    // Every request from 127.0.0.1, whatever its port and headers: one endpoint.
    let mut from_one = BTreeSet::new();
    for i in 0..20 {
        let key = format!("user-{i}");
        let (status, _, upstream) = get_from(
            &s.gw,
            Some(IpAddr::from([127, 0, 0, 1])),
            "/",
            &[("x-user", &key)],
        )
        .await;
        assert_eq!(status, 200);
        from_one.insert(upstream);
    }
    assert_eq!(from_one.len(), 1, "{from_one:?}");
    // Other client addresses land elsewhere, each on its own endpoint every time.
    let mut owner = BTreeMap::new();
    for _ in 0..2 {
        for i in 2..22u8 {
            let source = IpAddr::from([127, 0, 0, i]);
            let (status, _, upstream) = get_from(&s.gw, Some(source), "/", &[]).await;
            assert_eq!(status, 200);
            let first = owner.entry(source).or_insert_with(|| upstream.clone());
            assert_eq!(*first, upstream, "{source} moved");
        }
    }
    let spread: BTreeSet<&String> = owner.values().collect();
    assert!(spread.len() > 1, "{owner:?}");
}

/// The banner of the TCP upstream a connection from `source` reaches.
async fn tcp_upstream(gw: &Running, source: IpAddr) -> String {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind source");
    let tcp = socket.connect(gw.addr(TCP_PORT)).await.expect("connect");
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(tcp);
    tokio::time::timeout(Duration::from_secs(20), reader.read_line(&mut line))
        .await
        .expect("a banner in time")
        .expect("read");
    line.trim().to_owned()
}

#[tokio::test]
async fn tcp_streams_hash_the_source_ip_too() {
    let s = setup("useSourceIp: true", MAGLEV, None).await;
    let mut owner = BTreeMap::new();
    for _ in 0..3 {
        for i in 1..17u8 {
            let source = IpAddr::from([127, 0, 0, i]);
            let upstream = tcp_upstream(&s.gw, source).await;
            assert!(upstream.starts_with('t'), "{upstream}");
            let first = owner.entry(source).or_insert_with(|| upstream.clone());
            assert_eq!(*first, upstream, "{source} moved");
        }
    }
    let spread: BTreeSet<&String> = owner.values().collect();
    assert!(spread.len() > 1, "{owner:?}");
}

/// Ejects the endpoint that owns the first key (a 500 on `/fail` with that key), then checks
/// that only its keys moved.
async fn ejection_moves_only_the_ejected_endpoints_keys(algorithm: &str) {
    let outlier =
        "{consecutive5xxErrors: 1, interval: 60s, baseEjectionTime: 300s, maxEjectionPercent: 100}";
    let s = setup("httpHeaderName: x-user", algorithm, Some(outlier)).await;
    let keys = keys();
    let before = owners(&s.gw, &keys, 2, by_header).await;
    let victim = before[&keys[0]].clone();
    let (status, _, failed) = get(&s.gw, "/fail", &[("x-user", &keys[0])]).await;
    assert_eq!((status, failed.as_str()), (500, victim.as_str()));
    let after = owners(&s.gw, &keys, 2, by_header).await;
    let mut moved = 0;
    for key in &keys {
        if before[key] == victim {
            assert_ne!(after[key], victim, "{key} still on the ejected {victim}");
            moved += 1;
        } else {
            assert_eq!(
                after[key], before[key],
                "{key} moved though its endpoint is in"
            );
        }
    }
    assert!(moved >= 1);
    let ejected = s
        .http
        .iter()
        .find(|u| u.name() == victim)
        .expect("the victim");
    let served_before = ejected.requests();
    for key in &keys {
        get(&s.gw, "/", &[("x-user", key)]).await;
    }
    assert_eq!(
        ejected.requests(),
        served_before,
        "no traffic to the ejected"
    );
}

#[tokio::test]
async fn an_ejected_endpoint_hands_its_keys_on_along_the_ring() {
    ejection_moves_only_the_ejected_endpoints_keys(RING).await;
}

#[tokio::test]
async fn an_ejected_endpoint_hands_its_keys_on_in_the_maglev_table() {
    ejection_moves_only_the_ejected_endpoints_keys(MAGLEV).await;
}
