//! Errors of the binlog reader. Driver errors are kept as sources (their server error code
//! decides retries); [`MysqlStreamError::is_transient`] is the one place that decides between
//! "reconnect and resume from the last position" and "stop this link and tell the DBA".

use std::time::Duration;

use crate::TableName;

use super::{BinlogPosition, MysqlError, TypeError};

/// Server error 1236 (ER_MASTER_FATAL_ERROR_READING_BINLOG): the dump cannot start at the
/// requested position (file purged, position or GTID not in this server's binlog).
const ER_MASTER_FATAL_ERROR_READING_BINLOG: u16 = 1236;

/// An error reading the binlog.
#[derive(Debug, thiserror::Error)]
pub enum MysqlStreamError {
    /// Connecting or reading the catalog failed.
    #[error(transparent)]
    Mysql(#[from] MysqlError),
    /// A statement preparing the binlog dump failed.
    #[error("preparing the binlog dump failed while {doing}")]
    Setup {
        /// What duplex was doing.
        doing: &'static str,
        /// Driver error.
        #[source]
        source: mysql_async::Error,
    },
    /// The server has no binlog to read.
    #[error(
        "the server's binary log is off (SHOW MASTER STATUS is empty): enable log_bin, \
         binlog_format=ROW and binlog_row_image=FULL (see `duplex check`)"
    )]
    BinlogOff,
    /// The requested position is no longer (or never was) in the server's binlog.
    #[error(
        "binlog position {position} is not available on the server (the file was purged, or the \
         position belongs to another server): the changes since then are lost to the stream, so \
         the mapped tables must be copied again"
    )]
    PositionPurged {
        /// Where the reader asked to start.
        position: BinlogPosition,
        /// The server's error.
        #[source]
        source: mysql_async::Error,
    },
    /// Reading from the binlog connection failed.
    #[error("reading the binlog stream failed")]
    Stream(#[source] mysql_async::Error),
    /// The server closed the binlog stream.
    #[error("the server ended the binlog stream (shutting down or the session was killed)")]
    Ended,
    /// Neither an event nor a heartbeat arrived in time: the connection is presumed dead.
    #[error("no binlog event or heartbeat for {0:?}: the connection is presumed dead")]
    HeartbeatTimeout(Duration),
    /// An event could not be parsed.
    #[error("cannot parse binlog event {what}")]
    Decode {
        /// Which event.
        what: String,
        /// Parse error.
        #[source]
        source: std::io::Error,
    },
    /// A row value or column type could not be converted.
    #[error(transparent)]
    Type(#[from] TypeError),
    /// A mapped table does not exist.
    #[error("mapped table {0} does not exist on the source: create it or fix the mapping")]
    TableNotFound(TableName),
    /// The binlog's view of a mapped table does not match information_schema.
    #[error(
        "table {table} in the binlog does not match its definition in information_schema \
         ({detail}): it was altered after these rows were written; run `duplex backfill` for it"
    )]
    SchemaMismatch {
        /// The table.
        table: TableName,
        /// What differs.
        detail: String,
    },
    /// DDL changed a mapped table in a way the stream cannot follow.
    #[error(
        "mapped table {table} was changed by `{statement}`: the binlog carries no row events for what it did (rows dropped, truncated, replaced or moved, or columns changed in a way rows cannot be decoded across), so nothing from it on was applied. Make the target table equal to the source again (copy it with `duplex backfill`, see the README) and the mapping match the table, then start duplex again"
    )]
    SchemaChanged {
        /// The table.
        table: TableName,
        /// The DDL statement.
        statement: String,
    },
    /// A statement on a mapped table was logged as SQL text, not as row events.
    #[error(
        "the binlog holds `{statement}` as a statement, not as row events, and it names mapped table {table}: its row changes cannot be read. Set binlog_format=ROW for every session (SET GLOBAL binlog_format = 'ROW', and no session may override it), make the target table equal to the source again (see `duplex backfill` in the README), then start duplex again"
    )]
    StatementLogged {
        /// The mapped table.
        table: TableName,
        /// The statement.
        statement: String,
    },
    /// The binlog uses a feature duplex does not read.
    #[error("unsupported binlog feature: {0}")]
    Unsupported(&'static str),
    /// The binlog's positions went backwards (a different server answered, or a bug).
    #[error("binlog position moved backwards from {from} to {to}")]
    PositionBackwards {
        /// The position already reached.
        from: BinlogPosition,
        /// The earlier position the stream reported next.
        to: BinlogPosition,
    },
}

impl MysqlStreamError {
    /// Wraps a setup statement's error with what duplex was doing.
    pub(crate) fn setup(doing: &'static str) -> impl FnOnce(mysql_async::Error) -> Self {
        move |source| MysqlStreamError::Setup { doing, source }
    }

    /// Classifies an error read from the dump connection.
    pub(crate) fn from_stream(source: mysql_async::Error, position: &BinlogPosition) -> Self {
        match &source {
            mysql_async::Error::Server(e) if e.code == ER_MASTER_FATAL_ERROR_READING_BINLOG => {
                MysqlStreamError::PositionPurged {
                    position: position.clone(),
                    source,
                }
            }
            _ => MysqlStreamError::Stream(source),
        }
    }

    /// True when reconnecting and resuming from the last delivered position may succeed: lost
    /// connections, a server shutting down or restarting, a silent connection. False for what
    /// needs a person: purged positions, unsupported types, schema changes.
    pub fn is_transient(&self) -> bool {
        match self {
            MysqlStreamError::Mysql(e) => e.is_transient(),
            MysqlStreamError::Setup { source, .. } | MysqlStreamError::Stream(source) => {
                driver_error_is_transient(source)
            }
            MysqlStreamError::Ended | MysqlStreamError::HeartbeatTimeout(_) => true,
            MysqlStreamError::BinlogOff
            | MysqlStreamError::PositionPurged { .. }
            | MysqlStreamError::Decode { .. }
            | MysqlStreamError::Type(_)
            | MysqlStreamError::TableNotFound(_)
            | MysqlStreamError::SchemaMismatch { .. }
            | MysqlStreamError::SchemaChanged { .. }
            | MysqlStreamError::StatementLogged { .. }
            | MysqlStreamError::Unsupported(_)
            | MysqlStreamError::PositionBackwards { .. } => false,
        }
    }
}

fn driver_error_is_transient(error: &mysql_async::Error) -> bool {
    match error {
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => true,
        // 1040 too many connections, 1053 server shutdown, 1152/1153/1159/1161 network
        // aborts and timeouts, 1927 connection killed, 2006/2013 gone away.
        mysql_async::Error::Server(e) => matches!(
            e.code,
            1040 | 1053 | 1152 | 1153 | 1159 | 1161 | 1927 | 2006 | 2013
        ),
        _ => false,
    }
}
