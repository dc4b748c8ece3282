//! A new link records where it starts before it reads anything: no retry or restart before
//! its first commit on a target ever starts again from "the source's current position".
//! (A PostgreSQL source's slot keeps its own position; a MariaDB source's start is kept in the
//! state store.)

mod harness;

use std::time::Duration;

use duplex_testkit::{PgOptions, PgServer, Shutdown, shared_mariadb};
use harness::{Duplex, wait_for};

const WAIT: Duration = Duration::from_secs(120);

fn config(erp_url: &str, erp_table: &str, store_url: &str) -> String {
    format!(
        "[sites.erp]\nkind = \"mysql\"\nurl = \"{erp_url}\"\n\n\
         [sites.store]\nkind = \"postgres\"\nurl = \"{store_url}\"\n\n\
         [[mappings]]\nname = \"ticks\"\ntables = {{ erp = \"{erp_table}\", store = \"public.ticks\" }}\n\
         direction = \"erp->store\"\n"
    )
}

fn wait_started(duplex: &mut Duplex, times: usize) {
    wait_for("the link to start", WAIT, || {
        duplex.assert_running();
        let started = duplex.log_text().matches("link started").count();
        if started >= times {
            Ok(())
        } else {
            Err(format!("{started} starts"))
        }
    });
}

fn count(store: &duplex_testkit::PgDatabase) -> Result<u64, String> {
    store
        .psql("SELECT count(*) FROM ticks")
        .map_err(|e| e.to_string())?
        .trim()
        .parse()
        .map_err(|e| format!("{e}"))
}

/// The target goes away before the link's first commit; changes made meanwhile still arrive
/// once it is back.
#[test]
fn a_mariadb_link_whose_target_is_down_before_its_first_commit_loses_nothing() {
    let erp = shared_mariadb().create_database();
    erp.sql("CREATE TABLE ticks (id BIGINT PRIMARY KEY) ENGINE=InnoDB")
        .unwrap();
    let server = PgServer::start(PgOptions::default().setting("synchronous_commit", "on")).unwrap();
    let store = server.create_database();
    store
        .execute_as_duplex("CREATE TABLE ticks (id bigint PRIMARY KEY)")
        .unwrap();
    let mut duplex = Duplex::run(&config(
        &erp.url(),
        &format!("{}.ticks", erp.name()),
        &store.url(),
    ));
    wait_started(&mut duplex, 1);
    server.shut_down(Shutdown::Fast).unwrap();
    erp.sql(
        "INSERT INTO ticks SELECT seq FROM seq_1_to_10; INSERT INTO ticks VALUES (11); \
         INSERT INTO ticks VALUES (12)",
    )
    .unwrap();
    // duplex notices the target is gone (its apply fails) and retries.
    wait_for("the link to retry", WAIT, || {
        duplex.assert_running();
        if duplex.log_text().contains("link interrupted; retrying") {
            Ok(())
        } else {
            Err("no retry yet".into())
        }
    });
    server.start_again().unwrap();
    erp.sql("INSERT INTO ticks VALUES (13)").unwrap();
    wait_for("every row on the target", WAIT, || {
        duplex.assert_running();
        match count(&store)? {
            13 => Ok(()),
            n => Err(format!("{n} of 13 rows")),
        }
    });
    assert_eq!(
        store
            .psql("SELECT min(id), max(id), count(DISTINCT id) FROM ticks")
            .unwrap()
            .trim(),
        "1|13|13"
    );
    let log = duplex.log_text();
    assert!(log.contains("recorded where this new link starts"), "{log}");
    assert_eq!(duplex.terminate(), 0, "{log}");
}

/// duplex is stopped while it writes the first (large) transaction of a new link: the next
/// `run` applies it whole.
#[test]
fn a_mariadb_link_stopped_during_its_first_large_transaction_applies_it_after_restart() {
    let erp = shared_mariadb().create_database();
    erp.sql("CREATE TABLE ticks (id BIGINT PRIMARY KEY) ENGINE=InnoDB")
        .unwrap();
    let store = duplex_testkit::shared_pg().create_database();
    store
        .execute_as_duplex("CREATE TABLE ticks (id bigint PRIMARY KEY)")
        .unwrap();
    let mut duplex = Duplex::run(&config(
        &erp.url(),
        &format!("{}.ticks", erp.name()),
        &store.url(),
    ));
    wait_started(&mut duplex, 1);
    erp.sql("INSERT INTO ticks SELECT seq FROM seq_1_to_200000")
        .unwrap();
    // Wait until duplex is writing it: its target transaction holds a transaction id.
    wait_for("duplex to write the large transaction", WAIT, || {
        duplex.assert_running();
        let writing = store
            .psql(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
                 AND application_name = 'duplex' AND backend_xid IS NOT NULL",
                store.name()
            ))
            .map_err(|e| e.to_string())?;
        if writing.trim() == "1" {
            Ok(())
        } else {
            Err("not writing yet".into())
        }
    });
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    assert!(
        count(&store).unwrap() < 200_000,
        "the transaction was already committed: the test proves nothing"
    );
    erp.sql("INSERT INTO ticks VALUES (200001)").unwrap();
    duplex.start();
    wait_for("every row on the target", WAIT, || {
        duplex.assert_running();
        match count(&store)? {
            200_001 => Ok(()),
            n => Err(format!("{n} of 200001 rows")),
        }
    });
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}
