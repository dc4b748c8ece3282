//! Throwaway PostgreSQL servers.
//!
//! A [`PgServer`] is a whole cluster of its own: `initdb` into a fresh private
//! directory, settings for logical replication and for speed appended to its
//! `postgresql.conf`, a `pg_hba.conf` written from scratch, then `postgres`
//! started on a free port of 127.0.0.1 with its unix socket in the server's
//! directory. Startup is polled with `pg_isready` through that socket (which
//! only our server can own, unlike a TCP port) until a deadline; if the
//! postmaster exits because another process took the port in between, it is
//! started again on a new port.
//!
//! Layout of a server directory:
//!
//! ```text
//! <dir>/data/             PGDATA
//! <dir>/server.log        the postmaster's stderr
//! <dir>/.s.PGSQL.<port>   the unix socket
//! <dir>/testkit-state     port, pid, socket (read by the sweep and the shared-server lookup)
//! ```
//!
//! Roles: `postgres` is the superuser, with password `postgres` (trust over
//! the unix socket, scram-sha-256 over TCP). `duplex` (password `duplex`) has
//! LOGIN REPLICATION CREATEDB and is not a superuser: what a DBA would grant
//! duplex. Every [`PgDatabase`] is owned by `duplex`, and default privileges
//! give `duplex` ALL on the schemas, tables and sequences the superuser
//! creates there (through [`PgDatabase::psql`]). Those objects stay owned by
//! `postgres`, so `duplex` cannot, say, `CREATE PUBLICATION ... FOR TABLE`
//! them; create tables with [`PgDatabase::execute_as_duplex`] when duplex
//! must own them.
//!
//! When the test process is root, every server program runs as the
//! `postgres` user (PostgreSQL refuses to run as root) and the directory
//! belongs to that user.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::TestkitError;
use crate::process::{self, RunAs, ServerProcess, Signal};
use crate::scratch::{self, ScratchDir, ServerState};
use crate::{DUPLEX_PASSWORD, DUPLEX_USER, Shutdown};

/// The superuser's name.
const SUPERUSER: &str = "postgres";
/// The superuser's password (for TCP logins).
const SUPERUSER_PASSWORD: &str = "postgres";
/// Unix user the server runs as when we are root.
const SERVER_USER: &str = "postgres";
/// Subdirectory of the shared-server directory.
pub(crate) const SHARED_SUBDIR: &str = "pg";
/// Lock file of the shared PostgreSQL server.
pub(crate) const SHARED_LOCK: &str = "pg.lock";
/// A clean, fast shutdown: SIGINT, escalating if it hangs.
const FAST: &[(Signal, Duration)] = &[
    (Signal::Int, Duration::from_secs(60)),
    (Signal::Quit, Duration::from_secs(10)),
    (Signal::Kill, Duration::from_secs(10)),
];
/// Immediate shutdown: SIGQUIT, like a crash; recovery runs at the next start.
const IMMEDIATE: &[(Signal, Duration)] = &[
    (Signal::Quit, Duration::from_secs(10)),
    (Signal::Kill, Duration::from_secs(10)),
];
/// How a server whose data is about to be deleted is stopped.
pub(crate) const TEARDOWN: &[(Signal, Duration)] = IMMEDIATE;
/// How many ports are tried when another process takes the chosen one.
const PORT_ATTEMPTS: usize = 5;
/// Longest unix socket path the kernel accepts (sun_path minus the NUL).
const MAX_SOCKET_PATH: usize = 107;

const INSTALL_HINT: &str = "install the PostgreSQL server and client (scripts/install-deps), \
                            or point DUPLEX_PG_BINDIR at the directory holding initdb and postgres";

/// How a [`PgServer`] is configured.
///
/// Defaults: `wal_level=logical`, `max_replication_slots=20`,
/// `max_wal_senders=20`, `max_connections=200`, `shared_buffers=32MB`, and
/// for speed `fsync=off`, `full_page_writes=off`, `synchronous_commit=off`
/// (safe against a killed postgres except for the last commits, see
/// [`crate::Shutdown::Immediate`]; not safe against a machine crash).
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// `wal_level`: "logical" (default), "replica" or "minimal".
    pub wal_level: String,
    /// Further `postgresql.conf` settings, applied after the defaults.
    pub settings: Vec<(String, String)>,
    /// How long startup may take before it is an error.
    pub start_timeout: Duration,
    /// TLS on (`ssl=on`) with these certificates (the server certificate and key, and the CA
    /// as `ssl_ca_file` for client certificates); TCP connections must then be encrypted
    /// (`hostssl` lines in `pg_hba.conf`), so a plaintext path fails.
    pub tls: Option<crate::TlsCerts>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            wal_level: "logical".to_owned(),
            settings: Vec::new(),
            start_timeout: Duration::from_secs(60),
            tls: None,
        }
    }
}

