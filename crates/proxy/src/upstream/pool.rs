//! Pooled upstream HTTP connections of one cluster, keyed by endpoint and the server name
//! sent (the cluster's TLS settings are fixed for the pool's life: a changed cluster gets a
//! new pool, so two settings never share a connection, pingora's `PeerOptions`).
//!
//! HTTP/1.1 connections serve one request at a time. A connection goes back to the pool when
//! its response body has been read to the end — from the body itself, with no task spawned
//! per request — and is reused up to `max_requests_per_connection`, for at most the idle
//! timeout. A response body dropped early takes its connection with it (its framing is
//! unknown). HTTP/2 connections are shared by concurrent requests; one is no longer handed out
//! once it has carried `max_requests_per_connection` streams or no stream has started on it
//! for the idle timeout (it closes when its last stream ends).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::connect::Dialed;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Upstream connections are closed after this long unused when the cluster sets no
/// `idleTimeout` (Envoy's default is one hour; a shorter one frees sockets sooner).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// An endpoint and the TLS server name sent to it (`None`: plain).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct PoolKey {
    pub addr: SocketAddr,
    pub server_name: Option<Arc<str>>,
}

struct Idle {
    tx: http1::SendRequest<Body>,
    since: Instant,
    /// When the connection was made (`maxConnectionDuration`).
    born: Instant,
    served: u32,
    local: Option<SocketAddr>,
}

struct Shared2 {
    tx: http2::SendRequest<Body>,
    local: Option<SocketAddr>,
    /// Streams started on it.
    served: u32,
    /// When the last stream started.
    since: Instant,
    /// When the connection was made.
    born: Instant,
}

enum Sender {
    H1 {
        tx: http1::SendRequest<Body>,
        served: u32,
        born: Instant,
    },
    H2(http2::SendRequest<Body>),
}

/// A connection checked out for one request.
pub struct Pooled {
    key: PoolKey,
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
    /// Signalled when a connection returns to the pool or its slot frees up.
    pub freed: Notify,
}

impl Pool {
    /// A ready connection for `key`, if one is pooled. `idle_timeout`: older ones are closed.
    /// `max_requests`: an HTTP/2 connection that reaches it is handed out no more.
    /// `max_age` (`maxConnectionDuration`): a connection made longer ago takes no new
    /// request; it closes once its requests are done.
    pub async fn checkout(
        &self,
        key: &PoolKey,
        http2: bool,
        idle_timeout: Duration,
        max_requests: Option<u32>,
        max_age: Option<Duration>,
    ) -> Option<Pooled> {
        let young = |born: Instant| max_age.is_none_or(|m| born.elapsed() < m);
        if http2 {
            let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = h2.get_mut(key) {
                if !s.tx.is_closed() && s.since.elapsed() < idle_timeout && young(s.born) {
                    s.served = s.served.saturating_add(1);
                    s.since = Instant::now();
                    let pooled = Pooled {
                        key: key.clone(),
                        sender: Sender::H2(s.tx.clone()),
                        reused: true,
                        local: s.local,
                    };
                    if max_requests.is_some_and(|m| s.served >= m) {
                        h2.remove(key);
                    }
                    return Some(pooled);
                }
                h2.remove(key);
            }
        }
        loop {
            let mut c = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                let list = idle.get_mut(key)?;
                let c = list.pop();
                if list.is_empty() {
                    idle.remove(key);
                }
                c?
            };
            if c.tx.is_closed() || c.since.elapsed() >= idle_timeout || !young(c.born) {
                continue;
            }
            // A connection returned as its response body ended is ready as soon as its driver
            // has seen the end: usually already, else within the same turn of the runtime.
            if c.tx.ready().await.is_err() {
                continue;
            }
            return Some(Pooled {
                key: key.clone(),
                sender: Sender::H1 {
                    tx: c.tx,
                    served: c.served,
                    born: c.born,
                },
                reused: true,
                local: c.local,
            });
        }
    }

    fn put_back(&self, key: PoolKey, idle: Idle) {
        let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key).or_default().push(idle);
    }

    /// Starts HTTP on a freshly dialed connection. `guard` (the cluster's connection slot and
    /// gauge) is held while the connection lives. An HTTP/2 connection is shared from then on,
    /// unless `max_requests` is 1.
    pub async fn handshake(
        &self,
        key: &PoolKey,
        http2: bool,
        dialed: Dialed,
        guard: impl Send + 'static,
        max_requests: Option<u32>,
    ) -> Result<Pooled, hyper::Error> {
        let is_tls = key.server_name.is_some();
        let local = dialed.io.local_addr();
        let io = TokioIo::new(dialed.io);
        if http2 && (dialed.h2 || !is_tls) {
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
            if max_requests.is_none_or(|m| m > 1) {
                let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
                h2.insert(
                    key.clone(),
                    Shared2 {
                        tx: tx.clone(),
                        local,
                        served: 1,
                        since: Instant::now(),
                        born: Instant::now(),
                    },
                );
            }
            return Ok(Pooled {
                key: key.clone(),
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
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream http/1.1 connection ended");
            }
            drop(guard);
        });
        Ok(Pooled {
            key: key.clone(),
            sender: Sender::H1 {
                tx,
                served: 0,
                born: Instant::now(),
            },
            reused: false,
            local,
        })
    }

    /// Drops idle connections past `idle_timeout` or `max_age`, and closed ones.
    pub fn sweep(&self, idle_timeout: Duration, max_age: Option<Duration>) {
        let young = |born: Instant| max_age.is_none_or(|m| born.elapsed() < m);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, list| {
            list.retain(|c| !c.tx.is_closed() && c.since.elapsed() < idle_timeout && young(c.born));
            !list.is_empty()
        });
        drop(idle);
        let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        h2.retain(|_, s| !s.tx.is_closed() && s.since.elapsed() < idle_timeout && young(s.born));
    }
}

