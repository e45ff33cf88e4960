//! A real `redis-server` child process on a loopback address, with nothing persisted, stopped
//! by its own PID on drop. Tests pause it (SIGSTOP) to make it slow and kill it to make it
//! unreachable.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::free_loopback_addr;

#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    addr: SocketAddr,
}

impl RedisServer {
    /// Starts `redis-server` on a fresh loopback address and waits (bounded) for `PING`.
    pub fn start() -> anyhow::Result<RedisServer> {
        let addr = SocketAddr::new(free_loopback_addr(), 6379);
        crate::assert_loopback(addr, "redis-server");
        let child = Command::new("redis-server")
            .args([
                "--bind",
                &addr.ip().to_string(),
                "--port",
                &addr.port().to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (Debian package redis-server)")?;
        let mut me = RedisServer {
            child: Some(child),
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if me.ping().is_ok() {
                return Ok(me);
            }
            if let Some(c) = me.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("redis-server exited with {status} before answering");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        me.kill();
        bail!("redis-server on {addr} did not answer PING within 10s")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://IP:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Sends `PING` and expects `+PONG`.
    pub fn ping(&self) -> anyhow::Result<()> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.write_all(b"PING\r\n")?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf)?;
        if &buf != b"+PONG\r\n" {
            bail!("unexpected reply {:?}", String::from_utf8_lossy(&buf));
        }
        Ok(())
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the server by its PID and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A stopped process still dies of SIGKILL.
        self.kill();
    }
}
