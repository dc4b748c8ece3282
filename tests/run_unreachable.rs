//! Dead connections, end to end through the real binary: a PostgreSQL source whose walsender
//! is frozen or whose network turns into a black hole is presumed dead within its
//! `stream_timeout` and read again from where the target got to. Every test ends with the
//! targets equal to their sources, row for row.

mod harness;

use std::time::{Duration, Instant};

use duplex_testkit::{PgDatabase, PgOptions, PgServer, shared_pg};
use harness::pg::{table_rows, wait_equal};
use harness::proxy::Proxy;
use harness::{Duplex, REPLICATION_GUARD, pg_slot, wait_for, wait_slot_active};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL)";

/// What the PostgreSQL stream logs when it presumes its connection dead.
const SILENT: &str = "no message from the PostgreSQL server";

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
