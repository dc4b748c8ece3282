//! End-to-end benchmark of `duplex run`: the real release binary replicating between
//! throwaway PostgreSQL and MariaDB servers, with baselines measured in the same run.
//!
//! # Running it
//!
//! ```sh
//! cargo build --release --bin duplex && cargo bench --bench replication
//! ```
//!
//! Benches get no `CARGO_BIN_EXE_duplex`, so the program runs the `duplex` binary next to its
//! own profile directory (`target/release/duplex`, or `$DUPLEX_BENCH_BIN`) and stops with a
//! message when it is missing: build it first, or the bench measures a stale binary. Without
//! the `--bench` argument `cargo bench` passes (e.g. under `cargo test --all-targets`) it only
//! prints how to run it. Sizes: `DUPLEX_BENCH_ROWS` (default 1,000,000), `DUPLEX_BENCH_TXNS`
//! (100,000), `DUPLEX_BENCH_SECONDS` (10), `DUPLEX_BENCH_RATE` (1,000 txn/s),
//! `DUPLEX_BENCH_TIMEOUT` (seconds one wait may take before the case fails, 240).
//!
//! # Output
//!
//! One JSON object per line on stdout for each case (`"bench": "replication"`, `direction`,
//! `case`, the figures below, or an `error` field with the tail of duplex's log when the case
//! failed: a failing direction never stops the others), then a human summary table whose lines
//! do not start with `{`. Progress goes to stderr.
//!
//! # Set-up
//!
//! One throwaway PostgreSQL and one MariaDB server from `duplex-testkit`, with the testkit's
//! settings (PostgreSQL `fsync=off`, `shared_buffers=32MB`; MariaDB
//! `innodb_flush_log_at_trx_commit=2`, `sync_binlog=0`) except that PostgreSQL runs with
//! `synchronous_commit=on`, its production default: with the testkit's `off`, a commit's WAL
//! is flushed only by the WAL writer (`wal_writer_delay`, 200 ms) and a logical WAL sender
//! sends only flushed WAL, which alone added ≈ 125 ms (p50) to every latency measured from a
//! PostgreSQL source. With `fsync=off` the flush is a `write()`, so commits stay cheap on both
//! sides and the figures measure duplex's CPU and round trips rather than the disks. Every case
//! gets fresh source and target databases, a table
//! `bench (id bigint PK, a int, b text, c numeric(12,2), d timestamptz)` (MariaDB: BIGINT, INT,
//! LONGTEXT, DECIMAL(12,2), DATETIME(6)), a fresh state directory and a fresh `duplex run`
//! process whose sites are named after their databases (so the slot is `duplex_<db>_<db>`).
//! The workload starts only when the stream is live (the slot is active in
//! `pg_replication_slots`, or a `Binlog Dump` thread is in MariaDB's process list) and a
//! warm-up row (id 0) has reached the target, so connection set-up and catalog look-ups are not
//! timed. Afterwards duplex gets SIGTERM and its slot is dropped, also when the case failed.
//!
//! # What is measured, per direction (PostgreSQL → MariaDB, PostgreSQL → PostgreSQL,
//! MariaDB → PostgreSQL)
//!
//! 1. `bulk`: one source transaction inserting `ROWS` rows (`INSERT … SELECT` from
//!    `generate_series` / MariaDB's `seq_1_to_N` table). `source_s` is the client's time from
//!    `BEGIN` to the acknowledged `COMMIT` (the baseline: what the source needed to produce the
//!    change). `commit_to_visible_s` is from that acknowledgement to the first poll (every
//!    20 ms, `SELECT max(id)` on the target) that sees the last id; `rows_per_s` is `ROWS`
//!    divided by it, `ratio_vs_source` is `commit_to_visible_s / source_s`. The whole
//!    transaction is decoded only at commit on both sources, so the replication time starts
//!    there. `first_visible_s` is when the first workload row showed up (equal to the last when
//!    the target applies the transaction atomically). Then, with duplex stopped, the target is
//!    truncated and the same rows are copied with the stock clients (the null baseline:
//!    `psql \copy … to stdout | psql \copy … from stdin`, `| mariadb LOAD DATA LOCAL INFILE`,
//!    or `mariadb --batch --quick | psql \copy`), giving `null_s` and `ratio_vs_null`. From a
//!    PostgreSQL source there is also a reader-only baseline (the "null target" that isolates
//!    the source side): a second `pgoutput` slot created just before the transaction is read
//!    with `pg_recvlogical` (duplex's publication, protocol 1) into `/dev/null` up to the LSN
//!    after the commit, with duplex stopped: `reader_s`, `ratio_vs_reader`. It is what
//!    PostgreSQL alone needs to decode (spilling to disk past `logical_decoding_work_mem`)
//!    and send the transaction.
//! 2. `txns`: `TXNS` single-row transactions committed back to back by a server-side loop (a
//!    plpgsql procedure with `COMMIT` after each `INSERT`; a MariaDB procedure with `START
//!    TRANSACTION; INSERT; COMMIT`). `source_s` is the `CALL`'s duration (the baseline),
//!    `end_to_end_s` is from just before the `CALL` (≈ the first commit) to the poll that sees
//!    the last id (20 ms granularity); `txn_per_s = TXNS / end_to_end_s`, against
//!    `source_txn_per_s`; `lag_after_source_s` is how long the target trailed after the source
//!    finished.
//! 3. `latency`: a generator (its own connection, tokio-postgres / mysql_async with a prepared
//!    statement) inserts one row per autocommit transaction on a fixed schedule of `RATE` per
//!    second for `SECONDS`, ids 1, 2, … in commit order, recording the instant each `INSERT`
//!    was sent. An observer on another connection polls `SELECT max(id)` on the target as often
//!    as tokio's 1 ms timer allows (the achieved mean interval is reported as `poll_ms`); the
//!    target applies in source commit order, so when `max(id)` reaches `m` every id ≤ `m` is
//!    visible, and each id is stamped with the instant the first poll result that covers it
//!    arrived. Latency = that instant − the send instant: it includes the source's commit
//!    round trip (reported separately as `source_commit_p50_ms`) and over-states the true
//!    commit-to-visible time by up to one poll interval plus one poll round trip (≈ 1–2 ms).
//!    p50, p99 and max in ms; `achieved_txn_per_s` is the rate the generator really reached.
//!    All of it shares 2 cores with both servers and duplex, so the tail includes scheduling.
//! 4. `peak_rss_mib`: `VmHWM` of the duplex process from `/proc/<pid>/status`, read at the end
//!    of each case before it is stopped; one process per case, so it is that case's peak.

