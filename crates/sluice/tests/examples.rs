//! `examples/`: every example's YAML passes `sluice analyze --strict` but for the warnings its
//! README explains, and `examples/production/run.sh` (what its README tells users to run) gets
//! the allowed call through and the refused call refused, on loopback. run.sh stops what it
//! starts; the test stops run.sh by its PID if it outlives its deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::bin;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn every_example_passes_analyze_but_for_the_warnings_its_readme_explains() {
    for (dir, allowed) in [
        ("production", &["IST0128", "SLC0104"][..]),
        ("tls-origination", &["IST0129"][..]),
        ("mtls-partner", &[][..]),
    ] {
        let path = examples().join(dir);
        let out = Command::new(bin())
            .arg("analyze")
            .arg("--strict")
            .arg(&path)
            .output()
            .expect("analyze runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let codes: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("Warning [") || l.starts_with("Error ["))
            .filter_map(|l| l.split('[').nth(1)?.split(']').next())
            .collect();
        for code in &codes {
            assert!(allowed.contains(code), "{dir}: unexplained {code}:\n{text}");
        }
        let readme = std::fs::read_to_string(path.join("README.md")).expect("README");
        for code in allowed {
            assert!(readme.contains(code), "{dir}/README.md explains {code}");
        }
        if codes.is_empty() {
            assert!(out.status.success(), "{dir}: {text}");
        }
    }
}

#[test]
fn the_production_example_runs_as_its_readme_says() {
    let mut child = Command::new("bash")
        .arg(examples().join("production/run.sh"))
        .env("SLUICE", bin())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run.sh starts");
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("run.sh ran over 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("ALLOWED: payment-service reached https://api.payment-provider.com/ (200)"),
        "{text}"
    );
    assert!(
        text.contains("REFUSED: reporting was refused at the gateway"),
        "{text}"
    );
    assert!(!text.contains("UNEXPECTED"), "{text}");
}
