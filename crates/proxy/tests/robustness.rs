//! Bad input never takes the proxy down; snapshots re-bind listeners; shutdown drains.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::json;
use sluice_test_support::HttpUpstream;
use sluice_test_support::client::{http_get, raw_tcp};

const HTTP: u16 = 8080;
const TLS: u16 = 8443;

async fn proxy_and_upstream() -> (Running, HttpUpstream) {
    let up = HttpUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)), "up")
        .await
        .expect("upstream");
    let snap = snapshot(
        vec![
            listener(
                HTTP,
                vec![http_chain(
                    HTTP,
                    vec![vhost(&["*"], vec![forward_route("all", "up")])],
                )],
            ),
            listener(
                TLS,
                vec![
                    passthrough_chain("tls", &["api.github.com"], "up"),
                    http_chain(
                        TLS,
                        vec![vhost(
                            &["*"],
                            vec![forward_route("plain-on-tls-port", "up")],
                        )],
                    ),
                ],
            ),
        ],
        vec![cluster(
            "up",
            "up.example.com",
            80,
            static_endpoints(&[up.addr()]),
            json!({}),
        )],
    );
    let proxy = start_with(snap, |c| c.tls_inspect_timeout = Duration::from_millis(300)).await;
    (proxy, up)
}

async fn still_serves(proxy: &Running, port: u16) {
    let (status, _, _) = http_get(proxy.addr(port), "app.example.com", "/ok")
        .await
        .expect("next client is served");
    assert_eq!(status, 200);
}

fn status_of(reply: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(reply);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test]
async fn bad_input_is_refused_and_the_next_client_served() {
    let (proxy, _up) = proxy_and_upstream().await;
    let wait = Duration::from_secs(3);

    let garbage: Vec<u8> = (0..2000u32).map(|i| (i * 7919 % 251) as u8).collect();
    for port in [HTTP, TLS] {
        let reply = raw_tcp(proxy.addr(port), &garbage, wait)
            .await
            .expect("garbage");
        assert!(
            reply.is_empty() || status_of(&reply) == Some(400),
            "{port}: {:?}",
            String::from_utf8_lossy(&reply)
        );
        still_serves(&proxy, port).await;
    }

    let invalid = raw_tcp(
        proxy.addr(HTTP),
        b"GET / HTTP/1.1\r\nHost app.example.com\r\n\r\n",
        wait,
    )
    .await
    .expect("invalid syntax");
    assert_eq!(
        status_of(&invalid),
        Some(400),
        "{:?}",
        String::from_utf8_lossy(&invalid)
    );

    let mut huge = b"GET / HTTP/1.1\r\nHost: app.example.com\r\n".to_vec();
    for i in 0..2000 {
        huge.extend_from_slice(format!("x-filler-{i}: {}\r\n", "a".repeat(60)).as_bytes());
    }
    huge.extend_from_slice(b"\r\n");
    let reply = raw_tcp(proxy.addr(HTTP), &huge, wait)
        .await
        .expect("huge head");
    assert!(
        reply.is_empty() || matches!(status_of(&reply), Some(400 | 431)),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
    still_serves(&proxy, HTTP).await;

    // A ClientHello cut short: closed after the inspection timeout.
    let hello = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let started = std::time::Instant::now();
    let reply = raw_tcp(proxy.addr(TLS), &hello, wait)
        .await
        .expect("truncated hello");
    assert!(reply.is_empty());
    assert!(
        started.elapsed() < wait,
        "closed by the proxy, not by the client timeout"
    );
    proxy.log_line(&["tls_inspector_timeout"]).await;
    still_serves(&proxy, TLS).await;
    proxy.stop().await;
}

/// A kept-alive connection does not keep its snapshot: each new request on it is served by
/// the one in use. Here its listener is gone: the request finds no route (`404 NR`, as on a
/// port nothing serves) and the connection closes after it.
#[tokio::test]
async fn new_snapshots_rebind_listeners_and_old_connections_follow_them() {
    let (proxy, up) = proxy_and_upstream().await;
    still_serves(&proxy, HTTP).await;
    let (mut sender, driver) = kept_alive(&proxy, HTTP).await;
    let first = send(&mut sender, "a.example.com", "/early").await;
    assert_eq!(first, 200);

    // Move HTTP from 8080 to 8081.
    let snap = snapshot(
        vec![listener(
            8081,
            vec![http_chain(
                8081,
                vec![vhost(&["*"], vec![forward_route("all", "up")])],
            )],
        )],
        vec![up_cluster(&up)],
    );
    proxy.publish(snap);
    let mut moved = false;
    for _ in 0..100 {
        let old_closed = tokio::net::TcpStream::connect(proxy.addr(HTTP))
            .await
            .is_err();
        if old_closed
            && http_get(proxy.addr(8081), "a.example.com", "/")
                .await
                .is_ok()
        {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(moved, "8081 bound and 8080 closed");
    assert_eq!(send(&mut sender, "a.example.com", "/late").await, 404);
    proxy.log_line(&["\"GET /late HTTP/1.1\" 404 NR"]).await;
    // ... and the proxy closes the connection after that response.
    tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .expect("the connection is closed within 5s")
        .expect("join")
        .expect("closed cleanly");
    proxy.stop().await;
}

/// A route removed (or a policy, or a cluster changed) applies to the next request of a
/// kept-alive connection, which stays open: its listener and chain are still there.
#[tokio::test]
async fn kept_alive_connections_take_new_routes_at_their_next_request() {
    let (proxy, up) = proxy_and_upstream().await;
    let (mut sender, driver) = kept_alive(&proxy, HTTP).await;
    assert_eq!(send(&mut sender, "a.example.com", "/").await, 200);
    assert_eq!(send(&mut sender, "b.example.com", "/").await, 200);

    let snap = snapshot(
        vec![listener(
            HTTP,
            vec![http_chain(
                HTTP,
                vec![vhost(&["b.example.com"], vec![forward_route("b", "up")])],
            )],
        )],
        vec![up_cluster(&up)],
    );
    proxy.publish_applied(snap).await;
    assert_eq!(send(&mut sender, "a.example.com", "/").await, 404);
    assert_eq!(send(&mut sender, "b.example.com", "/").await, 200);
    assert!(!driver.is_finished(), "the connection stays open");
    driver.abort();
    proxy.stop().await;
}

async fn kept_alive(
    proxy: &Running,
    port: u16,
) -> (
    hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let open = tokio::net::TcpStream::connect(proxy.addr(port))
        .await
        .expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(open))
        .await
        .expect("handshake");
    (sender, tokio::spawn(conn))
}

/// One request on `sender`: its status, the body read.
async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    host: &str,
    path: &str,
) -> u16 {
    let req = http::Request::get(path)
        .header("host", host)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .expect("in time")
        .expect("response");
    let status = resp.status().as_u16();
    http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body");
    status
}

fn up_cluster(up: &HttpUpstream) -> serde_json::Value {
    cluster(
        "up",
        "up.example.com",
        80,
        static_endpoints(&[up.addr()]),
        json!({}),
    )
}

#[tokio::test]
async fn shutdown_drains_requests_in_flight() {
    let (proxy, up) = proxy_and_upstream().await;
    let addr = proxy.addr(HTTP);
    let slow = tokio::spawn(async move { http_get(addr, "app.example.com", "/delay/400").await });
    // Stop only once the request is in flight, i.e. the upstream has it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while up.requests() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.requests(), 1, "the request reached the upstream");
    proxy.stop().await;
    let (status, _, _) = slow
        .await
        .expect("join")
        .expect("in-flight request finished");
    assert_eq!(status, 200);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}
