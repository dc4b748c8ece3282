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
//! applier, and that transaction also records a marker row `backfill:<mapping>:<range>` in
//! `duplex.positions` holding the snapshot position the range was read at. So a range is
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
//! permanent slot stays at `P0` and keeps the WAL from there), copies only the ranges not done
//! (ranges done on a target but not yet in the store are recognised by their marker), and then
//! the data on the targets is a mix: ranges as of `P0`, ranges as of `P1`. It is made
//! consistent at `P1` by a catch-up: the source's stream is read from `P0` to `P1`, whole
//! transactions only, and each change is applied (strictly, through the normal applier, which
//! records the position) only to rows whose range was copied at a position before that
//! transaction's commit. The ranges are defined once, at the first attempt, and stored in the
//! backfill record (integer bounds, or key values per column for other keys), so every attempt
//! cuts the same ranges. For keys other than one integer column, the range of a changed row's
//! key is found by the source database (the key is compared with the stored bounds as rows of
//! a union with the table's own columns, so with the same types and collations the ranges were
//! read with). A range copied at `Pk` holds exactly the source's rows as of `Pk`, so applying
//! exactly the transactions after `Pk` to it is exact; ranges copied at `P1` get nothing. A
//! key-changing update between ranges of different ages is split into the delete and the
//! insert half that each range needs. The handover position is then `P1`. If the catch-up is
//! interrupted, the applier's recorded position makes a re-run skip what it already applied.
//! The backfill record keeps every attempt's position (typed [`duplex_connectors::Position`]s),
//! so any number of interruptions work the same way. The catch-up stream keeps the publication's
//! full table list and acknowledges nothing, so the slot never moves past a stopped link's
//! position; a slot found past the first attempt's position is refused (the catch-up could
//! not read what it needs).
//!
//! Until the handover is written, the record says the backfill did not finish, and `duplex run`
//! refuses the mapping with the command that resumes it ([`unfinished`]): streaming it would
//! start past the ranges not copied.
//!
//! # Not done here
//!
//! Version vectors for backfilled rows are not seeded: the merge engine does not exist yet.
//! A target that already holds a position for the source (it is streaming) is refused: the
//! position is per source site, so mappings of one source and target are backfilled together,
//! before `duplex run`.

mod catch_up;
mod copy;
mod meta;
mod order;
mod plan;

pub use meta::{BackfillMeta, KeyBounds, load_meta};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duplex_connectors::{
    AdminError, AnyApplier, Applier, ApplyError, ApplyOptions, Origin, SnapshotError,
    SourceSnapshot, TableName, TableRoute, Transaction,
};
use duplex_state::{StateError, StateStore};

use crate::config::{Config, Direction, Mapping, Site};
use meta::{markers_of, save_meta};
use plan::Job;

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
    /// Forget an unfinished backfill of the selected mappings (its record, finished ranges and
    /// range markers) and copy them from scratch.
    pub restart: bool,
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
        unfinished.push((
            mapping.name.clone(),
            format!("duplex backfill --mapping {}{from}", mapping.name),
        ));
    }
    Ok(unfinished)
}

