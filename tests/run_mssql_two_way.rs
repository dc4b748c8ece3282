//! Two-way replication between PostgreSQL and SQL Server through the merge engine, end to end
//! through the real binary: changes on either side arrive on the other once (duplex's own
//! writes come back from SQL Server's change tables as echoes and are not merged again), an
//! update that leaves an `nvarchar(max)` column alone (which CDC leaves out of the update's
//! before-image) is no conflict, and concurrent updates of one row are one conflict, logged and
//! resolved on both sides. No SQL Server runs on our machines, so the test runs only when
//! `DUPLEX_TEST_MSSQL_URL` names one (see `tests/run_mssql.rs`); otherwise it prints that it
//! is skipped and why, and passes.

mod harness;

use std::time::Duration;

use duplex_testkit::{PgDatabase, shared_pg};
use harness::mssql::{Mssql, site, wait_captured};
use harness::sites::{conflicts, wait_reading};
use harness::{Duplex, rows, wait_for};

const WAIT: Duration = Duration::from_secs(120);

const PG_ITEMS: &str =
    "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL, memo text)";
const MSSQL_ITEMS: &str = "CREATE TABLE dbo.items (id int PRIMARY KEY, \
     name nvarchar(100) NOT NULL, qty int NOT NULL, memo nvarchar(max) NULL)";
const PG_ROWS: &str = "SELECT id, name, qty, coalesce(memo, '∅') FROM items ORDER BY id";
const MSSQL_ROWS: &str = "SELECT CONVERT(nvarchar(20), id), name, CONVERT(nvarchar(20), qty), \
     ISNULL(memo, N'∅') FROM dbo.items ORDER BY id";

/// `rows` as (id, name, qty, memo).
fn typed(rows: Vec<Vec<String>>) -> Vec<(i64, String, i64, String)> {
    rows.into_iter()
        .map(|r| {
            (
                r[0].parse().unwrap(),
                r[1].clone(),
                r[2].parse().unwrap(),
                r[3].clone(),
            )
        })
        .collect()
}

struct TwoSites {
    erp: Mssql,
    store: PgDatabase,
}

impl TwoSites {
    fn store_rows(&self) -> Result<Vec<(i64, String, i64, String)>, String> {
        Ok(typed(rows(
            &self.store.psql(PG_ROWS).map_err(|e| e.to_string())?,
            '|',
        )))
    }

    fn erp_rows(&self) -> Result<Vec<(i64, String, i64, String)>, String> {
        Ok(typed(self.erp.rows(MSSQL_ROWS)?))
    }

    /// Waits until both sides hold the same rows, `count` of them, and returns them.
    fn wait_same(&self, duplex: &mut Duplex, count: usize) -> Vec<(i64, String, i64, String)> {
        wait_for("both sites to hold the same rows", WAIT, || {
            duplex.assert_running();
            let (store, erp) = (self.store_rows()?, self.erp_rows()?);
            if store == erp && store.len() == count {
                Ok(store)
            } else {
                Err(format!("\nstore: {store:?}\n  erp: {erp:?}"))
            }
        })
    }

    /// How many writes duplex made into SQL Server and into PostgreSQL (their outbox
    /// positions).
    fn writes(&self) -> (u64, u64) {
        let outbox = |text: Option<String>| match text {
            None => 0,
            Some(text) => {
                let position: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
                position["Outbox"].as_u64().unwrap()
            }
        };
        let erp = self
            .erp
            .rows(&format!(
                "SELECT position FROM duplex.positions WHERE source = N'merge:{}'",
                self.erp.name
            ))
            .unwrap();
        let store = self
            .store
            .psql(&format!(
                "SELECT position FROM duplex.positions WHERE source = 'merge:{}'",
                self.store.name()
            ))
            .unwrap();
        (
            outbox(erp.into_iter().next().map(|r| r[0].clone())),
            outbox(Some(store).filter(|s| !s.trim().is_empty())),
        )
    }
}

