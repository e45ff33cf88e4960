//! Gateway checks: the selector selects a gateway (IST0101 / sluice's SLC0102), and no two
//! Gateways claim the same port and host on the same workload (IST0145).

use sluice_model::{Diagnostic, Level};

use super::registry::Registry;
use super::{codes, finding, hosts, istio_codes};

pub(super) fn analyze(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    for gw in &reg.resources.gateways {
        let selects = reg.workloads.iter().any(|w| gw.spec.selects(&w.labels));
        if selects {
            continue;
        }
        let selector = gw
            .spec
            .selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        out.push(if reg.has_pods {
            finding(
                gw,
                istio_codes::REFERENCED_RESOURCE_NOT_FOUND,
                Level::Error,
                "spec.selector",
                format!("Referenced selector not found: {selector:?}"),
            )
        } else {
            finding(
                gw,
                codes::GATEWAY_SELECTS_NOTHING,
                Level::Warning,
                "spec.selector",
                format!(
                    "selector {selector:?} selects no gateway sluice knows: sluice's gateway runs \
                     with labels istio=egressgateway unless --labels says otherwise, so this \
                     Gateway opens no listener there"
                ),
            )
        });
    }
    conflicting_gateways(reg, out);
}

/// IST0145: two Gateways with the same selector, a server on the same port, and a host in
/// common. Envoy keeps one of them; which one is not defined.
fn conflicting_gateways(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    let gws = &reg.resources.gateways;
    for (i, a) in gws.iter().enumerate() {
        let mut conflicts = Vec::new();
        for (j, b) in gws.iter().enumerate() {
            if i == j || a.spec.selector != b.spec.selector {
                continue;
            }
            for sa in &a.spec.servers {
                for sb in &b.spec.servers {
                    if sa.port.number != sb.port.number {
                        continue;
                    }
                    let common: Vec<&str> = sa
                        .hosts
                        .iter()
                        .map(|h| hosts::split_namespace(h).1)
                        .filter(|ha| {
                            sb.hosts
                                .iter()
                                .any(|hb| hosts::split_namespace(hb).1.eq_ignore_ascii_case(ha))
                        })
                        .collect();
                    if !common.is_empty() {
                        conflicts.push((
                            format!("{}/{}", b.namespace(), b.name()),
                            sa.port.number,
                            common,
                        ));
                    }
                }
            }
        }
        for (other, port, common) in conflicts {
            let selector = a
                .spec
                .selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            out.push(finding(
                a,
                istio_codes::CONFLICTING_GATEWAYS,
                Level::Error,
                "spec.servers",
                format!(
                    "Conflict with gateways {other} (workload selector {selector}, port {port}, hosts {common:?})."
                ),
            ));
        }
    }
}
