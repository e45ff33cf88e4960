//! Real servers for tests, on loopback only, stopped when dropped.
//!
//! - [`TestCa`] / [`CertKey`]: a test CA and certificates (rcgen, ring), rustls configs.
//! - [`HttpsUpstream`], [`HttpUpstream`], [`TcpUpstream`]: upstream stand-ins that echo what
//!   they saw as JSON (or a banner + echo for TCP).
//! - [`DnsServer`]: a hickory DNS server (UDP + TCP) with mutable answers.
//! - [`SluiceProcess`]: the `sluice` binary as a child process, ready-checked and killed on drop.
//! - [`client`]: small real clients (HTTPS, HTTP, raw TCP, curl).
//! - [`free_loopback_addr`]: a distinct 127.0.x.y per call, for real ports side by side.
//! - [`TempDir`]: a scratch directory removed on drop.
//! - [`RedisServer`]: a real `redis-server` on loopback, paused or killed on demand.

pub mod ca;
pub mod client;
pub mod dns;
mod net;
pub mod process;
pub mod redis;
pub mod tempdir;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};

pub use ca::{CertKey, TestCa};
pub use dns::DnsServer;
pub use process::{SluiceProcess, free_loopback_addr};
pub use redis::RedisServer;
pub use tempdir::TempDir;
pub use upstream::{HttpUpstream, HttpsUpstream, TcpUpstream, UpstreamOptions};

/// Panics unless `ip` is loopback (127.0.0.0/8 or ::1): tests never touch other addresses.
pub fn assert_loopback_ip(ip: IpAddr, what: &str) {
    assert!(
        ip.is_loopback(),
        "test bug: {what} must use a loopback address (127.0.0.0/8 or ::1), got {ip}"
    );
}

/// [`assert_loopback_ip`] for a socket address.
pub fn assert_loopback(addr: SocketAddr, what: &str) {
    assert_loopback_ip(addr.ip(), what);
}
