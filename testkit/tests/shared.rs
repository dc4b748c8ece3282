//! Shared servers: one per kind however many threads and processes ask,
//! reused while alive, replaced when dead, stopped by `duplex-testservers`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use duplex_testkit::{SharedMariaDb, SharedPg, shared_mariadb, shared_pg, stop_shared_servers};

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat[stat.rfind(')').unwrap() + 2..].chars().next();
            !matches!(state, Some('Z' | 'X'))
        })
        .unwrap_or(false)
}

/// A shared-server directory of this test's own, so it can stop its servers.
fn private_dir(tag: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::env::temp_dir().join(format!(
        "duplex-shared-test-{tag}-{}-{nanos}",
        std::process::id()
    ))
}

fn testservers(dir: &Path, command: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_duplex-testservers"))
        .arg(command)
        .env("DUPLEX_TESTSERVERS_DIR", dir)
        .env_remove("DUPLEX_TEST_PG_PORT")
        .env_remove("DUPLEX_TEST_MARIADB_PORT")
        .output()
        .unwrap()
}

#[test]
fn concurrent_threads_get_one_server_of_each_kind() {
    let dir = private_dir("threads");
    let starts: Vec<_> = (0..3)
        .map(|_| {
            let dir = dir.clone();
            thread::spawn(move || {
                let pg = SharedPg::start_in(&dir).unwrap();
                let maria = SharedMariaDb::start_in(&dir).unwrap();
                (pg.port(), pg.pid(), maria.port(), maria.pid())
            })
        })
        .collect();
    let seen: Vec<_> = starts.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(seen.iter().all(|s| *s == seen[0]), "{seen:?}");
    let (_, pg_pid, _, maria_pid) = seen[0];
    let (pg_pid, maria_pid) = (pg_pid.unwrap(), maria_pid.unwrap());

    // Found again without starting anything, and usable.
    let pg = SharedPg::find_in(&dir).unwrap().unwrap();
    assert_eq!(pg.pid(), Some(pg_pid));
    let db = pg.create_database();
    assert_eq!(
        db.execute_as_duplex("SELECT current_user").unwrap(),
        "duplex"
    );
    drop(db);
    let maria = SharedMariaDb::find_in(&dir).unwrap().unwrap();
    let db = maria.create_database();
    assert_eq!(db.execute_as_duplex("SELECT 1").unwrap(), "1");
    drop(db);

    // A server that died is replaced by a fresh one.
    Command::new("kill")
        .args(["-9", &maria_pid.to_string()])
        .status()
        .unwrap();
    while alive(maria_pid) {
        thread::yield_now();
    }
    assert!(SharedMariaDb::find_in(&dir).unwrap().is_none());
    let replaced = SharedMariaDb::start_in(&dir).unwrap();
    assert_ne!(replaced.pid(), Some(maria_pid));
    assert_eq!(replaced.sql("", "SELECT @@log_bin").unwrap(), "1");
    let new_maria_pid = replaced.pid().unwrap();

    stop_shared_servers(&dir).unwrap();
    assert!(!alive(pg_pid) && !alive(new_maria_pid));
    assert!(!dir.exists());
}

#[test]
fn concurrent_processes_get_one_server_of_each_kind() {
    let dir = private_dir("processes");
    let starts: Vec<_> = (0..2)
        .map(|_| {
            let dir = dir.clone();
            thread::spawn(move || testservers(&dir, "start"))
        })
        .collect();
    let outputs: Vec<Output> = starts.into_iter().map(|t| t.join().unwrap()).collect();
    for output in &outputs {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let exports = String::from_utf8(outputs[0].stdout.clone()).unwrap();
    assert_eq!(exports, String::from_utf8_lossy(&outputs[1].stdout));
    for var in [
        "DUPLEX_TESTSERVERS_DIR",
        "DUPLEX_TEST_PG_PORT",
        "DUPLEX_TEST_PG_SOCKET_DIR",
        "DUPLEX_TEST_MARIADB_PORT",
        "DUPLEX_TEST_MARIADB_SOCKET",
    ] {
        assert!(exports.contains(&format!("export {var}=")), "{exports}");
    }

    let status = testservers(&dir, "status");
    assert_eq!(status.status.code(), Some(0));
    let pg_pid = SharedPg::find_in(&dir).unwrap().unwrap().pid().unwrap();
    let maria_pid = SharedMariaDb::find_in(&dir)
        .unwrap()
        .unwrap()
        .pid()
        .unwrap();

    let stop = testservers(&dir, "stop");
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    assert!(!alive(pg_pid) && !alive(maria_pid));
    assert!(!dir.exists());
    assert_eq!(testservers(&dir, "status").status.code(), Some(3));
}

#[test]
fn shared_handles_are_one_per_process() {
    let ports: Vec<_> = (0..2)
        .map(|_| thread::spawn(|| (shared_pg().port(), shared_mariadb().port())))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(ports[0], ports[1]);
    assert!(std::ptr::eq(shared_pg(), shared_pg()));

    let pg = shared_pg().create_database();
    assert_eq!(pg.psql("SHOW wal_level").unwrap(), "logical");
    let maria = shared_mariadb().create_database();
    assert_eq!(maria.sql("SELECT @@binlog_format").unwrap(), "ROW");
}
