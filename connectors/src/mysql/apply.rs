//! The MySQL/MariaDB applier: writes source transactions into MySQL or MariaDB tables, exactly
//! once (see [`crate::apply`] for the protocol and why it is exactly once).
//!
//! # Session
//!
//! The applying connection runs with `time_zone = '+00:00'` (so `TimestampTz` values, written
//! as UTC `DATETIME(6)` values, mean the same instant in `TIMESTAMP` columns), a strict
//! `sql_mode` (out-of-range values, bad dates and truncation are errors, never warnings; `0`
//! in an `AUTO_INCREMENT` column is stored as 0, not replaced), `utf8mb4`, and the
//! `CLIENT_FOUND_ROWS` flag (an UPDATE reports the rows it matched, so an update that changes
//! nothing is told apart from one that finds no row). On MariaDB it also sets
//! `skip_replication = 1`: every binlog event duplex writes carries the skip-replication flag
//! (0x8000), which is how the binlog reader recognises duplex's own writes (echoes). MySQL
//! has no such flag; there the upsert of `duplex.positions` in the same transaction marks
//! it.
//!
//! Target transactions are opened and ended with plain `START TRANSACTION` / `COMMIT` /
//! `ROLLBACK` statements on the applier's connection (not mysql_async's borrowed
//! `Transaction`), because the target transaction of a large source transaction stays open
//! across calls (see [`crate::apply`]). An error, or a call dropped halfway, is followed by a
//! `ROLLBACK` (or, after a transient error, a new connection) before anything else runs.
//!
//! Apply transactions run at READ COMMITTED: InnoDB then takes no gap locks for the
//! `SELECT ... FOR UPDATE` of a source's first position, so appliers of different sources
//! writing to one server do not deadlock on `duplex.positions` (two appliers of the *same*
//! source still exclude each other: the second one's insert of the position row fails). Row
//! binlogs, which duplex needs on every source anyway, work at that level; a target whose
//! `binlog_format` is STATEMENT would refuse the writes.
//!
//! # Parameters
//!
//! Values go through the binary protocol of prepared statements as [`mysql_async::Value`]s
//! chosen for the target column: integers as `Int`/`UInt` after a range check for the
//! column's width and sign, `DECIMAL` as its exact text (after checking it is finite, not
//! negative for `UNSIGNED`, and would not be rounded to the column's scale), `FLOAT` as a
//! 32-bit float (refused unless exact) and `DOUBLE` as a 64-bit one (NaN and ±Infinity are
//! refused: MySQL cannot store them), text, JSON and UUIDs as UTF-8 bytes, binary data as
//! bytes, dates and datetimes as `Date`, and `Time` (signed microseconds) as a `TIME` of up
//! to ±838:59:59.999999.
//!
//! # Statements
//!
//! Statements are prepared once per (table, operation, column set, rows per statement): the
//! connection's statement cache (512 statements) keys them by SQL text. Runs of
//! inserts into one table with the same columns become multi-row INSERTs of 64, 32, ..., 1
//! rows of at most about 4 MB each (below the default `max_allowed_packet` of 16 MB).
//!
//! # Conditional writes
//!
//! A conditional applier ([`ApplyOptions::conditional`]) writes one statement per event and
//! reads its row count (rows *matched*, thanks to `CLIENT_FOUND_ROWS`): 0 means skipped.
//!
//! - An insert is a plain single-row INSERT; a duplicate-key error (1062) on it is a skip when
//!   a row with the insert's key exists. InnoDB rolls back only the failing statement on a
//!   duplicate key, so the target transaction goes on. Not `INSERT IGNORE` (it would turn
//!   strict mode's value errors into warnings), and not `ON DUPLICATE KEY UPDATE k = k`: with
//!   `CLIENT_FOUND_ROWS` a duplicate left unchanged reports 1 row, exactly like an insert.
//! - An update or delete adds `AND <column> <=> <expected>` per expected value to its key
//!   filter, the value bound exactly as a write binds it. Where the server's own comparison
//!   would be looser than "the same stored value", the comparison is made exact: text
//!   (`CHAR`, `VARCHAR`, `TEXT`, `ENUM`, `SET`, MariaDB's JSON) compares the utf8mb4 bytes
//!   (`CAST(CONVERT(c USING utf8mb4) AS BINARY)`), since collations are usually case- and
//!   trailing-space-insensitive; `DECIMAL` compares with the bound text cast to the column's
//!   own `DECIMAL(p,s)` (MySQL compares a string with a decimal as doubles; MariaDB 10.11
//!   compares them as decimals); `BINARY(n)` with the bound bytes cast to `BINARY(n)` (padded
//!   with 0x00 as stored); MySQL's JSON type with `CAST(? AS JSON)` (JSON equality). Floats
//!   are bound as 32- or 64-bit floats and compare exactly.
//!
//! # Bookkeeping
//!
//! `duplex.positions` lives in a database `duplex`, shared by every database on the server:
//! source site names must be unique per target server.

use std::collections::HashMap;

use chrono::{Datelike, NaiveDate, NaiveDateTime, Timelike};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Params};

