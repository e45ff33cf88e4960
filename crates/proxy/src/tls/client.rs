//! TLS origination toward upstreams (`UpstreamTls`): one cached rustls `ClientConfig` per
//! settings. A certificate that does not verify fails the connection; it is never accepted
//! silently, except under an explicit `insecureSkipVerify`.
//!
//! `ISTIO_MUTUAL` (the mesh hop, sidecar → gateway) uses the proxy's workload identity
//! ([`sluice_identity::client_config`]): its SVID as client certificate, the mesh trust
//! bundle for the server, ALPN `istio`. The server must carry one of the cluster's
//! `spiffe://` subject alt names (the gateway endpoints' service accounts), or, when the
//! cluster names none, any identity of the proxy's own trust domain. That config follows the
//! identity watcher at handshake time, so it is built once per expected peer and stays valid
//! across certificate rotations. Without an identity, mesh origination fails (`UF`): no
//! identity is ever assumed, and the hop is never downgraded to plain TLS or cleartext.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sluice_identity::{ExpectedPeer, Identity, IdentitySource};
use sluice_snapshot::cluster::{Trust, UpstreamTls, UpstreamTlsMode};

use super::{Error, load_certs, load_key, load_roots, provider, stamp};

type Entry = (Vec<Option<SystemTime>>, Arc<ClientConfig>);

/// Mesh configs by the cluster's subject alt names and the proxy's own trust domain.
type MeshKey = (Vec<String>, String);

#[derive(Default)]
pub struct ClientConfigs {
    cache: Mutex<HashMap<(UpstreamTls, bool), Entry>>,
    /// The platform store, loaded once (it honours `SSL_CERT_FILE`).
    platform: OnceLock<Result<Arc<RootCertStore>, String>>,
    /// The proxy's workload identity, for `ISTIO_MUTUAL`.
    identity: Option<IdentitySource>,
    mesh: Mutex<HashMap<MeshKey, Arc<ClientConfig>>>,
    /// The missing identity has been reported (once, not per connection).
    warned_no_identity: AtomicBool,
}

/// True for the mesh hop: `ISTIO_MUTUAL`, or anything trusting the mesh bundle.
pub fn is_mesh(tls: &UpstreamTls) -> bool {
    tls.mode == UpstreamTlsMode::IstioMutual || tls.trust == Trust::Mesh
}

impl ClientConfigs {
    /// Configurations that originate `ISTIO_MUTUAL` with `identity` (`None`: mesh
    /// origination fails).
    pub fn with_identity(identity: Option<IdentitySource>) -> ClientConfigs {
        ClientConfigs {
            identity,
            ..ClientConfigs::default()
        }
    }

    /// The configuration for `tls`; `http2` offers ALPN h2 and http/1.1 when the settings
    /// name no ALPN (the mesh hop always offers `istio` alone, and carries HTTP/1.1).
    pub fn get(&self, tls: &UpstreamTls, http2: bool) -> Result<Arc<ClientConfig>, crate::Error> {
        if is_mesh(tls) {
            return self.mesh(tls);
        }
        let key = (tls.clone(), http2);
        let files = match &tls.trust {
            Trust::File(p) => Some(p.as_path()),
            _ => None,
        }
        .into_iter()
        .chain(tls.client_certificate.as_deref())
        .chain(tls.private_key.as_deref());
        let now = stamp(files);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((stamped, config)) = cache.get(&key)
            && *stamped == now
        {
            return Ok(config.clone());
        }
        let config = Arc::new(self.build(tls, http2)?);
        cache.insert(key, (now, config.clone()));
        Ok(config)
    }

