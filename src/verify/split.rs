//! Cutting a table with a single integer key by key value, and halving a range whose digests
//! differ, for mappings compared by digests ([`duplex_connectors::digest`]).
//!
//! Finding exact cuts on the server ([`duplex_connectors::SnapshotRead::key_boundaries`])
//! reads the whole key in order: on MariaDB about as long as comparing the table by digests. An
//! integer key orders alike on every kind of database, so its ranges can be cut by value
//! instead: the span from the smallest to the largest key in equal widths, as many as the
//! server's row estimate divided by the rows wanted per range, plus the two open ends (rows
//! written below or above the span while verify runs). Ranges cut this way may hold far more
//! rows than wanted where keys cluster; that costs nothing while their digests agree (no row
//! is read), and a range whose digests differ is halved by value ([`halves`]) until it holds
//! few enough rows to be compared row by row. So rows are held in memory only for ranges of
//! about the wanted size, as with the numbered cuts.
//!
//! The ranges cover every key ([`super::scan::plan`] gives the argument for any ascending
//! cuts), and both sides order integers alike, so a row lies in the same range on both.

use duplex_connectors::{AnySnapshot, SnapshotRead, Value};

use super::VerifyError;
use super::scan::{Bounds, Side};
use crate::backfill::plan::is_integer;

/// A range whose digests differ is halved while it holds more than this many times the rows
/// wanted per range.
pub const HALVE_ABOVE: u64 = 4;

/// The ranges of a table whose single key column is an integer on both sides, cut by value
/// (see the module docs); `None` when the key is not such a column.
pub async fn integer_plan(
    reader: &mut AnySnapshot,
    source: &Side,
    target: &Side,
    chunk: u64,
) -> Result<Option<Vec<Bounds>>, VerifyError> {
    let ([key], [target_key]) = (source.key.as_slice(), target.key.as_slice()) else {
        return Ok(None);
    };
    if !is_integer(key) || !is_integer(target_key) {
        return Ok(None);
    }
    let span = reader
        .integer_span(&source.schema.name, &key.name)
        .await
        .map_err(|source_error| VerifyError::Read {
            site: source.site.clone(),
            source: source_error,
        })?;
    let Some(span) = span else {
        return Ok(Some(vec![None]));
    };
    let count = span.rows.div_ceil(chunk.max(1)).max(1);
    // Span and count are positive: a ceiling division.
    let width = ((span.max - span.min + i128::from(count)) / i128::from(count)).max(1);
    let mut cuts = Vec::new();
    let mut cut = span.min - 1;
    while cut < span.max {
        cuts.push(cut);
        cut = (cut + width).min(span.max);
    }
    cuts.push(span.max);
    let cuts: Vec<Value> = cuts.into_iter().filter_map(integer).collect();
    let mut ranges = Vec::with_capacity(cuts.len() + 1);
    let mut lo = None;
    for cut in cuts {
        ranges.push(Some((lo, Some(vec![cut.clone()]))));
        lo = Some(vec![cut]);
    }
    ranges.push(Some((lo, None)));
    Ok(Some(ranges))
}

/// `value` as a key value: signed when it fits, else unsigned; `None` beyond both.
fn integer(value: i128) -> Option<Value> {
    i64::try_from(value)
        .map(Value::Int)
        .ok()
        .or_else(|| u64::try_from(value).ok().map(Value::UInt))
}

fn as_integer(bound: &Option<Vec<Value>>) -> Option<i128> {
    match bound.as_deref() {
        Some([Value::Int(i)]) => Some(i128::from(*i)),
        Some([Value::UInt(u)]) => Some(i128::from(*u)),
        _ => None,
    }
}

/// The two halves of an integer range bounded on both ends and holding at least two key
/// values; `None` for any other range.
pub fn halves(range: &Bounds) -> Option<[Bounds; 2]> {
    let (lo, hi) = range.as_ref()?;
    let (low, high) = (as_integer(lo)?, as_integer(hi)?);
    if high - low < 2 {
        return None;
    }
    let middle = vec![integer(low + (high - low) / 2)?];
    Some([
        Some((lo.clone(), Some(middle.clone()))),
        Some((Some(middle), hi.clone())),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(lo: i64, hi: i64) -> Bounds {
        Some((Some(vec![Value::Int(lo)]), Some(vec![Value::Int(hi)])))
    }

    #[test]
    fn a_range_halves_by_value_until_it_holds_one_key() {
        assert_eq!(halves(&range(0, 10)), Some([range(0, 5), range(5, 10)]));
        assert_eq!(halves(&range(-3, -1)), Some([range(-3, -2), range(-2, -1)]));
        assert_eq!(halves(&range(4, 5)), None);
        assert_eq!(halves(&None), None);
        assert_eq!(halves(&Some((None, Some(vec![Value::Int(9)])))), None);
        let big = Some((
            Some(vec![Value::Int(i64::MAX - 1)]),
            Some(vec![Value::UInt(u64::MAX)]),
        ));
        let [a, b] = halves(&big).unwrap();
        assert_eq!(a.unwrap().1, b.clone().unwrap().0);
        assert!(matches!(b.unwrap().0.as_deref(), Some([Value::UInt(_)])));
    }
}