impl PgOptions {
    /// Sets `wal_level` (with "minimal", `max_wal_senders` becomes 0 as required).
    pub fn wal_level(mut self, level: &str) -> Self {
        self.wal_level = level.to_owned();
        self
    }

    /// Adds a `postgresql.conf` setting; later settings win over earlier ones.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Turns TLS on (`ssl=on`) with the server certificate of `certs`; TCP connections in
    /// plaintext are refused.
    pub fn tls(mut self, certs: &crate::TlsCerts) -> Self {
        self.tls = Some(certs.clone());
        self
    }

    /// Sets how long startup may take.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// The `postgresql.conf` lines: our defaults, then the caller's settings.
    fn config_lines(&self, socket_dir: &Path) -> String {
        let mut settings: Vec<(&str, String)> = vec![
            ("listen_addresses", "127.0.0.1".to_owned()),
            (
                "unix_socket_directories",
                socket_dir.to_string_lossy().into_owned(),
            ),
            ("wal_level", self.wal_level.clone()),
            ("max_wal_senders", "20".to_owned()),
            ("max_replication_slots", "20".to_owned()),
            ("fsync", "off".to_owned()),
            ("synchronous_commit", "off".to_owned()),
            ("full_page_writes", "off".to_owned()),
            ("shared_buffers", "32MB".to_owned()),
            ("max_connections", "200".to_owned()),
            ("logging_collector", "off".to_owned()),
            ("log_destination", "stderr".to_owned()),
            ("log_line_prefix", "%m [%p] %q%u@%d ".to_owned()),
        ];
        if self.wal_level == "minimal" {
            settings.push(("max_wal_senders", "0".to_owned()));
        }
        settings.extend(self.settings.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let mut text = String::from("\n# Added by duplex-testkit; later lines win.\n");
        for (name, value) in settings {
            let value = value.replace('\\', "\\\\").replace('\'', "''");
            text.push_str(&format!("{name} = '{value}'\n"));
        }
        text
    }
}

/// The `pg_hba.conf` of every test server.
const PG_HBA: &str = "\
# Written by duplex-testkit.
# TYPE  DATABASE     USER      ADDRESS        METHOD
local   all          postgres                 trust
local   replication  postgres                 trust
local   all          all                      scram-sha-256
local   replication  all                      scram-sha-256
host    all          all       127.0.0.1/32   scram-sha-256
host    replication  all       127.0.0.1/32   scram-sha-256
";

/// The server-side programs.
#[derive(Clone, Debug)]
struct PgBin {
    initdb: PathBuf,
    postgres: PathBuf,
    client: PgClient,
}

/// The client programs, all that is needed for a server someone else runs.
#[derive(Clone, Debug)]
struct PgClient {
    psql: PathBuf,
    pg_isready: PathBuf,
}

/// The directory holding `initdb` and `postgres`: `$DUPLEX_PG_BINDIR`, a
/// `$PATH` entry, or the newest `/usr/lib/postgresql/<version>/bin`.
fn server_bindir() -> Result<PathBuf, TestkitError> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("DUPLEX_PG_BINDIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_server(&dir) {
            Ok(dir)
        } else {
            Err(TestkitError::Config(format!(
                "DUPLEX_PG_BINDIR={} holds no initdb and postgres",
                dir.display()
            )))
        };
    }
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|d| has_server(d))
    {
        return Ok(dir);
    }
    // Debian and Ubuntu keep the server programs out of $PATH.
    let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_server(dir))
        .collect();
    versioned.sort();
    if let Some((_, dir)) = versioned.pop() {
        return Ok(dir);
    }
    let fallback = Path::new("/usr/local/pgsql/bin");
    if has_server(fallback) {
        return Ok(fallback.to_path_buf());
    }
    Err(TestkitError::MissingProgram {
        program: "initdb".to_owned(),
        hint: format!(
            "{INSTALL_HINT} (looked in $DUPLEX_PG_BINDIR, $PATH, /usr/lib/postgresql/*/bin and \
             /usr/local/pgsql/bin)"
        ),
    })
}

