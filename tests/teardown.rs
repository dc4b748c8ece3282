//! `duplex teardown` removes what one deployment created (slots, publications, its rows of
//! duplex.positions and duplex.claims, the duplex schema/database when nothing else is in it)
//! and nothing of another deployment on the same servers; `--dry-run` removes nothing; and
//! `duplex check` warns about inactive duplex slots with the WAL they keep. Dedicated servers:
//! teardown drops the server-wide `duplex` database of MariaDB, which the shared server's other
//! tests use.

mod harness;

use duplex_testkit::{MariaDatabase, MariaOptions, MariaServer, PgDatabase, PgOptions, PgServer};
use harness::{Duplex, REPLICATION_GUARD, rows, wait_for};

/// Waits until `query` on `db` prints `want`.
fn wait_pg(db: &PgDatabase, duplex: &mut Duplex, query: &str, want: &str) {
    wait_for(want, REPLICATION_GUARD, || {
        duplex.assert_running();
        let got = db.psql(query).map_err(|e| e.to_string())?;
        if got.trim() == want { Ok(()) } else { Err(got) }
    });
}

fn wait_my(db: &MariaDatabase, duplex: &mut Duplex, query: &str, want: &str) {
    wait_for(want, REPLICATION_GUARD, || {
        duplex.assert_running();
        let got = db.sql(query).map_err(|e| e.to_string())?;
        if got.trim() == want { Ok(()) } else { Err(got) }
    });
}

fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Duplex's slots on the server (any database), by name.
fn slots(pg: &PgServer) -> Vec<String> {
    rows(
        &pg.psql(
            "postgres",
            "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'duplex%' ORDER BY 1",
        )
        .unwrap(),
        '|',
    )
    .into_iter()
    .map(|r| r[0].clone())
    .collect()
}

fn one(db: &PgDatabase, query: &str) -> String {
    db.psql(query).unwrap().trim().to_owned()
}

