//! The stream while the caller is slow, idle or cancels: keepalives, an idle stream that
//! confirmed everything, cancelled calls to `next`; a large transaction arriving whole; and
//! how duplex's own writes are recognised as echoes.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_are_answered_while_the_caller_is_not_polling() {
    // The server drops a receiver that does not answer within wal_sender_timeout.
    let server = PgServer::start(PgOptions::default().setting("wal_sender_timeout", "2s"))
        .expect("start a server");
    let fx = Fixture::in_database(server.create_database());
    let client = fx.client().await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut stream = PgStream::start(fx.config(&["public.t"])).await.unwrap();
    let pid = || async {
        client
            .query_one(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&fx.slot],
            )
            .await
            .unwrap()
            .get::<_, Option<i32>>(0)
    };
    let timeout: String = client
        .query_one("SHOW wal_sender_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(timeout, "2s");
    let before = pid().await;
    assert!(before.is_some(), "the slot is held by the stream");
    // Not polling is the behaviour under test: three timeouts pass without a call to next().
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(pid().await, before, "the same session still holds the slot");
    client
        .execute("INSERT INTO t VALUES (1)", &[])
        .await
        .unwrap();
    let tx = next_transaction(&mut stream).await;
    assert_eq!(tx.events[0].key, key(1));
    fx.finish(stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_that_confirmed_everything_is_not_presumed_dead() {
    // An idle server of its own, with the server's own keepalives far away: once the stream
    // has confirmed everything the server sent, only the replies it requests keep it alive.
    let server = PgServer::start(PgOptions::default().setting("wal_sender_timeout", "10min"))
        .expect("start a server");
    let fx = Fixture::in_database(server.create_database());
    let client = fx.client().await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut config = fx.config(&["public.t"]);
    config.inactivity_timeout = Duration::from_secs(1);
    let mut stream = PgStream::start(config).await.unwrap();
    // Ten timeouts of silence from the tables, every heartbeat confirmed at once (an idle
    // server then has nothing to send of its own).
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(quiet_until, stream.next()).await {
            Err(_) => break,
            Ok(Ok(StreamItem::Heartbeat(Position::Postgres(lsn)))) => stream.ack(lsn),
            Ok(Ok(other)) => panic!("unexpected item {other:?}"),
            Ok(Err(error)) => panic!("an idle, healthy stream failed: {error}"),
        }
    }
    client
        .execute("INSERT INTO t VALUES (1)", &[])
        .await
        .unwrap();
    let tx = next_transaction(&mut stream).await;
    assert_eq!(tx.events[0].key, key(1));
    fx.finish(stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_calls_to_next_lose_nothing() {
    let fx = Fixture::new();
    let client = fx.client().await;
    client
        .batch_execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);")
        .await
        .unwrap();
    let mut stream = PgStream::start(fx.config(&["public.a", "public.b"]))
        .await
        .unwrap();
    for id in 1..=20 {
        let table = if id % 2 == 0 { "a" } else { "b" };
        client
            .execute(&format!("INSERT INTO {table} VALUES ($1)"), &[&id])
            .await
            .unwrap();
    }
    // Calls are abandoned after a short and growing time, so many stop at an await that is
    // not ready (catalog lookups for Relation messages included) while each streak of
    // cancellations still ends; the stream must deliver every row once, in order.
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    let mut cancelled = 0;
    let mut streak = 0;
    while seen.len() < 20 {
        assert!(Instant::now() < deadline, "only {seen:?} arrived");
        let patience = Duration::from_micros(100 * streak);
        match tokio::time::timeout(patience, stream.next()).await {
            Err(_) => {
                cancelled += 1;
                streak += 1;
            }
            Ok(Ok(StreamItem::Transaction(tx))) => {
                streak = 0;
                for event in tx.events {
                    let table = if event.table.name == "a" { "a" } else { "b" };
                    seen.push((table, event.key.get("id").cloned().unwrap()));
                }
            }
            Ok(Ok(StreamItem::Heartbeat(_))) => {}
            Ok(Ok(StreamItem::Part(part))) => panic!("unexpected part {part:?}"),
            Ok(Ok(StreamItem::Shape(shape))) => panic!("unexpected shape {shape:?}"),
            Ok(Err(e)) => panic!("stream error: {e:?}"),
        }
    }
    let expected: Vec<_> = (1..=20)
        .map(|id| (if id % 2 == 0 { "a" } else { "b" }, Value::Int(id)))
        .collect();
    assert_eq!(seen, expected);
    assert!(cancelled > 0, "no call was cancelled");
    fx.finish(stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transaction_arrives_whole() {
    const ROWS: i64 = 100_000;
    let fx = Fixture::new();
    let client = fx.client().await;
    client
        .batch_execute(
            "CREATE TABLE t (id int8 PRIMARY KEY, name text, price numeric(12,2), at timestamptz)",
        )
        .await
        .unwrap();
    let mut stream = PgStream::start(fx.config(&["public.t"])).await.unwrap();
    client
        .execute(
            "INSERT INTO t SELECT g, 'item ' || g, g / 100.0, '2024-01-01'::timestamptz + g * interval '1 s' \
             FROM generate_series(1, $1::int8) g",
            &[&ROWS],
        )
        .await
        .unwrap();
    let started = Instant::now();
    let tx = next_transaction(&mut stream).await;
    let took = started.elapsed();
    assert_eq!(tx.events.len(), ROWS as usize);
    for (i, event) in tx.events.iter().enumerate() {
        assert_eq!(event.key, key(i as i64 + 1), "rows arrive in insert order");
    }
    assert_eq!(
        tx.events[ROWS as usize - 1]
            .after
            .as_ref()
            .unwrap()
            .get("price"),
        Some(&dec("1000.00"))
    );
    eprintln!(
        "timings: {ROWS} rows in one transaction read in {took:?} ({:.0} rows/s, server decoding included)",
        ROWS as f64 / took.as_secs_f64()
    );
    fx.finish(stream).await;
}

/// The event of `table` in `tx` (exactly one).
fn event_of<'t>(tx: &'t Transaction, table: &str) -> &'t ChangeEvent {
    let table: TableName = table.parse().unwrap();
    let mut events = tx.events.iter().filter(|e| e.table == table);
    let event = events
        .next()
        .unwrap_or_else(|| panic!("no event of {table} in {tx:?}"));
    assert!(events.next().is_none(), "two events of {table} in {tx:?}");
    event
}

/// With the echo marker, the stream creates `duplex.positions` and publishes it; a transaction
/// that writes it is an echo and keeps its positions change as an event, also when that is its
/// only change; a transaction that does not write it stays local.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_marker_marks_transactions_that_write_duplex_positions() {
    let fx = Fixture::new();
    let client = fx.client().await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let mut config = fx.config(&["public.t"]);
    config.echo_marker = true;
    let mut stream = PgStream::start(config).await.unwrap();
    let published: Vec<String> = client
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables \
             WHERE pubname = 'duplex_pub' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(published, ["duplex.positions", "public.t"]);

    each(
        &client,
        &[
            "BEGIN; INSERT INTO t VALUES (1, 'applied'); \
             INSERT INTO duplex.positions VALUES \
                ('merge:erp', '{\"Outbox\":1}', '2024-05-06 07:08:09.123456+00') \
             ON CONFLICT (source) DO UPDATE SET position = EXCLUDED.position, \
                applied_at = EXCLUDED.applied_at; \
             COMMIT",
            "INSERT INTO t VALUES (2, 'local')",
            "UPDATE duplex.positions SET position = '{\"Outbox\":2}' WHERE source = 'merge:erp'",
        ],
    )
    .await;

    let echo = next_transaction(&mut stream).await;
    assert_eq!(echo.origin, Origin::Duplex);
    assert_eq!(echo.events.len(), 2, "{echo:?}");
    assert_eq!(event_of(&echo, "public.t").after.as_ref().unwrap().len(), 2);
    let marker = event_of(&echo, "duplex.positions");
    assert_eq!(marker.op, Op::Insert);
    assert_eq!(
        marker.key,
        row(&[("source", Value::Text("merge:erp".into()))])
    );
    assert_eq!(
        marker.after,
        Some(row(&[
            ("source", Value::Text("merge:erp".into())),
            ("position", Value::Text("{\"Outbox\":1}".into())),
            (
                "applied_at",
                Value::TimestampTz(ts("2024-05-06 07:08:09.123456").and_utc())
            ),
        ]))
    );

    let local = next_transaction(&mut stream).await;
    assert_eq!(local.origin, Origin::Local);
    assert_eq!(local.events.len(), 1);
    assert_eq!(local.events[0].key, key(2));

    let only_marker = next_transaction(&mut stream).await;
    assert_eq!(only_marker.origin, Origin::Duplex);
    assert_eq!(only_marker.events.len(), 1, "{only_marker:?}");
    let update = event_of(&only_marker, "duplex.positions");
    assert_eq!(update.op, Op::Update);
    assert_eq!(
        update.after.as_ref().unwrap().get("position"),
        Some(&Value::Text("{\"Outbox\":2}".into()))
    );
    assert!(lsn(&echo) < lsn(&local) && lsn(&local) < lsn(&only_marker));
    fx.finish(stream).await;
}

/// A batch written by the real PostgreSQL applier arrives as one echo carrying the applier's
/// positions row (source and position JSON); the stream and the applier both create
/// `duplex.positions` if it is missing, whichever comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_of_the_pg_applier_arrive_as_echoes() {
    use duplex_connectors::postgres::PgApplier;
    use duplex_connectors::{Applier, ApplyOptions, TableRoute};

    let fx = Fixture::new();
    let client = fx.client().await;
    client
        .batch_execute("CREATE TABLE t (id int8 PRIMARY KEY, v text)")
        .await
        .unwrap();
    let mut config = fx.config(&["public.t"]);
    config.echo_marker = true;
    let mut stream = PgStream::start(config).await.unwrap();

    let route = TableRoute::same_names(
        TableName::new("erp", "items"),
        TableName::new("public", "t"),
        &["id", "v"],
        &["id"],
    );
    let mut applier = PgApplier::connect(&fx.db.url(), None, vec![route], ApplyOptions::default())
        .await
        .unwrap();
    let applied_position = Position::Mysql(duplex_connectors::mysql::BinlogPosition::new(
        "binlog.000003",
        1234,
    ));
    let batch = Transaction {
        source: "merge:erp".into(),
        position: applied_position.clone(),
        commit_time: chrono::Utc::now(),
        origin: Origin::Local,
        events: vec![ChangeEvent {
            table: TableName::new("erp", "items"),
            op: Op::Insert,
            key: key(7),
            before: None,
            after: Some(row(&[
                ("id", Value::Int(7)),
                ("v", Value::Text("from erp".into())),
            ])),
        }],
    };
    applier.apply(&[batch]).await.unwrap();
    client
        .batch_execute("INSERT INTO t VALUES (8, 'local')")
        .await
        .unwrap();

    let echo = next_transaction(&mut stream).await;
    assert_eq!(echo.origin, Origin::Duplex);
    assert_eq!(echo.events.len(), 2, "{echo:?}");
    assert_eq!(
        event_of(&echo, "public.t").after.as_ref().unwrap().get("v"),
        Some(&Value::Text("from erp".into()))
    );
    let marker = event_of(&echo, "duplex.positions").after.as_ref().unwrap();
    assert_eq!(marker.get("source"), Some(&Value::Text("merge:erp".into())));
    assert_eq!(
        marker.get("position"),
        Some(&Value::Text(
            serde_json::to_string(&applied_position).unwrap()
        ))
    );
    assert!(matches!(
        marker.get("applied_at"),
        Some(Value::TimestampTz(_))
    ));

    let local = next_transaction(&mut stream).await;
    assert_eq!(local.origin, Origin::Local);
    assert_eq!(local.events.len(), 1);
    fx.finish(stream).await;
}

/// Parts are delivered before the commit that tells the origin: the two settings exclude each
/// other, and the error says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_marker_with_parts_is_refused() {
    let fx = Fixture::new();
    let mut config = fx.config(&["public.t"]);
    config.echo_marker = true;
    config.part_events = Some(100);
    let error = PgStream::start(config).await.unwrap_err();
    assert!(
        matches!(
            error,
            PgStreamError::Config {
                field: "echo_marker",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("part_events"), "{error}");
}
