//! Change events for the applier tests: rows, inserts, updates and deletes of the source table
//! `src.items`, keyed by `id`, and the skipped-write records a conditional applier reports.
//!
//! Shared by the conformance suite and the per-kind applier tests; each test binary uses part
//! of it.
#![allow(dead_code)]

use std::str::FromStr;

use duplex_connectors::{
    ApplyOptions, ChangeEvent, Decimal, Op, Row, SkippedWrite, TableName, Value,
};

/// The source table every event names.
pub fn source_table() -> TableName {
    TableName::new("src", "items")
}

/// No-clobber writes for the merge engine.
pub const CONDITIONAL: ApplyOptions = ApplyOptions {
    upsert: false,
    conditional: true,
};

/// Inserts overwrite existing rows (backfill).
pub const UPSERT: ApplyOptions = ApplyOptions {
    upsert: true,
    conditional: false,
};

pub fn row(values: Vec<(&str, Value)>) -> Row {
    values.into_iter().collect()
}

pub fn key(id: i64) -> Row {
    row(vec![("id", Value::Int(id))])
}

pub fn insert(after: Row) -> ChangeEvent {
    ChangeEvent {
        table: source_table(),
        op: Op::Insert,
        key: row(vec![("id", after.get("id").unwrap().clone())]),
        before: None,
        after: Some(after),
    }
}

/// An update of the row keyed `old_id` (the after-image may carry another key).
pub fn update(old_id: i64, after: Row) -> ChangeEvent {
    ChangeEvent {
        table: source_table(),
        op: Op::Update,
        key: key(old_id),
        before: Some(key(old_id)),
        after: Some(after),
    }
}

pub fn delete(id: i64) -> ChangeEvent {
    ChangeEvent {
        table: source_table(),
        op: Op::Delete,
        key: key(id),
        before: Some(key(id)),
        after: None,
    }
}

/// An update from `before` (the expected row, `None` for none) to `after`, key unchanged.
pub fn update_from(id: i64, before: Option<Row>, after: Row) -> ChangeEvent {
    ChangeEvent {
        table: source_table(),
        op: Op::Update,
        key: key(id),
        before,
        after: Some(after),
    }
}

pub fn delete_from(id: i64, before: Option<Row>) -> ChangeEvent {
    ChangeEvent {
        table: source_table(),
        op: Op::Delete,
        key: key(id),
        before,
        after: None,
    }
}

/// The record of a skipped `op` on the row keyed `id`.
pub fn skipped(op: Op, id: i64) -> SkippedWrite {
    SkippedWrite {
        table: source_table(),
        op,
        key: key(id),
    }
}

/// `row` with `column` set to `value`.
pub fn with(row: Row, column: &str, value: Value) -> Row {
    row.iter()
        .map(|(c, v)| {
            let v = if c == column {
                value.clone()
            } else {
                v.clone()
            };
            (c.to_owned(), v)
        })
        .collect()
}

pub fn dec(s: &str) -> Value {
    Value::Decimal(Decimal::from_str(s).unwrap())
}

/// Text far larger than a page (PostgreSQL TOASTs it, MySQL keeps it off-page).
pub fn big_text() -> String {
    "0123456789abcdé🦀".repeat(1 << 16)
}
