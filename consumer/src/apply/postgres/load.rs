//! Rows written in bulk (snapshot rows, see `crate::apply::bulk`): one
//! `COPY` straight into the target table, inside a savepoint. That is the
//! usual case: after the snapshot's barrier a key without bookkeeping has
//! no row in the table unless an earlier delivery of the same snapshot
//! rows put it there. Then the COPY fails (unique violation), is rolled
//! back to the savepoint, and the rows go the careful way: `COPY` into a
//! temporary table of text columns (no WAL), then one `INSERT … SELECT`
//! casting each column, keeping rows that are there already. Any other
//! failure of the COPY takes the careful way too, so the error reported is
//! the one the careful way gives.

use sqlx::{AssertSqlSafe, Postgres, Transaction};

use crate::apply::merge::KeyId;
use crate::apply::shape::TableShape;

type Tx = Transaction<'static, Postgres>;

/// Writes `rows` (every column's text, None for NULL) into the target
/// table; `stage` names the transaction's temporary table (dropped at
/// commit).
pub(super) async fn load_rows(
    tx: &mut Tx,
    shape: &TableShape,
    stage: &str,
    rows: Vec<(KeyId, Vec<Option<String>>)>,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let n = shape.columns.len();
    let bytea: Vec<bool> = shape.columns.iter().map(|c| c.is_bytea).collect();
    let mut data = Vec::with_capacity(rows.len() * (n * 8 + 1));
    for (_, row) in &rows {
        encode_row(&mut data, row, &bytea);
    }
    drop(rows);
    if copy_into_table(tx, shape, &data).await? {
        return Ok(());
    }
    let defs: Vec<String> = (0..n).map(|c| format!("c{c} text")).collect();
    sqlx::query(AssertSqlSafe(format!(
        "create temp table {stage} ({}) on commit drop",
        defs.join(", ")
    )))
    .execute(&mut **tx)
    .await?;
    let mut copy = (**tx)
        .copy_in_raw(&format!("copy {stage} from stdin"))
        .await?;
    if let Err(e) = copy.send(data).await {
        let _ = copy.abort("sending the rows failed").await;
        return Err(e);
    }
    copy.finish().await?;
    let cols: Vec<String> = (0..n).map(|c| shape.quoted_column(c)).collect();
    let casts: Vec<String> = (0..n).map(|c| shape.cast(c, &format!("s.c{c}"))).collect();
    let key_cols: Vec<String> = shape.key.iter().map(|&c| shape.quoted_column(c)).collect();
    sqlx::query(AssertSqlSafe(format!(
        "insert into {} ({}) overriding system value select {} from {stage} s \
         on conflict ({}) do nothing",
        shape.name.quoted(),
        cols.join(", "),
        casts.join(", "),
        key_cols.join(", "),
    )))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// `COPY` of `data` (rows in COPY's text format) straight into the table,
/// in a savepoint. False (and rolled back to the savepoint) when it failed
/// for a reason the caller's careful way handles or reports.
async fn copy_into_table(
    tx: &mut Tx,
    shape: &TableShape,
    data: &[u8],
) -> Result<bool, sqlx::Error> {
    let cols: Vec<String> = (0..shape.columns.len())
        .map(|c| shape.quoted_column(c))
        .collect();
    sqlx::query("savepoint syncdata_load")
        .execute(&mut **tx)
        .await?;
    let result = async {
        let mut copy = (**tx)
            .copy_in_raw(&format!(
                "copy {} ({}) from stdin",
                shape.name.quoted(),
                cols.join(", ")
            ))
            .await?;
        if let Err(e) = copy.send(data).await {
            let _ = copy.abort("sending the rows failed").await;
            return Err(e);
        }
        copy.finish().await
    }
    .await;
    match result {
        Ok(_) => {
            sqlx::query("release savepoint syncdata_load")
                .execute(&mut **tx)
                .await?;
            Ok(true)
        }
        Err(sqlx::Error::Database(e)) => {
            tracing::debug!(table = %shape.name, error = %e, "snapshot rows: COPY into the table failed, loading through a staging table");
            sqlx::query("rollback to savepoint syncdata_load")
                .execute(&mut **tx)
                .await?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// One row in COPY's text format: tab-separated, `\N` for NULL, backslash,
/// tab, newline and carriage return escaped. A bytea value in wal2json's
/// form (bare hex) gets PostgreSQL's `\x` prefix, so that COPY into a bytea
/// column reads it (the staging table's cast reads both forms).
fn encode_row(out: &mut Vec<u8>, row: &[Option<String>], bytea: &[bool]) {
    for (i, value) in row.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        match value {
            None => out.extend_from_slice(b"\\N"),
            Some(text) => {
                if bytea.get(i).copied().unwrap_or(false) && !text.starts_with("\\x") {
                    out.extend_from_slice(b"\\\\x");
                }
                let bytes = text.as_bytes();
                if !bytes
                    .iter()
                    .any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r'))
                {
                    out.extend_from_slice(bytes);
                    continue;
                }
                for &b in bytes {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        _ => out.push(b),
                    }
                }
            }
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::encode_row;

    #[test]
    fn copy_text_escapes_what_it_must() {
        let mut out = Vec::new();
        encode_row(
            &mut out,
            &[
                Some("plain".into()),
                None,
                Some("a\tb\\c\nd\re".into()),
                Some("\\N".into()),
                Some(String::new()),
            ],
            &[false; 5],
        );
        assert_eq!(out, b"plain\t\\N\ta\\tb\\\\c\\nd\\re\t\\\\N\t\n".to_vec());
    }

    #[test]
    fn bytea_gets_the_prefix_copy_reads() {
        let mut out = Vec::new();
        encode_row(
            &mut out,
            &[
                Some("deadbeef".into()),
                Some("\\x00ff".into()),
                None,
                Some("cafe".into()),
            ],
            &[true, true, true, false],
        );
        assert_eq!(out, b"\\\\xdeadbeef\t\\\\x00ff\t\\N\tcafe\n".to_vec());
    }
}
