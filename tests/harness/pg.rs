//! PostgreSQL helpers shared by the end-to-end tests of one PostgreSQL source replicating one
//! table into one PostgreSQL target, and by those that stop on a proof.

use duplex_testkit::PgDatabase;

use super::{Duplex, commit_position, rows, wait_replicated};

/// A one-way configuration `<source> -> wms` of `public.<table>` on both sides (the source
/// site named after its database, so parallel tests never share a slot).
pub fn one_way_config(source: &PgDatabase, wms: &PgDatabase, table: &str) -> String {
    format!(
        "[sites.{src}]\nkind = \"postgres\"\nurl = \"{src_url}\"\n\n\
         [sites.wms]\nkind = \"postgres\"\nurl = \"{wms_url}\"\n\n\
         [[mappings]]\nname = \"{table}\"\ntables = {{ {src} = \"public.{table}\", wms = \"public.{table}\" }}\n\
         direction = \"{src}->wms\"\n",
        src = source.name(),
        src_url = source.url(),
        wms_url = wms.url(),
    )
}

/// A two-way configuration of `public.<table>` between two PostgreSQL databases (sites named
/// after them).
pub fn two_way_config(a: &PgDatabase, b: &PgDatabase, table: &str) -> String {
    format!(
        "[sites.{a}]\nkind = \"postgres\"\nurl = \"{au}\"\n\n\
         [sites.{b}]\nkind = \"postgres\"\nurl = \"{bu}\"\n\n\
         [[mappings]]\nname = \"{table}\"\ntables = {{ {a} = \"public.{table}\", {b} = \"public.{table}\" }}\n\
         direction = \"both\"\n",
        a = a.name(),
        au = a.url(),
        b = b.name(),
        bu = b.url(),
    )
}

/// Every row of `table`, ordered by its first column.
pub fn table_rows(db: &PgDatabase, table: &str) -> Vec<Vec<String>> {
    rows(
        &db.psql(&format!("SELECT * FROM {table} ORDER BY 1"))
            .unwrap(),
        '|',
    )
}

/// Waits (on the slot's proof, see [`wait_replicated`]) until `target`'s `table` equals the
/// source's, row for row and column for column.
pub fn wait_equal(
    source: &PgDatabase,
    target: &PgDatabase,
    duplex: &mut Duplex,
    table: &str,
    what: &str,
) {
    let expected = table_rows(source, table);
    let commit = commit_position(source);
    wait_replicated(source, duplex, commit, what, || {
        let got = table_rows(target, table);
        if got == expected {
            Ok(())
        } else {
            Err(format!("expected {expected:?}, got {got:?}"))
        }
    });
}

/// Drops every replication slot of `db`'s database (a two-way test's, named by the engine).
pub fn drop_all_slots(db: &PgDatabase) {
    for slot in rows(
        &db.psql("SELECT slot_name FROM pg_replication_slots WHERE database = current_database()")
            .unwrap(),
        '|',
    ) {
        db.psql(&format!("SELECT pg_drop_replication_slot('{}')", slot[0]))
            .unwrap();
    }
}