use crate::apply::{
    Applier, ApplyError, ApplyOptions, OpenParts, PartState, SkippedWrite, TableRoute,
    check_next_part, declared_scale, expected_values, final_of, fresh, interrupted, key_value,
    malformed, open_parts, parse_position, position_text, recorded_before, refuse_key_change,
    skipped_write, sources, target_key_value,
};
use crate::{ChangeEvent, Column, Op, Position, TableName, Transaction, TransactionPart, Value};

use super::{MysqlError, describe_table, quote_ident};

/// Rows per multi-row INSERT, largest first; every run is split into these sizes.
const INSERT_CHUNKS: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];
/// Rough upper bound on the parameter bytes of one multi-row INSERT.
const INSERT_BYTES: usize = 4 << 20;
/// Prepared statements the connection keeps.
const STATEMENT_CACHE: usize = 512;
/// The applying session's `sql_mode`.
const SQL_MODE: &str = "STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,\
                        ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO";
/// MySQL's error code for a duplicate key (`ER_DUP_ENTRY`).
const DUPLICATE_KEY: u16 = 1062;
/// Largest MySQL `TIME` magnitude: 838:59:59.999999.
const TIME_MAX_MICROS: i64 = (838 * 3600 + 59 * 60 + 59) * 1_000_000 + 999_999;

/// The bookkeeping database and table, as the applier creates them on first use (a DBA who
/// does not grant duplex CREATE runs this beforehand); two statements.
pub const POSITIONS_DDL: &str = "CREATE DATABASE IF NOT EXISTS duplex CHARACTER SET utf8mb4 COLLATE utf8mb4_bin; \
     CREATE TABLE IF NOT EXISTS duplex.positions ( \
         source VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY, \
         position TEXT NOT NULL, \
         applied_at DATETIME(6) NOT NULL \
     ) ENGINE = InnoDB";

/// Writes source transactions into a MySQL or MariaDB server; see [`crate::apply`].
pub struct MysqlApplier {
    opts: Opts,
    conn: Option<Conn>,
    mariadb: bool,
    routes: HashMap<TableName, MyRoute>,
    options: ApplyOptions,
    /// Where the applier is in a large transaction.
    parts: PartState,
    /// Whether a target transaction is open on `conn` (START TRANSACTION sent, no
    /// COMMIT/ROLLBACK yet).
    in_transaction: bool,
    /// Conditional writes skipped by committed target transactions, not yet taken.
    skipped: Vec<SkippedWrite>,
    /// Conditional writes skipped in the open target transaction.
    skipped_open: Vec<SkippedWrite>,
}

/// A route resolved against the target table's schema.
struct MyRoute {
    target: TableName,
    quoted: String,
    columns: Vec<MyColumn>,
    /// Indexes into `columns` of the key columns.
    key: Vec<usize>,
}

/// One written column.
struct MyColumn {
    source: String,
    target: String,
    quoted: String,
    declared: String,
    kind: MyKind,
}

/// How values of a target column are bound.
#[derive(Debug, Clone, Copy, PartialEq)]
enum MyKind {
    /// Integer types with their range.
    Int {
        min: i128,
        max: i128,
    },
    /// `DECIMAL(p,s)`.
    Decimal {
        scale: Option<usize>,
        unsigned: bool,
    },
    Float,
    Double,
    Text,
    Bytes,
    Uuid,
    Date,
    Time,
    DateTime,
}

impl MyKind {
    fn of(column: &Column) -> Option<MyKind> {
        let int = |bits: u32, unsigned: bool| {
            let (min, max) = if unsigned {
                (0, (1i128 << bits) - 1)
            } else {
                (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
            };
            MyKind::Int { min, max }
        };
        Some(match column.type_name.as_str() {
            "tinyint" => int(8, false),
            "tinyint unsigned" => int(8, true),
            "smallint" => int(16, false),
            "smallint unsigned" => int(16, true),
            "mediumint" => int(24, false),
            "mediumint unsigned" => int(24, true),
            "int" => int(32, false),
            "int unsigned" => int(32, true),
            "bigint" => int(64, false),
            "bigint unsigned" => int(64, true),
            "year" => MyKind::Int { min: 0, max: 2155 },
            "decimal" | "decimal unsigned" => MyKind::Decimal {
                scale: declared_scale(&column.declared),
                unsigned: column.type_name.ends_with("unsigned"),
            },
            "float" | "float unsigned" => MyKind::Float,
            "double" | "double unsigned" => MyKind::Double,
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "json"
            | "enum" | "set" => MyKind::Text,
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
                MyKind::Bytes
            }
            "uuid" => MyKind::Uuid,
            "date" => MyKind::Date,
            "time" => MyKind::Time,
            "datetime" | "timestamp" => MyKind::DateTime,
            _ => return None,
        })
    }
}

