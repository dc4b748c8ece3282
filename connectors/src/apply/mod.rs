//! Appliers: writing source transactions into a target database, exactly once.
//!
//! # Protocol
//!
//! [`Applier::apply`] takes a batch of whole source transactions (in the source's commit
//! order) and writes them into ONE target transaction. In that same target transaction it
//! records, per source site name, the position of the last source transaction it wrote, in the
//! bookkeeping table `duplex.positions` on the target (PostgreSQL: schema `duplex`; MySQL /
//! MariaDB: database `duplex`), created on first use. [`Applier::position`] reads back what
//! was committed. The position is stored as the JSON text of [`Position`], so a DBA can read
//! it.
//!
//! # Why delivery is exactly once
//!
//! - *Nothing half-applied.* The rows of a batch and its new position are committed by one
//!   target transaction, so after a crash the target holds either all of a batch together
//!   with its position, or none of it together with the previous position. The row writes
//!   and the position can never disagree.
//! - *Nothing skipped.* The caller resumes the source at the lowest position its targets
//!   report through [`Applier::position`] (for a source with one target, exactly that
//!   position); a source position is "just past this transaction's commit", so the stream
//!   restarts with the first transaction the target does not hold.
//! - *Nothing twice.* Inside the target transaction, before writing anything, the applier
//!   reads the committed position of each source in the batch under a row lock
//!   (`SELECT ... FOR UPDATE`), and skips every transaction whose position is at or before
//!   it (and, within a batch, at or before the previous transaction of the same source). A
//!   replayed transaction, whether the caller resumed too early or sent a batch twice, is
//!   therefore a no-op, and the check and the advance happen in the same transaction, so two
//!   appliers racing on the same source cannot both apply the same transaction: the row lock
//!   serialises them, and for a source without a row yet the position is INSERTed (not
//!   upserted), so the slower one fails on the primary key and rolls back.
//! - *Strict writes.* An INSERT of a row that already exists, or an UPDATE / DELETE that
//!   finds no row, is an error, not silently repaired: with the position check above, either
//!   means the target diverged from the source, which a DBA must hear about. Only the
//!   `upsert` option (used by backfill, where a range may be copied again after an
//!   interruption) turns INSERT into insert-or-overwrite.
//!
//! # Conditional writes (the merge engine)
//!
//! With [`ApplyOptions::conditional`] a write lands only if the target row is still what the
//! caller expects there; otherwise the target holds a local change the caller has not read
//! yet, and the write is *skipped* (not an error) and reported by the applier's
//! `take_skipped`:
//!
//! - an INSERT is written only if no row with its key exists;
//! - an UPDATE (key unchanged) or DELETE with a before-image writes only if the row with its
//!   key has, in every column of the before-image that the route lists and that is not
//!   [`crate::Value::Unchanged`], the before-image's value (NULL equals NULL); without a
//!   before-image the key alone decides;
//! - an UPDATE that changes the key is refused ([`ApplyError::KeyChange`]): the caller writes
//!   it as a delete and an insert, each with its own condition.
//!
//! The condition and the write are one statement (or, for a MySQL insert, a statement whose
//! duplicate-key failure rolls back only itself), so the row cannot change between them, and
//! the comparison binds the expected values exactly as a write binds them (an expected value
//! the target column cannot hold is refused like a write of it, [`ApplyError::Value`]: the
//! caller's expectation is wrong, and skipping would repeat forever). Everything else
//! about a batch is unchanged: the writes that are not skipped and the new position commit in
//! one target transaction, exactly once. Skipped writes are reported only once their target
//! transaction committed: a rolled-back apply reports none.
//!
//! A failed apply rolls its target transaction back entirely; [`ApplyError::is_transient`]
//! says whether retrying the same batch may succeed.
//!
//! # Transactions too large to hold: parts
//!
//! A source transaction of millions of rows is not held in memory whole: the change stream
//! delivers it as [`TransactionPart`]s (the events read so far) followed by the final
//! [`Transaction`] (the rest of the events, the position, the commit time). The applier writes
//! it into ONE target transaction that stays open across calls:
//!
//! 1. The first [`Applier::apply_part`] opens the target transaction, reads the recorded
//!    position of the source under a row lock (`FOR UPDATE`, as above) and decides, once for
//!    the whole source transaction, whether the target already holds it; if not it writes
//!    the part's events. The target transaction stays open.
//! 2. Further parts of the same transaction (same `source` and `start`) write their events
//!    into that open transaction.
//! 3. The next [`Applier::apply`] must be a batch of exactly the final transaction: its
//!    events are written, its position recorded and the target transaction committed; or,
//!    when the decision was "already held", everything is rolled back.
//!
//! Exactly once is kept because the decision, the row writes and the new position still
//! share one target transaction, and the decision needs only a position known before the
//! transaction's end: [`TransactionPart::start`]. The rule is: *a transaction is already held
//! iff its start is before the recorded position*. Both positions come from the same source
//! log, where a transaction `T` starts at or after the end of every transaction before it and
//! ends after its start (`T.start < T.end`):
//!
//! - if the target holds `T`, the recorded position `R` is the end of `T` or of a later
//!   transaction, so `R >= T.end > T.start`: `T` is skipped;
//! - if the target does not hold `T`, every transaction it holds from this source came before
//!   `T` (the stream delivers in order and the target writes in order), so `R` is the end of
//!   one of them, or none is recorded: `R <= T.start`, and `T` is written.
//!
//! PostgreSQL: `start` is the commit record's LSN (`final_lsn` of `Begin`), the position is the
//! commit's end LSN; the next commit record starts at or after it. MySQL/MariaDB: `start` is
//! the binlog position where the transaction's GTID/BEGIN event starts, which is the end of the
//! previous transaction; the position is the end of its XID/COMMIT event.
//!
//! Any error, from a part or from the final transaction, rolls the whole target transaction
//! back: the target holds nothing of the source transaction and its old position, and the
//! caller must deliver the transaction again from its first part (the engine restarts the
//! stream from the recorded position, which does exactly that).
//!
//! # Written once, for every kind
//!
//! The steps above, and the skipped-writes bookkeeping, are written once, in
//! [`ExactlyOnce`] (`exactly_once.rs`), over a [`TargetSession`]: the few operations the
//! argument needs from one connection to a target (open, commit and roll back a transaction,
//! read a source's row of `duplex.positions` under a row lock, INSERT or UPDATE it, write
//! events, read the committed position). The argument above relies on nothing else, so it
//! holds for every kind whose session keeps that contract: each kind implements only the
//! session, its statements and its values (`PgApplier` is `ExactlyOnce<PgSession>`,
//! `MysqlApplier` is `ExactlyOnce<MysqlSession>`), and owns the SQL of `duplex.positions` in
//! its own `positions` module. The decisions themselves ([`ExactlyOnce`]'s `fresh`,
//! `open_parts`, `final_of`) are pure functions, unit-tested beside it.
//!
//! # Table routes
//!
//! An applier knows, per source table, where its rows go: a [`TableRoute`]. Only the columns a
//! route lists are written; a column whose value is [`crate::Value::Unchanged`] is never
//! written, so the target keeps its value.

