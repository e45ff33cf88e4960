//! Istio's standard metrics (`istio_requests_total`…) and a few of Envoy's cluster stats, on
//! an injected prometheus-client registry.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::{
    EncodeLabelKey, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Istio's default buckets for `istio_request_duration_milliseconds`.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's buckets for request/response sizes.
const SIZE_BUCKETS: [f64; 8] = [
    1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0, 10000000.0,
];

/// Istio's label set for request metrics (the subset a gateway knows). Built per request, so
/// its values are shared (`Arc<str>`) or static, never copied.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RequestLabels {
    pub reporter: &'static str,
    /// This proxy's own workload (Istio's `source_workload` at the reporting gateway).
    pub source_workload: Arc<str>,
    pub source_principal: Arc<str>,
    pub destination_service: Arc<str>,
    pub destination_service_name: Arc<str>,
    pub destination_service_namespace: &'static str,
    pub destination_cluster: &'static str,
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub response_flags: Cow<'static, str>,
    pub connection_security_policy: &'static str,
    /// Telemetry's tag overrides (none: Istio's labels as they are).
    pub tags: Tags,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct TcpLabels {
    pub reporter: &'static str,
    /// This proxy's own workload (Istio's `source_workload` at the reporting gateway).
    pub source_workload: Arc<str>,
    pub source_principal: Arc<str>,
    pub destination_service: Arc<str>,
    pub destination_service_name: Arc<str>,
    pub destination_service_namespace: &'static str,
    pub destination_cluster: &'static str,
    pub request_protocol: &'static str,
    pub response_flags: Cow<'static, str>,
    pub connection_security_policy: &'static str,
    pub tags: Tags,
}

/// Telemetry's tag overrides applied to one label set, sorted by label name: the label's new
/// value, or `None` when it is removed (not exported: the series has one label fewer). A
/// standard label overridden here is cleared in its field, so that two label sets that print
/// the same are one series. Names beyond Istio's standard labels are added labels.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Tags(pub Option<Box<[Tag]>>);

/// One tag: its label name, and its value (`None`: removed).
pub type Tag = (Arc<str>, Option<Arc<str>>);

impl Tags {
    fn get(&self, name: &str) -> Option<&Option<Arc<str>>> {
        self.0
            .as_deref()?
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v)
    }
}

fn write_label<V: EncodeLabelValue>(
    encoder: &mut LabelSetEncoder<'_>,
    name: &str,
    value: &V,
) -> std::fmt::Result {
    let mut label = encoder.encode_label();
    let mut key = label.encode_label_key()?;
    EncodeLabelKey::encode(&name, &mut key)?;
    let mut v = key.encode_label_value()?;
    value.encode(&mut v)?;
    v.finish()
}

/// A standard label, unless a tag override replaces or removes it.
fn standard_label<V: EncodeLabelValue>(
    encoder: &mut LabelSetEncoder<'_>,
    tags: &Tags,
    name: &str,
    value: &V,
) -> std::fmt::Result {
    match tags.get(name) {
        Some(None) => Ok(()),
        Some(Some(t)) => write_label(encoder, name, &&**t),
        None => write_label(encoder, name, value),
    }
}

/// The label set's encoding (Istio's labels, then added ones), its standard names, and
/// clearing a standard label by name.
macro_rules! label_set {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        impl EncodeLabelSet for $ty {
            fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
                $( standard_label(encoder, &self.tags, stringify!($field), &self.$field)?; )*
                for (name, value) in self.tags.0.as_deref().unwrap_or_default() {
                    if let Some(v) = value
                        && !Self::STANDARD.contains(&&**name)
                    {
                        write_label(encoder, name, &&**v)?;
                    }
                }
                Ok(())
            }
        }

        impl $ty {
            /// Istio's labels of this set, in the order they are exported.
            pub const STANDARD: &'static [&'static str] = &[$(stringify!($field)),*];

            /// Clears the standard label `name` (a tag override gives its value); `false` for
            /// a name that is not one.
            pub fn clear(&mut self, name: &str) -> bool {
                match name {
                    $( stringify!($field) => { self.$field = Default::default(); true } )*
                    _ => false,
                }
            }
        }
    };
}

label_set!(RequestLabels {
    reporter,
    source_workload,
    source_principal,
    destination_service,
    destination_service_name,
    destination_service_namespace,
    destination_cluster,
    request_protocol,
    response_code,
    response_flags,
    connection_security_policy,
});

