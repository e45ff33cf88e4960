//! One complete, validated set of identity files: `tls.crt` (leaf first, then any
//! intermediates), `tls.key`, `ca.crt` (the mesh trust bundle). A set is only ever built whole
//! and valid, so whoever holds an `IdentityFiles` can present it without re-checking.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::ca::{CA_CERT, TLS_CERT, TLS_KEY};
use crate::clock::rfc3339;
use crate::identity::Identity;
use crate::svid::{SvidError, svid_info};

/// Why a set of identity files is not usable. Messages name the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("reading {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{file}: no PEM certificate")]
    NoCertificate { file: String },
    #[error("{file}: bad PEM: {reason}")]
    BadPem { file: String, reason: String },
    #[error("{file}: {reason}")]
    BadKey { file: String, reason: String },
    #[error("{key} is not the private key of {cert}")]
    KeyMismatch { cert: String, key: String },
    #[error("{file}: {source}")]
    Svid { file: String, source: SvidError },
    #[error("{file}: {reason}")]
    BadBundle { file: String, reason: String },
    #[error("{cert} expired at {} (now {})", rfc3339(*.not_after), rfc3339(*.now))]
    Expired {
        cert: String,
        not_after: SystemTime,
        now: SystemTime,
    },
    #[error("{cert} is not valid before {} (now {})", rfc3339(*.not_before), rfc3339(*.now))]
    NotYetValid {
        cert: String,
        not_before: SystemTime,
        now: SystemTime,
    },
    #[error("{cert} is not signed by a CA in {bundle}")]
    UnknownIssuer { cert: String, bundle: String },
    #[error("{cert} does not verify against {bundle}: {reason}")]
    Untrusted {
        cert: String,
        bundle: String,
        reason: String,
    },
}

/// The parsed contents of an identity dir.
#[derive(Clone)]
pub struct IdentityFiles {
    identity: Identity,
    serial: String,
    not_after: SystemTime,
    /// Chain and signing key together, as rustls presents them; the key is only held here,
    /// already loaded, so no raw key bytes linger.
    certified_key: Arc<CertifiedKey>,
    trust_bundle: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
}

impl fmt::Debug for IdentityFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityFiles")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial)
            .field("not_after", &rfc3339(self.not_after))
            .field("chain_len", &self.certified_key.cert.len())
            .field("trust_bundle_len", &self.trust_bundle.len())
            .finish()
    }
}

/// File names to use in error messages.
struct Names {
    cert: String,
    key: String,
    bundle: String,
}

impl IdentityFiles {
    /// Reads and validates `dir/tls.crt`, `dir/tls.key`, `dir/ca.crt` now.
    pub fn load(dir: &Path) -> Result<Self, FilesError> {
        Self::from_dir_contents(dir, &read_set(dir)?)
    }

    /// Validates a set given as PEM (e.g. from a Kubernetes secret read some other way).
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        bundle_pem: &[u8],
    ) -> Result<Self, FilesError> {
        let names = Names {
            cert: TLS_CERT.into(),
            key: TLS_KEY.into(),
            bundle: CA_CERT.into(),
        };
        Self::parse(cert_pem, key_pem, bundle_pem, &names, SystemTime::now())
    }

    /// Used by the watcher, which has already read the bytes it fingerprinted.
    pub(crate) fn from_dir_contents(
        dir: &Path,
        contents: &[Vec<u8>; 3],
    ) -> Result<Self, FilesError> {
        let [cert, key, bundle] = contents;
        let names = Names {
            cert: dir.join(TLS_CERT).display().to_string(),
            key: dir.join(TLS_KEY).display().to_string(),
            bundle: dir.join(CA_CERT).display().to_string(),
        };
        Self::parse(cert, key, bundle, &names, SystemTime::now())
    }

    fn parse(
        cert_pem: &[u8],
        key_pem: &[u8],
        bundle_pem: &[u8],
        names: &Names,
        now: SystemTime,
    ) -> Result<Self, FilesError> {
        let chain = certs(cert_pem, &names.cert)?;
        let trust_bundle = certs(bundle_pem, &names.bundle)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| FilesError::BadKey {
            file: names.key.clone(),
            reason: format!("no usable PEM private key: {e}"),
        })?;
        let leaf = chain.first().ok_or_else(|| FilesError::NoCertificate {
            file: names.cert.clone(),
        })?;
        let info = svid_info(leaf).map_err(|source| FilesError::Svid {
            file: names.cert.clone(),
            source,
        })?;

        let mut roots = RootCertStore::empty();
        for (i, ca) in trust_bundle.iter().enumerate() {
            roots.add(ca.clone()).map_err(|e| FilesError::BadBundle {
                file: names.bundle.clone(),
                reason: format!("certificate #{}: {e}", i + 1),
            })?;
        }
        verify_chain(&chain, &roots, now, names)?;

        let provider = crate::provider();
        let certified_key = match CertifiedKey::from_der(chain, key, &provider) {
            Ok(ck) => ck,
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(FilesError::KeyMismatch {
                    cert: names.cert.clone(),
                    key: names.key.clone(),
                });
            }
            Err(e) => {
                return Err(FilesError::BadKey {
                    file: names.key.clone(),
                    reason: e.to_string(),
                });
            }
        };
        Ok(IdentityFiles {
            identity: info.identity,
            serial: info.serial,
            not_after: info.not_after,
            certified_key: Arc::new(certified_key),
            trust_bundle,
            roots: Arc::new(roots),
        })
    }

    /// The identity in the leaf's SPIFFE URI SAN.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The leaf's serial number, lowercase hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// When the leaf expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Leaf first, then any intermediates from `tls.crt`.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.certified_key.cert
    }

    /// Chain and loaded signing key, as rustls presents them.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    /// The certificates of `ca.crt`.
    pub fn trust_bundle(&self) -> &[CertificateDer<'static>] {
        &self.trust_bundle
    }

    /// `ca.crt` as rustls trust anchors.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }
}

