//! Per-test PostgreSQL servers: settings, accounts, databases, restarts,
//! cleanup and error reports.

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use duplex_testkit::{PgOptions, PgServer, Shutdown};

/// Runs `sql` through psql over TCP as `user` with `password`.
fn psql_tcp(port: u16, user: &str, password: &str, db: &str, sql: &str) -> Result<String, String> {
    let output = Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
        .args(["-p", &port.to_string(), "-U", user, "-d", db, "-c", sql])
        .env("PGPASSWORD", password)
        .env_remove("PGPASSFILE")
        .stdin(Stdio::null())
        .output()
        .expect("run psql");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat[stat.rfind(')').unwrap() + 2..].chars().next();
            !matches!(state, Some('Z' | 'X'))
        })
        .unwrap_or(false)
}

#[test]
fn default_server_has_logical_wal_and_a_duplex_login() {
    let began = Instant::now();
    let pg = PgServer::start(PgOptions::default()).unwrap();
    eprintln!("PostgreSQL server ready after {:?}", began.elapsed());

    let settings = pg
        .psql(
            "postgres",
            "SELECT current_setting('wal_level'), current_setting('max_replication_slots'), \
             current_setting('max_wal_senders'), current_setting('fsync'), \
             current_setting('listen_addresses'), current_setting('server_encoding')",
        )
        .unwrap();
    assert_eq!(settings, "logical|20|20|off|127.0.0.1|UTF8");

    // duplex logs in over TCP with its password, and is what a DBA would grant.
    let role = psql_tcp(
        pg.port(),
        "duplex",
        "duplex",
        "postgres",
        "SELECT rolsuper, rolreplication, rolcreatedb FROM pg_roles WHERE rolname = current_user",
    )
    .unwrap();
    assert_eq!(role, "f|t|t");
    // TCP really checks passwords.
    let wrong = psql_tcp(pg.port(), "duplex", "wrong", "postgres", "SELECT 1").unwrap_err();
    assert!(wrong.contains("password authentication failed"), "{wrong}");
    // So does the superuser's URL.
    assert_eq!(
        psql_tcp(
            pg.port(),
            "postgres",
            "postgres",
            "postgres",
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        )
        .unwrap(),
        "t"
    );
    assert_eq!(
        pg.url("x"),
        format!("postgres://duplex:duplex@127.0.0.1:{}/x", pg.port())
    );
    assert_eq!(
        pg.admin_url("x"),
        format!("postgres://postgres:postgres@127.0.0.1:{}/x", pg.port())
    );
}

#[test]
fn wal_level_and_settings_are_configurable() {
    let pg = PgServer::start(
        PgOptions::default()
            .wal_level("replica")
            .setting("work_mem", "7MB")
            .setting("cluster_name", "it's quoted"),
    )
    .unwrap();
    assert_eq!(pg.psql("postgres", "SHOW wal_level").unwrap(), "replica");
    assert_eq!(pg.psql("postgres", "SHOW work_mem").unwrap(), "7MB");
    assert_eq!(
        pg.psql("postgres", "SHOW cluster_name").unwrap(),
        "it's quoted"
    );
}

#[test]
fn databases_are_fresh_owned_by_duplex_and_dropped() {
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let a = pg.create_database();
    let b = pg.create_database();
    assert_ne!(a.name(), b.name());
    assert!(a.name().starts_with("t_"), "{}", a.name());
    assert_eq!(
        a.url(),
        format!(
            "postgres://duplex:duplex@127.0.0.1:{}/{}",
            pg.port(),
            a.name()
        )
    );
    let owner = pg
        .psql(
            "postgres",
            &format!(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{}'",
                a.name()
            ),
        )
        .unwrap();
    assert_eq!(owner, "duplex");

    // duplex works in its database without any further grant.
    a.execute_as_duplex(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'é😀');",
    )
    .unwrap();
    assert_eq!(a.psql("SELECT v FROM t").unwrap(), "é😀");
    // What the superuser creates, duplex may use (but does not own).
    a.psql("CREATE SCHEMA shop; CREATE TABLE shop.orders (id serial PRIMARY KEY, total numeric);")
        .unwrap();
    a.execute_as_duplex(
        "INSERT INTO shop.orders (total) VALUES (1.5); UPDATE shop.orders SET total = 2; \
         DELETE FROM shop.orders; SELECT count(*) FROM shop.orders;",
    )
    .unwrap();
    assert_eq!(
        a.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'orders'")
            .unwrap(),
        "postgres"
    );
    // What duplex creates, it owns, so it can publish it.
    a.execute_as_duplex("CREATE PUBLICATION p FOR TABLE t")
        .unwrap();

    // Multi-statement scripts, and errors stop them with the message.
    let err = a
        .psql("SELECT 1; SELECT * FROM nope;")
        .unwrap_err()
        .to_string();
    assert!(err.contains("relation \"nope\" does not exist"), "{err}");

    let exists = |name: &str| {
        pg.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
        )
        .unwrap()
            == "1"
    };
    let (a_name, b_name) = (a.name().to_owned(), b.name().to_owned());
    assert!(exists(&a_name) && exists(&b_name));
    drop(a);
    assert!(!exists(&a_name));
    b.drop_database().unwrap();
    assert!(!exists(&b_name));
}

