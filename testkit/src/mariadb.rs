//! Throwaway MariaDB servers.
//!
//! A [`MariaServer`] is `mariadb-install-db` into a fresh private directory,
//! then `mariadbd --no-defaults` (so nothing in /etc/mysql applies) on a free
//! port of 127.0.0.1, with its socket, pid file, error log and binlog in that
//! directory. By default the binlog is on with the settings duplex requires
//! (ROW format, FULL row image, FULL row metadata). Readiness is polled with
//! `SELECT 1` as root through the server's own unix socket, until a deadline; if mariadbd exits because another process took
//! the port in between, it is started again on a new port.
//!
//! Layout of a server directory:
//!
//! ```text
//! <dir>/data/            datadir
//! <dir>/tmp/             tmpdir
//! <dir>/binlog.000001    binlog files and binlog.index
//! <dir>/error.log        --log-error (and mariadbd's stdout/stderr)
//! <dir>/mariadbd.sock    the unix socket
//! <dir>/mariadbd.pid     the pid file
//! <dir>/testkit-state    port, pid, socket
//! ```
//!
//! Accounts: `root` has an empty password (localhost through the socket, and
//! 127.0.0.1); `duplex` (password `duplex`) exists for `127.0.0.1` and
//! `localhost` with ALL PRIVILEGES ON *.*, which include REPLICATION SLAVE and
//! BINLOG MONITOR. Names are not resolved (`--skip-name-resolve`).
//!
//! When the test process is root, mariadbd runs with `--user=mysql` and the
//! directory belongs to `mysql`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::TestkitError;
use crate::process::{self, RunAs, ServerProcess, Signal};
use crate::scratch::{self, ScratchDir, ServerState};
use crate::shared;
use crate::{DUPLEX_PASSWORD, DUPLEX_USER, Shutdown};

/// Unix user mariadbd runs as when we are root.
const SERVER_USER: &str = "mysql";
/// Subdirectory of the shared-server directory.
pub(crate) const SHARED_SUBDIR: &str = "mariadb";
/// Lock file of the shared MariaDB server.
pub(crate) const SHARED_LOCK: &str = "mariadb.lock";
/// A clean shutdown: SIGTERM, then SIGKILL if it hangs.
const CLEAN: &[(Signal, Duration)] = &[
    (Signal::Term, Duration::from_secs(60)),
    (Signal::Kill, Duration::from_secs(10)),
];
/// A crash: SIGKILL; InnoDB recovers at the next start.
const CRASH: &[(Signal, Duration)] = &[(Signal::Kill, Duration::from_secs(10))];
/// How a server whose data is about to be deleted is stopped.
pub(crate) const TEARDOWN: &[(Signal, Duration)] = CRASH;
/// How many ports are tried when another process takes the chosen one.
const PORT_ATTEMPTS: usize = 5;
/// Longest unix socket path the kernel accepts.
const MAX_SOCKET_PATH: usize = 107;
/// Directories where distributions put mariadbd and friends.
const SEARCH_DIRS: &[&str] = &[
    "/usr/sbin",
    "/usr/local/sbin",
    "/usr/bin",
    "/usr/local/mysql/bin",
    "/usr/local/mariadb/bin",
];
const INSTALL_HINT: &str = "install the MariaDB server and client (scripts/install-deps), \
                            or point DUPLEX_MARIADB_BINDIR at the directory holding mariadbd";

/// How a [`MariaServer`] is configured.
#[derive(Clone, Debug)]
pub struct MariaOptions {
    /// Whether the binlog is on (`--log-bin=<dir>/binlog`); default true.
    pub binlog: bool,
    /// `--binlog-format`; default "ROW".
    pub binlog_format: String,
    /// `--binlog-row-image`; default "FULL".
    pub binlog_row_image: String,
    /// `--binlog-row-metadata`; default "FULL".
    pub binlog_row_metadata: String,
    /// `--server-id`; default: the server's port, distinct among running servers.
    pub server_id: Option<u32>,
    /// Further mariadbd arguments, after ours (a later option wins).
    pub extra_args: Vec<String>,
    /// How long startup may take before it is an error.
    pub start_timeout: Duration,
    /// TLS on with these certificates (the server certificate, its key, the CA).
    pub tls: Option<crate::TlsCerts>,
}

