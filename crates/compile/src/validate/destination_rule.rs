//! DestinationRule validation (Istio's `ValidateDestinationRule`, `validateTrafficPolicy` and
//! the helpers they call). Connection-pool and locality rules are shared with Sidecar and mesh
//! config validation.

use std::collections::{BTreeMap, BTreeSet};

use sluice_model::networking::DestinationRule;
use sluice_model::networking::destination_rule::{
    ClientTLSMode, ClientTLSSettings, ConnectionPoolSettings, H2UpgradePolicy,
    LoadBalancerSettings, LocalityLoadBalancerSetting, OutlierDetection, PortTrafficPolicy,
    TrafficPolicy, TunnelSettings,
};
use sluice_model::values::Duration;

use super::Report;
use super::rules::{self, ExportToOwner};

pub(crate) fn validate(r: &mut Report<'_, DestinationRule>) {
    let dr = &r.resource().spec;
    let namespace = r.resource().namespace().to_owned();

    if let Err(e) = rules::check_wildcard_domain(&dr.host) {
        r.error("spec.host", e);
    }
    if let Some(tp) = &dr.traffic_policy {
        check_traffic_policy(r, "spec.trafficPolicy", tp);
    }

    let mut names = BTreeSet::new();
    for (i, subset) in dr.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        if !names.insert(subset.name.as_str()) {
            r.error(
                &format!("{path}.name"),
                format!("duplicate subset names: {}", subset.name),
            );
        }
        if let Err(e) = check_subset_name(&subset.name) {
            r.error(&format!("{path}.name"), e);
        }
        for e in rules::label_errors(&subset.labels) {
            r.error(&format!("{path}.labels"), e);
        }
        if let Some(tp) = &subset.traffic_policy {
            check_traffic_policy(r, &format!("{path}.trafficPolicy"), tp);
        }
    }

    let owner = if dr.workload_selector.is_some() {
        ExportToOwner::DestinationRuleWithSelector
    } else {
        ExportToOwner::Other
    };
    for e in rules::export_to_errors(&namespace, &dr.export_to, owner) {
        r.error("spec.exportTo", e);
    }

    if let Some(sel) = &dr.workload_selector {
        for e in rules::workload_selector_errors(&sel.match_labels) {
            r.error("spec.workloadSelector.matchLabels", e);
        }
        if sel.match_labels.is_empty() {
            r.warning("spec.workloadSelector", rules::SELECTOR_WITHOUT_LABELS);
        }
    }
}

/// Istio's `validateSubsetName`: a DNS label.
pub(crate) fn check_subset_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("subset name cannot be empty".into());
    }
    if !rules::is_dns1123_label(name) {
        return Err(format!("subset name is invalid: {name}"));
    }
    Ok(())
}

fn check_duration_at<T>(r: &mut Report<'_, T>, path: &str, d: Option<Duration>) {
    if let Some(d) = d
        && let Err(e) = rules::check_duration(d)
    {
        r.error(path, e);
    }
}

fn check_traffic_policy(r: &mut Report<'_, DestinationRule>, path: &str, tp: &TrafficPolicy) {
    if tp.outlier_detection.is_none()
        && tp.connection_pool.is_none()
        && tp.load_balancer.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none()
    {
        r.error(path, "traffic policy must have at least one field");
        return;
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        r.error(path, "tunnel and proxyProtocol must not be set together");
        return;
    }
    let field = |f: &str| format!("{path}.{f}");
    if let Some(o) = &tp.outlier_detection {
        check_outlier_detection(r, &field("outlierDetection"), o);
    }
    if let Some(p) = &tp.connection_pool {
        check_connection_pool(r, &field("connectionPool"), p);
    }
    if let Some(lb) = &tp.load_balancer {
        check_load_balancer(
            r,
            &field("loadBalancer"),
            lb,
            tp.outlier_detection.is_some(),
        );
    }
    if let Some(tls) = &tp.tls {
        check_client_tls(r, &field("tls"), tls);
    }
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        check_port_traffic_policy(r, &format!("{path}.portLevelSettings[{i}]"), p);
    }
    if let Some(t) = &tp.tunnel {
        check_tunnel(r, &field("tunnel"), t);
    }
    // proxyProtocol.version is an enum of the two valid versions: nothing left to check.
}

