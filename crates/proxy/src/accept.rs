//! Accepting connections under limits: a cap on the connections each listener holds open, and
//! a back-off when `accept` itself fails (descriptors used up), so that no accept loop ever
//! spins. Used by every listener of the process, the admin API's included.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections one listener holds open by default (Envoy has no per-listener default; its
/// overload manager's usual global cap is 50,000).
pub const DEFAULT_MAX_CONNECTIONS: usize = 32_768;

const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The next connection on `listener`. A failing `accept` is retried after a wait that doubles
/// with each failure in a row (10 ms up to 1 s); the first failure of a streak is logged.
pub async fn next(listener: &TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    let mut wait = FIRST_BACKOFF;
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                if wait == FIRST_BACKOFF {
                    tracing::warn!(listener = what, error = %e, "accept failed: backing off");
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// How many connections a listener may hold open.
#[derive(Debug, Clone)]
pub struct ConnLimit {
    open: Arc<Semaphore>,
    max: usize,
}

impl ConnLimit {
    pub fn new(max: usize) -> ConnLimit {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        ConnLimit {
            open: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Room for one more connection, held until the permit drops; `None` at the limit, where
    /// the new connection is closed at once (as Envoy's listener connection limit does) rather
    /// than left waiting in the kernel's queue.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.open.clone().try_acquire_owned().ok()
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_holds_until_a_permit_drops() {
        let limit = ConnLimit::new(2);
        let a = limit.admit().expect("first");
        let _b = limit.admit().expect("second");
        assert!(limit.admit().is_none());
        drop(a);
        assert!(limit.admit().is_some());
        assert_eq!(ConnLimit::new(0).max(), 1);
    }
}
