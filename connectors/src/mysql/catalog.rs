//! Reading table schemas from MySQL/MariaDB's information_schema.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::{Column, TableName, TableSchema};

use super::MysqlError;

/// A table's schema plus what the MySQL reader needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// Columns and primary key.
    pub schema: TableSchema,
    /// Storage engine (`InnoDB`, `MyISAM`, ...).
    pub engine: String,
}

/// The base tables of database `schema`, by name.
pub async fn table_names(conn: &mut Conn, schema: &str) -> Result<Vec<String>, MysqlError> {
    conn.exec(
        "SELECT TABLE_NAME FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1",
        (schema,),
    )
    .await
    .map_err(MysqlError::query("listing the tables of a database"))
}

/// Describes a base table; `None` when it does not exist.
pub async fn describe_table(
    conn: &mut Conn,
    table: &TableName,
) -> Result<Option<TableInfo>, MysqlError> {
    let engine: Option<Option<String>> = conn
        .exec_first(
            "SELECT ENGINE FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND TABLE_TYPE = 'BASE TABLE'",
            (&table.schema, &table.name),
        )
        .await
        .map_err(MysqlError::query("looking up a mapped table"))?;
    let Some(engine) = engine else {
        return Ok(None);
    };
    let rows: Vec<(String, String, String, String)> = conn
        .exec(
            "SELECT COLUMN_NAME, LOWER(DATA_TYPE), COLUMN_TYPE, IS_NULLABLE \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
             ORDER BY ORDINAL_POSITION",
            (&table.schema, &table.name),
        )
        .await
        .map_err(MysqlError::query("reading a mapped table's columns"))?;
    let columns = rows
        .into_iter()
        .map(|(name, data_type, declared, nullable)| {
            let unsigned = declared.to_ascii_lowercase().contains("unsigned");
            Column {
                name,
                type_name: if unsigned {
                    format!("{data_type} unsigned")
                } else {
                    data_type
                },
                declared,
                nullable: nullable == "YES",
            }
        })
        .collect();
    let primary_key: Vec<String> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' \
             ORDER BY ORDINAL_POSITION",
            (&table.schema, &table.name),
        )
        .await
        .map_err(MysqlError::query("reading a mapped table's primary key"))?;
    Ok(Some(TableInfo {
        schema: TableSchema {
            name: table.clone(),
            columns,
            primary_key,
        },
        engine: engine.unwrap_or_default(),
    }))
}

/// The foreign keys declared on `table` (the referencing side), in constraint-name order.
pub async fn foreign_keys(
    conn: &mut Conn,
    table: &TableName,
) -> Result<Vec<crate::foreign_keys::ForeignKey>, MysqlError> {
    let rows: Vec<(String, String, String, String, String)> = conn
        .exec(
            "SELECT CONSTRAINT_NAME, UNIQUE_CONSTRAINT_SCHEMA, REFERENCED_TABLE_NAME, \
                    DELETE_RULE, UPDATE_RULE \
             FROM information_schema.REFERENTIAL_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ? ORDER BY CONSTRAINT_NAME",
            (&table.schema, &table.name),
        )
        .await
        .map_err(MysqlError::query("reading a table's foreign keys"))?;
    Ok(rows
        .into_iter()
        .map(
            |(name, schema, referenced, on_delete, on_update)| crate::foreign_keys::ForeignKey {
                name,
                table: table.clone(),
                references: TableName::new(schema, referenced),
                on_delete: on_delete.to_ascii_uppercase(),
                on_update: on_update.to_ascii_uppercase(),
                deferrable: false,
            },
        )
        .collect())
}

/// The collations of `table`'s columns that have one (see [`crate::catalog::collations`]).
/// MariaDB's collation names say how they compare: `_ci` ignores letter case, and every
/// collation but the `_nopad_` ones ignores trailing spaces.
pub async fn collations(
    conn: &mut Conn,
    table: &TableName,
) -> Result<Vec<crate::catalog::ColumnCollation>, MysqlError> {
    let rows: Vec<(String, String)> = conn
        .exec(
            "SELECT COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLLATION_NAME IS NOT NULL \
             ORDER BY ORDINAL_POSITION",
            (&table.schema, &table.name),
        )
        .await
        .map_err(MysqlError::query("reading a table's column collations"))?;
    Ok(rows
        .into_iter()
        .map(|(column, collation)| {
            let lower = collation.to_ascii_lowercase();
            crate::catalog::ColumnCollation {
                column,
                case_insensitive: lower.ends_with("_ci"),
                pads: !lower.contains("_nopad_"),
                collation,
            }
        })
        .collect())
}
