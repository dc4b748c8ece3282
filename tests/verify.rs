//! `duplex verify` while `duplex run` streams a steady write load: differences planted on a
//! PostgreSQL and a MariaDB target behind duplex's back are reported exactly (and nothing else,
//! however often verify runs), `--repair` fixes them, and the next verify is clean.

mod harness;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use duplex_testkit::{shared_mariadb, shared_pg};
use harness::verify_report::reports_with;
use harness::{Duplex, wait_for};

const WAIT: Duration = Duration::from_secs(90);

const PG_TABLES: &str = "
    CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL, price numeric(10,2), note text,
        seen timestamptz, flag bool, day date, doc jsonb, u uuid, b bytea, f float8, t time);
    CREATE TABLE pairs (a int, b text, v text, PRIMARY KEY (a, b));
    CREATE TABLE codes (code text PRIMARY KEY, v int);";

const MY_TABLES: &str = "
    CREATE TABLE items (id INT PRIMARY KEY, quantity INT NOT NULL, price DECIMAL(10,2), note TEXT,
        seen DATETIME(6), flag TINYINT(1), day DATE, doc JSON, u CHAR(36), b BLOB, f DOUBLE, t TIME(6))
        ENGINE=InnoDB;
    CREATE TABLE pairs (a INT, b VARCHAR(20) COLLATE utf8mb4_nopad_bin, v TEXT, PRIMARY KEY (a, b)) ENGINE=InnoDB;
    CREATE TABLE codes (code VARCHAR(20) COLLATE utf8mb4_nopad_bin PRIMARY KEY, v INT) ENGINE=InnoDB;";

const PG_TARGET_TABLES: &str = "
    CREATE TABLE items (id int PRIMARY KEY, quantity int NOT NULL, price numeric(12,3), note text,
        seen timestamptz, flag bool, day date, doc jsonb, u uuid, b bytea, f float8, t time);
    CREATE TABLE pairs (a int, b text, v text, PRIMARY KEY (a, b));
    CREATE TABLE codes (code text PRIMARY KEY, v int);";

const SEED: &str = "
    INSERT INTO items SELECT i, i, i * 1.25, CASE WHEN i % 7 = 4 THEN NULL ELSE 'note ' || i END,
        '2026-01-02 03:04:05.123456+02'::timestamptz + i * interval '1 minute', i % 2 = 0,
        date '2026-01-01' + i, jsonb_build_object('n', i, 'tags', jsonb_build_array('a', 'b')),
        md5(i::text)::uuid, decode(md5(i::text), 'hex'), i / 3.0::float8,
        time '00:00:00.5' + i * interval '1 second'
        FROM generate_series(1, 2500) i;
    INSERT INTO pairs SELECT i % 10, 'b' || i, 'v' || i FROM generate_series(1, 300) i;
    INSERT INTO codes SELECT 'k' || i, i FROM generate_series(1, 300) i;";

/// One JSON report per mapping, by mapping name.
fn reports(duplex: &Duplex, args: &[&str]) -> (i32, Vec<serde_json::Value>) {
    let started = std::time::Instant::now();
    let result = reports_with(duplex, &[], args);
    eprintln!("verify {args:?} took {:?}", started.elapsed());
    result
}

fn keys(report: &serde_json::Value, field: &str) -> BTreeSet<String> {
    report[field]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect()
}

