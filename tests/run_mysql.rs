//! `duplex run` from MariaDB into PostgreSQL, and both directions at once, end to end through
//! the real binary and real servers.

mod harness;

use std::time::Duration;

use duplex_testkit::{MariaDatabase, PgDatabase, shared_mariadb, shared_pg};
use harness::{Duplex, drop_slot, rows, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// Sites are named after their databases, so parallel tests never share bookkeeping.
fn site(name: &str, kind: &str, url: &str) -> String {
    format!("[sites.{name}]\nkind = \"{kind}\"\nurl = \"{url}\"\n\n")
}

fn mapping(name: &str, from: (&str, &str), to: (&str, &str)) -> String {
    format!(
        "[[mappings]]\nname = \"{name}\"\ntables = {{ {} = \"{}\", {} = \"{}\" }}\ndirection = \"{}->{}\"\n\n",
        from.0, from.1, to.0, to.1, from.0, to.0
    )
}

/// Waits until every link logged that it started streaming (after which every commit is
/// replicated: a MariaDB source without recorded positions starts at the current binlog
/// position).
fn wait_started(duplex: &mut Duplex, links: usize) {
    wait_for("the links to start", WAIT, || {
        duplex.assert_running();
        let started = duplex.log_text().matches("link started").count();
        if started >= links {
            Ok(())
        } else {
            Err(format!("{started} started"))
        }
    });
}

const MY_TYPES: &str = "CREATE TABLE t (id INT PRIMARY KEY, ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT,
    mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
    dec65 DECIMAL(65,30), f FLOAT, d DOUBLE, dt DATE, dtm DATETIME(6), ts TIMESTAMP(6) NULL, tm TIME(6),
    y YEAR, c CHAR(10), vc VARCHAR(50), tx TEXT, l1 VARCHAR(20) CHARACTER SET latin1, bn BINARY(4),
    vb VARBINARY(10), bl BLOB, e ENUM('a', 'b ☺'), st SET('x', 'y', 'z'), j JSON, u UUID) ENGINE=InnoDB";

const PG_TYPES: &str = "CREATE TABLE t (id int PRIMARY KEY, ti int2, tiu int2, si int2, mi int4, miu int4, i int4,
    iu int8, bi int8, biu numeric(20,0), dec65 numeric(65,30), f float4, d float8, dt date, dtm timestamp,
    ts timestamptz, tm interval, y int2, c text, vc varchar(50), tx text, l1 text, bn bytea, vb bytea, bl bytea,
    e text, st text, j json, u uuid)";

const CHANGES: &str = "
    INSERT INTO t VALUES (1, -128, 0, -32768, -8388608, 0, -2147483648, 0, -9223372036854775808, 0,
      -99999999999999999999999999999999999.999999999999999999999999999999, -1.5, -1.7976931348623157e308,
      '1000-01-01', '1000-01-01 00:00:00.000000', '1970-01-01 00:00:01.000000', '-838:59:59.000000', 1901,
      'a', '', 'emoji 👩‍💻', 'café', X'00000000', X'00', X'', 'a', '', '{\"b\":1,\"a\":[1,2]}',
      '00000000-0000-0000-0000-000000000000');
    INSERT INTO t VALUES (2, 127, 255, 32767, 8388607, 16777215, 2147483647, 4294967295, 9223372036854775807,
      18446744073709551615, 99999999999999999999999999999999999.999999999999999999999999999999, 3.25,
      2.2250738585072014e-308, '9999-12-31', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999',
      '838:59:59.000000', 2155, 'abcdefghij', 'fifty', REPEAT('x', 60000), 'ÿ€', X'61620000', X'00ff00', X'0001',
      'b ☺', 'x,z', '[]', 'ffffffff-ffff-ffff-ffff-ffffffffffff');
    INSERT INTO t (id) VALUES (3);
    START TRANSACTION;
    INSERT INTO t (id, i, tm, tx) VALUES (4, 4, '-00:00:00.500000', 'four');
    UPDATE t SET i = 40, tx = 'forty', tm = '25:00:00.000001', y = 0 WHERE id = 4;
    COMMIT;
    UPDATE t SET id = 20 WHERE id = 2;
    INSERT INTO t (id) VALUES (5);
    DELETE FROM t WHERE id = 5;";

