//! The mesh hop over real loopback TCP: `ca init` + `ca issue` on disk, the gateway's server
//! config and the sidecar's client config, and the certificates that must be refused.

mod common;

use std::time::{Duration, SystemTime};

use common::{Accepted, EchoServer, Mesh, chain, connect, day, fixed, key, raw_client, round_trip};
use sluice_identity::ca::{Ca, Validity};
use sluice_identity::mtls::{ALPN_H2, ALPN_ISTIO, server_identity};
use sluice_identity::{ExpectedPeer, client_config, server_config};

#[tokio::test]
async fn sidecar_and_gateway_handshake_and_learn_each_other() {
    let mesh = Mesh::new("mtls-ok");
    let mut server =
        EchoServer::start(server_config(fixed(&mesh.gateway_dir)).expect("server")).await;
    let client = client_config(
        fixed(&mesh.sidecar_dir),
        ExpectedPeer::Identity(mesh.gateway_identity()),
    )
    .expect("client");

    let mut stream = connect(client, server.addr).await.expect("handshake");
    assert_eq!(
        round_trip(&mut stream, b"hello").await.expect("echo"),
        b"hello"
    );
    assert_eq!(
        server_identity(stream.get_ref().1),
        Some(mesh.gateway_identity())
    );
    match server.next().await {
        Accepted::Ok { identity, alpn, .. } => {
            let identity = identity.expect("the server sees the client's identity");
            assert_eq!(identity.principal(), "cluster.local/ns/default/sa/sleep");
            assert_eq!(alpn.as_deref(), Some(ALPN_ISTIO));
        }
        Accepted::Refused(e) => panic!("refused: {e}"),
    }
}

#[tokio::test]
async fn gateway_accepts_http_alpn_too() {
    let mesh = Mesh::new("mtls-alpn");
    let mut server =
        EchoServer::start(server_config(fixed(&mesh.gateway_dir)).expect("server")).await;
    let mut client = client_config(
        fixed(&mesh.sidecar_dir),
        ExpectedPeer::TrustDomain("cluster.local".into()),
    )
    .expect("client");
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    let mut stream = connect(client, server.addr).await.expect("handshake");
    assert_eq!(round_trip(&mut stream, b"x").await.expect("echo"), b"x");
    assert!(matches!(
        server.next().await,
        Accepted::Ok { alpn: Some(a), identity: Some(_), .. } if a == ALPN_H2
    ));
}

/// The client gets past its own checks (it trusts the gateway), so a failure is the server's
/// refusal. With TLS 1.3 the client may finish its side first; the refusal then shows as the
/// first read failing.
async fn assert_server_refuses(client: rustls::ClientConfig, mesh: &Mesh, why: &str) {
    let mut server =
        EchoServer::start(server_config(fixed(&mesh.gateway_dir)).expect("server")).await;
    let client_side = match connect(client, server.addr).await {
        Ok(mut stream) => round_trip(&mut stream, b"hello").await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(
        client_side.is_err(),
        "{why}: the client must not get through"
    );
    match server.next().await {
        Accepted::Refused(e) => {
            let e = e.to_lowercase();
            assert!(e.contains(why), "{why}: server error was {e}");
        }
        Accepted::Ok { identity, .. } => panic!("{why}: accepted with identity {identity:?}"),
    }
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let mesh = Mesh::new("mtls-other-ca");
    let other = Ca::generate("cluster.local").expect("other CA");
    let svid = other.issue("default", "sleep", day()).expect("issue");
    let client = raw_client(
        fixed(&mesh.gateway_dir),
        ExpectedPeer::Identity(mesh.gateway_identity()),
        Some((chain(&svid), key(&svid))),
    );
    // Same subject name as the mesh root, different key: "bad signature" or "unknown issuer".
    let mut server =
        EchoServer::start(server_config(fixed(&mesh.gateway_dir)).expect("server")).await;
    let client_side = match connect(client, server.addr).await {
        Ok(mut stream) => round_trip(&mut stream, b"hello").await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(client_side.is_err());
    match server.next().await {
        Accepted::Refused(e) => assert!(
            e.contains("BadSignature") || e.contains("UnknownIssuer") || e.contains("signature"),
            "{e}"
        ),
        Accepted::Ok { identity, .. } => panic!("accepted {identity:?}"),
    }
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let mesh = Mesh::new("mtls-expired");
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let svid = mesh
        .ca
        .issue(
            "default",
            "sleep",
            Validity {
                not_before: now - 3 * hour,
                not_after: now - hour,
            },
        )
        .expect("issue expired");
    let client = raw_client(
        fixed(&mesh.gateway_dir),
        ExpectedPeer::Identity(mesh.gateway_identity()),
        Some((chain(&svid), key(&svid))),
    );
    assert_server_refuses(client, &mesh, "expired").await;
}

#[tokio::test]
async fn missing_client_certificate_is_refused() {
    let mesh = Mesh::new("mtls-nocert");
    let client = raw_client(
        fixed(&mesh.gateway_dir),
        ExpectedPeer::Identity(mesh.gateway_identity()),
        None,
    );
    assert_server_refuses(client, &mesh, "certificate").await;
}

#[tokio::test]
async fn sidecar_refuses_a_gateway_with_the_wrong_identity_or_ca() {
    let mesh = Mesh::new("mtls-wrong-server");
    let server = EchoServer::start(server_config(fixed(&mesh.gateway_dir)).expect("server")).await;
    let wrong = [
        ExpectedPeer::Identity(
            "spiffe://cluster.local/ns/default/sa/other"
                .parse()
                .expect("id"),
        ),
        ExpectedPeer::AnyOf(vec![]),
        ExpectedPeer::TrustDomain("example.org".into()),
    ];
    for expected in wrong {
        let client = client_config(fixed(&mesh.sidecar_dir), expected.clone()).expect("client");
        let err = connect(client, server.addr)
            .await
            .expect_err("the sidecar must refuse this gateway");
        assert!(err.to_string().contains("expected"), "{expected}: {err}");
    }

    // A gateway whose certificate comes from another CA.
    let other = Ca::generate("cluster.local").expect("other CA");
    let foreign = mesh.tmp.join("foreign-gateway");
    other
        .issue(common::GATEWAY_NS, common::GATEWAY_SA, day())
        .expect("issue")
        .write(&foreign)
        .expect("write");
    let foreign_server = EchoServer::start(server_config(fixed(&foreign)).expect("server")).await;
    let client = client_config(
        fixed(&mesh.sidecar_dir),
        ExpectedPeer::Identity(mesh.gateway_identity()),
    )
    .expect("client");
    assert!(connect(client, foreign_server.addr).await.is_err());
}
