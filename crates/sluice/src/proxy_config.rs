//! `sluice proxy-config`: what a running proxy routes, read from its admin API, printed the way
//! `istioctl proxy-config` prints Envoy's.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use sluice_proxy::inspect::{ClusterHealth, EndpointHealth, ListenerStatus};
use sluice_snapshot::cluster::Discovery;
use sluice_snapshot::listener::{App, Transport};
use sluice_snapshot::route::RouteAction;
use sluice_snapshot::{Role, Snapshot};

use crate::cli::{Output, exit};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Listeners,
    Routes,
    Clusters,
    Endpoints,
    All,
    /// The log levels (`/logging`); `--level` changes them (needs `--admin-writable`).
    Log,
    /// The certificates the proxy presents and trusts (`/certs`), as istioctl's
    /// `proxy-config secret` lists Envoy's SDS secrets.
    Secret,
}

#[derive(Debug, clap::Args)]
pub struct ProxyConfigArgs {
    #[arg(value_enum)]
    pub section: Section,
    /// The proxy's admin API: HOST:PORT, the host a name (`localhost:15000`) or an address.
    #[arg(long, default_value = "127.0.0.1:15000", env = "SLUICE_ADMIN", value_parser = parse_admin)]
    pub admin: SocketAddr,
    #[arg(short, long, value_enum, default_value = "text", env = "SLUICE_OUTPUT")]
    pub output: Output,
    /// With `log`: the new levels, `[<logger>:]<level>,...` as istioctl takes them (`debug`,
    /// `upstream:trace,http:debug`); levels trace, debug, info, warning, error, critical, off.
    #[arg(long, value_parser = parse_level)]
    pub level: Option<String>,
}

/// `--level` as `/logging`'s query: a bare level for every logger, `logger:level` pairs as
/// `paths`; only characters the query carries as they are.
fn parse_level(s: &str) -> Result<String, String> {
    let mut level = None;
    let mut paths = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if !item
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(format!("{item:?}: expected [<logger>:]<level>"));
        }
        match item.rsplit_once(':') {
            Some((logger, l)) if !logger.is_empty() && !l.is_empty() => {
                paths.push(format!("{logger}:{l}"));
            }
            Some(_) => return Err(format!("{item:?}: expected [<logger>:]<level>")),
            None => level = Some(item.to_owned()),
        }
    }
    let mut query: Vec<String> = level.map(|l| format!("level={l}")).into_iter().collect();
    if !paths.is_empty() {
        query.push(format!("paths={}", paths.join(",")));
    }
    if query.is_empty() {
        return Err("no level given".into());
    }
    Ok(query.join("&"))
}

/// `proxy-config log`: reads `/logging`, or sets it (POST) when `--level` is given.
fn log(args: &ProxyConfigArgs, out: &mut impl Write) -> anyhow::Result<u8> {
    let (method, path) = match &args.level {
        Some(query) => ("POST", format!("/logging?{query}")),
        None => ("GET", "/logging".to_owned()),
    };
    let (status, body) = request(args.admin, method, &path)?;
    if status != 200 {
        bail!("{method} {path}: {status}: {}", body.trim());
    }
    if args.output == Output::Json {
        let levels: serde_json::Map<String, serde_json::Value> = body
            .lines()
            .filter_map(|l| l.trim().split_once(": "))
            .map(|(k, v)| (k.to_owned(), serde_json::Value::from(v)))
            .collect();
        serde_json::to_writer_pretty(&mut *out, &levels)?;
        writeln!(out)?;
    } else {
        write!(out, "{body}")?;
    }
    Ok(exit::OK)
}

