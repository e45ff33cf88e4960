//! ServiceEntry checks: one protocol per host and port where the entries are visible together
//! (IST0177, as Istio's `serviceentry.ConflictingServiceEntryProtocolAnalyzer`).
//!
//! Istio's IST0134 (addresses required for TCP ports, `ProtocolAddressesAnalyzer`) is said by
//! validation, where the webhook says the same as a warning: one finding for both.

use std::collections::{BTreeMap, BTreeSet};

use sluice_model::{Diagnostic, Level};

use super::registry::Registry;
use super::{finding, istio_codes};

/// The scope of an entry exported everywhere.
const EVERYWHERE: &str = "*";

pub(super) fn analyze(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    conflicting_protocols(reg, out);
}

fn conflicting_protocols(reg: &Registry<'_>, out: &mut Vec<Diagnostic>) {
    let entries = &reg.resources.service_entries;
    // (scope, host, port) → (protocol, index of the ServiceEntry)
    let mut index: BTreeMap<(String, String, u32), Vec<(String, usize)>> = BTreeMap::new();
    for (idx, se) in entries.iter().enumerate() {
        let export = &se.spec.export_to;
        let scopes: BTreeSet<String> =
            if export.is_empty() || export.iter().any(|e| e == EVERYWHERE) {
                BTreeSet::from([EVERYWHERE.to_owned()])
            } else {
                export
                    .iter()
                    .map(|e| {
                        if e == "." {
                            se.namespace().to_owned()
                        } else {
                            e.clone()
                        }
                    })
                    .collect()
            };
        for scope in &scopes {
            for host in &se.spec.hosts {
                for port in &se.spec.ports {
                    let proto = port
                        .protocol
                        .map(|p| p.to_string().to_ascii_uppercase())
                        .unwrap_or_default();
                    index
                        .entry((scope.clone(), host.to_ascii_lowercase(), port.number))
                        .or_default()
                        .push((proto, idx));
                }
            }
        }
    }
    let mut reported = BTreeSet::new();
    for ((scope, host, port), list) in &index {
        let mut list = list.clone();
        // Entries exported everywhere are also seen in every namespace-scoped group.
        if scope != EVERYWHERE
            && let Some(everywhere) = index.get(&(EVERYWHERE.to_owned(), host.clone(), *port))
        {
            list.extend(everywhere.iter().cloned());
        }
        let protocols: BTreeSet<&str> = list.iter().map(|(p, _)| p.as_str()).collect();
        if protocols.len() < 2 {
            continue;
        }
        let names: BTreeSet<String> = list
            .iter()
            .map(|(_, i)| format!("{}/{}", entries[*i].namespace(), entries[*i].name()))
            .collect();
        let names: Vec<String> = names.into_iter().collect();
        let protocols: Vec<&str> = protocols.into_iter().collect();
        for (_, i) in &list {
            if !reported.insert(*i) {
                continue;
            }
            out.push(finding(
                &entries[*i],
                istio_codes::CONFLICTING_SE_PROTOCOL,
                Level::Warning,
                "spec.ports",
                format!(
                    "Multiple ServiceEntries ({}) define the same host {host:?} and port {port} \
                     with conflicting protocols ({}).",
                    names.join(", "),
                    protocols.join(", ")
                ),
            ));
        }
    }
}
