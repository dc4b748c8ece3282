//! A link: one source site's change stream feeding every target site that maps its tables.
//!
//! # Delivery
//!
//! The source stream yields whole transactions in commit order. Each one gets a sequence
//! number and is handed to one worker per target (bounded channels: a slow target slows the
//! reader, memory stays bounded). A worker batches what is queued and writes it with its
//! [`AnyApplier`] in one target transaction that also records the source position (see
//! `duplex_connectors::apply`), then reports the last sequence number it committed.
//!
//! The source is acknowledged up to the newest item whose sequence number every target has
//! committed — the lowest position all targets hold — so the source keeps its log exactly as
//! long as some target still needs it. Heartbeats of an idle source take the sequence number
//! of the last transaction before them, so a quiet source advances as soon as its targets
//! have caught up.
//!
//! On (re)start the link asks every target how far it got and starts the stream at the lowest
//! of those positions; each applier skips what it already holds, so nothing is applied twice
//! and nothing is skipped, whichever process or server died where. Any failure ends the whole
//! attempt (the target transaction in flight rolls back); transient failures are retried
//! after a backoff, definite ones stop the link with what to fix.
//!
//! # Large transactions and memory
//!
//! A source transaction too large to hold arrives as parts followed by its final transaction
//! (see `duplex_connectors::apply`). Parts get no sequence number (they cannot be
//! acknowledged); they are handed to every target, filtered like transactions (a target that
//! no part concerns is not sent empty ones). A worker that meets a part first commits the
//! batch it has gathered, then writes the parts into one open target transaction and applies
//! the final transaction alone, which commits it and reports its sequence number as usual.
//!
//! Every queued item holds permits of its target's event budget (`QUEUE_EVENTS` changes),
//! released when the worker has written it, besides the `QUEUE` bound on items. So per
//! target at most about `QUEUE_EVENTS` changes wait or are being written, plus the part the
//! reader is filling: memory is bounded whatever the size of a source transaction.
//!
//! # Shutdown
//!
//! On the shutdown signal the reader stops, every worker finishes the target transaction it
//! is writing (never more), the committed progress is acknowledged and the stream is closed. A
//! large transaction whose final piece was not read yet cannot be finished: its open target
//! transaction is rolled back, and the next run delivers it again from its first part.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duplex_connectors::apply::{Applier, ApplyError, ApplyOptions, TableRoute};
use duplex_connectors::{
    Position, PositionError, SilenceTimeout, TableName, TableSchema, TableShape,
};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use duplex_state::StateStore;

use crate::backoff::Backoff;
use crate::config::{Mapping, Site};
use crate::report::chain;
use crate::shape::{ShapeStop, shape_key};

/// Acknowledging to the source, each position recorded in the state store first.
mod ack;
/// Where a link's transactions come from: the source or a bus.
pub(crate) mod feed;
/// The checks before a link reads: its position rows and the mapped tables' identities.
mod identity;
pub(crate) mod refusal;
/// The routes by the shapes the stream announces.
mod shapes;
mod worker;

use crate::shutdown::stop_requested;
use crate::telemetry::LinkTelemetry;
pub use ack::acknowledged_key;
pub(crate) use ack::{ACK_EVERY, Acker};
use chrono::{DateTime, Utc};
use duplex_connectors::{AnyApplier, AnyStream, StreamError, StreamItem, StreamOptions};
use feed::Feed;
pub(crate) use identity::check_table_identities;
use identity::claim_legacy_position;
pub use identity::{position_key, table_id_key};
use shapes::{Shapes, current_routes, follow_shape, record_shapes, target_columns};
use worker::{Counting, Outlet, Piece, dispatch, worker};

/// Transactions queued per target before the reader waits.
const QUEUE: usize = 1024;
/// Row changes queued (or being written) per target before the reader waits.
const QUEUE_EVENTS: usize = 40_000;
/// Most transactions one target transaction carries.
const BATCH_TRANSACTIONS: usize = 2000;
/// Most row changes one target transaction carries (a single larger source transaction is
/// still applied whole).
const BATCH_EVENTS: usize = 20_000;
/// How often a link logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// What a link reads and where it writes.
#[derive(Debug, Clone)]
pub struct LinkPlan {
    /// The source site.
    pub source: Site,
    /// The source tables read (every route's source table).
    pub tables: BTreeSet<TableName>,
    /// The targets and their routes.
    pub targets: Vec<TargetPlan>,
    /// The one-way mappings read by this link that have no backfill record, with their target
    /// site, in configuration order: `run` warns about those whose target holds no position
    /// of the source (they were never backfilled).
    pub unbackfilled: Vec<(String, String)>,
    /// The mappings (routes for a changed source table are worked out from them).
    pub mappings: Arc<Vec<Mapping>>,
    /// The source tables as the catalog described them when the plan was made.
    pub schemas: HashMap<TableName, TableSchema>,
    /// The bus the link is fed from (a writer role); `None`: the source's own stream.
    pub bus: Option<crate::bus::Bus>,
}

