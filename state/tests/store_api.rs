//! Behaviour of the store's API beyond the model test: locking, batches, versioning, errors.

use std::collections::BTreeMap;

use duplex_state::{
    ConflictRecord, ConflictSide, ConflictStatus, Resolution, RowVersions, STATE_FILE, StateError,
    StateStore, VersionVector,
};

fn vv(pairs: &[(&str, u64)]) -> VersionVector {
    pairs
        .iter()
        .map(|&(site, counter)| (site, counter))
        .collect()
}

fn converged_row(sites: &[&str], counter: u64) -> RowVersions {
    let merged: VersionVector = sites.iter().map(|site| (*site, counter)).collect();
    RowVersions {
        held: sites
            .iter()
            .map(|site| ((*site).to_owned(), merged.clone()))
            .collect(),
        merged,
        deleted_at: None,
        payload: Vec::new(),
    }
}

fn conflict(mapping: &str, status: ConflictStatus) -> ConflictRecord {
    ConflictRecord {
        mapping: mapping.to_owned(),
        key: vec![1, 2, 3],
        key_display: "id=7".to_owned(),
        sites: vec![
            ConflictSide {
                site: "shop".to_owned(),
                vector: vv(&[("shop", 2), ("erp", 1)]),
                commit_time_millis: 1_700_000_000_000,
                row: Some(vec![9, 9]),
                row_display: "(7, 'red')".to_owned(),
            },
            ConflictSide {
                site: "erp".to_owned(),
                vector: vv(&[("shop", 1), ("erp", 2)]),
                commit_time_millis: 1_700_000_000_005,
                row: None,
                row_display: "deleted".to_owned(),
            },
        ],
        policy: "hold".to_owned(),
        decision: "held for a person".to_owned(),
        detected_at_millis: 1_700_000_000_010,
        status,
    }
}

#[test]
fn the_store_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<StateStore>();
}

#[test]
fn second_open_of_a_directory_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let first = StateStore::open(dir.path()).unwrap();
    let err = StateStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StateError::InUse { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&format!(
            "state directory {} is in use by another duplex process",
            dir.path().display()
        )),
        "{message}"
    );
    assert!(std::error::Error::source(&err).is_some());
    first.close().unwrap();
    StateStore::open(dir.path()).unwrap();
}

#[test]
fn open_creates_the_directory_and_values_survive_reopen() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("nested").join("state");
    let store = StateStore::open(&dir).unwrap();
    assert!(dir.join(STATE_FILE).is_file());
    store
        .save_position("shop", &(7u64, "binlog.000003".to_owned()))
        .unwrap();
    store
        .put_row_versions("orders", b"k1", &converged_row(&["shop", "erp"], 3))
        .unwrap();
    store.close().unwrap();

    let store = StateStore::open(&dir).unwrap();
    assert_eq!(
        store.position::<(u64, String)>("shop").unwrap(),
        Some((7, "binlog.000003".to_owned()))
    );
    assert_eq!(
        store.row_versions("orders", b"k1").unwrap(),
        Some(converged_row(&["shop", "erp"], 3))
    );
    assert_eq!(store.position::<(u64, String)>("erp").unwrap(), None);
}

#[test]
fn a_batch_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();

    let mut writer = store.begin_write().unwrap();
    writer
        .put_row_versions("orders", b"a", &converged_row(&["new-site"], 1))
        .unwrap();
    writer.save_position("shop", &1u64).unwrap();
    writer.put_pending("erp", 1, "item").unwrap();
    assert_eq!(writer.position::<u64>("shop").unwrap(), Some(1));
    assert_eq!(
        writer.row_versions("orders", b"a").unwrap(),
        Some(converged_row(&["new-site"], 1))
    );
    drop(writer);
    assert_eq!(store.position::<u64>("shop").unwrap(), None);
    assert_eq!(store.row_versions("orders", b"a").unwrap(), None);
    assert!(store.pending::<String>("erp").unwrap().is_empty());

    let failed: Result<(), StateError> = store.write(|w| {
        w.save_position("shop", &2u64)?;
        w.resolve_conflict(
            42,
            &Resolution {
                winner: None,
                by: "op".to_owned(),
                at_millis: 0,
            },
        )
    });
    assert!(matches!(
        failed,
        Err(StateError::UnknownConflict { id: 42 })
    ));
    assert_eq!(store.position::<u64>("shop").unwrap(), None);

    let id = store
        .write(|w| {
            w.put_row_versions("orders", b"a", &converged_row(&["new-site", "erp"], 2))?;
            w.save_position("shop", &3u64)?;
            w.record_conflict(&conflict("orders", ConflictStatus::Held))
        })
        .unwrap();
    assert_eq!(id, 1);
    assert_eq!(store.position::<u64>("shop").unwrap(), Some(3));
    assert_eq!(
        store.row_versions("orders", b"a").unwrap(),
        Some(converged_row(&["new-site", "erp"], 2))
    );
}

