//! The snapshot contract every kind implements for the initial load (backfill), and the types
//! that choose the kind in one place: [`SourceSnapshot`] (taking the snapshot) and
//! [`AnySnapshot`] (reading it).
//!
//! # Contract
//!
//! A backfill copies a source's tables as of ONE point of its change log and then streams from
//! that point, so the snapshot and its position must be taken together:
//!
//! - *Taking it is per kind* ([`SourceSnapshot::take`]). PostgreSQL: the publication is made to
//!   list the mapped tables, then the slot `duplex run` streams from is created with an
//!   exported snapshot, or, when it exists (a link of the site may still need it), a temporary
//!   slot exports it (`postgres::snapshot`); its consistent point is the position. MariaDB /
//!   MySQL: a `START TRANSACTION WITH CONSISTENT SNAPSHOT` and the binlog position the server
//!   reports for it (`mysql::snapshot`). Either way the snapshot holds exactly the transactions
//!   committed up to [`SourceSnapshot::position`] and the stream started there delivers exactly
//!   the ones after it.
//! - *Reading it is shared* ([`SnapshotRead`]): counting rows, planning range boundaries,
//!   reading a [`KeyRange`] and classifying keys into ranges. Every read of one reader sees the
//!   same database state; readers of one [`SourceSnapshot`] ([`SourceSnapshot::reader`]) all see
//!   the snapshot's state. Reads never write.
//! - *Order is the server's.* Range boundaries are numbered and compared by the source
//!   database with the key columns' own types and collations, never in Rust, so the ranges a
//!   plan cuts, the rows a range read returns and the range a key is classified into agree.
//! - Values come out as the change stream of the same kind delivers them: a value copied and the
//!   same value streamed are identical.

use std::sync::Arc;

use tokio::sync::Mutex;

use crate::bulk::{BulkRows, BulkShape};
use crate::digest::RangeDigest;
use crate::load::AdminError;
use crate::mssql::CdcPosition;
use crate::mssql::snapshot::{MssqlSnapshot, MssqlSnapshotError};
use crate::mysql::{BinlogPosition, MysqlSnapshot, MysqlSnapshotError};
use crate::postgres::{PgExportedSnapshot, PgSnapshotError, PgSnapshotReader};
use crate::{Column, Position, Row, SiteConnection, SiteKind, TableName, Value};

/// A range of a table by its primary key: `lo < key <= hi`, compared by the database as a row
/// of `columns` (so with the columns' own collations and orderings), each bound open when
/// `None`; a range without columns is the whole table. Bounds hold one value per column.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRange {
    /// The key columns, in key order; empty for the whole table.
    pub columns: Vec<Column>,
    /// Exclusive lower bound.
    pub lo: Option<Vec<Value>>,
    /// Inclusive upper bound.
    pub hi: Option<Vec<Value>>,
}

impl KeyRange {
    /// The whole table.
    pub fn whole() -> KeyRange {
        KeyRange {
            columns: Vec::new(),
            lo: None,
            hi: None,
        }
    }
}

/// The values an integer column spans ([`SnapshotRead::integer_span`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntegerSpan {
    /// The smallest value.
    pub min: i128,
    /// The largest value.
    pub max: i128,
    /// About how many rows the table holds.
    pub rows: u64,
}

/// Read-only access to one consistent snapshot of a site's tables (see the module docs).
#[allow(async_fn_in_trait)]
pub trait SnapshotRead {
    /// Why a read failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Whether a key column of this type can cut a table into ranges: its values have a
    /// literal or parameter form and the server orders and compares them consistently.
    fn can_cut_on(&self, column: &Column) -> bool;

    /// The number of rows of `table`.
    async fn count(&mut self, table: &TableName) -> Result<u64, Self::Error>;

    /// Every `every`-th value of the integer primary-key column `column` in key order
    /// (boundaries that split the table into ranges of `every` rows), and the number of rows
    /// of the table.
    ///
    /// The cuts are found by walking the key's index, `every` keys at a time from the last
    /// cut, each step one query; only the rows after the last cut are counted (every range
    /// before it holds exactly `every`). Numbering every row with a window function instead
    /// sorts and numbers the whole table before the first cut is known: on MariaDB that took
    /// 4-5x as long as the walk, and the separate count scanned the table once more.
    async fn boundaries(
        &mut self,
        table: &TableName,
        column: &str,
        every: u64,
    ) -> Result<(Vec<i128>, u64), Self::Error>;

