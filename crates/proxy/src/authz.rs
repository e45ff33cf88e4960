//! Authorization at the proxy: what `sluice_snapshot::authz` sees of a request or connection,
//! and the one place that evaluates the snapshot's AuthorizationPolicies and reports the
//! decision (metrics, logs).
//!
//! Where it runs, as Envoy's RBAC filters do:
//! - HTTP: once per request, before routing (the RBAC filter sits before the router), so a
//!   denied request never reaches an upstream: `403 RBAC: access denied`.
//! - TLS and TCP: once per connection, after the filter chain is chosen and before anything is
//!   dialed: a denied connection is closed.
//!
//! The attributes, and where each comes from:
//! - the peer (`principals`, `namespaces`, …): only from a certificate the mesh mTLS handshake
//!   verified ([`ConnInfo::peer_identity`]), never from a header;
//! - `source.ip` and `remote.ip`: the downstream peer address (`X-Forwarded-For` is not trusted);
//! - `destination.port`: the listener's port; `destination.ip`: the address the connection
//!   arrived on;
//! - `connection.sni`: the SNI of the ClientHello sluice routes by (inside the mesh hop, the
//!   inner one), else the SNI of the mesh hop;
//! - `hosts`: for HTTP the authority as sent (`a.com:8080` is not `a.com`, as in Istio); for TLS
//!   and TCP the SNI, else the host the sidecar named on the mesh hop, else the host the app
//!   asked its sidecar for (sluice's documented difference, `docs/authorization.md`).
//!
//! Policies are enforced at the gateway only. Istio applies a workload's AuthorizationPolicies
//! to the traffic that workload *receives*; sluice's sidecar carries only what its app sends,
//! so evaluating the workload's policies there would judge the wrong direction.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::request::Parts;
use sluice_snapshot::authz::{Decision, HttpAttrs, Peer, Request};
use sluice_snapshot::{Role, Snapshot};

use crate::Error;
use crate::flow::ConnInfo;
use crate::telemetry::Telemetry;
use crate::telemetry::metrics::{AuthzKey, DryRunLabels};

/// The peer as authorization sees it: the verified mesh identity, or nobody.
pub fn peer(info: &ConnInfo) -> Option<Peer> {
    info.peer_identity.as_ref().map(|id| Peer {
        principal: id.principal(),
        trust_domain: id.trust_domain().to_owned(),
        namespace: id.namespace().to_owned(),
        service_account: id.service_account().to_owned(),
    })
}

/// What every request and connection carries.
fn base(info: &ConnInfo) -> Request {
    let mut req = Request::new(info.peer.ip(), info.listener_port)
        .with_destination_ip(info.original_dst.unwrap_or(info.local).ip());
    req.peer = peer(info);
    req.sni = info.sni.clone().or_else(|| info.mesh_sni.clone());
    req
}

/// The attributes of a TLS or TCP connection.
pub fn connection_request(info: &ConnInfo) -> Request {
    let mut req = base(info);
    req.host = info
        .sni
        .clone()
        .or_else(|| info.mesh_sni.clone())
        .or_else(|| info.requested.as_ref().map(|(host, _)| host.clone()));
    req
}

/// The attributes of one HTTP request: `parts` as the proxy will route it (after its own
/// additions and removals), `authority` as the client sent it.
pub fn http_request(info: &ConnInfo, parts: &Parts, authority: &str) -> Request {
    let mut req = base(info);
    req.host = Some(authority.to_owned());
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    req.http = Some(HttpAttrs {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        headers,
    });
    req
}

/// Whether `snapshot`'s policies are evaluated here at all (see the module docs).
pub fn enforced(snapshot: &Snapshot) -> bool {
    snapshot.role == Role::Gateway && !snapshot.authz.is_empty()
}

/// Which kind of flow a decision was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Tcp,
}

impl Protocol {
    fn label(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }
}

/// Decides `req` with the snapshot's policies and reports the decision. `Ok` carries the ALLOW
/// rule that allowed it (policy name, rule index), when ALLOW policies applied;
/// `Err(Error::Denied)` Envoy's details (`rbac_access_denied_matched_policy[…]`).
pub fn authorize(
    snapshot: &Snapshot,
    telemetry: &Telemetry,
    protocol: Protocol,
    req: &Request,
) -> Result<Option<(Arc<str>, usize)>, Error> {
    if !enforced(snapshot) {
        return Ok(None);
    }
    let decision = snapshot.authz.evaluate(req);
    report(telemetry, protocol, req, &decision);
    if decision.allowed {
        Ok(decision.matched)
    } else {
        Err(Error::Denied(decision.details))
    }
}

