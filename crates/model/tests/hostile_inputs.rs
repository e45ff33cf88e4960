//! The loader against hostile inputs: FIFOs and devices are never opened, reads are bounded,
//! symlink loops end, and names follow Kubernetes' rules. Real files, FIFOs and links in a
//! temporary directory.

#![cfg(unix)]

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use sluice_model::diag::codes;
use sluice_model::load::{MAX_FILE_BYTES, MAX_TOTAL_BYTES, walk};
use sluice_model::{Level, Loaded, load_paths, load_str};

const GATEWAY: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\n";

/// Runs `f` on a thread of its own, so that a load blocked on a FIFO fails the test instead of
/// hanging it.
fn finishes<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the load ends (neither blocked nor panicked)")
}

fn load(paths: &[&Path]) -> Loaded {
    let paths: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
    finishes(move || load_paths(&paths))
}

fn codes_and_levels(loaded: &Loaded) -> Vec<(&'static str, Level)> {
    loaded
        .diagnostics
        .iter()
        .map(|d| (d.code, d.level))
        .collect()
}

#[test]
fn fifos_in_a_directory_or_named_are_reported_and_never_opened() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.yaml"), GATEWAY).expect("write");
    let fifo = dir.path().join("b.yaml");
    sluice_test_support::tempdir::mkfifo(&fifo);

    let loaded = load(&[dir.path()]);
    assert_eq!(loaded.resources.gateways.len(), 1);
    assert_eq!(codes_and_levels(&loaded), [(codes::IO, Level::Warning)]);
    let message = &loaded.diagnostics[0].message;
    assert!(message.contains(&fifo.display().to_string()), "{message}");
    assert!(message.contains("a FIFO, not a regular file"), "{message}");

    let named = load(&[&fifo]);
    assert_eq!(
        codes_and_levels(&named),
        [
            (codes::IO, Level::Warning),
            (codes::EMPTY_INPUT, Level::Warning)
        ]
    );
}

#[test]
fn dev_zero_named_is_refused_as_not_a_regular_file() {
    let loaded = load(&[Path::new("/dev/zero")]);
    assert_eq!(
        codes_and_levels(&loaded),
        [
            (codes::IO, Level::Warning),
            (codes::EMPTY_INPUT, Level::Warning)
        ]
    );
    let message = &loaded.diagnostics[0].message;
    assert!(
        message.contains("/dev/zero is a character device, not a regular file"),
        "{message}"
    );
}

#[test]
fn symlink_loops_end_and_every_real_file_loads_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("config");
    std::fs::create_dir_all(root.join("sub")).expect("mkdir");
    std::fs::create_dir_all(root.join("other")).expect("mkdir");
    std::fs::write(root.join("g.yaml"), GATEWAY).expect("write");
    std::fs::write(
        root.join("other/h.yaml"),
        GATEWAY.replace("{name: g}", "{name: h}"),
    )
    .expect("write");
    std::fs::write(dir.path().join("outside.yaml"), GATEWAY).expect("write");
    for (target, link) in [
        (".", "a"),
        ("other", "aa-link"),
        ("..", "b"),
        ("g.yaml", "link.yaml"),
        ("../..", "sub/up"),
        (".", "sub/x"),
        ("..", "sub/y"),
        ("../g.yaml", "sub/again.yaml"),
    ] {
        symlink(target, root.join(link)).expect("symlink");
    }

    let r = root.clone();
    let (files, diagnostics) = finishes(move || walk(&[r]));
    // The link inside the tree is followed, once; the real directory is then not walked again.
    assert_eq!(files, [root.join("aa-link/h.yaml"), root.join("g.yaml")]);
    let outside: Vec<_> = diagnostics
        .iter()
        .map(|d| (d.level, d.message.as_str()))
        .collect();
    let real = dir.path().canonicalize().expect("canonical");
    assert_eq!(
        outside,
        [
            (
                Level::Warning,
                format!(
                    "{} links to {}, outside the paths given; it is not followed",
                    root.join("b").display(),
                    real.display()
                )
                .as_str()
            ),
            (
                Level::Warning,
                format!(
                    "{} links to {}, outside the paths given; it is not followed",
                    root.join("sub/up").display(),
                    real.display()
                )
                .as_str()
            ),
        ]
    );

    // Named again through a link, the file is still loaded once: no duplicate definition.
    let loaded = load(&[&root, &root.join("link.yaml")]);
    assert_eq!(loaded.resources.gateways.len(), 2);
    assert!(
        loaded.diagnostics.iter().all(|d| d.code == codes::IO),
        "{:?}",
        loaded.diagnostics
    );
}

#[test]
fn a_file_past_the_size_cap_is_refused_unread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big.yaml");
    let file = std::fs::File::create(&big).expect("create");
    file.set_len(MAX_FILE_BYTES as u64 + 1)
        .expect("sparse file");
    let loaded = load(&[&big]);
    assert_eq!(codes_and_levels(&loaded), [(codes::IO, Level::Error)]);
    let message = &loaded.diagnostics[0].message;
    assert!(
        message.ends_with(&format!("larger than {MAX_FILE_BYTES} bytes")),
        "{message}"
    );
}

