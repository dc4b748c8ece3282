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
    ChangeEvent, Position, PositionError, TableName, TableSchema, TableShape, Transaction,
    TransactionPart,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use duplex_state::StateStore;

use crate::backoff::Backoff;
use crate::config::{Mapping, Site};
use crate::report::chain;
use crate::shape::{ShapeStop, TargetView, shape_key};
use crate::shutdown::stop_requested;
use duplex_connectors::{AnyApplier, AnyStream, StreamError, StreamItem, StreamOptions};

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
            LinkError::Position(_)
            | LinkError::Crashed(_)
            | LinkError::State(_)
            | LinkError::TableReplaced { .. }
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
    let mut backoff = Backoff::default();
    let mut warn_unbackfilled = true;
    // Source tables whose changes are routed by a shape the log announced (see crate::shape).
    let mut followed: HashMap<TableName, TableShape> = HashMap::new();
    loop {
        backoff.attempt_started();
        match attempt(
            &plan,
            &state,
            &mut shutdown,
            &mut warn_unbackfilled,
            &mut followed,
        )
        .await
        {
            Ok(Ended::Stopped) => return Ok(()),
            Ok(Ended::Rerouted) => continue,
            Err(error) if error.is_transient() => {
                let delay = backoff.failed();
                tracing::warn!(link = %name, error = %chain(&error), "link interrupted; retrying in {delay:.1?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop_requested(&mut shutdown) => return Ok(()),
                }
            }
            Err(error) => return Err(error),
        }
    }
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

/// The routes of every target: a source table is routed by the shape its changes will have
/// next: the one `followed` in this run, else the last one recorded in the state store, else
/// the catalog's. A column gone from the source (not in the catalog) that the target no
/// longer has either is left out (the DBA made the same change on the target).
fn current_routes(
    plan: &LinkPlan,
    followed: &HashMap<TableName, TableShape>,
    stored: &HashMap<TableName, TableShape>,
    target_columns: &[HashMap<TableName, BTreeSet<String>>],
) -> Vec<Vec<TableRoute>> {
    let mut schemas = plan.schemas.clone();
    for (table, catalog) in &plan.schemas {
        if let Some(shape) = followed.get(table).or_else(|| stored.get(table)) {
            schemas.insert(table.clone(), crate::shape::schema_of(shape, catalog));
        }
    }
    plan.targets
        .iter()
        .zip(target_columns)
        .map(|(t, columns)| {
            let mut routes = crate::routes::routes_for(
                &plan.mappings,
                &plan.source.name,
                &t.site.name,
                &schemas,
            );
            for route in &mut routes {
                let (Some(catalog), Some(on_target)) =
                    (plan.schemas.get(&route.source), columns.get(&route.target))
                else {
                    continue;
                };
                route.columns.retain(|(source, target)| {
                    catalog.column(source).is_some() || on_target.contains(target)
                });
            }
            routes
        })
        .collect()
}

/// The columns of every target table of the plan's routes, per target.
async fn target_columns(
    plan: &LinkPlan,
) -> Result<Vec<HashMap<TableName, BTreeSet<String>>>, LinkError> {
    let mut all = Vec::with_capacity(plan.targets.len());
    for target in &plan.targets {
        let routes = &target.routes;
        let tables: BTreeSet<TableName> = routes.iter().map(|r| r.target.clone()).collect();
        let schemas = duplex_connectors::describe(&target.site.connection(), &tables)
            .await
            .map_err(|source| LinkError::Schema {
                site: target.site.name.clone(),
                transient: source.is_transient(),
                source: Box::new(source),
            })?;
        all.push(
            schemas
                .into_iter()
                .map(|(table, schema)| {
                    (table, schema.columns.into_iter().map(|c| c.name).collect())
                })
                .collect(),
        );
    }
    Ok(all)
}

/// Source tables' shapes as this attempt knows them (see `crate::shape`).
struct Shapes {
    /// The last shape every target committed changes of, per table (from the state store).
    stored: HashMap<TableName, TableShape>,
    /// The last shape announced in this attempt, per table.
    session: HashMap<TableName, TableShape>,
    /// Shapes to record once every target committed the item with this sequence number.
    to_record: VecDeque<(u64, TableShape)>,
    /// Columns of the target tables, per target.
    target_columns: Vec<HashMap<TableName, BTreeSet<String>>>,
}

