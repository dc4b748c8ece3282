//! Per-test MariaDB servers: binlog settings, accounts, databases, restarts,
//! cleanup and error reports.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use duplex_testkit::{MariaOptions, MariaServer, Shutdown};

/// Runs `sql` through the mariadb client over TCP as `user`.
fn mariadb_tcp(port: u16, user: &str, password: &str, sql: &str) -> Result<String, String> {
    let output = Command::new("mariadb")
        .args(["--no-defaults", "--batch", "--skip-column-names"])
        .args(["--protocol=TCP", "--host=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--user={user}"))
        .arg(format!("--password={password}"))
        .args(["-e", sql])
        .stdin(Stdio::null())
        .output()
        .expect("run mariadb");
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
fn default_server_has_a_row_binlog_and_a_duplex_login() {
    let began = Instant::now();
    let maria = MariaServer::start(MariaOptions::default()).unwrap();
    eprintln!("MariaDB server ready after {:?}", began.elapsed());

    let settings = maria
        .sql(
            "",
            "SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata, \
             @@server_id, @@character_set_server, @@bind_address",
        )
        .unwrap();
    assert_eq!(
        settings,
        format!("1\tROW\tFULL\tFULL\t{}\tutf8mb4\t127.0.0.1", maria.port())
    );

    // duplex logs in over TCP and may read the binlog.
    let grants = mariadb_tcp(maria.port(), "duplex", "duplex", "SHOW GRANTS").unwrap();
    assert!(grants.contains("GRANT ALL PRIVILEGES ON *.*"), "{grants}");
    let logs = mariadb_tcp(maria.port(), "duplex", "duplex", "SHOW BINARY LOGS").unwrap();
    assert!(logs.contains("binlog.000001"), "{logs}");
    let wrong = mariadb_tcp(maria.port(), "duplex", "wrong", "SELECT 1").unwrap_err();
    assert!(wrong.contains("Access denied"), "{wrong}");
    assert_eq!(
        maria.url("x"),
        format!("mysql://duplex:duplex@127.0.0.1:{}/x", maria.port())
    );
    // The setup did not write to the binlog: readers see only what tests do.
    let events = maria
        .sql("", "SHOW BINLOG EVENTS IN 'binlog.000001'")
        .unwrap();
    assert!(!events.contains("duplex"), "{events}");
}

#[test]
fn binlog_can_be_turned_off_and_configured() {
    let off = MariaServer::start(MariaOptions::default().binlog(false)).unwrap();
    assert_eq!(off.sql("", "SELECT @@log_bin").unwrap(), "0");

    let minimal = MariaServer::start(
        MariaOptions::default()
            .binlog_row_metadata("MINIMAL")
            .binlog_row_image("NOBLOB")
            .server_id(77)
            .arg("--gtid-domain-id=3"),
    )
    .unwrap();
    assert_eq!(
        minimal
            .sql(
                "",
                "SELECT @@log_bin, @@binlog_row_metadata, @@binlog_row_image, @@server_id, \
                 @@gtid_domain_id"
            )
            .unwrap(),
        "1\tMINIMAL\tNOBLOB\t77\t3"
    );
}

#[test]
fn databases_are_fresh_and_dropped_even_while_in_use() {
    let maria = MariaServer::start(MariaOptions::default()).unwrap();
    let a = maria.create_database();
    let b = maria.create_database();
    assert_ne!(a.name(), b.name());
    assert_eq!(
        a.url(),
        format!(
            "mysql://duplex:duplex@127.0.0.1:{}/{}",
            maria.port(),
            a.name()
        )
    );
    a.execute_as_duplex(
        "CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'é😀');",
    )
    .unwrap();
    assert_eq!(a.sql("SELECT v FROM t").unwrap(), "é😀");
    let err = a.sql("SELECT * FROM nope").unwrap_err().to_string();
    assert!(err.contains("doesn't exist"), "{err}");

    // An open transaction holds a metadata lock on t; the drop must not wait.
    let mut holder = Command::new("mariadb")
        .args(["--no-defaults", "--user=root"])
        .arg(format!("--socket={}", maria.socket().display()))
        .arg(format!("--database={}", a.name()))
        .args(["-e", "START TRANSACTION; SELECT * FROM t; DO SLEEP(120);"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while maria
        .sql(
            "",
            &format!(
                "SELECT count(*) FROM information_schema.processlist WHERE db = '{}' \
                 AND info LIKE 'DO SLEEP%'",
                a.name()
            ),
        )
        .unwrap()
        != "1"
    {
        assert!(Instant::now() < deadline, "holder never started");
        thread::sleep(Duration::from_millis(50));
    }

    let exists = |name: &str| {
        maria
            .sql(
                "",
                &format!(
                    "SELECT count(*) FROM information_schema.schemata WHERE schema_name = '{name}'"
                ),
            )
            .unwrap()
            == "1"
    };
    let (a_name, b_name) = (a.name().to_owned(), b.name().to_owned());
    assert!(exists(&a_name) && exists(&b_name));
    let began = Instant::now();
    drop(a);
    assert!(began.elapsed() < Duration::from_secs(10));
    assert!(!exists(&a_name));
    b.drop_database().unwrap();
    assert!(!exists(&b_name));
    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn restart_keeps_port_and_data() {
    let maria = MariaServer::start(MariaOptions::default()).unwrap();
    let db = maria.create_database();
    db.sql("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (42);")
        .unwrap();
    let (port, pid) = (maria.port(), maria.pid().unwrap());

    let began = Instant::now();
    maria.restart().unwrap();
    eprintln!("MariaDB restart took {:?}", began.elapsed());
    assert_eq!(maria.port(), port);
    assert_ne!(maria.pid().unwrap(), pid);
    assert!(!alive(pid));
    assert_eq!(db.sql("SELECT id FROM t").unwrap(), "42");
    assert_eq!(
        mariadb_tcp(port, "duplex", "duplex", "SELECT 1").unwrap(),
        "1"
    );

    // A crash; InnoDB recovers the committed row.
    db.sql("INSERT INTO t VALUES (43)").unwrap();
    maria.shut_down(Shutdown::Immediate).unwrap();
    assert!(!maria.is_running());
    maria.start_again().unwrap();
    assert_eq!(
        db.sql("SELECT GROUP_CONCAT(id ORDER BY id) FROM t")
            .unwrap(),
        "42,43"
    );
}

#[test]
fn stop_removes_process_and_directory() {
    let maria = MariaServer::start(MariaOptions::default()).unwrap();
    let dir = maria.dir().to_path_buf();
    let pid = maria.pid().unwrap();
    assert!(dir.join("binlog.index").exists());
    maria.stop().unwrap();
    assert!(!alive(pid));
    assert!(!dir.exists());

    let maria = MariaServer::start(MariaOptions::default().binlog(false)).unwrap();
    let dir = maria.dir().to_path_buf();
    let pid = maria.pid().unwrap();
    drop(maria);
    assert!(!alive(pid));
    assert!(!dir.exists());
}

#[test]
fn startup_failure_reports_the_server_log() {
    let err = MariaServer::start(MariaOptions::default().arg("--no-such-option=1"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("exited during startup"), "{err}");
    assert!(err.contains("unknown variable"), "{err}");
}
