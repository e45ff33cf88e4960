//! The sidecar's explicit proxy (`sluice sidecar --listen`, default `127.0.0.1:15001`): what an
//! app reaches through `HTTP_PROXY`/`HTTPS_PROXY`, or as a plain HTTP server addressed by
//! `Host`. The sidecar's listeners are virtual, one per destination port; this module picks
//! one for each flow and hands the flow to it.
//!
//! - `CONNECT host:port` is answered `200 Connection Established` only once the destination
//!   is allowed and the upstream the tunnel will take — or the mesh hop to the gateway — is
//!   connected ([`plan`], [`dial`], [`warm`]); else `403`/`502`/`503`/`504`
//!   ([`connect_status`]). The tunnel then belongs to the virtual listener of `port`, with
//!   `requested = (host, port)`: its ClientHello's SNI (which must name `host`) picks a TLS
//!   chain, a TCP chain takes plain bytes, and plain HTTP inside the tunnel (for `host` only)
//!   is routed per request like below (the clusters the host's routes forward to were
//!   connected before the `200`, and its requests ride those connections).
//! - Any other request (absolute-form `GET http://host[:port]/p`, or origin-form with `Host`)
//!   goes to the HTTP chain of the virtual listener of its port (default 80), by its own host:
//!   one keep-alive connection may carry requests for different hosts **and ports**, each is
//!   routed on its own. An absolute-form target is rewritten to origin-form with its authority
//!   as `Host`, so the routes and the upstream see what a direct request would carry.
//! - Request heads are bounded (16 KiB; 10 s, or a shorter `--request-head-timeout`, counted
//!   as `sluice_refused_total{check="limit",reason="request_head_timeout"}`); a malformed head
//!   gets `400` and the connection is closed (so does a request without a host, an absolute
//!   URI other than `http://`, a `CONNECT` without a port or inside a tunnel, and a head with
//!   both `Content-Length` and `Transfer-Encoding`, see [`crate::framing`]). HTTP/1.x only: an
//!   app speaking h2c prior-knowledge to the proxy is not served (h2 inside a CONNECT tunnel
//!   is fine).
//!
//! This module only reads the explicit proxy's front end and picks the routes; everything
//! after — authorization, routing, rate limits, upstreams, retries, timeouts, logs — is the
//! same code the gateway runs ([`crate::conn`], [`crate::http`], [`crate::tcp`]).
//!
//! A destination no rule or registered host covers — no virtual listener for the port, no
//! chain for the SNI or transport, no TCP route for it, no virtual host for the host — takes
//! the snapshot's fallback routes, which the compiler made from the mesh's
//! `outboundTrafficPolicy`, as Istio's sidecar has them:
//! - `REGISTRY_ONLY`: route `block_all` / cluster `BlackHoleCluster`: HTTP gets `502` (flag
//!   `UH`); a CONNECT that only the fallback would take is answered `403` (`UH`), as Squid
//!   refuses a CONNECT.
//! - `ALLOW_ANY`: route `allow_any` / `PassthroughCluster`: the host the app asked for is
//!   resolved with the proxy's resolver and the request (in the clear) or the tunnel's bytes
//!   (as they are) go to the port asked for.
//!
//! Every refused flow is logged (target `sluice::refused`) with its host, port and SNI.
//!
//! The app's destination reaches the upstream side too: on a mesh-hop cluster
//! (`ISTIO_MUTUAL`) the mTLS SNI is the host the app asked for (see
//! [`crate::upstream::Upstreams::stream_origination`]). Names are resolved for a virtual
//! listener only when its routes need the destination address (`destinationSubnets`,
//! resolution `NONE`); an IP literal is always taken as the destination.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use sluice_snapshot::OutboundPolicy;
use sluice_snapshot::listener::{App, Transport};
use sluice_snapshot::route::TcpRoute;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::authority::Host;
use crate::conn::{Tail, open_connection, open_fallback_stream, staged};
use crate::flow::{ConnCtx, ConnInfo, Latest, Routes};
use crate::framing::{Framing, HeadScan};
use crate::runtime::Runtime;
use crate::shared::{Shared, wait_true};
use crate::sni::{self, Peek};
use crate::telemetry::{Kind, Record};
use crate::upstream::pool::BoxError;
use crate::{Error, authz, tcp};

/// Where the explicit proxy listens unless `--listen` says otherwise.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15001);
/// Largest request head read from the app (hyper's read buffer; it answers 431 beyond).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The app must send each request head within this time (or `--request-head-timeout`, when
/// that is shorter); a connection that sends nothing is closed then too.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The response body type of the explicit proxy.
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Any byte stream a flow runs on (the accepted socket, an upgraded CONNECT tunnel).
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
type BoxStream = Box<dyn Stream>;

