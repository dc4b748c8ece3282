//! The per-site tasks: one reader and one writer per site, each retrying its own site.
//!
//! A [`reader`] streams its site's mapped tables and `duplex.positions`, whole transactions in
//! commit order, into the coordinator, and acknowledges to the source only what the coordinator
//! committed. A [`writer`] applies its site's outbox entries in number order, conditionally,
//! each batch as target transactions that record their outbox position (see
//! `duplex_connectors::apply`).
//!
//! Why a site that goes away costs nothing but time: the reader restarts after a backoff from
//! just after the last item it handed over (every item handed over is decided, in order, so
//! none is read twice or skipped); the writer applies the same batch again after reconnecting,
//! and entries the site already holds are skipped by their outbox position. Meanwhile the other
//! sites' tasks go on; the coordinator waits for a writer only once its queue is full. A
//! definite failure is reported to the coordinator, which ends the attempt.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use duplex_connectors::apply::{Applier, ApplyError, ApplyOptions, WriterClaim};
use duplex_connectors::{
    AnyApplier, AnyStream, ChangeEvent, Origin, Position, Row, SilenceTimeout, StreamError,
    StreamItem, StreamOptions, TableName, Transaction,
};
use tokio::sync::{mpsc, watch};

use super::EngineError;
use super::backlog::Backlog;
use super::coordinator::Input;
use super::outbox::{OutboxWrite, outbox_name};
use super::plan::{MergePlan, MergeSite};
use super::rows::display_image;
use super::undecided::Handed;
use crate::backoff::Backoff;
use crate::report::chain;
use crate::value_map::{self, SiteValues};

/// Outbox entries one writer puts into one target transaction, at most.
pub(super) const WRITE_BATCH: usize = 1000;
/// Outbox entries queued per writer before the coordinator waits.
pub(super) const WRITER_QUEUE: usize = 8192;

/// A site's applier, connected, and how far its outbox was written there.
pub(super) struct SiteWriter {
    /// The applier.
    pub(super) target: AnyApplier,
    /// The last outbox entry the site holds (0: none).
    pub(super) written: u64,
}

/// Connects every site's applier (plan order) and reads how far its outbox was written.
///
/// Writers come first: they create `duplex.positions` where it is missing, which the readers'
/// publications need, and they say how far each outbox got.
pub(super) async fn connect_writers(plan: &MergePlan) -> Result<Vec<SiteWriter>, EngineError> {
    let mut writers = Vec::new();
    for site in &plan.sites {
        let name = &site.site.name;
        let mut target = connect_writer(site)
            .await
            .map_err(|e| apply_error(name, e))?;
        let written = written(&mut target, name).await?;
        writers.push(SiteWriter { target, written });
    }
    Ok(writers)
}

/// Takes the engine's claim on every site (plan order) for `deployment`, moving it from
/// `take_over_from` where that deployment holds it, and reads again how far each outbox was
/// written: read after the claim, under which no other engine writes, the count is exact (see
/// `duplex_connectors::apply::WriterClaim`). A site claimed by another deployment refuses the
/// engine with the fix.
pub(super) async fn claim_sites(
    plan: &MergePlan,
    writers: &mut [SiteWriter],
    deployment: &str,
    take_over_from: Option<&str>,
) -> Result<Vec<bool>, EngineError> {
    let mut taken_over = Vec::new();
    for (site, writer) in plan.sites.iter().zip(writers.iter_mut()) {
        let name = &site.site.name;
        let claim = WriterClaim {
            scope: outbox_name(name),
            deployment: deployment.to_owned(),
        };
        let moved = writer
            .target
            .claim(claim, take_over_from)
            .await
            .map_err(|e| apply_error(name, e))?;
        writer.written = written(&mut writer.target, name).await?;
        taken_over.push(moved.is_some());
        if let Some(previous) = moved {
            tracing::warn!(
                site = %name,
                previous = %previous,
                "took over the merge engine's claim on this site (--take-over-from): the engine of deployment {previous} can no longer write here; this engine numbers its writes after the {count} written so far",
                count = writer.written,
            );
        }
    }
    Ok(taken_over)
}

