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
//! restart from the positions committed with it, so the same inputs are decided again. The
//! transaction runs on tokio's blocking pool (its commit fsyncs), and the coordinator waits for
//! it to commit before it hands anything on, so this order is kept.
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
//! # One engine per site: claims
//!
//! The outbox numbers are only exact while one engine numbers them. So before it reads how far
//! each outbox got, the engine claims every site's `merge:<site>` counter for its deployment
//! (the state store's identity) in `duplex.claims`, and every target transaction of its
//! writers checks that claim under its row lock (see `duplex_connectors::apply::WriterClaim`):
//! another engine is refused at start, and one whose claim was taken over stops at its next
//! write. `run --take-over-from` moves the claims; the count read after the move includes
//! every write of the previous owner, so the new engine numbers after them. A store that kept
//! unconfirmed entries from before the move is refused: their numbers may have been reused.
//!
//! # No clobbering
//!
//! Each entry carries the image the site is expected to hold ([`rows::RowData::expect`]); the
//! applier writes it only if the row there still equals that image, so a local change the
//! engine has not read yet is never overwritten: it is read before the echo and decides.
//!
//! The condition compares images, not histories: a local change may reach exactly the image a
//! queued write expects (the site adds 11 where the other sites' writes it missed added 9 and
//! 2), and the write then lands on it, leaving the site with an image that lacks the site's own
//! change while the site's vector still counts it. The change itself is not lost (it was read
//! and merged before the echo); what protects the site's next change is that a change counts
//! as a successor only when it was made on the newest image (as the site reads it back): one
//! made on any other image is decided as a conflict, from the image it was made on. Which of an
//! echo's writes landed is told by the row's changes in the echo, one by one, not by the row
//! appearing in it (`coordinator/echo.rs`).
//!
//! # What it reports
//!
//! `duplex status` and `/metrics` show the engine as the link [`TELEMETRY_NAME`] whose targets
//! are its sites: per site, the rows and entries its writer committed there (each once, never
//! a write skipped by its condition or an entry the site held already), the lag (the oldest
//! change whose entry waits for that site, or that another site's reader handed over and the
//! coordinator has not decided yet) and the queue depth (the entries waiting). The coordinator
//! adds the entries of each decided batch, the writer takes away what it committed, each once
//! per batch (see `backlog`); the readers follow what they handed over (see `undecided`).
//!
//! # Where each part lives
//!
//! - [`plan`](plan()): what the engine runs — sites, routes, mappings — and where each reader
//!   starts;
//! - `outbox`: the numbered writes of each site until their echo;
//! - `coordinator`: the batches, each decided and committed in one state-store transaction off
//!   the runtime's threads, then carried out (held conflicts, settled or made, in
//!   `coordinator::held`);
//! - `sites`: the per-site reader and writer tasks, each retrying its own site; a reader's
//!   feed is the site's own stream, or (`run --role coordinator`, [`MergePlan::bus`]) the
//!   site's merge stream on the bus, which a `run --role reader` fills with the same items
//!   (see `crate::bus`): the coordinator stays this one process either way;
//! - `remote`: on the bus, the writers are `run --role writer` processes: the coordinator
//!   publishes each site's outbox entries to the site's outbox stream instead of writing
//!   them, and a writer applies them exactly as the in-process writer does;
//! - `backlog`: what each site's writer committed and what still waits for it, for the
//!   telemetry; `undecided`: the changes read and not decided yet, for the same;
//! - [`merge`]: the decisions, pure functions over version vectors; [`rows`]: canonical rows
//!   and what the engine keeps per row; [`control`]: the socket `duplex conflicts` talks to.

pub mod column_merge;
pub mod control;
pub mod merge;
pub mod rows;

