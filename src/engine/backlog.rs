//! What each site's writer has committed and what still waits for it, for `duplex status` and
//! `/metrics` (`crate::telemetry`): rows by operation and outbox entries committed there, its
//! lag in seconds and its queue depth.
//!
//! # What is counted
//!
//! An outbox entry is one row's write into one site, written as one target transaction of its
//! own (see the engine's module doc). Once the site's writer committed a batch of entries, the
//! entries counted are the ones the site did not hold before ([`Backlog::committed`]): an entry
//! at or below the outbox position the site held when the attempt started, or below the last
//! entry of a batch committed since, is skipped by its position (the applier writes it no
//! more) and not counted again; an entry whose conditional write was skipped (the row there was not what the engine expected:
//! the site changed it first, and that change decides) wrote nothing and is not counted
//! either. So each row the engine writes into a site is counted once, by its operation, in
//! both `rows` and `transactions`, and a site never counts the changes made there (the engine
//! writes them to the other sites only).
//!
//! # Lag and queue depth
//!
//! A site's lag is now minus the source commit time of the oldest change whose outcome waits
//! to be committed there: every entry the coordinator queued for the site and its writer has
//! not committed, and every change of the other sites of its mappings that their readers
//! handed over and the coordinator has not decided yet (`undecided`). An echo queues nothing,
//! and a change that needs no write at a site (the site made it, or holds its image already)
//! queues nothing there, so once decided neither is pending there. The queue depth is the
//! number of those entries.
//!
//! Entries are queued in number order and committed in number order, so the waiting ones are
//! a window that grows at the back (the coordinator, once per batch it decided) and shrinks at
//! the front (the writer, once per committed batch). The oldest commit time in that window is
//! kept the way a sliding-window minimum is: a deque of the entries whose commit time is older
//! than that of every entry queued after them. An entry queued pops the entries at the back
//! that are not older than it (it outlives them, so none of them can be the oldest while it
//! waits), and a committed batch pops the entries it covers at the front; the front is then
//! the oldest waiting change. Each entry enters and leaves the deque once, so the cost is
//! constant per entry, under one lock taken once per batch on each side.
//!
//! Entries queued before this process started, read back from the state store, carry no
//! commit time of their own: they count from the commit time of their row's newest version
//! (the change they carry out, or a later change of the row, so the lag is never overstated),
//! or from when this process queued them again where the row cannot be read.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use duplex_connectors::Op;
use duplex_connectors::apply::SkippedWrite;

use duplex_state::StateStore;

use super::outbox::OutboxWrite;
use super::rows::RowData;
use super::undecided::Undecided;
use crate::telemetry::{Tally, TargetTelemetry};

/// One site's waiting entries and its telemetry.
#[derive(Debug)]
pub(super) struct Backlog {
    telemetry: Arc<TargetTelemetry>,
    waiting: Mutex<Waiting>,
    /// The changes the readers handed over and the coordinator has not decided yet.
    undecided: Arc<Undecided>,
    /// The other sites of this site's mappings (plan order), whose undecided changes are
    /// pending here.
    sources: Vec<usize>,
}

/// The entries queued for a site's writer and not committed there yet.
#[derive(Debug, Default)]
struct Waiting {
    /// How many.
    count: u64,
    /// The highest number the site is known to hold.
    upto: u64,
    /// The highest number queued in this process.
    last: u64,
    /// (number, source commit time in µs) of each waiting entry older than every entry queued
    /// after it, in number order (see the module doc).
    oldest: VecDeque<(u64, i64)>,
}

impl Waiting {
    fn push(&mut self, seq: u64, micros: i64) {
        while self.oldest.back().is_some_and(|&(_, t)| t >= micros) {
            self.oldest.pop_back();
        }
        self.oldest.push_back((seq, micros));
        self.last = self.last.max(seq);
        self.count += 1;
    }

    fn written(&mut self, upto: u64) {
        self.upto = self.upto.max(upto);
        while self.oldest.front().is_some_and(|&(seq, _)| seq <= upto) {
            self.oldest.pop_front();
        }
    }
}

impl Backlog {
    /// The backlog of a site reporting into `telemetry`, where the undecided changes of the
    /// sites `sources` are pending too; nothing waits yet.
    pub(super) fn new(
        telemetry: Arc<TargetTelemetry>,
        undecided: Arc<Undecided>,
        sources: Vec<usize>,
    ) -> Backlog {
        Backlog {
            telemetry,
            waiting: Mutex::new(Waiting::default()),
            undecided,
            sources,
        }
    }

    /// An attempt of the engine starts: the site holds the entries up to `written`, and
    /// `unwritten` (number, commit time in µs as the state store knows it; in number order)
    /// are queued for its writer again. Those this process queued before keep the commit time
    /// it knew (see the module doc).
    pub(super) fn restart(&self, written: u64, unwritten: &[(u64, i64)]) {
        let mut waiting = self.lock();
        waiting.upto = written;
        waiting.written(written);
        // Entries queued in an earlier attempt but never recorded cannot be waiting.
        let newest = unwritten.last().map_or(written, |&(seq, _)| seq);
        while waiting.oldest.back().is_some_and(|&(seq, _)| seq > newest) {
            waiting.oldest.pop_back();
        }
        let known = waiting.last;
        waiting.count = 0;
        for &(seq, micros) in unwritten {
            if seq > known {
                waiting.push(seq, micros);
            } else {
                waiting.count += 1;
            }
        }
        self.publish(&waiting);
    }

