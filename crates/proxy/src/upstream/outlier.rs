//! Outlier detection (DestinationRule `trafficPolicy.outlierDetection`), with Envoy's
//! consecutive-error semantics (`source/common/upstream/outlier_detection_impl.cc`):
//!
//! - each endpoint counts consecutive 5xx and consecutive gateway errors (502/503/504); local
//!   failures count as Envoy counts them without `split_external_local_origin_errors`: a
//!   connect failure or reset as a 503, a timeout as a 504, a TCP connect success as a 200;
//!   any other response resets both counters (a non-gateway 5xx resets the gateway one);
//! - with `split_external_local_origin_errors`, local failures count apart, as consecutive
//!   local-origin failures (ejecting at `consecutive_local_origin_failure`, default 5), reset
//!   by a connect success or any response; the 5xx and gateway counters see responses only;
//! - reaching a threshold ejects the endpoint at once, unless that would put more than
//!   `max_ejection_percent` of the cluster's endpoints out (one endpoint may always be
//!   ejected); the counter starts again from zero;
//! - every `interval`, an endpoint ejected for `base_ejection_time × backoff` (at most
//!   `max(300s, base_ejection_time)`, Envoy's `max_ejection_time`) returns; `backoff` grows
//!   by one at each ejection and shrinks by one per interval the endpoint stays in;
//! - picking skips ejected endpoints, unless fewer than `min_health_percent` (above 0) of
//!   them would be left: then all of them take traffic (Envoy's panic mode). At Istio's
//!   default 0 there is no panic: with every endpoint ejected, none is picked (503 `UH`).
//!
//! The sweeps run lazily, on the first pick or report after an interval has passed: there is
//! no timer task, and an idle cluster costs nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use sluice_snapshot::cluster::Outlier as Settings;
use tokio::time::Instant;

/// Envoy's default `max_ejection_time` (Istio does not set it).
const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// Idle endpoint records kept across sweeps before the untouched ones are dropped.
const KEEP: usize = 256;

/// The outcome of one attempt on one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this status.
    Status(u16),
    /// Connecting failed, or the connection was reset before the response (Envoy's
    /// `LOCAL_ORIGIN_CONNECT_FAILED`: a 503).
    ConnectFailed,
    /// The attempt timed out (`LOCAL_ORIGIN_TIMEOUT`: a 504).
    Timeout,
    /// A TCP proxy's connect succeeded (`LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL`: a 200).
    Connected,
}

impl Outcome {
    fn status(self) -> u16 {
        match self {
            Outcome::Status(s) => s,
            Outcome::ConnectFailed => 503,
            Outcome::Timeout => 504,
            Outcome::Connected => 200,
        }
    }
}

/// One cluster's detector: per-endpoint counters and ejections.
pub struct Detector {
    settings: Settings,
    inner: Mutex<Inner>,
    active: Gauge,
    enforced: Counter,
}

struct Inner {
    hosts: HashMap<SocketAddr, Host>,
    /// Endpoints ejected now.
    ejected: usize,
    /// How many endpoints the cluster had at the last pick (`max_ejection_percent`'s base).
    total: usize,
    next_sweep: Instant,
}

#[derive(Debug, Default, Clone)]
struct Host {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local: u32,
    ejected_at: Option<Instant>,
    /// When the endpoint last came back (the backoff decays from then on).
    returned_at: Option<Instant>,
    /// Envoy's `eject_time_backoff`: the multiplier of `base_ejection_time`.
    backoff: u32,
}

impl Host {
    fn idle(&self) -> bool {
        self.consecutive_5xx == 0
            && self.consecutive_gateway == 0
            && self.consecutive_local == 0
            && self.ejected_at.is_none()
            && self.backoff == 0
    }
}

/// The detector locked for one pick.
pub struct Picking<'a> {
    inner: MutexGuard<'a, Inner>,
    min_health_percent: u32,
}

impl Picking<'_> {
    /// Whether `addr` takes no traffic now.
    pub fn is_ejected(&self, addr: SocketAddr) -> bool {
        self.inner.ejected > 0
            && self
                .inner
                .hosts
                .get(&addr)
                .is_some_and(|h| h.ejected_at.is_some())
    }

    /// How many of `addrs` take traffic, or `None` when every one should (nothing ejected, or
    /// panic: fewer than `min_health_percent` left). With Istio's default `minHealthPercent`
    /// 0, Envoy's panic threshold is off: every endpoint ejected is `Some(0)`, no endpoint
    /// (503 `UH`), as Istio answers.
    pub fn healthy(&self, addrs: impl ExactSizeIterator<Item = SocketAddr>) -> Option<usize> {
        if self.inner.ejected == 0 {
            return None;
        }
        let total = addrs.len();
        let healthy = addrs.filter(|a| !self.is_ejected(*a)).count();
        let panic = self.min_health_percent > 0
            && (healthy as u64) * 100 < u64::from(self.min_health_percent) * total as u64;
        (!panic && healthy < total).then_some(healthy)
    }
}

