//! The request path as Istio's proxies see it: meshConfig `pathNormalization` applied the way
//! Envoy's connection manager applies the settings Istio gives it for each mode, before any
//! filter reads the path. Authorization, routing, the access log and the upstream then all see
//! the same path, so a policy on `/admin/*` cannot be walked around with `/public/../admin`.
//!
//! Envoy's order (`ConnectionManagerUtility::maybeNormalizePath`):
//! 1. a `#fragment` is cut off (Istio's bootstrap sets
//!    `envoy.reloadable_features.http_reject_path_with_fragment: false`, so it is stripped, not
//!    refused; hyper's URI parser has already done so by the time a request reaches sluice);
//! 2. `DECODE_AND_MERGE_SLASHES` only: `%2F`/`%2f` become `/` and `%5C`/`%5c` become `\`
//!    (`path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD`);
//! 3. every mode but `NONE`: `normalize_path`, which is Chromium's URL path canonicalizer
//!    (`url::CanonicalizePath` of the googleurl snapshot Envoy builds, ported here byte for
//!    byte): dot segments removed as RFC 3986 5.2.4 says (also when written `%2e`), `\` read as
//!    `/`, escapes of unreserved characters decoded, characters a path may not hold escaped, the
//!    case of every escape kept as written, and an escaped NUL refused;
//! 4. `MERGE_SLASHES` and `DECODE_AND_MERGE_SLASHES`: runs of `/` merged (`merge_slashes`).
//!
//! Each step works on the part before the first `?`: the query goes upstream as it came.

use std::borrow::Cow;

use bytes::Bytes;
use http::Uri;
use http::request::Parts;
use http::uri::PathAndQuery;
use sluice_snapshot::PathNormalization;

use crate::Error;

/// Envoy refuses the path (`%00`): it answers 400 with details `path_normalization_failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected;

/// Normalises the request's path in place. A request whose path changes is forwarded with the
/// new one, as Envoy rewrites `:path` (and sets no `x-envoy-original-path` for it).
pub fn apply(mode: PathNormalization, parts: &mut Parts) -> Result<(), Error> {
    let Some(pq) = parts.uri.path_and_query() else {
        // CONNECT's authority form: Envoy has no `:path` to normalise either.
        return Ok(());
    };
    let Cow::Owned(normalized) =
        normalize(mode, pq.as_str().as_bytes()).map_err(|Rejected| Error::PathNormalization)?
    else {
        return Ok(());
    };
    // The canonical path is ASCII the URI parser accepts; a failure here would be a bug in the
    // port, and refusing the request is the safe answer to it.
    let pq = PathAndQuery::from_maybe_shared(Bytes::from(normalized))
        .map_err(|_| Error::PathNormalization)?;
    let mut uri = parts.uri.clone().into_parts();
    uri.path_and_query = Some(pq);
    parts.uri = Uri::from_parts(uri).map_err(|_| Error::PathNormalization)?;
    Ok(())
}

/// The path-and-query `target` as `mode` normalises it; borrowed when nothing changes. A target
/// that does not start with `/` (`*` of `OPTIONS *`) is left to routing, as it is.
pub fn normalize(mode: PathNormalization, target: &[u8]) -> Result<Cow<'_, [u8]>, Rejected> {
    let mut out = Cow::Borrowed(target);
    if let Some(hash) = out.iter().position(|&b| b == b'#') {
        out = Cow::Owned(target[..hash].to_vec());
    }
    if out.first() != Some(&b'/') {
        return Ok(out);
    }
    if mode == PathNormalization::None {
        return Ok(out);
    }
    if mode == PathNormalization::DecodeAndMergeSlashes
        && let Some(v) = unescape_slashes(&out)
    {
        out = Cow::Owned(v);
    }
    if let Some(v) = on_path(&out, canonicalize)? {
        out = Cow::Owned(v);
    }
    if mode != PathNormalization::Base
        && let Some(v) = on_path(&out, |p| Ok(merge_slashes(p)))?
    {
        out = Cow::Owned(v);
    }
    Ok(out)
}