/// Reads `tls.crt`, `tls.key`, `ca.crt` (following symlinks, as Kubernetes secret volumes are
/// `tls.crt -> ..data/tls.crt`).
pub(crate) fn read_set(dir: &Path) -> Result<[Vec<u8>; 3], FilesError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| FilesError::Read { path, source })
    };
    Ok([read(TLS_CERT)?, read(TLS_KEY)?, read(CA_CERT)?])
}

fn certs(pem: &[u8], file: &str) -> Result<Vec<CertificateDer<'static>>, FilesError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FilesError::BadPem {
            file: file.to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(FilesError::NoCertificate {
            file: file.to_string(),
        });
    }
    Ok(certs)
}

/// The leaf must chain to the bundle and be valid now, for both uses an SVID has: client (the
/// sidecar's side of the mesh hop) and server (the gateway's). Checking here, at load, means a
/// bad set is refused with a clear message instead of failing every handshake later.
fn verify_chain(
    chain: &[CertificateDer<'static>],
    roots: &RootCertStore,
    now: SystemTime,
    names: &Names,
) -> Result<(), FilesError> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(FilesError::NoCertificate {
            file: names.cert.clone(),
        });
    };
    let end_entity = webpki::EndEntityCert::try_from(leaf).map_err(|e| FilesError::BadPem {
        file: names.cert.clone(),
        reason: e.to_string(),
    })?;
    let unix_now = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    let algs = crate::provider().signature_verification_algorithms.all;
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        end_entity
            .verify_for_usage(
                algs,
                &roots.roots,
                intermediates,
                unix_now,
                usage,
                None,
                None,
            )
            .map_err(|e| chain_error(e, now, names))?;
    }
    Ok(())
}

fn chain_error(e: webpki::Error, now: SystemTime, names: &Names) -> FilesError {
    let at = |t: UnixTime| crate::clock::from_unix(i64::try_from(t.as_secs()).unwrap_or(i64::MAX));
    match e {
        webpki::Error::CertExpired { not_after, .. } => FilesError::Expired {
            cert: names.cert.clone(),
            not_after: at(not_after),
            now,
        },
        webpki::Error::CertNotValidYet { not_before, .. } => FilesError::NotYetValid {
            cert: names.cert.clone(),
            not_before: at(not_before),
            now,
        },
        // Two independently made roots can share a subject name (every `sluice ca init` root
        // for one trust domain does); then the failure is a signature by the wrong key, which
        // means the same to the operator: no CA in the bundle signed this certificate.
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            FilesError::UnknownIssuer {
                cert: names.cert.clone(),
                bundle: names.bundle.clone(),
            }
        }
        other => FilesError::Untrusted {
            cert: names.cert.clone(),
            bundle: names.bundle.clone(),
            reason: format!("{other:?}"),
        },
    }
}

#[cfg(test)]
mod tests;