/// Differing rows as `key: column` strings.
fn differing(report: &serde_json::Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for row in report["differing"].as_array().unwrap() {
        for column in row["columns"].as_array().unwrap() {
            out.insert(format!(
                "{}: {}",
                row["key"].as_str().unwrap(),
                column["column"].as_str().unwrap()
            ));
        }
    }
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn verify_reports_exactly_the_planted_differences_while_run_streams_and_repair_fixes_them() {
    let store = shared_pg().create_database();
    store.execute_as_duplex(PG_TABLES).unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql(MY_TABLES).unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(PG_TARGET_TABLES).unwrap();
    let (s, e, w) = (store.name(), erp.name(), wms.name());
    let mut config = format!(
        "[sites.{s}]\nkind = \"postgres\"\nurl = \"{}\"\n\n[sites.{e}]\nkind = \"mysql\"\nurl = \"{}\"\n\n\
         [sites.{w}]\nkind = \"postgres\"\nurl = \"{}\"\n\n",
        store.url(),
        erp.url(),
        wms.url()
    );
    for table in ["items", "pairs", "codes"] {
        for (target, schema) in [(e, e), (w, "public")] {
            config.push_str(&format!(
                "[[mappings]]\nname = \"{table}_{target}\"\ntables = {{ {s} = \"public.{table}\", {target} = \"{schema}.{table}\" }}\ndirection = \"{s}->{target}\"\n"
            ));
            if table == "items" {
                config.push_str(&format!(
                    "rename = {{ {target} = {{ qty = \"quantity\" }} }}\n"
                ));
            }
            config.push('\n');
        }
    }
    let mut duplex = Duplex::run(&config);
    wait_for("the link to start", WAIT, || {
        duplex.assert_running();
        if duplex.log_text().contains("link started") {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    store.psql(SEED).unwrap();
    wait_for("the seed rows to arrive", WAIT, || {
        duplex.assert_running();
        let a = erp
            .sql("SELECT COUNT(*) FROM items")
            .map_err(|e| e.to_string())?;
        let b = wms
            .psql("SELECT count(*) FROM codes")
            .map_err(|e| e.to_string())?;
        if a.trim() == "2500" && b.trim() == "300" {
            Ok(())
        } else {
            Err(format!("{a} {b}"))
        }
    });
    // Behind duplex's back, on both targets: a missing row, an extra row, a changed column of
    // each type, NULL made '', a changed key; a composite-key and a text-key difference.
    erp.sql(
        "DELETE FROM items WHERE id = 1;
         INSERT INTO items (id, quantity) VALUES (99999, 1);
         UPDATE items SET quantity = 0 WHERE id = 2;
         UPDATE items SET price = 1.26 WHERE id = 3;
         UPDATE items SET note = '' WHERE id = 4;
         UPDATE items SET seen = '2020-01-01 00:00:00' WHERE id = 5;
         UPDATE items SET flag = 1 WHERE id = 7;
         UPDATE items SET day = '2020-02-02' WHERE id = 8;
         UPDATE items SET doc = '{\"n\": 9}' WHERE id = 9;
         UPDATE items SET id = 88888 WHERE id = 10;
         UPDATE items SET u = '00000000-0000-0000-0000-000000000011' WHERE id = 11;
         UPDATE items SET b = X'00' WHERE id = 12;
         UPDATE items SET f = 0.25 WHERE id = 13;
         UPDATE items SET t = '01:02:03' WHERE id = 14;
         UPDATE pairs SET v = 'changed' WHERE a = 1 AND b = 'b1';
         DELETE FROM codes WHERE code = 'k7';",
    )
    .unwrap();
    wms.psql(
        "DELETE FROM items WHERE id = 1;
         INSERT INTO items VALUES (99999, 1);
         UPDATE items SET quantity = 0 WHERE id = 2;
         UPDATE items SET price = 1.26 WHERE id = 3;
         UPDATE items SET note = '' WHERE id = 4;
         UPDATE items SET seen = '2020-01-01 00:00:00+00' WHERE id = 5;
         UPDATE items SET flag = true WHERE id = 7;
         UPDATE items SET day = '2020-02-02' WHERE id = 8;
         UPDATE items SET doc = '{\"n\": 9}' WHERE id = 9;
         UPDATE items SET id = 88888 WHERE id = 10;
         UPDATE items SET u = '00000000-0000-0000-0000-000000000011' WHERE id = 11;
         UPDATE items SET b = '\\x00' WHERE id = 12;
         UPDATE items SET f = 0.25 WHERE id = 13;
         UPDATE items SET t = '01:02:03' WHERE id = 14;
         UPDATE pairs SET v = 'changed' WHERE a = 1 AND b = 'b1';
         INSERT INTO codes VALUES ('zz-extra', 1);",
    )
    .unwrap();
    let stop = AtomicBool::new(false);
    let written = AtomicU64::new(0);
    std::thread::scope(|scope| {
        // A steady write load on other rows (new rows, updates, deletes) the whole time.
        scope.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                store
                    .psql(&format!(
                        "INSERT INTO items (id, qty, price) VALUES ({}, 1, 2.50);
                         UPDATE items SET qty = qty + 1, note = 'busy {n}' WHERE id = {};
                         UPDATE codes SET v = v + 1 WHERE code = 'k{}';
                         UPDATE pairs SET v = 'n{n}' WHERE a = 2 AND b = 'b{}';",
                        100_000 + n,
                        1000 + n % 1000,
                        100 + n % 100,
                        2 + 10 * (n % 20)
                    ))
                    .unwrap();
                written.fetch_add(1, Ordering::Relaxed);
            }
        });
        wait_for("the load to run", WAIT, || {
            (written.load(Ordering::Relaxed) > 20)
                .then_some(())
                .ok_or_else(|| "slow".to_owned())
        });
        let items = set(&[
            "id=2: qty",
            "id=3: price",
            "id=4: note",
            "id=5: seen",
            "id=7: flag",
            "id=8: day",
            "id=9: doc",
            "id=11: u",
            "id=12: b",
            "id=13: f",
            "id=14: t",
        ]);
        for round in 0..3 {
            let (code, found) = reports(&duplex, &[]);
            assert_eq!(code, 1, "round {round}: {found:?}");
            assert_eq!(found.len(), 6, "{found:?}");
            for report in &found {
                let name = report["mapping"].as_str().unwrap();
                let (missing, extra, diff) = (
                    keys(report, "missing"),
                    keys(report, "extra"),
                    differing(report),
                );
                let want: (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) =
                    if name.starts_with("items") {
                        (
                            set(&["id=1", "id=10"]),
                            set(&["id=88888", "id=99999"]),
                            items.clone(),
                        )
                    } else if name.starts_with("pairs") {
                        (set(&[]), set(&[]), set(&["a=1, b=\"b1\": v"]))
                    } else if name == format!("codes_{e}") {
                        (set(&["code=\"k7\""]), set(&[]), set(&[]))
                    } else {
                        (set(&[]), set(&["code=\"zz-extra\""]), set(&[]))
                    };
                assert_eq!(
                    (missing, extra, diff),
                    want,
                    "round {round}, mapping {name}: {report}"
                );
                assert!(report["rows"].as_u64().unwrap() > 0, "{report}");
            }
        }
        let out = duplex.command(&["verify", "--repair"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("repaired"), "{text}");
        let (code, found) = reports(&duplex, &[]);
        assert_eq!(code, 0, "{found:?}");
        assert!(found.iter().all(|r| r["equal"] == true), "{found:?}");
        stop.store(true, Ordering::Relaxed);
    });
    // A configuration error is exit code 2.
    let out = duplex.command(&["verify", "--mapping", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}

/// From a MariaDB source into PostgreSQL, under a steady MariaDB write load: the re-checks
/// wait on the binlog position the target recorded; planted differences are reported
/// exactly, every time, and `--repair` fixes them.
#[test]
fn verify_from_mariadb_reports_exactly_the_planted_differences_and_repairs_them() {
    let erp = shared_mariadb().create_database();
    erp.sql(
        "CREATE TABLE items (id INT UNSIGNED PRIMARY KEY, qty INT NOT NULL, price DECIMAL(10,2),
             note VARCHAR(40), seen DATETIME(6), flag TINYINT, day DATE) ENGINE=InnoDB;
         CREATE TABLE codes (code VARCHAR(20) COLLATE utf8mb4_nopad_bin PRIMARY KEY, v INT) ENGINE=InnoDB;",
    )
    .unwrap();
    let store = shared_pg().create_database();
    store
        .execute_as_duplex(
            "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, price numeric(10,2),
                 note text, seen timestamp, flag int2, day date);
             CREATE TABLE codes (code text PRIMARY KEY, v int);",
        )
        .unwrap();
    let (e, s) = (erp.name(), store.name());
    let mut config = format!(
        "[sites.{e}]\nkind = \"mysql\"\nurl = \"{}\"\n\n[sites.{s}]\nkind = \"postgres\"\nurl = \"{}\"\n\n",
        erp.url(),
        store.url()
    );
    for table in ["items", "codes"] {
        config.push_str(&format!(
            "[[mappings]]\nname = \"{table}\"\ntables = {{ {e} = \"{e}.{table}\", {s} = \"public.{table}\" }}\ndirection = \"{e}->{s}\"\n\n"
        ));
    }
    let mut duplex = Duplex::run(&config);
    wait_for("the link to start", WAIT, || {
        duplex.assert_running();
        if duplex.log_text().contains("link started") {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    erp.sql(
        "INSERT INTO items SELECT seq, seq, seq * 1.25, IF(seq % 7 = 4, NULL, CONCAT('note ', seq)),
             TIMESTAMP '2026-01-02 03:04:05.123456' + INTERVAL seq MINUTE, seq % 3, DATE '2026-01-01' + INTERVAL seq DAY
             FROM seq_1_to_1500;
         INSERT INTO codes SELECT CONCAT('k', seq), seq FROM seq_1_to_200;",
    )
    .unwrap();
    wait_for("the seed rows to arrive", WAIT, || {
        duplex.assert_running();
        let a = store
            .psql("SELECT count(*) FROM items")
            .map_err(|e| e.to_string())?;
        let b = store
            .psql("SELECT count(*) FROM codes")
            .map_err(|e| e.to_string())?;
        if a.trim() == "1500" && b.trim() == "200" {
            Ok(())
        } else {
            Err(format!("{a} {b}"))
        }
    });
    store
        .psql(
            "DELETE FROM items WHERE id = 1;
             INSERT INTO items (id, qty) VALUES (77777, 1);
             UPDATE items SET qty = 0 WHERE id = 2;
             UPDATE items SET price = 9.99 WHERE id = 3;
             UPDATE items SET note = '' WHERE id = 4;
             UPDATE items SET seen = '2020-01-01 00:00:00' WHERE id = 5;
             UPDATE items SET flag = 2 WHERE id = 6;
             UPDATE items SET day = '2020-02-02' WHERE id = 8;
             UPDATE items SET id = 66666 WHERE id = 9;
             UPDATE codes SET v = -1 WHERE code = 'k5';",
        )
        .unwrap();
    let stop = AtomicBool::new(false);
    let written = AtomicU64::new(0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                erp.sql(&format!(
                    "INSERT INTO items (id, qty, price) VALUES ({}, 1, 2.50);
                     UPDATE items SET qty = qty + 1, note = 'busy {n}' WHERE id = {};
                     UPDATE codes SET v = v + 1 WHERE code = 'k{}';",
                    100_000 + n,
                    500 + n % 1000,
                    100 + n % 100
                ))
                .unwrap();
                written.fetch_add(1, Ordering::Relaxed);
            }
        });
        wait_for("the load to run", WAIT, || {
            (written.load(Ordering::Relaxed) > 20)
                .then_some(())
                .ok_or_else(|| "slow".to_owned())
        });
        for round in 0..3 {
            let (code, found) = reports(&duplex, &[]);
            assert_eq!(code, 1, "round {round}: {found:?}");
            assert_eq!(found.len(), 2, "{found:?}");
            for report in &found {
                let got = (
                    keys(report, "missing"),
                    keys(report, "extra"),
                    differing(report),
                );
                let want = if report["mapping"] == "items" {
                    (
                        set(&["id=1", "id=9"]),
                        set(&["id=66666", "id=77777"]),
                        set(&[
                            "id=2: qty",
                            "id=3: price",
                            "id=4: note",
                            "id=5: seen",
                            "id=6: flag",
                            "id=8: day",
                        ]),
                    )
                } else {
                    (set(&[]), set(&[]), set(&["code=\"k5\": v"]))
                };
                assert_eq!(got, want, "round {round}: {report}");
                assert_eq!(report["confirmed"], true, "{report}");
            }
        }
        let out = duplex.command(&["verify", "--repair"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let (code, found) = reports(&duplex, &[]);
        assert_eq!(code, 0, "{found:?}");
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    // With run stopped, a change the target never got is reported, as not confirmed, after
    // one wait.
    erp.sql("INSERT INTO codes VALUES ('new', 1)").unwrap();
    let (code, found) = reports(&duplex, &["--mapping", "codes", "--wait", "1"]);
    assert_eq!(code, 1, "{found:?}");
    assert_eq!(
        keys(&found[0], "missing"),
        set(&["code=\"new\""]),
        "{found:?}"
    );
    assert_eq!(found[0]["confirmed"], false, "{found:?}");
    // `status` shows the last verify's time and result.
    let out = duplex.command(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = &status["last_verify"];
    let differences = ["missing", "extra", "differing"]
        .iter()
        .map(|f| found[0][f].as_array().unwrap().len())
        .sum::<usize>();
    assert_eq!(last["equal"], false, "{status}");
    assert_eq!(last["mappings"], 1, "{status}");
    assert_eq!(last["differences"], differences, "{status}");
}
