//! The PostgreSQL applier: writes source transactions into PostgreSQL tables, exactly once
//! (see [`crate::apply`] for the protocol and why it is exactly once).
//!
//! # Parameters
//!
//! Every value is bound as a parameter of a prepared statement, in PostgreSQL's *binary*
//! format, encoded for the target column's actual type ([`PgParam`]): `int2`/`int4`/`int8`
//! from `Int`/`UInt` with range checks, `numeric` in its binary base-10000 form written here
//! from the exact decimal text (tokio-postgres has no numeric encoder; the encoding is exact
//! by construction, including NaN and ±Infinity, and keeps the scale), `float4`/`float8`
//! bit-exact (NaN and ±Infinity included; a `float4` column refuses a value that is not
//! exactly a 32-bit float), `bytea` as raw bytes (0x00 included), `time` / `interval` as
//! microseconds (so 24:00:00 fits `time` and any duration fits `interval`), `timestamptz` as
//! UTC microseconds, `jsonb` as version 1 plus the text, `json` and text types as the text
//! (key order and duplicates kept). Binary was chosen over "bind everything as text and
//! cast" because nothing is parsed or printed on the way, so there is no float formatting,
//! `DateStyle`, `bytea_output` or time zone setting that could change a value. Target types
//! duplex has no binary encoder for (e.g. `inet`, `macaddr`, `xml`, `citext`) are bound as
//! text with an explicit `$n::text::<type>` cast: their text form is their canonical form.
//!
//! Before binding, each value is checked against the target column: out-of-range integers,
//! a `numeric(p,s)` value that would be rounded, text with a 0x00 character (PostgreSQL
//! refuses it), a time outside 00:00:00..=24:00:00 are refused with an error naming table,
//! column, value kind and column type.
//!
//! # Statements
//!
//! Statements are prepared once per (table, operation, column set, rows per statement) and
//! cached by their SQL text. Consecutive inserts into one table with the same columns are
//! written as multi-row INSERTs of 64, 32, ..., 1 rows (a bounded set of statements) of at
//! most about 4 MB each. Runs of updates and deletes are pipelined (up to 256 statements are
//! sent before the first answer is awaited); the server still executes them in order, and
//! the first failure is the one reported (the ones after it fail only because the
//! transaction is aborted).
//!
//! A conditional applier ([`ApplyOptions::conditional`]) writes one statement per event,
//! pipelined the same way in runs of up to 256, and reads each statement's row count: 0 means
//! skipped. An insert is `INSERT ... ON CONFLICT (<key>) DO NOTHING`; an update or delete adds
//! `AND <column> IS NOT DISTINCT FROM $n` per expected value to its key filter, with the value
//! bound exactly as a write binds it. `json` has no equality operator, so it is compared as
//! its text (json keeps its input text verbatim: the exact value written); types bound with a
//! cast are compared as the text of the cast value (their canonical form, and some, like
//! `xml`, have no equality either); `jsonb` uses its own equality (jsonb keeps no text, only
//! the normalised value).
//!
//! # Transaction control
//!
//! Target transactions are opened and ended with plain `BEGIN` / `COMMIT` / `ROLLBACK` on the
//! applier's connection (not tokio-postgres's borrowed `Transaction`), because the target
//! transaction of a large source transaction stays open across calls (see [`crate::apply`]).
//! The applier remembers whether one is open; an error, or a call dropped halfway, is followed
//! by a `ROLLBACK` before anything else runs on the connection.
//!
//! # Echo marker
//!
//! duplex's own writes are recognisable in the WAL by the upsert of `duplex.positions` in the
//! same transaction: a transaction that touches `duplex.positions` was written by duplex (the
//! PostgreSQL reader's publication must include `duplex.positions` for that). A replication
//! origin (`pg_replication_origin_session_setup`) was not chosen: on PostgreSQL 15 the origin
//! functions need superuser unless a superuser grants EXECUTE on them, which the applying
//! role normally lacks, and an origin can be active in only one session at a time, so two
//! appliers (or backfill workers) writing to the same database would exclude each other. The
//! positions row needs no privilege beyond the table, and it also says which source and
//! position the transaction carries.

use std::borrow::Cow;
use std::collections::HashMap;
use std::error::Error;
use std::pin::Pin;
use std::task::Poll;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use crate::apply::{
    Applier, ApplyError, ApplyOptions, OpenParts, PartState, SkippedWrite, TableRoute,
    check_next_part, declared_scale, expected_values, final_of, fresh, interrupted, key_value,
    malformed, open_parts, parse_position, position_text, recorded_before, refuse_key_change,
    skipped_write, sources,
};
use crate::{ChangeEvent, Column, Op, Position, TableName, Transaction, TransactionPart, Value};

use super::{PgError, connect, describe_table, quote_ident};

