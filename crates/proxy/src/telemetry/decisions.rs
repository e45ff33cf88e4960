//! The egress map's memory (the admin API's `/ui`, `/api/map`, `/api/decisions`): who talked
//! to which external host, what was decided, and recently how often.
//!
//! Every finished [`Record`] lands here as one decision: a fixed-size ring keeps the most recent
//! ones, and a bounded table of edges (source workload → destination host → outcome) keeps
//! totals and a one-minute window. Memory is bounded by construction: the ring never grows past
//! its capacity, and once the table holds `edge_cap` source/destination pairs, new pairs are
//! counted under one `(other)` edge.
//!
//! The data plane never waits here for long: a record tries the lock for a few microseconds
//! (another record's critical section is a fraction of that) and, when the admin API holds it
//! longer (reading a page's worth), counts the decision as `missed` instead — the map is a
//! view, and a request is worth more than its line in it. The critical section does no
//! allocation for an edge already known: the destination's name is shared with the table's
//! key, and the record's own strings are moved, not copied.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::record::{Kind, Record};

type Fast = foldhash::fast::RandomState;

/// Recent decisions kept for the table.
pub const DEFAULT_RING: usize = 1_000;
/// Source/destination pairs with their own edge; more are counted under `(other)`.
pub const DEFAULT_EDGE_CAP: usize = 10_000;
/// The window rates are computed over: [`BUCKETS`] buckets of [`BUCKET_SECS`].
pub const WINDOW_SECS: u64 = BUCKET_SECS * BUCKETS as u64;
const BUCKET_SECS: u64 = 10;
const BUCKETS: usize = 6;
/// Decisions queued for the aggregator; beyond that (it fell behind) they are missed.
const QUEUE: usize = 4096;
/// How long a reader waits for the decisions queued before it.
const SETTLE: Duration = Duration::from_millis(50);
/// How often the aggregator looks for new decisions while they arrive. Each look is a
/// wake-up on a core the data plane uses (at 5 ms, 3 % of a mesh hop's CPU samples at
/// 1,000 req/s); a burst fills a quarter of the queue and wakes it sooner, a reader at once.
const POLL: Duration = Duration::from_millis(25);
/// The longest it sleeps once none arrive (the wait doubles from [`POLL`] per empty look): an
/// idle proxy's aggregator wakes a few times a second, not 200. A reader, or a queue filling
/// up, wakes it at once.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// Decisions waiting that wake a sleeping aggregator (a burst after a quiet spell).
const WAKE_AT: u64 = QUEUE as u64 / 4;
/// Decisions applied under one taking of the lock (readers get their turn in between).
const BATCH: usize = 256;
/// A pair idle this long is dropped when the table is full, to make room for new pairs.
const IDLE_EVICT_SECS: u64 = 15 * 60;

/// The source of a flow without a verified mesh identity.
pub const UNIDENTIFIED: &str = "unidentified";
/// The node that stands for the pairs beyond the edge cap.
pub const OTHER: &str = "(other)";

/// How a request or connection ended, as the map colours it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allowed,
    /// An AuthorizationPolicy denied it (`rbac_access_denied…`).
    Denied,
    /// Refused by design: REGISTRY_ONLY's BlackHoleCluster, no route / filter chain for the
    /// host, the destination IP guard, domain fronting, a failed mesh or TLS handshake.
    Refused,
    /// A local or global rate limit (`RL`, `RLSE`).
    RateLimited,
    /// The upstream failed: connect, TLS, reset, timeout, overflow, DNS, or a 5xx it sent.
    UpstreamError,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Allowed,
        Outcome::Denied,
        Outcome::Refused,
        Outcome::RateLimited,
        Outcome::UpstreamError,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// Decides the outcome from what Envoy would log: the response flags, the details (HTTP)
    /// or termination details (TCP), the code, the cluster. One mapping point, read from the
    /// flags and details `crate::Error` produces, so the map and the access log never disagree.
    pub fn classify(
        kind: Kind,
        code: u16,
        flags: &str,
        details: Option<&str>,
        cluster: Option<&str>,
    ) -> Outcome {
        let details = details.unwrap_or("");
        if details.starts_with("rbac_access_denied") {
            return Outcome::Denied;
        }
        // One pass over the flags.
        let (mut limited, mut refused, mut upstream) = (false, false, false);
        for f in flags.split(',') {
            match f {
                "RL" | "RLSE" => limited = true,
                "NR" | "NC" => refused = true,
                "UF" | "URX" | "UH" | "UO" | "UT" | "UC" | "UPE" | "DF" | "LH" | "UR" => {
                    upstream = true;
                }
                _ => {}
            }
        }
        if limited || details.contains("rate_limited") {
            return Outcome::RateLimited;
        }
        let refused_details = [
            "destination_ip_denied",
            "filter_chain_not_found",
            "route_not_found",
            "port_not_declared",
            "misdirected_request",
            "route_revoked",
            "tls_handshake_failed",
            "mesh_mtls_handshake_failed",
            "mesh_mtls_without_identity",
            "tls_inspector",
        ];
        if refused
            || cluster == Some(sluice_snapshot::BLACK_HOLE_CLUSTER)
            || refused_details.iter().any(|d| details.starts_with(d))
        {
            return Outcome::Refused;
        }
        if upstream || (kind == Kind::Http && code >= 500) {
            return Outcome::UpstreamError;
        }
        Outcome::Allowed
    }
}

