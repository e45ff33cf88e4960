//! The `sluice` binary: composition root and command line.

pub mod analyze;
pub mod cli;
