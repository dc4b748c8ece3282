//! The backfill's snapshot of a SQL Server source ([`crate::SourceSnapshot::Mssql`]): a
//! `SNAPSHOT`-isolation transaction and the CDC position it matches exactly, and the reads of
//! [`crate::SnapshotRead`] in it.
//!
//! # Taking it, and why the position is exact
//!
//! SQL Server exposes no LSN for a snapshot's start: a snapshot transaction sees the
//! transactions that had committed when its first statement touching data ran, and the only
//! documented LSN of the capture job (`sys.fn_cdc_get_max_lsn()`) is the last commit the
//! capture job has *processed*, which lags the log. A position read from it inside or before
//! the snapshot can be behind commits the snapshot already holds, so streaming from it would
//! apply those again (and duplex's applier is strict: an INSERT of a row that exists stops the
//! link). So the moment the snapshot starts is fenced instead, in [`MssqlSnapshot::take`]:
//!
//! 1. A *fence* session (`SERIALIZABLE`, `LOCK_TIMEOUT`, `DEADLOCK_PRIORITY LOW`) begins a
//!    transaction and takes a shared table lock (`WITH (TABLOCK, HOLDLOCK)`) on every table
//!    read from the site, in name order. A shared table lock is granted only once no other
//!    transaction holds an intent-exclusive lock on the table, i.e. once every transaction
//!    that wrote the table has committed or rolled back; and no transaction can write it
//!    until the fence ends. Readers are not blocked.
//! 2. The *snapshot* session sets `ISOLATION LEVEL SNAPSHOT`, begins its transaction and reads
//!    a row of the first table, which starts the snapshot. It holds every transaction that
//!    wrote the tables and committed (all of them committed before the locks were granted),
//!    and none after (none can commit before the fence ends).
//! 3. Still inside the fence, the fence session reads `log_end_lsn` of
//!    `sys.dm_db_log_stats(DB_ID())`, the LSN of the last log record written: `E`. Every
//!    commit of a transaction that wrote the tables before the fence has an LSN below `E`;
//!    every such commit after the fence ends is written after `E`.
//! 4. The fence commits (writers go on).
//!
//! The position is `after_commit(E)`: the CDC reader then delivers exactly the transactions
//! whose commit LSN is above `E`, which for the fenced tables are exactly the ones the
//! snapshot does not hold. A transaction committing concurrently with the backfill either
//! committed before its table lock was granted (in the snapshot, LSN below `E`, not streamed)
//! or waited for the fence and committed after it (not in the snapshot, LSN above `E`,
//! streamed). Writers of the tables wait for the few statements of steps 2-3; a lock timeout
//! or a deadlock (the fence is the victim) fails the take, which can be retried.
//!
//! A resumed backfill catches up by streaming to the new snapshot's `E`; it ends at the
//! first heartbeat at or past `E`. The reader's heartbeats are at the capture job's max LSN,
//! which passes `E` without further changes too: the capture job logs entries in
//! `cdc.lsn_time_mapping` that have no change rows "to record the completion of LSN
//! processing in periods of low or no change activity" (SQL Server documentation).
//!
//! Needs: `ALLOW_SNAPSHOT_ISOLATION ON` for the database (refused with the statement that
//! turns it on), SQL Server 2016 SP2 or later and `VIEW SERVER STATE` (Azure: `VIEW DATABASE
//! STATE`) for `sys.dm_db_log_stats`, and a capture instance capturing every column of every
//! table (what the stream delivers after the handover must update every column copied).
//!
//! # Reading it
//!
//! Every read runs in the one snapshot transaction, one at a time (like MariaDB). Range
//! predicates compare the key columns with parameters cast to the column's type, spelled out
//! as `a > @x OR (a = @x AND b > @y)`, so the server compares with the columns' own types and
//! collations. Only keys whose type has an exact `CAST` without a length are cut into ranges
//! (integers, `date`, `datetime2`, `datetimeoffset`, `uniqueidentifier`); any other key is
//! read as one range. Values are converted as the CDC reader converts them ([`to_value`], with
//! the same select list), so a value copied and the same value streamed are identical.
//!
//! Nothing here has run against a real SQL Server: no server can run on our machines.

