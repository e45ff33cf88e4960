//! Helpers for TLS (by SNI) and TCP routes: destinations, subnets and Istio's L4 match rules
//! (`gateway.go` `l4SingleMatch`/`l4MultiMatch`, `tls.go` for sidecars).

use std::net::IpAddr;

use ipnet::IpNet;
use sluice_model::networking::VirtualService;
use sluice_model::networking::virtual_service::{
    L4MatchAttributes, RouteDestination, TLSMatchAttributes,
};
use sluice_model::{Level, Resource};
use sluice_snapshot::Role;
use sluice_snapshot::route::{HeaderOps, WeightedCluster};

use super::codes::DROPPED;
use super::{Ctx, destination, http};

/// The weighted clusters of a TLS or TCP rule.
pub fn clusters(
    cx: &mut Ctx<'_>,
    vs: &Resource<VirtualService>,
    path: &str,
    route: &[RouteDestination],
    listen_port: u16,
) -> Vec<WeightedCluster> {
    let given: Vec<Option<i32>> = route.iter().map(|d| d.weight).collect();
    let mut out = Vec::new();
    for (i, weight) in destination::weights(cx, vs, path, &given) {
        let dpath = format!("{path}[{i}].destination");
        if let Some(r) = destination::resolve(cx, vs, &dpath, &route[i].destination, listen_port) {
            out.push(WeightedCluster {
                cluster: r.cluster,
                weight,
                request_headers: HeaderOps::default(),
                response_headers: HeaderOps::default(),
            });
        }
    }
    out
}

/// Parses `destinationSubnets` (CIDRs or single addresses). `None`, with a diagnostic, when
/// one cannot be parsed: the match entry is then dropped, never widened.
pub fn subnets(
    cx: &mut Ctx<'_>,
    vs: &Resource<VirtualService>,
    path: &str,
    raw: &[String],
) -> Option<Vec<IpNet>> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        match parse_subnet(s) {
            Some(n) => out.push(n),
            None => {
                cx.report(
                    vs,
                    DROPPED,
                    Level::Error,
                    &format!("{path}.destinationSubnets[{i}]"),
                    format!("{s:?} is not an IP address or CIDR: this match entry is left out"),
                );
                return None;
            }
        }
    }
    Some(out)
}

pub fn parse_subnet(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The L4 attributes Istio checks, common to TLS and TCP match entries.
pub struct L4<'m> {
    pub port: Option<u32>,
    pub gateways: &'m [String],
    pub source_labels: &'m std::collections::BTreeMap<String, String>,
    pub source_namespace: Option<&'m str>,
}

impl<'m> From<&'m TLSMatchAttributes> for L4<'m> {
    fn from(m: &'m TLSMatchAttributes) -> Self {
        L4 {
            port: m.port,
            gateways: &m.gateways,
            source_labels: &m.source_labels,
            source_namespace: m.source_namespace.as_deref(),
        }
    }
}

impl<'m> From<&'m L4MatchAttributes> for L4<'m> {
    fn from(m: &'m L4MatchAttributes) -> Self {
        L4 {
            port: m.port,
            gateways: &m.gateways,
            source_labels: &m.source_labels,
            source_namespace: m.source_namespace.as_deref(),
        }
    }
}

/// Does a match entry apply to traffic on `port` at `gateway`? At a gateway Istio checks the
/// port and the gateways only (`l4SingleMatch`); at a sidecar also the source labels and
/// namespace of an entry that names no gateway.
pub fn l4_applies(
    cx: &Ctx<'_>,
    vs: &Resource<VirtualService>,
    m: &L4<'_>,
    port: u16,
    gateway: &str,
) -> bool {
    if m.port.is_some_and(|p| p != u32::from(port)) {
        return false;
    }
    match cx.role() {
        Role::Gateway => {
            m.gateways.is_empty()
                || m.gateways
                    .iter()
                    .any(|g| super::hosts::resolve_gateway_name(g, vs.namespace()) == gateway)
        }
        Role::Sidecar => http::l4_source_match(
            cx,
            vs,
            m.gateways,
            m.source_labels,
            m.source_namespace,
            gateway,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_take_cidrs_and_addresses() {
        let table = [
            ("10.0.0.0/8", Some("10.0.0.0/8")),
            ("127.0.0.1", Some("127.0.0.1/32")),
            ("::1", Some("::1/128")),
            ("10.0.0.0/33", None),
            ("example.com", None),
        ];
        for (raw, want) in table {
            assert_eq!(
                parse_subnet(raw).map(|n| n.to_string()).as_deref(),
                want,
                "{raw}"
            );
        }
    }
}
