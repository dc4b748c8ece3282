//! Configuration parsing and validation: every error names its field and the rule it broke.

use duplex::config::{Config, ConfigError, ConflictPolicy, Direction};

const GOOD: &str = r#"
[state]
dir = "state-here"

[sites.store]
kind = "postgres"
url = "postgres://duplex@127.0.0.1:5432/shop"
password_file = "store.password"

[sites.erp]
kind = "mysql"
url = "mysql://duplex:hunter2@127.0.0.1:3306/erp"

[sites.dock]
kind = "mysql"
url = "mysql://duplex@127.0.0.1:3306/dock"

[[mappings]]
name = "orders"
tables = { store = "public.orders", erp = "erp.orders" }
direction = "both"
conflict = "prefer:erp"
columns = ["id", "status", "total"]
rename.erp = { total = "amount" }

[[mappings]]
name = "stock"
tables = { dock = "dock.stock", store = "public.stock" }
direction = "dock->store"
"#;

/// Parses `text` as if it were a file in a fresh directory holding `store.password`.
fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_in(text).map(|(config, _)| config)
}

fn parse_in(text: &str) -> Result<(Config, tempfile::TempDir), ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("store.password"), "s3cret\n").unwrap();
    let config = Config::from_toml(text, &dir.path().join("duplex.toml"), dir.path())?;
    Ok((config, dir))
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
fn a_good_config_loads_with_typed_values() {
    let (config, dir) = parse_in(GOOD).unwrap();
    assert_eq!(config.state_dir, dir.path().join("state-here"));
    assert_eq!(
        config.sites.keys().collect::<Vec<_>>(),
        ["store", "erp", "dock"]
    );
    assert_eq!(
        config.deleted_rows_kept_for,
        std::time::Duration::from_secs(7 * 86_400)
    );
    assert_eq!(
        config.sites["store"].password.as_ref().unwrap().expose(),
        "s3cret"
    );
    let orders = &config.mappings[0];
    assert_eq!(orders.direction, Direction::Both);
    assert_eq!(orders.conflict, ConflictPolicy::Prefer("erp".into()));
    assert_eq!(orders.site_column("erp", "total"), "amount");
    assert_eq!(orders.canonical_column("erp", "amount"), "total");
    assert_eq!(orders.edges(), [("store", "erp"), ("erp", "store")]);
    let stock = &config.mappings[1];
    assert_eq!(
        stock.direction,
        Direction::OneWay {
            from: "dock".into(),
            to: "store".into()
        }
    );
    assert_eq!(stock.conflict, ConflictPolicy::LastWriterWins);
    assert!(stock.reads_from("dock") && !stock.reads_from("store"));
}

#[test]
fn a_site_read_both_ways_cannot_also_be_a_one_way_source() {
    let text = GOOD.replace("direction = \"dock->store\"", "direction = \"store->dock\"");
    let problems = problems(&text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("mappings (stock).direction: site store is in two-way mapping orders and the source of one-way mapping stock"),
        "{problems:?}"
    );
}

#[test]
fn the_deleted_rows_horizon_is_a_duration() {
    let text = GOOD.replace("[state]", "[state]\ndeleted_rows_kept_for = \"36h\"");
    assert_eq!(
        parse(&text).unwrap().deleted_rows_kept_for,
        std::time::Duration::from_secs(36 * 3600)
    );
    let problems = problems(&GOOD.replace("[state]", "[state]\ndeleted_rows_kept_for = \"soon\""));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("state.deleted_rows_kept_for: \"soon\" is not a duration"),
        "{problems:?}"
    );
}

#[test]
fn a_sites_stream_timeout_is_a_duration_of_at_least_a_second() {
    let config = parse(GOOD).unwrap();
    assert_eq!(
        config.sites["store"].stream_timeout,
        std::time::Duration::from_secs(15)
    );
    let text = GOOD.replace(
        "password_file = \"store.password\"",
        "password_file = \"store.password\"\nstream_timeout = \"1min\"",
    );
    assert_eq!(
        parse(&text).unwrap().sites["store"].stream_timeout,
        std::time::Duration::from_secs(60)
    );
    for (value, rule) in [("soon", "not a duration"), ("500ms", "at least 1s")] {
        let text = GOOD.replace(
            "url = \"mysql://duplex@127.0.0.1:3306/dock\"",
            &format!("url = \"mysql://duplex@127.0.0.1:3306/dock\"\nstream_timeout = \"{value}\""),
        );
        let problems = problems(&text);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("sites.dock.stream_timeout: ") && problems[0].contains(rule),
            "{problems:?}"
        );
    }
}

#[test]
fn secrets_never_show_in_debug_output() {
    let config = parse(GOOD).unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("s3cret"), "{debug}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("***"));
}

