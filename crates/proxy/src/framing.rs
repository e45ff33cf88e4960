//! What hyper does not refuse in an HTTP/1 request's framing, seen before hyper reads it.
//!
//! hyper 1.x frames a request that carries both `Content-Length` and `Transfer-Encoding:
//! chunked` by its chunks, drops the length and closes the connection after the response (RFC
//! 9112 §6.3 allows that); Envoy, by default (`http1_protocol_options.allow_chunked_length:
//! false`), refuses it with `400` (`http1.content_length_and_chunked_not_allowed`). A proxy
//! that lets such a request through depends on every server behind it choosing the same
//! framing, which is what request smuggling exploits. hyper gives no way to see the headers it
//! dropped, so [`HeadScan`] watches the connection's bytes on their way to hyper and records
//! which request head (by its place on the connection) carried both; the request hyper
//! dispatches in that place is refused ([`Framing::take_request`]). hyper dispatches a request
//! only once its whole head is read, so the scan has seen that head by then.
//!
//! **Every** head of a kept-alive or pipelined connection is scanned: the scan follows each
//! body's framing (`Content-Length` bytes skipped, chunks read by their sizes, trailers to their
//! empty line) to where the next head starts. It stops for good when hyper will read no more
//! requests from the bytes: the connection switched protocols (an upgrade answered `101`, a
//! CONNECT answered `2xx`: [`Framing::switch`]), a head or trailer section outgrew any
//! listener's bound (hyper answers `431` and closes), a length hyper refuses (`400`, closed),
//! or a head with both framings (hyper closes after it). Head bytes cost a search for each line
//! end and a look at the start of each line; body bytes cost nothing each.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Envoy's `%RESPONSE_CODE_DETAILS%` for a request with both framings.
pub const CONTENT_LENGTH_AND_CHUNKED: &str = "http1.content_length_and_chunked_not_allowed";

/// Bytes of one head (or trailer section) scanned at most: beyond the largest head any listener
/// accepts (hyper answers `431` first), so a head is never cut short by this bound, and a
/// flood costs nothing more.
const SCAN_LIMIT: usize = 64 * 1024 + 1;

/// The longest header name worth remembering: `transfer-encoding`.
const NAME_MAX: usize = 17;

/// No head has both framings (yet).
const NONE: u32 = u32::MAX;

/// What the scan of one HTTP/1 connection found, shared by its stream and its requests.
#[derive(Debug)]
pub struct Framing {
    /// The place (0 for the first request) of the first head with both framings.
    flagged: AtomicU32,
    /// Requests dispatched so far.
    dispatched: AtomicU32,
    /// The connection's bytes are no longer requests.
    switched: AtomicBool,
}

impl Default for Framing {
    fn default() -> Framing {
        Framing {
            flagged: AtomicU32::new(NONE),
            dispatched: AtomicU32::new(0),
            switched: AtomicBool::new(false),
        }
    }
}

impl Framing {
    /// Called once for each request hyper dispatches, in order: true when that request's head
    /// carried both framings (it is refused). One uncontended atomic add.
    pub fn take_request(&self) -> bool {
        let place = self.dispatched.fetch_add(1, Ordering::Relaxed);
        place >= self.flagged.load(Ordering::Relaxed)
    }

    /// The connection switched protocols: what follows is not scanned.
    pub fn switch(&self) {
        self.switched.store(true, Ordering::Relaxed);
    }

