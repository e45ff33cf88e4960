//! One downstream connection, start to end: inspect the ClientHello, choose the filter chain,
//! terminate TLS when the chain says so, then run its application (HTTP or TCP). Works on any
//! byte stream, so a mesh mTLS layer can wrap the socket before it gets here.
//!
//! The mesh hop (DESIGN.md): at the gateway, a ClientHello offering ALPN `istio` is a
//! sidecar's `ISTIO_MUTUAL`. It is terminated with the workload identity on any server (also a
//! PASSTHROUGH one), the client certificate verified against the mesh trust bundle; the peer's
//! identity is recorded; then the inner stream is served as if it had arrived alone: inner TLS
//! by its SNI (passed through untouched), inner plain by the plain chain. Without an identity
//! (`--identity-dir`), or when the handshake fails, the connection is closed: identity never
//! comes from anything else, and traffic without the mesh layer has no principal.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_snapshot::Role;
use sluice_snapshot::listener::{App, FilterChain, Listener, ServerTls, ServerTlsMode, Transport};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::flow::{ConnCtx, ConnInfo, Routes};
use crate::rewind::Rewind;
use crate::runtime::Runtime;
use crate::shared::Shared;
use crate::sni::{self, Peek};
use crate::telemetry::{Kind, Record, Sinks};
use crate::{Error, authz, http, tcp, tls};

/// ALPN values only mesh mTLS offers: Istio's sidecars offer both, sluice's sidecar `istio`.
/// A ClientHello with one of them is the mesh hop, whatever server it arrives on.
pub const MESH_ALPN: [&str; 2] = ["istio", "istio-peer-exchange"];

/// How long a plain TCP server at the gateway waits for a client's first bytes to tell a mesh
/// hop (whose sidecar sends its ClientHello at once) from a server-first protocol, which is
/// delayed by this much at most. HTTP-only servers wait for nothing: HTTP clients speak first.
pub const MESH_DETECT_WAIT: Duration = Duration::from_millis(500);

/// Any stream the proxy serves: the socket, or what is inside a mesh mTLS layer.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The stream inside a mesh mTLS layer (one type, so the nesting is bounded by construction).
type MeshIo = Box<dyn Io>;

/// Serves one connection with the listener of `snapshot` at `info.listener_port`. A tunnel
/// is re-checked against each later snapshot; each new request on an HTTP connection is served
/// by the latest ([`crate::flow::Bound`]).
///
/// At the gateway, a ClientHello offering ALPN `istio` is the mesh hop: it is terminated with
/// the workload identity on whatever server it arrives, the peer's verified identity is
/// recorded, and the stream inside goes through chain selection again (inner TLS by its SNI,
/// inner plain by the plain chain), once. A server with `tls.mode: ISTIO_MUTUAL` terminates
/// mesh mTLS as its own TLS.
pub fn serve_connection<S>(
    io: S,
    info: ConnInfo,
    runtime: Arc<Runtime>,
    shared: Arc<Shared>,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    staged(Box::pin(open_connection(io, info, runtime, shared)))
}

/// What is left of a connection once it is set up: its requests served, or its bytes
/// forwarded. It owns everything it uses.
pub(crate) type Tail = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `setup`, then the [`Tail`] it returns. The setup phases run in a box of their own
/// that is freed before the tail starts: a task is as large as its largest state, for its
/// whole life, and an idle tunnel should hold only what forwarding needs, not room for the
/// inspection, handshakes and dialing behind it. (A plain function, not an `async fn`, whose
/// arguments would stay in the task.)
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps a second copy of `setup`"
)]
pub(crate) fn staged<F>(setup: Pin<Box<F>>) -> impl Future<Output = ()> + Send
where
    F: Future<Output = Option<Tail>> + Send + ?Sized + 'static,
{
    async move {
        if let Some(tail) = setup.await {
            tail.await;
        }
    }
}

