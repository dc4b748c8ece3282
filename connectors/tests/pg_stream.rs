//! The PostgreSQL change stream against a real server (the shared test server from
//! `duplex-testkit`, wal_level=logical), each test in a fresh database with its own slot.
//!
//! Every wait is a poll with a deadline; every slot is dropped at the end (the guard drops it
//! even when a test fails, since an abandoned slot pins WAL and blocks dropping the database).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveDateTime};
use duplex_connectors::postgres::{Lsn, PgStream, PgStreamConfig, PgStreamError, connect};
use duplex_connectors::{
    ChangeEvent, Op, Origin, Position, Row, StreamItem, TableName, Transaction, Value,
};
use duplex_testkit::{PgDatabase, PgOptions, PgServer};
use tokio_postgres::Client;

const DEADLINE: Duration = Duration::from_secs(30);

/// A fresh database and the name of the slot a test uses in it; dropping it drops the slot
/// (terminating a session that still holds it) before the database.
struct Fixture {
    slot: String,
    db: PgDatabase,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::in_database(duplex_testkit::shared_pg().create_database())
    }

    fn in_database(db: PgDatabase) -> Fixture {
        Fixture {
            slot: format!("s_{}", db.name()),
            db,
        }
    }

    fn config(&self, tables: &[&str]) -> PgStreamConfig {
        PgStreamConfig::new(
            "pg1",
            self.db.url(),
            self.slot.clone(),
            "duplex_pub",
            tables.iter().map(|t| t.parse().unwrap()).collect(),
        )
    }

    async fn client(&self) -> Client {
        connect(&self.db.url(), None).await.expect("connect")
    }

    async fn finish(&self, stream: PgStream) {
        stream.shutdown().await.expect("clean shutdown");
        let dropped = PgStream::drop_slot(&self.db.url(), None, &self.slot, DEADLINE)
            .await
            .expect("drop the slot");
        assert!(dropped, "the slot existed");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let sql = format!(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = '{0}' AND active_pid IS NOT NULL; \
             SELECT pg_sleep(0.2) FROM pg_replication_slots WHERE slot_name = '{0}' AND active; \
             SELECT pg_drop_replication_slot('{0}') FROM pg_replication_slots \
             WHERE slot_name = '{0}'",
            self.slot
        );
        if let Err(e) = self.db.psql(&sql) {
            eprintln!("could not drop slot {}: {e}", self.slot);
        }
    }
}

/// The next transaction, skipping heartbeats; fails after [`DEADLINE`].
async fn next_transaction(stream: &mut PgStream) -> Transaction {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Err(_) => panic!("no transaction within {DEADLINE:?}"),
            Ok(Err(e)) => panic!("stream error: {e:?}"),
            Ok(Ok(StreamItem::Heartbeat(_))) => {}
            Ok(Ok(StreamItem::Transaction(tx))) => return tx,
            Ok(Ok(StreamItem::Part(part))) => panic!("unexpected part {part:?}"),
            Ok(Ok(StreamItem::Shape(shape))) => panic!("unexpected shape {shape:?}"),
        }
    }
}

/// The next error, skipping heartbeats; fails on a transaction or after [`DEADLINE`].
async fn next_error(stream: &mut PgStream) -> PgStreamError {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Err(_) => panic!("no error within {DEADLINE:?}"),
            Ok(Err(e)) => return e,
            Ok(Ok(StreamItem::Heartbeat(_))) => {}
            Ok(Ok(StreamItem::Transaction(tx))) => panic!("unexpected transaction {tx:?}"),
            Ok(Ok(StreamItem::Part(part))) => panic!("unexpected part {part:?}"),
            Ok(Ok(StreamItem::Shape(shape))) => panic!("unexpected shape {shape:?}"),
        }
    }
}

/// Runs each statement in a transaction of its own (a multi-statement simple query would be
/// one implicit transaction).
async fn each(client: &Client, statements: &[&str]) {
    for sql in statements {
        client.batch_execute(sql).await.unwrap();
    }
}

