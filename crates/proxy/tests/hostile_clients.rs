//! Hostile clients are bounded (security issue), on real sockets: silent and slow clients are
//! cut off at their timeouts while a well-behaved client is served, a listener holds at most
//! `max_connections`, a CONNECT at the gateway is answered as Envoy answers it, and smuggling
//! shapes (two lengths, length with chunking, folded headers) are refused.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::json;
use sluice_test_support::HttpUpstream;
use sluice_test_support::client::{http_get, raw_tcp, statuses};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PORT: u16 = 8080;
/// Far beyond every timeout configured here: a connection still open then was not cut off.
const PATIENCE: Duration = Duration::from_secs(10);

fn http_snapshot(up: SocketAddr) -> serde_json::Value {
    snapshot(
        vec![listener(
            PORT,
            vec![http_chain(
                PORT,
                vec![vhost(
                    &["api.example.com"],
                    vec![forward_route("api", "up")],
                )],
            )],
        )],
        vec![cluster(
            "up",
            "api.example.com",
            80,
            static_endpoints(&[up]),
            json!({}),
        )],
    )
}

/// Reads until the proxy closes the connection (`true`), or `PATIENCE` passes (`false`).
async fn closed_by_proxy(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(until, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn silent_and_slow_clients_are_cut_off_while_others_are_served() {
    let up = HttpUpstream::start("127.0.0.1:0".parse().expect("addr"), "up")
        .await
        .expect("upstream");
    let proxy = start_with(http_snapshot(up.addr()), |c| {
        c.first_byte_timeout = Duration::from_millis(300);
        c.request_head_timeout = Duration::from_millis(600);
    })
    .await;
    let gw = proxy.addr(PORT);

    // Sends nothing at all.
    let mut silent = TcpStream::connect(gw).await.expect("connect");
    // Slowloris: a head that never ends, one byte at a time.
    let mut slow = TcpStream::connect(gw).await.expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: api.example.com\r\n")
        .await
        .expect("write");
    let dripping = tokio::spawn(async move {
        for _ in 0..100 {
            if slow.write_all(b"x").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        closed_by_proxy(&mut slow).await
    });
    // Meanwhile a well-behaved client is served.
    let (status, _, body) = http_get(gw, "api.example.com", "/ok")
        .await
        .expect("served");
    assert_eq!(status, 200, "{body}");

    assert!(
        closed_by_proxy(&mut silent).await,
        "a silent client stayed connected"
    );
    assert!(
        dripping.await.expect("join"),
        "a slowloris client stayed connected"
    );
    let metrics = proxy.metrics();
    assert!(
        metrics.contains(r#"sluice_refused_total{check="limit",reason="first_byte_timeout"} 1"#),
        "{metrics}"
    );
    // The slowloris client's head never ended: counted apart from the silent one.
    assert!(
        metrics.contains(r#"sluice_refused_total{check="limit",reason="request_head_timeout"} 1"#),
        "{metrics}"
    );
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn a_listener_holds_at_most_max_connections() {
    let up = HttpUpstream::start("127.0.0.1:0".parse().expect("addr"), "up")
        .await
        .expect("upstream");
    let proxy = start_with(http_snapshot(up.addr()), |c| c.max_connections = 2).await;
    let gw = proxy.addr(PORT);
    // Two connections hold the listener's room: each has sent the start of a request.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(gw).await.expect("connect");
        tcp.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
        held.push(tcp);
    }
    // A third is accepted and closed at once, without an answer.
    let refused = raw_tcp(
        gw,
        b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        PATIENCE,
    )
    .await
    .expect("third");
    assert!(refused.is_empty(), "{}", String::from_utf8_lossy(&refused));
    assert!(
        proxy
            .metrics()
            .contains(r#"sluice_refused_total{check="limit",reason="max_connections"} 1"#)
    );
    // Room again once one closes: served.
    drop(held.pop());
    let mut served = false;
    for _ in 0..50 {
        if let Ok((200, _, _)) = http_get(gw, "api.example.com", "/").await {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "no room after a connection closed");
}

/// Envoy answers a CONNECT on a route table without a `connect_matcher` 404 (`NR`,
/// `route_not_found`): sluice's gateway never forwards it.
#[tokio::test]
async fn connect_at_the_gateway_is_not_forwarded() {
    let up = HttpUpstream::start("127.0.0.1:0".parse().expect("addr"), "up")
        .await
        .expect("upstream");
    let proxy = start(http_snapshot(up.addr()), None).await;
    let reply = raw_tcp(
        proxy.addr(PORT),
        b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n",
        Duration::from_secs(2),
    )
    .await
    .expect("connect");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    let line = proxy.log_line(&["CONNECT"]).await;
    assert!(line.contains(" 404 NR route_not_found "), "{line}");
    assert_eq!(up.connections(), 0);
}

/// Request smuggling shapes (RFC 9112 §6.3, Envoy's codec): refused 400, nothing forwarded.
#[tokio::test]
async fn smuggling_shapes_are_refused() {
    let up = HttpUpstream::start("127.0.0.1:0".parse().expect("addr"), "up")
        .await
        .expect("upstream");
    let proxy = start(http_snapshot(up.addr()), None).await;

    // Content-Length with Transfer-Encoding, in either order and spelling: 400 as Envoy answers
    // it (`DPE`, `http1.content_length_and_chunked_not_allowed`), the connection closed after
    // that one response, so the request hidden behind is never read.
    for framing in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "transfer-encoding: chunked\r\ncontent-length: 4",
    ] {
        let head = format!(
            "POST /first HTTP/1.1\r\nHost: api.example.com\r\n{framing}\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: api.example.com\r\n\r\n"
        );
        let reply = raw_tcp(proxy.addr(PORT), head.as_bytes(), PATIENCE)
            .await
            .expect("request");
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
        assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply}");
        assert!(
            reply.to_ascii_lowercase().contains("connection: close"),
            "{reply}"
        );
    }
    proxy
        .wait_lines(
            &[
                " 400 DPE http1.content_length_and_chunked_not_allowed ",
                "/first",
            ],
            2,
        )
        .await;
    assert!(
        proxy.metrics().contains(
            r#"sluice_refused_total{check="framing",reason="content_length_and_chunked"} 2"#
        ),
        "{}",
        proxy.metrics()
    );
    assert_eq!(
        up.requests(),
        0,
        "a request with two framings was forwarded"
    );
    // A later request on a kept-alive connection is refused as the first is: the requests
    // before it (no body, a length, chunks with a trailer) are served, the one with both
    // framings is answered 400 and closes the connection, the one hidden behind is never read.
    let pipelined = concat!(
        "GET /k1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        "POST /k2 HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 5\r\n\r\nhello",
        "POST /k3 HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\n\r\n",
        "3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
        "POST /k4 HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 4\r\n",
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET /k5-smuggled HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
    );
    let reply = raw_tcp(proxy.addr(PORT), pipelined.as_bytes(), PATIENCE)
        .await
        .expect("request");
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(statuses(&reply), ["200", "200", "200", "400"], "{reply}");
    proxy
        .wait_lines(
            &[
                " 400 DPE http1.content_length_and_chunked_not_allowed ",
                "/k4",
            ],
            1,
        )
        .await;
    assert_eq!(
        up.requests(),
        3,
        "/k4 or the request behind it was forwarded"
    );
    assert!(
        proxy.metrics().contains(
            r#"sluice_refused_total{check="framing",reason="content_length_and_chunked"} 3"#
        ),
        "{}",
        proxy.metrics()
    );

    // A connection's refusal is its own: one with a single framing is served.
    let reply = raw_tcp(
        proxy.addr(PORT),
        b"POST /one HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n1\r\na\r\n0\r\n\r\n",
        PATIENCE,
    )
    .await
    .expect("request");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    assert_eq!(up.requests(), 4);
    let forwarded = up.requests();

    for head in [
        // Two different lengths.
        "POST / HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        // A folded header line (obs-fold).
        "GET / HTTP/1.1\r\nHost: api.example.com\r\nX-A: 1\r\n 2\r\n\r\n",
        // A transfer coding other than chunked last.
        "POST / HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        // Too many header fields.
        &format!(
            "GET / HTTP/1.1\r\nHost: api.example.com\r\n{}\r\n",
            (0..101)
                .map(|i| format!("X-{i}: v\r\n"))
                .collect::<String>()
        ),
    ] {
        let reply = raw_tcp(proxy.addr(PORT), head.as_bytes(), Duration::from_secs(2))
            .await
            .expect("request");
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.starts_with("HTTP/1.1 400") || reply.starts_with("HTTP/1.1 431"),
            "{head:?}: {reply}"
        );
    }
    assert_eq!(
        up.requests(),
        forwarded,
        "a smuggling shape reached the upstream"
    );
}

/// An HTTP/2 client that keeps its connection open without sending requests is closed at the
/// idle timeout (Envoy's `idle_timeout`) with a GOAWAY, after its request was answered.
#[tokio::test]
async fn idle_h2_connections_are_closed_at_the_idle_timeout() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let up = HttpUpstream::start("127.0.0.1:0".parse().expect("addr"), "api")
        .await
        .expect("upstream");
    let gw = start_with(http_snapshot(up.addr()), |c| {
        c.idle_timeout = Duration::from_millis(400);
    })
    .await;
    let tcp = TcpStream::connect(gw.addr(PORT)).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::get("http://api.example.com/")
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    let idle_from = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(closed.is_ok(), "the idle connection stayed open");
    assert!(idle_from.elapsed() >= Duration::from_millis(300));
    wait_metric(&gw, r#"check="limit",reason="idle_timeout"} 1"#).await;
}

/// Sends one request on a kept-alive connection and reads its whole response (by its
/// `content-length`); the status line.
async fn exchange(tcp: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.expect("write");
    let head = read_head(tcp).await;
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse().ok())
        .expect("a content-length");
    let mut body = vec![0u8; length];
    tcp.read_exact(&mut body).await.expect("body");
    head.lines().next().unwrap_or_default().to_owned()
}

/// Between requests a kept-alive HTTP/1.1 connection is idle, not slow, as Envoy sees it: the
/// request head timeout runs from a head's first byte (so a connection quiet for longer than
/// it is still served), a head that then stalls is cut off at it, and a connection left idle
/// is closed at the idle timeout (Envoy's `idle_timeout`), each counted by its own reason.
#[tokio::test]
async fn kept_alive_connections_are_held_to_the_idle_timeout_and_heads_to_the_head_timeout() {
    let up = HttpUpstream::start("127.0.0.1:0".parse().expect("addr"), "up")
        .await
        .expect("upstream");
    let proxy = start_with(http_snapshot(up.addr()), |c| {
        c.request_head_timeout = Duration::from_millis(300);
        c.idle_timeout = Duration::from_millis(2000);
    })
    .await;
    let gw = proxy.addr(PORT);

    let mut quiet = TcpStream::connect(gw).await.expect("connect");
    assert!(exchange(&mut quiet, "/one").await.contains(" 200 "));
    // Quiet for three head timeouts (the scenario, not a wait for something to happen).
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(exchange(&mut quiet, "/two").await.contains(" 200 "));
    // A third head that stops halfway is cut off at the head timeout.
    quiet
        .write_all(b"GET /three HTTP/1.1\r\nHost: api.exa")
        .await
        .expect("write");
    assert!(
        closed_by_proxy(&mut quiet).await,
        "a stalled head stayed open"
    );
    wait_metric(&proxy, r#"check="limit",reason="request_head_timeout"} 1"#).await;

    // Left idle after a request: closed at the idle timeout.
    let mut idle = TcpStream::connect(gw).await.expect("connect");
    assert!(exchange(&mut idle, "/four").await.contains(" 200 "));
    assert!(
        closed_by_proxy(&mut idle).await,
        "an idle connection stayed open"
    );
    wait_metric(&proxy, r#"check="limit",reason="idle_timeout"} 1"#).await;
    assert!(
        proxy
            .metrics()
            .contains(r#"check="limit",reason="request_head_timeout"} 1"#),
        "the idle connection was not cut off as a slow head:\n{}",
        proxy.metrics()
    );
    assert_eq!(up.requests(), 3);
}

/// Polls the proxy's metrics until `needle` shows (counters move when the connection's task
/// ends, a moment after the client saw the close).
async fn wait_metric(proxy: &Running, needle: &str) {
    let until = tokio::time::Instant::now() + PATIENCE;
    while !proxy.metrics().contains(needle) {
        assert!(
            tokio::time::Instant::now() < until,
            "{needle} never showed in\n{}",
            proxy.metrics()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ClientHello peek is bounded in time (`tls_inspect_timeout`, 1.5 s in these tests) and
/// in bytes (16 KiB): a client that stops inside its ClientHello, and one that sends more
/// handshake bytes than that without completing it, are closed and counted.
#[tokio::test]
async fn client_hello_limits_close_and_count() {
    const TLS: u16 = 8443;
    let up = HttpUpstream::start("127.0.0.1:0".parse().expect("addr"), "up")
        .await
        .expect("upstream");
    let proxy = start(
        snapshot(
            vec![listener(
                TLS,
                vec![passthrough_chain("tls", &["api.example.com"], "up")],
            )],
            vec![cluster(
                "up",
                "api.example.com",
                443,
                static_endpoints(&[up.addr()]),
                json!({}),
            )],
        ),
        None,
    )
    .await;

    // A record header and the start of a ClientHello, then nothing.
    let mut stalled = TcpStream::connect(proxy.addr(TLS)).await.expect("connect");
    stalled
        .write_all(&[0x16, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3])
        .await
        .expect("write");
    assert!(
        closed_by_proxy(&mut stalled).await,
        "a stalled ClientHello stayed connected"
    );
    wait_metric(
        &proxy,
        r#"sluice_refused_total{check="limit",reason="client_hello_timeout"} 1"#,
    )
    .await;
    proxy.log_line(&["tls_inspector_timeout"]).await;

    // A ClientHello announced at 16,000 bytes, sent one byte per record: the records' headers
    // fill the 16 KiB before the ClientHello completes.
    let mut endless = vec![0x16, 3, 1, 0, 4, 1, 0, 0x3e, 0x80];
    for _ in 0..4000 {
        endless.extend_from_slice(&[0x16, 3, 1, 0, 1, 0]);
    }
    let mut large = TcpStream::connect(proxy.addr(TLS)).await.expect("connect");
    // The proxy may close while bytes are still in flight: the write may fail.
    let _ = large.write_all(&endless).await;
    assert!(
        closed_by_proxy(&mut large).await,
        "an oversized ClientHello stayed connected"
    );
    wait_metric(
        &proxy,
        r#"sluice_refused_total{check="limit",reason="client_hello_too_large"} 1"#,
    )
    .await;
    assert_eq!(up.connections(), 0);
}

/// Request heads beyond hyper's limits (64 KiB at the gateway, 100 fields) are answered `431`
/// by hyper itself; the connection ends with that error and is counted.
#[tokio::test]
async fn oversized_http1_heads_are_refused_and_counted() {
    let up = HttpUpstream::start("127.0.0.1:0".parse().expect("addr"), "up")
        .await
        .expect("upstream");
    let proxy = start(http_snapshot(up.addr()), None).await;
    let gw = proxy.addr(PORT);

    let fields = format!(
        "GET / HTTP/1.1\r\nHost: api.example.com\r\n{}\r\n",
        (0..101)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect::<String>()
    );
    let reply = raw_tcp(gw, fields.as_bytes(), PATIENCE)
        .await
        .expect("request");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    wait_metric(
        &proxy,
        r#"sluice_refused_total{check="limit",reason="request_head_too_large"} 1"#,
    )
    .await;

    // A head over 64 KiB in one field: hyper's buffer fills before the head ends. The proxy
    // closes with bytes unread, so the 431 may be lost to a reset; the count is not.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: api.example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let reply = raw_tcp(gw, big.as_bytes(), PATIENCE)
        .await
        .unwrap_or_default();
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
        "{reply}"
    );
    wait_metric(
        &proxy,
        r#"sluice_refused_total{check="limit",reason="request_head_too_large"} 2"#,
    )
    .await;
    assert_eq!(up.requests(), 0);
}

/// An HTTP/2 request whose header list is over 64 KiB is refused `431` on its own stream,
/// logged and counted (`request_head_too_large`); one over the h2 codec's own backstop
/// (256 KiB, the advertised `SETTINGS_MAX_HEADER_LIST_SIZE`) is refused `431` by h2 itself.
/// Neither is forwarded; the connection stays up and serves the next request.
#[tokio::test]
async fn oversized_h2_header_lists_are_refused_and_the_connection_serves_on() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let up = HttpUpstream::start("127.0.0.1:0".parse().expect("addr"), "api")
        .await
        .expect("upstream");
    let gw = start(http_snapshot(up.addr()), None).await;
    let tcp = TcpStream::connect(gw.addr(PORT)).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    let conn = tokio::spawn(conn);
    for (path, size) in [
        ("/big", 70 * 1024),
        ("/huge", 300 * 1024),
        ("/big2", 65 * 1024),
    ] {
        let big = http::Request::get(format!("http://api.example.com{path}"))
            .header("x-big", "a".repeat(size))
            .body(Empty::<bytes::Bytes>::new())
            .expect("request");
        let refused = send.send_request(big).await;
        let status = refused.as_ref().map(|r| r.status().as_u16());
        assert!(matches!(status, Ok(431)), "{path}: {refused:?}");
        send.ready().await.expect("connection still usable");
    }
    gw.wait_lines(&[" 431 DPE http2.header_list_too_large ", "/big"], 2)
        .await;
    wait_metric(
        &gw,
        r#"sluice_refused_total{check="limit",reason="request_head_too_large"} 2"#,
    )
    .await;
    let ok = http::Request::get("http://api.example.com/ok")
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    let resp = send.send_request(ok).await.expect("response");
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    assert_eq!(up.requests(), 1, "only the normal request was forwarded");
    assert!(!conn.is_finished());
    conn.abort();
}

/// A TCP stream through the gateway is closed at `tunnel_max_lifetime` however busy it is,
/// and logged with `max_duration_timeout`.
#[tokio::test]
async fn tunnels_close_at_their_max_lifetime() {
    const DB: u16 = 5432;
    let echo = sluice_test_support::TcpUpstream::start("127.0.0.1:0".parse().expect("addr"), "db")
        .await
        .expect("echo");
    let proxy = start_with(
        snapshot(
            vec![listener(DB, vec![tcp_chain("db", "db")])],
            vec![cluster(
                "db",
                "db.example.com",
                DB,
                static_endpoints(&[echo.addr()]),
                json!({}),
            )],
        ),
        |c| c.tunnel_max_lifetime = Some(Duration::from_secs(1)),
    )
    .await;
    let opened = std::time::Instant::now();
    let mut tcp = TcpStream::connect(proxy.addr(DB)).await.expect("connect");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(PATIENCE, tcp.read(&mut buf))
        .await
        .expect("banner in time")
        .expect("banner");
    assert_eq!(&buf[..n], b"db\n");
    // Busy all along: bytes both ways every 200 ms, until the proxy closes it.
    let closed = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if tcp.write_all(b"ping").await.is_err() {
            break true;
        }
        match tokio::time::timeout(PATIENCE, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => {}
            Err(_) => break false,
        }
        assert!(
            opened.elapsed() < PATIENCE,
            "the tunnel outlived its lifetime"
        );
    };
    assert!(closed, "the tunnel stopped echoing without closing");
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "{:?}",
        opened.elapsed()
    );
    let line = proxy.log_line(&["max_duration_timeout"]).await;
    assert!(line.contains("db"), "{line}");
    wait_metric(&proxy, r#"check="limit",reason="tunnel_max_lifetime"} 1"#).await;
}
