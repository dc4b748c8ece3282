//! Row filters per site end to end on three real sites: the store (PostgreSQL) receives only
//! the rows its filter passes; a row that stops passing disappears from it, one that starts
//! passing appears, and the store's own change to a row outside its filter is refused into the
//! conflict log instead of spreading.

mod harness;

use std::time::Duration;

use harness::sites::{self, ERP, STORE, Sites, WMS, conflicts};
use harness::{Duplex, wait_for};

const WAIT: Duration = Duration::from_secs(90);

fn rows(sites: &Sites, site: usize) -> Result<Vec<String>, String> {
    Ok(sites.rows(site)?.iter().map(|r| r.join("|")).collect())
}

/// Waits until the store holds `store` and the ERP and the WMS hold `others`.
fn wait_rows(sites: &Sites, duplex: &mut Duplex, store: &[&str], others: &[&str]) {
    wait_for("the rows at every site", WAIT, || {
        duplex.assert_running();
        let all = [rows(sites, STORE)?, rows(sites, ERP)?, rows(sites, WMS)?];
        if all[0] == store && all[1] == others && all[2] == others {
            Ok(())
        } else {
            Err(format!("{all:?}"))
        }
    });
}

#[test]
fn the_store_receives_only_the_rows_its_filter_passes() {
    let sites = Sites::new();
    let config = format!(
        "{}filter.{} = \"name = 'web' AND qty < 100\"\n",
        sites.config("last-writer-wins", ""),
        sites.name(STORE)
    );
    let mut duplex = Duplex::run(&config);
    sites::wait_reading(&mut duplex, 3, WAIT);
    sites.exec(
        ERP,
        "INSERT INTO items VALUES (1, 'web', 5), (2, 'web', 500), (3, 'pos', 5)",
    );
    wait_rows(
        &sites,
        &mut duplex,
        &["1|web|5"],
        &["1|web|5", "2|web|500", "3|pos|5"],
    );
    // Row 1 leaves the filter (deleted at the store), row 2 enters it (inserted there).
    sites.exec(WMS, "UPDATE items SET qty = 200 WHERE id = 1");
    sites.exec(WMS, "UPDATE items SET qty = 50 WHERE id = 2");
    wait_rows(
        &sites,
        &mut duplex,
        &["2|web|50"],
        &["1|web|200", "2|web|50", "3|pos|5"],
    );
    // The store's own rows outside its filter stay there and are not spread; a change inside
    // it is.
    sites.exec(STORE, "INSERT INTO items VALUES (4, 'pos', 1)");
    sites.exec(STORE, "UPDATE items SET qty = 60 WHERE id = 2");
    sites.exec(STORE, "INSERT INTO items VALUES (5, 'web', 7)");
    wait_rows(
        &sites,
        &mut duplex,
        &["2|web|60", "4|pos|1", "5|web|7"],
        &["1|web|200", "2|web|60", "3|pos|5", "5|web|7"],
    );
    let log = conflicts(&duplex);
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0]["key"], "id=4", "{log:#?}");
    assert_eq!(
        log[0]["decision"],
        format!(
            "refused: the row is outside site {0}'s filter; kept at {0} only, not spread",
            sites.name(STORE)
        ),
        "{log:#?}"
    );
    assert_eq!(duplex.terminate(), 0);
    sites.drop_slots();
}
