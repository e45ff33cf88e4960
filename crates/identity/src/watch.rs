//! Re-reading the identity dir when its files change, so certificates rotate without a restart.
//!
//! Polling, not inotify: Kubernetes updates secret and CSI volumes by writing a new timestamped
//! dir and renaming the `..data` symlink over the old one. The files we open (`tls.crt` ->
//! `..data/tls.crt`) are never written themselves, so watches on them see nothing; a poll that
//! follows the symlinks does. Each poll compares modification time, length and a hash of the
//! content (mtime alone has one-second resolution on some file systems, and a same-size rewrite
//! within that second would go unnoticed).
//!
//! Only a complete, valid set is published (one `Arc<IdentityFiles>` through a
//! `tokio::sync::watch` channel, swapped whole). A half-written or mismatched set keeps the
//! previous one and is logged once; it is picked up as soon as the files become consistent.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::ca::{CA_CERT, TLS_CERT, TLS_KEY};
use crate::clock::rfc3339;
use crate::files::{FilesError, IdentityFiles, read_set};

/// Starts watching an identity dir; see [`IdentityWatcher::start`].
#[derive(Debug)]
pub struct IdentityWatcher;

/// Why the watcher did not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("the identity watcher must be started inside a tokio runtime")]
    NoRuntime,
    #[error("no usable identity to start with: {0}")]
    Initial(#[from] FilesError),
}

impl IdentityWatcher {
    /// Loads `dir` now (an error if that set is not valid: there is nothing to serve yet), then
    /// polls it every `poll_interval` (at least 10 ms) on the current tokio runtime. The
    /// receiver always holds the latest valid set. The polling task ends when every receiver
    /// (including those inside configs from [`crate::mtls`]) has been dropped.
    pub fn start(
        dir: impl Into<PathBuf>,
        poll_interval: Duration,
    ) -> Result<watch::Receiver<Arc<IdentityFiles>>, WatchError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| WatchError::NoRuntime)?;
        let dir = dir.into();
        // Reading three small files once at startup is fine on the caller's thread.
        let contents = read_set(&dir)?;
        let stamp = stamp_set(&dir, &contents);
        let files = IdentityFiles::from_dir_contents(&dir, &contents)?;
        tracing::info!(
            dir = %dir.display(),
            identity = %files.identity(),
            serial = files.serial(),
            not_after = %rfc3339(files.not_after()),
            "loaded workload identity"
        );
        let (tx, rx) = watch::channel(Arc::new(files));
        let poller = Poller {
            dir,
            tx,
            published: stamp,
            rejected: None,
            last_complaint: None,
            warned_expired: false,
        };
        runtime.spawn(poller.run(poll_interval.max(Duration::from_millis(10))));
        Ok(rx)
    }
}

/// What identifies one version of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    mtime: Option<SystemTime>,
    len: u64,
    hash: u64,
}

type SetStamp = [FileStamp; 3];

/// The stamps of `tls.crt`, `tls.key`, `ca.crt`, from the bytes that were read (so the stamp
/// describes exactly what gets parsed) and their modification times.
fn stamp_set(dir: &Path, contents: &[Vec<u8>; 3]) -> SetStamp {
    let stamp = |name: &str, bytes: &Vec<u8>| {
        // Not a security boundary: anyone who can write these files already owns the identity.
        // SipHash with fixed keys is deterministic within the process, which is all we need.
        let mut hasher = DefaultHasher::new();
        bytes.hash(&mut hasher);
        FileStamp {
            // metadata() follows symlinks, so this is the mtime of the current `..data` target.
            mtime: std::fs::metadata(dir.join(name))
                .and_then(|m| m.modified())
                .ok(),
            len: bytes.len() as u64,
            hash: hasher.finish(),
        }
    };
    [
        stamp(TLS_CERT, &contents[0]),
        stamp(TLS_KEY, &contents[1]),
        stamp(CA_CERT, &contents[2]),
    ]
}

enum Poll {
    Unchanged,
    Changed(SetStamp, Box<Result<IdentityFiles, FilesError>>),
    Unreadable(FilesError),
}

/// One poll, on a blocking thread: read, compare, and parse only if something changed.
fn poll_once(dir: &Path, published: SetStamp, rejected: Option<SetStamp>) -> Poll {
    let contents = match read_set(dir) {
        Ok(c) => c,
        // A file can be missing for a moment while another tool swaps it non-atomically.
        Err(e) => return Poll::Unreadable(e),
    };
    let stamp = stamp_set(dir, &contents);
    if stamp == published || Some(stamp) == rejected {
        return Poll::Unchanged;
    }
    Poll::Changed(
        stamp,
        Box::new(IdentityFiles::from_dir_contents(dir, &contents)),
    )
}

struct Poller {
    dir: PathBuf,
    tx: watch::Sender<Arc<IdentityFiles>>,
    published: SetStamp,
    /// A set that failed for a reason that time will not fix; not re-parsed until it changes.
    rejected: Option<SetStamp>,
    /// Logged once per distinct problem, not once per poll.
    last_complaint: Option<String>,
    warned_expired: bool,
}

impl Poller {
    async fn run(mut self, poll_interval: Duration) {
        let mut ticker = tokio::time::interval(poll_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.tx.closed() => return,
                _ = ticker.tick() => {}
            }
            let dir = self.dir.clone();
            let (published, rejected) = (self.published, self.rejected);
            match tokio::task::spawn_blocking(move || poll_once(&dir, published, rejected)).await {
                Ok(poll) => self.apply(poll),
                Err(e) => tracing::warn!(dir = %self.dir.display(), "identity poll failed: {e}"),
            }
            self.check_expiry();
        }
    }

    fn apply(&mut self, poll: Poll) {
        match poll {
            Poll::Unchanged => {}
            Poll::Unreadable(e) => self.complain(&e),
            Poll::Changed(stamp, result) => match *result {
                Ok(files) => {
                    tracing::info!(
                        dir = %self.dir.display(),
                        identity = %files.identity(),
                        serial = files.serial(),
                        not_after = %rfc3339(files.not_after()),
                        "workload identity rotated"
                    );
                    self.published = stamp;
                    self.rejected = None;
                    self.last_complaint = None;
                    self.warned_expired = false;
                    self.tx.send_replace(Arc::new(files));
                }
                Err(e) => {
                    // A set that is not yet valid becomes valid by waiting; everything else
                    // needs new files, so there is no point re-parsing it every poll.
                    if !matches!(e, FilesError::NotYetValid { .. }) {
                        self.rejected = Some(stamp);
                    }
                    self.complain(&e);
                }
            },
        }
    }

    fn complain(&mut self, e: &FilesError) {
        let msg = e.to_string();
        if self.last_complaint.as_deref() != Some(msg.as_str()) {
            tracing::warn!(
                dir = %self.dir.display(),
                "keeping the current workload identity; the files on disk are not usable: {msg}"
            );
            self.last_complaint = Some(msg);
        }
    }

    fn check_expiry(&mut self) {
        let not_after = self.tx.borrow().not_after();
        if !self.warned_expired && SystemTime::now() > not_after {
            tracing::error!(
                dir = %self.dir.display(),
                not_after = %rfc3339(not_after),
                "workload certificate has expired and no valid replacement is on disk; mesh \
                 handshakes will fail until one is written"
            );
            self.warned_expired = true;
        }
    }
}
