//! `sluice_proxy::framing`: the scan that finds, in an HTTP/1 connection's bytes, the request
//! heads carrying both `Content-Length` and `Transfer-Encoding` (request smuggling), following
//! each body's framing to the next head.
//!
//! Input: byte 0 says where to cut the rest in two (the scan must not depend on how TCP
//! segments the bytes), then the connection's bytes.
//!
//! Invariants:
//! - never panics;
//! - the verdict is the same whole, cut in two, and one byte at a time;
//! - it agrees with a strict reference built on httparse (the parser hyper uses): wherever the
//!   reference reads a connection without error, the scan flags exactly the head the
//!   reference finds with both framings (or none); where the reference meets a byte sequence
//!   hyper refuses (hyper answers `400` and closes), the scan flags nothing before that place.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_proxy::framing::flagged_place;

/// What a strict reader of the connection finds.
#[derive(Debug, PartialEq)]
enum Reference {
    /// The head at this place has both framings.
    Both(u32),
    /// The bytes ran out (or ended on a boundary) with no such head.
    Clean,
    /// A byte sequence hyper refuses, at this place.
    Refused(u32),
}

fn reference(mut b: &[u8]) -> Reference {
    let mut place = 0u32;
    loop {
        while let Some(rest) = b.strip_prefix(b"\r\n").or_else(|| b.strip_prefix(b"\n")) {
            b = rest;
        }
        if b.is_empty() {
            return Reference::Clean;
        }
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut req = httparse::Request::new(&mut headers);
        let n = match req.parse(b) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Reference::Clean,
            Err(_) => return Reference::Refused(place),
        };
        let mut length: Option<u64> = None;
        let (mut cl, mut te) = (false, false);
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                cl = true;
                let v = std::str::from_utf8(h.value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok());
                match (v, length) {
                    (None, _) => return Reference::Refused(place),
                    (Some(v), Some(l)) if v != l => return Reference::Refused(place),
                    (Some(v), _) => length = Some(v),
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = true;
            }
        }
        if cl && te {
            return Reference::Both(place);
        }
        b = &b[n..];
        if te {
            loop {
                // hyper wants a digit first; httparse also reads an empty size (`;ext`) as 0.
                match b.first() {
                    None => return Reference::Clean,
                    Some(c) if !c.is_ascii_hexdigit() => return Reference::Refused(place),
                    Some(_) => {}
                }
                let (used, size) = match httparse::parse_chunk_size(b) {
                    Ok(httparse::Status::Complete(c)) => c,
                    Ok(httparse::Status::Partial) => return Reference::Clean,
                    Err(_) => return Reference::Refused(place),
                };
                b = &b[used..];
                if size == 0 {
                    break;
                }
                let Ok(size) = usize::try_from(size) else {
                    return Reference::Refused(place);
                };
                if b.len() < size + 2 {
                    return Reference::Clean;
                }
                if &b[size..size + 2] != b"\r\n" {
                    return Reference::Refused(place);
                }
                b = &b[size + 2..];
            }
            let mut trailers = [httparse::EMPTY_HEADER; 100];
            match httparse::parse_headers(b, &mut trailers) {
                Ok(httparse::Status::Complete((n, _))) => b = &b[n..],
                Ok(httparse::Status::Partial) => return Reference::Clean,
                Err(_) => return Reference::Refused(place),
            }
        } else if let Some(len) = length {
            match usize::try_from(len) {
                Ok(len) if len <= b.len() => b = &b[len..],
                _ => return Reference::Clean,
            }
        }
        place += 1;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let whole = flagged_place([bytes]);
    let at = usize::from(cut).min(bytes.len());
    let (a, b) = bytes.split_at(at);
    assert_eq!(flagged_place([a, b]), whole, "cut at {at}");
    assert_eq!(flagged_place(bytes.chunks(1)), whole, "one byte at a time");
    match reference(bytes) {
        Reference::Both(place) => assert_eq!(whole, Some(place)),
        Reference::Clean => assert_eq!(whole, None),
        Reference::Refused(place) => {
            if let Some(p) = whole {
                assert!(p >= place, "flagged {p}, before the refusal at {place}");
            }
        }
    }
});
