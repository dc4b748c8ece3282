//! `duplex backfill`: the initial load of mapped tables, handing over to `duplex run` with no
//! gap and no duplicate.
//!
//! # Handover
//!
//! Per source site, all selected mappings are copied from ONE consistent snapshot taken
//! together with the stream position it matches:
//!
//! - PostgreSQL: the publication `duplex_<db>_<site>` is made to list the mapped tables first
//!   (pgoutput decodes with the catalog as of each change, so it must exist before the slot's
//!   start), then the slot `duplex run` uses is created with `SNAPSHOT 'export'`; every copy
//!   worker imports the exported snapshot, and the session that exported it stays open and
//!   idle until every worker has imported it.
//! - MariaDB/MySQL: `START TRANSACTION WITH CONSISTENT SNAPSHOT` and the matching binlog
//!   position (`binlog_snapshot_file/position`). MariaDB cannot share that snapshot between
//!   connections, so the one snapshot connection reads every range (serialised) while the
//!   writes into the targets run on `--jobs` parallel workers. One snapshot for everything
//!   keeps a single handover position; the alternative, one snapshot per worker, would give
//!   every range its own position and force a catch-up on every backfill.
//!
//! Once every range is copied, the snapshot position `P` is written as the source's position
//! in `duplex.positions` on every target (an applier `apply` of an empty transaction at `P`,
//! which records the position and nothing else). `duplex run` starts each link at the lowest
//! position its targets hold, so it streams exactly the transactions committed after the
//! snapshot: the snapshot holds every transaction whose commit ends at or before `P`, the
//! stream every one ending after it.
//!
//! # Ranges and exactly-once copying
//!
//! Every table is split into ranges of `chunk` rows, `lo < key <= hi`, the bounds being every
//! `chunk`-th primary key of the snapshot, numbered by the source server (`row_number() OVER
//! (ORDER BY <key>)`, only the bounds are sent back). A single integer key column is compared
//! as a number. Any other primary key (composite, text, uuid, dates, ...) is compared by the
//! source database as a row of its columns (PostgreSQL `(a, b) > (x, y)`; MariaDB the same
//! comparison spelled out as `a >= x AND (a > x OR (a = x AND b > y))` so that it reads by
//! index), so the order the bounds were taken in and the order of the range predicates are the
//! server's, with the columns' own collations: nothing is sorted or compared in Rust. A range
//! read in the snapshot the bounds come from holds at most `chunk` rows, so a copy worker never
//! holds more than one range; ranges of any key go to the `--jobs` workers alike. Only a key of
//! a type without a literal form or a consistent order (MariaDB ENUM/SET, floats, JSON) leaves
//! the table as one range, with a warning. Each range is written into each target in ONE target transaction through the
//! target's applier, and that transaction also records a marker row
//! `backfill:<mapping>:<range>` in `duplex.positions` holding the snapshot position the range
//! was read at. So a range is either entirely on a target together with its marker, or not at
//! all. The rows go by the target's bulk path: on PostgreSQL one binary
//! `COPY ... FROM STDIN` inside that transaction (`PgApplier::load`), on MySQL/MariaDB
//! multi-row INSERTs. `--allow-nonempty` upserts, which COPY cannot do, so with it PostgreSQL
//! targets are written with multi-row `INSERT ... ON CONFLICT DO UPDATE` (as are columns of
//! types duplex has no binary encoder for, e.g. `inet`).
//!
//! # Progress
//!
//! On a terminal (stderr), one progress bar per mapping: rows copied of the planned total,
//! rows/s and ETA. Otherwise a plain log line per mapping every 5 s. A summary at the end. The state store then records the range as
//! done (`mark_range_done`) and, in the same store transaction, the attempt it was copied in
//! (in the backfill record). Markers are deleted when the backfill completes.
//!
//! # Resume
//!
//! A killed backfill loses its snapshot (the exporting session, or the snapshot transaction,
//! died with the process), so the remaining ranges cannot be read at the old position `P0`.
//! A re-run takes a new snapshot at `P1` (PostgreSQL: through a TEMPORARY slot, so the
//! permanent slot stays at `P0` and keeps the WAL from there), copies only the ranges not done
//! (ranges done on a target but not yet in the store are recognised by their marker), and then
//! the data on the targets is a mix: ranges as of `P0`, ranges as of `P1`. It is made
//! consistent at `P1` by a catch-up: the source's stream is read from `P0` to `P1`, and each
//! change is applied (strictly, through the normal applier, which records the position) only
//! to rows whose range was copied at a position before that transaction's commit. The ranges
//! are defined once, at the first attempt, and stored in the backfill record (integer bounds,
//! or key values per column for other keys), so every attempt cuts the same ranges. For keys
//! other than one integer column, the range of a changed row's key is found by the source
//! database (the key is compared with the stored bounds as rows of a union with the table's
//! own columns, so with the same types and collations the ranges were read with). A range copied
//! at `Pk` holds exactly the source's rows as of `Pk`, so applying exactly the transactions
//! after `Pk` to it is exact; ranges copied at `P1` get nothing. A key-changing update between
//! ranges of different ages is split into the delete and the insert half that each range
//! needs. The handover position is then `P1`. If the catch-up is interrupted, the applier's
//! recorded position makes a re-run skip what it already applied. The backfill record keeps
//! every attempt's position, so any number of interruptions work the same way.
//!
//! # Not done here
//!
//! Version vectors for backfilled rows are not seeded: the merge engine does not exist yet.
//! A target that already holds a position for the source (it is streaming) is refused: the
//! position is per source site, so mappings of one source and target are backfilled together,
//! before `duplex run`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duplex_connectors::apply::{Applier, ApplyError, ApplyOptions, TableRoute};
use duplex_connectors::mysql::{
    self, MysqlApplier, MysqlSnapshot, MysqlStream, MysqlStreamConfig, StartPosition,
};
use duplex_connectors::postgres::{
    self, KeyRange, PgApplier, PgExportedSnapshot, PgSnapshotReader, PgStream, PgStreamConfig,
};
use duplex_connectors::{
    ChangeEvent, Column, Op, Origin, Position, Row, SiteKind, TableName, TableSchema, Transaction,
    Value,
};
use duplex_state::StateStore;
use indicatif::{MultiProgress, ProgressBar, ProgressState, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;

use crate::config::{Config, Direction, Mapping, Site};
use duplex_connectors::StreamItem;
use duplex_connectors::postgres::slot_name;

/// Default rows per range.
pub const DEFAULT_CHUNK_ROWS: u64 = 10_000;

/// What `duplex backfill` was asked to do.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// Mapping names; empty means all.
    pub mappings: Vec<String>,
    /// The source site for two-way mappings.
    pub from: Option<String>,
    /// Parallel copy workers.
    pub jobs: usize,
    /// Upsert into targets that already hold rows instead of refusing them.
    pub allow_nonempty: bool,
    /// Rows per range.
    pub chunk_rows: u64,
}

