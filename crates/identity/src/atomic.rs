//! Atomic file replacement: write a temporary file beside the target, flush it to disk, then
//! rename it over the target. A reader (the identity watcher, a sidecar in another process)
//! sees either the old file or the new one, never half of one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Mode of a certificate file: readable by everyone (it is public).
pub(crate) const PUBLIC: u32 = 0o644;
/// Mode of a private key file: owner only.
pub(crate) const PRIVATE: u32 = 0o600;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `contents`, created with permission bits `mode` (Unix).
pub(crate) fn write(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_path(path)?;
    let result = write_new(&tmp, contents, mode).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        // Best effort: a failed write must not leave litter that looks like a key file.
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(path);
    Ok(())
}

/// `.<name>.tmp.<pid>.<n>` in the target's directory: same file system, so rename is atomic;
/// a dot name, so globbing tools and the fixed-name watcher ignore it.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp_name = format!(".{}.tmp.{}.{n}", name.to_string_lossy(), std::process::id());
    Ok(path.with_file_name(tmp_name))
}

fn write_new(tmp: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // The key is never readable by others, not even between create and chmod.
        options.mode(mode & PRIVATE);
    }
    let mut file = options.open(tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Exact bits regardless of umask, so `ca.crt` is 0644 as documented.
        fs::set_permissions(tmp, fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    Ok(())
}

/// Makes the rename durable across a crash. Failure only weakens durability, not atomicity.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_with_exact_mode_and_no_litter() {
        let tmp = crate::testutil::TempDir::new("atomic");
        let dir = tmp.path();
        let path = dir.join("tls.key");
        write(&path, b"one", PRIVATE).expect("write");
        write(&path, b"two", PRIVATE).expect("rewrite");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, PRIVATE);
            let crt = dir.join("tls.crt");
            write(&crt, b"c", PUBLIC).expect("write");
            let mode = fs::metadata(&crt).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, PUBLIC);
        }
        let names: Vec<_> = fs::read_dir(dir)
            .expect("ls")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp.")), "{names:?}");
    }
}
