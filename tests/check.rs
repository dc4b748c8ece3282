//! `duplex check` against real servers: ready servers pass; a PostgreSQL with
//! wal_level=replica, a MariaDB with the binlog off, a table without a primary key, a refused
//! column type and an unreachable server each fail with the exact fix.

use std::path::Path;
use std::process::Command;

use duplex_testkit::{MariaOptions, MariaServer, PgOptions, PgServer, shared_mariadb, shared_pg};

/// Runs `duplex --config <file> check` with `config` written to a temp file; returns the exit
/// code and everything printed.
fn run_check(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("duplex.toml");
    std::fs::write(&path, config).unwrap();
    check_file(&path)
}

fn check_file(path: &Path) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_duplex"))
        .arg("--config")
        .arg(path)
        .arg("check")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

fn config(pg_url: &str, pg_table: &str, my_url: &str, my_table: &str) -> String {
    format!(
        r#"
[sites.store]
kind = "postgres"
url = "{pg_url}"

[sites.erp]
kind = "mysql"
url = "{my_url}"

[[mappings]]
name = "orders"
tables = {{ store = "{pg_table}", erp = "{my_table}" }}
direction = "both"
"#
    )
}

const PG_ORDERS: &str = "CREATE TABLE public.orders (id bigint PRIMARY KEY, status text NOT NULL, \
     total numeric(12,2), placed_at timestamptz, note varchar(200))";
const MY_ORDERS: &str = "CREATE TABLE orders (id BIGINT PRIMARY KEY, status LONGTEXT NOT NULL, \
     total DECIMAL(12,2), placed_at DATETIME(6), note VARCHAR(200)) ENGINE=InnoDB";

#[test]
fn check_passes_against_ready_servers() {
    let pg = shared_pg().create_database();
    pg.execute_as_duplex(PG_ORDERS).unwrap();
    let my = shared_mariadb().create_database();
    my.sql(MY_ORDERS).unwrap();
    let (code, out) = run_check(&config(
        &pg.url(),
        "public.orders",
        &my.url(),
        &format!("{}.orders", my.name()),
    ));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok    wal_level = logical"), "{out}");
    assert!(out.contains("ok    binlog_format = ROW"), "{out}");
    assert!(
        out.contains("ok    table public.orders: primary key (id)"),
        "{out}"
    );
    assert!(
        out.contains("store -> erp: 3 of 5 columns map exactly"),
        "{out}"
    );
    assert!(out.contains("warn  store:orders.placed_at timestamp with time zone -> erp:orders.placed_at datetime(6)"), "{out}");
    assert!(
        out.contains("ready: every site and mapping passed"),
        "{out}"
    );
}

