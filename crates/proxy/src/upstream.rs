//! Clusters at run time: endpoint discovery (static, DNS, dynamic DNS), load balancing,
//! circuit-breaker limits, dialing with TLS origination, pooled HTTP connections.

pub mod connect;
pub mod dns;
pub mod lb;
pub mod pool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_snapshot::{Cluster, Discovery, HostMatch};

use crate::Error;
use crate::conn::ConnInfo;
use crate::telemetry::Telemetry;
use crate::tls::client::{ClientConfigs, is_mesh};
use connect::{Dialed, Origination};
use lb::{Candidate, ClusterState, Clusters, Slot};
use pool::{Pool, PoolKey, Pooled};

pub struct Upstreams {
    pub resolver: dns::Resolver,
    pub clusters: Clusters,
    pub pool: Arc<Pool>,
    pub tls: ClientConfigs,
    telemetry: Arc<Telemetry>,
}

impl Upstreams {
    pub fn new(resolver: dns::Resolver, telemetry: Arc<Telemetry>) -> Upstreams {
        Upstreams {
            resolver,
            clusters: Clusters::default(),
            pool: Arc::new(Pool::default()),
            tls: ClientConfigs::default(),
            telemetry,
        }
    }

    /// Originates `ISTIO_MUTUAL` with this workload identity (see [`ClientConfigs`]).
    pub fn with_identity(mut self, identity: Option<sluice_identity::IdentitySource>) -> Self {
        self.tls = ClientConfigs::with_identity(identity);
        self
    }

    pub fn state(&self, cluster: &Cluster) -> Arc<ClusterState> {
        self.clusters.get(&cluster.name, || {
            self.telemetry.metrics.cluster(&cluster.name)
        })
    }

    /// The endpoints of `cluster` now. `host` is the request's authority host or the
    /// connection's SNI (DYNAMIC_DNS resolves it); `original_dst` is the destination the
    /// client connected to, when the listener knows it (ORIGINAL_DST).
    ///
    /// On a mesh-hop cluster (`ISTIO_MUTUAL`) each candidate's `host` is `host` itself: the
    /// hop names the destination the app asked for as its SNI (so the gateway learns it, and
    /// connections to different destinations are pooled apart), not the gateway's address.
    pub async fn endpoints(
        &self,
        cluster: &Cluster,
        host: Option<&str>,
        original_dst: Option<SocketAddr>,
    ) -> Result<Vec<Candidate>, Error> {
        let mut out = self.discover(cluster, host, original_dst).await?;
        if let (Some(tls), Some(host)) = (&cluster.tls, host)
            && is_mesh(tls)
            && !host.is_empty()
        {
            let name: Arc<str> = Arc::from(host);
            for c in &mut out {
                c.host = name.clone();
            }
        }
        Ok(out)
    }

    async fn discover(
        &self,
        cluster: &Cluster,
        host: Option<&str>,
        original_dst: Option<SocketAddr>,
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
            Discovery::OriginalDestination => match original_dst {
                Some(addr) => Ok(vec![Candidate {
                    addr,
                    weight: 1,
                    host: Arc::from(addr.ip().to_string()),
                }]),
                None => Err(Error::NoHealthyUpstream(
                    "no original destination on this listener".into(),
                )),
            },
            Discovery::BlackHole => Err(Error::BlackHole),
        }
    }

    /// The TLS to originate toward `host` of `cluster`, if it originates TLS.
    pub fn origination(&self, cluster: &Cluster, host: &str) -> Result<Option<Origination>, Error> {
        let Some(tls) = &cluster.tls else {
            return Ok(None);
        };
        let config = self.tls.get(tls, cluster.http2)?;
        let server_name = tls.sni.clone().unwrap_or_else(|| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        });
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
        cluster: &Cluster,
        candidate: &Candidate,
        info: &ConnInfo,
        passthrough: bool,
    ) -> Result<Option<Origination>, Error> {
        match &cluster.tls {
            Some(tls) if is_mesh(tls) => {
                let requested = info.requested.as_ref().map(|(h, _)| h.as_str());
                // An IP literal is no SNI: the inner ClientHello's name says more then.
                let named = requested.filter(|h| {
                    h.trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_err()
                });
                let host = named
                    .or(info.sni.as_deref())
                    .or(requested)
                    .unwrap_or(&candidate.host);
                self.origination(cluster, host)
            }
            _ if passthrough => Ok(None),
            _ => self.origination(cluster, &candidate.host),
        }
    }

    /// Dials one endpoint (TCP, then TLS when `tls` is given), counting the cluster's stats.
    pub async fn dial(
        &self,
        cluster: &Cluster,
        state: &ClusterState,
        addr: SocketAddr,
        tls: Option<Origination>,
    ) -> Result<Dialed, Error> {
        state.stats.upstream_cx_total.inc();
        let r = connect::dial(addr, cluster.connect_timeout, tls).await;
        if r.is_err() {
            state.stats.upstream_cx_connect_fail.inc();
        }
        r
    }

    /// A connection for one HTTP request to `candidate`: pooled if one is idle, else dialed,
    /// within the cluster's connection limits.
    pub async fn http_connection(
        &self,
        cluster: &Cluster,
        state: &Arc<ClusterState>,
        candidate: &Candidate,
    ) -> Result<(PoolKey, Pooled), Error> {
        let origination = self.origination(cluster, &candidate.host)?;
        let key = PoolKey {
            cluster: cluster.name.clone(),
            addr: candidate.addr,
            tls: match (&cluster.tls, &origination) {
                (Some(t), Some(o)) => Some((t.clone(), o.server_name.clone())),
                _ => None,
            },
            http2: cluster.http2,
        };
        let deadline = Instant::now() + cluster.connect_timeout.max(Duration::from_millis(100));
        let mut pending: Option<Slot> = None;
        let mut origination = origination;
        loop {
            if let Some(p) = self.pool.checkout(&key) {
                return Ok((key, p));
            }
            if let Some(slot) = Slot::try_take(
                state,
                |s| &s.connections,
                cluster.limits.max_connections,
                true,
            ) {
                drop(pending);
                let dialed = self
                    .dial(cluster, state, candidate.addr, origination.take())
                    .await?;
                let pooled = self
                    .pool
                    .handshake(&key, dialed, state.clone(), slot)
                    .await
                    .map_err(|e| Error::UpstreamReset(e.to_string()))?;
                return Ok((key, pooled));
            }
            if pending.is_none() {
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
            let _ = tokio::time::timeout(wait, state.freed.notified()).await;
        }
    }
}
