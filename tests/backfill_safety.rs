//! `duplex backfill` never harms what already streams, and `duplex run` never streams a
//! backfill that did not finish: a new mapping backfilled next to a stopped link of the same
//! PostgreSQL source (the link keeps its slot and its tables, and gets every row inserted while
//! it was stopped), and one refused over a gone slot a stopped link needs (then resynced with
//! the command the refusal names); `run` after a killed and after a failed backfill (refused, naming the
//! command; the resumed backfill and `run` then end row-for-row equal); `--allow-nonempty`
//! with a secondary unique key that collides (refused by name, no row written over another).
//!
//! Every test runs the real binary (`$DUPLEX_BIN`, else this build's) against the shared test
//! servers, each in databases of its own.

mod harness;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use duplex::backfill::BackfillMeta;
use duplex_testkit::{MariaDatabase, PgDatabase, shared_mariadb, shared_pg};
use harness::{Duplex, drop_slot, duplex_bin, wait_for};

const WAIT: Duration = Duration::from_secs(120);

/// `[sites.<name>]` of a database.
fn site(name: &str, url: &str) -> String {
    let kind = if url.starts_with("mysql") {
        "mysql"
    } else {
        "postgres"
    };
    format!("[sites.{name}]\nkind = \"{kind}\"\nurl = \"{url}\"\n\n")
}

/// A one-way `[[mappings]]` entry.
fn mapping(name: &str, from: (&str, &str), to: (&str, &str)) -> String {
    format!(
        "[[mappings]]\nname = \"{name}\"\ntables = {{ {} = \"{}\", {} = \"{}\" }}\ndirection = \"{}->{}\"\n\n",
        from.0, from.1, to.0, to.1, from.0, to.0
    )
}

fn state(dir: &Path) -> String {
    format!("[state]\ndir = \"{}\"\n\n", dir.join("state").display())
}

/// A summary of `table` (`id`, `qty`, `name`) that is equal on both kinds for equal rows.
fn pg_sum(db: &PgDatabase, table: &str) -> String {
    db.psql(&format!(
        "SELECT count(*), coalesce(sum(id), 0), coalesce(sum(qty), 0), \
         md5(coalesce(string_agg(id || ':' || qty || ':' || name, ',' ORDER BY id), '')) FROM {table}"
    ))
    .unwrap()
    .trim()
    .replace('|', " ")
}

fn my_sum(db: &MariaDatabase, table: &str) -> String {
    db.sql(&format!(
        "SET SESSION group_concat_max_len = 1073741824; SELECT count(*), coalesce(sum(id), 0), \
         coalesce(sum(qty), 0), md5(coalesce(group_concat(id, ':', qty, ':', name ORDER BY id \
         SEPARATOR ','), '')) FROM {table}"
    ))
    .unwrap()
    .trim()
    .replace('\t', " ")
}

fn count_pg(db: &PgDatabase, table: &str) -> u64 {
    db.psql(&format!("SELECT count(*) FROM {table}"))
        .map(|t| t.trim().parse().unwrap_or(0))
        .unwrap_or(0)
}

fn count_my(db: &MariaDatabase, table: &str) -> u64 {
    db.sql(&format!("SELECT count(*) FROM {table}"))
        .map(|t| t.trim().parse().unwrap_or(0))
        .unwrap_or(0)
}

fn log_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A summary of one side of a mapping.
type Summary<'a> = &'a dyn Fn() -> String;

/// Waits until every pair of summaries is equal, `duplex run` running meanwhile.
fn wait_equal(duplex: &mut Duplex, what: &str, pairs: &[(Summary, Summary)]) {
    wait_for(what, WAIT, || {
        duplex.assert_running();
        for (source, target) in pairs {
            let (s, t) = (source(), target());
            if s != t {
                return Err(format!("source {s} target {t}\n{}", duplex.log_text()));
            }
        }
        Ok(())
    });
}

