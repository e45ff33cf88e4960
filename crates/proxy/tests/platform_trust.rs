//! `Trust::Platform` reads the platform store, which honours `SSL_CERT_FILE`. The variable
//! must be set before the first load, so the test runs itself again as a child process with
//! the variable in its environment (no `set_var` racing other tests).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::json;
use sluice_test_support::client::http_get;
use sluice_test_support::{HttpsUpstream, TempDir, TestCa, UpstreamOptions};

const CHILD: &str = "SLUICE_PLATFORM_TRUST_CHILD";
const TEST: &str = "platform_trust_honours_ssl_cert_file";

#[tokio::test]
async fn platform_trust_honours_ssl_cert_file() {
    if std::env::var_os(CHILD).is_some() {
        return child().await;
    }
    let dir = TempDir::new("platform-trust");
    let exe = std::env::current_exe().expect("test binary");
    let run = tokio::process::Command::new(exe)
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("SSL_CERT_FILE", dir.join("ca.crt"))
        .env_remove("SSL_CERT_DIR")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("child in time")
        .expect("child runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn child() {
    let cert_file = std::env::var_os("SSL_CERT_FILE").expect("SSL_CERT_FILE");
    let ca = TestCa::new("platform-ca");
    std::fs::write(&cert_file, ca.cert_pem()).expect("write the platform store");
    let other = TestCa::new("not-in-the-store");
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    let trusted = HttpsUpstream::start(
        local,
        &ca.server_cert(&["api.github.com"]),
        "trusted",
        UpstreamOptions::default(),
    )
    .await
    .expect("trusted");
    let untrusted = HttpsUpstream::start(
        local,
        &other.server_cert(&["api.github.com"]),
        "untrusted",
        UpstreamOptions::default(),
    )
    .await
    .expect("untrusted");
    let tls = json!({"tls": {"mode": "SIMPLE", "sni": "api.github.com", "trust": "platform"}});
    let snap = snapshot(
        vec![listener(
            8080,
            vec![http_chain(
                8080,
                vec![
                    vhost(&["trusted.test"], vec![forward_route("t", "trusted")]),
                    vhost(&["untrusted.test"], vec![forward_route("u", "untrusted")]),
                ],
            )],
        )],
        vec![
            cluster(
                "trusted",
                "api.github.com",
                443,
                static_endpoints(&[trusted.addr()]),
                tls.clone(),
            ),
            cluster(
                "untrusted",
                "api.github.com",
                443,
                static_endpoints(&[untrusted.addr()]),
                tls,
            ),
        ],
    );
    let proxy = start(snap, None).await;
    let (status, _, body) = http_get(proxy.addr(8080), "trusted.test", "/")
        .await
        .expect("trusted");
    assert_eq!(status, 200, "{body}");
    assert_eq!(echo(&body)["sni"], "api.github.com");
    let (status, _, _) = http_get(proxy.addr(8080), "untrusted.test", "/")
        .await
        .expect("untrusted");
    assert_eq!(status, 503);
    proxy.stop().await;
}
