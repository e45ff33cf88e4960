//! The listener manager: binds the ports of the current snapshot, re-binds or closes them
//! when a new snapshot adds or removes ports, and runs one accept loop per port. Each
//! accepted connection takes the snapshot current at accept and keeps it.
//!
//! A sidecar snapshot's listeners are virtual (one per destination port, chosen per flow by
//! [`crate::sidecar`]): for it, the one socket bound is the explicit proxy's, on
//! `config.listen`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use sluice_snapshot::{Role, Snapshot};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};

use crate::Error;
use crate::accept::{self, ConnLimit};
use crate::conn::serve_connection;
use crate::flow::ConnInfo;
use crate::runtime::Runtime;
use crate::shared::{Shared, wait_true};

/// The listen backlog: a burst of new connections waits in the kernel's queue, not on SYN
/// retransmits (the kernel caps it at `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with [`LISTEN_BACKLOG`] and `SO_REUSEADDR` (a restarted proxy rebinds while
/// old connections sit in TIME_WAIT).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

pub struct Manager {
    shared: Arc<Shared>,
    runtimes: watch::Receiver<Arc<Runtime>>,
    /// Held by every connection task; the drain waits for all of them to be dropped.
    tracker: Option<mpsc::Sender<()>>,
    hard_stop: watch::Receiver<bool>,
    /// Dropping a port's sender stops its accept loop and closes its socket.
    bound: BTreeMap<u16, oneshot::Sender<()>>,
    /// The sidecar's explicit proxy, while the snapshot's role is Sidecar.
    explicit_proxy: Option<oneshot::Sender<()>>,
    /// Where the explicit proxy is bound (its port may have been chosen by the system).
    explicit_addr: Option<SocketAddr>,
    /// The explicit proxy's address and last bind error while it cannot be bound.
    explicit_unbound: Option<(SocketAddr, String)>,
    /// Ports the snapshot wants that could not be bound, with why; retried by
    /// [`Manager::retry_unbound`] until they bind.
    unbound: BTreeMap<u16, String>,
    /// What the admin API shows (`/listeners`).
    status: watch::Sender<Vec<crate::inspect::ListenerStatus>>,
}

impl Manager {
    pub fn new(
        shared: Arc<Shared>,
        runtimes: watch::Receiver<Arc<Runtime>>,
        tracker: mpsc::Sender<()>,
        hard_stop: watch::Receiver<bool>,
        status: watch::Sender<Vec<crate::inspect::ListenerStatus>>,
    ) -> Manager {
        Manager {
            shared,
            runtimes,
            tracker: Some(tracker),
            hard_stop,
            bound: BTreeMap::new(),
            explicit_proxy: None,
            explicit_addr: None,
            explicit_unbound: None,
            unbound: BTreeMap::new(),
            status,
        }
    }

    /// Publishes what is bound now, for `/listeners`.
    fn publish(&self) {
        use crate::inspect::ListenerStatus;
        let bind = self.shared.config.bind;
        let mut all: Vec<ListenerStatus> = self
            .bound
            .keys()
            .map(|port| ListenerStatus {
                name: port.to_string(),
                address: SocketAddr::new(bind, *port),
                bound: true,
                error: None,
            })
            .chain(self.unbound.iter().map(|(port, why)| ListenerStatus {
                name: port.to_string(),
                address: SocketAddr::new(bind, *port),
                bound: false,
                error: Some(why.clone()),
            }))
            .chain(self.explicit_addr.map(|address| ListenerStatus {
                name: "explicit_proxy".to_owned(),
                address,
                bound: true,
                error: None,
            }))
            .chain(
                self.explicit_unbound
                    .as_ref()
                    .map(|(address, why)| ListenerStatus {
                        name: "explicit_proxy".to_owned(),
                        address: *address,
                        bound: false,
                        error: Some(why.clone()),
                    }),
            )
            .collect();
        all.sort_by_key(|l| (l.address.port(), l.name.clone()));
        let unbound = all.iter().filter(|l| !l.bound).count();
        self.shared
            .telemetry
            .metrics
            .listeners_unbound
            .set(i64::try_from(unbound).unwrap_or(i64::MAX));
        self.status.send_replace(all);
    }

    /// Whether every listener the snapshot wants is bound (readiness waits for it).
    pub fn all_bound(&self) -> bool {
        self.unbound.is_empty() && self.explicit_unbound.is_none()
    }

    /// Ports that could not be bound yet, with the last error.
    pub fn unbound(&self) -> &BTreeMap<u16, String> {
        &self.unbound
    }

    /// Tries the ports that could not be bound again; true when they all are now.
    pub async fn retry_unbound(&mut self, snapshot: &Snapshot) -> bool {
        if self.all_bound() {
            return true;
        }
        let _ = self.reconcile(snapshot).await;
        self.all_bound()
    }

