//! `ferry cert init` / `ferry cert issue` and loading a node's identity:
//! every bad file gets an error that names it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ferry_tls::{init_ca, issue, validate_node_name, CertError, NodeIdentity, NodePaths};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The error's one line names `path`.
fn names(err: &CertError, path: &Path) {
    let line = err.to_string();
    assert!(
        line.contains(&path.display().to_string()),
        "{line:?} does not name {}",
        path.display()
    );
    assert!(!line.contains('\n'), "{line:?} is not one line");
}

fn cluster() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    init_ca(tmp.path(), false).unwrap();
    issue(tmp.path(), "alpha", false).unwrap();
    issue(tmp.path(), "beta", false).unwrap();
    tmp
}

#[test]
fn init_and_issue_write_the_files_with_private_keys_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new/certs");
    let ca = init_ca(&dir, false).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(ca.cert, dir.join("ca.crt"));
    assert_eq!(ca.key, dir.join("ca.key"));
    assert_eq!(mode(&ca.key), 0o600);
    assert_eq!(mode(&ca.cert), 0o644);

    let node = issue(&dir, "node-1.dc2", false).unwrap();
    assert_eq!(node.cert, dir.join("node-1.dc2.crt"));
    assert_eq!(node.key, dir.join("node-1.dc2.key"));
    assert_eq!(mode(&node.key), 0o600);
    assert!(fs::read_to_string(&node.cert)
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));

    let id = NodeIdentity::load(&dir, "node-1.dc2").unwrap();
    assert_eq!(id.node(), "node-1.dc2");
    let left = id
        .not_after()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    let days = left.as_secs() / 86400;
    assert!(
        (725..=731).contains(&days),
        "node certificate valid {days} days"
    );
    // No stray temporary files.
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["ca.crt", "ca.key", "node-1.dc2.crt", "node-1.dc2.key"]
    );
}

#[test]
fn overwrite_is_refused_without_force() {
    let tmp = cluster();
    let dir = tmp.path();
    let ca_before = fs::read(dir.join("ca.crt")).unwrap();

    let err = init_ca(dir, false).unwrap_err();
    assert!(matches!(err, CertError::Exists { .. }), "{err}");
    names(&err, &dir.join("ca.crt"));
    assert_eq!(fs::read(dir.join("ca.crt")).unwrap(), ca_before);

    let alpha_before = fs::read(dir.join("alpha.crt")).unwrap();
    let err = issue(dir, "alpha", false).unwrap_err();
    assert!(matches!(err, CertError::Exists { .. }), "{err}");
    names(&err, &dir.join("alpha.crt"));
    assert_eq!(fs::read(dir.join("alpha.crt")).unwrap(), alpha_before);

    // A lone key is enough to refuse.
    fs::remove_file(dir.join("beta.crt")).unwrap();
    let err = issue(dir, "beta", false).unwrap_err();
    names(&err, &dir.join("beta.key"));

    // With force: new files, still 0600, still loadable.
    issue(dir, "alpha", true).unwrap();
    assert_ne!(fs::read(dir.join("alpha.crt")).unwrap(), alpha_before);
    assert_eq!(mode(&dir.join("alpha.key")), 0o600);
    NodeIdentity::load(dir, "alpha").unwrap();

    init_ca(dir, true).unwrap();
    assert_ne!(fs::read(dir.join("ca.crt")).unwrap(), ca_before);
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    // The old node certificate is not from the new CA.
    let err = NodeIdentity::load(dir, "alpha").unwrap_err();
    assert!(matches!(err, CertError::NotSignedByCa { .. }), "{err}");
}

#[test]
fn bad_node_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    init_ca(tmp.path(), false).unwrap();
    let long = "x".repeat(64);
    for name in [
        "", "-a", ".a", "a_b", "a b", "a/b", "../x", "é", "a..b", "a.", "a-", "a-.b", "ca", "CA",
        "1.2.3.4", "7", "n1.2", &long,
    ] {
        let err = issue(tmp.path(), name, false).unwrap_err();
        assert!(
            matches!(err, CertError::BadNodeName { .. }),
            "{name:?}: {err}"
        );
        assert!(err.to_string().contains(&format!("{name:?}")), "{err}");
        assert!(NodeIdentity::load(tmp.path(), name).is_err());
    }
    let longest = "y".repeat(63);
    for name in [
        "a", "7a", "node-1", "n1.dc2", "A-b.C-d", "10-0-0-1", &longest,
    ] {
        validate_node_name(name).unwrap_or_else(|e| panic!("{name:?}: {e}"));
        issue(tmp.path(), name, false).unwrap();
        NodeIdentity::load(tmp.path(), name).unwrap();
    }
    // Nothing was written for the refused names.
    assert!(!tmp.path().join(".crt").exists());
}

#[test]
fn missing_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let err = issue(dir, "alpha", false).unwrap_err();
    assert!(matches!(err, CertError::Missing { .. }), "{err}");
    names(&err, &dir.join("ca.crt"));

    let tmp = cluster();
    let dir = tmp.path();
    let err = NodeIdentity::load(dir, "gamma").unwrap_err();
    assert!(matches!(err, CertError::Missing { .. }), "{err}");
    names(&err, &dir.join("gamma.crt"));

    fs::remove_file(dir.join("alpha.key")).unwrap();
    let err = NodeIdentity::load(dir, "alpha").unwrap_err();
    assert!(matches!(err, CertError::Missing { .. }), "{err}");
    names(&err, &dir.join("alpha.key"));

    // A node needs no CA key; issuing does.
    fs::remove_file(dir.join("ca.key")).unwrap();
    NodeIdentity::load(dir, "beta").unwrap();
    let err = issue(dir, "gamma", false).unwrap_err();
    names(&err, &dir.join("ca.key"));

    fs::remove_file(dir.join("ca.crt")).unwrap();
    let err = NodeIdentity::load(dir, "beta").unwrap_err();
    assert!(matches!(err, CertError::Missing { .. }), "{err}");
    names(&err, &dir.join("ca.crt"));
}

