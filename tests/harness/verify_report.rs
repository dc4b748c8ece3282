//! Reading `duplex verify --json` reports in tests.

use std::collections::BTreeSet;

use super::Duplex;

/// Runs `duplex verify --json <args>` with `env` and returns its exit code and its reports,
/// one per mapping.
pub fn reports_with(
    duplex: &Duplex,
    env: &[(&str, &str)],
    args: &[&str],
) -> (i32, Vec<serde_json::Value>) {
    let mut all = vec!["verify", "--json"];
    all.extend_from_slice(args);
    let out = duplex.command_with(env, &all);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let reports = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{e}: {l}\n{}", String::from_utf8_lossy(&out.stderr)))
        })
        .collect();
    (out.status.code().unwrap_or(-1), reports)
}

/// Missing, extra and differing (`key: column`) keys of a report.
pub fn found(report: &serde_json::Value) -> [BTreeSet<String>; 3] {
    let keys = |field: &str| -> BTreeSet<String> {
        report[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect()
    };
    let mut differing = BTreeSet::new();
    for row in report["differing"].as_array().unwrap() {
        for column in row["columns"].as_array().unwrap() {
            differing.insert(format!(
                "{}: {}",
                row["key"].as_str().unwrap(),
                column["column"].as_str().unwrap()
            ));
        }
    }
    [keys("missing"), keys("extra"), differing]
}

pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}
