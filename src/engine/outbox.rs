//! The outbox: the writes the coordinator decided for each site, numbered, until their echo.
//!
//! Every write the coordinator decides for a site is an [`OutboxWrite`] numbered from 1 per site
//! (its sequence number). The entries are stored in the state store in the same transaction as
//! the decision that made them (see the engine's module doc), and kept here in memory as well,
//! by number and by row (mapping, key), until the site's reader meets the echo of the target
//! transaction that carried them.
//!
//! A writer records how far it got as [`Position::Outbox`]`(seq)` under [`outbox_name`] in the
//! site's `duplex.positions`, in the same target transaction as the writes; its echo therefore
//! names the last entry it covers ([`outbox_position`]). Entries up to that number leave the
//! outbox; one of them whose row the echo does not contain was skipped by its condition.
//!
//! Why the by-row index is right: [`Outbox::insert`] and [`Outbox::remove`] are the only ways
//! entries come and go, and each updates both maps, so every numbered entry is listed under its
//! row exactly once, in number order, and a row with no entries has no index entry.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use duplex_connectors::{ChangeEvent, Op, Position, Row};
use duplex_state::VersionVector;
use serde::{Deserialize, Serialize};

/// The name a site's outbox position is recorded under in that site's `duplex.positions`.
pub fn outbox_name(site: &str) -> String {
    format!("merge:{site}")
}

/// One write of the outbox: a row version for one site.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxWrite {
    /// The mapping.
    pub mapping: String,
    /// The row's key text (its identity in the state store).
    pub key: String,
    /// Insert, update or delete at the site.
    pub op: Op,
    /// The key columns (canonical).
    pub key_row: Row,
    /// The image the site is expected to hold (the write's condition); `None` for an insert.
    pub before: Option<Row>,
    /// The image written; `None` for a delete.
    pub after: Option<Row>,
    /// The version vector of the image written.
    pub vector: VersionVector,
}

/// One site's outbox entries not yet echoed, by sequence number and by row (mapping, key).
#[derive(Debug, Default)]
pub(super) struct Outbox {
    entries: BTreeMap<u64, OutboxWrite>,
    by_row: HashMap<String, HashMap<String, BTreeSet<u64>>>,
}

impl Outbox {
    /// Adds entry `seq`.
    pub(super) fn insert(&mut self, seq: u64, write: OutboxWrite) {
        self.by_row
            .entry(write.mapping.clone())
            .or_default()
            .entry(write.key.clone())
            .or_default()
            .insert(seq);
        self.entries.insert(seq, write);
    }

    /// Takes entry `seq` out, if it is there.
    pub(super) fn remove(&mut self, seq: u64) -> Option<OutboxWrite> {
        let write = self.entries.remove(&seq)?;
        if let Some(rows) = self.by_row.get_mut(&write.mapping) {
            if let Some(seqs) = rows.get_mut(&write.key) {
                seqs.remove(&seq);
                if seqs.is_empty() {
                    rows.remove(&write.key);
                }
            }
            if rows.is_empty() {
                self.by_row.remove(&write.mapping);
            }
        }
        Some(write)
    }

    /// The row's entries, oldest first.
    pub(super) fn of_row(
        &self,
        mapping: &str,
        key: &str,
    ) -> impl Iterator<Item = (u64, &OutboxWrite)> {
        self.by_row
            .get(mapping)
            .and_then(|rows| rows.get(key))
            .into_iter()
            .flatten()
            .map(|seq| (*seq, &self.entries[seq]))
    }

    /// Entry `seq`.
    pub(super) fn get(&self, seq: u64) -> Option<&OutboxWrite> {
        self.entries.get(&seq)
    }

    /// Entry `seq`, to change in place (its row and number stay).
    pub(super) fn get_mut(&mut self, seq: u64) -> Option<&mut OutboxWrite> {
        self.entries.get_mut(&seq)
    }

    /// The numbers of the entries up to `upto`, inclusive, oldest first.
    pub(super) fn up_to(&self, upto: u64) -> Vec<u64> {
        self.entries.range(..=upto).map(|(s, _)| *s).collect()
    }
}

/// The outbox sequence number a `duplex.positions` change records for `outbox`.
pub(super) fn outbox_position(event: &ChangeEvent, outbox: &str) -> Option<u64> {
    match duplex_connectors::apply::recorded_position(event)? {
        (source, Position::Outbox(seq)) if source == outbox => Some(seq),
        _ => None,
    }
}