impl MysqlApplier {
    /// Connects to the target, sets up the applying session (see the module docs), reads the
    /// target tables' schemas, checks the routes against them and creates `duplex.positions`
    /// if it is missing. `password`, when given, overrides any password in the URL.
    pub async fn connect(
        url: &str,
        password: Option<&str>,
        routes: Vec<TableRoute>,
        options: ApplyOptions,
    ) -> Result<MysqlApplier, ApplyError> {
        options.validate()?;
        let opts = Opts::from_url(url).map_err(MysqlError::Url)?;
        let mut builder = OptsBuilder::from_opts(opts)
            .client_found_rows(true)
            .stmt_cache_size(STATEMENT_CACHE);
        if let Some(password) = password {
            builder = builder.pass(Some(password));
        }
        let opts = Opts::from(builder);
        let (mut conn, mariadb) = open(&opts).await?;
        ensure_positions_table(&mut conn).await?;
        let mut resolved = HashMap::new();
        for route in routes {
            let info = describe_table(&mut conn, &route.target).await?;
            let source = route.source.clone();
            resolved.insert(source, resolve(route, info.map(|i| i.schema.columns))?);
        }
        Ok(MysqlApplier {
            opts,
            conn: Some(conn),
            mariadb,
            routes: resolved,
            options,
            parts: PartState::Idle,
            in_transaction: false,
            skipped: Vec::new(),
            skipped_open: Vec::new(),
        })
    }

    /// The writes a conditional applier skipped in the applies committed since the last call,
    /// in write order; a failed (rolled-back) apply leaves none.
    pub fn take_skipped(&mut self) -> Vec<SkippedWrite> {
        std::mem::take(&mut self.skipped)
    }

    /// Whether the target is MariaDB (and duplex's writes carry the skip-replication flag).
    pub fn is_mariadb(&self) -> bool {
        self.mariadb
    }

    /// The connection, reconnecting (and setting the session up again) after a failure.
    async fn conn(&mut self) -> Result<&mut Conn, ApplyError> {
        if self.conn.is_none() {
            let (conn, mariadb) = open(&self.opts).await?;
            self.mariadb = mariadb;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }
}

/// Connects and sets up the applying session; reports whether the server is MariaDB.
async fn open(opts: &Opts) -> Result<(Conn, bool), ApplyError> {
    let target = format!(
        "{}@{}:{}/{}",
        opts.user().unwrap_or("?"),
        opts.ip_or_hostname(),
        opts.tcp_port(),
        opts.db_name().unwrap_or("")
    );
    let mut conn = Conn::new(opts.clone())
        .await
        .map_err(|source| MysqlError::Connect { target, source })?;
    let version: String = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(MysqlError::query("reading the server version"))?
        .unwrap_or_default();
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    conn.query_drop(format!(
        "SET NAMES utf8mb4, SESSION time_zone = '+00:00', SESSION sql_mode = '{SQL_MODE}'"
    ))
    .await
    .map_err(MysqlError::query("setting up the applying session"))?;
    if mariadb {
        conn.query_drop("SET SESSION skip_replication = 1")
            .await
            .map_err(MysqlError::query(
                "setting skip_replication on the applying session",
            ))?;
    }
    Ok((conn, mariadb))
}

/// Creates database `duplex` and `duplex.positions` unless they exist.
async fn ensure_positions_table(conn: &mut Conn) -> Result<(), ApplyError> {
    let exists: Option<u8> = conn
        .query_first(
            "SELECT 1 FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = 'duplex' AND TABLE_NAME = 'positions'",
        )
        .await
        .map_err(MysqlError::query("looking for duplex.positions"))?;
    if exists.is_some() {
        return Ok(());
    }
    for statement in POSITIONS_DDL.split(';') {
        conn.query_drop(statement)
            .await
            .map_err(MysqlError::query("creating duplex.positions"))?;
    }
    Ok(())
}

/// Checks a route against the target table's columns.
fn resolve(route: TableRoute, columns: Option<Vec<Column>>) -> Result<MyRoute, ApplyError> {
    let fail = |reason: String| ApplyError::Route {
        source_table: route.source.clone(),
        target: route.target.clone(),
        reason,
    };
    let Some(table_columns) = columns else {
        return Err(fail("the target table does not exist".into()));
    };
    let mut columns = Vec::with_capacity(route.columns.len());
    for (source, target) in &route.columns {
        let Some(column) = table_columns.iter().find(|c| &c.name == target) else {
            return Err(fail(format!("the target table has no column {target:?}")));
        };
        let Some(kind) = MyKind::of(column) else {
            return Err(fail(format!(
                "column {target:?} has type {}, which duplex does not write: leave it out of \
                 the mapping",
                column.declared
            )));
        };
        columns.push(MyColumn {
            source: source.clone(),
            target: target.clone(),
            quoted: quote_ident(target),
            declared: column.declared.clone(),
            kind,
        });
    }
    if route.key.is_empty() {
        return Err(fail("the route has no key columns".into()));
    }
    let mut key = Vec::with_capacity(route.key.len());
    for k in &route.key {
        match columns.iter().position(|c| &c.source == k) {
            Some(i) => key.push(i),
            None => return Err(fail(format!("key column {k:?} is not in the column list"))),
        }
    }
    Ok(MyRoute {
        quoted: format!(
            "{}.{}",
            quote_ident(&route.target.schema),
            quote_ident(&route.target.name)
        ),
        target: route.target,
        columns,
        key,
    })
}

impl Applier for MysqlApplier {
    async fn apply(&mut self, batch: &[Transaction]) -> Result<(), ApplyError> {
        if batch.is_empty() && matches!(self.parts, PartState::Idle) {
            return Ok(());
        }
        let result = match std::mem::replace(&mut self.parts, PartState::Interrupted) {
            PartState::Idle => self.apply_batch(batch).await,
            PartState::Open(open) => self.finish_parts(&open, batch).await,
            PartState::Interrupted => Err(interrupted()),
        };
        self.end_call(result).await
    }

