//! The archive tail: whatever the file holds, the limit and the order in
//! which it is written and read, every line longer than the limit is
//! returned as too long, every other line as its exact text, positions are
//! exact, and resuming at any returned position gives the same lines.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use syncdata_producer::tail::{LineKind, Next, Tail};

/// One expected line: its bytes, start offset and whether it ended with a newline.
fn model(body: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < body.len() {
        match body[start..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                out.push((start, start + i, true));
                start += i + 1;
            }
            None => {
                out.push((start, body.len(), false));
                start = body.len();
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    // Limit 1..=4096; the body is repeated to reach past read chunks.
    let max = 1 + (usize::from(u16::from_le_bytes([data[0], data[1]])) % 4096);
    let repeat = 1 + usize::from(data[2] % 16);
    let cut = usize::from(data[3]);
    let mut body = Vec::new();
    for _ in 0..repeat {
        body.extend_from_slice(&data[4..]);
    }
    let expected = model(&body);
    // In memory where there is a tmpfs: the target is bound by file I/O.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("temp dir");
    let path = dir.path().join("f");
    // Written in two steps: the tail sees a growing file.
    let split = if body.is_empty() {
        0
    } else {
        (cut * 997) % (body.len() + 1)
    };
    let mut file = std::fs::File::create(&path).expect("create");
    file.write_all(&body[..split]).expect("write");
    let mut tail = Tail::open(&path, 0, 0, max).expect("open");
    let mut got = Vec::new();
    let mut written = false;
    loop {
        match tail.next_line().expect("read") {
            Next::Line(line) => got.push(line),
            Next::Pending if !written => {
                file.write_all(&body[split..]).expect("write");
                written = true;
            }
            Next::Pending => tail.finish(),
            Next::End => break,
        }
    }
    assert_eq!(got.len(), expected.len());
    for (i, (line, &(start, end, newline))) in got.iter().zip(&expected).enumerate() {
        assert_eq!(line.number, i as u64 + 1);
        assert_eq!(line.start, start as u64);
        assert_eq!(line.end, (end + usize::from(newline)) as u64);
        let len = end - start;
        match &line.kind {
            LineKind::Text(bytes) => {
                assert!(len <= max, "a line of {len} bytes passed a limit of {max}");
                assert_eq!(&bytes[..], &body[start..end]);
            }
            LineKind::TooLong { len: l, prefix } => {
                assert!(len > max, "a line of {len} bytes is within {max}");
                assert_eq!(*l, len as u64);
                assert!(body[start..end].starts_with(prefix));
            }
        }
    }
    // Resume from a checkpoint after some line: the same lines follow.
    if let Some(at) = got.get(cut % got.len().max(1)) {
        let mut again = Tail::open(&path, at.end, at.number, max).expect("reopen");
        again.finish();
        let mut rest = Vec::new();
        while let Next::Line(line) = again.next_line().expect("read") {
            rest.push(line);
        }
        assert_eq!(&rest[..], &got[at.number as usize..]);
    }
});
