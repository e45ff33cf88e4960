//! Bytes copied both ways between two streams with no buffer held while the flow is idle.
//!
//! tokio's `copy_bidirectional` keeps an 8 KiB buffer per direction for the life of the
//! connection: 16 KiB for every idle tunnel. Here each read lands in a buffer on the stack of
//! the poll, and goes straight on to the writer; only what the writer cannot take at once is
//! kept, on the heap, until it drains (HAProxy's dynamic buffers, in spirit). An idle tunnel
//! then costs its sockets and its task, not its buffers.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Size of one read: as large as tokio's copy buffer doubled, bounded by the stack it
/// borrows for the length of one poll.
const CHUNK: usize = 16 * 1024;

/// One direction: what the writer has not taken yet, and whether the reader has ended.
#[derive(Default)]
struct Direction {
    pending: Option<(Box<[u8]>, usize)>,
    read_done: bool,
    done: bool,
}

impl Direction {
    /// Moves bytes from `r` to `w` until `r` is pending or ends; then shuts `w` down.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some((buf, at)) = &mut self.pending {
                while *at < buf.len() {
                    let n = ready!(w.as_mut().poll_write(cx, &buf[*at..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    *at += n;
                }
                self.pending = None;
            }
            if self.read_done {
                ready!(w.as_mut().poll_flush(cx))?;
                ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut stack = [const { MaybeUninit::<u8>::uninit() }; CHUNK];
            let mut rb = ReadBuf::uninit(&mut stack);
            match r.as_mut().poll_read(cx, &mut rb) {
                Poll::Pending => {
                    // What a TLS writer buffered goes out before the flow waits.
                    if let Poll::Ready(Err(e)) = w.as_mut().poll_flush(cx) {
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let data = rb.filled();
            if data.is_empty() {
                self.read_done = true;
                continue;
            }
            let mut at = 0;
            while at < data.len() {
                match w.as_mut().poll_write(cx, &data[at..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => at += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.pending = Some((data[at..].into(), 0));
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

/// Copies `a` → `b` and `b` → `a` until both directions have ended (each writer is shut down
/// when its reader ends), or either fails.
pub async fn bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Direction::default();
    let mut b_to_a = Direction::default();
    poll_fn(|cx| {
        let ab = a_to_b.poll(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let ba = b_to_a.poll(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        if ab.is_ready() && ba.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Larger than one chunk, through pipes small enough that the writer pushes back, both
    /// ways at once: every byte arrives, in order, and each side sees the other's end.
    #[tokio::test]
    async fn copies_both_ways_under_backpressure() {
        let (client, mut proxy_down) = tokio::io::duplex(1024);
        let (mut proxy_up, server) = tokio::io::duplex(1024);
        let pipe = tokio::spawn(async move { bidirectional(&mut proxy_down, &mut proxy_up).await });
        let up: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..70_000u32).map(|i| (i % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let client_side = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(client);
            let send = async move {
                w.write_all(&up2).await.expect("write up");
                w.shutdown().await.expect("shutdown");
            };
            let recv = async move {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.expect("read down");
                got
            };
            let ((), got) = tokio::join!(send, recv);
            got
        });
        let (mut r, mut w) = tokio::io::split(server);
        let send = async move {
            w.write_all(&down2).await.expect("write down");
            w.shutdown().await.expect("shutdown");
        };
        let recv = async move {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.expect("read up");
            got
        };
        let ((), got_up) = tokio::join!(send, recv);
        assert_eq!(got_up, up);
        assert_eq!(client_side.await.expect("client"), down);
        pipe.await.expect("pipe").expect("copy");
    }
}