pub fn run(args: &ProxyConfigArgs, out: &mut impl Write) -> anyhow::Result<u8> {
    if args.section == Section::Log {
        return log(args, out);
    }
    if args.section == Section::Secret {
        return secrets(args, out);
    }
    if args.level.is_some() {
        bail!("--level goes with `proxy-config log`");
    }
    let body = fetch(args.admin, "/config_dump")
        .with_context(|| format!("reading /config_dump from {}", args.admin))?;
    let snapshot: Snapshot = serde_json::from_str(&body)
        .context("the admin API answered with an unexpected document")?;
    // Whether each listener is bound is run-time state: `/listeners`. A proxy that does not
    // answer it still has its configuration shown.
    let bound: Vec<ListenerStatus> = if matches!(args.section, Section::Listeners | Section::All) {
        fetch(args.admin, "/listeners?format=json")
            .ok()
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    if args.output == Output::Json {
        let mut value = serde_json::to_value(&snapshot)?;
        if let Some(listeners) = value["listeners"].as_array_mut() {
            for l in listeners {
                let port = l["port"].as_u64();
                let Some(st) = bound.iter().find(|b| {
                    Some(u64::from(b.address.port())) == port && b.name != "explicit_proxy"
                }) else {
                    continue;
                };
                l["address"] = serde_json::Value::from(st.address.to_string());
                l["state"] = serde_json::Value::from(if st.bound { "BOUND" } else { "RETRYING" });
                if let Some(e) = &st.error {
                    l["error"] = serde_json::Value::from(e.as_str());
                }
            }
        }
        let part = match args.section {
            Section::Listeners => value["listeners"].clone(),
            Section::Routes => serde_json::to_value(routes(&snapshot))?,
            Section::Clusters | Section::Endpoints => value["clusters"].clone(),
            Section::All | Section::Log | Section::Secret => value,
        };
        serde_json::to_writer_pretty(&mut *out, &part)?;
        writeln!(out)?;
        return Ok(exit::OK);
    }
    // Endpoint health is run-time state: `/clusters`, beside the configuration.
    let health: Vec<ClusterHealth> = if matches!(args.section, Section::Endpoints | Section::All) {
        let body = fetch(args.admin, "/clusters?format=json")
            .with_context(|| format!("reading /clusters from {}", args.admin))?;
        serde_json::from_str(&body).context("the admin API answered /clusters unexpectedly")?
    } else {
        Vec::new()
    };
    render(&snapshot, &health, &bound, args.section, out)?;
    Ok(exit::OK)
}

/// `proxy-config secret`: `/certs` as istioctl prints secrets.
fn secrets(args: &ProxyConfigArgs, out: &mut impl Write) -> anyhow::Result<u8> {
    if args.level.is_some() {
        bail!("--level goes with `proxy-config log`");
    }
    let body = fetch(args.admin, "/certs")
        .with_context(|| format!("reading /certs from {}", args.admin))?;
    let rows: Vec<crate::certs::CertView> =
        serde_json::from_str(&body).context("the admin API answered /certs unexpectedly")?;
    if args.output == Output::Json {
        serde_json::to_writer_pretty(&mut *out, &rows)?;
        writeln!(out)?;
        return Ok(exit::OK);
    }
    let cells: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            vec![
                r.resource_name,
                r.kind,
                r.status,
                r.valid_cert.to_string(),
                r.serial_number,
                r.not_after,
                r.not_before,
            ]
        })
        .collect();
    table(
        out,
        &[
            "RESOURCE NAME",
            "TYPE",
            "STATUS",
            "VALID CERT",
            "SERIAL NUMBER",
            "NOT AFTER",
            "NOT BEFORE",
        ],
        &cells,
    )?;
    Ok(exit::OK)
}

/// `BOUND`, or `RETRYING (<last bind error>)`.
fn state(l: &ListenerStatus) -> String {
    match (&l.error, l.bound) {
        (_, true) => "BOUND".into(),
        (Some(e), false) => format!("RETRYING ({e})"),
        (None, false) => "RETRYING".into(),
    }
}

/// Renders the tables for `section` (text); `bound` is `/listeners`, what is bound now.
pub fn render(
    s: &Snapshot,
    health: &[ClusterHealth],
    bound: &[ListenerStatus],
    section: Section,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let all = section == Section::All;
    if all || section == Section::Listeners {
        table(
            out,
            &["ADDRESSES", "PORT", "MATCH", "DESTINATION", "STATE"],
            &listeners(s, bound),
        )?;
    }
    if all || section == Section::Routes {
        if all {
            writeln!(out)?;
        }
        table(
            out,
            &["NAME", "VHOST NAME", "DOMAINS", "MATCH", "ACTION"],
            &routes(s),
        )?;
    }
    if all || section == Section::Clusters {
        if all {
            writeln!(out)?;
        }
        table(
            out,
            &[
                "SERVICE FQDN",
                "PORT",
                "SUBSET",
                "DISCOVERY",
                "TLS",
                "CLUSTER",
            ],
            &clusters(s),
        )?;
    }
    if all || section == Section::Endpoints {
        if all {
            writeln!(out)?;
        }
        table(
            out,
            &["ENDPOINT", "STATUS", "OUTLIER CHECK", "LABELS", "CLUSTER"],
            &endpoints(s, health),
        )?;
    }
    Ok(())
}

