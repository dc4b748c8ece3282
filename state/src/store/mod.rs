//! The state store: one redb file in the state directory.
//!
//! # Why a crash cannot leave half a write
//!
//! Every logical write is exactly one redb write transaction: a single-call method such as
//! [`StateStore::save_position`] opens one and commits it, and a batch ([`StateStore::write`]
//! or [`StateStore::begin_write`]) puts all of its row versions, positions, conflicts, ranges
//! and pending items in one. redb is copy-on-write: a transaction writes new pages beside the
//! committed ones and makes them visible only when `commit` switches the database's root to
//! the new tree, a single checksummed commit slot flipped in the file header. Transactions are
//! committed with [`redb::Durability::Immediate`], so the pages and that switch are fsynced
//! before `commit` returns. A process killed at any instant therefore leaves either the old
//! root (the transaction is absent) or the new one (it is entirely present); on the next open
//! redb falls back to the newest commit slot whose checksum verifies and rebuilds its
//! allocator state. A batch dropped without `commit` is aborted and leaves nothing.
//! The crash test (`tests/crash.rs`) kills a writer with SIGKILL at varied moments and checks
//! exactly this.
//!
//! # One process per directory
//!
//! redb locks the file for the lifetime of the open [`StateStore`] (the default
//! `ExclusiveWriter` mode), so a second open, from this or another process, fails with
//! [`StateError::InUse`]. The lock is the kernel's: it goes away with the process, even after
//! SIGKILL.
//!
//! # Privacy
//!
//! The directory is made 0700 and its files 0600 whatever the umask, and looser modes found
//! at open are tightened with a warning; see [`modes`].
//!
//! # Versioning
//!
//! A new store records its layout version and the name of the value encoding
//! ([`codec::FORMAT`]); an open refuses a store that records others, so a
//! future format change is reported, not misread. Values of caller types (positions, pending
//! items, backfill records) are encoded through [`codec`]; keeping their shape
//! compatible is the caller's business.

pub mod modes;
mod sites;
mod tables;
mod writer;

pub use writer::StateWriter;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use redb::{
    Database, DatabaseError, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, StorageError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::conflict::{ConflictRecord, Resolution};
use crate::error::{AtPath, StateError};
use crate::row_versions::RowVersions;
use sites::{SiteDictionary, StoredRowVersions};
use tables::{
    BACKFILL_META, BACKFILL_RANGES, CONFLICTS, COUNTERS, DELETED_ROWS, HELD_CONFLICTS, META,
    META_CODEC, META_DEPLOYMENT, META_SCHEMA_VERSION, PENDING, POSITIONS, ROW_VERSIONS,
    SCHEMA_VERSION, SITE_IDS, SITE_NAMES,
};

/// Name of the store file inside the state directory.
pub const STATE_FILE: &str = "state.redb";

/// How durable each commit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CommitDurability {
    /// Every commit is on disk (fsynced) when it returns. What duplex runs with.
    #[default]
    Immediate,
    /// Commits are atomic but reach the disk only at the next `Immediate` commit or a clean
    /// close; a crash may lose the latest of them (never part of one). For tests only.
    Deferred,
}

/// Options of [`StateStore::open_with`].
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Durability of every commit.
    pub durability: CommitDurability,
}

