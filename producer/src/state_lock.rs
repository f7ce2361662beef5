//! One `syncdata-producer run` per state directory: two would write one
//! checkpoint and one quarantine in turn, each rewinding the other. The
//! lock is the archiver's mechanism (an exclusive advisory lock on a file,
//! released by the kernel when the process ends, even by `kill -9`).

use std::fs::File;
use std::path::Path;

pub const LOCK_NAME: &str = "run.lock";

/// Held for as long as the value lives.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Takes the state directory's lock, creating the directory (0700) when
/// missing; fails at once, naming the directory, when another producer
/// holds it.
pub fn lock(state_dir: &Path) -> anyhow::Result<StateLock> {
    syncdata_core::private_fs::create_dir_all(state_dir).map_err(|e| {
        anyhow::anyhow!("cannot create state directory {}: {e}", state_dir.display())
    })?;
    let path = state_dir.join(LOCK_NAME);
    let file = syncdata_core::private_fs::open_options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(StateLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another syncdata-producer run is using state directory {} (it holds {}); \
             one producer per state directory: stop the other one, or give this one \
             its own producer.state_dir",
            state_dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::anyhow!("cannot lock {}: {e}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_goes() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = lock(&state).unwrap();
        let err = lock(&state).unwrap_err().to_string();
        assert!(err.contains("another syncdata-producer run"), "{err}");
        drop(first);
        lock(&state).unwrap();
    }
}
