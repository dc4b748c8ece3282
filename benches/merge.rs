//! End-to-end benchmark of the merge engine (`direction = "both"`): the real release binary
//! keeping three throwaway sites in step — a PostgreSQL "store", a MariaDB "erp" and a second
//! PostgreSQL database "wms" — with baselines measured in the same run.
//!
//! # Running it
//!
//! ```sh
//! cargo build --release --bin duplex && cargo bench --bench merge
//! ```
//!
//! The binary is found as in `benches/replication.rs` (next to the bench's profile directory,
//! or `$DUPLEX_BENCH_BIN`); without `--bench` the program only prints how to run it. Sizes:
//! `DUPLEX_BENCH_TXNS` (default 20,000), `DUPLEX_BENCH_RATE` (200 txn/s),
//! `DUPLEX_BENCH_SECONDS` (10), `DUPLEX_BENCH_TIMEOUT` (seconds one wait may take, 240).
//! `DUPLEX_BENCH_CASES=two_way_txns,latency` runs only the cases named (all by default).
//! `DUPLEX_BENCH_BUS=1` runs the engine on the bus instead of as one `duplex run`: a
//! `nats-server -js` of its own, one `--role reader`, one `--role coordinator` (the process
//! whose log, RSS and exit are reported) and one `--role writer` per site, each with its own
//! state directory; `duplex_cpu_s` is then the sum over the five processes.
//!
//! # Output
//!
//! One JSON object per case on stdout (`"bench": "merge"`, `case`, `origin`, the figures
//! below, or `error` with the tail of duplex's log), then a human summary table. Progress goes
//! to stderr.
//!
//! # Set-up
//!
//! One PostgreSQL server (holding the store and wms databases, `synchronous_commit=on` for the
//! reason given in `benches/replication.rs`) and one MariaDB server, both from
//! `duplex-testkit`. Every case gets three fresh databases with
//! `bench (id bigint PK, a int, b text)`, one mapping over the three with
//! `direction = "both"` and `conflict = "last-writer-wins"`, a fresh state directory and a fresh
//! `duplex run`. The workload starts once its log says "merge engine reading site" three times
//! and a warm-up row (id 0, inserted at the case's origin) is visible at the two other sites.
//!
//! # What is measured
//!
//! 1. `two_way_txns` (origin store, then origin erp, each its own case): `TXNS` single-row
//!    `INSERT`s, each its own transaction, from ONE connection that sends them in messages of
//!    100 `START TRANSACTION; INSERT …; COMMIT;` blocks (a tokio-postgres simple query / a
//!    mysql_async multi-statement query: 100 commits per round trip, as pipelining would give).
//!    `source_s` (the baseline) is from sending the first message to the acknowledgement of the
//!    last. `end_to_end_s` runs from that first send to the first poll (every 20 ms,
//!    `SELECT max(id)` per site) that finds the last id at BOTH other sites; the engine applies
//!    each origin's changes in its commit order, so the last id means all of them (the row
//!    counts are checked afterwards). `txn_per_s = TXNS / end_to_end_s`.
//! 2. `concurrent_sites`: the three sites load at the same time the same way, `TXNS / 3` rows
//!    each over disjoint id ranges; done when every site holds the top id of every range
//!    (`rows_per_s`); `source_s` is from the first load's start to the last one's end.
//! 3. `latency`: one tokio-postgres connection updates row 0 at the store in autocommit
//!    transactions on a fixed schedule of `RATE` per second for `SECONDS`:
//!    `UPDATE bench SET a = k, b = '<µs since the epoch when the UPDATE was sent>'`. An
//!    observer polls `SELECT a, b FROM bench WHERE id = 0` at the erp as often as tokio's 1 ms
//!    timer allows. When it first sees `a ≥ k`, update k is visible (updates are applied in
//!    commit order; a later value overwrites ones the observer never saw, which then count as
//!    visible at that poll); latency = the wall-clock µs of that poll's answer − k's send
//!    time. It includes the store's commit round trip (`source_commit_p50_ms`) and over-states
//!    by up to one poll interval plus a poll round trip; the `b` the erp shows is checked to
//!    carry the send time the generator recorded for that `a`.
//! 4. `concurrent_counts` (twice: under last-writer-wins, then with `a = "delta"`): the three
//!    sites add 1 to the same 20 rows at once, `TXNS / 3` updates each, so most changes
//!    conflict; done when every site shows the same sum and a marker from each site. It
//!    reports the sum against the number of updates (`lost_updates`: what last-writer-wins
//!    drops, 0 with delta) and the throughput of the two, whose ratio is delta's overhead
//!    (see benches/merge_conflicts/mod.rs). Writes exceed `expected_writes` here: a
//!    conflict's decision goes to every site that does not hold it.
//!
//! Every case also reports `peak_rss_mib` (`VmHWM` of the duplex process), `duplex_cpu_s`
//! (its user + system time, at 100 ticks/s), the engine's writes per site (the
//! `{"Outbox":N}` position it records under `merge:<site>` in each site's
//! `duplex.positions`, read once it reaches `2 × local changes` or after 30 s) next to
//! `expected_writes = 2 × local_changes` — more would be an echo loop — and the counters of
//! its "merge engine stopped" log line after SIGTERM. Everything shares 2 cores with the
//! servers and the clients.

