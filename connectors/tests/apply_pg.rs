//! The PostgreSQL applier against a real server: every supported type value by value,
//! updates that keep Unchanged columns and change keys, deletes, idempotence by position,
//! atomicity of a failing batch, strict inserts and upserts, conditional (no-clobber) writes.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use duplex_connectors::postgres::{Lsn, PgApplier, connect};
use duplex_connectors::{
    Applier, ApplyError, ApplyOptions, ChangeEvent, Decimal, Op, Origin, Position, Row,
    SkippedWrite, TableName, TableRoute, Transaction, TransactionPart, Value,
};
use duplex_testkit::{PgDatabase, shared_pg};
use tokio_postgres::Client;

const SOURCE: &str = "shop";

fn source_table() -> TableName {
    TableName::new("src", "items")
}

fn target_table() -> TableName {
    TableName::new("public", "items")
}

/// Source columns; `label` is written into target column `t`.
const COLUMNS: &[&str] = &[
    "id", "b", "i2", "i4", "i8", "n", "n2", "f4", "f8", "label", "vc", "bp", "by", "d", "tm", "iv",
    "ts", "tz", "u", "j", "jb", "e", "ip",
];

fn route() -> TableRoute {
    let mut route = TableRoute::same_names(source_table(), target_table(), COLUMNS, &["id"]);
    for (source, target) in &mut route.columns {
        if source == "label" {
            *target = "t".into();
        }
    }
    route
}

fn setup() -> PgDatabase {
    let db = shared_pg().create_database();
    db.execute_as_duplex(
        "CREATE TYPE mood AS ENUM ('sad', 'happy'); \
         CREATE TABLE public.items ( \
            id int8 PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8, n numeric, \
            n2 numeric(40,10), f4 float4, f8 float8, t text, vc varchar(20), bp char(3), \
            by bytea, d date, tm time, iv interval, ts timestamp, tz timestamptz, u uuid, \
            j json, jb jsonb, e mood, ip inet, untouched text DEFAULT 'default')",
    )
    .unwrap();
    db
}

async fn applier(db: &PgDatabase, options: ApplyOptions) -> PgApplier {
    PgApplier::connect(&db.url(), None, vec![route()], options)
        .await
        .unwrap()
}

async fn reader(db: &PgDatabase) -> Client {
    let client = connect(&db.url(), None).await.unwrap();
    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    client
}

fn row(values: Vec<(&str, Value)>) -> Row {
    values.into_iter().collect()
}

fn key(id: i64) -> Row {
    row(vec![("id", Value::Int(id))])
}

fn insert(after: Row) -> ChangeEvent {
    ChangeEvent {
        table: source_table(),
        op: Op::Insert,
        key: row(vec![("id", after.get("id").unwrap().clone())]),
        before: None,
        after: Some(after),
    }
}

fn update(old_id: i64, after: Row) -> ChangeEvent {
    ChangeEvent {
        table: source_table(),
        op: Op::Update,
        key: key(old_id),
        before: Some(key(old_id)),
        after: Some(after),
    }
}

fn delete(id: i64) -> ChangeEvent {
    ChangeEvent {
        table: source_table(),
        op: Op::Delete,
        key: key(id),
        before: Some(key(id)),
        after: None,
    }
}

fn txn(lsn: u64, events: Vec<ChangeEvent>) -> Transaction {
    Transaction {
        source: SOURCE.into(),
        position: Position::Postgres(Lsn(lsn)),
        commit_time: Utc::now(),
        origin: Origin::Local,
        events,
    }
}

fn dec(s: &str) -> Value {
    Value::Decimal(Decimal::from_str(s).unwrap())
}

fn ts(s: &str) -> Value {
    Value::Timestamp(s.parse().unwrap())
}

fn tz(s: &str) -> Value {
    Value::TimestampTz(DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc))
}

fn uuid(s: &str) -> Value {
    Value::Uuid(s.parse().unwrap())
}

/// Every column of the target row as PostgreSQL prints it (bytea as hex).
async fn read_row(client: &Client, id: i64) -> Option<Vec<Option<String>>> {
    let row = client
        .query_opt(
            "SELECT b::text, i2::text, i4::text, i8::text, n::text, n2::text, f4::text, \
                    f8::text, t, vc, bp::text, encode(by, 'hex'), d::text, tm::text, iv::text, \
                    ts::text, tz::text, u::text, j::text, jb::text, e::text, ip::text, untouched \
             FROM items WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()?;
    Some((0..row.len()).map(|i| row.get(i)).collect())
}

/// Compares two rows column by column, naming the first difference (values shortened).
#[track_caller]
fn assert_row(actual: Option<Vec<Option<String>>>, expected: Option<Vec<Option<String>>>) {
    let (Some(actual), Some(expected)) = (&actual, &expected) else {
        assert_eq!(actual.is_some(), expected.is_some(), "row presence");
        return;
    };
    assert_eq!(actual.len(), expected.len());
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let short = |v: &Option<String>| v.as_ref().map(|v| v.chars().take(80).collect::<String>());
        assert!(a == e, "column {i}: {:?} != {:?}", short(a), short(e));
    }
}