#[test]
fn check_fails_on_wal_level_replica_with_the_fix() {
    let server = PgServer::start(PgOptions::default().wal_level("replica")).unwrap();
    let pg = server.create_database();
    pg.execute_as_duplex(PG_ORDERS).unwrap();
    let my = shared_mariadb().create_database();
    my.sql(MY_ORDERS).unwrap();
    let (code, out) = run_check(&config(
        &pg.url(),
        "public.orders",
        &my.url(),
        &format!("{}.orders", my.name()),
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  wal_level = replica"), "{out}");
    assert!(out.contains("set wal_level = logical"), "{out}");
    assert!(out.contains("restart PostgreSQL"), "{out}");
    assert!(out.contains("not ready: 1 problem(s) to fix"), "{out}");
}

#[test]
fn check_fails_when_the_mariadb_binlog_is_off_with_the_fix() {
    let server = MariaServer::start(MariaOptions::default().binlog(false)).unwrap();
    let my = server.create_database();
    my.sql(MY_ORDERS).unwrap();
    let pg = shared_pg().create_database();
    pg.execute_as_duplex(PG_ORDERS).unwrap();
    let (code, out) = run_check(&config(
        &pg.url(),
        "public.orders",
        &my.url(),
        &format!("{}.orders", my.name()),
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  log_bin = OFF"), "{out}");
    assert!(out.contains("enable the binary log: add log_bin"), "{out}");
}

#[test]
fn check_fails_on_a_table_without_primary_key_with_the_fix() {
    let pg = shared_pg().create_database();
    pg.execute_as_duplex("CREATE TABLE public.orders (id bigint, status text NOT NULL, total numeric(12,2), placed_at timestamptz, note varchar(200))")
        .unwrap();
    let my = shared_mariadb().create_database();
    my.sql(MY_ORDERS).unwrap();
    let (code, out) = run_check(&config(
        &pg.url(),
        "public.orders",
        &my.url(),
        &format!("{}.orders", my.name()),
    ));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  table public.orders has no primary key"),
        "{out}"
    );
    assert!(
        out.contains(r#"ALTER TABLE "public"."orders" ADD PRIMARY KEY"#),
        "{out}"
    );
}

#[test]
fn check_fails_on_a_refused_type_missing_column_and_missing_table() {
    let pg = shared_pg().create_database();
    pg.execute_as_duplex("CREATE TABLE public.orders (id bigint PRIMARY KEY, status text NOT NULL, total numeric(12,2), placed_at timestamptz, note interval)")
        .unwrap();
    let my = shared_mariadb().create_database();
    my.sql("CREATE TABLE orders (id BIGINT PRIMARY KEY, status LONGTEXT NOT NULL, total DECIMAL(12,2), note TIME)").unwrap();
    let (code, out) = run_check(&config(
        &pg.url(),
        "public.orders",
        &my.url(),
        &format!("{}.orders", my.name()),
    ));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  column placed_at is missing from"),
        "{out}"
    );
    let (code, out) = run_check(
        &config(
            &pg.url(),
            "public.orders",
            &my.url(),
            &format!("{}.orders", my.name()),
        )
        .replace(
            "direction = \"both\"",
            "direction = \"store->erp\"\ncolumns = [\"id\", \"status\", \"note\"]",
        ),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  store:orders.note interval -> erp:orders.note time"),
        "{out}"
    );
    assert!(out.contains("MySQL has no interval type"), "{out}");
    let (code, out) = run_check(&config(
        &pg.url(),
        "public.shipments",
        &my.url(),
        &format!("{}.orders", my.name()),
    ));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  table public.shipments does not exist"),
        "{out}"
    );
}

#[test]
fn check_reports_an_unreachable_server_and_a_wrong_password() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = listener.local_addr().unwrap().port();
    drop(listener);
    let my = shared_mariadb().create_database();
    my.sql(MY_ORDERS).unwrap();
    let pg_url = format!("postgres://duplex@127.0.0.1:{closed_port}/shop");
    let (code, out) = run_check(&config(
        &pg_url,
        "public.orders",
        &my.url(),
        &format!("{}.orders", my.name()),
    ));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("cannot connect to PostgreSQL at duplex@127.0.0.1"),
        "{out}"
    );
    assert!(
        out.contains("check that the server is running and reachable"),
        "{out}"
    );
    let pg = shared_pg().create_database();
    let bad = pg.url().replace("duplex:duplex@", "duplex:wrong-password@");
    let (code, out) = run_check(&config(
        &bad,
        "public.orders",
        &my.url(),
        &format!("{}.orders", my.name()),
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("password authentication failed"), "{out}");
    assert!(!out.contains("wrong-password"), "password printed: {out}");
}

#[test]
fn check_with_an_invalid_config_exits_2_naming_the_field() {
    let (code, out) = run_check("[sites.store]\nkind = \"postgres\"\nurl = \"nonsense\"\n");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("sites.store.url:"), "{out}");
}

#[test]
fn check_refuses_delta_on_text_and_values_a_column_cannot_hold() {
    let pg = shared_pg().create_database();
    pg.execute_as_duplex(PG_ORDERS).unwrap();
    let my = shared_mariadb().create_database();
    my.sql(
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, status ENUM('new','paid') NOT NULL, \
         total DECIMAL(12,2), placed_at DATETIME(6), note VARCHAR(200)) ENGINE=InnoDB",
    )
    .unwrap();
    let config = config(
        &pg.url(),
        "public.orders",
        &my.url(),
        &format!("{}.orders", my.name()),
    );
    let (code, out) = run_check(&format!(
        "{config}\n[mappings.column_conflict]\ntotal = \"delta\"\nnote = \"delta\"\n\
         status = {{ precedence = [\"new\", \"paid\", \"shipped\"] }}\n\
         [mappings.values.erp]\nstatus = {{ new = \"new\", paid = \"P\" }}\n\
         [mappings.filter]\nstore = \"total > 'x' AND nope IS NULL\"\n"
    ));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "FAIL  column policy note = delta: store:orders.note is character varying(200)"
        ),
        "{out}"
    );
    assert!(
        out.contains("delta adds numbers: use it on a numeric column"),
        "{out}"
    );
    assert!(
        out.contains(
            "FAIL  column policy status = precedence: erp:orders.status is enum('new','paid')"
        ),
        "{out}"
    );
    assert!(
        out.contains("\"shipped\" is not one of the column's values enum('new','paid')"),
        "{out}"
    );
    assert!(!out.contains("column policy total"), "{out}");
    assert!(
        out.contains("FAIL  value map of status: erp:orders.status is enum('new','paid')"),
        "{out}"
    );
    assert!(
        out.contains("\"P\" is not one of the column's values"),
        "{out}"
    );
}
