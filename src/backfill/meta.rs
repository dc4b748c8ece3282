//! The durable record of one mapping's backfill in the state store, its earlier layouts, and
//! the range markers written on the targets.
//!
//! # Layouts
//!
//! The state store's codec is positional (bincode), so a record is read in the layout it was
//! written in: [`load_meta`] tries the current layout, then each earlier one, newest first.
//! A record of an earlier layout never decodes as a later one: the fields appended later are
//! missing at its end, and an attempt position stored as JSON text starts with the text's
//! length (at least 12: `{"Outbox":1}`), which is no variant index of [`Position`]. A record
//! with no attempt at all reads the same in both layouts, and means the same.
//!
//! - V1: no `key_columns` / `key_ranges`.
//! - V2: attempt positions as JSON text of [`Position`].
//! - V3: attempt positions as [`Position`]s, no `resync`.
//! - current: with `resync` and `caught_up`.

use std::collections::BTreeMap;

use duplex_connectors::{Position, Value};
use duplex_state::{StateError, StateStore};
use serde::{Deserialize, Serialize};

/// The durable record of one mapping's backfill (state store, per mapping).
///
/// Ranges are cut one of two ways: on a single integer key column (`key_column`, bounds in
/// `ranges`), or on the whole primary key (`key_columns`, bounds as key values in
/// `key_ranges`; `ranges` is then empty). Records written in an earlier layout are read by
/// [`load_meta`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackfillMeta {
    /// Source site.
    pub source: String,
    /// Source table.
    pub table: String,
    /// The integer key column ranges are cut on; `None`: `key_columns`, or one range.
    pub key_column: Option<String>,
    /// Range bounds by range id on `key_column`: `lo < key <= hi`.
    pub ranges: Vec<(Option<i128>, Option<i128>)>,
    /// Rows in the first snapshot.
    pub rows: u64,
    /// The snapshot position of every attempt, in order.
    pub attempts: Vec<Position>,
    /// Range id -> index of the attempt it was copied in.
    pub copied_in: BTreeMap<u64, u32>,
    /// Whether the handover position was written.
    pub complete: bool,
    /// The primary-key columns ranges are cut on when the key is not one integer column.
    pub key_columns: Vec<String>,
    /// Range bounds by range id on `key_columns`, one value per column: `lo < key <= hi`
    /// compared as rows by the source database.
    pub key_ranges: Vec<KeyBounds>,
    /// A `--resync` (into targets that hold rows): every range replaces the target's rows of
    /// its key range, deleting those the source does not have.
    pub resync: bool,
    /// The attempt whose snapshot every range copied in it or before it was caught up to (0:
    /// none was): a range's rows are as of the snapshot of the later of the two.
    pub caught_up: u32,
}

/// The layout [`BackfillMeta`] had before `resync` and `caught_up`.
#[derive(Deserialize)]
struct BackfillMetaV3 {
    source: String,
    table: String,
    key_column: Option<String>,
    ranges: Vec<(Option<i128>, Option<i128>)>,
    rows: u64,
    attempts: Vec<Position>,
    copied_in: BTreeMap<u64, u32>,
    complete: bool,
    key_columns: Vec<String>,
    key_ranges: Vec<KeyBounds>,
}

impl From<BackfillMetaV3> for BackfillMeta {
    fn from(m: BackfillMetaV3) -> BackfillMeta {
        BackfillMeta {
            source: m.source,
            table: m.table,
            key_column: m.key_column,
            ranges: m.ranges,
            rows: m.rows,
            attempts: m.attempts,
            copied_in: m.copied_in,
            complete: m.complete,
            key_columns: m.key_columns,
            key_ranges: m.key_ranges,
            resync: false,
            caught_up: 0,
        }
    }
}

/// The bounds of a range cut on the whole primary key: `(lo, hi)`, open when `None`.
pub type KeyBounds = (Option<Vec<Value>>, Option<Vec<Value>>);

/// The layout [`BackfillMeta`] had while attempt positions were stored as JSON text.
#[derive(Deserialize)]
struct BackfillMetaV2 {
    source: String,
    table: String,
    key_column: Option<String>,
    ranges: Vec<(Option<i128>, Option<i128>)>,
    rows: u64,
    attempts: Vec<String>,
    copied_in: BTreeMap<u64, u32>,
    complete: bool,
    key_columns: Vec<String>,
    key_ranges: Vec<KeyBounds>,
}

