//! Reading one mapping's table from the source and a target, range by range, and re-checking
//! the keys that differ once the target has applied past where the source was read.
//!
//! # Why a reported difference is not a row in flight
//!
//! Every range is read on each side in a fresh snapshot of its own (no lock is taken). A key
//! that differs is read again in later rounds, by its key value on each side (not by range:
//! the two sides may order the key differently, see [`plan`]): the source first, at a position
//! P ([`duplex_connectors::AnySnapshot::renew`]: at or after the end of every transaction the
//! read saw); then, once the target has committed past P (its `duplex.positions` row for the
//! source, or for a PostgreSQL source the slot's confirmed position, see
//! [`duplex_connectors::verify`]), the target; then the source again, at P2. The target's read
//! holds the source's changes up to some position between P and P2 (it is past P, and it can
//! hold nothing the source had not committed when it was read, before P2). Where the source's
//! row is the same at P and at P2 it was that row all along, so a target that differs from it
//! differs for real: reported. A key equal in any round (to either source read) is dropped. A key whose source row
//! changed between the two reads is in flight: read again in the next round, and after the
//! last round reported as neither equal nor different (a row changed faster than verify reads
//! it, [`Rechecked::in_flight`]). If the target does not get past P within the wait (the link
//! is stopped or far behind), the remaining differences are reported as unconfirmed at once.
//! (A two-way mapping waits for the merge engine instead, see [`super::engine`], and reports
//! what reads the same rows in two rounds.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use duplex_connectors::digest::RangeDigest;
use duplex_connectors::{
    AnySnapshot, Column, KeyRange, Position, Row, SiteConnection, SnapshotRead, TableRoute,
    TableSchema, Value,
};

use super::VerifyError;
use super::compare::{
    Canonical, KeyDifference, differences, from_source, from_target, raw_fingerprint,
};

/// One side of a mapping: its site, table and the columns read.
#[derive(Debug, Clone)]
pub struct Side {
    /// The site.
    pub site: String,
    /// How to reach it.
    pub connection: SiteConnection,
    /// Its table's schema.
    pub schema: TableSchema,
    /// The columns read (the route's columns, named as here).
    pub columns: Vec<Column>,
    /// The key columns, named as here, in key order.
    pub key: Vec<Column>,
    /// Per column: read text as JSON (a MariaDB JSON column is text to the server; the
    /// source's column is JSON).
    pub as_json: Vec<bool>,
}

impl Side {
    /// `route`'s columns on this side: source names when `source`, else target names.
    pub fn new(
        site: &str,
        connection: SiteConnection,
        schema: TableSchema,
        route: &TableRoute,
        source: bool,
    ) -> Side {
        let local = |s: &String| -> String {
            if source {
                s.clone()
            } else {
                route
                    .columns
                    .iter()
                    .find(|(a, _)| a == s)
                    .map_or_else(|| s.clone(), |(_, t)| t.clone())
            }
        };
        let column = |name: String| {
            schema.column(&name).cloned().unwrap_or(Column {
                name,
                type_name: String::new(),
                declared: String::new(),
                nullable: true,
            })
        };
        let columns = route
            .columns
            .iter()
            .map(|(s, _)| column(local(s)))
            .collect();
        let key = route.key.iter().map(|k| column(local(k))).collect();
        Side {
            site: site.to_owned(),
            connection,
            schema,
            as_json: vec![false; route.columns.len()],
            columns,
            key,
        }
    }

    /// `range` (cut on the source's key columns) as this side selects it.
    fn range(&self, range: &Bounds) -> KeyRange {
        match range {
            None => KeyRange::whole(),
            Some((lo, hi)) => KeyRange {
                columns: self.key.clone(),
                lo: lo.clone(),
                hi: hi.clone(),
            },
        }
    }

    fn snapshot_error(&self) -> impl FnOnce(duplex_connectors::SnapshotError) -> VerifyError {
        let site = self.site.clone();
        move |source| VerifyError::Read { site, source }
    }
}

