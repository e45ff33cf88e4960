//! Non-blocking access-log output: records hand their line to a bounded channel; one writer
//! task per path owns the file. A full channel drops the line (counted), never the request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use sluice_snapshot::cel::Expression;

use super::expr;
use super::format::LogFormat;

const QUEUE: usize = 4096;

/// Where one snapshot's access log goes, in which format, and which entries.
pub struct LogTarget {
    pub path: String,
    pub format: LogFormat,
    /// Telemetry's `filter.expression`: `None` logs every entry.
    pub filter: Option<Filter>,
    tx: mpsc::Sender<String>,
    dropped: Counter,
}

/// An access-log filter.
pub enum Filter {
    Expr(Arc<Expression>),
    /// The expression does not parse: no entry is logged (Envoy would refuse the filter).
    Never,
}

impl LogTarget {
    pub fn write(&self, line: String) {
        if self.tx.try_send(line).is_err() {
            self.dropped.inc();
        }
    }
}

#[derive(Hash, PartialEq, Eq)]
struct TargetKey {
    path: String,
    format: Option<String>,
    json: bool,
    filter: Option<String>,
}

/// The writers and parsed formats, shared by all connections.
#[derive(Default)]
pub struct Writers {
    targets: Mutex<HashMap<TargetKey, Arc<LogTarget>>>,
    files: Mutex<HashMap<String, mpsc::Sender<String>>>,
}

impl Writers {
    /// The target of `config`; `None` when the snapshot configures no access log. Must be
    /// called inside the tokio runtime (it may start a writer task).
    pub fn target(
        &self,
        config: &sluice_snapshot::AccessLog,
        dropped: &Counter,
    ) -> Option<Arc<LogTarget>> {
        let path = config.path.as_deref()?.trim();
        if path.is_empty() {
            return None;
        }
        let key = TargetKey {
            path: path.to_owned(),
            format: config.format.clone(),
            json: config.json,
            filter: config.filter.clone(),
        };
        let mut targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = targets.get(&key) {
            return Some(t.clone());
        }
        let tx = self.file(path, dropped)?;
        let target = Arc::new(LogTarget {
            path: path.to_owned(),
            format: LogFormat::new(config.format.as_deref(), config.json),
            filter: config
                .filter
                .as_deref()
                .map(|src| match expr::compile(src) {
                    Ok(e) => Filter::Expr(e),
                    Err(e) => {
                        tracing::error!(
                            path,
                            expression = src,
                            error = %e,
                            "an access-log filter does not parse: this log writes nothing"
                        );
                        Filter::Never
                    }
                }),
            tx,
            dropped: dropped.clone(),
        });
        targets.insert(key, target.clone());
        Some(target)
    }

    fn file(&self, path: &str, dropped: &Counter) -> Option<mpsc::Sender<String>> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = files.get(path)
            && !tx.is_closed()
        {
            return Some(tx.clone());
        }
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        handle.spawn(write_loop(path.to_owned(), rx, dropped.clone()));
        files.insert(path.to_owned(), tx.clone());
        Some(tx)
    }
}

async fn open(path: &str) -> std::io::Result<Box<dyn AsyncWrite + Send + Unpin>> {
    Ok(match path {
        "/dev/stdout" => Box::new(tokio::io::stdout()),
        "/dev/stderr" => Box::new(tokio::io::stderr()),
        _ => Box::new(
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await?,
        ),
    })
}

async fn write_loop(path: String, mut rx: mpsc::Receiver<String>, dropped: Counter) {
    let mut out = match open(&path).await {
        Ok(out) => out,
        Err(e) => {
            tracing::error!(path, error = %e, "cannot open the access log; lines are dropped");
            while rx.recv().await.is_some() {
                dropped.inc();
            }
            return;
        }
    };
    while let Some(line) = rx.recv().await {
        let mut failed = out.write_all(line.as_bytes()).await.err();
        // Batch whatever else is queued before flushing.
        while failed.is_none()
            && let Ok(line) = rx.try_recv()
        {
            failed = out.write_all(line.as_bytes()).await.err();
        }
        if failed.is_none() {
            failed = out.flush().await.err();
        }
        if let Some(e) = failed {
            tracing::warn!(path, error = %e, "writing the access log");
        }
    }
}
