//! The global rate limit end to end: `sluice gateway` processes sharing one real
//! `redis-server`, Istio's EnvoyFilter shapes (`envoy.filters.http.ratelimit` before the
//! router, `rate_limits` actions) and the rate-limit service's ConfigMap, unchanged. Every
//! address is loopback; every process is stopped by its PID.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod common;

use common::{bin, gateway_at, start};

use sluice_test_support::client::http_get;
use sluice_test_support::{
    DnsServer, HttpUpstream, RedisServer, SluiceProcess, TempDir, free_loopback_addr,
};

const HOST: &str = "api.partner.test";

/// A gateway for `api.partner.test:80`, a global rate limit of `per_second` requests per
/// second on a `generic_key` descriptor (Istio's task shapes), and an access log on stdout.
fn config(per_second: u32, failure_mode_deny: bool, timeout: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["{HOST}"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: partner, namespace: istio-system}}
spec:
  hosts: ["{HOST}"]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: partner, namespace: istio-system}}
spec:
  hosts: ["{HOST}"]
  gateways: [egress]
  http:
  - name: partner
    route: [{{destination: {{host: "{HOST}", port: {{number: 80}}}}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: filter-ratelimit, namespace: istio-system}}
spec:
  workloadSelector:
    labels: {{istio: egressgateway}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: GATEWAY
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {{name: envoy.filters.http.router}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
          domain: egress
          failure_mode_deny: {failure_mode_deny}
          timeout: {timeout}
          rate_limit_service:
            grpc_service:
              envoy_grpc: {{cluster_name: outbound|8081||ratelimit.default.svc.cluster.local}}
            transport_api_version: V3
  - applyTo: VIRTUAL_HOST
    match:
      context: GATEWAY
      routeConfiguration: {{vhost: {{name: "", route: {{action: ANY}}}}}}
    patch:
      operation: MERGE
      value:
        rate_limits:
        - actions:
          - generic_key: {{descriptor_value: partner}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: ratelimit-config, namespace: istio-system}}
data:
  config.yaml: |
    domain: egress
    descriptors:
      - key: generic_key
        value: partner
        rate_limit:
          unit: second
          requests_per_unit: {per_second}
---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {{name: mesh, namespace: istio-system}}
spec:
  meshConfig:
    accessLogFile: /dev/stdout
"#
    )
}

struct Setup {
    _dir: TempDir,
    _upstream: HttpUpstream,
    dns: DnsServer,
    file: String,
}

async fn setup(config: String) -> Setup {
    let dir = TempDir::new("global-rl");
    let file = dir.join("config.yaml");
    std::fs::write(&file, config).expect("write config");
    let upstream = HttpUpstream::start(SocketAddr::new(free_loopback_addr(), 80), "partner")
        .await
        .expect("upstream");
    let dns = DnsServer::start([(HOST, vec![upstream.addr().ip()])])
        .await
        .expect("dns");
    Setup {
        _dir: dir,
        _upstream: upstream,
        dns,
        file: file.display().to_string(),
    }
}

async fn gateway_with_redis(s: &Setup, redis: &RedisServer) -> (SluiceProcess, SocketAddr) {
    let bind = free_loopback_addr();
    let url = redis.url();
    let gw = gateway_at(
        bind,
        std::slice::from_ref(&s.file),
        s.dns.addr(),
        None,
        &[("SLUICE_RATE_LIMIT_REDIS", &url)],
    )
    .await;
    (gw, SocketAddr::new(bind, 80))
}

/// One request's outcome: status, when it was sent and when its answer arrived.
struct Sample {
    status: u16,
    sent: Duration,
    done: Duration,
}

/// Closed-loop clients spread over `gateways` until `run` has passed since `t0`.
async fn load(gateways: &[SocketAddr], clients: usize, t0: Instant, run: Duration) -> Vec<Sample> {
    let tasks = (0..clients).map(|i| {
        let gw = gateways[i % gateways.len()];
        tokio::spawn(async move {
            let mut out = Vec::new();
            while t0.elapsed() < run {
                let sent = t0.elapsed();
                let status = match http_get(gw, HOST, "/quota").await {
                    Ok(r) => r.0,
                    Err(_) => 0,
                };
                out.push(Sample {
                    status,
                    sent,
                    done: t0.elapsed(),
                });
            }
            out
        })
    });
    futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(|r| r.expect("client task"))
        .collect()
}