    async fn apply_part(&mut self, part: &TransactionPart) -> Result<(), ApplyError> {
        let result = match std::mem::replace(&mut self.parts, PartState::Interrupted) {
            PartState::Idle => self.first_part(part).await,
            PartState::Open(open) => match check_next_part(&open, part) {
                Ok(()) => self.write_part(open, part).await,
                Err(e) => Err(e),
            },
            PartState::Interrupted => Err(interrupted()),
        };
        self.end_call(result).await
    }

    async fn position(&mut self, source: &str) -> Result<Option<Position>, ApplyError> {
        let conn = self.conn().await?;
        let text: Option<String> = conn
            .exec_first(
                "SELECT position FROM duplex.positions WHERE source = ?",
                (source,),
            )
            .await
            .map_err(MysqlError::query("reading duplex.positions"))?;
        text.map(|text| parse_position(source, text)).transpose()
    }
}

impl MysqlApplier {
    /// After every call: on error the target transaction is rolled back (a transient error
    /// also drops the connection, which rolls back on the server) and no large transaction is
    /// open any more.
    async fn end_call<T>(&mut self, result: Result<T, ApplyError>) -> Result<T, ApplyError> {
        if let Err(e) = &result {
            self.parts = PartState::Idle;
            self.skipped_open.clear();
            if e.is_transient() {
                self.conn = None;
                self.in_transaction = false;
            } else {
                self.rollback_open().await;
            }
        }
        result
    }

    /// Rolls back a target transaction left open (by an error or a dropped call); drops the
    /// connection when even that fails.
    async fn rollback_open(&mut self) {
        self.skipped_open.clear();
        if !self.in_transaction {
            return;
        }
        self.in_transaction = false;
        if let Some(conn) = self.conn.as_mut()
            && let Err(error) = conn.query_drop("ROLLBACK").await
        {
            tracing::debug!(%error, "rolling back a failed apply failed too");
            self.conn = None;
        }
    }

