//! The bookkeeping table `duplex.positions`, as every kind shares it: its name, the layout of
//! its rows (`source` = the source's site name, `position` = the JSON text of a [`Position`],
//! `applied_at` = when the target committed it) and how a change of it is read back.
//!
//! Each kind's `positions` module (`crate::postgres`, `crate::mysql`) owns the SQL for that
//! kind: the DDL, the locked and the committed read, the insert and the update. The change
//! streams recognise duplex's own transactions (echoes) by a change of this table, through
//! [`is_positions_table`], and the merge engine reads which outbox position an echo carries
//! through [`recorded_position`]; neither spells the table or its columns itself.

use crate::{ChangeEvent, Position, TableName, Value};

use super::ApplyError;

/// Name of the bookkeeping table (PostgreSQL schema / MySQL database `duplex`).
pub const POSITIONS_TABLE: &str = "duplex.positions";
/// The schema (PostgreSQL) or database (MySQL) holding the bookkeeping table.
const SCHEMA: &str = "duplex";
/// The bookkeeping table's own name.
const NAME: &str = "positions";
/// The column naming the source (its site name); the primary key.
const SOURCE_COLUMN: &str = "source";
/// The column holding the position, as the JSON text of a [`Position`].
const POSITION_COLUMN: &str = "position";

/// The bookkeeping table, as change events name it.
pub fn positions_table() -> TableName {
    TableName::new(SCHEMA, NAME)
}

/// Whether `table` is the bookkeeping table (a change of it marks a transaction duplex wrote).
pub fn is_positions_table(table: &TableName) -> bool {
    table.schema == SCHEMA && table.name == NAME
}

/// The source site name and position a change of the bookkeeping table records (its
/// after-image); `None` for a change of another table, a delete, or a row without a readable
/// position.
pub fn recorded_position(event: &ChangeEvent) -> Option<(&str, Position)> {
    if !is_positions_table(&event.table) {
        return None;
    }
    let row = event.after.as_ref()?;
    let Value::Text(source) = row.get(SOURCE_COLUMN)? else {
        return None;
    };
    let Value::Text(text) = row.get(POSITION_COLUMN)? else {
        return None;
    };
    let position = serde_json::from_str(text).ok()?;
    Some((source, position))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Op, Row};

    fn change(table: TableName, source: &str, position: &str) -> ChangeEvent {
        let row: Row = [
            ("source".to_owned(), Value::Text(source.into())),
            ("position".to_owned(), Value::Text(position.into())),
        ]
        .into_iter()
        .collect();
        ChangeEvent {
            table,
            op: Op::Update,
            key: row.clone(),
            before: None,
            after: Some(row),
        }
    }

    #[test]
    fn a_positions_change_reads_back_as_its_source_and_position() {
        let text = position_text(&Position::Outbox(7));
        let event = change(positions_table(), "merge:erp", &text);
        assert_eq!(
            recorded_position(&event),
            Some(("merge:erp", Position::Outbox(7)))
        );
        assert_eq!(
            parse_position("merge:erp", text).unwrap(),
            Position::Outbox(7)
        );
        let elsewhere = change(TableName::new("public", "positions"), "merge:erp", "{}");
        assert_eq!(recorded_position(&elsewhere), None);
        let unreadable = change(positions_table(), "merge:erp", "not json");
        assert_eq!(recorded_position(&unreadable), None);
        assert_eq!(POSITIONS_TABLE, format!("{SCHEMA}.{NAME}"));
    }
}
