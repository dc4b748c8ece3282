//! Shared pieces of the end-to-end tests: running the real `duplex` binary and waiting for
//! conditions with a deadline.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod sites;

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
        Command::new(env!("CARGO_BIN_EXE_duplex"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("DUPLEX_LOG", "info,duplex=debug")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Starts (again) `duplex run` with the same configuration and state.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "duplex is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_duplex"))
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .env("DUPLEX_LOG", "info,duplex=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
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

/// Waits until duplex's slot on `source` is active (streaming): every later commit is
/// replicated.
pub fn wait_slot_active(source: &duplex_testkit::PgDatabase, duplex: &mut Duplex) {
    let slot = pg_slot(source);
    wait_for(
        "the replication slot to be active",
        Duration::from_secs(60),
        || {
            duplex.assert_running();
            let active = source
                .psql(&format!(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"
                ))
                .map_err(|e| e.to_string())?;
            if active.trim() == "t" {
                Ok(())
            } else {
                Err(format!("active = {active:?}"))
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
