//! `duplex-testservers start|stop|status`: the shared test servers, from a
//! shell.
//!
//! `start` starts (or finds running) one PostgreSQL and one MariaDB server in
//! the shared-server directory and prints `export VAR=value` lines for
//! `eval`, so every test process uses exactly those servers. `stop` stops
//! them and removes the directory. `status` says what runs; it exits 0 when
//! both servers run and 3 otherwise.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use duplex_testkit::{SharedMariaDb, SharedPg, TestkitError, stop_shared_servers, testservers_dir};

const USAGE: &str = "usage: duplex-testservers start|stop|status

  start   start the shared test servers if they are not running; print
          `export DUPLEX_TEST_...=...` lines (use: eval \"$(duplex-testservers start)\")
  stop    stop them and remove their directory
  status  say whether they run (exit 0 if both run, 3 otherwise)

The directory is $DUPLEX_TESTSERVERS_DIR, else $CARGO_TARGET_DIR/testservers,
else <workspace>/target/testservers.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = testservers_dir();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["start"] => start(&dir),
        ["stop"] => stop_shared_servers(&dir).map(|()| {
            eprintln!("duplex-testservers: stopped; removed {}", dir.display());
            ExitCode::SUCCESS
        }),
        ["status"] => status(&dir),
        ["help" | "-h" | "--help"] => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("{USAGE}");
            Ok(ExitCode::from(2))
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("duplex-testservers: {e}");
        ExitCode::FAILURE
    })
}

fn start(dir: &Path) -> Result<ExitCode, TestkitError> {
    let began = Instant::now();
    let pg = SharedPg::start_in(dir)?;
    let pg_ready = began.elapsed();
    let mariadb = SharedMariaDb::start_in(dir)?;
    eprintln!(
        "duplex-testservers: PostgreSQL on port {} (ready after {:.2?}), MariaDB on port {} \
         (ready after {:.2?}); directory {}",
        pg.port(),
        pg_ready,
        mariadb.port(),
        began.elapsed() - pg_ready,
        dir.display()
    );
    println!("export DUPLEX_TESTSERVERS_DIR={}", shell_quote(dir));
    println!("export DUPLEX_TEST_PG_PORT={}", pg.port());
    if let Some(socket_dir) = pg.socket_dir() {
        println!(
            "export DUPLEX_TEST_PG_SOCKET_DIR={}",
            shell_quote(socket_dir)
        );
    }
    println!("export DUPLEX_TEST_MARIADB_PORT={}", mariadb.port());
    if let Some(socket) = mariadb.socket() {
        println!("export DUPLEX_TEST_MARIADB_SOCKET={}", shell_quote(socket));
    }
    Ok(ExitCode::SUCCESS)
}

fn status(dir: &Path) -> Result<ExitCode, TestkitError> {
    let pg = SharedPg::find_in(dir)?;
    let mariadb = SharedMariaDb::find_in(dir)?;
    println!("directory: {}", dir.display());
    match &pg {
        Some(pg) => println!(
            "postgresql: running, port {}, pid {}",
            pg.port(),
            pg.pid().map_or("?".to_owned(), |p| p.to_string())
        ),
        None => println!("postgresql: not running"),
    }
    match &mariadb {
        Some(mariadb) => println!(
            "mariadb: running, port {}, pid {}",
            mariadb.port(),
            mariadb.pid().map_or("?".to_owned(), |p| p.to_string())
        ),
        None => println!("mariadb: not running"),
    }
    Ok(if pg.is_some() && mariadb.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// `path` in single quotes for a POSIX shell.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}
