//! A batch of writes committed as one redb transaction.

use redb::{ReadableTable, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::sites::StoredRowVersions;
use super::tables::{
    BACKFILL_META, BACKFILL_RANGES, CONFLICTS, COUNTERS, DELETED_ROWS, HELD_CONFLICTS,
    NEXT_CONFLICT_ID, PENDING, POSITIONS, ROW_VERSIONS, SITE_IDS, SITE_NAMES, successor,
};
use super::{StateStore, decode_at, encode_as, unknown_site};
use crate::conflict::{ConflictRecord, ConflictStatus, Resolution};
use crate::error::{AtPath, StateError};
use crate::row_versions::RowVersions;

/// An open batch: its writes become visible, all together, at [`StateWriter::commit`].
///
/// Dropping it without committing aborts it and leaves the store as it was. Reads through it
/// see its own writes. Only one batch is open at a time: [`StateStore::begin_write`] waits
/// for the current one to end.
pub struct StateWriter<'s> {
    store: &'s StateStore,
    txn: WriteTransaction,
    /// Site ids this batch allocated; cached in the store once it commits.
    new_sites: Vec<(u32, String)>,
}

impl std::fmt::Debug for StateWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateWriter")
            .field("store", &self.store.path)
            .finish_non_exhaustive()
    }
}

impl<'s> StateWriter<'s> {
    pub(super) fn begin(store: &'s StateStore) -> Result<Self, StateError> {
        let mut txn = store.db.begin_write().at(&store.path)?;
        // Cannot fail: the store holds no persistent savepoints and is opened in the
        // single-process mode, the two cases that refuse a durability.
        txn.set_durability(store.durability)
            .expect("the state store's durability is accepted by redb");
        Ok(StateWriter {
            store,
            txn,
            new_sites: Vec::new(),
        })
    }

    /// Makes every write of this batch durable and visible, all at once.
    pub fn commit(self) -> Result<(), StateError> {
        let StateWriter {
            store,
            txn,
            new_sites,
        } = self;
        txn.commit().at(&store.path)?;
        let mut sites = store.sites_mut();
        for (id, name) in new_sites {
            sites.insert(id, name);
        }
        Ok(())
    }

    fn path(&self) -> &std::path::Path {
        &self.store.path
    }

    // --- positions ---

    /// Stores the position `site` has been read (or applied) up to.
    pub fn save_position<T: Serialize + ?Sized>(
        &mut self,
        site: &str,
        position: &T,
    ) -> Result<(), StateError> {
        let bytes = encode_as(position, || format!("position of site {site:?}"))?;
        let mut table = self.txn.open_table(POSITIONS).at(self.path())?;
        table.insert(site, bytes.as_slice()).at(self.path())?;
        Ok(())
    }

    /// Forgets the position stored under `site`; false when there was none.
    pub fn remove_position(&mut self, site: &str) -> Result<bool, StateError> {
        let mut table = self.txn.open_table(POSITIONS).at(self.path())?;
        let removed = table.remove(site).at(self.path())?.is_some();
        Ok(removed)
    }

    /// The position of `site`, as this batch sees it.
    pub fn position<T: DeserializeOwned>(&self, site: &str) -> Result<Option<T>, StateError> {
        let table = self.txn.open_table(POSITIONS).at(self.path())?;
        let Some(bytes) = table.get(site).at(self.path())? else {
            return Ok(None);
        };
        decode_at(self.path(), bytes.value(), || {
            format!("position of site {site:?}")
        })
        .map(Some)
    }

    // --- row versions ---

    /// Stores the versions of row `key` of `mapping`.
    pub fn put_row_versions(
        &mut self,
        mapping: &str,
        key: &[u8],
        versions: &RowVersions,
    ) -> Result<(), StateError> {
        let stored = StoredRowVersions::from_row(versions, |site| self.site_id(site))?;
        let bytes = encode_as(&stored, || {
            format!("row versions of a row of mapping {mapping:?}")
        })?;
        let path = &self.store.path;
        let mut rows = self.txn.open_table(ROW_VERSIONS).at(path)?;
        rows.insert((mapping, key), bytes.as_slice()).at(path)?;
        if let Some(deleted_at) = versions.deleted_at {
            let mut deleted = self.txn.open_table(DELETED_ROWS).at(path)?;
            deleted.insert((mapping, deleted_at, key), ()).at(path)?;
        }
        Ok(())
    }

