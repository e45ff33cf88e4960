//! The mesh CA behind `sluice ca init` / `sluice ca issue`: an ECDSA P-256 root, and short-lived
//! X.509-SVIDs signed directly by it, written in the Kubernetes TLS-secret layout
//! (`tls.crt`, `tls.key`, `ca.crt`) that cert-manager's csi-driver-spiffe also uses, so the
//! gateway and sidecar read SVIDs from either source the same way.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::atomic;
use crate::clock::{rfc3339, to_offset};
use crate::identity::{DEFAULT_TRUST_DOMAIN, Identity, IdentityError, SPIFFE_SCHEME};
use crate::svid::{self, SvidError};

/// CA certificate (trust bundle) file name, in the CA dir and in every SVID dir.
pub const CA_CERT: &str = "ca.crt";
/// CA private key file name.
pub const CA_KEY: &str = "ca.key";
/// SVID certificate (chain) file name.
pub const TLS_CERT: &str = "tls.crt";
/// SVID private key file name.
pub const TLS_KEY: &str = "tls.key";

/// Root validity: ten years (3650 days), as Istio's self-signed root.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default SVID lifetime: 24 hours, as Istio's workload certificates.
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(24 * 3600);
/// Certificates start this far in the past so that a peer whose clock is slightly behind
/// does not reject a certificate issued a moment ago as "not yet valid".
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

const CA_COMMON_NAME: &str = "sluice mesh root CA";

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(
        "{0} already exists; pass --force to replace the CA (SVIDs it issued stop being trusted)"
    )]
    Exists(PathBuf),
    #[error(
        "no CA in {dir}: {file} is missing (create one with `sluice ca init --dir {dir}`)",
        dir = .dir.display()
    )]
    Missing { dir: PathBuf, file: &'static str },
    #[error("reading {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {}: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("{}: {reason}", .path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("{} is not the private key of {}", .key.display(), .cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("invalid validity: {0}")]
    Validity(String),
    #[error("signing: {0}")]
    Sign(#[from] rcgen::Error),
    #[error("reading back the issued certificate: {0}")]
    Svid(#[from] SvidError),
}

impl CaError {
    /// True when the operator can fix this by changing the command or its inputs (exit code 2);
    /// false for failures of the machine or the crypto library (exit code 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            CaError::Exists(_)
                | CaError::Missing { .. }
                | CaError::BadFile { .. }
                | CaError::KeyMismatch { .. }
                | CaError::Identity(_)
                | CaError::Validity(_)
        )
    }
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From [`CLOCK_SKEW`] ago until `ttl` from now.
    pub fn from_now(ttl: Duration) -> Self {
        let now = SystemTime::now();
        Validity {
            not_before: now.checked_sub(CLOCK_SKEW).unwrap_or(now),
            not_after: now.checked_add(ttl).unwrap_or(now),
        }
    }

    fn check(&self) -> Result<(time::OffsetDateTime, time::OffsetDateTime), CaError> {
        if self.not_after <= self.not_before {
            return Err(CaError::Validity(format!(
                "not after ({}) must be later than not before ({})",
                rfc3339(self.not_after),
                rfc3339(self.not_before)
            )));
        }
        let out_of_range = |t| CaError::Validity(format!("{} is out of range", rfc3339(t)));
        Ok((
            to_offset(self.not_before).ok_or_else(|| out_of_range(self.not_before))?,
            to_offset(self.not_after).ok_or_else(|| out_of_range(self.not_after))?,
        ))
    }
}