    /// Opens a target transaction at READ COMMITTED (rolling back one a dropped call left
    /// open).
    async fn begin(&mut self) -> Result<(), ApplyError> {
        self.rollback_open().await;
        let conn = self.conn().await?;
        conn.query_drop("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(MysqlError::query("starting the target transaction"))?;
        self.in_transaction = true;
        let conn = self.conn().await?;
        conn.query_drop("START TRANSACTION")
            .await
            .map_err(MysqlError::query("starting the target transaction"))?;
        Ok(())
    }

    /// Ends the open transaction with `COMMIT` or `ROLLBACK`.
    async fn end(&mut self, commit: bool) -> Result<(), ApplyError> {
        let (sql, doing) = if commit {
            ("COMMIT", "committing the target transaction")
        } else {
            ("ROLLBACK", "ending the target transaction")
        };
        let conn = self.conn().await?;
        conn.query_drop(sql)
            .await
            .map_err(MysqlError::query(doing))?;
        self.in_transaction = false;
        if commit {
            self.skipped.append(&mut self.skipped_open);
        } else {
            self.skipped_open.clear();
        }
        Ok(())
    }

    /// The recorded position of `site`, read under a row lock inside the open transaction.
    async fn recorded_for_update(&mut self, site: &str) -> Result<Option<Position>, ApplyError> {
        let conn = self.conn().await?;
        let text: Option<String> = conn
            .exec_first(
                "SELECT position FROM duplex.positions WHERE source = ? FOR UPDATE",
                (site,),
            )
            .await
            .map_err(MysqlError::query("reading duplex.positions"))?;
        text.map(|t| parse_position(site, t)).transpose()
    }

    /// Records `position` of `site` in the open transaction. The first position of a source
    /// is inserted, never upserted: of two appliers racing on a new source, the second fails
    /// here instead of applying again.
    async fn record(
        &mut self,
        site: &str,
        position: &Position,
        update: bool,
    ) -> Result<(), ApplyError> {
        let sql = if update {
            "UPDATE duplex.positions SET position = ?, applied_at = UTC_TIMESTAMP(6) \
             WHERE source = ?"
        } else {
            "INSERT INTO duplex.positions (position, source, applied_at) \
             VALUES (?, ?, UTC_TIMESTAMP(6))"
        };
        let conn = self.conn().await?;
        conn.exec_drop(sql, (position_text(position), site))
            .await
            .map_err(MysqlError::query(
                "recording the position in duplex.positions",
            ))?;
        Ok(())
    }

    async fn write_events(&mut self, events: &[&ChangeEvent]) -> Result<(), ApplyError> {
        self.conn().await?;
        let MysqlApplier {
            conn,
            routes,
            options,
            ..
        } = self;
        let mut writer = Writer {
            conn: conn.as_mut().expect("connected above"),
            routes,
            options: *options,
        };
        if options.conditional {
            let skipped = writer.write_conditional(events).await?;
            self.skipped_open.extend(skipped);
            return Ok(());
        }
        writer.write_all(events).await
    }

    /// A batch of whole transactions in one target transaction.
    async fn apply_batch(&mut self, batch: &[Transaction]) -> Result<(), ApplyError> {
        self.parts = PartState::Idle;
        self.begin().await?;
        let mut recorded = Vec::new();
        for site in sources(batch) {
            recorded.push((site, self.recorded_for_update(site).await?));
        }
        let fresh = fresh(batch, &recorded)?;
        if fresh.transactions.is_empty() {
            return self.end(false).await;
        }
        let events: Vec<&ChangeEvent> = fresh
            .transactions
            .iter()
            .flat_map(|t| t.events.iter())
            .collect();
        self.write_events(&events).await?;
        for (site, position) in fresh.advanced {
            self.record(site, position, recorded_before(&recorded, site))
                .await?;
        }
        self.end(true).await
    }

    /// The first part of a large transaction: opens the target transaction and decides.
    async fn first_part(&mut self, part: &TransactionPart) -> Result<(), ApplyError> {
        self.begin().await?;
        let recorded = self.recorded_for_update(&part.source).await?;
        let open = open_parts(part, recorded)?;
        self.write_part(open, part).await
    }

    /// Writes a part into the open transaction (unless the target holds the transaction).
    async fn write_part(
        &mut self,
        open: OpenParts,
        part: &TransactionPart,
    ) -> Result<(), ApplyError> {
        if !open.held {
            let events: Vec<&ChangeEvent> = part.events.iter().collect();
            self.write_events(&events).await?;
        }
        self.parts = PartState::Open(open);
        Ok(())
    }

    /// The final transaction of a large one: writes its events, records its position and
    /// commits (or rolls everything back when the target already held it).
    async fn finish_parts(
        &mut self,
        open: &OpenParts,
        batch: &[Transaction],
    ) -> Result<(), ApplyError> {
        let last = final_of(open, batch)?;
        if open.held {
            self.end(false).await?;
        } else {
            let events: Vec<&ChangeEvent> = last.events.iter().collect();
            self.write_events(&events).await?;
            self.record(&last.source, &last.position, open.recorded)
                .await?;
            self.end(true).await?;
        }
        self.parts = PartState::Idle;
        Ok(())
    }
}

/// Writes the events of one batch inside its target transaction.
struct Writer<'a> {
    conn: &'a mut Conn,
    routes: &'a HashMap<TableName, MyRoute>,
    options: ApplyOptions,
}

impl Writer<'_> {
    async fn write_all(&mut self, events: &[&ChangeEvent]) -> Result<(), ApplyError> {
        let mut i = 0;
        while i < events.len() {
            let event = events[i];
            let route = self
                .routes
                .get(&event.table)
                .ok_or_else(|| ApplyError::NoRoute(event.table.clone()))?;
            match event.op {
                Op::Insert => {
                    let columns = insert_columns(route, event)?;
                    let mut end = i + 1;
                    while end < events.len()
                        && events[end].op == Op::Insert
                        && events[end].table == event.table
                        && insert_columns(route, events[end])? == columns
                    {
                        end += 1;
                    }
                    self.insert_run(route, &columns, &events[i..end]).await?;
                    i = end;
                }
                Op::Update => {
                    self.update(route, event).await?;
                    i += 1;
                }
                Op::Delete => {
                    self.delete(route, event).await?;
                    i += 1;
                }
            }
        }
        Ok(())
    }

    /// Runs a statement (prepared once and cached by the connection); returns the rows it
    /// matched.
    async fn execute(
        &mut self,
        route: &MyRoute,
        op: Op,
        sql: String,
        params: Vec<mysql_async::Value>,
    ) -> Result<u64, ApplyError> {
        self.conn
            .exec_drop(sql, Params::Positional(params))
            .await
            .map_err(|source| ApplyError::MysqlWrite {
                table: route.target.clone(),
                op,
                source: Box::new(MysqlError::Query {
                    doing: "writing rows",
                    source,
                }),
            })?;
        Ok(self.conn.affected_rows())
    }

    async fn insert_run(
        &mut self,
        route: &MyRoute,
        columns: &[usize],
        events: &[&ChangeEvent],
    ) -> Result<(), ApplyError> {
        let mut rows = Vec::with_capacity(events.len());
        for event in events {
            let after = event.after.as_ref().expect("insert_columns checked it");
            let mut params = Vec::with_capacity(columns.len());
            for &c in columns {
                let column = &route.columns[c];
                let value = after
                    .get(&column.source)
                    .expect("insert_columns checked it");
                params.push(to_param(value, column, &route.target)?);
            }
            rows.push(params);
        }
        let mut rest = rows;
        while !rest.is_empty() {
            let n = chunk_len(&rest);
            let tail = rest.split_off(n);
            let sql = insert_sql(route, columns, n, self.options.upsert);
            let params: Vec<mysql_async::Value> = rest.into_iter().flatten().collect();
            self.execute(route, Op::Insert, sql, params).await?;
            rest = tail;
        }
        Ok(())
    }

