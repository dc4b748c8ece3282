//! duplex against PostgreSQL's own logical replication (publication + subscription), same
//! server, same schema, same workload, same run: initial load, backlog catch-up and stream.
//!
//! # Running it
//!
//! ```sh
//! cargo build --release --bin duplex && cargo bench --bench native
//! ```
//!
//! `DUPLEX_BENCH_CASES` (default `initial,backlog,stream`) picks the cases. Sizes:
//! `DUPLEX_BENCH_SCALE` (default 1: 1.35M rows loaded), `DUPLEX_BENCH_TXNS` (2,000
//! transactions of 100 changes: 200,000 changes), `DUPLEX_BENCH_TIMEOUT` (seconds one wait may
//! take, 600). Like the other end-to-end benches it runs `target/release/duplex` (or
//! `$DUPLEX_BENCH_BIN`) and without `--bench` only prints how to run it.
//!
//! # Schema and workload
//!
//! An online shop's six tables with foreign keys and secondary indexes: `customers` (50,000 ×
//! scale, unique `email`), `products` (20,000, unique `sku`), `stock` (one per product),
//! `orders` (300,000, indexes on `customer_id` and `status`), `order_lines` (three per order,
//! composite key, index on `product_id`), `shipments` (one per five orders, index on
//! `order_id`). The template database is loaded once; every case starts from copies of it
//! (`CREATE DATABASE ... TEMPLATE`), so source and target begin equal where a case needs it.
//!
//! The workload is a procedure committing `TXNS` transactions of exactly 100 changes each,
//! deterministic (no random numbers), touching every table: 10 new orders with 30 lines, 30
//! stock updates, 20 order status updates, 5 new shipments, 5 order lines deleted. A case is
//! over when the target holds the last transaction's last shipment (both replicators apply
//! whole source transactions atomically and in commit order); then every table is compared
//! with the source (count and md5 of all rows in key order), and a difference fails the case.
//!
//! # Cases
//!
//! 1. `initial`: an empty target with the schema. duplex: `duplex backfill` (default `--jobs`),
//!    process time. Native: `CREATE SUBSCRIPTION ... WITH (copy_data = true)` on a slot made
//!    beforehand (both databases are on one server), from `ENABLE` until every table is
//!    synchronised and the last shipment is there.
//! 2. `backlog`: source and target equal copies; the replicator is set up and live, then
//!    stopped (duplex: SIGTERM after its link started; native: subscription disabled) while the
//!    workload commits; then started. Time from the start until the target is equal.
//! 3. `stream`: the replicator runs while the workload commits; `source_s` is the workload's
//!    time, `behind_s` how long after the source finished the target was equal, and
//!    `changes_per_s` the changes over the source time plus that lag.
//!
//! # Output
//!
//! One JSON object per case on stdout (`"bench": "native"`, `case`, `duplex_s`, `native_s`,
//! `ratio` = native time / duplex time, so above 1 means duplex is faster (for `stream` the
//! times from the workload's start until the target was equal); `duplex_cpu_s`,
//! duplex's own CPU seconds while it caught up or streamed, and `*_server_cpu_s`, the
//! PostgreSQL server's CPU seconds over each replicator's whole case, both source and target
//! sides), then a Markdown table. Progress goes to stderr.

mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use duplex_testkit::PgDatabase;
use harness::{BenchResult, DuplexProcess, Servers, env_u64, round, site_toml};
use serde_json::{Value, json};

/// The six tables, in foreign-key order.
const TABLES: [(&str, &str); 6] = [
    ("customers", "id"),
    ("products", "id"),
    ("stock", "product_id"),
    ("orders", "id"),
    ("order_lines", "order_id, line"),
    ("shipments", "id"),
];

const SCHEMA: &str = "\
CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL, \
  created timestamptz NOT NULL);
CREATE TABLE products (id bigint PRIMARY KEY, sku text NOT NULL UNIQUE, name text NOT NULL, \
  price numeric(12,2) NOT NULL);
CREATE TABLE stock (product_id bigint PRIMARY KEY REFERENCES products, warehouse int NOT NULL, \
  on_hand int NOT NULL, updated timestamptz NOT NULL);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers, \
  status text NOT NULL, total numeric(12,2) NOT NULL, created timestamptz NOT NULL);
