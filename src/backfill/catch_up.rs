//! Catch-up after a resumed backfill: ranges copied in earlier attempts are brought forward to
//! the handover position by applying, from the source's change stream, exactly the changes
//! each of them lacks (see the module docs of [`super`]).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use duplex_connectors::{
    AnyApplier, AnySnapshot, AnyStream, Applier, ApplyOptions, ChangeEvent, Op, Position, Row,
    SnapshotRead, StreamError, StreamItem, StreamOptions, TableName, TableSchema, Transaction,
    Value,
};

use duplex_state::StateStore;

use super::meta::{BackfillMeta, catch_up_key, marker, marker_prefix};
use super::plan::Job;
use super::{BackfillError, snapshot_error};
use crate::config::Site;

/// Brings ranges copied in earlier attempts forward to `handover` by applying, from the
/// source's stream, exactly the changes each of them lacks. `published`: every table read from
/// the site (the stream keeps the publication listing all of them, so a link of the same site
/// loses none of its tables); `deployment`: the state store's identity the stream claims the
/// publication for. The stream acknowledges nothing: the slot stays where it was, for the
/// links of the site that are behind the handover.
pub(super) async fn catch_up(
    site: &Site,
    jobs: &[Job],
    handover: &Position,
    published: &[TableName],
    deployment: &str,
) -> Result<(), BackfillError> {
    // The oldest snapshot any range's rows are as of.
    let oldest = jobs
        .iter()
        .flat_map(|j| j.meta.copied_in.keys().filter_map(|r| j.meta.as_of(*r)))
        .min_by(|a, b| a.compare(b).unwrap_or(Ordering::Equal));
    let Some(oldest) = oldest.cloned() else {
        return Ok(());
    };
    if oldest == *handover {
        return Ok(());
    }
    tracing::info!(source = %site.name, from = %oldest, to = %handover, "catching up ranges copied before the interruption");
    let stream_error = |e: Box<dyn std::error::Error + Send + Sync>| BackfillError::Stream {
        site: site.name.clone(),
        source: e,
    };
    let tables: BTreeSet<TableName> = published.iter().cloned().collect();
    // Whole transactions only (no parts): the filter below decides per transaction, at its
    // commit position, which of its changes each range needs.
    let options = StreamOptions {
        tables,
        start: Some(oldest),
        merge: false,
        part_events: None,
        deployment: Some(deployment.to_owned()),
        shapes: false,
        acknowledged: None,
        source_key: None,
        take_over_from: None,
        timeout: site.stream_timeout,
    };
    let mut stream = match AnyStream::start(&site.connection(), options).await {
        Ok(stream) => stream,
        Err(StreamError::ForeignPosition(..)) => {
            return Err(BackfillError::Invalid(
                "the recorded positions are of another kind of database".into(),
            ));
        }
        Err(e) => return Err(stream_error(Box::new(e))),
    };
    // One applier per mapping and target, each recording how far it applied under a key of
    // its own: the same source transaction goes to each, filtered to its table, and with one
    // key per target the second would take it as already applied.
    let mut writers = Vec::new();
    for (index, job) in jobs.iter().enumerate() {
        for (target, routes) in &job.targets {
            writers.push((
                index,
                target.name.clone(),
                AnyApplier::connect(
                    &target.connection(),
                    routes.clone(),
                    ApplyOptions::default(),
                )
                .await
                .map_err(|source| BackfillError::Apply {
                    site: target.name.clone(),
                    source,
                })?,
            ));
        }
    }
    // Finds, in the source database, the range a key falls in for tables cut on their whole
    // primary key: the database compares it with the cut points, with the same types and
    // collations the ranges were read with (comparing in Rust could disagree with the
    // server's collation).
    let mut classifier = if jobs.iter().any(|j| !j.meta.key_columns.is_empty()) {
        Some(
            AnySnapshot::open(&site.connection())
                .await
                .map_err(snapshot_error(site))?,
        )
    } else {
        None
    };
    let copied_at =
        |job: &Job, range: Option<u64>| -> Option<Position> { job.meta.as_of(range?).cloned() };
    let after = |a: &Position, b: &Position| {
        a.compare(b)
            .map(|o| o == Ordering::Greater)
            .unwrap_or(false)
    };
    loop {
        let item = tokio::time::timeout(Duration::from_secs(120), stream.next())
            .await
            .map_err(|_| stream_error("no progress for 120 s while catching up".into()))?
            .map_err(|e| stream_error(Box::new(e)))?;
        let tx = match item {
            StreamItem::Heartbeat(p) => {
                if !after(handover, &p) {
                    break;
                }
                continue;
            }
            StreamItem::Transaction(tx) => tx,
            // Not delivered: the stream was started for whole transactions.
            StreamItem::Part(_) | StreamItem::Shape(_) => continue,
        };
        if after(&tx.position, handover) {
            break;
        }
        // The ranges of each event's old and new key.
        let mut ranges: Vec<(Option<u64>, Option<u64>)> = vec![(None, None); tx.events.len()];
        for job in jobs {
            let events: Vec<usize> = (0..tx.events.len())
                .filter(|i| tx.events[*i].table == job.schema.name)
                .collect();
            if events.is_empty() {
                continue;
            }
            match &mut classifier {
                Some(classifier) if !job.meta.key_columns.is_empty() => {
                    let values = |key: &Row| -> Option<Vec<Value>> {
                        job.meta
                            .key_columns
                            .iter()
                            .map(|c| key.get(c).cloned())
                            .collect()
                    };
                    let mut keys = Vec::new();
                    let mut slots = Vec::new();
                    for &i in &events {
                        let event = &tx.events[i];
                        if let Some(k) = values(&event.key) {
                            keys.push(k);
                            slots.push((i, false));
                        }
                        if let Some(k) = new_key(&job.schema, event).as_ref().and_then(values) {
                            keys.push(k);
                            slots.push((i, true));
                        }
                    }
                    let found = classify(classifier, &job.schema, &job.meta, &keys)
                        .await
                        .map_err(snapshot_error(site))?;
                    for ((i, is_new), range) in slots.into_iter().zip(found) {
                        if is_new {
                            ranges[i].1 = Some(range);
                        } else {
                            ranges[i].0 = Some(range);
                        }
                    }
                }
                _ => {
                    for &i in &events {
                        let event = &tx.events[i];
                        ranges[i] = (
                            job.meta.range_of(&event.key),
                            new_key(&job.schema, event).and_then(|k| job.meta.range_of(&k)),
                        );
                    }
                }
            }
        }
        for (index, target, writer) in &mut writers {
            let job = &jobs[*index];
            let table = &job.schema.name;
            let mut events = Vec::new();
            for (i, event) in tx.events.iter().enumerate() {
                if &event.table != table {
                    continue;
                }
                let (old_range, new_range) = ranges[i];
                let old = copied_at(job, old_range).is_some_and(|p| after(&tx.position, &p));
                let new_key = new_key(&job.schema, event);
                let new = copied_at(job, new_range).is_some_and(|p| after(&tx.position, &p));
                match event.op {
                    Op::Insert if new => events.push(event.clone()),
                    Op::Delete if old => events.push(event.clone()),
                    Op::Update if old && new => events.push(event.clone()),
                    Op::Update if old => events.push(ChangeEvent {
                        op: Op::Delete,
                        after: None,
                        ..event.clone()
                    }),
                    Op::Update if new => {
                        if event
                            .after
                            .iter()
                            .flat_map(|r| r.iter())
                            .any(|(_, v)| *v == Value::Unchanged)
                        {
                            return Err(BackfillError::Refused(format!(
                                "a key-changing update of {table} during the interrupted backfill carries no full row: start the backfill over"
                            )));
                        }
                        events.push(ChangeEvent {
                            op: Op::Insert,
                            key: new_key.clone().unwrap_or_default(),
                            before: None,
                            ..event.clone()
                        });
                    }
                    _ => {}
                }
            }
            let filtered = Transaction {
                source: catch_up_key(&job.mapping.name, &site.name, deployment),
                events,
                ..tx.clone()
            };
            writer
                .apply(std::slice::from_ref(&filtered))
                .await
                .map_err(|source| BackfillError::Apply {
                    site: target.clone(),
                    source,
                })?;
        }
    }
    stream.shutdown().await;
    if let Some(classifier) = classifier {
        classifier.close().await;
    }
    Ok(())
}