/// `duplex run` exits by itself with 1 and says which backfill to finish, with the command.
fn run_refuses(duplex: &mut Duplex, command: &str) {
    duplex.start();
    let code = wait_for("duplex run to refuse", WAIT, || {
        duplex.exit_code().ok_or_else(|| duplex.log_text())
    });
    let log = duplex.log_text();
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("did not finish") && log.contains(command),
        "the refusal names the command `{command}`:\n{log}"
    );
    assert!(!log.contains("link started"), "nothing streamed:\n{log}");
}

fn meta(dir: &Path, mapping: &str) -> Option<BackfillMeta> {
    let store = duplex_state::StateStore::open(&dir.join("state")).unwrap();
    duplex::backfill::load_meta(&store, mapping).unwrap()
}

#[test]
fn a_new_mapping_backfilled_next_to_a_stopped_link_takes_nothing_from_it() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(
            "CREATE TABLE orders (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL); \
             CREATE TABLE stock (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL); \
             INSERT INTO orders SELECT g, g % 7, 'order ' || g FROM generate_series(1, 3000) g; \
             INSERT INTO stock SELECT g, g % 11, 'sku ' || g FROM generate_series(1, 3000) g",
        )
        .unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql("CREATE TABLE orders (id BIGINT PRIMARY KEY, qty INT NOT NULL, name VARCHAR(100) NOT NULL) ENGINE=InnoDB")
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(
        "CREATE TABLE stock (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL)",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = source.name();
    let orders = mapping(
        "orders",
        (store, "public.orders"),
        ("erp", &format!("{}.orders", erp.name())),
    );
    let first = format!(
        "{}{}{}{orders}",
        state(dir.path()),
        site(store, &source.url()),
        site("erp", &erp.url())
    );
    let src_orders = || pg_sum(&source, "orders");
    let erp_orders = || my_sum(&erp, "orders");

    // The existing link: backfilled, streaming, then stopped.
    let mut duplex = Duplex::new(&first);
    let out = duplex.command(&["backfill"]);
    assert!(out.status.success(), "{}", log_of(&out));
    duplex.start();
    source
        .psql("INSERT INTO orders VALUES (4001, 1, 'while running')")
        .unwrap();
    wait_equal(
        &mut duplex,
        "erp to stream orders",
        &[(&src_orders, &erp_orders)],
    );
    assert_eq!(duplex.terminate(), 0);

    // While it is stopped: changes it must still deliver.
    source
        .psql(
            "INSERT INTO orders SELECT g, 5, 'while stopped ' || g FROM generate_series(5001, 5010) g; \
             UPDATE orders SET qty = 99, name = name || ' (changed)' WHERE id % 100 = 3; \
             DELETE FROM orders WHERE id % 100 = 4; \
             INSERT INTO stock VALUES (5001, 1, 'sku while stopped')",
        )
        .unwrap();

    // A new mapping of the same source into a new target, backfilled on its own.
    let second = format!(
        "{first}{}{}",
        site("wms", &wms.url()),
        mapping("stock", (store, "public.stock"), ("wms", "public.stock"))
    );
    let mut duplex = Duplex::new(&second);
    let out = duplex.command(&["backfill", "--mapping", "stock"]);
    let log = log_of(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(pg_sum(&source, "stock"), pg_sum(&wms, "stock"), "{log}");
    // The publication still lists the link's table, besides the new one.
    assert_eq!(
        source
            .psql(&format!(
                "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_publication_tables \
                 WHERE pubname = 'duplex_{store}_{store}'"
            ))
            .unwrap()
            .trim(),
        "orders,stock"
    );

    // Both streams, and everything arrives: what changed while the link was stopped, the new
    // mapping's rows, and what changes now.
    duplex.start();
    let src_stock = || pg_sum(&source, "stock");
    let wms_stock = || pg_sum(&wms, "stock");
    wait_equal(
        &mut duplex,
        "erp to get the changes made while stopped, and wms the stock",
        &[(&src_orders, &erp_orders), (&src_stock, &wms_stock)],
    );
    source
        .psql(
            "INSERT INTO orders VALUES (6001, 6, 'after'); INSERT INTO stock VALUES (6001, 6, 'after'); \
             UPDATE stock SET qty = qty + 1 WHERE id % 10 = 1",
        )
        .unwrap();
    wait_equal(
        &mut duplex,
        "both targets to follow",
        &[(&src_orders, &erp_orders), (&src_stock, &wms_stock)],
    );
    assert_eq!(duplex.terminate(), 0);
    assert!(
        !log.contains("dropping"),
        "the link's slot was kept:\n{log}"
    );
    drop_slot(&source);
}

#[test]
fn run_refuses_a_killed_backfill_and_the_resumed_one_ends_equal() {
    const ROWS: u64 = 200_000;
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(&format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL); \
             INSERT INTO items SELECT g, g % 13, 'item ' || g FROM generate_series(1, {ROWS}) g"
        ))
        .unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql("CREATE TABLE items (id BIGINT PRIMARY KEY, qty INT NOT NULL, name VARCHAR(100) NOT NULL) ENGINE=InnoDB")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = source.name();
    let text = format!(
        "{}{}{}{}",
        state(dir.path()),
        site(store, &source.url()),
        site("erp", &erp.url()),
        mapping(
            "items",
            (store, "public.items"),
            ("erp", &format!("{}.items", erp.name()))
        )
    );
    let mut duplex = Duplex::new(&text);

    // Kill the backfill once 10,000 rows are on the target.
    let mut child = Command::new(duplex_bin())
        .arg("--config")
        .arg(duplex.config_path())
        .args(["backfill", "--jobs", "1", "--chunk-rows", "2000"])
        .env("DUPLEX_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("10,000 rows on the target", WAIT, || {
        let n = count_my(&erp, "items");
        if n >= 10_000 {
            Ok(())
        } else {
            Err(format!("{n} rows"))
        }
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let copied = count_my(&erp, "items");
    assert!(
        copied < ROWS,
        "the backfill finished before it was killed ({copied} rows): the test proves nothing"
    );
    assert!(!meta(dir.path(), "items").unwrap().complete);
    source
        .psql("INSERT INTO items VALUES (300001, 1, 'after the kill'); UPDATE items SET qty = -1 WHERE id % 1000 = 7")
        .unwrap();

    run_refuses(&mut duplex, "duplex backfill --mapping items");
    assert_eq!(count_my(&erp, "items"), copied, "run wrote nothing");

    let out = duplex.command(&["backfill", "--jobs", "2", "--chunk-rows", "2000"]);
    assert!(out.status.success(), "{}", log_of(&out));
    duplex.start();
    source
        .psql("INSERT INTO items VALUES (300002, 1, 'streamed')")
        .unwrap();
    let src = || pg_sum(&source, "items");
    let dst = || my_sum(&erp, "items");
    wait_equal(
        &mut duplex,
        "the target to equal the source",
        &[(&src, &dst)],
    );
    assert_eq!(duplex.terminate(), 0);
    drop_slot(&source);
}

