//! Consistent snapshots of MySQL/MariaDB tables for the initial load (backfill).
//!
//! # Protocol
//!
//! [`MysqlSnapshot::open`] runs `START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY` and
//! then `SHOW STATUS LIKE 'binlog_snapshot_%'`: with InnoDB, MariaDB reports the binlog file
//! and offset that exactly matches the snapshot (every transaction committed before it is in
//! the snapshot, every one after it is not), without any lock. `BINLOG_GTID_POS` turns that
//! into the GTID position carried along. Streaming the binlog from that position after the
//! copy therefore misses nothing and repeats nothing.
//!
//! MariaDB cannot share one snapshot between connections, so all ranges are read through this
//! one transaction (the caller serialises the reads; the writes into the targets run in
//! parallel). Values are read with the binary protocol (prepared statements), which carries
//! FLOAT and DOUBLE exactly, and converted by the column's information_schema type the same
//! way the binlog decoder does: DECIMAL as exact text, UNSIGNED as [`Value::UInt`], negative
//! and long TIME as signed microseconds, TIMESTAMP as UTC instants (the session's time zone is
//! `+00:00`), zero dates refused, BIT as an unsigned number, ENUM and SET as their labels.

use std::sync::Arc;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use futures_util::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row as MyRow};

use super::{BinlogPosition, MysqlError, connect, quote_ident};
use crate::postgres::KeyRange;
use crate::{Column, Decimal, Row, TableName, Value};

