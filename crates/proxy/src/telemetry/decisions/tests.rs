use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;

use super::*;
use crate::telemetry::{HttpFields, Telemetry};

fn telemetry(ring: usize, cap: usize) -> Arc<Telemetry> {
    let mut t = Telemetry::new(&mut Registry::default());
    t.decisions = Arc::new(Decisions::new(ring, cap));
    Arc::new(t)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

/// Drops an HTTP record from `principal` for `authority` with `code`, `flag`, `details`.
fn http(
    t: &Arc<Telemetry>,
    principal: Option<&str>,
    authority: &str,
    code: u16,
    flag: &'static str,
    details: Option<&'static str>,
) {
    let mut rec = Record::new(
        t.clone(),
        None,
        Kind::Http,
        addr("127.0.0.1:80"),
        addr("127.0.0.2:40000"),
        None,
    );
    rec.peer_principal = principal.map(Arc::from);
    rec.http = Some(Box::new(HttpFields {
        authority: authority.to_owned(),
        ..HttpFields::default()
    }));
    rec.response_code = code;
    rec.add_flag(flag);
    rec.details = details.map(Cow::Borrowed);
}

#[test]
fn outcomes_come_from_flags_and_details() {
    use Outcome::*;
    let denied = "rbac_access_denied_matched_policy[ns[istio-system]-policy[deny]-rule[0]]";
    // kind, code, flags, details, cluster → outcome
    type Case<'a> = (
        Kind,
        u16,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Outcome,
    );
    let table: &[Case] = &[
        (Kind::Http, 200, "-", Some("via_upstream"), None, Allowed),
        (Kind::Http, 404, "-", Some("via_upstream"), None, Allowed),
        (Kind::Http, 403, "-", Some(denied), None, Denied),
        (
            Kind::Tcp,
            0,
            "-",
            Some("rbac_access_denied_matched_policy[none]"),
            None,
            Denied,
        ),
        (
            Kind::Http,
            429,
            "RL",
            Some("local_rate_limited"),
            None,
            RateLimited,
        ),
        (Kind::Http, 500, "RLSE", None, None, RateLimited),
        (
            Kind::Http,
            502,
            "UH",
            Some("no_healthy_upstream"),
            Some("BlackHoleCluster"),
            Refused,
        ),
        (
            Kind::Http,
            404,
            "NR",
            Some("route_not_found"),
            None,
            Refused,
        ),
        (
            Kind::Connection,
            0,
            "NR",
            Some("filter_chain_not_found"),
            None,
            Refused,
        ),
        (
            Kind::Http,
            403,
            "-",
            Some("destination_ip_denied{loopback}"),
            None,
            Refused,
        ),
        (
            Kind::Http,
            403,
            "NR",
            Some("port_not_declared"),
            None,
            Refused,
        ),
        (
            Kind::Connection,
            0,
            "-",
            Some("mesh_mtls_handshake_failed"),
            None,
            Refused,
        ),
        (
            Kind::Http,
            503,
            "UF,URX",
            None,
            Some("outbound|443||a.com"),
            UpstreamError,
        ),
        (
            Kind::Http,
            503,
            "UO",
            Some("upstream_overflow"),
            None,
            UpstreamError,
        ),
        (
            Kind::Http,
            503,
            "UH",
            Some("no_healthy_upstream"),
            Some("outbound|443||a.com"),
            UpstreamError,
        ),
        (
            Kind::Tcp,
            0,
            "DF",
            Some("dns_resolution_failure"),
            None,
            UpstreamError,
        ),
        (
            Kind::Http,
            502,
            "-",
            Some("via_upstream"),
            None,
            UpstreamError,
        ),
        (Kind::Tcp, 0, "-", None, None, Allowed),
    ];
    for (kind, code, flags, details, cluster, want) in table {
        assert_eq!(
            Outcome::classify(*kind, *code, flags, *details, *cluster),
            *want,
            "{kind:?} {code} {flags} {details:?} {cluster:?}"
        );
    }
}

