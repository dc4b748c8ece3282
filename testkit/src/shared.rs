//! Shared servers: one PostgreSQL and one MariaDB server for a whole test run.
//!
//! Starting a server per test is too slow, and under cargo-nextest every test
//! is its own process, so the shared servers cannot live in one process's
//! memory. They live in a fixed directory instead (see [`testservers_dir`]):
//!
//! 1. If `DUPLEX_TEST_PG_PORT` / `DUPLEX_TEST_MARIADB_PORT` are set, those
//!    servers are used and nothing is started (what `scripts/test` and CI do,
//!    after `duplex-testservers start`).
//! 2. Otherwise the first caller in a process takes an exclusive file lock
//!    (`<dir>/pg.lock`, `<dir>/mariadb.lock`), looks at the state recorded in
//!    `<dir>/pg` / `<dir>/mariadb`, and reuses the server if its pid is alive,
//!    still runs in that directory, accepts TCP on its port and answers on its
//!    socket. Otherwise it starts a new one there, records it, and releases
//!    the lock. Concurrent processes queue on the lock, so exactly one server
//!    of each kind is started, and later processes find it and reuse it.
//! 3. The servers outlive the test processes, for the next run to reuse;
//!    `duplex-testservers stop` stops them and removes the directory.
//!
//! Within a process the handle is computed once and then handed out as a
//! `&'static` reference.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::error::TestkitError;
use crate::mariadb::{self, SharedMariaDb};
use crate::postgres::{self, SharedPg};
use crate::scratch;

/// Directory of the shared servers: `$DUPLEX_TESTSERVERS_DIR`, else
/// `$CARGO_TARGET_DIR/testservers`, else `<workspace>/target/testservers`.
pub fn testservers_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let from_env = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty());
    if let Some(dir) = from_env("DUPLEX_TESTSERVERS_DIR") {
        return workspace.join(dir);
    }
    match from_env("CARGO_TARGET_DIR") {
        // `join` keeps an absolute path as it is and anchors a relative one
        // at the workspace, whatever directory the test runs in.
        Some(target) => workspace.join(target).join("testservers"),
        None => workspace.join("target").join("testservers"),
    }
}

/// Takes the exclusive lock `<dir>/<name>`, waiting for whoever holds it; the
/// lock is released when the returned file is dropped.
pub(crate) fn lock(dir: &Path, name: &str) -> Result<File, TestkitError> {
    fs::create_dir_all(dir)
        .map_err(|e| TestkitError::io(format!("create directory {}", dir.display()), e))?;
    let path = dir.join(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| TestkitError::io(format!("open lock file {}", path.display()), e))?;
    file.lock()
        .map_err(|e| TestkitError::io(format!("lock {}", path.display()), e))?;
    Ok(file)
}

static SHARED_PG: Mutex<Option<&'static SharedPg>> = Mutex::new(None);
static SHARED_MARIADB: Mutex<Option<&'static SharedMariaDb>> = Mutex::new(None);

/// The shared PostgreSQL server for this test run, started if needed.
///
/// # Panics
/// If it can neither be found nor started; the message says why.
pub fn shared_pg() -> &'static SharedPg {
    try_shared_pg().unwrap_or_else(|e| panic!("no shared PostgreSQL test server: {e}"))
}

/// The shared PostgreSQL server for this test run, or why there is none.
pub fn try_shared_pg() -> Result<&'static SharedPg, TestkitError> {
    let mut slot = SHARED_PG.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(shared) = *slot {
        return Ok(shared);
    }
    let shared = match SharedPg::from_env()? {
        Some(shared) => shared,
        None => SharedPg::start_in(&testservers_dir())?,
    };
    let shared: &'static SharedPg = Box::leak(Box::new(shared));
    *slot = Some(shared);
    Ok(shared)
}

/// The shared MariaDB server for this test run, started if needed.
///
/// # Panics
/// If it can neither be found nor started; the message says why.
pub fn shared_mariadb() -> &'static SharedMariaDb {
    try_shared_mariadb().unwrap_or_else(|e| panic!("no shared MariaDB test server: {e}"))
}

/// The shared MariaDB server for this test run, or why there is none.
pub fn try_shared_mariadb() -> Result<&'static SharedMariaDb, TestkitError> {
    let mut slot = SHARED_MARIADB
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(shared) = *slot {
        return Ok(shared);
    }
    let shared = match SharedMariaDb::from_env()? {
        Some(shared) => shared,
        None => SharedMariaDb::start_in(&testservers_dir())?,
    };
    let shared: &'static SharedMariaDb = Box::leak(Box::new(shared));
    *slot = Some(shared);
    Ok(shared)
}

/// Stops the shared servers recorded in `dir` and removes `dir`.
///
/// A server is signalled only if its recorded pid still runs in its
/// directory, so a stale state file never makes us signal a stranger.
pub fn stop_shared_servers(dir: &Path) -> Result<(), TestkitError> {
    if !dir.exists() {
        return Ok(());
    }
    let _pg_lock = lock(dir, postgres::SHARED_LOCK)?;
    let _mariadb_lock = lock(dir, mariadb::SHARED_LOCK)?;
    let kinds = [
        (dir.join(postgres::SHARED_SUBDIR), postgres::TEARDOWN),
        (dir.join(mariadb::SHARED_SUBDIR), mariadb::TEARDOWN),
    ];
    for (server_dir, escalation) in kinds {
        if !scratch::stop_recorded_server(&server_dir, escalation) {
            return Err(TestkitError::Config(format!(
                "the shared server in {} did not stop",
                server_dir.display()
            )));
        }
    }
    fs::remove_dir_all(dir).map_err(|e| TestkitError::io(format!("remove {}", dir.display()), e))
}
