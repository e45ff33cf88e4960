//! Envoy's global rate limit (`envoy.filters.http.ratelimit`), with sluice as its own
//! rate-limit service and Redis as the counter store every replica shares.
//!
//! Per request whose route forwards (Envoy's filter does nothing without a route entry):
//! 1. the descriptors: each `rate_limits` policy of the filter's `stage` — the route's own,
//!    else its virtual host's (`vh_rate_limits: OVERRIDE`) — yields one descriptor, its
//!    actions' entries in order; an action that produces nothing drops the descriptor, except
//!    `request_headers` with `skip_if_absent`, which drops only its entry;
//! 2. each descriptor is looked up in the domain's tree as the rate-limit service does
//!    ([`sluice_snapshot::ratelimit::find_limit`]); unlimited and unmatched ones pass;
//! 3. one Redis script call checks every limited descriptor and, only when none of the
//!    enforced ones is over, records the hit in all of them — atomically, so replicas never
//!    race between reading and writing a counter;
//! 4. over the limit: 429 (or `rate_limited_status`), `x-envoy-ratelimited: true`, flag `RL`,
//!    details `request_rate_limited`; Redis failing or slower than `timeout`: the request goes
//!    on (`failure_mode_allowed`), or gets 500 (`status_on_error`) with flag `RLSE` when
//!    `failure_mode_deny` — never a wait longer than `timeout`.
//!
//! The algorithm is a **sliding-window log**: each counter is a sorted set of the admission
//! times within the last unit, taken from Redis's own clock (`TIME`) so replicas with skewed
//! clocks agree. A request is admitted when fewer than `requests_per_unit` admissions lie in
//! the window ending now, so no window of one unit ever admits more than the limit — unlike
//! envoyproxy/ratelimit's fixed windows, which admit up to twice the limit across a window
//! boundary. The cost is memory: up to `requests_per_unit` entries per counter.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderMap;
use ipnet::IpNet;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sluice_snapshot::Snapshot;
use sluice_snapshot::matching::StringMatcher;
use sluice_snapshot::ratelimit::{
    AppendAction, DescriptorAction, GlobalFilter, HeaderCondition, HeaderToAdd, Limit,
    RateLimitPolicy, find_limit,
};
use tokio::sync::OnceCell;

use crate::telemetry::metrics::Metrics;

/// Envoy's response code details of a global rate limit refusal.
pub const RATE_LIMITED: &str = "request_rate_limited";
/// Envoy's details when the rate-limit service failed and the filter denies.
pub const SERVICE_ERROR: &str = "rate_limiter_error";

/// Checks and records hits of every limited descriptor in one atomic step.
///
/// KEYS: the counters. ARGV[1]: a member unique to this hit; then per key: the window in
/// microseconds, the limit, 1 if the limit is enforced (0: shadow mode). Returns per key the
/// admissions in the window before this hit and, when at the limit, microseconds until the
/// oldest leaves it. The hit is recorded in every counter unless an enforced one is full.
const SLIDING_WINDOW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
local refused = false
for i, key in ipairs(KEYS) do
  local window = tonumber(ARGV[3 * i - 1])
  local limit = tonumber(ARGV[3 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local n = redis.call('ZCARD', key)
  local reset = 0
  if n >= limit then
    if ARGV[3 * i + 1] == '1' then refused = true end
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if oldest[2] then reset = tonumber(oldest[2]) + window - now end
  end
  out[2 * i - 1] = n
  out[2 * i] = reset
end
if not refused then
  for i, key in ipairs(KEYS) do
    redis.call('ZADD', key, now, ARGV[1])
    redis.call('PEXPIRE', key, math.ceil(tonumber(ARGV[3 * i - 1]) / 1000))
  end
end
return out
"#;

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("no answer from redis within {0:?}")]
    Timeout(Duration),
    #[error("unexpected reply from the rate limit script")]
    Reply,
}

/// The shared counter store: one multiplexed Redis connection, opened on first use and
/// re-opened in the background after failures.
pub struct Store {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    script: redis::Script,
    /// Makes each hit's member unique across replicas: a random prefix and a sequence.
    instance: u64,
    sequence: AtomicU64,
}

