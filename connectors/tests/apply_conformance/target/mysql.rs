//! MySQL/MariaDB as a target: a fresh database on the shared test server.

use chrono::{NaiveDate, NaiveDateTime, TimeZone, Utc};
use duplex_connectors::mysql::{BinlogPosition, MysqlError, connect};
use duplex_connectors::{
    ApplyError, Decimal, Op, Position, SiteConnection, SiteKind, TableName, Value, ValueKind,
};
use duplex_testkit::{MariaDatabase, shared_mariadb};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tokio::sync::Mutex;

use super::{ITEM_COLUMNS, Target, poll_until};

const ITEMS_DDL: &str = "CREATE TABLE items ( \
    id BIGINT PRIMARY KEY, i2 SMALLINT, i4 INT, i8 BIGINT, n DECIMAL(40,10), f4 FLOAT, \
    f8 DOUBLE, t LONGTEXT, vc VARCHAR(20), bs LONGBLOB, d DATE, tm TIME(6), ts DATETIME(6), \
    tz TIMESTAMP(6) NULL, u UUID, j JSON, untouched VARCHAR(20) DEFAULT 'default' \
    ) ENGINE = InnoDB";

pub struct Mysql {
    db: MariaDatabase,
    source: String,
    /// The test's own session, in UTC.
    conn: Mutex<Conn>,
}

async fn session(url: &str) -> Conn {
    let mut conn = connect(url, None).await.unwrap();
    conn.query_drop("SET time_zone = '+00:00'").await.unwrap();
    conn
}

/// The text of a value the text protocol or a string column gave.
fn text(value: mysql_async::Value) -> Option<String> {
    match value {
        mysql_async::Value::NULL => None,
        mysql_async::Value::Bytes(b) => Some(String::from_utf8(b).unwrap()),
        mysql_async::Value::Int(i) => Some(i.to_string()),
        mysql_async::Value::UInt(u) => Some(u.to_string()),
        other => panic!("expected text, got {other:?}"),
    }
}

/// A value of `items` read in the binary protocol, as the canonical value of `kind`.
fn canonical(kind: ValueKind, value: mysql_async::Value) -> Value {
    use mysql_async::Value as M;
    match (kind, value) {
        (_, M::NULL) => Value::Null,
        (ValueKind::Int, M::Int(i)) => Value::Int(i),
        (ValueKind::Int, M::UInt(u)) => Value::Int(i64::try_from(u).unwrap()),
        (ValueKind::Float, M::Float(f)) => Value::Float(f64::from(f)),
        (ValueKind::Float, M::Double(f)) => Value::Float(f),
        (ValueKind::Decimal, M::Bytes(b)) => {
            Value::Decimal(String::from_utf8(b).unwrap().parse::<Decimal>().unwrap())
        }
        (ValueKind::Text, M::Bytes(b)) => Value::Text(String::from_utf8(b).unwrap()),
        (ValueKind::Json, M::Bytes(b)) => Value::Json(String::from_utf8(b).unwrap()),
        (ValueKind::Uuid, M::Bytes(b)) => {
            Value::Uuid(String::from_utf8(b).unwrap().parse().unwrap())
        }
        (ValueKind::Bytes, M::Bytes(b)) => Value::Bytes(b),
        (ValueKind::Date, M::Date(y, m, d, 0, 0, 0, 0)) => {
            Value::Date(NaiveDate::from_ymd_opt(y.into(), m.into(), d.into()).unwrap())
        }
        (ValueKind::Timestamp | ValueKind::TimestampTz, M::Date(y, mo, d, h, mi, s, us)) => {
            let naive: NaiveDateTime = NaiveDate::from_ymd_opt(y.into(), mo.into(), d.into())
                .unwrap()
                .and_hms_micro_opt(h.into(), mi.into(), s.into(), us)
                .unwrap();
            if kind == ValueKind::Timestamp {
                Value::Timestamp(naive)
            } else {
                // The session's time zone is UTC.
                Value::TimestampTz(Utc.from_utc_datetime(&naive))
            }
        }
        (ValueKind::Time, M::Time(negative, days, h, m, s, us)) => {
            let seconds =
                i64::from(days) * 86_400 + i64::from(h) * 3_600 + i64::from(m) * 60 + i64::from(s);
            let micros = seconds * 1_000_000 + i64::from(us);
            Value::Time(if negative { -micros } else { micros })
        }
        (kind, value) => panic!("cannot read {value:?} as {kind:?}"),
    }
}

/// The server's error behind an apply error, if the server refused a statement.
fn server_error(err: &ApplyError) -> Option<&mysql_async::ServerError> {
    let error = match err {
        ApplyError::Mysql(error) | ApplyError::MysqlWrite { source: error, .. } => error,
        _ => return None,
    };
    match &**error {
        MysqlError::Query {
            source: mysql_async::Error::Server(server),
            ..
        } => Some(server),
        _ => None,
    }
}

