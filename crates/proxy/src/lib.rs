//! sluice's data plane: listeners, filter-chain selection by SNI, TLS termination and
//! origination, HTTP routing, TCP and TLS passthrough, upstream clusters, access logs and
//! metrics — on tokio, hyper and rustls.
//!
//! The proxy runs a [`Snapshot`] received through a `watch` channel. A connection takes the
//! snapshot current when it is accepted; a new one changes which ports are bound, what new
//! connections see, and what each new request on a kept-alive HTTP connection sees (its filter
//! chain found again in the new snapshot; a connection whose chain is gone or whose TLS
//! termination changed closes after that request). Open tunnels are re-checked against it.
//!
//! The phases of a flow, each in one place (pingora's `ProxyHttp` in spirit):
//! 1. **accept** — [`listener`]: bound ports and the sidecar's explicit proxy, one task per
//!    connection, given the runtime current at accept.
//! 2. **inspect** — [`conn`]: the ClientHello ([`sni`]), the mesh hop (mesh mTLS terminated,
//!    the peer's identity verified), the filter chain, TLS termination. The sidecar's front
//!    end ([`sidecar`]) reads CONNECT / absolute-form / Host-addressed requests and hands each
//!    flow to the same phases, on a virtual listener or the snapshot's fallback routes.
//! 3. **authorize** — [`authz`]: per connection for TLS/TCP, per request for HTTP.
//! 4. **route** (once) — [`http::route`] for a request, [`tcp`] for a stream.
//! 5. **limit** — [`ratelimit`] for the route found in 4.
//! 6. **pick upstream** — [`upstream`]: weighted cluster, endpoint, pool or dial.
//! 7. **forward** — [`http::forward`] (attempts, retries, timeouts) or [`tcp`] (bytes).
//! 8. **log** — [`telemetry`]: one record per request or connection, written when it drops.
//!
//! Module graph (no cycles): `flow` (the per-flow context) is a leaf the phases read; `runtime`
//! holds the per-snapshot state (clusters with pools and TLS); `shared` what lives as long as
//! the proxy; `error` maps every failure to its Envoy outcome.

pub mod accept;
pub mod authority;
pub mod authz;
pub mod config;
pub mod conn;
pub mod error;
pub mod flow;
pub mod framing;
pub mod http;
pub mod inspect;
pub mod listener;
pub mod ratelimit;
pub mod rewind;
pub mod runtime;
pub mod shared;
pub mod sidecar;
pub mod sni;
pub mod tcp;
pub mod telemetry;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use sluice_snapshot::Snapshot;
use tokio::sync::{mpsc, watch};

pub use config::ProxyConfig;
pub use error::Error;
pub use flow::ConnInfo;
pub use shared::Shared;

use runtime::Runtime;
use telemetry::Telemetry;
use tls::server::ServerConfigs;
use upstream::Upstreams;

/// [`Runtime::build`] on tokio's blocking pool.
async fn build_runtime(
    snapshot: Arc<Snapshot>,
    previous: Option<Arc<Runtime>>,
    shared: Arc<Shared>,
) -> Runtime {
    let fallback = (snapshot.clone(), previous.clone(), shared.clone());
    let build = |snapshot, previous: Option<Arc<Runtime>>, shared: &Shared| {
        Runtime::build(
            snapshot,
            previous.as_deref(),
            &shared.upstreams,
            &shared.telemetry,
        )
    };
    match tokio::task::spawn_blocking(move || build(snapshot, previous, &shared)).await {
        Ok(rt) => rt,
        // The blocking pool is gone (shutdown): build here rather than not at all.
        Err(_) => build(fallback.0, fallback.1, &fallback.2),
    }
}

/// How often idle pooled connections are swept and TLS files checked for changes.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(2);

/// How often a listener that could not be bound is tried again.
const BIND_RETRY_INTERVAL: Duration = Duration::from_secs(1);