/// One finished request or connection, as the ring keeps it.
#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    start: SystemTime,
    kind: Kind,
    source: Arc<str>,
    source_ip: IpAddr,
    destination: Arc<str>,
    port: u16,
    code: u16,
    flags: Cow<'static, str>,
    details: Option<Cow<'static, str>>,
    allowed_by: Option<(Arc<str>, usize)>,
    outcome: Outcome,
    cluster: Option<Arc<str>>,
}

/// A count with a sliding window of [`BUCKETS`] buckets.
#[derive(Debug, Clone, Copy, Default)]
struct Counter {
    total: u64,
    http: u64,
    /// Seconds since [`Decisions::base`] of the last count.
    last: u64,
    /// (bucket number, count) per slot; a slot of an older bucket number is stale.
    buckets: [(u64, u32); BUCKETS],
}

impl Counter {
    fn bump(&mut self, now: u64, http: bool) {
        self.total += 1;
        self.http += u64::from(http);
        self.last = now;
        let epoch = now / BUCKET_SECS;
        let slot = &mut self.buckets[(epoch % BUCKETS as u64) as usize];
        if slot.0 != epoch {
            *slot = (epoch, 0);
        }
        slot.1 = slot.1.saturating_add(1);
    }

    fn window(&self, now: u64) -> u64 {
        let epoch = now / BUCKET_SECS;
        self.buckets
            .iter()
            .filter(|(e, _)| *e + BUCKETS as u64 > epoch && *e <= epoch)
            .map(|(_, n)| u64::from(*n))
            .sum()
    }
}

/// The counters of one source/destination pair, by outcome.
#[derive(Debug, Clone, Copy, Default)]
struct Pair {
    by_outcome: [Counter; 5],
}

impl Pair {
    fn last(&self) -> u64 {
        self.by_outcome.iter().map(|c| c.last).max().unwrap_or(0)
    }
}

#[derive(Debug, Default)]
struct Inner {
    ring: VecDeque<Entry>,
    next_seq: u64,
    /// source → destination → counters. Two levels so a lookup borrows `&str` for both
    /// names: no key is built (allocated) to find an existing pair. A fast hash: SipHash
    /// here cost the aggregator about 200 instructions per decision.
    edges: HashMap<Arc<str>, HashMap<Arc<str>, Pair, Fast>, Fast>,
    pairs: usize,
    other: Pair,
    /// Decisions counted under `(other)` because the table was full.
    overflowed: u64,
}

/// What the aggregator and the readers share.
#[derive(Debug)]
struct State {
    inner: Mutex<Inner>,
    ring_cap: usize,
    edge_cap: usize,
    /// Decisions not kept because the queue was full (the aggregator fell behind).
    missed: AtomicU64,
    /// Decisions queued and applied: a reader waits (briefly) for what was queued before it.
    sent: AtomicU64,
    applied: AtomicU64,
    /// The aggregator thread, to wake from its sleep.
    thread: OnceLock<std::thread::Thread>,
    /// How many times the aggregator has looked at the queue.
    looks: AtomicU64,
}