    /// Every `every`-th key of `table` (primary-key columns `key`, in key order as the server
    /// orders them): the cut points splitting the table into ranges of `every` rows, found as
    /// [`SnapshotRead::boundaries`] finds them (a walk by the key's index, one query per
    /// range); only the cut points are sent.
    async fn key_boundaries(
        &mut self,
        table: &TableName,
        key: &[Column],
        every: u64,
    ) -> Result<Vec<Vec<Value>>, Self::Error>;

    /// For each of `keys`, the index of the range it falls in when `cuts` (ascending) cut the
    /// table on its key columns `key`: the number of cut points below it, as the server
    /// compares them.
    async fn range_indexes(
        &mut self,
        table: &TableName,
        key: &[Column],
        cuts: &[Vec<Value>],
        keys: &[Vec<Value>],
    ) -> Result<Vec<u64>, Self::Error>;

    /// The rows of `range` of `table` with `columns`, as canonical values.
    async fn rows(
        &mut self,
        table: &TableName,
        columns: &[Column],
        range: &KeyRange,
    ) -> Result<Vec<Row>, Self::Error>;

    /// The rows of `table` with `columns` whose primary key (columns `key`) equals one of
    /// `keys` as the server compares them (a case-insensitive collation may return a row whose
    /// key differs in case), in no particular order.
    async fn rows_with_keys(
        &mut self,
        table: &TableName,
        columns: &[Column],
        key: &[Column],
        keys: &[Vec<Value>],
    ) -> Result<Vec<Row>, Self::Error>;

    /// The smallest and largest value of the integer column `column` of `table` and the
    /// table's row count as the server's statistics estimate it (counted when it has none);
    /// `None` when the table is empty.
    async fn integer_span(
        &mut self,
        table: &TableName,
        column: &str,
    ) -> Result<Option<IntegerSpan>, Self::Error>;

    /// Whether [`SnapshotRead::digest`] covers every one of `columns` (see [`crate::digest`]).
    fn can_digest(&self, columns: &[Column]) -> bool;

    /// The digest of `range` of `table` over `columns` in this order ([`crate::digest`]):
    /// equal on two sites, of any kinds, when the range holds the same rows on both.
    async fn digest(
        &mut self,
        table: &TableName,
        columns: &[Column],
        range: &KeyRange,
    ) -> Result<RangeDigest, Self::Error>;
}

/// A snapshot could not be taken or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// On PostgreSQL.
    #[error(transparent)]
    Postgres(#[from] PgSnapshotError),
    /// On MySQL/MariaDB.
    #[error(transparent)]
    Mysql(#[from] MysqlSnapshotError),
    /// On SQL Server (boxed: its type errors are large).
    #[error(transparent)]
    Mssql(Box<MssqlSnapshotError>),
    /// What was asked is not built for this kind of site.
    #[error(transparent)]
    NotSupported(#[from] crate::NotSupported),
    /// Preparing the source for the snapshot failed (PostgreSQL: publication and slot).
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The source cannot be snapshotted as it stands; the message says what to do.
    #[error("{0}")]
    Refused(String),
}

impl From<MssqlSnapshotError> for SnapshotError {
    fn from(error: MssqlSnapshotError) -> SnapshotError {
        SnapshotError::Mssql(Box::new(error))
    }
}

impl SnapshotError {
    /// True when retrying may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            SnapshotError::Postgres(e) => e.is_transient(),
            SnapshotError::Mysql(e) => e.is_transient(),
            SnapshotError::Mssql(e) => e.is_transient(),
            SnapshotError::Admin(_)
            | SnapshotError::Refused(_)
            | SnapshotError::NotSupported(_) => false,
        }
    }
}

