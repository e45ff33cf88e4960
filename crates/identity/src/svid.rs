//! Reading an X.509-SVID: the SPIFFE ID in its URI SAN, its serial and validity. Pure parsing;
//! whether the certificate is trusted is decided elsewhere (files.rs at load, mtls.rs in the
//! handshake), and callers only ask for an identity once that has been decided.

use std::time::SystemTime;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::identity::{Identity, IdentityError};

/// Why a certificate does not carry a usable SPIFFE identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("not a parsable X.509 certificate: {0}")]
    Parse(String),
    #[error("certificate has no spiffe:// URI SAN")]
    NoSpiffeId,
    /// The X.509-SVID spec allows exactly one; several would make the identity ambiguous.
    #[error("certificate has {0} spiffe:// URI SANs; an SVID has exactly one")]
    SeveralSpiffeIds(usize),
    #[error("certificate's URI SAN is not a mesh identity: {0}")]
    Identity(#[from] IdentityError),
}

/// What sluice needs from a leaf certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvidInfo {
    /// The identity in its single `spiffe://` URI SAN.
    pub identity: Identity,
    /// The serial number, lowercase hex without separators.
    pub serial: String,
    /// End of the validity period.
    pub not_after: SystemTime,
}

/// Parses `der` and returns its identity, serial and expiry.
pub fn svid_info(der: &[u8]) -> Result<SvidInfo, SvidError> {
    let cert = parse(der)?;
    Ok(SvidInfo {
        identity: identity_of(&cert)?,
        serial: hex(cert.tbs_certificate.raw_serial()),
        not_after: crate::clock::from_unix(cert.validity().not_after.timestamp()),
    })
}

/// The identity in the single `spiffe://` URI SAN of the certificate `der`.
pub fn spiffe_identity(der: &[u8]) -> Result<Identity, SvidError> {
    identity_of(&parse(der)?)
}

/// The `spiffe://` URI SANs of a parsed certificate (any number, unparsed), for callers that
/// need to describe a certificate, e.g. a CA's own trust-domain ID.
pub(crate) fn spiffe_uris<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Parse(e.to_string()))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    // Scheme comparison is case-insensitive here so that `SPIFFE://...` counts
                    // as a (then rejected) SPIFFE ID instead of being silently ignored.
                    GeneralName::URI(uri) if has_spiffe_scheme(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

fn has_spiffe_scheme(uri: &str) -> bool {
    uri.get(..crate::identity::SPIFFE_SCHEME.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(crate::identity::SPIFFE_SCHEME))
}

fn identity_of(cert: &X509Certificate<'_>) -> Result<Identity, SvidError> {
    match spiffe_uris(cert)?.as_slice() {
        [] => Err(SvidError::NoSpiffeId),
        [one] => Ok(one.parse()?),
        several => Err(SvidError::SeveralSpiffeIds(several.len())),
    }
}

pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, SvidError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((_, _)) => Err(SvidError::Parse("trailing data after certificate".into())),
        Err(e) => Err(SvidError::Parse(e.to_string())),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn cert_with_uris(uris: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().expect("ia5")))
            .collect();
        params.self_signed(&key).expect("sign").der().to_vec()
    }

    #[test]
    fn exactly_one_spiffe_uri() {
        let id = "spiffe://cluster.local/ns/default/sa/sleep";
        let der = cert_with_uris(&[id]);
        let info = svid_info(&der).expect("svid");
        assert_eq!(info.identity.to_string(), id);
        assert!(!info.serial.is_empty());
        // Other URI SANs do not make a SPIFFE ID ambiguous.
        let der = cert_with_uris(&["https://example.com/x", id]);
        assert_eq!(
            spiffe_identity(&der).map(|i| i.to_string()),
            Ok(id.to_string())
        );
    }

    #[test]
    fn rejects_missing_ambiguous_and_malformed() {
        let a = "spiffe://cluster.local/ns/a/sa/a";
        let b = "spiffe://cluster.local/ns/b/sa/b";
        assert_eq!(
            spiffe_identity(&cert_with_uris(&[])),
            Err(SvidError::NoSpiffeId)
        );
        assert_eq!(
            spiffe_identity(&cert_with_uris(&["https://x"])),
            Err(SvidError::NoSpiffeId)
        );
        assert_eq!(
            spiffe_identity(&cert_with_uris(&[a, b])),
            Err(SvidError::SeveralSpiffeIds(2))
        );
        assert!(matches!(
            spiffe_identity(&cert_with_uris(&["SPIFFE://cluster.local/ns/a/sa/a"])),
            Err(SvidError::Identity(_))
        ));
        assert!(matches!(
            spiffe_identity(&cert_with_uris(&["spiffe://cluster.local/a"])),
            Err(SvidError::Identity(_))
        ));
        assert!(matches!(
            spiffe_identity(b"not a cert"),
            Err(SvidError::Parse(_))
        ));
        let mut trailing = cert_with_uris(&[a]);
        trailing.push(0);
        assert!(matches!(
            spiffe_identity(&trailing),
            Err(SvidError::Parse(_))
        ));
    }
}
