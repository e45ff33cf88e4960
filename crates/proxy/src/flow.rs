//! What is known about one flow (a connection, a tunnel, the requests on it) as it goes
//! through the phases, and which routes take it. A leaf of the proxy's module graph: the
//! phases (`conn`, `http`, `tcp`, `authz`, `sidecar`) all read it, it reads none of them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use sluice_snapshot::listener::{App, FilterChain};
use sluice_snapshot::route::{TcpRoute, VirtualHost, select_virtual_host};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::framing::Framing;
use crate::runtime::Runtime;
use crate::shared::Shared;
use crate::telemetry::Sinks;

/// What is known about a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The address the client connected to.
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// The listener (snapshot port) that accepted it.
    pub listener_port: u16,
    /// From the ClientHello, lower-cased.
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    pub start: Instant,
    /// The destination before redirection, when the listener learnt it (not at the gateway).
    pub original_dst: Option<SocketAddr>,
    /// TLS was terminated here (the request scheme is https).
    pub tls: bool,
    /// The peer's workload identity, from a certificate verified against the mesh trust
    /// bundle during the mesh mTLS handshake — never from anything the client can write.
    pub peer_identity: Option<sluice_identity::Identity>,
    /// The SNI of the mesh hop, when this stream arrived inside mesh mTLS: the sidecar names
    /// the destination host there (istio.io's `sni:` idiom), which authz uses as the host of
    /// TCP traffic.
    pub mesh_sni: Option<String>,
    /// Sidecar role: the host and port the app asked for (CONNECT target, absolute URI, Host).
    pub requested: Option<(String, u16)>,
}

impl ConnInfo {
    pub fn new(local: SocketAddr, peer: SocketAddr, listener_port: u16) -> ConnInfo {
        ConnInfo {
            local,
            peer,
            listener_port,
            sni: None,
            alpn: Vec::new(),
            start: Instant::now(),
            original_dst: None,
            tls: false,
            peer_identity: None,
            mesh_sni: None,
            requested: None,
        }
    }
}

/// Which routes a flow is served by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// Chain `index` of the listener at the flow's `listener_port`.
    Chain(usize),
    /// The snapshot's fallback (a sidecar's outbound policy, for destinations no listener,
    /// chain or virtual host takes).
    Fallback,
    /// The chain the connection was served by is not in the current snapshot: no route takes
    /// its requests (`404 NR`), and it closes ([`Bound`]).
    Gone,
}

/// A connection's context once its routes are chosen: shared by its requests.
pub struct ConnCtx {
    pub info: ConnInfo,
    pub runtime: Arc<Runtime>,
    pub shared: Arc<Shared>,
    /// Where the snapshot's records are written (`Runtime::sinks`).
    pub log: Option<Arc<Sinks>>,
    pub routes: Routes,
    /// The peer's address as `X-Forwarded-For` carries it, formatted once per connection
    /// ([`ConnCtx::for_http`]; empty in a stream's context).
    pub peer_ip: HeaderValue,
    /// What the scan of an HTTP/1 connection's request heads found ([`crate::framing`]);
    /// shared by every context the connection is rebound to. `None` in the context of a
    /// stream (TCP, TLS passthrough), which has no request heads: an open tunnel keeps its
    /// context, and nothing in it should be unused.
    pub framing: Option<Arc<Framing>>,
}

impl ConnCtx {
    pub fn new(
        info: ConnInfo,
        runtime: Arc<Runtime>,
        shared: Arc<Shared>,
        log: Option<Arc<Sinks>>,
        routes: Routes,
    ) -> ConnCtx {
        ConnCtx {
            info,
            runtime,
            shared,
            log,
            routes,
            peer_ip: HeaderValue::from_static(""),
            framing: None,
        }
    }

    /// The context of an HTTP connection (or request) whose heads `framing` watches: with
    /// what only HTTP reads, which a stream's context does without.
    pub fn for_http(mut self, framing: Arc<Framing>) -> ConnCtx {
        self.peer_ip = HeaderValue::try_from(self.info.peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        self.framing = Some(framing);
        self
    }

    pub fn chain(&self) -> Option<&FilterChain> {
        match self.routes {
            Routes::Chain(index) => self
                .runtime
                .snapshot
                .listener(self.info.listener_port)?
                .chains
                .get(index),
            Routes::Fallback | Routes::Gone => None,
        }
    }

    /// The virtual host an HTTP request for `host` (no port) of this flow is routed by.
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        match self.routes {
            Routes::Chain(_) => self.chain()?.app.virtual_host(host),
            Routes::Fallback => {
                let fallback = &self.runtime.snapshot.fallback.as_ref()?.http;
                select_virtual_host(std::slice::from_ref(fallback), host)
            }
            Routes::Gone => None,
        }
    }