pub struct Proxy {
    shared: Arc<Shared>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    ready: watch::Sender<bool>,
    drain: watch::Sender<bool>,
    applied: watch::Sender<Arc<Snapshot>>,
    /// The runtime in use and the listeners bound, for [`Proxy::inspector`].
    current: watch::Sender<Option<Arc<Runtime>>>,
    listeners: watch::Sender<Vec<inspect::ListenerStatus>>,
}

impl Proxy {
    pub fn new(
        config: ProxyConfig,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        registry: &mut Registry,
    ) -> Result<Proxy, Error> {
        let telemetry = Arc::new(
            Telemetry::new(registry)
                .with_workload(config.workload_name.as_deref().unwrap_or("unknown")),
        );
        let resolver = upstream::dns::Resolver::new(config.dns_server)
            .map_err(|e| Error::Resolver(e.to_string()))?;
        let guard = upstream::guard::Guard::new(&config.allow_ranges, &config.deny_ranges);
        let (drain, drain_rx) = watch::channel(false);
        let (applied, _) = watch::channel(snapshots.borrow().clone());
        let (current, runtime) = watch::channel(None);
        let upstreams = Upstreams::new(resolver, guard, telemetry.clone())
            .with_identity(config.identity.clone());
        let global_rate_limit = ratelimit::global::store(config.rate_limit_redis.as_deref())
            .map_err(|e| Error::RateLimitStore(e.to_string()))?;
        let shared = Arc::new(Shared {
            global_rate_limit,
            config,
            upstreams,
            telemetry,
            server_tls: ServerConfigs::default(),
            rate_limits: ratelimit::Buckets::default(),
            drain: drain_rx,
            snapshots: snapshots.clone(),
            runtime,
        });
        let (ready, _) = watch::channel(false);
        let (listeners, _) = watch::channel(Vec::new());
        Ok(Proxy {
            shared,
            snapshots,
            ready,
            drain,
            applied,
            current,
            listeners,
        })
    }

    /// The running data plane's clusters and endpoints, for the admin API's `/clusters`.
    pub fn inspector(&self) -> inspect::Inspector {
        inspect::Inspector::new(self.current.subscribe(), self.listeners.subscribe())
    }

    /// Makes the access-log writers reopen their files (SIGUSR1 in the binary).
    pub fn log_reopener(&self) -> telemetry::writer::Reopener {
        self.shared.telemetry.log_reopener()
    }

    /// The decisions the egress map shows (the admin API's `/ui`).
    pub fn decisions(&self) -> Arc<telemetry::decisions::Decisions> {
        self.shared.telemetry.decisions.clone()
    }

    /// The telemetry sinks (metrics) shared with every connection, for the admin API to count
    /// its own refusals in.
    pub fn telemetry(&self) -> Arc<Telemetry> {
        self.shared.telemetry.clone()
    }

    /// The snapshot whose runtime new connections are given: it follows the published one
    /// once its endpoints are resolved and its TLS files loaded.
    pub fn applied(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.applied.subscribe()
    }

