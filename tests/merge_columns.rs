//! Column-level conflict policies end to end on three real sites (PostgreSQL store, MariaDB
//! ERP, PostgreSQL WMS): concurrent changes made while duplex is stopped are decided column by
//! column, every site ends on the decided row, and the conflict log names the policies.

mod harness;

use std::time::Duration;

use harness::sites::{self, ERP, STORE, Sites, WMS, conflicts};
use harness::{Duplex, wait_for};

const WAIT: Duration = Duration::from_secs(90);

/// Starts duplex on the three sites' `items` with `conflict` as the row policy and the
/// `[mappings.column_conflict]` lines `columns`, and waits until it reads every site.
fn start(sites: &Sites, conflict: &str, columns: &str) -> Duplex {
    let config = format!(
        "{}\n[mappings.column_conflict]\n{columns}\n",
        sites.config(conflict, "")
    );
    let mut duplex = Duplex::run(&config);
    sites::wait_reading(&mut duplex, 3, WAIT);
    duplex
}

fn wait_rows(sites: &Sites, duplex: &mut Duplex, expected: &[&str]) {
    sites.wait_same(duplex, WAIT, |rows| {
        let joined: Vec<String> = rows.iter().map(|r| r.join("|")).collect();
        joined == expected
    });
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

#[test]
fn a_stock_count_changed_on_three_sites_at_once_ends_on_the_sum_everywhere() {
    let sites = Sites::new();
    let mut duplex = start(&sites, "merge-columns", "qty = \"delta\"");
    sites.exec(
        STORE,
        "INSERT INTO items VALUES (1, 'mug', 120), (2, 'cup', 50)",
    );
    wait_rows(&sites, &mut duplex, &["1|mug|120", "2|cup|50"]);
    assert_eq!(duplex.terminate(), 0);
    // None of these changes saw another: the store sells 2 and 1, the WMS books 10 in, the ERP
    // corrects a count by -1 and, on the other row, sells the same 3 as the store.
    sites.exec(STORE, "UPDATE items SET qty = qty - 2 WHERE id = 1");
    sites.exec(STORE, "UPDATE items SET qty = qty - 1 WHERE id = 1");
    sites.exec(WMS, "UPDATE items SET qty = qty + 10 WHERE id = 1");
    sites.exec(
        ERP,
        "UPDATE items SET qty = qty - 1, name = 'mug!' WHERE id = 1",
    );
    sites.exec(STORE, "UPDATE items SET qty = qty - 3 WHERE id = 2");
    sites.exec(ERP, "UPDATE items SET qty = qty - 3 WHERE id = 2");
    duplex.start();
    // 120 - 2 - 1 + 10 - 1; 50 - 3 - 3 (the same change on two sites is two sales).
    wait_rows(&sites, &mut duplex, &["1|mug!|126", "2|cup|44"]);
    // Row 1: two or three conflicts, as the store's second sale is read before or after the
    // others; row 2: one.
    let log = wait_conflicts(&mut duplex, 3);
    assert!((3..=4).contains(&log.len()), "{log:#?}");
    for record in &log {
        assert_eq!(record["policy"], "merge-columns, qty: delta", "{record:#}");
        assert_eq!(record["status"], "resolved", "{record:#}");
        let decision = record["decision"].as_str().unwrap();
        assert!(decision.starts_with("qty delta: from "), "{decision}");
    }
    assert_eq!(duplex.terminate(), 0);
    sites.drop_slots();
}

#[test]
fn concurrent_status_changes_end_on_the_later_ranked_status_and_the_greater_count() {
    let sites = Sites::new();
    let mut duplex = start(
        &sites,
        "last-writer-wins",
        "name = { precedence = [\"new\", \"paid\", \"picking\", \"shipped\", \"delivered\"] }\nqty = \"max\"",
    );
    sites.exec(
        STORE,
        "INSERT INTO items VALUES (1, 'paid', 5), (2, 'new', 5)",
    );
    wait_rows(&sites, &mut duplex, &["1|paid|5", "2|new|5"]);
    assert_eq!(duplex.terminate(), 0);
    // Row 1: the ERP ships first, the WMS commits a step back later; last-writer-wins would
    // take the WMS's row whole. Row 2: a status outside the list is the row policy's.
    sites.exec(
        ERP,
        "UPDATE items SET name = 'shipped', qty = 3 WHERE id = 1",
    );
    sites.exec(
        WMS,
        "UPDATE items SET name = 'picking', qty = 9 WHERE id = 1",
    );
    sites.exec(WMS, "UPDATE items SET name = 'paid', qty = 2 WHERE id = 2");
    sites.exec(
        STORE,
        "UPDATE items SET name = 'on hold', qty = 4 WHERE id = 2",
    );
    duplex.start();
    wait_rows(&sites, &mut duplex, &["1|shipped|9", "2|on hold|4"]);
    let log = wait_conflicts(&mut duplex, 2);
    let decisions: Vec<&str> = log
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    assert!(
        decisions.contains(
            &"name precedence: \"shipped\" over \"picking\"; qty max: 9 over 3; other columns the same on both"
        ),
        "{decisions:#?}"
    );
    assert!(
        decisions.iter().any(|d| d.starts_with(
            "name precedence: \"on hold\" is not in the list, the row policy decides; qty max: 4 over 2; other columns: site "
        )),
        "{decisions:#?}"
    );
    assert!(
        log.iter()
            .all(|r| r["policy"] == "last-writer-wins, name: precedence, qty: max")
    );
    assert_eq!(duplex.terminate(), 0);
    sites.drop_slots();
}

#[test]
fn min_keeps_the_smaller_value_whoever_commits_last() {
    let sites = Sites::new();
    let mut duplex = start(&sites, "hold", "qty = \"min\"");
    sites.exec(STORE, "INSERT INTO items VALUES (1, 'pen', 10)");
    wait_rows(&sites, &mut duplex, &["1|pen|10"]);
    assert_eq!(duplex.terminate(), 0);
    sites.exec(ERP, "UPDATE items SET qty = 4 WHERE id = 1");
    sites.exec(WMS, "UPDATE items SET qty = 7 WHERE id = 1");
    sites.exec(STORE, "UPDATE items SET qty = 6 WHERE id = 1");
    duplex.start();
    // The row policy `hold` has nothing to hold: only the column with its own policy differs.
    wait_rows(&sites, &mut duplex, &["1|pen|4"]);
    let log = wait_conflicts(&mut duplex, 2);
    assert!(log.iter().all(|r| r["status"] == "resolved"), "{log:#?}");
    assert_eq!(duplex.terminate(), 0);
    sites.drop_slots();
}
