//! Every type of the SQL Server type tables both ways, end to end through the real binary:
//! PostgreSQL -> SQL Server -> PostgreSQL in one `duplex run` (two one-way mappings, the SQL
//! Server table in the middle captured by CDC), then the two PostgreSQL tables compared value by
//! value. A value changed on the way in either direction makes them differ.
//!
//! It also checks what CDC does with large values: an update that leaves a TOASTed PostgreSQL
//! text unchanged reaches SQL Server without that column, and SQL Server's change table must
//! then still carry the `nvarchar(max)` value in the update's after-image for the third database
//! to keep it (its before-image holds NULL for a large column the update did not change). The
//! large text is stored out of line uncompressed (`STORAGE EXTERNAL`), so that PostgreSQL's log
//! leaves it out of the update, and stays under SQL Server's default `max text repl size`
//! (65,536 bytes per captured value), above which SQL Server refuses the write itself.
//!
//! No SQL Server runs on our machines, so the test runs only when `DUPLEX_TEST_MSSQL_URL` names
//! one (see `tests/run_mssql.rs`); otherwise it prints that it is skipped and why, and passes.

mod harness;

use std::time::Duration;

use duplex_testkit::shared_pg;
use harness::mssql::{Mssql, site, wait_captured};
use harness::{Duplex, drop_slot, rows, wait_for};

const WAIT: Duration = Duration::from_secs(120);

/// The PostgreSQL side: one column per PostgreSQL type of the "PostgreSQL -> SQL Server" table.
const PG_TYPES: &str = "CREATE TABLE types (id int PRIMARY KEY, b bool, i2 int2, i4 int4, \
     i8 int8, f4 float4, f8 float8, n numeric(38,10), t text, vc varchar(20), c bpchar(5), \
     bs bytea, u uuid, d date, tm time, ts timestamp, tz timestamptz, j json, jb jsonb); \
     ALTER TABLE types ALTER COLUMN t SET STORAGE EXTERNAL";

/// The third database: SQL Server's `nvarchar` reads into `text`, so the JSON columns are text.
const PG_BACK: &str = "CREATE TABLE types (id int PRIMARY KEY, b bool, i2 int2, i4 int4, \
     i8 int8, f4 float4, f8 float8, n numeric(38,10), t text, vc varchar(20), c bpchar(5), \
     bs bytea, u uuid, d date, tm time, ts timestamp, tz timestamptz, j text, jb text)";

/// The SQL Server table, each column of the first recommended target type.
const MSSQL_TYPES: &str = "CREATE TABLE dbo.types (id int PRIMARY KEY, b bit NULL, \
     i2 smallint NULL, i4 int NULL, i8 bigint NULL, f4 real NULL, f8 float NULL, \
     n decimal(38,10) NULL, t nvarchar(max) NULL, vc nvarchar(20) NULL, c nchar(5) NULL, \
     bs varbinary(max) NULL, u uniqueidentifier NULL, d date NULL, tm time(6) NULL, \
     ts datetime2(6) NULL, tz datetimeoffset(6) NULL, j nvarchar(max) NULL, jb nvarchar(max) NULL)";

/// Every column as text, the same query on both PostgreSQL databases.
const PG_ROWS: &str = "SELECT id, coalesce(b::text, '∅'), coalesce(i2::text, '∅'), \
     coalesce(i4::text, '∅'), coalesce(i8::text, '∅'), coalesce(f4::text, '∅'), \
     coalesce(f8::text, '∅'), coalesce(n::text, '∅'), coalesce(md5(t) || ':' || length(t), '∅'), \
     coalesce(vc, '∅'), coalesce(c::text, '∅'), coalesce(encode(bs, 'hex'), '∅'), \
     coalesce(u::text, '∅'), coalesce(d::text, '∅'), coalesce(tm::text, '∅'), \
     coalesce(ts::text, '∅'), coalesce(tz::text, '∅'), coalesce(j::text, '∅'), \
     coalesce(jb::text, '∅') FROM types ORDER BY id";

