//! `sluice analyze` and the reload poll on hostile inputs: every run ends (a child still running
//! after a generous timeout is killed by its PID and the test fails), with the exit code of
//! the contract, and no text from a config file can forge an output line.

#![cfg(unix)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

const TIMEOUT: Duration = Duration::from_secs(120);

struct Run {
    code: i32,
    stdout: String,
}

/// `sluice analyze ARGS` with `stdin`, killed if it has not ended within [`TIMEOUT`].
fn analyze(args: &[&str], stdin: Stdio) -> Run {
    let mut out = tempfile::tempfile().expect("stdout file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("analyze")
        .args(args)
        .stdin(stdin)
        .stdout(out.try_clone().expect("clone"))
        .stderr(Stdio::null())
        .spawn()
        .expect("run sluice");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            child.kill().expect("kill the hung child by its PID");
            let _ = child.wait();
            panic!("sluice analyze {args:?} did not end within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    out.seek(SeekFrom::Start(0)).expect("rewind");
    out.read_to_string(&mut stdout).expect("utf-8 output");
    Run {
        code: status.code().expect("exited"),
        stdout,
    }
}

const GATEWAY: &str = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: g, namespace: ns}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ['*']
";

#[test]
fn dev_zero_on_stdin_ends_with_a_size_error() {
    let zero = File::open("/dev/zero").expect("/dev/zero");
    let run = analyze(&["-"], Stdio::from(zero));
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("Error [SLC0004] cannot read <stdin>: larger than 16777216 bytes"),
        "{}",
        run.stdout
    );
}

#[test]
fn dev_zero_named_is_not_read_and_strict_fails_on_the_empty_input() {
    let run = analyze(&["/dev/zero"], Stdio::null());
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stdout.contains(
            "Warning [SLC0004] /dev/zero is a character device, not a regular file; it is not read"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("Warning [SLC0007] no resources found in the given paths"),
        "{}",
        run.stdout
    );

    let strict = analyze(&["--strict", "/dev/zero"], Stdio::null());
    assert_eq!(strict.code, 2, "{}", strict.stdout);
    assert!(
        strict
            .stdout
            .contains("Error [SLC0007] no resources found in the given paths"),
        "{}",
        strict.stdout
    );
}

#[test]
fn a_fifo_named_or_in_a_directory_is_skipped_without_blocking() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("gateway.yaml"), GATEWAY).expect("write");
    let fifo = dir.path().join("pipe.yaml");
    sluice_test_support::tempdir::mkfifo(&fifo);
    let warning = format!(
        "Warning [SLC0004] {} is a FIFO, not a regular file",
        fifo.display()
    );

    let walked = analyze(&[dir.path().to_str().expect("utf-8")], Stdio::null());
    assert!(walked.stdout.contains(&warning), "{}", walked.stdout);
    assert!(
        walked.stdout.contains("in 1 resource from 1 path."),
        "{}",
        walked.stdout
    );

    let named = analyze(&[fifo.to_str().expect("utf-8")], Stdio::null());
    assert_eq!(named.code, 0, "{}", named.stdout);
    assert!(named.stdout.contains(&warning), "{}", named.stdout);
}

#[test]
fn empty_input_is_a_warning_and_an_error_under_strict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_str().expect("utf-8");
    let run = analyze(&[path], Stdio::null());
    assert_eq!(
        run.stdout,
        "Warning [SLC0007] no resources found in the given paths\n\
         0 errors, 1 warning in 0 resources from 1 path.\n"
    );
    assert_eq!(run.code, 0);
    let strict = analyze(&["--strict", path], Stdio::null());
    assert_eq!(strict.code, 2, "{}", strict.stdout);
    assert!(
        strict.stdout.starts_with("Error [SLC0007]"),
        "{}",
        strict.stdout
    );
}

#[test]
fn symlink_loops_end_and_load_each_file_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("config");
    std::fs::create_dir(&root).expect("mkdir");
    std::fs::write(root.join("gateway.yaml"), GATEWAY).expect("write");
    for (target, link) in [(".", "a"), (".", "b"), ("gateway.yaml", "again.yaml")] {
        symlink(target, root.join(link)).expect("symlink");
    }
    symlink("..", root.join("up")).expect("symlink");
    let run = analyze(&[root.to_str().expect("utf-8")], Stdio::null());
    assert!(
        !run.stdout.contains("SLC0005"),
        "loaded twice: {}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("outside the paths given; it is not followed"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("in 1 resource from 1 path."),
        "{}",
        run.stdout
    );
}

