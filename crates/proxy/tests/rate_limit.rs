//! Envoy's HTTP local rate limit, end to end on loopback: EnvoyFilter YAML compiled by
//! `sluice-compile`, served by the proxy, real HTTP clients and upstream.
//!
//! Envoy's behaviour checked here (`local_ratelimit.cc`): the bucket starts with `max_tokens`,
//! each request takes one, refusals are `429` with body `local_rate_limited`, response flag `RL`,
//! details `local_rate_limited` and the configured `response_headers_to_add`; refused requests
//! reach no upstream; `tokens_per_fill` come back every `fill_interval`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use sluice_test_support::HttpUpstream;
use sluice_test_support::client::http_get;

const PORT: u16 = 8080;
const HOST: &str = "api.example.com";

/// A gateway HTTP server on `PORT` routing `HOST` to the upstream at `upstream`.
fn routing(upstream: SocketAddr) -> String {
    one_host_yaml(
        PORT,
        HOST,
        "HTTP",
        &[upstream],
        &route_rule(HOST, "name: api"),
        "",
    )
}

fn testdata(file: &str) -> String {
    let p = format!("{}/../../testdata/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// Starts an upstream and a gateway running `filter` over [`routing`].
async fn gateway_with(filter: &str) -> (Running, HttpUpstream) {
    let upstream = HttpUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)), "api")
        .await
        .expect("upstream");
    let yaml = format!("{}\n---\n{filter}", routing(upstream.addr()));
    let (snapshot, _) = compile_gateway(&yaml);
    assert!(!snapshot.rate_limits.is_empty(), "the filter applies");
    (start_snapshot(&snapshot).await, upstream)
}

async fn get(gw: &Running) -> (u16, http::HeaderMap, String) {
    http_get(gw.addr(PORT), HOST, "/").await.expect("request")
}

/// Istio's task (`istio-tasks/rate-limit/06-local_rate_limit_2.yaml`: 4 tokens per 60 s) at the
/// gateway: five quick requests give the documented `200 200 200 200 429`.
#[tokio::test]
async fn istio_task_four_per_minute() {
    let filter = testdata("acceptance/istio-tasks/rate-limit/06-local_rate_limit_2.yaml")
        .replace("SIDECAR_INBOUND", "GATEWAY")
        .replace("app: productpage", "istio: egressgateway");
    let (gw, upstream) = gateway_with(&filter).await;
    let mut codes = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let (status, headers, body) = get(&gw).await;
        codes.push(status);
        last = Some((headers, body));
    }
    assert_eq!(codes, [200, 200, 200, 200, 429]);
    let (headers, body) = last.expect("five replies");
    assert_eq!(body, "local_rate_limited");
    assert_eq!(
        headers.get("x-local-rate-limit").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(
        upstream.requests(),
        4,
        "the refused request reached no upstream"
    );
    let line = gw.log_line(&[" 429 RL local_rate_limited "]).await;
    assert!(line.contains(HOST), "{line}");
    gw.wait_lines(&[" 200 - via_upstream "], 4).await;
    let metrics = gw.metrics();
    for needle in [
        "envoy_http_local_rate_limit_enabled_total{stat_prefix=\"http_local_rate_limiter\"} 5",
        "envoy_http_local_rate_limit_ok_total{stat_prefix=\"http_local_rate_limiter\"} 4",
        "envoy_http_local_rate_limit_rate_limited_total{stat_prefix=\"http_local_rate_limiter\"} 1",
        "envoy_http_local_rate_limit_enforced_total{stat_prefix=\"http_local_rate_limiter\"} 1",
        "response_flags=\"RL\"",
    ] {
        assert!(metrics.contains(needle), "{needle} missing in\n{metrics}");
    }
    gw.stop().await;
}

/// The guide's filter, unchanged: a burst of 100 passes, what follows within the second is
/// refused with `x-rate-limited: true`.
#[tokio::test]
async fn guide_filter_burst_of_one_hundred() {
    let (gw, _upstream) = gateway_with(&testdata("guide/envoyfilter-egress-ratelimit.yaml")).await;
    let started = Instant::now();
    let replies = futures_util::future::join_all((0..110).map(|_| get(&gw))).await;
    let elapsed = started.elapsed();
    let ok = replies.iter().filter(|r| r.0 == 200).count();
    let limited: Vec<_> = replies.iter().filter(|r| r.0 == 429).collect();
    assert_eq!(ok + limited.len(), 110, "only 200 and 429");
    // 10 tokens come back per whole second since the first request.
    let refills = 10 * elapsed.as_secs() as usize;
    assert!(
        (100..=100 + refills).contains(&ok),
        "{ok} passed in {elapsed:?}"
    );
    let refused = limited.first().expect("some requests are refused");
    assert_eq!(
        refused.1.get("x-rate-limited").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(refused.2, "local_rate_limited");
    gw.stop().await;
}

/// The guide's filter with a shorter fill interval (0.2 s, 3 tokens, 2 per fill): tokens come
/// back after the interval, `tokens_per_fill` at a time.
#[tokio::test]
async fn tokens_return_after_the_fill_interval() {
    let filter = testdata("guide/envoyfilter-egress-ratelimit.yaml")
        .replace("max_tokens: 100", "max_tokens: 3")
        .replace("tokens_per_fill: 10", "tokens_per_fill: 2")
        .replace("fill_interval: 1s", "fill_interval: 0.2s");
    let (gw, _upstream) = gateway_with(&filter).await;
    let interval = Duration::from_millis(200);
    // The bucket is created (full) while the first request is handled: after `started`, and
    // before its reply is in (`first_reply`). Fills come at whole intervals from then.
    let started = Instant::now();
    let mut codes = vec![get(&gw).await.0];
    let first_reply = Instant::now();
    for _ in 0..3 {
        codes.push(get(&gw).await.0);
    }
    assert_eq!(codes, [200, 200, 200, 429]);

    // Real sockets, so real time (paused time would skip ahead whenever the runtime waits on
    // the kernel). Ask until the fill shows instead of sleeping for a guessed interval: a
    // refused request takes no token, so asking does not disturb the bucket.
    let mut codes = Vec::new();
    loop {
        let sent = Instant::now();
        let status = get(&gw).await.0;
        if status == 200 {
            assert!(
                started.elapsed() >= interval,
                "a token came back {:?} after the first request, before the fill interval",
                started.elapsed()
            );
            codes.push(status);
            break;
        }
        assert_eq!(status, 429);
        // The first fill is due by `first_reply + interval` at the latest: a request sent
        // after that must find it (this also bounds the loop).
        assert!(
            sent < first_reply + interval,
            "refused although sent {:?} after the first reply: no fill after the interval",
            sent - first_reply
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..2 {
        codes.push(get(&gw).await.0);
    }
    assert_eq!(&codes[..2], [200, 200], "tokens_per_fill came back");
    gw.stop().await;
}
