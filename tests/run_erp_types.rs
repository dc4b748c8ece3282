//! The types ERP schemas use, value by value through `duplex backfill` (the snapshot path) and
//! then `duplex run` (the stream): MariaDB `BIT(n)` (BIT(1) as a boolean), PostgreSQL bit
//! strings, one-dimensional arrays (into MariaDB JSON and back, and PostgreSQL to PostgreSQL
//! exactly) and `interval` (PostgreSQL to PostgreSQL). Every direction copies rows first and
//! streams the same values afterwards (ids + 10), so both paths are compared against the same
//! expected text. Refusals: `check` names money, arrays declared with two dimensions and
//! interval into MariaDB; a two-dimensional value arriving in an `int[]` column stops the link
//! naming table, column and key.

mod harness;

use std::time::Duration;

use duplex_testkit::{MariaDatabase, PgDatabase, shared_mariadb, shared_pg};
use harness::{Duplex, drop_slot, rows, wait_for};

const WAIT: Duration = Duration::from_secs(90);

fn kind(url: &str) -> &'static str {
    if url.starts_with("mysql") {
        "mysql"
    } else {
        "postgres"
    }
}

/// A one-way mapping of table `t` between two sites named after their databases.
fn config(source: (&str, String, String), target: (&str, String, String)) -> String {
    format!(
        "[sites.{s}]\nkind = \"{sk}\"\nurl = \"{su}\"\n\n\
         [sites.{t}]\nkind = \"{tk}\"\nurl = \"{tu}\"\n\n\
         [[mappings]]\nname = \"types\"\ntables = {{ {s} = \"{st}\", {t} = \"{tt}\" }}\n\
         direction = \"{s}->{t}\"\n",
        s = source.0,
        su = source.1,
        sk = kind(&source.1),
        st = source.2,
        t = target.0,
        tu = target.1,
        tk = kind(&target.1),
        tt = target.2,
    )
}

const PG_TABLE: &str = "CREATE TABLE t (id int PRIMARY KEY, flag boolean, b1 bit(1), b7 bit(7),
    b64 bit(64), vb varbit(10), ia int[], na numeric(12,2)[], ta text[], ba boolean[], da date[],
    tsa timestamptz[], ua uuid[])";

const MY_TABLE: &str = "CREATE TABLE t (id INT PRIMARY KEY, flag BIT(1), b1 BIT(1), b7 BIT(7),
    b64 BIT(64), vb BIT(10), ia JSON, na JSON, ta JSON, ba JSON, da JSON, tsa JSON, ua JSON)
    ENGINE=InnoDB";

/// PostgreSQL rows with ids `base + 1..=3`: zeros and empty arrays, ones and full arrays
/// (NULL elements, quotes, commas, backslashes, unicode, the text 'NULL'), all NULL.
fn pg_rows(base: i32) -> String {
    format!(
        "INSERT INTO t VALUES ({a}, false, B'0', B'0000000', B'{zeros}', B'0000000000', '{{}}',
           '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}');
         INSERT INTO t VALUES ({b}, true, B'1', B'1010101', B'{ones}', B'1111111111',
           '{{1,NULL,-2147483648,2147483647}}', '{{1.50,NULL,-0.01,0.00}}',
           ARRAY['a,b', 'say \"hi\"', 'back\\slash', 'NULL', NULL, '', '🙂 ünï', '{{x}}', ' sp '],
           '{{t,f,NULL}}', '{{2024-02-29,0001-01-01}}', '{{\"2024-01-01 12:00:00.5+05:30\",NULL}}',
           '{{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}}');
         INSERT INTO t (id) VALUES ({c});",
        a = base + 1,
        b = base + 2,
        c = base + 3,
        zeros = "0".repeat(64),
        ones = "1".repeat(64),
    )
}

/// The same rows written in MariaDB: BIT literals and the JSON arrays duplex writes.
fn my_rows(base: i32) -> String {
    let mut sql = format!(
        "INSERT INTO t VALUES ({a}, b'0', b'0', b'0000000', b'{zeros}', b'0000000000', '[]', '[]',
           '[]', '[]', '[]', '[]', '[]');
         INSERT INTO t (id) VALUES ({c});
         INSERT INTO t VALUES ({b}, b'1', b'1', b'1010101', b'{ones}', b'1111111111', ",
        a = base + 1,
        b = base + 2,
        c = base + 3,
        zeros = "0".repeat(64),
        ones = "1".repeat(64),
    );
    let json: Vec<String> = MY_JSON
        .iter()
        .map(|j| format!("'{}'", j.replace('\\', "\\\\").replace('\'', "''")))
        .collect();
    sql.push_str(&json.join(", "));
    sql.push_str(");");
    sql
}

