//! Schema changes on a PostgreSQL source while `duplex run` streams and while it is stopped:
//! each is followed exactly, or stops the link with a message naming the table, the change and
//! the fix, before anything is applied that would lose data (issue 11). The log's own
//! `Relation` messages tell the columns; no SQL text is parsed.

mod harness;

use duplex_testkit::{PgDatabase, shared_pg};
use harness::pg::{drop_all_slots, one_way_config, table_rows, two_way_config};
use harness::{Duplex, drop_slot, wait_slot_active};

const EVO: &str = "CREATE TABLE evo (id int PRIMARY KEY, a int, c text)";

fn config(source: &PgDatabase, wms: &PgDatabase) -> String {
    one_way_config(source, wms, "evo")
}

fn evo_rows(db: &PgDatabase) -> Vec<Vec<String>> {
    table_rows(db, "evo")
}

fn wait_equal(source: &PgDatabase, wms: &PgDatabase, duplex: &mut Duplex, what: &str) {
    harness::pg::wait_equal(source, wms, duplex, "evo", what);
}

/// Both databases with `evo`, one row replicated by a running duplex.
fn streaming() -> (PgDatabase, PgDatabase, Duplex) {
    let source = shared_pg().create_database();
    source.execute_as_duplex(EVO).unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(EVO).unwrap();
    let mut duplex = Duplex::run(&config(&source, &wms));
    wait_slot_active(&source, &mut duplex);
    source
        .execute_as_duplex("INSERT INTO evo VALUES (1, 1, 'c1')")
        .unwrap();
    wait_equal(&source, &wms, &mut duplex, "the first row");
    (source, wms, duplex)
}

#[test]
fn added_columns_the_target_has_are_followed_while_streaming_and_while_stopped() {
    let (source, wms, mut duplex) = streaming();
    // Nullable, while streaming: the DBA adds it on the target first.
    wms.execute_as_duplex("ALTER TABLE evo ADD COLUMN d text")
        .unwrap();
    source
        .execute_as_duplex(
            "ALTER TABLE evo ADD COLUMN d text;
             INSERT INTO evo VALUES (2, 2, 'c2', 'd2');
             UPDATE evo SET d = 'd1' WHERE id = 1;",
        )
        .unwrap();
    wait_equal(&source, &wms, &mut duplex, "the added nullable column");
    // NOT NULL DEFAULT, while streaming.
    wms.execute_as_duplex("ALTER TABLE evo ADD COLUMN n int NOT NULL DEFAULT 7")
        .unwrap();
    source
        .execute_as_duplex(
            "ALTER TABLE evo ADD COLUMN n int NOT NULL DEFAULT 7;
             INSERT INTO evo VALUES (3, 3, 'c3', 'd3', 9);
             UPDATE evo SET n = 8 WHERE id = 2;",
        )
        .unwrap();
    wait_equal(
        &source,
        &wms,
        &mut duplex,
        "the added NOT NULL DEFAULT column",
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());

    // Both kinds again while duplex is stopped.
    wms.execute_as_duplex(
        "ALTER TABLE evo ADD COLUMN e text; ALTER TABLE evo ADD COLUMN m int NOT NULL DEFAULT 5",
    )
    .unwrap();
    source
        .execute_as_duplex(
            "UPDATE evo SET a = 10 WHERE id = 1;
             ALTER TABLE evo ADD COLUMN e text;
             ALTER TABLE evo ADD COLUMN m int NOT NULL DEFAULT 5;
             INSERT INTO evo VALUES (4, 4, 'c4', 'd4', 4, 'e4', 6);
             UPDATE evo SET e = 'e2', m = 1 WHERE id = 2;",
        )
        .unwrap();
    duplex.start();
    wait_equal(&source, &wms, &mut duplex, "columns added while stopped");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    drop_slot(&source);
}