/// A CA: its certificate, its signing key and the trust domain it issues identities in.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The first certificate of `ca.crt`: the one whose key signs.
    cert_pem: String,
    /// All of `ca.crt`, copied into every SVID dir. During a root rotation an operator puts the
    /// old and the new root here, and every SVID dir then trusts both.
    bundle_pem: String,
    trust_domain: String,
    not_after: SystemTime,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &rfc3339(self.not_after))
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed root for `trust_domain`, in memory.
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        crate::identity::validate_trust_domain(trust_domain)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // O = trust domain, as Istio's self-signed root.
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, CA_COMMON_NAME);
        params.distinguished_name = dn;
        // SPIRE puts the trust domain's own SPIFFE ID on its CAs; `issue` reads it back so the
        // CA dir needs no separate config file.
        params.subject_alt_names = vec![SanType::URI(
            format!("{SPIFFE_SCHEME}{trust_domain}").try_into()?,
        )];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let validity = Validity::from_now(CA_VALIDITY);
        (params.not_before, params.not_after) = validity.check()?;
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Ca {
            issuer: Issuer::new(params, key),
            bundle_pem: cert_pem.clone(),
            cert_pem,
            trust_domain: trust_domain.to_string(),
            not_after: validity.not_after,
        })
    }

    /// `sluice ca init`: a new root written to `dir/ca.crt` (0644) and `dir/ca.key` (0600).
    /// Refuses to replace an existing CA unless `force`.
    pub fn init(dir: &Path, trust_domain: &str, force: bool) -> Result<Self, CaError> {
        let ca = Ca::generate(trust_domain)?;
        ca.write(dir, force)?;
        Ok(ca)
    }

    /// Writes `ca.crt` and `ca.key` into `dir` (created if missing).
    pub fn write(&self, dir: &Path, force: bool) -> Result<(), CaError> {
        let crt = dir.join(CA_CERT);
        let key = dir.join(CA_KEY);
        if !force {
            // symlink_metadata: a dangling symlink still counts as "something is there".
            if let Some(existing) = [&crt, &key]
                .into_iter()
                .find(|p| p.symlink_metadata().is_ok())
            {
                return Err(CaError::Exists(existing.clone()));
            }
        }
        std::fs::create_dir_all(dir).map_err(|source| CaError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        // Key first: if we die in between, a key without a certificate still blocks a
        // second `init` without --force, instead of silently leaving a CA with a lost key.
        let key_pem = self.issuer.key().serialize_pem();
        write_file(&key, key_pem.as_bytes(), atomic::PRIVATE)?;
        write_file(&crt, self.cert_pem.as_bytes(), atomic::PUBLIC)
    }

    /// Reads the CA in `dir` (as written by [`Ca::init`], or any CA certificate + PKCS#8 key).
    /// The trust domain comes from the certificate's `spiffe://<td>` URI SAN, else
    /// `cluster.local`; [`Ca::with_trust_domain`] overrides it.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let crt_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let bundle_pem = read_file(dir, &crt_path, CA_CERT)?;
        let key_pem = read_file(dir, &key_path, CA_KEY)?;
        let bad = |path: &Path, reason: String| CaError::BadFile {
            path: path.to_path_buf(),
            reason,
        };

        let der = CertificateDer::pem_slice_iter(bundle_pem.as_bytes())
            .next()
            .ok_or_else(|| bad(&crt_path, "no PEM certificate".into()))?
            .map_err(|e| bad(&crt_path, format!("bad PEM: {e}")))?;
        let cert = svid::parse(&der).map_err(|e| bad(&crt_path, e.to_string()))?;
        if !cert.is_ca() {
            return Err(bad(
                &crt_path,
                "not a CA certificate (basicConstraints CA:FALSE)".into(),
            ));
        }
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| bad(&key_path, format!("not a PKCS#8 private key: {e}")))?;
        // Signing with a key that does not match would issue certificates nobody can verify.
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(CaError::KeyMismatch {
                cert: crt_path,
                key: key_path,
            });
        }
        let trust_domain = match svid::spiffe_uris(&cert)
            .map_err(|e| bad(&crt_path, e.to_string()))?
            .first()
        {
            Some(uri) => uri
                .get(SPIFFE_SCHEME.len()..)
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_string(),
            None => DEFAULT_TRUST_DOMAIN.to_string(),
        };
        crate::identity::validate_trust_domain(&trust_domain)
            .map_err(|e| bad(&crt_path, format!("CA's SPIFFE ID: {e}")))?;
        let not_after = crate::clock::from_unix(cert.validity().not_after.timestamp());
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| bad(&crt_path, format!("unusable as issuer: {e}")))?;
        Ok(Ca {
            issuer,
            cert_pem: first_pem_block(&bundle_pem).unwrap_or_default(),
            bundle_pem,
            trust_domain,
            not_after,
        })
    }

    /// The same CA issuing identities in another trust domain (for CAs without a SPIFFE ID).
    pub fn with_trust_domain(mut self, trust_domain: &str) -> Result<Self, CaError> {
        crate::identity::validate_trust_domain(trust_domain)?;
        self.trust_domain = trust_domain.to_string();
        Ok(self)
    }

    /// The trust domain of the identities this CA issues.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The signing certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The trust bundle copied into SVID dirs (all of `ca.crt`), PEM.
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// When the CA certificate expires; no SVID may outlive it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// An SVID for `spiffe://<td>/ns/<namespace>/sa/<service_account>` valid for `validity`:
    /// URI SAN only (no DNS SANs, empty subject, as Istio's workload certificates), key usage
    /// digitalSignature + keyEncipherment, EKU serverAuth + clientAuth (the same SVID serves
    /// the sidecar as client and the gateway as server), a fresh P-256 key.
    ///
    /// `validity` may lie in the past: tests use that for expired certificates.
    pub fn issue(
        &self,
        namespace: &str,
        service_account: &str,
        validity: Validity,
    ) -> Result<Svid, CaError> {
        let identity = Identity::spiffe(&self.trust_domain, namespace, service_account)?;
        let (not_before, not_after) = validity.check()?;
        if validity.not_after > self.not_after {
            return Err(CaError::Validity(format!(
                "the SVID would outlive the CA, which expires at {}",
                rfc3339(self.not_after)
            )));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        // Empty subject: rcgen then marks the SAN extension critical, as RFC 5280 requires.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        // rcgen derives the serial from the new public key: unique per issuance.
        let cert = params.signed_by(&key, &self.issuer)?;
        let info = svid::svid_info(cert.der())?;
        Ok(Svid {
            identity,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.bundle_pem.clone(),
            serial: info.serial,
            not_after: info.not_after,
        })
    }
}