/// One app connection to the explicit proxy (or one CONNECT tunnel carrying plain HTTP).
struct Conn {
    local: SocketAddr,
    peer: SocketAddr,
    /// Re-read for each request: a kept-alive connection is routed by the snapshot in use.
    runtime: Latest,
    shared: Arc<Shared>,
    /// Inside a CONNECT tunnel: its host and port (every request goes to that virtual
    /// listener, and must name that host).
    tunnel: Option<(Host, u16)>,
    /// The CONNECT answered on this connection, run once hyper hands the socket over.
    pending: Mutex<Option<PendingTunnel>>,
    /// Which request heads had both `Content-Length` and `Transfer-Encoding`
    /// ([`crate::framing`]).
    framing: Arc<Framing>,
}

struct PendingTunnel {
    upgrade: OnUpgrade,
    host: Host,
    port: u16,
    /// The tunnel's upstream, connected before the `200` (`None`: decided inside the tunnel).
    dialed: Option<Dialed>,
}

/// A tunnel's stream, routed and connected before its CONNECT was answered, by the first
/// bytes the tunnel was expected to carry (`transport`, and `ctx.info.sni`: the CONNECT host
/// on a port that inspects TLS, as the fronting check allows no other). The tunnel uses it
/// only when its first bytes are what was expected.
struct Dialed {
    transport: Transport,
    ctx: ConnCtx,
    rec: Record,
    opened: tcp::Opened,
}

impl Dialed {
    /// Forwards the tunnel to the connection made for it.
    fn forward<S>(self, io: S) -> Tail
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Dialed {
            ctx, rec, opened, ..
        } = self;
        Box::pin(tcp::proxy_opened(io, ctx, rec, opened))
    }

    /// Closes the connection unused; its record says why.
    fn close(mut self, why: &'static str) {
        self.rec.termination = Some(why.into());
    }
}

/// Serves one connection accepted by the explicit proxy, each request with the runtime in use
/// when it starts (a tunnel with the one its CONNECT was decided by, re-checked after).
pub fn serve<S>(
    io: S,
    local: SocketAddr,
    peer: SocketAddr,
    runtime: Arc<Runtime>,
    shared: Arc<Shared>,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(Conn {
        local,
        peer,
        runtime: Latest::new(&shared, runtime),
        shared,
        tunnel: None,
        pending: Mutex::new(None),
        framing: Arc::default(),
    });
    // A CONNECT tunnel is the tail: the HTTP connection that asked for it is not kept.
    staged(serve_http(Box::new(io), conn))
}

/// What [`serve_http`] returns, boxed under a named type: a tunnel may carry HTTP, served by
/// `serve_http` again, and the recursion needs a type that is `Send` by declaration.
type HttpSetup = Pin<Box<dyn Future<Output = Option<Tail>> + Send>>;

/// HTTP/1.1 on `io`: each request routed on its own; a CONNECT turns the connection into a
/// tunnel once its `200` is written, and the tunnel is what is left ([`Tail`]).
fn serve_http(io: BoxStream, conn: Arc<Conn>) -> HttpSetup {
    Box::pin(serve_http_setup(io, conn))
}

async fn serve_http_setup(io: BoxStream, conn: Arc<Conn>) -> Option<Tail> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT.min(conn.shared.config.request_head_timeout))
        .max_buf_size(MAX_HEAD_BYTES);
    let svc_conn = conn.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let conn = svc_conn.clone();
        async move { Ok::<_, Infallible>(handle(req, conn).await) }
    });
    let io = HeadScan::new(io, conn.framing.clone(), true);
    let http = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(http);
    let mut drain = conn.shared.drain.clone();
    tokio::select! {
        r = http.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, peer = %conn.peer, "explicit proxy connection");
                if let Some(why) = crate::http::head_refused(&e) {
                    conn.shared.telemetry.metrics.refused("limit", why);
                }
            }
        }
        _ = wait_true(&mut drain) => {
            http.as_mut().graceful_shutdown();
            if let Err(e) = http.await {
                tracing::debug!(error = %e, "explicit proxy connection during drain");
            }
        }
    }
    let pending = conn
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let t = pending?;
    match t.upgrade.await {
        Ok(upgraded) => {
            let io = Box::new(TokioIo::new(upgraded));
            tunnel(io, t.host, t.port, t.dialed, &conn).await
        }
        Err(e) => {
            tracing::debug!(error = %e, host = %t.host, "CONNECT tunnel not established");
            if let Some(d) = t.dialed {
                d.close("downstream_remote_disconnect");
            }
            None
        }
    }
}

