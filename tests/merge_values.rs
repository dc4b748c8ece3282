//! Value maps per site end to end on three real sites: the MariaDB ERP spells the mapping's
//! `name` values with its own codes (`paid` is `P`); every value reaches the other sites
//! translated, both ways, and a value or code the map does not list stops duplex naming it.

mod harness;

use std::time::Duration;

use harness::sites::{self, ERP, STORE, Sites, WMS};
use harness::{Duplex, wait_for};

const WAIT: Duration = Duration::from_secs(90);

fn start(sites: &Sites, map: &str) -> Duplex {
    let config = format!(
        "{}\n[mappings.values.{}]\nname = {map}\n",
        sites.config("last-writer-wins", ""),
        sites.name(ERP)
    );
    let mut duplex = Duplex::run(&config);
    sites::wait_reading(&mut duplex, 3, WAIT);
    duplex
}

/// Waits until the store and the WMS hold `canonical` and the ERP `coded` (rows `id|name|qty`).
fn wait_rows(sites: &Sites, duplex: &mut Duplex, canonical: &[&str], coded: &[&str]) {
    wait_for("the rows at every site", WAIT, || {
        duplex.assert_running();
        let all: Vec<Vec<String>> = [STORE, ERP, WMS]
            .iter()
            .map(|s| {
                sites
                    .rows(*s)
                    .map(|rows| rows.iter().map(|r| r.join("|")).collect())
            })
            .collect::<Result<_, _>>()?;
        if all[0] == canonical && all[1] == coded && all[2] == canonical {
            Ok(())
        } else {
            Err(format!("{all:?}"))
        }
    });
}

#[test]
fn codes_are_translated_both_ways() {
    let sites = Sites::new();
    let mut duplex = start(
        &sites,
        "{ paid = \"P\", shipped = \"S\", other = \"X\", default = \"X\" }",
    );
    sites.exec(
        STORE,
        "INSERT INTO items VALUES (1, 'paid', 1), (2, 'paid', 5)",
    );
    wait_rows(
        &sites,
        &mut duplex,
        &["1|paid|1", "2|paid|5"],
        &["1|P|1", "2|P|5"],
    );
    // The ERP's code comes back as the value; its other columns carry the value too.
    sites.exec(ERP, "UPDATE items SET name = 'S' WHERE id = 1");
    sites.exec(ERP, "UPDATE items SET qty = 6 WHERE id = 2");
    wait_rows(
        &sites,
        &mut duplex,
        &["1|shipped|1", "2|paid|6"],
        &["1|S|1", "2|P|6"],
    );
    // A write into the ERP is conditional on the ERP's own code for the row it replaces.
    sites.exec(
        WMS,
        "UPDATE items SET name = 'shipped', qty = 7 WHERE id = 2",
    );
    wait_rows(
        &sites,
        &mut duplex,
        &["1|shipped|1", "2|shipped|7"],
        &["1|S|1", "2|S|7"],
    );
    // A value without a code is written as the default code, which reads back as the value
    // it is listed for once the ERP changes the row: the default is lossy by design.
    sites.exec(STORE, "INSERT INTO items VALUES (3, 'refunded', 1)");
    let rows = ["1|shipped|1", "2|shipped|7", "3|refunded|1"];
    wait_rows(&sites, &mut duplex, &rows, &["1|S|1", "2|S|7", "3|X|1"]);
    sites.exec(ERP, "UPDATE items SET qty = 2 WHERE id = 3");
    let rows = ["1|shipped|1", "2|shipped|7", "3|other|2"];
    wait_rows(&sites, &mut duplex, &rows, &["1|S|1", "2|S|7", "3|X|2"]);
    assert!(sites::conflicts(&duplex).is_empty());
    assert_eq!(duplex.terminate(), 0);
    // A backfill would copy the codes untranslated: refused, naming the mapping.
    let output = duplex.command(&["backfill", "--from", &sites.name(STORE)]);
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("mapping items has value maps ([mappings.values]), which a backfill does not translate yet"),
        "{text}"
    );
    sites.drop_slots();
}

#[test]
fn a_value_without_a_code_and_a_code_without_a_value_stop_duplex_naming_them() {
    let sites = Sites::new();
    let mut duplex = start(&sites, "{ paid = \"P\" }");
    sites.exec(STORE, "INSERT INTO items VALUES (1, 'refunded', 1)");
    duplex.assert_stopped_saying(&[&format!(
        "value \"refunded\" of column name has no code at site {}",
        sites.name(ERP)
    )]);
    sites.drop_slots();

    let sites = Sites::new();
    let mut duplex = start(&sites, "{ paid = \"P\" }");
    sites.exec(ERP, "INSERT INTO items VALUES (1, 'Q', 1)");
    duplex.assert_stopped_saying(&[&format!(
        "site {} wrote \"Q\" in column name",
        sites.name(ERP)
    )]);
    sites.drop_slots();
}