label_set!(TcpLabels {
    reporter,
    source_workload,
    source_principal,
    destination_service,
    destination_service_name,
    destination_service_namespace,
    destination_cluster,
    request_protocol,
    response_flags,
    connection_security_policy,
});

/// One authorization decision (Envoy counts `rbac.allowed` / `rbac.denied` per filter; sluice
/// names the rule that decided, whose count is bounded by the policies).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// `http` (one decision per request) or `tcp` (one per TLS/TCP connection).
    pub protocol: String,
    /// `allowed` or `denied`.
    pub decision: String,
    /// The rule that decided (`ns[NS]-policy[NAME]-rule[I]`), or `none`.
    pub policy: String,
    /// `true` when an AUDIT rule matched.
    pub audit: String,
}

/// What a set of dry-run policies would have decided (Envoy's shadow rules).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DryRunLabels {
    pub protocol: String,
    /// `deny` or `allow`: which dry-run policies (Envoy runs two shadow engines).
    pub action: String,
    /// Envoy's `shadow_engine_result`: `allowed` or `denied`.
    pub result: String,
    /// Envoy's `shadow_effective_policy_id`, or `none`.
    pub policy: String,
}

/// Envoy's local rate limit stats are named `<stat_prefix>.http_local_rate_limit.<counter>`;
/// sluice exports them as `envoy_http_local_rate_limit_<counter>_total{stat_prefix="…"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatPrefixLabels {
    pub stat_prefix: String,
}

/// Counter handles of the global rate limit for one routed cluster (Envoy's
/// `cluster.<name>.ratelimit.*`).
#[derive(Clone)]
pub struct GlobalRateLimitStats {
    pub ok: Counter,
    pub over_limit: Counter,
    pub error: Counter,
    pub failure_mode_allowed: Counter,
    pub shadow_over_limit: Counter,
}

/// Counter handles of one local rate limit stat prefix.
#[derive(Clone)]
pub struct RateLimitStats {
    /// Requests the limit was checked for (`filter_enabled`).
    pub enabled: Counter,
    /// Checked requests that got a token.
    pub ok: Counter,
    /// Checked requests that found the bucket empty.
    pub rate_limited: Counter,
    /// Requests over the limit that were refused (`filter_enforced`).
    pub enforced: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster_name: String,
}

#[derive(Clone)]
struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// Counter handles of one cluster, fetched once per connection or request.
#[derive(Clone)]
pub struct ClusterStats {
    pub upstream_cx_total: Counter,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_cx_active: Gauge,
    pub upstream_rq_total: Counter,
    pub upstream_rq_retry: Counter,
    pub upstream_rq_pending_overflow: Counter,
    /// Connections not opened because `max_connections` was reached.
    pub upstream_cx_overflow: Counter,
    /// Retries not made because `max_retries` retries were in flight.
    pub upstream_rq_retry_overflow: Counter,
    pub upstream_rq_timeout: Counter,
    pub upstream_rq_per_try_timeout: Counter,
    pub outlier_ejections_active: Gauge,
    pub outlier_ejections_enforced: Counter,
}

pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram, Buckets>,
    request_bytes: Family<RequestLabels, Histogram, Buckets>,
    response_bytes: Family<RequestLabels, Histogram, Buckets>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    cx_total: Family<ClusterLabels, Counter>,
    cx_connect_fail: Family<ClusterLabels, Counter>,
    cx_active: Family<ClusterLabels, Gauge>,
    rq_total: Family<ClusterLabels, Counter>,
    rq_retry: Family<ClusterLabels, Counter>,
    rq_pending_overflow: Family<ClusterLabels, Counter>,
    cx_overflow: Family<ClusterLabels, Counter>,
    rq_retry_overflow: Family<ClusterLabels, Counter>,
    rq_timeout: Family<ClusterLabels, Counter>,
    rq_per_try_timeout: Family<ClusterLabels, Counter>,
    od_active: Family<ClusterLabels, Gauge>,
    od_enforced: Family<ClusterLabels, Counter>,
    grl_ok: Family<ClusterLabels, Counter>,
    grl_over_limit: Family<ClusterLabels, Counter>,
    grl_error: Family<ClusterLabels, Counter>,
    grl_failure_mode_allowed: Family<ClusterLabels, Counter>,
    grl_shadow: Family<ClusterLabels, Counter>,
    authz: Family<AuthzLabels, Counter>,
    authz_dry_run: Family<DryRunLabels, Counter>,
    rl_enabled: Family<StatPrefixLabels, Counter>,
    rl_ok: Family<StatPrefixLabels, Counter>,
    rl_rate_limited: Family<StatPrefixLabels, Counter>,
    rl_enforced: Family<StatPrefixLabels, Counter>,
    fault_delays: Family<StatPrefixLabels, Counter>,
    fault_aborts: Family<StatPrefixLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: Counter,
    /// Listeners the configuration wants that are not bound now (retried every second).
    pub listeners_unbound: Gauge,
    /// The four request metrics of each label set seen, so that a request costs one lookup
    /// with a fast hash instead of four SipHash lookups in the families (9 % of a request's
    /// instructions in callgrind).
    request_handles: Handles<RequestLabels, RequestHandles>,
    /// The same for the four TCP metrics, looked up once per connection: the four SipHash
    /// lookups were a fifth of a new TCP connection's instructions (callgrind,
    /// `MODE=tcp-newconn bench/profile-http.sh`).
    tcp_handles: Handles<TcpLabels, TcpSeries>,
    /// The authorization counter of each decision, by what decided it: no label is formatted
    /// per request.
    authz_handles: Handles<AuthzKey, Counter>,
}

