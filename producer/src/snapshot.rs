//! `syncdata-producer snapshot T`: seeds a table whose history the stream
//! no longer holds (initial load of a large table, or a re-seed), while
//! writes go on.
//!
//! Version. The rows are written as INSERTs at LSN `S - 1`, where `S` is
//! `pg_current_wal_lsn()` read *before* the snapshot is taken, with no
//! `seq` (the producer then uses the line number, and the file name plus
//! line for the message id, so every row has its own `Nats-Msg-Id`).
//! Tagging low is safe when every transaction whose commit record starts
//! before `S` is visible in the snapshot: then anything the snapshot lacks
//! committed at or after `S` and is in the stream with a higher version.
//! One race remains in reading `S` first: a transaction whose commit record
//! is already written may not be visible yet (the commit is flushed before
//! it is published in the process array). So after reading `S` the snapshot
//! waits until every transaction that had an xid then has ended (an xid
//! taken after `S`, then `pg_snapshot_xmin(pg_current_snapshot())` past it),
//! as CREATE INDEX CONCURRENTLY does; a commit record before `S` belongs to
//! such a transaction.
//!
//! Delivery. Rows go into archive files, not straight to JetStream, so they
//! pass the producer's sanitization like every change, and reach the same
//! subjects with the same id scheme. Files are named to sort after every
//! existing segment and before every later one (see `archiver::segment`);
//! the slot must already exist, so the stream holds everything after `S`.
//!
//! Memory: COPY is streamed; one row and one output buffer at a time. Files
//! are closed every `source.snapshot_file_rows` rows, so publishing starts
//! while the snapshot goes on.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::BytesMut;
use futures::TryStreamExt;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use syncdata_core::config::Config;
use syncdata_core::record::{Columns, Op, Record, Value};
use syncdata_core::table::{quote_ident, TableName};
use syncdata_core::version::Lsn;
use tokio_util::sync::CancellationToken;

use crate::archiver::segment::SnapshotFile;
use crate::source::{self, SourceColumn, SourceSettings};

#[derive(Debug, Clone)]
pub struct SnapshotSettings {
    pub source: SourceSettings,
    pub table: TableName,
    pub archive_dir: PathBuf,
    pub rows_per_file: u64,
}

impl SnapshotSettings {
    pub fn from_config(
        config: &Config,
        source_url: Option<String>,
        table: &str,
    ) -> anyhow::Result<SnapshotSettings> {
        let table = TableName::parse(table)?;
        // Rows of a table the archiver does not capture would reach the
        // stream once, and never a later change: refuse instead.
        let captured = crate::source::parse_tables(&config.source.tables)?;
        if !captured.is_empty() && !captured.contains(&table) {
            let list: Vec<String> = captured.iter().map(|t| t.to_string()).collect();
            bail!(
                "{table} is not captured by the archiver (source.tables = [{}]): its later \
                 changes would never reach the stream; add it to source.tables, restart \
                 `syncdata-producer archive`, then snapshot it",
                list.join(", ")
            );
        }
        Ok(SnapshotSettings {
            source: SourceSettings::from_config(config, source_url)?,
            table,
            archive_dir: config.archive_dir()?.to_owned(),
            rows_per_file: config.source.snapshot_file_rows,
        })
    }
}

#[derive(Debug, Clone)]
pub struct SnapshotSummary {
    pub table: TableName,
    /// The LSN the rows are tagged with (`S - 1`).
    pub lsn: Lsn,
    pub rows: u64,
    pub files: Vec<PathBuf>,
    pub elapsed: Duration,
}

