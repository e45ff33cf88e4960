//! sluice-loadgen: the load generator of `bench/proxy-compare.sh` for what wrk cannot do.
//!
//! - HTTP/1.1 GETs over kept-alive connections, straight (`--url`), through an explicit proxy
//!   in absolute form (`--proxy`), or inside a `CONNECT` tunnel (`--connect`), with TLS to the
//!   origin (`https://` URLs; `--ca`, `--sni`).
//! - Closed loop (each connection sends its next request when the last one is answered) or a
//!   fixed request rate across all connections (`--rate`), for latency at a given load. At a
//!   fixed rate a request's latency is counted from the moment it was due, not from when it
//!   was sent, so a stalled connection shows up in the percentiles (no coordinated omission).
//! - `--hold N`: opens N connections (TLS handshake completed when the URL is https), prints a
//!   `HOLD` line, keeps them idle for `-d` seconds and exits.
//!
//! Results are one machine-readable line on stdout:
//! `RESULT requests=… duration_us=… sock_errors=… status_errors=… p50_us=… p90_us=… p99_us=…
//! p999_us=… max_us=… rps=…` (the keys of the wrk script of proxy-compare.sh, plus more).

use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_rustls::TlsConnector;

const USAGE: &str = "\
usage: sluice-loadgen --url URL [options]
  --url URL            http://HOST[:PORT]/PATH or https://HOST[:PORT]/PATH
  --addr IP:PORT       connect here instead of resolving HOST (direct mode)
  --proxy IP:PORT      explicit HTTP proxy: absolute-form requests (http:// URLs)
  --connect IP:PORT    CONNECT HOST:PORT through this proxy, then speak to the origin inside
  --ca FILE            PEM CA certificates that verify the origin (https)
  --sni NAME           TLS server name (default: HOST)
  -H 'Name: value'     extra request header (repeatable)
  -c N                 connections (default 50); with --hold: handshakes in flight at once
  -d SECS              measured duration (default 10); with --hold: how long to hold
  --warmup SECS        run this long before measuring (default 0)
  --rate R             fixed total request rate across the connections (default: closed loop)
  --hold N             open N connections, complete the TLS handshake, keep them idle
  --threads N          runtime threads (default 1)
  --timeout SECS       per connect / request (default 10)";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Clone, Copy, Debug)]
enum Via {
    Direct(SocketAddr),
    Proxy(SocketAddr),
    Connect(SocketAddr),
}

struct Opts {
    url: String,
    addr: Option<SocketAddr>,
    proxy: Option<SocketAddr>,
    connect: Option<SocketAddr>,
    ca: Option<String>,
    sni: Option<String>,
    headers: Vec<String>,
    conns: usize,
    duration: f64,
    warmup: f64,
    rate: Option<f64>,
    hold: Option<usize>,
    threads: usize,
    timeout: f64,
}

/// What every connection shares.
struct Shared {
    via: Via,
    /// `host:port`, the CONNECT target.
    connect_target: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    request: Vec<u8>,
    timeout: Duration,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        url: String::new(),
        addr: None,
        proxy: None,
        connect: None,
        ca: None,
        sni: None,
        headers: Vec::new(),
        conns: 50,
        duration: 10.0,
        warmup: 0.0,
        rate: None,
        hold: None,
        threads: 1,
        timeout: 10.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "-h" || a == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let v = args.next().ok_or_else(|| format!("{a} needs a value"))?;
        let num = |v: &str| v.parse::<f64>().map_err(|e| format!("{a} {v}: {e}"));
        let int = |v: &str| v.parse::<usize>().map_err(|e| format!("{a} {v}: {e}"));
        let sock = |v: &str| v.parse::<SocketAddr>().map_err(|e| format!("{a} {v}: {e}"));
        match a.as_str() {
            "--url" => o.url = v,
            "--addr" => o.addr = Some(sock(&v)?),
            "--proxy" => o.proxy = Some(sock(&v)?),
            "--connect" => o.connect = Some(sock(&v)?),
            "--ca" => o.ca = Some(v),
            "--sni" => o.sni = Some(v),
            "-H" | "--header" => o.headers.push(v),
            "-c" => o.conns = int(&v)?.max(1),
            "-d" => o.duration = num(&v)?,
            "--warmup" => o.warmup = num(&v)?,
            "--rate" => o.rate = Some(num(&v)?).filter(|r| *r > 0.0),
            "--hold" => o.hold = Some(int(&v)?),
            "--threads" => o.threads = int(&v)?.max(1),
            "--timeout" => o.timeout = num(&v)?,
            _ => return Err(format!("unknown option {a}\n{USAGE}")),
        }
    }
    if o.url.is_empty() {
        return Err(format!("--url is required\n{USAGE}"));
    }
    Ok(o)
}

