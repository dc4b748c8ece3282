//! Planning: the jobs of one source, how a table is cut into key ranges (once, at the first
//! attempt, in the snapshot), which range a key falls in, and the queue of ranges left to copy.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use duplex_connectors::{
    AnySnapshot, Column, KeyRange, Row, SnapshotError, SnapshotRead, TableRoute, TableSchema, Value,
};
use duplex_state::StateStore;

use super::BackfillError;
use super::meta::BackfillMeta;
use crate::config::{Mapping, Site};

/// One mapping being backfilled from the current source.
pub(super) struct Job {
    /// The mapping.
    pub mapping: Mapping,
    /// Its source table.
    pub schema: TableSchema,
    /// Its targets and their routes.
    pub targets: Vec<(Site, Vec<TableRoute>)>,
    /// Its record.
    pub meta: BackfillMeta,
    /// The target tables (for a resync, which reads their keys to delete what the source
    /// does not have), by target site.
    pub target_schemas: Vec<Option<TableSchema>>,
}

/// The ranges still to copy, as (job index, range id), shared by the copy workers.
pub(super) type WorkQueue = Arc<std::sync::Mutex<VecDeque<(usize, u64)>>>;

/// The ranges of every job that the state store does not record as done, in job and range
/// order.
pub(super) async fn work_queue(
    jobs: &[Job],
    state: &Arc<StateStore>,
) -> Result<WorkQueue, BackfillError> {
    let mut work = VecDeque::new();
    for (index, job) in jobs.iter().enumerate() {
        let done = done_ranges(state, job).await?;
        for id in 0..job.meta.range_count() as u64 {
            if !done.contains_key(&id) {
                work.push_back((index, id));
            }
        }
        let total = job.meta.rows;
        let already: u64 = done.values().sum();
        tracing::info!(mapping = %job.mapping.name, ranges = job.meta.range_count(), remaining = job.meta.range_count() - done.len(), rows = total, copied_before = already, "copying");
    }
    Ok(Arc::new(std::sync::Mutex::new(work)))
}

/// The ranges of `job` the state store records as done, with their rows.
pub(super) async fn done_ranges(
    state: &Arc<StateStore>,
    job: &Job,
) -> Result<BTreeMap<u64, u64>, BackfillError> {
    let name = job.mapping.name.clone();
    let table = job.meta.table.clone();
    let state = state.clone();
    Ok(
        tokio::task::spawn_blocking(move || state.done_ranges(&name, &table))
            .await
            .map_err(|e| BackfillError::Crashed(e.to_string()))??,
    )
}

/// Whether `column` is an integer column (compared as a number by every kind of database, so
/// both sides of a mapping order it alike).
pub(crate) fn is_integer(column: &Column) -> bool {
    let ty = column
        .type_name
        .strip_suffix(" unsigned")
        .unwrap_or(&column.type_name);
    matches!(
        ty,
        "int2"
            | "int4"
            | "int8"
            | "tinyint"
            | "smallint"
            | "mediumint"
            | "int"
            | "integer"
            | "bigint"
    )
}

