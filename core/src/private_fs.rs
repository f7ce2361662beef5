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