/// Records the ranges a target holds from an earlier attempt (by its marker, which names the
/// snapshot the range was read at) but the state store does not (the process died between the
/// target's commit and the store's), with that attempt, so that the catch-up before copying
/// brings them forward like the others. With several targets a range is recorded only when
/// every target holds it from the same attempt; otherwise it is left to the copy, which
/// refuses it.
pub(super) async fn reconcile_markers(
    jobs: &mut [Job],
    state: &Arc<StateStore>,
) -> Result<(), BackfillError> {
    for job in jobs.iter_mut() {
        let current = job.meta.attempts.len().saturating_sub(1);
        let done = super::plan::done_ranges(state, job).await?;
        let prefix = marker_prefix(&job.mapping.name, state.deployment_id());
        let prefix = prefix.as_str();
        let mut held: Vec<BTreeMap<u64, usize>> = Vec::new();
        for (target, _) in &job.targets {
            let connection = target.connection();
            let sources = duplex_connectors::load::position_sources(&connection)
                .await
                .map_err(super::admin_error(target))?;
            let ranges: Vec<u64> = sources
                .iter()
                .filter_map(|s| s.strip_prefix(prefix)?.parse().ok())
                .filter(|range| !done.contains_key(range))
                .collect();
            let mut found = BTreeMap::new();
            if !ranges.is_empty() {
                let apply_error = |source| BackfillError::Apply {
                    site: target.name.clone(),
                    source,
                };
                let mut reader =
                    AnyApplier::connect(&connection, Vec::new(), ApplyOptions::default())
                        .await
                        .map_err(apply_error)?;
                for range in ranges {
                    let position = reader
                        .position(&marker(&job.mapping.name, state.deployment_id(), range))
                        .await
                        .map_err(apply_error)?;
                    if let Some(attempt) = position
                        .and_then(|p| job.meta.attempts[..current].iter().position(|a| *a == p))
                    {
                        found.insert(range, attempt);
                    }
                }
            }
            held.push(found);
        }
        let Some((first, others)) = held.split_first() else {
            continue;
        };
        for (range, attempt) in first {
            if others.iter().any(|o| o.get(range) != Some(attempt)) {
                continue;
            }
            tracing::info!(mapping = %job.mapping.name, range, "a range copied before the interruption but not recorded: recorded from its marker");
            job.meta.copied_in.insert(*range, *attempt as u32);
            let (name, table, meta) = (
                job.mapping.name.clone(),
                job.meta.table.clone(),
                job.meta.clone(),
            );
            let range = *range;
            let store = state.clone();
            tokio::task::spawn_blocking(move || {
                store.write(|w| {
                    w.mark_range_done(&name, &table, range, 0)?;
                    w.save_backfill_meta(&name, &meta)
                })
            })
            .await
            .map_err(|e| BackfillError::Crashed(e.to_string()))??;
        }
    }
    Ok(())
}

/// The primary key of the row an event leaves behind (`None` for a delete).
fn new_key(schema: &TableSchema, event: &ChangeEvent) -> Option<Row> {
    event.after.as_ref().map(|row| {
        schema
            .primary_key
            .iter()
            .map(|k| (k.as_str(), row.get(k).cloned().unwrap_or(Value::Null)))
            .collect()
    })
}

/// The range of each of `keys` (values of `meta.key_columns`), as the source database
/// compares them with the cut points.
async fn classify(
    classifier: &mut AnySnapshot,
    schema: &TableSchema,
    meta: &BackfillMeta,
    keys: &[Vec<Value>],
) -> Result<Vec<u64>, duplex_connectors::SnapshotError> {
    let columns = meta.range(0, schema).columns;
    let cuts = meta.cuts();
    classifier
        .range_indexes(&schema.name, &columns, &cuts, keys)
        .await
}
