//! Reads a connection's TLS ClientHello without consuming it: the server name (SNI) and ALPN
//! protocols choose the filter chain. Bounded in bytes ([`MAX_CLIENT_HELLO`]) and in time;
//! the bytes read are handed back in a [`Rewind`] stream so TLS passthrough forwards them as
//! they came (linkerd `linkerd/tls/src/server/client_hello.rs`).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::rewind::Rewind;

/// At most this many bytes are read while looking for the end of the ClientHello.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

const CONTENT_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const MAX_RECORD: usize = 16384 + 2048;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// The server name, lower-cased; `None` when the client sent none.
    pub sni: Option<String>,
    pub alpn: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    Found(ClientHello),
    /// Not a TLS ClientHello (or a malformed one): the connection is treated as plain.
    NotTls,
    /// A prefix of a ClientHello: read more.
    NeedMore,
    /// A ClientHello that no honest client sends (the same extension twice, an unusable
    /// server name): refused, never routed by one of its readings.
    Malformed(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no ClientHello within the inspection timeout")]
    Timeout,
    #[error("ClientHello larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    #[error("connection closed during the ClientHello")]
    Eof,
    #[error("reading the ClientHello: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

impl Error {
    /// The `sluice_refused_total{check="limit"}` reason when the peek gave up at one of its
    /// bounds (time or bytes); `None` for the other failures.
    pub fn limit_reason(&self) -> Option<&'static str> {
        match self {
            Error::Timeout => Some("client_hello_timeout"),
            Error::TooLarge => Some("client_hello_too_large"),
            _ => None,
        }
    }
}

/// Reads from `io` until the ClientHello is complete (or the bytes are not TLS), at most
/// [`MAX_CLIENT_HELLO`] bytes and `timeout`. A connection that sends nothing before the
/// timeout is plain (a server-first protocol); one that stops inside a ClientHello is an error.
pub async fn inspect<S: AsyncRead + Unpin>(
    io: S,
    timeout: Duration,
) -> (Rewind<S>, Result<Peek, Error>) {
    inspect_with(io, timeout, timeout).await
}

/// [`inspect`], except that a connection that sends nothing within `first_bytes` is plain at
/// once. For listeners where a ClientHello is only a possibility (the mesh hop arriving on a
/// plain TCP server): a client that speaks first sends it right away, and a server-first
/// protocol is delayed by `first_bytes` at most, not by the whole inspection timeout.
pub async fn inspect_with<S: AsyncRead + Unpin>(
    mut io: S,
    first_bytes: Duration,
    timeout: Duration,
) -> (Rewind<S>, Result<Peek, Error>) {
    let mut buf = BytesMut::with_capacity(1024);
    let read = tokio::time::timeout(timeout, async {
        loop {
            if buf.len() >= MAX_CLIENT_HELLO {
                return Err(Error::TooLarge);
            }
            let room = MAX_CLIENT_HELLO - buf.len();
            let mut limited = (&mut io).take(room as u64);
            let n = if buf.is_empty() {
                // `read_buf` is cancel-safe: nothing is lost when the wait ends first.
                match tokio::time::timeout(first_bytes, limited.read_buf(&mut buf)).await {
                    Ok(n) => n?,
                    Err(_elapsed) => return Ok(Peek::NotTls),
                }
            } else {
                limited.read_buf(&mut buf).await?
            };
            if n == 0 {
                return if buf.is_empty() {
                    Ok(Peek::NotTls)
                } else {
                    match parse(&buf) {
                        Peek::NeedMore => Err(Error::Eof),
                        done => Ok(done),
                    }
                };
            }
            match parse(&buf) {
                Peek::NeedMore => continue,
                done => return Ok(done),
            }
        }
    })
    .await;
    let result = match read {
        Ok(r) => r,
        Err(_elapsed) if buf.is_empty() => Ok(Peek::NotTls),
        Err(_elapsed) => Err(Error::Timeout),
    };
    let result = match result {
        Ok(Peek::Malformed(why)) => Err(Error::Malformed(why)),
        other => other,
    };
    (Rewind::new(buf.freeze(), io), result)
}

