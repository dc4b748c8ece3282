//! Two-way replication across three sites — a PostgreSQL store, a MariaDB ERP and a second
//! PostgreSQL database as WMS — end to end through the real binary and real servers: no echo
//! loops, causal chains never conflict, concurrent changes always do and are resolved by each
//! policy, held conflicts are settled with `duplex conflicts resolve`.

mod harness;

use std::time::Duration;

use harness::sites::{self, ERP, STORE, Sites, WMS, conflicts};
use harness::{Duplex, wait_for};

const WAIT: Duration = Duration::from_secs(90);

/// A row of `items`.
type Item = (i64, String, i64);

fn typed(rows: &[Vec<String>]) -> Vec<Item> {
    rows.iter()
        .map(|r| (r[0].parse().unwrap(), r[1].clone(), r[2].parse().unwrap()))
        .collect()
}

fn items(sites: &Sites, site: usize) -> Result<Vec<Item>, String> {
    Ok(typed(&sites.rows(site)?))
}

/// Waits until all three sites hold `expected` (or, with `None`, the same rows), and returns
/// them.
fn wait_converged(sites: &Sites, duplex: &mut Duplex, expected: Option<&[Item]>) -> Vec<Item> {
    typed(&sites.wait_same(duplex, WAIT, |rows| {
        expected.is_none_or(|expected| typed(rows) == expected)
    }))
}

/// How many writes duplex made into `site` (its outbox position).
fn writes(sites: &Sites, site: usize) -> u64 {
    let query = format!(
        "SELECT position FROM duplex.positions WHERE source = 'merge:{}'",
        sites.name(site)
    );
    let text = sites.try_exec(site, &query).unwrap();
    let text = text.trim();
    if text.is_empty() {
        return 0;
    }
    let position: serde_json::Value = serde_json::from_str(text).unwrap();
    position["Outbox"].as_u64().unwrap()
}

/// Starts duplex and waits until it reads all three sites (every later commit is seen).
fn start(config: &str) -> Duplex {
    let mut duplex = Duplex::run(config);
    wait_reading(&mut duplex, 3);
    duplex
}

fn wait_reading(duplex: &mut Duplex, readers: usize) {
    sites::wait_reading(duplex, readers, WAIT);
}

fn wait_conflicts(duplex: &mut Duplex, count: usize) -> Vec<serde_json::Value> {
    wait_for("the conflict log", WAIT, || {
        duplex.assert_running();
        let list = conflicts(duplex);
        if list.len() >= count {
            Ok(list)
        } else {
            Err(format!("{list:?}"))
        }
    })
}

fn item(id: i64, name: &str, qty: i64) -> Item {
    (id, name.to_owned(), qty)
}

#[test]
fn changes_on_all_three_sites_converge_without_echo_loops() {
    let sites = Sites::new();
    let mut duplex = start(&sites.config("last-writer-wins", ""));
    let mut expected = Vec::new();
    let mut local_changes = 0u64;
    for site in [STORE, ERP, WMS] {
        let base = (site as i64 + 1) * 100;
        let mut script = String::new();
        for i in 0..20 {
            script.push_str(&format!(
                "INSERT INTO items VALUES ({}, 'item {}', {i});\n",
                base + i,
                base + i
            ));
        }
        for i in 0..5 {
            script.push_str(&format!(
                "UPDATE items SET qty = qty + 100 WHERE id = {};\n",
                base + i
            ));
        }
        script.push_str(&format!(
            "DELETE FROM items WHERE id IN ({}, {});\n",
            base + 18,
            base + 19
        ));
        sites.exec(site, &script);
        local_changes += 20 + 5 + 2;
        for i in 0..18 {
            let qty = if i < 5 { i + 100 } else { i };
            expected.push(item(base + i, &format!("item {}", base + i), qty));
        }
    }
    expected.sort();
    wait_converged(&sites, &mut duplex, Some(&expected));
    // A last change through every site proves everything before it was read everywhere.
    sites.exec(STORE, "INSERT INTO items VALUES (999, 'marker', 0)");
    local_changes += 1;
    expected.push(item(999, "marker", 0));
    wait_converged(&sites, &mut duplex, Some(&expected));
    let writes: u64 = [STORE, ERP, WMS].iter().map(|s| writes(&sites, *s)).sum();
    assert_eq!(
        writes,
        local_changes * 2,
        "each local change is written to the two other sites, once"
    );
    assert!(conflicts(&duplex).is_empty(), "{:?}", conflicts(&duplex));
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    sites.drop_slots();
}

