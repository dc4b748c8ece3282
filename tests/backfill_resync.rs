//! The way back after a source's log lost the targets' positions: a PostgreSQL slot dropped,
//! a MariaDB binlog purged. `duplex run` stops naming `duplex backfill --resync --from <site>`;
//! that command (interrupted once and resumed, in the PostgreSQL case) makes the target
//! row-for-row equal to the source, the rows deleted at the source meanwhile gone, and `run`
//! then streams on from the new snapshot with nothing lost and nothing twice. A resync with
//! the slot still there is not needed, and correct.
//!
//! Every test runs the real binary (`$DUPLEX_BIN`, else this build's): against the shared test
//! servers in databases of their own, and, for the purge (the shared MariaDB server's binlog
//! belongs to every test), against a MariaDB server of the test's own.

mod harness;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use duplex_testkit::{
    MariaDatabase, MariaOptions, MariaServer, PgDatabase, shared_mariadb, shared_pg,
};
use harness::{Duplex, drop_slot, wait_for};

const WAIT: Duration = Duration::from_secs(120);

fn config(
    dir: &Path,
    (source, source_url): (&str, &str),
    (target, target_url): (&str, &str),
    tables: (&str, &str),
) -> String {
    let kind = |url: &str| {
        if url.starts_with("mysql") {
            "mysql"
        } else {
            "postgres"
        }
    };
    format!(
        "[state]\ndir = \"{}\"\n\n\
         [sites.{source}]\nkind = \"{}\"\nurl = \"{source_url}\"\n\n\
         [sites.{target}]\nkind = \"{}\"\nurl = \"{target_url}\"\n\n\
         [[mappings]]\nname = \"items\"\ntables = {{ {source} = \"{}\", {target} = \"{}\" }}\n\
         direction = \"{source}->{target}\"\n",
        dir.join("state").display(),
        kind(source_url),
        kind(target_url),
        tables.0,
        tables.1,
    )
}