const MY_ROWS: &str = "SET time_zone = '+00:00';
    SELECT id, coalesce(ti, '∅'), coalesce(tiu, '∅'), coalesce(si, '∅'), coalesce(mi, '∅'), coalesce(miu, '∅'),
      coalesce(i, '∅'), coalesce(iu, '∅'), coalesce(bi, '∅'), coalesce(biu, '∅'), coalesce(dec65, '∅'),
      coalesce(f, '∅'), coalesce(d, '∅'), coalesce(date_format(dt, '%Y-%m-%d'), '∅'),
      coalesce(date_format(dtm, '%Y-%m-%d %H:%i:%s.%f'), '∅'), coalesce(date_format(ts, '%Y-%m-%d %H:%i:%s.%f'), '∅'),
      coalesce(time_to_sec(tm), '∅'), coalesce(y + 0, '∅'), coalesce(c, '∅'), coalesce(vc, '∅'),
      coalesce(concat(md5(tx), ':', char_length(tx)), '∅'), coalesce(convert(l1 USING utf8mb4), '∅'),
      coalesce(lower(hex(bn)), '∅'), coalesce(lower(hex(vb)), '∅'), coalesce(lower(hex(bl)), '∅'),
      coalesce(e, '∅'), coalesce(st, '∅'), coalesce(j, '∅'), coalesce(cast(u AS char), '∅')
    FROM t ORDER BY id";

const PG_ROWS: &str = "SELECT id, coalesce(ti::text, '∅'), coalesce(tiu::text, '∅'), coalesce(si::text, '∅'),
      coalesce(mi::text, '∅'), coalesce(miu::text, '∅'), coalesce(i::text, '∅'), coalesce(iu::text, '∅'),
      coalesce(bi::text, '∅'), coalesce(biu::text, '∅'), coalesce(dec65::text, '∅'), coalesce(f::text, '∅'),
      coalesce(d::text, '∅'), coalesce(to_char(dt, 'YYYY-MM-DD'), '∅'),
      coalesce(to_char(dtm, 'YYYY-MM-DD HH24:MI:SS.US'), '∅'),
      coalesce(to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), '∅'),
      coalesce(extract(epoch FROM tm)::text, '∅'), coalesce(y::text, '∅'), coalesce(c, '∅'), coalesce(vc, '∅'),
      coalesce(md5(tx) || ':' || length(tx), '∅'), coalesce(l1, '∅'), coalesce(encode(bn, 'hex'), '∅'),
      coalesce(encode(vb, 'hex'), '∅'), coalesce(encode(bl, 'hex'), '∅'), coalesce(e, '∅'), coalesce(st, '∅'),
      coalesce(j::text, '∅'), coalesce(u::text, '∅')
    FROM t ORDER BY id";

/// Numbers print differently on the two servers: compare float and seconds columns as
/// numbers, and show empty strings visibly.
fn normalise(mut rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    for row in &mut rows {
        for index in [11, 12, 16] {
            if let Ok(value) = row[index].parse::<f64>() {
                row[index] = format!("{value:e}");
            }
        }
        for field in row.iter_mut() {
            if field.is_empty() {
                *field = "<empty>".into();
            }
        }
    }
    rows
}