/// The last outbox entry `site` holds (0: none), as its `duplex.positions` row says.
pub(super) async fn written(target: &mut AnyApplier, name: &str) -> Result<u64, EngineError> {
    match target
        .position(&outbox_name(name))
        .await
        .map_err(|e| apply_error(name, e))?
    {
        None => Ok(0),
        Some(Position::Outbox(seq)) => Ok(seq),
        Some(other) => Err(EngineError::Unsupported(format!(
            "site {name}: duplex.positions holds {other} for {}, which is not an outbox position",
            outbox_name(name)
        ))),
    }
}

/// Where a reader takes its site's changes from: the site itself, or (`--role coordinator`)
/// the site's merge stream on the bus, which a `--role reader` fills with the same items.
enum SiteFeed {
    /// The site's own change stream.
    Site(Box<AnyStream>),
    /// The bus, from just after what the coordinator committed.
    Bus(Box<crate::bus::BusFeed>),
}

/// Why a [`SiteFeed`] ended.
pub(super) enum FeedError {
    /// The site's stream failed.
    Site(StreamError),
    /// The bus failed.
    Bus(crate::bus::BusError),
}

impl FeedError {
    fn is_transient(&self) -> bool {
        match self {
            FeedError::Site(error) => error.is_transient(),
            FeedError::Bus(error) => error.is_transient(),
        }
    }

    fn into_engine(self, site: &str) -> EngineError {
        match self {
            FeedError::Site(source) => EngineError::Source {
                site: site.to_owned(),
                source: Box::new(source),
            },
            FeedError::Bus(source) => EngineError::Bus {
                site: site.to_owned(),
                source: Box::new(source),
            },
        }
    }
}

impl std::fmt::Display for FeedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeedError::Site(error) => write!(f, "{}", chain(error)),
            FeedError::Bus(error) => write!(f, "{}", chain(error)),
        }
    }
}

impl SiteFeed {
    /// Starts reading `site` just after `from` (see [`SiteFeed`]).
    async fn start(
        site: &MergeSite,
        bus: Option<&crate::bus::Bus>,
        from: &Option<Position>,
        timeout: std::time::Duration,
    ) -> Result<SiteFeed, FeedError> {
        if let Some(bus) = bus {
            return crate::bus::BusFeed::start_merge(bus, &site.site.name, from.clone())
                .await
                .map(|feed| SiteFeed::Bus(Box::new(feed)))
                .map_err(FeedError::Bus);
        }
        AnyStream::start(
            &site.site.connection(),
            StreamOptions {
                take_over_from: site.take_over_from.clone(),
                timeout,
                ..StreamOptions::merge(site.tables.clone(), from.clone())
                    .for_deployment(&site.deployment)
            },
        )
        .await
        .map(|stream| SiteFeed::Site(Box::new(stream)))
        .map_err(FeedError::Site)
    }

    async fn next(&mut self) -> Result<StreamItem, FeedError> {
        match self {
            SiteFeed::Site(stream) => stream.next().await.map_err(FeedError::Site),
            SiteFeed::Bus(feed) => feed.next().await.map_err(FeedError::Bus),
        }
    }

    fn start_position(&self) -> Option<Position> {
        match self {
            SiteFeed::Site(stream) => stream.start_position(),
            // The reader recorded it before it published anything.
            SiteFeed::Bus(_) => None,
        }
    }

    fn ack(&mut self, position: &Position) {
        match self {
            SiteFeed::Site(stream) => stream.ack(position),
            SiteFeed::Bus(feed) => feed.ack(position),
        }
    }

    async fn shutdown(self) {
        match self {
            SiteFeed::Site(stream) => stream.shutdown().await,
            SiteFeed::Bus(feed) => feed.shutdown().await,
        }
    }
}

