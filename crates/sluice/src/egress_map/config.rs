//! The config at a glance (`/api/config`): the external hosts this proxy's configuration
//! registers, the Gateway servers and VirtualService routes that serve each, and the
//! AuthorizationPolicies that decide who may reach it — each with the file and line it was
//! written at. Built from the loaded resources next to the snapshot they compile to, so the
//! page shows the configuration in force, never a newer file that failed to load.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sluice_compile::lower::CompileOptions;
use sluice_model::security::authorization_policy::{Action, Rule};
use sluice_model::{Resource, Resources};
use sluice_snapshot::{Role, Snapshot};

/// What `/api/config` answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigView {
    pub hosts: Vec<HostView>,
    pub servers: Vec<ServerView>,
    pub routes: Vec<RouteView>,
    pub policies: Vec<PolicyView>,
}

/// One host a ServiceEntry registers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostView {
    pub host: String,
    /// `443/TLS`, …
    pub ports: Vec<String>,
    pub location: String,
    pub resolution: String,
    /// `ServiceEntry production/payment-api`.
    pub resource: String,
    /// `file:line` of the host in the ServiceEntry.
    pub at: String,
    /// Indexes into [`ConfigView::servers`], [`ConfigView::routes`], [`ConfigView::policies`]
    /// of what serves or decides this host.
    pub servers: Vec<usize>,
    pub routes: Vec<usize>,
    pub policies: Vec<usize>,
}

/// One server of a Gateway that selects this proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerView {
    /// `Gateway production/payment-egress-gateway`.
    pub resource: String,
    pub port: u32,
    pub protocol: String,
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_mode: Option<String>,
    pub at: String,
}

/// One http/tls/tcp route of a VirtualService.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteView {
    /// `VirtualService production/payment-api-routing`.
    pub resource: String,
    /// `http[0]`, `tls[1]`, `tcp[0]`.
    pub route: String,
    /// The gateways its matches name, else the VirtualService's.
    pub gateways: Vec<String>,
    /// `host:port` of each destination.
    pub destinations: Vec<String>,
    pub at: String,
}

/// One AuthorizationPolicy enforced by this proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyView {
    /// `istio-system/payment-api-authz`.
    pub policy: String,
    /// `ALLOW`, `DENY`, `AUDIT`, `CUSTOM`.
    pub action: String,
    pub at: String,
    pub rules: Vec<RuleView>,
}

/// One rule of a policy, as a reader would summarise it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleView {
    pub index: usize,
    /// `principals: cluster.local/ns/production/sa/payment-service`; `anyone` when empty.
    pub from: String,
    /// `hosts: api.payment-provider.com; ports: 443`; `anything` when empty.
    pub to: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub when: String,
    pub at: String,
    /// The hosts the rule names (empty: every host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// A Gateway host (`ns/host`, `*`, `*.example.com`) or policy host against a registered host.
fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.rsplit_once('/').map_or(pattern, |(_, h)| h);
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    if pattern == "*" || pattern == host {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return host.ends_with(suffix);
    }
    // A wildcard ServiceEntry host is served by a server naming one of its hosts.
    if let Some(suffix) = host.strip_prefix('*') {
        return pattern.ends_with(suffix);
    }
    false
}

/// The YAML spelling of an enum value (`MESH_EXTERNAL`).
fn spelled<T: Serialize + std::fmt::Debug>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{v:?}"),
    }
}

fn at<T>(r: &Resource<T>, path: &str) -> String {
    r.source.location_of(path).reference()
}

fn list(label: &str, values: &[String], out: &mut Vec<String>) {
    if !values.is_empty() {
        out.push(format!("{label}: {}", values.join(", ")));
    }
}