    /// The TCP routes a stream of this flow is routed by.
    pub fn tcp_routes(&self) -> &[TcpRoute] {
        match self.routes {
            Routes::Chain(_) => match self.chain().map(|c| &c.app) {
                Some(App::Tcp { routes }) => routes,
                _ => &[],
            },
            Routes::Fallback => self
                .runtime
                .snapshot
                .fallback
                .as_ref()
                .map(|f| std::slice::from_ref(&f.tcp))
                .unwrap_or(&[]),
            Routes::Gone => &[],
        }
    }

    /// The HTTP route configuration's name (`http.80`), which local rate limits are keyed by.
    pub fn route_config(&self) -> Option<&str> {
        match self.chain().map(|c| &c.app) {
            Some(App::Http { route_config, .. }) => Some(route_config),
            _ => None,
        }
    }

    pub fn scheme(&self) -> &'static str {
        if self.info.tls { "https" } else { "http" }
    }

    /// This connection's context under `runtime`: its chain is the one of the new snapshot's
    /// listener with the same match (the same Gateway server), `Gone` when there is none or
    /// it no longer serves HTTP. True: the connection must close after the request at hand
    /// (its chain is gone, or the TLS it was terminated with is no longer what the chain
    /// says).
    fn rebind(&self, runtime: Arc<Runtime>) -> (ConnCtx, bool) {
        let (routes, close) = match self.routes {
            Routes::Fallback => (Routes::Fallback, false),
            Routes::Chain(_) | Routes::Gone => {
                let found = self.chain().and_then(|old| {
                    let chains = &runtime.snapshot.listener(self.info.listener_port)?.chains;
                    let index = chains.iter().position(|c| {
                        c.match_ == old.match_ && matches!(c.app, App::Http { .. })
                    })?;
                    Some((index, chains[index].tls != old.tls))
                });
                match found {
                    Some((index, tls_changed)) => (Routes::Chain(index), tls_changed),
                    None => (Routes::Gone, true),
                }
            }
        };
        let log = runtime.sinks.clone();
        let mut ctx = ConnCtx::new(self.info.clone(), runtime, self.shared.clone(), log, routes);
        ctx.framing = self.framing.clone();
        ctx.peer_ip = self.peer_ip.clone();
        (ctx, close)
    }
}

/// What the proxy publishes as the runtime in use.
type Runtimes = watch::Receiver<Option<Arc<Runtime>>>;

/// A runtime applied since `runtimes` was last read, if any. Cheap when none was: an atomic
/// load.
fn applied_since(runtimes: &mut Runtimes) -> Option<Arc<Runtime>> {
    if !runtimes.has_changed().unwrap_or(false) {
        return None;
    }
    runtimes.borrow_and_update().clone()
}

/// The runtime in use, as a long-lived connection re-reads it for each request.
pub struct Latest {
    state: Mutex<(Runtimes, Arc<Runtime>)>,
}

impl Latest {
    pub fn new(shared: &Shared, runtime: Arc<Runtime>) -> Latest {
        Latest {
            state: Mutex::new((shared.runtime.clone(), runtime)),
        }
    }

    /// The runtime in use now: one uncontended lock and an atomic load when none was applied
    /// since the last call.
    pub fn get(&self) -> Arc<Runtime> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (runtimes, runtime) = &mut *guard;
        if let Some(latest) = applied_since(runtimes) {
            *runtime = latest;
        }
        runtime.clone()
    }
}

/// An HTTP connection's context as its requests find it: each request starts with the runtime
/// in use at that moment, so a kept-alive connection never keeps a revoked route, policy or
/// credential (Envoy applies route and cluster updates to open connections likewise). When
/// the connection cannot go on under the new snapshot, [`Bound::closing`] resolves: the
/// connection closes gracefully after the requests in flight.
pub struct Bound {
    /// The context's own `runtime` is the one in use as of the last request.
    state: Mutex<(Runtimes, Arc<ConnCtx>)>,
    close: Notify,
}

impl Bound {
    pub fn new(ctx: Arc<ConnCtx>) -> Bound {
        Bound {
            state: Mutex::new((ctx.shared.runtime.clone(), ctx)),
            close: Notify::new(),
        }
    }

    /// The context for a request starting now: one uncontended lock and an atomic load when
    /// no runtime was applied since the last request.
    pub fn current(&self) -> Arc<ConnCtx> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (runtimes, ctx) = &mut *guard;
        if let Some(runtime) = applied_since(runtimes)
            && !Arc::ptr_eq(&runtime, &ctx.runtime)
        {
            let (next, close) = ctx.rebind(runtime);
            *ctx = Arc::new(next);
            if close {
                self.close.notify_one();
            }
        }
        ctx.clone()
    }

    /// Resolves once the connection must close (see [`Bound`]).
    pub async fn closing(&self) {
        self.close.notified().await;
    }
}
