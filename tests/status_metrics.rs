//! `duplex status`, `/metrics` and `/health` of a running `duplex run`, end to end through the
//! real binary: the row and transaction counters move by exactly the rows replicated, the lag
//! rises while the target's server is down and falls back to zero once it caught up, `/health`
//! turns 503 naming the link and back to 200, and `status --json` says the same with exit
//! codes 0 (healthy), 1 (degraded) and 2 (not running). The Grafana dashboard uses only
//! metric names `/metrics` exports.

mod harness;

use duplex_testkit::{PgOptions, PgServer, Shutdown, shared_pg};
use harness::metrics::{exported, free_port, get, sample, status};
use harness::pg::{drop_all_slots, one_way_config, table_rows, two_way_config, wait_equal};
use harness::sites::{conflicts, wait_reading};
use harness::{Duplex, REPLICATION_GUARD, drop_slot, wait_for, wait_slot_active};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL)";

/// Inserts rows `ids` into `items` on `db`, one transaction each.
fn insert(db: &duplex_testkit::PgDatabase, ids: std::ops::RangeInclusive<i32>) {
    for id in ids {
        db.psql(&format!("INSERT INTO items VALUES ({id}, 'v{id}')"))
            .unwrap();
    }
}

#[test]
fn metrics_health_and_status_follow_replication_and_a_target_down() {
    // Own server for the target: it is shut down and started again.
    let server = PgServer::start(PgOptions::default()).unwrap();
    let target = server.create_database();
    // The target refuses the value 'bad': such a change becomes a dead letter.
    target
        .execute_as_duplex(
            "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL CHECK (v <> 'bad'))",
        )
        .unwrap();
    let source = shared_pg().create_database();
    source.execute_as_duplex(ITEMS).unwrap();
    let port = free_port();
    let config = format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n{}on_error = \"dead-letter\"\n",
        one_way_config(&source, &target, "items")
    );
    let mut duplex = Duplex::new(&config);

    // Nothing runs: stopped, exit 2.
    let (code, json) = status(&duplex);
    assert_eq!(code, 2, "{json}");
    assert_eq!(json["health"], "stopped");
    assert_eq!(json["running"], false);

    duplex.start();
    wait_slot_active(&source, &mut duplex);
    let link = format!("{} -> wms", source.name());
    let labels = |op: &str| {
        format!(
            "link=\"{link}\",source=\"{}\",target=\"wms\"{op}",
            source.name()
        )
    };
    wait_for("/health to answer 200", REPLICATION_GUARD, || {
        duplex.assert_running();
        match get(port, "/health")? {
            (200, body) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    });

    // 5 inserts, 2 updates and 1 delete, each its own transaction, then one transaction of
    // 25,000 inserts (streamed to the target in parts).
    insert(&source, 1..=5);
    source
        .psql("UPDATE items SET v = 'w1' WHERE id = 1")
        .unwrap();
    source
        .psql("UPDATE items SET v = 'w2' WHERE id = 2")
        .unwrap();
    source.psql("DELETE FROM items WHERE id = 5").unwrap();
    source
        .psql("INSERT INTO items SELECT g, 'big' FROM generate_series(100, 25099) g")
        .unwrap();
    wait_equal(&source, &target, &mut duplex, "items", "the first rows");
    let text = wait_for(
        "the counters to show every transaction",
        REPLICATION_GUARD,
        || {
            let (_, text) = get(port, "/metrics")?;
            match sample(&text, "duplex_transactions_total", &labels("")) {
                Some(9.0) => Ok(text),
                other => Err(format!("{other:?} transactions in:\n{text}")),
            }
        },
    );
    let op =
        |text: &str, op: &str| sample(text, "duplex_rows_total", &labels(&format!(",op=\"{op}\"")));
    assert_eq!(op(&text, "insert"), Some(25_005.0), "{text}");
    assert_eq!(op(&text, "update"), Some(2.0), "{text}");
    assert_eq!(op(&text, "delete"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "duplex_lag_seconds", &labels("")),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "duplex_link_streaming",
            &format!("link=\"{link}\",source=\"{}\"", source.name())
        ),
        Some(1.0),
        "{text}"
    );

    // The dashboard uses only exported names.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana-duplex.json"
    ))
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut used = Vec::new();
    collect_names(&dashboard, &mut used);
    assert!(used.len() >= 5, "the dashboard uses {used:?}");
    for name in &used {
        assert!(
            exported(&text, name),
            "the dashboard uses {name}, which /metrics does not export:\n{text}"
        );
    }

    // status --json says the same: healthy, exit 0.
    let (code, json) = status(&duplex);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["health"], "healthy");
    let links = json["report"]["links"].as_array().unwrap();
    assert_eq!(links.len(), 1, "{json}");
    assert_eq!(links[0]["name"], link.as_str());
    assert_eq!(links[0]["state"]["state"], "streaming");
    let slot = json["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["site"] == source.name())
        .unwrap_or_else(|| panic!("no slot of the source in {json}"));
    assert_eq!(slot["active"], true, "{json}");
    assert!(slot["retained_bytes"].as_i64().unwrap() >= 0, "{json}");
    assert!(slot["behind_bytes"].as_i64().unwrap() >= 0, "{json}");
    let wms = &links[0]["targets"][0];
    // The first sample of the totals was taken at start (0 rows), within the last minute.
    assert!(wms["rows_per_second"].as_f64().unwrap() > 0.0, "{json}");
    assert!(
        wms["transactions_per_second"].as_f64().unwrap() > 0.0,
        "{json}"
    );
    assert_eq!(
        (
            &wms["site"],
            &wms["inserts"],
            &wms["updates"],
            &wms["deletes"],
            &wms["transactions"]
        ),
        (
            &serde_json::json!("wms"),
            &serde_json::json!(25_005),
            &serde_json::json!(2),
            &serde_json::json!(1),
            &serde_json::json!(9)
        ),
        "{json}"
    );

    // A row the target refuses is set aside, and its delete behind it: two dead letters, two
    // transactions committed without rows, the tables equal again.
    source.psql("INSERT INTO items VALUES (50, 'bad')").unwrap();
    source.psql("DELETE FROM items WHERE id = 50").unwrap();
    wait_equal(&source, &target, &mut duplex, "items", "the refused row");
    let text = wait_for("two dead letters", REPLICATION_GUARD, || {
        let (_, text) = get(port, "/metrics")?;
        match (
            sample(&text, "duplex_dead_letters", &labels("")),
            sample(&text, "duplex_transactions_total", &labels("")),
        ) {
            (Some(2.0), Some(11.0)) => Ok(text),
            other => Err(format!("{other:?} in:\n{text}")),
        }
    });
    assert_eq!(op(&text, "insert"), Some(25_005.0), "{text}");
    assert_eq!(op(&text, "delete"), Some(1.0), "{text}");
    let (code, json) = status(&duplex);
    assert_eq!(code, 0, "{json}");
    assert_eq!(
        json["report"]["links"][0]["targets"][0]["dead_letters"], 2,
        "{json}"
    );

    // The target's server goes down while the source is written: lag rises, health is 503
    // naming the link, status is degraded (exit 1).
    server.shut_down(Shutdown::Fast).unwrap();
    insert(&source, 6..=8);
    let first = wait_for("the lag to rise above 1 s", REPLICATION_GUARD, || {
        let (_, text) = get(port, "/metrics")?;
        match sample(&text, "duplex_lag_seconds", &labels("")) {
            Some(lag) if lag > 1.0 => Ok(lag),
            other => Err(format!("lag {other:?}")),
        }
    });
    wait_for("the lag to keep rising", REPLICATION_GUARD, || {
        let (_, text) = get(port, "/metrics")?;
        match sample(&text, "duplex_lag_seconds", &labels("")) {
            Some(lag) if lag > first + 1.0 => Ok(()),
            other => Err(format!("lag {other:?}, first {first}")),
        }
    });
    let body = wait_for("/health to answer 503", REPLICATION_GUARD, || {
        duplex.assert_running();
        match get(port, "/health")? {
            (503, body) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    });
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["healthy"], false, "{body}");
    assert!(
        health["reason"].as_str().unwrap().contains(&link),
        "the reason does not name the link: {body}"
    );
    let json = wait_for(
        "status to say degraded",
        REPLICATION_GUARD,
        || match status(&duplex) {
            (1, json) => Ok(json),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(json["health"], "degraded");
    assert_eq!(
        json["report"]["links"][0]["state"]["state"], "retrying",
        "{json}"
    );
    assert!(
        json["report"]["links"][0]["targets"][0]["lag_seconds"]
            .as_f64()
            .unwrap()
            > 1.0
    );
    // In bytes too: the rows written meanwhile are WAL past what the slot had confirmed.
    let slot = json["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["site"] == source.name())
        .unwrap_or_else(|| panic!("no slot of the source in {json}"));
    assert!(slot["behind_bytes"].as_i64().unwrap() > 0, "{json}");

    // Back up: the rows land, the lag falls to zero, health and status are back, the
    // counters moved by exactly the 3 rows written meanwhile.
    server.start_again().unwrap();
    wait_equal(
        &source,
        &target,
        &mut duplex,
        "items",
        "the rows written while down",
    );
    let text = wait_for("lag 0 and 14 transactions", REPLICATION_GUARD, || {
        let (_, text) = get(port, "/metrics")?;
        match (
            sample(&text, "duplex_lag_seconds", &labels("")),
            sample(&text, "duplex_transactions_total", &labels("")),
        ) {
            (Some(0.0), Some(14.0)) => Ok(text),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(op(&text, "insert"), Some(25_008.0), "{text}");
    assert_eq!(op(&text, "update"), Some(2.0), "{text}");
    assert_eq!(op(&text, "delete"), Some(1.0), "{text}");
    wait_for(
        "/health to answer 200 again",
        REPLICATION_GUARD,
        || match get(port, "/health")? {
            (200, body) => Ok(body),
            other => Err(format!("{other:?}")),
        },
    );
    let (code, json) = status(&duplex);
    assert_eq!(code, 0, "{json}");
    assert!(
        json["report"]["links"][0]["retries"].as_u64().unwrap() >= 1,
        "{json}"
    );

    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    let (code, _) = status(&duplex);
    assert_eq!(code, 2);
    drop_slot(&source);
}

#[test]
fn conflicts_and_held_conflicts_are_counted_until_settled() {
    let (a, b) = (shared_pg().create_database(), shared_pg().create_database());
    a.execute_as_duplex(ITEMS).unwrap();
    b.execute_as_duplex(ITEMS).unwrap();
    let port = free_port();
    let config = format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n{}conflict = \"hold\"\n",
        two_way_config(&a, &b, "items")
    );
    let mut duplex = Duplex::run(&config);
    wait_reading(&mut duplex, 2, REPLICATION_GUARD);
    a.psql("INSERT INTO items VALUES (1, 'pen')").unwrap();
    wait_for("the row to reach b", REPLICATION_GUARD, || {
        duplex.assert_running();
        let rows = table_rows(&b, "items");
        (rows.len() == 1).then_some(()).ok_or(format!("{rows:?}"))
    });
    let (_, text) = get(port, "/metrics").unwrap();
    assert!(text.contains("duplex_held_conflicts 0\n"), "{text}");
    assert_eq!(get(port, "/health").unwrap().0, 200);
    let (code, json) = status(&duplex);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["report"]["links"][0]["name"], "merge engine", "{json}");
    assert_eq!(
        json["report"]["links"][0]["state"]["state"], "streaming",
        "{json}"
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());

    // Both sites change the row while duplex is stopped: one held conflict.
    a.psql("UPDATE items SET v = 'red' WHERE id = 1").unwrap();
    b.psql("UPDATE items SET v = 'blue' WHERE id = 1").unwrap();
    duplex.start();
    wait_reading(&mut duplex, 4, REPLICATION_GUARD);
    let held = "duplex_conflicts_total{mapping=\"items\",policy=\"hold\",outcome=\"held\"} 1\n";
    wait_for("the held conflict in /metrics", REPLICATION_GUARD, || {
        duplex.assert_running();
        let (_, text) = get(port, "/metrics")?;
        (text.contains(held) && text.contains("duplex_held_conflicts 1\n"))
            .then_some(())
            .ok_or(text)
    });
    let (code, json) = status(&duplex);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["report"]["held_conflicts"], 1, "{json}");
    assert_eq!(json["report"]["conflicts"][0]["outcome"], "held", "{json}");

    // Settled by the operator: none held, the count of decided conflicts stays.
    let id = conflicts(&duplex)[0]["id"].as_u64().unwrap();
    let output = duplex.command(&["conflicts", "resolve", &id.to_string(), "--take", a.name()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_for("no held conflict in /metrics", REPLICATION_GUARD, || {
        let (_, text) = get(port, "/metrics")?;
        (text.contains(held) && text.contains("duplex_held_conflicts 0\n"))
            .then_some(())
            .ok_or(text)
    });
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    drop_all_slots(&a);
    drop_all_slots(&b);
}

/// Every `duplex_...` metric name in the dashboard's queries.
fn collect_names(value: &serde_json::Value, names: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match value.as_str() {
                    Some(text) if key == "expr" || key == "definition" => {
                        names.extend(metric_names(text));
                    }
                    _ => collect_names(value, names),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_names(v, names)),
        _ => {}
    }
}

/// The `duplex_...` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("duplex_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names.sort();
    names.dedup();
    names
}
