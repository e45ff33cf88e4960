//! Microbenchmarks of the two per-request lookups on the snapshot: choosing the virtual host for
//! an authority (`route::select_virtual_host`) and deciding a request against the
//! AuthorizationPolicies (`authz::Policies::evaluate`), at growing config sizes.
//!
//! `cargo bench -p sluice-snapshot` (add `-- --quick` for a short run). The numbers show how the
//! cost grows with the number of hosts and policies: a lookup whose time grows in step with
//! them scans every entry.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sluice_snapshot::HostMatch;
use sluice_snapshot::authz::{
    Condition, Glob, PathMatch, Peer, Policies, Policy, Request, Rule, StrMatch, Values,
};
use sluice_snapshot::route::{VirtualHost, VirtualHostIndex, select_virtual_host};

const SIZES: [usize; 3] = [10, 1_000, 10_000];
const POLICY_COUNTS: [usize; 3] = [1, 100, 1_000];

/// `n` virtual hosts with one exact domain each (`svc-<i>.example.com`, in order), then a few
/// wildcard ones, as a Gateway port with many VirtualService hosts compiles to.
fn vhosts(n: usize) -> Vec<VirtualHost> {
    let mut v: Vec<VirtualHost> = (0..n)
        .map(|i| VirtualHost {
            name: format!("svc-{i}.example.com:80"),
            domains: vec![HostMatch::parse(&format!("svc-{i}.example.com"))],
            routes: Vec::new(),
        })
        .collect();
    for w in [
        "*.wild-a.example.org",
        "*.wild-b.example.org",
        "*.example.net",
    ] {
        v.push(VirtualHost {
            name: format!("{w}:80"),
            domains: vec![HostMatch::parse(w)],
            routes: Vec::new(),
        });
    }
    v
}

fn route_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("select_virtual_host");
    for n in SIZES {
        let vh = vhosts(n);
        let last = format!("svc-{}.example.com", n - 1);
        assert!(select_virtual_host(&vh, &last).is_some());
        assert!(select_virtual_host(&vh, "x.wild-b.example.org").is_some());
        assert!(select_virtual_host(&vh, "absent.example.com").is_none());
        g.bench_with_input(BenchmarkId::new("exact_hit_last", n), &vh, |b, vh| {
            b.iter(|| select_virtual_host(black_box(vh), black_box(&last)))
        });
        g.bench_with_input(BenchmarkId::new("wildcard_hit", n), &vh, |b, vh| {
            b.iter(|| select_virtual_host(black_box(vh), black_box("x.wild-b.example.org")))
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &vh, |b, vh| {
            b.iter(|| select_virtual_host(black_box(vh), black_box("absent.example.com")))
        });
    }
    g.finish();

    // What the proxy uses per request: the index built once per chain.
    let mut g = c.benchmark_group("virtual_host_index");
    for n in SIZES {
        let vh = vhosts(n);
        let index = VirtualHostIndex::new(&vh);
        let last = format!("svc-{}.example.com", n - 1);
        for host in [last.as_str(), "x.wild-b.example.org", "absent.example.com"] {
            assert_eq!(
                index.select(host).map(|i| &vh[i].name),
                select_virtual_host(&vh, host).map(|v| &v.name),
                "{host}"
            );
        }
        g.bench_with_input(BenchmarkId::new("exact_hit_last", n), &index, |b, ix| {
            b.iter(|| ix.select(black_box(&last)))
        });
        g.bench_with_input(BenchmarkId::new("wildcard_hit", n), &index, |b, ix| {
            b.iter(|| ix.select(black_box("x.wild-b.example.org")))
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &index, |b, ix| {
            b.iter(|| ix.select(black_box("absent.example.com")))
        });
    }
    g.finish();
}

fn values<T>(v: Vec<T>) -> Values<T> {
    Values::new(v, Vec::new())
}

/// `n` policies: every tenth a DENY (a namespace that is never the caller's, or admin paths of
/// one host), the rest ALLOW for one principal, one host and one path prefix each — the shape
/// of per-team egress policies.
fn policies(n: usize) -> Policies {
    let mut p = Policies::default();
    for i in 0..n {
        let name = format!("p-{i:05}");
        if n > 1 && i % 10 == 5 {
            p.deny.push(Policy::new(
                "istio-system",
                &name,
                vec![
                    Rule {
                        from: vec![vec![Condition::Namespace(values(vec![Glob(format!(
                            "blocked-{i}"
                        ))]))]],
                        ..Rule::default()
                    },
                    Rule {
                        to: vec![vec![
                            Condition::Host(values(vec![StrMatch::parse(&format!(
                                "svc-{i}.example.com"
                            ))])),
                            Condition::Path(values(vec![
                                PathMatch::parse("/admin*").expect("path"),
                            ])),
                        ]],
                        ..Rule::default()
                    },
                ],
            ));
        } else {
            p.allow.push(Policy::new(
                "istio-system",
                &name,
                vec![Rule {
                    from: vec![vec![Condition::Principal(values(vec![StrMatch::parse(
                        &format!("cluster.local/ns/team-{i}/sa/app-{i}"),
                    )]))]],
                    to: vec![vec![
                        Condition::Host(values(vec![
                            StrMatch::parse(&format!("svc-{i}.example.com")),
                            StrMatch::parse(&format!("*.svc-{i}.example.org")),
                        ])),
                        Condition::Path(values(vec![
                            PathMatch::parse(&format!("/api/{i}/*")).expect("path"),
                        ])),
                    ]],
                    ..Rule::default()
                }],
            ));
        }
    }
    p
}

fn request(principal_of: usize, host: &str, path: &str) -> Request {
    Request::new(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), 443)
        .with_peer(Peer::from_spiffe(&format!(
            "spiffe://cluster.local/ns/team-{principal_of}/sa/app-{principal_of}"
        )))
        .with_host(host)
        .with_http("GET", path)
}

fn authz(c: &mut Criterion) {
    let mut g = c.benchmark_group("authz_evaluate");
    for n in POLICY_COUNTS {
        let p = policies(n);
        // The last ALLOW policy's caller: every DENY and every ALLOW before it is tried.
        let last = if n == 1 {
            0
        } else {
            (0..n).rev().find(|i| i % 10 != 5).expect("allow")
        };
        let allowed = request(
            last,
            &format!("svc-{last}.example.com"),
            &format!("/api/{last}/items"),
        );
        assert!(p.evaluate(&allowed).allowed);
        // Nobody's: no rule matches, denied after the full scan.
        let denied = request(n + 7, "unknown.example.com", "/");
        assert!(!p.evaluate(&denied).allowed);
        g.bench_with_input(BenchmarkId::new("allow_last", n), &p, |b, p| {
            b.iter(|| p.evaluate(black_box(&allowed)).allowed)
        });
        g.bench_with_input(BenchmarkId::new("deny_no_match", n), &p, |b, p| {
            b.iter(|| p.evaluate(black_box(&denied)).allowed)
        });
        if n > 1 {
            // Hits the first DENY policy's admin-path rule: stops early.
            let admin = request(5, "svc-5.example.com", "/admin/users");
            assert!(!p.evaluate(&admin).allowed);
            g.bench_with_input(BenchmarkId::new("deny_first_hit", n), &p, |b, p| {
                b.iter(|| p.evaluate(black_box(&admin)).allowed)
            });
        }
    }
    g.finish();
}

criterion_group!(benches, route_lookup, authz);
criterion_main!(benches);
