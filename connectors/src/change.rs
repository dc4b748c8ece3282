//! Row changes and the source transactions that carry them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Position, TableName, Value};

/// Column values of one row, in table column order. Column names are shared `Arc<str>`s so
/// that the rows of one table share their names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Row(Vec<(Arc<str>, Value)>);

impl Row {
    /// An empty row.
    pub fn new() -> Row {
        Row(Vec::new())
    }

    /// An empty row with room for `columns` columns.
    pub fn with_capacity(columns: usize) -> Row {
        Row(Vec::with_capacity(columns))
    }

    /// Appends a column.
    pub fn push(&mut self, column: impl Into<Arc<str>>, value: Value) {
        self.0.push((column.into(), value));
    }

    /// The value of a column, if the row has it.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.0.iter().find(|(c, _)| &**c == column).map(|(_, v)| v)
    }

    /// The value of a column, looked for first at position `hint` (where the rows of one read
    /// hold it), then as [`Row::get`] does. The same answer as `get` for a row whose column
    /// names are distinct, as every row read from a table's columns; for encoding many rows
    /// of one shape without a search by name per value.
    pub fn get_at(&self, column: &str, hint: usize) -> Option<&Value> {
        match self.0.get(hint) {
            Some((c, v)) if &**c == column => Some(v),
            _ => self.get(column),
        }
    }

    /// The position of a column in the row, if the row has it.
    pub fn position(&self, column: &str) -> Option<usize> {
        self.0.iter().position(|(c, _)| &**c == column)
    }

    /// Columns and values in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(c, v)| (&**c, v))
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<C: Into<Arc<str>>> FromIterator<(C, Value)> for Row {
    fn from_iter<I: IntoIterator<Item = (C, Value)>>(iter: I) -> Row {
        Row(iter.into_iter().map(|(c, v)| (c.into(), v)).collect())
    }
}

/// What a change did to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A new row.
    Insert,
    /// A changed row (possibly with a changed primary key: compare `before` and `after`).
    Update,
    /// A removed row.
    Delete,
}

/// One committed row change, in canonical form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// The source table.
    pub table: TableName,
    /// Insert, update or delete.
    pub op: Op,
    /// The primary-key columns identifying the row before the change (after it, for inserts).
    pub key: Row,
    /// The row before the change, as far as the log carries it (only key columns when the
    /// source logs no full before-image). `None` for inserts.
    pub before: Option<Row>,
    /// The row after the change. `None` for deletes.
    pub after: Option<Row>,
}

/// Whether a transaction was made by an application or by duplex itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// An application's change: to be propagated.
    Local,
    /// A transaction duplex applied (an echo): never propagated again.
    Duplex,
}

/// One committed source transaction: the unit that is applied, whole, to targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    /// The site (configuration name) the transaction was read from.
    pub source: String,
    /// The source position just past this transaction's commit; resuming there skips it.
    pub position: Position,
    /// When the source committed it.
    pub commit_time: DateTime<Utc>,
    /// Application change or duplex echo.
    pub origin: Origin,
    /// The row changes, in the order the source made them.
    pub events: Vec<ChangeEvent>,
}

/// A piece of a source transaction too large to hold whole: the events read so far, delivered
/// before the transaction commits. The pieces of one transaction arrive in order and are
/// followed by the [`Transaction`] itself, which carries the remaining events, the position
/// and the commit time. See [`crate::apply`] for how a target applies them exactly once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionPart {
    /// The site (configuration name) the transaction is read from.
    pub source: String,
    /// Where the transaction starts in the source's log: the same value for every part of one
    /// transaction, at or after the position of every transaction before it and before its
    /// own [`Transaction::position`]. A transaction is one the target already holds iff
    /// `start` is before the position the target recorded.
    pub start: Position,
    /// Application change or duplex echo.
    pub origin: Origin,
    /// The next row changes of the transaction, in the order the source made them.
    pub events: Vec<ChangeEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_at_answers_as_get_whatever_the_hint() {
        let row: Row = [
            ("id", Value::Int(1)),
            ("a", Value::Null),
            ("b", Value::Int(2)),
        ]
        .into_iter()
        .collect();
        for column in ["id", "a", "b", "missing"] {
            for hint in 0..5 {
                assert_eq!(
                    row.get_at(column, hint),
                    row.get(column),
                    "{column} at {hint}"
                );
            }
        }
        assert_eq!(row.position("b"), Some(2));
        assert_eq!(row.position("missing"), None);
    }
}