/// Series of the families above by what their labels are made of, looked up with a fast
/// hash. The families are never cleared, so a cached handle stays the exported series.
struct Handles<K, V>(RwLock<HashMap<K, V, foldhash::fast::RandomState>>);

impl<K, V> Default for Handles<K, V> {
    fn default() -> Self {
        Handles(RwLock::default())
    }
}

impl<K: std::hash::Hash + Eq + Clone, V> Handles<K, V> {
    /// `use_` on the handles of `key`, made by `make` the first time (and kept, up to
    /// [`MAX_CACHED_LABEL_SETS`]).
    fn with<R>(&self, key: &K, make: impl FnOnce() -> V, use_: impl FnOnce(&V) -> R) -> R {
        if let Ok(cache) = self.0.read()
            && let Some(v) = cache.get(key)
        {
            return use_(v);
        }
        let v = make();
        let r = use_(&v);
        if let Ok(mut cache) = self.0.write()
            && cache.len() < MAX_CACHED_LABEL_SETS
        {
            cache.entry(key.clone()).or_insert(v);
        }
        r
    }
}

/// What an authorization decision's labels are made of.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct AuthzKey {
    /// `http` or `tcp`.
    pub protocol: &'static str,
    pub allowed: bool,
    /// The rule that decided (policy name, rule index), if one did.
    pub rule: Option<(Arc<str>, usize)>,
    pub audit: bool,
}

/// The series of one TCP label set in Istio's four TCP metrics.
struct TcpSeries {
    opened: Counter,
    closed: Counter,
    sent: Counter,
    received: Counter,
}

/// The series of one request label set in Istio's four request metrics.
struct RequestHandles {
    count: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl RequestHandles {
    fn record(&self, duration_ms: f64, req_bytes: u64, resp_bytes: u64) {
        self.count.inc();
        self.duration.observe(duration_ms);
        self.request_bytes.observe(req_bytes as f64);
        self.response_bytes.observe(resp_bytes as f64);
    }
}

/// Label sets kept in each [`Handles`]; beyond it (labels come only from config,
/// so this is not expected) requests are recorded through the families, four lookups each.
const MAX_CACHED_LABEL_SETS: usize = 16_384;

/// A flow refused by one of sluice's own safety checks (the destination IP guard, domain
/// fronting, malformed authorities, connection limits): which check, and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub check: String,
    pub reason: String,
}