/// Rows per multi-row INSERT, largest first; every run is split into these sizes.
const INSERT_CHUNKS: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];
/// Rough upper bound on the parameter bytes of one multi-row INSERT.
const INSERT_BYTES: usize = 4 << 20;
/// Updates and deletes sent together before their answers are awaited.
const PIPELINE: usize = 256;
/// Prepared statements kept per connection before the cache is emptied.
const STATEMENT_CACHE: usize = 512;

/// The bookkeeping table, as the applier creates it on first use (a DBA who does not grant
/// duplex CREATE on the database runs this beforehand).
pub const POSITIONS_DDL: &str = "CREATE SCHEMA IF NOT EXISTS duplex; \
     CREATE TABLE IF NOT EXISTS duplex.positions ( \
         source text PRIMARY KEY, \
         position text NOT NULL, \
         applied_at timestamptz NOT NULL DEFAULT now())";

/// Writes source transactions into a PostgreSQL database; see [`crate::apply`].
pub struct PgApplier {
    url: String,
    password: Option<String>,
    pub(super) client: Client,
    pub(super) routes: HashMap<TableName, PgRoute>,
    pub(super) statements: HashMap<String, Statement>,
    pub(super) options: ApplyOptions,
    /// Where the applier is in a large transaction.
    pub(super) parts: PartState,
    /// Whether a target transaction is open on `client` (BEGIN sent, no COMMIT/ROLLBACK yet).
    in_transaction: bool,
    /// Conditional writes skipped by committed target transactions, not yet taken.
    skipped: Vec<SkippedWrite>,
    /// Conditional writes skipped in the open target transaction.
    skipped_open: Vec<SkippedWrite>,
}

/// A route resolved against the target table's schema.
pub(super) struct PgRoute {
    pub(super) target: TableName,
    pub(super) quoted: String,
    pub(super) columns: Vec<PgColumn>,
    /// Indexes into `columns` of the key columns.
    key: Vec<usize>,
}

/// One written column.
pub(super) struct PgColumn {
    pub(super) source: String,
    target: String,
    pub(super) quoted: String,
    declared: String,
    pub(super) kind: PgKind,
    scale: Option<usize>,
}

/// How values of a target column are bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PgKind {
    Bool,
    Int2,
    Int4,
    Int8,
    Numeric,
    Float4,
    Float8,
    Text,
    Bytea,
    Date,
    Time,
    Interval,
    Timestamp,
    TimestampTz,
    Uuid,
    Json,
    Jsonb,
    /// Bound as text with `$n::text::<declared type>`.
    Cast,
}

impl PgKind {
    fn of(column: &Column) -> Option<PgKind> {
        Some(match column.type_name.as_str() {
            "bool" => PgKind::Bool,
            "int2" => PgKind::Int2,
            "int4" => PgKind::Int4,
            "int8" => PgKind::Int8,
            "numeric" => PgKind::Numeric,
            "float4" => PgKind::Float4,
            "float8" => PgKind::Float8,
            "text" | "varchar" | "bpchar" | "name" | "enum" => PgKind::Text,
            "bytea" => PgKind::Bytea,
            "date" => PgKind::Date,
            "time" => PgKind::Time,
            "interval" => PgKind::Interval,
            "timestamp" => PgKind::Timestamp,
            "timestamptz" => PgKind::TimestampTz,
            "uuid" => PgKind::Uuid,
            "json" => PgKind::Json,
            "jsonb" => PgKind::Jsonb,
            "array" | "composite" => return None,
            _ => PgKind::Cast,
        })
    }
}

impl PgColumn {
    /// The placeholder for parameter `n` (1-based).
    fn placeholder(&self, n: usize) -> String {
        match self.kind {
            PgKind::Cast => format!("${n}::text::{}", self.declared),
            _ => format!("${n}"),
        }
    }
}

