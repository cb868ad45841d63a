//! Real QUIC handshakes on 127.0.0.1 between nodes of one cluster, and
//! against certificates from another cluster's CA.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_tls::{accept, connect, init_ca, issue, peer_node_name, HandshakeError, NodeIdentity};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::Endpoint;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

const LIMIT: Duration = Duration::from_secs(10);

fn cluster(nodes: &[&str]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    init_ca(tmp.path(), false).unwrap();
    for node in nodes {
        issue(tmp.path(), node, false).unwrap();
    }
    tmp
}

fn server(id: &NodeIdentity) -> (Endpoint, SocketAddr) {
    let endpoint = Endpoint::server(
        id.quinn_server_config().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    (endpoint, addr)
}

fn client(config: quinn::ClientConfig) -> Endpoint {
    let mut endpoint = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    endpoint
}

/// Accepts one connection on `endpoint` with [`accept`].
async fn accept_one(endpoint: &Endpoint) -> Result<ferry_tls::PeerConnection, HandshakeError> {
    let incoming = endpoint.accept().await.expect("endpoint open");
    accept(incoming).await
}

/// A client config that trusts `trusted_dir`'s CA but presents the node
/// pair `cert`/`key` (possibly from another CA, or none at all) — what a
/// stranger could build by hand.
fn stranger_config(trusted_dir: &Path, pair: Option<(&Path, &Path)>) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(trusted_dir.join("ca.crt")).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut tls = match pair {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(cert).unwrap()],
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ferry_tls::ALPN.to_vec()];
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()))
}

#[tokio::test]
async fn two_nodes_of_one_cluster_talk_over_streams_and_datagrams() {
    let certs = cluster(&["alpha", "beta"]);
    let alpha = NodeIdentity::load(certs.path(), "alpha").unwrap();
    let beta = NodeIdentity::load(certs.path(), "beta").unwrap();
    let (server_ep, server_addr) = server(&alpha);
    let client_ep = client(beta.quinn_client_config().unwrap());
    let client_addr = client_ep.local_addr().unwrap();

    let server_side = async {
        let peer = accept_one(&server_ep).await.unwrap();
        assert_eq!(peer.node, "beta");
        assert_eq!(peer.connection.remote_address(), client_addr);
        assert_eq!(peer_node_name(&peer.connection).as_deref(), Some("beta"));
        // Echo one stream, upper-cased.
        let (mut send, mut recv) = peer.connection.accept_bi().await.unwrap();
        let got = recv.read_to_end(1 << 16).await.unwrap();
        send.write_all(&got.to_ascii_uppercase()).await.unwrap();
        send.finish().unwrap();
        // Echo one datagram, reversed.
        let mut datagram = peer.connection.read_datagram().await.unwrap().to_vec();
        datagram.reverse();
        peer.connection.send_datagram(datagram.into()).unwrap();
        // Stay until the client is done.
        peer.connection.closed().await;
    };

    let client_side = async {
        let peer = connect(&client_ep, server_addr, "alpha").await.unwrap();
        assert_eq!(peer.node, "alpha");
        assert_eq!(peer_node_name(&peer.connection).as_deref(), Some("alpha"));
        let (mut send, mut recv) = peer.connection.open_bi().await.unwrap();
        send.write_all(b"record 1 epoch 7").await.unwrap();
        send.finish().unwrap();
        assert_eq!(
            recv.read_to_end(1 << 16).await.unwrap(),
            b"RECORD 1 EPOCH 7"
        );
        assert!(peer.connection.max_datagram_size().is_some());
        peer.connection
            .send_datagram(b"heartbeat".to_vec().into())
            .unwrap();
        assert_eq!(
            &peer.connection.read_datagram().await.unwrap()[..],
            b"taebtraeh"
        );
        peer.connection.close(0u32.into(), b"done");
    };

    tokio::time::timeout(LIMIT, async { tokio::join!(server_side, client_side) })
        .await
        .expect("round trips within the limit");
    client_ep.wait_idle().await;
}