/// The layout [`BackfillMeta`] had before `key_columns` and `key_ranges`.
#[derive(Deserialize)]
struct BackfillMetaV1 {
    source: String,
    table: String,
    key_column: Option<String>,
    ranges: Vec<(Option<i128>, Option<i128>)>,
    rows: u64,
    attempts: Vec<String>,
    copied_in: BTreeMap<u64, u32>,
    complete: bool,
}

impl From<BackfillMetaV1> for BackfillMetaV2 {
    fn from(m: BackfillMetaV1) -> BackfillMetaV2 {
        BackfillMetaV2 {
            source: m.source,
            table: m.table,
            key_column: m.key_column,
            ranges: m.ranges,
            rows: m.rows,
            attempts: m.attempts,
            copied_in: m.copied_in,
            complete: m.complete,
            key_columns: Vec::new(),
            key_ranges: Vec::new(),
        }
    }
}

impl BackfillMetaV2 {
    /// The record in the current layout; `None` when an attempt position is not the JSON of a
    /// [`Position`] (the record is damaged).
    fn upgrade(self) -> Option<BackfillMeta> {
        let attempts = self
            .attempts
            .iter()
            .map(|text| serde_json::from_str(text).ok())
            .collect::<Option<Vec<Position>>>()?;
        Some(BackfillMeta {
            source: self.source,
            table: self.table,
            key_column: self.key_column,
            ranges: self.ranges,
            rows: self.rows,
            attempts,
            copied_in: self.copied_in,
            complete: self.complete,
            key_columns: self.key_columns,
            key_ranges: self.key_ranges,
            resync: false,
            caught_up: 0,
        })
    }
}

/// Reads a mapping's backfill record, in the current layout or an earlier one. A record that
/// fits no layout is reported with the current layout's decoding error.
pub fn load_meta(state: &StateStore, mapping: &str) -> Result<Option<BackfillMeta>, StateError> {
    let error = match state.backfill_meta::<BackfillMeta>(mapping) {
        Ok(meta) => return Ok(meta),
        Err(error) => error,
    };
    if let Ok(old) = state.backfill_meta::<BackfillMetaV3>(mapping) {
        return Ok(old.map(BackfillMeta::from));
    }
    let old = match state.backfill_meta::<BackfillMetaV2>(mapping) {
        Ok(old) => old,
        Err(_) => match state.backfill_meta::<BackfillMetaV1>(mapping) {
            Ok(old) => old.map(BackfillMetaV2::from),
            Err(_) => return Err(error),
        },
    };
    match old {
        None => Ok(None),
        Some(old) => old.upgrade().map(Some).ok_or(error),
    }
}

impl BackfillMeta {
    /// Rows copied by attempt `attempt` (from the state store's progress).
    pub fn rows_copied_in(&self, done: &BTreeMap<u64, u64>, attempt: u32) -> u64 {
        self.copied_in
            .iter()
            .filter(|(_, a)| **a == attempt)
            .filter_map(|(range, _)| done.get(range))
            .sum()
    }

    /// The number of ranges.
    pub fn range_count(&self) -> usize {
        if self.key_columns.is_empty() {
            self.ranges.len()
        } else {
            self.key_ranges.len()
        }
    }

    /// The snapshot position of attempt `attempt`.
    pub(super) fn attempt_position(&self, attempt: u32) -> &Position {
        &self.attempts[attempt as usize]
    }

    /// The snapshot the rows of range `range` on the targets are as of: the one it was copied
    /// in, or a later one the ranges were caught up to; `None` when it was not copied.
    pub(super) fn as_of(&self, range: u64) -> Option<&Position> {
        let copied = *self.copied_in.get(&range)?;
        Some(self.attempt_position(copied.max(self.caught_up)))
    }
}

/// The source name under which a range and the position it was read at are recorded on a
/// target (in `duplex.positions`, in the range's own target transaction), by the deployment
/// `deployment` (the state directory's identity). The deployment is part of it because
/// another duplex may backfill a mapping of the same name into the same database (MariaDB
/// keeps one `duplex.positions` per server): its marker of a range, under a name without the
/// deployment, would make this backfill's range look written (the applier skips a transaction
/// whose position the target already holds) and the range's rows would never be copied.
pub(super) fn marker(mapping: &str, deployment: &str, range: u64) -> String {
    format!("{}{range}", marker_prefix(mapping, deployment))
}

