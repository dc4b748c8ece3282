//! Copying: `--jobs` workers take ranges from the work queue, read each in the snapshot and
//! write it into every target in one target transaction together with its marker; one place
//! records finished ranges in the state store and shows progress.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duplex_connectors::{
    AnyApplier, AnySnapshot, Applier, ApplyOptions, ChangeEvent, Op, Origin, Position,
    SnapshotRead, SourceSnapshot, TableRoute, TableSchema, Transaction, Value,
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
                )
            })
            .collect(),
    );
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut workers = JoinSet::new();
    for _ in 0..options.jobs.max(1) {
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
                order,
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
        totals.push(done_ranges(state, job).await?.values().sum());
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

/// Copies ranges from the queue until it is empty: reads each in the snapshot and writes it
/// into every target with its marker, unless a target already holds it from an earlier
/// attempt (recognised by its marker).
#[allow(clippy::too_many_arguments)]
async fn worker(
    site: Site,
    mut reader: AnySnapshot,
    work: WorkQueue,
    jobs: SharedJobs,
    done: mpsc::UnboundedSender<Done>,
    position: Position,
    upsert: bool,
    attempt_positions: Vec<Vec<Position>>,
    order: Order,
) -> Result<(), BackfillError> {
    let mut writers: HashMap<(usize, usize), AnyApplier> = HashMap::new();
    loop {
        let next = work.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
        let Some((index, range_id)) = next else {
            return Ok(());
        };
        let level = order.levels[index];
        order.wait_below(level).await;
        let (mapping, schema, targets, meta) = &jobs[index];
        let source_table = &schema.name;
        let range = meta.range(range_id, schema);
        let rows = reader
            .rows(source_table, &schema.columns, &range)
            .await
            .map_err(snapshot_error(&site))?;
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
                let options = ApplyOptions {
                    upsert,
                    ..ApplyOptions::default()
                };
                slot.insert(
                    AnyApplier::connect(&target.connection(), routes.clone(), options)
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
        order.landed(level);
        if done.send((index, range_id, count, copied_in)).is_err() {
            return Ok(());
        }
    }
}