impl PgApplier {
    /// Connects to the target (see [`super::connect`]), reads the target tables' schemas,
    /// checks the routes against them and creates `duplex.positions` if it is missing.
    pub async fn connect(
        url: &str,
        password: Option<&str>,
        routes: Vec<TableRoute>,
        options: ApplyOptions,
    ) -> Result<PgApplier, ApplyError> {
        options.validate()?;
        let client = connect(url, password).await?;
        ensure_positions_table(&client).await?;
        let mut resolved = HashMap::new();
        for route in routes {
            let info = describe_table(&client, &route.target).await?;
            let source = route.source.clone();
            resolved.insert(source, resolve(route, info.map(|i| i.schema.columns))?);
        }
        Ok(PgApplier {
            url: url.to_owned(),
            password: password.map(str::to_owned),
            client,
            routes: resolved,
            statements: HashMap::new(),
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

    /// Reconnects when the connection was lost (a previous apply failed transiently).
    async fn reconnect_if_closed(&mut self) -> Result<(), ApplyError> {
        if self.client.is_closed() {
            self.client = connect(&self.url, self.password.as_deref()).await?;
            self.statements.clear();
            self.in_transaction = false;
        }
        Ok(())
    }
}

/// Checks a route against the target table's columns.
fn resolve(route: TableRoute, columns: Option<Vec<Column>>) -> Result<PgRoute, ApplyError> {
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
        let Some(kind) = PgKind::of(column) else {
            return Err(fail(format!(
                "column {target:?} has type {}, which duplex does not write: leave it out of \
                 the mapping",
                column.declared
            )));
        };
        columns.push(PgColumn {
            source: source.clone(),
            target: target.clone(),
            quoted: quote_ident(target),
            declared: column.declared.clone(),
            kind,
            scale: declared_scale(&column.declared),
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
    Ok(PgRoute {
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

/// Creates schema `duplex` and `duplex.positions` unless they exist (appliers on first use,
/// change streams with the echo marker). A concurrent creation by another applier or stream
/// is not an error.
pub(super) async fn ensure_positions_table(client: &Client) -> Result<(), PgError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('duplex.positions') IS NOT NULL", &[])
        .await
        .map_err(PgError::query("looking for duplex.positions"))?
        .get(0);
    if exists {
        return Ok(());
    }
    match client.batch_execute(POSITIONS_DDL).await {
        Ok(()) => {
            tracing::info!("created duplex.positions");
            Ok(())
        }
        // `IF NOT EXISTS` still races: the loser of two concurrent creations fails on the
        // catalog's unique index.
        Err(e)
            if e.code().is_some_and(|c| {
                *c == SqlState::UNIQUE_VIOLATION
                    || *c == SqlState::DUPLICATE_SCHEMA
                    || *c == SqlState::DUPLICATE_TABLE
            }) =>
        {
            Ok(())
        }
        Err(e) => Err(PgError::query("creating duplex.positions")(e)),
    }
}

impl Applier for PgApplier {
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
        self.reconnect_if_closed().await?;
        let row = self
            .client
            .query_opt(
                "SELECT position FROM duplex.positions WHERE source = $1",
                &[&source],
            )
            .await
            .map_err(PgError::query("reading duplex.positions"))?;
        row.map(|row| parse_position(source, row.get(0)))
            .transpose()
    }
}

impl PgApplier {
    /// After every call: on error the target transaction is rolled back and no large
    /// transaction is open any more.
    pub(super) async fn end_call<T>(
        &mut self,
        result: Result<T, ApplyError>,
    ) -> Result<T, ApplyError> {
        if result.is_err() {
            self.parts = PartState::Idle;
            self.rollback_open().await;
            self.skipped_open.clear();
        }
        result
    }

    /// Rolls back a target transaction left open (by an error or a dropped call).
    async fn rollback_open(&mut self) {
        self.skipped_open.clear();
        if !self.in_transaction {
            return;
        }
        if let Err(error) = self.client.batch_execute("ROLLBACK").await {
            tracing::debug!(%error, "rolling back a failed apply failed too");
        }
        self.in_transaction = false;
    }

    /// Opens a target transaction (rolling back one a dropped call left open).
    pub(super) async fn begin(&mut self) -> Result<(), ApplyError> {
        self.rollback_open().await;
        self.reconnect_if_closed().await?;
        self.in_transaction = true;
        self.client
            .batch_execute("BEGIN")
            .await
            .map_err(PgError::query("starting the target transaction"))?;
        Ok(())
    }

    pub(super) async fn commit(&mut self) -> Result<(), ApplyError> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(PgError::query("committing the target transaction"))?;
        self.in_transaction = false;
        self.skipped.append(&mut self.skipped_open);
        Ok(())
    }

    pub(super) async fn rollback(&mut self) -> Result<(), ApplyError> {
        self.client
            .batch_execute("ROLLBACK")
            .await
            .map_err(PgError::query("ending the target transaction"))?;
        self.in_transaction = false;
        self.skipped_open.clear();
        Ok(())
    }

    /// The recorded position of `site`, read under a row lock inside the open transaction.
    pub(super) async fn recorded_for_update(
        &self,
        site: &str,
    ) -> Result<Option<Position>, ApplyError> {
        let row = self
            .client
            .query_opt(
                "SELECT position FROM duplex.positions WHERE source = $1 FOR UPDATE",
                &[&site],
            )
            .await
            .map_err(PgError::query("reading duplex.positions"))?;
        row.map(|row| parse_position(site, row.get(0))).transpose()
    }

    /// Records `position` of `site` in the open transaction. The first position of a source
    /// is inserted, never upserted: of two appliers racing on a new source, the second fails
    /// here instead of applying again.
    pub(super) async fn record(
        &self,
        site: &str,
        position: &Position,
        update: bool,
    ) -> Result<(), ApplyError> {
        let sql = if update {
            "UPDATE duplex.positions SET position = $2, applied_at = now() WHERE source = $1"
        } else {
            "INSERT INTO duplex.positions (source, position, applied_at) VALUES ($1, $2, now())"
        };
        self.client
            .execute(sql, &[&site, &position_text(position)])
            .await
            .map_err(PgError::query("recording the position in duplex.positions"))?;
        Ok(())
    }

    async fn write_events(&mut self, events: &[&ChangeEvent]) -> Result<(), ApplyError> {
        let mut writer = Writer {
            session: &self.client,
            routes: &self.routes,
            statements: &mut self.statements,
            options: self.options,
        };
        if self.options.conditional {
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
            return self.rollback().await;
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
        self.commit().await
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
            self.rollback().await?;
        } else {
            let events: Vec<&ChangeEvent> = last.events.iter().collect();
            self.write_events(&events).await?;
            self.record(&last.source, &last.position, open.recorded)
                .await?;
            self.commit().await?;
        }
        self.parts = PartState::Idle;
        Ok(())
    }
}

/// Writes the events of one batch inside its target transaction.
pub(super) struct Writer<'a> {
    pub(super) session: &'a Client,
    pub(super) routes: &'a HashMap<TableName, PgRoute>,
    pub(super) statements: &'a mut HashMap<String, Statement>,
    pub(super) options: ApplyOptions,
}

impl<'a> Writer<'a> {
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
                Op::Update | Op::Delete => {
                    let mut end = i + 1;
                    while end < events.len() && end - i < PIPELINE && events[end].op != Op::Insert {
                        end += 1;
                    }
                    self.change_run(&events[i..end]).await?;
                    i = end;
                }
            }
        }
        Ok(())
    }

    pub(super) async fn statement(
        &mut self,
        sql: String,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.statements.get(&sql) {
            return Ok(statement.clone());
        }
        let statement = self.session.prepare(&sql).await?;
        if self.statements.len() >= STATEMENT_CACHE {
            self.statements.clear();
        }
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    async fn execute(
        &mut self,
        route: &PgRoute,
        op: Op,
        sql: String,
        params: &[PgParam<'_>],
    ) -> Result<u64, ApplyError> {
        let wrap = |source| write_error(route, op, source);
        let statement = self.statement(sql).await.map_err(wrap)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        self.session.execute(&statement, &refs).await.map_err(wrap)
    }

    pub(super) async fn insert_run(
        &mut self,
        route: &PgRoute,
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
        let mut rest = &rows[..];
        while !rest.is_empty() {
            let n = chunk_len(rest);
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let sql = insert_sql(route, columns, n, self.options.upsert);
            let params: Vec<PgParam<'_>> = chunk.iter().flatten().cloned().collect();
            self.execute(route, Op::Insert, sql, &params).await?;
        }
        Ok(())
    }

    /// Writes a run of updates and deletes, pipelined (see [`Writer::pipeline`]).
    async fn change_run(&mut self, events: &[&ChangeEvent]) -> Result<(), ApplyError> {
        for (route, event, n) in self.pipeline(events, change_sql).await? {
            expect_one(route, event, n)?;
        }
        Ok(())
    }

    /// Writes events conditionally (see the module docs), one statement each, pipelined in
    /// runs; returns the skipped ones, in order.
    async fn write_conditional(
        &mut self,
        events: &[&ChangeEvent],
    ) -> Result<Vec<SkippedWrite>, ApplyError> {
        let mut skipped = Vec::new();
        for run in events.chunks(PIPELINE) {
            for (route, event, n) in self.pipeline(run, conditional_sql).await? {
                if n == 0 {
                    let key = route.key.iter().map(|&k| route.columns[k].source.as_str());
                    skipped.push(skipped_write(event, key));
                } else {
                    expect_one(route, event, n)?;
                }
            }
        }
        Ok(skipped)
    }

    /// Runs one statement per event (built by `sql_of`), pipelined: every statement is sent
    /// before the first answer is awaited. The server still runs them one after the other, in
    /// order, and the first failure is the one returned. Returns each event's row count.
    async fn pipeline<'e>(
        &mut self,
        events: &[&'e ChangeEvent],
        sql_of: SqlOf,
    ) -> Result<Vec<(&'a PgRoute, &'e ChangeEvent, u64)>, ApplyError> {
        let routes: &'a HashMap<TableName, PgRoute> = self.routes;
        let mut prepared = Vec::with_capacity(events.len());
        for event in events {
            let route = routes
                .get(&event.table)
                .ok_or_else(|| ApplyError::NoRoute(event.table.clone()))?;
            let (sql, params) = sql_of(route, event)?;
            let statement = self
                .statement(sql)
                .await
                .map_err(|source| write_error(route, event.op, source))?;
            prepared.push((route, *event, statement, params));
        }
        let refs: Vec<Vec<&(dyn ToSql + Sync)>> = prepared
            .iter()
            .map(|(_, _, _, params)| params.iter().map(|p| p as _).collect())
            .collect();
        let session = self.session;
        let results = pipelined(
            prepared
                .iter()
                .zip(&refs)
                .map(|((_, _, statement, _), refs)| session.execute(statement, refs))
                .collect(),
        )
        .await;
        let mut counts = Vec::with_capacity(prepared.len());
        for ((route, event, _, _), result) in prepared.iter().zip(results) {
            let n = result.map_err(|source| write_error(route, event.op, source))?;
            counts.push((*route, *event, n));
        }
        Ok(counts)
    }
}

/// Builds the statement of one event and its parameters.
type SqlOf =
    for<'e> fn(&PgRoute, &'e ChangeEvent) -> Result<(String, Vec<PgParam<'e>>), ApplyError>;

/// The UPDATE or DELETE statement for one event and its parameters.
fn change_sql<'e>(
    route: &PgRoute,
    event: &'e ChangeEvent,
) -> Result<(String, Vec<PgParam<'e>>), ApplyError> {
    let mut params = Vec::new();
    if event.op == Op::Delete {
        let filter = key_filter(route, event, &mut params)?;
        return Ok((
            format!("DELETE FROM {} WHERE {filter}", route.quoted),
            params,
        ));
    }
    let (set, filter) = update_parts(route, event, &mut params)?;
    Ok((
        format!("UPDATE {} SET {set} WHERE {filter}", route.quoted),
        params,
    ))
}

/// The statement of one event written conditionally (see the module docs) and its parameters;
/// it touches no row when the write is to be skipped.
fn conditional_sql<'e>(
    route: &PgRoute,
    event: &'e ChangeEvent,
) -> Result<(String, Vec<PgParam<'e>>), ApplyError> {
    let mut params = Vec::new();
    let sql = match event.op {
        Op::Insert => {
            let columns = insert_columns(route, event)?;
            let after = event.after.as_ref().expect("insert_columns checked it");
            for &c in &columns {
                let column = &route.columns[c];
                let value = after
                    .get(&column.source)
                    .expect("insert_columns checked it");
                params.push(to_param(value, column, &route.target)?);
            }
            let key: Vec<&str> = route
                .key
                .iter()
                .map(|&k| route.columns[k].quoted.as_str())
                .collect();
            format!(
                "{} ON CONFLICT ({}) DO NOTHING",
                insert_sql(route, &columns, 1, false),
                key.join(", ")
            )
        }
        Op::Update => {
            refuse_key_change(
                event,
                route.key.iter().map(|&k| route.columns[k].source.as_str()),
            )?;
            let (set, filter) = update_parts(route, event, &mut params)?;
            let expected = expected_filter(route, event, &mut params)?;
            format!("UPDATE {} SET {set} WHERE {filter}{expected}", route.quoted)
        }
        Op::Delete => {
            let filter = key_filter(route, event, &mut params)?;
            let expected = expected_filter(route, event, &mut params)?;
            format!("DELETE FROM {} WHERE {filter}{expected}", route.quoted)
        }
    };
    Ok((sql, params))
}

/// `AND <column> IS NOT DISTINCT FROM $n ...` for the event's expected values (its
/// before-image), appended to `params`; empty without a before-image.
fn expected_filter<'e>(
    route: &PgRoute,
    event: &'e ChangeEvent,
    params: &mut Vec<PgParam<'e>>,
) -> Result<String, ApplyError> {
    let sources = route.columns.iter().map(|c| c.source.as_str());
    let mut filter = String::new();
    for (i, value) in expected_values(sources, &route.key, event) {
        let column = &route.columns[i];
        params.push(to_param(value, column, &route.target)?);
        let n = params.len();
        let q = &column.quoted;
        filter.push_str(&match column.kind {
            PgKind::Json => format!(" AND {q}::text IS NOT DISTINCT FROM ${n}::text"),
            PgKind::Cast => format!(
                " AND {q}::text IS NOT DISTINCT FROM ({})::text",
                column.placeholder(n)
            ),
            _ => format!(" AND {q} IS NOT DISTINCT FROM {}", column.placeholder(n)),
        });
    }
    Ok(filter)
}