/// A range's bounds on the source's key columns (`lo < key <= hi`, one value per key column),
/// or `None` for the whole table.
pub type Bounds = Option<(Option<Vec<Value>>, Option<Vec<Value>>)>;

/// How the keys of a table are found again in the re-checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// By their key values, on both sides ([`duplex_connectors::SnapshotRead::rows_with_keys`]).
    Keys,
    /// By reading the whole table again (the key has a type that cannot be cut or looked up
    /// on both sides).
    Whole,
}

/// The ranges `source`'s table is cut into and how differing keys are looked up again: about
/// `chunk` rows each, cut at every `chunk`-th key in the source's key order, when every key
/// column can be cut on both sides ([`duplex_connectors::SnapshotRead::can_cut_on`]); else the
/// whole table as one range.
///
/// The target selects each range by the same bounds in its own order, which for text under
/// another collation (or a composite key containing text) need not be the source's: a row can
/// then fall in another range on the target than on the source, or in two (bounds out of
/// order on the target make neighbouring ranges overlap there). No row escapes the
/// comparison: the ranges `(c[i-1], c[i]]` with `c[0] = -inf`, `c[n] = +inf` cover every
/// key in any order (a key lies in the first range whose upper bound is not below it); and a
/// key that really differs always shows in the first pass (its source row lies in exactly one
/// range, whose target rows then cannot equal the source's; a key only on the target makes
/// the ranges holding it differ). A key that merely sits in different ranges also shows
/// there, which is why every differing key is then read again by its key value on both sides
/// ([`recheck`]), never by range: what is reported was compared row against row.
pub async fn plan(
    readers: (&mut AnySnapshot, &AnySnapshot),
    source: &Side,
    target: &Side,
    chunk: u64,
) -> Result<(Vec<Bounds>, Lookup), VerifyError> {
    let cuttable = source.key.len() == target.key.len()
        && source.key.iter().all(|c| readers.0.can_cut_on(c))
        && target.key.iter().all(|c| readers.1.can_cut_on(c));
    if !cuttable {
        tracing::warn!(table = %source.schema.name, "the primary key has a type verify cannot cut into ranges on both sides: the table is compared as one range, held in memory whole");
        return Ok((vec![None], Lookup::Whole));
    }
    if digests(readers.0, source)
        && digests(readers.1, target)
        && let Some(ranges) = super::split::integer_plan(readers.0, source, target, chunk).await?
    {
        return Ok((ranges, Lookup::Keys));
    }
    // The cut points come in the source's key order, distinct (they are keys).
    let cuts = readers
        .0
        .key_boundaries(&source.schema.name, &source.key, chunk)
        .await
        .map_err(source.snapshot_error())?;
    let mut ranges = Vec::with_capacity(cuts.len() + 1);
    let mut lo = None;
    for cut in cuts {
        ranges.push(Some((lo, Some(cut.clone()))));
        lo = Some(cut);
    }
    ranges.push(Some((lo, None)));
    Ok((ranges, Lookup::Keys))
}

/// Reads `range` on `side` in a fresh snapshot: the rows as read (the route's columns in
/// route order). The first pass needs no position: a key that differs is read again with one
/// ([`recheck`]).
pub async fn read_rows(
    reader: &mut AnySnapshot,
    side: &Side,
    range: &Bounds,
) -> Result<Vec<Row>, VerifyError> {
    reader.refresh().await.map_err(side.snapshot_error())?;
    reader
        .rows(&side.schema.name, &side.columns, &side.range(range))
        .await
        .map_err(side.snapshot_error())
}

/// `rows` read on `side` in compared form.
pub fn canonical(side: &Side, route: &TableRoute, rows: &[Row], source: bool) -> Vec<Canonical> {
    rows.iter()
        .map(|row| {
            let mut row = if source {
                from_source(route, row)
            } else {
                from_target(route, row)
            };
            for ((_, value), json) in row.columns.iter_mut().zip(&side.as_json) {
                if let (true, Value::Text(text)) = (json, &*value) {
                    *value = Value::Json(text.clone());
                }
            }
            row
        })
        .collect()
}

