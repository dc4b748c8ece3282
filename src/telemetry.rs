//! What a running `duplex run` knows about itself, in one place: each link's state and, per
//! target, the rows and transactions it committed and how far behind it is.
//!
//! Links and the merge engine report into it (see `crate::link`, and `crate::engine` for the
//! engine's rows, lag and queue per site); `duplex status` (through the control socket,
//! `crate::engine::control`) and the Prometheus endpoint (`crate::metrics`) both read a
//! [`Snapshot`] of it, so the two never disagree.
//!
//! # Cost on the hot path
//!
//! A target worker counts the rows of a batch it committed in locals and adds them to
//! atomics once per batch, and stores the batch's last position under an uncontended lock;
//! the reader stores the commit time of the oldest transaction some target has not committed
//! in one atomic per target when it changes, and its last position (a transaction's or a
//! heartbeat's) under an uncontended lock. Other locks are taken when a link starts, changes
//! state (retrying, stopped), its log head is read or a snapshot is taken, never per row.
//!
//! # Rates
//!
//! Rows and transactions per second over the last minute come from samples of the totals that
//! [`Telemetry::sample`] takes every [`SAMPLE_EVERY`] (a task of `duplex run`), never from the
//! hot path: the rate is the difference between the totals now and the oldest sample of the
//! last minute, over the time between them.
//!
//! # Lag in seconds
//!
//! A target's lag is now minus the source commit time of the oldest transaction the link
//! has read and that target has not committed yet, and zero when it committed everything
//! read. While a link retries (a target unreachable, say), the oldest uncommitted
//! transaction stays what it was, so the lag keeps growing until that target commits it.
//!
//! # Lag in bytes
//!
//! Every [`SAMPLE_EVERY`] the link reads where its source's log ends
//! ([`duplex_connectors::head`]). A target's lag in bytes is the log written after its
//! position: the position of the last transaction it committed while some transaction read is
//! waiting for it, and the reader's own position (heartbeats included) once it committed
//! everything read, so log of tables duplex does not replicate does not count as lag once the
//! reader passed it. The reader passes the WAL of a transaction still being written or decoded
//! before the transaction arrives (PostgreSQL reports how far it read), so while a large
//! transaction is on its way the lag in bytes can show less than is still to come; the lag in
//! seconds shows it once the transaction arrived. A new attempt (after a retry) counts from
//! what the targets committed until its reader reads again. PostgreSQL sites also report what
//! duplex's slot retains.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use duplex_connectors::head::{LogHead, SlotWal};
use duplex_connectors::{ChangeEvent, Op, Position};
use duplex_state::StateStore;
use serde::{Deserialize, Serialize};

/// How often the totals are sampled for the rates.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The window of the rates.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// The process's telemetry.
pub fn global() -> &'static Telemetry {
    static GLOBAL: OnceLock<Telemetry> = OnceLock::new();
    GLOBAL.get_or_init(Telemetry::default)
}

/// Every link's telemetry, by link name, and the merge engine's conflicts.
#[derive(Debug, Default)]
pub struct Telemetry {
    links: Mutex<BTreeMap<String, Arc<LinkTelemetry>>>,
    /// Conflicts decided by this process: (mapping, policy, outcome) -> count. Conflicts are
    /// rare, so a lock per conflict costs nothing.
    conflicts: Mutex<BTreeMap<(String, String, String), u64>>,
    /// Conflicts waiting for a person; `None` until a merge engine started.
    held: Mutex<Option<u64>>,
    /// The state store, where dead letters are counted when a snapshot is taken.
    store: OnceLock<Arc<StateStore>>,
    /// Backfills of this process (`duplex backfill`), by mapping; updated once per range.
    backfills: Mutex<BTreeMap<String, BackfillProgress>>,
    /// The bus streams of this process's role, as last read from JetStream.
    bus: Mutex<Vec<crate::bus::backlog::StreamBacklog>>,
    /// A bus role's own progress (see `crate::bus::progress`).
    role: crate::bus::progress::RoleProgress,
}

impl Telemetry {
    /// A bus role's own progress: its role, lease and streams.
    pub fn role(&self) -> &crate::bus::progress::RoleProgress {
        &self.role
    }

    /// The bus streams and consumers as just read from JetStream (a bus role reads them
    /// every few seconds; see `crate::bus::backlog`).
    pub fn bus_backlog(&self, backlog: Vec<crate::bus::backlog::StreamBacklog>) {
        *self.bus.lock().unwrap_or_else(|e| e.into_inner()) = backlog;
    }

