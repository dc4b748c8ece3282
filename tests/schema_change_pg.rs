//! Schema changes on a PostgreSQL source while `duplex run` streams and while it is stopped:
//! each is followed exactly, or stops the link with a message naming the table, the change and
//! the fix, before anything is applied that would lose data (issue 11). The log's own
//! `Relation` messages tell the columns; no SQL text is parsed.

mod harness;

use duplex_testkit::{PgDatabase, shared_pg};
use harness::{Duplex, commit_position, drop_slot, rows, wait_replicated, wait_slot_active};

const EVO: &str = "CREATE TABLE evo (id int PRIMARY KEY, a int, c text)";

/// One-way `<source> -> wms` of `public.evo`, sites named after their databases' source.
fn config(source: &PgDatabase, wms: &PgDatabase) -> String {
    format!(
        "[sites.{src}]\nkind = \"postgres\"\nurl = \"{src_url}\"\n\n\
         [sites.wms]\nkind = \"postgres\"\nurl = \"{wms_url}\"\n\n\
         [[mappings]]\nname = \"evo\"\ntables = {{ {src} = \"public.evo\", wms = \"public.evo\" }}\n\
         direction = \"{src}->wms\"\n",
        src = source.name(),
        src_url = source.url(),
        wms_url = wms.url(),
    )
}

fn evo_rows(db: &PgDatabase) -> Vec<Vec<String>> {
    rows(&db.psql("SELECT * FROM evo ORDER BY id").unwrap(), '|')
}

/// Waits until the target's `evo` equals the source's, row for row and column for column.
fn wait_equal(source: &PgDatabase, wms: &PgDatabase, duplex: &mut Duplex, what: &str) {
    let expected = evo_rows(source);
    let commit = commit_position(source);
    wait_replicated(source, duplex, commit, what, || {
        let got = evo_rows(wms);
        if got == expected {
            Ok(())
        } else {
            Err(format!("expected {expected:?}, got {got:?}"))
        }
    });
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

/// Waits for duplex to stop by itself on a schema change and checks the message.
fn assert_stopped(duplex: &mut Duplex, needles: &[&str]) {
    let code = duplex.wait_exit();
    let log = duplex.log_text();
    assert_ne!(code, 0, "duplex exited 0 on a schema change:\n{log}");
    for needle in needles {
        assert!(
            log.contains(needle),
            "the log does not say {needle:?}:\n{log}"
        );
    }
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
    assert_stopped(
        &mut duplex,
        &[
            "column \"d\" was added to",
            "ALTER TABLE public.evo ADD COLUMN d",
        ],
    );
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
    assert_stopped(
        &mut duplex,
        &[
            "column \"c\" of",
            "dropped or renamed, perhaps to \"c_renamed\"",
        ],
    );
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
    assert_stopped(
        &mut duplex,
        &["column \"c_renamed\" of", "perhaps to \"c3\""],
    );
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
    assert_stopped(&mut duplex, &["column \"c\" of", "dropped or renamed"]);
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
    assert_stopped(&mut duplex, &["column \"a\" of", "dropped or renamed"]);
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
    assert_stopped(
        &mut duplex,
        &[
            "the type of column \"a\"",
            "from int4 to int8",
            "--accept-schema-change public.evo",
        ],
    );
    assert_eq!(evo_rows(&wms), vec![vec!["1", "1", "c1"]]);
    // Not accepted: it stops again.
    duplex.start();
    assert_stopped(&mut duplex, &["from int4 to int8"]);
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
    assert_stopped(
        &mut duplex,
        &["the type of column \"c\"", "from text to varchar"],
    );
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

/// Two-way `evo` between two PostgreSQL databases.
fn two_way_config(store: &PgDatabase, wms: &PgDatabase) -> String {
    format!(
        "[sites.{store}]\nkind = \"postgres\"\nurl = \"{store_url}\"\n\n\
         [sites.{wms}]\nkind = \"postgres\"\nurl = \"{wms_url}\"\n\n\
         [[mappings]]\nname = \"evo\"\ntables = {{ {store} = \"public.evo\", {wms} = \"public.evo\" }}\n\
         direction = \"both\"\n",
        store = store.name(),
        store_url = store.url(),
        wms = wms.name(),
        wms_url = wms.url(),
    )
}

#[test]
fn the_merge_engine_stops_on_a_schema_change_until_it_is_made_everywhere_and_accepted() {
    let store = shared_pg().create_database();
    store.execute_as_duplex(EVO).unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(EVO).unwrap();
    let mut duplex = Duplex::run(&two_way_config(&store, &wms));
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
    assert_stopped(
        &mut duplex,
        &[
            "the columns of",
            "column \"d\" added",
            "--accept-schema-change public.evo",
        ],
    );
    // Nothing merged from the change on.
    assert_eq!(evo_rows(&wms), vec![vec!["1", "1", "c1"]]);
    wms.execute_as_duplex("ALTER TABLE evo ADD COLUMN d text")
        .unwrap();
    duplex.start_with(&["--accept-schema-change", "public.evo"]);
    wait_equal(&store, &wms, &mut duplex, "the row with the added column");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    for db in [&store, &wms] {
        for slot in rows(
            &db.psql(
                "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()",
            )
            .unwrap(),
            '|',
        ) {
            db.psql(&format!("SELECT pg_drop_replication_slot('{}')", slot[0]))
                .unwrap();
        }
    }
}
