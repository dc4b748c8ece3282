//! Sites whose names differ only in characters a slot name cannot hold (`a-b` and `a_b`) get
//! replication slots and publications of their own on one PostgreSQL server, and each streams
//! its own tables.

mod harness;

use std::time::Duration;

use duplex_testkit::{shared_mariadb, shared_pg};
use harness::{Duplex, REPLICATION_GUARD, rows, wait_for};

#[test]
fn sites_a_dash_b_and_a_underscore_b_replicate_from_one_server_through_their_own_slots() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(
            "CREATE TABLE one (id int PRIMARY KEY, v text); \
             CREATE TABLE two (id int PRIMARY KEY, v text)",
        )
        .unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql(
        "CREATE TABLE one (id INT PRIMARY KEY, v TEXT) ENGINE=InnoDB; \
         CREATE TABLE two (id INT PRIMARY KEY, v TEXT) ENGINE=InnoDB",
    )
    .unwrap();
    let config = format!(
        "[sites.a-b]\nkind = \"postgres\"\nurl = \"{url}\"\n\n\
         [sites.a_b]\nkind = \"postgres\"\nurl = \"{url}\"\n\n\
         [sites.erp]\nkind = \"mysql\"\nurl = \"{erp_url}\"\n\n\
         [[mappings]]\nname = \"one\"\ntables = {{ a-b = \"public.one\", erp = \"{db}.one\" }}\n\
         direction = \"a-b->erp\"\n\n\
         [[mappings]]\nname = \"two\"\ntables = {{ a_b = \"public.two\", erp = \"{db}.two\" }}\n\
         direction = \"a_b->erp\"\n",
        url = source.url(),
        erp_url = erp.url(),
        db = erp.name(),
    );
    let clean = format!("duplex_{}_a_b", source.name());
    let mut duplex = Duplex::run(&config);
    // Both slots created and streamed from (see harness::wait_slot_active for why `active`
    // alone is not enough).
    let slots = wait_for("two slots streamed from", Duration::from_secs(90), || {
        duplex.assert_running();
        let streamed = source
            .psql(
                "SELECT s.slot_name FROM pg_replication_slots s \
                 JOIN pg_stat_replication r ON r.pid = s.active_pid \
                 WHERE s.database = current_database() AND s.confirmed_flush_lsn IS NOT NULL \
                 AND r.sent_lsn IS NOT NULL ORDER BY 1",
            )
            .map_err(|e| e.to_string())?;
        let names: Vec<String> = rows(&streamed, '|')
            .into_iter()
            .map(|r| r[0].clone())
            .collect();
        if names.len() == 2 {
            Ok(names)
        } else {
            Err(format!("{names:?}\n{}", duplex.log_text()))
        }
    });
    assert_eq!(slots[0], clean, "site a_b keeps its plain name: {slots:?}");
    assert!(
        slots[1].starts_with(&format!("{clean}_")) && slots[1].len() == clean.len() + 9,
        "site a-b gets the hashed name: {slots:?}"
    );
    // Each publication lists its own site's table.
    let published = source
        .psql(
            "SELECT pubname || ':' || string_agg(tablename, ',' ORDER BY tablename) \
             FROM pg_publication_tables GROUP BY pubname ORDER BY pubname",
        )
        .unwrap();
    assert_eq!(
        published.lines().map(str::trim).collect::<Vec<_>>(),
        vec![format!("{}:two", slots[0]), format!("{}:one", slots[1])]
    );
    source
        .execute_as_duplex(
            "INSERT INTO one VALUES (1, 'from a-b'); INSERT INTO two VALUES (2, 'from a_b')",
        )
        .unwrap();
    wait_for("both rows in the ERP", REPLICATION_GUARD, || {
        duplex.assert_running();
        let got = erp
            .sql("SELECT 'one', id, v FROM one UNION ALL SELECT 'two', id, v FROM two")
            .map_err(|e| e.to_string())?;
        if got.trim() == "one\t1\tfrom a-b\ntwo\t2\tfrom a_b" {
            Ok(())
        } else {
            Err(got)
        }
    });
    duplex.terminate();
    harness::pg::drop_all_slots(&source);
}