/// The SET list and key filter of an UPDATE, with their parameters appended to `params`.
fn update_parts<'e>(
    route: &PgRoute,
    event: &'e ChangeEvent,
    params: &mut Vec<PgParam<'e>>,
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
                set.push(format!(
                    "{} = {}",
                    column.quoted,
                    column.placeholder(params.len())
                ));
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

/// Polls `futures` together, so tokio-postgres sends all their requests before it waits for
/// the first answer (one round trip for the lot), and returns their outputs in order.
async fn pipelined<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

pub(super) fn write_error(route: &PgRoute, op: Op, source: tokio_postgres::Error) -> ApplyError {
    ApplyError::PgWrite {
        table: route.target.clone(),
        op,
        source: PgError::Query {
            doing: "writing rows",
            source,
        },
    }
}

/// `k1 = $i AND k2 = $j` with the event's old key values appended to `params`.
fn key_filter<'e>(
    route: &PgRoute,
    event: &'e ChangeEvent,
    params: &mut Vec<PgParam<'e>>,
) -> Result<String, ApplyError> {
    let mut parts = Vec::with_capacity(route.key.len());
    for &k in &route.key {
        let column = &route.columns[k];
        let value = key_value(event, &column.source)?;
        params.push(to_param(value, column, &route.target)?);
        parts.push(format!(
            "{} = {}",
            column.quoted,
            column.placeholder(params.len())
        ));
    }
    Ok(parts.join(" AND "))
}

