//! SQL Server against a real server: every supported type written through `to_param` and read
//! back through `to_value`, `check`'s probes on a fresh database, and the CDC reader (whole
//! transactions in commit order, both update images, exact resume), `duplex.positions` in the
//! target transaction, the conditional writes' exact comparisons, and the applier (exactly
//! once by position, strict and conditional writes). No SQL Server runs on
//! our machines, so each test runs only when `DUPLEX_TEST_MSSQL_URL` names a server
//! (`mssql://sa:<password>@host:1433/master?trust-server-certificate=true`, a login that may
//! create databases); otherwise it prints that it is skipped and why, and passes.

use chrono::{NaiveDate, TimeZone, Utc};
use duplex_connectors::mssql::preflight::{check_table, probe_server, probe_table};
use std::time::Duration;

use duplex_connectors::apply::{Applier, ApplyOptions};
use duplex_connectors::mssql::positions::{
    committed_position, ensure_positions, locked_position, record_position,
};
use duplex_connectors::mssql::sql::{
    Compare, WriteColumn, conditional_insert_sql, delete_sql, update_sql,
};
use duplex_connectors::mssql::stream::{CaptureInstance, CdcTransaction, select_list};
use duplex_connectors::mssql::write::{MssqlRoute, RouteColumn};
use duplex_connectors::mssql::{
    CdcItem, CdcPosition, MssqlClient, MssqlError, MssqlStream, MssqlStreamConfig, MssqlType,
    Param, connect, mssql_applier, to_param, to_value,
};
use duplex_connectors::preflight::Status;
use duplex_connectors::{ChangeEvent, Op, Origin, Position, Row, TableName, Transaction, Value};

/// A fresh database on the test server, dropped when the test ends well.
struct Database {
    admin: MssqlClient,
    name: String,
    url: String,
}

impl Database {
    /// A new database, or `None` (with the reason printed) when no server is given.
    async fn create(test: &str) -> Option<Database> {
        let Ok(url) = std::env::var("DUPLEX_TEST_MSSQL_URL") else {
            eprintln!("{test}: skipped: DUPLEX_TEST_MSSQL_URL not set");
            return None;
        };
        let mut admin = connect(&url, None)
            .await
            .expect("connect to the test server");
        let name = format!("duplex_test_{}", uuid::Uuid::new_v4().simple());
        execute(&mut admin, &format!("CREATE DATABASE [{name}]")).await;
        let mut parsed = url::Url::parse(&url).expect("a URL");
        parsed.set_path(&name);
        Some(Database {
            admin,
            name,
            url: parsed.to_string(),
        })
    }

    async fn connect(&self) -> MssqlClient {
        connect(&self.url, None)
            .await
            .expect("connect to the test database")
    }

    async fn drop(mut self) {
        execute(
            &mut self.admin,
            &format!(
                "ALTER DATABASE [{0}] SET SINGLE_USER WITH ROLLBACK IMMEDIATE; DROP DATABASE [{0}]",
                self.name
            ),
        )
        .await;
    }
}

