//! Clusters at run time: endpoint discovery (static, DNS, dynamic DNS), load balancing,
//! circuit-breaker limits, dialing with TLS origination, pooled HTTP connections.

pub mod connect;
pub mod dns;
pub mod guard;
pub mod lb;
pub mod outlier;
pub mod pool;

use std::net::SocketAddr;

use ipnet::IpNet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ClientConfig;
use sluice_snapshot::{Cluster, Discovery, HostMatch};
use tokio::time::Instant;

use crate::Error;
use crate::telemetry::Telemetry;
use crate::tls::client::{ClientConfigs, is_mesh};
use connect::{Dialed, Origination};
use lb::{Candidate, ClusterState, Slot};
use pool::{DEFAULT_IDLE_TIMEOUT, PoolKey, Pooled};

/// What the proxy uses to reach any upstream: the resolver and the TLS builders.
pub struct Upstreams {
    pub resolver: dns::Resolver,
    /// Which addresses may be dialed: every candidate passes it before it is used.
    pub guard: guard::Guard,
    pub tls: ClientConfigs,
    telemetry: Arc<Telemetry>,
}

/// One cluster of a snapshot at run time: its settings, its state (pool, load balancer,
/// circuit breakers — carried over to the next snapshot while the settings stay the same),
/// and the TLS configuration it originates with, loaded when the snapshot is applied.
pub struct ClusterRt {
    pub cluster: Cluster,
    /// The endpoints, when they never change: STATIC addresses (no name to resolve) of a
    /// cluster that is not the mesh hop (whose endpoints carry each flow's host).
    fixed: Option<Arc<[Candidate]>>,
    /// The cluster's name and service host, shared by every record that names them.
    pub name: Arc<str>,
    pub service: Arc<str>,
    pub state: Arc<ClusterState>,
    tls: RwLock<Option<Arc<ClientConfig>>>,
    /// The addresses the cluster's ServiceEntry names explicitly (IP endpoints, `addresses`):
    /// the IP guard's exceptions for this cluster.
    named: Vec<IpNet>,
}

impl ClusterRt {
    /// The endpoints of a cluster whose addresses never change (STATIC), if it is one.
    pub fn fixed_endpoints(&self) -> Option<&[Candidate]> {
        self.fixed.as_deref()
    }

    /// The runtime of `cluster`: `previous` (the same cluster in the last snapshot) lends its
    /// state when the settings did not change. Loads TLS files: call it off the runtime.
    pub fn new(cluster: &Cluster, previous: Option<&ClusterRt>, ups: &Upstreams) -> ClusterRt {
        let state = match previous {
            Some(p) if p.cluster == *cluster => p.state.clone(),
            _ => Arc::new(ClusterState::new(
                ups.telemetry.metrics.cluster(&cluster.name),
                cluster.outlier.as_ref(),
            )),
        };
        let named = named_addresses(cluster);
        if previous.is_none_or(|p| p.cluster != *cluster) {
            for net in &named {
                let class = guard::classify(net.network());
                if class != guard::Class::Public {
                    tracing::info!(
                        cluster = cluster.name,
                        addresses = %net,
                        class = class.name(),
                        "the ServiceEntry names these addresses: the IP guard lets this cluster reach them"
                    );
                }
            }
        }
        let rt = ClusterRt {
            cluster: cluster.clone(),
            fixed: fixed_endpoints(cluster),
            name: Arc::from(cluster.name.as_str()),
            service: Arc::from(cluster.service.as_str()),
            state,
            tls: RwLock::new(None),
            named,
        };
        rt.reload_tls(ups, true);
        rt
    }

    /// Re-reads the TLS files when they changed (the builder compares modification times).
    /// `first`: the cluster's first load, whose failure is reported.
    pub fn reload_tls(&self, ups: &Upstreams, first: bool) {
        let Some(tls) = &self.cluster.tls else {
            return;
        };
        let built = ups.tls.get(tls, self.cluster.http2);
        let mut slot = self.tls.write().unwrap_or_else(|p| p.into_inner());
        match built {
            Ok(config) => *slot = Some(config),
            // Said once when the settings stop loading, not at every upkeep tick after; each
            // connection then fails with the reason (`UF`, in the access log).
            Err(e) => {
                if slot.take().is_some() || first {
                    tracing::warn!(cluster = self.cluster.name, error = %e, "upstream tls settings");
                }
            }
        }
    }