    fn flag(&self, place: u32) {
        // Only the first: hyper closes the connection after that request.
        let _ = self
            .flagged
            .compare_exchange(NONE, place, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// A request on a connection whose head carried both framings (a request extension the
/// HTTP/1 service sets from [`Framing::take_request`]).
#[derive(Debug, Clone, Copy)]
pub struct BothFramings;

/// A stream whose request heads are watched for `Content-Length` together with
/// `Transfer-Encoding`. Every byte passes through unchanged.
pub struct HeadScan<S> {
    inner: S,
    scan: Scan,
    framing: Arc<Framing>,
    timer: Option<HeadTimer>,
}

/// The limit on one request head, from its first byte to its end: a connection between
/// requests is idle, not slow (hyper's own head timeout also runs while a kept-alive
/// connection waits for its next request, which made it the keep-alive limit).
struct HeadTimer {
    limit: Duration,
    /// Made at the first head, reset at each one after.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

/// What a connection ends with when a request head took longer than its limit (the
/// `io::Error` hyper reports carries it; [`HeadTimedOut::is_cause_of`] finds it).
#[derive(Debug)]
pub struct HeadTimedOut;

impl std::fmt::Display for HeadTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request head timeout")
    }
}

impl std::error::Error for HeadTimedOut {}

impl HeadTimedOut {
    /// `e`, or an error it was caused by, is a head timeout.
    pub fn is_cause_of(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(e);
        while let Some(e) = next {
            if e.is::<HeadTimedOut>()
                || e.downcast_ref::<io::Error>()
                    .and_then(|io| io.get_ref())
                    .is_some_and(|inner| inner.is::<HeadTimedOut>())
            {
                return true;
            }
            next = e.source();
        }
        false
    }
}

impl<S> HeadScan<S> {
    /// `scan: false` (an HTTP/2 connection) passes the bytes through unwatched.
    pub fn new(inner: S, framing: Arc<Framing>, scan: bool) -> Self {
        let mut s = Scan::default();
        if !scan {
            s.state = State::Done;
        }
        HeadScan {
            inner,
            scan: s,
            framing,
            timer: None,
        }
    }

    /// Ends the connection with [`HeadTimedOut`] when a request head has not ended `limit`
    /// after its first byte. Only while heads are scanned (not after a switch of protocols,
    /// not on HTTP/2).
    pub fn with_head_timeout(mut self, limit: Duration) -> Self {
        self.timer = Some(HeadTimer {
            limit,
            sleep: None,
            armed: false,
        });
        self
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadScan<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if !matches!(this.scan.state, State::Done) {
            if this.framing.switched.load(Ordering::Relaxed) {
                this.scan.state = State::Done;
            } else if let Some(place) = this.scan.feed(&buf.filled()[before..]) {
                this.framing.flag(place);
            }
        }
        if let Some(t) = &mut this.timer {
            if !this.scan.in_head() {
                t.armed = false;
            } else if !t.armed {
                t.armed = true;
                let deadline = Instant::now() + t.limit;
                match &mut t.sleep {
                    Some(sleep) => sleep.as_mut().reset(deadline),
                    None => t.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
            }
            // Waiting for more of a head: the limit wakes this read if the bytes do not.
            if t.armed
                && r.is_pending()
                && let Some(sleep) = &mut t.sleep
                && sleep.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, HeadTimedOut)));
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadScan<S> {
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

/// Where the scan is in the connection's bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a request head, or the empty lines before one.
    #[default]
    Head,
    /// Skipping this many more bytes of a `Content-Length` body.
    Body(u64),
    /// In a chunk-size line (hex digits, then extensions up to the line end).
    ChunkSize { size: u64, digits: bool, rest: bool },
    /// Skipping this many more bytes of a chunk's data.
    ChunkData(u64),
    /// After a chunk's data, up to its line end.
    ChunkEnd,
    /// Trailer fields after the last chunk, up to an empty line.
    Trailers,
    /// Nothing more is scanned.
    Done,
}

/// One line of a head or trailer section. Lines end at `\n` (a `\r` before it is not part of
/// the line), as httparse reads them; empty lines before the request line are skipped, as
/// httparse skips them.
#[derive(Debug, Default)]
struct Line {
    /// Bytes of this head (or trailer section) so far.
    seen: usize,
    /// The request line has ended: lines now are header fields.
    in_fields: bool,
    /// The current line has had a byte other than `\r`.
    started: bool,
    /// The current line may still be a field named by one of the two names.
    naming: bool,
    name: [u8; NAME_MAX],
    name_len: usize,
    /// In the value of a `Content-Length` field.
    in_length: bool,
}

/// What one head says about its body.
#[derive(Debug, Default)]
struct Fields {
    content_length: bool,
    transfer_encoding: bool,
    /// The length every `Content-Length` value so far has said.
    length: Option<u64>,
    /// The value being read: its digits so far, and whether a space ended them.
    value: Option<u64>,
    value_ended: bool,
    /// A value that is not one number, or two that differ: hyper answers `400` and closes.
    length_bad: bool,
}

impl Fields {
    fn length_value_start(&mut self) {
        self.content_length = true;
        self.value = None;
        self.value_ended = false;
    }

    fn length_byte(&mut self, b: u8) {
        match b {
            b'0'..=b'9' if !self.value_ended => {
                let digit = u64::from(b - b'0');
                self.value = self
                    .value
                    .unwrap_or(0)
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(digit));
                if self.value.is_none() {
                    self.length_bad = true;
                }
            }
            b' ' | b'\t' => self.value_ended = self.value.is_some(),
            _ => self.length_bad = true,
        }
    }

    fn length_value_end(&mut self) {
        match (self.value, self.length) {
            (None, _) => self.length_bad = true,
            (Some(v), Some(l)) if v != l => self.length_bad = true,
            (Some(v), _) => self.length = Some(v),
        }
    }
}

#[derive(Debug, Default)]
struct Scan {
    state: State,
    /// The place of the head being read (0 for the connection's first).
    place: u32,
    line: Line,
    fields: Fields,
}

impl Scan {
    /// Reads `bytes`; the place of a head that ended with both fields, if one did.
    fn feed(&mut self, mut bytes: &[u8]) -> Option<u32> {
        while !bytes.is_empty() {
            match self.state {
                State::Done => return None,
                State::Body(n) => {
                    let take = skip(&mut bytes, n);
                    self.state = if take == n {
                        self.next_head()
                    } else {
                        State::Body(n - take)
                    };
                }
                State::ChunkData(n) => {
                    let take = skip(&mut bytes, n);
                    self.state = if take == n {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(n - take)
                    };
                }
                State::ChunkEnd => match memchr::memchr(b'\n', bytes) {
                    Some(i) => {
                        bytes = &bytes[i + 1..];
                        self.state = State::ChunkSize {
                            size: 0,
                            digits: false,
                            rest: false,
                        };
                    }
                    None => bytes = &[],
                },
                State::ChunkSize { size, digits, rest } => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    self.state = match b {
                        b'\n' if !digits => State::Done,
                        b'\n' if size == 0 => {
                            self.line = Line {
                                in_fields: true,
                                naming: true,
                                ..Line::default()
                            };
                            State::Trailers
                        }
                        b'\n' => State::ChunkData(size),
                        _ if rest => State::ChunkSize { size, digits, rest },
                        _ => match (b as char).to_digit(16) {
                            Some(d) => match size
                                .checked_mul(16)
                                .and_then(|s| s.checked_add(u64::from(d)))
                            {
                                Some(size) => State::ChunkSize {
                                    size,
                                    digits: true,
                                    rest: false,
                                },
                                // hyper refuses a size this large: the connection ends.
                                None => State::Done,
                            },
                            None if digits => State::ChunkSize {
                                size,
                                digits,
                                rest: true,
                            },
                            None => State::Done,
                        },
                    };
                }
                State::Head | State::Trailers => {
                    if let Some(place) = self.head_bytes(&mut bytes) {
                        return Some(place);
                    }
                }
            }
        }
        None
    }

    /// Inside a request head: past its request line's first byte (the empty lines a client
    /// may send between requests do not start one), before the empty line that ends it.
    fn in_head(&self) -> bool {
        self.state == State::Head && (self.line.started || self.line.in_fields)
    }

    /// The state after a request (head and body) ended: the next head.
    fn next_head(&mut self) -> State {
        self.place = self.place.saturating_add(1);
        self.line = Line::default();
        self.fields = Fields::default();
        State::Head
    }

    /// Reads head (or trailer) bytes up to the section's end; at the end of a head, moves to
    /// its body. The place of a head with both framings, when one ended.
    fn head_bytes(&mut self, bytes: &mut &[u8]) -> Option<u32> {
        while let Some((&b, rest)) = bytes.split_first() {
            let line = &mut self.line;
            // Past the part of a line the scan reads: straight to its end.
            if line.started && !line.naming && !line.in_length && b != b'\n' {
                let end = memchr::memchr(b'\n', bytes).unwrap_or(bytes.len());
                line.seen += end;
                *bytes = &bytes[end..];
                if line.seen > SCAN_LIMIT {
                    self.state = State::Done;
                    return None;
                }
                continue;
            }
            *bytes = rest;
            line.seen += 1;
            if line.seen > SCAN_LIMIT {
                self.state = State::Done;
                return None;
            }
            match b {
                b'\n' => {
                    if line.started {
                        line.in_fields = true;
                    } else if line.in_fields {
                        return self.section_end();
                    }
                    if line.in_length {
                        self.fields.length_value_end();
                    }
                    let line = &mut self.line;
                    line.started = false;
                    line.naming = true;
                    line.in_length = false;
                    line.name_len = 0;
                }
                b'\r' => {}
                _ => {
                    line.started = true;
                    if line.in_length {
                        self.fields.length_byte(b);
                    } else if line.in_fields && line.naming {
                        self.name_byte(b);
                    }
                }
            }
        }
        None
    }

    /// An empty line ended a head or a trailer section.
    fn section_end(&mut self) -> Option<u32> {
        if self.state == State::Trailers {
            self.state = self.next_head();
            return None;
        }
        let f = &self.fields;
        if f.content_length && f.transfer_encoding {
            // hyper closes the connection after this request: nothing more to scan.
            self.state = State::Done;
            return Some(self.place);
        }
        self.state = if f.transfer_encoding {
            State::ChunkSize {
                size: 0,
                digits: false,
                rest: false,
            }
        } else if f.length_bad {
            // hyper answers 400 and closes.
            State::Done
        } else {
            match f.length {
                Some(n) if n > 0 => State::Body(n),
                _ => self.next_head(),
            }
        };
        None
    }

    fn name_byte(&mut self, b: u8) {
        let line = &mut self.line;
        if b == b':' {
            line.naming = false;
            if self.state == State::Trailers {
                return;
            }
            match &line.name[..line.name_len] {
                b"content-length" => {
                    line.in_length = true;
                    self.fields.length_value_start();
                }
                b"transfer-encoding" => self.fields.transfer_encoding = true,
                _ => {}
            }
        } else if line.name_len < NAME_MAX {
            line.name[line.name_len] = b.to_ascii_lowercase();
            line.name_len += 1;
        } else {
            line.naming = false;
        }
    }
}

/// The place of the first request head with both framings in a connection whose bytes arrive
/// as `chunks`, in turn (the fuzz target `request_framing` reads the scan through this).
pub fn flagged_place<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Option<u32> {
    let mut scan = Scan::default();
    chunks.into_iter().find_map(|c| scan.feed(c))
}

/// Advances `bytes` past at most `n` of them; how many.
fn skip(bytes: &mut &[u8], n: u64) -> u64 {
    let take = usize::try_from(n).map_or(bytes.len(), |n| n.min(bytes.len()));
    *bytes = &bytes[take..];
    take as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The place of the first head with both framings, feeding `chunks` in turn.
    fn scan_in(chunks: &[&[u8]]) -> Option<u32> {
        flagged_place(chunks.iter().copied())
    }

    /// The same bytes whole, one byte at a time, and split at every point in two.
    fn scan_every_way(bytes: &[u8]) -> Option<u32> {
        let whole = scan_in(&[bytes]);
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(scan_in(&singles), whole, "one byte at a time");
        for at in 0..bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(scan_in(&[a, b]), whole, "split at {at}");
        }
        whole
    }

