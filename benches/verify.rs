//! Benchmark of `duplex verify`: the real release binary comparing a 1M-row table between
//! throwaway servers, next to a plain ordered scan of both sides measured in the same run.
//!
//! # Running it
//!
//! ```sh
//! cargo build --release --bin duplex && cargo bench --bench verify
//! ```
//!
//! Like the other benches it runs `target/release/duplex` (or `$DUPLEX_BENCH_BIN`) and without
//! the `--bench` argument only prints how to run it. `DUPLEX_BENCH_ROWS` (default 1,000,000)
//! sets the table size, `DUPLEX_BENCH_JOBS` (4) verify's `--jobs`.
//!
//! # What is measured
//!
//! Per direction (PostgreSQL → PostgreSQL, MariaDB → PostgreSQL) a fresh source holds `ROWS`
//! rows of `bench (id bigint PK, a int, b text, c numeric(12,2), d timestamptz)` (MariaDB:
//! BIGINT, INT, LONGTEXT, DECIMAL(12,2), DATETIME(6)), copied into a fresh PostgreSQL target
//! by `duplex backfill`. Then, with both sides cached:
//!
//! 1. `baseline`: the stock clients read both tables in key order at once, client-side, to
//!    /dev/null (`psql -c 'SELECT … ORDER BY id'`, `mariadb --batch --quick -e 'SELECT … ORDER
//!    BY id'`); wall time until both finished;
//! 2. `duplex verify --jobs N --json`, wall time of the process (start-up, describing, range
//!    planning, reading and comparing both sides); it must report the tables equal.
//!
//! # Output
//!
//! One JSON object per direction on stdout (`"bench": "verify"`, or an `error` field), then a
//! Markdown table. Progress goes to stderr.

mod harness;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use duplex_testkit::{MariaDatabase, PgDatabase};
use harness::{BenchResult, Servers, env_u64, round, site_toml};
use serde_json::{Value, json};

const PG_TABLE: &str =
    "CREATE TABLE bench (id bigint PRIMARY KEY, a int, b text, c numeric(12,2), d timestamptz)";
const MARIA_TABLE: &str = "CREATE TABLE bench (id BIGINT PRIMARY KEY, a INT, b LONGTEXT, \
     c DECIMAL(12,2), d DATETIME(6)) ENGINE=InnoDB";
const SCAN: &str = "SELECT id, a, b, c, d FROM bench ORDER BY id";

/// A source of one direction.
enum Source {
    Pg(PgDatabase),
    Maria(MariaDatabase),
}

impl Source {
    fn name(&self) -> &str {
        match self {
            Source::Pg(db) => db.name(),
            Source::Maria(db) => db.name(),
        }
    }

    fn site(&self) -> (String, String) {
        match self {
            Source::Pg(db) => (
                site_toml(db.name(), "postgres", &db.url()),
                "public.bench".into(),
            ),
            Source::Maria(db) => (
                site_toml(db.name(), "mysql", &db.url()),
                format!("{}.bench", db.name()),
            ),
        }
    }

    /// The stock client reading the table in key order to /dev/null.
    fn scan(&self) -> Command {
        match self {
            Source::Pg(db) => psql_scan(db),
            Source::Maria(db) => {
                let mut command = Command::new("mariadb");
                command.args([
                    "--host=127.0.0.1",
                    &format!("--port={}", db.port()),
                    "--user=duplex",
                    "--password=duplex",
                    "--batch",
                    "--skip-column-names",
                    "--quick",
                    db.name(),
                    "-e",
                    SCAN,
                ]);
                command
            }
        }
    }
}

fn psql_scan(db: &PgDatabase) -> Command {
    let mut command = Command::new("psql");
    command.args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        &db.url(),
        "-c",
        SCAN,
    ]);
    command
}

fn create_source(servers: &Servers, pg: bool, rows: u64) -> BenchResult<Source> {
    if pg {
        let db = servers.pg.try_create_database()?;
        db.execute_as_duplex(&format!(
            "{PG_TABLE}; INSERT INTO bench SELECT g, g % 1000, md5(g::text), \
             (g % 100000) / 100.0, now() FROM generate_series(1, {rows}) g"
        ))?;
        db.psql("VACUUM ANALYZE bench")?;
        Ok(Source::Pg(db))
    } else {
        let db = servers.maria.try_create_database()?;
        db.execute_as_duplex(MARIA_TABLE)?;
        db.sql(&format!(
            "INSERT INTO bench SELECT seq, seq % 1000, md5(seq), (seq % 100000) / 100, NOW(6) \
             FROM seq_1_to_{rows}"
        ))?;
        db.sql("ANALYZE TABLE bench")?;
        Ok(Source::Maria(db))
    }
}

/// Runs both commands at once to their end, output to /dev/null; the wall time.
fn both(mut a: Command, mut b: Command) -> BenchResult<Duration> {
    let start = Instant::now();
    let mut a = a.stdout(Stdio::null()).spawn()?;
    let mut b = b.stdout(Stdio::null()).spawn()?;
    let (sa, sb) = (a.wait()?, b.wait()?);
    if !sa.success() || !sb.success() {
        return Err(format!("a scan failed: {sa}, {sb}").into());
    }
    Ok(start.elapsed())
}