/// The recent decisions and per-edge counters of one proxy.
///
/// A finished record only queues its decision ([`QUEUE`] slots, allocated once): the data
/// plane never takes a lock here and never waits. One aggregator thread, started with the
/// first decision, applies them to the ring and the edge table under the lock the admin API
/// reads through; a reader copies what it needs and lets go.
#[derive(Debug)]
pub struct Decisions {
    state: Arc<State>,
    base: Instant,
    queue: OnceLock<Option<SyncSender<Finished>>>,
}

impl Default for Decisions {
    fn default() -> Self {
        Decisions::new(DEFAULT_RING, DEFAULT_EDGE_CAP)
    }
}

/// How the destination of a record is named: shared when the record already holds it, else
/// the record's own string (its authority or SNI), moved.
#[derive(Debug)]
enum Dest {
    Shared(Arc<str>),
    Owned(String),
}

impl Dest {
    fn as_str(&self) -> &str {
        match self {
            Dest::Shared(s) => s,
            Dest::Owned(s) => s,
        }
    }

    fn into_arc(self) -> Arc<str> {
        match self {
            Dest::Shared(s) => s,
            Dest::Owned(s) => Arc::from(s),
        }
    }
}

/// One finished record's decision, queued for the aggregator.
#[derive(Debug)]
struct Finished {
    start: SystemTime,
    /// Seconds since [`Decisions::base`].
    now: u64,
    kind: Kind,
    source: Arc<str>,
    source_ip: IpAddr,
    dest: Dest,
    port: u16,
    code: u16,
    flags: Cow<'static, str>,
    details: Option<Cow<'static, str>>,
    allowed_by: Option<(Arc<str>, usize)>,
    cluster: Option<Arc<str>>,
}

fn unidentified() -> Arc<str> {
    static U: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(UNIDENTIFIED));
    U.clone()
}

/// `host` of `host:port` (and of `[v6]:port`); the authority as it is when it has no port.
fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split_once(']').map_or(authority, |(h, _)| h);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// [`strip_port`] in place: no new string unless the host is an IPv6 literal.
fn into_host(mut authority: String) -> String {
    let host = strip_port(&authority);
    if host.len() == authority.len() {
        return authority;
    }
    if authority.starts_with('[') {
        return host.to_owned();
    }
    let len = host.len();
    authority.truncate(len);
    authority
}

impl Decisions {
    pub fn new(ring_cap: usize, edge_cap: usize) -> Decisions {
        Decisions {
            state: Arc::new(State {
                inner: Mutex::new(Inner::default()),
                ring_cap,
                edge_cap,
                missed: AtomicU64::new(0),
                sent: AtomicU64::new(0),
                applied: AtomicU64::new(0),
                thread: OnceLock::new(),
                looks: AtomicU64::new(0),
            }),
            base: Instant::now(),
            queue: OnceLock::new(),
        }
    }

