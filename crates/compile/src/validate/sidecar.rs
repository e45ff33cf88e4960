//! Sidecar validation (being written).

use sluice_model::networking::Sidecar;

use super::Report;

pub(crate) fn validate(_r: &mut Report<'_, Sidecar>) {}
