//! A snapshot at run time: what the request path needs, resolved once when the snapshot is
//! applied instead of per request — each cluster's state, pool and TLS configuration.
//!
//! State that must outlive a snapshot (pools, load-balancer and circuit-breaker counters) is
//! carried over from the previous runtime by cluster identity: the same name with the same
//! settings keeps its state; a changed cluster starts afresh, and the old state goes away with
//! the last connection that still uses the old snapshot.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_snapshot::Snapshot;

use crate::shared::Shared;
use crate::upstream::ClusterRt;

pub struct Runtime {
    pub snapshot: Arc<Snapshot>,
    clusters: HashMap<String, Arc<ClusterRt>>,
}

impl Runtime {
    /// Resolves `snapshot`, carrying state over from `previous`. Reads TLS files: run it off
    /// the async runtime ([`Runtime::build_blocking`]).
    pub fn build(snapshot: Arc<Snapshot>, previous: Option<&Runtime>, shared: &Shared) -> Runtime {
        let clusters = snapshot
            .clusters
            .iter()
            .map(|(name, cluster)| {
                let before = previous.and_then(|p| p.clusters.get(name)).map(|c| &**c);
                let rt = ClusterRt::new(cluster, before, &shared.upstreams);
                (name.clone(), Arc::new(rt))
            })
            .collect();
        Runtime { snapshot, clusters }
    }

    /// [`Runtime::build`] on tokio's blocking pool.
    pub async fn build_blocking(
        snapshot: Arc<Snapshot>,
        previous: Option<Arc<Runtime>>,
        shared: Arc<Shared>,
    ) -> Runtime {
        let fallback = (snapshot.clone(), previous.clone(), shared.clone());
        match tokio::task::spawn_blocking(move || {
            Runtime::build(snapshot, previous.as_deref(), &shared)
        })
        .await
        {
            Ok(rt) => rt,
            // The blocking pool is gone (shutdown): build here rather than not at all.
            Err(_) => Runtime::build(fallback.0, fallback.1.as_deref(), &fallback.2),
        }
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<ClusterRt>> {
        self.clusters.get(name)
    }

    /// Periodic upkeep, off the async runtime: idle connections past their timeout are
    /// closed, and TLS files that changed are read again.
    pub fn maintain(&self, shared: &Shared) {
        for c in self.clusters.values() {
            c.state.pool.sweep(c.idle_timeout());
            c.reload_tls(&shared.upstreams, false);
        }
    }
}
