//! Envoy's HTTP local rate limit (`envoy.filters.http.local_ratelimit`), in Envoy's order:
//! after authorization (Istio's RBAC filters) and before the router, so a refused request
//! reaches no upstream.
//!
//! Per request and per filter of the route configuration (Envoy's `LocalRateLimitFilter::
//! decodeHeaders`, `source/extensions/filters/http/local_ratelimit/local_ratelimit.cc`):
//! 1. the configuration is the route's `typed_per_filter_config`, else its virtual host's, else
//!    the filter's own (a `disabled` filter runs only where a route configures it);
//! 2. not `filter_enabled` for this request (runtime fraction) → nothing happens;
//! 3. `enabled` is counted; a token is taken → `ok`, else `rate_limited`;
//! 4. over the limit and `filter_enforced` → `enforced`, and the local reply: status 429 (or
//!    `status`), body `local_rate_limited`, response flag `RL`, details `local_rate_limited`,
//!    `response_headers_to_add`. Not enforced → `request_headers_to_add_when_not_enforced`, and
//!    the request goes on.
//!
//! The token bucket is Envoy's (`type.v3.TokenBucket`): it starts with `max_tokens`, gains
//! `tokens_per_fill` every whole `fill_interval` (never more than `max_tokens`), and each request
//! takes one. One bucket per configuration object, shared by every connection of the proxy
//! (Envoy's default; `local_rate_limit_per_downstream_connection` is not supported). Time is
//! tokio's clock, so tests run with paused time. A bucket survives a reload whose configuration
//! keeps the same bucket for the same place; a changed one starts full.

pub mod global;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use sluice_snapshot::Snapshot;
use sluice_snapshot::ratelimit::{AppendAction, HeaderToAdd, LocalRateLimit, TokenBucket};
use tokio::time::Instant;

use crate::telemetry::metrics::Metrics;

/// Envoy's body and response code details of a local rate limit reply.
pub const LOCAL_RATE_LIMITED: &str = "local_rate_limited";

/// Which local rate limit filters of the chain to run: the global filter sits between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    BeforeGlobal,
    AfterGlobal,
}

/// A refusal: the local reply to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub status: u16,
    pub headers: Vec<HeaderToAdd>,
    /// Envoy's response code details: `local_rate_limited` or `request_rate_limited`.
    pub details: &'static str,
}