/// The snapshot of one source a backfill copies from, with the position it matches; it stays
/// readable until [`SourceSnapshot::release`].
pub enum SourceSnapshot {
    /// A slot's exported snapshot; every reader imports it on a connection of its own.
    Postgres {
        /// Where readers connect.
        site: SiteConnection,
        /// The exporting session.
        exported: PgExportedSnapshot,
    },
    /// The one consistent-snapshot transaction (MariaDB cannot share it between connections,
    /// so every reader reads through it, one read at a time).
    Mysql {
        /// The snapshot's transaction.
        conn: Arc<Mutex<MysqlSnapshot>>,
        /// The binlog position it matches.
        position: BinlogPosition,
    },
    /// The one snapshot-isolation transaction, fenced by table locks to match a CDC position
    /// exactly (`mssql::snapshot`); every reader reads through it, one read at a time.
    Mssql {
        /// The snapshot's transaction.
        conn: Arc<Mutex<MssqlSnapshot>>,
        /// The CDC position it matches.
        position: CdcPosition,
    },
}

impl SourceSnapshot {
    /// Takes the snapshot of `site` for a backfill by the deployment `deployment` (the state
    /// store's identity; PostgreSQL: the publication is checked to be no other deployment's and
    /// claimed for this one). `tables` are all the tables read from the site (PostgreSQL: the
    /// publication lists them before the snapshot). What the source's stream must still give, with
    /// who needs it and what to do otherwise (for the refusal): `resume_from`, a position it
    /// must be readable from exactly (an interrupted backfill that continues: its catch-up
    /// streams from its first snapshot); `streamed_by`, readers that resume from positions of
    /// their own (a stopped link of the site), so the stream must still exist. Nothing a reader
    /// of the site still needs is dropped or moved: PostgreSQL keeps an existing slot where it
    /// is and exports the snapshot through a temporary one.
    pub async fn take(
        site: &SiteConnection,
        tables: &[TableName],
        resume_from: Option<(&Position, &str)>,
        streamed_by: Option<&str>,
        deployment: &str,
    ) -> Result<SourceSnapshot, SnapshotError> {
        Ok(match site.kind {
            SiteKind::Postgres => {
                let resume_from = match resume_from {
                    None => None,
                    Some((Position::Postgres(lsn), who)) => Some((*lsn, who)),
                    Some((other, who)) => {
                        return Err(SnapshotError::Refused(format!(
                            "{who} holds a position of another kind of database ({other}) for \
                             this PostgreSQL site"
                        )));
                    }
                };
                SourceSnapshot::Postgres {
                    site: site.clone(),
                    exported: crate::postgres::backfill_snapshot(
                        site,
                        tables,
                        resume_from,
                        streamed_by,
                        deployment,
                    )
                    .await?,
                }
            }
            SiteKind::Mysql => {
                let snapshot = MysqlSnapshot::open(&site.url, site.password()).await?;
                SourceSnapshot::Mysql {
                    position: snapshot.position.clone(),
                    conn: Arc::new(Mutex::new(snapshot)),
                }
            }
            SiteKind::Mssql => {
                // No stream state to keep: CDC positions are LSNs, readable as long as the
                // change tables hold them (the reader stops and says so otherwise).
                let _ = (resume_from, streamed_by, deployment);
                let (snapshot, position) =
                    MssqlSnapshot::take(&site.url, site.password(), tables).await?;
                SourceSnapshot::Mssql {
                    position,
                    conn: Arc::new(Mutex::new(snapshot)),
                }
            }
        })
    }

    /// The position the snapshot matches: streaming from it delivers exactly the transactions
    /// the snapshot does not hold.
    pub fn position(&self) -> Position {
        match self {
            SourceSnapshot::Postgres { exported, .. } => Position::Postgres(exported.position),
            SourceSnapshot::Mysql { position, .. } => Position::Mysql(position.clone()),
            SourceSnapshot::Mssql { position, .. } => Position::Mssql(*position),
        }
    }

    /// A reader of this snapshot (PostgreSQL: a new connection importing it; MySQL/MariaDB: the
    /// snapshot's own connection, shared).
    pub async fn reader(&self) -> Result<AnySnapshot, SnapshotError> {
        Ok(match self {
            SourceSnapshot::Postgres { site, exported } => AnySnapshot::Postgres(
                PgSnapshotReader::open(&site.url, site.password(), Some(&exported.name)).await?,
            ),
            SourceSnapshot::Mysql { conn, .. } => AnySnapshot::Mysql(conn.clone()),
            SourceSnapshot::Mssql { conn, .. } => AnySnapshot::Mssql(conn.clone()),
        })
    }

