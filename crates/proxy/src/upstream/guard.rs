//! The destination IP guard: which addresses an upstream connection may be dialed to.
//!
//! An allowed *name* proves nothing about the address it resolves to: `api.example.com` may
//! answer 169.254.169.254 (cloud metadata), 127.0.0.1, or the gateway's own address. So the
//! decision is made on every address the resolver returned, after resolution, and only an
//! address that passed is dialed (the candidate keeps it: nothing is resolved again between
//! the check and the connect, so a rebinding DNS server cannot move a connection).
//!
//! The rules, in order:
//! 1. The proxy's own listening sockets are never dialed (a request addressed to the gateway
//!    would loop back into it), whatever else is allowed.
//! 2. The most specific matching range wins — the operator's `--allow-range` / `--deny-range`
//!    (`CIDR[:PORT]`) and the addresses a cluster's ServiceEntry names explicitly (STATIC
//!    endpoint IPs, `spec.addresses`), which count as allow ranges. A longer prefix is more
//!    specific; at equal prefixes a range with a port beats one without; a deny wins a tie.
//! 3. No range matches: the address's class decides. Every special-purpose class (loopback,
//!    private, link-local, CGNAT, documentation, multicast, …) is denied; public addresses
//!    are allowed. IPv6 forms that carry an IPv4 address (v4-mapped, v4-compatible, NAT64,
//!    6to4, Teredo) are classified by the address they carry.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::RwLock;

use ipnet::IpNet;

/// What an address is, for the guard's default decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Public,
    Unspecified,
    Loopback,
    /// 169.254/16, fe80::/10: cloud metadata services live here.
    LinkLocal,
    /// RFC 1918.
    Private,
    /// fc00::/7.
    UniqueLocal,
    /// fec0::/10 (deprecated, still routed by some networks).
    SiteLocal,
    /// 100.64/10, carrier-grade NAT (also Alibaba's metadata service).
    SharedAddressSpace,
    /// 198.18/15.
    Benchmarking,
    /// 0/8: "this network".
    ThisNetwork,
    /// 192.0.0/24, 2001::/23 outside Teredo.
    ProtocolAssignments,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    Multicast,
    Broadcast,
    /// 240/4, 192.88.99/24 (the retired 6to4 relay anycast), 100::/64 (discard-only).
    Reserved,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Public => "public",
            Class::Unspecified => "unspecified",
            Class::Loopback => "loopback",
            Class::LinkLocal => "link_local",
            Class::Private => "private",
            Class::UniqueLocal => "unique_local",
            Class::SiteLocal => "site_local",
            Class::SharedAddressSpace => "shared_address_space",
            Class::Benchmarking => "benchmarking",
            Class::ThisNetwork => "this_network",
            Class::ProtocolAssignments => "protocol_assignments",
            Class::Documentation => "documentation",
            Class::Multicast => "multicast",
            Class::Broadcast => "broadcast",
            Class::Reserved => "reserved",
        }
    }
}

