//! A real DNS server (hickory-server, UDP and TCP on the same port) that answers A/AAAA queries
//! from a table tests can change while it runs.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::net::IpAddr;
//! use sluice_test_support::DnsServer;
//! use sluice_test_support::dns::{QueryType, query_udp};
//!
//! let ip: IpAddr = "127.0.10.1".parse()?;
//! let dns = DnsServer::start([
//!     ("api.github.com", vec![ip]),
//!     ("*.wikipedia.org", vec!["127.0.10.2".parse()?, "::1".parse()?]),
//! ])
//! .await?;
//! // sluice ... --dns-server <dns.addr()>
//! let answer = query_udp(dns.addr(), "en.wikipedia.org", QueryType::A).await?;
//! assert_eq!(answer.ips, vec!["127.0.10.2".parse::<IpAddr>()?]);
//! dns.set("api.github.com", vec!["127.0.10.9".parse()?]); // rebinding
//! dns.set_with_ttl("api.github.com", vec![ip], 1);         // TTL in seconds
//! assert_eq!(dns.queries("en.wikipedia.org"), 1);           // also counted under "*.wikipedia.org"
//! # Ok(()) }
//! ```
//! Unknown names get NXDOMAIN; a known name without addresses of the asked family (or asked for
//! another record type) gets an empty NOERROR answer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context as _, bail};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA};
use hickory_server::proto::rr::{RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

/// TTL given to records unless set otherwise, in seconds.
pub const DEFAULT_TTL: u32 = 5;

#[derive(Clone, Debug)]
struct Entry {
    ips: Vec<IpAddr>,
    ttl: u32,
    /// A rebinding server: every other answer (A or AAAA) is these addresses instead.
    rebind: Option<Arc<(Vec<IpAddr>, std::sync::atomic::AtomicU64)>>,
}

#[derive(Default)]
struct Table {
    records: RwLock<HashMap<String, Entry>>,
    queries: Mutex<HashMap<String, u64>>,
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Table {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.records.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.records.write().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, key: &str) {
        let mut q = self.queries.lock().unwrap_or_else(|p| p.into_inner());
        *q.entry(key.to_string()).or_default() += 1;
    }

    /// Exact name first, then the closest `*.` wildcard above it: (table key, entry).
    fn lookup(&self, name: &str) -> Option<(String, Entry)> {
        let records = self.read();
        if let Some(e) = records.get(name) {
            return Some((name.to_string(), e.clone()));
        }
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            let key = format!("*.{parent}");
            if let Some(e) = records.get(&key) {
                return Some((key, e.clone()));
            }
            rest = parent;
        }
        None
    }
}

struct Handler {
    table: Arc<Table>,
}

fn failed(request: &Request, code: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = code;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let Ok(info) = request.request_info() else {
            let resp = builder.error_msg(&request.metadata, ResponseCode::FormErr);
            return response_handle
                .send_response(resp)
                .await
                .unwrap_or_else(|_| failed(request, ResponseCode::ServFail));
        };
        let qname = normalize(&info.query.name().to_string());
        let qtype = info.query.query_type();
        self.table.count(&qname);
        let found = self.table.lookup(&qname);
        let Some((key, entry)) = found else {
            let mut resp = builder.error_msg(&request.metadata, ResponseCode::NXDomain);
            resp.metadata_mut().authoritative = true;
            return response_handle
                .send_response(resp)
                .await
                .unwrap_or_else(|_| failed(request, ResponseCode::ServFail));
        };
        if key != qname {
            self.table.count(&key);
        }
        let owner = info.query.original().name().clone();
        let ips = match &entry.rebind {
            Some(rebind) if matches!(qtype, RecordType::A | RecordType::AAAA) => {
                let n = rebind.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n % 2 == 0 { &entry.ips } else { &rebind.0 }
            }
            _ => &entry.ips,
        };
        let answers: Vec<Record> = ips
            .iter()
            .filter_map(|ip| match (ip, qtype) {
                (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(*v4))),
                (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(*v6))),
                _ => None,
            })
            .map(|rdata| Record::from_rdata(owner.clone(), entry.ttl, rdata))
            .collect();
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.response_code = ResponseCode::NoError;
        let resp = builder.build(metadata, answers.iter(), [], [], []);
        response_handle
            .send_response(resp)
            .await
            .unwrap_or_else(|_| failed(request, ResponseCode::ServFail))
    }
}