impl Metrics {
    /// Counts one flow refused by `check` for `reason`.
    pub fn refused(&self, check: &str, reason: &str) {
        self.refused
            .get_or_create(&RefusedLabels {
                check: check.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(Buckets(&DURATION_BUCKETS)),
            request_bytes: Family::new_with_constructor(Buckets(&SIZE_BUCKETS)),
            response_bytes: Family::new_with_constructor(Buckets(&SIZE_BUCKETS)),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            cx_total: Family::default(),
            cx_connect_fail: Family::default(),
            cx_active: Family::default(),
            rq_total: Family::default(),
            rq_retry: Family::default(),
            rq_pending_overflow: Family::default(),
            cx_overflow: Family::default(),
            rq_retry_overflow: Family::default(),
            rq_timeout: Family::default(),
            rq_per_try_timeout: Family::default(),
            od_active: Family::default(),
            od_enforced: Family::default(),
            grl_ok: Family::default(),
            grl_over_limit: Family::default(),
            grl_error: Family::default(),
            grl_failure_mode_allowed: Family::default(),
            grl_shadow: Family::default(),
            authz: Family::default(),
            authz_dry_run: Family::default(),
            rl_enabled: Family::default(),
            rl_ok: Family::default(),
            rl_rate_limited: Family::default(),
            rl_enforced: Family::default(),
            fault_delays: Family::default(),
            fault_aborts: Family::default(),
            refused: Family::default(),
            access_log_dropped: Counter::default(),
            listeners_unbound: Gauge::default(),
            request_handles: Handles::default(),
            tcp_handles: Handles::default(),
            authz_handles: Handles::default(),
        };
        registry.register(
            "sluice_refused",
            "Flows refused by a safety check (check: destination_ip, fronting, authority, limit), by reason",
            m.refused.clone(),
        );
        // prometheus-client appends `_total` to counters.
        registry.register(
            "istio_requests",
            "Requests handled by the proxy",
            m.requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds",
            m.duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body sizes in bytes",
            m.request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body sizes in bytes",
            m.response_bytes.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            m.tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            m.tcp_closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the downstream on TCP connections",
            m.tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the downstream on TCP connections",
            m.tcp_received.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_cx",
            "Upstream connections opened",
            m.cx_total.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_cx_connect_fail",
            "Upstream connection failures",
            m.cx_connect_fail.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_cx_active",
            "Upstream connections open now",
            m.cx_active.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_rq",
            "Upstream requests",
            m.rq_total.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_rq_retry",
            "Upstream request retries",
            m.rq_retry.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_rq_pending_overflow",
            "Requests refused by a circuit-breaker limit",
            m.rq_pending_overflow.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_cx_overflow",
            "Upstream connections not opened because the cluster's maximum was reached",
            m.cx_overflow.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_rq_retry_overflow",
            "Retries not made because the cluster's maximum of retries in flight was reached",
            m.rq_retry_overflow.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_rq_timeout",
            "Upstream requests that timed out",
            m.rq_timeout.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_rq_per_try_timeout",
            "Upstream request attempts that hit the per-try timeout",
            m.rq_per_try_timeout.clone(),
        );
        registry.register(
            "envoy_cluster_outlier_detection_ejections_active",
            "Endpoints outlier detection has ejected now",
            m.od_active.clone(),
        );
        registry.register(
            "envoy_cluster_outlier_detection_ejections_enforced",
            "Endpoints ejected by outlier detection",
            m.od_enforced.clone(),
        );
        registry.register(
            "envoy_cluster_ratelimit_ok",
            "Requests the global rate limit let through, by the routed cluster",
            m.grl_ok.clone(),
        );
        registry.register(
            "envoy_cluster_ratelimit_over_limit",
            "Requests over the global rate limit, by the routed cluster",
            m.grl_over_limit.clone(),
        );
        registry.register(
            "envoy_cluster_ratelimit_error",
            "Global rate limit checks the shared store failed or was too slow for",
            m.grl_error.clone(),
        );
        registry.register(
            "envoy_cluster_ratelimit_failure_mode_allowed",
            "Requests let through because the store failed and failure_mode_deny is off",
            m.grl_failure_mode_allowed.clone(),
        );
        registry.register(
            "sluice_cluster_ratelimit_shadow_over_limit",
            "Requests over a shadow_mode limit (counted, not refused), by the routed cluster",
            m.grl_shadow.clone(),
        );
        registry.register(
            "sluice_authz_decisions",
            "Authorization decisions, by the rule that decided",
            m.authz.clone(),
        );
        registry.register(
            "sluice_authz_dry_run_decisions",
            "What dry-run authorization policies would have decided",
            m.authz_dry_run.clone(),
        );
        registry.register(
            "envoy_http_local_rate_limit_enabled",
            "Requests the local rate limit was checked for, by stat_prefix",
            m.rl_enabled.clone(),
        );
        registry.register(
            "envoy_http_local_rate_limit_ok",
            "Requests under the local rate limit, by stat_prefix",
            m.rl_ok.clone(),
        );
        registry.register(
            "envoy_http_local_rate_limit_rate_limited",
            "Requests over the local rate limit (enforced or not), by stat_prefix",
            m.rl_rate_limited.clone(),
        );
        registry.register(
            "envoy_http_local_rate_limit_enforced",
            "Requests refused by the local rate limit, by stat_prefix",
            m.rl_enforced.clone(),
        );
        registry.register(
            "envoy_http_fault_delays_injected",
            "Requests fault injection delayed, by stat_prefix",
            m.fault_delays.clone(),
        );
        registry.register(
            "envoy_http_fault_aborts_injected",
            "Requests fault injection aborted, by stat_prefix",
            m.fault_aborts.clone(),
        );
        registry.register(
            "sluice_access_log_dropped",
            "Access-log lines dropped because the writer fell behind",
            m.access_log_dropped.clone(),
        );
        registry.register(
            "sluice_listeners_unbound",
            "Listeners the configuration wants that could not be bound (retried every second; /ready is 503 meanwhile)",
            m.listeners_unbound.clone(),
        );
        m
    }

    pub fn cluster(&self, name: &str) -> ClusterStats {
        let l = ClusterLabels {
            cluster_name: name.to_owned(),
        };
        ClusterStats {
            upstream_cx_total: self.cx_total.get_or_create_owned(&l),
            upstream_cx_connect_fail: self.cx_connect_fail.get_or_create_owned(&l),
            upstream_cx_active: self.cx_active.get_or_create_owned(&l),
            upstream_rq_total: self.rq_total.get_or_create_owned(&l),
            upstream_rq_retry: self.rq_retry.get_or_create_owned(&l),
            upstream_rq_pending_overflow: self.rq_pending_overflow.get_or_create_owned(&l),
            upstream_cx_overflow: self.cx_overflow.get_or_create_owned(&l),
            upstream_rq_retry_overflow: self.rq_retry_overflow.get_or_create_owned(&l),
            upstream_rq_timeout: self.rq_timeout.get_or_create_owned(&l),
            upstream_rq_per_try_timeout: self.rq_per_try_timeout.get_or_create_owned(&l),
            outlier_ejections_active: self.od_active.get_or_create_owned(&l),
            outlier_ejections_enforced: self.od_enforced.get_or_create_owned(&l),
        }
    }

    pub fn request(
        &self,
        labels: &RequestLabels,
        duration_ms: f64,
        req_bytes: u64,
        resp_bytes: u64,
    ) {
        self.request_handles.with(
            labels,
            || RequestHandles {
                count: self.requests.get_or_create_owned(labels),
                duration: self.duration.get_or_create_owned(labels),
                request_bytes: self.request_bytes.get_or_create_owned(labels),
                response_bytes: self.response_bytes.get_or_create_owned(labels),
            },
            |h| h.record(duration_ms, req_bytes, resp_bytes),
        )
    }

    /// Records one request in each metric that has labels (`None`: the metric is disabled by
    /// Telemetry): `istio_requests_total`, `istio_request_duration_milliseconds`,
    /// `istio_request_bytes`, `istio_response_bytes`, in that order.
    pub fn request_each(
        &self,
        labels: [Option<&RequestLabels>; 4],
        duration_ms: f64,
        req_bytes: u64,
        resp_bytes: u64,
    ) {
        let [count, duration, request, response] = labels;
        if let Some(l) = count {
            self.requests.get_or_create(l).inc();
        }
        if let Some(l) = duration {
            self.duration.get_or_create(l).observe(duration_ms);
        }
        if let Some(l) = request {
            self.request_bytes
                .get_or_create(l)
                .observe(req_bytes as f64);
        }
        if let Some(l) = response {
            self.response_bytes
                .get_or_create(l)
                .observe(resp_bytes as f64);
        }
    }

    /// The local rate limit counters of `stat_prefix`.
    pub fn global_rate_limit(&self, cluster: &str) -> GlobalRateLimitStats {
        let l = ClusterLabels {
            cluster_name: cluster.to_owned(),
        };
        GlobalRateLimitStats {
            ok: self.grl_ok.get_or_create_owned(&l),
            over_limit: self.grl_over_limit.get_or_create_owned(&l),
            error: self.grl_error.get_or_create_owned(&l),
            failure_mode_allowed: self.grl_failure_mode_allowed.get_or_create_owned(&l),
            shadow_over_limit: self.grl_shadow.get_or_create_owned(&l),
        }
    }

    pub fn local_rate_limit(&self, stat_prefix: &str) -> RateLimitStats {
        let l = StatPrefixLabels {
            stat_prefix: stat_prefix.to_owned(),
        };
        RateLimitStats {
            enabled: self.rl_enabled.get_or_create_owned(&l),
            ok: self.rl_ok.get_or_create_owned(&l),
            rate_limited: self.rl_rate_limited.get_or_create_owned(&l),
            enforced: self.rl_enforced.get_or_create_owned(&l),
        }
    }

    /// Counts one fault injected on a route served under `stat_prefix` (Envoy's
    /// `http.<stat_prefix>.fault.delays_injected` / `aborts_injected`).
    pub fn fault_injected(&self, stat_prefix: &str, abort: bool) {
        let l = StatPrefixLabels {
            stat_prefix: stat_prefix.to_owned(),
        };
        let family = if abort {
            &self.fault_aborts
        } else {
            &self.fault_delays
        };
        family.get_or_create(&l).inc();
    }

    /// Counts one authorization decision in `sluice_authz_decisions_total`.
    pub fn authz(&self, key: &AuthzKey) {
        let labels = || AuthzLabels {
            protocol: key.protocol.to_owned(),
            decision: if key.allowed { "allowed" } else { "denied" }.to_owned(),
            policy: match &key.rule {
                Some((policy, index)) => format!("{policy}-rule[{index}]"),
                None => "none".to_owned(),
            },
            audit: key.audit.to_string(),
        };
        self.authz_handles.with(
            key,
            || self.authz.get_or_create_owned(&labels()),
            Counter::inc,
        );
    }

    pub fn authz_dry_run(&self, labels: &DryRunLabels) {
        self.authz_dry_run.get_or_create(labels).inc();
    }

    /// Handles for one TCP connection: `opened` is counted now.
    pub fn tcp_open(&self, labels: &TcpLabels) -> TcpHandles {
        self.tcp_handles.with(
            labels,
            || TcpSeries {
                opened: self.tcp_opened.get_or_create_owned(labels),
                closed: self.tcp_closed.get_or_create_owned(labels),
                sent: self.tcp_sent.get_or_create_owned(labels),
                received: self.tcp_received.get_or_create_owned(labels),
            },
            |s| {
                s.opened.inc();
                TcpHandles {
                    closed: Some(s.closed.clone()),
                    sent: Some(s.sent.clone()),
                    received: Some(s.received.clone()),
                }
            },
        )
    }

    /// [`Metrics::tcp_open`] with labels per metric (`None`: disabled by Telemetry):
    /// connections opened, closed, bytes sent, bytes received, in that order.
    pub fn tcp_open_each(&self, labels: [Option<&TcpLabels>; 4]) -> TcpHandles {
        let [opened, closed, sent, received] = labels;
        if let Some(l) = opened {
            self.tcp_opened.get_or_create(l).inc();
        }
        TcpHandles {
            closed: closed.map(|l| self.tcp_closed.get_or_create_owned(l)),
            sent: sent.map(|l| self.tcp_sent.get_or_create_owned(l)),
            received: received.map(|l| self.tcp_received.get_or_create_owned(l)),
        }
    }
}

/// A TCP connection's counters (`None`: the metric is disabled by Telemetry).
pub struct TcpHandles {
    pub closed: Option<Counter>,
    pub sent: Option<Counter>,
    pub received: Option<Counter>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_istios() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let labels = RequestLabels {
            reporter: "source",
            source_workload: "unknown".into(),
            source_principal: "unknown".into(),
            destination_service: "api.github.com".into(),
            destination_service_name: "api.github.com".into(),
            destination_service_namespace: "unknown",
            destination_cluster: "unknown",
            request_protocol: "http",
            response_code: 200,
            response_flags: "-".into(),
            connection_security_policy: "unknown",
            tags: Tags::default(),
        };
        m.request(&labels, 3.0, 0, 10);
        m.cluster("outbound|443||api.github.com")
            .upstream_cx_total
            .inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for name in [
            "istio_requests_total{",
            "istio_request_duration_milliseconds_bucket{",
            "istio_request_bytes_bucket{",
            "istio_response_bytes_sum{",
            "envoy_cluster_upstream_cx_total{cluster_name=\"outbound|443||api.github.com\"} 1",
            "response_code=\"200\"",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }

