//! Dialing an endpoint: TCP within the cluster's connect timeout, then TLS when the cluster
//! originates it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::Error;

/// A connection to an upstream, plain or TLS.
#[derive(Debug)]
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

pub struct Dialed {
    pub io: Io,
    pub local: Option<SocketAddr>,
    /// ALPN chose h2.
    pub h2: bool,
}

/// The TLS to originate on a dialed connection.
pub struct Origination {
    pub config: Arc<ClientConfig>,
    /// SNI and the name verified (unless subject alt names or skip-verify say otherwise).
    pub server_name: String,
}

pub async fn dial(
    addr: SocketAddr,
    timeout: Duration,
    keepalive: Option<&sluice_snapshot::cluster::TcpKeepalive>,
    tls: Option<Origination>,
) -> Result<Dialed, Error> {
    let attempt = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| Error::Connect {
            addr,
            reason: connect_reason(&e),
        })?;
        let _ = tcp.set_nodelay(true);
        if let Some(k) = keepalive {
            set_keepalive(&tcp, k);
        }
        let local = tcp.local_addr().ok();
        let Some(tls) = tls else {
            return Ok(Dialed {
                io: Io::Plain(tcp),
                local,
                h2: false,
            });
        };
        let name = ServerName::try_from(tls.server_name.clone()).map_err(|_| {
            Error::UpstreamTls(format!("{:?} is not a valid server name", tls.server_name))
        })?;
        let stream = tokio_rustls::TlsConnector::from(tls.config)
            .connect(name, tcp)
            .await
            .map_err(|e| Error::UpstreamTls(e.to_string()))?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(Dialed {
            io: Io::Tls(Box::new(stream)),
            local,
            h2,
        })
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(Error::Connect {
            addr,
            reason: crate::error::CONNECT_TIMEOUT.into(),
        }),
    }
}

fn connect_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "delayed connect error: 111".into(),
        _ => format!("delayed connect error: {e}"),
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// `connectionPool.tcp.tcpKeepalive`: SO_KEEPALIVE with the given time, interval and probe
/// count (each unset one stays the system's default, as in Istio).
fn set_keepalive(tcp: &TcpStream, k: &sluice_snapshot::cluster::TcpKeepalive) {
    let mut ka = socket2::TcpKeepalive::new();
    if let Some(t) = k.time {
        ka = ka.with_time(t);
    }
    if let Some(i) = k.interval {
        ka = ka.with_interval(i);
    }
    if let Some(n) = k.probes {
        ka = ka.with_retries(n);
    }
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "setting TCP keepalive");
    }
}
