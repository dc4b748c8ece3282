//! Every supported PostgreSQL type, with edge values, replicated by `duplex run` into MariaDB
//! and into a second PostgreSQL database, compared value by value; and a value the target
//! cannot hold stops the link with a clear message instead of being mangled.

mod harness;

use std::time::Duration;

use duplex_testkit::{PgDatabase, shared_mariadb, shared_pg};
use harness::{
    Duplex, commit_position, drop_slot, rows, wait_for, wait_replicated, wait_slot_active,
};

const WAIT: Duration = Duration::from_secs(60);

fn config(source: &PgDatabase, target: (&str, String), table: &str, target_table: &str) -> String {
    let (name, url) = target;
    let kind = if url.starts_with("mysql") {
        "mysql"
    } else {
        "postgres"
    };
    format!(
        "[sites.{src}]\nkind = \"postgres\"\nurl = \"{src_url}\"\n\n\
         [sites.{name}]\nkind = \"{kind}\"\nurl = \"{url}\"\n\n\
         [[mappings]]\nname = \"types\"\ntables = {{ {src} = \"{table}\", {name} = \"{target_table}\" }}\n\
         direction = \"{src}->{name}\"\n",
        src = source.name(),
        src_url = source.url(),
    )
}

const PG_TYPES: &str = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy ☺');
    CREATE TABLE t (id int PRIMARY KEY, i2 smallint, i4 int, i8 bigint, num numeric(65,30), r real,
      d double precision, b boolean, tx text, vc varchar(20), ch char(5), bin bytea, dt date, tm time,
      ts timestamp, tz timestamptz, u uuid, j json, jb jsonb, m mood)";

const MY_TYPES: &str = "CREATE TABLE t (id INT PRIMARY KEY, i2 SMALLINT, i4 INT, i8 BIGINT, num DECIMAL(65,30),
      r FLOAT, d DOUBLE, b TINYINT(1), tx LONGTEXT, vc VARCHAR(20), ch CHAR(5), bin LONGBLOB, dt DATE,
      tm TIME(6), ts DATETIME(6), tz DATETIME(6), u UUID, j LONGTEXT, jb LONGTEXT,
      m ENUM('sad', 'ok', 'happy ☺')) ENGINE=InnoDB";