    fn tls_config(&self, ups: &Upstreams) -> Result<Option<Arc<ClientConfig>>, Error> {
        let Some(tls) = &self.cluster.tls else {
            return Ok(None);
        };
        if let Some(c) = self.tls.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(Some(c.clone()));
        }
        // Not loadable when the snapshot was applied: try again, so the error is the
        // connection's and a file that appears later is picked up.
        ups.tls.get(tls, self.cluster.http2).map(Some)
    }

    /// The TLS to originate toward `host`, if the cluster originates TLS.
    pub fn origination(&self, ups: &Upstreams, host: &str) -> Result<Option<Origination>, Error> {
        let Some(config) = self.tls_config(ups)? else {
            return Ok(None);
        };
        // Through a tunnel the server is the tunnel's target, not the proxy.
        let server_name = match self.cluster.tls.as_ref().and_then(|t| t.sni.as_deref()) {
            Some(sni) => sni.to_owned(),
            None => match &self.cluster.tunnel {
                Some(t) => t.target_host.clone(),
                None => dns::unbracket(host).to_owned(),
            },
        };
        Ok(Some(Origination {
            config,
            server_name,
        }))
    }

    /// The TLS a TCP or TLS stream gets toward `candidate`. A passthrough stream carries the
    /// client's own TLS and is not wrapped again — except by the mesh hop (`ISTIO_MUTUAL`),
    /// which wraps whatever the app sent: its SNI is the cluster's `sni`, else the host the
    /// app asked for (the sidecar's CONNECT target; the gateway learns the destination from
    /// it, for authorization and for routing what is not TLS inside), else the inner
    /// ClientHello's SNI (also when the app asked for an IP address).
    pub fn stream_origination(
        &self,
        ups: &Upstreams,
        candidate: &Candidate,
        requested: Option<&str>,
        sni: Option<&str>,
        passthrough: bool,
    ) -> Result<Option<Origination>, Error> {
        match &self.cluster.tls {
            Some(tls) if is_mesh(tls) => {
                // An IP literal is no SNI: the inner ClientHello's name says more then.
                let named = requested.filter(|h| dns::ip_literal(h).is_none());
                let host = named.or(sni).or(requested).unwrap_or(&candidate.host);
                self.origination(ups, host)
            }
            _ if passthrough => Ok(None),
            _ => self.origination(ups, &candidate.host),
        }
    }

    /// The destination service a flow to this cluster is counted against: the cluster's
    /// service, except for the original-destination clusters (`PassthroughCluster`), which
    /// stand for whatever host the app asked for.
    pub fn service_for(&self, requested: Option<&(String, u16)>) -> Arc<str> {
        match requested {
            Some((host, _)) if self.cluster.discovery == Discovery::OriginalDestination => {
                Arc::from(host.as_str())
            }
            _ => self.service.clone(),
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        self.cluster
            .limits
            .idle_timeout
            .unwrap_or(DEFAULT_IDLE_TIMEOUT)
    }
}

/// The addresses a cluster's ServiceEntry names: endpoints written as IP addresses, and its
/// `addresses`.
fn named_addresses(cluster: &Cluster) -> Vec<IpNet> {
    let endpoints = match &cluster.discovery {
        Discovery::Static { endpoints } => endpoints.as_slice(),
        _ => &[],
    };
    endpoints
        .iter()
        .filter_map(|ep| dns::ip_literal(&ep.address).map(IpNet::from))
        .chain(cluster.addresses.iter().copied())
        .collect()
}

/// The candidates of a STATIC cluster whose endpoints are all IP addresses.
fn fixed_endpoints(cluster: &Cluster) -> Option<Arc<[Candidate]>> {
    let Discovery::Static { endpoints } = &cluster.discovery else {
        return None;
    };
    if cluster.tls.as_ref().is_some_and(is_mesh) || endpoints.is_empty() {
        return None;
    }
    endpoints
        .iter()
        .map(|ep| {
            let ip = dns::ip_literal(&ep.address)?;
            Some(Candidate {
                addr: SocketAddr::new(ip, ep.port),
                weight: ep.weight,
                host: Arc::from(ep.address.as_str()),
            })
        })
        .collect()
}

