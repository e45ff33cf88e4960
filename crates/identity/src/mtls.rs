//! rustls configs for the mesh hop (sidecar → gateway, Istio's `ISTIO_MUTUAL`).
//!
//! Both configs read the identity through the watcher's channel at handshake time, via a
//! certificate resolver (what we present) and a verifier (what we trust). So one config is
//! built once and stays valid across rotations of the SVID *and* of the trust bundle: no config
//! swap, no window where a listener holds a stale config, and a connection already established
//! keeps the keys it negotiated (rotation never touches it). The alternative, rebuilding
//! `ServerConfig`s on every change and swapping them into every listener, moves that
//! consistency problem to every caller.
//!
//! Session resumption is off on both sides: a resumed session skips certificate verification,
//! so it would let a peer whose certificate expired or whose CA left the bundle back in, and a
//! client would not present its rotated SVID. Mesh-hop connections are long-lived; one full
//! handshake each costs little.

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ParsedCertificate, ResolvesServerCert,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, DistinguishedName,
    OtherError, ServerConfig, ServerConnection, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::sync::watch;

use crate::files::IdentityFiles;
use crate::identity::Identity;
use crate::svid::{SvidError, spiffe_identity};

/// ALPN of Istio's metadata exchange over mesh mTLS.
pub const ALPN_ISTIO_PEER_EXCHANGE: &[u8] = b"istio-peer-exchange";
/// ALPN Istio sidecars offer on mesh mTLS.
pub const ALPN_ISTIO: &[u8] = b"istio";
/// HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// HTTP/1.1.
pub const ALPN_HTTP_11: &[u8] = b"http/1.1";

/// What the gateway end accepts, most preferred first (rustls picks the first of these the
/// client offers). Envoy sidecars offer `istio-peer-exchange, istio` and, for HTTP, `h2` and
/// `http/1.1` too; an offer with none of these fails the handshake (`no_application_protocol`).
pub const MESH_SERVER_ALPN: &[&[u8]] =
    &[ALPN_ISTIO_PEER_EXCHANGE, ALPN_ISTIO, ALPN_H2, ALPN_HTTP_11];

/// The live identity: the watcher's receiver (or `watch::channel(files).1` for a fixed set).
pub type IdentitySource = watch::Receiver<Arc<IdentityFiles>>;

/// Why building a config failed, or why a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    #[error("building the TLS config: {0}")]
    Config(#[from] rustls::Error),
    #[error("peer is {presented}, expected {expected}")]
    UnexpectedPeer {
        expected: String,
        presented: Identity,
    },
    #[error("peer certificate: {0}")]
    PeerSvid(#[from] SvidError),
}

/// Which server identities a sidecar accepts (Istio checks the gateway's certificate against
/// the expected service accounts, never against a DNS name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpectedPeer {
    /// Exactly this identity.
    Identity(Identity),
    /// Any of these (DestinationRule `subjectAltNames`).
    AnyOf(Vec<Identity>),
    /// Any identity in this trust domain.
    TrustDomain(String),
}

impl ExpectedPeer {
    /// Whether `id` is acceptable. Compares values, never strings.
    pub fn matches(&self, id: &Identity) -> bool {
        match self {
            ExpectedPeer::Identity(want) => want == id,
            ExpectedPeer::AnyOf(want) => want.contains(id),
            ExpectedPeer::TrustDomain(td) => id.trust_domain() == td,
        }
    }
}

impl fmt::Display for ExpectedPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedPeer::Identity(id) => write!(f, "{id}"),
            ExpectedPeer::AnyOf(ids) => {
                let ids: Vec<String> = ids.iter().map(Identity::to_string).collect();
                write!(f, "one of [{}]", ids.join(", "))
            }
            ExpectedPeer::TrustDomain(td) => write!(f, "an identity in trust domain {td}"),
        }
    }
}

/// The gateway end of the mesh hop: presents the current SVID, requires a client certificate
/// that chains to the current trust bundle, ALPN [`MESH_SERVER_ALPN`]. After the handshake,
/// [`peer_identity`] names the client.
pub fn server_config(source: IdentitySource) -> Result<ServerConfig, MtlsError> {
    let provider = crate::provider();
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(MeshClientVerifier::new(source.clone(), provider)))
        .with_cert_resolver(Arc::new(CurrentSvid::new(source)));
    config.alpn_protocols = MESH_SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The sidecar end of the mesh hop: presents the current SVID, accepts a server certificate
