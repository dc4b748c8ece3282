//! The coordinator: the one task that decides, batch by batch, in each site's commit order.
//!
//! It takes what the readers deliver (and the requests of `duplex conflicts`), up to
//! [`BATCH_INPUTS`] at a time, and decides them in ONE state-store transaction: the row
//! versions and records, the conflict records, the new outbox entries, the entries echoes
//! retire and every reader's new position. Only after that transaction commits are the entries
//! handed to the writers, the sources acknowledged, the conflicts logged and the requests
//! answered ([`Done`]). A failure aborts the transaction and ends the engine's attempt; the next
//! attempt rebuilds the coordinator from the store, so nothing in memory needs undoing.
//!
//! Inputs of one site are decided in the order that site's reader delivered them, which is its
//! commit order; the decisions themselves are [`super::merge`]'s, so a successor is never
//! taken for a conflict and a conflict never for a successor.
//!
//! # Off the runtime's threads
//!
//! Deciding a batch reads the store through the open transaction and ends in its commit, which
//! fsyncs. Neither may stall the runtime's threads (the readers, writers and control socket run
//! there), so each transaction — a batch, or a reclaim — runs whole on tokio's blocking pool
//! through `spawn_blocking`, as `backfill` does with the same calls. Only the commit could not be
//! sent there alone: the transaction borrows the store (`StateWriter<'_>`) and the decisions
//! read through it, so the whole synchronous decision moves, and the loop awaits it before it
//! hands anything on. Nothing else changes: the order is still decide, commit, then send.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use duplex_connectors::{Op, Origin, Position, Row, StreamItem, TableShape, Transaction};
use duplex_state::{
    ConflictRecord, ConflictSide, ConflictStatus, Resolution, RowVersions, StateStore, StateWriter,
    VersionVector,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::EngineError;
use super::backlog::Backlog;
use super::column_merge;
use super::control;
use super::merge::{self, Classification, Outcome, Version};
use super::outbox::{Outbox, OutboxWrite, outbox_name, outbox_position};
use super::plan::MergePlan;
use super::rows::{MergeMapping, RowData, display_image, fill_unchanged, same_image};
use super::sites::writer_failure;
use crate::shutdown::stop_requested;

mod echo;
mod filtered;
mod held;
mod take;

use filtered::Outside;

/// Inputs the coordinator takes in one state-store transaction, at most.
const BATCH_INPUTS: usize = 512;
/// How often the engine logs its counters.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// What reaches the coordinator.
pub(super) enum Input {
    /// A reader's item.
    Item(usize, StreamItem),
    /// A reader or writer failed.
    Failed(EngineError),
    /// A request of `duplex conflicts` (through the control socket).
    Control(control::Request, oneshot::Sender<control::Response>),
}

/// One row's change, made by an application at a site, as the coordinator decides it.
struct RowChange<'k> {
    /// The site the change was read from.
    site: &'k str,
    /// The site's commit time of the change's transaction, in µs since the epoch.
    commit_micros: i64,
    /// The row's key columns (canonical).
    key_row: &'k Row,
    /// The row's key text (its identity in the state store).
    key: &'k str,
    /// Whether the row existed at the site before the change.
    existed: bool,
    /// The canonical before-image, as the site's log carries it.
    before: Option<Row>,
    /// The canonical after-image; `None` for a delete.
    after: Option<Row>,
}

/// A row's newest version (`data.image` with `vector`), to be written to every site of its
/// mapping that does not hold it.
struct Propagation<'a> {
    /// The row's mapping.
    mapping: &'a MergeMapping,
    /// The row's key columns (canonical).
    key_row: &'a Row,
    /// The row's key text.
    key: &'a str,
    /// The row's versions; a site found holding the image already now holds `vector`.
    rv: &'a mut RowVersions,
    /// The engine's record of the row: the newest image and what each site is expected to hold.
    data: &'a mut RowData,
    /// The version vector of the newest image.
    vector: &'a VersionVector,
    /// The commit time (µs since the epoch) of the change that made the writes necessary:
    /// they are pending at their sites since then.
    since: i64,
}