/// One run of the link until shutdown or failure. `warn_unbackfilled`: the first attempt that
/// reads the targets' positions warns about mappings that were never backfilled (and clears
/// it). `followed`: the tables routed by a shape the log announced (updated when a shape
/// changes the routes, which ends the attempt with [`Ended::Rerouted`]).
async fn attempt(
    plan: &LinkPlan,
    state: &Arc<StateStore>,
    shutdown: &mut watch::Receiver<bool>,
    warn_unbackfilled: &mut bool,
    followed: &mut HashMap<TableName, TableShape>,
) -> Result<Ended, LinkError> {
    let source_name = plan.source.name.as_str();
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
        let key = position_key(source_name, state.deployment_id());
        claim_legacy_position(&target_plan.site, source_name, &key, &mut warn_others).await?;
        match target.position(&key).await.map_err(apply_error)? {
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
    let first_start = start.is_none();
    if first_start {
        start = state
            .position::<Position>(&start_key(source_name))
            .map_err(LinkError::State)?;
    }
    let mut acker = Acker {
        key: acknowledged_key(source_name),
        recorded: state
            .position::<Position>(&acknowledged_key(source_name))
            .map_err(LinkError::State)?,
        ready: None,
        sent: Instant::now(),
    };
    let mut options = StreamOptions::link(plan.tables.clone(), start.clone())
        .for_deployment(state.deployment_id());
    options.acknowledged = acker.recorded.clone();
    options.source_key = Some(position_key(source_name, state.deployment_id()));
    let mut stream = AnyStream::start(&plan.source.connection(), options)
        .await
        .map_err(|source| LinkError::Source {
            site: source_name.to_owned(),
            source,
        })?;
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
    for (index, ((target, target_plan), routes)) in targets
        .into_iter()
        .zip(&plan.targets)
        .zip(&routes)
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
        let site = target_plan.site.name.clone();
        let committed = committed_tx.clone();
        let stop = stop_workers.subscribe();
        workers.spawn(async move {
            worker(index, target, rx, committed, stop)
                .await
                .map_err(|source| LinkError::Apply { site, source })
        });
    }
    drop(committed_tx);

    let mut progress = Progress::new(link_name(plan), senders.len());
    let mut sequence = 0u64;
    // Items not yet acknowledged: (sequence number every target must reach, position).
    let mut unacked: VecDeque<(u64, Position)> = VecDeque::new();
    // Set when the attempt ends on a shape: every target commits what was handed to it first.
    let mut drain = false;
    let mut ack_tick = tokio::time::interval(ACK_EVERY);
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
                acker.offer(&mut unacked, progress.low_water());
                if let Err(error) = acker.flush(state, &stream, false).await {
                    break Err(error);
                }
                if let Err(error) = record_shapes(state, source_name, &mut shapes.to_record, progress.low_water()).await {
                    break Err(error);
                }
                progress.maybe_log();
            }
            item = stream.next() => match item {
                Err(source) => break Err(LinkError::Source { site: source_name.to_owned(), source }),
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
                    unacked.push_back((sequence, position));
                    acker.offer(&mut unacked, progress.low_water());
                    if let Err(error) = acker.flush(state, &stream, false).await {
                        break Err(error);
                    }
                }
                Ok(StreamItem::Transaction(tx)) => {
                    sequence += 1;
                    progress.read(tx.events.len());
                    unacked.push_back((sequence, tx.position.clone()));
                    if let Err(error) = dispatch(&senders, Piece::Transaction(sequence, tx), &mut workers).await {
                        break Err(error);
                    }
                }
                Ok(StreamItem::Part(part)) => {
                    progress.read_part(part.events.len());
                    if let Err(error) = dispatch(&senders, Piece::Part(part), &mut workers).await {
                        break Err(error);
                    }
                }
            }
        }
    };
    // Let every worker finish the target transaction it is writing (or, on a shape, all it
    // was handed), then stop.
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

/// The source name a target's `duplex.positions` records the progress of `site` under, for
/// the deployment `deployment` (the state store's identity): two configurations that name
/// their sites alike never share a row, whatever servers they write into.
pub fn position_key(site: &str, deployment: &str) -> String {
    format!("{site}@{deployment}")
}

