//! The merge engine at work: two-way mappings across two or more sites (DESIGN.md, "Merge
//! engine and version vectors"; the decisions themselves are [`merge`]).
//!
//! # Shape
//!
//! One reader per site streams that site's mapped tables plus `duplex.positions` (the echo
//! marker), whole transactions. One writer per site applies the engine's writes there with a
//! conditional applier (no clobbering). Between them sits one coordinator, the only task that
//! decides: it takes what every reader delivers, one input at a time, in each site's commit
//! order, and for each row change
//!
//! - of a transaction duplex wrote (an *echo*, recognised by its `duplex.positions` row naming
//!   this site's outbox): records that the site now holds the vectors written, for the writes
//!   that landed, and forgets the outbox entries the echo covers;
//! - of an application: classifies it against the row's merged vector — a successor is
//!   written to every other site; a concurrent change is a conflict, resolved by the
//!   mapping's policy, logged, and the outcome written to every site that does not hold it.
//!
//! # The outbox, and why nothing is lost or written twice
//!
//! Every write the coordinator decides is an outbox entry of its target site, numbered from 1
//! per site. A batch of inputs is processed inside ONE state-store transaction that holds the
//! new row versions, the conflict records, the new outbox entries and every reader's new
//! position; only after it commits are the entries handed to the writers and the sources
//! acknowledged. A crash therefore loses either nothing or the whole batch, and the readers
//! restart from the positions committed with it, so the same inputs are decided again.
//!
//! A writer writes entries in order, each as a transaction whose position is
//! [`Position::Outbox`]`(seq)`, recorded in `duplex.positions` under `merge:<site>` in the same
//! target transaction (see `duplex_connectors::apply`): an entry is written at most once, and
//! on restart the writer is given exactly the entries after the recorded one. An entry leaves
//! the outbox when the site's reader meets the echo of the transaction that carried it: the
//! echo says how far the outbox got, and a row the echo does not contain was skipped by the
//! conditional write (the site changed the row first; its own change is read before the echo
//! and classified by its vector, so the write was not needed or the conflict is handled).
//!
//! # No clobbering
//!
//! Each entry carries the image the site is expected to hold ([`rows::RowData::expect`]); the
//! applier writes it only if the row there still equals that image, so a local change the
//! engine has not read yet is never overwritten.

pub mod control;
pub mod merge;
pub mod rows;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use duplex_connectors::apply::{Applier, ApplyError, ApplyOptions, TableRoute};
use duplex_connectors::{ChangeEvent, Op, Origin, Position, Row, TableName, Transaction, Value};
use duplex_state::{
    ConflictRecord, ConflictSide, ConflictStatus, Resolution, RowVersions, StateError, StateStore,
    StateWriter, VersionVector,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::backoff::Backoff;
use crate::config::{Config, Direction, Site};
use crate::report::chain;
use crate::shutdown::stop_requested;
use duplex_connectors::{
    AnyApplier, AnyStream, DescribeError, StreamError, StreamItem, StreamOptions,
};
use merge::{Classification, Outcome, Version};
use rows::{MergeMapping, RowData, display_image, fill_unchanged, same_image};

/// Inputs the coordinator takes in one state-store transaction, at most.
const BATCH_INPUTS: usize = 512;
/// Outbox entries one writer puts into one target transaction, at most.
const WRITE_BATCH: usize = 1000;
/// Outbox entries queued per writer before the coordinator waits.
const WRITER_QUEUE: usize = 8192;
/// How often the engine logs its counters.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// The name a site's outbox position is recorded under in that site's `duplex.positions`.
pub fn outbox_name(site: &str) -> String {
    format!("merge:{site}")
}

/// The bookkeeping table, as change events name it.
fn positions_table() -> TableName {
    TableName::new("duplex", "positions")
}

/// One write of the outbox: a row version for one site.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxWrite {
    /// The mapping.
    pub mapping: String,
    /// The row's key text (its identity in the state store).
    pub key: String,
    /// Insert, update or delete at the site.
    pub op: Op,
    /// The key columns (canonical).
    pub key_row: Row,
    /// The image the site is expected to hold (the write's condition); `None` for an insert.
    pub before: Option<Row>,
    /// The image written; `None` for a delete.
    pub after: Option<Row>,
    /// The version vector of the image written.
    pub vector: VersionVector,
}

/// One site's outbox entries not yet echoed, by sequence number and by row (mapping, key).
#[derive(Debug, Default)]
struct Outbox {
    entries: BTreeMap<u64, OutboxWrite>,
    by_row: HashMap<String, HashMap<String, BTreeSet<u64>>>,
}

impl Outbox {
    fn insert(&mut self, seq: u64, write: OutboxWrite) {
        self.by_row
            .entry(write.mapping.clone())
            .or_default()
            .entry(write.key.clone())
            .or_default()
            .insert(seq);
        self.entries.insert(seq, write);
    }

    fn remove(&mut self, seq: u64) -> Option<OutboxWrite> {
        let write = self.entries.remove(&seq)?;
        if let Some(rows) = self.by_row.get_mut(&write.mapping) {
            if let Some(seqs) = rows.get_mut(&write.key) {
                seqs.remove(&seq);
                if seqs.is_empty() {
                    rows.remove(&write.key);
                }
            }
            if rows.is_empty() {
                self.by_row.remove(&write.mapping);
            }
        }
        Some(write)
    }

    /// The row's entries, oldest first.
    fn of_row(&self, mapping: &str, key: &str) -> impl Iterator<Item = (u64, &OutboxWrite)> {
        self.by_row
            .get(mapping)
            .and_then(|rows| rows.get(key))
            .into_iter()
            .flatten()
            .map(|seq| (*seq, &self.entries[seq]))
    }
}

/// What the engine reads and writes.
#[derive(Debug, Clone)]
pub struct MergePlan {
    /// Every site of a two-way mapping, in configuration order.
    pub sites: Vec<MergeSite>,
    /// The two-way mappings.
    pub mappings: Vec<MergeMapping>,
    /// How long vectors of rows deleted everywhere are kept.
    pub deleted_rows_kept_for: Duration,
}