    /// The coordinator queued `entries` for the site's writer: (number, the source commit time
    /// in µs of the change they carry out), in number order.
    pub(super) fn queued(&self, entries: impl IntoIterator<Item = (u64, i64)>) {
        let mut waiting = self.lock();
        for (seq, micros) in entries {
            waiting.push(seq, micros);
        }
        self.publish(&waiting);
    }

    /// The site's writer committed `batch` (in number order), in which the conditional
    /// applier skipped the writes `skipped`. Counts the rows and entries that landed (see the
    /// module doc).
    pub(super) fn committed(&self, batch: &[(u64, Arc<OutboxWrite>)], skipped: &[SkippedWrite]) {
        let mut waiting = self.lock();
        let mut tally = Tally::default();
        let mut fresh = 0u64;
        for (seq, write) in batch {
            if *seq <= waiting.upto {
                continue;
            }
            fresh += 1;
            *count_of(&mut tally, write.op) += 1;
        }
        // Only fresh entries are written, so only they can be skipped.
        for write in skipped {
            fresh = fresh.saturating_sub(1);
            let count = count_of(&mut tally, write.op);
            *count = count.saturating_sub(1);
        }
        let landed = batch.iter().filter(|(seq, _)| *seq > waiting.upto).count() as u64;
        self.telemetry.committed_tally(fresh, &tally);
        if let Some(&(last, _)) = batch.last() {
            waiting.written(last);
        }
        waiting.count = waiting.count.saturating_sub(landed);
        self.publish(&waiting);
    }

    /// The site's echo says it holds the entries up to `upto`, of which `landed` (number,
    /// operation) were written there (the others were skipped by their condition). For a site
    /// written by `run --role writer` on the bus: this process sees its commits only through
    /// their echoes. Counts like [`Backlog::committed`]: each entry once, never one the site
    /// held when the attempt started.
    pub(super) fn echoed(&self, upto: u64, landed: &[(u64, Op)]) {
        let mut waiting = self.lock();
        let before = waiting.upto;
        if upto <= before {
            return;
        }
        let mut tally = Tally::default();
        let mut fresh = 0u64;
        for (seq, op) in landed {
            if *seq > before {
                fresh += 1;
                *count_of(&mut tally, *op) += 1;
            }
        }
        self.telemetry.committed_tally(fresh, &tally);
        waiting.written(upto);
        waiting.count = waiting.count.saturating_sub(upto - before);
        self.publish(&waiting);
    }

