//! Randomized two-way workload on three real sites (PostgreSQL store, MariaDB ERP, PostgreSQL
//! WMS), with duplex killed (SIGKILL) and restarted in the middle: once the sites are quiet,
//! all three hold the same rows, and every conflict duplex reported is in the conflict log.
//! Failing cases are kept in proptest-regressions/merge_random.txt and replayed first.

mod harness;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use duplex_testkit::{MariaDatabase, PgDatabase, shared_mariadb, shared_pg};
use harness::{Duplex, drop_slot, rows, wait_for};
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

struct Sites {
    store: PgDatabase,
    erp: MariaDatabase,
    wms: PgDatabase,
}

impl Sites {
    fn new() -> Sites {
        let pg = "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL)";
        let store = shared_pg().create_database();
        let erp = shared_mariadb().create_database();
        let wms = shared_pg().create_database();
        store.execute_as_duplex(pg).unwrap();
        erp.sql("CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(100) NOT NULL, qty INT NOT NULL) ENGINE=InnoDB")
            .unwrap();
        wms.execute_as_duplex(pg).unwrap();
        Sites { store, erp, wms }
    }

    fn config(&self, conflict: &str) -> String {
        format!(
            "[sites.{s}]\nkind = \"postgres\"\nurl = \"{su}\"\n\n\
             [sites.{e}]\nkind = \"mysql\"\nurl = \"{eu}\"\n\n\
             [sites.{w}]\nkind = \"postgres\"\nurl = \"{wu}\"\n\n\
             [[mappings]]\nname = \"items\"\n\
             tables = {{ {s} = \"public.items\", {e} = \"{e}.items\", {w} = \"public.items\" }}\n\
             direction = \"both\"\nconflict = \"{conflict}\"\n",
            s = self.store.name(),
            su = self.store.url(),
            e = self.erp.name(),
            eu = self.erp.url(),
            w = self.wms.name(),
            wu = self.wms.url(),
        )
    }

    fn exec(&self, site: usize, sql: &str) -> Result<String, String> {
        match site {
            0 => self.store.psql(sql),
            1 => self.erp.sql(sql),
            _ => self.wms.psql(sql),
        }
        .map_err(|e| e.to_string())
    }

    fn items(&self, site: usize) -> Result<Vec<Vec<String>>, String> {
        let text = self.exec(site, "SELECT id, name, qty FROM items ORDER BY id")?;
        Ok(rows(&text, if site == 1 { '\t' } else { '|' }))
    }
}

fn conflict_ids(duplex: &Duplex) -> BTreeSet<u64> {
    let output = Command::new(env!("CARGO_BIN_EXE_duplex"))
        .arg("--config")
        .arg(duplex.config_path())
        .args(["conflicts", "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
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

fn wait_reading(duplex: &mut Duplex, at_least: usize) {
    wait_for("the merge engine to read every site", WAIT, || {
        duplex.assert_running();
        let n = duplex
            .log_text()
            .matches("merge engine reading site")
            .count();
        (n >= at_least).then_some(()).ok_or_else(|| n.to_string())
    });
}

fn run_case(policy: &str, workload: &[Vec<Op>; 3]) -> Result<(), TestCaseError> {
    let sites = Arc::new(Sites::new());
    let policy = if policy == "prefer:erp" {
        format!("prefer:{}", sites.erp.name())
    } else {
        policy.to_owned()
    };
    let policy = policy.as_str();
    let mut duplex = Duplex::run(&sites.config(policy));
    wait_reading(&mut duplex, 3);

    let total: usize = workload.iter().map(Vec::len).sum();
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..3)
        .map(|site| {
            let (sites, done, ops) = (sites.clone(), done.clone(), workload[site].clone());
            std::thread::spawn(move || {
                for op in &ops {
                    sites.exec(site, &sql(op, site, site == 1)).unwrap();
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
    wait_reading(&mut duplex, 6);
    // A marker from every site: once all three are everywhere, everything each site did
    // before its marker has been read and decided, and the writes it caused made.
    for site in 0..3 {
        let id = 1000 + site as i64;
        sites
            .exec(
                site,
                &format!("INSERT INTO items VALUES ({id}, 'marker', 0)"),
            )
            .unwrap();
    }
    let deadline = std::time::Instant::now() + WAIT;
    let converged = loop {
        duplex.assert_running();
        let all = [sites.items(0), sites.items(1), sites.items(2)];
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
    drop_slot(&sites.store);
    drop_slot(&sites.wms);
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
