//! Host patterns written in another proxy's dialect, which mean something else in Istio
//! (sluice's SLC0109–SLC0111). Istio's host semantics are exact: `*.example.com` covers every
//! subdomain at any depth but not `example.com`, a bare `*` covers everything, and there is no
//! `.example.com` (Squid) or `**.example.com` (Cilium) syntax.
//!
//! Where Istio's webhook already rejects such a host — a leading dot or `**` in a ServiceEntry,
//! VirtualService, Gateway, DestinationRule or Sidecar host, `*` as a ServiceEntry host or a
//! mesh VirtualService host — validation reports it (IST0106) and nothing is added here. So
//! the leading dot is checked only in AuthorizationPolicy `hosts`/`notHosts`, which Istio
//! matches as plain strings; `**` there is already a validation warning (a `*` that is neither
//! leading nor trailing is matched literally).

use sluice_model::mesh::OutboundTrafficPolicyMode;
use sluice_model::resource::IstioKind;
use sluice_model::security::authorization_policy::Action;
use sluice_model::{Diagnostic, Kind, Level, Resource};

use super::registry::Registry;
use super::virtual_service::destinations;
use super::{codes, finding, hosts};

pub(super) fn analyze(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    leading_dots(reg, out);
    wildcards_without_apex(reg, out);
    match_all_gateway_hosts(reg, out);
}

/// SLC0109: a Squid-style `.example.com` in an AuthorizationPolicy. Istio matches policy hosts
/// exactly, or by a leading or trailing `*`; no request's host begins with a dot, so the value
/// never matches.
fn leading_dots(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    for ap in &reg.resources.authorization_policies {
        for (i, rule) in ap.spec.rules.iter().enumerate() {
            for (j, to) in rule.to.iter().enumerate() {
                let Some(op) = &to.operation else { continue };
                for (field, values) in [("hosts", &op.hosts), ("notHosts", &op.not_hosts)] {
                    for (k, host) in values.iter().enumerate() {
                        let Some(domain) = host.strip_prefix('.').filter(|d| !d.is_empty()) else {
                            continue;
                        };
                        let domain = domain.rsplit_once(':').map_or(domain, |(d, _)| d);
                        out.push(finding(
                            ap,
                            codes::HOST_LEADING_DOT,
                            Level::Warning,
                            &format!("spec.rules[{i}].to[{j}].operation.{field}[{k}]"),
                            format!(
                                "{host:?} means every subdomain in Squid's dstdomain; in Istio it \
                                 is not a host pattern: policy hosts match exactly or by a leading \
                                 or trailing '*', and no request's host begins with a dot, so {} \
                                 — write \"*.{domain}\" (and \"{domain}\" for the apex)",
                                never_matches(&ap.spec.action, field == "notHosts")
                            ),
                        ));
                    }
                }
            }
        }
    }
}

/// What a value that never matches does to the policy.
fn never_matches(action: &Action, negated: bool) -> &'static str {
    match (action, negated) {
        (Action::Deny, false) => "this DENY rule denies none of the hosts meant",
        (Action::Allow, false) => "this ALLOW rule allows none of the hosts meant",
        (Action::Deny, true) => "notHosts excludes none of the hosts meant: they are denied",
        (Action::Allow, true) => "notHosts excludes none of the hosts meant: they are allowed",
        (_, false) => "this value never matches",
        (_, true) => "this value excludes nothing",
    }
}

/// A host some resource names, for [`wildcards_without_apex`].
struct Reference {
    /// Qualified, lower case.
    host: String,
    kind: Kind,
    origin: String,
    path: String,
}

fn add_reference<T: IstioKind>(
    refs: &mut Vec<Reference>,
    r: &Resource<T>,
    host: &str,
    path: String,
) {
    let host = hosts::qualify(host, r.namespace());
    if !host.contains('*') && !host.is_empty() {
        refs.push(Reference {
            host,
            kind: r.kind(),
            origin: r.origin(),
            path,
        });
    }
}

/// Every exact (non-wildcard) host the input names, with where.
fn references(reg: &Registry<'_>) -> Vec<Reference> {
    let mut refs = Vec::new();
    let res = reg.resources;
    for se in &res.service_entries {
        for (i, h) in se.spec.hosts.iter().enumerate() {
            add_reference(&mut refs, se, h, format!("spec.hosts[{i}]"));
        }
    }
    for vs in &res.virtual_services {
        for (i, h) in vs.spec.hosts.iter().enumerate() {
            add_reference(&mut refs, vs, h, format!("spec.hosts[{i}]"));
        }
        for d in destinations(&vs.spec) {
            add_reference(&mut refs, vs, &d.dest.host, format!("{}.host", d.path));
        }
    }
    for dr in &res.destination_rules {
        add_reference(&mut refs, dr, &dr.spec.host, "spec.host".into());
    }
    for gw in &res.gateways {
        for (i, s) in gw.spec.servers.iter().enumerate() {
            for (j, h) in s.hosts.iter().enumerate() {
                let h = hosts::split_namespace(h).1;
                add_reference(&mut refs, gw, h, format!("spec.servers[{i}].hosts[{j}]"));
            }
        }
    }
    for sc in &res.sidecars {
        for (i, e) in sc.spec.egress.iter().enumerate() {
            for (j, h) in e.hosts.iter().enumerate() {
                let h = hosts::split_namespace(h).1;
                add_reference(&mut refs, sc, h, format!("spec.egress[{i}].hosts[{j}]"));
            }
        }
    }
    for ap in &res.authorization_policies {
        for (i, rule) in ap.spec.rules.iter().enumerate() {
            for (j, to) in rule.to.iter().enumerate() {
                let Some(op) = &to.operation else { continue };
                for (field, values) in [("hosts", &op.hosts), ("notHosts", &op.not_hosts)] {
                    for (k, h) in values.iter().enumerate() {
                        // A policy host may carry a port (`example.com:443`).
                        let h = h.rsplit_once(':').map_or(h.as_str(), |(h, _)| h);
                        let path = format!("spec.rules[{i}].to[{j}].operation.{field}[{k}]");
                        add_reference(&mut refs, ap, h, path);
                    }
                }
            }
        }
    }
    refs
}

