//! TLS origination toward upstreams (SIMPLE, MUTUAL, skip-verify, subject alt names, h2) and
//! TLS termination at the gateway (SIMPLE, MUTUAL).

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::{Value, json};
use sluice_test_support::client::{http_get, https_get};
use sluice_test_support::{HttpUpstream, HttpsUpstream, TempDir, TestCa, UpstreamOptions};

const PORT: u16 = 8080;

fn local0() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// One plain HTTP listener; each host routes to the cluster of the same name.
fn origination_snapshot(clusters: Vec<(&str, SocketAddr, Value)>) -> Value {
    let vhosts = clusters
        .iter()
        .map(|(name, _, _)| vhost(&[name], vec![forward_route(name, name)]))
        .collect();
    let clusters = clusters
        .into_iter()
        .map(|(name, addr, extra)| cluster(name, name, 443, static_endpoints(&[addr]), extra))
        .collect();
    snapshot(
        vec![listener(PORT, vec![http_chain(PORT, vhosts)])],
        clusters,
    )
}

#[tokio::test]
async fn origination_verifies_certificates() {
    let ca = TestCa::new("origin-ca");
    let other = TestCa::new("other-ca");
    let dir = TempDir::new("origination");
    let ca_file = ca.write_ca_pem(dir.path());
    let (client_crt, client_key) = ca.client_cert("gateway", None).write(dir.path(), "client");

    let good = HttpsUpstream::start(
        local0(),
        &ca.server_cert(&["api.github.com", "alt.example.com"]),
        "good",
        UpstreamOptions::default().alpn(&["h2", "http/1.1"]),
    )
    .await
    .expect("good");
    let foreign = HttpsUpstream::start(
        local0(),
        &other.server_cert(&["api.github.com"]),
        "foreign",
        UpstreamOptions::default(),
    )
    .await
    .expect("foreign");
    let mutual = HttpsUpstream::start(
        local0(),
        &ca.server_cert(&["mutual.example.com"]),
        "mutual",
        UpstreamOptions::default().require_client_cert(&ca),
    )
    .await
    .expect("mutual");

    let trust = json!({"file": ca_file});
    let simple = |sni: &str| json!({"tls": {"mode": "SIMPLE", "sni": sni, "trust": trust}});
    let snap = origination_snapshot(vec![
        ("simple.test", good.addr(), simple("api.github.com")),
        (
            "h2.test",
            good.addr(),
            json!({"tls": {"mode": "SIMPLE", "sni": "api.github.com", "trust": trust}, "http2": true}),
        ),
        ("wrong-ca.test", foreign.addr(), simple("api.github.com")),
        (
            "skip.test",
            foreign.addr(),
            json!({"tls": {"mode": "SIMPLE", "sni": "api.github.com", "trust": "skip_verify"}}),
        ),
        (
            "wrong-name.test",
            good.addr(),
            simple("nothere.example.com"),
        ),
        (
            "san.test",
            good.addr(),
            json!({"tls": {"mode": "SIMPLE", "sni": "nothere.example.com", "trust": trust, "subject_alt_names": ["alt.example.com"]}}),
        ),
        (
            "san-mismatch.test",
            good.addr(),
            json!({"tls": {"mode": "SIMPLE", "sni": "api.github.com", "trust": trust, "subject_alt_names": ["other.example.com"]}}),
        ),
        (
            "mutual.test",
            mutual.addr(),
            json!({"tls": {"mode": "MUTUAL", "sni": "mutual.example.com", "trust": trust, "client_certificate": client_crt, "private_key": client_key}}),
        ),
        (
            "no-client-cert.test",
            mutual.addr(),
            simple("mutual.example.com"),
        ),
    ]);
    let proxy = start(snap, None).await;
    let addr = proxy.addr(PORT);

    let get = |host: &'static str| async move {
        let (status, _, body) = http_get(addr, host, "/x").await.expect(host);
        (status, body)
    };

    let (status, body) = get("simple.test").await;
    assert_eq!(status, 200, "{body}");
    let seen = echo(&body);
    assert_eq!(seen["sni"], "api.github.com");
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["host"], "simple.test");

    let (status, body) = get("h2.test").await;
    assert_eq!(status, 200, "{body}");
    let seen = echo(&body);
    assert_eq!(
        (seen["alpn"].as_str(), seen["version"].as_str()),
        (Some("h2"), Some("HTTP/2.0"))
    );

    for host in [
        "wrong-ca.test",
        "wrong-name.test",
        "san-mismatch.test",
        "no-client-cert.test",
    ] {
        let (status, body) = get(host).await;
        assert_eq!(status, 503, "{host}: {body}");
        let line = proxy.log_line(&[host]).await;
        assert!(line.contains(" 503 UF "), "{line}");
        assert!(line.contains("TLS_error"), "{line}");
    }
    assert_eq!(foreign.requests(), 0);

    let (status, body) = get("skip.test").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(echo(&body)["upstream"], "foreign");

    let (status, body) = get("san.test").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(echo(&body)["sni"], "nothere.example.com");

    let (status, body) = get("mutual.test").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(echo(&body)["client_cert_cn"], "gateway");
    proxy.stop().await;
}