    /// The telemetry of link `name` reading `source` into `targets`, made on first use.
    pub fn link(&self, name: &str, source: &str, targets: &[String]) -> Arc<LinkTelemetry> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(LinkTelemetry {
                    name: name.to_owned(),
                    source: source.to_owned(),
                    state: Mutex::new(LinkState::Starting {
                        since: Utc::now(),
                        error: None,
                    }),
                    retries: AtomicU64::new(0),
                    read: Mutex::new(None),
                    head: Mutex::new(None),
                    targets: targets
                        .iter()
                        .map(|site| {
                            let target = TargetTelemetry {
                                site: site.clone(),
                                ..TargetTelemetry::default()
                            };
                            // Nothing was committed before it existed.
                            target.sample(Instant::now());
                            Arc::new(target)
                        })
                        .collect(),
                })
            })
            .clone()
    }

    /// The merge engine decided a conflict of `mapping` by `policy`: `outcome` is
    /// `resolved` (by the policy) or `held` (waiting for a person).
    pub fn conflict(&self, mapping: &str, policy: &str, outcome: &str) {
        let mut conflicts = self.conflicts.lock().unwrap_or_else(|e| e.into_inner());
        *conflicts
            .entry((mapping.to_owned(), policy.to_owned(), outcome.to_owned()))
            .or_default() += 1;
        if outcome == "held" {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            *held = Some(held.unwrap_or(0) + 1);
        }
    }

    /// The merge engine started with `count` held conflicts in its log.
    pub fn held_conflicts(&self, count: u64) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(count);
    }

    /// An operator settled a held conflict.
    pub fn conflict_settled(&self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        *held = Some(held.unwrap_or(0).saturating_sub(1));
    }

    /// A backfill's progress: `progress.copied` of about `progress.planned` rows copied.
    pub fn backfill(&self, progress: BackfillProgress) {
        self.backfills
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(progress.mapping.clone(), progress);
    }

    /// The backfill of `mapping` copied every range and wrote its handover.
    pub fn backfill_complete(&self, mapping: &str) {
        if let Some(progress) = self
            .backfills
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(mapping)
        {
            progress.complete = true;
        }
    }

    /// Records every target's totals now, for the rates (see the module docs).
    pub fn sample(&self) {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        for link in links.values() {
            for target in &link.targets {
                target.sample(now);
            }
        }
    }

    /// The state store of this process (dead letters are counted in it).
    pub fn attach_store(&self, store: Arc<StateStore>) {
        let _ = self.store.set(store);
    }

    /// What every link reports now.
    pub fn snapshot(&self) -> Snapshot {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let now = Utc::now();
        let store = self.store.get().map(Arc::as_ref);
        let conflicts = self
            .conflicts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((mapping, policy, outcome), count)| ConflictCount {
                mapping: mapping.clone(),
                policy: policy.clone(),
                outcome: outcome.clone(),
                count: *count,
            })
            .collect();
        Snapshot {
            taken: now,
            links: links
                .values()
                .map(|link| link.snapshot(now, store))
                .collect(),
            conflicts,
            held_conflicts: *self.held.lock().unwrap_or_else(|e| e.into_inner()),
            last_verify: store.and_then(|store| crate::verify::last::read(store.dir())),
            backfills: self
                .backfills
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect(),
            bus: self.bus.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            role: self.role.report(),
        }
    }
}

/// A link's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LinkState {
    /// Not streaming yet: planning, or waiting for an unreachable site at start (`error`).
    Starting {
        /// Since when.
        since: DateTime<Utc>,
        /// The last failure, when a site was unreachable.
        error: Option<String>,
    },
    /// Reading the source and applying to the targets.
    Streaming {
        /// Since when.
        since: DateTime<Utc>,
    },
    /// Interrupted by a transient failure; trying again with backoff.
    Retrying {
        /// Since when (the first failure of the series).
        since: DateTime<Utc>,
        /// The last failure.
        error: String,
    },
    /// Stopped: on shutdown (`error` none) or on a definite error.
    Stopped {
        /// Since when.
        since: DateTime<Utc>,
        /// Why, when it was not asked to.
        error: Option<String>,
    },
}

impl LinkState {
    /// Whether the link streams (or is idle while streaming).
    pub fn healthy(&self) -> bool {
        matches!(self, LinkState::Streaming { .. })
    }
}