async fn execute(client: &mut MssqlClient, sql: &str) {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_results()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test]
async fn every_supported_type_round_trips_through_a_real_table() {
    let Some(db) = Database::create("every_supported_type_round_trips_through_a_real_table").await
    else {
        return;
    };
    let mut client = db.connect().await;
    let at = |h, m, s, us| {
        NaiveDate::from_ymd_opt(2024, 2, 29)
            .unwrap()
            .and_hms_micro_opt(h, m, s, us)
            .unwrap()
    };
    let columns: Vec<(&str, &str, MssqlType, Value)> = vec![
        ("b", "bit", MssqlType::Bit, Value::Bool(true)),
        ("ti", "tinyint", MssqlType::TinyInt, Value::Int(255)),
        ("si", "smallint", MssqlType::SmallInt, Value::Int(-32768)),
        ("i", "int", MssqlType::Int, Value::Int(-2_147_483_648)),
        ("bi", "bigint", MssqlType::BigInt, Value::Int(i64::MAX)),
        ("r", "real", MssqlType::Real, Value::Float(0.5)),
        ("f", "float", MssqlType::Float, Value::Float(-1.0e300)),
        (
            "d",
            "decimal(38,10)",
            MssqlType::Decimal,
            Value::Decimal("-1234567890123456789012345678.0123456789".parse().unwrap()),
        ),
        (
            "m",
            "money",
            MssqlType::Money,
            Value::Decimal("922337203685477.5807".parse().unwrap()),
        ),
        (
            "sm",
            "smallmoney",
            MssqlType::SmallMoney,
            Value::Decimal("-214748.3648".parse().unwrap()),
        ),
        (
            "nv",
            "nvarchar(max)",
            MssqlType::Text,
            Value::Text("Grüße 🙂".into()),
        ),
        (
            "v",
            "varchar(20)",
            MssqlType::Text,
            Value::Text("plain".into()),
        ),
        (
            "vb",
            "varbinary(max)",
            MssqlType::Binary,
            Value::Bytes(vec![0, 1, 255]),
        ),
        (
            "u",
            "uniqueidentifier",
            MssqlType::UniqueIdentifier,
            Value::Uuid(uuid::Uuid::parse_str("6f9619ff-8b86-d011-b42d-00c04fc964ff").unwrap()),
        ),
        (
            "dt",
            "date",
            MssqlType::Date,
            Value::Date(NaiveDate::from_ymd_opt(1, 1, 1).unwrap()),
        ),
        (
            "tm",
            "time(6)",
            MssqlType::Time,
            Value::Time(86_399_999_999),
        ),
        (
            "d2",
            "datetime2(6)",
            MssqlType::DateTime2,
            Value::Timestamp(at(12, 34, 56, 123_456)),
        ),
        (
            "dto",
            "datetimeoffset(6)",
            MssqlType::DateTimeOffset,
            Value::TimestampTz(Utc.from_utc_datetime(&at(23, 0, 0, 5))),
        ),
        (
            "old",
            "datetime",
            MssqlType::DateTime,
            Value::Timestamp(at(7, 8, 9, 3_333)),
        ),
        (
            "sdt",
            "smalldatetime",
            MssqlType::SmallDateTime,
            Value::Timestamp(at(23, 59, 0, 0)),
        ),
        ("x", "xml", MssqlType::Xml, Value::Text("<a>1</a>".into())),
    ];
    let ddl = columns
        .iter()
        .map(|(name, ty, _, _)| format!("[{name}] {ty} NULL"))
        .collect::<Vec<_>>()
        .join(", ");
    execute(
        &mut client,
        &format!("CREATE TABLE dbo.items (id int PRIMARY KEY, {ddl})"),
    )
    .await;
    for (id, null) in [(1, false), (2, true)] {
        let names: Vec<String> = columns.iter().map(|(n, ..)| format!("[{n}]")).collect();
        let marks: Vec<String> = (1..=columns.len())
            .map(|i| format!("@P{}", i + 1))
            .collect();
        let mut insert = tiberius::Query::new(format!(
            "INSERT INTO dbo.items (id, {}) VALUES (@P1, {})",
            names.join(", "),
            marks.join(", ")
        ));
        insert.bind(id);
        for (name, _, ty, value) in &columns {
            let value = if null { &Value::Null } else { value };
            insert.bind(Param(
                to_param(*ty, value).unwrap_or_else(|e| panic!("{name}: {e}")),
            ));
        }
        insert.execute(&mut client).await.expect("insert");
    }
    let list = select_list(
        &columns
            .iter()
            .map(|(n, _, ty, _)| ((*n).to_owned(), *ty))
            .collect::<Vec<_>>(),
    );
    let rows = client
        .simple_query(format!("SELECT {list} FROM dbo.items ORDER BY id"))
        .await
        .expect("select")
        .into_first_result()
        .await
        .expect("select");
    assert_eq!(rows.len(), 2);
    // A datetimeoffset written with an offset by the server itself reads as its UTC instant.
    let offset = client
        .simple_query("SELECT CAST('2024-02-29T18:00:00-05:00' AS datetimeoffset(6))")
        .await
        .expect("select")
        .into_row()
        .await
        .expect("select")
        .expect("a row");
    let data = offset.into_iter().next().expect("a column");
    assert_eq!(
        to_value(MssqlType::DateTimeOffset, data).unwrap(),
        Value::TimestampTz(Utc.from_utc_datetime(&at(23, 0, 0, 0)))
    );
    for (row, null) in rows.into_iter().zip([false, true]) {
        for ((name, _, ty, expected), data) in columns.iter().zip(row) {
            let expected = if null { &Value::Null } else { expected };
            assert_eq!(&to_value(*ty, data).unwrap(), expected, "column {name}");
        }
    }
    drop(client);
    db.drop().await;
}

