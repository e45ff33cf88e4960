//! What hyper does not refuse in an HTTP/1 request's framing, seen before hyper reads it.
//!
//! hyper 1.x frames a request that carries both `Content-Length` and `Transfer-Encoding:
//! chunked` by its chunks, drops the length and closes the connection after the response (RFC
//! 9112 §6.3 allows that); Envoy, by default (`http1_protocol_options.allow_chunked_length:
//! false`), refuses it with `400` (`http1.content_length_and_chunked_not_allowed`). A proxy
//! that lets such a request through depends on every server behind it choosing the same
//! framing, which is what request smuggling exploits. hyper gives no way to see the headers it
//! dropped, so [`HeadScan`] watches the bytes of the connection's **first** request head on
//! their way to hyper and raises a flag its owner reads when the request is dispatched (hyper
//! dispatches a request only once its whole head is read, so the flag is set by then).
//!
//! Only the first head is scanned: finding where a later head starts would mean following
//! every body's framing. A later request on a kept-alive connection is left to hyper's own
//! rule (see docs/security.md: the length is dropped, the chunks frame the body, and the
//! connection is closed after that response, so nothing can follow it).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Envoy's `%RESPONSE_CODE_DETAILS%` for a request with both framings.
pub const CONTENT_LENGTH_AND_CHUNKED: &str = "http1.content_length_and_chunked_not_allowed";

/// Bytes scanned at most: beyond the largest head any listener accepts (hyper answers `431`
/// first), so a head is never cut short by this bound, and a flood costs nothing more.
const SCAN_LIMIT: usize = 64 * 1024 + 1;

/// The longest header name worth remembering: `transfer-encoding`.
const NAME_MAX: usize = 17;

/// A stream whose first request head is watched for `Content-Length` together with
/// `Transfer-Encoding`; when both are there, `flag(owner)` is set. Every byte passes through
/// unchanged, and once the head has ended a read costs one branch.
pub struct HeadScan<S, T> {
    inner: S,
    scan: Scan,
    owner: Arc<T>,
    flag: fn(&T) -> &AtomicBool,
}

impl<S, T> HeadScan<S, T> {
    /// `scan: false` (an HTTP/2 connection) passes the bytes through unwatched.
    pub fn new(inner: S, owner: Arc<T>, flag: fn(&T) -> &AtomicBool, scan: bool) -> Self {
        HeadScan {
            inner,
            scan: Scan {
                done: !scan,
                ..Scan::default()
            },
            owner,
            flag,
        }
    }
}

impl<S: AsyncRead + Unpin, T> AsyncRead for HeadScan<S, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if !this.scan.done && this.scan.feed(&buf.filled()[before..]) {
            (this.flag)(&this.owner).store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin, T> AsyncWrite for HeadScan<S, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Where the scan of the first head is. Lines end at `\n` (a `\r` before it is not part of
/// the line), as httparse reads them; empty lines before the request line are skipped, as
/// httparse skips them.
#[derive(Debug, Default)]
struct Scan {
    done: bool,
    seen: usize,
    /// The request line has ended: lines now are header fields.
    in_fields: bool,
    /// The current line has had a byte other than `\r`.
    line_started: bool,
    /// The current line may still be a field named by one of the two names.
    naming: bool,
    name: [u8; NAME_MAX],
    name_len: usize,
    content_length: bool,
    transfer_encoding: bool,
}

impl Scan {
    /// Reads `bytes`; true when the head ended (or the bound was reached) with both fields.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            self.seen += 1;
            if self.seen > SCAN_LIMIT {
                self.done = true;
                return false;
            }
            match b {
                b'\n' => {
                    if self.line_started {
                        self.in_fields = true;
                    } else if self.in_fields {
                        self.done = true;
                        return self.content_length && self.transfer_encoding;
                    }
                    self.line_started = false;
                    self.naming = true;
                    self.name_len = 0;
                }
                b'\r' => {}
                _ => {
                    self.line_started = true;
                    if self.in_fields && self.naming {
                        self.name_byte(b);
                    }
                }
            }
        }
        false
    }

    fn name_byte(&mut self, b: u8) {
        if b == b':' {
            self.naming = false;
            match &self.name[..self.name_len] {
                b"content-length" => self.content_length = true,
                b"transfer-encoding" => self.transfer_encoding = true,
                _ => {}
            }
        } else if self.name_len < NAME_MAX {
            self.name[self.name_len] = b.to_ascii_lowercase();
            self.name_len += 1;
        } else {
            self.naming = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn scan_in(chunks: &[&[u8]]) -> bool {
        let mut s = Scan::default();
        chunks.iter().any(|c| !s.done && s.feed(c))
    }

    #[test]
    fn both_framings_in_the_first_head_are_seen_however_the_bytes_arrive() {
        let head: &[u8] = b"\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\ntransfer-ENCODING: chunked\r\n\r\n";
        assert!(scan_in(&[head]));
        // One byte at a time.
        let bytes: Vec<&[u8]> = head.chunks(1).collect();
        assert!(scan_in(&bytes));
        // Bare LF line ends, the other order.
        assert!(scan_in(&[
            b"POST / HTTP/1.1\nTransfer-Encoding: chunked\nContent-Length:4\n\n"
        ]));
    }

    #[test]
    fn one_framing_or_lookalikes_are_not_flagged() {
        for head in [
            &b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            // Names that only start or end like the two, or a value that names them.
            b"POST / HTTP/1.1\r\nX-Content-Length: 4\r\nTransfer-Encodings: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nX-A: content-length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            // The request line is no field.
            b"POST /content-length: HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            // A second request's head is not the first's.
            b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(!scan_in(&[head]), "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn the_scan_is_bounded() {
        let mut s = Scan::default();
        let junk = vec![b'a'; SCAN_LIMIT + 10];
        assert!(!s.feed(&junk));
        assert!(s.done);
    }

    struct Owner(AtomicBool);

    #[tokio::test]
    async fn bytes_pass_through_unchanged_and_the_flag_is_raised() {
        let (mut client, server) = tokio::io::duplex(256);
        let owner = Arc::new(Owner(AtomicBool::new(false)));
        let mut io = HeadScan::new(server, owner.clone(), |o| &o.0, true);
        let head = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        client.write_all(head).await.expect("write");
        drop(client);
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, head);
        assert!(owner.0.load(Ordering::Relaxed));

        let (mut client, server) = tokio::io::duplex(256);
        let owner = Arc::new(Owner(AtomicBool::new(false)));
        let mut io = HeadScan::new(server, owner.clone(), |o| &o.0, false);
        client.write_all(head).await.expect("write");
        drop(client);
        io.read_to_end(&mut Vec::new()).await.expect("read");
        assert!(!owner.0.load(Ordering::Relaxed), "HTTP/2 is not scanned");
    }
}