mod events;
mod exactly_once;
mod positions;

use std::future::Future;

use crate::mssql::MssqlError;
use crate::mysql::MysqlError;
use crate::postgres::PgError;
use crate::{Op, Position, PositionError, Row, TableName, Transaction, TransactionPart};

pub(crate) use events::{
    expect_one, expected_values, insert_columns, key_value, malformed, refuse_identity_change,
    refuse_key_change, same_insert_shape, skipped_write, target_key_value, unique_collision,
};
pub use exactly_once::{ExactlyOnce, TargetSession};
pub use positions::{POSITIONS_TABLE, is_positions_table, positions_table, recorded_position};
pub(crate) use positions::{parse_position, position_text};

/// Writes source transactions into one target database.
///
/// Contract:
/// - `apply(batch)` writes the batch's transactions (whole, in order) into one target
///   transaction and records in it, per source site name, the position of the last
///   transaction written, in `duplex.positions`. Either all of it commits or nothing does.
/// - Idempotence: a transaction whose position is at or before the recorded position of its
///   source is skipped, so applying a batch twice changes nothing the second time. A batch
///   whose transactions are all skipped writes nothing at all.
/// - `position(source)` returns the last committed position of `source` on this target
///   (`None` before the first apply). It never moves backwards; the caller resumes the source
///   just after it.
/// - On error the target transaction is rolled back: the target holds nothing of the batch
///   and the old positions. [`ApplyError::is_transient`] says whether to retry the batch.
/// - Large transactions (see the module docs): `apply_part` calls for the parts of ONE source
///   transaction, in order, then `apply` with a batch of exactly that transaction's final
///   [`Transaction`], all written into one target transaction that is open between the calls.
///   While it is open nothing else may be applied; `position` still reads the committed
///   position. Whether the target already holds the transaction is decided at the first part
///   (`start` before the recorded position) and applies to every later piece. An error from
///   any of these calls rolls back everything written for the transaction since its first
///   part; the caller then delivers the transaction again from its first part. A future that
///   is dropped before it completes leaves the target transaction open: the next call rolls it
///   back, and a continuation of that transaction fails with [`ApplyError::PartSequence`].
pub trait Applier {
    /// Writes `batch` into one target transaction together with the new source positions; when
    /// parts of a transaction were applied before, `batch` must be that transaction, alone, and
    /// it completes the open target transaction.
    fn apply(
        &mut self,
        batch: &[Transaction],
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;

    /// Writes the next part of a large source transaction into the open target transaction
    /// (opening it, and deciding whether the target already holds the transaction, at the
    /// first part). Nothing is committed until the final transaction is applied.
    fn apply_part(
        &mut self,
        part: &TransactionPart,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;

    /// The last position of `source` committed on this target.
    fn position(
        &mut self,
        source: &str,
    ) -> impl Future<Output = Result<Option<Position>, ApplyError>> + Send;
}

/// Where one source table's rows are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRoute {
    /// The source table (as [`crate::ChangeEvent::table`] names it).
    pub source: TableName,
    /// The target table.
    pub target: TableName,
    /// `(source column, target column)` pairs; source columns not listed are not written.
    pub columns: Vec<(String, String)>,
    /// Source columns identifying a row on the target (normally the primary key); each must
    /// be listed in `columns`. Their values are taken from the event's `key` (the key before
    /// the change), so updates that change the key find the old row.
    pub key: Vec<String>,
}

impl TableRoute {
    /// A route that writes every listed column under the same name on the target.
    pub fn same_names(
        source: TableName,
        target: TableName,
        columns: &[&str],
        key: &[&str],
    ) -> TableRoute {
        TableRoute {
            source,
            target,
            columns: columns
                .iter()
                .map(|c| ((*c).to_owned(), (*c).to_owned()))
                .collect(),
            key: key.iter().map(|c| (*c).to_owned()).collect(),
        }
    }
}

/// How an applier writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// INSERT overwrites an existing row with the same key instead of failing (backfill).
    pub upsert: bool,
    /// No-clobber writes for the merge engine: an INSERT over an existing key, or an UPDATE /
    /// DELETE whose row no longer holds the event's before-image, is skipped instead of
    /// written and reported by `take_skipped` (see the module docs). Excludes `upsert`.
    pub conditional: bool,
}