/// One link's telemetry: written by the link, read by snapshots.
#[derive(Debug)]
pub struct LinkTelemetry {
    name: String,
    source: String,
    state: Mutex<LinkState>,
    retries: AtomicU64,
    /// The reader's last position: of the last transaction or heartbeat read.
    read: Mutex<Option<Position>>,
    /// The source's log head, when it was last read, or why it could not be.
    head: Mutex<Option<Result<LogHead, String>>>,
    targets: Vec<Arc<TargetTelemetry>>,
}

impl LinkTelemetry {
    /// The telemetry of the link's target number `index` (in the link's target order).
    pub fn target(&self, index: usize) -> Arc<TargetTelemetry> {
        self.targets[index].clone()
    }

    /// The reader reached `position` (a transaction's, or a heartbeat's).
    pub fn read(&self, position: &Position) {
        *self.read.lock().unwrap_or_else(|e| e.into_inner()) = Some(position.clone());
    }

    /// A new attempt starts reading from the targets' positions: what an earlier attempt read
    /// is no longer as far as the link got.
    pub fn attempt_started(&self) {
        *self.read.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The source's log head was read (`Err` says why it could not be).
    pub fn head(&self, head: Result<LogHead, String>) {
        *self.head.lock().unwrap_or_else(|e| e.into_inner()) = Some(head);
    }

    /// The telemetry of the link's target `site`, if it is one.
    pub fn target_of(&self, site: &str) -> Option<Arc<TargetTelemetry>> {
        self.targets.iter().find(|t| t.site == site).cloned()
    }

    /// The link streams (again).
    pub fn streaming(&self) {
        self.set(|state| match state {
            LinkState::Streaming { .. } => None,
            _ => Some(LinkState::Streaming { since: Utc::now() }),
        });
    }

    /// The link failed transiently and will try again.
    pub fn retrying(&self, error: String) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        self.set(|state| {
            let since = match state {
                LinkState::Retrying { since, .. } => *since,
                _ => Utc::now(),
            };
            Some(LinkState::Retrying { since, error })
        });
    }

    /// The link cannot start yet: a site is unreachable.
    pub fn waiting(&self, error: String) {
        self.set(|state| {
            let since = match state {
                LinkState::Starting { since, .. } => *since,
                _ => Utc::now(),
            };
            Some(LinkState::Starting {
                since,
                error: Some(error),
            })
        });
    }

    /// The link stopped (`error` says why, unless it was asked to).
    pub fn stopped(&self, error: Option<String>) {
        self.set(|_| {
            Some(LinkState::Stopped {
                since: Utc::now(),
                error,
            })
        });
    }

    fn set(&self, next: impl FnOnce(&LinkState) -> Option<LinkState>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(next) = next(&state) {
            *state = next;
        }
    }

    fn snapshot(&self, now: DateTime<Utc>, store: Option<&StateStore>) -> LinkSnapshot {
        let read = self.read.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let head = self.head.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (head, head_error) = match head {
            Some(Ok(head)) => (Some(head), None),
            Some(Err(error)) => (None, Some(error)),
            None => (None, None),
        };
        LinkSnapshot {
            name: self.name.clone(),
            source: self.source.clone(),
            state: self.state.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            retries: self.retries.load(Ordering::Relaxed),
            source_position: read.as_ref().map(ToString::to_string),
            slot: head.as_ref().and_then(LogHead::slot),
            head_error,
            targets: self
                .targets
                .iter()
                .map(|t| {
                    let mut target = t.snapshot(now, read.as_ref(), head.as_ref());
                    target.dead_letters = store.and_then(|store| {
                        store
                            .pending_count(&crate::dead_letters::scope(&self.source, &t.site))
                            .ok()
                    });
                    target
                })
                .collect(),
        }
    }
}

/// One target of a link: counters written once per committed batch.
#[derive(Debug, Default)]
pub struct TargetTelemetry {
    site: String,
    inserts: AtomicU64,
    updates: AtomicU64,
    deletes: AtomicU64,
    transactions: AtomicU64,
    apply_errors: AtomicU64,
    /// The position of the last transaction committed (or held when the link started).
    position: Mutex<Option<Position>>,
    /// Transactions waiting for the target's writer.
    queued: AtomicU64,
    /// Commit time (microseconds since the epoch) of the oldest transaction read and not
    /// committed by this target; 0 when none.
    oldest_pending: AtomicI64,
    /// (when, rows, transactions) over the last [`RATE_WINDOW`], oldest first.
    samples: Mutex<VecDeque<(Instant, u64, u64)>>,
}