fn check_port_traffic_policy(
    r: &mut Report<'_, DestinationRule>,
    path: &str,
    p: &PortTrafficPolicy,
) {
    if p.port.is_none() {
        r.error(path, "portTrafficPolicy must have valid port");
    }
    if p.outlier_detection.is_none()
        && p.connection_pool.is_none()
        && p.load_balancer.is_none()
        && p.tls.is_none()
    {
        r.error(path, "port traffic policy must have at least one field");
        return;
    }
    if let Some(o) = &p.outlier_detection {
        check_outlier_detection(r, &format!("{path}.outlierDetection"), o);
    }
    if let Some(c) = &p.connection_pool {
        check_connection_pool(r, &format!("{path}.connectionPool"), c);
    }
    if let Some(lb) = &p.load_balancer {
        check_load_balancer(
            r,
            &format!("{path}.loadBalancer"),
            lb,
            p.outlier_detection.is_some(),
        );
    }
    if let Some(tls) = &p.tls {
        check_client_tls(r, &format!("{path}.tls"), tls);
    }
}

fn check_tunnel(r: &mut Report<'_, DestinationRule>, path: &str, t: &TunnelSettings) {
    if let Some(p) = t.protocol.as_deref()
        && !p.is_empty()
        && p != "CONNECT"
        && p != "POST"
    {
        r.error(
            &format!("{path}.protocol"),
            "tunnel protocol must be \"CONNECT\" or \"POST\"",
        );
    }
    if let (Err(fqdn), Err(ip)) = (
        rules::check_fqdn(&t.target_host),
        rules::check_ip(&t.target_host),
    ) {
        r.error(
            &format!("{path}.targetHost"),
            format!("tunnel target host must be valid FQDN or IP address: {fqdn}; {ip}"),
        );
    }
    if let Err(e) = rules::check_port(i64::from(t.target_port)) {
        r.error(
            &format!("{path}.targetPort"),
            format!("tunnel target port is invalid: {e}"),
        );
    }
}

fn check_outlier_detection(r: &mut Report<'_, DestinationRule>, path: &str, o: &OutlierDetection) {
    let field = |f: &str| format!("{path}.{f}");
    check_duration_at(r, &field("baseEjectionTime"), o.base_ejection_time);
    if o.consecutive_errors.is_some_and(|n| n != 0) {
        r.warning(
            &field("consecutiveErrors"),
            "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or \
             consecutive5xxErrors instead",
        );
    }
    if o.split_external_local_origin_errors != Some(true)
        && o.consecutive_local_origin_failures.is_some_and(|n| n > 0)
    {
        r.error(
            &field("consecutiveLocalOriginFailures"),
            "outlier detection consecutive local origin failures is specified, but split external \
             local origin errors is set to false",
        );
    }
    check_duration_at(r, &field("interval"), o.interval);
    for (name, value) in [
        ("maxEjectionPercent", o.max_ejection_percent),
        ("minHealthPercent", o.min_health_percent),
    ] {
        if let Err(e) = rules::check_percent(i64::from(value.unwrap_or(0))) {
            r.error(&field(name), e);
        }
    }
}

