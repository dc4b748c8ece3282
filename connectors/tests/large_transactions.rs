//! Large source transactions against real servers: both change streams deliver a transaction
//! over the part threshold as parts followed by its final transaction, every change exactly
//! once and in order; both appliers write parts and the final transaction in one target
//! transaction, skip a replayed large transaction by its start position, and leave nothing
//! behind when a piece fails.

use std::time::Duration;

use chrono::Utc;
use duplex_connectors::mysql::{
    BinlogPosition, MysqlApplier, MysqlStream, MysqlStreamConfig, StartPosition,
};
use duplex_connectors::postgres::{Lsn, PgApplier, PgStream, PgStreamConfig};
use duplex_connectors::{
    Applier, ApplyError, ApplyOptions, ChangeEvent, Op, Origin, Position, Row, StreamItem,
    TableName, TableRoute, Transaction, TransactionPart, Value,
};
use duplex_testkit::{MariaDatabase, PgDatabase, shared_mariadb, shared_pg};
use tokio::time::{Instant, timeout_at};

const DEADLINE: Duration = Duration::from_secs(60);

/// Parts are this large in the stream tests.
const PART: usize = 1000;

/// What a stream yields, whatever its kind.
#[derive(Debug)]
enum Piece {
    Part(TransactionPart),
    Transaction(Transaction),
}

/// The ids of `events`, which must all be inserts.
fn ids(events: &[ChangeEvent]) -> Vec<i64> {
    events
        .iter()
        .map(|e| {
            assert_eq!(e.op, Op::Insert);
            match e.key.get("id") {
                Some(Value::Int(id)) => *id,
                other => panic!("unexpected key {other:?}"),
            }
        })
        .collect()
}

/// Checks one large transaction's pieces: parts of `PART` to `PART + slack` changes (the last
/// one may be followed by a final transaction without changes), every id of `expected` exactly
/// once in order, one start for all parts, after `previous` and before the final position.
fn check_large(pieces: &[Piece], expected: std::ops::RangeInclusive<i64>, slack: usize) {
    let (Piece::Transaction(last), parts) = pieces.split_last().expect("pieces") else {
        panic!("the last piece is not a transaction: {pieces:?}");
    };
    assert!(!parts.is_empty(), "no parts");
    let mut seen = Vec::new();
    let mut start = None;
    for piece in parts {
        let Piece::Part(part) = piece else {
            panic!("a transaction among the parts");
        };
        assert!(
            (PART..=PART + slack).contains(&part.events.len()),
            "part of {} changes",
            part.events.len()
        );
        assert_eq!(part.source, last.source);
        assert_eq!(part.origin, Origin::Local);
        match &start {
            None => start = Some(part.start.clone()),
            Some(s) => assert_eq!(s, &part.start, "every part carries the same start"),
        }
        seen.extend(ids(&part.events));
    }
    assert!(last.events.len() < PART + slack + 1);
    seen.extend(ids(&last.events));
    assert_eq!(
        seen,
        expected.collect::<Vec<_>>(),
        "every change once, in order"
    );
    let start = start.unwrap();
    assert!(start.compare(&last.position).unwrap().is_lt());
}

/// The start of `pieces`' first part.
fn start_of(pieces: &[Piece]) -> Position {
    match &pieces[0] {
        Piece::Part(part) => part.start.clone(),
        Piece::Transaction(tx) => panic!("not a part: {tx:?}"),
    }
}

fn final_of(pieces: &[Piece]) -> &Transaction {
    match pieces.last() {
        Some(Piece::Transaction(tx)) => tx,
        other => panic!("not a transaction: {other:?}"),
    }
}

// --- PostgreSQL change stream -------------------------------------------------------------

