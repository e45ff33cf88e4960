//! Clusters: one per (host, port, subset) a route refers to, built from the ServiceEntry that
//! registers the host and the DestinationRule that applies to it, following Istio's
//! `cluster_builder.go`, `cluster_traffic_policy.go` (`applyConnectionPool`,
//! `applyOutlierDetection`, `applyLoadBalancer`, `shouldH2Upgrade`), `cluster_tls.go` and
//! `model.MergeTrafficPolicy`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use sluice_model::networking::ServiceEntry;
use sluice_model::networking::destination_rule::{
    ClientTLSMode, ClientTLSSettings, ConnectionPoolSettings, ConsistentHashLB, DestinationRule,
    H2UpgradePolicy, LoadBalancerSettings, OutlierDetection, SimpleLB, TrafficPolicy,
    TunnelSettings,
};
use sluice_model::networking::service_entry::{Location, Protocol, Resolution, ServicePort};
use sluice_model::{Level, Resource};
use sluice_snapshot::cluster::{
    CookieAttribute, HashAlgorithm, HashKey, Limits, Outlier, TcpKeepalive, Trust, Tunnel,
    UpstreamTlsMode,
};
use sluice_snapshot::{Cluster, Discovery, Endpoint, LbPolicy, Role, UpstreamTls};

use super::codes::{ADJUSTED, BLACK_HOLE, DROPPED, MESH_SERVICE_MISSING, NOT_SUPPORTED};
use super::{ClusterKey, Ctx, Origin, hosts};

/// Istio's default connect timeout (meshConfig `connectTimeout`).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds every cluster routes refer to.
pub fn build(cx: &mut Ctx<'_>) -> BTreeMap<String, Cluster> {
    let refs: Vec<(ClusterKey, Origin)> = cx
        .clusters
        .iter()
        .map(|(k, o)| (k.clone(), o.clone()))
        .collect();
    refs.into_iter()
        .map(|(key, origin)| {
            let c = cluster(cx, &key, &origin);
            (c.name.clone(), c)
        })
        .collect()
}

/// A cluster that refuses everything, with the defaults of any cluster.
fn black_hole(cx: &Ctx<'_>, key: &ClusterKey) -> Cluster {
    Cluster {
        name: key.name(),
        service: key.host.clone(),
        port: key.port,
        discovery: Discovery::BlackHole,
        tls: None,
        connect_timeout: connect_timeout_default(cx),
        lb: LbPolicy::LeastRequest,
        limits: Limits::default(),
        outlier: None,
        http2: false,
        addresses: Vec::new(),
        tunnel: None,
    }
}

fn connect_timeout_default(cx: &Ctx<'_>) -> Duration {
    cx.mesh
        .connect_timeout
        .map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.as_std())
}