/// Istio's `validateConnectionPool` (DestinationRule traffic policies and Sidecar inbound
/// pools).
pub(crate) fn check_connection_pool<T>(
    r: &mut Report<'_, T>,
    path: &str,
    pool: &ConnectionPoolSettings,
) {
    if pool.http.is_none() && pool.tcp.is_none() {
        r.error(path, "connection pool must have at least one field");
        return;
    }
    if let Some(http) = &pool.http {
        let field = |f: &str| format!("{path}.http.{f}");
        let negative = [
            (
                "http1MaxPendingRequests",
                http.http1_max_pending_requests,
                "http1 max pending requests must be non-negative",
            ),
            (
                "http2MaxRequests",
                http.http2_max_requests,
                "http2 max requests must be non-negative",
            ),
            (
                "maxRequestsPerConnection",
                http.max_requests_per_connection,
                "max requests per connection must be non-negative",
            ),
            (
                "maxRetries",
                http.max_retries,
                "max retries must be non-negative",
            ),
        ];
        for (name, value, msg) in negative {
            if value.is_some_and(|v| v < 0) {
                r.error(&field(name), msg);
            }
        }
        check_duration_at(r, &field("idleTimeout"), http.idle_timeout);
        if http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade)
            && http.use_client_protocol == Some(true)
        {
            r.error(
                &field("useClientProtocol"),
                "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
            );
        }
        if http.max_concurrent_streams.is_some_and(|v| v < 0) {
            r.error(
                &field("maxConcurrentStreams"),
                "max concurrent streams must be non-negative",
            );
        }
    }
    if let Some(tcp) = &pool.tcp {
        let field = |f: &str| format!("{path}.tcp.{f}");
        if tcp.max_connections.is_some_and(|v| v < 0) {
            r.error(
                &field("maxConnections"),
                "max connections must be non-negative",
            );
        }
        check_duration_at(r, &field("connectTimeout"), tcp.connect_timeout);
        check_duration_at(
            r,
            &field("maxConnectionDuration"),
            tcp.max_connection_duration,
        );
        check_duration_at(r, &field("idleTimeout"), tcp.idle_timeout);
        if let Some(ka) = &tcp.tcp_keepalive {
            check_duration_at(r, &field("tcpKeepalive.time"), ka.time);
            check_duration_at(r, &field("tcpKeepalive.interval"), ka.interval);
        }
    }
}

/// Envoy's primality test for Maglev table sizes (Istio copies it).
fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x & 1 == 0 {
        return false;
    }
    let mut factor = 3u64;
    while factor.saturating_mul(factor) <= x {
        if x.is_multiple_of(factor) {
            return false;
        }
        factor += 2;
    }
    true
}

fn check_load_balancer(
    r: &mut Report<'_, DestinationRule>,
    path: &str,
    lb: &LoadBalancerSettings,
    has_outlier: bool,
) {
    if let Some(ch) = &lb.consistent_hash {
        let field = |f: &str| format!("{path}.consistentHash.{f}");
        if ch.http_cookie.as_ref().is_some_and(|c| c.name.is_empty()) {
            r.error(&field("httpCookie.name"), "name required for HttpCookie");
        }
        let min_ring = ch.minimum_ring_size.is_some_and(|n| n != 0);
        if min_ring {
            r.warning(
                &field("minimumRingSize"),
                "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash \
                 configuration instead",
            );
            if ch.ring_hash.is_some() || ch.maglev.is_some() {
                r.error(
                    &field("minimumRingSize"),
                    "only one of MinimumRingSize or Maglev/Ringhash can be specified",
                );
            }
        }
        if let Some(ml) = &ch.maglev {
            let size = ml.table_size.unwrap_or(0);
            let p = field("maglev.tableSize");
            if size == 0 {
                r.error(&p, "tableSize must be set for maglev");
            }
            if size >= 5_000_011 {
                r.error(&p, "tableSize must be less than 5000011 for maglev");
            }
            if !is_prime(size) {
                r.error(&p, "tableSize must be a prime number for maglev");
            }
        }
    }
    if let Some(loc) = &lb.locality_lb_setting {
        let (errors, warnings) = locality_lb_findings(loc, has_outlier);
        let p = format!("{path}.localityLbSetting");
        for e in errors {
            r.error(&p, e);
        }
        for w in warnings {
            r.warning(&p, w);
        }
    }
    check_duration_at(
        r,
        &format!("{path}.warmupDurationSecs"),
        lb.warmup_duration_secs,
    );
    // The CRD's own bounds (the API server rejects these before the webhook runs).
    if let Some(w) = &lb.warmup {
        if w.minimum_percent
            .is_some_and(|p| !(0.0..=100.0).contains(&p))
        {
            r.error(
                &format!("{path}.warmup.minimumPercent"),
                "warmup.minimumPercent must be between 0 and 100",
            );
        }
        if w.aggression.is_some_and(|a| a < 1.0) {
            r.error(
                &format!("{path}.warmup.aggression"),
                "warmup.aggression must be greater than or equal to 1",
            );
        }
    }
}

