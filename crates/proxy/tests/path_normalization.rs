//! meshConfig `pathNormalization`, end to end on loopback: Istio YAML (Gateway, ServiceEntry,
//! VirtualService, an AuthorizationPolicy that DENYs `/admin/*`, the IstioOperator's meshConfig)
//! compiled by `sluice-compile`, served by the proxy, requests over HTTP/1.1 (request lines
//! written byte for byte: clients like curl remove dot segments themselves) and h2c, and an
//! upstream that reports the path it received.
//!
//! What Istio's proxies do in each mode (Envoy's `normalize_path`, `merge_slashes`,
//! `path_with_escaped_slashes_action`, as Istio sets them): the policy is decided on the
//! normalised path, that path is the one forwarded and logged, and an escaped NUL is a 400 with
//! details `path_normalization_failed`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_test_support::HttpUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PORT: u16 = 8080;
const HOST: &str = "api.example.com";
const STEP: Duration = Duration::from_secs(10);
const DENIED: (u16, &str) = (403, "RBAC: access denied");

/// A gateway HTTP server for `HOST` routed to `upstream`, a DENY on `/admin/*`, and the
/// meshConfig `pathNormalization` when `mode` is given.
fn config(upstream: SocketAddr, mode: Option<&str>) -> String {
    let mut yaml = one_host_yaml(
        PORT,
        HOST,
        "HTTP",
        &[upstream],
        &route_rule(HOST, "name: api"),
        "",
    );
    yaml.push_str(
        r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/admin/*"]
"#,
    );
    if let Some(mode) = mode {
        yaml.push_str(&format!(
            r#"---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {{name: mesh, namespace: istio-system}}
spec:
  meshConfig:
    pathNormalization: {{normalization: {mode}}}
"#
        ));
    }
    yaml
}

async fn gateway(mode: Option<&str>) -> (Running, HttpUpstream) {
    let upstream = HttpUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)), "api")
        .await
        .expect("upstream");
    let (snapshot, _) = compile_gateway(&config(upstream.addr(), mode));
    assert!(!snapshot.authz.is_empty(), "the policy applies");
    (start_snapshot(&snapshot).await, upstream)
}

#[derive(Clone, Copy, Debug)]
enum Proto {
    Http1,
    H2c,
}

const BOTH: [Proto; 2] = [Proto::Http1, Proto::H2c];

/// `GET target` on a new connection; the status and body of the answer.
async fn get(proxy: &Running, proto: Proto, target: &str) -> (u16, String) {
    let addr = proxy.addr(PORT);
    match proto {
        Proto::Http1 => http1_raw(addr, target).await,
        Proto::H2c => h2c(addr, target).await,
    }
}

/// The request line carries `target` exactly as written.
async fn http1_raw(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let head = read_head(&mut tcp).await;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {head}"));
    let mut body = Vec::new();
    tokio::time::timeout(STEP, tcp.read_to_end(&mut body))
        .await
        .expect("body in time")
        .expect("body");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .expect("chunk size");
        if size == 0 {
            break;
        }
        let data = &raw[eol + 2..];
        out.extend_from_slice(&data[..size]);
        raw = &data[size + 2..];
    }
    out
}

/// h2c with prior knowledge; `:path` is the URI's path as written.
async fn h2c(addr: SocketAddr, target: &str) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    let driver = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{HOST}{target}"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    assert_eq!(
        req.uri().path_and_query().map(|p| p.as_str()),
        Some(target),
        "the client sends the path as written"
    );
    let resp = tokio::time::timeout(STEP, sender.send_request(req))
        .await
        .expect("answer in time")
        .expect("h2c request");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    driver.abort();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Each target is refused by the policy, over both protocols, and reaches no upstream.
async fn denied(proxy: &Running, upstream: &HttpUpstream, targets: &[&str]) {
    for proto in BOTH {
        for target in targets {
            let before = upstream.requests();
            let (status, body) = get(proxy, proto, target).await;
            assert_eq!(
                (status, body.as_str()),
                DENIED,
                "{proto:?} {target} is /admin/* once normalised"
            );
            assert_eq!(
                upstream.requests(),
                before,
                "{proto:?} {target} reached the upstream"
            );
        }
    }
}

/// Each target is allowed, over both protocols, and the upstream receives `want`.
async fn forwarded(proxy: &Running, targets: &[(&str, &str)]) {
    for proto in BOTH {
        for (target, want) in targets {
            let (status, body) = get(proxy, proto, target).await;
            assert_eq!(status, 200, "{proto:?} {target}: {body}");
            assert_eq!(
                echo(&body)["path"].as_str(),
                Some(*want),
                "{proto:?} {target}: the upstream's path"
            );
        }
    }
}

#[tokio::test]
async fn dot_segments_and_encoded_dots_cannot_walk_around_a_deny_by_default() {
    // No pathNormalization in meshConfig: Istio's DEFAULT, which is BASE.
    let (proxy, upstream) = gateway(None).await;
    denied(
        &proxy,
        &upstream,
        &[
            "/admin/users",
            "/public/../admin/users",
            "/%2e%2e/admin/x",
            "/public/%2E%2E/admin/users",
            "/public/.%2e/admin/users",
            "/public/%2e%2E/../admin/users",
            "/public\\..\\admin\\users",
            "/%61dmin/users",
        ],
    )
    .await;
    forwarded(
        &proxy,
        &[
            // The path the upstream gets is the one authorised; the query is left alone.
            ("/public/./a/../b", "/public/b"),
            (
                "/public/./a/../b?next=/../admin/x",
                "/public/b?next=/../admin/x",
            ),
            // BASE merges no slashes (Istio's CVE-2021-31920 note): `//admin/x` is not `/admin/*`.
            ("//admin/x", "//admin/x"),
            ("/admin%2Fusers", "/admin%2Fusers"),
        ],
    )
    .await;

    // Envoy's canonicalizer refuses an escaped NUL: 400, empty body, no upstream.
    for proto in BOTH {
        let before = upstream.requests();
        let (status, body) = get(&proxy, proto, "/public/x%00").await;
        assert_eq!((status, body.as_str()), (400, ""), "{proto:?}");
        assert_eq!(upstream.requests(), before);
    }
    let refused = proxy.log_line(&["path_normalization_failed"]).await;
    assert!(
        refused.contains(" 400 - path_normalization_failed "),
        "{refused}"
    );

    // The access log shows the path as normalised, as Envoy's `%REQ(:PATH)%` does.
    proxy
        .wait_lines(&["\"GET /admin/users HTTP/1.1\" 403 "], 4)
        .await;
    proxy
        .log_line(&["\"GET /public/b?next=/../admin/x HTTP/2\" 200 "])
        .await;
    let log = proxy.log_text();
    assert!(
        !log.contains("%2e%2e"),
        "no path is logged as received:\n{log}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn merge_slashes_denies_doubled_slashes() {
    let (proxy, upstream) = gateway(Some("MERGE_SLASHES")).await;
    denied(
        &proxy,
        &upstream,
        &[
            "//admin/x",
            "/public/..//admin/x",
            "///admin//users",
            "/.//admin/x",
        ],
    )
    .await;
    forwarded(
        &proxy,
        &[
            ("/public//b//", "/public/b/"),
            ("/public//b?q=//x", "/public/b?q=//x"),
            // Encoded slashes are kept in this mode, as Envoy keeps them.
            ("/admin%2Fusers", "/admin%2Fusers"),
        ],
    )
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn decode_and_merge_slashes_denies_encoded_slashes() {
    let (proxy, upstream) = gateway(Some("DECODE_AND_MERGE_SLASHES")).await;
    denied(
        &proxy,
        &upstream,
        &[
            "/admin%2Fusers",
            "/admin%2fusers",
            "/admin%5Cusers",
            "/public/..%2Fadmin/users",
            "/%2F/admin%2F%2Fx",
        ],
    )
    .await;
    forwarded(&proxy, &[("/public%2Fb%5cc", "/public/b/c")]).await;
    proxy.stop().await;
}

#[tokio::test]
async fn none_forwards_the_path_as_received() {
    // Istio's NONE: no normalisation, so the policy sees (and the upstream gets) the raw path,
    // which is what this mode is documented to do.
    let (proxy, upstream) = gateway(Some("NONE")).await;
    denied(&proxy, &upstream, &["/admin/users"]).await;
    forwarded(
        &proxy,
        &[
            ("/public/../admin/users", "/public/../admin/users"),
            ("/%2e%2e/admin/x", "/%2e%2e/admin/x"),
        ],
    )
    .await;
    proxy.stop().await;
}