fn expect_one(route: &PgRoute, event: &ChangeEvent, n: u64) -> Result<(), ApplyError> {
    crate::apply::expect_one(&route.target, event, n)
}

/// The route columns an insert writes: those its after-image carries.
pub(super) fn insert_columns(
    route: &PgRoute,
    event: &ChangeEvent,
) -> Result<Vec<usize>, ApplyError> {
    crate::apply::insert_columns(route.columns.iter().map(|c| c.source.as_str()), event)
}

/// How many of `rows` the next INSERT takes: the largest chunk size that fits.
fn chunk_len(rows: &[Vec<PgParam<'_>>]) -> usize {
    for &n in &INSERT_CHUNKS {
        if n <= rows.len() {
            let bytes: usize = rows[..n].iter().flatten().map(PgParam::size).sum();
            if n == 1 || bytes <= INSERT_BYTES {
                return n;
            }
        }
    }
    1
}

fn insert_sql(route: &PgRoute, columns: &[usize], rows: usize, upsert: bool) -> String {
    let names: Vec<&str> = columns
        .iter()
        .map(|&c| route.columns[c].quoted.as_str())
        .collect();
    let mut sql = format!(
        "INSERT INTO {} ({}) VALUES ",
        route.quoted,
        names.join(", ")
    );
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for (i, &c) in columns.iter().enumerate() {
            n += 1;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&route.columns[c].placeholder(n));
        }
        sql.push(')');
    }
    if upsert {
        let key: Vec<&str> = route
            .key
            .iter()
            .map(|&k| route.columns[k].quoted.as_str())
            .collect();
        let set: Vec<String> = columns
            .iter()
            .filter(|c| !route.key.contains(c))
            .map(|&c| {
                let q = &route.columns[c].quoted;
                format!("{q} = EXCLUDED.{q}")
            })
            .collect();
        sql.push_str(&format!(" ON CONFLICT ({}) ", key.join(", ")));
        if set.is_empty() {
            sql.push_str("DO NOTHING");
        } else {
            sql.push_str(&format!("DO UPDATE SET {}", set.join(", ")));
        }
    }
    sql
}

