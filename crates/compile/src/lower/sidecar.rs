//! The sidecar role: virtual listeners, one per destination port, that apply the rules of the
//! reserved gateway `mesh` (VirtualServices with no `gateways`, or naming `mesh`), following
//! Istio's sidecar outbound path (`httproute.go` `BuildSidecarOutboundVirtualHosts`,
//! `route.BuildSidecarVirtualHostWrapper`, `tls.go`).
//!
//! A port gets a listener when a visible ServiceEntry declares it or a mesh rule matches it.
//! HTTP ports carry one plain chain whose virtual hosts are the VirtualService hosts (their
//! routes) and every other registered host (a default route to its own cluster); TLS ports
//! carry a chain per SNI of the `tls` rules and one per registered host without a rule; TCP
//! ports carry the `tcp` rules, then a route per registered host (by its `addresses`).
//! Traffic to hosts nobody registered is the proxy's business under `outbound_policy`.

use std::collections::{BTreeMap, BTreeSet};

use sluice_model::networking::service_entry::Protocol;
use sluice_model::networking::{ServiceEntry, VirtualService};
use sluice_model::{Level, Resource};
use sluice_snapshot::listener::{ChainMatch, Transport};
use std::time::Duration;

use sluice_snapshot::cluster::Limits;
use sluice_snapshot::route::{Forward, HeaderOps, TcpRoute, WeightedCluster};
use sluice_snapshot::{
    App, BLACK_HOLE_CLUSTER, Cluster, Discovery, Fallback, FilterChain, HostMatch, LbPolicy,
    Listener, OutboundPolicy, PASSTHROUGH_CLUSTER, Route, RouteAction, RouteMatch, VirtualHost,
};

use super::cluster::port_protocol;
use super::codes::{DROPPED, NOT_SUPPORTED};
use super::hosts::{self, MESH};
use super::http::{self, Scope};
use super::tcp::{self, L4};
use super::{ClusterKey, Ctx, Origin};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Http,
    Tls,
    Tcp,
}

/// A registered host on one port.
struct PortService<'a> {
    host: String,
    se: &'a Resource<ServiceEntry>,
    port_index: usize,
    class: Class,
}

impl PortService<'_> {
    fn own_cluster(&self, cx: &mut Ctx<'_>, port: u16) -> String {
        let key = ClusterKey {
            host: self.host.clone(),
            port,
            subset: String::new(),
        };
        cx.reference(
            key,
            Origin::of(self.se, &format!("spec.ports[{}]", self.port_index)),
        )
    }
}

/// Connect timeout of `PassthroughCluster` (Istio's default for it).
const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The outbound policy as routes and clusters, as Istio's sidecar has them: `ALLOW_ANY` is a
/// virtual host `allow_any` (domain `*`) and a TCP route to `PassthroughCluster` (the
/// destination the app asked for, no TLS of its own); `REGISTRY_ONLY` is `block_all` and a TCP
/// route to `BlackHoleCluster`. The virtual host is appended to every HTTP chain, so a host no
/// other virtual host names takes it; the proxy takes the same routes for ports no listener
/// declares.
/// The hosts the registry holds for this proxy, each with the ports its ServiceEntries
/// declare and the ports a mesh HTTP rule for it is bound to by `match.port` (such a rule
/// serves the host on that port, see [`http_chain`]).
pub fn registered(cx: &Ctx<'_>) -> BTreeMap<String, Vec<u16>> {
    let mut out: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for (host, se) in cx.reg.services() {
        out.entry(host).or_default().extend(
            se.spec
                .ports
                .iter()
                .filter_map(|p| u16::try_from(p.number).ok()),
        );
    }
    for vs in cx.reg.virtual_services_for(MESH) {
        let bound: Vec<u16> = http_match_ports(vs).collect();
        for h in fqdn_hosts(vs) {
            if let Some(ports) = out.get_mut(&h) {
                ports.extend(&bound);
            }
        }
    }
    for ports in out.values_mut() {
        ports.sort_unstable();
        ports.dedup();
    }
    out
}

/// The ports the HTTP rules of `vs` are bound to by `match.port`.
fn http_match_ports(vs: &Resource<VirtualService>) -> impl Iterator<Item = u16> + '_ {
    vs.spec
        .http
        .iter()
        .flat_map(|r| r.match_.iter())
        .filter_map(|m| m.port.and_then(|p| u16::try_from(p).ok()))
}