use super::position::{CdcPosition, Lsn};
use super::preflight::probe_table;
use super::route::capture_instance;
use super::sql::{MAX_PARAMS, quote_table};
use super::stream::{quote, select_list};
use super::types::{MssqlType, TypeError, to_param, to_value};
use super::{MssqlClient, MssqlError, Param, connect};
use crate::snapshot::{IntegerSpan, KeyRange};
use crate::{Column, Row, TableName, Value};

/// Milliseconds the fence waits for a table lock before the take fails.
pub const FENCE_LOCK_TIMEOUT_MS: u32 = 30_000;

/// Whether the database allows snapshot isolation (`1`: on).
pub const SNAPSHOT_STATE_QUERY: &str =
    "SELECT snapshot_isolation_state FROM sys.databases WHERE database_id = DB_ID()";

/// The LSN of the last record of the database's log.
pub const LOG_END_QUERY: &str = "SELECT log_end_lsn FROM sys.dm_db_log_stats(DB_ID())";

/// The statements that open the fence's transaction.
pub const FENCE_BEGIN: &str = "SET LOCK_TIMEOUT 30000; SET DEADLOCK_PRIORITY LOW; \
     SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; BEGIN TRANSACTION";

/// The statement of the fence that takes `table`'s shared table lock until the fence ends.
pub fn fence_sql(table: &TableName) -> String {
    format!(
        "SELECT TOP (1) 1 FROM {} WITH (TABLOCK, HOLDLOCK)",
        quote_table(table)
    )
}

/// The statements that open the snapshot transaction.
pub const SNAPSHOT_BEGIN: &str = "SET TRANSACTION ISOLATION LEVEL SNAPSHOT; BEGIN TRANSACTION";

/// The statement that starts the snapshot (its first statement touching data).
pub fn start_sql(table: &TableName) -> String {
    format!("SELECT TOP (1) 1 FROM {}", quote_table(table))
}

/// A snapshot could not be taken or read.
#[derive(Debug, thiserror::Error)]
pub enum MssqlSnapshotError {
    /// A statement failed.
    #[error(transparent)]
    Sql(#[from] MssqlError),
    /// A value could not be converted.
    #[error("{table}.{column}: {source}")]
    Type {
        /// Table.
        table: TableName,
        /// Column.
        column: String,
        /// Cause.
        #[source]
        source: TypeError,
    },
    /// The source cannot be snapshotted as it stands; the message says what to do.
    #[error("{0}")]
    Refused(String),
}

impl MssqlSnapshotError {
    /// True when retrying may succeed (a lock timeout or deadlock of the fence).
    pub fn is_transient(&self) -> bool {
        matches!(self, MssqlSnapshotError::Sql(e) if e.is_transient())
    }
}

/// The refusal when the database does not allow snapshot isolation.
pub fn snapshot_off_message(database: &str) -> String {
    format!(
        "SQL Server database {database} does not allow snapshot isolation, which duplex \
         backfill reads in: run ALTER DATABASE {} SET ALLOW_SNAPSHOT_ISOLATION ON (it does not \
         block, but row versions then use tempdb), then run the backfill again",
        quote(database)
    )
}

/// The type of a key column a range can be cut on: one whose `CAST(@p AS <type>)` is exact
/// without a length or precision, so a bound compares exactly as the column's value.
pub fn cut_type(column: &Column) -> Option<&'static str> {
    Some(match column.type_name.to_ascii_lowercase().as_str() {
        "tinyint" => "tinyint",
        "smallint" => "smallint",
        "int" => "int",
        "bigint" => "bigint",
        "date" => "date",
        "datetime2" => "datetime2",
        "datetimeoffset" => "datetimeoffset",
        "uniqueidentifier" => "uniqueidentifier",
        _ => return None,
    })
}

