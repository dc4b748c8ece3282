//! End-to-end benchmark of the bus (NATS JetStream): `duplex run --role reader` and `--role
//! writer` processes against the one-process `duplex run`, on the same workload, in the same
//! run, PostgreSQL -> PostgreSQL.
//!
//! # Running it
//!
//! ```sh
//! cargo build --release --bin duplex && cargo bench --bench bus
//! ```
//!
//! Like `benches/replication.rs` it runs the release `duplex` next to its profile directory
//! (or `$DUPLEX_BENCH_BIN`) and only prints how to run it without `--bench`. Sizes:
//! `DUPLEX_BENCH_ROWS` (one large transaction, default 200,000), `DUPLEX_BENCH_TXNS`
//! (single-row transactions, 20,000), `DUPLEX_BENCH_SECONDS` (10) at `DUPLEX_BENCH_RATE`
//! (500 txn/s) for the latency, `DUPLEX_BENCH_FANOUT` (the numbers of targets, default
//! `1,4,16`), `DUPLEX_BENCH_TIMEOUT` (seconds one wait may take, 240).
//!
//! # Output
//!
//! One JSON object per line on stdout per case (`"bench": "bus"`, `case`, `mode`
//! `one-process` or `bus`, `targets`, the figures, or `error` with the tail of the logs), then a
//! Markdown table. Progress goes to stderr.
//!
//! # Set-up
//!
//! One throwaway PostgreSQL server (the testkit's settings but `synchronous_commit=on`, as in
//! `benches/replication.rs`) and one `nats-server -js` (file storage in a temporary directory,
//! `max_payload: 8MB`). Every case gets a fresh source database, fresh target databases with the
//! table `bench (id bigint PK, a int, b text, c numeric(12,2), d timestamptz)`, fresh state
//! directories and fresh processes: `one-process` is one `duplex run` with a one-way mapping
//! per target; `bus` is the same configuration with a `[bus]` (its own stream prefix per
//! case) run as one `--role reader` and one `--role writer --site T` per target. Timing starts
//! once the source's slot is active and a warm-up row (id 0) reached every target.
//!
//! # Cases
//!
//! 1. `bulk` (1 target): one transaction inserting `ROWS` rows; from the acknowledged COMMIT
//!    to the poll (every 20 ms, `max(id)`) that sees the last row on the target. Through the
//!    bus the transaction goes in parts of 10,000 changes.
//! 2. `latency` (1 target): one row per autocommit transaction at `RATE` per second for
//!    `SECONDS`; each id's latency is from sending its INSERT to the first poll of the target
//!    (every 1 ms) that sees it (ids are applied in commit order, so `max(id)` covers every
//!    smaller id). p50 / p99 / max.
//! 3. `txns` (N targets for each N of `FANOUT`): `TXNS` single-row transactions from a
//!    server-side loop (a procedure committing after each insert); from just before the CALL
//!    to the poll that sees the last id on every target (`txn_per_s`), against the source's
//!    own rate (`source_txn_per_s`); then every target is compared with the source row for
//!    row (count and an md5 over all rows in id order), and the case fails when one differs.
//!    With N = 1 it is the throughput comparison of the two modes.
//!
//! `cpu_s` is the CPU time (user + system) of the duplex processes of the case (all of them),
//! read before they are stopped; `peak_rss_mib` their summed peak resident sets.

mod harness;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duplex_testkit::{NatsServer, PgDatabase, PgOptions, PgServer};
use harness::{BenchResult, DuplexProcess, env_u64, load_figures, percentile, round, secs};
use serde_json::{Value, json};

/// How often the throughput cases poll the targets.
const THROUGHPUT_POLL: Duration = Duration::from_millis(20);
/// How often the latency observer polls the target.
const LATENCY_POLL: Duration = Duration::from_millis(1);
/// How long the stream may take to come up and carry the warm-up row.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

const TABLE: &str =
    "CREATE TABLE bench (id bigint PRIMARY KEY, a int, b text, c numeric(12,2), d timestamptz)";
const PROCEDURE: &str = "CREATE PROCEDURE load_txns(first_id bigint, total bigint) \
     LANGUAGE plpgsql AS $$ BEGIN \
       FOR i IN first_id..first_id + total - 1 LOOP \
         INSERT INTO bench VALUES (i, i % 1000, md5(i::text), (i % 100000) / 100.0, now()); \
         COMMIT; \
       END LOOP; \
     END $$";
const INSERT_ROW: &str =
    "INSERT INTO bench VALUES ($1, $1 % 1000, md5($1::text), ($1 % 100000) / 100.0, now())";

