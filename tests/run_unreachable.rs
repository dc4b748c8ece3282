//! Dead connections and sites down at start, end to end through the real binary: a PostgreSQL
//! source whose walsender is frozen or whose network turns into a black hole is presumed dead
//! within its `stream_timeout` and read again from where the target got to; a source or a
//! two-way site down when `duplex run` starts is waited for while the rest streams. Every test
//! ends with the targets equal to their sources, row for row.

mod harness;

use std::time::{Duration, Instant};

use duplex_testkit::{PgDatabase, PgOptions, PgServer, Shutdown, shared_pg};
use harness::pg::{drop_all_slots, table_rows, wait_equal};
use harness::proxy::Proxy;
use harness::{Duplex, REPLICATION_GUARD, drop_slot, pg_slot, wait_for, wait_slot_active};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL)";

/// What the PostgreSQL stream logs when it presumes its connection dead.
const SILENT: &str = "no message from the PostgreSQL server";

/// What `run` logs while a link or the merge engine waits for an unreachable site.
const WAITING: &str = "cannot start yet (a site is unreachable)";

/// The `stream_timeout` the tests give their PostgreSQL sources.
const TIMEOUT: Duration = Duration::from_secs(3);

/// A `[sites.<db name>]` table for `db`, reached at `url`.
fn site(db: &PgDatabase, url: &str) -> String {
    format!(
        "[sites.{}]\nkind = \"postgres\"\nurl = \"{url}\"\nstream_timeout = \"{}s\"\n\n",
        db.name(),
        TIMEOUT.as_secs()
    )
}

/// A `[[mappings]]` table of `public.items` between two sites.
fn mapping(name: &str, a: &PgDatabase, b: &PgDatabase, direction: &str) -> String {
    format!(
        "[[mappings]]\nname = \"{name}\"\ntables = {{ {a} = \"public.items\", {b} = \"public.items\" }}\ndirection = \"{direction}\"\n\n",
        a = a.name(),
        b = b.name(),
    )
}

/// A one-way configuration `source -> target` of `public.items`, the source reached at
/// `source_url`.
fn one_way(source: &PgDatabase, source_url: &str, target: &PgDatabase) -> String {
    site(source, source_url)
        + &site(target, &target.url())
        + &mapping(
            "items",
            source,
            target,
            &format!("{}->{}", source.name(), target.name()),
        )
}

/// Inserts rows `ids` into `items`, one transaction each.
fn insert(db: &PgDatabase, ids: std::ops::RangeInclusive<i32>) {
    for id in ids {
        db.psql(&format!("INSERT INTO items VALUES ({id}, 'v{id}')"))
            .unwrap();
    }
}

/// `db`'s items as `id|v` rows, checked to be exactly `1..=count`.
fn assert_items(db: &PgDatabase, count: i32) {
    let expected: Vec<Vec<String>> = (1..=count)
        .map(|id| vec![id.to_string(), format!("v{id}")])
        .collect();
    assert_eq!(table_rows(db, "items"), expected);
}

