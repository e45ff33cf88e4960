//! TCP and TLS-passthrough chains: the first matching `TcpRoute`, a weighted cluster, an
//! endpoint, and bytes copied both ways until either side closes or the connection idles.
//!
//! A stream forwarded as TLS passthrough is never wrapped in TLS again, even when its cluster
//! has `tls` settings (Istio's guide sets a SIMPLE DestinationRule on a passthrough host;
//! wrapping the client's own TLS would break it). sluice forwards it untouched. The one
//! exception is the mesh hop (`ISTIO_MUTUAL`), which wraps whatever the app sent in mTLS
//! ([`crate::upstream::Upstreams::stream_origination`]).

pub mod pipe;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use sluice_snapshot::listener::App;
use sluice_snapshot::route::TcpRoute;
use sluice_snapshot::{Discovery, Snapshot};
use tokio::sync::watch;

use crate::flow::{ConnCtx, Routes};
use crate::telemetry::{ByteCounts, Record};
use crate::upstream::ClusterRt;
use crate::upstream::lb::{InflightGuard, Slot, consistent, pick_weighted};
use crate::upstream::outlier::Outcome;
use crate::{Error, authz};

/// Envoy's default TCP proxy idle timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Forwards `io` by the flow's TCP routes. `passthrough`: the bytes are the client's own TLS.
pub async fn proxy<S>(io: S, ctx: &ConnCtx, rec: &mut Record, passthrough: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Err(e) = run(io, ctx, rec, passthrough).await {
        tracing::debug!(error = %e, sni = ?ctx.info.sni, "tcp proxy");
        rec.fail(&e);
    }
}

async fn run<S>(io: S, ctx: &ConnCtx, rec: &mut Record, passthrough: bool) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let opened = open(ctx, rec, passthrough).await?;
    forward(io, ctx, rec, opened).await
}

/// A stream's upstream connection, established: the cluster it belongs to, and the places it
/// holds in that cluster's limits until the stream ends.
pub(crate) struct Opened {
    cluster: Arc<ClusterRt>,
    io: crate::upstream::connect::Io,
    _inflight: InflightGuard,
    _slot: Slot,
}

/// Forwards `io` to an upstream [`open`] already connected (the sidecar dials before it
/// answers a CONNECT).
pub(crate) async fn proxy_opened<S>(io: S, ctx: &ConnCtx, rec: &mut Record, opened: Opened)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Err(e) = forward(io, ctx, rec, opened).await {
        tracing::debug!(error = %e, sni = ?ctx.info.sni, "tcp proxy");
        rec.fail(&e);
    }
}

/// Routes the flow of `ctx` and connects to the upstream its route picks (and originates TLS
/// when the cluster does): everything of a stream that happens before the first byte moves.
pub(crate) async fn open(
    ctx: &ConnCtx,
    rec: &mut Record,
    passthrough: bool,
) -> Result<Opened, Error> {
    let sni = ctx.info.sni.as_deref();
    let dest = ctx.info.original_dst.unwrap_or(ctx.info.local).ip();
    let route = ctx
        .tcp_routes()
        .iter()
        .find(|r| r.matches(sni, Some(dest)))
        .ok_or(Error::NoRoute)?;
    rec.route_name = Some(route.name.clone());
    let wc = pick_weighted(&route.clusters).ok_or(Error::NoRoute)?;
    let c = ctx
        .runtime
        .cluster(&wc.cluster)
        .ok_or_else(|| Error::UnknownCluster(wc.cluster.clone()))?;
    let (cluster, state) = (&c.cluster, &c.state);
    rec.cluster = Some(c.name.clone());
    rec.service = Some(c.service_for(ctx.info.requested.as_ref()));
    rec.tcp_opened();

    let upstreams = &ctx.shared.upstreams;
    let host = sni.or(ctx.info.requested.as_ref().map(|(h, _)| h.as_str()));
    let requested = ctx.info.requested.as_ref().map(|(h, p)| (h.as_str(), *p));
    let candidates = upstreams
        .endpoints(c, host, ctx.info.original_dst, requested)
        .await?;
    let (candidate, inflight) = state
        .pick(
            &cluster.lb,
            &candidates,
            consistent::connection_hash(&cluster.lb, ctx.info.peer),
        )
        .ok_or(Error::NoHealthyUpstream("no endpoint".into()))?;
    let slot = Slot::try_take(
        state,
        |s| &s.connections,
        cluster.limits.max_connections,
        true,
    )
    .ok_or_else(|| {
        // Envoy's TCP proxy refuses at once (it does not queue past max_connections).
        state.stats.upstream_cx_overflow.inc();
        Error::Overflow("max_connections")
    })?;
    let origination = c.stream_origination(
        upstreams,
        candidate,
        requested.map(|(h, _)| h),
        sni,
        passthrough,
    )?;
    rec.upstream_host = Some(candidate.addr);
    let dialed = upstreams
        .dial(cluster, state, candidate.addr, origination)
        .await;
    if let Some(d) = &state.outlier {
        let outcome = match &dialed {
            Ok(_) => Outcome::Connected,
            Err(_) => Outcome::ConnectFailed,
        };
        d.report(candidate.addr, outcome);
    }
    let dialed = dialed?;
    rec.upstream_local = dialed.local;
    Ok(Opened {
        cluster: c.clone(),
        io: dialed.io,
        _inflight: inflight,
        _slot: slot,
    })
}