    /// The versions of row `key` of `mapping`, as this batch sees them.
    pub fn row_versions(
        &self,
        mapping: &str,
        key: &[u8],
    ) -> Result<Option<RowVersions>, StateError> {
        let stored: StoredRowVersions = {
            let rows = self.txn.open_table(ROW_VERSIONS).at(self.path())?;
            let Some(bytes) = rows.get((mapping, key)).at(self.path())? else {
                return Ok(None);
            };
            decode_at(self.path(), bytes.value(), || {
                format!("row versions of a row of mapping {mapping:?}")
            })?
        };
        stored.into_row(|id| self.site_name(id)).map(Some)
    }

    /// Forgets the versions of row `key` of `mapping`; returns whether there were any.
    pub fn remove_row_versions(&mut self, mapping: &str, key: &[u8]) -> Result<bool, StateError> {
        let mut rows = self.txn.open_table(ROW_VERSIONS).at(self.path())?;
        // A deleted_rows entry left behind is stale and dropped by the next reclaim.
        Ok(rows.remove((mapping, key)).at(self.path())?.is_some())
    }

    /// Removes the versions of the rows of `mapping` deleted everywhere strictly before
    /// `older_than_millis`; returns how many were removed.
    pub fn reclaim_deleted(
        &mut self,
        mapping: &str,
        older_than_millis: u64,
    ) -> Result<usize, StateError> {
        let path = &self.store.path;
        let mut deleted = self.txn.open_table(DELETED_ROWS).at(path)?;
        let mut rows = self.txn.open_table(ROW_VERSIONS).at(path)?;
        let empty: &[u8] = &[];
        let expired = deleted
            .extract_from_if(
                (mapping, 0, empty)..(mapping, older_than_millis, empty),
                |_, _| true,
            )
            .at(path)?;
        let mut reclaimed = 0;
        for entry in expired {
            let (index_key, _) = entry.at(path)?;
            let (_, deleted_at, key) = index_key.value();
            let still_deleted_then = match rows.get((mapping, key)).at(path)? {
                None => false,
                Some(bytes) => {
                    let stored: StoredRowVersions = decode_at(path, bytes.value(), || {
                        format!("row versions of a row of mapping {mapping:?}")
                    })?;
                    stored.deleted_at == Some(deleted_at)
                }
            };
            // Otherwise the entry is stale: the row came back or was deleted again later
            // (and has its own entry), or is gone already.
            if still_deleted_then {
                rows.remove((mapping, key)).at(path)?;
                reclaimed += 1;
            }
        }
        Ok(reclaimed)
    }

    // --- pending applies ---

    /// Queues `item` with sequence `seq` for `site` (replacing any item with that sequence).
    pub fn put_pending<T: Serialize + ?Sized>(
        &mut self,
        site: &str,
        seq: u64,
        item: &T,
    ) -> Result<(), StateError> {
        let bytes = encode_as(item, || format!("pending item {seq} of site {site:?}"))?;
        let mut table = self.txn.open_table(PENDING).at(self.path())?;
        table
            .insert((site, seq), bytes.as_slice())
            .at(self.path())?;
        Ok(())
    }

    /// Removes the item `seq` queued for `site`; returns whether it was there.
    pub fn remove_pending(&mut self, site: &str, seq: u64) -> Result<bool, StateError> {
        let mut table = self.txn.open_table(PENDING).at(self.path())?;
        Ok(table.remove((site, seq)).at(self.path())?.is_some())
    }

    // --- backfill ---

    /// Records that range `range_id` of `table` in `mapping` is copied, with `rows` rows.
    pub fn mark_range_done(
        &mut self,
        mapping: &str,
        table: &str,
        range_id: u64,
        rows: u64,
    ) -> Result<(), StateError> {
        let mut ranges = self.txn.open_table(BACKFILL_RANGES).at(self.path())?;
        ranges
            .insert((mapping, table, range_id), rows)
            .at(self.path())?;
        Ok(())
    }

    /// Forgets the whole backfill of `mapping`: finished ranges of every table and the record.
    pub fn clear_backfill(&mut self, mapping: &str) -> Result<(), StateError> {
        let path = &self.store.path;
        let next = successor(mapping);
        let mut ranges = self.txn.open_table(BACKFILL_RANGES).at(path)?;
        ranges
            .retain_in((mapping, "", 0)..(next.as_str(), "", 0), |_, _| false)
            .at(path)?;
        let mut meta = self.txn.open_table(BACKFILL_META).at(path)?;
        meta.remove(mapping).at(path)?;
        Ok(())
    }

