//! `duplex verify` by range digests: a table of digestible types whose integer keys cluster
//! (3,000 keys from 1 and five near 10^12), cut by value into ranges of which one holds almost
//! every row, into a MariaDB and a PostgreSQL target while `run` streams. The planted
//! differences (a missing row, an extra one, one changed column of each type, NULL against the
//! empty string, a changed key) are reported exactly, in every round, by digests and also with
//! digests turned off (`DUPLEX_VERIFY_DIGEST=off`, every range's rows compared); a row the
//! load changes in every transaction is never reported as a difference (at most as not
//! compared); `--repair` fixes the differences, and verify is clean.

mod harness;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use duplex_testkit::{shared_mariadb, shared_pg};
use harness::verify_report::{found, reports_with, set};
use harness::{Duplex, wait_for};

const WAIT: Duration = Duration::from_secs(90);

const PG_TABLE: &str = "CREATE TABLE lots (id bigint PRIMARY KEY, qty int, price numeric(10,2), \
     note text, seen timestamptz, day date, flag bool, u uuid, b bytea)";
const MARIA_TABLE: &str = "CREATE TABLE lots (id BIGINT PRIMARY KEY, qty INT, price DECIMAL(10,2), \
     note TEXT, seen DATETIME(6), day DATE, flag TINYINT(1), u CHAR(36), b VARBINARY(40)) ENGINE=InnoDB";

/// One JSON report per mapping, with `env` for verify, in ranges of 20 rows.
fn reports(duplex: &Duplex, env: &[(&str, &str)], args: &[&str]) -> (i32, Vec<serde_json::Value>) {
    let mut all = vec!["--chunk-rows", "20"];
    all.extend_from_slice(args);
    reports_with(duplex, env, &all)
}