    /// Makes the bound ports those of `snapshot`. Every port that can be bound is; the
    /// first failure is returned.
    pub async fn reconcile(&mut self, snapshot: &Snapshot) -> Result<(), Error> {
        let mut first_err = None;
        let want: Vec<u16> = match snapshot.role {
            Role::Gateway => {
                self.explicit_proxy = None;
                self.explicit_addr = None;
                self.explicit_unbound = None;
                snapshot.listeners.iter().map(|l| l.port).collect()
            }
            Role::Sidecar => {
                if let Err(e) = self.bind_explicit_proxy().await {
                    first_err = Some(e);
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
        self.unbound.retain(|port, _| want.contains(port));
        for port in want {
            if self.bound.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::new(self.shared.config.bind, port);
            match bind(addr) {
                Ok(listener) => {
                    tracing::info!(%addr, "listening");
                    let Some(tracker) = self.tracker.clone() else {
                        continue;
                    };
                    let (stop_tx, stop_rx) = oneshot::channel();
                    tokio::spawn(accept_loop(
                        listener,
                        Entry::Port(port),
                        self.runtimes.clone(),
                        self.shared.clone(),
                        stop_rx,
                        tracker,
                        self.hard_stop.clone(),
                    ));
                    self.bound.insert(port, stop_tx);
                    if self.unbound.remove(&port).is_some() {
                        tracing::info!(%addr, "listener bound after earlier failures");
                    }
                }
                Err(source) => {
                    // Said once per failure kind, then retried quietly.
                    let why = source.to_string();
                    if self.unbound.get(&port) != Some(&why) {
                        tracing::error!(%addr, error = %source, "cannot bind listener; retrying");
                    }
                    self.unbound.insert(port, why);
                    first_err.get_or_insert(Error::Bind { addr, source });
                }
            }
        }
        self.tell_guard();
        self.publish();
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The IP guard never dials what this process listens on (a loop).
    fn tell_guard(&self) {
        let config = &self.shared.config;
        let listening = self
            .bound
            .keys()
            .map(|port| SocketAddr::new(config.bind, *port))
            .chain(self.explicit_addr)
            .chain(config.also_listening.iter().copied());
        self.shared.upstreams.guard.set_listening(listening);
    }

    /// Binds the sidecar's explicit proxy on `config.listen`, once.
    async fn bind_explicit_proxy(&mut self) -> Result<(), Error> {
        if self.explicit_proxy.is_some() {
            return Ok(());
        }
        let addr = self
            .shared
            .config
            .listen
            .unwrap_or(crate::sidecar::DEFAULT_LISTEN);
        let listener = match bind(addr) {
            Ok(l) => l,
            Err(source) => {
                // Said once per failure kind, then retried quietly.
                let why = source.to_string();
                if self.explicit_unbound.as_ref().map(|(_, w)| w) != Some(&why) {
                    tracing::error!(%addr, error = %source, "cannot bind the explicit proxy; retrying");
                }
                self.explicit_unbound = Some((addr, why));
                return Err(Error::Bind { addr, source });
            }
        };
        self.explicit_unbound = None;
        tracing::info!(%addr, "explicit proxy listening (HTTP_PROXY / HTTPS_PROXY)");
        self.explicit_addr = Some(listener.local_addr().unwrap_or(addr));
        let Some(tracker) = self.tracker.clone() else {
            return Ok(());
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(accept_loop(
            listener,
            Entry::ExplicitProxy,
            self.runtimes.clone(),
            self.shared.clone(),
            stop_rx,
            tracker,
            self.hard_stop.clone(),
        ));
        self.explicit_proxy = Some(stop_tx);
        Ok(())
    }

    /// Stops accepting on every port.
    pub fn close_all(&mut self) {
        self.bound.clear();
        self.explicit_proxy = None;
        self.explicit_addr = None;
        self.explicit_unbound = None;
        self.tracker = None;
        self.unbound.clear();
        self.publish();
    }
}

/// What an accept loop hands its connections to.
#[derive(Debug, Clone, Copy)]
enum Entry {
    /// The listener of this snapshot port.
    Port(u16),
    /// The sidecar's explicit proxy.
    ExplicitProxy,
}

async fn accept_loop(
    listener: TcpListener,
    entry: Entry,
    runtimes: watch::Receiver<Arc<Runtime>>,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
    tracker: mpsc::Sender<()>,
    hard_stop: watch::Receiver<bool>,
) {
    let what = match entry {
        Entry::Port(_) => "gateway",
        Entry::ExplicitProxy => "explicit proxy",
    };
    let limit = ConnLimit::new(shared.config.max_connections);
    // A socket accepted on a specific address has that address: asked of the kernel only
    // when the listener is on a wildcard one. (True of every listener here; one made
    // IP_TRANSPARENT would accept other destinations and need the question each time.)
    let bound = listener
        .local_addr()
        .ok()
        .filter(|a| !a.ip().is_unspecified());
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = accept::next(&listener, what) => accepted,
        };
        let Some(permit) = limit.admit() else {
            tracing::debug!(?entry, %peer, max = limit.max(), "connection limit reached: closed");
            shared.telemetry.metrics.refused("limit", "max_connections");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Some(local) = bound.or_else(|| stream.local_addr().ok()) else {
            continue;
        };
        let runtime = runtimes.borrow().clone();
        let shared = shared.clone();
        let held = (tracker.clone(), permit, hard_stop.clone());
        match entry {
            Entry::Port(port) => {
                let info = ConnInfo::new(local, peer, port);
                spawn_connection(serve_connection(stream, info, runtime, shared), held);
            }
            Entry::ExplicitProxy => {
                let serve = crate::sidecar::serve(stream, local, peer, runtime, shared);
                spawn_connection(serve, held);
            }
        }
    }
}

/// Runs a connection until it ends or the hard stop comes, holding its places in the drain
/// tracker and the connection limit. The connection's future is made before the spawn, so
/// the task holds it and nothing it was made from (every idle tunnel pays for this task).
fn spawn_connection<F>(
    serve: F,
    (tracker, permit, mut hard_stop): (
        mpsc::Sender<()>,
        OwnedSemaphorePermit,
        watch::Receiver<bool>,
    ),
) where
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        tokio::select! {
            _ = serve => {}
            _ = wait_true(&mut hard_stop) => {}
        }
        drop((tracker, permit));
    });
}
