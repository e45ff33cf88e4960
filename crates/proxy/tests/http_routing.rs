//! HTTP routing at the gateway: virtual hosts, first-match routes, actions, weights, rewrites,
//! header operations, timeouts, retries, pooling.

mod common;

use std::net::SocketAddr;

use common::*;
use http::Request;
use serde_json::{Value, json};
use sluice_test_support::client::{http_get, http_request};
use sluice_test_support::{HttpUpstream, UpstreamOptions};

const PORT: u16 = 8080;

fn route(name: &str, matches: Value, action: Value) -> Value {
    json!({"name": name, "match": {"any_of": [matches]}, "action": action})
}

fn fwd(cluster: &str) -> Value {
    json!({"forward": {"clusters": [{"cluster": cluster, "weight": 100}]}})
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

struct World {
    proxy: Running,
    v1: HttpUpstream,
    v2: HttpUpstream,
    bad: HttpUpstream,
    pool: HttpUpstream,
}

async fn world() -> World {
    let v1 = HttpUpstream::start(local(0), "v1").await.expect("v1");
    let v2 = HttpUpstream::start(local(0), "v2").await.expect("v2");
    let bad = HttpUpstream::start_with(
        local(0),
        "bad",
        UpstreamOptions::default().respond("/flaky", 503, "down"),
    )
    .await
    .expect("bad");
    let pool = HttpUpstream::start(local(0), "pool").await.expect("pool");
    let app_routes = vec![
        route(
            "exact",
            json!({"path": {"exact": "/exact"}}),
            json!({"direct_response": {"status": 200, "body": "exact"}}),
        ),
        route(
            "redirect",
            json!({"path": {"prefix": "/old"}}),
            json!({"redirect": {"uri": "/new", "status": 301}}),
        ),
        route(
            "by-header",
            json!({"headers": {"x-version": {"exact": "v2"}}}),
            fwd("v2"),
        ),
        json!({
            "name": "regex",
            "match": {"any_of": [{"path": {"regex": "/r/[0-9]+"}}]},
            "action": {"forward": {"clusters": [{"cluster": "v2", "weight": 100}], "rewrite": {"uri": "/rewritten"}}},
        }),
        json!({
            "name": "rewrite",
            "match": {"any_of": [{"path": {"prefix": "/api/"}}]},
            "action": {"forward": {
                "clusters": [{"cluster": "v1", "weight": 100}],
                "rewrite": {"uri": "/v1/", "authority": "internal.example.com"},
            }},
            "request_headers": {"set": {"x-added": "yes"}, "remove": ["x-remove-me"]},
            "response_headers": {"add": {"x-resp": "r"}},
        }),
        json!({
            "name": "split",
            "match": {"any_of": [{"path": {"prefix": "/split"}}]},
            "action": {"forward": {"clusters": [
                {"cluster": "v1", "weight": 80}, {"cluster": "v2", "weight": 20}
            ]}},
        }),
        json!({
            "name": "timeout",
            "match": {"any_of": [{"path": {"prefix": "/delay"}}]},
            "action": {"forward": {"clusters": [{"cluster": "v1", "weight": 100}], "timeout": "0.2s"}},
        }),
        json!({
            "name": "flaky",
            "match": {"any_of": [{"path": {"prefix": "/flaky"}}]},
            "action": {"forward": {
                "clusters": [{"cluster": "flaky", "weight": 100}],
                "retry": {"attempts": 2, "retry_on": ["5xx"]},
            }},
        }),
        json!({
            "name": "always-503",
            "match": {"any_of": [{"path": {"prefix": "/status/503"}}]},
            "action": {"forward": {
                "clusters": [{"cluster": "v1", "weight": 100}],
                "retry": {"attempts": 2, "per_try_timeout": "1s", "retry_on": ["retriable-status-codes", "503"]},
            }},
        }),
        forward_route("default", "v1"),
    ];
    let snap = snapshot(
        vec![listener(
            PORT,
            vec![http_chain(
                PORT,
                vec![
                    vhost(&["app.example.com"], app_routes),
                    vhost(&["pool.example.com"], vec![forward_route("pool", "pool")]),
                ],
            )],
        )],
        vec![
            cluster(
                "v1",
                "v1.example.com",
                80,
                static_endpoints(&[v1.addr()]),
                json!({}),
            ),
            cluster(
                "v2",
                "v2.example.com",
                80,
                static_endpoints(&[v2.addr()]),
                json!({}),
            ),
            cluster(
                "flaky",
                "flaky.example.com",
                80,
                static_endpoints(&[bad.addr(), v2.addr()]),
                json!({}),
            ),
            cluster(
                "pool",
                "pool.example.com",
                80,
                static_endpoints(&[pool.addr()]),
                json!({"lb": "LEAST_REQUEST"}),
            ),
        ],
    );
    let proxy = start(snap, None).await;
    World {
        proxy,
        v1,
        v2,
        bad,
        pool,
    }
}

#[tokio::test]
async fn routes_actions_and_headers() {
    let w = world().await;
    let addr = w.proxy.addr(PORT);

    let (status, _, body) = http_get(addr, "app.example.com", "/exact")
        .await
        .expect("exact");
    assert_eq!((status, body.as_str()), (200, "exact"));

    let (status, headers, _) = http_get(addr, "app.example.com:8080", "/old/page?q=1")
        .await
        .expect("redirect");
    assert_eq!(status, 301);
    assert_eq!(
        headers.get("location").and_then(|v| v.to_str().ok()),
        Some("http://app.example.com:8080/new?q=1")
    );

    let req = Request::get("/anything")
        .header("host", "app.example.com")
        .header("x-version", "v2")
        .body(String::new())
        .expect("request");
    let (status, _, body) = http_request(addr, req).await.expect("by header");
    assert_eq!(status, 200);
    assert_eq!(echo(&body)["upstream"], "v2");

    let (_, _, body) = http_get(addr, "app.example.com", "/r/42")
        .await
        .expect("regex");
    let seen = echo(&body);
    assert_eq!(
        (seen["upstream"].as_str(), seen["path"].as_str()),
        (Some("v2"), Some("/rewritten"))
    );
    assert_eq!(seen["headers"]["x-envoy-original-path"], "/r/42");

    let req = Request::get("/api/users?x=1")
        .header("host", "app.example.com")
        .header("x-remove-me", "secret")
        .header("x-forwarded-for", "10.1.2.3")
        .header("user-agent", "routing-test")
        .body(String::new())
        .expect("request");
    let (status, headers, body) = http_request(addr, req).await.expect("rewrite");
    assert_eq!(status, 200);
    let seen = echo(&body);
    assert_eq!(seen["upstream"], "v1");
    assert_eq!(seen["path"], "/v1/users?x=1");
    assert_eq!(seen["host"], "internal.example.com");
    assert_eq!(seen["headers"]["x-added"], "yes");
    assert!(seen["headers"].get("x-remove-me").is_none(), "{seen}");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
    let xff = seen["headers"]["x-forwarded-for"].as_str().unwrap_or("");
    assert!(xff.starts_with("10.1.2.3, 127."), "{xff}");
    assert_eq!(
        seen["headers"]["x-request-id"].as_str().map(str::len),
        Some(36)
    );
    assert_eq!(headers.get("x-resp").map(|v| v.as_bytes()), Some(&b"r"[..]));
    assert!(headers.contains_key("x-envoy-upstream-service-time"));
    let line = w.proxy.log_line(&["routing-test"]).await;
    assert!(
        line.contains("\"GET /api/users?x=1 HTTP/1.1\" 200 - via_upstream"),
        "{line}"
    );
    assert!(line.contains(" v1 ") && line.contains(" rewrite"), "{line}");

    let (status, _, body) = http_get(addr, "unknown.example.com", "/")
        .await
        .expect("unknown host");
    assert_eq!((status, body.as_str()), (404, ""));
    let line = w.proxy.log_line(&["unknown.example.com"]).await;
    assert!(line.contains(" 404 NR route_not_found "), "{line}");

    let metrics = w.proxy.metrics();
    assert!(metrics.contains("istio_requests_total{"), "{metrics}");
    assert!(metrics.contains("response_code=\"404\""), "{metrics}");
    assert!(metrics.contains("response_flags=\"NR\""), "{metrics}");
    w.proxy.stop().await;
}

#[tokio::test]
async fn weighted_split_follows_weights() {
    let w = world().await;
    let addr = w.proxy.addr(PORT);
    let mut v1 = 0;
    for _ in 0..200 {
        let (status, _, body) = http_get(addr, "app.example.com", "/split")
            .await
            .expect("split");
        assert_eq!(status, 200);
        if echo(&body)["upstream"] == "v1" {
            v1 += 1;
        }
    }
    // 80 % ± 15 points.
    assert!((130..=190).contains(&v1), "v1 got {v1} of 200");
    assert_eq!(w.v1.requests() + w.v2.requests(), 200);
    w.proxy.stop().await;
}

#[tokio::test]
async fn timeouts_and_retries() {
    let w = world().await;
    let addr = w.proxy.addr(PORT);

    let (status, _, body) = http_get(addr, "app.example.com", "/delay/2000")
        .await
        .expect("timeout");
    assert_eq!((status, body.as_str()), (504, "upstream request timeout"));
    let line = w.proxy.log_line(&["/delay/2000"]).await;
    assert!(line.contains(" 504 UT response_timeout "), "{line}");

    // Round robin over a failing and a healthy endpoint: a retry always lands on the healthy one.
    for _ in 0..6 {
        let (status, _, body) = http_get(addr, "app.example.com", "/flaky")
            .await
            .expect("flaky");
        assert_eq!(status, 200, "{body}");
    }
    assert!(w.bad.requests() >= 2, "the failing endpoint was tried");

    let before = w.v1.requests();
    let (status, _, _) = http_get(addr, "app.example.com", "/status/503")
        .await
        .expect("503");
    assert_eq!(status, 503);
    assert_eq!(w.v1.requests() - before, 3, "one try and two retries");
    let line = w.proxy.log_line(&["/status/503"]).await;
    assert!(line.contains(" 503 URX via_upstream "), "{line}");
    w.proxy.stop().await;
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let w = world().await;
    let addr = w.proxy.addr(PORT);
    for i in 0..20 {
        let (status, _, _) = http_get(addr, "pool.example.com", &format!("/p/{i}"))
            .await
            .expect("pooled");
        assert_eq!(status, 200);
    }
    assert_eq!(w.pool.requests(), 20);
    assert!(
        w.pool.connections() <= 2,
        "{} upstream connections",
        w.pool.connections()
    );
    w.proxy.stop().await;
}
