//! Rows a target refuses (issue 12): a UNIQUE, CHECK or length constraint, an out-of-range
//! value, a NUL byte. With `on_error = "stop"` the link stops at the refused source
//! transaction with a message naming the mapping, the target, the row's key, the source
//! position and commit time, the server's whole message (PostgreSQL's DETAIL too) and the fix;
//! every transaction before it landed, nothing of it did, and after the fix it resumes exactly
//! there. With `on_error = "dead-letter"` the refused change (and every later change of its
//! row) is set aside, the link goes on, and `duplex dead-letters retry` writes them in order.

mod harness;

use duplex_testkit::{MariaDatabase, PgDatabase, shared_mariadb, shared_pg};
use harness::pg::{table_rows, wait_equal};
use harness::{Duplex, REPLICATION_GUARD, rows, wait_for};

fn pg_to_my_config(store: &PgDatabase, erp: &MariaDatabase) -> String {
    format!(
        "[sites.{s}]\nkind = \"postgres\"\nurl = \"{su}\"\n\n\
         [sites.erp]\nkind = \"mysql\"\nurl = \"{eu}\"\n\n\
         [[mappings]]\nname = \"items\"\ntables = {{ {s} = \"public.items\", erp = \"{e}.items\" }}\n\
         direction = \"{s}->erp\"\n",
        s = store.name(),
        su = store.url(),
        e = erp.name(),
        eu = erp.url(),
    )
}

fn my_rows(db: &MariaDatabase) -> Vec<Vec<String>> {
    rows(&db.sql("SELECT * FROM items ORDER BY id").unwrap(), '\t')
}

/// Waits until the MariaDB target holds `expected` (the source's rows).
fn wait_my_rows(erp: &MariaDatabase, duplex: &mut Duplex, expected: &[Vec<String>], what: &str) {
    wait_for(what, REPLICATION_GUARD, || {
        duplex.assert_running();
        let got = my_rows(erp);
        if got == expected {
            Ok(())
        } else {
            Err(format!("expected {expected:?}, got {got:?}"))
        }
    });
}

fn pg_source_rows(store: &PgDatabase) -> Vec<Vec<String>> {
    rows(
        &store
            .psql("SELECT id, code, qty, coalesce(note, 'NULL') FROM items ORDER BY id")
            .unwrap(),
        '|',
    )
}

