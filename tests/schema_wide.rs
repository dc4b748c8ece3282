//! Schema-wide mappings (issue 13): `tables = { store = "public.*", erp = "erp.*" }` with
//! include / exclude globs stands for one mapping per table present on every site; `check`
//! lists the expansion and the tables only one side has; backfill and streaming replicate
//! exactly the expanded tables.

mod harness;

use duplex_testkit::{shared_mariadb, shared_pg};
use harness::{Duplex, REPLICATION_GUARD, rows, wait_for};

#[test]
fn a_schema_wide_mapping_replicates_every_matching_table_present_on_both_sides() {
    let store = shared_pg().create_database();
    for table in ["a", "b", "c_tmp", "only_store", "zz"] {
        store
            .execute_as_duplex(&format!(
                "CREATE TABLE {table} (id int PRIMARY KEY, v text)"
            ))
            .unwrap();
    }
    let erp = shared_mariadb().create_database();
    for table in ["a", "b", "c_tmp", "only_erp", "zz"] {
        erp.sql(&format!(
            "CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB"
        ))
        .unwrap();
    }
    store
        .psql("INSERT INTO a VALUES (1, 'a1'); INSERT INTO b VALUES (1, 'b1'); INSERT INTO zz VALUES (1, 'z')")
        .unwrap();
    let config = format!(
        "[sites.{s}]\nkind = \"postgres\"\nurl = \"{su}\"\n\n\
         [sites.erp]\nkind = \"mysql\"\nurl = \"{eu}\"\n\n\
         [[mappings]]\nname = \"shop\"\ntables = {{ {s} = \"public.*\", erp = \"{e}.*\" }}\n\
         direction = \"{s}->erp\"\ninclude = [\"a\", \"b\", \"c*\", \"only_*\"]\nexclude = [\"*_tmp\"]\n",
        s = store.name(),
        su = store.url(),
        e = erp.name(),
        eu = erp.url(),
    );
    let mut duplex = Duplex::new(&config);

    let out = duplex.command(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("expands to 2 table(s), each its own mapping shop.<table>: a, b"),
        "{text}"
    );
    assert!(
        text.contains(&format!("table only_store is only on {}", store.name())),
        "{text}"
    );
    assert!(text.contains("table only_erp is only on erp"), "{text}");
    assert!(
        !text.contains("c_tmp"),
        "an excluded table is listed:\n{text}"
    );
    assert!(
        !text.contains("mapping shop.zz"),
        "a table not included is listed:\n{text}"
    );

    let out = duplex.command(&["backfill"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    duplex.start();
    duplex.wait_link_started();
    store
        .psql("INSERT INTO a VALUES (2, 'a2'); UPDATE b SET v = 'b1x' WHERE id = 1; INSERT INTO only_store VALUES (1, 'x'); INSERT INTO zz VALUES (2, 'z')")
        .unwrap();
    let my = |table: &str| {
        rows(
            &erp.sql(&format!("SELECT id, v FROM {table} ORDER BY id"))
                .unwrap(),
            '\t',
        )
    };
    wait_for("the expanded tables", REPLICATION_GUARD, || {
        duplex.assert_running();
        let got = (my("a"), my("b"));
        let want = (
            vec![
                vec!["1".to_owned(), "a1".to_owned()],
                vec!["2".to_owned(), "a2".to_owned()],
            ],
            vec![vec!["1".to_owned(), "b1x".to_owned()]],
        );
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
    assert!(my("zz").is_empty(), "a table not included was replicated");
    assert!(my("c_tmp").is_empty(), "an excluded table was replicated");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    assert!(
        duplex.log_text().contains("schema-wide mapping expanded"),
        "{}",
        duplex.log_text()
    );
}