/// Takes over a target's row of `site` recorded under the bare site name (by duplex before
/// positions were keyed by deployment) when none under `key` exists, and warns once about rows
/// of a site named alike that another deployment records there.
async fn claim_legacy_position(
    target: &Site,
    site: &str,
    key: &str,
    warn_others: &mut bool,
) -> Result<(), LinkError> {
    let failed = |source: duplex_connectors::load::AdminError| LinkError::Schema {
        site: target.name.clone(),
        transient: true,
        source: Box::new(source),
    };
    let connection = target.connection();
    let sources = duplex_connectors::load::position_sources(&connection)
        .await
        .map_err(failed)?;
    if sources.iter().any(|s| s == key) {
        return Ok(());
    }
    if sources.iter().any(|s| s == site)
        && duplex_connectors::load::rename_position(&connection, site, key)
            .await
            .map_err(failed)?
    {
        tracing::info!(site = %target.name, source = site, row = key, "took over the position recorded before positions were kept per deployment");
        return Ok(());
    }
    let prefix = format!("{site}@");
    let others: Vec<&str> = sources
        .iter()
        .filter(|s| s.starts_with(&prefix))
        .map(|s| &s[prefix.len()..])
        .collect();
    if !others.is_empty() && std::mem::take(warn_others) {
        tracing::warn!(
            target_site = %target.name,
            source = site,
            "site {} holds positions of a source site named {site} for other duplex deployments ({}), none for this one ({}): if one of them was this duplex with an earlier state directory, stop now and restore that directory (this start reads the source from where this deployment's link first started, or from its current position); if another duplex replicates another source under the same site name, this is fine",
            target.name,
            others.join(", "),
            &key[prefix.len()..],
        );
    }
    Ok(())
}

/// The state-store key of a mapped source table's identity (PostgreSQL: its oid).
pub fn table_id_key(source: &str, table: &TableName) -> String {
    format!("table-id:{source}:{table}")
}

/// Compares the mapped tables' identities on the source with those recorded when the link
/// first read them: a table dropped and re-created (or one that had left the publication)
/// since has changes that are not in the stream, which must stop the link until the DBA
/// copied the table again and accepted it (`run --accept-schema-change`). The stop is kept
/// (an identity of 0 is recorded for a table that had left the publication), since the
/// stream has already put the table back.
async fn check_table_identities(
    state: &Arc<StateStore>,
    source: &str,
    stream: &AnyStream,
) -> Result<(), LinkError> {
    let (ids, unpublished) = stream.table_identities();
    let store = state.clone();
    let source_name = source.to_owned();
    let replaced = tokio::task::spawn_blocking(move || -> Result<Option<(TableName, String)>, duplex_state::StateError> {
        for (table, id) in ids {
            let key = table_id_key(&source_name, &table);
            let recorded = store.position::<u64>(&key)?;
            let what = match recorded {
                None => {
                    store.save_position(&key, &id)?;
                    continue;
                }
                Some(0) => "was removed from the publication or dropped while duplex was not reading it",
                Some(known) if known != id => "was dropped and re-created since duplex last read it",
                Some(_) if unpublished.contains(&table) => {
                    store.save_position(&key, &0u64)?;
                    "was removed from the publication or dropped while duplex was not reading it"
                }
                Some(_) => continue,
            };
            return Ok(Some((table, what.to_owned())));
        }
        Ok(None)
    })
    .await
    .map_err(|panic| LinkError::Crashed(panic.to_string()))?
    .map_err(LinkError::State)?;
    match replaced {
        None => Ok(()),
        Some((table, what)) => Err(LinkError::TableReplaced {
            site: source.to_owned(),
            table,
            what,
        }),
    }
}

/// Judges a shape the stream announced (see `crate::shape`): `None` when the routes stay,
/// the shape when they change (the attempt ends and the next one routes by it), or why the
/// link stops. `next` is the sequence number of the item the shape comes before.
fn follow_shape(
    plan: &LinkPlan,
    routes: &[Vec<TableRoute>],
    shapes: &mut Shapes,
    shape: TableShape,
    next: u64,
) -> Result<Option<TableShape>, Box<ShapeStop>> {
    let table = &shape.table;
    let Some(catalog) = plan.schemas.get(table) else {
        return Ok(None);
    };
    let previous = shapes
        .session
        .get(table)
        .or_else(|| shapes.stored.get(table));
    let views: Vec<TargetView<'_>> = plan
        .targets
        .iter()
        .zip(routes)
        .zip(&shapes.target_columns)
        .map(|((target, routes), columns)| {
            let route = routes.iter().find(|r| &r.source == table);
            TargetView {
                site: &target.site.name,
                route,
                columns: route.and_then(|r| columns.get(&r.target)),
            }
        })
        .collect();
    let new = crate::shape::judge(
        &plan.mappings,
        &plan.source.name,
        &shape,
        previous,
        catalog,
        &views,
    )?;
    let rerouted = views
        .iter()
        .zip(&new)
        .any(|(view, new)| crate::shape::reroutes(&shape, view.route, new.as_ref()));
    shapes.session.insert(table.clone(), shape.clone());
    if rerouted {
        return Ok(Some(shape));
    }
    if shapes.stored.get(table) != Some(&shape) {
        shapes.to_record.push_back((next, shape));
    }
    Ok(None)
}

