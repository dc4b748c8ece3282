//! A change a target refuses: which row it was, and what the link does with it.
//!
//! A target refuses a change definitely (not a lost connection: a UNIQUE or FOREIGN KEY or
//! CHECK constraint, a value too long or out of range, a NUL byte in text, a row the target
//! no longer holds). The worker then applies the batch's transactions one at a time, so every
//! transaction before the refused one lands, and asks the target which change of the refused
//! transaction it is ([`AnyApplier::locate_refusal`]: the changes written one by one into a
//! target transaction that is rolled back). Then, by the mapping's `on_error`:
//!
//! - `stop`: the link stops with [`Refusal`]: the mapping, the target, the source table and
//!   row key, the source position and commit time, the server's whole message (PostgreSQL's
//!   DETAIL and HINT included) and the fix. Nothing of the refused transaction was applied;
//!   after the fix the link resumes exactly there.
//! - `dead-letter`: the change is set aside (see [`crate::dead_letters`]) and the transaction is
//!   applied without it; every later change of the same row is set aside as well, in order,
//!   until `duplex dead-letters retry` writes them.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use duplex_connectors::apply::{Applier, ApplyError};
use duplex_connectors::{AnyApplier, ChangeEvent, Op, Position, TableName, Transaction};
use duplex_state::StateStore;

use super::LinkError;
use crate::config::{Mapping, OnError};
use crate::dead_letters::{self, DeadLetter};
use crate::report::chain;

/// A change a target refused, for the message that stops the link.
#[derive(Debug)]
pub struct Refusal {
    /// The mapping the change belongs to.
    pub mapping: String,
    /// The source site.
    pub source: String,
    /// The target site that refused it.
    pub target: String,
    /// The source table.
    pub table: TableName,
    /// What the change did; `None` when the refusal came at the commit (no single change).
    pub op: Option<Op>,
    /// The row's key (`id=5`), or a description when no single change was refused.
    pub key: String,
    /// The row's values as the change wrote them.
    pub row: String,
    /// The source position of the refused transaction.
    pub position: Position,
    /// When the source committed it.
    pub commit_time: DateTime<Utc>,
    /// The error, with the database server's whole message.
    pub error: String,
    /// What to do about it.
    pub fix: &'static str,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.op {
            Some(Op::Insert) => "the insert of",
            Some(Op::Update) => "the update of",
            Some(Op::Delete) => "the delete of",
            None => "the transaction with",
        };
        write!(
            f,
            "mapping {}: site {} refused {what} {}.{} row {} (source position {}, committed at {}): {}. ",
            self.mapping,
            self.target,
            self.source,
            self.table,
            self.key,
            self.position,
            self.commit_time.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
            self.error,
        )?;
        if !self.row.is_empty() {
            write!(f, "The row: {}. ", self.row)?;
        }
        write!(
            f,
            "Nothing of this source transaction was applied on {}; every one before it was. {} Then start duplex run again: it resumes at this transaction. To set refused rows aside and go on instead, set on_error = \"dead-letter\" on mapping {}",
            self.target, self.fix, self.mapping
        )
    }
}

impl std::error::Error for Refusal {}

