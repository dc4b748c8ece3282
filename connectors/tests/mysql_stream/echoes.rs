//! duplex's own writes in the binlog: `duplex.positions` rows arrive as events, and
//! transactions written with `skip_replication` or by the applier are marked as echoes.

use super::*;

/// The events of `txn` of `table`.
fn events_of<'t>(txn: &'t Transaction, table: &TableName) -> Vec<&'t ChangeEvent> {
    txn.events.iter().filter(|e| &e.table == table).collect()
}

fn positions_table() -> TableName {
    TableName::new("duplex", "positions")
}

/// The next transaction that touches `db`'s tables or writes the `duplex.positions` row of
/// `source`: `duplex.positions` is shared by the whole server, so other tests' appliers write it
/// too.
async fn next_own_transaction(stream: &mut MysqlStream, db: &str, source: &str) -> Transaction {
    loop {
        let txn = next_transaction(stream).await;
        let own = txn.events.iter().any(|e| {
            e.table.schema == db
                || (e.table == positions_table()
                    && e.key.get("source") == Some(&Value::Text(source.to_owned())))
        });
        if own {
            return txn;
        }
    }
}

/// With `duplex.positions` mapped, its row changes arrive as events like any table's, also in
/// a transaction that changes nothing else; written with `skip_replication=1` (as duplex's
/// applier writes) such transactions are echoes, others stay local.
#[tokio::test]
async fn duplex_positions_rows_are_events_and_skip_replication_marks_echoes() {
    let db = database();
    db.sql(&format!(
        "CREATE TABLE t (id INT PRIMARY KEY, v TEXT); {}",
        duplex_connectors::mysql::POSITIONS_DDL
    ))
    .unwrap();
    let source = format!("merge:{}", db.name());
    let mut config = MysqlStreamConfig::new(
        "maria",
        db.url(),
        [TableName::new(db.name(), "t"), positions_table()],
    );
    config.heartbeat = Duration::from_millis(500);
    let mut stream = MysqlStream::start(config).await.unwrap();
    db.sql(&format!(
        "SET SESSION skip_replication = 1; BEGIN; INSERT INTO t VALUES (1, 'applied'); \
         INSERT INTO duplex.positions (source, position, applied_at) \
            VALUES ('{source}', '{{\"Outbox\":1}}', '2024-05-06 07:08:09.123456') \
         ON DUPLICATE KEY UPDATE position = VALUES(position), applied_at = VALUES(applied_at); \
         COMMIT;"
    ))
    .unwrap();
    db.sql("INSERT INTO t VALUES (2, 'local')").unwrap();
    db.sql(&format!(
        "SET SESSION skip_replication = 1; \
         UPDATE duplex.positions SET position = '{{\"Outbox\":2}}' WHERE source = '{source}'"
    ))
    .unwrap();

    let echo = next_own_transaction(&mut stream, db.name(), &source).await;
    assert_eq!(echo.origin, Origin::Duplex);
    assert_eq!(echo.events.len(), 2, "{echo:?}");
    assert_eq!(
        events_of(&echo, &TableName::new(db.name(), "t")).len(),
        1,
        "{echo:?}"
    );
    let marker = events_of(&echo, &positions_table());
    assert_eq!(marker.len(), 1, "{echo:?}");
    assert_eq!(marker[0].op, Op::Insert);
    assert_eq!(marker[0].key, row(&[("source", text(&source))]));
    assert_eq!(
        marker[0].after,
        Some(row(&[
            ("source", text(&source)),
            ("position", text("{\"Outbox\":1}")),
            (
                "applied_at",
                Value::Timestamp(datetime("2024-05-06 07:08:09.123456"))
            ),
        ]))
    );

    let local = next_own_transaction(&mut stream, db.name(), &source).await;
    assert_eq!(local.origin, Origin::Local);
    assert_eq!(after(&local, 0).get("v"), Some(&text("local")));

    let only_marker = next_own_transaction(&mut stream, db.name(), &source).await;
    assert_eq!(only_marker.origin, Origin::Duplex);
    assert_eq!(only_marker.events.len(), 1, "{only_marker:?}");
    assert_eq!(only_marker.events[0].table, positions_table());
    assert_eq!(only_marker.events[0].op, Op::Update);
    assert_eq!(
        after(&only_marker, 0).get("position"),
        Some(&text("{\"Outbox\":2}"))
    );
    assert!(
        mysql_position(&echo)
            .compare(&mysql_position(&local))
            .unwrap()
            .is_lt()
    );
    stream.shutdown().await;
}

