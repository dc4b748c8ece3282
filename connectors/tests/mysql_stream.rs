//! The MariaDB binlog reader against a real MariaDB 10.11 (the testkit's shared server: ROW
//! binlog, FULL row image, FULL row metadata). Each test has its own database; streams start at
//! the server's current position and see only their own database's tables, so the tests run in
//! parallel. Reads poll with a deadline; nothing sleeps to synchronise.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use duplex_connectors::mysql::{
    BinlogPosition, MysqlStream, MysqlStreamConfig, MysqlStreamError, StartPosition, TypeError,
};
use duplex_connectors::{
    ChangeEvent, Decimal, Op, Origin, Position, Row, StreamItem, TableName, Transaction, Value,
};
use duplex_testkit::{MariaDatabase, MariaOptions, MariaServer, Shutdown};
use tokio::time::{Instant, timeout_at};

const DEADLINE: Duration = Duration::from_secs(30);

fn database() -> MariaDatabase {
    duplex_testkit::shared_mariadb().create_database()
}

async fn open(db: &MariaDatabase, tables: &[&str], start: StartPosition) -> MysqlStream {
    let mut config = MysqlStreamConfig::new(
        "maria",
        db.url(),
        tables.iter().map(|t| TableName::new(db.name(), *t)),
    );
    config.start = start;
    config.heartbeat = Duration::from_millis(500);
    MysqlStream::start(config).await.unwrap()
}

/// The next transaction, skipping heartbeats, within the deadline.
async fn next_transaction(stream: &mut MysqlStream) -> Transaction {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let item = timeout_at(deadline, stream.next())
            .await
            .expect("no transaction before the deadline")
            .unwrap();
        if let StreamItem::Transaction(txn) = item {
            return txn;
        }
    }
}

/// The next error, skipping heartbeats and transactions, within the deadline.
async fn next_error(stream: &mut MysqlStream) -> MysqlStreamError {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let item = timeout_at(deadline, stream.next())
            .await
            .expect("no error before the deadline");
        match item {
            Err(e) => return e,
            Ok(StreamItem::Transaction(txn)) => panic!("unexpected transaction {txn:?}"),
            Ok(StreamItem::Heartbeat(_)) => {}
            Ok(StreamItem::Part(part)) => panic!("unexpected part {part:?}"),
            Ok(StreamItem::Shape(shape)) => panic!("unexpected shape {shape:?}"),
        }
    }
}

fn row(values: &[(&str, Value)]) -> Row {
    values.iter().map(|(c, v)| (*c, v.clone())).collect()
}

fn dec(text: &str) -> Value {
    Value::Decimal(Decimal::from_str(text).unwrap())
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn datetime(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").unwrap()
}

fn instant(s: &str) -> Value {
    Value::TimestampTz(DateTime::<Utc>::from_naive_utc_and_offset(datetime(s), Utc))
}

fn time(negative: bool, h: i64, m: i64, s: i64, micros: i64) -> Value {
    let v = ((h * 60 + m) * 60 + s) * 1_000_000 + micros;
    Value::Time(if negative { -v } else { v })
}

fn mysql_position(txn: &Transaction) -> BinlogPosition {
    match &txn.position {
        Position::Mysql(p) => p.clone(),
        other => panic!("not a binlog position: {other:?}"),
    }
}

/// Creates `ddl`, starts a stream on table `t`, runs `dml` and returns the first transaction.
async fn round_trip(ddl: &str, dml: &str) -> Transaction {
    let db = database();
    db.sql(ddl).unwrap();
    let mut stream = open(&db, &["t"], StartPosition::Current).await;
    db.sql(dml).unwrap();
    let txn = next_transaction(&mut stream).await;
    stream.shutdown().await;
    txn
}

fn after(txn: &Transaction, index: usize) -> &Row {
    txn.events[index].after.as_ref().unwrap()
}

const ALL_TYPES: &str = "CREATE TABLE t (
    id INT PRIMARY KEY,
    ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
    mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
    d65 DECIMAL(65,30), d52 DECIMAL(5,2), dz DECIMAL(10,4), f FLOAT, d DOUBLE,
    dt DATE, dtm DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL, tm TIME(6), tm2 TIME(2), y YEAR,
    c CHAR(10), vc VARCHAR(300), tx TEXT, l1 VARCHAR(20) CHARACTER SET latin1,
    bn BINARY(6), vb VARBINARY(10), bl BLOB,
    e ENUM('small','medium','large'), st SET('a','b','c'), j JSON, u UUID
) ENGINE=InnoDB";