/// Runs `step` on the path of `target` (up to the first `?`); `Some` path-and-query when the
/// path changed.
fn on_path(
    target: &[u8],
    step: impl FnOnce(&[u8]) -> Result<Option<Vec<u8>>, Rejected>,
) -> Result<Option<Vec<u8>>, Rejected> {
    let split = target
        .iter()
        .position(|&b| b == b'?')
        .unwrap_or(target.len());
    let (path, query) = target.split_at(split);
    Ok(step(path)?.map(|mut p| {
        p.extend_from_slice(query);
        p
    }))
}

/// Envoy's `PathUtil::unescapeSlashes`, on the path only: `None` when there is none to decode.
fn unescape_slashes(target: &[u8]) -> Option<Vec<u8>> {
    let split = target
        .iter()
        .position(|&b| b == b'?')
        .unwrap_or(target.len());
    let (path, query) = target.split_at(split);
    let decoded = |i: usize| match path.get(i..i + 3)? {
        [b'%', b'2', b'f' | b'F'] => Some(b'/'),
        [b'%', b'5', b'c' | b'C'] => Some(b'\\'),
        _ => None,
    };
    (0..path.len()).find(|&i| decoded(i).is_some())?;
    let mut out = Vec::with_capacity(target.len());
    let mut i = 0;
    while i < path.len() {
        if let Some(b) = decoded(i) {
            out.push(b);
            i += 3;
        } else {
            out.push(path[i]);
            i += 1;
        }
    }
    out.extend_from_slice(query);
    Some(out)
}

/// Envoy's `PathUtil::mergeSlashes`: the non-empty segments joined by one `/`, with the leading
/// and trailing `/` kept. As in Envoy, a path of slashes only becomes `//`.
fn merge_slashes(path: &[u8]) -> Option<Vec<u8>> {
    path.windows(2).position(|w| w == b"//")?;
    let mut out = Vec::with_capacity(path.len());
    if path.first() == Some(&b'/') {
        out.push(b'/');
    }
    for (n, segment) in path
        .split(|&b| b == b'/')
        .filter(|s| !s.is_empty())
        .enumerate()
    {
        if n > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(segment);
    }
    if path.last() == Some(&b'/') {
        out.push(b'/');
    }
    (out != path).then_some(out)
}

// Chromium's `kPathCharLookup` (the table Envoy's googleurl snapshot carries), one flag set a
// byte. SPECIAL: needs more than a copy; ESCAPE: written as `%XX`; UNESCAPE: an escape of it is
// decoded; INVALID: refused.
const PASS: u8 = 0;
const SPECIAL: u8 = 1;
const ESCAPE_BIT: u8 = 2;
const ESCAPE: u8 = ESCAPE_BIT | SPECIAL;
const UNESCAPE: u8 = 4;
const INVALID_BIT: u8 = 8;
const INVALID: u8 = INVALID_BIT | SPECIAL;

const PATH_CHARS: [u8; 256] = {
    let mut t = [ESCAPE; 256];
    let mut c = 0;
    while c < 0x80 {
        t[c] = match c as u8 {
            0 => INVALID,
            b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z' | b'-' | b'_' | b'~' => UNESCAPE,
            b'.' => SPECIAL,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'/' | b':' | b';'
            | b'=' | b'@' | b'[' | b']' => PASS,
            // Controls, space, `"`, `#`, `%`, `<`, `>`, `?`, `\`, `^`, `` ` ``, `{`, `|`, `}`,
            // DEL; `%` and `\` are handled before their flag is read.
            _ => ESCAPE,
        };
        c += 1;
    }
    t
};

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The canonical output, written lazily: while it is a prefix of the input nothing is copied,
/// so a path that is already canonical costs no allocation.
struct Output<'a> {
    input: &'a [u8],
    len: usize,
    owned: Option<Vec<u8>>,
}