/// Row `base + 2`'s arrays as MariaDB JSON, exactly as duplex writes them.
const MY_JSON: [&str; 7] = [
    "[1, null, -2147483648, 2147483647]",
    "[1.50, null, -0.01, 0.00]",
    r#"["a,b", "say \"hi\"", "back\\slash", "NULL", null, "", "🙂 ünï", "{x}", " sp "]"#,
    "[true, false, null]",
    r#"["2024-02-29", "0001-01-01"]"#,
    r#"["2024-01-01 06:30:00.5+00", null]"#,
    r#"["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]"#,
];

/// Row `base + 2`'s arrays as PostgreSQL prints them (in UTC).
const PG_ARRAYS: [&str; 7] = [
    "{1,NULL,-2147483648,2147483647}",
    "{1.50,NULL,-0.01,0.00}",
    r#"{"a,b","say \"hi\"","back\\slash","NULL",NULL,"","🙂 ünï","{x}"," sp "}"#,
    "{t,f,NULL}",
    "{2024-02-29,0001-01-01}",
    r#"{"2024-01-01 06:30:00.5+00",NULL}"#,
    "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
];

/// Changes streamed after the copy: the copied rows again (ids + 10), an update of bits and
/// arrays, a row inserted and deleted.
fn pg_changes() -> String {
    format!(
        "{} UPDATE t SET flag = true, b7 = B'0000001', vb = B'0101010101', ia = '{{7}}',
           ta = ARRAY['x\"y'] WHERE id = 1;
         INSERT INTO t (id, ia) VALUES (99, '{{}}'); DELETE FROM t WHERE id = 99;",
        pg_rows(10)
    )
}

fn my_changes() -> String {
    format!(
        "{} UPDATE t SET flag = b'1', b7 = b'0000001', vb = b'0101010101', ia = '[7]',
           ta = '[\"x\\\\\"y\"]' WHERE id = 1;
         INSERT INTO t (id, ia) VALUES (99, '[]'); DELETE FROM t WHERE id = 99;",
        my_rows(10)
    )
}

/// What every copy holds, per row: id, flag as 0/1, the bit strings, the arrays (PostgreSQL
/// text or MariaDB JSON); `∅` for NULL. `update` is row 1's `ia` and `ta` after the streamed
/// update (`None`: as copied).
fn expected(arrays: [&str; 7], empty: &str, update: Option<(&str, &str)>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for base in [0, 10] {
        let mut one: Vec<String> = vec![
            (base + 1).to_string(),
            "0".into(),
            "0".into(),
            "0000000".into(),
            "0".repeat(64),
            "0000000000".into(),
        ];
        one.extend(std::iter::repeat_n(empty.to_owned(), 7));
        if let (0, Some((ia, ta))) = (base, update) {
            one[1] = "1".into();
            one[3] = "0000001".into();
            one[5] = "0101010101".into();
            one[6] = ia.into();
            one[8] = ta.into();
        }
        let mut two: Vec<String> = vec![
            (base + 2).to_string(),
            "1".into(),
            "1".into(),
            "1010101".into(),
            "1".repeat(64),
            "1111111111".into(),
        ];
        two.extend(arrays.iter().map(|a| (*a).to_owned()));
        let mut three = vec![(base + 3).to_string()];
        three.extend(std::iter::repeat_n("∅".to_owned(), 12));
        out.extend([one, two, three]);
    }
    out
}

const PG_SELECT: &str = "SET TimeZone = 'UTC'; SELECT id, coalesce(flag::int::text, '∅'),
    coalesce(b1::text, '∅'), coalesce(b7::text, '∅'), coalesce(b64::text, '∅'), coalesce(vb::text, '∅'),
    coalesce(ia::text, '∅'), coalesce(na::text, '∅'), coalesce(ta::text, '∅'), coalesce(ba::text, '∅'),
    coalesce(da::text, '∅'), coalesce(tsa::text, '∅'), coalesce(ua::text, '∅') FROM t ORDER BY id";

