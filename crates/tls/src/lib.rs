//! The cluster's certificates (a CA, one certificate per node) and the
//! mutual-TLS configurations ferryd uses.
//!
//! A cluster has one CA ([`init_ca`], `ferry cert init`), and each node one
//! certificate signed by it ([`issue`], `ferry cert issue`), all in one
//! directory: `ca.crt`, `ca.key`, `NODE.crt`, `NODE.key`. A node loads its
//! own identity with [`NodeIdentity::load`] and builds its QUIC endpoints
//! from it ([`NodeIdentity::quinn_server_config`],
//! [`NodeIdentity::quinn_client_config`]). Both ends demand a certificate
//! from the cluster CA; the client also checks that the server is the node
//! it meant to reach. [`peer_node_name`] tells which node is on the other
//! end; [`accept`] and [`connect`] do the handshake and log a refused peer
//! with its address.
//!
//! Keys are ECDSA P-256 and the crypto provider is ring, for every part:
//! certificate generation, verification and TLS. The file layout and the
//! operator's side are in `docs/CERTIFICATES.md`.

mod error;
mod files;
mod identity;
mod issue;
mod quic;

pub use error::{CertError, HandshakeError};
pub use identity::NodeIdentity;
pub use issue::{
    init_ca, issue, validate_node_name, CaPaths, NodePaths, CA_CERT_FILE, CA_COMMON_NAME,
    CA_KEY_FILE,
};
pub use quic::{accept, connect, peer_node_name, PeerConnection, ALPN, IDLE_TIMEOUT, KEEP_ALIVE};
