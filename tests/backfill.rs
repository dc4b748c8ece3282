//! `duplex backfill` end to end through the real binary: a consistent copy under concurrent
//! writes that hands over to `duplex run` exactly, resume after SIGKILL, and refusing a
//! non-empty target.

mod harness;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use duplex::backfill::BackfillMeta;
use duplex_testkit::{MariaDatabase, PgDatabase, shared_mariadb, shared_pg};
use harness::{Duplex, drop_slot, wait_for};

const ROWS: u64 = 200_000;
const WAIT: Duration = Duration::from_secs(90);

fn config(source: (&str, &str, String), target: (&str, &str, String), state: &Path) -> String {
    let kind = |url: &str| {
        if url.starts_with("mysql") {
            "mysql"
        } else {
            "postgres"
        }
    };
    format!(
        "[state]\ndir = \"{state}\"\n\n\
         [sites.{s}]\nkind = \"{sk}\"\nurl = \"{su}\"\n\n\
         [sites.{t}]\nkind = \"{tk}\"\nurl = \"{tu}\"\n\n\
         [[mappings]]\nname = \"items\"\ntables = {{ {s} = \"{st}\", {t} = \"{tt}\" }}\ndirection = \"{s}->{t}\"\n",
        state = state.display(),
        s = source.0,
        st = source.1,
        sk = kind(&source.2),
        su = source.2,
        t = target.0,
        tt = target.1,
        tk = kind(&target.2),
        tu = target.2,
    )
}

fn backfill(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_duplex"))
        .arg("--config")
        .arg(config)
        .arg("backfill")
        .args(args)
        .env("DUPLEX_LOG", "info,duplex=debug")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn pg_items(db: &PgDatabase) -> String {
    db.psql("SELECT count(*), coalesce(sum(id), 0), coalesce(sum(qty), 0), md5(coalesce(string_agg(id || ':' || qty || ':' || name, ',' ORDER BY id), '')) FROM items")
        .unwrap()
        .trim()
        .replace('|', " ")
}

fn my_items(db: &MariaDatabase) -> String {
    db.sql("SET SESSION group_concat_max_len = 1073741824; SELECT count(*), coalesce(sum(id), 0), coalesce(sum(qty), 0), md5(coalesce(group_concat(id, ':', qty, ':', name ORDER BY id SEPARATOR ','), '')) FROM items")
        .unwrap()
        .trim()
        .replace('\t', " ")
}

/// Runs `write(i)` for i = 0, 1, ... every 50 ms until `stop` (at most `limit` times).
fn writer(
    stop: Arc<AtomicBool>,
    limit: u32,
    write: impl Fn(u32) + Send + 'static,
) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) && i < limit {
            write(i);
            i += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        i
    })
}

fn pg_writes(i: u32) -> String {
    format!(
        "INSERT INTO items SELECT g, 0, 'new' FROM generate_series({a}, {b}) g; \
         UPDATE items SET qty = qty + 1, name = name || '+' WHERE id % 97 = {m}; \
         DELETE FROM items WHERE id % 101 = {m} AND id < 1000000; \
         UPDATE items SET id = id + 5000000 WHERE id = {k}",
        a = 1_000_000 + i * 100,
        b = 1_000_000 + i * 100 + 99,
        m = i % 97,
        k = 1 + i * 7919,
    )
}

fn my_writes(i: u32) -> String {
    format!(
        "INSERT INTO items SELECT seq, 0, 'new' FROM seq_{a}_to_{b}; \
         UPDATE items SET qty = qty + 1, name = concat(name, '+') WHERE id % 97 = {m}; \
         DELETE FROM items WHERE id % 101 = {m} AND id < 1000000; \
         UPDATE items SET id = id + 5000000 WHERE id = {k}",
        a = 1_000_000 + i * 100,
        b = 1_000_000 + i * 100 + 99,
        m = i % 97,
        k = 1 + i * 7919,
    )
}

