//! `sluice_proxy::authority`: the one canonical spelling of host names and authorities that
//! routes, policies and dials see (CONNECT targets, Host headers, absolute URIs, SNI).
//!
//! Invariants:
//! - never panics;
//! - canonical forms are fixed points: parsing the `Display` of a parsed `Authority` or `Host`
//!   gives the same value and the same text, and `name(name(s)) == name(s)`;
//! - a canonical name is lower-case ASCII with no empty label and no trailing dot, and is not
//!   read as an IP address;
//! - `Authority::parse` and `Host::parse` agree on a host without a port;
//! - `same_authority` / `same_host` hold between an input and its canonical form;
//! - `canonical_name_authority` (the per-request fast path) takes only what `Authority::parse`
//!   parses to that name and prints back unchanged.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use sluice_proxy::authority::{self, Authority, Host};

fn check_name(n: &str) {
    assert!(!n.is_empty());
    assert!(n.is_ascii(), "non-ASCII canonical name {n:?}");
    assert_eq!(n, n.to_ascii_lowercase(), "canonical name not lower-case");
    assert!(!n.ends_with('.'), "trailing dot in {n:?}");
    assert!(
        n.split('.').all(|l| !l.is_empty() && l.len() <= 63),
        "{n:?}"
    );
    assert!(n.len() <= 253, "{n:?}");
    assert!(
        n.parse::<IpAddr>().is_err(),
        "canonical name {n:?} is an IP"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(n) = authority::name(s) {
        check_name(&n);
        assert_eq!(
            authority::name(&n).as_ref(),
            Ok(&n),
            "name() not idempotent"
        );
    }

    let host = Host::parse(s);
    if let Ok(h) = &host {
        if let Host::Name(n) = h {
            check_name(n);
        }
        let shown = h.to_string();
        let again = Host::parse(&shown);
        assert_eq!(again.as_ref(), Ok(h), "Host {shown:?} does not parse back");
        assert_eq!(again.map(|h| h.to_string()).as_deref(), Ok(shown.as_str()));
        assert!(authority::same_host(s, &shown));
    }

    let auth = Authority::parse(s);
    // The per-request fast path agrees with the long way: what it takes as canonical parses to
    // that very name and prints back as the input.
    if let Some(host) = authority::canonical_name_authority(s) {
        let a = auth
            .as_ref()
            .expect("the fast path took what Authority::parse refuses");
        assert_eq!(a.host, Host::Name(host.to_owned()));
        assert_eq!(
            a.to_string(),
            s,
            "the fast path took a non-canonical authority"
        );
    }
    if let Ok(a) = &auth {
        if let Host::Name(n) = &a.host {
            check_name(n);
        }
        if let Some(p) = a.port {
            assert_ne!(p, 0, "port 0 accepted");
        }
        let shown = a.to_string();
        let again = Authority::parse(&shown);
        assert_eq!(
            again.as_ref(),
            Ok(a),
            "Authority {shown:?} does not parse back"
        );
        assert_eq!(again.map(|a| a.to_string()).as_deref(), Ok(shown.as_str()));
        assert!(authority::same_authority(s, &shown));
        if a.port.is_none() {
            assert_eq!(
                host.as_ref(),
                Ok(&a.host),
                "Host and Authority disagree on {s:?}"
            );
        }
        match Authority::parse_with_port(s) {
            Ok((h, p)) => assert_eq!((Some(&h), Some(p)), (Some(&a.host), a.port)),
            Err(_) => assert!(a.port.is_none()),
        }
    } else {
        assert!(Authority::parse_with_port(s).is_err());
    }
});