    /// Ends the snapshot (PostgreSQL: the exporting session; a temporary slot goes with it, a
    /// permanent one stays at its consistent point). A MySQL/MariaDB snapshot still shared with
    /// a reader is closed when the last reader is dropped.
    pub async fn release(self) {
        match self {
            SourceSnapshot::Postgres { exported, .. } => exported.release().await,
            SourceSnapshot::Mysql { conn, .. } => {
                if let Ok(conn) = Arc::try_unwrap(conn) {
                    conn.into_inner().close().await;
                }
            }
            SourceSnapshot::Mssql { conn, .. } => {
                if let Ok(conn) = Arc::try_unwrap(conn) {
                    conn.into_inner().close().await;
                }
            }
        }
    }
}

/// A reader of a consistent snapshot of any kind.
pub enum AnySnapshot {
    /// A PostgreSQL read-only repeatable-read transaction.
    Postgres(PgSnapshotReader),
    /// A MySQL/MariaDB consistent-snapshot transaction, possibly shared.
    Mysql(Arc<Mutex<MysqlSnapshot>>),
    /// A SQL Server snapshot, shared (read-only access for the backfill), or a verify
    /// reader's own (ranges are compared row by row: there is no digest).
    Mssql(Arc<Mutex<MssqlSnapshot>>),
}

/// What a SQL Server snapshot reader does not do.
fn mssql_not_supported(what: &'static str) -> SnapshotError {
    crate::NotSupported {
        what,
        fix: "compare the tables with your own tools",
    }
    .into()
}

impl AnySnapshot {
    /// Connects to `site` and opens a fresh snapshot of its own (for classifying keys, which
    /// compares values only and reads no rows).
    pub async fn open(site: &SiteConnection) -> Result<AnySnapshot, SnapshotError> {
        Ok(match site.kind {
            SiteKind::Postgres => AnySnapshot::Postgres(
                PgSnapshotReader::open(&site.url, site.password(), None).await?,
            ),
            SiteKind::Mysql => AnySnapshot::Mysql(Arc::new(Mutex::new(
                MysqlSnapshot::open_reader(&site.url, site.password()).await?,
            ))),
            SiteKind::Mssql => AnySnapshot::Mssql(Arc::new(Mutex::new(
                MssqlSnapshot::open_reader(&site.url, site.password()).await?,
            ))),
        })
    }

    /// Ends the reader's transaction and starts a fresh one of its own; returns a position of
    /// the site's log at or after the end of every transaction the new one sees (PostgreSQL:
    /// the WAL insert position read by the statement that takes its snapshot; MySQL/MariaDB:
    /// the binlog position matching the consistent snapshot exactly). See [`crate::verify`].
    /// `table` is the table the reads in the new snapshot go to: SQL Server gives the position
    /// of the last change of that table the snapshot sees (see [`crate::mssql::verify`]).
    pub async fn renew(&mut self, table: &TableName) -> Result<Position, SnapshotError> {
        Ok(match self {
            AnySnapshot::Postgres(reader) => Position::Postgres(reader.renew().await?),
            AnySnapshot::Mysql(conn) => Position::Mysql(conn.lock().await.renew().await?),
            AnySnapshot::Mssql(conn) => Position::Mssql(conn.lock().await.renew(table).await?),
        })
    }

    /// Ends the reader's transaction and starts a fresh one of its own, like
    /// [`AnySnapshot::renew`] but without reading a position (for reads that need none).
    pub async fn refresh(&mut self) -> Result<(), SnapshotError> {
        match self {
            AnySnapshot::Postgres(reader) => reader.refresh().await?,
            AnySnapshot::Mysql(conn) => conn.lock().await.refresh().await?,
            AnySnapshot::Mssql(conn) => conn.lock().await.refresh().await?,
        }
        Ok(())
    }

    /// The shape of a bulk read of `columns` of `table` (see [`crate::bulk`]); `None` when this
    /// kind has no bulk format.
    pub async fn bulk_shape(
        &mut self,
        table: &TableName,
        columns: &[Column],
    ) -> Result<Option<BulkShape>, SnapshotError> {
        Ok(match self {
            AnySnapshot::Postgres(reader) => Some(reader.bulk_shape(table, columns).await?),
            AnySnapshot::Mysql(_) | AnySnapshot::Mssql(_) => None,
        })
    }