#[tokio::test]
async fn termination_simple_and_mutual() {
    let ca = TestCa::new("gateway-ca");
    let dir = TempDir::new("termination");
    let (crt, key) = ca
        .server_cert(&["app.example.com", "mtls.example.com"])
        .write(dir.path(), "server");
    let ca_file = ca.write_ca_pem(dir.path());
    let plain = HttpUpstream::start(local0(), "plain").await.expect("plain");
    let terminating = |name: &str, sni: &str, tls: Value| {
        json!({
            "name": name,
            "match": {"transport": "tls", "server_names": [sni]},
            "tls": tls,
            "app": {"http": {"route_config": "https.443", "virtual_hosts": [
                vhost(&[sni], vec![forward_route(name, "plain")])
            ]}},
        })
    };
    let snap = snapshot(
        vec![listener(
            443,
            vec![
                terminating(
                    "simple",
                    "app.example.com",
                    json!({"mode": "SIMPLE", "certificate_chain": crt, "private_key": key}),
                ),
                terminating(
                    "mutual",
                    "mtls.example.com",
                    json!({"mode": "MUTUAL", "certificate_chain": crt, "private_key": key, "ca_certificates": ca_file}),
                ),
            ],
        )],
        vec![cluster(
            "plain",
            "plain.example.com",
            80,
            static_endpoints(&[plain.addr()]),
            json!({}),
        )],
    );
    let proxy = start(snap, None).await;
    let roots = ca.ca_root_store();
    let (status, _, body) = https_get(
        proxy.addr(443),
        "app.example.com",
        "app.example.com",
        "/t",
        &roots,
        None,
    )
    .await
    .expect("terminated");
    assert_eq!(status, 200);
    let seen = echo(&body);
    assert_eq!(seen["upstream"], "plain");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    let line = proxy.log_line(&["/t", "app.example.com"]).await;
    assert!(line.contains(" 200 - via_upstream "), "{line}");

    let client = ca.client_cert("client", None);
    let (status, _, _) = https_get(
        proxy.addr(443),
        "mtls.example.com",
        "mtls.example.com",
        "/m",
        &roots,
        Some(&client),
    )
    .await
    .expect("mutual with a client certificate");
    assert_eq!(status, 200);
    let no_cert = https_get(
        proxy.addr(443),
        "mtls.example.com",
        "mtls.example.com",
        "/",
        &roots,
        None,
    )
    .await;
    assert!(no_cert.is_err(), "a client without certificate is refused");
    proxy
        .log_line(&["mtls.example.com", "tls_handshake_failed"])
        .await;
    proxy.stop().await;
}