/// The embedded, crash-safe store of one duplex process.
pub struct StateStore {
    db: Database,
    dir: PathBuf,
    path: PathBuf,
    durability: redb::Durability,
    sites: RwLock<SiteDictionary>,
    deployment: String,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// Opens (creating if needed) the store in `dir`, with every commit fsynced.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        Self::open_with(dir, &StoreOptions::default())
    }

    /// Opens (creating if needed) the store in `dir` with `options`.
    pub fn open_with(dir: &Path, options: &StoreOptions) -> Result<StateStore, StateError> {
        let tightened = modes::secure_dir(dir).map_err(|source| StateError::CreateDir {
            dir: dir.to_owned(),
            source,
        })?;
        for change in tightened {
            tracing::warn!(
                path = %change.path.display(),
                "{} had mode {:04o}, readable or writable by other users (the state holds row \
                 images and the conflict log): set to {:04o}",
                change.path.display(),
                change.old_mode,
                change.new_mode
            );
        }
        let path = dir.join(STATE_FILE);
        // A panic inside redb (a damaged page it does not recognise as damaged) is a damaged
        // store, not a crash of duplex.
        std::panic::catch_unwind(|| Self::open_file(dir, &path, options)).unwrap_or_else(|panic| {
            Err(StateError::Damaged {
                path: path.clone(),
                what: panic_text(&panic),
            })
        })
    }

    /// [`StateStore::open_with`] for the store file `path`.
    fn open_file(
        dir: &Path,
        path: &Path,
        options: &StoreOptions,
    ) -> Result<StateStore, StateError> {
        let path = path.to_owned();
        let mut db = match std::fs::metadata(&path) {
            Ok(meta) if meta.len() == 0 => return Err(StateError::Empty { path }),
            Ok(_) => redb::Builder::new()
                .open(&path)
                .map_err(|source| open_error(dir, &path, source))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => create_new(dir, &path)?,
            Err(source) => {
                return Err(StateError::Open {
                    path,
                    source: DatabaseError::Storage(StorageError::Io(source)),
                });
            }
        };
        // A store file just created has the umask's mode (inside the private directory).
        modes::restrict(&path, modes::FILE_MODE).map_err(|source| StateError::Open {
            path: path.clone(),
            source: DatabaseError::Storage(StorageError::Io(source)),
        })?;
        // Every page's checksum, once per start: a damaged store is refused here rather than
        // read wrongly later.
        match db.check_integrity() {
            Ok(true) => {}
            Ok(false) => {
                return Err(StateError::Damaged {
                    path,
                    what: "its integrity check found damaged pages and repaired them from the \
                           previous commit; the repaired state may be older than the targets"
                        .to_owned(),
                });
            }
            Err(source) => return Err(open_error(dir, &path, source)),
        }
        let mut store = StateStore {
            db,
            dir: dir.to_owned(),
            path,
            durability: match options.durability {
                CommitDurability::Immediate => redb::Durability::Immediate,
                CommitDurability::Deferred => redb::Durability::None,
            },
            sites: RwLock::new(SiteDictionary::default()),
            deployment: String::new(),
        };
        store.deployment = store.prepare()?;
        store.load_sites()?;
        Ok(store)
    }

    /// Closes the store, reporting any error that dropping it would ignore.
    pub fn close(self) -> Result<(), StateError> {
        let path = self.path;
        self.db
            .close()
            .map_err(|source| StateError::Close { path, source })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The identity of the deployment this store belongs to: a UUID made when the store was
    /// created. duplex records it on the servers it claims (slots, publications, two-way
    /// sites), so a second deployment, or this one after its state was lost, is recognised.
    pub fn deployment_id(&self) -> &str {
        &self.deployment
    }

    /// Starts a batch: everything written through it is committed together, or not at all.
    pub fn begin_write(&self) -> Result<StateWriter<'_>, StateError> {
        StateWriter::begin(self)
    }

    /// Runs `f` in one batch and commits it if `f` succeeds; if `f` fails nothing is written.
    pub fn write<R, E: From<StateError>>(
        &self,
        f: impl FnOnce(&mut StateWriter<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut writer = self.begin_write()?;
        let result = f(&mut writer)?;
        writer.commit()?;
        Ok(result)
    }

    // --- positions ---

    /// Stores the position `site` has been read (or applied) up to.
    pub fn save_position<T: Serialize + ?Sized>(
        &self,
        site: &str,
        position: &T,
    ) -> Result<(), StateError> {
        self.write(|w| w.save_position(site, position))
    }

    /// Forgets the position stored under `site`; false when there was none.
    pub fn remove_position(&self, site: &str) -> Result<bool, StateError> {
        self.write(|w| w.remove_position(site))
    }

    /// The stored position of `site`.
    pub fn position<T: DeserializeOwned>(&self, site: &str) -> Result<Option<T>, StateError> {
        let txn = self.read()?;
        let table = txn.open_table(POSITIONS).at(&self.path)?;
        let Some(bytes) = table.get(site).at(&self.path)? else {
            return Ok(None);
        };
        self.decode(bytes.value(), || format!("position of site {site:?}"))
            .map(Some)
    }

    /// All stored positions, by site.
    pub fn positions<T: DeserializeOwned>(&self) -> Result<BTreeMap<String, T>, StateError> {
        let txn = self.read()?;
        let table = txn.open_table(POSITIONS).at(&self.path)?;
        let mut positions = BTreeMap::new();
        for entry in table.iter().at(&self.path)? {
            let (site, bytes) = entry.at(&self.path)?;
            let site = site.value();
            let position = self.decode(bytes.value(), || format!("position of site {site:?}"))?;
            positions.insert(site.to_owned(), position);
        }
        Ok(positions)
    }

    // --- row versions ---

    /// The versions of row `key` of `mapping`.
    pub fn row_versions(
        &self,
        mapping: &str,
        key: &[u8],
    ) -> Result<Option<RowVersions>, StateError> {
        let txn = self.read()?;
        let table = txn.open_table(ROW_VERSIONS).at(&self.path)?;
        let Some(bytes) = table.get((mapping, key)).at(&self.path)? else {
            return Ok(None);
        };
        let stored: StoredRowVersions = self.decode(bytes.value(), || {
            format!("row versions of a row of mapping {mapping:?}")
        })?;
        stored.into_row(|id| self.site_name(&txn, id)).map(Some)
    }

    /// Stores the versions of row `key` of `mapping`.
    pub fn put_row_versions(
        &self,
        mapping: &str,
        key: &[u8],
        versions: &RowVersions,
    ) -> Result<(), StateError> {
        self.write(|w| w.put_row_versions(mapping, key, versions))
    }

    /// Forgets the versions of row `key` of `mapping`; returns whether there were any.
    pub fn remove_row_versions(&self, mapping: &str, key: &[u8]) -> Result<bool, StateError> {
        self.write(|w| w.remove_row_versions(mapping, key))
    }

    /// Removes the versions of the rows of `mapping` deleted everywhere strictly before
    /// `older_than_millis`; returns how many were removed.
    pub fn reclaim_deleted(
        &self,
        mapping: &str,
        older_than_millis: u64,
    ) -> Result<usize, StateError> {
        self.write(|w| w.reclaim_deleted(mapping, older_than_millis))
    }

    // --- pending applies ---

    /// Queues `item` with sequence `seq` for `site` (replacing any item with that sequence).
    pub fn put_pending<T: Serialize + ?Sized>(
        &self,
        site: &str,
        seq: u64,
        item: &T,
    ) -> Result<(), StateError> {
        self.write(|w| w.put_pending(site, seq, item))
    }

    /// The items queued for `site`, in sequence order.
    pub fn pending<T: DeserializeOwned>(&self, site: &str) -> Result<Vec<(u64, T)>, StateError> {
        let txn = self.read()?;
        let table = txn.open_table(PENDING).at(&self.path)?;
        let mut items = Vec::new();
        for entry in table.range((site, 0)..=(site, u64::MAX)).at(&self.path)? {
            let (key, bytes) = entry.at(&self.path)?;
            let (_, seq) = key.value();
            let item = self.decode(bytes.value(), || {
                format!("pending item {seq} of site {site:?}")
            })?;
            items.push((seq, item));
        }
        Ok(items)
    }

    /// How many items are queued for `site` (counted without decoding them).
    pub fn pending_count(&self, site: &str) -> Result<u64, StateError> {
        let txn = self.read()?;
        let table = txn.open_table(PENDING).at(&self.path)?;
        let mut count = 0;
        for entry in table.range((site, 0)..=(site, u64::MAX)).at(&self.path)? {
            entry.at(&self.path)?;
            count += 1;
        }
        Ok(count)
    }

    /// Removes the item `seq` queued for `site`; returns whether it was there.
    pub fn remove_pending(&self, site: &str, seq: u64) -> Result<bool, StateError> {
        self.write(|w| w.remove_pending(site, seq))
    }

    // --- backfill ---

    /// Records that range `range_id` of `table` in `mapping` is copied, with `rows` rows.
    pub fn mark_range_done(
        &self,
        mapping: &str,
        table: &str,
        range_id: u64,
        rows: u64,
    ) -> Result<(), StateError> {
        self.write(|w| w.mark_range_done(mapping, table, range_id, rows))
    }

    /// The finished ranges of `table` in `mapping`: range id → rows copied.
    pub fn done_ranges(
        &self,
        mapping: &str,
        table: &str,
    ) -> Result<BTreeMap<u64, u64>, StateError> {
        let txn = self.read()?;
        let ranges = txn.open_table(BACKFILL_RANGES).at(&self.path)?;
        let mut done = BTreeMap::new();
        for entry in ranges
            .range((mapping, table, 0)..=(mapping, table, u64::MAX))
            .at(&self.path)?
        {
            let (key, rows) = entry.at(&self.path)?;
            done.insert(key.value().2, rows.value());
        }
        Ok(done)
    }

    /// Forgets the whole backfill of `mapping`: finished ranges of every table and the record.
    pub fn clear_backfill(&self, mapping: &str) -> Result<(), StateError> {
        self.write(|w| w.clear_backfill(mapping))
    }

    /// Stores the engine's backfill record of `mapping`.
    pub fn save_backfill_meta<T: Serialize + ?Sized>(
        &self,
        mapping: &str,
        meta: &T,
    ) -> Result<(), StateError> {
        self.write(|w| w.save_backfill_meta(mapping, meta))
    }

    /// The engine's backfill record of `mapping`.
    pub fn backfill_meta<T: DeserializeOwned>(
        &self,
        mapping: &str,
    ) -> Result<Option<T>, StateError> {
        let txn = self.read()?;
        let table = txn.open_table(BACKFILL_META).at(&self.path)?;
        let Some(bytes) = table.get(mapping).at(&self.path)? else {
            return Ok(None);
        };
        self.decode(bytes.value(), || {
            format!("backfill record of mapping {mapping:?}")
        })
        .map(Some)
    }

    /// The mappings with a backfill record, sorted.
    pub fn backfill_mappings(&self) -> Result<Vec<String>, StateError> {
        let txn = self.read()?;
        let table = txn.open_table(BACKFILL_META).at(&self.path)?;
        let mut names = Vec::new();
        for entry in table.iter().at(&self.path)? {
            let (name, _) = entry.at(&self.path)?;
            names.push(name.value().to_owned());
        }
        Ok(names)
    }

    // --- conflict log ---

    /// Appends `record` to the conflict log and returns its id (ids start at 1 and grow).
    pub fn record_conflict(&self, record: &ConflictRecord) -> Result<u64, StateError> {
        self.write(|w| w.record_conflict(record))
    }

    /// Marks held conflict `id` as resolved.
    pub fn resolve_conflict(&self, id: u64, resolution: &Resolution) -> Result<(), StateError> {
        self.write(|w| w.resolve_conflict(id, resolution))
    }

    /// The conflict with id `id`.
    pub fn conflict(&self, id: u64) -> Result<Option<ConflictRecord>, StateError> {
        let txn = self.read()?;
        let table = txn.open_table(CONFLICTS).at(&self.path)?;
        let Some(bytes) = table.get(id).at(&self.path)? else {
            return Ok(None);
        };
        self.decode(bytes.value(), || format!("conflict {id}"))
            .map(Some)
    }

    /// The whole conflict log, by id.
    pub fn conflicts(&self) -> Result<Vec<(u64, ConflictRecord)>, StateError> {
        let txn = self.read()?;
        let table = txn.open_table(CONFLICTS).at(&self.path)?;
        let mut records = Vec::new();
        for entry in table.iter().at(&self.path)? {
            let (id, bytes) = entry.at(&self.path)?;
            let id = id.value();
            records.push((id, self.decode(bytes.value(), || format!("conflict {id}"))?));
        }
        Ok(records)
    }

    /// The conflicts waiting for a person, by id.
    pub fn held_conflicts(&self) -> Result<Vec<(u64, ConflictRecord)>, StateError> {
        let txn = self.read()?;
        let held = txn.open_table(HELD_CONFLICTS).at(&self.path)?;
        let table = txn.open_table(CONFLICTS).at(&self.path)?;
        let mut records = Vec::new();
        for entry in held.iter().at(&self.path)? {
            let id = entry.at(&self.path)?.0.value();
            let bytes = table
                .get(id)
                .at(&self.path)?
                .ok_or_else(|| StateError::Malformed {
                    path: self.path.clone(),
                    what: format!("held conflict {id} is missing from the conflict log"),
                })?;
            records.push((id, self.decode(bytes.value(), || format!("conflict {id}"))?));
        }
        Ok(records)
    }

    /// How many conflicts wait for a person.
    pub fn held_conflict_count(&self) -> Result<u64, StateError> {
        let txn = self.read()?;
        let held = txn.open_table(HELD_CONFLICTS).at(&self.path)?;
        held.len().at(&self.path)
    }

    // --- internals ---

    fn read(&self) -> Result<ReadTransaction, StateError> {
        self.db.begin_read().at(&self.path)
    }

    fn decode<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
        what: impl FnOnce() -> String,
    ) -> Result<T, StateError> {
        decode_at(&self.path, bytes, what)
    }

    /// The name of site `id`, from the cache or else from `txn`.
    fn site_name(&self, txn: &ReadTransaction, id: u32) -> Result<String, StateError> {
        if let Some(name) = self.sites().name(id) {
            return Ok(name.to_owned());
        }
        let names = txn.open_table(SITE_NAMES).at(&self.path)?;
        let name = names
            .get(id)
            .at(&self.path)?
            .ok_or_else(|| unknown_site(&self.path, id))?
            .value()
            .to_owned();
        self.sites_mut().insert(id, name.clone());
        Ok(name)
    }

    fn sites(&self) -> std::sync::RwLockReadGuard<'_, SiteDictionary> {
        // The dictionary only ever gains committed entries, so a panic elsewhere cannot have
        // left it inconsistent.
        self.sites.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn sites_mut(&self) -> std::sync::RwLockWriteGuard<'_, SiteDictionary> {
        self.sites.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates the tables of a new store, or checks the versions recorded in an existing one;
    /// returns the deployment identity (made here for a new store, or for one written before
    /// the identity was recorded).
    fn prepare(&self) -> Result<String, StateError> {
        let path = &self.path;
        let txn = self.db.begin_write().at(path)?;
        let fresh = txn.list_tables().at(path)?.next().is_none();
        {
            let mut meta = txn.open_table(META).at(path)?;
            if fresh {
                meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION.to_le_bytes().as_slice())
                    .at(path)?;
                meta.insert(META_CODEC, codec::FORMAT.as_bytes()).at(path)?;
            } else {
                let version = meta.get(META_SCHEMA_VERSION).at(path)?.ok_or_else(|| {
                    StateError::Malformed {
                        path: path.clone(),
                        what: "it records no schema version, so it is not a duplex state store"
                            .to_owned(),
                    }
                })?;
                let found = <[u8; 4]>::try_from(version.value())
                    .map(u32::from_le_bytes)
                    .map_err(|_| StateError::Malformed {
                        path: path.clone(),
                        what: format!("its schema version is {:?}", version.value()),
                    })?;
                if found != SCHEMA_VERSION {
                    return Err(StateError::SchemaVersion {
                        path: path.clone(),
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
                let found = meta
                    .get(META_CODEC)
                    .at(path)?
                    .map(|bytes| String::from_utf8_lossy(bytes.value()).into_owned())
                    .unwrap_or_default();
                if found != codec::FORMAT {
                    return Err(StateError::CodecFormat {
                        path: path.clone(),
                        found,
                        expected: codec::FORMAT.to_owned(),
                    });
                }
            }
        }
        txn.open_table(POSITIONS).at(path)?;
        txn.open_table(ROW_VERSIONS).at(path)?;
        txn.open_table(DELETED_ROWS).at(path)?;
        txn.open_table(SITE_IDS).at(path)?;
        txn.open_table(SITE_NAMES).at(path)?;
        txn.open_table(PENDING).at(path)?;
        txn.open_table(BACKFILL_RANGES).at(path)?;
        txn.open_table(BACKFILL_META).at(path)?;
        txn.open_table(CONFLICTS).at(path)?;
        txn.open_table(HELD_CONFLICTS).at(path)?;
        txn.open_table(COUNTERS).at(path)?;
        let deployment = {
            let mut meta = txn.open_table(META).at(path)?;
            let recorded = meta
                .get(META_DEPLOYMENT)
                .at(path)?
                .map(|bytes| String::from_utf8_lossy(bytes.value()).into_owned());
            match recorded {
                Some(id) => id,
                None => {
                    let id = uuid::Uuid::new_v4().to_string();
                    meta.insert(META_DEPLOYMENT, id.as_bytes()).at(path)?;
                    id
                }
            }
        };
        txn.commit().at(path)?;
        Ok(deployment)
    }

    fn load_sites(&self) -> Result<(), StateError> {
        let txn = self.read()?;
        let names = txn.open_table(SITE_NAMES).at(&self.path)?;
        let mut sites = self.sites_mut();
        for entry in names.iter().at(&self.path)? {
            let (id, name) = entry.at(&self.path)?;
            sites.insert(id.value(), name.value().to_owned());
        }
        Ok(())
    }
}

/// Decodes a stored value, naming the store and the value on failure.
fn decode_at<T: DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, StateError> {
    codec::decode(bytes).map_err(|source| StateError::Decode {
        path: path.to_owned(),
        what: what(),
        source,
    })
}

/// Encodes a value to store, naming it on failure.
fn encode_as<T: Serialize + ?Sized>(
    value: &T,
    what: impl FnOnce() -> String,
) -> Result<Vec<u8>, StateError> {
    codec::encode(value).map_err(|source| StateError::Encode {
        what: what(),
        source,
    })
}

fn unknown_site(path: &Path, id: u32) -> StateError {
    StateError::Malformed {
        path: path.to_owned(),
        what: format!("a row version refers to site id {id}, which the site dictionary lacks"),
    }
}

/// The [`StateError`] for a failed open of the store file.
/// Creates a new store file: written as `<file>.new` and renamed into place once redb has
/// initialised it, so `state.redb` is never an empty or half-made file (an empty one can only
/// come from outside duplex, and is refused).
fn create_new(dir: &Path, path: &Path) -> Result<Database, StateError> {
    let fresh = path.with_extension("redb.new");
    let io_error = |source: std::io::Error| StateError::Open {
        path: fresh.clone(),
        source: DatabaseError::Storage(StorageError::Io(source)),
    };
    match std::fs::remove_file(&fresh) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error(error)),
    }
    let db = redb::Builder::new()
        .create(&fresh)
        .map_err(|source| open_error(dir, &fresh, source))?;
    drop(db);
    std::fs::File::open(&fresh)
        .and_then(|file| file.sync_all())
        .map_err(io_error)?;
    std::fs::rename(&fresh, path).map_err(io_error)?;
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error)?;
    redb::Builder::new()
        .open(path)
        .map_err(|source| open_error(dir, path, source))
}

/// The message of a caught panic.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "redb panicked".to_owned())
}

fn open_error(dir: &Path, path: &Path, source: DatabaseError) -> StateError {
    match &source {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            StateError::InUse {
                dir: dir.to_owned(),
                source,
            }
        }
        DatabaseError::UpgradeRequired(_)
        | DatabaseError::RepairAborted
        | DatabaseError::Storage(StorageError::Corrupted(_)) => StateError::Corrupt {
            path: path.to_owned(),
            source,
        },
        DatabaseError::Storage(StorageError::Io(err))
            if err.kind() == std::io::ErrorKind::InvalidData =>
        {
            StateError::Corrupt {
                path: path.to_owned(),
                source,
            }
        }
        _ => StateError::Open {
            path: path.to_owned(),
            source,
        },
    }
}