/// The class of `ip`; an IPv6 address that carries an IPv4 one takes the carried address's
/// class (Teredo carries two: the first one that is not public).
pub fn classify(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Class {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        _ if ip.is_unspecified() => Class::Unspecified,
        _ if ip.is_broadcast() => Class::Broadcast,
        (0, _, _) => Class::ThisNetwork,
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => Class::Private,
        (100, 64..=127, _) => Class::SharedAddressSpace,
        (127, _, _) => Class::Loopback,
        (169, 254, _) => Class::LinkLocal,
        (192, 0, 0) => Class::ProtocolAssignments,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => Class::Documentation,
        (192, 88, 99) => Class::Reserved,
        (198, 18..=19, _) => Class::Benchmarking,
        (224..=239, _, _) => Class::Multicast,
        (240..=255, _, _) => Class::Reserved,
        _ => Class::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> Class {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let s = ip.segments();
    let o = ip.octets();
    let v4 = |a: usize, b: usize, c: usize, d: usize| Ipv4Addr::new(o[a], o[b], o[c], o[d]);
    match s {
        [0, 0, 0, 0, 0, 0, 0, 0] => Class::Unspecified,
        [0, 0, 0, 0, 0, 0, 0, 1] => Class::Loopback,
        // IPv4-compatible (::a.b.c.d, deprecated; still routed as IPv4 by some stacks).
        [0, 0, 0, 0, 0, 0, _, _] => classify_v4(v4(12, 13, 14, 15)),
        // NAT64, well-known prefix (RFC 6052): the IPv4 address in the last 32 bits.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => classify_v4(v4(12, 13, 14, 15)),
        // Local-use NAT64 (RFC 8215), /48 layout of RFC 6052: bits 48..64 and 72..88.
        [0x64, 0xff9b, 1, ..] => classify_v4(v4(6, 7, 9, 10)),
        // 6to4 (RFC 3056): 2002:AABB:CCDD::/48.
        [0x2002, ..] => classify_v4(v4(2, 3, 4, 5)),
        // Teredo (RFC 4380): the server's address, and the client's inverted.
        [0x2001, 0, ..] => {
            let server = classify_v4(v4(4, 5, 6, 7));
            let client = classify_v4(Ipv4Addr::from(!u32::from(v4(12, 13, 14, 15))));
            if server != Class::Public {
                server
            } else {
                client
            }
        }
        [0x2001, 0xdb8, ..] => Class::Documentation,
        [x, ..] if x & 0xfff0 == 0x3ff0 => Class::Documentation,
        [0x2001, y, ..] if y < 0x200 => Class::ProtocolAssignments,
        [0x100, 0, 0, 0, ..] => Class::Reserved,
        [x, ..] if x & 0xffc0 == 0xfe80 => Class::LinkLocal,
        [x, ..] if x & 0xffc0 == 0xfec0 => Class::SiteLocal,
        [x, ..] if x & 0xfe00 == 0xfc00 => Class::UniqueLocal,
        [x, ..] if x & 0xff00 == 0xff00 => Class::Multicast,
        _ => Class::Public,
    }
}

/// The address as it is dialed: an IPv4-mapped IPv6 address is the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

/// `--allow-range` / `--deny-range`: `CIDR[:PORT]` (`10.0.0.0/8`, `10.1.2.3:443`,
/// `[fd00::/8]:443`, `fd00::/8`); a bare address is a host range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub net: IpNet,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not CIDR[:PORT] (10.0.0.0/8, 10.1.2.3:443, [fd00::/8]:443): {reason}")]
pub struct RangeError {
    input: String,
    reason: &'static str,
}

impl FromStr for Range {
    type Err = RangeError;

    fn from_str(s: &str) -> Result<Range, RangeError> {
        let err = |reason| RangeError {
            input: s.to_owned(),
            reason,
        };
        let s = s.trim();
        let (net, port) = if let Some(rest) = s.strip_prefix('[') {
            let (net, after) = rest.split_once(']').ok_or_else(|| err("no closing ]"))?;
            match after {
                "" => (net, None),
                p => (
                    net,
                    Some(p.strip_prefix(':').ok_or_else(|| err("junk after ]"))?),
                ),
            }
        } else if s.matches(':').count() == 1 {
            let (net, port) = s.split_once(':').expect("one colon");
            (net, Some(port))
        } else {
            (s, None)
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(err("the port is not 1-65535")),
                Ok(p) => Some(p),
            },
        };
        let net = match net.parse::<IpNet>() {
            Ok(n) => n,
            Err(_) => IpNet::from(net.parse::<IpAddr>().map_err(|_| err("not an address"))?),
        };
        // `10.1.2.3/8` most likely means a typo: say so rather than widen it silently.
        if net.network() != net.addr() {
            return Err(err("host bits are set (did you mean the network address?)"));
        }
        let net = match canonical(net.addr()) {
            IpAddr::V4(v4) if net.addr().is_ipv6() => {
                IpNet::new(IpAddr::V4(v4), net.prefix_len().saturating_sub(96))
                    .map_err(|_| err("bad prefix"))?
            }
            _ => net,
        };
        Ok(Range { net, port })
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.net) {
            (None, net) => write!(f, "{net}"),
            (Some(p), IpNet::V6(net)) => write!(f, "[{net}]:{p}"),
            (Some(p), net) => write!(f, "{net}:{p}"),
        }
    }
}