/// An HTTPS upstream whose second connection's TLS handshake waits for `handshake_gate`, and
/// whose `/hold` requests wait for `hold_gate`. Responses carry `x-conn`: the connection's
/// number (1, 2, …).
struct GatedHttps {
    addr: SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    held: std::sync::Arc<std::sync::atomic::AtomicU64>,
    handshake_gate: tokio::sync::watch::Sender<bool>,
    hold_gate: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl GatedHttps {
    async fn start(ca: &TestCa) -> GatedHttps {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = tokio::net::TcpListener::bind(local0()).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(
            ca.server_cert(&["api.github.com"]).server_config(),
        ));
        let (handshake_gate, handshake_rx) = tokio::sync::watch::channel(false);
        let (hold_gate, hold_rx) = tokio::sync::watch::channel(false);
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let held = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (seen, holding) = (accepted.clone(), held.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let n = seen.fetch_add(1, SeqCst) + 1;
                let (acceptor, holding) = (acceptor.clone(), holding.clone());
                let (mut handshake_rx, hold_rx) = (handshake_rx.clone(), hold_rx.clone());
                tokio::spawn(async move {
                    if n == 2 {
                        let _ = handshake_rx.wait_for(|open| *open).await;
                    }
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (mut hold_rx, holding) = (hold_rx.clone(), holding.clone());
                            async move {
                                if req.uri().path() == "/hold" {
                                    holding.fetch_add(1, SeqCst);
                                    let _ = hold_rx.wait_for(|open| *open).await;
                                }
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .header("x-conn", n.to_string())
                                        .body(http_body_util::Full::new(bytes::Bytes::from("ok")))
                                        .expect("response"),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        GatedHttps {
            addr,
            accepted,
            held,
            handshake_gate,
            hold_gate,
            task,
        }
    }
}

/// Envoy's HTTP/1.1 connection pool: a request that finds no idle connection has a new one
/// made for the pool, but takes whichever is ready first — here the connection another
/// request returns while the new one's TLS handshake is still held by the upstream. The new
/// connection then joins the pool.
#[tokio::test]
async fn a_request_takes_a_returned_connection_before_its_new_one_is_ready() {
    use std::sync::atomic::Ordering::SeqCst;
    const PROMPT: std::time::Duration = std::time::Duration::from_secs(5);
    let ca = TestCa::new("origin-ca");
    let dir = TempDir::new("connect-ahead");
    let trust = json!({"file": ca.write_ca_pem(dir.path())});
    let up = GatedHttps::start(&ca).await;
    let snap = origination_snapshot(vec![(
        "slow.test",
        up.addr,
        json!({"tls": {"mode": "SIMPLE", "sni": "api.github.com", "trust": trust}}),
    )]);
    let proxy = start(snap, None).await;
    let addr = proxy.addr(PORT);
    // Polls `done` until it holds (the proxy and the upstream run meanwhile).
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + PROMPT;
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} within {PROMPT:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    // A holds connection 1.
    let a = tokio::spawn(async move { http_get(addr, "slow.test", "/hold").await });
    until("A held", || up.held.load(SeqCst) == 1).await;
    // B finds no idle connection: connection 2 is dialed, its handshake held.
    let b = tokio::spawn(async move { http_get(addr, "slow.test", "/b").await });
    until("connection 2 accepted", || up.accepted.load(SeqCst) == 2).await;
    // A ends: connection 1 returns to the pool and B takes it.
    up.hold_gate.send_replace(true);
    let (status, _, _) = a.await.expect("join").expect("a");
    assert_eq!(status, 200);
    let (status, headers, _) = tokio::time::timeout(PROMPT, b)
        .await
        .expect("B served while connection 2's handshake is still held")
        .expect("join")
        .expect("b");
    assert_eq!((status, headers["x-conn"].to_str().ok()), (200, Some("1")));

    // Connection 2 completes and is the pool's: two connections, and both serve.
    up.handshake_gate.send_replace(true);
    let active = r#"envoy_cluster_upstream_cx_active"#;
    let labels = r#"cluster_name="slow.test""#;
    until("two pooled connections", || {
        proxy.metric(active, labels) == 2
    })
    .await;
    for _ in 0..3 {
        let (status, _, _) = http_get(addr, "slow.test", "/c").await.expect("c");
        assert_eq!(status, 200);
    }
    assert_eq!(up.accepted.load(SeqCst), 2, "no third connection");
    up.task.abort();
    proxy.stop().await;
}
