//! The guide's local rate limit end to end: the `sluice` binary with Step 5's configuration
//! (plain HTTP in, TLS origination out) plus `envoyfilter-egress-ratelimit.yaml` unchanged
//! (100 tokens, 10 per second), a real DNS server and an HTTPS stand-in; every address is
//! loopback. A burst beyond 100 is refused with Envoy's `429 local_rate_limited`, flag `RL`,
//! and the filter's `x-rate-limited: true`.

use std::net::SocketAddr;

use std::time::{Duration, Instant};

mod common;

use common::{gateway, guide};

use sluice_test_support::client::http_get;
use sluice_test_support::{
    DnsServer, HttpsUpstream, TempDir, TestCa, UpstreamOptions, free_loopback_addr,
};

#[tokio::test(flavor = "multi_thread")]
async fn guide_rate_limit_refuses_after_the_burst() {
    let ca = TestCa::new("external-ca");
    let dir = TempDir::new("ratelimit");
    let ca_file = ca.write_ca_pem(dir.path());
    let upstream = HttpsUpstream::start(
        SocketAddr::new(free_loopback_addr(), 443),
        &ca.server_cert(&["api.external-service.com"]),
        "external-stand-in",
        UpstreamOptions::default(),
    )
    .await
    .expect("upstream");
    let dns = DnsServer::start([("api.external-service.com", vec![upstream.addr().ip()])])
        .await
        .expect("dns");

    let config: Vec<String> = [
        "gateway-tls-origination.yaml",
        "virtualservice-tls-origination.yaml",
        "destinationrule-tls-origination.yaml",
        "serviceentry-tls-origination.yaml",
        "mesh-config.yaml",
        "envoyfilter-egress-ratelimit.yaml",
    ]
    .iter()
    .map(|f| guide(f))
    .collect();
    let ca_env = ca_file.display().to_string();
    let (gw, bind) = gateway(&config, dns.addr(), &[("SSL_CERT_FILE", &ca_env)]).await;

    let addr = SocketAddr::new(bind, 80);
    let started = Instant::now();
    let replies = futures_util::future::join_all(
        (0..130).map(|_| http_get(addr, "api.external-service.com", "/data")),
    )
    .await;
    let elapsed = started.elapsed();
    let replies: Vec<_> = replies.into_iter().map(|r| r.expect("request")).collect();
    let ok = replies.iter().filter(|r| r.0 == 200).count();
    let refused: Vec<_> = replies.iter().filter(|r| r.0 == 429).collect();
    assert_eq!(ok + refused.len(), 130, "only 200 and 429");
    // The bucket holds 100 and gains 10 per whole second since the first request.
    let refills = 10 * elapsed.as_secs() as usize;
    assert!(
        (100..=100 + refills).contains(&ok),
        "{ok} passed in {elapsed:?}"
    );
    let (_, headers, body) = refused
        .first()
        .expect("requests beyond the burst are refused");
    assert_eq!(*body, "local_rate_limited");
    assert_eq!(
        headers.get("x-rate-limited").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    // The guide's access-log format (mesh-config.yaml) puts the code and flags on one line.
    gw.wait_for_log("429 RL", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}: {}", gw.stdout()));

    let (status, stats) = gw.admin_get("/stats/prometheus").expect("stats");
    assert_eq!(status, 200);
    assert!(
        stats.contains(
            "envoy_http_local_rate_limit_enforced_total{stat_prefix=\"http_local_rate_limiter\"}"
        ),
        "{stats}"
    );
    let (_, dump) = gw.admin_get("/config_dump").expect("config_dump");
    assert!(dump.contains("\"rate_limits\""), "{dump}");
    assert!(dump.contains("\"max_tokens\": 100") || dump.contains("\"max_tokens\":100"));
}
