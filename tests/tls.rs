//! TLS to PostgreSQL and MariaDB servers started with TLS on, with certificates the test
//! generates (a CA, a server certificate for `localhost` only, and an unrelated CA): each mode
//! connects or fails as libpq and the MySQL client would, `check` says whether a site is
//! encrypted, and stream, apply and backfill run end to end over TLS both ways.

mod harness;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use duplex_testkit::{
    ClientFiles, MariaOptions, MariaServer, PgOptions, PgServer, TlsCerts, shared_mariadb,
    shared_pg,
};
use harness::{Duplex, drop_slot, wait_for};

const WAIT: Duration = Duration::from_secs(90);

/// A TLS PostgreSQL server, a TLS MariaDB server and the client's files.
struct TlsServers {
    pg: PgServer,
    maria: MariaServer,
    files: ClientFiles,
    _dir: tempfile::TempDir,
}

/// Both servers refuse plaintext from `duplex` (PostgreSQL: `hostssl` only; MariaDB: `REQUIRE
/// SSL`), so a connection path that ignored the URL's TLS settings would fail, not pass
/// unnoticed.
fn tls_servers() -> TlsServers {
    let certs = TlsCerts::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = certs.write_client_files(dir.path()).unwrap();
    let pg = PgServer::start(PgOptions::default().tls(&certs)).unwrap();
    let maria = MariaServer::start(MariaOptions::default().tls(&certs)).unwrap();
    maria
        .sql(
            "mysql",
            "ALTER USER 'duplex'@'127.0.0.1' REQUIRE SSL; ALTER USER 'duplex'@'localhost' REQUIRE SSL",
        )
        .unwrap();
    TlsServers {
        pg,
        maria,
        files,
        _dir: dir,
    }
}

/// `url` with the host written as `localhost` (the name in the server certificate) and `query`
/// appended.
fn with(url: &str, localhost: bool, query: &str) -> String {
    let url = if localhost {
        url.replacen("127.0.0.1", "localhost", 1)
    } else {
        url.to_owned()
    };
    format!("{url}?{query}")
}