/// Starts `duplex run` on the same config and waits until the target equals the source.
fn run_until_equal(
    config: &str,
    source: impl Fn() -> String,
    target: impl Fn() -> String,
) -> Duplex {
    let mut duplex = Duplex::run(config);
    wait_for("the target to equal the source", WAIT, || {
        duplex.assert_running();
        let (s, t) = (source(), target());
        if s == t {
            Ok(())
        } else {
            Err(format!("source {s} target {t}\n{}", duplex.log_text()))
        }
    });
    duplex
}

#[test]
fn postgres_to_mariadb_under_concurrent_writes_hands_over_exactly() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(&format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL); \
             INSERT INTO items SELECT g, g % 13, 'item ' || g FROM generate_series(1, {ROWS}) g"
        ))
        .unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql("CREATE TABLE items (id BIGINT PRIMARY KEY, qty INT NOT NULL, name LONGTEXT NOT NULL) ENGINE=InnoDB")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        (source.name(), "public.items", source.url()),
        ("erp", &format!("{}.items", erp.name()), erp.url()),
        &dir.path().join("state"),
    );
    let path = dir.path().join("duplex.toml");
    std::fs::write(&path, &text).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let source = Arc::new(source);
    let writer_db = source.clone();
    let writes = writer(stop.clone(), 400, move |i| {
        writer_db.psql(&pg_writes(i)).unwrap();
    });
    let started = Instant::now();
    let out = backfill(&path, &["--jobs", "2"]);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let batches = writes.join().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "backfill failed:\n{log}");
    eprintln!(
        "backfill of {ROWS} rows took {elapsed:.1?} ({:.0} rows/s); {batches} write batches ran meanwhile\n{log}",
        ROWS as f64 / elapsed.as_secs_f64()
    );
    assert!(batches > 0);

    let mut duplex = run_until_equal(&text, || pg_items(&source), || my_items(&erp));
    duplex.terminate();
    drop_slot(&source);
}

#[test]
fn mariadb_to_postgres_under_concurrent_writes_hands_over_exactly() {
    let source = shared_mariadb().create_database();
    source
        .sql(&format!(
            "CREATE TABLE items (id BIGINT PRIMARY KEY, qty INT NOT NULL, name LONGTEXT NOT NULL) ENGINE=InnoDB; \
             INSERT INTO items SELECT seq, seq % 13, concat('item ', seq) FROM seq_1_to_{ROWS}"
        ))
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(
        "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL)",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        ("shop", &format!("{}.items", source.name()), source.url()),
        ("wms", "public.items", wms.url()),
        &dir.path().join("state"),
    );
    let path = dir.path().join("duplex.toml");
    std::fs::write(&path, &text).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let db = Arc::new(source);
    let writer_db = db.clone();
    let writes = writer(stop.clone(), 400, move |i| {
        writer_db.sql(&my_writes(i)).unwrap();
    });
    let started = Instant::now();
    let out = backfill(&path, &["--jobs", "2"]);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let batches = writes.join().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "backfill failed:\n{log}");
    eprintln!(
        "backfill of {ROWS} rows took {elapsed:.1?} ({:.0} rows/s); {batches} write batches ran meanwhile\n{log}",
        ROWS as f64 / elapsed.as_secs_f64()
    );
    assert!(batches > 0);

    let mut duplex = run_until_equal(&text, || my_items(&db), || pg_items(&wms));
    duplex.terminate();
}