fn report(telemetry: &Telemetry, protocol: Protocol, req: &Request, decision: &Decision) {
    let metrics = &telemetry.metrics;
    metrics.authz(&AuthzKey {
        protocol: protocol.label(),
        allowed: decision.allowed,
        rule: decision.matched.clone(),
        audit: decision.audit,
    });
    let principal = req.peer.as_ref().map(|p| p.principal.as_str());
    for (action, shadow) in [
        ("deny", decision.dry_run_deny.as_ref()),
        ("allow", decision.dry_run_allow.as_ref()),
    ] {
        let Some(shadow) = shadow else { continue };
        let result = if shadow.allowed { "allowed" } else { "denied" };
        metrics.authz_dry_run(&DryRunLabels {
            protocol: protocol.label().to_owned(),
            action: action.to_owned(),
            result: result.to_owned(),
            policy: shadow
                .effective_policy
                .clone()
                .unwrap_or_else(|| "none".to_owned()),
        });
        tracing::info!(
            target: "sluice::authz",
            dry_run = action,
            shadow_engine_result = result,
            shadow_effective_policy_id = shadow.effective_policy.as_deref().unwrap_or("-"),
            principal = principal.unwrap_or("-"),
            host = req.host.as_deref().unwrap_or("-"),
            port = req.destination_port,
            "dry-run authorization"
        );
    }
    if !decision.allowed {
        tracing::info!(
            target: "sluice::authz",
            details = decision.details,
            principal = principal.unwrap_or("-"),
            source = %req.source_ip,
            host = req.host.as_deref().unwrap_or("-"),
            port = req.destination_port,
            protocol = protocol.label(),
            "denied"
        );
    } else if decision.audit {
        tracing::info!(
            target: "sluice::authz",
            rule = decision
                .matched
                .as_ref()
                .map(|(policy, index)| format!("{policy}-rule[{index}]"))
                .as_deref()
                .unwrap_or("-"),
            principal = principal.unwrap_or("-"),
            host = req.host.as_deref().unwrap_or("-"),
            port = req.destination_port,
            protocol = protocol.label(),
            "audited"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http::Request as HttpRequest;
    use sluice_identity::Identity;
    use sluice_snapshot::authz::{Condition, Policies, Policy, Rule, StrMatch, Values};

    use super::*;

    fn info() -> ConnInfo {
        let local: SocketAddr = "127.0.0.9:443".parse().expect("addr");
        let peer: SocketAddr = "127.0.0.1:50000".parse().expect("addr");
        ConnInfo::new(local, peer, 443)
    }

    fn frontend() -> Identity {
        Identity::spiffe("cluster.local", "default", "frontend").expect("identity")
    }

    #[test]
    fn the_peer_comes_only_from_the_verified_identity() {
        let mut i = info();
        assert_eq!(connection_request(&i).peer, None);
        i.peer_identity = Some(frontend());
        let p = connection_request(&i).peer.expect("peer");
        assert_eq!(p.principal, "cluster.local/ns/default/sa/frontend");
        assert_eq!(p.namespace, "default");
        assert_eq!(p.service_account, "frontend");
        assert_eq!(p.trust_domain, "cluster.local");
    }

    #[test]
    fn the_host_of_a_connection_is_the_sni_then_the_mesh_sni_then_the_requested_host() {
        let mut i = info();
        assert_eq!(connection_request(&i).host, None);
        i.requested = Some(("db.example.com".into(), 5432));
        assert_eq!(
            connection_request(&i).host.as_deref(),
            Some("db.example.com")
        );
        i.mesh_sni = Some("external-db.example.com".into());
        assert_eq!(
            connection_request(&i).host.as_deref(),
            Some("external-db.example.com")
        );
        i.sni = Some("api.github.com".into());
        let req = connection_request(&i);
        assert_eq!(req.host.as_deref(), Some("api.github.com"));
        assert_eq!(req.sni.as_deref(), Some("api.github.com"));
        assert_eq!(req.destination_port, 443);
        assert_eq!(req.remote_ip, req.source_ip);
        assert_eq!(req.http, None);
    }

    #[test]
    fn http_requests_carry_method_path_headers_and_the_authority_as_sent() {
        let (parts, _) = HttpRequest::builder()
            .method("POST")
            .uri("/repos/x?page=2")
            .header("x-a", "1")
            .header("x-a", "2")
            .header("user-agent", "t")
            .body(())
            .expect("request")
            .into_parts();
        let req = http_request(&info(), &parts, "api.github.com:8443");
        assert_eq!(req.host.as_deref(), Some("api.github.com:8443"));
        let http = req.http.expect("http");
        assert_eq!(http.method, "POST");
        assert_eq!(http.path, "/repos/x");
        assert_eq!(http.headers.get("x-a").map(String::as_str), Some("1,2"));
    }

    #[test]
    fn only_gateways_enforce_and_a_denial_names_the_rule() {
        let mut snapshot = Snapshot::empty(Role::Gateway);
        let telemetry = Telemetry::new(&mut prometheus_client::registry::Registry::default());
        let req = connection_request(&info());
        assert!(authorize(&snapshot, &telemetry, Protocol::Tcp, &req).is_ok());
        snapshot.authz = Policies {
            allow: vec![Policy::new(
                "istio-system",
                "egress",
                vec![Rule {
                    from: vec![vec![Condition::Principal(Values::new(
                        vec![StrMatch::parse("cluster.local/ns/default/sa/frontend")],
                        vec![],
                    ))]],
                    ..Rule::default()
                }],
            )],
            ..Policies::default()
        };
        match authorize(&snapshot, &telemetry, Protocol::Tcp, &req) {
            Err(Error::Denied(d)) => assert_eq!(d, "rbac_access_denied_matched_policy[none]"),
            other => panic!("{other:?}"),
        }
        let mut i = info();
        i.peer_identity = Some(frontend());
        let allowed = connection_request(&i);
        assert!(authorize(&snapshot, &telemetry, Protocol::Tcp, &allowed).is_ok());

        let mut sidecar = snapshot.clone();
        sidecar.role = Role::Sidecar;
        assert!(authorize(&sidecar, &telemetry, Protocol::Tcp, &req).is_ok());
    }
}