impl Pooled {
    /// Returns a connection that carried no request to the pool, ready for the next one (an
    /// HTTP/2 connection is shared there already).
    pub fn release(self, pool: &Pool) {
        if let Sender::H1 { tx, served, born } = self.sender {
            pool.put_back(
                self.key,
                Idle {
                    tx,
                    since: Instant::now(),
                    born,
                    served,
                    local: self.local,
                },
            );
            pool.freed.notify_waiters();
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    /// Sends `req`. An HTTP/1.1 connection goes back to `pool` when the returned body has
    /// been read to its end, unless it served `max_requests` already.
    pub async fn send(
        self,
        pool: &Arc<Pool>,
        req: Request<Body>,
        max_requests: Option<u32>,
    ) -> Result<Response<PooledBody>, SendError> {
        let local = self.local;
        match self.sender {
            Sender::H2(mut tx) => {
                let resp = tx.try_send_request(req).await.map_err(unsent)?;
                Ok(resp.map(|inner| PooledBody { inner, back: None }))
            }
            Sender::H1 {
                mut tx,
                served,
                born,
            } => {
                let upgrade = req.headers().contains_key(http::header::UPGRADE);
                let resp = tx.try_send_request(req).await.map_err(unsent)?;
                let served = served.saturating_add(1);
                let keep = !upgrade
                    && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
                    && max_requests.is_none_or(|m| served < m);
                let back = keep.then(|| Back {
                    pool: pool.clone(),
                    key: self.key,
                    idle: Idle {
                        tx,
                        since: Instant::now(),
                        born,
                        served,
                        local,
                    },
                });
                Ok(resp.map(|inner| PooledBody {
                    inner,
                    back: back.map(Box::new),
                }))
            }
        }
    }
}

/// A connection to return to its pool.
struct Back {
    pool: Arc<Pool>,
    key: PoolKey,
    idle: Idle,
}

/// An upstream response body; its HTTP/1.1 connection returns to the pool at the body's end.
pub struct PooledBody {
    inner: Incoming,
    back: Option<Box<Back>>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some(back) = self.back.take() {
            let Back {
                pool,
                key,
                mut idle,
            } = *back;
            idle.since = Instant::now();
            pool.put_back(key, idle);
            pool.freed.notify_waiters();
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Read to its end (a client that stops polling once the length is reached): the
        // connection is clean. Otherwise its framing is unknown and it closes with the sender.
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }
}

fn unsent(mut e: TrySendError<Request<Body>>) -> SendError {
    match e.take_message() {
        Some(req) => SendError::Unsent(Box::new(req), e.into_error()),
        None => SendError::Failed(e.into_error()),
    }
}