/// One site of the engine.
#[derive(Debug, Clone)]
pub struct MergeSite {
    /// The site.
    pub site: Site,
    /// Its tables of two-way mappings.
    pub tables: BTreeSet<TableName>,
    /// Canonical table -> its table.
    pub routes: Vec<TableRoute>,
}

impl MergePlan {
    fn mapping_for(&self, site: &str, table: &TableName) -> Option<&MergeMapping> {
        self.mappings
            .iter()
            .find(|m| m.tables.get(site) == Some(table))
    }

    fn mapping(&self, name: &str) -> Option<&MergeMapping> {
        self.mappings.iter().find(|m| m.name == name)
    }

    fn site_index(&self, name: &str) -> Option<usize> {
        self.sites.iter().position(|s| s.site.name == name)
    }
}

/// Why the engine stopped or an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A site's change stream failed.
    #[error("reading site {site}")]
    Source {
        /// Site.
        site: String,
        /// Cause.
        #[source]
        source: Box<StreamError>,
    },
    /// Writing into a site failed.
    #[error("writing into site {site}")]
    Apply {
        /// Site.
        site: String,
        /// Cause.
        #[source]
        source: Box<ApplyError>,
    },
    /// The mapped tables of a site cannot be read.
    #[error("reading the mapped tables of site {site}")]
    Describe {
        /// Site.
        site: String,
        /// Cause.
        #[source]
        source: DescribeError,
    },
    /// The state store failed.
    #[error("the state store failed")]
    State(#[from] StateError),
    /// A stored record could not be decoded (a bug or a damaged store).
    #[error("decoding the engine's record of {0}")]
    Codec(String, #[source] duplex_state::CodecError),
    /// Something the engine cannot handle.
    #[error("{0}")]
    Unsupported(String),
    /// A task of the engine crashed (a bug).
    #[error("a task of the merge engine crashed: {0}")]
    Crashed(String),
    /// The writer of a site stopped before saying why.
    #[error("the writer of site {0} stopped")]
    WriterStopped(String),
}

impl EngineError {
    /// True when restarting after a backoff may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            EngineError::Source { source, .. } => source.is_transient(),
            EngineError::Apply { source, .. } => source.is_transient(),
            EngineError::Describe { source, .. } => source.is_transient(),
            EngineError::WriterStopped(_) => true,
            EngineError::State(_)
            | EngineError::Codec(..)
            | EngineError::Unsupported(_)
            | EngineError::Crashed(_) => false,
        }
    }
}

/// Builds the engine's plan from the two-way mappings of `config`; `None` when there are none.
pub async fn plan(config: &Config) -> Result<Option<MergePlan>, EngineError> {
    let two_way: Vec<_> = config
        .mappings
        .iter()
        .filter(|m| m.direction == Direction::Both)
        .collect();
    if two_way.is_empty() {
        return Ok(None);
    }
    let mut site_names: Vec<&str> = Vec::new();
    for name in config.sites.keys() {
        if two_way.iter().any(|m| m.tables.contains_key(name)) {
            site_names.push(name);
        }
    }
    let mut schemas = HashMap::new();
    for name in &site_names {
        let site = &config.sites[*name];
        let tables: BTreeSet<TableName> = two_way
            .iter()
            .filter_map(|m| m.tables.get(*name).cloned())
            .collect();
        let described = duplex_connectors::describe(&site.connection(), &tables)
            .await
            .map_err(|source| EngineError::Describe {
                site: site.name.clone(),
                source,
            })?;
        schemas.insert(name.to_string(), described);
    }
    let mut mappings = Vec::new();
    for mapping in two_way {
        let (first_site, first_table) = mapping.tables.first().expect("validated: two sites");
        let first = &schemas[first_site][first_table];
        let columns: Vec<String> = match &mapping.columns {
            Some(columns) => columns.clone(),
            None => first
                .columns
                .iter()
                .map(|c| mapping.canonical_column(first_site, &c.name).to_owned())
                .collect(),
        };
        let key: Vec<String> = first
            .primary_key
            .iter()
            .map(|c| mapping.canonical_column(first_site, c).to_owned())
            .collect();
        if let Some(missing) = key.iter().find(|k| !columns.contains(k)) {
            return Err(EngineError::Unsupported(format!(
                "mapping {}: key column {missing} is not among the replicated columns: add it to `columns`",
                mapping.name
            )));
        }
        let mut to_canonical = BTreeMap::new();
        for site in mapping.tables.keys() {
            let names: HashMap<String, String> = columns
                .iter()
                .map(|c| (mapping.site_column(site, c).to_owned(), c.clone()))
                .collect();
            to_canonical.insert(site.clone(), names);
        }
        mappings.push(MergeMapping {
            name: mapping.name.clone(),
            canonical: TableName::new(rows::CANONICAL_SCHEMA, &mapping.name),
            sites: mapping.tables.keys().cloned().collect(),
            columns,
            key,
            policy: mapping.conflict.clone(),
            tables: mapping.tables.clone().into_iter().collect(),
            to_canonical,
        });
    }
    let sites = site_names
        .iter()
        .map(|name| {
            let routes = mappings
                .iter()
                .filter_map(|m| {
                    let table = m.tables.get(*name)?;
                    let names = &m.to_canonical[*name];
                    let mut columns: Vec<(String, String)> = names
                        .iter()
                        .map(|(local, canonical)| (canonical.clone(), local.clone()))
                        .collect();
                    columns.sort_by_key(|(canonical, _)| {
                        m.columns.iter().position(|c| c == canonical)
                    });
                    Some(TableRoute {
                        source: m.canonical.clone(),
                        target: table.clone(),
                        columns,
                        key: m.key.clone(),
                    })
                })
                .collect();
            MergeSite {
                site: config.sites[*name].clone(),
                tables: mappings
                    .iter()
                    .filter_map(|m| m.tables.get(*name).cloned())
                    .collect(),
                routes,
            }
        })
        .collect();
    Ok(Some(MergePlan {
        sites,
        mappings,
        deleted_rows_kept_for: config.deleted_rows_kept_for,
    }))
}

