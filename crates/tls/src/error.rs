//! What can go wrong, with the file or the peer it went wrong with.

use std::net::SocketAddr;
use std::path::PathBuf;

/// A certificate, key or TLS configuration that cannot be made or used.
///
/// Every variant names the file (or the node name) at fault, so that its
/// one-line `Display` is enough for a person to act on.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file that must be there is not.
    #[error("{}: missing", path.display())]
    Missing { path: PathBuf },

    /// A file would be replaced, and replacing was not asked for.
    #[error("{}: already exists; refusing to overwrite it (use --force to replace it)", path.display())]
    Exists { path: PathBuf },

    /// Reading or writing a file failed for another reason.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file holds no PEM block of the kind expected, or a broken one.
    #[error("{}: not PEM: {reason}", path.display())]
    NotPem { path: PathBuf, reason: String },

    /// The key file holds something other than an ECDSA P-256 private key.
    #[error("{}: wrong key type: {found}; expected an ECDSA P-256 private key", path.display())]
    WrongKeyType { path: PathBuf, found: String },

    /// The private key is not the one whose public half the certificate carries.
    #[error("{}: key does not match certificate {}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },

    /// The certificate was not issued by the cluster CA in `ca`.
    #[error("{}: not signed by this CA ({})", path.display(), ca.display())]
    NotSignedByCa { path: PathBuf, ca: PathBuf },

    /// The certificate's validity ended.
    #[error("{}: expired on {not_after}", path.display())]
    Expired { path: PathBuf, not_after: String },

    /// The certificate's validity has not begun (or this host's clock is behind).
    #[error("{}: not valid before {not_before} (is this host's clock right?)", path.display())]
    NotYetValid { path: PathBuf, not_before: String },

    /// The certificate was issued to another node.
    #[error("{}: issued to {found}, not to node {expected:?}", path.display())]
    WrongName {
        path: PathBuf,
        expected: String,
        found: String,
    },

    /// The certificate parses but cannot serve here (not a CA, wrong usage, …).
    #[error("{}: unusable certificate: {reason}", path.display())]
    BadCert { path: PathBuf, reason: String },

    /// A node name outside `[A-Za-z0-9][A-Za-z0-9.-]{0,62}` (or otherwise unusable).
    #[error("invalid node name {name:?}: {reason}")]
    BadNodeName { name: String, reason: &'static str },

    /// rcgen could not make the certificate or key destined for `path`.
    #[error("{}: cannot generate: {source}", path.display())]
    Generate {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },

    /// rustls or quinn refused the configuration built from node `node`'s files.
    #[error("node {node:?}: cannot build the TLS configuration: {reason}")]
    Config { node: String, reason: String },
}

/// A QUIC connection to or from a peer that did not get through the
/// mutual-TLS handshake. Each variant names the peer's address.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The handshake failed: a certificate not from the cluster CA, a name
    /// other than the one expected, an ALPN other than `ferry/1`, or the
    /// network.
    #[error("peer {addr}: refused: {source}")]
    Refused {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },

    /// The connection could not even be attempted (a bad address or name).
    #[error("peer {addr} (node {node:?}): cannot connect: {source}")]
    Connect {
        addr: SocketAddr,
        node: String,
        #[source]
        source: quinn::ConnectError,
    },

    /// The peer's certificate verified but names no usable node.
    #[error("peer {addr}: its certificate names no node")]
    NoNodeName { addr: SocketAddr },
}