#[test]
fn the_inputs_together_are_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = MAX_TOTAL_BYTES / MAX_FILE_BYTES + 1;
    for i in 0..files {
        let file = std::fs::File::create(dir.path().join(format!("{i}.yaml"))).expect("create");
        file.set_len(MAX_FILE_BYTES as u64).expect("sparse file");
    }
    std::fs::write(dir.path().join("z.yaml"), GATEWAY).expect("write");
    let loaded = load(&[dir.path()]);
    let over: Vec<_> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.message.contains("the inputs together are larger than"))
        .collect();
    assert_eq!(over.len(), 2, "{:?}", loaded.diagnostics);
    assert!(over[0].message.contains(&format!("{}.yaml", files - 1)));
    assert!(over[1].message.contains("z.yaml"));
    assert!(loaded.resources.gateways.is_empty());
}

#[test]
fn finding_no_resource_is_a_warning_unless_something_else_went_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = load(&[dir.path()]);
    assert_eq!(
        codes_and_levels(&empty),
        [(codes::EMPTY_INPUT, Level::Warning)]
    );

    std::fs::write(dir.path().join("notes.txt"), GATEWAY).expect("write");
    std::fs::write(dir.path().join("comment.yaml"), "# nothing yet\n").expect("write");
    let nothing = load(&[dir.path()]);
    assert_eq!(
        codes_and_levels(&nothing),
        [(codes::EMPTY_INPUT, Level::Warning)]
    );

    std::fs::write(dir.path().join("bad.yaml"), "a: [\n").expect("write");
    let broken = load(&[dir.path()]);
    assert_eq!(
        codes_and_levels(&broken),
        [(codes::YAML_SYNTAX, Level::Error)]
    );

    std::fs::remove_file(dir.path().join("bad.yaml")).expect("rm");
    std::fs::write(
        dir.path().join("pod.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n",
    )
    .expect("write");
    assert!(load(&[dir.path()]).diagnostics.is_empty());
}

/// The 1-based line of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> u32 {
    let i = text.lines().position(|l| l.contains(needle)).expect(needle);
    u32::try_from(i + 1).expect("small")
}

#[test]
fn names_and_namespaces_follow_kubernetes_rules_and_errors_point_at_them() {
    let long_namespace = "n".repeat(64);
    let long_name = "a".repeat(254);
    let long_label = "x".repeat(100);
    let text = format!(
        "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: My_Gateway
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: se
  namespace: Team-A
spec: {{hosts: [a.example.com]}}
---
apiVersion: v1
kind: List
items:
- apiVersion: networking.istio.io/v1
  kind: Sidecar
  metadata:
    name: sc
    namespace: {long_namespace}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {long_name}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: '-g.'}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: fine.example-1, namespace: ns-1}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {long_label}.y}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: 'system:controller:x'}}
"
    );
    let loaded = load_str("names.yaml", &text);
    let errors: Vec<_> = loaded.diagnostics.iter().filter(|d| d.is_error()).collect();
    let found: Vec<_> = errors
        .iter()
        .map(|d| {
            let loc = d.location.as_ref().expect("located");
            (
                d.origin.as_deref().unwrap_or(""),
                d.path.as_deref().unwrap_or(""),
                loc.line,
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            ("Gateway", "metadata.name", line_of(&text, "My_Gateway")),
            (
                "ServiceEntry",
                "metadata.namespace",
                line_of(&text, "Team-A")
            ),
            (
                "Sidecar",
                "metadata.namespace",
                line_of(&text, &long_namespace)
            ),
            ("Gateway", "metadata.name", line_of(&text, &long_name)),
            ("Gateway", "metadata.name", line_of(&text, "'-g.'")),
        ],
        "{:?}",
        loaded.diagnostics
    );
    assert!(errors.iter().all(|d| d.code == codes::SCHEMA));
    assert!(
        errors[0].message.contains(
            "metadata.name: Invalid value: \"My_Gateway\": a lowercase RFC 1123 subdomain"
        ),
        "{}",
        errors[0].message
    );
    assert!(
        errors[1].message.contains("a lowercase RFC 1123 label"),
        "{}",
        errors[1].message
    );
    assert!(
        errors[2]
            .message
            .contains("64 characters: must be no more than 63 characters"),
        "{}",
        errors[2].message
    );
    assert!(
        errors[3]
            .message
            .contains("254 characters: must be no more than 253 characters"),
        "{}",
        errors[3].message
    );
    // Analyzed all the same, as istioctl analyzes files, except a name too long to repeat;
    // a long label inside a subdomain is valid.
    let names: Vec<_> = loaded
        .resources
        .gateways
        .iter()
        .map(|g| g.meta.name.clone())
        .collect();
    let long_label_name = format!("{long_label}.y");
    let kept = ["My_Gateway", "-g.", "fine.example-1", &long_label_name];
    assert_eq!(names, kept);
    assert_eq!(loaded.resources.service_entries.len(), 1);
    assert_eq!(loaded.resources.sidecars.len(), 1);
    assert_eq!(
        loaded.resources.others.len(),
        1,
        "other kinds keep their own rules"
    );
}