CREATE INDEX ON orders (customer_id);
CREATE INDEX ON orders (status);
CREATE TABLE order_lines (order_id bigint NOT NULL REFERENCES orders, line int NOT NULL, \
  product_id bigint NOT NULL REFERENCES products, qty int NOT NULL, price numeric(12,2) NOT NULL, \
  PRIMARY KEY (order_id, line));
CREATE INDEX ON order_lines (product_id);
CREATE TABLE shipments (id bigint PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders, \
  carrier text NOT NULL, state text NOT NULL, updated timestamptz NOT NULL);
CREATE INDEX ON shipments (order_id);";

/// Row counts at scale 1.
const CUSTOMERS: u64 = 50_000;
const PRODUCTS: u64 = 20_000;
const ORDERS: u64 = 300_000;

#[derive(Clone, Copy, Debug)]
struct Sizes {
    scale: u64,
    txns: u64,
    timeout: Duration,
}

impl Sizes {
    fn customers(&self) -> u64 {
        CUSTOMERS * self.scale
    }
    fn products(&self) -> u64 {
        PRODUCTS * self.scale
    }
    fn orders(&self) -> u64 {
        ORDERS * self.scale
    }
    /// The id of the last shipment the workload inserts.
    fn last_shipment(&self) -> u64 {
        self.orders() / 5 + self.txns * 5
    }
    fn changes(&self) -> u64 {
        self.txns * 100
    }
}

/// What one replicator's run of a case measured.
#[derive(Debug, Default, Clone, Copy)]
struct Timed {
    /// The case's time (for `stream`: how far behind the target was when the source finished).
    took: Duration,
    /// For `stream`: the workload's time on the source.
    source: Option<Duration>,
    /// duplex's own CPU seconds during the timed part (`backlog` and `stream`).
    duplex_cpu: Option<f64>,
    /// The PostgreSQL server's CPU seconds over the whole case (set-up, workload and checks
    /// included: compare the two replicators' figures, not with the time).
    server_cpu: f64,
}

/// Loads the template: schema, rows, the workload procedure.
fn load_template(db: &PgDatabase, sizes: Sizes) -> BenchResult<()> {
    let (c, p, o) = (sizes.customers(), sizes.products(), sizes.orders());
    db.execute_as_duplex(SCHEMA)?;
    db.execute_as_duplex(&format!(
        "INSERT INTO customers SELECT g, 'c' || g || '@example.com', 'customer ' || g, now() \
           FROM generate_series(1, {c}::bigint) g;
         INSERT INTO products SELECT g, 'SKU-' || g, 'product ' || g, (g % 10000) / 100.0 \
           FROM generate_series(1, {p}::bigint) g;
         INSERT INTO stock SELECT g, 1 + g % 4, 1000, now() FROM generate_series(1, {p}::bigint) g;
         INSERT INTO orders SELECT g, (g * 7919) % {c} + 1, 'shipped', (g * 31 % 100000) / 100.0, \
           now() - g * interval '1 second' FROM generate_series(1, {o}::bigint) g;
         INSERT INTO order_lines SELECT o, l, (o * 13 + l * 101) % {p} + 1, 1 + (o + l) % 5, \
           (o * l * 17 % 10000) / 100.0 FROM generate_series(1, {o}::bigint) o, generate_series(1, 3) l;
         INSERT INTO shipments SELECT g, g * 5, 'ups', 'delivered', now() \
           FROM generate_series(1, {o}::bigint / 5) g;
         CREATE PROCEDURE workload(total int) LANGUAGE plpgsql AS $$
         DECLARE first bigint;
         BEGIN
           FOR t IN 0 .. total - 1 LOOP
             first := {o} + t * 10;
             INSERT INTO orders SELECT id, (id * 7919) % {c} + 1, 'new', (id * 31 % 100000) / 100.0, now()
               FROM generate_series(first + 1, first + 10) id;
             INSERT INTO order_lines SELECT id, l, (id * 13 + l * 101) % {p} + 1, 1 + (id + l) % 5,
               (id * l * 17 % 10000) / 100.0
               FROM generate_series(first + 1, first + 10) id, generate_series(1, 3) l;
             UPDATE stock SET on_hand = on_hand - 1, updated = now()
               WHERE product_id IN (SELECT (t * 30 + k) % {p} + 1 FROM generate_series(1, 30) k);
             UPDATE orders SET status = 'paid'
               WHERE id IN (SELECT (t * 20 + k) % {o} + 1 FROM generate_series(1, 20) k);
             DELETE FROM order_lines WHERE line = 3
               AND order_id IN (SELECT (t * 5 + k) % {o} + 1 FROM generate_series(1, 5) k);
             INSERT INTO shipments SELECT {o} / 5 + t * 5 + k, first + k, 'dhl', 'created', now()
               FROM generate_series(1, 5) k;
             COMMIT;
           END LOOP;
         END $$;"
    ))?;
    db.psql("VACUUM ANALYZE")?;
    Ok(())
}

