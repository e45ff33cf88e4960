//! DestinationRule validation (being written).

use sluice_model::networking::DestinationRule;

use super::Report;

pub(crate) fn validate(_r: &mut Report<'_, DestinationRule>) {}
