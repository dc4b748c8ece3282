//! Two two-way merge engines with their own state directories on the same sites number their
//! writes from the same `merge:<site>` counter, so the writes of one numbered at or below the
//! other's are taken as already applied and lost (issue 11). The engine claims every site in
//! `duplex.claims` for its deployment: a second engine is refused at start, naming the owner
//! and the fix; `duplex run --take-over-from <deployment>` moves the engine deliberately and
//! numbers its writes after the previous owner's; an owner whose claim was taken stops rather
//! than write.

mod harness;

use duplex_testkit::{MariaDatabase, PgDatabase, shared_mariadb, shared_pg};
use harness::{Duplex, REPLICATION_GUARD, rows, wait_for};

fn config(store: &PgDatabase, erp: &MariaDatabase) -> String {
    format!(
        "[sites.{s}]\nkind = \"postgres\"\nurl = \"{su}\"\n\n\
         [sites.{e}]\nkind = \"mysql\"\nurl = \"{eu}\"\n\n\
         [[mappings]]\nname = \"items\"\ntables = {{ {s} = \"public.items\", {e} = \"{e}.items\" }}\n\
         direction = \"both\"\n",
        s = store.name(),
        su = store.url(),
        e = erp.name(),
        eu = erp.url(),
    )
}

fn sites() -> (PgDatabase, MariaDatabase) {
    let store = shared_pg().create_database();
    store
        .execute_as_duplex("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql("CREATE TABLE items (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB")
        .unwrap();
    (store, erp)
}

fn ids(store: &PgDatabase, erp: &MariaDatabase) -> (Vec<String>, Vec<String>) {
    let a = rows(
        &store.psql("SELECT id FROM items ORDER BY id").unwrap(),
        '|',
    );
    let b = rows(&erp.sql("SELECT id FROM items ORDER BY id").unwrap(), '\t');
    (
        a.into_iter().map(|r| r[0].clone()).collect(),
        b.into_iter().map(|r| r[0].clone()).collect(),
    )
}

/// Waits until both sites hold ids 1..=count, while `duplex` runs.
fn wait_same(store: &PgDatabase, erp: &MariaDatabase, duplex: &mut Duplex, count: usize) {
    let want: Vec<String> = (1..=count).map(|i| i.to_string()).collect();
    wait_for("both sites to hold every row", REPLICATION_GUARD, || {
        duplex.assert_running();
        let (a, b) = ids(store, erp);
        if a == want && b == want {
            Ok(())
        } else {
            Err(format!("store {a:?}, erp {b:?}"))
        }
    });
}

fn insert(
    store: &PgDatabase,
    erp: &MariaDatabase,
    site_is_erp: bool,
    range: std::ops::RangeInclusive<u32>,
) {
    for i in range {
        let sql = format!("INSERT INTO items VALUES ({i}, 'v{i}')");
        if site_is_erp {
            erp.sql(&sql).unwrap();
        } else {
            store.execute_as_duplex(&sql).unwrap();
        }
    }
}

/// Asserts `duplex` stopped by itself, refused by the claim of another deployment, and returns
/// the owner the refusal names.
fn refused_owner(duplex: &mut Duplex) -> String {
    let code = duplex.wait_exit();
    let log = duplex.log_text();
    assert_ne!(code, 0, "{log}");
    let owner = log
        .split("duplex.claims names deployment ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the refusal does not name the owning deployment:\n{log}"))
        .to_owned();
    assert!(
        log.contains(&format!("--take-over-from {owner}")),
        "the refusal does not say how to take over:\n{log}"
    );
    owner
}

fn drop_slots(store: &PgDatabase) {
    for slot in rows(
        &store
            .psql("SELECT slot_name FROM pg_replication_slots WHERE database = current_database()")
            .unwrap(),
        '|',
    ) {
        store
            .psql(&format!("SELECT pg_drop_replication_slot('{}')", slot[0]))
            .unwrap();
    }
}

#[test]
fn a_second_engine_is_refused_by_the_claim_and_a_take_over_loses_nothing() {
    let (store, erp) = sites();
    let text = config(&store, &erp);
    let mut first = Duplex::run(&text);
    harness::sites::wait_reading(&mut first, 2, REPLICATION_GUARD);

    // Before anything was written, a second engine with its own state directory.
    let mut second = Duplex::run(&text);
    let first_id = refused_owner(&mut second);
    insert(&store, &erp, false, 1..=5);
    insert(&store, &erp, true, 6..=10);
    wait_same(&store, &erp, &mut first, 10);

    // Moved deliberately: the first stops once it has caught up; what the store committed
    // meanwhile waits in the slot the new engine takes over.
    assert_eq!(first.terminate(), 0, "{}", first.log_text());
    insert(&store, &erp, false, 11..=15);
    second.start_with(&["--take-over-from", &first_id]);
    harness::sites::wait_reading(&mut second, 2, REPLICATION_GUARD);
    insert(&store, &erp, true, 16..=20);
    insert(&store, &erp, false, 21..=25);
    wait_same(&store, &erp, &mut second, 25);

    // The first engine is now the one refused.
    first.start();
    let second_id = refused_owner(&mut first);
    assert_ne!(second_id, first_id);

    // A third takes over while the second still runs: the second stops at its next write
    // instead of writing, and the third carries on.
    let mut third = Duplex::new(&text);
    third.start_with(&["--take-over-from", &second_id]);
    wait_for(
        "the third engine to take the claims",
        REPLICATION_GUARD,
        || {
            third.assert_running();
            let log = third.log_text();
            if log.contains("took over the merge engine's claim")
                && log.contains("merge engine reading site")
            {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
    insert(&store, &erp, true, 26..=26);
    let code = second.wait_exit();
    let log = second.log_text();
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains("was taken by deployment"),
        "the old owner does not say why it stopped:\n{log}"
    );
    wait_same(&store, &erp, &mut third, 26);
    assert_eq!(third.terminate(), 0, "{}", third.log_text());
    drop_slots(&store);
}