/// The position the source's WAL is at now, as duplex prints positions (`0/1D9D3E0`).
fn wal_position(store: &PgDatabase) -> String {
    store
        .psql("SELECT pg_current_wal_lsn()")
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn each_refused_row_stops_the_link_naming_mapping_key_position_and_server_message() {
    let store = shared_pg().create_database();
    store
        .execute_as_duplex(
            "CREATE TABLE items (id int PRIMARY KEY, code text, qty bigint, note text)",
        )
        .unwrap();
    let erp = shared_mariadb().create_database();
    erp.execute_as_duplex(
        "CREATE TABLE items (id INT PRIMARY KEY, code VARCHAR(5) UNIQUE, qty INT CHECK (qty >= 0), note TEXT) ENGINE=InnoDB",
    )
    .unwrap();
    let mut duplex = Duplex::run(&pg_to_my_config(&store, &erp));
    duplex.wait_link_started();
    store
        .psql("INSERT INTO items VALUES (1, 'a', 1, 'n1'), (2, 'dup', 2, NULL)")
        .unwrap();
    wait_my_rows(&erp, &mut duplex, &pg_source_rows(&store), "the first rows");

    // Each refusal: a transaction with a good row and a refused one; the stop names the refused
    // row; the fix on the target lets the link resume exactly there.
    let cases: [(&str, &str, &str, &[&str], &str); 4] = [
        (
            "INSERT INTO items VALUES (10, 'ok10', 1, NULL), (11, 'dup', 1, NULL)",
            "id=11",
            "the insert of",
            &["Duplicate entry 'dup'", "unique value"],
            "ALTER TABLE items DROP INDEX code",
        ),
        (
            "INSERT INTO items VALUES (20, 'ok20', 1, NULL), (21, 'toolong', 1, NULL)",
            "id=21",
            "the insert of",
            &["Data too long for column 'code'", "widen the target column"],
            "ALTER TABLE items MODIFY code VARCHAR(20)",
        ),
        (
            "UPDATE items SET note = 'x' WHERE id = 1; UPDATE items SET qty = -5 WHERE id = 2",
            "id=2",
            "the update of",
            &["CONSTRAINT", "CHECK constraint"],
            "ALTER TABLE items MODIFY qty INT",
        ),
        (
            "INSERT INTO items VALUES (30, 'ok30', 1, NULL), (31, 'big', 5000000000, NULL)",
            "id=31",
            "the insert of",
            &[
                "items.qty: cannot store",
                "out of the column's range",
                "qty=5000000000",
            ],
            "ALTER TABLE items MODIFY qty BIGINT",
        ),
    ];
    for (change, key, what, says, fix) in cases {
        let before_target = my_rows(&erp);
        let position = wal_position(&store);
        store.psql(&format!("BEGIN; {change}; COMMIT")).unwrap();
        duplex.assert_stopped_saying(&[
            "mapping items: site erp refused",
            &format!(
                "{what} {}.public.items row {key} (source position ",
                store.name()
            ),
            "committed at ",
            "Nothing of this source transaction was applied on erp",
        ]);
        let log = duplex.log_text();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains(&format!("row {key} (source position ")))
            .unwrap();
        for needle in says {
            assert!(line.contains(needle), "{needle:?} not in {line}");
        }
        // The position named is the refused transaction's: after the WAL position before it.
        let named = line
            .split("(source position ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap();
        assert!(
            harness::parse_lsn(named) > harness::parse_lsn(&position),
            "{named} is not after {position}"
        );
        assert_eq!(
            my_rows(&erp),
            before_target,
            "a part of the refused transaction landed"
        );
        erp.execute_as_duplex(fix).unwrap();
        duplex.start();
        wait_my_rows(&erp, &mut duplex, &pg_source_rows(&store), "after the fix");
    }
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}

#[test]
fn a_postgresql_refusal_names_its_detail_and_a_nul_byte_from_mariadb_names_its_row() {
    // PostgreSQL -> PostgreSQL: the unique violation's DETAIL line is in the message.
    let store = shared_pg().create_database();
    store
        .execute_as_duplex(
            "CREATE TABLE items (id int PRIMARY KEY, code text, qty bigint, note text)",
        )
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(
        "CREATE TABLE items (id int PRIMARY KEY, code text UNIQUE, qty bigint, note text)",
    )
    .unwrap();
    let config = harness::pg::one_way_config(&store, &wms, "items");
    let mut duplex = Duplex::run(&config);
    duplex.wait_link_started();
    store
        .psql("INSERT INTO items VALUES (1, 'same', 1, NULL)")
        .unwrap();
    wait_equal(&store, &wms, &mut duplex, "items", "the first row");
    store
        .psql("INSERT INTO items VALUES (2, 'same', 2, NULL)")
        .unwrap();
    duplex.assert_stopped_saying(&[
        "mapping items: site wms refused the insert of",
        "row id=2 (source position ",
        "DETAIL: Key (code)=(same) already exists.",
        "constraint items_code_key",
    ]);
    assert_eq!(table_rows(&wms, "items").len(), 1);

    // MariaDB -> PostgreSQL: a NUL byte in text.
    let erp = shared_mariadb().create_database();
    erp.sql("CREATE TABLE notes (id INT PRIMARY KEY, body VARCHAR(20)) ENGINE=InnoDB")
        .unwrap();
    let pg = shared_pg().create_database();
    pg.execute_as_duplex("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        .unwrap();
    let config = format!(
        "[sites.{e}]\nkind = \"mysql\"\nurl = \"{eu}\"\n\n\
         [sites.{p}]\nkind = \"postgres\"\nurl = \"{pu}\"\n\n\
         [[mappings]]\nname = \"notes\"\ntables = {{ {e} = \"{e}.notes\", {p} = \"public.notes\" }}\n\
         direction = \"{e}->{p}\"\n",
        e = erp.name(),
        eu = erp.url(),
        p = pg.name(),
        pu = pg.url(),
    );
    let mut duplex = Duplex::run(&config);
    duplex.wait_link_started();
    erp.sql("INSERT INTO notes VALUES (1, 'fine'), (7, CONCAT('a', CHAR(0), 'b'))")
        .unwrap();
    duplex.assert_stopped_saying(&[
        &format!("mapping notes: site {} refused the insert of", pg.name()),
        "row id=7 (source position ",
        "cannot contain the character 0x00",
        r#"body="a\0b""#,
    ]);
    assert_eq!(
        pg.psql("SELECT count(*) FROM notes").unwrap().trim(),
        "0",
        "a part of the refused transaction landed"
    );
}

#[test]
fn a_refused_row_inside_a_long_run_of_inserts_is_named() {
    // 500 inserts in one transaction are written with one COPY; the row the target refuses is
    // still named, and nothing of the transaction lands.
    let store = shared_pg().create_database();
    store
        .execute_as_duplex(
            "CREATE TABLE items (id int PRIMARY KEY, code text, qty bigint, note text)",
        )
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(
        "CREATE TABLE items (id int PRIMARY KEY, code text UNIQUE, qty bigint, note text);
         INSERT INTO items VALUES (1000, 'taken', 0, 'made on the target');",
    )
    .unwrap();
    let config = harness::pg::one_way_config(&store, &wms, "items");
    let mut duplex = Duplex::run(&config);
    duplex.wait_link_started();
    store
        .psql(
            "INSERT INTO items SELECT g, CASE WHEN g = 300 THEN 'taken' ELSE 'c' || g END, g, NULL \
             FROM generate_series(1, 500) g",
        )
        .unwrap();
    duplex.assert_stopped_saying(&[
        "mapping items: site wms refused the insert of",
        "row id=300 (source position ",
        "DETAIL: Key (code)=(taken) already exists.",
    ]);
    assert_eq!(table_rows(&wms, "items").len(), 1);
}

#[test]
fn a_refused_row_inside_a_run_of_updates_written_together_is_named() {
    // 50 updates of one table in one transaction go as one statement over arrays (and 20
    // deletes as another); a row missing on the target, and then a row the target's CHECK
    // refuses, are still named exactly, and nothing of their transaction lands.
    let (store, wms) = items_with_a_check();
    let config = harness::pg::one_way_config(&store, &wms, "items");
    let mut duplex = Duplex::run(&config);
    duplex.wait_link_started();
    store
        .psql("INSERT INTO items SELECT g, 'c' || g, g, NULL FROM generate_series(1, 50) g")
        .unwrap();
    wait_row_count(&wms, &mut duplex, 50, "the first rows");
    store
        .psql("BEGIN; UPDATE items SET note = 'x'; DELETE FROM items WHERE id > 30; COMMIT")
        .unwrap();
    wait_for("the updates and deletes", REPLICATION_GUARD, || {
        duplex.assert_running();
        let rows = table_rows(&wms, "items");
        let noted = rows
            .iter()
            .filter(|r| r.last().map(String::as_str) == Some("x"))
            .count();
        if rows.len() == 30 && noted == 30 {
            Ok(())
        } else {
            Err(format!("{} rows, {noted} noted", rows.len()))
        }
    });
    wms.psql("DELETE FROM items WHERE id = 17").unwrap();
    store.psql("UPDATE items SET qty = qty + 1").unwrap();
    duplex.assert_stopped_saying(&[
        "mapping items: site wms refused the update of",
        "row id=17 (source position ",
    ]);
    assert_eq!(
        wms.psql("SELECT sum(qty) FROM items").unwrap().trim(),
        "448",
        "a part of the refused transaction landed"
    );

    wms.psql("INSERT INTO items VALUES (17, 'c17', 17, 'x')")
        .unwrap();
    duplex.start();
    wait_for("the increments", REPLICATION_GUARD, || {
        duplex.assert_running();
        let sum = wms.psql("SELECT sum(qty) FROM items").unwrap();
        if sum.trim() == "495" {
            Ok(())
        } else {
            Err(sum)
        }
    });
    // Only id 1 (qty 2) goes below zero.
    store.psql("UPDATE items SET qty = qty - 3").unwrap();
    duplex.assert_stopped_saying(&[
        "mapping items: site wms refused the update of",
        "row id=1 (source position ",
        "check constraint",
    ]);
    assert_eq!(
        wms.psql("SELECT sum(qty) FROM items").unwrap().trim(),
        "495"
    );
}

/// Waits until the target's `items` holds `count` rows (duplex still running).
fn wait_row_count(wms: &PgDatabase, duplex: &mut Duplex, count: usize, what: &str) {
    wait_for(what, REPLICATION_GUARD, || {
        duplex.assert_running();
        let got = table_rows(wms, "items").len();
        if got == count {
            Ok(())
        } else {
            Err(format!("{got} rows"))
        }
    });
}

/// A source `items` table and a target one that refuses a negative `qty`.
fn items_with_a_check() -> (PgDatabase, PgDatabase) {
    let store = shared_pg().create_database();
    store
        .execute_as_duplex(
            "CREATE TABLE items (id int PRIMARY KEY, code text, qty bigint, note text)",
        )
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(
        "CREATE TABLE items (id int PRIMARY KEY, code text, qty bigint CHECK (qty >= 0), note text)",
    )
    .unwrap();
    (store, wms)
}

fn dead_letter_config(store: &PgDatabase, wms: &PgDatabase) -> String {
    harness::pg::one_way_config(store, wms, "items") + "on_error = \"dead-letter\"\n"
}

#[test]
fn dead_letters_set_refused_rows_aside_in_order_and_retry_writes_them_once_fixed() {
    let (store, wms) = items_with_a_check();
    let mut duplex = Duplex::run(&dead_letter_config(&store, &wms));
    duplex.wait_link_started();
    store
        .psql(
            "INSERT INTO items VALUES (1, 'a', 5, NULL);
             BEGIN; INSERT INTO items VALUES (2, 'b', -1, NULL); INSERT INTO items VALUES (3, 'c', 3, NULL); COMMIT;
             UPDATE items SET qty = -2 WHERE id = 2;
             UPDATE items SET qty = 4, note = 'fixed at source' WHERE id = 2;
             UPDATE items SET qty = 6 WHERE id = 1;
             INSERT INTO items VALUES (4, 'd', 7, NULL);",
        )
        .unwrap();
    // The link goes on: every row but id 2 arrives, with its latest values.
    let expected: Vec<Vec<String>> = table_rows(&store, "items")
        .into_iter()
        .filter(|r| r[0] != "2")
        .collect();
    wait_for("the rows around the refused one", REPLICATION_GUARD, || {
        duplex.assert_running();
        let got = table_rows(&wms, "items");
        if got == expected {
            Ok(())
        } else {
            Err(format!("expected {expected:?}, got {got:?}"))
        }
    });
    assert!(
        duplex.log_text().contains("set aside as dead letter"),
        "{}",
        duplex.log_text()
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());

    // Listed: the refused insert, then the two later changes of its row, in order.
    let out = duplex.command(&["dead-letters", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let letters: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let summary: Vec<(String, String, bool)> = letters
        .iter()
        .map(|l| {
            (
                l["op"].as_str().unwrap().to_owned(),
                l["key"].as_str().unwrap().to_owned(),
                l["behind"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("Insert".to_owned(), "id=2".to_owned(), false),
            ("Update".to_owned(), "id=2".to_owned(), true),
            ("Update".to_owned(), "id=2".to_owned(), true),
        ],
        "{letters:#?}"
    );
    assert!(
        letters[0]["error"]
            .as_str()
            .unwrap()
            .contains("items_qty_check"),
        "{letters:#?}"
    );

    // Retried before the fix: refused again, nothing written, the rest waits.
    let out = duplex.command(&["dead-letters", "retry"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("0 dead letter(s) written, 1 refused again, 2 waiting"),
        "{text}"
    );
    assert!(!table_rows(&wms, "items").iter().any(|r| r[0] == "2"));

    // Fixed: written in order, the row ends as the source has it.
    wms.execute_as_duplex("ALTER TABLE items DROP CONSTRAINT items_qty_check")
        .unwrap();
    let out = duplex.command(&["dead-letters", "retry"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("3 dead letter(s) written, 0 refused again"),
        "{text}"
    );
    assert_eq!(table_rows(&wms, "items"), table_rows(&store, "items"));
    let out = duplex.command(&["dead-letters"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("no dead letters"));

    // The row streams normally again.
    duplex.start();
    duplex.wait_link_started();
    store.psql("UPDATE items SET qty = 9 WHERE id = 2").unwrap();
    wait_equal(
        &store,
        &wms,
        &mut duplex,
        "items",
        "the retried row's next change",
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}

#[test]
fn a_write_the_merge_engine_makes_that_a_site_refuses_stops_it_naming_the_row() {
    let store = shared_pg().create_database();
    store
        .execute_as_duplex("CREATE TABLE items (id int PRIMARY KEY, qty int)")
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex("CREATE TABLE items (id int PRIMARY KEY, qty int CHECK (qty >= 0))")
        .unwrap();
    let mut duplex = Duplex::run(&harness::pg::two_way_config(&store, &wms, "items"));
    harness::sites::wait_reading(&mut duplex, 2, REPLICATION_GUARD);
    store.psql("INSERT INTO items VALUES (1, 1)").unwrap();
    wait_for("the first row at both sites", REPLICATION_GUARD, || {
        duplex.assert_running();
        let got = table_rows(&wms, "items");
        if got == vec![vec!["1".to_owned(), "1".to_owned()]] {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
    store
        .psql("INSERT INTO items VALUES (2, 2), (3, -3), (4, 4)")
        .unwrap();
    duplex.assert_stopped_saying(&[
        &format!(
            "mapping items: site {} refused the merge engine's Insert of row id=3",
            wms.name()
        ),
        "items_qty_check",
        "The row: id=3, qty=-3",
        "CHECK constraint",
    ]);
    assert_eq!(
        table_rows(&wms, "items"),
        vec![vec!["1", "1"], vec!["2", "2"]],
        "the writes before the refused one landed, none after"
    );
    harness::pg::drop_all_slots(&store);
    harness::pg::drop_all_slots(&wms);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A state directory restored from a backup older than some dead letters has lost them: the
/// target recorded setting them aside, so the link stops at start naming the loss instead of
/// streaming on without those rows.
#[test]
fn a_state_directory_restored_from_before_dead_letters_stops_the_link() {
    let (store, wms) = items_with_a_check();
    let mut duplex = Duplex::run(&dead_letter_config(&store, &wms));
    duplex.wait_link_started();
    store
        .psql("INSERT INTO items VALUES (1, 'a', 1, NULL)")
        .unwrap();
    wait_equal(&store, &wms, &mut duplex, "items", "the first row");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    let state = duplex.config_path().parent().unwrap().join("duplex-state");
    let backup = duplex.config_path().parent().unwrap().join("backup");
    copy_dir(&state, &backup);

    duplex.start();
    duplex.wait_link_started();
    store
        .psql("INSERT INTO items VALUES (2, 'b', -1, NULL); INSERT INTO items VALUES (3, 'c', 3, NULL)")
        .unwrap();
    wait_row_count(&wms, &mut duplex, 2, "the row after the refused one");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());

    std::fs::remove_dir_all(&state).unwrap();
    copy_dir(&backup, &state);
    duplex.start_with(&["--trust-slot", store.name()]);
    duplex.assert_stopped_saying(&[
        &format!(
            "recorded that changes from {} up to dead letter 1 were set aside",
            store.name()
        ),
        "has given out only 0",
        "DELETE FROM duplex.positions WHERE source = 'dead-lettered:",
    ]);
}

/// A resync makes the target equal to a new snapshot: the dead letters of the stream it
/// replaces are older than that snapshot, and are discarded, never written over it later.
#[test]
fn a_resync_discards_the_dead_letters_it_makes_obsolete() {
    let (store, wms) = items_with_a_check();
    let mut duplex = Duplex::run(&dead_letter_config(&store, &wms));
    duplex.wait_link_started();
    store
        .psql("INSERT INTO items VALUES (1, 'a', -1, NULL); INSERT INTO items VALUES (2, 'b', 2, NULL)")
        .unwrap();
    wait_row_count(&wms, &mut duplex, 1, "the row after the refused one");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    // The source moves on while duplex is stopped: the letter's insert is stale.
    store.psql("UPDATE items SET qty = 1 WHERE id = 1").unwrap();
    wms.execute_as_duplex("ALTER TABLE items DROP CONSTRAINT items_qty_check")
        .unwrap();
    let out = duplex.command(&["backfill", "--resync", "--from", store.name()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = duplex.command(&["dead-letters"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no dead letters"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(table_rows(&wms, "items"), table_rows(&store, "items"));
    duplex.start();
    duplex.wait_link_started();
    store.psql("UPDATE items SET qty = 5 WHERE id = 1").unwrap();
    wait_equal(
        &store,
        &wms,
        &mut duplex,
        "items",
        "the row after the resync",
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}
