//! Making the cluster CA and the node certificates (`ferry cert init`,
//! `ferry cert issue`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

use crate::files::{check_absent, ensure_dir, read_cert, read_key, write_atomic};
use crate::files::{CERT_MODE, KEY_MODE};
use crate::identity::{check_validity, parse_x509};
use crate::CertError;

/// File name of the cluster CA's certificate in a certificate directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the cluster CA's private key. It stays on the host where
/// certificates are issued.
pub const CA_KEY_FILE: &str = "ca.key";
/// Subject common name of every cluster CA.
pub const CA_COMMON_NAME: &str = "Ferry cluster CA";

/// How long a cluster CA is valid.
pub(crate) const CA_VALIDITY: Duration = Duration::days(3653);
/// How long a node certificate is valid (never past its CA's end).
pub(crate) const NODE_VALIDITY: Duration = Duration::days(731);
/// Certificates start this long before they are made, so that a host whose
/// clock is a little behind the issuing host's accepts them at once.
const BACKDATE: Duration = Duration::hours(1);

/// Where [`init_ca`] put the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPaths {
    /// `DIR/ca.crt`: copy it to every node.
    pub cert: PathBuf,
    /// `DIR/ca.key` (mode 0600): keep it where certificates are issued.
    pub key: PathBuf,
}

impl CaPaths {
    /// The CA files of certificate directory `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        CaPaths {
            cert: dir.join(CA_CERT_FILE),
            key: dir.join(CA_KEY_FILE),
        }
    }
}

/// Where [`issue`] put a node's certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePaths {
    /// The node name, as in the certificate.
    pub node: String,
    /// `DIR/NODE.crt`.
    pub cert: PathBuf,
    /// `DIR/NODE.key` (mode 0600).
    pub key: PathBuf,
}

impl NodePaths {
    /// The files of node `node` in certificate directory `dir`. The name is
    /// not checked here; [`issue`] and [`crate::NodeIdentity::load`] check it.
    pub fn in_dir(dir: &Path, node: &str) -> Self {
        NodePaths {
            node: node.to_owned(),
            cert: dir.join(format!("{node}.crt")),
            key: dir.join(format!("{node}.key")),
        }
    }
}

/// Checks a node name: `[A-Za-z0-9][A-Za-z0-9.-]{0,62}`, usable as a DNS
/// name (no empty part between dots, no part ending in `-`, a last part
/// that is not all digits, so never an IP address), and not `ca`, whose
/// files are the CA's.
pub fn validate_node_name(name: &str) -> Result<(), CertError> {
    let bad = |reason| {
        Err(CertError::BadNodeName {
            name: name.to_owned(),
            reason,
        })
    };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 63 {
        return bad("must be 1 to 63 characters long");
    }
    if !bytes[0].is_ascii_alphanumeric() {
        return bad("must start with a letter or a digit");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'-')
    {
        return bad("may hold only letters, digits, '.' and '-'");
    }
    if name
        .split('.')
        .any(|label| label.is_empty() || label.ends_with('-'))
    {
        return bad("each '.'-separated part must be non-empty and not end with '-'");
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return bad("must be a name, not an IP address");
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad("the last '.'-separated part must not be all digits");
    }
    if rustls_pki_types::DnsName::try_from(name).is_err() {
        return bad("must be a valid DNS name");
    }
    if name.eq_ignore_ascii_case("ca") {
        return bad("\"ca\" is the name of the CA's own files");
    }
    Ok(())
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn generate_key(path: &Path) -> Result<KeyPair, CertError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CertError::Generate {
        path: path.to_owned(),
        source,
    })
}

