//! A resumed backfill never fails on a value of a secondary UNIQUE column that moved between a
//! range copied before the interruption and one copied after it: the copied ranges are caught
//! up to the new snapshot before the rest is copied (see `src/backfill/mod.rs`, "Resume"), so
//! the target ends row-for-row equal to the source. PostgreSQL into MariaDB and into
//! PostgreSQL.
//!
//! The first attempt is interrupted by a real condition: a row in the last range holds a name
//! longer than the target's column, so the ranges before it are on the target, that range is
//! not; the column is widened before the resumed attempt. Also: two mappings into one target
//! resumed, both caught up.

mod harness;

use std::process::Output;
use std::time::Duration;

use duplex_testkit::{MariaDatabase, PgDatabase, shared_mariadb, shared_pg};
use harness::{Duplex, drop_slot, wait_for};

const WAIT: Duration = Duration::from_secs(120);

/// 40 customers, `email` unique; customer 35 (in the last range of 10) has a 30-character name.
const SOURCE: &str = "CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL); \
     INSERT INTO customers SELECT g, 'e' || g, 'customer ' || g FROM generate_series(1, 40) g; \
     UPDATE customers SET name = repeat('n', 30) WHERE id = 35";

/// Every customer in key order.
fn pg_rows(db: &PgDatabase) -> Vec<String> {
    db.psql("SELECT id || ':' || email || ':' || name FROM customers ORDER BY id")
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn my_rows(db: &MariaDatabase) -> Vec<String> {
    db.sql("SELECT concat(id, ':', email, ':', name) FROM customers ORDER BY id")
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn log_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn config(dir: &Path, source: &PgDatabase, target: (&str, &str, &str)) -> String {
    let (kind, url, table) = target;
    format!(
        "[state]\ndir = \"{}\"\n\n\
         [sites.{store}]\nkind = \"postgres\"\nurl = \"{}\"\n\n\
         [sites.erp]\nkind = \"{kind}\"\nurl = \"{url}\"\n\n\
         [[mappings]]\nname = \"customers\"\ntables = {{ {store} = \"public.customers\", erp = \"{table}\" }}\n\
         direction = \"{store}->erp\"\n",
        dir.join("state").display(),
        source.url(),
        store = source.name(),
    )
}

use std::path::Path;

/// Interrupts the backfill after the first three ranges, moves unique values between a copied
/// range and the one not copied, resumes, and checks the target equals the source, before and
/// while streaming.
fn resumed_after_unique_values_moved(
    source: &PgDatabase,
    duplex: &mut Duplex,
    target: &dyn Fn() -> Vec<String>,
    widen: &dyn Fn(),
) {
    let args = ["backfill", "--jobs", "1", "--chunk-rows", "10"];
    let out = duplex.command(&args);
    let log = log_of(&out);
    assert!(
        !out.status.success(),
        "the first attempt failed on customer 35:\n{log}"
    );
    let copied = target();
    assert!(
        copied.contains(&"5:e5:customer 5".to_owned())
            && !copied.iter().any(|r| r.starts_with("35:")),
        "customer 5 was copied, customer 35 was not: {copied:?}\n{log}"
    );
    // The moves: e5 goes from a copied range to one not copied, and a swap the other way.
    source
        .psql(
            "UPDATE customers SET email = 'moved' WHERE id = 5; \
             UPDATE customers SET email = 'e5' WHERE id = 35; \
             UPDATE customers SET email = 'tmp' WHERE id = 38; \
             UPDATE customers SET email = 'e38' WHERE id = 8; \
             UPDATE customers SET email = 'e8' WHERE id = 38; \
             DELETE FROM customers WHERE id = 12; \
             INSERT INTO customers VALUES (41, 'e12', 'new')",
        )
        .unwrap();
    widen();
    let out = duplex.command(&args);
    assert!(
        out.status.success(),
        "the resumed backfill:\n{}",
        log_of(&out)
    );
    assert_eq!(target(), pg_rows(source), "the resumed backfill is exact");

    duplex.start();
    duplex.wait_link_started();
    source
        .psql("UPDATE customers SET email = 'e5b' WHERE id = 35; UPDATE customers SET email = 'e5' WHERE id = 5")
        .unwrap();
    let expected = pg_rows(source);
    wait_for("the stream after the backfill", WAIT, || {
        duplex.assert_running();
        let got = target();
        if got == expected {
            Ok(())
        } else {
            Err(format!("expected {expected:?}, got {got:?}"))
        }
    });
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}

#[test]
fn a_resumed_backfill_into_mariadb_is_exact_after_unique_values_moved() {
    let source = shared_pg().create_database();
    source.execute_as_duplex(SOURCE).unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql(
        "CREATE TABLE customers (id BIGINT PRIMARY KEY, email VARCHAR(100) NOT NULL UNIQUE, \
         name VARCHAR(20) NOT NULL) ENGINE=InnoDB",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let table = format!("{}.customers", erp.name());
    let mut duplex = Duplex::new(&config(dir.path(), &source, ("mysql", &erp.url(), &table)));
    resumed_after_unique_values_moved(&source, &mut duplex, &|| my_rows(&erp), &|| {
        erp.sql("ALTER TABLE customers MODIFY name VARCHAR(100) NOT NULL")
            .unwrap();
    });
    drop_slot(&source);
}

#[test]
fn a_resumed_backfill_into_postgres_is_exact_after_unique_values_moved() {
    let source = shared_pg().create_database();
    source.execute_as_duplex(SOURCE).unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(
        "CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, name varchar(20) NOT NULL)",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut duplex = Duplex::new(&config(
        dir.path(),
        &source,
        ("postgres", &wms.url(), "public.customers"),
    ));
    resumed_after_unique_values_moved(&source, &mut duplex, &|| pg_rows(&wms), &|| {
        wms.execute_as_duplex("ALTER TABLE customers ALTER COLUMN name TYPE text")
            .unwrap();
    });
    drop_slot(&source);
}

/// Two mappings from one source into one target, the first attempt interrupted in the second
/// mapping's ranges (the first one's are all copied): the catch-up brings the ranges of both forward (each mapping's catch-up
/// records how far it got under its own key, so one never takes the other's progress for its
/// own), and the target ends equal.
#[test]
fn a_resumed_backfill_of_two_mappings_into_one_target_catches_up_both() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(
            "CREATE TABLE orders (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL); \
             CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL); \
             INSERT INTO orders SELECT g, 'o' || g, 'order ' || g FROM generate_series(1, 40) g; \
             INSERT INTO customers SELECT g, 'e' || g, 'customer ' || g FROM generate_series(1, 40) g; \
             UPDATE orders SET name = repeat('n', 30) WHERE id = 35",
        )
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(
        "CREATE TABLE orders (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, name varchar(20) NOT NULL); \
         CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL)",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = source.name();
    let text = format!(
        "{}[[mappings]]\nname = \"orders\"\ntables = {{ {store} = \"public.orders\", erp = \"public.orders\" }}\n\
         direction = \"{store}->erp\"\n",
        config(
            dir.path(),
            &source,
            ("postgres", &wms.url(), "public.customers")
        )
    );
    let duplex = Duplex::new(&text);
    let args = ["backfill", "--jobs", "1", "--chunk-rows", "10"];
    let out = duplex.command(&args);
    assert!(!out.status.success(), "{}", log_of(&out));
    // Changes in rows of both mappings that are on the target, in one transaction and apart.
    source
        .psql(
            "BEGIN; UPDATE orders SET name = 'changed' WHERE id IN (1, 15, 39); \
             UPDATE customers SET name = 'changed' WHERE id IN (2, 16); \
             DELETE FROM customers WHERE id = 3; DELETE FROM orders WHERE id = 4; COMMIT; \
             UPDATE customers SET email = 'moved' WHERE id = 5; \
             UPDATE customers SET email = 'e5' WHERE id = 36; \
             INSERT INTO orders VALUES (41, 'o41', 'new')",
        )
        .unwrap();
    wms.execute_as_duplex("ALTER TABLE orders ALTER COLUMN name TYPE text")
        .unwrap();
    let out = duplex.command(&args);
    assert!(out.status.success(), "{}", log_of(&out));
    let rows = |db: &PgDatabase, table: &str| -> Vec<String> {
        db.psql(&format!(
            "SELECT id || ':' || email || ':' || name FROM {table} ORDER BY id"
        ))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
    };
    assert_eq!(rows(&wms, "customers"), rows(&source, "customers"));
    assert_eq!(rows(&wms, "orders"), rows(&source, "orders"));
    drop_slot(&source);
}
