//! Two deployments (two state directories) never share what duplex keeps on a server: a
//! second deployment whose names collide with a running one's is refused, and the first goes
//! on untouched.

mod harness;

use std::time::Duration;

use duplex_testkit::{MariaDatabase, PgDatabase, shared_mariadb, shared_pg};
use harness::{Duplex, drop_slot, wait_for, wait_slot_active};

const WAIT: Duration = Duration::from_secs(60);

/// A one-way mapping of `table` from the source (site named after its database, so both
/// deployments derive the same slot and publication names) into `target`.
fn config(source: &PgDatabase, target_site: &str, target: &MariaDatabase, table: &str) -> String {
    format!(
        "[sites.{src}]\nkind = \"postgres\"\nurl = \"{url}\"\n\n\
         [sites.{target_site}]\nkind = \"mysql\"\nurl = \"{target_url}\"\n\n\
         [[mappings]]\nname = \"{table}\"\n\
         tables = {{ {src} = \"public.{table}\", {target_site} = \"{db}.{table}\" }}\n\
         direction = \"{src}->{target_site}\"\n",
        src = source.name(),
        url = source.url(),
        target_url = target.url(),
        db = target.name(),
    )
}

#[test]
fn a_second_deployment_with_the_same_site_name_is_refused_and_the_first_goes_on() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(
            "CREATE TABLE a (id bigint PRIMARY KEY, v text); \
             CREATE TABLE b (id bigint PRIMARY KEY, v text)",
        )
        .unwrap();
    let erp_a = shared_mariadb().create_database();
    erp_a
        .sql("CREATE TABLE a (id BIGINT PRIMARY KEY, v TEXT) ENGINE=InnoDB")
        .unwrap();
    let erp_b = shared_mariadb().create_database();
    erp_b
        .sql("CREATE TABLE b (id BIGINT PRIMARY KEY, v TEXT) ENGINE=InnoDB")
        .unwrap();

    let mut first = Duplex::run(&config(&source, &format!("t{}", erp_a.name()), &erp_a, "a"));
    wait_slot_active(&source, &mut first);
    let mut second = Duplex::run(&config(&source, &format!("t{}", erp_b.name()), &erp_b, "b"));
    let code = wait_for("the second deployment to stop", WAIT, || {
        first.assert_running();
        second.exit_code().ok_or_else(|| "still running".to_owned())
    });
    let log = second.log_text();
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("belong to another duplex deployment"),
        "the refusal does not say why:\n{log}"
    );
    // The first deployment's publication still lists its table, and its rows still flow.
    let published = source
        .psql(&format!(
            "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_publication_tables \
             WHERE pubname = 'duplex_{0}_{0}'",
            source.name()
        ))
        .unwrap();
    assert_eq!(published.trim(), "a");
    source
        .execute_as_duplex("INSERT INTO a VALUES (1, 'one'); INSERT INTO b VALUES (1, 'one')")
        .unwrap();
    wait_for("the first deployment's row", WAIT, || {
        first.assert_running();
        let rows = erp_a
            .sql("SELECT id, v FROM a")
            .map_err(|e| e.to_string())?;
        if rows.trim() == "1\tone" {
            Ok(())
        } else {
            Err(format!("{rows:?}"))
        }
    });
    assert_eq!(first.terminate(), 0, "{}", first.log_text());
    drop_slot(&source);
}
