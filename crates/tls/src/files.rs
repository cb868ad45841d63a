//! Reading PEM files and writing key material with the right modes, without
//! ever leaving a half-written file under a final name.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{PemObject, SectionKind};

use crate::CertError;

/// Mode of private keys: readable by their owner only.
pub(crate) const KEY_MODE: u32 = 0o600;
/// Mode of certificates, which are public.
pub(crate) const CERT_MODE: u32 = 0o644;
/// Mode of a certificate directory this crate creates.
pub(crate) const DIR_MODE: u32 = 0o700;

fn io_error(path: &Path, source: io::Error) -> CertError {
    if source.kind() == io::ErrorKind::NotFound {
        CertError::Missing {
            path: path.to_owned(),
        }
    } else {
        CertError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Every PEM section of `path`, in order. A file that cannot be read is
/// `Missing` or `Io`; one with no section, or a broken one, is `NotPem`.
pub(crate) fn read_pem(path: &Path) -> Result<Vec<(SectionKind, Vec<u8>)>, CertError> {
    let bytes = fs::read(path).map_err(|e| io_error(path, e))?;
    let not_pem = |reason: String| CertError::NotPem {
        path: path.to_owned(),
        reason,
    };
    let sections = <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| not_pem(e.to_string()))?;
    if sections.is_empty() {
        return Err(not_pem("no PEM block (-----BEGIN …-----) found".into()));
    }
    Ok(sections)
}

/// The first certificate of the PEM file `path`.
pub(crate) fn read_cert(
    path: &Path,
) -> Result<rustls_pki_types::CertificateDer<'static>, CertError> {
    read_pem(path)?
        .into_iter()
        .find(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| der.into())
        .ok_or_else(|| CertError::NotPem {
            path: path.to_owned(),
            reason: "no CERTIFICATE block".into(),
        })
}

/// The first private key of the PEM file `path`, with a one-word description
/// of what the file held when it holds no key at all.
pub(crate) fn read_key(path: &Path) -> Result<rustls_pki_types::PrivateKeyDer<'static>, CertError> {
    let sections = read_pem(path)?;
    for (kind, der) in &sections {
        let key = match kind {
            SectionKind::PrivateKey => {
                rustls_pki_types::PrivatePkcs8KeyDer::from(der.clone()).into()
            }
            SectionKind::EcPrivateKey => {
                rustls_pki_types::PrivateSec1KeyDer::from(der.clone()).into()
            }
            SectionKind::RsaPrivateKey => {
                return Err(CertError::WrongKeyType {
                    path: path.to_owned(),
                    found: "an RSA key".into(),
                })
            }
            _ => continue,
        };
        return Ok(key);
    }
    let found = match sections.first().map(|(kind, _)| kind) {
        Some(SectionKind::Certificate) => "a certificate, not a private key",
        Some(SectionKind::PublicKey) => "a public key, not a private key",
        _ => "no private key",
    };
    Err(CertError::WrongKeyType {
        path: path.to_owned(),
        found: found.into(),
    })
}

/// Warns when a private key file can be read by anyone but its owner.
pub(crate) fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                "private key is readable by other users; chmod 600 it"
            );
        }
    }
}

/// Creates `dir` (and its parents) with mode 0700 when it does not exist.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), CertError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| CertError::Io {
            path: dir.to_owned(),
            source: e,
        })
}

/// Refuses early, before any key is generated, when `path` exists and
/// `force` is off.
pub(crate) fn check_absent(path: &Path, force: bool) -> Result<(), CertError> {
    match fs::symlink_metadata(path) {
        Ok(_) if !force => Err(CertError::Exists {
            path: path.to_owned(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(path, e)),
    }
}

/// Writes `contents` to `path` with `mode`, atomically: the bytes go to a
/// temporary file in the same directory, are synced, and the file then
/// takes its name — by `rename` when `force` (replacing what was there), by
/// `link` otherwise, which fails rather than replace a file that appeared
/// meanwhile.
pub(crate) fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    force: bool,
) -> Result<(), CertError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp: PathBuf = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = write_tmp_then_place(&tmp, path, contents, mode, force);
    // The temporary name is gone after a rename; after a link, or a failure,
    // it is removed here.
    let _ = fs::remove_file(&tmp);
    result?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn write_tmp_then_place(
    tmp: &Path,
    path: &Path,
    contents: &[u8],
    mode: u32,
    force: bool,
) -> Result<(), CertError> {
    let _ = fs::remove_file(tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(|e| io_error(tmp, e))?;
    // The umask may have taken bits away; set the mode exactly.
    file.set_permissions(Permissions::from_mode(mode))
        .and_then(|()| file.write_all(contents))
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error(tmp, e))?;
    drop(file);
    if force {
        fs::rename(tmp, path).map_err(|e| io_error(path, e))
    } else {
        fs::hard_link(tmp, path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                CertError::Exists {
                    path: path.to_owned(),
                }
            } else {
                io_error(path, e)
            }
        })
    }
}