/// `duplex.positions` may be missing when the stream starts (the applier creates it on first
/// use; any other missing table is an error): the stream picks it up once created, and a batch
/// written by the real MariaDB applier arrives as one echo with its positions row. Runs on a
/// server of its own, the only way to have no `duplex.positions`.
#[tokio::test]
async fn positions_table_created_after_the_start_is_read_and_applier_writes_are_echoes() {
    use duplex_connectors::mysql::MysqlApplier;
    use duplex_connectors::{Applier, ApplyOptions, TableRoute};

    let server = MariaServer::start(MariaOptions::default()).unwrap();
    server
        .sql(
            "",
            "CREATE DATABASE d; CREATE TABLE d.t (id INT PRIMARY KEY, v TEXT) ENGINE=InnoDB",
        )
        .unwrap();
    let exists = server
        .sql(
            "",
            "SELECT COUNT(*) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = 'duplex' AND TABLE_NAME = 'positions'",
        )
        .unwrap();
    assert_eq!(exists.trim().lines().last(), Some("0"), "{exists}");

    let missing = MysqlStreamConfig::new("maria", server.url("d"), [TableName::new("d", "nope")]);
    let error = MysqlStream::start(missing).await.unwrap_err();
    assert!(
        matches!(&error, MysqlStreamError::TableNotFound(t) if t.name == "nope"),
        "{error:?}"
    );

    let mut config = MysqlStreamConfig::new(
        "maria",
        server.url("d"),
        [TableName::new("d", "t"), positions_table()],
    );
    config.heartbeat = Duration::from_millis(500);
    let mut stream = MysqlStream::start(config).await.unwrap();

    let route = TableRoute::same_names(
        TableName::new("erp", "items"),
        TableName::new("d", "t"),
        &["id", "v"],
        &["id"],
    );
    let mut applier =
        MysqlApplier::connect(&server.url("d"), None, vec![route], ApplyOptions::default())
            .await
            .unwrap();
    assert!(applier.is_mariadb());
    let applied_position = Position::Postgres(duplex_connectors::postgres::Lsn(0x16_B374_D848));
    let batch = Transaction {
        source: "merge:erp".into(),
        position: applied_position.clone(),
        commit_time: Utc::now(),
        origin: Origin::Local,
        events: vec![ChangeEvent {
            table: TableName::new("erp", "items"),
            op: Op::Insert,
            key: row(&[("id", Value::Int(7))]),
            before: None,
            after: Some(row(&[("id", Value::Int(7)), ("v", text("from erp"))])),
        }],
    };
    applier.apply(&[batch]).await.unwrap();
    server
        .sql("d", "INSERT INTO t VALUES (8, 'local')")
        .unwrap();

    let echo = next_transaction(&mut stream).await;
    assert_eq!(echo.origin, Origin::Duplex);
    assert_eq!(echo.events.len(), 2, "{echo:?}");
    let written = events_of(&echo, &TableName::new("d", "t"));
    assert_eq!(
        written[0].after.as_ref().unwrap().get("v"),
        Some(&text("from erp"))
    );
    let marker = events_of(&echo, &positions_table());
    let marker = marker[0].after.as_ref().unwrap();
    assert_eq!(marker.get("source"), Some(&text("merge:erp")));
    assert_eq!(
        marker.get("position"),
        Some(&text(&serde_json::to_string(&applied_position).unwrap()))
    );
    assert!(matches!(
        marker.get("applied_at"),
        Some(Value::Timestamp(_))
    ));

    let local = next_transaction(&mut stream).await;
    assert_eq!(local.origin, Origin::Local);
    assert_eq!(after(&local, 0).get("id"), Some(&Value::Int(8)));
    stream.shutdown().await;
}
