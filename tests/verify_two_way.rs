//! `duplex verify` of a two-way mapping across three sites (PostgreSQL, MariaDB, PostgreSQL)
//! while the merge engine carries a steady write load on two of them: every site is compared
//! with the first, rows the engine is still carrying are not reported, and rows one site
//! changed behind duplex's back (without its binlog) are reported exactly, every time;
//! `--repair --take` makes all three hold that site's rows through the engine, for good.

mod harness;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use harness::sites::{self, ERP, STORE, Sites, WMS};
use harness::verify_report::{found, set};
use harness::wait_for;

const WAIT: Duration = Duration::from_secs(90);

#[test]
fn two_way_verify_reports_exactly_what_one_site_changed_behind_duplex_while_the_engine_streams() {
    let sites = Sites::new();
    let mut duplex = harness::Duplex::run(&sites.config("last-writer-wins", ""));
    sites::wait_reading(&mut duplex, 3, WAIT);
    sites.exec(
        STORE,
        "INSERT INTO items SELECT i, 'item ' || i, i FROM generate_series(1, 300) i",
    );
    sites.wait_same(&mut duplex, WAIT, |rows| rows.len() == 300);
    // Behind duplex's back on the ERP: nothing of it reaches the binlog.
    sites.exec(
        ERP,
        "SET SESSION sql_log_bin = 0;
         DELETE FROM items WHERE id = 5;
         INSERT INTO items VALUES (9001, 'ghost', 1);
         UPDATE items SET qty = -7 WHERE id = 6;",
    );
    let stop = AtomicBool::new(false);
    let written = AtomicU64::new(0);
    std::thread::scope(|scope| {
        // A steady load of new rows and updates on the store and the WMS.
        scope.spawn(|| {
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let site = if n % 2 == 0 { STORE } else { WMS };
                sites.exec(
                    site,
                    &format!(
                        "INSERT INTO items VALUES ({}, 'new', 1);
                         UPDATE items SET qty = qty + 1, name = 'busy {n}' WHERE id = {};",
                        10_000 + n,
                        100 + n % 150
                    ),
                );
                written.fetch_add(1, Ordering::Relaxed);
            }
        });
        wait_for("the load to run", WAIT, || {
            (written.load(Ordering::Relaxed) > 10)
                .then_some(())
                .ok_or_else(|| "slow".to_owned())
        });
        for round in 0..3 {
            let out = duplex.command(&["verify", "--json"]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let reports: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(
                out.status.code(),
                Some(1),
                "round {round}: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let pairs: Vec<(String, String)> = reports
                .iter()
                .map(|r| (r["source"].to_string(), r["target"].to_string()))
                .collect();
            let name = |site: usize| format!("\"{}\"", sites.name(site));
            assert_eq!(
                pairs,
                [(name(STORE), name(ERP)), (name(STORE), name(WMS))],
                "{text}"
            );
            assert_eq!(
                found(&reports[0]),
                [set(&["id=5"]), set(&["id=9001"]), set(&["id=6: qty"])],
                "round {round}: {text}"
            );
            assert_eq!(
                found(&reports[1]),
                [set(&[]), set(&[]), set(&[])],
                "round {round}: {text}"
            );
            for report in &reports {
                assert_eq!(report["confirmed"], true, "{text}");
                assert_eq!(report["two_way"], true, "{text}");
            }
        }
        // Repairing a two-way mapping needs the site whose rows win.
        let out = duplex.command(&["verify", "--repair"]);
        assert_eq!(out.status.code(), Some(2));
        // The ERP's rows everywhere, through the engine, while the load goes on.
        let erp = sites.name(ERP);
        let out = duplex.command(&["verify", "--repair", "--take", &erp]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("repaired 3 row(s)"), "{text}");
        // Clean right after, and again later: the engine does not undo the repair.
        for round in 0..2 {
            let out = duplex.command(&["verify"]);
            assert_eq!(
                out.status.code(),
                Some(0),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        stop.store(true, Ordering::Relaxed);
    });
    let rows = sites.wait_same(&mut duplex, WAIT, |_| true);
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert!(!ids.contains(&"5") && ids.contains(&"9001"), "{ids:?}");
    let six = rows.iter().find(|r| r[0] == "6").unwrap();
    assert_eq!(six[2], "-7", "{six:?}");
    // Logged like an operator's resolution.
    let log = sites::conflicts(&duplex);
    let taken: Vec<&serde_json::Value> = log
        .iter()
        .filter(|c| c["decision"].as_str().unwrap_or("").contains("--take"))
        .collect();
    assert_eq!(taken.len(), 3, "{log:?}");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    // Without `duplex run` nothing carries changes: a difference is reported at once, as not
    // confirmed, and --take refuses to write.
    sites.exec(WMS, "UPDATE items SET qty = 0 WHERE id = 7");
    let started = std::time::Instant::now();
    let out = duplex.command(&["verify", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(started.elapsed() < Duration::from_secs(25), "{text}");
    let wms: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
    assert_eq!(
        found(&wms),
        [set(&[]), set(&[]), set(&["id=7: qty"])],
        "{text}"
    );
    assert_eq!(wms["confirmed"], false, "{text}");
    let out = duplex.command(&["verify", "--repair", "--take", &sites.name(STORE)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("start `duplex run`"), "{stderr}");
}