#[test]
fn run_refuses_a_failed_backfill_from_mariadb_and_the_resumed_one_catches_up() {
    let source = shared_mariadb().create_database();
    source
        .sql(
            "CREATE TABLE items (id BIGINT PRIMARY KEY, qty BIGINT NOT NULL, name VARCHAR(100) NOT NULL) ENGINE=InnoDB; \
             INSERT INTO items SELECT seq, seq % 13, concat('item ', seq) FROM seq_1_to_5000; \
             UPDATE items SET qty = 3000000000 WHERE id = 4000",
        )
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(
        "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL)",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}{}{}{}",
        state(dir.path()),
        site("shop", &source.url()),
        site("wms", &wms.url()),
        mapping(
            "items",
            ("shop", &format!("{}.items", source.name())),
            ("wms", "public.items")
        )
    );
    let mut duplex = Duplex::new(&text);
    // Ranges in key order: the fourth fails on a value wms's `int` cannot hold.
    let out = duplex.command(&["backfill", "--jobs", "1", "--chunk-rows", "1000"]);
    let log = log_of(&out);
    assert!(!out.status.success(), "{log}");
    assert_eq!(count_pg(&wms, "items"), 3000, "{log}");
    // Changes after the failed attempt, to rows copied and not copied.
    source
        .sql(
            "UPDATE items SET qty = 77, name = 'changed after the failure' WHERE id IN (10, 2500, 4500); \
             DELETE FROM items WHERE id IN (11, 4501); INSERT INTO items VALUES (9001, 1, 'new')",
        )
        .unwrap();

    run_refuses(&mut duplex, "duplex backfill --mapping items");

    wms.execute_as_duplex("ALTER TABLE items ALTER COLUMN qty TYPE bigint")
        .unwrap();
    let out = duplex.command(&["backfill", "--jobs", "1", "--chunk-rows", "1000"]);
    assert!(out.status.success(), "{}", log_of(&out));
    assert!(meta(dir.path(), "items").unwrap().complete);
    duplex.start();
    let src = || my_sum(&source, "items");
    let dst = || pg_sum(&wms, "items");
    wait_equal(
        &mut duplex,
        "the target to equal the source",
        &[(&src, &dst)],
    );
    source
        .sql("UPDATE items SET name = 'streamed' WHERE id = 12")
        .unwrap();
    wait_equal(&mut duplex, "the target to follow", &[(&src, &dst)]);
    assert_eq!(duplex.terminate(), 0);
}

