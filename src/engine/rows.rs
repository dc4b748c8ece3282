//! Rows in a mapping's canonical form, their keys, and what the engine keeps per row.
//!
//! Every site of a two-way mapping names the table and possibly its columns differently, and
//! each kind of database hands out its own flavour of the same value (`INT` as `Int` on one
//! side, `UNSIGNED` as `UInt` on the other, `10.50` and `10.5`). The engine therefore works on
//! *canonical* rows: the mapping's canonical column names, in the mapping's column order, and
//! compares values after [`normal`] has folded those flavours together. A row's identity in the
//! state store is the normal text of its key ([`MergeMapping::key_of`]), the same whichever site
//! a change came from.

use std::collections::{BTreeMap, HashMap};

use duplex_connectors::{Row, TableName, Value};
use serde::{Deserialize, Serialize};

use crate::column_policy::ColumnPolicy;
use crate::config::ConflictPolicy;
use crate::filter::Filter;
use crate::value_map::{self, SiteValues};

use super::EngineError;

/// The schema duplex names the canonical tables in (routes of the merge engine's writers).
pub const CANONICAL_SCHEMA: &str = "duplex_merge";

/// A two-way mapping as the engine uses it.
#[derive(Debug, Clone)]
pub struct MergeMapping {
    /// The mapping's name.
    pub name: String,
    /// The table name the engine's writes carry (`duplex_merge.<mapping>`); each site's
    /// route sends it to that site's table.
    pub canonical: TableName,
    /// The mapping's sites in configuration order (the tie-break order of last-writer-wins).
    pub sites: Vec<String>,
    /// Canonical column names, in order.
    pub columns: Vec<String>,
    /// Canonical names of the key columns.
    pub key: Vec<String>,
    /// Conflict policy.
    pub policy: ConflictPolicy,
    /// Column-level conflict policies, in configuration order (replicated columns only).
    pub column_policies: Vec<(String, ColumnPolicy)>,
    /// Per site: its codes for columns whose values it spells its own way.
    pub values: BTreeMap<String, SiteValues>,
    /// Per site: which rows it receives; a site without one receives every row.
    pub filters: BTreeMap<String, Filter>,
    /// Per site: its table.
    pub tables: BTreeMap<String, TableName>,
    /// Per site: its column name -> canonical name (only replicated columns).
    pub to_canonical: BTreeMap<String, HashMap<String, String>>,
}

impl MergeMapping {
    /// `row` of `site`'s table in canonical form: replicated columns only, canonical names,
    /// canonical order; columns the row lacks are left out.
    pub fn canonical_row(&self, site: &str, row: &Row) -> Row {
        let names = &self.to_canonical[site];
        let mut by_name: HashMap<&str, &Value> = HashMap::with_capacity(row.len());
        for (column, value) in row.iter() {
            if let Some(canonical) = names.get(column) {
                by_name.insert(canonical.as_str(), value);
            }
        }
        self.columns
            .iter()
            .filter_map(|c| by_name.get(c.as_str()).map(|v| (c.as_str(), (*v).clone())))
            .collect()
    }

    /// A row as `site`'s log carries it, in canonical form with canonical values
    /// ([`MergeMapping::canonical_row`], then the site's value maps); an error names a code
    /// the site's value map does not list.
    pub fn read_row(&self, site: &str, row: &Row) -> Result<Row, EngineError> {
        let row = self.canonical_row(site, row);
        match self.values.get(site) {
            None => Ok(row),
            Some(maps) => value_map::from_site(site, maps, &row)
                .map_err(|e| EngineError::Unsupported(format!("mapping {}: {e}", self.name))),
        }
    }

    /// The image `site` is to hold of a row whose newest version is `image`: the image, or
    /// none when the site's filter does not pass it.
    pub fn visible(&self, site: &str, image: Option<&Row>) -> Option<Row> {
        match (self.filters.get(site), image) {
            (Some(filter), Some(row)) if !filter.matches(row) => None,
            _ => image.cloned(),
        }
    }

