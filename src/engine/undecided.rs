//! The changes each site's reader handed to the coordinator that it has not decided yet, for
//! the lag of the other sites (see `backlog`).
//!
//! A change read from a site is, until the coordinator decides it, pending at every other site
//! of its mappings: its outcome is not known yet, and it normally needs a write there. Once the
//! coordinator decided it, the writes it needs are entries of those sites' backlogs (queued
//! before the coordinator acknowledges the change to its reader), and a site that needs none is
//! no longer waiting for it. So a site's lag is the older of its oldest waiting entry and the
//! oldest undecided change of the other sites of its mappings. Normally a change waits
//! milliseconds undecided; it waits longer while the coordinator waits for a site's writer
//! whose queue is full (a site away for long), and then the other sites' lag shows it too.
//!
//! Echoes are not application changes: they are never pending anywhere.
//!
//! # Cost
//!
//! The reader keeps the changes it handed over in a local queue (no lock) and pops them when
//! the coordinator acknowledges their position. Only when the oldest one changes (a change
//! handed over while none waited, or an acknowledgement) does it store its commit time in one
//! atomic and refresh the affected backlogs, each under its lock once: once per transaction
//! while idle, once per decided batch under load.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering as Atomic};

use duplex_connectors::{Origin, Position, Transaction};

use super::backlog::Backlog;
use super::outbox::{outbox_name, outbox_position};

/// Per site (plan order), the source commit time (µs) of the oldest change its reader handed
/// over and the coordinator has not decided; 0 when none.
#[derive(Debug)]
pub(super) struct Undecided {
    since: Vec<AtomicI64>,
}

impl Undecided {
    /// For `sites` sites, none undecided.
    pub(super) fn new(sites: usize) -> Undecided {
        Undecided {
            since: (0..sites).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    /// The oldest undecided change of site `index`, if any.
    pub(super) fn since(&self, index: usize) -> Option<i64> {
        match self.since[index].load(Atomic::Relaxed) {
            0 => None,
            micros => Some(micros),
        }
    }

    /// An attempt starts: its readers have handed nothing over yet.
    pub(super) fn reset(&self) {
        for since in &self.since {
            since.store(0, Atomic::Relaxed);
        }
    }
}

/// What one site's reader handed over and the coordinator has not decided yet.
pub(super) struct Handed {
    index: usize,
    outbox: String,
    /// (position, commit time in µs) of the application changes handed over, oldest first.
    waiting: VecDeque<(Position, i64)>,
    undecided: Arc<Undecided>,
    /// The backlogs of the other sites of this site's mappings.
    affected: Vec<Arc<Backlog>>,
}

impl Handed {
    /// Site `index` (named `site`), whose undecided changes are pending at `affected`.
    pub(super) fn new(
        index: usize,
        site: &str,
        undecided: Arc<Undecided>,
        affected: Vec<Arc<Backlog>>,
    ) -> Handed {
        Handed {
            index,
            outbox: outbox_name(site),
            waiting: VecDeque::new(),
            undecided,
            affected,
        }
    }

    /// `tx` is handed to the coordinator.
    pub(super) fn handed(&mut self, tx: &Transaction) {
        let echo = tx.origin == Origin::Duplex
            || tx
                .events
                .iter()
                .any(|e| outbox_position(e, &self.outbox).is_some());
        if echo {
            return;
        }
        let micros = tx.commit_time.timestamp_micros().max(1);
        self.waiting.push_back((tx.position.clone(), micros));
        if self.waiting.len() == 1 {
            self.publish();
        }
    }

    /// The coordinator decided everything up to `upto`.
    pub(super) fn decided(&mut self, upto: &Position) {
        let mut popped = false;
        // Positions of one site compare; were they not to, the change counts as decided
        // rather than pending for ever.
        while self
            .waiting
            .front()
            .is_some_and(|(position, _)| !matches!(position.compare(upto), Ok(Ordering::Greater)))
        {
            self.waiting.pop_front();
            popped = true;
        }
        if popped {
            self.publish();
        }
    }

    fn publish(&self) {
        let micros = self.waiting.front().map_or(0, |(_, micros)| *micros);
        self.undecided.since[self.index].store(micros, Atomic::Relaxed);
        for backlog in &self.affected {
            backlog.refresh();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Telemetry;
    use duplex_connectors::postgres::Lsn;

    fn tx(lsn: u64, seconds_ago: i64, origin: Origin) -> Transaction {
        Transaction {
            source: "a".into(),
            position: Position::Postgres(Lsn(lsn)),
            commit_time: chrono::Utc::now() - chrono::Duration::seconds(seconds_ago),
            origin,
            events: Vec::new(),
        }
    }

    #[test]
    fn a_change_handed_over_is_pending_at_the_other_sites_until_decided() {
        let telemetry = Telemetry::default();
        let link = telemetry.link("merge engine", "a, b", &["a".into(), "b".into()]);
        let undecided = Arc::new(Undecided::new(2));
        let a = Arc::new(Backlog::new(
            link.target_of("a").unwrap(),
            Arc::clone(&undecided),
            vec![1],
        ));
        let b = Arc::new(Backlog::new(
            link.target_of("b").unwrap(),
            Arc::clone(&undecided),
            vec![0],
        ));
        let mut handed = Handed::new(0, "a", Arc::clone(&undecided), vec![Arc::clone(&b)]);
        let lag = |site: usize| {
            telemetry.snapshot().links[0].targets[site]
                .lag_seconds
                .round()
        };
        // An echo is not pending anywhere.
        handed.handed(&tx(10, 90, Origin::Duplex));
        assert_eq!((lag(0), lag(1)), (0.0, 0.0));
        handed.handed(&tx(20, 60, Origin::Local));
        handed.handed(&tx(30, 30, Origin::Local));
        assert_eq!((lag(0), lag(1)), (0.0, 60.0));
        // Decided: its write into b waits in b's backlog; the next change is still undecided.
        b.queued([(
            1,
            (chrono::Utc::now() - chrono::Duration::seconds(60)).timestamp_micros(),
        )]);
        handed.decided(&Position::Postgres(Lsn(20)));
        assert_eq!(lag(1), 60.0);
        b.committed(
            &[(
                1,
                Arc::new(crate::engine::OutboxWrite {
                    mapping: "items".into(),
                    key: "1".into(),
                    op: duplex_connectors::Op::Insert,
                    key_row: Default::default(),
                    before: None,
                    after: None,
                    vector: Default::default(),
                }),
            )],
            &[],
        );
        assert_eq!(lag(1), 30.0);
        handed.decided(&Position::Postgres(Lsn(30)));
        assert_eq!((lag(0), lag(1)), (0.0, 0.0));
        // A new attempt forgets what the old readers handed over.
        handed.handed(&tx(40, 10, Origin::Local));
        assert_eq!(lag(1), 10.0);
        undecided.reset();
        a.refresh();
        b.refresh();
        assert_eq!((lag(0), lag(1)), (0.0, 0.0));
    }
}
