//! `sluice_proxy::sni::parse`: the ClientHello reader every TLS listener runs on the first
//! bytes of a connection, before anything is authenticated.
//!
//! Invariants:
//! - never panics, whatever the bytes;
//! - a server name found is canonical: non-empty ASCII, lower-case, no trailing dot, no empty
//!   label, labels of at most 63 bytes, at most 253 bytes, not an IP address, and a fixed
//!   point of `authority::name` (so routing and policy see the same spelling);
//! - the answer is stable as bytes arrive: every prefix of the input reads `NeedMore` or the
//!   answer of the whole input (`inspect` decides on whatever prefix the socket delivered, so
//!   a different answer for a prefix would let TCP segmentation change the decision).
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use sluice_proxy::authority::{self, Host};
use sluice_proxy::sni::{self, Peek};

fuzz_target!(|data: &[u8]| {
    let whole = sni::parse(data);
    if let Peek::Found(hello) = &whole
        && let Some(name) = &hello.sni
    {
        assert!(!name.is_empty(), "empty SNI");
        assert!(name.is_ascii(), "non-ASCII SNI {name:?}");
        assert_eq!(name, &name.to_ascii_lowercase(), "SNI not lower-case");
        assert!(!name.ends_with('.'), "trailing dot in {name:?}");
        assert!(name.len() <= 253, "SNI longer than 253 bytes");
        for label in name.split('.') {
            assert!(!label.is_empty(), "empty label in {name:?}");
            assert!(label.len() <= 63, "label over 63 bytes in {name:?}");
        }
        assert!(
            name.parse::<IpAddr>().is_err(),
            "IP address as SNI {name:?}"
        );
        assert_eq!(
            authority::name(name).as_deref(),
            Ok(name.as_str()),
            "SNI is not canonical"
        );
        assert_eq!(Host::parse(name), Ok(Host::Name(name.clone())));
    }

    // Prefixes: all of them for small inputs, an even sample of larger ones.
    let n = data.len();
    let step = if n <= 512 { 1 } else { n / 64 };
    let mut cut = 0;
    while cut < n {
        let partial = sni::parse(&data[..cut]);
        assert!(
            partial == Peek::NeedMore || partial == whole,
            "prefix of {cut} bytes reads {partial:?}, the whole {n} bytes {whole:?}"
        );
        cut += step;
    }
});
