//! Workload identity for sluice's mesh hop.
//!
//! - [`Identity`]: a parsed SPIFFE ID (`spiffe://<td>/ns/<ns>/sa/<sa>`); authz compares these.
//! - [`ca`]: the mesh CA behind `sluice ca init` / `sluice ca issue`.
//! - [`IdentityFiles`]: one validated `tls.crt` + `tls.key` + `ca.crt` set (the Kubernetes
//!   TLS-secret / csi-driver-spiffe layout); [`IdentityWatcher`] re-reads it on change.
//! - [`mtls`]: rustls configs for the gateway and sidecar ends that follow the watcher, and
//!   [`peer_identity`] to learn who connected.
//! - [`cli`]: clap arguments and [`run_ca`] for the binary.
//!
//! Identity comes only from certificates a handshake has verified, never from headers.

mod atomic;
pub mod ca;
pub mod cli;
pub mod clock;
pub mod files;
pub mod identity;
pub mod mtls;
pub mod svid;
pub mod watch;

use std::sync::Arc;

pub use ca::{Ca, CaError, Svid, Validity};
pub use cli::{CaArgs, CaCommand, run_ca};
pub use files::{FilesError, IdentityFiles};
pub use identity::{Identity, IdentityError};
pub use mtls::{
    ExpectedPeer, IdentitySource, MtlsError, client_config, peer_identity, server_config,
};
pub use watch::{IdentityWatcher, WatchError};

/// The ring provider, named explicitly so configs never depend on which rustls provider
/// features other crates in the same build enabled.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
pub(crate) mod testutil {
    //! A scratch dir removed on drop (the crate has no tempfile dependency).

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};

    static NEXT: AtomicU64 = AtomicU64::new(0);

    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("sluice-identity-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("creating a temp dir");
            TempDir(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