#[test]
fn every_unknown_key_is_an_error_naming_it_all_at_once() {
    let text = GOOD
        .replace(
            "direction = \"both\"",
            "direction = \"both\"\nconflicts = \"hold\"",
        )
        .replace("[state]", "[state]\ndirectory = \"x\"")
        .replace(
            "password_file = \"store.password\"",
            "password_file = \"store.password\"\npasword_env = \"X\"",
        );
    let problems = problems(&text);
    let unknown: Vec<&String> = problems
        .iter()
        .filter(|p| p.contains("unknown key"))
        .collect();
    assert_eq!(unknown.len(), 3, "{problems:#?}");
    for field in [
        "mappings[0] (orders).conflicts: unknown key",
        "state.directory: unknown key",
        "sites.store.pasword_env: unknown key",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(field)),
            "{field} not in {problems:#?}"
        );
    }
}

#[test]
fn a_missing_site_is_an_error() {
    let text = GOOD.replace(
        "[sites.erp]\nkind = \"mysql\"\nurl = \"mysql://duplex:hunter2@127.0.0.1:3306/erp\"\n",
        "",
    );
    let problems = problems(&text);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("mappings[0] (orders).tables.erp: site \"erp\" is not defined")),
        "{problems:?}"
    );
    let problems =
        self::problems("[[mappings]]\nname = \"x\"\ntables = {}\ndirection = \"both\"\n");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("sites: no sites are defined")),
        "{problems:?}"
    );
}

#[test]
fn a_mapping_naming_an_unknown_site_is_an_error() {
    let problems = problems(&GOOD.replace("erp = \"erp.orders\"", "wms = \"wms.orders\""));
    assert!(
        problems
            .iter()
            .any(|p| p.contains("mappings[0] (orders).tables.wms: site \"wms\" is not defined")),
        "{problems:?}"
    );
    let problems =
        self::problems(&GOOD.replace("conflict = \"prefer:erp\"", "conflict = \"prefer:wms\""));
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("mappings[0] (orders).conflict: prefer:wms")),
        "{problems:?}"
    );
    let problems = self::problems(&GOOD.replace("dock->store", "dock->wms"));
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("mappings[1] (stock).direction: site \"wms\"")),
        "{problems:?}"
    );
}

#[test]
fn a_bad_url_is_an_error_naming_the_site() {
    let problems =
        problems(&GOOD.replace("postgres://duplex@127.0.0.1:5432/shop", "127.0.0.1:5432"));
    assert!(
        problems.iter().any(|p| p.starts_with("sites.store.url: ")),
        "{problems:?}"
    );
    let problems =
        self::problems(&GOOD.replace("mysql://duplex:hunter2@", "postgres://duplex:hunter2@"));
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("sites.erp.url: a mysql site's URL must start with mysql://")),
        "{problems:?}"
    );
    assert!(
        !problems.iter().any(|p| p.contains("hunter2")),
        "password leaked: {problems:?}"
    );
    let problems = self::problems(&GOOD.replace("127.0.0.1:5432/shop", "127.0.0.1:5432"));
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("sites.store.url: the URL names no database")),
        "{problems:?}"
    );
}

#[test]
fn other_rules_are_named_and_all_problems_are_listed_at_once() {
    let text = GOOD
        .replace("kind = \"postgres\"", "kind = \"oracle\"")
        .replace("direction = \"both\"", "direction = \"sideways\"")
        .replace(
            "password_file = \"store.password\"",
            "password_env = \"DUPLEX_TEST_CONFIG_UNSET_VARIABLE\"",
        )
        .replace("conflict = \"prefer:erp\"", "conflict = \"coin-flip\"");
    let problems = problems(&text);
    for expected in [
        "sites.store.kind: unknown kind \"oracle\"",
        "sites.store.password_env: environment variable DUPLEX_TEST_CONFIG_UNSET_VARIABLE is not set",
        "mappings[0] (orders).direction: \"sideways\" is not a direction",
        "mappings[0] (orders).conflict: \"coin-flip\" is not a policy",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "missing {expected:?} in {problems:?}"
        );
    }
    // SQL Server sites are checked in tests/config_mssql.rs; a PostgreSQL URL for one is
    // refused by the SQL Server URL parser.
    let problems = self::problems(&GOOD.replace("kind = \"postgres\"", "kind = \"sqlserver\""));
    assert!(
        problems
            .iter()
            .any(|p| p.contains(".url: SQL Server URL: the scheme must be mssql://")),
        "{problems:?}"
    );
}