/// One target of a link.
#[derive(Debug, Clone)]
pub struct TargetPlan {
    /// The target site.
    pub site: Site,
    /// Where each source table's rows go on this site.
    pub routes: Vec<TableRoute>,
}

/// Why a link attempt ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The source's stream failed.
    #[error("reading site {site}")]
    Source {
        /// Source site.
        site: String,
        /// Cause.
        #[source]
        source: StreamError,
    },
    /// Writing into a target failed.
    #[error("applying into site {site}")]
    Apply {
        /// Target site.
        site: String,
        /// Cause.
        #[source]
        source: ApplyError,
    },
    /// Reading the mapped tables' schemas failed.
    #[error("reading the schema of site {site}")]
    Schema {
        /// Site.
        site: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
        /// Whether retrying may help.
        transient: bool,
    },
    /// Two targets hold positions that cannot be ordered.
    #[error("the positions recorded on the targets cannot be compared")]
    Position(#[source] PositionError),
    /// A worker task panicked (a bug).
    #[error("a target worker of this link crashed: {0}")]
    Crashed(String),
    /// The state store failed while recording or reading the link's start position.
    #[error("recording where the link starts in the state store")]
    State(#[source] duplex_state::StateError),
    /// A mapped source table is not the one the link read before.
    #[error(
        "mapped table {table} on site {site} {what}: changes made to it in between are not in the replication stream, so the target may lack rows; nothing of it was applied since. Copy its rows again (see `duplex backfill` in the README), then start duplex with `duplex run --accept-schema-change {table}`"
    )]
    TableReplaced {
        /// Source site.
        site: String,
        /// The table.
        table: TableName,
        /// What happened to it.
        what: String,
    },
    /// The bus feeding the link (a writer role) failed.
    #[error("reading the bus stream of site {site}")]
    Bus {
        /// Source site.
        site: String,
        /// Cause.
        #[source]
        source: Box<crate::bus::BusError>,
    },
    /// A target could not be claimed for the bus feeding the link (see
    /// [`crate::bus::identity`]).
    #[error(transparent)]
    BusClaim(Box<crate::bus::identity::ClaimError>),
    /// A target refused a change definitely (see [`refusal`]).
    #[error(transparent)]
    Refused(Box<refusal::Refusal>),
    /// The state directory lacks dead letters a target recorded setting aside.
    #[error(
        "site {target} recorded that changes from {source_site} up to dead letter {marked} were set aside and left out of it, but this state directory has given out only {assigned}: it was replaced or restored from an older backup, and the changes set aside after that are lost with it, so those rows are missing or old on {target}. Copy the mappings from {source_site} into {target} again (see `duplex backfill` in the README), then remove the record with `DELETE FROM duplex.positions WHERE source = '{marker}'` on {target} and start duplex run again"
    )]
    DeadLettersLost {
        /// The source site.
        source_site: String,
        /// The target site.
        target: String,
        /// The highest letter number the target recorded.
        marked: u64,
        /// The highest this state directory gave.
        assigned: u64,
        /// The `duplex.positions` source of the record.
        marker: String,
    },
    /// A large transaction changes a row whose earlier changes are dead letters.
    #[error(
        "a large source transaction changes row {key} of {table}, which has dead letters for site {target}: its changes cannot be set aside behind them (a part of a transaction has no position of its own), and writing it would put the row out of order. Fix the cause of the dead letters and run `duplex dead-letters retry` (with duplex run stopped), then start duplex run again: it resumes at this transaction"
    )]
    DeadLetterOrder {
        /// The target site.
        target: String,
        /// The source table.
        table: TableName,
        /// The row's key.
        key: String,
    },
    /// The source's log no longer holds the changes since the targets' positions (a slot
    /// gone, a binlog purged): the link cannot go on, `duplex backfill --resync` recovers.
    #[error(
        "site {site}'s change log no longer holds what its targets need: recover with `{command}` (same --config, with `duplex run` stopped): it copies the mapped tables from a new snapshot into the targets, making them row-for-row equal to the source (rows the source no longer has are deleted), and `duplex run` then streams from that snapshot"
    )]
    PositionLost {
        /// Source site.
        site: String,
        /// The command that recovers.
        command: String,
        /// What the source said.
        #[source]
        source: StreamError,
    },
    /// Changes in the source's log that cannot be read exactly: the tables must be copied
    /// again.
    #[error(
        "site {site}'s change log holds changes of a mapped table that cannot be read exactly: {source}. Once the target tables match the source's definition, recover with `{command}` (same --config, with `duplex run` stopped): it copies the mapped tables from a new snapshot into the targets, making them row-for-row equal to the source, and `duplex run` then streams from that snapshot"
    )]
    CopyAgain {
        /// Source site.
        site: String,
        /// The command that recovers.
        command: String,
        /// What the source said.
        source: StreamError,
    },
    /// A schema change on the source that the link does not follow.
    #[error("a schema change on site {site}")]
    Shape {
        /// Source site.
        site: String,
        /// What changed and what to do.
        #[source]
        stop: Box<ShapeStop>,
    },
}

