//! Server directories: fresh private ones for per-test servers, fixed ones for
//! the shared servers, the small state file each server directory carries, and
//! the sweep that cleans up after test processes that died without their
//! destructors running.
//!
//! Each per-test directory records its owner (the test process's pid and
//! start time) when it is created, and the server's pid and port once the
//! server runs. A directory whose owner is gone is an orphan: the next test
//! process that starts a server stops the orphan's server (only after checking
//! that the recorded pid is still a process running in that directory) and
//! removes the directory. So a test killed by a timeout or Ctrl-C leaks
//! nothing for longer than until the next run.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, SystemTime};

use crate::error::TestkitError;
use crate::process::{self, RunAs, ServerProcess, Signal};

/// Prefix of per-test server directories in the system temp directory.
const TEMP_PREFIX: &str = "duplex-testkit-";
/// File naming the process that owns a per-test directory.
const OWNER_FILE: &str = "testkit-owner";
/// File recording the running server's port, pid and socket.
const STATE_FILE: &str = "testkit-state";
/// Directories without an owner record younger than this may still be
/// starting up; older ones are debris.
const OWNERLESS_GRACE: Duration = Duration::from_secs(3600);

/// A directory holding one server's data, socket and log.
#[derive(Debug)]
pub(crate) struct ScratchDir {
    path: PathBuf,
    keep: bool,
}

impl ScratchDir {
    /// A fresh private directory under the system temp directory, removed on
    /// drop, owned by `owner` (when we are root).
    pub(crate) fn create_temp(kind: &str, owner: Option<RunAs>) -> Result<Self, TestkitError> {
        static SWEEP: Once = Once::new();
        SWEEP.call_once(sweep_orphans);
        let base = std::env::temp_dir();
        let path = loop {
            let path = base.join(process::random_name(&format!("{TEMP_PREFIX}{kind}-")));
            match fs::create_dir(&path) {
                Ok(()) => break path,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(TestkitError::io(
                        format!("create directory {}", path.display()),
                        e,
                    ));
                }
            }
        };
        let dir = ScratchDir { path, keep: false };
        let me = std::process::id();
        let started = process::start_time(me).unwrap_or(0);
        fs::write(dir.path.join(OWNER_FILE), format!("{me} {started}\n")).map_err(|e| {
            TestkitError::io(format!("write owner record in {}", dir.path.display()), e)
        })?;
        process::make_private(&dir.path, owner)?;
        Ok(dir)
    }

    /// `path`, emptied and recreated, for a server that outlives this process
    /// (the directory is kept on drop).
    pub(crate) fn create_at(path: &Path, owner: Option<RunAs>) -> Result<Self, TestkitError> {
        if path.exists() {
            fs::remove_dir_all(path)
                .map_err(|e| TestkitError::io(format!("remove {}", path.display()), e))?;
        }
        fs::create_dir_all(path)
            .map_err(|e| TestkitError::io(format!("create directory {}", path.display()), e))?;
        process::make_private(path, owner)?;
        Ok(ScratchDir {
            path: path.to_path_buf(),
            keep: true,
        })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the directory in place when this handle is dropped.
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// What a server directory says about its running server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServerState {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Process id of the postmaster / mariadbd.
    pub pid: u32,
    /// Unix socket directory (PostgreSQL) or socket file (MariaDB).
    pub socket: PathBuf,
}

/// Records `state` in `dir` (atomically: readers never see half a file).
pub(crate) fn write_state(dir: &Path, state: &ServerState) -> Result<(), TestkitError> {
    let text = format!(
        "port={}\npid={}\nsocket={}\n",
        state.port,
        state.pid,
        state.socket.display()
    );
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    fs::write(&tmp, text)
        .and_then(|()| fs::rename(&tmp, dir.join(STATE_FILE)))
        .map_err(|e| TestkitError::io(format!("write server state in {}", dir.display()), e))
}

/// Reads the state recorded in `dir`, if any.
pub(crate) fn read_state(dir: &Path) -> Option<ServerState> {
    let text = fs::read_to_string(dir.join(STATE_FILE)).ok()?;
    let value = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    Some(ServerState {
        port: value("port")?.parse().ok()?,
        pid: value("pid")?.parse().ok()?,
        socket: value("socket")?.into(),
    })
}

/// Stops the server recorded in `dir` if that pid still runs there:
/// `escalation` signals in turn. True if no such server is left running.
pub(crate) fn stop_recorded_server(dir: &Path, escalation: &[(Signal, Duration)]) -> bool {
    match read_state(dir) {
        Some(state) if process::runs_with(state.pid, dir) => {
            ServerProcess::adopt(state.pid).stop(escalation)
        }
        _ => true,
    }
}

/// Whether the process that created a per-test directory is still alive;
/// `None` when the directory has no (readable) owner record.
fn owner_alive(dir: &Path) -> Option<bool> {
    let text = fs::read_to_string(dir.join(OWNER_FILE)).ok()?;
    let mut fields = text.split_whitespace();
    let pid: u32 = fields.next()?.parse().ok()?;
    let started: u64 = fields.next()?.parse().ok()?;
    Some(process::is_alive(pid) && process::start_time(pid) == Some(started))
}

/// Stops the servers of, and removes, per-test directories whose test
/// process is gone.
fn sweep_orphans() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
            continue;
        };
        let first_signal = if rest.starts_with("pg-") {
            Signal::Quit
        } else if rest.starts_with("mariadb-") {
            Signal::Kill
        } else {
            continue;
        };
        let path = entry.path();
        match owner_alive(&path) {
            Some(true) => continue,
            Some(false) => {}
            None => {
                let age = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok());
                if age.is_none_or(|age| age < OWNERLESS_GRACE) {
                    continue;
                }
            }
        }
        let escalation = [
            (first_signal, Duration::from_secs(10)),
            (Signal::Kill, Duration::from_secs(5)),
        ];
        if stop_recorded_server(&path, &escalation) {
            let _ = fs::remove_dir_all(&path);
        }
    }
}