/// A query text and the values its `@Pn` parameters take, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Bound {
    /// Query text.
    pub sql: String,
    /// `(column, value)` per parameter.
    pub values: Vec<(Column, Value)>,
}

/// `key > lo` (`greater`) or `key <= hi` as a row comparison spelled out column by column,
/// with parameters numbered from `first`; `None` when `bound` is empty.
fn compare(
    key: &[Column],
    bound: &[Value],
    greater: bool,
    values: &mut Vec<(Column, Value)>,
) -> String {
    let (strict, last) = if greater { (">", ">") } else { ("<", "<=") };
    let mut out = String::new();
    let n = key.len().min(bound.len());
    for (i, (column, value)) in key.iter().zip(bound).take(n).enumerate() {
        values.push((column.clone(), value.clone()));
        let param = format!(
            "CAST(@P{} AS {})",
            values.len(),
            cut_type(column).unwrap_or("sql_variant")
        );
        let name = quote(&column.name);
        if i + 1 == n {
            out.push_str(&format!("{name} {last} {param}"));
        } else {
            out.push_str(&format!(
                "{name} {strict} {param} OR ({name} = {param} AND ("
            ));
        }
    }
    out.push_str(&"))".repeat(n.saturating_sub(1)));
    format!("({out})")
}

/// The `WHERE` clause of `range` (empty for the whole table) and its parameter values.
pub fn range_where(range: &KeyRange) -> (String, Vec<(Column, Value)>) {
    let mut values = Vec::new();
    let mut parts = Vec::new();
    if let Some(lo) = &range.lo {
        parts.push(compare(&range.columns, lo, true, &mut values));
    }
    if let Some(hi) = &range.hi {
        parts.push(compare(&range.columns, hi, false, &mut values));
    }
    if parts.is_empty() {
        (String::new(), values)
    } else {
        (format!(" WHERE {}", parts.join(" AND ")), values)
    }
}

/// The query reading `columns` of `range` of `table`, in key order.
pub fn rows_query(table: &TableName, columns: &[(String, MssqlType)], range: &KeyRange) -> Bound {
    let (filter, values) = range_where(range);
    let order = if range.columns.is_empty() {
        String::new()
    } else {
        let keys: Vec<String> = range.columns.iter().map(|c| quote(&c.name)).collect();
        format!(" ORDER BY {}", keys.join(", "))
    };
    Bound {
        sql: format!(
            "SELECT {} FROM {}{filter}{order}",
            select_list(columns),
            quote_table(table)
        ),
        values,
    }
}

/// The query giving the `every`-th key of `table` after `after` (`None`: from the start),
/// as text, in key order.
pub fn integer_cut_query(
    table: &TableName,
    column: &str,
    after: Option<i128>,
    every: u64,
) -> String {
    let name = quote(column);
    let filter = after.map_or_else(String::new, |a| format!(" WHERE {name} > {a}"));
    format!(
        "SELECT CAST({name} AS varchar(40)) AS duplex_cut FROM {}{filter} ORDER BY {name} \
         OFFSET {} ROWS FETCH NEXT 1 ROWS ONLY",
        quote_table(table),
        every.max(1) - 1
    )
}

/// The query counting the rows of `table` after `after` (`None`: all of them), as text.
pub fn integer_tail_query(table: &TableName, column: &str, after: Option<i128>) -> String {
    let filter = after.map_or_else(String::new, |a| format!(" WHERE {} > {a}", quote(column)));
    format!(
        "SELECT CAST(COUNT_BIG(*) AS varchar(40)) FROM {}{filter}",
        quote_table(table)
    )
}

/// The query giving every `every`-th key of `table` (key columns `key`), numbered by the
/// server in key order.
pub fn key_cuts_query(table: &TableName, key: &[(String, MssqlType)], every: u64) -> String {
    let names: Vec<String> = key.iter().map(|(n, _)| quote(n)).collect();
    let names = names.join(", ");
    format!(
        "SELECT {} FROM (SELECT {names}, ROW_NUMBER() OVER (ORDER BY {names}) AS duplex_n \
         FROM {}) AS duplex_k WHERE duplex_n % {} = 0 ORDER BY duplex_n",
        select_list(key),
        quote_table(table),
        every.max(1)
    )
}