impl Default for MariaOptions {
    fn default() -> Self {
        MariaOptions {
            binlog: true,
            binlog_format: "ROW".to_owned(),
            binlog_row_image: "FULL".to_owned(),
            binlog_row_metadata: "FULL".to_owned(),
            server_id: None,
            extra_args: Vec::new(),
            start_timeout: Duration::from_secs(60),
            tls: None,
        }
    }
}

impl MariaOptions {
    /// Turns the binlog on or off.
    pub fn binlog(mut self, on: bool) -> Self {
        self.binlog = on;
        self
    }

    /// Sets `binlog_format` (ROW, STATEMENT, MIXED).
    pub fn binlog_format(mut self, format: &str) -> Self {
        self.binlog_format = format.to_owned();
        self
    }

    /// Sets `binlog_row_image` (FULL, MINIMAL, NOBLOB).
    pub fn binlog_row_image(mut self, image: &str) -> Self {
        self.binlog_row_image = image.to_owned();
        self
    }

    /// Sets `binlog_row_metadata` (NO_LOG, MINIMAL, FULL).
    pub fn binlog_row_metadata(mut self, metadata: &str) -> Self {
        self.binlog_row_metadata = metadata.to_owned();
        self
    }

    /// Sets `server_id`.
    pub fn server_id(mut self, id: u32) -> Self {
        self.server_id = Some(id);
        self
    }

    /// Adds a mariadbd argument, e.g. `--gtid-domain-id=3`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_owned());
        self
    }

    /// Turns TLS on (`--ssl-cert`, `--ssl-key`, `--ssl-ca`) with the certificates of `certs`.
    pub fn tls(mut self, certs: &crate::TlsCerts) -> Self {
        self.tls = Some(certs.clone());
        self
    }

    /// Sets how long startup may take.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }
}

/// The server-side programs.
#[derive(Clone, Debug)]
struct MariaBin {
    mariadbd: PathBuf,
    install_db: PathBuf,
    client: PathBuf,
}

impl MariaBin {
    fn locate() -> Result<Self, TestkitError> {
        Ok(MariaBin {
            mariadbd: find(&["mariadbd", "mysqld"])?,
            install_db: find(&["mariadb-install-db", "mysql_install_db"])?,
            client: locate_client()?,
        })
    }
}

fn find(names: &[&str]) -> Result<PathBuf, TestkitError> {
    process::find_program(names, "DUPLEX_MARIADB_BINDIR", SEARCH_DIRS, INSTALL_HINT)
}

fn locate_client() -> Result<PathBuf, TestkitError> {
    find(&["mariadb", "mysql"])
}

/// Where a running server is and how to talk to it.
#[derive(Clone, Debug)]
struct MariaEndpoint {
    port: u16,
    /// The unix socket; without one, admin SQL goes over TCP as root with an
    /// empty password.
    socket: Option<PathBuf>,
    client: PathBuf,
}

/// Who runs a statement.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Account {
    Root,
    Duplex,
}

