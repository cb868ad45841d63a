//! A node's identity: the cluster CA, the node's certificate and its key,
//! loaded and checked once, before `ferryd` opens a socket.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::SignatureScheme;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

use crate::files::{read_cert, read_key, warn_if_readable_by_others};
use crate::issue::{validate_node_name, CaPaths, NodePaths};
use crate::CertError;

/// A certificate due to end within this time is loaded, with a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// The one crypto provider of the cluster's TLS: ring.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

pub(crate) fn parse_x509<'a>(
    path: &Path,
    der: &'a CertificateDer<'_>,
) -> Result<X509Certificate<'a>, CertError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(CertError::BadCert {
            path: path.to_owned(),
            reason: format!("not an X.509 certificate: {e}"),
        }),
    }
}

/// `Expired` or `NotYetValid` when now is outside the certificate's validity.
pub(crate) fn check_validity(path: &Path, cert: &X509Certificate<'_>) -> Result<(), CertError> {
    let now = OffsetDateTime::now_utc();
    let validity = cert.validity();
    let not_after = validity.not_after.to_datetime();
    if now > not_after {
        return Err(CertError::Expired {
            path: path.to_owned(),
            not_after: format_time(not_after),
        });
    }
    let not_before = validity.not_before.to_datetime();
    if now < not_before {
        return Err(CertError::NotYetValid {
            path: path.to_owned(),
            not_before: format_time(not_before),
        });
    }
    Ok(())
}

/// What a certificate names itself: its DNS subject alternative names, or
/// else its common name.
fn names_of(cert: &X509Certificate<'_>) -> String {
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(format!("{dns:?}"));
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                names.push(format!("CN {cn:?}"));
            }
        }
    }
    if names.is_empty() {
        "no name".into()
    } else {
        names.join(", ")
    }
}

/// A node's checked identity: the cluster CA it trusts, and the certificate
/// and key it presents. Build the QUIC configurations from it with
/// [`NodeIdentity::quinn_server_config`] and
/// [`NodeIdentity::quinn_client_config`].
pub struct NodeIdentity {
    pub(crate) node: String,
    pub(crate) ca: CertificateDer<'static>,
    pub(crate) cert: CertificateDer<'static>,
    pub(crate) key: PrivateKeyDer<'static>,
    not_after: SystemTime,
    paths: NodePaths,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("NodeIdentity")
            .field("node", &self.node)
            .field("cert", &self.paths.cert)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Loads `dir/ca.crt`, `dir/NODE.crt` and `dir/NODE.key`, and checks
    /// that the certificate was issued by that CA to node `node`, for both
    /// server and client authentication, is valid now, and goes with the
    /// key. Each error names the file at fault and what is wrong with it.
    pub fn load(dir: &Path, node: &str) -> Result<NodeIdentity, CertError> {
        validate_node_name(node)?;
        let ca_path = CaPaths::in_dir(dir).cert;
        let paths = NodePaths::in_dir(dir, node);

        // The CA.
        let ca = read_cert(&ca_path)?;
        let ca_x509 = parse_x509(&ca_path, &ca)?;
        if !ca_x509.is_ca() {
            return Err(CertError::BadCert {
                path: ca_path,
                reason: "not a CA certificate".into(),
            });
        }
        check_validity(&ca_path, &ca_x509)?;
        let anchor = webpki::anchor_from_trusted_cert(&ca)
            .map_err(|e| CertError::BadCert {
                path: ca_path.clone(),
                reason: format!("{e:?}"),
            })?
            .to_owned();

        // The node's certificate: issued by the CA, valid now, to this node.
        let cert = read_cert(&paths.cert)?;
        let x509 = parse_x509(&paths.cert, &cert)?;
        let end_entity =
            webpki::EndEntityCert::try_from(&cert).map_err(|e| CertError::BadCert {
                path: paths.cert.clone(),
                reason: format!("{e:?}"),
            })?;
        let now = UnixTime::now();
        for usage in [
            webpki::KeyUsage::server_auth(),
            webpki::KeyUsage::client_auth(),
        ] {
            end_entity
                .verify_for_usage(
                    webpki::ALL_VERIFICATION_ALGS,
                    std::slice::from_ref(&anchor),
                    &[],
                    now,
                    usage,
                    None,
                    None,
                )
                .map_err(|e| chain_error(e, &paths.cert, &ca_path, &x509))?;
        }
        let name = ServerName::try_from(node).map_err(|_| CertError::BadNodeName {
            name: node.to_owned(),
            reason: "must be a DNS name",
        })?;
        end_entity
            .verify_is_valid_for_subject_name(&name)
            .map_err(|_| CertError::WrongName {
                path: paths.cert.clone(),
                expected: node.to_owned(),
                found: names_of(&x509),
            })?;

        // The key: ECDSA P-256, and the certificate's.
        let key = read_key(&paths.key)?;
        check_key(&paths, &cert, &key)?;
        warn_if_readable_by_others(&paths.key);

        let not_after_odt = x509.validity().not_after.to_datetime();
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(not_after_odt.unix_timestamp()).unwrap_or(0));
        if not_after
            .duration_since(SystemTime::now())
            .is_ok_and(|left| left < EXPIRY_WARNING)
        {
            tracing::warn!(
                node,
                cert = %paths.cert.display(),
                not_after = %format_time(not_after_odt),
                "node certificate expires soon; issue a new one (ferry cert issue --force)"
            );
        }