/// Whether ranges of `side` are compared by their digests first ([`duplex_connectors::digest`]):
/// when the kind covers every column's type, no text is read as JSON, and
/// `DUPLEX_VERIFY_DIGEST` is not `off` (which compares every range's rows, as the tests of
/// that path do).
fn digests(reader: &AnySnapshot, side: &Side) -> bool {
    static ENABLED: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        std::env::var("DUPLEX_VERIFY_DIGEST").map_or(true, |v| v != "off")
    });
    *ENABLED && !side.as_json.contains(&true) && reader.can_digest(&side.columns)
}

/// The digest of `range` on `side`, in a fresh snapshot.
async fn read_digest(
    reader: &mut AnySnapshot,
    side: &Side,
    range: &Bounds,
) -> Result<RangeDigest, VerifyError> {
    reader.refresh().await.map_err(side.snapshot_error())?;
    reader
        .digest(&side.schema.name, &side.columns, &side.range(range))
        .await
        .map_err(side.snapshot_error())
}

/// The result of comparing one range in the first pass.
#[derive(Default)]
pub struct RangeResult {
    /// Source rows read.
    pub rows: u64,
    /// Differing keys.
    pub differences: Vec<KeyDifference>,
    /// The range's halves, to be compared instead of it (its digests differ and it holds
    /// too many rows to read at once, see [`super::split`]).
    pub halves: Vec<Bounds>,
}

/// Compares `range` on both sides, each read in parallel on its own connection (`chunk`: the
/// rows wanted per range).
pub async fn compare_range(
    readers: (&mut AnySnapshot, &mut AnySnapshot),
    sides: (&Side, &Side),
    route: &TableRoute,
    range: &Bounds,
    chunk: u64,
) -> Result<RangeResult, VerifyError> {
    if digests(readers.0, sides.0) && digests(readers.1, sides.1) {
        let (source, target) = tokio::join!(
            read_digest(readers.0, sides.0, range),
            read_digest(readers.1, sides.1, range)
        );
        let (source, target) = (source?, target?);
        if source == target {
            return Ok(RangeResult {
                rows: source.rows,
                ..RangeResult::default()
            });
        }
        if source.rows.max(target.rows) > super::split::HALVE_ABOVE * chunk
            && let Some(halves) = super::split::halves(range)
        {
            return Ok(RangeResult {
                halves: halves.into(),
                ..RangeResult::default()
            });
        }
    }
    let (source, target) = tokio::join!(
        read_rows(readers.0, sides.0, range),
        read_rows(readers.1, sides.1, range)
    );
    let (source, target) = (source?, target?);
    let rows = source.len() as u64;
    if raw_fingerprint(&source, &sides.0.as_json) == raw_fingerprint(&target, &sides.1.as_json) {
        return Ok(RangeResult {
            rows,
            ..RangeResult::default()
        });
    }
    Ok(RangeResult {
        rows,
        halves: Vec::new(),
        differences: differences(
            canonical(sides.0, route, &source, true),
            canonical(sides.1, route, &target, false),
        ),
    })
}

/// How a re-check ended.
pub struct Rechecked {
    /// What still differs.
    pub differences: Vec<KeyDifference>,
    /// Whether the target got past the source's position in the last round (the differences
    /// are then proven, not possibly in flight).
    pub confirmed: bool,
    /// Keys whose source row changed during every round (a one-way mapping's hot rows): not
    /// compared, neither equal nor proven different.
    pub in_flight: Vec<String>,
}

/// What the re-checks need to know about where the target stands.
pub struct Progress<'a> {
    /// The source site's connection (its slot's confirmed position).
    pub source: &'a SiteConnection,
    /// The target's connection.
    pub target: &'a SiteConnection,
    /// Who carries changes between the two.
    pub carrier: Carrier<'a>,
    /// How long to wait for the target each round.
    pub wait: Duration,
}