impl Detector {
    pub fn new(settings: Settings, active: Gauge, enforced: Counter) -> Detector {
        Detector::new_at(settings, active, enforced, Instant::now())
    }

    fn new_at(settings: Settings, active: Gauge, enforced: Counter, now: Instant) -> Detector {
        let next_sweep = now + settings.interval;
        Detector {
            settings,
            inner: Mutex::new(Inner {
                hosts: HashMap::new(),
                ejected: 0,
                total: 0,
                next_sweep,
            }),
            active,
            enforced,
        }
    }

    fn lock(&self, now: Instant) -> MutexGuard<'_, Inner> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if now >= inner.next_sweep {
            self.sweep(&mut inner, now);
        }
        inner
    }

    /// Every endpoint the detector holds a record of, and whether it is ejected now.
    pub fn endpoints(&self) -> Vec<(SocketAddr, bool)> {
        let inner = self.lock(Instant::now());
        inner
            .hosts
            .iter()
            .map(|(a, h)| (*a, h.ejected_at.is_some()))
            .collect()
    }

    /// Locks the detector for a pick among `total` endpoints.
    pub fn picking(&self, total: usize) -> Picking<'_> {
        self.picking_at(total, Instant::now())
    }

    fn picking_at(&self, total: usize, now: Instant) -> Picking<'_> {
        let mut inner = self.lock(now);
        inner.total = total;
        Picking {
            inner,
            min_health_percent: self.settings.min_health_percent.unwrap_or(0),
        }
    }

    /// Counts the outcome of an attempt on `addr`; may eject it.
    pub fn report(&self, addr: SocketAddr, outcome: Outcome) {
        self.report_at(addr, outcome, Instant::now());
    }

    fn report_at(&self, addr: SocketAddr, outcome: Outcome, now: Instant) {
        let s = &self.settings;
        let status = outcome.status();
        let mut inner = self.lock(now);
        let inner = &mut *inner;
        if let Some(limit) = s.local_origin_failures {
            match outcome {
                Outcome::ConnectFailed | Outcome::Timeout => {
                    let h = inner.hosts.entry(addr).or_default();
                    h.consecutive_local += 1;
                    if limit > 0 && h.consecutive_local >= limit {
                        h.consecutive_local = 0;
                        self.eject(inner, addr, now);
                    }
                    return;
                }
                // The connection held: the local-origin run ends.
                Outcome::Connected | Outcome::Status(_) => {
                    if let Some(h) = inner.hosts.get_mut(&addr) {
                        h.consecutive_local = 0;
                    }
                    if outcome == Outcome::Connected {
                        return;
                    }
                }
            }
        }
        if !(500..600).contains(&status) {
            if let Some(h) = inner.hosts.get_mut(&addr) {
                h.consecutive_5xx = 0;
                h.consecutive_gateway = 0;
            }
            return;
        }
        let h = inner.hosts.entry(addr).or_default();
        let mut trip = false;
        if matches!(status, 502..=504) {
            h.consecutive_gateway += 1;
            if let Some(n) = s.consecutive_gateway_errors.filter(|n| *n > 0)
                && h.consecutive_gateway >= n
            {
                h.consecutive_gateway = 0;
                trip = true;
            }
        } else {
            h.consecutive_gateway = 0;
        }
        h.consecutive_5xx += 1;
        if s.consecutive_5xx > 0 && h.consecutive_5xx >= s.consecutive_5xx {
            h.consecutive_5xx = 0;
            trip = true;
        }
        if trip {
            self.eject(inner, addr, now);
        }
    }

    fn eject(&self, inner: &mut Inner, addr: SocketAddr, now: Instant) {
        let total = inner.total.max(1) as u64;
        let max = u64::from(self.settings.max_ejection_percent.min(100));
        // Envoy: the ejected share after this one within the maximum, or nothing ejected yet.
        let allowed = inner.ejected == 0 || (inner.ejected as u64 + 1) * 100 <= max * total;
        let Some(h) = inner.hosts.get_mut(&addr) else {
            return;
        };
        if h.ejected_at.is_some() || !allowed {
            return;
        }
        let base = self.settings.base_ejection_time;
        if base.saturating_mul(h.backoff) < MAX_EJECTION_TIME.saturating_add(base) {
            h.backoff += 1;
        }
        h.ejected_at = Some(now);
        inner.ejected += 1;
        self.active.inc();
        self.enforced.inc();
        tracing::info!(endpoint = %addr, backoff = h.backoff, "outlier detection ejected an endpoint");
    }

    /// Envoy's interval timer: returns endpoints whose ejection time is up, decays the
    /// backoff of those that stayed in.
    fn sweep(&self, inner: &mut Inner, now: Instant) {
        let interval = self.settings.interval.max(Duration::from_millis(1));
        let base = self.settings.base_ejection_time;
        let cap = MAX_EJECTION_TIME.max(base);
        // Intervals since the last sweep (sweeps are lazy: several may be due at once).
        let due = 1 + (now - inner.next_sweep).as_nanos() / interval.as_nanos();
        let due = u32::try_from(due).unwrap_or(u32::MAX);
        let mut returned = 0;
        for (addr, h) in inner.hosts.iter_mut() {
            match h.ejected_at {
                Some(at) => {
                    if now.duration_since(at) >= base.saturating_mul(h.backoff).min(cap) {
                        h.ejected_at = None;
                        h.returned_at = Some(now);
                        returned += 1;
                        tracing::info!(endpoint = %addr, "outlier detection returned an endpoint");
                    }
                }
                None => {
                    if h.returned_at
                        .is_some_and(|t| now.duration_since(t) >= interval)
                    {
                        h.backoff = h.backoff.saturating_sub(due);
                    }
                }
            }
        }
        inner.ejected -= returned;
        self.active.dec_by(returned as i64);
        if inner.hosts.len() > KEEP {
            inner.hosts.retain(|_, h| !h.idle());
        }
        inner.next_sweep = now + interval;
    }
}