fn rule_view(
    policy: &Resource<sluice_model::security::authorization_policy::AuthorizationPolicy>,
    index: usize,
    rule: &Rule,
) -> RuleView {
    let mut from = Vec::new();
    for f in &rule.from {
        if let Some(s) = &f.source {
            list("principals", &s.principals, &mut from);
            list("not principals", &s.not_principals, &mut from);
            list("namespaces", &s.namespaces, &mut from);
            list("not namespaces", &s.not_namespaces, &mut from);
            list("service accounts", &s.service_accounts, &mut from);
            list("ipBlocks", &s.ip_blocks, &mut from);
            list("not ipBlocks", &s.not_ip_blocks, &mut from);
            list("remoteIpBlocks", &s.remote_ip_blocks, &mut from);
            list("requestPrincipals", &s.request_principals, &mut from);
        }
    }
    let mut to = Vec::new();
    let mut hosts = Vec::new();
    for t in &rule.to {
        if let Some(o) = &t.operation {
            list("hosts", &o.hosts, &mut to);
            list("not hosts", &o.not_hosts, &mut to);
            list("ports", &o.ports, &mut to);
            list("not ports", &o.not_ports, &mut to);
            list("methods", &o.methods, &mut to);
            list("paths", &o.paths, &mut to);
            list("not paths", &o.not_paths, &mut to);
            hosts.extend(o.hosts.iter().cloned());
        }
    }
    let when: Vec<String> = rule
        .when
        .iter()
        .map(|c| {
            if c.not_values.is_empty() {
                format!("{} in [{}]", c.key, c.values.join(", "))
            } else {
                format!("{} not in [{}]", c.key, c.not_values.join(", "))
            }
        })
        .collect();
    RuleView {
        index,
        from: if from.is_empty() {
            "anyone".into()
        } else {
            from.join("; ")
        },
        to: if to.is_empty() {
            "anything".into()
        } else {
            to.join("; ")
        },
        when: when.join("; "),
        at: at(policy, &format!("spec.rules[{index}]")),
        hosts,
    }
}

