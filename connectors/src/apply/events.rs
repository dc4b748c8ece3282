//! What a change event asks of a target row, for every kind's writer: the key values that find
//! the row, the columns an insert writes, the before-image a conditional write expects, and
//! the errors for an event that lacks what its operation needs.
//!
//! Nothing here does I/O: each kind's applier turns these answers into its own statements, so
//! the two kinds read events the same way (see [`crate::apply`] for the write rules).

use crate::{ChangeEvent, Op, TableName, Value};

use super::{ApplyError, SkippedWrite};

/// Formats key values for a message.
pub(crate) fn describe_key<'a>(pairs: impl Iterator<Item = (&'a str, &'a Value)>) -> String {
    pairs
        .map(|(c, v)| format!("{c}={v:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The old key value of `column`: from the event's key, else its before-image.
pub(crate) fn key_value<'e>(event: &'e ChangeEvent, column: &str) -> Result<&'e Value, ApplyError> {
    event
        .key
        .get(column)
        .or_else(|| event.before.as_ref().and_then(|b| b.get(column)))
        .filter(|v| !matches!(v, Value::Null | Value::Unchanged))
        .ok_or_else(|| malformed(event, &format!("no value for key column {column:?}")))
}

/// Fails unless a keyed UPDATE or DELETE touched exactly one row: `n == 0` means the target
/// lost the row (it diverged from the source, which a DBA must hear about).
pub(crate) fn expect_one(
    target: &TableName,
    event: &ChangeEvent,
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
    event: &ChangeEvent,
) -> Result<Vec<usize>, ApplyError> {
    let Some(after) = &event.after else {
        return Err(malformed(event, "an insert without an after-image"));
    };
    let mut columns = Vec::new();
    for (i, source) in sources.enumerate() {
        match after.get(source) {
            None => {}
            Some(Value::Unchanged) => {
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

/// Whether the insert `event` carries the same columns as the insert `first` does, told from the
/// names of their after-images alone: the same names in the same order and no `Unchanged`
/// value in `event`. Then [`insert_columns`] finds the same columns for both under any route
/// (it looks only at which names are present, and refuses only `Unchanged`), without searching
/// each name; a run of inserts read from one place has that shape. `false` tells nothing: ask
/// [`insert_columns`].
pub(crate) fn same_insert_shape(first: &ChangeEvent, event: &ChangeEvent) -> bool {
    match (&first.after, &event.after) {
        (Some(first), Some(after)) => {
            first.len() == after.len()
                && first
                    .iter()
                    .zip(after.iter())
                    .all(|((a, _), (b, value))| a == b && !matches!(value, Value::Unchanged))
        }
        _ => false,
    }
}

/// The key value of `column` a write of `event` targets: an insert's from its after-image,
/// else the old key (see [`key_value`]).
pub(crate) fn target_key_value<'e>(
    event: &'e ChangeEvent,
    column: &str,
) -> Result<&'e Value, ApplyError> {
    if event.op == Op::Insert
        && let Some(value) = event
            .after
            .as_ref()
            .and_then(|after| after.get(column))
            .filter(|v| !matches!(v, Value::Null | Value::Unchanged))
    {
        return Ok(value);
    }
    key_value(event, column)
}

/// The refusal of an upserting write of `events` (one statement's rows) that met another row
/// on a unique index other than the primary key (`key`: the key columns' source names).
pub(crate) fn unique_collision<'a>(
    target: &TableName,
    events: &[&ChangeEvent],
    key: impl Iterator<Item = &'a str> + Clone,
    source: ApplyError,
) -> ApplyError {
    let describe = |event: &ChangeEvent| {
        describe_key(
            key.clone()
                .filter_map(|c| target_key_value(event, c).ok().map(|v| (c, v))),
        )
    };
    let key = match events {
        [one] => describe(one),
        [first, .., last] => format!(
            "one of {} rows ({} to {})",
            events.len(),
            describe(first),
            describe(last)
        ),
        [] => String::new(),
    };
    ApplyError::UniqueCollision {
        table: target.clone(),
        op: events.first().map_or(Op::Insert, |e| e.op),
        key,
        source: Box::new(source),
    }
}

/// The record of a skipped write of `event`, keyed by the route's key columns (source names).
pub(crate) fn skipped_write<'a>(
    event: &ChangeEvent,
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
    event: &ChangeEvent,
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
            None | Some(Value::Unchanged) => continue,
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

/// Refuses an update whose after-image gives the key column `source` (one the target fills
/// itself and no update may set: a SQL Server `IDENTITY` column, a PostgreSQL `GENERATED
/// ALWAYS AS IDENTITY` one) a value other than its key value; `Ok` when it keeps it, and the
/// writer then leaves the column out of its SET list. `column` and `column_type` name the
/// target column in the refusal, `why` says what the target does not allow and the fix.
pub(crate) fn refuse_identity_change(
    event: &ChangeEvent,
    source: &str,
    value: &Value,
    table: &TableName,
    column: &str,
    column_type: &str,
    why: &str,
) -> Result<(), ApplyError> {
    if same_key_value(key_value(event, source)?, value) {
        return Ok(());
    }
    Err(ApplyError::refuse(
        table,
        column,
        value,
        column_type,
        format!("the update changes the key, {why}"),
    ))
}

/// Key values compared across integer signedness (`Int(5)` is `UInt(5)`).
fn same_key_value(a: &Value, b: &Value) -> bool {
    use Value as V;
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
    event: &'e ChangeEvent,
) -> Vec<(usize, &'e Value)> {
    let Some(before) = &event.before else {
        return Vec::new();
    };
    sources
        .enumerate()
        .filter(|(i, _)| !key.contains(i))
        .filter_map(|(i, source)| match before.get(source) {
            None | Some(Value::Unchanged) => None,
            Some(value) => Some((i, value)),
        })
        .collect()
}

/// The error for an event that lacks what its operation needs.
pub(crate) fn malformed(event: &ChangeEvent, reason: &str) -> ApplyError {
    ApplyError::Malformed {
        table: event.table.clone(),
        op: event.op,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Row, TableName};

    fn insert(columns: &[(&str, Value)]) -> ChangeEvent {
        let mut row = Row::new();
        for (name, value) in columns {
            row.push(*name, value.clone());
        }
        ChangeEvent {
            table: TableName::new("public", "t"),
            op: Op::Insert,
            key: Row::new(),
            before: None,
            after: Some(row),
        }
    }

    #[test]
    fn the_same_shape_means_the_same_insert_columns_under_any_route() {
        let first = insert(&[("id", Value::Int(1)), ("a", Value::Null)]);
        let same = insert(&[("id", Value::Int(2)), ("a", Value::Text("x".into()))]);
        let routes: [&[&str]; 3] = [&["id", "a"], &["a", "id", "b"], &["b"]];
        assert!(same_insert_shape(&first, &same));
        for sources in routes {
            assert_eq!(
                insert_columns(sources.iter().copied(), &first).unwrap(),
                insert_columns(sources.iter().copied(), &same).unwrap()
            );
        }
        // Another column, another order, one fewer, an Unchanged value: not told by names.
        for other in [
            insert(&[("id", Value::Int(2)), ("b", Value::Null)]),
            insert(&[("a", Value::Null), ("id", Value::Int(2))]),
            insert(&[("id", Value::Int(2))]),
            insert(&[("id", Value::Int(2)), ("a", Value::Unchanged)]),
        ] {
            assert!(!same_insert_shape(&first, &other), "{other:?}");
        }
    }
}
