//! sluice's data plane (being written).

pub mod config;

pub use config::ProxyConfig;