/// The query counting, for one key (the first `key.len()` parameters), how many of `cuts`
/// cuts lie below it. The cuts are a union with the table's own columns (an empty branch),
/// so they carry the columns' types and collations and the server compares them like keys.
pub fn range_index_query(table: &TableName, key: &[Column], cuts: usize) -> String {
    let names: Vec<String> = key.iter().map(|c| quote(&c.name)).collect();
    let mut next = key.len();
    let mut rows = Vec::with_capacity(cuts);
    for _ in 0..cuts {
        let cells: Vec<String> = key
            .iter()
            .map(|c| {
                next += 1;
                format!("CAST(@P{next} AS {})", cut_type(c).unwrap_or("sql_variant"))
            })
            .collect();
        rows.push(format!("SELECT {}", cells.join(", ")));
    }
    // The key is above the cut `c`: c < key, spelled out column by column.
    let mut above = String::new();
    for (i, (column, name)) in key.iter().zip(&names).enumerate() {
        let param = format!(
            "CAST(@P{} AS {})",
            i + 1,
            cut_type(column).unwrap_or("sql_variant")
        );
        let cut = format!("duplex_c.{name}");
        if i + 1 == key.len() {
            above.push_str(&format!("{cut} < {param}"));
        } else {
            above.push_str(&format!("{cut} < {param} OR ({cut} = {param} AND ("));
        }
    }
    above.push_str(&"))".repeat(key.len().saturating_sub(1)));
    format!(
        "SELECT COUNT_BIG(*) FROM (SELECT TOP (0) {} FROM {} UNION ALL {}) AS duplex_c \
         WHERE {above}",
        names.join(", "),
        quote_table(table),
        rows.join(" UNION ALL ")
    )
}

/// The one snapshot transaction of a backfill from a SQL Server source, or a verify reader's
/// current one.
pub struct MssqlSnapshot {
    pub(super) client: MssqlClient,
    /// How to reach the database again (for a session of its own beside the snapshot's).
    pub(super) url: String,
    pub(super) password: Option<String>,
}

/// `column`'s SQL Server type.
fn type_of(table: &TableName, column: &Column) -> Result<MssqlType, MssqlSnapshotError> {
    MssqlType::from_name(&column.type_name).map_err(|source| MssqlSnapshotError::Type {
        table: table.clone(),
        column: column.name.clone(),
        source,
    })
}

pub(super) fn typed(
    table: &TableName,
    columns: &[Column],
) -> Result<Vec<(String, MssqlType)>, MssqlSnapshotError> {
    columns
        .iter()
        .map(|c| Ok((c.name.clone(), type_of(table, c)?)))
        .collect()
}

