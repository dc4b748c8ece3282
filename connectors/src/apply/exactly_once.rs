//! The exactly-once protocol of [`crate::apply`], written once: [`ExactlyOnce`] runs it over a
//! [`TargetSession`], the few operations it needs from one connection to a target database.
//! Each kind implements only the session (PostgreSQL in `crate::postgres`, MySQL/MariaDB in
//! `crate::mysql`); what is decided here holds for both.
//!
//! # The steps
//!
//! - A batch ([`Applier::apply`] with no large transaction open): open a target transaction,
//!   read the recorded position of every source of the batch under a row lock, drop the
//!   transactions the target already holds ([`fresh`]), and either roll back (nothing left)
//!   or write the rest, record each source's new position (UPDATE where the locked read found a
//!   row, INSERT where it found none) and commit.
//! - The first part of a large transaction ([`Applier::apply_part`]): open a target
//!   transaction, read the source's recorded position under a row lock and decide once whether
//!   the target holds the transaction ([`open_parts`]); write the part's events unless it does.
//! - Further parts ([`check_next_part`]) write their events into the open transaction.
//! - The final transaction ([`final_of`]) writes its events, records its position and commits,
//!   or rolls everything back when the target held the transaction.
//! - After every call that failed: forget the large transaction and let the session leave no
//!   target transaction open ([`TargetSession::abandon`]). A call dropped halfway leaves
//!   [`PartState::Interrupted`] and an open target transaction: the next call rolls it back
//!   ([`TargetSession::rollback_open`]) and a continuation is refused ([`interrupted`]).
//!
//! # Skipped writes
//!
//! A conditional session reports the writes it skipped; they are kept aside for the open
//! target transaction and handed to `take_skipped` only once that transaction committed. Every
//! rollback, and every failed call, forgets them: a rolled-back apply reports none.

use std::future::Future;

use crate::bulk::{BulkRows, BulkShape};
use crate::{ChangeEvent, Op, Position, Transaction, TransactionPart};

use super::{Applier, ApplyError, SkippedWrite, WriterClaim};

/// One connection to a target database, as the exactly-once protocol drives it.
///
/// Contract:
/// - `begin` opens a target transaction, reconnecting first when the connection was lost. The
///   protocol calls it only after `rollback_open`, so no transaction of the session is open.
/// - `commit` and `rollback` end the open transaction; an error from either leaves it to
///   `abandon`.
/// - `rollback_open` rolls back a target transaction left open by an error or by a call that
///   was dropped halfway, and does nothing when none is open. It cannot fail: a session whose
///   rollback fails gives up its transaction state (and may drop the connection, which rolls
///   back on the server).
/// - `abandon(error)` runs after every failed call and leaves no target transaction open: by
///   `rollback_open`, or by dropping the connection when `error` says it is unusable.
/// - `locked_position(site)` reads, inside the open transaction, the recorded position of
///   `site` in `duplex.positions` under a row lock held until the transaction ends
///   (`SELECT ... FOR UPDATE`); `None` when the source has no row yet.
/// - `record(site, position, update)` writes the position of `site` in the open transaction:
///   an UPDATE of its row when `update` (the locked read found one), else an INSERT, never an
///   upsert, so of two appliers racing on a new source the second fails on the primary key.
/// - `write_events(events)` writes the events into the open transaction, in order: strictly
///   (an insert over an existing row, or an update or delete that finds none, is an error),
///   or, for a conditional session, each only if its condition holds. It returns the writes a
///   conditional session skipped, in order (none otherwise).
/// - `load_events(events)` does what `write_events` does for a transaction of inserts only (a
///   backfill range), by the kind's bulk path where it has one.
/// - `position(site)` reads the committed position of `site` (`None` before the first).
/// - `ensure_claims()` creates `duplex.claims` where it is missing (no transaction open);
///   `locked_claim(scope)` reads the deployment owning `scope` under a row lock held until the
///   open transaction ends; `record_claim(scope, deployment, update)` writes it in the open
///   transaction (UPDATE when `update`, else INSERT). See [`WriterClaim`].
pub trait TargetSession: Send {
    /// Opens a target transaction (none is open).
    fn begin(&mut self) -> impl Future<Output = Result<(), ApplyError>> + Send;