impl Upstreams {
    pub fn new(
        resolver: dns::Resolver,
        guard: guard::Guard,
        telemetry: Arc<Telemetry>,
    ) -> Upstreams {
        Upstreams {
            resolver,
            guard,
            tls: ClientConfigs::default(),
            telemetry,
        }
    }

    /// Originates `ISTIO_MUTUAL` with this workload identity (see [`ClientConfigs`]).
    pub fn with_identity(mut self, identity: Option<sluice_identity::IdentitySource>) -> Self {
        self.tls = ClientConfigs::with_identity(identity);
        self
    }

    /// The endpoints of `cluster` now. `host` is the request's authority host or the
    /// connection's SNI (DYNAMIC_DNS resolves it); `original_dst` is the destination the
    /// client connected to, when the listener knows it (ORIGINAL_DST), else `requested`, the
    /// host and port the app asked its sidecar for, resolved.
    ///
    /// On a mesh-hop cluster (`ISTIO_MUTUAL`) each candidate's `host` is `host` itself: the
    /// hop names the destination the app asked for as its SNI (so the gateway learns it, and
    /// connections to different destinations are pooled apart), not the gateway's address.
    pub async fn endpoints(
        &self,
        c: &ClusterRt,
        host: Option<&str>,
        original_dst: Option<SocketAddr>,
        requested: Option<(&str, u16)>,
    ) -> Result<Arc<[Candidate]>, Error> {
        if let Some(fixed) = &c.fixed {
            return self.guarded(c, fixed.clone());
        }
        let cluster = &c.cluster;
        let mut out = self
            .discover(cluster, host, original_dst, requested)
            .await?;
        if let (Some(tls), Some(host)) = (&cluster.tls, host)
            && is_mesh(tls)
            && !host.is_empty()
        {
            let name: Arc<str> = Arc::from(host);
            for c in &mut out {
                c.host = name.clone();
            }
        }
        self.guarded(c, out.into())
    }

    /// The candidates the IP guard lets `c` dial, in their order (so the first permitted
    /// address of a DNS answer is used first); refused when none is left.
    fn guarded(&self, c: &ClusterRt, all: Arc<[Candidate]>) -> Result<Arc<[Candidate]>, Error> {
        let guard = self.guard.checker();
        // Only once something is refused: the kept candidates, and the first refusal.
        let mut refused: Option<(Vec<Candidate>, guard::Denied)> = None;
        for (i, cand) in all.iter().enumerate() {
            match guard.check(cand.addr, &c.named) {
                Ok(()) => {
                    if let Some((kept, _)) = refused.as_mut() {
                        kept.push(cand.clone());
                    }
                }
                Err(denied) => {
                    tracing::info!(
                        target: "sluice::refused",
                        cluster = c.cluster.name,
                        host = %cand.host,
                        error = %denied,
                        "destination address refused"
                    );
                    self.telemetry
                        .metrics
                        .refused("destination_ip", denied.reason_name());
                    refused.get_or_insert_with(|| (all[..i].to_vec(), denied));
                }
            }
        }
        match refused {
            None => Ok(all),
            Some((kept, _)) if !kept.is_empty() => Ok(kept.into()),
            Some((_, denied)) => Err(Error::DestinationDenied(Box::new(denied))),
        }
    }