const TOPOLOGY_REGION: &str = "topology.kubernetes.io/region";
const TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";
const TOPOLOGY_SUBZONE: &str = "topology.istio.io/subzone";

/// Istio's `ValidateLocalityLbSetting`: errors and warnings about a locality load-balancing
/// setting (`distribute` weights, `failover` regions, `failoverPriority` labels). `has_outlier`
/// tells whether outlier detection is configured alongside (failover needs it).
pub(crate) fn locality_lb_findings(
    lb: &LocalityLoadBalancerSetting,
    has_outlier: bool,
) -> (Vec<String>, Vec<String>) {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    if !lb.distribute.is_empty() && !lb.failover.is_empty() {
        errors.push("can not simultaneously specify 'distribute' and 'failover'".into());
        return (errors, warnings);
    }
    if !lb.failover.is_empty()
        && let Some(label) = lb.failover_priority.iter().find(|l| {
            matches!(
                l.as_str(),
                TOPOLOGY_REGION | TOPOLOGY_ZONE | TOPOLOGY_SUBZONE
            )
        })
    {
        errors.push(format!(
                "can not simultaneously set 'failover' and topology label '{label}' in 'failover_priority'"
            ));
        return (errors, warnings);
    }

    let mut sources = Vec::new();
    for d in &lb.distribute {
        sources.push(d.from.clone().unwrap_or_default());
        let mut total: u64 = 0;
        for weight in d.to.values() {
            if *weight == 0 || *weight > 100 {
                errors.push("locality weight must be in range [1, 100]".into());
                return (errors, warnings);
            }
            total += u64::from(*weight);
        }
        if total != 100 {
            errors.push(format!("total locality weight {total} != 100"));
            return (errors, warnings);
        }
        let destinations: Vec<String> = d.to.keys().cloned().collect();
        errors.extend(check_localities(&destinations).err());
    }
    errors.extend(check_localities(&sources).err());

    if (!lb.failover.is_empty() || !lb.failover_priority.is_empty()) && !has_outlier {
        warnings.push("outlier detection policy must be provided for failover".into());
    }
    for f in &lb.failover {
        let from = f.from.as_deref().unwrap_or_default();
        let to = f.to.as_deref().unwrap_or_default();
        if from == to {
            errors.push("locality lb failover settings must specify different regions".into());
        }
        if from.contains('/') || to.contains('/') {
            errors.push("locality lb failover only specify region".into());
        }
        if from.contains('*') || to.contains('*') {
            errors.push("locality lb failover region should not contain '*' wildcard".into());
        }
    }
    (errors, warnings)
}

/// Istio's `validateLocalities`: `region[/zone[/subzone]]` with at most one trailing `*`,
/// and no locality covered by an earlier one.
fn check_localities(localities: &[String]) -> Result<(), String> {
    // region -> zone -> subzones; "*" marks "everything below".
    let mut seen: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let star = || "*".to_owned();
    for locality in localities {
        let stars = locality.matches('*').count();
        if stars > 1 || (stars == 1 && !locality.ends_with('*')) {
            return Err(format!(
                "locality {locality} wildcard '*' number can not exceed 1 and must be in the end"
            ));
        }
        let overlap = || format!("locality {locality} overlap with previous specified ones");
        if seen.contains_key("*") {
            return Err(overlap());
        }
        let items: Vec<&str> = locality.splitn(3, '/').collect();
        if items.iter().any(|i| i.is_empty()) {
            return Err(format!(
                "locality {locality} must not contain empty region/zone/subzone info"
            ));
        }
        match items.as_slice() {
            [region] => {
                if seen.contains_key(*region) {
                    return Err(overlap());
                }
                seen.insert(
                    (*region).to_owned(),
                    BTreeMap::from([(star(), BTreeSet::from([star()]))]),
                );
            }
            [region, zone] => {
                let zones = seen.entry((*region).to_owned()).or_default();
                if zones.contains_key("*") || zones.contains_key(*zone) {
                    return Err(overlap());
                }
                zones.insert((*zone).to_owned(), BTreeSet::from([star()]));
            }
            [region, zone, subzone, ..] => {
                let zones = seen.entry((*region).to_owned()).or_default();
                if zones.contains_key("*") {
                    return Err(overlap());
                }
                let subzones = zones.entry((*zone).to_owned()).or_default();
                if subzones.contains("*") || subzones.contains(*subzone) {
                    return Err(overlap());
                }
                subzones.insert((*subzone).to_owned());
            }
            [] => {}
        }
    }
    Ok(())
}