    /// Commits the open target transaction.
    fn commit(&mut self) -> impl Future<Output = Result<(), ApplyError>> + Send;

    /// Rolls back the open target transaction.
    fn rollback(&mut self) -> impl Future<Output = Result<(), ApplyError>> + Send;

    /// Rolls back a target transaction left open, if there is one.
    fn rollback_open(&mut self) -> impl Future<Output = ()> + Send;

    /// Leaves no target transaction open after a call that failed with `error`.
    fn abandon(&mut self, error: &ApplyError) -> impl Future<Output = ()> + Send;

    /// The recorded position of `site`, read under a row lock in the open transaction.
    fn locked_position(
        &mut self,
        site: &str,
    ) -> impl Future<Output = Result<Option<Position>, ApplyError>> + Send;

    /// Records `position` of `site` in the open transaction: UPDATE when `update`, else INSERT.
    fn record(
        &mut self,
        site: &str,
        position: &Position,
        update: bool,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;

    /// Writes `events` into the open transaction; returns the conditional writes skipped.
    fn write_events(
        &mut self,
        events: &[&ChangeEvent],
    ) -> impl Future<Output = Result<Vec<SkippedWrite>, ApplyError>> + Send;

    /// Writes a transaction of inserts only, like `write_events`, by the kind's bulk path.
    fn load_events(
        &mut self,
        events: &[&ChangeEvent],
    ) -> impl Future<Output = Result<Vec<SkippedWrite>, ApplyError>> + Send;

    /// Whether the rows of `shape` can be written unread by [`TargetSession::load_bulk`] (see
    /// [`crate::bulk`]). Kinds without a bulk format keep the default: no.
    fn takes_bulk(
        &mut self,
        shape: &BulkShape,
    ) -> impl Future<Output = Result<bool, ApplyError>> + Send {
        let _ = shape;
        async { Ok(false) }
    }

    /// Writes `rows`, whose shape `takes_bulk` accepted, into the open transaction; fails
    /// unless the target wrote exactly `rows.rows` rows.
    fn load_bulk(
        &mut self,
        rows: &BulkRows,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send {
        let table = rows.shape.table.clone();
        async move {
            Err(ApplyError::Malformed {
                table,
                op: Op::Insert,
                reason: "this kind of target takes no bulk rows".into(),
            })
        }
    }

    /// The committed position of `site`.
    fn position(
        &mut self,
        site: &str,
    ) -> impl Future<Output = Result<Option<Position>, ApplyError>> + Send;

    /// Creates `duplex.claims` unless it exists.
    fn ensure_claims(&mut self) -> impl Future<Output = Result<(), ApplyError>> + Send;

    /// The deployment owning `scope`, read under a row lock in the open transaction.
    fn locked_claim(
        &mut self,
        scope: &str,
    ) -> impl Future<Output = Result<Option<String>, ApplyError>> + Send;

    /// Records `deployment` as the owner of `scope` in the open transaction.
    fn record_claim(
        &mut self,
        scope: &str,
        deployment: &str,
        update: bool,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;
}

/// How the events of a batch reach the target.
#[derive(Debug, Clone, Copy)]
enum Path<'a> {
    /// [`TargetSession::write_events`].
    Statements,
    /// [`TargetSession::load_events`].
    Load,
    /// [`TargetSession::load_bulk`]: these rows instead of the batch's events (it has none).
    Bulk(&'a BulkRows),
}

/// An applier for any kind of target: the exactly-once protocol (see the module docs) over a
/// [`TargetSession`].
pub struct ExactlyOnce<S> {
    session: S,
    /// Where the applier is in a large transaction.
    parts: PartState,
    /// Conditional writes skipped by committed target transactions, not yet taken.
    skipped: Vec<SkippedWrite>,
    /// Conditional writes skipped in the open target transaction.
    skipped_open: Vec<SkippedWrite>,
    /// The claim every target transaction checks before it writes, once taken.
    fence: Option<WriterClaim>,
}

impl<S: TargetSession> ExactlyOnce<S> {
    /// An applier writing through `session`, with no target transaction open.
    pub(crate) fn new(session: S) -> ExactlyOnce<S> {
        ExactlyOnce {
            session,
            parts: PartState::Idle,
            skipped: Vec::new(),
            skipped_open: Vec::new(),
            fence: None,
        }
    }

    /// Takes `claim` on the target in one target transaction: records it where `duplex.claims`
    /// has no owner for its scope, keeps it where it is this deployment's, moves it where it
    /// is `take_over_from`'s, and refuses it ([`ApplyError::Claimed`]) where another
    /// deployment owns it. From then on every target transaction of this applier checks, under
    /// the claim's row lock, that the claim is still this deployment's before it writes (see
    /// [`WriterClaim`]). Returns the previous owner when the claim was moved.
    pub async fn claim(
        &mut self,
        claim: WriterClaim,
        take_over_from: Option<&str>,
    ) -> Result<Option<String>, ApplyError> {
        self.take_or_fence(claim, take_over_from, true).await
    }

    /// Fences every later target transaction with `claim` like [`ExactlyOnce::claim`], but
    /// only where the claim is already that deployment's: never recorded where it has no owner
    /// ([`ApplyError::Unclaimed`]), never moved. For a writer applying the writes another
    /// process numbered (the merge engine's writes on the bus), which must not make a claim of
    /// its own.
    pub async fn fence(&mut self, claim: WriterClaim) -> Result<(), ApplyError> {
        self.take_or_fence(claim, None, false).await.map(|_| ())
    }

    async fn take_or_fence(
        &mut self,
        claim: WriterClaim,
        take_over_from: Option<&str>,
        record: bool,
    ) -> Result<Option<String>, ApplyError> {
        let result = self.take_claim(&claim, take_over_from, record).await;
        let result = self.end_call(result).await;
        if result.is_ok() {
            self.fence = Some(claim);
        }
        result
    }

    async fn take_claim(
        &mut self,
        claim: &WriterClaim,
        take_over_from: Option<&str>,
        record: bool,
    ) -> Result<Option<String>, ApplyError> {
        self.parts = PartState::Idle;
        self.session.rollback_open().await;
        self.session.ensure_claims().await?;
        self.begin().await?;
        let owner = self.session.locked_claim(&claim.scope).await?;
        let moved = match claim_step(owner, &claim.deployment, take_over_from) {
            ClaimStep::Record if !record => {
                return Err(ApplyError::Unclaimed {
                    scope: claim.scope.clone(),
                    ours: claim.deployment.clone(),
                });
            }
            ClaimStep::Record => {
                self.session
                    .record_claim(&claim.scope, &claim.deployment, false)
                    .await?;
                None
            }
            ClaimStep::Held => None,
            ClaimStep::Move(owner) => {
                self.session
                    .record_claim(&claim.scope, &claim.deployment, true)
                    .await?;
                Some(owner)
            }
            ClaimStep::Refuse(owner) => {
                return Err(ApplyError::Claimed {
                    scope: claim.scope.clone(),
                    owner,
                    ours: claim.deployment.clone(),
                });
            }
        };
        self.commit().await?;
        Ok(moved)
    }

    /// Inside the open target transaction: refuses to go on when the claim this applier took
    /// has moved to another deployment (the row lock keeps it from moving until this
    /// transaction ends).
    async fn check_fence(&mut self) -> Result<(), ApplyError> {
        let Some(claim) = &self.fence else {
            return Ok(());
        };
        let owner = self.session.locked_claim(&claim.scope).await?;
        if owner.as_deref() == Some(claim.deployment.as_str()) {
            return Ok(());
        }
        Err(ApplyError::ClaimTaken {
            scope: claim.scope.clone(),
            owner: owner.unwrap_or_default(),
            ours: claim.deployment.clone(),
        })
    }

    /// The session the applier writes through.
    pub(crate) fn session(&self) -> &S {
        &self.session
    }

    /// The writes a conditional applier skipped in the applies committed since the last call,
    /// in write order; a failed (rolled-back) apply leaves none.
    pub fn take_skipped(&mut self) -> Vec<SkippedWrite> {
        std::mem::take(&mut self.skipped)
    }

    /// Writes a transaction of inserts (a backfill range) exactly like [`Applier::apply`], by
    /// the kind's bulk path where it has one (PostgreSQL: binary COPY).
    pub async fn load(&mut self, txn: &Transaction) -> Result<(), ApplyError> {
        let batch = std::slice::from_ref(txn);
        if !matches!(self.parts, PartState::Idle) {
            return self.apply(batch).await;
        }
        let result = self.apply_batch(batch, Path::Load).await;
        self.end_call(result).await
    }

    /// Whether this target writes rows of `shape` unread (see [`crate::bulk`]).
    pub async fn takes_bulk(&mut self, shape: &BulkShape) -> Result<bool, ApplyError> {
        self.session.takes_bulk(shape).await
    }

    /// Writes `rows` (a backfill range in a bulk format `takes_bulk` accepted) exactly like
    /// [`ExactlyOnce::load`] writes `marker` (a transaction with no events, naming the
    /// range's source and position) with those rows: one target transaction, skipped when the
    /// target already holds the position.
    pub async fn load_bulk(
        &mut self,
        marker: &Transaction,
        rows: &BulkRows,
    ) -> Result<(), ApplyError> {
        if !matches!(self.parts, PartState::Idle) {
            return Err(interrupted());
        }
        let result = self
            .apply_batch(std::slice::from_ref(marker), Path::Bulk(rows))
            .await;
        self.end_call(result).await
    }

    /// Which change of `txn` the target refuses, and why: writes its changes one at a time
    /// into a target transaction that is always rolled back, so nothing is applied, and the
    /// first write that fails definitely names the change (its index in `txn.events`). `None`
    /// when each change is accepted in turn (the refusal came at the commit: a deferred
    /// constraint). A transient failure is returned as the error; so is any call while a large
    /// transaction is open.
    pub async fn locate_refusal(
        &mut self,
        txn: &Transaction,
    ) -> Result<Option<(usize, ApplyError)>, ApplyError> {
        if !matches!(self.parts, PartState::Idle) {
            return Err(interrupted());
        }
        let result = self.locate(txn).await;
        let result = self.end_call(result).await;
        if let Ok(Some((_, error))) = &result {
            self.session.abandon(error).await;
        }
        result
    }

    async fn locate(
        &mut self,
        txn: &Transaction,
    ) -> Result<Option<(usize, ApplyError)>, ApplyError> {
        self.begin().await?;
        for (index, event) in txn.events.iter().enumerate() {
            match self.write(&[event], Path::Statements).await {
                Ok(()) => {}
                Err(error) if !error.is_transient() => return Ok(Some((index, error))),
                Err(error) => return Err(error),
            }
        }
        self.rollback().await?;
        Ok(None)
    }

    /// After every call: on error the target transaction is rolled back (or its connection
    /// dropped), its skipped writes forgotten, and no large transaction is open any more.
    async fn end_call<T>(&mut self, result: Result<T, ApplyError>) -> Result<T, ApplyError> {
        if let Err(error) = &result {
            self.parts = PartState::Idle;
            self.skipped_open.clear();
            self.session.abandon(error).await;
        }
        result
    }

    /// Opens a target transaction, rolling back one a dropped call left open.
    async fn begin(&mut self) -> Result<(), ApplyError> {
        self.skipped_open.clear();
        self.session.rollback_open().await;
        self.session.begin().await
    }

    /// Commits the open target transaction; its skipped writes become reportable.
    async fn commit(&mut self) -> Result<(), ApplyError> {
        self.session.commit().await?;
        self.skipped.append(&mut self.skipped_open);
        Ok(())
    }

    /// Rolls the open target transaction back; its skipped writes are forgotten.
    async fn rollback(&mut self) -> Result<(), ApplyError> {
        self.session.rollback().await?;
        self.skipped_open.clear();
        Ok(())
    }

    /// Writes events into the open target transaction, keeping the skipped ones aside.
    async fn write(&mut self, events: &[&ChangeEvent], path: Path<'_>) -> Result<(), ApplyError> {
        let skipped = match path {
            Path::Statements => self.session.write_events(events).await?,
            Path::Load => self.session.load_events(events).await?,
            Path::Bulk(rows) => {
                self.session.load_bulk(rows).await?;
                Vec::new()
            }
        };
        self.skipped_open.extend(skipped);
        Ok(())
    }

    /// A batch of whole transactions in one target transaction.
    async fn apply_batch(
        &mut self,
        batch: &[Transaction],
        path: Path<'_>,
    ) -> Result<(), ApplyError> {
        self.parts = PartState::Idle;
        self.begin().await?;
        self.check_fence().await?;
        let mut recorded = Vec::new();
        for site in sources(batch) {
            recorded.push((site, self.session.locked_position(site).await?));
        }
        let fresh = fresh(batch, &recorded)?;
        if fresh.transactions.is_empty() {
            return self.rollback().await;
        }
        let events: Vec<&ChangeEvent> = fresh
            .transactions
            .iter()
            .flat_map(|t| t.events.iter())
            .collect();
        self.write(&events, path).await?;
        for (site, position) in fresh.advanced {
            self.session
                .record(site, position, recorded_before(&recorded, site))
                .await?;
        }
        self.commit().await
    }

    /// The first part of a large transaction: opens the target transaction and decides.
    async fn first_part(&mut self, part: &TransactionPart) -> Result<(), ApplyError> {
        self.begin().await?;
        self.check_fence().await?;
        let recorded = self.session.locked_position(&part.source).await?;
        let open = open_parts(part, recorded)?;
        self.write_part(open, part).await
    }

    /// Writes a part into the open transaction (unless the target holds the transaction).
    async fn write_part(
        &mut self,
        open: OpenParts,
        part: &TransactionPart,
    ) -> Result<(), ApplyError> {
        if !open.held {
            let events: Vec<&ChangeEvent> = part.events.iter().collect();
            self.write(&events, Path::Statements).await?;
        }
        self.parts = PartState::Open(open);
        Ok(())
    }

    /// The final transaction of a large one: writes its events, records its position and
    /// commits (or rolls everything back when the target already held it).
    async fn finish_parts(
        &mut self,
        open: &OpenParts,
        batch: &[Transaction],
    ) -> Result<(), ApplyError> {
        let last = final_of(open, batch)?;
        if open.held {
            self.rollback().await?;
        } else {
            let events: Vec<&ChangeEvent> = last.events.iter().collect();
            self.write(&events, Path::Statements).await?;
            self.session
                .record(&last.source, &last.position, open.recorded)
                .await?;
            self.commit().await?;
        }
        self.parts = PartState::Idle;
        Ok(())
    }
}

impl<S: TargetSession> Applier for ExactlyOnce<S> {
    async fn apply(&mut self, batch: &[Transaction]) -> Result<(), ApplyError> {
        if batch.is_empty() && matches!(self.parts, PartState::Idle) {
            return Ok(());
        }
        let result = match std::mem::replace(&mut self.parts, PartState::Interrupted) {
            PartState::Idle => self.apply_batch(batch, Path::Statements).await,
            PartState::Open(open) => self.finish_parts(&open, batch).await,
            PartState::Interrupted => Err(interrupted()),
        };
        self.end_call(result).await
    }

    async fn apply_part(&mut self, part: &TransactionPart) -> Result<(), ApplyError> {
        let result = match std::mem::replace(&mut self.parts, PartState::Interrupted) {
            PartState::Idle => self.first_part(part).await,
            PartState::Open(open) => match check_next_part(&open, part) {
                Ok(()) => self.write_part(open, part).await,
                Err(e) => Err(e),
            },
            PartState::Interrupted => Err(interrupted()),
        };
        self.end_call(result).await
    }

    async fn position(&mut self, source: &str) -> Result<Option<Position>, ApplyError> {
        self.session.position(source).await
    }
}

/// What taking a claim does, given the owner `duplex.claims` records for its scope.
#[derive(Debug, PartialEq, Eq)]
enum ClaimStep {
    /// No owner: record ours.
    Record,
    /// Ours already.
    Held,
    /// The deployment taken over from owns it: move it to ours.
    Move(String),
    /// Another deployment owns it: refuse.
    Refuse(String),
}

/// Decides [`ClaimStep`]: `owner` as recorded, `ours` the claiming deployment,
/// `take_over_from` the deployment it may take the claim from.
fn claim_step(owner: Option<String>, ours: &str, take_over_from: Option<&str>) -> ClaimStep {
    match owner {
        None => ClaimStep::Record,
        Some(owner) if owner == ours => ClaimStep::Held,
        Some(owner) if Some(owner.as_str()) == take_over_from => ClaimStep::Move(owner),
        Some(owner) => ClaimStep::Refuse(owner),
    }
}

/// A transaction to write, after the position check: those at or before the recorded
/// position of their source are dropped.
struct Fresh<'a> {
    /// Transactions to write, in batch order.
    transactions: Vec<&'a Transaction>,
    /// Per source, the position to record (the last transaction written).
    advanced: Vec<(&'a str, &'a Position)>,
}

/// Drops the transactions of `batch` that the target already holds, given the recorded
/// position of each source of the batch (a source missing from `recorded` has none yet).
fn fresh<'a>(
    batch: &'a [Transaction],
    recorded: &[(&str, Option<Position>)],
) -> Result<Fresh<'a>, ApplyError> {
    // Per source: the position the target holds, then the last one written by this batch.
    let mut last: Vec<(&'a str, Option<&Position>)> = Vec::new();
    let mut advanced: Vec<(&'a str, &'a Position)> = Vec::new();
    let mut transactions = Vec::new();
    for txn in batch {
        let site = txn.source.as_str();
        let held = match last.iter().position(|(s, _)| *s == site) {
            Some(i) => i,
            None => {
                let position = recorded
                    .iter()
                    .find(|(s, _)| *s == site)
                    .and_then(|(_, p)| p.as_ref());
                last.push((site, position));
                last.len() - 1
            }
        };
        let newer = match last[held].1 {
            None => true,
            Some(held) => {
                txn.position
                    .compare(held)
                    .map_err(|source| ApplyError::Position {
                        site: site.to_owned(),
                        source,
                    })?
                    == std::cmp::Ordering::Greater
            }
        };
        if newer {
            last[held].1 = Some(&txn.position);
            match advanced.iter_mut().find(|(s, _)| *s == site) {
                Some(entry) => entry.1 = &txn.position,
                None => advanced.push((site, &txn.position)),
            }
            transactions.push(txn);
        } else {
            tracing::debug!(
                source = %txn.source,
                position = %txn.position,
                "skipping a transaction the target already holds"
            );
        }
    }
    Ok(Fresh {
        transactions,
        advanced,
    })
}

/// The target transaction holding the parts of one large source transaction, between the
/// first part and the final transaction.
#[derive(Debug)]
struct OpenParts {
    /// Source site of the transaction.
    source: String,
    /// Its start position (the same in every part).
    start: Position,
    /// Whether the target already holds it: nothing is written and the end is a rollback.
    held: bool,
    /// Whether `duplex.positions` had a row for the source (UPDATE it, else INSERT).
    recorded: bool,
}

/// Where an applier is in a large transaction.
#[derive(Debug, Default)]
enum PartState {
    /// No large transaction in progress.
    #[default]
    Idle,
    /// Parts were written into the open target transaction.
    Open(OpenParts),
    /// A call was dropped while writing a piece: the open target transaction lacks events.
    Interrupted,
}

/// The decision at the first part: whether the target already holds the transaction, given
/// the recorded position of its source (see the module docs for why `start < recorded` is
/// exactly "already held").
fn open_parts(part: &TransactionPart, recorded: Option<Position>) -> Result<OpenParts, ApplyError> {
    let held = match &recorded {
        None => false,
        Some(recorded) => {
            part.start
                .compare(recorded)
                .map_err(|source| ApplyError::Position {
                    site: part.source.clone(),
                    source,
                })?
                == std::cmp::Ordering::Less
        }
    };
    if held {
        tracing::debug!(source = %part.source, start = %part.start, "skipping a large transaction the target already holds");
    }
    Ok(OpenParts {
        source: part.source.clone(),
        start: part.start.clone(),
        held,
        recorded: recorded.is_some(),
    })
}

/// Checks that `part` continues the open large transaction.
fn check_next_part(open: &OpenParts, part: &TransactionPart) -> Result<(), ApplyError> {
    if open.source == part.source && open.start == part.start {
        return Ok(());
    }
    Err(ApplyError::PartSequence(format!(
        "a part of the transaction of {} starting at {} while the one of {} starting at {} is open",
        part.source, part.start, open.source, open.start
    )))
}

/// The final transaction that completes the open large transaction: `batch` must be exactly
/// it, from the same source and ending after the start.
fn final_of<'a>(open: &OpenParts, batch: &'a [Transaction]) -> Result<&'a Transaction, ApplyError> {
    let [last] = batch else {
        return Err(ApplyError::PartSequence(format!(
            "a batch of {} transactions while the transaction of {} starting at {} is open",
            batch.len(),
            open.source,
            open.start
        )));
    };
    let after_start = last.source == open.source
        && last
            .position
            .compare(&open.start)
            .is_ok_and(|o| o == std::cmp::Ordering::Greater);
    if !after_start {
        return Err(ApplyError::PartSequence(format!(
            "transaction of {} at {} cannot end the one of {} starting at {}",
            last.source, last.position, open.source, open.start
        )));
    }
    Ok(last)
}