impl MariaEndpoint {
    fn url(&self, db: &str) -> String {
        format!(
            "mysql://{DUPLEX_USER}:{DUPLEX_PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    fn admin_url(&self, db: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs `sql` (one or more statements) through the `mariadb` client in
    /// batch mode without column names.
    fn sql_as(&self, account: Account, db: &str, sql: &str) -> Result<String, TestkitError> {
        let mut cmd = process::command(&self.client);
        cmd.args([
            "--no-defaults",
            "--batch",
            "--skip-column-names",
            "--default-character-set=utf8mb4",
        ]);
        match (account, &self.socket) {
            (Account::Root, Some(socket)) => {
                cmd.arg("--user=root").arg("--socket").arg(socket);
            }
            (Account::Root, None) => {
                cmd.args(["--user=root", "--protocol=TCP", "--host=127.0.0.1"])
                    .arg(format!("--port={}", self.port));
            }
            (Account::Duplex, _) => {
                cmd.args(["--protocol=TCP", "--host=127.0.0.1"])
                    .arg(format!("--port={}", self.port))
                    .arg(format!("--user={DUPLEX_USER}"))
                    .arg(format!("--password={DUPLEX_PASSWORD}"));
            }
        }
        if !db.is_empty() {
            cmd.arg(format!("--database={db}"));
        }
        let user = match account {
            Account::Root => "root",
            Account::Duplex => DUPLEX_USER,
        };
        let detail = format!(
            "SQL as {user} on database {db:?} (port {}): {}",
            self.port,
            process::excerpt(sql)
        );
        process::run(&mut cmd, Some(sql), &detail)
    }

    fn sql(&self, db: &str, sql: &str) -> Result<String, TestkitError> {
        self.sql_as(Account::Root, db, sql)
    }

    /// Whether the server answers an authenticated `SELECT 1` as root
    /// (through the socket when we know it, so no other server can answer
    /// for ours). A bare connect would do, but mariadbd logs a warning for
    /// every connection closed before authenticating.
    fn is_ready(&self) -> bool {
        if self.socket.as_ref().is_some_and(|s| !s.exists()) {
            return false;
        }
        self.sql("", "SELECT 1").is_ok()
    }

    fn create_database(&self) -> Result<MariaDatabase, TestkitError> {
        let name = process::random_name("t_");
        self.sql(
            "",
            &format!(
                "CREATE DATABASE {} CHARACTER SET utf8mb4",
                quote_ident(&name)
            ),
        )?;
        Ok(MariaDatabase {
            endpoint: self.clone(),
            name,
            dropped: false,
        })
    }

    /// Drops database `name`, first killing the connections using it so an
    /// open transaction's metadata lock cannot make the drop wait.
    fn drop_database(&self, name: &str) -> Result<(), TestkitError> {
        let sessions = self.sql(
            "",
            &format!(
                "SELECT id FROM information_schema.processlist \
                 WHERE db = {} AND id <> CONNECTION_ID()",
                quote_literal(name)
            ),
        )?;
        for id in sessions.lines().filter(|l| !l.trim().is_empty()) {
            // The session may have ended meanwhile.
            let _ = self.sql("", &format!("KILL {}", id.trim()));
        }
        self.sql(
            "",
            &format!(
                "SET SESSION lock_wait_timeout = 30; DROP DATABASE IF EXISTS {}",
                quote_ident(name)
            ),
        )
        .map(drop)
    }
}

/// `name` as a quoted identifier.
fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `text` as a quoted string literal.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// A MariaDB server of its own, stopped and deleted on drop.
#[derive(Debug)]
pub struct MariaServer {
    dir: ScratchDir,
    bin: MariaBin,
    run_as: Option<RunAs>,
    endpoint: MariaEndpoint,
    options: MariaOptions,
    process: Mutex<Option<ServerProcess>>,
}

impl MariaServer {
    /// Starts a new server in a fresh temporary directory.
    pub fn start(options: MariaOptions) -> Result<MariaServer, TestkitError> {
        let run_as = process::run_as(SERVER_USER)?;
        let dir = ScratchDir::create_temp("mariadb", run_as)?;
        MariaServer::start_in(dir, run_as, options)
    }

    /// Installs and starts a server in `dir`.
    fn start_in(
        dir: ScratchDir,
        run_as: Option<RunAs>,
        options: MariaOptions,
    ) -> Result<MariaServer, TestkitError> {
        let bin = MariaBin::locate()?;
        let root = dir.path().to_path_buf();
        let socket = root.join("mariadbd.sock");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(TestkitError::Config(format!(
                "the unix socket path {} is longer than the {MAX_SOCKET_PATH} bytes the kernel \
                 allows; use a shorter TMPDIR or DUPLEX_TESTSERVERS_DIR",
                socket.display()
            )));
        }
        // A tmpdir of its own: concurrent bootstraps sharing /tmp were seen
        // to delete each other's internal temporary tables.
        let tmp = root.join("tmp");
        fs::create_dir(&tmp)
            .map_err(|e| TestkitError::io(format!("create directory {}", tmp.display()), e))?;
        process::make_private(&tmp, run_as)?;
        let mut install = process::command(&bin.install_db);
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", root.join("data").display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ])
            .args(INNODB_ARGS)
            .current_dir(&root);
        if run_as.is_some() {
            install.arg(format!("--user={SERVER_USER}"));
        }
        process::run(&mut install, None, "mariadb-install-db")?;
        // mariadbd reopens its error log after dropping to `mysql`.
        let log = root.join("error.log");
        fs::write(&log, "")
            .map_err(|e| TestkitError::io(format!("create {}", log.display()), e))?;
        process::make_private(&log, run_as)?;
        if let Some(certs) = &options.tls {
            for (name, contents) in [
                ("server-cert.pem", &certs.server_cert_pem),
                ("server-key.pem", &certs.server_key_pem),
                ("ca.pem", &certs.ca_pem),
            ] {
                let path = root.join(name);
                fs::write(&path, contents)
                    .map_err(|e| TestkitError::io(format!("write {}", path.display()), e))?;
                process::make_private(&path, run_as)?;
            }
        }

        let mut server = MariaServer {
            endpoint: MariaEndpoint {
                port: 0,
                socket: Some(socket),
                client: bin.client.clone(),
            },
            dir,
            bin,
            run_as,
            options,
            process: Mutex::new(None),
        };
        let (process, port) = server.launch(None)?;
        server.endpoint.port = port;
        *server.process_slot() = Some(process);
        server.record_state()?;
        // If this fails, dropping `server` stops it and removes the directory.
        // Kept out of the binlog, so a reader starting at its beginning sees
        // only what tests write.
        server.sql(
            "",
            &format!(
                "SET SESSION sql_log_bin = 0;\n\
                 CREATE USER '{DUPLEX_USER}'@'127.0.0.1' IDENTIFIED BY '{DUPLEX_PASSWORD}';\n\
                 CREATE USER '{DUPLEX_USER}'@'localhost' IDENTIFIED BY '{DUPLEX_PASSWORD}';\n\
                 GRANT ALL PRIVILEGES ON *.* TO '{DUPLEX_USER}'@'127.0.0.1';\n\
                 GRANT ALL PRIVILEGES ON *.* TO '{DUPLEX_USER}'@'localhost';"
            ),
        )?;
        Ok(server)
    }

    /// The mariadbd arguments for `port`.
    fn server_args(&self, port: u16) -> Vec<String> {
        let root = self.dir.path();
        let path = |name: &str| root.join(name).display().to_string();
        let options = &self.options;
        // `--no-defaults` must come first.
        let mut args = vec!["--no-defaults".to_owned()];
        if self.run_as.is_some() {
            args.push(format!("--user={SERVER_USER}"));
        }
        args.extend([
            format!("--datadir={}", path("data")),
            format!("--socket={}", path("mariadbd.sock")),
            format!("--port={port}"),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--pid-file={}", path("mariadbd.pid")),
            format!("--log-error={}", path("error.log")),
            format!("--tmpdir={}", path("tmp")),
            format!(
                "--server-id={}",
                options.server_id.unwrap_or(u32::from(port))
            ),
            "--skip-name-resolve".to_owned(),
            "--character-set-server=utf8mb4".to_owned(),
            "--collation-server=utf8mb4_general_ci".to_owned(),
            "--max-connections=200".to_owned(),
            "--max-allowed-packet=64M".to_owned(),
            "--sync-binlog=0".to_owned(),
            "--innodb-flush-log-at-trx-commit=2".to_owned(),
            "--innodb-doublewrite=0".to_owned(),
            format!("--binlog-format={}", options.binlog_format),
            format!("--binlog-row-image={}", options.binlog_row_image),
            format!("--binlog-row-metadata={}", options.binlog_row_metadata),
        ]);
        if options.tls.is_some() {
            args.extend([
                format!("--ssl-cert={}", path("server-cert.pem")),
                format!("--ssl-key={}", path("server-key.pem")),
                format!("--ssl-ca={}", path("ca.pem")),
            ]);
        }
        args.extend(INNODB_ARGS.iter().map(|a| (*a).to_owned()));
        if options.binlog {
            args.push(format!("--log-bin={}", path("binlog")));
        } else {
            args.push("--skip-log-bin".to_owned());
        }
        args.extend(options.extra_args.iter().cloned());
        args
    }

    /// Starts mariadbd and waits until it answers. With no `port`, picks a
    /// free one, and picks again if mariadbd finds it taken; with one (a
    /// restart), uses it.
    fn launch(&self, port: Option<u16>) -> Result<(ServerProcess, u16), TestkitError> {
        let log = self.log_path();
        let timeout = self.options.start_timeout;
        let deadline = Instant::now() + timeout;
        let attempts = if port.is_some() { 1 } else { PORT_ATTEMPTS };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = match port {
                Some(port) => port,
                None => process::free_port()?,
            };
            let from = process::log_len(&log);
            let mut cmd = process::command(&self.bin.mariadbd);
            cmd.args(self.server_args(port))
                .current_dir(self.dir.path());
            // `--user` drops privileges inside mariadbd; it must start as root.
            let mut process = ServerProcess::spawn(&mut cmd, &log, None)?;
            loop {
                if process.has_exited() {
                    if attempt < attempts && process::log_says_port_in_use(&log, from) {
                        break;
                    }
                    return Err(TestkitError::server(
                        self.describe(),
                        format!("mariadbd exited during startup (port {port})"),
                        &log,
                        from,
                    ));
                }
                if self.endpoint.is_ready() {
                    return Ok((process, port));
                }
                if Instant::now() >= deadline {
                    process.stop(CRASH);
                    return Err(TestkitError::server(
                        self.describe(),
                        format!("not accepting connections on port {port} after {timeout:?}"),
                        &log,
                        from,
                    ));
                }
                thread::sleep(process::POLL_INTERVAL);
            }
        }
    }

