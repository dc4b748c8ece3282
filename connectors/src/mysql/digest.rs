//! Range digests on MySQL/MariaDB ([`crate::digest`]): the rows are read as for
//! [`crate::SnapshotRead::rows`] and converted the same way, and duplex forms the tokens,
//! hashes and sums them as they arrive, without holding the range. (The server's own `MD5()`
//! and string functions would take about three times as long as sending the rows.)

use super::snapshot::{base_type, condition, qualified, select_expr};
use super::{MysqlSnapshot, MysqlSnapshotError};
use crate::digest::{RangeDigest, push_value};
use crate::{Column, KeyRange, TableName, Value};

impl MysqlSnapshot {
    /// Whether every one of `columns` has a type the digest covers: integers, decimals,
    /// character and binary strings, UUIDs, dates and date-times.
    pub fn digestible(columns: &[Column]) -> bool {
        !columns.is_empty()
            && columns.iter().all(|c| {
                matches!(
                    base_type(c),
                    "tinyint"
                        | "smallint"
                        | "mediumint"
                        | "int"
                        | "integer"
                        | "bigint"
                        | "decimal"
                        | "numeric"
                        | "char"
                        | "varchar"
                        | "tinytext"
                        | "text"
                        | "mediumtext"
                        | "longtext"
                        | "binary"
                        | "varbinary"
                        | "tinyblob"
                        | "blob"
                        | "mediumblob"
                        | "longblob"
                        | "uuid"
                        | "date"
                        | "datetime"
                        | "timestamp"
                )
            })
    }

    /// The digest of `range` of `table` over `columns` (in this order).
    pub async fn range_digest(
        &mut self,
        table: &TableName,
        columns: &[Column],
        range: &KeyRange,
    ) -> Result<RangeDigest, MysqlSnapshotError> {
        let list = columns
            .iter()
            .map(select_expr)
            .collect::<Vec<_>>()
            .join(", ");
        let (condition, params) = condition(range)?;
        let sql = format!("SELECT {list} FROM {} WHERE {condition}", qualified(table));
        let mut digest = RangeDigest::default();
        let mut text = Vec::new();
        let each = |values: Vec<Value>| {
            text.clear();
            for (i, (column, value)) in columns.iter().zip(&values).enumerate() {
                if i > 0 {
                    text.push(b'|');
                }
                if !push_value(&mut text, value) {
                    return Err(MysqlSnapshotError::Digest(format!(
                        "column {} of {table}: a {} value has no token",
                        column.name, column.declared
                    )));
                }
            }
            digest.add(&text);
            Ok(())
        };
        self.for_each_row(
            table,
            columns,
            &sql,
            params,
            "reading a key range for its digest",
            each,
        )
        .await?;
        Ok(digest)
    }
}