/// A value encoded for one target column, in PostgreSQL's binary format.
#[derive(Debug, Clone)]
pub(super) enum PgParam<'a> {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Numeric(Cow<'a, str>),
    Text(Cow<'a, str>),
    Jsonb(&'a str),
    Bytes(&'a [u8]),
    Date(NaiveDate),
    /// Microseconds since midnight.
    Time(i64),
    /// Microseconds (no days or months).
    Interval(i64),
    Timestamp(NaiveDateTime),
    TimestampTz(DateTime<Utc>),
    Uuid(Uuid),
}

impl PgParam<'_> {
    /// Approximate encoded size, for sizing multi-row INSERTs.
    fn size(&self) -> usize {
        match self {
            PgParam::Numeric(s) | PgParam::Text(s) => s.len(),
            PgParam::Jsonb(s) => s.len(),
            PgParam::Bytes(b) => b.len(),
            _ => 8,
        }
    }
}

/// Microseconds in a day: PostgreSQL `time` goes up to and including 24:00:00.
const DAY_MICROS: i64 = 86_400_000_000;

/// Converts a canonical value for a target column, refusing what the column cannot hold
/// exactly.
pub(super) fn to_param<'a>(
    value: &'a Value,
    column: &PgColumn,
    table: &TableName,
) -> Result<PgParam<'a>, ApplyError> {
    let refuse =
        |reason: &str| ApplyError::refuse(table, &column.target, value, &column.declared, reason);
    let int_range = || refuse("out of the column's range");
    let text = |s: &'a str| {
        if s.contains('\0') {
            Err(refuse("PostgreSQL text cannot contain the character 0x00"))
        } else {
            Ok(s)
        }
    };
    use PgKind as K;
    Ok(match (column.kind, value) {
        (_, Value::Null) => PgParam::Null,
        (_, Value::Unchanged) => return Err(refuse("an Unchanged value cannot be written")),
        (K::Bool, Value::Bool(b)) => PgParam::Bool(*b),
        (K::Bool, Value::Int(i @ (0 | 1))) => PgParam::Bool(*i == 1),
        (K::Bool, Value::UInt(u @ (0 | 1))) => PgParam::Bool(*u == 1),
        (K::Int2 | K::Int4 | K::Int8, Value::Bool(b)) => bool_as_int(column.kind, *b),
        (K::Int2, Value::Int(i)) => PgParam::I16(i16::try_from(*i).map_err(|_| int_range())?),
        (K::Int2, Value::UInt(u)) => PgParam::I16(i16::try_from(*u).map_err(|_| int_range())?),
        (K::Int4, Value::Int(i)) => PgParam::I32(i32::try_from(*i).map_err(|_| int_range())?),
        (K::Int4, Value::UInt(u)) => PgParam::I32(i32::try_from(*u).map_err(|_| int_range())?),
        (K::Int8, Value::Int(i)) => PgParam::I64(*i),
        (K::Int8, Value::UInt(u)) => PgParam::I64(i64::try_from(*u).map_err(|_| int_range())?),
        (K::Numeric, Value::Int(i)) => PgParam::Numeric(Cow::Owned(i.to_string())),
        (K::Numeric, Value::UInt(u)) => PgParam::Numeric(Cow::Owned(u.to_string())),
        (K::Numeric, Value::Decimal(d)) => {
            if let Some(scale) = column.scale
                && d.normalized().scale() > scale
            {
                return Err(refuse(&format!(
                    "{d} has more than {scale} decimal places and would be rounded"
                )));
            }
            PgParam::Numeric(Cow::Borrowed(d.as_str()))
        }
        (K::Float4, Value::Float(f)) => {
            let narrow = *f as f32;
            if !f.is_nan() && f64::from(narrow) != *f {
                return Err(refuse(&format!(
                    "{f} is not exactly a 32-bit float (use float8)"
                )));
            }
            PgParam::F32(narrow)
        }
        (K::Float8, Value::Float(f)) => PgParam::F64(*f),
        (K::Text | K::Json | K::Cast, Value::Text(s) | Value::Json(s)) => {
            PgParam::Text(Cow::Borrowed(text(s)?))
        }
        (K::Text | K::Cast, Value::Uuid(u)) => PgParam::Text(Cow::Owned(u.to_string())),
        (K::Cast, Value::Int(i)) => PgParam::Text(Cow::Owned(i.to_string())),
        (K::Cast, Value::UInt(u)) => PgParam::Text(Cow::Owned(u.to_string())),
        (K::Cast, Value::Decimal(d)) => PgParam::Text(Cow::Borrowed(d.as_str())),
        (K::Cast, Value::Bool(b)) => {
            PgParam::Text(Cow::Borrowed(if *b { "true" } else { "false" }))
        }
        (K::Jsonb, Value::Text(s) | Value::Json(s)) => PgParam::Jsonb(text(s)?),
        (K::Bytea, Value::Bytes(b)) => PgParam::Bytes(b),
        (K::Date, Value::Date(d)) => PgParam::Date(*d),
        (K::Time, Value::Time(us)) => {
            if !(0..=DAY_MICROS).contains(us) {
                return Err(refuse("outside 00:00:00..=24:00:00 (use interval)"));
            }
            PgParam::Time(*us)
        }
        (K::Interval, Value::Time(us)) => PgParam::Interval(*us),
        (K::Timestamp, Value::Timestamp(t)) => PgParam::Timestamp(*t),
        (K::Timestamp, Value::TimestampTz(t)) => PgParam::Timestamp(t.naive_utc()),
        (K::TimestampTz, Value::TimestampTz(t)) => PgParam::TimestampTz(*t),
        (K::TimestampTz, Value::Timestamp(t)) => PgParam::TimestampTz(t.and_utc()),
        (K::Uuid, Value::Uuid(u)) => PgParam::Uuid(*u),
        (K::Uuid, Value::Text(s)) => {
            PgParam::Uuid(Uuid::parse_str(s).map_err(|_| refuse("not a UUID"))?)
        }
        _ => return Err(refuse("no conversion between these types")),
    })
}

