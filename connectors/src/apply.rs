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
//! # Table routes
//!
//! An applier knows, per source table, where its rows go: a [`TableRoute`]. Only the columns a
//! route lists are written; a column whose value is [`crate::Value::Unchanged`] is never
//! written, so the target keeps its value.

use std::future::Future;

use crate::mysql::MysqlError;
use crate::postgres::PgError;
use crate::{Op, Position, PositionError, Row, TableName, Transaction, TransactionPart};

/// Name of the bookkeeping table (PostgreSQL schema / MySQL database `duplex`).
pub const POSITIONS_TABLE: &str = "duplex.positions";

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
            ApplyError::Route { .. }
            | ApplyError::NoRoute(_)
            | ApplyError::Malformed { .. }
            | ApplyError::Value(_)
            | ApplyError::RowMissing { .. }
            | ApplyError::KeyChange { .. }
            | ApplyError::Options(_)
            | ApplyError::Position { .. }
            | ApplyError::PartSequence(_)
            | ApplyError::Bookkeeping { .. } => false,
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
        V::Unchanged => "Unchanged",
    }
}

/// The scale `s` of a declared `numeric(p,s)` / `decimal(p,s)`, if the type has one.
pub(crate) fn declared_scale(declared: &str) -> Option<usize> {
    let inner = declared.split_once('(')?.1.split_once(')')?.0;
    let scale = inner.split_once(',').map_or("0", |(_, s)| s);
    scale.trim().parse().ok()
}

/// A transaction to write, after the position check: those at or before the recorded
/// position of their source are dropped.
pub(crate) struct Fresh<'a> {
    /// Transactions to write, in batch order.
    pub transactions: Vec<&'a Transaction>,
    /// Per source, the position to record (the last transaction written).
    pub advanced: Vec<(&'a str, &'a Position)>,
}

/// Drops the transactions of `batch` that the target already holds, given the recorded
/// position of each source of the batch (a source missing from `recorded` has none yet).
pub(crate) fn fresh<'a>(
    batch: &'a [Transaction],
    recorded: &[(&str, Option<Position>)],
) -> Result<Fresh<'a>, ApplyError> {
    // Per source: the position the target holds, then the last one written by this batch.
    let mut last: Vec<(&'a str, Option<&Position>)> = Vec::new();
    let mut advanced: Vec<(&'a str, &'a Position)> = Vec::new();
    let mut transactions = Vec::new();
    for txn in batch {
        let site = txn.source.as_str();
        let held = match last.iter().position(|(s, _)| *s == site) {
            Some(i) => i,
            None => {
                let position = recorded
                    .iter()
                    .find(|(s, _)| *s == site)
                    .and_then(|(_, p)| p.as_ref());
                last.push((site, position));
                last.len() - 1
            }
        };
        let newer = match last[held].1 {
            None => true,
            Some(held) => {
                txn.position
                    .compare(held)
                    .map_err(|source| ApplyError::Position {
                        site: site.to_owned(),
                        source,
                    })?
                    == std::cmp::Ordering::Greater
            }
        };
        if newer {
            last[held].1 = Some(&txn.position);
            match advanced.iter_mut().find(|(s, _)| *s == site) {
                Some(entry) => entry.1 = &txn.position,
                None => advanced.push((site, &txn.position)),
            }
            transactions.push(txn);
        } else {
            tracing::debug!(
                source = %txn.source,
                position = %txn.position,
                "skipping a transaction the target already holds"
            );
        }
    }
    Ok(Fresh {
        transactions,
        advanced,
    })
}

/// The target transaction holding the parts of one large source transaction, between the
/// first part and the final transaction.
#[derive(Debug)]
pub(crate) struct OpenParts {
    /// Source site of the transaction.
    pub source: String,
    /// Its start position (the same in every part).
    pub start: Position,
    /// Whether the target already holds it: nothing is written and the end is a rollback.
    pub held: bool,
    /// Whether `duplex.positions` had a row for the source (UPDATE it, else INSERT).
    pub recorded: bool,
}