/// Workload sizes, from the environment.
#[derive(Clone, Debug)]
struct Sizes {
    rows: u64,
    txns: u64,
    seconds: u64,
    rate: u64,
    fanout: Vec<usize>,
    timeout: Duration,
}

impl Sizes {
    fn from_env() -> BenchResult<Sizes> {
        let fanout = std::env::var("DUPLEX_BENCH_FANOUT").unwrap_or_else(|_| "1,4,16".into());
        Ok(Sizes {
            rows: env_u64("DUPLEX_BENCH_ROWS", 200_000)?,
            txns: env_u64("DUPLEX_BENCH_TXNS", 20_000)?,
            seconds: env_u64("DUPLEX_BENCH_SECONDS", 10)?,
            rate: env_u64("DUPLEX_BENCH_RATE", 500)?.max(1),
            fanout: fanout
                .split(',')
                .map(|n| n.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("DUPLEX_BENCH_FANOUT={fanout:?}: {e}"))?,
            timeout: Duration::from_secs(env_u64("DUPLEX_BENCH_TIMEOUT", 240)?),
        })
    }
}

/// How the case runs duplex.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    OneProcess,
    Bus,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::OneProcess => "one-process",
            Mode::Bus => "bus",
        }
    }
}

/// A measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Measure {
    Bulk,
    Txns,
    Latency,
}

impl Measure {
    fn name(self) -> &'static str {
        match self {
            Measure::Bulk => "bulk",
            Measure::Txns => "txns",
            Measure::Latency => "latency",
        }
    }
}

/// A connection as the `duplex` account.
struct Conn {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl Conn {
    async fn open(db: &PgDatabase) -> BenchResult<Conn> {
        let (client, connection) =
            tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await?;
        Ok(Conn {
            client,
            connection: tokio::spawn(connection),
        })
    }

    async fn max_id(&self) -> BenchResult<i64> {
        let row = self
            .client
            .query_one("SELECT coalesce(max(id), -1) FROM bench", &[])
            .await?;
        Ok(row.try_get(0)?)
    }

