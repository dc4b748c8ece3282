//! The change-stream contract every kind implements, and [`AnyStream`], which chooses the kind
//! in one place.
//!
//! # Contract
//!
//! A change stream reads one site's own change log (PostgreSQL: a logical replication slot
//! with `pgoutput`; MySQL/MariaDB: the row binlog) and yields [`StreamItem`]s:
//!
//! - *Whole transactions, in commit order.* Each [`StreamItem::Transaction`] is one committed
//!   source transaction touching a mapped table. A transaction larger than the configured part
//!   size comes as [`StreamItem::Part`]s followed by its final [`StreamItem::Transaction`]
//!   (the rest of the events, its position and commit time); nothing else is yielded in
//!   between.
//! - *Positions never move backwards.* The position of every item is after the one before it;
//!   a [`StreamItem::Heartbeat`] says nothing more will be yielded up to its position, so a
//!   caller may treat it as progress once everything yielded before it is committed.
//! - *Restart is exact.* Started just after a position `P` (the position of a transaction a
//!   target committed), the stream yields exactly the transactions that committed after `P`.
//! - *Acknowledgement releases the log.* [`AnyStream::ack`] tells the source that every target
//!   committed everything up to a position; the source may release its log before it, and
//!   never anything after it.
//! - *Echoes are marked.* Started for the merge engine, a transaction duplex itself wrote comes
//!   with [`crate::Origin::Duplex`] and its `duplex.positions` row, whole (never in parts).
//! - *Shapes come before the changes that have them* (when [`StreamOptions::shapes`] is set).
//!   Before the first change of a table the stream delivers, and again before the first
//!   change after the table's shape in the log changed, the stream yields a
//!   [`StreamItem::Shape`] with the shape (as the log carries it, never read from today's
//!   catalog) of the changes that follow. It comes before the part or transaction holding those
//!   changes; a transaction whose changes of one table have two shapes is preceded by both.
//!   A caller that cannot follow a shape stops before applying the item after it.
//! - `next` is cancellation safe: a dropped call loses nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::mssql::{MssqlLinkStream, MssqlStreamError};
use crate::mysql::{MysqlStream, MysqlStreamConfig, MysqlStreamError, StartPosition};
use crate::postgres::{self, PgStream, PgStreamConfig, PgStreamError};
use crate::{
    Position, SiteConnection, SiteKind, TableName, TableShape, Transaction, TransactionPart,
};

/// Changes per [`TransactionPart`] of a large transaction (one-way links).
pub const DEFAULT_PART_EVENTS: usize = 10_000;

/// One item of a change stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// A committed transaction touching mapped tables (or the end of one that came in parts).
    Transaction(Transaction),
    /// The next changes of a large transaction not yet committed; its
    /// [`StreamItem::Transaction`] follows.
    Part(TransactionPart),
    /// The stream has read everything up to this position and has nothing to deliver before
    /// it.
    Heartbeat(Position),
    /// The shape of a mapped table's changes that follow (see the contract above); only when
    /// [`StreamOptions::shapes`] is set.
    Shape(TableShape),
}

impl StreamItem {
    /// The item's position (`None` for a part, which has none).
    pub fn position(&self) -> Option<&Position> {
        match self {
            StreamItem::Transaction(tx) => Some(&tx.position),
            StreamItem::Part(_) | StreamItem::Shape(_) => None,
            StreamItem::Heartbeat(position) => Some(position),
        }
    }
}

