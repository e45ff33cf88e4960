//! ServiceEntry validation (Istio's `ValidateServiceEntry`).

use std::collections::BTreeSet;

use sluice_model::networking::ServiceEntry;
use sluice_model::networking::service_entry::{Location, Protocol, Resolution, ServicePort};
use sluice_model::{Level, Resource, Resources};

use super::Report;
use super::rules::{self, ExportToOwner};
use super::workload_entry::{check_endpoint_ports, check_workload_entry};
use crate::analyze::istio_codes;

/// Label that attaches a service to an ambient waypoint proxy.
const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";

fn resolution_name(r: Resolution) -> &'static str {
    match r {
        Resolution::None => "NONE",
        Resolution::Static => "STATIC",
        Resolution::Dns => "DNS",
        Resolution::DnsRoundRobin => "DNS_ROUND_ROBIN",
        Resolution::DynamicDns => "DYNAMIC_DNS",
    }
}

/// What the mesh config changes in a ServiceEntry's validation.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MeshContext {
    /// Istio's sidecars allocate an address for each host themselves (DNS capture plus
    /// auto-allocation in the default proxy metadata).
    pub allocates_addresses: bool,
}

impl MeshContext {
    pub(crate) fn of(resources: &Resources) -> Self {
        let Some((mesh, _)) = resources.mesh_config() else {
            return MeshContext::default();
        };
        let meta = mesh
            .default_config
            .as_ref()
            .and_then(|c| c.get("proxyMetadata"));
        let on = |key: &str| meta.and_then(|m| m.get(key)).and_then(|v| v.as_str()) == Some("true");
        MeshContext {
            allocates_addresses: on("ISTIO_META_DNS_CAPTURE")
                && (on("ISTIO_META_DNS_AUTO_ALLOCATE") || on("PILOT_ENABLE_IP_AUTOALLOCATE")),
        }
    }
}

/// Addresses Istio allocated are kept in the status the API server returns; the typed model
/// drops `status`, its field positions still show it.
fn allocated_by_istio(r: &Resource<ServiceEntry>) -> bool {
    r.source.has_field("status.addresses[0]")
}

/// A port serving TCP (or no protocol) of an entry without addresses is matched by port
/// alone, so every such entry on that port catches the same traffic. DYNAMIC_DNS entries
/// forward by Host or SNI instead (and take no TCP ports).
fn addresses_required(se: &ServiceEntry, port: &ServicePort, allocated: bool) -> bool {
    se.addresses.is_empty()
        && !allocated
        && se.resolution() != Resolution::DynamicDns
        && matches!(port.protocol, None | Some(Protocol::Tcp))
}

/// Istio's analyzer says IST0134 unless the mesh config has the sidecars allocate addresses;
/// its webhook warns either way. sluice allocates none, so under auto-allocation it keeps the
/// webhook's warning, saying why it still matters.
fn address_finding(r: &mut Report<'_, ServiceEntry>, path: &str, allocates: bool) {
    if allocates {
        r.warning(
            path,
            "addresses are required for ports serving TCP (or unset) protocol: Istio's sidecars \
             allocate one under ISTIO_META_DNS_AUTO_ALLOCATE, sluice allocates none, so TCP \
             traffic on this port is matched by port alone",
        );
    } else {
        r.with_code(
            istio_codes::SE_ADDRESSES_REQUIRED,
            Level::Warning,
            path,
            "ServiceEntry addresses are required for this protocol. (sluice allocates none: \
             without addresses, TCP traffic on this port is matched by port alone)"
                .to_owned(),
        );
    }
}