/// that chains to the current trust bundle and carries an identity `expected` allows, ALPN
/// `istio`. The `ServerName` given to `connect` is only sent as SNI.
pub fn client_config(
    source: IdentitySource,
    expected: ExpectedPeer,
) -> Result<ClientConfig, MtlsError> {
    let provider = crate::provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        // A custom verifier because rustls' WebPkiServerVerifier always checks the DNS name;
        // mesh peers are named by SPIFFE ID instead, and MeshServerVerifier checks that.
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MeshServerVerifier::new(
            source.clone(),
            expected,
            provider,
        )))
        .with_client_cert_resolver(Arc::new(CurrentSvid::new(source)));
    config.alpn_protocols = vec![ALPN_ISTIO.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// The client's identity, from the certificate the server config verified. `None` while the
/// handshake is in progress, or if the certificate lacks exactly one `spiffe://` URI SAN.
pub fn peer_identity(conn: &ServerConnection) -> Option<Identity> {
    if conn.is_handshaking() {
        return None;
    }
    identity_of_chain(conn.peer_certificates()?)
}

/// The server's identity as the client config verified it (for logs and metrics).
pub fn server_identity(conn: &ClientConnection) -> Option<Identity> {
    if conn.is_handshaking() {
        return None;
    }
    identity_of_chain(conn.peer_certificates()?)
}

fn identity_of_chain(chain: &[CertificateDer<'static>]) -> Option<Identity> {
    spiffe_identity(chain.first()?).ok()
}

/// Presents the latest SVID from the source, as server or as client.
#[derive(Debug)]
pub struct CurrentSvid {
    source: IdentitySource,
}

impl CurrentSvid {
    pub fn new(source: IdentitySource) -> Self {
        CurrentSvid { source }
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.source.borrow().certified_key().clone()
    }
}

impl ResolvesServerCert for CurrentSvid {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CurrentSvid {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        // rustls checks the key's scheme against the server's offer afterwards.
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Server side: a client certificate is required and must chain to the current trust bundle.
/// Delegates to rustls' WebPkiClientVerifier, rebuilt when the bundle changes.
pub struct MeshClientVerifier {
    source: IdentitySource,
    provider: Arc<CryptoProvider>,
    /// The verifier for the set it was built from; compared by pointer, so a new set (a new
    /// `Arc` from the watcher) rebuilds it once.
    cache: Mutex<Option<CachedVerifier>>,
}

/// A client-cert verifier and the identity set whose bundle it was built from.
type CachedVerifier = (Arc<IdentityFiles>, Arc<dyn ClientCertVerifier>);

impl fmt::Debug for MeshClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshClientVerifier").finish_non_exhaustive()
    }
}

impl MeshClientVerifier {
    pub fn new(source: IdentitySource, provider: Arc<CryptoProvider>) -> Self {
        MeshClientVerifier {
            source,
            provider,
            cache: Mutex::new(None),
        }
    }

    fn current(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let files = self.source.borrow().clone();
        // A poisoned lock only means another handshake panicked mid-update; the cache is
        // either a complete pair or None, so it is safe to keep using.
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, verifier)) = cache
            .as_ref()
            .filter(|(cached_for, _)| Arc::ptr_eq(cached_for, &files))
        {
            return Ok(verifier.clone());
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(
            files.roots().clone(),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(format!("mesh client verifier: {e}")))?;
        *cache = Some((files, verifier.clone()));
        Ok(verifier)
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No CA names in the CertificateRequest: the bundle can change under us, and this must
    /// return a borrow of `self`. Mesh clients have one SVID and present it regardless.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client side: the server certificate must chain to the current trust bundle (serverAuth,
/// validity) and carry an identity the caller expects. No DNS name check.
#[derive(Debug)]
pub struct MeshServerVerifier {
    source: IdentitySource,
    expected: ExpectedPeer,
    provider: Arc<CryptoProvider>,
}

impl MeshServerVerifier {
    pub fn new(
        source: IdentitySource,
        expected: ExpectedPeer,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        MeshServerVerifier {
            source,
            expected,
            provider,
        }
    }
}

fn refuse(e: MtlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let files = self.source.borrow().clone();
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            files.roots(),
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let presented = spiffe_identity(end_entity).map_err(|e| refuse(e.into()))?;
        if !self.expected.matches(&presented) {
            return Err(refuse(MtlsError::UnexpectedPeer {
                expected: self.expected.to_string(),
                presented,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identity {
        s.parse().expect("valid identity")
    }

    #[test]
    fn expected_peer_compares_values() {
        let gw =
            id("spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account");
        let other = id("spiffe://cluster.local/ns/default/sa/sleep");
        let foreign =
            id("spiffe://example.org/ns/istio-system/sa/istio-egressgateway-service-account");
        let exact = ExpectedPeer::Identity(gw.clone());
        assert!(exact.matches(&gw));
        assert!(!exact.matches(&other));
        assert!(!exact.matches(&foreign));
        let any = ExpectedPeer::AnyOf(vec![other.clone(), gw.clone()]);
        assert!(any.matches(&gw) && any.matches(&other) && !any.matches(&foreign));
        let td = ExpectedPeer::TrustDomain("cluster.local".into());
        assert!(td.matches(&gw) && td.matches(&other) && !td.matches(&foreign));
        assert!(
            ExpectedPeer::AnyOf(vec![])
                .to_string()
                .contains("one of []")
        );
    }

    #[test]
    fn configs_build_from_a_fixed_set() {
        let ca = crate::ca::Ca::generate("cluster.local").expect("ca");
        let svid = ca
            .issue(
                "default",
                "sleep",
                crate::ca::Validity::from_now(crate::ca::DEFAULT_SVID_TTL),
            )
            .expect("svid");
        let files = IdentityFiles::from_pem(
            svid.cert_pem.as_bytes(),
            svid.key_pem.as_bytes(),
            svid.ca_pem.as_bytes(),
        )
        .expect("files");
        let (_tx, rx) = watch::channel(Arc::new(files));
        let server = server_config(rx.clone()).expect("server config");
        assert_eq!(server.alpn_protocols[0], ALPN_ISTIO_PEER_EXCHANGE);
        assert_eq!(server.send_tls13_tickets, 0);
        let client =
            client_config(rx, ExpectedPeer::TrustDomain("cluster.local".into())).expect("client");
        assert_eq!(client.alpn_protocols, vec![ALPN_ISTIO.to_vec()]);
    }
}