    async fn update(&mut self, route: &MyRoute, event: &ChangeEvent) -> Result<(), ApplyError> {
        let mut params = Vec::new();
        let (set, filter) = update_parts(route, event, &mut params)?;
        let sql = format!("UPDATE {} SET {set} WHERE {filter}", route.quoted);
        let n = self.execute(route, Op::Update, sql, params).await?;
        expect_one(route, event, n)
    }

    /// Writes events conditionally (see the module docs), one statement each; returns the
    /// skipped ones, in order.
    async fn write_conditional(
        &mut self,
        events: &[&ChangeEvent],
    ) -> Result<Vec<SkippedWrite>, ApplyError> {
        let mut skipped = Vec::new();
        for event in events {
            let route = self
                .routes
                .get(&event.table)
                .ok_or_else(|| ApplyError::NoRoute(event.table.clone()))?;
            let written = match event.op {
                Op::Insert => self.insert_unless_present(route, event).await?,
                Op::Update | Op::Delete => {
                    let mut params = Vec::new();
                    let sql = if event.op == Op::Update {
                        let key = route.key.iter().map(|&k| route.columns[k].source.as_str());
                        refuse_key_change(event, key)?;
                        let (set, filter) = update_parts(route, event, &mut params)?;
                        let expected = expected_filter(route, event, &mut params)?;
                        format!("UPDATE {} SET {set} WHERE {filter}{expected}", route.quoted)
                    } else {
                        let filter = key_filter(route, event, &mut params)?;
                        let expected = expected_filter(route, event, &mut params)?;
                        format!("DELETE FROM {} WHERE {filter}{expected}", route.quoted)
                    };
                    let n = self.execute(route, event.op, sql, params).await?;
                    if n != 0 {
                        expect_one(route, event, n)?;
                    }
                    n != 0
                }
            };
            if !written {
                let key = route.key.iter().map(|&k| route.columns[k].source.as_str());
                skipped.push(skipped_write(event, key));
            }
        }
        Ok(skipped)
    }

    /// Inserts one row unless a row with its key exists; returns whether it was written. A
    /// duplicate-key error rolls back only this statement (InnoDB); it is a skip when a row
    /// with the insert's key is there, and the error itself otherwise (another unique key).
    async fn insert_unless_present(
        &mut self,
        route: &MyRoute,
        event: &ChangeEvent,
    ) -> Result<bool, ApplyError> {
        let columns = insert_columns(route, event)?;
        let after = event.after.as_ref().expect("insert_columns checked it");
        let mut params = Vec::with_capacity(columns.len());
        for &c in &columns {
            let column = &route.columns[c];
            let value = after
                .get(&column.source)
                .expect("insert_columns checked it");
            params.push(to_param(value, column, &route.target)?);
        }
        let sql = insert_sql(route, &columns, 1, false);
        let wrap = |source| ApplyError::MysqlWrite {
            table: route.target.clone(),
            op: Op::Insert,
            source: Box::new(MysqlError::Query {
                doing: "writing rows",
                source,
            }),
        };
        let error = match self.conn.exec_drop(sql, Params::Positional(params)).await {
            Ok(()) => return Ok(true),
            Err(mysql_async::Error::Server(e)) if e.code == DUPLICATE_KEY => {
                mysql_async::Error::Server(e)
            }
            Err(e) => return Err(wrap(e)),
        };
        let mut key = Vec::with_capacity(route.key.len());
        let mut params = Vec::with_capacity(route.key.len());
        for &k in &route.key {
            let column = &route.columns[k];
            let value = target_key_value(event, &column.source)?;
            params.push(to_param(value, column, &route.target)?);
            key.push(format!("{} = ?", column.quoted));
        }
        let present: Option<u8> = self
            .conn
            .exec_first(
                format!("SELECT 1 FROM {} WHERE {}", route.quoted, key.join(" AND ")),
                Params::Positional(params),
            )
            .await
            .map_err(wrap)?;
        match present {
            Some(_) => Ok(false),
            None => Err(wrap(error)),
        }
    }

    async fn delete(&mut self, route: &MyRoute, event: &ChangeEvent) -> Result<(), ApplyError> {
        let mut params = Vec::new();
        let filter = key_filter(route, event, &mut params)?;
        let sql = format!("DELETE FROM {} WHERE {filter}", route.quoted);
        let n = self.execute(route, Op::Delete, sql, params).await?;
        expect_one(route, event, n)
    }
}