fn cluster(cx: &mut Ctx<'_>, key: &ClusterKey, origin: &Origin) -> Cluster {
    let Some(se) = cx.reg.service(&key.host) else {
        cx.diags.push(unregistered(key, origin));
        return black_hole(cx, key);
    };
    let Some(svc_port) = se
        .spec
        .ports
        .iter()
        .find(|p| p.number == u32::from(key.port))
    else {
        let declared: Vec<String> = se.spec.ports.iter().map(|p| p.number.to_string()).collect();
        cx.diags.push(origin.diag(
            BLACK_HOLE,
            Level::Error,
            format!(
                "{} declares ports [{}] for {}, not {}: cluster {} refuses all traffic",
                se.origin(),
                declared.join(", "),
                key.host,
                key.port,
                key.name()
            ),
        ));
        return black_hole(cx, key);
    };
    // A Kubernetes Service among the inputs registers its own name (resolved by DNS).
    let from_service = cx
        .resources
        .kube_services
        .iter()
        .any(|k| std::ptr::eq(k, se));
    if key
        .host
        .ends_with(&format!(".svc.{}", hosts::DOMAIN_SUFFIX))
        && !from_service
        && (se.spec.location() != Location::MeshInternal
            || se.spec.resolution() != Resolution::Static)
    {
        cx.report(
            se,
            MESH_SERVICE_MISSING,
            Level::Warning,
            "spec",
            format!(
                "{} is a Kubernetes service name: outside Kubernetes it needs location: MESH_INTERNAL and resolution: STATIC with endpoints",
                key.host
            ),
        );
    }
    let rule = cx.reg.destination_rule(&key.host, Some(se.namespace()));
    if let Some(rule) = &rule {
        for ignored in &rule.ignored_policies {
            let kept = rule
                .traffic_policy
                .map(|(_, dr)| dr.origin())
                .unwrap_or_default();
            cx.report(
                *ignored,
                ADJUSTED,
                Level::Warning,
                "spec.trafficPolicy",
                format!(
                    "ignored for {}: {kept} for the same host in the same namespace comes first, and Istio merges only subsets",
                    key.host
                ),
            );
        }
    }
    let mut subset_labels: Option<BTreeMap<String, String>> = None;
    let mut subset_policy: Option<(&TrafficPolicy, &Resource<DestinationRule>, String)> = None;
    if !key.subset.is_empty() {
        match rule.as_ref().and_then(|r| r.subset(&key.subset)) {
            Some((s, dr, i)) => {
                subset_labels = Some(s.labels.clone());
                subset_policy = s
                    .traffic_policy
                    .as_ref()
                    .map(|tp| (tp, dr, format!("spec.subsets[{i}].trafficPolicy")));
            }
            None => {
                let where_ = rule
                    .as_ref()
                    .map(|r| {
                        r.rules
                            .iter()
                            .map(|dr| dr.origin())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_else(|| "no DestinationRule applies to the host".to_owned());
                cx.diags.push(origin.diag(
                    BLACK_HOLE,
                    Level::Error,
                    format!(
                        "subset {:?} of {} is not defined ({where_}): cluster {} refuses all traffic",
                        key.subset,
                        key.host,
                        key.name()
                    ),
                ));
                return black_hole(cx, key);
            }
        }
    }
    let top = rule
        .as_ref()
        .and_then(|r| r.traffic_policy)
        .map(|(tp, dr)| (tp, dr, "spec.trafficPolicy".to_owned()));
    let policy = effective_policy(top.as_ref(), subset_policy.as_ref(), key.port);
    report_unsupported(cx, &policy);

    let mut discovery = discovery(cx, se, key, svc_port, subset_labels.as_ref(), origin);
    let mut lb = lb_policy(cx, &policy);
    if lb == LbPolicy::Passthrough && discovery != Discovery::BlackHole {
        // Istio turns the cluster into ORIGINAL_DST.
        discovery = Discovery::OriginalDestination;
    }
    if discovery == Discovery::OriginalDestination {
        // ORIGINAL_DST clusters balance nothing (Envoy's CLUSTER_PROVIDED).
        lb = LbPolicy::Passthrough;
    }
    let tls = match upstream_tls(cx, &policy, se, &discovery) {
        Ok(t) => t,
        Err(()) => return black_hole(cx, key),
    };
    let Ok(tunnel) = tunnel(cx, &policy) else {
        return black_hole(cx, key);
    };
    let protocol = port_protocol(svc_port);
    let (limits, connect_timeout) = limits(cx, policy.pool.as_ref().map(|(p, _, _)| *p));
    Cluster {
        name: key.name(),
        service: key.host.clone(),
        port: key.port,
        discovery,
        tls,
        connect_timeout,
        lb,
        limits,
        outlier: policy.outlier.as_ref().map(|(o, _, _)| outlier(o)),
        http2: http2(cx, protocol, policy.pool.as_ref().map(|(p, _, _)| *p)),
        addresses: se
            .spec
            .addresses
            .iter()
            .filter_map(|a| super::tcp::parse_subnet(a))
            .collect(),
        tunnel,
    }
}

/// DestinationRule `trafficPolicy.tunnel`: `CONNECT` (the default) through the cluster's
/// endpoints, which are HTTP proxies. `Err` (with a diagnostic) for `POST`, which sluice does
/// not speak: the cluster then refuses traffic rather than send it to the proxy untunnelled.
fn tunnel(cx: &mut Ctx<'_>, p: &Policy<'_>) -> Result<Option<Tunnel>, ()> {
    let Some((t, dr, path)) = &p.tunnel else {
        return Ok(None);
    };
    let protocol = t
        .protocol
        .as_deref()
        .filter(|p| !p.is_empty())
        .unwrap_or("CONNECT");
    let port = u16::try_from(t.target_port).ok().filter(|p| *p > 0);
    match (protocol.eq_ignore_ascii_case("CONNECT"), port) {
        (true, Some(target_port)) if !t.target_host.is_empty() => Ok(Some(Tunnel {
            target_host: t.target_host.to_ascii_lowercase(),
            target_port,
        })),
        (true, _) => Err(()), // validation has said why (targetHost, targetPort)
        (false, _) => {
            cx.report(
                *dr,
                DROPPED,
                Level::Error,
                &format!("{path}.protocol"),
                format!(
                    "tunnelling over HTTP {protocol} is not supported (only CONNECT): the cluster refuses traffic rather than send it to the proxy untunnelled"
                ),
            );
            Err(())
        }
    }
}

/// The diagnostic for a route to a host no visible ServiceEntry registers. For cluster-local
/// names (the egress gateway's service) it says which ServiceEntry to add.
fn unregistered(key: &ClusterKey, origin: &Origin) -> sluice_model::Diagnostic {
    if key
        .host
        .ends_with(&format!(".svc.{}", hosts::DOMAIN_SUFFIX))
    {
        origin.diag(
            MESH_SERVICE_MISSING,
            Level::Error,
            format!(
                "{host} is a Kubernetes service name, and outside Kubernetes only a ServiceEntry registers it: \
                 add one with hosts: [{host}], location: MESH_INTERNAL, resolution: STATIC, \
                 ports: [{{number: {port}, name: tls-{port}, protocol: TLS}}] (HTTP for a plain HTTP port) and \
                 endpoints: [{{address: <the gateway's IP>}}]; until then cluster {name} refuses all traffic",
                host = key.host,
                port = key.port,
                name = key.name()
            ),
        )
    } else {
        origin.diag(
            BLACK_HOLE,
            Level::Error,
            format!(
                "no ServiceEntry visible to this proxy registers {}: cluster {} refuses all traffic \
                 (sluice never resolves an unregistered host)",
                key.host,
                key.name()
            ),
        )
    }
}

/// One part of a traffic policy with the rule and path it was written at.
type Part<'a, T> = Option<(&'a T, &'a Resource<DestinationRule>, String)>;

/// The policy in force for one cluster.
struct Policy<'a> {
    lb: Part<'a, LoadBalancerSettings>,
    pool: Part<'a, ConnectionPoolSettings>,
    outlier: Part<'a, OutlierDetection>,
    tls: Part<'a, ClientTLSSettings>,
    /// Only at the policy's top level (port-level settings have none, as in Istio).
    tunnel: Part<'a, TunnelSettings>,
    /// Whole policies that contributed, for fields reported as not supported.
    sources: Vec<(&'a TrafficPolicy, &'a Resource<DestinationRule>, String)>,
}

/// Istio's `MergeTrafficPolicy(original, subset, port)`: the rule's policy with its
/// port-level settings for `port` applied (a port entry replaces load balancer, connection
/// pool, outlier detection and TLS, unset ones included: "default values will be applied to
/// fields omitted in port-level traffic policies"), then the subset's fields that are set,
/// then the subset's port-level settings the same way.
fn effective_policy<'a>(
    top: Option<&(&'a TrafficPolicy, &'a Resource<DestinationRule>, String)>,
    subset: Option<&(&'a TrafficPolicy, &'a Resource<DestinationRule>, String)>,
    port: u16,
) -> Policy<'a> {
    let mut p = Policy {
        lb: None,
        pool: None,
        outlier: None,
        tls: None,
        tunnel: None,
        sources: Vec::new(),
    };
    for layer in [top, subset].into_iter().flatten() {
        let (tp, dr, path) = layer;
        p.sources.push((tp, dr, path.clone()));
        let at = |field: &str| format!("{path}.{field}");
        if let Some(x) = &tp.load_balancer {
            p.lb = Some((x, dr, at("loadBalancer")));
        }
        if let Some(x) = &tp.connection_pool {
            p.pool = Some((x, dr, at("connectionPool")));
        }
        if let Some(x) = &tp.outlier_detection {
            p.outlier = Some((x, dr, at("outlierDetection")));
        }
        if let Some(x) = &tp.tls {
            p.tls = Some((x, dr, at("tls")));
        }
        if let Some(x) = &tp.tunnel {
            p.tunnel = Some((x, dr, at("tunnel")));
        }
        if let Some((i, pl)) = tp
            .port_level_settings
            .iter()
            .enumerate()
            .find(|(_, s)| s.port.is_some_and(|s| s.number == u32::from(port)))
        {
            let at = |field: &str| format!("{path}.portLevelSettings[{i}].{field}");
            p.lb = pl
                .load_balancer
                .as_ref()
                .map(|x| (x, *dr, at("loadBalancer")));
            p.pool = pl
                .connection_pool
                .as_ref()
                .map(|x| (x, *dr, at("connectionPool")));
            p.outlier = pl
                .outlier_detection
                .as_ref()
                .map(|x| (x, *dr, at("outlierDetection")));
            p.tls = pl.tls.as_ref().map(|x| (x, *dr, at("tls")));
        }
    }
    p
}