pub fn fallback(
    policy: OutboundPolicy,
    listeners: &mut [Listener],
    registered: BTreeMap<String, Vec<u16>>,
) -> (Fallback, Cluster) {
    let (vhost_name, name, discovery) = match policy {
        OutboundPolicy::AllowAny => (
            "allow_any",
            PASSTHROUGH_CLUSTER,
            Discovery::OriginalDestination,
        ),
        OutboundPolicy::RegistryOnly => ("block_all", BLACK_HOLE_CLUSTER, Discovery::BlackHole),
    };
    let cluster = Cluster {
        name: name.to_owned(),
        service: name.to_owned(),
        port: 0,
        discovery,
        tls: None,
        connect_timeout: PASSTHROUGH_CONNECT_TIMEOUT,
        lb: LbPolicy::Passthrough,
        limits: Limits::default(),
        outlier: None,
        http2: false,
        addresses: Vec::new(),
        tunnel: None,
    };
    let to = || {
        vec![WeightedCluster {
            cluster: cluster.name.clone(),
            weight: 100,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
        }]
    };
    // Istio's `block_all` answers by itself (502) and names BlackHoleCluster; `allow_any`
    // forwards to PassthroughCluster.
    let (action, direct_cluster) = match policy {
        OutboundPolicy::AllowAny => (
            RouteAction::Forward(Forward {
                clusters: to(),
                rewrite: None,
                timeout: None,
                retry: None,
                fault: None,
                mirrors: Vec::new(),
            }),
            None,
        ),
        OutboundPolicy::RegistryOnly => (
            RouteAction::DirectResponse {
                status: 502,
                body: None,
            },
            Some(cluster.name.clone()),
        ),
    };
    let http = VirtualHost {
        name: vhost_name.to_owned(),
        domains: vec![HostMatch::Any],
        routes: vec![Route {
            name: vhost_name.to_owned(),
            match_: RouteMatch::default(),
            action,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            operation: None,
            direct_cluster,
        }],
    };
    for listener in listeners.iter_mut() {
        for chain in &mut listener.chains {
            if let App::Http { virtual_hosts, .. } = &mut chain.app {
                virtual_hosts.push(http.clone());
            }
        }
    }
    let tcp = TcpRoute {
        name: cluster.name.clone(),
        sni: Vec::new(),
        destination_subnets: Vec::new(),
        clusters: to(),
    };
    (
        Fallback {
            http,
            tcp,
            registered,
        },
        cluster,
    )
}

pub fn listeners(cx: &mut Ctx<'_>) -> Vec<Listener> {
    let services = cx.reg.services();
    let vss = cx.reg.virtual_services_for(MESH);
    let mut by_port: BTreeMap<u16, Vec<PortService<'_>>> = BTreeMap::new();
    for (host, se) in &services {
        for (pi, p) in se.spec.ports.iter().enumerate() {
            let Ok(port) = u16::try_from(p.number) else {
                continue;
            };
            let class = match port_protocol(p) {
                Some(Protocol::Udp) => {
                    cx.unsupported(*se, &format!("spec.ports[{pi}].protocol"), "UDP");
                    continue;
                }
                Some(proto) if proto.is_http() => Class::Http,
                Some(Protocol::Https | Protocol::Tls) => Class::Tls,
                Some(_) => Class::Tcp,
                None => {
                    cx.report(
                        *se,
                        NOT_SUPPORTED,
                        Level::Info,
                        &format!("spec.ports[{pi}]"),
                        format!(
                            "port {} has no protocol (and its name no protocol prefix): sluice does not sniff protocols, it is treated as TCP",
                            p.number
                        ),
                    );
                    Class::Tcp
                }
            };
            by_port.entry(port).or_default().push(PortService {
                host: host.clone(),
                se,
                port_index: pi,
                class,
            });
        }
    }
    let mut vs_ports: BTreeMap<u16, BTreeSet<Class>> = BTreeMap::new();
    for vs in &vss {
        let unregistered = fqdn_hosts(vs).iter().any(|h| !is_registered(cx, h));
        for rule in &vs.spec.http {
            for m in &rule.match_ {
                if let Some(p) = m.port.and_then(|p| u16::try_from(p).ok()) {
                    vs_ports.entry(p).or_default().insert(Class::Http);
                }
            }
            // Istio's own special case: rules for hosts outside the registry go on port 80.
            if unregistered
                && (rule.match_.is_empty() || rule.match_.iter().any(|m| m.port.is_none()))
            {
                vs_ports.entry(80).or_default().insert(Class::Http);
            }
        }
        for rule in &vs.spec.tls {
            for p in rule
                .match_
                .iter()
                .filter_map(|m| m.port.and_then(|p| u16::try_from(p).ok()))
            {
                vs_ports.entry(p).or_default().insert(Class::Tls);
            }
        }
        for rule in &vs.spec.tcp {
            for p in rule
                .match_
                .iter()
                .filter_map(|m| m.port.and_then(|p| u16::try_from(p).ok()))
            {
                vs_ports.entry(p).or_default().insert(Class::Tcp);
            }
        }
    }
    let ports: BTreeSet<u16> = by_port
        .keys()
        .chain(vs_ports.keys())
        .copied()
        .filter(|p| *p != 0)
        .collect();
    let mut out = Vec::new();
    for port in ports {
        let svcs = by_port.remove(&port).unwrap_or_default();
        let vs_classes = vs_ports.get(&port).cloned().unwrap_or_default();
        let plain = plain_class(cx, port, &svcs, &vs_classes);
        let mut chains = Vec::new();
        match plain {
            Some(Class::Http) => chains.extend(http_chain(cx, port, &svcs, &vss)),
            Some(Class::Tcp) => chains.extend(tcp_chain(cx, port, &svcs, &vss)),
            Some(Class::Tls) | None => {}
        }
        if vs_classes.contains(&Class::Tls) || svcs.iter().any(|s| s.class == Class::Tls) {
            chains.extend(tls_chains(cx, port, &svcs, &vss));
        }
        if !chains.is_empty() {
            out.push(Listener {
                name: format!("0.0.0.0_{port}"),
                port,
                chains,
            });
        }
    }
    out
}

