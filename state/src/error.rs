//! Errors of the state store. Each keeps its source error and says what the operator can do.

use std::path::{Path, PathBuf};

use crate::codec::CodecError;

/// An operation on the state store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The state directory could not be created or made private.
    #[error(
        "cannot create state directory {dir} or make it private (mode 0700, files 0600): {source}; check that the path is right and owned by the user duplex runs as"
    )]
    CreateDir {
        /// The state directory.
        dir: PathBuf,
        /// The file system's error.
        #[source]
        source: std::io::Error,
    },

    /// Another process (or another handle in this process) has the store open.
    #[error(
        "state directory {dir} is in use by another duplex process; stop that process first, or give each duplex process its own state directory"
    )]
    InUse {
        /// The state directory.
        dir: PathBuf,
        /// redb's refusal.
        #[source]
        source: redb::DatabaseError,
    },

    /// The store file is damaged, or was written by an incompatible redb version.
    #[error(
        "state store at {path} is corrupt or from an incompatible version: {source}; restore the state directory from a backup, or move it aside and run `duplex backfill` again"
    )]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: redb::DatabaseError,
    },

    /// The store file exists but is empty: not something duplex ever leaves behind (a new
    /// store is created beside it and renamed into place), so the state was lost outside
    /// duplex, e.g. by a failed restore or copy.
    #[error(
        "state store at {path} is empty (0 bytes): duplex never leaves an empty store, so its state was lost outside duplex (a failed restore or copy?); restore the state directory from a backup. Starting with an empty store would resume readers at the sources' current positions and lose the changes in between"
    )]
    Empty {
        /// The store file.
        path: PathBuf,
    },

    /// Reading the store file made redb fail inside (a damaged page it did not detect as
    /// such).
    #[error(
        "state store at {path} is damaged ({what}); restore the state directory from a backup, or move it aside and run `duplex backfill` again"
    )]
    Damaged {
        /// The store file.
        path: PathBuf,
        /// What redb reported.
        what: String,
    },

    /// The store file could not be opened for another reason (permissions, I/O).
    #[error(
        "cannot open state store at {path}: {source}; check the file's permissions and the disk"
    )]
    Open {
        /// The store file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: redb::DatabaseError,
    },

    /// The store was written with a layout this build does not understand.
    #[error(
        "state store at {path} has schema version {found}, but this duplex understands version {expected}; run the duplex release that wrote it, or move the state directory aside and run `duplex backfill` again"
    )]
    SchemaVersion {
        /// The store file.
        path: PathBuf,
        /// The version recorded in the store.
        found: u32,
        /// The version this build writes.
        expected: u32,
    },

    /// The store was written with another value encoding.
    #[error(
        "state store at {path} was written with value encoding {found:?}, but this duplex uses {expected:?}; run the duplex release that wrote it, or move the state directory aside and run `duplex backfill` again"
    )]
    CodecFormat {
        /// The store file.
        path: PathBuf,
        /// The encoding recorded in the store.
        found: String,
        /// The encoding this build uses.
        expected: String,
    },

    /// The store holds something this build cannot make sense of.
    #[error(
        "state store at {path} is corrupt or from an incompatible version: {what}; restore the state directory from a backup, or move it aside and run `duplex backfill` again"
    )]
    Malformed {
        /// The store file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },

    /// A stored value could not be decoded.
    #[error(
        "state store at {path} is corrupt or from an incompatible version: cannot decode the {what}: {source}; restore the state directory from a backup, or move it aside and run `duplex backfill` again"
    )]
    Decode {
        /// The store file.
        path: PathBuf,
        /// Which value.
        what: String,
        /// The codec's error.
        #[source]
        source: CodecError,
    },

    /// A value handed to the store could not be encoded.
    #[error(
        "cannot encode the {what} for the state store: {source}; this is a bug in duplex, please report it"
    )]
    Encode {
        /// Which value.
        what: String,
        /// The codec's error.
        #[source]
        source: CodecError,
    },

    /// Reading or writing the store file failed.
    #[error(
        "state store at {path} failed: {source}; check the disk (free space, I/O errors) and restart duplex"
    )]
    Storage {
        /// The store file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: redb::StorageError,
    },

    /// A table of the store could not be opened.
    #[error(
        "state store at {path} is corrupt or from an incompatible version: {source}; restore the state directory from a backup, or move it aside and run `duplex backfill` again"
    )]
    Table {
        /// The store file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: redb::TableError,
    },

    /// A transaction could not be started.
    #[error(
        "cannot start a transaction on state store at {path}: {source}; check the disk and restart duplex"
    )]
    Transaction {
        /// The store file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: redb::TransactionError,
    },

    /// A write transaction could not be committed.
    #[error(
        "cannot commit to state store at {path}: {source}; the write may not have been kept; check the disk (free space, I/O errors) and restart duplex"
    )]
    Commit {
        /// The store file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: redb::CommitError,
    },

    /// The store could not be closed cleanly.
    #[error("cannot close state store at {path}: {source}; the next open will check and repair it")]
    Close {
        /// The store file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: redb::DatabaseError,
    },

    /// No conflict has this id.
    #[error("there is no conflict with id {id}; list the conflicts with `duplex conflicts`")]
    UnknownConflict {
        /// The id asked for.
        id: u64,
    },

    /// The conflict was already resolved.
    #[error("conflict {id} is already resolved; only held conflicts can be resolved")]
    ConflictNotHeld {
        /// The id asked for.
        id: u64,
    },
}

/// A redb error that becomes a [`StateError`] once the store's path is known.
pub(crate) trait RedbFailure {
    /// The [`StateError`] for this failure on the store at `path`.
    fn at(self, path: &Path) -> StateError;
}

impl RedbFailure for redb::StorageError {
    fn at(self, path: &Path) -> StateError {
        StateError::Storage {
            path: path.to_owned(),
            source: self,
        }
    }
}

impl RedbFailure for redb::TableError {
    fn at(self, path: &Path) -> StateError {
        match self {
            redb::TableError::Storage(source) => source.at(path),
            source => StateError::Table {
                path: path.to_owned(),
                source,
            },
        }
    }
}

impl RedbFailure for redb::TransactionError {
    fn at(self, path: &Path) -> StateError {
        match self {
            redb::TransactionError::Storage(source) => source.at(path),
            source => StateError::Transaction {
                path: path.to_owned(),
                source,
            },
        }
    }
}

impl RedbFailure for redb::CommitError {
    fn at(self, path: &Path) -> StateError {
        StateError::Commit {
            path: path.to_owned(),
            source: self,
        }
    }
}

/// Attaches the store's path to a redb result.
pub(crate) trait AtPath<T> {
    /// Converts the error, if any, into a [`StateError`] naming `path`.
    fn at(self, path: &Path) -> Result<T, StateError>;
}

impl<T, E: RedbFailure> AtPath<T> for Result<T, E> {
    fn at(self, path: &Path) -> Result<T, StateError> {
        self.map_err(|err| err.at(path))
    }
}
