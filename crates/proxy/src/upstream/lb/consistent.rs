//! Consistent hashing (DestinationRule `consistentHash`), Envoy's way: a request's hash (of a
//! header, a cookie, the client's IP address or a query parameter, xxHash64 as Envoy computes
//! it) is looked up on a ring (`RING_HASH`) or in a Maglev table (`MAGLEV`) built from the
//! endpoints. The tables are built once per endpoint set and kept by the cluster's state.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderValue};
use sluice_snapshot::cluster::{HashAlgorithm, HashKey, LbPolicy};
use xxhash_rust::xxh64::xxh64;

use super::Candidate;

/// Envoy's default `maximum_ring_size`.
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// Envoy's bound on Maglev table sizes (Istio's validation asks for less).
const MAX_TABLE_SIZE: u64 = 5_000_011;

/// What of a request a hash can be computed from.
pub struct RequestKeys<'a> {
    pub method: &'a str,
    /// The request's authority (`Host`), which `headers` do not carry.
    pub authority: &'a str,
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    /// The downstream peer.
    pub peer: SocketAddr,
}

/// A request's hash under `policy` (`None`: not a consistent-hash cluster, or the request
/// lacks the key), and the `Set-Cookie` value to add to the response when the key is a cookie
/// with a `ttl` that the request did not carry: Envoy then generates the cookie (from the
/// client's address and port, so requests racing on one connection get the same one), hashes
/// on it, and sets it.
pub fn request_hash(
    policy: &LbPolicy,
    req: &RequestKeys<'_>,
) -> (Option<u64>, Option<HeaderValue>) {
    let LbPolicy::ConsistentHash { key: Some(key), .. } = policy else {
        return (None, None);
    };
    match key {
        HashKey::Header { name } => (header_hash(req, name), None),
        HashKey::Cookie {
            name,
            path,
            ttl,
            attributes,
        } => {
            if let Some(value) = cookie(req.headers, name) {
                return (Some(xxh64(value.as_bytes(), 0)), None);
            }
            let Some(ttl) = ttl else {
                return (None, None);
            };
            let value = format!("{:016x}", xxh64(req.peer.to_string().as_bytes(), 0));
            // Envoy's `makeSetCookieValue`.
            let mut set = format!("{name}=\"{value}\"");
            if ttl.as_secs() > 0 {
                set.push_str(&format!("; Max-Age={}", ttl.as_secs()));
            }
            if !path.is_empty() {
                set.push_str(&format!("; Path={path}"));
            }
            for a in attributes {
                if a.value.is_empty() {
                    set.push_str(&format!("; {}", a.name));
                } else {
                    set.push_str(&format!("; {}={}", a.name, a.value));
                }
            }
            set.push_str("; HttpOnly");
            (
                Some(xxh64(value.as_bytes(), 0)),
                HeaderValue::try_from(set).ok(),
            )
        }
        HashKey::SourceIp => (Some(source_ip_hash(req.peer)), None),
        HashKey::QueryParameter { name } => (
            query_parameter(req.path_and_query, name).map(|v| xxh64(v.as_bytes(), 0)),
            None,
        ),
    }
}

/// A TCP or TLS stream's hash under `policy`: only `useSourceIp` applies (Istio sets no other
/// hash policy on a TCP proxy).
pub fn connection_hash(policy: &LbPolicy, peer: SocketAddr) -> Option<u64> {
    match policy {
        LbPolicy::ConsistentHash {
            key: Some(HashKey::SourceIp),
            ..
        } => Some(source_ip_hash(peer)),
        _ => None,
    }
}

/// Envoy hashes the address without the port.
fn source_ip_hash(peer: SocketAddr) -> u64 {
    xxh64(peer.ip().to_string().as_bytes(), 0)
}

/// Envoy's header hash: the values sorted (so their order does not matter), each hashed with
/// the previous hash as the seed. Pseudo-headers name the request's own parts.
fn header_hash(req: &RequestKeys<'_>, name: &str) -> Option<u64> {
    match name {
        ":authority" | "host" => return Some(xxh64(req.authority.as_bytes(), 0)),
        ":path" => return Some(xxh64(req.path_and_query.as_bytes(), 0)),
        ":method" => return Some(xxh64(req.method.as_bytes(), 0)),
        _ => {}
    }
    let mut values: Vec<&[u8]> = req
        .headers
        .get_all(name)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    match values.as_slice() {
        [] => None,
        [one] => Some(xxh64(one, 0)),
        _ => {
            values.sort_unstable();
            Some(values.iter().fold(0, |seed, v| xxh64(v, seed)))
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (quotes removed), unless
/// empty.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim_start().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| {
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
        })
        .filter(|v| !v.is_empty())
}

