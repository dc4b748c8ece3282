//! The PostgreSQL applier: writes source transactions into PostgreSQL tables, exactly once.
//! The protocol, and why it is exactly once, is [`crate::apply`]'s, written once in
//! [`ExactlyOnce`]; this module is its PostgreSQL [`TargetSession`] ([`PgSession`]): the
//! connection, transaction control, the statements and the values. The SQL of
//! `duplex.positions` is in [`super::positions`].
//!
//! # Parameters
//!
//! Values are bound as parameters in PostgreSQL's binary format, encoded for the target
//! column's actual type and checked against it first: see [`super::param`].
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
//! # Long runs of inserts
//!
//! A run of at least 128 consecutive inserts into one table with one column set (a backlog of
//! small transactions grouped into one batch, or a large transaction) is written with one
//! binary `COPY ... FROM STDIN` instead ([`super::copy`]): the values are encoded exactly as for
//! an INSERT, streamed while the server stores the rows (rather than one multi-row INSERT's
//! round trip after another, each waiting for the previous), and the server's per-row cost is
//! lower. COPY inserts like INSERT: the same constraints, triggers (none under
//! `session_replication_role = replica`) and unique violations, which fail the batch the same
//! way (the link then locates the refused change by applying alone, see `duplex` `link`).
//! Not for an upserting or conditional applier, nor for a column bound as text.
//!
//! An upserting applier ([`ApplyOptions::upsert`], the backfill's `--allow-nonempty`) writes
//! `INSERT ... ON CONFLICT (<primary key>) DO UPDATE`: only a conflict on the primary key
//! becomes an update, so a row meeting another row on a secondary unique index fails
//! ([`ApplyError::UniqueCollision`]) instead of being written over it.
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
//! The session remembers whether one is open; an error, or a call dropped halfway, is followed
//! by a `ROLLBACK` before anything else runs on the connection.
//!
//! # Foreign keys
//!
//! Every session (after each reconnect too) first tries `SET session_replication_role =
//! replica`, which turns foreign-key checks and referential actions off in it (and ordinary
//! triggers: see [`crate::foreign_keys`] for why that is the replica's contract). A role that
//! may not set it (neither superuser nor granted `SET ON PARAMETER session_replication_role`)
//! keeps the checks, and every target transaction then starts with `SET CONSTRAINTS ALL
//! DEFERRED` in the same round trip as its `BEGIN`, so `DEFERRABLE` keys are checked at commit;
//! the events are written in the source's order either way.
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

use std::collections::HashMap;
use std::pin::Pin;
use std::task::Poll;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::apply::{
    ApplyError, ApplyOptions, ExactlyOnce, SkippedWrite, TableRoute, TargetSession,
    declared_length, declared_scale, same_insert_shape, skipped_write, unique_collision,
};
use crate::bulk::{BulkRows, BulkShape};
use crate::foreign_keys::ForeignKeyChecks;
use crate::{ChangeEvent, Column, Op, Position, TableName};

use super::param::{PgParam, to_param};
use super::sql::{conditional_sql, insert_sql};
use super::{PgError, connect, describe_table, positions, quote_ident, reorder};

/// Rows per multi-row INSERT, largest first; every run is split into these sizes.
const INSERT_CHUNKS: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];
/// Rough upper bound on the parameter bytes of one multi-row INSERT.
const INSERT_BYTES: usize = 4 << 20;
/// Inserts in a run from which it is written with one binary COPY (see "Long runs of
/// inserts").
const COPY_ROWS: usize = 128;
/// Updates and deletes sent together before their answers are awaited.
const PIPELINE: usize = 256;
/// Prepared statements kept per connection before the cache is emptied.
const STATEMENT_CACHE: usize = 512;

/// A PostgreSQL applier: the exactly-once protocol of [`crate::apply`] over a [`PgSession`].
pub type PgApplier = ExactlyOnce<PgSession>;

