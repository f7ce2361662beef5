//! The archive directory as the producer sees it: which files are change
//! files, in which order, and how one of them is read while it may still be
//! growing. Invariants: files are taken in byte-wise name order; only complete
//! lines are returned until the file is known to be finished; memory stays
//! bounded by the longest acceptable line, whatever the file holds.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Bytes read from a file at once.
const CHUNK: usize = 64 * 1024;

/// At most this much of a line is kept for the quarantine.
pub const RAW_PREFIX_MAX: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot list archive directory {path}: {source}")]
    List {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read archive file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "archive file {path} holds {len} bytes, fewer than the checkpoint's offset {offset}: \
         it was truncated or replaced; inspect it, then fix or remove the checkpoint"
    )]
    Truncated {
        path: PathBuf,
        len: u64,
        offset: u64,
    },
}

/// Names that are never change files: hidden entries (the producer's own
/// state directory among them) and files still being written under a
/// temporary name.
pub fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".partial")
}

/// The change files of `dir` in processing order (byte-wise by name).
///
/// Symbolic links are followed; anything that is not then a regular file is
/// left out. Names that are not UTF-8 cannot be checkpointed and are left out
/// with a warning.
pub fn list(dir: &Path) -> Result<Vec<String>, ArchiveError> {
    let err = |source| ArchiveError::List {
        path: dir.to_owned(),
        source,
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let Ok(name) = entry.file_name().into_string() else {
            tracing::warn!(file = ?entry.file_name(), "skipping archive file whose name is not UTF-8");
            continue;
        };
        if is_ignored_name(&name) {
            continue;
        }
        // A file deleted since read_dir, or a dangling link, is simply absent.
        if fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            names.push(name);
        }
    }
    // `str` orders byte-wise.
    names.sort_unstable();
    Ok(names)
}

/// The first change file named after `name` (or the first of all).
pub fn next_after<'a>(names: &'a [String], name: Option<&str>) -> Option<&'a str> {
    names
        .iter()
        .map(String::as_str)
        .find(|n| name.is_none_or(|after| *n > after))
}

/// One line taken from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number in its file.
    pub number: u64,
    /// Byte offset of the line's first byte.
    pub start: u64,
    /// Byte offset just after the line and its newline.
    pub end: u64,
    pub kind: LineKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineKind {
    /// The line without its newline.
    Text(Vec<u8>),
    /// A line longer than the limit. It was skipped, not held: only its
    /// first bytes are kept, for the quarantine.
    TooLong { len: u64, prefix: Vec<u8> },
}