#[test]
fn allow_nonempty_never_writes_a_row_over_another_through_a_secondary_unique_key() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(
            "CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL); \
             INSERT INTO customers VALUES (1, 'a@x', 'Ann'), (2, 'b@x', 'Bob')",
        )
        .unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql(
        "CREATE TABLE customers (id BIGINT PRIMARY KEY, email VARCHAR(100) NOT NULL, name VARCHAR(100) NOT NULL, \
         UNIQUE KEY customers_email (email)) ENGINE=InnoDB; \
         INSERT INTO customers VALUES (99, 'a@x', 'stale')",
    )
    .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(
        "CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL CONSTRAINT customers_email UNIQUE, name text NOT NULL); \
         INSERT INTO customers VALUES (99, 'a@x', 'stale')",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = source.name();
    let text = format!(
        "{}{}{}{}{}{}",
        state(dir.path()),
        site(store, &source.url()),
        site("erp", &erp.url()),
        site("wms", &wms.url()),
        mapping(
            "to_erp",
            (store, "public.customers"),
            ("erp", &format!("{}.customers", erp.name()))
        ),
        mapping(
            "to_wms",
            (store, "public.customers"),
            ("wms", "public.customers")
        )
    );
    let mut duplex = Duplex::new(&text);
    let erp_rows = || {
        erp.sql("SELECT id, email, name FROM customers ORDER BY id")
            .unwrap()
    };
    let wms_rows = || {
        wms.psql("SELECT id, email, name FROM customers ORDER BY id")
            .unwrap()
    };
    for (mapping, rows) in [
        ("to_erp", &erp_rows as &dyn Fn() -> String),
        ("to_wms", &wms_rows),
    ] {
        let before = rows();
        let out = duplex.command(&["backfill", "--mapping", mapping, "--allow-nonempty"]);
        let log = log_of(&out);
        assert!(!out.status.success(), "{mapping}: {log}");
        assert!(
            log.contains("customers")
                && log.contains("id=Int(1)")
                && log.contains("customers_email")
                && log.contains("primary key only"),
            "{mapping}: the refusal names the table, the key and the index:\n{log}"
        );
        assert_eq!(rows(), before, "{mapping}: no row written over another");
    }
    assert_eq!(erp_rows().trim(), "99\ta@x\tstale");
    assert_eq!(wms_rows().trim(), "99|a@x|stale");

    // Both backfills failed: run refuses them.
    run_refuses(&mut duplex, "duplex backfill --mapping to_erp");

    // The fix the message names: the conflicting target row goes; the backfill resumes.
    erp.sql("DELETE FROM customers WHERE id = 99").unwrap();
    wms.psql("DELETE FROM customers WHERE id = 99").unwrap();
    let out = duplex.command(&["backfill", "--allow-nonempty"]);
    assert!(out.status.success(), "{}", log_of(&out));
    assert_eq!(erp_rows().trim(), "1\ta@x\tAnn\n2\tb@x\tBob");
    assert_eq!(wms_rows().trim(), "1|a@x|Ann\n2|b@x|Bob");
    duplex.start();
    source
        .psql("INSERT INTO customers VALUES (3, 'c@x', 'Cy')")
        .unwrap();
    wait_for("the new customer on both targets", WAIT, || {
        duplex.assert_running();
        let (e, w) = (erp_rows(), wms_rows());
        if e.contains("3\tc@x\tCy") && w.contains("3|c@x|Cy") {
            Ok(())
        } else {
            Err(format!("erp {e} wms {w}\n{}", duplex.log_text()))
        }
    });
    assert_eq!(duplex.terminate(), 0);
    drop_slot(&source);
}