impl PgBin {
    fn locate() -> Result<Self, TestkitError> {
        let dir = server_bindir()?;
        // A `$PATH` entry may hold symlinks (/usr/local/bin/postgres ->
        // /usr/lib/postgresql/15/bin/postgres): take the client programs from
        // the real directory, so they match the server's version.
        let dir = fs::canonicalize(dir.join("postgres"))
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or(dir);
        Ok(PgBin {
            initdb: dir.join("initdb"),
            postgres: dir.join("postgres"),
            client: PgClient::in_dir(&dir)?,
        })
    }
}

impl PgClient {
    fn in_dir(dir: &Path) -> Result<Self, TestkitError> {
        Ok(PgClient {
            psql: process::program_in(dir, "psql", INSTALL_HINT)?,
            pg_isready: process::program_in(dir, "pg_isready", INSTALL_HINT)?,
        })
    }

    fn locate() -> Result<Self, TestkitError> {
        match server_bindir() {
            Ok(dir) => PgClient::in_dir(&dir),
            Err(_) => PgClient::in_dir(Path::new("/nonexistent")),
        }
    }
}

/// Where a running server is and how to talk to it.
#[derive(Clone, Debug)]
struct PgEndpoint {
    port: u16,
    /// The unix socket directory; without one, admin SQL goes over TCP as
    /// `postgres` with password `postgres`.
    socket_dir: Option<PathBuf>,
    client: PgClient,
}

impl PgEndpoint {
    fn url(&self, db: &str) -> String {
        format!(
            "postgres://{DUPLEX_USER}:{DUPLEX_PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    fn admin_url(&self, db: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// Runs `sql` (a script: one or more statements) through psql as `user`.
    fn psql_as(&self, user: &str, db: &str, sql: &str) -> Result<String, TestkitError> {
        let mut cmd = process::command(&self.client.psql);
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                user,
                "-d",
                db,
                "-f",
                "-",
            ]);
        match (&self.socket_dir, user) {
            (Some(dir), SUPERUSER) => {
                cmd.arg("-h").arg(dir);
            }
            _ => {
                let password = if user == SUPERUSER {
                    SUPERUSER_PASSWORD
                } else {
                    DUPLEX_PASSWORD
                };
                cmd.args(["-h", "127.0.0.1"]).env("PGPASSWORD", password);
            }
        }
        let detail = format!(
            "SQL as {user} on database {db} (port {}): {}",
            self.port,
            process::excerpt(sql)
        );
        process::run(&mut cmd, Some(sql), &detail)
    }

    fn psql(&self, db: &str, sql: &str) -> Result<String, TestkitError> {
        self.psql_as(SUPERUSER, db, sql)
    }

    /// Whether the server accepts connections (pg_isready; through the
    /// socket when we know it, so no other server can answer for ours).
    fn is_ready(&self) -> bool {
        let mut cmd = process::command(&self.client.pg_isready);
        cmd.args(["-q", "-t", "2", "-U", SUPERUSER, "-d", "postgres"])
            .args(["-p", &self.port.to_string(), "-h"]);
        match &self.socket_dir {
            Some(dir) => cmd.arg(dir),
            None => cmd.arg("127.0.0.1"),
        };
        process::run(&mut cmd, None, "pg_isready").is_ok()
    }

    /// Creates a database owned by `duplex` in which whatever the superuser
    /// creates (schemas, tables, sequences) is usable by `duplex` too, as if
    /// a DBA had granted it; ownership stays with the superuser.
    fn create_database(&self) -> Result<PgDatabase, TestkitError> {
        let name = process::random_name("t_");
        let ident = quote_ident(&name);
        self.psql(
            "postgres",
            &format!(
                "CREATE DATABASE {ident} OWNER {DUPLEX_USER};\n\
                 \\connect {ident}\n\
                 ALTER DEFAULT PRIVILEGES FOR ROLE {SUPERUSER} GRANT ALL ON SCHEMAS TO {DUPLEX_USER};\n\
                 ALTER DEFAULT PRIVILEGES FOR ROLE {SUPERUSER} GRANT ALL ON TABLES TO {DUPLEX_USER};\n\
                 ALTER DEFAULT PRIVILEGES FOR ROLE {SUPERUSER} GRANT ALL ON SEQUENCES TO {DUPLEX_USER};"
            ),
        )?;
        Ok(PgDatabase {
            endpoint: self.clone(),
            name,
            dropped: false,
        })
    }

