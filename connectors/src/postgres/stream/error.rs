//! The errors of the PostgreSQL change stream.

use std::time::Duration;

use pgwire_replication::PgWireError;
use tokio_postgres::error::SqlState;

use crate::TableName;
use crate::postgres::pgoutput::DecodeError;
use crate::postgres::types::ValueError;
use crate::postgres::{Lsn, PgError};

/// An error of the change stream.
#[derive(Debug, thiserror::Error)]
pub enum PgStreamError {
    /// A configuration value breaks a rule.
    #[error("invalid PostgreSQL stream setting {field}: {rule}")]
    Config {
        /// The field.
        field: &'static str,
        /// The rule it broke.
        rule: &'static str,
    },
    /// The URL has no usable host, user or database.
    #[error("PostgreSQL URL for the stream: {0}")]
    Url(&'static str),
    /// Reading the catalog or running admin SQL failed.
    #[error(transparent)]
    Catalog(#[from] PgError),
    /// A mapped table does not exist.
    #[error("table {0} does not exist: create it, or correct the table name in the mapping")]
    TableMissing(TableName),
    /// The publication, and so the slot of the same name, belongs to another deployment.
    #[error(
        "publication {publication} and the replication slot of the same name belong to another duplex \
         deployment ({owner}; this one is {deployment}): two deployments cannot share a slot. Give \
         this deployment's sites other names, or point it at another database; if this is that \
         deployment and its state directory was lost, restore it; if the other deployment is gone for \
         good, release its claim with COMMENT ON PUBLICATION {publication} IS NULL"
    )]
    ClaimedByOther {
        /// Publication (and slot) name.
        publication: String,
        /// The deployment recorded on it.
        owner: String,
        /// This deployment.
        deployment: String,
    },
    /// The publication could not be created or changed.
    #[error("cannot set up publication {name}")]
    Publication {
        /// Publication name.
        name: String,
        /// The failed statement.
        #[source]
        source: PgError,
    },
    /// The publication exists as `FOR ALL TABLES`, which duplex does not change.
    #[error(
        "publication {0} is FOR ALL TABLES; duplex manages a publication of its own: choose \
         another publication name"
    )]
    PublicationForAllTables(String),
    /// The slot exists but cannot be used.
    #[error("replication slot {name}: {problem}")]
    Slot {
        /// Slot name.
        name: String,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The slot that held the changes since the targets' positions is gone (dropped, or
    /// re-created or advanced outside duplex): those changes can no longer be read.
    #[error("replication slot {name}: {problem}")]
    SlotLost {
        /// Slot name.
        name: String,
        /// What happened.
        problem: String,
    },
    /// The replication session failed (connect, authentication, START_REPLICATION, I/O).
    #[error("PostgreSQL replication session failed")]
    Replication(#[source] PgWireError),
    /// The server ended the replication session.
    #[error("the PostgreSQL replication session ended")]
    Ended,
    /// Nothing at all arrived from the server for the inactivity timeout, though a reply was
    /// requested every third of it: the connection (or the server) is presumed dead.
    #[error(
        "no message from the PostgreSQL server on the {what} for {after:.1?} (a reply was requested every {:.1?}): presuming the connection dead; it is reopened (stream_timeout of the site sets this limit)",
        *after / 3
    )]
    Silent {
        /// `replication connection` or `catalog connection`.
        what: &'static str,
        /// The inactivity timeout.
        after: Duration,
    },
    /// A `pgoutput` message does not decode.
    #[error("undecodable pgoutput message")]
    Decode(#[from] DecodeError),
    /// The message sequence breaks the protocol (a change outside a transaction, ...).
    #[error("pgoutput protocol violation: {0}")]
    Protocol(String),
    /// A column value cannot be converted.
    #[error("table {table}, row with key {key}")]
    Value {
        /// The table.
        table: TableName,
        /// The row's primary key as `(id)=(7)`, as far as the log carried it.
        key: String,
        /// The column, type and problem.
        #[source]
        source: Box<ValueError>,
    },
    /// A table has no primary key.
    #[error(
        "table {0} has no primary key: duplex identifies rows by primary key (ALTER TABLE … ADD PRIMARY KEY)"
    )]
    NoPrimaryKey(TableName),
    /// An update or delete does not carry the primary key of the old row.
    #[error(
        "table {table}: the WAL does not carry primary-key column {column} of the old row; \
         set ALTER TABLE … REPLICA IDENTITY DEFAULT (or FULL)"
    )]
    KeyNotCarried {
        /// The table.
        table: TableName,
        /// The missing key column.
        column: String,
    },
    /// A mapped table was dropped, re-created or removed from the publication while the
    /// stream ran: changes made to it meanwhile are not in the stream.
    #[error(
        "mapped table {table} {what}: changes made to it since are not in the replication stream (a dropped table leaves the publication; a re-created one is a new table that was never in it), so nothing of it is applied any more. Copy its rows again (see `duplex backfill` in the README), then start duplex with `duplex run --accept-schema-change {table}`"
    )]
    TableReplaced {
        /// The table.
        table: TableName,
        /// `was dropped`, `was dropped and re-created`, `was removed from publication p`.
        what: String,
    },
    /// Tables were truncated: duplex does not replicate TRUNCATE.
    #[error(
        "TRUNCATE of {tables} in the transaction committing at {commit_lsn}: duplex does not \
         replicate TRUNCATE (the log carries no rows of it), so the tables must be copied again"
    )]
    Truncate {
        /// The truncated mapped tables, comma-separated.
        tables: String,
        /// The commit LSN of that transaction.
        commit_lsn: Lsn,
    },
}

impl PgStreamError {
    /// True when retrying (restarting the stream from the last acknowledged position after a
    /// backoff) may succeed: the connection broke, the server is starting or shutting down,
    /// or the slot is still held by a previous session that is exiting. False for what needs
    /// a person: a missing slot or table, a publication error, an unsupported value.
    pub fn is_transient(&self) -> bool {
        match self {
            PgStreamError::Catalog(e) => e.is_transient(),
            PgStreamError::Publication { source, .. } => source.is_transient(),
            PgStreamError::Ended | PgStreamError::Silent { .. } => true,
            PgStreamError::Replication(e) => match e {
                PgWireError::Io(_) | PgWireError::Task(_) => true,
                PgWireError::Server(message) => sqlstate(message).is_some_and(|code| {
                    matches!(&code[..2], "08" | "53" | "57") && code != "57014"
                        || code == SqlState::OBJECT_IN_USE.code()
                }),
                _ => false,
            },
            _ => false,
        }
    }

    /// True when the slot no longer holds the changes since the requested position (gone,
    /// re-created or advanced outside duplex, or dropped while streaming): only copying the
    /// mapped tables again recovers.
    pub fn is_position_lost(&self) -> bool {
        match self {
            PgStreamError::SlotLost { .. } => true,
            PgStreamError::Replication(PgWireError::Server(message)) => {
                message.contains("replication slot")
                    && sqlstate(message) == Some(SqlState::UNDEFINED_OBJECT.code())
            }
            _ => false,
        }
    }
}

/// The SQLSTATE pgwire-replication puts at the end of a server error: `… (SQLSTATE 42704)`.
fn sqlstate(message: &str) -> Option<&str> {
    let start = message.rfind("(SQLSTATE ")? + "(SQLSTATE ".len();
    message.get(start..start + 5)
}
