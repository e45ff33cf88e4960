//! Host names and authorities as the proxy decides on them: one canonical spelling before any
//! route, policy or dial sees them, so that two spellings of one destination can never be
//! decided differently.
//!
//! - Names are lower-cased, one trailing dot is dropped, internationalised names become
//!   punycode (IDNA); an empty label (`a..b`, `.a`, `a..`) or a label longer than 63 bytes is
//!   refused, and so is a name whose last label is numeric or hexadecimal (`2130706433`,
//!   `0x7f.1`): a C resolver reads those as IPv4 addresses.
//! - IP literals are canonical: IPv6 in brackets, compressed and lower-case; an IPv4-mapped
//!   IPv6 address is the IPv4 address; an IPv6 address without brackets is refused in an
//!   authority.
//! - A port is 1–65535 in decimal, nothing after it.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?}: {reason}")]
pub struct Invalid {
    pub input: String,
    pub reason: &'static str,
}

fn invalid(input: &str, reason: &'static str) -> Invalid {
    let mut input = input.to_owned();
    if input.len() > 300 {
        let mut cut = 300;
        while !input.is_char_boundary(cut) {
            cut -= 1;
        }
        input.truncate(cut);
    }
    Invalid { input, reason }
}

/// A destination host, canonical.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl Host {
    /// A bare host (no port): a name or an IP literal (IPv6 with or without brackets).
    pub fn parse(s: &str) -> Result<Host, Invalid> {
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| invalid(s, "unterminated IPv6 literal"))?;
            return inner
                .parse::<Ipv6Addr>()
                .map(|v6| Host::Ip(canonical_ip(IpAddr::V6(v6))))
                .map_err(|_| invalid(s, "not an IPv6 address"));
        }
        // An IP literal ends in a digit or holds a colon; trying the IP parsers only then
        // spares every name (most hosts) two failed parses.
        let maybe_ip = s.ends_with(|c: char| c.is_ascii_digit()) || s.contains(':');
        if maybe_ip && let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Host::Ip(canonical_ip(ip)));
        }
        name(s).map(Host::Name)
    }

    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Ip(ip) => Some(*ip),
            Host::Name(_) => None,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V4(v4)) => write!(f, "{v4}"),
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
        }
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A canonical host name (not an IP literal).
pub fn name(s: &str) -> Result<String, Invalid> {
    let trimmed = s.strip_suffix('.').unwrap_or(s);
    if trimmed.is_empty() {
        return Err(invalid(s, "empty host name"));
    }
    let ascii = if trimmed.is_ascii() {
        trimmed.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(trimmed).map_err(|_| invalid(s, "not a valid IDNA name"))?
    };
    check_labels(s, &ascii)?;
    Ok(ascii)
}

/// The rules a lower-case ASCII name must meet (`s` is what the client sent, for the
/// error).
fn check_labels(s: &str, ascii: &str) -> Result<(), Invalid> {
    if ascii.len() > 253 {
        return Err(invalid(s, "host name longer than 253 bytes"));
    }
    let mut last = "";
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err(invalid(
                s,
                "empty label (a leading dot or two dots in a row)",
            ));
        }
        if label.len() > 63 {
            return Err(invalid(s, "label longer than 63 bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(s, "character not allowed in a host name"));
        }
        last = label;
    }
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || (last.len() > 2
            && last.starts_with("0x")
            && last[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric {
        return Err(invalid(
            s,
            "numeric last label: an IPv4 address in a form other than a.b.c.d",
        ));
    }
    Ok(())
}

/// The host of `s` when `s` is already a canonical `name[:port]` authority — lower case, no
/// trailing dot, a valid name, a port without leading zeros — which is what clients almost
/// always send: checked without building anything ([`Authority::parse`] would allocate the
/// name and the canonical string just to find them equal). `None` means "take the long way",
/// not "invalid".
pub fn canonical_name_authority(s: &str) -> Option<&str> {
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    if let Some(p) = port
        && (p.starts_with('0') || parse_port(s, p).is_err())
    {
        return None;
    }
    plain_canonical_name(host).then_some(host)
}

/// True when `host` is a name [`check_labels`] accepts, already canonical (lower case, no
/// trailing dot), and not possibly an IP literal (its last byte is no digit: the long way
/// decides those) — in one pass over its bytes, as every request's authority is checked.
fn plain_canonical_name(host: &str) -> bool {
    let bytes = host.as_bytes();
    if bytes.len() > 253 {
        return false;
    }
    let (mut label_start, mut label_len) = (0, 0);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'.' if label_len > 0 => (label_start, label_len) = (i + 1, 0),
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' if label_len < 63 => label_len += 1,
            _ => return false,
        }
    }
    let last = &bytes[label_start..];
    // Empty (no name, or a trailing dot); ends in a digit; a hexadecimal number (`0x1f`).
    !(last.is_empty()
        || last.last().is_some_and(u8::is_ascii_digit)
        || (last.len() > 2
            && last.starts_with(b"0x")
            && last[2..].iter().all(u8::is_ascii_hexdigit)))
}

