//! TLS origination toward upstreams (`UpstreamTls`): one cached rustls `ClientConfig` per
//! settings. A certificate that does not verify fails the connection; it is never accepted
//! silently, except under an explicit `insecureSkipVerify`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sluice_snapshot::cluster::{Trust, UpstreamTls, UpstreamTlsMode};

use super::{Error, load_certs, load_key, load_roots, provider, stamp};

type Entry = (Vec<Option<SystemTime>>, Arc<ClientConfig>);

#[derive(Default)]
pub struct ClientConfigs {
    cache: Mutex<HashMap<(UpstreamTls, bool), Entry>>,
    /// The platform store, loaded once (it honours `SSL_CERT_FILE`).
    platform: OnceLock<Result<Arc<RootCertStore>, String>>,
}

impl ClientConfigs {
    /// The configuration for `tls`; `http2` offers ALPN h2 and http/1.1 when the settings
    /// name no ALPN.
    pub fn get(&self, tls: &UpstreamTls, http2: bool) -> Result<Arc<ClientConfig>, crate::Error> {
        if tls.mode == UpstreamTlsMode::IstioMutual || tls.trust == Trust::Mesh {
            return Err(crate::Error::NotSupported(
                "ISTIO_MUTUAL toward the upstream".into(),
            ));
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