/// Edge values: minimums, maximums, zero, negatives, fractional seconds, another time zone,
/// emoji, bytes with 0x00, a 1 MB text; then an update of every column, a key change and a
/// delete.
const CHANGES: &str = "
    INSERT INTO t VALUES (1, -32768, -2147483648, -9223372036854775808,
      '-99999999999999999999999999999999999.999999999999999999999999999999', -3.25, -1.7976931348623157e308,
      false, 'emoji 👩‍💻 and ünïcode', '', 'ab', '\\x00ff0000', '0001-01-01', '00:00:00', '0001-01-01 00:00:00',
      '1970-01-01 00:00:00.000001+00', '00000000-0000-0000-0000-000000000000', '{\"b\": 1, \"a\": [1, 2]}',
      '{\"b\": 1, \"a\": [1, 2]}', 'sad');
    INSERT INTO t VALUES (2, 32767, 2147483647, 9223372036854775807,
      '99999999999999999999999999999999999.999999999999999999999999999999', 3.5, 2.2250738585072014e-308,
      true, repeat('x', 1048576), 'twenty characters!!!', 'abcde', '\\x', '9999-12-31', '23:59:59.999999',
      '9999-12-31 23:59:59.999999', '2026-11-27 12:30:00.5-08:00', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
      '[]', '{}', 'happy ☺');
    INSERT INTO t (id) VALUES (3);
    INSERT INTO t VALUES (4, 0, 0, 0, '0.000000000000000000000000000001', 0, 0, true, 'tab\there',
      'quote''s', 'x', '\\x00', '2000-02-29', '12:00:00.5', '2000-02-29 12:00:00.5', '2000-02-29 12:00:00.5+05:30',
      'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'null', '\"text\"', 'ok');
    UPDATE t SET i2 = i2 + 1, i4 = 7, i8 = -1, num = 1.5, r = 0.125, d = 1e-10, b = NOT b, tx = tx || '!',
      vc = 'updated', ch = 'up', bin = '\\x0000', dt = '1999-12-31', tm = '01:02:03.000004',
      ts = '1999-12-31 23:59:59.999999', tz = '1999-12-31 23:59:59+14', u = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12',
      j = '{\"k\":\"v\"}', jb = '{\"k\": \"v\"}', m = 'happy ☺' WHERE id = 4;
    UPDATE t SET id = 40 WHERE id = 4;
    INSERT INTO t (id, tx) VALUES (5, 'to be deleted');
    DELETE FROM t WHERE id = 5;";

/// Every column as comparable text (`∅` for NULL), the same SQL on both PostgreSQL sides.
const PG_ROWS: &str = "SELECT id, coalesce(i2::text, '∅'), coalesce(i4::text, '∅'), coalesce(i8::text, '∅'),
      coalesce(num::text, '∅'), coalesce(r::float8::text, '∅'), coalesce(d::text, '∅'), coalesce(b::int::text, '∅'),
      coalesce(md5(tx) || ':' || length(tx), '∅'), coalesce(vc, '∅'), coalesce(rtrim(ch), '∅'),
      coalesce(encode(bin, 'hex'), '∅'), coalesce(to_char(dt, 'YYYY-MM-DD'), '∅'),
      coalesce(to_char(date '2000-01-01' + tm, 'HH24:MI:SS.US'), '∅'), coalesce(to_char(ts, 'YYYY-MM-DD HH24:MI:SS.US'), '∅'),
      coalesce(to_char(tz AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), '∅'), coalesce(u::text, '∅'),
      coalesce(j::text, '∅'), coalesce(jb::text, '∅'), coalesce(m::text, '∅')
    FROM t ORDER BY id";

const MY_ROWS: &str = "SELECT id, coalesce(i2, '∅'), coalesce(i4, '∅'), coalesce(i8, '∅'),
      coalesce(num, '∅'), coalesce(r, '∅'), coalesce(d, '∅'), coalesce(b, '∅'),
      coalesce(concat(md5(tx), ':', char_length(tx)), '∅'), coalesce(vc, '∅'), coalesce(ch, '∅'),
      coalesce(lower(hex(bin)), '∅'), coalesce(date_format(dt, '%Y-%m-%d'), '∅'),
      coalesce(time_format(tm, '%H:%i:%s.%f'), '∅'), coalesce(date_format(ts, '%Y-%m-%d %H:%i:%s.%f'), '∅'),
      coalesce(date_format(tz, '%Y-%m-%d %H:%i:%s.%f'), '∅'), coalesce(cast(u AS char), '∅'),
      coalesce(j, '∅'), coalesce(jb, '∅'), coalesce(m, '∅')
    FROM t ORDER BY id";

/// Float columns print differently on the two servers (`1e-10` / `1e-10`, `-1.7976931348623157e+308` /
/// `-1.7976931348623157e308`): compare them as numbers; everything else as text.
fn normalise(mut rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    for row in &mut rows {
        for index in [5, 6] {
            if let Ok(value) = row[index].parse::<f64>() {
                row[index] = format!("{value:e}");
            }
        }
        // The empty binary string prints as nothing on both, keep it distinguishable from NULL.
        if row[11].is_empty() {
            row[11] = "<empty>".into();
        }
    }
    rows
}

#[test]
fn every_supported_type_arrives_equal_on_mariadb() {
    let source = shared_pg().create_database();
    source.execute_as_duplex(PG_TYPES).unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql(MY_TYPES).unwrap();
    let mut duplex = Duplex::run(&config(
        &source,
        ("erp", erp.url()),
        "public.t",
        &format!("{}.t", erp.name()),
    ));
    wait_slot_active(&source, &mut duplex);
    source.execute_as_duplex(CHANGES).unwrap();
    let expected = normalise(rows(&source.psql(PG_ROWS).unwrap(), '|'));
    assert_eq!(expected.len(), 4);
    let commit = commit_position(&source);
    wait_replicated(
        &source,
        &mut duplex,
        commit,
        "MariaDB to equal the source, value by value",
        || {
            let got = normalise(rows(&erp.sql(MY_ROWS).map_err(|e| e.to_string())?, '\t'));
            if got == expected {
                Ok(())
            } else {
                Err(format!("\n got: {got:?}\nwant: {expected:?}"))
            }
        },
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    drop_slot(&source);
}

#[test]
fn every_supported_type_arrives_equal_on_postgres_including_nan_and_infinity() {
    let source = shared_pg().create_database();
    source.execute_as_duplex(PG_TYPES).unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(PG_TYPES).unwrap();
    let mut duplex = Duplex::run(&config(&source, ("wms", wms.url()), "public.t", "public.t"));
    wait_slot_active(&source, &mut duplex);
    source.execute_as_duplex(CHANGES).unwrap();
    source
        .execute_as_duplex("INSERT INTO t (id, num, r, d) VALUES (7, 'NaN', 'Infinity', 'NaN')")
        .unwrap();
    let expected = rows(&source.psql(PG_ROWS).unwrap(), '|');
    let commit = commit_position(&source);
    wait_replicated(
        &source,
        &mut duplex,
        commit,
        "the second PostgreSQL to equal the source, value by value",
        || {
            let got = rows(&wms.psql(PG_ROWS).map_err(|e| e.to_string())?, '|');
            if got == expected {
                return Ok(());
            }
            Err(format!("\n got: {got:?}\nwant: {expected:?}"))
        },
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    drop_slot(&source);
}
#[test]
fn a_value_the_target_cannot_hold_stops_the_link_with_a_clear_message() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex("CREATE TABLE m (id int PRIMARY KEY, d double precision)")
        .unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql("CREATE TABLE m (id INT PRIMARY KEY, d DOUBLE) ENGINE=InnoDB")
        .unwrap();
    let mut duplex = Duplex::run(&config(
        &source,
        ("erp", erp.url()),
        "public.m",
        &format!("{}.m", erp.name()),
    ));
    wait_slot_active(&source, &mut duplex);
    source.execute_as_duplex("INSERT INTO m VALUES (1, 1.5); INSERT INTO m VALUES (2, 'NaN'); INSERT INTO m VALUES (3, 2.5);").unwrap();
    let code = wait_for("duplex to stop the link", WAIT, || {
        match duplex.exit_code() {
            Some(code) => Ok(code),
            None => Err("still running".into()),
        }
    });
    let log = duplex.log_text();
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("link stopped"), "{log}");
    assert!(
        log.contains("NaN"),
        "the message does not name the value: {log}"
    );
    assert_eq!(
        erp.sql("SELECT id, d FROM m ORDER BY id").unwrap().trim(),
        "1\t1.5",
        "nothing after the refused row is applied"
    );
    drop_slot(&source);
}
