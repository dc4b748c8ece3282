//! Range digests ([`duplex_connectors::digest`]) on real servers: PostgreSQL and MariaDB holding
//! the same rows, of every type the digest covers, give the same digest; any one value changed
//! (NULL against the empty string included) changes it; and PostgreSQL's own digest, computed
//! in SQL, equals the one formed from the values its row read returns.

use std::collections::BTreeSet;

use duplex_connectors::digest::{RangeDigest, push_value};
use duplex_connectors::{
    AnySnapshot, Column, KeyRange, SiteConnection, SiteKind, SnapshotRead, TableName, Value,
    describe,
};
use duplex_testkit::{MariaDatabase, PgDatabase, shared_mariadb, shared_pg};

const PG_TABLE: &str = "CREATE TABLE t (id int8 PRIMARY KEY, i2 int2, i4 int8, n numeric(12,3), \
     b bool, tx text, vc varchar(20), u uuid, by bytea, d date, ts timestamp(6), tz timestamptz(6))";
const MARIA_TABLE: &str = "CREATE TABLE t (id BIGINT PRIMARY KEY, i2 SMALLINT, i4 INT UNSIGNED, \
     n DECIMAL(12,3), b TINYINT(1), tx LONGTEXT, vc VARCHAR(20), u UUID, `by` VARBINARY(50), d DATE, \
     ts DATETIME(6), tz TIMESTAMP(6) NULL) ENGINE=InnoDB";
const COLUMNS: &[&str] = &[
    "id", "i2", "i4", "n", "b", "tx", "vc", "u", "by", "d", "ts", "tz",
];

/// The same rows for both, one VALUES list each (PostgreSQL spells booleans and bytes its way).
fn rows(pg: bool) -> String {
    let (t, f) = if pg { ("true", "false") } else { ("1", "0") };
    let bytes = |hex: &str| {
        if pg {
            format!("'\\x{hex}'::bytea")
        } else {
            format!("X'{hex}'")
        }
    };
    [
        format!(
            "(1, -32768, 0, 10.500, {t}, 'a|b:c', 'x', '6f1c2b3a-0000-4000-8000-00000000000a', {}, \
             '2026-12-04', '2026-12-04 14:22:27.5', '2026-12-04 14:22:27.000001')",
            bytes("00ff1a")
        ),
        format!(
            "(2, 7, 4000000000, -0.001, {f}, '', '', '6f1c2b3a-0000-4000-8000-00000000000b', {}, \
             '1970-01-01', '1999-12-31 23:59:59', '2000-01-01 00:00:00')",
            bytes("")
        ),
        "(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)".to_owned(),
        format!(
            "(4, 1, 1, 123456789.123, {t}, 'zß€😀 and a ''quote''', '  blanks  ', \
             '00000000-0000-0000-0000-000000000000', {}, '2000-02-29', \
             '2026-01-02 03:04:05.123456', '2038-01-19 03:14:07.999999')",
            bytes("41")
        ),
    ]
    .join(", ")
}

fn pg_site(db: &PgDatabase) -> SiteConnection {
    site(db.name(), SiteKind::Postgres, db.url())
}

fn maria_site(db: &MariaDatabase) -> SiteConnection {
    site(db.name(), SiteKind::Mysql, db.url())
}

fn site(name: &str, kind: SiteKind, url: String) -> SiteConnection {
    SiteConnection {
        name: name.to_owned(),
        kind,
        url,
        password: None,
        slot_names_taken: Vec::new(),
    }
}

/// The table's columns as the site describes them, in [`COLUMNS`] order.
async fn columns(site: &SiteConnection, table: &TableName) -> Vec<Column> {
    let schemas = describe(site, &BTreeSet::from([table.clone()]))
        .await
        .unwrap();
    let schema = &schemas[table];
    COLUMNS
        .iter()
        .map(|name| schema.column(name).unwrap().clone())
        .collect()
}

async fn digest(site: &SiteConnection, table: &TableName, columns: &[Column]) -> RangeDigest {
    let mut reader = AnySnapshot::open(site).await.unwrap();
    assert!(reader.can_digest(columns), "{}: {columns:?}", site.name);
    let digest = reader
        .digest(table, columns, &KeyRange::whole())
        .await
        .unwrap();
    reader.close().await;
    digest
}

/// The digest formed in Rust from the values the row read returns.
async fn digest_of_rows(
    site: &SiteConnection,
    table: &TableName,
    columns: &[Column],
) -> RangeDigest {
    let mut reader = AnySnapshot::open(site).await.unwrap();
    let rows = reader
        .rows(table, columns, &KeyRange::whole())
        .await
        .unwrap();
    reader.close().await;
    let mut digest = RangeDigest::default();
    for row in rows {
        let mut text = Vec::new();
        for (i, (_, value)) in row.iter().enumerate() {
            if i > 0 {
                text.push(b'|');
            }
            assert!(push_value(&mut text, value), "{value:?}");
        }
        digest.add(&text);
    }
    digest
}