/// Streams one site into the coordinator, acknowledging what the coordinator committed. A
/// site that goes away is read again, after a backoff, from just after the last item handed
/// to the coordinator (every item handed over is decided, in order), while the other sites
/// go on; a definite failure ends the engine's attempt.
pub(super) async fn reader(
    index: usize,
    site: MergeSite,
    bus: Option<crate::bus::Bus>,
    start: Option<Position>,
    report: mpsc::Sender<Input>,
    mut ack: watch::Receiver<Option<Position>>,
    mut handed: Handed,
) {
    let name = site.site.name.clone();
    let mut from = start;
    let mut backoff = Backoff::default();
    let mut silence = SilenceTimeout::new(site.site.stream_timeout);
    loop {
        backoff.attempt_started();
        let error = match read(
            index,
            &site,
            bus.as_ref(),
            &mut from,
            &report,
            &mut ack,
            &mut silence,
            &mut handed,
        )
        .await
        {
            None => return,
            Some(error) => error,
        };
        if let FeedError::Site(error) = &error {
            silence.ended(error);
        }
        if !error.is_transient() {
            let _ = report.send(Input::Failed(error.into_engine(&name))).await;
            return;
        }
        let delay = backoff.failed();
        tracing::warn!(site = %name, error = %error, "reading site interrupted; the other sites go on; retrying in {delay:.1?}");
        if !back_off(delay, &report, &mut ack, &mut handed).await {
            return;
        }
    }
}

/// Waits `delay` before a reader reads its site again; false when the engine stopped
/// meanwhile. What the coordinator decides meanwhile is no longer undecided (`handed`), and
/// its acknowledgement is left for the next stream.
async fn back_off(
    delay: std::time::Duration,
    report: &mpsc::Sender<Input>,
    ack: &mut watch::Receiver<Option<Position>>,
    handed: &mut Handed,
) -> bool {
    let wake = tokio::time::sleep(delay);
    tokio::pin!(wake);
    let mut decided = false;
    let awake = loop {
        tokio::select! {
            _ = &mut wake => break true,
            _ = report.closed() => break false,
            changed = ack.changed() => {
                if changed.is_err() {
                    break false;
                }
                if let Some(position) = ack.borrow_and_update().clone() {
                    handed.decided(&position);
                    decided = true;
                }
            }
        }
    };
    if decided {
        ack.mark_changed();
    }
    awake
}

/// One stream of a site from just after `from`, which follows every item handed over; `None`
/// when the engine stopped, the stream's error otherwise. `silence`: the stream's timeout
/// (told of every item read); `handed`: the changes handed over and not yet decided.
#[allow(clippy::too_many_arguments)]
async fn read(
    index: usize,
    site: &MergeSite,
    bus: Option<&crate::bus::Bus>,
    from: &mut Option<Position>,
    report: &mpsc::Sender<Input>,
    ack: &mut watch::Receiver<Option<Position>>,
    silence: &mut SilenceTimeout,
    handed: &mut Handed,
) -> Option<FeedError> {
    let name = &site.site.name;
    let mut stream = match SiteFeed::start(site, bus, from, silence.current()).await {
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
                    silence.delivered(&item);
                    let position = match &item {
                        StreamItem::Transaction(tx) => {
                            handed.handed(tx);
                            Some(tx.position.clone())
                        }
                        StreamItem::Heartbeat(position) => Some(position.clone()),
                        StreamItem::Part(_) | StreamItem::Shape(_) => None,
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
                    handed.decided(&position);
                }
            }
        }
    };
    stream.shutdown().await;
    outcome
}

/// The engine's applier for a site: its canonical routes, conditional writes.
pub(super) async fn connect_writer(site: &MergeSite) -> Result<AnyApplier, ApplyError> {
    let options = ApplyOptions {
        conditional: true,
        ..ApplyOptions::default()
    };
    AnyApplier::connect(&site.site.connection(), site.routes.clone(), options).await
}

