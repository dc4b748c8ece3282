//! The MySQL/MariaDB applier against a real MariaDB, for what only MySQL/MariaDB has: every
//! one of its types value by value (unsigned integers, DECIMAL(65,30), negative and long TIME,
//! ENUM, SET, YEAR, BINARY/CHAR padding) and how a conditional write compares them, the values
//! only it refuses, and the applying session's settings (skip_replication and UTC seen from a
//! trigger inside the server and in the binlog, strict mode by its effect). Everything every
//! kind must do is in the conformance suite (`apply_conformance`).

mod events;

use chrono::{DateTime, NaiveDate, Utc};
use duplex_connectors::mysql::{BinlogPosition, MysqlApplier, connect};
use duplex_connectors::{
    Applier, ApplyError, ApplyOptions, ChangeEvent, Op, Origin, Position, Row, TableName,
    TableRoute, Transaction, Value,
};
use duplex_testkit::{MariaDatabase, shared_mariadb};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use events::{
    CONDITIONAL, big_text, dec, insert, row, skipped, source_table, update, update_from, with,
};

const COLUMNS: &[&str] = &[
    "id", "ti", "tu", "si", "mi", "i", "iu", "bi", "bu", "dc", "d2", "f", "db", "label", "vc",
    "ch", "bin", "bl", "d", "tm", "dt", "tsz", "u", "j", "e", "st", "yr",
];

struct Target {
    db: MariaDatabase,
    /// Source site name, unique per test: `duplex.positions` is shared by the whole server.
    source: String,
}

impl Target {
    fn table(&self) -> TableName {
        TableName::new(self.db.name(), "items")
    }

    fn route(&self) -> TableRoute {
        let mut route = TableRoute::same_names(source_table(), self.table(), COLUMNS, &["id"]);
        for (source, target) in &mut route.columns {
            if source == "label" {
                *target = "t".into();
            }
        }
        route
    }

    async fn applier(&self, options: ApplyOptions) -> MysqlApplier {
        MysqlApplier::connect(&self.db.url(), None, vec![self.route()], options)
            .await
            .unwrap()
    }

    fn txn(&self, offset: u64, events: Vec<ChangeEvent>) -> Transaction {
        Transaction {
            source: self.source.clone(),
            position: Position::Mysql(BinlogPosition::new("mysql-bin.000007", offset)),
            commit_time: Utc::now(),
            origin: Origin::Local,
            events,
        }
    }

    fn position(&self, offset: u64) -> Option<Position> {
        Some(Position::Mysql(BinlogPosition::new(
            "mysql-bin.000007",
            offset,
        )))
    }

    async fn reader(&self) -> Conn {
        let mut conn = connect(&self.db.url(), None).await.unwrap();
        conn.query_drop("SET time_zone = '+00:00'").await.unwrap();
        conn
    }
}

fn setup() -> Target {
    let db = shared_mariadb().create_database();
    db.sql(
        "CREATE TABLE items ( \
            id BIGINT PRIMARY KEY, ti TINYINT, tu TINYINT UNSIGNED, si SMALLINT, mi MEDIUMINT, \
            i INT, iu INT UNSIGNED, bi BIGINT, bu BIGINT UNSIGNED, dc DECIMAL(65,30), \
            d2 DECIMAL(10,2) UNSIGNED, f FLOAT, db DOUBLE, t LONGTEXT, vc VARCHAR(20), \
            ch CHAR(3), bin VARBINARY(16), bl LONGBLOB, d DATE, tm TIME(6), dt DATETIME(6), \
            tsz TIMESTAMP(6) NULL, u UUID, j JSON, e ENUM('sad','happy'), st SET('a','b'), \
            yr YEAR, untouched VARCHAR(20) DEFAULT 'default' \
         ) ENGINE = InnoDB",
    )
    .unwrap();
    let source = format!("shop_{}", db.name());
    Target { db, source }
}

