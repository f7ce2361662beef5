//! Segment files: how the archiver (and `snapshot`) put change files into
//! the archive directory so that the producer, which reads files in
//! byte-wise name order and never goes back, sees each exactly once.
//!
//! Names:
//! - a segment is `<first record's commit LSN, 16 hex>-<its seq, 20 digits>.jsonl`.
//!   Versions only grow, so names sort in write order and never collide,
//!   across restarts too;
//! - a snapshot file is `<stem of the newest segment>~snapshot-<n, 8 digits>.jsonl`:
//!   it sorts after every existing segment (`~` sorts after `.`) and before
//!   every later one (a later segment differs from that stem at a position
//!   where it is greater).
//!
//! A file is written under a hidden temporary name (`.…tmp`, which the
//! producer ignores), fsynced, renamed, and the directory fsynced: a name
//! that exists is a complete file. Renames into the directory happen under
//! an advisory lock (`.syncdata-names.lock`) so that a snapshot's name and
//! a segment's name are never chosen at the same time.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use syncdata_core::version::{Lsn, Version};

const NAMES_LOCK: &str = ".syncdata-names.lock";
const ARCHIVER_LOCK: &str = ".syncdata-archiver.lock";
const SEGMENT_TMP_PREFIX: &str = ".segment-";
pub const SNAPSHOT_TMP_PREFIX: &str = ".snapshot-";
const SUFFIX: &str = ".jsonl";
/// The stem snapshot files use while no segment exists yet.
const ZERO_STEM: &str = "0000000000000000-00000000000000000000";

/// `<lsn:016X>-<seq:020>`.
pub fn stem(version: Version) -> String {
    format!("{:016X}-{:020}", version.lsn.0, version.seq)
}

/// The version a segment name starts with, if `name` is a segment name.
pub fn parse_segment_name(name: &str) -> Option<Version> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (lsn, seq) = stem.split_once('-')?;
    let hex_ok = lsn.len() == 16 && lsn.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'));
    let dec_ok = seq.len() == 20 && seq.bytes().all(|b| b.is_ascii_digit());
    if !hex_ok || !dec_ok {
        return None;
    }
    Some(Version::new(
        Lsn(u64::from_str_radix(lsn, 16).ok()?),
        seq.parse().ok()?,
    ))
}

/// The snapshot counter of a snapshot file name built on `stem`.
fn parse_snapshot_name(name: &str, stem: &str) -> Option<u64> {
    let n = name
        .strip_prefix(stem)?
        .strip_prefix("~snapshot-")?
        .strip_suffix(SUFFIX)?;
    (n.len() == 8 && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

fn names(dir: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        if let Ok(name) = entry?.file_name().into_string() {
            out.push(name);
        }
    }
    Ok(out)
}

/// The newest segment's name.
fn newest_segment(dir: &Path) -> io::Result<Option<String>> {
    Ok(names(dir)?
        .into_iter()
        .filter(|n| parse_segment_name(n).is_some())
        .max())
}

/// Fsyncs a directory, making renames in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An exclusive advisory lock held for as long as the value lives.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

fn open_lock(dir: &Path, name: &str) -> io::Result<File> {
    syncdata_core::private_fs::open_options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(name))
}