/// A token bucket on tokio's clock.
#[derive(Debug)]
pub struct Bucket {
    config: TokenBucket,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: u32,
    /// The time of the last (virtual) fill: fills happen at whole intervals from here.
    last_fill: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(config: TokenBucket) -> Bucket {
        Bucket {
            config,
            state: Mutex::new(State {
                tokens: config.max_tokens,
                last_fill: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the fills due by `now`, then takes a token if there is one.
    pub fn try_take(&self) -> bool {
        let now = Instant::now();
        let mut s = self.lock();
        let interval = self.config.fill_interval.as_nanos().max(1);
        let elapsed = now.saturating_duration_since(s.last_fill).as_nanos();
        let fills = elapsed / interval;
        if fills > 0 {
            let added = fills.saturating_mul(u128::from(self.config.tokens_per_fill));
            let tokens = (u128::from(s.tokens) + added).min(u128::from(self.config.max_tokens));
            s.tokens = u32::try_from(tokens).unwrap_or(self.config.max_tokens);
            // Keep the phase: the next fill is a whole interval after the last one.
            let rest = u64::try_from(elapsed % interval).unwrap_or(0);
            s.last_fill = now
                .checked_sub(std::time::Duration::from_nanos(rest))
                .unwrap_or(now);
        }
        if s.tokens > 0 {
            s.tokens -= 1;
            true
        } else {
            false
        }
    }

    /// Tokens left now (without taking one).
    pub fn tokens(&self) -> u32 {
        self.lock().tokens
    }
}

/// Every bucket of the proxy, by where its configuration sits and the bucket it describes.
#[derive(Debug, Default)]
pub struct Buckets {
    map: Mutex<HashMap<BucketKey, Arc<Bucket>>>,
}

/// Route configuration, the place of the configuration in it, the bucket.
type BucketKey = (String, String, TokenBucket);

impl Buckets {
    fn get(&self, route_config: &str, scope: String, config: TokenBucket) -> Arc<Bucket> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((route_config.to_owned(), scope, config))
            .or_insert_with(|| Arc::new(Bucket::new(config)))
            .clone()
    }

    /// Drops the buckets of configurations `snapshot` no longer has (called on reload).
    pub fn retain_for(&self, snapshot: &Snapshot) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|(rc, _, _), _| snapshot.rate_limits.contains_key(rc));
    }
}

/// True with probability `percent`/100 (Envoy's runtime `featureEnabled` with a default).
fn sampled(percent: f64) -> bool {
    if percent >= 100.0 {
        true
    } else if percent <= 0.0 {
        false
    } else {
        rand::random::<f64>() * 100.0 < percent
    }
}

/// Runs the local rate limit filters of `route_config` for a request that selected `vhost`
/// and `route` (either may be absent: the filter runs before the router, also for requests
/// that will get 404). Headers to add when not enforced are added to `request_headers`.
///
/// `side` picks the filters before the global rate limit filter, or those after it.
#[allow(clippy::too_many_arguments)] // one call site; the arguments are the request's
pub fn check(
    snapshot: &Snapshot,
    buckets: &Buckets,
    metrics: &Metrics,
    route_config: &str,
    vhost: Option<&str>,
    route: Option<&str>,
    request_headers: &mut HeaderMap,
    side: Side,
) -> Result<(), Limited> {
    let Some(limits) = snapshot.rate_limits.get(route_config) else {
        return Ok(());
    };
    let split = limits.global.as_ref().map_or(limits.filters.len(), |g| {
        g.position.min(limits.filters.len())
    });
    let range = match side {
        Side::BeforeGlobal => 0..split,
        Side::AfterGlobal => split..limits.filters.len(),
    };
    for (i, filter) in limits
        .filters
        .iter()
        .enumerate()
        .take(range.end)
        .skip(range.start)
    {
        let per_route = vhost.and_then(|vh| {
            limits
                .per_route
                .get(&filter.name)
                .and_then(|p| p.lookup(vh, route).map(|c| (p, c)))
        });
        let (scope, config): (String, &LocalRateLimit) = match per_route {
            Some((p, c)) => {
                let vh = vhost.unwrap_or_default();
                let at_route =
                    route.is_some_and(|r| p.routes.get(vh).is_some_and(|m| m.contains_key(r)));
                let scope = if at_route {
                    format!("{}|vh:{vh}|rt:{}", filter.name, route.unwrap_or_default())
                } else {
                    format!("{}|vh:{vh}", filter.name)
                };
                (scope, c)
            }
            None if filter.disabled => continue,
            None => (format!("{i}|{}", filter.origin), &filter.config),
        };
        let Some(tb) = config.token_bucket else {
            continue;
        };
        if !sampled(config.enabled_percent) {
            continue;
        }
        let stats = metrics.local_rate_limit(&config.stat_prefix);
        stats.enabled.inc();
        if buckets.get(route_config, scope, tb).try_take() {
            stats.ok.inc();
            continue;
        }
        stats.rate_limited.inc();
        if sampled(config.enforced_percent) {
            stats.enforced.inc();
            return Err(Limited {
                status: config.status,
                headers: config.response_headers_to_add.clone(),
                details: LOCAL_RATE_LIMITED,
            });
        }
        apply_headers(
            &config.request_headers_to_add_when_not_enforced,
            request_headers,
        );
    }
    Ok(())
}

/// Adds headers with Envoy's append actions.
pub fn apply_headers(headers: &[HeaderToAdd], to: &mut HeaderMap) {
    for h in headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_str(&h.value),
        ) else {
            continue;
        };
        match h.action {
            AppendAction::AppendIfExistsOrAdd => {
                to.append(name, value);
            }
            AppendAction::AddIfAbsent => {
                to.entry(name).or_insert(value);
            }
            AppendAction::OverwriteIfExistsOrAdd => {
                to.insert(name, value);
            }
            AppendAction::OverwriteIfExists => {
                if to.contains_key(&name) {
                    to.insert(name, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn bucket(max: u32, per_fill: u32, interval_ms: u64) -> Bucket {
        Bucket::new(TokenBucket {
            max_tokens: max,
            tokens_per_fill: per_fill,
            fill_interval: Duration::from_millis(interval_ms),
        })
    }

    fn take(b: &Bucket, n: usize) -> usize {
        (0..n).filter(|_| b.try_take()).count()
    }

    #[tokio::test(start_paused = true)]
    async fn starts_full_and_bursts_to_max_tokens() {
        // The guide's bucket: 100 tokens, 10 per second.
        let b = bucket(100, 10, 1000);
        assert_eq!(take(&b, 150), 100, "a burst takes max_tokens");
        assert!(!b.try_take());
    }

    #[tokio::test(start_paused = true)]
    async fn refills_tokens_per_fill_at_whole_intervals() {
        let b = bucket(100, 10, 1000);
        assert_eq!(take(&b, 100), 100);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!b.try_take(), "no fill before the interval ends");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(take(&b, 50), 10, "one fill: tokens_per_fill");
        tokio::time::advance(Duration::from_millis(3500)).await;
        assert_eq!(take(&b, 50), 30, "three whole intervals");
        // The half interval left over counts towards the next fill (phase kept).
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(take(&b, 50), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn never_holds_more_than_max_tokens() {
        // The Istio task's bucket: 4 tokens per 60 s.
        let b = bucket(4, 4, 60_000);
        assert_eq!(take(&b, 5), 4);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(b.tokens(), 0, "fills are applied lazily");
        assert_eq!(take(&b, 10), 4, "an hour later, still max_tokens");
    }

    #[tokio::test(start_paused = true)]
    async fn fill_interval_below_tokens_per_fill() {
        let b = bucket(3, 1, 50);
        assert_eq!(take(&b, 5), 3);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(take(&b, 5), 2);
    }

    fn snapshot(enabled: f64, enforced: f64) -> Snapshot {
        use sluice_snapshot::ratelimit::{HttpRateLimits, RateLimitFilter};
        let mut s = Snapshot::empty(sluice_snapshot::Role::Gateway);
        s.rate_limits.insert(
            "http.80".into(),
            HttpRateLimits {
                filters: vec![RateLimitFilter {
                    name: "envoy.filters.http.local_ratelimit".into(),
                    origin: "EnvoyFilter istio-system/rl configPatches[0]".into(),
                    disabled: false,
                    config: LocalRateLimit {
                        stat_prefix: "http_local_rate_limiter".into(),
                        token_bucket: Some(TokenBucket {
                            max_tokens: 2,
                            tokens_per_fill: 1,
                            fill_interval: Duration::from_secs(1),
                        }),
                        enabled_percent: enabled,
                        enforced_percent: enforced,
                        status: 429,
                        response_headers_to_add: vec![HeaderToAdd {
                            name: "x-rate-limited".into(),
                            value: "true".into(),
                            action: AppendAction::OverwriteIfExistsOrAdd,
                        }],
                        request_headers_to_add_when_not_enforced: vec![HeaderToAdd {
                            name: "x-over-limit".into(),
                            value: "1".into(),
                            action: AppendAction::AppendIfExistsOrAdd,
                        }],
                    },
                }],
                per_route: Default::default(),
                global: None,
                actions: Default::default(),
            },
        );
        s
    }

    fn counters(registry: &prometheus_client::registry::Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        text
    }

    #[tokio::test(start_paused = true)]
    async fn enforced_refuses_and_counts() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::new(&mut registry);
        let s = snapshot(100.0, 100.0);
        let buckets = Buckets::default();
        let mut h = HeaderMap::new();
        let mut run = || {
            check(
                &s,
                &buckets,
                &metrics,
                "http.80",
                None,
                None,
                &mut h,
                Side::BeforeGlobal,
            )
        };
        assert_eq!(run(), Ok(()));
        assert_eq!(run(), Ok(()));
        let limited = run().expect_err("third is over the limit");
        assert_eq!(limited.status, 429);
        assert_eq!(limited.headers[0].name, "x-rate-limited");
        // Another route configuration has no filter.
        assert_eq!(
            check(
                &s,
                &buckets,
                &metrics,
                "http.8080",
                None,
                None,
                &mut h,
                Side::BeforeGlobal
            ),
            Ok(())
        );
        let text = counters(&registry);
        for line in [
            "envoy_http_local_rate_limit_enabled_total{stat_prefix=\"http_local_rate_limiter\"} 3",
            "envoy_http_local_rate_limit_ok_total{stat_prefix=\"http_local_rate_limiter\"} 2",
            "envoy_http_local_rate_limit_rate_limited_total{stat_prefix=\"http_local_rate_limiter\"} 1",
            "envoy_http_local_rate_limit_enforced_total{stat_prefix=\"http_local_rate_limiter\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn not_enforced_counts_and_marks_the_request() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::new(&mut registry);
        let s = snapshot(100.0, 0.0);
        let buckets = Buckets::default();
        let mut h = HeaderMap::new();
        for _ in 0..3 {
            assert_eq!(
                check(
                    &s,
                    &buckets,
                    &metrics,
                    "http.80",
                    None,
                    None,
                    &mut h,
                    Side::BeforeGlobal
                ),
                Ok(())
            );
        }
        assert_eq!(h.get("x-over-limit").map(|v| v.as_bytes()), Some(&b"1"[..]));
        let text = counters(&registry);
        assert!(text.contains(
            "envoy_http_local_rate_limit_rate_limited_total{stat_prefix=\"http_local_rate_limiter\"} 1"
        ));
        assert!(text.contains(
            "envoy_http_local_rate_limit_enforced_total{stat_prefix=\"http_local_rate_limiter\"} 0"
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn not_enabled_takes_no_token() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::new(&mut registry);
        let s = snapshot(0.0, 100.0);
        let buckets = Buckets::default();
        let mut h = HeaderMap::new();
        for _ in 0..10 {
            assert_eq!(
                check(
                    &s,
                    &buckets,
                    &metrics,
                    "http.80",
                    None,
                    None,
                    &mut h,
                    Side::BeforeGlobal
                ),
                Ok(())
            );
        }
        assert!(!counters(&registry).contains("envoy_http_local_rate_limit_enabled_total{"));
    }

    #[test]
    fn header_actions_follow_envoy() {
        let mut h = HeaderMap::new();
        h.insert("a", HeaderValue::from_static("old"));
        let add = |name: &str, action| HeaderToAdd {
            name: name.into(),
            value: "new".into(),
            action,
        };
        apply_headers(
            &[
                add("a", AppendAction::AppendIfExistsOrAdd),
                add("b", AppendAction::OverwriteIfExists),
                add("c", AppendAction::AddIfAbsent),
                add("c", AppendAction::AddIfAbsent),
            ],
            &mut h,
        );
        assert_eq!(h.get_all("a").iter().count(), 2);
        assert!(!h.contains_key("b"));
        assert_eq!(h.get_all("c").iter().count(), 1);
    }
}