/// Records in the state store the shapes whose following item every target committed (so a
/// restart compares what it reads with them).
async fn record_shapes(
    state: &Arc<StateStore>,
    source: &str,
    to_record: &mut VecDeque<(u64, TableShape)>,
    low_water: u64,
) -> Result<(), LinkError> {
    while to_record.front().is_some_and(|(seq, _)| *seq <= low_water) {
        let Some((_, shape)) = to_record.pop_front() else {
            break;
        };
        let store = state.clone();
        let key = shape_key(source, &shape.table);
        tokio::task::spawn_blocking(move || store.save_position(&key, &shape))
            .await
            .map_err(|panic| LinkError::Crashed(panic.to_string()))?
            .map_err(LinkError::State)?;
    }
    Ok(())
}

/// What the reader hands a target worker.
#[derive(Debug)]
enum Piece {
    /// A transaction and its sequence number (the final piece of a large one included).
    Transaction(u64, Transaction),
    /// A part of a large transaction.
    Part(TransactionPart),
}

impl Piece {
    fn events(&self) -> &[ChangeEvent] {
        match self {
            Piece::Transaction(_, tx) => &tx.events,
            Piece::Part(part) => &part.events,
        }
    }

    /// A copy with only the changes of `tables`.
    fn filtered(&self, tables: &BTreeSet<TableName>) -> Piece {
        let events = self
            .events()
            .iter()
            .filter(|e| tables.contains(&e.table))
            .cloned()
            .collect();
        match self {
            Piece::Transaction(seq, tx) => Piece::Transaction(
                *seq,
                Transaction {
                    source: tx.source.clone(),
                    position: tx.position.clone(),
                    commit_time: tx.commit_time,
                    origin: tx.origin,
                    events,
                },
            ),
            Piece::Part(part) => Piece::Part(TransactionPart {
                source: part.source.clone(),
                start: part.start.clone(),
                origin: part.origin,
                events,
            }),
        }
    }

    /// Keeps only the changes of `tables`.
    fn retain(&mut self, tables: &BTreeSet<TableName>) {
        match self {
            Piece::Transaction(_, tx) => tx.events.retain(|e| tables.contains(&e.table)),
            Piece::Part(part) => part.events.retain(|e| tables.contains(&e.table)),
        }
    }
}

/// A piece queued for a worker, holding its share of the target's event budget until it is
/// written.
type Queued = (Piece, OwnedSemaphorePermit);

/// A target worker's queue, its event budget and the source tables routed to it.
struct Outlet {
    queue: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
    tables: BTreeSet<TableName>,
}

/// Hands a transaction or part to every target, each with only the changes of tables routed
/// there (a transaction possibly with none: the target still records that it is past this
/// position; a part with none is not sent).
async fn dispatch(
    senders: &[Outlet],
    piece: Piece,
    workers: &mut JoinSet<Result<(), LinkError>>,
) -> Result<(), LinkError> {
    let Some((last, others)) = senders.split_last() else {
        return Ok(());
    };
    let mut sent = true;
    for outlet in others {
        sent &= hand_over(outlet, piece.filtered(&outlet.tables)).await;
    }
    let mut piece = piece;
    piece.retain(&last.tables);
    sent &= hand_over(last, piece).await;
    if sent {
        return Ok(());
    }
    // A worker ended: report why.
    Err(match workers.join_next().await {
        Some(Ok(Err(error))) => error,
        Some(Err(panic)) => LinkError::Crashed(panic.to_string()),
        _ => LinkError::Crashed("a worker stopped unexpectedly".into()),
    })
}