    /// Drops database `name`, ending its sessions first. A logical
    /// replication slot in use there blocks the drop even WITH (FORCE), so
    /// the sessions (walsenders included) are terminated and the drop retried
    /// until they are gone; inactive slots are dropped with the database.
    fn drop_database(&self, name: &str) -> Result<(), TestkitError> {
        let sql = format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = {} AND pid <> pg_backend_pid();\n\
             DROP DATABASE IF EXISTS {} WITH (FORCE);",
            quote_literal(name),
            quote_ident(name)
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.psql("postgres", &sql) {
                Ok(_) => return Ok(()),
                Err(e)
                    if e.to_string().contains("replication slot") && Instant::now() < deadline =>
                {
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// `name` as a quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a quoted SQL string literal.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A PostgreSQL server of its own, stopped and deleted on drop.
#[derive(Debug)]
pub struct PgServer {
    dir: ScratchDir,
    bin: PgBin,
    run_as: Option<RunAs>,
    endpoint: PgEndpoint,
    options: PgOptions,
    process: Mutex<Option<ServerProcess>>,
}

impl PgServer {
    /// Starts a new server in a fresh temporary directory.
    pub fn start(options: PgOptions) -> Result<PgServer, TestkitError> {
        let run_as = process::run_as(SERVER_USER)?;
        let dir = ScratchDir::create_temp("pg", run_as)?;
        PgServer::start_in(dir, run_as, options)
    }

    /// Initialises and starts a server in `dir`.
    fn start_in(
        dir: ScratchDir,
        run_as: Option<RunAs>,
        options: PgOptions,
    ) -> Result<PgServer, TestkitError> {
        let bin = PgBin::locate()?;
        let root = dir.path().to_path_buf();
        let socket_len = root.join(".s.PGSQL.65535").as_os_str().len();
        if socket_len > MAX_SOCKET_PATH {
            return Err(TestkitError::Config(format!(
                "the unix socket path under {} would be {socket_len} bytes, more than the \
                 {MAX_SOCKET_PATH} the kernel allows; use a shorter TMPDIR or \
                 DUPLEX_TESTSERVERS_DIR",
                root.display()
            )));
        }
        let data = root.join("data");
        let mut initdb = process::command(&bin.initdb);
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .args(["--no-sync", "--no-instructions"])
            .current_dir(&root);
        as_user(&mut initdb, run_as);
        process::run(&mut initdb, None, &format!("initdb -D {}", data.display()))?;

        let write = |file: &str, contents: &str, append: bool| {
            let path = data.join(file);
            let result = if append {
                fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, contents.as_bytes()))
            } else {
                fs::write(&path, contents)
            };
            result.map_err(|e| TestkitError::io(format!("write {}", path.display()), e))
        };
        if options.tls.is_some() {
            write(
                "pg_hba.conf",
                &PG_HBA.replace("\nhost ", "\nhostssl "),
                false,
            )?;
        } else {
            write("pg_hba.conf", PG_HBA, false)?;
        }
        write("postgresql.conf", &options.config_lines(&root), true)?;
        if let Some(certs) = &options.tls {
            for (name, contents) in [
                ("server.crt", &certs.server_cert_pem),
                ("server.key", &certs.server_key_pem),
                ("root.crt", &certs.ca_pem),
            ] {
                write(name, contents, false)?;
                process::make_private(&data.join(name), run_as)?;
            }
            write(
                "postgresql.conf",
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
                 ssl_ca_file = 'root.crt'\n",
                true,
            )?;
        }

        let mut server = PgServer {
            endpoint: PgEndpoint {
                port: 0,
                socket_dir: Some(root),
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
        server.psql(
            "postgres",
            &format!(
                "ALTER ROLE {SUPERUSER} PASSWORD '{SUPERUSER_PASSWORD}';\n\
                 CREATE ROLE {DUPLEX_USER} LOGIN REPLICATION CREATEDB PASSWORD '{DUPLEX_PASSWORD}';"
            ),
        )?;
        Ok(server)
    }

    /// Starts the postmaster and waits until it accepts connections. With no
    /// `port`, picks a free one, and picks again if the postmaster finds it
    /// taken; with one (a restart), uses it.
    fn launch(&self, port: Option<u16>) -> Result<(ServerProcess, u16), TestkitError> {
        let root = self.dir.path();
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
            let mut cmd = process::command(&self.bin.postgres);
            cmd.arg("-D")
                .arg(root.join("data"))
                .args(["-p", &port.to_string()])
                .current_dir(root);
            let mut process = ServerProcess::spawn(&mut cmd, &log, self.run_as)?;
            let probe = PgEndpoint {
                port,
                ..self.endpoint.clone()
            };
            loop {
                if process.has_exited() {
                    if attempt < attempts && process::log_says_port_in_use(&log, from) {
                        break;
                    }
                    return Err(TestkitError::server(
                        self.describe(),
                        format!("postgres exited during startup (port {port})"),
                        &log,
                        from,
                    ));
                }
                if probe.is_ready() {
                    return Ok((process, port));
                }
                if Instant::now() >= deadline {
                    process.stop(IMMEDIATE);
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
        format!("PostgreSQL server in {}", self.dir.path().display())
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
                socket: self.dir.path().to_path_buf(),
            },
        )
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.endpoint.port
    }

    /// `postgres://duplex:duplex@127.0.0.1:PORT/<db>`: how duplex connects.
    pub fn url(&self, db: &str) -> String {
        self.endpoint.url(db)
    }

    /// `postgres://postgres:postgres@127.0.0.1:PORT/<db>`: the superuser.
    pub fn admin_url(&self, db: &str) -> String {
        self.endpoint.admin_url(db)
    }

    /// Runs an SQL script as superuser via `psql -X -A -t -q -v ON_ERROR_STOP=1`
    /// over the unix socket; returns its output (rows `|`-separated, one per line).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, TestkitError> {
        self.endpoint.psql(db, sql)
    }

    /// Creates a fresh database `t_<16 hex>` owned by `duplex`, dropped on drop.
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

    /// The postmaster's pid, or `None` while the server is shut down.
    pub fn pid(&self) -> Option<u32> {
        self.process_slot().as_ref().map(ServerProcess::pid)
    }

    /// Whether the postmaster is running.
    pub fn is_running(&self) -> bool {
        self.process_slot()
            .as_mut()
            .is_some_and(|process| !process.has_exited())
    }

    /// The unix socket directory (for `psql -h`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// PGDATA.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server log (the postmaster's stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Stops the postmaster, keeping data and port for [`PgServer::start_again`].
    /// `Fast` is a clean fast shutdown (SIGINT); `Immediate` is SIGQUIT, which
    /// behaves like a crash: the next start runs crash recovery.
    pub fn shut_down(&self, how: Shutdown) -> Result<(), TestkitError> {
        let Some(mut process) = self.process_slot().take() else {
            return Ok(());
        };
        let from = process::log_len(&self.log_path());
        let escalation = match how {
            Shutdown::Fast => FAST,
            Shutdown::Immediate => IMMEDIATE,
        };
        if process.stop(escalation) {
            Ok(())
        } else {
            Err(TestkitError::server(
                self.describe(),
                format!("postmaster {} survived SIGKILL", process.pid()),
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
                format!("postmaster {} survived SIGKILL", process.pid()),
                self.log_path(),
                0,
            ))
        }
    }

    /// Leaves the server running and its directory in place; returns how to
    /// reach it.
    fn detach(mut self) -> (PgEndpoint, Option<u32>) {
        self.dir.keep();
        let pid = self.process_slot().take().map(ServerProcess::detach);
        (self.endpoint.clone(), pid)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("duplex-testkit: {e}");
        }
    }
}

fn as_user(cmd: &mut std::process::Command, run_as: Option<RunAs>) {
    use std::os::unix::process::CommandExt;
    if let Some(user) = run_as {
        cmd.uid(user.uid).gid(user.gid);
    }
}

mod database;

pub use database::{PgDatabase, SharedPg};
