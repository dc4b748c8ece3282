//! Foreign keys on targets (issue 12): `duplex backfill` then `duplex run` into an
//! orders / order_lines schema whose `order_lines.order_id` references `orders(id)` on the
//! target, both ways, with the child table's mapping listed first (so an unordered copy writes
//! children before their parents):
//!
//! - PostgreSQL -> MariaDB (`foreign_key_checks = 0` in duplex's sessions), the source and the
//!   target both `ON DELETE CASCADE`: the source's cascade arrives as the row deletes PostgreSQL
//!   logged, nothing is deleted twice;
//! - MariaDB -> PostgreSQL with a role granted `SET ON PARAMETER session_replication_role`
//!   (checks off), target `ON DELETE CASCADE`: a parent deleted before its children in one
//!   transaction;
//! - MariaDB -> PostgreSQL with a role that may not set it: dependency order for the backfill,
//!   the source's order and a DEFERRABLE key for streaming (a child inserted before its parent);
//! - a self-referencing key in that mode is refused by the backfill and warned about by check.
//!
//! Every target is compared row for row with its source; `check` names the mode per target.

mod harness;

use std::time::Duration;

use duplex_testkit::{MariaDatabase, PgDatabase, shared_mariadb, shared_pg};
use harness::{Duplex, rows, wait_for};

const WAIT: Duration = Duration::from_secs(120);
/// Orders; each has three lines, so order_lines spans several ranges of `CHUNK` rows.
const ORDERS: u32 = 2_000;
const CHUNK: &str = "500";

/// A one-way configuration `src -> dst` with the order_lines mapping listed first.
fn config(src: (&str, &str, &str), dst: (&str, &str, &str), schemas: (&str, &str)) -> String {
    let mut text = String::new();
    for (name, kind, url) in [src, dst] {
        text.push_str(&format!(
            "[sites.{name}]\nkind = \"{kind}\"\nurl = \"{url}\"\n\n"
        ));
    }
    for table in ["order_lines", "orders"] {
        text.push_str(&format!(
            "[[mappings]]\nname = \"{table}\"\ntables = {{ {s} = \"{ss}.{table}\", {d} = \"{ds}.{table}\" }}\ndirection = \"{s}->{d}\"\n\n",
            s = src.0,
            d = dst.0,
            ss = schemas.0,
            ds = schemas.1,
        ));
    }
    text
}

/// A login role of the test's own on the shared PostgreSQL server, owning nothing but what
/// duplex creates, with the privileges a target role needs in `db`; dropped (with what it owns
/// and every grant) on drop.
struct PgRole<'a> {
    db: &'a PgDatabase,
    name: String,
}

impl<'a> PgRole<'a> {
    fn create(db: &'a PgDatabase, may_relax: bool) -> PgRole<'a> {
        let name = format!("r_{}", db.name());
        let mut sql = format!(
            "CREATE ROLE {name} LOGIN REPLICATION PASSWORD 'pw'; \
             GRANT CREATE, CONNECT ON DATABASE {db} TO {name}; \
             GRANT USAGE ON SCHEMA public TO {name}; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {name};",
            db = db.name()
        );
        if may_relax {
            sql.push_str(&format!(
                " GRANT SET ON PARAMETER session_replication_role TO {name};"
            ));
        }
        db.psql(&sql).unwrap();
        PgRole {
            db,
            name: name.clone(),
        }
    }

    fn url(&self) -> String {
        format!(
            "postgres://{}:pw@127.0.0.1:{}/{}",
            self.name,
            self.db.port(),
            self.db.name()
        )
    }
}

impl Drop for PgRole<'_> {
    fn drop(&mut self) {
        let sql = format!("DROP OWNED BY {n} CASCADE; DROP ROLE {n};", n = self.name);
        if let Err(e) = self.db.psql(&sql) {
            eprintln!("could not drop role {}: {e}", self.name);
        }
    }
}

fn pg_rows(db: &PgDatabase, table: &str) -> Vec<Vec<String>> {
    rows(
        &db.psql(&format!("SELECT * FROM public.{table} ORDER BY 1"))
            .unwrap(),
        '|',
    )
}