/// Queues `piece` for one worker once its event budget allows; false when the worker ended.
async fn hand_over(outlet: &Outlet, piece: Piece) -> bool {
    if matches!(&piece, Piece::Part(part) if part.events.is_empty()) {
        return true;
    }
    let permits = piece.events().len().clamp(1, QUEUE_EVENTS) as u32;
    let Ok(permit) = outlet.budget.clone().acquire_many_owned(permits).await else {
        return false;
    };
    outlet.queue.send((piece, permit)).await.is_ok()
}

/// How often a link acknowledges to its source at most.
const ACK_EVERY: Duration = Duration::from_secs(1);

/// The state-store key of the newest position a link acknowledged to its source.
pub fn acknowledged_key(source: &str) -> String {
    format!("link-acknowledged:{source}")
}

/// Acknowledges to the source the newest item every target has committed, at most every
/// [`ACK_EVERY`]. A PostgreSQL position is recorded in the state store before it is sent, so
/// the next start can tell a slot confirmed beyond anything duplex acknowledged (re-created
/// or advanced by someone else; see `StreamOptions::acknowledged`).
struct Acker {
    key: String,
    /// The newest position recorded.
    recorded: Option<Position>,
    /// The newest position every target committed, not yet sent.
    ready: Option<Position>,
    /// When a position was last sent.
    sent: Instant,
}

impl Acker {
    /// Takes every item every target has committed off `unacked`.
    fn offer(&mut self, unacked: &mut VecDeque<(u64, Position)>, low_water: u64) {
        if let Some(position) = acknowledgeable(unacked, low_water) {
            self.ready = Some(position);
        }
    }

    /// Sends the ready position when [`ACK_EVERY`] has passed (or `now`), recording it first.
    async fn flush(
        &mut self,
        state: &Arc<StateStore>,
        stream: &AnyStream,
        now: bool,
    ) -> Result<(), LinkError> {
        if self.ready.is_none() || (!now && self.sent.elapsed() < ACK_EVERY) {
            return Ok(());
        }
        let Some(position) = self.ready.take() else {
            return Ok(());
        };
        let newer = self
            .recorded
            .as_ref()
            .is_none_or(|r| r != &position && not_after(r, &position));
        if matches!(position, Position::Postgres(_)) && newer {
            let store = state.clone();
            let key = self.key.clone();
            let saved = position.clone();
            tokio::task::spawn_blocking(move || store.save_position(&key, &saved))
                .await
                .map_err(|panic| LinkError::Crashed(panic.to_string()))?
                .map_err(LinkError::State)?;
            self.recorded = Some(position.clone());
        }
        stream.ack(&position);
        self.sent = Instant::now();
        Ok(())
    }
}

/// Takes from `unacked` (items in the order read: the sequence number every target must
/// reach, and the item's position) every item every target has committed, `low_water`
/// being the sequence number they all reached, and returns the newest one's position.
///
/// The invariant, asserted in debug builds: the position returned is never beyond an item
/// some target has not committed. A heartbeat carries the sequence number of the transaction
/// read before it, so it waits behind that transaction however far the source's log has
/// moved on; and positions, read in order, never move backwards.
fn acknowledgeable(unacked: &mut VecDeque<(u64, Position)>, low_water: u64) -> Option<Position> {
    let mut newest: Option<Position> = None;
    while let Some((seq, position)) = unacked.pop_front() {
        if seq > low_water {
            unacked.push_front((seq, position));
            break;
        }
        debug_assert!(
            newest.as_ref().is_none_or(|n| not_after(n, &position)),
            "positions read moved backwards: {newest:?} then {position}"
        );
        newest = Some(position);
    }
    if let (Some(newest), Some((seq, next))) = (&newest, unacked.front()) {
        debug_assert!(
            *seq > low_water && not_after(newest, next),
            "acknowledging {newest}, beyond item {seq} at {next} that some target has not \
             committed (all committed up to {low_water})"
        );
    }
    newest
}

/// `a` is not after `b` (positions of different kinds, which never meet in one link, pass).
fn not_after(a: &Position, b: &Position) -> bool {
    !matches!(a.compare(b), Ok(Ordering::Greater))
}

