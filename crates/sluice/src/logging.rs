//! The process's log filter, changeable while it runs (the admin API's `/logging`, as Envoy's):
//! a whole new level for every logger (`level=debug`), or one logger's (`upstream=debug`,
//! `paths=upstream:debug,http:trace`). Loggers are Envoy's names where sluice has the same
//! part, else tracing targets (`sluice_proxy::http`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The filter when neither `SLUICE_LOG` nor `RUST_LOG` is set: the in-process DNS server of
/// `sluice demo` says a line per query at info.
pub const DEFAULT_FILTER: &str =
    "info,hickory_server=warn,hickory_proxy=warn,hickory_resolver=warn";

/// Envoy's logger names that have a counterpart here, and the tracing targets they set.
const ALIASES: &[(&str, &[&str])] = &[
    ("admin", &["sluice::admin"]),
    (
        "config",
        &["sluice::reload", "sluice_compile", "sluice_model"],
    ),
    (
        "connection",
        &[
            "sluice_proxy::conn",
            "sluice_proxy::accept",
            "sluice_proxy::listener",
        ],
    ),
    (
        "conn_handler",
        &["sluice_proxy::listener", "sluice_proxy::accept"],
    ),
    ("dns", &["sluice_proxy::upstream::dns"]),
    ("http", &["sluice_proxy::http"]),
    ("http2", &["h2"]),
    ("main", &["sluice"]),
    ("pool", &["sluice_proxy::upstream"]),
    ("rbac", &["sluice_proxy::authz"]),
    ("router", &["sluice_proxy::http"]),
    ("secret", &["sluice_identity"]),
    ("tcp", &["sluice_proxy::tcp"]),
    ("upstream", &["sluice_proxy::upstream"]),
];

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("unknown level {0:?} (trace, debug, info, warning, warn, error, critical, off)")]
    Level(String),
    #[error("invalid logger name {0:?} (an Envoy logger name or a tracing target)")]
    Logger(String),
    #[error("expected LOGGER:LEVEL in paths, got {0:?}")]
    Path(String),
    #[error("nothing to change: use level=LEVEL, LOGGER=LEVEL or paths=LOGGER:LEVEL,...")]
    Empty,
    #[error("the resulting filter is not valid: {0}")]
    Filter(String),
    #[error("the log filter of this process cannot be changed")]
    Unavailable,
}

/// The filter as it stands: a default level, levels per target, and the directives given at
/// start that are more than `target=level` (span and field filters), kept as they were.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Levels {
    default: Option<String>,
    targets: BTreeMap<String, String>,
    other: Vec<String>,
}

impl Levels {
    fn parse(filter: &str) -> Levels {
        let mut levels = Levels {
            default: None,
            targets: BTreeMap::new(),
            other: Vec::new(),
        };
        for d in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            match d.split_once('=') {
                None if tracing_level(d).is_ok() => levels.default = Some(d.to_ascii_lowercase()),
                Some((t, l)) if valid_target(t) && tracing_level(l).is_ok() => {
                    levels.targets.insert(t.to_owned(), l.to_ascii_lowercase());
                }
                _ => levels.other.push(d.to_owned()),
            }
        }
        levels
    }

    fn directives(&self) -> String {
        let mut out: Vec<String> = self.default.iter().cloned().collect();
        out.extend(self.targets.iter().map(|(t, l)| format!("{t}={l}")));
        out.extend(self.other.iter().cloned());
        out.join(",")
    }
}

type Handle = reload::Handle<EnvFilter, Registry>;