mod harness;
#[path = "replication/sites.rs"]
mod sites;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duplex_testkit::{MariaDatabase, PgDatabase};
use harness::{
    BenchResult, DuplexProcess, Servers, env_u64, load_figures, percentile, round, secs, site_toml,
};
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};
use sites::{Conn, Site};

/// How often the throughput cases poll the target.
const THROUGHPUT_POLL: Duration = Duration::from_millis(20);
/// How often the latency observer polls the target (tokio's timer resolution).
const LATENCY_POLL: Duration = Duration::from_millis(1);
/// How long the stream may take to come up and carry the warm-up row.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

const PG_TABLE: &str =
    "CREATE TABLE bench (id bigint PRIMARY KEY, a int, b text, c numeric(12,2), d timestamptz)";
const MARIA_TABLE: &str = "CREATE TABLE bench (id BIGINT PRIMARY KEY, a INT, b LONGTEXT, \
     c DECIMAL(12,2), d DATETIME(6)) ENGINE=InnoDB";
const PG_PROCEDURE: &str = "CREATE PROCEDURE load_txns(first_id bigint, total bigint) \
     LANGUAGE plpgsql AS $$ BEGIN \
       FOR i IN first_id..first_id + total - 1 LOOP \
         INSERT INTO bench VALUES (i, i % 1000, md5(i::text), (i % 100000) / 100.0, now()); \
         COMMIT; \
       END LOOP; \
     END $$";
const MARIA_PROCEDURE: &str = "CREATE PROCEDURE load_txns(first_id BIGINT, total BIGINT) \
     BEGIN \
       DECLARE i BIGINT DEFAULT first_id; \
       WHILE i < first_id + total DO \
         START TRANSACTION; \
         INSERT INTO bench VALUES (i, i % 1000, md5(i), (i % 100000) / 100, NOW(6)); \
         COMMIT; \
         SET i = i + 1; \
       END WHILE; \
     END";