/// Copies bytes between `io` and the opened upstream until the stream ends.
async fn forward<S>(io: S, ctx: &ConnCtx, rec: &mut Record, opened: Opened) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Opened {
        cluster: c,
        io: upstream,
        _inflight,
        _slot,
    } = opened;
    let (cluster, state) = (&c.cluster, &c.state);
    state.stats.upstream_cx_active.inc();
    let limits = Limits {
        idle: cluster.limits.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
        until: ctx
            .shared
            .config
            .tunnel_max_lifetime
            .map(|d| ctx.info.start + d),
    };
    let cluster_name = c.name.clone();
    let recheck = |snapshot: &Snapshot| revoked(ctx, snapshot, &cluster_name);
    let snapshots = ctx.shared.snapshots.clone();
    let result = copy(
        io,
        upstream,
        rec.counts.clone(),
        limits,
        (snapshots, &ctx.runtime.snapshot),
        recheck,
    )
    .await;
    state.stats.upstream_cx_active.dec();
    match result {
        Ok(()) => Ok(()),
        Err(CopyEnd::Idle) => {
            rec.termination = Some("idle_timeout".into());
            let metrics = &ctx.shared.telemetry.metrics;
            metrics.refused("limit", "tunnel_idle_timeout");
            Ok(())
        }
        Err(CopyEnd::Lifetime) => {
            rec.termination = Some("max_duration_timeout".into());
            let metrics = &ctx.shared.telemetry.metrics;
            metrics.refused("limit", "tunnel_max_lifetime");
            Ok(())
        }
        Err(CopyEnd::Revoked(e)) => {
            tracing::info!(
                target: "sluice::refused",
                peer = %ctx.info.peer,
                sni = ctx.info.sni.as_deref().unwrap_or("-"),
                cluster = %c.name,
                error = %e,
                "open stream closed: the new configuration no longer allows it"
            );
            ctx.shared.telemetry.metrics.refused("revoked", e.details());
            Err(e)
        }
        Err(CopyEnd::Io(e)) => {
            tracing::debug!(error = %e, "tcp copy ended");
            Ok(())
        }
    }
}

