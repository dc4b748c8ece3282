//! The MySQL/MariaDB applier: writes source transactions into MySQL or MariaDB tables, exactly
//! once. The protocol, and why it is exactly once, is [`crate::apply`]'s, written once in
//! [`ExactlyOnce`]; this module is its MySQL/MariaDB [`TargetSession`] ([`MysqlSession`]): the
//! session setup, transaction control, the statements and the values.
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
//! it. It also sets `foreign_key_checks = 0`: InnoDB then neither checks foreign keys nor runs
//! their referential actions for duplex's writes, so rows arrive in any order (a backfill's
//! parallel ranges) and a replicated parent delete does not cascade into the children the
//! source deletes itself (see [`crate::foreign_keys`]).
//!
//! Target transactions are opened and ended with plain `START TRANSACTION` / `COMMIT` /
//! `ROLLBACK` statements on the session's connection (not mysql_async's borrowed
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
//! chosen for, and checked against, the target column: see [`super::param`].
//!
//! # Statements
//!
//! Statements are prepared once per (table, operation, column set, rows per statement): the
//! connection's statement cache (512 statements) keys them by SQL text. Runs of
//! inserts into one table with the same columns become multi-row INSERTs of 64, 32, ..., 1
//! rows of at most about 4 MB each (below the default `max_allowed_packet` of 16 MB).
//!
//! # Upserts
//!
//! An upserting applier ([`ApplyOptions::upsert`], the backfill's `--allow-nonempty`) matches
//! rows by primary key only: each row is first an `UPDATE ... WHERE <key> = ?` (rows matched,
//! thanks to `CLIENT_FOUND_ROWS`), and the rows that matched nothing are inserted with plain
//! multi-row INSERTs. Never `INSERT ... ON DUPLICATE KEY UPDATE`: MySQL and MariaDB apply it to
//! the row that collides on *any* unique key, so a source row sharing a secondary unique value
//! with another target row would be written over that row. Here such a collision fails the
//! write ([`ApplyError::UniqueCollision`], naming the row's key; the server's message names
//! the index and the value).
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
//! source site names must be unique per target server. Its SQL is in [`super::positions`].

use std::collections::HashMap;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Params};

use crate::apply::{
    ApplyError, ApplyOptions, ExactlyOnce, SkippedWrite, TableRoute, TargetSession,
    declared_length, declared_scale, refuse_key_change, same_insert_shape, skipped_write,
    target_key_value, unique_collision,
};
use crate::{ChangeEvent, Column, Op, Position, TableName};

use super::param::to_param;
use super::sql::{expected_filter, insert_params, insert_sql, key_filter, update_parts};
use super::{MysqlError, describe_table, positions, quote_ident};

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

/// A MySQL/MariaDB applier: the exactly-once protocol of [`crate::apply`] over a
/// [`MysqlSession`].
pub type MysqlApplier = ExactlyOnce<MysqlSession>;

/// One connection to a MySQL or MariaDB target and the routes written through it: the
/// [`TargetSession`] of [`MysqlApplier`].
pub struct MysqlSession {
    opts: Opts,
    /// `ssl-mode` PREFERRED: plaintext when the server offers no TLS.
    tls_preferred: bool,
    conn: Option<Conn>,
    mariadb: bool,
    routes: HashMap<TableName, MyRoute>,
    options: ApplyOptions,
    /// Whether a target transaction is open on `conn` (START TRANSACTION sent, no
    /// COMMIT/ROLLBACK yet).
    in_transaction: bool,
}

/// A route resolved against the target table's schema.
pub(super) struct MyRoute {
    pub(super) target: TableName,
    pub(super) quoted: String,
    pub(super) columns: Vec<MyColumn>,
    /// Indexes into `columns` of the key columns.
    pub(super) key: Vec<usize>,
}

/// One written column.
pub(super) struct MyColumn {
    pub(super) source: String,
    pub(super) target: String,
    pub(super) quoted: String,
    pub(super) declared: String,
    pub(super) kind: MyKind,
}

