//! End-to-end benchmark of `duplex backfill`: the real release binary copying a table between
//! throwaway servers, next to the stock clients' pipe measured in the same run.
//!
//! # Running it
//!
//! ```sh
//! cargo build --release --bin duplex && cargo bench --bench backfill
//! ```
//!
//! Like `benches/replication.rs` it runs the `duplex` next to its own profile directory
//! (`target/release/duplex`, or `$DUPLEX_BENCH_BIN`) and without the `--bench` argument only
//! prints how to run it. `DUPLEX_BENCH_ROWS` (default 1,000,000) sets the table size,
//! `DUPLEX_BENCH_JOBS` (4) the `--jobs`, `DUPLEX_BENCH_TIMEOUT` (600 s) how long one copy may
//! take before the case fails. `DUPLEX_BENCH_CASES` (`postgres`, `mariadb` or both, comma
//! separated; default both) picks the directions by their source.
//!
//! # What is measured
//!
//! One throwaway PostgreSQL (testkit settings, `fsync=off`, but `synchronous_commit=on` as in
//! the replication bench) and one MariaDB server. Per direction (PostgreSQL → PostgreSQL,
//! MariaDB → PostgreSQL) a fresh source database holds `ROWS` rows of
//! `bench (id bigint PK, a int, b text, c numeric(12,2), d timestamptz)` (MariaDB: BIGINT, INT,
//! LONGTEXT, DECIMAL(12,2), DATETIME(6)), vacuumed/analyzed and read once so that both copies
//! find it cached. Then, into two fresh empty PostgreSQL databases:
//!
//! 1. `baseline`: `psql \copy bench to stdout | psql \copy bench from stdin` (from MariaDB:
//!    `mariadb --batch --quick -e 'SELECT …' | psql \copy bench from stdin`), wall time of the
//!    pipe;
//! 2. `duplex --config F backfill --jobs N`, wall time of the process (start-up, snapshot and
//!    slot creation, copy, state store), with its peak RSS (`VmHWM` from `/proc/<pid>/status`,
//!    polled every 10 ms while it runs).
//!
//! 3. PostgreSQL → PostgreSQL only: PostgreSQL's own initial sync (a publication and a
//!    subscription with `copy_data = true` on a slot made beforehand), from `ALTER
//!    SUBSCRIPTION ... ENABLE` until the table is synchronised with every row;
//! 4. PostgreSQL → PostgreSQL only: duplex again with `DUPLEX_BACKFILL_BULK=off`, every range
//!    decoded to canonical rows and encoded again (the path other pairs of kinds take).
//!
//! Every target is checked against the source (count, sum(id), sum(a), sum(c)). The sites are
//! named after their databases, so a PostgreSQL source's slot is `duplex_<db>_<db>`; it is
//! dropped at the end of the case, also when the case failed.
//!
//! # Output
//!
//! One JSON object per direction on stdout (`"bench": "backfill"`, or an `error` field with
//! the tail of duplex's log), then a Markdown table. Progress goes to stderr.

mod harness;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use duplex_testkit::{MariaDatabase, PgDatabase};
use harness::{BenchResult, DuplexProcess, Servers, env_u64, round, site_toml};
use serde_json::{Value, json};

const PG_TABLE: &str =
    "CREATE TABLE bench (id bigint PRIMARY KEY, a int, b text, c numeric(12,2), d timestamptz)";
const MARIA_TABLE: &str = "CREATE TABLE bench (id BIGINT PRIMARY KEY, a INT, b LONGTEXT, \
     c DECIMAL(12,2), d DATETIME(6)) ENGINE=InnoDB";
/// Count and sums that must match between source and target (same text on both kinds).
const CHECKSUM: &str = "SELECT count(*), sum(id), sum(a), sum(c) FROM bench";

#[derive(Clone, Copy, Debug)]
struct Sizes {
    rows: u64,
    jobs: u64,
    timeout: Duration,
}

impl Sizes {
    fn from_env() -> BenchResult<Sizes> {
        Ok(Sizes {
            rows: env_u64("DUPLEX_BENCH_ROWS", 1_000_000)?.max(1),
            jobs: env_u64("DUPLEX_BENCH_JOBS", 4)?.max(1),
            timeout: Duration::from_secs(env_u64("DUPLEX_BENCH_TIMEOUT", 600)?),
        })
    }
}

