//! IstioOperator and MeshConfig validation (being written).

use sluice_model::mesh::{IstioOperator, MeshConfig};

use super::Report;

pub(crate) fn validate(_r: &mut Report<'_, IstioOperator>) {}

/// `base` is the path of the MeshConfig inside its resource (`spec.meshConfig`, or empty for a
/// bare MeshConfig document).
pub(crate) fn validate_mesh_config<T>(_r: &mut Report<'_, T>, _mesh: &MeshConfig, _base: &str) {}
