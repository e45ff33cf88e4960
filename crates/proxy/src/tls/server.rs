//! TLS termination for chains with `ServerTls` SIMPLE or MUTUAL, and for mesh mTLS (a
//! sidecar's `ISTIO_MUTUAL`, or a server with `tls.mode: ISTIO_MUTUAL`) with the proxy's
//! workload identity.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use sluice_identity::IdentityFiles;
use sluice_snapshot::listener::{ServerTls, ServerTlsMode};
use tokio::sync::watch;

use super::{Error, load_certs, load_key, load_roots, provider, stamp};

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Key {
    mutual: bool,
    cert: PathBuf,
    key: PathBuf,
    ca: Option<PathBuf>,
    alpn: Vec<String>,
}

type Entry = (Vec<Option<SystemTime>>, Arc<ServerConfig>);

#[derive(Default)]
pub struct ServerConfigs {
    cache: Mutex<HashMap<Key, Entry>>,
    /// The mesh mTLS configuration. Built once: it reads the identity through the watcher at
    /// every handshake, so a rotated SVID or trust bundle needs no rebuild.
    mesh: Mutex<Option<Arc<ServerConfig>>>,
}

impl ServerConfigs {
    /// The rustls configuration of a chain. `default_alpn` applies when the chain sets none
    /// (HTTP chains offer h2 and http/1.1).
    pub fn get(
        &self,
        tls: &ServerTls,
        default_alpn: &[&str],
    ) -> Result<Arc<ServerConfig>, crate::Error> {
        let mutual = match tls.mode {
            ServerTlsMode::Simple => false,
            ServerTlsMode::Mutual => true,
            ServerTlsMode::IstioMutual => {
                return Err(crate::Error::NotSupported(
                    "ISTIO_MUTUAL is terminated with the workload identity (ServerConfigs::mesh)"
                        .into(),
                ));
            }
        };
        let alpn = if tls.alpn.is_empty() {
            default_alpn.iter().map(|s| s.to_string()).collect()
        } else {
            tls.alpn.clone()
        };
        let key = Key {
            mutual,
            cert: tls.certificate_chain.clone(),
            key: tls.private_key.clone(),
            ca: tls.ca_certificates.clone(),
            alpn,
        };
        let now = stamp(
            [key.cert.as_path(), key.key.as_path()]
                .into_iter()
                .chain(key.ca.as_deref()),
        );
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((stamped, config)) = cache.get(&key)
            && *stamped == now
        {
            return Ok(config.clone());
        }
        let config = Arc::new(build(&key)?);
        cache.insert(key, (now, config.clone()));
        Ok(config)
    }
}

impl ServerConfigs {
    /// The configuration that terminates mesh mTLS: presents this proxy's SVID, requires a
    /// client certificate that chains to the mesh trust bundle, offers the ALPN values Istio's
    /// sidecars use (`sluice_identity::server_config`). Without an identity there is none:
    /// mesh mTLS is refused, never accepted unverified.
    pub fn mesh(
        &self,
        identity: Option<&watch::Receiver<Arc<IdentityFiles>>>,
    ) -> Result<Arc<ServerConfig>, crate::Error> {
        let identity = identity.ok_or(crate::Error::NoIdentity)?;
        let mut mesh = self.mesh.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(config) = mesh.as_ref() {
            return Ok(config.clone());
        }
        let config = Arc::new(
            sluice_identity::server_config(identity.clone())
                .map_err(|e| crate::Error::TlsConfig(Error::Config(e.to_string())))?,
        );
        *mesh = Some(config.clone());
        Ok(config)
    }
}

fn build(key: &Key) -> Result<ServerConfig, Error> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if key.mutual {
        let ca = key
            .ca
            .as_deref()
            .ok_or_else(|| Error::Config("MUTUAL termination needs caCertificates".to_owned()))?;
        let roots = Arc::new(load_roots(ca)?);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(load_certs(&key.cert)?, load_key(&key.key)?)?;
    config.alpn_protocols = key.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(config)
}
