//! What every connection of a proxy shares for its whole life: process settings, the
//! resolver and TLS builders, telemetry sinks, the drain signal. Per-snapshot state lives in
//! [`crate::runtime`].

use std::sync::Arc;

use sluice_snapshot::Snapshot;
use tokio::sync::watch;

use crate::config::ProxyConfig;
use crate::ratelimit;
use crate::runtime::Runtime;
use crate::telemetry::Telemetry;
use crate::tls::server::ServerConfigs;
use crate::upstream::Upstreams;

pub struct Shared {
    pub config: ProxyConfig,
    pub telemetry: Arc<Telemetry>,
    pub upstreams: Upstreams,
    pub server_tls: ServerConfigs,
    /// The local rate limit's token buckets, shared by every connection.
    pub rate_limits: ratelimit::Buckets,
    /// The global rate limit's shared store (`--rate-limit-redis`).
    pub global_rate_limit: Option<Arc<ratelimit::global::Store>>,
    /// Becomes true when the proxy drains: HTTP connections finish their requests and close.
    pub drain: watch::Receiver<bool>,
    /// Every snapshot as it is published: open streams re-check themselves against each.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// The runtime new connections are given (`None` before the first is built): a
    /// kept-alive HTTP connection serves each new request with it ([`crate::flow::Bound`]).
    pub runtime: watch::Receiver<Option<Arc<Runtime>>>,
}

/// Resolves once `rx` holds `true` (or its sender is gone).
///
/// A connection's `select!` polls this on every wake-up of its task — every request. Once the
/// first poll has registered the task's waker (which stays registered, and a task's waker
/// does not change), a later poll while nothing was sent is one version check, not a
/// re-registration with the channel's waiter list.
pub(crate) async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let probe = rx.clone();
    let mut waiting = std::pin::pin!(rx.wait_for(|v| *v));
    let mut registered = false;
    std::future::poll_fn(|cx| {
        if registered && !probe.has_changed().unwrap_or(true) {
            return std::task::Poll::Pending;
        }
        registered = true;
        waiting.as_mut().poll(cx).map(|_| ())
    })
    .await;
}