/// Runs the engine until `shutdown` turns true (Ok) or it fails definitively (Err);
/// transient failures restart it after a backoff, from what the state store holds.
pub async fn run(
    plan: MergePlan,
    store: Arc<StateStore>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), EngineError> {
    let mut backoff = Backoff::default();
    loop {
        backoff.attempt_started();
        match attempt(&plan, &store, &mut shutdown).await {
            Ok(()) => return Ok(()),
            Err(error) if error.is_transient() => {
                let delay = backoff.failed();
                tracing::warn!(error = %chain(&error), "merge engine interrupted; restarting in {delay:.1?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop_requested(&mut shutdown) => return Ok(()),
                }
            }
            Err(error) => return Err(error),
        }
    }
}

/// What reaches the coordinator.
enum Input {
    /// A reader's item.
    Item(usize, StreamItem),
    /// A reader or writer failed.
    Failed(EngineError),
    /// A request of `duplex conflicts` (through the control socket).
    Control(control::Request, oneshot::Sender<control::Response>),
}

/// One row's change as the coordinator decides it: the key (row and text), whether the row
/// existed at the site before, and the canonical before- and after-images.
type RowChange<'k> = (&'k (Row, String), bool, Option<Row>, Option<Row>);

/// Counters for the log.
#[derive(Debug, Default, Clone)]
struct Stats {
    local_changes: u64,
    writes: u64,
    echoes: u64,
    skipped: u64,
    conflicts: u64,
}

async fn attempt(
    plan: &MergePlan,
    store: &Arc<StateStore>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), EngineError> {
    let (input_tx, mut inputs) = mpsc::channel::<Input>(4096);
    let mut tasks: JoinSet<()> = JoinSet::new();
    // Writers first: they create duplex.positions where it is missing, which the readers'
    // publications need, and they say how far each outbox got.
    let mut targets = Vec::new();
    for site in &plan.sites {
        let name = &site.site.name;
        let mut target = connect_writer(site)
            .await
            .map_err(|e| apply_error(name, e))?;
        let written = match target
            .position(&outbox_name(name))
            .await
            .map_err(|e| apply_error(name, e))?
        {
            None => 0,
            Some(Position::Outbox(seq)) => seq,
            Some(other) => {
                return Err(EngineError::Unsupported(format!(
                    "site {name}: duplex.positions holds {other} for {}, which is not an outbox position",
                    outbox_name(name)
                )));
            }
        };
        targets.push((target, written));
    }
    // Where each site's reader starts: where the engine last read it; for a site it never
    // read, the handover position a backfill from it recorded on the other sites (the lowest,
    // if they differ), or else the site's current position.
    let mut starts = Vec::new();
    for site in &plan.sites {
        let name = &site.site.name;
        let mut start: Option<Position> = store.position(name)?;
        if start.is_none() {
            for (other, (target, _)) in plan.sites.iter().zip(targets.iter_mut()) {
                if other.site.name == *name {
                    continue;
                }
                let Some(handover) = target
                    .position(name)
                    .await
                    .map_err(|e| apply_error(&other.site.name, e))?
                else {
                    continue;
                };
                let lower = match &start {
                    None => true,
                    Some(current) => handover
                        .compare(current)
                        .map_err(|e| EngineError::Unsupported(e.to_string()))?
                        .is_lt(),
                };
                if lower {
                    start = Some(handover);
                }
            }
            if let Some(handover) = &start {
                tracing::info!(site = %name, position = %handover, "starting at the handover position of a backfill");
            }
        }
        starts.push(start);
    }
    let mut pending: Vec<Outbox> = Vec::new();
    let mut next_seq = Vec::new();
    let mut writers = Vec::new();
    for (site, (target, written)) in plan.sites.iter().zip(targets) {
        let name = &site.site.name;
        let queued: BTreeMap<u64, OutboxWrite> = store.pending(name)?.into_iter().collect();
        let last = queued.keys().next_back().copied().unwrap_or(0).max(written);
        next_seq.push(last + 1);
        let (tx, rx) = mpsc::channel::<(u64, Arc<OutboxWrite>)>(WRITER_QUEUE);
        let unwritten: Vec<(u64, Arc<OutboxWrite>)> = queued
            .range(written + 1..)
            .map(|(seq, write)| (*seq, Arc::new(write.clone())))
            .collect();
        let mut outbox = Outbox::default();
        for (seq, write) in queued {
            outbox.insert(seq, write);
        }
        pending.push(outbox);
        let report = input_tx.clone();
        let canonical: HashMap<String, TableName> = plan
            .mappings
            .iter()
            .map(|m| (m.name.clone(), m.canonical.clone()))
            .collect();
        let merge_site = site.clone();
        tasks.spawn(async move {
            writer(merge_site, target, rx, canonical, report).await;
        });
        for item in unwritten {
            // The writer drains its queue meanwhile: send, never drop.
            if tx.send(item).await.is_err() {
                return Err(writer_failure(&mut inputs, name));
            }
        }
        writers.push(tx);
    }
    let mut acks = Vec::new();
    for ((index, site), start) in plan.sites.iter().enumerate().zip(starts) {
        let (ack_tx, ack_rx) = watch::channel::<Option<Position>>(None);
        acks.push(ack_tx);
        let report = input_tx.clone();
        let site = site.clone();
        tasks.spawn(async move {
            reader(index, site, start, report, ack_rx).await;
        });
    }
    let control = control::serve(store.dir(), input_tx.clone());
    drop(input_tx);
    tracing::info!(
        sites = %plan.sites.iter().map(|s| s.site.name.as_str()).collect::<Vec<_>>().join(", "),
        mappings = %plan.mappings.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
        "merge engine started"
    );

    let mut coordinator = Coordinator {
        plan,
        store,
        pending,
        next_seq,
        stats: Stats::default(),
    };
    let reclaim_every =
        (plan.deleted_rows_kept_for / 2).clamp(Duration::from_millis(500), Duration::from_secs(60));
    let mut reclaim = tokio::time::interval(reclaim_every);
    let mut progress_at = Instant::now() + PROGRESS_EVERY;
    let outcome = loop {
        let first = tokio::select! {
            biased;
            _ = stop_requested(shutdown) => {
                // What the readers delivered already is decided and recorded before stopping
                // (its outbox entries are written by the next run).
                let mut rest = Vec::new();
                while let Ok(input) = inputs.try_recv() {
                    rest.push(input);
                }
                if rest.is_empty() {
                    break Ok(());
                }
                break coordinator.process(rest).map(|done| done.log_notes());
            }
            input = inputs.recv() => match input {
                Some(input) => input,
                None => break Err(EngineError::Crashed("every reader and writer stopped".into())),
            },
            _ = reclaim.tick() => {
                if let Err(error) = coordinator.reclaim() {
                    break Err(error);
                }
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < BATCH_INPUTS {
            match inputs.try_recv() {
                Ok(input) => batch.push(input),
                Err(_) => break,
            }
        }
        match coordinator.process(batch) {
            Ok(done) => {
                done.log_notes();
                // Entries must reach a writer in sequence order, with no gap: a writer that
                // stopped ends the attempt (the next one re-sends the outbox from the store).
                let mut stopped = None;
                for (index, seq, write) in done.writes {
                    if writers[index].send((seq, write)).await.is_err() {
                        stopped = Some(index);
                        break;
                    }
                }
                if let Some(index) = stopped {
                    break Err(writer_failure(&mut inputs, &plan.sites[index].site.name));
                }
                for (index, position) in done.acks {
                    acks[index].send_replace(Some(position));
                }
                for (reply, response) in done.replies {
                    let _ = reply.send(response);
                }
            }
            Err(error) => break Err(error),
        }
        if Instant::now() >= progress_at {
            progress_at = Instant::now() + PROGRESS_EVERY;
            coordinator.log_stats("merge engine progress");
        }
    };
    if let Some(control) = control {
        control.abort();
    }
    // Readers stop when their acknowledgements and input channel close; writers finish the
    // target transaction in flight and stop when their queue closes.
    drop(writers);
    drop(acks);
    drop(inputs);
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            joined = tasks.join_next() => if joined.is_none() { break },
            _ = &mut deadline => { tasks.abort_all(); break }
        }
    }
    coordinator.log_stats("merge engine stopped");
    outcome
}