pub(crate) fn validate(r: &mut Report<'_, ServiceEntry>, mesh: MeshContext) {
    let se = &r.resource().spec;
    let namespace = r.resource().namespace().to_owned();
    let waypoint = r.resource().meta.labels.contains_key(USE_WAYPOINT_LABEL);
    let resolution = se.resolution();

    if let Some(sel) = &se.workload_selector {
        let errs = rules::workload_selector_errors(&sel.labels);
        if !errs.is_empty() {
            // Istio stops here: the selector must be fixed first.
            for e in errs {
                r.error("spec.workloadSelector.labels", e);
            }
            return;
        }
        if sel.labels.is_empty() {
            r.warning(
                "spec.workloadSelector",
                format!(
                    "service entry: {}, will be applied to all services in namespace",
                    rules::SELECTOR_WITHOUT_LABELS
                ),
            );
        }
        if !se.endpoints.is_empty() {
            r.error(
                "spec.workloadSelector",
                "only one of WorkloadSelector or Endpoints is allowed in Service Entry",
            );
        }
    }

    if se.hosts.is_empty() {
        r.error("spec.hosts", "service entry must have at least one host");
    }
    for (i, host) in se.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if host == "*" {
            r.error(&path, format!("invalid host {host}"));
            continue;
        }
        if let Err(e) = rules::check_wildcard_domain(host) {
            r.error(&path, e);
        }
        if let Err(e) = rules::check_partial_wildcard(host) {
            r.warning(&path, e);
        }
    }

    let mut cidr_found = false;
    for (i, address) in se.addresses.iter().enumerate() {
        cidr_found |= address.contains('/');
        if let Err(e) = rules::check_ip_subnet(address) {
            r.error(&format!("spec.addresses[{i}]"), e);
        }
    }
    if cidr_found && !matches!(resolution, Resolution::None | Resolution::Static) {
        r.error(
            "spec.addresses",
            "CIDR addresses are allowed only for NONE/STATIC resolution types",
        );
    }

    let mut port_names: BTreeSet<&str> = BTreeSet::new();
    let mut port_numbers: BTreeSet<u32> = BTreeSet::new();
    for (i, port) in se.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        if !port_names.insert(&port.name) {
            r.error(
                &format!("{path}.name"),
                format!("service entry port name {:?} already defined", port.name),
            );
        }
        if !port_numbers.insert(port.number) {
            r.error(
                &format!("{path}.number"),
                format!("service entry port {} already defined", port.number),
            );
        }
        if let Some(target) = port.target_port.filter(|t| *t != 0) {
            if let Err(e) = rules::check_port(i64::from(target)) {
                r.error(&format!("{path}.targetPort"), e);
            }
            if resolution == Resolution::None {
                r.warning(
                    &format!("{path}.targetPort"),
                    "targetPort has no effect when resolution mode is NONE",
                );
            }
        }
        if addresses_required(se, port, allocated_by_istio(r.resource())) {
            address_finding(r, &path, mesh.allocates_addresses);
        }
        if let Err(e) = rules::check_port_name(&port.name) {
            r.error(&format!("{path}.name"), e);
        }
        if let Err(e) = rules::check_port(i64::from(port.number)) {
            r.error(&format!("{path}.number"), e);
        }
    }

    let mode = resolution_name(resolution);
    match resolution {
        Resolution::None => {
            if !se.endpoints.is_empty() {
                r.error(
                    "spec.endpoints",
                    "no endpoints should be provided for resolution type none",
                );
            }
            if se.workload_selector.is_some() {
                r.warning(
                    "spec.workloadSelector",
                    "workloadSelector should not be set when resolution mode is NONE",
                );
            }
        }
        Resolution::Static => {
            for (i, ep) in se.endpoints.iter().enumerate() {
                check_workload_entry(
                    r,
                    &format!("spec.endpoints[{i}]"),
                    ep,
                    Some(&port_names),
                    false,
                );
                // Istio accepts them (a sidecar's local socket); sluice's data plane dials
                // network addresses only, so it refuses them rather than fail every request.
                if ep
                    .address
                    .as_deref()
                    .is_some_and(|a| a.starts_with(rules::UNIX_ADDRESS_PREFIX))
                {
                    r.error(
                        &format!("spec.endpoints[{i}].address"),
                        "unix domain socket endpoints are not supported by sluice: it sends \
                         egress traffic to network addresses only",
                    );
                }
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if se.endpoints.is_empty() {
                for (i, host) in se.hosts.iter().enumerate() {
                    if rules::check_fqdn(host).is_err() {
                        r.error(
                            &format!("spec.hosts[{i}]"),
                            format!(
                                "hosts must be FQDN or contain only prefix wildcards if no \
                                 endpoints are provided for resolution mode {mode}"
                            ),
                        );
                    }
                }
            }
            if resolution == Resolution::DnsRoundRobin && se.endpoints.len() > 1 {
                r.error(
                    "spec.endpoints",
                    format!("there must only be 0 or 1 endpoint for resolution mode {mode}"),
                );
            }
            for (i, ep) in se.endpoints.iter().enumerate() {
                let base = format!("spec.endpoints[{i}]");
                let addr = ep.address.as_deref().unwrap_or_default();
                if !rules::is_valid_ip(addr) && rules::check_fqdn(addr).is_err() {
                    r.error(
                        &format!("{base}.address"),
                        format!("endpoint address {addr:?} is not a valid FQDN or an IP address"),
                    );
                }
                for e in rules::label_errors(&ep.labels) {
                    r.error(&format!("{base}.labels"), e);
                }
                check_endpoint_ports(r, &base, ep, Some(&port_names));
            }
            // Istio once warned about a workloadSelector here; it now resolves the addresses of
            // the selected WorkloadEntries by DNS, so the combination is valid.
            if !se.addresses.is_empty()
                && se.hosts.len() > 1
                && se
                    .ports
                    .iter()
                    .any(|p| p.protocol.is_some_and(Protocol::is_tcp))
            {
                r.warning(
                    "spec.hosts",
                    "service entry can not have more than one host specified simultaneously \
                     with address and tcp port",
                );
            }
        }
        Resolution::DynamicDns => {
            // DYNAMIC_DNS (2025) resolves the name each request carries (Host header or SNI):
            // it needs wildcard hosts, no endpoints, no addresses, and HTTP or TLS ports.
            for (i, host) in se.hosts.iter().enumerate() {
                if !host.starts_with('*') {
                    r.error(
                        &format!("spec.hosts[{i}]"),
                        format!("host must be wildcarded for resolution mode {mode}"),
                    );
                }
            }
            if !se.endpoints.is_empty() {
                r.error(
                    "spec.endpoints",
                    format!("no endpoints should be provided for resolution mode {mode}"),
                );
            }
            if !se.addresses.is_empty() {
                r.error(
                    "spec.addresses",
                    format!("addresses should not be provided for resolution mode {mode}"),
                );
            }
            for (i, port) in se.ports.iter().enumerate() {
                if !port
                    .protocol
                    .is_some_and(|p| p.is_http() || p == Protocol::Tls)
                {
                    r.error(
                        &format!("spec.ports[{i}].protocol"),
                        format!(
                            "only HTTP and TLS protocols are supported for resolution mode {mode}, \
                             found {}",
                            port.protocol.map_or("unset", Protocol::as_str)
                        ),
                    );
                }
            }
            if se.workload_selector.is_some() {
                r.warning(
                    "spec.workloadSelector",
                    format!("workloadSelector should not be set when resolution mode is {mode}"),
                );
            }
            if waypoint && se.location() == Location::MeshInternal {
                r.error(
                    "metadata.labels",
                    format!(
                        "resolution mode {mode} with location MESH_INTERNAL cannot be bound to a \
                         waypoint ({USE_WAYPOINT_LABEL})"
                    ),
                );
            }
        }
    }

    // With plain TCP nothing tells the hosts apart, unless the addresses are passed through.
    if resolution != Resolution::None
        && se.hosts.len() > 1
        && let Some(i) = se
            .ports
            .iter()
            .position(|p| !p.protocol.is_some_and(|p| p.is_http() || p.is_tls()))
    {
        r.error(
            &format!("spec.ports[{i}]"),
            "multiple hosts provided with non-HTTP, non-TLS ports",
        );
    }

    for e in rules::export_to_errors(&namespace, &se.export_to, ExportToOwner::ServiceEntry) {
        r.error("spec.exportTo", e);
    }
}