#[test]
fn causal_chains_are_never_conflicts_for_any_pair_of_sites() {
    let sites = Sites::new();
    let mut duplex = start(&sites.config("hold", ""));
    let mut expected = Vec::new();
    let mut id = 0;
    for a in [STORE, ERP, WMS] {
        for b in [STORE, ERP, WMS] {
            if a == b {
                continue;
            }
            id += 1;
            // A creates the row, it reaches B, B changes it, that reaches A, A changes it again.
            sites.exec(
                a,
                &format!("INSERT INTO items VALUES ({id}, 'from {a}', 1)"),
            );
            wait_for("the row to reach b", WAIT, || {
                let items = items(&sites, b)?;
                items
                    .iter()
                    .any(|r| r.0 == id)
                    .then_some(())
                    .ok_or_else(|| format!("{items:?}"))
            });
            sites.exec(
                b,
                &format!("UPDATE items SET qty = 2, name = 'by {b}' WHERE id = {id}"),
            );
            wait_for("b's change to reach a", WAIT, || {
                let items = items(&sites, a)?;
                items
                    .iter()
                    .any(|r| r.0 == id && r.2 == 2)
                    .then_some(())
                    .ok_or_else(|| format!("{items:?}"))
            });
            sites.exec(a, &format!("UPDATE items SET qty = 3 WHERE id = {id}"));
            expected.push(item(id, &format!("by {b}"), 3));
            wait_converged(&sites, &mut duplex, Some(&expected));
        }
    }
    assert!(
        conflicts(&duplex).is_empty(),
        "a causal chain was taken for a conflict: {:?}",
        conflicts(&duplex)
    );
    assert_eq!(duplex.terminate(), 0);
    sites.drop_slots();
}

/// Makes two sites change the same row while duplex is stopped (so neither change can have
/// seen the other), restarts it, and returns the converged rows and the conflict log.
fn concurrent(
    policy: &str,
    setup: &str,
    first: (usize, &str),
    second: (usize, &str),
    expect_converged: Option<&[Item]>,
) -> (Sites, Duplex, Vec<Item>, Vec<serde_json::Value>) {
    let sites = Sites::new();
    let mut duplex = start(&sites.config(policy, ""));
    if !setup.is_empty() {
        sites.exec(STORE, setup);
        wait_converged(&sites, &mut duplex, None);
    }
    assert_eq!(duplex.terminate(), 0);
    sites.exec(first.0, first.1);
    sites.exec(second.0, second.1);
    duplex.start();
    let log = wait_conflicts(&mut duplex, 1);
    let rows = match expect_converged {
        Some(rows) => wait_converged(&sites, &mut duplex, Some(rows)),
        None => Vec::new(),
    };
    (sites, duplex, rows, log)
}

fn assert_one_conflict(log: &[serde_json::Value], status: &str) {
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0]["status"], status, "{log:#?}");
    assert_eq!(log[0]["versions"].as_array().unwrap().len(), 2, "{log:#?}");
}

#[test]
fn concurrent_updates_last_writer_wins() {
    let (sites, mut duplex, _, log) = concurrent(
        "last-writer-wins",
        "INSERT INTO items VALUES (1, 'pen', 10)",
        (ERP, "UPDATE items SET qty = 7 WHERE id = 1"),
        (STORE, "UPDATE items SET qty = 5 WHERE id = 1"),
        Some(&[item(1, "pen", 5)]),
    );
    assert_one_conflict(&log, "resolved");
    assert_eq!(log[0]["winner"], sites.name(STORE), "the later commit wins");
    assert_eq!(duplex.terminate(), 0);
    sites.drop_slots();
}