/// Every row of `items` (`id`, `qty`, `name`) in key order, one string per row.
fn pg_rows(db: &PgDatabase) -> Vec<String> {
    db.psql("SELECT id || ':' || qty || ':' || name FROM items ORDER BY id")
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn my_rows(db: &MariaDatabase) -> Vec<String> {
    db.sql("SELECT concat(id, ':', qty, ':', name) FROM items ORDER BY id")
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

/// Waits until `target()` equals `source()`, `duplex run` running meanwhile.
fn wait_equal(
    duplex: &mut Duplex,
    what: &str,
    source: &dyn Fn() -> Vec<String>,
    target: &dyn Fn() -> Vec<String>,
) {
    wait_for(what, WAIT, || {
        duplex.assert_running();
        let (s, t) = (source(), target());
        if s == t {
            Ok(())
        } else {
            let missing: Vec<&String> = s.iter().filter(|r| !t.contains(r)).take(5).collect();
            let extra: Vec<&String> = t.iter().filter(|r| !s.contains(r)).take(5).collect();
            Err(format!(
                "{} source rows, {} target rows; missing {missing:?}, extra {extra:?}",
                s.len(),
                t.len()
            ))
        }
    });
}

/// `duplex run` stops by itself, naming the resync command.
fn run_stops_naming(duplex: &mut Duplex, command: &str) {
    let before = duplex.log_text().len();
    duplex.start();
    let code = duplex.wait_exit();
    let log = duplex.log_text()[before..].to_owned();
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains(command),
        "the stop names the command `{command}`:\n{log}"
    );
}

#[test]
fn a_dropped_slot_is_recovered_by_resync_and_the_rows_deleted_meanwhile_are_gone() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(
            "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL); \
             INSERT INTO items SELECT g, g % 7, 'item ' || g FROM generate_series(1, 2000) g",
        )
        .unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql("CREATE TABLE items (id BIGINT PRIMARY KEY, qty INT NOT NULL, name VARCHAR(40) NOT NULL) ENGINE=InnoDB")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = source.name();
    let text = config(
        dir.path(),
        (store, &source.url()),
        ("erp", &erp.url()),
        ("public.items", &format!("{}.items", erp.name())),
    );
    let mut duplex = Duplex::new(&text);
    let out = duplex.command(&["backfill"]);
    assert!(out.status.success(), "{}", log_of(&out));
    let src = || pg_rows(&source);
    let dst = || my_rows(&erp);
    duplex.start();
    duplex.wait_link_started();
    source
        .psql("INSERT INTO items VALUES (2001, 1, 'streamed'); UPDATE items SET qty = 100 WHERE id = 3")
        .unwrap();
    wait_equal(&mut duplex, "the first stream", &src, &dst);
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());

    // The slot is lost while duplex is stopped; rows are inserted, updated and deleted that
    // only it could have delivered, in every range of the resync below (500 rows each).
    drop_slot(&source);
    source
        .psql(
            "INSERT INTO items VALUES (2002, 2, 'while lost'), (2500, 2, 'gap'); \
             DELETE FROM items WHERE id IN (2500, 1, 499, 500, 777, 1999, 2001); \
             UPDATE items SET name = 'updated while lost' WHERE id IN (2, 600, 1200, 1800); \
             UPDATE items SET name = repeat('x', 60) WHERE id = 1600",
        )
        .unwrap();
    let resync = format!("duplex backfill --resync --from {store}");
    run_stops_naming(&mut duplex, &resync);
    // A plain backfill has nothing to do, and names the command.
    let out = duplex.command(&["backfill"]);
    let log = log_of(&out);
    assert!(
        log.contains("already backfilled") && log.contains(&resync),
        "{log}"
    );

    // The first resync fails on the row the target's column cannot hold, after some ranges.
    let args = [
        "backfill",
        "--resync",
        "--from",
        store,
        "--jobs",
        "1",
        "--chunk-rows",
        "500",
    ];
    let out = duplex.command(&args);
    let log = log_of(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        my_rows(&erp)
            .iter()
            .all(|r| !r.starts_with("1:") && !r.starts_with("499:")),
        "the first range was resynced, its deleted rows gone:\n{log}"
    );
    let refused = resync.as_str();
    let before = duplex.log_text().len();
    duplex.start();
    assert_eq!(duplex.wait_exit(), 1);
    let log = duplex.log_text()[before..].to_owned();
    assert!(
        log.contains("did not finish") && log.contains(refused),
        "{log}"
    );

    // Changes between the attempts, in ranges copied and not copied yet.
    source
        .psql(
            "DELETE FROM items WHERE id IN (2, 1300); INSERT INTO items VALUES (3, 3, 'again') \
             ON CONFLICT (id) DO UPDATE SET name = 'again'; UPDATE items SET qty = -5 WHERE id IN (10, 1400, 1700)",
        )
        .unwrap();
    erp.sql("ALTER TABLE items MODIFY name VARCHAR(100) NOT NULL")
        .unwrap();
    let out = duplex.command(&[
        "backfill",
        "--resync",
        "--from",
        store,
        "--jobs",
        "2",
        "--chunk-rows",
        "500",
    ]);
    assert!(out.status.success(), "{}", log_of(&out));
    assert_eq!(
        my_rows(&erp),
        pg_rows(&source),
        "the resync made the target equal"
    );

    // `run` streams from the new snapshot: nothing lost, nothing twice.
    duplex.start();
    duplex.wait_link_started();
    source
        .psql("INSERT INTO items VALUES (3000, 1, 'after the resync'); DELETE FROM items WHERE id = 4; UPDATE items SET qty = 9 WHERE id = 5")
        .unwrap();
    wait_equal(&mut duplex, "the stream after the resync", &src, &dst);
    // A resync refuses while `run` works (the state store is locked).
    let out = duplex.command(&["backfill", "--resync", "--from", store]);
    let log = log_of(&out);
    assert!(
        !out.status.success() && log.contains("in use by another duplex process"),
        "{log}"
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    drop_slot(&source);
}