#[test]
fn a_new_mapping_is_not_backfilled_over_a_gone_slot_a_stopped_link_still_needs() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(
            "CREATE TABLE orders (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL); \
             CREATE TABLE stock (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL); \
             INSERT INTO orders VALUES (1, 1, 'one'); INSERT INTO stock VALUES (1, 1, 'one')",
        )
        .unwrap();
    let erp = shared_pg().create_database();
    let wms = shared_pg().create_database();
    for db in [&erp, &wms] {
        db.execute_as_duplex(
            "CREATE TABLE orders (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL); \
             CREATE TABLE stock (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL)",
        )
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = source.name();
    let first = format!(
        "{}{}{}{}",
        state(dir.path()),
        site(store, &source.url()),
        site("erp", &erp.url()),
        mapping("orders", (store, "public.orders"), ("erp", "public.orders"))
    );
    let duplex = Duplex::new(&first);
    let out = duplex.command(&["backfill"]);
    assert!(out.status.success(), "{}", log_of(&out));
    // The link's slot disappears while the link is stopped (a DBA, a failover), and rows
    // are written that only it could deliver.
    drop_slot(&source);
    source
        .psql("INSERT INTO orders VALUES (2, 2, 'while stopped')")
        .unwrap();

    let second = format!(
        "{first}{}{}",
        site("wms", &wms.url()),
        mapping("stock", (store, "public.stock"), ("wms", "public.stock"))
    );
    let duplex = Duplex::new(&second);
    let out = duplex.command(&["backfill", "--mapping", "stock"]);
    let log = log_of(&out);
    assert!(
        !out.status.success(),
        "a new slot would hide that erp lost the rows since its position:\n{log}"
    );
    assert!(
        log.contains("is gone") && log.contains("site erp"),
        "the refusal says which slot is gone and who needs it:\n{log}"
    );
    assert_eq!(
        source
            .psql(&format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'duplex_{store}%'"
            ))
            .unwrap()
            .trim(),
        "0",
        "no slot was created"
    );
    assert_eq!(count_pg(&wms, "stock"), 0);

    // The command the refusal names copies both mappings, and `run` streams on from there.
    let resync = format!("duplex backfill --resync --from {store}");
    assert!(
        log.contains(&resync),
        "the refusal names `{resync}`:\n{log}"
    );
    let out = duplex.command(&["backfill", "--resync", "--from", store]);
    assert!(out.status.success(), "{}", log_of(&out));
    let mut duplex = duplex;
    duplex.start();
    source
        .psql("INSERT INTO orders VALUES (3, 3, 'streamed'); INSERT INTO stock VALUES (2, 2, 'streamed')")
        .unwrap();
    let orders = || pg_sum(&source, "orders");
    let orders_erp = || pg_sum(&erp, "orders");
    let stock = || pg_sum(&source, "stock");
    let stock_wms = || pg_sum(&wms, "stock");
    wait_equal(
        &mut duplex,
        "both targets to equal the source",
        &[(&orders, &orders_erp), (&stock, &stock_wms)],
    );
    assert_eq!(duplex.terminate(), 0);
    drop_slot(&source);
}