/// The source of one direction.
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

    fn checksum(&self) -> BenchResult<String> {
        Ok(match self {
            Source::Pg(db) => db.psql(CHECKSUM)?.trim().replace('|', " "),
            Source::Maria(db) => db.sql(CHECKSUM)?.trim().replace('\t', " "),
        })
    }

    /// The `[sites.…]` section and the mapped table's name.
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
}

/// A fresh source with `rows` rows, cached.
fn create_source(servers: &Servers, pg: bool, rows: u64) -> BenchResult<Source> {
    if pg {
        let db = servers.pg.try_create_database()?;
        db.execute_as_duplex(&format!(
            "{PG_TABLE}; INSERT INTO bench SELECT g, g % 1000, md5(g::text), \
             (g % 100000) / 100.0, now() FROM generate_series(1, {rows}) g"
        ))?;
        db.psql("VACUUM ANALYZE bench")?;
        db.psql("SELECT count(*) FROM bench")?;
        Ok(Source::Pg(db))
    } else {
        let db = servers.maria.try_create_database()?;
        db.execute_as_duplex(MARIA_TABLE)?;
        db.sql(&format!(
            "INSERT INTO bench SELECT seq, seq % 1000, md5(seq), (seq % 100000) / 100, NOW(6) \
             FROM seq_1_to_{rows}"
        ))?;
        db.sql("ANALYZE TABLE bench")?;
        db.sql("SELECT count(*), sum(length(b)) FROM bench")?;
        Ok(Source::Maria(db))
    }
}

/// A fresh, empty PostgreSQL target.
fn create_target(servers: &Servers) -> BenchResult<PgDatabase> {
    let db = servers.pg.try_create_database()?;
    db.execute_as_duplex(PG_TABLE)?;
    Ok(db)
}

fn pg_checksum(db: &PgDatabase) -> BenchResult<String> {
    Ok(db.psql(CHECKSUM)?.trim().replace('|', " "))
}

/// Copies the source table into `target` with the stock clients, piped; the pipe and its time.
fn baseline(source: &Source, target: &PgDatabase) -> BenchResult<(&'static str, Duration)> {
    let psql = |url: &str, meta: &str| {
        let mut command = Command::new("psql");
        command.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", meta]);
        command
    };
    let (method, mut producer) = match source {
        Source::Pg(db) => (
            "psql \\copy bench to stdout | psql \\copy bench from stdin",
            psql(&db.url(), "\\copy bench to pstdout"),
        ),
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
                "SELECT id, a, b, c, DATE_FORMAT(d, '%Y-%m-%d %H:%i:%s.%f+00') FROM bench",
            ]);
            (
                "mariadb --batch --quick -e 'SELECT …' | psql \\copy bench from stdin",
                command,
            )
        }
    };
    let mut consumer = psql(&target.url(), "\\copy bench from pstdin");
    let took = harness::time_pipe(&mut producer, &mut consumer, "baseline")?;
    Ok((method, took))
}