mod backlog;
mod coordinator;
mod outbox;
mod plan;
mod remote;
mod sites;
mod undecided;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duplex_connectors::apply::{ApplyError, WriterClaim};
use duplex_connectors::{DescribeError, Position, StreamError};
use duplex_state::{StateError, StateStore};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::backoff::Backoff;
use crate::report::chain;
use crate::shutdown::stop_requested;
use backlog::Backlog;
use coordinator::{Coordinator, Input};
use outbox::Outbox;
use sites::{WRITER_QUEUE, claim_sites, connect_writers, reader, writer, writer_failure};
use undecided::{Handed, Undecided};

pub use outbox::{OutboxWrite, outbox_name};
pub use plan::{MergePlan, MergeSite, plan};
pub use remote::write_site;

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
    /// The bus a coordinator takes a site's changes from failed (`--role coordinator`).
    #[error("reading site {site} from the bus")]
    Bus {
        /// Site.
        site: String,
        /// Cause.
        #[source]
        source: Box<crate::bus::BusError>,
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
    /// A mapped table's columns changed on a site.
    #[error("{0}")]
    SchemaChange(String),
    /// The state store has no record of sites that hold the engine's writes.
    #[error("{0}")]
    StateLost(String),
    /// A task of the engine crashed (a bug).
    #[error("a task of the merge engine crashed: {0}")]
    Crashed(String),
    /// The writer of a site stopped before saying why.
    #[error("the writer of site {0} stopped")]
    WriterStopped(String),
    /// A site refused a write definitely: the row, the server's message and the fix.
    #[error(transparent)]
    Refused(Box<RefusedWrite>),
}

/// A write of the merge engine that a site refused definitely.
#[derive(Debug, thiserror::Error)]
#[error(
    "mapping {mapping}: site {site} refused the merge engine's {op:?} of row {key}: {error}. The row: {row}. Every write before it landed there; this one and those after wait. {fix} Then start duplex run again: the engine writes it again"
)]
pub struct RefusedWrite {
    /// The site.
    pub site: String,
    /// The mapping.
    pub mapping: String,
    /// The write.
    pub op: duplex_connectors::Op,
    /// The row's key.
    pub key: String,
    /// The row's values written.
    pub row: String,
    /// The error with the server's whole message.
    pub error: String,
    /// What to do.
    pub fix: &'static str,
}

impl EngineError {
    /// True when restarting after a backoff may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            EngineError::Source { source, .. } => source.is_transient(),
            EngineError::Bus { source, .. } => source.is_transient(),
            EngineError::Apply { source, .. } => source.is_transient(),
            EngineError::Describe { source, .. } => source.is_transient(),
            EngineError::WriterStopped(_) => true,
            EngineError::State(_)
            | EngineError::Codec(..)
            | EngineError::Unsupported(_)
            | EngineError::SchemaChange(_)
            | EngineError::StateLost(_)
            | EngineError::Refused(_)
            | EngineError::Crashed(_) => false,
        }
    }
}

/// Runs the engine until `shutdown` turns true (Ok) or it fails definitively (Err);
/// transient failures restart it after a backoff, from what the state store holds.
pub async fn run(
    plan: MergePlan,
    store: Arc<StateStore>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), EngineError> {
    let plan = Arc::new(plan);
    let telemetry = telemetry(
        &plan
            .sites
            .iter()
            .map(|s| s.site.name.clone())
            .collect::<Vec<_>>(),
    );
    // Kept across attempts: the entries an attempt queued keep their commit times in the next.
    let undecided = Arc::new(Undecided::new(plan.sites.len()));
    let backlogs: Vec<Arc<Backlog>> = plan
        .sites
        .iter()
        .map(|site| {
            let name = &site.site.name;
            Arc::new(Backlog::new(
                site_telemetry(&telemetry, name),
                Arc::clone(&undecided),
                partners(&plan, name),
            ))
        })
        .collect();
    let mut backoff = Backoff::default();
    loop {
        backoff.attempt_started();
        match attempt(&plan, &store, &backlogs, &undecided, &mut shutdown).await {
            Ok(()) => {
                telemetry.stopped(None);
                return Ok(());
            }
            Err(error) if error.is_transient() => {
                telemetry.retrying(chain(&error));
                let delay = backoff.failed();
                tracing::warn!(error = %chain(&error), "merge engine interrupted; restarting in {delay:.1?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop_requested(&mut shutdown) => {
                        telemetry.stopped(None);
                        return Ok(());
                    }
                }
            }
            Err(error) => {
                telemetry.stopped(Some(chain(&error)));
                return Err(error);
            }
        }
    }
}

