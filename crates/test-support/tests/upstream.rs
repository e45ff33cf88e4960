//! Upstream servers and clients against each other, over real sockets and real TLS.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_test_support::client::{self, http_get, https_get, raw_tcp};
use sluice_test_support::{
    HttpUpstream, HttpsUpstream, TcpUpstream, TempDir, TestCa, UpstreamOptions,
};

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test]
async fn https_round_trip_verifies_with_the_test_ca_only() {
    let ca = TestCa::new("upstream-ca");
    let cert = ca.server_cert(&["api.github.com", "127.0.10.1"]);
    let up = HttpsUpstream::start(any_port(), &cert, "github", UpstreamOptions::default())
        .await
        .expect("start");

    let (status, headers, body) = https_get(
        up.addr(),
        "api.github.com",
        "api.github.com",
        "/repos?x=1",
        &ca.ca_root_store(),
        None,
    )
    .await
    .expect("request");
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let v = json(&body);
    assert_eq!(v["upstream"], "github");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/repos?x=1");
    assert_eq!(v["host"], "api.github.com");
    assert_eq!(v["sni"], "api.github.com");
    assert_eq!(v["alpn"], "http/1.1");
    assert_eq!(v["client_cert_cn"], Value::Null);
    assert_eq!(up.requests(), 1);

    // an IP SAN, with no SNI sent for an IP literal
    let (status, _, body) = https_get(
        up.addr(),
        "127.0.10.1",
        "127.0.10.1",
        "/",
        &ca.ca_root_store(),
        None,
    )
    .await
    .expect("IP SAN");
    assert_eq!(status, 200);
    assert_eq!(json(&body)["sni"], Value::Null);

    // another CA does not verify
    let other = TestCa::new("other-ca");
    let err = https_get(
        up.addr(),
        "api.github.com",
        "api.github.com",
        "/",
        &other.ca_root_store(),
        None,
    )
    .await
    .expect_err("must not verify with another CA");
    assert!(format!("{err:#}").contains("certificate"), "{err:#}");

    // neither does a name the certificate lacks
    let err = https_get(
        up.addr(),
        "evil.com",
        "evil.com",
        "/",
        &ca.ca_root_store(),
        None,
    )
    .await
    .expect_err("wrong name");
    assert!(format!("{err:#}").contains("certificate"), "{err:#}");
    assert_eq!(up.requests(), 2);
}

#[tokio::test]
async fn expired_certificate_is_rejected() {
    let ca = TestCa::new("ca");
    let cert = ca.expired_server_cert(&["old.example.com"]);
    let up = HttpsUpstream::start(any_port(), &cert, "old", UpstreamOptions::default())
        .await
        .expect("start");
    let err = https_get(
        up.addr(),
        "old.example.com",
        "old.example.com",
        "/",
        &ca.ca_root_store(),
        None,
    )
    .await
    .expect_err("expired");
    assert!(
        format!("{err:#}").to_lowercase().contains("expired"),
        "{err:#}"
    );
}