    /// Becomes true once the listeners of the first snapshot are bound.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Binds the current snapshot's listeners on `config.bind` (a sidecar snapshot's
    /// listeners are virtual: the explicit proxy is bound on `config.listen` instead, default
    /// [`sidecar::DEFAULT_LISTEN`]), serves until `shutdown`
    /// resolves, then drains (bounded by `config.drain_timeout`). Listeners are re-bound or
    /// closed when a new snapshot adds or removes ports; open tunnels are re-checked against
    /// it, and each new request on a kept-alive HTTP connection is served by it
    /// ([`flow::Bound`]).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let Proxy {
            shared,
            mut snapshots,
            ready,
            drain,
            applied,
            current,
            listeners,
        } = self;
        let (tracker, mut tracked) = mpsc::channel::<()>(1);
        let (hard_stop, hard_stop_rx) = watch::channel(false);

        let first = snapshots.borrow_and_update().clone();
        let runtime = Arc::new(build_runtime(first, None, shared.clone()).await);
        let (runtimes, runtimes_rx) = watch::channel(runtime.clone());
        applied.send_replace(runtime.snapshot.clone());
        current.send_replace(Some(runtime.clone()));
        let mut manager = listener::Manager::new(
            shared.clone(),
            runtimes_rx.clone(),
            tracker,
            hard_stop_rx,
            listeners,
        );
        // A port that cannot be bound (in use, not permitted) does not stop the proxy: it is
        // retried until it binds, and readiness waits for every listener.
        let _ = manager.reconcile(&runtime.snapshot).await;
        ready.send_replace(manager.all_bound());
        let mut retry = tokio::time::interval(BIND_RETRY_INTERVAL);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let upkeep_shared = shared.clone();
        let mut upkeep_runtimes = runtimes_rx;
        let upkeep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let rt = upkeep_runtimes.borrow_and_update().clone();
                let shared = upkeep_shared.clone();
                let _ = tokio::task::spawn_blocking(move || rt.maintain(&shared.upstreams)).await;
            }
        });

        tokio::pin!(shutdown);
        let mut updates_open = true;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = retry.tick(), if !manager.all_bound() => {
                    let snapshot = runtimes.borrow().snapshot.clone();
                    ready.send_replace(manager.retry_unbound(&snapshot).await);
                }
                changed = snapshots.changed(), if updates_open => {
                    if changed.is_err() {
                        // No more snapshots: keep serving the last one until shutdown.
                        updates_open = false;
                        continue;
                    }
                    let snapshot = snapshots.borrow_and_update().clone();
                    shared.rate_limits.retain_for(&snapshot);
                    let previous = runtimes.borrow().clone();
                    let next = build_runtime(snapshot, Some(previous), shared.clone()).await;
                    let next = Arc::new(next);
                    runtimes.send_replace(next.clone());
                    applied.send_replace(next.snapshot.clone());
                    current.send_replace(Some(next.clone()));
                    if let Err(e) = manager.reconcile(&next.snapshot).await {
                        tracing::error!(error = %e, "applying the new snapshot's listeners");
                    }
                    ready.send_replace(manager.all_bound());
                }
            }
        }

        tracing::info!("draining");
        // Readiness fails first, so load balancers stop sending before the listeners close.
        ready.send_replace(false);
        manager.close_all();
        drain.send_replace(true);
        let drained = tokio::time::timeout(shared.config.drain_timeout, tracked.recv()).await;
        if drained.is_err() {
            tracing::info!("drain timeout: closing the remaining connections");
        }
        hard_stop.send_replace(true);
        upkeep.abort();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_needs_no_runtime_and_ready_starts_false() {
        let (_tx, rx) = watch::channel(Arc::new(Snapshot::empty(sluice_snapshot::Role::Gateway)));
        let config = ProxyConfig {
            dns_server: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 53))),
            ..ProxyConfig::default()
        };
        let proxy = Proxy::new(config, rx, &mut Registry::default()).expect("proxy");
        assert!(!*proxy.ready().borrow());
        let system = Proxy::new(
            ProxyConfig::default(),
            watch::channel(Arc::new(Snapshot::empty(sluice_snapshot::Role::Gateway))).1,
            &mut Registry::default(),
        );
        assert!(system.is_ok());
    }

    #[tokio::test]
    async fn an_empty_snapshot_is_ready_and_stops() {
        let (_tx, rx) = watch::channel(Arc::new(Snapshot::empty(sluice_snapshot::Role::Gateway)));
        let proxy =
            Proxy::new(ProxyConfig::default(), rx, &mut Registry::default()).expect("proxy");
        let mut ready = proxy.ready();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(proxy.run(async move {
            let _ = stopped.await;
        }));
        tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r))
            .await
            .expect("ready in time")
            .expect("ready");
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("stops in time")
            .expect("join")
            .expect("run");
    }
}