impl Store {
    /// A store for `url` (`redis://HOST:PORT[/DB]`); nothing is dialled yet.
    pub fn new(url: &str) -> Result<Store, StoreError> {
        Ok(Store {
            client: redis::Client::open(url)?,
            conn: OnceCell::new(),
            script: redis::Script::new(SLIDING_WINDOW),
            instance: rand::random(),
            sequence: AtomicU64::new(0),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let conn = self
            .conn
            .get_or_try_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Duration::from_secs(1))
                    .set_number_of_retries(2)
                    .set_max_delay(1000);
                ConnectionManager::new_with_config(self.client.clone(), config)
            })
            .await?;
        Ok(conn.clone())
    }

    /// Checks `counters` and records the hit where allowed, within `timeout`.
    async fn hit(
        &self,
        counters: &[Counter<'_>],
        timeout: Duration,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let work = async {
            let mut conn = self.connection().await?;
            let member = format!(
                "{:016x}-{}",
                self.instance,
                self.sequence.fetch_add(1, Ordering::Relaxed)
            );
            let mut call = self.script.prepare_invoke();
            call.arg(member);
            for c in counters {
                call.key(&c.key)
                    .arg(c.limit.unit_seconds.saturating_mul(1_000_000))
                    .arg(c.limit.requests_per_unit.unwrap_or(0))
                    .arg(if c.limit.shadow_mode { 0 } else { 1 });
            }
            let reply: Vec<i64> = call.invoke_async(&mut conn).await?;
            if reply.len() != counters.len() * 2 {
                return Err(StoreError::Reply);
            }
            Ok(reply
                .chunks(2)
                .map(|p| (p[0].max(0) as u64, p[1].max(0) as u64))
                .collect())
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(StoreError::Timeout(timeout)))
    }
}

/// One limited descriptor: its counter's key and its limit.
struct Counter<'a> {
    key: String,
    limit: &'a Limit,
}

/// What a request offers the actions.
pub struct RequestFacts<'a> {
    pub headers: &'a HeaderMap,
    pub method: &'a str,
    /// Path and query, as Envoy's `:path`.
    pub path: &'a str,
    pub authority: &'a str,
    pub scheme: &'a str,
    pub remote: IpAddr,
    /// The verified SPIFFE ID of the mesh hop's client certificate.
    pub principal: Option<String>,
    /// The cluster the route forwards to (its first, for weighted routes).
    pub cluster: &'a str,
}

impl RequestFacts<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        match name {
            ":path" => Some(self.path),
            ":method" => Some(self.method),
            ":authority" | "host" => Some(self.authority),
            ":scheme" => Some(self.scheme),
            _ => self.headers.get(name).and_then(|v| v.to_str().ok()),
        }
    }
}

/// The outcome the HTTP path acts on.
#[derive(Debug)]
pub enum Decision {
    /// Go on; add these headers to the response.
    Allow(Vec<HeaderToAdd>),
    /// Refuse with this status and these headers (`RL`).
    OverLimit {
        status: u16,
        headers: Vec<HeaderToAdd>,
    },
    /// The store failed and the filter denies (`RLSE`).
    Error { status: u16 },
}

/// Runs the global rate limit of `filter` for a request that selected `vhost` / `route`.
pub async fn check(
    snapshot: &Snapshot,
    store: Option<&Store>,
    metrics: &Metrics,
    filter: &GlobalFilter,
    policies: &[RateLimitPolicy],
    facts: &RequestFacts<'_>,
) -> Decision {
    let descriptors = descriptors(filter.stage, policies, facts);
    if descriptors.is_empty() {
        return Decision::Allow(Vec::new());
    }
    let stats = metrics.global_rate_limit(facts.cluster);
    let tree = snapshot
        .rate_limit_domains
        .get(&filter.domain)
        .map_or(&[][..], Vec::as_slice);
    let counters: Vec<Counter<'_>> = descriptors
        .iter()
        .filter_map(|d| {
            let limit = find_limit(tree, d)?;
            limit.requests_per_unit?;
            Some(Counter {
                key: counter_key(&filter.domain, d, limit),
                limit,
            })
        })
        .collect();
    if counters.is_empty() {
        stats.ok.inc();
        return Decision::Allow(Vec::new());
    }
    let Some(store) = store else {
        // Refused at load without a store; a snapshot that slipped through fails like an
        // unreachable one.
        return failed(filter, &stats, "no --rate-limit-redis store is configured");
    };
    let counts = match store.hit(&counters, filter.timeout).await {
        Ok(c) => c,
        Err(e) => return failed(filter, &stats, &e.to_string()),
    };
    let mut over = false;
    // The tightest counter names the x-ratelimit headers, as the service's reply does.
    let mut tightest: Option<(u32, u64, u64, u64)> = None;
    for (c, (n, reset_us)) in counters.iter().zip(counts) {
        let limit = c.limit.requests_per_unit.unwrap_or(0);
        let full = n >= u64::from(limit);
        if full && c.limit.shadow_mode {
            stats.shadow_over_limit.inc();
        } else if full {
            over = true;
        }
        let remaining = u64::from(limit).saturating_sub(n + u64::from(!full));
        if tightest.is_none_or(|t| remaining < t.1) {
            let reset = if full {
                reset_us.div_ceil(1_000_000)
            } else {
                c.limit.unit_seconds
            };
            tightest = Some((limit, remaining, reset, c.limit.unit_seconds));
        }
    }
    let mut headers = Vec::new();
    if filter.x_ratelimit_headers
        && let Some((limit, remaining, reset, window)) = tightest
    {
        for (name, value) in [
            ("x-ratelimit-limit", format!("{limit}, {limit};w={window}")),
            ("x-ratelimit-remaining", remaining.to_string()),
            ("x-ratelimit-reset", reset.to_string()),
        ] {
            headers.push(HeaderToAdd {
                name: name.to_owned(),
                value,
                action: AppendAction::OverwriteIfExistsOrAdd,
            });
        }
    }
    if over {
        stats.over_limit.inc();
        if filter.x_envoy_ratelimited {
            headers.push(HeaderToAdd {
                name: "x-envoy-ratelimited".to_owned(),
                value: "true".to_owned(),
                action: AppendAction::OverwriteIfExistsOrAdd,
            });
        }
        return Decision::OverLimit {
            status: filter.status,
            headers,
        };
    }
    stats.ok.inc();
    Decision::Allow(headers)
}

