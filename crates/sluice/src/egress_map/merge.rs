//! `sluice map --admin A --admin B`: each proxy's `/api/map`, merged into one table. Each
//! proxy counts only its own traffic, so the merged counts are sums, and every row says which
//! proxies saw it.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sluice_proxy::telemetry::decisions::Outcome;

use super::{GatewayMap, Who};
use crate::cli::{Output, exit};

#[derive(Debug, clap::Args)]
pub struct MapArgs {
    /// An admin API to read (repeatable): HOST:PORT.
    #[arg(long = "admin", required = true, env = "SLUICE_ADMIN", value_delimiter = ',', value_parser = crate::proxy_config::parse_admin)]
    pub admins: Vec<SocketAddr>,
    #[arg(short, long, value_enum, default_value = "text", env = "SLUICE_OUTPUT")]
    pub output: Output,
}

/// One edge over every proxy that saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergedEdge {
    pub source: String,
    pub destination: String,
    pub outcome: Outcome,
    pub total: u64,
    /// Per minute over each proxy's window, summed.
    pub per_minute: f64,
    /// The workloads (and admin addresses) that saw this edge.
    pub gateways: Vec<String>,
}

/// What `sluice map -o json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Merged {
    pub gateways: Vec<Who>,
    /// Admin APIs that could not be read, with why.
    pub unreachable: Vec<String>,
    pub edges: Vec<MergedEdge>,
}

/// Sums the maps' edges by (source, destination, outcome), busiest first.
pub fn merge(maps: &[GatewayMap]) -> Vec<MergedEdge> {
    let mut by_key: BTreeMap<(String, String, String), MergedEdge> = BTreeMap::new();
    for m in maps {
        let name = format!("{}@{}", m.gateway.workload, m.gateway.admin);
        let window = m.map.window_seconds.max(1) as f64;
        for e in &m.map.edges {
            let key = (
                e.source.clone(),
                e.destination.clone(),
                format!("{:?}", e.outcome),
            );
            let merged = by_key.entry(key).or_insert_with(|| MergedEdge {
                source: e.source.clone(),
                destination: e.destination.clone(),
                outcome: e.outcome,
                total: 0,
                per_minute: 0.0,
                gateways: Vec::new(),
            });
            merged.total += e.total;
            merged.per_minute += e.window as f64 * 60.0 / window;
            if !merged.gateways.contains(&name) {
                merged.gateways.push(name.clone());
            }
        }
    }
    let mut edges: Vec<MergedEdge> = by_key.into_values().collect();
    edges.sort_by_key(|e| std::cmp::Reverse(e.total));
    edges
}

fn outcome_name(o: Outcome) -> String {
    match serde_json::to_value(o) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{o:?}"),
    }
}

/// Prints the merged table (or JSON). Exit 1 when an admin API could not be read, after
/// printing what the others answered.
pub fn run(args: &MapArgs, out: &mut impl Write) -> anyhow::Result<u8> {
    let mut maps = Vec::new();
    let mut unreachable = Vec::new();
    for admin in &args.admins {
        let read = crate::proxy_config::fetch(*admin, "/api/map").and_then(|body| {
            serde_json::from_str::<GatewayMap>(&body)
                .map_err(|e| anyhow::anyhow!("unexpected /api/map: {e}"))
        });
        match read {
            Ok(m) => maps.push(m),
            Err(e) => unreachable.push(format!("{admin}: {e:#}")),
        }
    }
    let edges = merge(&maps);
    let gateways: Vec<Who> = maps.into_iter().map(|m| m.gateway).collect();
    if args.output == Output::Json {
        let merged = Merged {
            gateways,
            unreachable: unreachable.clone(),
            edges,
        };
        serde_json::to_writer_pretty(&mut *out, &merged)?;
        writeln!(out)?;
    } else {
        writeln!(out, "GATEWAYS")?;
        for g in &gateways {
            let id = g.identity.as_deref().unwrap_or("-");
            writeln!(
                out,
                "  {} {} admin {} identity {id}",
                g.role, g.workload, g.admin
            )?;
        }
        for u in &unreachable {
            writeln!(out, "  unreachable: {u}")?;
        }
        writeln!(out)?;
        let rows: Vec<[String; 6]> = edges
            .iter()
            .map(|e| {
                [
                    e.source.clone(),
                    e.destination.clone(),
                    outcome_name(e.outcome),
                    e.total.to_string(),
                    format!("{:.1}", e.per_minute),
                    e.gateways.join(","),
                ]
            })
            .collect();
        let header = [
            "SOURCE",
            "DESTINATION",
            "OUTCOME",
            "TOTAL",
            "PER MIN",
            "SEEN BY",
        ];
        let mut widths = header.map(str::len);
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        let line = |cells: &[&str]| -> String {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    s.push_str(&format!("{c:<w$}  ", w = widths[i]));
                }
            }
            s
        };
        writeln!(out, "{}", line(&header))?;
        for r in &rows {
            let cells: Vec<&str> = r.iter().map(String::as_str).collect();
            writeln!(out, "{}", line(&cells))?;
        }
    }
    for u in &unreachable {
        eprintln!("sluice map: {u}");
    }
    Ok(if unreachable.is_empty() {
        exit::OK
    } else {
        exit::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use sluice_proxy::telemetry::decisions::{EdgeView, MapView};

    use super::*;

    fn gw(name: &str, edges: Vec<EdgeView>) -> GatewayMap {
        GatewayMap {
            gateway: Who {
                role: "gateway".into(),
                workload: name.into(),
                admin: "127.0.0.1:15000".into(),
                identity: None,
            },
            map: MapView {
                window_seconds: 60,
                edges,
                ..MapView::default()
            },
        }
    }

    fn edge(src: &str, dst: &str, outcome: Outcome, total: u64, window: u64) -> EdgeView {
        EdgeView {
            source: src.into(),
            destination: dst.into(),
            outcome,
            total,
            window,
            http: total,
            idle_seconds: 0,
            overflow: false,
        }
    }

    #[test]
    fn edges_sum_across_gateways_and_name_who_saw_them() {
        let a = gw(
            "gw-a",
            vec![
                edge("x", "api.github.com", Outcome::Allowed, 10, 6),
                edge("x", "api.github.com", Outcome::Denied, 1, 1),
            ],
        );
        let b = gw(
            "gw-b",
            vec![edge("x", "api.github.com", Outcome::Allowed, 5, 3)],
        );
        let merged = merge(&[a, b]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].total, 15);
        assert!((merged[0].per_minute - 9.0).abs() < 1e-9);
        assert_eq!(
            merged[0].gateways,
            ["gw-a@127.0.0.1:15000", "gw-b@127.0.0.1:15000"]
        );
        assert_eq!(merged[1].outcome, Outcome::Denied);
        assert_eq!(merged[1].gateways, ["gw-a@127.0.0.1:15000"]);
    }
}
