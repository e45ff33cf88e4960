//! Per-cluster runtime state (load-balancer counters, in-flight requests, circuit-breaker
//! counts, the connection pool) and picking: a weighted cluster of a route, an endpoint of a
//! cluster (LEAST_REQUEST with power of two choices, ROUND_ROBIN, RANDOM, and consistent
//! hashing on a ring or a Maglev table, [`consistent`]).

pub mod consistent;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng;
use sluice_snapshot::cluster::{HashAlgorithm, LbPolicy};
use sluice_snapshot::route::WeightedCluster;

use prometheus_client::metrics::gauge::Gauge;

use super::outlier::Detector;
use super::pool::Pool;
use crate::telemetry::metrics::ClusterStats;
use consistent::Table;

/// Picks a weighted cluster (weights sum to 100, or to whatever they sum to).
pub fn pick_weighted(clusters: &[WeightedCluster]) -> Option<&WeightedCluster> {
    match clusters {
        [] => None,
        [one] => Some(one),
        _ => {
            let total: u64 = clusters.iter().map(|c| u64::from(c.weight)).sum();
            if total == 0 {
                return clusters.first();
            }
            let mut n = rand::rng().random_range(0..total);
            for c in clusters {
                let w = u64::from(c.weight);
                if n < w {
                    return Some(c);
                }
                n -= w;
            }
            clusters.last()
        }
    }
}

/// One resolved endpoint of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub addr: SocketAddr,
    pub weight: u32,
    /// The name dialed (for SNI when the cluster sets none): the endpoint's or the
    /// service's host name, or the IP; on a mesh-hop cluster, the destination the app asked
    /// for ([`super::Upstreams::endpoints`]).
    pub host: Arc<str>,
}

pub struct ClusterState {
    rr: AtomicUsize,
    inflight: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>, foldhash::fast::RandomState>>,
    /// Upstream connections open now (max_connections).
    pub connections: AtomicU32,
    /// Requests waiting for a connection (max_pending_requests).
    pub pending: AtomicU32,
    /// Requests in flight (max_requests).
    pub requests: AtomicU32,
    /// Retries in flight (max_retries).
    pub retries: AtomicU32,
    pub stats: ClusterStats,
    /// Idle HTTP connections of this cluster; its `freed` is signalled when a connection
    /// closes or returns.
    pub pool: Arc<Pool>,
    /// Outlier detection, when the cluster has `outlierDetection`.
    pub outlier: Option<Detector>,
    /// Consistent-hash tables of the endpoint sets picked from lately, newest first: built
    /// when the endpoints change (a new snapshot, a DNS answer), not per request.
    hash_tables: Mutex<Vec<Arc<Table>>>,
}

/// How many endpoint sets' tables a cluster keeps (DYNAMIC_DNS picks among each host's own).
const HASH_TABLES_KEPT: usize = 4;

impl ClusterState {
    pub fn new(
        stats: ClusterStats,
        outlier: Option<&sluice_snapshot::cluster::Outlier>,
    ) -> ClusterState {
        let outlier = outlier.map(|o| {
            Detector::new(
                o.clone(),
                stats.outlier_ejections_active.clone(),
                stats.outlier_ejections_enforced.clone(),
            )
        });
        ClusterState {
            rr: AtomicUsize::new(0),
            inflight: Mutex::default(),
            connections: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            requests: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            stats,
            pool: Arc::new(Pool::default()),
            outlier,
            hash_tables: Mutex::new(Vec::new()),
        }
    }