/// Per mapping: its canonical table and the site's value maps (a site's codes for values it
/// spells its own way), for [`outbox_transactions`].
pub(super) type Canonical = HashMap<String, (TableName, Option<SiteValues>)>;

/// [`Canonical`] of `site` in `plan`.
pub(super) fn canonical(plan: &MergePlan, site: &str) -> Canonical {
    plan.mappings
        .iter()
        .map(|m| {
            let values = m.values.get(site).cloned();
            (m.name.clone(), (m.canonical.clone(), values))
        })
        .collect()
}

/// The target transactions of outbox entries `batch` of site `name`: one per entry, each
/// recording its outbox position (see `duplex_connectors::apply`).
pub(super) fn outbox_transactions(
    name: &str,
    canonical: &Canonical,
    batch: &[(u64, Arc<OutboxWrite>)],
) -> Result<Vec<Transaction>, EngineError> {
    let outbox = outbox_name(name);
    let now = Utc::now();
    batch
        .iter()
        .map(|(seq, write)| {
            let Some((table, values)) = canonical.get(&write.mapping) else {
                return Err(EngineError::Unsupported(format!(
                    "the merge engine wrote into site {name} for mapping {}, which this configuration does not have: give every duplex process of this deployment the same configuration",
                    write.mapping
                )));
            };
            // The site's codes for values it spells its own way.
            let coded = |row: &Row| match values {
                Some(maps) => value_map::to_site(name, maps, row).map_err(|e| {
                    EngineError::Unsupported(format!("mapping {}: {e}", write.mapping))
                }),
                None => Ok(row.clone()),
            };
            Ok(Transaction {
                source: outbox.clone(),
                position: Position::Outbox(*seq),
                commit_time: now,
                origin: Origin::Duplex,
                events: vec![ChangeEvent {
                    table: table.clone(),
                    op: write.op,
                    key: coded(&write.key_row)?,
                    before: write.before.as_ref().map(coded).transpose()?,
                    after: write.after.as_ref().map(coded).transpose()?,
                }],
            })
        })
        .collect()
}

/// Writes one site's outbox entries, in order, conditionally, and counts what landed in
/// `backlog`. A site that goes away is retried with backoff, reconnecting and taking the
/// engine's claim (`claim`) again, while the other sites go on (the coordinator waits for this
/// writer only once its queue is full); a definite failure ends the engine's attempt.
pub(super) async fn writer(
    site: MergeSite,
    claim: WriterClaim,
    mut target: AnyApplier,
    mut queue: mpsc::Receiver<(u64, Arc<OutboxWrite>)>,
    canonical: Canonical,
    report: mpsc::Sender<Input>,
    backlog: Arc<Backlog>,
) {
    let name = site.site.name.clone();
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH {
            match queue.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let transactions = match outbox_transactions(&name, &canonical, &batch) {
            Ok(transactions) => transactions,
            Err(error) => {
                drop(queue);
                let _ = report.send(Input::Failed(error)).await;
                return;
            }
        };
        // Applying a batch again is harmless: entries the site already holds are skipped by
        // their outbox position (see duplex_connectors::apply).
        let mut backoff = Backoff::default();
        let failure = loop {
            backoff.attempt_started();
            let error = match target.apply(&transactions).await {
                Ok(()) => break None,
                Err(error) => {
                    backlog.apply_failed();
                    if !error.is_transient() {
                        break Some(error);
                    }
                    error
                }
            };
            let delay = backoff.failed();
            tracing::warn!(site = %name, error = %chain(&error), "writing into site interrupted; the other sites go on; retrying in {delay:.1?}");
            tokio::time::sleep(delay).await;
            // A new connection is fenced again: without the claim, an engine whose claim was
            // taken over meanwhile would go on writing with numbers the new owner reuses.
            match connect_claimed(&site, &claim).await {
                Ok(connected) => target = connected,
                Err(error) if error.is_transient() => {}
                Err(error) => {
                    drop(queue);
                    let _ = report.send(Input::Failed(apply_error(&name, error))).await;
                    return;
                }
            }
        };
        if let Some(source) = failure {
            // Closing the queue first: the coordinator must not wait on a full queue while
            // this report waits on a full input channel.
            drop(queue);
            let error = refused_write(
                &name,
                &mut target,
                &batch,
                &transactions,
                source,
                Some(&backlog),
            )
            .await;
            let _ = report.send(Input::Failed(error)).await;
            return;
        }
        let skipped = target.take_skipped();
        log_skipped(&name, &skipped);
        backlog.committed(&batch, &skipped);
    }
}