/// The source name under which the catch-up of a resumed backfill of `mapping` from `site`
/// records on a target how far it applied (for the deployment `deployment`, like
/// [`crate::link::position_key`]).
pub(super) fn catch_up_key(mapping: &str, site: &str, deployment: &str) -> String {
    format!(
        "catch-up:{mapping}:{}",
        crate::link::position_key(site, deployment)
    )
}

/// The deployment a backfill records its handover positions on the targets under, and reads
/// them back as: with a `[bus]` the bus's (`bus-<stream_prefix>`), which the bus's writers and
/// its coordinator read whichever machine they run on; else this state directory's.
pub(crate) fn positions_deployment(config: &crate::config::Config, state: &StateStore) -> String {
    match &config.bus {
        Some(bus) => bus.deployment(),
        None => state.deployment_id().to_owned(),
    }
}

/// What every marker of `mapping` by `deployment` starts with.
pub(super) fn marker_prefix(mapping: &str, deployment: &str) -> String {
    format!("backfill:{mapping}@{deployment}:")
}

/// The SQL `LIKE` pattern of every marker of `mapping` by `deployment`, with `!` as its escape character
/// (every kind's statement names it: `ESCAPE '!'`, the same on each and under any
/// `sql_mode`): a `_` or `%` in the mapping's name matches only itself, so the markers of a
/// mapping named `a-b` are not those of `a_b`.
pub(super) fn markers_of(mapping: &str, deployment: &str) -> String {
    let mut pattern = String::new();
    for c in marker_prefix(mapping, deployment).chars() {
        if matches!(c, '!' | '%' | '_') {
            pattern.push('!');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Saves `meta` as `mapping`'s record, off the async threads.
pub(super) async fn save_meta(
    state: &std::sync::Arc<StateStore>,
    mapping: &str,
    meta: &BackfillMeta,
) -> Result<(), super::BackfillError> {
    let name = mapping.to_owned();
    let state = state.clone();
    let saved = meta.clone();
    tokio::task::spawn_blocking(move || state.save_backfill_meta(&name, &saved))
        .await
        .map_err(|e| super::BackfillError::Crashed(e.to_string()))??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use duplex_connectors::mysql::BinlogPosition;
    use duplex_connectors::postgres::Lsn;

    use super::*;

    #[test]
    fn markers_are_the_deployments_own_and_their_pattern_matches_only_them() {
        assert_eq!(marker("orders", "d1", 3), "backfill:orders@d1:3");
        assert_ne!(marker("orders", "d1", 3), marker("orders", "d2", 3));
        assert_eq!(markers_of("orders", "d1"), "backfill:orders@d1:%");
        assert_eq!(markers_of("stock_a", "d_1"), "backfill:stock!_a@d!_1:%");
        assert_eq!(markers_of("50%!off", "d"), "backfill:50!%!!off@d:%");
        assert!(marker("stock_a", "d", 3).starts_with(&marker_prefix("stock_a", "d")));
    }

    /// The V2 layout as it was written.
    #[derive(Serialize)]
    struct WrittenV2 {
        source: String,
        table: String,
        key_column: Option<String>,
        ranges: Vec<(Option<i128>, Option<i128>)>,
        rows: u64,
        attempts: Vec<String>,
        copied_in: BTreeMap<u64, u32>,
        complete: bool,
        key_columns: Vec<String>,
        key_ranges: Vec<KeyBounds>,
    }

    /// The V3 layout as it was written.
    #[derive(Serialize)]
    struct WrittenV3 {
        source: String,
        table: String,
        key_column: Option<String>,
        ranges: Vec<(Option<i128>, Option<i128>)>,
        rows: u64,
        attempts: Vec<Position>,
        copied_in: BTreeMap<u64, u32>,
        complete: bool,
        key_columns: Vec<String>,
        key_ranges: Vec<KeyBounds>,
    }

    /// The V1 layout as it was written.
    #[derive(Serialize)]
    struct WrittenV1 {
        source: String,
        table: String,
        key_column: Option<String>,
        ranges: Vec<(Option<i128>, Option<i128>)>,
        rows: u64,
        attempts: Vec<String>,
        copied_in: BTreeMap<u64, u32>,
        complete: bool,
    }

    fn positions() -> Vec<Position> {
        let mut binlog = BinlogPosition::new("mariadb-bin.000002", 4711);
        binlog.gtid = Some("0-1-42".into());
        vec![
            Position::Postgres(Lsn(0x16_B374_D848)),
            Position::Mysql(binlog),
        ]
    }

    fn json(positions: &[Position]) -> Vec<String> {
        positions
            .iter()
            .map(|p| serde_json::to_string(p).unwrap())
            .collect()
    }

    #[test]
    fn records_of_every_layout_load() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateStore::open(dir.path()).unwrap();
        let copied_in = BTreeMap::from([(0, 0), (1, 1)]);
        let key_ranges = vec![
            (None, Some(vec![Value::Text("m".into()), Value::Int(3)])),
            (Some(vec![Value::Text("m".into()), Value::Int(3)]), None),
        ];
        state
            .save_backfill_meta(
                "v2",
                &WrittenV2 {
                    source: "store".into(),
                    table: "public.items".into(),
                    key_column: None,
                    ranges: Vec::new(),
                    rows: 7,
                    attempts: json(&positions()),
                    copied_in: copied_in.clone(),
                    complete: false,
                    key_columns: vec!["region".into(), "id".into()],
                    key_ranges: key_ranges.clone(),
                },
            )
            .unwrap();
        state
            .save_backfill_meta(
                "v1",
                &WrittenV1 {
                    source: "store".into(),
                    table: "public.items".into(),
                    key_column: Some("id".into()),
                    ranges: vec![(None, Some(10)), (Some(10), None)],
                    rows: 12,
                    attempts: json(&positions()),
                    copied_in: copied_in.clone(),
                    complete: true,
                },
            )
            .unwrap();
        let current = BackfillMeta {
            source: "store".into(),
            table: "public.items".into(),
            key_column: Some("id".into()),
            ranges: vec![(None, None)],
            rows: 1,
            attempts: positions(),
            copied_in: BTreeMap::new(),
            complete: false,
            key_columns: Vec::new(),
            key_ranges: Vec::new(),
            resync: true,
            caught_up: 1,
        };
        state.save_backfill_meta("current", &current).unwrap();
        state
            .save_backfill_meta(
                "v3",
                &WrittenV3 {
                    source: "store".into(),
                    table: "public.items".into(),
                    key_column: Some("id".into()),
                    ranges: vec![(None, None)],
                    rows: 1,
                    attempts: positions(),
                    copied_in: BTreeMap::new(),
                    complete: false,
                    key_columns: Vec::new(),
                    key_ranges: Vec::new(),
                },
            )
            .unwrap();

        let v2 = load_meta(&state, "v2").unwrap().unwrap();
        assert_eq!(v2.attempts, positions());
        assert_eq!(v2.copied_in, copied_in);
        assert_eq!(v2.key_columns, ["region", "id"]);
        assert_eq!(v2.key_ranges, key_ranges);
        assert_eq!(v2.rows, 7);

        let v1 = load_meta(&state, "v1").unwrap().unwrap();
        assert_eq!(v1.attempts, positions());
        assert_eq!(v1.ranges, vec![(None, Some(10)), (Some(10), None)]);
        assert!(v1.complete && v1.key_columns.is_empty() && v1.key_ranges.is_empty());

        assert_eq!(load_meta(&state, "current").unwrap(), Some(current.clone()));
        let v3 = load_meta(&state, "v3").unwrap().unwrap();
        assert_eq!(
            v3,
            BackfillMeta {
                resync: false,
                caught_up: 0,
                ..current
            }
        );
        assert_eq!(load_meta(&state, "none").unwrap(), None);
    }

    #[test]
    fn a_damaged_attempt_position_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateStore::open(dir.path()).unwrap();
        state
            .save_backfill_meta(
                "bad",
                &WrittenV1 {
                    source: "store".into(),
                    table: "public.items".into(),
                    key_column: None,
                    ranges: vec![(None, None)],
                    rows: 0,
                    attempts: vec!["{\"Postgres\": \"not an lsn at all\"}".into()],
                    copied_in: BTreeMap::new(),
                    complete: false,
                },
            )
            .unwrap();
        assert!(load_meta(&state, "bad").is_err());
    }
}
