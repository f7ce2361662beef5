//! The producer's checkpoint: how far into the archive every record has been
//! acknowledged by JetStream. Invariant: the file on disk is always a whole,
//! earlier-written checkpoint (temp file, fsync, rename, fsync of the
//! directory), and it never names a position beyond the last PubAck.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A position in the archive: every line of `file` before byte `offset`
/// (that is, its first `line` lines) and every file named before `file` is
/// done. Names compare byte-wise, which is the order files are read in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub file: String,
    /// Bytes of `file` consumed: just after the last finished line.
    pub offset: u64,
    /// Lines of `file` consumed (blank and quarantined lines included).
    pub line: u64,
}

impl Checkpoint {
    /// The start of a file.
    pub fn start_of(file: impl Into<String>) -> Self {
        Checkpoint {
            file: file.into(),
            offset: 0,
            line: 0,
        }
    }
}

/// A table halted by sanitization (a column without a rule, a table without
/// an entry, a value its transform rejects): every record of the table
/// before this position is acknowledged; from here on its records are held
/// back until its rules are complete, then re-read from here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaltedTable {
    pub schema: String,
    pub table: String,
    /// The position just before the table's first unpublished record.
    pub file: String,
    pub offset: u64,
    pub line: u64,
    /// Why it halted (names table and columns, never values).
    pub reason: String,
}

/// The whole checkpoint file: the main position plus the halted tables,
/// written together atomically, so the main position can never be on disk
/// past a halted table's records without that table's halt position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointState {
    #[serde(flatten)]
    pub position: Checkpoint,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub halted: Vec<HaltedTable>,
}

/// The layout of `checkpoint.json` this build writes. Files written before
/// the field existed have no `version` and read as version 1 (the same
/// layout); a file from a newer build is refused rather than misread.
pub const CHECKPOINT_VERSION: u32 = 1;

/// `checkpoint.json` as written: the state plus its layout version.
#[derive(Serialize)]
struct OnDisk<'a> {
    version: u32,
    #[serde(flatten)]
    state: &'a CheckpointState,
}

/// `checkpoint.json` as read: `version` is absent in files of old builds.
#[derive(Deserialize)]
struct FromDisk {
    #[serde(default)]
    version: Option<u32>,
    #[serde(flatten)]
    state: CheckpointState,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("checkpoint {path} is corrupt ({source}); inspect it, then fix or remove it")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "checkpoint {path} has layout version {found}, newer than this build's \
         {CHECKPOINT_VERSION}: run the syncdata-producer that wrote it, or a newer one"
    )]
    TooNew { path: PathBuf, found: u32 },
    #[error("cannot write checkpoint {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The checkpoint file `checkpoint.json` in the producer's state directory.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    path: PathBuf,
}

impl CheckpointStore {
    pub const FILE_NAME: &'static str = "checkpoint.json";
    const TEMP_NAME: &'static str = "checkpoint.json.tmp";