/// [`connect_writer`], fenced with the engine's `claim` on the site (taken where no one holds
/// it, refused where another deployment does).
pub(super) async fn connect_claimed(
    site: &MergeSite,
    claim: &WriterClaim,
) -> Result<AnyApplier, ApplyError> {
    let mut target = connect_writer(site).await?;
    target.claim(claim.clone(), None).await?;
    Ok(target)
}

/// Logs the conditional writes `site` skipped: the rows changed there first.
pub(super) fn log_skipped(site: &str, skipped: &[duplex_connectors::apply::SkippedWrite]) {
    for write in skipped {
        tracing::debug!(%site, key = %display_image(Some(&write.key)), "conditional write skipped: the row changed there first");
    }
}

/// The error for a batch of writes `site` refused definitely: each is written alone (the
/// ones before the refused write land, exactly once by their outbox positions, and are counted
/// in `backlog`), and the refused one is named with its mapping, row and the server's message.
pub(super) async fn refused_write(
    site: &str,
    target: &mut AnyApplier,
    batch: &[(u64, Arc<OutboxWrite>)],
    transactions: &[Transaction],
    error: ApplyError,
    backlog: Option<&Backlog>,
) -> EngineError {
    use crate::link::refusal::{fix_for, full_error, show_row};
    let (index, error) = if transactions.len() == 1 {
        (0, error)
    } else {
        let mut refused = None;
        for (index, tx) in transactions.iter().enumerate() {
            match target.apply(std::slice::from_ref(tx)).await {
                Ok(()) => {
                    let skipped = target.take_skipped();
                    if let Some(backlog) = backlog {
                        backlog.committed(&batch[index..=index], &skipped);
                    }
                }
                Err(error) => {
                    if let Some(backlog) = backlog {
                        backlog.apply_failed();
                    }
                    if error.is_transient() {
                        return apply_error(site, error);
                    }
                    refused = Some((index, error));
                    break;
                }
            }
        }
        match refused {
            Some(refused) => refused,
            // Each write landed alone: nothing is refused; the engine starts again.
            None => return EngineError::WriterStopped(site.to_owned()),
        }
    };
    let write = &batch[index].1;
    let event = &transactions[index].events[0];
    EngineError::Refused(Box::new(super::RefusedWrite {
        site: site.to_owned(),
        mapping: write.mapping.clone(),
        op: write.op,
        key: show_row(event.key.iter()),
        row: event
            .after
            .as_ref()
            .or(event.before.as_ref())
            .map_or_else(String::new, |row| show_row(row.iter())),
        error: full_error(&error),
        fix: fix_for(&error),
    }))
}

/// Why the writer of `site` stopped: its report, if it is queued, else a transient stop.
pub(super) fn writer_failure(inputs: &mut mpsc::Receiver<Input>, site: &str) -> EngineError {
    while let Ok(input) = inputs.try_recv() {
        if let Input::Failed(error) = input {
            return error;
        }
    }
    EngineError::WriterStopped(site.to_owned())
}

/// A failure writing into `site`.
pub(super) fn apply_error(site: &str, source: ApplyError) -> EngineError {
    EngineError::Apply {
        site: site.to_owned(),
        source: Box::new(source),
    }
}
