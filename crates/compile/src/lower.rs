//! Lowering: Istio resources → the [`Snapshot`] a proxy runs on.
//!
//! [`compile`] is pure, synchronous and deterministic: the same resources and options give the
//! same snapshot, whatever the order of the input files (where Istio's own semantics do not
//! depend on order: it orders configs by creation time, then `name.namespace`, and so does
//! this module). Everything the compiler cannot lower is a [`Diagnostic`], never silence.
//!
//! The rules follow Istio's own code (`pilot/pkg/networking/core/`): gateway listeners
//! (`gateway.go`), HTTP routes (`route/route.go`, `route/retry/retry.go`), TLS/TCP routes
//! (`gateway.go`, `tls.go`), clusters (`cluster_builder.go`, `cluster_traffic_policy.go`) and
//! the DestinationRule lookup (`model/push_context.go`). Each module cites what it follows.
//!
//! Choices worth knowing (each follows Istio unless it says otherwise):
//! - DestinationRule lookup is Istio's: the proxy's namespace, then the namespace of the
//!   ServiceEntry that registers the host, then the root namespace; rules of one namespace for
//!   the same host merge (subsets concatenated, the first traffic policy kept).
//! - A gateway TCP server uses the first `tcp` rule that matches it; `destinationSubnets` are
//!   not evaluated at a gateway (its connections' destination is the gateway itself).
//! - A PASSTHROUGH server is one TLS chain selected by the server's hosts; inside it, routes
//!   select by the `tls` rules' `sniHosts`. An SNI host routed once on a port is not routed
//!   again (Istio skips the later match).
//! - Several weighted destinations whose weights do not sum to 100 are scaled to 100 (the
//!   snapshot's contract), with a diagnostic.
//! - sluice's extension: a wildcard host with resolution NONE is resolved like DYNAMIC_DNS at
//!   the gateway, where a connection's original destination is the gateway itself.
//! - Unset connection-pool limits stay `None`; Istio sets Envoy's thresholds to the maximum,
//!   so `None` means "no limit".
//! - ISTIO_MUTUAL servers carry empty certificate paths: the data plane uses the workload
//!   identity (`--identity-dir`).
//!
//! Layout: `gateway` and `sidecar` build listeners for the two roles, `http` and `tcp`
//! the routes inside them, `destination` turns route destinations into cluster references,
//! `cluster` builds every referenced cluster from ServiceEntries and DestinationRules,
//! `mesh` reads mesh-wide settings, `telemetry` the Telemetry resources, `registry` and
//! `hosts` hold Istio's lookups.

mod cluster;
pub mod credential;
mod destination;
mod gateway;
mod hosts;
mod http;
mod mesh;
mod ratelimit;
mod registry;
mod sidecar;
mod tcp;
mod telemetry;

use std::collections::BTreeMap;
use std::path::PathBuf;

use sluice_model::mesh::MeshConfig;
use sluice_model::networking::virtual_service::HTTPRetry;
use sluice_model::resource::IstioKind;
use sluice_model::{Diagnostic, Level, Location, Resource, Resources};
pub use sluice_snapshot::Role;
use sluice_snapshot::Snapshot;

use registry::Registry;

/// Codes of the compiler's own findings. Features read but not lowered use the loader's
/// `SLC0006` ([`NOT_SUPPORTED`]).
pub mod codes {
    pub use sluice_model::diag::codes::NOT_SUPPORTED;
    /// Part of a resource is left out of the snapshot: it conflicts with what came first, or
    /// cannot be built as written (a missing certificate, an invalid value).
    pub const DROPPED: &str = "SLC0201";
    /// A route's destination cannot exist (no ServiceEntry registers the host, the port is not
    /// declared, the subset is not defined): its cluster refuses the traffic.
    pub const BLACK_HOLE: &str = "SLC0202";
    /// A cluster-local host (the egress gateway's service) needs a MESH_INTERNAL ServiceEntry
    /// with STATIC endpoints outside Kubernetes.
    pub const MESH_SERVICE_MISSING: &str = "SLC0203";
    /// A rule can never match because an earlier one matches everything; dropped, as Istio does.
    pub const UNREACHABLE: &str = "SLC0204";
    /// A value was adjusted to what the data plane runs (weights scaled to 100, OPTIONAL_MUTUAL
    /// made MUTUAL); the message says how.
    pub const ADJUSTED: &str = "SLC0205";
    /// A server or port has nothing to route to: what arrives there is closed or answered 404.
    pub const NO_ROUTES: &str = "SLC0206";
}

