//! Acknowledging to the source what every target committed, recorded first.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duplex_connectors::Position;
use duplex_state::StateStore;

use super::LinkError;
use super::feed::Feed;

/// How often a link acknowledges to its source at most.
pub(crate) const ACK_EVERY: Duration = Duration::from_secs(1);

/// The state-store key of the newest position a link acknowledged to its source.
pub fn acknowledged_key(source: &str) -> String {
    format!("link-acknowledged:{source}")
}

/// Acknowledges to the source the newest item every target has committed, at most every
/// [`ACK_EVERY`]. A PostgreSQL position is recorded in the state store before it is sent, so
/// the next start can tell a slot confirmed beyond anything duplex acknowledged (re-created
/// or advanced by someone else; see `StreamOptions::acknowledged`).
pub(crate) struct Acker {
    pub(super) key: String,
    /// The newest position recorded.
    pub(super) recorded: Option<Position>,
    /// The newest position every target committed, not yet sent.
    pub(crate) ready: Option<Position>,
    /// When a position was last sent.
    pub(super) sent: Instant,
}

impl Acker {
    /// The acker of source `site`, which recorded acknowledging up to `recorded`.
    pub(crate) fn new(site: &str, recorded: Option<Position>) -> Acker {
        Acker {
            key: acknowledged_key(site),
            recorded,
            ready: None,
            sent: Instant::now(),
        }
    }

    /// Takes every item every target has committed off `unacked`.
    pub(super) fn offer(&mut self, unacked: &mut VecDeque<(u64, Position)>, low_water: u64) {
        if let Some(position) = acknowledgeable(unacked, low_water) {
            self.ready = Some(position);
        }
    }

    /// Sends the ready position when [`ACK_EVERY`] has passed (or `now`), recording it first.
    pub(crate) async fn flush(
        &mut self,
        state: &Arc<StateStore>,
        stream: &Feed,
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
        if matches!(position, Position::Postgres(_)) && newer && stream.records_acknowledged() {
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
pub(super) fn acknowledgeable(
    unacked: &mut VecDeque<(u64, Position)>,
    low_water: u64,
) -> Option<Position> {
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
pub(super) fn not_after(a: &Position, b: &Position) -> bool {
    !matches!(a.compare(b), Ok(Ordering::Greater))
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

    #[test]
    fn a_sql_server_position_round_trips_through_the_state_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = duplex_state::StateStore::open(dir.path()).unwrap();
        let position = Position::Mssql(duplex_connectors::mssql::CdcPosition {
            commit_lsn: "0000002A:000001B8:0003".parse().unwrap(),
            seqval: Some("0000002A:000001B0:0001".parse().unwrap()),
        });
        store
            .save_position(&acknowledged_key("erp"), &position)
            .unwrap();
        assert_eq!(
            store
                .position::<Position>(&acknowledged_key("erp"))
                .unwrap(),
            Some(position)
        );
    }
}