fn failed(filter: &GlobalFilter, stats: &GlobalStats, why: &str) -> Decision {
    stats.error.inc();
    tracing::warn!(domain = %filter.domain, error = why, "global rate limit store failed");
    if filter.failure_mode_deny {
        Decision::Error {
            status: filter.error_status,
        }
    } else {
        stats.failure_mode_allowed.inc();
        Decision::Allow(Vec::new())
    }
}

pub use crate::telemetry::metrics::GlobalRateLimitStats as GlobalStats;

/// The descriptors the policies of `stage` produce for a request.
pub fn descriptors(
    stage: u32,
    policies: &[RateLimitPolicy],
    facts: &RequestFacts<'_>,
) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    'policy: for p in policies.iter().filter(|p| p.stage == stage) {
        let mut entries = Vec::with_capacity(p.actions.len());
        for a in &p.actions {
            match entry(a, facts) {
                Produced::Entry(k, v) => entries.push((k, v)),
                Produced::Skip => {}
                Produced::Drop => continue 'policy,
            }
        }
        if !entries.is_empty() {
            out.push(entries);
        }
    }
    out
}

enum Produced {
    Entry(String, String),
    /// No entry, but the descriptor goes on.
    Skip,
    /// The whole descriptor is dropped.
    Drop,
}

fn entry(a: &DescriptorAction, facts: &RequestFacts<'_>) -> Produced {
    let pair = |k: &str, v: String| Produced::Entry(k.to_owned(), v);
    match a {
        DescriptorAction::SourceCluster { value } => pair("source_cluster", value.clone()),
        DescriptorAction::DestinationCluster => {
            pair("destination_cluster", facts.cluster.to_owned())
        }
        DescriptorAction::RequestHeaders {
            header,
            key,
            skip_if_absent,
        } => match facts.header(header) {
            Some(v) if !v.is_empty() => pair(key, v.to_owned()),
            _ if *skip_if_absent => Produced::Skip,
            _ => Produced::Drop,
        },
        DescriptorAction::RemoteAddress => pair("remote_address", facts.remote.to_string()),
        DescriptorAction::MaskedRemoteAddress {
            v4_prefix,
            v6_prefix,
        } => {
            let prefix = if facts.remote.is_ipv4() {
                *v4_prefix
            } else {
                *v6_prefix
            };
            match IpNet::new(facts.remote, prefix) {
                Ok(net) => pair("masked_remote_address", net.trunc().to_string()),
                Err(_) => Produced::Drop,
            }
        }
        DescriptorAction::GenericKey { key, value } => pair(key, value.clone()),
        DescriptorAction::HeaderValueMatch {
            key,
            value,
            expect_match,
            headers,
        } => {
            if headers.iter().all(|h| condition(h, facts)) == *expect_match {
                pair(key, value.clone())
            } else {
                Produced::Drop
            }
        }
        DescriptorAction::SourcePrincipal {
            key,
            skip_if_absent,
        } => match &facts.principal {
            Some(p) => pair(key, p.clone()),
            None if *skip_if_absent => Produced::Skip,
            None => Produced::Drop,
        },
    }
}

/// Envoy's `HeaderUtility::matchHeaders` for one matcher.
fn condition(h: &HeaderCondition, facts: &RequestFacts<'_>) -> bool {
    let is_present = matches!(h.matcher, StringMatcher::Present);
    let value = facts
        .header(&h.name)
        .or(if h.missing_as_empty { Some("") } else { None });
    match value {
        // Envoy: an absent header matches only a presence test that expects absence
        // (or, inverted, expects presence).
        None => is_present && (h.present == h.invert),
        Some(v) => {
            let matched = if is_present {
                h.present
            } else {
                h.matcher.matches(v, h.ignore_case)
            };
            matched != h.invert
        }
    }
}