/// Counters for the log.
#[derive(Debug, Default, Clone)]
struct Stats {
    local_changes: u64,
    writes: u64,
    echoes: u64,
    skipped: u64,
    conflicts: u64,
}

/// What one processed batch produced, to be carried out after its state commit.
#[derive(Default)]
struct Done {
    /// (site index, number, entry, the commit time in µs of the change it carries out).
    writes: Vec<(usize, u64, Arc<OutboxWrite>, i64)>,
    acks: Vec<(usize, Position)>,
    replies: Vec<(oneshot::Sender<control::Response>, control::Response)>,
    /// Conflicts decided, logged once their records are committed.
    notes: Vec<String>,
    /// The same conflicts as (mapping, policy, outcome), counted once committed.
    decided: Vec<(String, String, &'static str)>,
    /// Held conflicts settled by an operator, counted once committed.
    settled: u64,
    /// Echoes read, each of site `index`: the last entry the site holds, and the entries of
    /// the echo that landed as (number, operation).
    echoed: Vec<Echoed>,
}

/// One echo's news for the backlog of its site (see [`Done::echoed`]).
struct Echoed {
    index: usize,
    upto: u64,
    landed: Vec<(u64, duplex_connectors::Op)>,
}

impl Done {
    /// Logs the decided conflicts (their records are committed).
    fn log_notes(&self) {
        for note in &self.notes {
            tracing::warn!("{note}");
        }
        let telemetry = crate::telemetry::global();
        for (mapping, policy, outcome) in &self.decided {
            telemetry.conflict(mapping, policy, outcome);
        }
        for _ in 0..self.settled {
            telemetry.conflict_settled();
        }
    }
}

/// The deciding half of the engine: everything it decides goes through one state-store
/// transaction per batch (see the module doc).
pub(super) struct Coordinator {
    plan: Arc<MergePlan>,
    store: Arc<StateStore>,
    /// Per site (plan order), the outbox entries not yet echoed.
    outboxes: Vec<Outbox>,
    /// Per site, the next outbox sequence number.
    next_seq: Vec<u64>,
    /// Per site, the position up to which its log is decided in this attempt.
    decided: Vec<Option<Position>>,
    /// Per site, the outbox position of the last echo read in this attempt: the entries
    /// after it, up to the next echo's, are exactly the ones that echo's transaction carried.
    last_echo: Vec<Option<u64>>,
    /// (site index, table) whose next change of columns is followed, once
    /// ([`MergePlan::accepted_shapes`]).
    accepting: std::collections::HashSet<(usize, duplex_connectors::TableName)>,
    stats: Stats,
}

impl Coordinator {
    /// A coordinator that goes on from the outboxes and sequence numbers restored from the
    /// store (plan order).
    pub(super) fn new(
        plan: Arc<MergePlan>,
        store: Arc<StateStore>,
        outboxes: Vec<Outbox>,
        next_seq: Vec<u64>,
    ) -> Self {
        let sites = next_seq.len();
        let accepting = plan
            .accepted_shapes
            .iter()
            .filter_map(|(site, table)| {
                let index = plan.sites.iter().position(|s| s.site.name == *site)?;
                Some((index, table.clone()))
            })
            .collect();
        Coordinator {
            plan,
            store,
            outboxes,
            next_seq,
            last_echo: vec![None; sites],
            decided: vec![None; sites],
            accepting,
            stats: Stats::default(),
        }
    }

    /// Logs the counters.
    pub(super) fn log_stats(&self, message: &str) {
        let s = &self.stats;
        tracing::info!(
            local_changes = s.local_changes,
            writes = s.writes,
            echoes = s.echoes,
            skipped_writes = s.skipped,
            conflicts = s.conflicts,
            "{message}"
        );
    }

