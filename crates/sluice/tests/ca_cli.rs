//! `sluice ca init` / `sluice ca issue` through the real binary, against the contract in
//! DESIGN.md: the files, their permissions, the SPIFFE URI SAN (read back with x509-parser,
//! independently of sluice's own parsing) and the exit codes.

use std::path::Path;
use std::process::{Command, Output};

use sluice_test_support::TempDir;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

/// Every `SLUICE_<FLAG>` the ca subcommands read, cleared so the caller's environment cannot
/// supply a flag a test leaves out on purpose.
const FLAG_ENV: &[&str] = &[
    "SLUICE_DIR",
    "SLUICE_TRUST_DOMAIN",
    "SLUICE_FORCE",
    "SLUICE_NAMESPACE",
    "SLUICE_SERVICE_ACCOUNT",
    "SLUICE_OUT",
    "SLUICE_TTL",
];

fn sluice(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args);
    for var in FLAG_ENV {
        cmd.env_remove(var);
    }
    cmd.output().expect("running the sluice binary")
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn ok(args: &[&str]) -> Output {
    let out = sluice(args);
    assert_eq!(
        code(&out),
        0,
        "sluice {args:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn usage_error(args: &[&str]) {
    let out = sluice(args);
    assert_eq!(
        code(&out),
        2,
        "sluice {args:?} must exit 2\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// What a test needs to know about a PEM certificate file.
struct CertFacts {
    is_ca: bool,
    uris: Vec<String>,
    dns_names: usize,
    lifetime_secs: i64,
}

fn read_cert(path: &Path) -> CertFacts {
    let pem_text = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, pem) = parse_x509_pem(&pem_text).expect("PEM");
    let cert = pem.parse_x509().expect("X.509");
    let mut uris = Vec::new();
    let mut dns_names = 0;
    if let Some(san) = cert
        .subject_alternative_name()
        .expect("SAN extension parses")
    {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push((*u).to_string()),
                GeneralName::DNSName(_) => dns_names += 1,
                _ => {}
            }
        }
    }
    CertFacts {
        is_ca: cert.is_ca(),
        uris,
        dns_names,
        lifetime_secs: cert.validity().not_after.timestamp()
            - cert.validity().not_before.timestamp(),
    }
}

#[test]
fn init_then_issue_writes_the_tls_secret_layout() {
    let tmp = TempDir::new("ca-cli");
    let ca = tmp.join("ca");
    let out = tmp.join("sleep");
    ok(&["ca", "init", "--dir", s(&ca)]);

    let root = read_cert(&ca.join("ca.crt"));
    assert!(root.is_ca);
    assert_eq!(root.uris, vec!["spiffe://cluster.local".to_string()]);
    #[cfg(unix)]
    {
        assert_eq!(mode(&ca.join("ca.crt")), 0o644);
        assert_eq!(mode(&ca.join("ca.key")), 0o600);
    }

    ok(&[
        "ca",
        "issue",
        "--dir",
        s(&ca),
        "--namespace",
        "default",
        "--service-account",
        "sleep",
        "--out",
        s(&out),
    ]);
    let leaf = read_cert(&out.join("tls.crt"));
    assert!(!leaf.is_ca);
    assert_eq!(
        leaf.uris,
        vec!["spiffe://cluster.local/ns/default/sa/sleep".to_string()]
    );
    assert_eq!(leaf.dns_names, 0, "URI SAN only");
    // 24h by default, plus the small backdating for clock skew.
    assert!(
        (24 * 3600..=24 * 3600 + 600).contains(&leaf.lifetime_secs),
        "{}",
        leaf.lifetime_secs
    );
    assert!(
        std::fs::read_to_string(out.join("tls.key"))
            .expect("tls.key")
            .contains("PRIVATE KEY")
    );
    assert_eq!(
        std::fs::read(out.join("ca.crt")).expect("out/ca.crt"),
        std::fs::read(ca.join("ca.crt")).expect("ca/ca.crt"),
        "ca.crt is copied so the dir is self-contained"
    );
    #[cfg(unix)]
    {
        assert_eq!(mode(&out.join("tls.key")), 0o600);
        assert_eq!(mode(&out.join("tls.crt")), 0o644);
        assert_eq!(mode(&out.join("ca.crt")), 0o644);
    }
}

#[test]
fn trust_domain_and_ttl_flags() {
    let tmp = TempDir::new("ca-cli-td");
    let ca = tmp.join("ca");
    let out = tmp.join("api");
    ok(&[
        "ca",
        "init",
        "--dir",
        s(&ca),
        "--trust-domain",
        "example.org",
    ]);
    assert_eq!(
        read_cert(&ca.join("ca.crt")).uris,
        vec!["spiffe://example.org".to_string()]
    );
    ok(&[
        "ca",
        "issue",
        "--dir",
        s(&ca),
        "--namespace",
        "prod",
        "--service-account",
        "api",
        "--out",
        s(&out),
        "--ttl",
        "1h",
    ]);
    let leaf = read_cert(&out.join("tls.crt"));
    assert_eq!(
        leaf.uris,
        vec!["spiffe://example.org/ns/prod/sa/api".to_string()]
    );
    assert!(
        (3600..=3600 + 600).contains(&leaf.lifetime_secs),
        "{}",
        leaf.lifetime_secs
    );
}

#[test]
fn init_refuses_to_replace_a_ca_without_force() {
    let tmp = TempDir::new("ca-cli-force");
    let ca = tmp.join("ca");
    ok(&["ca", "init", "--dir", s(&ca)]);
    let before = std::fs::read(ca.join("ca.crt")).expect("ca.crt");
    usage_error(&["ca", "init", "--dir", s(&ca)]);
    assert_eq!(std::fs::read(ca.join("ca.crt")).expect("ca.crt"), before);
    ok(&["ca", "init", "--dir", s(&ca), "--force"]);
    assert_ne!(std::fs::read(ca.join("ca.crt")).expect("ca.crt"), before);
}

#[test]
fn missing_or_bad_arguments_exit_2() {
    let tmp = TempDir::new("ca-cli-usage");
    let ca = tmp.join("ca");
    let out = tmp.join("out");
    usage_error(&["ca", "init"]);
    usage_error(&["ca", "issue", "--dir", s(&ca)]);
    usage_error(&[
        "ca",
        "issue",
        "--dir",
        s(&ca),
        "--namespace",
        "default",
        "--out",
        s(&out),
    ]);
    // No CA in --dir yet.
    usage_error(&[
        "ca",
        "issue",
        "--dir",
        s(&ca),
        "--namespace",
        "default",
        "--service-account",
        "sleep",
        "--out",
        s(&out),
    ]);
    ok(&["ca", "init", "--dir", s(&ca)]);
    usage_error(&[
        "ca",
        "init",
        "--dir",
        s(&tmp.join("x")),
        "--trust-domain",
        "Bad_TD:1",
    ]);
    // Each bad value in place of a good one (a repeated flag would be clap's error, not ours).
    for (ns, sa, ttl) in [
        ("a/b", "sleep", "24h"),
        ("default", "", "24h"),
        ("default", "sleep", "1x"),
        ("default", "sleep", "0s"),
    ] {
        usage_error(&[
            "ca",
            "issue",
            "--dir",
            s(&ca),
            "--namespace",
            ns,
            "--service-account",
            sa,
            "--out",
            s(&out),
            "--ttl",
            ttl,
        ]);
    }
    assert!(
        !out.join("tls.key").exists(),
        "nothing written on a usage error"
    );
}