mod harness;
mod merge_conflicts;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use duplex_testkit::{MariaDatabase, PgDatabase};
use harness::{
    BenchResult, DuplexProcess, Servers, env_u64, load_figures, percentile, round, secs, site_toml,
};
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

/// How often the throughput cases poll the sites.
const POLL: Duration = Duration::from_millis(20);
/// How often the latency observer polls the erp.
const LATENCY_POLL: Duration = Duration::from_millis(1);
/// How long the engine may take to read every site and carry the warm-up row.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the write counts may take to reach `2 × local changes` after a case.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Single-row transactions per message of the loading clients.
const TXNS_PER_MESSAGE: usize = 100;

const PG_TABLE: &str = "CREATE TABLE bench (id bigint PRIMARY KEY, a int, b text)";
const MARIA_TABLE: &str = "CREATE TABLE bench (id BIGINT PRIMARY KEY, a INT, b TEXT) ENGINE=InnoDB";

const STORE: usize = 0;
const ERP: usize = 1;
const ROLES: [&str; 3] = ["store", "erp", "wms"];

/// Workload sizes, from the environment.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    txns: u64,
    rate: u64,
    seconds: u64,
    timeout: Duration,
}

impl Sizes {
    fn from_env() -> BenchResult<Sizes> {
        Ok(Sizes {
            txns: env_u64("DUPLEX_BENCH_TXNS", 20_000)?.max(3),
            rate: env_u64("DUPLEX_BENCH_RATE", 200)?.max(1),
            seconds: env_u64("DUPLEX_BENCH_SECONDS", 10)?.max(1),
            timeout: Duration::from_secs(env_u64("DUPLEX_BENCH_TIMEOUT", 240)?),
        })
    }
}

/// A case of the run.
#[derive(Clone, Copy, Debug)]
enum Measure {
    /// Single-row transactions from one site (its index) to the two others.
    TwoWayTxns(usize),
    ConcurrentSites,
    Latency,
    /// The three sites increment the same rows at once; with `a = "delta"` when true.
    ConcurrentCounts(bool),
}

impl Measure {
    fn name(self) -> &'static str {
        match self {
            Measure::TwoWayTxns(_) => "two_way_txns",
            Measure::ConcurrentSites => "concurrent_sites",
            Measure::Latency => "latency",
            Measure::ConcurrentCounts(_) => "concurrent_counts",
        }
    }

    fn origin(self) -> &'static str {
        match self {
            Measure::TwoWayTxns(site) => ROLES[site],
            Measure::ConcurrentSites => "all",
            Measure::Latency => "store",
            Measure::ConcurrentCounts(true) => "all, a: delta",
            Measure::ConcurrentCounts(false) => "all, last-writer-wins",
        }
    }
}

/// A fresh database of either kind.
enum Db {
    Pg(PgDatabase),
    Maria(MariaDatabase),
}

impl Db {
    fn name(&self) -> &str {
        match self {
            Db::Pg(db) => db.name(),
            Db::Maria(db) => db.name(),
        }
    }