    /// The image `site` reads back after duplex wrote `image` there: what it is to hold
    /// ([`MergeMapping::visible`]), through the site's value maps and back (a value without a
    /// code of its own reads back as the value of the default code); the image itself where a
    /// map cannot take it.
    pub fn as_read_back(&self, site: &str, image: Option<&Row>) -> Option<Row> {
        let visible = self.visible(site, image)?;
        let Some(maps) = self.values.get(site) else {
            return Some(visible);
        };
        match value_map::to_site(site, maps, &visible)
            .and_then(|coded| value_map::from_site(site, maps, &coded))
        {
            Ok(read_back) => Some(read_back),
            Err(_) => Some(visible),
        }
    }

    /// The key columns of a canonical row and their normal text (`id=5`, `a=1, b="x"`), or
    /// `None` when the row lacks a key column.
    pub fn key_of(&self, row: &Row) -> Option<(Row, String)> {
        let mut key = Row::new();
        let mut text = String::new();
        for column in &self.key {
            let value = row.get(column)?;
            if !text.is_empty() {
                text.push_str(", ");
            }
            text.push_str(column);
            text.push('=');
            text.push_str(&normal(value));
            key.push(column.as_str(), value.clone());
        }
        Some((key, text))
    }

    /// The policy's name as the configuration spells it.
    pub fn policy_name(&self) -> String {
        match &self.policy {
            ConflictPolicy::LastWriterWins => "last-writer-wins".into(),
            ConflictPolicy::Prefer(site) => format!("prefer:{site}"),
            ConflictPolicy::MergeColumns => "merge-columns".into(),
            ConflictPolicy::Hold => "hold".into(),
        }
    }

    /// The policies a conflict of this mapping is decided by, for the conflict log: the row
    /// policy, then each column policy (`last-writer-wins, on_hand: delta`).
    pub fn policies_name(&self) -> String {
        let mut name = self.policy_name();
        for (column, policy) in &self.column_policies {
            name.push_str(&format!(", {column}: {}", policy.name()));
        }
        name
    }
}

/// A value's normal text: equal for values that are the same datum whatever database they
/// came from (integers of any signedness and decimals by numeric value, JSON by content,
/// timestamps with and without time zone by their UTC wall time, UUIDs as text, BIT(1) as a
/// boolean, arrays as their JSON array).
pub fn normal(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::Unchanged => "?".into(),
        Value::Bool(b) => u8::from(*b).to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Decimal(d) => normal_decimal(d.as_str()),
        Value::Float(f) => format!("{f:?}"),
        Value::Text(s) => format!("{s:?}"),
        Value::Uuid(u) => format!("{:?}", u.hyphenated().to_string()),
        Value::Json(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(parsed) => format!("json:{parsed}"),
            Err(_) => format!("json:{text}"),
        },
        Value::Bytes(b) => {
            let mut hex = String::with_capacity(2 + 2 * b.len());
            hex.push_str("0x");
            for byte in b {
                hex.push_str(&format!("{byte:02x}"));
            }
            hex
        }
        Value::Date(d) => d.to_string(),
        Value::Time(micros) => format!("time:{micros}"),
        Value::Timestamp(t) => t.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        Value::TimestampTz(t) => t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        // BIT(1) and boolean are the same datum; longer bit strings keep their length.
        Value::Bits(b) if b.len() == 1 => b.as_str().to_owned(),
        Value::Bits(b) => format!("bits:{}", b.as_str()),
        // An array is stored as its JSON array where there are no arrays.
        Value::Array(elements) => match duplex_connectors::array_json(elements) {
            Ok(json) => normal(&Value::Json(json)),
            Err(_) => format!("array:{elements:?}"),
        },
        Value::Interval(i) => format!("interval:{}:{}:{}", i.months, i.days, i.micros),
    }
}

