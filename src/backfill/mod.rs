//! `duplex backfill`: the initial load of mapped tables, handing over to `duplex run` with no
//! gap and no duplicate.
//!
//! The backfill speaks only to the connectors' kind-independent contracts: the snapshot
//! ([`SourceSnapshot`], [`duplex_connectors::SnapshotRead`]), the applier
//! ([`duplex_connectors::AnyApplier`], with its bulk path `load`), the change stream
//! ([`duplex_connectors::AnyStream`]) and the target-side statements of
//! [`duplex_connectors::load`]. The files: [`meta`] (the durable record and the markers),
//! [`plan`] (jobs, ranges, work queue), [`copy`] (the copy workers), [`catch_up`].
//!
//! # Handover
//!
//! Per source site, all selected mappings are copied from ONE consistent snapshot taken
//! together with the stream position it matches ([`SourceSnapshot::take`]):
//!
//! - PostgreSQL: the publication `duplex_<db>_<site>` is checked to belong to no other
//!   deployment, made to list every table read from the site (the new mappings' and those of
//!   any link of the site, so none loses a table; pgoutput decodes with the catalog as of each
//!   change, so it must list them before the snapshot) and claimed for this deployment (the
//!   state store's identity). Then the slot `duplex run` uses is created with `SNAPSHOT
//!   'export'`, or, when it already exists, a TEMPORARY slot exports the snapshot and the
//!   permanent one is left exactly where it is: it may hold the position of a stopped link of
//!   the same site, which still needs every change since (dropping it and creating it anew
//!   lost those changes). Left alone it is at or before the snapshot, so it also holds what
//!   the new targets need after the handover; `duplex run` starts the link at the lowest
//!   position its targets hold, and each target skips what it already has. Every copy worker
//!   imports the exported snapshot, and the session that exported it stays open and idle until
//!   every worker has imported it.
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
//! the table as one range, with a warning.
//!
//! Each range is written into each target in ONE target transaction through the target's
//! applier, and that transaction also records a marker row
//! `backfill:<mapping>@<deployment>:<range>` in `duplex.positions` holding the snapshot
//! position the range was read at (the deployment in its name, so that another duplex
//! backfilling a mapping of the same name into the same database or MariaDB server never
//! finds it: `meta::marker`). So a range is
//! either entirely on a target together with its marker, or not at all. The rows go by the
//! target's bulk path (`AnyApplier::load`): on PostgreSQL one binary `COPY ... FROM STDIN`
//! inside that transaction, on MySQL/MariaDB multi-row INSERTs. `--allow-nonempty` upserts,
//! which COPY cannot do, so with it PostgreSQL targets are written with multi-row `INSERT ...
//! ON CONFLICT DO UPDATE` (as are columns of types duplex has no binary encoder for, e.g.
//! `inet`). The state store then records the range as done (`mark_range_done`) and, in the
//! same store transaction, the attempt it was copied in (in the backfill record). Markers are
//! deleted when the backfill completes.
//!
//! # Foreign keys
//!
//! Target sessions turn foreign-key checks off where they may (MariaDB always, PostgreSQL when
//! the role may set `session_replication_role`), so ranges of all tables go in parallel. On a
//! PostgreSQL target whose role may not, tables are copied by levels ([`order`]): every range
//! of a referenced table lands before any range of a table referencing it; a self-reference or
//! a cycle there is refused before the snapshot (see [`duplex_connectors::foreign_keys`]).
//!
//! # Progress
//!
//! On a terminal (stderr), one progress bar per mapping: rows copied of the planned total,
//! rows/s and ETA. Otherwise a plain log line per mapping every 5 s. A summary at the end.
//!
//! # Resume
//!
//! A killed backfill loses its snapshot (the exporting session, or the snapshot transaction,
//! died with the process), so the remaining ranges cannot be read at the old position `P0`.
//! A re-run takes a new snapshot at `P1` (PostgreSQL: through a TEMPORARY slot, so the
//! permanent slot stays at `P0` and keeps the WAL from there). Before it copies anything, it
//! brings the ranges copied earlier forward to `P1` (ranges done on a target but not yet in the
//! state store are first recorded from their marker, `catch_up::reconcile_markers`), and only
//! then copies the ranges not done, at `P1`.
//!
//! The catch-up: the source's stream is read from the oldest snapshot a copied range is as of
//! to `P1`, whole transactions only, and each change is applied (strictly, through the normal
//! applier, which records how far it got under `catch-up:<mapping>:<site>@<deployment>`, one
//! key per mapping and target) only to rows
//! whose range is as of a position before that transaction's commit. The ranges are defined
//! once, at the first attempt, and stored in the backfill record (integer bounds, or key values
//! per column for other keys), so every attempt cuts the same ranges. For keys other than one
//! integer column, the range of a changed row's key is found by the source database (the key is
//! compared with the stored bounds as rows of a union with the table's own columns, so with the
//! same types and collations the ranges were read with). A range as of `Pk` holds exactly the
//! source's rows of the range as of `Pk`, so applying exactly the transactions after `Pk` to it
//! is exact. A key-changing update between ranges of different ages is split into the delete
//! and the insert half that each range needs. Once it reached `P1`, the record says so
//! (`caught_up`: every range copied in an attempt up to this one is as of its snapshot), in
//! one state-store write; if the catch-up is interrupted before, the applier's recorded
//! position makes the next catch-up skip what it already applied. The record keeps every
//! attempt's position (typed [`duplex_connectors::Position`]s), so any number of interruptions
//! work the same way. The catch-up stream keeps the publication's full table list and
//! acknowledges nothing, so the slot never moves past a stopped link's position; a slot found
//! past the first attempt's position is refused (the catch-up could not read what it needs).
//!
//! Why catch up first, and not after copying the rest: the targets' unique indexes. Say
//! customer 5 (copied at `P0`) gave its email `e5` to customer 25 (not copied) after `P0`. At
//! `P1` the source holds `25: e5`, but the target still holds `5: e5` until the catch-up
//! corrects it, so copying customer 25's range first fails on the email index, every time. With
//! the catch-up first, at every moment the target's rows of the mapping are the source's rows
//! of some set of ranges as of ONE snapshot (`P1`; while catching up, every copied range is at
//! the same transaction boundary: each attempt leaves all its ranges as of its own snapshot,
//! so the catch-up starts with all of them at one position and applies each transaction to
//! all of them): a subset of a state the source's own unique
//! indexes accepted, which the target's accept too (unless they are stricter, e.g. a
//! case-insensitive collation). Ranges are then copied at `P1`, so the handover needs no
//! further catch-up: the handover position is `P1`.
//!
//! Until the handover is written, the record says the backfill did not finish, and `duplex run`
//! refuses the mapping with the command that resumes it ([`unfinished`]): streaming it would
//! start past the ranges not copied.
//!
//! # Resync: after the source's log lost the targets' positions
//!
//! When a PostgreSQL slot is gone (or re-created or advanced outside duplex) or a MariaDB
//! binlog purged, the changes since the targets' positions cannot be read any more, and the
//! link stops naming `duplex backfill --resync --from <site>`. A resync is a backfill of every
//! one-way mapping from the site into those targets (positions are one per source and target,
//! so all of them at once; the selection is checked) into targets that hold rows:
//!
//! - A finished backfill record is replaced by a new one (marked `resync`), so an interrupted
//!   resync resumes like any backfill (and `duplex run` refuses the mappings meanwhile).
//! - The snapshot is taken like a backfill's, except that the readers of the lost stream are
//!   not protected (their positions are what is replaced): PostgreSQL creates the slot again
//!   with the exported snapshot when it is gone, or exports through a temporary slot when it
//!   exists (the permanent one is at or before the snapshot, so it also serves the stream after
//!   the handover); MariaDB reads the current binlog position. So a resync is correct whether
//!   or not the slot still exists (it is then merely not needed), and is not refused.
//! - Each range REPLACES the target's rows of its key range: in the range's one target
//!   transaction, the target rows of the range whose key the snapshot's rows of the range lack
//!   are deleted, and the snapshot's rows upserted. The target's keys of the range are read by
//!   the target database with the same bounds, which is why a resync cuts only on integer key
//!   columns (every kind orders integers alike; a text key under another collation could put a
//!   row in another range on the target, and the range written later would delete it) and
//!   copies any other table as one range. A range is then exactly the source's rows of the
//!   range as of the snapshot, like a range copied into an empty table, so resume and
//!   catch-up argue the same. A target row of a range not yet written can still hold a unique
//!   value the source moved to a row of a range being written: that stops the resync with the
//!   index and the value named (a row of the target is never written over another).
//! - The handover replaces the target's position of the lost stream (and this deployment's
//!   catch-up row) with the snapshot position, so `duplex run` streams exactly what committed
//!   after it. `duplex run` holds the state store's lock while it works, so a resync refuses
//!   then.
//!
//! # Not done here
//!
//! Version vectors for backfilled rows are not seeded: the merge engine does not exist yet.
//! A target that already holds a position for the source (it is streaming) is refused: the
//! position is per source site, so mappings of one source and target are backfilled together,
//! before `duplex run`.