/// Runs the snapshot; on cancellation nothing more is written and the
/// files already renamed stay (their rows are valid, just incomplete).
pub async fn run(
    settings: SnapshotSettings,
    token: CancellationToken,
) -> anyhow::Result<SnapshotSummary> {
    let started = Instant::now();
    let mut conn = source::connect(&settings.source.url, "syncdata-snapshot").await?;
    let table = source::source_table(&mut conn, &settings.table).await?;
    source::require_slot(&mut conn, &settings.source.slot, &settings.source.plugin)
        .await
        .context("the slot must exist before a snapshot, or changes made during it are lost")?;
    syncdata_core::private_fs::create_dir_all(&settings.archive_dir).with_context(|| {
        format!(
            "cannot create archive directory {}",
            settings.archive_dir.display()
        )
    })?;

    // S first; then wait out every transaction that may have committed
    // before S without being visible yet.
    let s: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut conn)
        .await?;
    let s: Lsn = s.parse()?;
    let xid: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut conn)
        .await?;
    wait_for_older_transactions(&mut conn, &xid, &token).await?;
    if token.is_cancelled() {
        bail!("snapshot cancelled");
    }
    let lsn = Lsn(s.0.saturating_sub(1));

    let mut tx = conn
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await?;
    let select: Vec<String> = table
        .columns
        .iter()
        .map(|c| {
            let q = quote_ident(&c.name);
            // wal2json's form: hex without the \x.
            if c.is_bytea {
                format!("encode({q}, 'hex')")
            } else {
                q
            }
        })
        .collect();
    let copy = format!(
        "COPY (SELECT {} FROM {}) TO STDOUT",
        select.join(", "),
        table.name.quoted()
    );
    let total = table.estimated_rows;
    let mut progress = syncdata_core::progress::Progress::new(
        format!("snapshot {}", table.name),
        "rows",
        total.filter(|&t| t > 0).map(|t| t as u64),
    );
    let mut writer = Writer {
        settings: &settings,
        file: None,
        files: Vec::new(),
        file_seq: 0,
    };
    tracing::info!(table = %table.name, lsn = %lsn, estimated_rows = ?total, "snapshot started");
    let mut stream = (*tx).copy_out_raw(&copy).await?;
    let mut buf = BytesMut::new();
    let mut rows: u64 = 0;
    let json = RowJson::new(&table.name, &table.columns, lsn);
    let mut line_out = Vec::with_capacity(1024);
    let result: anyhow::Result<()> = async {
        loop {
            let chunk = tokio::select! {
                _ = token.cancelled() => bail!("snapshot cancelled after {rows} rows"),
                chunk = stream.try_next() => chunk.context("reading the table with COPY")?,
            };
            let Some(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let line = buf.split_to(end + 1);
                line_out.clear();
                json.write(&mut line_out, &line[..end])?;
                writer.write(&line_out)?;
                rows += 1;
                if rows.is_multiple_of(1024) {
                    progress.set(rows);
                }
            }
        }
        if !buf.is_empty() {
            bail!("COPY output ended inside a row");
        }
        Ok(())
    }
    .await;
    drop(stream);
    if let Err(err) = result {
        writer.discard();
        return Err(err);
    }
    writer.close()?;
    tx.commit().await?;
    let _ = conn.close().await;
    progress.set(rows);
    syncdata_core::errln!("{}", progress.finish());
    let summary = SnapshotSummary {
        table: table.name,
        lsn,
        rows,
        files: writer.files,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        table = %summary.table,
        rows,
        files = summary.files.len(),
        elapsed_ms = summary.elapsed.as_millis() as u64,
        "snapshot written"
    );
    Ok(summary)
}

/// Waits until no transaction with an xid before `xid` is running.
async fn wait_for_older_transactions(
    conn: &mut PgConnection,
    xid: &str,
    token: &CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut logged = Instant::now();
    loop {
        let done: bool =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot()) > $1::text::xid8")
                .bind(xid)
                .fetch_one(&mut *conn)
                .await?;
        if done {
            return Ok(());
        }
        if logged.elapsed() >= Duration::from_secs(10) {
            logged = Instant::now();
            let blockers: Vec<String> = sqlx::query_scalar(
                "SELECT format('pid %s (xid %s, %s)', pid, backend_xid, state) FROM pg_stat_activity \
                 WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() ORDER BY xact_start LIMIT 5",
            )
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
            tracing::warn!(
                waited_s = started.elapsed().as_secs(),
                blockers = ?blockers,
                "waiting for transactions older than the snapshot's LSN to end (prepared transactions count too)"
            );
        }
        tokio::select! {
            _ = token.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// Snapshot files as they fill.
struct Writer<'a> {
    settings: &'a SnapshotSettings,
    file: Option<SnapshotFile>,
    files: Vec<PathBuf>,
    file_seq: u64,
}

impl Writer<'_> {
    fn write(&mut self, line: &[u8]) -> anyhow::Result<()> {
        if self.file.is_none() {
            self.file_seq += 1;
            self.file = Some(SnapshotFile::create(
                &self.settings.archive_dir,
                &self.file_seq.to_string(),
            )?);
        }
        let file = self.file.as_mut().expect("just created");
        file.file().write_line(line)?;
        if file.file().lines() >= self.settings.rows_per_file {
            self.close()?;
        }
        Ok(())
    }

    fn close(&mut self) -> anyhow::Result<()> {
        if let Some(file) = self.file.take() {
            let path = file.publish().context("cannot write a snapshot file")?;
            tracing::debug!(file = %path.display(), "snapshot file written");
            self.files.push(path);
        }
        Ok(())
    }

    fn discard(&mut self) {
        if let Some(file) = self.file.take() {
            file.discard();
        }
    }
}

/// One COPY text row written straight as the JSON of the INSERT record
/// [`row_record`] makes, byte for byte, without building the record: the
/// columns in the record's (sorted) order, their names escaped once.
struct RowJson<'a> {
    columns: &'a [SourceColumn],
    table: String,
    /// `{"schema":…,"table":…,"op":"INSERT","data":{`
    head: Vec<u8>,
    /// Per column in name order: (its index in the COPY row, `"name":`).
    order: Vec<(usize, Vec<u8>)>,
    /// `},"lsn":"…","snapshot":true}`
    tail: Vec<u8>,
}

