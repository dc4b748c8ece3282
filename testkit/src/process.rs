//! The operating-system side of running servers: finding programs, running
//! helper commands, server processes and their signals, users, ports.
//!
//! Everything here is std-only and Linux-shaped (it reads `/proc`), which is
//! what the development and CI machines run. Signals are sent through the
//! shell's `kill` builtin so the crate needs no `libc` binding.

use std::collections::hash_map::RandomState;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::TestkitError;

/// How often readiness and exit are polled.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The unprivileged user a server runs as when the test process is root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RunAs {
    /// Numeric user id.
    pub uid: u32,
    /// Numeric primary group id.
    pub gid: u32,
}

/// The effective user id of this process, from `/proc/self/status`.
fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
}

/// Whether this process runs as root (and servers must drop to another user).
pub(crate) fn is_root() -> bool {
    effective_uid() == Some(0)
}

/// The user to run a server as: `user` when we are root, ourselves otherwise.
pub(crate) fn run_as(user: &str) -> Result<Option<RunAs>, TestkitError> {
    if !is_root() {
        return Ok(None);
    }
    let uid = user_id(user, "-u")?;
    let gid = user_id(user, "-g")?;
    Ok(Some(RunAs { uid, gid }))
}

fn user_id(user: &str, flag: &str) -> Result<u32, TestkitError> {
    let output = Command::new("id")
        .args([flag, user])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TestkitError::io("run `id`", e))?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.trim().parse() {
        Ok(id) if output.status.success() => Ok(id),
        _ => Err(TestkitError::Config(format!(
            "this process runs as root, so the server must run as the unprivileged user \
             `{user}`, which does not exist here (install the server package, which creates \
             it, or run the tests as an ordinary user)"
        ))),
    }
}

/// Gives `path` to `owner` (when we are root) and makes it private to them.
pub(crate) fn make_private(path: &Path, owner: Option<RunAs>) -> Result<(), TestkitError> {
    if let Some(owner) = owner {
        std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid))
            .map_err(|e| TestkitError::io(format!("chown {}", path.display()), e))?;
    }
    let mode = if path.is_dir() { 0o700 } else { 0o600 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| TestkitError::io(format!("chmod {}", path.display()), e))
}

/// Whether `path` is a regular file someone may execute.
fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds the first of `names` in `$<env_dir>`, then `$PATH`, then `extra_dirs`.
pub(crate) fn find_program(
    names: &[&str],
    env_dir: &str,
    extra_dirs: &[&str],
    hint: &str,
) -> Result<PathBuf, TestkitError> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os(env_dir).filter(|d| !d.is_empty()) {
        dirs.push(dir.into());
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.extend(extra_dirs.iter().map(PathBuf::from));
    for dir in &dirs {
        for name in names {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    Err(TestkitError::MissingProgram {
        program: names.join(" or "),
        hint: format!("{hint} (looked in ${env_dir}, $PATH and {extra_dirs:?})"),
    })
}

/// Finds `name` inside `dir`, falling back to `$PATH`.
pub(crate) fn program_in(dir: &Path, name: &str, hint: &str) -> Result<PathBuf, TestkitError> {
    let candidate = dir.join(name);
    if is_executable(&candidate) {
        return Ok(candidate);
    }
    find_program(&[name], "DUPLEX_NO_SUCH_DIR", &[], hint)
}

/// Environment variables of client programs that would override our arguments.
const CLIENT_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGDATABASE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGCONNECT_TIMEOUT",
    "PGAPPNAME",
    "PGDATA",
    "PGTZ",
    "MYSQL_PWD",
    "MYSQL_HOST",
    "MYSQL_TCP_PORT",
    "MYSQL_UNIX_PORT",
    "MYSQL_HOME",
    "MARIADB_HOME",
];

/// A command with the environment cleaned of client overrides.
pub(crate) fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for var in CLIENT_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `cmd` to completion, feeding it `input`; returns stdout, without the
/// trailing newline, or an error carrying its stderr.
pub(crate) fn run(
    cmd: &mut Command,
    input: Option<&str>,
    detail: &str,
) -> Result<String, TestkitError> {
    let program = Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| spawn_error(&program, e))?;
    let writer = match (input, child.stdin.take()) {
        (Some(input), Some(mut stdin)) => {
            let input = input.to_owned();
            // A separate thread, so a large input and a large output cannot
            // deadlock on full pipes.
            Some(thread::spawn(move || {
                let _ = stdin.write_all(input.as_bytes());
            }))
        }
        _ => None,
    };
    let output = child
        .wait_with_output()
        .map_err(|e| TestkitError::io(format!("wait for {program}"), e))?;
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    if output.status.success() {
        let mut stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        while stdout.ends_with('\n') {
            stdout.pop();
        }
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let text = if stderr.trim().is_empty() {
        String::from_utf8_lossy(&output.stdout).into_owned()
    } else {
        stderr.into_owned()
    };
    Err(TestkitError::Command {
        program,
        detail: detail.to_owned(),
        status: output.status.to_string(),
        output: text,
    })
}

fn spawn_error(program: &str, e: io::Error) -> TestkitError {
    if e.kind() == io::ErrorKind::NotFound {
        TestkitError::MissingProgram {
            program: program.to_owned(),
            hint: "run scripts/install-deps".to_owned(),
        }
    } else {
        TestkitError::io(format!("start {program}"), e)
    }
}

/// The start of `sql`, for error messages.
pub(crate) fn excerpt(sql: &str) -> String {
    const MAX: usize = 300;
    let sql = sql.trim();
    match sql.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{} …", &sql[..cut]),
        None => sql.to_owned(),
    }
}