#[test]
fn dropping_a_database_ends_a_streaming_replication_slot() {
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let db = pg.create_database();
    db.psql("SELECT pg_create_logical_replication_slot('idle', 'test_decoding')")
        .unwrap();
    db.psql("SELECT pg_create_logical_replication_slot('busy', 'test_decoding')")
        .unwrap();
    // A walsender streaming from 'busy' keeps that slot active.
    let mut receiver = Command::new(Path::new(&pg_bindir()).join("pg_recvlogical"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "duplex",
        ])
        .args([
            "-d",
            db.name(),
            "--slot",
            "busy",
            "--start",
            "-f",
            "/dev/null",
        ])
        .env("PGPASSWORD", "duplex")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while pg
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'busy' AND active",
        )
        .unwrap()
        != "1"
    {
        assert!(Instant::now() < deadline, "slot never became active");
        thread::sleep(Duration::from_millis(50));
    }
    db.drop_database().unwrap();
    assert_eq!(
        pg.psql("postgres", "SELECT count(*) FROM pg_replication_slots")
            .unwrap(),
        "0"
    );
    let _ = receiver.kill();
    let _ = receiver.wait();
}

/// The bindir the test kit uses, found the same way for pg_recvlogical.
fn pg_bindir() -> String {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort();
    format!("/usr/lib/postgresql/{}/bin", versions.last().unwrap())
}

#[test]
fn restart_keeps_port_and_data() {
    // With the default synchronous_commit=off an immediate shutdown may lose
    // the last commits; a test that crashes the server and counts rows turns
    // it on.
    let pg = PgServer::start(PgOptions::default().setting("synchronous_commit", "on")).unwrap();
    let db = pg.create_database();
    db.psql("CREATE TABLE t (id int); INSERT INTO t VALUES (42);")
        .unwrap();
    let (port, pid) = (pg.port(), pg.pid().unwrap());

    let began = Instant::now();
    pg.restart().unwrap();
    eprintln!("PostgreSQL restart took {:?}", began.elapsed());
    assert_eq!(pg.port(), port);
    assert_ne!(pg.pid().unwrap(), pid);
    assert!(!alive(pid));
    assert_eq!(db.psql("SELECT id FROM t").unwrap(), "42");

    // A crash-like stop; the next start recovers committed data.
    db.psql("INSERT INTO t VALUES (43)").unwrap();
    pg.shut_down(Shutdown::Immediate).unwrap();
    assert!(!pg.is_running());
    assert!(pg.pid().is_none());
    assert!(db.psql("SELECT 1").is_err());
    pg.start_again().unwrap();
    assert!(pg.is_running());
    assert_eq!(
        db.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t")
            .unwrap(),
        "42,43"
    );
    assert!(pg.start_again().is_err(), "already running");
}

#[test]
fn stop_removes_process_and_directory() {
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let dir = pg.socket_dir().to_path_buf();
    let pid = pg.pid().unwrap();
    assert!(dir.join("data").join("PG_VERSION").exists());
    assert!(pg.log_path().exists());
    pg.stop().unwrap();
    assert!(!alive(pid));
    assert!(!dir.exists());

    let pg = PgServer::start(PgOptions::default()).unwrap();
    let dir = pg.socket_dir().to_path_buf();
    let pid = pg.pid().unwrap();
    drop(pg);
    assert!(!alive(pid));
    assert!(!dir.exists());
}

#[test]
fn startup_failure_reports_the_server_log() {
    let err = PgServer::start(PgOptions::default().setting("shared_buffers", "lots"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("exited during startup"), "{err}");
    // The log tail says why.
    assert!(err.contains("shared_buffers"), "{err}");
    assert!(err.contains("invalid value"), "{err}");
}