#[test]
fn a_backfill_killed_part_way_resumes_and_copies_only_the_rest() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(&format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL); \
             INSERT INTO items SELECT g, g % 13, 'item ' || g FROM generate_series(1, {ROWS}) g"
        ))
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(
        "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL)",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let text = config(
        (source.name(), "public.items", source.url()),
        ("wms", "public.items", wms.url()),
        &state,
    );
    let path = dir.path().join("duplex.toml");
    std::fs::write(&path, &text).unwrap();
    let log_path = dir.path().join("first.log");

    // First attempt: one worker, small ranges; SIGKILL once a few ranges are done.
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_duplex"))
        .arg("--config")
        .arg(&path)
        .args(["backfill", "--jobs", "1", "--chunk-rows", "2000"])
        .env("DUPLEX_LOG", "info,duplex=debug")
        .stdin(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for("a few ranges to be copied", WAIT, || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let done = text.matches("range done").count();
        if done >= 10 {
            Ok(())
        } else {
            Err(format!("{done} ranges\n{text}"))
        }
    });
    child.kill().unwrap();
    child.wait().unwrap();
    // Changes after the first snapshot: some hit ranges already copied, some not.
    source
        .psql("UPDATE items SET qty = -1 WHERE id % 1000 = 7; DELETE FROM items WHERE id % 1000 = 8; \
               INSERT INTO items VALUES (900001, 1, 'late'); UPDATE items SET id = 900002 WHERE id = 5")
        .unwrap();

    let store = duplex_state::StateStore::open(&state).unwrap();
    let first_done = store.done_ranges("items", "public.items").unwrap();
    let meta: BackfillMeta = store.backfill_meta("items").unwrap().unwrap();
    drop(store);
    assert!(
        !first_done.is_empty() && first_done.len() < meta.ranges.len(),
        "{first_done:?}"
    );

    let out = backfill(&path, &["--jobs", "2", "--chunk-rows", "2000"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "resumed backfill failed:\n{log}");

    let store = duplex_state::StateStore::open(&state).unwrap();
    let done = store.done_ranges("items", "public.items").unwrap();
    let meta: BackfillMeta = store.backfill_meta("items").unwrap().unwrap();
    drop(store);
    assert!(meta.complete);
    assert_eq!(done.len(), meta.ranges.len());
    let second = meta.rows_copied_in(&done, 1);
    assert!(
        second > 0 && second < ROWS,
        "second attempt copied {second} rows\n{log}"
    );
    // Every range recorded before the kill still counts for the first attempt, unchanged. The
    // kill may also have caught a range between its target commit and the state store's
    // write: its marker on the target makes it count for the first attempt too, not copied
    // again.
    for (range, rows) in &first_done {
        assert_eq!(
            done.get(range),
            Some(rows),
            "range {range} changed on resume"
        );
    }
    assert!(meta.rows_copied_in(&done, 0) >= first_done.values().sum::<u64>());

    let mut duplex = run_until_equal(&text, || pg_items(&source), || pg_items(&wms));
    duplex.terminate();
    drop_slot(&source);
}

#[test]
fn a_non_empty_target_is_refused_without_allow_nonempty() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(
            "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL); \
               INSERT INTO items VALUES (1, 1, 'a'), (2, 2, 'b')",
        )
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(
        "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL); \
                           INSERT INTO items VALUES (2, 0, 'old'), (3, 3, 'extra')",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        (source.name(), "public.items", source.url()),
        ("wms", "public.items", wms.url()),
        &dir.path().join("state"),
    );
    let path = dir.path().join("duplex.toml");
    std::fs::write(&path, &text).unwrap();

    let out = backfill(&path, &[]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("is not empty") && log.contains("--allow-nonempty"),
        "{log}"
    );

    let out = backfill(&path, &["--allow-nonempty"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(
        wms.psql("SELECT id, qty, name FROM items ORDER BY id")
            .unwrap()
            .trim(),
        "1|1|a\n2|2|b\n3|3|extra"
    );
    drop_slot(&source);
}

#[test]
fn every_column_type_survives_the_copy_path_into_postgres() {
    copy_every_column_type_into_postgres(false);
}

#[test]
fn every_column_type_survives_the_unread_copy_into_postgres() {
    copy_every_column_type_into_postgres(true);
}

/// A PostgreSQL -> PostgreSQL backfill of every column type. `bulk`: the way duplex copies by
/// default, `kinds` (identical column types on both sides) unread in binary COPY format and
/// `hosts` (whose `note` is `varchar(50)` on the target) as canonical rows. Otherwise
/// (`DUPLEX_BACKFILL_BULK=off`) both as canonical rows: binary COPY for every type with a
/// binary encoder; `inet` has none, so the ranges of `hosts` go through the INSERT fallback
/// inside the same transaction.
fn copy_every_column_type_into_postgres(bulk: bool) {
    let kinds = "CREATE TABLE kinds (id int PRIMARY KEY, b bool, s int2, big int8, n numeric(12,4), \
               f4 float4, f8 float8, t text, vc varchar(20), raw bytea, d date, tm time, \
               ts timestamp, tz timestamptz, u uuid, j json, jb jsonb)";
    let ddl = format!("{kinds}; CREATE TABLE hosts (id int PRIMARY KEY, addr inet, note text)");
    let target_ddl = if bulk {
        format!("{kinds}; CREATE TABLE hosts (id int PRIMARY KEY, addr inet, note varchar(50))")
    } else {
        ddl.clone()
    };
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(&format!(
            "{ddl}; \
             INSERT INTO kinds VALUES \
             (1, true, -32768, 9223372036854775807, -12345678.1234, 1.5, 'NaN', \
              E'tab\\there\\nnew line\\\\ back\\rslash', 'N', E'\\\\x00ff5c0a', '2024-02-29', '24:00:00', \
              '1999-12-31 23:59:59.999999', '2024-06-01 12:00:00+02', \
              'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{\"b\": 1, \"a\": [1, 2], \"b\": 2}}', '{{\"k\": \"\\\\N\"}}'), \
             (2, NULL, NULL, NULL, NULL, NULL, '-Infinity', '\\N', NULL, '', NULL, NULL, NULL, NULL, NULL, NULL, NULL), \
             (3, false, 0, 0, 0, -0.0, 1e308, '', '', NULL, '0001-01-01', '00:00:00', \
              '2000-01-01 00:00:00', '1970-01-01 00:00:00+00', '00000000-0000-0000-0000-000000000000', 'null', '[]'); \
             INSERT INTO kinds (id, t) SELECT g, 'row ' || g FROM generate_series(4, 5000) g; \
             INSERT INTO hosts VALUES (1, '10.0.0.1/8', 'a'), (2, '::1', NULL), (3, NULL, E'x\\ty')"
        ))
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(&target_ddl).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let text = format!(
        "[state]\ndir = \"{state}\"\n\n\
         [sites.src]\nkind = \"postgres\"\nurl = \"{su}\"\n\n\
         [sites.wms]\nkind = \"postgres\"\nurl = \"{tu}\"\n\n\
         [[mappings]]\nname = \"kinds\"\ntables = {{ src = \"public.kinds\", wms = \"public.kinds\" }}\ndirection = \"src->wms\"\n\n\
         [[mappings]]\nname = \"hosts\"\ntables = {{ src = \"public.hosts\", wms = \"public.hosts\" }}\ndirection = \"src->wms\"\n",
        state = state.display(),
        su = source.url(),
        tu = wms.url(),
    );
    let path = dir.path().join("duplex.toml");
    std::fs::write(&path, &text).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_duplex"))
        .arg("--config")
        .arg(&path)
        .args(["backfill", "--jobs", "2", "--chunk-rows", "1000"])
        .env("DUPLEX_LOG", "info,duplex=debug")
        .env("DUPLEX_BACKFILL_BULK", if bulk { "on" } else { "off" })
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "backfill failed:\n{log}");
    let unread = |mapping: &str| {
        log.lines()
            .any(|l| l.contains("copying unread") && l.contains(&format!("mapping={mapping}")))
    };
    assert_eq!(unread("kinds"), bulk, "how kinds was copied:\n{log}");
    assert!(!unread("hosts"), "hosts was copied unread:\n{log}");
    for table in ["kinds", "hosts"] {
        let query = format!(
            "SELECT count(*), md5(coalesce(string_agg(k::text, E'\\n' ORDER BY id), '')) FROM {table} k"
        );
        let (a, b) = (source.psql(&query).unwrap(), wms.psql(&query).unwrap());
        assert_eq!(a, b, "{table} differs after the backfill\n{log}");
    }
    assert_eq!(
        wms.psql(
            "SELECT encode(raw, 'hex'), t = E'tab\\there\\nnew line\\\\ back\\rslash', \
             n::text, f8::text, tm::text FROM kinds WHERE id = 1"
        )
        .unwrap()
        .trim(),
        "00ff5c0a|t|-12345678.1234|NaN|24:00:00"
    );
    drop_slot(&source);
}

#[test]
fn a_value_refused_mid_copy_leaves_neither_the_range_nor_its_marker() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(
            "CREATE TABLE items (id bigint PRIMARY KEY, qty bigint NOT NULL, name text NOT NULL); \
             INSERT INTO items SELECT g, g % 13, 'item ' || g FROM generate_series(1, 5000) g; \
             UPDATE items SET qty = 3000000000 WHERE id = 4000",
        )
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(
        "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL)",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        (source.name(), "public.items", source.url()),
        ("wms", "public.items", wms.url()),
        &dir.path().join("state"),
    );
    let path = dir.path().join("duplex.toml");
    std::fs::write(&path, &text).unwrap();

    // One worker, ranges in key order: (..1000], ..., (3000, 4000] fails on its last row,
    // after most of the range was already streamed into the COPY.
    let out = backfill(&path, &["--jobs", "1", "--chunk-rows", "1000"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("out of the column's range"), "{log}");
    assert_eq!(
        wms.psql("SELECT count(*), coalesce(max(id), 0) FROM items")
            .unwrap()
            .trim(),
        "3000|3000"
    );
    assert_eq!(
        wms.psql(
            "SELECT string_agg(regexp_replace(source, '^backfill:items@[^:]+:', \
             'backfill:items@<deployment>:'), ',' ORDER BY source) FROM duplex.positions"
        )
        .unwrap()
        .trim(),
        "backfill:items@<deployment>:0,backfill:items@<deployment>:1,\
         backfill:items@<deployment>:2"
    );
    drop_slot(&source);
}

/// Rows of the composite-key (`stock`) and text-key (`tags`) tables.
const KEYED_ROWS: u64 = 6000;
/// `--chunk-rows` for the keyed tables: many ranges.
const KEYED_CHUNK: u64 = 400;
const REGIONS: [&str; 5] = ["Ost", "west", "Nord", "süd", "Zentrum"];

/// A config with the mappings `stock` and `tags` from `source` to `target`.
fn keyed_config(
    source: (&str, &str, String),
    target: (&str, &str, String),
    state: &Path,
) -> String {
    let kind = |url: &str| {
        if url.starts_with("mysql") {
            "mysql"
        } else {
            "postgres"
        }
    };
    let mut text = format!(
        "[state]\ndir = \"{state}\"\n\n[sites.{s}]\nkind = \"{sk}\"\nurl = \"{su}\"\n\n\
         [sites.{t}]\nkind = \"{tk}\"\nurl = \"{tu}\"\n",
        state = state.display(),
        s = source.0,
        sk = kind(&source.2),
        su = source.2,
        t = target.0,
        tk = kind(&target.2),
        tu = target.2,
    );
    for table in ["stock", "tags"] {
        text.push_str(&format!(
            "\n[[mappings]]\nname = \"{table}\"\ntables = {{ {s} = \"{sp}{table}\", {t} = \"{tp}{table}\" }}\ndirection = \"{s}->{t}\"\n",
            s = source.0,
            sp = source.1,
            t = target.0,
            tp = target.1,
        ));
    }
    text
}

const PG_KEYED: &str = "CREATE TABLE stock (region text, id int, qty int NOT NULL, PRIMARY KEY (region, id)); \
     CREATE TABLE tags (name text PRIMARY KEY, qty int NOT NULL)";
const MY_KEYED: &str = "CREATE TABLE stock (region VARCHAR(32), id INT, qty INT NOT NULL, PRIMARY KEY (region, id)) ENGINE=InnoDB; \
     CREATE TABLE tags (name VARCHAR(64) PRIMARY KEY, qty INT NOT NULL) ENGINE=InnoDB";

/// Order-independent checksums (the two servers sort text differently): count, sum of qty,
/// sum of the first 32 bits of each row's md5.
fn pg_keyed(db: &PgDatabase) -> String {
    db.psql(
        "SELECT count(*), coalesce(sum(qty), 0), coalesce(sum(('x' || substr(md5(region || ':' || id || ':' || qty), 1, 8))::bit(32)::bigint), 0) FROM stock; \
         SELECT count(*), coalesce(sum(qty), 0), coalesce(sum(('x' || substr(md5(name || ':' || qty), 1, 8))::bit(32)::bigint), 0) FROM tags",
    )
    .unwrap()
    .trim()
    .replace('|', " ")
}

fn my_keyed(db: &MariaDatabase) -> String {
    db.sql(
        "SELECT count(*), coalesce(sum(qty), 0), coalesce(sum(conv(substr(md5(concat(region, ':', id, ':', qty)), 1, 8), 16, 10)), 0) FROM stock; \
         SELECT count(*), coalesce(sum(qty), 0), coalesce(sum(conv(substr(md5(concat(name, ':', qty)), 1, 8), 16, 10)), 0) FROM tags",
    )
    .unwrap()
    .trim()
    .replace('\t', " ")
}

/// Writes touching both keyed tables: inserts, updates, deletes, key changes.
fn keyed_writes(i: u32, pg: bool) -> String {
    let region = REGIONS[i as usize % REGIONS.len()];
    let concat = |a: &str, b: &str| {
        if pg {
            format!("{a} || {b}")
        } else {
            format!("concat({a}, {b})")
        }
    };
    format!(
        "INSERT INTO stock VALUES ('{region}', {n}, 1), ('Neu {i}', 1, 2); \
         UPDATE stock SET qty = qty + 1 WHERE id % 89 = {m}; \
         DELETE FROM stock WHERE id % 97 = {m} AND id < 100000; \
         UPDATE stock SET region = {moved} WHERE region = '{region}' AND id = {k}; \
         INSERT INTO tags VALUES ('neu {i}', {i}); \
         UPDATE tags SET qty = qty + 1 WHERE qty % 89 = {m}; \
         DELETE FROM tags WHERE qty % 97 = {m} AND qty < 100000; \
         UPDATE tags SET name = {renamed} WHERE name = 'Tag {k}'",
        n = 100_000 + i,
        m = i % 89,
        k = 1 + i * 37,
        moved = concat("region", "'+'"),
        renamed = concat("name", "'+'"),
    )
}

fn pg_keyed_rows() -> String {
    format!(
        "INSERT INTO stock SELECT (ARRAY['Ost', 'west', 'Nord', 'süd', 'Zentrum'])[1 + g % 5], g, g % 13 FROM generate_series(1, {KEYED_ROWS}) g; \
         INSERT INTO tags SELECT 'Tag ' || g, g FROM generate_series(1, {KEYED_ROWS}) g"
    )
}

fn my_keyed_rows() -> String {
    format!(
        "INSERT INTO stock SELECT elt(1 + seq % 5, 'Ost', 'west', 'Nord', 'süd', 'Zentrum'), seq, seq % 13 FROM seq_1_to_{KEYED_ROWS}; \
         INSERT INTO tags SELECT concat('Tag ', seq), seq FROM seq_1_to_{KEYED_ROWS}"
    )
}

/// Every keyed mapping was cut into several ranges, each but the last holding exactly `limit`
/// rows.
fn assert_keyed_ranges(state: &Path, limit: u64) {
    let store = duplex_state::StateStore::open(state).unwrap();
    for (mapping, table, key) in [("stock", "stock", 2), ("tags", "tags", 1)] {
        let meta: BackfillMeta = store.backfill_meta(mapping).unwrap().unwrap();
        assert!(meta.complete);
        assert_eq!(meta.key_columns.len(), key, "{meta:?}");
        assert!(meta.range_count() > 1, "{mapping}: {meta:?}");
        let done = store.done_ranges(mapping, &meta.table).unwrap();
        assert_eq!(done.len(), meta.range_count(), "{mapping} of {table}");
        // Cut in the snapshot every `limit` keys: every range but the last (open) one holds
        // exactly `limit` rows of the snapshot.
        let held: Vec<u64> = done.values().copied().collect();
        assert!(
            held[..held.len() - 1].iter().all(|rows| *rows == limit)
                && held[held.len() - 1] <= limit,
            "{mapping}: ranges not of {limit} rows: {done:?}"
        );
    }
}

#[test]
fn composite_and_text_keys_postgres_to_mariadb_in_ranges_under_concurrent_writes() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(&format!("{PG_KEYED}; {}", pg_keyed_rows()))
        .unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql(MY_KEYED).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let text = keyed_config(
        (source.name(), "public.", source.url()),
        ("erp", &format!("{}.", erp.name()), erp.url()),
        &state,
    );
    let path = dir.path().join("duplex.toml");
    std::fs::write(&path, &text).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let source = Arc::new(source);
    let writer_db = source.clone();
    let writes = writer(stop.clone(), 400, move |i| {
        writer_db.psql(&keyed_writes(i, true)).unwrap();
    });
    let chunk = KEYED_CHUNK.to_string();
    let out = backfill(&path, &["--jobs", "3", "--chunk-rows", &chunk]);
    stop.store(true, Ordering::SeqCst);
    let batches = writes.join().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "backfill failed:\n{log}");
    assert!(batches > 0);
    // One snapshot: every range holds at most the rows between two cut points of it.
    assert_keyed_ranges(&state, KEYED_CHUNK);

    let mut duplex = run_until_equal(&text, || pg_keyed(&source), || my_keyed(&erp));
    duplex.terminate();
    drop_slot(&source);
}

