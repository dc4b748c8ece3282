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
//! `+00:00`), zero dates refused, BIT(n) as a bit string of n bits (read as a number), ENUM and SET as their labels.

use std::sync::Arc;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use futures_util::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row as MyRow};

use super::{BinlogPosition, MysqlError, connect, quote_ident};
use crate::snapshot::{KeyRange, SnapshotRead};
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
    /// A key bound does not fit the key columns.
    #[error("cutting a table into key ranges: {0}")]
    Key(String),
    /// A range digest cannot be computed (see [`crate::digest`]).
    #[error("computing a range digest: {0}")]
    Digest(String),
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
    pub(super) conn: Conn,
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
        let position = start(&mut conn, true).await?;
        Ok(MysqlSnapshot { conn, position })
    }

    /// Connects and starts a consistent-snapshot transaction for reads that need no GTID
    /// position ([`crate::AnySnapshot::open`]): its [`MysqlSnapshot::position`] holds the binlog
    /// file and offset only (looking the GTID position up reads the binlog file from its start,
    /// tens of milliseconds per call on a busy server). [`MysqlSnapshot::renew`] looks it up.
    pub async fn open_reader(
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
        let position = start(&mut conn, false).await?;
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

    /// Whether a key column of this type can cut a table into ranges: the server orders and
    /// compares its values the same way (not ENUM/SET, which sort by index but compare with
    /// a string as text) and they travel as parameters.
    pub fn orderable(column: &Column) -> bool {
        matches!(
            base_type(column),
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
                | "date"
                | "datetime"
                | "timestamp"
                | "uuid"
        )
    }

    /// Runs `sql` (selecting `columns`, through [`select_expr`]) and converts its rows.
    async fn select(
        &mut self,
        table: &TableName,
        columns: &[Column],
        sql: &str,
        params: Vec<mysql_async::Value>,
        doing: &'static str,
    ) -> Result<Vec<Row>, MysqlSnapshotError> {
        let names: Vec<Arc<str>> = columns.iter().map(|c| Arc::from(c.name.as_str())).collect();
        let params = if params.is_empty() {
            mysql_async::Params::Empty
        } else {
            mysql_async::Params::Positional(params)
        };
        let mut result = self
            .conn
            .exec_iter(sql, params)
            .await
            .map_err(MysqlError::query(doing))?;
        let mut rows = Vec::new();
        if let Some(mut stream) = result
            .stream::<MyRow>()
            .await
            .map_err(MysqlError::query(doing))?
        {
            while let Some(row) = stream.next().await {
                let row = row.map_err(MysqlError::query(doing))?;
                let values = row.unwrap();
                let mut out = Row::with_capacity(columns.len());
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

    /// Ends the snapshot transaction and starts a fresh one; returns the binlog position that
    /// matches the new one exactly (`duplex verify` reads each range in a snapshot of its own).
    pub async fn renew(&mut self) -> Result<BinlogPosition, MysqlSnapshotError> {
        self.conn
            .query_drop("COMMIT")
            .await
            .map_err(MysqlError::query("ending the snapshot"))?;
        self.position = start(&mut self.conn, true).await?;
        Ok(self.position.clone())
    }

    /// Ends the snapshot transaction and starts a fresh one without reading its position:
    /// translating a binlog offset into a GTID position (`BINLOG_GTID_POS`) reads the binlog
    /// file from its start, tens of milliseconds per call on a busy server.
    pub async fn refresh(&mut self) -> Result<(), MysqlSnapshotError> {
        self.conn
            .query_drop("COMMIT")
            .await
            .map_err(MysqlError::query("ending the snapshot"))?;
        self.conn
            .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .await
            .map_err(MysqlError::query("starting the consistent snapshot"))?;
        Ok(())
    }

    /// Ends the snapshot transaction and closes the connection.
    pub async fn close(mut self) {
        let _ = self.conn.query_drop("COMMIT").await;
        if let Err(error) = self.conn.disconnect().await {
            tracing::debug!(%error, "closing the snapshot connection");
        }
    }
}

/// Starts a consistent-snapshot transaction on `conn` and returns the binlog position that
/// matches it exactly, with its GTID position when `gtid`.
async fn start(conn: &mut Conn, gtid: bool) -> Result<BinlogPosition, MysqlSnapshotError> {
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
    if !gtid {
        return Ok(BinlogPosition::new(file, offset));
    }
    let gtid: Option<Option<String>> = conn
        .exec_first("SELECT BINLOG_GTID_POS(?, ?)", (&file, offset))
        .await
        .map_err(MysqlError::query("reading the snapshot's GTID position"))?;
    let mut position = BinlogPosition::new(file, offset);
    position.gtid = gtid.flatten().filter(|g| !g.is_empty());
    Ok(position)
}

impl SnapshotRead for MysqlSnapshot {
    type Error = MysqlSnapshotError;

    fn can_cut_on(&self, column: &Column) -> bool {
        MysqlSnapshot::orderable(column)
    }

    /// The number of rows of `table`.
    async fn count(&mut self, table: &TableName) -> Result<u64, MysqlSnapshotError> {
        let sql = format!("SELECT COUNT(*) FROM {}", qualified(table));
        let n: Option<u64> = self
            .conn
            .query_first(sql)
            .await
            .map_err(MysqlError::query("counting rows"))?;
        Ok(n.unwrap_or(0))
    }

    async fn boundaries(
        &mut self,
        table: &TableName,
        column: &str,
        every: u64,
    ) -> Result<(Vec<i128>, u64), MysqlSnapshotError> {
        crate::snapshot::integer_cuts(
            &qualified(table),
            &quote_ident(column),
            every,
            |e| format!("CAST({e} AS CHAR)"),
            async |sql| {
                self.conn
                    .query_first::<String, _>(sql)
                    .await
                    .map_err(|e| MysqlError::query("splitting a table into key ranges")(e).into())
            },
            MysqlSnapshotError::Key,
        )
        .await
    }

    /// Every `every`-th key of `table` (primary-key columns `key`, in key order as the
    /// server orders them): the cut points splitting the table into ranges of `every` rows.
    /// Walked by the key's index from the last cut, one query per range, the cut values bound
    /// back as the range reads bind them (see [`condition`]).
    async fn key_boundaries(
        &mut self,
        table: &TableName,
        key: &[Column],
        every: u64,
    ) -> Result<Vec<Vec<Value>>, MysqlSnapshotError> {
        let list = key
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let select = key.iter().map(select_expr).collect::<Vec<_>>().join(", ");
        let mut cuts: Vec<Vec<Value>> = Vec::new();
        loop {
            let after = KeyRange {
                columns: key.to_vec(),
                lo: cuts.last().cloned(),
                hi: None,
            };
            let (condition, params) = condition(&after)?;
            let sql = format!(
                "SELECT {select} FROM {} WHERE {condition} ORDER BY {list} LIMIT 1 OFFSET {}",
                qualified(table),
                every.max(1) - 1
            );
            let rows = self
                .select(
                    table,
                    key,
                    &sql,
                    params,
                    "splitting a table into key ranges",
                )
                .await?;
            match rows.into_iter().next() {
                Some(row) => cuts.push(row.iter().map(|(_, v)| v.clone()).collect()),
                None => return Ok(cuts),
            }
        }
    }

    /// For each of `keys`, the index of the range it falls in when `cuts` (ascending) cut
    /// the table on its key columns `key`: the number of cut points below it. The server
    /// compares, with the columns' own types and collations: the keys and cut points are
    /// read as rows of a union with the (empty) table's own columns.
    async fn range_indexes(
        &mut self,
        table: &TableName,
        key: &[Column],
        cuts: &[Vec<Value>],
        keys: &[Vec<Value>],
    ) -> Result<Vec<u64>, MysqlSnapshotError> {
        if cuts.is_empty() || keys.is_empty() {
            return Ok(vec![0; keys.len()]);
        }
        let list = key
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let marks = vec!["?"; key.len()].join(", ");
        let mut params = Vec::new();
        let mut b = format!("SELECT {list} FROM {} WHERE 1=0", qualified(table));
        for cut in cuts {
            b.push_str(&format!(" UNION ALL SELECT {marks}"));
            params.extend(cut.iter().map(param));
        }
        let mut k = format!(
            "SELECT 0 AS duplex_i, {list} FROM {} WHERE 1=0",
            qualified(table)
        );
        for (i, row) in keys.iter().enumerate() {
            k.push_str(&format!(" UNION ALL SELECT {i}, {marks}"));
            params.extend(row.iter().map(param));
        }
        let side = |alias: &str| {
            let items: Vec<String> = key
                .iter()
                .map(|c| format!("{alias}.{}", quote_ident(&c.name)))
                .collect();
            format!("({})", items.join(", "))
        };
        let sql = format!(
            "SELECT k.duplex_i, (SELECT COUNT(*) FROM ({b}) b WHERE {} < {}) FROM ({k}) k ORDER BY k.duplex_i",
            side("b"),
            side("k")
        );
        let counts: Vec<(u64, u64)> = self
            .conn
            .exec(sql, mysql_async::Params::Positional(params))
            .await
            .map_err(MysqlError::query("finding the key ranges of changed rows"))?;
        Ok(counts.into_iter().map(|(_, n)| n).collect())
    }

    /// The rows of `range` of `table` with `columns` (as information_schema describes them),
    /// as canonical values.
    async fn rows(
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
        let (condition, params) = condition(range)?;
        let sql = format!("SELECT {list} FROM {} WHERE {condition}", qualified(table),);
        self.select(table, columns, &sql, params, "reading a key range")
            .await
    }

    async fn rows_with_keys(
        &mut self,
        table: &TableName,
        columns: &[Column],
        key: &[Column],
        keys: &[Vec<Value>],
    ) -> Result<Vec<Row>, MysqlSnapshotError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let list = columns
            .iter()
            .map(select_expr)
            .collect::<Vec<_>>()
            .join(", ");
        let names: Vec<String> = key.iter().map(|c| quote_ident(&c.name)).collect();
        let mut params = Vec::new();
        let mut wanted = Vec::with_capacity(keys.len());
        for values in keys {
            if values.len() != names.len() {
                return Err(MysqlSnapshotError::Key(format!(
                    "a key of {} values for {} key columns",
                    values.len(),
                    names.len()
                )));
            }
            params.extend(values.iter().map(param));
            wanted.push(format!("({})", vec!["?"; values.len()].join(", ")));
        }
        let sql = format!(
            "SELECT {list} FROM {} WHERE ({}) IN ({})",
            qualified(table),
            names.join(", "),
            wanted.join(", ")
        );
        self.select(table, columns, &sql, params, "reading rows by key")
            .await
    }

    async fn integer_span(
        &mut self,
        table: &TableName,
        column: &str,
    ) -> Result<Option<crate::snapshot::IntegerSpan>, MysqlSnapshotError> {
        let column = quote_ident(column);
        let sql = format!(
            "SELECT CAST(MIN({column}) AS CHAR), CAST(MAX({column}) AS CHAR), \
             (SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?) \
             FROM {}",
            qualified(table)
        );
        let row: Option<(Option<String>, Option<String>, Option<u64>)> = self
            .conn
            .exec_first(sql, (&table.schema, &table.name))
            .await
            .map_err(MysqlError::query("reading the span of an integer key"))?;
        let Some((Some(min), Some(max), estimate)) = row else {
            return Ok(None);
        };
        let parse = |t: &str| -> Result<i128, MysqlSnapshotError> {
            t.parse()
                .map_err(|_| MysqlSnapshotError::Key(format!("{t:?} is not an integer")))
        };
        // InnoDB's estimate; a table never analysed may say 0: count.
        let rows = match estimate {
            Some(estimate) if estimate >= 1 => estimate,
            _ => self.count(table).await?,
        };
        Ok(Some(crate::snapshot::IntegerSpan {
            min: parse(&min)?,
            max: parse(&max)?,
            rows,
        }))
    }

    fn can_digest(&self, columns: &[Column]) -> bool {
        MysqlSnapshot::digestible(columns)
    }

    async fn digest(
        &mut self,
        table: &TableName,
        columns: &[Column],
        range: &KeyRange,
    ) -> Result<crate::digest::RangeDigest, MysqlSnapshotError> {
        self.range_digest(table, columns, range).await
    }
}

pub(super) fn qualified(table: &TableName) -> String {
    format!(
        "{}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    )
}

/// The SQL condition selecting `range` and its parameters: integers inline, other values as
/// parameters; several columns as the expanded row comparison
/// `a >= x AND (a > x OR (a = x AND b > y))`, which MariaDB reads by index (it does not use
/// an index for a row comparison `(a, b) > (x, y)`, which means the same).
pub(super) fn condition(
    range: &KeyRange,
) -> Result<(String, Vec<mysql_async::Value>), MysqlSnapshotError> {
    let mut params = Vec::new();
    let mut parts = Vec::new();
    let names: Vec<String> = range.columns.iter().map(|c| quote_ident(&c.name)).collect();
    for (bound, lower) in [(&range.lo, true), (&range.hi, false)] {
        let Some(values) = bound else { continue };
        if values.len() != names.len() {
            return Err(MysqlSnapshotError::Key(format!(
                "a bound of {} values for {} key columns",
                values.len(),
                names.len()
            )));
        }
        let mut value = |v: &Value| match v {
            Value::Int(i) => i.to_string(),
            Value::UInt(u) => u.to_string(),
            other => {
                params.push(param(other));
                "?".to_owned()
            }
        };
        let (strict, last) = if lower { (">", ">") } else { ("<", "<=") };
        if names.len() == 1 {
            parts.push(format!("{} {last} {}", names[0], value(&values[0])));
            continue;
        }
        let lead = if lower { ">=" } else { "<=" };
        let first = format!("{} {lead} {}", names[0], value(&values[0]));
        let mut alternatives = Vec::new();
        for i in 0..names.len() {
            let mut terms = Vec::new();
            for j in 0..i {
                terms.push(format!("{} = {}", names[j], value(&values[j])));
            }
            let op = if i + 1 == names.len() { last } else { strict };
            terms.push(format!("{} {op} {}", names[i], value(&values[i])));
            alternatives.push(format!("({})", terms.join(" AND ")));
        }
        parts.push(format!("{first} AND ({})", alternatives.join(" OR ")));
    }
    let sql = if parts.is_empty() {
        "1=1".to_owned()
    } else {
        parts.join(" AND ")
    };
    Ok((sql, params))
}

/// A key value as a statement parameter (the session's time zone is UTC).
fn param(value: &Value) -> mysql_async::Value {
    use chrono::{Datelike, Timelike};
    use mysql_async::Value as V;
    let datetime = |t: &NaiveDateTime| {
        V::Date(
            t.year() as u16,
            t.month() as u8,
            t.day() as u8,
            t.hour() as u8,
            t.minute() as u8,
            t.second() as u8,
            t.nanosecond() / 1000,
        )
    };
    match value {
        Value::Null | Value::Unchanged => V::NULL,
        Value::Bool(b) => V::Int(i64::from(*b)),
        Value::Int(i) => V::Int(*i),
        Value::UInt(u) => V::UInt(*u),
        Value::Float(f) => V::Double(*f),
        Value::Decimal(d) => V::Bytes(d.to_string().into_bytes()),
        Value::Text(s) | Value::Json(s) => V::Bytes(s.clone().into_bytes()),
        Value::Bytes(b) => V::Bytes(b.clone()),
        Value::Uuid(u) => V::Bytes(u.to_string().into_bytes()),
        Value::Date(d) => V::Date(d.year() as u16, d.month() as u8, d.day() as u8, 0, 0, 0, 0),
        Value::Time(us) => {
            let negative = *us < 0;
            let us = us.unsigned_abs();
            let secs = us / 1_000_000;
            V::Time(
                negative,
                (secs / 86_400) as u32,
                (secs / 3600 % 24) as u8,
                (secs / 60 % 60) as u8,
                (secs % 60) as u8,
                (us % 1_000_000) as u32,
            )
        }
        Value::Timestamp(t) => datetime(t),
        Value::TimestampTz(t) => datetime(&t.naive_utc()),
        Value::Bits(b) => b.to_uint().map_or(V::NULL, V::UInt),
        Value::Interval(i) => V::Bytes(i.to_string().into_bytes()),
        Value::Array(_) => V::NULL,
    }
}

/// The column as selected: UUIDs as their text, BIT as a number, everything else as it is.
pub(super) fn select_expr(column: &Column) -> String {
    let name = quote_ident(&column.name);
    match base_type(column) {
        "uuid" => format!("CAST({name} AS CHAR)"),
        "bit" => format!("{name} + 0"),
        _ => name,
    }
}

pub(super) fn base_type(column: &Column) -> &str {
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

/// A `BIT(n)` value (selected as a number) as a bit string of n bits.
fn bits(column: &Column, value: u64) -> Result<Value, String> {
    let len = crate::apply::declared_length(&column.declared).unwrap_or(1);
    crate::Bits::from_uint(value, len)
        .map(Value::Bits)
        .ok_or_else(|| format!("{value} does not fit {}", column.declared))
}

/// Converts one binary-protocol value of `column` to its canonical form.
pub(super) fn convert(column: &Column, value: mysql_async::Value) -> Result<Value, String> {
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
            "bit" => bits(
                column,
                u64::try_from(i).map_err(|_| format!("{i} is negative"))?,
            )?,
            _ => Value::Int(i),
        },
        V::UInt(u) => match ty {
            "bit" => bits(column, u)?,
            _ if unsigned => Value::UInt(u),
            _ => Value::Int(i64::try_from(u).map_err(|_| format!("{u} is out of range"))?),
        },
        V::Float(f) => Value::Float(f64::from(f)),
        V::Double(d) => Value::Float(d),
        V::Bytes(bytes) => match ty {
            "decimal" | "numeric" => {
                Value::Decimal(text(bytes)?.parse::<Decimal>().map_err(|e| e.to_string())?)
            }
            "bit" => {
                let t = text(bytes)?;
                bits(
                    column,
                    t.parse().map_err(|_| format!("{t:?} is not a number"))?,
                )?
            }
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" => {
                let t = text(bytes)?;
                if unsigned {
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
