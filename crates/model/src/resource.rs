//! The envelope every resource shares (apiVersion, kind, metadata) and the loaded set.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::mesh::{IstioOperator, MeshConfig};
use crate::networking::{
    DestinationRule, EnvoyFilter, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry,
};
use crate::rate_limit_service::RateLimitConfig;
use crate::security::{AuthorizationPolicy, PeerAuthentication};
use crate::source::Source;
use crate::telemetry::Telemetry;

/// Kubernetes object metadata: the fields a user or the API server writes. Anything else is a
/// typo and rejected like any unknown field.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_fields: Vec<serde_json::Value>,
}

/// The namespace of a resource whose YAML names none, as `kubectl apply -f` would place it.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The Istio kinds sluice reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    ServiceEntry,
    Gateway,
    VirtualService,
    DestinationRule,
    Sidecar,
    WorkloadEntry,
    EnvoyFilter,
    AuthorizationPolicy,
    PeerAuthentication,
    Telemetry,
    IstioOperator,
    MeshConfig,
    /// The rate-limit service's configuration (a ConfigMap's `config.yaml`, or a bare file).
    RateLimitConfig,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::ServiceEntry,
        Kind::Gateway,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Sidecar,
        Kind::WorkloadEntry,
        Kind::EnvoyFilter,
        Kind::AuthorizationPolicy,
        Kind::PeerAuthentication,
        Kind::Telemetry,
        Kind::IstioOperator,
        Kind::MeshConfig,
        Kind::RateLimitConfig,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Gateway => "Gateway",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Sidecar => "Sidecar",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::EnvoyFilter => "EnvoyFilter",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::Telemetry => "Telemetry",
            Kind::IstioOperator => "IstioOperator",
            Kind::MeshConfig => "MeshConfig",
            Kind::RateLimitConfig => "RateLimitConfig",
        }
    }

    pub fn group(self) -> &'static str {
        match self {
            Kind::ServiceEntry
            | Kind::Gateway
            | Kind::VirtualService
            | Kind::DestinationRule
            | Kind::Sidecar
            | Kind::WorkloadEntry
            | Kind::EnvoyFilter => "networking.istio.io",
            Kind::AuthorizationPolicy | Kind::PeerAuthentication => "security.istio.io",
            Kind::Telemetry => "telemetry.istio.io",
            Kind::IstioOperator => "install.istio.io",
            Kind::MeshConfig => "mesh.istio.io",
            // Not a Kubernetes kind: the envoyproxy/ratelimit service's file format.
            Kind::RateLimitConfig => "ratelimit.envoyproxy.io",
        }
    }

    /// The API versions Istio serves for this kind.
    pub fn versions(self) -> &'static [&'static str] {
        match self.group() {
            "networking.istio.io" => &["v1", "v1beta1", "v1alpha3"],
            "security.istio.io" => &["v1", "v1beta1"],
            "telemetry.istio.io" => &["v1", "v1alpha1"],
            "install.istio.io" => &["v1alpha1"],
            _ => &["v1alpha1"],
        }
    }

    /// The kind a document's `kind:` names. The rate-limit service's configuration has no
    /// Kubernetes kind: it comes bare or inside a ConfigMap.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| *k != Kind::RateLimitConfig)
            .find(|k| k.name() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A spec type that is the body of one Istio kind.
pub trait IstioKind {
    const KIND: Kind;
}

macro_rules! istio_kinds {
    ($($ty:ty => $kind:ident),* $(,)?) => {
        $(impl IstioKind for $ty { const KIND: Kind = Kind::$kind; })*
    };
}

istio_kinds! {
    ServiceEntry => ServiceEntry,
    Gateway => Gateway,
    VirtualService => VirtualService,
    DestinationRule => DestinationRule,
    Sidecar => Sidecar,
    WorkloadEntry => WorkloadEntry,
    EnvoyFilter => EnvoyFilter,
    AuthorizationPolicy => AuthorizationPolicy,
    PeerAuthentication => PeerAuthentication,
    Telemetry => Telemetry,
    IstioOperator => IstioOperator,
    MeshConfig => MeshConfig,
    RateLimitConfig => RateLimitConfig,
}

/// One resource: its metadata, its typed spec and where it was written.
#[derive(Debug, Clone)]
pub struct Resource<T> {
    pub api_version: String,
    pub meta: ObjectMeta,
    pub spec: T,
    pub source: Source,
}

impl<T> Resource<T> {
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// The namespace, `default` when the YAML names none.
    pub fn namespace(&self) -> &str {
        self.meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }

    /// `Kind namespace/name` (or `Kind name` when the YAML gives no namespace), as istioctl
    /// names a message's origin.
    pub fn origin_of(&self, kind: &str) -> String {
        match &self.meta.namespace {
            Some(ns) => format!("{kind} {ns}/{}", self.meta.name),
            None => format!("{kind} {}", self.meta.name),
        }
    }
}

impl<T: IstioKind> Resource<T> {
    pub fn kind(&self) -> Kind {
        T::KIND
    }

    pub fn origin(&self) -> String {
        self.origin_of(T::KIND.name())
    }
}

/// A document that is not an Istio resource (Pod, Service, Namespace, Secret…): kept loosely,
/// because some analyses look at it (labels of pods, ports of services).
#[derive(Debug, Clone)]
pub struct OtherObject {
    pub kind: String,
    pub body: serde_json::Value,
}

/// Everything loaded from a set of files, by kind, in load order.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub service_entries: Vec<Resource<ServiceEntry>>,
    pub gateways: Vec<Resource<Gateway>>,
    pub virtual_services: Vec<Resource<VirtualService>>,
    pub destination_rules: Vec<Resource<DestinationRule>>,
    pub sidecars: Vec<Resource<Sidecar>>,
    pub workload_entries: Vec<Resource<WorkloadEntry>>,
    pub envoy_filters: Vec<Resource<EnvoyFilter>>,
    pub authorization_policies: Vec<Resource<AuthorizationPolicy>>,
    pub peer_authentications: Vec<Resource<PeerAuthentication>>,
    pub telemetries: Vec<Resource<Telemetry>>,
    pub istio_operators: Vec<Resource<IstioOperator>>,
    /// Bare MeshConfig documents and `istio` ConfigMaps' `mesh` data.
    pub mesh_configs: Vec<Resource<MeshConfig>>,
    /// Rate-limit service configurations (global rate limits), from ConfigMaps or bare files.
    pub rate_limit_configs: Vec<Resource<RateLimitConfig>>,
    /// Kubernetes Services among the inputs, as the ServiceEntries Istio's Kubernetes
    /// registry would make of them ([`crate::kube`]). Not counted as resources.
    pub kube_services: Vec<Resource<ServiceEntry>>,
    pub others: Vec<Resource<OtherObject>>,
}

impl Resources {
    /// How many Istio resources were loaded (not counting `others`).
    pub fn len(&self) -> usize {
        self.service_entries.len()
            + self.gateways.len()
            + self.virtual_services.len()
            + self.destination_rules.len()
            + self.sidecars.len()
            + self.workload_entries.len()
            + self.envoy_filters.len()
            + self.authorization_policies.len()
            + self.peer_authentications.len()
            + self.telemetries.len()
            + self.istio_operators.len()
            + self.mesh_configs.len()
            + self.rate_limit_configs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The mesh configuration in force and where it came from: bare MeshConfig documents and
    /// IstioOperator `meshConfig` sections, the last one loaded winning, as a later
    /// `istioctl install` replaces an earlier one. `None` means Istio's defaults.
    pub fn mesh_config(&self) -> Option<(&MeshConfig, &Source)> {
        let from_operators = self
            .istio_operators
            .iter()
            .filter_map(|r| r.spec.mesh_config.as_ref().map(|m| (m, &r.source)));
        let from_files = self.mesh_configs.iter().map(|r| (&r.spec, &r.source));
        from_operators
            .chain(from_files)
            .max_by(|a, b| a.1.order().cmp(&b.1.order()))
    }
}