#[test]
fn a_publication_claimed_by_another_deployment_is_not_touched_by_backfill() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(
            "CREATE TABLE orders (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL); \
             CREATE TABLE other (id bigint PRIMARY KEY); \
             INSERT INTO orders VALUES (1, 1, 'one')",
        )
        .unwrap();
    let store = source.name();
    // Another deployment's publication of the same name, listing its own table.
    source
        .execute_as_duplex(&format!(
            "CREATE PUBLICATION duplex_{store}_{store} FOR TABLE other; \
             COMMENT ON PUBLICATION duplex_{store}_{store} IS 'duplex deployment 00000000-0000-0000-0000-000000000001'"
        ))
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(
        "CREATE TABLE orders (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL)",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}{}{}{}",
        state(dir.path()),
        site(store, &source.url()),
        site("wms", &wms.url()),
        mapping("orders", (store, "public.orders"), ("wms", "public.orders"))
    );
    let out = Duplex::new(&text).command(&["backfill"]);
    let log = log_of(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("00000000-0000-0000-0000-000000000001"),
        "{log}"
    );
    assert_eq!(
        source
            .psql(&format!(
                "SELECT string_agg(tablename, ',') FROM pg_publication_tables WHERE pubname = 'duplex_{store}_{store}'"
            ))
            .unwrap()
            .trim(),
        "other",
        "the other deployment's table list is untouched"
    );
    assert_eq!(
        source
            .psql(&format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'duplex_{store}%'"
            ))
            .unwrap()
            .trim(),
        "0"
    );
    assert_eq!(count_pg(&wms, "orders"), 0);
}

#[test]
fn a_failed_backfill_can_be_given_up_and_copied_again_with_restart() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(
            "CREATE TABLE items (id bigint PRIMARY KEY, qty bigint NOT NULL, name text NOT NULL); \
             INSERT INTO items SELECT g, g % 13, 'item ' || g FROM generate_series(1, 5000) g; \
             UPDATE items SET qty = 3000000000 WHERE id = 4000",
        )
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(
        "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL)",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = source.name();
    let text = format!(
        "{}{}{}{}",
        state(dir.path()),
        site(store, &source.url()),
        site("wms", &wms.url()),
        // A `_` in the name: the markers are found by a LIKE pattern that must take it as
        // itself.
        mapping(
            "shop_items",
            (store, "public.items"),
            ("wms", "public.items")
        )
    );
    let mut duplex = Duplex::new(&text);
    let out = duplex.command(&["backfill", "--jobs", "1", "--chunk-rows", "1000"]);
    assert!(!out.status.success(), "{}", log_of(&out));
    assert_eq!(count_pg(&wms, "items"), 3000);
    run_refuses(&mut duplex, "--restart");

    // Giving it up copies from scratch, so the partial copy must go first.
    wms.execute_as_duplex("ALTER TABLE items ALTER COLUMN qty TYPE bigint")
        .unwrap();
    let out = duplex.command(&["backfill", "--restart"]);
    let log = log_of(&out);
    assert!(
        !out.status.success() && log.contains("is not empty"),
        "{log}"
    );
    wms.psql("TRUNCATE items").unwrap();
    source
        .psql("UPDATE items SET name = 'changed' WHERE id = 10")
        .unwrap();
    let out = duplex.command(&["backfill", "--restart"]);
    assert!(out.status.success(), "{}", log_of(&out));
    let meta = meta(dir.path(), "shop_items").unwrap();
    assert!(meta.complete && meta.attempts.len() == 1, "{meta:?}");
    assert_eq!(
        wms.psql("SELECT count(*) FROM duplex.positions WHERE source LIKE 'backfill:%'")
            .unwrap()
            .trim(),
        "0",
        "no marker of the abandoned attempt is left"
    );
    duplex.start();
    source
        .psql("INSERT INTO items VALUES (9001, 1, 'streamed')")
        .unwrap();
    let src = || pg_sum(&source, "items");
    let dst = || pg_sum(&wms, "items");
    wait_equal(
        &mut duplex,
        "the target to equal the source",
        &[(&src, &dst)],
    );
    assert_eq!(duplex.terminate(), 0);
    drop_slot(&source);
}