    /// The mesh-hop configuration: this proxy's SVID, the mesh trust bundle, the expected
    /// server identities of `tls`.
    fn mesh(&self, tls: &UpstreamTls) -> Result<Arc<ClientConfig>, crate::Error> {
        let Some(source) = &self.identity else {
            if !self.warned_no_identity.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    "a cluster requires ISTIO_MUTUAL, but this proxy has no workload identity \
                     (--identity-dir): its connections fail (UF) instead of leaving the mesh \
                     without mTLS"
                );
            }
            return Err(crate::Error::TlsConfig(Error::Config(
                "ISTIO_MUTUAL needs a workload identity (--identity-dir); none is configured"
                    .into(),
            )));
        };
        let own_domain = source.borrow().identity().trust_domain().to_owned();
        let key = (tls.subject_alt_names.clone(), own_domain);
        let mut cache = self.mesh.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(config) = cache.get(&key) {
            return Ok(config.clone());
        }
        let expected = expected_peer(&key.0, &key.1);
        let config = sluice_identity::client_config(source.clone(), expected)
            .map_err(|e| crate::Error::TlsConfig(Error::Config(e.to_string())))?;
        let config = Arc::new(config);
        cache.insert(key, config.clone());
        Ok(config)
    }

    fn platform_roots(&self) -> Result<Arc<RootCertStore>, Error> {
        self.platform
            .get_or_init(|| {
                let loaded = rustls_native_certs::load_native_certs();
                let mut roots = RootCertStore::empty();
                let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
                if added == 0 {
                    let errors: Vec<String> = loaded.errors.iter().map(|e| e.to_string()).collect();
                    return Err(format!(
                        "no usable certificate in the platform store ({})",
                        errors.join("; ")
                    ));
                }
                Ok(Arc::new(roots))
            })
            .clone()
            .map_err(Error::Config)
    }

    fn build(&self, tls: &UpstreamTls, http2: bool) -> Result<ClientConfig, Error> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let verifier: Arc<dyn ServerCertVerifier> = match &tls.trust {
            Trust::SkipVerify => Arc::new(SkipVerify(provider.clone())),
            Trust::Platform | Trust::File(_) => {
                let roots = match &tls.trust {
                    Trust::File(path) => Arc::new(load_roots(path)?),
                    _ => self.platform_roots()?,
                };
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| Error::Config(e.to_string()))?;
                if tls.subject_alt_names.is_empty() {
                    webpki
                } else {
                    Arc::new(SanVerifier {
                        inner: webpki,
                        names: tls.subject_alt_names.clone(),
                    })
                }
            }
            Trust::Mesh => return Err(Error::Config("mesh trust is not available".into())),
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match (&tls.client_certificate, &tls.private_key) {
            (Some(cert), Some(key)) => {
                builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?
            }
            _ if tls.mode == UpstreamTlsMode::Mutual => {
                return Err(Error::Config(
                    "MUTUAL origination needs clientCertificate and privateKey".into(),
                ));
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = if !tls.alpn.is_empty() {
            tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect()
        } else if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            Vec::new()
        };
        Ok(config)
    }
}

/// Whom the mesh hop accepts as server: the `spiffe://` names among `sans` (Istio checks the
/// gateway's certificate against its service accounts), else any identity of `own_domain`.
/// Names that are not SPIFFE IDs cannot match a workload certificate: a list of only such
/// names accepts nobody (fails closed).
pub fn expected_peer(sans: &[String], own_domain: &str) -> ExpectedPeer {
    if sans.is_empty() {
        return ExpectedPeer::TrustDomain(own_domain.to_owned());
    }
    let ids: Vec<Identity> = sans
        .iter()
        .filter_map(|san| match Identity::from_str(san) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(
                    san,
                    error = %e,
                    "ISTIO_MUTUAL subject alt name is not a workload identity: it matches no mesh certificate"
                );
                None
            }
        })
        .collect();
    ExpectedPeer::AnyOf(ids)
}

/// Verifies the chain as webpki does, but accepts the certificate when it carries any of
/// `names` (DestinationRule `subjectAltNames`) instead of the SNI.
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<String>,
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last = rustls::Error::General(format!(
            "no subjectAltName usable for verification in {:?}",
            self.names
        ));
        for name in &self.names {
            let Ok(name) = ServerName::try_from(name.as_str()) else {
                continue;
            };
            match self.inner.verify_server_cert(
                end_entity,
                intermediates,
                &name,
                ocsp_response,
                now,
            ) {
                Ok(ok) => return Ok(ok),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecureSkipVerify`: any certificate, but the handshake signatures are still checked
/// (the peer must hold the key of the certificate it shows).
#[derive(Debug)]
struct SkipVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mesh_hop_expects_the_clusters_workload_identities() {
        assert_eq!(
            expected_peer(&[], "cluster.local"),
            ExpectedPeer::TrustDomain("cluster.local".into())
        );
        let gw = "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account";
        let want = Identity::from_str(gw).expect("id");
        assert_eq!(
            expected_peer(&[gw.to_owned(), "gateway.example.com".to_owned()], "td"),
            ExpectedPeer::AnyOf(vec![want])
        );
        // Only names no workload certificate carries: nobody is accepted.
        assert_eq!(
            expected_peer(&["gateway.example.com".to_owned()], "cluster.local"),
            ExpectedPeer::AnyOf(Vec::new())
        );
    }

    #[test]
    fn mesh_origination_without_an_identity_fails_closed() {
        let tls = UpstreamTls {
            mode: UpstreamTlsMode::IstioMutual,
            sni: None,
            trust: Trust::Mesh,
            client_certificate: None,
            private_key: None,
            subject_alt_names: Vec::new(),
            alpn: Vec::new(),
        };
        let err = ClientConfigs::default()
            .get(&tls, false)
            .expect_err("fails");
        assert_eq!(err.response_flag(), "UF");
        assert!(err.to_string().contains("workload identity"), "{err}");
    }
}