async fn handle(req: Request<Incoming>, conn: Arc<Conn>) -> Response<ProxyBody> {
    if conn.framing.take_request() {
        return refuse_framing(&conn);
    }
    if req.method() == Method::CONNECT {
        return connect(req, &conn).await;
    }
    let runtime = conn.runtime.get();
    let (mut parts, body) = req.into_parts();
    let target = match Target::of(&parts, conn.tunnel.as_ref().map(|t| t.1)) {
        Ok(t) => t,
        Err(why) => {
            tracing::debug!(peer = %conn.peer, why, "bad explicit-proxy request");
            conn.shared
                .telemetry
                .metrics
                .refused("authority", "malformed");
            return bad_request(&why);
        }
    };
    // Domain fronting: a tunnel opened to one host carries requests for that host only.
    if let Some((host, port)) = &conn.tunnel
        && *host != target.host
    {
        tracing::info!(
            target: "sluice::refused",
            peer = %conn.peer,
            tunnel = %host,
            port,
            host = %target.host,
            "request for another host inside a CONNECT tunnel (421)"
        );
        conn.shared
            .telemetry
            .metrics
            .refused("fronting", "host_differs_from_connect");
        let mut resp = text(
            421,
            format!("this tunnel was opened to {host}, not {}\n", target.host),
        );
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    if target.absolute {
        // Origin-form for routing and upstream, the URI's authority as Host (RFC 9112 §3.2.2).
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(pq);
        if let Ok(v) = HeaderValue::from_str(&target.authority) {
            parts.headers.insert(header::HOST, v);
        }
    } else if let Ok(v) = HeaderValue::from_str(&target.authority) {
        // The canonical spelling, so routes and upstream see the name that was decided on.
        parts.headers.insert(header::HOST, v);
    }
    // Under REGISTRY_ONLY the catch-all route refuses such a request as Istio does (502); under
    // ALLOW_ANY it would pass through to a port the registry leaves out.
    if let Host::Name(name) = &target.host
        && runtime.snapshot.outbound_policy == OutboundPolicy::AllowAny
        && !runtime.port_declared(name, target.port)
    {
        let e = Error::PortNotDeclared(format!("{name}:{}", target.port));
        tracing::info!(target: "sluice::refused", peer = %conn.peer, error = %e, "request refused");
        return text(403, format!("{e}\n"));
    }
    let req = Request::from_parts(parts, body);
    let snapshot = &runtime.snapshot;
    let chain = snapshot.listener(target.port).and_then(|l| {
        let chain = l.select(Transport::Plain, None)?;
        let index = l.chains.iter().position(|c| std::ptr::eq(c, chain))?;
        Some((index, chain))
    });
    let routes = match chain {
        Some((index, chain)) => match &chain.app {
            App::Http { .. } => Routes::Chain(index),
            App::Tcp { routes } => {
                if routes.iter().any(|r| r.matches(None, target.host.ip())) {
                    return bad_request(
                        "this port carries TCP for the sidecar: open a tunnel with CONNECT",
                    );
                }
                Routes::Fallback
            }
        },
        None => Routes::Fallback,
    };
    let mut info = ConnInfo::new(conn.local, conn.peer, target.port);
    info.original_dst = target.host.ip().map(|ip| SocketAddr::new(ip, target.port));
    info.requested = Some((target.host.to_string(), target.port));
    let log = runtime.sinks.clone();
    // An upgrade the request makes switches this connection (crate::framing).
    let ctx = ConnCtx::new(info, runtime, conn.shared.clone(), log, routes)
        .for_http(conn.framing.clone());
    let ctx = Arc::new(ctx);
    crate::http::handle(req, ctx)
        .await
        .map(|b| b.boxed_unsync())
}

impl Conn {
    /// The record of a flow of this connection, written to `runtime`'s sinks.
    fn record(&self, runtime: &Runtime, kind: Kind, sni: Option<String>) -> Record {
        Record::new(
            self.shared.telemetry.clone(),
            runtime.sinks.clone(),
            kind,
            self.local,
            self.peer,
            sni,
        )
    }

    /// The context of a flow of this connection under `runtime`, routed by `routes`.
    fn flow(&self, runtime: &Arc<Runtime>, info: ConnInfo, routes: Routes) -> ConnCtx {
        ConnCtx::new(
            info,
            runtime.clone(),
            self.shared.clone(),
            runtime.sinks.clone(),
            routes,
        )
    }
}

/// A request whose head had both `Content-Length` and `Transfer-Encoding`: `400` (`DPE`,
/// Envoy's details), logged, the connection closed — whatever its method or host, so no
/// routing decision reads a request whose body two servers could frame differently.
fn refuse_framing(conn: &Conn) -> Response<ProxyBody> {
    let e = Error::Http1Framing(crate::framing::CONTENT_LENGTH_AND_CHUNKED);
    tracing::info!(target: "sluice::refused", peer = %conn.peer, error = %e, "request refused");
    let mut rec = conn.record(&conn.runtime.get(), Kind::Http, None);
    conn.shared
        .telemetry
        .metrics
        .refused("framing", "content_length_and_chunked");
    rec.fail(&e);
    rec.response_code = 400;
    let mut resp = text(400, format!("{}\n", e.body()));
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Where a plain request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: Host,
    port: u16,
    /// `host[:port]` as the app wrote it (the Host header to send).
    authority: String,
    /// The request target was absolute-form.
    absolute: bool,
}

impl Target {
    fn of(parts: &http::request::Parts, tunnel_port: Option<u16>) -> Result<Target, String> {
        let (authority, absolute) = if let Some(a) = parts.uri.authority() {
            match parts.uri.scheme_str() {
                Some(s) if s.eq_ignore_ascii_case("http") => {}
                Some(_) => {
                    return Err("only http:// URIs can be proxied: use CONNECT for https".into());
                }
                None => return Err("a request target with an authority needs a scheme".into()),
            }
            (a.as_str(), true)
        } else {
            let host = crate::http::single_host(&parts.headers)?
                .ok_or("the request names no host (no absolute URI, no Host header)")?;
            (host, false)
        };
        let parsed = crate::authority::Authority::parse(authority)
            .map_err(|e| format!("bad authority {e}"))?;
        let port = match tunnel_port {
            Some(p) => p,
            None => parsed.port.unwrap_or(80),
        };
        Ok(Target {
            authority: parsed.to_string(),
            host: parsed.host,
            port,
            absolute,
        })
    }
}

/// `CONNECT host:port`: answered `200` once the destination is allowed and, when the tunnel
/// will be one stream to one upstream, that upstream is connected ([`plan`]); refused
/// otherwise ([`connect_status`]). The tunnel runs once hyper releases the socket.
async fn connect(mut req: Request<Incoming>, conn: &Conn) -> Response<ProxyBody> {
    if conn.tunnel.is_some() {
        return bad_request("CONNECT inside a CONNECT tunnel");
    }
    let Some(authority) = req.uri().authority() else {
        return bad_request("CONNECT needs host:port");
    };
    let (host, port) = match crate::authority::Authority::parse_with_port(authority.as_str()) {
        Ok(hp) => hp,
        Err(e) => {
            conn.shared
                .telemetry
                .metrics
                .refused("authority", "malformed");
            return bad_request(&format!("CONNECT needs host:port: {e}"));
        }
    };
    let runtime = conn.runtime.get();
    let dialed = match plan(conn, &runtime, &host, port).await {
        Ok(Plan::Inside) => None,
        Ok(Plan::Http { info, routes }) => match warm(conn, &runtime, *info, routes).await {
            Ok(()) => None,
            Err((rec, e)) => return refuse_connect(conn, &host, port, rec, &e),
        },
        Ok(Plan::Stream {
            info,
            routes,
            transport,
            passthrough,
        }) => match dial(conn, &runtime, *info, routes, transport, passthrough).await {
            Ok(dialed) => Some(dialed),
            Err((rec, e)) => return refuse_connect(conn, &host, port, rec, &e),
        },
        Err(e) => {
            let mut rec = conn.record(&runtime, Kind::Connection, None);
            if matches!(e, Error::BlackHole) {
                // As REGISTRY_ONLY's refusal names it wherever it happens.
                let black_hole: Arc<str> = Arc::from(sluice_snapshot::BLACK_HOLE_CLUSTER);
                rec.cluster = Some(black_hole.clone());
                rec.service = Some(black_hole);
            }
            return refuse_connect(conn, &host, port, rec, &e);
        }
    };
    let upgrade = hyper::upgrade::on(&mut req);
    *conn.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(PendingTunnel {
        upgrade,
        host,
        port,
        dialed,
    });
    // The tunnel's bytes are no requests to this connection (crate::framing).
    conn.framing.switch();
    let mut resp = Response::new(empty());
    resp.extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(
            b"Connection Established",
        ));
    resp
}