/// The view of `resources` as compiled into `snapshot` for the proxy `options` describes.
pub fn build(resources: &Resources, options: &CompileOptions, snapshot: &Snapshot) -> ConfigView {
    let mut view = ConfigView::default();
    if options.role == Role::Gateway {
        for g in &resources.gateways {
            let selected = g
                .spec
                .selector
                .iter()
                .all(|(k, v)| options.labels.get(k) == Some(v));
            if !selected {
                continue;
            }
            for (i, s) in g.spec.servers.iter().enumerate() {
                view.servers.push(ServerView {
                    resource: g.origin(),
                    port: s.port.number,
                    protocol: s.port.protocol.to_string(),
                    hosts: s.hosts.clone(),
                    tls_mode: s.tls.as_ref().and_then(|t| t.mode.as_ref()).map(spelled),
                    at: at(g, &format!("spec.servers[{i}]")),
                });
            }
        }
    }
    for vs in &resources.virtual_services {
        let kinds = [
            (
                "http",
                vs.spec
                    .http
                    .iter()
                    .map(|r| {
                        let gw: Vec<String> =
                            r.match_.iter().flat_map(|m| m.gateways.clone()).collect();
                        let dest = r
                            .route
                            .iter()
                            .map(|d| &d.destination)
                            .cloned()
                            .collect::<Vec<_>>();
                        (gw, dest)
                    })
                    .collect::<Vec<_>>(),
            ),
            (
                "tls",
                vs.spec
                    .tls
                    .iter()
                    .map(|r| {
                        let gw: Vec<String> =
                            r.match_.iter().flat_map(|m| m.gateways.clone()).collect();
                        (gw, r.route.iter().map(|d| d.destination.clone()).collect())
                    })
                    .collect(),
            ),
            (
                "tcp",
                vs.spec
                    .tcp
                    .iter()
                    .map(|r| {
                        let gw: Vec<String> =
                            r.match_.iter().flat_map(|m| m.gateways.clone()).collect();
                        (gw, r.route.iter().map(|d| d.destination.clone()).collect())
                    })
                    .collect(),
            ),
        ];
        for (kind, routes) in kinds {
            for (i, (gateways, dests)) in routes.into_iter().enumerate() {
                let gateways = if gateways.is_empty() {
                    vs.spec.gateways.clone()
                } else {
                    gateways
                };
                view.routes.push(RouteView {
                    resource: vs.origin(),
                    route: format!("{kind}[{i}]"),
                    gateways,
                    destinations: dests
                        .iter()
                        .map(|d| match &d.port {
                            Some(p) => format!("{}:{}", d.host, p.number),
                            None => d.host.clone(),
                        })
                        .collect(),
                    at: at(vs, &format!("spec.{kind}[{i}]")),
                });
            }
        }
    }
    // The policies the compiler applied to this proxy, by their Envoy names.
    let applied: BTreeSet<&str> = [
        &snapshot.authz.custom,
        &snapshot.authz.audit,
        &snapshot.authz.deny,
        &snapshot.authz.allow,
        &snapshot.authz.dry_run_deny,
        &snapshot.authz.dry_run_allow,
    ]
    .into_iter()
    .flatten()
    .map(|p| &*p.name)
    .collect();
    for p in &resources.authorization_policies {
        let name = format!("ns[{}]-policy[{}]", p.namespace(), p.name());
        if !applied.contains(name.as_str()) {
            continue;
        }
        view.policies.push(PolicyView {
            policy: format!("{}/{}", p.namespace(), p.name()),
            action: match p.spec.action {
                Action::Allow => "ALLOW",
                Action::Deny => "DENY",
                Action::Audit => "AUDIT",
                Action::Custom => "CUSTOM",
            }
            .into(),
            at: at(p, ""),
            rules: p
                .spec
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| rule_view(p, i, r))
                .collect(),
        });
    }
    for se in &resources.service_entries {
        // Only what leaves the mesh: MESH_INTERNAL entries (the gateway's own Service) are
        // not external hosts.
        if se.spec.location.as_ref().map(spelled).as_deref() == Some("MESH_INTERNAL") {
            continue;
        }
        for (i, host) in se.spec.hosts.iter().enumerate() {
            let servers = (0..view.servers.len())
                .filter(|&s| view.servers[s].hosts.iter().any(|h| host_matches(h, host)))
                .collect();
            let routes = (0..view.routes.len())
                .filter(|&r| {
                    view.routes[r].destinations.iter().any(|d| {
                        let h = d.rsplit_once(':').map_or(d.as_str(), |(h, _)| h);
                        h.eq_ignore_ascii_case(host)
                    })
                })
                .collect();
            let policies = (0..view.policies.len())
                .filter(|&p| {
                    view.policies[p].rules.iter().any(|r| {
                        r.hosts.is_empty() || r.hosts.iter().any(|h| host_matches(h, host))
                    }) || view.policies[p].rules.is_empty()
                })
                .collect();
            view.hosts.push(HostView {
                host: host.clone(),
                ports: se
                    .spec
                    .ports
                    .iter()
                    .map(|p| match &p.protocol {
                        Some(proto) => format!("{}/{proto}", p.number),
                        None => p.number.to_string(),
                    })
                    .collect(),
                location: se
                    .spec
                    .location
                    .as_ref()
                    .map(spelled)
                    .unwrap_or_else(|| "MESH_EXTERNAL".into()),
                resolution: se
                    .spec
                    .resolution
                    .as_ref()
                    .map(spelled)
                    .unwrap_or_else(|| "NONE".into()),
                resource: se.origin(),
                at: at(se, &format!("spec.hosts[{i}]")),
                servers,
                routes,
                policies,
            });
        }
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_as_gateway_servers_and_policies_name_them() {
        assert!(host_matches("*", "api.github.com"));
        assert!(host_matches("./api.github.com", "api.github.com"));
        assert!(host_matches("*/API.github.com", "api.github.com"));
        assert!(host_matches("*.github.com", "api.github.com"));
        assert!(host_matches("api.github.com", "*.github.com"));
        assert!(!host_matches("api.stripe.com", "api.github.com"));
    }

    #[test]
    fn the_production_setup_at_a_glance() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/guide/production-egress-setup.yaml"
        );
        let loaded = sluice_model::load_paths(&[path]);
        let options = CompileOptions {
            role: Role::Gateway,
            labels: [("istio".to_owned(), "egressgateway".to_owned())].into(),
            namespace: "istio-system".into(),
            credentials_dir: None,
            secrets_dir: None,
        };
        let (snapshot, _) = sluice_compile::lower::compile(&loaded.resources, &options);
        let view = build(&loaded.resources, &options, &snapshot);
        let host = view
            .hosts
            .iter()
            .find(|h| h.host == "api.payment-provider.com")
            .expect("host");
        assert_eq!(host.ports, ["443/TLS"]);
        assert_eq!(host.location, "MESH_EXTERNAL");
        assert!(
            host.at.ends_with("production-egress-setup.yaml:16"),
            "{}",
            host.at
        );
        let server = &view.servers[host.servers[0]];
        assert_eq!(
            (server.port, server.tls_mode.as_deref()),
            (443, Some("PASSTHROUGH"))
        );
        let routes: Vec<&str> = host
            .routes
            .iter()
            .map(|&r| view.routes[r].route.as_str())
            .collect();
        assert_eq!(routes, ["tls[1]"]);
        let policy = &view.policies[host.policies[0]];
        assert_eq!(
            (policy.policy.as_str(), policy.action.as_str()),
            ("istio-system/payment-api-authz", "ALLOW")
        );
        assert!(
            policy.rules[0]
                .from
                .contains("cluster.local/ns/production/sa/payment-service")
        );
        assert!(
            policy.rules[0].at.contains("production-egress-setup.yaml:"),
            "{}",
            policy.rules[0].at
        );
    }
}