#[test]
fn a_purged_binlog_is_recovered_by_resync_and_the_rows_deleted_meanwhile_are_gone() {
    // The purge would break every other test reading the shared server's binlog.
    let server = MariaServer::start(MariaOptions::default()).unwrap();
    let source = server.create_database();
    source
        .sql(
            "CREATE TABLE items (id BIGINT PRIMARY KEY, qty BIGINT NOT NULL, name VARCHAR(100) NOT NULL) ENGINE=InnoDB; \
             INSERT INTO items SELECT seq, seq % 13, concat('item ', seq) FROM seq_1_to_1500",
        )
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(
        "CREATE TABLE items (id bigint PRIMARY KEY, qty bigint NOT NULL, name text NOT NULL)",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        dir.path(),
        ("shop", &source.url()),
        ("wms", &wms.url()),
        (&format!("{}.items", source.name()), "public.items"),
    );
    let mut duplex = Duplex::new(&text);
    let out = duplex.command(&["backfill"]);
    assert!(out.status.success(), "{}", log_of(&out));
    let src = || my_rows(&source);
    let dst = || pg_rows(&wms);
    duplex.start();
    duplex.wait_link_started();
    source
        .sql("INSERT INTO items VALUES (1501, 1, 'streamed'); UPDATE items SET qty = 100 WHERE id = 3")
        .unwrap();
    wait_equal(&mut duplex, "the first stream", &src, &dst);
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());

    // While duplex is stopped, changes are made and the binlog holding them is purged.
    source
        .sql(
            "INSERT INTO items VALUES (1502, 2, 'while purged'); \
             DELETE FROM items WHERE id IN (1, 700, 1499, 1501); \
             UPDATE items SET name = 'updated while purged' WHERE id IN (2, 800)",
        )
        .unwrap();
    source.sql("FLUSH BINARY LOGS").unwrap();
    let current = source.sql("SHOW MASTER STATUS").unwrap();
    let file = current.split('\t').next().unwrap().trim().to_owned();
    // The server keeps a file a dump thread still reads or crash recovery still needs (its
    // checkpoint moves to the new file shortly): purge until it is gone.
    wait_for("the old binlog files to be purged", WAIT, || {
        source
            .sql(&format!("PURGE BINARY LOGS TO '{file}'"))
            .map_err(|e| e.to_string())?;
        let logs = source.sql("SHOW BINARY LOGS").map_err(|e| e.to_string())?;
        match logs.lines().next() {
            Some(first) if first.starts_with(&file) => Ok(()),
            _ => Err(format!("binlogs: {logs}")),
        }
    });
    source
        .sql("UPDATE items SET qty = 55 WHERE id = 5")
        .unwrap();

    run_stops_naming(&mut duplex, "duplex backfill --resync --from shop");
    let out = duplex.command(&[
        "backfill",
        "--resync",
        "--from",
        "shop",
        "--chunk-rows",
        "400",
    ]);
    assert!(out.status.success(), "{}", log_of(&out));
    assert_eq!(
        pg_rows(&wms),
        my_rows(&source),
        "the resync made the target equal"
    );

    duplex.start();
    duplex.wait_link_started();
    source
        .sql("INSERT INTO items VALUES (2000, 1, 'after the resync'); DELETE FROM items WHERE id = 4; UPDATE items SET qty = 9 WHERE id = 6")
        .unwrap();
    wait_equal(&mut duplex, "the stream after the resync", &src, &dst);
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}

/// A resync when nothing was lost (the slot still exists, changes are waiting in it) is not
/// needed, but correct: the target equals the source, and what streams afterwards is applied
/// once.
#[test]
fn a_resync_with_the_slot_still_there_is_correct() {
    let source = shared_pg().create_database();
    let wms = shared_pg().create_database();
    for db in [&source, &wms] {
        db.execute_as_duplex(
            "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL)",
        )
        .unwrap();
    }
    source
        .psql("INSERT INTO items SELECT g, g % 7, 'item ' || g FROM generate_series(1, 300) g")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = source.name();
    let text = config(
        dir.path(),
        (store, &source.url()),
        ("wms", &wms.url()),
        ("public.items", "public.items"),
    );
    let mut duplex = Duplex::new(&text);
    let out = duplex.command(&["backfill"]);
    assert!(out.status.success(), "{}", log_of(&out));
    // Changes wait in the slot, and the target gets a row the source never had.
    source
        .psql("INSERT INTO items VALUES (301, 1, 'waiting'); DELETE FROM items WHERE id = 2; UPDATE items SET qty = 50 WHERE id = 3")
        .unwrap();
    wms.execute_as_duplex("INSERT INTO items VALUES (999, 9, 'not at the source')")
        .unwrap();
    let out = duplex.command(&[
        "backfill",
        "--resync",
        "--from",
        store,
        "--chunk-rows",
        "100",
    ]);
    assert!(out.status.success(), "{}", log_of(&out));
    assert_eq!(pg_rows(&wms), pg_rows(&source));
    duplex.start();
    duplex.wait_link_started();
    source
        .psql("INSERT INTO items VALUES (302, 1, 'streamed'); UPDATE items SET qty = qty + 1 WHERE id <= 10")
        .unwrap();
    let src = || pg_rows(&source);
    let dst = || pg_rows(&wms);
    wait_equal(&mut duplex, "the stream after the resync", &src, &dst);
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    drop_slot(&source);
}
