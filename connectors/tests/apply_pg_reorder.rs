//! A large batch into PostgreSQL written table by table, each table in rounds of distinct rows
//! (`postgres/reorder.rs`): against a real server, the same batch applied by a session that
//! checks foreign keys (and so writes in the source's order) and by one that does not (the
//! superuser: reordered) must leave the same rows in every table, including where the order
//! matters: a secondary unique index whose values move between rows, a text key, a foreign
//! key whose parent row the batch deletes, and a trigger that fires in replica sessions and
//! reads another table.

use chrono::Utc;
use duplex_connectors::postgres::{Lsn, PgApplier, connect};
use duplex_connectors::{
    Applier, ApplyOptions, ChangeEvent, Op, Origin, Position, Row, TableName, TableRoute,
    Transaction, Value,
};
use duplex_testkit::{PgDatabase, shared_pg};

const SCHEMA: &str = "\
    CREATE TABLE orders (id int8 PRIMARY KEY, v int8); \
    CREATE TABLE lines (id int8 PRIMARY KEY, v int8 REFERENCES orders (id)); \
    CREATE TABLE codes (id int8 PRIMARY KEY, v text UNIQUE); \
    CREATE TABLE texts (id text PRIMARY KEY, v int8); \
    CREATE TABLE audit (seq serial PRIMARY KEY, order_id int8, lines_then int8);";

const TABLES: &[&str] = &["orders", "lines", "codes", "texts"];

fn table(name: &str) -> TableName {
    TableName::new("public", name)
}

fn routes() -> Vec<TableRoute> {
    TABLES
        .iter()
        .map(|t| TableRoute::same_names(table(t), table(t), &["id", "v"], &["id"]))
        .collect()
}

fn row(id: Value, v: Value) -> Row {
    [("id", id), ("v", v)].into_iter().collect()
}

fn change(t: &str, op: Op, id: Value, v: Value) -> ChangeEvent {
    ChangeEvent {
        table: table(t),
        op,
        key: [("id", id.clone())].into_iter().collect(),
        before: None,
        after: (op != Op::Delete).then(|| row(id, v)),
    }
}

fn int(t: &str, op: Op, id: i64, v: i64) -> ChangeEvent {
    change(t, op, Value::Int(id), Value::Int(v))
}

fn code(op: Op, id: i64, v: &str) -> ChangeEvent {
    change("codes", op, Value::Int(id), Value::Text(v.into()))
}

fn text(op: Op, id: &str, v: i64) -> ChangeEvent {
    change("texts", op, Value::Text(id.into()), Value::Int(v))
}

/// Source transactions whose order matters within and across tables, then enough inserts to
/// make the batch large.
fn transactions() -> Vec<Vec<ChangeEvent>> {
    let mut txns = vec![
        // The parent and its line; rows with several changes; codes and text keys set up.
        vec![
            int("orders", Op::Insert, 1, 10),
            int("lines", Op::Insert, 1, 1),
            int("orders", Op::Insert, 2, 20),
            code(Op::Insert, 1, "a"),
            code(Op::Insert, 2, "b"),
            text(Op::Insert, "x", 1),
            text(Op::Insert, "X", 2),
        ],
        vec![
            int("orders", Op::Update, 1, 11),
            int("orders", Op::Update, 2, 21),
            int("orders", Op::Update, 1, 12),
            // Row 1 takes "v" then gives it up; only then does row 2 take it: in rounds, row
            // 2's change would come before row 1's second and collide on the unique index.
            code(Op::Update, 1, "v"),
            code(Op::Update, 1, "w"),
            code(Op::Update, 2, "v"),
            text(Op::Update, "x", 3),
            text(Op::Delete, "X", 0),
        ],
        // The line goes, then its parent; another parent and line come.
        vec![
            int("lines", Op::Delete, 1, 0),
            int("orders", Op::Delete, 1, 0),
            int("orders", Op::Insert, 3, 30),
            int("lines", Op::Insert, 2, 3),
            text(Op::Insert, "X", 4),
        ],
        // A row deleted and inserted again, then updated.
        vec![
            int("orders", Op::Delete, 2, 0),
            int("orders", Op::Insert, 2, 22),
            int("orders", Op::Update, 2, 23),
            int("lines", Op::Update, 2, 2),
        ],
    ];
    for n in 0..60 {
        let id = 100 + n;
        txns.push(vec![
            int("orders", Op::Insert, id, n),
            int("lines", Op::Insert, id, id),
            int("orders", Op::Update, 3, 1000 + n),
            int("lines", Op::Update, 2, if n % 2 == 0 { 3 } else { 2 }),
            int("orders", Op::Update, id, n + 1),
        ]);
    }
    txns
}