    fn describe(&self) -> String {
        format!("MariaDB server in {}", self.dir.path().display())
    }

    fn process_slot(&self) -> MutexGuard<'_, Option<ServerProcess>> {
        self.process.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record_state(&self) -> Result<(), TestkitError> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        scratch::write_state(
            self.dir.path(),
            &ServerState {
                port: self.endpoint.port,
                pid,
                socket: self.socket().to_path_buf(),
            },
        )
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.endpoint.port
    }

    /// `mysql://duplex:duplex@127.0.0.1:PORT/<db>`: how duplex connects.
    pub fn url(&self, db: &str) -> String {
        self.endpoint.url(db)
    }

    /// `mysql://root@127.0.0.1:PORT/<db>`: root, empty password.
    pub fn admin_url(&self, db: &str) -> String {
        self.endpoint.admin_url(db)
    }

    /// Runs SQL as root through the socket with the `mariadb` client in batch
    /// mode without column names (rows tab-separated, one per line); `db` may
    /// be empty.
    pub fn sql(&self, db: &str, sql: &str) -> Result<String, TestkitError> {
        self.endpoint.sql(db, sql)
    }

    /// Creates a fresh utf8mb4 database `t_<16 hex>`, dropped on drop.
    ///
    /// # Panics
    /// If the database cannot be created; the message says why.
    pub fn create_database(&self) -> MariaDatabase {
        self.try_create_database()
            .unwrap_or_else(|e| panic!("cannot create a MariaDB test database: {e}"))
    }

    /// Like `create_database`, returning the error instead of panicking.
    pub fn try_create_database(&self) -> Result<MariaDatabase, TestkitError> {
        self.endpoint.create_database()
    }

    /// mariadbd's pid, or `None` while the server is shut down.
    pub fn pid(&self) -> Option<u32> {
        self.process_slot().as_ref().map(ServerProcess::pid)
    }

    /// Whether mariadbd is running.
    pub fn is_running(&self) -> bool {
        self.process_slot()
            .as_mut()
            .is_some_and(|process| !process.has_exited())
    }

    /// The server's directory (binlog files are `binlog.*` in it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The unix socket.
    pub fn socket(&self) -> &Path {
        self.endpoint
            .socket
            .as_deref()
            .expect("an owned server always has a socket")
    }

    /// The datadir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The error log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("error.log")
    }

    /// Stops mariadbd, keeping data and port for [`MariaServer::start_again`].
    /// `Fast` is a clean shutdown (SIGTERM); `Immediate` is SIGKILL, a crash.
    pub fn shut_down(&self, how: Shutdown) -> Result<(), TestkitError> {
        let Some(mut process) = self.process_slot().take() else {
            return Ok(());
        };
        let from = process::log_len(&self.log_path());
        let escalation = match how {
            Shutdown::Fast => CLEAN,
            Shutdown::Immediate => CRASH,
        };
        if process.stop(escalation) {
            Ok(())
        } else {
            Err(TestkitError::server(
                self.describe(),
                format!("mariadbd {} survived SIGKILL", process.pid()),
                self.log_path(),
                from,
            ))
        }
    }

    /// Starts a shut-down server again on the same port with the same data.
    pub fn start_again(&self) -> Result<(), TestkitError> {
        if self.is_running() {
            return Err(TestkitError::Config(format!(
                "{} is already running",
                self.describe()
            )));
        }
        let (process, _) = self.launch(Some(self.endpoint.port))?;
        *self.process_slot() = Some(process);
        self.record_state()
    }

    /// A clean restart on the same port with the same data.
    pub fn restart(&self) -> Result<(), TestkitError> {
        self.shut_down(Shutdown::Fast)?;
        self.start_again()
    }

    /// Stops the server and deletes its directory, reporting failures (drop
    /// does the same silently).
    pub fn stop(self) -> Result<(), TestkitError> {
        self.teardown()
    }

    fn teardown(&self) -> Result<(), TestkitError> {
        let Some(mut process) = self.process_slot().take() else {
            return Ok(());
        };
        if process.stop(TEARDOWN) {
            Ok(())
        } else {
            Err(TestkitError::server(
                self.describe(),
                format!("mariadbd {} survived SIGKILL", process.pid()),
                self.log_path(),
                0,
            ))
        }
    }

    /// Leaves the server running and its directory in place.
    fn detach(mut self) -> (MariaEndpoint, Option<u32>) {
        self.dir.keep();
        let pid = self.process_slot().take().map(ServerProcess::detach);
        (self.endpoint.clone(), pid)
    }
}

