//! Model test: random sequences of operations, applied both to a [`StateStore`] and to an
//! in-memory model made of `BTreeMap`s, must produce the same observations, including across
//! closing and reopening the store and across batches that are committed or abandoned.
//!
//! Each case picks the store's commit durability at random. `Deferred` (redb's
//! `Durability::None`) skips the fsync of each commit, which keeps the 64 cases fast on slow
//! disks; a clean close still writes everything, which is what the reopen here relies on.
//! Crash safety, which does depend on the fsync, is tested with full durability only, in
//! `tests/crash.rs`. Failing cases are kept in `tests/store_model.proptest-regressions` (the
//! place proptest's default persistence picks for a file outside `src/`).

use std::collections::BTreeMap;
use std::path::Path;

use duplex_state::{
    CommitDurability, ConflictRecord, ConflictSide, ConflictStatus, Resolution, RowVersions,
    StateError, StateStore, StateWriter, StoreOptions, VersionVector,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

const SITES: [&str; 5] = ["shop", "erp", "wms", "crm", "\u{1f600}"];
const MAPPINGS: [&str; 3] = ["orders", "items", "orders\0"];
const KEYS: [&[u8]; 4] = [b"", b"\0", b"k1", b"k2"];
const TABLES: [&str; 2] = ["public.a", "public.b"];

/// An operation a batch (or a single-call method) can perform.
#[derive(Debug, Clone)]
enum Write {
    SavePosition(&'static str, u64),
    ReadPosition(&'static str),
    PutRow(&'static str, &'static [u8], RowVersions),
    ReadRow(&'static str, &'static [u8]),
    RemoveRow(&'static str, &'static [u8]),
    Reclaim(&'static str, u64),
    PutPending(&'static str, u64, String),
    RemovePending(&'static str, u64),
    MarkRange(&'static str, &'static str, u64, u64),
    ClearBackfill(&'static str),
    SaveMeta(&'static str, (u64, String)),
    RecordConflict(ConflictRecord),
    ResolveConflict(u64, Resolution),
}

/// An operation of the test.
#[derive(Debug, Clone)]
enum Op {
    Single(Write),
    Batch(Vec<Write>, bool),
    Positions,
    Pending(&'static str),
    DoneRanges(&'static str, &'static str),
    Meta(&'static str),
    Conflict(u64),
    Conflicts,
    HeldConflicts,
    Reopen,
}

/// What an operation returned, in a form both sides can produce.
#[derive(Debug, Clone, PartialEq)]
enum Obs {
    Unit,
    Bool(bool),
    Count(usize),
    Id(u64),
    Position(Option<u64>),
    Row(Option<RowVersions>),
    Positions(BTreeMap<String, u64>),
    Pending(Vec<(u64, String)>),
    Ranges(BTreeMap<u64, u64>),
    Meta(Option<(u64, String)>),
    Conflict(Option<ConflictRecord>),
    Conflicts(Vec<(u64, ConflictRecord)>),
    UnknownConflict(u64),
    ConflictNotHeld(u64),
}

#[derive(Debug, Clone, Default)]
struct Model {
    positions: BTreeMap<String, u64>,
    rows: BTreeMap<(String, Vec<u8>), RowVersions>,
    pending: BTreeMap<(String, u64), String>,
    ranges: BTreeMap<(String, String, u64), u64>,
    meta: BTreeMap<String, (u64, String)>,
    conflicts: BTreeMap<u64, ConflictRecord>,
    next_conflict: u64,
}

impl Model {
    fn apply(&mut self, write: &Write) -> Obs {
        match write {
            Write::SavePosition(site, position) => {
                self.positions.insert(site.to_string(), *position);
                Obs::Unit
            }
            Write::ReadPosition(site) => Obs::Position(self.positions.get(*site).copied()),
            Write::PutRow(mapping, key, row) => {
                self.rows
                    .insert((mapping.to_string(), key.to_vec()), row.clone());
                Obs::Unit
            }
            Write::ReadRow(mapping, key) => {
                Obs::Row(self.rows.get(&(mapping.to_string(), key.to_vec())).cloned())
            }
            Write::RemoveRow(mapping, key) => Obs::Bool(
                self.rows
                    .remove(&(mapping.to_string(), key.to_vec()))
                    .is_some(),
            ),
            Write::Reclaim(mapping, horizon) => {
                let before = self.rows.len();
                self.rows.retain(|(m, _), row| {
                    m != mapping || !matches!(row.deleted_at, Some(at) if at < *horizon)
                });
                Obs::Count(before - self.rows.len())
            }
            Write::PutPending(site, seq, item) => {
                self.pending.insert((site.to_string(), *seq), item.clone());
                Obs::Unit
            }
            Write::RemovePending(site, seq) => {
                Obs::Bool(self.pending.remove(&(site.to_string(), *seq)).is_some())
            }
            Write::MarkRange(mapping, table, id, rows) => {
                self.ranges
                    .insert((mapping.to_string(), table.to_string(), *id), *rows);
                Obs::Unit
            }
            Write::ClearBackfill(mapping) => {
                self.ranges.retain(|(m, _, _), _| m != mapping);
                self.meta.remove(*mapping);
                Obs::Unit
            }
            Write::SaveMeta(mapping, meta) => {
                self.meta.insert(mapping.to_string(), meta.clone());
                Obs::Unit
            }
            Write::RecordConflict(record) => {
                self.next_conflict += 1;
                self.conflicts.insert(self.next_conflict, record.clone());
                Obs::Id(self.next_conflict)
            }
            Write::ResolveConflict(id, resolution) => match self.conflicts.get_mut(id) {
                None => Obs::UnknownConflict(*id),
                Some(record) if record.status != ConflictStatus::Held => Obs::ConflictNotHeld(*id),
                Some(record) => {
                    record.status = ConflictStatus::Resolved(resolution.clone());
                    Obs::Unit
                }
            },
        }
    }

    /// Applies a batch: all of it if every step succeeds and it is committed, else nothing.
    fn apply_batch(&mut self, writes: &[Write], commit: bool) -> Vec<Obs> {
        let mut next = self.clone();
        let mut observations = Vec::new();
        for write in writes {
            let obs = next.apply(write);
            let failed = is_error(&obs);
            observations.push(obs);
            if failed {
                return observations;
            }
        }
        if commit {
            *self = next;
        }
        observations
    }

    fn observe(&self, op: &Op) -> Obs {
        match op {
            Op::Positions => Obs::Positions(self.positions.clone()),
            Op::Pending(site) => Obs::Pending(
                self.pending
                    .iter()
                    .filter(|((s, _), _)| s == site)
                    .map(|((_, seq), item)| (*seq, item.clone()))
                    .collect(),
            ),
            Op::DoneRanges(mapping, table) => Obs::Ranges(
                self.ranges
                    .iter()
                    .filter(|((m, t, _), _)| m == mapping && t == table)
                    .map(|((_, _, id), rows)| (*id, *rows))
                    .collect(),
            ),
            Op::Meta(mapping) => Obs::Meta(self.meta.get(*mapping).cloned()),
            Op::Conflict(id) => Obs::Conflict(self.conflicts.get(id).cloned()),
            Op::Conflicts => Obs::Conflicts(
                self.conflicts
                    .iter()
                    .map(|(id, c)| (*id, c.clone()))
                    .collect(),
            ),
            Op::HeldConflicts => Obs::Conflicts(
                self.conflicts
                    .iter()
                    .filter(|(_, c)| c.status == ConflictStatus::Held)
                    .map(|(id, c)| (*id, c.clone()))
                    .collect(),
            ),
            Op::Single(_) | Op::Batch(..) | Op::Reopen => unreachable!("not an observation"),
        }
    }
}

fn is_error(obs: &Obs) -> bool {
    matches!(obs, Obs::UnknownConflict(_) | Obs::ConflictNotHeld(_))
}

fn to_obs(result: Result<Obs, StateError>) -> Obs {
    match result {
        Ok(obs) => obs,
        Err(StateError::UnknownConflict { id }) => Obs::UnknownConflict(id),
        Err(StateError::ConflictNotHeld { id }) => Obs::ConflictNotHeld(id),
        Err(err) => panic!("unexpected store error: {err}"),
    }
}

fn apply_to_writer(writer: &mut StateWriter<'_>, write: &Write) -> Result<Obs, StateError> {
    Ok(match write {
        Write::SavePosition(site, position) => {
            writer.save_position(site, position)?;
            Obs::Unit
        }
        Write::ReadPosition(site) => Obs::Position(writer.position(site)?),
        Write::PutRow(mapping, key, row) => {
            writer.put_row_versions(mapping, key, row)?;
            Obs::Unit
        }
        Write::ReadRow(mapping, key) => Obs::Row(writer.row_versions(mapping, key)?),
        Write::RemoveRow(mapping, key) => Obs::Bool(writer.remove_row_versions(mapping, key)?),
        Write::Reclaim(mapping, horizon) => Obs::Count(writer.reclaim_deleted(mapping, *horizon)?),
        Write::PutPending(site, seq, item) => {
            writer.put_pending(site, *seq, item)?;
            Obs::Unit
        }
        Write::RemovePending(site, seq) => Obs::Bool(writer.remove_pending(site, *seq)?),
        Write::MarkRange(mapping, table, id, rows) => {
            writer.mark_range_done(mapping, table, *id, *rows)?;
            Obs::Unit
        }
        Write::ClearBackfill(mapping) => {
            writer.clear_backfill(mapping)?;
            Obs::Unit
        }
        Write::SaveMeta(mapping, meta) => {
            writer.save_backfill_meta(mapping, meta)?;
            Obs::Unit
        }
        Write::RecordConflict(record) => Obs::Id(writer.record_conflict(record)?),
        Write::ResolveConflict(id, resolution) => {
            writer.resolve_conflict(*id, resolution)?;
            Obs::Unit
        }
    })
}

/// A single write through the store's single-call methods.
fn apply_single(store: &StateStore, write: &Write) -> Result<Obs, StateError> {
    Ok(match write {
        Write::SavePosition(site, position) => {
            store.save_position(site, position)?;
            Obs::Unit
        }
        Write::ReadPosition(site) => Obs::Position(store.position(site)?),
        Write::PutRow(mapping, key, row) => {
            store.put_row_versions(mapping, key, row)?;
            Obs::Unit
        }
        Write::ReadRow(mapping, key) => Obs::Row(store.row_versions(mapping, key)?),
        Write::RemoveRow(mapping, key) => Obs::Bool(store.remove_row_versions(mapping, key)?),
        Write::Reclaim(mapping, horizon) => Obs::Count(store.reclaim_deleted(mapping, *horizon)?),
        Write::PutPending(site, seq, item) => {
            store.put_pending(site, *seq, item)?;
            Obs::Unit
        }
        Write::RemovePending(site, seq) => Obs::Bool(store.remove_pending(site, *seq)?),
        Write::MarkRange(mapping, table, id, rows) => {
            store.mark_range_done(mapping, table, *id, *rows)?;
            Obs::Unit
        }
        Write::ClearBackfill(mapping) => {
            store.clear_backfill(mapping)?;
            Obs::Unit
        }
        Write::SaveMeta(mapping, meta) => {
            store.save_backfill_meta(mapping, meta)?;
            Obs::Unit
        }
        Write::RecordConflict(record) => Obs::Id(store.record_conflict(record)?),
        Write::ResolveConflict(id, resolution) => {
            store.resolve_conflict(*id, resolution)?;
            Obs::Unit
        }
    })
}

/// Runs a batch against the store, committing it only if asked and every step succeeded.
fn apply_batch(store: &StateStore, writes: &[Write], commit: bool) -> Vec<Obs> {
    let mut writer = store.begin_write().unwrap();
    let mut observations = Vec::new();
    for write in writes {
        let obs = to_obs(apply_to_writer(&mut writer, write));
        let failed = is_error(&obs);
        observations.push(obs);
        if failed {
            return observations;
        }
    }
    if commit {
        writer.commit().unwrap();
    }
    observations
}

fn observe(store: &StateStore, op: &Op) -> Obs {
    match op {
        Op::Positions => Obs::Positions(store.positions().unwrap()),
        Op::Pending(site) => Obs::Pending(store.pending(site).unwrap()),
        Op::DoneRanges(mapping, table) => Obs::Ranges(store.done_ranges(mapping, table).unwrap()),
        Op::Meta(mapping) => Obs::Meta(store.backfill_meta(mapping).unwrap()),
        Op::Conflict(id) => Obs::Conflict(store.conflict(*id).unwrap()),
        Op::Conflicts => Obs::Conflicts(store.conflicts().unwrap()),
        Op::HeldConflicts => Obs::Conflicts(store.held_conflicts().unwrap()),
        Op::Single(_) | Op::Batch(..) | Op::Reopen => unreachable!("not an observation"),
    }
}

/// Compares everything the store holds within the test's key domains with the model.
fn assert_same_state(store: &StateStore, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(store.positions::<u64>().unwrap(), model.positions.clone());
    for mapping in MAPPINGS {
        for key in KEYS {
            prop_assert_eq!(
                store.row_versions(mapping, key).unwrap(),
                model.rows.get(&(mapping.to_owned(), key.to_vec())).cloned()
            );
        }
        for table in TABLES {
            let op = Op::DoneRanges(mapping, table);
            prop_assert_eq!(observe(store, &op), model.observe(&op));
        }
        prop_assert_eq!(
            observe(store, &Op::Meta(mapping)),
            model.observe(&Op::Meta(mapping))
        );
    }
    for site in SITES {
        let op = Op::Pending(site);
        prop_assert_eq!(observe(store, &op), model.observe(&op));
    }
    prop_assert_eq!(
        observe(store, &Op::Conflicts),
        model.observe(&Op::Conflicts)
    );
    prop_assert_eq!(
        observe(store, &Op::HeldConflicts),
        model.observe(&Op::HeldConflicts)
    );
    prop_assert_eq!(
        store.held_conflict_count().unwrap(),
        model
            .conflicts
            .values()
            .filter(|c| c.status == ConflictStatus::Held)
            .count() as u64
    );
    Ok(())
}

fn site() -> impl Strategy<Value = &'static str> {
    prop::sample::select(SITES.to_vec())
}

fn mapping() -> impl Strategy<Value = &'static str> {
    prop::sample::select(MAPPINGS.to_vec())
}

fn key() -> impl Strategy<Value = &'static [u8]> {
    prop::sample::select(KEYS.to_vec())
}

fn vector() -> impl Strategy<Value = VersionVector> {
    prop::collection::btree_map(site(), 0u64..300, 0..4).prop_map(|m| m.into_iter().collect())
}

fn row() -> impl Strategy<Value = RowVersions> {
    (
        vector(),
        prop::collection::btree_map(site(), prop::option::of(vector()), 0..4),
        prop::option::of(0u64..10),
    )
        .prop_map(|(merged, held, deleted_at)| RowVersions {
            held: held
                .into_iter()
                .map(|(site, vector)| (site.to_owned(), vector.unwrap_or_else(|| merged.clone())))
                .collect(),
            merged,
            deleted_at,
            payload: Vec::new(),
        })
}

fn resolution() -> impl Strategy<Value = Resolution> {
    (prop::option::of(site()), 0u64..100).prop_map(|(winner, at_millis)| Resolution {
        winner: winner.map(str::to_owned),
        by: "operator".to_owned(),
        at_millis,
    })
}

fn conflict() -> impl Strategy<Value = ConflictRecord> {
    (
        mapping(),
        key(),
        prop::collection::vec(
            (
                site(),
                vector(),
                any::<i64>(),
                prop::option::of(any::<Vec<u8>>()),
            ),
            1..3,
        ),
        prop::option::of(resolution()),
    )
        .prop_map(|(mapping, key, sides, resolution)| ConflictRecord {
            mapping: mapping.to_owned(),
            key: key.to_vec(),
            key_display: format!("{key:?}"),
            sites: sides
                .into_iter()
                .map(|(site, vector, commit_time_millis, row)| ConflictSide {
                    site: site.to_owned(),
                    vector,
                    commit_time_millis,
                    row_display: format!("{row:?}"),
                    row,
                })
                .collect(),
            policy: "hold".to_owned(),
            decision: "decided".to_owned(),
            detected_at_millis: 1,
            status: resolution.map_or(ConflictStatus::Held, ConflictStatus::Resolved),
        })
}

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        1 => (site(), any::<u64>()).prop_map(|(s, p)| Write::SavePosition(s, p)),
        1 => site().prop_map(Write::ReadPosition),
        3 => (mapping(), key(), row()).prop_map(|(m, k, r)| Write::PutRow(m, k, r)),
        2 => (mapping(), key()).prop_map(|(m, k)| Write::ReadRow(m, k)),
        1 => (mapping(), key()).prop_map(|(m, k)| Write::RemoveRow(m, k)),
        1 => (mapping(), 0u64..12).prop_map(|(m, h)| Write::Reclaim(m, h)),
        1 => (site(), 0u64..6, "[a-z]{0,8}").prop_map(|(s, q, i)| Write::PutPending(s, q, i)),
        1 => (site(), 0u64..6).prop_map(|(s, q)| Write::RemovePending(s, q)),
        1 => (mapping(), prop::sample::select(TABLES.to_vec()), 0u64..5, any::<u64>())
            .prop_map(|(m, t, id, rows)| Write::MarkRange(m, t, id, rows)),
        1 => mapping().prop_map(Write::ClearBackfill),
        1 => (mapping(), any::<u64>(), "[a-z/0-9]{0,12}")
            .prop_map(|(m, p, s)| Write::SaveMeta(m, (p, s))),
        1 => conflict().prop_map(Write::RecordConflict),
        1 => (0u64..6, resolution()).prop_map(|(id, r)| Write::ResolveConflict(id, r)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => write().prop_map(Op::Single),
        3 => (prop::collection::vec(write(), 1..8), prop::bool::weighted(0.8))
            .prop_map(|(writes, commit)| Op::Batch(writes, commit)),
        1 => Just(Op::Positions),
        1 => site().prop_map(Op::Pending),
        1 => (mapping(), prop::sample::select(TABLES.to_vec())).prop_map(|(m, t)| Op::DoneRanges(m, t)),
        1 => mapping().prop_map(Op::Meta),
        1 => (0u64..6).prop_map(Op::Conflict),
        1 => Just(Op::Conflicts),
        1 => Just(Op::HeldConflicts),
        1 => Just(Op::Reopen),
    ]
}

fn durability() -> impl Strategy<Value = CommitDurability> {
    prop_oneof![
        Just(CommitDurability::Immediate),
        Just(CommitDurability::Deferred)
    ]
}

fn open(dir: &Path, durability: CommitDurability) -> StateStore {
    StateStore::open_with(dir, &StoreOptions { durability }).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_behaves_like_the_model(
        durability in durability(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), durability);
        let mut model = Model::default();
        for op in &ops {
            match op {
                Op::Single(write) => {
                    let got = to_obs(apply_single(&store, write));
                    prop_assert_eq!(got, model.apply(write), "{:?}", op);
                }
                Op::Batch(writes, commit) => {
                    let got = apply_batch(&store, writes, *commit);
                    prop_assert_eq!(got, model.apply_batch(writes, *commit), "{:?}", op);
                }
                Op::Reopen => {
                    store.close().unwrap();
                    store = open(dir.path(), durability);
                    assert_same_state(&store, &model)?;
                }
                read => prop_assert_eq!(observe(&store, read), model.observe(read), "{:?}", op),
            }
        }
        assert_same_state(&store, &model)?;
    }
}