/// `10.50` -> `10.5`, `3.000` -> `3`, `-0.0` -> `0`.
fn normal_decimal(text: &str) -> String {
    let Some((int, frac)) = text.split_once('.') else {
        return if text == "-0" {
            "0".into()
        } else {
            text.into()
        };
    };
    let frac = frac.trim_end_matches('0');
    let joined = if frac.is_empty() {
        int.to_owned()
    } else {
        format!("{int}.{frac}")
    };
    if joined == "-0" { "0".into() } else { joined }
}

/// Whether two canonical images are the same datum: both absent, or both present with the
/// same columns and equal normal values in each ([`Value::Unchanged`] matches anything). An
/// image known only partly (by its key) is the same as no full one.
pub fn same_image(a: Option<&Row>, b: Option<&Row>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.len() == b.len()
                && a.iter().all(|(column, value)| match b.get(column) {
                    None => false,
                    Some(other) => {
                        matches!(value, Value::Unchanged)
                            || matches!(other, Value::Unchanged)
                            || normal(value) == normal(other)
                    }
                })
        }
        _ => false,
    }
}

/// A row for people to read: `id=1, qty=5`, or `(deleted)`.
pub fn display_image(row: Option<&Row>) -> String {
    match row {
        None => "(deleted)".into(),
        Some(row) => row
            .iter()
            .map(|(c, v)| format!("{c}={}", normal(v)))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// What the engine keeps per row besides the vectors (stored as the row's payload): the
/// image of the newest version, who wrote it and when, what each site is expected to hold
/// where that differs, and a conflict waiting for a person.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RowData {
    /// The newest version's canonical image; `None` when it is a delete (or the row is new).
    pub image: Option<Row>,
    /// Commit time of the newest version at its site, microseconds since the Unix epoch.
    pub commit_micros: i64,
    /// The site whose change the newest version is (the winner's, after a conflict).
    pub writer: String,
    /// Per site, the image the site is expected to hold once duplex's queued writes landed,
    /// where it differs from `image` (a site without an entry is expected to hold `image`).
    /// The condition of the next write there.
    pub expect: BTreeMap<String, Option<Row>>,
    /// Per site, the image of the version the site holds as its own log shows it (its last
    /// local change, or duplex's last write there that landed), where it differs from
    /// `image`: the version a local change there was made on.
    pub holds: BTreeMap<String, Option<Row>>,
    /// A conflict held for `duplex conflicts resolve`: the row is not propagated meanwhile.
    pub held_conflict: Option<u64>,
}

impl RowData {
    /// The image `site` is expected to hold.
    pub fn expected(&self, site: &str) -> Option<&Row> {
        match self.expect.get(site) {
            Some(image) => image.as_ref(),
            None => self.image.as_ref(),
        }
    }

    /// The image of the version `site` holds according to its own log.
    pub fn held_image(&self, site: &str) -> Option<&Row> {
        match self.holds.get(site) {
            Some(image) => image.as_ref(),
            None => self.image.as_ref(),
        }
    }

    /// Makes `image` the newest version's image, keeping what each of `sites` holds and is
    /// expected to hold unchanged.
    pub fn set_image(&mut self, image: Option<Row>, sites: &[String]) {
        for site in sites {
            if !self.expect.contains_key(site) {
                self.expect.insert(site.clone(), self.image.clone());
            }
            if !self.holds.contains_key(site) {
                self.holds.insert(site.clone(), self.image.clone());
            }
        }
        self.image = image;
        self.compact();
    }

    /// Records that `site` will hold `image` once duplex's queued writes landed.
    pub fn set_expected(&mut self, site: &str, image: Option<Row>) {
        self.expect.insert(site.to_owned(), image);
        self.compact();
    }

    /// Records that `site`'s log shows it holding `image`.
    pub fn set_held(&mut self, site: &str, image: Option<Row>) {
        self.holds.insert(site.to_owned(), image);
        self.compact();
    }

    fn compact(&mut self) {
        let image = &self.image;
        self.expect.retain(|_, held| held != image);
        self.holds.retain(|_, held| held != image);
    }
}

/// Fills the columns of `after` a log did not carry ([`Value::Unchanged`]) from `previous`.
pub fn fill_unchanged(after: &mut Row, previous: Option<&Row>) {
    let Some(previous) = previous else {
        return;
    };
    if !after.iter().any(|(_, v)| matches!(v, Value::Unchanged)) {
        return;
    }
    *after = after
        .iter()
        .map(|(column, value)| {
            let value = match (value, previous.get(column)) {
                (Value::Unchanged, Some(known)) => known.clone(),
                _ => value.clone(),
            };
            (column.to_owned(), value)
        })
        .collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_text_folds_database_flavours() {
        assert_eq!(normal(&Value::Int(5)), normal(&Value::UInt(5)));
        assert_eq!(
            normal(&Value::Decimal("10.50".parse().unwrap())),
            normal(&Value::Decimal("10.5".parse().unwrap()))
        );
        assert_eq!(
            normal(&Value::Json(r#"{"b": 1, "a": [1, 2]}"#.into())),
            normal(&Value::Json(r#"{"a":[1,2],"b":1}"#.into()))
        );
        assert_ne!(normal(&Value::Text("1".into())), normal(&Value::Int(1)));
        assert_eq!(normal_decimal("-0.000"), "0");
        assert_eq!(normal_decimal("3.000"), "3");
    }

    #[test]
    fn expectations_survive_a_new_image() {
        let sites = vec!["a".to_owned(), "b".to_owned()];
        let one: Row = [("id", Value::Int(1))].into_iter().collect();
        let two: Row = [("id", Value::Int(2))].into_iter().collect();
        let mut data = RowData {
            image: Some(one.clone()),
            ..RowData::default()
        };
        data.set_image(Some(two.clone()), &sites);
        assert_eq!(
            data.expected("a"),
            Some(&one),
            "a still holds the old image"
        );
        assert_eq!(
            data.held_image("b"),
            Some(&one),
            "b still holds the old image"
        );
        data.set_expected("a", Some(two.clone()));
        assert!(!data.expect.contains_key("a"), "{data:?}");
        assert_eq!(data.expected("a"), Some(&two));
        assert_eq!(data.expected("b"), Some(&one));
        data.set_held("b", Some(two.clone()));
        assert!(!data.holds.contains_key("b"), "{data:?}");
    }
}

#[cfg(test)]
mod size {
    use duplex_state::{RowVersions, VersionVector};

    use super::*;

    /// What the engine keeps for a typical converged row of three sites, as the README
    /// documents it: printed, and bounded so that a change that bloats it is noticed.
    #[test]
    fn state_per_row_is_the_image_plus_a_few_bytes() {
        let image: Row = [
            ("id", Value::Int(123_456)),
            ("name", Value::Text("blue pen".into())),
            ("qty", Value::Int(42)),
        ]
        .into_iter()
        .collect();
        let data = RowData {
            image: Some(image.clone()),
            commit_micros: 1_790_000_000_000_000,
            writer: "store".into(),
            ..RowData::default()
        };
        let payload = duplex_state::codec::encode(&data).unwrap();
        let image_only = duplex_state::codec::encode(&image).unwrap();
        let merged: VersionVector = [("store", 1000u64), ("erp", 20), ("wms", 3)]
            .into_iter()
            .collect();
        let versions = RowVersions {
            held: ["store", "erp", "wms"]
                .iter()
                .map(|s| ((*s).to_owned(), merged.clone()))
                .collect(),
            merged,
            deleted_at: None,
            payload: payload.clone(),
        };
        println!(
            "payload {} bytes (image {} bytes, data values 14 bytes), versions through the public codec {} bytes",
            payload.len(),
            image_only.len(),
            duplex_state::codec::encode(&versions).unwrap().len()
        );
        assert!(payload.len() <= image_only.len() + 20, "{}", payload.len());
    }
}