/// Cuts `schema`'s table into ranges of about `chunk` rows, read in `reader`'s snapshot: on a
/// single integer key column by its values, on any other primary key by the key values the
/// server numbers, and as one range when the key has a type that cannot be cut. A `resync`
/// cuts only on integer key columns (its ranges are also selected on the target, which must
/// order the keys like the source: integers do, text under another collation need not), so
/// any other key is one range.
pub(super) async fn plan(
    reader: &mut AnySnapshot,
    source: &str,
    schema: &TableSchema,
    chunk: u64,
    resync: bool,
) -> Result<BackfillMeta, SnapshotError> {
    let integer_key = match schema.primary_key.as_slice() {
        [only] => schema.column(only).is_some_and(is_integer),
        _ => false,
    };
    let key_column = integer_key.then(|| schema.primary_key[0].clone());
    let key: Option<Vec<Column>> = if integer_key || schema.primary_key.is_empty() {
        None
    } else {
        let columns: Vec<Column> = schema
            .primary_key
            .iter()
            .filter_map(|k| schema.column(k).cloned())
            .collect();
        let orderable = columns.len() == schema.primary_key.len()
            && columns.iter().all(|c| reader.can_cut_on(c));
        let alike = !resync || columns.iter().all(is_integer);
        if !orderable {
            tracing::warn!(table = %schema.name, "the primary key has a type duplex cannot cut into ranges: the table is copied as one range, held in memory whole");
        } else if !alike {
            tracing::warn!(table = %schema.name, "a resync cuts tables into ranges only on integer key columns (the target must order the keys like the source): the table is copied as one range, held in memory whole");
        }
        let orderable = orderable && alike;
        orderable.then_some(columns)
    };
    let (mut bounds, rows) = match &key_column {
        Some(k) => reader.boundaries(&schema.name, k, chunk).await?,
        None => (Vec::new(), reader.count(&schema.name).await?),
    };
    let cuts = match &key {
        Some(key) => reader.key_boundaries(&schema.name, key, chunk).await?,
        None => Vec::new(),
    };
    bounds.sort_unstable();
    bounds.dedup();
    let mut ranges = Vec::new();
    let mut key_ranges = Vec::new();
    if key.is_some() {
        // The cut points come in the server's key order, distinct (they are keys): kept as
        // they are, never re-sorted here.
        let mut lo = None;
        for cut in cuts {
            key_ranges.push((lo, Some(cut.clone())));
            lo = Some(cut);
        }
        key_ranges.push((lo, None));
    } else {
        let mut lo = None;
        for b in bounds {
            ranges.push((lo, Some(b)));
            lo = Some(b);
        }
        ranges.push((lo, None));
    }
    Ok(BackfillMeta {
        source: source.to_owned(),
        table: schema.name.to_string(),
        key_column,
        ranges,
        rows,
        attempts: Vec::new(),
        copied_in: BTreeMap::new(),
        complete: false,
        key_columns: key
            .map(|k| k.into_iter().map(|c| c.name).collect())
            .unwrap_or_default(),
        key_ranges,
        resync,
        caught_up: 0,
    })
}

impl BackfillMeta {
    /// Range `id` as the snapshot reader selects it.
    pub(super) fn range(&self, id: u64, schema: &TableSchema) -> KeyRange {
        let columns = |names: &[String]| {
            names
                .iter()
                .map(|n| {
                    schema.column(n).cloned().unwrap_or_else(|| Column {
                        name: n.clone(),
                        type_name: String::new(),
                        declared: String::new(),
                        nullable: false,
                    })
                })
                .collect::<Vec<_>>()
        };
        if !self.key_columns.is_empty() {
            let (lo, hi) = self.key_ranges[id as usize].clone();
            return KeyRange {
                columns: columns(&self.key_columns),
                lo,
                hi,
            };
        }
        let Some(column) = &self.key_column else {
            return KeyRange::whole();
        };
        let (lo, hi) = self.ranges[id as usize];
        let int = |b: i128| {
            vec![match i64::try_from(b) {
                Ok(i) => Value::Int(i),
                Err(_) => Value::UInt(u64::try_from(b).unwrap_or(u64::MAX)),
            }]
        };
        KeyRange {
            columns: columns(std::slice::from_ref(column)),
            lo: lo.map(int),
            hi: hi.map(int),
        }
    }

    /// The cut points of a table cut on `key_columns`: every range's upper bound but the last.
    pub(super) fn cuts(&self) -> Vec<Vec<Value>> {
        self.key_ranges
            .iter()
            .filter_map(|(_, hi)| hi.clone())
            .collect()
    }

    /// The range of a key when the table is cut on one integer column or not at all; `None`
    /// for tables cut on `key_columns` (the source database classifies those: see
    /// [`super::catch_up`]).
    pub(super) fn range_of(&self, key: &Row) -> Option<u64> {
        if !self.key_columns.is_empty() {
            return None;
        }
        let Some(column) = &self.key_column else {
            return Some(0);
        };
        let k: i128 = match key.get(column)? {
            Value::Int(i) => i128::from(*i),
            Value::UInt(u) => i128::from(*u),
            _ => return None,
        };
        self.ranges
            .iter()
            .position(|(lo, hi)| lo.is_none_or(|lo| k > lo) && hi.is_none_or(|hi| k <= hi))
            .map(|i| i as u64)
    }
}
