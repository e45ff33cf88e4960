//! What the admin API shows of the running data plane (`/clusters`): each cluster's circuit
//! breaker counts and its endpoints with their health — outlier ejection and requests in
//! flight — as Envoy's `/clusters` shows them.
//!
//! The endpoints listed are a STATIC cluster's addresses, and for every cluster the addresses
//! it has picked or judged since its settings last changed (a DNS cluster's answers are
//! listed once used).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::runtime::Runtime;

/// A handle on the proxy's current runtime and listeners, for the admin API.
#[derive(Clone)]
pub struct Inspector {
    runtime: watch::Receiver<Option<Arc<Runtime>>>,
    listeners: watch::Receiver<Vec<ListenerStatus>>,
}

/// One listening socket the snapshot wants, as bound (or not) now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerStatus {
    /// The snapshot port, or `explicit_proxy` for the sidecar's front end.
    pub name: String,
    /// The address bound (or tried): the `--bind` / `--listen` address, never a wildcard
    /// standing for it.
    pub address: SocketAddr,
    pub bound: bool,
    /// Why it is not bound (retried every second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One cluster at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterHealth {
    pub name: String,
    /// Upstream connections open, requests waiting for one, requests and retries in flight.
    pub cx_active: u32,
    pub rq_pending: u32,
    pub rq_active: u32,
    pub rq_retries: u32,
    pub endpoints: Vec<EndpointHealth>,
}

/// One endpoint at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointHealth {
    pub address: SocketAddr,
    pub rq_active: usize,
    /// Ejected by outlier detection now (Envoy's `failed_outlier_check`).
    pub outlier_ejected: bool,
}

impl Inspector {
    pub(crate) fn new(
        runtime: watch::Receiver<Option<Arc<Runtime>>>,
        listeners: watch::Receiver<Vec<ListenerStatus>>,
    ) -> Inspector {
        Inspector { runtime, listeners }
    }

    /// The listeners of the current snapshot, bound or not, by port.
    pub fn listeners(&self) -> Vec<ListenerStatus> {
        self.listeners.borrow().clone()
    }

    /// Every cluster of the current snapshot, by name; empty before the first is applied.
    pub fn clusters(&self) -> Vec<ClusterHealth> {
        let Some(rt) = self.runtime.borrow().clone() else {
            return Vec::new();
        };
        let mut out: Vec<ClusterHealth> = rt
            .clusters()
            .map(|c| {
                let state = &c.state;
                let mut endpoints: BTreeMap<SocketAddr, EndpointHealth> = BTreeMap::new();
                for cand in c.fixed_endpoints().unwrap_or_default() {
                    set(&mut endpoints, cand.addr, |_| {});
                }
                for (addr, n) in state.active_requests() {
                    set(&mut endpoints, addr, |h| h.rq_active = n);
                }
                if let Some(d) = &state.outlier {
                    for (addr, ejected) in d.endpoints() {
                        set(&mut endpoints, addr, |h| h.outlier_ejected = ejected);
                    }
                }
                ClusterHealth {
                    name: c.cluster.name.clone(),
                    cx_active: state.connections.load(Ordering::Relaxed),
                    rq_pending: state.pending.load(Ordering::Relaxed),
                    rq_active: state.requests.load(Ordering::Relaxed),
                    rq_retries: state.retries.load(Ordering::Relaxed),
                    endpoints: endpoints.into_values().collect(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

fn set(
    endpoints: &mut BTreeMap<SocketAddr, EndpointHealth>,
    address: SocketAddr,
    f: impl FnOnce(&mut EndpointHealth),
) {
    f(endpoints.entry(address).or_insert(EndpointHealth {
        address,
        rq_active: 0,
        outlier_ejected: false,
    }));
}

/// Envoy's `/clusters` text: `cluster::stat::value` lines, then per endpoint
/// `cluster::address::stat::value`, with `health_flags` `healthy` or `/failed_outlier_check`.
pub fn render_text(clusters: &[ClusterHealth]) -> String {
    let mut out = String::new();
    for c in clusters {
        let n = &c.name;
        let _ = writeln!(out, "{n}::cx_active::{}", c.cx_active);
        let _ = writeln!(out, "{n}::rq_pending::{}", c.rq_pending);
        let _ = writeln!(out, "{n}::rq_active::{}", c.rq_active);
        let _ = writeln!(out, "{n}::rq_retries::{}", c.rq_retries);
        for e in &c.endpoints {
            let a = e.address;
            let _ = writeln!(out, "{n}::{a}::rq_active::{}", e.rq_active);
            let flags = if e.outlier_ejected {
                "/failed_outlier_check"
            } else {
                "healthy"
            };
            let _ = writeln!(out, "{n}::{a}::health_flags::{flags}");
        }
    }
    out
}

/// Envoy's `/listeners` text: one line per listener, `name::address`, with the reason when it
/// is not bound.
pub fn render_listeners(listeners: &[ListenerStatus]) -> String {
    let mut out = String::new();
    for l in listeners {
        match &l.error {
            None => {
                let _ = writeln!(out, "{}::{}", l.name, l.address);
            }
            Some(e) => {
                let _ = writeln!(out, "{}::{}::not_bound::{e}", l.name, l.address);
            }
        }
    }
    out
}