fn batch() -> Vec<Transaction> {
    transactions()
        .into_iter()
        .enumerate()
        .map(|(n, events)| Transaction {
            source: "shop".into(),
            position: Position::Postgres(Lsn(1000 + n as u64)),
            commit_time: Utc::now(),
            origin: Origin::Local,
            events,
        })
        .collect()
}

/// Every table's rows in key order, as text.
async fn contents(db: &PgDatabase) -> Vec<String> {
    let client = connect(&db.admin_url(), None).await.unwrap();
    let mut all = Vec::new();
    for t in TABLES.iter().chain(&["audit"]) {
        let rows = client
            .query(
                &format!("SELECT row_to_json(t)::text FROM {t} t ORDER BY 1"),
                &[],
            )
            .await
            .unwrap();
        all.push(format!(
            "{t}: {}",
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    all
}

/// A database with the tables, the trigger enabled as `trigger` says (`None`: no trigger).
fn database(trigger: Option<&str>) -> PgDatabase {
    let db = shared_pg().create_database();
    db.execute_as_duplex(SCHEMA).unwrap();
    if let Some(enable) = trigger {
        db.psql(&format!(
            "CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               INSERT INTO audit (order_id, lines_then) SELECT NEW.id, count(*) FROM lines; \
               RETURN NEW; END $$; \
             CREATE TRIGGER note AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION note(); \
             ALTER TABLE orders ENABLE {enable} TRIGGER note;"
        ))
        .unwrap();
    }
    db
}

async fn apply(url: &str, batch: &[Transaction]) {
    let mut applier = PgApplier::connect(url, None, routes(), ApplyOptions::default())
        .await
        .unwrap();
    applier.apply(batch).await.unwrap();
}

#[tokio::test]
async fn a_large_batch_written_table_by_table_leaves_the_rows_of_the_source_order() {
    let batch = batch();
    let events: usize = batch.iter().map(|t| t.events.len()).sum();
    assert!(events >= 256, "{events} changes: too few to be reordered");
    for trigger in [None, Some("ALWAYS")] {
        // The duplex role checks foreign keys: the source's order. The superuser does not:
        // reordered where nothing fires.
        let in_order = database(trigger);
        apply(&in_order.url(), &batch).await;
        let reordered = database(trigger);
        apply(&reordered.admin_url(), &batch).await;
        let expected = contents(&in_order).await;
        assert_eq!(contents(&reordered).await, expected, "trigger {trigger:?}");
        // The cases that depend on the order came out as the source made them.
        let codes = &expected[2];
        assert!(
            codes.contains(r#"{"id":1,"v":"w"}"#) && codes.contains(r#"{"id":2,"v":"v"}"#),
            "{codes}"
        );
        assert!(expected[1].contains(r#"{"id":2,"v":2}"#), "{}", expected[1]);
        assert!(!expected[0].contains(r#""id":1,"#), "{}", expected[0]);
        if trigger.is_some() {
            // The trigger saw the lines the source order had at each order's insert (written
            // table by table, every order would have come before every line).
            for seen in [
                r#""order_id":100,"lines_then":1"#,
                r#""order_id":101,"lines_then":2"#,
            ] {
                assert!(expected[4].contains(seen), "{}", expected[4]);
            }
        }
    }
}