#[test]
fn a_denial_names_its_policy_and_rule() {
    let p = PolicyRef::from_details(
        "rbac_access_denied_matched_policy[ns[istio-system]-policy[deny-reporting]-rule[2]]",
    )
    .expect("parsed");
    assert_eq!(
        (p.namespace.as_str(), p.name.as_str(), p.rule),
        ("istio-system", "deny-reporting", Some(2))
    );
    let none = PolicyRef::from_details("rbac_access_denied_matched_policy[none]").expect("none");
    assert_eq!((none.name.as_str(), none.raw.as_str()), ("", "none"));
    assert_eq!(PolicyRef::from_details("route_not_found"), None);
    assert_eq!(
        PolicyRef::from_details("rbac_access_denied_matched_policy["),
        None
    );
}

#[test]
fn records_become_edges_and_recent_decisions() {
    let t = telemetry(10, 100);
    let frontend = "spiffe://cluster.local/ns/default/sa/frontend";
    http(&t, Some(frontend), "api.github.com", 200, "-", None);
    http(&t, Some(frontend), "api.github.com:443", 200, "-", None);
    http(
        &t,
        None,
        "api.github.com",
        403,
        "-",
        Some("rbac_access_denied_matched_policy[none]"),
    );
    http(
        &t,
        None,
        "api.github.com",
        429,
        "RL",
        Some("local_rate_limited"),
    );
    let map = t.decisions.map();
    let edge = |src: &str, outcome| {
        map.edges
            .iter()
            .find(|e| e.source == src && e.destination == "api.github.com" && e.outcome == outcome)
            .map(|e| (e.total, e.window, e.http))
    };
    assert_eq!(edge(frontend, Outcome::Allowed), Some((2, 2, 2)));
    assert_eq!(edge(UNIDENTIFIED, Outcome::Denied), Some((1, 1, 1)));
    assert_eq!(edge(UNIDENTIFIED, Outcome::RateLimited), Some((1, 1, 1)));
    assert_eq!(map.edges.len(), 3);
    let d = t.decisions.decisions(0);
    assert_eq!(d.decisions.len(), 4);
    assert_eq!(d.next, 4);
    let denied = &d.decisions[2];
    assert_eq!(denied.outcome, Outcome::Denied);
    assert_eq!(denied.code, 403);
    assert_eq!(denied.policy.as_ref().map(|p| p.raw.as_str()), Some("none"));
    assert_eq!(t.decisions.decisions(3).decisions.len(), 1);
}

#[test]
fn the_ring_and_the_edge_table_stay_bounded() {
    let t = telemetry(5, 3);
    for i in 0..20 {
        http(&t, None, &format!("h{i}.example.com"), 200, "-", None);
    }
    let d = t.decisions.decisions(0);
    assert_eq!(d.decisions.len(), 5, "the ring keeps the last five");
    assert_eq!(d.decisions[0].seq, 15);
    assert_eq!(d.decisions[4].destination, "h19.example.com");
    let map = t.decisions.map();
    let named: Vec<_> = map.edges.iter().filter(|e| !e.overflow).collect();
    assert_eq!(named.len(), 3);
    let other = map.edges.iter().find(|e| e.overflow).expect("other edge");
    assert_eq!((other.source.as_str(), other.total), (OTHER, 17));
    assert_eq!(map.overflowed, 17);
    // A known pair is still counted on its own edge when the table is full.
    http(&t, None, "h0.example.com", 200, "-", None);
    let map = t.decisions.map();
    let h0 = map
        .edges
        .iter()
        .find(|e| e.destination == "h0.example.com")
        .expect("h0");
    assert_eq!(h0.total, 2);
}

#[tokio::test(start_paused = true)]
async fn rates_cover_the_last_minute_only_and_idle_pairs_make_room() {
    let t = telemetry(10, 1);
    http(&t, None, "a.example.com", 200, "-", None);
    http(&t, None, "a.example.com", 200, "-", None);
    tokio::time::advance(Duration::from_secs(30)).await;
    http(&t, None, "a.example.com", 200, "-", None);
    let e = t.decisions.map().edges[0].clone();
    assert_eq!((e.total, e.window), (3, 3));
    tokio::time::advance(Duration::from_secs(40)).await;
    let e = t.decisions.map().edges[0].clone();
    assert_eq!((e.total, e.window, e.idle_seconds), (3, 1, 40));
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(t.decisions.map().edges[0].window, 0);
    // Full: a new pair goes to (other) until the idle one is evicted by a read.
    http(&t, None, "b.example.com", 200, "-", None);
    assert!(t.decisions.map().edges.iter().any(|e| e.overflow));
    tokio::time::advance(Duration::from_secs(IDLE_EVICT_SECS)).await;
    assert!(t.decisions.map().edges.iter().all(|e| e.overflow));
    http(&t, None, "b.example.com", 200, "-", None);
    let map = t.decisions.map();
    assert!(map.edges.iter().any(|e| e.destination == "b.example.com"));
}