/// Why a backfill failed.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// The request does not fit the configuration.
    #[error("{0}")]
    Invalid(String),
    /// A target cannot be backfilled as it is.
    #[error("{0}")]
    Refused(String),
    /// The state store failed.
    #[error("cannot use the state directory")]
    State(#[from] duplex_state::StateError),
    /// Reading the mapped tables failed.
    #[error("reading the mapped tables of site {site}")]
    Describe {
        /// Site.
        site: String,
        /// Cause.
        #[source]
        source: duplex_connectors::DescribeError,
    },
    /// Snapshot on PostgreSQL failed.
    #[error("snapshot of site {site}")]
    PgSnapshot {
        /// Site.
        site: String,
        /// Cause.
        #[source]
        source: postgres::PgSnapshotError,
    },
    /// Snapshot on MySQL failed.
    #[error("snapshot of site {site}")]
    MysqlSnapshot {
        /// Site.
        site: String,
        /// Cause.
        #[source]
        source: mysql::MysqlSnapshotError,
    },
    /// Writing into a target failed.
    #[error("writing into site {site}")]
    Apply {
        /// Site.
        site: String,
        /// Cause.
        #[source]
        source: ApplyError,
    },
    /// An administrative statement failed.
    #[error("{doing} on site {site}")]
    Admin {
        /// Site.
        site: String,
        /// What.
        doing: &'static str,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The catch-up stream failed.
    #[error("catching up from site {site}")]
    Stream {
        /// Site.
        site: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A worker crashed (a bug).
    #[error("a copy worker crashed: {0}")]
    Crashed(String),
}

/// The durable record of one mapping's backfill (state store, per mapping).
///
/// Ranges are cut one of two ways: on a single integer key column (`key_column`, bounds in
/// `ranges`), or on the whole primary key (`key_columns`, bounds as key values in
/// `key_ranges`; `ranges` is then empty). `key_columns` and `key_ranges` were appended to the
/// layout; records written before are read by [`load_meta`] through the old layout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackfillMeta {
    /// Source site.
    pub source: String,
    /// Source table.
    pub table: String,
    /// The integer key column ranges are cut on; `None`: `key_columns`, or one range.
    pub key_column: Option<String>,
    /// Range bounds by range id on `key_column`: `lo < key <= hi`.
    pub ranges: Vec<(Option<i128>, Option<i128>)>,
    /// Rows in the first snapshot.
    pub rows: u64,
    /// The snapshot position of every attempt, in order (JSON of [`Position`]).
    pub attempts: Vec<String>,
    /// Range id -> index of the attempt it was copied in.
    pub copied_in: BTreeMap<u64, u32>,
    /// Whether the handover position was written.
    pub complete: bool,
    /// The primary-key columns ranges are cut on when the key is not one integer column.
    pub key_columns: Vec<String>,
    /// Range bounds by range id on `key_columns`, one value per column: `lo < key <= hi`
    /// compared as rows by the source database.
    pub key_ranges: Vec<KeyBounds>,
}

/// The bounds of a range cut on the whole primary key: `(lo, hi)`, open when `None`.
pub type KeyBounds = (Option<Vec<Value>>, Option<Vec<Value>>);

/// The layout [`BackfillMeta`] had before `key_columns` and `key_ranges`.
#[derive(Deserialize)]
struct BackfillMetaV1 {
    source: String,
    table: String,
    key_column: Option<String>,
    ranges: Vec<(Option<i128>, Option<i128>)>,
    rows: u64,
    attempts: Vec<String>,
    copied_in: BTreeMap<u64, u32>,
    complete: bool,
}

/// Reads a mapping's backfill record, in the current layout or the one before.
pub fn load_meta(
    state: &StateStore,
    mapping: &str,
) -> Result<Option<BackfillMeta>, duplex_state::StateError> {
    match state.backfill_meta::<BackfillMeta>(mapping) {
        Ok(meta) => Ok(meta),
        Err(error) => match state.backfill_meta::<BackfillMetaV1>(mapping) {
            Ok(old) => Ok(old.map(|m| BackfillMeta {
                source: m.source,
                table: m.table,
                key_column: m.key_column,
                ranges: m.ranges,
                rows: m.rows,
                attempts: m.attempts,
                copied_in: m.copied_in,
                complete: m.complete,
                key_columns: Vec::new(),
                key_ranges: Vec::new(),
            })),
            Err(_) => Err(error),
        },
    }
}

impl BackfillMeta {
    /// Rows copied by attempt `attempt` (from the state store's progress).
    pub fn rows_copied_in(&self, done: &BTreeMap<u64, u64>, attempt: u32) -> u64 {
        self.copied_in
            .iter()
            .filter(|(_, a)| **a == attempt)
            .filter_map(|(range, _)| done.get(range))
            .sum()
    }

    /// The number of ranges.
    pub fn range_count(&self) -> usize {
        if self.key_columns.is_empty() {
            self.ranges.len()
        } else {
            self.key_ranges.len()
        }
    }

    fn attempt_position(&self, attempt: u32) -> Position {
        serde_json::from_str(&self.attempts[attempt as usize])
            .expect("attempt positions are written by this module")
    }

    fn range(&self, id: u64, schema: &TableSchema) -> KeyRange {
        let columns = |names: &[String]| {
            names
                .iter()
                .map(|n| {
                    schema.column(n).cloned().unwrap_or_else(|| Column {
                        name: n.clone(),
                        type_name: String::new(),
                        declared: String::new(),
                        nullable: false,
                    })
                })
                .collect::<Vec<_>>()
        };
        if !self.key_columns.is_empty() {
            let (lo, hi) = self.key_ranges[id as usize].clone();
            return KeyRange {
                columns: columns(&self.key_columns),
                lo,
                hi,
            };
        }
        let Some(column) = &self.key_column else {
            return KeyRange::whole();
        };
        let (lo, hi) = self.ranges[id as usize];
        let int = |b: i128| {
            vec![match i64::try_from(b) {
                Ok(i) => Value::Int(i),
                Err(_) => Value::UInt(u64::try_from(b).unwrap_or(u64::MAX)),
            }]
        };
        KeyRange {
            columns: columns(std::slice::from_ref(column)),
            lo: lo.map(int),
            hi: hi.map(int),
        }
    }

    /// The cut points of a table cut on `key_columns`: every range's upper bound but the last.
    fn cuts(&self) -> Vec<Vec<Value>> {
        self.key_ranges
            .iter()
            .filter_map(|(_, hi)| hi.clone())
            .collect()
    }

    /// The range of a key when the table is cut on one integer column or not at all; `None`
    /// for tables cut on `key_columns` (the source database classifies those: see
    /// [`KeyClassifier`]).
    fn range_of(&self, key: &Row) -> Option<u64> {
        if !self.key_columns.is_empty() {
            return None;
        }
        let Some(column) = &self.key_column else {
            return Some(0);
        };
        let k: i128 = match key.get(column)? {
            Value::Int(i) => i128::from(*i),
            Value::UInt(u) => i128::from(*u),
            _ => return None,
        };
        self.ranges
            .iter()
            .position(|(lo, hi)| lo.is_none_or(|lo| k > lo) && hi.is_none_or(|hi| k <= hi))
            .map(|i| i as u64)
    }
}

fn marker(mapping: &str, range: u64) -> String {
    format!("backfill:{mapping}:{range}")
}

/// The message for `duplex run` on a mapping that was never backfilled, if any: no target of
/// the mapping holds a position of its source and the state store has no backfill record.
pub async fn never_backfilled(config: &Config, state: &StateStore) -> Option<String> {
    let mut missing = Vec::new();
    for mapping in &config.mappings {
        let meta: Option<BackfillMeta> = load_meta(state, &mapping.name).ok().flatten();
        if meta.is_some() {
            continue;
        }
        if mapping.direction == crate::config::Direction::Both {
            // The merge engine records where it read each site in the state store.
            let read_before = mapping.tables.keys().any(|site| {
                state
                    .position::<duplex_connectors::Position>(site)
                    .ok()
                    .flatten()
                    .is_some()
            });
            if !read_before {
                missing.push(mapping.name.clone());
            }
            continue;
        }
        let mut any_position = false;
        for (from, to) in mapping.edges() {
            let Ok(routes) = routes(config, mapping, from, to).await else {
                return None;
            };
            match Writer::connect(&config.sites[to], routes, false).await {
                Ok(mut writer) => {
                    if writer.position(from).await.ok().flatten().is_some() {
                        any_position = true;
                    }
                }
                Err(_) => return None,
            }
        }
        if !any_position {
            missing.push(mapping.name.clone());
        }
    }
    if missing.is_empty() {
        return None;
    }
    let args: Vec<String> = missing.iter().map(|m| format!("--mapping {m}")).collect();
    Some(format!(
        "mapping(s) {} were never backfilled: their targets hold no position and there is no backfill record; \
         if their targets should hold the rows that already exist, stop and run `duplex backfill {}` first \
         (it copies the tables and sets the position run starts from)",
        missing.join(", "),
        args.join(" ")
    ))
}

async fn routes(
    config: &Config,
    mapping: &Mapping,
    from: &str,
    to: &str,
) -> Result<Vec<TableRoute>, BackfillError> {
    let site = &config.sites[from];
    let tables: BTreeSet<TableName> = mapping.tables.get(from).cloned().into_iter().collect();
    let schemas = duplex_connectors::describe(&site.connection(), &tables)
        .await
        .map_err(|source| BackfillError::Describe {
            site: from.to_owned(),
            source,
        })?;
    Ok(crate::routes::routes_for(
        std::slice::from_ref(mapping),
        from,
        to,
        &schemas,
    ))
}

/// An applier for the backfill: strict, or upserting for non-empty targets.
enum Writer {
    Postgres(Box<PgApplier>),
    Mysql(Box<MysqlApplier>),
}

impl Writer {
    async fn connect(
        site: &Site,
        routes: Vec<TableRoute>,
        upsert: bool,
    ) -> Result<Writer, ApplyError> {
        let password = site.password.as_ref().map(|p| p.expose());
        let options = ApplyOptions {
            upsert,
            ..ApplyOptions::default()
        };
        Ok(match site.kind {
            SiteKind::Postgres => Writer::Postgres(Box::new(
                PgApplier::connect(&site.url, password, routes, options).await?,
            )),
            SiteKind::Mysql => Writer::Mysql(Box::new(
                MysqlApplier::connect(&site.url, password, routes, options).await?,
            )),
        })
    }

    async fn apply(&mut self, batch: &[Transaction]) -> Result<(), ApplyError> {
        match self {
            Writer::Postgres(a) => a.apply(batch).await,
            Writer::Mysql(a) => a.apply(batch).await,
        }
    }

    /// Writes a transaction of inserts with the target's bulk path: binary COPY on PostgreSQL
    /// (INSERT ... ON CONFLICT when upserting), multi-row INSERTs on MySQL.
    async fn load(&mut self, txn: &Transaction) -> Result<(), ApplyError> {
        match self {
            Writer::Postgres(a) => a.load(txn).await,
            Writer::Mysql(a) => a.apply(std::slice::from_ref(txn)).await,
        }
    }

    async fn position(&mut self, source: &str) -> Result<Option<Position>, ApplyError> {
        match self {
            Writer::Postgres(a) => a.position(source).await,
            Writer::Mysql(a) => a.position(source).await,
        }
    }
}

/// One mapping being backfilled from the current source.
struct Job {
    mapping: Mapping,
    schema: TableSchema,
    targets: Vec<(Site, Vec<TableRoute>)>,
    meta: BackfillMeta,
}

/// Runs the backfill; prints a summary at the end.
pub async fn backfill(config: &Config, options: &BackfillOptions) -> Result<(), BackfillError> {
    for name in &options.mappings {
        if !config.mappings.iter().any(|m| &m.name == name) {
            return Err(BackfillError::Invalid(format!(
                "there is no mapping named {name:?} in the configuration"
            )));
        }
    }
    let selected: Vec<&Mapping> = config
        .mappings
        .iter()
        .filter(|m| options.mappings.is_empty() || options.mappings.contains(&m.name))
        .collect();
    let mut by_source: BTreeMap<String, Vec<&Mapping>> = BTreeMap::new();
    for mapping in selected {
        let from = match (&mapping.direction, &options.from) {
            (Direction::OneWay { from, .. }, None) => from.clone(),
            (Direction::OneWay { from, .. }, Some(asked)) if asked == from => from.clone(),
            (Direction::OneWay { from, .. }, Some(asked)) => {
                return Err(BackfillError::Invalid(format!(
                    "mapping {} copies from {from}, not from {asked}",
                    mapping.name
                )));
            }
            (Direction::Both, Some(asked)) if mapping.tables.contains_key(asked) => asked.clone(),
            (Direction::Both, _) => {
                return Err(BackfillError::Invalid(format!(
                    "mapping {} is two-way: say which site holds the data with --from <site>",
                    mapping.name
                )));
            }
        };
        by_source.entry(from).or_default().push(mapping);
    }
    let state = Arc::new(
        tokio::task::spawn_blocking({
            let dir = config.state_dir.clone();
            move || StateStore::open(&dir)
        })
        .await
        .map_err(|e| BackfillError::Crashed(e.to_string()))??,
    );
    let mut summary = Vec::new();
    for (source, mappings) in by_source {
        backfill_source(
            config,
            &config.sites[&source],
            &mappings,
            options,
            &state,
            &mut summary,
        )
        .await?;
    }
    eprintln!("backfill summary:");
    for (mapping, rows, elapsed) in &summary {
        let secs = elapsed.as_secs_f64().max(1e-9);
        eprintln!(
            "  {mapping}: {rows} rows in {secs:.1} s ({:.0} rows/s)",
            *rows as f64 / secs
        );
    }
    Ok(())
}

/// The snapshot of one source, shared by the copy workers.
enum Snapshot {
    Postgres { exported: PgExportedSnapshot },
    Mysql(Arc<Mutex<MysqlSnapshot>>),
}

async fn backfill_source(
    config: &Config,
    site: &Site,
    mappings: &[&Mapping],
    options: &BackfillOptions,
    state: &Arc<StateStore>,
    summary: &mut Vec<(String, u64, Duration)>,
) -> Result<(), BackfillError> {
    let password = site.password.as_ref().map(|p| p.expose().to_owned());
    let mut metas: BTreeMap<String, Option<BackfillMeta>> = BTreeMap::new();
    for mapping in mappings {
        let name = mapping.name.clone();
        let state = state.clone();
        let meta: Option<BackfillMeta> =
            tokio::task::spawn_blocking(move || load_meta(&state, &name))
                .await
                .map_err(|e| BackfillError::Crashed(e.to_string()))??;
        metas.insert(mapping.name.clone(), meta);
    }
    let pending: Vec<&Mapping> = mappings
        .iter()
        .copied()
        .filter(|m| {
            let complete = metas[&m.name].as_ref().is_some_and(|meta| meta.complete);
            if complete {
                tracing::info!(mapping = %m.name, "already backfilled: nothing to do (duplex run streams from its handover position)");
            }
            !complete
        })
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    let resuming = pending.iter().any(|m| metas[&m.name].is_some());
    let tables: BTreeSet<TableName> = pending
        .iter()
        .filter_map(|m| m.tables.get(&site.name).cloned())
        .collect();
    let schemas = duplex_connectors::describe(&site.connection(), &tables)
        .await
        .map_err(|source| BackfillError::Describe {
            site: site.name.clone(),
            source,
        })?;
    // Targets, their routes, and the checks.
    let mut jobs = Vec::new();
    for mapping in &pending {
        let table = &mapping.tables[&site.name];
        let mut targets = Vec::new();
        for (from, to) in mapping.edges() {
            if from != site.name {
                continue;
            }
            let target = &config.sites[to];
            let routes =
                crate::routes::routes_for(std::slice::from_ref(*mapping), &site.name, to, &schemas);
            if metas[&mapping.name].is_none() {
                check_target(target, &site.name, mapping, options.allow_nonempty, &routes).await?;
            }
            targets.push((target.clone(), routes));
        }
        jobs.push((mapping, table.clone(), targets));
    }

    // The snapshot.
    let (snapshot, position) = match site.kind {
        SiteKind::Postgres => {
            let slot = slot_name(&site.connection());
            let all_tables: Vec<TableName> = config
                .mappings
                .iter()
                .filter(|m| m.reads_from(&site.name))
                .filter_map(|m| m.tables.get(&site.name).cloned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let exported =
                pg_snapshot(site, password.as_deref(), &slot, &all_tables, resuming).await?;
            let position = Position::Postgres(exported.position);
            (Snapshot::Postgres { exported }, position)
        }
        SiteKind::Mysql => {
            let snap = MysqlSnapshot::open(&site.url, password.as_deref())
                .await
                .map_err(|source| BackfillError::MysqlSnapshot {
                    site: site.name.clone(),
                    source,
                })?;
            let position = Position::Mysql(snap.position.clone());
            (Snapshot::Mysql(Arc::new(Mutex::new(snap))), position)
        }
    };
    tracing::info!(source = %site.name, %position, "snapshot taken");
    let position_text = serde_json::to_string(&position).expect("positions serialise");

    // Plans (new mappings) and the new attempt.
    let mut planner = match &snapshot {
        Snapshot::Postgres { exported } => Planner::Postgres(
            PgSnapshotReader::open(&site.url, password.as_deref(), Some(&exported.name))
                .await
                .map_err(|source| BackfillError::PgSnapshot {
                    site: site.name.clone(),
                    source,
                })?,
        ),
        Snapshot::Mysql(conn) => Planner::Mysql(conn.clone()),
    };
    let mut all_jobs = Vec::new();
    for (mapping, table, targets) in jobs {
        let schema = schemas[&table].clone();
        let mut meta = match metas[&mapping.name].clone() {
            Some(meta) => meta,
            None => planner.plan(site, &schema, options.chunk_rows).await?,
        };
        meta.attempts.push(position_text.clone());
        let name = mapping.name.clone();
        let state = state.clone();
        let saved = meta.clone();
        tokio::task::spawn_blocking(move || state.save_backfill_meta(&name, &saved))
            .await
            .map_err(|e| BackfillError::Crashed(e.to_string()))??;
        all_jobs.push(Job {
            mapping: (*mapping).clone(),
            schema,
            targets,
            meta,
        });
    }
    drop(planner);

    // Copy.
    let started = Instant::now();
    let copied = copy(site, &snapshot, &position, &mut all_jobs, options, state).await?;
    match snapshot {
        Snapshot::Postgres { exported } => exported.release().await,
        Snapshot::Mysql(conn) => {
            if let Ok(conn) = Arc::try_unwrap(conn) {
                conn.into_inner().close().await;
            }
        }
    }

    // Catch-up of ranges copied in earlier attempts, then the handover.
    catch_up(site, &all_jobs, &position).await?;
    for job in &mut all_jobs {
        for (target, routes) in &job.targets {
            let mut writer = Writer::connect(target, routes.clone(), false)
                .await
                .map_err(|source| BackfillError::Apply {
                    site: target.name.clone(),
                    source,
                })?;
            let handover = Transaction {
                source: site.name.clone(),
                position: position.clone(),
                commit_time: chrono::Utc::now(),
                origin: Origin::Local,
                events: Vec::new(),
            };
            writer
                .apply(std::slice::from_ref(&handover))
                .await
                .map_err(|source| BackfillError::Apply {
                    site: target.name.clone(),
                    source,
                })?;
            drop_markers(target, &job.mapping.name).await?;
        }
        job.meta.complete = true;
        let name = job.mapping.name.clone();
        let state = state.clone();
        let saved = job.meta.clone();
        tokio::task::spawn_blocking(move || state.save_backfill_meta(&name, &saved))
            .await
            .map_err(|e| BackfillError::Crashed(e.to_string()))??;
        let rows = copied.get(&job.mapping.name).copied().unwrap_or(0);
        summary.push((job.mapping.name.clone(), rows, started.elapsed()));
        tracing::info!(mapping = %job.mapping.name, %position, "backfill complete: duplex run starts streaming from here");
    }
    Ok(())
}

/// Makes the publication list `tables` and (re)creates the slot with an exported snapshot; on
/// resume the slot is kept and a temporary one exports the new snapshot.
async fn pg_snapshot(
    site: &Site,
    password: Option<&str>,
    slot: &str,
    tables: &[TableName],
    resuming: bool,
) -> Result<PgExportedSnapshot, BackfillError> {
    let admin = |source: Box<dyn std::error::Error + Send + Sync>, doing| BackfillError::Admin {
        site: site.name.clone(),
        doing,
        source,
    };
    let client = postgres::connect(&site.url, password)
        .await
        .map_err(|e| admin(Box::new(e), "connecting"))?;
    postgres::ensure_publication(&client, slot, tables)
        .await
        .map_err(|e| admin(Box::new(e), "creating the publication"))?;
    let slot_exists = client
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| admin(Box::new(e), "looking up the slot"))?;
    let temporary = match (slot_exists, resuming) {
        (Some(_), true) => true,
        (None, true) => {
            return Err(BackfillError::Refused(format!(
                "the interrupted backfill's replication slot {slot} is gone, so it cannot be resumed: \
                 empty the targets and delete the state directory's backfill record (or the directory) to start over"
            )));
        }
        (Some(row), false) => {
            if row.get::<_, bool>(0) {
                return Err(BackfillError::Refused(format!(
                    "replication slot {slot} is in use: stop `duplex run` before backfilling"
                )));
            }
            tracing::warn!(%slot, "dropping the unused replication slot left by an earlier setup; backfill creates it anew");
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await
                .map_err(|e| admin(Box::new(e), "dropping the old slot"))?;
            false
        }
        (None, false) => false,
    };
    let name = if temporary {
        format!("{}_bf{}", &slot[..slot.len().min(50)], std::process::id())
    } else {
        slot.to_owned()
    };
    PgExportedSnapshot::create(&site.url, password, &name, temporary)
        .await
        .map_err(|source| BackfillError::PgSnapshot {
            site: site.name.clone(),
            source,
        })
}

/// Refuses a target that already streams from the source or (without `allow_nonempty`)
/// holds rows.
async fn check_target(
    target: &Site,
    source: &str,
    mapping: &Mapping,
    allow_nonempty: bool,
    routes: &[TableRoute],
) -> Result<(), BackfillError> {
    let mut writer = Writer::connect(target, routes.to_vec(), allow_nonempty)
        .await
        .map_err(|source| BackfillError::Apply {
            site: target.name.clone(),
            source,
        })?;
    if let Some(position) = writer
        .position(source)
        .await
        .map_err(|e| BackfillError::Apply {
            site: target.name.clone(),
            source: e,
        })?
    {
        return Err(BackfillError::Refused(format!(
            "site {} already holds changes of {source} up to {position}: it is being replicated, \
             so mapping {} cannot be backfilled into it",
            target.name, mapping.name
        )));
    }
    if allow_nonempty {
        return Ok(());
    }
    let table = &mapping.tables[&target.name];
    let empty = table_is_empty(target, table).await?;
    if !empty {
        return Err(BackfillError::Refused(format!(
            "table {table} on site {} is not empty: backfill copies into empty tables; \
             empty it, or pass --allow-nonempty to overwrite rows with the same key (rows the source does not have stay)",
            target.name
        )));
    }
    Ok(())
}

async fn table_is_empty(site: &Site, table: &TableName) -> Result<bool, BackfillError> {
    let password = site.password.as_ref().map(|p| p.expose());
    let admin = |source: Box<dyn std::error::Error + Send + Sync>| BackfillError::Admin {
        site: site.name.clone(),
        doing: "checking that the target table is empty",
        source,
    };
    match site.kind {
        SiteKind::Postgres => {
            let client = postgres::connect(&site.url, password)
                .await
                .map_err(|e| admin(Box::new(e)))?;
            let sql = format!(
                "SELECT NOT EXISTS (SELECT 1 FROM {}.{})",
                postgres::quote_ident(&table.schema),
                postgres::quote_ident(&table.name)
            );
            let row = client
                .query_one(&sql, &[])
                .await
                .map_err(|e| admin(Box::new(e)))?;
            Ok(row.get(0))
        }
        SiteKind::Mysql => {
            use mysql_async::prelude::Queryable;
            let mut conn = mysql::connect(&site.url, password)
                .await
                .map_err(|e| admin(Box::new(e)))?;
            let sql = format!(
                "SELECT EXISTS (SELECT 1 FROM {}.{})",
                mysql::quote_ident(&table.schema),
                mysql::quote_ident(&table.name)
            );
            let any: Option<i64> = conn
                .query_first(sql)
                .await
                .map_err(|e| admin(Box::new(e)))?;
            let _ = conn.disconnect().await;
            Ok(any == Some(0))
        }
    }
}

async fn drop_markers(site: &Site, mapping: &str) -> Result<(), BackfillError> {
    let password = site.password.as_ref().map(|p| p.expose());
    let pattern = format!("backfill:{mapping}:%");
    let admin = |source: Box<dyn std::error::Error + Send + Sync>| BackfillError::Admin {
        site: site.name.clone(),
        doing: "deleting the backfill's range markers",
        source,
    };
    match site.kind {
        SiteKind::Postgres => {
            let client = postgres::connect(&site.url, password)
                .await
                .map_err(|e| admin(Box::new(e)))?;
            client
                .execute(
                    "DELETE FROM duplex.positions WHERE source LIKE $1",
                    &[&pattern],
                )
                .await
                .map_err(|e| admin(Box::new(e)))?;
        }
        SiteKind::Mysql => {
            use mysql_async::prelude::Queryable;
            let mut conn = mysql::connect(&site.url, password)
                .await
                .map_err(|e| admin(Box::new(e)))?;
            conn.exec_drop(
                "DELETE FROM duplex.positions WHERE source LIKE ?",
                (pattern,),
            )
            .await
            .map_err(|e| admin(Box::new(e)))?;
            let _ = conn.disconnect().await;
        }
    }
    Ok(())
}

/// Reads table sizes and key boundaries in the snapshot.
enum Planner {
    Postgres(PgSnapshotReader),
    Mysql(Arc<Mutex<MysqlSnapshot>>),
}

impl Planner {
    async fn plan(
        &mut self,
        site: &Site,
        schema: &TableSchema,
        chunk: u64,
    ) -> Result<BackfillMeta, BackfillError> {
        let integer_key = match schema.primary_key.as_slice() {
            [only] => schema.column(only).is_some_and(|c| {
                let ty = c
                    .type_name
                    .strip_suffix(" unsigned")
                    .unwrap_or(&c.type_name);
                matches!(
                    ty,
                    "int2"
                        | "int4"
                        | "int8"
                        | "tinyint"
                        | "smallint"
                        | "mediumint"
                        | "int"
                        | "integer"
                        | "bigint"
                )
            }),
            _ => false,
        };
        let key_column = integer_key.then(|| schema.primary_key[0].clone());
        let key: Option<Vec<Column>> = if integer_key || schema.primary_key.is_empty() {
            None
        } else {
            let columns: Vec<Column> = schema
                .primary_key
                .iter()
                .filter_map(|k| schema.column(k).cloned())
                .collect();
            let orderable = columns.len() == schema.primary_key.len()
                && columns.iter().all(|c| match self {
                    Planner::Postgres(_) => PgSnapshotReader::orderable(c),
                    Planner::Mysql(_) => MysqlSnapshot::orderable(c),
                });
            if !orderable {
                tracing::warn!(table = %schema.name, "the primary key has a type duplex cannot cut into ranges: the table is copied as one range, held in memory whole");
            }
            orderable.then_some(columns)
        };
        let pg = |source| BackfillError::PgSnapshot {
            site: site.name.clone(),
            source,
        };
        let my = |source| BackfillError::MysqlSnapshot {
            site: site.name.clone(),
            source,
        };
        let (rows, bounds, cuts) = match self {
            Planner::Postgres(reader) => {
                let rows = reader.count(&schema.name).await.map_err(pg)?;
                let bounds = match &key_column {
                    Some(k) => reader
                        .boundaries(&schema.name, k, chunk)
                        .await
                        .map_err(pg)?,
                    None => Vec::new(),
                };
                let cuts = match &key {
                    Some(key) => reader
                        .key_boundaries(&schema.name, key, chunk)
                        .await
                        .map_err(pg)?,
                    None => Vec::new(),
                };
                (rows, bounds, cuts)
            }
            Planner::Mysql(conn) => {
                let mut conn = conn.lock().await;
                let rows = conn.count(&schema.name).await.map_err(my)?;
                let bounds = match &key_column {
                    Some(k) => conn.boundaries(&schema.name, k, chunk).await.map_err(my)?,
                    None => Vec::new(),
                };
                let cuts = match &key {
                    Some(key) => conn
                        .key_boundaries(&schema.name, key, chunk)
                        .await
                        .map_err(my)?,
                    None => Vec::new(),
                };
                (rows, bounds, cuts)
            }
        };
        let mut bounds = bounds;
        bounds.sort_unstable();
        bounds.dedup();
        let mut ranges = Vec::new();
        let mut key_ranges = Vec::new();
        if key.is_some() {
            // The cut points come in the server's key order, distinct (they are keys): kept
            // as they are, never re-sorted here.
            let mut lo = None;
            for cut in cuts {
                key_ranges.push((lo, Some(cut.clone())));
                lo = Some(cut);
            }
            key_ranges.push((lo, None));
        } else {
            let mut lo = None;
            for b in bounds {
                ranges.push((lo, Some(b)));
                lo = Some(b);
            }
            ranges.push((lo, None));
        }
        Ok(BackfillMeta {
            source: site.name.clone(),
            table: schema.name.to_string(),
            key_column,
            ranges,
            rows,
            attempts: Vec::new(),
            copied_in: BTreeMap::new(),
            complete: false,
            key_columns: key
                .map(|k| k.into_iter().map(|c| c.name).collect())
                .unwrap_or_default(),
            key_ranges,
        })
    }
}

/// A finished range: job index, range id, rows, the attempt it was copied in.
type Done = (usize, u64, u64, u32);

/// Copies every range not done yet with `options.jobs` workers; returns rows per mapping.
async fn copy(
    site: &Site,
    snapshot: &Snapshot,
    position: &Position,
    jobs: &mut [Job],
    options: &BackfillOptions,
    state: &Arc<StateStore>,
) -> Result<BTreeMap<String, u64>, BackfillError> {
    // Work list.
    let mut work = Vec::new();
    for (index, job) in jobs.iter().enumerate() {
        let name = job.mapping.name.clone();
        let table = job.meta.table.clone();
        let state2 = state.clone();
        let done = tokio::task::spawn_blocking(move || state2.done_ranges(&name, &table))
            .await
            .map_err(|e| BackfillError::Crashed(e.to_string()))??;
        for id in 0..job.meta.range_count() as u64 {
            if !done.contains_key(&id) {
                work.push((index, id));
            }
        }
        let total = job.meta.rows;
        let already: u64 = done.values().sum();
        tracing::info!(mapping = %job.mapping.name, ranges = job.meta.range_count(), remaining = job.meta.range_count() - done.len(), rows = total, copied_before = already, "copying");
    }
    let work = Arc::new(std::sync::Mutex::new(
        work.into_iter().collect::<std::collections::VecDeque<_>>(),
    ));
    let shared: SharedJobs = Arc::new(
        jobs.iter()
            .map(|j| {
                (
                    j.mapping.clone(),
                    j.schema.clone(),
                    j.targets.clone(),
                    j.meta.clone(),
                )
            })
            .collect(),
    );
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut workers = JoinSet::new();
    for _ in 0..options.jobs.max(1) {
        let reader = match snapshot {
            Snapshot::Postgres { exported } => RangeReader::Postgres(
                PgSnapshotReader::open(
                    &site.url,
                    site.password.as_ref().map(|p| p.expose()),
                    Some(&exported.name),
                )
                .await
                .map_err(|source| BackfillError::PgSnapshot {
                    site: site.name.clone(),
                    source,
                })?,
            ),
            Snapshot::Mysql(conn) => RangeReader::Mysql(conn.clone()),
        };
        let work = work.clone();
        let shared = shared.clone();
        let done_tx = done_tx.clone();
        let position = position.clone();
        let site = site.clone();
        let upsert = options.allow_nonempty;
        let attempt_positions: Vec<Vec<Position>> = jobs
            .iter()
            .map(|j| {
                (0..j.meta.attempts.len() as u32)
                    .map(|a| j.meta.attempt_position(a))
                    .collect()
            })
            .collect();
        workers.spawn(async move {
            worker(
                site,
                reader,
                work,
                shared,
                done_tx,
                position,
                upsert,
                attempt_positions,
            )
            .await
        });
    }
    drop(done_tx);
    // Progress and the state store, from one place so that record writes never race.
    let mut copied: BTreeMap<String, u64> = BTreeMap::new();
    let terminal = std::io::stderr().is_terminal();
    let mut last_log = Instant::now();
    let started = Instant::now();
    let mut totals: Vec<u64> = Vec::new();
    for job in jobs.iter() {
        let name = job.mapping.name.clone();
        let table = job.meta.table.clone();
        let state2 = state.clone();
        let done = tokio::task::spawn_blocking(move || state2.done_ranges(&name, &table))
            .await
            .map_err(|e| BackfillError::Crashed(e.to_string()))??;
        totals.push(done.values().sum());
    }
    let bars = terminal.then(|| {
        let multi = MultiProgress::new();
        let style = ProgressStyle::with_template(
            "{prefix:>16} [{bar:32}] {human_pos}/{human_len} rows  {rate:>12}  ETA {eta}",
        )
        .expect("the template is valid")
        .with_key(
            "rate",
            |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = write!(out, "{:.0} rows/s", state.per_sec());
            },
        )
        .progress_chars("=> ");
        let bars: Vec<ProgressBar> = jobs
            .iter()
            .zip(&totals)
            .map(|(job, &done)| {
                let bar = multi.add(
                    ProgressBar::new(job.meta.rows.max(done))
                        .with_style(style.clone())
                        .with_prefix(job.mapping.name.clone())
                        .with_position(done),
                );
                bar.reset_eta();
                bar
            })
            .collect();
        (multi, bars)
    });
    let mut failure = None;
    loop {
        tokio::select! {
            got = done_rx.recv() => {
                let Some((index, range, rows, copied_in)) = got else { break };
                let job = &mut jobs[index];
                job.meta.copied_in.insert(range, copied_in);
                let name = job.mapping.name.clone();
                let table = job.meta.table.clone();
                let meta = job.meta.clone();
                let state2 = state.clone();
                tokio::task::spawn_blocking(move || {
                    state2.write(|w| {
                        w.mark_range_done(&name, &table, range, rows)?;
                        w.save_backfill_meta(&name, &meta)
                    })
                })
                .await
                .map_err(|e| BackfillError::Crashed(e.to_string()))??;
                *copied.entry(job.mapping.name.clone()).or_default() += rows;
                totals[index] += rows;
                tracing::debug!(mapping = %job.mapping.name, range, rows, "range done");
                if let Some((_, bars)) = &bars {
                    let bar = &bars[index];
                    if totals[index] > bar.length().unwrap_or(0) {
                        bar.set_length(totals[index]);
                    }
                    bar.set_position(totals[index]);
                } else if last_log.elapsed() >= Duration::from_secs(5) {
                    last_log = Instant::now();
                    let secs = started.elapsed().as_secs_f64().max(1e-9);
                    for (i, job) in jobs.iter().enumerate() {
                        let done: u64 = copied.get(&job.mapping.name).copied().unwrap_or(0);
                        let rate = done as f64 / secs;
                        let left = job.meta.rows.saturating_sub(totals[i]);
                        let eta = if rate > 0.0 { left as f64 / rate } else { 0.0 };
                        tracing::info!(mapping = %job.mapping.name, copied = totals[i], of = job.meta.rows, "backfill progress: {rate:.0} rows/s, ETA {eta:.0} s");
                    }
                }
            }
            Some(joined) = workers.join_next() => {
                match joined {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => { failure = Some(error); break; }
                    Err(panic) => { failure = Some(BackfillError::Crashed(panic.to_string())); break; }
                }
            }
        }
    }
    if let Some((_, bars)) = &bars {
        for bar in bars {
            if failure.is_some() {
                bar.abandon();
            } else {
                bar.finish();
            }
        }
    }
    if let Some(error) = failure {
        workers.abort_all();
        return Err(error);
    }
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error),
            Err(panic) => return Err(BackfillError::Crashed(panic.to_string())),
        }
    }
    Ok(copied)
}