/// InnoDB sizes for small, fast test servers (also given to the bootstrap).
const INNODB_ARGS: &[&str] = &[
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=32M",
];

impl Drop for MariaServer {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("duplex-testkit: {e}");
        }
    }
}

/// A database of its own on a MariaDB server, dropped on drop.
#[derive(Debug)]
pub struct MariaDatabase {
    endpoint: MariaEndpoint,
    name: String,
    dropped: bool,
}

impl MariaDatabase {
    /// The database name (`t_<16 hex>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// TCP port of the server.
    pub fn port(&self) -> u16 {
        self.endpoint.port
    }

    /// `mysql://duplex:duplex@127.0.0.1:PORT/<name>`.
    pub fn url(&self) -> String {
        self.endpoint.url(&self.name)
    }

    /// `mysql://root@127.0.0.1:PORT/<name>`.
    pub fn admin_url(&self) -> String {
        self.endpoint.admin_url(&self.name)
    }

    /// Runs SQL in this database as root (see [`MariaServer::sql`]).
    pub fn sql(&self, sql: &str) -> Result<String, TestkitError> {
        self.endpoint.sql(&self.name, sql)
    }

    /// Runs SQL in this database as `duplex`, over TCP with its password.
    pub fn execute_as_duplex(&self, sql: &str) -> Result<String, TestkitError> {
        self.endpoint.sql_as(Account::Duplex, &self.name, sql)
    }