/// One connection to a PostgreSQL target and the routes written through it: the
/// [`TargetSession`] of [`PgApplier`].
pub struct PgSession {
    url: String,
    password: Option<String>,
    client: Client,
    routes: HashMap<TableName, PgRoute>,
    statements: HashMap<String, Statement>,
    options: ApplyOptions,
    /// Whether a target transaction is open on `client` (BEGIN sent, no COMMIT/ROLLBACK yet).
    in_transaction: bool,
    /// Whether this session checks foreign keys (see the module docs).
    foreign_key_checks: ForeignKeyChecks,
}

/// A route resolved against the target table's schema.
pub(super) struct PgRoute {
    pub(super) target: TableName,
    pub(super) quoted: String,
    pub(super) columns: Vec<PgColumn>,
    /// Indexes into `columns` of the key columns.
    pub(super) key: Vec<usize>,
    /// Whether the key is the table's only unique index, with no exclusion constraint, and
    /// the table is neither partitioned nor inherited from, as the catalog last said (at
    /// connect, and at every reordered batch): then changes of distinct rows commute (see
    /// [`super::reorder`]), and only then are updates of several rows one statement.
    pub(super) keyed: bool,
}

/// One written column.
pub(super) struct PgColumn {
    pub(super) source: String,
    pub(super) target: String,
    pub(super) quoted: String,
    pub(super) declared: String,
    pub(super) kind: PgKind,
    pub(super) scale: Option<usize>,
    /// `GENERATED ALWAYS AS IDENTITY` (always a key column of the route, see [`resolve`]):
    /// an INSERT names it only with `OVERRIDING SYSTEM VALUE` (COPY always writes it), and an
    /// UPDATE never sets it.
    pub(super) identity_always: bool,
}

/// The target columns PostgreSQL fills itself, of the table with oid `$1`: name, `attidentity`
/// (`a`: `GENERATED ALWAYS AS IDENTITY`, `d`: `BY DEFAULT`) and `attgenerated` (`s`: a stored
/// generated column; read through `to_jsonb` because servers before PostgreSQL 12 have no
/// such column).
const FILLED_COLUMNS: &str = "SELECT a.attname::text, a.attidentity::text, \
     coalesce(to_jsonb(a) ->> 'attgenerated', '') FROM pg_attribute a \
     WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
     AND (a.attidentity <> '' OR coalesce(to_jsonb(a) ->> 'attgenerated', '') <> '')";

/// The target columns of a table PostgreSQL fills itself: `GENERATED ALWAYS AS IDENTITY`
/// ones and stored generated ones, by name.
#[derive(Debug, Default)]
struct FilledColumns {
    identity_always: Vec<String>,
    generated: Vec<String>,
}

async fn filled_columns(client: &Client, oid: u32) -> Result<FilledColumns, ApplyError> {
    let rows = client
        .query(FILLED_COLUMNS, &[&oid])
        .await
        .map_err(PgError::query(
            "reading a target table's identity and generated columns",
        ))?;
    let mut filled = FilledColumns::default();
    for row in rows {
        let name: String = row.get(0);
        if row.get::<_, String>(2) == "s" {
            filled.generated.push(name);
        } else if row.get::<_, String>(1) == "a" {
            filled.identity_always.push(name);
        }
    }
    Ok(filled)
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
    /// `bit(n)` (`varying: false`) or `varbit(n)`; `len` is n (`None`: no limit). Bound as
    /// text with `$n::text::varbit`, so the column's own assignment cast refuses a wrong
    /// length instead of padding or truncating (an explicit cast to `bit(n)` would).
    Bits {
        len: Option<usize>,
        varying: bool,
    },
    /// A one-dimensional array, bound as its array literal with `$n::text::<element type
    /// without modifiers>[]` (an explicit cast to `varchar(n)[]` would truncate).
    Array,
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
            "bit" | "varbit" => PgKind::Bits {
                len: declared_length(&column.declared),
                varying: column.type_name == "varbit",
            },
            "array" => PgKind::Array,
            "composite" => return None,
            _ => PgKind::Cast,
        })
    }

    /// Whether values are bound as text and cast (no binary encoder: COPY cannot take them).
    pub(super) fn bound_as_text(self) -> bool {
        matches!(self, PgKind::Cast | PgKind::Bits { .. } | PgKind::Array)
    }
}