enum RangeReader {
    Postgres(PgSnapshotReader),
    Mysql(Arc<Mutex<MysqlSnapshot>>),
}

type WorkQueue = Arc<std::sync::Mutex<std::collections::VecDeque<(usize, u64)>>>;
type SharedJobs = Arc<
    Vec<(
        Mapping,
        TableSchema,
        Vec<(Site, Vec<TableRoute>)>,
        BackfillMeta,
    )>,
>;

#[allow(clippy::too_many_arguments)]
async fn worker(
    site: Site,
    mut reader: RangeReader,
    work: WorkQueue,
    jobs: SharedJobs,
    done: mpsc::UnboundedSender<Done>,
    position: Position,
    upsert: bool,
    attempt_positions: Vec<Vec<Position>>,
) -> Result<(), BackfillError> {
    let mut writers: HashMap<(usize, usize), Writer> = HashMap::new();
    loop {
        let next = work.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
        let Some((index, range_id)) = next else {
            return Ok(());
        };
        let (mapping, schema, targets, meta) = &jobs[index];
        let source_table = &schema.name;
        let columns: Vec<String> = schema.columns.iter().map(|c| c.name.clone()).collect();
        let range = meta.range(range_id, schema);
        let rows = match &mut reader {
            RangeReader::Postgres(r) => {
                r.rows(source_table, &columns, &range)
                    .await
                    .map_err(|source| BackfillError::PgSnapshot {
                        site: site.name.clone(),
                        source,
                    })?
            }
            RangeReader::Mysql(conn) => conn
                .lock()
                .await
                .rows(source_table, &schema.columns, &range)
                .await
                .map_err(|source| BackfillError::MysqlSnapshot {
                    site: site.name.clone(),
                    source,
                })?,
        };
        let count = rows.len() as u64;
        let events: Vec<ChangeEvent> = rows
            .into_iter()
            .map(|row| ChangeEvent {
                table: source_table.clone(),
                op: Op::Insert,
                key: schema
                    .primary_key
                    .iter()
                    .map(|k| (k.as_str(), row.get(k).cloned().unwrap_or(Value::Null)))
                    .collect(),
                before: None,
                after: Some(row),
            })
            .collect();
        let txn = Transaction {
            source: marker(&mapping.name, range_id),
            position: position.clone(),
            commit_time: chrono::Utc::now(),
            origin: Origin::Local,
            events,
        };
        let mut copied_in = attempt_positions[index].len() as u32 - 1;
        for (t, (target, routes)) in targets.iter().enumerate() {
            let apply_error = |source| BackfillError::Apply {
                site: target.name.clone(),
                source,
            };
            if let std::collections::hash_map::Entry::Vacant(slot) = writers.entry((index, t)) {
                slot.insert(
                    Writer::connect(target, routes.clone(), upsert)
                        .await
                        .map_err(apply_error)?,
                );
            }
            let writer = writers.get_mut(&(index, t)).expect("just inserted");
            // A range an interrupted run wrote but did not record: its marker says when.
            if let Some(held) = writer.position(&txn.source).await.map_err(apply_error)?
                && let Some(earlier) = attempt_positions[index].iter().position(|p| *p == held)
                && held != position
            {
                if targets.len() > 1 {
                    return Err(BackfillError::Refused(format!(
                        "range {range_id} of mapping {} is on {} from an earlier attempt but not in the state store; \
                         with several targets this cannot be reconciled automatically: start the backfill over",
                        mapping.name, target.name
                    )));
                }
                copied_in = earlier as u32;
                continue;
            }
            writer.load(&txn).await.map_err(apply_error)?;
        }
        if done.send((index, range_id, count, copied_in)).is_err() {
            return Ok(());
        }
    }
}