#[test]
fn concurrent_updates_prefer_a_site() {
    // The preferred site is named in the policy, so the sites are made first.
    let sites = Sites::new();
    let erp_name = sites.name(ERP);
    let mut duplex = start(&sites.config(&format!("prefer:{erp_name}"), ""));
    sites.exec(STORE, "INSERT INTO items VALUES (1, 'pen', 10)");
    wait_converged(&sites, &mut duplex, None);
    assert_eq!(duplex.terminate(), 0);
    sites.exec(ERP, "UPDATE items SET qty = 7 WHERE id = 1");
    sites.exec(STORE, "UPDATE items SET qty = 5 WHERE id = 1");
    duplex.start();
    let log = wait_conflicts(&mut duplex, 1);
    wait_converged(&sites, &mut duplex, Some(&[item(1, "pen", 7)]));
    assert_one_conflict(&log, "resolved");
    assert_eq!(log[0]["winner"], erp_name);
    assert_eq!(duplex.terminate(), 0);
    sites.drop_slots();
}

#[test]
fn concurrent_updates_of_different_columns_merge() {
    let (sites, mut duplex, _, log) = concurrent(
        "merge-columns",
        "INSERT INTO items VALUES (1, 'pen', 10)",
        (ERP, "UPDATE items SET name = 'blue pen' WHERE id = 1"),
        (WMS, "UPDATE items SET qty = 4 WHERE id = 1"),
        Some(&[item(1, "blue pen", 4)]),
    );
    assert_one_conflict(&log, "resolved");
    // The same column on both sides falls back to the later commit. (MariaDB's binlog
    // records commit times in whole seconds, so the MariaDB change is made first: truncation
    // can only make it earlier.)
    assert_eq!(duplex.terminate(), 0);
    sites.exec(ERP, "UPDATE items SET qty = 2 WHERE id = 1");
    sites.exec(WMS, "UPDATE items SET qty = 1 WHERE id = 1");
    duplex.start();
    let log = wait_conflicts(&mut duplex, 2);
    wait_converged(&sites, &mut duplex, Some(&[item(1, "blue pen", 1)]));
    assert_eq!(log.len(), 2, "{log:#?}");
    assert_eq!(log[1]["winner"], sites.name(WMS));
    assert_eq!(duplex.terminate(), 0);
    sites.drop_slots();
}

