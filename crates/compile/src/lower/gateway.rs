//! The gateway role: listeners from the Gateway servers that select this proxy, following
//! Istio's `pilot/pkg/networking/core/gateway.go` (`buildGatewayListeners`,
//! `buildGatewayHTTPRouteConfig`, `createGatewayTCPFilterChainOpts`,
//! `buildGatewayNetworkFiltersFromTLSRoutes`/`...FromTCPRoutes`) and `model.MergeGateways`.
//!
//! One listener per server port. A port carries plain HTTP (every HTTP server on it merged into
//! one route configuration `http.<port>`), or one plain TCP server, or TLS servers (one chain
//! each, chosen by SNI): PASSTHROUGH servers route by SNI to `tls` rules, terminating servers
//! carry HTTP (`https.<port>.<portName>.<gateway>.<ns>`) or `tcp` rules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use sluice_model::networking::gateway::{Server, ServerTLSMode};
use sluice_model::networking::service_entry::Protocol;
use sluice_model::networking::{Gateway, VirtualService};
use sluice_model::{Diagnostic, Level, Resource};
use sluice_snapshot::listener::{ChainMatch, ServerTlsMode, Transport};
use sluice_snapshot::route::TcpRoute;
use sluice_snapshot::{App, FilterChain, HostMatch, Listener, ServerTls, VirtualHost};

use super::Ctx;
use super::codes::{ADJUSTED, DROPPED, NO_ROUTES, NOT_SUPPORTED};
use super::hosts::{self, ServerHost};
use super::http::{self, Built, Scope};
use super::registry::istio_order;
use super::tcp::{self, L4};

/// One Gateway server, as this proxy uses it.
struct ServerRef<'a> {
    gw: &'a Resource<Gateway>,
    index: usize,
    server: &'a Server,
    /// `namespace/name`, as VirtualServices name it once resolved.
    gw_name: String,
    hosts: Vec<ServerHost>,
}

impl ServerRef<'_> {
    fn path(&self) -> String {
        format!("spec.servers[{}]", self.index)
    }

    /// `namespace/gateway/portName`: the chain's name.
    fn name(&self) -> String {
        format!("{}/{}", self.gw_name, self.server.port.name)
    }

    /// SNI names of the chain: the hosts without namespace; none (any SNI, or none at all)
    /// when a host is `*` (Istio's `getSNIHostsForServer`).
    fn sni_hosts(&self) -> Vec<String> {
        if self.hosts.iter().any(|h| h.host == "*") {
            return Vec::new();
        }
        let mut out: Vec<String> = Vec::new();
        for h in &self.hosts {
            if !out.contains(&h.host) {
                out.push(h.host.clone());
            }
        }
        out
    }

    fn report(&self, cx: &mut Ctx<'_>, code: &'static str, level: Level, field: &str, msg: String) {
        let path = if field.is_empty() {
            self.path()
        } else {
            format!("{}.{field}", self.path())
        };
        cx.report(self.gw, code, level, &path, msg);
    }
}

enum Kind {
    Http,
    Tcp,
    Passthrough,
    Terminate { tls: ServerTls, http: bool },
}

