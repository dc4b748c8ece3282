//! Reading `duplex verify --json` reports in tests.

use std::collections::BTreeSet;

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