/// Why `duplex run` refuses the mappings [`unfinished`] found, and the commands that fix it.
pub fn unfinished_refusal(unfinished: &[(String, String)]) -> String {
    let names: Vec<&str> = unfinished.iter().map(|(m, _)| m.as_str()).collect();
    let commands: Vec<String> = unfinished.iter().map(|(_, c)| format!("`{c}`")).collect();
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
                let key = crate::link::position_key(&site.name, state.deployment_id());
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
        jobs.push((mapping, table.clone(), targets));
    }
    // Foreign keys on targets that check them: referenced tables first (refused before the
    // snapshot when no order works).
    let levels = order::copy_levels(
        &jobs
            .iter()
            .map(|(m, _, targets)| (m.name.as_str(), targets.as_slice()))
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
    let (resume_from, streamed_by) = still_needed(config, site, &pending, &metas, state).await?;
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
    for (mapping, table, targets) in jobs {
        let schema = schemas[&table].clone();
        let mut meta = match metas[&mapping.name].clone() {
            Some(meta) => meta,
            None => plan::plan(&mut planner, &site.name, &schema, options.chunk_rows)
                .await
                .map_err(snapshot_error(site))?,
        };
        meta.attempts.push(position.clone());
        save_meta(state, &mapping.name, &meta).await?;
        all_jobs.push(Job {
            mapping: (*mapping).clone(),
            schema,
            targets,
            meta,
        });
    }
    planner.close().await;

    // Copy.
    let started = Instant::now();
    let copied = copy::copy(site, &snapshot, &mut all_jobs, &levels, options, state).await?;
    snapshot.release().await;

    // Catch-up of ranges copied in earlier attempts, then the handover.
    catch_up::catch_up(
        site,
        &all_jobs,
        &position,
        &all_tables,
        state.deployment_id(),
    )
    .await?;
    for job in &mut all_jobs {
        for (target, routes) in &job.targets {
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
                source: crate::link::position_key(&site.name, state.deployment_id()),
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
                &markers_of(&job.mapping.name),
            )
            .await
            .map_err(admin_error(target))?;
        }
        job.meta.complete = true;
        save_meta(state, &job.mapping.name, &job.meta).await?;
        let rows = copied.get(&job.mapping.name).copied().unwrap_or(0);
        summary.push((job.mapping.name.clone(), rows, started.elapsed()));
        tracing::info!(mapping = %job.mapping.name, %position, "backfill complete: duplex run starts streaming from here");
    }
    Ok(())
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
            &markers_of(&mapping.name),
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

/// What the change stream of `site` must still give, for [`SourceSnapshot::take`]:
///
/// - the first snapshot of an interrupted backfill being resumed (its catch-up reads from
///   there, so the stream must be readable from exactly that position), with who and the fix;
/// - who resumes from positions of their own: the targets of the site's link holding a
///   position of it, the link itself when it started but no target holds one yet, the merge
///   engine when it read the site. The stream must still exist for them (a PostgreSQL slot
///   may legitimately be past their positions: a stream acknowledges heartbeats).
///
/// The snapshot refuses a source that cannot give that (a PostgreSQL slot gone, or moved past
/// the resumed backfill's snapshot) instead of creating a new slot that would hide the gap.
async fn still_needed(
    config: &Config,
    site: &Site,
    pending: &[&Mapping],
    metas: &BTreeMap<String, Option<BackfillMeta>>,
    state: &Arc<StateStore>,
) -> Result<
    (
        Option<(duplex_connectors::Position, String)>,
        Option<String>,
    ),
    BackfillError,