impl<'a> RowJson<'a> {
    fn new(table: &TableName, columns: &'a [SourceColumn], lsn: Lsn) -> RowJson<'a> {
        let quoted = |s: &str| serde_json::to_string(s).expect("a string always serializes");
        let head = format!(
            "{{\"schema\":{},\"table\":{},\"op\":\"INSERT\",\"data\":{{",
            quoted(&table.schema),
            quoted(&table.table)
        )
        .into_bytes();
        let mut order: Vec<(usize, Vec<u8>)> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (i, format!("{}:", quoted(&c.name)).into_bytes()))
            .collect();
        order.sort_by(|a, b| columns[a.0].name.cmp(&columns[b.0].name));
        let tail = format!(
            "}},\"lsn\":{},\"snapshot\":true}}",
            quoted(&lsn.to_string())
        )
        .into_bytes();
        RowJson {
            columns,
            table: table.to_string(),
            head,
            order,
            tail,
        }
    }

    fn write(&self, out: &mut Vec<u8>, line: &[u8]) -> anyhow::Result<()> {
        let mut fields: Vec<&[u8]> = Vec::with_capacity(self.columns.len());
        fields.extend(line.split(|&b| b == b'\t'));
        if fields.len() < self.columns.len() {
            bail!("COPY row of {} has fewer fields than columns", self.table);
        }
        if fields.len() > self.columns.len() {
            bail!("COPY row of {} has more fields than columns", self.table);
        }
        out.extend_from_slice(&self.head);
        for (k, (i, name)) in self.order.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            out.extend_from_slice(name);
            let col = &self.columns[*i];
            let Some(text) = copy_unescape(fields[*i])? else {
                out.extend_from_slice(b"null");
                continue;
            };
            match col.category {
                'N' if is_json_number(&text) => out.extend_from_slice(text.as_bytes()),
                'B' if text == "t" => out.extend_from_slice(b"true"),
                'B' if text == "f" => out.extend_from_slice(b"false"),
                _ => serde_json::to_writer(&mut *out, text.as_ref() as &str)?,
            }
        }
        out.extend_from_slice(&self.tail);
        Ok(())
    }
}

/// One COPY text row (without its newline) as an INSERT record.
#[cfg_attr(not(test), allow(dead_code))]
fn row_record(
    table: &TableName,
    columns: &[SourceColumn],
    line: &[u8],
    lsn: Lsn,
) -> anyhow::Result<Record> {
    let mut data = Columns::new();
    let mut fields = line.split(|&b| b == b'\t');
    for col in columns {
        let field = fields
            .next()
            .with_context(|| format!("COPY row of {table} has fewer fields than columns"))?;
        data.insert(col.name.clone(), json_value(col, field)?);
    }
    if fields.next().is_some() {
        bail!("COPY row of {table} has more fields than columns");
    }
    Ok(Record {
        schema: table.schema.clone(),
        table: table.table.clone(),
        op: Op::Insert,
        data: Some(data),
        old_keys: None,
        lsn,
        seq: None,
        ts: None,
        snapshot: true,
    })
}