/// `host[:port]`, canonical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub host: Host,
    pub port: Option<u16>,
}

impl Authority {
    /// Parses `host[:port]` (an IPv6 host in brackets). No userinfo, nothing after the port.
    pub fn parse(s: &str) -> Result<Authority, Invalid> {
        if s.contains('@') {
            return Err(invalid(s, "userinfo is not allowed in an authority"));
        }
        let (host, port) = if s.starts_with('[') {
            let end = s
                .find(']')
                .ok_or_else(|| invalid(s, "unterminated IPv6 literal"))?;
            match &s[end + 1..] {
                "" => (&s[..=end], None),
                rest => (
                    &s[..=end],
                    Some(
                        rest.strip_prefix(':')
                            .ok_or_else(|| invalid(s, "junk after the IPv6 literal"))?,
                    ),
                ),
            }
        } else {
            match s.matches(':').count() {
                0 => (s, None),
                1 => {
                    let (h, p) = s.split_once(':').expect("one colon");
                    (h, Some(p))
                }
                _ => return Err(invalid(s, "an IPv6 address must be in brackets")),
            }
        };
        let port = port.map(|p| parse_port(s, p)).transpose()?;
        Ok(Authority {
            host: Host::parse(host)?,
            port,
        })
    }

    /// [`Authority::parse`], and the port must be there (CONNECT).
    pub fn parse_with_port(s: &str) -> Result<(Host, u16), Invalid> {
        let a = Authority::parse(s)?;
        match a.port {
            Some(p) => Ok((a.host, p)),
            None => Err(invalid(s, "no port")),
        }
    }
}

fn parse_port(whole: &str, p: &str) -> Result<u16, Invalid> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(whole, "the port is not a number"));
    }
    match p.parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err(invalid(whole, "the port is not 1-65535")),
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

