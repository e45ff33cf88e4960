//! `sluice proxy-config`: what a running proxy routes, read from its admin API, printed the way
//! `istioctl proxy-config` prints Envoy's.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use sluice_proxy::inspect::{ClusterHealth, EndpointHealth};
use sluice_snapshot::Snapshot;
use sluice_snapshot::cluster::Discovery;
use sluice_snapshot::listener::{App, Transport};
use sluice_snapshot::route::RouteAction;

use crate::cli::{Output, exit};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Listeners,
    Routes,
    Clusters,
    Endpoints,
    All,
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
}

pub fn run(args: &ProxyConfigArgs, out: &mut impl Write) -> anyhow::Result<u8> {
    let body = fetch(args.admin, "/config_dump")
        .with_context(|| format!("reading /config_dump from {}", args.admin))?;
    let snapshot: Snapshot = serde_json::from_str(&body)
        .context("the admin API answered with an unexpected document")?;
    if args.output == Output::Json {
        let value = serde_json::to_value(&snapshot)?;
        let part = match args.section {
            Section::Listeners => value["listeners"].clone(),
            Section::Routes => serde_json::to_value(routes(&snapshot))?,
            Section::Clusters | Section::Endpoints => value["clusters"].clone(),
            Section::All => value,
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
    render(&snapshot, &health, args.section, out)?;
    Ok(exit::OK)
}

/// Renders the tables for `section` (text).
pub fn render(
    s: &Snapshot,
    health: &[ClusterHealth],
    section: Section,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let all = section == Section::All;
    if all || section == Section::Listeners {
        table(
            out,
            &["ADDRESSES", "PORT", "MATCH", "DESTINATION"],
            &listeners(s),
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

fn listeners(s: &Snapshot) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for l in &s.listeners {
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
            rows.push(vec!["0.0.0.0".into(), l.port.to_string(), m, dest]);
        }
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
fn parse_admin(s: &str) -> Result<SocketAddr, String> {
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

fn fetch(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
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
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
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
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or(""));
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_owned())
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
