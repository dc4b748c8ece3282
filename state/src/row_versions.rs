//! The version record the store keeps for every replicated row.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::version_vector::VersionVector;

/// The versions of one row (mapping + primary key) known to the merge engine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowVersions {
    /// The newest version known anywhere (the pointwise max of everything seen).
    pub merged: VersionVector,
    /// Per site, the vector of the version that site holds.
    pub held: BTreeMap<String, VersionVector>,
    /// Unix millis at which the row became deleted at every site; `None` while it exists
    /// anywhere. Rows deleted before a horizon are dropped by `reclaim_deleted`.
    pub deleted_at: Option<u64>,
    /// The engine's own record of the row (its row images, a held conflict), encoded by the
    /// engine; opaque to the store. Empty when the engine keeps nothing besides the vectors.
    pub payload: Vec<u8>,
}
