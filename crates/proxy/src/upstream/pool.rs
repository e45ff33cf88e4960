//! Pooled upstream HTTP connections, keyed by cluster, endpoint and TLS settings (so two
//! settings never share a connection, pingora's `PeerOptions`). HTTP/1.1 connections are kept
//! alive and reused one request at a time, up to `max_requests_per_connection` and for at
//! most the idle timeout; HTTP/2 connections are shared by concurrent requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use sluice_snapshot::cluster::UpstreamTls;

use super::connect::Dialed;
use super::lb::{ClusterState, Slot};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Upstream connections are closed after this long unused when the cluster sets no
/// `idleTimeout` (Envoy's default is one hour; a shorter one frees sockets sooner).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct PoolKey {
    pub cluster: String,
    pub addr: SocketAddr,
    /// TLS settings and the server name sent.
    pub tls: Option<(UpstreamTls, String)>,
    pub http2: bool,
}

struct Idle {
    tx: http1::SendRequest<Body>,
    since: Instant,
    served: u32,
    idle_timeout: Duration,
    local: Option<SocketAddr>,
}

struct Shared2 {
    tx: http2::SendRequest<Body>,
    local: Option<SocketAddr>,
}

enum Sender {
    H1 {
        tx: http1::SendRequest<Body>,
        served: u32,
    },
    H2(http2::SendRequest<Body>),
}

/// A connection checked out for one request.
pub struct Pooled {
    sender: Sender,
    /// It served a request before (a failure may be a stale keep-alive connection).
    pub reused: bool,
    pub local: Option<SocketAddr>,
}

pub enum SendError {
    /// The request never left: it can go on another connection.
    Unsent(Box<Request<Body>>, hyper::Error),
    Failed(hyper::Error),
}

#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    h2: Mutex<HashMap<PoolKey, Shared2>>,
}

impl Pool {
    /// A ready connection for `key`, if one is pooled.
    pub fn checkout(&self, key: &PoolKey) -> Option<Pooled> {
        if key.http2 {
            let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = h2.get(key) {
                if !s.tx.is_closed() {
                    return Some(Pooled {
                        sender: Sender::H2(s.tx.clone()),
                        reused: true,
                        local: s.local,
                    });
                }
                h2.remove(key);
            }
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(key)?;
        let now = Instant::now();
        while let Some(c) = list.pop() {
            if c.tx.is_closed() || !c.tx.is_ready() || now.duration_since(c.since) >= c.idle_timeout
            {
                continue;
            }
            return Some(Pooled {
                sender: Sender::H1 {
                    tx: c.tx,
                    served: c.served,
                },
                reused: true,
                local: c.local,
            });
        }
        idle.remove(key);
        None
    }

    /// Starts HTTP on a freshly dialed connection. `slot` is the cluster's connection count,
    /// held while the connection lives.
    pub async fn handshake(
        &self,
        key: &PoolKey,
        dialed: Dialed,
        state: Arc<ClusterState>,
        slot: Slot,
    ) -> Result<Pooled, hyper::Error> {
        let is_tls = key.tls.is_some();
        let local = dialed.local;
        let io = TokioIo::new(dialed.io);
        let guard = ConnGuard::new(state.stats.upstream_cx_active.clone(), slot);
        if key.http2 && (dialed.h2 || !is_tls) {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(96 * 1024)
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream h2 connection ended");
                }
                drop(guard);
            });
            let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
            h2.insert(
                key.clone(),
                Shared2 {
                    tx: tx.clone(),
                    local,
                },
            );
            return Ok(Pooled {
                sender: Sender::H2(tx),
                reused: false,
                local,
            });
        }
        let (tx, conn) = http1::Builder::new()
            .max_buf_size(256 * 1024)
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream http/1.1 connection ended");
            }
            drop(guard);
        });
        Ok(Pooled {
            sender: Sender::H1 { tx, served: 0 },
            reused: false,
            local,
        })
    }

    /// Drops idle connections past their idle timeout.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, list| {
            list.retain(|c| !c.tx.is_closed() && now.duration_since(c.since) < c.idle_timeout);
            !list.is_empty()
        });
        drop(idle);
        let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        h2.retain(|_, s| !s.tx.is_closed());
    }
}

/// Held by a connection's driver task: the cluster's connection slot and active gauge.
struct ConnGuard {
    active: Gauge,
    _slot: Slot,
}

impl ConnGuard {
    fn new(active: Gauge, slot: Slot) -> ConnGuard {
        active.inc();
        ConnGuard {
            active,
            _slot: slot,
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}

impl Pooled {
    pub fn is_h2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    /// Sends `req`; an HTTP/1.1 connection goes back to the pool once its response body has
    /// been read, unless it served `max_requests` already.
    pub async fn send(
        self,
        pool: &Arc<Pool>,
        key: &PoolKey,
        req: Request<Body>,
        max_requests: Option<u32>,
        idle_timeout: Duration,
        on_free: Arc<ClusterState>,
    ) -> Result<Response<Incoming>, SendError> {
        let local = self.local;
        match self.sender {
            Sender::H2(mut tx) => tx.try_send_request(req).await.map_err(unsent),
            Sender::H1 { mut tx, served } => {
                let resp = tx.try_send_request(req).await.map_err(unsent)?;
                let served = served.saturating_add(1);
                if max_requests.is_none_or(|m| served < m) {
                    let pool = pool.clone();
                    let key = key.clone();
                    tokio::spawn(async move {
                        // Ready again once the response body has been read to its end.
                        let ready = tokio::time::timeout(idle_timeout, tx.ready()).await;
                        if matches!(ready, Ok(Ok(()))) {
                            let mut idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
                            idle.entry(key).or_default().push(Idle {
                                tx,
                                since: Instant::now(),
                                served,
                                idle_timeout,
                                local,
                            });
                        }
                        on_free.freed.notify_waiters();
                    });
                }
                Ok(resp)
            }
        }
    }
}

fn unsent(mut e: TrySendError<Request<Body>>) -> SendError {
    match e.take_message() {
        Some(req) => SendError::Unsent(Box::new(req), e.into_error()),
        None => SendError::Failed(e.into_error()),
    }
}
