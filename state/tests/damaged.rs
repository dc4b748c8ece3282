//! A damaged or emptied store file is a clear error, never a panic and never a new store.

use duplex_state::{RowVersions, STATE_FILE, StateError, StateStore, VersionVector};

/// A store with positions, row versions and pending items, closed cleanly; returns its bytes.
fn written_store(dir: &std::path::Path) -> Vec<u8> {
    let store = StateStore::open(dir).unwrap();
    for i in 0..200u64 {
        store.save_position(&format!("site{i}"), &i).unwrap();
        let merged: VersionVector = [("store", i), ("erp", i + 1)].into_iter().collect();
        let versions = RowVersions {
            held: [("store".to_owned(), merged.clone())].into_iter().collect(),
            merged,
            deleted_at: None,
            payload: vec![i as u8; 100],
        };
        store
            .put_row_versions("orders", &i.to_be_bytes(), &versions)
            .unwrap();
        store
            .put_pending("erp", i, &format!("pending {i}"))
            .unwrap();
    }
    store.close().unwrap();
    std::fs::read(dir.join(STATE_FILE)).unwrap()
}

/// Everything a start of duplex reads.
fn read_everything(store: &StateStore) -> Result<(), StateError> {
    store.positions::<u64>()?;
    store.pending::<String>("erp")?;
    for i in 0..200u64 {
        store.row_versions("orders", &i.to_be_bytes())?;
    }
    store.conflicts()?;
    Ok(())
}

#[test]
fn an_empty_store_file_is_refused_not_taken_as_a_new_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(STATE_FILE), b"").unwrap();
    let err = StateStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StateError::Empty { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("is empty"), "{text}");
    assert!(text.contains("restore"), "{text}");
    // Nothing was written into it.
    assert_eq!(
        std::fs::metadata(dir.path().join(STATE_FILE))
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn a_new_store_never_leaves_an_empty_file_behind() {
    let dir = tempfile::tempdir().unwrap();
    // What an interrupted creation leaves: the temporary file, never `state.redb` itself.
    std::fs::write(dir.path().join(format!("{STATE_FILE}.new")), b"").unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store.save_position("a", &1u64).unwrap();
    store.close().unwrap();
    assert!(!dir.path().join(format!("{STATE_FILE}.new")).exists());
    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(store.position::<u64>("a").unwrap(), Some(1));
}

#[test]
fn flipped_bytes_anywhere_are_an_error_or_harmless_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let original = written_store(dir.path());
    let path = dir.path().join(STATE_FILE);
    let mut outcomes = (0, 0);
    // Every 512th byte, plus the header's first bytes.
    let offsets: Vec<usize> = (0..64).chain((64..original.len()).step_by(509)).collect();
    for offset in offsets {
        let mut damaged = original.clone();
        damaged[offset] ^= 0xff;
        std::fs::write(&path, &damaged).unwrap();
        let outcome = std::panic::catch_unwind(|| {
            let store = StateStore::open(dir.path())?;
            let read = read_everything(&store);
            drop(store);
            read
        });
        match outcome {
            Err(_) => panic!("flipping byte {offset} made the store panic"),
            Ok(Ok(())) => outcomes.0 += 1,
            Ok(Err(error)) => {
                outcomes.1 += 1;
                let text = error.to_string();
                assert!(
                    text.contains("restore") || text.contains("move it aside"),
                    "byte {offset}: the error does not say what to do: {text}"
                );
            }
        }
    }
    assert!(outcomes.1 > 0, "no damage was noticed at all: {outcomes:?}");
}
