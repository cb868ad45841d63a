//! `ferry cert init` and `ferry cert issue` as a user runs them.

use std::os::unix::fs::PermissionsExt;

use ferry_tests::{assert_exit, assert_one_line_error, run, Ferry, Workdir};

#[test]
fn init_then_issue_writes_the_files_with_private_keys() {
    let work = Workdir::new("cert");
    let ferry = Ferry::new(&work);
    let dir = work.file("certs");
    let d = dir.to_str().unwrap();
    assert_exit(
        &run("cert init", ferry.raw(&["cert", "init", "--dir", d])),
        0,
    );
    assert_exit(
        &run(
            "cert issue",
            ferry.raw(&["cert", "issue", "--dir", d, "--node", "alpha"]),
        ),
        0,
    );
    for (name, mode) in [
        ("ca.crt", 0o644),
        ("ca.key", 0o600),
        ("alpha.crt", 0o644),
        ("alpha.key", 0o600),
    ] {
        let meta = std::fs::metadata(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(text.starts_with("-----BEGIN "), "{name} is not PEM");
    }
    // Issuing again would replace a node's identity: refused.
    let again = run(
        "cert issue again",
        ferry.raw(&["cert", "issue", "--dir", d, "--node", "alpha"]),
    );
    assert_one_line_error(&again, 2, &["alpha.crt", "exists"]);
    // A name that cannot be a node's.
    let bad = run(
        "cert issue bad",
        ferry.raw(&["cert", "issue", "--dir", d, "--node", "no spaces"]),
    );
    assert_one_line_error(&bad, 2, &["node name"]);
    // No CA there.
    let none = work.file("none");
    let missing = run(
        "cert issue without CA",
        ferry.raw(&[
            "cert",
            "issue",
            "--dir",
            none.to_str().unwrap(),
            "--node",
            "beta",
        ]),
    );
    assert_one_line_error(&missing, 2, &["ca.crt"]);
}
