//! duplex-state: the embedded, crash-safe store of a duplex process.
//!
//! It keeps what the engine must not lose across a crash or a restart: the position of every
//! site's change stream, the version vectors of every replicated row, the applies still
//! pending per target, the progress of a backfill, and the conflict log. It knows nothing of
//! databases: keys, positions and row images are the engine's values, stored through
//! [`codec`] or as opaque bytes.
//!
//! Every write is one redb transaction committed durably, so after a crash each write is
//! either entirely present or entirely absent; see [`store`] for the argument.

#![warn(missing_docs)]

pub mod codec;
pub mod conflict;
pub mod error;
pub mod row_versions;
pub mod store;
pub mod version_vector;

pub use codec::CodecError;
pub use conflict::{ConflictRecord, ConflictSide, ConflictStatus, Resolution};
pub use error::StateError;
pub use row_versions::RowVersions;
pub use store::{CommitDurability, STATE_FILE, StateStore, StateWriter, StoreOptions};
pub use version_vector::{Causality, VersionVector};