    /// Drops the database now, reporting failure (drop does the same silently).
    pub fn drop_database(mut self) -> Result<(), TestkitError> {
        self.dropped = true;
        self.endpoint.drop_database(&self.name)
    }
}

impl Drop for MariaDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // A server that was stopped first took the database with it.
        if self.endpoint.socket.as_ref().is_some_and(|s| !s.exists()) {
            return;
        }
        if let Err(e) = self.endpoint.drop_database(&self.name) {
            eprintln!("duplex-testkit: could not drop database {}: {e}", self.name);
        }
    }
}

/// The MariaDB server shared by a test run (see [`crate::shared_mariadb`]).
#[derive(Debug)]
pub struct SharedMariaDb {
    endpoint: MariaEndpoint,
    pid: Option<u32>,
}

impl SharedMariaDb {
    /// The server named by `DUPLEX_TEST_MARIADB_PORT` (and optionally
    /// `DUPLEX_TEST_MARIADB_SOCKET`), if that variable is set.
    pub fn from_env() -> Result<Option<SharedMariaDb>, TestkitError> {
        let Some(port) = std::env::var("DUPLEX_TEST_MARIADB_PORT")
            .ok()
            .filter(|p| !p.is_empty())
        else {
            return Ok(None);
        };
        let port = port.parse().map_err(|_| {
            TestkitError::Config(format!(
                "DUPLEX_TEST_MARIADB_PORT={port} is not a port number"
            ))
        })?;
        let socket = std::env::var_os("DUPLEX_TEST_MARIADB_SOCKET")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let pid = socket
            .as_deref()
            .and_then(Path::parent)
            .and_then(scratch::read_state)
            .map(|state| state.pid);
        let endpoint = MariaEndpoint {
            port,
            socket,
            client: locate_client()?,
        };
        if !endpoint.is_ready() {
            return Err(TestkitError::Config(format!(
                "DUPLEX_TEST_MARIADB_PORT={port} is set, but no MariaDB server answers there \
                 (start one with `duplex-testservers start`, or unset the variable)"
            )));
        }
        Ok(Some(SharedMariaDb { endpoint, pid }))
    }

