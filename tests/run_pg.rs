//! `duplex run` from PostgreSQL into MariaDB and into a second PostgreSQL database, end to end
//! through the real binary and real servers.

mod harness;

use std::time::Duration;

use duplex_testkit::{MariaDatabase, PgDatabase, shared_mariadb, shared_pg};
use harness::{
    Duplex, REPLICATION_GUARD, commit_position, drop_slot, pg_slot, rows, wait_for,
    wait_replicated, wait_slot_active,
};

/// A config with one PostgreSQL source and the given one-way mappings
/// `(name, source table, target site, target table)`; sites are named after their databases
/// so that parallel tests never share a replication slot.
fn config(
    source: &PgDatabase,
    targets: &[(&str, String)],
    mappings: &[(&str, &str, &str, &str)],
) -> String {
    let mut text = format!(
        "[sites.{src}]\nkind = \"postgres\"\nurl = \"{url}\"\n\n",
        src = source.name(),
        url = source.url()
    );
    for (name, url) in targets {
        let kind = if url.starts_with("mysql") {
            "mysql"
        } else {
            "postgres"
        };
        text.push_str(&format!(
            "[sites.{name}]\nkind = \"{kind}\"\nurl = \"{url}\"\n\n"
        ));
    }
    for (name, from, target, to) in mappings {
        text.push_str(&format!(
            "[[mappings]]\nname = \"{name}\"\ntables = {{ {src} = \"{from}\", {target} = \"{to}\" }}\ndirection = \"{src}->{target}\"\n\n",
            src = source.name()
        ));
    }
    text
}

const PG_ITEMS: &str = "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, price numeric(12,2), \
     qty int, at timestamptz, data bytea, note text)";
const MY_ITEMS: &str = "CREATE TABLE items (id BIGINT PRIMARY KEY, name LONGTEXT NOT NULL, price DECIMAL(12,2), \
     qty INT, at DATETIME(6), data LONGBLOB, note LONGTEXT) ENGINE=InnoDB";
const PG_ITEMS_ROWS: &str = "SELECT id, name, coalesce(price::text, '<null>'), coalesce(qty::text, '<null>'), \
     coalesce(to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), '<null>'), \
     coalesce(encode(data, 'hex'), '<null>'), coalesce(note, '<null>') FROM items ORDER BY id";
const MY_ITEMS_ROWS: &str = "SELECT id, name, coalesce(price, '<null>'), coalesce(qty, '<null>'), \
     coalesce(date_format(at, '%Y-%m-%d %H:%i:%s.%f'), '<null>'), coalesce(lower(hex(data)), '<null>'), \
     coalesce(note, '<null>') FROM items ORDER BY id";

fn pg_rows(db: &PgDatabase, sql: &str) -> Vec<Vec<String>> {
    rows(&db.psql(sql).unwrap(), '|')
}

fn my_rows(db: &MariaDatabase, sql: &str) -> Vec<Vec<String>> {
    rows(&db.sql(sql).unwrap(), '\t')
}