#[tokio::test]
async fn check_finds_a_database_and_table_without_cdc_and_a_table_without_a_key() {
    let Some(db) =
        Database::create("check_finds_a_database_and_table_without_cdc_and_a_table_without_a_key")
            .await
    else {
        return;
    };
    let mut client = db.connect().await;
    execute(
        &mut client,
        "CREATE TABLE dbo.loose (n int, at datetime2(7))",
    )
    .await;
    let server = probe_server(&mut client).await.expect("probe the server");
    assert_eq!(server.database, db.name);
    assert!(!server.cdc_enabled);
    assert!(server.major_version >= 13, "{server:?}");
    let table = TableName::new("dbo", "loose");
    let facts = probe_table(&mut client, &table)
        .await
        .expect("probe the table")
        .expect("the table exists");
    assert_eq!(facts.columns.len(), 2);
    assert_eq!(
        facts.columns[1],
        ("at".to_owned(), "datetime2".to_owned(), 7)
    );
    let findings = check_table(&facts);
    let failed: Vec<&str> = findings
        .iter()
        .filter(|f| f.status == Status::Fail)
        .map(|f| f.what.as_str())
        .collect();
    assert_eq!(
        failed,
        vec![
            "table dbo.loose is not captured by CDC",
            "table dbo.loose has no primary key"
        ]
    );
    assert!(
        probe_table(&mut client, &TableName::new("dbo", "absent"))
            .await
            .expect("probe")
            .is_none()
    );
    drop(client);
    db.drop().await;
}

/// Reads items until `n` transactions came (heartbeats skipped), failing after a minute: the
/// capture job copies changes from the log on its own schedule.
async fn transactions(stream: &mut MssqlStream, n: usize) -> Vec<CdcTransaction> {
    let mut found = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while found.len() < n {
            match stream.next().await.expect("read the change tables") {
                CdcItem::Transaction(tx) => found.push(tx),
                CdcItem::Heartbeat(_) => {}
            }
        }
    })
    .await
    .expect("the capture job delivers the changes within a minute");
    found
}

#[tokio::test]
async fn the_reader_delivers_cdc_transactions_in_commit_order_and_resumes_exactly() {
    let test = "the_reader_delivers_cdc_transactions_in_commit_order_and_resumes_exactly";
    let Some(db) = Database::create(test).await else {
        return;
    };
    let mut client = db.connect().await;
    execute(
        &mut client,
        "EXEC sys.sp_cdc_enable_db; \
         CREATE TABLE dbo.orders (id int PRIMARY KEY, qty int, price money); \
         CREATE TABLE dbo.lines (id int PRIMARY KEY, note nvarchar(20)); \
         EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N'orders', \
              @role_name = NULL, @capture_instance = N'dbo_orders'; \
         EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N'lines', \
              @role_name = NULL, @capture_instance = N'dbo_lines'",
    )
    .await;
    let instance = |name: &str, table: &str, columns: Vec<(&str, MssqlType)>| CaptureInstance {
        name: name.into(),
        table: TableName::new("dbo", table),
        columns: columns.into_iter().map(|(c, t)| (c.into(), t)).collect(),
        key: vec!["id".into()],
        large: vec![],
    };
    let config = MssqlStreamConfig {
        instances: vec![
            instance(
                "dbo_orders",
                "orders",
                vec![
                    ("id", MssqlType::Int),
                    ("qty", MssqlType::Int),
                    ("price", MssqlType::Money),
                ],
            ),
            instance(
                "dbo_lines",
                "lines",
                vec![("id", MssqlType::Int), ("note", MssqlType::Text)],
            ),
        ],
        limit: 2,
        min_wait: Duration::from_millis(50),
        max_wait: Duration::from_millis(500),
    };
    execute(
        &mut client,
        "INSERT dbo.orders VALUES (0, 0, 0); \
         BEGIN TRAN; INSERT dbo.orders VALUES (1, 5, 1.2345); \
         INSERT dbo.lines VALUES (1, N'first'); INSERT dbo.lines VALUES (2, N'second'); \
         COMMIT; \
         UPDATE dbo.orders SET qty = 6 WHERE id = 1; \
         DELETE dbo.lines WHERE id = 2",
    )
    .await;
    let mut stream = MssqlStream::new(db.connect().await, config.clone(), None);
    let first = transactions(&mut stream, 1).await;
    drop(stream);
    let start = CdcPosition::after_commit(first[0].commit_lsn);
    let mut stream = MssqlStream::new(db.connect().await, config.clone(), Some(start));
    let read = transactions(&mut stream, 3).await;
    let shape: Vec<Vec<(String, Op)>> = read
        .iter()
        .map(|t| {
            t.events
                .iter()
                .map(|e| (e.table.name.clone(), e.op))
                .collect()
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            vec![
                ("orders".to_owned(), Op::Insert),
                ("lines".to_owned(), Op::Insert),
                ("lines".to_owned(), Op::Insert)
            ],
            vec![("orders".to_owned(), Op::Update)],
            vec![("lines".to_owned(), Op::Delete)],
        ]
    );
    assert!(read.windows(2).all(|w| w[0].commit_lsn < w[1].commit_lsn));
    let update = &read[1].events[0];
    assert_eq!(
        update.before.as_ref().unwrap().get("qty"),
        Some(&Value::Int(5))
    );
    assert_eq!(
        update.after.as_ref().unwrap().get("qty"),
        Some(&Value::Int(6))
    );
    let resumed_at = CdcPosition::after_commit(read[1].commit_lsn);
    drop(stream);
    let mut stream = MssqlStream::new(db.connect().await, config, Some(resumed_at));
    let rest = transactions(&mut stream, 1).await;
    assert_eq!(rest, read[2..].to_vec());
    drop(stream);
    drop(client);
    db.drop().await;
}