    /// The head timer runs while a head is incomplete: from the request line's first byte
    /// (blank lines between requests do not start one) to the empty line that ends the head;
    /// not during a body, nor once nothing more is scanned.
    #[test]
    fn a_head_is_timed_from_its_first_byte_to_its_end() {
        let mut scan = Scan::default();
        let mut after = |bytes: &[u8]| {
            scan.feed(bytes);
            scan.in_head()
        };
        assert!(!after(b"\r\n\r\n"), "blank lines are not a head");
        assert!(after(b"G"));
        assert!(
            after(b"ET / HTTP/1.1\r\n"),
            "the request line ended, the head did not"
        );
        assert!(after(b"Content-Length: 4\r\n"));
        assert!(!after(b"\r\n"), "the head ended: its body is not timed");
        assert!(!after(b"ab"));
        assert!(!after(b"cd"), "between requests");
        assert!(after(b"POST /x HTTP/1.1\r\nHost: a\r\n"));
        assert!(
            !after(b"\r\nGET / HTTP/1.1\r\n\r\n"),
            "two whole heads in one read"
        );
        assert!(after(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n"));
        scan.state = State::Done;
        assert!(!scan.in_head(), "nothing scanned, nothing timed");
    }

    #[test]
    fn both_framings_in_the_first_head_are_seen_however_the_bytes_arrive() {
        let head: &[u8] = b"\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\ntransfer-ENCODING: chunked\r\n\r\n";
        assert_eq!(scan_every_way(head), Some(0));
        // Bare LF line ends, the other order.
        assert_eq!(
            scan_every_way(b"POST / HTTP/1.1\nTransfer-Encoding: chunked\nContent-Length:4\n\n"),
            Some(0)
        );
    }

    #[test]
    fn one_framing_or_lookalikes_are_not_flagged() {
        for head in [
            &b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            // Names that only start or end like the two, or a value that names them.
            b"POST / HTTP/1.1\r\nX-Content-Length: 4\r\nTransfer-Encodings: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nX-A: content-length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            // The request line is no field.
            b"POST /content-length: HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ] {
            assert_eq!(scan_every_way(head), None, "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn later_heads_are_found_past_every_kind_of_body() {
        let smuggled: &[u8] =
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n";
        let firsts: [&[u8]; 5] = [
            // No body.
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            // A length, its body holding what looks like a head with both.
            b"POST / HTTP/1.1\r\nContent-Length: 59\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n",
            // The same length twice.
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length:2 \r\n\r\nab",
            // Chunks with extensions, a chunk holding a lookalike head, trailers.
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n3b\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n\r\n0\r\nX-Trailer: content-length: 1\r\n\r\n",
            // Empty lines between requests.
            b"GET / HTTP/1.1\r\n\r\n\r\n\r\n",
        ];
        for first in firsts {
            let mut bytes = first.to_vec();
            assert_eq!(
                scan_every_way(&bytes),
                None,
                "{}",
                String::from_utf8_lossy(first)
            );
            bytes.extend_from_slice(smuggled);
            assert_eq!(
                scan_every_way(&bytes),
                Some(1),
                "{}",
                String::from_utf8_lossy(first)
            );
            // Third place, after two clean requests.
            let mut three = first.to_vec();
            three.extend_from_slice(first);
            three.extend_from_slice(smuggled);
            assert_eq!(
                scan_every_way(&three),
                Some(2),
                "{}",
                String::from_utf8_lossy(first)
            );
        }
    }

    #[test]
    fn the_scan_stops_where_hyper_reads_no_more_requests() {
        let smuggled: &[u8] =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n";
        for first in [
            // Lengths hyper refuses (400, closed).
            &b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            // A chunk size that is no number.
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let mut bytes = first.to_vec();
            bytes.extend_from_slice(smuggled);
            assert_eq!(
                scan_in(&[&bytes]),
                None,
                "{}",
                String::from_utf8_lossy(first)
            );
        }
    }

    #[test]
    fn the_scan_is_bounded_per_head() {
        let mut s = Scan::default();
        let junk = vec![b'a'; SCAN_LIMIT + 10];
        assert_eq!(s.feed(&junk), None);
        assert_eq!(s.state, State::Done);
        // A long field line is passed over whole, and counted.
        let mut s = Scan::default();
        let mut head = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        head.resize(SCAN_LIMIT + 10, b'v');
        assert_eq!(s.feed(&head), None);
        assert_eq!(s.state, State::Done);
        // A long body is skipped whole and costs no head bound.
        let mut s = Scan::default();
        let mut bytes = b"POST / HTTP/1.1\r\nContent-Length: 200000\r\n\r\n".to_vec();
        bytes.resize(bytes.len() + 200_000, b'\n');
        bytes.extend_from_slice(
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(s.feed(&bytes), Some(1));
    }

    #[test]
    fn requests_are_refused_from_the_flagged_place_on() {
        let f = Framing::default();
        f.flag(2);
        f.flag(5);
        assert!(!f.take_request());
        assert!(!f.take_request());
        assert!(f.take_request());
        assert!(f.take_request());
    }

    #[tokio::test]
    async fn bytes_pass_through_unchanged_and_the_place_is_recorded() {
        let bytes: &[u8] = b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (mut client, server) = tokio::io::duplex(256);
        let framing = Arc::new(Framing::default());
        let mut io = HeadScan::new(server, framing.clone(), true);
        client.write_all(bytes).await.expect("write");
        drop(client);
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, bytes);
        assert!(!framing.take_request(), "the first request is clean");
        assert!(framing.take_request(), "the second carried both");

        // HTTP/2, and a connection that switched protocols, are not scanned.
        for (scan, switched) in [(false, false), (true, true)] {
            let (mut client, server) = tokio::io::duplex(256);
            let framing = Arc::new(Framing::default());
            if switched {
                framing.switch();
            }
            let mut io = HeadScan::new(server, framing.clone(), scan);
            client.write_all(bytes).await.expect("write");
            drop(client);
            io.read_to_end(&mut Vec::new()).await.expect("read");
            assert!(!framing.take_request() && !framing.take_request());
        }
    }
}
