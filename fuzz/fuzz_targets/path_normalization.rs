//! `sluice_proxy::http::path::normalize`: meshConfig `pathNormalization` (Envoy's
//! `normalize_path`, `merge_slashes`, escaped-slash decoding), applied to every request path
//! before authorization and routing see it.
//!
//! Input: byte 0 picks the mode (`NONE`, `BASE`, `MERGE_SLASHES`, `DECODE_AND_MERGE_SLASHES`),
//! the rest is the request target (path and query), any bytes.
//!
//! Invariants: never panics; with any mode but `NONE`, a normalised path (the part before `?`)
//! has no `.` or `..` segment, however written (`%2e`, `%2E`, `\` as a separator), and
//! `MERGE_SLASHES` leaves no `//`; a target hyper accepts stays one hyper accepts (the proxy
//! rewrites `:path` with it); normalising twice changes nothing more.
#![no_main]

use std::borrow::Cow;

use http::uri::PathAndQuery;
use libfuzzer_sys::fuzz_target;
use sluice_proxy::http::path::normalize;
use sluice_snapshot::PathNormalization;

const MODES: [PathNormalization; 4] = [
    PathNormalization::None,
    PathNormalization::Base,
    PathNormalization::MergeSlashes,
    PathNormalization::DecodeAndMergeSlashes,
];

/// A segment as a server that decodes `%2e` reads it.
fn is_dot_segment(seg: &[u8]) -> bool {
    let mut s = seg.to_vec();
    while let Some(i) = s.windows(3).position(|w| w.eq_ignore_ascii_case(b"%2e")) {
        s.splice(i..i + 3, [b'.']);
    }
    s == b"." || s == b".."
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, target)) = data.split_first() else {
        return;
    };
    let mode = MODES[usize::from(m) % MODES.len()];
    let Ok(out) = normalize(mode, target) else {
        return;
    };
    if mode == PathNormalization::None || out.first() != Some(&b'/') {
        return;
    }
    let path_end = out.iter().position(|&b| b == b'?').unwrap_or(out.len());
    let path = &out[..path_end];
    for seg in path.split(|&b| b == b'/' || b == b'\\') {
        assert!(
            !is_dot_segment(seg),
            "dot segment {:?} left in {:?} (from {:?})",
            String::from_utf8_lossy(seg),
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(target)
        );
    }
    if mode != PathNormalization::Base {
        assert!(
            !path.windows(2).any(|w| w == b"//") || path == b"//",
            "{:?} still has `//`",
            String::from_utf8_lossy(path)
        );
    }
    if PathAndQuery::try_from(target).is_ok() {
        assert!(
            PathAndQuery::try_from(&out[..]).is_ok(),
            "{:?} normalised to {:?}, which the URI parser refuses",
            String::from_utf8_lossy(target),
            String::from_utf8_lossy(&out)
        );
    }
    let twice = normalize(mode, &out);
    match twice {
        Ok(Cow::Borrowed(_)) => {}
        Ok(Cow::Owned(again)) => assert_eq!(
            String::from_utf8_lossy(&again),
            String::from_utf8_lossy(&out),
            "normalising {:?} twice changes it again",
            String::from_utf8_lossy(target)
        ),
        Err(_) => panic!(
            "{:?} normalised to {:?}, which is then refused",
            String::from_utf8_lossy(target),
            String::from_utf8_lossy(&out)
        ),
    }
});