#[test]
fn an_added_column_the_target_lacks_stops_the_link_until_it_is_added() {
    let (source, wms, mut duplex) = streaming();
    source
        .execute_as_duplex(
            "ALTER TABLE evo ADD COLUMN d text;
             INSERT INTO evo VALUES (2, 2, 'c2', 'd2');",
        )
        .unwrap();
    duplex.assert_stopped_saying(&[
        "column \"d\" was added to",
        "ALTER TABLE public.evo ADD COLUMN d",
    ]);
    assert_eq!(evo_rows(&wms), vec![vec!["1", "1", "c1"]]);
    wms.execute_as_duplex("ALTER TABLE evo ADD COLUMN d text")
        .unwrap();
    duplex.start();
    wait_equal(&source, &wms, &mut duplex, "the row with the added column");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    drop_slot(&source);
}

#[test]
fn a_renamed_column_stops_the_link_until_the_target_matches_while_streaming_and_while_stopped() {
    let (source, wms, mut duplex) = streaming();
    source
        .execute_as_duplex(
            "ALTER TABLE evo RENAME COLUMN c TO c_renamed;
             INSERT INTO evo VALUES (8, 9, 'c8');
             UPDATE evo SET c_renamed = 'c1c' WHERE id = 1;",
        )
        .unwrap();
    duplex.assert_stopped_saying(&[
        "column \"c\" of",
        "dropped or renamed, perhaps to \"c_renamed\"",
    ]);
    // Nothing of the change was applied, nothing half.
    assert_eq!(evo_rows(&wms), vec![vec!["1", "1", "c1"]]);
    wms.execute_as_duplex("ALTER TABLE evo RENAME COLUMN c TO c_renamed")
        .unwrap();
    duplex.start();
    wait_equal(&source, &wms, &mut duplex, "the renamed column");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());

    // Renamed again while stopped.
    source
        .execute_as_duplex(
            "UPDATE evo SET c_renamed = 'c8b' WHERE id = 8;
             ALTER TABLE evo RENAME COLUMN c_renamed TO c3;
             INSERT INTO evo VALUES (9, 9, 'c9');",
        )
        .unwrap();
    duplex.start();
    duplex.assert_stopped_saying(&["column \"c_renamed\" of", "perhaps to \"c3\""]);
    // What came before the rename is applied, nothing after it.
    assert_eq!(
        evo_rows(&wms),
        vec![vec!["1", "1", "c1c"], vec!["8", "9", "c8b"]]
    );
    wms.execute_as_duplex("ALTER TABLE evo RENAME COLUMN c_renamed TO c3")
        .unwrap();
    duplex.start();
    wait_equal(
        &source,
        &wms,
        &mut duplex,
        "the column renamed while stopped",
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    drop_slot(&source);
}

#[test]
fn a_dropped_column_stops_the_link_until_the_target_matches_while_streaming_and_while_stopped() {
    let (source, wms, mut duplex) = streaming();
    source
        .execute_as_duplex(
            "ALTER TABLE evo DROP COLUMN c;
             INSERT INTO evo VALUES (2, 2);",
        )
        .unwrap();
    duplex.assert_stopped_saying(&["column \"c\" of", "dropped or renamed"]);
    assert_eq!(evo_rows(&wms), vec![vec!["1", "1", "c1"]]);
    wms.execute_as_duplex("ALTER TABLE evo DROP COLUMN c")
        .unwrap();
    duplex.start();
    wait_equal(&source, &wms, &mut duplex, "rows after the dropped column");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());

    // Dropped while stopped.
    source
        .execute_as_duplex(
            "UPDATE evo SET a = 20 WHERE id = 2;
             ALTER TABLE evo DROP COLUMN a;
             INSERT INTO evo VALUES (3);",
        )
        .unwrap();
    duplex.start();
    duplex.assert_stopped_saying(&["column \"a\" of", "dropped or renamed"]);
    wms.execute_as_duplex("ALTER TABLE evo DROP COLUMN a")
        .unwrap();
    duplex.start();
    wait_equal(
        &source,
        &wms,
        &mut duplex,
        "rows after the column dropped while stopped",
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    drop_slot(&source);
}