/// Creates the cluster CA in `dir`: `ca.crt` (a self-signed ECDSA P-256
/// certificate, subject CN "Ferry cluster CA" with OU "cluster ID", ID
/// being 16 hex digits of the CA's key identifier, valid 10 years) and `ca.key`
/// (mode 0600). `dir` is created with mode 0700 if missing.
///
/// Refuses to replace either file unless `force`.
pub fn init_ca(dir: &Path, force: bool) -> Result<CaPaths, CertError> {
    let paths = CaPaths::in_dir(dir);
    ensure_dir(dir)?;
    check_absent(&paths.cert, force)?;
    check_absent(&paths.key, force)?;

    let key = generate_key(&paths.key)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    // Every cluster's CA has the same common name; the organizational unit
    // tells them apart (and lets a verifier say "unknown issuer" rather than
    // "bad signature" for another cluster's certificate).
    let id: String = params.key_identifier(&key)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, format!("cluster {id}"));
    // Path length 0: the CA signs node certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let start = now() - BACKDATE;
    params.not_before = start;
    params.not_after = start + CA_VALIDITY;
    let cert = params
        .self_signed(&key)
        .map_err(|source| CertError::Generate {
            path: paths.cert.clone(),
            source,
        })?;

    write_atomic(&paths.key, key.serialize_pem().as_bytes(), KEY_MODE, force)?;
    write_atomic(&paths.cert, cert.pem().as_bytes(), CERT_MODE, force)?;
    tracing::info!(cert = %paths.cert.display(), key = %paths.key.display(), "created the cluster CA");
    Ok(paths)
}

/// Issues node `node` a certificate signed by the CA in `dir`: writes
/// `dir/NODE.crt` and `dir/NODE.key` (mode 0600). The certificate names the
/// node in its subject CN and as a DNS subject alternative name, serves for
/// both TLS server and client authentication, and is valid 2 years (never
/// past the CA's own end).
///
/// Refuses to replace either file unless `force`.
pub fn issue(dir: &Path, node: &str, force: bool) -> Result<NodePaths, CertError> {
    validate_node_name(node)?;
    let ca = CaPaths::in_dir(dir);
    let paths = NodePaths::in_dir(dir, node);
    check_absent(&paths.cert, force)?;
    check_absent(&paths.key, force)?;

    // The CA: its certificate must still be valid, and its key must be the
    // one the certificate carries.
    let ca_der = read_cert(&ca.cert)?;
    let ca_x509 = parse_x509(&ca.cert, &ca_der)?;
    check_validity(&ca.cert, &ca_x509)?;
    if !ca_x509.is_ca() {
        return Err(CertError::BadCert {
            path: ca.cert.clone(),
            reason: "not a CA certificate".into(),
        });
    }
    let ca_key_der = read_key(&ca.key)?;
    let ca_key = KeyPair::try_from(&ca_key_der).map_err(|e| CertError::WrongKeyType {
        path: ca.key.clone(),
        found: format!("a key rcgen cannot use ({e})"),
    })?;
    if ca_key.subject_public_key_info() != ca_x509.public_key().raw {
        return Err(CertError::KeyMismatch {
            key: ca.key.clone(),
            cert: ca.cert.clone(),
        });
    }
    let ca_not_after = ca_x509.validity().not_after.to_datetime();
    let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key).map_err(|e| CertError::BadCert {
        path: ca.cert.clone(),
        reason: e.to_string(),
    })?;

    let key = generate_key(&paths.key)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, node);
    let san = node.try_into().map_err(|source| CertError::Generate {
        path: paths.cert.clone(),
        source,
    })?;
    params.subject_alt_names = vec![SanType::DnsName(san)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let start = now() - BACKDATE;
    params.not_before = start;
    params.not_after = (start + NODE_VALIDITY).min(ca_not_after);
    if params.not_after < start + NODE_VALIDITY {
        tracing::warn!(
            node,
            not_after = %crate::identity::format_time(ca_not_after),
            "node certificate ends with its CA, sooner than the usual 2 years"
        );
    }
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| CertError::Generate {
            path: paths.cert.clone(),
            source,
        })?;

    write_atomic(&paths.key, key.serialize_pem().as_bytes(), KEY_MODE, force)?;
    write_atomic(&paths.cert, cert.pem().as_bytes(), CERT_MODE, force)?;
    tracing::info!(node, cert = %paths.cert.display(), key = %paths.key.display(), "issued node certificate");
    Ok(paths)
}