/// The error for a piece that continues a transaction whose earlier call was interrupted.
fn interrupted() -> ApplyError {
    ApplyError::PartSequence(
        "an earlier piece of this transaction was interrupted: deliver it again from its first part"
            .into(),
    )
}

/// Whether `site` had a recorded position when the batch started.
fn recorded_before(recorded: &[(&str, Option<Position>)], site: &str) -> bool {
    recorded.iter().any(|(s, p)| *s == site && p.is_some())
}

/// The distinct source site names of a batch, in first-seen order.
fn sources(batch: &[Transaction]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for txn in batch {
        if !out.contains(&txn.source.as_str()) {
            out.push(&txn.source);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::Origin;
    use crate::postgres::Lsn;

    fn txn(site: &str, lsn: u64) -> Transaction {
        Transaction {
            source: site.into(),
            position: Position::Postgres(Lsn(lsn)),
            commit_time: Utc::now(),
            origin: Origin::Local,
            events: Vec::new(),
        }
    }

    #[test]
    fn a_claim_is_recorded_kept_moved_only_from_the_named_deployment_or_refused() {
        assert_eq!(claim_step(None, "b", None), ClaimStep::Record);
        assert_eq!(claim_step(None, "b", Some("a")), ClaimStep::Record);
        assert_eq!(claim_step(Some("b".into()), "b", None), ClaimStep::Held);
        assert_eq!(
            claim_step(Some("b".into()), "b", Some("a")),
            ClaimStep::Held
        );
        assert_eq!(
            claim_step(Some("a".into()), "b", Some("a")),
            ClaimStep::Move("a".into())
        );
        assert_eq!(
            claim_step(Some("a".into()), "b", None),
            ClaimStep::Refuse("a".into())
        );
        assert_eq!(
            claim_step(Some("a".into()), "b", Some("c")),
            ClaimStep::Refuse("a".into())
        );
    }

    #[test]
    fn transactions_at_or_before_the_recorded_position_are_skipped() {
        let batch = [
            txn("a", 5),
            txn("b", 1),
            txn("a", 10),
            txn("a", 10),
            txn("a", 12),
        ];
        let recorded = [("a", Some(Position::Postgres(Lsn(5)))), ("b", None)];
        let fresh = fresh(&batch, &recorded).unwrap();
        let kept: Vec<_> = fresh
            .transactions
            .iter()
            .map(|t| (t.source.as_str(), t.position.clone()))
            .collect();
        assert_eq!(
            kept,
            [
                ("b", Position::Postgres(Lsn(1))),
                ("a", Position::Postgres(Lsn(10))),
                ("a", Position::Postgres(Lsn(12))),
            ]
        );
        assert_eq!(
            fresh.advanced,
            [
                ("b", &Position::Postgres(Lsn(1))),
                ("a", &Position::Postgres(Lsn(12)))
            ]
        );
        // A source without a recorded position is applied, never dropped.
        let fresh = super::fresh(&batch, &[]).unwrap();
        assert_eq!(fresh.transactions.len(), 4);
    }

    fn part(site: &str, start: u64) -> TransactionPart {
        TransactionPart {
            source: site.into(),
            start: Position::Postgres(Lsn(start)),
            origin: Origin::Local,
            events: Vec::new(),
        }
    }

    #[test]
    fn a_large_transaction_is_held_iff_it_starts_before_the_recorded_position() {
        let recorded = || Some(Position::Postgres(Lsn(100)));
        // Replayed: it started (commit record at 90) before the recorded end it produced.
        assert!(open_parts(&part("a", 90), recorded()).unwrap().held);
        // The next transaction starts at or after the previous one's end.
        assert!(!open_parts(&part("a", 100), recorded()).unwrap().held);
        assert!(!open_parts(&part("a", 150), recorded()).unwrap().held);
        let first = open_parts(&part("a", 5), None).unwrap();
        assert!(!first.held && !first.recorded);
        let mysql = Some(Position::Mysql(crate::mysql::BinlogPosition::new(
            "bin.000001",
            4,
        )));
        assert!(matches!(
            open_parts(&part("a", 1), mysql),
            Err(ApplyError::Position { .. })
        ));
    }

    #[test]
    fn the_final_transaction_must_end_the_open_one() {
        let open = open_parts(&part("a", 100), None).unwrap();
        assert!(check_next_part(&open, &part("a", 100)).is_ok());
        assert!(check_next_part(&open, &part("a", 101)).is_err());
        assert!(check_next_part(&open, &part("b", 100)).is_err());
        assert!(final_of(&open, &[txn("a", 120)]).is_ok());
        assert!(final_of(&open, &[txn("a", 100)]).is_err());
        assert!(final_of(&open, &[txn("b", 120)]).is_err());
        assert!(final_of(&open, &[txn("a", 120), txn("a", 130)]).is_err());
        assert!(final_of(&open, &[]).is_err());
    }
}
