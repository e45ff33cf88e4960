//! Upstream stand-ins: HTTPS and plain HTTP servers that describe each request back as JSON,
//! and a TCP server that sends a banner and echoes.
//!
//! Every request is answered `200` with `content-type: application/json` and a body like
//! ```json
//! {"upstream": "github", "method": "GET", "path": "/repos?x=1", "host": "api.github.com",
//!  "version": "HTTP/2.0", "headers": {"user-agent": "curl/8"}, "sni": "api.github.com",
//!  "client_cert_cn": "sleep", "alpn": "h2", "peer": "127.0.0.1:40000", "body": ""}
//! ```
//! (`sni`, `client_cert_cn`, `alpn` are `null` when absent; repeated headers are joined with
//! `", "`), except:
//! - `/status/N` answers status `N` (same JSON body);
//! - `/delay/N` waits `N` ms (at most 10000) then answers 200;
//! - paths given to [`UpstreamOptions::respond`] answer the status and body given there.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use sluice_test_support::{HttpsUpstream, HttpUpstream, TcpUpstream, TestCa, UpstreamOptions};
//!
//! let ca = TestCa::new("upstream-ca");
//! let cert = ca.server_cert(&["api.github.com"]);
//! // a real port on a distinct loopback address...
//! let github = HttpsUpstream::start("127.0.10.1:443".parse()?, &cert, "github",
//!     UpstreamOptions::default()).await?;
//! // ...or port 0
//! let mutual = HttpsUpstream::start("127.0.0.1:0".parse()?, &cert, "mutual",
//!     UpstreamOptions::default().require_client_cert(&ca)).await?;
//! let plain = HttpUpstream::start("127.0.0.1:0".parse()?, "plain").await?;
//! let tcp = TcpUpstream::start("127.0.0.1:0".parse()?, "db").await?; // sends "db\n", echoes
//! println!("{} {} {} {}", github.addr(), mutual.addr(), plain.addr(), tcp.addr());
//! assert_eq!(github.requests(), 0);
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::RootCertStore;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::ca::{CertKey, TestCa, common_name};
use crate::net::{Served, serve};

/// Longest `/delay/N` honoured, in ms.
pub const MAX_DELAY_MS: u64 = 10_000;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BODY: usize = 16 << 20;

/// Options for [`HttpsUpstream::start`] / [`HttpUpstream::start_with`]. Builder style:
/// `UpstreamOptions::default().require_client_cert(&ca).respond("/x", 404, "gone")`.
#[derive(Clone, Debug, Default)]
pub struct UpstreamOptions {
    client_roots: Option<RootCertStore>,
    alpn: Option<Vec<Vec<u8>>>,
    responses: HashMap<String, (u16, String)>,
}

impl UpstreamOptions {
    /// TLS only: require a client certificate signed by `ca` (handshakes without one fail).
    pub fn require_client_cert(mut self, ca: &TestCa) -> Self {
        self.client_roots = Some(ca.ca_root_store());
        self
    }

    /// TLS only: the ALPN protocols offered (default `["h2", "http/1.1"]`; `[]` for none).
    pub fn alpn(mut self, protocols: &[&str]) -> Self {
        self.alpn = Some(protocols.iter().map(|p| p.as_bytes().to_vec()).collect());
        self
    }

    /// Requests for exactly `path` (query string ignored) answer `status` with `body`
    /// (`content-type: text/plain`) instead of the JSON description.
    pub fn respond(mut self, path: &str, status: u16, body: &str) -> Self {
        self.responses
            .insert(path.to_string(), (status, body.to_string()));
        self
    }
}

struct State {
    name: String,
    requests: AtomicU64,
    connections: AtomicU64,
    responses: HashMap<String, (u16, String)>,
}

/// What one connection looked like from the server's side.
#[derive(Clone)]
struct ConnInfo {
    peer: SocketAddr,
    sni: Option<String>,
    client_cert_cn: Option<String>,
    alpn: Option<String>,
}

/// An HTTPS server (HTTP/1.1 and HTTP/2 by ALPN) that answers with a JSON description of each
/// request. Stops on drop.
pub struct HttpsUpstream {
    served: Served,
    state: Arc<State>,
}

/// A plain HTTP server (HTTP/1.1 and prior-knowledge h2c) that answers with a JSON description
/// of each request. Stops on drop.
pub struct HttpUpstream {
    served: Served,
    state: Arc<State>,
}

/// A TCP server that writes `"<name>\n"` on accept and then echoes what it reads. Stops on drop.
pub struct TcpUpstream {
    served: Served,
    connections: Arc<AtomicU64>,
}

macro_rules! counters {
    ($t:ty) => {
        impl $t {
            /// The bound address (the real port when started on port 0).
            pub fn addr(&self) -> SocketAddr {
                self.served.addr()
            }
            /// The name reported as `"upstream"` in every response.
            pub fn name(&self) -> &str {
                &self.state.name
            }
            /// Requests received so far.
            pub fn requests(&self) -> u64 {
                self.state.requests.load(Ordering::SeqCst)
            }
            /// Connections accepted so far (TLS: including failed handshakes).
            pub fn connections(&self) -> u64 {
                self.state.connections.load(Ordering::SeqCst)
            }
        }
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("name", &self.state.name)
                    .field("addr", &self.served.addr())
                    .finish()
            }
        }
    };
}
counters!(HttpsUpstream);
counters!(HttpUpstream);