    /// The rows of `range` in `shape` (from [`AnySnapshot::bulk_shape`] of this kind), in
    /// the same snapshot as [`SnapshotRead::rows`] reads.
    pub async fn bulk_rows(
        &mut self,
        shape: &Arc<BulkShape>,
        range: &KeyRange,
    ) -> Result<BulkRows, SnapshotError> {
        Ok(match self {
            AnySnapshot::Postgres(reader) => reader.bulk_rows(shape, range).await?,
            AnySnapshot::Mysql(_) | AnySnapshot::Mssql(_) => {
                return Err(SnapshotError::Refused(format!(
                    "this kind of database has no bulk format: {} is read as rows",
                    shape.table
                )));
            }
        })
    }

    /// Ends the reader's transaction and closes its connection (a shared MySQL/MariaDB snapshot
    /// stays open for the others).
    pub async fn close(self) {
        match self {
            AnySnapshot::Postgres(reader) => drop(reader),
            AnySnapshot::Mysql(conn) => {
                if let Ok(conn) = Arc::try_unwrap(conn) {
                    conn.into_inner().close().await;
                }
            }
            AnySnapshot::Mssql(conn) => {
                if let Ok(conn) = Arc::try_unwrap(conn) {
                    conn.into_inner().close().await;
                }
            }
        }
    }
}

impl SnapshotRead for AnySnapshot {
    type Error = SnapshotError;

    fn can_cut_on(&self, column: &Column) -> bool {
        match self {
            AnySnapshot::Postgres(_) => PgSnapshotReader::orderable(column),
            AnySnapshot::Mysql(_) => MysqlSnapshot::orderable(column),
            AnySnapshot::Mssql(_) => MssqlSnapshot::orderable(column),
        }
    }

    async fn count(&mut self, table: &TableName) -> Result<u64, SnapshotError> {
        Ok(match self {
            AnySnapshot::Postgres(reader) => reader.count(table).await?,
            AnySnapshot::Mysql(conn) => conn.lock().await.count(table).await?,
            AnySnapshot::Mssql(conn) => conn.lock().await.count(table).await?,
        })
    }

    async fn boundaries(
        &mut self,
        table: &TableName,
        column: &str,
        every: u64,
    ) -> Result<(Vec<i128>, u64), SnapshotError> {
        Ok(match self {
            AnySnapshot::Postgres(reader) => reader.boundaries(table, column, every).await?,
            AnySnapshot::Mysql(conn) => conn.lock().await.boundaries(table, column, every).await?,
            AnySnapshot::Mssql(conn) => conn.lock().await.boundaries(table, column, every).await?,
        })
    }

    async fn key_boundaries(
        &mut self,
        table: &TableName,
        key: &[Column],
        every: u64,
    ) -> Result<Vec<Vec<Value>>, SnapshotError> {
        Ok(match self {
            AnySnapshot::Postgres(reader) => reader.key_boundaries(table, key, every).await?,
            AnySnapshot::Mysql(conn) => conn.lock().await.key_boundaries(table, key, every).await?,
            AnySnapshot::Mssql(conn) => conn.lock().await.key_boundaries(table, key, every).await?,
        })
    }

    async fn range_indexes(
        &mut self,
        table: &TableName,
        key: &[Column],
        cuts: &[Vec<Value>],
        keys: &[Vec<Value>],
    ) -> Result<Vec<u64>, SnapshotError> {
        Ok(match self {
            AnySnapshot::Postgres(reader) => reader.range_indexes(table, key, cuts, keys).await?,
            AnySnapshot::Mysql(conn) => {
                conn.lock()
                    .await
                    .range_indexes(table, key, cuts, keys)
                    .await?
            }
            AnySnapshot::Mssql(conn) => {
                conn.lock()
                    .await
                    .range_indexes(table, key, cuts, keys)
                    .await?
            }
        })
    }

    async fn rows(
        &mut self,
        table: &TableName,
        columns: &[Column],
        range: &KeyRange,
    ) -> Result<Vec<Row>, SnapshotError> {
        Ok(match self {
            AnySnapshot::Postgres(reader) => reader.rows(table, columns, range).await?,
            AnySnapshot::Mysql(conn) => conn.lock().await.rows(table, columns, range).await?,
            AnySnapshot::Mssql(conn) => conn.lock().await.rows(table, columns, range).await?,
        })
    }

