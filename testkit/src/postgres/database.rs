//! A test's own database on a server ([`PgDatabase`]), and the server shared by all tests of a
//! run ([`SharedPg`]).

use std::path::{Path, PathBuf};

use crate::error::TestkitError;
use crate::scratch::{self, ScratchDir};
use crate::{DUPLEX_USER, process, shared};

use super::{
    PgClient, PgEndpoint, PgOptions, PgServer, SERVER_USER, SHARED_LOCK, SHARED_SUBDIR, TEARDOWN,
};

/// A database of its own on a PostgreSQL server, dropped on drop.
#[derive(Debug)]
pub struct PgDatabase {
    pub(super) endpoint: PgEndpoint,
    pub(super) name: String,
    pub(super) dropped: bool,
}

impl PgDatabase {
    /// The database name (`t_<16 hex>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// TCP port of the server.
    pub fn port(&self) -> u16 {
        self.endpoint.port
    }

    /// `postgres://duplex:duplex@127.0.0.1:PORT/<name>`.
    pub fn url(&self) -> String {
        self.endpoint.url(&self.name)
    }

    /// `postgres://postgres:postgres@127.0.0.1:PORT/<name>`.
    pub fn admin_url(&self) -> String {
        self.endpoint.admin_url(&self.name)
    }

    /// Runs an SQL script in this database as superuser (see [`PgServer::psql`]).
    pub fn psql(&self, sql: &str) -> Result<String, TestkitError> {
        self.endpoint.psql(&self.name, sql)
    }

    /// Runs an SQL script in this database as `duplex`, over TCP with its password.
    pub fn execute_as_duplex(&self, sql: &str) -> Result<String, TestkitError> {
        self.endpoint.psql_as(DUPLEX_USER, &self.name, sql)
    }

    /// Drops the database now, reporting failure (drop does the same silently).
    pub fn drop_database(mut self) -> Result<(), TestkitError> {
        self.dropped = true;
        self.endpoint.drop_database(&self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // A server that was stopped first took the database with it.
        if self
            .endpoint
            .socket_dir
            .as_ref()
            .is_some_and(|d| !d.exists())
        {
            return;
        }
        if let Err(e) = self.endpoint.drop_database(&self.name) {
            eprintln!("duplex-testkit: could not drop database {}: {e}", self.name);
        }
    }
}

/// The PostgreSQL server shared by a test run (see [`crate::shared_pg`]).
#[derive(Debug)]
pub struct SharedPg {
    pub(super) endpoint: PgEndpoint,
    pub(super) pid: Option<u32>,
}

impl SharedPg {
    /// The server named by `DUPLEX_TEST_PG_PORT` (and optionally
    /// `DUPLEX_TEST_PG_SOCKET_DIR`), if that variable is set.
    pub fn from_env() -> Result<Option<SharedPg>, TestkitError> {
        let Some(port) = std::env::var("DUPLEX_TEST_PG_PORT")
            .ok()
            .filter(|p| !p.is_empty())
        else {
            return Ok(None);
        };
        let port = port.parse().map_err(|_| {
            TestkitError::Config(format!("DUPLEX_TEST_PG_PORT={port} is not a port number"))
        })?;
        let socket_dir = std::env::var_os("DUPLEX_TEST_PG_SOCKET_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        let pid = socket_dir
            .as_deref()
            .and_then(scratch::read_state)
            .map(|state| state.pid);
        let endpoint = PgEndpoint {
            port,
            socket_dir,
            client: PgClient::locate()?,
        };
        if !endpoint.is_ready() {
            return Err(TestkitError::Config(format!(
                "DUPLEX_TEST_PG_PORT={port} is set, but no PostgreSQL server answers there \
                 (start one with `duplex-testservers start`, or unset the variable)"
            )));
        }
        Ok(Some(SharedPg { endpoint, pid }))
    }

    /// The shared server recorded in `dir`, if it is running and answering.
    pub fn find_in(dir: &Path) -> Result<Option<SharedPg>, TestkitError> {
        let root = dir.join(SHARED_SUBDIR);
        let Some(state) = scratch::read_state(&root) else {
            return Ok(None);
        };
        if !process::runs_with(state.pid, &root) || !process::accepts_tcp(state.port) {
            return Ok(None);
        }
        let endpoint = PgEndpoint {
            port: state.port,
            socket_dir: Some(state.socket),
            client: PgClient::locate()?,
        };
        Ok(endpoint.is_ready().then_some(SharedPg {
            endpoint,
            pid: Some(state.pid),
        }))
    }

    /// The shared server in `dir`, started there first if it is not running
    /// (under an exclusive lock, so concurrent callers start only one).
    pub fn start_in(dir: &Path) -> Result<SharedPg, TestkitError> {
        let _lock = shared::lock(dir, SHARED_LOCK)?;
        if let Some(shared) = SharedPg::find_in(dir)? {
            return Ok(shared);
        }
        let root = dir.join(SHARED_SUBDIR);
        // A server that runs there but does not answer is stopped first.
        scratch::stop_recorded_server(&root, TEARDOWN);
        let run_as = process::run_as(SERVER_USER)?;
        let scratch = ScratchDir::create_at(&root, run_as)?;
        let server = PgServer::start_in(scratch, run_as, PgOptions::default())?;
        let (endpoint, pid) = server.detach();
        Ok(SharedPg { endpoint, pid })
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.endpoint.port
    }

    /// `postgres://duplex:duplex@127.0.0.1:PORT/<db>`.
    pub fn url(&self, db: &str) -> String {
        self.endpoint.url(db)
    }

    /// `postgres://postgres:postgres@127.0.0.1:PORT/<db>`.
    pub fn admin_url(&self, db: &str) -> String {
        self.endpoint.admin_url(db)
    }

    /// Runs an SQL script as superuser (see [`PgServer::psql`]).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, TestkitError> {
        self.endpoint.psql(db, sql)
    }

    /// Creates a fresh database owned by `duplex`, dropped on drop.
    ///
    /// # Panics
    /// If the database cannot be created; the message says why.
    pub fn create_database(&self) -> PgDatabase {
        self.try_create_database()
            .unwrap_or_else(|e| panic!("cannot create a PostgreSQL test database: {e}"))
    }

    /// Like `create_database`, returning the error instead of panicking.
    pub fn try_create_database(&self) -> Result<PgDatabase, TestkitError> {
        self.endpoint.create_database()
    }

    /// The postmaster's pid, when known.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The unix socket directory, when known.
    pub fn socket_dir(&self) -> Option<&Path> {
        self.endpoint.socket_dir.as_deref()
    }
}