impl Drop for Detector {
    /// A replaced cluster's ejections end with it.
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        self.active.dec_by(inner.ejected as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], n))
    }

    fn settings() -> Settings {
        Settings {
            consecutive_5xx: 3,
            consecutive_gateway_errors: None,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(10),
            max_ejection_percent: 100,
            min_health_percent: None,
            local_origin_failures: None,
        }
    }

    struct T {
        d: Detector,
        active: Gauge,
        enforced: Counter,
        now: Instant,
    }

    impl T {
        fn new(s: Settings) -> T {
            let (active, enforced) = (Gauge::default(), Counter::default());
            let now = Instant::now();
            T {
                d: Detector::new_at(s, active.clone(), enforced.clone(), now),
                active,
                enforced,
                now,
            }
        }
        fn at(&self, secs: u64) -> Instant {
            self.now + Duration::from_secs(secs)
        }
        fn report(&self, a: SocketAddr, o: Outcome, n: usize, secs: u64) {
            for _ in 0..n {
                self.d.report_at(a, o, self.at(secs));
            }
        }
        /// Which of ports `1..=total` are ejected at `secs` (sweeping first, as a pick does).
        fn ejected(&self, total: u16, secs: u64) -> Vec<u16> {
            let p = self.d.picking_at(usize::from(total), self.at(secs));
            (1..=total).filter(|n| p.is_ejected(addr(*n))).collect()
        }
    }

    #[test]
    fn ejects_at_the_threshold_not_before() {
        let t = T::new(settings());
        assert!(t.ejected(2, 0).is_empty());
        t.report(addr(1), Outcome::Status(500), 2, 0);
        assert!(t.ejected(2, 0).is_empty());
        t.report(addr(1), Outcome::Status(500), 1, 0);
        assert_eq!(t.ejected(2, 0), [1]);
        assert_eq!(t.active.get(), 1);
        assert_eq!(t.enforced.get(), 1);
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let t = T::new(settings());
        t.report(addr(1), Outcome::Status(500), 2, 0);
        t.report(addr(1), Outcome::Status(404), 1, 0);
        t.report(addr(1), Outcome::Status(503), 2, 0);
        assert!(t.ejected(2, 0).is_empty());
        t.report(addr(1), Outcome::ConnectFailed, 1, 0);
        assert_eq!(t.ejected(2, 0), [1]);
    }

    /// Envoy's `split_external_local_origin_errors`: connect failures and timeouts count
    /// apart from responses, a response or a connect success ends their run, and responses
    /// alone feed the 5xx count.
    #[test]
    fn local_origin_failures_count_apart_when_split() {
        let mut s = settings();
        s.local_origin_failures = Some(2);
        let t = T::new(s);
        t.report(addr(1), Outcome::ConnectFailed, 1, 0);
        t.report(addr(1), Outcome::Status(200), 1, 0);
        t.report(addr(1), Outcome::Timeout, 1, 0);
        t.report(addr(1), Outcome::Connected, 1, 0);
        t.report(addr(1), Outcome::ConnectFailed, 1, 0);
        assert!(
            t.ejected(2, 0).is_empty(),
            "every run of local failures was ended"
        );
        // Two 500s, then local failures that do not count as 5xx: no 5xx ejection (3 needed).
        t.report(addr(2), Outcome::Status(500), 2, 0);
        t.report(addr(2), Outcome::Timeout, 1, 0);
        t.report(addr(2), Outcome::Status(500), 1, 0);
        assert_eq!(t.ejected(2, 0), [2], "the third 500 in a row ejects");
        t.report(addr(1), Outcome::Timeout, 1, 0);
        assert_eq!(t.ejected(2, 0), [1, 2], "two local failures in a row eject");
    }

    #[test]
    fn zero_disables_and_gateway_errors_count_apart() {
        let mut s = settings();
        s.consecutive_5xx = 0;
        s.consecutive_gateway_errors = Some(2);
        let t = T::new(s);
        t.report(addr(1), Outcome::Status(500), 10, 0);
        assert!(t.ejected(2, 0).is_empty(), "5xx detection is off");
        // A 500 between gateway errors resets their count.
        t.report(addr(1), Outcome::Status(502), 1, 0);
        t.report(addr(1), Outcome::Status(500), 1, 0);
        t.report(addr(1), Outcome::Timeout, 1, 0);
        assert!(t.ejected(2, 0).is_empty());
        t.report(addr(1), Outcome::ConnectFailed, 1, 0);
        assert_eq!(t.ejected(2, 0), [1]);
    }

    #[test]
    fn ejection_time_multiplies_and_decays() {
        let t = T::new(settings());
        t.report(addr(1), Outcome::Status(500), 3, 0);
        assert_eq!(t.ejected(2, 9), [1]);
        assert!(t.ejected(2, 10).is_empty(), "back after 10s");
        assert_eq!(t.active.get(), 0);
        // Ejected again at once: 2 × 10s.
        t.report(addr(1), Outcome::Status(500), 3, 10);
        assert_eq!(t.ejected(2, 29), [1]);
        assert!(t.ejected(2, 30).is_empty(), "back after 20s");
        // Healthy for long enough: the backoff decays to 0, the next ejection is 10s again.
        for s in 31..=40 {
            t.ejected(2, s);
        }
        t.report(addr(1), Outcome::Status(500), 3, 40);
        assert_eq!(t.ejected(2, 49), [1]);
        assert!(t.ejected(2, 50).is_empty());
        assert_eq!(t.enforced.get(), 3);
    }

    #[test]
    fn max_ejection_percent_caps_but_one_may_go() {
        let mut s = settings();
        s.max_ejection_percent = 50;
        let t = T::new(s);
        t.ejected(2, 0);
        t.report(addr(1), Outcome::Status(500), 3, 0);
        t.report(addr(2), Outcome::Status(500), 3, 0);
        assert_eq!(t.ejected(2, 0), [1]);

        let mut s = settings();
        s.max_ejection_percent = 10;
        let t = T::new(s);
        t.ejected(3, 0);
        t.report(addr(2), Outcome::Status(500), 3, 0);
        t.report(addr(3), Outcome::Status(500), 3, 0);
        assert_eq!(t.ejected(3, 0), [2], "the first ejection is always allowed");
        assert_eq!(t.active.get(), 1);
        assert_eq!(t.enforced.get(), 1);
    }

    #[test]
    fn panic_when_too_few_are_left() {
        let t = T::new(settings());
        t.ejected(2, 0);
        t.report(addr(1), Outcome::Status(500), 3, 0);
        let p = t.d.picking_at(2, t.at(0));
        assert_eq!(p.healthy([addr(1), addr(2)].into_iter()), Some(1));
        drop(p);
        t.report(addr(2), Outcome::Status(500), 3, 0);
        let p = t.d.picking_at(2, t.at(0));
        assert_eq!(
            p.healthy([addr(1), addr(2)].into_iter()),
            Some(0),
            "all ejected, no panic threshold: no endpoint, as Istio"
        );
        drop(p);

        let mut s = settings();
        s.min_health_percent = Some(60);
        let t = T::new(s);
        t.ejected(2, 0);
        t.report(addr(1), Outcome::Status(500), 3, 0);
        let p = t.d.picking_at(2, t.at(0));
        assert_eq!(p.healthy([addr(1), addr(2)].into_iter()), None, "50% < 60%");
    }

    #[test]
    fn dropping_the_detector_clears_its_gauge() {
        let t = T::new(settings());
        t.report(addr(1), Outcome::Status(500), 3, 0);
        assert_eq!(t.active.get(), 1);
        let active = t.active.clone();
        drop(t);
        assert_eq!(active.get(), 0);
    }
}
