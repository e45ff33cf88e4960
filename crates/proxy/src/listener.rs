//! The listener manager: binds the ports of the current snapshot, re-binds or closes them
//! when a new snapshot adds or removes ports, and runs one accept loop per port. Each
//! accepted connection takes the snapshot current at accept and keeps it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_snapshot::{Role, Snapshot};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::conn::{ConnInfo, serve_connection};
use crate::{Error, Shared};

pub struct Manager {
    shared: Arc<Shared>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Held by every connection task; the drain waits for all of them to be dropped.
    tracker: Option<mpsc::Sender<()>>,
    hard_stop: watch::Receiver<bool>,
    /// Dropping a port's sender stops its accept loop and closes its socket.
    bound: BTreeMap<u16, oneshot::Sender<()>>,
    warned_role: bool,
}

impl Manager {
    pub fn new(
        shared: Arc<Shared>,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        tracker: mpsc::Sender<()>,
        hard_stop: watch::Receiver<bool>,
    ) -> Manager {
        Manager {
            shared,
            snapshots,
            tracker: Some(tracker),
            hard_stop,
            bound: BTreeMap::new(),
            warned_role: false,
        }
    }

    /// Makes the bound ports those of `snapshot`. Every port that can be bound is; the
    /// first failure is returned.
    pub async fn reconcile(&mut self, snapshot: &Snapshot) -> Result<(), Error> {
        let want: Vec<u16> = match snapshot.role {
            Role::Gateway => snapshot.listeners.iter().map(|l| l.port).collect(),
            Role::Sidecar => {
                if !self.warned_role {
                    tracing::warn!(
                        "sidecar listeners are virtual (explicit proxy); not bound by this proxy yet"
                    );
                    self.warned_role = true;
                }
                Vec::new()
            }
        };
        self.bound.retain(|port, _| {
            let keep = want.contains(port);
            if !keep {
                tracing::info!(port, "closing listener");
            }
            keep
        });
        let mut first_err = None;
        for port in want {
            if self.bound.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::new(self.shared.config.bind, port);
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    tracing::info!(%addr, "listening");
                    let Some(tracker) = self.tracker.clone() else {
                        continue;
                    };
                    let (stop_tx, stop_rx) = oneshot::channel();
                    tokio::spawn(accept_loop(
                        listener,
                        port,
                        self.snapshots.clone(),
                        self.shared.clone(),
                        stop_rx,
                        tracker,
                        self.hard_stop.clone(),
                    ));
                    self.bound.insert(port, stop_tx);
                }
                Err(source) => {
                    tracing::error!(%addr, error = %source, "cannot bind listener");
                    first_err.get_or_insert(Error::Bind { addr, source });
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Stops accepting on every port.
    pub fn close_all(&mut self) {
        self.bound.clear();
        self.tracker = None;
    }
}

async fn accept_loop(
    listener: TcpListener,
    port: u16,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
    tracker: mpsc::Sender<()>,
    hard_stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep the listener.
                tracing::warn!(port, error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(shared.config.bind, port));
        let snapshot = snapshots.borrow().clone();
        let info = ConnInfo::new(local, peer, port);
        let shared = shared.clone();
        let tracker = tracker.clone();
        let mut hard_stop = hard_stop.clone();
        tokio::spawn(async move {
            let _tracker = tracker;
            tokio::select! {
                _ = serve_connection(stream, info, snapshot, shared) => {}
                _ = crate::wait_true(&mut hard_stop) => {}
            }
        });
    }
}
