//! `duplex run` from PostgreSQL into SQL Server and from SQL Server into PostgreSQL, end to end
//! through the real binary, and `duplex check` of a SQL Server source. No SQL Server runs on
//! our machines, so each test runs only when `DUPLEX_TEST_MSSQL_URL` names one
//! (`mssql://sa:<password>@host:1433/master?trust-server-certificate=true`: a login that may
//! create databases and enable CDC, with SQL Server Agent running for the capture job);
//! otherwise it prints that it is skipped and why, and passes. PostgreSQL is the shared test
//! server of duplex-testkit.

mod harness;

use std::time::Duration;

use duplex_testkit::shared_pg;
use harness::mssql::{Mssql, client, site, wait_captured};
use harness::verify_report::{found as found_keys, reports_with, set};
use harness::{Duplex, rows, wait_for};

const WAIT: Duration = Duration::from_secs(90);

fn mapping(from: (&str, &str), to: (&str, &str)) -> String {
    format!(
        "[[mappings]]\nname = \"orders\"\ntables = {{ {} = \"{}\", {} = \"{}\" }}\ndirection = \"{}->{}\"\n\n",
        from.0, from.1, to.0, to.1, from.0, to.0
    )
}

fn wait_started(duplex: &mut Duplex) {
    wait_for("the link to start", WAIT, || {
        duplex.assert_running();
        if duplex.log_text().contains("link started") {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
}

const PG_ORDERS: &str = "CREATE TABLE orders (id int PRIMARY KEY, note text, total numeric(12,2), \
     placed timestamp, flag bool, u uuid)";
const MSSQL_ORDERS: &str = "CREATE TABLE dbo.orders (id int PRIMARY KEY, note nvarchar(100) NULL, \
     total decimal(12,2) NULL, placed datetime2(6) NULL, flag bit NULL, u uniqueidentifier NULL)";
const PG_ROWS: &str = "SELECT id, coalesce(note, '∅'), coalesce(total::text, '∅'), \
     coalesce(to_char(placed, 'YYYY-MM-DD HH24:MI:SS.US'), '∅'), coalesce(flag::text, '∅'), \
     coalesce(u::text, '∅') FROM orders ORDER BY id";
const MSSQL_ROWS: &str = "SELECT CONVERT(nvarchar(20), id), ISNULL(note, N'∅'), \
     ISNULL(CONVERT(nvarchar(50), total), N'∅'), ISNULL(CONVERT(nvarchar(50), placed, 121), N'∅'), \
     ISNULL(CASE flag WHEN 1 THEN N'true' WHEN 0 THEN N'false' END, N'∅'), \
     ISNULL(LOWER(CONVERT(nvarchar(36), u)), N'∅') FROM dbo.orders ORDER BY id";

/// What both sides hold after [`changes`]'s statements.
fn expected() -> Vec<Vec<String>> {
    [
        [
            "1",
            "café ☺",
            "12.34",
            "2026-01-02 03:04:05.123456",
            "true",
            "6f1c2b7e-2a4b-4c1d-9e8f-0123456789ab",
        ],
        ["2", "two", "-0.01", "∅", "false", "∅"],
    ]
    .iter()
    .map(|row| row.iter().map(|s| (*s).to_owned()).collect())
    .collect()
}

/// Inserts, updates (one of them in a transaction with an insert) and deletes, in `n`-prefixed
/// string literals for SQL Server (`n = "N"`) or plain ones for PostgreSQL.
fn changes(n: &str) -> Vec<String> {
    vec![
        format!(
            "INSERT INTO orders VALUES (1, {n}'café ☺', 12.34, '2026-01-02 03:04:05.123456', \
             {t}, '6f1c2b7e-2a4b-4c1d-9e8f-0123456789ab')",
            t = if n.is_empty() { "true" } else { "1" }
        ),
        format!(
            "BEGIN TRANSACTION; INSERT INTO orders (id) VALUES (2); UPDATE orders SET \
             note = {n}'two', total = -0.01, flag = {f} WHERE id = 2; COMMIT",
            f = if n.is_empty() { "false" } else { "0" }
        ),
        "INSERT INTO orders (id) VALUES (3)".to_owned(),
        "DELETE FROM orders WHERE id = 3".to_owned(),
    ]
}

#[test]
fn postgres_changes_arrive_in_sql_server() {
    let Some(erp) = Mssql::create("postgres_changes_arrive_in_sql_server") else {
        return;
    };
    // Keyed by an IDENTITY column, as ERP tables usually are: duplex writes the source's keys
    // with IDENTITY_INSERT on and never sets the column in an update.
    erp.sql(&MSSQL_ORDERS.replace("id int PRIMARY KEY", "id int IDENTITY(1, 1) PRIMARY KEY"));
    let store = shared_pg().create_database();
    store.execute_as_duplex(PG_ORDERS).unwrap();
    let config = site(store.name(), "postgres", &store.url())
        + &site(&erp.name, "mssql", &erp.url)
        + &mapping((store.name(), "public.orders"), (&erp.name, "dbo.orders"));
    let mut duplex = Duplex::run(&config);
    wait_started(&mut duplex);
    for sql in changes("") {
        store.psql(&sql).unwrap();
    }
    wait_for("SQL Server to equal PostgreSQL", WAIT, || {
        duplex.assert_running();
        let got = erp.rows(MSSQL_ROWS)?;
        if got == expected() {
            Ok(())
        } else {
            Err(format!("\n got: {got:?}\nwant: {:?}", expected()))
        }
    });
    let positions = erp
        .rows("SELECT source FROM duplex.positions")
        .expect("duplex.positions on the target");
    assert_eq!(positions.len(), 1, "{positions:?}");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    // Teardown removes the deployment's row, then schema duplex with its tables (nothing else
    // was in it), and the PostgreSQL slot and publication.
    let done = duplex.command(&["teardown"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(done.status.code(), Some(0), "{text}");
    assert!(text.contains("schema duplex"), "{text}");
    let schema = erp
        .rows("SELECT CONVERT(nvarchar(10), COUNT(*)) FROM sys.schemas WHERE name = N'duplex'")
        .unwrap();
    assert_eq!(schema, [["0".to_owned()]], "{text}");
    let slots = store
        .psql("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()")
        .unwrap();
    assert_eq!(slots.trim(), "0", "{text}");
    // The rows stay where they were written.
    assert_eq!(erp.rows(MSSQL_ROWS).unwrap(), expected());
}

#[test]
fn sql_server_changes_arrive_in_postgres_and_check_passes() {
    let Some(erp) = Mssql::create("sql_server_changes_arrive_in_postgres_and_check_passes") else {
        return;
    };
    erp.sql("EXEC sys.sp_cdc_enable_db");
    erp.sql(&format!(
        "ALTER DATABASE [{}] SET ALLOW_SNAPSHOT_ISOLATION ON",
        erp.name
    ));
    erp.sql(MSSQL_ORDERS);
    erp.sql(
        "EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N'orders', \
         @role_name = NULL",
    );
    // A new reader starts after the max LSN it reads when it starts; while CDC has recorded
    // nothing (max LSN zero) its first poll would decide, so let the capture job record a
    // change first.
    erp.sql("INSERT INTO orders (id) VALUES (100); DELETE FROM orders WHERE id = 100");
    wait_for("the capture job to record a change", WAIT, || {
        let max = erp.rows(
            "SELECT CASE WHEN ISNULL(sys.fn_cdc_get_max_lsn(), 0x00) = 0x00 \
             THEN N'0' ELSE N'1' END",
        )?;
        if max == [["1".to_owned()]] {
            Ok(())
        } else {
            Err("no change recorded yet".into())
        }
    });
    let store = shared_pg().create_database();
    store.execute_as_duplex(PG_ORDERS).unwrap();
    let config = site(&erp.name, "mssql", &erp.url)
        + &site(store.name(), "postgres", &store.url())
        + &mapping((&erp.name, "dbo.orders"), (store.name(), "public.orders"));
    let mut duplex = Duplex::new(&config);
    let check = duplex.command(&["check"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "{text}");
    assert!(text.contains("capture instance dbo_orders"), "{text}");
    duplex.start();
    wait_started(&mut duplex);
    for sql in changes("N") {
        erp.sql(&sql);
    }
    wait_for("PostgreSQL to equal SQL Server", WAIT, || {
        duplex.assert_running();
        let got = rows(&store.psql(PG_ROWS).map_err(|e| e.to_string())?, '|');
        if got == expected() {
            Ok(())
        } else {
            Err(format!("\n got: {got:?}\nwant: {:?}", expected()))
        }
    });
    // Verify with the source quiet: equal rows are equal, and a row changed behind duplex's
    // back on the target is a proven difference (the target recorded the last commit that
    // changed the table, which the source's snapshot position is tightened to).
    let (code, found) = reports_with(&duplex, &[], &[]);
    assert_eq!(code, 0, "{found:?}");
    store
        .psql("UPDATE orders SET note = 'changed behind duplex' WHERE id = 2")
        .unwrap();
    let (code, found) = reports_with(&duplex, &[], &["--wait", "30"]);
    assert_eq!(code, 1, "{found:?}");
    assert_eq!(
        found_keys(&found[0]),
        [set(&[]), set(&[]), set(&["id=2: note"])],
        "{found:?}"
    );
    assert_eq!(found[0]["confirmed"], true, "{found:?}");
    // Repairing it writes the source's row into PostgreSQL.
    let out = duplex.command(&["verify", "--repair"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let got = rows(&store.psql(PG_ROWS).unwrap(), '|');
    assert_eq!(got, expected());
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}

/// `SELECT COUNT(*), SUM(qty), MIN(id), MAX(id)` of the items, as text on both kinds.
const ITEMS_SUMMARY_MSSQL: &str = "SELECT CONVERT(nvarchar(20), COUNT_BIG(*)), \
     CONVERT(nvarchar(20), ISNULL(SUM(CAST(qty AS bigint)), 0)), \
     CONVERT(nvarchar(20), ISNULL(MIN(id), 0)), CONVERT(nvarchar(20), ISNULL(MAX(id), 0)) \
     FROM dbo.items";
const ITEMS_SUMMARY_PG: &str = "SELECT count(*), coalesce(sum(qty), 0), coalesce(min(id), 0), \
     coalesce(max(id), 0) FROM items";

#[test]
fn backfill_from_sql_server_then_stream_loses_and_doubles_nothing() {
    let Some(erp) = Mssql::create("backfill_from_sql_server_then_stream_loses_and_doubles_nothing")
    else {
        return;
    };
    erp.sql("EXEC sys.sp_cdc_enable_db");
    erp.sql(&format!(
        "ALTER DATABASE [{}] SET ALLOW_SNAPSHOT_ISOLATION ON",
        erp.name
    ));
    erp.sql("CREATE TABLE dbo.items (id int PRIMARY KEY, qty int NOT NULL)");
    erp.sql(
        "EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N'items', \
         @role_name = NULL",
    );
    // 20,000 rows before the backfill (ranges of 1,000), with distinct quantities so that a
    // row lost or copied twice changes the sum.
    erp.sql(
        "WITH n AS (SELECT TOP (20000) ROW_NUMBER() OVER (ORDER BY (SELECT NULL)) AS i \
         FROM sys.all_objects a CROSS JOIN sys.all_objects b) \
         INSERT INTO dbo.items (id, qty) SELECT i, i % 97 + 1 FROM n",
    );
    wait_captured(&erp);
    let store = shared_pg().create_database();
    store
        .execute_as_duplex("CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL)")
        .unwrap();
    let config = site(&erp.name, "mssql", &erp.url)
        + &site(store.name(), "postgres", &store.url())
        + "[[mappings]]\nname = \"items\"\n"
        + &format!(
            "tables = {{ {} = \"dbo.items\", {} = \"public.items\" }}\n",
            erp.name,
            store.name()
        )
        + &format!("direction = \"{}->{}\"\n", erp.name, store.name());
    let mut duplex = Duplex::new(&config);

    // A writer commits inserts, one per transaction, all through the backfill and after it:
    // each lands either in the snapshot or in the stream.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let url = erp.url.clone();
        std::thread::spawn(move || -> Result<u32, String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut client = client(&url).await?;
                let mut written = 0u32;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) || written < 50 {
                    let id = 100_000 + written;
                    client
                        .execute(
                            "INSERT INTO dbo.items (id, qty) VALUES (@P1, @P2)",
                            &[&(id as i32), &((id % 89 + 1) as i32)],
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    written += 1;
                }
                Ok(written)
            })
        })
    };
    let backfill = duplex.command(&["backfill", "--jobs", "2", "--chunk-rows", "1000"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&backfill.stdout),
        String::from_utf8_lossy(&backfill.stderr)
    );
    assert!(backfill.status.success(), "{text}");
    duplex.start();
    wait_started(&mut duplex);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = writer.join().unwrap().expect("the writer's inserts");
    assert!(written >= 50, "{written}");
    let want = erp.rows(ITEMS_SUMMARY_MSSQL).unwrap();
    assert_eq!(want[0][0], (20_000 + written).to_string(), "{want:?}");
    wait_for(
        "PostgreSQL to hold exactly SQL Server's items",
        WAIT,
        || {
            duplex.assert_running();
            let got = rows(
                &store.psql(ITEMS_SUMMARY_PG).map_err(|e| e.to_string())?,
                '|',
            );
            if got == want {
                Ok(())
            } else {
                Err(format!("\n got: {got:?}\nwant: {want:?}"))
            }
        },
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}

/// `dbo.items (id int PRIMARY KEY, qty int)` captured by CDC in `erp` (snapshot isolation on),
/// an empty `items` on a new PostgreSQL database, and the config mapping one to the other.
fn items_setup(erp: &Mssql) -> (duplex_testkit::PgDatabase, String) {
    erp.sql("EXEC sys.sp_cdc_enable_db");
    erp.sql(&format!(
        "ALTER DATABASE [{}] SET ALLOW_SNAPSHOT_ISOLATION ON",
        erp.name
    ));
    erp.sql("CREATE TABLE dbo.items (id int PRIMARY KEY, qty int NOT NULL)");
    erp.sql(
        "EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N'items', \
         @role_name = NULL",
    );
    erp.sql("INSERT INTO dbo.items (id, qty) VALUES (-1, 1); DELETE FROM dbo.items WHERE id = -1");
    wait_captured(erp);
    let store = shared_pg().create_database();
    store
        .execute_as_duplex("CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL)")
        .unwrap();
    let config = site(&erp.name, "mssql", &erp.url)
        + &site(store.name(), "postgres", &store.url())
        + "[[mappings]]\nname = \"items\"\n"
        + &format!(
            "tables = {{ {} = \"dbo.items\", {} = \"public.items\" }}\n",
            erp.name,
            store.name()
        )
        + &format!("direction = \"{}->{}\"\n", erp.name, store.name());
    (store, config)
}

/// Waits until the log says "link started" more than `before` times.
fn wait_started_again(duplex: &mut Duplex, before: usize) {
    wait_for("the link to start again", WAIT, || {
        duplex.assert_running();
        if duplex.log_text().matches("link started").count() > before {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
}

#[test]
fn sigkill_while_sql_server_changes_stream_applies_each_exactly_once() {
    let Some(erp) =
        Mssql::create("sigkill_while_sql_server_changes_stream_applies_each_exactly_once")
    else {
        return;
    };
    let (store, config) = items_setup(&erp);
    let mut duplex = Duplex::new(&config);
    duplex.start();
    wait_started_again(&mut duplex, 0);
    // 300 transactions of 10 inserts each, written while the link is killed and restarted.
    let writer = {
        let url = erp.url.clone();
        std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut client = client(&url).await?;
                for t in 0..300 {
                    let values: Vec<String> = (0..10)
                        .map(|i| {
                            let id = t * 10 + i + 1;
                            format!("({id}, {})", id % 83 + 1)
                        })
                        .collect();
                    let sql = format!(
                        "BEGIN TRANSACTION; INSERT INTO dbo.items (id, qty) VALUES {}; COMMIT",
                        values.join(", ")
                    );
                    client
                        .simple_query(sql)
                        .await
                        .map_err(|e| e.to_string())?
                        .into_results()
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            })
        })
    };
    let count = |store: &duplex_testkit::PgDatabase| -> Result<u64, String> {
        let text = store
            .psql("SELECT count(*) FROM items")
            .map_err(|e| e.to_string())?;
        text.trim().parse().map_err(|_| format!("count {text:?}"))
    };
    // Kill it at three points while changes stream: each time after more rows arrived.
    for (round, at_least) in [(1usize, 300u64), (2, 1200), (3, 2100)] {
        wait_for("rows to arrive before the kill", WAIT, || {
            duplex.assert_running();
            let n = count(&store)?;
            if n >= at_least {
                Ok(())
            } else {
                Err(format!("{n} rows"))
            }
        });
        duplex.kill();
        duplex.start();
        wait_started_again(&mut duplex, round);
    }
    writer.join().unwrap().expect("the writer's transactions");
    let want = erp.rows(ITEMS_SUMMARY_MSSQL).unwrap();
    assert_eq!(want[0][0], "3000", "{want:?}");
    wait_for(
        "PostgreSQL to hold exactly SQL Server's items",
        WAIT,
        || {
            duplex.assert_running();
            let got = rows(
                &store.psql(ITEMS_SUMMARY_PG).map_err(|e| e.to_string())?,
                '|',
            );
            if got == want {
                Ok(())
            } else {
                Err(format!("\n got: {got:?}\nwant: {want:?}"))
            }
        },
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}
