//! The `sluice` binary as a child process, and distinct loopback addresses for tests.
//!
//! ```no_run
//! # fn demo() -> anyhow::Result<()> {
//! use std::net::SocketAddr;
//! use std::path::Path;
//! use std::time::Duration;
//! use sluice_test_support::{SluiceProcess, free_loopback_addr};
//!
//! let ip = free_loopback_addr(); // a distinct 127.x.y.z per call
//! let admin = SocketAddr::new(ip, 15000);
//! let args: Vec<String> = ["gateway", "-c", "testdata/egress", "--bind", &ip.to_string(),
//!     "--admin", &admin.to_string()].iter().map(|s| s.to_string()).collect();
//! // in a test: Path::new(env!("CARGO_BIN_EXE_sluice"))
//! let sluice = SluiceProcess::spawn(Path::new("target/debug/sluice"), &args, admin)?; // ready
//! sluice.wait_for_log("GET /", Duration::from_secs(5))?;
//! let (status, metrics) = sluice.admin_get("/stats/prometheus")?;
//! println!("{status} {metrics} {}", sluice.stderr());
//! // killed (SIGKILL to its own pid) and reaped on drop
//! # Ok(()) }
//! ```
//! In `async` tests that also run in-process servers, use [`SluiceProcess::start`] so that the
//! readiness wait does not block the runtime.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How long [`SluiceProcess::spawn`] waits for `/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

const FIRST: u32 = (10 << 8) | 1; // 127.0.10.1
/// 0 until the first call, which starts this process in its own block of addresses.
static NEXT_LOOPBACK: AtomicU32 = AtomicU32::new(0);

/// Where this process starts handing out addresses: 127.0.10.1 shifted by a block of eight
/// /24s per process id, so two test processes running at once (two checkouts, two cargo
/// invocations) do not pick the same addresses and race for their ports.
fn first_for_process() -> u32 {
    FIRST + (std::process::id() % 1000) * (8 << 8)
}

/// A loopback address not handed out before in this process: consecutive addresses from a
/// per-process start in 127.0.0.0/8 (skipping `.0` and `.255`, and addresses where a port the
/// tests bind — 443, 80, 5432, 15000, 15001 — is already in use, e.g. by another test
/// process). Tests bind the real ports on it without colliding.
pub fn free_loopback_addr() -> IpAddr {
    let _ = NEXT_LOOPBACK.compare_exchange(
        0,
        first_for_process(),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..10_000 {
        let n = NEXT_LOOPBACK.fetch_add(1, Ordering::Relaxed);
        let (hi, lo) = (n >> 8, n & 0xff);
        assert!(hi <= 0xffff, "free_loopback_addr: 127.0.0.0/8 exhausted");
        if lo == 0 || lo == 255 {
            continue;
        }
        let ip = IpAddr::V4(Ipv4Addr::new(127, (hi >> 8) as u8, hi as u8, lo as u8));
        let in_use = [443u16, 80, 5432, 15000, 15001].iter().any(|&port| {
            matches!(
                std::net::TcpListener::bind((ip, port)),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse
            )
        });
        if !in_use {
            return ip;
        }
    }
    panic!("free_loopback_addr: no free loopback address found");
}

type Buf = Arc<Mutex<Vec<u8>>>;

/// A running `sluice` child process with captured output. Killed and reaped on drop.
#[derive(Debug)]
pub struct SluiceProcess {
    child: Child,
    admin: SocketAddr,
    stdout: Buf,
    stderr: Buf,
}

fn capture(mut pipe: impl Read + Send + 'static) -> Buf {
    let buf: Buf = Arc::default();
    let sink = buf.clone();
    // ends at EOF, i.e. when the child (and anything it spawned) closes the pipe
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            lock(&sink).extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

fn lock(buf: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    buf.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SluiceProcess {
    /// Starts `bin args...` and waits (at most [`READY_TIMEOUT`]) until `GET http://<admin>/ready`
    /// answers 200. Fails early, with the captured output, if the process exits first.
    /// Blocks the calling thread: from async code use [`SluiceProcess::start`].
    pub fn spawn(bin: &Path, args: &[String], admin: SocketAddr) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        Self::spawn_command(cmd, admin)
    }

    /// [`SluiceProcess::spawn`] with a prepared command (extra environment, working directory).
    /// Its stdin/stdout/stderr are replaced.
    pub fn spawn_command(mut cmd: Command, admin: SocketAddr) -> anyhow::Result<Self> {
        crate::assert_loopback(admin, "SluiceProcess admin address");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let stdout = capture(child.stdout.take().context("stdout pipe")?);
        let stderr = capture(child.stderr.take().context("stderr pipe")?);
        let mut me = Self {
            child,
            admin,
            stdout,
            stderr,
        };
        me.wait_ready(READY_TIMEOUT)?;
        Ok(me)
    }

    /// [`SluiceProcess::spawn`] on tokio's blocking pool, for async tests.
    pub async fn start(bin: PathBuf, args: Vec<String>, admin: SocketAddr) -> anyhow::Result<Self> {
        tokio::task::spawn_blocking(move || Self::spawn(&bin, &args, admin))
            .await
            .context("spawn task")?
    }

    fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let mut last = String::from("not tried");
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                // give the reader threads a moment to drain the pipes
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "sluice exited with {status} before /ready\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            match blocking_get(self.admin, "/ready") {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => last = format!("status {code}: {body}"),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "sluice not ready at http://{}/ready within {limit:?} (last: {last})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.admin,
            self.stdout(),
            self.stderr()
        )
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The admin address given at spawn.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// Everything written to stdout so far (lossy UTF-8).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stdout)).into_owned()
    }

    /// Everything written to stderr so far (lossy UTF-8).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stderr)).into_owned()
    }

    /// Waits until stdout contains `needle`; on timeout the error carries both outputs.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for(&self.stdout, "stdout", needle, timeout)
    }

    /// Waits until stderr contains `needle`; on timeout the error carries both outputs.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for(&self.stderr, "stderr", needle, timeout)
    }

    fn wait_for(
        &self,
        buf: &Buf,
        which: &str,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if String::from_utf8_lossy(&lock(buf)).contains(needle) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{needle:?} not in sluice {which} within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET http://<admin><path>` → (status, body).
    pub fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        blocking_get(self.admin, path)
    }

    /// Sends a signal by name (`"TERM"`, `"HUP"`...) to the child's own pid with `kill(1)`.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -s {signal} {} failed", self.pid());
        Ok(())
    }

    /// Waits at most `timeout` for the child to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SluiceProcess {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's pid only; then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal blocking HTTP/1.1 GET (`Connection: close`), bounded to a few seconds.
