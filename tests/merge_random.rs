//! Randomized two-way workload on three real sites (PostgreSQL store, MariaDB ERP, PostgreSQL
//! WMS), with duplex killed (SIGKILL) and restarted in the middle: once the sites are quiet,
//! all three hold the same rows, and every conflict duplex reported is in the conflict log.
//! Failing cases are kept in proptest-regressions/merge_random.txt and replayed first.

mod harness;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use harness::sites::{ERP, Sites, conflicts, wait_reading};
use harness::{Duplex, wait_for};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};

const WAIT: Duration = Duration::from_secs(120);
const KEYS: i64 = 12;

#[derive(Debug, Clone)]
enum Op {
    Insert(i64, i64),
    Update(i64, i64),
    Rename(i64, u8),
    Delete(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..=KEYS, 0..100i64).prop_map(|(k, q)| Op::Insert(k, q)),
        4 => (1..=KEYS, 0..100i64).prop_map(|(k, q)| Op::Update(k, q)),
        2 => (1..=KEYS, any::<u8>()).prop_map(|(k, n)| Op::Rename(k, n)),
        2 => (1..=KEYS).prop_map(Op::Delete),
    ]
}

fn sql(op: &Op, site: usize, mariadb: bool) -> String {
    match op {
        Op::Insert(k, q) if mariadb => {
            format!("INSERT IGNORE INTO items VALUES ({k}, 'new at {site}', {q})")
        }
        Op::Insert(k, q) => {
            format!("INSERT INTO items VALUES ({k}, 'new at {site}', {q}) ON CONFLICT DO NOTHING")
        }
        Op::Update(k, q) => format!("UPDATE items SET qty = {q} WHERE id = {k}"),
        Op::Rename(k, n) => format!("UPDATE items SET name = 'named {n} at {site}' WHERE id = {k}"),
        Op::Delete(k) => format!("DELETE FROM items WHERE id = {k}"),
    }
}

fn conflict_ids(duplex: &Duplex) -> BTreeSet<u64> {
    let list = conflicts(duplex);
    for record in &list {
        assert_eq!(record["status"], "resolved", "{record:#}");
        assert_eq!(
            record["versions"].as_array().unwrap().len(),
            2,
            "{record:#}"
        );
    }
    list.iter().map(|r| r["id"].as_u64().unwrap()).collect()
}

/// Conflict ids the log reports (`conflict N resolved: ...`).
fn logged_conflicts(log: &str) -> BTreeSet<u64> {
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find("conflict ")? + "conflict ".len()..];
            let (id, tail) = rest.split_once(' ')?;
            tail.starts_with("resolved").then(|| id.parse().ok())?
        })
        .collect()
}

fn run_case(policy: &str, workload: &[Vec<Op>; 3]) -> Result<(), TestCaseError> {
    let sites = Arc::new(Sites::new());
    let policy = if policy == "prefer:erp" {
        format!("prefer:{}", sites.erp.name())
    } else {
        policy.to_owned()
    };
    let policy = policy.as_str();
    let mut duplex = Duplex::run(&sites.config(policy, ""));
    wait_reading(&mut duplex, 3, WAIT);

    let total: usize = workload.iter().map(Vec::len).sum();
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..3)
        .map(|site| {
            let (sites, done, ops) = (sites.clone(), done.clone(), workload[site].clone());
            std::thread::spawn(move || {
                for op in &ops {
                    sites.try_exec(site, &sql(op, site, site == ERP)).unwrap();
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    // Kill duplex once the workload is half done, and start it again at once.
    wait_for("half of the workload", WAIT, || {
        let n = done.load(Ordering::SeqCst);
        (n * 2 >= total).then_some(()).ok_or_else(|| n.to_string())
    });
    duplex.kill();
    duplex.start();
    for worker in workers {
        worker.join().unwrap();
    }
    wait_reading(&mut duplex, 6, WAIT);
    // A marker from every site: once all three are everywhere, everything each site did
    // before its marker has been read and decided, and the writes it caused made.
    for site in 0..3 {
        let id = 1000 + site as i64;
        sites.exec(
            site,
            &format!("INSERT INTO items VALUES ({id}, 'marker', 0)"),
        );
    }
    let deadline = std::time::Instant::now() + WAIT;
    let converged = loop {
        duplex.assert_running();
        let all = [sites.rows(0), sites.rows(1), sites.rows(2)];
        if let [Ok(a), Ok(b), Ok(c)] = &all {
            let markers = a.iter().filter(|r| r[1] == "marker").count();
            if markers == 3 && a == b && b == c {
                break a.clone();
            }
        }
        if std::time::Instant::now() > deadline {
            // Keep duplex's log for the post-mortem: it records every decision.
            let path = format!(
                "{}/merge_random-{}.log",
                env!("CARGO_TARGET_TMPDIR"),
                sites.store.name()
            );
            std::fs::write(&path, duplex.log_text()).unwrap();
            return Err(TestCaseError::fail(format!(
                "the sites did not converge (workload {workload:?}, policy {policy}; duplex's log: {path}): {all:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stored = conflict_ids(&duplex);
    let logged = logged_conflicts(&duplex.log_text());
    prop_assert!(
        logged.is_subset(&stored),
        "conflicts reported but not in the log: {:?}",
        logged.difference(&stored).collect::<Vec<_>>()
    );
    prop_assert_eq!(duplex.terminate(), 0);
    sites.drop_slots();
    eprintln!(
        "policy {policy}: {total} changes, {} rows at the end, {} conflicts",
        converged.len(),
        stored.len()
    );
    Ok(())
}

#[test]
fn random_workloads_on_three_sites_converge_across_a_kill() {
    let config = Config {
        cases: 3,
        // A case takes three databases and a duplex process: replay the kept seed instead.
        max_shrink_iters: 0,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/merge_random.txt"
        )))),
        ..Config::default()
    };
    let strategy = (
        prop_oneof![
            Just("last-writer-wins"),
            Just("merge-columns"),
            Just("prefer:erp"),
        ],
        [
            prop::collection::vec(op(), 20..40),
            prop::collection::vec(op(), 20..40),
            prop::collection::vec(op(), 20..40),
        ],
    );
    let mut runner = TestRunner::new(config);
    runner
        .run(&strategy, |(policy, workload)| run_case(policy, &workload))
        .unwrap();
}
