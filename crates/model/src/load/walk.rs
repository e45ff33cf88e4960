//! Which files a set of paths names, and reading them without trusting them.
//!
//! A config directory may hold anything: FIFOs (opening one blocks until a writer comes),
//! devices (`/dev/zero` never ends), symlink loops, huge files. Only regular files are opened,
//! every read is bounded, and each real file or directory is visited once.

use std::collections::HashSet;
use std::fs::{FileType, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::diag::{Diagnostic, codes};

/// Files larger than this are refused rather than read into memory. Kubernetes stores an
/// object in at most 1.5 MiB, so this leaves room for many objects per file.
pub const MAX_FILE_BYTES: usize = 16 << 20;
/// What one load reads in all, standard input included.
pub const MAX_TOTAL_BYTES: usize = 64 << 20;
/// Directory nesting followed at most; it keeps the recursion shallow.
const MAX_DIR_DEPTH: usize = 16;

/// The files `paths` name, in load order: a named file as it is, a directory's `*.yaml`,
/// `*.yml` and `*.json` files recursively in name order, and `-` (standard input) where it
/// stands. Each real file is listed once, however many links lead to it, and links to
/// directories outside the given ones are not followed (`x -> /` would walk the whole disk).
/// What cannot be listed, or is not a regular file, is a diagnostic instead.
pub fn walk<P: AsRef<Path>>(paths: &[P]) -> (Vec<PathBuf>, Vec<Diagnostic>) {
    let mut w = Walker {
        roots: paths
            .iter()
            .filter_map(|p| std::fs::canonicalize(p).ok())
            .collect(),
        ..Walker::default()
    };
    for p in paths {
        let p = p.as_ref();
        if p == Path::new("-") {
            w.files.push(p.to_owned());
        } else {
            w.visit(p, 0, true);
        }
    }
    (w.files, w.diagnostics)
}

#[derive(Default)]
struct Walker {
    files: Vec<PathBuf>,
    diagnostics: Vec<Diagnostic>,
    /// Canonical paths of the files and directories visited: what ends symlink loops.
    seen: HashSet<PathBuf>,
    /// Canonical paths of the paths given.
    roots: Vec<PathBuf>,
}

impl Walker {
    fn visit(&mut self, path: &Path, depth: usize, named: bool) {
        let wanted = named || has_config_extension(path);
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if wanted => return self.cannot_read(path, &e.to_string()),
            Err(_) => return,
        };
        let dir = meta.is_dir();
        if !dir && !wanted {
            return;
        }
        if !dir && !meta.is_file() {
            return self.diagnostics.push(not_regular(path, meta.file_type()));
        }
        let real = match std::fs::canonicalize(path) {
            Ok(r) => r,
            Err(e) => return self.cannot_read(path, &e.to_string()),
        };
        if dir && !named && !self.roots.iter().any(|root| real.starts_with(root)) {
            let d = Diagnostic::warning(
                codes::IO,
                format!(
                    "{} links to {}, outside the paths given; it is not followed",
                    path.display(),
                    real.display()
                ),
            );
            return self.diagnostics.push(d);
        }
        if !self.seen.insert(real) {
            return;
        }
        if !dir {
            return self.files.push(path.to_owned());
        }
        if depth >= MAX_DIR_DEPTH {
            return self.cannot_read(path, "directories nested too deeply");
        }
        let mut entries: Vec<_> = match std::fs::read_dir(path) {
            Ok(rd) => rd.filter_map(Result::ok).map(|e| e.path()).collect(),
            Err(e) => return self.cannot_read(path, &e.to_string()),
        };
        entries.sort();
        for entry in entries {
            let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // Kubernetes mounts ConfigMaps with `..data` / `..2024_…` symlinked twins of
            // every file; the files themselves are reached through their own links.
            if !name.starts_with("..") {
                self.visit(&entry, depth + 1, false);
            }
        }
    }

    fn cannot_read(&mut self, path: &Path, why: &str) {
        self.diagnostics
            .push(cannot_read(&path.display().to_string(), why));
    }
}

fn has_config_extension(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

pub(super) fn cannot_read(file: &str, why: &str) -> Diagnostic {
    Diagnostic::error(codes::IO, format!("cannot read {file}: {why}"))
}

fn not_regular(path: &Path, kind: FileType) -> Diagnostic {
    Diagnostic::warning(
        codes::IO,
        format!(
            "{} is {}, not a regular file; it is not read (pipe it to `-` instead)",
            path.display(),
            describe(kind)
        ),
    )
}

fn describe(kind: FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    let _ = kind;
    "a special file"
}

/// Why an input was not read.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("it is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("larger than {MAX_FILE_BYTES} bytes")]
    TooLarge,
    #[error("the inputs together are larger than {MAX_TOTAL_BYTES} bytes")]
    TotalTooLarge,
    #[error("not UTF-8 text")]
    NotUtf8,
}

/// Reads inputs while keeping count of the bytes read so far against [`MAX_TOTAL_BYTES`].
pub(super) struct Reader {
    left: usize,
}

impl Default for Reader {
    fn default() -> Self {
        Reader {
            left: MAX_TOTAL_BYTES,
        }
    }
}

impl Reader {
    /// Reads the regular file at `path`; anything else is refused without blocking.
    pub(super) fn file(&mut self, path: &Path) -> Result<String, ReadError> {
        let mut options = OpenOptions::new();
        options.read(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // The walk checked the type, but the file may have been swapped for a FIFO since.
            options.custom_flags(libc::O_NONBLOCK);
        }
        let file = options.open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(ReadError::NotRegular(describe(meta.file_type())));
        }
        if meta.len() > MAX_FILE_BYTES as u64 {
            return Err(ReadError::TooLarge);
        }
        if meta.len() > self.left as u64 {
            self.left = 0;
            return Err(ReadError::TotalTooLarge);
        }
        self.read(file)
    }

    /// Reads `input` to its end, or fails once it passes a limit; a source that never ends
    /// (`/dev/zero` on standard input) costs at most the limit.
    pub(super) fn read(&mut self, input: impl Read) -> Result<String, ReadError> {
        let limit = MAX_FILE_BYTES.min(self.left);
        let mut bytes = Vec::new();
        input.take(limit as u64 + 1).read_to_end(&mut bytes)?;
        if bytes.len() > limit {
            if limit == MAX_FILE_BYTES {
                return Err(ReadError::TooLarge);
            }
            self.left = 0;
            return Err(ReadError::TotalTooLarge);
        }
        self.left -= bytes.len();
        String::from_utf8(bytes).map_err(|_| ReadError::NotUtf8)
    }
}