#[tokio::test]
async fn mutual_upstream_requires_a_client_certificate() {
    let ca = TestCa::new("mesh-ca");
    let cert = ca.server_cert(&["db.internal"]);
    let up = HttpsUpstream::start(
        any_port(),
        &cert,
        "mutual",
        UpstreamOptions::default().require_client_cert(&ca),
    )
    .await
    .expect("start");
    let roots = ca.ca_root_store();

    let err = https_get(up.addr(), "db.internal", "db.internal", "/", &roots, None)
        .await
        .expect_err("no client cert must fail");
    assert_eq!(up.requests(), 0, "{err:#}");

    // a client cert from another CA fails too
    let stranger = TestCa::new("stranger").client_cert("mallory", None);
    https_get(
        up.addr(),
        "db.internal",
        "db.internal",
        "/",
        &roots,
        Some(&stranger),
    )
    .await
    .expect_err("foreign client cert must fail");
    assert_eq!(up.requests(), 0);

    let client = ca.client_cert("sleep", Some("spiffe://cluster.local/ns/default/sa/sleep"));
    let (status, _, body) = https_get(
        up.addr(),
        "db.internal",
        "db.internal",
        "/",
        &roots,
        Some(&client),
    )
    .await
    .expect("with client cert");
    assert_eq!(status, 200);
    assert_eq!(json(&body)["client_cert_cn"], "sleep");
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn http_paths_status_delay_and_custom() {
    let up = HttpUpstream::start_with(
        any_port(),
        "plain",
        UpstreamOptions::default().respond("/teapot", 418, "short and stout"),
    )
    .await
    .expect("start");
    let (status, _, body) = http_get(up.addr(), "example.com", "/status/503")
        .await
        .expect("503");
    assert_eq!(status, 503);
    let v = json(&body);
    assert_eq!(
        (v["upstream"].as_str(), v["host"].as_str()),
        (Some("plain"), Some("example.com"))
    );
    assert_eq!(v["version"], "HTTP/1.1");

    let t = Instant::now();
    let (status, _, _) = http_get(up.addr(), "example.com", "/delay/150")
        .await
        .expect("delay");
    assert_eq!(status, 200);
    assert!(t.elapsed() >= Duration::from_millis(150));

    let (status, headers, body) = http_get(up.addr(), "example.com", "/teapot?q")
        .await
        .expect("custom");
    assert_eq!((status, body.as_str()), (418, "short and stout"));
    assert_eq!(headers["x-upstream"], "plain");
    assert_eq!(up.requests(), 3);
}

#[tokio::test]
async fn h2_by_alpn_and_h2c_with_curl() {
    let ca = TestCa::new("ca");
    let dir = TempDir::new("h2");
    let ca_path = ca.write_ca_pem(dir.path());
    let cert = ca.server_cert(&["h2.example.com"]);
    let tls = HttpsUpstream::start(any_port(), &cert, "h2", UpstreamOptions::default())
        .await
        .expect("start");
    let resolve = format!("h2.example.com:{}:127.0.0.1", tls.addr().port());
    let url = format!("https://h2.example.com:{}/x", tls.addr().port());
    let out = client::curl(&[
        "-sS",
        "--http2",
        "--cacert",
        ca_path.to_str().expect("utf8"),
        "--resolve",
        &resolve,
        &url,
    ])
    .await
    .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(v["alpn"], "h2");
    assert_eq!(v["version"], "HTTP/2.0");
    assert_eq!(v["host"], format!("h2.example.com:{}", tls.addr().port()));

    let plain = HttpUpstream::start(any_port(), "h2c").await.expect("start");
    let url = format!("http://{}/y", plain.addr());
    let out = client::curl(&["-sS", "--http2-prior-knowledge", &url])
        .await
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        json(&String::from_utf8_lossy(&out.stdout))["version"],
        "HTTP/2.0"
    );
}

#[tokio::test]
async fn tcp_upstream_banner_and_echo_and_drop_closes() {
    let up = TcpUpstream::start(any_port(), "db").await.expect("start");
    let addr = up.addr();
    let got = raw_tcp(addr, b"ping\n", Duration::from_millis(300))
        .await
        .expect("tcp");
    assert_eq!(got, b"db\nping\n");
    assert_eq!(up.connections(), 1);
    drop(up);
    let err = tokio::net::TcpStream::connect(addr).await;
    assert!(err.is_err(), "listener must be closed after drop");
}

#[tokio::test]
async fn fixed_port_on_a_distinct_loopback_address() {
    let ip = sluice_test_support::free_loopback_addr();
    let up = HttpUpstream::start(SocketAddr::new(ip, 80), "fixed")
        .await
        .expect("start on :80");
    assert_eq!(up.addr(), SocketAddr::new(ip, 80));
    let (status, _, _) = http_get(up.addr(), "x", "/").await.expect("get");
    assert_eq!(status, 200);
    drop(up);
    // the same address/port can be bound again right away
    let again = HttpUpstream::start(SocketAddr::new(ip, 80), "fixed")
        .await
        .expect("rebind");
    let (status, _, _) = http_get(again.addr(), "x", "/").await.expect("get");
    assert_eq!(status, 200);
}

#[tokio::test]
#[should_panic(expected = "loopback")]
async fn non_loopback_is_a_test_bug() {
    let _ = HttpUpstream::start("0.0.0.0:0".parse().expect("addr"), "bad").await;
}
