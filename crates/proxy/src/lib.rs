//! sluice's data plane: listeners, filter-chain selection by SNI, TLS termination and
//! origination, HTTP routing, TCP and TLS passthrough, upstream clusters, access logs and
//! metrics — on tokio, hyper and rustls.
//!
//! The proxy runs a [`Snapshot`] received through a `watch` channel. A connection takes the
//! snapshot current when it is accepted and keeps it to its end; a new snapshot only changes
//! which ports are bound and what new connections see.
//!
//! Module map (pingora-style phases):
//! - [`listener`]: bind / re-bind / close ports, accept loops, drain.
//! - [`conn`]: one connection: ClientHello inspection ([`sni`]), chain selection, TLS
//!   termination ([`tls::server`]), then [`http`] or [`tcp`].
//! - [`sidecar`]: the sidecar's explicit proxy (`CONNECT`, absolute-form and `Host`-addressed
//!   HTTP), which picks a virtual listener per flow, and REGISTRY_ONLY / ALLOW_ANY for what
//!   no listener routes.
//! - [`http`]: virtual host → route → action (forward with retries, redirect, direct).
//! - [`upstream`]: discovery (static, DNS, dynamic DNS), load balancing, limits, dialing with
//!   TLS origination ([`tls::client`]), pooled HTTP connections.
//! - [`telemetry`]: one record per request/connection → access log line + Istio metrics.
//! - [`error`]: the one place that maps failures to response flags and statuses.

pub mod authz;
pub mod config;
pub mod conn;
pub mod error;
pub mod http;
pub mod listener;
pub mod ratelimit;
pub mod rewind;
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
pub use conn::{ConnInfo, serve_connection};
pub use error::Error;

use telemetry::Telemetry;
use tls::server::ServerConfigs;
use upstream::Upstreams;

/// What every connection of a proxy shares: settings, caches, pools, telemetry sinks.
pub struct Shared {
    pub config: ProxyConfig,
    pub telemetry: Arc<Telemetry>,
    pub upstreams: Upstreams,
    pub server_tls: ServerConfigs,
    /// The local rate limit's token buckets, shared by every connection.
    pub rate_limits: ratelimit::Buckets,
    /// Becomes true when the proxy drains: HTTP connections finish their requests and close.
    pub drain: watch::Receiver<bool>,
}

pub struct Proxy {
    shared: Arc<Shared>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    ready: watch::Sender<bool>,
    drain: watch::Sender<bool>,
}

impl Proxy {
    pub fn new(
        config: ProxyConfig,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        registry: &mut Registry,
    ) -> Result<Proxy, Error> {
        let telemetry = Arc::new(Telemetry::new(registry));
        let resolver = upstream::dns::Resolver::new(config.dns_server)?;
        let (drain, drain_rx) = watch::channel(false);
        let upstreams =
            Upstreams::new(resolver, telemetry.clone()).with_identity(config.identity.clone());
        let shared = Arc::new(Shared {
            config,
            upstreams,
            telemetry,
            server_tls: ServerConfigs::default(),
            rate_limits: ratelimit::Buckets::default(),
            drain: drain_rx,
        });
        let (ready, _) = watch::channel(false);
        Ok(Proxy {
            shared,
            snapshots,
            ready,
            drain,
        })
    }

    /// Becomes true once the listeners of the first snapshot are bound.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Binds the current snapshot's listeners on `config.bind` (a sidecar snapshot's
    /// listeners are virtual: the explicit proxy is bound on `config.listen` instead, default
    /// [`sidecar::DEFAULT_LISTEN`]), serves until `shutdown`
    /// resolves, then drains (bounded by `config.drain_timeout`). Listeners are re-bound or
    /// closed when a new snapshot adds or removes ports; open connections keep the snapshot
    /// they started with.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let Proxy {
            shared,
            mut snapshots,
            ready,
            drain,
        } = self;
        let (tracker, mut tracked) = mpsc::channel::<()>(1);
        let (hard_stop, hard_stop_rx) = watch::channel(false);
        let mut manager =
            listener::Manager::new(shared.clone(), snapshots.clone(), tracker, hard_stop_rx);

        let first = snapshots.borrow_and_update().clone();
        manager.reconcile(&first).await?;
        ready.send_replace(true);

        let pool = shared.upstreams.pool.clone();
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                pool.sweep();
            }
        });

        tokio::pin!(shutdown);
        let mut updates_open = true;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                changed = snapshots.changed(), if updates_open => {
                    if changed.is_err() {
                        // No more snapshots: keep serving the last one until shutdown.
                        updates_open = false;
                        continue;
                    }
                    let snapshot = snapshots.borrow_and_update().clone();
                    shared.rate_limits.retain_for(&snapshot);
                    if let Err(e) = manager.reconcile(&snapshot).await {
                        tracing::error!(error = %e, "applying the new snapshot's listeners");
                    }
                }
            }
        }

        tracing::info!("draining");
        manager.close_all();
        drain.send_replace(true);
        let drained = tokio::time::timeout(shared.config.drain_timeout, tracked.recv()).await;
        if drained.is_err() {
            tracing::info!("drain timeout: closing the remaining connections");
        }
        hard_stop.send_replace(true);
        sweeper.abort();
        Ok(())
    }
}

/// Resolves once `rx` holds `true` (or its sender is gone).
pub(crate) async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await.is_ok();
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
