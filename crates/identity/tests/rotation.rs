//! Rotation without restart: the watcher publishes new SVIDs written into the watched dirs,
//! new handshakes present them, established connections carry on, and incomplete or
//! inconsistent sets are never published.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Accepted, EchoServer, Mesh, SOON, connect, day, round_trip, serial_of};
use sluice_identity::ca::{CA_CERT, TLS_CERT, TLS_KEY};
use sluice_identity::{
    ExpectedPeer, IdentityFiles, IdentitySource, IdentityWatcher, WatchError, client_config,
    server_config,
};
use tokio::sync::watch;

const POLL: Duration = Duration::from_millis(50);

async fn wait_for_serial(rx: &mut IdentitySource, serial: &str) {
    tokio::time::timeout(SOON, async {
        while rx.borrow_and_update().serial() != serial {
            rx.changed().await.expect("watcher alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("serial {serial} was not published within {SOON:?}"));
}

/// Every warning logged on the thread it is the default subscriber of, in order. A
/// `#[tokio::test]` runs the watcher's task on the test's own thread, so these are the watcher's.
struct Warnings(watch::Sender<Vec<String>>);

impl Warnings {
    /// Makes a capture this thread's subscriber until the guard is dropped.
    fn capture() -> (
        watch::Receiver<Vec<String>>,
        tracing::subscriber::DefaultGuard,
    ) {
        let (tx, rx) = watch::channel(Vec::new());
        (rx, tracing::subscriber::set_default(Warnings(tx)))
    }
}

impl tracing::Subscriber for Warnings {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                use std::fmt::Write as _;
                let _ = write!(self.0, " {}={value:?}", field.name());
            }
        }
        let mut text = Text(String::new());
        event.record(&mut text);
        self.0.send_modify(|w| w.push(text.0));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Waits (up to [`SOON`]) until the watcher has looked at the set now in `dir` and refused it:
/// its warning naming exactly the problem [`IdentityFiles::load`] finds, logged after the
/// first `seen` warnings (the watcher logs a problem once, until it changes). Returns the
/// number of warnings so far.
async fn wait_for_refusal(
    warnings: &mut watch::Receiver<Vec<String>>,
    seen: usize,
    dir: &Path,
) -> usize {
    let problem = match IdentityFiles::load(dir) {
        Ok(files) => panic!(
            "test bug: the set in {} is valid: {}",
            dir.display(),
            files.serial()
        ),
        Err(e) => e.to_string(),
    };
    let refused = |w: &Vec<String>| {
        w[seen..]
            .iter()
            .any(|m| m.contains("keeping the current workload identity") && m.contains(&problem))
    };
    if tokio::time::timeout(SOON, warnings.wait_for(refused))
        .await
        .is_err()
    {
        panic!(
            "the watcher did not refuse the set ({problem}) within {SOON:?}; warnings: {:#?}",
            &warnings.borrow()[seen..]
        );
    }
    warnings.borrow().len()
}

#[tokio::test]
async fn new_svids_are_used_by_new_handshakes_and_old_connections_carry_on() {
    let mesh = Mesh::new("rotate");
    let mut gw_rx = IdentityWatcher::start(&mesh.gateway_dir, POLL).expect("gateway watcher");
    let mut sc_rx = IdentityWatcher::start(&mesh.sidecar_dir, POLL).expect("sidecar watcher");
    let old_client_serial = sc_rx.borrow().serial().to_string();
    let old_server_serial = gw_rx.borrow().serial().to_string();

    // Configs are built once; they follow the watchers.
    let mut server = EchoServer::start(server_config(gw_rx.clone()).expect("server")).await;
    let client = client_config(
        sc_rx.clone(),
        ExpectedPeer::Identity(mesh.gateway_identity()),
    )
    .expect("client");

    let mut before = connect(client.clone(), server.addr)
        .await
        .expect("first handshake");
    assert_eq!(round_trip(&mut before, b"one").await.expect("echo"), b"one");
    assert!(matches!(
        server.next().await,
        Accepted::Ok { peer_serial: Some(s), .. } if s == old_client_serial
    ));

    // `sluice ca issue` into the watched dirs: atomic renames.
    let new_sidecar = mesh.ca.issue("default", "sleep", day()).expect("issue");
    let new_gateway = mesh
        .ca
        .issue(common::GATEWAY_NS, common::GATEWAY_SA, day())
        .expect("issue");
    new_sidecar
        .write(&mesh.sidecar_dir)
        .expect("rotate sidecar");
    new_gateway
        .write(&mesh.gateway_dir)
        .expect("rotate gateway");
    wait_for_serial(&mut sc_rx, &new_sidecar.serial).await;
    wait_for_serial(&mut gw_rx, &new_gateway.serial).await;
    assert_ne!(new_sidecar.serial, old_client_serial);

    let mut after = connect(client, server.addr)
        .await
        .expect("second handshake");
    assert_eq!(round_trip(&mut after, b"two").await.expect("echo"), b"two");
    match server.next().await {
        Accepted::Ok {
            peer_serial,
            identity,
            ..
        } => {
            assert_eq!(peer_serial.as_deref(), Some(new_sidecar.serial.as_str()));
            assert_eq!(
                identity.map(|i| i.principal()).as_deref(),
                Some("cluster.local/ns/default/sa/sleep")
            );
        }
        Accepted::Refused(e) => panic!("refused after rotation: {e}"),
    }
    let server_cert_serial = |s: &common::ClientStream| {
        s.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(serial_of)
    };
    assert_eq!(server_cert_serial(&after), Some(new_gateway.serial.clone()));

    // The connection made before the rotation is untouched.
    assert_eq!(
        round_trip(&mut before, b"three").await.expect("echo"),
        b"three"
    );
    assert_eq!(server_cert_serial(&before), Some(old_server_serial));
}

/// Each bad set is checked once the watcher has refused it (its warning), not after a guessed
/// number of poll intervals: the check cannot pass without the watcher having seen the set.
#[tokio::test]
async fn half_written_or_mismatched_sets_are_not_published() {
    let (mut warnings, _capture) = Warnings::capture();
    let mesh = Mesh::new("rotate-bad");
    let dir = &mesh.sidecar_dir;
    let mut rx = IdentityWatcher::start(dir, POLL).expect("watcher");
    let original = rx.borrow_and_update().serial().to_string();
    let next = mesh.ca.issue("default", "sleep", day()).expect("issue");
    let unrelated = mesh.ca.issue("default", "sleep", day()).expect("issue");
    let seen = warnings.borrow().len();

    // A writer that is not atomic, caught halfway through tls.crt.
    let half = &next.cert_pem[..next.cert_pem.len() / 2];
    std::fs::write(dir.join(TLS_CERT), half).expect("write half");
    let seen = wait_for_refusal(&mut warnings, seen, dir).await;
    assert!(
        !rx.has_changed().expect("alive"),
        "half a certificate was published"
    );
    assert_eq!(rx.borrow().serial(), original);

    // Whole certificate, but the key still belongs to the old one.
    std::fs::write(dir.join(TLS_CERT), &next.cert_pem).expect("write cert");
    let seen = wait_for_refusal(&mut warnings, seen, dir).await;
    assert!(
        !rx.has_changed().expect("alive"),
        "a mismatched set was published"
    );

    // A key of another certificate, by a writer that is not atomic either: caught halfway
    // through tls.key (which also makes the next mismatch a new problem, logged again)...
    let half = &unrelated.key_pem[..unrelated.key_pem.len() / 2];
    std::fs::write(dir.join(TLS_KEY), half).expect("write half key");
    let seen = wait_for_refusal(&mut warnings, seen, dir).await;
    assert!(
        !rx.has_changed().expect("alive"),
        "half a key was published"
    );
    // ...then whole.
    std::fs::write(dir.join(TLS_KEY), &unrelated.key_pem).expect("write key");
    let seen = wait_for_refusal(&mut warnings, seen, dir).await;
    assert!(
        !rx.has_changed().expect("alive"),
        "a mismatched set was published"
    );

    // The matching key completes the set.
    std::fs::write(dir.join(TLS_KEY), &next.key_pem).expect("write key");
    wait_for_serial(&mut rx, &next.serial).await;

    // A bundle that does not sign the certificate is refused too.
    let other = sluice_identity::Ca::generate("cluster.local").expect("other");
    std::fs::write(dir.join(CA_CERT), other.cert_pem()).expect("write bundle");
    wait_for_refusal(&mut warnings, seen, dir).await;
    assert!(
        !rx.has_changed().expect("alive"),
        "an untrusted set was published"
    );
    assert_eq!(rx.borrow().serial(), next.serial);
}

/// Kubernetes secret / CSI volumes: files are symlinks into `..data`, itself a symlink to a
/// timestamped dir, swapped by renaming a new `..data` over the old one.
#[cfg(unix)]
#[tokio::test]
async fn kubernetes_style_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;

    let mesh = Mesh::new("rotate-k8s");
    let volume = mesh.tmp.join("volume");
    std::fs::create_dir_all(&volume).expect("mkdir");
    let write_version = |name: &str, svid: &sluice_identity::Svid| {
        let d = volume.join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join(TLS_CERT), &svid.cert_pem).expect("crt");
        std::fs::write(d.join(TLS_KEY), &svid.key_pem).expect("key");
        std::fs::write(d.join(CA_CERT), &svid.ca_pem).expect("ca");
    };
    let swap_data = |target: &str| {
        let tmp = volume.join("..data_tmp");
        symlink(target, &tmp).expect("symlink");
        std::fs::rename(&tmp, volume.join("..data")).expect("rename");
    };
    let first = mesh.ca.issue("default", "sleep", day()).expect("issue");
    write_version("..2025_01_01_00_00_00.1", &first);
    swap_data("..2025_01_01_00_00_00.1");
    for name in [TLS_CERT, TLS_KEY, CA_CERT] {
        symlink(Path::new("..data").join(name), volume.join(name)).expect("symlink");
    }

    let mut rx = IdentityWatcher::start(&volume, POLL).expect("watcher");
    assert_eq!(rx.borrow_and_update().serial(), first.serial);

    let second = mesh.ca.issue("default", "sleep", day()).expect("issue");
    write_version("..2025_01_01_01_00_00.2", &second);
    swap_data("..2025_01_01_01_00_00.2");
    wait_for_serial(&mut rx, &second.serial).await;
}

#[tokio::test]
async fn start_needs_a_valid_set() {
    let mesh = Mesh::new("rotate-start");
    let empty = mesh.tmp.join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    match IdentityWatcher::start(&empty, POLL) {
        Err(WatchError::Initial(e)) => assert!(e.to_string().contains("tls.crt"), "{e}"),
        other => panic!("expected an initial-load error, got {other:?}"),
    }
    // A fixed set works as a source too, and survives its sender.
    let files = IdentityFiles::load(&mesh.sidecar_dir).expect("load");
    let rx = tokio::sync::watch::channel(Arc::new(files)).1;
    assert!(client_config(rx, ExpectedPeer::TrustDomain("cluster.local".into())).is_ok());
}

#[test]
fn start_outside_a_runtime_is_an_error_not_a_panic() {
    let mesh = Mesh::new("rotate-no-rt");
    assert!(matches!(
        IdentityWatcher::start(&mesh.sidecar_dir, POLL),
        Err(WatchError::NoRuntime)
    ));
}