/// What one processed batch produced, to be carried out after its state commit.
#[derive(Default)]
struct Done {
    writes: Vec<(usize, u64, Arc<OutboxWrite>)>,
    acks: Vec<(usize, Position)>,
    replies: Vec<(oneshot::Sender<control::Response>, control::Response)>,
    /// Conflicts decided, logged once their records are committed.
    notes: Vec<String>,
}

impl Done {
    /// Logs the decided conflicts (their records are committed).
    fn log_notes(&self) {
        for note in &self.notes {
            tracing::warn!("{note}");
        }
    }
}

struct Coordinator<'a> {
    plan: &'a MergePlan,
    store: &'a StateStore,
    /// Per site (plan order), the outbox entries not yet echoed.
    pending: Vec<Outbox>,
    /// Per site, the next outbox sequence number.
    next_seq: Vec<u64>,
    stats: Stats,
}

impl Coordinator<'_> {
    fn log_stats(&self, message: &str) {
        let s = &self.stats;
        tracing::info!(
            local_changes = s.local_changes,
            writes = s.writes,
            echoes = s.echoes,
            skipped_writes = s.skipped,
            conflicts = s.conflicts,
            "{message}"
        );
    }

    fn reclaim(&mut self) -> Result<(), EngineError> {
        let horizon =
            now_millis().saturating_sub(self.plan.deleted_rows_kept_for.as_millis() as u64);
        let mut w = self.store.begin_write()?;
        let mut reclaimed = 0;
        for mapping in &self.plan.mappings {
            reclaimed += w.reclaim_deleted(&mapping.name, horizon)?;
        }
        if reclaimed == 0 {
            // Nothing changed: dropping the batch aborts it, no commit (and fsync) needed.
            return Ok(());
        }
        w.commit()?;
        tracing::debug!(
            reclaimed,
            "reclaimed the versions of rows deleted everywhere"
        );
        Ok(())
    }

    fn process(&mut self, batch: Vec<Input>) -> Result<Done, EngineError> {
        let mut done = Done::default();
        let mut w = self.store.begin_write()?;
        // On error the state-store transaction is dropped (aborted) and the attempt ends: the
        // next attempt rebuilds the coordinator from the store, so the in-memory outbox needs
        // no undo here.
        for input in batch {
            match input {
                Input::Failed(error) => return Err(error),
                Input::Item(index, StreamItem::Transaction(tx)) => {
                    self.transaction(&mut w, index, &tx, &mut done)?;
                    w.save_position(&self.plan.sites[index].site.name, &tx.position)?;
                    done.acks.push((index, tx.position));
                }
                Input::Item(index, StreamItem::Heartbeat(position)) => {
                    w.save_position(&self.plan.sites[index].site.name, &position)?;
                    done.acks.push((index, position));
                }
                Input::Item(index, StreamItem::Part(_)) => {
                    return Err(EngineError::Unsupported(format!(
                        "site {} delivered part of a transaction to the merge engine, which reads whole transactions (a bug)",
                        self.plan.sites[index].site.name
                    )));
                }
                Input::Control(request, reply) => {
                    let response = self.control(&mut w, request, &mut done)?;
                    done.replies.push((reply, response));
                }
            }
        }
        w.commit()?;
        Ok(done)
    }

    /// A request of `duplex conflicts`.
    fn control(
        &mut self,
        w: &mut StateWriter<'_>,
        request: control::Request,
        done: &mut Done,
    ) -> Result<control::Response, EngineError> {
        use control::Response;
        let (id, take) = match request {
            control::Request::Conflicts => return Ok(Response::Conflicts(self.store.conflicts()?)),
            control::Request::Resolve { id, take } => (id, take),
        };
        let Some(record) = self.store.conflict(id)? else {
            return Ok(Response::Refused(format!("there is no conflict {id}")));
        };
        if record.status != ConflictStatus::Held {
            return Ok(Response::Refused(format!(
                "conflict {id} is not held: it was settled already ({})",
                record.decision
            )));
        }
        let Some(mapping) = self.plan.mapping(&record.mapping) else {
            return Ok(Response::Refused(format!(
                "conflict {id} belongs to mapping {}, which is not a two-way mapping of this configuration",
                record.mapping
            )));
        };
        if !mapping.sites.contains(&take) {
            return Ok(Response::Refused(format!(
                "site {take} is not a site of mapping {}: choose one of {}",
                mapping.name,
                mapping.sites.join(", ")
            )));
        }
        let key = String::from_utf8_lossy(&record.key).into_owned();
        let (mut rv, mut data) = load(w, mapping, &key)?;
        if data.held_conflict != Some(id) {
            return Ok(Response::Refused(format!(
                "row {key} of mapping {} is not held by conflict {id}",
                mapping.name
            )));
        }
        let winner = data.expected(&take).cloned();
        let key_row = winner
            .as_ref()
            .or(data.image.as_ref())
            .or_else(|| mapping.sites.iter().find_map(|s| data.expected(s)))
            .and_then(|row| mapping.key_of(row))
            .map(|(row, _)| row)
            .ok_or_else(|| missing_key(mapping, &take))?;
        let vector = rv.merged.clone();
        rv.held.insert(take.clone(), vector.clone());
        data.held_conflict = None;
        data.set_image(winner.clone(), &mapping.sites);
        data.writer = take.clone();
        data.commit_micros = Utc::now().timestamp_micros();
        self.propagate(
            w, mapping, &key_row, &key, &mut rv, &mut data, &vector, done,
        )?;
        store_row(w, mapping, &key, rv, &data)?;
        w.resolve_conflict(
            id,
            &Resolution {
                winner: Some(take.clone()),
                by: "operator".into(),
                at_millis: now_millis(),
            },
        )?;
        tracing::info!(conflict = id, mapping = %mapping.name, key = %key, site = %take, "held conflict resolved by the operator");
        Ok(Response::Done(format!(
            "conflict {id} resolved: the version of {take} ({}) is being written to every site",
            display_image(winner.as_ref())
        )))
    }

    /// One transaction read from site `index`.
    fn transaction(
        &mut self,
        w: &mut StateWriter<'_>,
        index: usize,
        tx: &Transaction,
        done: &mut Done,
    ) -> Result<(), EngineError> {
        let site = self.plan.sites[index].site.name.clone();
        // MariaDB flags duplex's transactions (skip_replication); PostgreSQL and MySQL are
        // recognised by the positions row alone.
        let outbox = outbox_name(&site);
        if tx.origin == Origin::Duplex
            || tx
                .events
                .iter()
                .any(|e| outbox_position(e, &outbox).is_some())
        {
            return self.echo(w, index, tx);
        }
        let commit_micros = tx.commit_time.timestamp_micros();
        for event in &tx.events {
            let Some(mapping) = self.plan.mapping_for(&site, &event.table) else {
                continue;
            };
            let canonical =
                |row: &Option<Row>| row.as_ref().map(|r| mapping.canonical_row(&site, r));
            let before = canonical(&event.before);
            let after = canonical(&event.after);
            let old_key = mapping
                .key_of(&mapping.canonical_row(&site, &event.key))
                .ok_or_else(|| missing_key(mapping, &site))?;
            match event.op {
                Op::Insert | Op::Update => {
                    let new_key = after
                        .as_ref()
                        .and_then(|a| mapping.key_of(a))
                        .unwrap_or_else(|| old_key.clone());
                    if event.op == Op::Update && new_key.1 != old_key.1 {
                        // A key change is the old row's delete and the new row's insert.
                        let old = (&old_key, true, before, None);
                        self.change(w, mapping, &site, old, commit_micros, done)?;
                        let new = (&new_key, false, None, after);
                        self.change(w, mapping, &site, new, commit_micros, done)?;
                    } else {
                        let existed = event.op == Op::Update;
                        let change = (&new_key, existed, before, after);
                        self.change(w, mapping, &site, change, commit_micros, done)?;
                    }
                }
                Op::Delete => {
                    let change = (&old_key, true, before, None);
                    self.change(w, mapping, &site, change, commit_micros, done)?;
                }
            }
        }
        Ok(())
    }

    /// An application's change of one row at `site`.
    #[allow(clippy::too_many_arguments)]
    fn change(
        &mut self,
        w: &mut StateWriter<'_>,
        mapping: &MergeMapping,
        site: &str,
        ((key_row, key), existed, before, mut after): RowChange<'_>,
        commit_micros: i64,
        done: &mut Done,
    ) -> Result<(), EngineError> {
        self.stats.local_changes += 1;
        let (mut rv, mut data) = load(w, mapping, key)?;
        // Every row the engine stores carries its record (see `store_row`).
        let known = !rv.payload.is_empty();
        if !known && existed {
            // A row duplex has no record of (copied by a backfill, or there before duplex
            // started) is the initial version, the same at every site, with the empty vector:
            // as the change's before-image shows it, or, when the log carries only the key,
            // known by its key alone (the first write of it then updates by key).
            data.image = Some(before.clone().unwrap_or_else(|| key_row.clone()));
        }
        if let Some(after) = &mut after {
            fill_unchanged(after, data.held_image(site));
        }
        // The version the change was made on: its before-image when the log carries it whole,
        // otherwise the version the site's log showed it holding.
        let base: Option<Row> = match before {
            Some(b) if b.len() == mapping.columns.len() => Some(b),
            _ => data.held_image(site).cloned(),
        };
        // What the site will hold once the writes still queued for it land: a write whose
        // condition this change happens to meet lands after it.
        let landing = self.after_queued(site, mapping, key, after.clone());
        if let Some(id) = data.held_conflict {
            let mut local = rv.held.get(site).cloned().unwrap_or_default();
            local.increment(site);
            rv.merged.merge(&local);
            rv.held.insert(site.to_owned(), local);
            data.set_expected(site, landing);
            data.set_held(site, after);
            tracing::info!(mapping = %mapping.name, key = %key, site, conflict = id, "row changed while its conflict is held: kept at this site only until `duplex conflicts resolve {id}`");
            return store_row(w, mapping, key, rv, &data);
        }
        let classification = merge::classify(&rv, site);
        tracing::debug!(mapping = %mapping.name, key = %key, site, ?classification, merged = %rv.merged, after = %display_image(after.as_ref()), "local change");
        match classification {
            Classification::Seen => {
                tracing::debug!(mapping = %mapping.name, key = %key, site, "change already accounted for");
            }
            Classification::Successor(vector) => {
                merge::record_successor(&mut rv, site, &vector);
                data.set_image(after.clone(), &mapping.sites);
                data.set_expected(site, landing);
                data.set_held(site, after);
                data.commit_micros = commit_micros;
                data.writer = site.to_owned();
                self.propagate(w, mapping, key_row, key, &mut rv, &mut data, &vector, done)?;
            }
            Classification::Concurrent { local } => {
                let theirs_image = data.image.clone();
                let theirs_vector = rv.merged.clone();
                let theirs_site = data.writer.clone();
                let theirs_time = micros_to_time(data.commit_micros);
                let mine = Version {
                    site,
                    commit_time: micros_to_time(commit_micros),
                    before: base.as_ref(),
                    after: after.as_ref(),
                };
                let theirs = Version {
                    site: &theirs_site,
                    commit_time: theirs_time,
                    before: base.as_ref(),
                    after: theirs_image.as_ref(),
                };
                let outcome = merge::resolve(&mapping.policy, &mapping.sites, &mine, &theirs);
                let resolved = merge::record_resolution(&mut rv, site, &local);
                data.set_expected(site, landing);
                data.set_held(site, after.clone());
                let side =
                    |site: &str, vector: &VersionVector, micros: i64, image: Option<&Row>| {
                        Ok::<_, EngineError>(ConflictSide {
                            site: site.to_owned(),
                            vector: vector.clone(),
                            commit_time_millis: micros / 1000,
                            row: image.map(duplex_state::codec::encode).transpose().map_err(
                                |e| EngineError::Codec(format!("a row of {}", mapping.name), e),
                            )?,
                            row_display: display_image(image),
                        })
                    };
                let mut record = ConflictRecord {
                    mapping: mapping.name.clone(),
                    key: key.as_bytes().to_vec(),
                    key_display: key.clone(),
                    sites: vec![
                        side(
                            &theirs_site,
                            &theirs_vector,
                            data.commit_micros,
                            theirs_image.as_ref(),
                        )?,
                        side(site, &local, commit_micros, after.as_ref())?,
                    ],
                    policy: mapping.policy_name(),
                    decision: String::new(),
                    detected_at_millis: now_millis(),
                    status: ConflictStatus::Held,
                };
                self.stats.conflicts += 1;
                match outcome {
                    Outcome::Write { row, decision } => {
                        let winner = if same_image(row.as_ref(), after.as_ref()) {
                            Some(site.to_owned())
                        } else if same_image(row.as_ref(), theirs_image.as_ref()) {
                            Some(theirs_site.clone())
                        } else {
                            None
                        };
                        record.decision = decision.clone();
                        record.status = ConflictStatus::Resolved(Resolution {
                            winner: winner.clone(),
                            by: mapping.policy_name(),
                            at_millis: now_millis(),
                        });
                        let id = w.record_conflict(&record)?;
                        done.notes.push(format!(
                            "conflict {id} resolved: mapping {}, row {key}, sites {theirs_site} and {site}: {decision}",
                            mapping.name
                        ));
                        data.set_image(row, &mapping.sites);
                        data.commit_micros = data.commit_micros.max(commit_micros);
                        data.writer = winner.unwrap_or_else(|| site.to_owned());
                        self.propagate(
                            w, mapping, key_row, key, &mut rv, &mut data, &resolved, done,
                        )?;
                    }
                    Outcome::Hold => {
                        record.decision =
                            "held: each site keeps its own value until `duplex conflicts resolve`"
                                .into();
                        let id = w.record_conflict(&record)?;
                        done.notes.push(format!(
                            "conflict {id} held: mapping {}, row {key}, sites {theirs_site} and {site} keep their own values; settle it with `duplex conflicts resolve {id} --take <site>`",
                            mapping.name
                        ));
                        data.held_conflict = Some(id);
                    }
                }
            }
        }
        store_row(w, mapping, key, rv, &data)
    }

    /// The image `site` holds after the writes queued for it for this row, and not yet
    /// echoed, have met (or missed) their conditions, starting from `image`: writes that
    /// landed before the change being read were echoed before it, so every queued one comes
    /// after it in the site's log.
    fn after_queued(
        &self,
        site: &str,
        mapping: &MergeMapping,
        key: &str,
        image: Option<Row>,
    ) -> Option<Row> {
        let index = self
            .plan
            .site_index(site)
            .expect("mapping sites are plan sites");
        let mut image = image;
        for (_, write) in self.pending[index].of_row(&mapping.name, key) {
            if same_image(write.before.as_ref(), image.as_ref()) {
                image = write.after.clone();
            }
        }
        image
    }

    /// Queues the newest version (`data.image`, `vector`) for every site of the mapping that
    /// does not hold it; a site that holds the same image already now holds this version.
    #[allow(clippy::too_many_arguments)]
    fn propagate(
        &mut self,
        w: &mut StateWriter<'_>,
        mapping: &MergeMapping,
        key_row: &Row,
        key: &str,
        rv: &mut RowVersions,
        data: &mut RowData,
        vector: &VersionVector,
        done: &mut Done,
    ) -> Result<(), EngineError> {
        for site in &mapping.sites {
            let expected = data.expected(site).cloned();
            let index = self
                .plan
                .site_index(site)
                .expect("mapping sites are plan sites");
            if same_image(expected.as_ref(), data.image.as_ref()) {
                // The site holds this image already, or will once a queued write lands: it
                // holds this version then. (Not earlier: a local change made there before
                // that write lands did not see it.)
                let queued = self.pending[index]
                    .of_row(&mapping.name, key)
                    .last()
                    .map(|(seq, _)| seq);
                match queued {
                    Some(seq) if !same_image(data.held_image(site), data.image.as_ref()) => {
                        let write = self.pending[index].entries.get_mut(&seq).expect("indexed");
                        write.vector.merge(vector);
                        w.put_pending(site, seq, &*write)?;
                    }
                    _ => {
                        merge::record_echo(rv, site, vector);
                        data.set_held(site, data.image.clone());
                    }
                }
                continue;
            }
            let op = match (&expected, &data.image) {
                (None, Some(_)) => Op::Insert,
                (Some(_), None) => Op::Delete,
                _ => Op::Update,
            };
            let write = OutboxWrite {
                mapping: mapping.name.clone(),
                key: key.to_owned(),
                op,
                key_row: key_row.clone(),
                before: expected,
                after: data.image.clone(),
                vector: vector.clone(),
            };
            let seq = self.next_seq[index];
            self.next_seq[index] += 1;
            tracing::debug!(mapping = %mapping.name, key = %key, site = %site, seq, op = ?write.op, before = %display_image(write.before.as_ref()), after = %display_image(write.after.as_ref()), vector = %vector, "write queued");
            w.put_pending(site, seq, &write)?;
            self.pending[index].insert(seq, write.clone());
            done.writes.push((index, seq, Arc::new(write)));
            data.set_expected(site, data.image.clone());
            self.stats.writes += 1;
        }
        Ok(())
    }

    /// A transaction duplex wrote into site `index`: the site now holds the versions of the
    /// writes that landed; the outbox entries it covers are done.
    fn echo(
        &mut self,
        w: &mut StateWriter<'_>,
        index: usize,
        tx: &Transaction,
    ) -> Result<(), EngineError> {
        let site = self.plan.sites[index].site.name.clone();
        let outbox = outbox_name(&site);
        let Some(upto) = tx
            .events
            .iter()
            .find_map(|event| outbox_position(event, &outbox))
        else {
            // Another outbox's or a one-way link's transaction: nothing of this engine.
            return Ok(());
        };
        let mut landed: HashSet<(String, String)> = HashSet::new();
        for event in &tx.events {
            let Some(mapping) = self.plan.mapping_for(&site, &event.table) else {
                continue;
            };
            for row in [Some(&event.key), event.after.as_ref()]
                .into_iter()
                .flatten()
            {
                if let Some((_, key)) = mapping.key_of(&mapping.canonical_row(&site, row)) {
                    landed.insert((mapping.name.clone(), key));
                }
            }
        }
        let covered: Vec<u64> = self.pending[index]
            .entries
            .range(..=upto)
            .map(|(s, _)| *s)
            .collect();
        for seq in covered {
            let write = self.pending[index].remove(seq).expect("listed above");
            w.remove_pending(&site, seq)?;
            let Some(mapping) = self.plan.mapping(&write.mapping) else {
                continue;
            };
            tracing::debug!(mapping = %write.mapping, key = %write.key, site = %site, seq, landed = landed.contains(&(write.mapping.clone(), write.key.clone())), "echo");
            if landed.contains(&(write.mapping.clone(), write.key.clone())) {
                self.stats.echoes += 1;
                let (mut rv, mut data) = load(w, mapping, &write.key)?;
                merge::record_echo(&mut rv, &site, &write.vector);
                data.set_held(&site, write.after.clone());
                store_row(w, mapping, &write.key, rv, &data)?;
            } else {
                self.stats.skipped += 1;
                tracing::debug!(mapping = %write.mapping, key = %write.key, site = %site, "write skipped: the row had changed there; that change decides");
            }
        }
        Ok(())
    }
}