impl ApplyOptions {
    /// Refuses contradictory options (`upsert` together with `conditional`).
    pub fn validate(&self) -> Result<(), ApplyError> {
        if self.upsert && self.conditional {
            return Err(ApplyError::Options(
                "`upsert` overwrites existing rows and `conditional` never does: set only one"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// One writer's claim on a counter of `duplex.positions` (the merge engine's outbox of a site,
/// `merge:<site>`): the row of `duplex.claims` for `scope` names the deployment (the state
/// store's identity) whose writes that counter numbers.
///
/// Why it fences: positions make a write exactly once only while one writer numbers them. Two
/// engines with their own state directories number from the same counter, so the writes of one
/// numbered at or below the other's are taken as already applied. With a claim, an applier
/// takes the row at start ([`ExactlyOnce::claim`]), and every target transaction it writes
/// first reads the row under a lock held until it commits and refuses to write unless the row
/// still names its deployment. A take-over updates the row under the same lock, so each of the
/// old owner's transactions either commits before it (and the new owner, which reads the
/// counter after taking the claim, numbers after it) or sees the new owner and writes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterClaim {
    /// What is claimed: the `duplex.positions` source whose counter the writer numbers.
    pub scope: String,
    /// The claiming deployment (the state store's identity).
    pub deployment: String,
}

/// A write a conditional applier skipped because the target row was not what the event
/// expected (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedWrite {
    /// The event's (source) table.
    pub table: TableName,
    /// The skipped change.
    pub op: Op,
    /// The key the write targeted, by source column name: the inserted key, or the old key
    /// of an update or delete.
    pub key: Row,
}

/// Why a value cannot be written into a target column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueRefusal {
    /// Target table.
    pub table: TableName,
    /// Target column.
    pub column: String,
    /// The canonical value's kind (`Int`, `Float`, ...).
    pub value_kind: &'static str,
    /// The target column's declared type.
    pub column_type: String,
    /// What is wrong.
    pub reason: String,
}

/// A database server's refusal of a statement (see [`ApplyError::server_refusal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRefusal {
    /// PostgreSQL SQLSTATE (`23505`) or MySQL/MariaDB error number (`1062`).
    pub code: String,
    /// The server's whole message.
    pub text: String,
}

/// An apply that failed; the target transaction was rolled back.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Connecting, session setup, bookkeeping or transaction control on PostgreSQL failed.
    #[error(transparent)]
    Postgres(#[from] PgError),
    /// Connecting, session setup, bookkeeping or transaction control on MySQL failed.
    #[error(transparent)]
    Mysql(Box<MysqlError>),
    /// A row write on PostgreSQL failed (constraint violation, lost connection, ...).
    #[error("{op:?} on {table} failed")]
    PgWrite {
        /// Target table.
        table: TableName,
        /// The change being written.
        op: Op,
        /// The driver error (its SQLSTATE decides retries).
        #[source]
        source: PgError,
    },
    /// Connecting, bookkeeping or transaction control on SQL Server failed.
    #[error(transparent)]
    Mssql(Box<MssqlError>),
    /// A row write on SQL Server failed.
    #[error("{op:?} on {table} failed")]
    MssqlWrite {
        /// Target table.
        table: TableName,
        /// The change being written.
        op: Op,
        /// The driver error (its SQL Server error number decides retries).
        #[source]
        source: Box<MssqlError>,
    },
    /// A row write on MySQL/MariaDB failed.
    #[error("{op:?} on {table} failed")]
    MysqlWrite {
        /// Target table.
        table: TableName,
        /// The change being written.
        op: Op,
        /// The driver error (its error code decides retries).
        #[source]
        source: Box<MysqlError>,
    },
    /// A route does not fit the target table (missing table or column, no key).
    #[error("route {source_table} -> {target}: {reason}")]
    Route {
        /// Source table of the route.
        source_table: TableName,
        /// Target table of the route.
        target: TableName,
        /// What is wrong and what to do.
        reason: String,
    },
    /// An event for a source table that has no route.
    #[error("no route for source table {0}: add it to the mapping")]
    NoRoute(TableName),
    /// An event that lacks what its operation needs (a key value, an after-image).
    #[error("{op:?} event for {table} is malformed: {reason}")]
    Malformed {
        /// Source table.
        table: TableName,
        /// The change.
        op: Op,
        /// What is missing.
        reason: String,
    },
    /// A value the target column cannot hold exactly.
    #[error(
        "{}.{}: cannot store a {} value in a {} column: {}",
        .0.table, .0.column, .0.value_kind, .0.column_type, .0.reason
    )]
    Value(Box<ValueRefusal>),
    /// An UPDATE or DELETE found no target row with the event's key: the target diverged.
    #[error("{op:?} on {table}: no row with key {key}")]
    RowMissing {
        /// Target table.
        table: TableName,
        /// The change.
        op: Op,
        /// The key, as text.
        key: String,
    },
    /// An upserting write ([`ApplyOptions::upsert`]) met a row with ANOTHER primary key on a
    /// unique index other than the primary key. Upserts match rows by primary key only, so
    /// this is refused, never written over that other row.
    #[error(
        "{op:?} on {table}: the row with key {key} has the same value in a unique index other \
         than the primary key as a row with another key that the table already holds (the \
         index and the value are named below); duplex matches rows by primary key only and \
         never overwrites a different row: change or delete that row of the target table (or \
         empty it), then run again"
    )]
    UniqueCollision {
        /// Target table.
        table: TableName,
        /// The change being written.
        op: Op,
        /// The key of the row written (or of the rows of the statement), as text.
        key: String,
        /// The server's refusal, naming the index and the value.
        #[source]
        source: Box<ApplyError>,
    },
    /// An UPDATE that changes the key, given to a conditional applier (which needs it as a
    /// delete and an insert).
    #[error(
        "Update on {table} changes the key of the row {key}: a conditional applier writes a key \
         change only as a delete and an insert"
    )]
    KeyChange {
        /// Source table.
        table: TableName,
        /// The old key, as text.
        key: String,
    },
    /// Contradictory [`ApplyOptions`].
    #[error("invalid apply options: {0}")]
    Options(String),
    /// A transaction's position cannot be ordered against the recorded one.
    #[error("position of source {site} cannot be compared with the one recorded on the target")]
    Position {
        /// Source site name.
        site: String,
        /// Why.
        #[source]
        source: PositionError,
    },
    /// The pieces of a large transaction came out of order (a part of another transaction, a
    /// batch that is not the final transaction, a continuation after an interrupted call).
    #[error("large transaction applied out of order: {0}")]
    PartSequence(String),
    /// Another deployment owns the claim at start.
    #[error(
        "duplex.claims names deployment {owner} as the duplex whose merge engine writes {scope} here, and this duplex's state directory is deployment {ours}: another duplex with its own state directory runs (or ran) these two-way mappings, and two engines numbering the same writes lose some of them. Stop that duplex and run this configuration with its state directory; to move the engine to this state directory deliberately, stop the other one and run `duplex run --take-over-from {owner}`"
    )]
    Claimed {
        /// The claimed `duplex.positions` source.
        scope: String,
        /// The deployment owning it.
        owner: String,
        /// This deployment.
        ours: String,
    },
    /// No deployment holds the claim that a writer carrying another process's writes needs
    /// (see [`crate::apply::ExactlyOnce::fence`]).
    #[error(
        "duplex.claims has no owner for {scope} here, and these writes were numbered by the merge engine of deployment {ours}, which claims a site before it numbers any write for it: they belong to an engine whose claim was removed (`duplex teardown`, or by hand) and are never written"
    )]
    Unclaimed {
        /// The claimed `duplex.positions` source.
        scope: String,
        /// The deployment that numbered the writes.
        ours: String,
    },
    /// The claim this applier held was taken by another deployment while it ran.
    #[error(
        "the claim on {scope} was taken by deployment {owner} (`duplex run --take-over-from {ours}`) while this duplex (deployment {ours}) was running: it stopped writing. Use the duplex of deployment {owner}, or take the claim back with `duplex run --take-over-from {owner}` once that one is stopped"
    )]
    ClaimTaken {
        /// The claimed `duplex.positions` source.
        scope: String,
        /// The deployment now owning it.
        owner: String,
        /// This deployment.
        ours: String,
    },
    /// `duplex.positions` holds text that is not a position.
    #[error("duplex.positions holds an unreadable position for source {site}: {text:?}")]
    Bookkeeping {
        /// Source site name.
        site: String,
        /// The stored text.
        text: String,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
}

