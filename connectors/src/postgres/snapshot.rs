//! Consistent snapshots of PostgreSQL tables for the initial load (backfill).
//!
//! # Protocol
//!
//! [`PgExportedSnapshot::create`] opens a `replication=database` session (through
//! `pgwire-replication`, gated so that it runs commands before any START_REPLICATION) and sends
//! `CREATE_REPLICATION_SLOT <slot> [TEMPORARY] LOGICAL pgoutput (SNAPSHOT 'export')`. The
//! server answers with the slot's consistent point and the name of an exported snapshot: the
//! database exactly as of that point. Streaming the slot later delivers exactly the
//! transactions that commit after it, so a copy read in that snapshot plus the stream from
//! the consistent point is the table with nothing missing and nothing twice.
//!
//! The snapshot lives as long as the exporting session stays idle: the handle keeps the
//! session open and sends nothing until [`PgExportedSnapshot::release`]. Every copy worker
//! opens its own ordinary connection with [`PgSnapshotReader::open`], which runs `BEGIN
//! ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '<name>'`, so all
//! workers read the same database state in parallel. Rows are read in text format with the
//! same session settings and conversions as the change stream ([`super::types`]), so a value
//! copied and the same value streamed are identical.

use std::collections::HashMap;
use std::sync::Arc;

use pgwire_replication::{ReplicationClient, ReplicationConfig, TlsConfig};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::types::{Conversion, PgType, ValueError, resolve_type, text_value};
use super::{Lsn, PgError, connect, quote_ident};
use crate::{Row, TableName, Value};

/// Why a snapshot could not be taken or read.
#[derive(Debug, thiserror::Error)]
pub enum PgSnapshotError {
    /// An ordinary connection or statement failed.
    #[error(transparent)]
    Postgres(#[from] PgError),
    /// The replication session failed.
    #[error("the replication session exporting the snapshot failed")]
    Replication(#[source] pgwire_replication::PgWireError),
    /// The connection URL lacks what a replication session needs.
    #[error("the PostgreSQL URL {0}")]
    Url(&'static str),
    /// The server answered CREATE_REPLICATION_SLOT with something unexpected.
    #[error("unexpected answer to CREATE_REPLICATION_SLOT: {0}")]
    Protocol(String),
    /// A value cannot be converted.
    #[error("table {table}")]
    Value {
        /// The table read.
        table: TableName,
        /// The refusal.
        #[source]
        source: Box<ValueError>,
    },
}

impl PgSnapshotError {
    /// True when retrying may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            PgSnapshotError::Postgres(e) => e.is_transient(),
            PgSnapshotError::Replication(_) => true,
            _ => false,
        }
    }
}

/// A replication slot just created together with an exported snapshot of the database at the
/// slot's consistent point. The snapshot stays importable while this handle lives.
pub struct PgExportedSnapshot {
    session: ReplicationClient,
    /// The exported snapshot's name, for `SET TRANSACTION SNAPSHOT`.
    pub name: String,
    /// The slot's consistent point: the snapshot holds exactly the transactions committed
    /// before it; the slot streams those committed after it.
    pub position: Lsn,
}

impl std::fmt::Debug for PgExportedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgExportedSnapshot")
            .field("name", &self.name)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl PgExportedSnapshot {
    /// Creates logical slot `slot` (pgoutput; `temporary` slots vanish with the session) with
    /// an exported snapshot. The slot name must be a plain identifier (`[a-z0-9_]`).
    pub async fn create(
        url: &str,
        password: Option<&str>,
        slot: &str,
        temporary: bool,
    ) -> Result<PgExportedSnapshot, PgSnapshotError> {
        let mut session = ReplicationClient::connect_gated(session_config(url, password, slot)?)
            .await
            .map_err(PgSnapshotError::Replication)?;
        let sql = format!(
            "CREATE_REPLICATION_SLOT {slot}{} LOGICAL pgoutput (SNAPSHOT 'export')",
            if temporary { " TEMPORARY" } else { "" }
        );
        let rows = session
            .simple_query(&sql)
            .await
            .map_err(PgSnapshotError::Replication)?;
        let field = |i: usize| -> Result<String, PgSnapshotError> {
            rows.first()
                .and_then(|row| row.get(i))
                .and_then(|v| v.as_ref())
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .ok_or_else(|| PgSnapshotError::Protocol(format!("{rows:?}")))
        };
        let position: Lsn = field(1)?
            .parse()
            .map_err(|_| PgSnapshotError::Protocol(format!("consistent point {rows:?}")))?;
        let name = field(2)?;
        Ok(PgExportedSnapshot {
            session,
            name,
            position,
        })
    }

    /// Ends the exporting session (the snapshot can no longer be imported; a temporary slot
    /// is dropped, a permanent one stays at its consistent point).
    pub async fn release(self) {
        // A gated session that never started ends when its client is dropped.
        drop(self.session);
        tokio::task::yield_now().await;
    }
}

fn session_config(
    url: &str,
    password: Option<&str>,
    slot: &str,
) -> Result<ReplicationConfig, PgSnapshotError> {
    let parsed: tokio_postgres::Config = url.parse().map_err(PgError::Url)?;
    let user = parsed
        .get_user()
        .ok_or(PgSnapshotError::Url("names no user"))?;
    let database = parsed.get_dbname().unwrap_or(user);
    let password = match password {
        Some(p) => p.to_owned(),
        None => parsed
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default(),
    };
    let port = parsed.get_ports().first().copied().unwrap_or(5432);
    let config = match parsed.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => {
            ReplicationConfig::new(host, user, password, database, slot, slot).with_port(port)
        }
        Some(tokio_postgres::config::Host::Unix(dir)) => ReplicationConfig::unix(
            dir.to_string_lossy(),
            port,
            user,
            password,
            database,
            slot,
            slot,
        ),
        None => ReplicationConfig::new("localhost", user, password, database, slot, slot)
            .with_port(port),
    };
    Ok(config.with_tls(TlsConfig::disabled()))
}