/// The outbox sequence number a `duplex.positions` change records for `outbox`.
fn outbox_position(event: &ChangeEvent, outbox: &str) -> Option<u64> {
    if event.table != positions_table() {
        return None;
    }
    let row = event.after.as_ref()?;
    match row.get("source")? {
        Value::Text(source) if source == outbox => {}
        _ => return None,
    }
    let Value::Text(text) = row.get("position")? else {
        return None;
    };
    match serde_json::from_str::<Position>(text).ok()? {
        Position::Outbox(seq) => Some(seq),
        _ => None,
    }
}

/// Why the writer of `site` stopped: its report, if it is queued, else a transient stop.
fn writer_failure(inputs: &mut mpsc::Receiver<Input>, site: &str) -> EngineError {
    while let Ok(input) = inputs.try_recv() {
        if let Input::Failed(error) = input {
            return error;
        }
    }
    EngineError::WriterStopped(site.to_owned())
}

fn apply_error(site: &str, source: ApplyError) -> EngineError {
    EngineError::Apply {
        site: site.to_owned(),
        source: Box::new(source),
    }
}

fn missing_key(mapping: &MergeMapping, site: &str) -> EngineError {
    EngineError::Unsupported(format!(
        "mapping {}: a change read from site {site} lacks a key column ({}): the table's primary key must be among the mapped columns",
        mapping.name,
        mapping.key.join(", ")
    ))
}

