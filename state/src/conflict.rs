//! Records of the conflict log.
//!
//! The log is append-only: a record is never deleted, and the only change it accepts is the
//! move from [`ConflictStatus::Held`] to [`ConflictStatus::Resolved`]. Row images are opaque
//! bytes (encoded by the engine), because this crate knows nothing of databases; the
//! `*_display` fields carry the human-readable forms `duplex conflicts` prints.

use serde::{Deserialize, Serialize};

use crate::version_vector::VersionVector;

/// One detected conflict: two or more concurrent versions of a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictRecord {
    /// The mapping the row belongs to.
    pub mapping: String,
    /// The row's primary key, as encoded by the engine.
    pub key: Vec<u8>,
    /// The primary key for people to read.
    pub key_display: String,
    /// The concurrent versions, one per site involved.
    pub sites: Vec<ConflictSide>,
    /// The name of the mapping's conflict policy that was applied.
    pub policy: String,
    /// What the policy decided, for people to read.
    pub decision: String,
    /// Unix millis at which the conflict was detected.
    pub detected_at_millis: u64,
    /// Whether the conflict is settled or waits for a person.
    pub status: ConflictStatus,
}

/// One site's version in a conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictSide {
    /// The site that holds this version.
    pub site: String,
    /// The version's vector.
    pub vector: VersionVector,
    /// Commit time of the change at its site, unix millis.
    pub commit_time_millis: i64,
    /// The row image as encoded by the engine; `None` when this version is a delete.
    pub row: Option<Vec<u8>>,
    /// The row image for people to read.
    pub row_display: String,
}

/// Whether a conflict is settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConflictStatus {
    /// The policy is "hold": the row waits for a person to choose.
    Held,
    /// The conflict is settled.
    Resolved(Resolution),
}

/// How and when a conflict was settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The site whose version won; `None` when the result merges several versions.
    pub winner: Option<String>,
    /// Who settled it: the policy's name, or the operator who chose.
    pub by: String,
    /// Unix millis at which it was settled.
    pub at_millis: u64,
}
