//! The certificates a proxy presents and trusts, as the admin API's `/certs` lists them and
//! `sluice proxy-config secret` prints them (istioctl's `proxy-config secret`): one row per
//! resource, named as Istio's SDS names it — `kubernetes://<credentialName>` (and
//! `…-cacert` for its CA) for a credential from a Secret or `--credentials-dir`, `default` and
//! `ROOTCA` for the workload identity, `file-cert:<cert>~<key>` / `file-root:<bundle>` for
//! files a resource names directly.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sluice_identity::ca::{CA_CERT, TLS_CERT};
use sluice_identity::clock::rfc3339;
use sluice_snapshot::Snapshot;
use sluice_snapshot::cluster::Trust;

/// Largest certificate file read (a bundle of a few hundred CAs fits).
const MAX_FILE: u64 = 4 * 1024 * 1024;

/// One row of `proxy-config secret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertView {
    pub resource_name: String,
    /// `Cert Chain` or `CA`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `ACTIVE` once the file parses as a certificate, else `WARMING` (Envoy's word for a
    /// secret not yet delivered).
    pub status: String,
    /// The certificate is within its validity now.
    pub valid_cert: bool,
    /// Decimal, as istioctl prints it; empty when the file could not be read.
    pub serial_number: String,
    pub not_after: String,
    pub not_before: String,
    /// Why the file could not be read, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where the proxy's credentials live, to name rows as Istio does.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Directories whose `<name>/tls.crt…` are credentials (`--credentials-dir`, and each
    /// namespace directory of the Secrets written from the inputs).
    pub credential_dirs: Vec<PathBuf>,
    /// `--identity-dir`.
    pub identity_dir: Option<PathBuf>,
}

const CHAIN: &str = "Cert Chain";
const CA: &str = "CA";

