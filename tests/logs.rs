//! The command line around the service (issue 13): JSON logs with the span fields, shell
//! completions without a configuration, and the version with the commit built from.

mod harness;

use duplex_testkit::shared_pg;
use harness::pg::{one_way_config, wait_equal};
use harness::{Duplex, duplex_bin};

#[test]
fn json_logs_are_one_object_per_line_with_the_link_span() {
    let store = shared_pg().create_database();
    store
        .execute_as_duplex("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .unwrap();
    let mut duplex = Duplex::new(&one_way_config(&store, &wms, "items"));
    duplex.start_with(&["--log-format", "json"]);
    duplex.wait_link_started();
    store.psql("INSERT INTO items VALUES (1, 'a')").unwrap();
    wait_equal(&store, &wms, &mut duplex, "items", "the row");
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());

    let log = duplex.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let started = lines
        .iter()
        .find(|l| l["message"] == "link started")
        .unwrap_or_else(|| panic!("no `link started` line:\n{log}"));
    assert_eq!(started["level"], "INFO");
    assert!(started["timestamp"].is_string(), "{started}");
    assert_eq!(started["span"]["name"], "link", "{started}");
    assert_eq!(
        started["span"]["link"],
        format!("{} -> wms", store.name()).as_str(),
        "{started}"
    );
    assert_eq!(started["span"]["source"], store.name(), "{started}");
}

#[test]
fn completions_need_no_configuration_and_the_version_names_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(duplex_bin())
            .args(args)
            .current_dir(dir.path())
            .env_remove("DUPLEX_CONFIG")
            .output()
            .unwrap()
    };
    let out = run(&["completions", "bash"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = String::from_utf8_lossy(&out.stdout);
    for word in ["_duplex", "dead-letters", "teardown", "--log-format"] {
        assert!(script.contains(word), "{word} not in the bash completions");
    }
    let out = run(&["--version"]);
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout);
    let commit = version
        .split("(commit ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(")\n"))
        .unwrap_or_else(|| panic!("{version:?} names no commit"));
    assert!(
        commit == "unknown" || commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{version:?}"
    );
}
