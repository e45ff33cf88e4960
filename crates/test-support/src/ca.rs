//! A test certificate authority made in memory with rcgen (ring), and the leaf certificates
//! tests need: server certificates (DNS or IP SANs), client certificates (with an optional URI
//! SAN for SPIFFE IDs) and expired certificates.
//!
//! ```no_run
//! use sluice_test_support::{TempDir, TestCa};
//!
//! let ca = TestCa::new("upstream-ca");
//! let server = ca.server_cert(&["api.github.com", "127.0.10.1"]);
//! let client = ca.client_cert("sleep", Some("spiffe://cluster.local/ns/default/sa/sleep"));
//!
//! // rustls configs for in-process servers and clients
//! let server_cfg = server.server_config(); // ALPN h2, http/1.1
//! let mutual_cfg = server.server_config_mutual(&ca); // requires a client cert from `ca`
//! let client_cfg = ca.client_config(Some(&client));
//!
//! // files for the sluice binary (DestinationRule caCertificates, --identity-dir ...)
//! let dir = TempDir::new("certs");
//! let ca_path = ca.write_ca_pem(dir.path()); // <dir>/ca.crt
//! let (crt, key) = client.write(dir.path(), "tls"); // <dir>/tls.crt, <dir>/tls.key
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, date_time_ymd,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The ring crypto provider, used explicitly so that configs never depend on which rustls
/// provider features other crates in the same build enabled.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A root CA. Every certificate it issues is signed directly by the root (no intermediates).
pub struct TestCa {
    name: String,
    cert: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("name", &self.name).finish()
    }
}

/// A certificate (PEM, leaf only) and its private key (PEM, PKCS#8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertKey {
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
}

fn new_key() -> KeyPair {
    KeyPair::generate().expect("rcgen: generating a key pair")
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "sluice tests");
    dn.push(DnType::CommonName, cn);
    dn
}

impl TestCa {
    /// A new self-signed root CA whose common name is `name`.
    pub fn new(name: &str) -> Self {
        let key = new_key();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .expect("rcgen: self-signing the test CA");
        Self {
            name: name.to_string(),
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    /// The name given to [`TestCa::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A root store that trusts only this CA.
    pub fn ca_root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.cert_der())
            .expect("rustls: adding the test CA to a root store");
        roots
    }

    /// Writes the CA certificate to `<dir>/ca.crt` and returns that path.
    pub fn write_ca_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.crt");
        std::fs::write(&path, self.cert_pem())
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// A server certificate for `sans` (each a DNS name, `*.wildcard` name or IP address),
    /// with the serverAuth EKU. The common name is the first SAN.
    pub fn server_cert(&self, sans: &[&str]) -> CertKey {
        self.issue_server(sans, false)
    }

    /// Like [`TestCa::server_cert`] but valid only during the year 2000.
    pub fn expired_server_cert(&self, sans: &[&str]) -> CertKey {
        self.issue_server(sans, true)
    }

    fn issue_server(&self, sans: &[&str], expired: bool) -> CertKey {
        assert!(!sans.is_empty(), "server_cert needs at least one SAN");
        let owned: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(owned)
            .unwrap_or_else(|e| panic!("invalid SAN in {sans:?}: {e}"));
        params.distinguished_name = dn(sans[0]);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        if expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        self.sign(&params)
    }