impl MssqlSnapshot {
    /// Takes the snapshot of the database `url` names over `tables` and the position it
    /// matches (see the module docs).
    pub async fn take(
        url: &str,
        password: Option<&str>,
        tables: &[TableName],
    ) -> Result<(MssqlSnapshot, CdcPosition), MssqlSnapshotError> {
        let mut tables = tables.to_vec();
        tables.sort();
        tables.dedup();
        let Some(first) = tables.first().cloned() else {
            return Err(MssqlSnapshotError::Refused(
                "a backfill from a SQL Server site needs at least one table".into(),
            ));
        };
        let mut client = connect(url, password).await?;
        let state = one_value(
            &mut client,
            SNAPSHOT_STATE_QUERY,
            &[],
            "reading the snapshot isolation setting",
        )
        .await?;
        if !matches!(state, Some(tiberius::ColumnData::U8(Some(1)))) {
            let database =
                text_value(&mut client, "SELECT DB_NAME()", "reading the database name").await?;
            return Err(MssqlSnapshotError::Refused(snapshot_off_message(
                &database.unwrap_or_default(),
            )));
        }
        // Every table must be captured whole: the stream after the handover must update every
        // column the copy writes.
        for table in &tables {
            let facts = probe_table(&mut client, table).await?.ok_or_else(|| {
                MssqlSnapshotError::Refused(format!("SQL Server table {table} does not exist"))
            })?;
            let instance =
                capture_instance(&facts).map_err(|e| MssqlSnapshotError::Refused(e.to_string()))?;
            if instance.columns.len() != facts.columns.len() {
                return Err(MssqlSnapshotError::Refused(format!(
                    "the capture instance {} of {table} captures {} of its {} columns: the \
                     columns it does not capture would be copied once and never updated; \
                     re-create it with every column (sys.sp_cdc_enable_table without \
                     @captured_column_list)",
                    instance.name,
                    instance.columns.len(),
                    facts.columns.len()
                )));
            }
        }
        let mut fence = connect(url, password).await?;
        run(
            &mut fence,
            FENCE_BEGIN,
            "opening the backfill's table-lock fence",
        )
        .await?;
        for table in &tables {
            run(
                &mut fence,
                &fence_sql(table),
                "locking a table for the backfill's snapshot (writers wait a moment)",
            )
            .await?;
        }
        run(
            &mut client,
            SNAPSHOT_BEGIN,
            "opening the snapshot transaction",
        )
        .await?;
        run(&mut client, &start_sql(&first), "starting the snapshot").await?;
        let lsn = log_end(&mut fence).await?;
        run(
            &mut fence,
            "COMMIT TRANSACTION",
            "ending the backfill's table-lock fence",
        )
        .await?;
        drop(fence);
        let snapshot = MssqlSnapshot {
            client,
            url: url.to_owned(),
            password: password.map(str::to_owned),
        };
        Ok((snapshot, CdcPosition::after_commit(lsn)))
    }

    /// A session of its own in a fresh snapshot transaction, at no particular position: for
    /// classifying keys into ranges ([`MssqlSnapshot::range_indexes`]), which compares values
    /// and reads no rows.
    pub async fn open_reader(
        url: &str,
        password: Option<&str>,
    ) -> Result<MssqlSnapshot, MssqlSnapshotError> {
        let mut client = connect(url, password).await?;
        run(
            &mut client,
            SNAPSHOT_BEGIN,
            "opening a snapshot transaction",
        )
        .await?;
        Ok(MssqlSnapshot {
            client,
            url: url.to_owned(),
            password: password.map(str::to_owned),
        })
    }

    /// Whether ranges can be cut on `column` (see the module docs).
    pub fn orderable(column: &Column) -> bool {
        cut_type(column).is_some()
    }

    /// The number of rows of `table`.
    pub async fn count(&mut self, table: &TableName) -> Result<u64, MssqlSnapshotError> {
        let sql = format!(
            "SELECT CAST(COUNT_BIG(*) AS varchar(40)) FROM {}",
            quote_table(table)
        );
        let text = text_value(&mut self.client, &sql, "counting rows").await?;
        number(table, text.as_deref())
    }

    /// See [`crate::SnapshotRead::boundaries`].
    pub async fn boundaries(
        &mut self,
        table: &TableName,
        column: &str,
        every: u64,
    ) -> Result<(Vec<i128>, u64), MssqlSnapshotError> {
        let every = every.max(1);
        let mut cuts: Vec<i128> = Vec::new();
        loop {
            let sql = integer_cut_query(table, column, cuts.last().copied(), every);
            match text_value(&mut self.client, &sql, "cutting a table into ranges").await? {
                Some(text) => cuts.push(text.trim().parse().map_err(|_| {
                    MssqlSnapshotError::Refused(format!(
                        "{table}.{column}: the key {text} is not an integer"
                    ))
                })?),
                None => break,
            }
        }
        let sql = integer_tail_query(table, column, cuts.last().copied());
        let tail = number(
            table,
            text_value(&mut self.client, &sql, "counting rows")
                .await?
                .as_deref(),
        )?;
        Ok((cuts.clone(), cuts.len() as u64 * every + tail))
    }

