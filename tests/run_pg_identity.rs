//! `duplex run` into PostgreSQL tables keyed by a `GENERATED ALWAYS AS IDENTITY` column, the
//! form modern schemas use, end to end through the real binary: PostgreSQL refuses an INSERT
//! that names such a column without `OVERRIDING SYSTEM VALUE` and any UPDATE that sets it, so
//! duplex must write the source's keys with the one and never set the column with the other.

mod harness;

use std::time::Duration;

use duplex_testkit::{PgDatabase, shared_pg};
use harness::{Duplex, commit_position, drop_slot, rows, wait_replicated, wait_slot_active};

/// Single-row inserts (INSERT), a run of 500 (COPY), single and grouped updates, deletes:
/// into one target as the duplex role (the source's order) and one as the superuser (written
/// table by table), both keyed by `GENERATED ALWAYS AS IDENTITY`. Both end equal to the
/// source; a mapped generated column is refused by name when the link starts.
#[test]
fn a_generated_always_identity_key_on_the_target_gets_the_sources_keys() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(
            "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, note text)",
        )
        .unwrap();
    const TARGET: &str = "CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         qty int NOT NULL, note text)";
    let ordered = shared_pg().create_database();
    ordered.execute_as_duplex(TARGET).unwrap();
    let fast = shared_pg().create_database();
    fast.psql(TARGET).unwrap();
    let site =
        |name: &str, url: &str| format!("[sites.{name}]\nkind = \"postgres\"\nurl = \"{url}\"\n\n");
    let mapping = |target: &str| {
        format!(
            "[[mappings]]\nname = \"items_{target}\"\ntables = {{ {src} = \"public.items\", \
             {target} = \"public.items\" }}\ndirection = \"{src}->{target}\"\n\n",
            src = source.name()
        )
    };
    let config = site(source.name(), &source.url())
        + &site("ordered", &ordered.url())
        + &site("fast", &fast.admin_url())
        + &mapping("ordered")
        + &mapping("fast");
    let mut duplex = Duplex::run(&config);
    wait_slot_active(&source, &mut duplex);

    source
        .psql(
            "INSERT INTO items VALUES (1, 1, 'one');
             INSERT INTO items VALUES (2, 2, NULL), (3, 3, 'three');
             INSERT INTO items SELECT g, g % 7, 'bulk ' || g FROM generate_series(100, 599) g;
             UPDATE items SET qty = qty + 10 WHERE id = 1;
             UPDATE items SET note = 'grouped', qty = qty + 1 WHERE id BETWEEN 100 AND 199;
             BEGIN;
             UPDATE items SET note = 'in a transaction' WHERE id = 2;
             DELETE FROM items WHERE id BETWEEN 500 AND 549;
             COMMIT;
             DELETE FROM items WHERE id = 3;",
        )
        .unwrap();
    let all = |db: &PgDatabase| {
        rows(
            &db.psql("SELECT id, qty, coalesce(note, '<null>') FROM items ORDER BY id")
                .unwrap(),
            '|',
        )
    };
    let expected = all(&source);
    assert_eq!(expected.len(), 2 + 450);
    let commit = commit_position(&source);
    for target in [&ordered, &fast] {
        wait_replicated(
            &source,
            &mut duplex,
            commit,
            &format!("{} to equal the source", target.name()),
            || {
                let got = all(target);
                if got == expected {
                    Ok(())
                } else {
                    Err(format!("{} rows of {}", got.len(), expected.len()))
                }
            },
        );
    }
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());

    // A generated column cannot be written: the link refuses to start, naming it.
    let computed = shared_pg().create_database();
    computed
        .execute_as_duplex(
            "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, \
             note text GENERATED ALWAYS AS ('qty ' || qty) STORED)",
        )
        .unwrap();
    let refused = site(source.name(), &source.url())
        + &site("computed", &computed.url())
        + &mapping("computed");
    let mut duplex = Duplex::run(&refused);
    let code = harness::wait_for("duplex to stop", Duration::from_secs(120), || {
        duplex.exit_code().ok_or_else(|| "running".to_owned())
    });
    assert_ne!(code, 0);
    let log = duplex.log_text();
    assert!(
        log.contains("column \"note\" is a generated column"),
        "{log}"
    );
    drop_slot(&source);
}
