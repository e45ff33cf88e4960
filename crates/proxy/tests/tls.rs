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