/// Reports the policy fields that are set but not lowered.
fn report_unsupported(cx: &mut Ctx<'_>, p: &Policy<'_>) {
    for (tp, dr, path) in &p.sources {
        for (set, field, what) in [
            (
                tp.proxy_protocol.is_some(),
                "proxyProtocol",
                "sending a PROXY protocol header",
            ),
            (tp.retry_budget.is_some(), "retryBudget", "a retry budget"),
        ] {
            if set {
                cx.unsupported(*dr, &format!("{path}.{field}"), what);
            }
        }
    }
    if let Some((lb, dr, path)) = &p.lb {
        for (set, field, what) in [
            (
                lb.locality_lb_setting.is_some(),
                "localityLbSetting",
                "locality load balancing",
            ),
            (
                lb.warmup.is_some() || lb.warmup_duration_secs.is_some(),
                "warmup",
                "slow start of new endpoints",
            ),
        ] {
            if set {
                cx.unsupported(*dr, &format!("{path}.{field}"), what);
            }
        }
    }
    if let Some((pool, dr, path)) = &p.pool
        && let Some(h) = &pool.http
    {
        for (set, field, what) in [
            (
                h.use_client_protocol.is_some(),
                "http.useClientProtocol",
                "using the client's HTTP version upstream",
            ),
            (
                h.max_concurrent_streams.is_some(),
                "http.maxConcurrentStreams",
                "a limit of concurrent HTTP/2 streams",
            ),
        ] {
            if set {
                cx.unsupported(*dr, &format!("{path}.{field}"), what);
            }
        }
    }
    if let Some((o, dr, path)) = &p.outlier {
        for (set, field, what) in [
            (
                o.consecutive_errors.is_some(),
                "consecutiveErrors",
                "the deprecated consecutiveErrors (Istio ignores it too; use consecutive5xxErrors)",
            ),
            (
                o.consecutive_local_origin_failures.is_some()
                    && o.split_external_local_origin_errors != Some(true),
                "consecutiveLocalOriginFailures",
                "consecutiveLocalOriginFailures without splitExternalLocalOriginErrors (Envoy \
                 ignores it then too)",
            ),
        ] {
            if set {
                cx.unsupported(*dr, &format!("{path}.{field}"), what);
            }
        }
    }
    if let Some((t, dr, path)) = &p.tls
        && t.ca_crl.is_some()
    {
        cx.report(
            *dr,
            NOT_SUPPORTED,
            Level::Warning,
            &format!("{path}.caCrl"),
            "a certificate revocation list is not supported yet: revoked server certificates are not refused",
        );
    }
}

