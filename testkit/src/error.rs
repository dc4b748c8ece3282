//! The one error type of the test kit.
//!
//! Every failure names what was being done and, when a server is involved,
//! carries the tail of that server's log, so a red CI run says why without
//! anyone having to log in and look.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why starting, using or stopping a throwaway server failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum TestkitError {
    /// A filesystem or process operation failed.
    Io {
        /// What was being done, e.g. "create directory /tmp/x".
        action: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// A program the test kit needs is not installed.
    MissingProgram {
        /// The program, e.g. "initdb".
        program: String,
        /// Where we looked and what to install.
        hint: String,
    },
    /// A helper program (initdb, psql, mariadb, ...) exited unsuccessfully.
    Command {
        /// The program that failed.
        program: String,
        /// What it was asked to do (arguments, the start of the SQL).
        detail: String,
        /// How it exited.
        status: String,
        /// What it printed on stderr (or stdout when stderr was empty).
        output: String,
    },
    /// A server did not come up in time, died, or would not stop.
    Server {
        /// Which server, e.g. "PostgreSQL in /tmp/duplex-testkit-pg-1a2b".
        server: String,
        /// What went wrong.
        problem: String,
        /// The server's log file.
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
    },
    /// The environment or the options are not usable.
    Config(String),
}

impl TestkitError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(action: impl Into<String>, source: io::Error) -> Self {
        TestkitError::Io {
            action: action.into(),
            source,
        }
    }

    /// Builds an error for a server, attaching the last lines of its log.
    pub(crate) fn server(
        server: impl Into<String>,
        problem: impl Into<String>,
        log: impl Into<PathBuf>,
        log_from: u64,
    ) -> Self {
        let log = log.into();
        let log_tail = crate::process::log_tail(&log, log_from, LOG_TAIL_LINES);
        TestkitError::Server {
            server: server.into(),
            problem: problem.into(),
            log,
            log_tail,
        }
    }
}

/// How many log lines an error carries.
const LOG_TAIL_LINES: usize = 40;

impl fmt::Display for TestkitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestkitError::Io { action, source } => write!(f, "{action}: {source}"),
            TestkitError::MissingProgram { program, hint } => {
                write!(f, "`{program}` not found: {hint}")
            }
            TestkitError::Command {
                program,
                detail,
                status,
                output,
            } => {
                write!(f, "`{program}` failed ({status}) while running {detail}")?;
                if !output.trim().is_empty() {
                    write!(f, ":\n{}", output.trim_end())?;
                }
                Ok(())
            }
            TestkitError::Server {
                server,
                problem,
                log,
                log_tail,
            } => write!(
                f,
                "{server}: {problem}\n--- last lines of {} ---\n{}\n--- end of log ---",
                log.display(),
                log_tail.trim_end()
            ),
            TestkitError::Config(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for TestkitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TestkitError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