/// Every phase of a connection before its [`Tail`]; `None` when it ended there (recorded).
pub(crate) async fn open_connection<S>(
    io: S,
    info: ConnInfo,
    runtime: Arc<Runtime>,
    shared: Arc<Shared>,
) -> Option<Tail>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let snapshot = runtime.snapshot.clone();
    let log = runtime.sinks.clone();
    let rec = Record::new(
        shared.telemetry.clone(),
        log.clone(),
        Kind::Connection,
        info.local,
        info.peer,
        None,
    );
    let mut flow = Box::new(Flow {
        info,
        runtime,
        shared,
        log,
        rec,
    });
    let Some(listener) = snapshot.listener(flow.info.listener_port) else {
        flow.rec.fail(&Error::NoFilterChain);
        return None;
    };
    let gateway = snapshot.role == Role::Gateway;

    // Phase 1: what the connection is (bounded in bytes and time).
    let timeout = flow.shared.config.tls_inspect_timeout;
    let first_bytes = if listener.inspects_tls() || (gateway && http_only(listener)) {
        Some(timeout)
    } else if gateway && flow.shared.config.identity.is_some() {
        Some(MESH_DETECT_WAIT)
    } else {
        None
    };
    let (io, transport) = match first_bytes {
        Some(first_bytes) => match flow.inspect(io, first_bytes).await {
            Some(found) => found,
            None => return None,
        },
        None => (Rewind::new(Bytes::new(), io), Transport::Plain),
    };
    flow.rec.sni = flow.info.sni.clone();

    // Phase 2: the filter chain, or the mesh hop first.
    let chain = chain_index(listener, transport, flow.info.sni.as_deref());
    let istio_mutual_chain = chain
        .and_then(|i| listener.chains.get(i))
        .is_some_and(is_istio_mutual);
    if gateway
        && transport == Transport::Tls
        && !istio_mutual_chain
        && flow
            .info
            .alpn
            .iter()
            .any(|a| MESH_ALPN.contains(&a.as_str()))
    {
        // Boxed, like every phase that only some connections take: a connection's task is as
        // large as its largest state, and an idle tunnel should carry no room for the others.
        return Box::pin(flow.mesh_hop(io)).await;
    }
    let Some(chain) = chain else {
        flow.rec.fail(&Error::NoFilterChain);
        return None;
    };
    flow.run_chain(io, transport, chain).await
}

/// The index of the chain `Listener::select` chooses.
fn chain_index(listener: &Listener, transport: Transport, sni: Option<&str>) -> Option<usize> {
    let chain = listener.select(transport, sni)?;
    listener.chains.iter().position(|c| std::ptr::eq(c, chain))
}

fn is_istio_mutual(chain: &FilterChain) -> bool {
    chain
        .tls
        .as_ref()
        .is_some_and(|t| t.mode == ServerTlsMode::IstioMutual)
}

/// Every chain is plain HTTP: its clients speak first, so looking at their first bytes costs
/// no wait.
fn http_only(listener: &Listener) -> bool {
    listener
        .chains
        .iter()
        .all(|c| matches!(c.app, App::Http { .. }))
}

/// What the protocol negotiated by ALPN says about HTTP/2 (`None`: detect it).
fn alpn_h2(alpn: Option<&[u8]>) -> Option<bool> {
    match alpn {
        Some(b"h2") => Some(true),
        Some(b"http/1.1") => Some(false),
        _ => None,
    }
}

/// A stream the sidecar's front end found no listener or chain for: the snapshot's fallback
/// TCP route (its outbound policy) takes it, through the same phases as any TCP chain. The
/// setup of the stream; its [`Tail`] forwards it.
pub(crate) async fn open_fallback_stream<S>(
    io: S,
    info: ConnInfo,
    runtime: Arc<Runtime>,
    shared: Arc<Shared>,
    passthrough: bool,
) -> Option<Tail>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let log = runtime.sinks.clone();
    let rec = Record::new(
        shared.telemetry.clone(),
        log.clone(),
        Kind::Tcp,
        info.local,
        info.peer,
        info.sni.clone(),
    );
    let flow = Box::new(Flow {
        info,
        runtime,
        shared,
        log,
        rec,
    });
    flow.run_tcp(io, Routes::Fallback, passthrough).await
}

/// One connection on its way through the phases.
struct Flow {
    info: ConnInfo,
    runtime: Arc<Runtime>,
    shared: Arc<Shared>,
    log: Option<Arc<Sinks>>,
    /// The connection's record: logged when TLS/TCP ends or the connection is refused;
    /// disarmed when HTTP takes over (each request has its own).
    rec: Record,
}