/// The first value of query parameter `name`, as written (not decoded, as Envoy's
/// `parseQueryString`); a parameter without `=` has the empty value.
fn query_parameter<'p>(path_and_query: &'p str, name: &str) -> Option<&'p str> {
    let (_, query) = path_and_query.split_once('?')?;
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A ring or a Maglev table for one endpoint set: entries are indexes into the candidates it
/// was built from.
#[derive(Debug)]
pub struct Table {
    algorithm: HashAlgorithm,
    endpoints: Vec<(SocketAddr, u32)>,
    lookup: Lookup,
}

#[derive(Debug)]
enum Lookup {
    /// Points sorted by hash.
    Ring(Vec<(u64, u32)>),
    Maglev(Vec<u32>),
}

impl Table {
    pub fn build(algorithm: HashAlgorithm, candidates: &[Candidate]) -> Table {
        let lookup = match algorithm {
            HashAlgorithm::RingHash { min_ring_size } => {
                Lookup::Ring(ring(min_ring_size, candidates))
            }
            HashAlgorithm::Maglev { table_size } => Lookup::Maglev(maglev(table_size, candidates)),
        };
        Table {
            algorithm,
            endpoints: candidates.iter().map(|c| (c.addr, c.weight)).collect(),
            lookup,
        }
    }

    /// Whether this table was built for these candidates, in this order.
    pub fn fits(&self, algorithm: HashAlgorithm, candidates: &[Candidate]) -> bool {
        self.algorithm == algorithm
            && self.endpoints.len() == candidates.len()
            && self
                .endpoints
                .iter()
                .zip(candidates)
                .all(|(e, c)| e.0 == c.addr && e.1 == c.weight)
    }

    /// Candidate indexes from where `hash` lands on: the endpoint that owns it, then the
    /// next ring points (table entries), each table entry once.
    pub fn walk(&self, hash: u64) -> Box<dyn Iterator<Item = usize> + '_> {
        match &self.lookup {
            Lookup::Ring(points) => {
                // The first point at or after the hash, wrapping around (Envoy's ketama
                // search).
                let start = points.partition_point(|p| p.0 < hash);
                let (before, after) = points.split_at(start.min(points.len()));
                Box::new(after.iter().chain(before).map(|p| p.1 as usize))
            }
            Lookup::Maglev(table) => {
                let start = (hash % table.len().max(1) as u64) as usize;
                let (before, after) = table.split_at(start.min(table.len()));
                Box::new(after.iter().chain(before).map(|i| *i as usize))
            }
        }
    }
}

/// Envoy's ring: the least-weighted endpoint gets a whole number of points and at least
/// `min_ring_size` points are laid in all (at most 8M); point `i` of an endpoint is the
/// xxHash64 of `"<address>:<port>_<i>"`.
fn ring(min_ring_size: u64, candidates: &[Candidate]) -> Vec<(u64, u32)> {
    let weight = |c: &Candidate| f64::from(c.weight.max(1));
    let total: f64 = candidates.iter().map(weight).sum();
    if candidates.is_empty() || total <= 0.0 {
        return Vec::new();
    }
    let min_normalized = candidates
        .iter()
        .map(|c| weight(c) / total)
        .fold(f64::INFINITY, f64::min);
    let min_ring = min_ring_size.clamp(1, MAX_RING_SIZE) as f64;
    let scale = ((min_normalized * min_ring).ceil() / min_normalized).min(MAX_RING_SIZE as f64);
    let mut points = Vec::with_capacity(scale.ceil() as usize);
    let (mut current, mut target) = (0.0f64, 0.0f64);
    for (i, c) in candidates.iter().enumerate() {
        let key = c.addr.to_string();
        target += scale * weight(c) / total;
        let mut n = 0u64;
        while current < target {
            points.push((xxh64(format!("{key}_{n}").as_bytes(), 0), i as u32));
            n += 1;
            current += 1.0;
        }
    }
    points.sort_by_key(|p| p.0);
    points
}