    /// The consistent-hash table of `candidates`, built when this endpoint set is new.
    fn hash_table(&self, algorithm: HashAlgorithm, candidates: &[Candidate]) -> Arc<Table> {
        let lock = || self.hash_tables.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut tables = lock();
            if let Some(i) = tables.iter().position(|t| t.fits(algorithm, candidates)) {
                let t = tables[i].clone();
                if i > 0 {
                    tables[..=i].rotate_right(1);
                }
                return t;
            }
        }
        let built = Arc::new(Table::build(algorithm, candidates));
        let mut tables = lock();
        tables.insert(0, built.clone());
        tables.truncate(HASH_TABLES_KEPT);
        built
    }

    /// Every endpoint picked so far, with its requests in flight now.
    pub fn active_requests(&self) -> Vec<(SocketAddr, usize)> {
        let map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(a, n)| (*a, n.load(Ordering::Relaxed)))
            .collect()
    }

    fn inflight_of(&self, addr: SocketAddr) -> Arc<AtomicUsize> {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 4096 {
            map.retain(|_, c| Arc::strong_count(c) > 1 || c.load(Ordering::Relaxed) > 0);
        }
        map.entry(addr).or_default().clone()
    }

    /// Picks an endpoint and counts a request in flight to it until the guard is dropped.
    /// Endpoints outlier detection ejected are skipped, unless too few would be left.
    /// `hash`: the request's hash, for a consistent-hash policy (`None`: a random one, as
    /// Envoy does when the request lacks the key); an endpoint skipped hands its hashes to the
    /// next one on the ring (in the table).
    pub fn pick<'a>(
        &self,
        policy: &LbPolicy,
        candidates: &'a [Candidate],
        hash: Option<u64>,
    ) -> Option<(&'a Candidate, InflightGuard)> {
        let hashed = match policy {
            LbPolicy::ConsistentHash { algorithm, .. } if candidates.len() > 1 => Some((
                self.hash_table(*algorithm, candidates),
                hash.unwrap_or_else(|| rand::rng().random()),
            )),
            _ => None,
        };
        let hashed = hashed.as_ref().map(|(t, h)| (&**t, *h));
        let chosen = match &self.outlier {
            None => self.choose(policy, candidates, hashed)?,
            Some(detector) => {
                let picking = detector.picking(candidates.len());
                match picking.healthy(candidates.iter().map(|c| c.addr)) {
                    None => self.choose(policy, candidates, hashed)?,
                    Some(healthy) => {
                        self.choose_among(policy, candidates, hashed, healthy, |c| {
                            !picking.is_ejected(c.addr)
                        })?
                    }
                }
            }
        };
        let counter = self.inflight_of(chosen.addr);
        counter.fetch_add(1, Ordering::Relaxed);
        Some((chosen, InflightGuard(counter)))
    }

    fn choose<'a>(
        &self,
        policy: &LbPolicy,
        candidates: &'a [Candidate],
        hashed: Option<(&Table, u64)>,
    ) -> Option<&'a Candidate> {
        Some(match candidates.len() {
            0 => return None,
            1 => &candidates[0],
            n => match policy {
                LbPolicy::RoundRobin => &candidates[self.rr.fetch_add(1, Ordering::Relaxed) % n],
                // The original destination: the first address of the name the app asked
                // for that the IP guard let through.
                LbPolicy::Passthrough => &candidates[0],
                LbPolicy::Random => weighted_random(candidates),
                LbPolicy::LeastRequest => {
                    let (a, b) = two_choices(n);
                    self.less_loaded(&candidates[a], &candidates[b])
                }
                LbPolicy::ConsistentHash { .. } => match hashed {
                    Some((table, hash)) => candidates.get(table.walk(hash).next()?)?,
                    None => weighted_random(candidates),
                },
            },
        })
    }

    /// [`Self::choose`] among the `n` (at least one) candidates `ok` keeps, without
    /// allocating.
    fn choose_among<'a>(
        &self,
        policy: &LbPolicy,
        candidates: &'a [Candidate],
        hashed: Option<(&Table, u64)>,
        n: usize,
        ok: impl Fn(&Candidate) -> bool,
    ) -> Option<&'a Candidate> {
        let nth = |i: usize| candidates.iter().filter(|c| ok(c)).nth(i);
        match (n, policy) {
            (0, _) => None,
            (1, _) | (_, LbPolicy::Passthrough) => nth(0),
            (n, LbPolicy::RoundRobin) => nth(self.rr.fetch_add(1, Ordering::Relaxed) % n),
            (_, LbPolicy::Random) => {
                let total: u64 = candidates
                    .iter()
                    .filter(|c| ok(c))
                    .map(|c| u64::from(c.weight.max(1)))
                    .sum();
                let mut r = rand::rng().random_range(0..total.max(1));
                for c in candidates.iter().filter(|c| ok(c)) {
                    let w = u64::from(c.weight.max(1));
                    if r < w {
                        return Some(c);
                    }
                    r -= w;
                }
                nth(0)
            }
            (n, LbPolicy::LeastRequest) => {
                let (a, b) = two_choices(n);
                Some(self.less_loaded(nth(a)?, nth(b)?))
            }
            // The next point (entry) whose endpoint takes traffic.
            (_, LbPolicy::ConsistentHash { .. }) => match hashed {
                Some((table, hash)) => table
                    .walk(hash)
                    .filter_map(|i| candidates.get(i))
                    .find(|c| ok(c))
                    .or_else(|| nth(0)),
                None => nth(0),
            },
        }
    }

    fn less_loaded<'a>(&self, a: &'a Candidate, b: &'a Candidate) -> &'a Candidate {
        let load = |c: &Candidate| self.inflight_of(c.addr).load(Ordering::Relaxed);
        if load(b) < load(a) { b } else { a }
    }
}

