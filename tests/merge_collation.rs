//! Two-way text keys that differ in PostgreSQL but are equal under a MariaDB site's
//! case- and pad-insensitive collation ('A' and 'a', 'b' and 'b ' under utf8mb4_general_ci):
//! the write into MariaDB is skipped (the row there is another key's) and no MariaDB change
//! ever follows to decide it. That is a held conflict in the log, never silence; and `duplex
//! check` warns about such key columns (issue 11).

mod harness;

use duplex_testkit::{MariaDatabase, PgDatabase, shared_mariadb, shared_pg};
use harness::{Duplex, REPLICATION_GUARD, rows, wait_for};

fn config(store: &PgDatabase, erp: &MariaDatabase) -> String {
    format!(
        "[sites.{s}]\nkind = \"postgres\"\nurl = \"{su}\"\n\n\
         [sites.{e}]\nkind = \"mysql\"\nurl = \"{eu}\"\n\n\
         [[mappings]]\nname = \"codes\"\ntables = {{ {s} = \"public.codes\", {e} = \"{e}.codes\" }}\n\
         direction = \"both\"\nconflict = \"last-writer-wins\"\n",
        s = store.name(),
        su = store.url(),
        e = erp.name(),
        eu = erp.url(),
    )
}

#[test]
fn keys_equal_under_a_case_insensitive_collation_become_held_conflicts_and_check_warns() {
    let store = shared_pg().create_database();
    store
        .execute_as_duplex("CREATE TABLE codes (code text PRIMARY KEY, v int)")
        .unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql(
        "CREATE TABLE codes (code VARCHAR(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci PRIMARY KEY, v INT) ENGINE=InnoDB",
    )
    .unwrap();
    let mut duplex = Duplex::new(&config(&store, &erp));
    let check = duplex.command(&["check"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        text.contains("utf8mb4_general_ci") && text.contains("codes.code"),
        "check does not warn about the case-insensitive key column:\n{text}"
    );

    duplex.start();
    harness::sites::wait_reading(&mut duplex, 2, REPLICATION_GUARD);
    store
        .execute_as_duplex("INSERT INTO codes VALUES ('A', 1), ('b', 2)")
        .unwrap();
    wait_for("the first rows on MariaDB", REPLICATION_GUARD, || {
        duplex.assert_running();
        let got = erp.sql("SELECT count(*) FROM codes").unwrap();
        if got.trim() == "2" { Ok(()) } else { Err(got) }
    });
    store
        .execute_as_duplex("INSERT INTO codes VALUES ('a', 3), ('b ', 4)")
        .unwrap();
    let conflicts = wait_for(
        "held conflicts for the colliding keys",
        REPLICATION_GUARD,
        || {
            duplex.assert_running();
            let list = harness::sites::conflicts(&duplex);
            let mut keys: Vec<String> = list
                .iter()
                .filter(|c| c["status"] == "held")
                .map(|c| c["key"].as_str().unwrap_or_default().to_owned())
                .collect();
            keys.sort();
            if keys.len() == 2 {
                Ok(keys)
            } else {
                Err(format!("{list:?}"))
            }
        },
    );
    assert!(
        conflicts[0].contains('a') && conflicts[1].contains("b "),
        "{conflicts:?}"
    );
    // The sites differ, and the log says why.
    assert_eq!(
        rows(&store.psql("SELECT count(*) FROM codes").unwrap(), '|'),
        vec![vec!["4"]]
    );
    assert!(
        duplex
            .log_text()
            .contains("was skipped with no change there to decide it"),
        "{}",
        duplex.log_text()
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    harness::pg::drop_all_slots(&store);
}
