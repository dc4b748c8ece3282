//! What one batch changes in the state store, kept decoded until the batch ends.
//!
//! A batch reads and stores the same rows several times: a row's change and the echoes of
//! the writes it queued, the two passes over an echo's rows, several changes of one row. Each
//! read of the store opens a table and decodes the versions and the engine's record; each
//! write opens the table again. So a batch keeps every row it stored, decoded (its versions
//! carry the record encoded, as they are written), and every outbox entry it queued or
//! retired, and writes each once, at its end, just before the state-store transaction
//! commits ([`BatchWrites::flush`]), opening each table once.
//!
//! Why this is the same as writing through: every read of a row in the batch goes through
//! [`BatchWrites::row`] first, so it sees the row as the batch last stored it, as it would
//! have seen the store; nothing is committed before the flush, so a failure (which drops the
//! transaction) loses the same as before; and the outbox entries are written from the
//! coordinator's outboxes, whose entries change only together with the batch's record of them
//! (`queued` / `retired`), in the state they have at the commit.

use std::collections::BTreeMap;

use duplex_state::{RowVersions, StateWriter};
use foldhash::HashMap;

use super::super::EngineError;
use super::super::outbox::Outbox;
use super::super::rows::RowData;

/// The rows and outbox entries a batch changed.
#[derive(Default)]
pub(super) struct BatchWrites {
    /// Rows stored in this batch, by mapping, then key text: the versions as they are to be
    /// written (`payload` the encoded record) and the record itself.
    rows: HashMap<String, HashMap<String, (RowVersions, RowData)>>,
    /// Outbox entries changed in this batch, by (site index, number): whether the entry is
    /// still queued (written from the outbox) or retired (removed).
    entries: BTreeMap<(usize, u64), bool>,
}

impl BatchWrites {
    /// The row as this batch stored it last, if it did.
    pub(super) fn row(&self, mapping: &str, key: &str) -> Option<&(RowVersions, RowData)> {
        self.rows.get(mapping)?.get(key)
    }

    /// Keeps the row's new versions and record, to be written at the end of the batch.
    pub(super) fn store(&mut self, mapping: &str, key: &str, rv: RowVersions, data: RowData) {
        let rows = match self.rows.get_mut(mapping) {
            Some(rows) => rows,
            None => self.rows.entry(mapping.to_owned()).or_default(),
        };
        match rows.get_mut(key) {
            Some(row) => *row = (rv, data),
            None => {
                rows.insert(key.to_owned(), (rv, data));
            }
        }
    }

    /// Outbox entry `seq` of site `index` was queued or changed.
    pub(super) fn queued(&mut self, index: usize, seq: u64) {
        self.entries.insert((index, seq), true);
    }

    /// Outbox entry `seq` of site `index` left the outbox.
    pub(super) fn retired(&mut self, index: usize, seq: u64) {
        self.entries.insert((index, seq), false);
    }

    /// Writes what the batch changed through `w` (sites named by `site_name(index)`) and
    /// forgets it.
    pub(super) fn flush<'a>(
        &mut self,
        w: &mut StateWriter<'_>,
        outboxes: &[Outbox],
        site_name: impl Fn(usize) -> &'a str,
    ) -> Result<(), EngineError> {
        for (mapping, rows) in std::mem::take(&mut self.rows) {
            w.put_many_row_versions(
                &mapping,
                rows.iter().map(|(key, (rv, _))| (key.as_bytes(), rv)),
            )?;
        }
        let entries = std::mem::take(&mut self.entries);
        let mut by_site: BTreeMap<usize, Vec<(u64, _)>> = BTreeMap::new();
        for ((index, seq), queued) in entries {
            let write = if queued {
                outboxes[index].get(seq)
            } else {
                None
            };
            by_site.entry(index).or_default().push((seq, write));
        }
        for (index, items) in by_site {
            w.write_many_pending(site_name(index), items)?;
        }
        Ok(())
    }
}