    /// The shared server recorded in `dir`, if it is running and answering.
    pub fn find_in(dir: &Path) -> Result<Option<SharedMariaDb>, TestkitError> {
        let root = dir.join(SHARED_SUBDIR);
        let Some(state) = scratch::read_state(&root) else {
            return Ok(None);
        };
        if !process::runs_with(state.pid, &root) {
            return Ok(None);
        }
        let endpoint = MariaEndpoint {
            port: state.port,
            socket: Some(state.socket),
            client: locate_client()?,
        };
        // Logging in as duplex over TCP shows the port accepts connections
        // (without the warning a bare connect leaves in the error log).
        let answers = endpoint.sql_as(Account::Duplex, "", "SELECT 1").is_ok();
        Ok(answers.then_some(SharedMariaDb {
            endpoint,
            pid: Some(state.pid),
        }))
    }

    /// The shared server in `dir`, started there first if it is not running
    /// (under an exclusive lock, so concurrent callers start only one).
    pub fn start_in(dir: &Path) -> Result<SharedMariaDb, TestkitError> {
        let _lock = shared::lock(dir, SHARED_LOCK)?;
        if let Some(shared) = SharedMariaDb::find_in(dir)? {
            return Ok(shared);
        }
        let root = dir.join(SHARED_SUBDIR);
        // A server that runs there but does not answer is stopped first.
        scratch::stop_recorded_server(&root, TEARDOWN);
        let run_as = process::run_as(SERVER_USER)?;
        let scratch = ScratchDir::create_at(&root, run_as)?;
        let server = MariaServer::start_in(scratch, run_as, MariaOptions::default())?;
        let (endpoint, pid) = server.detach();
        Ok(SharedMariaDb { endpoint, pid })
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.endpoint.port
    }

    /// `mysql://duplex:duplex@127.0.0.1:PORT/<db>`.
    pub fn url(&self, db: &str) -> String {
        self.endpoint.url(db)
    }

    /// `mysql://root@127.0.0.1:PORT/<db>`.
    pub fn admin_url(&self, db: &str) -> String {
        self.endpoint.admin_url(db)
    }

    /// Runs SQL as root (see [`MariaServer::sql`]).
    pub fn sql(&self, db: &str, sql: &str) -> Result<String, TestkitError> {
        self.endpoint.sql(db, sql)
    }

    /// Creates a fresh database, dropped on drop.
    ///
    /// # Panics
    /// If the database cannot be created; the message says why.
    pub fn create_database(&self) -> MariaDatabase {
        self.try_create_database()
            .unwrap_or_else(|e| panic!("cannot create a MariaDB test database: {e}"))
    }

    /// Like `create_database`, returning the error instead of panicking.
    pub fn try_create_database(&self) -> Result<MariaDatabase, TestkitError> {
        self.endpoint.create_database()
    }

    /// mariadbd's pid, when known.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The unix socket, when known.
    pub fn socket(&self) -> Option<&Path> {
        self.endpoint.socket.as_deref()
    }
}