impl Output<'_> {
    fn len(&self) -> usize {
        self.owned.as_ref().map_or(self.len, Vec::len)
    }

    fn at(&self, i: usize) -> Option<u8> {
        match &self.owned {
            Some(v) => v.get(i).copied(),
            None => self.input[..self.len].get(i).copied(),
        }
    }

    fn last(&self) -> Option<u8> {
        self.len().checked_sub(1).and_then(|i| self.at(i))
    }

    fn owned(&mut self) -> &mut Vec<u8> {
        let (input, len) = (self.input, self.len);
        self.owned.get_or_insert_with(|| {
            let mut v = Vec::with_capacity(input.len() + 8);
            v.extend_from_slice(&input[..len]);
            v
        })
    }

    fn push(&mut self, b: u8) {
        if self.owned.is_none() && self.input.get(self.len) == Some(&b) {
            self.len += 1;
        } else {
            self.owned().push(b);
        }
    }

    fn push_escaped(&mut self, b: u8) {
        self.push(b'%');
        self.push(HEX[usize::from(b >> 4)]);
        self.push(HEX[usize::from(b & 0xf)]);
    }

    fn set(&mut self, i: usize, b: u8) {
        if self.at(i) != Some(b)
            && let Some(slot) = self.owned().get_mut(i)
        {
            *slot = b;
        }
    }

    fn truncate(&mut self, n: usize) {
        match &mut self.owned {
            Some(v) => v.truncate(n),
            None => self.len = self.len.min(n),
        }
    }

    /// `Some` when the output differs from the whole input.
    fn finish(self) -> Option<Vec<u8>> {
        match self.owned {
            Some(v) => (v != self.input).then_some(v),
            None if self.len == self.input.len() => None,
            None => Some(self.input[..self.len].to_vec()),
        }
    }
}

fn is_slash(b: u8) -> bool {
    b == b'/' || b == b'\\'
}

/// Chromium's `IsDot`: the length of a `.` or `%2e`/`%2E` at `i`, or 0.
fn dot_len(spec: &[u8], i: usize) -> usize {
    match spec.get(i..) {
        Some([b'.', ..]) => 1,
        Some([b'%', b'2', b'e' | b'E', ..]) => 3,
        _ => 0,
    }
}

/// Chromium's `DecodeEscaped`: the byte `%XX` at `i` stands for. Like Chromium, the `%` itself
/// is not checked (`CheckForNestedEscapes` relies on that).
fn decode_escaped(spec: &[u8], i: usize) -> Option<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    match spec.get(i + 1..i + 3)? {
        &[hi, lo] => Some((hex(hi)? * 16 + hex(lo)?) as u8),
        _ => None,
    }
}

enum Dot {
    /// Part of a segment's name (`.well-known`, `..a`).
    Name,
    /// `.`: this segment goes.
    Current,
    /// `..`: this segment and the one before go.
    Up,
}

/// Chromium's `ClassifyAfterDot`: what a dot that starts a segment is, and how many input
/// bytes after it belong to it.
fn classify_after_dot(spec: &[u8], after_dot: usize) -> (Dot, usize) {
    let Some(&next) = spec.get(after_dot) else {
        return (Dot::Current, 0);
    };
    if is_slash(next) {
        return (Dot::Current, 1);
    }
    let second = dot_len(spec, after_dot);
    if second > 0 {
        match spec.get(after_dot + second) {
            None => return (Dot::Up, second),
            Some(&b) if is_slash(b) => return (Dot::Up, second + 1),
            Some(_) => {}
        }
    }
    (Dot::Name, 0)
}

/// Chromium's `BackUpToPreviousSlash`: drops the last segment of the output, which ends with
/// `/`; never above the first `/`, so `..` at the root stays at the root (RFC 3986 5.2.4).
fn back_up_to_previous_slash(out: &mut Output<'_>) {
    let Some(mut i) = out.len().checked_sub(1) else {
        return;
    };
    if i == 0 {
        return;
    }
    i -= 1;
    while i > 0 && out.at(i) != Some(b'/') {
        i -= 1;
    }
    out.truncate(i + 1);
}

/// Chromium's `CheckForNestedEscapes`: an escape just decoded within two bytes of a `%` that
/// began no valid escape may complete a new one (`%%30` + `0` reads `%00`); that `%` is then
/// written `%25` so nothing downstream decodes a different path than the one authorised.
fn check_nested_escapes(spec: &[u8], next: usize, last_invalid: usize, out: &mut Output<'_>) {
    let length = out.len();
    let Some(last_unescaped) = out.last() else {
        return;
    };
    let append_next = last_invalid + 2 == length;
    if append_next {
        match spec.get(next) {
            Some(&b) if b < 0x80 => out.push(b),
            _ => return,
        }
    }
    let candidate: Vec<u8> = (0..out.len()).filter_map(|i| out.at(i)).collect();
    if decode_escaped(&candidate, last_invalid).is_some() {
        if !append_next && let Some(b) = out.at(last_invalid + 1) {
            out.push(b);
        }
        out.set(last_invalid + 1, b'2');
        out.set(last_invalid + 2, b'5');
        out.push(last_unescaped);
    } else if append_next {
        out.truncate(length);
    }
}