fn all_types_max() -> Row {
    row(&[
        ("id", Value::Int(1)),
        ("ti", Value::Int(127)),
        ("tiu", Value::UInt(255)),
        ("si", Value::Int(32767)),
        ("siu", Value::UInt(65535)),
        ("mi", Value::Int(8_388_607)),
        ("miu", Value::UInt(16_777_215)),
        ("i", Value::Int(2_147_483_647)),
        ("iu", Value::UInt(4_294_967_295)),
        ("bi", Value::Int(i64::MAX)),
        ("biu", Value::UInt(u64::MAX)),
        (
            "d65",
            dec("99999999999999999999999999999999999.999999999999999999999999999999"),
        ),
        ("d52", dec("999.99")),
        ("dz", dec("0.0000")),
        ("f", Value::Float(1.5)),
        ("d", Value::Float(f64::MAX)),
        (
            "dt",
            Value::Date(NaiveDate::from_ymd_opt(9999, 12, 31).unwrap()),
        ),
        (
            "dtm",
            Value::Timestamp(datetime("9999-12-31 23:59:59.999999")),
        ),
        ("ts", instant("2038-01-19 03:14:07.999999")),
        ("tm", time(false, 838, 59, 59, 0)),
        ("tm2", time(true, 0, 0, 1, 500_000)),
        ("y", Value::Int(2155)),
        ("c", text("héllo 😀")),
        ("vc", text("emoji 😀🎉 ünïcödé")),
        ("tx", text(&"ab".repeat(5000))),
        ("l1", text("café € ÿ")),
        ("bn", Value::Bytes(vec![0, 0xff, 0, 0, 0, 0])),
        ("vb", Value::Bytes(vec![0, 0, 0xff, 0])),
        ("bl", Value::Bytes(vec![0, 1, 2, 0])),
        ("e", text("large")),
        ("st", text("a,c")),
        (
            "j",
            Value::Json(r#"{"k": [1, 2.5, "😀"], "n": null}"#.into()),
        ),
        (
            "u",
            Value::Uuid("6ccd780c-baba-1026-9564-5b8c656024db".parse().unwrap()),
        ),
    ])
}

fn all_types_min() -> Row {
    row(&[
        ("id", Value::Int(2)),
        ("ti", Value::Int(-128)),
        ("tiu", Value::UInt(0)),
        ("si", Value::Int(-32768)),
        ("siu", Value::UInt(0)),
        ("mi", Value::Int(-8_388_608)),
        ("miu", Value::UInt(0)),
        ("i", Value::Int(-2_147_483_648)),
        ("iu", Value::UInt(0)),
        ("bi", Value::Int(i64::MIN)),
        ("biu", Value::UInt(0)),
        (
            "d65",
            dec("-99999999999999999999999999999999999.999999999999999999999999999999"),
        ),
        ("d52", dec("-0.50")),
        ("dz", dec("-12.3400")),
        ("f", Value::Float(-0.25)),
        ("d", Value::Float(2.2250738585072014e-308)),
        (
            "dt",
            Value::Date(NaiveDate::from_ymd_opt(1000, 1, 1).unwrap()),
        ),
        (
            "dtm",
            Value::Timestamp(datetime("1000-01-01 00:00:00.000001")),
        ),
        ("ts", instant("1970-01-01 00:00:01.000000")),
        ("tm", time(true, 838, 59, 59, 0)),
        ("tm2", time(false, 12, 34, 56, 780_000)),
        ("y", Value::Int(1901)),
        ("c", text("")),
        ("vc", text("")),
        ("tx", text("")),
        ("l1", text("")),
        ("bn", Value::Bytes(vec![0; 6])),
        ("vb", Value::Bytes(vec![])),
        ("bl", Value::Bytes(vec![])),
        ("e", text("small")),
        ("st", text("")),
        ("j", Value::Json("[]".into())),
        (
            "u",
            Value::Uuid("01890a5d-ac96-774b-bcce-b302099a8000".parse().unwrap()),
        ),
    ])
}

const INSERT_MAX_AND_MIN: &str = "SET time_zone = '+00:00';
INSERT INTO t VALUES
 (1, 127, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295,
  9223372036854775807, 18446744073709551615,
  '99999999999999999999999999999999999.999999999999999999999999999999', 999.99, 0, 1.5,
  1.7976931348623157e308, '9999-12-31', '9999-12-31 23:59:59.999999',
  '2038-01-19 03:14:07.999999', '838:59:59', '-00:00:01.50', 2155,
  'héllo 😀', 'emoji 😀🎉 ünïcödé', REPEAT('ab', 5000), 'café € ÿ',
  x'00FF0000', x'0000FF00', x'00010200', 'large', 'a,c', '{\"k\": [1, 2.5, \"😀\"], \"n\": null}',
  '6ccd780c-baba-1026-9564-5b8c656024db'),
 (2, -128, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0,
  '-99999999999999999999999999999999999.999999999999999999999999999999', -0.5, -12.34, -0.25,
  2.2250738585072014e-308, '1000-01-01', '1000-01-01 00:00:00.000001',
  '1970-01-01 00:00:01', '-838:59:59', '12:34:56.78', 1901,
  '', '', '', '', x'', x'', x'', 'small', '', '[]', '01890a5d-ac96-774b-bcce-b302099a8000'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL);";

fn all_null(id: i64) -> Row {
    let mut row = Row::new();
    for (name, _) in all_types_max().iter() {
        row.push(
            name,
            if name == "id" {
                Value::Int(id)
            } else {
                Value::Null
            },
        );
    }
    row
}

/// Every supported type, its extremes and NULL, through a multi-row insert, then a
/// multi-statement transaction with an update and a delete: every event and value exactly,
/// with key, before and after images, in commit order with growing positions.
#[tokio::test]
async fn every_type_and_edge_value_round_trips_in_commit_order() {
    let db = database();
    db.sql(ALL_TYPES).unwrap();
    let mut stream = open(&db, &["t"], StartPosition::Current).await;
    let start = stream.position().clone();
    db.sql(INSERT_MAX_AND_MIN).unwrap();
    db.sql(
        "SET time_zone = '+00:00'; BEGIN; UPDATE t SET vc = 'changed', tm = '-00:00:00.000001' \
         WHERE id = 1; DELETE FROM t WHERE id = 3; COMMIT;",
    )
    .unwrap();

    let table = TableName::new(db.name(), "t");
    let key = |id: i64| row(&[("id", Value::Int(id))]);
    let insert = next_transaction(&mut stream).await;
    assert_eq!(insert.source, "maria");
    assert_eq!(insert.origin, Origin::Local);
    let expected_inserts: Vec<ChangeEvent> = [all_types_max(), all_types_min(), all_null(3)]
        .into_iter()
        .enumerate()
        .map(|(i, after)| ChangeEvent {
            table: table.clone(),
            op: Op::Insert,
            key: key(i as i64 + 1),
            before: None,
            after: Some(after),
        })
        .collect();
    assert_eq!(insert.events.len(), 3);
    for (got, want) in insert.events.iter().zip(&expected_inserts) {
        for ((gc, gv), (wc, wv)) in got
            .after
            .as_ref()
            .unwrap()
            .iter()
            .zip(want.after.as_ref().unwrap().iter())
        {
            assert_eq!((gc, gv), (wc, wv), "column {wc}");
        }
    }
    assert_eq!(insert.events, expected_inserts);

    let mut updated = all_types_max();
    updated = updated
        .iter()
        .map(|(c, v)| match c {
            "vc" => (c, text("changed")),
            "tm" => (c, time(true, 0, 0, 0, 1)),
            _ => (c, v.clone()),
        })
        .collect();
    let change = next_transaction(&mut stream).await;
    assert_eq!(
        change.events,
        vec![
            ChangeEvent {
                table: table.clone(),
                op: Op::Update,
                key: key(1),
                before: Some(all_types_max()),
                after: Some(updated),
            },
            ChangeEvent {
                table: table.clone(),
                op: Op::Delete,
                key: key(3),
                before: Some(all_null(3)),
                after: None,
            },
        ]
    );
    let (p0, p1, p2) = (start, mysql_position(&insert), mysql_position(&change));
    assert!(p0.compare(&p1).unwrap().is_lt() && p1.compare(&p2).unwrap().is_lt());
    assert!(p2.gtid.is_some(), "MariaDB positions carry the GTID: {p2}");
    stream.shutdown().await;
}

/// FIELD-NOTES: mysql_common does not sign-extend signed MEDIUMINT.
#[tokio::test]
async fn signed_mediumint_is_sign_extended() {
    let txn = round_trip(
        "CREATE TABLE t (id INT PRIMARY KEY, m MEDIUMINT, u MEDIUMINT UNSIGNED)",
        "INSERT INTO t VALUES (1, -1, 16777215), (2, -8388608, 8388608)",
    )
    .await;
    assert_eq!(after(&txn, 0).get("m"), Some(&Value::Int(-1)));
    assert_eq!(after(&txn, 0).get("u"), Some(&Value::UInt(16_777_215)));
    assert_eq!(after(&txn, 1).get("m"), Some(&Value::Int(-8_388_608)));
    assert_eq!(after(&txn, 1).get("u"), Some(&Value::UInt(8_388_608)));
}

/// FIELD-NOTES: mysql_common gives TIMESTAMP(6) as a string of epoch seconds.
#[tokio::test]
async fn timestamp6_is_an_instant_in_utc() {
    let txn = round_trip(
        "CREATE TABLE t (id INT PRIMARY KEY, ts TIMESTAMP(6) NULL, t0 TIMESTAMP NULL)",
        "SET time_zone = '+02:00'; \
         INSERT INTO t VALUES (1, '2024-02-29 12:00:00.123456', '2024-02-29 12:00:00')",
    )
    .await;
    assert_eq!(
        after(&txn, 0).get("ts"),
        Some(&instant("2024-02-29 10:00:00.123456"))
    );
    assert_eq!(
        after(&txn, 0).get("t0"),
        Some(&instant("2024-02-29 10:00:00"))
    );
}

/// FIELD-NOTES: mysql_common decodes YEAR 0 as 1900.
#[tokio::test]
async fn year_zero_stays_zero() {
    let txn = round_trip(
        "CREATE TABLE t (id INT PRIMARY KEY, y YEAR)",
        "INSERT INTO t VALUES (1, 0), (2, 1901), (3, 2155)",
    )
    .await;
    let years: Vec<_> = (0..3).map(|i| after(&txn, i).get("y").cloned()).collect();
    assert_eq!(
        years,
        vec![
            Some(Value::Int(0)),
            Some(Value::Int(1901)),
            Some(Value::Int(2155))
        ]
    );
}

/// FIELD-NOTES: BINARY(n) and UUID lose trailing 0x00 bytes (the server strips them); they are
/// padded back. VARBINARY keeps its own trailing zeros, and trailing spaces of BINARY stay.
#[tokio::test]
async fn binary_and_uuid_keep_trailing_zero_bytes() {
    let txn = round_trip(
        "CREATE TABLE t (id INT PRIMARY KEY, b BINARY(4), vb VARBINARY(4), u UUID)",
        "INSERT INTO t VALUES (1, x'01000000', x'0100', '01890a5d-ac96-774b-bcce-b30209000000'), \
         (2, x'61622020', x'00', 'ffffffff-ffff-1fff-bfff-ffffffffff00'), \
         (3, x'00000000', x'', '00000000-0000-0000-0000-000000000000')",
    )
    .await;
    let get = |i: usize, c: &str| after(&txn, i).get(c).cloned().unwrap();
    assert_eq!(get(0, "b"), Value::Bytes(vec![1, 0, 0, 0]));
    assert_eq!(get(0, "vb"), Value::Bytes(vec![1, 0]));
    assert_eq!(
        get(0, "u"),
        Value::Uuid("01890a5d-ac96-774b-bcce-b30209000000".parse().unwrap())
    );
    assert_eq!(get(1, "b"), Value::Bytes(b"ab  ".to_vec()));
    assert_eq!(get(1, "vb"), Value::Bytes(vec![0]));
    assert_eq!(
        get(1, "u"),
        Value::Uuid("ffffffff-ffff-1fff-bfff-ffffffffff00".parse().unwrap())
    );
    assert_eq!(get(2, "b"), Value::Bytes(vec![0; 4]));
    assert_eq!(get(2, "u"), Value::Uuid(uuid::Uuid::nil()));
}

/// FIELD-NOTES: UNSIGNED decodes wrongly from the signedness metadata; columns of mixed
/// signedness, with DECIMAL and FLOAT between them, keep theirs.
#[tokio::test]
async fn unsigned_columns_are_unsigned_and_signed_ones_signed() {
    let txn = round_trip(
        "CREATE TABLE t (id INT PRIMARY KEY, a DECIMAL(5,2) UNSIGNED, b TINYINT, \
         c FLOAT, d BIGINT UNSIGNED, e SMALLINT, f INT UNSIGNED)",
        "INSERT INTO t VALUES (1, 1.25, -1, -2.5, 18446744073709551615, -2, 4294967295)",
    )
    .await;
    assert_eq!(
        after(&txn, 0),
        &row(&[
            ("id", Value::Int(1)),
            ("a", dec("1.25")),
            ("b", Value::Int(-1)),
            ("c", Value::Float(-2.5)),
            ("d", Value::UInt(u64::MAX)),
            ("e", Value::Int(-2)),
            ("f", Value::UInt(4_294_967_295)),
        ])
    );
}

/// FIELD-NOTES: ENUM arrives as an index and SET as a bitmask; they come out as labels.
#[tokio::test]
async fn enum_and_set_come_out_as_labels() {
    let txn = round_trip(
        "CREATE TABLE t (id INT PRIMARY KEY, e ENUM('x','it''s','z'), \
         s SET('a','b','c','d','e','f','g','h','i'))",
        "SET sql_mode = ''; INSERT INTO t VALUES (1, 'it''s', 'a,i'), (2, 'z', ''), (3, 'bad', 'b')",
    )
    .await;
    let get = |i: usize, c: &str| after(&txn, i).get(c).cloned().unwrap();
    assert_eq!(get(0, "e"), text("it's"));
    assert_eq!(get(0, "s"), text("a,i"));
    assert_eq!(get(1, "e"), text("z"));
    assert_eq!(get(1, "s"), text(""));
    // The invalid ENUM value '' (index 0) that non-strict mode stores.
    assert_eq!(get(2, "e"), text(""));
}

/// FIELD-NOTES: MariaDB's JSON is LONGTEXT; it comes out as JSON text, exactly as stored.
#[tokio::test]
async fn json_is_text() {
    let txn = round_trip(
        "CREATE TABLE t (id INT PRIMARY KEY, j JSON)",
        "INSERT INTO t VALUES (1, '{\"b\": 1, \"a\": [true, null, \"é\"]}')",
    )
    .await;
    assert_eq!(
        after(&txn, 0).get("j"),
        Some(&Value::Json(r#"{"b": 1, "a": [true, null, "é"]}"#.into()))
    );
}

/// FIELD-NOTES: the first fake ROTATE's file name carries 4 CRC bytes; positions name the real
/// file.
#[tokio::test]
async fn positions_name_the_real_binlog_file() {
    let db = database();
    db.sql("CREATE TABLE t (id INT PRIMARY KEY)").unwrap();
    let mut stream = open(&db, &["t"], StartPosition::Current).await;
    db.sql("INSERT INTO t VALUES (1)").unwrap();
    let txn = next_transaction(&mut stream).await;
    let status = db.sql("SHOW MASTER STATUS").unwrap();
    let file = status.split('\t').next().unwrap();
    assert_eq!(mysql_position(&txn).file, file);
    stream.shutdown().await;
}

/// The zero date is a clear error naming table and column, never a changed value.
#[tokio::test]
async fn zero_date_is_a_clear_error() {
    let db = database();
    db.sql("CREATE TABLE t (id INT PRIMARY KEY, d DATE)")
        .unwrap();
    let mut stream = open(&db, &["t"], StartPosition::Current).await;
    db.sql("SET sql_mode = ''; INSERT INTO t VALUES (1, '0000-00-00')")
        .unwrap();
    let error = next_error(&mut stream).await;
    assert!(
        matches!(&error, MysqlStreamError::Type(TypeError::BadValue { column, .. }) if column == "d"),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("zero date") && message.contains(&format!("{}.t", db.name())),
        "{message}"
    );
    assert!(!error.is_transient());
}

/// A transaction written with `skip_replication=1` (how duplex's applier writes) is an echo.
#[tokio::test]
async fn skip_replication_transactions_are_echoes() {
    let db = database();
    db.sql("CREATE TABLE t (id INT PRIMARY KEY, v TEXT)")
        .unwrap();
    let mut stream = open(&db, &["t"], StartPosition::Current).await;
    db.sql(
        "SET SESSION skip_replication = 1; BEGIN; INSERT INTO t VALUES (1, 'applied'); \
         UPDATE t SET v = 'again' WHERE id = 1; COMMIT;",
    )
    .unwrap();
    db.sql("INSERT INTO t VALUES (2, 'local')").unwrap();
    let echo = next_transaction(&mut stream).await;
    assert_eq!(echo.origin, Origin::Duplex);
    assert_eq!(echo.events.len(), 2);
    let local = next_transaction(&mut stream).await;
    assert_eq!(local.origin, Origin::Local);
    assert_eq!(after(&local, 0).get("v"), Some(&text("local")));
    stream.shutdown().await;
}

/// Resuming at a delivered position yields the next transaction; none is repeated or skipped.
#[tokio::test]
async fn resume_from_a_position_repeats_nothing() {
    let db = database();
    db.sql("CREATE TABLE t (id INT PRIMARY KEY)").unwrap();
    let mut stream = open(&db, &["t"], StartPosition::Current).await;
    for id in 1..=3 {
        db.sql(&format!("INSERT INTO t VALUES ({id})")).unwrap();
    }
    let first = next_transaction(&mut stream).await;
    assert_eq!(after(&first, 0).get("id"), Some(&Value::Int(1)));
    stream.shutdown().await;

    let resume_at = mysql_position(&first);
    let mut resumed = open(&db, &["t"], StartPosition::At(resume_at.clone())).await;
    let mut ids = Vec::new();
    let mut last = resume_at;
    for _ in 0..2 {
        let txn = next_transaction(&mut resumed).await;
        let position = mysql_position(&txn);
        assert!(
            last.compare(&position).unwrap().is_lt(),
            "{last} then {position}"
        );
        last = position;
        ids.push(after(&txn, 0).get("id").cloned().unwrap());
    }
    assert_eq!(ids, vec![Value::Int(2), Value::Int(3)]);
    resumed.shutdown().await;
}

/// Rows of unmapped tables are not emitted, also inside a transaction that touches both; a
/// transaction with only unmapped rows is not delivered at all.
#[tokio::test]
async fn unmapped_tables_are_not_emitted() {
    let db = database();
    db.sql("CREATE TABLE t (id INT PRIMARY KEY); CREATE TABLE other (id INT PRIMARY KEY)")
        .unwrap();
    let mut stream = open(&db, &["t"], StartPosition::Current).await;
    db.sql(
        "BEGIN; INSERT INTO other VALUES (1); INSERT INTO t VALUES (1); \
         INSERT INTO other VALUES (2); COMMIT; INSERT INTO other VALUES (3); \
         INSERT INTO t VALUES (2);",
    )
    .unwrap();
    let both = next_transaction(&mut stream).await;
    assert_eq!(both.events.len(), 1);
    assert_eq!(both.events[0].table, TableName::new(db.name(), "t"));
    let next = next_transaction(&mut stream).await;
    assert_eq!(after(&next, 0).get("id"), Some(&Value::Int(2)));
    stream.shutdown().await;
}

/// An idle server is told apart from a dead connection: heartbeats arrive, carrying the
/// position the stream has reached.
#[tokio::test]
async fn idle_server_sends_heartbeats_with_the_position() {
    let db = database();
    db.sql("CREATE TABLE t (id INT PRIMARY KEY)").unwrap();
    let mut stream = open(&db, &["t"], StartPosition::Current).await;
    let item = timeout_at(Instant::now() + DEADLINE, stream.next())
        .await
        .expect("no heartbeat before the deadline")
        .unwrap();
    match item {
        StreamItem::Heartbeat(position) => {
            assert!(
                Position::Mysql(stream.position().clone())
                    .compare(&position)
                    .unwrap()
                    .is_eq()
            );
        }
        StreamItem::Transaction(txn) => panic!("unexpected {txn:?}"),
        StreamItem::Part(part) => panic!("unexpected {part:?}"),
        StreamItem::Shape(shape) => panic!("unexpected {shape:?}"),
    }
    stream.shutdown().await;
}

/// ALTER TABLE adding a nullable column is followed; dropping a column stops the stream.
#[tokio::test]
async fn added_nullable_columns_are_followed_and_other_ddl_stops() {
    let db = database();
    db.sql("CREATE TABLE t (id INT PRIMARY KEY, a INT)")
        .unwrap();
    let mut stream = open(&db, &["t"], StartPosition::Current).await;
    db.sql("ALTER TABLE t ADD COLUMN b VARCHAR(10) NULL; INSERT INTO t VALUES (1, 2, 'x')")
        .unwrap();
    let txn = next_transaction(&mut stream).await;
    assert_eq!(
        after(&txn, 0),
        &row(&[
            ("id", Value::Int(1)),
            ("a", Value::Int(2)),
            ("b", text("x"))
        ])
    );
    db.sql("ALTER TABLE t DROP COLUMN a; INSERT INTO t VALUES (2, 'y')")
        .unwrap();
    let error = next_error(&mut stream).await;
    assert!(
        matches!(error, MysqlStreamError::SchemaChanged { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("DROP COLUMN a"), "{error}");
    assert!(!error.is_transient());
}

/// A position the server no longer has is a definite error that says to run a backfill.
#[tokio::test]
async fn purged_position_says_to_backfill() {
    let db = database();
    db.sql("CREATE TABLE t (id INT PRIMARY KEY)").unwrap();
    let gone = BinlogPosition::new("binlog.999998", 4);
    let mut config = MysqlStreamConfig::new("maria", db.url(), [TableName::new(db.name(), "t")]);
    config.start = StartPosition::At(gone);
    let error = match MysqlStream::start(config).await {
        Err(e) => e,
        Ok(mut stream) => next_error(&mut stream).await,
    };
    assert!(
        matches!(error, MysqlStreamError::PositionPurged { .. }),
        "{error:?}"
    );
    // The link names the command that recovers (`duplex backfill --resync`); the stream says
    // what was lost.
    assert!(
        error.to_string().contains("must be copied again"),
        "{error}"
    );
    assert!(!error.is_transient());
}

/// A server killed under the reader is a transient error; a new stream started at the last
/// delivered position after the restart continues with the next transaction, nothing repeated.
#[tokio::test]
async fn server_killed_under_the_reader_is_transient_and_resumable() {
    let server = MariaServer::start(MariaOptions::default()).unwrap();
    server
        .sql(
            "",
            "CREATE DATABASE d; CREATE TABLE d.t (id INT PRIMARY KEY) ENGINE=InnoDB",
        )
        .unwrap();
    let mut config = MysqlStreamConfig::new("crash", server.url("d"), [TableName::new("d", "t")]);
    config.heartbeat = Duration::from_millis(500);
    let mut stream = MysqlStream::start(config.clone()).await.unwrap();
    server.sql("d", "INSERT INTO t VALUES (1)").unwrap();
    let first = next_transaction(&mut stream).await;

    server.shut_down(Shutdown::Immediate).unwrap();
    let error = next_error(&mut stream).await;
    assert!(error.is_transient(), "{error:?}");
    drop(stream);

    server.start_again().unwrap();
    server.sql("d", "INSERT INTO t VALUES (2)").unwrap();
    config.start = StartPosition::At(mysql_position(&first));
    let mut resumed = MysqlStream::start(config).await.unwrap();
    let second = next_transaction(&mut resumed).await;
    assert_eq!(after(&second, 0).get("id"), Some(&Value::Int(2)));
    assert!(
        mysql_position(&first)
            .compare(&mysql_position(&second))
            .unwrap()
            .is_lt()
    );
    resumed.shutdown().await;
}

/// Resuming by MariaDB GTID (`@slave_connect_state`) yields the next transaction at the same
/// file and offset the file-and-offset stream reported; an idle GTID stream learns its file
/// and offset from the first heartbeat.
#[tokio::test]
async fn resume_by_gtid_matches_resume_by_position() {
    let db = database();
    db.sql("CREATE TABLE t (id INT PRIMARY KEY)").unwrap();
    let mut stream = open(&db, &["t"], StartPosition::Current).await;
    db.sql("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)")
        .unwrap();
    let first = next_transaction(&mut stream).await;
    let second = next_transaction(&mut stream).await;
    stream.shutdown().await;

    let gtid = mysql_position(&first).gtid.expect("a GTID position");
    let mut by_gtid = open(&db, &["t"], StartPosition::Gtid(gtid)).await;
    let resumed = next_transaction(&mut by_gtid).await;
    assert_eq!(resumed.events, second.events);
    assert_eq!(resumed.position, second.position);
    by_gtid.shutdown().await;

    let latest = mysql_position(&second).gtid.unwrap();
    let mut idle = open(&db, &["t"], StartPosition::Gtid(latest)).await;
    let heartbeat = match timeout_at(Instant::now() + DEADLINE, idle.next())
        .await
        .expect("no heartbeat before the deadline")
        .unwrap()
    {
        StreamItem::Heartbeat(Position::Mysql(position)) => position,
        StreamItem::Heartbeat(other) => panic!("not a binlog position: {other:?}"),
        StreamItem::Transaction(txn) => panic!("unexpected {txn:?}"),
        StreamItem::Part(part) => panic!("unexpected {part:?}"),
        StreamItem::Shape(shape) => panic!("unexpected {shape:?}"),
    };
    assert_eq!(heartbeat.file, mysql_position(&second).file);
    assert!(
        heartbeat.offset >= mysql_position(&second).offset,
        "{heartbeat}"
    );
    idle.shutdown().await;
}

#[path = "mysql_stream/echoes.rs"]
mod echoes;
