//! Comparing one key range of a source with the same range of a target, by meaning.
//!
//! Rows are brought into one form first: the route's columns under their source names, values
//! in their normal text ([`crate::engine::rows::normal`]: decimals without trailing zeros,
//! integers whatever their signedness, JSON by content, instants in UTC, BIT(1) as a boolean),
//! so `10.50` in PostgreSQL and `10.5` in MariaDB are equal, while NULL and `''` are not. A
//! range's fingerprint is the wrapping sum of its rows' hashes (a fast non-cryptographic hash,
//! foldhash, of each column's normal text; the reads carry no order) and its row count: ranges
//! whose fingerprints agree are equal; only the others are brought into compared form and
//! compared row by row, by key.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};

use foldhash::fast::FixedState;

use duplex_connectors::{Row, TableRoute, Value};
use serde::Serialize;

use crate::engine::rows::normal;

/// One row in the form both sides are compared in: its key text and its columns (source
/// names, route order) with their values.
#[derive(Debug, Clone, PartialEq)]
pub struct Canonical {
    /// The key as people read it: `id=5`, `a=1, b="x"`.
    pub key: String,
    /// Column names (source names) and values, in the route's order.
    pub columns: Vec<(String, Value)>,
}

impl Canonical {
    /// The row's hash: every column's normal text (the key columns are among them).
    fn hash(&self) -> u64 {
        let mut hasher = FixedState::default().build_hasher();
        let mut buffer = String::new();
        for (_, value) in &self.columns {
            hash_value(value, false, &mut buffer, &mut hasher);
        }
        hasher.finish()
    }

    /// The row as `Row` (source column names), for writing it.
    pub fn row(&self) -> Row {
        self.columns
            .iter()
            .map(|(c, v)| (c.as_str(), v.clone()))
            .collect()
    }
}

/// A source row in compared form (its columns named as on the source).
pub fn from_source(route: &TableRoute, row: &Row) -> Canonical {
    convert(route, row, |(source, _)| source)
}

/// A target row in compared form: its columns renamed back to the source's names.
pub fn from_target(route: &TableRoute, row: &Row) -> Canonical {
    convert(route, row, |(_, target)| target)
}

fn convert(
    route: &TableRoute,
    row: &Row,
    local: impl Fn(&(String, String)) -> &String,
) -> Canonical {
    let columns: Vec<(String, Value)> = route
        .columns
        .iter()
        .map(|pair| {
            let value = row.get(local(pair)).cloned().unwrap_or(Value::Null);
            (pair.0.clone(), value)
        })
        .collect();
    let key = route
        .key
        .iter()
        .map(|k| {
            let value = columns
                .iter()
                .find(|(c, _)| c == k)
                .map_or_else(|| "NULL".to_owned(), |(_, v)| normal(v));
            format!("{k}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ");
    Canonical { key, columns }
}

/// A range's fingerprint: row count and the wrapping sum of row hashes.
pub fn fingerprint(rows: &[Canonical]) -> (usize, u64) {
    let sum = rows.iter().fold(0u64, |sum, r| sum.wrapping_add(r.hash()));
    (rows.len(), sum)
}

/// The fingerprint of rows as a reader returned them (the route's columns in route order),
/// equal to [`fingerprint`] of the same rows in compared form without building it: `as_json`
/// marks the columns whose text is read as JSON (see [`super::scan::Side::as_json`]).
pub fn raw_fingerprint(rows: &[Row], as_json: &[bool]) -> (usize, u64) {
    let state = FixedState::default();
    let mut buffer = String::new();
    let sum = rows.iter().fold(0u64, |sum, row| {
        let mut hasher = state.build_hasher();
        let mut json = as_json.iter();
        for (_, value) in row.iter() {
            let as_json = json.next().copied().unwrap_or(false);
            hash_value(value, as_json, &mut buffer, &mut hasher);
        }
        sum.wrapping_add(hasher.finish())
    });
    (rows.len(), sum)
}

/// Hashes the normal text of `value` ([`normal`]; text read as JSON when `as_json`), written
/// into `buffer` without allocating for the common kinds, and a separator.
fn hash_value(value: &Value, as_json: bool, buffer: &mut String, hasher: &mut impl Hasher) {
    buffer.clear();
    match value {
        Value::Null => buffer.push_str("NULL"),
        Value::Bool(b) => buffer.push(if *b { '1' } else { '0' }),
        Value::Int(i) => {
            let _ = write!(buffer, "{i}");
        }
        Value::UInt(u) => {
            let _ = write!(buffer, "{u}");
        }
        Value::Text(text) if as_json => buffer.push_str(&normal(&Value::Json(text.clone()))),
        Value::Text(text) => {
            let _ = write!(buffer, "{text:?}");
        }
        other => buffer.push_str(&normal(other)),
    }
    hasher.write(buffer.as_bytes());
    hasher.write_u8(0xff);
}

/// How a key differs between the source and a target.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Difference {
    /// The source has the row, the target does not.
    Missing,
    /// The target has a row the source does not.
    Extra,
    /// Both have it; these columns differ: (column, source value, target value) as normal text.
    Differs {
        /// The differing columns.
        columns: Vec<ColumnDifference>,
    },
}

/// One differing column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColumnDifference {
    /// The column (source name).
    pub column: String,
    /// The source's value, as normal text.
    pub source: String,
    /// The target's value, as normal text.
    pub target: String,
}

/// One differing key with both rows as read.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyDifference {
    /// The key text.
    pub key: String,
    /// What differs.
    pub difference: Difference,
    /// The source's row (none when missing there).
    pub source: Option<Canonical>,
    /// The target's row (none when missing there).
    pub target: Option<Canonical>,
}

