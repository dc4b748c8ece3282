//! Table identity and table schemas as the catalogs report them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A table's qualified name: PostgreSQL `schema.table`, MySQL `database.table`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableName {
    /// Schema (PostgreSQL) or database (MySQL).
    pub schema: String,
    /// Table name.
    pub name: String,
}

/// A table name that is not of the form `schema.table`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a qualified table name: write it as schema.table (PostgreSQL) or database.table (MySQL)"
)]
pub struct TableNameError(String);

impl TableName {
    /// A table name from its parts.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> TableName {
        TableName {
            schema: schema.into(),
            name: name.into(),
        }
    }
}

impl FromStr for TableName {
    type Err = TableNameError;

    fn from_str(s: &str) -> Result<TableName, TableNameError> {
        match s.split_once('.') {
            Some((schema, name))
                if !schema.is_empty() && !name.is_empty() && !name.contains('.') =>
            {
                Ok(TableName::new(schema, name))
            }
            _ => Err(TableNameError(s.to_owned())),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// The canonical [`crate::Value`] variant a column's values are carried as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ValueKind {
    /// `Value::Bool`.
    Bool,
    /// `Value::Int`.
    Int,
    /// `Value::UInt`.
    UInt,
    /// `Value::Float`.
    Float,
    /// `Value::Decimal`.
    Decimal,
    /// `Value::Text`.
    Text,
    /// `Value::Bytes`.
    Bytes,
    /// `Value::Date`.
    Date,
    /// `Value::Time`.
    Time,
    /// `Value::Timestamp`.
    Timestamp,
    /// `Value::TimestampTz`.
    TimestampTz,
    /// `Value::Uuid`.
    Uuid,
    /// `Value::Json`.
    Json,
    /// `Value::Bits`.
    Bits,
    /// `Value::Array`.
    Array,
    /// `Value::Interval`.
    Interval,
}

/// One column as the source catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// The base type name the type mapping is keyed on: PostgreSQL's `pg_type.typname`
    /// (`int4`, `numeric`, `timestamptz`; `enum` for enum types, `array` for arrays, domains
    /// resolved to their base type), MySQL's `DATA_TYPE` with ` unsigned` appended for
    /// unsigned integers (`bigint unsigned`).
    pub type_name: String,
    /// The full declared type as the server prints it (`numeric(12,2)`, `enum('a','b')`).
    pub declared: String,
    /// Whether the column accepts NULL.
    pub nullable: bool,
}

/// A table's columns (in table order) and primary key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    /// The table.
    pub name: TableName,
    /// Columns in table order.
    pub columns: Vec<Column>,
    /// Primary-key column names in key order; empty when the table has none.
    pub primary_key: Vec<String>,
}

impl TableSchema {
    /// The column with this name.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// One column of a [`TableShape`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShapeColumn {
    /// Column name.
    pub name: String,
    /// The base type name, in the vocabulary of [`Column::type_name`] (PostgreSQL `pg_type`
    /// names, MySQL `DATA_TYPE` with ` unsigned` for unsigned integers).
    pub type_name: String,
}

/// A table's columns as the source's change log describes them at one point of a stream (a
/// PostgreSQL `Relation` message, a MariaDB table map with `binlog_row_metadata=FULL`): what
/// the changes that follow carry, which may differ from today's catalog when the stream
/// replays changes made before a schema change.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TableShape {
    /// The table.
    pub table: TableName,
    /// Columns in table order.
    pub columns: Vec<ShapeColumn>,
}

impl TableShape {
    /// The shape a catalog description has (what a stream started now would announce).
    pub fn of(schema: &TableSchema) -> TableShape {
        TableShape {
            table: schema.name.clone(),
            columns: schema
                .columns
                .iter()
                .map(|c| ShapeColumn {
                    name: c.name.clone(),
                    type_name: c.type_name.clone(),
                })
                .collect(),
        }
    }

    /// The column with this name.
    pub fn column(&self, name: &str) -> Option<&ShapeColumn> {
        self.columns.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_need_exactly_one_dot() {
        assert_eq!(
            "public.orders".parse(),
            Ok(TableName::new("public", "orders"))
        );
        for bad in ["orders", ".orders", "public.", "a.b.c", ""] {
            assert!(bad.parse::<TableName>().is_err(), "{bad:?} parsed");
        }
    }
}