    /// The row count and an md5 over every row in id order.
    async fn fingerprint(&self) -> BenchResult<(i64, String)> {
        let row = self
            .client
            .query_one(
                "SELECT count(*), md5(coalesce(string_agg(concat_ws('|', id, a, b, c, d), ',' ORDER BY id), '')) FROM bench",
                &[],
            )
            .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    async fn close(self) {
        drop(self.client);
        let _ = self.connection.await;
    }
}

/// One case: a source, its targets, the duplex processes. Dropping it kills the processes and
/// drops the slot.
struct Case {
    processes: Vec<DuplexProcess>,
    source: PgDatabase,
    targets: Vec<PgDatabase>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Case {
    async fn create(
        pg: &PgServer,
        nats: &NatsServer,
        bin: &Path,
        mode: Mode,
        targets: usize,
        prefix: &str,
    ) -> BenchResult<Case> {
        let source = pg.try_create_database()?;
        source.execute_as_duplex(TABLE)?;
        source.execute_as_duplex(PROCEDURE)?;
        let mut dbs = Vec::new();
        for _ in 0..targets {
            let db = pg.try_create_database()?;
            db.execute_as_duplex(TABLE)?;
            dbs.push(db);
        }
        let mut text = format!(
            "[sites.{0}]\nkind = \"postgres\"\nurl = \"{1}\"\n\n",
            source.name(),
            source.url()
        );
        for db in &dbs {
            text += &format!(
                "[sites.{0}]\nkind = \"postgres\"\nurl = \"{1}\"\n\n",
                db.name(),
                db.url()
            );
        }
        if mode == Mode::Bus {
            text += &format!(
                "[bus]\nkind = \"nats\"\nurl = \"{}\"\nstream_prefix = \"{prefix}\"\n\n",
                nats.url()
            );
        }
        for db in &dbs {
            text += &format!(
                "[[mappings]]\nname = \"bench_{t}\"\ntables = {{ {s} = \"public.bench\", {t} = \"public.bench\" }}\ndirection = \"{s}->{t}\"\n\n",
                s = source.name(),
                t = db.name()
            );
        }
        let mut roles: Vec<Vec<String>> = Vec::new();
        match mode {
            Mode::OneProcess => roles.push(vec!["run".into()]),
            Mode::Bus => {
                roles.push(vec!["run".into(), "--role".into(), "reader".into()]);
                for db in &dbs {
                    roles.push(vec![
                        "run".into(),
                        "--role".into(),
                        "writer".into(),
                        "--site".into(),
                        db.name().to_owned(),
                    ]);
                }
            }
        }
        let mut processes = Vec::new();
        let mut dirs = Vec::new();
        for args in roles {
            let dir = tempfile::tempdir()?;
            let config = dir.path().join("duplex.toml");
            std::fs::write(&config, &text)?;
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            processes.push(DuplexProcess::spawn(
                bin,
                &config,
                &args,
                dir.path().join("duplex.log"),
            )?);
            dirs.push(dir);
        }
        Ok(Case {
            processes,
            source,
            targets: dbs,
            _dirs: dirs,
        })
    }

    fn check_running(&mut self) -> BenchResult<()> {
        for process in &mut self.processes {
            process.check_running()?;
        }
        Ok(())
    }

    /// Waits until the slot is active and the warm-up row (id 0) reached every target.
    async fn ready(&mut self, source: &Conn, targets: &[Conn]) -> BenchResult<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let active = self.source.psql(
                "SELECT count(*) FROM pg_replication_slots WHERE database = current_database() AND active",
            )?;
            if active.trim() != "0" {
                break;
            }
            self.check_running()?;
            if Instant::now() > deadline {
                return Err("the change stream did not start in time".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        source
            .client
            .batch_execute("INSERT INTO bench VALUES (0, 0, md5('0'), 0, now())")
            .await?;
        self.wait_all(targets, 0, READY_TIMEOUT).await?;
        Ok(())
    }

    /// Polls every target until each holds `last`; the instant the last one did.
    async fn wait_all(
        &mut self,
        targets: &[Conn],
        last: i64,
        timeout: Duration,
    ) -> BenchResult<Instant> {
        let deadline = Instant::now() + timeout;
        let mut done = vec![false; targets.len()];
        loop {
            for (i, target) in targets.iter().enumerate() {
                if !done[i] {
                    done[i] = target.max_id().await? >= last;
                }
            }
            let now = Instant::now();
            if done.iter().all(|d| *d) {
                return Ok(now);
            }
            self.check_running()?;
            if now > deadline {
                let behind = done.iter().filter(|d| !**d).count();
                return Err(format!(
                    "timed out after {} s: {behind} target(s) do not hold id {last}",
                    timeout.as_secs()
                )
                .into());
            }
            tokio::time::sleep(THROUGHPUT_POLL).await;
        }
    }

    /// CPU seconds and summed peak RSS of the processes, then SIGTERM.
    fn finish(&mut self, result: &mut Value) -> BenchResult<()> {
        let mut cpu = 0.0;
        let mut kib = 0;
        for process in &self.processes {
            cpu += process.cpu_seconds().unwrap_or(0.0);
            kib += process.peak_rss_kib()?;
        }
        result["cpu_s"] = json!(round(cpu, 2));
        result["peak_rss_mib"] = json!(round(kib as f64 / 1024.0, 1));
        for process in &mut self.processes {
            process.terminate()?;
        }
        Ok(())
    }

    fn log_tails(&self) -> String {
        self.processes
            .iter()
            .map(|p| p.log_tail(8))
            .collect::<Vec<_>>()
            .join("\n---\n")
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        for process in &mut self.processes {
            process.kill();
        }
        let slots = self
            .source
            .psql("SELECT slot_name FROM pg_replication_slots WHERE database = current_database()")
            .unwrap_or_default();
        for slot in slots.lines().map(str::trim).filter(|s| !s.is_empty()) {
            if let Err(e) = harness::drop_slot(&self.source, slot) {
                eprintln!("bench: could not drop the replication slot {slot}: {e}");
            }
        }
    }
}

async fn bulk(
    case: &mut Case,
    source: &Conn,
    targets: &[Conn],
    sizes: &Sizes,
) -> BenchResult<Value> {
    let n = sizes.rows;
    let begin = Instant::now();
    source
        .client
        .batch_execute(&format!(
            "INSERT INTO bench SELECT i, i % 1000, md5(i::text), (i % 100000) / 100.0, \
             timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second' \
             FROM generate_series(1::bigint, {n}) i"
        ))
        .await?;
    let committed = Instant::now();
    let last = case.wait_all(targets, n as i64, sizes.timeout).await?;
    let source_s = committed - begin;
    let replicate = last.saturating_duration_since(committed);
    let mut result = json!({
        "rows": n,
        "source_s": secs(source_s),
        "commit_to_visible_s": secs(replicate),
        "rows_per_s": round(n as f64 / replicate.as_secs_f64(), 0),
        "ratio_vs_source": round(replicate.as_secs_f64() / source_s.as_secs_f64(), 2),
        "poll_ms": THROUGHPUT_POLL.as_millis() as u64,
    });
    equal(source, targets, &mut result).await?;
    case.finish(&mut result)?;
    Ok(result)
}

/// `TXNS` single-row transactions until every target holds the last; then row equality.
async fn txns(
    case: &mut Case,
    source: &Conn,
    targets: &[Conn],
    sizes: &Sizes,
) -> BenchResult<Value> {
    let n = sizes.txns;
    let loader = Conn::open(&case.source).await?;
    let begin = Instant::now();
    let call = tokio::spawn(async move {
        let result = loader
            .client
            .batch_execute(&format!("CALL load_txns(1, {n})"))
            .await;
        let done = Instant::now();
        loader.close().await;
        result.map(|()| done)
    });
    let waited = case.wait_all(targets, n as i64, sizes.timeout).await;
    let source_done = call.await??;
    let last = waited?;
    let mut result = load_figures("txn", n, begin, source_done, last, THROUGHPUT_POLL);
    equal(source, targets, &mut result).await?;
    case.finish(&mut result)?;
    Ok(result)
}

/// Every target equals the source row for row, or an error naming how many do not.
async fn equal(source: &Conn, targets: &[Conn], result: &mut Value) -> BenchResult<()> {
    let expected = source.fingerprint().await?;
    let mut differing = 0;
    for target in targets {
        if target.fingerprint().await? != expected {
            differing += 1;
        }
    }
    if differing > 0 {
        return Err(format!(
            "{differing} of {} target(s) differ from the source ({} rows)",
            targets.len(),
            expected.0
        )
        .into());
    }
    result["rows_per_target"] = json!(expected.0);
    result["targets_equal"] = json!(true);
    Ok(())
}

async fn latency(case: &mut Case, sizes: &Sizes) -> BenchResult<Value> {
    let total = (sizes.rate * sizes.seconds) as usize;
    let period = Duration::from_secs_f64(1.0 / sizes.rate as f64);
    let generator_conn = Conn::open(&case.source).await?;
    let observer_conn = Conn::open(&case.targets[0]).await?;
    let start = Instant::now() + Duration::from_millis(50);
    let generator = tokio::spawn(async move {
        let statement = generator_conn
            .client
            .prepare_typed(INSERT_ROW, &[tokio_postgres::types::Type::INT8])
            .await?;
        let mut sent = Vec::with_capacity(total);
        for k in 0..total {
            tokio::time::sleep_until((start + period * k as u32).into()).await;
            sent.push(Instant::now());
            generator_conn
                .client
                .execute(&statement, &[&(k as i64 + 1)])
                .await?;
        }
        generator_conn.close().await;
        BenchResult::Ok(sent)
    });
    let observe_until = start + Duration::from_secs(sizes.seconds) + sizes.timeout;
    let observer = tokio::spawn(async move {
        let mut seen: Vec<Instant> = Vec::with_capacity(total);
        while seen.len() < total {
            let asked = Instant::now();
            let max = observer_conn.max_id().await?.max(0) as usize;
            let answered = Instant::now();
            while seen.len() < max.min(total) {
                seen.push(answered);
            }
            if answered > observe_until {
                return Err(format!("timed out: {} of {total} rows visible", seen.len()).into());
            }
            tokio::time::sleep_until((asked + LATENCY_POLL).into()).await;
        }
        observer_conn.close().await;
        BenchResult::Ok(seen)
    });
    let (generated, observed) = tokio::join!(generator, observer);
    case.check_running()?;
    let sent = generated??;
    let seen = observed??;
    let mut latencies: Vec<f64> = sent
        .iter()
        .zip(&seen)
        .map(|(s, v)| v.saturating_duration_since(*s).as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let sending = sent[sent.len() - 1] - sent[0];
    let mut result = json!({
        "txns": total,
        "target_txn_per_s": sizes.rate,
        "achieved_txn_per_s": round((total - 1) as f64 / sending.as_secs_f64(), 0),
        "p50_ms": round(percentile(&latencies, 0.50), 2),
        "p99_ms": round(percentile(&latencies, 0.99), 2),
        "max_ms": round(latencies[latencies.len() - 1], 2),
    });
    case.finish(&mut result)?;
    Ok(result)
}

/// What every case shares.
struct Bench {
    pg: PgServer,
    nats: NatsServer,
    bin: PathBuf,
    sizes: Sizes,
}

/// Case `number` of the run: `measure` with `targets` targets, duplex run as `mode`.
async fn run_case(
    bench: Arc<Bench>,
    measure: Measure,
    mode: Mode,
    targets: usize,
    number: usize,
) -> Value {
    let (pg, nats, bin, sizes) = (&bench.pg, &bench.nats, &bench.bin, &bench.sizes);
    let mut base = json!({
        "bench": "bus",
        "case": measure.name(),
        "mode": mode.name(),
        "targets": targets,
    });
    let prefix = format!("bench{number}");
    let mut case = match Case::create(pg, nats, bin, mode, targets, &prefix).await {
        Ok(case) => case,
        Err(e) => {
            base["error"] = json!(format!("set-up: {e}"));
            return base;
        }
    };
    let outcome = async {
        let source = Conn::open(&case.source).await?;
        let mut conns = Vec::new();
        for target in &case.targets {
            conns.push(Conn::open(target).await?);
        }
        case.ready(&source, &conns).await?;
        let result = match measure {
            Measure::Bulk => bulk(&mut case, &source, &conns, sizes).await,
            Measure::Txns => txns(&mut case, &source, &conns, sizes).await,
            Measure::Latency => latency(&mut case, sizes).await,
        };
        source.close().await;
        for conn in conns {
            conn.close().await;
        }
        result
    }
    .await;
    harness::record_outcome(&mut base, outcome, || case.log_tails());
    base
}

fn summary(results: &[Value]) -> String {
    let num = |v: &Value, key: &str| v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let mut out = String::from(
        "| case | mode | targets | throughput / latency | same-run baseline | duplex CPU | peak RSS (all processes) |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let case = r["case"].as_str().unwrap_or("?");
        let mode = r["mode"].as_str().unwrap_or("?");
        let targets = &r["targets"];
        if let Some(error) = r.get("error").and_then(Value::as_str) {
            let first = error.lines().next().unwrap_or("");
            out.push_str(&format!(
                "| {case} | {mode} | {targets} | error: {first} | | | |\n"
            ));
            continue;
        }
        let (figure, baseline) = match case {
            "bulk" => (
                format!(
                    "{:.0} rows/s ({:.2} s after commit)",
                    num(r, "rows_per_s"),
                    num(r, "commit_to_visible_s")
                ),
                format!("source INSERT {:.2} s", num(r, "source_s")),
            ),
            "latency" => (
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms (max {:.1}) at {:.0} txn/s",
                    num(r, "p50_ms"),
                    num(r, "p99_ms"),
                    num(r, "max_ms"),
                    num(r, "achieved_txn_per_s")
                ),
                String::new(),
            ),
            _ => (
                format!(
                    "{:.0} txn/s into every target ({:.2} s)",
                    num(r, "txn_per_s"),
                    num(r, "end_to_end_s")
                ),
                format!("source {:.0} txn/s", num(r, "source_txn_per_s")),
            ),
        };
        out.push_str(&format!(
            "| {case} | {mode} | {targets} | {figure} | {baseline} | {:.1} s | {:.0} MiB |\n",
            num(r, "cpu_s"),
            num(r, "peak_rss_mib")
        ));
    }
    out
}

fn main() {
    harness::main_with("bus", run);
}

fn run() -> BenchResult<()> {
    let sizes = Sizes::from_env()?;
    let bin = harness::duplex_binary("bus")?;
    eprintln!("bench: {sizes:?}, duplex at {}", bin.display());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let fanout = sizes.fanout.clone();
    let bench = Arc::new(Bench {
        pg: PgServer::start(PgOptions::default().setting("synchronous_commit", "on"))?,
        nats: NatsServer::start()?,
        bin,
        sizes,
    });
    let started = Instant::now();
    let mut plan = Vec::new();
    for measure in [Measure::Bulk, Measure::Latency] {
        for mode in [Mode::OneProcess, Mode::Bus] {
            plan.push((measure, mode, 1));
        }
    }
    for &n in &fanout {
        for mode in [Mode::OneProcess, Mode::Bus] {
            plan.push((Measure::Txns, mode, n));
        }
    }
    let mut results = Vec::new();
    for (number, (measure, mode, targets)) in plan.into_iter().enumerate() {
        eprintln!(
            "bench: {} {} x{targets} ({:.0} s so far)",
            measure.name(),
            mode.name(),
            started.elapsed().as_secs_f64()
        );
        let task = runtime.spawn(run_case(bench.clone(), measure, mode, targets, number));
        let result = runtime.block_on(task).unwrap_or_else(|e| {
            json!({
                "bench": "bus",
                "case": measure.name(),
                "mode": mode.name(),
                "targets": targets,
                "error": format!("the case panicked: {e}"),
            })
        });
        println!("{result}");
        results.push(result);
    }
    drop(runtime);
    println!();
    print!("{}", summary(&results));
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