impl Range {
    fn matches(&self, addr: SocketAddr) -> bool {
        self.net.contains(&addr.ip()) && self.port.is_none_or(|p| p == addr.port())
    }

    /// How specific the range is: a longer prefix, then a port.
    fn rank(&self) -> (u8, bool) {
        (self.net.prefix_len(), self.port.is_some())
    }
}

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// One of the proxy's own listening sockets.
    Own,
    /// An operator's `--deny-range`.
    DenyRange(String),
    /// Its class, with no range allowing it.
    Class(Class),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("destination {addr} denied: {}", self.describe())]
pub struct Denied {
    pub addr: SocketAddr,
    pub reason: Reason,
}

impl Denied {
    /// The reason as a word, for response details and metric labels.
    pub fn reason_name(&self) -> &'static str {
        match &self.reason {
            Reason::Own => "own_address",
            Reason::DenyRange(_) => "deny_range",
            Reason::Class(c) => c.name(),
        }
    }

    fn describe(&self) -> String {
        match &self.reason {
            Reason::Own => "it is this proxy's own listening address (a loop)".into(),
            Reason::DenyRange(r) => format!("--deny-range {r}"),
            Reason::Class(c) => format!(
                "{} addresses are denied unless --allow-range or the ServiceEntry names them",
                c.name()
            ),
        }
    }
}

/// The proxy's own listening sockets, as the guard sees them.
#[derive(Debug, Default)]
struct Own {
    /// Bound to a specific address.
    exact: Vec<SocketAddr>,
    /// Ports bound on an unspecified address: every local address reaches them.
    any_port: Vec<u16>,
    /// This host's addresses (loopback ranges are always local).
    local: Vec<IpAddr>,
}

impl Own {
    fn contains(&self, addr: SocketAddr) -> bool {
        self.exact.contains(&addr)
            || (self.any_port.contains(&addr.port())
                && (addr.ip().is_loopback()
                    || addr.ip().is_unspecified()
                    || self.local.contains(&addr.ip())))
    }
}

/// The guard's rules for the life of the proxy, and its own listening sockets.
#[derive(Debug, Default)]
pub struct Guard {
    /// The operator's ranges, most specific first.
    ranges: Vec<(Range, Action)>,
    own: RwLock<Own>,
}

impl Guard {
    pub fn new(allow: &[Range], deny: &[Range]) -> Guard {
        let mut ranges: Vec<(Range, Action)> = allow
            .iter()
            .map(|r| (r.clone(), Action::Allow))
            .chain(deny.iter().map(|r| (r.clone(), Action::Deny)))
            .collect();
        // Most specific first; a deny before an allow of the same rank.
        ranges.sort_by_key(|(r, a)| (std::cmp::Reverse(r.rank()), *a == Action::Allow));
        Guard {
            ranges,
            own: RwLock::new(Own::default()),
        }
    }

    /// The sockets this proxy listens on now (its listeners, admin, explicit proxy).
    pub fn set_listening(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let mut own = Own::default();
        for a in addrs {
            let a = SocketAddr::new(canonical(a.ip()), a.port());
            if a.ip().is_unspecified() {
                own.any_port.push(a.port());
            } else {
                own.exact.push(a);
            }
        }
        if !own.any_port.is_empty() {
            own.local = local_addresses();
        }
        *self.own.write().unwrap_or_else(|p| p.into_inner()) = own;
    }

    /// Re-reads this host's addresses (interfaces come and go) when a listener is bound to
    /// an unspecified address.
    pub fn refresh_local(&self) {
        let wanted = !self
            .own
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .any_port
            .is_empty();
        if wanted {
            let local = local_addresses();
            self.own.write().unwrap_or_else(|p| p.into_inner()).local = local;
        }
    }