    async fn discover(
        &self,
        cluster: &Cluster,
        host: Option<&str>,
        original_dst: Option<SocketAddr>,
        requested: Option<(&str, u16)>,
    ) -> Result<Vec<Candidate>, Error> {
        match &cluster.discovery {
            Discovery::Static { endpoints } => {
                let mut out = Vec::new();
                let mut last_err = None;
                for ep in endpoints {
                    match self.resolver.resolve(&ep.address).await {
                        Ok(ips) => out.extend(ips.iter().map(|ip| Candidate {
                            addr: SocketAddr::new(*ip, ep.port),
                            weight: ep.weight,
                            host: Arc::from(ep.address.as_str()),
                        })),
                        Err(e) => last_err = Some(e),
                    }
                }
                if out.is_empty() {
                    return Err(Error::NoHealthyUpstream(match last_err {
                        Some(e) => e.to_string().into(),
                        None => "no endpoints".into(),
                    }));
                }
                Ok(out)
            }
            Discovery::Dns { host, round_robin } => {
                let ips = self
                    .resolver
                    .resolve(host)
                    .await
                    .map_err(|e| Error::NoHealthyUpstream(e.to_string().into()))?;
                let name: Arc<str> = Arc::from(host.as_str());
                let take = if *round_robin { 1 } else { ips.len() };
                Ok(ips
                    .iter()
                    .take(take)
                    .map(|ip| Candidate {
                        addr: SocketAddr::new(*ip, cluster.port),
                        weight: 1,
                        host: name.clone(),
                    })
                    .collect())
            }
            Discovery::DynamicDns => {
                let host = host.ok_or(Error::NoHealthyUpstream(
                    "dynamic DNS without a host name to resolve".into(),
                ))?;
                // No open proxying: only names the cluster's service pattern covers
                // (`*.wikipedia.org`) are resolved, whatever routed the request here.
                if !HostMatch::parse(&cluster.service).matches(host) {
                    return Err(Error::NoHealthyUpstream(
                        format!("{host} is not covered by {}", cluster.service).into(),
                    ));
                }
                let ips = self.resolver.resolve(host).await?;
                let name: Arc<str> = Arc::from(host);
                Ok(ips
                    .iter()
                    .map(|ip| Candidate {
                        addr: SocketAddr::new(*ip, cluster.port),
                        weight: 1,
                        host: name.clone(),
                    })
                    .collect())
            }
            // At the gateway the listener does not learn an original destination (no
            // SO_ORIGINAL_DST without iptables redirection), so this is `UH`.
            Discovery::OriginalDestination => match (original_dst, requested) {
                (Some(addr), _) => Ok(vec![Candidate {
                    addr,
                    weight: 1,
                    host: Arc::from(addr.ip().to_string()),
                }]),
                // Every address, in the resolver's order: the guard drops the refused ones
                // and the first left is dialed.
                (None, Some((name, port))) => {
                    let ips = self.resolver.resolve(name).await?;
                    let host: Arc<str> = Arc::from(name);
                    Ok(ips
                        .iter()
                        .map(|ip| Candidate {
                            addr: SocketAddr::new(*ip, port),
                            weight: 1,
                            host: host.clone(),
                        })
                        .collect())
                }
                (None, None) => Err(Error::NoHealthyUpstream(
                    "no original destination on this listener".into(),
                )),
            },
            Discovery::BlackHole => Err(Error::BlackHole),
        }
    }