    /// Forgets the versions of rows deleted everywhere longer ago than the plan keeps them.
    fn reclaim(&mut self) -> Result<(), EngineError> {
        let horizon =
            now_millis().saturating_sub(self.plan.deleted_rows_kept_for.as_millis() as u64);
        let store = Arc::clone(&self.store);
        let mut w = store.begin_write()?;
        let mut reclaimed = 0;
        for mapping in &self.plan.mappings {
            reclaimed += w.reclaim_deleted(&mapping.name, horizon)?;
        }
        if reclaimed == 0 {
            // Nothing changed: dropping the batch aborts it, no commit (and fsync) needed.
            return Ok(());
        }
        w.commit()?;
        tracing::debug!(
            reclaimed,
            "reclaimed the versions of rows deleted everywhere"
        );
        Ok(())
    }

    /// Decides a batch of inputs in one state-store transaction and commits it.
    fn process(&mut self, batch: Vec<Input>) -> Result<Done, EngineError> {
        let mut done = Done::default();
        let store = Arc::clone(&self.store);
        let mut w = store.begin_write()?;
        // On error the state-store transaction is dropped (aborted) and the attempt ends: the
        // next attempt rebuilds the coordinator from the store, so the in-memory outbox needs
        // no undo here.
        for input in batch {
            match input {
                Input::Failed(error) => return Err(error),
                Input::Item(index, StreamItem::Transaction(tx)) => {
                    self.transaction(&mut w, index, &tx, &mut done)?;
                    w.save_position(&self.plan.sites[index].site.name, &tx.position)?;
                    self.decided[index] = Some(tx.position.clone());
                    done.acks.push((index, tx.position));
                }
                Input::Item(index, StreamItem::Heartbeat(position)) => {
                    w.save_position(&self.plan.sites[index].site.name, &position)?;
                    self.decided[index] = Some(position.clone());
                    done.acks.push((index, position));
                }
                Input::Item(index, StreamItem::Shape(shape)) => {
                    self.shape(&mut w, index, shape)?;
                }
                Input::Item(index, StreamItem::Part(_)) => {
                    return Err(EngineError::Unsupported(format!(
                        "site {} delivered part of a transaction to the merge engine, which reads whole transactions (a bug)",
                        self.plan.sites[index].site.name
                    )));
                }
                Input::Control(request, reply) => {
                    let response = self.control(&mut w, request, &mut done)?;
                    done.replies.push((reply, response));
                }
            }
        }
        w.commit()?;
        Ok(done)
    }

    /// A table's shape as a site's log announces it. The engine does not follow schema
    /// changes: the first shape of a table is recorded (with the site's position, in the same
    /// state-store transaction), and a different one stops the engine before the change that
    /// has it is decided, unless it is the first change of a table accepted in this run
    /// (`--accept-schema-change`: the DBA made it on every site), which is recorded instead.
    /// Changes read before it (an echo of a write made before the change, say) still carry
    /// the recorded shape, so the change accepted is the one the engine stopped at.
    fn shape(
        &mut self,
        w: &mut StateWriter<'_>,
        index: usize,
        shape: TableShape,
    ) -> Result<(), EngineError> {
        let site = &self.plan.sites[index].site.name;
        let key = crate::shape::shape_key(site, &shape.table);
        match w.position::<TableShape>(&key)? {
            Some(known) if known == shape => Ok(()),
            Some(known) if self.accepting.remove(&(index, shape.table.clone())) => {
                tracing::info!(%site, table = %shape.table, change = %crate::shape::describe_change(&known, &shape), "following the schema change accepted with --accept-schema-change");
                w.save_position(&key, &shape)?;
                Ok(())
            }
            Some(known) => Err(EngineError::SchemaChange(format!(
                "the columns of {site}.{table} changed in its change log ({change}); two-way mappings do not follow schema changes yet, so nothing from this change on was merged. Make the same change on the table of every site of its mapping (keep the other sites from writing to it meanwhile), then start duplex with `duplex run --accept-schema-change {table}`: it resumes at this change",
                table = shape.table,
                change = crate::shape::describe_change(&known, &shape),
            ))),
            None => {
                w.save_position(&key, &shape)?;
                Ok(())
            }
        }
    }