const MY_SELECT: &str = "SELECT id, coalesce(flag + 0, '∅'), coalesce(lpad(bin(b1 + 0), 1, '0'), '∅'),
    coalesce(lpad(bin(b7 + 0), 7, '0'), '∅'), coalesce(lpad(bin(b64 + 0), 64, '0'), '∅'),
    coalesce(lpad(bin(vb + 0), 10, '0'), '∅'), coalesce(ia, '∅'), coalesce(na, '∅'), coalesce(ta, '∅'),
    coalesce(ba, '∅'), coalesce(da, '∅'), coalesce(tsa, '∅'), coalesce(ua, '∅') FROM t ORDER BY id";

fn pg_table(db: &PgDatabase) -> Result<Vec<Vec<String>>, String> {
    Ok(rows(&db.psql(PG_SELECT).map_err(|e| e.to_string())?, '|'))
}

/// The mariadb client's batch output, its escapes (`\\`, `\t`, `\n`) undone.
fn my_table(db: &MariaDatabase) -> Result<Vec<Vec<String>>, String> {
    let out = db.sql(MY_SELECT).map_err(|e| e.to_string())?;
    Ok(rows(&out, '\t')
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|field| {
                    let mut text = String::new();
                    let mut chars = field.chars();
                    while let Some(c) = chars.next() {
                        match (c, c == '\\') {
                            (_, true) => match chars.next() {
                                Some('t') => text.push('\t'),
                                Some('n') => text.push('\n'),
                                Some('0') => text.push('\0'),
                                Some(other) => text.push(other),
                                None => text.push('\\'),
                            },
                            (c, false) => text.push(c),
                        }
                    }
                    text
                })
                .collect()
        })
        .collect())
}

