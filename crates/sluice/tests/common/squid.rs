//! Debian's squid as a real HTTP CONNECT proxy on loopback (the corporate proxy of Istio's
//! http-proxy task, and the upstream proxy a DestinationRule `tunnel` goes through).

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_test_support::TempDir;

/// squid on `ip:3128`, its files in a directory of its own. Killed by PID on drop.
pub struct Squid {
    child: Child,
    pub dir: TempDir,
    pub addr: SocketAddr,
}

impl Squid {
    pub async fn start(ip: IpAddr, hosts: &[(&str, IpAddr)]) -> Squid {
        let dir = TempDir::new("squid");
        // squid drops root to its cache_effective_user, which must write the logs.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let d = dir.path().display();
        let hosts_text: String = hosts.iter().map(|(n, a)| format!("{a} {n}\n")).collect();
        std::fs::write(dir.join("hosts"), hosts_text).expect("hosts");
        // The task's proxy.conf (fixtures/), bound to loopback and with its files here.
        std::fs::write(
            dir.join("squid.conf"),
            format!(
                "http_port {ip}:3128\n\
                 acl SSL_ports port 443\n\
                 acl CONNECT method CONNECT\n\
                 http_access deny CONNECT !SSL_ports\n\
                 http_access allow all\n\
                 hosts_file {d}/hosts\n\
                 dns_nameservers 127.0.0.1\n\
                 pid_filename {d}/squid.pid\n\
                 access_log stdio:{d}/access.log\n\
                 cache_log {d}/cache.log\n\
                 cache deny all\n\
                 cache_mem 8 MB\n\
                 coredump_dir {d}\n\
                 netdb_filename none\n\
                 shutdown_lifetime 0 seconds\n"
            ),
        )
        .expect("squid.conf");
        // Debian puts it in /usr/sbin, which a non-root PATH may lack.
        let bin = ["/usr/sbin/squid", "/usr/local/sbin/squid"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("squid");
        // Squid names its shared-memory segments after the service name (`-n`): one of
        // its own, so squids of tests running at once (or one a killed run left) never meet.
        let service = format!(
            "sluice{}{}",
            std::process::id(),
            ip.to_string().replace('.', "")
        );
        let child = Command::new(bin)
            .args(["-n", &service, "-N", "-f"])
            .arg(dir.join("squid.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("squid is installed (scripts/test installs Debian's squid)");
        let addr = SocketAddr::new(ip, 3128);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "squid did not listen on {addr}: {}",
                std::fs::read_to_string(dir.join("cache.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Squid { child, dir, addr }
    }

    /// Waits (bounded) for an access.log line containing `needle`.
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
            if let Some(l) = log.lines().find(|l| l.contains(needle)) {
                return l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no `{needle}` in squid's log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        // SIGTERM first: with `shutdown_lifetime 0` squid exits at once and removes its
        // shared-memory segments; SIGKILL only if it has not within 2 s.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