    /// One transaction read from site `index`.
    fn transaction(
        &mut self,
        w: &mut StateWriter<'_>,
        index: usize,
        tx: &Transaction,
        done: &mut Done,
    ) -> Result<(), EngineError> {
        let site = self.plan.sites[index].site.name.clone();
        // MariaDB flags duplex's transactions (skip_replication); PostgreSQL and MySQL are
        // recognised by the positions row alone.
        let outbox = outbox_name(&site);
        if tx.origin == Origin::Duplex
            || tx
                .events
                .iter()
                .any(|e| outbox_position(e, &outbox).is_some())
        {
            return self.echo(w, index, tx, done);
        }
        let commit_micros = tx.commit_time.timestamp_micros();
        let plan = Arc::clone(&self.plan);
        for event in &tx.events {
            let Some(mapping) = plan.mapping_for(&site, &event.table) else {
                continue;
            };
            let canonical =
                |row: &Option<Row>| row.as_ref().map(|r| mapping.read_row(&site, r)).transpose();
            let before = canonical(&event.before)?;
            let after = canonical(&event.after)?;
            let old_key = mapping
                .key_of(&mapping.read_row(&site, &event.key)?)
                .ok_or_else(|| missing_key(mapping, &site))?;
            match event.op {
                Op::Insert | Op::Update => {
                    let new_key = after
                        .as_ref()
                        .and_then(|a| mapping.key_of(a))
                        .unwrap_or_else(|| old_key.clone());
                    if event.op == Op::Update && new_key.1 != old_key.1 {
                        // A key change is the old row's delete and the new row's insert.
                        let old = RowChange {
                            site: &site,
                            commit_micros,
                            key_row: &old_key.0,
                            key: &old_key.1,
                            existed: true,
                            before,
                            after: None,
                        };
                        self.change(w, mapping, old, done)?;
                        let new = RowChange {
                            site: &site,
                            commit_micros,
                            key_row: &new_key.0,
                            key: &new_key.1,
                            existed: false,
                            before: None,
                            after,
                        };
                        self.change(w, mapping, new, done)?;
                    } else {
                        let change = RowChange {
                            site: &site,
                            commit_micros,
                            key_row: &new_key.0,
                            key: &new_key.1,
                            existed: event.op == Op::Update,
                            before,
                            after,
                        };
                        self.change(w, mapping, change, done)?;
                    }
                }
                Op::Delete => {
                    let change = RowChange {
                        site: &site,
                        commit_micros,
                        key_row: &old_key.0,
                        key: &old_key.1,
                        existed: true,
                        before,
                        after: None,
                    };
                    self.change(w, mapping, change, done)?;
                }
            }
        }
        Ok(())
    }

