//! Throwaway PostgreSQL, MariaDB and NATS JetStream servers for duplex's tests, benches, demo
//! and CI: the one place that knows how to start them.
//!
//! The machines' own servers (5432, 3306) run with settings duplex cannot use
//! (no logical WAL, no row binlog) and belong to the machine, so tests never
//! touch them: they run servers of their own, on free ports of 127.0.0.1, in
//! directories of their own.
//!
//! # Two kinds of server
//!
//! - **Per-test servers**: [`PgServer::start`] / [`MariaServer::start`] create
//!   a private directory under the system temp directory, initialise a
//!   cluster there, start the server and wait (polling, with a deadline) until
//!   it accepts connections. Dropping the handle stops the server and deletes
//!   the directory. Use these when a test needs non-default settings
//!   ([`PgOptions`], [`MariaOptions`]) or restarts the server
//!   ([`PgServer::restart`], [`PgServer::shut_down`] + [`PgServer::start_again`]).
//!   Startup (initdb or mariadb-install-db included) takes about 0.5 s for
//!   PostgreSQL and 0.6 s for MariaDB on an idle 2-core machine, several
//!   times that under load, so most tests should not do this.
//! - **Shared servers**: [`shared_pg`] / [`shared_mariadb`] return a handle to
//!   one server of each kind shared by the whole test run, with default
//!   settings, found through environment variables or started once under a
//!   file lock (see [`shared`] for the protocol). They outlive the test
//!   processes and are stopped by `duplex-testservers stop`.
//!
//! Either way a test gets its own fresh database, named `t_<16 hex digits>`,
//! from `create_database()`; the [`PgDatabase`] / [`MariaDatabase`] handle
//! drops the database when it goes out of scope, so tests run in parallel
//! and leave nothing behind.
//!
//! ```no_run
//! let db = duplex_testkit::shared_pg().create_database();
//! db.psql("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
//! let url = db.url(); // postgres://duplex:duplex@127.0.0.1:PORT/t_...
//! # drop(url);
//! ```
//!
//! # Accounts
//!
//! Both kinds of server have a `duplex` account with password `duplex`,
//! privileged the way a DBA would set duplex up: on PostgreSQL LOGIN
//! REPLICATION CREATEDB (not superuser), owner of every test database; on
//! MariaDB ALL PRIVILEGES ON *.*. Admin SQL (`psql`, `sql`) runs as the
//! superuser (`postgres` / `root`) through the server's unix socket.
//!
//! # Environment
//!
//! - `DUPLEX_TEST_PG_PORT`, `DUPLEX_TEST_PG_SOCKET_DIR`,
//!   `DUPLEX_TEST_MARIADB_PORT`, `DUPLEX_TEST_MARIADB_SOCKET`: use these
//!   already running servers as the shared ones (printed by
//!   `duplex-testservers start`).
//! - `DUPLEX_TESTSERVERS_DIR`: where shared servers live (default
//!   `$CARGO_TARGET_DIR/testservers`, else `<workspace>/target/testservers`).
//! - `DUPLEX_PG_BINDIR`, `DUPLEX_MARIADB_BINDIR`: where the server programs
//!   are, when not in `$PATH` or the usual distribution directories.
//!
//! # Cleanup
//!
//! Drop stops and deletes. A test process killed before its destructors run
//! (a timeout, Ctrl-C) leaves its per-test servers behind; the next process
//! that starts a server stops them and deletes their directories (see the
//! sweep in `scratch.rs`).
//!
//! When the test process runs as root, the servers run as the `postgres` and
//! `mysql` users, which own their directories.

mod error;
mod mariadb;
mod nats;
mod postgres;
mod process;
mod scratch;
pub mod shared;
mod tls;

pub use error::TestkitError;
pub use mariadb::{MariaDatabase, MariaOptions, MariaServer, SharedMariaDb};
pub use nats::NatsServer;
pub use postgres::{PgDatabase, PgOptions, PgServer, SharedPg};
pub use shared::{
    shared_mariadb, shared_pg, stop_shared_servers, testservers_dir, try_shared_mariadb,
    try_shared_pg,
};
pub use tls::{ClientFiles, TlsCerts};

/// The account duplex uses on every test server.
pub const DUPLEX_USER: &str = "duplex";
/// The password of [`DUPLEX_USER`].
pub const DUPLEX_PASSWORD: &str = "duplex";

/// How [`PgServer::shut_down`] / [`MariaServer::shut_down`] stop a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Clean: PostgreSQL fast shutdown (SIGINT), MariaDB SIGTERM.
    Fast,
    /// Like a crash: PostgreSQL immediate shutdown (SIGQUIT), MariaDB
    /// SIGKILL. The next start runs crash recovery. PostgreSQL test servers
    /// run with `synchronous_commit=off`, so the last commits (up to about
    /// `wal_writer_delay`, 200 ms) may be lost: set it to `on` in
    /// [`PgOptions`] when a test counts rows across a crash. MariaDB's
    /// `innodb_flush_log_at_trx_commit=2` and `sync_binlog=0` keep every
    /// commit across a process crash.
    Immediate,
}