/// The changes made on the first PostgreSQL database, each its own transaction (one of them
/// several statements).
const CHANGES: &[&str] = &[
    // Extremes, and a text far larger than a page (TOASTed).
    "INSERT INTO types VALUES (1, true, -32768, 2147483647, -9223372036854775808, 0.1, \
     1.7976931348623157e308, -1234567890123456789012345678.0123456789, \
     repeat('grüße 🙂 ', 3000), 'varchar', 'ab', '\\x0001ff00'::bytea, \
     '123e4567-e89b-12d3-a456-426614174000', '0001-01-01', '23:59:59.999999', \
     '9999-12-31 23:59:59.999999', '2024-06-30 23:59:59.123456+02', \
     '{\"b\": 1, \"a\": [1, \"🦀\"]}', '{\"b\": 1, \"a\": [1, \"🦀\"]}')",
    "INSERT INTO types (id) VALUES (2)",
    // The other extremes and the empty values.
    "INSERT INTO types VALUES (3, false, 32767, -2147483648, 9223372036854775807, -3.5, \
     -0.0000001, 0.0000000001, '', '', ' ', ''::bytea, \
     '00000000-0000-0000-0000-000000000000', '2024-02-29', '00:00:00', \
     '1970-01-01 00:00:00', '1970-01-01 00:00:00+00', '[]', '{}')",
    // Leaves the large text unchanged: it must survive both hops.
    "UPDATE types SET i4 = i4 - 1, vc = 'changed' WHERE id = 1",
    "BEGIN; UPDATE types SET t = 'short now', bs = NULL WHERE id = 3; \
     UPDATE types SET b = false, tz = '2000-01-01 12:00:00.5-08' WHERE id = 2; \
     INSERT INTO types (id, t) VALUES (4, repeat('x', 30000)); COMMIT",
    "DELETE FROM types WHERE id = 3",
];

fn mapping(name: &str, from: (&str, &str), to: (&str, &str)) -> String {
    format!(
        "[[mappings]]\nname = \"{name}\"\ntables = {{ {} = \"{}\", {} = \"{}\" }}\n\
         direction = \"{}->{}\"\n\n",
        from.0, from.1, to.0, to.1, from.0, to.0
    )
}

#[test]
fn every_type_goes_to_sql_server_and_back_unchanged() {
    let Some(erp) = Mssql::create("every_type_goes_to_sql_server_and_back_unchanged") else {
        return;
    };
    erp.sql("EXEC sys.sp_cdc_enable_db");
    erp.sql(MSSQL_TYPES);
    erp.sql(
        "EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N'types', \
         @role_name = NULL",
    );
    erp.sql("INSERT INTO dbo.types (id) VALUES (-1); DELETE FROM dbo.types WHERE id = -1");
    wait_captured(&erp);
    let store = shared_pg().create_database();
    store.execute_as_duplex(PG_TYPES).unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(PG_BACK).unwrap();
    let config = site(store.name(), "postgres", &store.url())
        + &site(&erp.name, "mssql", &erp.url)
        + &site(wms.name(), "postgres", &wms.url())
        + &mapping(
            "types_in",
            (store.name(), "public.types"),
            (&erp.name, "dbo.types"),
        )
        + &mapping(
            "types_back",
            (&erp.name, "dbo.types"),
            (wms.name(), "public.types"),
        );
    let mut duplex = Duplex::run(&config);
    wait_for("both links to start", WAIT, || {
        duplex.assert_running();
        match duplex.log_text().matches("link started").count() {
            2.. => Ok(()),
            n => Err(format!("{n} started")),
        }
    });
    for sql in CHANGES {
        store.psql(sql).unwrap();
    }
    let want = rows(&store.psql(PG_ROWS).unwrap(), '|');
    let ids: Vec<&str> = want.iter().map(|row| row[0].as_str()).collect();
    assert_eq!(ids, ["1", "2", "4"], "the source itself: {want:?}");
    wait_for("the third database to equal the first", WAIT, || {
        duplex.assert_running();
        let got = rows(&wms.psql(PG_ROWS).map_err(|e| e.to_string())?, '|');
        if got == want {
            Ok(())
        } else {
            Err(format!("\n got: {got:?}\nwant: {want:?}"))
        }
    });
    // The large text kept its value through the update that did not change it.
    let kept = wms
        .psql("SELECT length(t) FROM types WHERE id = 1")
        .unwrap();
    assert_eq!(
        kept.trim(),
        (3000 * "grüße 🙂 ".chars().count()).to_string()
    );
    let in_sql_server = erp
        .rows("SELECT CONVERT(nvarchar(20), COUNT_BIG(*)) FROM dbo.types")
        .unwrap();
    assert_eq!(in_sql_server, [["3".to_owned()]]);
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    drop_slot(&store);
}
