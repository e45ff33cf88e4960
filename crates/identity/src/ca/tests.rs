use std::time::{Duration, SystemTime};

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_KEY_TYPE_EC_PUBLIC_KEY, OID_X509_EXT_SUBJECT_ALT_NAME};
use x509_parser::pem::parse_x509_pem;

use super::*;
use crate::files::IdentityFiles;
use crate::testutil::TempDir;

fn day() -> Validity {
    Validity::from_now(DEFAULT_SVID_TTL)
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[test]
fn root_is_a_p256_ca_for_ten_years() {
    let ca = Ca::generate("example.org").expect("ca");
    assert_eq!(ca.trust_domain(), "example.org");
    let (_, pem) = parse_x509_pem(ca.cert_pem().as_bytes()).expect("pem");
    let cert = pem.parse_x509().expect("x509");
    assert!(cert.is_ca());
    assert_eq!(
        cert.public_key().algorithm.algorithm,
        OID_KEY_TYPE_EC_PUBLIC_KEY
    );
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    let ten_years = CA_VALIDITY.as_secs() as i64;
    assert!((ten_years..=ten_years + 120).contains(&life), "{life}");
    let org = cert.subject().iter_organization().next().expect("O");
    assert_eq!(org.as_str().expect("utf8"), "example.org");
    let uris = crate::svid::spiffe_uris(&cert).expect("sans");
    assert_eq!(uris, vec!["spiffe://example.org"]);
}

#[test]
fn leaf_has_the_mesh_profile() {
    let ca = Ca::generate("cluster.local").expect("ca");
    let svid = ca.issue("default", "sleep", day()).expect("issue");
    assert_eq!(
        svid.identity.to_string(),
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    let (_, pem) = parse_x509_pem(svid.cert_pem.as_bytes()).expect("pem");
    let cert = pem.parse_x509().expect("x509");
    assert!(!cert.is_ca());
    assert_eq!(
        cert.subject().iter().count(),
        0,
        "empty subject, as Istio's"
    );
    let (_, ca_pem) = parse_x509_pem(ca.cert_pem().as_bytes()).expect("pem");
    let ca_cert = ca_pem.parse_x509().expect("x509");
    assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());

    let san_ext = cert
        .get_extension_unique(&OID_X509_EXT_SUBJECT_ALT_NAME)
        .expect("unique")
        .expect("SAN present");
    assert!(
        san_ext.critical,
        "SAN is critical when the subject is empty"
    );
    let ParsedExtension::SubjectAlternativeName(san) = san_ext.parsed_extension() else {
        panic!("SAN not parsed");
    };
    assert_eq!(
        san.general_names.len(),
        1,
        "URI SAN only: {:?}",
        san.general_names
    );
    assert!(matches!(
        san.general_names[0],
        GeneralName::URI("spiffe://cluster.local/ns/default/sa/sleep")
    ));

    let ku = cert.key_usage().expect("ku").expect("ku present").value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    assert!(!ku.key_cert_sign());
    let eku = cert
        .extended_key_usage()
        .expect("eku")
        .expect("eku present")
        .value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(
        cert.basic_constraints().expect("bc").is_some(),
        "CA:FALSE explicit"
    );

    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    let want = (DEFAULT_SVID_TTL + CLOCK_SKEW).as_secs() as i64;
    assert!((want - 5..=want + 5).contains(&life), "{life}");
    assert_eq!(svid.serial, crate::svid::hex(cert.raw_serial()));

    // A second issuance is a different certificate with a different serial.
    let again = ca.issue("default", "sleep", day()).expect("issue");
    assert_ne!(again.serial, svid.serial);
    assert_ne!(again.key_pem, svid.key_pem);
}

#[test]
fn init_writes_files_with_modes_and_refuses_to_overwrite() {
    let dir = TempDir::new("ca-init");
    let ca_dir = dir.path().join("ca");
    let ca = Ca::init(&ca_dir, "cluster.local", false).expect("init");
    let crt = std::fs::read_to_string(ca_dir.join(CA_CERT)).expect("ca.crt");
    assert_eq!(crt, ca.cert_pem());
    assert!(
        std::fs::read_to_string(ca_dir.join(CA_KEY))
            .expect("ca.key")
            .contains("PRIVATE KEY")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |name: &str| {
            std::fs::metadata(ca_dir.join(name))
                .expect("stat")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(CA_CERT), 0o644);
        assert_eq!(mode(CA_KEY), 0o600);
    }

    let err = Ca::init(&ca_dir, "cluster.local", false).expect_err("must refuse");
    assert!(matches!(err, CaError::Exists(_)), "{err}");
    assert!(err.is_usage());
    assert!(err.to_string().contains("--force"));
    // Unchanged after the refusal.
    assert_eq!(
        std::fs::read_to_string(ca_dir.join(CA_CERT)).expect("ca.crt"),
        crt
    );

    let replaced = Ca::init(&ca_dir, "cluster.local", true).expect("force");
    assert_ne!(replaced.cert_pem(), ca.cert_pem());

    // A key alone also blocks init: it may be the only copy of a CA's key.
    let lone = dir.path().join("lone");
    std::fs::create_dir_all(&lone).expect("mkdir");
    std::fs::write(lone.join(CA_KEY), "x").expect("write");
    assert!(matches!(
        Ca::init(&lone, "cluster.local", false),
        Err(CaError::Exists(_))
    ));
}

#[test]
fn load_round_trip_and_svid_dir() {
    let dir = TempDir::new("ca-load");
    let ca_dir = dir.path().join("ca");
    Ca::init(&ca_dir, "example.org", false).expect("init");
    let ca = Ca::load(&ca_dir).expect("load");
    assert_eq!(ca.trust_domain(), "example.org");
    let svid = ca.issue("prod", "api", day()).expect("issue");
    let out = dir.path().join("out");
    svid.write(&out).expect("write");
    let files = IdentityFiles::load(&out).expect("the written dir is a valid identity");
    assert_eq!(files.identity(), &svid.identity);
    assert_eq!(files.serial(), svid.serial);
    assert_eq!(
        std::fs::read_to_string(out.join(CA_CERT)).expect("ca.crt"),
        std::fs::read_to_string(ca_dir.join(CA_CERT)).expect("ca.crt"),
        "ca.crt is copied as is, so the SVID dir is self-contained"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |name: &str| {
            std::fs::metadata(out.join(name))
                .expect("stat")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(TLS_KEY), 0o600);
        assert_eq!(mode(TLS_CERT), 0o644);
        assert_eq!(mode(CA_CERT), 0o644);
    }
    let other = ca.with_trust_domain("other.td").expect("td");
    let svid = other.issue("a", "b", day()).expect("issue");
    assert_eq!(svid.identity.trust_domain(), "other.td");
}

#[test]
fn load_errors_are_clear() {
    let dir = TempDir::new("ca-load-errors");
    let missing = Ca::load(dir.path()).expect_err("no CA");
    assert!(
        matches!(missing, CaError::Missing { file: CA_CERT, .. }),
        "{missing}"
    );
    assert!(missing.is_usage());
    assert!(missing.to_string().contains("sluice ca init"));

    let a = dir.path().join("a");
    let b = dir.path().join("b");
    Ca::init(&a, "cluster.local", false).expect("init a");
    Ca::init(&b, "cluster.local", false).expect("init b");
    std::fs::copy(b.join(CA_KEY), a.join(CA_KEY)).expect("swap key");
    let mismatch = Ca::load(&a).expect_err("key of another CA");
    assert!(
        matches!(mismatch, CaError::KeyMismatch { .. }),
        "{mismatch}"
    );

    std::fs::write(b.join(CA_CERT), "not pem").expect("write");
    assert!(matches!(Ca::load(&b), Err(CaError::BadFile { .. })));

    // A leaf is not a CA.
    let ca = Ca::generate("cluster.local").expect("ca");
    let svid = ca.issue("n", "s", day()).expect("issue");
    let c = dir.path().join("c");
    std::fs::create_dir_all(&c).expect("mkdir");
    std::fs::write(c.join(CA_CERT), &svid.cert_pem).expect("write");
    std::fs::write(c.join(CA_KEY), &svid.key_pem).expect("write");
    let err = Ca::load(&c).expect_err("leaf as CA");
    assert!(err.to_string().contains("not a CA"), "{err}");
}

#[test]
fn refuses_bad_requests() {
    assert!(matches!(
        Ca::generate("Cluster.Local"),
        Err(CaError::Identity(_))
    ));
    let ca = Ca::generate("cluster.local").expect("ca");
    assert!(matches!(
        ca.issue("a/b", "s", day()),
        Err(CaError::Identity(_))
    ));
    assert!(matches!(
        ca.issue("n", "", day()),
        Err(CaError::Identity(_))
    ));
    let now = SystemTime::now();
    let backwards = Validity {
        not_before: now,
        not_after: now - Duration::from_secs(1),
    };
    assert!(matches!(
        ca.issue("n", "s", backwards),
        Err(CaError::Validity(_))
    ));
    let too_long = Validity::from_now(CA_VALIDITY + Duration::from_secs(3600));
    let err = ca.issue("n", "s", too_long).expect_err("outlives CA");
    assert!(err.to_string().contains("outlive"), "{err}");
    assert!(err.is_usage());
}

#[test]
fn past_validity_is_allowed_for_tests() {
    let ca = Ca::generate("cluster.local").expect("ca");
    let now = SystemTime::now();
    let svid = ca
        .issue(
            "n",
            "s",
            Validity {
                not_before: now - Duration::from_secs(7200),
                not_after: now - Duration::from_secs(3600),
            },
        )
        .expect("issue");
    assert!(secs(svid.not_after) <= secs(now - Duration::from_secs(3600)));
}

#[test]
fn debug_never_shows_keys() {
    let ca = Ca::generate("cluster.local").expect("ca");
    let svid = ca.issue("n", "s", day()).expect("issue");
    assert!(!format!("{ca:?}").contains("PRIVATE"));
    assert!(!format!("{svid:?}").contains("PRIVATE"));
}