/// Envoy's Maglev table: endpoints in the order of their addresses take turns (a lighter one
/// sits out turns in proportion to its weight) filling the next free slot of their own
/// permutation (offset xxHash64(address) mod M, skip xxHash64(address, seed 1) mod (M-1) + 1).
fn maglev(table_size: u64, candidates: &[Candidate]) -> Vec<u32> {
    struct Entry {
        index: u32,
        offset: u64,
        skip: u64,
        weight: u64,
        target: u64,
        next: u64,
    }
    if candidates.is_empty() {
        return Vec::new();
    }
    let m = prime_at_least(table_size.clamp(2, MAX_TABLE_SIZE));
    let mut keyed: Vec<(String, usize)> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (c.addr.to_string(), i))
        .collect();
    keyed.sort();
    let mut entries: Vec<Entry> = keyed
        .iter()
        .map(|(key, i)| Entry {
            index: *i as u32,
            offset: xxh64(key.as_bytes(), 0) % m,
            skip: xxh64(key.as_bytes(), 1) % (m - 1) + 1,
            weight: u64::from(candidates[*i].weight.max(1)),
            target: 0,
            next: 0,
        })
        .collect();
    let max_weight = entries.iter().map(|e| e.weight).max().unwrap_or(1);
    let mut table = vec![u32::MAX; m as usize];
    let mut filled = 0u64;
    let mut iteration = 0u64;
    while filled < m {
        for e in &mut entries {
            if filled == m {
                break;
            }
            if iteration * e.weight < e.target {
                continue;
            }
            e.target += max_weight;
            // With `m` prime the permutation reaches every slot: a free one is found.
            loop {
                let slot = ((e.offset + e.skip * e.next) % m) as usize;
                e.next += 1;
                if table[slot] == u32::MAX {
                    table[slot] = e.index;
                    filled += 1;
                    break;
                }
            }
        }
        iteration += 1;
    }
    table
}

/// Envoy's (and Istio's) primality test for table sizes.
fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x & 1 == 0 {
        return false;
    }
    let mut factor = 3u64;
    while factor.saturating_mul(factor) <= x {
        if x.is_multiple_of(factor) {
            return false;
        }
        factor += 2;
    }
    true
}