/// A change stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The PostgreSQL change stream failed.
    #[error(transparent)]
    Postgres(#[from] PgStreamError),
    /// The MySQL/MariaDB binlog stream failed.
    #[error(transparent)]
    Mysql(#[from] MysqlStreamError),
    /// The SQL Server CDC reader failed.
    #[error(transparent)]
    Mssql(#[from] MssqlStreamError),
    /// What was asked of the stream is not built for this kind of site.
    #[error(transparent)]
    NotSupported(#[from] crate::NotSupported),
    /// The position to resume from belongs to another kind of database.
    #[error(
        "the recorded position {0} does not belong to a {1} source: the duplex bookkeeping of this link is inconsistent"
    )]
    ForeignPosition(Position, SiteKind),
}

impl StreamError {
    /// True when restarting the stream after a backoff may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            StreamError::Postgres(e) => e.is_transient(),
            StreamError::Mysql(e) => e.is_transient(),
            StreamError::Mssql(e) => e.is_transient(),
            StreamError::ForeignPosition(..) | StreamError::NotSupported(_) => false,
        }
    }

    /// True when the stream failed because nothing arrived for [`StreamOptions::timeout`].
    pub fn is_silence(&self) -> bool {
        matches!(
            self,
            StreamError::Postgres(PgStreamError::Silent { .. })
                | StreamError::Mysql(MysqlStreamError::HeartbeatTimeout(_))
        )
    }

    /// True when the source's log holds changes of a mapped table that cannot be read exactly
    /// (PostgreSQL: a TRUNCATE; MySQL/MariaDB: rows of another definition than the table's, DDL
    /// that removed rows without row events, statement-format DML): only copying the table
    /// again recovers.
    pub fn needs_copy(&self) -> bool {
        matches!(
            self,
            StreamError::Postgres(PgStreamError::Truncate { .. })
                | StreamError::Mysql(
                    MysqlStreamError::SchemaMismatch { .. }
                        | MysqlStreamError::SchemaChanged { .. }
                        | MysqlStreamError::StatementLogged { .. }
                )
        )
    }

    /// True when the source's log no longer holds the changes since the requested position (a
    /// PostgreSQL slot gone, re-created or advanced outside duplex; a MariaDB binlog purged):
    /// streaming cannot go on, and only copying the mapped tables again (`duplex backfill
    /// --resync`) recovers.
    pub fn is_position_lost(&self) -> bool {
        match self {
            StreamError::Postgres(e) => e.is_position_lost(),
            StreamError::Mysql(e) => matches!(e, MysqlStreamError::PositionPurged { .. }),
            StreamError::Mssql(e) => e.is_position_lost(),
            StreamError::ForeignPosition(..) | StreamError::NotSupported(_) => false,
        }
    }
}

/// The [`StreamOptions::timeout`] of a source's successive streams.
///
/// A silence is not always a dead connection: PostgreSQL replays a committed transaction in
/// one piece when it reaches its commit, and while it replays a large one whose changes the
/// publication filters out (other tables) it sends nothing and may leave requested replies
/// unanswered for as long as that takes. The restarted stream meets the same silence at the
/// same place, so a fixed timeout would restart it forever. So each silence that ends a stream
/// which delivered no transaction doubles the next stream's timeout (up to
/// [`SilenceTimeout::MAX_DOUBLINGS`] times); the first transaction delivered brings it back to
/// the configured one. A dead connection is still noticed, later only after silences in a row.
#[derive(Debug, Clone)]
pub struct SilenceTimeout {
    base: Duration,
    doublings: u32,
}

impl SilenceTimeout {
    /// The most times the timeout is doubled (64 times the configured one).
    pub const MAX_DOUBLINGS: u32 = 6;

    /// Starts at `base` (the site's `stream_timeout`).
    pub fn new(base: Duration) -> SilenceTimeout {
        SilenceTimeout { base, doublings: 0 }
    }

    /// The timeout for the next stream.
    pub fn current(&self) -> Duration {
        self.base * 2u32.pow(self.doublings)
    }

    /// Notes an item the stream delivered: a transaction (or part of one) resets the timeout.
    pub fn delivered(&mut self, item: &StreamItem) {
        if matches!(item, StreamItem::Transaction(_) | StreamItem::Part(_)) {
            self.delivered_transaction();
        }
    }

    /// Notes that the stream delivered a transaction or part: the timeout is reset.
    pub fn delivered_transaction(&mut self) {
        self.doublings = 0;
    }

    /// Notes the error that ended a stream: a silence doubles the next stream's timeout.
    pub fn ended(&mut self, error: &StreamError) {
        if error.is_silence() && self.doublings < Self::MAX_DOUBLINGS {
            self.doublings += 1;
        }
    }
}

/// What a stream reads, and for whom.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The mapped tables to read.
    pub tables: BTreeSet<TableName>,
    /// Start just after this position; `None`: where the site's slot stands (PostgreSQL) or
    /// at the server's current binlog position (MySQL/MariaDB).
    pub start: Option<Position>,
    /// For the merge engine: also read `duplex.positions`, so duplex's own transactions come
    /// out as [`crate::Origin::Duplex`] with their positions row (the echo marker), and only
    /// whole transactions (the origin of a transaction is known at its commit).
    pub merge: bool,
    /// Changes per part of a large transaction (`None`: whole transactions only; the merge
    /// engine always reads whole transactions).
    pub part_events: Option<usize>,
    /// The reading deployment's identity, recorded on (and checked against) what the stream
    /// claims on the source (a PostgreSQL slot and publication).
    pub deployment: Option<String>,
    /// Yield [`StreamItem::Shape`] before changes of a table whose shape the caller has not
    /// been told yet.
    pub shapes: bool,
    /// The newest position the caller ever acknowledged to this source, when it kept a
    /// record: a PostgreSQL slot confirmed beyond both it and `start` was moved or re-created
    /// outside duplex, and the stream refuses it (the changes in between are gone).
    pub acknowledged: Option<Position>,
    /// The name transactions carry as their source (what appliers record their position
    /// under); the site's name when `None`.
    pub source_key: Option<String>,
    /// A deployment whose claims on the source (a PostgreSQL slot and publication) are moved
    /// to `deployment` (`duplex run --take-over-from`).
    pub take_over_from: Option<String>,
    /// How long the stream waits without any message from the source before it presumes the
    /// connection dead and fails with a transient error (see [`DEFAULT_STREAM_TIMEOUT`]). A
    /// PostgreSQL stream asks the server for a reply every third of it; a MySQL/MariaDB
    /// stream asks for a heartbeat every third of it.
    pub timeout: Duration,
}