/// Workload sizes, from the environment.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    rows: u64,
    txns: u64,
    seconds: u64,
    rate: u64,
    timeout: Duration,
}

impl Sizes {
    fn from_env() -> BenchResult<Sizes> {
        Ok(Sizes {
            rows: env_u64("DUPLEX_BENCH_ROWS", 1_000_000)?,
            txns: env_u64("DUPLEX_BENCH_TXNS", 100_000)?,
            seconds: env_u64("DUPLEX_BENCH_SECONDS", 10)?,
            rate: env_u64("DUPLEX_BENCH_RATE", 1_000)?.max(1),
            timeout: Duration::from_secs(env_u64("DUPLEX_BENCH_TIMEOUT", 240)?),
        })
    }
}

/// A database kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Pg,
    Maria,
}

/// One direction of flow.
#[derive(Clone, Copy, Debug)]
struct Flow {
    name: &'static str,
    source: Kind,
    target: Kind,
}

const FLOWS: [Flow; 3] = [
    Flow {
        name: "postgres->mariadb",
        source: Kind::Pg,
        target: Kind::Maria,
    },
    Flow {
        name: "postgres->postgres",
        source: Kind::Pg,
        target: Kind::Pg,
    },
    Flow {
        name: "mariadb->postgres",
        source: Kind::Maria,
        target: Kind::Pg,
    },
];

/// A measurement.
#[derive(Clone, Copy, Debug)]
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

/// One case: fresh databases, a config, one duplex process. Dropping it kills duplex, drops
/// the slot and then the databases.
struct Case {
    duplex: DuplexProcess,
    /// The slot of the reader-only baseline (`bulk` from PostgreSQL), once created.
    reader_slot: Option<String>,
    source: Site,
    target: Site,
    _dir: tempfile::TempDir,
}

impl Case {
    /// Creates the databases and schema, writes the config and starts duplex.
    async fn create(servers: &Servers, bin: &Path, flow: Flow) -> BenchResult<Case> {
        let source = Site::create(servers, flow.source)?;
        let target = Site::create(servers, flow.target)?;
        for (site, is_source) in [(&source, true), (&target, false)] {
            let (table, procedure) = match site {
                Site::Pg(_) => (PG_TABLE, PG_PROCEDURE),
                Site::Maria(_) => (MARIA_TABLE, MARIA_PROCEDURE),
            };
            let mut conn = Conn::open(site).await?;
            conn.execute(table).await?;
            if is_source {
                conn.execute(procedure).await?;
            }
            conn.close().await;
        }
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("duplex.toml");
        let mut text = String::new();
        for site in [&source, &target] {
            text.push_str(&site_toml(site.name(), site.kind_name(), &site.url()));
        }
        text.push_str(&format!(
            "[[mappings]]\nname = \"bench\"\ntables = {{ {src} = \"{src_table}\", {dst} = \"{dst_table}\" }}\ndirection = \"{src}->{dst}\"\n",
            src = source.name(),
            src_table = source.table(),
            dst = target.name(),
            dst_table = target.table(),
        ));
        std::fs::write(&config, text)?;
        let duplex = DuplexProcess::spawn(bin, &config, &["run"], dir.path().join("duplex.log"))?;
        Ok(Case {
            duplex,
            reader_slot: None,
            source,
            target,
            _dir: dir,
        })
    }