/// Backfills (the copy must equal `copied`), then runs, streams `changes` and waits until
/// `table()` equals `want`; returns the running duplex.
fn backfill_then_stream(
    config: &str,
    copied: &[Vec<String>],
    changes: impl FnOnce(),
    want: &[Vec<String>],
    table: impl Fn() -> Result<Vec<Vec<String>>, String>,
) -> Duplex {
    let mut duplex = Duplex::new(config);
    let out = duplex.command(&["backfill"]);
    assert!(
        out.status.success(),
        "backfill failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(table().unwrap(), copied, "the copied rows differ");
    duplex.start();
    duplex.wait_link_started();
    changes();
    wait_for("the streamed rows to arrive equal", WAIT, || {
        duplex.assert_running();
        let got = table()?;
        if got == want {
            Ok(())
        } else {
            Err(format!("\n got: {got:?}\nwant: {want:?}"))
        }
    });
    duplex
}

#[test]
fn postgres_bits_and_arrays_arrive_in_mariadb_bit_and_json() {
    let source = shared_pg().create_database();
    source.execute_as_duplex(PG_TABLE).unwrap();
    source.execute_as_duplex(&pg_rows(0)).unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql(MY_TABLE).unwrap();
    let config = config(
        (source.name(), source.url(), "public.t".into()),
        (erp.name(), erp.url(), format!("{}.t", erp.name())),
    );
    let copied = expected(MY_JSON, "[]", None)[..3].to_vec();
    let want = expected(MY_JSON, "[]", Some(("[7]", r#"["x\"y"]"#)));
    let mut duplex = backfill_then_stream(
        &config,
        &copied,
        || {
            source.execute_as_duplex(&pg_changes()).unwrap();
        },
        &want,
        || my_table(&erp),
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    drop_slot(&source);
}

#[test]
fn mariadb_bit_and_json_arrays_arrive_in_postgres_bits_booleans_and_arrays() {
    let source = shared_mariadb().create_database();
    source.sql(MY_TABLE).unwrap();
    source.sql(&my_rows(0)).unwrap();
    let store = shared_pg().create_database();
    store.execute_as_duplex(PG_TABLE).unwrap();
    let config = config(
        (source.name(), source.url(), format!("{}.t", source.name())),
        (store.name(), store.url(), "public.t".into()),
    );
    let copied = expected(PG_ARRAYS, "{}", None)[..3].to_vec();
    let want = expected(PG_ARRAYS, "{}", Some(("{7}", r#"{"x\"y"}"#)));
    let mut duplex = backfill_then_stream(
        &config,
        &copied,
        || {
            source.sql(&my_changes()).unwrap();
        },
        &want,
        || pg_table(&store),
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}

#[test]
fn mariadb_bit_arrives_in_mariadb_bit() {
    let source = shared_mariadb().create_database();
    source.sql(MY_TABLE).unwrap();
    source.sql(&my_rows(0)).unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql(MY_TABLE).unwrap();
    let config = config(
        (source.name(), source.url(), format!("{}.t", source.name())),
        (erp.name(), erp.url(), format!("{}.t", erp.name())),
    );
    let copied = expected(MY_JSON, "[]", None)[..3].to_vec();
    let want = expected(MY_JSON, "[]", Some(("[7]", r#"["x\"y"]"#)));
    let mut duplex = backfill_then_stream(
        &config,
        &copied,
        || {
            source.sql(&my_changes()).unwrap();
        },
        &want,
        || my_table(&erp),
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}

/// PostgreSQL to PostgreSQL: bit strings, arrays of many element types and intervals arrive
/// exactly (compared as the server prints them, the same query on both sides).
const PG_ONLY_TABLE: &str =
    "CREATE TABLE p (id int PRIMARY KEY, b7 bit(7), vb varbit(12), iv interval,
    ia int8[], fa float8[], na numeric[], ta varchar(8)[], ba bytea[], tma time[], tsa timestamp[],
    iva interval[], ja jsonb[], bta bit(3)[])";

fn pg_only_rows(base: i32) -> String {
    format!(
        r#"INSERT INTO p VALUES ({a}, B'0000000', B'', '00:00:00', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}',
           '{{}}', '{{}}', '{{}}', '{{}}', '{{}}');
         INSERT INTO p VALUES ({b}, B'1111111', B'101010101010',
           '178956970 years 7 mons 2147483647 days 2562047788:00:54.775807',
           '{{-9223372036854775808,9223372036854775807,NULL}}',
           '{{0.1,-1.7976931348623157e308,5e-324,NaN,Infinity,-Infinity,-0}}',
           '{{NaN,-0.000000000000000000001,123456789012345678901234567890.5}}',
           ARRAY['12345678', '', 'a"\,}}', '🙂', NULL],
           ARRAY['\x00ff'::bytea, '\x'::bytea, NULL],
           '{{00:00:00,24:00:00,23:59:59.999999}}',
           '{{"0001-01-01 00:00:00","9999-12-31 23:59:59.999999"}}',
           '{{"1 mon","30 days","720:00:00","-1 years +2 mons -3 days -00:00:00.000001"}}',
           ARRAY['{{"a": [1, "x"]}}'::jsonb, 'null'::jsonb, NULL],
           '{{101,000}}');
         INSERT INTO p VALUES ({c}, NULL, B'1', '-178956970 years -8 mons -2147483648 days -2562047788:00:54.775807');
         INSERT INTO p (id) VALUES ({d});"#,
        a = base + 1,
        b = base + 2,
        c = base + 3,
        d = base + 4,
    )
}

const PG_ONLY_SELECT: &str = "SET IntervalStyle = postgres; SELECT id, coalesce(b7::text, '∅'),
    coalesce(vb::text, '∅'), coalesce(iv::text, '∅'), coalesce(ia::text, '∅'),
    coalesce(fa::text, '∅'), coalesce(na::text, '∅'), coalesce(ta::text, '∅'), coalesce(ba::text, '∅'),
    coalesce(tma::text, '∅'), coalesce(tsa::text, '∅'), coalesce(iva::text, '∅'),
    coalesce(ja::text, '∅'), coalesce(bta::text, '∅') FROM p ORDER BY id";

#[test]
fn postgres_bits_arrays_and_intervals_arrive_exactly_in_postgres() {
    let source = shared_pg().create_database();
    source.execute_as_duplex(PG_ONLY_TABLE).unwrap();
    source.execute_as_duplex(&pg_only_rows(0)).unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(PG_ONLY_TABLE).unwrap();
    let config = config(
        (source.name(), source.url(), "public.p".into()),
        (wms.name(), wms.url(), "public.p".into()),
    );
    let read = |db: &PgDatabase| -> Result<Vec<Vec<String>>, String> {
        Ok(rows(
            &db.psql(PG_ONLY_SELECT).map_err(|e| e.to_string())?,
            '|',
        ))
    };
    let copied = read(&source).unwrap();
    assert_eq!(copied.len(), 4);
    assert!(
        copied[1][3].starts_with("178956970 years"),
        "{:?}",
        copied[1]
    );
    let mut duplex = Duplex::new(&config);
    let out = duplex.command(&["backfill"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(&wms).unwrap(), copied, "the copied rows differ");
    duplex.start();
    duplex.wait_link_started();
    source
        .execute_as_duplex(&format!(
            "{} UPDATE p SET iv = '-1 days +00:00:01', ia = '{{1}}', vb = B'0' WHERE id = 1;",
            pg_only_rows(10)
        ))
        .unwrap();
    let want = read(&source).unwrap();
    assert_eq!(want.len(), 8);
    wait_for("the second PostgreSQL to equal the source", WAIT, || {
        duplex.assert_running();
        let got = read(&wms)?;
        if got == want {
            Ok(())
        } else {
            Err(format!("\n got: {got:?}\nwant: {want:?}"))
        }
    });
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    drop_slot(&source);
}

#[test]
fn check_refuses_money_two_dimensional_arrays_and_interval_into_mariadb_naming_the_column() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(
            "CREATE TABLE r (id int PRIMARY KEY, price money, grid int[][], waited interval)",
        )
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(
        "CREATE TABLE r (id int PRIMARY KEY, price money, grid int[][], waited interval)",
    )
    .unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql("CREATE TABLE r (id INT PRIMARY KEY, price DECIMAL(14,2), grid JSON, waited TIME) ENGINE=InnoDB")
        .unwrap();
    let config = format!(
        "{}\n[sites.{e}]\nkind = \"mysql\"\nurl = \"{eu}\"\n\n[[mappings]]\nname = \"erp\"\n\
         tables = {{ {s} = \"public.r\", {e} = \"{e}.r\" }}\ndirection = \"{s}->{e}\"\n",
        config(
            (source.name(), source.url(), "public.r".into()),
            (wms.name(), wms.url(), "public.r".into()),
        ),
        s = source.name(),
        e = erp.name(),
        eu = erp.url(),
    );
    let out = Duplex::new(&config).command(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    for (column, needle) in [
        ("r.price money -> ", "lc_monetary"),
        (
            "r.grid integer[][] -> ",
            "multi-dimensional arrays are not replicated",
        ),
        (
            &format!("r.waited interval -> {}:r.waited time", erp.name()),
            "MySQL has no interval type",
        ),
    ] {
        let line = text
            .lines()
            .position(|l| l.contains("FAIL") && l.contains(column))
            .unwrap_or_else(|| panic!("no FAIL line for {column:?}:\n{text}"));
        let detail = text
            .lines()
            .skip(line)
            .take(3)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            detail.contains(needle),
            "{column}: {needle:?} not said:\n{text}"
        );
    }
    let wms_line = format!(
        "{}:r.waited interval -> {}:r.waited interval",
        source.name(),
        wms.name()
    );
    assert!(
        !text
            .lines()
            .any(|l| l.contains("FAIL") && l.contains(&wms_line)),
        "interval PostgreSQL -> PostgreSQL is refused:\n{text}"
    );
}

#[test]
fn a_two_dimensional_array_value_stops_the_link_naming_table_column_and_key() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex("CREATE TABLE a (id int PRIMARY KEY, ia int[])")
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex("CREATE TABLE a (id int PRIMARY KEY, ia int[])")
        .unwrap();
    let config = config(
        (source.name(), source.url(), "public.a".into()),
        (wms.name(), wms.url(), "public.a".into()),
    );
    let mut duplex = Duplex::run(&config);
    duplex.wait_link_started();
    source
        .execute_as_duplex(
            "INSERT INTO a VALUES (1, '{1,2}'); INSERT INTO a VALUES (2, '{{1,2},{3,4}}');              INSERT INTO a VALUES (3, '{3}');",
        )
        .unwrap();
    duplex.assert_stopped_saying(&[
        "table public.a, row with key (id)=(2)",
        "column ia of type integer[]",
        "multi-dimensional arrays are not replicated",
    ]);
    assert_eq!(
        wms.psql("SELECT id, ia FROM a ORDER BY id").unwrap().trim(),
        "1|{1,2}",
        "nothing after the refused row is applied"
    );
    drop_slot(&source);
}

#[test]
fn a_bit_string_of_another_length_stops_the_link_instead_of_being_padded() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex("CREATE TABLE v (id int PRIMARY KEY, vb varbit(10))")
        .unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql("CREATE TABLE v (id INT PRIMARY KEY, vb BIT(10)) ENGINE=InnoDB")
        .unwrap();
    let config = config(
        (source.name(), source.url(), "public.v".into()),
        (erp.name(), erp.url(), format!("{}.v", erp.name())),
    );
    let mut duplex = Duplex::run(&config);
    duplex.wait_link_started();
    source
        .execute_as_duplex(
            "INSERT INTO v VALUES (1, B'0000000101'); INSERT INTO v VALUES (2, B'101'); \
             INSERT INTO v VALUES (3, B'1111111111');",
        )
        .unwrap();
    duplex.assert_stopped_saying(&[
        "B'101' has 3 bits, the column 10: it would be padded or truncated",
        "vb",
    ]);
    assert_eq!(
        erp.sql("SELECT id, bin(vb + 0) FROM v ORDER BY id")
            .unwrap()
            .trim(),
        "1\t101",
        "nothing after the refused row is applied"
    );
    drop_slot(&source);
}

#[test]
fn json_that_is_not_an_array_of_scalars_stops_the_link_naming_it() {
    let source = shared_mariadb().create_database();
    source
        .sql("CREATE TABLE j (id INT PRIMARY KEY, ia JSON) ENGINE=InnoDB")
        .unwrap();
    let store = shared_pg().create_database();
    store
        .execute_as_duplex("CREATE TABLE j (id int PRIMARY KEY, ia int[])")
        .unwrap();
    let config = config(
        (source.name(), source.url(), format!("{}.j", source.name())),
        (store.name(), store.url(), "public.j".into()),
    );
    let mut duplex = Duplex::run(&config);
    duplex.wait_link_started();
    source
        .sql(
            "INSERT INTO j VALUES (1, '[1, 2]'); INSERT INTO j VALUES (2, '[[1], [2]]'); \
             INSERT INTO j VALUES (3, '[3]');",
        )
        .unwrap();
    duplex.assert_stopped_saying(&[
        "element 1 is an array: multi-dimensional arrays are not replicated",
        "ia",
    ]);
    assert_eq!(
        store
            .psql("SELECT id, ia FROM j ORDER BY id")
            .unwrap()
            .trim(),
        "1|{1,2}",
        "nothing after the refused row is applied"
    );
}

/// Two-way: a PostgreSQL boolean and int[] against MariaDB BIT(1) and JSON, changed at both
/// sites in turn (each change reaches the other site, and the conditional writes find the
/// values they expect there, whichever way the JSON was spaced).
#[test]
fn two_way_boolean_and_array_against_bit_and_json() {
    let store = shared_pg().create_database();
    store
        .execute_as_duplex("CREATE TABLE w (id int PRIMARY KEY, flag boolean, tags int[])")
        .unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql("CREATE TABLE w (id INT PRIMARY KEY, flag BIT(1), tags JSON) ENGINE=InnoDB")
        .unwrap();
    let config = format!(
        "[sites.{s}]\nkind = \"postgres\"\nurl = \"{su}\"\n\n\
         [sites.{e}]\nkind = \"mysql\"\nurl = \"{eu}\"\n\n\
         [[mappings]]\nname = \"w\"\ntables = {{ {s} = \"public.w\", {e} = \"{e}.w\" }}\n\
         direction = \"both\"\n",
        s = store.name(),
        su = store.url(),
        e = erp.name(),
        eu = erp.url(),
    );
    let mut duplex = Duplex::run(&config);
    harness::sites::wait_reading(&mut duplex, 2, WAIT);
    let both = |want_pg: &str, want_my: &str, duplex: &mut Duplex| {
        wait_for("both sites to hold the change", WAIT, || {
            duplex.assert_running();
            let pg = store
                .psql("SELECT id, flag, tags FROM w ORDER BY id")
                .map_err(|e| e.to_string())?;
            let my = erp
                .sql("SELECT id, flag + 0, tags FROM w ORDER BY id")
                .map_err(|e| e.to_string())?;
            if pg.trim() == want_pg && my.trim() == want_my {
                Ok(())
            } else {
                Err(format!("store {pg:?}, erp {my:?}"))
            }
        });
    };
    store
        .execute_as_duplex("INSERT INTO w VALUES (1, true, '{1,2}')")
        .unwrap();
    both("1|t|{1,2}", "1\t1\t[1, 2]", &mut duplex);
    erp.sql("UPDATE w SET flag = b'0', tags = '[3,null]' WHERE id = 1")
        .unwrap();
    both("1|f|{3,NULL}", "1\t0\t[3,null]", &mut duplex);
    store
        .execute_as_duplex("UPDATE w SET tags = '{4}' WHERE id = 1")
        .unwrap();
    both("1|f|{4}", "1\t0\t[4]", &mut duplex);
    erp.sql("UPDATE w SET flag = b'1' WHERE id = 1").unwrap();
    both("1|t|{4}", "1\t1\t[4]", &mut duplex);
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    drop_slot(&store);
}