    fn now(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.base)
            .as_secs()
    }

    /// The queue to the aggregator, which starts with the first decision (a proxy that never
    /// finishes a record, and every test that never makes one, runs no thread). `None` when
    /// the thread could not be started: decisions are then counted as missed.
    fn queue(&self) -> Option<&SyncSender<Finished>> {
        self.queue
            .get_or_init(|| {
                let (tx, rx) = sync_channel(QUEUE);
                let state = self.state.clone();
                std::thread::Builder::new()
                    .name("sluice-egress-map".into())
                    .spawn(move || aggregate(&state, &rx))
                    .map_err(
                        |e| tracing::warn!(error = %e, "the egress map cannot record decisions"),
                    )
                    .ok()
                    .map(|handle| {
                        let _ = self.state.thread.set(handle.thread().clone());
                        tx
                    })
            })
            .as_ref()
    }

    /// Takes a finished record's decision. Called last in the record's life: it moves the
    /// details, the HTTP authority and the SNI out of `rec`.
    pub(super) fn record(&self, rec: &mut Record, start: SystemTime, flags: Cow<'static, str>) {
        // Classified by the aggregator, off the request path.
        let details = rec.details.take().or_else(|| rec.termination.take());
        let source = rec.peer_principal.clone().unwrap_or_else(unidentified);
        let authority = rec
            .http
            .as_mut()
            .map(|h| std::mem::take(&mut h.authority))
            .filter(|a| !a.is_empty());
        let dest = match &rec.service {
            Some(s)
                if **s != *sluice_snapshot::BLACK_HOLE_CLUSTER
                    && **s != *sluice_snapshot::PASSTHROUGH_CLUSTER
                    && &**s != "unknown" =>
            {
                Dest::Shared(s.clone())
            }
            _ => match (authority, rec.sni.take()) {
                (Some(a), _) => Dest::Owned(into_host(a)),
                (None, Some(sni)) => Dest::Owned(sni),
                (None, None) => Dest::Shared(unknown()),
            },
        };
        let finished = Finished {
            start,
            now: self.now(),
            kind: rec.kind,
            source,
            source_ip: rec.downstream_remote.ip(),
            dest,
            port: rec.downstream_local.port(),
            code: rec.response_code,
            flags,
            details,
            allowed_by: rec.allowed_by.take(),
            cluster: rec.cluster.clone(),
        };
        let queued = self.queue().is_some_and(|q| q.try_send(finished).is_ok());
        if queued {
            let sent = self.state.sent.fetch_add(1, Ordering::Release) + 1;
            // Only a burst after a quiet spell (or a backlog) gets here: at a steady rate it
            // looks every `POLL`, long before a quarter of the queue has filled.
            if sent.saturating_sub(self.state.applied.load(Ordering::Relaxed)) >= WAKE_AT {
                self.state.wake();
            }
        } else {
            self.state.missed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits (at most [`SETTLE`]) until what was queued before the call is applied, so a
    /// reader sees the records finished before it asked.
    fn settle(&self) {
        let target = self.state.sent.load(Ordering::Acquire);
        if self.state.applied.load(Ordering::Acquire) < target {
            self.state.wake();
        }
        let deadline = std::time::Instant::now() + SETTLE;
        while self.state.applied.load(Ordering::Acquire) < target
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; a poisoned one still holds whole counters.
        self.state
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The decisions newer than `since` (a `seq` seen before; 0 for all), oldest first. The
    /// lock is held only to copy the entries (shared names, no formatting).
    pub fn decisions(&self, since: u64) -> DecisionsView {
        let (entries, next) = {
            self.settle();
            let inner = self.lock();
            let entries: Vec<Entry> = inner
                .ring
                .iter()
                .filter(|e| e.seq >= since)
                .cloned()
                .collect();
            (entries, inner.next_seq)
        };
        DecisionsView {
            next,
            missed: self.state.missed.load(Ordering::Relaxed),
            decisions: entries.into_iter().map(Entry::view).collect(),
        }
    }

    /// Every edge with its counts and its rate over the last [`WINDOW_SECS`]. The lock is held
    /// only to copy the counters; the views are built after.
    pub fn map(&self) -> MapView {
        let now = self.now();
        let (pairs, other, overflowed, total) = {
            self.settle();
            let mut inner = self.lock();
            if inner.pairs >= self.state.edge_cap {
                inner.evict_idle(now);
            }
            let mut pairs = Vec::with_capacity(inner.pairs);
            for (source, dests) in &inner.edges {
                for (dest, pair) in dests {
                    pairs.push((source.clone(), dest.clone(), *pair));
                }
            }
            (pairs, inner.other, inner.overflowed, inner.next_seq)
        };
        let mut edges = Vec::with_capacity(pairs.len() + 1);
        for (source, dest, pair) in &pairs {
            push_edges(&mut edges, source, dest, pair, now, false);
        }
        push_edges(&mut edges, OTHER, OTHER, &other, now, true);
        MapView {
            window_seconds: WINDOW_SECS,
            edge_cap: self.state.edge_cap,
            overflowed,
            decisions_total: total,
            missed: self.state.missed.load(Ordering::Relaxed),
            edges,
        }
    }
}

/// The aggregator: applies queued decisions in batches until the proxy drops its
/// [`Decisions`] (the queue's sender).
impl State {
    fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

fn aggregate(state: &State, rx: &Receiver<Finished>) {
    // Polls rather than blocks: a sender then never has to wake this thread (a futex call
    // and a context switch per request on the data plane). The queue holds what arrives
    // between polls many times over at any rate the proxy reaches; once decisions stop, the
    // polls space out to `IDLE_POLL`.
    let mut wait = POLL;
    loop {
        state.looks.fetch_add(1, Ordering::Relaxed);
        let mut n = 0;
        let mut gone = false;
        {
            let mut inner = state.inner.lock().unwrap_or_else(PoisonError::into_inner);
            while n < BATCH {
                match rx.try_recv() {
                    Ok(f) => {
                        inner.apply(f, state);
                        n += 1;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        gone = true;
                        break;
                    }
                }
            }
        }
        if n > 0 {
            state.applied.fetch_add(n as u64, Ordering::Release);
        }
        if gone {
            return;
        }
        wait = if n > 0 {
            POLL
        } else {
            (wait * 2).min(IDLE_POLL)
        };
        if n < BATCH {
            std::thread::park_timeout(wait);
        }
    }
}

fn unknown() -> Arc<str> {
    static U: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("unknown"));
    U.clone()
}

fn push_edges(
    out: &mut Vec<EdgeView>,
    source: &str,
    dest: &str,
    pair: &Pair,
    now: u64,
    overflow: bool,
) {
    for outcome in Outcome::ALL {
        let c = &pair.by_outcome[outcome.index()];
        if c.total == 0 {
            continue;
        }
        out.push(EdgeView {
            source: source.to_owned(),
            destination: dest.to_owned(),
            outcome,
            total: c.total,
            window: c.window(now),
            http: c.http,
            idle_seconds: now.saturating_sub(c.last),
            overflow,
        });
    }
}

impl Inner {
    fn apply(&mut self, f: Finished, state: &State) {
        let outcome = Outcome::classify(
            f.kind,
            f.code,
            &f.flags,
            f.details.as_deref(),
            f.cluster.as_deref(),
        );
        let destination = self.count(
            &f.source,
            f.dest,
            outcome,
            f.now,
            f.kind == Kind::Http,
            state.edge_cap,
        );
        let seq = self.next_seq;
        self.next_seq += 1;
        if state.ring_cap == 0 {
            return;
        }
        if self.ring.len() >= state.ring_cap {
            self.ring.pop_front();
        }
        self.ring.push_back(Entry {
            seq,
            start: f.start,
            kind: f.kind,
            source: f.source,
            source_ip: f.source_ip,
            destination,
            port: f.port,
            code: f.code,
            flags: f.flags,
            details: f.details,
            allowed_by: f.allowed_by,
            outcome,
            cluster: f.cluster,
        });
    }

    /// Counts one decision on its edge and returns the destination's shared name.
    fn count(
        &mut self,
        source: &Arc<str>,
        dest: Dest,
        outcome: Outcome,
        now: u64,
        http: bool,
        cap: usize,
    ) -> Arc<str> {
        if let Some(dests) = self.edges.get_mut(&**source)
            && let Some(name) = dests.get_key_value(dest.as_str()).map(|(k, _)| k.clone())
        {
            if let Some(pair) = dests.get_mut(&*name) {
                pair.by_outcome[outcome.index()].bump(now, http);
            }
            return name;
        }
        let name = dest.into_arc();
        if self.pairs >= cap {
            self.overflowed += 1;
            self.other.by_outcome[outcome.index()].bump(now, http);
            return name;
        }
        let mut pair = Pair::default();
        pair.by_outcome[outcome.index()].bump(now, http);
        self.edges
            .entry(source.clone())
            .or_default()
            .insert(name.clone(), pair);
        self.pairs += 1;
        name
    }

    fn evict_idle(&mut self, now: u64) {
        let mut removed = 0;
        for dests in self.edges.values_mut() {
            let before = dests.len();
            dests.retain(|_, p| now.saturating_sub(p.last()) < IDLE_EVICT_SECS);
            removed += before - dests.len();
        }
        self.edges.retain(|_, d| !d.is_empty());
        self.pairs -= removed;
    }
}

impl Entry {
    fn view(self) -> DecisionView {
        let time_ms = self
            .start
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        // A denial names its rule in the details; an allowed flow carries its ALLOW rule.
        let policy = self
            .details
            .as_deref()
            .and_then(PolicyRef::from_details)
            .or_else(|| {
                self.allowed_by.as_ref().and_then(|(policy, rule)| {
                    PolicyRef::from_rule(&format!("{policy}-rule[{rule}]"))
                })
            });
        DecisionView {
            seq: self.seq,
            time_ms,
            kind: match self.kind {
                Kind::Http => "http",
                Kind::Tcp => "tcp",
                Kind::Connection => "connection",
            }
            .to_owned(),
            source: self.source.to_string(),
            source_ip: self.source_ip.to_string(),
            destination: self.destination.to_string(),
            port: self.port,
            code: self.code,
            flags: self.flags.into_owned(),
            details: self.details.map(Cow::into_owned),
            outcome: self.outcome,
            policy,
            cluster: self.cluster.map(|c| c.to_string()),
        }
    }
}

/// `/api/decisions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DecisionsView {
    /// Ask for `?since=<next>` to get only what came after this answer.
    pub next: u64,
    /// Decisions not recorded because the admin API was reading at that moment.
    pub missed: u64,
    pub decisions: Vec<DecisionView>,
}

/// One recent decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionView {
    pub seq: u64,
    /// When the request or connection started, Unix milliseconds.
    pub time_ms: u64,
    /// `http`, `tcp` or `connection` (refused before any protocol ran).
    pub kind: String,
    /// The peer's SPIFFE ID from the verified mesh certificate, or `unidentified`.
    pub source: String,
    pub source_ip: String,
    pub destination: String,
    /// The port the flow arrived on.
    pub port: u16,
    /// The HTTP status (0 for TCP).
    pub code: u16,
    /// Envoy's `%RESPONSE_FLAGS%`.
    pub flags: String,
    /// Envoy's `%RESPONSE_CODE_DETAILS%` (HTTP) or `%CONNECTION_TERMINATION_DETAILS%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    pub outcome: Outcome,
    /// The AuthorizationPolicy rule that decided: the one that denied (`name` empty when no
    /// ALLOW policy matched), or the ALLOW rule that allowed. Absent when no policy applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// An AuthorizationPolicy rule as Envoy names it (`ns[NS]-policy[NAME]-rule[I]`, as in
/// `rbac_access_denied_matched_policy[…]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    /// Empty when no ALLOW policy matched (`[none]`): the denial is every ALLOW policy's.
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    /// The rule name as Envoy prints it.
    pub raw: String,
}