/// Where an applier is in a large transaction.
#[derive(Debug, Default)]
pub(crate) enum PartState {
    /// No large transaction in progress.
    #[default]
    Idle,
    /// Parts were written into the open target transaction.
    Open(OpenParts),
    /// A call was dropped while writing a piece: the open target transaction lacks events.
    Interrupted,
}

/// The decision at the first part: whether the target already holds the transaction, given
/// the recorded position of its source (see the module docs for why `start < recorded` is
/// exactly "already held").
pub(crate) fn open_parts(
    part: &TransactionPart,
    recorded: Option<Position>,
) -> Result<OpenParts, ApplyError> {
    let held = match &recorded {
        None => false,
        Some(recorded) => {
            part.start
                .compare(recorded)
                .map_err(|source| ApplyError::Position {
                    site: part.source.clone(),
                    source,
                })?
                == std::cmp::Ordering::Less
        }
    };
    if held {
        tracing::debug!(source = %part.source, start = %part.start, "skipping a large transaction the target already holds");
    }
    Ok(OpenParts {
        source: part.source.clone(),
        start: part.start.clone(),
        held,
        recorded: recorded.is_some(),
    })
}

/// Checks that `part` continues the open large transaction.
pub(crate) fn check_next_part(open: &OpenParts, part: &TransactionPart) -> Result<(), ApplyError> {
    if open.source == part.source && open.start == part.start {
        return Ok(());
    }
    Err(ApplyError::PartSequence(format!(
        "a part of the transaction of {} starting at {} while the one of {} starting at {} is open",
        part.source, part.start, open.source, open.start
    )))
}

/// The final transaction that completes the open large transaction: `batch` must be exactly
/// it, from the same source and ending after the start.
pub(crate) fn final_of<'a>(
    open: &OpenParts,
    batch: &'a [Transaction],
) -> Result<&'a Transaction, ApplyError> {
    let [last] = batch else {
        return Err(ApplyError::PartSequence(format!(
            "a batch of {} transactions while the transaction of {} starting at {} is open",
            batch.len(),
            open.source,
            open.start
        )));
    };
    let after_start = last.source == open.source
        && last
            .position
            .compare(&open.start)
            .is_ok_and(|o| o == std::cmp::Ordering::Greater);
    if !after_start {
        return Err(ApplyError::PartSequence(format!(
            "transaction of {} at {} cannot end the one of {} starting at {}",
            last.source, last.position, open.source, open.start
        )));
    }
    Ok(last)
}

/// The error for a piece that continues a transaction whose earlier call was interrupted.
pub(crate) fn interrupted() -> ApplyError {
    ApplyError::PartSequence(
        "an earlier piece of this transaction was interrupted: deliver it again from its first part"
            .into(),
    )
}

/// Whether `site` had a recorded position when the batch started.
pub(crate) fn recorded_before(recorded: &[(&str, Option<Position>)], site: &str) -> bool {
    recorded.iter().any(|(s, p)| *s == site && p.is_some())
}

/// The distinct source site names of a batch, in first-seen order.
pub(crate) fn sources(batch: &[Transaction]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for txn in batch {
        if !out.contains(&txn.source.as_str()) {
            out.push(&txn.source);
        }
    }
    out
}

/// Serialises a position for `duplex.positions`.
pub(crate) fn position_text(position: &Position) -> String {
    serde_json::to_string(position).expect("a Position always serialises to JSON")
}

/// Parses a position read from `duplex.positions`.
pub(crate) fn parse_position(site: &str, text: String) -> Result<Position, ApplyError> {
    serde_json::from_str(&text).map_err(|source| ApplyError::Bookkeeping {
        site: site.to_owned(),
        text,
        source,
    })
}

/// Formats key values for a message.
pub(crate) fn describe_key<'a>(pairs: impl Iterator<Item = (&'a str, &'a crate::Value)>) -> String {
    pairs
        .map(|(c, v)| format!("{c}={v:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The old key value of `column`: from the event's key, else its before-image.
pub(crate) fn key_value<'e>(
    event: &'e crate::ChangeEvent,
    column: &str,
) -> Result<&'e crate::Value, ApplyError> {
    event
        .key
        .get(column)
        .or_else(|| event.before.as_ref().and_then(|b| b.get(column)))
        .filter(|v| !matches!(v, crate::Value::Null | crate::Value::Unchanged))
        .ok_or_else(|| malformed(event, &format!("no value for key column {column:?}")))
}