fn my_rows(db: &MariaDatabase, table: &str) -> Vec<Vec<String>> {
    rows(
        &db.sql(&format!("SELECT * FROM {table} ORDER BY 1"))
            .unwrap(),
        '\t',
    )
}

/// Waits until both tables on the target equal the source's, row for row.
fn wait_same(
    what: &str,
    duplex: &mut Duplex,
    source: impl Fn(&str) -> Vec<Vec<String>>,
    target: impl Fn(&str) -> Vec<Vec<String>>,
) {
    wait_for(what, WAIT, || {
        duplex.assert_running();
        for table in ["orders", "order_lines"] {
            let (s, t) = (source(table), target(table));
            if s != t {
                return Err(format!(
                    "{table}: source {} rows, target {} rows; first difference: {:?}",
                    s.len(),
                    t.len(),
                    s.iter().zip(&t).find(|(a, b)| a != b)
                ));
            }
        }
        Ok(())
    });
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `duplex backfill` with small ranges and four workers; asserts it succeeded.
fn backfill(duplex: &Duplex) {
    let out = duplex.command(&["backfill", "--jobs", "4", "--chunk-rows", CHUNK]);
    assert!(out.status.success(), "backfill failed:\n{}", text(&out));
}

fn check(duplex: &Duplex) -> String {
    let out = duplex.command(&["check"]);
    let text = text(&out);
    assert_eq!(out.status.code(), Some(0), "check failed:\n{text}");
    text
}

#[test]
fn postgres_to_mariadb_with_cascading_foreign_keys_on_both() {
    let source = shared_pg().create_database();
    source
        .execute_as_duplex(&format!(
            "CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL); \
             CREATE TABLE order_lines (id int PRIMARY KEY, \
                 order_id int NOT NULL REFERENCES orders(id) ON DELETE CASCADE, qty int NOT NULL); \
             INSERT INTO orders SELECT g, 'new' FROM generate_series(1, {ORDERS}) g; \
             INSERT INTO order_lines SELECT g, (g - 1) / 3 + 1, g % 7 FROM generate_series(1, {}) g",
            ORDERS * 3
        ))
        .unwrap();
    let target = shared_mariadb().create_database();
    target
        .sql(
            "CREATE TABLE products (id INT PRIMARY KEY) ENGINE=InnoDB; \
             CREATE TABLE orders (id INT PRIMARY KEY, status TEXT NOT NULL) ENGINE=InnoDB; \
             CREATE TABLE order_lines (id INT PRIMARY KEY, order_id INT NOT NULL, qty INT NOT NULL, \
               CONSTRAINT order_lines_order_id_fkey FOREIGN KEY (order_id) REFERENCES orders(id) ON DELETE CASCADE, \
               CONSTRAINT order_lines_qty_product FOREIGN KEY (qty) REFERENCES products(id)) ENGINE=InnoDB",
        )
        .unwrap();
    let src = source.name().to_owned();
    let mut duplex = Duplex::new(&config(
        (&src, "postgres", &source.url()),
        ("erp", "mysql", &target.url()),
        ("public", target.name()),
    ));

    let report = check(&duplex);
    assert!(
        report.contains(
            "ok    foreign keys: checks off in duplex's sessions (foreign_key_checks = 0); 2 foreign key(s)"
        ),
        "{report}"
    );
    // order_lines.qty references products, which no mapping carries: named, with the fix.
    assert!(
        report.contains(&format!(
            "warn  foreign key order_lines_qty_product on {}.order_lines references {}.products, which no mapping carries to site erp",
            target.name(),
            target.name()
        )),
        "{report}"
    );

    backfill(&duplex);
    let pg = |t: &str| pg_rows(&source, t);
    let my = |t: &str| my_rows(&target, t);
    assert_eq!(my("order_lines").len(), (ORDERS * 3) as usize);
    assert_eq!(pg("orders"), my("orders"));
    assert_eq!(pg("order_lines"), my("order_lines"));

    duplex.start();
    duplex.wait_link_started();
    source
        .execute_as_duplex(&format!(
            "BEGIN; \
             INSERT INTO orders VALUES ({a}, 'new'); \
             INSERT INTO order_lines VALUES ({l}, {a}, 1), ({m}, {a}, 2); \
             COMMIT; \
             UPDATE orders SET status = 'paid' WHERE id IN (5, {a}); \
             UPDATE order_lines SET qty = qty + 10 WHERE order_id = 6; \
             DELETE FROM orders WHERE id IN (7, 8); \
             BEGIN; DELETE FROM order_lines WHERE order_id = 9; DELETE FROM orders WHERE id = 9; COMMIT",
            a = ORDERS + 1,
            l = ORDERS * 3 + 1,
            m = ORDERS * 3 + 2,
        ))
        .unwrap();
    wait_same("the streamed changes on MariaDB", &mut duplex, pg, my);
    // The cascade of orders 7 and 8 arrived as PostgreSQL's row deletes, each once.
    assert_eq!(
        target
            .sql("SELECT count(*) FROM order_lines WHERE order_id IN (7, 8, 9)")
            .unwrap()
            .trim(),
        "0"
    );
    assert_eq!(my("order_lines").len(), (ORDERS * 3 + 2 - 9) as usize);
    assert_eq!(duplex.terminate(), 0);
    harness::drop_slot(&source);
}

#[test]
fn mariadb_to_postgres_with_checks_off_for_a_role_granted_session_replication_role() {
    let source = shared_mariadb().create_database();
    source
        .sql(&format!(
            "CREATE TABLE orders (id INT PRIMARY KEY, status VARCHAR(20) NOT NULL) ENGINE=InnoDB; \
             CREATE TABLE order_lines (id INT PRIMARY KEY, order_id INT NOT NULL, qty INT NOT NULL) ENGINE=InnoDB; \
             INSERT INTO orders SELECT seq, 'new' FROM seq_1_to_{ORDERS}; \
             INSERT INTO order_lines SELECT seq, (seq - 1) DIV 3 + 1, seq % 7 FROM seq_1_to_{}",
            ORDERS * 3
        ))
        .unwrap();
    let target = shared_pg().create_database();
    target
        .psql(
            "CREATE TABLE orders (id int PRIMARY KEY, status varchar(20) NOT NULL); \
             CREATE TABLE order_lines (id int PRIMARY KEY, \
                 order_id int NOT NULL REFERENCES orders(id) ON DELETE CASCADE, qty int NOT NULL); \
             CREATE FUNCTION shout() RETURNS trigger LANGUAGE plpgsql AS \
               $$ BEGIN NEW.status := upper(NEW.status); RETURN NEW; END $$; \
             CREATE TRIGGER orders_shout BEFORE INSERT OR UPDATE ON orders \
               FOR EACH ROW EXECUTE FUNCTION shout()",
        )
        .unwrap();
    let role = PgRole::create(&target, true);
    let mut duplex = Duplex::new(&config(
        ("erp", "mysql", &source.url()),
        ("store", "postgres", &role.url()),
        (source.name(), "public"),
    ));

    let report = check(&duplex);
    assert!(
        report.contains(
            "ok    foreign keys: checks off in duplex's sessions (session_replication_role = replica); 1 foreign key(s)"
        ),
        "{report}"
    );

    backfill(&duplex);
    let my = |t: &str| my_rows(&source, t);
    let pg = |t: &str| pg_rows(&target, t);
    assert_eq!(pg("order_lines").len(), (ORDERS * 3) as usize);
    assert_eq!(my("orders"), pg("orders"));
    assert_eq!(my("order_lines"), pg("order_lines"));

    duplex.start();
    duplex.wait_link_started();
    source
        .sql(&format!(
            "START TRANSACTION; \
             INSERT INTO orders VALUES ({a}, 'new'); \
             INSERT INTO order_lines VALUES ({l}, {a}, 1), ({m}, {a}, 2); \
             COMMIT; \
             UPDATE orders SET status = 'paid' WHERE id IN (5, {a}); \
             UPDATE order_lines SET qty = qty + 10 WHERE order_id = 6; \
             START TRANSACTION; \
             DELETE FROM orders WHERE id = 7; DELETE FROM order_lines WHERE order_id = 7; \
             COMMIT; \
             START TRANSACTION; \
             DELETE FROM order_lines WHERE order_id = 8; DELETE FROM orders WHERE id = 8; \
             COMMIT",
            a = ORDERS + 1,
            l = ORDERS * 3 + 1,
            m = ORDERS * 3 + 2,
        ))
        .unwrap();
    // The parent of order 7 went first: the target's cascade did not run in duplex's session
    // (its children were deleted by the source's own deletes, once), and the target's
    // ordinary trigger did not rewrite the replicated statuses either.
    wait_same("the streamed changes on PostgreSQL", &mut duplex, my, pg);
    assert_eq!(pg("order_lines").len(), (ORDERS * 3 + 2 - 6) as usize);
    assert_eq!(duplex.terminate(), 0);
}

#[test]
fn mariadb_to_postgres_in_dependency_order_for_a_role_that_may_not_turn_checks_off() {
    let source = shared_mariadb().create_database();
    source
        .sql(&format!(
            "CREATE TABLE orders (id INT PRIMARY KEY, status VARCHAR(20) NOT NULL) ENGINE=InnoDB; \
             CREATE TABLE order_lines (id INT PRIMARY KEY, order_id INT NOT NULL, qty INT NOT NULL) ENGINE=InnoDB; \
             INSERT INTO orders SELECT seq, 'new' FROM seq_1_to_{ORDERS}; \
             INSERT INTO order_lines SELECT seq, (seq - 1) DIV 3 + 1, seq % 7 FROM seq_1_to_{}",
            ORDERS * 3
        ))
        .unwrap();
    let target = shared_pg().create_database();
    target
        .psql(
            "CREATE TABLE orders (id int PRIMARY KEY, status varchar(20) NOT NULL); \
             CREATE TABLE order_lines (id int PRIMARY KEY, \
                 order_id int NOT NULL REFERENCES orders(id) DEFERRABLE INITIALLY IMMEDIATE, \
                 qty int NOT NULL)",
        )
        .unwrap();
    let role = PgRole::create(&target, false);
    assert_eq!(
        target
            .psql(&format!(
                "SELECT rolsuper FROM pg_roles WHERE rolname = '{}'",
                role.name
            ))
            .unwrap()
            .trim(),
        "f"
    );
    let mut duplex = Duplex::new(&config(
        ("erp", "mysql", &source.url()),
        ("store", "postgres", &role.url()),
        (source.name(), "public"),
    ));

    let report = check(&duplex);
    assert!(
        report.contains(
            "warn  foreign keys: dependency order (duplex's role may not set session_replication_role); 1 foreign key(s)"
        ),
        "{report}"
    );
    assert!(
        report.contains("GRANT SET ON PARAMETER session_replication_role"),
        "{report}"
    );

    backfill(&duplex);
    let my = |t: &str| my_rows(&source, t);
    let pg = |t: &str| pg_rows(&target, t);
    assert_eq!(my("orders"), pg("orders"));
    assert_eq!(my("order_lines"), pg("order_lines"));

    duplex.start();
    duplex.wait_link_started();
    source
        .sql(&format!(
            "START TRANSACTION; \
             INSERT INTO order_lines VALUES ({l}, {a}, 1), ({m}, {a}, 2); \
             INSERT INTO orders VALUES ({a}, 'new'); \
             COMMIT; \
             UPDATE orders SET status = 'paid' WHERE id IN (5, {a}); \
             UPDATE order_lines SET qty = qty + 10 WHERE order_id = 6; \
             START TRANSACTION; \
             DELETE FROM order_lines WHERE order_id = 8; DELETE FROM orders WHERE id = 8; \
             COMMIT",
            a = ORDERS + 1,
            l = ORDERS * 3 + 1,
            m = ORDERS * 3 + 2,
        ))
        .unwrap();
    // The lines of the new order were written before it, as the source committed them: the
    // deferred key was checked at commit.
    wait_same("the streamed changes on PostgreSQL", &mut duplex, my, pg);
    assert_eq!(duplex.terminate(), 0);
}

#[test]
fn a_self_referencing_key_is_refused_in_dependency_order() {
    let source = shared_mariadb().create_database();
    source
        .sql(
            "CREATE TABLE categories (id INT PRIMARY KEY, parent_id INT) ENGINE=InnoDB; \
             INSERT INTO categories VALUES (1, NULL), (2, 1)",
        )
        .unwrap();
    let target = shared_pg().create_database();
    target
        .psql(
            "CREATE TABLE categories (id int PRIMARY KEY, \
                 parent_id int CONSTRAINT categories_parent REFERENCES categories(id))",
        )
        .unwrap();
    let role = PgRole::create(&target, false);
    let config = format!(
        "[sites.erp]\nkind = \"mysql\"\nurl = \"{}\"\n\n\
         [sites.store]\nkind = \"postgres\"\nurl = \"{}\"\n\n\
         [[mappings]]\nname = \"categories\"\ntables = {{ erp = \"{}.categories\", store = \"public.categories\" }}\ndirection = \"erp->store\"\n",
        source.url(),
        role.url(),
        source.name()
    );
    let duplex = Duplex::new(&config);
    let report = check(&duplex);
    assert!(
        report.contains("warn  foreign key(s) categories_parent on public.categories: a table referencing itself"),
        "{report}"
    );
    let out = duplex.command(&["backfill"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("categories_parent on store:public.categories")
            && said.contains("GRANT SET ON PARAMETER session_replication_role"),
        "{said}"
    );
    assert_eq!(pg_rows(&target, "categories").len(), 0);
}

#[test]
fn check_warns_about_cascades_the_binlog_does_not_carry_and_cascades_run_in_dependency_order() {
    let source = shared_mariadb().create_database();
    source
        .sql(
            "CREATE TABLE orders (id INT PRIMARY KEY, status VARCHAR(20) NOT NULL) ENGINE=InnoDB; \
             CREATE TABLE order_lines (id INT PRIMARY KEY, order_id INT NOT NULL, qty INT NOT NULL, \
               CONSTRAINT lines_cascade FOREIGN KEY (order_id) REFERENCES orders(id) ON DELETE CASCADE) ENGINE=InnoDB",
        )
        .unwrap();
    let target = shared_pg().create_database();
    target
        .psql(
            "CREATE TABLE orders (id int PRIMARY KEY, status varchar(20) NOT NULL); \
             CREATE TABLE order_lines (id int PRIMARY KEY, \
                 order_id int NOT NULL REFERENCES orders(id) ON DELETE CASCADE, qty int NOT NULL)",
        )
        .unwrap();
    let role = PgRole::create(&target, false);
    let duplex = Duplex::new(&config(
        ("erp", "mysql", &source.url()),
        ("store", "postgres", &role.url()),
        (source.name(), "public"),
    ));
    let report = check(&duplex);
    assert!(
        report.contains(&format!(
            "warn  foreign key lines_cascade on {}.order_lines (read from erp): ON DELETE CASCADE",
            source.name()
        )) && report
            .contains("InnoDB does not write the rows a referential action changes to the binlog"),
        "{report}"
    );
    assert!(
        report.contains(
            "warn  foreign key order_lines_order_id_fkey on public.order_lines: ON DELETE CASCADE runs in duplex's sessions"
        ),
        "{report}"
    );
}

#[test]
fn two_way_with_checks_off_on_postgresql_keeps_recognising_its_echoes() {
    let store = shared_pg().create_database();
    store
        .psql(
            "CREATE TABLE orders (id int PRIMARY KEY, status varchar(20) NOT NULL); \
             CREATE TABLE order_lines (id int PRIMARY KEY, \
                 order_id int NOT NULL REFERENCES orders(id) ON DELETE CASCADE, qty int NOT NULL)",
        )
        .unwrap();
    let role = PgRole::create(&store, true);
    // The publication is created by duplex, which PostgreSQL allows only the tables' owner.
    store
        .psql(&format!(
            "ALTER TABLE orders OWNER TO {r}; ALTER TABLE order_lines OWNER TO {r}",
            r = role.name
        ))
        .unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql(
        "CREATE TABLE orders (id INT PRIMARY KEY, status VARCHAR(20) NOT NULL) ENGINE=InnoDB; \
         CREATE TABLE order_lines (id INT PRIMARY KEY, order_id INT NOT NULL, qty INT NOT NULL, \
           FOREIGN KEY (order_id) REFERENCES orders(id)) ENGINE=InnoDB",
    )
    .unwrap();
    // Sites named after their databases: MariaDB keeps one duplex.positions per server, and the
    // merge engine's rows there are named after the site.
    let site = store.name().to_owned();
    let erp_site = erp.name().to_owned();
    let mut config = format!(
        "[sites.{site}]\nkind = \"postgres\"\nurl = \"{}\"\n\n[sites.{erp_site}]\nkind = \"mysql\"\nurl = \"{}\"\n\n",
        role.url(),
        erp.url()
    );
    for table in ["order_lines", "orders"] {
        config.push_str(&format!(
            "[[mappings]]\nname = \"{table}\"\ntables = {{ {site} = \"public.{table}\", {erp_site} = \"{db}.{table}\" }}\ndirection = \"both\"\n\n",
            db = erp.name()
        ));
    }
    let mut duplex = Duplex::new(&config);
    let report = check(&duplex);
    assert!(
        report.contains("checks off in duplex's sessions (session_replication_role = replica)")
            && report.contains("checks off in duplex's sessions (foreign_key_checks = 0)"),
        "{report}"
    );
    duplex.start();
    harness::sites::wait_reading(&mut duplex, 2, WAIT);
    // A parent and its lines at each site; the ERP's arrive on PostgreSQL lines first.
    erp.sql(
        "SET SESSION foreign_key_checks = 0; START TRANSACTION; \
         INSERT INTO order_lines VALUES (11, 1, 1), (12, 1, 2); INSERT INTO orders VALUES (1, 'new'); \
         COMMIT",
    )
    .unwrap();
    store
        .psql(
            "BEGIN; INSERT INTO orders VALUES (2, 'new'); \
             INSERT INTO order_lines VALUES (21, 2, 1), (22, 2, 2); COMMIT",
        )
        .unwrap();
    let pg = |t: &str| pg_rows(&store, t);
    let my = |t: &str| my_rows(&erp, t);
    wait_same("both orders at both sites", &mut duplex, pg, my);
    // The PostgreSQL cascade arrives at the ERP as the rows it deleted; the ERP's change of
    // order 1 arrives at the store.
    store.psql("DELETE FROM orders WHERE id = 2").unwrap();
    erp.sql("UPDATE orders SET status = 'paid' WHERE id = 1")
        .unwrap();
    wait_same(
        "the delete and the update at both sites",
        &mut duplex,
        pg,
        my,
    );
    assert_eq!(pg("order_lines").len(), 2);
    assert_eq!(pg("orders"), vec![vec!["1".to_owned(), "paid".to_owned()]]);
    // No write came back as a change (an echo taken for one would be written back again, or
    // be a conflict): the store got the ERP's four changes, the ERP the store's six.
    let written = |at: &str, sql: &dyn Fn(&str) -> String| -> u64 {
        let text = sql(&format!(
            "SELECT position FROM duplex.positions WHERE source = 'merge:{at}'"
        ));
        let position: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        position["Outbox"].as_u64().unwrap()
    };
    assert_eq!(written(&site, &|q| store.psql(q).unwrap()), 4);
    assert_eq!(written(&erp_site, &|q| erp.sql(q).unwrap()), 6);
    assert!(harness::sites::conflicts(&duplex).is_empty());
    assert_eq!(duplex.terminate(), 0);
    harness::pg::drop_all_slots(&store);
}