/// A range of a table by its single integer key column: `lo < key <= hi`, each bound open
/// when `None`; a range without a column is the whole table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// The integer key column, `None` for the whole table.
    pub column: Option<String>,
    /// Exclusive lower bound.
    pub lo: Option<i128>,
    /// Inclusive upper bound.
    pub hi: Option<i128>,
}

impl KeyRange {
    /// The SQL condition selecting the range (`TRUE` for the whole table), with `quote`
    /// quoting the column name.
    pub fn condition(&self, quote: impl Fn(&str) -> String) -> String {
        let Some(column) = &self.column else {
            return "1=1".to_owned();
        };
        let column = quote(column);
        let mut parts = Vec::new();
        if let Some(lo) = self.lo {
            parts.push(format!("{column} > {lo}"));
        }
        if let Some(hi) = self.hi {
            parts.push(format!("{column} <= {hi}"));
        }
        if parts.is_empty() {
            "1=1".to_owned()
        } else {
            parts.join(" AND ")
        }
    }
}

/// One connection reading inside a snapshot (an imported one, or its own).
pub struct PgSnapshotReader {
    client: Client,
    types: HashMap<u32, PgType>,
}

impl PgSnapshotReader {
    /// Connects and opens a read-only repeatable-read transaction in the exported snapshot
    /// `snapshot` (or a fresh one of its own with `None`).
    pub async fn open(
        url: &str,
        password: Option<&str>,
        snapshot: Option<&str>,
    ) -> Result<PgSnapshotReader, PgSnapshotError> {
        let client = connect(url, password).await?;
        let mut sql = String::from(
            "SET DateStyle = ISO, MDY; SET TimeZone = UTC; SET bytea_output = hex; \
             SET extra_float_digits = 3; SET IntervalStyle = postgres; \
             BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;",
        );
        if let Some(name) = snapshot {
            sql.push_str(&format!(
                " SET TRANSACTION SNAPSHOT '{}';",
                name.replace('\'', "''")
            ));
        }
        client
            .batch_execute(&sql)
            .await
            .map_err(PgError::query("importing the exported snapshot"))?;
        Ok(PgSnapshotReader {
            client,
            types: HashMap::new(),
        })
    }

