//! Faults, mirrors, circuit-breaker overflow, connect failures, the black hole, dynamic DNS
//! for HTTP (and its guard against open proxying), and h2c from the client.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use sluice_test_support::client::http_get;
use sluice_test_support::{DnsServer, HttpUpstream, free_loopback_addr};

const PORT: u16 = 8080;

fn host_route(host: &str, action: Value) -> Value {
    vhost(
        &[host],
        vec![json!({"name": host, "match": {}, "action": action})],
    )
}

fn to(cluster: &str, extra: Value) -> Value {
    let mut f = json!({"clusters": [{"cluster": cluster, "weight": 100}]});
    if let (Some(f), Some(extra)) = (f.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            f.insert(k.clone(), v.clone());
        }
    }
    json!({"forward": f})
}

/// Polls `done` every 10 ms until it holds or 5 s have passed; the caller asserts afterwards.
async fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn faults_mirrors_limits_and_refusals() {
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    let main = HttpUpstream::start(local, "main").await.expect("main");
    let shadow = HttpUpstream::start(local, "shadow").await.expect("shadow");
    let web_ip = free_loopback_addr();
    let web = HttpUpstream::start(SocketAddr::new(web_ip, 80), "web")
        .await
        .expect("web");
    let dns = DnsServer::start([("en.wiki.test", vec![web_ip]), ("evil.test", vec![web_ip])])
        .await
        .expect("dns");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let vhosts = vec![
        host_route(
            "abort.test",
            to(
                "main",
                json!({"fault": {"abort": {"status": 418, "percent": 100.0}}}),
            ),
        ),
        host_route(
            "delay.test",
            to(
                "main",
                json!({"fault": {"delay": {"delay": "0.1s", "percent": 100.0}}}),
            ),
        ),
        host_route(
            "mirror.test",
            to(
                "main",
                json!({"mirrors": [{"cluster": "shadow", "percent": 100.0}]}),
            ),
        ),
        host_route("limited.test", to("limited", json!({}))),
        host_route("closed.test", to("closed", json!({}))),
        host_route("blackhole.test", to("BlackHoleCluster", json!({}))),
        host_route("*.wiki.test", to("wiki", json!({}))),
        host_route("evil.test", to("wiki", json!({}))),
        host_route("h2c.test", to("main", json!({}))),
    ];
    let snap = snapshot(
        vec![listener(PORT, vec![http_chain(PORT, vhosts)])],
        vec![
            cluster(
                "main",
                "main.test",
                80,
                static_endpoints(&[main.addr()]),
                json!({}),
            ),
            cluster(
                "shadow",
                "shadow.test",
                80,
                static_endpoints(&[shadow.addr()]),
                json!({}),
            ),
            cluster(
                "limited",
                "limited.test",
                80,
                static_endpoints(&[main.addr()]),
                json!({"limits": {"max_connections": 1, "max_pending_requests": 1}}),
            ),
            cluster(
                "closed",
                "closed.test",
                80,
                static_endpoints(&[closed]),
                json!({}),
            ),
            cluster(
                "BlackHoleCluster",
                "BlackHoleCluster",
                0,
                json!("black_hole"),
                json!({}),
            ),
            cluster("wiki", "*.wiki.test", 80, json!("dynamic_dns"), json!({})),
        ],
    );
    let proxy = start(snap, Some(dns.addr())).await;
    let addr = proxy.addr(PORT);

    let (status, _, body) = http_get(addr, "abort.test", "/").await.expect("abort");
    assert_eq!((status, body.as_str()), (418, "fault filter abort"));
    proxy.log_line(&["abort.test", " 418 FI "]).await;

    let started = std::time::Instant::now();
    let (status, _, _) = http_get(addr, "delay.test", "/").await.expect("delay");
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(100));
    proxy.log_line(&["delay.test", " 200 DI "]).await;

    let (status, _, _) = http_get(addr, "mirror.test", "/m").await.expect("mirror");
    assert_eq!(status, 200);
    // The copy is sent in the background: the reply does not wait for it.
    wait_until(|| shadow.requests() >= 1).await;
    assert_eq!(shadow.requests(), 1, "the mirror got its copy");

    // One connection, one pending request: a third concurrent request overflows. (A request
    // waiting for its own new connection counts as pending too, as in Envoy, so the limit is
    // 1 rather than 0 here: with 0 even the first request would overflow.)
    let before = main.requests();
    let slow = tokio::spawn(async move { http_get(addr, "limited.test", "/delay/800").await });
    // Once the slow request is at the upstream, it holds the cluster's only connection (for
    // the 800 ms of its delay, the scenario's window).
    wait_until(|| main.requests() > before).await;
    assert_eq!(
        main.requests(),
        before + 1,
        "the slow request reached the upstream"
    );
    let waiting = tokio::spawn(async move { http_get(addr, "limited.test", "/waits").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, _) = http_get(addr, "limited.test", "/").await.expect("overflow");
    assert_eq!(status, 503);
    proxy.log_line(&["limited.test", " 503 UO "]).await;
    let (status, _, _) = slow.await.expect("join").expect("slow");
    assert_eq!(status, 200);
    let (status, _, _) = waiting.await.expect("join").expect("pending one");
    assert_eq!(
        status, 200,
        "the pending request got the connection once it was free"
    );

    let (status, _, body) = http_get(addr, "closed.test", "/").await.expect("closed");
    assert_eq!(status, 503);
    assert!(body.starts_with("upstream connect error"), "{body}");
    let line = proxy.log_line(&["closed.test"]).await;
    assert!(
        line.contains(" 503 UF ") && line.contains("delayed connect error"),
        "{line}"
    );

    let (status, _, _) = http_get(addr, "blackhole.test", "/")
        .await
        .expect("blackhole");
    assert_eq!(status, 502);
    proxy.log_line(&["blackhole.test", " 502 UH "]).await;

    let (status, _, body) = http_get(addr, "en.wiki.test", "/w")
        .await
        .expect("dynamic dns");
    assert_eq!(status, 200);
    assert_eq!(echo(&body)["upstream"], "web");
    let (status, _, _) = http_get(addr, "evil.test", "/").await.expect("guard");
    assert_eq!(status, 503, "a host outside *.wiki.test is never resolved");
    assert_eq!(dns.queries("evil.test"), 0);
    assert_eq!(web.requests(), 1);

    // h2c with prior knowledge.
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    let driver = tokio::spawn(conn);
    let req = http::Request::get("http://h2c.test/h2")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("h2c request");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let seen = echo(&String::from_utf8_lossy(&body));
    assert_eq!(
        (seen["host"].as_str(), seen["path"].as_str()),
        (Some("h2c.test"), Some("/h2"))
    );
    proxy.log_line(&["h2c.test", "HTTP/2"]).await;
    drop(sender);
    driver.abort();
    proxy.stop().await;
}