/// A fresh database holding a copy of `template` (dropped with the handle): the testkit's
/// fresh database, dropped and made again under its name from the template.
fn copy_of(servers: &Servers, template: &PgDatabase) -> BenchResult<PgDatabase> {
    let db = servers.pg.try_create_database()?;
    servers.pg.psql(
        "postgres",
        &format!(
            "DROP DATABASE {0}; CREATE DATABASE {0} TEMPLATE {1} OWNER duplex",
            db.name(),
            template.name()
        ),
    )?;
    Ok(db)
}

/// A fresh database with the schema and no rows.
fn empty(servers: &Servers) -> BenchResult<PgDatabase> {
    let db = servers.pg.try_create_database()?;
    db.execute_as_duplex(SCHEMA)?;
    Ok(db)
}

/// Count and md5 of every table, in key order.
fn fingerprint(db: &PgDatabase) -> BenchResult<Vec<String>> {
    TABLES
        .iter()
        .map(|(table, key)| {
            Ok(db
                .psql(&format!(
                    "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY {key}), '')) \
                     FROM {table} t"
                ))?
                .trim()
                .to_owned())
        })
        .collect()
}

/// Fails unless `target` holds exactly the rows of `source`.
fn check_equal(source: &PgDatabase, target: &PgDatabase, who: &str) -> BenchResult<()> {
    let (a, b) = (fingerprint(source)?, fingerprint(target)?);
    for ((table, _), (a, b)) in TABLES.iter().zip(a.iter().zip(&b)) {
        if a != b {
            return Err(format!("{who}: {table} differs: source {a}, target {b}").into());
        }
    }
    Ok(())
}