/// An issued SVID with its key and the trust bundle, ready to write.
#[derive(Clone)]
pub struct Svid {
    pub identity: Identity,
    /// Leaf certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM (PKCS#8).
    pub key_pem: String,
    /// Trust bundle, PEM.
    pub ca_pem: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    pub not_after: SystemTime,
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial)
            .field("not_after", &rfc3339(self.not_after))
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// Writes `out/ca.crt` (0644), `out/tls.key` (0600), `out/tls.crt` (0644), each replaced
    /// atomically; `out` is created if missing. Between two renames a watcher can see a new key
    /// with the old certificate: it rejects that set (key mismatch) and picks up the complete
    /// one on its next poll, so each file being whole is what matters.
    pub fn write(&self, out: &Path) -> Result<(), CaError> {
        std::fs::create_dir_all(out).map_err(|source| CaError::Write {
            path: out.to_path_buf(),
            source,
        })?;
        write_file(&out.join(CA_CERT), self.ca_pem.as_bytes(), atomic::PUBLIC)?;
        write_file(&out.join(TLS_KEY), self.key_pem.as_bytes(), atomic::PRIVATE)?;
        write_file(
            &out.join(TLS_CERT),
            self.cert_pem.as_bytes(),
            atomic::PUBLIC,
        )
    }
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    atomic::write(path, contents, mode).map_err(|source| CaError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn read_file(dir: &Path, path: &Path, file: &'static str) -> Result<String, CaError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CaError::Missing {
            dir: dir.to_path_buf(),
            file,
        }),
        Err(source) => Err(CaError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The first PEM certificate block of `bundle`, as text (the one whose key signs).
fn first_pem_block(bundle: &str) -> Option<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = bundle.find(BEGIN)?;
    let len = bundle.get(start..)?.find(END)? + END.len();
    Some(format!("{}\n", bundle.get(start..start + len)?))
}

#[cfg(test)]
mod tests;