/// Fails unless a keyed UPDATE or DELETE touched exactly one row: `n == 0` means the target
/// lost the row (it diverged from the source, which a DBA must hear about).
pub(crate) fn expect_one(
    target: &TableName,
    event: &crate::ChangeEvent,
    n: u64,
) -> Result<(), ApplyError> {
    if n == 1 {
        return Ok(());
    }
    Err(ApplyError::RowMissing {
        table: target.clone(),
        op: event.op,
        key: describe_key(event.key.iter()),
    })
}

/// The indexes of the route columns (given by their source names, in route order) that an
/// insert writes: those its after-image carries. Unchanged values are refused: an insert has
/// no old row to keep them from.
pub(crate) fn insert_columns<'a>(
    sources: impl Iterator<Item = &'a str>,
    event: &crate::ChangeEvent,
) -> Result<Vec<usize>, ApplyError> {
    let Some(after) = &event.after else {
        return Err(malformed(event, "an insert without an after-image"));
    };
    let mut columns = Vec::new();
    for (i, source) in sources.enumerate() {
        match after.get(source) {
            None => {}
            Some(crate::Value::Unchanged) => {
                return Err(malformed(
                    event,
                    &format!("column {source:?} is Unchanged in an insert"),
                ));
            }
            Some(_) => columns.push(i),
        }
    }
    Ok(columns)
}

/// The key value of `column` a write of `event` targets: an insert's from its after-image,
/// else the old key (see [`key_value`]).
pub(crate) fn target_key_value<'e>(
    event: &'e crate::ChangeEvent,
    column: &str,
) -> Result<&'e crate::Value, ApplyError> {
    if event.op == Op::Insert
        && let Some(value) = event
            .after
            .as_ref()
            .and_then(|after| after.get(column))
            .filter(|v| !matches!(v, crate::Value::Null | crate::Value::Unchanged))
    {
        return Ok(value);
    }
    key_value(event, column)
}

/// The record of a skipped write of `event`, keyed by the route's key columns (source names).
pub(crate) fn skipped_write<'a>(
    event: &crate::ChangeEvent,
    key: impl Iterator<Item = &'a str>,
) -> SkippedWrite {
    SkippedWrite {
        table: event.table.clone(),
        op: event.op,
        key: key
            .filter_map(|c| {
                target_key_value(event, c)
                    .ok()
                    .map(|v| (c.to_owned(), v.clone()))
            })
            .collect(),
    }
}

/// Refuses an UPDATE that changes the key (the after-image carries a key column with another
/// value than the old key), for conditional appliers.
pub(crate) fn refuse_key_change<'a>(
    event: &crate::ChangeEvent,
    key: impl Iterator<Item = &'a str>,
) -> Result<(), ApplyError> {
    if event.op != Op::Update {
        return Ok(());
    }
    let Some(after) = &event.after else {
        return Ok(());
    };
    for column in key {
        let new = match after.get(column) {
            None | Some(crate::Value::Unchanged) => continue,
            Some(new) => new,
        };
        if !same_key_value(key_value(event, column)?, new) {
            return Err(ApplyError::KeyChange {
                table: event.table.clone(),
                key: describe_key(event.key.iter()),
            });
        }
    }
    Ok(())
}

/// Key values compared across integer signedness (`Int(5)` is `UInt(5)`).
fn same_key_value(a: &crate::Value, b: &crate::Value) -> bool {
    use crate::Value as V;
    match (a, b) {
        (V::Int(i), V::UInt(u)) | (V::UInt(u), V::Int(i)) => u64::try_from(*i) == Ok(*u),
        _ => a == b,
    }
}

/// The values a conditional UPDATE or DELETE compares, as (route column index, expected
/// value): the before-image's values of the route's non-key columns (given by their source
/// names, in route order), except `Unchanged` ones. Empty without a before-image.
pub(crate) fn expected_values<'a, 'e>(
    sources: impl Iterator<Item = &'a str>,
    key: &[usize],
    event: &'e crate::ChangeEvent,
) -> Vec<(usize, &'e crate::Value)> {
    let Some(before) = &event.before else {
        return Vec::new();
    };
    sources
        .enumerate()
        .filter(|(i, _)| !key.contains(i))
        .filter_map(|(i, source)| match before.get(source) {
            None | Some(crate::Value::Unchanged) => None,
            Some(value) => Some((i, value)),
        })
        .collect()
}

