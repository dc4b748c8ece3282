//! Schema changes on a MariaDB source while `duplex run` streams and while it is stopped:
//! each is followed exactly, or stops the link with a message naming the table, the change and
//! the fix, before anything is applied that would lose data (issue 11). The columns come from
//! each TABLE_MAP event (`binlog_row_metadata=FULL` names them), so DDL hidden in an
//! executable comment is judged like any other.

mod harness;

use duplex_testkit::{MariaDatabase, PgDatabase, shared_mariadb, shared_pg};
use harness::{Duplex, REPLICATION_GUARD, rows, wait_for};

fn config(erp: &MariaDatabase, wms: &PgDatabase) -> String {
    format!(
        "[sites.{e}]\nkind = \"mysql\"\nurl = \"{eu}\"\n\n\
         [sites.{w}]\nkind = \"postgres\"\nurl = \"{wu}\"\n\n\
         [[mappings]]\nname = \"evo\"\ntables = {{ {e} = \"{e}.evo\", {w} = \"public.evo\" }}\n\
         direction = \"{e}->{w}\"\n",
        e = erp.name(),
        eu = erp.url(),
        w = wms.name(),
        wu = wms.url(),
    )
}

fn my_rows(db: &MariaDatabase) -> Vec<Vec<String>> {
    rows(&db.sql("SELECT * FROM evo ORDER BY id").unwrap(), '\t')
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|v| if v == "NULL" { String::new() } else { v })
                .collect()
        })
        .collect()
}

fn pg_rows(db: &PgDatabase) -> Vec<Vec<String>> {
    rows(&db.psql("SELECT * FROM evo ORDER BY id").unwrap(), '|')
}

/// Polls until the target equals the source (the guard only stops a hanging test).
fn wait_equal(erp: &MariaDatabase, wms: &PgDatabase, duplex: &mut Duplex, what: &str) {
    let expected = my_rows(erp);
    wait_for(what, REPLICATION_GUARD, || {
        duplex.assert_running();
        let got = pg_rows(wms);
        if got == expected {
            Ok(())
        } else {
            Err(format!("expected {expected:?}, got {got:?}"))
        }
    });
}

fn streaming() -> (MariaDatabase, PgDatabase, Duplex) {
    let erp = shared_mariadb().create_database();
    erp.sql("CREATE TABLE evo (id INT PRIMARY KEY, a INT, c VARCHAR(20)) ENGINE=InnoDB")
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex("CREATE TABLE evo (id int PRIMARY KEY, a int, c text)")
        .unwrap();
    let mut duplex = Duplex::run(&config(&erp, &wms));
    duplex.wait_link_started();
    erp.sql("INSERT INTO evo VALUES (1, 1, 'c1')").unwrap();
    wait_equal(&erp, &wms, &mut duplex, "the first row");
    (erp, wms, duplex)
}

#[test]
fn added_columns_the_target_has_are_followed_while_streaming_and_while_stopped() {
    let (erp, wms, mut duplex) = streaming();
    wms.execute_as_duplex("ALTER TABLE evo ADD COLUMN d text")
        .unwrap();
    erp.sql(
        "ALTER TABLE evo ADD COLUMN d VARCHAR(20);
         INSERT INTO evo VALUES (2, 2, 'c2', 'd2');
         UPDATE evo SET d = 'd1' WHERE id = 1;",
    )
    .unwrap();
    wait_equal(&erp, &wms, &mut duplex, "the added column while streaming");
    // NOT NULL DEFAULT, while streaming.
    wms.execute_as_duplex("ALTER TABLE evo ADD COLUMN n int NOT NULL DEFAULT 7")
        .unwrap();
    erp.sql(
        "ALTER TABLE evo ADD COLUMN n INT NOT NULL DEFAULT 7;
         INSERT INTO evo VALUES (4, 4, 'c4', 'd4', 9);
         UPDATE evo SET n = 8 WHERE id = 2;",
    )
    .unwrap();
    wait_equal(&erp, &wms, &mut duplex, "the added NOT NULL DEFAULT column");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());

    wms.execute_as_duplex("ALTER TABLE evo ADD COLUMN e text")
        .unwrap();
    erp.sql(
        "UPDATE evo SET a = 10 WHERE id = 1;
         ALTER TABLE evo ADD COLUMN e VARCHAR(20);
         INSERT INTO evo VALUES (3, 3, 'c3', 'd3', 8, 'e3');
         UPDATE evo SET e = 'e2' WHERE id = 2;",
    )
    .unwrap();
    duplex.start();
    wait_equal(&erp, &wms, &mut duplex, "the column added while stopped");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}