fn new_state(name: &str, opts: &UpstreamOptions) -> Arc<State> {
    Arc::new(State {
        name: name.to_string(),
        requests: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        responses: opts.responses.clone(),
    })
}

impl HttpsUpstream {
    /// Binds `addr` (loopback; port 0 picks one) before returning, then serves TLS with `cert`.
    /// Must be called inside a tokio runtime.
    pub async fn start(
        addr: SocketAddr,
        cert: &CertKey,
        name: &str,
        opts: UpstreamOptions,
    ) -> anyhow::Result<Self> {
        let mut cfg = cert.server_config_with(opts.client_roots.clone());
        if let Some(alpn) = &opts.alpn {
            cfg.alpn_protocols = alpn.clone();
        }
        let acceptor = TlsAcceptor::from(Arc::new(cfg));
        let state = new_state(name, &opts);
        let st = state.clone();
        let served = serve(addr, "HttpsUpstream", move |stream, peer| {
            let acceptor = acceptor.clone();
            let st = st.clone();
            async move {
                st.connections.fetch_add(1, Ordering::SeqCst);
                let Ok(Ok(tls)) =
                    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                else {
                    return;
                };
                let (_, conn) = tls.get_ref();
                let info = ConnInfo {
                    peer,
                    sni: conn.server_name().map(str::to_string),
                    client_cert_cn: conn
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| common_name(c.as_ref())),
                    alpn: conn
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned()),
                };
                serve_http(tls, info, st).await;
            }
        })?;
        Ok(Self { served, state })
    }
}

impl HttpUpstream {
    /// Binds `addr` (loopback; port 0 picks one) before returning, then serves plain HTTP.
    /// Must be called inside a tokio runtime.
    pub async fn start(addr: SocketAddr, name: &str) -> anyhow::Result<Self> {
        Self::start_with(addr, name, UpstreamOptions::default()).await
    }

    /// [`HttpUpstream::start`] with options (only [`UpstreamOptions::respond`] applies).
    pub async fn start_with(
        addr: SocketAddr,
        name: &str,
        opts: UpstreamOptions,
    ) -> anyhow::Result<Self> {
        let state = new_state(name, &opts);
        let st = state.clone();
        let served = serve(addr, "HttpUpstream", move |stream, peer| {
            let st = st.clone();
            async move {
                st.connections.fetch_add(1, Ordering::SeqCst);
                let info = ConnInfo {
                    peer,
                    sni: None,
                    client_cert_cn: None,
                    alpn: None,
                };
                serve_http(stream, info, st).await;
            }
        })?;
        Ok(Self { served, state })
    }
}

async fn serve_http<I>(io: I, info: ConnInfo, state: Arc<State>)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = service_fn(move |req| {
        let info = info.clone();
        let state = state.clone();
        async move { Ok::<_, Infallible>(respond(req, &info, &state).await) }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

async fn respond(req: Request<Incoming>, info: &ConnInfo, state: &State) -> Response<Full<Bytes>> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let path = parts.uri.path();

    if let Some((status, text)) = state.responses.get(path) {
        return Response::builder()
            .status(*status)
            .header("content-type", "text/plain")
            .header("x-upstream", &state.name)
            .body(Full::new(Bytes::from(text.clone())))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    }

    let status = path
        .strip_prefix("/status/")
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    if let Some(ms) = path
        .strip_prefix("/delay/")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms.min(MAX_DELAY_MS))).await;
    }

    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let authority = parts.uri.authority().map(|a| a.to_string());
    let host_header = headers.get("host").cloned();
    let host = if parts.version == Version::HTTP_2 {
        authority.or(host_header)
    } else {
        host_header.or(authority)
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| path.to_string());
    let doc = json!({
        "upstream": state.name,
        "method": parts.method.as_str(),
        "path": path_and_query,
        "host": host,
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "sni": info.sni,
        "client_cert_cn": info.client_cert_cn,
        "alpn": info.alpn,
        "peer": info.peer.to_string(),
        "body": String::from_utf8_lossy(&body),
    });
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-upstream", &state.name)
        .body(Full::new(Bytes::from(doc.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

impl TcpUpstream {
    /// Binds `addr` (loopback; port 0 picks one) before returning. Each connection gets
    /// `"<name>\n"` at once, then everything it sends echoed back until it closes.
    pub async fn start(addr: SocketAddr, name: &str) -> anyhow::Result<Self> {
        let connections = Arc::new(AtomicU64::new(0));
        let count = connections.clone();
        let banner = Bytes::from(format!("{name}\n"));
        let served = serve(addr, "TcpUpstream", move |stream, _peer| {
            count.fetch_add(1, Ordering::SeqCst);
            echo(stream, banner.clone())
        })?;
        Ok(Self {
            served,
            connections,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl std::fmt::Debug for TcpUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpUpstream")
            .field("addr", &self.served.addr())
            .finish()
    }
}

async fn echo(mut stream: TcpStream, banner: Bytes) {
    if stream.write_all(&banner).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}
