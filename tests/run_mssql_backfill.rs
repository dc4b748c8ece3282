//! `duplex backfill` from PostgreSQL into SQL Server, then `duplex run`, end to end through the
//! real binary. No SQL Server runs on our machines, so the test runs only when
//! `DUPLEX_TEST_MSSQL_URL` names one (see `tests/run_mssql.rs`); otherwise it prints that it is
//! skipped and why, and passes. PostgreSQL is the shared test server of duplex-testkit.

mod harness;

use std::time::Duration;

use duplex_testkit::shared_pg;
use harness::mssql::{Mssql, site};
use harness::{Duplex, rows, wait_for};

const WAIT: Duration = Duration::from_secs(120);

/// Count, sum of quantities and key range of each table, as text, on SQL Server.
const SUMMARY_MSSQL: &str = "SELECT CONVERT(nvarchar(20), COUNT_BIG(*)), \
     CONVERT(nvarchar(20), ISNULL(SUM(CAST(qty AS bigint)), 0)), \
     CONVERT(nvarchar(20), ISNULL(MIN(id), 0)), CONVERT(nvarchar(20), ISNULL(MAX(id), 0)) \
     FROM dbo.orders \
     UNION ALL SELECT CONVERT(nvarchar(20), COUNT_BIG(*)), \
     CONVERT(nvarchar(20), ISNULL(SUM(CAST(qty AS bigint)), 0)), \
     CONVERT(nvarchar(20), ISNULL(MIN(order_id), 0)), CONVERT(nvarchar(20), ISNULL(MAX(order_id), 0)) \
     FROM dbo.lines";
/// The same on PostgreSQL.
const SUMMARY_PG: &str = "SELECT count(*), coalesce(sum(qty), 0), coalesce(min(id), 0), \
     coalesce(max(id), 0) FROM orders \
     UNION ALL SELECT count(*), coalesce(sum(qty), 0), coalesce(min(order_id), 0), \
     coalesce(max(order_id), 0) FROM lines";

/// 5,000 orders with 15,000 lines are copied into SQL Server tables that check the lines'
/// foreign key (SQL Server sessions cannot turn it off, so the orders must all land before any
/// line) and whose orders are keyed by an IDENTITY column, while a writer commits more orders
/// with their lines on PostgreSQL; then `duplex run` streams on from the backfill's snapshot.
/// Both tables end equal, every row once, and no range marker is left.
#[test]
fn backfill_into_sql_server_copies_parents_first_and_streams_on_exactly() {
    let Some(erp) =
        Mssql::create("backfill_into_sql_server_copies_parents_first_and_streams_on_exactly")
    else {
        return;
    };
    erp.sql(
        "CREATE TABLE dbo.orders (id int IDENTITY(1, 1) PRIMARY KEY, qty int NOT NULL); \
         CREATE TABLE dbo.lines (order_id int NOT NULL REFERENCES dbo.orders (id), \
           n int NOT NULL, qty int NOT NULL, PRIMARY KEY (order_id, n))",
    );
    let store = shared_pg().create_database();
    store
        .execute_as_duplex(
            "CREATE TABLE orders (id int PRIMARY KEY, qty int NOT NULL); \
             CREATE TABLE lines (order_id int NOT NULL REFERENCES orders, n int NOT NULL, \
               qty int NOT NULL, PRIMARY KEY (order_id, n)); \
             INSERT INTO orders SELECT g, g % 97 + 1 FROM generate_series(1, 5000) g; \
             INSERT INTO lines SELECT o, n, (o * n) % 89 + 1 \
               FROM generate_series(1, 5000) o, generate_series(1, 3) n",
        )
        .unwrap();
    // Mapping names with `_`: the markers are found again by a LIKE pattern.
    let mapping = |name: &str, table: &str| {
        format!(
            "[[mappings]]\nname = \"{name}\"\ntables = {{ {} = \"public.{table}\", {} = \"dbo.{table}\" }}\n\
             direction = \"{}->{}\"\n\n",
            store.name(),
            erp.name,
            store.name(),
            erp.name
        )
    };
    let config = site(store.name(), "postgres", &store.url())
        + &site(&erp.name, "mssql", &erp.url)
        + &mapping("shop_orders", "orders")
        + &mapping("shop_lines", "lines");
    let mut duplex = Duplex::new(&config);

    // A writer commits an order and its three lines per transaction, through the backfill
    // and after it: each lands either in the snapshot or in the stream.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let url = store.url();
        std::thread::spawn(move || -> u32 {
            let mut written = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || written < 20 {
                let id = 100_000 + written;
                let status = std::process::Command::new("psql")
                    .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &url, "-c"])
                    .arg(format!(
                        "BEGIN; INSERT INTO orders VALUES ({id}, {}); \
                         INSERT INTO lines SELECT {id}, n, n FROM generate_series(1, 3) n; COMMIT",
                        id % 13 + 1
                    ))
                    .status()
                    .unwrap();
                assert!(status.success(), "the writer's transaction failed");
                written += 1;
            }
            written
        })
    };
    let backfill = duplex.command(&["backfill", "--jobs", "2", "--chunk-rows", "1000"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&backfill.stdout),
        String::from_utf8_lossy(&backfill.stderr)
    );
    assert!(backfill.status.success(), "{text}");
    assert!(
        text.contains("copying referenced tables first"),
        "the target checks the lines' key: {text}"
    );
    duplex.start();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = writer.join().unwrap();
    let want = rows(&store.psql(SUMMARY_PG).unwrap(), '|');
    assert_eq!(want[0][0], (5_000 + written).to_string(), "{want:?}");
    wait_for("SQL Server to hold exactly PostgreSQL's rows", WAIT, || {
        duplex.assert_running();
        let got = erp.rows(SUMMARY_MSSQL)?;
        if got == want {
            Ok(())
        } else {
            Err(format!("\n got: {got:?}\nwant: {want:?}"))
        }
    });
    let markers = erp
        .rows("SELECT source FROM duplex.positions WHERE source LIKE N'backfill:%'")
        .unwrap();
    assert!(markers.is_empty(), "markers left: {markers:?}");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}