/// Where endpoints come from (ServiceEntry `resolution`).
fn discovery(
    cx: &mut Ctx<'_>,
    se: &Resource<ServiceEntry>,
    key: &ClusterKey,
    svc_port: &ServicePort,
    subset_labels: Option<&BTreeMap<String, String>>,
    origin: &Origin,
) -> Discovery {
    let wildcard = hosts::is_wildcard(&key.host);
    if se.spec.workload_selector.is_some() {
        cx.unsupported(
            se,
            "spec.workloadSelector",
            "selecting WorkloadEntries and pods as endpoints",
        );
    }
    match se.spec.resolution() {
        Resolution::Static => Discovery::Static {
            endpoints: endpoints(cx, se, key, svc_port, subset_labels),
        },
        Resolution::Dns | Resolution::DnsRoundRobin if !se.spec.endpoints.is_empty() => {
            Discovery::Static {
                // The proxy resolves endpoint names like DNS.
                endpoints: endpoints(cx, se, key, svc_port, subset_labels),
            }
        }
        r @ (Resolution::Dns | Resolution::DnsRoundRobin) => {
            if wildcard {
                cx.diags.push(origin.diag(
                    BLACK_HOLE,
                    Level::Error,
                    format!(
                        "{} resolves the wildcard host {} by DNS without endpoints: there is no name to resolve, \
                         so cluster {} refuses all traffic (use DYNAMIC_DNS)",
                        se.origin(),
                        key.host,
                        key.name()
                    ),
                ));
                return Discovery::BlackHole;
            }
            if subset_labels.is_some_and(|l| !l.is_empty()) {
                cx.report(
                    se,
                    ADJUSTED,
                    Level::Info,
                    "spec.resolution",
                    format!(
                        "subset {:?} selects endpoints by label, but {} has no endpoints: every address {} resolves to is used",
                        key.subset, key.host, key.host
                    ),
                );
            }
            match svc_port.target_port.filter(|t| *t != svc_port.number) {
                Some(target) => match u16::try_from(target) {
                    Ok(port) => Discovery::Static {
                        endpoints: vec![Endpoint {
                            address: key.host.clone(),
                            port,
                            labels: BTreeMap::new(),
                            weight: 1,
                        }],
                    },
                    Err(_) => Discovery::BlackHole,
                },
                None => Discovery::Dns {
                    host: key.host.clone(),
                    round_robin: r == Resolution::DnsRoundRobin,
                },
            }
        }
        Resolution::DynamicDns => Discovery::DynamicDns,
        // sluice's extension: at the gateway, the original destination of a connection is the
        // gateway itself, so a wildcard host without resolution is resolved from the request's
        // Host or the connection's SNI, like DYNAMIC_DNS.
        Resolution::None if wildcard && cx.role() == Role::Gateway => Discovery::DynamicDns,
        Resolution::None => Discovery::OriginalDestination,
    }
}