impl Target for Mysql {
    type Held = Conn;
    const RACING_FIRST_POSITION_FAILS: bool = false;
    const SMALLINT: &'static str = "smallint(6)";

    async fn create() -> Option<Mysql> {
        let db = shared_mariadb().create_database();
        db.sql(ITEMS_DDL).unwrap();
        let conn = Mutex::new(session(&db.url()).await);
        let source = format!("shop_{}", db.name());
        Some(Mysql { db, source, conn })
    }

    fn site(&self) -> SiteConnection {
        SiteConnection {
            name: "target".into(),
            kind: SiteKind::Mysql,
            url: self.db.url(),
            password: None,
            slot_names_taken: Vec::new(),
        }
    }

    fn source(&self) -> &str {
        &self.source
    }

    fn table(&self, name: &str) -> TableName {
        TableName::new(self.db.name(), name)
    }

    fn position(&self, offset: u64) -> Position {
        Position::Mysql(BinlogPosition::new("mysql-bin.000007", offset))
    }

    async fn execute(&self, sql: &str) {
        self.conn.lock().await.query_drop(sql).await.unwrap();
    }

    async fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let rows: Vec<mysql_async::Row> = self.conn.lock().await.query(sql).await.unwrap();
        rows.into_iter()
            .map(|row| row.unwrap().into_iter().map(text).collect())
            .collect()
    }

    async fn read_item(&self, id: i64) -> Option<Vec<Value>> {
        let columns: Vec<String> = ITEM_COLUMNS
            .iter()
            .map(|(column, _)| format!("`{column}`"))
            .collect();
        let sql = format!("SELECT {} FROM items WHERE id = ?", columns.join(", "));
        // The binary protocol: floats arrive as their bits, not as text.
        let row: Option<mysql_async::Row> =
            self.conn.lock().await.exec_first(sql, (id,)).await.unwrap();
        let values = row?.unwrap();
        Some(
            ITEM_COLUMNS
                .iter()
                .zip(values)
                .map(|((_, kind), value)| canonical(*kind, value))
                .collect(),
        )
    }

    async fn applied_at(&self) -> Option<String> {
        self.conn
            .lock()
            .await
            .exec_first(
                "SELECT CAST(applied_at AS CHAR) FROM duplex.positions WHERE source = ?",
                (&self.source,),
            )
            .await
            .unwrap()
    }

    async fn kill_applier_connections(&self) {
        let mut conn = self.conn.lock().await;
        let ids: Vec<u64> = conn
            .exec(
                "SELECT ID FROM information_schema.PROCESSLIST \
                 WHERE DB = ? AND USER = 'duplex' AND ID <> CONNECTION_ID()",
                (self.db.name(),),
            )
            .await
            .unwrap();
        assert_eq!(ids.len(), 1, "the applier's connection");
        for id in ids {
            conn.query_drop(format!("KILL CONNECTION {id}"))
                .await
                .unwrap();
        }
    }

    async fn hold_position(&self, position: &Position) -> Conn {
        let mut held = session(&self.db.url()).await;
        held.query_drop("BEGIN").await.unwrap();
        held.exec_drop(
            "INSERT INTO duplex.positions (source, position, applied_at) VALUES (?, ?, NOW(6))",
            (&self.source, serde_json::to_string(position).unwrap()),
        )
        .await
        .unwrap();
        held
    }

    async fn commit_held(&self, mut held: Conn) {
        held.query_drop("COMMIT").await.unwrap();
    }

    async fn wait_for_blocked_applier(&self) {
        // A session waiting for a row lock in a primary key lookup shows no lock wait in
        // INNODB_TRX on MariaDB (the wait happens while the optimizer reads the row, in state
        // `Statistics`): it is seen as a statement on `duplex.positions` that does not end.
        poll_until("no applier session waits on duplex.positions", || async {
            let waiting: Option<u64> = self
                .conn
                .lock()
                .await
                .exec_first(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                     WHERE DB = ? AND USER = 'duplex' AND ID <> CONNECTION_ID() \
                     AND INFO LIKE '%duplex.positions%'",
                    (self.db.name(),),
                )
                .await
                .unwrap();
            waiting.unwrap_or(0) > 0
        })
        .await;
    }

    fn write_error(err: &ApplyError) -> Option<(&TableName, Op)> {
        match err {
            ApplyError::MysqlWrite { table, op, .. } => Some((table, *op)),
            _ => None,
        }
    }

    fn sqlstate(err: &ApplyError) -> Option<String> {
        server_error(err).map(|server| server.state.clone())
    }

    fn is_duplicate_key(err: &ApplyError) -> bool {
        // ER_DUP_ENTRY
        server_error(err).is_some_and(|server| server.code == 1062)
    }
}