pub use codes::NOT_SUPPORTED;

/// Which proxy to compile for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileOptions {
    pub role: Role,
    /// The proxy's workload labels: they select Gateways (and Sidecars, DestinationRules with a
    /// workload selector, match `sourceLabels`).
    pub labels: BTreeMap<String, String>,
    /// The proxy's own namespace: what it can see (`exportTo`) and which rules come first.
    pub namespace: String,
    /// Where `credentialName` secrets live, Kubernetes TLS-secret layout:
    /// `<dir>/<name>/tls.crt`, `tls.key`, `ca.crt`. `None`: servers and clusters naming a
    /// credential are left out, with a diagnostic.
    pub credentials_dir: Option<PathBuf>,
    /// Where the serving process writes the Secrets of the inputs (see
    /// [`credential::secret_dir`]); `None`: a `credentialName` naming one is left out.
    pub secrets_dir: Option<PathBuf>,
}

impl CompileOptions {
    /// The egress gateway: labels `istio=egressgateway`, namespace `istio-system`.
    pub fn gateway() -> Self {
        CompileOptions {
            role: Role::Gateway,
            labels: BTreeMap::from([("istio".to_owned(), "egressgateway".to_owned())]),
            namespace: "istio-system".to_owned(),
            credentials_dir: None,
            secrets_dir: None,
        }
    }

    /// A sidecar beside a workload of `namespace`.
    pub fn sidecar(namespace: &str) -> Self {
        CompileOptions {
            role: Role::Sidecar,
            labels: BTreeMap::new(),
            namespace: namespace.to_owned(),
            credentials_dir: None,
            secrets_dir: None,
        }
    }
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self::gateway()
    }
}

/// Compiles `resources` into the snapshot of the proxy described by `options`, with every
/// finding about what could not be lowered as written (sorted by file and line).
pub fn compile(resources: &Resources, options: &CompileOptions) -> (Snapshot, Vec<Diagnostic>) {
    let mut cx = Ctx::new(resources, options);
    let mut listeners = match options.role {
        Role::Gateway => gateway::listeners(&mut cx),
        Role::Sidecar => sidecar::listeners(&mut cx),
    };
    listeners.sort_by_key(|l| l.port);
    let mut clusters = cluster::build(&mut cx);
    let (rate_limits, rate_limit_domains) = ratelimit::build(&mut cx, &listeners);
    let outbound_policy = mesh::outbound_policy(&mut cx);
    let fallback = match options.role {
        Role::Gateway => None,
        Role::Sidecar => {
            let registered = sidecar::registered(&cx);
            let (fallback, cluster) =
                sidecar::fallback(outbound_policy, &mut listeners, registered);
            clusters.insert(cluster.name.clone(), cluster);
            Some(fallback)
        }
    };
    let access_log = mesh::access_log(&cx);
    let telemetry = telemetry::build(&mut cx);
    let path_normalization = mesh::path_normalization(&cx);
    mesh::report_unlowered(&mut cx);
    let (authz, authz_diags) = crate::authz::compile_policies(
        resources,
        &options.namespace,
        &options.labels,
        crate::authz::ROOT_NAMESPACE,
    );
    cx.diags.extend(authz_diags);
    let snapshot = Snapshot {
        role: options.role,
        labels: options.labels.clone(),
        listeners,
        clusters,
        outbound_policy,
        access_log,
        telemetry,
        authz,
        rate_limits,
        rate_limit_domains,
        fallback,
        path_normalization,
    };
    let mut diags = cx.diags;
    crate::sort(&mut diags);
    diags.dedup();
    (snapshot, diags)
}

/// Where something was written, for a diagnostic about it found later (a cluster that cannot
/// exist is reported at the first route that names it).
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub origin: String,
    pub location: Location,
    pub path: String,
}

impl Origin {
    pub fn of<T: IstioKind>(r: &Resource<T>, path: &str) -> Origin {
        Origin {
            origin: r.origin(),
            location: r.source.location_of(path),
            path: path.to_owned(),
        }
    }

