//! Header work shared by requests and responses: hop-by-hop stripping, the route's header
//! operations, request ids.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use sluice_snapshot::route::HeaderOps;

/// Connection-specific headers (RFC 9110 §7.6.1), never forwarded. Parsed names, so that
/// checking for them per request costs no parsing; a `static`, not a `const`: a `const` array
/// of `HeaderName` is built and dropped anew at every use (per header of every message).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Removes hop-by-hop headers, and those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few names a message carries, instead of a hashed lookup per
    // hop-by-hop name (6 % of a proxied request's instructions when it did that).
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    match headers.get_all(header::CONNECTION).iter().count() {
        0 => {}
        1 => {
            if let Some(v) = headers.remove(header::CONNECTION) {
                remove_named(headers, &v);
            }
        }
        _ => {
            let values: Vec<HeaderValue> = headers
                .get_all(header::CONNECTION)
                .iter()
                .cloned()
                .collect();
            headers.remove(header::CONNECTION);
            for v in &values {
                remove_named(headers, v);
            }
        }
    }
    while let Some(name) = headers.keys().find(|n| is_hop_by_hop(n)).cloned() {
        headers.remove(name);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Removes the headers a `Connection` value names. `close` and `keep-alive` name no header
/// to forward (`Keep-Alive` is hop-by-hop anyway), so they cost no lookup.
fn remove_named(headers: &mut HeaderMap, connection: &HeaderValue) {
    let Ok(v) = connection.to_str() else { return };
    for token in v.split(',').map(str::trim) {
        if token.is_empty()
            || token.eq_ignore_ascii_case("close")
            || token.eq_ignore_ascii_case("keep-alive")
        {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            headers.remove(name);
        }
    }
}

/// Applies header operations: removals, then sets (replace), then adds (append).
pub fn apply(ops: &HeaderOps, headers: &mut HeaderMap) {
    for name in &ops.remove {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(n);
        }
    }
    for (name, value) in &ops.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
    for (name, value) in &ops.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
}

/// A random UUID v4, as Envoy's `x-request-id`.
pub fn request_id() -> HeaderValue {
    // Formatted into a stack buffer: this runs on every request without an id.
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    // From the thread's userspace generator: uuid's own v4 asks the kernel per call.
    let id = uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut buf);
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret".parse().expect("v"));
        h.insert("x-secret", "1".parse().expect("v"));
        h.insert("keep-alive", "5".parse().expect("v"));
        h.insert("x-keep", "1".parse().expect("v"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn ops_remove_set_add() {
        let mut h = HeaderMap::new();
        h.insert("a", "1".parse().expect("v"));
        h.insert("b", "1".parse().expect("v"));
        let ops = HeaderOps {
            set: [("a".to_owned(), "2".to_owned())].into_iter().collect(),
            add: [("c".to_owned(), "3".to_owned())].into_iter().collect(),
            remove: vec!["b".into()],
        };
        apply(&ops, &mut h);
        assert_eq!(h.get("a").map(|v| v.as_bytes()), Some(&b"2"[..]));
        assert!(!h.contains_key("b"));
        assert_eq!(h.get("c").map(|v| v.as_bytes()), Some(&b"3"[..]));
    }

    #[test]
    fn request_ids_look_like_uuids() {
        let id = request_id();
        let id = id.to_str().expect("ascii");
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, request_id().to_str().expect("ascii"));
    }
}