/// Waits until `target` holds the shipment `id`; the time it took from `since`.
fn wait_for_shipment(
    target: &PgDatabase,
    id: u64,
    since: Instant,
    timeout: Duration,
) -> BenchResult<Duration> {
    let sql = format!("SELECT count(*) FROM shipments WHERE id = {id}");
    loop {
        if target.psql(&sql)?.trim() == "1" {
            return Ok(since.elapsed());
        }
        if since.elapsed() > timeout {
            return Err(format!("shipment {id} did not arrive in {} s", timeout.as_secs()).into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the workload on `source`; its time.
fn workload(source: &PgDatabase, sizes: Sizes) -> BenchResult<Duration> {
    let start = Instant::now();
    source.execute_as_duplex(&format!("CALL workload({})", sizes.txns))?;
    Ok(start.elapsed())
}

/// duplex's configuration: the six tables from `source` to `target`, connecting as the
/// superuser like the native subscription (whose apply worker, as its superuser owner, skips
/// foreign-key triggers with `session_replication_role = replica`; duplex's sessions do the
/// same when the role may, and check them deferred otherwise).
fn duplex_config(
    dir: &Path,
    source: &PgDatabase,
    target: &PgDatabase,
) -> BenchResult<std::path::PathBuf> {
    let (s, t) = (source.name(), target.name());
    let mut text = format!(
        "[state]\ndir = \"{}\"\n\n{}{}",
        dir.join("state").display(),
        site_toml(s, "postgres", &source.admin_url()),
        site_toml(t, "postgres", &target.admin_url())
    );
    for (table, _) in TABLES {
        text.push_str(&format!(
            "[[mappings]]\nname = \"{table}\"\ntables = {{ {s} = \"public.{table}\", {t} = \"public.{table}\" }}\ndirection = \"{s}->{t}\"\n\n"
        ));
    }
    let path = dir.join("duplex.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Starts `duplex run` and waits until every link streams.
fn start_run(
    bin: &Path,
    config: &Path,
    log: &Path,
    timeout: Duration,
) -> BenchResult<DuplexProcess> {
    let mut duplex = DuplexProcess::spawn(bin, config, &["run"], log.into())?;
    let start = Instant::now();
    while !duplex.log_text().contains("link started") {
        duplex.check_running()?;
        if start.elapsed() > timeout {
            duplex.kill();
            return Err("duplex run did not start its link".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(duplex)
}

/// The slot and publication a native case uses, and its subscription on the target.
struct Native<'a> {
    source: &'a PgDatabase,
    target: &'a PgDatabase,
    slot: String,
}

impl<'a> Native<'a> {
    /// Publication, slot and a disabled subscription.
    fn set_up(
        source: &'a PgDatabase,
        target: &'a PgDatabase,
        copy_data: bool,
    ) -> BenchResult<Native<'a>> {
        let slot = format!("native_{}", source.name());
        source.psql(&format!(
            "CREATE PUBLICATION native FOR TABLE {}; \
             SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')",
            TABLES.map(|(t, _)| t).join(", ")
        ))?;
        let native = Native {
            source,
            target,
            slot,
        };
        target.psql(&format!(
            "CREATE SUBSCRIPTION native CONNECTION '{}' PUBLICATION native \
             WITH (create_slot = false, slot_name = '{}', copy_data = {copy_data}, enabled = false)",
            source.admin_url(),
            native.slot
        ))?;
        Ok(native)
    }

    fn enable(&self) -> BenchResult<()> {
        self.target.psql("ALTER SUBSCRIPTION native ENABLE")?;
        Ok(())
    }

    /// Waits until the apply worker streams from the slot.
    fn wait_active(&self, timeout: Duration) -> BenchResult<()> {
        let start = Instant::now();
        let sql = format!(
            "SELECT active FROM pg_replication_slots WHERE slot_name = '{}'",
            self.slot
        );
        while self.source.psql(&sql)?.trim() != "t" {
            if start.elapsed() > timeout {
                return Err("the subscription did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Waits until every table is synchronised (initial copy done).
    fn wait_synchronised(&self, since: Instant, timeout: Duration) -> BenchResult<()> {
        let sql =
            "SELECT bool_and(srsubstate IN ('r', 's')) AND count(*) = 6 FROM pg_subscription_rel";
        while self.target.psql(sql)?.trim() != "t" {
            if since.elapsed() > timeout {
                return Err("the initial sync did not finish".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for Native<'_> {
    fn drop(&mut self) {
        let _ = self.target.psql(
            "ALTER SUBSCRIPTION native DISABLE; ALTER SUBSCRIPTION native SET (slot_name = NONE); \
             DROP SUBSCRIPTION native",
        );
        let _ = harness::drop_slot(self.source, &self.slot);
        let _ = self.source.psql("DROP PUBLICATION IF EXISTS native");
    }
}

/// Drops every slot of `db` (duplex's, after it stopped).
fn drop_slots(db: &PgDatabase) -> BenchResult<()> {
    let slots =
        db.psql("SELECT slot_name FROM pg_replication_slots WHERE database = current_database()")?;
    for slot in slots.lines().filter(|l| !l.is_empty()) {
        harness::drop_slot(db, slot)?;
    }
    Ok(())
}

/// One case, duplex then native, from fresh copies: its JSON line.
fn run_case(
    case: &str,
    servers: &Servers,
    template: &PgDatabase,
    bin: &Path,
    sizes: Sizes,
) -> Value {
    let mut result = json!({"bench": "native", "case": case, "txns": sizes.txns,
                            "changes": sizes.changes(), "scale": sizes.scale});
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            result["error"] = json!(e.to_string());
            return result;
        }
    };
    let log = dir.path().join("duplex.log");
    let outcome = (|| -> BenchResult<Value> {
        eprintln!("bench: {case}: duplex");
        let duplex = duplex_case(case, servers, template, bin, &log, dir.path(), sizes)?;
        eprintln!("bench: {case}: native");
        let native = native_case(case, servers, template, sizes)?;
        let (duplex_s, native_s) = (duplex.took.as_secs_f64(), native.took.as_secs_f64());
        let mut out = json!({
            "duplex_s": round(duplex_s, 3),
            "native_s": round(native_s, 3),
            "ratio": round(native_s / duplex_s, 2),
            "duplex_server_cpu_s": round(duplex.server_cpu, 2),
            "native_server_cpu_s": round(native.server_cpu, 2),
        });
        if let Some(cpu) = duplex.duplex_cpu {
            out["duplex_cpu_s"] = json!(round(cpu, 2));
        }
        let changes = sizes.changes() as f64;
        match case {
            "initial" => {
                let rows = (sizes.customers()
                    + 2 * sizes.products()
                    + 4 * sizes.orders()
                    + sizes.orders() / 5) as f64;
                out["rows"] = json!(rows);
                out["duplex_rows_per_s"] = json!(round(rows / duplex_s, 0));
                out["native_rows_per_s"] = json!(round(rows / native_s, 0));
            }
            "backlog" => {
                out["duplex_changes_per_s"] = json!(round(changes / duplex_s, 0));
                out["native_changes_per_s"] = json!(round(changes / native_s, 0));
            }
            _ => {
                let ds = duplex.source.unwrap_or_default().as_secs_f64();
                let ns = native.source.unwrap_or_default().as_secs_f64();
                out["duplex_source_s"] = json!(round(ds, 3));
                out["native_source_s"] = json!(round(ns, 3));
                out["duplex_behind_s"] = json!(round(duplex_s, 3));
                out["native_behind_s"] = json!(round(native_s, 3));
                out["duplex_changes_per_s"] = json!(round(changes / (ds + duplex_s), 0));
                out["native_changes_per_s"] = json!(round(changes / (ns + native_s), 0));
                // Both lags are small; the ratio compares the whole stream's throughput.
                out["ratio"] = json!(round((ns + native_s) / (ds + duplex_s), 2));
            }
        }
        Ok(out)
    })();
    harness::record_outcome(&mut result, outcome, || harness::log_tail(&log, 15));
    result
}

/// duplex's run of `case`.
#[allow(clippy::too_many_arguments)]
fn duplex_case(
    case: &str,
    servers: &Servers,
    template: &PgDatabase,
    bin: &Path,
    log: &Path,
    dir: &Path,
    sizes: Sizes,
) -> BenchResult<Timed> {
    let postmaster = servers
        .pg
        .pid()
        .ok_or("the PostgreSQL server is not running")?;
    let source = copy_of(servers, template)?;
    let target = if case == "initial" {
        empty(servers)?
    } else {
        copy_of(servers, template)?
    };
    let config = duplex_config(dir, &source, &target)?;
    let cpu_before = harness::server_cpu_seconds(postmaster);
    let timed = (|| -> BenchResult<Timed> {
        match case {
            "initial" => {
                let start = Instant::now();
                let mut duplex = DuplexProcess::spawn(bin, &config, &["backfill"], log.into())?;
                loop {
                    if let Some(status) = duplex.child.try_wait()? {
                        if !status.success() {
                            return Err(format!("duplex backfill exited with {status}").into());
                        }
                        return Ok(Timed {
                            took: start.elapsed(),
                            ..Timed::default()
                        });
                    }
                    if start.elapsed() > sizes.timeout {
                        duplex.kill();
                        return Err("duplex backfill did not finish".into());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            "backlog" => {
                let mut duplex = start_run(bin, &config, log, sizes.timeout)?;
                duplex.terminate()?;
                workload(&source, sizes)?;
                let start = Instant::now();
                let mut duplex = start_run(bin, &config, log, sizes.timeout)?;
                let cpu = duplex.cpu_seconds();
                let took = wait_for_shipment(&target, sizes.last_shipment(), start, sizes.timeout);
                let duplex_cpu = duplex.cpu_seconds().zip(cpu).map(|(b, a)| b - a);
                duplex.terminate()?;
                Ok(Timed {
                    took: took?,
                    duplex_cpu,
                    ..Timed::default()
                })
            }
            _ => {
                let mut duplex = start_run(bin, &config, log, sizes.timeout)?;
                let cpu = duplex.cpu_seconds();
                let source_s = workload(&source, sizes)?;
                let behind = wait_for_shipment(
                    &target,
                    sizes.last_shipment(),
                    Instant::now(),
                    sizes.timeout,
                );
                let duplex_cpu = duplex.cpu_seconds().zip(cpu).map(|(b, a)| b - a);
                duplex.terminate()?;
                Ok(Timed {
                    took: behind?,
                    source: Some(source_s),
                    duplex_cpu,
                    ..Timed::default()
                })
            }
        }
    })();
    let checked = timed.and_then(|t| check_equal(&source, &target, "duplex").map(|()| t));
    drop_slots(&source)?;
    checked.map(|t| Timed {
        server_cpu: harness::server_cpu_seconds(postmaster) - cpu_before,
        ..t
    })
}

/// The native replication's run of `case`, like [`duplex_case`].
fn native_case(
    case: &str,
    servers: &Servers,
    template: &PgDatabase,
    sizes: Sizes,
) -> BenchResult<Timed> {
    let postmaster = servers
        .pg
        .pid()
        .ok_or("the PostgreSQL server is not running")?;
    let source = copy_of(servers, template)?;
    let target = if case == "initial" {
        empty(servers)?
    } else {
        copy_of(servers, template)?
    };
    let cpu_before = harness::server_cpu_seconds(postmaster);
    let timed = {
        let native = Native::set_up(&source, &target, case == "initial")?;
        match case {
            "initial" => {
                let start = Instant::now();
                native.enable()?;
                native.wait_synchronised(start, sizes.timeout)?;
                Timed {
                    took: start.elapsed(),
                    ..Timed::default()
                }
            }
            "backlog" => {
                workload(&source, sizes)?;
                let start = Instant::now();
                native.enable()?;
                Timed {
                    took: wait_for_shipment(&target, sizes.last_shipment(), start, sizes.timeout)?,
                    ..Timed::default()
                }
            }
            _ => {
                native.enable()?;
                native.wait_active(sizes.timeout)?;
                let source_s = workload(&source, sizes)?;
                Timed {
                    took: wait_for_shipment(
                        &target,
                        sizes.last_shipment(),
                        Instant::now(),
                        sizes.timeout,
                    )?,
                    source: Some(source_s),
                    ..Timed::default()
                }
            }
        }
    };
    check_equal(&source, &target, "native")?;
    Ok(Timed {
        server_cpu: harness::server_cpu_seconds(postmaster) - cpu_before,
        ..timed
    })
}

fn summary(results: &[Value]) -> String {
    let mut out = String::from(
        "| case | duplex | PostgreSQL native | native time / duplex time |\n|---|---|---|---|\n",
    );
    for r in results {
        let case = r["case"].as_str().unwrap_or("");
        if let Some(error) = r["error"].as_str() {
            let first = error.lines().next().unwrap_or("");
            out.push_str(&format!("| {case} | error: {first} | | |\n"));
            continue;
        }
        let num = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
        let (duplex, native) = match case {
            "initial" => (
                format!(
                    "{:.0} rows/s ({:.1} s)",
                    num("duplex_rows_per_s"),
                    num("duplex_s")
                ),
                format!(
                    "{:.0} rows/s ({:.1} s)",
                    num("native_rows_per_s"),
                    num("native_s")
                ),
            ),
            "backlog" => (
                format!(
                    "{:.0} changes/s ({:.1} s)",
                    num("duplex_changes_per_s"),
                    num("duplex_s")
                ),
                format!(
                    "{:.0} changes/s ({:.1} s)",
                    num("native_changes_per_s"),
                    num("native_s")
                ),
            ),
            _ => (
                format!(
                    "{:.0} changes/s, {:.2} s behind at the end",
                    num("duplex_changes_per_s"),
                    num("duplex_behind_s")
                ),
                format!(
                    "{:.0} changes/s, {:.2} s behind at the end",
                    num("native_changes_per_s"),
                    num("native_behind_s")
                ),
            ),
        };
        out.push_str(&format!(
            "| {case} | {duplex} | {native} | {:.2}× |\n",
            num("ratio")
        ));
    }
    out
}

fn main() {
    harness::main_with("native", run);
}

fn run() -> BenchResult<()> {
    let sizes = Sizes {
        scale: env_u64("DUPLEX_BENCH_SCALE", 1)?.max(1),
        txns: env_u64("DUPLEX_BENCH_TXNS", 2_000)?.max(1),
        timeout: Duration::from_secs(env_u64("DUPLEX_BENCH_TIMEOUT", 600)?),
    };
    let bin = harness::duplex_binary("native")?;
    eprintln!("bench: {sizes:?}, duplex at {}", bin.display());
    let servers = Servers::start()?;
    let started = Instant::now();
    eprintln!("bench: loading the template");
    let template = servers.pg.try_create_database()?;
    load_template(&template, sizes)?;
    let mut results = Vec::new();
    let cases =
        std::env::var("DUPLEX_BENCH_CASES").unwrap_or_else(|_| "initial,backlog,stream".into());
    for case in cases.split(',').filter(|c| !c.is_empty()) {
        if !["initial", "backlog", "stream"].contains(&case) {
            return Err(format!(
                "DUPLEX_BENCH_CASES: unknown case {case:?} (initial, backlog, stream)"
            )
            .into());
        }
        let result = run_case(case, &servers, &template, &bin, sizes);
        println!("{result}");
        results.push(result);
    }
    drop(template);
    drop(servers);
    println!();
    print!("{}", summary(&results));
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
