//! Files that may hold personal data or secrets (state, checkpoint,
//! quarantine, segments, snapshot files, exports) are created owner-only:
//! directories 0700, files 0600, set at creation and not left to the umask.
//! A directory someone else made is not changed, but a group- or
//! world-readable one is reported at start.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of the directories syncdata creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the files syncdata creates.
pub const FILE_MODE: u32 = 0o600;

/// `create_dir_all`, with every directory it creates 0700 (whatever the
/// umask: the mode is set again after creation).
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() && !parent.is_dir() {
            create_dir_all(parent)?;
        }
    }
    match DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// `OpenOptions` whose newly created files are 0600. Callers still choose
/// read/write/append/create/truncate.
pub fn open_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Makes an existing file 0600 (a file created before this rule, or by a
/// tool that honoured only the umask).
pub fn restrict_file(path: &Path) -> io::Result<()> {
    let mode = fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

/// The group/other permission bits of `path`, when any are set.
pub fn exposed_bits(path: &Path) -> Option<u32> {
    let mode = fs::metadata(path).ok()?.permissions().mode();
    let bits = mode & 0o077;
    (bits != 0).then_some(bits)
}

/// Logs a warning when `path` (a directory of `what`: "archive", "state")
/// can be read or entered by group or others.
pub fn warn_if_exposed(path: &Path, what: &str) {
    if let Some(bits) = exposed_bits(path) {
        tracing::warn!(
            path = %path.display(),
            mode = %format!("{:o}", bits | 0o700),
            "the {what} directory is accessible to group or others and may hold personal data: \
             chmod 700 it (and run with UMask=0077)"
        );
    }
}

/// A secret key's file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the {what} key file {path}: {source}")]
    Read {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the {what} key from {origin} has {len} bytes; at least {min} are required \
         (e.g. `openssl rand -hex 32`)"
    )]
    TooShort {
        what: &'static str,
        origin: String,
        len: usize,
        min: usize,
    },
}

/// A secret key's bytes (the `what` key: "signing", "sanitization"):
/// surrounding whitespace, such as a file's final newline, is not part of
/// it, and fewer than `min` bytes are an error naming `origin`.
pub fn key_bytes(
    what: &'static str,
    bytes: &[u8],
    origin: &str,
    min: usize,
) -> Result<Vec<u8>, KeyFileError> {
    let bytes = bytes.trim_ascii();
    if bytes.len() < min {
        return Err(KeyFileError::TooShort {
            what,
            origin: origin.to_owned(),
            len: bytes.len(),
            min,
        });
    }
    Ok(bytes.to_vec())
}

/// A secret key from `file` when given (with a warning when group or
/// others may read it), else from the environment variable `env_var` (read
/// through `env`); None when neither is set. See [`key_bytes`].
pub fn load_key(
    what: &'static str,
    file: Option<&Path>,
    env_var: &str,
    env: impl Fn(&str) -> Option<String>,
    min: usize,
) -> Result<Option<Vec<u8>>, KeyFileError> {
    if let Some(path) = file {
        let bytes = fs::read(path).map_err(|source| KeyFileError::Read {
            what,
            path: path.to_owned(),
            source,
        })?;
        if exposed_bits(path).is_some() {
            tracing::warn!(
                file = %path.display(),
                "the {what} key file is readable by group or others; chmod 600 it"
            );
        }
        return key_bytes(what, &bytes, &path.display().to_string(), min).map(Some);
    }
    env(env_var)
        .map(|v| key_bytes(what, v.as_bytes(), env_var, min))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn created_dirs_and_files_are_owner_only_whatever_the_umask() {
        let base = std::env::temp_dir().join(format!("sd-private-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let nested = base.join("a/b");
        create_dir_all(&nested).unwrap();
        for d in [&base, &base.join("a"), &nested] {
            let mode = fs::metadata(d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        let f = nested.join("f");
        let mut file = open_options().write(true).create(true).open(&f).unwrap();
        file.write_all(b"x").unwrap();
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(exposed_bits(&f), None);
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(exposed_bits(&f), Some(0o044));
        restrict_file(&f).unwrap();
        assert_eq!(exposed_bits(&f), None);
        fs::remove_dir_all(&base).unwrap();
    }
}