/// The row's versions and the engine's record of it (defaults for a row never seen).
fn load(
    w: &StateWriter<'_>,
    mapping: &MergeMapping,
    key: &str,
) -> Result<(RowVersions, RowData), EngineError> {
    let rv = w
        .row_versions(&mapping.name, key.as_bytes())?
        .unwrap_or_default();
    let data = if rv.payload.is_empty() {
        RowData::default()
    } else {
        duplex_state::codec::decode(&rv.payload)
            .map_err(|e| EngineError::Codec(format!("row {key} of mapping {}", mapping.name), e))?
    };
    Ok((rv, data))
}

/// Stores the row's versions and record; marks it deleted-everywhere when every site holds
/// its delete.
fn store_row(
    w: &mut StateWriter<'_>,
    mapping: &MergeMapping,
    key: &str,
    mut rv: RowVersions,
    data: &RowData,
) -> Result<(), EngineError> {
    let everywhere = data.image.is_none()
        && data.held_conflict.is_none()
        && data.expect.is_empty()
        && data.holds.is_empty()
        && mapping
            .sites
            .iter()
            .all(|s| rv.held.get(s) == Some(&rv.merged));
    rv.deleted_at = if everywhere {
        Some(rv.deleted_at.unwrap_or_else(now_millis))
    } else {
        None
    };
    rv.payload = duplex_state::codec::encode(data)
        .map_err(|e| EngineError::Codec(format!("row {key} of mapping {}", mapping.name), e))?;
    w.put_row_versions(&mapping.name, key.as_bytes(), &rv)?;
    Ok(())
}

