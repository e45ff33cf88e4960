//! Outlier detection (DestinationRule `outlierDetection`): consecutive 5xx eject an endpoint
//! for `base_ejection_time`, within `max_ejection_percent`, and it returns afterwards.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sluice_test_support::client::http_get;
use sluice_test_support::{HttpUpstream, UpstreamOptions};

const PORT: u16 = 8080;
const HOST: &str = "od.test";

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn failing(name: &str) -> HttpUpstream {
    HttpUpstream::start_with(
        local(),
        name,
        UpstreamOptions::default().respond("/", 500, "broken"),
    )
    .await
    .expect("upstream")
}

async fn gateway(endpoints: &[SocketAddr], outlier: Value) -> Running {
    let snap = snapshot(
        vec![listener(
            PORT,
            vec![http_chain(
                PORT,
                vec![vhost(&[HOST], vec![forward_route("od", "od")])],
            )],
        )],
        vec![cluster(
            "od",
            HOST,
            80,
            static_endpoints(endpoints),
            json!({"outlier": outlier}),
        )],
    );
    start(snap, None).await
}

/// The value of `name{cluster_name="od"}`, 0 when absent.
fn metric(gw: &Running, name: &str) -> u64 {
    let prefix = format!("{name}{{cluster_name=\"od\"}} ");
    gw.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().expect("metric value"))
}

const ACTIVE: &str = "envoy_cluster_outlier_detection_ejections_active";
const ENFORCED: &str = "envoy_cluster_outlier_detection_ejections_enforced_total";

async fn get(gw: &Running) -> u16 {
    http_get(gw.addr(PORT), HOST, "/").await.expect("request").0
}

/// Sends requests until `bad` has answered `n` of them (at most 40 requests).
async fn until_served(gw: &Running, bad: &HttpUpstream, n: u64) {
    for _ in 0..40 {
        if bad.requests() >= n {
            break;
        }
        get(gw).await;
    }
    assert_eq!(bad.requests(), n, "the failing endpoint served {n}");
}

#[tokio::test]
async fn consecutive_5xx_eject_the_endpoint() {
    let good = HttpUpstream::start(local(), "good").await.expect("good");
    let bad = failing("bad").await;
    let gw = gateway(
        &[good.addr(), bad.addr()],
        json!({"consecutive_5xx": 5, "consecutive_gateway_errors": null, "interval": "1s",
               "base_ejection_time": "30s", "max_ejection_percent": 100}),
    )
    .await;
    until_served(&gw, &bad, 4).await;
    assert_eq!(metric(&gw, ENFORCED), 0, "not before the fifth 500");
    until_served(&gw, &bad, 5).await;
    assert_eq!(metric(&gw, ENFORCED), 1);
    assert_eq!(metric(&gw, ACTIVE), 1);
    let before = good.requests();
    for _ in 0..20 {
        assert_eq!(get(&gw).await, 200);
    }
    assert_eq!(bad.requests(), 5, "no traffic to the ejected endpoint");
    assert_eq!(good.requests(), before + 20);
    assert_eq!(metric(&gw, ACTIVE), 1);
}

#[tokio::test]
async fn an_ejected_endpoint_returns_after_its_time() {
    let good = HttpUpstream::start(local(), "good").await.expect("good");
    let bad = failing("bad").await;
    let gw = gateway(
        &[good.addr(), bad.addr()],
        json!({"consecutive_5xx": 2, "interval": "0.2s",
               "base_ejection_time": "1s", "max_ejection_percent": 100}),
    )
    .await;
    until_served(&gw, &bad, 2).await;
    let ejected = tokio::time::Instant::now();
    assert_eq!(metric(&gw, ACTIVE), 1);
    for _ in 0..4 {
        assert_eq!(get(&gw).await, 200);
    }
    assert_eq!(bad.requests(), 2, "ejected");
    // Back after 1s (at the first sweep after it): polled for at most 5s.
    let deadline = ejected + Duration::from_secs(5);
    while bad.requests() == 2 && tokio::time::Instant::now() < deadline {
        get(&gw).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(bad.requests(), 3, "back in rotation");
    assert!(
        ejected.elapsed() >= Duration::from_millis(900),
        "not before its time"
    );
    assert_eq!(metric(&gw, ACTIVE), 0);
    assert_eq!(metric(&gw, ENFORCED), 1);
}

#[tokio::test]
async fn max_ejection_percent_keeps_the_rest_in() {
    let a = failing("a").await;
    let b = failing("b").await;
    let gw = gateway(
        &[a.addr(), b.addr()],
        json!({"consecutive_5xx": 3, "interval": "10s",
               "base_ejection_time": "30s", "max_ejection_percent": 50}),
    )
    .await;
    for _ in 0..30 {
        assert_eq!(get(&gw).await, 500);
    }
    assert_eq!(metric(&gw, ENFORCED), 1, "the second would be 100% > 50%");
    assert_eq!(metric(&gw, ACTIVE), 1);
    let (lo, hi) = (
        a.requests().min(b.requests()),
        a.requests().max(b.requests()),
    );
    assert_eq!(lo, 3, "one endpoint ejected after 3 failures");
    assert_eq!(hi, 27, "the other still takes traffic");
}

/// Istio's default `minHealthPercent` 0 turns Envoy's panic threshold off: with its only
/// endpoint ejected, a cluster answers 503 `UH` until the endpoint returns.
#[tokio::test]
async fn with_every_endpoint_ejected_requests_get_503_uh() {
    let bad = failing("bad").await;
    let gw = gateway(
        &[bad.addr()],
        json!({"consecutive_5xx": 2, "interval": "10s", "base_ejection_time": "30s", "max_ejection_percent": 100}),
    )
    .await;
    assert_eq!(get(&gw).await, 500);
    assert_eq!(get(&gw).await, 500);
    assert_eq!(metric(&gw, ACTIVE), 1);
    assert_eq!(get(&gw).await, 503);
    assert_eq!(bad.requests(), 2, "an ejected endpoint got a request");
    gw.log_line(&[" 503 UH "]).await;
}