fn full_row(id: i64) -> Row {
    row(vec![
        ("id", Value::Int(id)),
        ("ti", Value::Int(-128)),
        ("tu", Value::UInt(255)),
        ("si", Value::Int(-32768)),
        ("mi", Value::Int(-8_388_608)),
        ("i", Value::Int(i64::from(i32::MIN))),
        ("iu", Value::UInt(u64::from(u32::MAX))),
        ("bi", Value::Int(i64::MIN)),
        ("bu", Value::UInt(u64::MAX)),
        (
            "dc",
            dec("-12345678901234567890123456789012345.123456789012345678901234567890"),
        ),
        ("d2", dec("99999999.99")),
        ("f", Value::Float(f64::from(0.1f32))),
        ("db", Value::Float(f64::MAX)),
        ("label", Value::Text("héllo 🦀 wörld".into())),
        ("vc", Value::Text("varchar".into())),
        ("ch", Value::Text("ab".into())),
        ("bin", Value::Bytes(vec![0, 1, 0xff, 0])),
        ("bl", Value::Bytes(vec![0; 3])),
        (
            "d",
            Value::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()),
        ),
        (
            "tm",
            Value::Time(-(838 * 3600 + 59 * 60 + 59) * 1_000_000 - 999_999),
        ),
        (
            "dt",
            Value::Timestamp("1000-01-01T00:00:00.000001".parse().unwrap()),
        ),
        (
            "tsz",
            Value::TimestampTz(
                DateTime::parse_from_rfc3339("2024-06-30T23:59:59.123456+02:00")
                    .unwrap()
                    .with_timezone(&Utc),
            ),
        ),
        (
            "u",
            Value::Uuid("123e4567-e89b-12d3-a456-426614174000".parse().unwrap()),
        ),
        ("j", Value::Json(r#"{"b": 1, "a": [1, "🦀"]}"#.into())),
        ("e", Value::Text("happy".into())),
        ("st", Value::Text("a,b".into())),
        ("yr", Value::Int(2155)),
    ])
}

fn full_row_expected() -> Vec<Option<String>> {
    expect(&[
        Some("-128"),
        Some("255"),
        Some("-32768"),
        Some("-8388608"),
        Some("-2147483648"),
        Some("4294967295"),
        Some("-9223372036854775808"),
        Some("18446744073709551615"),
        Some("-12345678901234567890123456789012345.123456789012345678901234567890"),
        Some("99999999.99"),
        Some("0.1"),
        Some("1.7976931348623157e308"),
        Some("héllo 🦀 wörld"),
        Some("varchar"),
        Some("ab"),
        Some("0001FF00"),
        Some("000000"),
        Some("2024-02-29"),
        Some("-838:59:59.999999"),
        Some("1000-01-01 00:00:00.000001"),
        Some("2024-06-30 21:59:59.123456"),
        Some("123e4567-e89b-12d3-a456-426614174000"),
        Some(r#"{"b": 1, "a": [1, "🦀"]}"#),
        Some("happy"),
        Some("a,b"),
        Some("2155"),
        Some("default"),
    ])
}

fn other_row(id: i64) -> Row {
    row(vec![
        ("id", Value::Int(id)),
        ("ti", Value::Bool(true)),
        ("tu", Value::Int(0)),
        ("si", Value::UInt(32767)),
        ("mi", Value::Int(8_388_607)),
        ("i", Value::Int(0)),
        ("iu", Value::Int(0)),
        ("bi", Value::Int(i64::MAX)),
        ("bu", Value::UInt(0)),
        ("dc", dec("0.000000000000000000000000000001")),
        ("d2", Value::Int(0)),
        ("f", Value::Float(-3.5)),
        ("db", Value::Float(-0.000_000_1)),
        ("label", Value::Text(big_text())),
        ("vc", Value::Text(String::new())),
        ("ch", Value::Text("xyz".into())),
        ("bin", Value::Bytes(Vec::new())),
        ("bl", Value::Bytes((0..=255).collect())),
        ("d", Value::Date(NaiveDate::from_ymd_opt(1, 1, 1).unwrap())),
        ("tm", Value::Time(90_000_000_001)),
        (
            "dt",
            Value::Timestamp("9999-12-31T23:59:59.999999".parse().unwrap()),
        ),
        (
            "tsz",
            Value::TimestampTz(
                DateTime::parse_from_rfc3339("1970-01-01T00:00:01Z")
                    .unwrap()
                    .with_timezone(&Utc),
            ),
        ),
        (
            "u",
            Value::Uuid("00000000-0000-0000-0000-000000000000".parse().unwrap()),
        ),
        ("j", Value::Json("[]".into())),
        ("e", Value::Text("sad".into())),
        ("st", Value::Text(String::new())),
        ("yr", Value::Int(1901)),
    ])
}

fn other_row_expected() -> Vec<Option<String>> {
    let big = big_text();
    let all_bytes: String = (0..=255u8).map(|b| format!("{b:02X}")).collect();
    expect(&[
        Some("1"),
        Some("0"),
        Some("32767"),
        Some("8388607"),
        Some("0"),
        Some("0"),
        Some("9223372036854775807"),
        Some("0"),
        Some("0.000000000000000000000000000001"),
        Some("0.00"),
        Some("-3.5"),
        Some("-0.0000001"),
        Some(&big),
        Some(""),
        Some("xyz"),
        Some(""),
        Some(&all_bytes),
        Some("0001-01-01"),
        Some("25:00:00.000001"),
        Some("9999-12-31 23:59:59.999999"),
        Some("1970-01-01 00:00:01.000000"),
        Some("00000000-0000-0000-0000-000000000000"),
        Some("[]"),
        Some("sad"),
        Some(""),
        Some("1901"),
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

fn null_row_expected() -> Vec<Option<String>> {
    let mut nulls = vec![None; COLUMNS.len() - 1];
    nulls.push(Some("default"));
    expect(&nulls)
}

fn expect(values: &[Option<&str>]) -> Vec<Option<String>> {
    values.iter().map(|v| v.map(str::to_owned)).collect()
}

/// Every column of the target row as MariaDB prints it (binary columns in hex).
async fn read_row(conn: &mut Conn, id: i64) -> Option<Vec<Option<String>>> {
    let row: Option<mysql_async::Row> = conn
        .query_first(format!(
            "SELECT ti, tu, si, mi, i, iu, bi, bu, dc, d2, f, db, t, vc, ch, HEX(bin), HEX(bl), \
                    d, tm, dt, tsz, u, j, e, st, yr, untouched FROM items WHERE id = {id}"
        ))
        .await
        .unwrap();
    let row = row?;
    Some(
        row.unwrap()
            .into_iter()
            .map(|v| match v {
                mysql_async::Value::NULL => None,
                mysql_async::Value::Bytes(b) => Some(String::from_utf8(b).unwrap()),
                other => panic!("text protocol gave {other:?}"),
            })
            .collect(),
    )
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
        assert!(
            a == e,
            "column {}: {:?} != {:?}",
            COLUMNS[i + 1],
            short(a),
            short(e)
        );
    }
}

async fn count(conn: &mut Conn) -> u64 {
    conn.query_first("SELECT COUNT(*) FROM items")
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn mysql_every_type_round_trips_value_by_value() {
    let t = setup();
    let mut applier = t.applier(ApplyOptions::default()).await;
    assert!(applier.is_mariadb());
    let batch = [
        t.txn(1000, vec![insert(full_row(1)), insert(other_row(2))]),
        t.txn(2000, vec![insert(null_row(3))]),
    ];
    applier.apply(&batch).await.unwrap();
    let mut conn = t.reader().await;
    assert_row(read_row(&mut conn, 1).await, Some(full_row_expected()));
    assert_row(read_row(&mut conn, 2).await, Some(other_row_expected()));
    assert_row(read_row(&mut conn, 3).await, Some(null_row_expected()));
    // Bit-exact floats, read back in binary.
    let (f, db): (f32, f64) = conn
        .exec_first("SELECT f, db FROM items WHERE id = ?", (1,))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f.to_bits(), 0.1f32.to_bits());
    assert_eq!(db.to_bits(), f64::MAX.to_bits());
    assert_eq!(applier.position(&t.source).await.unwrap(), t.position(2000));
    let text: String = conn
        .exec_first(
            "SELECT position FROM duplex.positions WHERE source = ?",
            (&t.source,),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        text,
        r#"{"Mysql":{"file":"mysql-bin.000007","offset":2000,"gtid":null}}"#
    );
}

#[tokio::test]
async fn mysql_values_the_column_cannot_hold_are_refused_by_name() {
    let t = setup();
    let mut applier = t.applier(ApplyOptions::default()).await;
    let cases = [
        ("db", Value::Float(f64::NAN), "NaN"),
        ("db", Value::Float(f64::INFINITY), "NaN or ±Infinity"),
        ("dc", dec("NaN"), "NaN"),
        ("d2", dec("-1"), "UNSIGNED"),
        ("d2", dec("1.005"), "rounded"),
        ("ti", Value::Int(128), "range"),
        ("tu", Value::Int(-1), "range"),
        ("bi", Value::UInt(u64::MAX), "range"),
        ("tm", Value::Time(839 * 3_600_000_000), "838:59:59"),
    ];
    for (column, value, words) in cases {
        let row = with(full_row(1), column, value.clone());
        let err = applier
            .apply(&[t.txn(10, vec![insert(row)])])
            .await
            .unwrap_err();
        let ApplyError::Value(refusal) = &err else {
            panic!("{column} = {value:?}: unexpected {err:?}");
        };
        let target = if column == "label" { "t" } else { column };
        assert_eq!(refusal.column, target);
        assert_eq!(refusal.table, t.table());
        assert!(!err.is_transient());
        assert!(
            err.to_string().contains(words),
            "{column} = {value:?}: {err}"
        );
    }
    let mut conn = t.reader().await;
    assert_eq!(count(&mut conn).await, 0);
    assert_eq!(applier.position(&t.source).await.unwrap(), None);
}

#[tokio::test]
async fn mysql_applying_session_is_marked_utc_and_strict() {
    let t = setup();
    t.db.sql(
        "CREATE TABLE audit (id BIGINT, skip_replication INT, tz VARCHAR(64), mode TEXT); \
         CREATE TRIGGER items_audit AFTER INSERT ON items FOR EACH ROW \
           INSERT INTO audit VALUES (NEW.id, @@session.skip_replication, \
                                     @@session.time_zone, @@session.sql_mode)",
    )
    .unwrap();
    let mut applier = t.applier(ApplyOptions::default()).await;
    applier
        .apply(&[t.txn(10, vec![insert(full_row(1))])])
        .await
        .unwrap();
    let mut conn = t.reader().await;
    let (skip, tz): (i64, String) = conn
        .query_first("SELECT skip_replication, tz FROM audit WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(skip, 1);
    assert_eq!(tz, "+00:00");
    // Strict mode: a value too long for VARCHAR(20) is an error, not a truncation warning.
    let long = with(full_row(2), "vc", Value::Text("x".repeat(21)));
    let err = applier
        .apply(&[t.txn(20, vec![insert(long)])])
        .await
        .unwrap_err();
    let ApplyError::MysqlWrite { source, .. } = &err else {
        panic!("unexpected {err:?}");
    };
    let text = format!("{:?}", source);
    assert!(text.contains("1406"), "{text}");
    assert_eq!(count(&mut conn).await, 1);
}

#[tokio::test]
async fn mysql_duplex_writes_carry_the_skip_replication_flag_in_the_binlog() {
    use futures_util::StreamExt;
    use mysql_async::BinlogStreamRequest;
    use mysql_async::binlog::events::EventData;

    const SKIP_REPLICATION: u16 = 0x8000;
    let t = setup();
    let mut admin = connect(&t.db.url(), None).await.unwrap();
    let status: mysql_async::Row = admin
        .query_first("SHOW MASTER STATUS")
        .await
        .unwrap()
        .expect("the shared MariaDB test server logs a binlog");
    let (file, pos): (String, u64) = (status.get(0).unwrap(), status.get(1).unwrap());
    let mut applier = t.applier(ApplyOptions::default()).await;
    applier
        .apply(&[t.txn(
            10,
            vec![
                insert(full_row(1)),
                update(1, with(full_row(1), "i", Value::Int(3))),
            ],
        )])
        .await
        .unwrap();
    t.db.sql("INSERT INTO items (id) VALUES (99)").unwrap();

    let server_id = 1_000_000 + std::process::id() % 1_000_000;
    let mut stream = admin
        .get_binlog_stream(
            BinlogStreamRequest::new(server_id)
                .with_filename(file.as_bytes())
                .with_pos(pos)
                .with_non_blocking(),
        )
        .await
        .unwrap();
    // Group the row events into transactions (ending with their XID event) and keep those
    // touching our table.
    let mut current: Vec<(u16, Vec<String>)> = Vec::new();
    let mut ours = Vec::new();
    while let Some(event) = stream.next().await {
        let event = event.unwrap();
        let flags = event.header().flags_raw();
        let mut tables = Vec::new();
        let mut end = false;
        match event.read_data() {
            Ok(Some(EventData::TableMapEvent(tm))) => {
                tables.push(format!("{}.{}", tm.database_name(), tm.table_name()));
            }
            Ok(Some(EventData::RowsEvent(_))) => {}
            Ok(Some(EventData::XidEvent(_))) => end = true,
            // Rotate, format description, BEGIN, annotations, other tests' DDL.
            _ => continue,
        }
        current.push((flags, tables));
        if end {
            let touched: Vec<String> = current.iter().flat_map(|(_, t)| t.clone()).collect();
            if touched.contains(&format!("{}.items", t.db.name())) {
                ours.push(std::mem::take(&mut current));
            }
            current.clear();
        }
    }
    assert_eq!(ours.len(), 2, "duplex's transaction and the application's");
    let flagged = |txn: &[(u16, Vec<String>)]| {
        txn.iter()
            .map(|(flags, _)| flags & SKIP_REPLICATION != 0)
            .collect::<Vec<_>>()
    };
    let positions = |txn: &[(u16, Vec<String>)]| {
        txn.iter()
            .any(|(_, t)| t.contains(&"duplex.positions".to_owned()))
    };
    // duplex's: every event flagged, and the position recorded in the same transaction.
    assert!(positions(&ours[0]));
    assert!(
        flagged(&ours[0]).iter().all(|f| *f),
        "{:?}",
        flagged(&ours[0])
    );
    // The application's: no event flagged.
    assert!(!positions(&ours[1]));
    assert!(
        flagged(&ours[1]).iter().all(|f| !*f),
        "{:?}",
        flagged(&ours[1])
    );
}

/// `expected` with the column named `column` replaced.
fn expected_with(
    mut expected: Vec<Option<String>>,
    column: &str,
    value: &str,
) -> Vec<Option<String>> {
    let i = COLUMNS[1..].iter().position(|c| *c == column).unwrap();
    expected[i] = Some(value.into());
    expected
}

/// The whole row as expected, every MySQL/MariaDB type included, lets a conditional update
/// through; one value differing from what is stored (unsigned, DECIMAL(65,30) in its last
/// digit, negative TIME, ENUM, SET, YEAR, CHAR) holds it back.
#[tokio::test]
async fn mysql_conditional_update_compares_every_type_as_stored() {
    let t = setup();
    let mut applier = t.applier(CONDITIONAL).await;
    applier
        .apply(&[t.txn(
            10,
            vec![
                insert(full_row(1)),
                insert(other_row(2)),
                insert(full_row(3)),
            ],
        )])
        .await
        .unwrap();
    let mut conn = t.reader().await;
    let changed = |row: Row| with(row, "vc", Value::Text("changed".into()));

    applier
        .apply(&[t.txn(
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
        read_row(&mut conn, 1).await,
        Some(expected_with(full_row_expected(), "vc", "changed")),
    );
    assert_row(
        read_row(&mut conn, 2).await,
        Some(expected_with(other_row_expected(), "vc", "changed")),
    );

    let differing = [
        ("tu", Value::UInt(254)),
        ("bu", Value::UInt(u64::MAX - 1)),
        (
            "dc",
            dec("-12345678901234567890123456789012345.123456789012345678901234567891"),
        ),
        ("d2", dec("99999999.98")),
        (
            "tm",
            Value::Time(-(838 * 3600 + 59 * 60 + 59) * 1_000_000 - 999_998),
        ),
        (
            "dt",
            Value::Timestamp("1000-01-01T00:00:00.000002".parse().unwrap()),
        ),
        ("e", Value::Text("sad".into())),
        ("st", Value::Text("a".into())),
        ("yr", Value::Int(2154)),
        ("ch", Value::Text("AB".into())),
        ("bl", Value::Bytes(vec![0; 2])),
    ];
    for (offset, (column, value)) in (30..).zip(differing) {
        let before = with(full_row(3), column, value);
        applier
            .apply(&[t.txn(
                offset,
                vec![update_from(3, Some(before), changed(full_row(3)))],
            )])
            .await
            .unwrap();
        assert_eq!(applier.take_skipped(), [skipped(Op::Update, 3)], "{column}");
        assert_row(read_row(&mut conn, 3).await, Some(full_row_expected()));
    }
}

/// `BINARY(n)` pads with 0x00 and `CHAR(n)` drops trailing spaces when stored: an expected
/// value compares as it is stored.
#[tokio::test]
async fn mysql_conditional_compares_padded_columns_as_stored() {
    let db = shared_mariadb().create_database();
    db.sql("CREATE TABLE pads (id INT PRIMARY KEY, b BINARY(4), c CHAR(4), n INT) ENGINE = InnoDB")
        .unwrap();
    let table = TableName::new(db.name(), "pads");
    let route = TableRoute::same_names(source_table(), table, &["id", "b", "c", "n"], &["id"]);
    let mut applier = MysqlApplier::connect(&db.url(), None, vec![route], CONDITIONAL)
        .await
        .unwrap();
    let source = format!("pads_{}", db.name());
    let txn = |offset, events| Transaction {
        source: source.clone(),
        position: Position::Mysql(BinlogPosition::new("mysql-bin.000001", offset)),
        commit_time: Utc::now(),
        origin: Origin::Local,
        events,
    };
    let pads = |b: &[u8], c: &str, n: i64| {
        row(vec![
            ("id", Value::Int(1)),
            ("b", Value::Bytes(b.to_vec())),
            ("c", Value::Text(c.into())),
            ("n", Value::Int(n)),
        ])
    };
    applier
        .apply(&[txn(10, vec![insert(pads(&[1, 2], "ab", 0))])])
        .await
        .unwrap();
    applier
        .apply(&[txn(
            20,
            vec![
                update_from(1, Some(pads(&[1, 2], "ab", 0)), pads(&[1, 2], "ab", 1)),
                update_from(
                    1,
                    Some(pads(&[1, 2, 0, 0], "ab", 1)),
                    pads(&[1, 2], "ab", 2),
                ),
                update_from(
                    1,
                    Some(pads(&[1, 2, 0, 0], "AB", 2)),
                    pads(&[1, 2], "ab", 3),
                ),
            ],
        )])
        .await
        .unwrap();
    assert_eq!(applier.take_skipped().len(), 1);
    let mut conn = connect(&db.url(), None).await.unwrap();
    let n: Option<i64> = conn
        .query_first("SELECT n FROM pads WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(n, Some(2));
}
