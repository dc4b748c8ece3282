//! SQL Server as a target: a fresh database on the server `DUPLEX_TEST_MSSQL_URL` names
//! (`mssql://sa:<password>@host:1433/master?trust-server-certificate=true`, a login that may
//! create databases and kill sessions). No SQL Server runs on our machines: without the
//! variable every test of this kind says it is skipped and passes.

use duplex_connectors::mssql::{
    CdcPosition, Lsn, MssqlClient, MssqlError, MssqlType, connect, to_value,
};
use duplex_connectors::{ApplyError, Op, Position, SiteConnection, SiteKind, TableName, Value};
use tiberius::ColumnData;
use tokio::sync::Mutex;

use super::{ITEM_COLUMNS, Target, poll_until};

/// `n` holds 38 digits, the most SQL Server's `decimal` holds; `j` is text (SQL Server has no
/// json type before 2025).
const ITEMS_DDL: &str = "CREATE TABLE dbo.items ( \
    id bigint PRIMARY KEY, i2 smallint, i4 int, i8 bigint, n decimal(38,10), f4 real, \
    f8 float, t nvarchar(max), vc nvarchar(20), bs varbinary(max), d date, tm time(6), \
    ts datetime2(6), tz datetimeoffset(6), u uniqueidentifier, j nvarchar(max), \
    untouched nvarchar(20) DEFAULT N'default')";

/// The SQL Server type each of [`ITEM_COLUMNS`] is read back with.
const ITEM_TYPES: &[MssqlType] = &[
    MssqlType::BigInt,
    MssqlType::SmallInt,
    MssqlType::Int,
    MssqlType::BigInt,
    MssqlType::Decimal,
    MssqlType::Real,
    MssqlType::Float,
    MssqlType::Text,
    MssqlType::Text,
    MssqlType::Binary,
    MssqlType::Date,
    MssqlType::Time,
    MssqlType::DateTime2,
    MssqlType::DateTimeOffset,
    MssqlType::UniqueIdentifier,
    MssqlType::Text,
    MssqlType::Text,
];

pub struct Mssql {
    admin_url: String,
    name: String,
    url: String,
    source: String,
    /// The test's own session.
    client: Mutex<MssqlClient>,
}

async fn session(url: &str) -> MssqlClient {
    connect(url, None)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

async fn run(client: &mut MssqlClient, sql: &str) {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_results()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A value of a result as text (NULL as `None`).
fn text(data: ColumnData<'static>) -> Option<String> {
    Some(match data {
        ColumnData::U8(v) => v?.to_string(),
        ColumnData::I16(v) => v?.to_string(),
        ColumnData::I32(v) => v?.to_string(),
        ColumnData::I64(v) => v?.to_string(),
        ColumnData::F32(v) => v?.to_string(),
        ColumnData::F64(v) => v?.to_string(),
        ColumnData::Bit(v) => v?.to_string(),
        ColumnData::String(v) => v?.into_owned(),
        ColumnData::Guid(v) => v?.to_string(),
        ColumnData::Numeric(v) => v?.to_string(),
        other => panic!("the suite reads no {other:?} as text"),
    })
}

/// The SQL Server error number behind an apply error, if the server refused a statement.
fn server_code(err: &ApplyError) -> Option<u32> {
    let error = match err {
        ApplyError::Mssql(error) | ApplyError::MssqlWrite { source: error, .. } => error,
        _ => return None,
    };
    match &**error {
        MssqlError::Query {
            source: tiberius::error::Error::Server(token),
            ..
        } => Some(token.code()),
        _ => None,
    }
}

impl Drop for Mssql {
    fn drop(&mut self) {
        // The test's runtime may be gone or busy: drop the database from a thread of its own.
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut client = session(&admin).await;
                run(
                    &mut client,
                    &format!(
                        "ALTER DATABASE [{name}] SET SINGLE_USER WITH ROLLBACK IMMEDIATE; \
                         DROP DATABASE [{name}]"
                    ),
                )
                .await;
            });
        })
        .join();
        if dropped.is_err() {
            eprintln!("dropping test database {} failed", self.name);
        }
    }
}

impl Target for Mssql {
    type Held = MssqlClient;
    const UPSERTS: bool = false;
    // The position check reads with UPDLOCK, HOLDLOCK: it waits for the other's row and
    // reads it once committed.
    const RACING_FIRST_POSITION_FAILS: bool = false;
    const SMALLINT: &'static str = "smallint";

    async fn create() -> Option<Mssql> {
        let Ok(admin_url) = std::env::var("DUPLEX_TEST_MSSQL_URL") else {
            eprintln!(
                "skipped: DUPLEX_TEST_MSSQL_URL not set (no SQL Server runs on these machines)"
            );
            return None;
        };
        let name = format!("duplex_conformance_{}", uuid::Uuid::new_v4().simple());
        run(
            &mut session(&admin_url).await,
            &format!("CREATE DATABASE [{name}]"),
        )
        .await;
        let mut url = url::Url::parse(&admin_url).expect("DUPLEX_TEST_MSSQL_URL is a URL");
        url.set_path(&name);
        let url = url.to_string();
        let mut client = session(&url).await;
        run(&mut client, ITEMS_DDL).await;
        Some(Mssql {
            admin_url,
            source: format!("shop_{name}"),
            name,
            url,
            client: Mutex::new(client),
        })
    }