/// Envoy's `normalize_path` on a path (no query): Chromium's `DoPath`. `None` when the path is
/// already canonical; `Err` when Chromium calls it invalid (an escaped NUL).
fn canonicalize(path: &[u8]) -> Result<Option<Vec<u8>>, Rejected> {
    let mut out = Output {
        input: path,
        len: 0,
        owned: None,
    };
    if path.first().is_none_or(|&b| !is_slash(b)) {
        out.push(b'/');
    }
    let mut valid = true;
    let mut last_invalid_percent: Option<usize> = None;
    let mut i = 0;
    while i < path.len() {
        let c = path[i];
        let flags = PATH_CHARS[usize::from(c)];
        if flags & SPECIAL == 0 {
            out.push(c);
            i += 1;
            continue;
        }
        let dot = dot_len(path, i);
        if dot > 0 {
            if out.last() == Some(b'/') {
                let (kind, consumed) = classify_after_dot(path, i + dot);
                match kind {
                    Dot::Name => out.push(b'.'),
                    Dot::Current => {}
                    Dot::Up => {
                        back_up_to_previous_slash(&mut out);
                        // A `%` that went with the segment is no longer in the output: left
                        // remembered, the nested-escape check would rewrite whatever stands at
                        // its old position (`/.%/../` + "`" + `%30` gave `/%62500`, which
                        // decodes to `/b500`). Envoy's old googleurl fork has this bug
                        // (crbug.com/1080890); sluice does not copy it.
                        if last_invalid_percent.is_some_and(|p| p >= out.len()) {
                            last_invalid_percent = None;
                        }
                    }
                }
                i += dot + consumed;
            } else {
                out.push(b'.');
                i += dot;
            }
            continue;
        }
        if c == b'\\' {
            out.push(b'/');
        } else if c == b'%' {
            match decode_escaped(path, i) {
                Some(value) => {
                    let value_flags = PATH_CHARS[usize::from(value)];
                    if value_flags & UNESCAPE != 0 {
                        out.push(value);
                        if let Some(last) = last_invalid_percent
                            && last + 3 >= out.len()
                        {
                            check_nested_escapes(path, i + 3, last, &mut out);
                        }
                    } else {
                        // Kept as written, hex case included: a server may tell them apart.
                        out.push(b'%');
                        out.push(path[i + 1]);
                        out.push(path[i + 2]);
                        if value_flags & INVALID_BIT != 0 {
                            valid = false;
                        }
                    }
                    i += 2;
                }
                None => {
                    // Chromium passes a malformed escape (`%zz`, a trailing `%2`) through.
                    last_invalid_percent = Some(out.len());
                    out.push(b'%');
                }
            }
        } else if flags & INVALID_BIT != 0 {
            out.push_escaped(c);
            valid = false;
        } else if flags & ESCAPE_BIT != 0 {
            out.push_escaped(c);
        }
        i += 1;
    }
    if !valid {
        return Err(Rejected);
    }
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathNormalization::{Base, DecodeAndMergeSlashes, MergeSlashes, None as NoNorm};

    const ALL: [PathNormalization; 4] = [NoNorm, Base, MergeSlashes, DecodeAndMergeSlashes];

    fn run(mode: PathNormalization, input: &str) -> Result<String, Rejected> {
        normalize(mode, input.as_bytes()).map(|p| String::from_utf8_lossy(&p).into_owned())
    }

    /// (modes, input, expected path or `Err(Rejected)`).
    fn check(table: &[(&[PathNormalization], &str, Result<&str, Rejected>)]) {
        for (modes, input, want) in table {
            for mode in *modes {
                let got = run(*mode, input);
                assert_eq!(got.as_deref().map_err(|r| *r), *want, "{mode:?} {input:?}");
            }
        }
    }

    const NORMALIZING: &[PathNormalization] = &[Base, MergeSlashes, DecodeAndMergeSlashes];
    const MERGING: &[PathNormalization] = &[MergeSlashes, DecodeAndMergeSlashes];

    #[test]
    fn rfc_3986_reference_resolution_examples() {
        // RFC 3986 5.4: each reference merged with the base path `/b/c/d;p` (5.2.3), then
        // normalised; the result is the path of the example's target URI.
        let examples: [(&str, &str); 35] = [
            // 5.4.1 normal examples
            ("g", "/b/c/g"),
            ("./g", "/b/c/g"),
            ("g/", "/b/c/g/"),
            ("?y", "/b/c/d;p?y"),
            ("g?y", "/b/c/g?y"),
            (";x", "/b/c/;x"),
            ("g;x", "/b/c/g;x"),
            ("g;x?y", "/b/c/g;x?y"),
            ("", "/b/c/d;p"),
            (".", "/b/c/"),
            ("./", "/b/c/"),
            ("..", "/b/"),
            ("../", "/b/"),
            ("../g", "/b/g"),
            ("../..", "/"),
            ("../../", "/"),
            ("../../g", "/g"),
            // 5.4.2 abnormal examples
            ("../../../g", "/g"),
            ("../../../../g", "/g"),
            ("g.", "/b/c/g."),
            (".g", "/b/c/.g"),
            ("g..", "/b/c/g.."),
            ("..g", "/b/c/..g"),
            ("./../g", "/b/g"),
            ("./g/.", "/b/c/g/"),
            ("g/./h", "/b/c/g/h"),
            ("g/../h", "/b/c/h"),
            ("g;x=1/./y", "/b/c/g;x=1/y"),
            ("g;x=1/../y", "/b/c/y"),
            ("g?y/./x", "/b/c/g?y/./x"),
            ("g?y/../x", "/b/c/g?y/../x"),
            ("g#s", "/b/c/g"),
            ("g#s/./x", "/b/c/g"),
            ("g#s/../x", "/b/c/g"),
            ("g?y#s", "/b/c/g?y"),
        ];
        for (reference, want) in examples {
            let merged = if reference.is_empty() {
                "/b/c/d;p".to_owned()
            } else if let Some(q) = reference.strip_prefix('?') {
                format!("/b/c/d;p?{q}")
            } else {
                format!("/b/c/{reference}")
            };
            for mode in NORMALIZING {
                assert_eq!(
                    run(*mode, &merged).as_deref(),
                    Ok(want),
                    "{mode:?} {reference:?}"
                );
            }
        }
        // The absolute-path references of 5.4.2, which are not merged.
        check(&[
            (NORMALIZING, "/./g", Ok("/g")),
            (NORMALIZING, "/../g", Ok("/g")),
        ]);
    }

    #[test]
    fn modes_follow_envoy_as_istio_configures_it() {
        // Istio's own normalization test (tests/integration/security/normalization_test.go),
        // which runs these through Envoy for each mode.
        let istio: [(&str, [&str; 4]); 16] = [
            // input, then NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES
            ("/", ["/", "/", "/", "/"]),
            ("/app/", ["/app/", "/app/", "/app/", "/app/"]),
            (
                "/app/../admin",
                ["/app/../admin", "/admin", "/admin", "/admin"],
            ),
            ("/app", ["/app", "/app", "/app", "/app"]),
            ("/app//", ["/app//", "/app//", "/app/", "/app/"]),
            ("/app/%2f", ["/app/%2f", "/app/%2f", "/app/%2f", "/app/"]),
            ("/app%2f/", ["/app%2f/", "/app%2f/", "/app%2f/", "/app/"]),
            (
                "/xyz%30..//abc",
                [
                    "/xyz%30..//abc",
                    "/xyz0..//abc",
                    "/xyz0../abc",
                    "/xyz0../abc",
                ],
            ),
            (
                "/app/%2E./admin",
                ["/app/%2E./admin", "/admin", "/admin", "/admin"],
            ),
            (
                r"/app\admin",
                [r"/app\admin", "/app/admin", "/app/admin", "/app/admin"],
            ),
            (
                r"/app/\/\/\admin",
                [
                    r"/app/\/\/\admin",
                    "/app//////admin",
                    "/app/admin",
                    "/app/admin",
                ],
            ),
            (
                r"/%2Fapp%5cadmin%5Cabc",
                [
                    r"/%2Fapp%5cadmin%5Cabc",
                    r"/%2Fapp%5cadmin%5Cabc",
                    r"/%2Fapp%5cadmin%5Cabc",
                    "/app/admin/abc",
                ],
            ),
            (
                r"/%5Capp%2f%5c%2F%2e%2e%2fadmin%5c\abc",
                [
                    r"/%5Capp%2f%5c%2F%2e%2e%2fadmin%5c\abc",
                    "/%5Capp%2f%5c%2F..%2fadmin%5c/abc",
                    "/%5Capp%2f%5c%2F..%2fadmin%5c/abc",
                    "/app/admin/abc",
                ],
            ),
            (
                "/app//../admin",
                ["/app//../admin", "/app/admin", "/app/admin", "/app/admin"],
            ),
            (
                "/app//../../admin",
                ["/app//../../admin", "/admin", "/admin", "/admin"],
            ),
            ("/app#foo", ["/app", "/app", "/app", "/app"]),
        ];
        for (input, outputs) in istio {
            for (mode, want) in ALL.into_iter().zip(outputs) {
                assert_eq!(run(mode, input).as_deref(), Ok(want), "{mode:?} {input:?}");
            }
        }
        let untouched = [
            "/0x2e0x2e/admin",
            "/0x2e0x2e0x2fadmin",
            "/%25c0%25ae%25c1%259cadmin",
            "/%252e%252e/admin",
            "/%252e%252e%252fadmin",
            "/%c1%9cadmin",
            "/%c0%ae%c0%ae/admin",
            "/%c0%afadmin",
            "/.../admin",
            "/..../admin",
            "/..;/admin",
            "/;/admin",
            "/admin;a=b/xyz",
            "/admin,a=b/xyz",
            "/Admin",
        ];
        for input in untouched {
            for mode in ALL {
                assert!(
                    matches!(normalize(mode, input.as_bytes()), Ok(Cow::Borrowed(_))),
                    "{mode:?} {input:?}"
                );
            }
        }
        check(&[
            (
                &[DecodeAndMergeSlashes],
                "/%c0%2e%c0%2e/admin",
                Ok("/%c0.%c0./admin"),
            ),
            (&[DecodeAndMergeSlashes], "/%c0%2fadmin", Ok("/%c0/admin")),
        ]);
    }

    #[test]
    fn every_single_escape_as_istio_documents() {
        // Istio's "Authorization Policy Normalization" table, %01 to %ff, under
        // DECODE_AND_MERGE_SLASHES: unreserved characters decoded, / and \ decoded, the rest
        // kept as written.
        for b in 1u8..=0xff {
            let input = format!("/admin%{b:02x}");
            let want = match b {
                b'/' | b'\\' => "/admin/".to_owned(),
                b'-' | b'.' | b'_' | b'~' => format!("/admin{}", char::from(b)),
                _ if b.is_ascii_alphanumeric() => format!("/admin{}", char::from(b)),
                _ => input.clone(),
            };
            assert_eq!(
                run(DecodeAndMergeSlashes, &input).as_deref(),
                Ok(want.as_str()),
                "{input}"
            );
        }
    }

    #[test]
    fn envoys_own_path_utility_cases() {
        // test/common/http/path_utility_test.cc, through the canonicalizer alone (the
        // relative inputs never reach it through `normalize`, which keeps them for routing).
        let canonical = |p: &str| {
            canonicalize(p.as_bytes())
                .map(|o| String::from_utf8_lossy(o.as_deref().unwrap_or(p.as_bytes())).into_owned())
        };
        for (input, want) in [
            ("/xyz", "/xyz"),
            ("/x/y/z", "/x/y/z"),
            ("/a/b/../c", "/a/c"),
            ("/a/b/./c", "/a/b/c"),
            ("a/b/../c", "/a/c"),
            ("/a/b/../../../../c", "/c"),
            ("/a/..\\c", "/c"),
            ("/%c0%af", "/%c0%af"),
            ("/%5c%25", "/%5c%25"),
            ("/a/b/%2E%2E/c", "/a/c"),
            ("/a/b/%2E./c", "/a/c"),
            ("/a/b/%2E/c", "/a/b/c"),
            ("..", "/"),
            ("/../a/b", "/a/b"),
            ("/./a/b", "/a/b"),
            ("/A/B/C", "/A/B/C"),
            ("/a/b/%2e%2e/c", "/a/c"),
            ("/a/%2F%2f/c", "/a/%2F%2f/c"),
            ("", "/"),
        ] {
            assert_eq!(canonical(input).as_deref(), Ok(want), "{input:?}");
        }
        for invalid in [
            "/xyz/.%00../abc",
            "/xyz/%00.%00./abc",
            "/xyz/AAAAA%%0000/abc",
        ] {
            assert_eq!(canonical(invalid), Err(Rejected), "{invalid:?}");
        }
        for (input, want) in [
            ("a//b/c", "a/b/c"),
            ("/a//b/c/", "/a/b/c/"),
            ("a//b/c/", "a/b/c/"),
            ("/a", "/a"),
            ("//a/b/c", "/a/b/c"),
            ("/a/b/c//", "/a/b/c/"),
            ("/a///b/c", "/a/b/c"),
            ("/a////b/c", "/a/b/c"),
        ] {
            let merged = merge_slashes(input.as_bytes()).unwrap_or(input.as_bytes().to_vec());
            assert_eq!(String::from_utf8_lossy(&merged), want, "{input:?}");
        }
        check(&[
            (MERGING, "/a//b?a=///c", Ok("/a/b?a=///c")),
            (MERGING, "/a//b?", Ok("/a/b?")),
            (MERGING, "//a/?b", Ok("/a/?b")),
        ]);
    }

    #[test]
    fn the_cases_a_deny_policy_depends_on() {
        check(&[
            (NORMALIZING, "/public/../admin/users", Ok("/admin/users")),
            (
                &[NoNorm],
                "/public/../admin/users",
                Ok("/public/../admin/users"),
            ),
            (NORMALIZING, "/%2e%2e/admin/x", Ok("/admin/x")),
            (
                NORMALIZING,
                "/public/%2E%2E/admin/users",
                Ok("/admin/users"),
            ),
            (NORMALIZING, "/public/%2e%2E/admin", Ok("/admin")),
            (NORMALIZING, "/public/.%2e/admin", Ok("/admin")),
            (NORMALIZING, "/public/./a/../b", Ok("/public/b")),
            (
                NORMALIZING,
                "/public/./a/../b?x=/../y#f",
                Ok("/public/b?x=/../y"),
            ),
            // Above the root is the root (RFC 3986 5.2.4), never an error.
            (NORMALIZING, "/../../x", Ok("/x")),
            (NORMALIZING, "/..", Ok("/")),
            (NORMALIZING, "/a/b/..", Ok("/a/")),
            (NORMALIZING, "/a/b/.", Ok("/a/b/")),
            // `..%2f` is no segment end until %2F is decoded.
            (&[Base, MergeSlashes], "/a/..%2fadmin", Ok("/a/..%2fadmin")),
            (&[DecodeAndMergeSlashes], "/a/..%2fadmin", Ok("/admin")),
            (
                &[DecodeAndMergeSlashes],
                "/admin%2Fusers",
                Ok("/admin/users"),
            ),
            (
                &[DecodeAndMergeSlashes],
                "/admin%5cusers",
                Ok("/admin/users"),
            ),
            (
                &[Base, MergeSlashes],
                "/admin%2Fusers",
                Ok("/admin%2Fusers"),
            ),
            // A double-encoded dot is decoded once only.
            (NORMALIZING, "/%252e%252e/admin", Ok("/%252e%252e/admin")),
            // Doubled slashes.
            (&[NoNorm, Base], "//admin/x", Ok("//admin/x")),
            (MERGING, "//admin/x", Ok("/admin/x")),
            (MERGING, "/a//../admin", Ok("/a/admin")),
            // Envoy's merge keeps a leading and a trailing slash, even when they are one run.
            (MERGING, "//", Ok("//")),
            (MERGING, "///", Ok("//")),
            // Unreserved escapes decoded; others kept with their hex case.
            (NORMALIZING, "/%41%7e%2D%5f", Ok("/A~-_")),
            (&[Base, MergeSlashes], "/%3f%3A%25%2f", Ok("/%3f%3A%25%2f")),
            // Characters a path may not hold are escaped, upper case.
            (NORMALIZING, "/a\"b{c}|d^e", Ok("/a%22b%7Bc%7D%7Cd%5Ee")),
            (NORMALIZING, "/caf\u{e9}", Ok("/caf%C3%A9")),
            // Malformed escapes pass, as in Chromium; one that a decode would complete is
            // defused.
            (NORMALIZING, "/%zz/%2/%", Ok("/%zz/%2/%")),
            (NORMALIZING, "/a%%30/b", Ok("/a%0/b")),
            (NORMALIZING, "/a%%300", Ok("/a%2500")),
            (NORMALIZING, "/a%3%30", Ok("/a%2530")),
            (NORMALIZING, "/a%%30%30", Ok("/a%2500")),
            (NORMALIZING, "/%0%30", Ok("/%2500")),
            // An escaped NUL is refused by every normalising mode.
            (NORMALIZING, "/admin%00", Err(Rejected)),
            (NORMALIZING, "/x?a=%00", Ok("/x?a=%00")),
            (&[NoNorm], "/admin%00", Ok("/admin%00")),
            // Left to routing.
            (&ALL, "*", Ok("*")),
            (&ALL, "", Ok("")),
            (&ALL, "/", Ok("/")),
            (&ALL, "?q", Ok("?q")),
        ]);
    }

    #[test]
    fn nothing_is_copied_when_nothing_changes() {
        for input in ["/", "/a/b.c/.d/e..", "/x?y=/../z", "/%2F/%3a", "/a//b"] {
            assert!(
                matches!(normalize(Base, input.as_bytes()), Ok(Cow::Borrowed(_))),
                "{input}"
            );
        }
    }

    #[test]
    fn normalising_is_idempotent_and_never_panics() {
        // A deterministic generator over the bytes that matter (xorshift, no new dependency):
        // every mode, every output normalises to itself, and every normalised path is one the
        // URI parser takes.
        let alphabet: &[u8] = b"/\\.%2eEfFcC5a0?#;~-_ \x00\x7f\x80\xff";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let mut input = vec![b'/'];
            for _ in 0..len {
                let r = next();
                input.push(if r % 5 == 0 {
                    (r >> 8) as u8
                } else {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                });
            }
            for mode in ALL {
                let Ok(once) = normalize(mode, &input) else {
                    continue;
                };
                if mode == NoNorm {
                    continue;
                }
                let twice = normalize(mode, &once).expect("a normalised path stays valid");
                assert_eq!(once, twice, "{mode:?} {input:?}");
                let path_only = once.split(|&b| b == b'?').next().unwrap_or_default();
                assert!(
                    PathAndQuery::try_from(path_only).is_ok(),
                    "{mode:?} {input:?} -> {once:?}"
                );
            }
            // Arbitrary bytes, not only paths.
            let raw: Vec<u8> = input[1..].to_vec();
            for mode in ALL {
                let _ = normalize(mode, &raw);
                let _ = canonicalize(&raw);
            }
        }
    }

    #[test]
    fn a_refused_path_is_envoys_400() {
        let e = Error::PathNormalization;
        assert_eq!(e.http_status(), 400);
        assert_eq!(e.details(), "path_normalization_failed");
        assert_eq!(e.response_flag(), "-");
        assert_eq!(e.body(), "");
    }

    #[test]
    fn apply_rewrites_the_uri_and_keeps_its_authority() {
        let (mut parts, ()) = http::Request::get("http://api.example.com/a/./b/../c?q=/../x")
            .body(())
            .expect("request")
            .into_parts();
        apply(Base, &mut parts).expect("normalised");
        assert_eq!(parts.uri, "http://api.example.com/a/c?q=/../x");
        let (mut parts, ()) = http::Request::get("/admin%00")
            .body(())
            .expect("request")
            .into_parts();
        assert!(matches!(
            apply(Base, &mut parts),
            Err(Error::PathNormalization)
        ));
        assert_eq!(parts.uri, "/admin%00", "a refused request keeps its path");
        let (mut parts, ()) = http::Request::connect("api.example.com:443")
            .body(())
            .expect("request")
            .into_parts();
        apply(MergeSlashes, &mut parts).expect("no path");
        assert_eq!(parts.uri, "api.example.com:443");
    }
}
