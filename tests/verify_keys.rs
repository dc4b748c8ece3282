//! `duplex verify` cuts tables with text and composite keys into ranges too, even when the
//! target orders the key differently (MariaDB's case-insensitive default collation against
//! PostgreSQL's): with ranges of 20 rows, planted differences are reported exactly, and
//! nothing else, while `run` streams; `--repair` fixes them and the next verify is clean.
//! Schema-wide mappings are verified table by table.

mod harness;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use duplex_testkit::{shared_mariadb, shared_pg};
use harness::verify_report::{found, reports_with, set};
use harness::{Duplex, wait_for};

const WAIT: Duration = Duration::from_secs(90);

/// One JSON report per mapping, in ranges of 20 rows.
fn reports(duplex: &Duplex, args: &[&str]) -> (i32, Vec<serde_json::Value>) {
    let mut all = vec!["--chunk-rows", "20"];
    all.extend_from_slice(args);
    reports_with(duplex, &[], &all)
}

#[test]
fn verify_cuts_text_and_composite_keys_into_ranges_whatever_order_the_target_keeps() {
    let store = shared_pg().create_database();
    let tables = "CREATE TABLE codes (code text PRIMARY KEY, v int);
                  CREATE TABLE pairs (a text, b int, v text, PRIMARY KEY (a, b));";
    store.execute_as_duplex(tables).unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql(
        "CREATE TABLE codes (code VARCHAR(30) COLLATE utf8mb4_general_ci PRIMARY KEY, v INT) ENGINE=InnoDB;
         CREATE TABLE pairs (a VARCHAR(10) COLLATE utf8mb4_general_ci, b INT, v TEXT, PRIMARY KEY (a, b)) ENGINE=InnoDB;",
    )
    .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(tables).unwrap();
    let (s, e, w) = (store.name(), erp.name(), wms.name());
    let mut config = format!(
        "[sites.{s}]\nkind = \"postgres\"\nurl = \"{}\"\n\n[sites.{e}]\nkind = \"mysql\"\nurl = \"{}\"\n\n\
         [sites.{w}]\nkind = \"postgres\"\nurl = \"{}\"\n\n",
        store.url(),
        erp.url(),
        wms.url()
    );
    for table in ["codes", "pairs"] {
        for (target, schema) in [(e, e), (w, "public")] {
            config.push_str(&format!(
                "[[mappings]]\nname = \"{table}_{target}\"\ntables = {{ {s} = \"public.{table}\", {target} = \"{schema}.{table}\" }}\ndirection = \"{s}->{target}\"\n\n"
            ));
        }
    }
    let mut duplex = Duplex::run(&config);
    duplex.wait_link_started();
    // Mixed case and punctuation: 'K9' < 'k10' byte-wise, 'k10' < 'K9' case-insensitively.
    store
        .psql(
            "INSERT INTO codes SELECT CASE i % 3 WHEN 0 THEN 'K' WHEN 1 THEN 'k' ELSE '_x-' END || i, i
                 FROM generate_series(1, 200) i;
             INSERT INTO pairs SELECT CASE i % 3 WHEN 0 THEN 'Ab' WHEN 1 THEN 'aC' ELSE 'b_' END, i, 'v' || i
                 FROM generate_series(1, 150) i;",
        )
        .unwrap();
    wait_for("the seed rows to arrive", WAIT, || {
        duplex.assert_running();
        let a = erp
            .sql("SELECT (SELECT COUNT(*) FROM codes) + (SELECT COUNT(*) FROM pairs)")
            .map_err(|e| e.to_string())?;
        let b = wms
            .psql("SELECT (SELECT count(*) FROM codes) + (SELECT count(*) FROM pairs)")
            .map_err(|e| e.to_string())?;
        if a.trim() == "350" && b.trim() == "350" {
            Ok(())
        } else {
            Err(format!("{a} {b}"))
        }
    });
    let plant = "DELETE FROM codes WHERE code = 'k7';
                 INSERT INTO codes VALUES ('Zz-extra', 1);
                 UPDATE codes SET v = -1 WHERE code = 'K9';
                 DELETE FROM pairs WHERE a = 'b_' AND b = 5;
                 INSERT INTO pairs VALUES ('ZZ', 1, 'x');
                 UPDATE pairs SET v = 'changed' WHERE a = 'Ab' AND b = 3;";
    erp.sql(plant).unwrap();
    wms.psql(plant).unwrap();
    let stop = AtomicBool::new(false);
    let written = AtomicU64::new(0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                store
                    .psql(&format!(
                        "INSERT INTO codes VALUES ('New{n}', 1);
                         UPDATE codes SET v = v + 1 WHERE code = 'k{}';
                         UPDATE pairs SET v = 'n{n}' WHERE a = 'aC' AND b = {};",
                        100 + 3 * (n % 30),
                        100 + 3 * (n % 15)
                    ))
                    .unwrap();
                written.fetch_add(1, Ordering::Relaxed);
            }
        });
        wait_for("the load to run", WAIT, || {
            (written.load(Ordering::Relaxed) > 10)
                .then_some(())
                .ok_or_else(|| "slow".to_owned())
        });
        for round in 0..2 {
            let (code, reports) = reports(&duplex, &[]);
            assert_eq!(code, 1, "round {round}: {reports:?}");
            assert_eq!(reports.len(), 4, "{reports:?}");
            for report in &reports {
                let want = if report["mapping"].as_str().unwrap().starts_with("codes") {
                    [
                        set(&["code=\"k7\""]),
                        set(&["code=\"Zz-extra\""]),
                        set(&["code=\"K9\": v"]),
                    ]
                } else {
                    [
                        set(&["a=\"b_\", b=5"]),
                        set(&["a=\"ZZ\", b=1"]),
                        set(&["a=\"Ab\", b=3: v"]),
                    ]
                };
                assert_eq!(found(report), want, "round {round}: {report}");
                assert_eq!(report["confirmed"], true, "{report}");
            }
        }
        let out = duplex.command(&["verify", "--repair", "--chunk-rows", "20"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let (code, reports) = reports(&duplex, &[]);
        assert_eq!(code, 0, "{reports:?}");
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}

/// A schema-wide mapping is verified table by table (`<mapping>.<table>`), selected by its
/// own name or one table's.
#[test]
fn verify_expands_a_schema_wide_mapping_into_its_tables() {
    let store = shared_pg().create_database();
    let erp = shared_mariadb().create_database();
    for table in ["a", "b"] {
        store
            .execute_as_duplex(&format!(
                "CREATE TABLE {table} (id int PRIMARY KEY, v text)"
            ))
            .unwrap();
        erp.sql(&format!(
            "CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB"
        ))
        .unwrap();
    }
    let config = format!(
        "[sites.{s}]\nkind = \"postgres\"\nurl = \"{su}\"\n\n\
         [sites.erp]\nkind = \"mysql\"\nurl = \"{eu}\"\n\n\
         [[mappings]]\nname = \"shop\"\ntables = {{ {s} = \"public.*\", erp = \"{e}.*\" }}\n\
         direction = \"{s}->erp\"\n",
        s = store.name(),
        su = store.url(),
        e = erp.name(),
        eu = erp.url(),
    );
    let mut duplex = Duplex::run(&config);
    duplex.wait_link_started();
    store
        .psql(
            "INSERT INTO a SELECT i, 'a' || i FROM generate_series(1, 50) i;
             INSERT INTO b SELECT i, 'b' || i FROM generate_series(1, 50) i;",
        )
        .unwrap();
    wait_for("the rows to arrive", WAIT, || {
        duplex.assert_running();
        let n = erp
            .sql("SELECT (SELECT COUNT(*) FROM a) + (SELECT COUNT(*) FROM b)")
            .map_err(|e| e.to_string())?;
        (n.trim() == "100").then_some(()).ok_or(n)
    });
    erp.sql("DELETE FROM b WHERE id = 7").unwrap();
    let (code, all) = reports(&duplex, &[]);
    assert_eq!(code, 1, "{all:?}");
    let names: Vec<&str> = all.iter().map(|r| r["mapping"].as_str().unwrap()).collect();
    assert_eq!(names, ["shop.a", "shop.b"], "{all:?}");
    assert_eq!(found(&all[0]), [set(&[]), set(&[]), set(&[])], "{all:?}");
    assert_eq!(
        found(&all[1]),
        [set(&["id=7"]), set(&[]), set(&[])],
        "{all:?}"
    );
    let (code, by_name) = reports(&duplex, &["--mapping", "shop"]);
    assert_eq!((code, by_name.len()), (1, 2), "{by_name:?}");
    let (code, one) = reports(&duplex, &["--mapping", "shop.a"]);
    assert_eq!((code, one.len()), (0, 1), "{one:?}");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}