    /// See [`crate::SnapshotRead::key_boundaries`].
    pub async fn key_boundaries(
        &mut self,
        table: &TableName,
        key: &[Column],
        every: u64,
    ) -> Result<Vec<Vec<Value>>, MssqlSnapshotError> {
        let key = typed(table, key)?;
        let rows = self
            .query(
                &key_cuts_query(table, &key, every),
                Vec::new(),
                "cutting a table into ranges",
            )
            .await?;
        rows.into_iter()
            .map(|row| decode(table, &key, row))
            .collect()
    }

    /// See [`crate::SnapshotRead::range_indexes`].
    pub async fn range_indexes(
        &mut self,
        table: &TableName,
        key: &[Column],
        cuts: &[Vec<Value>],
        keys: &[Vec<Value>],
    ) -> Result<Vec<u64>, MssqlSnapshotError> {
        let width = key.len().max(1);
        let per_query = (MAX_PARAMS / width).saturating_sub(1).max(1);
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let mut below = 0;
            for chunk in cuts.chunks(per_query) {
                let mut values: Vec<(Column, Value)> =
                    key.iter().cloned().zip(k.iter().cloned()).collect();
                for cut in chunk {
                    values.extend(key.iter().cloned().zip(cut.iter().cloned()));
                }
                let sql = range_index_query(table, key, chunk.len());
                let rows = self
                    .query(&sql, bind(table, values)?, "classifying keys into ranges")
                    .await?;
                below += match rows.into_iter().next().and_then(|r| r.into_iter().next()) {
                    Some(tiberius::ColumnData::I64(Some(n))) => n as u64,
                    other => {
                        return Err(MssqlSnapshotError::Refused(format!(
                            "{table}: classifying a key gave {other:?} instead of a count"
                        )));
                    }
                };
            }
            out.push(below);
        }
        Ok(out)
    }

    /// See [`crate::SnapshotRead::rows`].
    pub async fn rows(
        &mut self,
        table: &TableName,
        columns: &[Column],
        range: &KeyRange,
    ) -> Result<Vec<Row>, MssqlSnapshotError> {
        let typed_columns = typed(table, columns)?;
        let query = rows_query(table, &typed_columns, range);
        let params = bind(table, query.values)?;
        let rows = self
            .query(&query.sql, params, "reading a range of rows")
            .await?;
        rows.into_iter()
            .map(|data| decode_row(table, &typed_columns, data))
            .collect()
    }

    /// See [`crate::SnapshotRead::integer_span`]: counted exactly (the snapshot's state).
    pub async fn integer_span(
        &mut self,
        table: &TableName,
        column: &str,
    ) -> Result<Option<IntegerSpan>, MssqlSnapshotError> {
        let name = quote(column);
        let sql = format!(
            "SELECT CAST(MIN({name}) AS varchar(40)), CAST(MAX({name}) AS varchar(40)), \
             CAST(COUNT_BIG(*) AS varchar(40)) FROM {}",
            quote_table(table)
        );
        let rows = self.query(&sql, Vec::new(), "reading a key's span").await?;
        let cells: Vec<Option<String>> = rows
            .into_iter()
            .next()
            .map(|r| {
                r.into_iter()
                    .map(|c| match c {
                        tiberius::ColumnData::String(s) => s.map(|s| s.into_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let parse = |i: usize| {
            cells
                .get(i)
                .cloned()
                .flatten()
                .and_then(|t| t.trim().parse::<i128>().ok())
        };
        Ok(match (parse(0), parse(1), parse(2)) {
            (Some(min), Some(max), Some(rows)) => Some(IntegerSpan {
                min,
                max,
                rows: rows as u64,
            }),
            _ => None,
        })
    }

    /// Ends the snapshot transaction and closes the session.
    pub async fn close(mut self) {
        if let Err(error) = run(
            &mut self.client,
            "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION",
            "ending the snapshot",
        )
        .await
        {
            tracing::debug!(%error, "ending a SQL Server snapshot");
        }
    }

    pub(super) async fn query(
        &mut self,
        sql: &str,
        params: Vec<Param>,
        doing: &'static str,
    ) -> Result<Vec<tiberius::Row>, MssqlSnapshotError> {
        let mut query = tiberius::Query::new(sql.to_owned());
        for param in params {
            query.bind(param);
        }
        Ok(query
            .query(&mut self.client)
            .await
            .map_err(MssqlError::query(doing))?
            .into_first_result()
            .await
            .map_err(MssqlError::query(doing))?)
    }
}

/// The parameters of `values`, each in its column's type.
pub(super) fn bind(
    table: &TableName,
    values: Vec<(Column, Value)>,
) -> Result<Vec<Param>, MssqlSnapshotError> {
    values
        .into_iter()
        .map(|(column, value)| {
            let ty = type_of(table, &column)?;
            to_param(ty, &value)
                .map(Param)
                .map_err(|source| MssqlSnapshotError::Type {
                    table: table.clone(),
                    column: column.name.clone(),
                    source,
                })
        })
        .collect()
}

/// One row of `columns` as a canonical row.
pub(super) fn decode_row(
    table: &TableName,
    columns: &[(String, MssqlType)],
    data: tiberius::Row,
) -> Result<Row, MssqlSnapshotError> {
    let values = decode(table, columns, data)?;
    let mut row = Row::with_capacity(values.len());
    for ((name, _), value) in columns.iter().zip(values) {
        row.push(name.as_str(), value);
    }
    Ok(row)
}

/// The LSN of the last record of the database's log (`sys.dm_db_log_stats`).
pub(super) async fn log_end(client: &mut MssqlClient) -> Result<Lsn, MssqlSnapshotError> {
    let end = text_value(
        client,
        LOG_END_QUERY,
        "reading the log end (sys.dm_db_log_stats needs SQL Server 2016 SP2 or later and VIEW \
         SERVER STATE)",
    )
    .await?
    .unwrap_or_default();
    end.trim().parse().map_err(|e: super::LsnError| {
        MssqlSnapshotError::Refused(format!(
            "sys.dm_db_log_stats gave a log end duplex cannot read: {e}"
        ))
    })
}

/// The canonical values of one row of `columns`.
pub(super) fn decode(
    table: &TableName,
    columns: &[(String, MssqlType)],
    row: tiberius::Row,
) -> Result<Vec<Value>, MssqlSnapshotError> {
    columns
        .iter()
        .zip(row)
        .map(|((name, ty), data)| {
            to_value(*ty, data).map_err(|source| MssqlSnapshotError::Type {
                table: table.clone(),
                column: name.clone(),
                source,
            })
        })
        .collect()
}

fn number(table: &TableName, text: Option<&str>) -> Result<u64, MssqlSnapshotError> {
    let text = text.unwrap_or("0");
    text.trim().parse().map_err(|_| {
        MssqlSnapshotError::Refused(format!("{table}: the row count {text} is not a number"))
    })
}

pub(super) async fn run(
    client: &mut MssqlClient,
    sql: &str,
    doing: &'static str,
) -> Result<(), MssqlError> {
    client
        .simple_query(sql)
        .await
        .map_err(MssqlError::query(doing))?
        .into_results()
        .await
        .map_err(MssqlError::query(doing))?;
    Ok(())
}

async fn one_value(
    client: &mut MssqlClient,
    sql: &str,
    params: &[&dyn tiberius::ToSql],
    doing: &'static str,
) -> Result<Option<tiberius::ColumnData<'static>>, MssqlError> {
    let row = client
        .query(sql, params)
        .await
        .map_err(MssqlError::query(doing))?
        .into_row()
        .await
        .map_err(MssqlError::query(doing))?;
    Ok(row.and_then(|r| r.into_iter().next()))
}

pub(super) async fn text_value(
    client: &mut MssqlClient,
    sql: &str,
    doing: &'static str,
) -> Result<Option<String>, MssqlError> {
    Ok(match one_value(client, sql, &[], doing).await? {
        Some(tiberius::ColumnData::String(s)) => s.map(|s| s.into_owned()),
        _ => None,
    })
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