fn now_millis() -> u64 {
    Utc::now().timestamp_millis().max(0) as u64
}

fn micros_to_time(micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(micros).single().unwrap_or_default()
}

/// Streams one site into the coordinator, acknowledging what the coordinator committed. A
/// site that goes away is read again, after a backoff, from just after the last item handed
/// to the coordinator (every item handed over is decided, in order), while the other sites
/// go on; a definite failure ends the engine's attempt.
async fn reader(
    index: usize,
    site: MergeSite,
    start: Option<Position>,
    report: mpsc::Sender<Input>,
    mut ack: watch::Receiver<Option<Position>>,
) {
    let name = site.site.name.clone();
    let mut from = start;
    let mut backoff = Backoff::default();
    loop {
        backoff.attempt_started();
        let error = match read(index, &site, &mut from, &report, &mut ack).await {
            None => return,
            Some(error) => error,
        };
        if !error.is_transient() {
            let _ = report
                .send(Input::Failed(EngineError::Source {
                    site: name.clone(),
                    source: Box::new(error),
                }))
                .await;
            return;
        }
        let delay = backoff.failed();
        tracing::warn!(site = %name, error = %chain(&error), "reading site interrupted; the other sites go on; retrying in {delay:.1?}");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = report.closed() => return,
        }
    }
}

