//! The one catalog reader (`syncdata_core::catalog`) against a real
//! PostgreSQL: what every caller relies on — column order, types with and
//! without length limits, domains resolved to their base type, generated
//! columns flagged, the primary key in key order without INCLUDE columns,
//! effective collations, and "no such table" for views.

use syncdata_core::catalog;
use syncdata_core::table::TableName;
use syncdata_testkit::harness as support;

const DDL: &str = r#"
create domain blob as bytea;
create schema "Odd ""schema""";
create table "Odd ""schema""".t (
    b text collate "C",
    a varchar(5) not null default 'x',
    dropped int,
    v blob,
    n numeric(10,2),
    g int generated always as (length(a)) stored,
    primary key (b, a) include (n)
);
alter table "Odd ""schema""".t drop column dropped;
create table nokey (x int);
create table empty ();
create view a_view as select 1 as one;
"#;

#[tokio::test]
async fn describes_columns_types_keys_and_collations() {
    let db = support::fresh_database("catalog").await;
    sqlx::raw_sql(DDL).execute(&db.pool).await.expect("ddl");
    let db_collation: String = sqlx::query_scalar(
        "select datcollate::text from pg_database where datname = current_database()",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();

    let name = TableName::new("Odd \"schema\"", "t");
    let t = catalog::table(&db.pool, &name)
        .await
        .unwrap()
        .expect("table found");
    assert_eq!(t.name, name);
    let names: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["b", "a", "v", "n", "g"]);
    // Key order is the key's, not the table's; INCLUDE columns are not key.
    assert_eq!(t.primary_key, ["b", "a"]);

    let b = t.column("b").unwrap();
    assert_eq!(b.collation.as_deref(), Some("C"));
    assert_eq!((b.category, b.not_null), ('S', true));

    let a = t.column("a").unwrap();
    assert_eq!(a.sql_type, "character varying(5)");
    assert_eq!(a.unlimited_type, "character varying");
    assert_eq!((a.base_type.as_str(), a.typmod), ("varchar", 9));
    assert!(a.not_null && a.has_default && !a.generated);
    assert_eq!(a.collation.as_deref(), Some(db_collation.as_str()));

    let v = t.column("v").unwrap();
    assert_eq!(
        (v.sql_type.as_str(), v.base_type.as_str()),
        ("blob", "bytea")
    );
    assert!(v.is_bytea);
    assert_eq!(v.collation, None);

    let n = t.column("n").unwrap();
    assert_eq!((n.sql_type.as_str(), n.category), ("numeric(10,2)", 'N'));
    assert!(t.column("g").unwrap().generated);

    let nokey = catalog::table(&db.pool, &TableName::new("public", "nokey"))
        .await
        .unwrap()
        .expect("found");
    assert!(nokey.primary_key.is_empty());
    let empty = catalog::table(&db.pool, &TableName::new("public", "empty"))
        .await
        .unwrap()
        .expect("a table without columns is still a table");
    assert!(empty.columns.is_empty());
    assert_eq!(
        catalog::table(&db.pool, &TableName::new("public", "a_view"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        catalog::table(&db.pool, &TableName::new("public", "missing"))
            .await
            .unwrap(),
        None
    );

    // Every user table at once, in schema and name order; the same
    // description as one at a time.
    let mut conn = db.pool.acquire().await.unwrap();
    let all = catalog::user_tables(&mut *conn).await.unwrap();
    let listed: Vec<String> = all.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(all.iter().find(|d| d.name == name), Some(&t));
}