impl LinkError {
    /// True when retrying after a backoff may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            LinkError::Source { source, .. } => source.is_transient(),
            LinkError::Apply { source, .. } => source.is_transient(),
            LinkError::Schema { transient, .. } => *transient,
            LinkError::Bus { source, .. } => source.is_transient(),
            LinkError::BusClaim(claim) => match &**claim {
                crate::bus::identity::ClaimError::Apply(source) => source.is_transient(),
                crate::bus::identity::ClaimError::Shared { .. } => false,
            },
            LinkError::Position(_)
            | LinkError::Crashed(_)
            | LinkError::State(_)
            | LinkError::TableReplaced { .. }
            | LinkError::Refused(_)
            | LinkError::DeadLetterOrder { .. }
            | LinkError::DeadLettersLost { .. }
            | LinkError::PositionLost { .. }
            | LinkError::CopyAgain { .. }
            | LinkError::Shape { .. } => false,
        }
    }
}

/// Runs a link until `shutdown` turns true (Ok) or it fails definitively (Err). Transient
/// failures are logged and retried with backoff.
pub async fn run(
    plan: LinkPlan,
    state: Arc<StateStore>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), LinkError> {
    let name = link_name(&plan);
    let telemetry = link_telemetry(&plan);
    // Aborted when the link ends (a writer role does not read the source).
    let _head = plan.bus.is_none().then(|| {
        AbortOnDrop(tokio::spawn(read_heads(
            plan.source.connection(),
            telemetry.clone(),
        )))
    });
    let mut backoff = Backoff::default();
    let mut warn_unbackfilled = true;
    // Source tables whose changes are routed by a shape the log announced (see crate::shape).
    let mut followed: HashMap<TableName, TableShape> = HashMap::new();
    let mut silence = SilenceTimeout::new(plan.source.stream_timeout);
    loop {
        backoff.attempt_started();
        match attempt(
            &plan,
            &state,
            &mut shutdown,
            &mut warn_unbackfilled,
            &mut followed,
            &mut silence,
            &telemetry,
        )
        .await
        {
            Ok(Ended::Stopped) => {
                telemetry.stopped(None);
                return Ok(());
            }
            Ok(Ended::Rerouted) => continue,
            Err(error) if error.is_transient() => {
                if let LinkError::Source { source, .. } = &error {
                    silence.ended(source);
                }
                telemetry.retrying(chain(&error));
                let delay = backoff.failed();
                tracing::warn!(link = %name, error = %chain(&error), "link interrupted; retrying in {delay:.1?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop_requested(&mut shutdown) => {
                        telemetry.stopped(None);
                        return Ok(());
                    }
                }
            }
            Err(LinkError::Source { site, source }) if source.needs_copy() => {
                return Err(LinkError::CopyAgain {
                    command: resync_command(&site),
                    site,
                    source,
                });
            }
            Err(LinkError::Source { site, source }) if source.is_position_lost() => {
                let error = LinkError::PositionLost {
                    command: resync_command(&site),
                    site,
                    source,
                };
                telemetry.stopped(Some(chain(&error)));
                return Err(error);
            }
            Err(error) => {
                telemetry.stopped(Some(chain(&error)));
                return Err(error);
            }
        }
    }
}

