//! Names at the gateway (security issue): one canonical spelling before routing and policy,
//! malformed or ambiguous authorities refused with 400 and nothing dialed, and a request for
//! another host than the TLS server name it arrived under refused with 421 (domain fronting).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::json;
use sluice_test_support::client::{https_get, raw_tcp};
use sluice_test_support::{HttpUpstream, TempDir, TestCa};

const PORT: u16 = 8080;

fn local0() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn status_of(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn malformed_and_ambiguous_authorities_are_refused() {
    let up = HttpUpstream::start(local0(), "up").await.expect("upstream");
    let snap = snapshot(
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
            static_endpoints(&[up.addr()]),
            json!({}),
        )],
    );
    let proxy = start(snap, None).await;
    let gw = proxy.addr(PORT);
    let ask = |head: &'static str| async move {
        raw_tcp(gw, head.as_bytes(), Duration::from_secs(5))
            .await
            .expect("request")
    };

    // Spellings of one name are one name, and the upstream sees the canonical one.
    let reply = ask("GET /a HTTP/1.1\r\nHost: API.Example.COM.\r\nConnection: close\r\n\r\n").await;
    assert!(
        status_of(&reply).contains(" 200 "),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let body = String::from_utf8_lossy(&reply);
    let json_start = body.find('{').expect("echo body");
    assert_eq!(echo(&body[json_start..])["host"], "api.example.com");
    assert_eq!(up.requests(), 1);

    for head in [
        "GET / HTTP/1.1\r\nHost: api..example.com\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: .api.example.com\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: api.example.com:0\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: api.example.com:99999\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: api.example.com:80x\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: ::1\r\nConnection: close\r\n\r\n",
        // Two different Host headers: which one would the upstream use?
        "GET / HTTP/1.1\r\nHost: api.example.com\r\nHost: evil.example.com\r\nConnection: close\r\n\r\n",
        // An absolute URI and a Host header that disagree.
        "GET http://api.example.com/ HTTP/1.1\r\nHost: evil.example.com\r\nConnection: close\r\n\r\n",
        // No Host at all.
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let reply = ask(head).await;
        assert!(
            status_of(&reply).contains(" 400 "),
            "{head:?}: {}",
            String::from_utf8_lossy(&reply)
        );
    }
    assert_eq!(up.requests(), 1, "a refused request reached the upstream");
    proxy.stop().await;
}

#[tokio::test]
async fn a_request_for_another_host_than_the_sni_is_misdirected() {
    let ca = TestCa::new("gateway-ca");
    let dir = TempDir::new("fronting");
    let (crt, key) = ca
        .server_cert(&["*.example.com"])
        .write(dir.path(), "server");
    let up = HttpUpstream::start(local0(), "up").await.expect("upstream");
    let chain = json!({
        "name": "wild",
        "match": {"transport": "tls", "server_names": ["*.example.com"]},
        "tls": {"mode": "SIMPLE", "certificate_chain": crt, "private_key": key},
        "app": {"http": {"route_config": "https.443", "virtual_hosts": [
            vhost(&["allowed.example.com"], vec![forward_route("allowed", "up")]),
            vhost(&["other.example.com"], vec![forward_route("other", "up")]),
        ]}},
    });
    let snap = snapshot(
        vec![listener(443, vec![chain])],
        vec![cluster(
            "up",
            "up.example.com",
            80,
            static_endpoints(&[up.addr()]),
            json!({}),
        )],
    );
    let proxy = start(snap, None).await;
    let roots = ca.ca_root_store();
    let (status, _, body) = https_get(
        proxy.addr(443),
        "allowed.example.com",
        "allowed.example.com",
        "/",
        &roots,
        None,
    )
    .await
    .expect("same host");
    assert_eq!(status, 200, "{body}");
    // The certificate covers both names, and both have routes: only the SNI's host is served
    // on this TLS session.
    let (status, _, body) = https_get(
        proxy.addr(443),
        "allowed.example.com",
        "other.example.com",
        "/",
        &roots,
        None,
    )
    .await
    .expect("fronted");
    assert_eq!(status, 421, "{body}");
    assert_eq!(up.requests(), 1);
    let line = proxy.log_line(&["misdirected_request"]).await;
    assert!(line.contains(" 421 "), "{line}");
    assert!(
        proxy
            .metrics()
            .contains(r#"sluice_refused_total{check="fronting",reason="host_differs_from_sni"} 1"#)
    );
    proxy.stop().await;
}