/// The next pieces up to and including the next transaction, skipping heartbeats.
async fn pg_until_transaction(stream: &mut PgStream) -> Vec<Piece> {
    let deadline = Instant::now() + DEADLINE;
    let mut pieces = Vec::new();
    loop {
        match timeout_at(deadline, stream.next())
            .await
            .expect("no transaction within the deadline")
            .expect("stream error")
        {
            StreamItem::Heartbeat(_) => {}
            StreamItem::Part(part) => pieces.push(Piece::Part(part)),
            StreamItem::Shape(shape) => panic!("unexpected {shape:?}"),
            StreamItem::Transaction(tx) => {
                pieces.push(Piece::Transaction(tx));
                return pieces;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_stream_delivers_a_large_transaction_as_parts_then_its_end() {
    let db = shared_pg().create_database();
    db.execute_as_duplex("CREATE TABLE t (id int8 PRIMARY KEY, name text)")
        .unwrap();
    let slot = format!("s_{}", db.name());
    let mut config = PgStreamConfig::new(
        "pg1",
        db.url(),
        slot.clone(),
        "duplex_pub",
        vec![TableName::new("public", "t")],
    );
    config.part_events = Some(PART);
    let mut stream = PgStream::start(config).await.unwrap();
    for statement in [
        "INSERT INTO t VALUES (0, 'small')",
        "INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 5500) g",
        "INSERT INTO t SELECT g, 'row ' || g FROM generate_series(5501, 7500) g",
        "INSERT INTO t VALUES (-1, 'small')",
    ] {
        db.execute_as_duplex(statement).unwrap();
    }

    let small = pg_until_transaction(&mut stream).await;
    assert_eq!(small.len(), 1, "a small transaction arrives whole");
    let before = final_of(&small).position.clone();

    let large = pg_until_transaction(&mut stream).await;
    assert_eq!(large.len(), 6, "5 parts of 1000 and the end with 500");
    check_large(&large, 1..=5500, 0);
    assert_eq!(final_of(&large).events.len(), 500);
    let start = start_of(&large);
    assert!(
        start.compare(&before).unwrap().is_ge(),
        "the start {start} is not before the previous transaction's end {before}"
    );

    let exact = pg_until_transaction(&mut stream).await;
    assert_eq!(exact.len(), 3, "2 full parts, then an end without changes");
    check_large(&exact, 5501..=7500, 0);
    assert!(final_of(&exact).events.is_empty());
    assert!(
        start_of(&exact)
            .compare(&final_of(&large).position)
            .unwrap()
            .is_ge()
    );

    let after = pg_until_transaction(&mut stream).await;
    assert_eq!(ids(&final_of(&after).events), [-1]);

    stream.shutdown().await.unwrap();
    PgStream::drop_slot(&db.url(), None, &slot, DEADLINE)
        .await
        .unwrap();
}

// --- MariaDB change stream ----------------------------------------------------------------

async fn maria_until_transaction(stream: &mut MysqlStream) -> Vec<Piece> {
    let deadline = Instant::now() + DEADLINE;
    let mut pieces = Vec::new();
    loop {
        match timeout_at(deadline, stream.next())
            .await
            .expect("no transaction within the deadline")
            .expect("stream error")
        {
            StreamItem::Heartbeat(_) => {}
            StreamItem::Part(part) => pieces.push(Piece::Part(part)),
            StreamItem::Shape(shape) => panic!("unexpected {shape:?}"),
            StreamItem::Transaction(tx) => {
                pieces.push(Piece::Transaction(tx));
                return pieces;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_stream_delivers_a_large_transaction_as_parts_then_its_end() {
    let db = shared_mariadb().create_database();
    db.sql(
        "CREATE TABLE t (id BIGINT PRIMARY KEY, name VARCHAR(40)) ENGINE=InnoDB; \
         CREATE TABLE seq (n BIGINT PRIMARY KEY) ENGINE=InnoDB; \
         INSERT INTO seq SELECT seq FROM seq_1_to_5500",
    )
    .unwrap();
    let mut config = MysqlStreamConfig::new("maria", db.url(), [TableName::new(db.name(), "t")]);
    config.heartbeat = Duration::from_millis(500);
    config.part_events = Some(PART);
    config.start = StartPosition::Current;
    let mut stream = MysqlStream::start(config).await.unwrap();
    for statement in [
        "INSERT INTO t VALUES (0, 'small')",
        "INSERT INTO t SELECT n, CONCAT('row ', n) FROM seq",
        "INSERT INTO t VALUES (-1, 'small')",
    ] {
        db.sql(statement).unwrap();
    }

    let small = maria_until_transaction(&mut stream).await;
    assert_eq!(small.len(), 1, "a small transaction arrives whole");
    let before = final_of(&small).position.clone();

    let large = maria_until_transaction(&mut stream).await;
    // A part is cut after the rows event that fills it: up to one rows event (8 KB, at most a
    // few hundred of these rows) more than the threshold.
    check_large(&large, 1..=5500, 500);
    // Where the previous transaction ended, or later when other databases' transactions on
    // the shared server came in between.
    let start = start_of(&large);
    assert!(
        start.compare(&before).unwrap().is_ge(),
        "the start {start} is not before the previous transaction's end {before}"
    );

    let after = maria_until_transaction(&mut stream).await;
    assert_eq!(ids(&final_of(&after).events), [-1]);
    assert!(
        final_of(&large)
            .position
            .compare(&final_of(&after).position)
            .unwrap()
            .is_lt()
    );
    stream.shutdown().await;
}

// --- Appliers -----------------------------------------------------------------------------

fn source_table() -> TableName {
    TableName::new("src", "items")
}

fn insert(id: i64) -> ChangeEvent {
    let after: Row = [
        ("id", Value::Int(id)),
        ("name", Value::Text(format!("item {id}"))),
    ]
    .into_iter()
    .collect();
    ChangeEvent {
        table: source_table(),
        op: Op::Insert,
        key: [("id", Value::Int(id))].into_iter().collect(),
        before: None,
        after: Some(after),
    }
}

fn inserts(ids: std::ops::RangeInclusive<i64>) -> Vec<ChangeEvent> {
    ids.map(insert).collect()
}

/// A large transaction of `source`: three parts of ids `first..`, 100 each, and a final
/// transaction with 50 more, starting at `start` and ending at `end`.
fn large(
    source: &str,
    first: i64,
    start: Position,
    end: Position,
) -> (Vec<TransactionPart>, Transaction) {
    let parts = (0..3)
        .map(|i| TransactionPart {
            source: source.to_owned(),
            start: start.clone(),
            origin: Origin::Local,
            events: inserts(first + i * 100..=first + i * 100 + 99),
        })
        .collect();
    let last = Transaction {
        source: source.to_owned(),
        position: end,
        commit_time: Utc::now(),
        origin: Origin::Local,
        events: inserts(first + 300..=first + 349),
    };
    (parts, last)
}

/// The target's side of a test, whatever its kind.
trait Side {
    fn count(&self) -> i64;
    fn position(&self, offset: u64) -> Position;
}

struct PgSide(PgDatabase);

impl Side for PgSide {
    fn count(&self) -> i64 {
        self.0
            .psql("SELECT count(*) FROM public.items")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
    fn position(&self, offset: u64) -> Position {
        Position::Postgres(Lsn(offset))
    }
}

struct MariaSide(MariaDatabase);

impl Side for MariaSide {
    fn count(&self) -> i64 {
        self.0
            .sql("SELECT count(*) FROM items")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
    fn position(&self, offset: u64) -> Position {
        Position::Mysql(BinlogPosition::new("mysql-bin.000003", offset))
    }
}

fn route(target: TableName) -> TableRoute {
    TableRoute::same_names(source_table(), target, &["id", "name"], &["id"])
}

async fn pg_target() -> (PgSide, PgApplier) {
    let db = shared_pg().create_database();
    db.execute_as_duplex("CREATE TABLE public.items (id int8 PRIMARY KEY, name text)")
        .unwrap();
    let applier = PgApplier::connect(
        &db.url(),
        None,
        vec![route(TableName::new("public", "items"))],
        ApplyOptions::default(),
    )
    .await
    .unwrap();
    (PgSide(db), applier)
}

async fn maria_target() -> (MariaSide, MysqlApplier) {
    let db = shared_mariadb().create_database();
    db.sql("CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(40)) ENGINE=InnoDB")
        .unwrap();
    let applier = MysqlApplier::connect(
        &db.url(),
        None,
        vec![route(TableName::new(db.name(), "items"))],
        ApplyOptions::default(),
    )
    .await
    .unwrap();
    (MariaSide(db), applier)
}

/// Parts then the final transaction land in one target transaction: nothing is visible
/// before the final transaction commits, then everything is, with the final position. A
/// replay of the whole transaction (parts included) is skipped by its start position; the
/// next large transaction, starting exactly at the recorded position, is written.
async fn parts_commit_once<A: Applier>(side: &impl Side, applier: &mut A, source: &str) {
    applier
        .apply(&[Transaction {
            source: source.to_owned(),
            position: side.position(100),
            commit_time: Utc::now(),
            origin: Origin::Local,
            events: inserts(-1..=-1),
        }])
        .await
        .unwrap();
    let (parts, last) = large(source, 1, side.position(100), side.position(200));
    for part in &parts {
        applier.apply_part(part).await.unwrap();
    }
    assert_eq!(side.count(), 1, "parts are not committed before the end");
    assert_eq!(
        applier.position(source).await.unwrap(),
        Some(side.position(100))
    );
    applier.apply(std::slice::from_ref(&last)).await.unwrap();
    assert_eq!(side.count(), 351);
    assert_eq!(
        applier.position(source).await.unwrap(),
        Some(side.position(200))
    );

    // A crash after the commit: the stream delivers the transaction again, parts first.
    // Without the skip the strict inserts would fail on the existing keys.
    for part in &parts {
        applier.apply_part(part).await.unwrap();
    }
    applier.apply(std::slice::from_ref(&last)).await.unwrap();
    assert_eq!(side.count(), 351, "the replay wrote nothing");
    assert_eq!(
        applier.position(source).await.unwrap(),
        Some(side.position(200))
    );

    // The next transaction starts where the last one ended: not held, so written.
    let (parts, last) = large(source, 1001, side.position(200), side.position(300));
    for part in &parts {
        applier.apply_part(part).await.unwrap();
    }
    applier.apply(std::slice::from_ref(&last)).await.unwrap();
    assert_eq!(side.count(), 701);
    assert_eq!(
        applier.position(source).await.unwrap(),
        Some(side.position(300))
    );

    // Ordinary batches work again afterwards.
    let next = Transaction {
        source: source.to_owned(),
        position: side.position(400),
        commit_time: Utc::now(),
        origin: Origin::Local,
        events: inserts(5000..=5001),
    };
    applier.apply(&[next]).await.unwrap();
    assert_eq!(side.count(), 703);
}

/// A failure in the middle of the parts (a duplicate key in the second part), or at the
/// final transaction, leaves nothing of the large transaction and the old position; the
/// applier is usable afterwards, and a piece out of sequence is refused and rolled back.
async fn failure_leaves_nothing<A: Applier>(side: &impl Side, applier: &mut A, source: &str) {
    let (mut parts, last) = large(source, 1, side.position(100), side.position(200));
    parts[1].events.push(insert(1));
    applier.apply_part(&parts[0]).await.unwrap();
    let error = applier.apply_part(&parts[1]).await.unwrap_err();
    assert!(
        matches!(
            error,
            ApplyError::PgWrite { .. } | ApplyError::MysqlWrite { .. }
        ),
        "{error:?}"
    );
    assert_eq!(side.count(), 0);
    assert_eq!(applier.position(source).await.unwrap(), None);

    // Delivered again from its first part (without the bad row), but the final transaction
    // fails: still nothing.
    parts[1].events.pop();
    let mut bad_last = last.clone();
    bad_last.events.push(insert(2));
    for part in &parts {
        applier.apply_part(part).await.unwrap();
    }
    assert!(applier.apply(&[bad_last]).await.is_err());
    assert_eq!(side.count(), 0);
    assert_eq!(applier.position(source).await.unwrap(), None);

    // A part of another transaction, or a batch that is not just the final transaction, while
    // one is open: refused, and the open one rolled back.
    applier.apply_part(&parts[0]).await.unwrap();
    let mut other = parts[1].clone();
    other.start = side.position(150);
    assert!(matches!(
        applier.apply_part(&other).await,
        Err(ApplyError::PartSequence(_))
    ));
    applier.apply_part(&parts[0]).await.unwrap();
    assert!(matches!(
        applier.apply(&[last.clone(), last.clone()]).await,
        Err(ApplyError::PartSequence(_))
    ));
    assert_eq!(side.count(), 0);

    // The whole transaction, delivered correctly, lands.
    for part in &parts {
        applier.apply_part(part).await.unwrap();
    }
    applier.apply(std::slice::from_ref(&last)).await.unwrap();
    assert_eq!(side.count(), 350);
    assert_eq!(
        applier.position(source).await.unwrap(),
        Some(side.position(200))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_applier_commits_parts_once_and_skips_a_replayed_large_transaction() {
    let (side, mut applier) = pg_target().await;
    parts_commit_once(&side, &mut applier, "shop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_applier_failure_in_a_large_transaction_leaves_nothing() {
    let (side, mut applier) = pg_target().await;
    failure_leaves_nothing(&side, &mut applier, "shop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_applier_commits_parts_once_and_skips_a_replayed_large_transaction() {
    let (side, mut applier) = maria_target().await;
    let source = format!("large_{}", side.0.name());
    parts_commit_once(&side, &mut applier, &source).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_applier_failure_in_a_large_transaction_leaves_nothing() {
    let (side, mut applier) = maria_target().await;
    let source = format!("large_{}", side.0.name());
    failure_leaves_nothing(&side, &mut applier, &source).await;
}