#[test]
fn a_type_change_stops_the_link_until_accepted_while_streaming_and_while_stopped() {
    let (source, wms, mut duplex) = streaming();
    source
        .execute_as_duplex(
            "ALTER TABLE evo ALTER COLUMN a TYPE bigint;
             INSERT INTO evo VALUES (2, 5000000000, 'c2');",
        )
        .unwrap();
    duplex.assert_stopped_saying(&[
        "the type of column \"a\"",
        "from int4 to int8",
        "--accept-schema-change public.evo",
    ]);
    assert_eq!(evo_rows(&wms), vec![vec!["1", "1", "c1"]]);
    // Not accepted: it stops again.
    duplex.start();
    duplex.assert_stopped_saying(&["from int4 to int8"]);
    wms.execute_as_duplex("ALTER TABLE evo ALTER COLUMN a TYPE bigint")
        .unwrap();
    duplex.start_with(&["--accept-schema-change", "public.evo"]);
    wait_equal(&source, &wms, &mut duplex, "the retyped column");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());

    // Changed while stopped.
    source
        .execute_as_duplex(
            "ALTER TABLE evo ALTER COLUMN c TYPE varchar(20);
             INSERT INTO evo VALUES (3, 3, 'c3');",
        )
        .unwrap();
    duplex.start();
    duplex.assert_stopped_saying(&["the type of column \"c\"", "from text to varchar"]);
    wms.execute_as_duplex("ALTER TABLE evo ALTER COLUMN c TYPE varchar(20)")
        .unwrap();
    duplex.start_with(&["--accept-schema-change", "public.evo"]);
    wait_equal(
        &source,
        &wms,
        &mut duplex,
        "the column retyped while stopped",
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    drop_slot(&source);
}

#[test]
fn the_merge_engine_stops_on_a_schema_change_until_it_is_made_everywhere_and_accepted() {
    let store = shared_pg().create_database();
    store.execute_as_duplex(EVO).unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(EVO).unwrap();
    let mut duplex = Duplex::run(&two_way_config(&store, &wms, "evo"));
    harness::sites::wait_reading(&mut duplex, 2, harness::REPLICATION_GUARD);
    store
        .execute_as_duplex("INSERT INTO evo VALUES (1, 1, 'c1')")
        .unwrap();
    wait_equal(&store, &wms, &mut duplex, "the first row");

    store
        .execute_as_duplex(
            "ALTER TABLE evo ADD COLUMN d text;
             INSERT INTO evo VALUES (2, 2, 'c2', 'd2');",
        )
        .unwrap();
    duplex.assert_stopped_saying(&[
        "the columns of",
        "column \"d\" added",
        "--accept-schema-change public.evo",
    ]);
    // Nothing merged from the change on.
    assert_eq!(evo_rows(&wms), vec![vec!["1", "1", "c1"]]);
    wms.execute_as_duplex("ALTER TABLE evo ADD COLUMN d text")
        .unwrap();
    duplex.start_with(&["--accept-schema-change", "public.evo"]);
    wait_equal(&store, &wms, &mut duplex, "the row with the added column");
    // The acceptance was for that change only: the next one stops the engine again.
    store
        .execute_as_duplex(
            "ALTER TABLE evo ADD COLUMN e text;
             INSERT INTO evo VALUES (3, 3, 'c3', 'd3', 'e3');",
        )
        .unwrap();
    duplex.assert_stopped_saying(&["column \"e\" added"]);
    assert_eq!(
        evo_rows(&wms).len(),
        2,
        "a row of the unaccepted change was merged"
    );
    drop_all_slots(&store);
    drop_all_slots(&wms);
}

/// A TRUNCATE (its rows are not in the log) stops the link naming the command that recovers;
/// that command copies the table again and `run` streams on from its snapshot.
#[test]
fn a_truncate_stops_the_link_until_the_resync_it_names_copies_the_table_again() {
    let (source, wms, mut duplex) = streaming();
    source
        .psql("TRUNCATE evo; INSERT INTO evo (id, a, c) VALUES (7, 7, 'c7')")
        .unwrap();
    duplex.assert_stopped_saying(&[
        "TRUNCATE of public.evo",
        &format!(
            "recover with `duplex backfill --resync --from {}`",
            source.name()
        ),
    ]);
    let out = duplex.command(&["backfill", "--resync", "--from", source.name()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(evo_rows(&wms), evo_rows(&source));
    duplex.start();
    wait_slot_active(&source, &mut duplex);
    source
        .psql("INSERT INTO evo (id, a, c) VALUES (8, 8, 'c8')")
        .unwrap();
    wait_equal(&source, &wms, &mut duplex, "rows after the resync");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}