/// `n` if prime, else the next prime: a snapshot written by hand may name any size, and a
/// table whose size is not a prime cannot be filled.
fn prime_at_least(n: u64) -> u64 {
    (n.max(2)..).find(|x| is_prime(*x)).unwrap_or(65537)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;

    fn candidates(n: u16) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i)),
                weight: 1,
                host: Arc::from("h"),
            })
            .collect()
    }

    fn owner(t: &Table, key: &str) -> usize {
        t.walk(xxh64(key.as_bytes(), 0)).next().expect("owner")
    }

    #[test]
    fn xxhash64_is_envoys() {
        // The reference values of XXH64 (seed 0 and 1) that Envoy's HashUtil wraps.
        assert_eq!(xxh64(b"", 0), 0xef46db3751d8e999);
        assert_eq!(xxh64(b"a", 0), 0xd24ec4f1a98c6e5b);
        assert_ne!(xxh64(b"a", 1), xxh64(b"a", 0));
    }

    #[test]
    fn rings_have_envoys_size_and_spread() {
        let c = candidates(3);
        let t = Table::build(
            HashAlgorithm::RingHash {
                min_ring_size: 1024,
            },
            &c,
        );
        let Lookup::Ring(points) = &t.lookup else {
            panic!("ring");
        };
        // ceil(1024/3) points each.
        assert_eq!(points.len(), 3 * 342);
        assert!(points.windows(2).all(|w| w[0].0 <= w[1].0));
        let mut per = HashMap::new();
        for i in 0..3000 {
            *per.entry(owner(&t, &format!("user-{i}"))).or_insert(0) += 1;
        }
        assert_eq!(per.len(), 3);
        assert!(per.values().all(|n| (600..1400).contains(n)), "{per:?}");
    }

    #[test]
    fn maglev_tables_are_full_and_balanced() {
        let c = candidates(4);
        let t = Table::build(HashAlgorithm::Maglev { table_size: 251 }, &c);
        let Lookup::Maglev(table) = &t.lookup else {
            panic!("maglev");
        };
        assert_eq!(table.len(), 251);
        let mut per = [0u32; 4];
        for i in table {
            per[*i as usize] += 1;
        }
        // Each endpoint gets a quarter of the slots, give or take one.
        assert!(per.iter().all(|n| (62..=63).contains(n)), "{per:?}");
        // A weight of 3 gets three times the slots.
        let mut w = candidates(2);
        w[0].weight = 3;
        let t = Table::build(HashAlgorithm::Maglev { table_size: 65537 }, &w);
        let Lookup::Maglev(table) = &t.lookup else {
            panic!("maglev");
        };
        let heavy = table.iter().filter(|i| **i == 0).count();
        assert!((49_000..49_500).contains(&heavy), "{heavy}");
        // A size that is not a prime is raised to one.
        let t = Table::build(HashAlgorithm::Maglev { table_size: 1000 }, &c);
        let Lookup::Maglev(table) = &t.lookup else {
            panic!("maglev");
        };
        assert_eq!(table.len(), 1009);
    }

    #[test]
    fn removing_an_endpoint_moves_only_its_keys() {
        for algorithm in [
            HashAlgorithm::RingHash {
                min_ring_size: 1024,
            },
            HashAlgorithm::Maglev { table_size: 65537 },
        ] {
            let c = candidates(5);
            let t = Table::build(algorithm, &c);
            for i in 0..500 {
                let key = format!("k{i}");
                let first = owner(&t, &key);
                // Skipping endpoint 2 (as an ejection does) moves only the keys it owned.
                let skipped = t
                    .walk(xxh64(key.as_bytes(), 0))
                    .find(|j| *j != 2)
                    .expect("another");
                if first != 2 {
                    assert_eq!(skipped, first, "{algorithm:?} {key}");
                }
            }
        }
    }

    #[test]
    fn tables_fit_their_endpoint_set_only() {
        let c = candidates(3);
        let algorithm = HashAlgorithm::RingHash { min_ring_size: 16 };
        let t = Table::build(algorithm, &c);
        assert!(t.fits(algorithm, &c));
        assert!(!t.fits(algorithm, &c[..2]));
        assert!(!t.fits(HashAlgorithm::Maglev { table_size: 7 }, &c));
        let mut w = c.clone();
        w[1].weight = 2;
        assert!(!t.fits(algorithm, &w));
    }

    #[test]
    fn request_keys_as_envoy_reads_them() {
        let policy = |key| LbPolicy::ConsistentHash {
            key: Some(key),
            algorithm: HashAlgorithm::RingHash {
                min_ring_size: 1024,
            },
        };
        let mut headers = HeaderMap::new();
        headers.append("x-user", HeaderValue::from_static("b"));
        headers.append("x-user", HeaderValue::from_static("a"));
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("other=1; sticky=\"abc\""),
        );
        let peer = SocketAddr::from(([10, 1, 2, 3], 40000));
        let req = RequestKeys {
            method: "GET",
            authority: "a.example.com",
            path_and_query: "/p?x=1&user=u%201&flag#frag",
            headers: &headers,
            peer,
        };
        let hash = |key| request_hash(&policy(key), &req);
        let header = |name: &str| hash(HashKey::Header { name: name.into() }).0;
        assert_eq!(header("x-user"), Some(xxh64(b"b", xxh64(b"a", 0))));
        assert_eq!(header("x-missing"), None);
        assert_eq!(header(":authority"), Some(xxh64(b"a.example.com", 0)));
        let query = |name: &str| hash(HashKey::QueryParameter { name: name.into() }).0;
        assert_eq!(query("user"), Some(xxh64(b"u%201", 0)));
        assert_eq!(query("flag"), Some(xxh64(b"", 0)));
        assert_eq!(query("frag"), None);
        assert_eq!(hash(HashKey::SourceIp).0, Some(xxh64(b"10.1.2.3", 0)));
        let cookie = |name: &str, ttl| {
            hash(HashKey::Cookie {
                name: name.into(),
                path: "/".into(),
                ttl,
                attributes: vec![sluice_snapshot::cluster::CookieAttribute {
                    name: "SameSite".into(),
                    value: "Lax".into(),
                }],
            })
        };
        assert_eq!(cookie("sticky", None), (Some(xxh64(b"abc", 0)), None));
        assert_eq!(cookie("absent", None), (None, None));
        let generated = format!("{:016x}", xxh64(b"10.1.2.3:40000", 0));
        let (h, set) = cookie("absent", Some(std::time::Duration::from_secs(60)));
        assert_eq!(h, Some(xxh64(generated.as_bytes(), 0)));
        assert_eq!(
            set.expect("set-cookie").to_str().expect("ascii"),
            format!("absent=\"{generated}\"; Max-Age=60; Path=/; SameSite=Lax; HttpOnly")
        );
        let (_, session) = cookie("absent", Some(std::time::Duration::ZERO));
        assert_eq!(
            session.expect("set-cookie").to_str().expect("ascii"),
            format!("absent=\"{generated}\"; Path=/; SameSite=Lax; HttpOnly")
        );
        assert_eq!(request_hash(&LbPolicy::RoundRobin, &req), (None, None));
        assert_eq!(
            connection_hash(&policy(HashKey::SourceIp), peer),
            Some(xxh64(b"10.1.2.3", 0))
        );
        assert_eq!(
            connection_hash(
                &policy(HashKey::Header {
                    name: "x-user".into()
                }),
                peer
            ),
            None
        );
    }
}