impl Line {
    /// The line's length without the newline.
    pub fn len(&self) -> u64 {
        match &self.kind {
            LineKind::Text(bytes) => bytes.len() as u64,
            LineKind::TooLong { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Only whitespace: skipped, but counted as a line.
    pub fn is_blank(&self) -> bool {
        matches!(&self.kind, LineKind::Text(b) if b.iter().all(u8::is_ascii_whitespace))
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Line(Line),
    /// No complete line yet; the file may still grow.
    Pending,
    /// The file is finished and everything in it was returned.
    End,
}

/// The part of an over-long line seen so far.
#[derive(Debug)]
struct Skip {
    start: u64,
    len: u64,
    prefix: Vec<u8>,
}

/// Reads one archive file line by line from a position, in chunks.
///
/// Until [`Tail::finish`] is called the file may still be growing, so a last
/// line without its newline is held back. Memory: at most `max_line + 1`
/// buffered bytes, plus the quarantine prefix of an over-long line.
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    file: File,
    /// Just after the last line returned.
    offset: u64,
    /// Lines returned so far (including those before the starting position).
    line: u64,
    max_line: usize,
    finished: bool,
    /// `buf[start..]` is read from the file and not yet returned; the file's
    /// read position is `offset + (buf.len() - start)` (plus the bytes of a
    /// line being skipped).
    buf: Vec<u8>,
    start: usize,
    /// `buf[start..scanned]` is known to hold no newline.
    scanned: usize,
    skip: Option<Skip>,
}

impl Tail {
    /// Opens `path` at a checkpointed position (`offset` bytes, `line` lines
    /// consumed). Lines longer than `max_line` bytes are returned as
    /// [`LineKind::TooLong`].
    pub fn open(
        path: &Path,
        offset: u64,
        line: u64,
        max_line: usize,
    ) -> Result<Tail, ArchiveError> {
        let err = |source| ArchiveError::Read {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(err)?;
        let len = file.metadata().map_err(err)?.len();
        if len < offset {
            return Err(ArchiveError::Truncated {
                path: path.to_owned(),
                len,
                offset,
            });
        }
        file.seek(SeekFrom::Start(offset)).map_err(err)?;
        Ok(Tail {
            path: path.to_owned(),
            file,
            offset,
            line,
            max_line,
            finished: false,
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            skip: None,
        })
    }

    /// Declares the file finished (a later file exists, so nothing more will
    /// be appended): a trailing line without newline is then returned too.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Just after the last line returned.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Lines returned so far.
    pub fn lines(&self) -> u64 {
        self.line
    }

    /// The next line, or why there is none.
    pub fn next_line(&mut self) -> Result<Next, ArchiveError> {
        loop {
            if let Some(skip) = &mut self.skip {
                // Everything buffered belongs to the over-long line up to its
                // newline; it is counted, not kept.
                let pending = &self.buf[self.start..];
                if let Some(i) = memchr::memchr(b'\n', pending) {
                    skip.len += i as u64;
                    self.start += i + 1;
                    self.scanned = self.start;
                    let skip = self.skip.take().expect("checked above");
                    return Ok(Next::Line(self.take_too_long(skip, true)));
                }
                skip.len += pending.len() as u64;
                self.start = self.buf.len();
                self.scanned = self.start;
            } else {
                if let Some(i) = memchr::memchr(b'\n', &self.buf[self.scanned..]) {
                    let end = self.scanned + i;
                    let line = self.checked_line(end, true);
                    self.start = end + 1;
                    self.scanned = self.start;
                    return Ok(Next::Line(line));
                }
                self.scanned = self.buf.len();
                let pending = &self.buf[self.start..];
                if pending.len() > self.max_line {
                    self.skip = Some(Skip {
                        start: self.offset,
                        len: pending.len() as u64,
                        prefix: pending[..pending.len().min(RAW_PREFIX_MAX)].to_vec(),
                    });
                    self.start = self.buf.len();
                    self.scanned = self.start;
                }
            }
            if self.fill()? == 0 {
                if !self.finished {
                    return Ok(Next::Pending);
                }
                if let Some(skip) = self.skip.take() {
                    return Ok(Next::Line(self.take_too_long(skip, false)));
                }
                if self.start < self.buf.len() {
                    let line = self.checked_line(self.buf.len(), false);
                    self.start = self.buf.len();
                    self.scanned = self.start;
                    return Ok(Next::Line(line));
                }
                return Ok(Next::End);
            }
        }
    }

    /// The line `buf[start..end]`, as text or, when longer than the limit,
    /// as too long. The buffer bound keeps lines within the limit; this
    /// check holds the limit on its own, whatever the read alignment.
    fn checked_line(&mut self, end: usize, newline: bool) -> Line {
        let pending = &self.buf[self.start..end];
        if pending.len() > self.max_line {
            let skip = Skip {
                start: self.offset,
                len: pending.len() as u64,
                prefix: pending[..pending.len().min(RAW_PREFIX_MAX)].to_vec(),
            };
            return self.take_too_long(skip, newline);
        }
        let bytes = pending.to_vec();
        self.take_text(bytes, newline)
    }

    fn take_text(&mut self, bytes: Vec<u8>, newline: bool) -> Line {
        let start = self.offset;
        let len = bytes.len() as u64;
        self.advance(start, len, newline, LineKind::Text(bytes))
    }

    fn take_too_long(&mut self, skip: Skip, newline: bool) -> Line {
        let kind = LineKind::TooLong {
            len: skip.len,
            prefix: skip.prefix,
        };
        self.advance(skip.start, skip.len, newline, kind)
    }

    fn advance(&mut self, start: u64, len: u64, newline: bool, kind: LineKind) -> Line {
        let end = start + len + u64::from(newline);
        self.offset = end;
        self.line += 1;
        Line {
            number: self.line,
            start,
            end,
            kind,
        }
    }

    /// Reads the next chunk; 0 at the current end of the file. Never lets the
    /// unreturned part of a line grow past `max_line + 1` bytes.
    fn fill(&mut self) -> Result<usize, ArchiveError> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        // Also while a line is skipped: what follows its newline stays
        // buffered, and must fit the bound too.
        let room = (self.max_line + 1)
            .saturating_sub(self.buf.len())
            .min(CHUNK);
        debug_assert!(room > 0, "an over-long line is skipped before reading on");
        let old = self.buf.len();
        self.buf.resize(old + room, 0);
        let read = loop {
            match self.file.read(&mut self.buf[old..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let n = *read.as_ref().unwrap_or(&0);
        self.buf.truncate(old + n);
        read.map_err(|source| ArchiveError::Read {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn touch(dir: &Path, name: &str, body: &[u8]) {
        fs::write(dir.join(name), body).unwrap();
    }

    fn append(path: &Path, body: &[u8]) {
        fs::OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(body)
            .unwrap();
    }

    fn text(next: Next) -> (u64, u64, u64, String) {
        match next {
            Next::Line(Line {
                number,
                start,
                end,
                kind: LineKind::Text(b),
            }) => (number, start, end, String::from_utf8(b).unwrap()),
            other => panic!("expected a text line, got {other:?}"),
        }
    }

    #[test]
    fn lists_in_byte_order_and_ignores_what_is_not_a_change_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in [
            "b.jsonl",
            "a.jsonl",
            "B.jsonl",
            "a.jsonl.tmp",
            "c.partial",
            ".hidden",
            "é.jsonl",
            "z.jsonl",
            "10.jsonl",
            "9.jsonl",
        ] {
            touch(d, name, b"");
        }
        fs::create_dir(d.join("subdir")).unwrap();
        fs::create_dir(d.join(".syncdata")).unwrap();
        std::os::unix::fs::symlink(d.join("missing"), d.join("dangling")).unwrap();
        std::os::unix::fs::symlink(d.join("a.jsonl"), d.join("link.jsonl")).unwrap();
        let names = list(d).unwrap();
        assert_eq!(
            names,
            [
                "10.jsonl",
                "9.jsonl",
                "B.jsonl",
                "a.jsonl",
                "b.jsonl",
                "link.jsonl",
                "z.jsonl",
                "é.jsonl"
            ]
        );
        assert_eq!(next_after(&names, None), Some("10.jsonl"));
        assert_eq!(next_after(&names, Some("a.jsonl")), Some("b.jsonl"));
        assert_eq!(next_after(&names, Some("aa")), Some("b.jsonl"));
        assert_eq!(next_after(&names, Some("é.jsonl")), None);
    }

    #[test]
    fn returns_complete_lines_then_the_fragment_once_finished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        touch(dir.path(), "f", b"one\n\ntwo\nthr");
        let mut tail = Tail::open(&path, 0, 0, 1024).unwrap();
        assert_eq!(text(tail.next_line().unwrap()), (1, 0, 4, "one".into()));
        let blank = tail.next_line().unwrap();
        assert!(matches!(&blank, Next::Line(l) if l.is_blank() && l.number == 2));
        assert_eq!(text(tail.next_line().unwrap()), (3, 5, 9, "two".into()));
        assert_eq!(tail.next_line().unwrap(), Next::Pending);
        assert_eq!(tail.next_line().unwrap(), Next::Pending);
        // The writer completes the line: it is returned whole.
        append(&path, b"ee\nfo");
        assert_eq!(text(tail.next_line().unwrap()), (4, 9, 15, "three".into()));
        assert_eq!(tail.next_line().unwrap(), Next::Pending);
        assert_eq!((tail.offset(), tail.lines()), (15, 4));
        // A later file exists: the fragment is the last line.
        append(&path, b"ur");
        tail.finish();
        assert_eq!(text(tail.next_line().unwrap()), (5, 15, 19, "four".into()));
        assert_eq!(tail.next_line().unwrap(), Next::End);
        assert_eq!((tail.offset(), tail.lines()), (19, 5));
    }

    #[test]
    fn resumes_at_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        touch(dir.path(), "f", b"one\ntwo\nthree\n");
        let mut tail = Tail::open(&path, 4, 1, 1024).unwrap();
        assert_eq!(text(tail.next_line().unwrap()), (2, 4, 8, "two".into()));
        let err = Tail::open(&path, 100, 3, 1024).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Truncated { len: 14, .. }),
            "{err}"
        );
    }

    #[test]
    fn an_over_long_line_is_skipped_without_being_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let max = 1024;
        // Far larger than both the limit and a read chunk.
        let long = vec![b'x'; 3 * CHUNK + 17];
        let mut body = b"ok1\n".to_vec();
        body.extend_from_slice(&long);
        body.extend_from_slice(b"\nok2\n");
        let exactly_max = vec![b'y'; max];
        body.extend_from_slice(&exactly_max);
        body.extend_from_slice(b"\n");
        touch(dir.path(), "f", &body);
        let mut tail = Tail::open(&path, 0, 0, max).unwrap();
        assert_eq!(text(tail.next_line().unwrap()), (1, 0, 4, "ok1".into()));
        match tail.next_line().unwrap() {
            Next::Line(Line {
                number: 2,
                start: 4,
                end,
                kind: LineKind::TooLong { len, prefix },
            }) => {
                assert_eq!(len, long.len() as u64);
                assert_eq!(end, 4 + long.len() as u64 + 1);
                assert!(prefix.len() <= RAW_PREFIX_MAX && prefix.len() > max);
                assert!(prefix.iter().all(|&b| b == b'x'));
            }
            other => panic!("{other:?}"),
        }
        // The buffer never held the whole line.
        assert!(tail.buf.capacity() < long.len(), "{}", tail.buf.capacity());
        let after = 4 + long.len() as u64 + 1;
        assert_eq!(
            text(tail.next_line().unwrap()),
            (3, after, after + 4, "ok2".into())
        );
        let (n, _, _, line) = text(tail.next_line().unwrap());
        assert_eq!((n, line.len()), (4, max));
        assert_eq!(tail.next_line().unwrap(), Next::Pending);
    }

    fn too_long(next: Next) -> (u64, u64, u64, u64) {
        match next {
            Next::Line(Line {
                number,
                start,
                end,
                kind: LineKind::TooLong { len, prefix },
            }) => {
                assert!(prefix.len() as u64 <= len && prefix.len() <= RAW_PREFIX_MAX);
                (number, start, end, len)
            }
            other => panic!("expected a too-long line, got {other:?}"),
        }
    }

    /// The case of issue 21: the rest of a chunk after a skipped line held a
    /// second over-long line, returned as a record.
    #[test]
    fn every_line_after_a_skipped_one_is_held_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut body = vec![b'x'; 2000];
        body.push(b'\n');
        body.extend(vec![b'y'; 50_000]);
        body.extend_from_slice(b"\nok\n");
        touch(dir.path(), "f", &body);
        let mut tail = Tail::open(&path, 0, 0, 1024).unwrap();
        assert_eq!(too_long(tail.next_line().unwrap()), (1, 0, 2001, 2000));
        assert!(tail.buf.len() <= 1025, "{}", tail.buf.len());
        assert_eq!(
            too_long(tail.next_line().unwrap()),
            (2, 2001, 52_002, 50_000)
        );
        assert!(tail.buf.len() <= 1025, "{}", tail.buf.len());
        assert_eq!(
            text(tail.next_line().unwrap()),
            (3, 52_002, 52_005, "ok".into())
        );
        assert_eq!(tail.next_line().unwrap(), Next::Pending);

        // Its resume-from-checkpoint twin: opened just after the first line.
        let mut tail = Tail::open(&path, 2001, 1, 1024).unwrap();
        assert_eq!(
            too_long(tail.next_line().unwrap()),
            (2, 2001, 52_002, 50_000)
        );
        assert_eq!(text(tail.next_line().unwrap()).3, "ok");
    }

    /// Whatever the limit, the lengths of lines and where a read starts, every
    /// line longer than the limit is too long, every other one is text, and
    /// the buffer stays within its bound.
    #[test]
    fn the_limit_holds_whatever_the_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for _ in 0..40 {
            let max = 1 + next(3000) as usize;
            let lens: Vec<usize> = (0..30)
                .map(|_| match next(4) {
                    0 => next(max as u64 + 2) as usize,
                    1 => max + next(3) as usize,
                    2 => next(3 * CHUNK as u64) as usize,
                    _ => next(10) as usize,
                })
                .collect();
            let mut body = Vec::new();
            for (i, len) in lens.iter().enumerate() {
                body.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, *len));
                body.push(b'\n');
            }
            touch(dir.path(), "f", &body);
            let mut tail = Tail::open(&path, 0, 0, max).unwrap();
            for (i, len) in lens.iter().enumerate() {
                let next = tail.next_line().unwrap();
                assert!(
                    tail.buf.len() <= max + 1,
                    "buffer {} > {max} + 1",
                    tail.buf.len()
                );
                if *len > max {
                    assert_eq!(too_long(next).3, *len as u64, "line {i} (max {max})");
                } else {
                    assert_eq!(text(next).3.len(), *len, "line {i} (max {max})");
                }
            }
            assert_eq!(tail.next_line().unwrap(), Next::Pending);
        }
    }

    #[test]
    fn an_over_long_fragment_of_a_finished_file_is_too_long() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        touch(dir.path(), "f", &vec![b'z'; 5000]);
        let mut tail = Tail::open(&path, 0, 0, 1024).unwrap();
        assert_eq!(tail.next_line().unwrap(), Next::Pending);
        tail.finish();
        match tail.next_line().unwrap() {
            Next::Line(Line {
                number: 1,
                start: 0,
                end: 5000,
                kind: LineKind::TooLong { len: 5000, .. },
            }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(tail.next_line().unwrap(), Next::End);
    }

    #[test]
    fn an_empty_finished_file_ends_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        touch(dir.path(), "f", b"");
        let mut tail = Tail::open(&path, 0, 0, 1024).unwrap();
        assert_eq!(tail.next_line().unwrap(), Next::Pending);
        tail.finish();
        assert_eq!(tail.next_line().unwrap(), Next::End);
    }

    #[test]
    fn many_lines_across_chunk_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut body = Vec::new();
        for i in 0..20_000 {
            body.extend_from_slice(format!("line-{i}\n").as_bytes());
        }
        touch(dir.path(), "f", &body);
        let mut tail = Tail::open(&path, 0, 0, 1024).unwrap();
        for i in 0..20_000u64 {
            let (n, _, _, line) = text(tail.next_line().unwrap());
            assert_eq!((n, line), (i + 1, format!("line-{i}")));
        }
        assert_eq!(tail.next_line().unwrap(), Next::Pending);
        assert_eq!(tail.offset(), body.len() as u64);
    }
}