#[test]
fn held_conflicts_keep_each_value_until_resolved() {
    let (sites, mut duplex, _, log) = concurrent(
        "hold",
        "INSERT INTO items VALUES (1, 'pen', 10), (2, 'ink', 3)",
        (ERP, "UPDATE items SET qty = 7 WHERE id = 1"),
        (STORE, "UPDATE items SET qty = 5 WHERE id = 1"),
        None,
    );
    assert_one_conflict(&log, "held");
    // Each site keeps its own value; other rows still replicate.
    sites.exec(WMS, "UPDATE items SET qty = 30 WHERE id = 2");
    wait_for("the other row to replicate", WAIT, || {
        let (s, e) = (items(&sites, STORE)?, items(&sites, ERP)?);
        (s.contains(&item(2, "ink", 30)) && e.contains(&item(2, "ink", 30)))
            .then_some(())
            .ok_or_else(|| format!("{s:?} {e:?}"))
    });
    assert!(items(&sites, STORE).unwrap().contains(&item(1, "pen", 5)));
    assert!(items(&sites, ERP).unwrap().contains(&item(1, "pen", 7)));
    let id = log[0]["id"].as_u64().unwrap();
    let output = duplex.command(&[
        "conflicts",
        "resolve",
        &id.to_string(),
        "--take",
        &sites.name(ERP),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_converged(
        &sites,
        &mut duplex,
        Some(&[item(1, "pen", 7), item(2, "ink", 30)]),
    );
    let log = conflicts(&duplex);
    assert_eq!(log[0]["status"], "resolved");
    assert_eq!(log[0]["winner"], sites.name(ERP));
    assert_eq!(log[0]["settled_by"], "operator");
    // After the resolution the row replicates normally again: no new conflict.
    sites.exec(WMS, "UPDATE items SET qty = 8 WHERE id = 1");
    wait_converged(
        &sites,
        &mut duplex,
        Some(&[item(1, "pen", 8), item(2, "ink", 30)]),
    );
    assert_eq!(conflicts(&duplex).len(), 1);
    assert_eq!(duplex.terminate(), 0);
    sites.drop_slots();
}

#[test]
fn insert_insert_and_update_delete_conflicts_converge() {
    // insert/insert on the same key: the later insert wins everywhere (the MariaDB one is
    // made first: its binlog commit time has whole seconds).
    let (sites, mut duplex, _, log) = concurrent(
        "last-writer-wins",
        "",
        (ERP, "INSERT INTO items VALUES (1, 'from erp', 2)"),
        (WMS, "INSERT INTO items VALUES (1, 'from wms', 1)"),
        Some(&[item(1, "from wms", 1)]),
    );
    assert_one_conflict(&log, "resolved");
    // update/delete: the later delete wins, the row is gone everywhere.
    assert_eq!(duplex.terminate(), 0);
    sites.exec(STORE, "UPDATE items SET qty = 9 WHERE id = 1");
    sites.exec(WMS, "DELETE FROM items WHERE id = 1");
    duplex.start();
    let log = wait_conflicts(&mut duplex, 2);
    wait_converged(&sites, &mut duplex, Some(&[]));
    assert_eq!(log[1]["winner"], sites.name(WMS), "{log:#?}");
    // delete/delete: both sides agree, no write is needed anywhere.
    sites.exec(ERP, "INSERT INTO items VALUES (2, 'x', 1)");
    wait_converged(&sites, &mut duplex, Some(&[item(2, "x", 1)]));
    assert_eq!(duplex.terminate(), 0);
    sites.exec(STORE, "DELETE FROM items WHERE id = 2");
    sites.exec(ERP, "DELETE FROM items WHERE id = 2");
    duplex.start();
    let log = wait_conflicts(&mut duplex, 3);
    wait_converged(&sites, &mut duplex, Some(&[]));
    assert_eq!(log[2]["decision"], "both sites made the same change");
    assert_eq!(duplex.terminate(), 0);
    sites.drop_slots();
}

#[test]
fn backfilled_rows_are_the_initial_version_at_every_site() {
    let sites = Sites::new();
    let mut script = String::new();
    for id in 1..=100 {
        script.push_str(&format!(
            "INSERT INTO items VALUES ({id}, 'item {id}', {id});\n"
        ));
    }
    sites.exec(ERP, &script);
    let mut duplex = Duplex::new(&sites.config("last-writer-wins", ""));
    let output = duplex.command(&["backfill", "--from", &sites.name(ERP)]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Changed after the snapshot, before run: streamed from the backfill's handover position.
    sites.exec(
        ERP,
        "UPDATE items SET qty = 500 WHERE id = 5; INSERT INTO items VALUES (200, 'late', 1)",
    );
    duplex.start();
    wait_reading(&mut duplex, 3);
    let mut expected: Vec<Item> = (1..=100)
        .map(|id| item(id, &format!("item {id}"), if id == 5 { 500 } else { id }))
        .collect();
    expected.push(item(200, "late", 1));
    wait_converged(&sites, &mut duplex, Some(&expected));
    // A backfilled row changed at a site the backfill wrote: a plain successor everywhere.
    sites.exec(WMS, "UPDATE items SET qty = 7000 WHERE id = 7");
    sites.exec(STORE, "DELETE FROM items WHERE id = 8");
    expected[6].2 = 7000;
    expected.remove(7);
    wait_converged(&sites, &mut duplex, Some(&expected));
    assert!(conflicts(&duplex).is_empty(), "{:?}", conflicts(&duplex));
    // Two sites change the same backfilled row before either is read: one conflict.
    assert_eq!(duplex.terminate(), 0);
    sites.exec(ERP, "UPDATE items SET qty = 1 WHERE id = 9");
    sites.exec(STORE, "UPDATE items SET qty = 2 WHERE id = 9");
    duplex.start();
    let log = wait_conflicts(&mut duplex, 1);
    let row9 = expected.iter_mut().find(|r| r.0 == 9).unwrap();
    row9.2 = 2;
    wait_converged(&sites, &mut duplex, Some(&expected));
    assert_one_conflict(&log, "resolved");
    assert_eq!(log[0]["winner"], sites.name(STORE));
    assert_eq!(duplex.terminate(), 0);
    sites.drop_slots();
}

#[test]
fn versions_of_rows_deleted_everywhere_are_reclaimed_after_the_horizon() {
    let sites = Sites::new();
    let mut duplex = start(&sites.config("last-writer-wins", "deleted_rows_kept_for = \"1s\""));
    sites.exec(
        STORE,
        "INSERT INTO items VALUES (1, 'gone', 1), (2, 'kept', 2)",
    );
    wait_converged(
        &sites,
        &mut duplex,
        Some(&[item(1, "gone", 1), item(2, "kept", 2)]),
    );
    sites.exec(ERP, "DELETE FROM items WHERE id = 1");
    wait_converged(&sites, &mut duplex, Some(&[item(2, "kept", 2)]));
    wait_for("the deleted row's versions to be reclaimed", WAIT, || {
        duplex.assert_running();
        let log = duplex.log_text();
        log.contains("reclaimed the versions of rows deleted everywhere")
            .then_some(())
            .ok_or_else(|| "not yet".to_owned())
    });
    assert_eq!(duplex.terminate(), 0);
    let state_dir = duplex.config_path().parent().unwrap().join("duplex-state");
    let store = duplex_state::StateStore::open(&state_dir).unwrap();
    assert_eq!(store.row_versions("items", b"id=1").unwrap(), None);
    let kept = store.row_versions("items", b"id=2").unwrap().unwrap();
    assert_eq!(kept.deleted_at, None);
    assert_eq!(kept.held.len(), 3, "{kept:?}");
    assert!(kept.held.values().all(|v| *v == kept.merged), "{kept:?}");
    store.close().unwrap();
    sites.drop_slots();
}

#[test]
fn the_others_go_on_while_a_site_is_away_and_it_catches_up_when_back() {
    use duplex_testkit::{MariaOptions, MariaServer, Shutdown};
    // The ERP on a server of its own: stopping the shared one would disturb other tests.
    let erp_server = MariaServer::start(MariaOptions::default()).unwrap();
    let sites = Sites::with_erp(erp_server.create_database());
    let mut duplex = start(&sites.config("last-writer-wins", ""));
    let insert = |site: usize, ids: std::ops::RangeInclusive<i64>| {
        let script: String = ids
            .map(|id| format!("INSERT INTO items VALUES ({id}, 'from {site}', {id});\n"))
            .collect();
        sites.exec(site, &script);
    };
    insert(STORE, 1..=50);
    wait_converged(&sites, &mut duplex, None);
    erp_server.shut_down(Shutdown::Fast).unwrap();
    insert(STORE, 51..=100);
    insert(WMS, 101..=120);
    // The store and the WMS go on replicating while the ERP is away.
    wait_for(
        "the store and the WMS to converge without the ERP",
        WAIT,
        || {
            duplex.assert_running();
            let (store, wms) = (items(&sites, STORE)?, items(&sites, WMS)?);
            (store.len() == 120 && store == wms)
                .then_some(())
                .ok_or_else(|| format!("{} and {} rows", store.len(), wms.len()))
        },
    );
    erp_server.start_again().unwrap();
    insert(ERP, 121..=140);
    let rows = wait_converged(&sites, &mut duplex, None);
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(ids, (1..=140).collect::<Vec<_>>());
    let written: u64 = [STORE, ERP, WMS].iter().map(|s| writes(&sites, *s)).sum();
    assert_eq!(
        written,
        140 * 2,
        "every change written to the two other sites, once"
    );
    assert!(conflicts(&duplex).is_empty());
    let log = duplex.log_text();
    assert!(log.contains("interrupted; the other sites go on"), "{log}");
    assert_eq!(duplex.terminate(), 0);
    sites.drop_slots();
}