/// What a DBA does about a refusal, by the server's error code (PostgreSQL SQLSTATE,
/// MySQL/MariaDB error number) or duplex's own refusal.
pub fn fix_for(error: &ApplyError) -> &'static str {
    match error {
        ApplyError::Value(_) => {
            return "Change the target column to a type that holds the value exactly (or correct the value on the source).";
        }
        ApplyError::RowMissing { .. } => {
            return "The target no longer holds the row the source changed: it diverged from the source (an edit or a restore on the target). Copy the table again (see `duplex backfill` in the README).";
        }
        ApplyError::UniqueCollision { .. } => {
            return "Remove or change the target row that holds the same unique value under another key, or drop that unique constraint on the target.";
        }
        _ => {}
    }
    let Some(refusal) = error.server_refusal() else {
        return "Fix what the error above says.";
    };
    match refusal.code.as_str() {
        "23505" | "1062" | "1586" => {
            "The target already holds another row with that unique value (a unique constraint the source does not have, or a row only the target has): change or delete that row on the target, or drop the constraint there."
        }
        "23503" | "1451" | "1452" | "1216" | "1217" => {
            "A foreign key on the target refuses it: the row it references is missing there (or other rows still reference it). Create the referenced row on the target or replicate the referenced table too, or drop the foreign key on the target."
        }
        "23514" | "4025" | "3819" => {
            "A CHECK constraint on the target refuses the row: relax the constraint on the target, or correct the row on the source."
        }
        "23502" | "1048" | "1364" => {
            "A NOT NULL column on the target gets no value: make it nullable or give it a default on the target, or replicate the column."
        }
        "22001" | "1406" => {
            "The value is longer than the target column allows: widen the target column (e.g. ALTER TABLE ... ALTER COLUMN ... TYPE varchar(n) / MODIFY ... VARCHAR(n))."
        }
        "22003" | "1264" | "1690" | "1416" => {
            "The value is out of the target column's range: change the target column to a wider type."
        }
        "22021" | "22P05" | "1366" | "1300" => {
            "The value holds characters the target column cannot store (PostgreSQL text cannot hold a NUL byte; a character set may lack a character): change the target column's type or character set (bytea / a binary type for such bytes), or correct the value on the source."
        }
        "22P02" | "22007" | "22008" | "1292" | "1411" => {
            "The target cannot read the value as its column's type: change the target column's type to match the source's."
        }
        _ => "Fix what the database server says above.",
    }
}