mod catch_up;
mod copy;
mod guard;
mod meta;
mod order;
pub(crate) mod plan;
mod select;

pub use meta::{BackfillMeta, KeyBounds, load_meta};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duplex_connectors::{
    AdminError, AnyApplier, Applier, ApplyError, ApplyOptions, Origin, SnapshotError,
    SourceSnapshot, TableName, Transaction,
};
use duplex_state::{StateError, StateStore};

use crate::config::{Config, Direction, Mapping, Site};
use guard::{check_target, still_needed};
use meta::{markers_of, save_meta};
use plan::Job;
use select::selection;

/// Default rows per range.
pub const DEFAULT_CHUNK_ROWS: u64 = 10_000;

/// The default `--jobs`: one copy worker per core of this machine, at least 2 (so one range is
/// read while another is written) and at most 8 (the servers do most of the work; more workers
/// only compete for their cores and hold more ranges in memory).
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
}

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
    /// Forget an unfinished backfill of the selected mappings (its record, finished ranges and
    /// range markers) and copy them from scratch.
    pub restart: bool,
    /// Rows per range.
    pub chunk_rows: u64,
    /// Copy again into targets that already stream from the source (after its log lost their
    /// positions): every range replaces the target's rows of its key range, and the targets'
    /// positions are replaced by the new snapshot's.
    pub resync: bool,
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
    /// Taking or reading the snapshot failed.
    #[error("snapshot of site {site}")]
    Snapshot {
        /// Site.
        site: String,
        /// Cause.
        #[source]
        source: SnapshotError,
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

/// An administrative statement's error on `site`.
fn admin_error(site: &Site) -> impl FnOnce(AdminError) -> BackfillError + '_ {
    move |AdminError { doing, source }| BackfillError::Admin {
        site: site.name.clone(),
        doing,
        source,
    }
}