/// Static endpoints of a ServiceEntry for one port, filtered by the subset's labels: port from
/// the endpoint's `ports[<service port name>]`, else the service port's `targetPort`, else its
/// number; weight 1 unless set.
fn endpoints(
    cx: &mut Ctx<'_>,
    se: &Resource<ServiceEntry>,
    key: &ClusterKey,
    svc_port: &ServicePort,
    subset_labels: Option<&BTreeMap<String, String>>,
) -> Vec<Endpoint> {
    let fallback = svc_port.target_port.unwrap_or(svc_port.number);
    let mut out = Vec::new();
    for (i, ep) in se.spec.endpoints.iter().enumerate() {
        let path = format!("spec.endpoints[{i}]");
        if ep.locality.is_some() || ep.network.is_some() {
            cx.unsupported(se, &path, "endpoint locality and network");
        }
        if let Some(sel) = subset_labels
            && !sel.iter().all(|(k, v)| ep.labels.get(k) == Some(v))
        {
            continue;
        }
        let Some(address) = ep.address.clone().filter(|a| !a.is_empty()) else {
            cx.report(
                se,
                DROPPED,
                Level::Warning,
                &path,
                "endpoint without an address: left out",
            );
            continue;
        };
        let Ok(port) = u16::try_from(ep.port_for(&svc_port.name, fallback)) else {
            cx.report(
                se,
                DROPPED,
                Level::Error,
                &format!("{path}.ports"),
                "endpoint port is not a TCP port: left out",
            );
            continue;
        };
        out.push(Endpoint {
            address,
            port,
            labels: ep.labels.clone(),
            weight: ep.weight.filter(|w| *w > 0).unwrap_or(1),
        });
    }
    if out.is_empty() {
        let why = if key.subset.is_empty() {
            "no endpoints".to_owned()
        } else {
            format!("no endpoint carries the labels of subset {:?}", key.subset)
        };
        cx.report(
            se,
            DROPPED,
            Level::Warning,
            "spec.endpoints",
            format!("{}: {why}, so every connection fails (503 UH)", key.name()),
        );
    }
    out
}