    /// May `addr` be dialed? `named` are the addresses the cluster's ServiceEntry names
    /// explicitly (allow ranges of their own prefix length).
    pub fn check(&self, addr: SocketAddr, named: &[IpNet]) -> Result<(), Denied> {
        self.checker().check(addr, named)
    }

    /// The guard with its view of the proxy's own sockets taken once, for checking every
    /// address of one answer.
    pub fn checker(&self) -> Checker<'_> {
        Checker {
            guard: self,
            own: self.own.read().unwrap_or_else(|p| p.into_inner()),
        }
    }
}

/// [`Guard::checker`]: the guard, its own sockets read-locked.
pub struct Checker<'a> {
    guard: &'a Guard,
    own: std::sync::RwLockReadGuard<'a, Own>,
}

impl Checker<'_> {
    /// [`Guard::check`].
    pub fn check(&self, addr: SocketAddr, named: &[IpNet]) -> Result<(), Denied> {
        let addr = SocketAddr::new(canonical(addr.ip()), addr.port());
        let denied = |reason| Err(Denied { addr, reason });
        if self.own.contains(addr) {
            return denied(Reason::Own);
        }
        let operator = self.guard.ranges.iter().find(|(r, _)| r.matches(addr));
        let explicit = named
            .iter()
            .filter(|n| n.contains(&addr.ip()))
            .map(IpNet::prefix_len)
            .max();
        match (operator, explicit) {
            (Some((r, Action::Deny)), e) if e.is_none_or(|len| (len, false) <= r.rank()) => {
                denied(Reason::DenyRange(r.to_string()))
            }
            (Some((_, Action::Allow)), _) | (_, Some(_)) => Ok(()),
            _ => match classify(addr.ip()) {
                Class::Public => Ok(()),
                class => denied(Reason::Class(class)),
            },
        }
    }
}