/// Brings ranges copied in earlier attempts forward to `handover` by applying, from the
/// source's stream, exactly the changes each of them lacks (see the module docs).
async fn catch_up(site: &Site, jobs: &[Job], handover: &Position) -> Result<(), BackfillError> {
    // The oldest attempt any range was copied in.
    let oldest = jobs
        .iter()
        .flat_map(|j| {
            j.meta
                .copied_in
                .values()
                .map(move |a| j.meta.attempt_position(*a))
        })
        .min_by(|a, b| a.compare(b).unwrap_or(std::cmp::Ordering::Equal));
    let Some(oldest) = oldest else {
        return Ok(());
    };
    if oldest == *handover {
        return Ok(());
    }
    tracing::info!(source = %site.name, from = %oldest, to = %handover, "catching up ranges copied before the interruption");
    let stream_error = |e: Box<dyn std::error::Error + Send + Sync>| BackfillError::Stream {
        site: site.name.clone(),
        source: e,
    };
    let tables: BTreeSet<TableName> = jobs.iter().map(|j| j.schema.name.clone()).collect();
    let password = site.password.as_ref().map(|p| p.expose().to_owned());
    let mut stream = match (&site.kind, &oldest) {
        (SiteKind::Postgres, Position::Postgres(lsn)) => {
            let slot = slot_name(&site.connection());
            let mut config = PgStreamConfig::new(
                &site.name,
                &site.url,
                &slot,
                &slot,
                tables.iter().cloned().collect(),
            );
            config.password = password;
            config.start = Some(*lsn);
            CatchUp::Postgres(Box::new(
                PgStream::start(config)
                    .await
                    .map_err(|e| stream_error(Box::new(e)))?,
            ))
        }
        (SiteKind::Mysql, Position::Mysql(pos)) => {
            let mut config = MysqlStreamConfig::new(&site.name, &site.url, tables.clone());
            config.password = password;
            config.start = StartPosition::At(pos.clone());
            CatchUp::Mysql(Box::new(
                MysqlStream::start(config)
                    .await
                    .map_err(|e| stream_error(Box::new(e)))?,
            ))
        }
        _ => {
            return Err(BackfillError::Invalid(
                "the recorded positions are of another kind of database".into(),
            ));
        }
    };
    let mut writers = Vec::new();
    for job in jobs {
        for (target, routes) in &job.targets {
            writers.push((
                job.schema.name.clone(),
                target.name.clone(),
                Writer::connect(target, routes.clone(), false)
                    .await
                    .map_err(|source| BackfillError::Apply {
                        site: target.name.clone(),
                        source,
                    })?,
            ));
        }
    }
    let mut classifier = if jobs.iter().any(|j| !j.meta.key_columns.is_empty()) {
        Some(KeyClassifier::open(site).await?)
    } else {
        None
    };
    let copied_at = |job: &Job, range: Option<u64>| -> Option<Position> {
        job.meta
            .copied_in
            .get(&range?)
            .map(|a| job.meta.attempt_position(*a))
    };
    let after = |a: &Position, b: &Position| {
        a.compare(b)
            .map(|o| o == std::cmp::Ordering::Greater)
            .unwrap_or(false)
    };
    let new_key = |job: &Job, event: &ChangeEvent| -> Option<Row> {
        event.after.as_ref().map(|row| {
            job.schema
                .primary_key
                .iter()
                .map(|k| (k.as_str(), row.get(k).cloned().unwrap_or(Value::Null)))
                .collect()
        })
    };
    loop {
        let (tx, heartbeat) = tokio::time::timeout(Duration::from_secs(120), stream.next())
            .await
            .map_err(|_| stream_error("no progress for 120 s while catching up".into()))?
            .map_err(stream_error)?;
        if let Some(p) = heartbeat {
            if !after(handover, &p) {
                break;
            }
            continue;
        }
        let Some(tx) = tx else { continue };
        if after(&tx.position, handover) {
            break;
        }
        // The ranges of each event's old and new key.
        let mut ranges: Vec<(Option<u64>, Option<u64>)> = vec![(None, None); tx.events.len()];
        for job in jobs {
            let events: Vec<usize> = (0..tx.events.len())
                .filter(|i| tx.events[*i].table == job.schema.name)
                .collect();
            if events.is_empty() {
                continue;
            }
            match &mut classifier {
                Some(classifier) if !job.meta.key_columns.is_empty() => {
                    let values = |key: &Row| -> Option<Vec<Value>> {
                        job.meta
                            .key_columns
                            .iter()
                            .map(|c| key.get(c).cloned())
                            .collect()
                    };
                    let mut keys = Vec::new();
                    let mut slots = Vec::new();
                    for &i in &events {
                        let event = &tx.events[i];
                        if let Some(k) = values(&event.key) {
                            keys.push(k);
                            slots.push((i, false));
                        }
                        if let Some(k) = new_key(job, event).as_ref().and_then(values) {
                            keys.push(k);
                            slots.push((i, true));
                        }
                    }
                    let found = classifier.ranges(&job.schema, &job.meta, &keys).await?;
                    for ((i, is_new), range) in slots.into_iter().zip(found) {
                        if is_new {
                            ranges[i].1 = Some(range);
                        } else {
                            ranges[i].0 = Some(range);
                        }
                    }
                }
                _ => {
                    for &i in &events {
                        let event = &tx.events[i];
                        ranges[i] = (
                            job.meta.range_of(&event.key),
                            new_key(job, event).and_then(|k| job.meta.range_of(&k)),
                        );
                    }
                }
            }
        }
        for (table, target, writer) in &mut writers {
            let Some(job) = jobs.iter().find(|j| &j.schema.name == table) else {
                continue;
            };
            let mut events = Vec::new();
            for (i, event) in tx.events.iter().enumerate() {
                if &event.table != table {
                    continue;
                }
                let (old_range, new_range) = ranges[i];
                let old = copied_at(job, old_range).is_some_and(|p| after(&tx.position, &p));
                let new_key = new_key(job, event);
                let new = copied_at(job, new_range).is_some_and(|p| after(&tx.position, &p));
                match event.op {
                    Op::Insert if new => events.push(event.clone()),
                    Op::Delete if old => events.push(event.clone()),
                    Op::Update if old && new => events.push(event.clone()),
                    Op::Update if old => events.push(ChangeEvent {
                        op: Op::Delete,
                        after: None,
                        ..event.clone()
                    }),
                    Op::Update if new => {
                        if event
                            .after
                            .iter()
                            .flat_map(|r| r.iter())
                            .any(|(_, v)| *v == Value::Unchanged)
                        {
                            return Err(BackfillError::Refused(format!(
                                "a key-changing update of {table} during the interrupted backfill carries no full row: start the backfill over"
                            )));
                        }
                        events.push(ChangeEvent {
                            op: Op::Insert,
                            key: new_key.clone().unwrap_or_default(),
                            before: None,
                            ..event.clone()
                        });
                    }
                    _ => {}
                }
            }
            let filtered = Transaction {
                events,
                ..tx.clone()
            };
            writer
                .apply(std::slice::from_ref(&filtered))
                .await
                .map_err(|source| BackfillError::Apply {
                    site: target.clone(),
                    source,
                })?;
        }
    }
    stream.shutdown().await;
    if let Some(KeyClassifier::Mysql(conn)) = classifier {
        conn.close().await;
    }
    Ok(())
}

