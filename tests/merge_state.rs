//! The merge engine's state store gone (deleted, restored empty) or another engine with its
//! own state directory on the same sites: refused with the fix, never started from the sites'
//! current positions (which would skip what was committed in between), and never skipping the
//! running engine's writes (issue 11).

mod harness;

use duplex_testkit::{PgDatabase, shared_pg};
use harness::pg::{drop_all_slots, table_rows, two_way_config};
use harness::{Duplex, REPLICATION_GUARD, wait_for};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, v text)";

fn config(store: &PgDatabase, wms: &PgDatabase) -> String {
    two_way_config(store, wms, "items")
}

fn items(db: &PgDatabase) -> Vec<Vec<String>> {
    table_rows(db, "items")
}

fn wait_same(store: &PgDatabase, wms: &PgDatabase, duplex: &mut Duplex, count: usize) {
    wait_for(
        "both sites to hold the same rows",
        REPLICATION_GUARD,
        || {
            duplex.assert_running();
            let (a, b) = (items(store), items(wms));
            if a == b && a.len() == count {
                Ok(())
            } else {
                Err(format!("store {a:?}, wms {b:?}"))
            }
        },
    );
}

fn sites() -> (PgDatabase, PgDatabase) {
    let store = shared_pg().create_database();
    store.execute_as_duplex(ITEMS).unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(ITEMS).unwrap();
    (store, wms)
}

fn drop_slots(dbs: &[&PgDatabase]) {
    for db in dbs {
        drop_all_slots(db);
    }
}

fn assert_refused(duplex: &mut Duplex) {
    let code = duplex.wait_exit();
    let log = duplex.log_text();
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains("has never read any site of these two-way mappings")
            && log.contains("Restore the state directory"),
        "the refusal does not say what is wrong and what to do:\n{log}"
    );
}

#[test]
fn a_deleted_state_store_is_refused_while_the_sites_hold_merge_writes() {
    let (store, wms) = sites();
    let mut duplex = Duplex::run(&config(&store, &wms));
    harness::sites::wait_reading(&mut duplex, 2, REPLICATION_GUARD);
    store
        .execute_as_duplex("INSERT INTO items VALUES (1, 'one')")
        .unwrap();
    wait_same(&store, &wms, &mut duplex, 1);
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());

    // A change while stopped, then the state directory is lost.
    store
        .execute_as_duplex("INSERT INTO items VALUES (2, 'two')")
        .unwrap();
    let state = duplex.config_path().parent().unwrap().join("duplex-state");
    assert!(state.join("state.redb").exists(), "no store at {state:?}");
    std::fs::remove_dir_all(&state).unwrap();
    duplex.start();
    assert_refused(&mut duplex);
    // Nothing was read past the change made while stopped.
    assert_eq!(items(&wms), vec![vec!["1", "one"]]);
    drop_slots(&[&store, &wms]);
}

#[test]
fn a_second_engine_with_its_own_state_directory_is_refused_and_the_first_loses_nothing() {
    let (store, wms) = sites();
    let text = config(&store, &wms);
    let mut first = Duplex::run(&text);
    harness::sites::wait_reading(&mut first, 2, REPLICATION_GUARD);
    store
        .execute_as_duplex("INSERT INTO items VALUES (1, 'one')")
        .unwrap();
    wait_same(&store, &wms, &mut first, 1);

    let mut second = Duplex::run(&text);
    assert_refused(&mut second);
    for i in 2..=30 {
        let db = if i % 2 == 0 { &store } else { &wms };
        db.execute_as_duplex(&format!("INSERT INTO items VALUES ({i}, 'v{i}')"))
            .unwrap();
    }
    wait_same(&store, &wms, &mut first, 30);
    assert_eq!(first.terminate(), 0, "{}", first.log_text());
    drop_slots(&[&store, &wms]);
}
