//! Compact on-disk form of [`RowVersions`]: site names interned as small integer ids.
//!
//! A row's record names every site up to `1 + n` times (merged vector, then each held
//! vector), so with names such as `shop-postgres` the names would dominate the record. The
//! store therefore keeps a dictionary site name ↔ `u32` id (tables `site_ids` and
//! `site_names`) and writes ids instead. A held vector equal to the merged one, the common
//! case once sites have converged, is written as a single marker byte.
//!
//! The dictionary is append-only: an id, once committed, names the same site forever. A new
//! id is allocated inside the write transaction that first needs it, from the tables of that
//! transaction, so an id is durable exactly when the rows that use it are. The in-memory
//! [`SiteDictionary`] caches committed entries only; a reader that meets an id it does not
//! know (committed after the cache was filled) looks it up in its own read transaction.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::error::StateError;
use crate::row_versions::RowVersions;
use crate::version_vector::VersionVector;

/// Cache of committed dictionary entries.
#[derive(Debug, Default)]
pub(crate) struct SiteDictionary {
    ids: HashMap<String, u32>,
    names: HashMap<u32, String>,
}

impl SiteDictionary {
    /// The id of `name`, if cached.
    pub(crate) fn id(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    /// The name of `id`, if cached.
    pub(crate) fn name(&self, id: u32) -> Option<&str> {
        self.names.get(&id).map(String::as_str)
    }

    /// Caches a committed entry.
    pub(crate) fn insert(&mut self, id: u32, name: String) {
        self.ids.insert(name.clone(), id);
        self.names.insert(id, name);
    }
}

/// A version vector with sites as ids, in id order.
type StoredVector = Vec<(u32, u64)>;

/// The encoded form of [`RowVersions`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredRowVersions {
    merged: StoredVector,
    /// Per site id, the held vector; `None` when it equals `merged`.
    held: Vec<(u32, Option<StoredVector>)>,
    /// See [`RowVersions::deleted_at`].
    pub(crate) deleted_at: Option<u64>,
    /// See [`RowVersions::payload`].
    payload: Vec<u8>,
}

impl StoredRowVersions {
    /// The stored form of `row`, interning site names with `site_id`.
    pub(crate) fn from_row(
        row: &RowVersions,
        mut site_id: impl FnMut(&str) -> Result<u32, StateError>,
    ) -> Result<Self, StateError> {
        let merged = store_vector(&row.merged, &mut site_id)?;
        let mut held = Vec::with_capacity(row.held.len());
        for (site, vector) in &row.held {
            let vector = if *vector == row.merged {
                None
            } else {
                Some(store_vector(vector, &mut site_id)?)
            };
            held.push((site_id(site)?, vector));
        }
        held.sort_unstable_by_key(|(id, _)| *id);
        Ok(StoredRowVersions {
            merged,
            held,
            deleted_at: row.deleted_at,
            payload: row.payload.clone(),
        })
    }

    /// The row versions this stands for, resolving site ids with `site_name`.
    pub(crate) fn into_row(
        self,
        mut site_name: impl FnMut(u32) -> Result<String, StateError>,
    ) -> Result<RowVersions, StateError> {
        let merged = load_vector(&self.merged, &mut site_name)?;
        let mut held = BTreeMap::new();
        for (id, vector) in self.held {
            let vector = match vector {
                None => merged.clone(),
                Some(vector) => load_vector(&vector, &mut site_name)?,
            };
            held.insert(site_name(id)?, vector);
        }
        Ok(RowVersions {
            merged,
            held,
            deleted_at: self.deleted_at,
            payload: self.payload,
        })
    }
}

fn store_vector(
    vector: &VersionVector,
    site_id: &mut impl FnMut(&str) -> Result<u32, StateError>,
) -> Result<StoredVector, StateError> {
    let mut stored = vector
        .iter()
        .map(|(site, counter)| Ok((site_id(site)?, counter)))
        .collect::<Result<StoredVector, StateError>>()?;
    stored.sort_unstable_by_key(|(id, _)| *id);
    Ok(stored)
}

fn load_vector(
    stored: &StoredVector,
    site_name: &mut impl FnMut(u32) -> Result<String, StateError>,
) -> Result<VersionVector, StateError> {
    stored
        .iter()
        .map(|&(id, counter)| Ok((site_name(id)?, counter)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::StoredRowVersions;
    use crate::codec;
    use crate::error::StateError;
    use crate::row_versions::RowVersions;
    use crate::version_vector::VersionVector;

    const SITES: [&str; 3] = ["shop-postgres", "erp-mariadb", "wms-mysql"];

    fn converged(counter: u64) -> RowVersions {
        let merged: VersionVector = SITES.iter().map(|site| (*site, counter)).collect();
        RowVersions {
            held: SITES
                .iter()
                .map(|site| ((*site).to_owned(), merged.clone()))
                .collect(),
            merged,
            deleted_at: None,
            payload: Vec::new(),
        }
    }

    /// Stored size of `row` with ids from a fixed dictionary, checking the round trip.
    fn stored_len(row: &RowVersions) -> usize {
        let ids: BTreeMap<&str, u32> = SITES.iter().zip(0..).map(|(s, i)| (*s, i)).collect();
        let stored = StoredRowVersions::from_row(row, |site| Ok(ids[site])).unwrap();
        let bytes = codec::encode(&stored).unwrap();
        let back: StoredRowVersions = codec::decode(&bytes).unwrap();
        let row_back = back
            .into_row(|id| Ok::<_, StateError>(SITES[id as usize].to_owned()))
            .unwrap();
        assert_eq!(&row_back, row);
        bytes.len()
    }

    #[test]
    fn three_site_rows_stay_small() {
        let small = converged(200);
        let large = converged(1_000_000);
        let mut diverged = large.clone();
        diverged
            .held
            .get_mut("erp-mariadb")
            .unwrap()
            .set("shop-postgres", 999_000);
        let deleted = RowVersions {
            deleted_at: Some(1_700_000_000_000),
            ..large.clone()
        };
        let report = [
            ("converged, counters < 251", &small),
            ("converged, counters ~1e6", &large),
            ("one held vector behind, counters ~1e6", &diverged),
            ("converged and deleted, counters ~1e6", &deleted),
        ];
        for (what, row) in report {
            println!(
                "RowVersions, 3 sites, {what}: stored {} bytes, public type through codec {} bytes",
                stored_len(row),
                codec::encode(row).unwrap().len()
            );
        }
        assert!(stored_len(&small) <= 16, "{}", stored_len(&small));
        assert!(stored_len(&large) <= 28, "{}", stored_len(&large));
    }
}