    /// Stores the engine's backfill record of `mapping`.
    pub fn save_backfill_meta<T: Serialize + ?Sized>(
        &mut self,
        mapping: &str,
        meta: &T,
    ) -> Result<(), StateError> {
        let bytes = encode_as(meta, || format!("backfill record of mapping {mapping:?}"))?;
        let mut table = self.txn.open_table(BACKFILL_META).at(self.path())?;
        table.insert(mapping, bytes.as_slice()).at(self.path())?;
        Ok(())
    }

    // --- conflict log ---

    /// Appends `record` to the conflict log and returns its id (ids start at 1 and grow).
    pub fn record_conflict(&mut self, record: &ConflictRecord) -> Result<u64, StateError> {
        let path = &self.store.path;
        let mut counters = self.txn.open_table(COUNTERS).at(path)?;
        let id = counters
            .get(NEXT_CONFLICT_ID)
            .at(path)?
            .map_or(1, |next| next.value());
        counters.insert(NEXT_CONFLICT_ID, id + 1).at(path)?;
        let bytes = encode_as(record, || format!("conflict {id}"))?;
        let mut conflicts = self.txn.open_table(CONFLICTS).at(path)?;
        conflicts.insert(id, bytes.as_slice()).at(path)?;
        if record.status == ConflictStatus::Held {
            let mut held = self.txn.open_table(HELD_CONFLICTS).at(path)?;
            held.insert(id, ()).at(path)?;
        }
        Ok(id)
    }

    /// Marks held conflict `id` as resolved.
    pub fn resolve_conflict(&mut self, id: u64, resolution: &Resolution) -> Result<(), StateError> {
        let path = &self.store.path;
        let mut conflicts = self.txn.open_table(CONFLICTS).at(path)?;
        let mut record: ConflictRecord = {
            let bytes = conflicts
                .get(id)
                .at(path)?
                .ok_or(StateError::UnknownConflict { id })?;
            decode_at(path, bytes.value(), || format!("conflict {id}"))?
        };
        if record.status != ConflictStatus::Held {
            return Err(StateError::ConflictNotHeld { id });
        }
        record.status = ConflictStatus::Resolved(resolution.clone());
        let bytes = encode_as(&record, || format!("conflict {id}"))?;
        conflicts.insert(id, bytes.as_slice()).at(path)?;
        let mut held = self.txn.open_table(HELD_CONFLICTS).at(path)?;
        held.remove(id).at(path)?;
        Ok(())
    }

    // --- site dictionary ---

    /// The id of site `name`, allocating one in this batch if it has none yet.
    fn site_id(&mut self, name: &str) -> Result<u32, StateError> {
        if let Some(id) = self.store.sites().id(name) {
            return Ok(id);
        }
        if let Some((id, _)) = self.new_sites.iter().find(|(_, n)| n == name) {
            return Ok(*id);
        }
        let path = &self.store.path;
        let mut ids = self.txn.open_table(SITE_IDS).at(path)?;
        if let Some(id) = ids.get(name).at(path)? {
            // Committed by an earlier batch after the cache was filled.
            let id = id.value();
            self.store.sites_mut().insert(id, name.to_owned());
            return Ok(id);
        }
        let mut names = self.txn.open_table(SITE_NAMES).at(path)?;
        let id = match names.last().at(path)? {
            None => 0,
            Some((last, _)) => {
                last.value()
                    .checked_add(1)
                    .ok_or_else(|| StateError::Malformed {
                        path: path.clone(),
                        what: "the site dictionary is full".to_owned(),
                    })?
            }
        };
        names.insert(id, name).at(path)?;
        ids.insert(name, id).at(path)?;
        self.new_sites.push((id, name.to_owned()));
        Ok(id)
    }

    /// The name of site `id`, as this batch sees the dictionary.
    fn site_name(&self, id: u32) -> Result<String, StateError> {
        if let Some(name) = self.store.sites().name(id) {
            return Ok(name.to_owned());
        }
        if let Some((_, name)) = self.new_sites.iter().find(|(i, _)| *i == id) {
            return Ok(name.clone());
        }
        let names = self.txn.open_table(SITE_NAMES).at(self.path())?;
        let name = names
            .get(id)
            .at(self.path())?
            .ok_or_else(|| unknown_site(self.path(), id))?
            .value()
            .to_owned();
        // Not allocated by this batch, so committed by an earlier one.
        self.store.sites_mut().insert(id, name.clone());
        Ok(name)
    }
}