/// The walsender streaming from duplex's slot on `source`.
fn walsender_pid(source: &PgDatabase) -> u32 {
    let slot = pg_slot(source);
    let pid = source
        .psql(&format!(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .unwrap();
    pid.trim().parse().expect("the slot is held by a walsender")
}

/// Sends a signal to a process.
fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// Continues a stopped process when dropped, so a failing test never leaves one frozen.
struct Frozen(u32);

impl Frozen {
    fn freeze(pid: u32) -> Frozen {
        signal(pid, "STOP");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

/// Waits until duplex's log says `needle` `times` times; returns how long that took.
fn wait_logged(duplex: &mut Duplex, needle: &str, times: usize, within: Duration) -> Duration {
    let started = Instant::now();
    wait_for(&format!("the log to say {needle:?}"), within, || {
        duplex.assert_running();
        let log = duplex.log_text();
        if log.matches(needle).count() >= times {
            Ok(())
        } else {
            Err(log)
        }
    });
    started.elapsed()
}

/// Slack for a loaded 2-core machine on top of the timeout, before a late notice is a failure.
const SLACK: Duration = Duration::from_secs(20);

#[test]
fn a_frozen_walsender_is_presumed_dead_and_the_link_resumes_exactly() {
    // Own server: its walsender is frozen.
    let server = PgServer::start(PgOptions::default()).unwrap();
    let source = server.create_database();
    source.execute_as_duplex(ITEMS).unwrap();
    let target = shared_pg().create_database();
    target.execute_as_duplex(ITEMS).unwrap();
    let mut duplex = Duplex::run(&one_way(&source, &source.url(), &target));
    wait_slot_active(&source, &mut duplex);
    insert(&source, 1..=10);
    wait_equal(
        &source,
        &target,
        &mut duplex,
        "items",
        "rows before the freeze",
    );

    let frozen = Frozen::freeze(walsender_pid(&source));
    // The rest of the server works: these commits wait in the WAL.
    insert(&source, 11..=20);
    let noticed = wait_logged(&mut duplex, SILENT, 1, REPLICATION_GUARD);
    assert!(
        noticed <= TIMEOUT + SLACK,
        "the dead stream was noticed only after {noticed:?}\n{}",
        duplex.log_text()
    );
    drop(frozen);

    insert(&source, 21..=30);
    wait_equal(
        &source,
        &target,
        &mut duplex,
        "items",
        "rows after the thaw",
    );
    assert_items(&target, 30);
    duplex.terminate();
}

#[test]
fn a_black_holed_connection_is_presumed_dead_and_the_link_reconnects_exactly() {
    // Own server with a short wal_sender_timeout, so the walsender of the black-holed session
    // lets the slot go soon (the new session cannot take it before).
    let server = PgServer::start(PgOptions::default().setting("wal_sender_timeout", "5s")).unwrap();
    let proxy = Proxy::start(server.port());
    let source = server.create_database();
    source.execute_as_duplex(ITEMS).unwrap();
    let target = shared_pg().create_database();
    target.execute_as_duplex(ITEMS).unwrap();
    let through_proxy = source.url().replace(
        &format!(":{}/", server.port()),
        &format!(":{}/", proxy.port()),
    );
    assert_ne!(through_proxy, source.url());
    let mut duplex = Duplex::run(&one_way(&source, &through_proxy, &target));
    wait_slot_active(&source, &mut duplex);
    insert(&source, 1..=10);
    wait_equal(
        &source,
        &target,
        &mut duplex,
        "items",
        "rows before the partition",
    );

    proxy.black_hole();
    insert(&source, 11..=20);
    let noticed = wait_logged(&mut duplex, SILENT, 1, REPLICATION_GUARD);
    assert!(
        noticed <= TIMEOUT + SLACK,
        "the dead stream was noticed only after {noticed:?}\n{}",
        duplex.log_text()
    );

    insert(&source, 21..=30);
    wait_equal(
        &source,
        &target,
        &mut duplex,
        "items",
        "rows after the partition",
    );
    assert_items(&target, 30);
    duplex.terminate();
}

#[test]
fn a_long_silent_replay_of_another_tables_transaction_is_waited_out() {
    // PostgreSQL replays a committed transaction at its commit; the changes of a table the
    // publication does not list are filtered out, so a large one means a long silence. The
    // restarted stream meets it again: only a longer wait gets past it.
    let server = PgServer::start(PgOptions::default()).unwrap();
    let source = server.create_database();
    source.execute_as_duplex(ITEMS).unwrap();
    source
        .execute_as_duplex("CREATE TABLE other (id int PRIMARY KEY, pad text NOT NULL)")
        .unwrap();
    let target = shared_pg().create_database();
    target.execute_as_duplex(ITEMS).unwrap();
    let config = one_way(&source, &source.url(), &target).replace(
        &format!("stream_timeout = \"{}s\"", TIMEOUT.as_secs()),
        "stream_timeout = \"1s\"",
    );
    let mut duplex = Duplex::run(&config);
    wait_slot_active(&source, &mut duplex);
    insert(&source, 1..=3);
    wait_equal(&source, &target, &mut duplex, "items", "rows before");

    source
        .psql("INSERT INTO other SELECT i, repeat('x', 100) FROM generate_series(1, 2000000) i")
        .unwrap();
    insert(&source, 4..=6);
    wait_equal(
        &source,
        &target,
        &mut duplex,
        "items",
        "rows after the large transaction",
    );
    assert_items(&target, 6);
    let log = duplex.log_text();
    eprintln!("silences: {}", log.matches(SILENT).count());
    duplex.terminate();
}

#[test]
fn a_source_down_at_start_is_waited_for_while_the_other_mapping_streams() {
    // Own server for the source that is down at start.
    let server = PgServer::start(PgOptions::default().setting("synchronous_commit", "on")).unwrap();
    let down = server.create_database();
    down.execute_as_duplex(ITEMS).unwrap();
    let up = shared_pg().create_database();
    up.execute_as_duplex(ITEMS).unwrap();
    let (down_target, up_target) = (shared_pg().create_database(), shared_pg().create_database());
    down_target.execute_as_duplex(ITEMS).unwrap();
    up_target.execute_as_duplex(ITEMS).unwrap();
    let config = site(&down, &down.url())
        + &site(&up, &up.url())
        + &site(&down_target, &down_target.url())
        + &site(&up_target, &up_target.url())
        + &mapping(
            "from-down",
            &down,
            &down_target,
            &format!("{}->{}", down.name(), down_target.name()),
        )
        + &mapping(
            "from-up",
            &up,
            &up_target,
            &format!("{}->{}", up.name(), up_target.name()),
        );

    // Both links have streamed once, so each has its slot and position.
    let mut duplex = Duplex::run(&config);
    wait_slot_active(&down, &mut duplex);
    wait_slot_active(&up, &mut duplex);
    insert(&down, 1..=5);
    insert(&up, 1..=5);
    wait_equal(&down, &down_target, &mut duplex, "items", "first run, down");
    wait_equal(&up, &up_target, &mut duplex, "items", "first run, up");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());

    // Written while duplex is stopped, then the server goes down.
    insert(&down, 6..=10);
    server.shut_down(Shutdown::Fast).unwrap();
    duplex.start();
    // Counted from the second run's log lines on.
    let before = duplex.log_text().matches(WAITING).count();
    wait_logged(&mut duplex, WAITING, before + 2, REPLICATION_GUARD);
    let log = duplex.log_text();
    assert!(
        log.contains(&format!("link={} ->", down.name())),
        "the waiting link is not named:\n{log}"
    );
    insert(&up, 6..=10);
    wait_equal(&up, &up_target, &mut duplex, "items", "the other mapping");
    assert_items(&up_target, 10);

    server.start_again().unwrap();
    insert(&down, 11..=15);
    wait_equal(
        &down,
        &down_target,
        &mut duplex,
        "items",
        "the source once up",
    );
    assert_items(&down_target, 15);
    duplex.terminate();
    drop_slot(&up);
}

#[test]
fn a_two_way_site_down_at_start_is_waited_for_and_the_sites_become_equal() {
    let server = PgServer::start(PgOptions::default().setting("synchronous_commit", "on")).unwrap();
    let a = server.create_database();
    a.execute_as_duplex(ITEMS).unwrap();
    let b = shared_pg().create_database();
    b.execute_as_duplex(ITEMS).unwrap();
    let config = site(&a, &a.url()) + &site(&b, &b.url()) + &mapping("items", &a, &b, "both");
    let same = |count: usize, duplex: &mut Duplex| {
        wait_for(
            "both sites to hold the same rows",
            REPLICATION_GUARD,
            || {
                duplex.assert_running();
                let (rows_a, rows_b) = (table_rows(&a, "items"), table_rows(&b, "items"));
                if rows_a == rows_b && rows_a.len() == count {
                    Ok(())
                } else {
                    Err(format!("a {rows_a:?}, b {rows_b:?}"))
                }
            },
        );
    };

    let mut duplex = Duplex::run(&config);
    harness::sites::wait_reading(&mut duplex, 2, REPLICATION_GUARD);
    insert(&a, 1..=3);
    b.psql("INSERT INTO items SELECT i, 'v' || i FROM generate_series(4, 6) i")
        .unwrap();
    same(6, &mut duplex);
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());

    // Written at both sites while duplex is stopped; then site a goes down.
    insert(&a, 7..=8);
    b.psql("INSERT INTO items VALUES (9, 'v9'), (10, 'v10')")
        .unwrap();
    server.shut_down(Shutdown::Fast).unwrap();
    duplex.start();
    let before = duplex.log_text().matches(WAITING).count();
    wait_logged(&mut duplex, WAITING, before + 2, REPLICATION_GUARD);
    let log = duplex.log_text();
    assert!(
        log.contains("link=merge engine"),
        "the merge engine does not say it waits:\n{log}"
    );
    b.psql("INSERT INTO items VALUES (11, 'v11')").unwrap();

    server.start_again().unwrap();
    insert(&a, 12..=12);
    same(12, &mut duplex);
    assert_items(&a, 12);
    duplex.terminate();
    drop_all_slots(&b);
}