/// Parses the bytes seen so far. Never panics, whatever `buf` holds.
pub fn parse(buf: &[u8]) -> Peek {
    let mut handshake: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    loop {
        let rest = &buf[pos.min(buf.len())..];
        // Check what we can of the record header before all five bytes are here.
        if let Some(&t) = rest.first()
            && t != CONTENT_HANDSHAKE
        {
            return Peek::NotTls;
        }
        if let Some(&major) = rest.get(1)
            && major != 3
        {
            return Peek::NotTls;
        }
        if rest.len() < 5 {
            return Peek::NeedMore;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > MAX_RECORD {
            return Peek::NotTls;
        }
        let Some(fragment) = rest.get(5..5 + len) else {
            // A partial record: its handshake bytes so far can still tell "not a ClientHello".
            handshake.extend_from_slice(&rest[5..]);
            return match handshake.first() {
                Some(&t) if t != HANDSHAKE_CLIENT_HELLO => Peek::NotTls,
                _ => Peek::NeedMore,
            };
        };
        handshake.extend_from_slice(fragment);
        pos += 5 + len;
        // As for a partial record above: the first handshake byte decides as soon as it is
        // here, so that an answer never depends on where the bytes were cut.
        if let Some(&t) = handshake.first()
            && t != HANDSHAKE_CLIENT_HELLO
        {
            return Peek::NotTls;
        }
        if handshake.len() >= 4 {
            let body_len = (usize::from(handshake[1]) << 16)
                | (usize::from(handshake[2]) << 8)
                | usize::from(handshake[3]);
            if body_len + 4 > MAX_CLIENT_HELLO {
                return Peek::NotTls;
            }
            if let Some(body) = handshake.get(4..4 + body_len) {
                return match parse_client_hello(body) {
                    Some(Ok(hello)) => Peek::Found(hello),
                    Some(Err(why)) => Peek::Malformed(why),
                    None => Peek::NotTls,
                };
            }
        }
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// `None`: not a ClientHello; `Some(Err)`: one to refuse.
fn parse_client_hello(body: &[u8]) -> Option<Result<ClientHello, &'static str>> {
    let mut c = Cursor(body);
    let version = c.take(2)?;
    if version[0] != 3 {
        return None;
    }
    c.take(32)?; // random
    c.vec8()?; // session id
    c.vec16()?; // cipher suites
    c.vec8()?; // compression methods
    let mut hello = ClientHello::default();
    if c.0.is_empty() {
        return Some(Ok(hello)); // no extensions at all
    }
    let mut exts = Cursor(c.vec16()?);
    // RFC 8446 §4.2: at most one extension of each type. Two server names would let the proxy
    // route by one while the server answers the other.
    let mut seen: Vec<u16> = Vec::with_capacity(16);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let data = exts.vec16()?;
        if seen.contains(&ty) {
            return Some(Err("the same extension twice"));
        }
        seen.push(ty);
        match ty {
            EXT_SERVER_NAME => match parse_sni(data) {
                Some(Ok(sni)) => hello.sni = sni,
                Some(Err(why)) => return Some(Err(why)),
                None => return None,
            },
            EXT_ALPN => hello.alpn = parse_alpn(data)?,
            _ => {}
        }
    }
    Some(Ok(hello))
}

/// `None`: not parseable. `Some(Ok(None))`: no host name in the list. The name is canonical
/// ([`crate::authority::name`]); an IP address, an empty label or a second host name is
/// refused (RFC 6066 §3: one name of each type, and never a literal address).
fn parse_sni(data: &[u8]) -> Option<Result<Option<String>, &'static str>> {
    let mut list = Cursor(Cursor(data).vec16()?);
    let mut found = None;
    while !list.0.is_empty() {
        let name_type = list.u8()?;
        let name = list.vec16()?;
        if name_type != 0 {
            continue;
        }
        if found.is_some() {
            return Some(Err("two host names in the server name extension"));
        }
        let Ok(text) = std::str::from_utf8(name) else {
            return Some(Err("the server name is not text"));
        };
        if text.parse::<std::net::IpAddr>().is_ok() {
            return Some(Err("the server name is an IP address"));
        }
        match crate::authority::name(text) {
            Ok(n) if text.is_ascii() => found = Some(n),
            _ => return Some(Err("the server name is not a valid host name")),
        }
    }
    Some(Ok(found))
}

