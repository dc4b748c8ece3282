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
//! atomics once per batch; the reader stores the commit time of the oldest transaction some
//! target has not committed in one atomic per target when it changes. The only locks are
//! taken when a link starts, changes state (retrying, stopped) or a snapshot is read, never
//! per row or per transaction.
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

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use duplex_connectors::{ChangeEvent, Op};
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
}

impl Telemetry {
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
    targets: Vec<Arc<TargetTelemetry>>,
}

impl LinkTelemetry {
    /// The telemetry of the link's target number `index` (in the link's target order).
    pub fn target(&self, index: usize) -> Arc<TargetTelemetry> {
        self.targets[index].clone()
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
        LinkSnapshot {
            name: self.name.clone(),
            source: self.source.clone(),
            state: self.state.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            retries: self.retries.load(Ordering::Relaxed),
            targets: self
                .targets
                .iter()
                .map(|t| {
                    let mut target = t.snapshot(now);
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

    fn snapshot(&self, now: DateTime<Utc>) -> TargetSnapshot {
        let (rows_per_second, transactions_per_second) = self.rates();
        let pending = self.oldest_pending.load(Ordering::Relaxed);
        let lag_seconds = if pending == 0 {
            0.0
        } else {
            ((now.timestamp_micros() - pending) as f64 / 1e6).max(0.0)
        };
        TargetSnapshot {
            site: self.site.clone(),
            inserts: self.inserts.load(Ordering::Relaxed),
            updates: self.updates.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            transactions: self.transactions.load(Ordering::Relaxed),
            apply_errors: self.apply_errors.load(Ordering::Relaxed),
            lag_seconds,
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
    /// Why the process is not healthy (a link neither streaming nor idle); `None` when it is.
    pub fn unhealthy(&self) -> Option<String> {
        let reasons: Vec<String> = self
            .links
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
            })
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