impl From<MssqlError> for ApplyError {
    fn from(e: MssqlError) -> ApplyError {
        ApplyError::Mssql(Box::new(e))
    }
}

impl From<MysqlError> for ApplyError {
    fn from(e: MysqlError) -> ApplyError {
        ApplyError::Mysql(Box::new(e))
    }
}

impl ApplyError {
    /// True when retrying the whole batch later may succeed (connection lost, deadlock,
    /// serialization failure, lock wait timeout, server shutting down); false for definite
    /// failures (constraint violations, refused values, configuration) that need a person.
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Postgres(e) | ApplyError::PgWrite { source: e, .. } => e.is_transient(),
            ApplyError::Mysql(e) | ApplyError::MysqlWrite { source: e, .. } => e.is_transient(),
            ApplyError::Mssql(e) | ApplyError::MssqlWrite { source: e, .. } => e.is_transient(),
            ApplyError::Route { .. }
            | ApplyError::UniqueCollision { .. }
            | ApplyError::NoRoute(_)
            | ApplyError::Malformed { .. }
            | ApplyError::Value(_)
            | ApplyError::RowMissing { .. }
            | ApplyError::KeyChange { .. }
            | ApplyError::Options(_)
            | ApplyError::Position { .. }
            | ApplyError::PartSequence(_)
            | ApplyError::Claimed { .. }
            | ApplyError::Unclaimed { .. }
            | ApplyError::ClaimTaken { .. }
            | ApplyError::Bookkeeping { .. } => false,
        }
    }

    /// The database server's own refusal inside this error, when a server refused a
    /// statement: its code (PostgreSQL SQLSTATE, MySQL/MariaDB error number) and its whole
    /// text (PostgreSQL: message, DETAIL, HINT and the constraint it names).
    pub fn server_refusal(&self) -> Option<ServerRefusal> {
        match self {
            ApplyError::Postgres(e) | ApplyError::PgWrite { source: e, .. } => {
                let (PgError::Connect { source, .. } | PgError::Query { source, .. }) = e else {
                    return None;
                };
                let db = source.as_db_error()?;
                let mut text = format!("{}: {}", db.severity(), db.message());
                if let Some(detail) = db.detail() {
                    text.push_str(&format!(" DETAIL: {detail}"));
                }
                if let Some(hint) = db.hint() {
                    text.push_str(&format!(" HINT: {hint}"));
                }
                if let Some(constraint) = db.constraint() {
                    text.push_str(&format!(" (constraint {constraint})"));
                }
                Some(ServerRefusal {
                    code: db.code().code().to_owned(),
                    text,
                })
            }
            ApplyError::Mysql(e) | ApplyError::MysqlWrite { source: e, .. } => {
                let (MysqlError::Connect { source, .. } | MysqlError::Query { source, .. }) = &**e
                else {
                    return None;
                };
                let mysql_async::Error::Server(server) = source else {
                    return None;
                };
                Some(ServerRefusal {
                    code: server.code.to_string(),
                    text: format!(
                        "ERROR {} ({}): {}",
                        server.code, server.state, server.message
                    ),
                })
            }
            ApplyError::UniqueCollision { source, .. } => source.server_refusal(),
            _ => None,
        }
    }

    /// A value refusal.
    pub(crate) fn refuse(
        table: &TableName,
        column: &str,
        value: &crate::Value,
        column_type: &str,
        reason: impl Into<String>,
    ) -> ApplyError {
        ApplyError::Value(Box::new(ValueRefusal {
            table: table.clone(),
            column: column.to_owned(),
            value_kind: value_kind_name(value),
            column_type: column_type.to_owned(),
            reason: reason.into(),
        }))
    }
}