#[tokio::test]
async fn positions_commit_with_their_transaction_and_conditional_writes_compare_exactly() {
    let test = "positions_commit_with_their_transaction_and_conditional_writes_compare_exactly";
    let Some(db) = Database::create(test).await else {
        return;
    };
    let mut client = db.connect().await;
    let mut other = db.connect().await;
    ensure_positions(&mut client).await.expect("create");
    ensure_positions(&mut client).await.expect("create again");
    execute(&mut client, "BEGIN TRAN").await;
    assert_eq!(locked_position(&mut client, "pg").await.unwrap(), None);
    record_position(&mut client, "pg", "one", false)
        .await
        .unwrap();
    execute(&mut client, "COMMIT").await;
    assert_eq!(
        committed_position(&mut other, "pg")
            .await
            .unwrap()
            .as_deref(),
        Some("one")
    );
    execute(&mut client, "BEGIN TRAN").await;
    assert_eq!(
        locked_position(&mut client, "pg").await.unwrap().as_deref(),
        Some("one")
    );
    record_position(&mut client, "pg", "two", true)
        .await
        .unwrap();
    execute(&mut client, "ROLLBACK").await;
    assert_eq!(
        committed_position(&mut other, "pg")
            .await
            .unwrap()
            .as_deref(),
        Some("one")
    );
    execute(&mut client, "BEGIN TRAN").await;
    assert!(
        record_position(&mut client, "pg", "two", false)
            .await
            .is_err()
    );
    assert!(matches!(
        record_position(&mut client, "absent", "x", true).await,
        Err(MssqlError::PositionRow { rows: 0, .. })
    ));
    execute(&mut client, "IF @@TRANCOUNT > 0 ROLLBACK").await;
    assert_eq!(
        committed_position(&mut other, "pg")
            .await
            .unwrap()
            .as_deref(),
        Some("one")
    );

    execute(
        &mut client,
        "CREATE TABLE dbo.notes (id int PRIMARY KEY, note nvarchar(10) NULL, n int NULL)",
    )
    .await;
    let table = TableName::new("dbo", "notes");
    let insert = conditional_insert_sql(&table, &["id", "note", "n"], &["id"]).unwrap();
    let rows = |r: tiberius::ExecuteResult| r.total();
    let first = client.execute(&insert, &[&1i32, &"a", &Option::<i32>::None]);
    assert_eq!(rows(first.await.unwrap()), 1);
    let again = client.execute(&insert, &[&1i32, &"b", &Option::<i32>::None]);
    assert_eq!(rows(again.await.unwrap()), 0, "the key exists: skipped");
    let expected = [
        WriteColumn {
            name: "note".into(),
            compare: Compare::Text("nvarchar(10)".into()),
        },
        WriteColumn::value("n"),
    ];
    let update = update_sql(&table, &["note"], &["id"], &expected);
    let null = Option::<i32>::None;
    for (stale, n) in [("A", None), ("a ", None), ("a", Some(3))] {
        let result = client.execute(&update, &[&"c", &1i32, &stale, &n]).await;
        assert_eq!(rows(result.unwrap()), 0, "{stale:?} / {n:?} is not the row");
    }
    let result = client.execute(&update, &[&"c", &1i32, &"a", &null]).await;
    assert_eq!(rows(result.unwrap()), 1);
    let delete = delete_sql(&table, &["id"], &expected);
    let result = client.execute(&delete, &[&1i32, &"a", &null]).await;
    assert_eq!(rows(result.unwrap()), 0, "the note is c now");
    let result = client.execute(&delete, &[&1i32, &"c", &null]).await;
    assert_eq!(rows(result.unwrap()), 1);
    drop(other);
    drop(client);
    db.drop().await;
}