> {
    let mut resume_from: Option<(duplex_connectors::Position, String)> = None;
    for mapping in pending {
        let Some(first) = metas[&mapping.name]
            .as_ref()
            .and_then(|meta| meta.attempts.first())
        else {
            continue;
        };
        let older = match &resume_from {
            None => true,
            Some((current, _)) => {
                first
                    .compare(current)
                    .map_err(|e| BackfillError::Invalid(e.to_string()))?
                    == std::cmp::Ordering::Less
            }
        };
        if older {
            resume_from = Some((
                first.clone(),
                format!(
                    "the interrupted backfill of mapping {m} (its catch-up reads from its first \
                     snapshot), so it cannot be resumed: to start it over, empty its target \
                     tables and run `duplex backfill --mapping {m} --restart`",
                    m = mapping.name
                ),
            ));
        }
    }
    // The link of the site: its targets (one-way mappings; the merge engine keeps where it
    // read a site in the state store, and the handover positions a backfill left on the other
    // sites of a two-way mapping are stale once it has read on).
    let targets: BTreeSet<&str> = config
        .mappings
        .iter()
        .filter(|m| m.direction != Direction::Both)
        .flat_map(|m| m.edges())
        .filter(|(from, _)| *from == site.name)
        .map(|(_, to)| to)
        .collect();
    let mut streamed_by = Vec::new();
    for name in targets {
        let target = &config.sites[name];
        let apply_error = |source| BackfillError::Apply {
            site: target.name.clone(),
            source,
        };
        let mut reader =
            AnyApplier::connect(&target.connection(), Vec::new(), ApplyOptions::default())
                .await
                .map_err(apply_error)?;
        let key = crate::link::position_key(&site.name, state.deployment_id());
        if let Some(position) = held_position(&mut reader, &site.name, &key)
            .await
            .map_err(apply_error)?
        {
            streamed_by.push(format!("site {name} streams from it (from {position} on)"));
        }
    }
    let stored = {
        let state = state.clone();
        let keys = [crate::link::start_key(&site.name), site.name.clone()];
        tokio::task::spawn_blocking(move || {
            keys.map(|key| state.position::<duplex_connectors::Position>(&key))
        })
        .await
        .map_err(|e| BackfillError::Crashed(e.to_string()))?
    };
    let [link_start, engine] = stored;
    // Where the link started counts only while no target holds a position (then the link
    // resumes there; afterwards at the lowest target position).
    if let Some(position) = link_start?.filter(|_| streamed_by.is_empty()) {
        streamed_by.push(format!(
            "the link of {} streams from it (it started at {position})",
            site.name
        ));
    }
    let two_way = config
        .mappings
        .iter()
        .any(|m| m.direction == Direction::Both && m.tables.contains_key(&site.name));
    if let Some(position) = engine?.filter(|_| two_way) {
        streamed_by.push(format!(
            "the merge engine streams from it (it read up to {position})"
        ));
    }
    let streamed_by = (!streamed_by.is_empty()).then(|| {
        format!(
            "{}; to go on, re-copy what reads from {s}: empty the target tables of its mappings, \
             delete the targets' `duplex.positions` rows of {s}, and backfill them",
            streamed_by.join(", "),
            s = site.name
        )
    });
    Ok((resume_from, streamed_by))
}

/// The position a target holds of `site` for this deployment (`key`, see
/// [`crate::link::position_key`]), or under the bare site name (recorded before positions were
/// kept per deployment).
async fn held_position(
    applier: &mut AnyApplier,
    site: &str,
    key: &str,
) -> Result<Option<duplex_connectors::Position>, ApplyError> {
    match applier.position(key).await? {
        Some(position) => Ok(Some(position)),
        None => applier.position(site).await,
    }
}

/// Refuses a target that already streams from the source or (without `allow_nonempty`)
/// holds rows.
async fn check_target(
    target: &Site,
    (source, key): (&str, &str),
    mapping: &Mapping,
    allow_nonempty: bool,
    routes: &[TableRoute],
) -> Result<(), BackfillError> {
    let apply_error = |source| BackfillError::Apply {
        site: target.name.clone(),
        source,
    };
    let options = ApplyOptions {
        upsert: allow_nonempty,
        ..ApplyOptions::default()
    };
    let mut writer = AnyApplier::connect(&target.connection(), routes.to_vec(), options)
        .await
        .map_err(apply_error)?;
    if let Some(position) = held_position(&mut writer, source, key)
        .await
        .map_err(apply_error)?
    {
        return Err(BackfillError::Refused(format!(
            "site {t} already holds changes of {source} up to {position}: other mappings stream \
             from {source} into it, and its position is one per source, so a copy of mapping {m} \
             as of a new snapshot cannot hand over to that stream without skipping or repeating \
             changes of the others. To backfill it, backfill every mapping from {source} into {t} \
             together: with duplex stopped, empty their tables on {t}, delete {t}'s \
             `duplex.positions` row of {source} (source {key:?}), and run `duplex backfill` with a --mapping for \
             each of them (or backfill {m} into a site that does not stream from {source})",
            t = target.name,
            m = mapping.name
        )));
    }
    if allow_nonempty {
        return Ok(());
    }
    let table = &mapping.tables[&target.name];
    let empty = duplex_connectors::load::table_is_empty(&target.connection(), table)
        .await
        .map_err(admin_error(target))?;
    if !empty {
        return Err(BackfillError::Refused(format!(
            "table {table} on site {} is not empty: backfill copies into empty tables; \
             empty it, or pass --allow-nonempty to overwrite rows with the same key (rows the source does not have stay)",
            target.name
        )));
    }
    Ok(())
}