#[test]
fn two_postgres_sites_meeting_on_one_slot_name_are_refused() {
    // Site x_y of database a and site y of database a_x both make duplex_a_x_y.
    let text = "[sites.x_y]\nkind = \"postgres\"\nurl = \"postgres://duplex@10.0.0.1/a\"\n\n\
         [sites.y]\nkind = \"postgres\"\nurl = \"postgres://duplex@10.0.0.1:5432/a_x\"\n\n\
         [[mappings]]\nname = \"t\"\ntables = { x_y = \"public.t\", y = \"public.t\" }\n\
         direction = \"x_y->y\"\n";
    let problems = problems(text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with(
            "sites.y: sites x_y and y on one PostgreSQL server would use one replication slot and publication, duplex_a_x_y"
        ),
        "{problems:?}"
    );
    // On another server they are apart, and so are a-b and a_b on one server.
    parse(&text.replace("10.0.0.1:5432", "10.0.0.2")).unwrap();
    let apart = "[sites.a-b]\nkind = \"postgres\"\nurl = \"postgres://duplex@10.0.0.1/shop\"\n\n\
         [sites.a_b]\nkind = \"postgres\"\nurl = \"postgres://duplex@10.0.0.1/shop\"\n\n\
         [[mappings]]\nname = \"t\"\ntables = { a-b = \"public.t\", a_b = \"public.u\" }\n\
         direction = \"a-b->a_b\"\n";
    parse(apart).unwrap();
}

/// The annotated example in deploy/ is a configuration duplex accepts (its password files
/// pointed at files that exist).
#[test]
fn the_example_configuration_in_deploy_is_valid() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/duplex.example.toml"),
    )
    .unwrap();
    let text = text
        .replace(
            "/run/credentials/duplex.service/store.password",
            "store.password",
        )
        .replace(
            "/run/credentials/duplex.service/erp.password",
            "store.password",
        );
    let (config, _dir) = parse_in(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.sites.len(), 2);
    assert_eq!(
        config
            .mappings
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        ["orders", "stock"]
    );
}

#[test]
fn the_metrics_address_is_an_address_and_port() {
    assert_eq!(parse(GOOD).unwrap().metrics_listen, None);
    let text = format!("[metrics]\nlisten = \"127.0.0.1:9464\"\n{GOOD}");
    assert_eq!(
        parse(&text).unwrap().metrics_listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    let problems = problems(&format!("[metrics]\nlisten = \"localhost\"\n{GOOD}"));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("metrics.listen: \"localhost\" is not an address and port"),
        "{problems:?}"
    );
    let error = parse(&format!("[metrics]\nport = 9464\n{GOOD}")).unwrap_err();
    assert!(
        error.to_string().contains("port"),
        "an unknown key in [metrics] is named: {error}"
    );
}

#[test]
fn a_bus_section_is_checked_field_by_field_and_its_password_redacted() {
    assert!(parse(GOOD).unwrap().bus.is_none());
    let text = format!(
        "[bus]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nuser = \"duplex\"\npassword_file = \"store.password\"\nmax_age = \"7d\"\n{GOOD}"
    );
    let bus = parse(&text).unwrap().bus.unwrap();
    assert_eq!(bus.stream_prefix, "duplex");
    assert_eq!(bus.max_age, Some(std::time::Duration::from_secs(7 * 86400)));
    assert_eq!(bus.lease_ttl, std::time::Duration::from_secs(10));
    assert_eq!(bus.password.as_ref().unwrap().expose(), "s3cret");
    assert!(!format!("{bus:?}").contains("s3cret"));
    let problems = problems(&format!(
        "[bus]\nkind = \"kafka\"\nurl = \"http://x\"\nstream_prefix = \"a.b\"\nmax_age = \"soon\"\nuser = \"u\"\n{GOOD}"
    ));
    for field in [
        "bus.kind",
        "bus.url",
        "bus.stream_prefix",
        "bus.max_age",
        "bus.user",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(field)),
            "{field} is not named: {problems:?}"
        );
    }
    let error = parse(&format!(
        "[bus]\nkind = \"nats\"\nurl = \"nats://h:4222\"\nsubject = \"x\"\n{GOOD}"
    ))
    .unwrap_err();
    assert!(error.to_string().contains("subject"), "{error}");
    // With a bus, site names name streams and subjects: a `.` would add a subject token.
    let dotted = GOOD
        .replace("[sites.dock]", "[sites.\"dock.eu\"]")
        .replace("{ dock = ", "{ \"dock.eu\" = ")
        .replace("\"dock->store\"", "\"dock.eu->store\"");
    assert!(parse(&dotted).is_ok(), "without a bus the name is fine");
    let named = crate::problems(&format!(
        "[bus]\nkind = \"nats\"\nurl = \"nats://h:4222\"\n{dotted}"
    ));
    assert!(
        named
            .iter()
            .any(|p| p.starts_with("sites.dock.eu: with a [bus]")),
        "{named:?}"
    );
}