/// The name the merge engine has in `duplex status`, `/metrics` and `/health`.
pub const TELEMETRY_NAME: &str = "merge engine";

/// The merge engine's telemetry: its state, its "source" the two-way sites in configuration
/// order, and one target per site it writes to (all of them), with the rows and outbox entries
/// committed there, the lag and the entries waiting for that site's writer (see `backlog`).
pub fn telemetry(sites: &[String]) -> Arc<crate::telemetry::LinkTelemetry> {
    crate::telemetry::global().link(TELEMETRY_NAME, &sites.join(", "), sites)
}

/// The other sites of `site`'s mappings (plan order).
fn partners(plan: &MergePlan, site: &str) -> Vec<usize> {
    (0..plan.sites.len())
        .filter(|index| {
            let other = &plan.sites[*index].site.name;
            other != site
                && plan.mappings.iter().any(|m| {
                    m.sites.iter().any(|s| s == site) && m.sites.iter().any(|s| s == other)
                })
        })
        .collect()
}

/// The telemetry of `site` among the engine's targets.
fn site_telemetry(
    telemetry: &crate::telemetry::LinkTelemetry,
    site: &str,
) -> Arc<crate::telemetry::TargetTelemetry> {
    telemetry.target_of(site).unwrap_or_else(|| {
        // Registered earlier with other sites (a bug): counted, but not shown.
        tracing::warn!(%site, "duplex status and /metrics do not show this site of the merge engine (a bug)");
        Arc::default()
    })
}

/// What the state store holds of the engine's progress, per site (plan order): where its reader
/// got, and its outbox entries not yet echoed.
struct Stored {
    positions: Vec<Option<Position>>,
    outboxes: Vec<BTreeMap<u64, OutboxWrite>>,
    /// Per site, the source commit time (µs) of each outbox entry's row, where it is known.
    commit_times: Vec<BTreeMap<u64, i64>>,
}

/// Reads [`Stored`] on tokio's blocking pool (the store reads from disk).
async fn stored(plan: &Arc<MergePlan>, store: &Arc<StateStore>) -> Result<Stored, EngineError> {
    let (plan, store) = (Arc::clone(plan), Arc::clone(store));
    let read = tokio::task::spawn_blocking(move || {
        let mut stored = Stored {
            positions: Vec::new(),
            outboxes: Vec::new(),
            commit_times: Vec::new(),
        };
        for site in &plan.sites {
            let name = &site.site.name;
            stored.positions.push(store.position(name)?);
            let outbox: BTreeMap<u64, OutboxWrite> = store.pending(name)?.into_iter().collect();
            stored.commit_times.push(
                outbox
                    .iter()
                    .filter_map(|(seq, write)| Some((*seq, backlog::commit_micros(&store, write)?)))
                    .collect(),
            );
            stored.outboxes.push(outbox);
        }
        Ok::<_, EngineError>(stored)
    })
    .await;
    match read {
        Ok(stored) => stored,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => Err(EngineError::Crashed(error.to_string())),
    }
}