/// Whether the port's plain chain speaks HTTP or TCP: the first registered host on it decides
/// (Istio keeps one protocol per wildcard listener); mesh rules decide for ports no entry
/// declares. Hosts of the other protocol are reported.
fn plain_class(
    cx: &mut Ctx<'_>,
    port: u16,
    svcs: &[PortService<'_>],
    vs: &BTreeSet<Class>,
) -> Option<Class> {
    let first = svcs.iter().find(|s| s.class != Class::Tls).map(|s| s.class);
    let class = first.or_else(|| {
        if vs.contains(&Class::Http) {
            Some(Class::Http)
        } else if vs.contains(&Class::Tcp) {
            Some(Class::Tcp)
        } else {
            None
        }
    })?;
    for s in svcs
        .iter()
        .filter(|s| s.class != Class::Tls && s.class != class)
    {
        cx.report(
            s.se,
            DROPPED,
            Level::Warning,
            &format!("spec.ports[{}].protocol", s.port_index),
            format!(
                "port {port} of {} is {:?}, but another host makes port {port} {:?} for this sidecar: {} is not reachable on it",
                s.host, s.class, class, s.host
            ),
        );
    }
    Some(class)
}

fn fqdn_hosts(vs: &Resource<VirtualService>) -> Vec<String> {
    vs.spec
        .hosts
        .iter()
        .map(|h| hosts::fqdn(h, vs.namespace()))
        .collect()
}

fn is_registered(cx: &Ctx<'_>, host: &str) -> bool {
    cx.reg.service(host).is_some()
}

/// True when `pattern` (a VirtualService host, maybe a wildcard) covers `host`.
fn covers(pattern: &str, host: &str) -> bool {
    hosts::subset_of(host, pattern)
}

fn plain_match() -> ChainMatch {
    ChainMatch {
        transport: Transport::Plain,
        server_names: Vec::new(),
    }
}

/// The HTTP chain: VirtualService hosts with their routes for this port, then every other
/// registered HTTP host with its default route. A host claimed by an older VirtualService is
/// not taken by a later one (Istio's IST0109 conflict).
fn http_chain(
    cx: &mut Ctx<'_>,
    port: u16,
    svcs: &[PortService<'_>],
    vss: &[&Resource<VirtualService>],
) -> Option<FilterChain> {
    let http_svcs: Vec<&PortService<'_>> = svcs.iter().filter(|s| s.class == Class::Http).collect();
    let mut vhosts: BTreeMap<String, VirtualHost> = BTreeMap::new();
    let mut claimed: BTreeMap<String, String> = BTreeMap::new();
    for vs in vss {
        if vs.spec.http.is_empty() {
            continue;
        }
        let explicit = http_match_ports(vs).any(|p| p == port);
        let attach: Vec<String> = fqdn_hosts(vs)
            .into_iter()
            .filter(|h| {
                let on_port = http_svcs.iter().any(|s| covers(h, &s.host));
                let known = is_registered(cx, h)
                    || (hosts::is_wildcard(h) && http_svcs.iter().any(|s| covers(h, &s.host)));
                // A rule bound to this port by `match.port` serves the VirtualService's
                // hosts on it, declared there or not (Istio's egress-gateway TLS-origination
                // task sends `http://my-nginx…` on port 80, which my-nginx's Service lacks).
                on_port || explicit || (!known && port == 80)
            })
            .collect();
        if attach.is_empty() {
            continue;
        }
        let scope = Scope {
            gateway: MESH,
            listen_port: port,
            is_tls: false,
        };
        let built = http::build_routes(cx, vs, scope);
        if built.is_empty() {
            continue;
        }
        let routes = http::finish(built);
        let me = format!("{}/{}", vs.namespace(), vs.name());
        for h in attach {
            if let Some(first) = claimed.get(&h) {
                let msg = format!(
                    "host {h} already has mesh rules from VirtualService {first} on port {port}: this VirtualService's rules are not used for it (Istio keeps the oldest)"
                );
                cx.report(*vs, DROPPED, Level::Warning, "spec.hosts", msg);
                continue;
            }
            claimed.insert(h.clone(), me.clone());
            vhosts.insert(
                h.clone(),
                VirtualHost {
                    name: format!("{h}:{port}"),
                    domains: vec![HostMatch::parse(&h)],
                    routes: routes.clone(),
                },
            );
        }
    }
    for s in &http_svcs {
        if claimed.keys().any(|c| covers(c, &s.host)) {
            continue;
        }
        let cluster = s.own_cluster(cx, port);
        vhosts.insert(
            s.host.clone(),
            VirtualHost {
                name: format!("{}:{port}", s.host),
                domains: vec![HostMatch::parse(&s.host)],
                routes: vec![http::default_route(cx, cluster, &s.host, port)],
            },
        );
    }
    if vhosts.is_empty() {
        return None;
    }
    let mut virtual_hosts: Vec<VirtualHost> = vhosts.into_values().collect();
    virtual_hosts.sort_by(|a, b| a.name.cmp(&b.name));
    Some(FilterChain {
        name: format!("{port}"),
        match_: plain_match(),
        tls: None,
        app: App::Http {
            route_config: format!("{port}"),
            virtual_hosts,
            index: Default::default(),
        },
    })
}

/// Does a mesh rule of `vs` without an explicit port apply on `port`? Only for a host of the
/// VirtualService registered on that port.
fn vs_on_port(vs: &Resource<VirtualService>, svcs: &[PortService<'_>]) -> bool {
    fqdn_hosts(vs)
        .iter()
        .any(|h| svcs.iter().any(|s| covers(h, &s.host)))
}

/// TLS chains: one per applicable `tls` match entry (its SNI hosts, else the VirtualService's
/// hosts), then one per registered TLS host no rule routes.
fn tls_chains(
    cx: &mut Ctx<'_>,
    port: u16,
    svcs: &[PortService<'_>],
    vss: &[&Resource<VirtualService>],
) -> Vec<FilterChain> {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for vs in vss {
        let on_port = vs_on_port(vs, svcs);
        let vs_hosts = fqdn_hosts(vs);
        for (ti, rule) in vs.spec.tls.iter().enumerate() {
            if rule.route.is_empty() {
                continue;
            }
            for (mi, m) in rule.match_.iter().enumerate() {
                let l4 = L4::from(m);
                if !tcp::l4_applies(cx, vs, &l4, port, MESH) || (m.port.is_none() && !on_port) {
                    continue;
                }
                let path = format!("spec.tls[{ti}].match[{mi}]");
                let wanted: Vec<String> = if m.sni_hosts.is_empty() {
                    vs_hosts.clone()
                } else {
                    m.sni_hosts.iter().map(|h| h.to_ascii_lowercase()).collect()
                };
                let (dups, fresh): (Vec<String>, Vec<String>) =
                    wanted.into_iter().partition(|h| seen.contains(h));
                if !dups.is_empty() {
                    let msg = format!(
                        "SNI hosts {} are already routed on port {port}: left out of this match entry",
                        dups.join(", ")
                    );
                    cx.report(
                        *vs,
                        DROPPED,
                        Level::Warning,
                        &format!("{path}.sniHosts"),
                        msg,
                    );
                }
                if fresh.is_empty() {
                    continue;
                }
                let Some(subnets) = tcp::subnets(cx, vs, &path, &m.destination_subnets) else {
                    continue;
                };
                let clusters =
                    tcp::clusters(cx, vs, &format!("spec.tls[{ti}].route"), &rule.route, port);
                if clusters.is_empty() {
                    continue;
                }
                seen.extend(fresh.iter().cloned());
                let names: Vec<HostMatch> = fresh.iter().map(|h| HostMatch::parse(h)).collect();
                out.push(FilterChain {
                    name: format!("{}/{}/tls[{ti}]/match[{mi}]", vs.namespace(), vs.name()),
                    match_: ChainMatch {
                        transport: Transport::Tls,
                        server_names: names.clone(),
                    },
                    tls: None,
                    app: App::Tcp {
                        routes: vec![TcpRoute {
                            name: format!("{}/{}/tls[{ti}]", vs.namespace(), vs.name()),
                            sni: names,
                            destination_subnets: subnets,
                            clusters,
                        }],
                    },
                });
            }
        }
    }
    for s in svcs.iter().filter(|s| s.class == Class::Tls) {
        if seen.iter().any(|h| covers(h, &s.host)) {
            continue;
        }
        seen.insert(s.host.clone());
        let cluster = s.own_cluster(cx, port);
        out.push(FilterChain {
            name: s.host.clone(),
            match_: ChainMatch {
                transport: Transport::Tls,
                server_names: vec![HostMatch::parse(&s.host)],
            },
            tls: None,
            app: App::Tcp {
                routes: vec![single_route(&s.host, Vec::new(), cluster)],
            },
        });
    }
    out
}

fn single_route(name: &str, subnets: Vec<ipnet::IpNet>, cluster: String) -> TcpRoute {
    TcpRoute {
        name: name.to_owned(),
        sni: Vec::new(),
        destination_subnets: subnets,
        clusters: vec![WeightedCluster {
            cluster,
            weight: 100,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
        }],
    }
}

/// The TCP chain: applicable `tcp` rules in order (by destination subnet), then a route per
/// registered TCP host not covered by a rule (by its ServiceEntry `addresses`, else every
/// connection on the port).
fn tcp_chain(
    cx: &mut Ctx<'_>,
    port: u16,
    svcs: &[PortService<'_>],
    vss: &[&Resource<VirtualService>],
) -> Option<FilterChain> {
    let mut routes: Vec<TcpRoute> = Vec::new();
    let mut covered: Vec<String> = Vec::new();
    for vs in vss {
        let on_port = vs_on_port(vs, svcs);
        for (ti, rule) in vs.spec.tcp.iter().enumerate() {
            if rule.route.is_empty() {
                continue;
            }
            let mut applies = rule.match_.is_empty() && on_port;
            let mut any_subnet = false;
            let mut subnets = Vec::new();
            for (mi, m) in rule.match_.iter().enumerate() {
                let l4 = L4::from(m);
                if !tcp::l4_applies(cx, vs, &l4, port, MESH) || (m.port.is_none() && !on_port) {
                    continue;
                }
                let Some(nets) = tcp::subnets(
                    cx,
                    vs,
                    &format!("spec.tcp[{ti}].match[{mi}]"),
                    &m.destination_subnets,
                ) else {
                    continue;
                };
                applies = true;
                if nets.is_empty() {
                    any_subnet = true;
                }
                subnets.extend(nets);
            }
            if !applies {
                continue;
            }
            let clusters =
                tcp::clusters(cx, vs, &format!("spec.tcp[{ti}].route"), &rule.route, port);
            if clusters.is_empty() {
                continue;
            }
            covered.extend(fqdn_hosts(vs));
            routes.push(TcpRoute {
                name: format!("{}/{}/tcp[{ti}]", vs.namespace(), vs.name()),
                sni: Vec::new(),
                destination_subnets: if any_subnet { Vec::new() } else { subnets },
                clusters,
            });
        }
    }
    for s in svcs.iter().filter(|s| s.class == Class::Tcp) {
        if covered.iter().any(|c| covers(c, &s.host)) {
            continue;
        }
        let subnets: Vec<ipnet::IpNet> =
            s.se.spec
                .addresses
                .iter()
                .filter_map(|a| tcp::parse_subnet(a))
                .collect();
        if let Some(catch_all) = routes.iter().find(|r| r.destination_subnets.is_empty()) {
            let msg = format!(
                "TCP port {port}: {} takes every connection that no address distinguishes, so {} is not reachable here (give the ServiceEntries addresses)",
                catch_all.name, s.host
            );
            cx.report(
                s.se,
                DROPPED,
                Level::Warning,
                &format!("spec.ports[{}]", s.port_index),
                msg,
            );
        }
        let cluster = s.own_cluster(cx, port);
        routes.push(single_route(&s.host, subnets, cluster));
    }
    if routes.is_empty() {
        return None;
    }
    Some(FilterChain {
        name: format!("{port}"),
        match_: plain_match(),
        tls: None,
        app: App::Tcp { routes },
    })
}

#[cfg(test)]
mod tests;