/// An array's element type without its modifiers, as a type that takes any element of the
/// declared one unchanged: `character varying(10)[]` -> `character varying`, `bit(3)[]` ->
/// `varbit` and `character(5)[]` -> `bpchar` (a bare `bit` or `character` means length 1).
fn unmodified_element(declared: &str) -> String {
    let mut out = String::with_capacity(declared.len());
    let mut depth = 0;
    for c in declared.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    let element = out.trim_end_matches("[]").trim();
    match element {
        "bit" => "varbit".to_owned(),
        "character" => "bpchar".to_owned(),
        other => other.to_owned(),
    }
}

impl PgColumn {
    /// The placeholder for parameter `n` (1-based).
    pub(super) fn placeholder(&self, n: usize) -> String {
        match self.kind {
            PgKind::Cast => format!("${n}::text::{}", self.declared),
            PgKind::Bits { .. } => format!("${n}::text::varbit"),
            PgKind::Array => format!("${n}::text::{}[]", unmodified_element(&self.declared)),
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
        let foreign_key_checks = relax_foreign_keys(&client).await?;
        positions::ensure_table(&client).await?;
        let mut resolved = HashMap::new();
        for route in routes {
            let info = describe_table(&client, &route.target).await?;
            let filled = match &info {
                Some(info) => filled_columns(&client, info.oid).await?,
                None => FilledColumns::default(),
            };
            let source = route.source.clone();
            resolved.insert(
                source,
                resolve(route, info.map(|i| i.schema.columns), &filled)?,
            );
        }
        let tables: Vec<&PgRoute> = resolved.values().collect();
        let keyed = reorder::read_catalog(&client, &tables, false).await?.keyed;
        for route in resolved.values_mut() {
            route.keyed = keyed.contains(&route.target);
        }
        Ok(ExactlyOnce::new(PgSession {
            url: url.to_owned(),
            password: password.map(str::to_owned),
            client,
            routes: resolved,
            statements: HashMap::new(),
            options,
            in_transaction: false,
            foreign_key_checks,
        }))
    }
}

/// Turns foreign-key checks off in this session if the role may (`session_replication_role =
/// replica`, see the module docs); says which way it went. Only a refusal for lack of
/// privilege means "checks stay on": any other error is one.
pub(super) async fn relax_foreign_keys(client: &Client) -> Result<ForeignKeyChecks, PgError> {
    match client
        .batch_execute("SET session_replication_role = replica")
        .await
    {
        Ok(()) => Ok(ForeignKeyChecks::Off {
            setting: "session_replication_role = replica",
        }),
        Err(error)
            if error.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
        {
            Ok(ForeignKeyChecks::On)
        }
        Err(source) => Err(PgError::Query {
            doing: "setting session_replication_role on the applying session",
            source,
        }),
    }
}

impl PgSession {
    /// Reconnects when the connection was lost (a previous apply failed transiently).
    async fn reconnect_if_closed(&mut self) -> Result<(), ApplyError> {
        if self.client.is_closed() {
            self.client = connect(&self.url, self.password.as_deref()).await?;
            self.foreign_key_checks = relax_foreign_keys(&self.client).await?;
            self.statements.clear();
            self.in_transaction = false;
        }
        Ok(())
    }

    /// The writer of the events of the open target transaction.
    fn writer(&mut self) -> Writer<'_> {
        Writer {
            session: &self.client,
            routes: &self.routes,
            statements: &mut self.statements,
            options: self.options,
        }
    }
}