    /// A client certificate with common name `common_name` and the clientAuth EKU; `uri_san`
    /// (e.g. `spiffe://cluster.local/ns/default/sa/sleep`) becomes a URI SAN.
    pub fn client_cert(&self, common_name: &str, uri_san: Option<&str>) -> CertKey {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        if let Some(uri) = uri_san {
            let uri = uri
                .try_into()
                .unwrap_or_else(|e| panic!("invalid URI SAN {uri:?}: {e}"));
            params.subject_alt_names = vec![SanType::URI(uri)];
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        self.sign(&params)
    }

    fn sign(&self, params: &CertificateParams) -> CertKey {
        let key = new_key();
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("rcgen: signing a leaf certificate");
        CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A rustls client config trusting only this CA, presenting `client_cert` if given.
    /// No ALPN is set; push to `alpn_protocols` if needed.
    pub fn client_config(&self, client_cert: Option<&CertKey>) -> rustls::ClientConfig {
        client_config(self.ca_root_store(), client_cert)
    }
}

/// A rustls client config trusting `roots`, presenting `client_cert` if given.
pub fn client_config(roots: RootCertStore, client_cert: Option<&CertKey>) -> rustls::ClientConfig {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("rustls: default protocol versions")
        .with_root_certificates(roots);
    match client_cert {
        Some(ck) => builder
            .with_client_auth_cert(ck.cert_chain(), ck.key_der())
            .expect("rustls: client certificate"),
        None => builder.with_no_client_auth(),
    }
}

impl CertKey {
    /// Writes `<dir>/<stem>.crt` and `<dir>/<stem>.key`, returning (cert path, key path).
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let crt = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        for (path, body) in [(&crt, &self.cert_pem), (&key, &self.key_pem)] {
            std::fs::write(path, body)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        }
        (crt, key)
    }

    /// The leaf certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("parsing our own cert PEM")
    }

    /// The chain to present: just the leaf (the root is the peer's trust anchor).
    pub fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert_der()]
    }

    /// The private key, DER.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("parsing our own key PEM")
    }

    /// A rustls server config presenting this certificate, ALPN `h2` then `http/1.1`, no client
    /// certificate requested.
    pub fn server_config(&self) -> rustls::ServerConfig {
        self.server_config_with(None)
    }

    /// Like [`CertKey::server_config`] but requiring a client certificate signed by `client_ca`
    /// (Istio `MUTUAL` / `ISTIO_MUTUAL` on the server side).
    pub fn server_config_mutual(&self, client_ca: &TestCa) -> rustls::ServerConfig {
        self.server_config_with(Some(client_ca.ca_root_store()))
    }

    /// A rustls server config; with `client_roots`, a client certificate signed by one of them
    /// is required.
    pub fn server_config_with(&self, client_roots: Option<RootCertStore>) -> rustls::ServerConfig {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("rustls: default protocol versions");
        let builder = match client_roots {
            Some(roots) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .expect("rustls: client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut cfg = builder
            .with_single_cert(self.cert_chain(), self.key_der())
            .expect("rustls: server certificate");
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg
    }
}

/// The subject common name of a DER certificate, if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_certs_carry_names() {
        let ca = TestCa::new("t");
        let s = ca.server_cert(&["api.github.com", "127.0.10.1"]);
        assert_eq!(
            common_name(&s.cert_der()).as_deref(),
            Some("api.github.com")
        );
        let c = ca.client_cert("sleep", Some("spiffe://cluster.local/ns/default/sa/sleep"));
        assert_eq!(common_name(&c.cert_der()).as_deref(), Some("sleep"));
        let der = c.cert_der();
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).expect("parse");
        let san = parsed
            .subject_alternative_name()
            .expect("ext")
            .expect("san present");
        assert!(format!("{:?}", san.value).contains("spiffe://cluster.local/ns/default/sa/sleep"));
        // configs build
        let _ = s.server_config();
        let _ = s.server_config_mutual(&ca);
        let _ = ca.client_config(Some(&c));
    }

    #[test]
    fn write_files() {
        let dir = crate::TempDir::new("ca");
        let ca = TestCa::new("t");
        let p = ca.write_ca_pem(dir.path());
        assert!(
            std::fs::read_to_string(p)
                .expect("read")
                .contains("BEGIN CERTIFICATE")
        );
        let (c, k) = ca.server_cert(&["x.test"]).write(dir.path(), "tls");
        assert!(c.ends_with("tls.crt") && k.ends_with("tls.key"));
        assert!(
            std::fs::read_to_string(k)
                .expect("read")
                .contains("PRIVATE KEY")
        );
    }
}