impl TargetTelemetry {
    /// The target committed `transactions` whose row changes are `events`.
    pub fn committed<'a>(
        &self,
        transactions: u64,
        events: impl IntoIterator<Item = &'a ChangeEvent>,
    ) {
        let mut tally = Tally::default();
        tally.add(events);
        self.committed_tally(transactions, &tally);
    }

    /// The target committed `transactions` whose row changes `tally` counted.
    pub fn committed_tally(&self, transactions: u64, tally: &Tally) {
        self.inserts.fetch_add(tally.inserts, Ordering::Relaxed);
        self.updates.fetch_add(tally.updates, Ordering::Relaxed);
        self.deletes.fetch_add(tally.deletes, Ordering::Relaxed);
        self.transactions.fetch_add(transactions, Ordering::Relaxed);
    }

    /// The target holds the source's changes up to `position`: the last transaction of a
    /// batch it committed, or what it held when the link started.
    pub fn committed_at(&self, position: &Position) {
        *self.position.lock().unwrap_or_else(|e| e.into_inner()) = Some(position.clone());
    }

    /// Applying to the target failed.
    pub fn apply_failed(&self) {
        self.apply_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The oldest transaction read that this target has not committed was committed on the
    /// source at `commit_time`; `None` when it committed everything read.
    pub fn pending_since(&self, commit_time: Option<DateTime<Utc>>) {
        let micros = commit_time.map_or(0, |t| t.timestamp_micros().max(1));
        self.oldest_pending.store(micros, Ordering::Relaxed);
    }

    /// `n` transactions wait for the target's writer.
    pub fn queued(&self, n: u64) {
        self.queued.store(n, Ordering::Relaxed);
    }

    fn rows(&self) -> u64 {
        self.inserts.load(Ordering::Relaxed)
            + self.updates.load(Ordering::Relaxed)
            + self.deletes.load(Ordering::Relaxed)
    }

    fn sample(&self, now: Instant) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((now, self.rows(), self.transactions.load(Ordering::Relaxed)));
        while samples
            .front()
            .is_some_and(|(at, _, _)| now.duration_since(*at) > RATE_WINDOW)
        {
            samples.pop_front();
        }
    }

    /// Rows and transactions per second since the oldest sample of the last minute.
    fn rates(&self) -> (f64, f64) {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let Some(&(at, rows, transactions)) = samples.front() else {
            return (0.0, 0.0);
        };
        let seconds = at.elapsed().as_secs_f64();
        if seconds < 1.0 {
            return (0.0, 0.0);
        }
        (
            self.rows().saturating_sub(rows) as f64 / seconds,
            self.transactions
                .load(Ordering::Relaxed)
                .saturating_sub(transactions) as f64
                / seconds,
        )
    }

    fn snapshot(
        &self,
        now: DateTime<Utc>,
        read: Option<&Position>,
        head: Option<&LogHead>,
    ) -> TargetSnapshot {
        let (rows_per_second, transactions_per_second) = self.rates();
        let pending = self.oldest_pending.load(Ordering::Relaxed);
        let lag_seconds = if pending == 0 {
            0.0
        } else {
            ((now.timestamp_micros() - pending) as f64 / 1e6).max(0.0)
        };
        let position = self
            .position
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Caught up: as far as the reader got (see the module docs).
        let effective = match (&position, read) {
            (Some(committed), Some(read)) if pending == 0 => Some(match committed.compare(read) {
                Ok(std::cmp::Ordering::Greater) => committed,
                _ => read,
            }),
            (None, Some(read)) if pending == 0 => Some(read),
            (committed, _) => committed.as_ref(),
        };
        let lag_bytes = head
            .zip(effective)
            .and_then(|(head, at)| head.bytes_after(at));
        TargetSnapshot {
            site: self.site.clone(),
            inserts: self.inserts.load(Ordering::Relaxed),
            updates: self.updates.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            transactions: self.transactions.load(Ordering::Relaxed),
            apply_errors: self.apply_errors.load(Ordering::Relaxed),
            lag_seconds,
            position: position.as_ref().map(ToString::to_string),
            lag_bytes,
            queued_transactions: self.queued.load(Ordering::Relaxed),
            dead_letters: None,
            rows_per_second,
            transactions_per_second,
        }
    }
}

