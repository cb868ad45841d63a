//! The protocol state of each application, kept durably in
//! DATA/apps/NAME/state: one wire frame (kind 1, checksummed, versioned)
//! whose body is the postcard encoding of [`PersistedApp`].

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ferry_proto::wire::{self, FrameReader, KIND_REPLICATION};
use ferry_replication::PersistedApp;

/// Name of the state file in an application's directory.
pub const STATE_FILE: &str = "state";

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file does not hold a valid state.
    #[error("{}: {why}", path.display())]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PersistError + 'a {
    move |source| PersistError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Write `bytes` to `path` so that a crash leaves the old or the new
/// content: a temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PersistError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(bytes).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err("rename into", path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))?;
    Ok(())
}

/// Store `state` for the application in `app_dir`.
pub fn save(app_dir: &Path, state: &PersistedApp) -> Result<(), PersistError> {
    let path = app_dir.join(STATE_FILE);
    let frame = wire::encode(KIND_REPLICATION, 0, state).map_err(|e| PersistError::Bad {
        path: path.clone(),
        why: e.to_string(),
    })?;
    write_atomic(&path, &frame)
}

/// Read the state stored in `app_dir`; `Ok(None)` when there is none.
pub fn load(app_dir: &Path) -> Result<Option<PersistedApp>, PersistError> {
    let path = app_dir.join(STATE_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let bad = |why: String| PersistError::Bad {
        path: path.clone(),
        why,
    };
    let mut reader = FrameReader::with_max_body(1 << 20);
    reader.push(&bytes);
    let frame = reader
        .next_frame()
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad("truncated".into()))?;
    if frame.kind != KIND_REPLICATION {
        return Err(bad(format!("frame kind {} is not a state", frame.kind)));
    }
    match frame.decode::<PersistedApp>() {
        Ok(state) => Ok(Some(state)),
        // Written before the state carried a migration record.
        Err(e) => match frame.decode::<StateBeforeMigration>() {
            Ok(old) => Ok(Some(old.into())),
            Err(_) => Err(bad(e.to_string())),
        },
    }
}

/// [`PersistedApp`] as it was before `migration` was appended.
#[derive(serde::Deserialize)]
struct StateBeforeMigration {
    epoch: u64,
    voted_for: Option<String>,
    release_floor: ferry_replication::LogPosition,
    members: Vec<ferry_replication::Member>,
    mode: ferry_replication::Mode,
    history: Vec<ferry_replication::EpochStart>,
}

impl From<StateBeforeMigration> for PersistedApp {
    fn from(o: StateBeforeMigration) -> PersistedApp {
        PersistedApp {
            epoch: o.epoch,
            voted_for: o.voted_for,
            release_floor: o.release_floor,
            members: o.members,
            mode: o.mode,
            history: o.history,
            migration: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_replication::{Member, Mode};

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let state = PersistedApp {
            epoch: 3,
            voted_for: Some("b".into()),
            release_floor: Default::default(),
            members: vec![Member::replica("a"), Member::witness("w")],
            mode: Mode::Sync,
            history: vec![],
            migration: Some(ferry_replication::Migration {
                from: "a".into(),
                to: "b".into(),
                added: false,
                phase: ferry_replication::MigrationPhase::Moved,
            }),
        };
        save(dir.path(), &state).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(state));
        let path = dir.path().join(STATE_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
    }

    #[test]
    fn reads_a_state_written_before_migrations() {
        #[derive(serde::Serialize)]
        struct Old {
            epoch: u64,
            voted_for: Option<String>,
            release_floor: ferry_replication::LogPosition,
            members: Vec<Member>,
            mode: Mode,
            history: Vec<ferry_replication::EpochStart>,
        }
        let dir = tempfile::tempdir().unwrap();
        let old = Old {
            epoch: 7,
            voted_for: Some("a".into()),
            release_floor: Default::default(),
            members: vec![Member::replica("a"), Member::replica("b")],
            mode: Mode::Async,
            history: vec![],
        };
        let frame = wire::encode(KIND_REPLICATION, 0, &old).unwrap();
        fs::write(dir.path().join(STATE_FILE), frame).unwrap();
        let state = load(dir.path()).unwrap().expect("a state");
        assert_eq!(state.epoch, 7);
        assert_eq!(state.members.len(), 2);
        assert_eq!(state.mode, Mode::Async);
        assert_eq!(state.migration, None);
    }
}
