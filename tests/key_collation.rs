//! `duplex check` warns when a key column of a one-way mapping is compared differently on the
//! target than on the source (issue 12): PostgreSQL `text` keys (exact) into a MariaDB
//! `utf8mb4_general_ci` key ('abc' and 'ABC' would be one key there) and into `utf8mb4_bin`
//! (which still pads: 'b' and 'b ' are one key), naming mapping, tables, column, both
//! collations and the fix; not for `utf8mb4_nopad_bin`.

mod harness;

use duplex_testkit::{shared_mariadb, shared_pg};
use harness::Duplex;

#[test]
fn check_warns_about_a_case_or_pad_insensitive_target_key_and_not_an_exact_one() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(
            "CREATE TABLE codes_ci (code text PRIMARY KEY, v int); \
             CREATE TABLE codes_bin (code text PRIMARY KEY, v int); \
             CREATE TABLE codes_exact (code text PRIMARY KEY, v int)",
        )
        .unwrap();
    let target = shared_mariadb().create_database();
    for (table, collation) in [
        ("codes_ci", "utf8mb4_general_ci"),
        ("codes_bin", "utf8mb4_bin"),
        ("codes_exact", "utf8mb4_nopad_bin"),
    ] {
        target
            .sql(&format!(
                "CREATE TABLE {table} (code VARCHAR(20) CHARACTER SET utf8mb4 COLLATE {collation} PRIMARY KEY, v INT) ENGINE=InnoDB"
            ))
            .unwrap();
    }
    let mut config = format!(
        "[sites.store]\nkind = \"postgres\"\nurl = \"{}\"\n\n[sites.erp]\nkind = \"mysql\"\nurl = \"{}\"\n\n",
        source.url(),
        target.url()
    );
    for table in ["codes_ci", "codes_bin", "codes_exact"] {
        config.push_str(&format!(
            "[[mappings]]\nname = \"{table}\"\ntables = {{ store = \"public.{table}\", erp = \"{db}.{table}\" }}\ndirection = \"store->erp\"\n\n",
            db = target.name()
        ));
    }
    let duplex = Duplex::new(&config);
    let out = duplex.command(&["check"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    let db = target.name();
    assert!(
        text.contains(&format!(
            "warn  key column store:public.codes_ci.code collation default (C) (exact) -> erp:{db}.codes_ci.code collation utf8mb4_general_ci (ignores letter case and trailing spaces)"
        )),
        "{text}"
    );
    assert!(
        text.contains(
            "mapping codes_ci: keys that differ on store only in letter case and trailing spaces are one key on erp"
        ) && text.contains(&format!(
            "ALTER TABLE `{db}`.`codes_ci` MODIFY `code` varchar(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "-> erp:{db}.codes_bin.code collation utf8mb4_bin (ignores trailing spaces)"
        )) && text.contains("mapping codes_bin: keys that differ on store only in trailing spaces"),
        "{text}"
    );
    assert!(
        !text.contains("codes_exact.code collation"),
        "an exact key was warned about:\n{text}"
    );
}
