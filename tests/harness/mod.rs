//! Shared pieces of the end-to-end tests: running the real `duplex` binary and waiting for
//! conditions with a deadline.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod metrics;
pub mod mssql;
pub mod pg;
pub mod proxy;
pub mod sites;
pub mod verify_report;

/// The `duplex` binary the tests run: `DUPLEX_BIN` when set (a copy of a binary built from a
/// known tree, since a shared target directory's binary may be rebuilt from another tree while
/// tests run), else the one cargo built for this package.
pub fn duplex_bin() -> PathBuf {
    std::env::var_os("DUPLEX_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_duplex")))
}

/// A `duplex` process started by a test; killed when dropped.
pub struct Duplex {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Duplex {
    /// Writes `config` to a fresh directory and starts `duplex --config <it> run`, logging to
    /// a file in that directory.
    pub fn run(config: &str) -> Duplex {
        let mut duplex = Duplex::new(config);
        duplex.start();
        duplex
    }

    /// Writes `config` to a fresh directory without starting anything (run other commands
    /// with [`Duplex::command`] first).
    pub fn new(config: &str) -> Duplex {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("duplex.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.path().join("duplex.log");
        Duplex {
            child: None,
            config: path,
            log,
            _dir: dir,
        }
    }

    /// Runs `duplex --config <config> <args>` to completion (e.g. `backfill`).
    pub fn command(&self, args: &[&str]) -> std::process::Output {
        self.command_with(&[], args)
    }

    /// [`Duplex::command`] with extra environment variables.
    pub fn command_with(&self, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
        Command::new(duplex_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("DUPLEX_LOG", "info,duplex=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Starts (again) `duplex run` with the same configuration and state.
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// [`Duplex::start`] with extra arguments after `run`.
    pub fn start_with(&mut self, extra: &[&str]) {
        assert!(self.child.is_none(), "duplex is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(duplex_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .args(extra)
            .env("DUPLEX_LOG", "info,duplex=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then waits (with a deadline) for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> i32 {
        let mut child = self.child.take().expect("duplex is not running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!(
                    "duplex did not stop within 30 s of SIGTERM\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running (`false` with its log when it exited).
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait().unwrap()
        {
            panic!("duplex exited with {status}\n{}", self.log_text());
        }
    }

    /// The exit code once the process has exited by itself, `None` while it runs.
    pub fn exit_code(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().unwrap()?;
        self.child = None;
        Some(status.code().unwrap_or(-1))
    }

    /// Waits (up to [`REPLICATION_GUARD`], a guard against a hanging test) for the process to
    /// exit by itself; returns its exit code.
    pub fn wait_exit(&mut self) -> i32 {
        let started = Instant::now();
        loop {
            if let Some(code) = self.exit_code() {
                return code;
            }
            if started.elapsed() > REPLICATION_GUARD {
                panic!(
                    "duplex did not stop by itself within {REPLICATION_GUARD:?}\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (up to [`REPLICATION_GUARD`]) until a link logged that it started streaming.
    pub fn wait_link_started(&mut self) {
        wait_for("the link to start", REPLICATION_GUARD, || {
            self.assert_running();
            if self.log_text().contains("link started") {
                Ok(())
            } else {
                Err("not started".into())
            }
        });
    }

    /// Waits for duplex to stop by itself (non-zero) and checks its log says every one of
    /// `needles`.
    pub fn assert_stopped_saying(&mut self, needles: &[&str]) {
        let code = self.wait_exit();
        let log = self.log_text();
        assert_ne!(code, 0, "duplex went on:\n{log}");
        for needle in needles {
            assert!(
                log.contains(needle),
                "the log does not say {needle:?}:\n{log}"
            );
        }
    }

    /// Everything the process logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The running process's peak resident set size so far, in bytes (`VmHWM` of
    /// `/proc/<pid>/status`); `None` when it is not running or the value is not available.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line
            .trim_start_matches("VmHWM:")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    }
}

impl Drop for Duplex {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `condition` every 50 ms until it returns `Some`, or panics after `timeout` with the
/// message `what` and the last observation.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match condition() {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Rows printed by `psql -A -t` (`|`-separated) or `mariadb --batch -N` (tab-separated), as
/// vectors of fields; `NULL`s print as empty (psql) or `NULL` (MariaDB): normalise with
/// `null` before comparing.
pub fn rows(output: &str, separator: char) -> Vec<Vec<String>> {
    output
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split(separator).map(str::to_owned).collect())
        .collect()
}

/// The replication slot duplex creates for a PostgreSQL source database whose site is named
/// after the database (as every end-to-end test names it, so parallel tests never share one).
pub fn pg_slot(source: &duplex_testkit::PgDatabase) -> String {
    format!("duplex_{0}_{0}", source.name())
}

/// Waits until duplex streams from its slot on `source`: every later commit is replicated.
///
/// `active` alone does not say so. `pg_create_logical_replication_slot` holds the slot while
/// it builds its starting snapshot, which waits for every transaction running in the cluster
/// (any database) to end; all that time the slot shows `active` (held by the creating
/// backend) with no `confirmed_flush_lsn`, and a commit made then lies before the slot's
/// consistent point: outside the stream, so a never-backfilled mapping never gets it (see
/// `docs/slot-creation-window.md`). So the slot must also have its confirmed position
/// (creation finished) and be held by a walsender (listed in `pg_stat_replication`).
pub fn wait_slot_active(source: &duplex_testkit::PgDatabase, duplex: &mut Duplex) {
    wait_for(
        "the replication slot to be created and streamed from",
        REPLICATION_GUARD,
        || {
            duplex.assert_running();
            let state = slot_state(source)?;
            if state.is_streamed() {
                Ok(())
            } else {
                Err(state.to_string())
            }
        },
    );
}

/// Drops duplex's slot on `source` once duplex has let go of it, so no WAL stays pinned and
/// the database can be dropped.
pub fn drop_slot(source: &duplex_testkit::PgDatabase) {
    let slot = pg_slot(source);
    wait_for("the slot to be dropped", Duration::from_secs(60), || {
        source
            .psql(&format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ))
            .map(drop)
            .map_err(|e| e.to_string())
    });
}

/// A WAL position as PostgreSQL prints it (`16/B374D848`), as a number.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.trim().split_once('/')?;
    Some(u64::from_str_radix(high, 16).ok()? << 32 | u64::from_str_radix(low, 16).ok()?)
}

/// A WAL position printed the way PostgreSQL prints it.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// The source's WAL insert position (`pg_current_wal_insert_lsn()`). Read right after a
/// commit, it is at or past that commit's end: once a slot's `confirmed_flush_lsn` reaches it,
/// the consumer has confirmed the transaction. (`pg_current_wal_lsn()` is the *write*
/// position, which with `synchronous_commit = off`, as on the test servers, can still be
/// before a commit that has returned.)
pub fn commit_position(source: &duplex_testkit::PgDatabase) -> u64 {
    let text = source
        .psql("SELECT pg_current_wal_insert_lsn()")
        .expect("reading the WAL insert position");
    parse_lsn(&text).unwrap_or_else(|| panic!("unreadable LSN {text:?}"))
}

/// What PostgreSQL says about duplex's slot on a source (one `pg_replication_slots` row, with
/// its walsender's `pg_stat_replication` row when one holds it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotState {
    /// The slot exists.
    pub exists: bool,
    /// A session streams from it.
    pub active: bool,
    /// `restart_lsn`: the oldest WAL the slot keeps (where decoding restarts).
    pub restart: Option<u64>,
    /// `confirmed_flush_lsn`: what the consumer confirmed; `None` while the slot is being
    /// created (before its consistent point).
    pub confirmed: Option<u64>,
    /// The walsender's `sent_lsn`: how far its decoder has read the WAL.
    pub sent: Option<u64>,
    /// The server's WAL insert position at the time of the reading.
    pub insert: u64,
}

impl SlotState {
    /// Created (it has a confirmed position: its creation reached the consistent point) and
    /// held by a walsender: what "every later commit is streamed" needs.
    pub fn is_streamed(&self) -> bool {
        self.active && self.confirmed.is_some() && self.sent.is_some()
    }
}

impl std::fmt::Display for SlotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lsn = |l: Option<u64>| l.map_or("-".to_owned(), format_lsn);
        if !self.exists {
            return write!(f, "no slot (insert {})", format_lsn(self.insert));
        }
        write!(
            f,
            "active {} restart {} confirmed {} sent {} insert {}",
            self.active,
            lsn(self.restart),
            lsn(self.confirmed),
            lsn(self.sent),
            format_lsn(self.insert)
        )
    }
}

/// Reads duplex's slot on `source` (see [`SlotState`]).
pub fn slot_state(source: &duplex_testkit::PgDatabase) -> Result<SlotState, String> {
    let slot = pg_slot(source);
    let out = source
        .psql(&format!(
            "SELECT coalesce(s.active::text, ''), coalesce(s.restart_lsn::text, ''), \
                    coalesce(s.confirmed_flush_lsn::text, ''), coalesce(r.sent_lsn::text, ''), \
                    pg_current_wal_insert_lsn() \
             FROM (SELECT 1) AS one \
             LEFT JOIN pg_replication_slots s ON s.slot_name = '{slot}' \
             LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid"
        ))
        .map_err(|e| e.to_string())?;
    let fields = rows(&out, '|');
    let [row] = fields.as_slice() else {
        return Err(format!("unexpected slot reading {out:?}"));
    };
    let [active, restart, confirmed, sent, insert] = row.as_slice() else {
        return Err(format!("unexpected slot reading {out:?}"));
    };
    Ok(SlotState {
        exists: !active.is_empty(),
        active: active == "true",
        restart: parse_lsn(restart),
        confirmed: parse_lsn(confirmed),
        sent: parse_lsn(sent),
        insert: parse_lsn(insert).ok_or_else(|| format!("unreadable insert LSN {insert:?}"))?,
    })
}

/// How long [`wait_replicated`] waits before it gives up: a guard against a hanging test, not
/// a synchronisation (the wait ends on proof, see there).
pub const REPLICATION_GUARD: Duration = Duration::from_secs(600);

/// Waits until the changes the source committed before `commit` (a [`commit_position`] read
/// after the test's last commit) are on the target, as `check` tells (`Err` with what it saw
/// while they are not).
///
/// The wait ends on proof, not on a clock: duplex confirms a position to PostgreSQL only once
/// every target committed everything before it, so a slot whose `confirmed_flush_lsn` is at or
/// past `commit` means the changes must be there. The slot is read *before* each check; if it
/// had confirmed `commit` and the check still fails, that is lost (or wrong) data and the
/// test fails at once, with the slot, the last observation and duplex's log. Until then a slow
/// server (its walsender decoding other databases' WAL) is only a delay, waited for up to
/// [`REPLICATION_GUARD`].
pub fn wait_replicated(
    source: &duplex_testkit::PgDatabase,
    duplex: &mut Duplex,
    commit: u64,
    what: &str,
    mut check: impl FnMut() -> Result<(), String>,
) {
    let started = Instant::now();
    loop {
        duplex.assert_running();
        let slot = slot_state(source);
        let seen = check();
        let Err(last) = seen else {
            return;
        };
        if let Ok(state) = &slot
            && state.confirmed.is_some_and(|c| c >= commit)
        {
            panic!(
                "{what}: the slot confirmed {} (commit at or before {}) but the target does not \
                 hold the changes: LOST OR WRONG DATA\nslot: {state}\nlast: {last}\n\
                 duplex log:\n{}",
                format_lsn(state.confirmed.unwrap_or(0)),
                format_lsn(commit),
                duplex.log_text()
            );
        }
        if started.elapsed() > REPLICATION_GUARD {
            panic!(
                "{what}: not replicated after {REPLICATION_GUARD:?} and the slot never confirmed \
                 {}\nslot: {}\nlast: {last}\nduplex log:\n{}",
                format_lsn(commit),
                slot.map_or_else(|e| e, |s| s.to_string()),
                duplex.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` (`STOP`, `CONT`) to `process`.
pub fn signal(process: &Duplex, signal: &str) {
    let pid = process.pid().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}