fn items_route() -> MssqlRoute {
    let column = |name: &str, ty, compare| RouteColumn {
        source: name.into(),
        target: name.into(),
        ty,
        scale: 0,
        compare,
    };
    MssqlRoute {
        target: TableName::new("dbo", "items"),
        columns: vec![
            column("id", MssqlType::Int, Compare::Value),
            column(
                "note",
                MssqlType::Text,
                Compare::Text("nvarchar(20)".into()),
            ),
            column("qty", MssqlType::Int, Compare::Value),
        ],
        key: vec![0],
        identity: None,
    }
}

fn item_change(
    op: Op,
    id: i64,
    before: Option<(&str, i64)>,
    after: Option<(&str, i64)>,
) -> ChangeEvent {
    let image = |(note, qty): (&str, i64)| -> Row {
        [
            ("id", Value::Int(id)),
            ("note", Value::Text(note.into())),
            ("qty", Value::Int(qty)),
        ]
        .into_iter()
        .collect()
    };
    ChangeEvent {
        table: TableName::new("public", "items"),
        op,
        key: [("id", Value::Int(id))].into_iter().collect(),
        before: before.map(image),
        after: after.map(image),
    }
}

fn outbox_transaction(n: u64, events: Vec<ChangeEvent>) -> Transaction {
    Transaction {
        source: "pg".into(),
        position: Position::Outbox(n),
        commit_time: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
        origin: Origin::Local,
        events,
    }
}

#[tokio::test]
async fn the_applier_writes_each_transaction_once_with_its_position() {
    let test = "the_applier_writes_each_transaction_once_with_its_position";
    let Some(db) = Database::create(test).await else {
        return;
    };
    let mut client = db.connect().await;
    execute(
        &mut client,
        "CREATE TABLE dbo.items (id int PRIMARY KEY, note nvarchar(20) NULL, qty int NULL)",
    )
    .await;
    let routes = vec![(TableName::new("public", "items"), items_route())];
    let mut applier = mssql_applier(&db.url, None, routes.clone(), ApplyOptions::default())
        .await
        .expect("an applier");
    let batch = vec![
        outbox_transaction(
            1,
            vec![
                item_change(Op::Insert, 1, None, Some(("a", 1))),
                item_change(Op::Insert, 3, None, Some(("e", 5))),
            ],
        ),
        outbox_transaction(
            2,
            vec![
                item_change(Op::Update, 1, Some(("a", 1)), Some(("b", 2))),
                item_change(Op::Insert, 2, None, Some(("c", 3))),
            ],
        ),
    ];
    applier.apply(&batch).await.expect("apply");
    applier
        .apply(&batch)
        .await
        .expect("the same batch again is skipped");
    assert_eq!(
        applier.position("pg").await.unwrap(),
        Some(Position::Outbox(2))
    );
    let again = outbox_transaction(3, vec![item_change(Op::Insert, 2, None, Some(("x", 9)))]);
    assert!(applier.apply(&[again]).await.is_err(), "the row exists");
    assert_eq!(
        applier.position("pg").await.unwrap(),
        Some(Position::Outbox(2))
    );
    let gone = outbox_transaction(3, vec![item_change(Op::Delete, 2, Some(("c", 3)), None)]);
    applier.apply(&[gone]).await.expect("delete");
    let conditional = ApplyOptions {
        conditional: true,
        ..ApplyOptions::default()
    };
    let mut merging = mssql_applier(&db.url, None, routes, conditional)
        .await
        .expect("a conditional applier");
    let stale = outbox_transaction(
        4,
        vec![
            item_change(Op::Update, 1, Some(("B", 2)), Some(("z", 0))),
            item_change(Op::Insert, 1, None, Some(("y", 0))),
            item_change(Op::Update, 1, Some(("b", 2)), Some(("d", 4))),
        ],
    );
    merging.apply(&[stale]).await.expect("conditional apply");
    assert_eq!(merging.take_skipped().len(), 2);
    assert_eq!(
        merging.position("pg").await.unwrap(),
        Some(Position::Outbox(4))
    );
    let rows = client
        .simple_query("SELECT id, note, qty FROM dbo.items ORDER BY id")
        .await
        .unwrap()
        .into_first_result()
        .await
        .unwrap();
    let rows: Vec<(i32, String, i32)> = rows
        .iter()
        .map(|r| {
            (
                r.get::<i32, _>(0).unwrap(),
                r.get::<&str, _>(1).unwrap().to_owned(),
                r.get::<i32, _>(2).unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, vec![(1, "d".to_owned(), 4), (3, "e".to_owned(), 5)]);
    drop(applier);
    drop(merging);
    drop(client);
    db.drop().await;
}
