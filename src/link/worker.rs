//! A target's writer: the pieces the reader hands each target (filtered to the tables routed
//! there, within the target's event budget), and the worker that batches them into target
//! transactions, writes large transactions in parts, and on a definite refusal applies a
//! batch's transactions one at a time (see [`super::refusal`]).

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::sync::Arc;

use duplex_connectors::apply::Applier;
use duplex_connectors::{
    AnyApplier, ChangeEvent, Position, TableName, Transaction, TransactionPart,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use super::{BATCH_EVENTS, BATCH_TRANSACTIONS, Committed, LinkError, QUEUE_EVENTS, refusal};
use crate::report::chain;
use crate::telemetry::{Tally, TargetTelemetry};

/// What the reader hands a target worker.
#[derive(Debug)]
pub(super) enum Piece {
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
pub(super) type Queued = (Piece, OwnedSemaphorePermit);

/// A target worker's queue, its event budget and the source tables routed to it.
pub(super) struct Outlet {
    pub(super) queue: mpsc::Sender<Queued>,
    pub(super) budget: Arc<Semaphore>,
    pub(super) tables: BTreeSet<TableName>,
}

/// Hands a transaction or part to every target, each with only the changes of tables routed
/// there (a transaction possibly with none: the target still records that it is past this
/// position; a part with none is not sent).
pub(super) async fn dispatch(
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
pub(super) async fn hand_over(outlet: &Outlet, piece: Piece) -> bool {
    if matches!(&piece, Piece::Part(part) if part.events.is_empty()) {
        return true;
    }
    let permits = piece.events().len().clamp(1, QUEUE_EVENTS) as u32;
    let Ok(permit) = outlet.budget.clone().acquire_many_owned(permits).await else {
        return false;
    };
    outlet.queue.send((piece, permit)).await.is_ok()
}

/// One target's writer: batches queued transactions and applies them; writes the parts of a
/// large transaction and then its final transaction alone.
pub(super) async fn worker(
    index: usize,
    mut target: AnyApplier,
    mut refusals: refusal::Refusals,
    mut queue: mpsc::Receiver<Queued>,
    committed: mpsc::UnboundedSender<Committed>,
    stop: watch::Receiver<bool>,
    mut counters: Counting,
) -> Result<(), LinkError> {
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
                write_part(&mut target, &refusals, &part).await?;
                let mut tally = Tally::default();
                tally.add(&part.events);
                drop((part, permit));
                let Some(sequence) =
                    finish_large(&mut target, &mut queue, &mut refusals, &mut counters, tally)
                        .await?
                else {
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
        if refusals.any_parked() {
            for tx in &mut batch {
                refusals.divert(tx).await?;
            }
        }
        if let Err(error) = target.apply(&refusals.marked(&batch)).await {
            counters.telemetry.apply_failed();
            if error.is_transient() {
                return Err(refusals.apply_error(error));
            }
            // A definite failure: apply the batch's transactions one by one so that every
            // transaction before the offending one lands and the link stops exactly there
            // (or, for a dead-letter mapping, sets the refused change aside and goes on).
            let count = batch.len() as u64;
            for (offset, tx) in batch.drain(..).enumerate() {
                let written = refusals.divert_owned(tx, &mut target).await?;
                counters.committed(std::slice::from_ref(&written));
                let seq = last + 1 + offset as u64 - count;
                if committed.send((index, seq)).is_err() {
                    return Ok(());
                }
            }
            if count > 1 {
                tracing::debug!(error = %chain(&error), "a batch failed; its transactions were applied one at a time");
            }
            continue;
        }
        refusals.landed();
        counters.committed(&batch);
        held.clear();
        if committed.send((index, last)).is_err() {
            return Ok(());
        }
    }
}

/// Writes a part of a large transaction into the open target transaction (unless it changes a
/// row with dead letters, which stops the link).
async fn write_part(
    target: &mut AnyApplier,
    refusals: &refusal::Refusals,
    part: &TransactionPart,
) -> Result<(), LinkError> {
    if let Some(error) = refusals.check_part(&part.events) {
        return Err(error);
    }
    target
        .apply_part(part)
        .await
        .map_err(|e| refusals.refused_large(e, &part.start))
}

/// After the first part of a large transaction: writes the following parts and applies the
/// final transaction alone, which commits them all. Returns the final transaction's sequence
/// number, or `None` when the queue closed first (the reader stopped; the open target
/// transaction is rolled back when the target is dropped).
async fn finish_large(
    target: &mut AnyApplier,
    queue: &mut mpsc::Receiver<Queued>,
    refusals: &mut refusal::Refusals,
    counters: &mut Counting,
    mut tally: Tally,
) -> Result<Option<u64>, LinkError> {
    while let Some((piece, permit)) = queue.recv().await {
        match piece {
            Piece::Part(part) => {
                write_part(target, refusals, &part).await?;
                tally.add(&part.events);
            }
            Piece::Transaction(seq, tx) => {
                if let Some(error) = refusals.check_part(&tx.events) {
                    return Err(error);
                }
                target
                    .apply(std::slice::from_ref(&tx))
                    .await
                    .map_err(|e| refusals.refused_large(e, &tx.position))?;
                if counters.fresh(&tx) {
                    tally.add(&tx.events);
                    counters.telemetry.committed_tally(1, &tally);
                    counters.telemetry.committed_at(&tx.position);
                }
                return Ok(Some(seq));
            }
        }
        drop(permit);
    }
    Ok(None)
}

/// A worker's telemetry, and the position its target held when the attempt started.
pub(super) struct Counting {
    pub(super) telemetry: Arc<TargetTelemetry>,
    pub(super) held: Option<Position>,
}

impl Counting {
    /// Whether `tx` is beyond what the target held at the start (the applier skips the rest).
    /// Positions that cannot be compared count it (the applier then decided, not this).
    fn fresh(&mut self, tx: &Transaction) -> bool {
        let fresh = self.held.as_ref().is_none_or(|held| {
            !matches!(
                tx.position.compare(held),
                Ok(Ordering::Less | Ordering::Equal)
            )
        });
        if fresh {
            // Positions only grow: every later transaction is beyond it too.
            self.held = None;
        }
        fresh
    }

    /// The target committed `batch`.
    fn committed(&mut self, batch: &[Transaction]) {
        let fresh: Vec<&Transaction> = batch.iter().filter(|tx| self.fresh(tx)).collect();
        self.telemetry
            .committed(fresh.len() as u64, fresh.iter().flat_map(|tx| &tx.events));
        if let Some(last) = fresh.last() {
            self.telemetry.committed_at(&last.position);
        }
    }
}
