//! SQL Server sites in the configuration, and the commands not built for them yet refusing
//! up front: no server is needed (nothing here connects to one).

use std::process::Command;

use duplex::config::{Config, ConfigError, Direction};
use duplex_connectors::SiteKind;

/// A PostgreSQL store, a SQL Server ERP and one mapping between them, `direction` as given.
fn config(erp_url: &str, direction: &str) -> String {
    format!(
        r#"
[state]
dir = "state-here"

[sites.store]
kind = "postgres"
url = "postgres://duplex@127.0.0.1:5432/shop"

[sites.erp]
kind = "mssql"
url = "{erp_url}"

[[mappings]]
name = "orders"
tables = {{ store = "public.orders", erp = "dbo.orders" }}
direction = "{direction}"
"#
    )
}

const ERP_URL: &str = "mssql://duplex@127.0.0.1:1433/erp?encrypt=none";

fn parse(text: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    Config::from_toml(text, &dir.path().join("duplex.toml"), dir.path())
}

fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Err(ConfigError::Invalid { problems, .. }) => {
            problems.iter().map(ToString::to_string).collect()
        }
        Err(other) => panic!("expected validation problems, got: {other}"),
        Ok(_) => panic!("config was accepted"),
    }
}

#[test]
fn a_sql_server_site_with_a_good_url_is_accepted_both_ways_one_way() {
    for direction in ["erp->store", "store->erp"] {
        let config = parse(&config(ERP_URL, direction)).unwrap();
        assert_eq!(config.sites["erp"].kind, SiteKind::Mssql);
        assert!(matches!(
            config.mappings[0].direction,
            Direction::OneWay { .. }
        ));
        assert_eq!(config.sql_server_site(&config.mappings[0]), Some("erp"));
    }
    // "sqlserver" is the other name of the kind, and of the URL scheme.
    let text = config(
        "sqlserver://duplex@db.example.com/erp?trust-server-certificate=true",
        "erp->store",
    )
    .replace("kind = \"mssql\"", "kind = \"sqlserver\"");
    assert_eq!(parse(&text).unwrap().sites["erp"].kind, SiteKind::Mssql);
}

#[test]
fn a_bad_sql_server_url_is_refused_with_what_is_wrong() {
    for (url, expected) in [
        (
            "postgres://duplex@127.0.0.1/erp",
            "sites.erp.url: SQL Server URL: the scheme must be mssql:// (found postgres://)",
        ),
        (
            "mssql://127.0.0.1:1433/erp",
            "sites.erp.url: SQL Server URL: no user: SQL Server logins are required",
        ),
        (
            "mssql://duplex@127.0.0.1:1433/",
            "sites.erp.url: SQL Server URL: name exactly one database as the path",
        ),
        (
            "mssql://duplex@127.0.0.1/erp?encrypt=maybe",
            "sites.erp.url: SQL Server URL: encrypt=maybe is not one of",
        ),
    ] {
        let problems = problems(&config(url, "erp->store"));
        assert_eq!(problems.len(), 1, "{url}: {problems:?}");
        assert!(problems[0].starts_with(expected), "{url}: {problems:?}");
        assert!(
            problems[0].contains("write it like mssql://user@host:1433/database"),
            "{problems:?}"
        );
    }
}

#[test]
fn a_two_way_mapping_with_a_sql_server_site_is_accepted() {
    let config = parse(&config(ERP_URL, "both")).unwrap();
    assert_eq!(config.mappings[0].direction, Direction::Both);
}

#[test]
fn a_schema_wide_mapping_with_a_sql_server_site_is_refused() {
    let text = config(ERP_URL, "erp->store")
        .replace("public.orders", "public.*")
        .replace("dbo.orders", "dbo.*");
    let problems = problems(&text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with(
            "mappings[0] (orders).tables: a schema-wide mapping (\"schema.*\") is not supported \
             for SQL Server sites yet (erp is one)"
        ),
        "{problems:?}"
    );
}

#[test]
fn a_mapping_between_sql_server_and_mariadb_is_refused() {
    let text = config(ERP_URL, "erp->store")
        .replace("kind = \"postgres\"", "kind = \"mysql\"")
        .replace(
            "postgres://duplex@127.0.0.1:5432/shop",
            "mysql://duplex@127.0.0.1:3306/shop",
        )
        .replace("public.orders", "shop.orders");
    let problems = problems(&text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with(
            "mappings[0] (orders).tables: a mapping between a SQL Server site (erp) and a \
             MySQL/MariaDB site (store) is not supported yet"
        ),
        "{problems:?}"
    );
}

/// Runs `duplex --config <file> <args>` with `config` in a temp directory; the exit code and
/// everything printed.
fn duplex(config: &str, args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("duplex.toml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_duplex"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn backfill_and_verify_repair_into_sql_server_are_refused_before_connecting() {
    // Port 9 of the loopback: nothing is contacted before the refusal.
    let into = config("mssql://duplex@127.0.0.1:9/erp?encrypt=none", "store->erp")
        .replace("127.0.0.1:5432", "127.0.0.1:9");
    // Overwriting a SQL Server target's rows is not built: refused up front.
    for flag in ["--resync", "--allow-nonempty"] {
        let (code, out) = duplex(&into, &["backfill", flag]);
        assert_ne!(code, 0, "{out}");
        assert!(
            out.contains(&format!(
                "mapping orders writes into the SQL Server site erp: duplex backfill {flag} into \
                 SQL Server targets is not supported yet"
            )),
            "{out}"
        );
    }
    // A plain backfill into SQL Server is built: it goes as far as connecting (to nothing
    // here) instead of refusing.
    let (code, out) = duplex(&into, &["backfill"]);
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains("not supported"), "{out}");
    // From a SQL Server source the backfill is built: it goes as far as connecting (to
    // nothing here) instead of refusing.
    let text = config("mssql://duplex@127.0.0.1:9/erp?encrypt=none", "erp->store")
        .replace("127.0.0.1:5432", "127.0.0.1:9");
    let (code, out) = duplex(&text, &["backfill"]);
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains("not supported"), "{out}");
    // Verify of a SQL Server site is built: it goes as far as connecting (to nothing here).
    let (code, out) = duplex(&text, &["verify"]);
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains("not supported"), "{out}");
    // Its one-way repair into SQL Server (an upsert) is not: refused before connecting.
    let (code, out) = duplex(&into, &["verify", "--repair"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(
            "mapping orders writes into the SQL Server site erp: duplex verify --repair of a \
             one-way mapping into SQL Server is not supported yet"
        ),
        "{out}"
    );
    // Repairing the other way writes into PostgreSQL: it goes as far as connecting.
    let (code, out) = duplex(&text, &["verify", "--repair"]);
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains("not supported"), "{out}");
}