/// A snapshot's error on `site`: refusals and failed preparations as such, the rest as a
/// snapshot failure.
fn snapshot_error(site: &Site) -> impl FnOnce(SnapshotError) -> BackfillError + '_ {
    move |error| match error {
        SnapshotError::Refused(message) => BackfillError::Refused(message),
        SnapshotError::Admin(error) => admin_error(site)(error),
        source => BackfillError::Snapshot {
            site: site.name.clone(),
            source,
        },
    }
}

/// Whether `mapping` has a backfill record (an unreadable one counts as none: this only
/// decides a warning).
pub fn has_record(state: &StateStore, mapping: &str) -> bool {
    load_meta(state, mapping).ok().flatten().is_some()
}

/// How far every recorded backfill got, from the state store (what `duplex status` shows
/// while nothing runs).
pub fn recorded_progress(
    state: &StateStore,
) -> Result<Vec<crate::telemetry::BackfillProgress>, StateError> {
    let mut found = Vec::new();
    for mapping in state.backfill_mappings()? {
        let Some(meta) = load_meta(state, &mapping)? else {
            continue;
        };
        let done = state.done_ranges(&mapping, &meta.table)?;
        let copied: u64 = done.values().sum();
        found.push(crate::telemetry::BackfillProgress {
            planned: meta.rows.max(copied),
            ranges_done: done.len() as u64,
            ranges: meta.range_count().max(1) as u64,
            complete: meta.complete,
            source: meta.source,
            copied,
            mapping,
        });
    }
    Ok(found)
}

