//! The QUIC side: quinn configurations that demand a certificate from the
//! cluster CA on both ends, and the accept/connect steps that log and name
//! a peer that does not have one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

use crate::identity::provider;
use crate::issue::validate_node_name;
use crate::{CertError, HandshakeError, NodeIdentity};

/// The one ALPN protocol ferryd speaks.
pub const ALPN: &[u8] = b"ferry/1";
/// Keep-alive interval: an idle replication link still carries a packet
/// this often, so that a dead peer is noticed within [`IDLE_TIMEOUT`].
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// A connection that hears nothing from its peer for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Room for datagrams (heartbeats) waiting to be read or sent.
const DATAGRAM_BUFFER: usize = 1 << 20;

/// Transport settings shared by both ends (the idle timeout in use is the
/// smaller of the two ends').
fn transport() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // IDLE_TIMEOUT in milliseconds, far below VarInt's bound.
    t.max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(
        IDLE_TIMEOUT.as_millis() as u32,
    ))));
    t.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
    t.datagram_send_buffer_size(DATAGRAM_BUFFER);
    Arc::new(t)
}

impl NodeIdentity {
    fn config_error(&self, reason: impl std::fmt::Display) -> CertError {
        CertError::Config {
            node: self.node.clone(),
            reason: reason.to_string(),
        }
    }

    /// Only the cluster CA, and no system roots.
    fn roots(&self) -> Result<Arc<RootCertStore>, CertError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .map_err(|e| self.config_error(format!("cluster CA: {e}")))?;
        Ok(Arc::new(roots))
    }

    /// The listening side: TLS 1.3 presenting this node's certificate, and
    /// requiring of every client a certificate that chains to the cluster
    /// CA; ALPN `ferry/1`; keep-alive [`KEEP_ALIVE`], idle timeout
    /// [`IDLE_TIMEOUT`], datagrams on (heartbeats).
    pub fn quinn_server_config(&self) -> Result<quinn::ServerConfig, CertError> {
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(|e| self.config_error(e))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| self.config_error(e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(|e| self.config_error(e))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicServerConfig::try_from(tls).map_err(|e| self.config_error(e))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(transport());
        Ok(config)
    }

    /// The connecting side: TLS 1.3 presenting this node's certificate, and
    /// accepting only a server whose certificate chains to the cluster CA
    /// and names the node connected to (pass the peer's node name as
    /// `server_name` to [`quinn::Endpoint::connect`], or use
    /// [`connect`]). Same ALPN and transport settings as the server.
    pub fn quinn_client_config(&self) -> Result<quinn::ClientConfig, CertError> {
        let provider = provider();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            self.roots()?,
            provider.clone(),
        )
        .build()
        .map_err(|e| self.config_error(e))?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| self.config_error(e))?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(|e| self.config_error(e))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicClientConfig::try_from(tls).map_err(|e| self.config_error(e))?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(transport());
        Ok(config)
    }
}

/// The node name of the authenticated peer of `connection`: the DNS name
/// its certificate carries (checked against the cluster CA during the
/// handshake). `None` before the handshake is done or if the certificate
/// names no valid node.
pub fn peer_node_name(connection: &quinn::Connection) -> Option<String> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let end_entity = webpki::EndEntityCert::try_from(chain.first()?).ok()?;
    let name = end_entity
        .valid_dns_names()
        .find(|name| validate_node_name(name).is_ok())?;
    Some(name.to_owned())
}

/// A connection whose peer proved to be a node of the cluster.
#[derive(Debug, Clone)]
pub struct PeerConnection {
    /// The peer's node name, from its certificate.
    pub node: String,
    /// The QUIC connection.
    pub connection: quinn::Connection,
}

/// Completes an incoming connection. A peer that presents no certificate,
/// or one not from the cluster CA, is refused by the handshake; the refusal
/// is logged (warn) with the peer's address and returned.
pub async fn accept(incoming: quinn::Incoming) -> Result<PeerConnection, HandshakeError> {
    let addr = incoming.remote_address();
    let result = match incoming.accept() {
        Ok(connecting) => connecting.await,
        Err(e) => Err(e),
    };
    finish(addr, result)
}

/// Connects to node `node` at `addr`. The server must present a
/// certificate from the cluster CA that names `node`. A failure is logged
/// (warn) with the address and returned.
///
/// A server that refuses *this* node's certificate does so just after the
/// client's handshake completes: the connection returned here then closes
/// at once, and the first stream or datagram operation fails.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    node: &str,
) -> Result<PeerConnection, HandshakeError> {
    let connecting = endpoint.connect(addr, node).map_err(|source| {
        tracing::warn!(peer = %addr, node, error = %source, "cannot connect to peer");
        HandshakeError::Connect {
            addr,
            node: node.to_owned(),
            source,
        }
    })?;
    finish(addr, connecting.await)
}

fn finish(
    addr: SocketAddr,
    result: Result<quinn::Connection, quinn::ConnectionError>,
) -> Result<PeerConnection, HandshakeError> {
    let connection = result.map_err(|source| {
        tracing::warn!(peer = %addr, error = %source, "refused peer");
        HandshakeError::Refused { addr, source }
    })?;
    match peer_node_name(&connection) {
        Some(node) => {
            tracing::debug!(peer = %addr, node, "peer authenticated");
            Ok(PeerConnection { node, connection })
        }
        None => {
            tracing::warn!(peer = %addr, "refused peer: its certificate names no node");
            connection.close(VarInt::from_u32(1), b"no node name in certificate");
            Err(HandshakeError::NoNodeName { addr })
        }
    }
}