/// One target's writer: batches queued transactions and applies them; writes the parts of a
/// large transaction and then its final transaction alone.
async fn worker(
    index: usize,
    mut target: AnyApplier,
    mut queue: mpsc::Receiver<Queued>,
    committed: mpsc::UnboundedSender<Committed>,
    stop: watch::Receiver<bool>,
) -> Result<(), ApplyError> {
    let mut batch = Vec::new();
    // Permits of the batch's transactions, released once it is written.
    let mut held = Vec::new();
    // A part received while gathering a batch: handled right after the batch.
    let mut next: Option<Queued> = None;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let received = match next.take() {
            Some(item) => Some(item),
            None => queue.recv().await,
        };
        let Some((piece, permit)) = received else {
            return Ok(());
        };
        let (mut last, first) = match piece {
            Piece::Part(part) => {
                target.apply_part(&part).await?;
                drop((part, permit));
                let Some(sequence) = finish_large(&mut target, &mut queue).await? else {
                    return Ok(());
                };
                if committed.send((index, sequence)).is_err() {
                    return Ok(());
                }
                continue;
            }
            Piece::Transaction(seq, tx) => (seq, tx),
        };
        let mut events = first.events.len();
        batch.clear();
        held.clear();
        batch.push(first);
        held.push(permit);
        while batch.len() < BATCH_TRANSACTIONS && events < BATCH_EVENTS {
            match queue.try_recv() {
                Ok((Piece::Transaction(seq, tx), permit)) => {
                    events += tx.events.len();
                    last = seq;
                    batch.push(tx);
                    held.push(permit);
                }
                Ok(part) => {
                    next = Some(part);
                    break;
                }
                Err(_) => break,
            }
        }
        if let Err(error) = target.apply(&batch).await {
            if error.is_transient() || batch.len() == 1 {
                return Err(error);
            }
            // A definite failure: apply the batch's transactions one by one so that every
            // transaction before the offending one lands and the link stops exactly there.
            for (offset, tx) in batch.iter().enumerate() {
                target.apply(std::slice::from_ref(tx)).await?;
                let seq = last + 1 + offset as u64 - batch.len() as u64;
                if committed.send((index, seq)).is_err() {
                    return Ok(());
                }
            }
            tracing::warn!(error = %chain(&error), "a batch failed but each of its transactions applied alone");
            continue;
        }
        held.clear();
        if committed.send((index, last)).is_err() {
            return Ok(());
        }
    }
}

/// After the first part of a large transaction: writes the following parts and applies the
/// final transaction alone, which commits them all. Returns the final transaction's sequence
/// number, or `None` when the queue closed first (the reader stopped; the open target
/// transaction is rolled back when the target is dropped).
async fn finish_large(
    target: &mut AnyApplier,
    queue: &mut mpsc::Receiver<Queued>,
) -> Result<Option<u64>, ApplyError> {
    while let Some((piece, permit)) = queue.recv().await {
        match piece {
            Piece::Part(part) => target.apply_part(&part).await?,
            Piece::Transaction(seq, tx) => {
                target.apply(std::slice::from_ref(&tx)).await?;
                return Ok(Some(seq));
            }
        }
        drop(permit);
    }
    Ok(None)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(n: u64) -> Position {
        Position::Outbox(n)
    }

    #[test]
    fn a_heartbeat_waits_behind_a_transaction_some_target_has_not_committed() {
        // Transaction 1 at 10, a heartbeat at 50 read after it, transaction 2 at 60.
        let mut unacked = VecDeque::from([(1, at(10)), (1, at(50)), (2, at(60))]);
        // No target committed anything: however far the heartbeat is, nothing is confirmed.
        assert_eq!(acknowledgeable(&mut unacked, 0), None);
        assert_eq!(unacked.len(), 3);
        // Every target committed transaction 1: the heartbeat after it is confirmed too, not
        // transaction 2.
        assert_eq!(acknowledgeable(&mut unacked, 1), Some(at(50)));
        assert_eq!(unacked, VecDeque::from([(2, at(60))]));
        assert_eq!(acknowledgeable(&mut unacked, 1), None);
        assert_eq!(acknowledgeable(&mut unacked, 2), Some(at(60)));
        assert!(unacked.is_empty());
    }

    #[test]
    fn a_heartbeat_before_any_transaction_is_confirmed_at_once() {
        let mut unacked = VecDeque::from([(0, at(5))]);
        assert_eq!(acknowledgeable(&mut unacked, 0), Some(at(5)));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "moved backwards")]
    fn positions_moving_backwards_are_a_bug() {
        let mut unacked = VecDeque::from([(1, at(10)), (1, at(9))]);
        acknowledgeable(&mut unacked, 1);
    }
}