fn setup(o: &Opts) -> Result<Shared, BoxError> {
    let (https, rest) = if let Some(r) = o.url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = o.url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{}: only http:// and https:// URLs", o.url).into());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse::<u16>()?),
        _ => (authority, if https { 443 } else { 80 }),
    };
    let via = match (o.proxy, o.connect) {
        (Some(_), Some(_)) => return Err("--proxy and --connect exclude each other".into()),
        (Some(p), None) => {
            if https {
                return Err("--proxy sends absolute-form http://; use --connect for https".into());
            }
            Via::Proxy(p)
        }
        (None, Some(c)) => Via::Connect(c),
        (None, None) => Via::Direct(match o.addr {
            Some(a) => a,
            None => (host, port)
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| format!("{host} does not resolve; pass --addr"))?,
        }),
    };
    let tls = if https {
        let mut roots = RootCertStore::empty();
        let ca = o.ca.as_deref().ok_or("https needs --ca FILE")?;
        for cert in CertificateDer::pem_file_iter(ca)? {
            roots.add(cert?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let sni = o.sni.clone().unwrap_or_else(|| host.to_owned());
        Some((
            TlsConnector::from(Arc::new(config)),
            ServerName::try_from(sni)?,
        ))
    } else {
        None
    };
    let target = match via {
        Via::Proxy(_) => format!("http://{authority}{path}"),
        _ => path.to_owned(),
    };
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: {authority}\r\n");
    for h in &o.headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    Ok(Shared {
        via,
        connect_target: format!("{host}:{port}"),
        tls,
        request: request.into_bytes(),
        timeout: Duration::from_secs_f64(o.timeout),
    })
}

/// Opens one connection: TCP, the CONNECT tunnel, TLS, as the options say.
async fn open(sh: &Shared) -> Result<Box<dyn Io>, BoxError> {
    let addr = match sh.via {
        Via::Direct(a) | Via::Proxy(a) | Via::Connect(a) => a,
    };
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut io: Box<dyn Io> = Box::new(tcp);
    if let Via::Connect(_) = sh.via {
        let t = &sh.connect_target;
        io.write_all(format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n").as_bytes())
            .await?;
        // The far end says nothing before the client's first bytes, so the response head is
        // all there is to read here.
        let mut buf = Vec::with_capacity(1024);
        let status = loop {
            if buf.len() > 16 * 1024 {
                return Err("CONNECT response head too long".into());
            }
            if io.read_buf(&mut buf).await? == 0 {
                return Err("proxy closed the CONNECT".into());
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = resp.parse(&buf)? {
                if n != buf.len() {
                    return Err("bytes after the CONNECT response head".into());
                }
                break resp.code.unwrap_or(0);
            }
        };
        if !(200..300).contains(&status) {
            return Err(format!("CONNECT {t}: status {status}").into());
        }
    }
    if let Some((connector, name)) = &sh.tls {
        let tls = connector.connect(name.clone(), io).await?;
        io = Box::new(tls);
    }
    Ok(io)
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

async fn fill(io: &mut Box<dyn Io>, buf: &mut Vec<u8>, want: usize) -> io::Result<()> {
    while buf.len() < want {
        buf.reserve(8192);
        if io.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

async fn read_line(io: &mut Box<dyn Io>, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    loop {
        if let Some(p) = find_crlf(buf) {
            let line = buf[..p].to_vec();
            buf.drain(..p + 2);
            return Ok(line);
        }
        let want = buf.len() + 1;
        fill(io, buf, want).await?;
    }
}

/// Sends the request and reads one response; returns its status and whether the connection
/// must be closed after it.
async fn roundtrip(io: &mut Box<dyn Io>, buf: &mut Vec<u8>, req: &[u8]) -> io::Result<(u16, bool)> {
    io.write_all(req).await?;
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    let (code, head_len, length, chunked, mut close) = loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut length = None;
                    let mut chunked = false;
                    let mut close = resp.version == Some(0);
                    for h in resp.headers.iter() {
                        let v = std::str::from_utf8(h.value).unwrap_or("").trim();
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = Some(v.parse::<usize>().map_err(|_| bad("content-length"))?);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = v.to_ascii_lowercase().contains("chunked");
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            let v = v.to_ascii_lowercase();
                            if v.contains("close") {
                                close = true;
                            } else if v.contains("keep-alive") {
                                close = false;
                            }
                        }
                    }
                    break (resp.code.unwrap_or(0), n, length, chunked, close);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(bad("malformed response head")),
            }
        }
        let want = buf.len() + 1;
        fill(io, buf, want).await?;
    };
    buf.drain(..head_len);
    if chunked {
        loop {
            let line = read_line(io, buf).await?;
            let text = std::str::from_utf8(&line).map_err(|_| bad("chunk size"))?;
            let hex = text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(hex, 16).map_err(|_| bad("chunk size"))?;
            if size == 0 {
                while !read_line(io, buf).await?.is_empty() {}
                break;
            }
            fill(io, buf, size + 2).await?;
            buf.drain(..size + 2);
        }
    } else if let Some(n) = length {
        fill(io, buf, n).await?;
        buf.drain(..n);
    } else if !(code == 204 || code == 304 || (100..200).contains(&code)) {
        // Delimited by the end of the connection.
        loop {
            buf.clear();
            buf.reserve(8192);
            if io.read_buf(buf).await? == 0 {
                break;
            }
        }
        close = true;
    }
    Ok((code, close))
}

#[derive(Default)]
struct Stats {
    requests: u64,
    sock_errors: u64,
    status_errors: u64,
    latencies_us: Vec<u32>,
}

struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

async fn worker(
    sh: Arc<Shared>,
    w: Arc<Window>,
    id: usize,
    conns: usize,
    rate: Option<f64>,
) -> Stats {
    let mut st = Stats::default();
    let mut conn: Option<Box<dyn Io>> = None;
    let mut buf = Vec::with_capacity(16 * 1024);
    let interval = rate.map(|r| Duration::from_secs_f64(conns as f64 / r));
    // Connections' schedules are spread evenly over one interval.
    let mut next =
        w.start + interval.map_or(Duration::ZERO, |iv| iv.mul_f64(id as f64 / conns as f64));
    loop {
        let begin = match interval {
            Some(iv) => {
                if next >= w.end {
                    break;
                }
                let due = next;
                next += iv;
                if Instant::now() < due {
                    // On time: the timer's own lateness (about 1 ms granularity) is not the
                    // server's, so count from the actual wake-up.
                    sleep_until(due).await;
                    Instant::now()
                } else {
                    // Behind schedule: count from when the request was due.
                    due
                }
            }
            None => {
                let now = Instant::now();
                if now >= w.end {
                    break;
                }
                now
            }
        };
        if conn.is_none() {
            match timeout(sh.timeout, open(&sh)).await {
                Ok(Ok(c)) => conn = Some(c),
                _ => {
                    if Instant::now() >= w.measure_from {
                        st.sock_errors += 1;
                    }
                    sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(io) = conn.as_mut() else { continue };
        buf.clear();
        let r = timeout(sh.timeout, roundtrip(io, &mut buf, &sh.request)).await;
        let done = Instant::now();
        let counted = done >= w.measure_from && done <= w.end;
        match r {
            Ok(Ok((status, close))) => {
                if counted {
                    st.requests += 1;
                    let us = done.duration_since(begin).as_micros();
                    st.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                    if !(200..400).contains(&status) {
                        st.status_errors += 1;
                    }
                }
                if close {
                    conn = None;
                }
            }
            _ => {
                if counted {
                    st.sock_errors += 1;
                }
                conn = None;
            }
        }
    }
    st
}

async fn load(sh: Arc<Shared>, o: &Opts) -> Result<(), BoxError> {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(o.warmup);
    let w = Arc::new(Window {
        start,
        measure_from,
        end: measure_from + Duration::from_secs_f64(o.duration),
    });
    let mut set = JoinSet::new();
    for id in 0..o.conns {
        set.spawn(worker(sh.clone(), w.clone(), id, o.conns, o.rate));
    }
    let mut total = Stats::default();
    while let Some(r) = set.join_next().await {
        let s = r?;
        total.requests += s.requests;
        total.sock_errors += s.sock_errors;
        total.status_errors += s.status_errors;
        total.latencies_us.extend(s.latencies_us);
    }
    let lat = &mut total.latencies_us;
    lat.sort_unstable();
    let pct = |q: f64| -> u32 {
        if lat.is_empty() {
            return 0;
        }
        let i = ((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i]
    };
    let dur_us = (o.duration * 1e6) as u64;
    println!(
        "RESULT requests={} duration_us={} sock_errors={} status_errors={} p50_us={} p90_us={} p99_us={} p999_us={} max_us={} rps={:.1}",
        total.requests,
        dur_us,
        total.sock_errors,
        total.status_errors,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        lat.last().copied().unwrap_or(0),
        total.requests as f64 / o.duration,
    );
    Ok(())
}

async fn hold(sh: Arc<Shared>, o: &Opts, n: usize) -> Result<(), BoxError> {
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(o.conns));
    let mut set = JoinSet::new();
    for _ in 0..n {
        let (sh, gate) = (sh.clone(), gate.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            timeout(sh.timeout, open(&sh)).await
        });
    }
    let mut held = Vec::with_capacity(n);
    let mut errors = 0usize;
    let mut first_error = None;
    while let Some(r) = set.join_next().await {
        match r? {
            Ok(Ok(io)) => held.push(io),
            Ok(Err(e)) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            Err(_) => {
                errors += 1;
                first_error.get_or_insert_with(|| "timed out".to_owned());
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("first error: {e}");
    }
    println!(
        "HOLD opened={} errors={} open_ms={}",
        held.len(),
        errors,
        started.elapsed().as_millis()
    );
    io::stdout().flush()?;
    sleep(Duration::from_secs_f64(o.duration)).await;
    // How many the far end closed while idle.
    let mut closed = 0usize;
    for io in held.iter_mut() {
        let mut b = [0u8; 64];
        // One poll: ready with EOF or an error means closed; pending means still open.
        let gone = std::future::poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut b);
            match Pin::new(&mut **io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => Poll::Ready(rb.filled().is_empty()),
                Poll::Ready(Err(_)) => Poll::Ready(true),
                Poll::Pending => Poll::Ready(false),
            }
        })
        .await;
        closed += usize::from(gone);
    }
    println!("HOLD_END held={} closed_while_idle={}", held.len(), closed);
    Ok(())
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let sh = match setup(&o) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("sluice-loadgen: {e}");
            std::process::exit(2);
        }
    };
    let rt = if o.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(o.threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    let r = rt.block_on(async {
        match o.hold {
            Some(n) => hold(sh, &o, n).await,
            None => load(sh, &o).await,
        }
    });
    if let Err(e) = r {
        eprintln!("sluice-loadgen: {e}");
        std::process::exit(1);
    }
}