/// The name of a value's variant, for messages.
pub(crate) fn value_kind_name(value: &crate::Value) -> &'static str {
    use crate::Value as V;
    match value {
        V::Null => "Null",
        V::Bool(_) => "Bool",
        V::Int(_) => "Int",
        V::UInt(_) => "UInt",
        V::Float(_) => "Float",
        V::Decimal(_) => "Decimal",
        V::Text(_) => "Text",
        V::Bytes(_) => "Bytes",
        V::Date(_) => "Date",
        V::Time(_) => "Time",
        V::Timestamp(_) => "Timestamp",
        V::TimestampTz(_) => "TimestampTz",
        V::Uuid(_) => "Uuid",
        V::Json(_) => "Json",
        V::Bits(_) => "Bits",
        V::Array(_) => "Array",
        V::Interval(_) => "Interval",
        V::Unchanged => "Unchanged",
    }
}

/// The scale `s` of a declared `numeric(p,s)` / `decimal(p,s)`, if the type has one.
pub(crate) fn declared_scale(declared: &str) -> Option<usize> {
    let inner = declared.split_once('(')?.1.split_once(')')?.0;
    let scale = inner.split_once(',').map_or("0", |(_, s)| s);
    scale.trim().parse().ok()
}

/// The length in a declared type (`bit(7)` -> 7, `varbit(12)` / `bit varying(12)` -> 12).
pub(crate) fn declared_length(declared: &str) -> Option<usize> {
    let inner = declared.split_once('(')?.1.split_once(')')?.0;
    inner.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_lengths() {
        assert_eq!(declared_length("bit(7)"), Some(7));
        assert_eq!(declared_length("bit varying(64)"), Some(64));
        assert_eq!(declared_length("bit varying"), None);
        assert_eq!(declared_length("numeric(12,2)"), None);
    }

    #[test]
    fn declared_scales() {
        assert_eq!(declared_scale("numeric(12,2)"), Some(2));
        assert_eq!(declared_scale("decimal(65,30) unsigned"), Some(30));
        assert_eq!(declared_scale("decimal(10)"), Some(0));
        assert_eq!(declared_scale("numeric"), None);
    }
}
