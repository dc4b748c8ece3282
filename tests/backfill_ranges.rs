//! How `duplex backfill` cuts a table with an integer key into ranges: every range but the
//! last holds exactly `--chunk-rows` rows, in the key's numeric order, and the planned row
//! count is the table's, on both kinds of source.

use std::path::Path;
use std::process::{Command, Stdio};

use duplex::backfill::BackfillMeta;
use duplex_testkit::{shared_mariadb, shared_pg};

/// Rows of the source table; keys `3, 6, ..., 3 * ROWS` (gaps, and every digit count from one
/// to five, so that an order by the key's text would differ from its numeric order).
const ROWS: u64 = 10_500;
const CHUNK: u64 = 1_000;

/// A one-way mapping of `items` from `source` to `target`, each (kind, url, table).
fn config(source: (&str, &str, &str), target: (&str, &str, &str), state: &Path) -> String {
    format!(
        "[state]\ndir = \"{state}\"\n\n\
         [sites.src]\nkind = \"{sk}\"\nurl = \"{su}\"\n\n\
         [sites.dst]\nkind = \"{tk}\"\nurl = \"{tu}\"\n\n\
         [[mappings]]\nname = \"items\"\ntables = {{ src = \"{st}\", dst = \"{tt}\" }}\ndirection = \"src->dst\"\n",
        state = state.display(),
        sk = source.0,
        su = source.1,
        st = source.2,
        tk = target.0,
        tu = target.1,
        tt = target.2,
    )
}

/// Backfills `config` with small ranges and checks how the table was cut and what landed.
fn backfill_and_check_ranges(config: &str, dir: &Path, target_rows: impl Fn() -> String) {
    let path = dir.join("duplex.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_duplex"))
        .arg("--config")
        .arg(&path)
        .args([
            "backfill",
            "--jobs",
            "2",
            "--chunk-rows",
            &CHUNK.to_string(),
        ])
        .env("DUPLEX_LOG", "info,duplex=debug")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "backfill failed:\n{log}");
    let store = duplex_state::StateStore::open(&dir.join("state")).unwrap();
    let meta: BackfillMeta = store.backfill_meta("items").unwrap().unwrap();
    let done = store.done_ranges("items", &meta.table).unwrap();
    assert!(meta.complete);
    assert_eq!(meta.rows, ROWS, "the planned row count\n{log}");
    let full = ROWS / CHUNK;
    assert_eq!(meta.range_count() as u64, full + 1, "{meta:?}");
    // The cuts are every CHUNK-th key in numeric order: 3 * CHUNK, 3 * 2 * CHUNK, ...
    let cuts: Vec<i128> = meta.ranges.iter().filter_map(|(_, hi)| *hi).collect();
    let expected: Vec<i128> = (1..=full).map(|i| (3 * CHUNK * i) as i128).collect();
    assert_eq!(cuts, expected);
    let mut held: Vec<u64> = done.values().copied().collect();
    held.sort_unstable();
    let mut want = vec![CHUNK; full as usize];
    want.push(ROWS % CHUNK);
    want.sort_unstable();
    assert_eq!(held, want, "rows per range: {done:?}");
    assert_eq!(
        target_rows(),
        format!("{ROWS} {}", 3 * ROWS * (ROWS + 1) / 2)
    );
}

#[test]
fn postgres_integer_keys_are_cut_into_ranges_of_exactly_chunk_rows() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(&format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, name text); \
             INSERT INTO items SELECT 3 * g, 'item ' || g FROM generate_series(1, {ROWS}) g"
        ))
        .unwrap();
    let target = shared_mariadb().create_database();
    target
        .sql("CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT)")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        ("postgres", &source.url(), "public.items"),
        ("mysql", &target.url(), &format!("{}.items", target.name())),
        &dir.path().join("state"),
    );
    backfill_and_check_ranges(&text, dir.path(), || {
        target
            .sql("SELECT count(*), sum(id) FROM items")
            .unwrap()
            .trim()
            .replace('\t', " ")
    });
}

#[test]
fn mariadb_integer_keys_are_cut_into_ranges_of_exactly_chunk_rows() {
    let source = shared_mariadb().create_database();
    source
        .sql(&format!(
            "CREATE TABLE items (id BIGINT UNSIGNED PRIMARY KEY, name TEXT); \
             INSERT INTO items SELECT 3 * seq, concat('item ', seq) FROM seq_1_to_{ROWS}"
        ))
        .unwrap();
    let target = shared_pg().create_database();
    target
        .execute_as_duplex("CREATE TABLE items (id numeric(20) PRIMARY KEY, name text)")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        ("mysql", &source.url(), &format!("{}.items", source.name())),
        ("postgres", &target.url(), "public.items"),
        &dir.path().join("state"),
    );
    backfill_and_check_ranges(&text, dir.path(), || {
        target
            .psql("SELECT count(*), sum(id) FROM items")
            .unwrap()
            .trim()
            .replace('|', " ")
    });
}
