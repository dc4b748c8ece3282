//! Range digests on MySQL/MariaDB ([`crate::digest`]): the rows are read as for
//! [`crate::SnapshotRead::rows`] and converted the same way, and duplex forms the tokens,
//! hashes and sums them as they arrive, without holding the range. (The server's own `MD5()`
//! and string functions would take about three times as long as sending the rows.) It streams
//! the rows itself rather than through the row read's loop, converting value by value into the
//! row's text: collecting each row's values first, to share that loop, cost 15% of verify's
//! speed from MariaDB (`cargo bench --bench verify`: 0.84x against 0.72x).

use futures_util::StreamExt;
use mysql_async::Row as MyRow;
use mysql_async::prelude::Queryable;

use super::snapshot::{base_type, condition, convert, qualified, select_expr};
use super::{MysqlError, MysqlSnapshot, MysqlSnapshotError};
use crate::digest::{RangeDigest, push_value};
use crate::{Column, KeyRange, TableName};

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
        const DOING: &str = "reading a key range for its digest";
        let list = columns
            .iter()
            .map(select_expr)
            .collect::<Vec<_>>()
            .join(", ");
        let (condition, params) = condition(range)?;
        let sql = format!("SELECT {list} FROM {} WHERE {condition}", qualified(table));
        let params = if params.is_empty() {
            mysql_async::Params::Empty
        } else {
            mysql_async::Params::Positional(params)
        };
        let mut result = self
            .conn
            .exec_iter(sql, params)
            .await
            .map_err(MysqlError::query(DOING))?;
        let mut digest = RangeDigest::default();
        let mut text = Vec::new();
        if let Some(mut stream) = result
            .stream::<MyRow>()
            .await
            .map_err(MysqlError::query(DOING))?
        {
            while let Some(row) = stream.next().await {
                let row = row.map_err(MysqlError::query(DOING))?;
                text.clear();
                for (i, (column, value)) in columns.iter().zip(row.unwrap()).enumerate() {
                    if i > 0 {
                        text.push(b'|');
                    }
                    let value =
                        convert(column, value).map_err(|reason| MysqlSnapshotError::BadValue {
                            table: table.clone(),
                            column: column.name.clone(),
                            reason,
                        })?;
                    if !push_value(&mut text, &value) {
                        return Err(MysqlSnapshotError::Digest(format!(
                            "column {} of {table}: a {} value has no token",
                            column.name, column.declared
                        )));
                    }
                }
                digest.add(&text);
            }
        }
        Ok(digest)
    }
}