enum Plan<'a> {
    Http(Vec<ServerRef<'a>>),
    Tcp(ServerRef<'a>),
    Tls(Vec<(ServerRef<'a>, Kind)>),
}

impl Plan<'_> {
    fn describe(&self) -> String {
        let (what, first) = match self {
            Plan::Http(v) => ("plain HTTP", v.first().map(ServerRef::name)),
            Plan::Tcp(s) => ("plain TCP", Some(s.name())),
            Plan::Tls(v) => ("TLS", v.first().map(|(s, _)| s.name())),
        };
        format!("{what} (first server: {})", first.unwrap_or_default())
    }
}

pub fn listeners(cx: &mut Ctx<'_>) -> Vec<Listener> {
    let resources = cx.resources;
    let mut gateways: Vec<&Resource<Gateway>> = resources
        .gateways
        .iter()
        .filter(|g| g.spec.selects(&cx.opts.labels))
        .collect();
    gateways.sort_by_key(|g| istio_order(g));
    if gateways.is_empty() {
        let labels: Vec<String> = cx
            .opts
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        cx.diags.push(Diagnostic::warning(
            NO_ROUTES,
            format!(
                "no Gateway selects this proxy (labels {}): it listens on nothing",
                labels.join(",")
            ),
        ));
    }
    let mut plans: BTreeMap<u16, Plan<'_>> = BTreeMap::new();
    for gw in gateways {
        for (index, server) in gw.spec.servers.iter().enumerate() {
            let sref = ServerRef {
                gw,
                index,
                server,
                gw_name: format!("{}/{}", gw.namespace(), gw.name()),
                hosts: server
                    .hosts
                    .iter()
                    .map(|h| ServerHost::parse(h, gw.namespace()))
                    .collect(),
            };
            let Some(port) = u16::try_from(server.port.number).ok().filter(|p| *p != 0) else {
                sref.report(
                    cx,
                    DROPPED,
                    Level::Error,
                    "port.number",
                    format!(
                        "port {} is not a TCP port: server left out",
                        server.port.number
                    ),
                );
                continue;
            };
            if server.bind.is_some() {
                cx.unsupported(
                    gw,
                    &format!("{}.bind", sref.path()),
                    "binding one server to its own address (every listener binds on --bind)",
                );
            }
            if server.default_endpoint.is_some() {
                cx.unsupported(
                    gw,
                    &format!("{}.defaultEndpoint", sref.path()),
                    "a server default endpoint",
                );
            }
            let Some(kind) = classify(cx, &sref) else {
                continue;
            };
            add(cx, &mut plans, port, sref, kind);
        }
    }
    plans
        .into_iter()
        .map(|(port, plan)| Listener {
            name: format!("0.0.0.0_{port}"),
            port,
            chains: chains(cx, port, plan),
        })
        .collect()
}

/// What a server becomes, Istio's way (`IsHTTPSServerWithTLSTermination`,
/// `IsPassThroughServer`). `None` (with a diagnostic) for a server left out.
fn classify(cx: &mut Ctx<'_>, s: &ServerRef<'_>) -> Option<Kind> {
    let proto = s.server.port.protocol;
    if proto == Protocol::Udp {
        s.report(
            cx,
            NOT_SUPPORTED,
            Level::Warning,
            "port.protocol",
            "UDP servers are not supported: server left out".into(),
        );
        return None;
    }
    if proto.is_http() {
        if let Some(tls) = &s.server.tls
            && (tls.mode.is_some()
                || tls.credential_name.is_some()
                || tls.server_certificate.is_some())
        {
            s.report(
                cx,
                ADJUSTED,
                Level::Warning,
                "tls",
                format!(
                    "a {proto} server does not terminate TLS (as in Istio): only httpsRedirect applies; use protocol HTTPS"
                ),
            );
        }
        return Some(Kind::Http);
    }
    let Some(tls) = &s.server.tls else {
        return match proto {
            Protocol::Tls => Some(Kind::Passthrough),
            Protocol::Https => {
                s.report(
                    cx,
                    DROPPED,
                    Level::Error,
                    "tls",
                    "an HTTPS server needs tls settings: server left out".into(),
                );
                None
            }
            _ => Some(Kind::Tcp),
        };
    };
    match tls.mode() {
        ServerTLSMode::Passthrough => Some(Kind::Passthrough),
        ServerTLSMode::AutoPassthrough => {
            s.report(
                cx,
                NOT_SUPPORTED,
                Level::Warning,
                "tls.mode",
                "AUTO_PASSTHROUGH (routing by an SNI that encodes the cluster) is not supported: server left out".into(),
            );
            None
        }
        _ => {
            let tls = server_tls(cx, s)?;
            Some(Kind::Terminate {
                tls,
                http: proto == Protocol::Https,
            })
        }
    }
}

/// The TLS a terminating server presents (files, or `credentialName` under the credentials
/// directory). ISTIO_MUTUAL servers use the proxy's workload identity: their paths are left
/// empty here and filled by the data plane from `--identity-dir`.
fn server_tls(cx: &mut Ctx<'_>, s: &ServerRef<'_>) -> Option<ServerTls> {
    let tls = s.server.tls.as_ref()?;
    let alpn = if s.server.port.protocol == Protocol::Https {
        vec!["h2".to_owned(), "http/1.1".to_owned()]
    } else {
        Vec::new()
    };
    let mode = match tls.mode() {
        ServerTLSMode::Simple => ServerTlsMode::Simple,
        ServerTLSMode::Mutual => ServerTlsMode::Mutual,
        ServerTLSMode::OptionalMutual => {
            s.report(
                cx,
                ADJUSTED,
                Level::Warning,
                "tls.mode",
                "OPTIONAL_MUTUAL is lowered to MUTUAL: clients without a certificate are refused"
                    .into(),
            );
            ServerTlsMode::Mutual
        }
        ServerTLSMode::IstioMutual => {
            return Some(ServerTls {
                mode: ServerTlsMode::IstioMutual,
                certificate_chain: PathBuf::new(),
                private_key: PathBuf::new(),
                ca_certificates: None,
                subject_alt_names: tls.subject_alt_names.clone(),
                alpn,
            });
        }
        ServerTLSMode::Passthrough | ServerTLSMode::AutoPassthrough => return None,
    };
    // Restrictions the data plane cannot enforce: leaving them out would accept clients the
    // configuration refuses, so the server is left out instead.
    for (set, field, what) in [
        (
            !tls.verify_certificate_spki.is_empty(),
            "tls.verifyCertificateSpki",
            "pinning client certificate keys",
        ),
        (
            !tls.verify_certificate_hash.is_empty(),
            "tls.verifyCertificateHash",
            "pinning client certificates",
        ),
        (
            tls.ca_crl.is_some(),
            "tls.caCrl",
            "a certificate revocation list",
        ),
    ] {
        if set {
            s.report(
                cx,
                NOT_SUPPORTED,
                Level::Error,
                field,
                format!("{what} is not supported yet; the server is left out rather than accept clients it would refuse"),
            );
            return None;
        }
    }
    for (set, field, what) in [
        (
            tls.min_protocol_version.is_some(),
            "tls.minProtocolVersion",
            "a minimum TLS version (TLS 1.2 and 1.3 are accepted)",
        ),
        (
            tls.max_protocol_version.is_some(),
            "tls.maxProtocolVersion",
            "a maximum TLS version",
        ),
        (
            !tls.cipher_suites.is_empty(),
            "tls.cipherSuites",
            "choosing cipher suites",
        ),
    ] {
        if set {
            cx.unsupported(s.gw, &format!("{}.{field}", s.path()), what);
        }
    }
    let credential = tls
        .credential_name
        .clone()
        .or_else(|| tls.credential_names.first().cloned());
    if tls.credential_names.len() > 1 {
        s.report(
            cx,
            NOT_SUPPORTED,
            Level::Warning,
            "tls.credentialNames",
            "several certificates per server are not supported yet: only the first credential is used".into(),
        );
    }
    let (chain, key, mut ca) = if let Some(name) = credential {
        let files = super::credential::lookup(cx, &name).and_then(|f| match (f.cert, f.key) {
            (Some(chain), Some(key)) => Ok((chain, key, f.ca)),
            _ => Err(format!(
                "credentialName {name:?} holds no certificate and key"
            )),
        });
        match files {
            Ok((chain, key, ca)) => (chain, key, ca.filter(|_| mode == ServerTlsMode::Mutual)),
            Err(why) => {
                let why = format!("{why}: server left out");
                s.report(cx, DROPPED, Level::Error, "tls.credentialName", why);
                return None;
            }
        }
    } else {
        match (&tls.server_certificate, &tls.private_key) {
            (Some(c), Some(k)) => (
                PathBuf::from(c),
                PathBuf::from(k),
                // Only MUTUAL verifies clients; SIMPLE ignores caCertificates, as Istio does.
                tls.ca_certificates
                    .as_ref()
                    .filter(|_| mode == ServerTlsMode::Mutual)
                    .map(PathBuf::from),
            ),
            _ => {
                let what = if tls.tls_certificates.is_empty() {
                    "a terminating server needs serverCertificate and privateKey, or credentialName"
                } else {
                    "tlsCertificates (several certificates per server) are not supported yet; use serverCertificate and privateKey"
                };
                s.report(
                    cx,
                    DROPPED,
                    Level::Error,
                    "tls",
                    format!("{what}: server left out"),
                );
                return None;
            }
        }
    };
    if let Some(ca_name) = tls
        .ca_cert_credential_name
        .as_ref()
        .filter(|_| mode == ServerTlsMode::Mutual)
    {
        let file = super::credential::lookup(cx, ca_name).and_then(|f| {
            f.ca.ok_or_else(|| format!("caCertCredentialName {ca_name:?} holds no CA certificate"))
        });
        match file {
            Ok(file) => ca = Some(file),
            Err(why) => {
                let why = format!("{why}: server left out");
                s.report(cx, DROPPED, Level::Error, "tls.caCertCredentialName", why);
                return None;
            }
        }
    }
    if mode == ServerTlsMode::Mutual && ca.is_none() {
        s.report(
            cx,
            DROPPED,
            Level::Error,
            "tls.caCertificates",
            "MUTUAL needs caCertificates to verify clients: server left out".into(),
        );
        return None;
    }
    Some(ServerTls {
        mode,
        certificate_chain: chain,
        private_key: key,
        ca_certificates: ca,
        subject_alt_names: tls.subject_alt_names.clone(),
        alpn,
    })
}

/// Adds a server to its port, Istio's merge rules: a port is plain HTTP, plain TCP (one server)
/// or TLS, decided by its first server.
fn add<'a>(
    cx: &mut Ctx<'_>,
    plans: &mut BTreeMap<u16, Plan<'a>>,
    port: u16,
    s: ServerRef<'a>,
    kind: Kind,
) {
    let Some(plan) = plans.get_mut(&port) else {
        let plan = match kind {
            Kind::Http => Plan::Http(vec![s]),
            Kind::Tcp => Plan::Tcp(s),
            k @ (Kind::Passthrough | Kind::Terminate { .. }) => Plan::Tls(vec![(s, k)]),
        };
        plans.insert(port, plan);
        return;
    };
    match (plan, kind) {
        (Plan::Http(v), Kind::Http) => v.push(s),
        (Plan::Tls(v), k @ (Kind::Passthrough | Kind::Terminate { .. })) => v.push((s, k)),
        (plan, _) => {
            let msg = format!(
                "port {port} already carries {}; a port carries plain HTTP, one plain TCP server, or TLS servers: server left out",
                plan.describe()
            );
            s.report(cx, DROPPED, Level::Error, "port", msg);
        }
    }
}

fn chains(cx: &mut Ctx<'_>, port: u16, plan: Plan<'_>) -> Vec<FilterChain> {
    match plan {
        Plan::Http(servers) => {
            let name = match servers.as_slice() {
                [one] => one.name(),
                _ => format!("http.{port}"),
            };
            let refs: Vec<&ServerRef<'_>> = servers.iter().collect();
            let virtual_hosts = http_virtual_hosts(cx, &refs, port, false);
            vec![FilterChain {
                name,
                match_: ChainMatch {
                    transport: Transport::Plain,
                    server_names: Vec::new(),
                },
                tls: None,
                app: App::Http {
                    route_config: format!("http.{port}"),
                    virtual_hosts,
                    index: Default::default(),
                },
            }]
        }
        Plan::Tcp(s) => {
            let routes = tcp_routes(cx, &s, port);
            vec![FilterChain {
                name: s.name(),
                match_: ChainMatch {
                    transport: Transport::Plain,
                    server_names: Vec::new(),
                },
                tls: None,
                app: App::Tcp { routes },
            }]
        }
        Plan::Tls(servers) => {
            let mut claimed: BTreeSet<String> = BTreeSet::new();
            let mut sni_seen: BTreeSet<String> = BTreeSet::new();
            let mut out = Vec::new();
            for (s, kind) in servers {
                let wanted = s.sni_hosts();
                let key_any = "*".to_owned();
                let keys: Vec<String> = if wanted.is_empty() {
                    vec![key_any]
                } else {
                    wanted.clone()
                };
                let (taken, free): (Vec<String>, Vec<String>) =
                    keys.into_iter().partition(|h| claimed.contains(h));
                if !taken.is_empty() {
                    let msg = format!(
                        "hosts {} already have a TLS server on port {port}: {}",
                        taken.join(", "),
                        if free.is_empty() {
                            "server left out"
                        } else {
                            "those hosts are left out of this server"
                        }
                    );
                    s.report(cx, DROPPED, Level::Error, "hosts", msg);
                }
                if free.is_empty() {
                    continue;
                }
                claimed.extend(free.iter().cloned());
                let server_names: Vec<HostMatch> = if wanted.is_empty() {
                    Vec::new()
                } else {
                    free.iter().map(|h| HostMatch::parse(h)).collect()
                };
                let (tls, app) = match kind {
                    Kind::Passthrough => (
                        None,
                        App::Tcp {
                            routes: passthrough_routes(cx, &s, port, &mut sni_seen),
                        },
                    ),
                    Kind::Terminate { tls, http: true } => {
                        let virtual_hosts = http_virtual_hosts(cx, &[&s], port, true);
                        let route_config = format!(
                            "https.{port}.{}.{}.{}",
                            s.server.port.name,
                            s.gw.name(),
                            s.gw.namespace()
                        );
                        (
                            Some(tls),
                            App::Http {
                                route_config,
                                virtual_hosts,
                                index: Default::default(),
                            },
                        )
                    }
                    Kind::Terminate { tls, http: false } => (
                        Some(tls),
                        App::Tcp {
                            routes: tcp_routes(cx, &s, port),
                        },
                    ),
                    Kind::Http | Kind::Tcp => continue,
                };
                out.push(FilterChain {
                    name: s.name(),
                    match_: ChainMatch {
                        transport: Transport::Tls,
                        server_names,
                    },
                    tls,
                    app,
                });
            }
            out
        }
    }
}

/// Istio's `buildGatewayHTTPRouteConfig` for the given servers: one virtual host per host
/// shared by a server and a bound VirtualService (the more specific of the two), routes of
/// every VirtualService for that host appended in order, catch-alls last; `httpsRedirect`
/// hosts only redirect; no host at all → Istio's `blackhole:<port>` (404 to everything).
fn http_virtual_hosts(
    cx: &mut Ctx<'_>,
    servers: &[&ServerRef<'_>],
    port: u16,
    is_tls: bool,
) -> Vec<VirtualHost> {
    let mut acc: BTreeMap<String, (Vec<Built>, bool)> = BTreeMap::new();
    for s in servers {
        let redirect = s.server.tls.as_ref().and_then(|t| t.https_redirect) == Some(true);
        let mut attached = false;
        for vs in cx.reg.virtual_services_for(&s.gw_name) {
            let vs_hosts = fqdn_hosts(vs);
            let server_hosts = hosts::names_for_namespace(&s.hosts, vs.namespace());
            let shared = hosts::intersection(&server_hosts, &vs_hosts);
            if shared.is_empty() {
                continue;
            }
            let scope = Scope {
                gateway: &s.gw_name,
                listen_port: port,
                is_tls,
            };
            let routes = http::build_routes(cx, vs, scope);
            if routes.is_empty() {
                continue;
            }
            attached = true;
            for h in shared {
                let entry = acc.entry(h).or_default();
                // The same VirtualService reached through two servers of the port adds its
                // routes once.
                for b in &routes {
                    if !entry
                        .0
                        .iter()
                        .any(|x| x.rule == b.rule && x.route == b.route)
                    {
                        entry.0.push(b.clone());
                    }
                }
                entry.1 |= redirect;
            }
        }
        if redirect {
            for h in &s.hosts {
                acc.entry(h.host.clone()).or_default().1 = true;
            }
        } else if !attached {
            let hosts: Vec<&str> = s.hosts.iter().map(|h| h.host.as_str()).collect();
            let msg = format!(
                "no VirtualService bound to {} has http rules for [{}] on port {port}: requests for these hosts get 404",
                s.gw_name,
                hosts.join(", ")
            );
            s.report(cx, NO_ROUTES, Level::Warning, "hosts", msg);
        }
    }
    if acc.is_empty() {
        return vec![VirtualHost {
            name: format!("blackhole:{port}"),
            domains: vec![HostMatch::Any],
            routes: Vec::new(),
        }];
    }
    acc.into_iter()
        .map(|(host, (routes, require_tls))| VirtualHost {
            name: format!("{host}:{port}"),
            domains: vec![HostMatch::parse(&host)],
            routes: if require_tls {
                vec![http::https_redirect_route()]
            } else {
                http::finish(routes)
            },
        })
        .collect()
}

fn fqdn_hosts(vs: &Resource<VirtualService>) -> Vec<String> {
    vs.spec
        .hosts
        .iter()
        .map(|h| hosts::fqdn(h, vs.namespace()))
        .collect()
}

/// Istio's `pickMatchingGatewayHosts`: does some host of `vs` overlap some server host its
/// namespace may use?
fn vs_matches_server(s: &ServerRef<'_>, vs: &Resource<VirtualService>) -> bool {
    let vs_hosts = fqdn_hosts(vs);
    s.hosts
        .iter()
        .filter(|h| h.admits(vs.namespace()))
        .any(|h| vs_hosts.iter().any(|v| hosts::matches(&h.host, v)))
}

/// Istio's `buildGatewayNetworkFiltersFromTLSRoutes`: for each `tls` rule of a bound
/// VirtualService, the SNI hosts of its match entries for this port and gateway. An SNI host
/// already routed on this port skips the entry (Envoy would reject duplicate chains).
/// `destinationSubnets` are not evaluated at a gateway, as in Istio.
fn passthrough_routes(
    cx: &mut Ctx<'_>,
    s: &ServerRef<'_>,
    port: u16,
    sni_seen: &mut BTreeSet<String>,
) -> Vec<TcpRoute> {
    let mut routes = Vec::new();
    for vs in cx.reg.virtual_services_for(&s.gw_name) {
        if !vs_matches_server(s, vs) {
            continue;
        }
        for (ti, rule) in vs.spec.tls.iter().enumerate() {
            if rule.route.is_empty() {
                continue;
            }
            let mut applied = false;
            let mut snis: Vec<String> = Vec::new();
            for (mi, m) in rule.match_.iter().enumerate() {
                if !tcp::l4_applies(cx, vs, &L4::from(m), port, &s.gw_name) {
                    continue;
                }
                let path = format!("spec.tls[{ti}].match[{mi}]");
                let wanted: Vec<String> =
                    m.sni_hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
                let dups: Vec<&String> = wanted.iter().filter(|h| sni_seen.contains(*h)).collect();
                if !dups.is_empty() {
                    let msg = format!(
                        "SNI hosts {} are already routed on port {port}: this match entry is left out (as Istio skips it)",
                        dups.iter()
                            .map(|h| h.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    cx.report(
                        vs,
                        DROPPED,
                        Level::Warning,
                        &format!("{path}.sniHosts"),
                        msg,
                    );
                    continue;
                }
                if !m.destination_subnets.is_empty() {
                    cx.report(
                        vs,
                        ADJUSTED,
                        Level::Info,
                        &format!("{path}.destinationSubnets"),
                        "destinationSubnets are not evaluated at a gateway (as in Istio): the connection's destination is the gateway itself",
                    );
                }
                sni_seen.extend(wanted.iter().cloned());
                snis.extend(wanted);
                applied = true;
            }
            if !applied {
                continue;
            }
            let clusters =
                tcp::clusters(cx, vs, &format!("spec.tls[{ti}].route"), &rule.route, port);
            if clusters.is_empty() {
                continue;
            }
            routes.push(TcpRoute {
                name: format!("{}/{}/tls[{ti}]", vs.namespace(), vs.name()),
                sni: snis.iter().map(|h| HostMatch::parse(h)).collect(),
                destination_subnets: Vec::new(),
                clusters,
            });
        }
    }
    if routes.is_empty() {
        let msg = format!(
            "no VirtualService bound to {} has tls rules for this server's hosts on port {port}: connections are closed",
            s.gw_name
        );
        s.report(cx, NO_ROUTES, Level::Warning, "hosts", msg);
    }
    routes
}

/// Istio's `buildGatewayNetworkFiltersFromTCPRoutes`: the first `tcp` rule (of the first bound
/// VirtualService with a matching host) whose match entries fit this port and gateway takes
/// every connection.
fn tcp_routes(cx: &mut Ctx<'_>, s: &ServerRef<'_>, port: u16) -> Vec<TcpRoute> {
    for vs in cx.reg.virtual_services_for(&s.gw_name) {
        if !vs_matches_server(s, vs) {
            continue;
        }
        for (ti, rule) in vs.spec.tcp.iter().enumerate() {
            let applies = rule.match_.is_empty()
                || rule
                    .match_
                    .iter()
                    .any(|m| tcp::l4_applies(cx, vs, &L4::from(m), port, &s.gw_name));
            if !applies || rule.route.is_empty() {
                continue;
            }
            let clusters =
                tcp::clusters(cx, vs, &format!("spec.tcp[{ti}].route"), &rule.route, port);
            if clusters.is_empty() {
                continue;
            }
            return vec![TcpRoute {
                name: format!("{}/{}/tcp[{ti}]", vs.namespace(), vs.name()),
                sni: Vec::new(),
                destination_subnets: Vec::new(),
                clusters,
            }];
        }
    }
    let msg = format!(
        "no VirtualService bound to {} has tcp rules for this server's hosts on port {port}: connections are closed",
        s.gw_name
    );
    s.report(cx, NO_ROUTES, Level::Warning, "hosts", msg);
    Vec::new()
}

#[cfg(test)]
mod tests;
