//! Copying: `--jobs` workers take ranges from the work queue, read each in the snapshot and
//! write it into every target in one target transaction together with its marker; one place
//! records finished ranges in the state store and shows progress.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duplex_connectors::bulk::{BulkRows, BulkShape};
use duplex_connectors::{
    AnyApplier, AnySnapshot, Applier, ApplyOptions, ChangeEvent, Column, KeyRange, Op, Origin,
    Position, SnapshotRead, SourceSnapshot, TableRoute, TableSchema, Transaction, Value,
};
use duplex_state::StateStore;
use indicatif::{MultiProgress, ProgressBar, ProgressState, ProgressStyle};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::meta::{BackfillMeta, marker};
use super::plan::{Job, WorkQueue, done_ranges, work_queue};
use super::{BackfillError, BackfillOptions, snapshot_error};
use crate::config::{Mapping, Site};

/// A finished range: job index, range id, rows, the attempt it was copied in.
type Done = (usize, u64, u64, u32);

/// What the workers share of every job.
type SharedJobs = Arc<
    Vec<(
        Mapping,
        TableSchema,
        Vec<(Site, Vec<TableRoute>)>,
        BackfillMeta,
        Vec<Option<TableSchema>>,
    )>,
>;

/// Copies every range not done yet with `options.jobs` workers; returns rows per mapping.
///
/// `levels` (one per job, see [`super::order`]): the ranges are taken level by level, and a
/// worker holding a range of level `n` writes it only once every range of lower levels is on
/// every target.
pub(super) async fn copy(
    site: &Site,
    snapshot: &SourceSnapshot,
    jobs: &mut [Job],
    levels: &[usize],
    options: &BackfillOptions,
    state: &Arc<StateStore>,
) -> Result<BTreeMap<String, u64>, BackfillError> {
    let position = snapshot.position();
    let work = work_queue(jobs, state).await?;
    let gate = {
        let mut queue = work.lock().unwrap_or_else(|e| e.into_inner());
        queue
            .make_contiguous()
            .sort_by_key(|(index, _)| levels[*index]);
        let mut remaining = vec![0u64; levels.iter().max().map_or(1, |m| m + 1)];
        for (index, _) in queue.iter() {
            remaining[levels[*index]] += 1;
        }
        Arc::new(tokio::sync::watch::channel(remaining).0)
    };
    let levels: Arc<Vec<usize>> = Arc::new(levels.to_vec());
    let shared: SharedJobs = Arc::new(
        jobs.iter()
            .map(|j| {
                (
                    j.mapping.clone(),
                    j.schema.clone(),
                    j.targets.clone(),
                    j.meta.clone(),
                    j.target_schemas.clone(),
                )
            })
            .collect(),
    );
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut workers = JoinSet::new();
    let bulk: BulkDecisions = Arc::new(jobs.iter().map(|_| Default::default()).collect());
    for _ in 0..options.jobs.max(1) {
        let bulk = bulk.clone();
        let reader = snapshot.reader().await.map_err(snapshot_error(site))?;
        let work = work.clone();
        let shared = shared.clone();
        let done_tx = done_tx.clone();
        let position = position.clone();
        let site = site.clone();
        let upsert = options.allow_nonempty;
        let attempt_positions: Vec<Vec<Position>> =
            jobs.iter().map(|j| j.meta.attempts.clone()).collect();
        let order = Order {
            levels: levels.clone(),
            remaining: gate.clone(),
        };
        let copier = Copier {
            site,
            deployment: state.deployment_id().to_owned(),
            jobs: shared,
            done: done_tx,
            position,
            upsert,
            attempt_positions,
            order,
            bulk,
        };
        workers.spawn(worker(copier, reader, work));
    }
    drop(done_tx);
    // Progress and the state store, from one place so that record writes never race.
    let mut copied: BTreeMap<String, u64> = BTreeMap::new();
    let terminal = std::io::stderr().is_terminal();
    let mut last_log = Instant::now();
    let started = Instant::now();
    let mut totals: Vec<u64> = Vec::new();
    for job in jobs.iter() {
        totals.push(done_ranges(state, job).await?.values().sum());
    }
    for (job, total) in jobs.iter().zip(&totals) {
        report_progress(job, *total);
    }
    let bars = terminal.then(|| progress_bars(jobs, &totals));
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
                report_progress(job, totals[index]);
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

/// Tells the process's telemetry (`duplex status`, `/metrics`) how far `job` got: `copied`
/// rows in all.
pub(super) fn report_progress(job: &Job, copied: u64) {
    let meta = &job.meta;
    crate::telemetry::global().backfill(crate::telemetry::BackfillProgress {
        mapping: job.mapping.name.clone(),
        source: meta.source.clone(),
        copied,
        planned: meta.rows.max(copied),
        ranges_done: meta.copied_in.len() as u64,
        ranges: meta.range_count().max(1) as u64,
        complete: meta.complete,
    });
}

/// One progress bar per mapping (on a terminal): rows copied of the planned total, rate, ETA.
fn progress_bars(jobs: &[Job], totals: &[u64]) -> (MultiProgress, Vec<ProgressBar>) {
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
        .zip(totals)
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
}

/// Copies ranges from the queue until it is empty: reads each in the snapshot and writes it
/// into every target with its marker, unless a target already holds it from an earlier
/// attempt (recognised by its marker).
///
/// Reading and writing overlap: while the targets write one range, the snapshot reads the
/// next, so neither the source nor the targets wait for the other (one range ahead at most,
/// so a worker holds two ranges at a time). A range is still written only once every range of
/// lower levels is on every target ([`Order`]); reading ahead of that cannot change what is
/// read, the snapshot is fixed.
async fn worker(
    copier: Copier,
    mut reader: AnySnapshot,
    work: WorkQueue,
) -> Result<(), BackfillError> {
    let mut sessions = Sessions::default();
    let result = copier.pipeline(&mut reader, &work, &mut sessions).await;
    for (_, target_reader) in sessions.target_readers {
        target_reader.close().await;
    }
    result
}

/// What a worker needs of the copy besides its own connections.
struct Copier {
    site: Site,
    /// The state directory's identity, part of every range marker's name.
    deployment: String,
    jobs: SharedJobs,
    done: mpsc::UnboundedSender<Done>,
    /// The snapshot's position: every range's target transaction records it.
    position: Position,
    upsert: bool,
    /// Per job, the positions of every attempt of its copy (the last is this one).
    attempt_positions: Vec<Vec<Position>>,
    order: Order,
    bulk: BulkDecisions,
}

/// A range read from the snapshot, not yet written.
struct ReadRange {
    index: usize,
    range_id: u64,
    /// The range's target transaction: its marker, the snapshot's position, canonical rows
    /// (none when the range is read in bulk).
    txn: Transaction,
    bulk: Option<BulkRows>,
    /// The rows read.
    count: u64,
}

impl Copier {
    /// Takes ranges until the queue is empty, writing each while the next is read.
    async fn pipeline(
        &self,
        reader: &mut AnySnapshot,
        work: &WorkQueue,
        sessions: &mut Sessions,
    ) -> Result<(), BackfillError> {
        let mut in_hand: Option<ReadRange> = None;
        loop {
            let next = work.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
            let Some((index, range_id)) = next else {
                if let Some(range) = in_hand {
                    self.write(sessions, range).await?;
                }
                return Ok(());
            };
            let mut current = in_hand.take();
            let shape = match self.prepared(sessions, index) {
                Some(shape) => shape,
                None => {
                    // Connecting to the targets and asking them about the bulk path needs
                    // the target sessions: the range in hand is written first.
                    if let Some(range) = current.take() {
                        self.write(sessions, range).await?;
                    }
                    self.prepare(reader, sessions, index).await?
                }
            };
            let read = self.read(reader, index, range_id, shape);
            in_hand = Some(match current {
                Some(range) => {
                    let (written, read) = tokio::join!(self.write(sessions, range), read);
                    written?;
                    read?
                }
                None => read.await?,
            });
        }
    }

    /// How job `index`'s ranges are read (the bulk shape, or `None`: canonical rows), once
    /// this worker is connected to every target of the job and the decision is made;
    /// `None` before.
    fn prepared(&self, sessions: &Sessions, index: usize) -> Option<Option<Arc<BulkShape>>> {
        let targets = self.jobs[index].2.len();
        if (0..targets).any(|t| !sessions.writers.contains_key(&(index, t))) {
            return None;
        }
        self.bulk[index].get().cloned()
    }

    /// Connects to every target of job `index` and decides how its ranges are read.
    async fn prepare(
        &self,
        reader: &mut AnySnapshot,
        sessions: &mut Sessions,
        index: usize,
    ) -> Result<Option<Arc<BulkShape>>, BackfillError> {
        let (_, _, targets, meta, _) = &self.jobs[index];
        let upsert = self.upsert || meta.resync;
        for (t, (target, routes)) in targets.iter().enumerate() {
            if let std::collections::hash_map::Entry::Vacant(slot) =
                sessions.writers.entry((index, t))
            {
                let options = ApplyOptions {
                    upsert,
                    ..ApplyOptions::default()
                };
                slot.insert(
                    AnyApplier::connect(&target.connection(), routes.clone(), options)
                        .await
                        .map_err(apply_error(target))?,
                );
            }
        }
        Ok(self.bulk[index]
            .get_or_try_init(|| bulk_shape(&self.site, reader, &self.jobs, index, upsert, sessions))
            .await?
            .clone())
    }

    /// Reads range `range_id` of job `index` in the snapshot, in `shape` when given.
    async fn read(
        &self,
        reader: &mut AnySnapshot,
        index: usize,
        range_id: u64,
        shape: Option<Arc<BulkShape>>,
    ) -> Result<ReadRange, BackfillError> {
        let (mapping, schema, _, meta, _) = &self.jobs[index];
        let source_table = &schema.name;
        let range = meta.range(range_id, schema);
        let site = &self.site;
        let (events, bulk, count) = match &shape {
            Some(shape) => {
                let rows = reader
                    .bulk_rows(shape, &range)
                    .await
                    .map_err(snapshot_error(site))?;
                let count = rows.rows;
                (Vec::new(), Some(rows), count)
            }
            None => {
                let rows = reader
                    .rows(source_table, &schema.columns, &range)
                    .await
                    .map_err(snapshot_error(site))?;
                let count = rows.len() as u64;
                // The key's column names, shared by every row's key instead of allocated
                // per row.
                let key_names: Vec<Arc<str>> = schema
                    .primary_key
                    .iter()
                    .map(|k| Arc::from(k.as_str()))
                    .collect();
                let events = rows
                    .into_iter()
                    .map(|row| ChangeEvent {
                        table: source_table.clone(),
                        op: Op::Insert,
                        key: key_names
                            .iter()
                            .map(|k| (k.clone(), row.get(k).cloned().unwrap_or(Value::Null)))
                            .collect(),
                        before: None,
                        after: Some(row),
                    })
                    .collect();
                (events, None, count)
            }
        };
        Ok(ReadRange {
            index,
            range_id,
            txn: Transaction {
                source: marker(&mapping.name, &self.deployment, range_id),
                position: self.position.clone(),
                commit_time: chrono::Utc::now(),
                origin: Origin::Local,
                events,
            },
            bulk,
            count,
        })
    }

    /// Writes `read` into every target of its job, once every range of lower levels is on
    /// every target, and reports it done.
    async fn write(&self, sessions: &mut Sessions, read: ReadRange) -> Result<(), BackfillError> {
        let level = self.order.levels[read.index];
        self.order.wait_below(level).await;
        self.write_range(sessions, &read).await?;
        self.order.landed(level);
        let copied_in = self.attempt_positions[read.index].len() as u32 - 1;
        // A closed channel: the copy is being abandoned.
        let _ = self
            .done
            .send((read.index, read.range_id, read.count, copied_in));
        Ok(())
    }

    /// Writes one range into every target (see [`worker`]).
    async fn write_range(
        &self,
        sessions: &mut Sessions,
        read: &ReadRange,
    ) -> Result<(), BackfillError> {
        let ReadRange {
            index,
            range_id,
            txn,
            bulk,
            ..
        } = read;
        let (index, range_id) = (*index, *range_id);
        let (mapping, schema, targets, meta, target_schemas) = &self.jobs[index];
        let source_table = &schema.name;
        let position = &self.position;
        let attempts = &self.attempt_positions[index];
        for (t, (target, routes)) in targets.iter().enumerate() {
            let writer = sessions
                .writers
                .get_mut(&(index, t))
                .expect("connected before the range was read");
            // A range an interrupted run wrote but did not record was recorded from its marker
            // before the catch-up (`catch_up::reconcile_markers`) unless the targets disagree.
            if let Some(held) = writer
                .position(&txn.source)
                .await
                .map_err(apply_error(target))?
                && attempts.contains(&held)
                && held != *position
            {
                return Err(BackfillError::Refused(format!(
                    "range {range_id} of mapping {} is on {} from an earlier attempt but not in the state store, \
                     and not on every target from the same attempt: this cannot be reconciled automatically; \
                     empty the mapping's target tables and start it over with `duplex backfill --mapping {} --restart`",
                    mapping.name, target.name, mapping.name
                )));
            }
            if let Some(rows) = bulk {
                writer
                    .load_bulk(txn, rows)
                    .await
                    .map_err(apply_error(target))?;
                continue;
            }
            // A resync replaces the target's rows of the range: the rows the source does not
            // have are deleted in the range's own target transaction, before it upserts.
            let mut replacing;
            let mut written = txn;
            if meta.resync {
                let target_schema = target_schemas[t].as_ref().ok_or_else(|| {
                    BackfillError::Invalid(format!(
                        "the table of mapping {} on site {} was not described",
                        mapping.name, target.name
                    ))
                })?;
                if let std::collections::hash_map::Entry::Vacant(slot) =
                    sessions.target_readers.entry((index, t))
                {
                    slot.insert(
                        AnySnapshot::open(&target.connection())
                            .await
                            .map_err(snapshot_error(target))?,
                    );
                }
                let target_reader = sessions
                    .target_readers
                    .get_mut(&(index, t))
                    .expect("just inserted");
                let route = routes
                    .iter()
                    .find(|r| r.source == *source_table)
                    .ok_or_else(|| duplex_connectors::ApplyError::NoRoute(source_table.clone()))
                    .map_err(apply_error(target))?;
                let range = meta.range(range_id, schema);
                let stale = stale_rows(target_reader, route, target_schema, &range, txn)
                    .await
                    .map_err(snapshot_error(target))?;
                if !stale.is_empty() {
                    tracing::debug!(mapping = %mapping.name, target = %target.name, range = range_id, rows = stale.len(), "deleting target rows the source does not have");
                    replacing = txn.clone();
                    replacing.events = stale;
                    replacing.events.extend(txn.events.iter().cloned());
                    written = &replacing;
                }
            }
            let writer = sessions
                .writers
                .get_mut(&(index, t))
                .expect("connected before the range was read");
            writer.load(written).await.map_err(apply_error(target))?;
        }
        Ok(())
    }
}

/// The copy order the workers keep: each job's level, and the ranges not yet on every target
/// per level.
struct Order {
    levels: Arc<Vec<usize>>,
    remaining: Arc<tokio::sync::watch::Sender<Vec<u64>>>,
}

impl Order {
    /// Waits until every range of a level below `level` is on every target.
    async fn wait_below(&self, level: usize) {
        let mut rx = self.remaining.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = rx
            .wait_for(|remaining| remaining[..level].iter().all(|&r| r == 0))
            .await;
    }

    /// Records that one range of `level` is on every target.
    fn landed(&self, level: usize) {
        self.remaining
            .send_modify(|remaining| remaining[level] -= 1);
    }
}

/// A worker's connections to the targets, per (job, target).
#[derive(Default)]
struct Sessions {
    writers: HashMap<(usize, usize), AnyApplier>,
    target_readers: HashMap<(usize, usize), AnySnapshot>,
}

/// Per job, whether its ranges go through unread (see `duplex_connectors::bulk`), decided
/// by the first worker that copies one of them.
type BulkDecisions = Arc<Vec<tokio::sync::OnceCell<Option<Arc<BulkShape>>>>>;

/// The bulk shape job `index`'s ranges are copied in, when every target takes it unread: not
/// for a resync or an upserting copy (they write row by row), not when `DUPLEX_BACKFILL_BULK=off`
/// (for comparing the two paths), otherwise as the source's and every target's kind decide.
async fn bulk_shape(
    site: &Site,
    reader: &mut AnySnapshot,
    jobs: &SharedJobs,
    index: usize,
    upsert: bool,
    sessions: &mut Sessions,
) -> Result<Option<Arc<BulkShape>>, BackfillError> {
    let (mapping, schema, targets, _, _) = &jobs[index];
    if upsert || std::env::var("DUPLEX_BACKFILL_BULK").is_ok_and(|v| v == "off") {
        return Ok(None);
    }
    let Some(shape) = reader
        .bulk_shape(&schema.name, &schema.columns)
        .await
        .map_err(snapshot_error(site))?
    else {
        return Ok(None);
    };
    for (t, (target, _)) in targets.iter().enumerate() {
        let writer = sessions
            .writers
            .get_mut(&(index, t))
            .expect("connected above");
        if !writer
            .takes_bulk(&shape)
            .await
            .map_err(apply_error(target))?
        {
            tracing::info!(mapping = %mapping.name, target = %target.name, "copying as canonical rows: the target's column types are not exactly the source's, or its kind differs");
            return Ok(None);
        }
    }
    tracing::info!(mapping = %mapping.name, "copying unread in the source's bulk format (every target has the very same column types)");
    Ok(Some(Arc::new(shape)))
}

/// Wraps an applier error of `target`.
fn apply_error(target: &Site) -> impl Fn(duplex_connectors::ApplyError) -> BackfillError + '_ {
    move |source| BackfillError::Apply {
        site: target.name.clone(),
        source,
    }
}