    /// An application's change of one row at its site.
    fn change(
        &mut self,
        w: &mut StateWriter<'_>,
        mapping: &MergeMapping,
        change: RowChange<'_>,
        done: &mut Done,
    ) -> Result<(), EngineError> {
        let RowChange {
            site,
            commit_micros,
            key_row,
            key,
            existed,
            before,
            mut after,
        } = change;
        self.stats.local_changes += 1;
        let (mut rv, mut data) = load(w, mapping, key)?;
        // Every row the engine stores carries its record (see `store_row`).
        let known = !rv.payload.is_empty();
        if !known && existed {
            // A row duplex has no record of (copied by a backfill, or there before duplex
            // started) is the initial version, the same at every site, with the empty vector:
            // as the change's before-image shows it, or, when the log carries only the key,
            // known by its key alone (the first write of it then updates by key).
            data.image = Some(before.clone().unwrap_or_else(|| key_row.clone()));
        }
        if let Some(after) = &mut after {
            fill_unchanged(after, data.held_image(site));
        }
        // The version the change was made on: its before-image when the log carries it whole,
        // otherwise the version the site's log showed it holding.
        let base: Option<Row> = match before {
            Some(b) if b.len() == mapping.columns.len() => Some(b),
            _ => data.held_image(site).cloned(),
        };
        // What the site will hold once the writes still queued for it land: a write whose
        // condition this change happens to meet lands after it.
        let landing = self.after_queued(site, mapping, key, after.clone());
        if let (Some(filter), Some(row)) = (mapping.filters.get(site), after.as_ref())
            && !filter.matches(row)
        {
            let outside = Outside {
                site,
                commit_micros,
                key,
                row,
            };
            self.refuse_outside(w, mapping, outside, &rv, done)?;
            data.set_expected(site, landing);
            data.set_held(site, after);
            return store_row(w, mapping, key, rv, &data);
        }
        if let Some(id) = data.held_conflict {
            let mut local = rv.held.get(site).cloned().unwrap_or_default();
            local.increment(site);
            rv.merged.merge(&local);
            rv.held.insert(site.to_owned(), local);
            data.set_expected(site, landing);
            data.set_held(site, after);
            tracing::info!(mapping = %mapping.name, key = %key, site, conflict = id, "row changed while its conflict is held: kept at this site only until `duplex conflicts resolve {id}`");
            return store_row(w, mapping, key, rv, &data);
        }
        let mut classification = merge::classify(&rv, site);
        // The site's vector says which changes its row descends from, but a conditional write
        // lands wherever the row's image equals the write's condition: a write whose expected
        // image the site's own change happened to reach (1042 by the site's +1, 1042 by the
        // source's +3) replaces the row with an image lacking the site's changes, while the
        // vector still counts them. A change made on anything but the newest image is not
        // its successor, whatever the vectors say: it is decided as a conflict, from the
        // image it was made on, so nothing it did not see is overwritten.
        if let Classification::Successor(local) = &classification
            && !same_image(
                mapping.as_read_back(site, base.as_ref()).as_ref(),
                mapping.as_read_back(site, data.image.as_ref()).as_ref(),
            )
        {
            tracing::debug!(mapping = %mapping.name, key = %key, site, base = %display_image(base.as_ref()), newest = %display_image(data.image.as_ref()), "a change made on an image other than the newest: decided as a conflict");
            classification = Classification::Concurrent {
                local: local.clone(),
            };
        }
        tracing::debug!(mapping = %mapping.name, key = %key, site, ?classification, merged = %rv.merged, after = %display_image(after.as_ref()), "local change");
        match classification {
            Classification::Seen => {
                tracing::debug!(mapping = %mapping.name, key = %key, site, "change already accounted for");
            }
            Classification::Successor(vector) => {
                merge::record_successor(&mut rv, site, &vector);
                data.set_image(after.clone(), &mapping.sites);
                data.set_expected(site, landing);
                data.set_held(site, after);
                data.commit_micros = commit_micros;
                data.writer = site.to_owned();
                let newest = Propagation {
                    mapping,
                    key_row,
                    key,
                    rv: &mut rv,
                    data: &mut data,
                    vector: &vector,
                    since: commit_micros,
                };
                self.propagate(w, newest, done)?;
            }
            Classification::Concurrent { local } => {
                let theirs_image = data.image.clone();
                let theirs_vector = rv.merged.clone();
                let theirs_site = data.writer.clone();
                let theirs_time = micros_to_time(data.commit_micros);
                let mine = Version {
                    site,
                    commit_time: micros_to_time(commit_micros),
                    before: base.as_ref(),
                    after: after.as_ref(),
                };
                let theirs = Version {
                    site: &theirs_site,
                    commit_time: theirs_time,
                    before: base.as_ref(),
                    after: theirs_image.as_ref(),
                };
                let outcome = column_merge::resolve(
                    &mapping.policy,
                    &mapping.column_policies,
                    &mapping.sites,
                    &mine,
                    &theirs,
                );
                let resolved = merge::record_resolution(&mut rv, site, &local);
                data.set_expected(site, landing);
                data.set_held(site, after.clone());
                let side =
                    |site: &str, vector: &VersionVector, micros: i64, image: Option<&Row>| {
                        Ok::<_, EngineError>(ConflictSide {
                            site: site.to_owned(),
                            vector: vector.clone(),
                            commit_time_millis: micros / 1000,
                            row: image.map(duplex_state::codec::encode).transpose().map_err(
                                |e| EngineError::Codec(format!("a row of {}", mapping.name), e),
                            )?,
                            row_display: display_image(image),
                        })
                    };
                let mut record = ConflictRecord {
                    mapping: mapping.name.clone(),
                    key: key.as_bytes().to_vec(),
                    key_display: key.to_owned(),
                    sites: vec![
                        side(
                            &theirs_site,
                            &theirs_vector,
                            data.commit_micros,
                            theirs_image.as_ref(),
                        )?,
                        side(site, &local, commit_micros, after.as_ref())?,
                    ],
                    policy: mapping.policies_name(),
                    decision: String::new(),
                    detected_at_millis: now_millis(),
                    status: ConflictStatus::Held,
                };
                self.stats.conflicts += 1;
                match outcome {
                    Outcome::Write { row, decision } => {
                        let winner = if same_image(row.as_ref(), after.as_ref()) {
                            Some(site.to_owned())
                        } else if same_image(row.as_ref(), theirs_image.as_ref()) {
                            Some(theirs_site.clone())
                        } else {
                            None
                        };
                        record.decision = decision.clone();
                        record.status = ConflictStatus::Resolved(Resolution {
                            winner: winner.clone(),
                            by: mapping.policies_name(),
                            at_millis: now_millis(),
                        });
                        let id = w.record_conflict(&record)?;
                        done.notes.push(format!(
                            "conflict {id} resolved: mapping {}, row {key}, sites {theirs_site} and {site}: {decision}",
                            mapping.name
                        ));
                        done.decided.push((
                            mapping.name.clone(),
                            mapping.policy_name(),
                            "resolved",
                        ));
                        data.set_image(row, &mapping.sites);
                        data.commit_micros = data.commit_micros.max(commit_micros);
                        data.writer = winner.unwrap_or_else(|| site.to_owned());
                        let newest = Propagation {
                            mapping,
                            key_row,
                            key,
                            rv: &mut rv,
                            data: &mut data,
                            vector: &resolved,
                            since: commit_micros,
                        };
                        self.propagate(w, newest, done)?;
                    }
                    Outcome::Hold => {
                        record.decision =
                            "held: each site keeps its own value until `duplex conflicts resolve`"
                                .into();
                        let id = w.record_conflict(&record)?;
                        done.notes.push(format!(
                            "conflict {id} held: mapping {}, row {key}, sites {theirs_site} and {site} keep their own values; settle it with `duplex conflicts resolve {id} --take <site>`",
                            mapping.name
                        ));
                        done.decided
                            .push((mapping.name.clone(), mapping.policy_name(), "held"));
                        data.held_conflict = Some(id);
                    }
                }
            }
        }
        store_row(w, mapping, key, rv, &data)
    }