#[test]
fn corrupt_pem_is_named() {
    let tmp = cluster();
    let dir = tmp.path();
    let alpha = NodePaths::in_dir(dir, "alpha");

    fs::write(&alpha.cert, "this is not a certificate\n").unwrap();
    let err = NodeIdentity::load(dir, "alpha").unwrap_err();
    assert!(matches!(err, CertError::NotPem { .. }), "{err}");
    names(&err, &alpha.cert);

    fs::write(
        &alpha.cert,
        "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = NodeIdentity::load(dir, "alpha").unwrap_err();
    assert!(matches!(err, CertError::NotPem { .. }), "{err}");
    names(&err, &alpha.cert);

    // Valid PEM around bytes that are no certificate.
    fs::write(
        &alpha.cert,
        "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = NodeIdentity::load(dir, "alpha").unwrap_err();
    assert!(matches!(err, CertError::BadCert { .. }), "{err}");
    names(&err, &alpha.cert);

    // A truncated CA certificate.
    let ca = dir.join("ca.crt");
    let text = fs::read_to_string(&ca).unwrap();
    fs::write(&ca, &text[..text.len() / 2]).unwrap();
    let err = NodeIdentity::load(dir, "beta").unwrap_err();
    assert!(matches!(err, CertError::NotPem { .. }), "{err}");
    names(&err, &ca);

    let beta = NodePaths::in_dir(dir, "beta");
    fs::write(&beta.key, "garbage").unwrap();
    let err = issue(dir, "gamma", false).unwrap_err();
    names(&err, &ca);
}

#[test]
fn wrong_key_type_and_mismatched_key_are_named() {
    let tmp = cluster();
    let dir = tmp.path();
    let alpha = NodePaths::in_dir(dir, "alpha");
    let beta = NodePaths::in_dir(dir, "beta");

    // Another node's key.
    fs::copy(&beta.key, &alpha.key).unwrap();
    let err = NodeIdentity::load(dir, "alpha").unwrap_err();
    assert!(matches!(err, CertError::KeyMismatch { .. }), "{err}");
    names(&err, &alpha.key);
    names(&err, &alpha.cert);

    // A certificate where the key should be.
    fs::copy(&alpha.cert, &alpha.key).unwrap();
    let err = NodeIdentity::load(dir, "alpha").unwrap_err();
    assert!(matches!(err, CertError::WrongKeyType { .. }), "{err}");
    names(&err, &alpha.key);

    // An Ed25519 key.
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    fs::write(&alpha.key, ed.serialize_pem()).unwrap();
    let err = NodeIdentity::load(dir, "alpha").unwrap_err();
    assert!(matches!(err, CertError::WrongKeyType { .. }), "{err}");
    assert!(err.to_string().contains("Ed25519"), "{err}");
    names(&err, &alpha.key);

    // The CA key must go with the CA certificate too.
    fs::copy(&beta.key, dir.join("ca.key")).unwrap();
    let err = issue(dir, "gamma", false).unwrap_err();
    assert!(matches!(err, CertError::KeyMismatch { .. }), "{err}");
    names(&err, &dir.join("ca.key"));
}

#[test]
fn certificate_of_another_ca_or_node_is_named() {
    let ours = cluster();
    let theirs = cluster();
    let alpha = NodePaths::in_dir(ours.path(), "alpha");

    // alpha's pair from another cluster's CA (same CA subject, other key).
    fs::copy(theirs.path().join("alpha.crt"), &alpha.cert).unwrap();
    fs::copy(theirs.path().join("alpha.key"), &alpha.key).unwrap();
    let err = NodeIdentity::load(ours.path(), "alpha").unwrap_err();
    assert!(matches!(err, CertError::NotSignedByCa { .. }), "{err}");
    names(&err, &alpha.cert);
    names(&err, &ours.path().join("ca.crt"));

    // beta's pair under the name gamma.
    let dir = ours.path();
    fs::copy(dir.join("beta.crt"), dir.join("gamma.crt")).unwrap();
    fs::copy(dir.join("beta.key"), dir.join("gamma.key")).unwrap();
    let err = NodeIdentity::load(dir, "gamma").unwrap_err();
    assert!(matches!(err, CertError::WrongName { .. }), "{err}");
    assert!(err.to_string().contains("\"beta\""), "{err}");
    names(&err, &dir.join("gamma.crt"));

    // A node certificate is no CA.
    fs::copy(dir.join("beta.crt"), dir.join("ca.crt")).unwrap();
    let err = NodeIdentity::load(dir, "beta").unwrap_err();
    assert!(matches!(err, CertError::BadCert { .. }), "{err}");
    names(&err, &dir.join("ca.crt"));
}

#[test]
fn expired_certificate_is_named() {
    let tmp = cluster();
    let dir = tmp.path();
    let ca_key =
        rcgen::KeyPair::from_pem(&fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&fs::read_to_string(dir.join("ca.crt")).unwrap(), ca_key)
            .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["old".to_string()]).unwrap();
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(800);
    params.not_after = now - time::Duration::days(69);
    let cert = params.signed_by(&key, &issuer).unwrap();
    fs::write(dir.join("old.crt"), cert.pem()).unwrap();
    fs::write(dir.join("old.key"), key.serialize_pem()).unwrap();

    let err = NodeIdentity::load(dir, "old").unwrap_err();
    assert!(matches!(err, CertError::Expired { .. }), "{err}");
    assert!(err.to_string().contains("UTC"), "{err}");
    names(&err, &dir.join("old.crt"));
}
