//! The tables of the store file and the layout version they make up.
//!
//! Changing a table's key or value type, or the meaning of its bytes, requires a new
//! [`SCHEMA_VERSION`]: `open` refuses a store whose recorded version differs.

use redb::TableDefinition;

/// The layout version written to every new store and checked on every open.
pub(crate) const SCHEMA_VERSION: u32 = 2;

/// Store-level facts: the schema version and the value encoding.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Key in [`META`] of the schema version (u32, little endian).
pub(crate) const META_SCHEMA_VERSION: &str = "schema_version";
/// Key in [`META`] of the name of the value encoding (UTF-8).
pub(crate) const META_CODEC: &str = "codec";
/// Key in [`META`] of the deployment identity (a UUID in text form, UTF-8), made when the
/// store is created (or first opened by a release that records it).
pub(crate) const META_DEPLOYMENT: &str = "deployment";

/// Site name → encoded position.
pub(crate) const POSITIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("positions");

/// (mapping, encoded primary key) → encoded `StoredRowVersions`.
pub(crate) const ROW_VERSIONS: TableDefinition<(&str, &[u8]), &[u8]> =
    TableDefinition::new("row_versions");

/// (mapping, deleted_at millis, encoded primary key) → (): rows deleted everywhere, by time.
///
/// An entry may be stale (the row came back, or was deleted again later): reclaiming checks
/// the row itself before removing it, so this index never needs to be read on a write.
pub(crate) const DELETED_ROWS: TableDefinition<(&str, u64, &[u8]), ()> =
    TableDefinition::new("deleted_rows");

/// Site name → compact site id used inside stored row versions.
pub(crate) const SITE_IDS: TableDefinition<&str, u32> = TableDefinition::new("site_ids");
/// Compact site id → site name.
pub(crate) const SITE_NAMES: TableDefinition<u32, &str> = TableDefinition::new("site_names");

/// (target site, sequence) → encoded pending apply.
pub(crate) const PENDING: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("pending");

/// (mapping, table, range id) → rows copied in that finished range.
pub(crate) const BACKFILL_RANGES: TableDefinition<(&str, &str, u64), u64> =
    TableDefinition::new("backfill_ranges");
/// Mapping → encoded backfill record of the engine.
pub(crate) const BACKFILL_META: TableDefinition<&str, &[u8]> =
    TableDefinition::new("backfill_meta");

/// Conflict id → encoded `ConflictRecord`.
pub(crate) const CONFLICTS: TableDefinition<u64, &[u8]> = TableDefinition::new("conflicts");
/// Ids of the conflicts whose status is `Held`.
pub(crate) const HELD_CONFLICTS: TableDefinition<u64, ()> = TableDefinition::new("held_conflicts");

/// Named counters.
pub(crate) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// Key in [`COUNTERS`] of the next conflict id to hand out.
pub(crate) const NEXT_CONFLICT_ID: &str = "next_conflict_id";

/// The smallest string greater than `s` (`s` followed by a NUL byte), so that the tuple keys
/// whose first element is exactly `s` are those in `(s, ..)..(successor(s), ..)`.
pub(crate) fn successor(s: &str) -> String {
    let mut next = String::with_capacity(s.len() + 1);
    next.push_str(s);
    next.push('\0');
    next
}