#[tokio::test]
async fn server_refuses_a_client_certificate_from_another_ca() {
    let ours = cluster(&["alpha"]);
    let theirs = cluster(&["beta"]);
    let alpha = NodeIdentity::load(ours.path(), "alpha").unwrap();
    let (server_ep, server_addr) = server(&alpha);

    // Trusts our CA (so it would accept alpha), but presents a certificate
    // from another CA; then one presenting none at all.
    for pair in [
        Some((
            theirs.path().join("beta.crt"),
            theirs.path().join("beta.key"),
        )),
        None,
    ] {
        let config = stranger_config(
            ours.path(),
            pair.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        );
        let client_ep = client(config);
        let client_addr = client_ep.local_addr().unwrap();

        let server_side = accept_one(&server_ep);
        let client_side = async {
            // The client's side of the handshake may finish before the
            // server has judged its certificate; the connection fails then.
            let connection = client_ep.connect(server_addr, "alpha").unwrap().await?;
            let (mut send, mut recv) = connection.open_bi().await?;
            send.write_all(b"let me in").await?;
            send.finish()?;
            recv.read_to_end(1024).await?;
            anyhow::Ok(())
        };
        let (server_result, client_result) =
            tokio::time::timeout(LIMIT, async { tokio::join!(server_side, client_side) })
                .await
                .expect("refused within the limit");

        let err = server_result.expect_err("server accepted a stranger");
        assert!(matches!(err, HandshakeError::Refused { addr, .. } if addr == client_addr));
        let line = err.to_string();
        assert!(line.contains(&client_addr.to_string()), "{line}");
        assert!(
            line.contains("certificate") || line.contains("Certificate"),
            "{line}"
        );
        assert!(client_result.is_err(), "stranger got through");
    }
}

#[tokio::test]
async fn client_refuses_a_server_certificate_from_another_ca() {
    let ours = cluster(&["alpha"]);
    let theirs = cluster(&["beta"]);
    let alpha = NodeIdentity::load(ours.path(), "alpha").unwrap();
    let impostor = NodeIdentity::load(theirs.path(), "beta").unwrap();
    let (server_ep, server_addr) = server(&impostor);
    let client_ep = client(alpha.quinn_client_config().unwrap());

    let (server_result, client_result) = tokio::time::timeout(LIMIT, async {
        tokio::join!(
            accept_one(&server_ep),
            connect(&client_ep, server_addr, "beta")
        )
    })
    .await
    .expect("refused within the limit");

    let err = client_result.expect_err("client accepted another CA's server");
    assert!(matches!(err, HandshakeError::Refused { addr, .. } if addr == server_addr));
    let line = err.to_string();
    assert!(line.contains(&server_addr.to_string()), "{line}");
    assert!(
        line.contains("invalid peer certificate: UnknownIssuer"),
        "{line}"
    );
    // The server sees the connection fail too, and can name the client.
    let err = server_result.expect_err("handshake completed on the server");
    assert!(err
        .to_string()
        .contains(&client_ep.local_addr().unwrap().to_string()));
}

#[tokio::test]
async fn client_refuses_a_server_that_is_not_the_node_it_meant() {
    let certs = cluster(&["alpha", "beta", "gamma"]);
    let alpha = NodeIdentity::load(certs.path(), "alpha").unwrap();
    let beta = NodeIdentity::load(certs.path(), "beta").unwrap();
    let (server_ep, server_addr) = server(&alpha);
    let client_ep = client(beta.quinn_client_config().unwrap());

    // alpha is in the cluster, but beta meant to reach gamma.
    let (server_result, client_result) = tokio::time::timeout(LIMIT, async {
        tokio::join!(
            accept_one(&server_ep),
            connect(&client_ep, server_addr, "gamma")
        )
    })
    .await
    .expect("refused within the limit");
    let err = client_result.expect_err("client accepted the wrong node");
    assert!(
        err.to_string()
            .contains("certificate not valid for name \"gamma\""),
        "{err}"
    );
    assert!(server_result.is_err());
}