    /// Connections of one label set share one series in each TCP metric, whether their
    /// handles came from the families or from the cache; another label set is its own series.
    #[test]
    fn tcp_connections_of_one_label_set_count_in_one_series() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let labels = |service: &str| TcpLabels {
            reporter: "source",
            source_workload: "unknown".into(),
            source_principal: "unknown".into(),
            destination_service: service.into(),
            destination_service_name: service.into(),
            destination_service_namespace: "unknown",
            destination_cluster: "unknown",
            request_protocol: "tcp",
            response_flags: "-".into(),
            connection_security_policy: "none",
            tags: Tags::default(),
        };
        for (service, sent) in [("db.example", 10), ("db.example", 5), ("other.example", 7)] {
            let h = m.tcp_open(&labels(service));
            h.sent.expect("sent").inc_by(sent);
            h.closed.expect("closed").inc();
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        let series = |metric: &str, service: &str| {
            let prefix = format!("{metric}{{");
            let label = format!("destination_service=\"{service}\"");
            text.lines()
                .filter(|l| l.starts_with(&prefix) && l.contains(&label))
                .map(|l| l.rsplit(' ').next().expect("value").to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            series("istio_tcp_connections_opened_total", "db.example"),
            ["2"]
        );
        assert_eq!(
            series("istio_tcp_connections_closed_total", "db.example"),
            ["2"]
        );
        assert_eq!(series("istio_tcp_sent_bytes_total", "db.example"), ["15"]);
        assert_eq!(series("istio_tcp_sent_bytes_total", "other.example"), ["7"]);
        assert_eq!(
            series("istio_tcp_connections_opened_total", "other.example"),
            ["1"]
        );
    }

    /// A decision's labels are formatted once (the rule as Envoy names it); the same decision
    /// again counts in the same series.
    #[test]
    fn authorization_decisions_count_by_the_rule_that_decided() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let key = |allowed, rule: Option<(&str, usize)>| AuthzKey {
            protocol: "http",
            allowed,
            rule: rule.map(|(p, i)| (Arc::from(p), i)),
            audit: false,
        };
        let policy = "ns[istio-system]-policy[egress]";
        for _ in 0..3 {
            m.authz(&key(true, Some((policy, 1))));
        }
        m.authz(&key(false, None));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for line in [
            r#"sluice_authz_decisions_total{protocol="http",decision="allowed",policy="ns[istio-system]-policy[egress]-rule[1]",audit="false"} 3"#,
            r#"sluice_authz_decisions_total{protocol="http",decision="denied",policy="none",audit="false"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn tag_overrides_replace_remove_and_add_labels() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let base = |service: &str, code: u16| RequestLabels {
            reporter: "source",
            source_workload: "unknown".into(),
            source_principal: "unknown".into(),
            destination_service: service.into(),
            destination_service_name: service.into(),
            destination_service_namespace: "unknown",
            destination_cluster: "unknown",
            request_protocol: "http",
            response_code: code,
            response_flags: "-".into(),
            connection_security_policy: "none",
            tags: Tags::default(),
        };
        let tagged = |service: &str, code: u16| {
            let mut l = base(service, code);
            l.destination_service_name = "outbound".into();
            assert!(l.clear("destination_service") && l.clear("response_code"));
            assert!(!l.clear("team"));
            l.tags = Tags(Some(
                vec![
                    ("destination_service".into(), Some("api.github.com".into())),
                    ("response_code".into(), None),
                    ("team".into(), Some("egress".into())),
                ]
                .into_boxed_slice(),
            ));
            l
        };
        // Two requests that differ only in what the overrides replace are one series.
        let a = tagged("outbound-a", 200);
        let b = tagged("outbound-b", 404);
        assert_eq!(a, b);
        m.request_each([Some(&a), None, None, None], 1.0, 0, 0);
        m.request_each([Some(&b), None, None, None], 1.0, 0, 0);
        m.request(&base("plain", 200), 1.0, 0, 0);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{") && l.contains("team="))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            line.contains("destination_service=\"api.github.com\""),
            "{line}"
        );
        assert!(
            line.contains("destination_service_name=\"outbound\""),
            "{line}"
        );
        assert!(!line.contains("response_code="), "{line}");
        assert!(line.ends_with(",team=\"egress\"} 2"), "{line}");
        // Disabled metrics (None) are not recorded; the plain request is, with every label.
        assert!(!text.contains("istio_request_duration_milliseconds_count{reporter=\"source\",source_workload=\"unknown\",source_principal=\"unknown\",destination_service=\"api.github.com\""));
        assert!(text.contains("destination_service=\"plain\""), "{text}");
    }
}
