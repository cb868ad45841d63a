//! Where the shim is.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// The environment variable that overrides the shim's location.
pub const FERRY_PRELOAD: &str = "FERRY_PRELOAD";
/// The shim's file name, looked for beside the `ferry` executable.
pub const SHIM_NAME: &str = "libferry_preload.so";

/// The shim could not be found.
#[derive(Debug, thiserror::Error)]
#[error("shim not found at {} (build it, or set {FERRY_PRELOAD})", path.display())]
pub struct ShimNotFound {
    /// Where it was looked for.
    pub path: PathBuf,
}

/// The shim's absolute path: `$FERRY_PRELOAD` if set, else
/// `libferry_preload.so` beside the running executable.
pub fn locate() -> Result<PathBuf, ShimNotFound> {
    let path = match std::env::var_os(FERRY_PRELOAD) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => match std::env::current_exe() {
            Ok(exe) => exe.parent().unwrap_or(Path::new("/")).join(SHIM_NAME),
            Err(_) => PathBuf::from(SHIM_NAME),
        },
    };
    let path = std::path::absolute(&path).unwrap_or(path);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ShimNotFound { path })
    }
}

/// The value of `LD_PRELOAD` that loads `shim` first, before whatever
/// `previous` value the environment had.
pub fn preload_value(shim: &Path, previous: Option<&OsString>) -> OsString {
    let mut v = OsString::from(shim.as_os_str());
    if let Some(prev) = previous.filter(|p| !p.is_empty()) {
        v.push(":");
        v.push(prev);
    }
    v
}

/// The environment for the program: `vars` (ferry's own), with the shim
/// first in `LD_PRELOAD` (in place if it was set, appended if not).
pub fn program_env(
    shim_path: &Path,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<Vec<u8>> {
    let entry = |key: OsString, value: OsString| {
        let mut e = key.into_vec();
        e.push(b'=');
        e.extend_from_slice(value.as_bytes());
        e
    };
    let mut env = Vec::new();
    let mut preload_set = false;
    for (key, value) in vars {
        let value = if key == "LD_PRELOAD" && !preload_set {
            preload_set = true;
            preload_value(shim_path, Some(&value))
        } else {
            value
        };
        env.push(entry(key, value));
    }
    if !preload_set {
        env.push(entry(
            OsString::from("LD_PRELOAD"),
            preload_value(shim_path, None),
        ));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preload_prepends() {
        let shim = Path::new("/opt/ferry/libferry_preload.so");
        assert_eq!(
            preload_value(shim, None),
            OsString::from("/opt/ferry/libferry_preload.so")
        );
        assert_eq!(
            preload_value(shim, Some(&OsString::new())),
            OsString::from("/opt/ferry/libferry_preload.so")
        );
        assert_eq!(
            preload_value(shim, Some(&OsString::from("libfoo.so"))),
            OsString::from("/opt/ferry/libferry_preload.so:libfoo.so")
        );
    }
}