#[test]
fn a_rename_in_an_executable_comment_stops_the_link_until_the_target_matches() {
    let (erp, wms, mut duplex) = streaming();
    erp.sql(&format!(
        "/*!100000 ALTER TABLE {}.evo RENAME COLUMN c TO c2 */;
         INSERT INTO evo VALUES (8, 9, 'c8');
         UPDATE evo SET c2 = 'c1c' WHERE id = 1;",
        erp.name()
    ))
    .unwrap();
    let code = duplex.wait_exit();
    let log = duplex.log_text();
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains("column \"c\" of") && log.contains("dropped or renamed, perhaps to \"c2\""),
        "the log does not name the renamed column:\n{log}"
    );
    // Nothing of the change was applied.
    assert_eq!(pg_rows(&wms), vec![vec!["1", "1", "c1"]]);
    wms.execute_as_duplex("ALTER TABLE evo RENAME COLUMN c TO c2")
        .unwrap();
    duplex.start();
    wait_equal(&erp, &wms, &mut duplex, "the renamed column");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}

/// Each statement removes or replaces rows of the mapped table without row events (or logs
/// its changes as text): the link stops, names the table, and applies nothing from it on.
#[test]
fn statements_that_remove_rows_without_row_events_stop_the_link() {
    let cases: &[(&str, &str)] = &[
        (
            "CREATE OR REPLACE TABLE evo (id INT PRIMARY KEY, a INT, c VARCHAR(20)) ENGINE=InnoDB",
            "was changed by",
        ),
        ("/*!100000 TRUNCATE TABLE evo */", "was changed by"),
        ("/*M!100000 DROP TABLE evo */", "was changed by"),
        (
            "SET SESSION binlog_format = 'STATEMENT'; DELETE FROM evo WHERE id = 1",
            "as a statement, not as row events",
        ),
    ];
    for (statement, needle) in cases {
        let (erp, wms, mut duplex) = streaming();
        erp.sql(&format!(
            "{statement}; CREATE TABLE IF NOT EXISTS evo (id INT PRIMARY KEY, a INT, c VARCHAR(20)) ENGINE=InnoDB;
             SET SESSION binlog_format = 'ROW';
             INSERT INTO evo VALUES (7, 7, 'c7');"
        ))
        .unwrap();
        let code = duplex.wait_exit();
        let log = duplex.log_text();
        assert_ne!(code, 0, "{statement}: duplex went on:\n{log}");
        assert!(
            log.contains(needle) && log.contains(&format!("{}.evo", erp.name())),
            "{statement}: the log does not say {needle:?} with the table:\n{log}"
        );
        // Nothing after the statement was applied.
        assert_eq!(pg_rows(&wms), vec![vec!["1", "1", "c1"]], "{statement}");
    }
}

