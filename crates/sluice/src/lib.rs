//! The `sluice` binary: composition root and command line.

pub mod admin;
pub mod analyze;
pub mod certs;
pub mod cli;
pub mod demo;
pub mod egress_map;
pub mod gateway;
pub mod logging;
pub mod proxy_config;
pub mod reload;
pub mod secrets;
pub mod serve;
pub mod sidecar;
pub mod stats;