/// Reads where the source's log ends every [`crate::telemetry::SAMPLE_EVERY`], for the
/// targets' lag in bytes (see `crate::telemetry`).
async fn read_heads(source: duplex_connectors::SiteConnection, telemetry: Arc<LinkTelemetry>) {
    let mut reader = duplex_connectors::head::HeadReader::new(source);
    let mut every = tokio::time::interval(crate::telemetry::SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let head = match tokio::time::timeout(crate::telemetry::SAMPLE_EVERY, reader.read()).await {
            Ok(Ok(head)) => Ok(head),
            Ok(Err(error)) => Err(chain(&error)),
            Err(_) => Err(format!(
                "the source did not answer within {:?}",
                crate::telemetry::SAMPLE_EVERY
            )),
        };
        telemetry.head(head);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The telemetry of the link `plan` describes (see `crate::telemetry`).
pub fn link_telemetry(plan: &LinkPlan) -> Arc<LinkTelemetry> {
    let targets: Vec<String> = plan.targets.iter().map(|t| t.site.name.clone()).collect();
    crate::telemetry::global().link(&link_name(plan), &plan.source.name, &targets)
}

/// The command that recovers the targets of `site` after its change log lost their positions.
pub fn resync_command(site: &str) -> String {
    format!("duplex backfill --resync --from {site}")
}

/// `store -> erp, wms` for logs.
pub fn link_name(plan: &LinkPlan) -> String {
    let targets: Vec<&str> = plan.targets.iter().map(|t| t.site.name.as_str()).collect();
    format!("{} -> {}", plan.source.name, targets.join(", "))
}

/// A worker's report: target index and the newest sequence number it committed.
type Committed = (usize, u64);

/// The state-store key of the position a link without any target position started at.
pub(crate) fn start_key(source: &str) -> String {
    format!("link-start:{source}")
}

/// How an attempt ended without an error.
enum Ended {
    /// Shutdown was requested.
    Stopped,
    /// A source table's shape changed its routes: everything read before it was committed;
    /// start again with the new routes.
    Rerouted,
}

/// One run of the link until shutdown or failure. `warn_unbackfilled`: the first attempt that
/// reads the targets' positions warns about mappings that were never backfilled (and clears
/// it). `followed`: the tables routed by a shape the log announced (updated when a shape
/// changes the routes, which ends the attempt with [`Ended::Rerouted`]). `silence`: the
/// stream's timeout (told of every item read).
async fn attempt(
    plan: &LinkPlan,
    state: &Arc<StateStore>,
    shutdown: &mut watch::Receiver<bool>,
    warn_unbackfilled: &mut bool,
    followed: &mut HashMap<TableName, TableShape>,
    silence: &mut SilenceTimeout,
    telemetry: &LinkTelemetry,
) -> Result<Ended, LinkError> {
    let source_name = plan.source.name.as_str();
    let deployment = plan
        .bus
        .as_ref()
        .map_or_else(|| state.deployment_id().to_owned(), |bus| bus.deployment());
    telemetry.attempt_started();
    let mut shapes = Shapes {
        stored: HashMap::new(),
        session: HashMap::new(),
        to_record: VecDeque::new(),
        target_columns: target_columns(plan).await?,
    };
    for table in &plan.tables {
        if let Some(shape) = state
            .position::<TableShape>(&shape_key(source_name, table))
            .map_err(LinkError::State)?
        {
            shapes.stored.insert(table.clone(), shape);
        }
    }
    let routes = current_routes(plan, followed, &shapes.stored, &shapes.target_columns);
    let mut targets = Vec::with_capacity(plan.targets.len());
    let mut start: Option<Position> = None;
    let mut any_missing = false;
    let mut warn_others = *warn_unbackfilled;
    // Target sites holding no position of the source.
    let mut without_position = BTreeSet::new();
    // What each target holds already: redelivered transactions up to it are skipped by the
    // applier, so they are not counted as committed (see crate::telemetry).
    let mut held_positions = Vec::new();
    // A writer of a bus claims its position row on each target for the bus before it reads it.
    let bus_identity = match &plan.bus {
        Some(bus) => Some(
            crate::bus::identity::identity(bus)
                .await
                .map_err(|source| LinkError::Bus {
                    site: source_name.to_owned(),
                    source: Box::new(source),
                })?,
        ),
        None => None,
    };
    for (target_plan, routes) in plan.targets.iter().zip(&routes) {
        let apply_error = |source| LinkError::Apply {
            site: target_plan.site.name.clone(),
            source,
        };
        let mut target = AnyApplier::connect(
            &target_plan.site.connection(),
            routes.clone(),
            ApplyOptions::default(),
        )
        .await
        .map_err(apply_error)?;
        let key = position_key(source_name, &deployment);
        if let (Some(bus), Some(identity)) = (&plan.bus, &bus_identity) {
            crate::bus::identity::claim_target(bus, identity, &key, &target_plan.site.connection())
                .await
                .map_err(|e| LinkError::BusClaim(Box::new(e)))?;
        }
        claim_legacy_position(&target_plan.site, source_name, &key, &mut warn_others).await?;
        let held = target.position(&key).await.map_err(apply_error)?;
        held_positions.push(held.clone());
        match held {
            None => {
                any_missing = true;
                without_position.insert(target_plan.site.name.as_str());
            }
            Some(position) => {
                start = Some(match start {
                    Some(current)
                        if current.compare(&position).map_err(LinkError::Position)?
                            == Ordering::Less =>
                    {
                        current
                    }
                    _ => position,
                });
            }
        }
        targets.push(target);
    }
    if std::mem::take(warn_unbackfilled) {
        let missing: Vec<String> = plan
            .unbackfilled
            .iter()
            .filter(|(_, target)| without_position.contains(target.as_str()))
            .map(|(mapping, _)| mapping.clone())
            .collect();
        if !missing.is_empty() {
            tracing::warn!("{}", crate::backfill::never_backfilled_warning(&missing));
        }
    }
    if any_missing && start.is_some() {
        tracing::warn!(
            source = source_name,
            "some targets have never received changes from this source; they start at the position the others hold"
        );
    }
    // No target holds a position yet: the link starts where it started the first time, if it
    // ever did (recorded below before anything was read), so no retry or restart before the
    // first commit ever starts from "now" again.
    let first_start = start.is_none() && plan.bus.is_none();
    if first_start {
        start = state
            .position::<Position>(&start_key(source_name))
            .map_err(LinkError::State)?;
    }
    let mut acker = Acker::new(
        source_name,
        state
            .position::<Position>(&acknowledged_key(source_name))
            .map_err(LinkError::State)?,
    );
    let mut stream = match &plan.bus {
        Some(bus) => Feed::Bus(Box::new(
            crate::bus::BusFeed::start(
                bus,
                source_name,
                &plan.targets[0].site.name,
                start.clone(),
                position_key(source_name, &deployment),
            )
            .await
            .map_err(|source| LinkError::Bus {
                site: source_name.to_owned(),
                source: Box::new(source),
            })?,
        )),
        None => {
            let mut options = StreamOptions::link(plan.tables.clone(), start.clone())
                .for_deployment(state.deployment_id());
            options.acknowledged = acker.recorded.clone();
            options.timeout = silence.current();
            options.source_key = Some(position_key(source_name, &deployment));
            Feed::Source(
                AnyStream::start(&plan.source.connection(), options)
                    .await
                    .map_err(|source| LinkError::Source {
                        site: source_name.to_owned(),
                        source,
                    })?,
            )
        }
    };
    if first_start
        && start.is_none()
        && let Some(position) = stream.start_position()
    {
        // Durable before the first item is read (a PostgreSQL slot keeps its own position).
        let store = state.clone();
        let key = start_key(source_name);
        let saved = position.clone();
        tokio::task::spawn_blocking(move || store.save_position(&key, &saved))
            .await
            .map_err(|panic| LinkError::Crashed(panic.to_string()))?
            .map_err(LinkError::State)?;
        tracing::info!(source = source_name, %position, "recorded where this new link starts");
    }
    if let Err(error) = check_table_identities(state, source_name, &stream).await {
        stream.shutdown().await;
        return Err(error);
    }
    tracing::info!(link = %link_name(plan), start = %start.as_ref().map_or("the source's current position".to_owned(), ToString::to_string), "link started");

    let (committed_tx, mut committed_rx) = mpsc::unbounded_channel::<Committed>();
    let (stop_workers, _) = watch::channel(false);
    let mut senders = Vec::new();
    let mut workers = JoinSet::new();
    for (index, (((target, target_plan), routes), held)) in targets
        .into_iter()
        .zip(&plan.targets)
        .zip(&routes)
        .zip(held_positions)
        .enumerate()
    {
        let (tx, rx) = mpsc::channel(QUEUE);
        senders.push(Outlet {
            queue: tx,
            budget: Arc::new(Semaphore::new(QUEUE_EVENTS)),
            tables: routes
                .iter()
                .map(|r| r.source.clone())
                .collect::<BTreeSet<_>>(),
        });
        let mut target = target;
        let refusals = refusal::Refusals::start(
            source_name,
            &position_key(source_name, &deployment),
            &target_plan.site.name,
            plan.mappings.clone(),
            state.clone(),
            &mut target,
        )
        .await;
        let refusals = match refusals {
            Ok(refusals) => refusals,
            Err(error) => {
                stream.shutdown().await;
                return Err(error);
            }
        };
        let committed = committed_tx.clone();
        let stop = stop_workers.subscribe();
        let target_telemetry = telemetry.target(index);
        if let Some(held) = &held {
            target_telemetry.committed_at(held);
        }
        let counters = Counting {
            telemetry: target_telemetry,
            held,
        };
        workers.spawn(worker(
            index, target, refusals, rx, committed, stop, counters,
        ));
    }
    drop(committed_tx);

    let mut progress = Progress::new(link_name(plan), senders.len());
    let mut sequence = 0u64;
    // Items not yet acknowledged: (sequence number every target must reach, position).
    let mut unacked: VecDeque<(u64, Position)> = VecDeque::new();
    // Set when the attempt ends on a shape: every target commits what was handed to it first.
    let mut drain = false;
    let mut ack_tick = tokio::time::interval(ACK_EVERY);
    // Transactions read that some target has not committed: (sequence number, commit time).
    let mut pending: VecDeque<(u64, DateTime<Utc>)> = VecDeque::new();
    telemetry.streaming();
    let outcome = loop {
        tokio::select! {
            biased;
            _ = stop_requested(shutdown) => break Ok(Ended::Stopped),
            _ = ack_tick.tick() => {
                if let Err(error) = acker.flush(state, &stream, false).await {
                    break Err(error);
                }
            }
            Some(joined) = workers.join_next() => {
                break Err(match joined {
                    Ok(Err(error)) => error,
                    Ok(Ok(())) => LinkError::Crashed("a worker stopped unexpectedly".into()),
                    Err(panic) => LinkError::Crashed(panic.to_string()),
                });
            }
            Some((index, seq)) = committed_rx.recv() => {
                debug_assert!(seq <= sequence, "target {index} reports committing item {seq}, only {sequence} were handed out");
                progress.committed(index, seq);
                report_pending(&mut pending, &progress, telemetry);
                acker.offer(&mut unacked, progress.low_water());
                if let Err(error) = acker.flush(state, &stream, false).await {
                    break Err(error);
                }
                if let Err(error) = record_shapes(state, source_name, &mut shapes.to_record, progress.low_water()).await {
                    break Err(error);
                }
                progress.maybe_log();
            }
            item = stream.next(source_name) => match item {
                Err(error) => {
                    // A definite failure (a value that cannot be decoded, say) stops the link
                    // after every target committed what came before it.
                    drain = matches!(&error, LinkError::Source { source, .. } if !source.is_transient());
                    break Err(error);
                }
                Ok(StreamItem::Shape(shape)) => {
                    let mut judged = follow_shape(plan, &routes, &mut shapes, shape.clone(), sequence + 1);
                    if matches!(&judged, Err(stop) if matches!(**stop, ShapeStop::Added { .. } | ShapeStop::Missing { .. })) {
                        // The DBA may have changed the target since this attempt looked.
                        match target_columns(plan).await {
                            Ok(columns) => shapes.target_columns = columns,
                            Err(error) => break Err(error),
                        }
                        judged = follow_shape(plan, &routes, &mut shapes, shape, sequence + 1);
                    }
                    match judged {
                        Ok(None) => {}
                        Ok(Some(shape)) => {
                            tracing::info!(link = %link_name(plan), table = %shape.table, columns = ?shape.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), "a mapped table's columns changed on the source; following it from this change on");
                            followed.insert(shape.table.clone(), shape);
                            drain = true;
                            break Ok(Ended::Rerouted);
                        }
                        Err(stop) => {
                            drain = true;
                            break Err(LinkError::Shape { site: source_name.to_owned(), stop });
                        }
                    }
                }
                Ok(StreamItem::Heartbeat(position)) => {
                    telemetry.read(&position);
                    unacked.push_back((sequence, position));
                    acker.offer(&mut unacked, progress.low_water());
                    if let Err(error) = acker.flush(state, &stream, false).await {
                        break Err(error);
                    }
                }
                Ok(StreamItem::Transaction(tx)) => {
                    silence.delivered_transaction();
                    sequence += 1;
                    progress.read(tx.events.len());
                    pending.push_back((sequence, tx.commit_time));
                    telemetry.read(&tx.position);
                    report_pending(&mut pending, &progress, telemetry);
                    unacked.push_back((sequence, tx.position.clone()));
                    if let Err(error) = dispatch(&senders, Piece::Transaction(sequence, tx), &mut workers).await {
                        break Err(error);
                    }
                }
                Ok(StreamItem::Part(part)) => {
                    silence.delivered_transaction();
                    progress.read_part(part.events.len());
                    if let Err(error) = dispatch(&senders, Piece::Part(part), &mut workers).await {
                        break Err(error);
                    }
                }
            }
        }
    };
    // Let every worker finish the target transaction it is writing (or, on a shape or a
    // definite source failure, all it was handed), then stop.
    if !drain {
        let _ = stop_workers.send(true);
    }
    drop(senders);
    let mut outcome = outcome;
    while let Some(joined) = workers.join_next().await {
        if let (Ok(Err(error)), Ok(_)) = (joined, &outcome) {
            outcome = Err(error);
        }
    }
    while let Ok((index, seq)) = committed_rx.try_recv() {
        progress.committed(index, seq);
    }
    acker.offer(&mut unacked, progress.low_water());
    if let Err(error) = acker.flush(state, &stream, true).await
        && outcome.is_ok()
    {
        outcome = Err(error);
    }
    if let Err(error) = record_shapes(
        state,
        source_name,
        &mut shapes.to_record,
        progress.low_water(),
    )
    .await
        && outcome.is_ok()
    {
        outcome = Err(error);
    }
    stream.shutdown().await;
    tracing::info!(link = %link_name(plan), "link stopped");
    outcome
}

/// Counters for the periodic progress line.
struct Progress {
    name: String,
    committed: Vec<u64>,
    read_transactions: u64,
    read_events: u64,
    last_log: Instant,
    logged_events: u64,
}

impl Progress {
    fn new(name: String, targets: usize) -> Progress {
        Progress {
            name,
            committed: vec![0; targets],
            read_transactions: 0,
            read_events: 0,
            last_log: Instant::now(),
            logged_events: 0,
        }
    }

    fn read(&mut self, events: usize) {
        self.read_transactions += 1;
        self.read_events += events as u64;
    }

    fn read_part(&mut self, events: usize) {
        self.read_events += events as u64;
    }

    fn committed(&mut self, index: usize, seq: u64) {
        self.committed[index] = self.committed[index].max(seq);
    }

    /// The sequence number every target has committed.
    fn low_water(&self) -> u64 {
        self.committed.iter().copied().min().unwrap_or(0)
    }

    fn maybe_log(&mut self) {
        let elapsed = self.last_log.elapsed();
        if elapsed < PROGRESS_EVERY {
            return;
        }
        let rate = (self.read_events - self.logged_events) as f64 / elapsed.as_secs_f64();
        tracing::info!(
            link = %self.name,
            transactions = self.read_transactions,
            rows = self.read_events,
            behind = self.read_transactions - self.low_water(),
            "replicating, {rate:.0} rows/s"
        );
        self.last_log = Instant::now();
        self.logged_events = self.read_events;
    }
}

/// Drops from `pending` what every target committed and tells each target's telemetry how
/// many transactions wait for it and the commit time of the oldest one.
fn report_pending(
    pending: &mut VecDeque<(u64, DateTime<Utc>)>,
    progress: &Progress,
    telemetry: &LinkTelemetry,
) {
    let low_water = progress.low_water();
    while pending.front().is_some_and(|(seq, _)| *seq <= low_water) {
        pending.pop_front();
    }
    for (index, committed) in progress.committed.iter().enumerate() {
        let first = pending.partition_point(|(seq, _)| seq <= committed);
        let target = telemetry.target(index);
        target.pending_since(pending.get(first).map(|(_, time)| *time));
        target.queued((pending.len() - first) as u64);
    }
}
