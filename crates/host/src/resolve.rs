//! Finding the program to run the way `execvp` does, so that record and
//! replay hand `execve` the same path bytes.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// `execvp`'s search path when `PATH` is unset (glibc).
pub const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// Why a command could not be resolved.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No file of that name on the search path (or at that path).
    #[error("{cmd}: command not found")]
    NotFound {
        /// The command as typed.
        cmd: String,
    },
    /// A file was found but none can be executed.
    #[error("{cmd}: command not found ({found} is not executable)")]
    NotExecutable {
        /// The command as typed.
        cmd: String,
        /// The first candidate found.
        found: String,
    },
}

/// Resolve `cmd` as `execvp` would: a name with a `/` is taken as is,
/// otherwise each directory of `path_var` is tried in order (an empty entry
/// means the working directory). Relative candidates are checked against
/// `cwd`, the directory the program will start in; the returned path is the
/// one to pass to `execve` from there (relative stays relative).
pub fn resolve(cmd: &OsStr, path_var: Option<&OsStr>, cwd: &Path) -> Result<PathBuf, ResolveError> {
    let shown = cmd.to_string_lossy().into_owned();
    if cmd.is_empty() {
        return Err(ResolveError::NotFound { cmd: shown });
    }
    let candidates: Vec<PathBuf> = if cmd.as_bytes().contains(&b'/') {
        vec![PathBuf::from(cmd)]
    } else {
        let path_var = path_var.unwrap_or(OsStr::new(DEFAULT_PATH));
        path_var
            .as_bytes()
            .split(|b| *b == b':')
            .map(|dir| {
                if dir.is_empty() {
                    PathBuf::from(cmd)
                } else {
                    let mut p = OsString::from_vec(dir.to_vec());
                    p.push("/");
                    p.push(cmd);
                    PathBuf::from(p)
                }
            })
            .collect()
    };
    let mut not_exec: Option<PathBuf> = None;
    for c in candidates {
        let full = cwd.join(&c);
        match std::fs::metadata(&full) {
            Ok(m) if m.is_file() => {
                if nix::unistd::access(&full, nix::unistd::AccessFlags::X_OK).is_ok() {
                    return Ok(c);
                }
                not_exec.get_or_insert(c);
            }
            Ok(_) => {
                not_exec.get_or_insert(c);
            }
            Err(_) => {}
        }
    }
    match not_exec {
        Some(found) => Err(ResolveError::NotExecutable {
            cmd: shown,
            found: found.display().to_string(),
        }),
        None => Err(ResolveError::NotFound { cmd: shown }),
    }
}

/// The value of `key` in an environment given as `KEY=VALUE` entries (the
/// first match, as `getenv` does).
pub fn env_value<'a>(env: &'a [Vec<u8>], key: &[u8]) -> Option<&'a [u8]> {
    env.iter().find_map(|e| {
        let rest = e.strip_prefix(key)?;
        rest.strip_prefix(b"=")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn searches_path_in_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        file(b.path(), "prog", 0o755);
        let path = format!("{}:{}", a.path().display(), b.path().display());
        let got = resolve(OsStr::new("prog"), Some(OsStr::new(&path)), Path::new("/")).unwrap();
        assert_eq!(got, b.path().join("prog"));
        file(a.path(), "prog", 0o755);
        let got = resolve(OsStr::new("prog"), Some(OsStr::new(&path)), Path::new("/")).unwrap();
        assert_eq!(got, a.path().join("prog"));
    }

    #[test]
    fn skips_non_executable_and_directories() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        file(a.path(), "prog", 0o644);
        std::fs::create_dir(b.path().join("prog")).unwrap();
        let path = format!("{}:{}", a.path().display(), b.path().display());
        let err = resolve(OsStr::new("prog"), Some(OsStr::new(&path)), Path::new("/")).unwrap_err();
        // Root may execute a file without x bits only if some x bit is set;
        // 0o644 has none, so this holds for every user.
        assert!(matches!(err, ResolveError::NotExecutable { .. }), "{err:?}");
        assert!(err.to_string().starts_with("prog: command not found"));
    }

    #[test]
    fn missing_command() {
        let err = resolve(
            OsStr::new("no-such-command-ferry"),
            Some(OsStr::new("/nonexistent")),
            Path::new("/"),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "no-such-command-ferry: command not found");
        assert!(resolve(OsStr::new(""), None, Path::new("/")).is_err());
    }

    #[test]
    fn slash_is_not_searched_and_relative_uses_cwd() {
        let d = tempfile::tempdir().unwrap();
        file(d.path(), "prog", 0o755);
        let got = resolve(
            OsStr::new("./prog"),
            Some(OsStr::new("/nonexistent")),
            d.path(),
        )
        .unwrap();
        assert_eq!(got, PathBuf::from("./prog"));
        assert!(resolve(OsStr::new("./prog"), None, Path::new("/")).is_err());
    }

    #[test]
    fn empty_path_entry_is_the_working_directory() {
        let d = tempfile::tempdir().unwrap();
        file(d.path(), "prog", 0o755);
        let got = resolve(
            OsStr::new("prog"),
            Some(OsStr::new("/nonexistent:")),
            d.path(),
        )
        .unwrap();
        assert_eq!(got, PathBuf::from("prog"));
    }

    #[test]
    fn unset_path_uses_the_default() {
        let got = resolve(OsStr::new("sh"), None, Path::new("/")).unwrap();
        assert!(
            got == Path::new("/bin/sh") || got == Path::new("/usr/bin/sh"),
            "{got:?}"
        );
    }

    #[test]
    fn env_lookup() {
        let env = vec![
            b"PATHX=1".to_vec(),
            b"PATH=/a:/b".to_vec(),
            b"PATH=/c".to_vec(),
        ];
        assert_eq!(env_value(&env, b"PATH"), Some(&b"/a:/b"[..]));
        assert_eq!(env_value(&env, b"HOME"), None);
    }
}