/// A COPY text field as the JSON value wal2json would have written:
/// numbers bare (when they are JSON numbers; NaN and Infinity stay text,
/// which is more than wal2json keeps), booleans as true/false, everything
/// else (bytea already hex) as a string.
#[cfg_attr(not(test), allow(dead_code))]
fn json_value(col: &SourceColumn, field: &[u8]) -> anyhow::Result<Value> {
    let Some(text) = copy_unescape(field)? else {
        return Ok(Value::from_text(None));
    };
    match col.category {
        'N' if is_json_number(&text) => Ok(serde_json::from_str(&text)?),
        'B' if text == "t" => Ok(serde_json::from_str("true")?),
        'B' if text == "f" => Ok(serde_json::from_str("false")?),
        _ => Ok(Value::from_text(Some(&text))),
    }
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
pub(crate) fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    let int_start = i;
    let n = digits(&mut i);
    if n == 0 || (n > 1 && b[int_start] == b'0') {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// COPY's text format: `\N` is NULL; backslash escapes `\b \f \n \r \t \v
/// \\`, octal `\ooo` and hex `\xhh` stand for bytes.
fn copy_unescape(field: &[u8]) -> anyhow::Result<Option<Cow<'_, str>>> {
    if field == b"\\N" {
        return Ok(None);
    }
    if !field.contains(&b'\\') {
        return Ok(Some(Cow::Borrowed(
            std::str::from_utf8(field).context("COPY field is not UTF-8")?,
        )));
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' || i + 1 == field.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let e = field[i + 1];
        i += 2;
        match e {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0C),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0B),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                let mut k = 0;
                while k < 2 && i < field.len() && (b'0'..=b'7').contains(&field[i]) {
                    v = v * 8 + u32::from(field[i] - b'0');
                    i += 1;
                    k += 1;
                }
                out.push(v as u8);
            }
            b'x' if i < field.len() && field[i].is_ascii_hexdigit() => {
                let mut v = 0u32;
                let mut k = 0;
                while k < 2 && i < field.len() && field[i].is_ascii_hexdigit() {
                    v = v * 16 + (field[i] as char).to_digit(16).expect("hex digit");
                    i += 1;
                    k += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    Ok(Some(Cow::Owned(
        String::from_utf8(out).context("COPY field is not UTF-8")?,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    fn col(name: &str, category: char, is_bytea: bool) -> SourceColumn {
        SourceColumn {
            name: name.to_owned(),
            category,
            is_bytea,
        }
    }

    #[test]
    fn copy_rows_become_wal2json_shaped_inserts() {
        let columns = [
            col("id", 'N', false),
            col("n", 'N', false),
            col("f", 'N', false),
            col("flag", 'B', false),
            col("t", 'S', false),
            col("b", 'U', true),
            col("arr", 'A', false),
            col("nul", 'S', false),
        ];
        let line = b"7\t123456789012345678901234567890.123456789\tNaN\tt\ta\\tb\\\\c\\nd\tdeadbeef\t{a,\"b c\"}\t\\N";
        let r = row_record(&TableName::new("public", "x"), &columns, line, Lsn(0x10)).unwrap();
        assert_eq!(
            String::from_utf8(r.to_json()).unwrap(),
            r#"{"schema":"public","table":"x","op":"INSERT","data":{"arr":"{a,\"b c\"}","b":"deadbeef","f":"NaN","flag":true,"id":7,"n":123456789012345678901234567890.123456789,"nul":null,"t":"a\tb\\c\nd"},"lsn":"0/10","snapshot":true}"#
        );
        Record::parse(&r.to_json()).unwrap();
        let json = RowJson::new(&TableName::new("public", "x"), &columns, Lsn(0x10));
        let mut out = Vec::new();
        json.write(&mut out, line).unwrap();
        assert_eq!(out, r.to_json());
        assert!(json.write(&mut Vec::new(), b"1\t2").is_err());
        assert!(json
            .write(&mut Vec::new(), &[line.as_slice(), b"\tx"].concat())
            .is_err());
        assert!(row_record(&TableName::new("public", "x"), &columns, b"1\t2", Lsn(1)).is_err());
    }

    #[test]
    fn rows_written_directly_equal_the_records_json() {
        let columns = [
            col("zeta \"q\"", 'S', false),
            col("Älpha", 'N', false),
            col("a", 'B', false),
            col("id", 'N', false),
        ];
        let table = TableName::new("s\\x", "t\u{1}");
        let json = RowJson::new(&table, &columns, Lsn(0x1_0000_0abc));
        for line in [
            &b"\"quoted\" \\\\ \x7f \xc3\xa9 \\x41\\101\t-1.5e3\tf\t01"[..],
            b"\\N\t\\N\t\\N\t\\N",
            b"\t\tt\tInfinity",
        ] {
            let r = row_record(&table, &columns, line, Lsn(0x1_0000_0abc)).unwrap();
            let mut out = Vec::new();
            json.write(&mut out, line).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                String::from_utf8(r.to_json()).unwrap()
            );
        }
    }

    #[test]
    fn json_numbers_are_recognised_exactly() {
        for ok in ["0", "-0", "12.50", "1.5e+300", "1E5", "-3.25e-7"] {
            assert!(is_json_number(ok), "{ok}");
        }
        for bad in [
            "",
            "-",
            "01",
            "1.",
            ".5",
            "NaN",
            "Infinity",
            "-Infinity",
            "1e",
            "$1.00",
            "1 ",
        ] {
            assert!(!is_json_number(bad), "{bad}");
        }
    }

    #[test]
    fn copy_escapes_decode() {
        assert_eq!(copy_unescape(b"\\N").unwrap(), None);
        assert_eq!(copy_unescape(b"\\\\N").unwrap().as_deref(), Some("\\N"));
        assert_eq!(
            copy_unescape(b"a\\101\\x42\\r\\v").unwrap().as_deref(),
            Some("aAB\r\u{b}")
        );
    }

    #[test]
    fn buf_split_keeps_partial_rows() {
        let mut buf = BytesMut::from(&b"1\tx\n2\t"[..]);
        let end = buf.iter().position(|&b| b == b'\n').unwrap();
        let line = buf.split_to(end + 1);
        assert_eq!(&line[..end], b"1\tx");
        assert_eq!(buf.remaining(), 2);
    }
}