/// Finds, in the source database, the range a key falls in for tables cut on their whole
/// primary key: the database compares it with the cut points, with the same types and
/// collations the ranges were read with (comparing in Rust could disagree with the server's
/// collation).
enum KeyClassifier {
    Postgres(PgSnapshotReader),
    Mysql(MysqlSnapshot),
}

impl KeyClassifier {
    async fn open(site: &Site) -> Result<KeyClassifier, BackfillError> {
        let password = site.password.as_ref().map(|p| p.expose());
        Ok(match site.kind {
            SiteKind::Postgres => KeyClassifier::Postgres(
                PgSnapshotReader::open(&site.url, password, None)
                    .await
                    .map_err(|source| BackfillError::PgSnapshot {
                        site: site.name.clone(),
                        source,
                    })?,
            ),
            SiteKind::Mysql => {
                KeyClassifier::Mysql(MysqlSnapshot::open(&site.url, password).await.map_err(
                    |source| BackfillError::MysqlSnapshot {
                        site: site.name.clone(),
                        source,
                    },
                )?)
            }
        })
    }

    /// The range of each of `keys` (values of `meta.key_columns`).
    async fn ranges(
        &mut self,
        schema: &TableSchema,
        meta: &BackfillMeta,
        keys: &[Vec<Value>],
    ) -> Result<Vec<u64>, BackfillError> {
        let columns = meta.range(0, schema).columns;
        let cuts = meta.cuts();
        match self {
            KeyClassifier::Postgres(reader) => reader
                .range_indexes(&schema.name, &columns, &cuts, keys)
                .await
                .map_err(|source| BackfillError::PgSnapshot {
                    site: meta.source.clone(),
                    source,
                }),
            KeyClassifier::Mysql(conn) => conn
                .range_indexes(&schema.name, &columns, &cuts, keys)
                .await
                .map_err(|source| BackfillError::MysqlSnapshot {
                    site: meta.source.clone(),
                    source,
                }),
        }
    }
}

enum CatchUp {
    Postgres(Box<PgStream>),
    Mysql(Box<MysqlStream>),
}

impl CatchUp {
    /// The next transaction, or a heartbeat position.
    async fn next(
        &mut self,
    ) -> Result<(Option<Transaction>, Option<Position>), Box<dyn std::error::Error + Send + Sync>>
    {
        Ok(match self {
            CatchUp::Postgres(s) => split(s.next().await?),
            CatchUp::Mysql(s) => split(s.next().await?),
        })
    }

    async fn shutdown(self) {
        match self {
            CatchUp::Postgres(s) => {
                let _ = s.shutdown().await;
            }
            CatchUp::Mysql(s) => s.shutdown().await,
        }
    }
}

/// A catch-up stream item as (transaction, heartbeat position).
fn split(item: StreamItem) -> (Option<Transaction>, Option<Position>) {
    match item {
        StreamItem::Transaction(tx) => (Some(tx), None),
        StreamItem::Heartbeat(position) => (None, Some(position)),
        StreamItem::Part(_) => (None, None),
    }
}