#[test]
fn the_data_plane_never_waits_for_a_reader_and_a_full_queue_is_counted() {
    let t = telemetry(10, 10);
    // A reader holds the table: records still finish at once, queued.
    let held = t.decisions.state.inner.lock().expect("lock");
    for _ in 0..QUEUE + 10 {
        http(&t, None, "a.example.com", 200, "-", None);
    }
    drop(held);
    let map = t.decisions.map();
    let kept = map.edges.iter().map(|e| e.total).sum::<u64>();
    assert!(map.missed >= 9, "{} missed", map.missed);
    assert_eq!(kept + map.missed, QUEUE as u64 + 10);
    // Once the aggregator caught up, nothing is missed.
    http(&t, None, "a.example.com", 200, "-", None);
    assert_eq!(t.decisions.map().edges[0].total, kept + 1);
}

#[test]
fn destinations_drop_the_port() {
    assert_eq!(strip_port("a.com:8080"), "a.com");
    assert_eq!(strip_port("a.com"), "a.com");
    assert_eq!(strip_port("[::1]:80"), "::1");
    assert_eq!(strip_port("::1"), "::1");
    assert_eq!(into_host("a.com:8080".into()), "a.com");
    assert_eq!(into_host("[::1]:80".into()), "::1");
}

/// An allowed flow names the ALLOW rule that let it through (when ALLOW policies applied);
/// one no policy decided names none.
#[test]
fn an_allowed_decision_names_its_allow_rule() {
    let t = telemetry(10, 100);
    let mut rec = Record::new(
        t.clone(),
        None,
        Kind::Tcp,
        addr("127.0.0.1:443"),
        addr("127.0.0.2:40000"),
        Some("api.payment-provider.com".into()),
    );
    rec.allowed_by = Some(("ns[istio-system]-policy[payment-api-authz]".into(), 1));
    drop(rec);
    http(&t, None, "api.github.com", 200, "-", None);
    let d = t.decisions.decisions(0);
    let p = d.decisions[0].policy.as_ref().expect("the ALLOW rule");
    assert_eq!(d.decisions[0].outcome, Outcome::Allowed);
    assert_eq!(
        (
            p.namespace.as_str(),
            p.name.as_str(),
            p.rule,
            p.raw.as_str()
        ),
        (
            "istio-system",
            "payment-api-authz",
            Some(1),
            "ns[istio-system]-policy[payment-api-authz]-rule[1]"
        )
    );
    assert_eq!(d.decisions[1].policy, None);
}

/// Once decisions stop, the aggregator's looks space out to `IDLE_POLL` (an idle proxy's
/// thread wakes a few times a second, not every `POLL`), and a reader still sees at once what
/// was recorded before it asked: it wakes the aggregator.
#[test]
fn an_idle_aggregator_sleeps_and_a_reader_wakes_it() {
    let t = telemetry(10, 100);
    http(&t, None, "a.example.com", 200, "-", None);
    assert_eq!(t.decisions.map().edges[0].total, 1);
    // Well past the ramp from POLL to IDLE_POLL (25 + 50 + 100 + 200 ms < 1 s).
    std::thread::sleep(Duration::from_secs(1));
    let before = t.decisions.state.looks.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(1));
    let looks = t.decisions.state.looks.load(Ordering::Relaxed) - before;
    // A fixed POLL would look 40 times a second; IDLE_POLL at most 5 (+1 for a wake).
    assert!(looks <= 6, "{looks} looks in an idle second");
    http(&t, None, "a.example.com", 200, "-", None);
    assert_eq!(t.decisions.map().edges[0].total, 2, "seen by the next read");
}