    /// The image `site` holds after the writes queued for it for this row, and not yet
    /// echoed, have met (or missed) their conditions, starting from `image`: writes that
    /// landed before the change being read were echoed before it, so every queued one comes
    /// after it in the site's log.
    fn after_queued(
        &self,
        site: &str,
        mapping: &MergeMapping,
        key: &str,
        image: Option<Row>,
    ) -> Option<Row> {
        let index = self
            .plan
            .site_index(site)
            .expect("mapping sites are plan sites");
        let mut image = image;
        for (_, write) in self.outboxes[index].of_row(&mapping.name, key) {
            if same_image(write.before.as_ref(), image.as_ref()) {
                image = write.after.clone();
            }
        }
        image
    }

    /// Queues the newest version (`data.image`, `vector`) for every site of the mapping that
    /// does not hold it; a site that holds the same image already now holds this version.
    fn propagate(
        &mut self,
        w: &mut StateWriter<'_>,
        newest: Propagation<'_>,
        done: &mut Done,
    ) -> Result<(), EngineError> {
        let Propagation {
            mapping,
            key_row,
            key,
            rv,
            data,
            vector,
            since,
        } = newest;
        for site in &mapping.sites {
            let expected = data.expected(site).cloned();
            // What the site is to hold: nothing of a row its filter does not pass.
            let image = mapping.visible(site, data.image.as_ref());
            let index = self
                .plan
                .site_index(site)
                .expect("mapping sites are plan sites");
            if same_image(expected.as_ref(), image.as_ref()) {
                // The site holds this image already, or will once a queued write lands: it
                // holds this version then. (Not earlier: a local change made there before
                // that write lands did not see it.)
                let queued = self.outboxes[index]
                    .of_row(&mapping.name, key)
                    .last()
                    .map(|(seq, _)| seq);
                match queued {
                    Some(seq) if !same_image(data.held_image(site), image.as_ref()) => {
                        let write = self.outboxes[index].get_mut(seq).expect("indexed");
                        write.vector.merge(vector);
                        w.put_pending(site, seq, &*write)?;
                    }
                    _ => {
                        merge::record_echo(rv, site, vector);
                        data.set_held(site, image);
                    }
                }
                continue;
            }
            let op = match (&expected, &image) {
                (None, Some(_)) => Op::Insert,
                (Some(_), None) => Op::Delete,
                _ => Op::Update,
            };
            let write = OutboxWrite {
                mapping: mapping.name.clone(),
                key: key.to_owned(),
                op,
                key_row: key_row.clone(),
                before: expected,
                after: image.clone(),
                vector: vector.clone(),
            };
            let seq = self.next_seq[index];
            self.next_seq[index] += 1;
            tracing::debug!(mapping = %mapping.name, key = %key, site = %site, seq, op = ?write.op, before = %display_image(write.before.as_ref()), after = %display_image(write.after.as_ref()), vector = %vector, "write queued");
            w.put_pending(site, seq, &write)?;
            self.outboxes[index].insert(seq, write.clone());
            done.writes.push((index, seq, Arc::new(write), since));
            data.set_expected(site, image);
            self.stats.writes += 1;
        }
        Ok(())
    }
}

/// The coordinator between batches. It lives behind a mutex only so that each state-store
/// transaction can borrow it on a blocking thread (`spawn_blocking` takes `'static` work): the
/// loop awaits every such transaction before it starts the next or looks at the coordinator,
/// so the lock is never contended and never held across an await.
pub(super) type SharedCoordinator = Arc<Mutex<Coordinator>>;

/// Runs `work` (one state-store transaction) on tokio's blocking pool and waits for it. A
/// panic there unwinds here, as it did when the coordinator ran on the runtime's threads.
async fn off_runtime<T: Send + 'static>(
    coordinator: &SharedCoordinator,
    work: impl FnOnce(&mut Coordinator) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    let coordinator = Arc::clone(coordinator);
    let decided = tokio::task::spawn_blocking(move || {
        let mut coordinator = coordinator
            .lock()
            .expect("a panic while deciding ends the attempt");
        work(&mut coordinator)
    })
    .await;
    match decided {
        Ok(outcome) => outcome,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => Err(EngineError::Crashed(error.to_string())),
    }
}