/// Row changes counted by operation (e.g. the parts of a large transaction until it commits).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Inserts.
    pub inserts: u64,
    /// Updates.
    pub updates: u64,
    /// Deletes.
    pub deletes: u64,
}

impl Tally {
    /// Counts `events` too.
    pub fn add<'a>(&mut self, events: impl IntoIterator<Item = &'a ChangeEvent>) {
        for event in events {
            match event.op {
                Op::Insert => self.inserts += 1,
                Op::Update => self.updates += 1,
                Op::Delete => self.deletes += 1,
            }
        }
    }
}

/// Everything the running process reports, at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When it was taken.
    pub taken: DateTime<Utc>,
    /// Every link, by name.
    pub links: Vec<LinkSnapshot>,
    /// Conflicts the merge engine decided since the process started.
    pub conflicts: Vec<ConflictCount>,
    /// Conflicts waiting for `duplex conflicts resolve`; `None` without a merge engine.
    pub held_conflicts: Option<u64>,
    /// Backfills (a `duplex backfill` process reports these; `duplex run` none).
    #[serde(default)]
    pub backfills: Vec<BackfillProgress>,
    /// The last `duplex verify`'s time and result, from the state directory.
    #[serde(default)]
    pub last_verify: Option<crate::verify::last::LastVerify>,
    /// A bus role's streams and consumers (empty without `--role`).
    #[serde(default)]
    pub bus: Vec<crate::bus::backlog::StreamBacklog>,
    /// A bus role's own progress (`None` without `--role`).
    #[serde(default)]
    pub role: Option<crate::bus::progress::RoleReport>,
}

/// How far the backfill of one mapping got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillProgress {
    /// The mapping.
    pub mapping: String,
    /// The site it copies from.
    pub source: String,
    /// Rows copied (ranges finished by earlier runs included).
    pub copied: u64,
    /// Rows the source table held when the backfill was planned (an estimate of the total).
    pub planned: u64,
    /// Key ranges copied.
    pub ranges_done: u64,
    /// Key ranges in all.
    pub ranges: u64,
    /// Every range copied and the handover written.
    pub complete: bool,
}

/// How many conflicts of one mapping one policy decided one way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictCount {
    /// The mapping.
    pub mapping: String,
    /// The policy (`last-writer-wins`, `prefer:<site>`, `merge-columns`, `hold`).
    pub policy: String,
    /// `resolved` or `held`.
    pub outcome: String,
    /// How many.
    pub count: u64,
}