#[test]
fn inserts_updates_deletes_and_key_changes_reach_mariadb_and_postgres() {
    let source = shared_pg().create_database();
    source.execute_as_duplex(PG_ITEMS).unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql(MY_ITEMS).unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(PG_ITEMS).unwrap();
    let mut duplex = Duplex::run(&config(
        &source,
        &[("erp", erp.url()), ("wms", wms.url())],
        &[
            (
                "items_erp",
                "public.items",
                "erp",
                &format!("{}.items", erp.name()),
            ),
            ("items_wms", "public.items", "wms", "public.items"),
        ],
    ));
    wait_slot_active(&source, &mut duplex);
    let log = duplex.log_text();
    assert!(
        log.contains("mapping(s) items_erp, items_wms were never backfilled")
            && log.contains("duplex backfill --mapping items_erp --mapping items_wms"),
        "run does not say the mappings were never backfilled:\n{log}"
    );

    source
        .execute_as_duplex(
            "INSERT INTO items VALUES (1, 'mug ☕', 9.90, 3, '2026-11-27 10:11:12.345678+02', '\\x00ff00', NULL);
             INSERT INTO items VALUES (2, 'tee', 19.00, 0, NULL, NULL, 'size L');
             BEGIN;
             INSERT INTO items VALUES (3, 'cap', -1.50, -7, '1999-12-31 23:59:59.999999+00', '\\x', '');
             UPDATE items SET price = 10.90, qty = qty - 1 WHERE id = 1;
             COMMIT;
             UPDATE items SET id = 20, note = 'renumbered' WHERE id = 2;
             DELETE FROM items WHERE id = 3;",
        )
        .unwrap();
    let expected = vec![
        vec![
            "1",
            "mug ☕",
            "10.90",
            "2",
            "2026-11-27 08:11:12.345678",
            "00ff00",
            "<null>",
        ],
        vec!["20", "tee", "19.00", "0", "<null>", "<null>", "renumbered"],
    ];
    assert_eq!(pg_rows(&source, PG_ITEMS_ROWS), expected);
    let commit = commit_position(&source);
    wait_replicated(
        &source,
        &mut duplex,
        commit,
        "MariaDB to equal the source",
        || {
            let got = my_rows(&erp, MY_ITEMS_ROWS);
            if got == expected {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    );
    wait_replicated(
        &source,
        &mut duplex,
        commit,
        "the second PostgreSQL to equal the source",
        || {
            let got = pg_rows(&wms, PG_ITEMS_ROWS);
            if got == expected {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    drop_slot(&source);
}

#[test]
fn an_unchanged_toasted_value_is_kept_on_the_targets() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(
            "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
             ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;",
        )
        .unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql("CREATE TABLE docs (id INT PRIMARY KEY, title LONGTEXT, body LONGTEXT) ENGINE=InnoDB")
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex("CREATE TABLE docs (id int PRIMARY KEY, title text, body text)")
        .unwrap();
    let mut duplex = Duplex::run(&config(
        &source,
        &[("erp", erp.url()), ("wms", wms.url())],
        &[
            (
                "docs_erp",
                "public.docs",
                "erp",
                &format!("{}.docs", erp.name()),
            ),
            ("docs_wms", "public.docs", "wms", "public.docs"),
        ],
    ));
    wait_slot_active(&source, &mut duplex);
    source
        .execute_as_duplex(
            "INSERT INTO docs SELECT 1, 'draft', string_agg(md5(i::text), '') FROM generate_series(1, 3200) i;
             UPDATE docs SET title = 'final' WHERE id = 1;",
        )
        .unwrap();
    let expected = pg_rows(&source, "SELECT title, length(body), md5(body) FROM docs");
    assert_eq!(expected[0][0], "final");
    assert_eq!(expected[0][1], "102400");
    let commit = commit_position(&source);
    wait_replicated(
        &source,
        &mut duplex,
        commit,
        "MariaDB to keep the 100 kB body",
        || {
            let got = my_rows(&erp, "SELECT title, length(body), md5(body) FROM docs");
            if got == expected {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    );
    wait_replicated(
        &source,
        &mut duplex,
        commit,
        "PostgreSQL to keep the 100 kB body",
        || {
            let got = pg_rows(&wms, "SELECT title, length(body), md5(body) FROM docs");
            if got == expected {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    drop_slot(&source);
}

/// 50,000 single-row transactions (with updates and deletes mixed in) while duplex is killed
/// with SIGKILL three times and restarted: the target ends equal to the source, row for row.
#[test]
fn exactly_once_across_sigkill_restarts() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(
            "CREATE TABLE events (id bigint PRIMARY KEY, payload text NOT NULL, n int NOT NULL);
             CREATE PROCEDURE workload(total int) LANGUAGE plpgsql AS $$
             BEGIN
               FOR i IN 1..total LOOP
                 INSERT INTO events VALUES (i, md5(i::text), 0);
                 COMMIT;
                 IF i % 10 = 0 THEN UPDATE events SET n = n + 1, payload = 'u' || i WHERE id = i - 5; COMMIT; END IF;
                 IF i % 25 = 0 THEN DELETE FROM events WHERE id = i - 20; COMMIT; END IF;
               END LOOP;
             END $$;",
        )
        .unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql("CREATE TABLE events (id BIGINT PRIMARY KEY, payload VARCHAR(64) NOT NULL, n INT NOT NULL) ENGINE=InnoDB")
        .unwrap();
    let mut duplex = Duplex::run(&config(
        &source,
        &[("erp", erp.url())],
        &[(
            "events",
            "public.events",
            "erp",
            &format!("{}.events", erp.name()),
        )],
    ));
    wait_slot_active(&source, &mut duplex);

    let workload_db = source.url();
    let workload = std::thread::spawn({
        let psql_url = workload_db.clone();
        move || {
            let status = std::process::Command::new("psql")
                .args([
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    &psql_url,
                    "-c",
                    "CALL workload(50000)",
                ])
                .status()
                .unwrap();
            assert!(status.success(), "workload failed");
        }
    });
    let count = |db: &MariaDatabase| -> u64 {
        db.sql("SELECT count(*) FROM events")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    for threshold in [2_000, 12_000, 25_000] {
        wait_for(
            &format!("{threshold} rows on the target"),
            Duration::from_secs(300),
            || {
                duplex.assert_running();
                let n = count(&erp);
                if n >= threshold {
                    Ok(())
                } else {
                    Err(format!("{n} rows"))
                }
            },
        );
        duplex.kill();
        duplex.start();
    }
    workload.join().unwrap();
    let expected = pg_rows(&source, "SELECT id, payload, n FROM events ORDER BY id");
    assert_eq!(expected.len(), 48_000, "the workload leaves 48,000 rows");
    let commit = commit_position(&source);
    wait_replicated(
        &source,
        &mut duplex,
        commit,
        "the target to equal the source",
        || {
            let got = my_rows(&erp, "SELECT id, payload, n FROM events ORDER BY id");
            if got == expected {
                Ok(())
            } else {
                Err(format!("{} rows, source {}", got.len(), expected.len()))
            }
        },
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    drop_slot(&source);
}

/// The source and then the target server are stopped for a few seconds mid-stream: duplex
/// reconnects with backoff and nothing is lost or doubled.
#[test]
fn a_restarted_source_or_target_server_is_reconnected_without_loss() {
    use duplex_testkit::{MariaOptions, MariaServer, PgOptions, PgServer, Shutdown};
    // Own servers: restarting the shared ones would disturb other tests. Commits must survive
    // the source's fast shutdown, so they are synchronous.
    let source_server =
        PgServer::start(PgOptions::default().setting("synchronous_commit", "on")).unwrap();
    let target_server = MariaServer::start(MariaOptions::default()).unwrap();
    let source = source_server.create_database();
    source
        .execute_as_duplex(
            "CREATE TABLE ticks (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
             CREATE PROCEDURE burst(first int, total int) LANGUAGE plpgsql AS $$
             BEGIN FOR i IN first..first + total - 1 LOOP INSERT INTO ticks (id) VALUES (i); COMMIT; END LOOP; END $$;",
        )
        .unwrap();
    let erp = target_server.create_database();
    erp.sql("CREATE TABLE ticks (id BIGINT PRIMARY KEY, at DATETIME(6) NOT NULL) ENGINE=InnoDB")
        .unwrap();
    let mut duplex = Duplex::run(&config(
        &source,
        &[("erp", erp.url())],
        &[(
            "ticks",
            "public.ticks",
            "erp",
            &format!("{}.ticks", erp.name()),
        )],
    ));
    wait_slot_active(&source, &mut duplex);
    let count = || -> Result<u64, String> {
        erp.sql("SELECT count(*) FROM ticks")
            .map_err(|e| e.to_string())?
            .trim()
            .parse()
            .map_err(|e| format!("{e}"))
    };
    let outage = Duration::from_secs(5);

    source.execute_as_duplex("CALL burst(1, 1000)").unwrap();
    let commit = commit_position(&source);
    wait_replicated(
        &source,
        &mut duplex,
        commit,
        "the first burst on the target",
        || match count()? {
            1000 => Ok(()),
            n => Err(format!("{n} rows")),
        },
    );
    source_server.shut_down(Shutdown::Fast).unwrap();
    // The outage itself: duplex must notice and keep retrying while the server is away.
    std::thread::sleep(outage);
    source_server.start_again().unwrap();
    source.execute_as_duplex("CALL burst(1001, 1000)").unwrap();
    let commit = commit_position(&source);
    wait_replicated(
        &source,
        &mut duplex,
        commit,
        "the burst after the source restart",
        || match count()? {
            2000 => Ok(()),
            n => Err(format!("{n} rows")),
        },
    );

    target_server.shut_down(Shutdown::Fast).unwrap();
    source.execute_as_duplex("CALL burst(2001, 1000)").unwrap();
    std::thread::sleep(outage);
    target_server.start_again().unwrap();
    source.execute_as_duplex("CALL burst(3001, 1000)").unwrap();
    let commit = commit_position(&source);
    wait_replicated(
        &source,
        &mut duplex,
        commit,
        "every row after the target restart",
        || match count()? {
            4000 => Ok(()),
            n => Err(format!("{n} rows")),
        },
    );
    let ids = erp
        .sql("SELECT min(id), max(id), count(DISTINCT id) FROM ticks")
        .unwrap();
    assert_eq!(ids.trim(), "1\t4000\t4000");
    let log = duplex.log_text();
    assert!(
        log.contains("link interrupted; retrying"),
        "no reconnect was logged:\n{log}"
    );
    assert_eq!(duplex.terminate(), 0, "{log}");
    drop_slot(&source);
}

/// While the mapped tables are idle and other tables are written, the slot's confirmed
/// position still advances: a quiet source never pins WAL.
#[test]
fn an_idle_mapped_table_does_not_pin_wal() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex("CREATE TABLE mapped (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY, v text);")
        .unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql("CREATE TABLE mapped (id INT PRIMARY KEY) ENGINE=InnoDB")
        .unwrap();
    let mut duplex = Duplex::run(&config(
        &source,
        &[("erp", erp.url())],
        &[(
            "mapped",
            "public.mapped",
            "erp",
            &format!("{}.mapped", erp.name()),
        )],
    ));
    wait_slot_active(&source, &mut duplex);
    source
        .execute_as_duplex(
            "INSERT INTO other SELECT i, repeat('w', 200) FROM generate_series(1, 5000) i",
        )
        .unwrap();
    // The insert position, at or past the commit's end (the write position can still be
    // before it: the test server commits asynchronously).
    let written = harness::format_lsn(commit_position(&source));
    let slot = pg_slot(&source);
    wait_for(
        "confirmed_flush_lsn to pass the unmapped writes",
        REPLICATION_GUARD,
        || {
            duplex.assert_running();
            let confirmed = source
            .psql(&format!(
                "SELECT confirmed_flush_lsn >= '{written}'::pg_lsn, confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ))
            .map_err(|e| e.to_string())?;
            if confirmed.starts_with("t|") {
                Ok(())
            } else {
                Err(confirmed)
            }
        },
    );
    assert_eq!(erp.sql("SELECT count(*) FROM mapped").unwrap().trim(), "0");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    drop_slot(&source);
}

/// A backlog of 2,000 shop transactions (orders and their lines: inserts, updates, deletes,
/// about 110,000 changes, so several 20,000-change target transactions) is caught up into two
/// PostgreSQL targets through the pipelined paths (the reader decoding ahead of the writers,
/// runs of inserts as binary COPY, grouped updates and deletes, and on the superuser's target
/// the batch written table by table), and duplex is killed with SIGKILL three times while
/// batches are in flight: both targets end equal to the source, row for row.
#[test]
fn a_backlog_killed_while_batches_are_in_flight_lands_exactly_once() {
    const SHOP: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, customer int NOT NULL, \
         status text NOT NULL, total numeric(12,2) NOT NULL);
         CREATE INDEX ON orders (customer);
         CREATE TABLE lines (order_id bigint NOT NULL REFERENCES orders, n int NOT NULL, \
         sku text NOT NULL, qty int NOT NULL, PRIMARY KEY (order_id, n));";
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(&format!(
            "{SHOP}
             CREATE PROCEDURE workload(transactions int) LANGUAGE plpgsql AS $$
             DECLARE o bigint;
             BEGIN
               FOR t IN 1..transactions LOOP
                 FOR k IN 1..10 LOOP
                   o := t * 10 + k;
                   INSERT INTO orders VALUES (o, o % 97, 'new', o % 1000);
                   INSERT INTO lines SELECT o, n, 'sku-' || (o * n % 501), n FROM generate_series(1, 3) n;
                 END LOOP;
                 UPDATE orders SET status = 'paid', total = total + 1
                   WHERE id BETWEEN (t - 1) * 10 + 1 AND (t - 1) * 10 + 5;
                 UPDATE lines SET qty = qty + 10 WHERE order_id BETWEEN (t - 1) * 10 + 1 AND (t - 1) * 10 + 3;
                 IF t % 4 = 0 THEN
                   DELETE FROM lines WHERE order_id = (t - 2) * 10 + 7;
                   DELETE FROM orders WHERE id = (t - 2) * 10 + 7;
                 END IF;
                 COMMIT;
               END LOOP;
             END $$;"
        ))
        .unwrap();
    // One target written as the superuser (foreign keys off: table by table), one as the
    // duplex role (foreign keys checked: the source's order).
    let fast = shared_pg().create_database();
    fast.psql(SHOP).unwrap();
    let ordered = shared_pg().create_database();
    ordered.execute_as_duplex(SHOP).unwrap();
    let mappings: Vec<(String, String, String, String)> = [("fast", &fast), ("ordered", &ordered)]
        .iter()
        .flat_map(|(site, _)| {
            ["orders", "lines"].map(|t| {
                (
                    format!("{t}_{site}"),
                    format!("public.{t}"),
                    site.to_string(),
                    format!("public.{t}"),
                )
            })
        })
        .collect();
    let mappings: Vec<(&str, &str, &str, &str)> = mappings
        .iter()
        .map(|(a, b, c, d)| (a.as_str(), b.as_str(), c.as_str(), d.as_str()))
        .collect();
    let mut duplex = Duplex::run(&config(
        &source,
        &[("fast", fast.admin_url()), ("ordered", ordered.url())],
        &mappings,
    ));
    wait_slot_active(&source, &mut duplex);
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());

    // The backlog commits while duplex is stopped.
    source.psql("CALL workload(2000)").unwrap();
    let expected_orders = pg_rows(&source, "SELECT * FROM orders ORDER BY id");
    let expected_lines = pg_rows(&source, "SELECT * FROM lines ORDER BY order_id, n");
    assert_eq!(expected_orders.len(), 20_000 - 500, "the workload's orders");
    let count = |db: &PgDatabase| -> usize {
        db.psql("SELECT count(*) FROM orders")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };

    duplex.start();
    let mut killed_part_way = 0;
    for threshold in [1, 7_000, 14_000] {
        wait_for(
            &format!("{threshold} orders on the targets"),
            Duration::from_secs(300),
            || {
                duplex.assert_running();
                let n = count(&fast).min(count(&ordered));
                if n >= threshold {
                    Ok(())
                } else {
                    Err(format!("{n} orders"))
                }
            },
        );
        duplex.kill();
        eprintln!(
            "killed with {} and {} orders on the targets",
            count(&fast),
            count(&ordered)
        );
        if count(&fast).min(count(&ordered)) < expected_orders.len() {
            killed_part_way += 1;
        }
        duplex.start();
    }
    assert!(
        killed_part_way > 0,
        "every kill came after the whole backlog had landed: the test did not kill a catch-up"
    );

    let commit = commit_position(&source);
    for target in [&fast, &ordered] {
        wait_replicated(
            &source,
            &mut duplex,
            commit,
            &format!("{} to equal the source", target.name()),
            || {
                let orders = pg_rows(target, "SELECT * FROM orders ORDER BY id");
                let lines = pg_rows(target, "SELECT * FROM lines ORDER BY order_id, n");
                if orders == expected_orders && lines == expected_lines {
                    Ok(())
                } else {
                    Err(format!(
                        "{} orders, {} lines; source {} and {}",
                        orders.len(),
                        lines.len(),
                        expected_orders.len(),
                        expected_lines.len()
                    ))
                }
            },
        );
    }
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    drop_slot(&source);
}
