//! A snapshot at run time: what the request path needs, resolved once when the snapshot is
//! applied instead of per request — each cluster's state, pool and TLS configuration, and
//! where its records are written (access logs with their filters, metric changes).
//!
//! State that must outlive a snapshot (pools, load-balancer and circuit-breaker counters) is
//! carried over from the previous runtime by cluster identity: the same name with the same
//! settings keeps its state; a changed cluster starts afresh, and the old state goes away with
//! the last connection that still uses the old snapshot.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_snapshot::{HostMatch, Snapshot};

use crate::telemetry::{Sinks, Telemetry};
use crate::upstream::{ClusterRt, Upstreams};

pub struct Runtime {
    pub snapshot: Arc<Snapshot>,
    /// Where this snapshot's records go (access logs, Telemetry's metric changes), with their
    /// CEL expressions parsed: `None` when only Istio's standard metrics are recorded.
    pub sinks: Option<Arc<Sinks>>,
    /// By name, with a fast hash: looked up once per request.
    clusters: HashMap<String, Arc<ClusterRt>, foldhash::fast::RandomState>,
    /// The ports each registered host declares (the sidecar snapshot's
    /// `fallback.registered`): a sidecar refuses the others.
    registry: Registry,
}

/// Registered hosts and their ports.
#[derive(Default)]
struct Registry {
    exact: HashMap<String, Vec<u16>>,
    patterns: Vec<(HostMatch, Vec<u16>)>,
}

impl Registry {
    fn of(snapshot: &Snapshot) -> Registry {
        let mut r = Registry::default();
        let registered = snapshot.fallback.iter().flat_map(|f| &f.registered);
        for (host, ports) in registered {
            match HostMatch::parse(host) {
                HostMatch::Exact(host) => {
                    r.exact.insert(host, ports.clone());
                }
                pattern => r.patterns.push((pattern, ports.clone())),
            }
        }
        r
    }
}

impl Runtime {
    /// Resolves `snapshot`, carrying state over from `previous`. Reads TLS files: run it off
    /// the async runtime.
    pub fn build(
        snapshot: Arc<Snapshot>,
        previous: Option<&Runtime>,
        upstreams: &Upstreams,
        telemetry: &Telemetry,
    ) -> Runtime {
        let clusters = snapshot
            .clusters
            .iter()
            .map(|(name, cluster)| {
                let before = previous.and_then(|p| p.clusters.get(name)).map(|c| &**c);
                let rt = ClusterRt::new(cluster, before, upstreams);
                (name.clone(), Arc::new(rt))
            })
            .collect();
        let registry = Registry::of(&snapshot);
        let sinks = telemetry.sinks(&snapshot);
        Runtime {
            snapshot,
            sinks,
            clusters,
            registry,
        }
    }

    /// `false` when `host` is registered but none of its ServiceEntries declares `port`
    /// (a registered host on another port is not an unregistered host: it is refused even
    /// under ALLOW_ANY). Unregistered hosts are the outbound policy's to decide.
    pub fn port_declared(&self, host: &str, port: u16) -> bool {
        let mut registered = false;
        let exact = self.registry.exact.get(host).into_iter();
        let patterns = self
            .registry
            .patterns
            .iter()
            .filter(|(p, _)| *p != HostMatch::Any && p.matches(host))
            .map(|(_, ports)| ports);
        for ports in exact.chain(patterns) {
            registered = true;
            if ports.contains(&port) {
                return true;
            }
        }
        !registered
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<ClusterRt>> {
        self.clusters.get(name)
    }

    /// Every cluster of the snapshot, at run time.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<ClusterRt>> {
        self.clusters.values()
    }

    /// Periodic upkeep, off the async runtime: idle connections past their timeout are
    /// closed, TLS files that changed are read again, and the IP guard learns this host's
    /// addresses anew.
    pub fn maintain(&self, upstreams: &Upstreams) {
        upstreams.guard.refresh_local();
        for c in self.clusters.values() {
            c.state
                .pool
                .sweep(c.idle_timeout(), c.cluster.limits.max_connection_duration);
            c.reload_tls(upstreams, false);
        }
    }
}
