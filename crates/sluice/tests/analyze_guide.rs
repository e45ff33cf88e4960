//! `sluice analyze` on every document of the guide, and on the guide as a whole, pinned as
//! golden files: what a careful operator would be told, and the exit code.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p sluice --test analyze_guide` and review
//! the diff.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn analyze(args: &[&str]) -> (String, i32) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("analyze")
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("run sluice");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).expect("utf-8"),
        out.status.code().unwrap_or(-1),
    )
}

fn check_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/analyze")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing golden {}; run with UPDATE_GOLDEN=1",
            path.display()
        )
    });
    assert_eq!(actual, expected, "output of {name} changed");
}

#[test]
fn every_guide_document_is_analyzed_as_pinned() {
    let mut files: Vec<_> = std::fs::read_dir(workspace().join("testdata/guide"))
        .expect("guide dir")
        .map(|e| {
            e.expect("entry")
                .file_name()
                .into_string()
                .expect("utf-8 name")
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 19, "the guide has 19 documents");
    for file in files {
        let (text, code) = analyze(&[&format!("testdata/guide/{file}")]);
        check_golden(&format!("{file}.txt"), &format!("exit {code}\n{text}"));
    }
}

#[test]
fn the_whole_guide_is_analyzed_as_pinned() {
    let (text, code) = analyze(&["testdata/guide"]);
    check_golden("whole-guide.txt", &format!("exit {code}\n{text}"));
    assert_eq!(code, 2, "the invalid deny-all file is an error");
}

#[test]
fn the_invalid_deny_all_policy_names_file_line_and_the_fix() {
    let (text, code) = analyze(&["testdata/guide/authz-deny-all-egress.yaml"]);
    assert_eq!(code, 2);
    assert!(
        text.contains("(testdata/guide/authz-deny-all-egress.yaml:14:3) invalid YAML"),
        "{text}"
    );
    assert!(text.contains("delete the `{}` line"), "{text}");
}

#[test]
fn json_output_has_istioctls_fields() {
    let (text, code) = analyze(&["-o", "json", "testdata/guide/virtualservice-github.yaml"]);
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let first = &v[0];
    for field in ["code", "level", "message", "origin", "reference"] {
        assert!(first.get(field).is_some(), "missing {field} in {first}");
    }
    assert_eq!(first["code"], "IST0101");
    assert_eq!(first["origin"], "VirtualService default/github-api-routing");
    assert_eq!(
        first["reference"],
        "testdata/guide/virtualservice-github.yaml:17"
    );
}

#[test]
fn strict_turns_warnings_into_exit_1() {
    let (_, code) = analyze(&["testdata/guide/destinationrule-mtls-external.yaml"]);
    assert_eq!(code, 0, "warnings alone exit 0");
    let (_, code) = analyze(&[
        "--strict",
        "testdata/guide/destinationrule-mtls-external.yaml",
    ]);
    assert_eq!(code, 1);
    let (_, code) = analyze(&["testdata/guide/serviceentry-github.yaml"]);
    assert_eq!(code, 0);
}

#[test]
fn stdin_is_read_with_a_dash() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["analyze", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {servers: [{port: {number: 99999, name: x, protocol: TCP}, hosts: [a.com]}]}\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("<stdin>:4"), "{text}");
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["analyze", "--output", "yaml", "x"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}