/// The default of [`StreamOptions::timeout`]: a source silent for this long (no change, no
/// keepalive, no heartbeat, though asked for one every 5 s) is presumed unreachable.
pub const DEFAULT_STREAM_TIMEOUT: Duration = Duration::from_secs(15);

impl StreamOptions {
    /// A one-way link's stream: parts of [`DEFAULT_PART_EVENTS`].
    pub fn link(tables: BTreeSet<TableName>, start: Option<Position>) -> StreamOptions {
        StreamOptions {
            tables,
            start,
            merge: false,
            part_events: Some(DEFAULT_PART_EVENTS),
            deployment: None,
            shapes: true,
            acknowledged: None,
            source_key: None,
            take_over_from: None,
            timeout: DEFAULT_STREAM_TIMEOUT,
        }
    }

    /// The merge engine's stream: echo markers, whole transactions.
    pub fn merge(tables: BTreeSet<TableName>, start: Option<Position>) -> StreamOptions {
        StreamOptions {
            tables,
            start,
            merge: true,
            part_events: None,
            deployment: None,
            shapes: true,
            acknowledged: None,
            source_key: None,
            take_over_from: None,
            timeout: DEFAULT_STREAM_TIMEOUT,
        }
    }

    /// The same, claimed for `deployment` (see [`StreamOptions::deployment`]).
    pub fn for_deployment(mut self, deployment: &str) -> StreamOptions {
        self.deployment = Some(deployment.to_owned());
        self
    }
}

/// A running change stream of any kind.
pub enum AnyStream {
    /// PostgreSQL logical replication.
    Postgres(Box<PgStream>),
    /// MySQL/MariaDB binlog.
    Mysql(Box<MysqlStream>),
    /// SQL Server CDC change tables.
    Mssql(Box<MssqlLinkStream>),
}

impl AnyStream {
    /// Starts reading `site` as `options` say.
    pub async fn start(
        site: &SiteConnection,
        options: StreamOptions,
    ) -> Result<AnyStream, StreamError> {
        let StreamOptions {
            mut tables,
            start,
            merge,
            part_events,
            deployment,
            shapes,
            acknowledged,
            source_key,
            take_over_from,
            timeout,
        } = options;
        let source = source_key.unwrap_or_else(|| site.name.clone());
        let part_events = if merge { None } else { part_events };
        let password = site.password.clone();
        match site.kind {
            SiteKind::Postgres => {
                let start = match start {
                    None => None,
                    Some(Position::Postgres(lsn)) => Some(lsn),
                    Some(other) => return Err(StreamError::ForeignPosition(other, site.kind)),
                };
                let name = match &deployment {
                    Some(deployment) => postgres::choose_slot_name(site, deployment).await?,
                    None => postgres::slot_name(site),
                };
                let mut config = PgStreamConfig::new(
                    &source,
                    &site.url,
                    &name,
                    &name,
                    tables.into_iter().collect(),
                );
                config.password = password;
                config.start = start;
                config.part_events = part_events;
                config.echo_marker = merge;
                config.deployment = deployment;
                config.take_over_from = take_over_from;
                config.shapes = shapes;
                config.inactivity_timeout = timeout;
                config.acknowledged = match acknowledged {
                    Some(Position::Postgres(lsn)) => Some(lsn),
                    _ => None,
                };
                Ok(AnyStream::Postgres(Box::new(
                    PgStream::start(config).await?,
                )))
            }
            SiteKind::Mysql => {
                if merge {
                    tables.insert(crate::apply::positions_table());
                }
                let mut config = MysqlStreamConfig::new(&source, &site.url, tables);
                config.password = password;
                config.part_events = part_events;
                config.shapes = shapes;
                // Silence for three heartbeat periods is an error.
                config.heartbeat = timeout / 3;
                config.start = match start {
                    None => StartPosition::Current,
                    Some(Position::Mysql(pos)) => StartPosition::At(pos),
                    Some(other) => return Err(StreamError::ForeignPosition(other, site.kind)),
                };
                Ok(AnyStream::Mysql(Box::new(
                    MysqlStream::start(config).await?,
                )))
            }
            SiteKind::Mssql => {
                let start = match start {
                    None => None,
                    Some(Position::Mssql(position)) => Some(position),
                    Some(other) => return Err(StreamError::ForeignPosition(other, site.kind)),
                };
                Ok(AnyStream::Mssql(Box::new(
                    MssqlLinkStream::start(
                        &site.url,
                        password.as_deref(),
                        &source,
                        &tables,
                        start,
                        shapes,
                        merge,
                    )
                    .await?,
                )))
            }
        }
    }

