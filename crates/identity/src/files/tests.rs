use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, Issuer, KeyPair, SanType};

use super::*;
use crate::ca::{Ca, DEFAULT_SVID_TTL, Svid, Validity};
use crate::testutil::TempDir;

fn day() -> Validity {
    Validity::from_now(DEFAULT_SVID_TTL)
}

fn from_svid(svid: &Svid) -> Result<IdentityFiles, FilesError> {
    IdentityFiles::from_pem(
        svid.cert_pem.as_bytes(),
        svid.key_pem.as_bytes(),
        svid.ca_pem.as_bytes(),
    )
}

#[test]
fn loads_a_valid_dir() {
    let dir = TempDir::new("files-ok");
    let ca = Ca::generate("cluster.local").expect("ca");
    let svid = ca.issue("default", "sleep", day()).expect("issue");
    svid.write(dir.path()).expect("write");
    let files = IdentityFiles::load(dir.path()).expect("load");
    assert_eq!(
        files.identity().principal(),
        "cluster.local/ns/default/sa/sleep"
    );
    assert_eq!(files.serial(), svid.serial);
    assert_eq!(files.not_after(), svid.not_after);
    assert_eq!(files.cert_chain().len(), 1);
    assert_eq!(files.trust_bundle().len(), 1);
    assert_eq!(files.roots().len(), 1);
    assert!(files.not_after() > SystemTime::now());
    assert!(!format!("{files:?}").contains("PRIVATE"));
}

#[test]
fn refuses_expired_and_not_yet_valid() {
    let ca = Ca::generate("cluster.local").expect("ca");
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let expired = ca
        .issue(
            "n",
            "s",
            Validity {
                not_before: now - 2 * hour,
                not_after: now - hour,
            },
        )
        .expect("issue");
    let err = from_svid(&expired).expect_err("expired");
    assert!(matches!(err, FilesError::Expired { .. }), "{err}");
    assert!(err.to_string().contains("expired at"), "{err}");

    let future = ca
        .issue(
            "n",
            "s",
            Validity {
                not_before: now + hour,
                not_after: now + 2 * hour,
            },
        )
        .expect("issue");
    let err = from_svid(&future).expect_err("not yet valid");
    assert!(matches!(err, FilesError::NotYetValid { .. }), "{err}");
}

#[test]
fn refuses_other_ca_and_mismatched_key() {
    let ca = Ca::generate("cluster.local").expect("ca");
    let other = Ca::generate("cluster.local").expect("other ca");
    let svid = ca.issue("n", "s", day()).expect("issue");
    let err = IdentityFiles::from_pem(
        svid.cert_pem.as_bytes(),
        svid.key_pem.as_bytes(),
        other.cert_pem().as_bytes(),
    )
    .expect_err("other CA");
    assert!(matches!(err, FilesError::UnknownIssuer { .. }), "{err}");
    assert!(err.to_string().contains("not signed by a CA in ca.crt"));

    let second = ca.issue("n", "s", day()).expect("issue");
    let err = IdentityFiles::from_pem(
        svid.cert_pem.as_bytes(),
        second.key_pem.as_bytes(),
        svid.ca_pem.as_bytes(),
    )
    .expect_err("mismatch");
    assert!(matches!(err, FilesError::KeyMismatch { .. }), "{err}");
    assert_eq!(err.to_string(), "tls.key is not the private key of tls.crt");
}

#[test]
fn bundle_with_old_and_new_root_trusts_both() {
    let old = Ca::generate("cluster.local").expect("old");
    let new = Ca::generate("cluster.local").expect("new");
    let bundle = format!("{}{}", old.cert_pem(), new.cert_pem());
    for ca in [&old, &new] {
        let svid = ca.issue("n", "s", day()).expect("issue");
        let files = IdentityFiles::from_pem(
            svid.cert_pem.as_bytes(),
            svid.key_pem.as_bytes(),
            bundle.as_bytes(),
        )
        .expect("trusted by the two-root bundle");
        assert_eq!(files.trust_bundle().len(), 2);
    }
}

#[test]
fn refuses_half_written_and_empty_files() {
    let ca = Ca::generate("cluster.local").expect("ca");
    let svid = ca.issue("n", "s", day()).expect("issue");
    let half = &svid.cert_pem[..svid.cert_pem.len() / 2];
    let err = IdentityFiles::from_pem(
        half.as_bytes(),
        svid.key_pem.as_bytes(),
        svid.ca_pem.as_bytes(),
    )
    .expect_err("half a cert");
    assert!(
        matches!(
            err,
            FilesError::BadPem { .. } | FilesError::NoCertificate { .. }
        ),
        "{err}"
    );
    let half_key = &svid.key_pem[..svid.key_pem.len() / 2];
    let err = IdentityFiles::from_pem(
        svid.cert_pem.as_bytes(),
        half_key.as_bytes(),
        svid.ca_pem.as_bytes(),
    )
    .expect_err("half a key");
    assert!(matches!(err, FilesError::BadKey { .. }), "{err}");
    let err = IdentityFiles::from_pem(svid.cert_pem.as_bytes(), svid.key_pem.as_bytes(), b"")
        .expect_err("empty bundle");
    assert!(matches!(err, FilesError::NoCertificate { .. }), "{err}");
}

#[test]
fn refuses_a_certificate_without_a_spiffe_id() {
    // A CA-signed server certificate with a DNS SAN only: trusted, but not a workload identity.
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::DnsName("gw.example".try_into().expect("dns"))];
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let err = IdentityFiles::from_pem(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
        ca_cert.pem().as_bytes(),
    )
    .expect_err("no SPIFFE ID");
    assert!(
        matches!(
            err,
            FilesError::Svid {
                source: crate::svid::SvidError::NoSpiffeId,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn missing_file_names_the_path() {
    let dir = TempDir::new("files-missing");
    let err = IdentityFiles::load(dir.path()).expect_err("empty dir");
    assert!(matches!(err, FilesError::Read { .. }), "{err}");
    assert!(err.to_string().contains("tls.crt"), "{err}");
}