/// Takes the inputs until `shutdown` turns true (Ok) or the attempt fails (Err): each batch is
/// decided and committed, then its outbox entries go to the writers (`writers`, plan order;
/// counted in each site's `backlogs`) and its positions to the readers (`acks`).
pub(super) async fn coordinate(
    coordinator: &SharedCoordinator,
    inputs: &mut mpsc::Receiver<Input>,
    writers: &[mpsc::Sender<(u64, Arc<OutboxWrite>)>],
    backlogs: &[Arc<Backlog>],
    acks: &[watch::Sender<Option<Position>>],
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), EngineError> {
    let plan = Arc::clone(&coordinator.lock().expect("not shared yet").plan);
    let reclaim_every =
        (plan.deleted_rows_kept_for / 2).clamp(Duration::from_millis(500), Duration::from_secs(60));
    let mut reclaim = tokio::time::interval(reclaim_every);
    let mut progress_at = Instant::now() + PROGRESS_EVERY;
    loop {
        let first = tokio::select! {
            biased;
            _ = stop_requested(shutdown) => {
                // What the readers delivered already is decided and recorded before stopping
                // (its outbox entries are written by the next run).
                let mut rest = Vec::new();
                while let Ok(input) = inputs.try_recv() {
                    rest.push(input);
                }
                if rest.is_empty() {
                    return Ok(());
                }
                return off_runtime(coordinator, |c| c.process(rest))
                    .await
                    .map(|done| done.log_notes());
            }
            input = inputs.recv() => match input {
                Some(input) => input,
                None => return Err(EngineError::Crashed("every reader and writer stopped".into())),
            },
            _ = reclaim.tick() => {
                off_runtime(coordinator, Coordinator::reclaim).await?;
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < BATCH_INPUTS {
            match inputs.try_recv() {
                Ok(input) => batch.push(input),
                Err(_) => break,
            }
        }
        let done = off_runtime(coordinator, |c| c.process(batch)).await?;
        done.log_notes();
        // Entries must reach a writer in sequence order, with no gap: a writer that stopped
        // ends the attempt (the next one re-sends the outbox from the store). They wait for it
        // from now on (before it can commit them).
        super::backlog::queue(backlogs, &done.writes);
        for (index, seq, write, _) in done.writes {
            if writers[index].send((seq, write)).await.is_err() {
                return Err(writer_failure(inputs, &plan.sites[index].site.name));
            }
        }
        if plan.bus.is_some() {
            // The sites are written by `run --role writer`: their echoes say what landed.
            for echo in &done.echoed {
                backlogs[echo.index].echoed(echo.upto, &echo.landed);
            }
        }
        for (index, position) in done.acks {
            acks[index].send_replace(Some(position));
        }
        for (reply, response) in done.replies {
            let _ = reply.send(response);
        }
        if Instant::now() >= progress_at {
            progress_at = Instant::now() + PROGRESS_EVERY;
            coordinator
                .lock()
                .expect("no decision is running")
                .log_stats("merge engine progress");
        }
    }
}

fn missing_key(mapping: &MergeMapping, site: &str) -> EngineError {
    EngineError::Unsupported(format!(
        "mapping {}: a change read from site {site} lacks a key column ({}): the table's primary key must be among the mapped columns",
        mapping.name,
        mapping.key.join(", ")
    ))
}

/// The row's versions and the engine's record of it (defaults for a row never seen).
fn load(
    w: &StateWriter<'_>,
    mapping: &MergeMapping,
    key: &str,
) -> Result<(RowVersions, RowData), EngineError> {
    let rv = w
        .row_versions(&mapping.name, key.as_bytes())?
        .unwrap_or_default();
    let data = if rv.payload.is_empty() {
        RowData::default()
    } else {
        duplex_state::codec::decode(&rv.payload)
            .map_err(|e| EngineError::Codec(format!("row {key} of mapping {}", mapping.name), e))?
    };
    Ok((rv, data))
}

/// Stores the row's versions and record; marks it deleted-everywhere when every site holds
/// its delete.
fn store_row(
    w: &mut StateWriter<'_>,
    mapping: &MergeMapping,
    key: &str,
    mut rv: RowVersions,
    data: &RowData,
) -> Result<(), EngineError> {
    let everywhere = data.image.is_none()
        && data.held_conflict.is_none()
        && data.expect.is_empty()
        && data.holds.is_empty()
        && mapping
            .sites
            .iter()
            .all(|s| rv.held.get(s) == Some(&rv.merged));
    rv.deleted_at = if everywhere {
        Some(rv.deleted_at.unwrap_or_else(now_millis))
    } else {
        None
    };
    rv.payload = duplex_state::codec::encode(data)
        .map_err(|e| EngineError::Codec(format!("row {key} of mapping {}", mapping.name), e))?;
    w.put_row_versions(&mapping.name, key.as_bytes(), &rv)?;
    Ok(())
}

fn now_millis() -> u64 {
    Utc::now().timestamp_millis().max(0) as u64
}

fn micros_to_time(micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(micros).single().unwrap_or_default()
}
