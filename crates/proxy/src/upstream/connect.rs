//! Dialing an endpoint: TCP within the cluster's connect timeout, then a `CONNECT` tunnel when
//! the endpoint is an HTTP proxy (DestinationRule `tunnel`), then TLS when the cluster
//! originates it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use sluice_snapshot::cluster::Tunnel;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::Error;

/// A connection to an upstream, plain or TLS.
#[derive(Debug)]
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Io {
    /// The connection's local address (a `getsockname`: asked only where it is recorded).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Io::Plain(tcp) => tcp.local_addr(),
            Io::Tls(tls) => tls.get_ref().0.local_addr(),
        }
        .ok()
    }
}

pub struct Dialed {
    pub io: Io,
    /// ALPN chose h2.
    pub h2: bool,
}

/// The TLS to originate on a dialed connection.
pub struct Origination {
    pub config: Arc<ClientConfig>,
    /// SNI and the name verified (unless subject alt names or skip-verify say otherwise).
    pub server_name: String,
}

/// Dials `addr` within `timeout` (the tunnel's handshake and TLS's included).
pub async fn dial(
    addr: SocketAddr,
    timeout: Duration,
    keepalive: Option<&sluice_snapshot::cluster::TcpKeepalive>,
    tunnel: Option<&Tunnel>,
    tls: Option<Origination>,
) -> Result<Dialed, Error> {
    let attempt = async {
        let mut tcp = TcpStream::connect(addr).await.map_err(|e| Error::Connect {
            addr,
            reason: connect_reason(&e),
        })?;
        let _ = tcp.set_nodelay(true);
        if let Some(k) = keepalive {
            set_keepalive(&tcp, k);
        }
        if let Some(t) = tunnel {
            open_tunnel(&mut tcp, t)
                .await
                .map_err(|reason| Error::Connect { addr, reason })?;
        }
        let Some(tls) = tls else {
            return Ok(Dialed {
                io: Io::Plain(tcp),
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

/// Largest head a proxy may answer a `CONNECT` with.
const MAX_TUNNEL_HEAD: usize = 8 * 1024;

/// Asks the HTTP proxy on `tcp` to `CONNECT` to the tunnel's target; `Ok` once it answers
/// 2xx. The reason otherwise, for the access log (`UF`, `upstream_reset_before_response_started`).
async fn open_tunnel(tcp: &mut TcpStream, t: &Tunnel) -> Result<(), String> {
    let authority = if t.target_host.contains(':') {
        format!("[{}]:{}", t.target_host, t.target_port)
    } else {
        format!("{}:{}", t.target_host, t.target_port)
    };
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("tunnel to {authority}: {e}"))?;
    // Byte by byte: what follows the head is the target's (a server-first protocol's banner
    // may arrive with it) and must not be consumed here. A head is a few dozen bytes.
    let mut head = Vec::with_capacity(128);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_TUNNEL_HEAD {
            return Err(format!(
                "tunnel to {authority}: the proxy's answer is longer than {MAX_TUNNEL_HEAD} bytes"
            ));
        }
        match tcp.read(&mut byte).await {
            Ok(0) => {
                return Err(format!(
                    "tunnel to {authority}: the proxy closed the connection before answering"
                ));
            }
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(format!("tunnel to {authority}: {e}")),
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&head) {
        Ok(httparse::Status::Complete(_)) => match response.code {
            Some(code) if (200..300).contains(&code) => Ok(()),
            Some(code) => Err(format!(
                "tunnel to {authority}: the proxy answered CONNECT with {code}"
            )),
            None => Err(format!("tunnel to {authority}: no status from the proxy")),
        },
        _ => Err(format!(
            "tunnel to {authority}: the proxy's answer is not HTTP"
        )),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A one-shot "proxy" on loopback that reads the CONNECT head and writes `answer`.
    async fn proxy(answer: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).await.unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            let _ = s.write_all(answer).await;
            String::from_utf8_lossy(&head).into_owned()
        });
        (addr, task)
    }

    async fn through(answer: &'static [u8]) -> (Result<TcpStream, String>, String) {
        let (addr, task) = proxy(answer).await;
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let t = Tunnel {
            target_host: "api.partner.test".into(),
            target_port: 443,
        };
        let r = open_tunnel(&mut tcp, &t).await.map(|()| tcp);
        (r, task.await.expect("proxy"))
    }

    #[tokio::test]
    async fn a_2xx_opens_the_tunnel_and_bytes_after_the_head_stay_unread() {
        let (r, asked) =
            through(b"HTTP/1.1 200 Connection established\r\n\r\n220 smtp ready\r\n").await;
        assert_eq!(
            asked,
            "CONNECT api.partner.test:443 HTTP/1.1\r\nHost: api.partner.test:443\r\n\r\n"
        );
        let mut tcp = r.expect("open");
        let mut banner = String::new();
        tcp.read_to_string(&mut banner).await.expect("read");
        assert_eq!(
            banner, "220 smtp ready\r\n",
            "the target's first bytes are the caller's"
        );
    }

    #[tokio::test]
    async fn refusals_and_garbage_fail_with_the_reason() {
        let (r, _) = through(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").await;
        assert_eq!(
            r.err().as_deref(),
            Some("tunnel to api.partner.test:443: the proxy answered CONNECT with 407")
        );
        let (r, _) = through(b"").await;
        assert!(
            r.err()
                .is_some_and(|e| e.contains("closed the connection before answering"))
        );
        let (r, _) = through(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        assert!(r.err().is_some_and(|e| e.ends_with("is not HTTP")));
        let long: &'static [u8] = Box::leak(
            [
                b"HTTP/1.1 200 OK\r\nx: ".as_slice(),
                &[b'a'; MAX_TUNNEL_HEAD],
            ]
            .concat()
            .into_boxed_slice(),
        );
        let (r, _) = through(long).await;
        assert!(r.err().is_some_and(|e| e.contains("longer than")));
    }
}
