//! The suite: each test takes a fresh target of some kind, applies synthetic source
//! transactions through [`AnyApplier`] and reads back what the target holds.

use chrono::{DateTime, NaiveDate, Utc};
use duplex_connectors::{
    AnyApplier, Applier, ApplyError, ApplyOptions, ChangeEvent, Op, Origin, Position, Row,
    TableRoute, Transaction, TransactionPart, Value,
};

use crate::events::{
    CONDITIONAL, UPSERT, big_text, dec, delete, delete_from, insert, row, skipped, source_table,
    update, update_from, with,
};
use crate::target::{ITEM_COLUMNS, Target};

/// The routed source columns; `label` is written into target column `t`.
const SOURCE_COLUMNS: &[&str] = &[
    "id", "i2", "i4", "i8", "n", "f4", "f8", "label", "vc", "bs", "d", "tm", "ts", "tz", "u", "j",
];

fn route<T: Target>(t: &T) -> TableRoute {
    let mut route =
        TableRoute::same_names(source_table(), t.table("items"), SOURCE_COLUMNS, &["id"]);
    for (source, target) in &mut route.columns {
        if source == "label" {
            *target = "t".into();
        }
    }
    route
}

async fn applier<T: Target>(t: &T, options: ApplyOptions) -> AnyApplier {
    AnyApplier::connect(&t.site(), vec![route(t)], options)
        .await
        .unwrap()
}

/// A transaction of the test's source ending at `offset`.
fn txn<T: Target>(t: &T, offset: u64, events: Vec<ChangeEvent>) -> Transaction {
    txn_of(t, t.source(), offset, events)
}

fn txn_of<T: Target>(t: &T, source: &str, offset: u64, events: Vec<ChangeEvent>) -> Transaction {
    Transaction {
        source: source.into(),
        position: t.position(offset),
        commit_time: Utc::now(),
        origin: Origin::Local,
        events,
    }
}

/// The position `applier` recorded for `source`.
async fn recorded(applier: &mut AnyApplier, source: &str) -> Option<Position> {
    applier.position(source).await.unwrap()
}