#[tokio::test]
async fn the_same_rows_give_the_same_digest_on_postgres_and_mariadb_and_any_change_shows() {
    let pg = shared_pg().create_database();
    pg.execute_as_duplex(&format!(
        "SET TimeZone = 'UTC'; {PG_TABLE}; INSERT INTO t VALUES {}",
        rows(true)
    ))
    .unwrap();
    let maria = shared_mariadb().create_database();
    maria
        .sql(&format!(
            "SET time_zone = '+00:00'; {MARIA_TABLE}; INSERT INTO t VALUES {}",
            rows(false)
        ))
        .unwrap();
    let (pg_site, maria_site) = (pg_site(&pg), maria_site(&maria));
    let pg_table = TableName::new("public", "t");
    let maria_table = TableName::new(maria.name(), "t");
    let pg_columns = columns(&pg_site, &pg_table).await;
    let maria_columns = columns(&maria_site, &maria_table).await;

    let expected = digest(&pg_site, &pg_table, &pg_columns).await;
    assert_eq!(expected.rows, 4);
    assert_eq!(
        digest_of_rows(&pg_site, &pg_table, &pg_columns).await,
        expected,
        "PostgreSQL's SQL tokens are the tokens of the values its row read returns"
    );
    assert_eq!(
        digest(&maria_site, &maria_table, &maria_columns).await,
        expected,
        "MariaDB holds the same rows"
    );

    // One value changed at a time, each kind of column: the digest differs; put back, equal.
    let changes: &[(&str, &str, &str)] = &[
        ("i2", "i2 = 8", "i2 = 7"),
        ("i4", "i4 = 4000000001", "i4 = 4000000000"),
        ("n", "n = -0.002", "n = -0.001"),
        ("b", "b = 1", "b = 0"),
        ("tx", "tx = NULL", "tx = ''"),
        ("vc", "vc = ' '", "vc = ''"),
        (
            "u",
            "u = '6f1c2b3a-0000-4000-8000-00000000000c'",
            "u = '6f1c2b3a-0000-4000-8000-00000000000b'",
        ),
        ("by", "`by` = X'00'", "`by` = X''"),
        ("d", "d = '1970-01-02'", "d = '1970-01-01'"),
        (
            "ts",
            "ts = '1999-12-31 23:59:59.000001'",
            "ts = '1999-12-31 23:59:59'",
        ),
        (
            "tz",
            "tz = '2000-01-01 00:00:01'",
            "tz = '2000-01-01 00:00:00'",
        ),
        ("id", "id = 5", "id = 2"),
    ];
    for (column, change, back) in changes {
        maria
            .sql(&format!(
                "SET time_zone = '+00:00'; UPDATE t SET {change} WHERE id = 2"
            ))
            .unwrap();
        let id = if *column == "id" { 5 } else { 2 };
        let changed = digest(&maria_site, &maria_table, &maria_columns).await;
        assert_eq!(changed.rows, 4);
        assert_ne!(changed, expected, "{column} changed: {change}");
        maria
            .sql(&format!(
                "SET time_zone = '+00:00'; UPDATE t SET {back} WHERE id = {id}"
            ))
            .unwrap();
        assert_eq!(
            digest(&maria_site, &maria_table, &maria_columns).await,
            expected,
            "{column} put back"
        );
    }

    // A missing row and an extra one.
    maria.sql("DELETE FROM t WHERE id = 3").unwrap();
    assert_ne!(
        digest(&maria_site, &maria_table, &maria_columns).await,
        expected
    );
    maria.sql("INSERT INTO t (id) VALUES (3), (6)").unwrap();
    assert_ne!(
        digest(&maria_site, &maria_table, &maria_columns).await,
        expected
    );
    maria.sql("DELETE FROM t WHERE id = 6").unwrap();
    assert_eq!(
        digest(&maria_site, &maria_table, &maria_columns).await,
        expected
    );

    // A range is the rows in it.
    let range = KeyRange {
        columns: vec![pg_columns[0].clone()],
        lo: Some(vec![Value::Int(1)]),
        hi: Some(vec![Value::Int(3)]),
    };
    let mut reader = AnySnapshot::open(&pg_site).await.unwrap();
    let part = reader.digest(&pg_table, &pg_columns, &range).await.unwrap();
    reader.close().await;
    assert_eq!(part.rows, 2);
    let mut reader = AnySnapshot::open(&maria_site).await.unwrap();
    let range = KeyRange {
        columns: vec![maria_columns[0].clone()],
        ..range
    };
    assert_eq!(
        reader
            .digest(&maria_table, &maria_columns, &range)
            .await
            .unwrap(),
        part
    );
    reader.close().await;
}

#[tokio::test]
async fn types_the_digest_does_not_cover_are_said_so() {
    let pg = shared_pg().create_database();
    pg.execute_as_duplex("CREATE TABLE f (id int8 PRIMARY KEY, x float8, c char(3), j jsonb)")
        .unwrap();
    let site = pg_site(&pg);
    let table = TableName::new("public", "f");
    let schemas = describe(&site, &BTreeSet::from([table.clone()]))
        .await
        .unwrap();
    let schema = &schemas[&table];
    let reader = AnySnapshot::open(&site).await.unwrap();
    let id = schema.column("id").unwrap().clone();
    assert!(reader.can_digest(std::slice::from_ref(&id)));
    for name in ["x", "c", "j"] {
        let column = schema.column(name).unwrap().clone();
        assert!(!reader.can_digest(&[id.clone(), column]), "{name}");
    }
    reader.close().await;
}
