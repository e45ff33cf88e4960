//! VirtualService validation (being written).

use sluice_model::networking::VirtualService;

use super::Report;

pub(crate) fn validate(_r: &mut Report<'_, VirtualService>) {}