/// The SET list and key filter of an UPDATE, with their parameters appended to `params`.
fn update_parts(
    route: &MyRoute,
    event: &ChangeEvent,
    params: &mut Vec<mysql_async::Value>,
) -> Result<(String, String), ApplyError> {
    let Some(after) = &event.after else {
        return Err(malformed(event, "an update without an after-image"));
    };
    let mut set = Vec::new();
    for column in &route.columns {
        match after.get(&column.source) {
            None | Some(Value::Unchanged) => {}
            Some(value) => {
                params.push(to_param(value, column, &route.target)?);
                set.push(format!("{} = ?", column.quoted));
            }
        }
    }
    if set.is_empty() {
        let k = &route.columns[route.key[0]].quoted;
        set.push(format!("{k} = {k}"));
    }
    let filter = key_filter(route, event, params)?;
    Ok((set.join(", "), filter))
}

/// `AND <column> <=> <expected> ...` for the event's expected values (its before-image),
/// appended to `params`; empty without a before-image. See the module docs for the forms.
fn expected_filter(
    route: &MyRoute,
    event: &ChangeEvent,
    params: &mut Vec<mysql_async::Value>,
) -> Result<String, ApplyError> {
    let sources = route.columns.iter().map(|c| c.source.as_str());
    let mut filter = String::new();
    for (i, value) in expected_values(sources, &route.key, event) {
        let column = &route.columns[i];
        params.push(to_param(value, column, &route.target)?);
        let q = &column.quoted;
        let declared = column.declared.to_ascii_lowercase();
        let parens = declared
            .split_once('(')
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(inner, _)| inner.trim());
        filter.push_str(&match column.kind {
            MyKind::Text if declared == "json" => format!(" AND {q} <=> CAST(? AS JSON)"),
            MyKind::Text => {
                format!(" AND CAST(CONVERT({q} USING utf8mb4) AS BINARY) <=> CAST(? AS BINARY)")
            }
            MyKind::Decimal { .. } => {
                format!(
                    " AND {q} <=> CAST(? AS DECIMAL({}))",
                    parens.unwrap_or("10")
                )
            }
            MyKind::Bytes if declared.starts_with("binary") => {
                format!(" AND {q} <=> CAST(? AS BINARY({}))", parens.unwrap_or("1"))
            }
            _ => format!(" AND {q} <=> ?"),
        });
    }
    Ok(filter)
}

/// `k1 = ? AND k2 = ?` with the event's old key values appended to `params`.
fn key_filter(
    route: &MyRoute,
    event: &ChangeEvent,
    params: &mut Vec<mysql_async::Value>,
) -> Result<String, ApplyError> {
    let mut parts = Vec::with_capacity(route.key.len());
    for &k in &route.key {
        let column = &route.columns[k];
        let value = key_value(event, &column.source)?;
        params.push(to_param(value, column, &route.target)?);
        parts.push(format!("{} = ?", column.quoted));
    }
    Ok(parts.join(" AND "))
}

fn expect_one(route: &MyRoute, event: &ChangeEvent, n: u64) -> Result<(), ApplyError> {
    crate::apply::expect_one(&route.target, event, n)
}

/// The route columns an insert writes: those its after-image carries.
fn insert_columns(route: &MyRoute, event: &ChangeEvent) -> Result<Vec<usize>, ApplyError> {
    crate::apply::insert_columns(route.columns.iter().map(|c| c.source.as_str()), event)
}

fn param_size(value: &mysql_async::Value) -> usize {
    match value {
        mysql_async::Value::Bytes(b) => b.len(),
        _ => 8,
    }
}

/// How many of `rows` the next INSERT takes: the largest chunk size that fits.
fn chunk_len(rows: &[Vec<mysql_async::Value>]) -> usize {
    for &n in &INSERT_CHUNKS {
        if n <= rows.len() {
            let bytes: usize = rows[..n].iter().flatten().map(param_size).sum();
            if n == 1 || bytes <= INSERT_BYTES {
                return n;
            }
        }
    }
    1
}

fn insert_sql(route: &MyRoute, columns: &[usize], rows: usize, upsert: bool) -> String {
    let names: Vec<&str> = columns
        .iter()
        .map(|&c| route.columns[c].quoted.as_str())
        .collect();
    let row = format!("({})", vec!["?"; columns.len()].join(", "));
    let mut sql = format!(
        "INSERT INTO {} ({}) VALUES {}",
        route.quoted,
        names.join(", "),
        vec![row.as_str(); rows].join(", ")
    );
    if upsert {
        let mut set: Vec<String> = columns
            .iter()
            .filter(|c| !route.key.contains(c))
            .map(|&c| {
                let q = &route.columns[c].quoted;
                format!("{q} = VALUES({q})")
            })
            .collect();
        if set.is_empty() {
            let k = &route.columns[route.key[0]].quoted;
            set.push(format!("{k} = {k}"));
        }
        sql.push_str(" ON DUPLICATE KEY UPDATE ");
        sql.push_str(&set.join(", "));
    }
    sql
}