/// For a resync: a delete of every row of `range` in the target table (`route`, `target`)
/// whose key is not among the keys of `txn`'s rows (the source's rows of the range), read in
/// `reader`. The range is selected by the target database: the ranges of a resync are cut
/// only on integer keys (or the table is one range), which every kind orders alike.
async fn stale_rows(
    reader: &mut AnySnapshot,
    route: &TableRoute,
    target: &TableSchema,
    range: &KeyRange,
    txn: &Transaction,
) -> Result<Vec<ChangeEvent>, duplex_connectors::SnapshotError> {
    let target_name = |source: &str| -> String {
        route
            .columns
            .iter()
            .find(|(s, _)| s == source)
            .map_or_else(|| source.to_owned(), |(_, t)| t.clone())
    };
    let column = |source: &str| -> Column {
        let name = target_name(source);
        target.column(&name).cloned().unwrap_or(Column {
            name,
            type_name: String::new(),
            declared: String::new(),
            nullable: false,
        })
    };
    let key_columns: Vec<Column> = route.key.iter().map(|k| column(k)).collect();
    let target_range = KeyRange {
        columns: range.columns.iter().map(|c| column(&c.name)).collect(),
        lo: range.lo.clone(),
        hi: range.hi.clone(),
    };
    let held: HashSet<String> = txn
        .events
        .iter()
        .map(|e| key_text(route.key.iter().map(|k| e.key.get(k))))
        .collect();
    let rows = reader
        .rows(&route.target, &key_columns, &target_range)
        .await?;
    let table = txn
        .events
        .first()
        .map_or_else(|| route.source.clone(), |e| e.table.clone());
    Ok(rows
        .into_iter()
        .filter(|row| {
            !held.contains(&key_text(
                key_columns.iter().map(|c| row.get(c.name.as_str())),
            ))
        })
        .map(|row| ChangeEvent {
            table: table.clone(),
            op: Op::Delete,
            key: route
                .key
                .iter()
                .zip(&key_columns)
                .map(|(k, c)| {
                    (
                        k.as_str(),
                        row.get(c.name.as_str()).cloned().unwrap_or(Value::Null),
                    )
                })
                .collect(),
            before: None,
            after: None,
        })
        .collect())
}

/// A key as text for comparing keys read on different kinds of database: integers by value
/// (a signed and an unsigned column holding the same number are the same key), anything else
/// by its canonical value.
fn key_text<'a>(values: impl Iterator<Item = Option<&'a Value>>) -> String {
    values
        .map(|v| match v {
            Some(Value::Int(i)) => i.to_string(),
            Some(Value::UInt(u)) => u.to_string(),
            Some(other) => format!("{other:?}"),
            None => "NULL".to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\u{1f}")
}