/// One archiver per archive directory: fails at once when another holds it.
pub fn lock_archiver(dir: &Path) -> anyhow::Result<DirLock> {
    let file = open_lock(dir, ARCHIVER_LOCK)?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another archiver is running on {} (it holds {ARCHIVER_LOCK})",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

/// Taken around choosing a name and renaming into it (held briefly).
fn lock_names(dir: &Path) -> io::Result<DirLock> {
    let file = open_lock(dir, NAMES_LOCK)?;
    file.lock()?;
    Ok(DirLock { _file: file })
}

/// Removes temporary segment files a killed archiver left behind (their
/// changes are still in the slot and come again).
pub fn remove_stale_segments(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for name in names(dir)? {
        if name.starts_with(SEGMENT_TMP_PREFIX) && name.ends_with(".tmp") {
            fs::remove_file(dir.join(&name))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The version fields of a record line, whatever its values.
#[derive(serde::Deserialize)]
struct Position {
    lsn: String,
    #[serde(default)]
    seq: Option<u64>,
}

struct Parsed {
    lsn: Lsn,
    seq: Option<u64>,
}

impl Position {
    fn parse(line: &[u8]) -> anyhow::Result<Parsed> {
        let p: Position = serde_json::from_slice(line)?;
        let lsn = p
            .lsn
            .parse()
            .map_err(|e| anyhow::anyhow!("invalid lsn: {e}"))?;
        Ok(Parsed { lsn, seq: p.seq })
    }
}

/// The version of the last record on disk: the last line of the newest
/// segment. None when there is no segment.
pub fn last_written(dir: &Path) -> anyhow::Result<Option<(String, Version)>> {
    let Some(name) = newest_segment(dir)? else {
        return Ok(None);
    };
    let path = dir.join(&name);
    let reader = BufReader::with_capacity(256 * 1024, File::open(&path)?);
    let mut last = None;
    for line in reader.split(b'\n') {
        let line = line?;
        if !line.iter().all(u8::is_ascii_whitespace) {
            last = Some(line);
        }
    }
    let line = last.ok_or_else(|| anyhow::anyhow!("segment {} is empty", path.display()))?;
    // Only the version is needed: a record the producer will quarantine
    // (a value it rejects) must not stop the archiver from resuming.
    let record = Position::parse(&line).map_err(|e| {
        anyhow::anyhow!(
            "the last line of segment {} is not a record ({e}); the archive was altered",
            path.display()
        )
    })?;
    let seq = record.seq.ok_or_else(|| {
        anyhow::anyhow!(
            "the last record of segment {} has no seq; the archive was altered",
            path.display()
        )
    })?;
    Ok(Some((name, Version::new(record.lsn, seq))))
}

/// A file being written under a temporary name.
pub struct PendingFile {
    dir: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    bytes: u64,
    lines: u64,
    opened: Instant,
}

impl PendingFile {
    fn create(dir: &Path, tmp_name: String) -> io::Result<PendingFile> {
        let tmp = dir.join(tmp_name);
        let file = syncdata_core::private_fs::open_options()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)?;
        Ok(PendingFile {
            dir: dir.to_owned(),
            tmp,
            out: BufWriter::with_capacity(256 * 1024, file),
            bytes: 0,
            lines: 0,
            opened: Instant::now(),
        })
    }

    /// Appends one line (the newline is added).
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        self.out.write_all(line)?;
        self.out.write_all(b"\n")?;
        self.bytes += line.len() as u64 + 1;
        self.lines += 1;
        Ok(())
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn lines(&self) -> u64 {
        self.lines
    }

    pub fn opened(&self) -> Instant {
        self.opened
    }

    /// Flushes and fsyncs the data.
    fn sync(mut self) -> io::Result<(PathBuf, PathBuf)> {
        self.out.flush()?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok((self.dir, self.tmp))
    }

    /// Removes the temporary file (a snapshot that failed).
    pub fn discard(self) {
        let tmp = self.tmp.clone();
        drop(self.out);
        let _ = fs::remove_file(tmp);
    }
}

/// The segment the archiver is filling.
pub struct Segment {
    file: PendingFile,
    name: String,
}

impl Segment {
    /// A new segment whose first record has version `first`.
    pub fn create(dir: &Path, first: Version) -> io::Result<Segment> {
        let stem = stem(first);
        Ok(Segment {
            file: PendingFile::create(dir, format!("{SEGMENT_TMP_PREFIX}{stem}.tmp"))?,
            name: format!("{stem}{SUFFIX}"),
        })
    }

    pub fn file(&mut self) -> &mut PendingFile {
        &mut self.file
    }

    pub fn bytes(&self) -> u64 {
        self.file.bytes
    }

    pub fn records(&self) -> u64 {
        self.file.lines
    }

    pub fn opened(&self) -> Instant {
        self.file.opened
    }

    /// fsync, rename into its final name (never over an existing file),
    /// fsync the directory. Only after this returns may the slot move past
    /// the segment's transactions.
    pub fn publish(self) -> io::Result<PathBuf> {
        let name = self.name;
        let (dir, tmp) = self.file.sync()?;
        let path = dir.join(&name);
        {
            let _names = lock_names(&dir)?;
            if path.exists() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "segment {} already exists; refusing to overwrite it",
                        path.display()
                    ),
                ));
            }
            fs::rename(&tmp, &path)?;
        }
        sync_dir(&dir)?;
        Ok(path)
    }
}

/// A file of snapshot rows being written.
pub struct SnapshotFile {
    file: PendingFile,
}

impl SnapshotFile {
    pub fn create(dir: &Path, tag: &str) -> io::Result<SnapshotFile> {
        Ok(SnapshotFile {
            file: PendingFile::create(
                dir,
                format!("{SNAPSHOT_TMP_PREFIX}{}-{tag}.tmp", std::process::id()),
            )?,
        })
    }

    pub fn file(&mut self) -> &mut PendingFile {
        &mut self.file
    }

    pub fn discard(self) {
        self.file.discard()
    }