/// One row per filter chain, with the address bound and whether it is (`BOUND`, `RETRYING`
/// with the last error); a sidecar's listeners are `VIRTUAL`, chosen per flow behind its
/// explicit proxy, which has a row of its own.
fn listeners(s: &Snapshot, bound: &[ListenerStatus]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for l in &s.listeners {
        let status = bound
            .iter()
            .find(|b| b.name == l.port.to_string() && b.address.port() == l.port);
        let (address, st) = match (status, s.role) {
            (Some(b), _) => (b.address.ip().to_string(), state(b)),
            (None, Role::Sidecar) => ("0.0.0.0".to_owned(), "VIRTUAL".to_owned()),
            (None, Role::Gateway) => ("0.0.0.0".to_owned(), "-".to_owned()),
        };
        for c in &l.chains {
            let mut m = match c.match_.transport {
                Transport::Tls => "TLS".to_owned(),
                Transport::Plain => "ALL".to_owned(),
            };
            if !c.match_.server_names.is_empty() {
                let names: Vec<String> = c
                    .match_
                    .server_names
                    .iter()
                    .map(|n| n.to_string())
                    .collect();
                m = format!("SNI: {}", names.join(","));
            }
            if c.tls.is_some() {
                m.push_str(" (terminate)");
            }
            let dest = match &c.app {
                App::Http { route_config, .. } => format!("Route: {route_config}"),
                App::Tcp { routes } => {
                    let clusters: Vec<&str> = routes
                        .iter()
                        .flat_map(|r| r.clusters.iter().map(|c| c.cluster.as_str()))
                        .collect();
                    format!("Cluster: {}", clusters.join(","))
                }
            };
            rows.push(vec![
                address.clone(),
                l.port.to_string(),
                m,
                dest,
                st.clone(),
            ]);
        }
    }
    for b in bound.iter().filter(|b| b.name == "explicit_proxy") {
        rows.push(vec![
            b.address.ip().to_string(),
            b.address.port().to_string(),
            "ALL".into(),
            "explicit proxy (HTTP_PROXY / HTTPS_PROXY)".into(),
            state(b),
        ]);
    }
    rows
}

fn routes(s: &Snapshot) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for l in &s.listeners {
        for c in &l.chains {
            let App::Http {
                route_config,
                virtual_hosts,
                ..
            } = &c.app
            else {
                continue;
            };
            for vh in virtual_hosts {
                let domains: Vec<String> = vh.domains.iter().map(|d| d.to_string()).collect();
                for r in &vh.routes {
                    let m = if r.match_.any_of.is_empty() {
                        "/*".to_owned()
                    } else {
                        serde_json::to_string(&r.match_.any_of).unwrap_or_default()
                    };
                    let action = match &r.action {
                        RouteAction::Forward(f) => f
                            .clusters
                            .iter()
                            .map(|c| format!("{} ({}%)", c.cluster, c.weight))
                            .collect::<Vec<_>>()
                            .join(", "),
                        RouteAction::Redirect(rd) => format!("redirect {}", rd.status),
                        RouteAction::DirectResponse { status, .. } => format!("direct {status}"),
                    };
                    rows.push(vec![
                        route_config.clone(),
                        vh.name.clone(),
                        domains.join(","),
                        m,
                        action,
                    ]);
                }
            }
        }
    }
    rows
}

