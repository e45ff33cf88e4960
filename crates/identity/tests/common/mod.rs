//! Shared pieces of the integration tests: scratch dirs, a mesh (CA + gateway + sidecar SVID
//! dirs), a real TLS echo server on loopback that reports what each handshake learned, and a
//! client.

#![allow(dead_code)] // each test binary uses a different subset

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sluice_identity::ca::{Ca, DEFAULT_SVID_TTL, Svid, Validity};
use sluice_identity::{Identity, IdentityFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub const GATEWAY_NS: &str = "istio-system";
pub const GATEWAY_SA: &str = "istio-egressgateway-service-account";
pub const GATEWAY_SNI: &str = "istio-egressgateway.istio-system.svc.cluster.local";

/// Bound on anything that should happen "soon" (a poll, a handshake).
pub const SOON: Duration = Duration::from_secs(5);

static NEXT: AtomicU64 = AtomicU64::new(0);

pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "sluice-identity-it-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `sluice ca init` + `sluice ca issue` for the gateway and for `default/sleep`, on disk.
pub struct Mesh {
    pub tmp: TempDir,
    pub ca: Ca,
    pub gateway_dir: PathBuf,
    pub sidecar_dir: PathBuf,
}

impl Mesh {
    pub fn new(tag: &str) -> Self {
        let tmp = TempDir::new(tag);
        let ca = Ca::init(&tmp.join("ca"), "cluster.local", false).expect("ca init");
        let gateway_dir = tmp.join("gateway");
        let sidecar_dir = tmp.join("sleep");
        ca.issue(GATEWAY_NS, GATEWAY_SA, day())
            .expect("issue gateway")
            .write(&gateway_dir)
            .expect("write gateway");
        ca.issue("default", "sleep", day())
            .expect("issue sleep")
            .write(&sidecar_dir)
            .expect("write sleep");
        Mesh {
            tmp,
            ca,
            gateway_dir,
            sidecar_dir,
        }
    }

    pub fn gateway_identity(&self) -> Identity {
        Identity::spiffe("cluster.local", GATEWAY_NS, GATEWAY_SA).expect("identity")
    }
}

pub fn day() -> Validity {
    Validity::from_now(DEFAULT_SVID_TTL)
}

/// A fixed identity source, for tests that do not rotate.
pub fn fixed(dir: &Path) -> sluice_identity::IdentitySource {
    let files = IdentityFiles::load(dir).expect("load identity dir");
    tokio::sync::watch::channel(Arc::new(files)).1
}

pub fn chain(svid: &Svid) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(svid.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("cert pem")
}

pub fn key(svid: &Svid) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(svid.key_pem.as_bytes()).expect("key pem")
}

pub fn serial_of(der: &CertificateDer<'_>) -> String {
    sluice_identity::svid::svid_info(der).expect("svid").serial
}

/// What the server learned from one handshake.
#[derive(Debug)]
pub enum Accepted {
    Ok {
        identity: Option<Identity>,
        peer_serial: Option<String>,
        alpn: Option<Vec<u8>>,
    },
    Refused(String),
}

/// A TLS echo server on 127.0.0.1:0 that reports each handshake's outcome.
pub struct EchoServer {
    pub addr: SocketAddr,
    results: mpsc::UnboundedReceiver<Accepted>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoServer {
    pub async fn start(config: rustls::ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, results) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(mut tls) => {
                            let conn = tls.get_ref().1;
                            let _ = tx.send(Accepted::Ok {
                                identity: sluice_identity::peer_identity(conn),
                                peer_serial: conn
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .map(serial_of),
                                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                            });
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = tls.read(&mut buf).await {
                                if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Accepted::Refused(format!("{e}")));
                        }
                    }
                });
            }
        });
        EchoServer {
            addr,
            results,
            task,
        }
    }

    /// The outcome of the next handshake.
    pub async fn next(&mut self) -> Accepted {
        tokio::time::timeout(SOON, self.results.recv())
            .await
            .expect("a handshake outcome in time")
            .expect("server running")
    }
}

pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects to `addr` with `config`, sending the gateway's service name as SNI.
pub async fn connect(config: rustls::ClientConfig, addr: SocketAddr) -> io::Result<ClientStream> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(GATEWAY_SNI).map_err(io::Error::other)?;
    tokio::time::timeout(
        SOON,
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(io::Error::other)?
}

/// Writes `msg` and reads the echo.
pub async fn round_trip(stream: &mut ClientStream, msg: &[u8]) -> io::Result<Vec<u8>> {
    stream.write_all(msg).await?;
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(SOON, stream.read_exact(&mut buf))
        .await
        .map_err(io::Error::other)??;
    Ok(buf)
}

/// A client that verifies the gateway like the sidecar does but presents `client_cert`
/// (or nothing), for certificates the identity files would never accept.
pub fn raw_client(
    mesh_source: sluice_identity::IdentitySource,
    expected: sluice_identity::ExpectedPeer,
    client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(
            sluice_identity::mtls::MeshServerVerifier::new(mesh_source, expected, provider),
        ));
    let mut config = match client_cert {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"istio".to_vec()];
    config
}