    fn url(&self) -> String {
        match self {
            Db::Pg(db) => db.url(),
            Db::Maria(db) => db.url(),
        }
    }

    /// Drops duplex's replication slot (PostgreSQL), retrying while its WAL sender exits.
    fn drop_slot(&self) -> BenchResult<()> {
        match self {
            Db::Pg(db) => harness::drop_slot(db, &format!("duplex_{0}_{0}", db.name())),
            Db::Maria(_) => Ok(()),
        }
    }
}

/// A client connection of either kind, as the `duplex` account.
enum Conn {
    Pg(
        Box<tokio_postgres::Client>,
        tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    ),
    Maria(mysql_async::Conn),
}

impl Conn {
    async fn open(db: &Db) -> BenchResult<Conn> {
        Ok(match db {
            Db::Pg(_) => {
                let (client, connection) =
                    tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await?;
                Conn::Pg(Box::new(client), tokio::spawn(connection))
            }
            Db::Maria(_) => {
                Conn::Maria(mysql_async::Conn::new(mysql_async::Opts::from_url(&db.url())?).await?)
            }
        })
    }

    async fn execute(&mut self, sql: &str) -> BenchResult<()> {
        match self {
            Conn::Pg(client, _) => client.batch_execute(sql).await?,
            Conn::Maria(conn) => conn.query_drop(sql).await?,
        }
        Ok(())
    }

    /// `SELECT max(id) FROM bench WHERE id BETWEEN lo AND hi`.
    async fn top(&mut self, lo: i64, hi: i64) -> BenchResult<Option<i64>> {
        match self {
            Conn::Pg(client, _) => Ok(client
                .query_one(
                    "SELECT max(id) FROM bench WHERE id BETWEEN $1 AND $2",
                    &[&lo, &hi],
                )
                .await?
                .try_get(0)?),
            Conn::Maria(conn) => {
                let max: Option<Option<i64>> = conn
                    .exec_first(
                        "SELECT max(id) FROM bench WHERE id BETWEEN ? AND ?",
                        (lo, hi),
                    )
                    .await?;
                Ok(max.flatten())
            }
        }
    }

    async fn count(&mut self) -> BenchResult<i64> {
        const SQL: &str = "SELECT count(*) FROM bench";
        match self {
            Conn::Pg(client, _) => Ok(client.query_one(SQL, &[]).await?.try_get(0)?),
            Conn::Maria(conn) => Ok(conn.query_first(SQL).await?.unwrap_or(0)),
        }
    }

    /// How many writes the engine made into `site`: its `merge:<site>` outbox position.
    async fn writes(&mut self, site: &str) -> BenchResult<u64> {
        let source = format!("merge:{site}");
        let text: Option<String> = match self {
            Conn::Pg(client, _) => client
                .query_opt(
                    "SELECT position FROM duplex.positions WHERE source = $1",
                    &[&source],
                )
                .await?
                .map(|row| row.try_get(0))
                .transpose()?,
            Conn::Maria(conn) => {
                conn.exec_first(
                    "SELECT position FROM duplex.positions WHERE source = ?",
                    (source,),
                )
                .await?
            }
        };
        let Some(text) = text else { return Ok(0) };
        let position: Value = serde_json::from_str(&text)?;
        position["Outbox"]
            .as_u64()
            .ok_or_else(|| format!("not an outbox position: {text}").into())
    }

    async fn close(self) {
        match self {
            Conn::Pg(client, connection) => {
                drop(client);
                let _ = connection.await;
            }
            Conn::Maria(conn) => {
                let _ = conn.disconnect().await;
            }
        }
    }
}

impl DuplexProcess {
    /// User + system CPU seconds so far (`utime`, `stime` of `/proc/<pid>/stat`, 100 Hz).
    fn cpu_s(&self) -> BenchResult<f64> {
        let stat = self.proc_file("stat")?;
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .ok_or("unreadable /proc/<pid>/stat")?
            .1
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok((ticks(11) + ticks(12)) as f64 / 100.0)
    }
}