/// Returns (status, body); chunked bodies are returned as sent.
pub fn blocking_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    crate::assert_loopback(addr, "blocking_get");
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: sluice-test-support\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && raw.len() < (16 << 20) {
        match tcp.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if raw.is_empty() => return Err(e.into()),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("bad HTTP response from {addr}{path}: {head:?}"))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_distinct_and_valid() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..600 {
            let ip = free_loopback_addr();
            assert!(ip.is_loopback());
            let IpAddr::V4(v4) = ip else { panic!("v4") };
            assert!(v4.octets()[3] != 0 && v4.octets()[3] != 255, "{v4}");
            assert!(seen.insert(ip), "{ip} handed out twice");
        }
    }

    #[test]
    fn spawn_waits_for_ready_and_kills_on_drop() {
        // A stand-in for sluice: /bin/sh writes the logs, a thread here answers /ready.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let admin = listener.local_addr().expect("addr");
        // Answers every probe until the process is up (a probe that timed out under load is
        // retried on a new connection), then stops when told.
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let server = std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf);
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let args = vec![
            "-c".to_string(),
            "echo started; echo oops >&2; sleep 60".to_string(),
        ];
        let p = SluiceProcess::spawn(Path::new("/bin/sh"), &args, admin).expect("spawn");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        p.wait_for_log("started", Duration::from_secs(5))
            .expect("stdout");
        p.wait_for_stderr("oops", Duration::from_secs(5))
            .expect("stderr");
        assert!(p.wait_for_log("never", Duration::from_millis(50)).is_err());
        let pid = p.pid();
        drop(p);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "child {pid} still there"
        );
        server.join().expect("server thread");
    }

    #[test]
    fn spawn_reports_early_exit() {
        let admin: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let args = vec!["-c".to_string(), "echo bad config >&2; exit 2".to_string()];
        let err = SluiceProcess::spawn(Path::new("/bin/sh"), &args, admin).expect_err("exits");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("bad config") && msg.contains("exit status: 2"),
            "{msg}"
        );
    }
}