/// A DNS server on loopback, UDP and TCP on one port. Stops on drop.
pub struct DnsServer {
    addr: SocketAddr,
    table: Arc<Table>,
    _server: Server<Handler>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl DnsServer {
    /// Starts on `127.0.0.1:<free port>` with `records` (name or `*.suffix` → addresses, TTL
    /// [`DEFAULT_TTL`]). Listening before it returns. Must be called inside a tokio runtime.
    pub async fn start<I, S>(records: I) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = (S, Vec<IpAddr>)>,
        S: AsRef<str>,
    {
        let ip: IpAddr = [127, 0, 0, 1].into();
        // UDP first on port 0, then TCP on the same port; retry if that TCP port is taken.
        let mut last = None;
        for _ in 0..20 {
            let udp = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
            let addr = udp.local_addr()?;
            match crate::net::bind_tcp(addr, "DnsServer") {
                Ok((tcp, _closer)) => return Ok(Self::serve(udp, tcp, records)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no port")))
            .context("DnsServer: no port free for both UDP and TCP")
    }

    /// Starts on a given loopback address (e.g. `127.0.10.7:53`), UDP and TCP.
    pub async fn start_at<I, S>(addr: SocketAddr, records: I) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = (S, Vec<IpAddr>)>,
        S: AsRef<str>,
    {
        crate::assert_loopback(addr, "DnsServer");
        let udp = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("DnsServer: binding UDP {addr}"))?;
        let (tcp, _closer) = crate::net::bind_tcp(udp.local_addr()?, "DnsServer")?;
        Ok(Self::serve(udp, tcp, records))
    }

    fn serve<I, S>(udp: UdpSocket, tcp: tokio::net::TcpListener, records: I) -> Self
    where
        I: IntoIterator<Item = (S, Vec<IpAddr>)>,
        S: AsRef<str>,
    {
        let addr = udp
            .local_addr()
            .unwrap_or_else(|e| panic!("DnsServer local addr: {e}"));
        let table = Arc::new(Table::default());
        {
            let mut w = table.write();
            for (name, ips) in records {
                w.insert(
                    normalize(name.as_ref()),
                    Entry {
                        ips,
                        ttl: DEFAULT_TTL,
                        rebind: None,
                    },
                );
            }
        }
        let mut server = Server::new(Handler {
            table: table.clone(),
        });
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64);
        Self {
            addr,
            table,
            _server: server,
        }
    }

    /// Where to send queries (`--dns-server`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the addresses for `name` (or `*.suffix`), keeping its TTL ([`DEFAULT_TTL`] if new).
    pub fn set(&self, name: &str, ips: Vec<IpAddr>) {
        let mut w = self.table.write();
        let key = normalize(name);
        let ttl = w.get(&key).map_or(DEFAULT_TTL, |e| e.ttl);
        w.insert(
            key,
            Entry {
                ips,
                ttl,
                rebind: None,
            },
        );
    }

    /// A rebinding name: address queries are answered `first`, then `then`, then `first`
    /// again, …, each with TTL 0 (so a resolver that asks twice gets both).
    pub fn set_rebinding(&self, name: &str, first: Vec<IpAddr>, then: Vec<IpAddr>) {
        self.table.write().insert(
            normalize(name),
            Entry {
                ips: first,
                ttl: 0,
                rebind: Some(Arc::new((then, std::sync::atomic::AtomicU64::new(0)))),
            },
        );
    }

    /// Sets the addresses and TTL (seconds) for `name`.
    pub fn set_with_ttl(&self, name: &str, ips: Vec<IpAddr>, ttl: u32) {
        self.table.write().insert(
            normalize(name),
            Entry {
                ips,
                ttl,
                rebind: None,
            },
        );
    }

    /// Forgets `name`: it answers NXDOMAIN from now on.
    pub fn remove(&self, name: &str) {
        self.table.write().remove(&normalize(name));
    }

    /// Queries received for `name` (any type, UDP or TCP). For a wildcard key such as
    /// `*.wikipedia.org`, the queries it answered.
    pub fn queries(&self, name: &str) -> u64 {
        let q = self.table.queries.lock().unwrap_or_else(|p| p.into_inner());
        q.get(&normalize(name)).copied().unwrap_or(0)
    }
}

/// Record types the test client asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryType {
    /// IPv4 address.
    A,
    /// IPv6 address.
    Aaaa,
    /// Any other type, by number (e.g. 16 for TXT).
    Other(u16),
}

impl QueryType {
    fn code(self) -> u16 {
        match self {
            QueryType::A => 1,
            QueryType::Aaaa => 28,
            QueryType::Other(n) => n,
        }
    }
}

/// A decoded DNS answer, parsed by hand from the wire bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsAnswer {
    /// RCODE: 0 NOERROR, 3 NXDOMAIN...
    pub rcode: u8,
    /// The AA bit.
    pub authoritative: bool,
    /// A/AAAA addresses in the answer section, in order.
    pub ips: Vec<IpAddr>,
    /// TTL of each answer record, in order.
    pub ttls: Vec<u32>,
}