/// The same authority (host and port), however each is spelled.
pub fn same_authority(a: &str, b: &str) -> bool {
    match (Authority::parse(a), Authority::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The same host, however each is spelled (`Example.COM.` and `example.com`).
pub fn same_host(a: &str, b: &str) -> bool {
    match (Host::parse(a), Host::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> Result<String, &'static str> {
        Authority::parse(s)
            .map(|a| a.to_string())
            .map_err(|e| e.reason)
    }

    /// The fast path agrees with the long one on every authority it accepts, and declines
    /// what needs canonicalising.
    #[test]
    fn canonical_authorities_take_the_fast_path() {
        for s in [
            "example.com",
            "example.com:443",
            "a-b_c.example.com:8080",
            "x.y.z:1",
            "api.github.com:65535",
            "0x1g.example",
            &format!("{}.com", "a".repeat(63)),
        ] {
            let host = canonical_name_authority(s).expect(s);
            let parsed = Authority::parse(s).expect(s);
            assert_eq!(parsed.to_string(), s);
            assert_eq!(parsed.host, Host::Name(host.to_owned()));
        }
        for s in [
            "Example.com",
            "example.com.",
            "example.com:0443",
            "example.com:0",
            "example.com:65536",
            "example.com:",
            "example.com:80:80",
            "a..b",
            ".a.b",
            "127.0.0.1",
            "127.0.0.1:80",
            "1.2.3.4.5",
            "[::1]:80",
            "user@example.com",
            "ex ample.com",
            "",
            "a.0x1f",
            "a.0x1f:80",
            "abc1",
            &format!("{}.com", "a".repeat(64)),
            &format!("{}.com", "a.".repeat(126)),
        ] {
            assert_eq!(canonical_name_authority(s), None, "{s}");
        }
    }

    #[test]
    fn names_are_canonical() {
        let ok = [
            ("Example.COM", "example.com"),
            ("example.com.", "example.com"),
            ("example.com.:443", "example.com:443"),
            ("bücher.example", "xn--bcher-kva.example"),
            ("BÜCHER.example:8443", "xn--bcher-kva.example:8443"),
            ("_dmarc.example.com", "_dmarc.example.com"),
            ("localhost", "localhost"),
            ("127.0.0.1:80", "127.0.0.1:80"),
            ("[::1]:443", "[::1]:443"),
            ("[0:0::1]", "[::1]"),
            ("[::FFFF:127.0.0.1]:80", "127.0.0.1:80"),
            ("[2001:DB8::1]", "[2001:db8::1]"),
            ("a.b.c:65535", "a.b.c:65535"),
        ];
        for (input, want) in ok {
            assert_eq!(canon(input), Ok(want.to_owned()), "{input}");
        }
    }

    #[test]
    fn malformed_authorities_are_refused() {
        let bad = [
            "",
            ".",
            "..",
            "a..example.com",
            ".example.com",
            "example.com..",
            "example..com:443",
            "example.com:",
            "example.com:0",
            "example.com:65536",
            "example.com:99999999999",
            "example.com:443x",
            "example.com:+443",
            "example.com:44 3",
            "example.com:443:1",
            "::1",
            "::1:443",
            "[::1",
            "[::1]443",
            "[::1]:",
            "[example.com]:443",
            "[fe80::1%eth0]:443",
            "user@example.com:443",
            "exa mple.com",
            "exa/mple.com",
            "example.com/",
            "2130706433",
            "0x7f000001",
            "127.1",
            "127.0.0.01",
            "0x7f.0.0.1",
            "a.b.123",
            &"a".repeat(64),
            &format!("{}.com", "a.".repeat(130)),
        ];
        for input in bad {
            assert!(
                canon(input).is_err(),
                "{input:?} accepted as {:?}",
                canon(input)
            );
        }
    }

    #[test]
    fn with_port_needs_the_port() {
        assert!(Authority::parse_with_port("example.com").is_err());
        assert_eq!(
            Authority::parse_with_port("Example.com:443"),
            Ok((Host::Name("example.com".into()), 443))
        );
    }

    #[test]
    fn same_host_ignores_spelling() {
        assert!(same_host("API.example.com.", "api.example.com"));
        assert!(same_host("[::ffff:10.0.0.1]", "10.0.0.1"));
        assert!(!same_host("a.example.com", "b.example.com"));
        assert!(!same_host("a..example.com", "a..example.com"));
    }

    #[test]
    fn never_panics() {
        let pieces = ["[", "]", ":", ".", "a", "1", "@", "%", "ü", "0x", "::", "-"];
        let mut s = String::new();
        for i in 0..20_000u32 {
            s.clear();
            let mut n = i;
            for _ in 0..6 {
                s.push_str(pieces[(n % pieces.len() as u32) as usize]);
                n /= pieces.len() as u32;
            }
            let _ = Authority::parse(&s);
        }
    }
}