#[test]
fn postgres_and_sql_server_merge_both_ways_without_echoes() {
    let Some(erp) = Mssql::create("postgres_and_sql_server_merge_both_ways_without_echoes") else {
        return;
    };
    erp.sql("EXEC sys.sp_cdc_enable_db");
    erp.sql(MSSQL_ITEMS);
    erp.sql(
        "EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N'items', \
         @role_name = NULL",
    );
    erp.sql("INSERT INTO dbo.items VALUES (0, N'seed', 0, NULL); DELETE FROM dbo.items");
    wait_captured(&erp);
    let store = shared_pg().create_database();
    store.execute_as_duplex(PG_ITEMS).unwrap();
    let sites = TwoSites { erp, store };
    let config = site(sites.store.name(), "postgres", &sites.store.url())
        + &site(&sites.erp.name, "mssql", &sites.erp.url)
        + &format!(
            "[[mappings]]\nname = \"items\"\ntables = {{ {} = \"public.items\", {} = \"dbo.items\" }}\n\
             direction = \"both\"\nconflict = \"last-writer-wins\"\n",
            sites.store.name(),
            sites.erp.name
        );
    let mut duplex = Duplex::run(&config);
    wait_reading(&mut duplex, 2, WAIT);
    // The two-way stream captured duplex.positions for its echoes.
    let echo = sites
        .erp
        .rows("SELECT capture_instance FROM cdc.change_tables ORDER BY capture_instance")
        .unwrap();
    assert!(
        echo.contains(&vec!["duplex_positions".to_owned()]),
        "{echo:?}"
    );

    let long = "x".repeat(9_000);
    let mut store_script = String::new();
    for id in 1..=10 {
        store_script.push_str(&format!(
            "INSERT INTO items VALUES ({id}, 'store {id}', {id}, '{long}');\n"
        ));
    }
    store_script.push_str("UPDATE items SET qty = qty + 100 WHERE id <= 3;\n");
    sites.store.psql(&store_script).unwrap();
    let mut erp_script = String::new();
    for id in 11..=20 {
        erp_script.push_str(&format!(
            "INSERT INTO dbo.items VALUES ({id}, N'erp {id}', {id}, N'{long}');\n"
        ));
    }
    erp_script.push_str("DELETE FROM dbo.items WHERE id = 20;\n");
    sites.erp.sql(&erp_script);
    sites.wait_same(&mut duplex, 19);
    // Updates on SQL Server that leave the large memo alone: CDC's before-images carry NULL
    // for it, which must not read as a NULL the row held (a conflict with the known row).
    sites
        .erp
        .sql("UPDATE dbo.items SET qty = qty + 1000 WHERE id IN (1, 11)");
    let converged = wait_for("the updates to arrive", WAIT, || {
        duplex.assert_running();
        let store = sites.store_rows()?;
        let updated = store
            .iter()
            .filter(|(id, _, qty, _)| [1, 11].contains(id) && *qty > 1000)
            .count();
        if updated == 2 {
            Ok(store)
        } else {
            Err(format!("{store:?}"))
        }
    });
    assert_eq!(sites.wait_same(&mut duplex, 19), converged);
    assert!(converged.iter().all(|(_, _, _, memo)| *memo == long));
    assert_eq!(
        converged.iter().find(|r| r.0 == 1).unwrap().2,
        1 + 100 + 1000
    );
    // Each local change was written to the other site once: no echo came back as a change.
    // PostgreSQL made 10 inserts and 3 updates; SQL Server 10 inserts, 1 delete, 2 updates.
    // A last change proves every earlier write was read back (as an echo) first.
    sites
        .store
        .psql("INSERT INTO items VALUES (99, 'marker', 0, NULL)")
        .unwrap();
    sites.wait_same(&mut duplex, 20);
    assert_eq!(sites.writes(), (14, 13));
    assert!(conflicts(&duplex).is_empty(), "{:?}", conflicts(&duplex));

    // Concurrent updates of one row while duplex is stopped: one conflict, the later wins.
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    sites
        .erp
        .sql("UPDATE dbo.items SET name = N'erp wins not' WHERE id = 5");
    sites
        .store
        .psql("UPDATE items SET name = 'store wins' WHERE id = 5")
        .unwrap();
    duplex.start();
    let log = wait_for("the conflict", WAIT, || {
        duplex.assert_running();
        let log = conflicts(&duplex);
        if log.is_empty() {
            Err("no conflict yet".into())
        } else {
            Ok(log)
        }
    });
    let rows = wait_for("the winner on both sides", WAIT, || {
        duplex.assert_running();
        let (store, erp) = (sites.store_rows()?, sites.erp_rows()?);
        let five = |rows: &[(i64, String, i64, String)]| {
            rows.iter().find(|r| r.0 == 5).map(|r| r.1.clone())
        };
        if store == erp && five(&store).as_deref() == Some("store wins") {
            Ok(store)
        } else {
            Err(format!("\nstore: {store:?}\n  erp: {erp:?}"))
        }
    });
    assert_eq!(rows.len(), 20);
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0]["status"], "resolved", "{log:#?}");
    assert_eq!(log[0]["winner"], sites.store.name(), "{log:#?}");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    harness::drop_slot(&sites.store);
}