/// Istio's `ValidateTLS` for client-side (upstream) TLS settings.
fn check_client_tls(r: &mut Report<'_, DestinationRule>, path: &str, tls: &ClientTLSSettings) {
    let set = |f: &Option<String>| f.as_deref().is_some_and(|s| !s.is_empty());
    let mode = tls.mode();
    if tls.insecure_skip_verify == Some(true) {
        if mode == ClientTLSMode::Simple
            && (set(&tls.ca_certificates)
                || set(&tls.credential_name)
                || !tls.subject_alt_names.is_empty())
        {
            r.error(
                path,
                "cannot specify CaCertificates or CredentialName or SubjectAltNames when \
                 InsecureSkipVerify is set true",
            );
        }
        if mode == ClientTLSMode::Mutual
            && (set(&tls.ca_certificates) || !tls.subject_alt_names.is_empty())
        {
            r.error(
                path,
                "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true",
            );
        }
    }
    if matches!(mode, ClientTLSMode::Simple | ClientTLSMode::Mutual) && set(&tls.credential_name) {
        if set(&tls.client_certificate)
            || set(&tls.ca_certificates)
            || set(&tls.private_key)
            || set(&tls.ca_crl)
        {
            r.error(
                path,
                "cannot specify client certificates or CA certificate or CA CRL If credentialName is set",
            );
        }
        return;
    }
    if mode == ClientTLSMode::Mutual {
        if !set(&tls.client_certificate) {
            r.error(path, "client certificate required for mutual tls");
        }
        if !set(&tls.private_key) {
            r.error(path, "private key required for mutual tls");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_model::networking::destination_rule::{Distribute, Failover};

    #[test]
    fn maglev_primes() {
        for (n, want) in [
            (0, false),
            (1, true),
            (2, true),
            (3, true),
            (4, false),
            (65537, true),
            (65535, false),
        ] {
            assert_eq!(is_prime(n), want, "{n}");
        }
    }

    #[test]
    fn localities() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert!(check_localities(&s(&["us-east", "us-west/zone1", "eu/z/sz"])).is_ok());
        assert!(check_localities(&s(&["us-east/*", "us-west"])).is_ok());
        assert!(check_localities(&s(&["us-east", "us-east/zone1"])).is_err());
        assert!(check_localities(&s(&["*", "us-east"])).is_err());
        assert!(check_localities(&s(&["us-*-east"])).is_err());
        assert!(check_localities(&s(&["us//z"])).is_err());

        let lb = LocalityLoadBalancerSetting {
            distribute: vec![Distribute {
                from: Some("us-east/*".into()),
                to: BTreeMap::from([("us-east/z1".into(), 60), ("us-west/*".into(), 30)]),
            }],
            ..Default::default()
        };
        let (errors, _) = locality_lb_findings(&lb, true);
        assert_eq!(errors, vec!["total locality weight 90 != 100"]);

        let lb = LocalityLoadBalancerSetting {
            failover: vec![Failover {
                from: Some("us-east".into()),
                to: Some("us-east".into()),
            }],
            ..Default::default()
        };
        let (errors, warnings) = locality_lb_findings(&lb, false);
        assert_eq!(
            errors,
            vec!["locality lb failover settings must specify different regions"]
        );
        assert_eq!(
            warnings,
            vec!["outlier detection policy must be provided for failover"]
        );
    }
}