/// PostgreSQL's own initial sync into `target`: a publication of `bench` on the source and a
/// subscription on the target (`copy_data = true`, on a slot made beforehand because both
/// databases are on one server), timed from `ALTER SUBSCRIPTION ... ENABLE` until the table
/// is synchronised (`pg_subscription_rel` ready) with every row.
fn native_initial_sync(
    source: &PgDatabase,
    target: &PgDatabase,
    rows: u64,
    timeout: Duration,
) -> BenchResult<Duration> {
    let slot = format!("native_{}", source.name());
    source.psql(&format!(
        "CREATE PUBLICATION native FOR TABLE bench; \
         SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
    ))?;
    let result = (|| -> BenchResult<Duration> {
        target.psql(&format!(
            "CREATE SUBSCRIPTION native CONNECTION '{}' PUBLICATION native \
             WITH (create_slot = false, slot_name = '{slot}', copy_data = true, enabled = false)",
            source.admin_url()
        ))?;
        let start = Instant::now();
        target.psql("ALTER SUBSCRIPTION native ENABLE")?;
        let want = format!("t|{rows}");
        loop {
            let state = target.psql(
                "SELECT bool_and(srsubstate IN ('r', 's')) AND count(*) > 0, \
                 (SELECT count(*) FROM bench) FROM pg_subscription_rel",
            )?;
            if state.trim() == want {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(
                    format!("the native initial sync took over {} s", timeout.as_secs()).into(),
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })();
    let _ = target.psql(
        "ALTER SUBSCRIPTION native DISABLE; ALTER SUBSCRIPTION native SET (slot_name = NONE); \
         DROP SUBSCRIPTION native",
    );
    harness::drop_slot(source, &slot)?;
    result
}

/// Runs `duplex --config F backfill --jobs N` to its end: wall time and peak RSS in KiB.
///
/// `rows_only`: with `DUPLEX_BACKFILL_BULK=off`, every range read and written as canonical
/// rows (the path before the unread copy, and the one any other pair of kinds takes).
fn run_backfill(
    bin: &Path,
    config: &Path,
    log: &Path,
    sizes: Sizes,
    rows_only: bool,
) -> BenchResult<(Duration, u64)> {
    let start = Instant::now();
    let jobs = sizes.jobs.to_string();
    let env: &[(&str, &str)] = if rows_only {
        &[("DUPLEX_BACKFILL_BULK", "off")]
    } else {
        &[]
    };
    let mut duplex =
        DuplexProcess::spawn_with(bin, config, &["backfill", "--jobs", &jobs], log.into(), env)?;
    let mut peak_kib = 0;
    loop {
        // VmHWM only grows; the last reading before exit is the peak (give or take 10 ms).
        if let Ok(kib) = duplex.peak_rss_kib() {
            peak_kib = kib;
        }
        if let Some(status) = duplex.child.try_wait()? {
            let took = start.elapsed();
            if !status.success() {
                return Err(format!("duplex backfill exited with {status}").into());
            }
            return Ok((took, peak_kib));
        }
        if start.elapsed() > sizes.timeout {
            duplex.kill();
            return Err(format!("duplex backfill took over {} s", sizes.timeout.as_secs()).into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One direction from scratch: its JSON line.
fn run_case(servers: &Servers, bin: &Path, pg_source: bool, sizes: Sizes) -> Value {
    let direction = if pg_source {
        "postgres->postgres"
    } else {
        "mariadb->postgres"
    };
    let mut result = json!({"bench": "backfill", "direction": direction, "rows": sizes.rows,
                            "jobs": sizes.jobs});
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            result["error"] = json!(e.to_string());
            return result;
        }
    };
    let log = dir.path().join("duplex.log");
    let mut source = None;
    let outcome = (|| -> BenchResult<Value> {
        eprintln!("bench: {direction}: loading {} source rows", sizes.rows);
        let src = &*source.insert(create_source(servers, pg_source, sizes.rows)?);
        let expected = src.checksum()?;
        let base_db = create_target(servers)?;

        eprintln!("bench: {direction}: baseline");
        let (method, base_took) = baseline(src, &base_db)?;
        let base_sum = pg_checksum(&base_db)?;
        if base_sum != expected {
            return Err(format!("baseline copied {base_sum}, source has {expected}").into());
        }
        drop(base_db);

        let native = match src {
            Source::Pg(db) => {
                eprintln!("bench: {direction}: PostgreSQL's own initial sync");
                let native_db = create_target(servers)?;
                let took = native_initial_sync(db, &native_db, sizes.rows, sizes.timeout)?;
                let native_sum = pg_checksum(&native_db)?;
                if native_sum != expected {
                    return Err(format!(
                        "the native sync copied {native_sum}, source has {expected}"
                    )
                    .into());
                }
                Some(took)
            }
            Source::Maria(_) => None,
        };

        let (site, table) = src.site();
        let duplex = |rows_only: bool| -> BenchResult<(Duration, u64)> {
            eprintln!(
                "bench: {direction}: duplex backfill --jobs {}{}",
                sizes.jobs,
                if rows_only { " (rows only)" } else { "" }
            );
            let target = create_target(servers)?;
            let case = tempfile::tempdir()?;
            let config = case.path().join("duplex.toml");
            std::fs::write(
                &config,
                format!(
                    "[state]\ndir = \"{state}\"\n\n{site}{target_site}[[mappings]]\nname = \"bench\"\n\
                     tables = {{ {s} = \"{table}\", {t} = \"public.bench\" }}\n\
                     direction = \"{s}->{t}\"\n",
                    state = case.path().join("state").display(),
                    target_site = site_toml(target.name(), "postgres", &target.url()),
                    s = src.name(),
                    t = target.name(),
                ),
            )?;
            let measured = run_backfill(bin, &config, &log, sizes, rows_only)?;
            let copied = pg_checksum(&target)?;
            if copied != expected {
                return Err(format!("duplex copied {copied}, source has {expected}").into());
            }
            // The slot and publication this backfill made (claimed by its deployment), so that
            // the next one starts from scratch too.
            if let Source::Pg(db) = src {
                let name = format!("duplex_{0}_{0}", db.name());
                harness::drop_slot(db, &name)?;
                db.psql(&format!("DROP PUBLICATION IF EXISTS {name}"))?;
            }
            Ok(measured)
        };
        let (took, peak_kib) = duplex(false)?;
        let rows_only = if pg_source {
            Some(duplex(true)?.0)
        } else {
            None
        };
        let rows = sizes.rows as f64;
        let per_s = |d: Duration| round(rows / d.as_secs_f64(), 0);
        let mut out = json!({
            "duplex_s": round(took.as_secs_f64(), 3),
            "duplex_rows_per_s": per_s(took),
            "baseline": method,
            "baseline_s": round(base_took.as_secs_f64(), 3),
            "baseline_rows_per_s": per_s(base_took),
            "ratio": round(base_took.as_secs_f64() / took.as_secs_f64(), 2),
            "peak_rss_mib": round(peak_kib as f64 / 1024.0, 1),
        });
        if let Some(native) = native {
            out["native_initial_sync_s"] = json!(round(native.as_secs_f64(), 3));
            out["native_rows_per_s"] = json!(per_s(native));
            out["ratio_to_native"] = json!(round(native.as_secs_f64() / took.as_secs_f64(), 2));
        }
        if let Some(rows_only) = rows_only {
            out["duplex_rows_only_s"] = json!(round(rows_only.as_secs_f64(), 3));
            out["duplex_rows_only_rows_per_s"] = json!(per_s(rows_only));
        }
        Ok(out)
    })();
    harness::record_outcome(&mut result, outcome, || harness::log_tail(&log, 15));
    // The slot backfill created, before the database goes.
    if let Some(Source::Pg(db)) = &source
        && let Err(e) = harness::drop_slot(db, &format!("duplex_{0}_{0}", db.name()))
    {
        result["slot_error"] = json!(e.to_string());
    }
    result
}

fn summary(results: &[Value]) -> String {
    let mut out = String::from(
        "| direction | rows | duplex backfill | same-run baseline | duplex / baseline | native initial sync | duplex / native | duplex, rows only | peak RSS |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let direction = match r["direction"].as_str() {
            Some("postgres->postgres") => "PostgreSQL → PostgreSQL",
            _ => "MariaDB → PostgreSQL",
        };
        if let Some(error) = r["error"].as_str() {
            let first = error.lines().next().unwrap_or("");
            out.push_str(&format!("| {direction} | | error: {first} | | | | | | |\n"));
            continue;
        }
        let num = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
        let baseline = r["baseline"].as_str().unwrap_or("").replace('|', "\\|");
        let optional = |key: &str, digits: usize, unit: &str| {
            r[key]
                .as_f64()
                .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.digits$}{unit}"))
        };
        out.push_str(&format!(
            "| {direction} | {} | {:.0} rows/s ({:.1} s, `--jobs {}`) | {:.0} rows/s ({:.1} s, `{baseline}`) | {:.2}× | {} | {} | {} | {:.0} MiB |\n",
            r["rows"],
            num("duplex_rows_per_s"),
            num("duplex_s"),
            r["jobs"],
            num("baseline_rows_per_s"),
            num("baseline_s"),
            num("ratio"),
            optional("native_rows_per_s", 0, " rows/s"),
            optional("ratio_to_native", 2, "×"),
            optional("duplex_rows_only_rows_per_s", 0, " rows/s"),
            num("peak_rss_mib"),
        ));
    }
    out
}

fn main() {
    harness::main_with("backfill", run);
}

fn run() -> BenchResult<()> {
    let sizes = Sizes::from_env()?;
    let bin = harness::duplex_binary("backfill")?;
    eprintln!("bench: {sizes:?}, duplex at {}", bin.display());
    let servers = Servers::start()?;
    let started = Instant::now();
    let mut results = Vec::new();
    let cases = std::env::var("DUPLEX_BENCH_CASES").unwrap_or_else(|_| "postgres,mariadb".into());
    let wanted: Vec<&str> = cases.split(',').map(str::trim).collect();
    if let Some(bad) = wanted.iter().find(|c| !["postgres", "mariadb"].contains(c)) {
        return Err(format!("DUPLEX_BENCH_CASES: unknown case {bad:?} (postgres, mariadb)").into());
    }
    for pg_source in [true, false] {
        if !wanted.contains(&if pg_source { "postgres" } else { "mariadb" }) {
            continue;
        }
        let result = run_case(&servers, &bin, pg_source, sizes);
        println!("{result}");
        results.push(result);
    }
    drop(servers);
    println!();
    print!("{}", summary(&results));
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