/// Checks a route against the target table's columns.
fn resolve(
    route: TableRoute,
    columns: Option<Vec<Column>>,
    filled: &FilledColumns,
) -> Result<PgRoute, ApplyError> {
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
        if filled.generated.contains(target) {
            return Err(fail(format!(
                "column {target:?} is a generated column, which PostgreSQL computes and no \
                 write may set: leave it out of the mapping"
            )));
        }
        columns.push(PgColumn {
            source: source.clone(),
            target: target.clone(),
            quoted: quote_ident(target),
            declared: column.declared.clone(),
            kind,
            scale: declared_scale(&column.declared),
            identity_always: filled.identity_always.contains(target),
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
    // PostgreSQL lets an UPDATE set a GENERATED ALWAYS identity column only to DEFAULT. A key
    // column keeps its value in every update duplex writes (a key change is refused for it),
    // so it is left out of the SET lists; a column outside the key could not be kept.
    if let Some(c) = (0..columns.len()).find(|c| columns[*c].identity_always && !key.contains(c)) {
        return Err(fail(format!(
            "column {:?} is GENERATED ALWAYS AS IDENTITY but not the key, and PostgreSQL does \
             not let an update set it: leave it out of the mapping, or let writes set it \
             (ALTER TABLE ... ALTER COLUMN ... SET GENERATED BY DEFAULT)",
            columns[c].target
        )));
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
        keyed: false,
    })
}

impl TargetSession for PgSession {
    async fn begin(&mut self) -> Result<(), ApplyError> {
        self.reconnect_if_closed().await?;
        self.in_transaction = true;
        let begin = match self.foreign_key_checks {
            ForeignKeyChecks::Off { .. } => "BEGIN",
            ForeignKeyChecks::On => "BEGIN; SET CONSTRAINTS ALL DEFERRED",
        };
        self.client
            .batch_execute(begin)
            .await
            .map_err(PgError::query("starting the target transaction"))?;
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), ApplyError> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(PgError::query("committing the target transaction"))?;
        self.in_transaction = false;
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), ApplyError> {
        self.client
            .batch_execute("ROLLBACK")
            .await
            .map_err(PgError::query("ending the target transaction"))?;
        self.in_transaction = false;
        Ok(())
    }

    async fn rollback_open(&mut self) {
        if !self.in_transaction {
            return;
        }
        if let Err(error) = self.client.batch_execute("ROLLBACK").await {
            tracing::debug!(%error, "rolling back a failed apply failed too");
        }
        self.in_transaction = false;
    }

    /// Every failure rolls back on the same connection; a lost one is replaced by the next
    /// `begin`.
    async fn abandon(&mut self, _error: &ApplyError) {
        self.rollback_open().await;
    }

    async fn locked_position(&mut self, site: &str) -> Result<Option<Position>, ApplyError> {
        positions::locked(&self.client, site).await
    }

    async fn record(
        &mut self,
        site: &str,
        position: &Position,
        update: bool,
    ) -> Result<(), ApplyError> {
        positions::record(&self.client, site, position, update).await
    }

    async fn ensure_claims(&mut self) -> Result<(), ApplyError> {
        self.reconnect_if_closed().await?;
        positions::ensure_claims(&self.client).await
    }

    async fn locked_claim(&mut self, scope: &str) -> Result<Option<String>, ApplyError> {
        positions::locked_claim(&self.client, scope).await
    }

    async fn record_claim(
        &mut self,
        scope: &str,
        deployment: &str,
        update: bool,
    ) -> Result<(), ApplyError> {
        positions::record_claim(&self.client, scope, deployment, update).await
    }

    async fn write_events(
        &mut self,
        events: &[&ChangeEvent],
    ) -> Result<Vec<SkippedWrite>, ApplyError> {
        let conditional = self.options.conditional;
        if conditional {
            return self.writer().write_conditional(events).await;
        }
        if events.len() >= reorder::REORDER_MIN
            && reorder::enabled()
            && !self.options.upsert
            && matches!(self.foreign_key_checks, ForeignKeyChecks::Off { .. })
        {
            let mut tables: Vec<&PgRoute> = Vec::new();
            for event in events {
                let route = self
                    .routes
                    .get(&event.table)
                    .ok_or_else(|| ApplyError::NoRoute(event.table.clone()))?;
                if !tables.iter().any(|t| t.target == route.target) {
                    tables.push(route);
                }
            }
            let catalog = reorder::read_catalog(&self.client, &tables, true).await?;
            for route in self.routes.values_mut() {
                if catalog.read.contains(&route.target) {
                    route.keyed = catalog.keyed.contains(&route.target);
                }
            }
            let ordered = reorder::order(events, &self.routes, &catalog);
            self.writer().write_all(&ordered).await?;
            return Ok(Vec::new());
        }
        self.writer().write_all(events).await?;
        Ok(Vec::new())
    }

    /// Binary COPY where the options and columns allow it (see [`super::copy`]).
    async fn load_events(
        &mut self,
        events: &[&ChangeEvent],
    ) -> Result<Vec<SkippedWrite>, ApplyError> {
        if self.options.upsert || self.options.conditional {
            return self.write_events(events).await;
        }
        self.writer().load_all(events).await?;
        Ok(Vec::new())
    }

    async fn takes_bulk(&mut self, shape: &BulkShape) -> Result<bool, ApplyError> {
        self.reconnect_if_closed().await?;
        self.writer().takes_bulk(shape).await
    }

    async fn load_bulk(&mut self, rows: &BulkRows) -> Result<(), ApplyError> {
        self.writer().load_bulk(rows).await
    }

    async fn position(&mut self, site: &str) -> Result<Option<Position>, ApplyError> {
        self.reconnect_if_closed().await?;
        positions::committed(&self.client, site).await
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
                        && (same_insert_shape(event, events[end])
                            || insert_columns(route, events[end])? == columns)
                    {
                        end += 1;
                    }
                    let run = &events[i..end];
                    if self.copies(route, &columns, run.len()) {
                        self.copy_run(route, &columns, run).await?;
                    } else {
                        self.insert_run(route, &columns, run).await?;
                    }
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

    /// Whether a run of `rows` inserts carrying `columns` is written with one binary COPY
    /// rather than multi-row INSERTs: long enough to pay for the COPY's round trip, not
    /// upserting (COPY cannot resolve a conflict), every column binary-encodable.
    fn copies(&self, route: &PgRoute, columns: &[usize], rows: usize) -> bool {
        rows >= COPY_ROWS
            && !self.options.upsert
            && !columns
                .iter()
                .any(|&c| route.columns[c].kind.bound_as_text())
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
        let mut done = 0;
        while !rest.is_empty() {
            let n = chunk_len(rest);
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let sql = insert_sql(route, columns, n, self.options.upsert);
            let params: Vec<PgParam<'_>> = chunk.iter().flatten().cloned().collect();
            match self.execute(route, Op::Insert, sql, &params).await {
                // `ON CONFLICT (<primary key>)` takes the primary key's conflicts, so this is
                // another unique index: never written over, refused by name.
                Err(error) if self.options.upsert && is_unique_violation(&error) => {
                    return Err(unique_collision(
                        &route.target,
                        &events[done..done + n],
                        route.key.iter().map(|&k| route.columns[k].source.as_str()),
                        error,
                    ));
                }
                result => result?,
            };
            done += n;
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
}

/// Polls `futures` together, so tokio-postgres sends all their requests before it waits for
/// the first answer (one round trip for the lot), and returns their outputs in order.
pub(super) async fn pipelined<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
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

/// Whether a row write failed on a unique index (`unique_violation`).
fn is_unique_violation(error: &ApplyError) -> bool {
    matches!(
        error,
        ApplyError::PgWrite { source: PgError::Query { source, .. }, .. }
            if source.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_casts_drop_modifiers_that_would_truncate() {
        assert_eq!(
            unmodified_element("character varying(10)[]"),
            "character varying"
        );
        assert_eq!(unmodified_element("bit(3)[]"), "varbit");
        assert_eq!(unmodified_element("character(5)[]"), "bpchar");
        assert_eq!(unmodified_element("numeric(12,2)[]"), "numeric");
        assert_eq!(
            unmodified_element("timestamp(3) without time zone[]"),
            "timestamp without time zone"
        );
        assert_eq!(unmodified_element("integer[][]"), "integer");
        assert_eq!(unmodified_element("public.mood[]"), "public.mood");
    }
}
