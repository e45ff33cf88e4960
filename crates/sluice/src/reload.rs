//! Config → snapshot, at start and whenever the files change. The whole snapshot is swapped
//! at once; a configuration with errors never replaces a good one.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_compile::lower::{CompileOptions, compile};
use sluice_model::{Diagnostic, Level};
use sluice_snapshot::Snapshot;
use tokio::sync::watch;

/// A compiled configuration and everything said about it.
pub struct Built {
    pub snapshot: Snapshot,
    /// Warnings and infos (errors make [`build`] fail).
    pub diagnostics: Vec<Diagnostic>,
}

/// Loads, validates, analyzes and compiles. Fails with the diagnostics when a file cannot be
/// read or a resource is invalid (what Istio's webhook would reject); cross-resource findings
/// are reported but do not block, as Istio applies such configuration too.
pub fn build(paths: &[PathBuf], options: &CompileOptions) -> Result<Built, Vec<Diagnostic>> {
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
    sluice_compile::sort(&mut diagnostics);
    Ok(Built {
        snapshot,
        diagnostics,
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

/// Polls the config every `interval`; on change, rebuilds off the async threads and publishes
/// the new snapshot, or keeps the last good one and says why.
pub async fn watch_config(
    paths: Vec<PathBuf>,
    options: CompileOptions,
    tx: watch::Sender<Arc<Snapshot>>,
    interval: Duration,
) {
    let mut last = fingerprint(&paths);
    loop {
        tokio::time::sleep(interval).await;
        let p = paths.clone();
        let now = match tokio::task::spawn_blocking(move || fingerprint(&p)).await {
            Ok(f) => f,
            Err(_) => continue,
        };
        if now == last {
            continue;
        }
        last = now;
        let (p, o) = (paths.clone(), options.clone());
        match tokio::task::spawn_blocking(move || build(&p, &o)).await {
            Ok(Ok(built)) => {
                log_diagnostics(&built.diagnostics);
                tracing::info!("configuration reloaded");
                tx.send_replace(Arc::new(built.snapshot));
            }
            Ok(Err(diags)) => {
                log_diagnostics(&diags);
                tracing::error!("configuration has errors; keeping the last good one");
            }
            Err(e) => tracing::error!("reload task failed: {e}"),
        }
    }
}