impl Flow {
    /// Reads the ClientHello if there is one; a client silent for `first_bytes` is plain.
    /// `None` when the connection failed (recorded).
    async fn inspect<T: Io>(
        &mut self,
        io: T,
        first_bytes: Duration,
    ) -> Option<(Rewind<T>, Transport)> {
        let timeout = self.shared.config.tls_inspect_timeout;
        let (io, peek) = sni::inspect_with(io, first_bytes, timeout).await;
        match peek {
            Ok(Peek::Found(hello)) => {
                self.info.sni = hello.sni;
                self.info.alpn = hello.alpn;
                Some((io, Transport::Tls))
            }
            Ok(Peek::NotTls) => Some((io, Transport::Plain)),
            Ok(Peek::NeedMore) => {
                self.rec.fail(&Error::Inspect(sni::Error::Eof));
                None
            }
            Ok(Peek::Malformed(why)) => {
                self.rec.fail(&Error::Inspect(sni::Error::Malformed(why)));
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, peer = %self.info.peer, "tls inspection");
                if let Some(reason) = e.limit_reason() {
                    self.shared.telemetry.metrics.refused("limit", reason);
                }
                self.rec.fail(&Error::Inspect(e));
                None
            }
        }
    }

    /// Terminates mesh mTLS on `io` and records the verified peer. `None` when refused: no
    /// identity here, a handshake that failed (a certificate from another CA, an expired one,
    /// none at all), or a certificate without a SPIFFE ID.
    async fn accept_mesh<T: Io>(&mut self, io: T) -> Option<tokio_rustls::server::TlsStream<T>> {
        let refuse = |flow: &mut Flow, e: Error| {
            flow.rec.fail(&e);
            None
        };
        let config = match self
            .shared
            .server_tls
            .mesh(self.shared.config.identity.as_ref())
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(
                    peer = %self.info.peer,
                    port = self.info.listener_port,
                    sni = self.info.sni.as_deref().unwrap_or("-"),
                    "{e}"
                );
                return refuse(self, e);
            }
        };
        let accept = tokio_rustls::TlsAcceptor::from(config).accept(io);
        let timeout = self.shared.config.tls_inspect_timeout;
        let stream = match tokio::time::timeout(timeout, accept).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::info!(
                    peer = %self.info.peer,
                    port = self.info.listener_port,
                    reason = %e,
                    "mesh mTLS handshake failed: connection closed"
                );
                return refuse(self, Error::MeshTls(e.to_string()));
            }
            Err(_) => return refuse(self, Error::MeshTls("handshake timeout".into())),
        };
        let Some(identity) = sluice_identity::peer_identity(stream.get_ref().1) else {
            tracing::info!(
                peer = %self.info.peer,
                "mesh mTLS client certificate carries no SPIFFE ID: connection closed"
            );
            return refuse(
                self,
                Error::MeshTls("the client certificate carries no SPIFFE ID".into()),
            );
        };
        tracing::debug!(peer = %self.info.peer, identity = %identity, "mesh mTLS peer");
        self.rec.set_peer(Some(&identity), true);
        self.info.peer_identity = Some(identity);
        self.info.tls = true;
        Some(stream)
    }

    /// The mesh hop on a server that is not ISTIO_MUTUAL: terminate it, then choose the chain
    /// for what is inside, as if it had arrived on its own.
    async fn mesh_hop<S: Io + 'static>(mut self: Box<Self>, io: Rewind<S>) -> Option<Tail> {
        let stream = self.accept_mesh(io).await?;
        self.info.mesh_sni = self.info.sni.take();
        self.info.alpn.clear();
        let inner: MeshIo = Box::new(stream);
        let snapshot = self.runtime.snapshot.clone();
        let Some(listener) = snapshot.listener(self.info.listener_port) else {
            self.rec.fail(&Error::NoFilterChain);
            return None;
        };
        let (io, transport) = if listener.inspects_tls() {
            let wait = self.shared.config.tls_inspect_timeout;
            self.inspect(inner, wait).await?
        } else {
            (Rewind::new(Bytes::new(), inner), Transport::Plain)
        };
        // The log names the host routed by: the inner SNI, else the mesh hop's.
        self.rec.sni = self.info.sni.clone().or_else(|| self.info.mesh_sni.clone());
        let Some(chain) = chain_index(listener, transport, self.info.sni.as_deref()) else {
            self.rec.fail(&Error::NoFilterChain);
            return None;
        };
        if listener.chains.get(chain).is_some_and(is_istio_mutual) {
            self.rec
                .fail(&Error::MeshTls("mesh mTLS nested in mesh mTLS".into()));
            return None;
        }
        self.run_chain(io, transport, chain).await
    }

    /// Terminates the chain's TLS, if any, then runs its application.
    async fn run_chain<T: Io + 'static>(
        mut self: Box<Self>,
        io: Rewind<T>,
        transport: Transport,
        index: usize,
    ) -> Option<Tail> {
        let snapshot = self.runtime.snapshot.clone();
        let Some(chain) = snapshot
            .listener(self.info.listener_port)
            .and_then(|l| l.chains.get(index))
        else {
            self.rec.fail(&Error::NoFilterChain);
            return None;
        };
        self.rec.route_name = Some(chain.name.clone());
        let Some(server_tls) = &chain.tls else {
            let passthrough = transport == Transport::Tls;
            return self.run_app(io, chain, index, None, passthrough).await;
        };
        if server_tls.mode == ServerTlsMode::IstioMutual {
            return Box::pin(self.run_istio_mutual(io, chain, index, server_tls)).await;
        }
        Box::pin(self.run_terminated(io, chain, index, server_tls)).await
    }

    /// Terminates the chain's own TLS (SIMPLE / MUTUAL), then runs its application.
    async fn run_terminated<T: Io + 'static>(
        mut self: Box<Self>,
        io: Rewind<T>,
        chain: &FilterChain,
        index: usize,
        server_tls: &ServerTls,
    ) -> Option<Tail> {
        let default_alpn: &[&str] = match chain.app {
            App::Http { .. } => &["h2", "http/1.1"],
            App::Tcp { .. } => &[],
        };
        let config = match self.shared.server_tls.get(server_tls, default_alpn) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, chain = chain.name, "tls termination");
                self.rec.fail(&e);
                return None;
            }
        };
        let accept = tokio_rustls::TlsAcceptor::from(config).accept(io);
        let stream =
            match tokio::time::timeout(self.shared.config.tls_inspect_timeout, accept).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    self.rec.fail(&Error::DownstreamTls(e.to_string()));
                    return None;
                }
                Err(_) => {
                    self.rec
                        .fail(&Error::DownstreamTls("handshake timeout".into()));
                    return None;
                }
            };
        let conn = stream.get_ref().1;
        if server_tls.mode == ServerTlsMode::Mutual && !server_tls.subject_alt_names.is_empty() {
            let ok = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .is_some_and(|c| tls::cert_has_san(c, &server_tls.subject_alt_names));
            if !ok {
                self.rec.fail(&Error::DownstreamTls(
                    "client certificate carries none of the subject alt names".into(),
                ));
                return None;
            }
        }
        let h2 = conn.alpn_protocol() == Some(b"h2");
        self.info.tls = true;
        self.run_app(stream, chain, index, Some(h2), false).await
    }

    /// A server with `tls.mode: ISTIO_MUTUAL`: mesh mTLS is its TLS. Inside an HTTPS server
    /// is HTTP; inside a TLS server either the app's own TLS (passed through, routed by its
    /// SNI) or plain bytes (routed by the mesh SNI).
    async fn run_istio_mutual<T: Io + 'static>(
        mut self: Box<Self>,
        io: Rewind<T>,
        chain: &FilterChain,
        index: usize,
        server_tls: &ServerTls,
    ) -> Option<Tail> {
        let stream = self.accept_mesh(io).await?;
        if !server_tls.subject_alt_names.is_empty() {
            let allowed = self.info.peer_identity.as_ref().is_some_and(|id| {
                let (uri, principal) = (id.to_string(), id.principal());
                server_tls
                    .subject_alt_names
                    .iter()
                    .any(|san| *san == uri || *san == principal)
            });
            if !allowed {
                self.rec.fail(&Error::MeshTls(
                    "the peer identity is none of the server's subjectAltNames".into(),
                ));
                return None;
            }
        }
        self.info.mesh_sni = self.info.sni.clone();
        let h2 = alpn_h2(stream.get_ref().1.alpn_protocol());
        match &chain.app {
            App::Http { .. } => self.run_app(stream, chain, index, h2, false).await,
            App::Tcp { .. } => {
                self.info.alpn.clear();
                let (inner, transport) = self.inspect(stream, MESH_DETECT_WAIT).await?;
                if transport == Transport::Tls {
                    self.rec.sni = self.info.sni.clone();
                }
                let passthrough = transport == Transport::Tls;
                self.run_app(inner, chain, index, None, passthrough).await
            }
        }
    }

    /// The chain's application on `io`. TLS/TCP connections are authorized first (Envoy's
    /// network RBAC filter precedes the TCP proxy); HTTP requests one by one.
    async fn run_app<T: Io + 'static>(
        self: Box<Self>,
        io: T,
        chain: &FilterChain,
        index: usize,
        h2: Option<bool>,
        passthrough: bool,
    ) -> Option<Tail> {
        match &chain.app {
            App::Http { .. } => {
                let ctx = self.into_ctx(Routes::Chain(index));
                Some(Box::pin(http::serve(io, ctx, h2)))
            }
            App::Tcp { .. } => self.run_tcp(io, Routes::Chain(index), passthrough).await,
        }
    }

    /// The HTTP requests of this connection log themselves: the connection's record is not
    /// written.
    fn into_ctx(self: Box<Self>, routes: Routes) -> Arc<ConnCtx> {
        let Flow {
            info,
            runtime,
            shared,
            log,
            mut rec,
        } = *self;
        rec.disarm();
        Arc::new(ConnCtx::new(info, runtime, shared, log, routes).for_http(Arc::default()))
    }

    /// A TLS or TCP stream: authorized once, routed and connected by [`tcp`]; the tail
    /// forwards its bytes.
    async fn run_tcp<T: Io + 'static>(
        self: Box<Self>,
        io: T,
        routes: Routes,
        passthrough: bool,
    ) -> Option<Tail> {
        let Flow {
            mut info,
            runtime,
            shared,
            log,
            mut rec,
        } = *self;
        rec.kind = Kind::Tcp;
        // Read only to choose the chain (the mesh hop's ALPN); the tunnel need not keep it.
        info.alpn = Vec::new();
        let ctx = ConnCtx::new(info, runtime, shared, log, routes);
        let req = authz::connection_request(&ctx.info);
        match authz::authorize(
            &ctx.runtime.snapshot,
            &ctx.shared.telemetry,
            authz::Protocol::Tcp,
            &req,
        ) {
            Ok(by) => rec.allowed_by = by,
            Err(e) => {
                rec.fail(&e);
                return None;
            }
        }
        let opened = tcp::open_or_fail(&ctx, &mut rec, passthrough).await?;
        Some(Box::pin(tcp::proxy_opened(io, ctx, rec, opened)))
    }
}

