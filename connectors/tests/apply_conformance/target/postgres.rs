//! PostgreSQL as a target: a fresh database on the shared test server.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use duplex_connectors::postgres::{Lsn, PgError};
use duplex_connectors::{
    ApplyError, Decimal, Op, Position, SiteConnection, SiteKind, TableName, Value, ValueKind,
};
use duplex_testkit::{PgDatabase, shared_pg};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::{ITEM_COLUMNS, Target, poll_until};

const ITEMS_DDL: &str = "CREATE TABLE public.items ( \
    id int8 PRIMARY KEY, i2 int2, i4 int4, i8 int8, n numeric(40,10), f4 float4, f8 float8, \
    t text, vc varchar(20), bs bytea, d date, tm time, ts timestamp, tz timestamptz, u uuid, \
    j json, untouched varchar(20) DEFAULT 'default')";

pub struct Postgres {
    db: PgDatabase,
    source: String,
    /// The test's own session (not named `duplex`, so killing the applier's spares it).
    client: Client,
}

/// A session whose application name tells it apart from the applier's.
async fn session(url: &str) -> Client {
    let mut config: tokio_postgres::Config = url.parse().unwrap();
    config.application_name("duplex-conformance");
    let (client, connection) = config.connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    client
}

impl Target for Postgres {
    type Held = Client;
    const RACING_FIRST_POSITION_FAILS: bool = true;
    const SMALLINT: &'static str = "smallint";

    async fn create() -> Option<Postgres> {
        let db = shared_pg().create_database();
        db.execute_as_duplex(ITEMS_DDL).unwrap();
        let client = session(&db.url()).await;
        let source = format!("shop_{}", db.name());
        Some(Postgres { db, source, client })
    }

    fn site(&self) -> SiteConnection {
        SiteConnection {
            name: "target".into(),
            kind: SiteKind::Postgres,
            url: self.db.url(),
            password: None,
            slot_names_taken: Vec::new(),
        }
    }

    fn source(&self) -> &str {
        &self.source
    }

    fn table(&self, name: &str) -> TableName {
        TableName::new("public", name)
    }

    fn position(&self, offset: u64) -> Position {
        Position::Postgres(Lsn(offset))
    }

    async fn execute(&self, sql: &str) {
        self.client.batch_execute(sql).await.unwrap();
    }

    async fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        self.client
            .simple_query(sql)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|message| match message {
                SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }

    async fn read_item(&self, id: i64) -> Option<Vec<Value>> {
        let select: Vec<String> = ITEM_COLUMNS
            .iter()
            .map(|(column, kind)| match kind {
                ValueKind::Int => format!("{column}::int8"),
                ValueKind::Decimal | ValueKind::Json => format!("{column}::text"),
                // Widening float4 to float8 is exact.
                ValueKind::Float => format!("{column}::float8"),
                ValueKind::Time => {
                    format!("(extract(epoch FROM {column}) * 1000000)::int8")
                }
                _ => (*column).to_owned(),
            })
            .collect();
        let sql = format!("SELECT {} FROM items WHERE id = $1", select.join(", "));
        let row = self.client.query_opt(&sql, &[&id]).await.unwrap()?;
        let values = ITEM_COLUMNS
            .iter()
            .enumerate()
            .map(|(i, (_, kind))| {
                let value = match kind {
                    ValueKind::Int | ValueKind::Time => {
                        row.get::<_, Option<i64>>(i).map(|v| match kind {
                            ValueKind::Int => Value::Int(v),
                            _ => Value::Time(v),
                        })
                    }
                    ValueKind::Decimal => row
                        .get::<_, Option<String>>(i)
                        .map(|v| Value::Decimal(v.parse::<Decimal>().unwrap())),
                    ValueKind::Float => row.get::<_, Option<f64>>(i).map(Value::Float),
                    ValueKind::Text => row.get::<_, Option<String>>(i).map(Value::Text),
                    ValueKind::Json => row.get::<_, Option<String>>(i).map(Value::Json),
                    ValueKind::Bytes => row.get::<_, Option<Vec<u8>>>(i).map(Value::Bytes),
                    ValueKind::Date => row.get::<_, Option<NaiveDate>>(i).map(Value::Date),
                    ValueKind::Timestamp => {
                        row.get::<_, Option<NaiveDateTime>>(i).map(Value::Timestamp)
                    }
                    ValueKind::TimestampTz => row
                        .get::<_, Option<DateTime<Utc>>>(i)
                        .map(Value::TimestampTz),
                    ValueKind::Uuid => row.get::<_, Option<uuid::Uuid>>(i).map(Value::Uuid),
                    other => panic!("no {other:?} column in items"),
                };
                value.unwrap_or(Value::Null)
            })
            .collect();
        Some(values)
    }

    async fn applied_at(&self) -> Option<String> {
        self.client
            .query_opt(
                "SELECT applied_at::text FROM duplex.positions WHERE source = $1",
                &[&self.source],
            )
            .await
            .unwrap()
            .map(|row| row.get(0))
    }

    async fn kill_applier_connections(&self) {
        self.db
            .psql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = 'duplex'",
            )
            .unwrap();
    }

    async fn hold_position(&self, position: &Position) -> Client {
        let held = session(&self.db.url()).await;
        held.batch_execute("BEGIN").await.unwrap();
        held.execute(
            "INSERT INTO duplex.positions (source, position) VALUES ($1, $2)",
            &[&self.source, &serde_json::to_string(position).unwrap()],
        )
        .await
        .unwrap();
        held
    }

    async fn commit_held(&self, held: Client) {
        held.batch_execute("COMMIT").await.unwrap();
    }

    async fn wait_for_blocked_applier(&self) {
        poll_until("no applier session waits for a lock", || async {
            let waiting: i64 = self
                .client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                     AND application_name = 'duplex' AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            waiting > 0
        })
        .await;
    }

    fn write_error(err: &ApplyError) -> Option<(&TableName, Op)> {
        match err {
            ApplyError::PgWrite { table, op, .. } => Some((table, *op)),
            _ => None,
        }
    }

    fn sqlstate(err: &ApplyError) -> Option<String> {
        let driver = match err {
            ApplyError::Postgres(PgError::Query { source, .. })
            | ApplyError::PgWrite {
                source: PgError::Query { source, .. },
                ..
            } => source,
            _ => return None,
        };
        driver.code().map(|code| code.code().to_owned())
    }

    fn is_duplicate_key(err: &ApplyError) -> bool {
        // unique_violation
        Self::sqlstate(err).as_deref() == Some("23505")
    }
}
