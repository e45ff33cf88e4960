//! Validation and analysis of Istio configuration: pure, synchronous functions from
//! [`Resources`] to [`Diagnostic`]s.
//!
//! [`validate`] checks each resource on its own, as Istio's admission webhook does;
//! [`analyze`] checks resources against each other, as `istioctl analyze` does, and adds
//! sluice's own checks where a setup cannot work as its author meant.

pub mod analyze;
pub mod authz;
pub mod lower;
pub mod validate;

use sluice_model::{Diagnostic, Resources};

/// Everything sluice has to say about a configuration: per-resource validation, then analysis
/// across resources, sorted by file and line.
pub fn check(resources: &Resources) -> Vec<Diagnostic> {
    let mut out = validate::validate(resources);
    out.extend(analyze::analyze(resources));
    sort(&mut out);
    out
}

/// Orders diagnostics by file, line, column, then code, so output is stable.
pub fn sort(diags: &mut [Diagnostic]) {
    diags.sort_by(|a, b| {
        let key = |d: &Diagnostic| {
            d.location
                .as_ref()
                .map(|l| (l.file.clone(), l.line, l.column))
        };
        key(a)
            .cmp(&key(b))
            .then_with(|| a.code.cmp(b.code))
            .then_with(|| a.message.cmp(&b.message))
    });
}