fn lsn(tx: &Transaction) -> Lsn {
    match tx.position {
        Position::Postgres(lsn) => lsn,
        ref other => panic!("not an LSN: {other:?}"),
    }
}

fn row(columns: &[(&str, Value)]) -> Row {
    columns
        .iter()
        .map(|(c, v)| (Arc::<str>::from(*c), v.clone()))
        .collect()
}

fn key(id: i64) -> Row {
    row(&[("id", Value::Int(id))])
}

fn ts(text: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").unwrap()
}

fn dec(text: &str) -> Value {
    Value::Decimal(text.parse().unwrap())
}

/// Polls the slot's confirmed position until it reaches `lsn`.
async fn wait_confirmed(client: &Client, slot: &str, lsn: Lsn) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let confirmed: String = client
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .get(0);
        let confirmed: Lsn = confirmed.parse().unwrap();
        if confirmed >= lsn {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "slot stayed at {confirmed}, expected {lsn}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const MANY_TYPES: &str = r#"
    CREATE SCHEMA sales;
    CREATE TYPE sales.mood AS ENUM ('sad', 'happy 🙂');
    CREATE TABLE sales."Order Items" (
        id int8 PRIMARY KEY,
        b bool, i2 int2, i4 int4, i8 int8,
        n numeric, n2 numeric(10,2), f4 real, f8 float8,
        t text, vc varchar(20), c char(5), by bytea,
        d date, tm time, ts timestamp, tstz timestamptz,
        u uuid, j json, jb jsonb, m sales.mood
    );
"#;

const FORTY_DIGITS: &str = "-1234567890123456789012345678901234567890.0123456789";

fn full_row_1() -> Row {
    row(&[
        ("id", Value::Int(1)),
        ("b", Value::Bool(true)),
        ("i2", Value::Int(-32768)),
        ("i4", Value::Int(2_147_483_647)),
        ("i8", Value::Int(i64::MIN)),
        ("n", dec(FORTY_DIGITS)),
        ("n2", dec("-12.30")),
        ("f4", Value::Float(f64::from(f32::MAX))),
        ("f8", Value::Float(f64::NEG_INFINITY)),
        ("t", Value::Text("emoji 🙂 and ü, 'quoted' \"x\"".into())),
        ("vc", Value::Text("varchar".into())),
        ("c", Value::Text("ab   ".into())),
        ("by", Value::Bytes(vec![0, 0xff, 0, 1])),
        (
            "d",
            Value::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()),
        ),
        ("tm", Value::Time(86_399_999_999)),
        ("ts", Value::Timestamp(ts("2024-03-01 12:34:56.789012"))),
        (
            "tstz",
            Value::TimestampTz(ts("2024-03-01 07:04:56.123456").and_utc()),
        ),
        (
            "u",
            Value::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".parse().unwrap()),
        ),
        ("j", Value::Json(r#"{"b":1, "b":2}"#.into())),
        ("jb", Value::Json(r#"{"a": [1, "🙂"], "b": 2}"#.into())),
        ("m", Value::Text("happy 🙂".into())),
    ])
}

fn null_row(id: i64) -> Row {
    let mut r = Row::new();
    for (column, _) in full_row_1().iter() {
        let value = if column == "id" {
            Value::Int(id)
        } else {
            Value::Null
        };
        r.push(column, value);
    }
    r
}

fn with(mut base: Vec<(String, Value)>, column: &str, value: Value) -> Vec<(String, Value)> {
    base.iter_mut().find(|(c, _)| c == column).unwrap().1 = value;
    base
}

fn columns(r: &Row) -> Vec<(String, Value)> {
    r.iter().map(|(c, v)| (c.to_owned(), v.clone())).collect()
}

fn from_columns(columns: Vec<(String, Value)>) -> Row {
    columns.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_insert_update_delete_and_key_change_arrive_exactly() {
    let fx = Fixture::new();
    let client = fx.client().await;
    client.batch_execute(MANY_TYPES).await.unwrap();
    let started = Instant::now();
    let mut stream = PgStream::start(fx.config(&["sales.Order Items"]))
        .await
        .expect("start the stream");
    let start_took = started.elapsed();

    let table = TableName::new("sales", "Order Items");
    client
        .batch_execute(
            r#"
            BEGIN;
            SET LOCAL TimeZone = 'Asia/Kolkata';
            INSERT INTO sales."Order Items" VALUES (
                1, true, -32768, 2147483647, -9223372036854775808,
                -1234567890123456789012345678901234567890.0123456789, -12.3,
                3.4028235e38, '-Infinity',
                'emoji 🙂 and ü, ''quoted'' "x"', 'varchar', 'ab', '\x00ff0001',
                '2024-02-29', '23:59:59.999999', '2024-03-01 12:34:56.789012',
                '2024-03-01 12:34:56.123456', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
                '{"b":1, "b":2}', '{"b": 2, "a": [1, "🙂"]}', 'happy 🙂');
            INSERT INTO sales."Order Items" (id) VALUES (2);
            UPDATE sales."Order Items" SET t = 'changed', i8 = 9223372036854775807 WHERE id = 1;
            COMMIT;
            "#,
        )
        .await
        .unwrap();
    client
        .batch_execute(r#"UPDATE sales."Order Items" SET id = 3 WHERE id = 2"#)
        .await
        .unwrap();
    client
        .batch_execute(r#"DELETE FROM sales."Order Items" WHERE id = 1"#)
        .await
        .unwrap();
    client
        .batch_execute(
            r#"INSERT INTO sales."Order Items" (id, n, n2, f4, f8, d, tm, ts, tstz, by, t)
               VALUES (4, 'NaN', 0, 'Infinity', 'NaN', '0001-01-01', '24:00:00',
                       '0001-01-01 00:00:00', '2024-01-01 01:00:00.000001-03', '\x', '')"#,
        )
        .await
        .unwrap();

    let first_read = Instant::now();
    let tx1 = next_transaction(&mut stream).await;
    let first_latency = first_read.elapsed();
    let tx2 = next_transaction(&mut stream).await;
    let tx3 = next_transaction(&mut stream).await;
    let tx4 = next_transaction(&mut stream).await;

    for tx in [&tx1, &tx2, &tx3, &tx4] {
        assert_eq!(tx.source, "pg1");
        assert_eq!(tx.origin, Origin::Local);
        let age = chrono::Utc::now() - tx.commit_time;
        assert!(
            age >= chrono::TimeDelta::zero() && age < chrono::TimeDelta::minutes(5),
            "commit time {}",
            tx.commit_time
        );
    }
    assert!(lsn(&tx1) < lsn(&tx2) && lsn(&tx2) < lsn(&tx3) && lsn(&tx3) < lsn(&tx4));

    // Transaction 1: two inserts and an update, in statement order.
    assert_eq!(tx1.events.len(), 3);
    assert_eq!(
        tx1.events[0],
        ChangeEvent {
            table: table.clone(),
            op: Op::Insert,
            key: key(1),
            before: None,
            after: Some(full_row_1()),
        }
    );
    // Value by value too, so a failure names the column.
    for ((column, got), (_, want)) in tx1.events[0]
        .after
        .as_ref()
        .unwrap()
        .iter()
        .zip(full_row_1().iter())
    {
        assert_eq!(got, want, "column {column}");
    }
    assert_eq!(
        tx1.events[1],
        ChangeEvent {
            table: table.clone(),
            op: Op::Insert,
            key: key(2),
            before: None,
            after: Some(null_row(2)),
        }
    );
    let updated = from_columns(with(
        with(columns(&full_row_1()), "t", Value::Text("changed".into())),
        "i8",
        Value::Int(i64::MAX),
    ));
    assert_eq!(
        tx1.events[2],
        ChangeEvent {
            table: table.clone(),
            op: Op::Update,
            key: key(1),
            before: Some(key(1)),
            after: Some(updated),
        }
    );

    // Transaction 2: the primary key changed, the old key arrives as the before image.
    assert_eq!(
        tx2.events,
        vec![ChangeEvent {
            table: table.clone(),
            op: Op::Update,
            key: key(2),
            before: Some(key(2)),
            after: Some(null_row(3)),
        }]
    );

    // Transaction 3: a delete carries the key (REPLICA IDENTITY DEFAULT).
    assert_eq!(
        tx3.events,
        vec![ChangeEvent {
            table: table.clone(),
            op: Op::Delete,
            key: key(1),
            before: Some(key(1)),
            after: None,
        }]
    );

    // Transaction 4: special and boundary values.
    assert_eq!(tx4.events.len(), 1);
    let after = tx4.events[0].after.as_ref().unwrap();
    assert_eq!(after.get("n"), Some(&dec("NaN")));
    assert_eq!(after.get("n2"), Some(&dec("0.00")));
    assert_eq!(after.get("f4"), Some(&Value::Float(f64::INFINITY)));
    assert!(matches!(after.get("f8"), Some(Value::Float(f)) if f.is_nan()));
    assert_eq!(
        after.get("d"),
        Some(&Value::Date(NaiveDate::from_ymd_opt(1, 1, 1).unwrap()))
    );
    assert_eq!(after.get("tm"), Some(&Value::Time(86_400_000_000)));
    assert_eq!(
        after.get("ts"),
        Some(&Value::Timestamp(ts("0001-01-01 00:00:00")))
    );
    assert_eq!(
        after.get("tstz"),
        Some(&Value::TimestampTz(
            ts("2024-01-01 04:00:00.000001").and_utc()
        ))
    );
    assert_eq!(after.get("by"), Some(&Value::Bytes(Vec::new())));
    assert_eq!(after.get("t"), Some(&Value::Text(String::new())));
    assert_eq!(after.get("b"), Some(&Value::Null));

    eprintln!("timings: start {start_took:?}, first transaction after commit {first_latency:?}");
    fx.finish(stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_full_gives_the_whole_before_image() {
    let fx = Fixture::new();
    let client = fx.client().await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, a text, b int); \
             ALTER TABLE t REPLICA IDENTITY FULL; \
             INSERT INTO t VALUES (1, 'x', 10);",
        )
        .await
        .unwrap();
    let mut stream = PgStream::start(fx.config(&["public.t"])).await.unwrap();
    each(
        &client,
        &[
            "UPDATE t SET b = 11 WHERE id = 1",
            "DELETE FROM t WHERE id = 1",
        ],
    )
    .await;
    let full = |b| {
        row(&[
            ("id", Value::Int(1)),
            ("a", Value::Text("x".into())),
            ("b", Value::Int(b)),
        ])
    };
    let update = next_transaction(&mut stream).await;
    assert_eq!(update.events[0].before, Some(full(10)));
    assert_eq!(update.events[0].after, Some(full(11)));
    assert_eq!(update.events[0].key, key(1));
    let delete = next_transaction(&mut stream).await;
    assert_eq!(delete.events[0].before, Some(full(11)));
    assert_eq!(delete.events[0].op, Op::Delete);
    fx.finish(stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_toasted_value_arrives_as_unchanged() {
    let fx = Fixture::new();
    let client = fx.client().await;
    client
        .batch_execute("CREATE TABLE toasty (id int PRIMARY KEY, big text, small int)")
        .await
        .unwrap();
    let mut stream = PgStream::start(fx.config(&["public.toasty"]))
        .await
        .unwrap();
    // 100 kB of md5 hex: compresses too little to stay inline, so it is stored out of line.
    each(
        &client,
        &[
            "INSERT INTO toasty SELECT 1, string_agg(md5(g::text), ''), 1 \
             FROM generate_series(1, 3200) g",
            "UPDATE toasty SET small = 2 WHERE id = 1",
        ],
    )
    .await;
    let big: String = client
        .query_one("SELECT big FROM toasty WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(big.len(), 102_400);

    let insert = next_transaction(&mut stream).await;
    assert_eq!(
        insert.events[0].after,
        Some(row(&[
            ("id", Value::Int(1)),
            ("big", Value::Text(big)),
            ("small", Value::Int(1)),
        ]))
    );
    let update = next_transaction(&mut stream).await;
    assert_eq!(
        update.events[0].after,
        Some(row(&[
            ("id", Value::Int(1)),
            ("big", Value::Unchanged),
            ("small", Value::Int(2)),
        ]))
    );
    fx.finish(stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_mid_stream_appears() {
    let fx = Fixture::new();
    let client = fx.client().await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, a int)")
        .await
        .unwrap();
    let mut stream = PgStream::start(fx.config(&["public.t"])).await.unwrap();
    each(
        &client,
        &[
            "INSERT INTO t VALUES (1, 1)",
            "ALTER TABLE t ADD COLUMN b text DEFAULT 'x'",
            "INSERT INTO t VALUES (2, 2, 'y')",
            "UPDATE t SET a = 10 WHERE id = 1",
        ],
    )
    .await;
    let first = next_transaction(&mut stream).await;
    assert_eq!(
        first.events[0].after,
        Some(row(&[("id", Value::Int(1)), ("a", Value::Int(1))]))
    );
    let second = next_transaction(&mut stream).await;
    assert_eq!(
        second.events[0].after,
        Some(row(&[
            ("id", Value::Int(2)),
            ("a", Value::Int(2)),
            ("b", Value::Text("y".into())),
        ]))
    );
    let third = next_transaction(&mut stream).await;
    assert_eq!(
        third.events[0].after,
        Some(row(&[
            ("id", Value::Int(1)),
            ("a", Value::Int(10)),
            ("b", Value::Text("x".into())),
        ]))
    );
    fx.finish(stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_the_acknowledged_position_repeats_and_skips_nothing() {
    let fx = Fixture::new();
    let client = fx.client().await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut stream = PgStream::start(fx.config(&["public.t"])).await.unwrap();
    for id in 1..=3 {
        client
            .execute("INSERT INTO t VALUES ($1)", &[&id])
            .await
            .unwrap();
    }
    let ids = |tx: &Transaction| -> Vec<Value> {
        tx.events
            .iter()
            .map(|e| e.key.get("id").unwrap().clone())
            .collect()
    };
    let a = next_transaction(&mut stream).await;
    let b = next_transaction(&mut stream).await;
    assert_eq!(
        (ids(&a), ids(&b)),
        (vec![Value::Int(1)], vec![Value::Int(2)])
    );
    // The first one is reported (a position beyond what was delivered is a caller's bug,
    // which debug builds assert).
    stream.ack(lsn(&a));
    wait_confirmed(&client, &fx.slot, lsn(&a)).await;
    fx.finish_keep_slot(stream).await;

    // Restart at the slot's confirmed position: the first unacknowledged transaction follows.
    let started = Instant::now();
    let mut stream = PgStream::start(fx.config(&["public.t"])).await.unwrap();
    let restart_took = started.elapsed();
    client
        .execute("INSERT INTO t VALUES (4)", &[])
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let tx = next_transaction(&mut stream).await;
        assert!(lsn(&tx) > lsn(&a));
        seen.extend(ids(&tx));
    }
    assert_eq!(seen, vec![Value::Int(2), Value::Int(3), Value::Int(4)]);
    fx.finish_keep_slot(stream).await;

    // Restart at an explicit position (the engine's own record): the same rule holds.
    let mut config = fx.config(&["public.t"]);
    config.start = Some(lsn(&b));
    let mut stream = PgStream::start(config).await.unwrap();
    let tx = next_transaction(&mut stream).await;
    assert_eq!(ids(&tx), vec![Value::Int(3)]);
    eprintln!("timings: restart {restart_took:?}");
    fx.finish(stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_other_tables_let_the_position_advance() {
    let fx = Fixture::new();
    let client = fx.client().await;
    client
        .batch_execute("CREATE TABLE mapped (id int PRIMARY KEY); CREATE TABLE other (id int);")
        .await
        .unwrap();
    let mut stream = PgStream::start(fx.config(&["public.mapped"]))
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO other VALUES (1)")
        .await
        .unwrap();
    let written: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let written: Lsn = written.parse().unwrap();
    let started = Instant::now();
    let deadline = started + DEADLINE;
    let mut last = Lsn(0);
    let heartbeat = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Err(_) => panic!("no heartbeat reached {written} within {DEADLINE:?}"),
            Ok(Ok(StreamItem::Heartbeat(Position::Postgres(lsn)))) => {
                assert!(lsn > last, "heartbeats move forward");
                last = lsn;
                if lsn >= written {
                    break lsn;
                }
            }
            Ok(other) => panic!("unexpected {other:?}"),
        }
    };
    let heartbeat_took = started.elapsed();
    stream.ack(heartbeat);
    wait_confirmed(&client, &fx.slot, heartbeat).await;
    eprintln!("timings: heartbeat past an unmapped write {heartbeat_took:?}");
    fx.finish(stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_and_unsupported_types_stop_the_stream_with_a_clear_error() {
    let fx = Fixture::new();
    let client = fx.client().await;
    client
        .batch_execute(
            "CREATE DOMAIN qty AS int CHECK (VALUE > 0); \
             CREATE TABLE t (id int PRIMARY KEY, price money, n qty)",
        )
        .await
        .unwrap();
    let mut stream = PgStream::start(fx.config(&["public.t"])).await.unwrap();
    each(
        &client,
        &[
            "INSERT INTO t VALUES (1, NULL, 5)",
            "INSERT INTO t VALUES (2, '1.00', 6)",
        ],
    )
    .await;
    let tx = next_transaction(&mut stream).await;
    assert_eq!(
        tx.events[0].after,
        Some(row(&[
            ("id", Value::Int(1)),
            ("price", Value::Null),
            ("n", Value::Int(5))
        ]))
    );
    let error = next_error(&mut stream).await;
    assert!(!error.is_transient());
    let text = format!("{error}: {}", std::error::Error::source(&error).unwrap());
    assert_eq!(
        text,
        "table public.t, row with key (id)=(2): column price of type money: duplex does not \
         replicate this type: leave the column out of the publication or change its type"
    );
    fx.finish(stream).await;

    // A new slot starts after the refused row.
    let mut stream = PgStream::start(fx.config(&["public.t"])).await.unwrap();
    each(&client, &["DELETE FROM t WHERE id = 2", "TRUNCATE t"]).await;
    let delete = next_transaction(&mut stream).await;
    assert_eq!(delete.events[0].key, key(2));
    let error = next_error(&mut stream).await;
    assert!(
        matches!(&error, PgStreamError::Truncate { tables, .. } if tables == "public.t"),
        "{error:?}"
    );
    assert!(!error.is_transient());
    fx.finish(stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_tables_and_slots_are_definite_errors() {
    let fx = Fixture::new();
    let error = PgStream::start(fx.config(&["public.nope"]))
        .await
        .unwrap_err();
    assert!(matches!(&error, PgStreamError::TableMissing(t) if t.name == "nope"));
    assert!(!error.is_transient());

    // Resuming needs the slot the position belongs to; a new one would skip changes.
    let client = fx.client().await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut config = fx.config(&["public.t"]);
    config.start = Some(Lsn(0x100_0000));
    let error = PgStream::start(config).await.unwrap_err();
    assert!(
        matches!(&error, PgStreamError::SlotLost { name, .. } if *name == fx.slot),
        "{error:?}"
    );
    assert!(error.is_position_lost(), "{error:?}");
    assert!(!error.is_transient());
    let slots: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&fx.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "no slot was created");
}

impl Fixture {
    /// Stops the stream but keeps the slot for a restart.
    async fn finish_keep_slot(&self, stream: PgStream) {
        stream.shutdown().await.expect("clean shutdown");
    }
}

#[path = "pg_stream/liveness.rs"]
mod liveness;
