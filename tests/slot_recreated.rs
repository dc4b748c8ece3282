//! A replication slot dropped and re-created by hand while duplex was stopped: the changes
//! between the targets' position and the new slot's start can no longer be read, so `run`
//! refuses the slot with the gap named instead of streaming on without them (issue 11).

mod harness;

use duplex_testkit::{PgDatabase, shared_pg};
use harness::pg::{one_way_config, table_rows};
use harness::{Duplex, drop_slot, pg_slot, wait_slot_active};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, v text)";

fn items(db: &PgDatabase) -> Vec<Vec<String>> {
    table_rows(db, "items")
}

fn wait_equal(source: &PgDatabase, wms: &PgDatabase, duplex: &mut Duplex) {
    harness::pg::wait_equal(
        source,
        wms,
        duplex,
        "items",
        "the target to equal the source",
    );
}

#[test]
fn a_slot_recreated_by_hand_is_refused_with_the_gap_named() {
    let source = shared_pg().create_database();
    source.execute_as_duplex(ITEMS).unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(ITEMS).unwrap();
    let mut duplex = Duplex::run(&one_way_config(&source, &wms, "items"));
    wait_slot_active(&source, &mut duplex);
    source
        .execute_as_duplex("INSERT INTO items VALUES (1, 'one')")
        .unwrap();
    wait_equal(&source, &wms, &mut duplex);
    // Idle for a while with other tables written: heartbeats move the slot past the target's
    // position, which must not be taken for a re-created slot.
    source
        .execute_as_duplex("CREATE TABLE other (id int); INSERT INTO other VALUES (1)")
        .unwrap();
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    duplex.start();
    wait_slot_active(&source, &mut duplex);
    source
        .execute_as_duplex("INSERT INTO items VALUES (2, 'two')")
        .unwrap();
    wait_equal(&source, &wms, &mut duplex);
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());

    // Someone drops the slot, a change is made, the slot is re-created by hand.
    drop_slot(&source);
    source
        .execute_as_duplex("INSERT INTO items VALUES (3, 'three')")
        .unwrap();
    source
        .psql(&format!(
            "SELECT pg_create_logical_replication_slot('{}', 'pgoutput')",
            pg_slot(&source)
        ))
        .unwrap();
    source
        .execute_as_duplex("INSERT INTO items VALUES (4, 'four')")
        .unwrap();
    let before = duplex.log_text().len();
    duplex.start();
    let code = duplex.wait_exit();
    let log = duplex.log_text()[before..].to_owned();
    assert_ne!(code, 0, "duplex used the re-created slot:\n{log}");
    assert!(
        log.contains("was dropped and re-created, or advanced, outside duplex")
            && log.contains("can no longer be read"),
        "the refusal does not name the gap:\n{log}"
    );
    // Nothing was streamed past the gap.
    assert_eq!(items(&wms), vec![vec!["1", "one"], vec!["2", "two"]]);
    drop_slot(&source);
}