    /// Whether `table` has no rows.
    pub async fn is_empty(&self, table: &TableName) -> Result<bool, PgSnapshotError> {
        let sql = format!("SELECT NOT EXISTS (SELECT 1 FROM {})", qualified(table));
        let row = self
            .client
            .query_one(&sql, &[])
            .await
            .map_err(PgError::query("checking whether a table is empty"))?;
        Ok(row.get(0))
    }

    /// The number of rows of `table`.
    pub async fn count(&self, table: &TableName) -> Result<u64, PgSnapshotError> {
        let sql = format!("SELECT count(*) FROM {}", qualified(table));
        let row = self
            .client
            .query_one(&sql, &[])
            .await
            .map_err(PgError::query("counting rows"))?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    /// Every `every`-th value of the integer column `column` in key order: boundaries that
    /// split the table into ranges of `every` rows.
    pub async fn boundaries(
        &self,
        table: &TableName,
        column: &str,
        every: u64,
    ) -> Result<Vec<i128>, PgSnapshotError> {
        let column = quote_ident(column);
        let sql = format!(
            "SELECT k::text FROM (SELECT {column} AS k, row_number() OVER (ORDER BY {column}) AS n \
             FROM {}) s WHERE n % {every} = 0 ORDER BY k",
            qualified(table)
        );
        let rows = self
            .client
            .simple_query(&sql)
            .await
            .map_err(PgError::query("splitting a table into key ranges"))?;
        Ok(rows
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0).and_then(|t| t.parse().ok()),
                _ => None,
            })
            .collect())
    }

    /// The rows of `range` of `table`, with the listed columns, as canonical values.
    pub async fn rows(
        &mut self,
        table: &TableName,
        columns: &[String],
        range: &KeyRange,
    ) -> Result<Vec<Row>, PgSnapshotError> {
        let list = columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {list} FROM {} WHERE {}",
            qualified(table),
            range.condition(quote_ident)
        );
        let statement = self
            .client
            .prepare(&sql)
            .await
            .map_err(PgError::query("reading a key range"))?;
        let mut conversions = Vec::with_capacity(columns.len());
        for column in statement.columns() {
            let oid = column.type_().oid();
            if !self.types.contains_key(&oid) {
                let ty = resolve_type(&self.client, oid).await?;
                self.types.insert(oid, ty);
            }
            conversions.push(self.types[&oid].clone());
        }
        let names: Vec<Arc<str>> = columns.iter().map(|c| Arc::from(c.as_str())).collect();
        let messages = self
            .client
            .simple_query(&sql)
            .await
            .map_err(PgError::query("reading a key range"))?;
        let mut rows = Vec::with_capacity(messages.len());
        for message in messages {
            let SimpleQueryMessage::Row(data) = message else {
                continue;
            };
            let mut row = Row::new();
            for (i, ty) in conversions.iter().enumerate() {
                let value = match data.get(i) {
                    None => Value::Null,
                    Some(text) => convert(ty, text).map_err(|problem| PgSnapshotError::Value {
                        table: table.clone(),
                        source: Box::new(ValueError {
                            column: columns[i].clone(),
                            type_name: ty.name.clone(),
                            problem,
                        }),
                    })?,
                };
                row.push(names[i].clone(), value);
            }
            rows.push(row);
        }
        Ok(rows)
    }
}

fn convert(ty: &PgType, text: &str) -> Result<Value, super::types::ValueProblem> {
    match ty.conversion {
        Conversion::Unsupported => Err(super::types::ValueProblem::UnsupportedType),
        conversion => text_value(conversion, text),
    }
}

fn qualified(table: &TableName) -> String {
    format!(
        "{}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    )
}