pub(crate) fn malformed(event: &crate::ChangeEvent, reason: &str) -> ApplyError {
    ApplyError::Malformed {
        table: event.table.clone(),
        op: event.op,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::Origin;
    use crate::postgres::Lsn;

    fn txn(site: &str, lsn: u64) -> Transaction {
        Transaction {
            source: site.into(),
            position: Position::Postgres(Lsn(lsn)),
            commit_time: Utc::now(),
            origin: Origin::Local,
            events: Vec::new(),
        }
    }

    #[test]
    fn transactions_at_or_before_the_recorded_position_are_skipped() {
        let batch = [
            txn("a", 5),
            txn("b", 1),
            txn("a", 10),
            txn("a", 10),
            txn("a", 12),
        ];
        let recorded = [("a", Some(Position::Postgres(Lsn(5)))), ("b", None)];
        let fresh = fresh(&batch, &recorded).unwrap();
        let kept: Vec<_> = fresh
            .transactions
            .iter()
            .map(|t| (t.source.as_str(), t.position.clone()))
            .collect();
        assert_eq!(
            kept,
            [
                ("b", Position::Postgres(Lsn(1))),
                ("a", Position::Postgres(Lsn(10))),
                ("a", Position::Postgres(Lsn(12))),
            ]
        );
        assert_eq!(
            fresh.advanced,
            [
                ("b", &Position::Postgres(Lsn(1))),
                ("a", &Position::Postgres(Lsn(12)))
            ]
        );
        // A source without a recorded position is applied, never dropped.
        let fresh = super::fresh(&batch, &[]).unwrap();
        assert_eq!(fresh.transactions.len(), 4);
    }

    fn part(site: &str, start: u64) -> TransactionPart {
        TransactionPart {
            source: site.into(),
            start: Position::Postgres(Lsn(start)),
            origin: Origin::Local,
            events: Vec::new(),
        }
    }

    #[test]
    fn a_large_transaction_is_held_iff_it_starts_before_the_recorded_position() {
        let recorded = || Some(Position::Postgres(Lsn(100)));
        // Replayed: it started (commit record at 90) before the recorded end it produced.
        assert!(open_parts(&part("a", 90), recorded()).unwrap().held);
        // The next transaction starts at or after the previous one's end.
        assert!(!open_parts(&part("a", 100), recorded()).unwrap().held);
        assert!(!open_parts(&part("a", 150), recorded()).unwrap().held);
        let first = open_parts(&part("a", 5), None).unwrap();
        assert!(!first.held && !first.recorded);
        let mysql = Some(Position::Mysql(crate::mysql::BinlogPosition::new(
            "bin.000001",
            4,
        )));
        assert!(matches!(
            open_parts(&part("a", 1), mysql),
            Err(ApplyError::Position { .. })
        ));
    }

    #[test]
    fn the_final_transaction_must_end_the_open_one() {
        let open = open_parts(&part("a", 100), None).unwrap();
        assert!(check_next_part(&open, &part("a", 100)).is_ok());
        assert!(check_next_part(&open, &part("a", 101)).is_err());
        assert!(check_next_part(&open, &part("b", 100)).is_err());
        assert!(final_of(&open, &[txn("a", 120)]).is_ok());
        assert!(final_of(&open, &[txn("a", 100)]).is_err());
        assert!(final_of(&open, &[txn("b", 120)]).is_err());
        assert!(final_of(&open, &[txn("a", 120), txn("a", 130)]).is_err());
        assert!(final_of(&open, &[]).is_err());
    }

    #[test]
    fn declared_scales() {
        assert_eq!(declared_scale("numeric(12,2)"), Some(2));
        assert_eq!(declared_scale("decimal(65,30) unsigned"), Some(30));
        assert_eq!(declared_scale("decimal(10)"), Some(0));
        assert_eq!(declared_scale("numeric"), None);
    }
}
