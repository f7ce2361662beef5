//! `syncdata report`: its figures are the counts syncdata keeps for the
//! period (`data_sync_logs`, `data_sync_metrics`, parked rows, the
//! dead-letter stream) and match a workload whose outcome is known; the HTML
//! form is one well-formed page whose charts hold the applied records.
//! Real binaries, real servers.

use syncdata_testkit::harness as support;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::{json, Value};
use support::{Proc, TestNames};
use syncdata_core::nats;
use syncdata_core::subject::table_subject;

fn lsn(n: u64) -> String {
    format!("{:X}/{:X}", n >> 32, n & 0xffff_ffff)
}

fn record(op: &str, id: u64, version: u64, data: Value) -> Vec<u8> {
    let mut r = json!({
        "schema": "public", "table": "r", "op": op, "lsn": lsn(version), "seq": 0,
        "ts": "2026-12-01T10:00:00Z",
    });
    match op {
        "DELETE" => r["old_keys"] = json!({ "id": id }),
        _ => r["data"] = data,
    }
    serde_json::to_vec(&r).unwrap()
}

/// Tags must nest: every opened element closes, in order (void elements
/// and `<!DOCTYPE>` aside). Returns the first problem.
pub(crate) fn well_formed(html: &str) -> Result<(), String> {
    const VOID: [&str; 2] = ["meta", "br"];
    let mut stack: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let end = rest.find('>').ok_or("an unclosed '<'")?;
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        if tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            match stack.pop() {
                Some(open) if open == name => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
            continue;
        }
        let name: String = tag
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        if !tag.ends_with('/') && !VOID.contains(&name.as_str()) {
            stack.push(name);
        }
    }
    if stack.is_empty() {
        Ok(())
    } else {
        Err(format!("left open: {stack:?}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_figures_equal_the_kept_counts_and_the_workload_and_the_html_renders() {
    let db = support::fresh_database("report").await;
    sqlx::raw_sql("CREATE TABLE r (id bigint PRIMARY KEY, v text, w text)")
        .execute(&db.pool)
        .await
        .unwrap();
    let names = TestNames::new("report");
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config(
        dir.path(),
        &db,
        &names,
        &support::nats_url(),
        dir.path(),
        "[consumer]\nfetch_wait_ms = 100\n",
    );
    let cli = |args: &'static [&'static str]| {
        let config = config.clone();
        async move {
            let out = support::run_cli("syncdata", &config, args, &[]).await;
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (out.status.code(), text(&out.stdout), text(&out.stderr))
        }
    };
    let (code, _, err) = cli(&["add-tables", "r"]).await;
    assert_eq!(code, Some(0), "{err}");

    // The workload: 10 inserts; 3 full-row updates; 2 deletes of present
    // rows and 1 of a row never seen; a partial update of a key never
    // inserted (parked); an unsigned record (dead-lettered); then, once
    // those are applied, a stale insert (older than the row's insert:
    // superseded; in the same batch it would apply first and be overtaken).
    let mut signed = Vec::new();
    for id in 1..=10u64 {
        signed.push(record(
            "INSERT",
            id,
            100 + id,
            json!({"id": id, "v": "a", "w": "a"}),
        ));
    }
    for id in 1..=3u64 {
        signed.push(record(
            "UPDATE",
            id,
            200 + id,
            json!({"id": id, "v": "b", "w": "b"}),
        ));
    }
    signed.push(record("DELETE", 4, 300, Value::Null));
    signed.push(record("DELETE", 5, 301, Value::Null));
    signed.push(record("DELETE", 99, 302, Value::Null));
    signed.push(record("UPDATE", 500, 400, json!({"id": 500, "v": "p"})));
    let unsigned = record("INSERT", 11, 500, json!({"id": 11, "v": "x", "w": "x"}));

    let js = jetstream::new(support::nats_connect(&support::nats_url()).await);
    let nats_cfg = syncdata_core::config::NatsConfig {
        url: support::nats_url(),
        stream: names.stream.clone(),
        subject_prefix: names.subject_prefix.clone(),
        dlq_stream: names.dlq_stream.clone(),
        dlq_subject_prefix: names.dlq_subject_prefix.clone(),
        ..Default::default()
    };
    nats::ensure_stream(&js, nats::change_stream_config(&nats_cfg))
        .await
        .unwrap();
    let subject = table_subject(&names.subject_prefix, "public", "r");
    // Published one by one and in order, so batch boundaries cannot change
    // which record supersedes which.
    for p in signed {
        support::publish_signed(&js, subject.clone(), p)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    js.publish(subject.clone(), unsigned.into())
        .await
        .unwrap()
        .await
        .unwrap();

    let mut daemon = Proc::spawn(
        "syncdata",
        &["start"],
        &config,
        &[("RUST_LOG", "info")],
        dir.path(),
    );
    // Wait until every record was applied or dead-lettered: 8 rows (10 - 2
    // deleted), one FAILED row.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (rows, failed): (i64, i64) = sqlx::query_as(
            "select (select count(*) from r), \
                    (select count(*) from data_sync_logs where status = 'FAILED')",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let logged: i64 = sqlx::query_scalar(
            "select coalesce(sum(rows_synced + superseded), 0)::int8 from data_sync_logs \
             where status = 'SUCCESS'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if rows == 8 && failed == 1 && logged == 17 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rows {rows}, failed {failed}, logged {logged}:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    support::publish_signed(
        &js,
        subject.clone(),
        record("INSERT", 7, 50, json!({"id": 7, "v": "old", "w": "old"})),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let superseded: i64 =
            sqlx::query_scalar("select coalesce(sum(superseded), 0)::int8 from data_sync_logs")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        if superseded == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "superseded {superseded}:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A clean stop writes the period's data_sync_metrics.
    daemon.sigterm();
    let status = daemon.wait_exit(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "{}", daemon.log());

    let (code, out, err) = cli(&["report", "--since", "1h", "--json"]).await;
    assert_eq!(code, Some(0), "{err}");
    let rep: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(rep["window_seconds"], 3600);
    let t = &rep["tables"][0];
    assert_eq!(t["table"], "r", "{rep:#}");

    // The workload's outcome.
    assert_eq!(t["inserted"], 10, "{rep:#}");
    assert_eq!(t["updated"], 4, "3 full-row, 1 partial (parked): {rep:#}");
    assert_eq!(t["deleted"], 3, "{rep:#}");
    assert_eq!(t["deletes_of_missing"], 1, "{rep:#}");
    assert_eq!(t["superseded"], 1, "the stale insert: {rep:#}");
    assert_eq!(t["parked"], 1, "{rep:#}");
    assert_eq!(t["parked_now"], 1, "{rep:#}");
    assert_eq!(t["failed"], 1, "{rep:#}");
    assert_eq!(t["dead_letters_waiting"], 1, "{rep:#}");
    assert!(t["lag_seconds"]["max"].as_f64().unwrap() > 0.0, "{rep:#}");
    assert_eq!(t["freshest_source_commit_at"], "2026-12-01T10:00:00Z");

    // Equal to the kept counts for the same period.
    let (batches, applied, ins, upd, del, sup, parked, missing, failed): (
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(
        "select count(*) filter (where status = 'SUCCESS'), \
                coalesce(sum(rows_synced) filter (where status = 'SUCCESS'), 0)::int8, \
                sum(inserted)::int8, sum(updated)::int8, sum(deleted)::int8, \
                sum(superseded)::int8, sum(parked)::int8, sum(deletes_of_missing)::int8, \
                count(*) filter (where status = 'FAILED') \
         from data_sync_logs where table_name = 'r' and sync_time > now() - interval '1 hour'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    for (field, kept) in [
        ("batches", batches),
        ("applied", applied),
        ("inserted", ins),
        ("updated", upd),
        ("deleted", del),
        ("superseded", sup),
        ("parked", parked),
        ("deletes_of_missing", missing),
        ("failed", failed),
    ] {
        assert_eq!(t[field], kept, "{field} vs data_sync_logs: {rep:#}");
    }
    let (added, updated, deleted): (i64, i64, i64) = sqlx::query_as(
        "select sum(records_added)::int8, sum(records_updated)::int8, sum(records_deleted)::int8 \
         from data_sync_metrics where table_name = 'r' and period_type = 'FREQ'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        t["metrics"],
        json!({"records_added": added, "records_updated": updated, "records_deleted": deleted}),
        "{rep:#}"
    );
    assert_eq!(added, 10, "the roll-up agrees with the log");
    let over_time: i64 = t["applied_over_time"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(over_time, applied, "{rep:#}");

    // Row drift against a "source" with two more rows than here.
    let src = support::fresh_database("report_src").await;
    sqlx::raw_sql(
        "CREATE TABLE r (id bigint PRIMARY KEY, v text, w text); \
         INSERT INTO r SELECT g, 'a', 'a' FROM generate_series(1, 10) g",
    )
    .execute(&src.pool)
    .await
    .unwrap();
    let out = support::run_cli(
        "syncdata",
        &config,
        &["report", "--since", "1h", "--json", "--source", &src.url],
        &[],
    )
    .await;
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["tables"][0]["row_drift"], 2, "{rep:#}");

    // The HTML page: well-formed, one chart per table holding the applied
    // records, the figures in it, the table name escaped.
    let (code, page, err) = cli(&["report", "--since", "1h", "--html"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    well_formed(&page).unwrap_or_else(|e| panic!("{e}:\n{page}"));
    assert!(
        !page.contains("<script") && !page.contains("src="),
        "self-contained"
    );
    assert_eq!(page.matches("<svg ").count(), 1, "{page}");
    let bars: i64 = page
        .split("data-value=\"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].parse::<i64>().unwrap())
        .sum();
    assert_eq!(
        bars, applied,
        "the chart's bars add up to the applied records"
    );
    assert!(page.contains("<h2>r</h2>"), "{page}");

    // Bad input: a clear error, exit 1.
    let (code, _, err) = cli(&["report", "--since", "3 fortnights"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--since"), "{err}");
    let (code, _, err) = cli(&["report", "--json", "--html"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("exclude each other"), "{err}");
}