/// The configured mappings whose backfill started but did not finish (interrupted, killed or
/// failed), each with the command that finishes it. `duplex run` refuses to stream them: their
/// targets hold only some of the ranges, and the stream would start past the rows not copied.
pub fn unfinished(
    config: &Config,
    state: &StateStore,
) -> Result<Vec<(String, String)>, StateError> {
    let mut unfinished = Vec::new();
    for mapping in &config.mappings {
        let Some(meta) = load_meta(state, &mapping.name)? else {
            continue;
        };
        if meta.complete {
            continue;
        }
        let from = match mapping.direction {
            Direction::Both => format!(" --from {}", meta.source),
            Direction::OneWay { .. } => String::new(),
        };
        // A resync covers every mapping from the source into its targets at once.
        let command = if meta.resync {
            crate::link::resync_command(&meta.source)
        } else {
            format!("duplex backfill --mapping {}{from}", mapping.name)
        };
        unfinished.push((mapping.name.clone(), command));
    }
    Ok(unfinished)
}

/// Why `duplex run` refuses the mappings [`unfinished`] found, and the commands that fix it.
pub fn unfinished_refusal(unfinished: &[(String, String)]) -> String {
    let names: Vec<&str> = unfinished.iter().map(|(m, _)| m.as_str()).collect();
    let mut commands: Vec<String> = Vec::new();
    for (_, command) in unfinished {
        let command = format!("`{command}`");
        if !commands.contains(&command) {
            commands.push(command);
        }
    }
    format!(
        "the backfill of mapping(s) {} did not finish (it was interrupted or failed): its targets \
         hold only part of the rows, and streaming now would never copy the rest. Finish it \
         first with {} (same --config; add --allow-nonempty if the first attempt had it): it \
         resumes where it stopped and catches up on every change made since; then start \
         `duplex run` again. To give it up and copy from scratch instead, empty the target \
         tables and add --restart",
        names.join(", "),
        commands.join(" and ")
    )
}

/// The two-way mappings that were never backfilled: no backfill record, and the merge engine
/// never read any of their sites (it records where it read each site in the state store). The
/// one-way mappings are checked by their links, which read their targets' positions anyway.
pub fn never_backfilled_two_way(config: &Config, state: &StateStore) -> Vec<String> {
    config
        .mappings
        .iter()
        .filter(|m| m.direction == Direction::Both && !has_record(state, &m.name))
        .filter(|m| {
            !m.tables.keys().any(|site| {
                state
                    .position::<duplex_connectors::Position>(site)
                    .ok()
                    .flatten()
                    .is_some()
            })
        })
        .map(|m| m.name.clone())
        .collect()
}