/// `loadBalancer.simple` (LEAST_REQUEST by default, LEAST_CONN its old name), or
/// `consistentHash`.
fn lb_policy(cx: &mut Ctx<'_>, p: &Policy<'_>) -> LbPolicy {
    if let Some((lb, dr, path)) = &p.lb
        && let Some(ch) = &lb.consistent_hash
    {
        return consistent_hash(cx, ch, dr, &format!("{path}.consistentHash"));
    }
    match p.lb.as_ref().and_then(|(lb, _, _)| lb.simple) {
        Some(SimpleLB::Random) => LbPolicy::Random,
        Some(SimpleLB::RoundRobin) => LbPolicy::RoundRobin,
        Some(SimpleLB::Passthrough) => LbPolicy::Passthrough,
        Some(SimpleLB::Unspecified | SimpleLB::LeastConn | SimpleLB::LeastRequest) | None => {
            LbPolicy::LeastRequest
        }
    }
}

/// Istio's ring hash default (Envoy's `minimum_ring_size`).
const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// Envoy's Maglev default table size (a prime).
const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;

/// `consistentHash`, as Istio's `applyLoadBalancer` (the algorithm: `maglev`, else `ringHash`,
/// else a ring of the deprecated `minimumRingSize` or 1024) and `consistentHashToHashPolicy`
/// (the key) build it. A Maglev `tableSize` that is not a prime is validation's error; unset,
/// it is Envoy's 65537.
fn consistent_hash(
    cx: &mut Ctx<'_>,
    ch: &ConsistentHashLB,
    dr: &Resource<DestinationRule>,
    path: &str,
) -> LbPolicy {
    let mut keys: Vec<(&str, HashKey)> = Vec::new();
    if let Some(name) = ch.http_header_name.as_ref().filter(|n| !n.is_empty()) {
        keys.push((
            "httpHeaderName",
            HashKey::Header {
                name: name.to_ascii_lowercase(),
            },
        ));
    }
    if let Some(c) = &ch.http_cookie {
        keys.push((
            "httpCookie",
            HashKey::Cookie {
                name: c.name.clone(),
                path: c.path.clone().unwrap_or_default(),
                ttl: c.ttl.map(|d| d.as_std()),
                attributes: c
                    .attributes
                    .iter()
                    .map(|a| CookieAttribute {
                        name: a.name.clone(),
                        value: a.value.clone().unwrap_or_default(),
                    })
                    .collect(),
            },
        ));
    }
    // `useSourceIp: false` is Envoy's `source_ip: false`: no hash.
    if ch.use_source_ip == Some(true) {
        keys.push(("useSourceIp", HashKey::SourceIp));
    }
    if let Some(name) = ch
        .http_query_parameter_name
        .as_ref()
        .filter(|n| !n.is_empty())
    {
        keys.push((
            "httpQueryParameterName",
            HashKey::QueryParameter { name: name.clone() },
        ));
    }
    if keys.len() > 1 {
        let names: Vec<&str> = keys.iter().map(|(n, _)| *n).collect();
        cx.report(
            dr,
            ADJUSTED,
            Level::Warning,
            path,
            format!(
                "the hash key is one of httpHeaderName, httpCookie, useSourceIp and httpQueryParameterName, \
                 and {} are set: {} is used",
                names.join(", "),
                names[0]
            ),
        );
    } else if keys.is_empty() {
        cx.report(
            dr,
            ADJUSTED,
            Level::Warning,
            path,
            "no hash key (httpHeaderName, httpCookie, useSourceIp: true, httpQueryParameterName): \
             each request goes to a random endpoint, as in Envoy",
        );
    }
    let algorithm = if let Some(m) = &ch.maglev {
        HashAlgorithm::Maglev {
            table_size: m
                .table_size
                .filter(|n| *n > 0)
                .unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE),
        }
    } else {
        let size = match &ch.ring_hash {
            Some(r) => r.minimum_ring_size,
            None => ch.minimum_ring_size,
        };
        HashAlgorithm::RingHash {
            min_ring_size: size.filter(|n| *n > 0).unwrap_or(DEFAULT_MIN_RING_SIZE),
        }
    };
    LbPolicy::ConsistentHash {
        key: keys.into_iter().next().map(|(_, k)| k),
        algorithm,
    }
}