/// Every certificate `snapshot` uses, plus the workload identity's, named and read now.
pub fn list(snapshot: &Snapshot, sources: &Sources, now: SystemTime) -> Vec<CertView> {
    let mut files: BTreeMap<String, (&'static str, PathBuf)> = BTreeMap::new();
    let mut add = |name: String, kind, file: &Path| {
        files.entry(name).or_insert((kind, file.to_owned()));
    };
    if let Some(dir) = &sources.identity_dir {
        add("default".into(), CHAIN, &dir.join(TLS_CERT));
        add("ROOTCA".into(), CA, &dir.join(CA_CERT));
    }
    for tls in snapshot.clusters.values().filter_map(|c| c.tls.as_ref()) {
        if let (Some(cert), Some(key)) = (&tls.client_certificate, &tls.private_key) {
            add(chain_name(sources, cert, key), CHAIN, cert);
        }
        if let Trust::File(ca) = &tls.trust {
            add(root_name(sources, ca), CHAIN, ca);
        }
    }
    for chain in snapshot.listeners.iter().flat_map(|l| &l.chains) {
        let Some(tls) = &chain.tls else { continue };
        add(
            chain_name(sources, &tls.certificate_chain, &tls.private_key),
            CHAIN,
            &tls.certificate_chain,
        );
        if let Some(ca) = &tls.ca_certificates {
            add(root_name(sources, ca), CHAIN, ca);
        }
    }
    files
        .into_iter()
        .map(|(name, (kind, file))| view(name, kind, &file, now))
        .collect()
}

/// The credential `name` when `file` is `<dir>/<name>/<file>` of a credential directory.
fn credential(sources: &Sources, file: &Path) -> Option<String> {
    let dir = file.parent()?;
    let base = dir.parent()?;
    sources
        .credential_dirs
        .iter()
        .any(|d| d == base)
        .then(|| dir.file_name()?.to_str().map(str::to_owned))?
}

fn chain_name(sources: &Sources, cert: &Path, key: &Path) -> String {
    match credential(sources, cert) {
        Some(name) => format!("kubernetes://{name}"),
        None => format!("file-cert:{}~{}", cert.display(), key.display()),
    }
}

fn root_name(sources: &Sources, ca: &Path) -> String {
    match credential(sources, ca) {
        Some(name) => format!("kubernetes://{name}-cacert"),
        None => format!("file-root:{}", ca.display()),
    }
}

fn view(resource_name: String, kind: &str, file: &Path, now: SystemTime) -> CertView {
    let mut row = CertView {
        resource_name,
        kind: kind.to_owned(),
        status: "WARMING".into(),
        valid_cert: false,
        serial_number: String::new(),
        not_after: String::new(),
        not_before: String::new(),
        error: None,
    };
    match first_certificate(file) {
        Ok((serial, not_before, not_after)) => {
            row.status = "ACTIVE".into();
            row.valid_cert = not_before <= now && now <= not_after;
            row.serial_number = serial;
            row.not_after = rfc3339(not_after);
            row.not_before = rfc3339(not_before);
        }
        Err(e) => row.error = Some(format!("{}: {e}", file.display())),
    }
    row
}

/// The serial (decimal) and validity of the first certificate in the PEM file.
fn first_certificate(file: &Path) -> Result<(String, SystemTime, SystemTime), String> {
    let mut pem = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_FILE).read_to_end(&mut pem))
        .map_err(|e| e.to_string())?;
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| e.to_string())?;
    let cert = block.parse_x509().map_err(|e| e.to_string())?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        let magnitude = Duration::from_secs(secs.unsigned_abs());
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + magnitude
        } else {
            SystemTime::UNIX_EPOCH - magnitude
        }
    };
    let validity = cert.validity();
    Ok((
        cert.serial.to_string(),
        at(validity.not_before),
        at(validity.not_after),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_test_support::{TempDir, TestCa};

    /// A credential written from a Secret and a server certificate named by file, each with
    /// its CA; a file that is not there is `WARMING`, with the reason.
    #[test]
    fn rows_are_named_as_istio_names_sds_resources() {
        let dir = TempDir::new("certs");
        let ca = TestCa::new("example.com");
        let secrets = dir.join("default");
        let cred = secrets.join("client-credential");
        std::fs::create_dir_all(&cred).expect("dir");
        let client = ca.client_cert("client.example.com", None);
        std::fs::write(cred.join("tls.crt"), &client.cert_pem).expect("write");
        std::fs::write(cred.join("ca.crt"), ca.cert_pem()).expect("write");
        let server = ca.server_cert(&["api.example.com"]);
        std::fs::write(dir.join("server.pem"), &server.cert_pem).expect("write");
        let snapshot: Snapshot = serde_json::from_value(serde_json::json!({
            "role": "gateway", "labels": {}, "outbound_policy": "REGISTRY_ONLY",
            "access_log": {"path": null, "json": false},
            "listeners": [{"name": "0.0.0.0_443", "port": 443, "chains": [{
                "name": "s", "match": {"transport": "tls", "server_names": []},
                "tls": {"mode": "SIMPLE", "certificate_chain": dir.join("server.pem"),
                        "private_key": dir.join("server.key")},
                "app": {"tcp": {"routes": []}}}]}],
            "clusters": {"c": {
                "name": "c", "service": "a", "port": 443, "discovery": "black_hole",
                "connect_timeout": "10s", "lb": "LEAST_REQUEST", "limits": {},
                "tls": {"mode": "MUTUAL", "trust": {"file": cred.join("ca.crt")},
                        "client_certificate": cred.join("tls.crt"),
                        "private_key": cred.join("tls.key")}}},
        }))
        .expect("snapshot");
        let sources = Sources {
            credential_dirs: vec![secrets.clone()],
            identity_dir: Some(dir.join("no-identity")),
        };
        let rows = list(&snapshot, &sources, SystemTime::now());
        let row = |name: &str| {
            rows.iter()
                .find(|r| r.resource_name == name)
                .unwrap_or_else(|| panic!("{name} in {rows:#?}"))
        };
        let c = row("kubernetes://client-credential");
        assert_eq!(
            (c.kind.as_str(), c.status.as_str(), c.valid_cert),
            ("Cert Chain", "ACTIVE", true)
        );
        assert!(c.serial_number.bytes().all(|b| b.is_ascii_digit()), "{c:?}");
        assert!(
            c.not_after.ends_with('Z') && c.not_before < c.not_after,
            "{c:?}"
        );
        assert_eq!(
            row("kubernetes://client-credential-cacert").status,
            "ACTIVE"
        );
        let file = format!(
            "file-cert:{}~{}",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        );
        assert_eq!(row(&file).status, "ACTIVE");
        let missing = row("default");
        assert_eq!(
            (missing.status.as_str(), missing.valid_cert),
            ("WARMING", false)
        );
        assert!(missing.error.is_some());
        assert_eq!(row("ROOTCA").kind, "CA");
        assert_eq!(rows.len(), 5);
        // Outside its validity (here: before it began), a certificate is shown, not valid.
        let before = SystemTime::UNIX_EPOCH + Duration::from_secs(86_400);
        assert!(
            !list(&snapshot, &sources, before)
                .iter()
                .any(|r| r.valid_cert)
        );
    }
}
