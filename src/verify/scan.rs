//! Reading one mapping's table from the source and a target, range by range, and re-checking
//! the keys that differ once the target has applied past where the source was read.
//!
//! # Why a reported difference is not a row in flight
//!
//! Every range is read on each side in a fresh snapshot of its own (no lock is taken); the
//! source's read comes with a position at or after the end of every transaction it saw
//! ([`duplex_connectors::AnySnapshot::renew`]). A key that differs is read again in later
//! rounds: the source first (a new position P), then, once the target has committed past P
//! (its `duplex.positions` row for the source, or for a PostgreSQL source the slot's
//! confirmed position, see [`duplex_connectors::verify`]), the target. A target that holds
//! everything the source had at P and still differs from the source's row as of P differs for
//! real, unless the row changed again on the source in between: the rounds go on (up to a
//! bound) until two of them read the same rows on both sides. A key equal in any round is
//! dropped. If the target does not get past P within the wait (the link is stopped or far
//! behind), the remaining differences are reported as unconfirmed at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

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
                lo: lo.map(int_bound),
                hi: hi.map(int_bound),
            },
        }
    }

    fn snapshot_error(&self) -> impl FnOnce(duplex_connectors::SnapshotError) -> VerifyError {
        let site = self.site.clone();
        move |source| VerifyError::Read { site, source }
    }
}

/// A range's bounds on a single integer key (`lo < key <= hi`), or `None` for the whole table.
pub type Bounds = Option<(Option<i128>, Option<i128>)>;

fn int_bound(b: i128) -> Vec<Value> {
    vec![match i64::try_from(b) {
        Ok(i) => Value::Int(i),
        Err(_) => Value::UInt(u64::try_from(b).unwrap_or(u64::MAX)),
    }]
}

/// The ranges `source`'s table is cut into: about `chunk` rows each on a single integer key
/// (both sides select them by value), otherwise the whole table as one range (another key's
/// order may differ between the two databases, e.g. by collation).
pub async fn plan(
    reader: &mut AnySnapshot,
    source: &Side,
    target: &Side,
    chunk: u64,
) -> Result<Vec<Bounds>, VerifyError> {
    let integer = matches!((source.key.as_slice(), target.key.as_slice()),
        ([s], [t]) if crate::backfill::is_integer(s) && crate::backfill::is_integer(t));
    if !integer {
        return Ok(vec![None]);
    }
    let mut cuts = reader
        .boundaries(&source.schema.name, &source.key[0].name, chunk)
        .await
        .map_err(source.snapshot_error())?;
    cuts.sort_unstable();
    cuts.dedup();
    let mut ranges = Vec::with_capacity(cuts.len() + 1);
    let mut lo = None;
    for cut in cuts {
        ranges.push(Some((lo, Some(cut))));
        lo = Some(cut);
    }
    ranges.push(Some((lo, None)));
    Ok(ranges)
}

