//! What the three end-to-end benches (`replication`, `backfill`, `merge`) share: finding the
//! release `duplex` binary, the `--bench` gate of `main`, sizes from the environment, the two
//! throwaway servers, a `duplex` process logging to a file (peak RSS, SIGTERM, its log's
//! tail), dropping duplex's replication slot, and the JSON figures they all report.
//!
//! Each bench is its own crate that includes this module with `mod harness;` and uses only a
//! part of it, hence the `dead_code` allowance below.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use duplex_testkit::{MariaOptions, MariaServer, PgDatabase, PgOptions, PgServer};
use serde_json::{Value, json};

/// The error type of every bench step.
pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Runs `run` only when `cargo bench` passed `--bench` (not under `cargo test --benches`);
/// otherwise prints how to run the bench `name`. Exits with 1 when `run` fails.
pub fn main_with(name: &str, run: fn() -> BenchResult<()>) {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "{name} bench: run with `cargo build --release --bin duplex && cargo bench --bench {name}`"
        );
        return;
    }
    if let Err(e) = run() {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

/// The whole number in the environment variable `name` (`_` separators allowed), or `default`.
pub fn env_u64(name: &str, default: u64) -> BenchResult<u64> {
    match std::env::var(name) {
        Ok(text) => text
            .replace('_', "")
            .parse()
            .map_err(|e| format!("{name}={text:?}: {e}").into()),
        Err(_) => Ok(default),
    }
}

/// The release `duplex` next to the bench `name` (`target/release/deps/<name>-*`), or
/// `$DUPLEX_BENCH_BIN`.
pub fn duplex_binary(name: &str) -> BenchResult<PathBuf> {
    if let Some(path) = std::env::var_os("DUPLEX_BENCH_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot locate the target directory")?
        .join("duplex");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing: run `cargo build --release --bin duplex && cargo bench --bench {name}`",
            bin.display()
        )
        .into())
    }
}

/// The two throwaway servers: PostgreSQL with `synchronous_commit=on` (see
/// `benches/replication.rs` for why), MariaDB with the testkit's settings.
pub struct Servers {
    pub pg: PgServer,
    pub maria: MariaServer,
}

impl Servers {
    /// Starts both servers.
    pub fn start() -> BenchResult<Servers> {
        Ok(Servers {
            pg: PgServer::start(PgOptions::default().setting("synchronous_commit", "on"))?,
            maria: MariaServer::start(MariaOptions::default())?,
        })
    }
}

/// A `[sites.<name>]` section of duplex's config.
pub fn site_toml(name: &str, kind: &str, url: &str) -> String {
    format!("[sites.{name}]\nkind = \"{kind}\"\nurl = \"{url}\"\n\n")
}

/// Drops the replication slot `slot` of `db` if it exists (its reader stopped), retrying for
/// up to 15 s while its WAL sender exits.
pub fn drop_slot(db: &PgDatabase, slot: &str) -> BenchResult<()> {
    let sql = format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name = '{slot}'"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match db.psql(&sql) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The CPU seconds (user + system) of process `pid` from `/proc/<pid>/stat`: its own, and with
/// `reaped` also those of its children that exited and were waited for.
pub fn cpu_seconds(pid: u32, reaped: bool) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3)?.parse::<f64>().ok();
    let mut total = ticks(14)? + ticks(15)?;
    if reaped {
        total += ticks(16)? + ticks(17)?;
    }
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Some(total / 100.0)
}

/// The CPU seconds of a whole server: the process `pid` (the postmaster), every child it has
/// reaped (backends that ended) and every child still running.
pub fn server_cpu_seconds(pid: u32) -> f64 {
    let mut total = cpu_seconds(pid, true).unwrap_or(0.0);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let parent = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                });
            if parent == Some(pid) {
                total += cpu_seconds(child, false).unwrap_or(0.0);
            }
        }
    }
    total
}

