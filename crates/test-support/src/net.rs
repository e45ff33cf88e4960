//! Listener plumbing shared by the servers: loopback-only binding, a listener that is closed
//! synchronously on drop, and an accept loop whose connection tasks die with it.

use std::future::Future;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A running accept loop. Dropping it shuts the listening socket down at once (new connections
/// are refused from then on) and aborts the loop together with every connection task.
#[derive(Debug)]
pub(crate) struct Served {
    addr: SocketAddr,
    closer: Socket,
    task: JoinHandle<()>,
}

impl Served {
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // On Linux, shutdown() on a listening socket stops it listening immediately, even though
        // the tokio listener's file descriptor is closed only when the aborted task is dropped.
        let _ = self.closer.shutdown(Shutdown::Both);
        self.task.abort();
    }
}

/// Binds a TCP listener on `addr` (loopback only; SO_REUSEADDR so fixed ports like
/// 127.0.10.1:443 can be reused test after test).
pub(crate) fn bind_tcp(addr: SocketAddr, what: &str) -> anyhow::Result<(TcpListener, Socket)> {
    crate::assert_loopback(addr, what);
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())
        .with_context(|| format!("{what}: binding {addr}"))?;
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    let closer = sock.try_clone()?;
    let listener = TcpListener::from_std(std::net::TcpListener::from(sock))?;
    Ok((listener, closer))
}

/// Binds `addr` and runs `handle` for every accepted connection.
pub(crate) fn serve<F, Fut>(addr: SocketAddr, what: &str, handle: F) -> anyhow::Result<Served>
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (listener, closer) = bind_tcp(addr, what)?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        conns.spawn(handle(stream, peer));
                    }
                    // EMFILE and the like, or the listener was shut down: back off; the owner
                    // aborts this task when it is dropped.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    Ok(Served { addr, closer, task })
}