impl Snapshot {
    /// Why the process is not healthy (a link neither streaming nor idle, or a backfill
    /// copying, during which nothing streams); `None` when it is.
    pub fn unhealthy(&self) -> Option<String> {
        let copying = self
            .backfills
            .iter()
            .filter(|b| !b.complete)
            .map(|b| {
                format!(
                    "duplex backfill is copying mapping {} ({} of about {} rows); nothing streams until it ends and `duplex run` starts",
                    b.mapping, b.copied, b.planned
                )
            });
        let reasons: Vec<String> = copying
            .chain(
                self.links
                    .iter()
                    .filter(|link| !link.state.healthy())
                    .map(|link| match &link.state {
                        LinkState::Starting { error: Some(e), .. } => {
                            format!("link {} cannot start yet: {e}", link.name)
                        }
                        LinkState::Starting { .. } => format!("link {} is starting", link.name),
                        LinkState::Retrying { since, error } => {
                            format!("link {} retrying since {since}: {error}", link.name)
                        }
                        LinkState::Stopped { error: Some(e), .. } => {
                            format!("link {} stopped: {e}", link.name)
                        }
                        LinkState::Stopped { .. } => format!("link {} stopped", link.name),
                        LinkState::Streaming { .. } => unreachable!("filtered out"),
                    }),
            )
            .collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

/// One link, at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkSnapshot {
    /// The link's name (`source -> targets`).
    pub name: String,
    /// The source site.
    pub source: String,
    /// Streaming, retrying, stopped...
    pub state: LinkState,
    /// Transient failures retried since start.
    pub retries: u64,
    /// The reader's last position (a transaction's or a heartbeat's); `None` before it read
    /// anything.
    pub source_position: Option<String>,
    /// What duplex's replication slot retains (PostgreSQL sources), as last read.
    pub slot: Option<SlotWal>,
    /// Why the source's log head could not be read last time (lag in bytes is then unknown).
    pub head_error: Option<String>,
    /// Each target.
    pub targets: Vec<TargetSnapshot>,
}

/// One target of a link, at one moment; counts are since the process started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetSnapshot {
    /// The target site.
    pub site: String,
    /// Rows inserted.
    pub inserts: u64,
    /// Rows updated.
    pub updates: u64,
    /// Rows deleted.
    pub deletes: u64,
    /// Source transactions committed.
    pub transactions: u64,
    /// Failed applies (each retried, or its transaction set aside or the link stopped).
    pub apply_errors: u64,
    /// Seconds since the source committed the oldest transaction read and not yet committed
    /// here; 0 when none is waiting.
    pub lag_seconds: f64,
    /// The position of the last source transaction committed here (or held at start).
    pub position: Option<String>,
    /// Bytes of the source's log after this target's position (see the module docs); `None`
    /// until the log head was read.
    pub lag_bytes: Option<u64>,
    /// Transactions waiting for the target's writer (the merge engine: its outbox entries
    /// for this site not yet committed there).
    #[serde(default)]
    pub queued_transactions: u64,
    /// Changes from this source set aside for this target (`on_error = "dead-letter"`),
    /// waiting for `duplex dead-letters retry`; `None` when they could not be counted.
    pub dead_letters: Option<u64>,
    /// Rows committed per second over the last minute.
    pub rows_per_second: f64,
    /// Source transactions committed per second over the last minute.
    pub transactions_per_second: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_healthy_only_while_streaming_and_says_why_not() {
        let telemetry = Telemetry::default();
        let link = telemetry.link("a -> b", "a", &["b".into()]);
        assert!(
            telemetry
                .snapshot()
                .unhealthy()
                .unwrap()
                .contains("starting")
        );
        link.streaming();
        assert_eq!(telemetry.snapshot().unhealthy(), None);
        link.retrying("site b refused the connection".into());
        let why = telemetry.snapshot().unhealthy().unwrap();
        assert!(
            why.contains("a -> b") && why.contains("site b refused"),
            "{why}"
        );
        assert_eq!(telemetry.snapshot().links[0].retries, 1);
        link.streaming();
        assert_eq!(telemetry.snapshot().unhealthy(), None);
    }

    #[test]
    fn conflicts_are_counted_and_held_ones_followed() {
        let telemetry = Telemetry::default();
        assert_eq!(telemetry.snapshot().held_conflicts, None);
        telemetry.held_conflicts(2);
        telemetry.conflict("items", "hold", "held");
        telemetry.conflict("items", "hold", "held");
        telemetry.conflict("items", "last-writer-wins", "resolved");
        telemetry.conflict_settled();
        let snapshot = telemetry.snapshot();
        assert_eq!(snapshot.held_conflicts, Some(3));
        assert_eq!(snapshot.conflicts.len(), 2);
        assert_eq!(snapshot.conflicts[0].policy, "hold");
        assert_eq!(snapshot.conflicts[0].count, 2);
    }

    #[test]
    fn rates_are_over_the_samples_of_the_last_minute() {
        let telemetry = Telemetry::default();
        let target = telemetry.link("a -> b", "a", &["b".into()]).target(0);
        assert_eq!(
            telemetry.snapshot().links[0].targets[0].rows_per_second,
            0.0
        );
        // A sample taken 10 s ago (instead of the one at creation), then 100 rows in 4
        // transactions.
        target.samples.lock().unwrap().clear();
        target.sample(Instant::now() - Duration::from_secs(10));
        let event = ChangeEvent {
            table: duplex_connectors::TableName::new("public", "t"),
            op: Op::Insert,
            key: Default::default(),
            before: None,
            after: None,
        };
        target.committed(4, std::iter::repeat_n(&event, 100));
        let snapshot = &telemetry.snapshot().links[0].targets[0];
        assert!(
            (9.0..=10.1).contains(&snapshot.rows_per_second),
            "{snapshot:?}"
        );
        assert!(
            (0.3..=0.41).contains(&snapshot.transactions_per_second),
            "{snapshot:?}"
        );
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_uncommitted_transaction() {
        let telemetry = Telemetry::default();
        let target = telemetry.link("a -> b", "a", &["b".into()]).target(0);
        target.pending_since(Some(Utc::now() - chrono::Duration::seconds(30)));
        let lag = telemetry.snapshot().links[0].targets[0].lag_seconds;
        assert!((30.0..40.0).contains(&lag), "{lag}");
        target.pending_since(None);
        assert_eq!(telemetry.snapshot().links[0].targets[0].lag_seconds, 0.0);
    }
}