#[cfg(test)]
mod tests {
    use sluice_snapshot::listener::ChainMatch;
    use sluice_snapshot::route::TcpRoute;

    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<F, A, B, C, D, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    fn future_size5<F, A, B, C, D, E, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D, E) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// A connection's task is allocated at the size of its largest state, for its whole life:
    /// the setup phases (kilobytes: inspection, handshakes, dialing) live in a box freed before
    /// the tail, so what the task itself keeps is two pointers and a state, in any profile.
    /// An idle tunnel's memory is its tail; docs/performance.md has the measured figures.
    #[test]
    fn a_connection_task_keeps_no_room_for_its_setup() {
        let task = future_size(serve_connection::<tokio::net::TcpStream>);
        let setup = future_size(open_connection::<tokio::net::TcpStream>);
        assert!(task <= 64, "serve_connection's future is {task} bytes");
        assert!(
            setup > 1024,
            "the setup is boxed for a reason: {setup} bytes"
        );
        // The sidecar's explicit proxy: a CONNECT tunnel does not keep the HTTP connection
        // that asked for it.
        let sidecar = |io, local, peer, runtime, shared| {
            crate::sidecar::serve::<tokio::net::TcpStream>(io, local, peer, runtime, shared)
        };
        let task = future_size5(sidecar);
        assert!(task <= 64, "sidecar::serve's future is {task} bytes");
    }

    fn chain(app: App) -> FilterChain {
        FilterChain {
            name: "c".into(),
            match_: ChainMatch {
                transport: Transport::Plain,
                server_names: vec![],
            },
            tls: None,
            app,
        }
    }

    #[test]
    fn only_all_http_listeners_are_inspected_for_free() {
        let http = || {
            chain(App::Http {
                route_config: "http.80".into(),
                virtual_hosts: vec![],
                index: Default::default(),
            })
        };
        let tcp = || {
            chain(App::Tcp {
                routes: Vec::<TcpRoute>::new(),
            })
        };
        let listener = |chains| Listener {
            name: "0.0.0.0_80".into(),
            port: 80,
            chains,
        };
        assert!(http_only(&listener(vec![http()])));
        assert!(!http_only(&listener(vec![http(), tcp()])));
        assert!(!http_only(&listener(vec![tcp()])));
    }

    #[test]
    fn alpn_decides_http2_only_when_it_names_http() {
        assert_eq!(alpn_h2(Some(b"h2")), Some(true));
        assert_eq!(alpn_h2(Some(b"http/1.1")), Some(false));
        assert_eq!(alpn_h2(Some(b"istio")), None);
        assert_eq!(alpn_h2(None), None);
    }
}