#[test]
fn teardown_removes_one_deployments_objects_and_keeps_anothers() {
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let my = MariaServer::start(MariaOptions::default()).unwrap();
    // Deployment A: two-way between a_pg and a_my. Deployment B: one-way b_pg -> b_my.
    let a_pg = pg.create_database();
    a_pg.execute_as_duplex("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .unwrap();
    let a_my = my.create_database();
    a_my.sql("CREATE TABLE items (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB")
        .unwrap();
    let b_pg = pg.create_database();
    b_pg.execute_as_duplex("CREATE TABLE things (id int PRIMARY KEY, v text)")
        .unwrap();
    let b_my = my.create_database();
    b_my.sql("CREATE TABLE things (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB")
        .unwrap();
    let site = |kind: &str, name: &str, url: String| {
        format!("[sites.{name}]\nkind = \"{kind}\"\nurl = \"{url}\"\n\n")
    };
    let config_a = format!(
        "{}{}[[mappings]]\nname = \"items\"\ntables = {{ {p} = \"public.items\", {m} = \"{m}.items\" }}\n\
         direction = \"both\"\n",
        site("postgres", a_pg.name(), a_pg.url()),
        site("mysql", a_my.name(), a_my.url()),
        p = a_pg.name(),
        m = a_my.name(),
    );
    let config_b = format!(
        "{}{}[[mappings]]\nname = \"things\"\ntables = {{ {p} = \"public.things\", {m} = \"{m}.things\" }}\n\
         direction = \"{p}->{m}\"\n",
        site("postgres", b_pg.name(), b_pg.url()),
        site("mysql", b_my.name(), b_my.url()),
        p = b_pg.name(),
        m = b_my.name(),
    );

    let mut a = Duplex::run(&config_a);
    wait_for("A's slot streamed from", REPLICATION_GUARD, || {
        a.assert_running();
        let n = one(
            &a_pg,
            "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r \
             ON r.pid = s.active_pid WHERE s.database = current_database() \
             AND s.confirmed_flush_lsn IS NOT NULL AND r.sent_lsn IS NOT NULL",
        );
        if n == "1" { Ok(()) } else { Err(a.log_text()) }
    });
    a_pg.execute_as_duplex("INSERT INTO items VALUES (1, 'pg')")
        .unwrap();
    wait_my(&a_my, &mut a, "SELECT id, v FROM items", "1\tpg");
    a_my.sql("INSERT INTO items VALUES (2, 'my')").unwrap();
    wait_pg(
        &a_pg,
        &mut a,
        "SELECT string_agg(id || v, ',' ORDER BY id) FROM items",
        "1pg,2my",
    );

    let mut b = Duplex::run(&config_b);
    wait_for("B's slot streamed from", REPLICATION_GUARD, || {
        b.assert_running();
        let n = one(
            &b_pg,
            "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r \
             ON r.pid = s.active_pid WHERE s.database = current_database() \
             AND s.confirmed_flush_lsn IS NOT NULL AND r.sent_lsn IS NOT NULL",
        );
        if n == "1" { Ok(()) } else { Err(b.log_text()) }
    });
    b_pg.execute_as_duplex("INSERT INTO things VALUES (1, 'b')")
        .unwrap();
    wait_my(&b_my, &mut b, "SELECT id, v FROM things", "1\tb");
    assert_eq!(b.terminate(), 0, "{}", b.log_text());

    // While A runs, its state directory is in use: refused, nothing removed.
    let refused = a.command(&["teardown"]);
    let text = output_text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    assert!(text.contains("must be stopped first"), "{text}");
    assert_eq!(slots(&pg).len(), 2);
    assert_eq!(a.terminate(), 0, "{}", a.log_text());

    // A slot being streamed from (here by pg_recvlogical) is refused, naming it.
    let a_slot = format!("duplex_{0}_{0}", a_pg.name());
    let mut reader = std::process::Command::new("pg_recvlogical")
        .arg("-d")
        .arg(a_pg.url())
        .args(["--slot", &a_slot, "--start", "-o", "proto_version=1", "-o"])
        .arg(format!("publication_names={a_slot}"))
        .args(["-f", "/dev/null"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let active = format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{a_slot}' AND active"
    );
    wait_for("pg_recvlogical on A's slot", REPLICATION_GUARD, || {
        if one(&a_pg, &active) == "1" {
            Ok(())
        } else {
            Err("inactive".into())
        }
    });
    let refused = a.command(&["teardown"]);
    let text = output_text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("replication slot {a_slot} is being streamed from"))
            && text.contains("nothing was removed"),
        "{text}"
    );
    reader.kill().unwrap();
    reader.wait().unwrap();
    wait_for("A's slot released", REPLICATION_GUARD, || {
        if one(&a_pg, &active) == "0" {
            Ok(())
        } else {
            Err("active".into())
        }
    });
    assert_eq!(slots(&pg).len(), 2);
    assert_eq!(
        a_my.sql("SELECT count(*) FROM duplex.claims")
            .unwrap()
            .trim(),
        "1"
    );

    // check warns about both inactive slots: A's own with its site, B's as another's.
    let check = a.command(&["check"]);
    let text = output_text(&check);
    let b_slot = format!("duplex_{0}_{0}", b_pg.name());
    assert!(
        text.contains(&format!(
            "replication slot {a_slot} (site {}) is not active and retains",
            a_pg.name()
        )) && text.contains(&format!("duplex teardown --site {}", a_pg.name())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "replication slot {b_slot} (database {}) is not active and retains",
            b_pg.name()
        )) && text.contains(&format!("pg_drop_replication_slot('{b_slot}')")),
        "{text}"
    );

    // A dry run says what would go and removes nothing.
    let dry = a.command(&["teardown", "--dry-run"]);
    let text = output_text(&dry);
    assert_eq!(dry.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!("would remove replication slot {a_slot}"))
            && text.contains(&format!("would remove publication {a_slot}"))
            && text.contains("would remove schema duplex")
            && text.contains("would remove duplex.claims row merge:"),
        "{text}"
    );
    assert!(
        text.contains("kept database duplex: it still holds"),
        "{text}"
    );
    let mut both = vec![a_slot.clone(), b_slot.clone()];
    both.sort();
    assert_eq!(slots(&pg), both);
    assert_eq!(one(&a_pg, "SELECT count(*) FROM pg_publication"), "1");
    assert_eq!(
        one(
            &a_pg,
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'duplex'"
        ),
        "1"
    );

    // The teardown of A.
    let done = a.command(&["teardown"]);
    let text = output_text(&done);
    assert_eq!(done.status.code(), Some(0), "{text}");
    assert!(text.contains("Next: the state directory"), "{text}");
    assert_eq!(slots(&pg), vec![b_slot.clone()], "{text}");
    assert_eq!(one(&a_pg, "SELECT count(*) FROM pg_publication"), "0");
    assert_eq!(
        one(
            &a_pg,
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'duplex'"
        ),
        "0",
        "{text}"
    );
    // MariaDB's duplex database is server-wide: B's row keeps it, A's rows are gone.
    let left = a_my
        .sql("SELECT source FROM duplex.positions ORDER BY 1")
        .unwrap();
    let left: Vec<&str> = left.lines().collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        left[0].starts_with(&format!("{}@", b_pg.name())),
        "{left:?}"
    );
    assert_eq!(
        a_my.sql("SELECT count(*) FROM duplex.claims")
            .unwrap()
            .trim(),
        "0"
    );
    // B's objects are untouched.
    assert_eq!(one(&b_pg, "SELECT count(*) FROM pg_publication"), "1");

    // The teardown of B leaves nothing of duplex on either server.
    let done = b.command(&["teardown"]);
    let text = output_text(&done);
    assert_eq!(done.status.code(), Some(0), "{text}");
    assert!(text.contains("removed database duplex"), "{text}");
    assert_eq!(slots(&pg), Vec::<String>::new());
    assert_eq!(one(&b_pg, "SELECT count(*) FROM pg_publication"), "0");
    assert_eq!(
        my.sql(
            "mysql",
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'duplex'"
        )
        .unwrap()
        .trim(),
        "0"
    );
    // A second teardown finds nothing.
    let again = a.command(&["teardown"]);
    let text = output_text(&again);
    assert_eq!(again.status.code(), Some(0), "{text}");
    assert!(text.contains("Removed 0 object(s)"), "{text}");
}