    /// The next transaction, part of a large transaction, or heartbeat. Cancellation safe.
    pub async fn next(&mut self) -> Result<StreamItem, StreamError> {
        Ok(match self {
            AnyStream::Postgres(stream) => stream.next().await?,
            AnyStream::Mysql(stream) => stream.next().await?,
            AnyStream::Mssql(stream) => stream.next().await?,
        })
    }

    /// Where a MySQL/MariaDB or SQL Server stream stands before it delivered anything (its
    /// start); `None` for PostgreSQL, whose slot keeps its own position, before the binlog file
    /// is known, and while SQL Server CDC has recorded nothing.
    pub fn start_position(&self) -> Option<Position> {
        match self {
            AnyStream::Postgres(_) => None,
            AnyStream::Mssql(stream) => Some(Position::Mssql(stream.start_position())),
            AnyStream::Mysql(stream) => {
                let position = stream.position();
                (!position.file.is_empty()).then(|| Position::Mysql(position.clone()))
            }
        }
    }

    /// The mapped tables' identities on the source when the stream started (PostgreSQL: the
    /// table's oid; empty for kinds without one), and those that had left the source's
    /// publication before (the stream put them back: changes made to them meanwhile are not
    /// in the stream). A caller records the identities and stops when one changed: the table
    /// was dropped and re-created while nothing read it.
    pub fn table_identities(&self) -> (Vec<(TableName, u64)>, Vec<TableName>) {
        match self {
            AnyStream::Postgres(stream) => (
                stream
                    .table_ids()
                    .iter()
                    .map(|(t, id)| (t.clone(), u64::from(*id)))
                    .collect(),
                stream.unpublished().to_vec(),
            ),
            AnyStream::Mysql(_) | AnyStream::Mssql(_) => (Vec::new(), Vec::new()),
        }
    }

    /// Tells the source that every target has committed everything up to `position`, so it
    /// may release its log before it (PostgreSQL: the slot's flush position; the MySQL binlog
    /// and SQL Server's change tables are kept by the server's own retention).
    pub fn ack(&self, position: &Position) {
        if let (AnyStream::Postgres(stream), Position::Postgres(lsn)) = (self, position) {
            stream.ack(*lsn);
        }
    }

    /// Ends the stream cleanly.
    pub async fn shutdown(self) {
        match self {
            AnyStream::Postgres(stream) => {
                if let Err(error) = stream.shutdown().await {
                    tracing::debug!(%error, "closing the PostgreSQL change stream");
                }
            }
            AnyStream::Mysql(stream) => stream.shutdown().await,
            AnyStream::Mssql(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silence() -> StreamError {
        StreamError::Postgres(PgStreamError::Silent {
            what: "replication connection",
            after: Duration::from_secs(1),
        })
    }

    #[test]
    fn silences_in_a_row_double_the_timeout_up_to_the_limit_and_a_transaction_resets_it() {
        let mut timeout = SilenceTimeout::new(Duration::from_secs(15));
        assert_eq!(timeout.current(), Duration::from_secs(15));
        timeout.ended(&silence());
        timeout.ended(&silence());
        assert_eq!(timeout.current(), Duration::from_secs(60));
        // Other errors and heartbeats change nothing.
        timeout.ended(&StreamError::Postgres(PgStreamError::Ended));
        timeout.delivered(&StreamItem::Heartbeat(Position::Postgres(
            crate::postgres::Lsn(1),
        )));
        assert_eq!(timeout.current(), Duration::from_secs(60));
        for _ in 0..20 {
            timeout.ended(&silence());
        }
        assert_eq!(timeout.current(), Duration::from_secs(15 * 64));
        let tx = Transaction {
            source: "pg1".into(),
            position: Position::Postgres(crate::postgres::Lsn(2)),
            commit_time: chrono::DateTime::UNIX_EPOCH,
            origin: crate::Origin::Local,
            events: Vec::new(),
        };
        timeout.delivered(&StreamItem::Transaction(tx));
        assert_eq!(timeout.current(), Duration::from_secs(15));
    }
}