/// Why the open stream of `ctx` to `cluster` is not allowed by `snapshot`, if it is not:
/// its AuthorizationPolicies deny the connection, or its routes no longer take it to that
/// cluster (the ServiceEntry, Gateway or rule that admitted it is gone). A stream the new
/// configuration still allows is left alone.
fn revoked(ctx: &ConnCtx, snapshot: &Snapshot, cluster: &str) -> Option<Error> {
    if authz::enforced(snapshot) {
        let decision = snapshot
            .authz
            .evaluate(&authz::connection_request(&ctx.info));
        if !decision.allowed {
            return Some(Error::Denied(decision.details));
        }
    }
    let routes: &[TcpRoute] = match ctx.routes {
        Routes::Chain(_) => {
            let Some(transport) = ctx.chain().map(|c| c.match_.transport) else {
                return Some(Error::Revoked("route"));
            };
            match snapshot
                .listener(ctx.info.listener_port)
                .and_then(|l| l.select(transport, ctx.info.sni.as_deref()))
                .map(|c| &c.app)
            {
                Some(App::Tcp { routes }) => routes,
                _ => &[],
            }
        }
        Routes::Gone => return Some(Error::Revoked("route")),
        Routes::Fallback => snapshot
            .fallback
            .as_ref()
            .map(|f| std::slice::from_ref(&f.tcp))
            .unwrap_or(&[]),
    };
    let dest = ctx.info.original_dst.unwrap_or(ctx.info.local).ip();
    let routed = routes
        .iter()
        .find(|r| r.matches(ctx.info.sni.as_deref(), Some(dest)))
        .is_some_and(|r| r.clusters.iter().any(|wc| wc.cluster == cluster));
    let open = snapshot
        .clusters
        .get(cluster)
        .is_some_and(|c| c.discovery != Discovery::BlackHole);
    if routed && open {
        None
    } else {
        Some(Error::Revoked("route"))
    }
}

/// When a stream is closed regardless of its traffic.
struct Limits {
    idle: Duration,
    until: Option<Instant>,
}

enum CopyEnd {
    Idle,
    Lifetime,
    Revoked(Error),
    Io(io::Error),
}

/// Copies both ways until either side closes, the stream idles, its lifetime ends, or a new
/// snapshot no longer allows it (`recheck`, run once per snapshot other than `decided`, the
/// one the flow was routed by).
async fn copy<D, U>(
    downstream: D,
    mut upstream: U,
    counts: Arc<ByteCounts>,
    limits: Limits,
    (mut snapshots, decided): (watch::Receiver<Arc<Snapshot>>, &Arc<Snapshot>),
    recheck: impl Fn(&Snapshot) -> Option<Error>,
) -> Result<(), CopyEnd>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let idle = limits.idle;
    // A snapshot published while the upstream was being dialed (or, at the sidecar, between
    // the CONNECT and its tunnel's first byte) was never checked: check it before any byte.
    let current = snapshots.borrow_and_update().clone();
    if !Arc::ptr_eq(&current, decided)
        && let Some(e) = recheck(&current)
    {
        return Err(CopyEnd::Revoked(e));
    }
    let mut watching = true;
    let lifetime = async {
        match limits.until {
            Some(t) => tokio::time::sleep_until(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(lifetime);
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut down = Counted {
        inner: downstream,
        counts,
        epoch,
        last: last.clone(),
    };
    let copy = pipe::bidirectional(&mut down, &mut upstream);
    tokio::pin!(copy);
    let tick = idle
        .min(Duration::from_secs(5))
        .max(Duration::from_millis(10));
    loop {
        tokio::select! {
            r = &mut copy => return r.map_err(CopyEnd::Io),
            _ = &mut lifetime => return Err(CopyEnd::Lifetime),
            changed = snapshots.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                if let Some(e) = recheck(&snapshot) {
                    return Err(CopyEnd::Revoked(e));
                }
            }
            _ = tokio::time::sleep(tick) => {
                let since = (epoch.elapsed().as_millis() as u64).saturating_sub(last.load(Ordering::Relaxed));
                if Duration::from_millis(since) >= idle {
                    return Err(CopyEnd::Idle);
                }
            }
        }
    }
}

/// Counts bytes read from and written to the downstream, and when it last moved any.
struct Counted<S> {
    inner: S,
    counts: Arc<ByteCounts>,
    epoch: Instant,
    last: Arc<AtomicU64>,
}

impl<S> Counted<S> {
    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.counts.received.fetch_add(n as u64, Ordering::Relaxed);
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            self.counts.sent.fetch_add(n as u64, Ordering::Relaxed);
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