/// Refuses a state store that has never read any site while a site holds writes of a merge
/// engine: the engine's state was lost (a state directory restored empty, or deleted) or it is
/// another engine's. Every write the engine makes follows a decision committed to the store
/// together with the position of the site it read, so some position would be recorded.
/// Starting anyway would read every site from its current position and lose what was
/// committed in between.
fn refuse_lost_state(
    plan: &MergePlan,
    store: &StateStore,
    positions: &[Option<Position>],
    writers: &[sites::SiteWriter],
) -> Result<(), EngineError> {
    if positions.iter().any(Option::is_some) {
        return Ok(());
    }
    let Some((site, writer)) = plan
        .sites
        .iter()
        .zip(writers)
        .find(|(_, writer)| writer.written > 0)
    else {
        return Ok(());
    };
    Err(EngineError::StateLost(format!(
        "site {site} holds {written} writes of a duplex merge engine (row {outbox:?} of duplex.positions), but the state directory {dir} has never read any site of these two-way mappings: its state was lost (restored empty, deleted) or it belongs to another duplex. Starting would read every site from its current position and lose the changes committed in between. Restore the state directory from its backup, or stop the duplex that uses the other one; to start over deliberately, delete the merge:<site> rows from duplex.positions and duplex.claims on every site and backfill the mappings again (`duplex backfill --from <site>`)",
        site = site.site.name,
        written = writer.written,
        outbox = outbox::outbox_name(&site.site.name),
        dir = store.dir().display(),
    )))
}

/// After a take-over, refuses outbox entries this state store kept from before: they are
/// numbered in the site's counter as it stood then, and the previous owner may have used those
/// numbers since, so they can be neither written nor forgotten by number.
fn refuse_renumbered_outbox(
    plan: &MergePlan,
    queued: &[BTreeMap<u64, OutboxWrite>],
    writers: &[sites::SiteWriter],
    moved: &[bool],
) -> Result<(), EngineError> {
    for (((site, queued), writer), moved) in plan.sites.iter().zip(queued).zip(writers).zip(moved) {
        if !*moved || queued.is_empty() {
            continue;
        }
        return Err(EngineError::StateLost(format!(
            "site {name}: this state directory holds {n} writes that were never confirmed, numbered before another deployment wrote there (the site's counter, {outbox:?} in duplex.positions, is at {written}): they can be neither written nor forgotten by number. Take over with a new, empty state directory and backfill the two-way mappings (`duplex backfill --from <site>`)",
            name = site.site.name,
            n = queued.len(),
            outbox = outbox::outbox_name(&site.site.name),
            written = writer.written,
        )));
    }
    Ok(())
}

