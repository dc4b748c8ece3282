//! The PostgreSQL applier against a real server, for what only PostgreSQL has: every one of
//! its types value by value (bool, unconstrained numeric, float4/float8 NaN and infinities,
//! bytea, char(n), time 24:00:00, interval, enums, inet, json with duplicate keys, jsonb) and
//! how a conditional write compares them, and the position as readable JSON text. Everything
//! every kind must do is in the conformance suite (`apply_conformance`).

mod events;

use chrono::{DateTime, NaiveDate, Utc};
use duplex_connectors::postgres::{Lsn, PgApplier, connect};
use duplex_connectors::{
    Applier, ApplyOptions, ChangeEvent, Op, Origin, Position, Row, TableName, TableRoute,
    Transaction, Value,
};
use duplex_testkit::{PgDatabase, shared_pg};
use tokio_postgres::Client;

use events::{CONDITIONAL, big_text, dec, insert, row, skipped, source_table, update_from, with};

const SOURCE: &str = "shop";

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

fn txn(lsn: u64, events: Vec<ChangeEvent>) -> Transaction {
    Transaction {
        source: SOURCE.into(),
        position: Position::Postgres(Lsn(lsn)),
        commit_time: Utc::now(),
        origin: Origin::Local,
        events,
    }
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

/// The whole row as expected, every PostgreSQL type included, lets a conditional update
/// through; json compares by its text (duplicate keys and spacing count), jsonb as jsonb (its
/// text is not kept), inet by its value.
#[tokio::test]
async fn pg_conditional_update_compares_every_type_as_stored() {
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
    let changed = |row: Row| with(row, "vc", Value::Text("changed".into()));

    applier
        .apply(&[txn(
            20,
            vec![
                update_from(1, Some(full_row(1)), changed(full_row(1))),
                update_from(2, Some(other_row(2)), changed(other_row(2))),
            ],
        )])
        .await
        .unwrap();
    assert_eq!(applier.take_skipped(), []);
    assert_row(
        read_row(&client, 1).await,
        expected_with(full_row_expected(), 9, "changed"),
    );
    assert_row(
        read_row(&client, 2).await,
        expected_with(other_row_expected(), 9, "changed"),
    );

    let differing = [
        ("j", Value::Json(r#"{"b": 1, "a": [1, 2]}"#.into())),
        ("j", Value::Json(r#"{"b": 1,  "a": [1, 2], "b": 2}"#.into())),
        ("jb", Value::Json(r#"{"k": [1, "x", false]}"#.into())),
        ("ip", Value::Text("192.168.0.2/24".into())),
        ("e", Value::Text("sad".into())),
        ("b", Value::Bool(false)),
        ("n", Value::UInt(u64::MAX - 1)),
        (
            "iv",
            Value::Time(-(838 * 3600 + 59 * 60 + 59) * 1_000_000 - 999_998),
        ),
    ];
    for (lsn, (column, value)) in (30..).zip(differing) {
        let before = with(full_row(3), column, value);
        applier
            .apply(&[txn(
                lsn,
                vec![update_from(3, Some(before), changed(full_row(3)))],
            )])
            .await
            .unwrap();
        assert_eq!(applier.take_skipped(), [skipped(Op::Update, 3)], "{column}");
        assert_row(read_row(&client, 3).await, full_row_expected());
    }

    // jsonb with other spacing and key order is the same document.
    let before = with(
        full_row(3),
        "jb",
        Value::Json(r#"{ "k" : [1,"x",null] }"#.into()),
    );
    applier
        .apply(&[txn(
            90,
            vec![update_from(3, Some(before), changed(full_row(3)))],
        )])
        .await
        .unwrap();
    assert_eq!(applier.take_skipped(), []);
    assert_row(
        read_row(&client, 3).await,
        expected_with(full_row_expected(), 9, "changed"),
    );
}