#[test]
fn names_paths_and_fields_cannot_forge_lines_or_escape_sequences() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("evil\nError [IST0101] (forged).yaml");
    let text = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: \"g\\nError [IST0101] forged\\e[31m\"}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: \"m\\r\\nInfo [SLC0002] forged\\e]0;title\\a\"}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: se}
spec: {hosts: [a.example.com], \"x\\e[2J\\u202e\": 1}
";
    std::fs::write(&file, text).expect("write");
    let path = file.to_str().expect("utf-8");
    // JSON keeps the text as it is (serde escapes it) and counts the messages.
    let json = analyze(&["-o", "json", path], Stdio::null());
    let messages: Vec<serde_json::Value> = serde_json::from_str(&json.stdout).expect("JSON");
    assert!(
        messages.iter().any(|m| m["origin"]
            .as_str()
            .is_some_and(|o| o.contains("m\r\nInfo [SLC0002] forged\u{1b}]0;title\u{7}"))),
        "{messages:?}"
    );

    let run = analyze(&[path], Stdio::null());
    assert_eq!(run.code, 2, "{}", run.stdout);
    let lines: Vec<_> = run.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        messages.len() + 1,
        "one line each and the summary: {lines:?}"
    );
    for line in &lines[..messages.len()] {
        assert!(
            ["Error [IST", "Warning [", "Info ["]
                .iter()
                .any(|start| line.starts_with(start)),
            "{line:?}"
        );
    }
    assert!(
        !run.stdout
            .chars()
            .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
        "{:?}",
        run.stdout
    );
    for escaped in [
        "(Gateway g\\nError [IST0101] forged\\u{1b}[31m ",
        "evil\\nError [IST0101] (forged).yaml",
        "m\\r\\nInfo [SLC0002] forged\\u{1b}]0;title\\u{7}",
        "x\\u{1b}[2J\\u{202e}",
    ] {
        assert!(run.stdout.contains(escaped), "{escaped} in {}", run.stdout);
    }
}

/// `fingerprint` on a thread of its own: a walk that blocks fails the test instead of hanging.
fn fingerprint(paths: &[&Path]) -> u64 {
    let paths: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(sluice::reload::fingerprint(&paths));
    });
    rx.recv_timeout(TIMEOUT).expect("the fingerprint walk ends")
}

#[test]
fn the_reload_poll_skips_fifos_ends_loops_and_sees_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("config");
    std::fs::create_dir(&root).expect("mkdir");
    sluice_test_support::tempdir::mkfifo(&root.join("pipe.yaml"));
    symlink(".", root.join("loop")).expect("symlink");
    symlink("..", root.join("up")).expect("symlink");
    std::fs::write(root.join("gateway.yaml"), GATEWAY).expect("write");
    let before = fingerprint(&[&root]);
    assert_eq!(fingerprint(&[&root]), before, "nothing changed");

    std::fs::write(root.join("gateway.yaml"), GATEWAY.replace("80", "81")).expect("write");
    let edited = fingerprint(&[&root]);
    assert_ne!(edited, before);
    std::fs::write(root.join("more.yaml"), GATEWAY).expect("write");
    assert_ne!(fingerprint(&[&root]), edited);
}

#[test]
fn the_reload_poll_sees_a_config_map_swap_even_with_identical_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let stamp = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for version in ["..2024_01", "..2024_02"] {
        std::fs::create_dir(root.join(version)).expect("mkdir");
        let file = root.join(version).join("gateway.yaml");
        std::fs::write(&file, GATEWAY).expect("write");
        File::options()
            .write(true)
            .open(&file)
            .and_then(|f| f.set_modified(stamp))
            .expect("set mtime");
    }
    symlink("..2024_01", root.join("..data")).expect("symlink");
    symlink("..data/gateway.yaml", root.join("gateway.yaml")).expect("symlink");
    let before = fingerprint(&[root]);

    // What the kubelet does: a new `..data` link renamed over the old one.
    symlink("..2024_02", root.join("..data_tmp")).expect("symlink");
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap");
    assert_ne!(fingerprint(&[root]), before);
}
