//! AuthorizationPolicy checks. For policies that apply to the egress gateway, sluice's own:
//! hosts that no ServiceEntry registers, identities that no hop carries, and rules sluice
//! evaluates differently from Istio. For every policy, Istio's ([`targets`]): it selects a
//! workload (IST0127) and names namespaces that exist (IST0101).

mod targets;

use sluice_model::networking::destination_rule::ClientTLSMode;
use sluice_model::security::AuthorizationPolicy;
use sluice_model::{Diagnostic, Level, Resource};

use super::registry::{Registry, WorkloadKind};
use super::{codes, finding, hosts};

pub(super) fn analyze(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    targets::analyze(reg, out);
    let mesh_mtls = reg.resources.destination_rules.iter().any(|dr| {
        reg.is_gateway_service(&hosts::qualify(&dr.spec.host, dr.namespace()))
            && dr_uses_istio_mutual(&dr.spec)
    });
    for ap in &reg.resources.authorization_policies {
        if !applies_to_gateway(reg, ap) {
            continue;
        }
        for (i, rule) in ap.spec.rules.iter().enumerate() {
            for (j, from) in rule.from.iter().enumerate() {
                let Some(src) = &from.source else { continue };
                let names_identity = !src.principals.is_empty()
                    || !src.not_principals.is_empty()
                    || !src.namespaces.is_empty()
                    || !src.not_namespaces.is_empty();
                if names_identity && !mesh_mtls {
                    out.push(finding(
                        ap,
                        codes::PRINCIPALS_WITHOUT_MTLS,
                        Level::Warning,
                        &format!("spec.rules[{i}].from[{j}].source"),
                        "this rule names principals or namespaces, but no DestinationRule sets \
                         tls mode ISTIO_MUTUAL toward the egress gateway: without mesh mTLS a \
                         request carries no verified identity, so the rule never matches"
                            .into(),
                    ));
                }
            }
            for (j, to) in rule.to.iter().enumerate() {
                let Some(op) = &to.operation else { continue };
                for (k, port) in op.ports.iter().enumerate() {
                    let path = format!("spec.rules[{i}].to[{j}].operation.ports[{k}]");
                    port_is_served(reg, ap, port, &path, out);
                }
                for (k, host) in op.hosts.iter().enumerate() {
                    let path = format!("spec.rules[{i}].to[{j}].operation.hosts[{k}]");
                    host_is_registered(reg, ap, host, &path, out);
                    differs_from_istio(reg, ap, host, &path, out);
                }
            }
        }
    }
}

fn dr_uses_istio_mutual(dr: &sluice_model::networking::DestinationRule) -> bool {
    let policy_uses = |tp: &sluice_model::networking::destination_rule::TrafficPolicy| {
        tp.tls
            .as_ref()
            .is_some_and(|t| t.mode() == ClientTLSMode::IstioMutual)
            || tp.port_level_settings.iter().any(|p| {
                p.tls
                    .as_ref()
                    .is_some_and(|t| t.mode() == ClientTLSMode::IstioMutual)
            })
    };
    dr.traffic_policy.as_ref().is_some_and(policy_uses)
        || dr
            .subsets
            .iter()
            .any(|s| s.traffic_policy.as_ref().is_some_and(policy_uses))
}

/// True for a policy in the root namespace or the gateway's that selects a known gateway
/// workload.
fn applies_to_gateway(reg: &Registry<'_>, ap: &Resource<AuthorizationPolicy>) -> bool {
    let ns = ap.namespace();
    let gateway_namespace = reg
        .workloads
        .iter()
        .any(|w| w.kind == WorkloadKind::Sluice && w.namespace == ns);
    (ns == reg.root_namespace || gateway_namespace)
        && match &ap.spec.selector {
            None => true,
            Some(sel) => {
                reg.workloads
                    .iter()
                    .any(|w| w.kind == WorkloadKind::Sluice && sel.matches(&w.labels))
                    || reg.kube.pods.iter().any(|p| sel.matches(&p.labels))
            }
        }
}

/// A port no server of the gateway listens on: what the rule allows never arrives there.
fn port_is_served(
    reg: &Registry<'_>,
    ap: &Resource<AuthorizationPolicy>,
    port: &str,
    path: &str,
    out: &mut Vec<Diagnostic>,
) {
    let Ok(port) = port.parse::<u32>() else {
        return;
    };
    let mut gateways = reg.active_gateways().peekable();
    if gateways.peek().is_none() {
        return;
    }
    if gateways.any(|g| g.spec.servers.iter().any(|s| s.port.number == port)) {
        return;
    }
    out.push(finding(
        ap,
        codes::NO_GATEWAY_SERVER_FOR_PORT,
        Level::Warning,
        path,
        format!(
            "no Gateway server of the egress gateway listens on port {port}: traffic this rule \
             allows never reaches the gateway (add a server for port {port}, e.g. protocol TCP)"
        ),
    ));
}

fn host_is_registered(
    reg: &Registry<'_>,
    ap: &Resource<AuthorizationPolicy>,
    host: &str,
    path: &str,
    out: &mut Vec<Diagnostic>,
) {
    // `hosts` may carry a port (`a.com:443`); the registry knows names.
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let known = reg
        .resources
        .service_entries
        .iter()
        .any(|se| se.spec.hosts.iter().any(|h| hosts::overlap(h, name)));
    if !known {
        out.push(finding(
            ap,
            codes::HOST_NOT_REGISTERED,
            Level::Warning,
            path,
            format!(
                "host {host:?} is registered by no ServiceEntry: no traffic to it passes the \
                 gateway, so this rule never matches (a typo?)"
            ),
        ));
    }
}

/// Istio documents `to.operation.hosts` as HTTP-only: on TLS passthrough and TCP traffic an
/// ALLOW rule with `hosts` never matches there. sluice matches it against the SNI or the host
/// the sidecar named; say so where the two differ.
fn differs_from_istio(
    reg: &Registry<'_>,
    ap: &Resource<AuthorizationPolicy>,
    host: &str,
    path: &str,
    out: &mut Vec<Diagnostic>,
) {
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let non_http = reg.active_gateways().find_map(|g| {
        g.spec.servers.iter().find_map(|s| {
            let serves = s
                .hosts
                .iter()
                .any(|h| hosts::overlap(hosts::split_namespace(h).1, name));
            (serves && !s.port.protocol.is_http()).then(|| {
                (
                    format!("{}/{}", g.namespace(), g.name()),
                    s.port.number,
                    s.port.protocol.to_string(),
                )
            })
        })
    });
    if let Some((gw, port, proto)) = non_http {
        out.push(finding(
            ap,
            codes::DIFFERS_FROM_ISTIO,
            Level::Info,
            path,
            format!(
                "Gateway {gw} carries {name} as {proto} on port {port}. Istio applies \
                 to.operation.hosts only to HTTP, so on Istio this rule would never match that \
                 traffic; sluice matches it against the TLS SNI or the host the sidecar named"
            ),
        ));
    }
}