/// Upstream TLS (DestinationRule `tls`). `Err` (with a diagnostic) when the TLS cannot be set
/// up as written: the cluster then refuses traffic rather than send it in the clear.
fn upstream_tls(
    cx: &mut Ctx<'_>,
    p: &Policy<'_>,
    se: &Resource<ServiceEntry>,
    discovery: &Discovery,
) -> Result<Option<UpstreamTls>, ()> {
    let Some((t, dr, path)) = &p.tls else {
        return Ok(auto_mtls(cx, se, discovery));
    };
    let sans = |extra: Vec<String>| -> Vec<String> {
        if t.subject_alt_names.is_empty() {
            let mut v = se.spec.subject_alt_names.clone();
            v.extend(extra);
            v
        } else {
            t.subject_alt_names.clone()
        }
    };
    let mode = match t.mode() {
        ClientTLSMode::Disable => return Ok(None),
        ClientTLSMode::IstioMutual => {
            return Ok(Some(UpstreamTls {
                mode: UpstreamTlsMode::IstioMutual,
                sni: t.sni.clone().filter(|s| !s.is_empty()),
                trust: Trust::Mesh,
                client_certificate: None,
                private_key: None,
                subject_alt_names: sans(service_account_sans(cx, se)),
                alpn: Vec::new(),
            }));
        }
        ClientTLSMode::Simple => UpstreamTlsMode::Simple,
        ClientTLSMode::Mutual => UpstreamTlsMode::Mutual,
    };
    let (cert, key, ca) = if let Some(name) = &t.credential_name {
        let files = match super::credential::lookup(cx, name) {
            Ok(f) => f,
            Err(why) => {
                cx.report(
                    *dr,
                    DROPPED,
                    Level::Error,
                    &format!("{path}.credentialName"),
                    format!("{why}: the cluster refuses traffic rather than send it without TLS"),
                );
                return Err(());
            }
        };
        if mode == UpstreamTlsMode::Mutual {
            (files.cert, files.key, files.ca)
        } else {
            (None, None, files.ca)
        }
    } else {
        (
            t.client_certificate.as_ref().map(PathBuf::from),
            t.private_key.as_ref().map(PathBuf::from),
            t.ca_certificates
                .as_ref()
                .filter(|c| !c.is_empty())
                .map(PathBuf::from),
        )
    };
    if mode == UpstreamTlsMode::Mutual && (cert.is_none() || key.is_none()) {
        cx.report(
            *dr,
            DROPPED,
            Level::Error,
            path,
            "MUTUAL needs clientCertificate and privateKey (or credentialName): the cluster refuses traffic rather than connect without them",
        );
        return Err(());
    }
    let trust = if t.insecure_skip_verify == Some(true) {
        Trust::SkipVerify
    } else {
        ca.map_or(Trust::Platform, Trust::File)
    };
    Ok(Some(UpstreamTls {
        mode,
        sni: t.sni.clone().filter(|s| !s.is_empty()),
        trust,
        client_certificate: cert,
        private_key: key,
        subject_alt_names: sans(Vec::new()),
        alpn: Vec::new(),
    }))
}

/// Istio's auto mTLS at a sidecar: to a MESH_INTERNAL service whose endpoints all carry
/// `security.istio.io/tlsMode: istio`, without a DestinationRule `tls`, send ISTIO_MUTUAL.
fn auto_mtls(
    cx: &Ctx<'_>,
    se: &Resource<ServiceEntry>,
    discovery: &Discovery,
) -> Option<UpstreamTls> {
    if cx.role() != Role::Sidecar
        || cx.mesh.enable_auto_mtls == Some(false)
        || se.spec.location() != Location::MeshInternal
    {
        return None;
    }
    let Discovery::Static { endpoints } = discovery else {
        return None;
    };
    let all_istio = !endpoints.is_empty()
        && endpoints.iter().all(|e| {
            e.labels
                .get("security.istio.io/tlsMode")
                .map(String::as_str)
                == Some("istio")
        });
    all_istio.then(|| {
        let mut sans = se.spec.subject_alt_names.clone();
        sans.extend(service_account_sans(cx, se));
        UpstreamTls {
            mode: UpstreamTlsMode::IstioMutual,
            sni: None,
            trust: Trust::Mesh,
            client_certificate: None,
            private_key: None,
            subject_alt_names: sans,
            alpn: Vec::new(),
        }
    })
}

