//! The Kubernetes Secrets of the inputs that `credentialName` can name, kept as files where
//! the compiled snapshot expects them (`sluice_compile::lower::credential`): only the
//! proxy's own namespace, as Istio reads credentials; in a directory private to the process
//! (0700, files 0600), removed when it exits. A file is replaced by a rename, and only when
//! its content changes, so the proxy reloads a credential exactly when the Secret changes.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sluice_compile::lower::CompileOptions;
use sluice_compile::lower::credential::{CA_FILE, CERT_FILE, KEY_FILE, secret_dir};
use sluice_model::Resources;
use sluice_model::kube::secret;

/// The credential files one configuration holds: (file, PEM) pairs, and the directories of
/// the Secrets they belong to.
#[derive(Debug, Default)]
pub struct Secrets {
    base: Option<PathBuf>,
    dirs: Vec<PathBuf>,
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Secrets {
    /// The Secrets of `resources` that hold a credential, for the proxy of `options`.
    pub fn of(resources: &Resources, options: &CompileOptions) -> Secrets {
        let Some(base) = &options.secrets_dir else {
            return Secrets::default();
        };
        let ns = &options.namespace;
        let mut out = Secrets {
            base: Some(base.clone()),
            ..Secrets::default()
        };
        for o in &resources.others {
            if o.spec.kind != "Secret" || o.namespace() != ns.as_str() {
                continue;
            }
            // A Secret that holds no credential (a registry token, a bad one) is not
            // written; a config naming it is told so by the compiler.
            let Some(Ok(s)) = secret::tls_secret(&resources.others, ns, o.name()) else {
                continue;
            };
            let dir = secret_dir(base, ns, o.name());
            for (part, file) in [(s.cert, CERT_FILE), (s.key, KEY_FILE), (s.ca, CA_FILE)] {
                if let Some(pem) = part {
                    out.files.push((dir.join(file), pem));
                }
            }
            out.dirs.push(dir);
        }
        out
    }

    /// Writes the files that changed and removes those of Secrets (or parts) no longer held.
    /// Call it just before the snapshot compiled with them is applied.
    pub fn write(&self) -> std::io::Result<()> {
        let Some(base) = &self.base else {
            return Ok(());
        };
        for (file, pem) in &self.files {
            if std::fs::read(file).ok().as_deref() == Some(pem.as_slice()) {
                continue;
            }
            let dir = file.parent().unwrap_or(base);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            let tmp = dir.join(".writing");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(pem)?;
            f.sync_all()?;
            std::fs::rename(&tmp, file)?;
        }
        self.prune(base)
    }

    /// Removes what no Secret of this configuration holds any more.
    fn prune(&self, base: &Path) -> std::io::Result<()> {
        let Ok(namespaces) = std::fs::read_dir(base) else {
            return Ok(());
        };
        for ns in namespaces.flatten() {
            for entry in std::fs::read_dir(ns.path())?.flatten() {
                let dir = entry.path();
                if !self.dirs.contains(&dir) {
                    std::fs::remove_dir_all(&dir)?;
                    continue;
                }
                for file in std::fs::read_dir(&dir)?.flatten() {
                    let file = file.path();
                    if !self.files.iter().any(|(f, _)| *f == file) {
                        std::fs::remove_file(&file)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn load(yaml: &str) -> Resources {
        sluice_model::load_str("secrets.yaml", yaml).resources
    }

    const SECRETS: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: client-credential, namespace: istio-system}
data: {tls.crt: Q0VSVA==, tls.key: S0VZ, ca.crt: Q0E=}
---
apiVersion: v1
kind: Secret
metadata: {name: other-namespace, namespace: default}
data: {tls.crt: Q0VSVA==, tls.key: S0VZ}
---
apiVersion: v1
kind: Secret
metadata: {name: registry, namespace: istio-system}
type: kubernetes.io/dockerconfigjson
data: {.dockerconfigjson: e30=}
"#;

    /// Only the proxy's namespace, only credentials, private modes; a changed Secret replaces
    /// its file (a new inode, which the TLS loader notices), a removed one is deleted.
    #[test]
    fn secrets_of_the_proxys_namespace_become_private_files() {
        let base = tempfile::tempdir().expect("tempdir");
        let mut options = CompileOptions::gateway();
        options.secrets_dir = Some(base.path().to_owned());
        Secrets::of(&load(SECRETS), &options)
            .write()
            .expect("write");
        let dir = base.path().join("istio-system/client-credential");
        assert_eq!(std::fs::read(dir.join("tls.crt")).expect("crt"), b"CERT");
        assert_eq!(std::fs::read(dir.join("ca.crt")).expect("ca"), b"CA");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("tls.key")), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert!(!base.path().join("default").exists());
        assert!(!base.path().join("istio-system/registry").exists());

        use std::os::unix::fs::MetadataExt;
        let inode = |p: &Path| std::fs::metadata(p).expect("meta").ino();
        let (crt, key) = (inode(&dir.join("tls.crt")), inode(&dir.join("tls.key")));
        let changed = SECRETS.replace(
            "tls.crt: Q0VSVA==, tls.key: S0VZ, ca.crt: Q0E=",
            "tls.crt: TkVX, tls.key: S0VZ",
        );
        Secrets::of(&load(&changed), &options)
            .write()
            .expect("write");
        assert_eq!(std::fs::read(dir.join("tls.crt")).expect("crt"), b"NEW");
        assert_ne!(inode(&dir.join("tls.crt")), crt, "replaced by a rename");
        assert_eq!(inode(&dir.join("tls.key")), key, "unchanged, untouched");
        assert!(
            !dir.join("ca.crt").exists(),
            "a part no longer held is removed"
        );

        Secrets::of(&load(""), &options).write().expect("write");
        assert!(!dir.exists());
    }
}
