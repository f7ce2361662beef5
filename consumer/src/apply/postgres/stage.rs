//! Staging tables for large writes: the rows go to the server in one
//! binary `COPY` into a temporary table, and one set-based statement merges
//! them from there (`INSERT … SELECT … ON CONFLICT`, `UPDATE … FROM`). The
//! alternative, one array parameter per column for `unnest`, is the
//! default: measured, the merge statements cost the same either way and
//! the `COPY` is extra work (see [`super::COPY_FROM`] and docs/benchmarks.md,
//! "Apply path: COPY vs unnest"). This path stays for
//! [`super::PgTarget::with_copy_from`] and the benchmark that compares them.
//!
//! A staging table is made once per connection (`ON COMMIT DELETE ROWS`:
//! emptied at every commit, gone with a rollback of the transaction that
//! made it) and emptied before each use, so a transaction may stage several
//! times. It lives in `pg_temp`, always named with that schema, so no table
//! of the database can shadow it.

use sqlx::{AssertSqlSafe, Postgres, Transaction};

type Tx = Transaction<'static, Postgres>;

/// The binary `COPY` payload of a staging table's rows.
pub(super) struct CopyRows {
    buf: Vec<u8>,
}

impl CopyRows {
    /// An empty payload; `capacity` in bytes.
    pub(super) fn with_capacity(capacity: usize) -> CopyRows {
        let mut buf = Vec::with_capacity(capacity + 21);
        // Signature, flags (no OIDs), header extension length.
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes());
        buf.extend_from_slice(&0i32.to_be_bytes());
        CopyRows { buf }
    }

    /// Starts a row of `fields` fields.
    pub(super) fn row(&mut self, fields: usize) {
        let fields = i16::try_from(fields).expect("a staging table has fewer than 32768 columns");
        self.buf.extend_from_slice(&fields.to_be_bytes());
    }

    /// A text field (None: NULL).
    pub(super) fn text(&mut self, value: Option<&str>) {
        match value {
            None => self.buf.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(text) => {
                // A value of 1 GB or more is refused by the server anyway.
                let len = i32::try_from(text.len()).unwrap_or(i32::MAX);
                self.buf.extend_from_slice(&len.to_be_bytes());
                self.buf.extend_from_slice(text.as_bytes());
            }
        }
    }

    /// An int8 field (None: NULL).
    pub(super) fn int8(&mut self, value: Option<i64>) {
        match value {
            None => self.buf.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                self.buf.extend_from_slice(&8i32.to_be_bytes());
                self.buf.extend_from_slice(&v.to_be_bytes());
            }
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

/// Makes the staging table `pg_temp.<name>` (column definitions `defs`)
/// if this connection has none, empties it, and copies `rows` into it.
/// `name` and `defs` are built by this module's callers from constants and
/// numbers only.
pub(super) async fn load(
    tx: &mut Tx,
    name: &str,
    defs: &str,
    rows: CopyRows,
) -> Result<(), sqlx::Error> {
    // One round trip; a DO block, not CREATE … IF NOT EXISTS, whose notice
    // the client would log at every use.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "do $$ begin \
           if to_regclass('pg_temp.{name}') is null then \
             create temp table {name} ({defs}) on commit delete rows; \
           else \
             delete from pg_temp.{name}; \
           end if; \
         end $$"
    )))
    .execute(&mut **tx)
    .await?;
    let mut copy = (**tx)
        .copy_in_raw(&format!(
            "copy pg_temp.{name} from stdin with (format binary)"
        ))
        .await?;
    if let Err(e) = copy.send(rows.finish()).await {
        let _ = copy.abort("sending the rows failed").await;
        return Err(e);
    }
    copy.finish().await?;
    Ok(())
}

/// The staging table of whole rows of `n` columns: `i` (the row's place,
/// from 1) and the text of each column, `c0 … c{n-1}`.
pub(super) fn rows_table(n: usize) -> (String, String) {
    let mut defs = vec!["i int8".to_owned()];
    defs.extend((0..n).map(|c| format!("c{c} text")));
    (format!("syncdata_stage_rows_{n}"), defs.join(", "))
}

#[cfg(test)]
mod tests {
    use super::CopyRows;

    #[test]
    fn binary_copy_layout() {
        let mut rows = CopyRows::with_capacity(0);
        rows.row(3);
        rows.int8(Some(1));
        rows.text(Some("a\tb"));
        rows.text(None);
        let out = rows.finish();
        let mut want = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        want.extend_from_slice(&[0, 3]);
        want.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[0, 0, 0, 3, b'a', b'\t', b'b']);
        want.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        want.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(out, want);
    }
}