/// The counter of one descriptor: domain, entries and window, escaped so no value can make
/// two descriptors share a key.
fn counter_key(domain: &str, entries: &[(String, String)], limit: &Limit) -> String {
    fn push_escaped(out: &mut String, s: &str) {
        for c in s.chars() {
            match c {
                '%' => out.push_str("%25"),
                '|' => out.push_str("%7C"),
                '=' => out.push_str("%3D"),
                c => out.push(c),
            }
        }
    }
    let mut key = String::from("sluice:rl:");
    push_escaped(&mut key, domain);
    for (k, v) in entries {
        key.push('|');
        push_escaped(&mut key, k);
        key.push('=');
        push_escaped(&mut key, v);
    }
    key.push_str(&format!(
        "|{}/{}",
        limit.requests_per_unit.unwrap_or(0),
        limit.unit_seconds
    ));
    key
}

/// The store a process uses, if `--rate-limit-redis` named one.
pub fn store(url: Option<&str>) -> Result<Option<Arc<Store>>, StoreError> {
    url.map(|u| Store::new(u).map(Arc::new)).transpose()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use sluice_snapshot::matching::Regex;

    use super::*;

    fn facts<'a>(headers: &'a HeaderMap, path: &'a str) -> RequestFacts<'a> {
        RequestFacts {
            headers,
            method: "GET",
            path,
            authority: "api.example.com",
            scheme: "http",
            remote: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            principal: None,
            cluster: "outbound|80||api.example.com",
        }
    }

    fn policy(actions: Vec<DescriptorAction>) -> RateLimitPolicy {
        RateLimitPolicy { stage: 0, actions }
    }

    /// Envoy's `RequestHeadersAction`: an absent header drops the descriptor unless
    /// `skip_if_absent`, which drops only the entry.
    #[test]
    fn absent_headers_drop_or_skip_as_envoy() {
        let h = HeaderMap::new();
        let f = facts(&h, "/x");
        let header = |skip| DescriptorAction::RequestHeaders {
            header: "x-user".into(),
            key: "user".into(),
            skip_if_absent: skip,
        };
        let generic = DescriptorAction::GenericKey {
            key: "generic_key".into(),
            value: "api".into(),
        };
        assert!(descriptors(0, &[policy(vec![header(false), generic.clone()])], &f).is_empty());
        assert_eq!(
            descriptors(0, &[policy(vec![header(true), generic])], &f),
            vec![vec![("generic_key".to_owned(), "api".to_owned())]]
        );
    }

    /// The Istio task's `:path` request header action and its `header_value_match` variant.
    #[test]
    fn pseudo_headers_and_header_value_match() {
        let h = HeaderMap::new();
        let f = facts(&h, "/api/v1/products/7");
        let path = DescriptorAction::RequestHeaders {
            header: ":path".into(),
            key: "PATH".into(),
            skip_if_absent: false,
        };
        let matched = DescriptorAction::HeaderValueMatch {
            key: "PATH".into(),
            value: "api".into(),
            expect_match: true,
            headers: vec![HeaderCondition {
                name: ":path".into(),
                matcher: StringMatcher::Regex(
                    Regex::new("/api/v1/products/[1-9]{1,2}").expect("regex"),
                ),
                present: false,
                ignore_case: false,
                invert: false,
                missing_as_empty: false,
            }],
        };
        let got = descriptors(0, &[policy(vec![path]), policy(vec![matched.clone()])], &f);
        assert_eq!(
            got[0],
            vec![("PATH".to_owned(), "/api/v1/products/7".to_owned())]
        );
        assert_eq!(got[1], vec![("PATH".to_owned(), "api".to_owned())]);
        let other = facts(&h, "/productpage");
        assert!(descriptors(0, &[policy(vec![matched])], &other).is_empty());
    }

    #[test]
    fn stages_and_masked_addresses() {
        let h = HeaderMap::new();
        let f = facts(&h, "/");
        let masked = RateLimitPolicy {
            stage: 1,
            actions: vec![DescriptorAction::MaskedRemoteAddress {
                v4_prefix: 16,
                v6_prefix: 64,
            }],
        };
        assert!(descriptors(0, std::slice::from_ref(&masked), &f).is_empty());
        assert_eq!(
            descriptors(1, &[masked], &f),
            vec![vec![(
                "masked_remote_address".to_owned(),
                "10.1.0.0/16".to_owned()
            )]]
        );
    }

    #[test]
    fn counter_keys_cannot_collide_through_values() {
        let limit = Limit {
            requests_per_unit: Some(1),
            unit_seconds: 60,
            unit: "minute".into(),
            shadow_mode: false,
        };
        let a = counter_key("d", &[("k".into(), "a|b=c".into())], &limit);
        let b = counter_key(
            "d",
            &[("k".into(), "a".into()), ("b".into(), "c".into())],
            &limit,
        );
        assert_ne!(a, b);
    }
}
