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
use std::sync::atomic::Ordering;
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

/// [`open`], the failure recorded: `None` when the stream has no upstream.
pub(crate) async fn open_or_fail(
    ctx: &ConnCtx,
    rec: &mut Record,
    passthrough: bool,
) -> Option<Opened> {
    match open(ctx, rec, passthrough).await {
        Ok(opened) => Some(opened),
        Err(e) => {
            failed(ctx, rec, &e);
            None
        }
    }
}

fn failed(ctx: &ConnCtx, rec: &mut Record, e: &Error) {
    tracing::debug!(error = %e, sni = ?ctx.info.sni, "tcp proxy");
    rec.fail(e);
}

/// A stream's upstream connection, established: the cluster it belongs to, and the places it
/// holds in that cluster's limits until the stream ends.
pub(crate) struct Opened {
    cluster: Arc<ClusterRt>,
    io: crate::upstream::connect::Io,
    _inflight: InflightGuard,
    _slot: Slot,
}

/// Forwards `io` to an upstream [`open`] already connected, until the stream ends; the record
/// is logged then. It owns what it uses, so an open tunnel is this future and nothing around
/// it: keep it lean, it is what every idle tunnel costs. (Plain functions returning `async`
/// blocks here, not `async fn`s: those keep a second copy of their arguments.)
pub(crate) fn proxy_opened<S>(
    io: S,
    ctx: ConnCtx,
    mut rec: Record,
    opened: Opened,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (idle, lifetime) = (
        opened.cluster.cluster.limits.idle_timeout,
        ctx.shared.config.tunnel_max_lifetime,
    );
    let limits = Limits {
        idle: idle.unwrap_or(DEFAULT_IDLE_TIMEOUT),
        until: lifetime.map(|d| ctx.info.start + d),
    };
    let mut snapshots = ctx.shared.snapshots.clone();
    let epoch = Instant::now();
    let mut down = Counted {
        inner: io,
        counts: rec.counts.clone(),
        epoch,
    };
    let Opened {
        cluster: c,
        io: mut upstream,
        _inflight,
        _slot,
    } = opened;
    async move {
        let recheck = |snapshot: &Snapshot| revoked(&ctx, snapshot, &c.name);
        let stats = &c.state.stats;
        stats.upstream_cx_active.inc();
        // A snapshot published while the upstream was being dialed (or, at the sidecar,
        // between the CONNECT and its tunnel's first byte) was never checked: check it
        // before any byte. Later ones are checked as they come (`changed` below).
        let current = snapshots.borrow_and_update().clone();
        let stale = !Arc::ptr_eq(&current, &ctx.runtime.snapshot);
        let result = match stale.then(|| recheck(&current)).flatten() {
            Some(e) => Err(CopyEnd::Revoked(e)),
            None => {
                drop(current);
                copy(&mut down, &mut upstream, &limits, &mut snapshots, recheck).await
            }
        };
        stats.upstream_cx_active.dec();
        // The stream's places in its cluster's limits, held until here.
        drop((_inflight, _slot));
        if let Err(e) = ended(result, &ctx, &mut rec, &c.name) {
            failed(&ctx, &mut rec, &e);
        }
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
    let dialed = crate::upstream::dial(cluster, state, candidate.addr, origination).await;
    if let Some(d) = &state.outlier {
        let outcome = match &dialed {
            Ok(_) => Outcome::Connected,
            Err(_) => Outcome::ConnectFailed,
        };
        d.report(candidate.addr, outcome);
    }
    let dialed = dialed?;
    // Only a sink reads it (`%UPSTREAM_LOCAL_ADDRESS%`, CEL's `upstream.local_address`): a
    // new connection without one spares the system call.
    if ctx.log.is_some() {
        rec.upstream_local = dialed.io.local_addr();
    }
    Ok(Opened {
        cluster: c.clone(),
        io: dialed.io,
        _inflight: inflight,
        _slot: slot,
    })
}

/// Records how a stream's copy ended; `Err` when the stream failed.
fn ended(
    result: Result<(), CopyEnd>,
    ctx: &ConnCtx,
    rec: &mut Record,
    cluster: &str,
) -> Result<(), Error> {
    let metrics = &ctx.shared.telemetry.metrics;
    match result {
        Ok(()) => Ok(()),
        Err(CopyEnd::Idle) => {
            rec.termination = Some("idle_timeout".into());
            metrics.refused("limit", "tunnel_idle_timeout");
            Ok(())
        }
        Err(CopyEnd::Lifetime) => {
            rec.termination = Some("max_duration_timeout".into());
            metrics.refused("limit", "tunnel_max_lifetime");
            Ok(())
        }
        Err(CopyEnd::Revoked(e)) => {
            tracing::info!(
                target: "sluice::refused",
                peer = %ctx.info.peer,
                sni = ctx.info.sni.as_deref().unwrap_or("-"),
                cluster = %cluster,
                error = %e,
                "open stream closed: the new configuration no longer allows it"
            );
            metrics.refused("revoked", e.details());
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
/// snapshot no longer allows it (`recheck`, run on each one published). It borrows what the
/// tunnel owns: an idle tunnel's state is [`proxy_opened`]'s, once.
async fn copy<D, U>(
    down: &mut Counted<D>,
    upstream: &mut U,
    limits: &Limits,
    snapshots: &mut watch::Receiver<Arc<Snapshot>>,
    recheck: impl Fn(&Snapshot) -> Option<Error>,
) -> Result<(), CopyEnd>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (epoch, counts) = (down.epoch, down.counts.clone());
    // When bytes last moved; saturating, as a DestinationRule may set an idle timeout of
    // centuries.
    let idle_at = || {
        let moved = epoch + Duration::from_millis(counts.last_moved_ms.load(Ordering::Relaxed));
        moved
            .checked_add(limits.idle)
            .unwrap_or(moved + Duration::from_secs(100 * 365 * 86_400))
    };
    // One timer for both limits, set to the earlier of the two; when it fires and bytes moved
    // since, it is set again to the new idle deadline (one wake-up per idle period of a busy
    // stream, none in between).
    let deadline = |idle_at: Instant| limits.until.map_or(idle_at, |t| t.min(idle_at));
    let timer = tokio::time::sleep_until(deadline(idle_at()));
    tokio::pin!(timer);
    let copy = pipe::bidirectional(down, upstream);
    tokio::pin!(copy);
    let mut watching = true;
    loop {
        tokio::select! {
            r = &mut copy => return r.map_err(CopyEnd::Io),
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
            () = &mut timer => {
                let now = Instant::now();
                if limits.until.is_some_and(|t| now >= t) {
                    return Err(CopyEnd::Lifetime);
                }
                let idle_at = idle_at();
                if now >= idle_at {
                    return Err(CopyEnd::Idle);
                }
                timer.as_mut().reset(deadline(idle_at));
            }
        }
    }
}

/// Counts bytes read from and written to the downstream, and when it last moved any.
struct Counted<S> {
    inner: S,
    counts: Arc<ByteCounts>,
    epoch: Instant,
}

impl<S> Counted<S> {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.counts.last_moved_ms.store(ms, Ordering::Relaxed);
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
