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

/// Streamed-from slots of `source`'s database, by name.
fn streamed(source: &duplex_testkit::PgDatabase) -> Vec<String> {
    let text = source
        .psql(
            "SELECT s.slot_name FROM pg_replication_slots s \
             JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.database = current_database() AND s.confirmed_flush_lsn IS NOT NULL \
             AND r.sent_lsn IS NOT NULL ORDER BY 1",
        )
        .unwrap();
    rows(&text, '|').into_iter().map(|r| r[0].clone()).collect()
}

#[test]
fn a_site_that_needed_escaping_keeps_its_earlier_slot_when_this_deployment_claims_it() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex("CREATE TABLE one (id int PRIMARY KEY, v text)")
        .unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql("CREATE TABLE one (id INT PRIMARY KEY, v TEXT) ENGINE=InnoDB")
        .unwrap();
    let config = format!(
        "[sites.a-b]\nkind = \"postgres\"\nurl = \"{url}\"\n\n\
         [sites.erp]\nkind = \"mysql\"\nurl = \"{erp_url}\"\n\n\
         [[mappings]]\nname = \"one\"\ntables = {{ a-b = \"public.one\", erp = \"{db}.one\" }}\n\
         direction = \"a-b->erp\"\n",
        url = source.url(),
        erp_url = erp.url(),
        db = erp.name(),
    );
    let legacy = format!("duplex_{}_a_b", source.name());
    let mut duplex = Duplex::run(&config);
    let hashed = wait_for("the slot streamed from", Duration::from_secs(90), || {
        duplex.assert_running();
        match streamed(&source).as_slice() {
            [one] => Ok(one.clone()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_ne!(hashed, legacy);
    source
        .execute_as_duplex("INSERT INTO one VALUES (1, 'before')")
        .unwrap();
    wait_for("the first row", REPLICATION_GUARD, || {
        duplex.assert_running();
        let got = erp
            .sql("SELECT id, v FROM one")
            .map_err(|e| e.to_string())?;
        if got.trim() == "1\tbefore" {
            Ok(())
        } else {
            Err(got)
        }
    });
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    let claim = source
        .psql(&format!(
            "SELECT obj_description(oid, 'pg_publication') FROM pg_publication \
             WHERE pubname = '{hashed}'"
        ))
        .unwrap()
        .trim()
        .to_owned();
    assert!(claim.starts_with("duplex deployment "), "{claim:?}");
    // As an earlier release left it: the slot and publication under the escaped name only,
    // recording no deployment yet (made before claims).
    source
        .execute_as_duplex(&format!(
            "SELECT pg_drop_replication_slot('{hashed}'); DROP PUBLICATION {hashed}; \
             SELECT pg_create_logical_replication_slot('{legacy}', 'pgoutput'); \
             CREATE PUBLICATION {legacy} FOR TABLE one"
        ))
        .unwrap();
    // Unclaimed: nobody can tell whose it is, so duplex stops and says how to settle it.
    duplex.start_with(&["--trust-slot", "a-b"]);
    duplex.assert_stopped_saying(&[
        &format!("replication slot {legacy}"),
        "records no deployment",
        &format!("COMMENT ON PUBLICATION {legacy} IS '{claim}'"),
    ]);
    // Claimed by this deployment: kept, and streamed from; no new slot is made.
    source
        .execute_as_duplex(&format!("COMMENT ON PUBLICATION {legacy} IS '{claim}'"))
        .unwrap();
    duplex.start_with(&["--trust-slot", "a-b"]);
    wait_for(
        "the earlier slot streamed from",
        Duration::from_secs(90),
        || {
            duplex.assert_running();
            let slots = streamed(&source);
            if slots == [legacy.clone()] {
                Ok(())
            } else {
                Err(format!("{slots:?}"))
            }
        },
    );
    source
        .execute_as_duplex("INSERT INTO one VALUES (2, 'after')")
        .unwrap();
    wait_for("the second row", REPLICATION_GUARD, || {
        duplex.assert_running();
        let got = erp
            .sql("SELECT id, v FROM one ORDER BY id")
            .map_err(|e| e.to_string())?;
        if got.trim() == "1\tbefore\n2\tafter" {
            Ok(())
        } else {
            Err(got)
        }
    });
    let all = source
        .psql("SELECT string_agg(slot_name, ',') FROM pg_replication_slots WHERE database = current_database()")
        .unwrap();
    assert_eq!(all.trim(), legacy);
    assert!(
        duplex
            .log_text()
            .contains("keeping the replication slot and publication named as earlier releases"),
        "{}",
        duplex.log_text()
    );
    duplex.terminate();
    harness::pg::drop_all_slots(&source);
}