/// Who carries changes between the two sides of a comparison.
pub enum Carrier<'a> {
    /// A one-way link from the source to the target: the name the target's
    /// `duplex.positions` records the source under, when known.
    Link(Option<&'a str>),
    /// The merge engine of a two-way mapping, reached through the control socket of the
    /// `duplex run` holding this state directory ([`super::engine`]).
    Engine(&'a std::path::Path),
}

/// Keys looked up in one statement.
const KEYS_PER_READ: usize = 500;

/// The key values of a differing key (source column names, key order), from whichever row
/// was read.
pub(super) fn key_values(route: &TableRoute, difference: &KeyDifference) -> Vec<Value> {
    let row = difference
        .source
        .as_ref()
        .or(difference.target.as_ref())
        .map(|c| &c.columns);
    route
        .key
        .iter()
        .map(|k| {
            row.and_then(|columns| columns.iter().find(|(c, _)| c == k))
                .map_or(Value::Null, |(_, v)| v.clone())
        })
        .collect()
}

/// Reads the rows of `keys` (their key text, and values) on `side` in a fresh snapshot: in
/// compared form, only those keys, and the position the read stands at.
async fn read_keys(
    reader: &mut AnySnapshot,
    side: &Side,
    route: &TableRoute,
    lookup: Lookup,
    keys: &BTreeMap<String, Vec<Value>>,
    source: bool,
) -> Result<(Vec<Canonical>, Position), VerifyError> {
    let (rows, position) = read_rows_of_keys(reader, side, lookup, keys).await?;
    let mut rows = canonical(side, route, &rows, source);
    rows.retain(|row| keys.contains_key(&row.key));
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    Ok((rows, position))
}

/// Reads the rows of `keys` on `side` in a fresh snapshot, as read (the route's columns named
/// as there; with [`Lookup::Whole`] every row), and the position the read stands at.
pub(super) async fn read_rows_of_keys(
    reader: &mut AnySnapshot,
    side: &Side,
    lookup: Lookup,
    keys: &BTreeMap<String, Vec<Value>>,
) -> Result<(Vec<Row>, Position), VerifyError> {
    let position = reader
        .renew(&side.schema.name)
        .await
        .map_err(side.snapshot_error())?;
    let mut rows = Vec::new();
    match lookup {
        Lookup::Whole => {
            rows = reader
                .rows(&side.schema.name, &side.columns, &KeyRange::whole())
                .await
                .map_err(side.snapshot_error())?;
        }
        Lookup::Keys => {
            let values: Vec<Vec<Value>> = keys.values().cloned().collect();
            for batch in values.chunks(KEYS_PER_READ) {
                rows.extend(
                    reader
                        .rows_with_keys(&side.schema.name, &side.columns, &side.key, batch)
                        .await
                        .map_err(side.snapshot_error())?,
                );
            }
        }
    }
    Ok((rows, position))
}

/// Re-checks the keys of `found` for up to `rounds` rounds, reading them by key (see the
/// module docs).
pub async fn recheck(
    readers: (&mut AnySnapshot, &mut AnySnapshot),
    sides: (&Side, &Side),
    route: &TableRoute,
    lookup: Lookup,
    mut found: BTreeMap<String, KeyDifference>,
    rounds: u32,
    progress: &Progress<'_>,
) -> Result<Rechecked, VerifyError> {
    let mut confirmed = true;
    let mut proven: Vec<KeyDifference> = Vec::new();
    for round in 0..rounds {
        if found.is_empty() {
            break;
        }
        let keys: BTreeMap<String, Vec<Value>> = found
            .iter()
            .map(|(k, d)| (k.clone(), key_values(route, d)))
            .collect();
        let (source, target);
        match progress.carrier {
            Carrier::Link(position_key) => {
                let at;
                (source, at) = read_keys(readers.0, sides.0, route, lookup, &keys, true).await?;
                confirmed = wait_applied(progress, position_key, &at).await?;
                (target, _) = read_keys(readers.1, sides.1, route, lookup, &keys, false).await?;
                // The target's read stands between the two source reads: where the source
                // held still across both, a target that differs from it differs for real.
                let (after, _) = read_keys(readers.0, sides.0, route, lookup, &keys, true).await?;
                let keys_of = |found: Vec<KeyDifference>| -> BTreeSet<String> {
                    found.into_iter().map(|d| d.key).collect()
                };
                let moved = keys_of(differences(source.clone(), after.clone()));
                // Equal to the source's later row is equal too.
                let differs_later = keys_of(differences(after, target.clone()));
                let (mut moving, settled): (Vec<_>, Vec<_>) = differences(source, target)
                    .into_iter()
                    .partition(|d| moved.contains(&d.key));
                moving.retain(|d| differs_later.contains(&d.key));
                proven.extend(settled);
                if !confirmed {
                    // Not past the source's position: report what differs, unproven.
                    proven.extend(moving);
                    found.clear();
                    break;
                }
                // A key that changed on the source is read again in the next round (one equal
                // on the target anyway is dropped like any equal key).
                found = moving.into_iter().map(|d| (d.key.clone(), d)).collect();
                continue;
            }
            Carrier::Engine(state_dir) => {
                // Both sides' logs up to now decided, and every write that decided landed:
                // then each side holds all the other had now (see [`super::engine`]).
                let at = [
                    (
                        progress.source,
                        readers
                            .0
                            .renew(&sides.0.schema.name)
                            .await
                            .map_err(sides.0.snapshot_error())?,
                    ),
                    (
                        progress.target,
                        readers
                            .1
                            .renew(&sides.1.schema.name)
                            .await
                            .map_err(sides.1.snapshot_error())?,
                    ),
                ];
                confirmed = super::engine::wait_settled(state_dir, &at, progress.wait).await?;
                (source, _) = read_keys(readers.0, sides.0, route, lookup, &keys, true).await?;
                (target, _) = read_keys(readers.1, sides.1, route, lookup, &keys, false).await?;
            }
        }
        let still: BTreeMap<String, KeyDifference> = differences(source, target)
            .into_iter()
            .map(|d| (d.key.clone(), d))
            .collect();
        // Two confirmed rounds that read the same rows on both sides: nothing was in flight.
        let settled = confirmed
            && round > 0
            && still.len() == found.len()
            && still
                .iter()
                .all(|(key, d)| found.get(key).is_some_and(|before| before == d));
        found = still;
        // A target that did not get past the position will not within another wait either.
        if settled || !confirmed {
            break;
        }
    }
    // One-way: what is left kept changing on the source in every round; two-way: what still
    // differs after the last round.
    let in_flight = match progress.carrier {
        Carrier::Link(_) => found.into_keys().collect(),
        Carrier::Engine(_) => {
            proven.extend(found.into_values());
            Vec::new()
        }
    };
    Ok(Rechecked {
        differences: proven,
        in_flight,
        confirmed,
    })
}

/// Whether `a` is after `b` (positions of one source; incomparable ones count as not).
pub(super) fn later(a: &Position, b: &Position) -> bool {
    a.compare(b).is_ok_and(|o| o.is_gt())
}

/// Waits until the target has committed everything of the source up to `at`; false when
/// `progress.wait` passed first.
async fn wait_applied(
    progress: &Progress<'_>,
    position_key: Option<&str>,
    at: &Position,
) -> Result<bool, VerifyError> {
    let deadline = Instant::now() + progress.wait;
    loop {
        if let Some(key) = position_key {
            let held = duplex_connectors::verify::recorded_position(progress.target, key)
                .await
                .map_err(|source| VerifyError::Admin {
                    site: progress.target.name.clone(),
                    source,
                })?;
            if held.is_some_and(|h| !later(at, &h)) {
                return Ok(true);
            }
        }
        let confirmed = duplex_connectors::verify::confirmed_position(progress.source)
            .await
            .map_err(|source| VerifyError::Admin {
                site: progress.source.name.clone(),
                source,
            })?;
        if confirmed.is_some_and(|c| !later(at, &c)) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
