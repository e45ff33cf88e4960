//! Non-blocking access-log output: records hand their line to a bounded channel; one writer
//! task per path owns the file. A full channel drops the line (counted), never the request.
//!
//! Rotation: the writer reopens its path when told to ([`Reopener`], SIGUSR1 in the binary)
//! and when it sees that the path no longer names the file it has open (logrotate's
//! move-and-create), checked at most every [`ROTATION_CHECK`], in the writer task, before a
//! batch is written. Lines queued meanwhile wait in the channel: none is lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use sluice_snapshot::cel::Expression;

use super::expr;
use super::format::LogFormat;

const QUEUE: usize = 4096;

/// How often a writer checks that its path still names the file it writes.
pub const ROTATION_CHECK: Duration = Duration::from_secs(1);

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
    /// Bumped to make every writer reopen its file.
    reopen: Arc<watch::Sender<u64>>,
}

/// Makes every access-log writer reopen its file (logrotate's `postrotate` signal).
#[derive(Clone)]
pub struct Reopener(Arc<watch::Sender<u64>>);

impl Reopener {
    pub fn reopen(&self) {
        self.0
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }
}

impl Writers {
    /// A handle that makes the writers reopen their files.
    pub fn reopener(&self) -> Reopener {
        Reopener(self.reopen.clone())
    }

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
        handle.spawn(write_loop(
            path.to_owned(),
            rx,
            dropped.clone(),
            self.reopen.subscribe(),
        ));
        files.insert(path.to_owned(), tx.clone());
        Some(tx)
    }
}

/// Where the writer's lines go.
struct Output {
    out: Box<dyn AsyncWrite + Send + Unpin>,
    /// The open file's (device, inode); `None` for stdout and stderr, never reopened.
    id: Option<FileId>,
}

type FileId = (u64, u64);

fn file_id(meta: &std::fs::Metadata) -> Option<FileId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

async fn open(path: &str) -> std::io::Result<Output> {
    Ok(match path {
        "/dev/stdout" => Output {
            out: Box::new(tokio::io::stdout()),
            id: None,
        },
        "/dev/stderr" => Output {
            out: Box::new(tokio::io::stderr()),
            id: None,
        },
        _ => {
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await?;
            let id = file.metadata().await.ok().as_ref().and_then(file_id);
            Output {
                out: Box::new(file),
                id,
            }
        }
    })
}

/// Whether `path` names another file than `id` now, or none (moved away, not yet recreated).
async fn rotated(path: &str, id: FileId) -> bool {
    match tokio::fs::metadata(path).await {
        Ok(meta) => file_id(&meta).is_some_and(|now| now != id),
        Err(_) => true,
    }
}

/// Opens `path` again; on failure the file open until now stays in use (lines keep going to
/// the rotated file rather than nowhere) and the next check tries again.
async fn reopen(path: &str, current: &mut Output) {
    if current.id.is_none() {
        return;
    }
    // Whatever tokio still holds for the old file reaches it before the switch.
    let _ = current.out.flush().await;
    match open(path).await {
        Ok(next) => {
            *current = next;
            tracing::info!(path, "access log reopened");
        }
        Err(e) => {
            tracing::warn!(path, error = %e, "cannot reopen the access log; still writing the old file")
        }
    }
}

async fn write_loop(
    path: String,
    mut rx: mpsc::Receiver<String>,
    dropped: Counter,
    mut reopen_rx: watch::Receiver<u64>,
) {
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
    reopen_rx.borrow_and_update();
    let mut checked = Instant::now();
    let mut signals_open = true;
    loop {
        let line = tokio::select! {
            line = rx.recv() => match line {
                Some(line) => line,
                None => break,
            },
            changed = reopen_rx.changed(), if signals_open => {
                if changed.is_err() {
                    signals_open = false;
                } else {
                    reopen_rx.borrow_and_update();
                    reopen(&path, &mut out).await;
                    checked = Instant::now();
                }
                continue;
            }
        };
        if let Some(id) = out.id
            && checked.elapsed() >= ROTATION_CHECK
        {
            checked = Instant::now();
            if rotated(&path, id).await {
                reopen(&path, &mut out).await;
            }
        }
        let out = &mut out.out;
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