fn local_addresses() -> Vec<IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(ifs) => ifs.into_iter().map(|i| canonical(i.ip())).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "listing this host's addresses for the loop guard");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid")
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("valid")
    }

    #[test]
    fn every_special_purpose_v4_range_is_classified() {
        let table = [
            ("0.0.0.0", Class::Unspecified),
            ("0.1.2.3", Class::ThisNetwork),
            ("10.0.0.1", Class::Private),
            ("10.255.255.255", Class::Private),
            ("172.16.0.1", Class::Private),
            ("172.31.255.255", Class::Private),
            ("172.32.0.1", Class::Public),
            ("172.15.255.255", Class::Public),
            ("192.168.1.1", Class::Private),
            ("100.64.0.1", Class::SharedAddressSpace),
            ("100.100.100.200", Class::SharedAddressSpace),
            ("100.127.255.255", Class::SharedAddressSpace),
            ("100.128.0.1", Class::Public),
            ("127.0.0.1", Class::Loopback),
            ("127.255.255.254", Class::Loopback),
            ("169.254.169.254", Class::LinkLocal),
            ("192.0.0.8", Class::ProtocolAssignments),
            ("192.0.2.1", Class::Documentation),
            ("198.51.100.7", Class::Documentation),
            ("203.0.113.9", Class::Documentation),
            ("192.88.99.1", Class::Reserved),
            ("198.18.0.1", Class::Benchmarking),
            ("198.19.255.255", Class::Benchmarking),
            ("198.20.0.1", Class::Public),
            ("224.0.0.1", Class::Multicast),
            ("239.255.255.250", Class::Multicast),
            ("240.0.0.1", Class::Reserved),
            ("255.255.255.254", Class::Reserved),
            ("255.255.255.255", Class::Broadcast),
            ("8.8.8.8", Class::Public),
            ("1.1.1.1", Class::Public),
            ("93.184.216.34", Class::Public),
        ];
        for (a, class) in table {
            assert_eq!(classify(ip(a)), class, "{a}");
        }
    }

    #[test]
    fn v6_ranges_and_embedded_v4_are_classified() {
        let table = [
            ("::", Class::Unspecified),
            ("::1", Class::Loopback),
            ("fe80::1", Class::LinkLocal),
            ("febf::1", Class::LinkLocal),
            ("fec0::1", Class::SiteLocal),
            ("fc00::1", Class::UniqueLocal),
            ("fd00:ec2::254", Class::UniqueLocal),
            ("ff02::1", Class::Multicast),
            ("2001:db8::1", Class::Documentation),
            ("3fff::1", Class::Documentation),
            ("100::1", Class::Reserved),
            ("2001:4860:4860::8888", Class::Public),
            ("2606:4700::1111", Class::Public),
            ("2001:2::1", Class::ProtocolAssignments),
            // v4-mapped and v4-compatible.
            ("::ffff:127.0.0.1", Class::Loopback),
            ("::ffff:169.254.169.254", Class::LinkLocal),
            ("::ffff:8.8.8.8", Class::Public),
            ("::127.0.0.1", Class::Loopback),
            ("::10.0.0.1", Class::Private),
            // NAT64 well-known prefix and local-use /48.
            ("64:ff9b::7f00:1", Class::Loopback),
            ("64:ff9b::a9fe:a9fe", Class::LinkLocal),
            ("64:ff9b::808:808", Class::Public),
            ("64:ff9b:1:7f00:0:100::", Class::Loopback),
            ("64:ff9b:1:a9fe:a9:fe00::", Class::LinkLocal),
            ("64:ff9b:1:808:8:800::", Class::Public),
            // 6to4.
            ("2002:7f00:1::1", Class::Loopback),
            ("2002:a9fe:a9fe::", Class::LinkLocal),
            ("2002:0a00:0001::", Class::Private),
            ("2002:808:808::1", Class::Public),
            // Teredo: server 8.8.8.8, client 127.0.0.1 inverted (80ff:fffe).
            ("2001:0:808:808::80ff:fffe", Class::Loopback),
            // Teredo: server 10.0.0.1.
            ("2001:0:a00:1::f7f7:f7f7", Class::Private),
            // Teredo: both public (client 8.8.4.4 inverted: f7f7:fbfb).
            ("2001:0:808:808::f7f7:fbfb", Class::Public),
        ];
        for (a, class) in table {
            assert_eq!(classify(ip(a)), class, "{a}");
        }
    }

    #[test]
    fn classify_never_panics() {
        for i in 0..=u16::MAX {
            let _ = classify(IpAddr::V4(Ipv4Addr::from(u32::from(i) << 16 | 0x0101)));
            let _ = classify(IpAddr::V6(Ipv6Addr::from(u128::from(i) << 112 | 1)));
        }
    }

    #[test]
    fn ranges_parse_with_and_without_ports() {
        let ok = [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.0.0.0/8:443", "10.0.0.0/8:443"),
            ("10.1.2.3", "10.1.2.3/32"),
            ("10.1.2.3:443", "10.1.2.3/32:443"),
            ("fd00::/8", "fd00::/8"),
            ("[fd00::/8]:443", "[fd00::/8]:443"),
            ("[::1]", "::1/128"),
            ("::ffff:127.0.0.0/104", "127.0.0.0/8"),
        ];
        for (input, shown) in ok {
            let r: Range = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), shown);
        }
        for bad in [
            "",
            "10.0.0.0/33",
            "10.1.2.3/8",
            "10.0.0.0/8:0",
            "10.0.0.0/8:65536",
            "10.0.0.0/8:x",
            "[fd00::/8",
            "[fd00::/8]x",
            "example.com",
            "10.0.0.0/8:443:1",
        ] {
            assert!(bad.parse::<Range>().is_err(), "{bad:?} accepted");
        }
    }

    fn guard(allow: &[&str], deny: &[&str]) -> Guard {
        let parse = |v: &[&str]| {
            v.iter()
                .map(|s| s.parse().expect("valid"))
                .collect::<Vec<_>>()
        };
        Guard::new(&parse(allow), &parse(deny))
    }

    #[test]
    fn special_addresses_are_denied_by_default_and_public_ones_allowed() {
        let g = guard(&[], &[]);
        assert_eq!(
            g.check(sa("169.254.169.254:80"), &[])
                .expect_err("denied")
                .reason,
            Reason::Class(Class::LinkLocal)
        );
        assert_eq!(
            g.check(sa("[::ffff:127.0.0.1]:80"), &[])
                .expect_err("denied")
                .reason,
            Reason::Class(Class::Loopback)
        );
        assert!(g.check(sa("8.8.8.8:443"), &[]).is_ok());
    }

    #[test]
    fn the_most_specific_range_wins_and_deny_wins_ties() {
        let g = guard(
            &["127.0.10.0/24", "10.0.0.0/8", "10.9.0.0/16:443"],
            &["127.0.10.7/32", "10.9.0.0/16", "8.8.0.0/16"],
        );
        assert!(g.check(sa("127.0.10.1:80"), &[]).is_ok());
        assert_eq!(
            g.check(sa("127.0.10.7:80"), &[])
                .expect_err("denied")
                .reason_name(),
            "deny_range"
        );
        assert_eq!(
            g.check(sa("127.0.11.1:80"), &[])
                .expect_err("denied")
                .reason_name(),
            "loopback"
        );
        assert!(g.check(sa("10.1.2.3:80"), &[]).is_ok());
        // The port makes the allow more specific than the deny of the same prefix.
        assert!(g.check(sa("10.9.1.1:443"), &[]).is_ok());
        assert!(g.check(sa("10.9.1.1:80"), &[]).is_err());
        assert!(g.check(sa("8.8.8.8:53"), &[]).is_err());
        let tie = guard(&["10.0.0.0/8"], &["10.0.0.0/8"]);
        assert!(tie.check(sa("10.0.0.1:80"), &[]).is_err());
    }

    #[test]
    fn service_entry_addresses_are_exceptions_of_their_own_prefix() {
        let g = guard(&[], &["10.0.0.0/8"]);
        let named: Vec<IpNet> = vec!["10.1.2.3/32".parse().expect("net")];
        assert!(g.check(sa("10.1.2.3:80"), &named).is_ok());
        assert!(g.check(sa("10.1.2.4:80"), &named).is_err());
        let named: Vec<IpNet> = vec!["169.254.169.254/32".parse().expect("net")];
        assert!(
            guard(&[], &[])
                .check(sa("169.254.169.254:80"), &named)
                .is_ok()
        );
        // An operator's deny as specific as the exception still wins.
        let g = guard(&[], &["10.1.2.3/32"]);
        let named: Vec<IpNet> = vec!["10.1.2.3/32".parse().expect("net")];
        assert!(g.check(sa("10.1.2.3:80"), &named).is_err());
    }

    #[test]
    fn own_listening_sockets_are_never_dialed() {
        let g = guard(&["127.0.0.0/8", "10.0.0.0/8"], &[]);
        g.set_listening([sa("127.0.0.5:443"), sa("0.0.0.0:15000")]);
        let named: Vec<IpNet> = vec!["127.0.0.5/32".parse().expect("net")];
        assert_eq!(
            g.check(sa("127.0.0.5:443"), &named)
                .expect_err("denied")
                .reason,
            Reason::Own
        );
        assert!(g.check(sa("127.0.0.6:443"), &[]).is_ok());
        // Bound to 0.0.0.0: every loopback address and every local interface reaches it.
        assert!(g.check(sa("127.9.9.9:15000"), &[]).is_err());
        assert!(g.check(sa("[::ffff:127.0.0.1]:15000"), &[]).is_err());
        assert!(g.check(sa("0.0.0.0:15000"), &[]).is_err());
        for local in local_addresses() {
            assert!(
                g.check(SocketAddr::new(local, 15000), &[]).is_err(),
                "{local}"
            );
        }
        assert!(g.check(sa("10.200.0.1:15001"), &[]).is_ok());
    }
}