fn clusters(s: &Snapshot) -> Vec<Vec<String>> {
    s.clusters
        .values()
        .map(|c| {
            let subset = c.name.split('|').nth(2).unwrap_or("").to_owned();
            let discovery = match &c.discovery {
                Discovery::Static { .. } => "STATIC",
                Discovery::Dns {
                    round_robin: false, ..
                } => "STRICT_DNS",
                Discovery::Dns {
                    round_robin: true, ..
                } => "LOGICAL_DNS",
                Discovery::DynamicDns => "DYNAMIC_DNS",
                Discovery::OriginalDestination => "ORIGINAL_DST",
                Discovery::BlackHole => "BLACK_HOLE",
            };
            let tls = c
                .tls
                .as_ref()
                .map(|t| format!("{:?}", t.mode).to_uppercase())
                .unwrap_or_else(|| "-".into());
            vec![
                c.service.clone(),
                c.port.to_string(),
                subset,
                discovery.into(),
                tls,
                c.name.clone(),
            ]
        })
        .collect()
}

/// The configured endpoints with their health (istioctl's STATUS and OUTLIER CHECK columns);
/// a DNS cluster lists the addresses it has used, or its name when it has used none yet.
fn endpoints(s: &Snapshot, health: &[ClusterHealth]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let row = |addr: String, e: Option<&EndpointHealth>, labels: String, cluster: &str| {
        let (status, check) = match e {
            Some(e) if e.outlier_ejected => ("UNHEALTHY", "FAILED"),
            _ => ("HEALTHY", "OK"),
        };
        vec![
            addr,
            status.to_owned(),
            check.to_owned(),
            labels,
            cluster.to_owned(),
        ]
    };
    for c in s.clusters.values() {
        let seen: &[EndpointHealth] = health
            .iter()
            .find(|h| h.name == c.name)
            .map_or(&[], |h| h.endpoints.as_slice());
        match &c.discovery {
            Discovery::Static { endpoints } => {
                for e in endpoints {
                    let labels: Vec<String> =
                        e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let addr = format!("{}:{}", e.address, e.port);
                    let h = seen.iter().find(|h| h.address.to_string() == addr);
                    rows.push(row(addr, h, labels.join(","), &c.name));
                }
            }
            Discovery::Dns { host, .. } => {
                if seen.is_empty() {
                    rows.push(row(
                        format!("{host}:{} (DNS)", c.port),
                        None,
                        String::new(),
                        &c.name,
                    ));
                }
                for h in seen {
                    rows.push(row(
                        format!("{} ({host})", h.address),
                        Some(h),
                        String::new(),
                        &c.name,
                    ));
                }
            }
            _ => {}
        }
    }
    rows
}

fn table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.len());
            }
        }
    }
    let line = |out: &mut dyn Write, cells: Vec<&str>| -> std::io::Result<()> {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = widths[i]));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, header.to_vec())?;
    for r in rows {
        line(out, r.iter().map(String::as_str).collect())?;
    }
    Ok(())
}

/// A plain HTTP/1.1 GET over a TCP stream, bounded in time and size: the admin API is local
/// and this keeps the CLI free of an HTTP client stack.
/// `HOST:PORT` with a name or an address; a name takes its first address.
pub(crate) fn parse_admin(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    // The admin API binds 127.0.0.1 by default: prefer a name's IPv4 address.
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("{s:?}: {e} (expected HOST:PORT, like localhost:15000)"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{s:?} has no address"))
}

/// A GET answered 200: its body.
pub(crate) fn fetch(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let (status, body) = request(addr, "GET", path)?;
    if status != 200 {
        bail!("{status}: {}", body.trim());
    }
    Ok(body)
}

/// `method path` (no body) → (status, body).
fn request(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{ErrorKind, Read};
    use std::time::Duration;
    let timed_out =
        |e: &std::io::Error| matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock);
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| {
            if timed_out(&e) {
                anyhow::anyhow!("timed out connecting to {addr} (after 5s)")
            } else {
                anyhow::anyhow!("connecting to {addr}: {e}")
            }
        })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    stream.take(64 << 20).read_to_end(&mut buf).map_err(|e| {
        if timed_out(&e) {
            anyhow::anyhow!("timed out waiting for {addr} to answer {path} (after 10s)")
        } else {
            anyhow::anyhow!("reading {path} from {addr}: {e}")
        }
    })?;
    let text = String::from_utf8(buf).context("non-UTF-8 answer")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| {
            format!(
                "malformed HTTP answer: {}",
                head.lines().next().unwrap_or("")
            )
        })?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok((status, dechunk(body)));
    }
    Ok((status, body.to_owned()))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_reassembled() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
