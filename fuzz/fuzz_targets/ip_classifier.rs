//! The destination IP guard (`sluice_proxy::upstream::guard`): `classify`, `Range`'s
//! `FromStr` (`--allow-range` / `--deny-range`) and `Guard::check`, the last word on which
//! addresses an upstream connection may be dialed to (SSRF, cloud metadata, loops).
//!
//! Input: byte 0 picks the address family (even: IPv4, odd: IPv6), then 4 or 16 address
//! bytes, 2 port bytes (big-endian); the rest is UTF-8 lines `allow <range>` / `deny <range>`
//! (any other line is parsed as a range and dropped).
//!
//! Invariants: never panics; an IPv4-mapped IPv6 address classifies as, and is checked as, its
//! IPv4 address (so are the forms the guard documents as carrying one: IPv4-compatible
//! `::a.b.c.d`, NAT64 `64:ff9b::/96` and 6to4 `2002::/16`); a parsed range parses back from
//! its `Display`.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use sluice_proxy::upstream::guard::{Guard, Range, canonical, classify};

fn range(s: &str) -> Option<Range> {
    let r: Range = s.parse().ok()?;
    let shown = r.to_string();
    let again: Range = shown
        .parse()
        .unwrap_or_else(|e| panic!("range {shown:?} (from {s:?}) does not parse back: {e}"));
    assert_eq!(again, r, "range {s:?} shown as {shown:?}");
    Some(r)
}

fuzz_target!(|data: &[u8]| {
    let Some((&family, rest)) = data.split_first() else {
        return;
    };
    let width = if family % 2 == 0 { 4 } else { 16 };
    if rest.len() < width + 2 {
        return;
    }
    let (addr_bytes, rest) = rest.split_at(width);
    let (port_bytes, rest) = rest.split_at(2);
    let ip = match <[u8; 16]>::try_from(addr_bytes) {
        Ok(b) => IpAddr::V6(Ipv6Addr::from(b)),
        Err(_) => IpAddr::V4(Ipv4Addr::new(
            addr_bytes[0],
            addr_bytes[1],
            addr_bytes[2],
            addr_bytes[3],
        )),
    };
    let port = u16::from_be_bytes([port_bytes[0], port_bytes[1]]);

    let (mut allow, mut deny) = (Vec::new(), Vec::new());
    for line in String::from_utf8_lossy(rest).lines() {
        if let Some(r) = line.strip_prefix("allow ") {
            allow.extend(range(r));
        } else if let Some(r) = line.strip_prefix("deny ") {
            deny.extend(range(r));
        } else {
            let _ = range(line);
        }
    }
    let guard = Guard::new(&allow, &deny);

    let class = classify(ip);
    let verdict = guard.check(SocketAddr::new(ip, port), &[]);
    if let Err(denied) = &verdict {
        let _ = denied.to_string();
        let _ = denied.reason_name();
    }

    match canonical(ip) {
        IpAddr::V4(v4) => {
            let mapped = IpAddr::V6(v4.to_ipv6_mapped());
            assert_eq!(
                classify(mapped),
                classify(IpAddr::V4(v4)),
                "{mapped} vs {v4}"
            );
            assert_eq!(
                guard.check(SocketAddr::new(mapped, port), &[]),
                guard.check(SocketAddr::new(IpAddr::V4(v4), port), &[]),
                "{mapped} checked unlike {v4}"
            );
            assert_eq!(class, classify(IpAddr::V4(v4)));

            let o = v4.octets();
            let carried = classify(IpAddr::V4(v4));
            // IPv4-compatible, except ::0.0.0.0 and ::0.0.0.1 (IPv6's unspecified, loopback).
            if u32::from(v4) > 1 {
                let compat = Ipv6Addr::from(u128::from(u32::from(v4)));
                assert_eq!(classify(IpAddr::V6(compat)), carried, "{compat}");
            }
            let nat64 = Ipv6Addr::new(
                0x64,
                0xff9b,
                0,
                0,
                0,
                0,
                u16::from_be_bytes([o[0], o[1]]),
                u16::from_be_bytes([o[2], o[3]]),
            );
            assert_eq!(classify(IpAddr::V6(nat64)), carried, "{nat64}");
            let six_to_four = Ipv6Addr::new(
                0x2002,
                u16::from_be_bytes([o[0], o[1]]),
                u16::from_be_bytes([o[2], o[3]]),
                0,
                0,
                0,
                0,
                1,
            );
            assert_eq!(classify(IpAddr::V6(six_to_four)), carried, "{six_to_four}");
        }
        IpAddr::V6(_) => {}
    }
});
