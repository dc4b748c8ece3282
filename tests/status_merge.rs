//! The merge engine in `/metrics` and `duplex status --json`, end to end through the real
//! binary and three real sites of one two-way mapping (a PostgreSQL store, a MariaDB ERP on a
//! server of the test's own, a PostgreSQL WMS): each site's row counters move by exactly the
//! rows the engine wrote into it (never by the changes made there), and while the ERP's server
//! is down its lag rises and its queue holds exactly the writes waiting for it, both back to
//! zero once it caught up, while the other sites stay at zero. Away long enough to fill its
//! writer's queue, it stalls the engine: the other sites' queues and lag show it too (a change
//! read and not decided is pending at the other sites).

mod harness;

use std::time::Duration;

use duplex_testkit::{MariaOptions, MariaServer, Shutdown};
use harness::metrics::{free_port, get, sample_with, status};
use harness::sites::{self, ERP, STORE, Sites, WMS};
use harness::{Duplex, wait_for};

const WAIT: Duration = Duration::from_secs(180);

/// What the engine reports for one site: inserts, updates, deletes, transactions (outbox
/// entries committed there), lag in seconds, queued transactions.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Site {
    inserts: u64,
    updates: u64,
    deletes: u64,
    transactions: u64,
    lag: f64,
    queued: u64,
}

/// Counts (inserts, updates, deletes) written into a site, all caught up.
fn caught_up(inserts: u64, updates: u64, deletes: u64) -> Site {
    Site {
        inserts,
        updates,
        deletes,
        transactions: inserts + updates + deletes,
        lag: 0.0,
        queued: 0,
    }
}

/// The merge engine's samples for `site` in `/metrics`.
fn scrape(port: u16, site: &str) -> Result<Site, String> {
    let (_, text) = get(port, "/metrics")?;
    let value = |name: &str, op: Option<&str>| {
        let mut labels = vec![("link", "merge engine"), ("target", site)];
        if let Some(op) = op {
            labels.push(("op", op));
        }
        sample_with(&text, name, &labels)
            .ok_or_else(|| format!("no {name} {op:?} of site {site} in:\n{text}"))
    };
    Ok(Site {
        inserts: value("duplex_rows_total", Some("insert"))? as u64,
        updates: value("duplex_rows_total", Some("update"))? as u64,
        deletes: value("duplex_rows_total", Some("delete"))? as u64,
        transactions: value("duplex_transactions_total", None)? as u64,
        lag: value("duplex_lag_seconds", None)?,
        queued: value("duplex_queued_transactions", None)? as u64,
    })
}

/// Waits until `/metrics` reports exactly `expected` for every site (STORE, ERP, WMS order).
fn wait_metrics(duplex: &mut Duplex, sites: &Sites, port: u16, expected: [Site; 3], what: &str) {
    wait_for(what, WAIT, || {
        duplex.assert_running();
        let seen = [
            scrape(port, &sites.name(STORE))?,
            scrape(port, &sites.name(ERP))?,
            scrape(port, &sites.name(WMS))?,
        ];
        (seen == expected)
            .then_some(())
            .ok_or_else(|| format!("seen {seen:?}"))
    });
}