/// A sound lower bound on the most admissions any one-second window held: an admission
/// happened between its request's send and answer, so those whose whole interval lies inside
/// `[t, t + 1s)` were certainly admitted in it.
fn busiest_second(admitted: &[&Sample]) -> usize {
    admitted
        .iter()
        .map(|start| {
            let end = start.sent + Duration::from_secs(1);
            admitted
                .iter()
                .filter(|s| s.sent >= start.sent && s.done < end)
                .count()
        })
        .max()
        .unwrap_or(0)
}

fn metric(gw: &SluiceProcess, name: &str) -> f64 {
    let (_, stats) = gw.admin_get("/stats/prometheus").expect("stats");
    common::metric(&stats, name)
}

/// Two replicas, one Redis: together they admit the configured rate (within 5 % over 10 s),
/// and no one-second window — across a window boundary included — holds more than the limit.
/// Refusals are Envoy's: 429, `x-envoy-ratelimited`, flag `RL`.
#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_hold_one_combined_limit() {
    const RATE: u32 = 20;
    let redis = RedisServer::start().expect("redis-server");
    let s = setup(config(RATE, false, "1s")).await;
    let (a, a_addr) = gateway_with_redis(&s, &redis).await;
    let (b, b_addr) = gateway_with_redis(&s, &redis).await;

    let t0 = Instant::now();
    let run = Duration::from_secs(10);
    let samples = load(&[a_addr, b_addr], 8, t0, run).await;
    let admitted: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.status == 200 && s.done < run)
        .collect();
    let refused = samples.iter().filter(|s| s.status == 429).count();
    let other: Vec<u16> = samples
        .iter()
        .map(|s| s.status)
        .filter(|c| *c != 200 && *c != 429)
        .collect();
    assert!(other.is_empty(), "unexpected statuses: {other:?}");
    let want = f64::from(RATE) * run.as_secs_f64();
    let got = admitted.len() as f64;
    eprintln!(
        "admitted {got} (configured {want}), refused {refused}, busiest second {}",
        busiest_second(&admitted)
    );
    assert!(
        (got - want).abs() <= want * 0.05,
        "admitted {got} in {run:?}, configured {want} (±5%); {refused} refused"
    );
    assert!(refused > admitted.len(), "the load exceeded the limit");
    let busiest = busiest_second(&admitted);
    assert!(
        busiest <= RATE as usize,
        "{busiest} admissions within one second; the limit is {RATE}"
    );
    // Both replicas served, and refused, part of it.
    for gw in [&a, &b] {
        assert!(metric(gw, "envoy_cluster_ratelimit_ok_total") > 0.0);
        assert!(metric(gw, "envoy_cluster_ratelimit_over_limit_total") > 0.0);
    }

    let r = http_get(a_addr, HOST, "/quota").await.expect("request");
    if r.0 == 429 {
        assert_eq!(
            r.1.get("x-envoy-ratelimited").map(|v| v.as_bytes()),
            Some(&b"true"[..]),
            "{:?}",
            r.1
        );
    }
    a.wait_for_log(" 429 RL request_rate_limited ", Duration::from_secs(5))
        .expect("the access log names the refusal");
}

/// Redis slow (paused) then gone: with Envoy's default fail-open mode every request still
/// gets through, none waits much past the filter's timeout, and each failure is counted.
#[tokio::test(flavor = "multi_thread")]
async fn store_failure_fails_open_within_the_timeout() {
    let mut redis = RedisServer::start().expect("redis-server");
    let s = setup(config(5, false, "0.2s")).await;
    let (gw, addr) = gateway_with_redis(&s, &redis).await;
    let warm = http_get(addr, HOST, "/quota").await.expect("request");
    assert_eq!(warm.0, 200);

    redis.pause();
    let slowest = outage(addr).await;
    redis.resume();
    redis.kill();
    let after_kill = outage(addr).await;
    for (what, (statuses, slowest)) in [("paused", slowest), ("killed", after_kill)] {
        assert!(
            statuses.iter().all(|c| *c == 200),
            "{what}: fail-open lets every request through: {statuses:?}"
        );
        assert!(
            slowest < Duration::from_millis(1500),
            "{what}: a request took {slowest:?}; the timeout is 200ms"
        );
    }
    assert!(metric(&gw, "envoy_cluster_ratelimit_error_total") >= 10.0);
    assert!(metric(&gw, "envoy_cluster_ratelimit_failure_mode_allowed_total") >= 10.0);
}