/// The status of a refused CONNECT, as Squid and Smokescreen answer: `403` for a destination
/// policy or the registry refuses, `503` when the cluster has no endpoint or no room, `504`
/// when the connect timed out, `502` for any other failure to connect (refused, unresolvable,
/// the upstream TLS or mesh mTLS handshake failed).
fn connect_status(e: &Error) -> u16 {
    match e {
        Error::BlackHole
        | Error::DestinationDenied(_)
        | Error::PortNotDeclared(_)
        | Error::Denied(_) => 403,
        Error::NoHealthyUpstream(_) | Error::Overflow(_) => 503,
        Error::Timeout => 504,
        e if e.is_connect_timeout() => 504,
        _ => 502,
    }
}

/// Answers a refused CONNECT and logs it as the tunnel would have been: the host asked for as
/// its server name, and whatever the refusal got to (cluster, upstream address).
fn refuse_connect(
    conn: &Conn,
    host: &Host,
    port: u16,
    mut rec: Record,
    e: &Error,
) -> Response<ProxyBody> {
    let status = connect_status(e);
    tracing::info!(
        target: "sluice::refused",
        peer = %conn.peer,
        host = %host,
        port,
        status,
        error = %e,
        "CONNECT refused"
    );
    if rec.sni.is_none() {
        rec.sni = Some(host.to_string());
    }
    rec.fail(e);
    drop(rec);
    let mut resp = text(status, format!("CONNECT {host}:{port} refused: {e}\n"));
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// How a tunnel to `host:port` will be served, as far as it is known before its first byte.
enum Plan {
    /// One stream to one upstream, by `routes`, when the tunnel starts with `transport`.
    Stream {
        /// Boxed: `Inside` carries nothing.
        info: Box<ConnInfo>,
        routes: Routes,
        transport: Transport,
        passthrough: bool,
    },
    /// Plain HTTP, each request routed on its own by `routes` ([`warm`] connects the
    /// destinations of the host's routes first).
    Http { info: Box<ConnInfo>, routes: Routes },
    /// A chain that terminates TLS: never compiled for a sidecar (its outbound chains pass
    /// TLS through or read plain bytes), served by what the tunnel carries if one appears.
    Inside,
}

/// What a tunnel to `host:port` will be, decided before the CONNECT is answered from the host
/// (the only server name the tunnel may carry, see the fronting check in [`tunnel`]) and the
/// port: the chain and TCP route it will take, or the snapshot's fallback (REGISTRY_ONLY's
/// `BlackHoleCluster` refuses it when dialed, ALLOW_ANY's `PassthroughCluster` resolves the
/// host and applies the IP guard). Refused here: a port the host's ServiceEntries do not
/// declare.
async fn plan(conn: &Conn, runtime: &Runtime, host: &Host, port: u16) -> Result<Plan, Error> {
    let snapshot = &runtime.snapshot;
    if let Host::Name(name) = host
        && !runtime.port_declared(name, port)
    {
        return Err(Error::PortNotDeclared(format!("{name}:{port}")));
    }
    let mut info = ConnInfo::new(conn.local, conn.peer, port);
    info.requested = Some((host.to_string(), port));
    info.original_dst = host.ip().map(|ip| SocketAddr::new(ip, port));
    let Some(listener) = snapshot.listener(port) else {
        return Ok(Plan::Stream {
            info: Box::new(info),
            routes: Routes::Fallback,
            transport: Transport::Plain,
            passthrough: false,
        });
    };
    let index = |transport, sni: Option<&str>| {
        let chain = listener.select(transport, sni)?;
        listener.chains.iter().position(|c| std::ptr::eq(c, chain))
    };
    let plain = index(Transport::Plain, None);
    // The transport the tunnel is expected to carry, and the chain it takes then. When the
    // bytes turn out otherwise (plain where TLS was expected, TLS naming another chain's
    // server), the connection made for the expectation is closed unused and the tunnel is
    // routed by what it carries ([`tunnel`]).
    let (transport, chain) = if listener.inspects_tls() {
        let tls = match host {
            Host::Name(name) => index(Transport::Tls, Some(name)),
            Host::Ip(_) => index(Transport::Tls, None),
        };
        match (host, tls, plain) {
            // TLS naming the host (the fronting check allows no other name), unless the
            // host's only chain on this port is a plain one.
            (Host::Name(name), tls @ Some(_), _) | (Host::Name(name), tls @ None, None) => {
                info.sni = Some(name.clone());
                (Transport::Tls, tls)
            }
            (Host::Name(_), None, plain @ Some(_)) => (Transport::Plain, plain),
            // By address: TLS without a server name (an address is no SNI) where a chain
            // takes that, else the plain chain, else the fallback's TLS.
            (Host::Ip(_), tls @ Some(_), _) => (Transport::Tls, tls),
            (Host::Ip(_), None, plain @ Some(_)) => (Transport::Plain, plain),
            (Host::Ip(_), None, None) => (Transport::Tls, None),
        }
    } else {
        (Transport::Plain, plain)
    };
    let passthrough = transport == Transport::Tls;
    let Some((index, chain)) = chain.and_then(|i| Some((i, listener.chains.get(i)?))) else {
        return Ok(Plan::Stream {
            info: Box::new(info),
            routes: Routes::Fallback,
            transport,
            passthrough,
        });
    };
    let routes = match (&chain.tls, &chain.app, transport) {
        (None, App::Tcp { routes }, _) => routes,
        (None, App::Http { .. }, Transport::Plain) => {
            if refuses_every_request(snapshot, &chain.app, host) {
                return Err(Error::BlackHole);
            }
            return Ok(Plan::Http {
                info: Box::new(info),
                routes: Routes::Chain(index),
            });
        }
        _ => return Ok(Plan::Inside),
    };
    if info.original_dst.is_none() && routes_need_destination(routes) {
        info.original_dst = destination(&conn.shared, &host.to_string(), port).await;
    }
    let dest = info.original_dst.map_or(conn.local.ip(), |a| a.ip());
    let routes = if routes
        .iter()
        .any(|r| r.matches(info.sni.as_deref(), Some(dest)))
    {
        Routes::Chain(index)
    } else {
        Routes::Fallback
    };
    Ok(Plan::Stream {
        info: Box::new(info),
        routes,
        transport,
        passthrough,
    })
}

/// Clusters connected at most before a plain-HTTP CONNECT is answered (the distinct
/// destinations of one virtual host's routes; more are rare, and are left to the requests).
const WARM_MAX: usize = 8;

/// Plain HTTP through a tunnel: each request is routed on its own, but the destinations the
/// host's virtual host forwards to are the host's alone, and they are connected before the
/// CONNECT is answered, as Squid and Smokescreen connect first: for each cluster, one endpoint
/// picked by its load balancer (the IP guard checks it), its connection made (TLS or the mesh
/// hop's mTLS included) and left in the cluster's pool, where the tunnel's requests find it.
/// Refused when no request inside could be served: every cluster failed and no route answers
/// locally (a redirect or direct response needs no upstream). On refusal, the record of the
/// first failure, to log it with.
async fn warm(
    conn: &Conn,
    runtime: &Arc<Runtime>,
    info: ConnInfo,
    routes: Routes,
) -> Result<(), (Record, Error)> {
    let ctx = conn.flow(runtime, info, routes);
    let Some((host, _)) = ctx.info.requested.as_ref() else {
        return Ok(());
    };
    let Some(vh) = ctx.virtual_host(host) else {
        return Ok(());
    };
    let (clusters, local) = destinations(&vh.routes);
    if clusters.is_empty() {
        return Ok(());
    }
    let made =
        futures_util::future::join_all(clusters.iter().map(|c| connect_cluster(conn, &ctx, c)))
            .await;
    let refusals: Vec<_> = made.into_iter().filter_map(Result::err).collect();
    let servable = local || refusals.len() < clusters.len();
    let mut refusals = refusals.into_iter();
    // Refused with the first failure; the others (or all, when some request could be
    // served) are not logged now: a request that meets them is refused, and logged, then.
    let first = if servable { None } else { refusals.next() };
    for (mut rec, _) in refusals {
        rec.disarm();
    }
    first.map_or(Ok(()), Err)
}

/// One connection to cluster `name` for the tunnel of `ctx`, left in the cluster's pool.
async fn connect_cluster(conn: &Conn, ctx: &ConnCtx, name: &str) -> Result<(), (Record, Error)> {
    let mut rec = conn.record(&ctx.runtime, Kind::Connection, None);
    let Some(c) = ctx.runtime.cluster(name) else {
        return Err((rec, Error::UnknownCluster(name.to_owned())));
    };
    rec.cluster = Some(c.name.clone());
    rec.service = Some(c.service_for(ctx.info.requested.as_ref()));
    let ups = &conn.shared.upstreams;
    let requested = ctx.info.requested.as_ref().map(|(h, p)| (h.as_str(), *p));
    let made = async {
        let candidates = ups
            .endpoints(c, requested.map(|r| r.0), ctx.info.original_dst, requested)
            .await?;
        let (candidate, _inflight) = c
            .state
            .pick(&c.cluster.lb, &candidates, None)
            .ok_or(Error::NoHealthyUpstream("no endpoint".into()))?;
        rec.upstream_host = Some(candidate.addr);
        let pooled = ups.http_connection(c, candidate).await?;
        pooled.release(&c.state.pool);
        Ok::<(), Error>(())
    }
    .await;
    match made {
        Ok(()) => {
            // Not a flow of its own: the tunnel's requests are logged as they are served.
            rec.disarm();
            Ok(())
        }
        Err(e) => Err((rec, e)),
    }
}

/// The distinct clusters `routes` forward to (at most [`WARM_MAX`]), and whether some route
/// answers locally (a redirect, a direct response).
fn destinations(routes: &[sluice_snapshot::route::Route]) -> (Vec<&str>, bool) {
    let mut clusters: Vec<&str> = Vec::new();
    let mut local = false;
    for route in routes {
        let sluice_snapshot::route::RouteAction::Forward(fwd) = &route.action else {
            local = true;
            continue;
        };
        for wc in &fwd.clusters {
            if clusters.len() < WARM_MAX && !clusters.contains(&wc.cluster.as_str()) {
                clusters.push(&wc.cluster);
            }
        }
    }
    (clusters, local)
}

/// True when plain HTTP through a tunnel to `host` could only meet REGISTRY_ONLY's catch-all
/// (`block_all`): every request inside must name the tunnel's host, so no request could be
/// served, and the CONNECT is refused now (`403`, as Squid and Smokescreen refuse a
/// destination they do not allow) rather than answered `200` and each request `502` inside.
fn refuses_every_request(snapshot: &sluice_snapshot::Snapshot, app: &App, host: &Host) -> bool {
    let (App::Http { .. }, Host::Name(name)) = (app, host) else {
        return false;
    };
    snapshot.outbound_policy == OutboundPolicy::RegistryOnly
        && app.virtual_host(name).is_none_or(|vh| {
            snapshot
                .fallback
                .as_ref()
                .is_some_and(|f| vh.name == f.http.name)
        })
}

/// Authorizes the planned stream as its TCP chain would, then connects its upstream (the mesh
/// hop's mTLS handshake included). On failure, the record to log the refusal with.
async fn dial(
    conn: &Conn,
    runtime: &Arc<Runtime>,
    info: ConnInfo,
    routes: Routes,
    transport: Transport,
    passthrough: bool,
) -> Result<Dialed, (Record, Error)> {
    let ctx = conn.flow(runtime, info, routes);
    let mut rec = conn.record(runtime, Kind::Tcp, ctx.info.sni.clone());
    let req = authz::connection_request(&ctx.info);
    match authz::authorize(
        &ctx.runtime.snapshot,
        &ctx.shared.telemetry,
        authz::Protocol::Tcp,
        &req,
    ) {
        Ok(by) => rec.allowed_by = by,
        Err(e) => return Err((rec, e)),
    }
    match tcp::open(&ctx, &mut rec, passthrough).await {
        Ok(opened) => Ok(Dialed {
            transport,
            ctx,
            rec,
            opened,
        }),
        Err(e) => Err((rec, e)),
    }
}

/// A CONNECT tunnel to `host:port`, on the virtual listener of `port`: forwarded to `dialed`
/// when its first bytes are what the connection was made for, else routed by them.
async fn tunnel(
    io: BoxStream,
    host: Host,
    port: u16,
    mut dialed: Option<Dialed>,
    conn: &Arc<Conn>,
) -> Option<Tail> {
    let runtime = &conn.runtime.get();
    let snapshot = &runtime.snapshot;
    let shared = &conn.shared;
    let mut info = ConnInfo::new(conn.local, conn.peer, port);
    info.requested = Some((host.to_string(), port));
    info.original_dst = host.ip().map(|ip| SocketAddr::new(ip, port));
    let listener = snapshot.listener(port);
    let (io, transport) = if listener.is_some_and(|l| l.inspects_tls()) {
        let (io, peek) = sni::inspect(io, shared.config.tls_inspect_timeout).await;
        let found = match peek {
            Ok(Peek::Found(hello)) => {
                // Domain fronting: a tunnel opened to one name may not carry a TLS session
                // for another (the SNI would pick the route and the upstream).
                if let (Host::Name(name), Some(sni)) = (&host, &hello.sni)
                    && name != sni
                {
                    shared
                        .telemetry
                        .metrics
                        .refused("fronting", "sni_differs_from_connect");
                    let why = format!("the ClientHello names {sni} inside a tunnel to {name}");
                    info.sni = hello.sni;
                    Err(Error::Fronting(why))
                } else {
                    info.sni = hello.sni;
                    info.alpn = hello.alpn;
                    Ok(Transport::Tls)
                }
            }
            Ok(Peek::NotTls) => Ok(Transport::Plain),
            Ok(Peek::NeedMore) => Err(Error::Inspect(sni::Error::Eof)),
            Ok(Peek::Malformed(why)) => Err(Error::Inspect(sni::Error::Malformed(why))),
            Err(e) => {
                if let Some(reason) = e.limit_reason() {
                    shared.telemetry.metrics.refused("limit", reason);
                }
                Err(Error::Inspect(e))
            }
        };
        let transport = match found {
            Ok(t) => t,
            Err(e) => {
                refuse_connection(&info, conn, dialed, &e);
                return None;
            }
        };
        (io, transport)
    } else {
        (
            crate::rewind::Rewind::new(Bytes::new(), io),
            Transport::Plain,
        )
    };
    if let Some(d) = dialed.take() {
        if d.transport == transport && d.ctx.info.sni == info.sni {
            return Some(d.forward(io));
        }
        // Not what the connection was made for: routed by what was sent, on a connection
        // of its own.
        d.close("connect_dial_unused");
    }
    let Some(listener) = listener else {
        return open_fallback_stream(io, info, runtime.clone(), shared.clone(), false).await;
    };
    let passthrough = transport == Transport::Tls;
    let Some(chain) = listener.select(transport, info.sni.as_deref()) else {
        return open_fallback_stream(io, info, runtime.clone(), shared.clone(), passthrough).await;
    };
    match (&chain.tls, &chain.app) {
        (None, App::Http { .. }) => {
            // Plain HTTP through the tunnel: routed per request, like the proxy's own requests.
            let inner = Arc::new(Conn {
                local: conn.local,
                peer: conn.peer,
                runtime: Latest::new(shared, runtime.clone()),
                shared: shared.clone(),
                tunnel: Some((host.clone(), port)),
                pending: Mutex::new(None),
                framing: Arc::default(),
            });
            Some(Box::pin(staged(serve_http(Box::new(io), inner))))
        }
        (_, App::Tcp { routes }) => {
            if info.original_dst.is_none() && routes_need_destination(routes) {
                info.original_dst = destination(shared, &host.to_string(), port).await;
            }
            let dest = info.original_dst.map_or(conn.local.ip(), |a| a.ip());
            if !routes
                .iter()
                .any(|r| r.matches(info.sni.as_deref(), Some(dest)))
            {
                return open_fallback_stream(
                    io,
                    info,
                    runtime.clone(),
                    shared.clone(),
                    passthrough,
                )
                .await;
            }
            open_connection(io, info, runtime.clone(), shared.clone()).await
        }
        (Some(_), App::Http { .. }) => {
            open_connection(io, info, runtime.clone(), shared.clone()).await
        }
    }
}

/// A tunnel whose ClientHello could not be read, or names another host: logged (on the
/// record of the connection made for it, if any, which is closed), closed.
fn refuse_connection(info: &ConnInfo, conn: &Conn, dialed: Option<Dialed>, e: &Error) {
    let mut rec = match dialed {
        Some(d) => d.rec,
        None => conn.record(&conn.runtime.get(), Kind::Connection, None),
    };
    rec.sni = info.sni.clone();
    rec.fail(e);
}

/// The destination address of a flow to `host:port`, for routes that select by it
/// (`destinationSubnets`): an IP literal as is, a name resolved. `None` when unknown.
async fn destination(shared: &Shared, host: &str, port: u16) -> Option<SocketAddr> {
    match shared.upstreams.resolver.resolve(host).await {
        Ok(ips) => ips.first().map(|ip| SocketAddr::new(*ip, port)),
        Err(e) => {
            tracing::debug!(error = %e, host, "resolving the destination");
            None
        }
    }
}

/// Some TCP route selects by destination subnet: the address must be known before routing.
/// (A cluster of resolution NONE resolves the requested host itself, when it dials.)
fn routes_need_destination(routes: &[TcpRoute]) -> bool {
    routes.iter().any(|r| !r.destination_subnets.is_empty())
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn text(status: u16, body: String) -> Response<ProxyBody> {
    crate::http::text_response(status, body).map(|b| b.boxed_unsync())
}

/// `400` with the reason, and the connection closed after it.
fn bad_request(why: &str) -> Response<ProxyBody> {
    let mut resp = text(400, format!("{why}\n"));
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(target: &str, host: Option<&str>) -> http::request::Parts {
        let mut b = Request::get(target);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn refused_connects_are_answered_as_squid_and_smokescreen_answer() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let connect = |reason: &str| Error::Connect {
            addr,
            reason: reason.into(),
        };
        let table = [
            (Error::BlackHole, 403),
            (Error::PortNotDeclared("a.example:1".into()), 403),
            (
                Error::Denied("rbac_access_denied_matched_policy[x]".into()),
                403,
            ),
            (Error::NoHealthyUpstream("no endpoint".into()), 503),
            (Error::Overflow("max_connections"), 503),
            (connect("delayed connect error: 111"), 502),
            (connect(crate::error::CONNECT_TIMEOUT), 504),
            (Error::UpstreamTls("handshake".into()), 502),
            (Error::NoRoute, 502),
        ];
        for (e, status) in table {
            assert_eq!(connect_status(&e), status, "{e}");
        }
    }

    #[test]
    fn targets_from_absolute_form_and_host() {
        let t = Target::of(&parts("http://API.github.com/x?y=1", Some("other")), None)
            .expect("absolute");
        assert_eq!(
            (
                t.host.to_string().as_str(),
                t.port,
                t.authority.as_str(),
                t.absolute
            ),
            ("api.github.com", 80, "api.github.com", true)
        );
        let t = Target::of(&parts("http://example.com:8080/", None), None).expect("port");
        assert_eq!((t.host.to_string().as_str(), t.port), ("example.com", 8080));
        let t = Target::of(&parts("/p", Some("example.com.:81")), None).expect("origin");
        assert_eq!(
            (t.host.to_string().as_str(), t.port, t.absolute),
            ("example.com", 81, false)
        );
        let t = Target::of(&parts("/p", Some("[::1]")), None).expect("v6");
        assert_eq!((t.host.to_string().as_str(), t.port), ("[::1]", 80));
        // Inside a tunnel the port is the tunnel's.
        let t = Target::of(&parts("/p", Some("example.com")), Some(8443)).expect("tunnel");
        assert_eq!(t.port, 8443);
        assert!(Target::of(&parts("/p", None), None).is_err());
        assert!(Target::of(&parts("https://example.com/", None), None).is_err());
        assert!(Target::of(&parts("/p", Some("a b")), None).is_err());
        assert!(Target::of(&parts("/p", Some("a..example.com")), None).is_err());
        assert!(Target::of(&parts("http://.example.com/", None), None).is_err());
        let mut two = parts("/p", Some("a.example.com"));
        two.headers
            .append(header::HOST, HeaderValue::from_static("b.example.com"));
        assert!(Target::of(&two, None).is_err());
    }
}