/// The error and all its sources, one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The whole error of a refused connection, which must be definite (retrying cannot help).
fn definite(error: &dyn std::error::Error, transient: bool) -> String {
    let text = chain(error);
    assert!(!transient, "a TLS refusal must not be retried: {text}");
    text
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Connects to PostgreSQL through duplex's connection path; the TLS version the server reports
/// (`None`: plaintext) or the whole error.
fn pg_connect(url: &str) -> Result<Option<String>, String> {
    runtime().block_on(async {
        let client = duplex_connectors::postgres::connect(url, None)
            .await
            .map_err(|e| definite(&e, e.is_transient()))?;
        let row = client
            .query_one(
                "SELECT ssl, coalesce(version, '') FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| chain(&e))?;
        let (ssl, version): (bool, String) = (row.get(0), row.get(1));
        Ok(ssl.then_some(version))
    })
}

/// Connects to MariaDB through duplex's connection path; the TLS version (`None`: plaintext)
/// or the whole error.
fn my_connect(url: &str) -> Result<Option<String>, String> {
    use mysql_async::prelude::Queryable;
    runtime().block_on(async {
        let mut conn = duplex_connectors::mysql::connect(url, None)
            .await
            .map_err(|e| definite(&e, e.is_transient()))?;
        let row: Option<(String, String)> = conn
            .query_first("SHOW SESSION STATUS LIKE 'Ssl_version'")
            .await
            .map_err(|e| chain(&e))?;
        let _ = conn.disconnect().await;
        Ok(row.map(|(_, v)| v).filter(|v| !v.is_empty()))
    })
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn postgres_modes_connect_and_verify_as_libpq() {
    let servers = tls_servers();
    let db = servers.pg.create_database();
    let url = db.url();
    let ca = path(&servers.files.ca);
    let other = path(&servers.files.other_ca);

    for query in ["sslmode=require", "sslmode=prefer", "connect_timeout=10"] {
        let version = pg_connect(&with(&url, false, query)).unwrap();
        assert!(
            version.as_deref().is_some_and(|v| v.starts_with("TLSv1")),
            "{query}: {version:?}"
        );
    }
    // The server refuses plaintext (hostssl only): disable is refused, not silently upgraded.
    let error = pg_connect(&with(&url, false, "sslmode=disable")).unwrap_err();
    assert!(error.contains("no encryption"), "{error}");
    let full = with(&url, true, &format!("sslmode=verify-full&sslrootcert={ca}"));
    assert!(pg_connect(&full).unwrap().is_some());
    // verify-ca checks the chain only: the address is not the certificate's name.
    let by_address = with(&url, false, &format!("sslmode=verify-ca&sslrootcert={ca}"));
    assert!(pg_connect(&by_address).unwrap().is_some());

    let wrong_ca = with(
        &url,
        true,
        &format!("sslmode=verify-full&sslrootcert={other}"),
    );
    let error = pg_connect(&wrong_ca).unwrap_err();
    assert!(
        error.contains("TLS handshake") && error.contains("UnknownIssuer"),
        "{error}"
    );
    let wrong_ca = with(
        &url,
        false,
        &format!("sslmode=verify-ca&sslrootcert={other}"),
    );
    let error = pg_connect(&wrong_ca).unwrap_err();
    assert!(error.contains("UnknownIssuer"), "{error}");
    let wrong_host = with(
        &url,
        false,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let error = pg_connect(&wrong_host).unwrap_err();
    assert!(
        error.contains("TLS handshake") && error.contains("not valid for name"),
        "{error}"
    );

    let error = pg_connect(&with(&url, false, "sslmode=verify_full")).unwrap_err();
    assert!(
        error.contains("sslmode=verify_full")
            && error.contains("disable, prefer, require, verify-ca, verify-full"),
        "{error}"
    );
}

#[test]
fn mariadb_modes_connect_and_verify_as_the_mysql_client() {
    let servers = tls_servers();
    let db = servers.maria.create_database();
    let url = db.url();
    let ca = path(&servers.files.ca);
    let other = path(&servers.files.other_ca);

    for query in [
        "ssl-mode=REQUIRED",
        "ssl-mode=PREFERRED",
        "prefer_socket=false",
    ] {
        let version = my_connect(&with(&url, false, query)).unwrap();
        assert!(
            version.as_deref().is_some_and(|v| v.starts_with("TLSv1")),
            "{query}: {version:?}"
        );
    }
    // The user requires SSL: DISABLED is refused, not silently upgraded.
    let error = my_connect(&with(&url, false, "ssl-mode=DISABLED")).unwrap_err();
    assert!(error.contains("Access denied"), "{error}");
    let full = with(&url, true, &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"));
    assert!(my_connect(&full).unwrap().is_some());
    let verify_ca = with(&url, true, &format!("ssl-mode=VERIFY_CA&ssl-ca={ca}"));
    assert!(my_connect(&verify_ca).unwrap().is_some());
    // mysql_async 0.37.1 misses rustls 0.23's name error when asked to skip the host name, so
    // VERIFY_CA checks the name too (stricter than the MySQL client; the README says so).
    let by_address = with(&url, false, &format!("ssl-mode=VERIFY_CA&ssl-ca={ca}"));
    let error = my_connect(&by_address).unwrap_err();
    assert!(error.contains("not valid for name"), "{error}");

    let wrong_ca = with(
        &url,
        true,
        &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={other}"),
    );
    let error = my_connect(&wrong_ca).unwrap_err();
    assert!(error.contains("UnknownIssuer"), "{error}");
    let wrong_host = with(
        &url,
        false,
        &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"),
    );
    let error = my_connect(&wrong_host).unwrap_err();
    assert!(error.contains("not valid for name"), "{error}");

    let error = my_connect(&with(&url, false, "ssl-mode=ON")).unwrap_err();
    assert!(
        error.contains("ssl-mode=ON")
            && error.contains("DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY"),
        "{error}"
    );
}

#[test]
fn require_against_servers_without_tls_fails_and_prefer_falls_back() {
    let pg = shared_pg().create_database();
    let error = pg_connect(&with(&pg.url(), false, "sslmode=require")).unwrap_err();
    assert!(error.contains("server does not support TLS"), "{error}");
    assert_eq!(
        pg_connect(&with(&pg.url(), false, "sslmode=prefer")).unwrap(),
        None
    );
    assert_eq!(
        pg_connect(&with(&pg.url(), false, "sslmode=disable")).unwrap(),
        None
    );

    let my = shared_mariadb().create_database();
    let error = my_connect(&with(&my.url(), false, "ssl-mode=REQUIRED")).unwrap_err();
    assert!(error.contains("cannot connect"), "{error}");
    assert!(
        error.to_lowercase().contains("ssl") || error.to_lowercase().contains("tls"),
        "{error}"
    );
    assert_eq!(
        my_connect(&with(&my.url(), false, "ssl-mode=PREFERRED")).unwrap(),
        None
    );
    assert_eq!(my_connect(&my.url()).unwrap(), None);
    assert_eq!(
        my_connect(&with(&my.url(), false, "ssl-mode=DISABLED")).unwrap(),
        None
    );
    // mysql_async's own parameter keeps its meaning: TLS or nothing (no panic).
    let error = my_connect(&with(&my.url(), false, "require_ssl=true")).unwrap_err();
    assert!(error.contains("cannot connect"), "{error}");
}

fn site(name: &str, kind: &str, url: &str) -> String {
    format!("[sites.{name}]\nkind = \"{kind}\"\nurl = \"{url}\"\n\n")
}

fn pg_items(db: &duplex_testkit::PgDatabase) -> String {
    db.psql("SELECT count(*), md5(coalesce(string_agg(id || ':' || qty || ':' || name, ',' ORDER BY id), '')) FROM items")
        .unwrap()
        .trim()
        .replace('|', " ")
}

fn my_items(db: &duplex_testkit::MariaDatabase) -> String {
    db.sql("SET SESSION group_concat_max_len = 1073741824; SELECT count(*), md5(coalesce(group_concat(id, ':', qty, ':', name ORDER BY id SEPARATOR ','), '')) FROM items")
        .unwrap()
        .trim()
        .replace('\t', " ")
}

/// `backfill` copies the rows present, `run` streams and applies what follows; both over
/// verified TLS, and `check` reports both sites encrypted.
#[test]
fn backfill_stream_and_apply_over_tls_both_ways() {
    let servers = tls_servers();
    let ca = path(&servers.files.ca);
    let store = servers.pg.create_database();
    let erp = servers.maria.create_database();
    store
        .execute_as_duplex(
            "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL); \
             INSERT INTO items SELECT g, g % 13, 'item ' || g FROM generate_series(1, 2000) g; \
             CREATE TABLE orders (id bigint PRIMARY KEY, qty int NOT NULL, name text NOT NULL)",
        )
        .unwrap();
    erp.sql(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, qty INT NOT NULL, name LONGTEXT NOT NULL); \
         CREATE TABLE orders (id BIGINT PRIMARY KEY, qty INT NOT NULL, name LONGTEXT NOT NULL); \
         INSERT INTO orders SELECT seq, seq % 7, concat('order ', seq) FROM seq_1_to_1500",
    )
    .unwrap();
    let pg_url = with(
        &store.url(),
        true,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let my_url = with(
        &erp.url(),
        true,
        &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[state]\ndir = \"{state}\"\n\n{}{}\
         [[mappings]]\nname = \"items\"\ntables = {{ store = \"public.items\", erp = \"{db}.items\" }}\ndirection = \"store->erp\"\n\n\
         [[mappings]]\nname = \"orders\"\ntables = {{ erp = \"{db}.orders\", store = \"public.orders\" }}\ndirection = \"erp->store\"\n",
        site("store", "postgres", &pg_url),
        site("erp", "mysql", &my_url),
        state = dir.path().join("state").display(),
        db = erp.name(),
    );
    let duplex_config = dir.path().join("duplex.toml");
    std::fs::write(&duplex_config, &config).unwrap();

    let check = Command::new(harness::duplex_bin())
        .arg("--config")
        .arg(&duplex_config)
        .arg("check")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert_eq!(
        report.matches("connection encrypted (TLSv1.3, ").count(),
        2,
        "{report}"
    );
    assert!(
        report.contains("sslmode=verify-full: chain and host name verified")
            && report.contains("ssl-mode=VERIFY_IDENTITY: chain and host name verified"),
        "{report}"
    );

    for mapping in ["items", "orders"] {
        let out = Command::new(harness::duplex_bin())
            .arg("--config")
            .arg(&duplex_config)
            .args(["backfill", "--mapping", mapping])
            .env("DUPLEX_LOG", "info,duplex=debug")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "backfill {mapping} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(pg_items(&store), my_items(&erp));

    let mut duplex = Duplex::run(&config);
    store
        .psql(
            "INSERT INTO items SELECT g, 1, 'new ' || g FROM generate_series(5001, 5300) g; \
             UPDATE items SET qty = qty + 100, name = name || '+' WHERE id % 10 = 3; \
             DELETE FROM items WHERE id % 17 = 0",
        )
        .unwrap();
    erp.sql(
        "INSERT INTO orders SELECT seq, 2, concat('new ', seq) FROM seq_7001_to_7200; \
         UPDATE orders SET qty = qty + 50 WHERE id % 9 = 4; \
         DELETE FROM orders WHERE id % 13 = 0",
    )
    .unwrap();
    let pg_orders = |db: &duplex_testkit::PgDatabase| {
        db.psql("SELECT count(*), md5(coalesce(string_agg(id || ':' || qty || ':' || name, ',' ORDER BY id), '')) FROM orders")
            .unwrap()
            .trim()
            .replace('|', " ")
    };
    let my_orders = |db: &duplex_testkit::MariaDatabase| {
        db.sql("SET SESSION group_concat_max_len = 1073741824; SELECT count(*), md5(coalesce(group_concat(id, ':', qty, ':', name ORDER BY id SEPARATOR ','), '')) FROM orders")
            .unwrap()
            .trim()
            .replace('\t', " ")
    };
    wait_for("both tables to be equal", WAIT, || {
        duplex.assert_running();
        let (a, b) = (pg_items(&store), my_items(&erp));
        let (c, d) = (my_orders(&erp), pg_orders(&store));
        if a == b && c == d {
            Ok(())
        } else {
            Err(format!("items {a} / {b}, orders {c} / {d}"))
        }
    });
    assert!(
        pg_items(&store).starts_with("2166 "),
        "{}",
        pg_items(&store)
    );
    // Every connection duplex holds to either server is encrypted, the replication one included.
    let plain = servers
        .pg
        .psql(
            store.name(),
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.usename = 'duplex' AND NOT s.ssl",
        )
        .unwrap();
    assert_eq!(plain.trim(), "0");
    let walsenders = servers
        .pg
        .psql(
            store.name(),
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_replication r USING (pid) WHERE s.ssl",
        )
        .unwrap();
    assert_eq!(walsenders.trim(), "1");
    duplex.terminate();
    drop_slot(&store);
}

/// Invalid TLS values are configuration errors naming the site's URL field, the parameter and
/// the accepted values, all at once; no panic.
#[test]
fn invalid_tls_values_are_configuration_errors() {
    let config = format!(
        "{}{}[[mappings]]\nname = \"x\"\ntables = {{ store = \"public.x\", erp = \"erp.x\" }}\ndirection = \"store->erp\"\n",
        site(
            "store",
            "postgres",
            "postgres://duplex@db.example.com/shop?sslmode=verify"
        ),
        site(
            "erp",
            "mysql",
            "mysql://duplex@db.example.com/erp?ssl-mode=VERIFY&ssl-ca=/ca.pem"
        ),
    );
    let duplex = Duplex::new(&config);
    let out = duplex.command(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("sites.store.url: invalid PostgreSQL TLS setting: the URL parameter sslmode=verify is not one of disable, prefer, require, verify-ca, verify-full"),
        "{stderr}"
    );
    assert!(
        stderr.contains("sites.erp.url: invalid MySQL/MariaDB TLS setting: the URL parameter ssl-mode=VERIFY is not one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY"),
        "{stderr}"
    );
}

/// `sslcert` / `sslkey` and `ssl-cert` / `ssl-key` present the client certificate: a login that
/// requires one succeeds with it and is refused without.
#[test]
fn client_certificates_are_presented() {
    let servers = tls_servers();
    let ca = path(&servers.files.ca);
    let (cert, key) = (
        path(&servers.files.client_cert),
        path(&servers.files.client_key),
    );

    // PostgreSQL: `cert` authentication for duplex (the certificate's CN), no password.
    let hba = servers.pg.data_dir().join("pg_hba.conf");
    let text = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("hostssl all duplex 127.0.0.1/32 cert\n{text}"),
    )
    .unwrap();
    servers
        .pg
        .psql("postgres", "SELECT pg_reload_conf()")
        .unwrap();
    let db = servers.pg.create_database();
    let url = db.url().replacen("duplex:duplex@", "duplex@", 1);
    let with_cert = with(
        &url,
        true,
        &format!("sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}"),
    );
    wait_for("pg_hba.conf to be reloaded", WAIT, || {
        match pg_connect(&with(
            &url,
            true,
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        )) {
            Err(e) if e.contains("certificate") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert!(pg_connect(&with_cert).unwrap().is_some());

    // MariaDB: an account that requires a certificate signed by the CA.
    let db = servers.maria.create_database();
    servers
        .maria
        .sql(
            "mysql",
            "CREATE USER 'certified'@'127.0.0.1' IDENTIFIED BY 'pw' REQUIRE X509; \
             GRANT ALL PRIVILEGES ON *.* TO 'certified'@'127.0.0.1'",
        )
        .unwrap();
    let url = db.url().replacen("duplex:duplex@", "certified:pw@", 1);
    let error = my_connect(&with(
        &url,
        true,
        &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"),
    ))
    .unwrap_err();
    assert!(error.contains("Access denied"), "{error}");
    let with_cert = with(
        &url,
        true,
        &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}&ssl-cert={cert}&ssl-key={key}"),
    );
    assert!(my_connect(&with_cert).unwrap().is_some());
}
