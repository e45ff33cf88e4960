//! Small real clients for tests: HTTPS and HTTP/1.1 over hyper's client connection, raw TCP for
//! malformed input, and the real `curl` binary. Every call is bounded by a timeout.
//!
//! ```no_run
//! # async fn demo(ca: sluice_test_support::TestCa, addr: std::net::SocketAddr) -> anyhow::Result<()> {
//! use sluice_test_support::client;
//! let (status, headers, body) =
//!     client::https_get(addr, "api.github.com", "api.github.com", "/", &ca.ca_root_store(), None)
//!         .await?;
//! let (status, _, body) = client::http_get(addr, "example.com", "/status/503").await?;
//! let reply = client::raw_tcp(addr, b"GET / HTTP/1.1\r\n\r\n", std::time::Duration::from_secs(2)).await?;
//! let out = client::curl(&["-sS", "http://127.0.0.1:15000/ready"]).await?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;

use crate::ca::{CertKey, client_config};

/// Bound on a whole request (connect, handshake, response).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on a `curl` run.
pub const CURL_TIMEOUT: Duration = Duration::from_secs(20);

/// A response: status, headers, body (lossy UTF-8).
pub type Reply = (u16, HeaderMap, String);

/// A root store from PEM text holding one or more certificates (e.g. a `ca.crt` written by
/// `sluice ca init`).
pub fn roots_from_pem(pem: &str) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(cert?)?;
    }
    if roots.is_empty() {
        bail!("no certificate in PEM");
    }
    Ok(roots)
}

async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    crate::assert_loopback(addr, "test client");
    timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .with_context(|| format!("connecting to {addr}: timed out"))?
        .with_context(|| format!("connecting to {addr}"))
}

/// `GET https://<host_header><path>` sent to `addr` with TLS SNI `sni` (a DNS name or an IP
/// literal), verifying the server against `roots`, presenting `client_cert` if given;
/// HTTP/1.1 (ALPN `http/1.1`).
pub async fn https_get(
    addr: SocketAddr,
    sni: &str,
    host_header: &str,
    path: &str,
    roots: &RootCertStore,
    client_cert: Option<&CertKey>,
) -> anyhow::Result<Reply> {
    let req = Request::get(path)
        .header("host", host_header)
        .body(String::new())?;
    https_request(addr, sni, req, roots, client_cert).await
}

/// Sends `req` over HTTPS/1.1 (see [`https_get`]); the caller sets the `host` header.
pub async fn https_request(
    addr: SocketAddr,
    sni: &str,
    req: Request<String>,
    roots: &RootCertStore,
    client_cert: Option<&CertKey>,
) -> anyhow::Result<Reply> {
    let mut cfg = client_config(roots.clone(), client_cert);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(sni.to_string()).context("invalid SNI")?;
    let fut = async {
        let tcp = connect(addr).await?;
        let tls = TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        send_http1(tls, req).await
    };
    timeout(REQUEST_TIMEOUT, fut)
        .await
        .context("HTTPS request timed out")?
}

/// `GET https://<authority><path>` through the explicit proxy at `proxy`: `CONNECT
/// <authority>` (`host:port`), then TLS with SNI `host` verified against `roots`, HTTP/1.1
/// inside. A refused CONNECT is an error naming the proxy's status line.
pub async fn https_get_via_proxy(
    proxy: SocketAddr,
    authority: &str,
    path: &str,
    roots: &RootCertStore,
) -> anyhow::Result<Reply> {
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .to_string();
    let mut cfg = client_config(roots.clone(), None);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(host).context("invalid SNI")?;
    let req = Request::get(path)
        .header("host", authority)
        .body(String::new())?;
    let fut = async {
        let mut tcp = connect(proxy).await?;
        tcp.write_all(
            format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut byte).await? == 0 || head.len() > 8192 {
                bail!("the proxy closed the connection during CONNECT");
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        let status = head.lines().next().unwrap_or_default().to_string();
        if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
            bail!("CONNECT refused: {status}");
        }
        let tls = TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        send_http1(tls, req).await
    };
    timeout(REQUEST_TIMEOUT, fut)
        .await
        .context("HTTPS request timed out")?
}

/// `GET http://<host><path>` sent to `addr` over HTTP/1.1.
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<Reply> {
    let req = Request::get(path)
        .header("host", host)
        .body(String::new())?;
    http_request(addr, req).await
}

/// Sends `req` over plain HTTP/1.1 to `addr`. The request target is sent as given, so an
/// absolute URI (`http://example.com/x`) makes a forward-proxy request; set `host` yourself.
pub async fn http_request(addr: SocketAddr, req: Request<String>) -> anyhow::Result<Reply> {
    let fut = async {
        let tcp = connect(addr).await?;
        send_http1(tcp, req).await
    };
    timeout(REQUEST_TIMEOUT, fut)
        .await
        .context("HTTP request timed out")?
}

async fn send_http1<I>(io: I, req: Request<String>) -> anyhow::Result<Reply>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let conn = tokio::spawn(conn);
    let req = req.map(|b| Full::new(Bytes::from(b)));
    let result = async {
        let resp = sender.send_request(req).await.context("sending request")?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.context("reading body")?.to_bytes();
        Ok((
            parts.status.as_u16(),
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        ))
    }
    .await;
    conn.abort();
    result
}

/// The status codes of the HTTP/1.1 responses in `reply` (bytes read from a connection), in
/// order: `["200", "400"]`.
pub fn statuses(reply: &str) -> Vec<&str> {
    reply
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| reply.get(i + 9..i + 12))
        .collect()
}

/// Connects to `addr`, writes `bytes`, then reads until the peer closes or `read_timeout`
/// has passed (since the write), returning what was read. For malformed inputs.
pub async fn raw_tcp(
    addr: SocketAddr,
    bytes: &[u8],
    read_timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    let mut tcp = connect(addr).await?;
    tcp.write_all(bytes).await?;
    let deadline = Instant::now() + read_timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) | Ok(Ok(0)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            // a reset after some bytes is an answer too
            Ok(Err(e)) if !out.is_empty() || e.kind() == std::io::ErrorKind::ConnectionReset => {
                break;
            }
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Runs the real `curl` with `args`, killing it after [`CURL_TIMEOUT`]. Only loopback URLs
/// belong in `args` (use `--resolve`/`--connect-to`/`-x` to reach sluice).
pub async fn curl(args: &[&str]) -> anyhow::Result<Output> {
    let child = tokio::process::Command::new("curl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    timeout(CURL_TIMEOUT, child)
        .await
        .with_context(|| format!("curl {args:?} timed out"))?
        .context("running curl")
}