fn expect(values: &[Option<&str>]) -> Option<Vec<Option<String>>> {
    Some(values.iter().map(|v| v.map(str::to_owned)).collect())
}

fn big_text() -> String {
    "0123456789abcdé🦀".repeat(1 << 16)
}

fn full_row(id: i64) -> Row {
    row(vec![
        ("id", Value::Int(id)),
        ("b", Value::Bool(true)),
        ("i2", Value::Int(i64::from(i16::MIN))),
        ("i4", Value::UInt(u64::from(i32::MAX as u32))),
        ("i8", Value::Int(i64::MIN)),
        ("n", Value::UInt(u64::MAX)),
        ("n2", dec("-123456789012345678901234567890.1234567890")),
        ("f4", Value::Float(f64::from(0.1f32))),
        ("f8", Value::Float(f64::MAX)),
        ("label", Value::Text("héllo 🦀 wörld".into())),
        ("vc", Value::Text("varchar".into())),
        ("bp", Value::Text("ab".into())),
        ("by", Value::Bytes(vec![0, 1, 0xff, 0, 0x7f])),
        (
            "d",
            Value::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()),
        ),
        ("tm", Value::Time(86_400_000_000)),
        (
            "iv",
            Value::Time(-(838 * 3600 + 59 * 60 + 59) * 1_000_000 - 999_999),
        ),
        ("ts", ts("1999-12-31T23:59:59.999999")),
        ("tz", tz("2024-06-30T23:59:59.123456+02:00")),
        ("u", uuid("00000000-0000-0000-0000-000000000000")),
        ("j", Value::Json(r#"{"b": 1, "a": [1, 2], "b": 2}"#.into())),
        ("jb", Value::Json(r#"{"k": [1, "x", null]}"#.into())),
        ("e", Value::Text("happy".into())),
        ("ip", Value::Text("192.168.0.1/24".into())),
    ])
}

fn full_row_expected() -> Option<Vec<Option<String>>> {
    expect(&[
        Some("true"),
        Some("-32768"),
        Some("2147483647"),
        Some("-9223372036854775808"),
        Some("18446744073709551615"),
        Some("-123456789012345678901234567890.1234567890"),
        Some("0.1"),
        Some("1.7976931348623157e+308"),
        Some("héllo 🦀 wörld"),
        Some("varchar"),
        Some("ab"),
        Some("0001ff007f"),
        Some("2024-02-29"),
        Some("24:00:00"),
        Some("-838:59:59.999999"),
        Some("1999-12-31 23:59:59.999999"),
        Some("2024-06-30 21:59:59.123456+00"),
        Some("00000000-0000-0000-0000-000000000000"),
        Some(r#"{"b": 1, "a": [1, 2], "b": 2}"#),
        Some(r#"{"k": [1, "x", null]}"#),
        Some("happy"),
        Some("192.168.0.1/24"),
        Some("default"),
    ])
}

fn other_row(id: i64) -> Row {
    row(vec![
        ("id", Value::Int(id)),
        ("b", Value::Bool(false)),
        ("i2", Value::Int(0)),
        ("i4", Value::Int(i64::from(i32::MIN))),
        ("i8", Value::Int(i64::MAX)),
        ("n", dec("0.000000000000000000000000000001")),
        ("n2", dec("0.0000000000")),
        ("f4", Value::Float(f64::NAN)),
        ("f8", Value::Float(f64::NEG_INFINITY)),
        ("label", Value::Text(big_text())),
        ("vc", Value::Text(String::new())),
        ("bp", Value::Text("xyz".into())),
        ("by", Value::Bytes(Vec::new())),
        ("d", Value::Date(NaiveDate::from_ymd_opt(1, 1, 1).unwrap())),
        ("tm", Value::Time(0)),
        ("iv", Value::Time(90_000_000_001)),
        ("ts", ts("2038-01-19T03:14:08")),
        ("tz", tz("1970-01-01T00:00:00.000001Z")),
        ("u", uuid("ffffffff-ffff-ffff-ffff-ffffffffffff")),
        ("j", Value::Json("[]".into())),
        ("jb", Value::Json("\"🦀\"".into())),
        ("e", Value::Text("sad".into())),
        ("ip", Value::Text("::1".into())),
    ])
}

fn other_row_expected() -> Option<Vec<Option<String>>> {
    let big = big_text();
    expect(&[
        Some("false"),
        Some("0"),
        Some("-2147483648"),
        Some("9223372036854775807"),
        Some("0.000000000000000000000000000001"),
        Some("0.0000000000"),
        Some("NaN"),
        Some("-Infinity"),
        Some(&big),
        Some(""),
        Some("xyz"),
        Some(""),
        Some("0001-01-01"),
        Some("00:00:00"),
        Some("25:00:00.000001"),
        Some("2038-01-19 03:14:08"),
        Some("1970-01-01 00:00:00.000001+00"),
        Some("ffffffff-ffff-ffff-ffff-ffffffffffff"),
        Some("[]"),
        Some("\"🦀\""),
        Some("sad"),
        Some("::1/128"),
        Some("default"),
    ])
}

fn null_row(id: i64) -> Row {
    COLUMNS
        .iter()
        .map(|c| {
            let v = if *c == "id" {
                Value::Int(id)
            } else {
                Value::Null
            };
            (*c, v)
        })
        .collect()
}

fn null_row_expected() -> Option<Vec<Option<String>>> {
    let mut nulls = vec![None; 22];
    nulls.push(Some("default"));
    expect(&nulls)
}

/// `row` with `column` set to `value`.
fn with(row: Row, column: &str, value: Value) -> Row {
    row.iter()
        .map(|(c, v)| {
            let v = if c == column {
                value.clone()
            } else {
                v.clone()
            };
            (c.to_owned(), v)
        })
        .collect()
}

async fn applied_at(client: &Client) -> String {
    client
        .query_one("SELECT applied_at::text FROM duplex.positions", &[])
        .await
        .unwrap()
        .get(0)
}

async fn count(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn pg_every_type_round_trips_value_by_value() {
    let db = setup();
    let mut applier = applier(&db, ApplyOptions::default()).await;
    let batch = [
        txn(100, vec![insert(full_row(1)), insert(other_row(2))]),
        txn(200, vec![insert(null_row(3))]),
    ];
    applier.apply(&batch).await.unwrap();
    let client = reader(&db).await;
    assert_row(read_row(&client, 1).await, full_row_expected());
    assert_row(read_row(&client, 2).await, other_row_expected());
    assert_row(read_row(&client, 3).await, null_row_expected());
    // Bit-exact floats, read back in binary.
    let row = client
        .query_one("SELECT f4, f8 FROM items WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, f32>(0).to_bits(), 0.1f32.to_bits());
    assert_eq!(row.get::<_, f64>(1).to_bits(), f64::MAX.to_bits());
    assert_eq!(
        applier.position(SOURCE).await.unwrap(),
        Some(Position::Postgres(Lsn(200)))
    );
    // The position is readable JSON text for a DBA.
    let text: String = client
        .query_one(
            "SELECT position FROM duplex.positions WHERE source = $1",
            &[&SOURCE],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(text, r#"{"Postgres":200}"#);
}

#[tokio::test]
async fn pg_many_inserts_go_through_multi_row_statements() {
    let db = setup();
    let mut applier = applier(&db, ApplyOptions::default()).await;
    let events = (1..=1000)
        .map(|id| {
            insert(row(vec![
                ("id", Value::Int(id)),
                ("i8", Value::Int(id * 3)),
                ("label", Value::Text(format!("row {id}"))),
            ]))
        })
        .collect();
    applier.apply(&[txn(10, events)]).await.unwrap();
    let client = reader(&db).await;
    let row = client
        .query_one(
            "SELECT count(*), sum(i8)::int8, count(*) FILTER (WHERE t = 'row ' || id) FROM items",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1000);
    assert_eq!(row.get::<_, i64>(1), 3 * 500_500);
    assert_eq!(row.get::<_, i64>(2), 1000);
}

#[tokio::test]
async fn pg_updates_keep_unchanged_columns_and_follow_key_changes() {
    let db = setup();
    let mut applier = applier(&db, ApplyOptions::default()).await;
    applier
        .apply(&[txn(10, vec![insert(other_row(2)), insert(full_row(5))])])
        .await
        .unwrap();
    // The big text is TOASTed at the source: the update does not carry it.
    let after = with(
        with(other_row(2), "label", Value::Unchanged),
        "i2",
        Value::Int(7),
    );
    // Then the key changes from 5 to 6, and row 2 is deleted.
    let moved = with(full_row(6), "vc", Value::Text("moved".into()));
    applier
        .apply(&[
            txn(20, vec![update(2, after)]),
            txn(30, vec![update(5, moved)]),
        ])
        .await
        .unwrap();
    let client = reader(&db).await;
    let mut expected = other_row_expected().unwrap();
    expected[1] = Some("7".into());
    assert_row(read_row(&client, 2).await, Some(expected));
    assert_row(read_row(&client, 5).await, None);
    let mut expected = full_row_expected().unwrap();
    expected[9] = Some("moved".into());
    assert_row(read_row(&client, 6).await, Some(expected));

    applier.apply(&[txn(40, vec![delete(2)])]).await.unwrap();
    assert_row(read_row(&client, 2).await, None);
    assert_eq!(count(&client).await, 1);
    assert_eq!(
        applier.position(SOURCE).await.unwrap(),
        Some(Position::Postgres(Lsn(40)))
    );
}

#[tokio::test]
async fn pg_a_batch_applied_twice_is_skipped_by_position() {
    let db = setup();
    let mut applier = applier(&db, ApplyOptions::default()).await;
    assert_eq!(applier.position(SOURCE).await.unwrap(), None);
    let batch = [
        txn(10, vec![insert(full_row(1))]),
        txn(20, vec![insert(other_row(2)), delete(1)]),
    ];
    applier.apply(&batch).await.unwrap();
    let client = reader(&db).await;
    let first = applied_at(&client).await;
    let rows = read_row(&client, 2).await;
    // Again, the same batch: nothing happens, not even a new applied_at.
    applier.apply(&batch).await.unwrap();
    assert_eq!(applied_at(&client).await, first);
    assert_row(read_row(&client, 2).await, rows);
    assert_row(read_row(&client, 1).await, None);
    assert_eq!(count(&client).await, 1);
    // A new applier (after a crash) reads the committed position and skips the replay too,
    // but applies what is new in an overlapping batch.
    let mut restarted = self::applier(&db, ApplyOptions::default()).await;
    assert_eq!(
        restarted.position(SOURCE).await.unwrap(),
        Some(Position::Postgres(Lsn(20)))
    );
    let overlapping = [
        txn(20, vec![insert(other_row(2))]),
        txn(30, vec![insert(full_row(3))]),
    ];
    restarted.apply(&overlapping).await.unwrap();
    assert_eq!(count(&client).await, 2);
    assert_row(read_row(&client, 3).await, full_row_expected());
    assert_eq!(
        restarted.position(SOURCE).await.unwrap(),
        Some(Position::Postgres(Lsn(30)))
    );
}

#[tokio::test]
async fn pg_a_failing_transaction_leaves_nothing_of_its_batch() {
    let db = setup();
    let mut applier = applier(&db, ApplyOptions::default()).await;
    applier
        .apply(&[txn(10, vec![insert(full_row(1))])])
        .await
        .unwrap();
    let client = reader(&db).await;

    // Refused before it reaches the server: int2 cannot hold 40000.
    let bad = with(other_row(4), "i2", Value::Int(40_000));
    let batch = [
        txn(20, vec![insert(other_row(2)), delete(1)]),
        txn(30, vec![insert(null_row(3))]),
        txn(40, vec![insert(bad)]),
    ];
    let err = applier.apply(&batch).await.unwrap_err();
    assert!(!err.is_transient());
    match &err {
        ApplyError::Value(refusal) => {
            assert_eq!(refusal.table, target_table());
            assert_eq!(refusal.column, "i2");
            assert_eq!(refusal.value_kind, "Int");
            assert_eq!(refusal.column_type, "smallint");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("public.items.i2"), "{err}");

    // Refused by the server: the third transaction inserts a row that exists.
    let batch = [
        txn(20, vec![insert(other_row(2)), delete(1)]),
        txn(30, vec![insert(null_row(3))]),
        txn(40, vec![insert(null_row(2))]),
    ];
    let err = applier.apply(&batch).await.unwrap_err();
    assert!(!err.is_transient());
    assert!(
        matches!(&err, ApplyError::PgWrite { op: Op::Insert, table, .. } if *table == target_table()),
        "{err:?}"
    );

    assert_row(read_row(&client, 1).await, full_row_expected());
    assert_eq!(count(&client).await, 1);
    assert_eq!(
        applier.position(SOURCE).await.unwrap(),
        Some(Position::Postgres(Lsn(10)))
    );
    // The applier is still usable: the good part applies.
    applier.apply(&batch[..2]).await.unwrap();
    assert_eq!(count(&client).await, 2);
    assert_eq!(
        applier.position(SOURCE).await.unwrap(),
        Some(Position::Postgres(Lsn(30)))
    );
}

#[tokio::test]
async fn pg_inserting_an_existing_row_fails_unless_upserting() {
    let db = setup();
    let mut strict = applier(&db, ApplyOptions::default()).await;
    strict
        .apply(&[txn(10, vec![insert(full_row(1))])])
        .await
        .unwrap();
    let err = strict
        .apply(&[txn(20, vec![insert(other_row(1))])])
        .await
        .unwrap_err();
    assert!(matches!(err, ApplyError::PgWrite { .. }), "{err:?}");

    let mut upsert = applier(
        &db,
        ApplyOptions {
            upsert: true,
            ..ApplyOptions::default()
        },
    )
    .await;
    upsert
        .apply(&[txn(20, vec![insert(other_row(1)), insert(full_row(2))])])
        .await
        .unwrap();
    let client = reader(&db).await;
    assert_row(read_row(&client, 1).await, other_row_expected());
    assert_row(read_row(&client, 2).await, full_row_expected());
}

#[tokio::test]
async fn pg_updates_and_deletes_of_missing_rows_are_errors() {
    let db = setup();
    let mut applier = applier(&db, ApplyOptions::default()).await;
    let err = applier
        .apply(&[txn(10, vec![delete(9)])])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApplyError::RowMissing { op: Op::Delete, .. }),
        "{err:?}"
    );
    let err = applier
        .apply(&[txn(10, vec![update(9, full_row(9))])])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApplyError::RowMissing { op: Op::Update, .. }),
        "{err:?}"
    );
    assert_eq!(applier.position(SOURCE).await.unwrap(), None);
}

#[tokio::test]
async fn pg_routes_are_checked_against_the_target_table() {
    let db = setup();
    let mut route = route();
    route.columns.push(("nope".into(), "nope".into()));
    let err = PgApplier::connect(&db.url(), None, vec![route], ApplyOptions::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ApplyError::Route { .. }), "{err:?}");
    assert!(err.to_string().contains("no column \"nope\""), "{err}");
    let mut route = self::route();
    route.target = TableName::new("public", "missing");
    let err = PgApplier::connect(&db.url(), None, vec![route], ApplyOptions::default())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test]
async fn pg_a_lost_connection_is_transient_and_the_applier_reconnects() {
    let db = setup();
    let mut applier = applier(&db, ApplyOptions::default()).await;
    db.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'duplex'",
    )
    .unwrap();
    let batch = [txn(10, vec![insert(full_row(1))])];
    let err = applier.apply(&batch).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    // The caller retries the whole batch.
    applier.apply(&batch).await.unwrap();
    let client = reader(&db).await;
    assert_row(read_row(&client, 1).await, full_row_expected());
    assert_eq!(
        applier.position(SOURCE).await.unwrap(),
        Some(Position::Postgres(Lsn(10)))
    );
}

#[tokio::test]
async fn pg_a_failure_inside_a_pipelined_run_is_reported_as_itself() {
    let db = setup();
    let mut applier = applier(&db, ApplyOptions::default()).await;
    applier
        .apply(&[txn(10, vec![insert(full_row(1)), insert(full_row(2))])])
        .await
        .unwrap();
    // Three updates and a delete go out together; the second is refused by the server
    // (varchar(20) overflow), the ones after it fail only because the transaction aborted.
    let too_long = with(full_row(1), "vc", Value::Text("x".repeat(21)));
    let batch = [txn(
        20,
        vec![
            update(1, with(full_row(1), "i2", Value::Int(1))),
            update(1, too_long),
            update(2, with(full_row(2), "i2", Value::Int(2))),
            delete(2),
        ],
    )];
    let err = applier.apply(&batch).await.unwrap_err();
    let ApplyError::PgWrite {
        op: Op::Update,
        source: duplex_connectors::postgres::PgError::Query { source, .. },
        ..
    } = &err
    else {
        panic!("unexpected {err:?}");
    };
    assert_eq!(
        source.code(),
        Some(&tokio_postgres::error::SqlState::STRING_DATA_RIGHT_TRUNCATION)
    );
    assert!(!err.is_transient());
    // A delete of a missing row in the middle of a run is found too.
    let batch = [txn(
        20,
        vec![
            update(1, with(full_row(1), "i2", Value::Int(1))),
            delete(7),
            delete(2),
        ],
    )];
    let err = applier.apply(&batch).await.unwrap_err();
    assert!(
        matches!(&err, ApplyError::RowMissing { op: Op::Delete, key, .. } if key.contains('7')),
        "{err:?}"
    );
    let client = reader(&db).await;
    assert_row(read_row(&client, 1).await, full_row_expected());
    assert_row(read_row(&client, 2).await, full_row_expected());
}

#[tokio::test]
async fn pg_two_appliers_racing_on_a_new_source_do_not_both_apply() {
    let db = setup();
    let mut applier = applier(&db, ApplyOptions::default()).await;
    // Another applier of the same source is mid-transaction: it has recorded its first
    // position but not committed yet, so ours sees no position either.
    let mut other = reader(&db).await;
    let other_tx = other.transaction().await.unwrap();
    other_tx
        .execute(
            "INSERT INTO duplex.positions (source, position) VALUES ($1, $2)",
            &[&SOURCE, &r#"{"Postgres":10}"#],
        )
        .await
        .unwrap();
    let ours = tokio::spawn(async move {
        let result = applier.apply(&[txn(10, vec![insert(full_row(1))])]).await;
        (applier, result)
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    other_tx.commit().await.unwrap();
    let (mut applier, result) = ours.await.unwrap();
    let err = result.unwrap_err();
    let ApplyError::Postgres(duplex_connectors::postgres::PgError::Query { source, .. }) = &err
    else {
        panic!("unexpected {err:?}");
    };
    assert_eq!(
        source.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    let client = reader(&db).await;
    assert_eq!(count(&client).await, 0, "ours rolled back");
    // Retried, ours now sees the other's position and skips the transaction.
    applier
        .apply(&[txn(10, vec![insert(full_row(1))])])
        .await
        .unwrap();
    assert_eq!(count(&client).await, 0);
}

const CONDITIONAL: ApplyOptions = ApplyOptions {
    upsert: false,
    conditional: true,
};

/// An update from `before` (the expected row, `None` for none) to `after`, key unchanged.
fn update_from(id: i64, before: Option<Row>, after: Row) -> ChangeEvent {
    ChangeEvent {
        table: source_table(),
        op: Op::Update,
        key: key(id),
        before,
        after: Some(after),
    }
}

fn delete_from(id: i64, before: Option<Row>) -> ChangeEvent {
    ChangeEvent {
        table: source_table(),
        op: Op::Delete,
        key: key(id),
        before,
        after: None,
    }
}

fn skipped(op: Op, id: i64) -> SkippedWrite {
    SkippedWrite {
        table: source_table(),
        op,
        key: key(id),
    }
}

/// `expected` with column `i` (in `read_row` order) replaced.
fn expected_with(
    expected: Option<Vec<Option<String>>>,
    i: usize,
    value: &str,
) -> Option<Vec<Option<String>>> {
    let mut expected = expected.unwrap();
    expected[i] = Some(value.into());
    Some(expected)
}

#[tokio::test]
async fn pg_conditional_insert_skips_an_existing_key_and_reports_it() {
    let db = setup();
    let mut applier = applier(&db, CONDITIONAL).await;
    applier
        .apply(&[txn(10, vec![insert(full_row(1))])])
        .await
        .unwrap();
    assert_eq!(applier.take_skipped(), []);
    let client = reader(&db).await;
    assert_row(read_row(&client, 1).await, full_row_expected());

    applier
        .apply(&[txn(20, vec![insert(other_row(1))])])
        .await
        .unwrap();
    assert_eq!(applier.take_skipped(), [skipped(Op::Insert, 1)]);
    assert_eq!(applier.take_skipped(), [], "taking clears");
    assert_row(read_row(&client, 1).await, full_row_expected());
    assert_eq!(count(&client).await, 1);
    assert_eq!(
        applier.position(SOURCE).await.unwrap(),
        Some(Position::Postgres(Lsn(20)))
    );
}

#[tokio::test]
async fn pg_conditional_update_applies_only_over_the_expected_row() {
    let db = setup();
    let mut applier = applier(&db, CONDITIONAL).await;
    applier
        .apply(&[txn(
            10,
            vec![
                insert(full_row(1)),
                insert(full_row(2)),
                insert(null_row(3)),
                insert(full_row(4)),
            ],
        )])
        .await
        .unwrap();
    let client = reader(&db).await;
    let changed = |id| with(full_row(id), "vc", Value::Text("changed".into()));

    // The whole row as expected (floats bit for bit, json by its text, jsonb, inet): applied.
    applier
        .apply(&[txn(20, vec![update_from(1, Some(full_row(1)), changed(1))])])
        .await
        .unwrap();
    assert_eq!(applier.take_skipped(), []);
    assert_row(
        read_row(&client, 1).await,
        expected_with(full_row_expected(), 9, "changed"),
    );

    // One column differs from what the target holds: skipped, the row keeps its values.
    let differing = [
        ("i4", Value::Int(5)),
        ("f8", Value::Float(f64::from_bits(f64::MAX.to_bits() - 1))),
        ("f4", Value::Float(f64::from(0.2f32))),
        ("j", Value::Json(r#"{"b": 1, "a": [1, 2]}"#.into())),
        ("j", Value::Json(r#"{"b": 1,  "a": [1, 2], "b": 2}"#.into())),
        ("jb", Value::Json(r#"{"k": [1, "x", false]}"#.into())),
        ("ip", Value::Text("192.168.0.2/24".into())),
        ("label", Value::Null),
    ];
    for (lsn, (column, value)) in (30..).zip(differing) {
        let before = with(full_row(2), column, value);
        applier
            .apply(&[txn(lsn, vec![update_from(2, Some(before), changed(2))])])
            .await
            .unwrap();
        assert_eq!(applier.take_skipped(), [skipped(Op::Update, 2)], "{column}");
        assert_row(read_row(&client, 2).await, full_row_expected());
    }

    // An expected value the column cannot hold is refused like a write of it.
    let before = with(full_row(2), "f4", Value::Float(0.1));
    let err = applier
        .apply(&[txn(90, vec![update_from(2, Some(before), changed(2))])])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApplyError::Value(r) if r.column == "f4"),
        "{err:?}"
    );
    assert_eq!(applier.take_skipped(), []);

    // NULL expected where the target holds NULL: applied.
    applier
        .apply(&[txn(
            100,
            vec![update_from(
                3,
                Some(null_row(3)),
                with(null_row(3), "i2", Value::Int(3)),
            )],
        )])
        .await
        .unwrap();
    assert_eq!(applier.take_skipped(), []);
    let mut expected = null_row_expected().unwrap();
    expected[1] = Some("3".into());
    assert_row(read_row(&client, 3).await, Some(expected));

    // jsonb compares as jsonb (its text is not kept), an Unchanged expected column is not
    // compared, and a column the route does not list is ignored.
    client
        .execute("UPDATE items SET t = 'changed locally' WHERE id = 4", &[])
        .await
        .unwrap();
    let before = with(
        with(full_row(4), "label", Value::Unchanged),
        "jb",
        Value::Json(r#"{ "k" : [1,"x",null] }"#.into()),
    );
    let mut before: Row = before.iter().map(|(c, v)| (c, v.clone())).collect();
    before.push("not_routed", Value::Int(1));
    applier
        .apply(&[txn(
            110,
            vec![update_from(
                4,
                Some(before),
                with(changed(4), "label", Value::Unchanged),
            )],
        )])
        .await
        .unwrap();
    assert_eq!(applier.take_skipped(), []);
    let expected = expected_with(full_row_expected(), 9, "changed");
    assert_row(
        read_row(&client, 4).await,
        expected_with(expected, 8, "changed locally"),
    );

    // Without a before-image the key alone decides; a missing row is skipped.
    applier
        .apply(&[txn(
            120,
            vec![
                update_from(2, None, changed(2)),
                update_from(9, None, changed(9)),
            ],
        )])
        .await
        .unwrap();
    assert_eq!(applier.take_skipped(), [skipped(Op::Update, 9)]);
    assert_row(
        read_row(&client, 2).await,
        expected_with(full_row_expected(), 9, "changed"),
    );
    assert_eq!(count(&client).await, 4);
}

#[tokio::test]
async fn pg_conditional_delete_applies_only_over_the_expected_row() {
    let db = setup();
    let mut applier = applier(&db, CONDITIONAL).await;
    applier
        .apply(&[txn(
            10,
            vec![
                insert(full_row(1)),
                insert(other_row(2)),
                insert(full_row(3)),
            ],
        )])
        .await
        .unwrap();
    let client = reader(&db).await;
    applier
        .apply(&[txn(
            20,
            vec![
                delete_from(1, Some(with(full_row(1), "f4", Value::Float(0.5)))),
                delete_from(2, Some(other_row(2))),
                delete_from(3, None),
                delete_from(7, Some(full_row(7))),
            ],
        )])
        .await
        .unwrap();
    assert_eq!(
        applier.take_skipped(),
        [skipped(Op::Delete, 1), skipped(Op::Delete, 7)]
    );
    assert_row(read_row(&client, 1).await, full_row_expected());
    assert_row(read_row(&client, 2).await, None);
    assert_row(read_row(&client, 3).await, None);
    assert_eq!(count(&client).await, 1);
}

#[tokio::test]
async fn pg_conditional_batch_applies_the_rest_and_records_the_position() {
    let db = setup();
    let mut applier = applier(&db, CONDITIONAL).await;
    applier
        .apply(&[txn(10, vec![insert(full_row(1)), insert(full_row(2))])])
        .await
        .unwrap();
    let client = reader(&db).await;
    client
        .execute("UPDATE items SET i2 = 42 WHERE id = 2", &[])
        .await
        .unwrap();
    let batch = [
        txn(
            20,
            vec![
                insert(full_row(1)),
                insert(other_row(3)),
                update_from(
                    2,
                    Some(full_row(2)),
                    with(full_row(2), "vc", Value::Text("x".into())),
                ),
            ],
        ),
        txn(
            30,
            vec![
                update_from(
                    1,
                    Some(full_row(1)),
                    with(full_row(1), "vc", Value::Text("y".into())),
                ),
                delete_from(2, Some(full_row(2))),
                insert(null_row(4)),
            ],
        ),
    ];
    applier.apply(&batch).await.unwrap();
    assert_eq!(
        applier.take_skipped(),
        [
            skipped(Op::Insert, 1),
            skipped(Op::Update, 2),
            skipped(Op::Delete, 2)
        ]
    );
    assert_row(
        read_row(&client, 1).await,
        expected_with(full_row_expected(), 9, "y"),
    );
    assert_row(
        read_row(&client, 2).await,
        expected_with(full_row_expected(), 1, "42"),
    );
    assert_row(read_row(&client, 3).await, other_row_expected());
    assert_row(read_row(&client, 4).await, null_row_expected());
    assert_eq!(
        applier.position(SOURCE).await.unwrap(),
        Some(Position::Postgres(Lsn(30)))
    );

    // Replayed: the position check skips it whole, nothing is reported.
    applier.apply(&batch).await.unwrap();
    assert_eq!(applier.take_skipped(), []);

    // A large transaction whose first part skips a write and whose end fails: rolled back,
    // and no stale skip is reported.
    let part = TransactionPart {
        source: SOURCE.into(),
        start: Position::Postgres(Lsn(35)),
        origin: Origin::Local,
        events: vec![insert(full_row(1)), insert(full_row(5))],
    };
    applier.apply_part(&part).await.unwrap();
    let too_long = with(full_row(5), "vc", Value::Text("x".repeat(21)));
    let err = applier
        .apply(&[txn(40, vec![update_from(5, None, too_long)])])
        .await
        .unwrap_err();
    assert!(matches!(err, ApplyError::PgWrite { .. }), "{err:?}");
    assert_eq!(applier.take_skipped(), []);
    assert_row(read_row(&client, 5).await, None);
    // Delivered again from its first part, it commits and reports its skip.
    applier.apply_part(&part).await.unwrap();
    applier
        .apply(&[txn(40, vec![delete_from(5, None)])])
        .await
        .unwrap();
    assert_eq!(applier.take_skipped(), [skipped(Op::Insert, 1)]);
    assert_eq!(
        applier.position(SOURCE).await.unwrap(),
        Some(Position::Postgres(Lsn(40)))
    );

    // A batch fully applied reports nothing.
    applier
        .apply(&[txn(
            50,
            vec![insert(full_row(6)), delete_from(6, Some(full_row(6)))],
        )])
        .await
        .unwrap();
    assert_eq!(applier.take_skipped(), []);
}

#[tokio::test]
async fn pg_conditional_refuses_key_changes_and_upserts() {
    let db = setup();
    let both = ApplyOptions {
        upsert: true,
        conditional: true,
    };
    let err = PgApplier::connect(&db.url(), None, vec![route()], both)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ApplyError::Options(_)), "{err:?}");

    let mut applier = applier(&db, CONDITIONAL).await;
    applier
        .apply(&[txn(10, vec![insert(full_row(1))])])
        .await
        .unwrap();
    let err = applier
        .apply(&[txn(20, vec![update(1, full_row(2))])])
        .await
        .unwrap_err();
    assert!(matches!(err, ApplyError::KeyChange { .. }), "{err:?}");
    assert!(!err.is_transient());
    // The same key given as an unsigned value is not a change.
    applier
        .apply(&[txn(
            20,
            vec![update(
                1,
                with(with(full_row(1), "id", Value::UInt(1)), "i2", Value::Int(2)),
            )],
        )])
        .await
        .unwrap();
    let client = reader(&db).await;
    assert_row(
        read_row(&client, 1).await,
        expected_with(full_row_expected(), 1, "2"),
    );
}
