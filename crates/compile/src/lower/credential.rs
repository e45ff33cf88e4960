//! `credentialName` (and `caCertCredentialName`) as files the proxy loads: a Kubernetes Secret
//! of the proxy's own namespace among the inputs (Istio reads credentials from the gateway's
//! or workload's namespace only), written by the serving process under
//! [`CompileOptions::secrets_dir`](super::CompileOptions), else `<credentials_dir>/<name>/`.
//! The Secret wins, as the cluster's Secret is what Istio would read.

use std::path::{Path, PathBuf};

use sluice_model::kube::secret;

use super::Ctx;

/// File names inside a credential's directory (the layout of a mounted `kubernetes.io/tls`
/// Secret).
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
pub const CA_FILE: &str = "ca.crt";

/// Where the serving process writes the Secret `namespace/name` of the inputs.
pub fn secret_dir(base: &Path, namespace: &str, name: &str) -> PathBuf {
    namespace_dir(base, namespace).join(name)
}

/// Where the serving process writes the Secrets of `namespace`: one directory per Secret.
pub fn namespace_dir(base: &Path, namespace: &str) -> PathBuf {
    base.join(namespace)
}

/// The files of one credential; a part the Secret does not hold is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Files {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

/// The files of credential `name`, or why there are none (a sentence for a diagnostic).
pub(crate) fn lookup(cx: &Ctx<'_>, name: &str) -> Result<Files, String> {
    let ns = &cx.opts.namespace;
    if let Some(found) = secret::tls_secret(&cx.resources.others, ns, name) {
        let s = found.map_err(|e| e.to_string())?;
        let Some(base) = &cx.opts.secrets_dir else {
            return Err(format!(
                "credentialName {name:?} is the Secret {ns}/{name} among the inputs, but this command keeps no Secrets"
            ));
        };
        let dir = secret_dir(base, ns, name);
        let file = |held: bool, f: &str| held.then(|| dir.join(f));
        return Ok(Files {
            cert: file(s.cert.is_some(), CERT_FILE),
            key: file(s.key.is_some(), KEY_FILE),
            ca: file(s.ca.is_some(), CA_FILE),
        });
    }
    let Some(dir) = &cx.opts.credentials_dir else {
        return Err(format!(
            "credentialName {name:?} names no Secret of namespace {ns} among the inputs, and no credentials directory (<dir>/{name}/tls.crt, tls.key, ca.crt) is configured"
        ));
    };
    let base = dir.join(name);
    Ok(Files {
        cert: Some(base.join(CERT_FILE)),
        key: Some(base.join(KEY_FILE)),
        ca: Some(base.join(CA_FILE)),
    })
}