    /// A connection for one HTTP request to `candidate` of `c`: pooled if one is idle, else
    /// dialed, within the cluster's connection limits.
    pub async fn http_connection(
        &self,
        c: &Arc<ClusterRt>,
        candidate: &Candidate,
    ) -> Result<Pooled, Error> {
        let (cluster, state) = (&c.cluster, &c.state);
        let origination = c.origination(self, &candidate.host)?;
        let key = PoolKey {
            addr: candidate.addr,
            server_name: origination
                .as_ref()
                .map(|o| Arc::from(o.server_name.as_str())),
        };
        let idle_timeout = c.idle_timeout();
        let deadline = Instant::now() + cluster.connect_timeout.max(Duration::from_millis(100));
        let mut pending: Option<Slot> = None;
        let mut origination = origination;
        let per_connection = cluster.limits.max_requests_per_connection;
        let checkout = || {
            state.pool.checkout(
                &key,
                cluster.http2,
                idle_timeout,
                per_connection,
                cluster.limits.max_connection_duration,
            )
        };
        loop {
            if let Some(p) = checkout().await {
                return Ok(p);
            }
            if let Some(slot) = Slot::try_take(
                state,
                |s| &s.connections,
                cluster.limits.max_connections,
                true,
            ) {
                // Envoy counts a request waiting for its new connection as pending too: with
                // the pending limit reached, it overflows rather than dial.
                let _pending = match pending.take() {
                    Some(p) => p,
                    None => match Slot::try_take(
                        state,
                        |s| &s.pending,
                        cluster.limits.max_pending_requests,
                        false,
                    ) {
                        Some(p) => p,
                        None => {
                            state.stats.upstream_rq_pending_overflow.inc();
                            return Err(Error::Overflow("max_pending_requests"));
                        }
                    },
                };
                if cluster.http2 {
                    let dialed = dial(cluster, state, candidate.addr, origination.take()).await?;
                    let guard = lb::ConnGuard::new(state.stats.upstream_cx_active.clone(), slot);
                    return state
                        .pool
                        .handshake(&key, true, dialed, guard, per_connection)
                        .await
                        .map_err(|e| Error::UpstreamReset(e.to_string()));
                }
                // As Envoy's HTTP/1.1 pool does, the new connection is made for the pool, not
                // for this request, which takes whichever is ready first: it, or a pooled
                // connection another request returns meanwhile. A dial and a TLS handshake
                // take longer than most requests in flight; waiting for its own connection
                // would add them to this request's latency.
                let mut made =
                    connect_ahead(c, candidate.addr, key.clone(), origination.take(), slot);
                loop {
                    let freed = state.pool.freed.notified();
                    tokio::pin!(freed);
                    freed.as_mut().enable();
                    if let Some(p) = checkout().await {
                        return Ok(p);
                    }
                    tokio::select! {
                        biased;
                        made = &mut made => {
                            return made.unwrap_or_else(|_| {
                                Err(Error::UpstreamReset("the connection attempt ended".into()))
                            });
                        }
                        () = freed => {}
                    }
                }
            }
            if pending.is_none() {
                state.stats.upstream_cx_overflow.inc();
                pending = Slot::try_take(
                    state,
                    |s| &s.pending,
                    cluster.limits.max_pending_requests,
                    false,
                );
                if pending.is_none() {
                    state.stats.upstream_rq_pending_overflow.inc();
                    return Err(Error::Overflow("max_pending_requests"));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                state.stats.upstream_rq_pending_overflow.inc();
                return Err(Error::Overflow("max_connections"));
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(wait, state.pool.freed.notified()).await;
        }
    }
}

/// Dials one endpoint (TCP, then TLS when `tls` is given), counting the cluster's stats.
pub async fn dial(
    cluster: &Cluster,
    state: &ClusterState,
    addr: SocketAddr,
    tls: Option<Origination>,
) -> Result<Dialed, Error> {
    state.stats.upstream_cx_total.inc();
    let r = connect::dial(
        addr,
        cluster.connect_timeout,
        cluster.limits.tcp_keepalive.as_ref(),
        cluster.tunnel.as_ref(),
        tls,
    )
    .await;
    if r.is_err() {
        state.stats.upstream_cx_connect_fail.inc();
    }
    r
}

/// Makes a new HTTP/1.1 connection to `addr` for `c`'s pool, holding `slot` (the cluster's
/// connection limit) while it lives, in a task of its own: the request that asked for it gets
/// it, or its failure, from the returned receiver; when that request has taken another
/// connection meanwhile (or is gone), the new one goes to the pool.
fn connect_ahead(
    c: &Arc<ClusterRt>,
    addr: SocketAddr,
    key: PoolKey,
    tls: Option<Origination>,
    slot: Slot,
) -> tokio::sync::oneshot::Receiver<Result<Pooled, Error>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let c = c.clone();
    tokio::spawn(async move {
        let (cluster, state) = (&c.cluster, &c.state);
        let made = async {
            let dialed = dial(cluster, state, addr, tls).await?;
            let guard = lb::ConnGuard::new(state.stats.upstream_cx_active.clone(), slot);
            let per_connection = cluster.limits.max_requests_per_connection;
            state
                .pool
                .handshake(&key, false, dialed, guard, per_connection)
                .await
                .map_err(|e| Error::UpstreamReset(e.to_string()))
        }
        .await;
        if let Err(Ok(pooled)) = tx.send(made) {
            pooled.release(&state.pool);
        }
    });
    rx
}