    async fn rows_with_keys(
        &mut self,
        table: &TableName,
        columns: &[Column],
        key: &[Column],
        keys: &[Vec<Value>],
    ) -> Result<Vec<Row>, SnapshotError> {
        Ok(match self {
            AnySnapshot::Postgres(reader) => {
                reader.rows_with_keys(table, columns, key, keys).await?
            }
            AnySnapshot::Mysql(conn) => {
                conn.lock()
                    .await
                    .rows_with_keys(table, columns, key, keys)
                    .await?
            }
            AnySnapshot::Mssql(conn) => {
                conn.lock()
                    .await
                    .rows_with_keys(table, columns, key, keys)
                    .await?
            }
        })
    }

    async fn integer_span(
        &mut self,
        table: &TableName,
        column: &str,
    ) -> Result<Option<IntegerSpan>, SnapshotError> {
        Ok(match self {
            AnySnapshot::Postgres(reader) => reader.integer_span(table, column).await?,
            AnySnapshot::Mysql(conn) => conn.lock().await.integer_span(table, column).await?,
            AnySnapshot::Mssql(conn) => conn.lock().await.integer_span(table, column).await?,
        })
    }

    fn can_digest(&self, columns: &[Column]) -> bool {
        match self {
            AnySnapshot::Postgres(_) => PgSnapshotReader::digestible(columns),
            AnySnapshot::Mysql(_) => MysqlSnapshot::digestible(columns),
            AnySnapshot::Mssql(_) => false,
        }
    }

    async fn digest(
        &mut self,
        table: &TableName,
        columns: &[Column],
        range: &KeyRange,
    ) -> Result<RangeDigest, SnapshotError> {
        Ok(match self {
            AnySnapshot::Postgres(reader) => reader.range_digest(table, columns, range).await?,
            AnySnapshot::Mysql(conn) => {
                conn.lock()
                    .await
                    .range_digest(table, columns, range)
                    .await?
            }
            AnySnapshot::Mssql(_) => {
                return Err(mssql_not_supported(
                    "digesting ranges of a SQL Server snapshot (duplex verify)",
                ));
            }
        })
    }
}

/// The cuts of an integer primary-key column into ranges of `every` rows, and the table's row
/// count (see [`SnapshotRead::boundaries`]), on any kind: `table` and `column` quoted,
/// `as_text` the kind's cast of an expression to text, `first` runs a query in the snapshot
/// and returns the first column of its first row (`None`: no row), `error` words a problem.
pub(crate) async fn integer_cuts<E>(
    table: &str,
    column: &str,
    every: u64,
    as_text: fn(&str) -> String,
    mut first: impl AsyncFnMut(String) -> Result<Option<String>, E>,
    error: impl Fn(String) -> E,
) -> Result<(Vec<i128>, u64), E> {
    let every = every.max(1);
    let after = |cuts: &[i128]| {
        cuts.last()
            .map_or_else(String::new, |last| format!(" WHERE {column} > {last}"))
    };
    let mut cuts: Vec<i128> = Vec::new();
    loop {
        // The key is an integer read back from the server, so its literal is exact. The text
        // is named apart from the column: `ORDER BY` a name of the select list would order by
        // the text (10 before 9), sorting the whole table at every step.
        let sql = format!(
            "SELECT {} AS duplex_cut FROM {table}{} ORDER BY {column} LIMIT 1 OFFSET {}",
            as_text(column),
            after(&cuts),
            every - 1
        );
        match first(sql).await? {
            Some(text) => cuts.push(text.parse().map_err(|_| {
                error(format!(
                    "{table}.{column}: the key {text} is not an integer"
                ))
            })?),
            None => break,
        }
    }
    let sql = format!(
        "SELECT {} FROM {table}{}",
        as_text("COUNT(*)"),
        after(&cuts)
    );
    let tail = match first(sql).await? {
        Some(text) => text
            .parse::<u64>()
            .map_err(|_| error(format!("{table}: the row count {text} is not a number")))?,
        None => 0,
    };
    let rows = cuts.len() as u64 * every + tail;
    Ok((cuts, rows))
}