/// `spiffe://<trust domain>/ns/<ns>/sa/<sa>` for the endpoints' service accounts (Istio checks
/// the server's identity against these in ISTIO_MUTUAL).
fn service_account_sans(cx: &Ctx<'_>, se: &Resource<ServiceEntry>) -> Vec<String> {
    let mut out: Vec<String> = se
        .spec
        .endpoints
        .iter()
        .filter_map(|e| e.service_account.as_ref())
        .map(|sa| {
            format!(
                "spiffe://{}/ns/{}/sa/{sa}",
                cx.trust_domain(),
                se.namespace()
            )
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Circuit-breaker limits and connect timeout (`applyConnectionPool`: zero means unset).
fn limits(cx: &Ctx<'_>, pool: Option<&ConnectionPoolSettings>) -> (Limits, Duration) {
    let mut out = Limits::default();
    let mut timeout = connect_timeout_default(cx);
    let positive = |v: Option<i32>| v.filter(|v| *v > 0).and_then(|v| u32::try_from(v).ok());
    let Some(pool) = pool else {
        return (out, timeout);
    };
    if let Some(h) = &pool.http {
        out.max_pending_requests = positive(h.http1_max_pending_requests);
        out.max_requests = positive(h.http2_max_requests);
        out.max_requests_per_connection = positive(h.max_requests_per_connection);
        out.max_retries = positive(h.max_retries);
        out.idle_timeout = h.idle_timeout.map(|d| d.as_std());
    }
    if let Some(t) = &pool.tcp {
        out.max_connections = positive(t.max_connections);
        out.max_connection_duration = t
            .max_connection_duration
            .map(|d| d.as_std())
            .filter(|d| !d.is_zero());
        out.tcp_keepalive = t.tcp_keepalive.as_ref().map(|k| TcpKeepalive {
            probes: k.probes.filter(|n| *n > 0),
            time: k.time.map(|d| d.as_std()).filter(|d| !d.is_zero()),
            interval: k.interval.map(|d| d.as_std()).filter(|d| !d.is_zero()),
        });
        if let Some(d) = t.connect_timeout {
            timeout = d.as_std();
        }
        if out.idle_timeout.is_none() {
            out.idle_timeout = t.idle_timeout.map(|d| d.as_std());
        }
    }
    (out, timeout)
}

/// `applyOutlierDetection` with Envoy's defaults: 5 consecutive 5xx, every 10s, 30s base
/// ejection, at most 10% ejected; `minHealthPercent` is the panic threshold.
fn outlier(o: &OutlierDetection) -> Outlier {
    Outlier {
        consecutive_5xx: o.consecutive_5xx_errors.unwrap_or(5),
        consecutive_gateway_errors: o.consecutive_gateway_errors,
        interval: o.interval.map_or(Duration::from_secs(10), |d| d.as_std()),
        base_ejection_time: o
            .base_ejection_time
            .map_or(Duration::from_secs(30), |d| d.as_std()),
        max_ejection_percent: o
            .max_ejection_percent
            .filter(|p| *p > 0)
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(10),
        min_health_percent: o
            .min_health_percent
            .filter(|p| *p > 0)
            .and_then(|p| u32::try_from(p).ok()),
        // Envoy's default `consecutive_local_origin_failure` is 5.
        local_origin_failures: (o.split_external_local_origin_errors == Some(true))
            .then(|| o.consecutive_local_origin_failures.unwrap_or(5)),
    }
}

/// The port's protocol: as declared, else from its name's prefix (Istio's convention).
pub fn port_protocol(p: &ServicePort) -> Option<Protocol> {
    p.protocol.or_else(|| {
        let prefix = p.name.split('-').next().unwrap_or_default();
        Protocol::parse(prefix)
    })
}

/// Istio's `shouldH2Upgrade`, plus HTTP/2 for HTTP2 and gRPC ports: the DestinationRule's
/// UPGRADE/DO_NOT_UPGRADE wins, else the mesh's policy for HTTP ports.
fn http2(cx: &Ctx<'_>, protocol: Option<Protocol>, pool: Option<&ConnectionPoolSettings>) -> bool {
    if matches!(
        protocol,
        Some(Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb)
    ) {
        return true;
    }
    match pool
        .and_then(|p| p.http.as_ref())
        .and_then(|h| h.h2_upgrade_policy)
    {
        Some(H2UpgradePolicy::Upgrade) => true,
        Some(H2UpgradePolicy::DoNotUpgrade) => false,
        Some(H2UpgradePolicy::Default) | None => {
            protocol.is_some_and(Protocol::is_http)
                && cx.mesh.h2_upgrade_policy == Some(sluice_model::mesh::H2UpgradePolicy::Upgrade)
        }
    }
}

#[cfg(test)]
mod tests;