/// The keys whose rows differ between `source` and `target` (rows of one range), in key order
/// of the source's reading then the target's extras; empty when the fingerprints agree.
pub fn differences(source: Vec<Canonical>, target: Vec<Canonical>) -> Vec<KeyDifference> {
    if fingerprint(&source) == fingerprint(&target) {
        return Vec::new();
    }
    let mut held: HashMap<String, Canonical> =
        target.into_iter().map(|r| (r.key.clone(), r)).collect();
    let mut out = Vec::new();
    for row in source {
        match held.remove(&row.key) {
            None => out.push(KeyDifference {
                key: row.key.clone(),
                difference: Difference::Missing,
                source: Some(row),
                target: None,
            }),
            Some(other) => {
                let columns: Vec<ColumnDifference> = row
                    .columns
                    .iter()
                    .zip(&other.columns)
                    .filter_map(|((column, a), (_, b))| {
                        let (a, b) = (normal(a), normal(b));
                        (a != b).then(|| ColumnDifference {
                            column: column.clone(),
                            source: a,
                            target: b,
                        })
                    })
                    .collect();
                if !columns.is_empty() {
                    out.push(KeyDifference {
                        key: row.key.clone(),
                        difference: Difference::Differs { columns },
                        source: Some(row),
                        target: Some(other),
                    });
                }
            }
        }
    }
    let mut extra: Vec<Canonical> = held.into_values().collect();
    extra.sort_by(|a, b| a.key.cmp(&b.key));
    out.extend(extra.into_iter().map(|row| KeyDifference {
        key: row.key.clone(),
        difference: Difference::Extra,
        source: None,
        target: Some(row),
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use duplex_connectors::{Decimal, TableName};

    fn route() -> TableRoute {
        TableRoute {
            source: TableName::new("public", "items"),
            target: TableName::new("erp", "items"),
            columns: vec![
                ("id".into(), "id".into()),
                ("qty".into(), "quantity".into()),
                ("note".into(), "note".into()),
            ],
            key: vec!["id".into()],
        }
    }

    fn source(id: i64, qty: &str, note: Value) -> Canonical {
        let row: Row = [
            ("id", Value::Int(id)),
            ("qty", Value::Decimal(qty.parse::<Decimal>().unwrap())),
            ("note", note),
        ]
        .into_iter()
        .collect();
        from_source(&route(), &row)
    }

    fn target(id: u64, qty: &str, note: Value) -> Canonical {
        let row: Row = [
            ("id", Value::UInt(id)),
            ("quantity", Value::Decimal(qty.parse::<Decimal>().unwrap())),
            ("note", note),
        ]
        .into_iter()
        .collect();
        from_target(&route(), &row)
    }

    #[test]
    fn the_fast_hash_is_the_hash_of_the_normal_text() {
        let values = [
            Value::Null,
            Value::Bool(true),
            Value::Int(-7),
            Value::UInt(7),
            Value::Text("a \"quoted\" ☺\n".into()),
            Value::Decimal("10.50".parse().unwrap()),
            Value::Json("{\"a\": 1}".into()),
        ];
        for value in &values {
            let (mut fast, mut plain) = (
                FixedState::default().build_hasher(),
                FixedState::default().build_hasher(),
            );
            hash_value(value, false, &mut String::new(), &mut fast);
            plain.write(normal(value).as_bytes());
            plain.write_u8(0xff);
            assert_eq!(fast.finish(), plain.finish(), "{value:?}");
        }
        let (mut text, mut json) = (
            FixedState::default().build_hasher(),
            FixedState::default().build_hasher(),
        );
        hash_value(
            &Value::Text("{\"a\": 1}".into()),
            true,
            &mut String::new(),
            &mut text,
        );
        hash_value(
            &Value::Json("{\"a\":1}".into()),
            false,
            &mut String::new(),
            &mut json,
        );
        assert_eq!(text.finish(), json.finish());
    }

    #[test]
    fn equal_by_meaning_across_kinds_and_renames() {
        let a = vec![source(1, "10.50", Value::Null), source(2, "3", Value::Null)];
        let b = vec![
            target(2, "3.000", Value::Null),
            target(1, "10.5", Value::Null),
        ];
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert!(differences(a, b).is_empty());
    }

    #[test]
    fn missing_extra_and_changed_columns_are_named_null_is_not_empty() {
        let a = vec![
            source(1, "1", Value::Null),
            source(2, "2", Value::Text("x".into())),
            source(3, "3", Value::Null),
        ];
        let b = vec![
            target(1, "1", Value::Text(String::new())),
            target(2, "5", Value::Text("x".into())),
            target(4, "4", Value::Null),
        ];
        let found = differences(a, b);
        let summary: Vec<(String, Difference)> =
            found.into_iter().map(|d| (d.key, d.difference)).collect();
        assert_eq!(
            summary,
            vec![
                (
                    "id=1".into(),
                    Difference::Differs {
                        columns: vec![ColumnDifference {
                            column: "note".into(),
                            source: "NULL".into(),
                            target: "\"\"".into()
                        }]
                    }
                ),
                (
                    "id=2".into(),
                    Difference::Differs {
                        columns: vec![ColumnDifference {
                            column: "qty".into(),
                            source: "2".into(),
                            target: "5".into()
                        }]
                    }
                ),
                ("id=3".into(), Difference::Missing),
                ("id=4".into(), Difference::Extra),
            ]
        );
    }
}