/// Partition maintenance removes rows without row events, although the columns stay.
#[test]
fn partition_maintenance_on_a_mapped_table_stops_the_link() {
    let erp = shared_mariadb().create_database();
    erp.sql(
        "CREATE TABLE evo (id INT PRIMARY KEY, a INT, c VARCHAR(20)) ENGINE=InnoDB
         PARTITION BY RANGE (id) (PARTITION p0 VALUES LESS THAN (100), PARTITION p1 VALUES LESS THAN MAXVALUE)",
    )
    .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex("CREATE TABLE evo (id int PRIMARY KEY, a int, c text)")
        .unwrap();
    let mut duplex = Duplex::run(&config(&erp, &wms));
    duplex.wait_link_started();
    erp.sql("INSERT INTO evo VALUES (1, 1, 'c1'), (200, 2, 'c200')")
        .unwrap();
    wait_equal(&erp, &wms, &mut duplex, "the first rows");
    erp.sql(
        "ALTER TABLE evo TRUNCATE PARTITION p0;
         INSERT INTO evo VALUES (300, 3, 'c300');",
    )
    .unwrap();
    let code = duplex.wait_exit();
    let log = duplex.log_text();
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("TRUNCATE PARTITION"), "{log}");
    assert_eq!(
        pg_rows(&wms),
        vec![vec!["1", "1", "c1"], vec!["200", "2", "c200"]]
    );
}

#[test]
fn a_dropped_column_stops_the_link_until_the_target_matches() {
    let (erp, wms, mut duplex) = streaming();
    erp.sql("ALTER TABLE evo DROP COLUMN c; INSERT INTO evo VALUES (2, 2);")
        .unwrap();
    duplex.assert_stopped_saying(&["column \"c\" of", "dropped or renamed"]);
    assert_eq!(pg_rows(&wms), vec![vec!["1", "1", "c1"]]);
    wms.execute_as_duplex("ALTER TABLE evo DROP COLUMN c")
        .unwrap();
    duplex.start();
    wait_equal(&erp, &wms, &mut duplex, "rows after the dropped column");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}

#[test]
fn a_type_change_stops_the_link_until_accepted() {
    let (erp, wms, mut duplex) = streaming();
    erp.sql("ALTER TABLE evo MODIFY a BIGINT; INSERT INTO evo VALUES (2, 5000000000, 'c2');")
        .unwrap();
    duplex.assert_stopped_saying(&["the type of column \"a\"", "from int to bigint"]);
    assert_eq!(pg_rows(&wms), vec![vec!["1", "1", "c1"]]);
    wms.execute_as_duplex("ALTER TABLE evo ALTER COLUMN a TYPE bigint")
        .unwrap();
    duplex.start_with(&["--accept-schema-change", &format!("{}.evo", erp.name())]);
    wait_equal(&erp, &wms, &mut duplex, "the retyped column");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}

/// Renamed while duplex was stopped, after a change it had not read yet: the rows before the
/// rename are decoded under the name they were written with (the TABLE_MAP's, not today's
/// catalog's), so the change before the rename lands, and the link stops at the rename with
/// the new name, before anything is written under the wrong name. Once the target column is
/// renamed too, it resumes exactly there.
#[test]
fn a_column_renamed_while_stopped_never_writes_under_the_wrong_name() {
    let (erp, wms, mut duplex) = streaming();
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    erp.sql(
        "UPDATE evo SET c = 'c1b' WHERE id = 1;
         ALTER TABLE evo RENAME COLUMN c TO c2;
         INSERT INTO evo VALUES (2, 2, 'c2');",
    )
    .unwrap();
    duplex.start();
    duplex.assert_stopped_saying(&["column \"c\" of", "perhaps to \"c2\""]);
    assert_eq!(pg_rows(&wms), vec![vec!["1", "1", "c1b"]]);
    wms.execute_as_duplex("ALTER TABLE evo RENAME COLUMN c TO c2")
        .unwrap();
    duplex.start();
    wait_equal(&erp, &wms, &mut duplex, "rows after the rename");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}

