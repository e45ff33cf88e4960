//! Kubernetes Secrets among the inputs as Istio's credential fetcher reads them for
//! `credentialName` (`pilot/pkg/credentials/kube/secrets.go`): a `kubernetes.io/tls` Secret
//! (`tls.crt`, `tls.key`, `ca.crt`) or a generic one (`tls.crt`/`tls.key`/`ca.crt`, or
//! `cert`/`key`/`cacert`); the CA may instead sit in a Secret named `<name>-cacert`. Values
//! come from `data` (base64) and `stringData` (plain text, which wins, as the API server
//! merges it).

use base64::Engine;
use serde_json::Value;

use crate::resource::{OtherObject, Resource};

/// What a credential Secret holds, as PEM text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSecret {
    /// Certificate chain (`tls.crt` / `cert`).
    pub cert: Option<Vec<u8>>,
    /// Private key (`tls.key` / `key`).
    pub key: Option<Vec<u8>>,
    /// Trusted CA bundle (`ca.crt` / `cacert`, or from `<name>-cacert`).
    pub ca: Option<Vec<u8>>,
}

/// Why a Secret cannot serve as a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("Secret {0}: data.{1} is not valid base64")]
    Base64(String, String),
    #[error("Secret {0} holds none of tls.crt, tls.key, ca.crt (or cert, key, cacert)")]
    Empty(String),
}

/// The keys Istio reads, first the TLS-secret ones, then the generic ones.
const CERT: [&str; 2] = ["tls.crt", "cert"];
const KEY: [&str; 2] = ["tls.key", "key"];
const CA: [&str; 2] = ["ca.crt", "cacert"];

/// The `v1` Secret `namespace/name` among `others`.
pub fn find<'a>(
    others: &'a [Resource<OtherObject>],
    namespace: &str,
    name: &str,
) -> Option<&'a Resource<OtherObject>> {
    others.iter().rev().find(|o| {
        o.spec.kind == "Secret"
            && o.api_version == "v1"
            && o.name() == name
            && o.namespace() == namespace
    })
}

/// The credential `name` of `namespace`: `None` when no such Secret is among the inputs.
pub fn tls_secret(
    others: &[Resource<OtherObject>],
    namespace: &str,
    name: &str,
) -> Option<Result<TlsSecret, SecretError>> {
    let secret = find(others, namespace, name)?;
    Some(read(secret).and_then(|mut s| {
        if s.ca.is_none()
            && let Some(ca) = find(others, namespace, &format!("{name}-cacert"))
        {
            s.ca = value(ca, &CA)?;
        }
        if s.cert.is_none() && s.key.is_none() && s.ca.is_none() {
            return Err(SecretError::Empty(format!("{namespace}/{name}")));
        }
        Ok(s)
    }))
}

fn read(secret: &Resource<OtherObject>) -> Result<TlsSecret, SecretError> {
    Ok(TlsSecret {
        cert: value(secret, &CERT)?,
        key: value(secret, &KEY)?,
        ca: value(secret, &CA)?,
    })
}

/// The first of `keys` the Secret holds, `stringData` before `data`.
fn value(secret: &Resource<OtherObject>, keys: &[&str]) -> Result<Option<Vec<u8>>, SecretError> {
    let body = &secret.spec.body;
    for key in keys {
        if let Some(Value::String(s)) = body.get("stringData").and_then(|d| d.get(*key)) {
            return Ok(Some(s.as_bytes().to_vec()));
        }
        if let Some(Value::String(s)) = body.get("data").and_then(|d| d.get(*key)) {
            // `kubectl get -o yaml` folds nothing, but hand-written YAML may wrap lines.
            let compact: String = s.split_ascii_whitespace().collect();
            return base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map(Some)
                .map_err(|_| {
                    SecretError::Base64(
                        format!("{}/{}", secret.namespace(), secret.name()),
                        (*key).to_owned(),
                    )
                });
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_str;

    fn others(yaml: &str) -> Vec<Resource<OtherObject>> {
        let loaded = load_str("secrets.yaml", yaml);
        loaded.resources.others
    }

    /// What `kubectl create secret generic client-credential --from-file=tls.key=…
    /// --from-file=tls.crt=… --from-file=ca.crt=…` makes (the Istio task's step), and a
    /// `kubernetes.io/tls` Secret with its CA in `<name>-cacert` and a `stringData` key.
    #[test]
    fn generic_and_tls_secrets_with_a_separate_ca() {
        let o = others(
            r#"
apiVersion: v1
kind: Secret
metadata: {name: client-credential, namespace: istio-system}
type: Opaque
data:
  tls.crt: Q0VSVA==
  tls.key: S0VZ
  ca.crt: Q0E=
---
apiVersion: v1
kind: Secret
metadata: {name: server, namespace: istio-system}
type: kubernetes.io/tls
data: {tls.crt: Q0VSVA==, tls.key: S0VZ}
stringData: {tls.key: PLAIN}
---
apiVersion: v1
kind: Secret
metadata: {name: server-cacert, namespace: istio-system}
data: {cacert: Q0E=}
"#,
        );
        let s = tls_secret(&o, "istio-system", "client-credential")
            .expect("found")
            .expect("valid");
        assert_eq!(s.cert.as_deref(), Some(&b"CERT"[..]));
        assert_eq!(s.key.as_deref(), Some(&b"KEY"[..]));
        assert_eq!(s.ca.as_deref(), Some(&b"CA"[..]));
        let s = tls_secret(&o, "istio-system", "server")
            .expect("found")
            .expect("valid");
        assert_eq!(s.key.as_deref(), Some(&b"PLAIN"[..]), "stringData wins");
        assert_eq!(s.ca.as_deref(), Some(&b"CA"[..]), "from server-cacert");
        // Another namespace's Secret is not this proxy's.
        assert!(tls_secret(&o, "default", "client-credential").is_none());
    }

    #[test]
    fn bad_base64_and_secrets_without_tls_keys_are_errors() {
        let o = others(
            r#"
apiVersion: v1
kind: Secret
metadata: {name: bad, namespace: default}
data: {tls.crt: "%%%"}
---
apiVersion: v1
kind: Secret
metadata: {name: registry, namespace: default}
type: kubernetes.io/dockerconfigjson
data: {.dockerconfigjson: e30=}
"#,
        );
        assert_eq!(
            tls_secret(&o, "default", "bad"),
            Some(Err(SecretError::Base64(
                "default/bad".into(),
                "tls.crt".into()
            )))
        );
        assert_eq!(
            tls_secret(&o, "default", "registry"),
            Some(Err(SecretError::Empty("default/registry".into())))
        );
    }
}