/// A running `duplex --config F <args>`, its stdout and stderr in a log file.
pub struct DuplexProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl DuplexProcess {
    /// This process's CPU seconds so far (user + system).
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.child.id(), false)
    }

    /// Starts `bin --config <config> <args>` with `DUPLEX_LOG=info`, logging to `log`.
    pub fn spawn(
        bin: &Path,
        config: &Path,
        args: &[&str],
        log: PathBuf,
    ) -> BenchResult<DuplexProcess> {
        DuplexProcess::spawn_with(bin, config, args, log, &[])
    }

    /// [`DuplexProcess::spawn`] with these environment variables set too.
    pub fn spawn_with(
        bin: &Path,
        config: &Path,
        args: &[&str],
        log: PathBuf,
        env: &[(&str, &str)],
    ) -> BenchResult<DuplexProcess> {
        let file = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .args(args)
            .env("DUPLEX_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        Ok(DuplexProcess { child, log })
    }

    /// An error when the process has exited.
    pub fn check_running(&mut self) -> BenchResult<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(format!("duplex exited with {status}").into()),
        }
    }

    /// The text of `/proc/<pid>/<file>`.
    pub fn proc_file(&self, file: &str) -> BenchResult<String> {
        Ok(std::fs::read_to_string(format!(
            "/proc/{}/{file}",
            self.child.id()
        ))?)
    }

    /// `VmHWM` (peak resident set) in KiB.
    pub fn peak_rss_kib(&self) -> BenchResult<u64> {
        self.proc_file("status")?
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| "no VmHWM in /proc/<pid>/status".into())
    }

    /// SIGTERM, then up to 30 s for a clean exit (SIGKILL after); the exit code.
    pub fn terminate(&mut self) -> BenchResult<Option<i32>> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status.code());
        }
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err("duplex did not stop within 30 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL if still running, and reaps it.
    pub fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

/// The last `lines` lines of the file at `log` (empty when it is unreadable).
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `producer | consumer` to the end; its wall time. `what` names it in the error.
pub fn time_pipe(
    producer: &mut Command,
    consumer: &mut Command,
    what: &str,
) -> BenchResult<Duration> {
    let start = Instant::now();
    let mut out = producer.stdout(Stdio::piped()).spawn()?;
    let pipe = out.stdout.take().ok_or("no stdout")?;
    let mut into = consumer.stdin(Stdio::from(pipe)).spawn()?;
    let produced = out.wait()?;
    let consumed = into.wait()?;
    let took = start.elapsed();
    if !produced.success() || !consumed.success() {
        return Err(format!("{what} failed: {produced} | {consumed}").into());
    }
    Ok(took)
}

/// Copies the fields of a case's outcome into its JSON line `base`, or on failure its `error`
/// and `log_tail()` (the tail of duplex's log).
pub fn record_outcome(
    base: &mut Value,
    outcome: BenchResult<Value>,
    log_tail: impl FnOnce() -> String,
) {
    match outcome {
        Ok(Value::Object(fields)) => {
            for (key, value) in fields {
                base[key] = value;
            }
        }
        Ok(other) => base["result"] = other,
        Err(e) => {
            base["error"] = json!(e.to_string());
            base["log_tail"] = json!(log_tail());
        }
    }
}

/// The figures of a load of `n` units (`unit` is `txn` or `rows`: the keys `txns`/`rows`,
/// `source_<unit>_per_s`, `<unit>_per_s`) that the source produced from `begin` to
/// `source_done` and that was all visible at `last`, polled every `poll`.
pub fn load_figures(
    unit: &str,
    n: u64,
    begin: Instant,
    source_done: Instant,
    last: Instant,
    poll: Duration,
) -> Value {
    let count_key = if unit == "txn" { "txns" } else { unit };
    let source_s = source_done - begin;
    let end_to_end = last.saturating_duration_since(begin);
    let mut result = json!({});
    result[count_key] = json!(n);
    result["source_s"] = json!(secs(source_s));
    result[format!("source_{unit}_per_s")] = json!(round(n as f64 / source_s.as_secs_f64(), 0));
    result["end_to_end_s"] = json!(secs(end_to_end));
    result[format!("{unit}_per_s")] = json!(round(n as f64 / end_to_end.as_secs_f64(), 0));
    result["ratio_vs_source"] = json!(round(end_to_end.as_secs_f64() / source_s.as_secs_f64(), 2));
    result["lag_after_source_s"] = json!(secs(last.saturating_duration_since(source_done)));
    result["poll_ms"] = json!(poll.as_millis() as u64);
    result
}

/// `value` rounded to `digits` decimals.
pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// Seconds, to the millisecond.
pub fn secs(d: Duration) -> f64 {
    round(d.as_secs_f64(), 3)
}

/// The value at quantile `q` of sorted, non-empty `values` (nearest rank).
pub fn percentile(values: &[f64], q: f64) -> f64 {
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}