/// A column renamed and renamed back: with no row written in between it streams on; with rows
/// written under the other name, the link stops at each rename with the name to follow, and
/// following them on the target ends exact (every row under the column it was written to).
#[test]
fn a_column_renamed_and_renamed_back_streams_on_or_stops_at_each_rename() {
    let (erp, wms, mut duplex) = streaming();
    erp.sql(
        "ALTER TABLE evo RENAME COLUMN c TO c2;
         ALTER TABLE evo RENAME COLUMN c2 TO c;
         INSERT INTO evo VALUES (2, 2, 'c2');",
    )
    .unwrap();
    wait_equal(&erp, &wms, &mut duplex, "a rename undone before any row");

    erp.sql(
        "ALTER TABLE evo RENAME COLUMN c TO c2;
         INSERT INTO evo VALUES (3, 3, 'under c2');
         ALTER TABLE evo RENAME COLUMN c2 TO c;
         INSERT INTO evo VALUES (4, 4, 'under c again');",
    )
    .unwrap();
    duplex.assert_stopped_saying(&["column \"c\" of", "perhaps to \"c2\""]);
    wms.execute_as_duplex("ALTER TABLE evo RENAME COLUMN c TO c2")
        .unwrap();
    duplex.start();
    duplex.assert_stopped_saying(&["column \"c2\" of", "perhaps to \"c\""]);
    assert_eq!(
        pg_rows(&wms)[2],
        vec!["3", "3", "under c2"],
        "the row written under c2 landed before the second stop"
    );
    wms.execute_as_duplex("ALTER TABLE evo RENAME COLUMN c2 TO c")
        .unwrap();
    duplex.start();
    wait_equal(&erp, &wms, &mut duplex, "rows after the rename back");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}

#[test]
fn a_table_dropped_and_recreated_while_stopped_stops_the_link() {
    let (erp, wms, mut duplex) = streaming();
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    erp.sql(
        "DROP TABLE evo;
         CREATE TABLE evo (id INT PRIMARY KEY, a INT, c VARCHAR(20)) ENGINE=InnoDB;
         INSERT INTO evo VALUES (2, 2, 'c2');",
    )
    .unwrap();
    duplex.start();
    duplex.assert_stopped_saying(&[
        &format!("mapped table {}.evo was changed by `DROP TABLE", erp.name()),
        &format!(
            "recover with `duplex backfill --resync --from {}`",
            erp.name()
        ),
    ]);
    assert_eq!(pg_rows(&wms), vec![vec!["1", "1", "c1"]]);
    // The command it names makes the target equal (row 1 is gone at the source) and `run`
    // streams on from there.
    let out = duplex.command(&["backfill", "--resync", "--from", erp.name()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pg_rows(&wms), my_rows(&erp));
    duplex.start();
    duplex.wait_link_started();
    erp.sql("INSERT INTO evo VALUES (3, 3, 'c3')").unwrap();
    wait_equal(&erp, &wms, &mut duplex, "rows after the resync");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}

#[test]
fn a_column_dropped_or_retyped_while_stopped_stops_the_link_until_the_target_matches() {
    let (erp, wms, mut duplex) = streaming();
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    erp.sql("ALTER TABLE evo DROP COLUMN c; INSERT INTO evo VALUES (2, 2);")
        .unwrap();
    duplex.start();
    duplex.assert_stopped_saying(&["column \"c\" of", "dropped or renamed"]);
    assert_eq!(pg_rows(&wms), vec![vec!["1", "1", "c1"]]);
    wms.execute_as_duplex("ALTER TABLE evo DROP COLUMN c")
        .unwrap();
    duplex.start();
    wait_equal(
        &erp,
        &wms,
        &mut duplex,
        "rows after the column dropped while stopped",
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());

    erp.sql("ALTER TABLE evo MODIFY a BIGINT; INSERT INTO evo VALUES (3, 5000000000);")
        .unwrap();
    duplex.start();
    duplex.assert_stopped_saying(&["the type of column \"a\"", "from int to bigint"]);
    wms.execute_as_duplex("ALTER TABLE evo ALTER COLUMN a TYPE bigint")
        .unwrap();
    duplex.start_with(&["--accept-schema-change", &format!("{}.evo", erp.name())]);
    wait_equal(
        &erp,
        &wms,
        &mut duplex,
        "rows after the column retyped while stopped",
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}