/// Converts a canonical value for a target column, refusing what the column cannot hold
/// exactly.
fn to_param(
    value: &Value,
    column: &MyColumn,
    table: &TableName,
) -> Result<mysql_async::Value, ApplyError> {
    use mysql_async::Value as M;
    let refuse =
        |reason: &str| ApplyError::refuse(table, &column.target, value, &column.declared, reason);
    let integer = |i: i128, min: i128, max: i128| {
        if i < min || i > max {
            Err(refuse("out of the column's range"))
        } else if i < 0 {
            Ok(M::Int(i as i64))
        } else {
            Ok(M::UInt(i as u64))
        }
    };
    // Integers have scale 0, so only a Decimal can be rounded.
    let decimal_text = |text: String, scale: Option<usize>, unsigned: bool| {
        if unsigned && text.starts_with('-') {
            return Err(refuse("negative value in an UNSIGNED column"));
        }
        if let (Value::Decimal(d), Some(scale)) = (value, scale)
            && d.normalized().scale() > scale
        {
            return Err(refuse(&format!(
                "{d} has more than {scale} decimal places and would be rounded"
            )));
        }
        Ok(M::Bytes(text.into_bytes()))
    };
    use MyKind as K;
    match (column.kind, value) {
        (_, Value::Null) => Ok(M::NULL),
        (_, Value::Unchanged) => Err(refuse("an Unchanged value cannot be written")),
        (K::Int { min, max }, Value::Int(i)) => integer(i128::from(*i), min, max),
        (K::Int { min, max }, Value::UInt(u)) => integer(i128::from(*u), min, max),
        (K::Int { min, max }, Value::Bool(b)) => integer(i128::from(*b), min, max),
        (K::Decimal { scale, unsigned }, Value::Decimal(d)) => {
            if !d.is_finite() {
                return Err(refuse("MySQL DECIMAL cannot store NaN or ±Infinity"));
            }
            decimal_text(d.as_str().to_owned(), scale, unsigned)
        }
        (K::Decimal { scale, unsigned }, Value::Int(i)) => {
            decimal_text(i.to_string(), scale, unsigned)
        }
        (K::Decimal { scale, unsigned }, Value::UInt(u)) => {
            decimal_text(u.to_string(), scale, unsigned)
        }
        (K::Float | K::Double, Value::Float(f)) if !f.is_finite() => {
            Err(refuse("MySQL cannot store NaN or ±Infinity"))
        }
        (K::Float, Value::Float(f)) => {
            let narrow = *f as f32;
            if f64::from(narrow) != *f {
                return Err(refuse(&format!(
                    "{f} is not exactly a 32-bit float (use DOUBLE)"
                )));
            }
            Ok(M::Float(narrow))
        }
        (K::Double, Value::Float(f)) => Ok(M::Double(*f)),
        (K::Text, Value::Text(s) | Value::Json(s)) => Ok(M::Bytes(s.as_bytes().to_vec())),
        (K::Text | K::Uuid, Value::Uuid(u)) => Ok(M::Bytes(u.to_string().into_bytes())),
        (K::Uuid, Value::Text(s)) => match uuid::Uuid::parse_str(s) {
            Ok(u) => Ok(M::Bytes(u.to_string().into_bytes())),
            Err(_) => Err(refuse("not a UUID")),
        },
        (K::Bytes, Value::Bytes(b)) => Ok(M::Bytes(b.clone())),
        (K::Date, Value::Date(d)) => {
            date_value(*d, None).ok_or_else(|| refuse("MySQL dates span the years 0000-9999"))
        }
        (K::DateTime, Value::Timestamp(t)) => date_value(t.date(), Some(*t))
            .ok_or_else(|| refuse("MySQL datetimes span the years 0000-9999")),
        (K::DateTime, Value::TimestampTz(t)) => {
            let t = t.naive_utc();
            date_value(t.date(), Some(t))
                .ok_or_else(|| refuse("MySQL datetimes span the years 0000-9999"))
        }
        (K::Time, Value::Time(us)) => {
            if us.abs() > TIME_MAX_MICROS {
                return Err(refuse("outside -838:59:59.999999..=838:59:59.999999"));
            }
            let negative = *us < 0;
            let abs = us.unsigned_abs();
            let micros = (abs % 1_000_000) as u32;
            let secs = abs / 1_000_000;
            let days = (secs / 86_400) as u32;
            let hours = ((secs % 86_400) / 3600) as u8;
            let minutes = ((secs % 3600) / 60) as u8;
            let seconds = (secs % 60) as u8;
            Ok(M::Time(negative, days, hours, minutes, seconds, micros))
        }
        _ => Err(refuse("no conversion between these types")),
    }
}

/// A MySQL `Date` value; `None` for years outside 0..=9999.
fn date_value(date: NaiveDate, time: Option<NaiveDateTime>) -> Option<mysql_async::Value> {
    let year = u16::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
    let (h, m, s, us) = match time {
        Some(t) => (
            t.hour() as u8,
            t.minute() as u8,
            t.second() as u8,
            t.nanosecond() / 1000,
        ),
        None => (0, 0, 0, 0),
    };
    Some(mysql_async::Value::Date(
        year,
        date.month() as u8,
        date.day() as u8,
        h,
        m,
        s,
        us,
    ))
}