/// Changes the running process's filter.
pub struct Control {
    handle: Handle,
    levels: Mutex<Levels>,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Logs go to stderr, filtered by `SLUICE_LOG` (or `RUST_LOG`), [`DEFAULT_FILTER`] by default;
/// the filter can then be changed through [`control`].
pub fn init() {
    let filter = std::env::var("SLUICE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| DEFAULT_FILTER.into());
    let (layer, handle) = reload::Layer::new(EnvFilter::new(&filter));
    let installed = tracing_subscriber::registry()
        .with(layer)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .try_init();
    if installed.is_ok() {
        let _ = CONTROL.set(Control {
            handle,
            levels: Mutex::new(Levels::parse(&filter)),
        });
    }
}

/// The filter of this process, when [`init`] installed it.
pub fn control() -> Option<&'static Control> {
    CONTROL.get()
}

impl Control {
    /// Applies an admin query (`level=debug`, `upstream=trace`, `paths=http:debug,dns:info`);
    /// nothing changes unless all of it is valid.
    pub fn apply_query(&self, query: &str) -> Result<(), LoggingError> {
        let mut levels = self.lock();
        let mut next = levels.clone();
        let mut any = false;
        for (key, value) in crate::admin::query_pairs(query) {
            match key.as_str() {
                "level" => {
                    let l = tracing_level(&value)?;
                    next = Levels {
                        default: Some(l.to_owned()),
                        targets: BTreeMap::new(),
                        other: Vec::new(),
                    };
                }
                "paths" => {
                    for p in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                        // A tracing target has `::` in it: the level is after the last `:`.
                        let (logger, level) = p
                            .rsplit_once(':')
                            .filter(|(logger, _)| !logger.is_empty())
                            .ok_or_else(|| LoggingError::Path(p.to_owned()))?;
                        set_logger(&mut next, logger, level)?;
                    }
                }
                logger => set_logger(&mut next, logger, &value)?,
            }
            any = true;
        }
        if !any {
            return Err(LoggingError::Empty);
        }
        let filter = EnvFilter::try_new(next.directives())
            .map_err(|e| LoggingError::Filter(e.to_string()))?;
        self.handle
            .reload(filter)
            .map_err(|_| LoggingError::Unavailable)?;
        tracing::info!(filter = %next.directives(), "log levels changed");
        *levels = next;
        Ok(())
    }

    /// The active levels, Envoy's `/logging` answer in spirit: `default`, then each logger.
    pub fn render(&self) -> String {
        let levels = self.lock();
        let mut out = String::from("active loggers:\n");
        let _ = writeln!(
            out,
            "  default: {}",
            levels.default.as_deref().map_or("error", envoy_level)
        );
        for (t, l) in &levels.targets {
            let _ = writeln!(out, "  {t}: {}", envoy_level(l));
        }
        for o in &levels.other {
            let _ = writeln!(out, "  (directive) {o}");
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Levels> {
        self.levels.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn set_logger(levels: &mut Levels, logger: &str, level: &str) -> Result<(), LoggingError> {
    let level = tracing_level(level)?;
    let targets: Vec<&str> = match ALIASES.iter().find(|(name, _)| *name == logger) {
        Some((_, targets)) => targets.to_vec(),
        None if valid_target(logger) => vec![logger],
        None => return Err(LoggingError::Logger(logger.to_owned())),
    };
    for t in targets {
        levels.targets.insert(t.to_owned(), level.to_owned());
    }
    Ok(())
}

/// A tracing target: a Rust path (no spaces, brackets or `=`), bounded in length.
fn valid_target(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-')
}

/// Envoy's level names as tracing's (Envoy's `critical` has no tracing counterpart: `error`).
fn tracing_level(level: &str) -> Result<&'static str, LoggingError> {
    Ok(match level.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        _ => return Err(LoggingError::Level(level.to_owned())),
    })
}

/// A tracing level as Envoy names it.
fn envoy_level(level: &str) -> &str {
    match level {
        "warn" => "warning",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_filter_round_trips() {
        let l = Levels::parse(DEFAULT_FILTER);
        assert_eq!(l.default.as_deref(), Some("info"));
        assert_eq!(
            l.targets.get("hickory_server").map(String::as_str),
            Some("warn")
        );
        assert_eq!(
            l.directives(),
            "info,hickory_proxy=warn,hickory_resolver=warn,hickory_server=warn"
        );
        let odd = Levels::parse("info,[span{x=1}]=debug");
        assert_eq!(odd.other, vec!["[span{x=1}]=debug".to_owned()]);
    }

    #[test]
    fn envoy_levels_and_loggers_map_to_tracing() {
        assert_eq!(tracing_level("warning").ok(), Some("warn"));
        assert_eq!(tracing_level("CRITICAL").ok(), Some("error"));
        assert!(tracing_level("loud").is_err());
        let mut l = Levels::parse("info");
        set_logger(&mut l, "upstream", "debug").expect("alias");
        set_logger(&mut l, "sluice_proxy::tcp", "trace").expect("target");
        assert_eq!(
            l.directives(),
            "info,sluice_proxy::tcp=trace,sluice_proxy::upstream=debug"
        );
        assert!(set_logger(&mut l, "a b", "info").is_err());
        assert!(set_logger(&mut l, "x[y]", "info").is_err());
    }
}