/// One case: three fresh databases, the two-way config, one duplex process. Dropping it kills
/// duplex and drops the slots, then the databases.
struct Case {
    /// The one `duplex run`, or on the bus the coordinator.
    duplex: DuplexProcess,
    /// On the bus: the reader and the writers.
    roles: Vec<DuplexProcess>,
    sites: [Db; 3],
    _dirs: Vec<tempfile::TempDir>,
    _nats: Option<duplex_testkit::NatsServer>,
}

impl Case {
    async fn create(servers: &Servers, bin: &Path, columns: &str) -> BenchResult<Case> {
        let sites = [
            Db::Pg(servers.pg.try_create_database()?),
            Db::Maria(servers.maria.try_create_database()?),
            Db::Pg(servers.pg.try_create_database()?),
        ];
        let mut config = String::new();
        let mut tables = Vec::new();
        for site in &sites {
            let mut conn = Conn::open(site).await?;
            let (kind, table) = match site {
                Db::Pg(_) => ("postgres", PG_TABLE),
                Db::Maria(_) => ("mysql", MARIA_TABLE),
            };
            conn.execute(table).await?;
            conn.close().await;
            config.push_str(&site_toml(site.name(), kind, &site.url()));
            let schema = match site {
                Db::Pg(_) => "public",
                Db::Maria(db) => db.name(),
            };
            tables.push(format!("{} = \"{schema}.bench\"", site.name()));
        }
        config.push_str(&format!(
            "[[mappings]]\nname = \"bench\"\ntables = {{ {} }}\n\
             direction = \"both\"\nconflict = \"last-writer-wins\"\n{columns}",
            tables.join(", ")
        ));
        let nats = match std::env::var("DUPLEX_BENCH_BUS").is_ok_and(|v| v == "1") {
            true => Some(duplex_testkit::NatsServer::start()?),
            false => None,
        };
        if let Some(nats) = &nats {
            config.push_str(&format!(
                "\n[bus]\nkind = \"nats\"\nurl = \"{}\"\n",
                nats.url()
            ));
        }
        let roles = ["coordinator", "reader"].map(|r| format!("--role {r}"));
        let writers = sites
            .iter()
            .map(|s| format!("--role writer --site {}", s.name()));
        let args: Vec<String> = match nats {
            Some(_) => roles.into_iter().chain(writers).collect(),
            None => vec![String::new()],
        };
        let (mut processes, mut dirs) = (Vec::new(), Vec::new());
        for args in args {
            let dir = tempfile::tempdir()?;
            let config_path = dir.path().join("duplex.toml");
            std::fs::write(&config_path, &config)?;
            let args: Vec<&str> = std::iter::once("run")
                .chain(args.split_whitespace())
                .collect();
            let log = dir.path().join("duplex.log");
            processes.push(DuplexProcess::spawn(bin, &config_path, &args, log)?);
            dirs.push(dir);
        }
        Ok(Case {
            duplex: processes.remove(0),
            roles: processes,
            sites,
            _dirs: dirs,
            _nats: nats,
        })
    }

    /// Every process still runs.
    fn check_running(&mut self) -> BenchResult<()> {
        self.duplex.check_running()?;
        for role in &mut self.roles {
            role.check_running()?;
        }
        Ok(())
    }

    async fn connect(&self) -> BenchResult<Vec<Conn>> {
        let mut conns = Vec::new();
        for site in &self.sites {
            conns.push(Conn::open(site).await?);
        }
        Ok(conns)
    }

