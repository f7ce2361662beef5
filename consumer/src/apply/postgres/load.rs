//! Rows written in bulk (snapshot rows, see `crate::apply::bulk`): `COPY`
//! into a temporary table of text columns (no WAL, one round trip for the
//! data), then one `INSERT … SELECT` casting each column, keeping rows that
//! are there already.

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
    let defs: Vec<String> = (0..n).map(|c| format!("c{c} text")).collect();
    sqlx::query(AssertSqlSafe(format!(
        "create temp table {stage} ({}) on commit drop",
        defs.join(", ")
    )))
    .execute(&mut **tx)
    .await?;
    let mut data = Vec::with_capacity(rows.len() * (n * 8 + 1));
    for (_, row) in &rows {
        encode_row(&mut data, row);
    }
    drop(rows);
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

/// One row in COPY's text format: tab-separated, `\N` for NULL, backslash,
/// tab, newline and carriage return escaped.
fn encode_row(out: &mut Vec<u8>, row: &[Option<String>]) {
    for (i, value) in row.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        match value {
            None => out.extend_from_slice(b"\\N"),
            Some(text) => {
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
        );
        assert_eq!(out, b"plain\t\\N\ta\\tb\\\\c\\nd\\re\t\\\\N\t\n".to_vec());
    }
}