async fn count<T: Target>(t: &T) -> i64 {
    let rows = t.query("SELECT COUNT(*) FROM items").await;
    rows[0][0].as_ref().unwrap().parse().unwrap()
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

fn date(y: i32, m: u32, d: u32) -> Value {
    Value::Date(NaiveDate::from_ymd_opt(y, m, d).unwrap())
}

/// Microseconds of a time of day.
fn time(h: i64, m: i64, s: i64, us: i64) -> Value {
    Value::Time(((h * 60 + m) * 60 + s) * 1_000_000 + us)
}

/// Extremes and awkward values every kind holds exactly.
fn full_row(id: i64) -> Row {
    row(vec![
        ("id", Value::Int(id)),
        ("i2", Value::Int(i64::from(i16::MIN))),
        ("i4", Value::UInt(u64::from(i32::MAX as u32))),
        ("i8", Value::Int(i64::MIN)),
        // 38 digits, the most SQL Server's decimal holds.
        ("n", dec("-1234567890123456789012345678.1234567890")),
        ("f4", Value::Float(f64::from(0.1f32))),
        ("f8", Value::Float(f64::MAX)),
        ("label", Value::Text("héllo 🦀 wörld".into())),
        ("vc", Value::Text("varchar".into())),
        ("bs", Value::Bytes(vec![0, 1, 0xff, 0, 0x7f])),
        ("d", date(2024, 2, 29)),
        ("tm", time(23, 59, 59, 999_999)),
        ("ts", ts("1999-12-31T23:59:59.999999")),
        ("tz", tz("2024-06-30T23:59:59.123456+02:00")),
        ("u", uuid("123e4567-e89b-12d3-a456-426614174000")),
        ("j", Value::Json(r#"{"b": 1, "a": [1, "🦀"]}"#.into())),
    ])
}

/// The other extremes, empty strings and a text far larger than a page.
fn other_row(id: i64) -> Row {
    row(vec![
        ("id", Value::Int(id)),
        ("i2", Value::Int(0)),
        ("i4", Value::Int(i64::from(i32::MIN))),
        ("i8", Value::Int(i64::MAX)),
        ("n", dec("0.0000000001")),
        ("f4", Value::Float(-3.5)),
        ("f8", Value::Float(-0.000_000_1)),
        ("label", Value::Text(big_text())),
        ("vc", Value::Text(String::new())),
        ("bs", Value::Bytes(Vec::new())),
        ("d", date(1, 1, 1)),
        ("tm", Value::Time(0)),
        ("ts", ts("2038-01-19T03:14:08")),
        ("tz", tz("1970-01-01T00:00:01.000001Z")),
        ("u", uuid("00000000-0000-0000-0000-000000000000")),
        ("j", Value::Json("[]".into())),
    ])
}

fn null_row(id: i64) -> Row {
    SOURCE_COLUMNS
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

/// What `items` holds after `written` was inserted, in [`ITEM_COLUMNS`] order: integers as
/// `Int`, NULL where nothing was written, `untouched` at its default.
fn stored(written: &Row) -> Option<Vec<Value>> {
    let values = ITEM_COLUMNS
        .iter()
        .map(|(column, _)| {
            let source = if *column == "t" { "label" } else { column };
            match (*column, written.get(source)) {
                ("untouched", _) => Value::Text("default".into()),
                (_, Some(Value::UInt(u))) => Value::Int(i64::try_from(*u).unwrap()),
                (_, Some(value)) => value.clone(),
                (_, None) => Value::Null,
            }
        })
        .collect();
    Some(values)
}

/// `expected` with target column `column` set to `value`.
fn setting(expected: Option<Vec<Value>>, column: &str, value: Value) -> Option<Vec<Value>> {
    let mut expected = expected.unwrap();
    let i = ITEM_COLUMNS.iter().position(|(c, _)| *c == column).unwrap();
    expected[i] = value;
    Some(expected)
}

/// Compares two rows column by column, floats bit for bit, naming the first difference
/// (values shortened).
#[track_caller]
fn assert_item(actual: Option<Vec<Value>>, expected: Option<Vec<Value>>) {
    let (Some(actual), Some(expected)) = (&actual, &expected) else {
        assert_eq!(actual.is_some(), expected.is_some(), "row presence");
        return;
    };
    assert_eq!(actual.len(), expected.len());
    for ((column, _), (a, e)) in ITEM_COLUMNS.iter().zip(actual.iter().zip(expected)) {
        let same = match (a, e) {
            (Value::Float(a), Value::Float(e)) => a.to_bits() == e.to_bits(),
            _ => a == e,
        };
        let short = |v: &Value| format!("{v:?}").chars().take(80).collect::<String>();
        assert!(same, "column {column}: {} != {}", short(a), short(e));
    }
}

pub async fn every_common_type_round_trips_value_by_value<T: Target>(t: T) {
    let mut applier = applier(&t, ApplyOptions::default()).await;
    let batch = [
        txn(&t, 100, vec![insert(full_row(1)), insert(other_row(2))]),
        txn(&t, 200, vec![insert(null_row(3))]),
    ];
    applier.apply(&batch).await.unwrap();
    assert_item(t.read_item(1).await, stored(&full_row(1)));
    assert_item(t.read_item(2).await, stored(&other_row(2)));
    assert_item(t.read_item(3).await, stored(&null_row(3)));
    assert_eq!(
        recorded(&mut applier, t.source()).await,
        Some(t.position(200))
    );
}

pub async fn many_inserts_go_through_multi_row_statements<T: Target>(t: T) {
    let mut applier = applier(&t, ApplyOptions::default()).await;
    let events = (1..=1000)
        .map(|id| {
            insert(row(vec![
                ("id", Value::Int(id)),
                ("i8", Value::Int(id * 3)),
                ("label", Value::Text(format!("row {id}"))),
            ]))
        })
        .collect();
    applier.apply(&[txn(&t, 10, events)]).await.unwrap();
    let rows = t
        .query(
            "SELECT COUNT(*), SUM(i8), SUM(CASE WHEN t = CONCAT('row ', id) THEN 1 ELSE 0 END), \
                    COUNT(untouched) \
             FROM items",
        )
        .await;
    let numbers: Vec<i64> = rows[0]
        .iter()
        .map(|v| v.as_ref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(numbers, [1000, 3 * 500_500, 1000, 1000]);
}

pub async fn updates_keep_unchanged_columns_and_follow_key_changes<T: Target>(t: T) {
    let mut applier = applier(&t, ApplyOptions::default()).await;
    applier
        .apply(&[txn(&t, 10, vec![insert(other_row(2)), insert(full_row(5))])])
        .await
        .unwrap();
    // The big text was not carried by the update (Unchanged: PostgreSQL TOASTed it), the key
    // moves from 5 to 6, and an update that changes nothing still finds its row.
    let after = with(
        with(other_row(2), "label", Value::Unchanged),
        "i2",
        Value::Int(7),
    );
    let moved = with(full_row(6), "vc", Value::Text("moved".into()));
    applier
        .apply(&[
            txn(&t, 20, vec![update(2, after)]),
            txn(&t, 30, vec![update(5, moved.clone())]),
            txn(&t, 35, vec![update(6, moved.clone())]),
        ])
        .await
        .unwrap();
    assert_item(
        t.read_item(2).await,
        setting(stored(&other_row(2)), "i2", Value::Int(7)),
    );
    assert_item(t.read_item(5).await, None);
    assert_item(t.read_item(6).await, stored(&moved));

    applier
        .apply(&[txn(&t, 40, vec![delete(2)])])
        .await
        .unwrap();
    assert_item(t.read_item(2).await, None);
    assert_eq!(count(&t).await, 1);
    assert_eq!(
        recorded(&mut applier, t.source()).await,
        Some(t.position(40))
    );
}

pub async fn a_batch_applied_twice_is_skipped_by_position<T: Target>(t: T) {
    let mut applier = applier(&t, ApplyOptions::default()).await;
    assert_eq!(recorded(&mut applier, t.source()).await, None);
    let batch = [
        txn(&t, 10, vec![insert(full_row(1))]),
        txn(&t, 20, vec![insert(other_row(2)), delete(1)]),
    ];
    applier.apply(&batch).await.unwrap();
    let first = t.applied_at().await;
    assert!(first.is_some());
    // Again, the same batch: nothing happens, not even a new applied_at.
    applier.apply(&batch).await.unwrap();
    assert_eq!(
        t.applied_at().await,
        first,
        "a skipped batch writes nothing"
    );
    assert_item(t.read_item(2).await, stored(&other_row(2)));
    assert_item(t.read_item(1).await, None);
    assert_eq!(count(&t).await, 1);
    // A new applier (after a crash) reads the committed position and skips the replay too,
    // but applies what is new in an overlapping batch.
    let mut restarted = self::applier(&t, ApplyOptions::default()).await;
    assert_eq!(
        recorded(&mut restarted, t.source()).await,
        Some(t.position(20))
    );
    let overlapping = [
        txn(&t, 20, vec![insert(other_row(2))]),
        txn(&t, 30, vec![insert(full_row(3))]),
    ];
    restarted.apply(&overlapping).await.unwrap();
    assert_eq!(count(&t).await, 2);
    assert_item(t.read_item(3).await, stored(&full_row(3)));
    assert_eq!(
        recorded(&mut restarted, t.source()).await,
        Some(t.position(30))
    );
}

pub async fn positions_are_kept_per_source<T: Target>(t: T) {
    let mut applier = applier(&t, ApplyOptions::default()).await;
    let a = format!("{}_a", t.source());
    let b = format!("{}_b", t.source());
    let id = |n| row(vec![("id", Value::Int(n))]);
    applier
        .apply(&[
            txn_of(&t, &a, 10, vec![insert(id(1))]),
            txn_of(&t, &b, 5, vec![insert(id(2))]),
            txn_of(&t, &a, 20, vec![insert(id(3))]),
        ])
        .await
        .unwrap();
    assert_eq!(recorded(&mut applier, &a).await, Some(t.position(20)));
    assert_eq!(recorded(&mut applier, &b).await, Some(t.position(5)));
    // A position of one source says nothing about another: b's 15 is new although a is at 20,
    // a's 20 is a replay although b is only at 5.
    applier
        .apply(&[
            txn_of(&t, &a, 20, vec![insert(id(3))]),
            txn_of(&t, &b, 15, vec![insert(id(4))]),
            txn_of(&t, &b, 5, vec![insert(id(2))]),
            txn_of(&t, &a, 25, vec![insert(id(5))]),
        ])
        .await
        .unwrap();
    assert_eq!(count(&t).await, 5);
    assert_eq!(recorded(&mut applier, &a).await, Some(t.position(25)));
    assert_eq!(recorded(&mut applier, &b).await, Some(t.position(15)));
    assert_eq!(recorded(&mut applier, t.source()).await, None);
}

pub async fn a_failing_transaction_leaves_nothing_of_its_batch<T: Target>(t: T) {
    let mut applier = applier(&t, ApplyOptions::default()).await;
    applier
        .apply(&[txn(&t, 10, vec![insert(full_row(1))])])
        .await
        .unwrap();
    let table = t.table("items");

    // Refused before it reaches the server: a 16-bit column cannot hold 40000.
    let bad = with(other_row(4), "i2", Value::Int(40_000));
    let batch = [
        txn(&t, 20, vec![insert(other_row(2)), delete(1)]),
        txn(&t, 30, vec![insert(null_row(3))]),
        txn(&t, 40, vec![insert(bad)]),
    ];
    let err = applier.apply(&batch).await.unwrap_err();
    assert!(!err.is_transient());
    match &err {
        ApplyError::Value(refusal) => {
            assert_eq!(refusal.table, table);
            assert_eq!(refusal.column, "i2");
            assert_eq!(refusal.value_kind, "Int");
            assert_eq!(refusal.column_type, T::SMALLINT);
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains(&format!("{table}.i2")), "{err}");

    // Refused by the server: the third transaction inserts a row that exists, after the first
    // two were written.
    let batch = [
        txn(&t, 20, vec![insert(other_row(2)), delete(1)]),
        txn(&t, 30, vec![insert(null_row(3))]),
        txn(&t, 40, vec![insert(null_row(2))]),
    ];
    let err = applier.apply(&batch).await.unwrap_err();
    assert!(!err.is_transient());
    assert_eq!(T::write_error(&err), Some((&table, Op::Insert)), "{err:?}");
    assert!(T::is_duplicate_key(&err), "{err:?}");

    assert_item(t.read_item(1).await, stored(&full_row(1)));
    assert_eq!(count(&t).await, 1);
    assert_eq!(
        recorded(&mut applier, t.source()).await,
        Some(t.position(10))
    );
    // The applier is still usable: the good part applies.
    applier.apply(&batch[..2]).await.unwrap();
    assert_eq!(count(&t).await, 2);
    assert_eq!(
        recorded(&mut applier, t.source()).await,
        Some(t.position(30))
    );
}

pub async fn values_the_column_cannot_hold_are_refused_by_name<T: Target>(t: T) {
    let mut applier = applier(&t, ApplyOptions::default()).await;
    let cases = [
        ("i2", Value::Int(40_000), "range"),
        ("i4", Value::UInt(u64::MAX), "range"),
        ("f4", Value::Float(0.1), "32-bit"),
        ("n", dec("1.00000000005"), "rounded"),
        ("label", Value::Bytes(vec![1]), "no conversion"),
    ];
    let table = t.table("items");
    for (column, value, words) in cases {
        let row = with(full_row(1), column, value.clone());
        let err = applier
            .apply(&[txn(&t, 10, vec![insert(row)])])
            .await
            .unwrap_err();
        let ApplyError::Value(refusal) = &err else {
            panic!("{column} = {value:?}: unexpected {err:?}");
        };
        let target = if column == "label" { "t" } else { column };
        assert_eq!(refusal.column, target);
        assert_eq!(refusal.table, table);
        assert!(!err.is_transient());
        assert!(
            err.to_string().contains(words),
            "{column} = {value:?}: {err}"
        );
    }
    assert_eq!(count(&t).await, 0);
    assert_eq!(recorded(&mut applier, t.source()).await, None);
}

pub async fn inserting_an_existing_row_fails_unless_upserting<T: Target>(t: T) {
    let mut strict = applier(&t, ApplyOptions::default()).await;
    strict
        .apply(&[txn(&t, 10, vec![insert(full_row(1))])])
        .await
        .unwrap();
    let err = strict
        .apply(&[txn(&t, 20, vec![insert(other_row(1))])])
        .await
        .unwrap_err();
    assert_eq!(
        T::write_error(&err),
        Some((&t.table("items"), Op::Insert)),
        "{err:?}"
    );
    assert!(T::is_duplicate_key(&err), "{err:?}");
    if !T::UPSERTS {
        refuses_upserts(&t).await;
        return;
    }

    let mut upsert = applier(&t, UPSERT).await;
    upsert
        .apply(&[txn(&t, 20, vec![insert(other_row(1)), insert(full_row(2))])])
        .await
        .unwrap();
    assert_item(t.read_item(1).await, stored(&other_row(1)));
    assert_item(t.read_item(2).await, stored(&full_row(2)));
    // Upserting overwrites rows, it does not invent them: a missing row is still an error.
    let err = upsert
        .apply(&[txn(&t, 30, vec![delete(9)])])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApplyError::RowMissing { op: Op::Delete, .. }),
        "{err:?}"
    );
    assert_eq!(
        recorded(&mut upsert, t.source()).await,
        Some(t.position(20))
    );
}

/// Upserts match rows by primary key only: a row sharing a secondary unique value with a row of
/// another key is refused by name, never written over that row (MariaDB's `INSERT ... ON
/// DUPLICATE KEY UPDATE` would have updated whichever row collided).
/// A kind without upserts refuses an upserting applier, saying so, before it writes anything.
async fn refuses_upserts<T: Target>(t: &T) {
    match AnyApplier::connect(&t.site(), vec![route(t)], UPSERT).await {
        Err(ApplyError::Options(message)) => assert!(message.contains("not built"), "{message}"),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("an upserting applier, though the kind does not upsert"),
    }
}

pub async fn upserts_match_rows_by_primary_key_only<T: Target>(t: T) {
    if !T::UPSERTS {
        refuses_upserts(&t).await;
        return;
    }
    t.execute("CREATE UNIQUE INDEX items_vc ON items (vc)")
        .await;
    let vc = |id: i64, value: &str| with(full_row(id), "vc", Value::Text(value.into()));
    let mut strict = applier(&t, ApplyOptions::default()).await;
    strict
        .apply(&[txn(
            &t,
            10,
            vec![
                insert(vc(99, "a@x")),
                insert(vc(5, "e@x")),
                insert(vc(6, "f@x")),
            ],
        )])
        .await
        .unwrap();
    let held = [
        t.read_item(99).await,
        t.read_item(5).await,
        t.read_item(6).await,
    ];
    let mut upsert = applier(&t, UPSERT).await;
    let unchanged = |err: &ApplyError, key: &str| {
        assert!(
            matches!(err, ApplyError::UniqueCollision { table, key: k, .. }
                if *table == t.table("items") && k.contains(key)),
            "{err:?}"
        );
        assert!(!err.is_transient());
        assert!(
            err.to_string().contains("primary key only"),
            "the message says what happened: {err}"
        );
    };
    // A new key whose secondary unique value another row holds: in a multi-row statement ...
    let err = upsert
        .apply(&[txn(
            &t,
            20,
            vec![insert(vc(1, "a@x")), insert(vc(2, "b@x"))],
        )])
        .await
        .unwrap_err();
    unchanged(&err, "id=Int(1)");
    // ... and alone.
    let err = upsert
        .apply(&[txn(&t, 20, vec![insert(vc(1, "a@x"))])])
        .await
        .unwrap_err();
    unchanged(&err, "id=Int(1)");
    // An existing key written with a secondary unique value another row holds.
    let err = upsert
        .apply(&[txn(&t, 20, vec![insert(vc(5, "f@x"))])])
        .await
        .unwrap_err();
    unchanged(&err, "id=Int(5)");
    assert_item(t.read_item(99).await, held[0].clone());
    assert_item(t.read_item(5).await, held[1].clone());
    assert_item(t.read_item(6).await, held[2].clone());
    assert_item(t.read_item(1).await, None);
    assert_item(t.read_item(2).await, None);
    assert_eq!(count(&t).await, 3);
    assert_eq!(
        recorded(&mut upsert, t.source()).await,
        Some(t.position(10))
    );
    // Without a collision the upsert overwrites by key and inserts the rest.
    upsert
        .apply(&[txn(
            &t,
            30,
            vec![
                insert(vc(99, "z@x")),
                insert(vc(1, "a@x")),
                insert(vc(2, "b@x")),
            ],
        )])
        .await
        .unwrap();
    assert_item(t.read_item(99).await, stored(&vc(99, "z@x")));
    assert_item(t.read_item(1).await, stored(&vc(1, "a@x")));
    assert_item(t.read_item(2).await, stored(&vc(2, "b@x")));
    assert_eq!(count(&t).await, 5);
}

pub async fn updates_and_deletes_of_missing_rows_are_errors<T: Target>(t: T) {
    let mut applier = applier(&t, ApplyOptions::default()).await;
    let err = applier
        .apply(&[txn(&t, 10, vec![delete(9)])])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApplyError::RowMissing { op: Op::Delete, table, .. } if *table == t.table("items")),
        "{err:?}"
    );
    assert!(!err.is_transient());
    let err = applier
        .apply(&[txn(&t, 10, vec![update(9, full_row(9))])])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApplyError::RowMissing { op: Op::Update, .. }),
        "{err:?}"
    );
    assert_eq!(recorded(&mut applier, t.source()).await, None);
}