/// A boolean written into an integer column, as 0 or 1.
fn bool_as_int(kind: PgKind, b: bool) -> PgParam<'static> {
    match kind {
        PgKind::Int2 => PgParam::I16(i16::from(b)),
        PgKind::Int4 => PgParam::I32(i32::from(b)),
        _ => PgParam::I64(i64::from(b)),
    }
}

impl ToSql for PgParam<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            PgParam::Null => return Ok(IsNull::Yes),
            PgParam::Bool(b) => out.put_u8(u8::from(*b)),
            PgParam::I16(i) => out.put_i16(*i),
            PgParam::I32(i) => out.put_i32(*i),
            PgParam::I64(i) => out.put_i64(*i),
            PgParam::F32(f) => out.put_f32(*f),
            PgParam::F64(f) => out.put_f64(*f),
            PgParam::Numeric(text) => encode_numeric(text, out)?,
            PgParam::Text(s) => out.put_slice(s.as_bytes()),
            PgParam::Jsonb(s) => {
                out.put_u8(1);
                out.put_slice(s.as_bytes());
            }
            PgParam::Bytes(b) => out.put_slice(b),
            PgParam::Date(d) => return d.to_sql(ty, out),
            PgParam::Time(us) => out.put_i64(*us),
            PgParam::Interval(us) => {
                out.put_i64(*us);
                out.put_i32(0);
                out.put_i32(0);
            }
            PgParam::Timestamp(t) => return t.to_sql(ty, out),
            PgParam::TimestampTz(t) => return t.to_sql(ty, out),
            PgParam::Uuid(u) => out.put_slice(u.as_bytes()),
        }
        Ok(IsNull::No)
    }

    /// The conversion to the column's type was decided (and checked) by [`to_param`] from the
    /// target schema, so any server-inferred parameter type is accepted here.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Writes decimal text as PostgreSQL's binary `numeric`: digit count, weight (of the first