    /// fsync, then, under the names lock, rename to
    /// `<newest segment stem>~snapshot-<n+1>.jsonl`, then fsync the
    /// directory. The name sorts after everything the producer may have
    /// read and before any segment the archiver writes later.
    pub fn publish(self) -> io::Result<PathBuf> {
        let (dir, tmp) = self.file.sync()?;
        let path = {
            let _names = lock_names(&dir)?;
            let all = names(&dir)?;
            let base = all
                .iter()
                .filter(|n| parse_segment_name(n).is_some())
                .max()
                .map(|n| n.strip_suffix(SUFFIX).unwrap_or(n).to_owned())
                .unwrap_or_else(|| ZERO_STEM.to_owned());
            let n = all
                .iter()
                .filter_map(|name| parse_snapshot_name(name, &base))
                .max()
                .unwrap_or(0)
                + 1;
            let path = dir.join(format!("{base}~snapshot-{n:08}{SUFFIX}"));
            fs::rename(&tmp, &path)?;
            path
        };
        sync_dir(&dir)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(lsn: u64, seq: u64) -> Version {
        Version::new(Lsn(lsn), seq)
    }

    fn write_segment(dir: &Path, versions: &[Version]) -> PathBuf {
        let mut seg = Segment::create(dir, versions[0]).unwrap();
        for ver in versions {
            let line = format!(
                r#"{{"table":"t","op":"INSERT","data":{{"id":1}},"lsn":"{}","seq":{}}}"#,
                ver.lsn, ver.seq
            );
            seg.file().write_line(line.as_bytes()).unwrap();
        }
        seg.publish().unwrap()
    }

    #[test]
    fn segment_names_sort_by_version_and_parse_back() {
        let versions = [
            v(0x16B3D50, 0),
            v(0x16B3D50, 9),
            v(0x16B3D50, 10),
            v(0x1_0000_0000, 0),
        ];
        let names: Vec<String> = versions
            .iter()
            .map(|&x| format!("{}.jsonl", stem(x)))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for (name, ver) in names.iter().zip(versions) {
            assert_eq!(parse_segment_name(name), Some(ver));
        }
        assert_eq!(parse_segment_name("changes-000001.jsonl"), None);
        assert_eq!(
            parse_segment_name(&format!("{}~snapshot-00000001.jsonl", stem(v(1, 0)))),
            None
        );
    }

    #[test]
    fn segments_are_renamed_complete_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(last_written(d).unwrap().is_none());
        let path = write_segment(d, &[v(100, 0), v(100, 1), v(200, 0)]);
        assert!(path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("0000000000000064-"));
        let (name, last) = last_written(d).unwrap().unwrap();
        assert_eq!(last, v(200, 0));
        assert_eq!(d.join(name), path);
        write_segment(d, &[v(300, 0), v(300, 1)]);
        assert_eq!(last_written(d).unwrap().unwrap().1, v(300, 1));
        // A last record the producer will quarantine (a lone surrogate
        // escape) still tells where the archive stands.
        let mut odd = Segment::create(d, v(400, 0)).unwrap();
        odd.file()
            .write_line(
                br#"{"schema":"public","table":"t","op":"INSERT","data":{"id":"\ud800"},"lsn":"0/190","seq":2}"#,
            )
            .unwrap();
        odd.publish().unwrap();
        assert_eq!(last_written(d).unwrap().unwrap().1, v(0x190, 2));
        // A second segment with the same first version is refused.
        let mut dup = Segment::create(d, v(300, 0)).unwrap();
        dup.file().write_line(b"{}").unwrap();
        let err = dup.publish().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        // Its temporary file is what a crash leaves behind.
        assert_eq!(remove_stale_segments(d).unwrap(), 1);
        assert_eq!(remove_stale_segments(d).unwrap(), 0);
    }

    #[test]
    fn snapshot_files_sort_between_existing_and_later_segments() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let publish = || {
            let mut f = SnapshotFile::create(d, "t").unwrap();
            f.file().write_line(b"x").unwrap();
            f.publish()
                .unwrap()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        let s0 = publish();
        let a = write_segment(d, &[v(0x500, 3)]);
        let s1 = publish();
        let s2 = publish();
        let b = write_segment(d, &[v(0x500, 4)]);
        let c = write_segment(d, &[v(0x600, 0)]);
        let s3 = publish();
        let name = |p: &PathBuf| p.file_name().unwrap().to_str().unwrap().to_owned();
        let order = vec![s0, name(&a), s1, s2, name(&b), name(&c), s3];
        let mut listed = crate::tail::list(d).unwrap();
        listed.retain(|n| !n.starts_with('.'));
        assert_eq!(listed, order);
        // Only segment names count as segments.
        assert_eq!(last_written(d).unwrap().unwrap().1, v(0x600, 0));
    }

    #[test]
    fn one_archiver_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_archiver(dir.path()).unwrap();
        let err = lock_archiver(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another archiver"), "{err}");
        drop(first);
        lock_archiver(dir.path()).unwrap();
    }
}