    pub fn new(state_dir: &Path) -> Self {
        CheckpointStore {
            path: state_dir.join(Self::FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved checkpoint; None when there is none yet, which means "start
    /// from the first file". A corrupt file is an error, never a silent
    /// restart from the beginning.
    pub fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        Ok(self.load_state()?.map(|s| s.position))
    }

    /// The saved checkpoint with its halted tables.
    pub fn load_state(&self) -> Result<Option<CheckpointState>, CheckpointError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CheckpointError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let disk: FromDisk =
            serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        match disk.version {
            Some(found) if found > CHECKPOINT_VERSION => Err(CheckpointError::TooNew {
                path: self.path.clone(),
                found,
            }),
            _ => Ok(Some(disk.state)),
        }
    }

    /// Replaces the checkpoint atomically: a crash at any point leaves
    /// either the old or the new checkpoint, whole.
    pub fn save(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        self.save_state(&CheckpointState {
            position: checkpoint.clone(),
            halted: Vec::new(),
        })
    }

    /// Replaces the checkpoint and the halted tables atomically.
    pub fn save_state(&self, state: &CheckpointState) -> Result<(), CheckpointError> {
        let err = |source| CheckpointError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let temp = dir.join(Self::TEMP_NAME);
        let disk = OnDisk {
            version: CHECKPOINT_VERSION,
            state,
        };
        let mut json = serde_json::to_vec(&disk).expect("a checkpoint always serializes");
        json.push(b'\n');
        let mut file = syncdata_core::private_fs::open_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(err)?;
        file.write_all(&json).map_err(err)?;
        file.sync_all().map_err(err)?;
        drop(file);
        fs::rename(&temp, &self.path).map_err(err)?;
        // The rename is durable only once the directory entry is.
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_checkpoint_means_start_from_the_first_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        assert_eq!(store.load().unwrap(), None);
    }

    #[test]
    fn save_then_load_round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        let first = Checkpoint {
            file: "0001.jsonl".into(),
            offset: 1234,
            line: 17,
        };
        store.save(&first).unwrap();
        assert_eq!(store.load().unwrap(), Some(first));
        let second = Checkpoint {
            file: "0002.jsonl".into(),
            offset: 9,
            line: 1,
        };
        store.save(&second).unwrap();
        assert_eq!(store.load().unwrap(), Some(second));
        // No temp file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![CheckpointStore::FILE_NAME.to_owned()]);
    }

    #[test]
    fn a_stale_temp_file_does_not_matter() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        store.save(&Checkpoint::start_of("a")).unwrap();
        // A crash between write and rename leaves a torn temp file.
        fs::write(dir.path().join(CheckpointStore::TEMP_NAME), b"{\"fi").unwrap();
        assert_eq!(store.load().unwrap(), Some(Checkpoint::start_of("a")));
        store.save(&Checkpoint::start_of("b")).unwrap();
        assert_eq!(store.load().unwrap(), Some(Checkpoint::start_of("b")));
    }

    #[test]
    fn halted_tables_are_saved_with_the_position() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        // A file written before halts existed still loads.
        fs::write(store.path(), br#"{"file":"a","offset":5,"line":1}"#).unwrap();
        let state = store.load_state().unwrap().unwrap();
        assert!(state.halted.is_empty());
        assert_eq!(state.position.offset, 5);
        let state = CheckpointState {
            position: Checkpoint::start_of("b"),
            halted: vec![HaltedTable {
                schema: "public".into(),
                table: "users".into(),
                file: "a".into(),
                offset: 3,
                line: 1,
                reason: "column \"ssn\" has no rule".into(),
            }],
        };
        store.save_state(&state).unwrap();
        assert_eq!(store.load_state().unwrap(), Some(state));
        // The plain view still reads the position.
        assert_eq!(store.load().unwrap(), Some(Checkpoint::start_of("b")));
    }

    #[test]
    fn the_file_carries_its_version_and_files_without_one_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        store.save(&Checkpoint::start_of("a")).unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&fs::read(store.path()).unwrap()).unwrap();
        assert_eq!(written["version"], CHECKPOINT_VERSION);
        assert_eq!(written["file"], "a");
        // A file of an older build, halted tables included, has no version.
        fs::write(
            store.path(),
            br#"{"file":"b","offset":7,"line":2,"halted":[{"schema":"public","table":"t","file":"a","offset":1,"line":0,"reason":"r"}]}"#,
        )
        .unwrap();
        let state = store.load_state().unwrap().unwrap();
        assert_eq!(state.position.offset, 7);
        assert_eq!(state.halted.len(), 1);
        // One of a newer build is refused, not misread.
        fs::write(
            store.path(),
            br#"{"version":2,"file":"b","offset":7,"line":2}"#,
        )
        .unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("layout version 2"), "{err}");
    }

    #[test]
    fn a_corrupt_checkpoint_is_an_error_not_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        fs::write(store.path(), b"not json").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }
}