#[test]
fn conflict_log_appends_lists_and_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let resolved = ConflictStatus::Resolved(Resolution {
        winner: Some("shop".to_owned()),
        by: "last-writer-wins".to_owned(),
        at_millis: 5,
    });
    let a = store
        .record_conflict(&conflict("orders", resolved.clone()))
        .unwrap();
    let b = store
        .record_conflict(&conflict("orders", ConflictStatus::Held))
        .unwrap();
    let c = store
        .record_conflict(&conflict("items", ConflictStatus::Held))
        .unwrap();
    assert_eq!((a, b, c), (1, 2, 3));
    assert_eq!(store.held_conflict_count().unwrap(), 2);
    let held: Vec<u64> = store
        .held_conflicts()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(held, vec![2, 3]);

    let by_operator = Resolution {
        winner: Some("erp".to_owned()),
        by: "operator alice".to_owned(),
        at_millis: 9,
    };
    store.resolve_conflict(b, &by_operator).unwrap();
    assert_eq!(
        store.conflict(b).unwrap().unwrap().status,
        ConflictStatus::Resolved(by_operator.clone())
    );
    assert!(matches!(
        store.resolve_conflict(b, &by_operator),
        Err(StateError::ConflictNotHeld { id: 2 })
    ));
    assert!(matches!(
        store.resolve_conflict(a, &by_operator),
        Err(StateError::ConflictNotHeld { id: 1 })
    ));
    assert!(store.conflict(99).unwrap().is_none());
    assert_eq!(store.held_conflict_count().unwrap(), 1);
    let all = store.conflicts().unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0], (1, conflict("orders", resolved)));
    assert_eq!(all[2], (3, conflict("items", ConflictStatus::Held)));
}

#[test]
fn backfill_progress_is_kept_per_mapping_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store
        .mark_range_done("m", "public.orders", 3, 1000)
        .unwrap();
    store.mark_range_done("m", "public.orders", 0, 999).unwrap();
    store.mark_range_done("m", "public.items", 0, 5).unwrap();
    store.mark_range_done("m2", "public.orders", 7, 1).unwrap();
    store.mark_range_done("m\0", "x", 1, 1).unwrap();
    store.mark_range_done("", "x", 1, 1).unwrap();
    store.save_backfill_meta("m", &("slot", 42u64)).unwrap();
    assert_eq!(
        store.done_ranges("m", "public.orders").unwrap(),
        BTreeMap::from([(0, 999), (3, 1000)])
    );
    assert_eq!(
        store.backfill_meta::<(String, u64)>("m").unwrap(),
        Some(("slot".to_owned(), 42))
    );
    store.clear_backfill("m").unwrap();
    assert!(store.done_ranges("m", "public.orders").unwrap().is_empty());
    assert!(store.done_ranges("m", "public.items").unwrap().is_empty());
    assert_eq!(store.backfill_meta::<(String, u64)>("m").unwrap(), None);
    assert_eq!(
        store.done_ranges("m2", "public.orders").unwrap(),
        BTreeMap::from([(7, 1)])
    );
    assert_eq!(
        store.done_ranges("m\0", "x").unwrap(),
        BTreeMap::from([(1, 1)])
    );
    assert_eq!(
        store.done_ranges("", "x").unwrap(),
        BTreeMap::from([(1, 1)])
    );
}