    pub fn diag(&self, code: &'static str, level: Level, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(code, level, message)
            .origin(self.origin.clone())
            .at(self.location.clone())
            .path(self.path.clone())
    }
}

/// One upstream cluster a route refers to: `outbound|<port>|<subset>|<host>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ClusterKey {
    pub host: String,
    pub port: u16,
    pub subset: String,
}

impl ClusterKey {
    pub fn name(&self) -> String {
        sluice_snapshot::cluster_name(self.port, &self.subset, &self.host)
    }
}

/// The state of one compilation.
pub(crate) struct Ctx<'a> {
    pub opts: &'a CompileOptions,
    pub resources: &'a Resources,
    pub mesh: MeshConfig,
    /// Where the mesh config came from, for diagnostics about it.
    pub mesh_origin: Option<Location>,
    pub reg: Registry<'a>,
    pub diags: Vec<Diagnostic>,
    /// Every cluster a route refers to, with where it was first referenced.
    pub clusters: BTreeMap<ClusterKey, Origin>,
    /// meshConfig `defaultHttpRetryPolicy`, when set.
    pub default_retry: Option<HTTPRetry>,
}

impl<'a> Ctx<'a> {
    fn new(resources: &'a Resources, opts: &'a CompileOptions) -> Self {
        let (mesh, mesh_origin) = match resources.mesh_config() {
            Some((m, src)) => (m.clone(), Some(src.location())),
            None => (MeshConfig::default(), None),
        };
        let root_ns = mesh.root_namespace.as_deref().unwrap_or("istio-system");
        let reg = Registry::new(resources, &mesh, &opts.namespace, root_ns, &opts.labels);
        let mut cx = Ctx {
            opts,
            resources,
            mesh_origin,
            reg,
            diags: Vec::new(),
            clusters: BTreeMap::new(),
            default_retry: None,
            mesh,
        };
        cx.default_retry = mesh::default_retry(&mut cx);
        cx
    }

    pub fn role(&self) -> Role {
        self.opts.role
    }

    /// A finding about the field `path` of `r`.
    pub fn report<T: IstioKind>(
        &mut self,
        r: &Resource<T>,
        code: &'static str,
        level: Level,
        path: &str,
        message: impl Into<String>,
    ) {
        let d = Origin::of(r, path).diag(code, level, message);
        self.diags.push(d);
    }

    /// "not lowered" finding for a field that is set but that sluice does not act on.
    pub fn unsupported<T: IstioKind>(&mut self, r: &Resource<T>, path: &str, what: &str) {
        self.report(
            r,
            NOT_SUPPORTED,
            Level::Warning,
            path,
            format!("{what} is not supported yet: the compiler leaves it out"),
        );
    }

    /// Records that a route sends traffic to `key`; returns the cluster name.
    pub fn reference(&mut self, key: ClusterKey, origin: Origin) -> String {
        let name = key.name();
        self.clusters.entry(key).or_insert(origin);
        name
    }

    /// The SPIFFE trust domain (`cluster.local` unless meshConfig says otherwise).
    pub fn trust_domain(&self) -> &str {
        self.mesh.trust_domain.as_deref().unwrap_or("cluster.local")
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers for the unit tests of the lowering modules.

    use sluice_model::{Diagnostic, Resources};
    use sluice_snapshot::Snapshot;

    use super::{CompileOptions, compile};

    pub fn load(yaml: &str) -> Resources {
        let loaded = sluice_model::load_str("test.yaml", yaml);
        assert!(
            loaded.diagnostics.is_empty(),
            "test YAML must load cleanly: {:#?}",
            loaded.diagnostics
        );
        loaded.resources
    }

    pub fn gateway(yaml: &str) -> (Snapshot, Vec<Diagnostic>) {
        compile(&load(yaml), &CompileOptions::gateway())
    }

    pub fn sidecar(yaml: &str, ns: &str) -> (Snapshot, Vec<Diagnostic>) {
        compile(&load(yaml), &CompileOptions::sidecar(ns))
    }

    pub fn codes(diags: &[Diagnostic]) -> Vec<&'static str> {
        diags.iter().map(|d| d.code).collect()
    }

    /// True when some diagnostic has `code` and mentions `needle`.
    pub fn has(diags: &[Diagnostic], code: &str, needle: &str) -> bool {
        diags
            .iter()
            .any(|d| d.code == code && d.message.contains(needle))
    }
}
