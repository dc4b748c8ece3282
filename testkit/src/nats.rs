//! Throwaway NATS servers with JetStream (`nats-server -js`) for the bus tests: a private
//! store directory, a free port on 127.0.0.1, stopped and deleted on drop. The machine's own
//! server (4222) is never used.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::TestkitError;
use crate::process::{self, ServerProcess, Signal};
use crate::scratch::{self, ScratchDir, ServerState};

/// How long a start may take before it is a failure.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How a server is stopped: a clean shutdown, then a kill.
const STOP: &[(Signal, Duration)] = &[
    (Signal::Term, Duration::from_secs(10)),
    (Signal::Kill, Duration::from_secs(5)),
];

/// A running `nats-server -js` of one test.
#[derive(Debug)]
pub struct NatsServer {
    dir: ScratchDir,
    program: PathBuf,
    port: u16,
    process: Option<ServerProcess>,
}

impl NatsServer {
    /// Starts a JetStream server on a free port with a fresh store.
    pub fn start() -> Result<NatsServer, TestkitError> {
        let program = process::find_program(
            &["nats-server"],
            "DUPLEX_NATS_BINDIR",
            &["/usr/sbin", "/usr/bin"],
            "install the Debian package nats-server (scripts/install-deps does)",
        )?;
        let dir = ScratchDir::create_temp("nats", None)?;
        let port = process::free_port()?;
        let mut server = NatsServer {
            dir,
            program,
            port,
            process: None,
        };
        server.start_again()?;
        Ok(server)
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// Starts the (stopped) server again on the same port and store.
    pub fn start_again(&mut self) -> Result<(), TestkitError> {
        let config = self.dir.path().join("nats.conf");
        let store = self.dir.path().join("jetstream");
        fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:{}\"\nmax_payload: 8MB\njetstream {{\n  store_dir: \"{}\"\n}}\n",
                self.port,
                store.display()
            ),
        )
        .map_err(|e| TestkitError::io(format!("write {}", config.display()), e))?;
        let log = self.log_path();
        let from = process::log_len(&log);
        let mut command = process::command(&self.program);
        command.arg("-c").arg(&config);
        let mut child = ServerProcess::spawn(&mut command, &log, None)?;
        scratch::write_state(
            self.dir.path(),
            &ServerState {
                port: self.port,
                pid: child.pid(),
                socket: self.dir.path().to_owned(),
            },
        )?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if fs::read_to_string(&log).is_ok_and(|text| {
                text.get(from as usize..)
                    .is_some_and(|t| t.contains("Server is ready"))
            }) && process::accepts_tcp(self.port)
            {
                self.process = Some(child);
                return Ok(());
            }
            if child.has_exited() || Instant::now() >= deadline {
                child.stop(STOP);
                return Err(TestkitError::Server {
                    server: format!("nats-server in {}", self.dir.path().display()),
                    problem: "did not become ready".into(),
                    log: log.clone(),
                    log_tail: process::log_tail(&log, from, 30),
                });
            }
            std::thread::sleep(process::POLL_INTERVAL);
        }
    }

    /// Stops the server cleanly (its store stays for [`NatsServer::start_again`]).
    pub fn shut_down(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop(STOP);
        }
    }

    /// Stops and starts the server again, keeping its store.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.shut_down();
        self.start_again()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}
