//! Inputs the fuzz targets (`fuzz/`, docs/fuzzing.md) found, replayed through the same public
//! API as ordinary tests, so the bug they showed stays fixed.

use sluice_proxy::http::path::normalize;
use sluice_snapshot::PathNormalization;

const NORMALIZING: [PathNormalization; 3] = [
    PathNormalization::Base,
    PathNormalization::MergeSlashes,
    PathNormalization::DecodeAndMergeSlashes,
];

/// `path_normalization`: an invalid `%` (`%/`) in a segment that a later `..` removed was still
/// remembered, by its old output position, as the last invalid escape. The nested-escape check
/// then rewrote whatever now stood there: `/.%/../` + "`" + `%30` came out `/%62500`, an escape
/// of `b` the canonical form never keeps. Authorization saw `/%62500`, an upstream that decodes
/// unreserved escapes served `/b500` (a DENY on `/b*` walked around), and normalising again gave
/// `/b500`. Now the removed `%` is forgotten with its segment.
#[test]
fn dot_dot_forgets_an_invalid_escape_it_removed() {
    let input: &[u8] = b"/.%/../`%30";
    for mode in NORMALIZING {
        let once = normalize(mode, input).expect("normalises").into_owned();
        assert_eq!(
            String::from_utf8_lossy(&once),
            "/%600",
            "{mode:?}: `/` + \"`\" escaped + `0` decoded"
        );
        let twice = normalize(mode, &once).expect("normalises");
        assert_eq!(twice.as_ref(), &once[..], "{mode:?}: normalising twice");
    }
    // The fuzzer's original find, and the same shape with other characters around it.
    let found: &[u8] = b"/0yz/.%2+\x16/../`%30bc";
    for mode in NORMALIZING {
        let once = normalize(mode, found).expect("normalises").into_owned();
        assert_eq!(String::from_utf8_lossy(&once), "/0yz/%600bc", "{mode:?}");
        assert_eq!(
            normalize(mode, &once).expect("normalises").as_ref(),
            &once[..]
        );
    }
}

/// `client_hello`: a complete first record too short to hold a handshake header (1–3 bytes)
/// was only judged once four handshake bytes were in, while the same bytes cut inside the record
/// were judged by their first byte at once. So `16 03 01 00 03 | 03 01 07` read `NeedMore`
/// whole but `NotTls` cut after six bytes: what the proxy did with a connection (plain, or
/// refused after the inspection timeout / at EOF) depended on how TCP segmented it.
#[tokio::test]
async fn a_short_first_record_is_judged_by_its_first_byte() {
    use sluice_proxy::sni::{self, Peek};

    let bytes: &[u8] = b"\x16\x03\x01\x00\x03\x03\x01\x07";
    assert_eq!(sni::parse(bytes), Peek::NotTls);
    for cut in 0..bytes.len() {
        let prefix = sni::parse(&bytes[..cut]);
        assert!(
            prefix == Peek::NeedMore || prefix == Peek::NotTls,
            "prefix of {cut} bytes: {prefix:?}"
        );
    }
    // The client sends all eight bytes at once, then closes: plain, as a cut read would say.
    let (_io, peek) = sni::inspect(bytes, std::time::Duration::from_secs(5)).await;
    assert!(matches!(peek, Ok(Peek::NotTls)), "{peek:?}");
}