/// The merge engine's entry for `site` in `duplex status --json`.
fn status_of(duplex: &Duplex, site: &str) -> serde_json::Value {
    let (_, json) = status(duplex);
    let engine = json["report"]["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "merge engine")
        .unwrap_or_else(|| panic!("no merge engine in {json}"))
        .clone();
    engine["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["site"] == site)
        .unwrap_or_else(|| panic!("no site {site} in {engine}"))
        .clone()
}

/// Inserts rows `ids` into `items` at `site`.
fn insert(sites: &Sites, site: usize, ids: std::ops::RangeInclusive<i64>) {
    let script: String = ids
        .map(|id| format!("INSERT INTO items VALUES ({id}, 'from {site}', {id});\n"))
        .collect();
    sites.exec(site, &script);
}

#[test]
fn merge_engine_rows_lag_and_queue_per_site() {
    // The ERP on a server of its own: it is shut down and started again.
    let erp_server = MariaServer::start(MariaOptions::default()).unwrap();
    let sites = Sites::with_erp(erp_server.create_database());
    let port = free_port();
    let config = format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n{}",
        sites.config("last-writer-wins", "")
    );
    let mut duplex = Duplex::run(&config);
    sites::wait_reading(&mut duplex, 3, WAIT);
    wait_metrics(
        &mut duplex,
        &sites,
        port,
        [caught_up(0, 0, 0); 3],
        "nothing counted yet",
    );

    // 30 inserts at the store, 5 updates at the ERP, 2 deletes at the WMS: each site counts
    // exactly what the others made, never its own.
    insert(&sites, STORE, 1..=30);
    sites.wait_same(&mut duplex, WAIT, |rows| rows.len() == 30);
    sites.exec(ERP, "UPDATE items SET qty = qty + 100 WHERE id <= 5");
    sites.wait_same(&mut duplex, WAIT, |rows| {
        rows.iter()
            .filter(|r| r[2].parse::<i64>().unwrap() > 100)
            .count()
            == 5
    });
    sites.exec(WMS, "DELETE FROM items WHERE id IN (29, 30)");
    sites.wait_same(&mut duplex, WAIT, |rows| rows.len() == 28);
    let expected = [caught_up(0, 5, 2), caught_up(30, 0, 2), caught_up(30, 5, 0)];
    wait_metrics(&mut duplex, &sites, port, expected, "the first counts");
    // status --json says the same.
    let (code, json) = status(&duplex);
    assert_eq!(code, 0, "{json}");
    let erp = status_of(&duplex, &sites.name(ERP));
    assert_eq!(
        (
            &erp["inserts"],
            &erp["updates"],
            &erp["deletes"],
            &erp["transactions"],
            &erp["queued_transactions"],
            &erp["lag_seconds"]
        ),
        (
            &serde_json::json!(30),
            &serde_json::json!(0),
            &serde_json::json!(2),
            &serde_json::json!(32),
            &serde_json::json!(0),
            &serde_json::json!(0.0)
        ),
        "{erp}"
    );
    let table = duplex.command(&["status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    // The table has a row per site under a header naming sites, with the queue.
    assert!(
        table.contains("merge engine: streaming")
            && table
                .lines()
                .any(|l| l.trim_start().starts_with("site ") && l.ends_with("queued")),
        "{table}"
    );
    for site in [STORE, ERP, WMS] {
        assert!(
            table.contains(&format!("  {} ", sites.name(site))),
            "{table}"
        );
    }

    // The ERP's server goes down; 20 rows inserted at the store reach the WMS, and wait for the
    // ERP: its lag rises and keeps rising, its queue holds exactly those 20 writes, the others
    // are caught up.
    erp_server.shut_down(Shutdown::Fast).unwrap();
    insert(&sites, STORE, 31..=50);
    let erp_name = sites.name(ERP);
    let first = wait_for("the ERP's lag to rise above 1 s", WAIT, || {
        duplex.assert_running();
        let erp = scrape(port, &erp_name)?;
        (erp.lag > 1.0 && erp.queued == 20)
            .then_some(erp.lag)
            .ok_or_else(|| format!("{erp:?}"))
    });
    wait_for("the ERP's lag to keep rising", WAIT, || {
        let erp = scrape(port, &erp_name)?;
        (erp.lag > first + 1.0 && erp.queued == 20)
            .then_some(())
            .ok_or_else(|| format!("{erp:?}, first lag {first}"))
    });
    let down = [caught_up(0, 5, 2), caught_up(30, 0, 2), caught_up(50, 5, 0)];
    wait_for("the store and the WMS caught up", WAIT, || {
        duplex.assert_running();
        let (store, wms) = (
            scrape(port, &sites.name(STORE))?,
            scrape(port, &sites.name(WMS))?,
        );
        let erp = scrape(port, &erp_name)?;
        let counts = |s: Site| (s.inserts, s.updates, s.deletes, s.transactions);
        (store == down[0] && wms == down[2] && counts(erp) == counts(down[1]))
            .then_some(())
            .ok_or_else(|| format!("{store:?} {erp:?} {wms:?}"))
    });
    let erp = status_of(&duplex, &erp_name);
    assert_eq!(erp["queued_transactions"], 20, "{erp}");
    assert!(erp["lag_seconds"].as_f64().unwrap() > first, "{erp}");

    // Back up: the 20 rows land there, its lag and queue are back to zero, every count exact.
    erp_server.start_again().unwrap();
    sites.wait_same(&mut duplex, WAIT, |rows| rows.len() == 48);
    let expected = [caught_up(0, 5, 2), caught_up(50, 0, 2), caught_up(50, 5, 0)];
    wait_metrics(&mut duplex, &sites, port, expected, "the ERP caught up");
    let erp = status_of(&duplex, &erp_name);
    assert_eq!(
        (&erp["queued_transactions"], &erp["lag_seconds"]),
        (&serde_json::json!(0), &serde_json::json!(0.0)),
        "{erp}"
    );
    assert!(erp["apply_errors"].as_u64().unwrap() >= 1, "{erp}");

    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    sites.drop_slots();
}

#[test]
fn a_site_away_long_enough_to_stall_the_engine_shows_in_every_sites_lag() {
    // More writes for the ERP than its writer holds and queues (1,000 + 8,192): the engine
    // waits for it, and what it has read meanwhile waits undecided.
    const BULK: u64 = 12_000;
    let erp_server = MariaServer::start(MariaOptions::default()).unwrap();
    let sites = Sites::with_erp(erp_server.create_database());
    let port = free_port();
    let config = format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n{}",
        sites.config("last-writer-wins", "")
    );
    let mut duplex = Duplex::run(&config);
    sites::wait_reading(&mut duplex, 3, WAIT);
    let (store_name, erp_name, wms_name) = (sites.name(STORE), sites.name(ERP), sites.name(WMS));

    erp_server.shut_down(Shutdown::Fast).unwrap();
    sites.exec(
        STORE,
        &format!("INSERT INTO items SELECT g, 'bulk', g FROM generate_series(1, {BULK}) g"),
    );
    // Every write for the ERP waits; the WMS's writes after the one the engine waits at too.
    wait_for("the engine to wait for the ERP", WAIT, || {
        duplex.assert_running();
        let (erp, wms) = (scrape(port, &erp_name)?, scrape(port, &wms_name)?);
        (erp.queued == BULK && wms.queued > 0 && wms.queued < BULK)
            .then_some(())
            .ok_or_else(|| format!("ERP {erp:?}, WMS {wms:?}"))
    });
    // A change at the WMS is read but not decided: the store, with nothing queued, lags.
    sites.exec(WMS, "INSERT INTO items VALUES (20000, 'from the WMS', 0)");
    wait_for("the store's lag to rise above 1 s", WAIT, || {
        duplex.assert_running();
        let store = scrape(port, &store_name)?;
        (store.lag > 1.0 && store.queued == 0)
            .then_some(())
            .ok_or_else(|| format!("{store:?}"))
    });

    // Back up: everything lands, every lag and queue back to zero, every count exact.
    erp_server.start_again().unwrap();
    sites.wait_same(&mut duplex, WAIT, |rows| rows.len() as u64 == BULK + 1);
    let expected = [
        caught_up(1, 0, 0),
        caught_up(BULK + 1, 0, 0),
        caught_up(BULK, 0, 0),
    ];
    wait_metrics(&mut duplex, &sites, port, expected, "every site caught up");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    sites.drop_slots();
}