    /// An apply into the site failed.
    pub(super) fn apply_failed(&self) {
        self.telemetry.apply_failed();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes again, after an undecided change of a source site came or went.
    pub(super) fn refresh(&self) {
        let waiting = self.lock();
        self.publish(&waiting);
    }

    /// Called under the lock, so the last publication is of the latest state.
    fn publish(&self, waiting: &Waiting) {
        self.telemetry.queued(waiting.count);
        let oldest = waiting
            .oldest
            .front()
            .map(|&(_, micros)| micros)
            .into_iter()
            .chain(self.sources.iter().filter_map(|s| self.undecided.since(*s)))
            .min();
        self.telemetry
            .pending_since(oldest.and_then(chrono::DateTime::from_timestamp_micros));
    }
}

/// The counter of `op` in `tally`.
fn count_of(tally: &mut Tally, op: Op) -> &mut u64 {
    match op {
        Op::Insert => &mut tally.inserts,
        Op::Update => &mut tally.updates,
        Op::Delete => &mut tally.deletes,
    }
}

/// The source commit time (µs) of the newest version of `write`'s row, as the state store
/// holds it: the time of the change `write` carries out, or of a later change of the row.
/// `None` when the row cannot be read.
pub(super) fn commit_micros(store: &StateStore, write: &OutboxWrite) -> Option<i64> {
    let versions = match store.row_versions(&write.mapping, write.key.as_bytes()) {
        Ok(versions) => versions?,
        Err(error) => {
            tracing::debug!(%error, mapping = %write.mapping, key = %write.key, "cannot read the commit time of a queued write");
            return None;
        }
    };
    let data: RowData = duplex_state::codec::decode(&versions.payload).ok()?;
    Some(data.commit_micros)
}

/// The entries a batch decided, (site index, number, entry, commit time in µs), queued in each
/// site's backlog (`backlogs`, plan order) once per site.
pub(super) fn queue(backlogs: &[Arc<Backlog>], writes: &[(usize, u64, Arc<OutboxWrite>, i64)]) {
    let mut by_site: Vec<Vec<(u64, i64)>> = vec![Vec::new(); backlogs.len()];
    for (index, seq, _, since) in writes {
        by_site[*index].push((*seq, *since));
    }
    for (backlog, entries) in backlogs.iter().zip(by_site) {
        if !entries.is_empty() {
            backlog.queued(entries);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Telemetry;
    use duplex_connectors::Row;
    use duplex_state::VersionVector;

    fn write(op: Op) -> Arc<OutboxWrite> {
        Arc::new(OutboxWrite {
            mapping: "items".into(),
            key: "1".into(),
            op,
            key_row: Row::default(),
            before: None,
            after: None,
            vector: VersionVector::new(),
        })
    }

    fn skipped(op: Op) -> SkippedWrite {
        SkippedWrite {
            table: duplex_connectors::TableName::new("public", "items"),
            op,
            key: Row::default(),
        }
    }

    /// A backlog of site `b` and the telemetry it reports into.
    fn backlog() -> (Telemetry, Backlog) {
        let telemetry = Telemetry::default();
        let link = telemetry.link("merge engine", "a, b", &["b".into()]);
        let backlog = Backlog::new(
            link.target_of("b").unwrap(),
            Arc::new(Undecided::new(2)),
            vec![0],
        );
        (telemetry, backlog)
    }

    /// (lag in whole seconds, queued).
    fn waiting(telemetry: &Telemetry) -> (i64, u64) {
        let t = &telemetry.snapshot().links[0].targets[0];
        (t.lag_seconds.round() as i64, t.queued_transactions)
    }

    /// (inserts, updates, deletes, transactions).
    fn counted(telemetry: &Telemetry) -> (u64, u64, u64, u64) {
        let t = &telemetry.snapshot().links[0].targets[0];
        (t.inserts, t.updates, t.deletes, t.transactions)
    }

    #[test]
    fn lag_is_the_oldest_waiting_change_and_counts_only_what_landed() {
        let (telemetry, backlog) = backlog();
        let now = chrono::Utc::now().timestamp_micros();
        let ago = |s: i64| now - s * 1_000_000;
        // Entries of changes read from two sites, not in commit-time order.
        backlog.queued([(1, ago(100)), (2, ago(300)), (3, ago(200))]);
        assert_eq!(waiting(&telemetry), (300, 3));
        backlog.queued([(4, ago(50))]);
        let batch = [
            (1, write(Op::Insert)),
            (2, write(Op::Update)),
            (3, write(Op::Insert)),
        ];
        backlog.committed(&batch[..2], &[]);
        assert_eq!(waiting(&telemetry), (200, 2));
        assert_eq!(counted(&telemetry), (1, 1, 0, 2));
        // Entry 3 was skipped by its condition: nothing landed, it waits no more.
        backlog.committed(&batch[2..], &[skipped(Op::Insert)]);
        assert_eq!(waiting(&telemetry), (50, 1));
        assert_eq!(counted(&telemetry), (1, 1, 0, 2));
        // Entries the site holds already, committed again, count nothing.
        backlog.committed(&batch, &[]);
        assert_eq!(waiting(&telemetry), (50, 1));
        assert_eq!(counted(&telemetry), (1, 1, 0, 2));
        backlog.committed(&[(4, write(Op::Delete))], &[]);
        assert_eq!(waiting(&telemetry), (0, 0));
        assert_eq!(counted(&telemetry), (1, 1, 1, 3));
    }

    #[test]
    fn a_restart_keeps_known_commit_times_and_takes_the_stored_ones_for_the_others() {
        let (telemetry, backlog) = backlog();
        let now = chrono::Utc::now().timestamp_micros();
        backlog.queued([(5, now - 400_000_000), (6, now - 100_000_000)]);
        // The site held entry 5 already; 6 and 7 wait: 6 keeps the time this process knew,
        // 7 (never queued by it) takes the time the store knows.
        backlog.restart(5, &[(6, now - 900_000_000), (7, now - 20_000_000)]);
        assert_eq!(waiting(&telemetry), (100, 2));
        // Entry 5, applied again, counts nothing: the site held it.
        backlog.committed(&[(5, write(Op::Insert)), (6, write(Op::Insert))], &[]);
        assert_eq!(waiting(&telemetry), (20, 1));
        assert_eq!(counted(&telemetry), (1, 0, 0, 1));
        backlog.restart(7, &[]);
        assert_eq!(waiting(&telemetry), (0, 0));
        assert_eq!(counted(&telemetry), (1, 0, 0, 1));
    }

    #[test]
    fn a_stored_write_is_dated_by_its_rows_newest_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("state")).unwrap();
        let data = RowData {
            commit_micros: 1_790_000_000_000_000,
            ..RowData::default()
        };
        let versions = duplex_state::RowVersions {
            payload: duplex_state::codec::encode(&data).unwrap(),
            ..Default::default()
        };
        store.put_row_versions("items", b"1", &versions).unwrap();
        let stored = write(Op::Insert);
        assert_eq!(commit_micros(&store, &stored), Some(1_790_000_000_000_000));
        let unknown = OutboxWrite {
            key: "2".into(),
            ..(*stored).clone()
        };
        assert_eq!(commit_micros(&store, &unknown), None);
    }
}