    /// Waits until the engine reads all three sites and a warm-up row (id 0) inserted at
    /// `origin` is visible at the two others.
    async fn ready(&mut self, conns: &mut [Conn], origin: usize) -> BenchResult<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        // (On the bus, the reader too: a row committed before its slot streams is missed.)
        let started = |p: &DuplexProcess, line| p.log_text().matches(line).count() >= 3;
        while !started(&self.duplex, "merge engine reading site")
            || !self
                .roles
                .first()
                .is_none_or(|r| started(r, "bus reader started"))
        {
            self.check_running()?;
            if Instant::now() > deadline {
                return Err("the merge engine did not read all three sites within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        conns[origin]
            .execute("INSERT INTO bench VALUES (0, 0, 'warm-up')")
            .await?;
        let others: Vec<usize> = (0..3).filter(|s| *s != origin).collect();
        self.wait_all(conns, &others, &[(0, 0)], READY_TIMEOUT)
            .await?;
        Ok(())
    }

    /// Polls `sites` every `POLL` until each holds the top id of every range; the instant
    /// each one first did, in the order of `sites`.
    async fn wait_all(
        &mut self,
        conns: &mut [Conn],
        sites: &[usize],
        ranges: &[(i64, i64)],
        timeout: Duration,
    ) -> BenchResult<Vec<Instant>> {
        let deadline = Instant::now() + timeout;
        let mut done: Vec<Option<Instant>> = vec![None; sites.len()];
        loop {
            let mut progress = Vec::new();
            for (slot, &site) in done.iter_mut().zip(sites) {
                if slot.is_some() {
                    continue;
                }
                let mut complete = true;
                for &(lo, hi) in ranges {
                    let top = conns[site].top(lo, hi).await?;
                    complete &= top == Some(hi);
                    progress.push(format!("{}: {top:?} of {hi}", ROLES[site]));
                }
                if complete {
                    *slot = Some(Instant::now());
                }
            }
            if done.iter().all(Option::is_some) {
                return Ok(done.into_iter().flatten().collect());
            }
            self.check_running()?;
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out after {} s: {}",
                    timeout.as_secs(),
                    progress.join(", ")
                )
                .into());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Checks that every site holds `rows` rows.
    async fn check_counts(conns: &mut [Conn], rows: i64) -> BenchResult<()> {
        for (site, conn) in conns.iter_mut().enumerate() {
            let count = conn.count().await?;
            if count != rows {
                return Err(format!("{} holds {count} rows, expected {rows}", ROLES[site]).into());
            }
        }
        Ok(())
    }

    /// Peak RSS, CPU, the writes per site (once they reach `2 × local_changes`, or after
    /// `SETTLE_TIMEOUT`), then SIGTERM and the engine's final counters; all into `result`.
    async fn finish(
        &mut self,
        conns: &mut [Conn],
        local_changes: u64,
        result: &mut Value,
    ) -> BenchResult<()> {
        let expected = 2 * local_changes;
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let writes = loop {
            let mut writes = Vec::new();
            for (site, conn) in self.sites.iter().zip(conns.iter_mut()) {
                writes.push(conn.writes(site.name()).await?);
            }
            if writes.iter().sum::<u64>() >= expected || Instant::now() > deadline {
                break writes;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        result["peak_rss_mib"] = json!(round(self.duplex.peak_rss_kib()? as f64 / 1024.0, 1));
        let mut cpu = self.duplex.cpu_s()?;
        for role in &self.roles {
            cpu += role.cpu_s()?;
        }
        result["duplex_cpu_s"] = json!(round(cpu, 2));
        result["bus"] = json!(!self.roles.is_empty());
        result["local_changes"] = json!(local_changes);
        result["expected_writes"] = json!(expected);
        result["writes"] = json!(writes.iter().sum::<u64>());
        for (role, n) in ROLES.iter().zip(&writes) {
            result["writes_into"][role] = json!(n);
        }
        result["duplex_exit"] = json!(self.duplex.terminate()?);
        for role in &mut self.roles {
            role.terminate()?;
        }
        let log = self.duplex.log_text();
        if let Some(line) = log
            .lines()
            .rev()
            .find(|l| l.contains("merge engine stopped"))
        {
            for (key, value) in line.split_whitespace().filter_map(|w| w.split_once('=')) {
                if let Ok(n) = value.parse::<u64>() {
                    result["engine"][key] = json!(n);
                }
            }
        }
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        result["log_warnings"] = json!(warnings.len());
        if let Some(first) = warnings.first() {
            result["first_warning"] = json!(first);
        }
        Ok(())
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        self.duplex.kill();
        for role in &mut self.roles {
            role.kill();
        }
        for site in &self.sites {
            if let Err(e) = site.drop_slot() {
                eprintln!("bench: could not drop the slot of {}: {e}", site.name());
            }
        }
    }
}

/// Inserts one row per id, each in its own transaction, on a new connection to `db`: the
/// transactions go out in messages of `TXNS_PER_MESSAGE` `START TRANSACTION; INSERT; COMMIT;`
/// blocks (one simple-protocol / multi-statement query each). Returns the instants the first
/// message was sent and the last one acknowledged.
async fn load(
    db: &Db,
    ids: std::ops::RangeInclusive<i64>,
) -> BenchResult<tokio::task::JoinHandle<BenchResult<(Instant, Instant)>>> {
    let mut conn = Conn::open(db).await?;
    let ids: Vec<i64> = ids.collect();
    let messages: Vec<String> = ids
        .chunks(TXNS_PER_MESSAGE)
        .map(|chunk| {
            chunk
                .iter()
                .map(|id| {
                    format!(
                        "START TRANSACTION; INSERT INTO bench VALUES ({id}, {id}, 'row {id}'); COMMIT;"
                    )
                })
                .collect()
        })
        .collect();
    Ok(tokio::spawn(async move {
        let start = Instant::now();
        for message in &messages {
            conn.execute(message).await?;
        }
        let end = Instant::now();
        conn.close().await;
        Ok((start, end))
    }))
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Case 1: `TXNS` single-row transactions at `origin`, to the two other sites.
async fn two_way_txns(
    case: &mut Case,
    conns: &mut [Conn],
    origin: usize,
    sizes: Sizes,
) -> BenchResult<Value> {
    let n = sizes.txns as i64;
    let others: Vec<usize> = (0..3).filter(|s| *s != origin).collect();
    let load = load(&case.sites[origin], 1..=n).await?;
    let visible = case
        .wait_all(conns, &others, &[(1, n)], sizes.timeout)
        .await;
    let (begin, source_done) = load.await??;
    let visible = visible?;
    Case::check_counts(conns, n + 1).await?;
    let last = visible.iter().copied().max().unwrap_or(begin);
    let mut result = load_figures("txn", n as u64, begin, source_done, last, POLL);
    for (site, at) in others.iter().zip(&visible) {
        result["visible_s"][ROLES[*site]] = json!(secs(at.saturating_duration_since(begin)));
    }
    case.finish(conns, n as u64 + 1, &mut result).await?;
    Ok(result)
}

/// Case 2: the three sites insert `TXNS / 3` rows each at the same time.
async fn concurrent_sites(case: &mut Case, conns: &mut [Conn], sizes: Sizes) -> BenchResult<Value> {
    let per_site = sizes.txns as i64 / 3;
    let ranges: Vec<(i64, i64)> = (0..3)
        .map(|k| (k * per_site + 1, (k + 1) * per_site))
        .collect();
    let mut loads = Vec::new();
    for (site, &(lo, hi)) in ranges.iter().enumerate() {
        loads.push(load(&case.sites[site], lo..=hi).await?);
    }
    let visible = case
        .wait_all(conns, &[0, 1, 2], &ranges, sizes.timeout)
        .await;
    let mut spans = Vec::new();
    for load in loads {
        spans.push(load.await??);
    }
    let visible = visible?;
    let rows = 3 * per_site;
    Case::check_counts(conns, rows + 1).await?;
    let begin = spans.iter().map(|s| s.0).min().ok_or("no loads")?;
    let source_done = spans.iter().map(|s| s.1).max().ok_or("no loads")?;
    let last = visible.iter().copied().max().unwrap_or(begin);
    let mut result = load_figures("rows", rows as u64, begin, source_done, last, POLL);
    for (site, (at, span)) in visible.iter().zip(&spans).enumerate() {
        result["visible_s"][ROLES[site]] = json!(secs(at.saturating_duration_since(begin)));
        result["site_source_s"][ROLES[site]] = json!(secs(span.1 - span.0));
    }
    case.finish(conns, rows as u64 + 1, &mut result).await?;
    Ok(result)
}

/// Case 3: store-to-erp latency of single-row updates at a steady rate.
async fn latency(case: &mut Case, conns: &mut [Conn], sizes: Sizes) -> BenchResult<Value> {
    let total = (sizes.rate * sizes.seconds) as usize;
    let period = Duration::from_secs_f64(1.0 / sizes.rate as f64);
    let (client, connection) =
        tokio_postgres::connect(&case.sites[STORE].url(), tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    let update = client
        .prepare_typed(
            "UPDATE bench SET a = $1, b = $2 WHERE id = 0",
            &[
                tokio_postgres::types::Type::INT4,
                tokio_postgres::types::Type::TEXT,
            ],
        )
        .await?;
    let Conn::Maria(mut observer) = Conn::open(&case.sites[ERP]).await? else {
        return Err("the erp is not MariaDB".into());
    };
    let start = Instant::now() + Duration::from_millis(50);
    let generator = tokio::spawn(async move {
        let mut sent = Vec::with_capacity(total);
        let mut commits = Vec::with_capacity(total);
        for k in 1..=total {
            tokio::time::sleep_until((start + period * (k - 1) as u32).into()).await;
            let at = now_micros();
            sent.push(at);
            client
                .execute(&update, &[&(k as i32), &at.to_string()])
                .await?;
            commits.push((now_micros() - at) as f64 / 1000.0);
        }
        drop(client);
        let _ = connection.await;
        BenchResult::Ok((sent, commits))
    });
    let observe_until = start + Duration::from_secs(sizes.seconds) + sizes.timeout;
    let observer = tokio::spawn(async move {
        let mut seen: Vec<i64> = Vec::with_capacity(total);
        let mut carried: Vec<(usize, i64)> = Vec::new();
        let (mut polls, first_poll) = (0u64, Instant::now());
        while seen.len() < total {
            let asked = Instant::now();
            let row: Option<(Option<i64>, Option<String>)> = observer
                .exec_first("SELECT a, b FROM bench WHERE id = 0", ())
                .await?;
            let at = now_micros();
            polls += 1;
            if let Some((Some(a), Some(b))) = row
                && a as usize > seen.len()
            {
                carried.push((a as usize, b.parse()?));
                seen.resize((a as usize).min(total), at);
            }
            if Instant::now() > observe_until {
                return Err(format!("timed out: {} of {total} updates seen", seen.len()).into());
            }
            tokio::time::sleep_until((asked + LATENCY_POLL).into()).await;
        }
        let poll_ms = first_poll.elapsed().as_secs_f64() * 1000.0 / polls as f64;
        let _ = observer.disconnect().await;
        BenchResult::Ok((seen, carried, poll_ms))
    });
    let (generated, observed) = tokio::join!(generator, observer);
    case.check_running()?;
    let (sent, mut commits) = generated??;
    let (seen, carried, poll_ms) = observed??;
    if let Some((k, b)) = carried.iter().find(|(k, b)| sent[k - 1] != *b) {
        return Err(format!(
            "the erp showed update {k} carrying {b}, sent at {}",
            sent[k - 1]
        )
        .into());
    }
    let mut latencies: Vec<f64> = seen
        .iter()
        .zip(&sent)
        .map(|(v, s)| (v - s) as f64 / 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    commits.sort_by(f64::total_cmp);
    let sending = (sent[total - 1] - sent[0]) as f64 / 1e6;
    let mut result = json!({
        "txns": total,
        "target_txn_per_s": sizes.rate,
        "achieved_txn_per_s": round((total - 1) as f64 / sending, 0),
        "p50_ms": round(percentile(&latencies, 0.50), 2),
        "p99_ms": round(percentile(&latencies, 0.99), 2),
        "max_ms": round(latencies[total - 1], 2),
        "source_commit_p50_ms": round(percentile(&commits, 0.50), 3),
        "updates_seen_distinct": carried.len(),
        "poll_ms": round(poll_ms, 2),
    });
    // The wms gets the same writes; `finish` waits for them through the write counts.
    case.finish(conns, total as u64 + 1, &mut result).await?;
    Ok(result)
}

/// Runs one case from scratch; its JSON line (with `error` when it failed).
async fn run_case(servers: &Servers, bin: &Path, measure: Measure, sizes: Sizes) -> Value {
    let mut base = json!({ "bench": "merge", "case": measure.name(), "origin": measure.origin() });
    let columns = match measure {
        Measure::ConcurrentCounts(delta) => merge_conflicts::columns(delta),
        _ => "",
    };
    let mut case = match Case::create(servers, bin, columns).await {
        Ok(case) => case,
        Err(e) => {
            base["error"] = json!(format!("set-up: {e}"));
            return base;
        }
    };
    let outcome = async {
        let mut conns = case.connect().await?;
        let origin = match measure {
            Measure::TwoWayTxns(site) => site,
            _ => STORE,
        };
        let result = match case.ready(&mut conns, origin).await {
            Err(e) => Err(e),
            Ok(()) => match measure {
                Measure::TwoWayTxns(site) => two_way_txns(&mut case, &mut conns, site, sizes).await,
                Measure::ConcurrentSites => concurrent_sites(&mut case, &mut conns, sizes).await,
                Measure::Latency => latency(&mut case, &mut conns, sizes).await,
                Measure::ConcurrentCounts(delta) => {
                    merge_conflicts::concurrent_counts(&mut case, &mut conns, sizes, delta).await
                }
            },
        };
        for conn in conns {
            conn.close().await;
        }
        result
    }
    .await;
    harness::record_outcome(&mut base, outcome, || case.duplex.log_tail(15));
    base
}

/// The human summary: one line per case.
fn summary(results: &[Value]) -> String {
    let num = |v: &Value, key: &str| v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let mut out = String::from(
        "| case | origin | throughput | baseline (source) | ratio | latency p50 / p99 (max) | writes / expected | peak RSS |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let (case, origin) = (
            r["case"].as_str().unwrap_or("?"),
            r["origin"].as_str().unwrap_or("?"),
        );
        if let Some(error) = r.get("error").and_then(Value::as_str) {
            let first = error.lines().next().unwrap_or("");
            out.push_str(&format!(
                "| {case} | {origin} | error: {first} | | | | | |\n"
            ));
            continue;
        }
        let (throughput, baseline, ratio, latency) = match case {
            "latency" => (
                format!("{:.0} txn/s steady", num(r, "achieved_txn_per_s")),
                format!("commit p50 {:.2} ms", num(r, "source_commit_p50_ms")),
                String::new(),
                format!(
                    "{:.1} / {:.1} ms ({:.1})",
                    num(r, "p50_ms"),
                    num(r, "p99_ms"),
                    num(r, "max_ms")
                ),
            ),
            "concurrent_sites" => (
                format!("{:.0} rows/s", num(r, "rows_per_s")),
                format!("{:.0} rows/s", num(r, "source_rows_per_s")),
                format!("{:.2}× source time", num(r, "ratio_vs_source")),
                String::new(),
            ),
            _ => (
                format!("{:.0} txn/s", num(r, "txn_per_s")),
                format!("{:.0} txn/s", num(r, "source_txn_per_s")),
                format!("{:.2}× source time", num(r, "ratio_vs_source")),
                String::new(),
            ),
        };
        out.push_str(&format!(
            "| {case} | {origin} | {throughput} | {baseline} | {ratio} | {latency} | {} / {} | {:.1} MiB |\n",
            r["writes"],
            r["expected_writes"],
            num(r, "peak_rss_mib"),
        ));
    }
    out
}

fn main() {
    harness::main_with("merge", run);
}

fn run() -> BenchResult<()> {
    let sizes = Sizes::from_env()?;
    let cases = std::env::var("DUPLEX_BENCH_CASES").ok();
    let cases: Option<Vec<&str>> = cases
        .as_deref()
        .map(|c| c.split(',').map(str::trim).collect());
    let bin = harness::duplex_binary("merge")?;
    eprintln!("bench: {sizes:?}, duplex at {}", bin.display());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let servers = Servers::start()?;
    let started = Instant::now();
    let mut results = Vec::new();
    for measure in [
        Measure::TwoWayTxns(STORE),
        Measure::TwoWayTxns(ERP),
        Measure::ConcurrentSites,
        Measure::Latency,
        Measure::ConcurrentCounts(false),
        Measure::ConcurrentCounts(true),
    ]
    .into_iter()
    .filter(|m| cases.as_ref().is_none_or(|names| names.contains(&m.name())))
    {
        eprintln!(
            "bench: {} from {} ({:.0} s so far)",
            measure.name(),
            measure.origin(),
            started.elapsed().as_secs_f64()
        );
        let result = runtime.block_on(run_case(&servers, &bin, measure, sizes));
        println!("{result}");
        results.push(result);
    }
    drop(runtime);
    println!();
    print!("{}", summary(&results));
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