/// A value for messages: numbers and text as a DBA writes them, text quoted and cut at 200
/// characters.
pub fn show_value(value: &duplex_connectors::Value) -> String {
    use duplex_connectors::Value as V;
    let text = match value {
        V::Null => "NULL".to_owned(),
        V::Bool(b) => b.to_string(),
        V::Int(i) => i.to_string(),
        V::UInt(u) => u.to_string(),
        V::Float(x) => x.to_string(),
        V::Decimal(d) => d.to_string(),
        V::Text(t) => format!("{t:?}"),
        V::Bytes(b) => format!(
            "0x{}",
            b.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
        V::Unchanged => "(unchanged)".to_owned(),
        other => format!("{other:?}"),
    };
    if text.chars().count() > 200 {
        let cut: String = text.chars().take(200).collect();
        format!("{cut}... ({} characters)", text.chars().count())
    } else {
        text
    }
}

/// `id=5, region="eu"`.
pub fn show_row<'a>(
    pairs: impl Iterator<Item = (&'a str, &'a duplex_connectors::Value)>,
) -> String {
    pairs
        .map(|(c, v)| format!("{c}={}", show_value(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The mapping that carries `table` from `source` to `target`.
pub fn mapping_of<'m>(
    mappings: &'m [Mapping],
    source: &str,
    target: &str,
    table: &TableName,
) -> Option<&'m Mapping> {
    mappings
        .iter()
        .find(|m| m.edges().contains(&(source, target)) && m.tables.get(source) == Some(table))
}

/// The identity of a row for setting its later changes aside: its table and key.
fn row_identity(table: &TableName, key: &duplex_connectors::Row) -> (TableName, String) {
    (table.clone(), show_row(key.iter()))
}

/// The rows an event touches: its key, and for an update that changes the key, the new one.
pub(crate) fn touched(event: &ChangeEvent) -> Vec<(TableName, String)> {
    let mut rows = vec![row_identity(&event.table, &event.key)];
    if let Some(after) = &event.after {
        let new_key: duplex_connectors::Row = event
            .key
            .iter()
            .filter_map(|(c, _)| after.get(c).map(|v| (c.to_owned(), v.clone())))
            .collect();
        if new_key.len() == event.key.len() && new_key != event.key {
            rows.push(row_identity(&event.table, &new_key));
        }
    }
    rows
}

/// A target worker's view of refusals: what it needs to name them, and the rows whose changes
/// it sets aside.
pub(super) struct Refusals {
    source: String,
    target: String,
    mappings: Arc<Vec<Mapping>>,
    state: Arc<StateStore>,
    scope: String,
    next_seq: u64,
    parked: HashSet<(TableName, String)>,
    /// Where the target records the highest letter number set aside.
    marker_source: String,
    /// Changes were set aside since the last batch handed to the target: it must record it.
    unmarked: bool,
}

impl Refusals {
    /// Loads the rows with dead letters for this target. Letters of transactions the target
    /// has not committed (their position is beyond the one it recorded for `source_key`) are
    /// forgotten: the process stopped between setting them aside and committing the rest of
    /// their transaction, which is delivered again and judged again.
    pub(super) async fn start(
        source: &str,
        source_key: &str,
        target: &str,
        mappings: Arc<Vec<Mapping>>,
        state: Arc<StateStore>,
        applier: &mut AnyApplier,
    ) -> Result<Refusals, LinkError> {
        let apply_error = |source| LinkError::Apply {
            site: target.to_owned(),
            source,
        };
        let committed = applier.position(source_key).await.map_err(apply_error)?;
        let marker_source = dead_letters::marker_source(source_key);
        let marked = match applier
            .position(&marker_source)
            .await
            .map_err(apply_error)?
        {
            Some(Position::Outbox(n)) => n,
            _ => 0,
        };
        let scope = dead_letters::scope(source, target);
        let assigned: u64 = state
            .position(&dead_letters::assigned_key(&scope))
            .map_err(LinkError::State)?
            .unwrap_or(0);
        if marked > assigned {
            return Err(LinkError::DeadLettersLost {
                source_site: source.to_owned(),
                target: target.to_owned(),
                marked,
                assigned,
                marker: marker_source,
            });
        }
        let store = state.clone();
        let key = scope.clone();
        let letters = tokio::task::spawn_blocking(move || {
            dead_letters::settle(&store, &key, committed.as_ref())
        })
        .await
        .map_err(|panic| LinkError::Crashed(panic.to_string()))?
        .map_err(|error| match error {
            dead_letters::SettleError::State(e) => LinkError::State(e),
            dead_letters::SettleError::Position(e) => LinkError::Position(e),
        })?;
        let next_seq = letters.last().map_or(0, |(seq, _)| *seq).max(marked) + 1;
        let parked = letters
            .iter()
            .flat_map(|(_, letter)| touched(&letter.event))
            .collect();
        Ok(Refusals {
            source: source.to_owned(),
            target: target.to_owned(),
            mappings,
            state,
            scope,
            next_seq,
            parked,
            marker_source,
            unmarked: false,
        })
    }

    /// `batch` as the target must write it: with, when changes were set aside from it, a last
    /// transaction recording the highest letter number under [`dead_letters::marker_source`]
    /// (in the same target transaction; see [`crate::dead_letters`]).
    pub(super) fn marked<'b>(
        &self,
        batch: &'b [Transaction],
    ) -> std::borrow::Cow<'b, [Transaction]> {
        if !self.unmarked {
            return std::borrow::Cow::Borrowed(batch);
        }
        let mut marked = batch.to_vec();
        let last = batch.last();
        marked.push(Transaction {
            source: self.marker_source.clone(),
            position: Position::Outbox(self.next_seq - 1),
            commit_time: last.map_or_else(Utc::now, |t| t.commit_time),
            origin: duplex_connectors::Origin::Duplex,
            events: Vec::new(),
        });
        std::borrow::Cow::Owned(marked)
    }

    /// A batch handed out by [`Refusals::marked`] committed: the target holds the record.
    pub(super) fn landed(&mut self) {
        self.unmarked = false;
    }

    /// The error for a failed apply into this target.
    pub(super) fn apply_error(&self, source: ApplyError) -> LinkError {
        LinkError::Apply {
            site: self.target.clone(),
            source,
        }
    }

    /// Whether some rows have dead letters (their later changes are set aside).
    pub(super) fn any_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Whether a change of a large transaction touches a row with dead letters: it cannot be
    /// set aside (a part has no position of its own), so the link stops.
    pub(super) fn check_part(&self, events: &[ChangeEvent]) -> Option<LinkError> {
        if self.parked.is_empty() {
            return None;
        }
        let event = events
            .iter()
            .find(|e| touched(e).iter().any(|row| self.parked.contains(row)))?;
        Some(LinkError::DeadLetterOrder {
            target: self.target.clone(),
            table: event.table.clone(),
            key: show_row(event.key.iter()),
        })
    }

    /// Sets aside every change of `tx` to a row that has dead letters, keeping their order.
    pub(super) async fn divert(&mut self, tx: &mut Transaction) -> Result<(), LinkError> {
        if self.parked.is_empty() {
            return Ok(());
        }
        let mut index = 0;
        while index < tx.events.len() {
            let event = &tx.events[index];
            if touched(event).iter().any(|row| self.parked.contains(row)) {
                let error =
                    "an earlier change of this row was set aside: it waits in order behind it"
                        .to_owned();
                self.set_aside(tx, index, error, true).await?;
            } else {
                index += 1;
            }
        }
        Ok(())
    }

    /// Sets aside the changes of `tx` to rows with dead letters, then applies it alone (see
    /// [`Refusals::apply_alone`]); returns it as written (without the changes set aside).
    pub(super) async fn divert_owned(
        &mut self,
        mut tx: Transaction,
        applier: &mut AnyApplier,
    ) -> Result<Transaction, LinkError> {
        self.divert(&mut tx).await?;
        self.apply_alone(applier, tx).await
    }

    /// The error for a failed piece of a large transaction (applied in parts, so no single
    /// change can be located, and none set aside): the table and the change the server
    /// refused, the position (`at`: where the transaction starts, or its end for the final
    /// piece), and the server's message.
    pub(super) fn refused_large(&self, error: ApplyError, at: &Position) -> LinkError {
        if error.is_transient() {
            return self.apply_error(error);
        }
        let (table, op) = match &error {
            ApplyError::PgWrite { table, op, .. } | ApplyError::MysqlWrite { table, op, .. } => {
                (table.clone(), Some(*op))
            }
            _ => return self.apply_error(error),
        };
        // The error names the target table: find the mapping, and the source table, by it.
        let mapping = self.mappings.iter().find(|m| {
            m.edges()
                .contains(&(self.source.as_str(), self.target.as_str()))
                && m.tables.get(&self.target) == Some(&table)
        });
        LinkError::Refused(Box::new(Refusal {
            mapping: mapping.map_or_else(|| "?".to_owned(), |m| m.name.clone()),
            source: self.source.clone(),
            target: self.target.clone(),
            table: mapping
                .and_then(|m| m.tables.get(&self.source).cloned())
                .unwrap_or(table),
            op,
            key: "(not named: a change of a large transaction, written in parts)".to_owned(),
            row: String::new(),
            position: at.clone(),
            commit_time: Utc::now(),
            fix: fix_for(&error),
            error: full_error(&error),
        }))
    }

    /// Applies one transaction alone after a definite failure: finds the refused change and
    /// stops the link with it, or (`dead-letter`) sets it aside and applies the rest; returns
    /// the transaction as written.
    pub(super) async fn apply_alone(
        &mut self,
        applier: &mut AnyApplier,
        mut tx: Transaction,
    ) -> Result<Transaction, LinkError> {
        loop {
            let batch = self.marked(std::slice::from_ref(&tx)).into_owned();
            let error = match applier.apply(&batch).await {
                Ok(()) => {
                    self.landed();
                    return Ok(tx);
                }
                Err(error) if error.is_transient() => return Err(self.apply_error(error)),
                Err(error) => error,
            };
            let located = applier
                .locate_refusal(&tx)
                .await
                .map_err(|e| self.apply_error(e))?;
            let Some((index, refused)) = located else {
                return Err(self.refusal(&tx, None, error));
            };
            let event = &tx.events[index];
            let dead_letter = mapping_of(&self.mappings, &self.source, &self.target, &event.table)
                .is_some_and(|m| m.on_error == OnError::DeadLetter);
            if !dead_letter {
                return Err(self.refusal(&tx, Some(index), refused));
            }
            let text = full_error(&refused);
            self.set_aside(&mut tx, index, text, false).await?;
        }
    }

    /// Records change `index` of `tx` as a dead letter (durably, before the transaction that
    /// leaves it out can commit) and takes it out of `tx`.
    async fn set_aside(
        &mut self,
        tx: &mut Transaction,
        index: usize,
        error: String,
        behind: bool,
    ) -> Result<(), LinkError> {
        let event = tx.events.remove(index);
        let mapping = mapping_of(&self.mappings, &self.source, &self.target, &event.table)
            .map_or_else(String::new, |m| m.name.clone());
        let letter = DeadLetter {
            mapping,
            source: self.source.clone(),
            target: self.target.clone(),
            position: tx.position.clone(),
            commit_time: tx.commit_time,
            event,
            error,
            behind,
            recorded_at: Utc::now(),
            attempt: None,
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unmarked = true;
        let store = self.state.clone();
        let scope = self.scope.clone();
        let record = letter.clone();
        tokio::task::spawn_blocking(move || {
            store.write(|w| {
                w.put_pending(&scope, seq, &record)?;
                w.save_position(&dead_letters::assigned_key(&scope), &seq)
            })
        })
        .await
        .map_err(|panic| LinkError::Crashed(panic.to_string()))?
        .map_err(LinkError::State)?;
        if !behind {
            tracing::warn!(
                mapping = %letter.mapping,
                target = %self.target,
                table = %letter.event.table,
                key = %show_row(letter.event.key.iter()),
                position = %letter.position,
                error = %letter.error,
                "a refused change was set aside as dead letter {seq} (later changes of its row wait behind it); `duplex dead-letters` lists them, `duplex dead-letters retry` writes them once the cause is fixed"
            );
        }
        self.parked.extend(touched(&letter.event));
        Ok(())
    }

    /// The error that stops the link on a refused change.
    fn refusal(&self, tx: &Transaction, index: Option<usize>, error: ApplyError) -> LinkError {
        let event = index.and_then(|i| tx.events.get(i));
        let table = event
            .map(|e| e.table.clone())
            .or_else(|| tx.events.first().map(|e| e.table.clone()))
            .unwrap_or_else(|| TableName::new("", ""));
        let mapping = mapping_of(&self.mappings, &self.source, &self.target, &table)
            .map_or_else(|| "?".to_owned(), |m| m.name.clone());
        LinkError::Refused(Box::new(Refusal {
            mapping,
            source: self.source.clone(),
            target: self.target.clone(),
            table,
            op: event.map(|e| e.op),
            key: event.map_or_else(
                || {
                    format!(
                        "(none alone: the target refused the transaction's {} changes at its commit)",
                        tx.events.len()
                    )
                },
                |e| show_row(e.key.iter()),
            ),
            row: event
                .and_then(|e| e.after.as_ref().or(e.before.as_ref()))
                .map_or_else(String::new, |row| show_row(row.iter())),
            position: tx.position.clone(),
            commit_time: tx.commit_time,
            fix: fix_for(&error),
            error: full_error(&error),
        }))
    }
}

/// The error chain, with the database server's whole message (PostgreSQL's DETAIL and HINT,
/// the constraint) on one line.
pub fn full_error(error: &ApplyError) -> String {
    let text = chain(error).replace('\n', " ");
    match error.server_refusal() {
        Some(server) if !text.contains(&server.text) => format!("{text}: {}", server.text),
        _ => text,
    }
}