#[test]
fn reclaim_removes_only_rows_deleted_everywhere_before_the_horizon() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let deleted = |at| RowVersions {
        deleted_at: Some(at),
        ..converged_row(&["shop", "erp"], 4)
    };
    store
        .put_row_versions("orders", b"old", &deleted(100))
        .unwrap();
    store
        .put_row_versions("orders", b"edge", &deleted(200))
        .unwrap();
    store
        .put_row_versions("orders", b"young", &deleted(300))
        .unwrap();
    store
        .put_row_versions("orders", b"alive", &converged_row(&["shop"], 1))
        .unwrap();
    store
        .put_row_versions("items", b"old", &deleted(100))
        .unwrap();
    // Deleted, then back again: its index entry is stale.
    store
        .put_row_versions("orders", b"back", &deleted(50))
        .unwrap();
    store
        .put_row_versions("orders", b"back", &converged_row(&["shop"], 9))
        .unwrap();
    // Deleted, back, deleted again later.
    store
        .put_row_versions("orders", b"twice", &deleted(60))
        .unwrap();
    store
        .put_row_versions("orders", b"twice", &deleted(400))
        .unwrap();

    assert_eq!(store.reclaim_deleted("orders", 200).unwrap(), 1);
    assert_eq!(store.row_versions("orders", b"old").unwrap(), None);
    assert!(store.row_versions("orders", b"edge").unwrap().is_some());
    assert!(store.row_versions("orders", b"back").unwrap().is_some());
    assert!(store.row_versions("orders", b"twice").unwrap().is_some());
    assert!(store.row_versions("items", b"old").unwrap().is_some());
    assert_eq!(store.reclaim_deleted("orders", 200).unwrap(), 0);
    assert_eq!(store.reclaim_deleted("orders", 1000).unwrap(), 3);
    assert!(store.row_versions("orders", b"alive").unwrap().is_some());
    assert!(store.row_versions("orders", b"back").unwrap().is_some());
}

#[test]
fn pending_items_come_back_in_sequence_order_per_site() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    for seq in [5u64, 1, u64::MAX, 0, 3] {
        store
            .put_pending("erp", seq, &format!("item {seq}"))
            .unwrap();
    }
    store.put_pending("erp2", 2, "other site").unwrap();
    store.put_pending("er", 2, "other site").unwrap();
    let seqs: Vec<u64> = store
        .pending::<String>("erp")
        .unwrap()
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(seqs, vec![0, 1, 3, 5, u64::MAX]);
    assert!(store.remove_pending("erp", 3).unwrap());
    assert!(!store.remove_pending("erp", 3).unwrap());
    assert_eq!(
        store.pending::<String>("erp").unwrap()[2],
        (5, "item 5".to_owned())
    );
}

#[test]
fn a_file_that_is_not_a_store_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(STATE_FILE), vec![0x5a; 10_000]).unwrap();
    let err = StateStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("is corrupt or from an incompatible version"),
        "{err}"
    );
}

#[test]
fn a_store_of_another_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    StateStore::open(dir.path()).unwrap().close().unwrap();
    {
        let db = redb::Database::open(dir.path().join(STATE_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                .unwrap();
            meta.insert("schema_version", 1u32.to_le_bytes().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let err = StateStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            StateError::SchemaVersion {
                found: 1,
                expected: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_store_written_with_another_codec_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    StateStore::open(dir.path()).unwrap().close().unwrap();
    {
        let db = redb::Database::open(dir.path().join(STATE_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                .unwrap();
            meta.insert("codec", b"wincode/1".as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = StateStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StateError::CodecFormat { .. }), "{err:?}");
    assert!(err.to_string().contains("\"wincode/1\""), "{err}");
}

#[test]
fn a_value_of_the_wrong_type_is_a_decode_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store.save_position("shop", &(1u64, 2u64)).unwrap();
    let err = store.position::<(u64, String)>("shop").unwrap_err();
    assert!(matches!(err, StateError::Decode { .. }), "{err:?}");
    assert!(
        err.to_string().contains("position of site \"shop\""),
        "{err}"
    );
}

#[test]
fn held_vectors_that_differ_from_the_merged_one_round_trip() {
    let sites = ["shop-postgres", "erp-mariadb", "wms-mysql"];
    let converged = converged_row(&sites, 1234);
    let mut diverged = converged.clone();
    diverged
        .held
        .get_mut("erp-mariadb")
        .unwrap()
        .set("shop-postgres", 1200);
    diverged.held.insert("crm".to_owned(), VersionVector::new());

    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store.put_row_versions("m", b"k", &converged).unwrap();
    assert_eq!(store.row_versions("m", b"k").unwrap(), Some(converged));
    store.put_row_versions("m", b"k", &diverged).unwrap();
    assert_eq!(store.row_versions("m", b"k").unwrap(), Some(diverged));
}

#[test]
fn a_store_keeps_its_deployment_identity_and_a_new_store_gets_another() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let id = store.deployment_id().to_owned();
    assert_eq!(id.len(), 36, "{id}");
    store.close().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(store.deployment_id(), id);
    let other = tempfile::tempdir().unwrap();
    assert_ne!(StateStore::open(other.path()).unwrap().deployment_id(), id);
}