#[test]
fn composite_and_text_keys_mariadb_to_postgres_in_ranges_under_concurrent_writes() {
    let source = shared_mariadb().create_database();
    source
        .sql(&format!("{MY_KEYED}; {}", my_keyed_rows()))
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(PG_KEYED).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let text = keyed_config(
        ("shop", &format!("{}.", source.name()), source.url()),
        ("wms", "public.", wms.url()),
        &state,
    );
    let path = dir.path().join("duplex.toml");
    std::fs::write(&path, &text).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let db = Arc::new(source);
    let writer_db = db.clone();
    let writes = writer(stop.clone(), 400, move |i| {
        writer_db.sql(&keyed_writes(i, false)).unwrap();
    });
    let chunk = KEYED_CHUNK.to_string();
    let out = backfill(&path, &["--jobs", "3", "--chunk-rows", &chunk]);
    stop.store(true, Ordering::SeqCst);
    let batches = writes.join().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "backfill failed:\n{log}");
    assert!(batches > 0);
    assert_keyed_ranges(&state, KEYED_CHUNK);

    let mut duplex = run_until_equal(&text, || my_keyed(&db), || pg_keyed(&wms));
    duplex.terminate();
}

#[test]
fn a_composite_key_backfill_killed_part_way_resumes_and_copies_only_the_rest() {
    const ROWS: u64 = 60_000;
    const CHUNK: u64 = 300;
    let ddl =
        "CREATE TABLE stock (region text, id int, qty int NOT NULL, PRIMARY KEY (region, id))";
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(&format!(
            "{ddl}; INSERT INTO stock SELECT (ARRAY['Ost', 'west', 'Nord', 'süd', 'Zentrum'])[1 + g % 5], g, g % 13 \
             FROM generate_series(1, {ROWS}) g"
        ))
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(ddl).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let text = config(
        (source.name(), "public.stock", source.url()),
        ("wms", "public.stock", wms.url()),
        &state,
    );
    let path = dir.path().join("duplex.toml");
    std::fs::write(&path, &text).unwrap();
    let log_path = dir.path().join("first.log");
    let chunk = CHUNK.to_string();

    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_duplex"))
        .arg("--config")
        .arg(&path)
        .args(["backfill", "--jobs", "1", "--chunk-rows", &chunk])
        .env("DUPLEX_LOG", "info,duplex=debug")
        .stdin(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for("a few ranges to be copied", WAIT, || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let done = text.matches("range done").count();
        if done >= 10 {
            Ok(())
        } else {
            Err(format!("{done} ranges\n{text}"))
        }
    });
    child.kill().unwrap();
    child.wait().unwrap();
    // Changes after the first snapshot, in ranges copied and not: updates, deletes, inserts
    // (3 rows), and key changes that move rows between ranges.
    source
        .psql(
            "UPDATE stock SET qty = -1 WHERE id % 1000 = 7; DELETE FROM stock WHERE id % 1000 = 8; \
             INSERT INTO stock VALUES ('Ost', 900001, 1), ('Aachen', 1, 2), ('zz', 1, 3); \
             UPDATE stock SET region = 'Zentrum' WHERE region = 'Nord' AND id < 200; \
             UPDATE stock SET region = 'Alpha' WHERE region = 'west' AND id > 59000",
        )
        .unwrap();

    let store = duplex_state::StateStore::open(&state).unwrap();
    let first_done = store.done_ranges("items", "public.stock").unwrap();
    let meta: BackfillMeta = store.backfill_meta("items").unwrap().unwrap();
    drop(store);
    assert_eq!(meta.key_columns, ["region", "id"]);
    assert!(
        !first_done.is_empty() && first_done.len() < meta.range_count(),
        "{first_done:?}"
    );

    let out = backfill(&path, &["--jobs", "2", "--chunk-rows", &chunk]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "resumed backfill failed:\n{log}");

    let store = duplex_state::StateStore::open(&state).unwrap();
    let done = store.done_ranges("items", "public.stock").unwrap();
    let meta: BackfillMeta = store.backfill_meta("items").unwrap().unwrap();
    drop(store);
    assert!(meta.complete);
    assert_eq!(done.len(), meta.range_count());
    let second = meta.rows_copied_in(&done, 1);
    assert!(
        second > 0 && second < ROWS,
        "second attempt copied {second} rows\n{log}"
    );
    for (range, rows) in &first_done {
        assert_eq!(
            done.get(range),
            Some(rows),
            "range {range} changed on resume"
        );
    }
    // The ranges were cut in the first snapshot; one read from the second can hold rows
    // inserted or moved into it since (here at most the 3 inserted and the ~40 + ~200 moved).
    assert!(done.values().all(|rows| *rows <= CHUNK + 250), "{done:?}");

    let pg_stock = |db: &PgDatabase| {
        db.psql("SELECT count(*), md5(string_agg(region || ':' || id || ':' || qty, ',' ORDER BY region, id)) FROM stock")
            .unwrap()
    };
    let mut duplex = run_until_equal(&text, || pg_stock(&source), || pg_stock(&wms));
    duplex.terminate();
    drop_slot(&source);
}