/// Why a snapshot could not be taken or read.
#[derive(Debug, thiserror::Error)]
pub enum MysqlSnapshotError {
    /// A statement failed.
    #[error(transparent)]
    Mysql(#[from] MysqlError),
    /// The server reported no snapshot position (binary log off, or not InnoDB).
    #[error(
        "the server reports no binlog position for the snapshot: enable the binary log (log_bin) and use InnoDB tables"
    )]
    NoPosition,
    /// A value duplex will not silently change.
    #[error("column {column} of table {table}: {reason}")]
    BadValue {
        /// The table.
        table: TableName,
        /// The column.
        column: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

impl MysqlSnapshotError {
    /// True when retrying may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            MysqlSnapshotError::Mysql(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// One connection holding a consistent-snapshot transaction and its binlog position.
pub struct MysqlSnapshot {
    conn: Conn,
    /// The binlog position matching the snapshot exactly.
    pub position: BinlogPosition,
}

impl MysqlSnapshot {
    /// Connects and starts a consistent-snapshot transaction.
    pub async fn open(
        url: &str,
        password: Option<&str>,
    ) -> Result<MysqlSnapshot, MysqlSnapshotError> {
        let mut conn = connect(url, password).await?;
        conn.query_drop(
            "SET NAMES utf8mb4; SET SESSION time_zone = '+00:00'; \
             SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        )
        .await
        .map_err(MysqlError::query("preparing the snapshot session"))?;
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .await
            .map_err(MysqlError::query("starting the consistent snapshot"))?;
        let status: Vec<(String, String)> = conn
            .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
            .await
            .map_err(MysqlError::query("reading the snapshot's binlog position"))?;
        let get = |name: &str| {
            status
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let file = get("binlog_snapshot_file").filter(|f| !f.is_empty());
        let offset = get("binlog_snapshot_position").and_then(|p| p.parse::<u64>().ok());
        let (Some(file), Some(offset)) = (file, offset) else {
            return Err(MysqlSnapshotError::NoPosition);
        };
        let gtid: Option<Option<String>> = conn
            .exec_first("SELECT BINLOG_GTID_POS(?, ?)", (&file, offset))
            .await
            .map_err(MysqlError::query("reading the snapshot's GTID position"))?;
        let mut position = BinlogPosition::new(file, offset);
        position.gtid = gtid.flatten().filter(|g| !g.is_empty());
        Ok(MysqlSnapshot { conn, position })
    }

    /// Whether `table` has no rows.
    pub async fn is_empty(&mut self, table: &TableName) -> Result<bool, MysqlSnapshotError> {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", qualified(table));
        let any: Option<i64> = self
            .conn
            .query_first(sql)
            .await
            .map_err(MysqlError::query("checking whether a table is empty"))?;
        Ok(any == Some(0))
    }

    /// The number of rows of `table`.
    pub async fn count(&mut self, table: &TableName) -> Result<u64, MysqlSnapshotError> {
        let sql = format!("SELECT COUNT(*) FROM {}", qualified(table));
        let n: Option<u64> = self
            .conn
            .query_first(sql)
            .await
            .map_err(MysqlError::query("counting rows"))?;
        Ok(n.unwrap_or(0))
    }

    /// Every `every`-th value of the integer column `column` in key order.
    pub async fn boundaries(
        &mut self,
        table: &TableName,
        column: &str,
        every: u64,
    ) -> Result<Vec<i128>, MysqlSnapshotError> {
        let column = quote_ident(column);
        let sql = format!(
            "SELECT CAST(k AS CHAR) FROM (SELECT {column} AS k, ROW_NUMBER() OVER (ORDER BY {column}) AS n \
             FROM {}) s WHERE n % {every} = 0 ORDER BY k",
            qualified(table)
        );
        let keys: Vec<String> = self
            .conn
            .query(sql)
            .await
            .map_err(MysqlError::query("splitting a table into key ranges"))?;
        Ok(keys.iter().filter_map(|k| k.parse().ok()).collect())
    }

    /// The rows of `range` of `table` with `columns` (as information_schema describes them),
    /// as canonical values.
    pub async fn rows(
        &mut self,
        table: &TableName,
        columns: &[Column],
        range: &KeyRange,
    ) -> Result<Vec<Row>, MysqlSnapshotError> {
        let list = columns
            .iter()
            .map(select_expr)
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {list} FROM {} WHERE {}",
            qualified(table),
            range.condition(quote_ident)
        );
        let names: Vec<Arc<str>> = columns.iter().map(|c| Arc::from(c.name.as_str())).collect();
        let mut result = self
            .conn
            .exec_iter(sql, ())
            .await
            .map_err(MysqlError::query("reading a key range"))?;
        let mut rows = Vec::new();
        if let Some(mut stream) = result
            .stream::<MyRow>()
            .await
            .map_err(MysqlError::query("reading a key range"))?
        {
            while let Some(row) = stream.next().await {
                let row = row.map_err(MysqlError::query("reading a key range"))?;
                let values = row.unwrap();
                let mut out = Row::new();
                for ((column, name), value) in columns.iter().zip(&names).zip(values) {
                    let value =
                        convert(column, value).map_err(|reason| MysqlSnapshotError::BadValue {
                            table: table.clone(),
                            column: column.name.clone(),
                            reason,
                        })?;
                    out.push(name.clone(), value);
                }
                rows.push(out);
            }
        }
        Ok(rows)
    }

    /// Ends the snapshot transaction and closes the connection.
    pub async fn close(mut self) {
        let _ = self.conn.query_drop("COMMIT").await;
        if let Err(error) = self.conn.disconnect().await {
            tracing::debug!(%error, "closing the snapshot connection");
        }
    }
}

fn qualified(table: &TableName) -> String {
    format!(
        "{}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    )
}

/// The column as selected: UUIDs as their text, BIT as a number, everything else as it is.
fn select_expr(column: &Column) -> String {
    let name = quote_ident(&column.name);
    match base_type(column) {
        "uuid" => format!("CAST({name} AS CHAR)"),
        "bit" => format!("{name} + 0"),
        _ => name,
    }
}

fn base_type(column: &Column) -> &str {
    column
        .type_name
        .strip_suffix(" unsigned")
        .unwrap_or(&column.type_name)
}

fn is_binary(column: &Column) -> bool {
    matches!(
        base_type(column),
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob"
    )
}

/// Converts one binary-protocol value of `column` to its canonical form.
fn convert(column: &Column, value: mysql_async::Value) -> Result<Value, String> {
    use mysql_async::Value as V;
    let unsigned = column.type_name.ends_with(" unsigned");
    let ty = base_type(column);
    let text =
        |bytes: Vec<u8>| String::from_utf8(bytes).map_err(|_| "text is not valid UTF-8".to_owned());
    let zero = || {
        format!(
            "the zero date/time of this {} has no canonical form; set it to NULL or a real value at the source",
            column.declared
        )
    };
    Ok(match value {
        V::NULL => Value::Null,
        V::Int(i) => match ty {
            "float" | "double" | "real" => Value::Float(i as f64),
            _ if unsigned => Value::UInt(u64::try_from(i).map_err(|_| format!("{i} is negative"))?),
            "bit" => Value::UInt(u64::try_from(i).map_err(|_| format!("{i} is negative"))?),
            _ => Value::Int(i),
        },
        V::UInt(u) => match ty {
            _ if unsigned || ty == "bit" => Value::UInt(u),
            _ => Value::Int(i64::try_from(u).map_err(|_| format!("{u} is out of range"))?),
        },
        V::Float(f) => Value::Float(f64::from(f)),
        V::Double(d) => Value::Float(d),
        V::Bytes(bytes) => match ty {
            "decimal" | "numeric" => {
                Value::Decimal(text(bytes)?.parse::<Decimal>().map_err(|e| e.to_string())?)
            }
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year"
            | "bit" => {
                let t = text(bytes)?;
                if unsigned || ty == "bit" {
                    Value::UInt(t.parse().map_err(|_| format!("{t:?} is not a number"))?)
                } else {
                    Value::Int(t.parse().map_err(|_| format!("{t:?} is not a number"))?)
                }
            }
            "float" => {
                let t = text(bytes)?;
                Value::Float(f64::from(
                    t.parse::<f32>()
                        .map_err(|_| format!("{t:?} is not a number"))?,
                ))
            }
            "double" | "real" => {
                let t = text(bytes)?;
                Value::Float(t.parse().map_err(|_| format!("{t:?} is not a number"))?)
            }
            "uuid" => {
                let t = text(bytes)?;
                Value::Uuid(uuid::Uuid::parse_str(&t).map_err(|_| format!("{t:?} is not a UUID"))?)
            }
            "json" => Value::Json(text(bytes)?),
            _ if is_binary(column) => Value::Bytes(bytes),
            _ => Value::Text(text(bytes)?),
        },
        V::Date(y, m, d, h, mi, s, us) => {
            if y == 0 || m == 0 || d == 0 {
                return Err(zero());
            }
            let date = NaiveDate::from_ymd_opt(i32::from(y), u32::from(m), u32::from(d))
                .ok_or_else(|| format!("{y}-{m}-{d} is not a date"))?;
            let time = NaiveTime::from_hms_micro_opt(u32::from(h), u32::from(mi), u32::from(s), us)
                .ok_or_else(|| format!("{h}:{mi}:{s}.{us} is not a time"))?;
            match ty {
                "date" => Value::Date(date),
                "timestamp" => Value::TimestampTz(NaiveDateTime::new(date, time).and_utc()),
                _ => Value::Timestamp(NaiveDateTime::new(date, time)),
            }
        }
        V::Time(negative, days, h, m, s, us) => {
            let secs =
                (i64::from(days) * 24 + i64::from(h)) * 3600 + i64::from(m) * 60 + i64::from(s);
            let micros = secs * 1_000_000 + i64::from(us);
            Value::Time(if negative { -micros } else { micros })
        }
    })
}