/// One run of the engine, from what the state store holds, until shutdown or a failure.
async fn attempt(
    plan: &Arc<MergePlan>,
    store: &Arc<StateStore>,
    backlogs: &[Arc<Backlog>],
    undecided: &Arc<Undecided>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), EngineError> {
    let (input_tx, mut inputs) = mpsc::channel::<Input>(4096);
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut targets = connect_writers(plan).await?;
    let Stored {
        positions,
        outboxes: queued,
        commit_times,
    } = stored(plan, store).await?;
    let take_over_from = plan.take_over_from.as_deref();
    if take_over_from.is_none() {
        refuse_lost_state(plan, store, &positions, &targets)?;
    }
    let moved = claim_sites(plan, &mut targets, store.deployment_id(), take_over_from).await?;
    if moved.iter().any(|m| *m) {
        refuse_renumbered_outbox(plan, &queued, &targets, &moved)?;
        if positions.iter().all(Option::is_none) {
            tracing::warn!(
                "taking over with a state directory that never read these sites: PostgreSQL sites are read from where the previous engine's slot was confirmed; MariaDB sites from their current binlog position, so changes committed there since the previous engine last read them are not merged (take over only once it caught up and stopped, or backfill the two-way mappings)"
            );
        }
    }
    // A backfill records its handover under the bus's deployment when there is a bus (it
    // runs with the reader's state directory, whose slot the reader streams from).
    let handovers = plan
        .bus
        .as_ref()
        .map_or_else(|| store.deployment_id().to_owned(), |bus| bus.deployment());
    let starts = plan::start_positions(plan, positions, &mut targets, &handovers).await?;
    let mut outboxes: Vec<Outbox> = Vec::new();
    let mut next_seq = Vec::new();
    let mut writers = Vec::new();
    let now_micros = chrono::Utc::now().timestamp_micros();
    for ((((site, target), queued), backlog), commit_times) in plan
        .sites
        .iter()
        .zip(targets)
        .zip(queued)
        .zip(backlogs)
        .zip(commit_times)
    {
        let name = &site.site.name;
        let written = target.written;
        let last = queued.keys().next_back().copied().unwrap_or(0).max(written);
        next_seq.push(last + 1);
        let (tx, rx) = mpsc::channel::<(u64, Arc<OutboxWrite>)>(WRITER_QUEUE);
        let unwritten: Vec<(u64, Arc<OutboxWrite>)> = queued
            .range(written + 1..)
            .map(|(seq, write)| (*seq, Arc::new(write.clone())))
            .collect();
        let waiting: Vec<(u64, i64)> = unwritten
            .iter()
            .map(|(seq, _)| (*seq, commit_times.get(seq).copied().unwrap_or(now_micros)))
            .collect();
        backlog.restart(written, &waiting);
        let mut outbox = Outbox::default();
        for (seq, write) in queued {
            outbox.insert(seq, write);
        }
        outboxes.push(outbox);
        let report = input_tx.clone();
        let claim = WriterClaim {
            scope: outbox_name(name),
            deployment: store.deployment_id().to_owned(),
        };
        if let Some(bus) = &plan.bus {
            // The writes go to the site's outbox stream; `run --role writer` applies them.
            let known = last;
            let publisher = remote::prepare(bus, name, &claim.deployment, written, known).await?;
            tasks.spawn(remote::publish(name.clone(), publisher, rx, report));
        } else {
            let canonical = sites::canonical(plan, name);
            let merge_site = site.clone();
            let backlog = Arc::clone(backlog);
            tasks.spawn(async move {
                writer(
                    merge_site,
                    claim,
                    target.target,
                    rx,
                    canonical,
                    report,
                    backlog,
                )
                .await;
            });
        }
        for item in unwritten {
            // The writer drains its queue meanwhile: send, never drop.
            if tx.send(item).await.is_err() {
                return Err(writer_failure(&mut inputs, name));
            }
        }
        writers.push(tx);
    }
    let mut acks = Vec::new();
    // The readers of an earlier attempt are gone; what they handed over is read again.
    undecided.reset();
    for ((index, site), start) in plan.sites.iter().enumerate().zip(starts) {
        let (ack_tx, ack_rx) = watch::channel::<Option<Position>>(None);
        acks.push(ack_tx);
        let report = input_tx.clone();
        let name = site.site.name.clone();
        let affected = partners(plan, &name)
            .into_iter()
            .map(|other| Arc::clone(&backlogs[other]))
            .collect();
        let handed = Handed::new(index, &name, Arc::clone(undecided), affected);
        let mut site = site.clone();
        site.deployment = store.deployment_id().to_owned();
        site.take_over_from = plan.take_over_from.clone();
        let bus = plan.bus.clone();
        tasks.spawn(async move {
            reader(index, site, bus, start, report, ack_rx, handed).await;
        });
    }
    match store.held_conflict_count() {
        Ok(held) => crate::telemetry::global().held_conflicts(held),
        Err(error) => {
            tracing::warn!(%error, "cannot count the held conflicts for duplex status and /metrics")
        }
    }
    let control = control::serve(store.dir(), input_tx.clone());
    drop(input_tx);
    telemetry(
        &plan
            .sites
            .iter()
            .map(|s| s.site.name.clone())
            .collect::<Vec<_>>(),
    )
    .streaming();
    tracing::info!(
        sites = %plan.sites.iter().map(|s| s.site.name.as_str()).collect::<Vec<_>>().join(", "),
        mappings = %plan.mappings.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
        "merge engine started"
    );

    let coordinator = Arc::new(Mutex::new(Coordinator::new(
        Arc::clone(plan),
        Arc::clone(store),
        outboxes,
        next_seq,
    )));
    let outcome = coordinator::coordinate(
        &coordinator,
        &mut inputs,
        &writers,
        backlogs,
        &acks,
        shutdown,
    )
    .await;
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
    coordinator
        .lock()
        .expect("no decision is running")
        .log_stats("merge engine stopped");
    outcome
}