    /// Waits until the stream is live and the warm-up row (id 0) reached the target.
    async fn ready(&mut self, source: &mut Conn, target: &mut Conn) -> BenchResult<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.source.streaming()? {
            self.duplex.check_running()?;
            if Instant::now() > deadline {
                return Err("the change stream did not start within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        source.insert_row(0).await?;
        while target.max_id().await?.is_none() {
            self.duplex.check_running()?;
            if Instant::now() > deadline {
                return Err("the warm-up row did not reach the target within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Polls `max(id)` on the target every `THROUGHPUT_POLL` until it reaches `last`; returns
    /// the instants the first workload row and the last row were seen.
    async fn wait_visible(
        &mut self,
        target: &mut Conn,
        last: i64,
        timeout: Duration,
    ) -> BenchResult<(Instant, Instant)> {
        let deadline = Instant::now() + timeout;
        let mut first = None;
        loop {
            let max = target.max_id().await?.unwrap_or(-1);
            let now = Instant::now();
            if max > 0 && first.is_none() {
                first = Some(now);
            }
            if max >= last {
                return Ok((first.unwrap_or(now), now));
            }
            self.duplex.check_running()?;
            if now > deadline {
                return Err(format!(
                    "timed out after {} s: the target's max(id) is {max} of {last}",
                    timeout.as_secs()
                )
                .into());
            }
            tokio::time::sleep(THROUGHPUT_POLL).await;
        }
    }

    /// Peak RSS, then SIGTERM; both into `result`.
    fn finish(&mut self, result: &mut Value) -> BenchResult<()> {
        let kib = self.duplex.peak_rss_kib()?;
        result["peak_rss_mib"] = json!(round(kib as f64 / 1024.0, 1));
        result["duplex_exit"] = json!(self.duplex.terminate()?);
        Ok(())
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        self.duplex.kill();
        for slot in self.source.slot().iter().chain(&self.reader_slot) {
            if let Err(e) = self.source.drop_slot(slot) {
                eprintln!("bench: could not drop the replication slot {slot}: {e}");
            }
        }
    }
}

/// Case 1: one big transaction.
async fn bulk(
    case: &mut Case,
    source: &mut Conn,
    target: &mut Conn,
    sizes: Sizes,
) -> BenchResult<Value> {
    let n = sizes.rows;
    let insert = match case.source {
        Site::Pg(_) => format!(
            "INSERT INTO bench SELECT i, i % 1000, md5(i::text), (i % 100000) / 100.0, \
             timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second' \
             FROM generate_series(1::bigint, {n}) i"
        ),
        Site::Maria(_) => format!(
            "INSERT INTO bench SELECT seq, seq % 1000, md5(seq), (seq % 100000) / 100, \
             TIMESTAMP'2026-01-01 00:00:00' + INTERVAL seq SECOND FROM seq_1_to_{n}"
        ),
    };
    // The reader-only baseline's slot must exist before the transaction starts.
    if let Site::Pg(db) = &case.source {
        let slot = format!("bench_reader_{}", db.name());
        db.psql(&format!(
            "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
        ))?;
        case.reader_slot = Some(slot);
    }
    let begin = Instant::now();
    source.execute("BEGIN").await?;
    source.execute(&insert).await?;
    source.execute("COMMIT").await?;
    let committed = Instant::now();
    let end_lsn = match &case.source {
        Site::Pg(db) => Some(db.psql("SELECT pg_current_wal_lsn()")?.trim().to_owned()),
        Site::Maria(_) => None,
    };
    let (first, last) = case.wait_visible(target, n as i64, sizes.timeout).await?;
    let count = target.count().await?;
    if count != n as i64 + 1 {
        return Err(format!("the target has {count} rows, expected {}", n + 1).into());
    }
    let source_s = committed - begin;
    let replicate = last.saturating_duration_since(committed);
    let mut result = json!({
        "rows": n,
        "source_s": secs(source_s),
        "source_rows_per_s": round(n as f64 / source_s.as_secs_f64(), 0),
        "commit_to_visible_s": secs(replicate),
        "first_visible_s": secs(first.saturating_duration_since(committed)),
        "rows_per_s": round(n as f64 / replicate.as_secs_f64(), 0),
        "ratio_vs_source": round(replicate.as_secs_f64() / source_s.as_secs_f64(), 2),
        "poll_ms": THROUGHPUT_POLL.as_millis() as u64,
    });
    case.finish(&mut result)?;

    // The reader-only baseline: PostgreSQL decodes the same transaction for pg_recvlogical,
    // with duplex's publication and protocol, into /dev/null (duplex stopped).
    if let (Site::Pg(db), Some(slot), Some(publication), Some(lsn)) = (
        &case.source,
        &case.reader_slot,
        case.source.slot(),
        &end_lsn,
    ) {
        let start = Instant::now();
        let status = Command::new("pg_recvlogical")
            .args([
                "-d",
                &db.url(),
                "-S",
                slot,
                "--start",
                "--no-loop",
                "-f",
                "/dev/null",
            ])
            .args(["-o", "proto_version=1", "-o"])
            .arg(format!("publication_names={publication}"))
            .args(["-E", lsn])
            .status()?;
        let took = start.elapsed();
        if !status.success() {
            return Err(format!("pg_recvlogical failed: {status}").into());
        }
        result["reader_method"] = json!("pg_recvlogical (pgoutput, same publication) > /dev/null");
        result["reader_s"] = json!(secs(took));
        result["reader_rows_per_s"] = json!(round(n as f64 / took.as_secs_f64(), 0));
        result["ratio_vs_reader"] = json!(round(replicate.as_secs_f64() / took.as_secs_f64(), 2));
    }

    // The null baseline: the same rows with the stock clients, duplex stopped.
    case.target.truncate()?;
    let (method, took) = null_copy(&case.source, &case.target)?;
    let copied = target.count().await?;
    if copied != n as i64 + 1 {
        return Err(format!("the null baseline copied {copied} rows, expected {}", n + 1).into());
    }
    result["null_method"] = json!(method);
    result["null_s"] = json!(secs(took));
    result["null_rows_per_s"] = json!(round(n as f64 / took.as_secs_f64(), 0));
    result["ratio_vs_null"] = json!(round(replicate.as_secs_f64() / took.as_secs_f64(), 2));
    Ok(result)
}

/// Copies every row of the source table into the (empty) target table with the stock client
/// programs, piped; returns the pipeline and its wall time.
fn null_copy(source: &Site, target: &Site) -> BenchResult<(&'static str, Duration)> {
    let mariadb = |db: &MariaDatabase, sql: &str| {
        let mut command = Command::new("mariadb");
        command.args([
            "--host=127.0.0.1",
            &format!("--port={}", db.port()),
            "--user=duplex",
            "--password=duplex",
            "--batch",
            "--skip-column-names",
            "--quick",
            "--local-infile=1",
            db.name(),
            "-e",
            sql,
        ]);
        command
    };
    let psql = |db: &PgDatabase, meta: &str| {
        let mut command = Command::new("psql");
        command.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &db.url(), "-c", meta]);
        command
    };
    let (method, mut producer, mut consumer) = match (source, target) {
        (Site::Pg(src), Site::Pg(dst)) => (
            "psql \\copy bench to stdout | psql \\copy bench from stdin",
            psql(src, "\\copy bench to pstdout"),
            psql(dst, "\\copy bench from pstdin"),
        ),
        (Site::Pg(src), Site::Maria(dst)) => (
            "psql \\copy (select …) to stdout | mariadb LOAD DATA LOCAL INFILE",
            psql(
                src,
                "\\copy (SELECT id, a, b, c, to_char(d AT TIME ZONE 'UTC', \
                 'YYYY-MM-DD HH24:MI:SS.US') FROM bench) to pstdout",
            ),
            mariadb(
                dst,
                "LOAD DATA LOCAL INFILE '/dev/stdin' INTO TABLE bench (id, a, b, c, d)",
            ),
        ),
        (Site::Maria(src), Site::Pg(dst)) => (
            "mariadb --batch --quick select | psql \\copy bench from stdin",
            mariadb(
                src,
                "SELECT id, a, b, c, DATE_FORMAT(d, '%Y-%m-%d %H:%i:%s.%f+00') FROM bench",
            ),
            psql(dst, "\\copy bench from pstdin"),
        ),
        (Site::Maria(_), Site::Maria(_)) => {
            return Err("no null baseline for MariaDB -> MariaDB".into());
        }
    };
    let took = harness::time_pipe(&mut producer, &mut consumer, "null baseline")?;
    Ok((method, took))
}

/// Case 2: many small transactions.
async fn txns(
    case: &mut Case,
    _source: &mut Conn,
    target: &mut Conn,
    sizes: Sizes,
) -> BenchResult<Value> {
    let n = sizes.txns;
    let mut loader = Conn::open(&case.source).await?;
    let begin = Instant::now();
    let call = tokio::spawn(async move {
        let result = loader.execute(&format!("CALL load_txns(1, {n})")).await;
        let done = Instant::now();
        loader.close().await;
        result.map(|()| done)
    });
    let waited = case.wait_visible(target, n as i64, sizes.timeout).await;
    let source_done = call.await??;
    let (_, last) = waited?;
    let count = target.count().await?;
    if count != n as i64 + 1 {
        return Err(format!("the target has {count} rows, expected {}", n + 1).into());
    }
    let mut result = load_figures("txn", n, begin, source_done, last, THROUGHPUT_POLL);
    case.finish(&mut result)?;
    Ok(result)
}

/// Case 3: commit-to-visible latency at a steady rate.
async fn latency(
    case: &mut Case,
    _source: &mut Conn,
    _target: &mut Conn,
    sizes: Sizes,
) -> BenchResult<Value> {
    let total = (sizes.rate * sizes.seconds) as usize;
    let period = Duration::from_secs_f64(1.0 / sizes.rate as f64);
    let mut generator_conn = Conn::open(&case.source).await?;
    let mut observer_conn = Conn::open(&case.target).await?;
    let start = Instant::now() + Duration::from_millis(50);

    let generator = tokio::spawn(async move {
        let mut sent = Vec::with_capacity(total);
        let mut acked = Vec::with_capacity(total);
        for k in 0..total {
            tokio::time::sleep_until((start + period * k as u32).into()).await;
            sent.push(Instant::now());
            generator_conn.insert_row(k as i64 + 1).await?;
            acked.push(Instant::now());
        }
        generator_conn.close().await;
        BenchResult::Ok((sent, acked))
    });
    let observe_until = start + Duration::from_secs(sizes.seconds) + sizes.timeout;
    let observer = tokio::spawn(async move {
        let mut seen: Vec<Instant> = Vec::with_capacity(total);
        let mut polls = 0u64;
        let first_poll = Instant::now();
        while seen.len() < total {
            let asked = Instant::now();
            let max = observer_conn.max_id().await?.unwrap_or(0).max(0) as usize;
            let answered = Instant::now();
            polls += 1;
            while seen.len() < max.min(total) {
                seen.push(answered);
            }
            if answered > observe_until {
                return Err(format!("timed out: {} of {total} rows visible", seen.len()).into());
            }
            tokio::time::sleep_until((asked + LATENCY_POLL).into()).await;
        }
        let polled_for = first_poll.elapsed();
        observer_conn.close().await;
        BenchResult::Ok((seen, polls, polled_for))
    });
    let (generated, observed) = tokio::join!(generator, observer);
    case.duplex.check_running()?;
    let (sent, acked) = generated??;
    let (seen, polls, polled_for) = observed??;

    let mut latencies: Vec<f64> = sent
        .iter()
        .zip(&seen)
        .map(|(s, v)| v.saturating_duration_since(*s).as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let mut commits: Vec<f64> = sent
        .iter()
        .zip(&acked)
        .map(|(s, a)| (*a - *s).as_secs_f64() * 1000.0)
        .collect();
    commits.sort_by(f64::total_cmp);
    let sending = sent[sent.len() - 1] - sent[0];
    let mut result = json!({
        "txns": total,
        "target_txn_per_s": sizes.rate,
        "achieved_txn_per_s": round((total - 1) as f64 / sending.as_secs_f64(), 0),
        "p50_ms": round(percentile(&latencies, 0.50), 2),
        "p99_ms": round(percentile(&latencies, 0.99), 2),
        "max_ms": round(latencies[latencies.len() - 1], 2),
        "source_commit_p50_ms": round(percentile(&commits, 0.50), 3),
        "poll_ms": round(polled_for.as_secs_f64() * 1000.0 / polls as f64, 2),
    });
    case.finish(&mut result)?;
    Ok(result)
}

/// Runs one case from scratch; the JSON line (with `error` when it failed).
async fn run_case(
    servers: Arc<Servers>,
    bin: PathBuf,
    flow: Flow,
    measure: Measure,
    sizes: Sizes,
) -> Value {
    let mut base = json!({
        "bench": "replication",
        "direction": flow.name,
        "case": measure.name(),
    });
    let mut case = match Case::create(&servers, &bin, flow).await {
        Ok(case) => case,
        Err(e) => {
            base["error"] = json!(format!("set-up: {e}"));
            return base;
        }
    };
    let outcome = async {
        let mut source = Conn::open(&case.source).await?;
        let mut target = Conn::open(&case.target).await?;
        case.ready(&mut source, &mut target).await?;
        let result = match measure {
            Measure::Bulk => bulk(&mut case, &mut source, &mut target, sizes).await,
            Measure::Txns => txns(&mut case, &mut source, &mut target, sizes).await,
            Measure::Latency => latency(&mut case, &mut source, &mut target, sizes).await,
        };
        source.close().await;
        target.close().await;
        result
    }
    .await;
    harness::record_outcome(&mut base, outcome, || case.duplex.log_tail(15));
    base
}

/// The human summary: one line per case.
fn summary(results: &[Value]) -> String {
    let num = |v: &Value, key: &str| v.get(key).and_then(Value::as_f64);
    let mut out = String::from(
        "| direction | case | throughput | baseline | ratio | latency p50 / p99 (max) | peak RSS |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let direction = r["direction"].as_str().unwrap_or("?");
        let case = r["case"].as_str().unwrap_or("?");
        let rss = num(r, "peak_rss_mib").map_or("–".to_owned(), |m| format!("{m} MiB"));
        if let Some(error) = r.get("error").and_then(Value::as_str) {
            let first = error.lines().next().unwrap_or("");
            out.push_str(&format!(
                "| {direction} | {case} | error: {first} | | | | {rss} |\n"
            ));
            continue;
        }
        let line = match case {
            "bulk" => format!(
                "| {direction} | {} rows in 1 txn | {:.0} rows/s ({:.1} s after commit) | source {:.1} s; null copy {:.1} s{} | {:.2}× source, {:.2}× null{} | | {rss} |\n",
                r["rows"],
                num(r, "rows_per_s").unwrap_or(f64::NAN),
                num(r, "commit_to_visible_s").unwrap_or(f64::NAN),
                num(r, "source_s").unwrap_or(f64::NAN),
                num(r, "null_s").unwrap_or(f64::NAN),
                num(r, "reader_s").map_or(String::new(), |s| format!("; reader {s:.1} s")),
                num(r, "ratio_vs_source").unwrap_or(f64::NAN),
                num(r, "ratio_vs_null").unwrap_or(f64::NAN),
                num(r, "ratio_vs_reader").map_or(String::new(), |x| format!(", {x:.2}× reader")),
            ),
            "txns" => format!(
                "| {direction} | {} single-row txns | {:.0} txn/s | source {:.0} txn/s | {:.2}× source time | | {rss} |\n",
                r["txns"],
                num(r, "txn_per_s").unwrap_or(f64::NAN),
                num(r, "source_txn_per_s").unwrap_or(f64::NAN),
                num(r, "ratio_vs_source").unwrap_or(f64::NAN),
            ),
            _ => format!(
                "| {direction} | latency at {:.0} txn/s | | source commit p50 {:.2} ms | | {:.1} / {:.1} ms ({:.1}) | {rss} |\n",
                num(r, "achieved_txn_per_s").unwrap_or(f64::NAN),
                num(r, "source_commit_p50_ms").unwrap_or(f64::NAN),
                num(r, "p50_ms").unwrap_or(f64::NAN),
                num(r, "p99_ms").unwrap_or(f64::NAN),
                num(r, "max_ms").unwrap_or(f64::NAN),
            ),
        };
        out.push_str(&line);
    }
    out
}

fn main() {
    harness::main_with("replication", run);
}

fn run() -> BenchResult<()> {
    let sizes = Sizes::from_env()?;
    let bin = harness::duplex_binary("replication")?;
    eprintln!("bench: {sizes:?}, duplex at {}", bin.display());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let servers = Arc::new(Servers::start()?);
    let started = Instant::now();
    let mut results = Vec::new();
    for flow in FLOWS {
        for measure in [Measure::Bulk, Measure::Txns, Measure::Latency] {
            eprintln!(
                "bench: {} {} ({:.0} s so far)",
                flow.name,
                measure.name(),
                started.elapsed().as_secs_f64()
            );
            let task = runtime.spawn(run_case(servers.clone(), bin.clone(), flow, measure, sizes));
            let result = runtime.block_on(task).unwrap_or_else(|e| {
                json!({
                    "bench": "replication",
                    "direction": flow.name,
                    "case": measure.name(),
                    "error": format!("the case panicked: {e}"),
                })
            });
            println!("{result}");
            results.push(result);
        }
    }
    drop(runtime);
    drop(servers);
    println!();
    print!("{}", summary(&results));
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