/// Response code NXDOMAIN.
pub const NXDOMAIN: u8 = 3;

static QUERY_ID: AtomicU16 = AtomicU16::new(0x5100);

/// Builds a query message by hand (RD set, class IN).
pub fn build_query(id: u16, name: &str, qtype: QueryType) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        let len = u8::try_from(label.len()).unwrap_or(63).min(63);
        m.push(len);
        m.extend_from_slice(&label.as_bytes()[..usize::from(len)]);
    }
    m.push(0);
    m.extend_from_slice(&qtype.code().to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

fn skip_name(msg: &[u8], mut i: usize) -> anyhow::Result<usize> {
    for _ in 0..128 {
        let len = *msg.get(i).context("truncated name")?;
        match len {
            0 => return Ok(i + 1),
            l if l & 0xc0 == 0xc0 => return Ok(i + 2),
            l => i += 1 + usize::from(l),
        }
    }
    bail!("name too long")
}

fn be16(msg: &[u8], i: usize) -> anyhow::Result<u16> {
    let b = msg.get(i..i + 2).context("truncated")?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

/// Parses a response to a query with id `id`.
pub fn parse_response(id: u16, msg: &[u8]) -> anyhow::Result<DnsAnswer> {
    anyhow::ensure!(msg.len() >= 12, "short DNS message");
    anyhow::ensure!(be16(msg, 0)? == id, "wrong id");
    anyhow::ensure!(msg[2] & 0x80 != 0, "not a response");
    let qd = be16(msg, 4)?;
    let an = be16(msg, 6)?;
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(msg, i)? + 4;
    }
    let mut out = DnsAnswer {
        rcode: msg[3] & 0x0f,
        authoritative: msg[2] & 0x04 != 0,
        ips: vec![],
        ttls: vec![],
    };
    for _ in 0..an {
        i = skip_name(msg, i)?;
        let rtype = be16(msg, i)?;
        let ttl_b = msg.get(i + 4..i + 8).context("truncated")?;
        let ttl = u32::from_be_bytes([ttl_b[0], ttl_b[1], ttl_b[2], ttl_b[3]]);
        let rdlen = usize::from(be16(msg, i + 8)?);
        let rdata = msg.get(i + 10..i + 10 + rdlen).context("truncated rdata")?;
        match (rtype, rdata.len()) {
            (1, 4) => out.ips.push(IpAddr::from(<[u8; 4]>::try_from(rdata)?)),
            (28, 16) => out.ips.push(IpAddr::from(<[u8; 16]>::try_from(rdata)?)),
            _ => {}
        }
        out.ttls.push(ttl);
        i += 10 + rdlen;
    }
    Ok(out)
}

/// Asks `server` over UDP (2 s timeout).
pub async fn query_udp(
    server: SocketAddr,
    name: &str,
    qtype: QueryType,
) -> anyhow::Result<DnsAnswer> {
    crate::assert_loopback(server, "query_udp");
    let id = QUERY_ID.fetch_add(1, Ordering::Relaxed);
    let sock = UdpSocket::bind(SocketAddr::new(server.ip(), 0)).await?;
    sock.connect(server).await?; // so that a closed port fails fast (ICMP unreachable)
    sock.send(&build_query(id, name, qtype)).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
        .await
        .context("DNS query over UDP timed out")??;
    parse_response(id, &buf[..n])
}

/// Asks `server` over TCP (2 s timeout).
pub async fn query_tcp(
    server: SocketAddr,
    name: &str,
    qtype: QueryType,
) -> anyhow::Result<DnsAnswer> {
    crate::assert_loopback(server, "query_tcp");
    let id = QUERY_ID.fetch_add(1, Ordering::Relaxed);
    let q = build_query(id, name, qtype);
    let fut = async {
        let mut tcp = tokio::net::TcpStream::connect(server).await?;
        let mut framed = u16::try_from(q.len())?.to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        tcp.write_all(&framed).await?;
        let len = tcp.read_u16().await?;
        let mut msg = vec![0u8; usize::from(len)];
        tcp.read_exact(&mut msg).await?;
        parse_response(id, &msg)
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .context("DNS query over TCP timed out")?
}
