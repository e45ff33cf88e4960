//! HTTP as clients and servers really send it: upgrades (WebSocket) pass through, a client's
//! broken body is the client's fault (400 `DPE`), and an upstream response HTTP forbids is
//! refused as Envoy refuses it (502 `UPE`), never relayed. Real sockets on loopback; the
//! upstreams are raw TCP servers so the tests control every byte.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::json;
use sluice_test_support::free_loopback_addr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PORT: u16 = 8080;
const STEP: Duration = Duration::from_secs(10);

/// A raw upstream: reads one request head, writes `reply`, then echoes whatever comes next
/// until the peer closes.
async fn raw_upstream(reply: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(SocketAddr::new(free_loopback_addr(), 80))
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if read_request_head(&mut tcp).await.is_none() {
                    return;
                }
                let mut buf = [0u8; 4096];
                if tcp.write_all(reply).await.is_err() {
                    return;
                }
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tcp.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, task)
}

/// Sends `request` on a new connection to `addr`; returns the bytes read until the response
/// head ends (and the open socket).
async fn exchange(addr: SocketAddr, request: &[u8]) -> (String, TcpStream) {
    let mut tcp = tokio::time::timeout(STEP, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    tcp.write_all(request).await.expect("write");
    (read_head(&mut tcp).await, tcp)
}

fn proxied(host: &str, upstream: SocketAddr) -> (serde_json::Value, serde_json::Value) {
    (
        vhost(&[host], vec![forward_route(host, host)]),
        cluster(host, host, 80, static_endpoints(&[upstream]), json!({})),
    )
}

#[tokio::test]
async fn upgrades_pass_and_forbidden_responses_are_refused() {
    let (ws, _ws_task) = raw_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n",
    )
    .await;
    let (both, _both_task) = raw_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    let (bad_status, _bad_task) =
        raw_upstream(b"HTTP/1.1 600 Odd\r\ncontent-length: 0\r\n\r\n").await;
    let (ok, _ok_task) = raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let routes = [
        proxied("ws.test", ws),
        proxied("both.test", both),
        proxied("status.test", bad_status),
        proxied("ok.test", ok),
    ];
    let snap = snapshot(
        vec![listener(
            PORT,
            vec![http_chain(
                PORT,
                routes.iter().map(|(v, _)| v.clone()).collect(),
            )],
        )],
        routes.iter().map(|(_, c)| c.clone()).collect(),
    );
    let proxy = start(snap, None).await;
    let addr = proxy.addr(PORT);

    // WebSocket: the Upgrade reaches the upstream, 101 comes back with its Upgrade header,
    // and the connection is a byte tunnel both ways afterwards.
    let (head, mut tcp) = exchange(
        addr,
        b"GET /chat HTTP/1.1\r\nhost: ws.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    tcp.write_all(b"frames both ways").await.expect("write");
    let mut got = [0u8; 16];
    tokio::time::timeout(STEP, tcp.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("the echo, before the tunnel closes");
    assert_eq!(&got, b"frames both ways");

    // Content-Length and Transfer-Encoding together: 502 UPE, nothing relayed.
    let (head, _) = exchange(addr, b"GET / HTTP/1.1\r\nhost: both.test\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    proxy.log_line(&["both.test", " 502 UPE "]).await;

    // A status outside 100-599: 502 UPE.
    let (head, _) = exchange(addr, b"GET / HTTP/1.1\r\nhost: status.test\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    proxy.log_line(&["status.test", " 502 UPE "]).await;

    // A client body with broken chunked framing is the client's error: 400 DPE, and the
    // upstream's cluster sees no failure.
    let (head, _) = exchange(
        addr,
        b"POST / HTTP/1.1\r\nhost: ok.test\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let line = proxy.log_line(&["ok.test", " 400 "]).await;
    assert!(line.contains("DPE"), "{line}");
    // Before, this was 503 `UC`: an upstream reset blamed on the upstream.
    assert!(
        !line.contains("UC") && !line.contains("upstream_reset"),
        "a client's error is not the upstream's: {line}"
    );
}