pub async fn routes_are_checked_against_the_target_table<T: Target>(t: T) {
    let mut bad = route(&t);
    bad.columns.push(("nope".into(), "nope".into()));
    let err = AnyApplier::connect(&t.site(), vec![bad], ApplyOptions::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ApplyError::Route { .. }), "{err:?}");
    assert!(err.to_string().contains("no column \"nope\""), "{err}");
    let mut bad = route(&t);
    bad.target = t.table("missing");
    let err = AnyApplier::connect(&t.site(), vec![bad], ApplyOptions::default())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

pub async fn a_lost_connection_is_transient_and_the_applier_reconnects<T: Target>(t: T) {
    let mut applier = applier(&t, ApplyOptions::default()).await;
    t.kill_applier_connections().await;
    let batch = [txn(&t, 10, vec![insert(full_row(1))])];
    let err = applier.apply(&batch).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    // The caller retries the whole batch.
    applier.apply(&batch).await.unwrap();
    assert_item(t.read_item(1).await, stored(&full_row(1)));
    assert_eq!(
        recorded(&mut applier, t.source()).await,
        Some(t.position(10))
    );
}

pub async fn a_failure_inside_a_run_of_writes_is_reported_as_itself<T: Target>(t: T) {
    let mut applier = applier(&t, ApplyOptions::default()).await;
    applier
        .apply(&[txn(&t, 10, vec![insert(full_row(1)), insert(full_row(2))])])
        .await
        .unwrap();
    // Three updates and a delete go out together (PostgreSQL pipelines them); the second is
    // refused by the server (varchar(20) overflow), the ones after it must not be blamed.
    let too_long = with(full_row(1), "vc", Value::Text("x".repeat(21)));
    let batch = [txn(
        &t,
        20,
        vec![
            update(1, with(full_row(1), "i2", Value::Int(1))),
            update(1, too_long),
            update(2, with(full_row(2), "i2", Value::Int(2))),
            delete(2),
        ],
    )];
    let err = applier.apply(&batch).await.unwrap_err();
    assert_eq!(
        T::write_error(&err),
        Some((&t.table("items"), Op::Update)),
        "{err:?}"
    );
    // String data, right truncation: an error, not a silent truncation.
    assert_eq!(T::sqlstate(&err).as_deref(), Some("22001"), "{err:?}");
    assert!(!err.is_transient());
    // A delete of a missing row in the middle of a run is found too.
    let batch = [txn(
        &t,
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
    assert_item(t.read_item(1).await, stored(&full_row(1)));
    assert_item(t.read_item(2).await, stored(&full_row(2)));
}

pub async fn two_appliers_racing_on_a_new_source_do_not_both_apply<T: Target>(t: T) {
    let mut applier = applier(&t, ApplyOptions::default()).await;
    // Another applier of the same source is mid-transaction: it has recorded its first
    // position but not committed yet, so ours sees no position either.
    let held = t.hold_position(&t.position(10)).await;
    let batch = [txn(&t, 10, vec![insert(full_row(1))])];
    let ours = tokio::spawn(async move {
        let result = applier.apply(&batch).await;
        (applier, result)
    });
    t.wait_for_blocked_applier().await;
    t.commit_held(held).await;
    let (mut applier, result) = ours.await.unwrap();
    if T::RACING_FIRST_POSITION_FAILS {
        // Ours read no position, wrote, and failed on the key when the other committed.
        let err = result.unwrap_err();
        assert!(T::is_duplicate_key(&err), "{err:?}");
    } else {
        // Ours waited for the other's row in the position check, read its position and
        // skipped the transaction.
        result.unwrap();
    }
    assert_eq!(count(&t).await, 0, "ours wrote nothing");
    // Retried, ours sees the other's position and skips the transaction.
    applier
        .apply(&[txn(&t, 10, vec![insert(full_row(1))])])
        .await
        .unwrap();
    assert_eq!(count(&t).await, 0);
    assert_eq!(
        recorded(&mut applier, t.source()).await,
        Some(t.position(10))
    );
}

mod conditional;

pub use conditional::*;