#[test]
fn every_supported_mariadb_type_arrives_equal_on_postgres() {
    let erp = shared_mariadb().create_database();
    erp.sql(MY_TYPES).unwrap();
    let store = shared_pg().create_database();
    store.execute_as_duplex(PG_TYPES).unwrap();
    let config = site(erp.name(), "mysql", &erp.url())
        + &site(store.name(), "postgres", &store.url())
        + &mapping(
            "types",
            (erp.name(), &format!("{}.t", erp.name())),
            (store.name(), "public.t"),
        );
    let mut duplex = Duplex::run(&config);
    wait_started(&mut duplex, 1);
    erp.sql(CHANGES).unwrap();
    let expected = normalise(rows(&erp.sql(MY_ROWS).unwrap(), '\t'));
    assert_eq!(expected.len(), 4);
    wait_for("PostgreSQL to equal MariaDB, value by value", WAIT, || {
        duplex.assert_running();
        let got = normalise(rows(&store.psql(PG_ROWS).map_err(|e| e.to_string())?, '|'));
        if got == expected {
            Ok(())
        } else {
            Err(format!("\n got: {got:?}\nwant: {expected:?}"))
        }
    });
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}

#[test]
fn a_zero_date_stops_the_link_with_a_clear_message() {
    let erp = shared_mariadb().create_database();
    erp.sql("CREATE TABLE z (id INT PRIMARY KEY, d DATE) ENGINE=InnoDB")
        .unwrap();
    let store = shared_pg().create_database();
    store
        .execute_as_duplex("CREATE TABLE z (id int PRIMARY KEY, d date)")
        .unwrap();
    let config = site(erp.name(), "mysql", &erp.url())
        + &site(store.name(), "postgres", &store.url())
        + &mapping(
            "z",
            (erp.name(), &format!("{}.z", erp.name())),
            (store.name(), "public.z"),
        );
    let mut duplex = Duplex::run(&config);
    wait_started(&mut duplex, 1);
    erp.sql("SET sql_mode = ''; INSERT INTO z VALUES (1, '2026-01-02'); INSERT INTO z VALUES (2, '0000-00-00');")
        .unwrap();
    let code = wait_for("duplex to stop the link", WAIT, || {
        duplex.exit_code().ok_or("still running".to_owned())
    });
    let log = duplex.log_text();
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("link stopped") && log.contains("zero date"),
        "{log}"
    );
    assert_eq!(
        store.psql("SELECT id, d FROM z").unwrap().trim(),
        "1|2026-01-02"
    );
}

/// 50,000 single-row transactions on MariaDB while duplex is killed with SIGKILL three times:
/// PostgreSQL ends equal to MariaDB, row for row.
#[test]
fn exactly_once_from_mariadb_across_sigkill_restarts() {
    let erp = shared_mariadb().create_database();
    erp.sql(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, payload VARCHAR(64) NOT NULL, n INT NOT NULL) ENGINE=InnoDB;
         DELIMITER //
         CREATE PROCEDURE workload(total INT)
         BEGIN
           DECLARE i INT DEFAULT 1;
           WHILE i <= total DO
             INSERT INTO events VALUES (i, md5(i), 0);
             IF i % 10 = 0 THEN UPDATE events SET n = n + 1, payload = concat('u', i) WHERE id = i - 5; END IF;
             IF i % 25 = 0 THEN DELETE FROM events WHERE id = i - 20; END IF;
             SET i = i + 1;
           END WHILE;
         END //
         DELIMITER ;",
    )
    .unwrap();
    let store = shared_pg().create_database();
    store
        .execute_as_duplex(
            "CREATE TABLE events (id bigint PRIMARY KEY, payload text NOT NULL, n int NOT NULL)",
        )
        .unwrap();
    let config = site(erp.name(), "mysql", &erp.url())
        + &site(store.name(), "postgres", &store.url())
        + &mapping(
            "events",
            (erp.name(), &format!("{}.events", erp.name())),
            (store.name(), "public.events"),
        );
    let mut duplex = Duplex::run(&config);
    wait_started(&mut duplex, 1);
    let workload = std::thread::spawn({
        let port = erp.port();
        let database = erp.name().to_owned();
        move || {
            let status = std::process::Command::new("mariadb")
                .args([
                    "--protocol=tcp",
                    "-h",
                    "127.0.0.1",
                    "-P",
                    &port.to_string(),
                    "-u",
                    "duplex",
                    "-pduplex",
                ])
                .args([&database, "-e", "CALL workload(50000)"])
                .status()
                .unwrap();
            assert!(status.success(), "workload failed");
        }
    });
    let count = || -> Result<u64, String> {
        store
            .psql("SELECT count(*) FROM events")
            .map_err(|e| e.to_string())?
            .trim()
            .parse()
            .map_err(|e| format!("{e}"))
    };
    for threshold in [2_000, 12_000, 25_000] {
        wait_for(
            &format!("{threshold} rows on the target"),
            Duration::from_secs(300),
            || {
                duplex.assert_running();
                let n = count()?;
                if n >= threshold {
                    Ok(())
                } else {
                    Err(format!("{n} rows"))
                }
            },
        );
        duplex.kill();
        duplex.start();
    }
    workload.join().unwrap();
    let expected = rows(
        &erp.sql("SELECT id, payload, n FROM events ORDER BY id")
            .unwrap(),
        '\t',
    );
    assert_eq!(expected.len(), 48_000, "the workload leaves 48,000 rows");
    wait_for(
        "the target to equal the source",
        Duration::from_secs(300),
        || {
            duplex.assert_running();
            let got = rows(
                &store
                    .psql("SELECT id, payload, n FROM events ORDER BY id")
                    .map_err(|e| e.to_string())?,
                '|',
            );
            if got == expected {
                Ok(())
            } else {
                Err(format!("{} rows, source {}", got.len(), expected.len()))
            }
        },
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}