/// Two deployments (two state directories) backfill a mapping of the same name into two
/// databases of one MariaDB server, whose `duplex.positions` is one per server. The first stops
/// part way and leaves its range markers; the second reads a source whose positions compare
/// lower than the first's (a server of its own, just started). A marker named by mapping and
/// range alone made the second take the first's markers for its own ranges, and skip them
/// without a word; each deployment's markers are its own, so every row is copied.
#[test]
fn another_deployments_range_markers_on_a_shared_mariadb_never_stand_for_this_ones() {
    let rows = "INSERT INTO items SELECT g, g % 13, 'item ' || g FROM generate_series(1, 5000) g";
    // First deployment: the shared PostgreSQL server, its WAL moved on a segment, and a value
    // in its fourth range that the target's column cannot hold.
    let first = shared_pg().create_database();
    first
        .execute_as_duplex(&format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, qty bigint NOT NULL, name text NOT NULL); \
             {rows}; UPDATE items SET qty = 3000000000 WHERE id = 3500"
        ))
        .unwrap();
    first.psql("SELECT pg_switch_wal()").unwrap();
    let first_target = shared_mariadb().create_database();
    first_target
        .sql("CREATE TABLE items (id BIGINT PRIMARY KEY, qty INT NOT NULL, name LONGTEXT NOT NULL)")
        .unwrap();
    // One deployment (a state directory of its own) backfilling mapping `items` from `source`
    // into `target`, with one worker and ranges of 1,000 rows: the command's output.
    let backfill = |source: &PgDatabase, target: &MariaDatabase| {
        let dir = tempfile::tempdir().unwrap();
        let config = state(dir.path())
            + &site(source.name(), &source.url())
            + &site(target.name(), &target.url())
            + &mapping(
                "items",
                (source.name(), "public.items"),
                (target.name(), &format!("{}.items", target.name())),
            );
        Duplex::new(&config).command(&["backfill", "--jobs", "1", "--chunk-rows", "1000"])
    };
    let out = backfill(&first, &first_target);
    assert!(!out.status.success(), "{}", log_of(&out));
    assert_eq!(count_my(&first_target, "items"), 3000, "{}", log_of(&out));

    // Second deployment: a server of its own, whose positions are all lower.
    let server = duplex_testkit::PgServer::start(duplex_testkit::PgOptions::default()).unwrap();
    let second = server.create_database();
    second
        .execute_as_duplex(&format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, qty bigint NOT NULL, name text NOT NULL); \
             {rows}"
        ))
        .unwrap();
    let lsn = |db: &PgDatabase| {
        harness::parse_lsn(db.psql("SELECT pg_current_wal_lsn()").unwrap().trim()).unwrap()
    };
    assert!(
        lsn(&second) < lsn(&first),
        "the test needs the second source's positions below the first's markers"
    );
    let second_target = shared_mariadb().create_database();
    second_target
        .sql("CREATE TABLE items (id BIGINT PRIMARY KEY, qty BIGINT NOT NULL, name LONGTEXT NOT NULL)")
        .unwrap();
    let out = backfill(&second, &second_target);
    assert!(out.status.success(), "{}", log_of(&out));
    assert_eq!(my_sum(&second_target, "items"), pg_sum(&second, "items"));
    assert_eq!(count_my(&second_target, "items"), 5000);
    drop_slot(&first);
    drop_slot(&second);
}
