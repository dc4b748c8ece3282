//! Two duplex configurations whose source sites have the same name, writing into one target
//! server at the same time (two teams replicating into one MariaDB server, or into one
//! PostgreSQL database): each keeps its own position there, so every row of each arrives
//! (issue 11; before, the shared `duplex.positions` row made each skip the other's
//! transactions).

mod harness;

use std::thread;

use duplex_testkit::{MariaDatabase, shared_mariadb, shared_pg};
use harness::{Duplex, REPLICATION_GUARD, wait_for};

const ROWS: i64 = 300;

fn config(
    source: &MariaDatabase,
    target_kind: &str,
    target_url: &str,
    target_table: &str,
) -> String {
    format!(
        "[sites.erp]\nkind = \"mysql\"\nurl = \"{su}\"\n\n\
         [sites.wms]\nkind = \"{target_kind}\"\nurl = \"{target_url}\"\n\n\
         [[mappings]]\nname = \"items\"\ntables = {{ erp = \"{s}.items\", wms = \"{target_table}\" }}\n\
         direction = \"erp->wms\"\n",
        s = source.name(),
        su = source.url(),
    )
}

fn source() -> MariaDatabase {
    let db = shared_mariadb().create_database();
    db.sql("CREATE TABLE items (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB")
        .unwrap();
    db
}

/// Inserts `ROWS` rows, one transaction each, into both sources at the same time.
fn write_both(a: &MariaDatabase, b: &MariaDatabase) {
    thread::scope(|scope| {
        for db in [a, b] {
            scope.spawn(move || {
                for chunk in (1..=ROWS).collect::<Vec<_>>().chunks(50) {
                    let statements: String = chunk
                        .iter()
                        .map(|i| format!("INSERT INTO items VALUES ({i}, 'v{i}');"))
                        .collect();
                    db.sql(&statements).unwrap();
                }
            });
        }
    });
}

fn wait_count(duplex: &mut Duplex, what: &str, mut count: impl FnMut() -> i64) {
    wait_for(what, REPLICATION_GUARD, || {
        duplex.assert_running();
        let n = count();
        if n == ROWS {
            Ok(())
        } else {
            Err(format!("{n} of {ROWS} rows"))
        }
    });
}

#[test]
fn two_configurations_with_equal_site_names_into_one_mariadb_server_lose_nothing() {
    let (a, b) = (source(), source());
    let (ta, tb) = (
        shared_mariadb().create_database(),
        shared_mariadb().create_database(),
    );
    for t in [&ta, &tb] {
        t.sql("CREATE TABLE items (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB")
            .unwrap();
    }
    let mut first = Duplex::run(&config(
        &a,
        "mysql",
        &ta.url(),
        &format!("{}.items", ta.name()),
    ));
    let mut second = Duplex::run(&config(
        &b,
        "mysql",
        &tb.url(),
        &format!("{}.items", tb.name()),
    ));
    first.wait_link_started();
    second.wait_link_started();
    write_both(&a, &b);
    let count = |t: &MariaDatabase| {
        t.sql("SELECT count(*) FROM items")
            .unwrap()
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    wait_count(&mut first, "every row of the first configuration", || {
        count(&ta)
    });
    wait_count(&mut second, "every row of the second configuration", || {
        count(&tb)
    });
    for (duplex, t) in [(&mut first, &ta), (&mut second, &tb)] {
        assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
        assert_eq!(
            t.sql("SELECT count(DISTINCT id), min(id), max(id) FROM items")
                .unwrap()
                .trim(),
            format!("{ROWS}\t1\t{ROWS}")
        );
    }
}

#[test]
fn two_configurations_with_equal_site_names_into_one_postgres_database_lose_nothing() {
    let (a, b) = (source(), source());
    let target = shared_pg().create_database();
    target
        .execute_as_duplex(
            "CREATE TABLE items_a (id int PRIMARY KEY, v text);
             CREATE TABLE items_b (id int PRIMARY KEY, v text);",
        )
        .unwrap();
    let mut first = Duplex::run(&config(&a, "postgres", &target.url(), "public.items_a"));
    let mut second = Duplex::run(&config(&b, "postgres", &target.url(), "public.items_b"));
    first.wait_link_started();
    second.wait_link_started();
    write_both(&a, &b);
    let count = |table: &str| {
        target
            .psql(&format!("SELECT count(*) FROM {table}"))
            .unwrap()
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    wait_count(&mut first, "every row of the first configuration", || {
        count("items_a")
    });
    wait_count(&mut second, "every row of the second configuration", || {
        count("items_b")
    });
    for duplex in [&mut first, &mut second] {
        assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    }
    // Each configuration keeps its own row, under the site name and its deployment.
    let sources = target
        .psql("SELECT source FROM duplex.positions ORDER BY source")
        .unwrap();
    let sources: Vec<&str> = sources.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(sources.len(), 2, "{sources:?}");
    assert!(sources.iter().all(|s| s.starts_with("erp@")), "{sources:?}");
    // `check` says that another duplex names a source site alike and writes here.
    let check = first.command(&["check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains("positions of source site erp for 2 duplex deployments"),
        "{text}"
    );
}
