//! Config → snapshot, at start and whenever the files change. The whole snapshot is swapped
//! at once; a configuration with errors never replaces a good one.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sluice_compile::lower::{CompileOptions, compile};
use sluice_model::{Diagnostic, Level};
use sluice_snapshot::Snapshot;
use tokio::sync::watch;

/// A compiled configuration and everything said about it.
pub struct Built {
    pub snapshot: Snapshot,
    /// Warnings and infos (errors make [`build`] fail).
    pub diagnostics: Vec<Diagnostic>,
    /// The egress map's config at a glance, of this snapshot's resources.
    pub view: crate::egress_map::ConfigView,
    /// The credential Secrets of the inputs, to be written just before the snapshot is applied.
    pub secrets: crate::secrets::Secrets,
}

/// Loads, validates, analyzes and compiles. Fails with the diagnostics when a file cannot be
/// read or a resource is invalid (what Istio's webhook would reject), or when the config asks
/// for a global rate limit and `rate_limit_store` is false (no `--rate-limit-redis`: the limit
/// could not hold across replicas); cross-resource findings are reported but do not block, as
/// Istio applies such configuration too.
pub fn build(
    paths: &[PathBuf],
    options: &CompileOptions,
    rate_limit_store: bool,
) -> Result<Built, Vec<Diagnostic>> {
    let loaded = sluice_model::load_paths(paths);
    let mut diagnostics = loaded.diagnostics;
    diagnostics.extend(sluice_compile::validate::validate(&loaded.resources));
    if diagnostics.iter().any(|d| d.level == Level::Error) {
        diagnostics.extend(sluice_compile::analyze::analyze(&loaded.resources));
        sluice_compile::sort(&mut diagnostics);
        return Err(diagnostics);
    }
    for mut d in sluice_compile::analyze::analyze(&loaded.resources) {
        // Analysis findings do not stop the proxy: say them, apply the rest.
        if d.level == Level::Error {
            d.level = Level::Warning;
        }
        diagnostics.push(d);
    }
    let (snapshot, compile_diags) = compile(&loaded.resources, options);
    diagnostics.extend(compile_diags);
    if !rate_limit_store {
        let global = snapshot
            .rate_limits
            .values()
            .filter_map(|l| l.global.as_ref())
            .next();
        if let Some(g) = global {
            diagnostics.push(Diagnostic::error(
                sluice_model::diag::codes::NOT_SUPPORTED,
                format!(
                    "{} inserts the global rate limit filter (domain {:?}), whose counters live \
                     in Redis: start sluice with --rate-limit-redis redis://HOST:PORT (or \
                     SLUICE_RATE_LIMIT_REDIS)",
                    g.origin, g.domain
                ),
            ));
            sluice_compile::sort(&mut diagnostics);
            return Err(diagnostics);
        }
    }
    sluice_compile::sort(&mut diagnostics);
    let view = crate::egress_map::config::build(&loaded.resources, options, &snapshot);
    let secrets = crate::secrets::Secrets::of(&loaded.resources, options);
    Ok(Built {
        snapshot,
        diagnostics,
        view,
        secrets,
    })
}

/// A cheap summary of the config files (names, real paths, sizes, modification times) that
/// changes when any of them does. Polling it survives what event-based watchers miss:
/// Kubernetes swaps mounted ConfigMaps by renaming a symlinked directory, which changes the
/// files' real paths. The files are the ones loading reads, found by the same walk, so FIFOs,
/// devices and symlink loops are skipped here too.
pub fn fingerprint(paths: &[PathBuf]) -> u64 {
    let (files, diagnostics) = sluice_model::load::walk(paths);
    let mut h = DefaultHasher::new();
    for file in &files {
        file.hash(&mut h);
        std::fs::canonicalize(file).ok().hash(&mut h);
        let meta = std::fs::metadata(file).ok();
        meta.as_ref()
            .map(|m| (m.len(), m.modified().ok()))
            .hash(&mut h);
    }
    // A path that cannot be read yet (missing, unreadable) changes the sum when it can.
    for d in &diagnostics {
        d.message.hash(&mut h);
    }
    h.finish()
}

/// Logs diagnostics the way the proxy reports config: one line each.
pub fn log_diagnostics(diags: &[Diagnostic]) {
    for d in diags {
        match d.level {
            Level::Error => tracing::error!("{d}"),
            Level::Warning => tracing::warn!("{d}"),
            Level::Info => tracing::info!("{d}"),
        }
    }
}

/// How reloads are counted (`sluice_config_reloads_total{result}`, `sluice_config_generation`,
/// `sluice_config_last_reload_seconds`).
#[derive(Clone, Default)]
pub struct ReloadMetrics {
    reloads: Family<ResultLabel, Counter>,
    generation: Gauge,
    last_reload: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

impl ReloadMetrics {
    pub fn register(registry: &mut Registry) -> ReloadMetrics {
        let m = ReloadMetrics::default();
        registry.register(
            "sluice_config_reloads",
            "Configuration reloads, by result (applied or rejected)",
            m.reloads.clone(),
        );
        registry.register(
            "sluice_config_generation",
            "How many configurations have been applied since start (the first is 1)",
            m.generation.clone(),
        );
        registry.register(
            "sluice_config_last_reload_seconds",
            "Unix time of the last configuration applied",
            m.last_reload.clone(),
        );
        m.applied_first();
        m
    }

    fn applied_first(&self) {
        self.generation.set(1);
        self.stamp();
    }

    fn stamp(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_reload.set(i64::try_from(now).unwrap_or(i64::MAX));
    }

