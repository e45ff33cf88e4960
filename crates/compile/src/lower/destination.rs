//! Route destinations → cluster references and weights (Istio `route.GetDestinationCluster`,
//! `applyHTTPRouteDestination`).

use sluice_model::networking::VirtualService;
use sluice_model::networking::virtual_service::Destination;
use sluice_model::{Level, Resource};

use super::codes::{ADJUSTED, DROPPED};
use super::{ClusterKey, Ctx, Origin, hosts};

/// A destination resolved to its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub cluster: String,
    pub host: String,
    pub port: u16,
}

/// Istio's `GetDestinationCluster`: the destination's port if given, else the only port of the
/// ServiceEntry that registers the host, else the port the traffic arrived on. Short host names
/// are relative to the VirtualService's namespace. `None` (with a diagnostic) for a port that
/// does not fit in 16 bits.
pub fn resolve(
    cx: &mut Ctx<'_>,
    vs: &Resource<VirtualService>,
    path: &str,
    dest: &Destination,
    listen_port: u16,
) -> Option<Resolved> {
    let host = hosts::fqdn(&dest.host, vs.namespace());
    let port = match dest.port {
        Some(p) => match u16::try_from(p.number) {
            Ok(n) if n != 0 => n,
            _ => {
                cx.report(
                    vs,
                    DROPPED,
                    Level::Error,
                    &format!("{path}.port.number"),
                    format!(
                        "destination port {} is not a TCP port: destination dropped",
                        p.number
                    ),
                );
                return None;
            }
        },
        None => cx
            .reg
            .service(&host)
            .filter(|se| se.spec.ports.len() == 1)
            .and_then(|se| u16::try_from(se.spec.ports[0].number).ok())
            .unwrap_or(listen_port),
    };
    let key = ClusterKey {
        host: host.clone(),
        port,
        subset: dest.subset.clone().unwrap_or_default(),
    };
    let cluster = cx.reference(key, Origin::of(vs, path));
    Some(Resolved {
        cluster,
        host,
        port,
    })
}

/// Weights of a route's destinations, Istio's way: a single destination takes everything
/// whatever its weight; among several, those with weight 0 (or none) are skipped. Returns the
/// indices kept with their weights, scaled to sum to 100 as the snapshot requires (largest
/// remainder, with a diagnostic when scaling was needed); empty when nothing is left.
pub fn weights(
    cx: &mut Ctx<'_>,
    vs: &Resource<VirtualService>,
    path: &str,
    given: &[Option<i32>],
) -> Vec<(usize, u32)> {
    if given.len() == 1 {
        return vec![(0, 100)];
    }
    let kept: Vec<(usize, u32)> = given
        .iter()
        .enumerate()
        .filter_map(|(i, w)| {
            w.filter(|w| *w > 0)
                .map(|w| (i, u32::try_from(w).unwrap_or(0)))
        })
        .collect();
    let total: u64 = kept.iter().map(|(_, w)| u64::from(*w)).sum();
    if kept.is_empty() {
        cx.report(
            vs,
            DROPPED,
            Level::Error,
            path,
            "every destination has weight 0: the rule routes nowhere and is dropped",
        );
        return kept;
    }
    if total == 100 {
        return kept;
    }
    let scaled = scale_to_100(&kept.iter().map(|(_, w)| *w).collect::<Vec<_>>());
    cx.report(
        vs,
        ADJUSTED,
        Level::Info,
        path,
        format!(
            "destination weights sum to {total}, not 100: scaled to {}",
            scaled
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join("/")
        ),
    );
    kept.iter().zip(scaled).map(|((i, _), w)| (*i, w)).collect()
}

/// Scales positive weights to sum to exactly 100 (largest remainder; ties to the earlier).
pub fn scale_to_100(weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return weights.to_vec();
    }
    let mut out: Vec<u32> = Vec::with_capacity(weights.len());
    let mut rems: Vec<(u64, usize)> = Vec::with_capacity(weights.len());
    for (i, w) in weights.iter().enumerate() {
        let exact = u64::from(*w) * 100;
        out.push(u32::try_from(exact / total).unwrap_or(100));
        rems.push((exact % total, i));
    }
    let mut missing = 100u32.saturating_sub(out.iter().sum());
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in rems {
        if missing == 0 {
            break;
        }
        out[i] += 1;
        missing -= 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_scale_to_exactly_100() {
        let table: [(&[u32], &[u32]); 5] = [
            (&[50, 50], &[50, 50]),
            (&[1, 1], &[50, 50]),
            (&[1, 1, 1], &[34, 33, 33]),
            (&[2, 1], &[67, 33]),
            (&[90, 30], &[75, 25]),
        ];
        for (given, want) in table {
            let got = scale_to_100(given);
            assert_eq!(got, want, "{given:?}");
            assert_eq!(got.iter().sum::<u32>(), 100);
        }
    }
}
