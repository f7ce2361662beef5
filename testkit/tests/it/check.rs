//! `syncdata check`: the integrity of the local copy. A fixture with planted
//! orphans, duplicates and violations (of local constraints the database
//! does not enforce, and of production's constraints the local table lacks)
//! lists each exactly; a clean copy lists nothing. Real binaries against
//! the real PostgreSQL.

use syncdata_testkit::harness as support;

use std::path::Path;
use std::time::Duration;

use support::{TestDb, TestNames};

async fn syncdata(args: &[&str], config: &Path) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::from(support::command(&support::bin("syncdata")));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env("DATA_SYNC_CONFIG", config)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("syncdata finished within 60 s")
        .expect("run syncdata");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn exec(db: &TestDb, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

const SCHEMA: &str = "create table parent (id int primary key); \
     create table child (id int primary key, parent_id int references parent (id), \
                         code text, qty int, note text);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_every_planted_problem_and_nothing_in_a_clean_copy() {
    let local = support::fresh_database("check_local").await;
    let source = support::fresh_database("check_source").await;
    let names = TestNames::new("check");
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config(
        dir.path(),
        &local,
        &names,
        &support::nats_url(),
        &dir.path().join("archive"),
        "",
    );
    // Production: NOT NULL code, unique code, CHECK qty > 0.
    exec(&source, SCHEMA).await;
    exec(
        &source,
        "alter table child alter column code set not null; \
         alter table child add constraint child_code_key unique (code); \
         alter table child add constraint child_qty_positive check (qty > 0);",
    )
    .await;
    exec(&local, SCHEMA).await;
    let (code, _, err) = syncdata(&["migrate"], &config).await;
    assert_eq!(code, Some(0), "migrate: {err}");
    let (code, _, err) = syncdata(&["add-tables", "child"], &config).await;
    assert_eq!(code, Some(0), "add-tables: {err}");

    // A clean copy: every constraint holds.
    exec(
        &local,
        "insert into parent values (1), (2); \
         insert into child values (1, 1, 'a', 1, 'x'), (2, 2, 'b', 2, null), (3, null, 'c', 3, null);",
    )
    .await;
    let (code, out, err) = syncdata(&["check", "--source", &source.url], &config).await;
    assert_eq!(code, Some(0), "clean copy: {out}{err}");
    assert!(out.contains("all 1 table(s) clean"), "{out}");

    // Planted: two orphans (as replica-mode apply lets them in), a CHECK
    // added NOT VALID over a violating row, an invalid unique index over
    // duplicates (a failed CREATE UNIQUE INDEX CONCURRENTLY), and rows that
    // break production's NOT NULL, UNIQUE and CHECK.
    exec(
        &local,
        "set session_replication_role = replica; \
         insert into child values (10, 7, 'd', 4, 'n1'), (11, 8, 'e', 5, 'n2'); \
         set session_replication_role = origin; \
         insert into child values (12, 1, null, 6, 'n3'), (13, 2, 'a', -1, 'n1'); \
         alter table child add constraint child_note_short check (note <> 'n2') not valid;",
    )
    .await;
    let failed = sqlx::raw_sql("create unique index concurrently child_note_idx on child (note)")
        .execute(&local.pool)
        .await;
    assert!(failed.is_err(), "duplicates must make the index build fail");

    let (code, out, err) = syncdata(
        &["check", "--source", &source.url, "--json", "--samples", "3"],
        &config,
    )
    .await;
    assert_eq!(code, Some(1), "findings exit 1: {out}{err}");
    assert!(
        err.contains("1 of 1 table(s) have integrity findings"),
        "{err}"
    );
    let json: serde_json::Value = serde_json::from_str(&out).expect("check --json");
    assert_eq!(json["source_checked"], true);
    let findings = json["tables"][0]["findings"].as_array().expect("findings");
    let find = |kind: &str, constraint: &str| {
        findings
            .iter()
            .find(|f| f["kind"] == kind && f["constraint"] == constraint)
            .unwrap_or_else(|| panic!("no {kind} finding for {constraint} in {findings:#?}"))
    };
    let orphans = find("orphan", "child_parent_id_fkey");
    assert_eq!(orphans["rows"], 2);
    assert_eq!(
        orphans["sample_keys"],
        serde_json::json!(["id=10", "id=11"])
    );
    assert!(
        orphans["fix"]
            .as_str()
            .unwrap()
            .contains("add-tables parent"),
        "{orphans}"
    );
    let not_valid = find("check", "child_note_short");
    assert_eq!(not_valid["origin"], "local");
    assert_eq!(not_valid["rows"], 1);
    assert_eq!(not_valid["sample_keys"], serde_json::json!(["id=11"]));
    let dup_local = find("duplicate", "child_note_idx");
    assert_eq!(dup_local["origin"], "local");
    assert_eq!(dup_local["rows"], 2, "notes n1 twice: {dup_local}");
    assert_eq!(
        dup_local["sample_keys"],
        serde_json::json!(["id=10", "id=13"])
    );
    let not_null = find("not_null", "code");
    assert_eq!(not_null["origin"], "source");
    assert_eq!(not_null["sample_keys"], serde_json::json!(["id=12"]));
    let dup_source = find("duplicate", "child_code_key");
    assert_eq!(dup_source["origin"], "source");
    assert_eq!(
        dup_source["sample_keys"],
        serde_json::json!(["id=1", "id=13"])
    );
    let check_source = find("check", "child_qty_positive");
    assert_eq!(check_source["origin"], "source");
    assert_eq!(check_source["sample_keys"], serde_json::json!(["id=13"]));
    assert_eq!(
        findings.len(),
        6,
        "exactly the planted problems: {findings:#?}"
    );

    // Without a source, only the local constraints are checked.
    let (code, out, _) = syncdata(&["check", "child"], &config).await;
    assert_eq!(code, Some(1));
    assert!(
        out.contains("orphans of local child_parent_id_fkey"),
        "{out}"
    );
    assert!(!out.contains("production's"), "{out}");
}