/// One configuration with a store->erp mapping and an erp->store mapping: both directions
/// run at once.
#[test]
fn both_one_way_directions_run_at_once() {
    let store: PgDatabase = shared_pg().create_database();
    store
        .execute_as_duplex(
            "CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL);
             CREATE TABLE stock (sku text PRIMARY KEY, on_hand int NOT NULL);",
        )
        .unwrap();
    let erp: MariaDatabase = shared_mariadb().create_database();
    erp.sql(
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, status LONGTEXT NOT NULL) ENGINE=InnoDB;
         CREATE TABLE stock (sku VARCHAR(32) PRIMARY KEY, on_hand INT NOT NULL) ENGINE=InnoDB;",
    )
    .unwrap();
    let config = site(store.name(), "postgres", &store.url())
        + &site(erp.name(), "mysql", &erp.url())
        + &mapping(
            "orders",
            (store.name(), "public.orders"),
            (erp.name(), &format!("{}.orders", erp.name())),
        )
        + &mapping(
            "stock",
            (erp.name(), &format!("{}.stock", erp.name())),
            (store.name(), "public.stock"),
        );
    let mut duplex = Duplex::run(&config);
    wait_started(&mut duplex, 2);
    store.execute_as_duplex("INSERT INTO orders VALUES (1, 'paid'), (2, 'new'); UPDATE orders SET status = 'shipped' WHERE id = 1;").unwrap();
    erp.sql("INSERT INTO stock VALUES ('MUG', 10), ('TEE', 3); UPDATE stock SET on_hand = on_hand - 1 WHERE sku = 'MUG';").unwrap();
    wait_for("orders on MariaDB", WAIT, || {
        duplex.assert_running();
        let got = erp
            .sql("SELECT id, status FROM orders ORDER BY id")
            .map_err(|e| e.to_string())?;
        if got.trim() == "1\tshipped\n2\tnew" {
            Ok(())
        } else {
            Err(got)
        }
    });
    wait_for("stock on PostgreSQL", WAIT, || {
        duplex.assert_running();
        let got = store
            .psql("SELECT sku, on_hand FROM stock ORDER BY sku")
            .map_err(|e| e.to_string())?;
        if got.trim() == "MUG|9\nTEE|3" {
            Ok(())
        } else {
            Err(got)
        }
    });
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    drop_slot(&store);
}