    fn count(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabel { result }).inc();
        if result == "applied" {
            self.generation.inc();
            self.stamp();
        }
    }
}

/// What makes a reload happen besides a change of the files: SIGHUP (Unix).
pub struct Triggers {
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Triggers {
    /// Installs the SIGHUP handler now, so a SIGHUP that arrives before the watcher runs
    /// reloads instead of killing the process.
    pub fn install() -> Triggers {
        Triggers {
            #[cfg(unix)]
            hangup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| tracing::warn!(error = %e, "SIGHUP cannot trigger reloads"))
                .ok(),
        }
    }

    async fn hangup(&mut self) {
        #[cfg(unix)]
        if let Some(s) = self.hangup.as_mut()
            && s.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await
    }
}

/// How long files must stay unchanged before a change is read: an editor or `kubectl cp`
/// writing a file in pieces is never read half-written.
const SETTLE: Duration = Duration::from_millis(250);

/// How long a configuration that would drop every listener or every authorization policy
/// must stay as it is before it is applied: an emptied or truncated file is far more often an
/// accident (a failed write, a ConfigMap being replaced) than the intent.
pub const HOLD: Duration = Duration::from_secs(5);

/// How long a reload waits for the proxy to apply a published snapshot (resolve its
/// endpoints, load its TLS files) before it is counted anyway.
const APPLY_WAIT: Duration = Duration::from_secs(30);

/// Polls the config every `interval` and reloads at once on SIGHUP; on a change (or a
/// signal), once the files are stable, rebuilds off the async threads and publishes the new
/// snapshot, or keeps the last good one and says why. A snapshot that would drop every
/// listener or every authorization policy the running one has is held back for [`HOLD`].
#[allow(clippy::too_many_arguments)] // the serve command's settings, passed through once
pub async fn watch_config(
    paths: Vec<PathBuf>,
    options: CompileOptions,
    tx: watch::Sender<Arc<Snapshot>>,
    interval: Duration,
    rate_limit_store: bool,
    metrics: ReloadMetrics,
    mut triggers: Triggers,
    views: watch::Sender<Arc<crate::egress_map::ConfigView>>,
    mut applied: watch::Receiver<Arc<Snapshot>>,
) {
    let mut last = fingerprint(&paths);
    // A drastic configuration seen, by its files' fingerprint, and since when.
    let mut held: Option<(u64, std::time::Instant)> = None;
    loop {
        let signalled = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = triggers.hangup() => true,
        };
        let fp = |paths: &Vec<PathBuf>| {
            let p = paths.clone();
            tokio::task::spawn_blocking(move || fingerprint(&p))
        };
        let Ok(now) = fp(&paths).await else { continue };
        if now == last && !signalled {
            continue;
        }
        // Read once the files are stable; a write still going on is seen next time.
        tokio::time::sleep(SETTLE).await;
        match fp(&paths).await {
            Ok(again) if again == now => {}
            _ => continue,
        }
        if signalled {
            tracing::info!("SIGHUP: reloading the configuration");
        }
        let (p, o) = (paths.clone(), options.clone());
        match tokio::task::spawn_blocking(move || build(&p, &o, rate_limit_store)).await {
            Ok(Ok(built)) => {
                if let Some(what) = drops_everything(&tx.borrow(), &built.snapshot) {
                    match held {
                        Some((f, since)) if f == now && since.elapsed() >= HOLD => {
                            tracing::warn!(
                                "applying the configuration without {what}: it stayed so for {HOLD:?}"
                            );
                        }
                        Some((f, _)) if f == now => continue,
                        _ => {
                            tracing::warn!(
                                "the new configuration has no {what}; holding it back until the files stay so for {HOLD:?}"
                            );
                            held = Some((now, std::time::Instant::now()));
                            continue;
                        }
                    }
                }
                held = None;
                last = now;
                log_diagnostics(&built.diagnostics);
                if let Err(e) = built.secrets.write() {
                    tracing::error!(
                        "writing the credential Secrets failed ({e}); keeping the last good configuration"
                    );
                    metrics.count("rejected");
                    continue;
                }
                let snapshot = Arc::new(built.snapshot);
                tx.send_replace(snapshot.clone());
                views.send_replace(Arc::new(built.view));
                // Said and counted once the proxy serves it (new connections get it, HTTP
                // connections of the last one close): a client that sees the generation rise
                // meets the new configuration.
                let serving = applied.wait_for(|s| Arc::ptr_eq(s, &snapshot));
                match tokio::time::timeout(APPLY_WAIT, serving).await {
                    Ok(_) => tracing::info!("configuration reloaded"),
                    Err(_) => tracing::warn!(
                        "configuration reloaded; the proxy has not applied it after {APPLY_WAIT:?}"
                    ),
                }
                metrics.count("applied");
            }
            Ok(Err(diags)) => {
                held = None;
                last = now;
                log_diagnostics(&diags);
                tracing::error!("configuration has errors; keeping the last good one");
                metrics.count("rejected");
            }
            Err(e) => tracing::error!("reload task failed: {e}"),
        }
    }
}

/// What `next` drops that `running` has entirely: every listener (gateway), or every
/// authorization policy (a DENY policy that vanishes opens traffic).
fn drops_everything(running: &Snapshot, next: &Snapshot) -> Option<&'static str> {
    if !running.listeners.is_empty() && next.listeners.is_empty() {
        Some("listeners")
    } else if !running.authz.is_empty() && next.authz.is_empty() {
        Some("authorization policies")
    } else {
        None
    }
}
