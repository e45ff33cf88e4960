//! ServiceEntry checks: one protocol per host and port across ServiceEntries (IST0177).

use std::collections::BTreeMap;

use sluice_model::{Diagnostic, Level};

use super::registry::Registry;
use super::{finding, istio_codes};

pub(super) fn analyze(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    // (host, port) → (protocol, ServiceEntry index)
    let mut seen: BTreeMap<(String, u32), Vec<(String, usize)>> = BTreeMap::new();
    for (idx, se) in reg.resources.service_entries.iter().enumerate() {
        for host in &se.spec.hosts {
            for port in &se.spec.ports {
                let proto = port.protocol.map(|p| p.to_string()).unwrap_or_default();
                seen.entry((host.to_ascii_lowercase(), port.number))
                    .or_default()
                    .push((proto, idx));
            }
        }
    }
    for ((host, port), entries) in seen {
        let first = &entries[0].0;
        if entries.iter().all(|(p, _)| p == first) {
            continue;
        }
        let names: Vec<String> = entries
            .iter()
            .map(|(_, i)| {
                let se = &reg.resources.service_entries[*i];
                format!("{}/{}", se.namespace(), se.name())
            })
            .collect();
        let protos: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
        for (_, i) in &entries {
            let se = &reg.resources.service_entries[*i];
            out.push(finding(
                se,
                istio_codes::CONFLICTING_SE_PROTOCOL,
                Level::Warning,
                "spec.ports",
                format!(
                    "Multiple ServiceEntries ({}) define the same host {host:?} and port {port} \
                     with conflicting protocols ({}).",
                    names.join(", "),
                    protos.join(", ")
                ),
            ));
        }
    }
}