/// How values of a target column are bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum MyKind {
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
    /// `BIT(len)`.
    Bit {
        len: usize,
    },
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
            "bit" => MyKind::Bit {
                len: declared_length(&column.declared).unwrap_or(1),
            },
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
        let (builder, tls_preferred) = super::options(url, password)?;
        let builder = builder
            .client_found_rows(true)
            .stmt_cache_size(STATEMENT_CACHE);
        let opts = Opts::from(builder);
        let (mut conn, mariadb) = open(&opts, tls_preferred).await?;
        positions::ensure_table(&mut conn).await?;
        let mut resolved = HashMap::new();
        for route in routes {
            let info = describe_table(&mut conn, &route.target).await?;
            let source = route.source.clone();
            resolved.insert(source, resolve(route, info.map(|i| i.schema.columns))?);
        }
        Ok(ExactlyOnce::new(MysqlSession {
            opts,
            tls_preferred,
            conn: Some(conn),
            mariadb,
            routes: resolved,
            options,
            in_transaction: false,
        }))
    }

    /// Whether the target is MariaDB (and duplex's writes carry the skip-replication flag).
    pub fn is_mariadb(&self) -> bool {
        self.session().mariadb
    }
}

impl MysqlSession {
    /// The connection, reconnecting (and setting the session up again) after a failure.
    async fn conn(&mut self) -> Result<&mut Conn, ApplyError> {
        if self.conn.is_none() {
            let (conn, mariadb) = open(&self.opts, self.tls_preferred).await?;
            self.mariadb = mariadb;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
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
        Ok(())
    }
}

/// Connects and sets up the applying session; reports whether the server is MariaDB.
async fn open(opts: &Opts, tls_preferred: bool) -> Result<(Conn, bool), ApplyError> {
    let mut conn = super::open_conn(opts.clone(), tls_preferred).await?;
    let version: String = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(MysqlError::query("reading the server version"))?
        .unwrap_or_default();
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    conn.query_drop(format!(
        "SET NAMES utf8mb4, SESSION time_zone = '+00:00', SESSION sql_mode = '{SQL_MODE}', \
         SESSION foreign_key_checks = 0"
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

impl TargetSession for MysqlSession {
    /// Opens a target transaction at READ COMMITTED (see the module docs).
    async fn begin(&mut self) -> Result<(), ApplyError> {
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

    async fn commit(&mut self) -> Result<(), ApplyError> {
        self.end(true).await
    }

    async fn rollback(&mut self) -> Result<(), ApplyError> {
        self.end(false).await
    }

    /// Drops the connection when even the rollback fails.
    async fn rollback_open(&mut self) {
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

    /// A transient error drops the connection (the server rolls back); any other rolls back on
    /// it.
    async fn abandon(&mut self, error: &ApplyError) {
        if error.is_transient() {
            self.conn = None;
            self.in_transaction = false;
        } else {
            self.rollback_open().await;
        }
    }

    async fn locked_position(&mut self, site: &str) -> Result<Option<Position>, ApplyError> {
        positions::locked(self.conn().await?, site).await
    }

    async fn record(
        &mut self,
        site: &str,
        position: &Position,
        update: bool,
    ) -> Result<(), ApplyError> {
        positions::record(self.conn().await?, site, position, update).await
    }

    async fn ensure_claims(&mut self) -> Result<(), ApplyError> {
        positions::ensure_claims(self.conn().await?).await
    }

    async fn locked_claim(&mut self, scope: &str) -> Result<Option<String>, ApplyError> {
        positions::locked_claim(self.conn().await?, scope).await
    }

    async fn record_claim(
        &mut self,
        scope: &str,
        deployment: &str,
        update: bool,
    ) -> Result<(), ApplyError> {
        positions::record_claim(self.conn().await?, scope, deployment, update).await
    }

    async fn write_events(
        &mut self,
        events: &[&ChangeEvent],
    ) -> Result<Vec<SkippedWrite>, ApplyError> {
        self.conn().await?;
        let mut writer = Writer {
            conn: self.conn.as_mut().expect("connected above"),
            routes: &self.routes,
            options: self.options,
        };
        if self.options.conditional {
            return writer.write_conditional(events).await;
        }
        writer.write_all(events).await?;
        Ok(Vec::new())
    }

    /// MySQL has no bulk path duplex uses: the inserts are written as `write_events` writes
    /// them (multi-row INSERTs).
    async fn load_events(
        &mut self,
        events: &[&ChangeEvent],
    ) -> Result<Vec<SkippedWrite>, ApplyError> {
        self.write_events(events).await
    }

    async fn position(&mut self, site: &str) -> Result<Option<Position>, ApplyError> {
        positions::committed(self.conn().await?, site).await
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
                        && (same_insert_shape(event, events[end])
                            || insert_columns(route, events[end])? == columns)
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
        let upsert = self.options.upsert;
        let fresh;
        let events = if upsert {
            fresh = self.update_existing(route, columns, events).await?;
            &fresh[..]
        } else {
            events
        };
        let mut rows = Vec::with_capacity(events.len());
        for event in events {
            rows.push(insert_params(route, columns, event)?);
        }
        let mut rest = rows;
        let mut done = 0;
        while !rest.is_empty() {
            let n = chunk_len(&rest);
            let tail = rest.split_off(n);
            let sql = insert_sql(route, columns, n);
            let params: Vec<mysql_async::Value> = rest.into_iter().flatten().collect();
            match self.execute(route, Op::Insert, sql, params).await {
                Err(error) if upsert && is_duplicate_key(&error) => {
                    return Err(self
                        .name_collision(route, columns, &events[done..done + n], error)
                        .await);
                }
                result => result?,
            };
            done += n;
            rest = tail;
        }
        Ok(())
    }

    /// The upsert's first half: updates, by primary key only, the rows of `events` the table
    /// already holds, and returns the events whose key matched no row (to be inserted). Not
    /// `INSERT ... ON DUPLICATE KEY UPDATE`: MySQL and MariaDB apply that to whichever row
    /// collides on ANY unique key, which would write a row over another row that shares a
    /// secondary unique value. A key update that meets another row on a secondary unique
    /// index fails, as does the insert of a new key that does.
    async fn update_existing<'e>(
        &mut self,
        route: &MyRoute,
        columns: &[usize],
        events: &[&'e ChangeEvent],
    ) -> Result<Vec<&'e ChangeEvent>, ApplyError> {
        let mut fresh = Vec::new();
        for &event in events {
            let after = event.after.as_ref().expect("insert_columns checked it");
            let mut params = Vec::with_capacity(columns.len() + route.key.len());
            let mut set = Vec::new();
            for &c in columns.iter().filter(|c| !route.key.contains(c)) {
                let column = &route.columns[c];
                let value = after
                    .get(&column.source)
                    .expect("insert_columns checked it");
                params.push(to_param(value, column, &route.target)?);
                set.push(format!("{} = ?", column.quoted));
            }
            if set.is_empty() {
                let k = &route.columns[route.key[0]].quoted;
                set.push(format!("{k} = {k}"));
            }
            let mut filter = Vec::with_capacity(route.key.len());
            for &k in &route.key {
                let column = &route.columns[k];
                let value = target_key_value(event, &column.source)?;
                params.push(to_param(value, column, &route.target)?);
                filter.push(format!("{} = ?", column.quoted));
            }
            let sql = format!(
                "UPDATE {} SET {} WHERE {}",
                route.quoted,
                set.join(", "),
                filter.join(" AND ")
            );
            match self.execute(route, Op::Insert, sql, params).await {
                Ok(0) => fresh.push(event),
                Ok(_) => {}
                Err(error) if is_duplicate_key(&error) => {
                    return Err(unique_collision(
                        &route.target,
                        &[event],
                        route.key.iter().map(|&k| route.columns[k].source.as_str()),
                        error,
                    ));
                }
                Err(error) => return Err(error),
            }
        }
        Ok(fresh)
    }

    /// The error for a multi-row upsert insert that met a duplicate key: inserts its rows one
    /// at a time (the failed statement was rolled back alone, and the target transaction is
    /// rolled back after this anyway) to name the row that collides.
    async fn name_collision(
        &mut self,
        route: &MyRoute,
        columns: &[usize],
        events: &[&ChangeEvent],
        error: ApplyError,
    ) -> ApplyError {
        let key = || route.key.iter().map(|&k| route.columns[k].source.as_str());
        if events.len() > 1 {
            for &event in events {
                let params = match insert_params(route, columns, event) {
                    Ok(params) => params,
                    Err(other) => return other,
                };
                let sql = insert_sql(route, columns, 1);
                match self.execute(route, Op::Insert, sql, params).await {
                    Ok(_) => {}
                    Err(single) if is_duplicate_key(&single) => {
                        return unique_collision(&route.target, &[event], key(), single);
                    }
                    Err(other) => return other,
                }
            }
        }
        unique_collision(&route.target, events, key(), error)
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
        let sql = insert_sql(route, &columns, 1);
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

/// Whether a row write failed on a duplicate key (`ER_DUP_ENTRY`).
fn is_duplicate_key(error: &ApplyError) -> bool {
    matches!(
        error,
        ApplyError::MysqlWrite { source, .. }
            if matches!(
                &**source,
                MysqlError::Query { source: mysql_async::Error::Server(e), .. } if e.code == DUPLICATE_KEY
            )
    )
}