impl PolicyRef {
    /// From `rbac_access_denied_matched_policy[ns[NS]-policy[NAME]-rule[I]]` or `[none]`.
    pub fn from_details(details: &str) -> Option<PolicyRef> {
        let raw = details
            .strip_prefix("rbac_access_denied_matched_policy[")?
            .strip_suffix(']')?;
        PolicyRef::from_rule(raw)
    }

    /// From a rule name, `ns[NS]-policy[NAME]-rule[I]` (or `none`).
    pub fn from_rule(raw: &str) -> Option<PolicyRef> {
        if raw == "none" {
            return Some(PolicyRef {
                namespace: String::new(),
                name: String::new(),
                rule: None,
                raw: raw.to_owned(),
            });
        }
        let inner = |s: &str, open: &str| -> Option<(String, usize)> {
            let start = s.find(open)? + open.len();
            let end = start + s[start..].find(']')?;
            Some((s[start..end].to_owned(), end))
        };
        let (namespace, _) = inner(raw, "ns[")?;
        let (name, end) = inner(raw, "-policy[")?;
        let rule = inner(&raw[end..], "-rule[").and_then(|(r, _)| r.parse().ok());
        Some(PolicyRef {
            namespace,
            name,
            rule,
            raw: raw.to_owned(),
        })
    }
}

/// `/api/map` (the part the proxy knows; the admin API adds who it is).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MapView {
    pub window_seconds: u64,
    pub edge_cap: usize,
    /// Decisions counted under the `(other)` edge because the table was full.
    pub overflowed: u64,
    /// Every decision since start (the ring keeps the last ones).
    pub decisions_total: u64,
    pub missed: u64,
    pub edges: Vec<EdgeView>,
}

/// One source → destination edge of one outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeView {
    pub source: String,
    pub destination: String,
    pub outcome: Outcome,
    /// Since start (or since the pair was evicted as idle and came back).
    pub total: u64,
    /// In the last `window_seconds`.
    pub window: u64,
    /// How many of `total` were HTTP requests (the rest are connections).
    pub http: u64,
    pub idle_seconds: u64,
    /// The `(other)` edge: pairs beyond the edge cap.
    #[serde(default)]
    pub overflow: bool,
}

#[cfg(test)]
mod tests;