/// With `failure_mode_deny: true` a store that cannot answer refuses: 500, flag `RLSE`,
/// within the timeout.
#[tokio::test(flavor = "multi_thread")]
async fn store_failure_with_failure_mode_deny_refuses() {
    let mut redis = RedisServer::start().expect("redis-server");
    let s = setup(config(5, true, "0.2s")).await;
    let (gw, addr) = gateway_with_redis(&s, &redis).await;
    assert_eq!(
        http_get(addr, HOST, "/quota").await.expect("request").0,
        200
    );
    redis.pause();
    let (paused, slowest_paused) = outage(addr).await;
    redis.kill();
    let (killed, slowest_killed) = outage(addr).await;
    assert!(
        paused.iter().chain(&killed).all(|c| *c == 500),
        "{paused:?} {killed:?}"
    );
    assert!(slowest_paused.max(slowest_killed) < Duration::from_millis(1500));
    gw.wait_for_log(" 500 RLSE rate_limiter_error ", Duration::from_secs(5))
        .expect("the access log names the store failure");
    assert!(metric(&gw, "envoy_cluster_ratelimit_error_total") >= 10.0);
}

/// Ten sequential requests during an outage: their statuses and the slowest.
async fn outage(addr: SocketAddr) -> (Vec<u16>, Duration) {
    let mut statuses = Vec::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(5), http_get(addr, HOST, "/quota"))
            .await
            .expect("answered within 5s")
            .expect("request");
        slowest = slowest.max(t.elapsed());
        statuses.push(r.0);
    }
    (statuses, slowest)
}

/// Without a store, a config asking for a global rate limit is refused at start (exit 2),
/// naming the flag.
#[tokio::test(flavor = "multi_thread")]
async fn global_limit_without_a_store_is_refused_at_start() {
    let s = setup(config(5, false, "1s")).await;
    let out = std::process::Command::new(bin())
        .args([
            "gateway",
            "-c",
            &s.file,
            "--bind",
            &free_loopback_addr().to_string(),
        ])
        .args([
            "--admin",
            &SocketAddr::new(free_loopback_addr(), 15000).to_string(),
        ])
        .env_remove("SLUICE_RATE_LIMIT_REDIS")
        .output()
        .expect("run sluice");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--rate-limit-redis"), "{err}");
}

/// Istio's own global rate-limit task (files 01–05 of
/// `tasks/policy-enforcement/rate-limit`), unchanged, at a gateway labelled like Istio's
/// ingress gateway: `/productpage` twice → 200 then 429 (1/min); `/api/v1/products/1..3` →
/// 200, 200, 429 (the `api` route's 2/min).
#[tokio::test(flavor = "multi_thread")]
async fn istio_global_rate_limit_task() {
    let redis = RedisServer::start().expect("redis-server");
    let dir = TempDir::new("istio-grl");
    let upstream = HttpUpstream::start(SocketAddr::new(free_loopback_addr(), 9080), "productpage")
        .await
        .expect("upstream");
    let name = "productpage.default.svc.cluster.local";
    let dns = DnsServer::start([(name, vec![upstream.addr().ip()])])
        .await
        .expect("dns");
    let extra = dir.join("bookinfo.yaml");
    std::fs::write(
        &extra,
        format!(
            r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bookinfo-gateway, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: productpage, namespace: default}}
spec:
  hosts: [{name}]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: DNS
"#
        ),
    )
    .expect("write");
    let task = |f: &str| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/acceptance/istio-tasks/rate-limit")
            .join(f)
            .display()
            .to_string()
    };
    let bind = free_loopback_addr();
    let admin = SocketAddr::new(bind, 15000);
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("gateway");
    for f in [
        "01-global_rate_limit_1.yaml",
        "02-global_rate_limit_3.yaml",
        "03-global_rate_limit_4.yaml",
        "04-global_rate_limit_advanced_case_1.yaml",
        "05-global_rate_limit_advanced_case_2.yaml",
    ] {
        cmd.args(["-c", &task(f)]);
    }
    cmd.args(["-c", &extra.display().to_string()]);
    cmd.args(["--labels", "istio=ingressgateway"]);
    cmd.args(["--bind", &bind.to_string(), "--admin", &admin.to_string()]);
    cmd.args(["--dns-server", &dns.addr().to_string()]);
    cmd.args(["--allow-range", "127.0.0.0/8"]);
    cmd.args(["--rate-limit-redis", &redis.url()]);
    let _gw = start(cmd, admin).await;

    let addr = SocketAddr::new(bind, 8080);
    let get = |path: &'static str| async move {
        http_get(addr, "bookinfo.example", path)
            .await
            .expect("request")
            .0
    };
    assert_eq!(get("/productpage").await, 200);
    assert_eq!(get("/productpage").await, 429);
    assert_eq!(get("/api/v1/products/1").await, 200);
    assert_eq!(get("/api/v1/products/2").await, 200);
    assert_eq!(get("/api/v1/products/3").await, 429);
}