/// The row the load updates in every transaction: never reported as a difference; at most
/// as not compared (its source row changed during every re-check).
fn assert_hot_row_at_most_in_flight(report: &serde_json::Value) {
    let in_flight = report["in_flight"].as_array().unwrap();
    assert!(
        in_flight.iter().all(|k| k == "id=1000000000005"),
        "{report}"
    );
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn verify_by_digests_reports_exactly_the_planted_differences_in_clustered_integer_keys() {
    let store = shared_pg().create_database();
    store.execute_as_duplex(PG_TABLE).unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql(MARIA_TABLE).unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(PG_TABLE).unwrap();
    let (s, e, w) = (store.name(), erp.name(), wms.name());
    let config = format!(
        "[sites.{s}]\nkind = \"postgres\"\nurl = \"{}\"\n\n[sites.{e}]\nkind = \"mysql\"\nurl = \"{}\"\n\n\
         [sites.{w}]\nkind = \"postgres\"\nurl = \"{}\"\n\n\
         [[mappings]]\nname = \"lots_erp\"\ntables = {{ {s} = \"public.lots\", {e} = \"{e}.lots\" }}\n\
         direction = \"{s}->{e}\"\n\n\
         [[mappings]]\nname = \"lots_wms\"\ntables = {{ {s} = \"public.lots\", {w} = \"public.lots\" }}\n\
         direction = \"{s}->{w}\"\n",
        store.url(),
        erp.url(),
        wms.url()
    );
    let mut duplex = Duplex::run(&config);
    duplex.wait_link_started();
    store
        .psql(
            "INSERT INTO lots SELECT k, k % 97, (k % 100000) * 1.25, 'note ' || k,
                 '2026-01-02 03:04:05.5+02'::timestamptz + (k % 100000) * interval '1 second',
                 date '2026-01-01' + (k % 500)::int, k % 2 = 0, md5(k::text)::uuid,
                 decode(md5(k::text), 'hex')
                 FROM (SELECT generate_series(1, 3000) AS k
                       UNION ALL SELECT 1000000000000 + generate_series(1, 5)) keys;",
        )
        .unwrap();
    wait_for("the seed rows to arrive", WAIT, || {
        duplex.assert_running();
        let a = erp
            .sql("SELECT COUNT(*) FROM lots")
            .map_err(|e| e.to_string())?;
        let b = wms
            .psql("SELECT count(*) FROM lots")
            .map_err(|e| e.to_string())?;
        if a.trim() == "3005" && b.trim() == "3005" {
            Ok(())
        } else {
            Err(format!("{a} {b}"))
        }
    });
    // Behind duplex's back: a missing row, an extra row, each type changed, NULL against
    // the empty string, a key changed (its old key missing, the new one extra).
    erp.sql(
        "SET time_zone = '+00:00';
         DELETE FROM lots WHERE id = 1500;
         INSERT INTO lots (id, qty) VALUES (2000000, 1);
         UPDATE lots SET qty = -1 WHERE id = 11;
         UPDATE lots SET price = price + 0.01 WHERE id = 12;
         UPDATE lots SET note = '' WHERE id = 13;
         UPDATE lots SET seen = seen + INTERVAL 1 MICROSECOND WHERE id = 14;
         UPDATE lots SET day = day + INTERVAL 1 DAY WHERE id = 15;
         UPDATE lots SET flag = 1 - flag WHERE id = 16;
         UPDATE lots SET u = '00000000-0000-0000-0000-000000000000' WHERE id = 17;
         UPDATE lots SET b = X'00' WHERE id = 18;
         UPDATE lots SET id = 1000000000009 WHERE id = 1000000000003;",
    )
    .unwrap();
    wms.psql(
        "DELETE FROM lots WHERE id = 2999;
         UPDATE lots SET note = NULL WHERE id = 21;
         UPDATE lots SET note = 'note 22 ' WHERE id = 22;
         UPDATE lots SET seen = seen + interval '1 hour' WHERE id = 1000000000001;",
    )
    .unwrap();
    let want_erp = [
        set(&["id=1500", "id=1000000000003"]),
        set(&["id=2000000", "id=1000000000009"]),
        set(&[
            "id=11: qty",
            "id=12: price",
            "id=13: note",
            "id=14: seen",
            "id=15: day",
            "id=16: flag",
            "id=17: u",
            "id=18: b",
        ]),
    ];
    let want_wms = [
        set(&["id=2999"]),
        set(&[]),
        set(&["id=21: note", "id=22: note", "id=1000000000001: seen"]),
    ];
    let stop = AtomicBool::new(false);
    let written = AtomicU64::new(0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                store
                    .psql(&format!(
                        "UPDATE lots SET qty = qty + 1 WHERE id = {};
                         INSERT INTO lots (id, qty) VALUES ({}, 1);
                         UPDATE lots SET note = 'n{n}' WHERE id = 1000000000005;",
                        100 + n % 1000,
                        5000 + n
                    ))
                    .unwrap();
                written.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Stops the load however this thread leaves the scope (a failed assertion too).
        let _stop = StopOnDrop(&stop);
        wait_for("the load to run", WAIT, || {
            (written.load(Ordering::Relaxed) > 10)
                .then_some(())
                .ok_or_else(|| "slow".to_owned())
        });
        for (round, env) in [&[][..], &[("DUPLEX_VERIFY_DIGEST", "off")][..], &[][..]]
            .into_iter()
            .enumerate()
        {
            let (code, reports) = reports(&duplex, env, &[]);
            assert_eq!(code, 1, "round {round}: {reports:?}");
            assert_eq!(reports.len(), 2, "{reports:?}");
            for report in &reports {
                let want = if report["mapping"] == "lots_erp" {
                    &want_erp
                } else {
                    &want_wms
                };
                assert_eq!(&found(report), want, "round {round} {env:?}: {report}");
                assert_eq!(report["confirmed"], true, "{report}");
                assert_hot_row_at_most_in_flight(report);
            }
        }
        // The repair's exit status also counts the hot row if it was in flight: what it
        // repaired is what was planted.
        let out = duplex.command(&["verify", "--repair", "--chunk-rows", "20"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("mapping lots_erp: repaired 12 row(s)")
                && stdout.contains("mapping lots_wms: repaired 4 row(s)")
                && !stdout.contains("still differs"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (_, reports) = reports(&duplex, &[], &[]);
        for report in &reports {
            assert_eq!(found(report), [set(&[]), set(&[]), set(&[])], "{report}");
            assert_hot_row_at_most_in_flight(report);
        }
    });
    // Without the load, nothing is in flight: equal.
    let want = store.psql("SELECT count(*), sum(qty) FROM lots").unwrap();
    wait_for("the targets to catch up", WAIT, || {
        duplex.assert_running();
        let a = erp
            .sql("SELECT COUNT(*), SUM(qty) FROM lots")
            .map_err(|e| e.to_string())?;
        let b = wms
            .psql("SELECT count(*), sum(qty) FROM lots")
            .map_err(|e| e.to_string())?;
        let norm = |t: &str| t.split_whitespace().collect::<Vec<_>>().join("|");
        if norm(&a) == norm(&want) && norm(&b) == norm(&want) {
            Ok(())
        } else {
            Err(format!("{a} {b} want {want}"))
        }
    });
    let (code, reports) = reports(&duplex, &[], &[]);
    assert_eq!(code, 0, "{reports:?}");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}