/// One stream of a site from just after `from`, which follows every item handed over; `None`
/// when the engine stopped, the stream's error otherwise.
async fn read(
    index: usize,
    site: &MergeSite,
    from: &mut Option<Position>,
    report: &mpsc::Sender<Input>,
    ack: &mut watch::Receiver<Option<Position>>,
) -> Option<StreamError> {
    let name = &site.site.name;
    let mut stream = match AnyStream::start(
        &site.site.connection(),
        StreamOptions::merge(site.tables.clone(), from.clone()),
    )
    .await
    {
        Ok(stream) => stream,
        Err(error) => return Some(error),
    };
    // A binlog stream that starts at the server's current position must have that position
    // recorded before anything else, or a restart would start at a later "current" one and
    // miss what was committed in between.
    if from.is_none()
        && let Some(position) = stream.start_position()
    {
        if report
            .send(Input::Item(index, StreamItem::Heartbeat(position.clone())))
            .await
            .is_err()
        {
            return None;
        }
        *from = Some(position);
    }
    tracing::info!(site = %name, "merge engine reading site");
    let outcome = loop {
        tokio::select! {
            item = stream.next() => match item {
                Ok(item) => {
                    let position = match &item {
                        StreamItem::Transaction(tx) => Some(tx.position.clone()),
                        StreamItem::Heartbeat(position) => Some(position.clone()),
                        StreamItem::Part(_) => None,
                    };
                    if report.send(Input::Item(index, item)).await.is_err() {
                        break None;
                    }
                    if position.is_some() {
                        *from = position;
                    }
                }
                Err(error) => break Some(error),
            },
            changed = ack.changed() => {
                if changed.is_err() {
                    break None;
                }
                let position = ack.borrow_and_update().clone();
                if let Some(position) = position {
                    stream.ack(&position);
                }
            }
        }
    };
    stream.shutdown().await;
    outcome
}

/// The engine's applier for a site: its canonical routes, conditional writes.
async fn connect_writer(site: &MergeSite) -> Result<AnyApplier, ApplyError> {
    let options = ApplyOptions {
        conditional: true,
        ..ApplyOptions::default()
    };
    AnyApplier::connect(&site.site.connection(), site.routes.clone(), options).await
}

/// Writes one site's outbox entries, in order, conditionally. A site that goes away is
/// retried with backoff, reconnecting, while the other sites go on (the coordinator waits for
/// this writer only once its queue is full); a definite failure ends the engine's attempt.
async fn writer(
    site: MergeSite,
    mut target: AnyApplier,
    mut queue: mpsc::Receiver<(u64, Arc<OutboxWrite>)>,
    canonical: HashMap<String, TableName>,
    report: mpsc::Sender<Input>,
) {
    let name = site.site.name.clone();
    let outbox = outbox_name(&name);
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH {
            match queue.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let now = Utc::now();
        let transactions: Vec<Transaction> = batch
            .iter()
            .map(|(seq, write)| Transaction {
                source: outbox.clone(),
                position: Position::Outbox(*seq),
                commit_time: now,
                origin: Origin::Duplex,
                events: vec![ChangeEvent {
                    table: canonical[&write.mapping].clone(),
                    op: write.op,
                    key: write.key_row.clone(),
                    before: write.before.clone(),
                    after: write.after.clone(),
                }],
            })
            .collect();
        // Applying a batch again is harmless: entries the site already holds are skipped by
        // their outbox position (see duplex_connectors::apply).
        let mut backoff = Backoff::default();
        let failure = loop {
            backoff.attempt_started();
            let error = match target.apply(&transactions).await {
                Ok(()) => break None,
                Err(error) if error.is_transient() => error,
                Err(error) => break Some(error),
            };
            let delay = backoff.failed();
            tracing::warn!(site = %name, error = %chain(&error), "writing into site interrupted; the other sites go on; retrying in {delay:.1?}");
            tokio::time::sleep(delay).await;
            match connect_writer(&site).await {
                Ok(connected) => target = connected,
                Err(error) if error.is_transient() => {}
                Err(error) => break Some(error),
            }
        };
        if let Some(source) = failure {
            // Closing the queue first: the coordinator must not wait on a full queue while
            // this report waits on a full input channel.
            drop(queue);
            let _ = report
                .send(Input::Failed(EngineError::Apply {
                    site: name.clone(),
                    source: Box::new(source),
                }))
                .await;
            return;
        }
        for skipped in target.take_skipped() {
            tracing::debug!(site = %name, key = %display_image(Some(&skipped.key)), "conditional write skipped: the row changed there first");
        }
    }
}