        Ok(NodeIdentity {
            node: node.to_owned(),
            ca,
            cert,
            key,
            not_after,
            paths,
        })
    }

    /// This node's name, as in its certificate.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// When this node's certificate ends.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The files this identity was loaded from.
    pub fn paths(&self) -> &NodePaths {
        &self.paths
    }
}

/// Turns webpki's verdict on the node certificate into an error naming it.
fn chain_error(
    e: webpki::Error,
    cert_path: &Path,
    ca_path: &Path,
    x509: &X509Certificate<'_>,
) -> CertError {
    let path = cert_path.to_owned();
    match e {
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            CertError::NotSignedByCa {
                path,
                ca: ca_path.to_owned(),
            }
        }
        webpki::Error::CertExpired { .. } => CertError::Expired {
            path,
            not_after: format_time(x509.validity().not_after.to_datetime()),
        },
        webpki::Error::CertNotValidYet { .. } => CertError::NotYetValid {
            path,
            not_before: format_time(x509.validity().not_before.to_datetime()),
        },
        #[allow(deprecated)]
        webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_) => {
            CertError::BadCert {
                path,
                reason: "not for both TLS server and client authentication (extended key usage)"
                    .into(),
            }
        }
        other => CertError::BadCert {
            path,
            reason: format!("{other:?}"),
        },
    }
}

/// The key must be ECDSA P-256 and the public half of the certificate.
fn check_key(
    paths: &NodePaths,
    cert: &CertificateDer<'static>,
    key: &PrivateKeyDer<'static>,
) -> Result<(), CertError> {
    let wrong_type = |found: &str| CertError::WrongKeyType {
        path: paths.key.clone(),
        found: found.to_owned(),
    };
    let signing_key = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|_| wrong_type("a key of an unknown or unsupported type"))?;
    match signing_key.algorithm() {
        rustls::SignatureAlgorithm::ECDSA => {}
        rustls::SignatureAlgorithm::ED25519 => return Err(wrong_type("an Ed25519 key")),
        rustls::SignatureAlgorithm::RSA => return Err(wrong_type("an RSA key")),
        _ => return Err(wrong_type("a key of an unsupported type")),
    }
    if signing_key
        .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
        .is_none()
    {
        return Err(wrong_type("an ECDSA key on another curve"));
    }
    let certified = rustls::sign::CertifiedKey::new(vec![cert.clone()], signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(CertError::KeyMismatch {
                key: paths.key.clone(),
                cert: paths.cert.clone(),
            })
        }
        Err(e) => Err(CertError::BadCert {
            path: paths.cert.clone(),
            reason: e.to_string(),
        }),
    }
}