/// The warning `duplex run` gives for mappings that were never backfilled: their targets hold
/// no position of their source and there is no backfill record.
pub fn never_backfilled_warning(missing: &[String]) -> String {
    let args: Vec<String> = missing.iter().map(|m| format!("--mapping {m}")).collect();
    format!(
        "mapping(s) {} were never backfilled: their targets hold no position and there is no backfill record; \
         if their targets should hold the rows that already exist, stop and run `duplex backfill {}` first \
         (it copies the tables and sets the position run starts from); \
         streaming starts at the sources' current positions",
        missing.join(", "),
        args.join(" ")
    )
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
    let selected = selection(config, options).map_err(BackfillError::Invalid)?;
    let mut by_source: BTreeMap<String, Vec<&Mapping>> = BTreeMap::new();
    for mapping in selected {
        if !mapping.values.is_empty() {
            return Err(BackfillError::Invalid(format!(
                "mapping {} has value maps ([mappings.values]), which a backfill does not translate yet: fill its tables with the sites' own codes by other means, or remove the value maps for the copy",
                mapping.name
            )));
        }
        if !mapping.filters.is_empty() {
            return Err(BackfillError::Invalid(format!(
                "mapping {} has row filters (filter.<site>), which a backfill does not apply yet: fill its tables by other means, or remove the filters for the copy",
                mapping.name
            )));
        }
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
        guard::no_overwrite_of_sql_server(config, mapping, &from, options)
            .map_err(BackfillError::Invalid)?;
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
    // `duplex status` and `/metrics` follow the copy (see crate::telemetry).
    let _control = Served(crate::engine::control::serve_without_engine(
        &config.state_dir,
    ));
    let _metrics = match config.metrics_listen {
        Some(listen) => match crate::metrics::serve(listen).await {
            Ok(served) => Served(Some(served)),
            Err(error) => {
                tracing::warn!(error = %crate::report::chain(&error), "the backfill goes on without metrics");
                Served(None)
            }
        },
        None => Served(None),
    };
    if options.restart {
        for mappings in by_source.values() {
            for mapping in mappings {
                restart(config, mapping, &state).await?;
            }
        }
    }
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
    let mut report = String::from("backfill summary:\n");
    for (mapping, rows, elapsed) in &summary {
        let secs = elapsed.as_secs_f64().max(1e-9);
        report.push_str(&format!(
            "  {mapping}: {rows} rows in {secs:.1} s ({:.0} rows/s)\n",
            *rows as f64 / secs
        ));
    }
    crate::output::stderr(&report);
    Ok(())
}

async fn backfill_source(
    config: &Config,
    site: &Site,
    mappings: &[&Mapping],
    options: &BackfillOptions,
    state: &Arc<StateStore>,
    summary: &mut Vec<(String, u64, Duration)>,
) -> Result<(), BackfillError> {
    let mut metas: BTreeMap<String, Option<BackfillMeta>> = BTreeMap::new();
    for mapping in mappings {
        let name = mapping.name.clone();
        let store = state.clone();
        let meta: Option<BackfillMeta> =
            tokio::task::spawn_blocking(move || load_meta(&store, &name))
                .await
                .map_err(|e| BackfillError::Crashed(e.to_string()))??;
        // A resync copies a backfilled mapping again, from a new record.
        let meta = match meta {
            Some(meta) if options.resync && meta.complete => {
                let name = mapping.name.clone();
                let store = state.clone();
                tokio::task::spawn_blocking(move || store.clear_backfill(&name))
                    .await
                    .map_err(|e| BackfillError::Crashed(e.to_string()))??;
                None
            }
            meta => meta,
        };
        metas.insert(mapping.name.clone(), meta);
    }
    let pending: Vec<&Mapping> = mappings
        .iter()
        .copied()
        .filter(|m| {
            let complete = metas[&m.name].as_ref().is_some_and(|meta| meta.complete);
            if complete {
                tracing::info!(mapping = %m.name, "already backfilled: nothing to do (duplex run streams from its handover position; if the source's log lost the targets' positions, copy it again with `{}`)", crate::link::resync_command(&site.name));
            }
            !complete
        })
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    let tables: BTreeSet<TableName> = pending
        .iter()
        .filter_map(|m| m.tables.get(&site.name).cloned())
        .collect();
    let connection = site.connection();
    let schemas = duplex_connectors::describe(&connection, &tables)
        .await
        .map_err(|source| BackfillError::Describe {
            site: site.name.clone(),
            source,
        })?;
    // Targets, their routes, and the checks.
    let key = crate::link::position_key(&site.name, &meta::positions_deployment(config, state));
    let mut jobs = Vec::new();
    for mapping in &pending {
        let table = &mapping.tables[&site.name];
        let resync = match &metas[&mapping.name] {
            Some(meta) => meta.resync || options.resync,
            None => options.resync,
        };
        let mut targets = Vec::new();
        let mut target_schemas = Vec::new();
        for (from, to) in mapping.edges() {
            if from != site.name {
                continue;
            }
            let target = &config.sites[to];
            let routes =
                crate::routes::routes_for(std::slice::from_ref(*mapping), &site.name, to, &schemas);
            target_schemas.push(if resync {
                let table = mapping.tables[to].clone();
                let mut described = duplex_connectors::describe(
                    &target.connection(),
                    &BTreeSet::from([table.clone()]),
                )
                .await
                .map_err(|source| BackfillError::Describe {
                    site: target.name.clone(),
                    source,
                })?;
                described.remove(&table)
            } else {
                None
            });
            if metas[&mapping.name].is_none() && resync {
                forget_catch_up_position(target, mapping, &site.name, state.deployment_id())
                    .await?;
            } else if metas[&mapping.name].is_none() {
                check_target(
                    target,
                    (&site.name, &key),
                    mapping,
                    options.allow_nonempty,
                    &routes,
                )
                .await?;
            }
            targets.push((target.clone(), routes));
        }
        jobs.push((mapping, table.clone(), targets, target_schemas, resync));
    }
    // Foreign keys on targets that check them: referenced tables first (refused before the
    // snapshot when no order works).
    let levels = order::copy_levels(
        &jobs
            .iter()
            .map(|(m, _, targets, ..)| (m.name.as_str(), targets.as_slice()))
            .collect::<Vec<_>>(),
    )
    .await?;

    // The snapshot (PostgreSQL: the publication lists every table read from the site).
    let all_tables: Vec<TableName> = config
        .mappings
        .iter()
        .filter(|m| m.reads_from(&site.name))
        .filter_map(|m| m.tables.get(&site.name).cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let (resume_from, mut streamed_by) =
        still_needed(config, site, &pending, &metas, state).await?;
    if options.resync {
        // The positions those readers resume from are what a resync replaces.
        streamed_by = None;
    }
    let snapshot = SourceSnapshot::take(
        &connection,
        &all_tables,
        resume_from.as_ref().map(|(p, who)| (p, who.as_str())),
        streamed_by.as_deref(),
        state.deployment_id(),
    )
    .await
    .map_err(snapshot_error(site))?;
    let position = snapshot.position();
    tracing::info!(source = %site.name, %position, "snapshot taken");

    // Plans (new mappings) and the new attempt.
    let mut planner = snapshot.reader().await.map_err(snapshot_error(site))?;
    let mut all_jobs = Vec::new();
    for (mapping, table, targets, target_schemas, resync) in jobs {
        let schema = schemas[&table].clone();
        let mut meta = match metas[&mapping.name].clone() {
            Some(meta) => meta,
            None => plan::plan(
                &mut planner,
                &site.name,
                &schema,
                options.chunk_rows,
                resync,
            )
            .await
            .map_err(snapshot_error(site))?,
        };
        meta.resync = resync;
        meta.attempts.push(position.clone());
        save_meta(state, &mapping.name, &meta).await?;
        all_jobs.push(Job {
            mapping: (*mapping).clone(),
            schema,
            targets,
            meta,
            target_schemas,
        });
    }
    planner.close().await;

    // Ranges copied in earlier attempts are brought to the new snapshot first, so that every
    // range on the targets is as of it before any other is copied (see "Resume").
    catch_up::reconcile_markers(&mut all_jobs, state).await?;
    catch_up::catch_up(
        site,
        &all_jobs,
        &position,
        &all_tables,
        state.deployment_id(),
    )
    .await?;
    for job in &mut all_jobs {
        let current = job.meta.attempts.len() as u32 - 1;
        if !job.meta.copied_in.is_empty() && job.meta.caught_up != current {
            job.meta.caught_up = current;
            save_meta(state, &job.mapping.name, &job.meta).await?;
        }
    }

    // Copy.
    let started = Instant::now();
    let copied = copy::copy(site, &snapshot, &mut all_jobs, &levels, options, state).await?;
    snapshot.release().await;

    // The handover (every range is as of the snapshot).
    for job in &mut all_jobs {
        for (target, routes) in &job.targets {
            // Changes this source's stream set aside for the target (dead letters) are older
            // than the snapshot the target now holds: writing them later would put old rows
            // back. They go before the handover commits (a crash in between redoes both).
            let store = state.clone();
            let scope = crate::dead_letters::scope(&site.name, &target.name);
            let discarded =
                tokio::task::spawn_blocking(move || crate::dead_letters::discard(&store, &scope))
                    .await
                    .map_err(|e| BackfillError::Crashed(e.to_string()))??;
            if discarded > 0 {
                tracing::info!(source = %site.name, target = %target.name, discarded, "dead letters of this source and target discarded: the target holds the snapshot's rows");
            }
            if job.meta.resync {
                // The position the target held of the lost stream is replaced, never kept
                // (a position beyond the snapshot would skip the changes after it).
                forget_catch_up_position(target, &job.mapping, &site.name, state.deployment_id())
                    .await?;
                forget_position(target, &key).await?;
            } else {
                forget_position(
                    target,
                    &meta::catch_up_key(&job.mapping.name, &site.name, state.deployment_id()),
                )
                .await?;
            }
            let apply_error = |source| BackfillError::Apply {
                site: target.name.clone(),
                source,
            };
            let mut writer = AnyApplier::connect(
                &target.connection(),
                routes.clone(),
                ApplyOptions::default(),
            )
            .await
            .map_err(apply_error)?;
            let handover = Transaction {
                source: key.clone(),
                position: position.clone(),
                commit_time: chrono::Utc::now(),
                origin: Origin::Local,
                events: Vec::new(),
            };
            writer
                .apply(std::slice::from_ref(&handover))
                .await
                .map_err(apply_error)?;
            duplex_connectors::load::delete_positions_like(
                &target.connection(),
                &markers_of(&job.mapping.name, state.deployment_id()),
            )
            .await
            .map_err(admin_error(target))?;
        }
        job.meta.complete = true;
        save_meta(state, &job.mapping.name, &job.meta).await?;
        let rows = copied.get(&job.mapping.name).copied().unwrap_or(0);
        crate::telemetry::global().backfill_complete(&job.mapping.name);
        summary.push((job.mapping.name.clone(), rows, started.elapsed()));
        tracing::info!(mapping = %job.mapping.name, %position, "backfill complete: duplex run starts streaming from here");
    }
    Ok(())
}

/// A task serving the process's status, stopped when the backfill ends.
struct Served(Option<tokio::task::JoinHandle<()>>);

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// `--restart`: forgets an unfinished backfill of `mapping` (the range markers on its targets,
/// then its finished ranges and record in the state store), so it is copied from scratch like a
/// new one (its targets must then be empty, or `--allow-nonempty` given). A finished backfill
/// is left as it is.
async fn restart(
    config: &Config,
    mapping: &Mapping,
    state: &Arc<StateStore>,
) -> Result<(), BackfillError> {
    let name = mapping.name.clone();
    let store = state.clone();
    let meta = tokio::task::spawn_blocking(move || load_meta(&store, &name))
        .await
        .map_err(|e| BackfillError::Crashed(e.to_string()))??;
    let Some(meta) = meta.filter(|meta| !meta.complete) else {
        return Ok(());
    };
    for (from, to) in mapping.edges() {
        if from != meta.source {
            continue;
        }
        let target = &config.sites[to];
        duplex_connectors::load::delete_positions_like(
            &target.connection(),
            &markers_of(&mapping.name, state.deployment_id()),
        )
        .await
        .map_err(admin_error(target))?;
    }
    let name = mapping.name.clone();
    let store = state.clone();
    tokio::task::spawn_blocking(move || store.clear_backfill(&name))
        .await
        .map_err(|e| BackfillError::Crashed(e.to_string()))??;
    tracing::warn!(mapping = %mapping.name, "the unfinished backfill was given up (--restart): copying from scratch");
    Ok(())
}

/// Deletes the target's `duplex.positions` row of `source` (exactly that name), if any.
async fn forget_position(target: &Site, source: &str) -> Result<(), BackfillError> {
    let connection = target.connection();
    let sources = duplex_connectors::load::position_sources(&connection)
        .await
        .map_err(admin_error(target))?;
    if sources.iter().any(|s| s == source) {
        duplex_connectors::load::delete_position(&connection, source)
            .await
            .map_err(admin_error(target))?;
    }
    Ok(())
}

/// Deletes the target's row of this deployment's catch-up of `mapping` from `site` (a resync's catch-up
/// must not skip what it lists), and, when the target holds no position of `site` for this
/// deployment, the one under the bare site name: duplex before per-deployment keys kept the
/// link's position there, and `duplex run` would take it over. With a row of this deployment,
/// a bare row is another deployment's (MariaDB keeps one `duplex.positions` per server) and
/// stays.
async fn forget_catch_up_position(
    target: &Site,
    mapping: &Mapping,
    site: &str,
    deployment: &str,
) -> Result<(), BackfillError> {
    let connection = target.connection();
    let sources = duplex_connectors::load::position_sources(&connection)
        .await
        .map_err(admin_error(target))?;
    let ours = crate::link::position_key(site, deployment);
    let mut forget = vec![meta::catch_up_key(&mapping.name, site, deployment)];
    if !sources.contains(&ours) {
        forget.push(site.to_owned());
    }
    for source in forget {
        if sources.contains(&source) {
            duplex_connectors::load::delete_position(&connection, &source)
                .await
                .map_err(admin_error(target))?;
        }
    }
    Ok(())
}