/// Runs `duplex <args>` to its end: wall time and standard output.
fn duplex(bin: &Path, config: &Path, args: &[&str]) -> BenchResult<(Duration, String)> {
    let start = Instant::now();
    let out = Command::new(bin)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    let took = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "duplex {args:?} exited with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok((took, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn run_case(servers: &Servers, bin: &Path, pg_source: bool, rows: u64, jobs: u64) -> Value {
    let direction = if pg_source {
        "postgres->postgres"
    } else {
        "mariadb->postgres"
    };
    let mut result = json!({"bench": "verify", "direction": direction, "rows": rows, "jobs": jobs});
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            result["error"] = json!(e.to_string());
            return result;
        }
    };
    let mut source = None;
    let outcome = (|| -> BenchResult<Value> {
        eprintln!("bench: {direction}: loading {rows} source rows");
        let src = source.insert(create_source(servers, pg_source, rows)?);
        let target = servers.pg.try_create_database()?;
        target.execute_as_duplex(PG_TABLE)?;
        let (site, table) = src.site();
        let config = dir.path().join("duplex.toml");
        std::fs::write(
            &config,
            format!(
                "{site}{target_site}[[mappings]]\nname = \"bench\"\n\
                 tables = {{ {s} = \"{table}\", {t} = \"public.bench\" }}\n\
                 direction = \"{s}->{t}\"\n",
                target_site = site_toml(target.name(), "postgres", &target.url()),
                s = src.name(),
                t = target.name(),
            ),
        )?;
        eprintln!("bench: {direction}: duplex backfill (to fill the target)");
        duplex(bin, &config, &["backfill"])?;
        target.psql("VACUUM ANALYZE bench")?;
        // Both sides cached before either measurement.
        both(src.scan(), psql_scan(&target))?;
        eprintln!("bench: {direction}: baseline scan of both sides");
        let base = both(src.scan(), psql_scan(&target))?;
        eprintln!("bench: {direction}: duplex verify --jobs {jobs}");
        let jobs_text = jobs.to_string();
        let (took, out) = duplex(bin, &config, &["verify", "--json", "--jobs", &jobs_text])?;
        let report: Value = serde_json::from_str(out.lines().next().unwrap_or(""))?;
        if report["equal"] != true || report["rows"] != rows {
            return Err(format!("verify did not find the tables equal: {report}").into());
        }
        let rows = rows as f64;
        Ok(json!({
            "duplex_s": round(took.as_secs_f64(), 3),
            "duplex_rows_per_s": round(rows / took.as_secs_f64(), 0),
            "compare_rows_per_s": report["rows_per_second"].as_f64().map(|r| round(r, 0)),
            "baseline": "both sides SELECT … ORDER BY id with psql / mariadb --quick, at once",
            "baseline_s": round(base.as_secs_f64(), 3),
            "baseline_rows_per_s": round(rows / base.as_secs_f64(), 0),
            "ratio": round(base.as_secs_f64() / took.as_secs_f64(), 2),
        }))
    })();
    harness::record_outcome(&mut result, outcome, String::new);
    if let Some(Source::Pg(db)) = &source
        && let Err(e) = harness::drop_slot(db, &format!("duplex_{0}_{0}", db.name()))
    {
        result["slot_error"] = json!(e.to_string());
    }
    result
}

fn summary(results: &[Value]) -> String {
    let mut out = String::from(
        "| direction | rows | duplex verify | of which comparing | same-run ordered scan of both sides | duplex / scan |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in results {
        let direction = match r["direction"].as_str() {
            Some("postgres->postgres") => "PostgreSQL → PostgreSQL",
            _ => "MariaDB → PostgreSQL",
        };
        if let Some(error) = r["error"].as_str() {
            let first = error.lines().next().unwrap_or("");
            out.push_str(&format!("| {direction} | | error: {first} | | | |\n"));
            continue;
        }
        let num = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
        out.push_str(&format!(
            "| {direction} | {} | {:.0} rows/s ({:.1} s, `--jobs {}`) | {:.0} rows/s | {:.0} rows/s ({:.1} s) | {:.2}× |\n",
            r["rows"],
            num("duplex_rows_per_s"),
            num("duplex_s"),
            r["jobs"],
            num("compare_rows_per_s"),
            num("baseline_rows_per_s"),
            num("baseline_s"),
            num("ratio"),
        ));
    }
    out
}

fn main() {
    harness::main_with("verify", run);
}

fn run() -> BenchResult<()> {
    let rows = env_u64("DUPLEX_BENCH_ROWS", 1_000_000)?.max(1);
    let jobs = env_u64("DUPLEX_BENCH_JOBS", 4)?.max(1);
    let bin = harness::duplex_binary("verify")?;
    eprintln!(
        "bench: {rows} rows, --jobs {jobs}, duplex at {}",
        bin.display()
    );
    let servers = Servers::start()?;
    let started = Instant::now();
    let mut results = Vec::new();
    for pg_source in [true, false] {
        let result = run_case(&servers, &bin, pg_source, rows, jobs);
        println!("{result}");
        results.push(result);
    }
    drop(servers);
    println!();
    print!("{}", summary(&results));
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