/// A signal a server is stopped with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    /// SIGINT: PostgreSQL's fast shutdown.
    Int,
    /// SIGTERM: MariaDB's clean shutdown.
    Term,
    /// SIGQUIT: PostgreSQL's immediate shutdown (crash-like, recovers on start).
    Quit,
    /// SIGKILL.
    Kill,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Int => "INT",
            Signal::Term => "TERM",
            Signal::Quit => "QUIT",
            Signal::Kill => "KILL",
        }
    }
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub(crate) fn send_signal(pid: u32, signal: Signal) {
    let _ = Command::new("sh")
        .args(["-c", "kill -s \"$0\" \"$1\" 2>/dev/null", signal.name()])
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// What `/proc/<pid>/stat` says about a process.
struct ProcStat {
    state: char,
    start_time: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 was the state; start time is field 22.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// Whether `pid` is a live process (zombies count as dead).
pub(crate) fn is_alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|s| !matches!(s.state, 'Z' | 'X'))
}

/// When `pid` started, in clock ticks since boot: with the pid, it names a
/// process uniquely even after the pid is reused.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|s| s.start_time)
}

/// Whether live process `pid` has `needle` in its command line: how we make
/// sure a recorded pid is still our server before signalling it.
pub(crate) fn runs_with(pid: u32, needle: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    is_alive(pid) && cmdline.contains(&*needle.to_string_lossy())
}

/// A server process: ours to wait for when we spawned it, or one found by pid.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    pid: u32,
    child: Option<Child>,
}

impl ServerProcess {
    /// Starts `cmd` detached from our terminal and our stdio: its own process
    /// group, stdin from /dev/null, stdout and stderr appended to `log`.
    pub(crate) fn spawn(
        cmd: &mut Command,
        log: &Path,
        run_as: Option<RunAs>,
    ) -> Result<Self, TestkitError> {
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| TestkitError::io(format!("open {}", log.display()), e))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| TestkitError::io("duplicate log file handle", e))?;
        cmd.stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .process_group(0);
        if let Some(user) = run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd.spawn().map_err(|e| spawn_error(&program, e))?;
        Ok(ServerProcess {
            pid: child.id(),
            child: Some(child),
        })
    }

    /// A process we did not start (a shared server), known by pid.
    pub(crate) fn adopt(pid: u32) -> Self {
        ServerProcess { pid, child: None }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process has exited (reaping it when it is our child).
    pub(crate) fn has_exited(&mut self) -> bool {
        match &mut self.child {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => !is_alive(self.pid),
        }
    }

    /// Polls until the process exits or `timeout` passes; true if it exited.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.has_exited() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Sends each signal in turn, waiting its timeout for the exit, until the
    /// process is gone; false if it survived them all.
    pub(crate) fn stop(&mut self, escalation: &[(Signal, Duration)]) -> bool {
        for &(signal, timeout) in escalation {
            if self.has_exited() {
                return true;
            }
            send_signal(self.pid, signal);
            if self.wait_exit(timeout) {
                return true;
            }
        }
        self.has_exited()
    }

    /// Forgets the process without stopping it: it outlives this handle.
    pub(crate) fn detach(mut self) -> u32 {
        // Dropping a `Child` neither kills nor waits for it.
        self.child.take();
        self.pid
    }
}

/// The last `lines` lines of `path`, reading from byte `from` on.
pub(crate) fn log_tail(path: &Path, from: u64, lines: usize) -> String {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) => return format!("(cannot read {}: {e})", path.display()),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // Only the end matters; don't read a huge log.
    let start = from.max(len.saturating_sub(64 * 1024));
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return format!("(cannot read {})", path.display());
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.trim().is_empty() {
        "(log is empty)".to_owned()
    } else {
        tail
    }
}

/// The current length of a log file: where a new attempt's lines start.
pub(crate) fn log_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Whether the log, from byte `from` on, says the port was taken.
pub(crate) fn log_says_port_in_use(path: &Path, from: u64) -> bool {
    log_tail(path, from, 200).contains("Address already in use")
}

/// A port on 127.0.0.1 that was free a moment ago (the caller retries if
/// someone else takes it before the server binds it).
pub(crate) fn free_port() -> Result<u16, TestkitError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| TestkitError::io("bind 127.0.0.1:0 to find a free port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| TestkitError::io("read the address of a bound socket", e))?
        .port();
    Ok(port)
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) fn accepts_tcp(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// 64 random bits from std's randomly keyed hasher, the pid, the clock and a
/// counter: unique enough for directory and database names.
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.finish()
}

/// A fresh random name: `prefix` followed by 16 hex digits.
pub(crate) fn random_name(prefix: &str) -> String {
    format!("{prefix}{:016x}", random_u64())
}