/// Two different indexes below `n` (at least 2), at random.
fn two_choices(n: usize) -> (usize, usize) {
    let mut rng = rand::rng();
    let a = rng.random_range(0..n);
    let mut b = rng.random_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

fn weighted_random(candidates: &[Candidate]) -> &Candidate {
    let total: u64 = candidates.iter().map(|c| u64::from(c.weight.max(1))).sum();
    let mut n = rand::rng().random_range(0..total.max(1));
    for c in candidates {
        let w = u64::from(c.weight.max(1));
        if n < w {
            return c;
        }
        n -= w;
    }
    &candidates[0]
}

/// A request in flight to one endpoint (LEAST_REQUEST's load).
#[derive(Debug)]
pub struct InflightGuard(Arc<AtomicUsize>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Held by an upstream connection's driver: its slot of the cluster's connections and the
/// active-connections gauge.
pub struct ConnGuard {
    active: Gauge,
    _slot: Slot,
}

impl ConnGuard {
    pub fn new(active: Gauge, slot: Slot) -> ConnGuard {
        active.inc();
        ConnGuard {
            active,
            _slot: slot,
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// A slot of a circuit-breaker counter, released on drop.
pub struct Slot {
    state: Arc<ClusterState>,
    which: fn(&ClusterState) -> &AtomicU32,
    notify: bool,
}

impl Slot {
    /// Takes a slot when fewer than `max` are taken (`None` = unlimited).
    pub fn try_take(
        state: &Arc<ClusterState>,
        which: fn(&ClusterState) -> &AtomicU32,
        max: Option<u32>,
        notify: bool,
    ) -> Option<Slot> {
        let counter = which(state);
        let prev = counter.fetch_add(1, Ordering::AcqRel);
        if max.is_some_and(|m| prev >= m) {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot {
            state: state.clone(),
            which,
            notify,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        (self.which)(&self.state).fetch_sub(1, Ordering::AcqRel);
        if self.notify {
            self.state.pool.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::telemetry::Metrics;

    fn candidates(n: u16) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i)),
                weight: 1,
                host: Arc::from("h"),
            })
            .collect()
    }

    fn state() -> ClusterState {
        ClusterState::new(Metrics::new(&mut Registry::default()).cluster("c"), None)
    }

    #[test]
    fn round_robin_cycles() {
        let s = state();
        let c = candidates(3);
        let picks: Vec<u16> = (0..6)
            .map(|_| {
                s.pick(&LbPolicy::RoundRobin, &c, None)
                    .map(|(c, _)| c.addr.port())
                    .unwrap_or(0)
            })
            .collect();
        assert_eq!(picks, [1000, 1001, 1002, 1000, 1001, 1002]);
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let s = state();
        let c = candidates(2);
        // Hold many requests on the first endpoint.
        let busy: Vec<_> = (0..10)
            .map(|_| s.inflight_of(c[0].addr))
            .inspect(|a| {
                a.fetch_add(1, Ordering::Relaxed);
            })
            .collect();
        for _ in 0..20 {
            let (picked, _g) = s.pick(&LbPolicy::LeastRequest, &c, None).expect("pick");
            assert_eq!(picked.addr, c[1].addr);
        }
        drop(busy);
    }

    #[test]
    fn consistent_hash_sticks_and_builds_a_table_per_endpoint_set() {
        use sluice_snapshot::cluster::HashKey;
        let s = state();
        let c = candidates(4);
        let policy = LbPolicy::ConsistentHash {
            key: Some(HashKey::SourceIp),
            algorithm: HashAlgorithm::Maglev { table_size: 251 },
        };
        let pick = |c: &[Candidate], h| {
            s.pick(&policy, c, Some(h))
                .map(|(c, _)| c.addr.port())
                .unwrap_or(0)
        };
        let mut seen = std::collections::HashSet::new();
        for h in 0..40u64 {
            let h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let first = pick(&c, h);
            seen.insert(first);
            for _ in 0..3 {
                assert_eq!(pick(&c, h), first);
            }
        }
        assert!(seen.len() > 1, "{seen:?}");
        let tables = || s.hash_tables.lock().map(|t| t.len()).unwrap_or(0);
        assert_eq!(tables(), 1, "built once");
        pick(&c[..3], 1);
        assert_eq!(tables(), 2, "a new endpoint set, a new table");
        pick(&c, 1);
        assert_eq!(tables(), 2, "the first one kept");
        // Without a hash: any endpoint, still.
        assert!(s.pick(&policy, &c, None).is_some());
    }

    #[test]
    fn weighted_pick_follows_weights() {
        use sluice_snapshot::route::HeaderOps;
        let wc = |name: &str, weight| WeightedCluster {
            cluster: name.into(),
            weight,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
        };
        let clusters = [wc("a", 80), wc("b", 20), wc("c", 0)];
        let mut a = 0;
        for _ in 0..10_000 {
            match pick_weighted(&clusters).map(|c| c.cluster.as_str()) {
                Some("a") => a += 1,
                Some("b") => {}
                other => panic!("{other:?}"),
            }
        }
        assert!((7600..8400).contains(&a), "{a}");
    }

    #[test]
    fn slots_respect_limits() {
        let s = Arc::new(state());
        let a = Slot::try_take(&s, |s| &s.connections, Some(1), true);
        assert!(a.is_some());
        assert!(Slot::try_take(&s, |s| &s.connections, Some(1), true).is_none());
        drop(a);
        assert!(Slot::try_take(&s, |s| &s.connections, Some(1), true).is_some());
        assert!(Slot::try_take(&s, |s| &s.requests, None, false).is_some());
    }
}
