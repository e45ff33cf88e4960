//! Istio's configuration as typed Rust values.
//!
//! YAML goes in through [`load`]; what comes out is a [`Resources`] value whose every resource
//! remembers the file and line it came from, and whose every field has been parsed into a real
//! type (durations, selectors, enums). Nothing downstream looks at YAML or at Istio's string
//! encodings again. Errors are [`Diagnostic`]s that name file, line, column and field path.

pub mod diag;
pub mod kube;
pub mod load;
pub mod mesh;
pub mod networking;
pub mod rate_limit_service;
pub mod resource;
pub mod security;
pub mod source;
pub mod telemetry;
pub mod values;
mod yaml;

pub use diag::{Diagnostic, Level};
pub use load::{Loaded, load_paths, load_str, load_value, parse_yaml};
pub use resource::{Kind, ObjectMeta, Resource, Resources};
pub use source::{Location, Source};