    fn site(&self) -> SiteConnection {
        SiteConnection {
            name: "target".into(),
            kind: SiteKind::Mssql,
            url: self.url.clone(),
            password: None,
            slot_names_taken: Vec::new(),
        }
    }

    fn source(&self) -> &str {
        &self.source
    }

    fn table(&self, name: &str) -> TableName {
        TableName::new("dbo", name)
    }

    fn position(&self, offset: u64) -> Position {
        let mut bytes = [0u8; 10];
        bytes[2..].copy_from_slice(&offset.to_be_bytes());
        Position::Mssql(CdcPosition::after_commit(Lsn(bytes)))
    }

    async fn execute(&self, sql: &str) {
        run(&mut *self.client.lock().await, sql).await;
    }

    async fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let mut client = self.client.lock().await;
        let rows = client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .into_first_result()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.into_iter()
            .map(|row| row.into_iter().map(text).collect())
            .collect()
    }

    async fn read_item(&self, id: i64) -> Option<Vec<Value>> {
        let columns: Vec<String> = ITEM_COLUMNS.iter().map(|(c, _)| format!("[{c}]")).collect();
        let sql = format!(
            "SELECT {} FROM dbo.items WHERE id = @P1",
            columns.join(", ")
        );
        let mut client = self.client.lock().await;
        let row = client
            .query(sql.as_str(), &[&id])
            .await
            .unwrap()
            .into_row()
            .await
            .unwrap()?;
        let values = row
            .into_iter()
            .zip(ITEM_TYPES)
            .zip(ITEM_COLUMNS)
            .map(|((data, ty), (column, kind))| {
                let value = to_value(*ty, data).unwrap_or_else(|e| panic!("{column}: {e}"));
                match (kind, value) {
                    // Kept as its text in an nvarchar column.
                    (duplex_connectors::ValueKind::Json, Value::Text(j)) => Value::Json(j),
                    (_, value) => value,
                }
            })
            .collect();
        Some(values)
    }

    async fn applied_at(&self) -> Option<String> {
        let mut client = self.client.lock().await;
        let row = client
            .query(
                "SELECT CONVERT(nvarchar(40), applied_at, 121) FROM duplex.positions \
                 WHERE source = @P1",
                &[&self.source.as_str()],
            )
            .await
            .unwrap()
            .into_row()
            .await
            .unwrap()?;
        row.get::<&str, _>(0).map(str::to_owned)
    }

    async fn kill_applier_connections(&self) {
        // Every other session in the database is the applier's (the test's own is spared).
        self.execute(&format!(
            "DECLARE @kill nvarchar(max) = N''; \
             SELECT @kill = @kill + N'KILL ' + CONVERT(nvarchar(10), session_id) + N'; ' \
             FROM sys.dm_exec_sessions WHERE database_id = DB_ID(N'{}') \
             AND session_id <> @@SPID; \
             EXEC (@kill)",
            self.name
        ))
        .await;
    }

    async fn hold_position(&self, position: &Position) -> MssqlClient {
        let mut held = session(&self.url).await;
        run(&mut held, "BEGIN TRANSACTION").await;
        held.execute(
            "INSERT INTO duplex.positions (source, position, applied_at) \
             VALUES (@P1, @P2, SYSUTCDATETIME())",
            &[
                &self.source.as_str(),
                &serde_json::to_string(position).unwrap().as_str(),
            ],
        )
        .await
        .unwrap();
        held
    }

    async fn commit_held(&self, mut held: MssqlClient) {
        run(&mut held, "COMMIT").await;
    }

    async fn wait_for_blocked_applier(&self) {
        poll_until("no applier session waits for a lock", || async {
            let blocked = self
                .query(&format!(
                    "SELECT COUNT(*) FROM sys.dm_exec_requests \
                     WHERE database_id = DB_ID(N'{}') AND blocking_session_id <> 0",
                    self.name
                ))
                .await;
            blocked[0][0].as_deref() != Some("0")
        })
        .await;
    }

    fn write_error(err: &ApplyError) -> Option<(&TableName, Op)> {
        match err {
            ApplyError::MssqlWrite { table, op, .. } => Some((table, *op)),
            _ => None,
        }
    }

    fn sqlstate(err: &ApplyError) -> Option<String> {
        Some(
            match server_code(err)? {
                // String or binary data would be truncated (2628 names the column).
                2628 | 8152 => "22001",
                // Violation of a PRIMARY KEY or UNIQUE constraint, or of a unique index.
                2627 | 2601 => "23000",
                other => return Some(format!("mssql {other}")),
            }
            .to_owned(),
        )
    }

    fn is_duplicate_key(err: &ApplyError) -> bool {
        matches!(server_code(err), Some(2627 | 2601))
    }
}
