//! One downstream connection, start to end: inspect the ClientHello, choose the filter chain,
//! terminate TLS when the chain says so, then run its application (HTTP or TCP). Works on any
//! byte stream, so a mesh mTLS layer can wrap the socket before it gets here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sluice_snapshot::Snapshot;
use sluice_snapshot::listener::{App, FilterChain, ServerTlsMode, Transport};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::rewind::Rewind;
use crate::sni::{self, Peek};
use crate::telemetry::{Kind, LogTarget, Record};
use crate::{Error, Shared, http, tcp, tls};

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

/// A connection's context once its chain is chosen: shared by its requests.
pub struct ConnCtx {
    pub info: ConnInfo,
    pub snapshot: Arc<Snapshot>,
    pub shared: Arc<Shared>,
    pub log: Option<Arc<LogTarget>>,
    chain: usize,
}

impl ConnCtx {
    pub fn chain(&self) -> Option<&FilterChain> {
        self.snapshot
            .listener(self.info.listener_port)?
            .chains
            .get(self.chain)
    }

    pub fn scheme(&self) -> &'static str {
        if self.info.tls { "https" } else { "http" }
    }
}

/// Serves one connection with the listener of `snapshot` at `info.listener_port`. The
/// connection keeps this snapshot to its end.
pub async fn serve_connection<S>(
    io: S,
    mut info: ConnInfo,
    snapshot: Arc<Snapshot>,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let log = shared.telemetry.log_target(&snapshot.access_log);
    let mut rec = Record::new(
        shared.telemetry.clone(),
        log.clone(),
        Kind::Connection,
        info.local,
        info.peer,
        None,
    );
    let Some(listener) = snapshot.listener(info.listener_port) else {
        rec.fail(&Error::NoFilterChain);
        return;
    };

    // Phase 1: what the connection is (bounded in bytes and time).
    let (io, transport) = if listener.inspects_tls() {
        let (io, peek) = sni::inspect(io, shared.config.tls_inspect_timeout).await;
        match peek {
            Ok(Peek::Found(hello)) => {
                info.sni = hello.sni;
                info.alpn = hello.alpn;
                (io, Transport::Tls)
            }
            Ok(Peek::NotTls) => (io, Transport::Plain),
            Ok(Peek::NeedMore) => {
                rec.fail(&Error::Inspect(sni::Error::Eof));
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, peer = %info.peer, "tls inspection");
                rec.fail(&Error::Inspect(e));
                return;
            }
        }
    } else {
        (Rewind::new(Bytes::new(), io), Transport::Plain)
    };
    rec.sni = info.sni.clone();

    // Phase 2: the filter chain.
    let Some(chain) = listener.select(transport, info.sni.as_deref()) else {
        rec.fail(&Error::NoFilterChain);
        return;
    };
    let Some(chain_index) = listener.chains.iter().position(|c| std::ptr::eq(c, chain)) else {
        rec.fail(&Error::NoFilterChain);
        return;
    };
    rec.route_name = Some(chain.name.clone());

    // Phase 3: TLS termination, then the application.
    match &chain.tls {
        Some(server_tls) => {
            let default_alpn: &[&str] = match chain.app {
                App::Http { .. } => &["h2", "http/1.1"],
                App::Tcp { .. } => &[],
            };
            let config = match shared.server_tls.get(server_tls, default_alpn) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, chain = chain.name, "tls termination");
                    rec.fail(&e);
                    return;
                }
            };
            let accept = tokio_rustls::TlsAcceptor::from(config).accept(io);
            let stream = match tokio::time::timeout(shared.config.tls_inspect_timeout, accept).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    rec.fail(&Error::DownstreamTls(e.to_string()));
                    return;
                }
                Err(_) => {
                    rec.fail(&Error::DownstreamTls("handshake timeout".into()));
                    return;
                }
            };
            let conn = stream.get_ref().1;
            if server_tls.mode == ServerTlsMode::Mutual && !server_tls.subject_alt_names.is_empty()
            {
                let ok = conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .is_some_and(|c| tls::cert_has_san(c, &server_tls.subject_alt_names));
                if !ok {
                    rec.fail(&Error::DownstreamTls(
                        "client certificate carries none of the subject alt names".into(),
                    ));
                    return;
                }
            }
            let h2 = conn.alpn_protocol() == Some(b"h2");
            info.tls = true;
            let ctx = Arc::new(ConnCtx {
                info,
                snapshot: snapshot.clone(),
                shared,
                log,
                chain: chain_index,
            });
            match &chain.app {
                App::Http { .. } => {
                    rec.disarm();
                    http::serve(stream, ctx, Some(h2)).await;
                }
                App::Tcp { routes } => {
                    rec.kind = Kind::Tcp;
                    tcp::proxy(stream, routes, &ctx, &mut rec, false).await;
                }
            }
        }
        None => {
            let ctx = Arc::new(ConnCtx {
                info,
                snapshot: snapshot.clone(),
                shared,
                log,
                chain: chain_index,
            });
            match &chain.app {
                App::Http { .. } => {
                    rec.disarm();
                    http::serve(io, ctx, None).await;
                }
                App::Tcp { routes } => {
                    rec.kind = Kind::Tcp;
                    let passthrough = transport == Transport::Tls;
                    tcp::proxy(io, routes, &ctx, &mut rec, passthrough).await;
                }
            }
        }
    }
}