/// Reads `range` on `side` in a fresh snapshot: the rows as read (the route's columns in
/// route order) and the position the read stands at.
pub async fn read_rows(
    reader: &mut AnySnapshot,
    side: &Side,
    range: &Bounds,
) -> Result<(Vec<Row>, Position), VerifyError> {
    let position = reader.renew().await.map_err(side.snapshot_error())?;
    let rows = reader
        .rows(&side.schema.name, &side.columns, &side.range(range))
        .await
        .map_err(side.snapshot_error())?;
    Ok((rows, position))
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

/// Reads `range` on `side` in a fresh snapshot: the rows in compared form and the position
/// the read stands at.
pub async fn read(
    reader: &mut AnySnapshot,
    side: &Side,
    route: &TableRoute,
    range: &Bounds,
    source: bool,
) -> Result<(Vec<Canonical>, Position), VerifyError> {
    let (rows, position) = read_rows(reader, side, range).await?;
    Ok((canonical(side, route, &rows, source), position))
}

/// The result of comparing one range in the first pass.
pub struct RangeResult {
    /// Source rows read.
    pub rows: u64,
    /// Differing keys.
    pub differences: Vec<KeyDifference>,
}

/// Compares `range` on both sides, each read in parallel on its own connection.
pub async fn compare_range(
    readers: (&mut AnySnapshot, &mut AnySnapshot),
    sides: (&Side, &Side),
    route: &TableRoute,
    range: &Bounds,
) -> Result<RangeResult, VerifyError> {
    let (source, target) = tokio::join!(
        read_rows(readers.0, sides.0, range),
        read_rows(readers.1, sides.1, range)
    );
    let (source, _) = source?;
    let (target, _) = target?;
    let rows = source.len() as u64;
    if raw_fingerprint(&source, &sides.0.as_json) == raw_fingerprint(&target, &sides.1.as_json) {
        return Ok(RangeResult {
            rows,
            differences: Vec::new(),
        });
    }
    Ok(RangeResult {
        rows,
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
    /// The range of each differing key.
    pub ranges: BTreeMap<String, usize>,
    /// Whether the target got past the source's position in the last round (the differences
    /// are then proven, not possibly in flight).
    pub confirmed: bool,
}

/// What the re-checks need to know about where the target stands.
pub struct Progress<'a> {
    /// The source site's connection (its slot's confirmed position).
    pub source: &'a SiteConnection,
    /// The target's connection.
    pub target: &'a SiteConnection,
    /// The name the target's `duplex.positions` records the source under, when known.
    pub position_key: Option<&'a str>,
    /// How long to wait for the target each round.
    pub wait: Duration,
}

/// Re-checks the keys of `found` (their ranges in `ranges`) for up to `rounds` rounds (see the
/// module docs).
#[allow(clippy::too_many_arguments)]
pub async fn recheck(
    readers: (&mut AnySnapshot, &mut AnySnapshot),
    sides: (&Side, &Side),
    route: &TableRoute,
    ranges: &[Bounds],
    mut found: BTreeMap<String, (usize, KeyDifference)>,
    rounds: u32,
    progress: &Progress<'_>,
) -> Result<Rechecked, VerifyError> {
    let mut confirmed = true;
    for round in 0..rounds {
        if found.is_empty() {
            break;
        }
        let wanted: BTreeSet<usize> = found.values().map(|(r, _)| *r).collect();
        let mut sources = Vec::new();
        let mut at: Option<Position> = None;
        for &r in &wanted {
            let (rows, position) = read(readers.0, sides.0, route, &ranges[r], true).await?;
            at = Some(match at {
                Some(p) if !later(&position, &p) => p,
                _ => position,
            });
            sources.push((r, rows));
        }
        confirmed = match &at {
            Some(p) => wait_applied(progress, p).await?,
            None => true,
        };
        let mut still: BTreeMap<String, (usize, KeyDifference)> = BTreeMap::new();
        for (r, source) in sources {
            let (target, _) = read(readers.1, sides.1, route, &ranges[r], false).await?;
            let keep = |row: &Canonical| found.get(&row.key).is_some_and(|(fr, _)| *fr == r);
            let source: Vec<Canonical> = source.into_iter().filter(keep).collect();
            let target: Vec<Canonical> = target.into_iter().filter(keep).collect();
            for difference in differences(source, target) {
                still.insert(difference.key.clone(), (r, difference));
            }
        }
        // Two confirmed rounds that read the same rows on both sides: nothing was in flight.
        let settled = confirmed
            && round > 0
            && still.len() == found.len()
            && still
                .iter()
                .all(|(key, (_, d))| found.get(key).is_some_and(|(_, before)| before == d));
        found = still;
        // A target that did not get past the position will not within another wait either.
        if settled || !confirmed {
            break;
        }
    }
    Ok(Rechecked {
        ranges: found.iter().map(|(k, (r, _))| (k.clone(), *r)).collect(),
        differences: found.into_values().map(|(_, d)| d).collect(),
        confirmed,
    })
}

/// Whether `a` is after `b` (positions of one source; incomparable ones count as not).
fn later(a: &Position, b: &Position) -> bool {
    a.compare(b).is_ok_and(|o| o.is_gt())
}

/// Waits until the target has committed everything of the source up to `at`; false when
/// `progress.wait` passed first.
async fn wait_applied(progress: &Progress<'_>, at: &Position) -> Result<bool, VerifyError> {
    let deadline = Instant::now() + progress.wait;
    loop {
        if let Some(key) = progress.position_key {
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