/// base-10000 digit), sign, display scale, then the base-10000 digits.
fn encode_numeric(text: &str, out: &mut BytesMut) -> Result<(), Box<dyn Error + Sync + Send>> {
    const POSITIVE: u16 = 0x0000;
    const NEGATIVE: u16 = 0x4000;
    let special = match text {
        "NaN" => Some(0xC000),
        "Infinity" => Some(0xD000),
        "-Infinity" => Some(0xF000),
        _ => None,
    };
    if let Some(sign) = special {
        out.put_i16(0);
        out.put_i16(0);
        out.put_u16(sign);
        out.put_u16(0);
        return Ok(());
    }
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not a decimal number").into());
    }
    let int = int.trim_start_matches('0');
    let scale = u16::try_from(frac.len()).map_err(|_| "numeric scale too large")?;
    let mut digits: Vec<i16> = Vec::with_capacity(int.len() / 4 + frac.len() / 4 + 2);
    let lead = (4 - int.len() % 4) % 4;
    let padded_int: String = "0".repeat(lead) + int;
    for group in padded_int.as_bytes().chunks(4) {
        digits.push(group_value(group));
    }
    let int_groups = digits.len();
    let trail = (4 - frac.len() % 4) % 4;
    let padded_frac: String = frac.to_owned() + &"0".repeat(trail);
    for group in padded_frac.as_bytes().chunks(4) {
        digits.push(group_value(group));
    }
    let mut weight = i32::try_from(int_groups).map_err(|_| "numeric too large")? - 1;
    let leading_zeros = digits.iter().take_while(|d| **d == 0).count();
    digits.drain(..leading_zeros);
    weight -= i32::try_from(leading_zeros).map_err(|_| "numeric too large")?;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    let sign = if negative && !digits.is_empty() {
        NEGATIVE
    } else {
        POSITIVE
    };
    if digits.is_empty() {
        weight = 0;
    }
    out.put_i16(i16::try_from(digits.len()).map_err(|_| "numeric too long")?);
    out.put_i16(i16::try_from(weight).map_err(|_| "numeric out of range")?);
    out.put_u16(sign);
    out.put_u16(scale);
    for d in digits {
        out.put_i16(d);
    }
    Ok(())
}

fn group_value(group: &[u8]) -> i16 {
    group
        .iter()
        .fold(0i16, |acc, b| acc * 10 + i16::from(b - b'0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(text: &str) -> (i16, i16, u16, u16, Vec<i16>) {
        let mut out = BytesMut::new();
        encode_numeric(text, &mut out).unwrap();
        let w: Vec<i16> = out
            .chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect();
        (w[0], w[1], w[2] as u16, w[3] as u16, w[4..].to_vec())
    }

    #[test]
    fn numerics_encode_in_base_10000() {
        assert_eq!(numeric("0"), (0, 0, 0, 0, vec![]));
        assert_eq!(numeric("0.000"), (0, 0, 0, 3, vec![]));
        assert_eq!(numeric("0.5"), (1, -1, 0, 1, vec![5000]));
        assert_eq!(numeric("12345.678"), (3, 1, 0, 3, vec![1, 2345, 6780]));
        assert_eq!(numeric("-10000"), (1, 1, 0x4000, 0, vec![1]));
        assert_eq!(numeric("0.00001"), (1, -2, 0, 5, vec![1000]));
        assert_eq!(numeric("NaN"), (0, 0, 0xC000, 0, vec![]));
    }
}