/// SLC0110: a ServiceEntry or VirtualService host `*.example.com` where no resource of its
/// kind has `example.com`, while another resource names `example.com`: the wildcard was
/// probably meant to include the apex, which it does not.
fn wildcards_without_apex(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    let res = reg.resources;
    let has_wildcard = res
        .service_entries
        .iter()
        .flat_map(|s| &s.spec.hosts)
        .chain(res.virtual_services.iter().flat_map(|v| &v.spec.hosts))
        .any(|h| h.starts_with("*."));
    if !has_wildcard {
        return;
    }
    let refs = references(reg);
    for se in &res.service_entries {
        for (i, msg) in missing_apexes(&refs, Kind::ServiceEntry, &se.spec.hosts) {
            out.push(apex_finding(se, i, msg));
        }
    }
    for vs in &res.virtual_services {
        for (i, msg) in missing_apexes(&refs, Kind::VirtualService, &vs.spec.hosts) {
            out.push(apex_finding(vs, i, msg));
        }
    }
}

/// The wildcard hosts in `list` (of a resource of `kind`) whose apex no resource of that kind
/// has in its hosts but a resource of another kind names: their index and the message.
fn missing_apexes(refs: &[Reference], kind: Kind, list: &[String]) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (i, h) in list.iter().enumerate() {
        let lower = h.to_ascii_lowercase();
        let Some(apex) = lower.strip_prefix("*.") else {
            continue;
        };
        // A name without a dot would be a short name, qualified in a namespace.
        if !apex.contains('.') {
            continue;
        }
        let listed = refs
            .iter()
            .any(|r| r.kind == kind && r.path.starts_with("spec.hosts[") && r.host == apex);
        if listed {
            continue;
        }
        let Some(r) = refs.iter().find(|r| r.host == apex && r.kind != kind) else {
            continue;
        };
        let what = if kind == Kind::ServiceEntry {
            format!("no ServiceEntry registers {apex}")
        } else {
            format!("no VirtualService routes {apex}, so its traffic does not take these routes")
        };
        found.push((
            i,
            format!(
                "{h:?} does not cover {apex} itself (an Istio wildcard matches subdomains only), \
                 and {} names {apex} at {}: {what} — add \"{apex}\" to hosts if the apex is meant",
                r.origin, r.path
            ),
        ));
    }
    found
}

fn apex_finding<T: IstioKind>(r: &Resource<T>, i: usize, message: String) -> Diagnostic {
    finding(
        r,
        codes::WILDCARD_MISSES_APEX,
        Level::Warning,
        &format!("spec.hosts[{i}]"),
        message,
    )
}

/// SLC0111: under REGISTRY_ONLY, a server of the egress gateway whose host is `*` (any
/// namespace part): it accepts every SNI and Host, so what leaves the mesh through it is
/// bounded only by the VirtualServices bound to it, and anything sent to the gateway's own
/// (registered) Service gets that far. ServiceEntry `*` and mesh VirtualService `*` are
/// validation errors; a Sidecar's egress `*/*` imports registered services only, so REGISTRY_ONLY
/// still holds there.
fn match_all_gateway_hosts(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    if reg.outbound_mode != OutboundTrafficPolicyMode::RegistryOnly {
        return;
    }
    for gw in reg.active_gateways() {
        for (i, server) in gw.spec.servers.iter().enumerate() {
            for (j, host) in server.hosts.iter().enumerate() {
                if hosts::split_namespace(host).1 != "*" {
                    continue;
                }
                out.push(finding(
                    gw,
                    codes::MATCH_ALL_EGRESS_HOST,
                    Level::Warning,
                    &format!("spec.servers[{i}].hosts[{j}]"),
                    format!(
                        "host {host:?} opens this egress gateway server (port {}) to every host: \
                         any SNI or Host is accepted, so with outboundTrafficPolicy REGISTRY_ONLY \
                         nothing but the VirtualServices bound to this Gateway restricts what \
                         leaves through it — list the hosts it forwards (e.g. api.example.com, \
                         *.example.com)",
                        server.port.number
                    ),
                ));
            }
        }
    }
}