#[cfg(test)]
mod tests {
    use sluice_model::load_str;

    fn codes(yaml: &str) -> Vec<&'static str> {
        let loaded = load_str("se.yaml", yaml);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        crate::validate::validate(&loaded.resources)
            .iter()
            .map(|d| d.code)
            .collect()
    }

    const ENTRY: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.example.com]
  PORTS
  resolution: DNS
";

    #[test]
    fn a_tcp_port_without_addresses_is_ist0134() {
        let tcp = ENTRY.replace("PORTS", "ports: [{number: 5432, name: pg, protocol: tcp}]");
        assert_eq!(codes(&tcp), ["IST0134"]);
        let unset = ENTRY.replace("PORTS", "ports: [{number: 5432, name: pg, protocol: ''}]");
        assert_eq!(codes(&unset), ["IST0134"]);
    }

    #[test]
    fn addresses_tls_or_istios_allocation_silence_ist0134() {
        let with_address = ENTRY.replace(
            "PORTS",
            "addresses: [10.0.0.1]\n  ports: [{number: 5432, name: pg, protocol: TCP}]",
        );
        assert!(codes(&with_address).is_empty());
        let tls = ENTRY.replace("PORTS", "ports: [{number: 443, name: tls, protocol: TLS}]");
        assert!(codes(&tls).is_empty());
        let allocated = format!(
            "{}status:\n  addresses: [{{host: db.example.com, value: 240.240.0.1}}]\n",
            ENTRY.replace("PORTS", "ports: [{number: 5432, name: pg, protocol: TCP}]")
        );
        assert!(codes(&allocated).is_empty());
    }

    #[test]
    fn under_istios_auto_allocation_sluice_keeps_the_webhook_warning() {
        let yaml = format!(
            "{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: \
             istio-system}}\ndata:\n  mesh: |\n    defaultConfig:\n      proxyMetadata:\n        \
             ISTIO_META_DNS_CAPTURE: \"true\"\n        ISTIO_META_DNS_AUTO_ALLOCATE: \"true\"\n",
            ENTRY.replace("PORTS", "ports: [{number: 5432, name: pg, protocol: TCP}]")
        );
        // (The mesh config's proxyMetadata is itself SLC0006: sluice does not act on it.)
        let got = codes(&yaml);
        assert!(
            got.contains(&"IST0106") && !got.contains(&"IST0134"),
            "{got:?}"
        );
    }
}