fn parse_alpn(data: &[u8]) -> Option<Vec<String>> {
    let mut list = Cursor(Cursor(data).vec16()?);
    let mut out = Vec::new();
    while !list.0.is_empty() {
        let p = list.vec8()?;
        out.push(String::from_utf8_lossy(p).into_owned());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand::{Rng, SeedableRng};
    use rustls::pki_types::ServerName;

    use super::*;

    /// A real ClientHello, as rustls sends it.
    fn client_hello(sni: &str, alpn: &[&str]) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let name = ServerName::try_from(sni.to_owned()).expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("conn");
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).expect("write");
        }
        out
    }

    /// Re-frames a single-record ClientHello into records of at most `size` bytes.
    fn split_records(hello: &[u8], size: usize) -> Vec<u8> {
        let payload = &hello[5..];
        let mut out = Vec::new();
        for chunk in payload.chunks(size) {
            out.extend_from_slice(&[0x16, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    fn found(sni: Option<&str>, alpn: &[&str]) -> Peek {
        Peek::Found(ClientHello {
            sni: sni.map(str::to_owned),
            alpn: alpn.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// A ClientHello record with these extensions (type, data), framed by hand.
    fn hello_with(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut ext_bytes = Vec::new();
        for (ty, data) in exts {
            ext_bytes.extend_from_slice(&ty.to_be_bytes());
            ext_bytes.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext_bytes.extend_from_slice(data);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
        body.extend_from_slice(&(ext_bytes.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext_bytes);
        let mut hs = vec![HANDSHAKE_CLIENT_HELLO, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![CONTENT_HANDSHAKE, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    /// A server_name extension with these (type, name) entries.
    fn sni_ext(names: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (ty, name) in names {
            list.push(*ty);
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name);
        }
        let mut out = (list.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&list);
        out
    }

    #[test]
    fn ambiguous_server_names_are_refused() {
        let one = hello_with(&[(EXT_SERVER_NAME, sni_ext(&[(0, b"Allowed.example.")]))]);
        assert_eq!(parse(&one), found(Some("allowed.example"), &[]));
        let twice = hello_with(&[
            (EXT_SERVER_NAME, sni_ext(&[(0, b"allowed.example")])),
            (EXT_SERVER_NAME, sni_ext(&[(0, b"other.example")])),
        ]);
        assert_eq!(parse(&twice), Peek::Malformed("the same extension twice"));
        let two_names = hello_with(&[(
            EXT_SERVER_NAME,
            sni_ext(&[(0, b"allowed.example"), (0, b"other.example")]),
        )]);
        assert!(matches!(parse(&two_names), Peek::Malformed(_)));
        for bad in [
            &b"a..example"[..],
            b".example",
            b"10.0.0.1",
            b"ex ample",
            b"\xff",
        ] {
            let h = hello_with(&[(EXT_SERVER_NAME, sni_ext(&[(0, bad)]))]);
            assert!(matches!(parse(&h), Peek::Malformed(_)), "{bad:?}");
        }
        let alpn_twice = hello_with(&[
            (EXT_ALPN, vec![0, 3, 2, b'h', b'2']),
            (EXT_ALPN, vec![0, 3, 2, b'h', b'2']),
        ]);
        assert!(matches!(parse(&alpn_twice), Peek::Malformed(_)));
    }

    #[tokio::test]
    async fn inspect_refuses_a_malformed_client_hello() {
        let twice = hello_with(&[
            (EXT_SERVER_NAME, sni_ext(&[(0, b"allowed.example")])),
            (EXT_SERVER_NAME, sni_ext(&[(0, b"other.example")])),
        ]);
        let (_io, peek) = inspect(&twice[..], Duration::from_secs(1)).await;
        assert!(matches!(peek, Err(Error::Malformed(_))), "{peek:?}");
    }

    #[test]
    fn finds_sni_and_alpn_in_a_real_client_hello() {
        let hello = client_hello("API.GitHub.com", &["h2", "http/1.1"]);
        assert_eq!(
            parse(&hello),
            found(Some("api.github.com"), &["h2", "http/1.1"])
        );
    }

    #[test]
    fn every_prefix_needs_more() {
        let hello = client_hello("api.github.com", &[]);
        for n in 0..hello.len() {
            assert_eq!(parse(&hello[..n]), Peek::NeedMore, "prefix of {n} bytes");
        }
        assert_eq!(parse(&hello), found(Some("api.github.com"), &[]));
    }

    #[test]
    fn client_hello_across_several_records() {
        let hello = client_hello("en.wikipedia.org", &["http/1.1"]);
        for size in [1, 7, 50, 100] {
            let split = split_records(&hello, size);
            assert_eq!(
                parse(&split),
                found(Some("en.wikipedia.org"), &["http/1.1"]),
                "records of {size}"
            );
            for n in 0..split.len() {
                assert_eq!(parse(&split[..n]), Peek::NeedMore, "{size}: prefix {n}");
            }
        }
    }

    #[test]
    fn without_sni() {
        // An IP address as server name: rustls sends no SNI.
        let hello = client_hello("127.0.0.1", &[]);
        assert_eq!(parse(&hello), found(None, &[]));
    }

    #[test]
    fn plain_and_garbage_are_not_tls() {
        let table: [&[u8]; 6] = [
            b"GET / HTTP/1.1\r\n",
            b"\x16\x02",
            b"\x16\x03\x01\x00\x00",
            b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",
            b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00",
            b"\x17\x03\x03\x00\x01x",
        ];
        for bytes in table {
            assert_eq!(parse(bytes), Peek::NotTls, "{bytes:?}");
        }
    }

    #[test]
    fn corrupted_lengths_never_panic() {
        let hello = client_hello("api.github.com", &["h2"]);
        for i in 0..hello.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut h = hello.clone();
                h[i] = v;
                let _ = parse(&h);
            }
        }
    }

    #[test]
    fn fuzz_sni_random_bytes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let hello = client_hello("x.example.com", &["h2"]);
        for _ in 0..20_000 {
            let len = rng.random_range(0..600);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) {
                // Start like TLS so the parser goes deeper.
                let keep = rng.random_range(0..hello.len());
                bytes.splice(0..0, hello[..keep].iter().copied());
            }
            let _ = parse(&bytes);
        }
    }

    #[tokio::test]
    async fn inspect_replays_what_it_read() {
        let hello = client_hello("api.github.com", &[]);
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let sent = hello.clone();
        let writer = tokio::spawn(async move {
            for chunk in sent.chunks(10) {
                tokio::io::AsyncWriteExt::write_all(&mut client, chunk)
                    .await
                    .expect("write");
                tokio::task::yield_now().await;
            }
            client
        });
        let (mut rewind, peek) = inspect(server, Duration::from_secs(5)).await;
        assert_eq!(peek.expect("peek"), found(Some("api.github.com"), &[]));
        let client = writer.await.expect("join");
        drop(client);
        let mut all = Vec::new();
        rewind.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, hello);
    }

    #[tokio::test]
    async fn inspect_is_bounded_in_time_and_size() {
        let hello = client_hello("api.github.com", &[]);
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, &hello[..20])
            .await
            .expect("write");
        let (_, peek) = inspect(server, Duration::from_millis(50)).await;
        assert!(matches!(peek, Err(Error::Timeout)), "{peek:?}");

        // Silence is a server-first plain protocol.
        let (_client, server) = tokio::io::duplex(64);
        let (_, peek) = inspect(server, Duration::from_millis(20)).await;
        assert!(matches!(peek, Ok(Peek::NotTls)), "{peek:?}");

        // Endless tiny records never complete the ClientHello.
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut endless = vec![0x16, 3, 1, 0, 4, 1, 0, 0x3e, 0x80];
        for _ in 0..4000 {
            endless.extend_from_slice(&[0x16, 3, 1, 0, 1, 0]);
        }
        tokio::spawn(async move {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut client, &endless).await;
            client
        });
        let (_, peek) = inspect(server, Duration::from_secs(5)).await;
        assert!(matches!(peek, Err(Error::TooLarge)), "{peek:?}");
    }

    // Paused time: the waits are tokio's, so what elapsed is exact and no machine is too slow.
    #[tokio::test(start_paused = true)]
    async fn a_short_first_bytes_wait_ends_silence_early_but_not_a_slow_hello() {
        let (_client, server) = tokio::io::duplex(64);
        let started = tokio::time::Instant::now();
        let (_, peek) =
            inspect_with(server, Duration::from_millis(20), Duration::from_secs(5)).await;
        assert!(matches!(peek, Ok(Peek::NotTls)), "{peek:?}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(20) && waited < Duration::from_millis(100),
            "{waited:?}: the first-bytes wait, not the whole timeout"
        );

        // Once the first bytes are in, the rest may take the whole timeout.
        let hello = client_hello("api.github.com", &["istio"]);
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let sent = hello.clone();
        tokio::spawn(async move {
            let (head, tail) = sent.split_at(10);
            tokio::io::AsyncWriteExt::write_all(&mut client, head)
                .await
                .expect("write");
            tokio::time::sleep(Duration::from_millis(100)).await;
            tokio::io::AsyncWriteExt::write_all(&mut client, tail)
                .await
                .expect("write");
            client
        });
        let (_, peek) =
            inspect_with(server, Duration::from_millis(20), Duration::from_secs(5)).await;
        assert_eq!(
            peek.expect("peek"),
            found(Some("api.github.com"), &["istio"])
        );
    }
}
