//! Tests that need a second process: SIGKILL during writes, and a store held by another process.
//!
//! The test binary re-executes itself (`current_exe()`) running a single test with `--exact`;
//! an environment variable tells the child which role to play. The parent synchronises on the
//! lines the child prints, never on sleeps.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use duplex_state::{RowVersions, StateError, StateStore, VersionVector};

/// Set in a child that must act as the crash test's writer; holds the state directory.
const WRITER_ENV: &str = "DUPLEX_STATE_TEST_CRASH_WRITER_DIR";
/// Set in a child that must hold the store open; holds the state directory.
const HOLDER_ENV: &str = "DUPLEX_STATE_TEST_HOLDER_DIR";

/// Rows every writer transaction updates.
const ROWS: u64 = 50;
const MAPPING: &str = "crash";
const WRITER_SITE: &str = "writer";
const TARGET_SITE: &str = "target";
/// A child that is never killed (its parent died) stops by itself after this long.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);
/// A child still running this long after it was started is killed, so a broken test fails
/// (its parent sees the child's stdout end) instead of hanging.
const CHILD_DEADLINE: Duration = Duration::from_secs(90);

/// A copy of this test binary running one test in a role, killed on request or at the deadline.
struct SelfChild {
    stdout: Option<ChildStdout>,
    kill_request: mpsc::Sender<()>,
    killed: mpsc::Receiver<()>,
}

impl SelfChild {
    fn spawn(test: &str, env: &str, dir: &Path) -> SelfChild {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(env, dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take();
        let (kill_request, requests) = mpsc::channel();
        let (done, killed) = mpsc::channel();
        std::thread::spawn(move || {
            // A request, a dropped sender and the deadline all end the child the same way.
            let _ = requests.recv_timeout(CHILD_DEADLINE);
            let _ = child.kill();
            let _ = child.wait();
            let _ = done.send(());
        });
        SelfChild {
            stdout,
            kill_request,
            killed,
        }
    }

    /// What the child reports: lines ending in `<word> <number>`. (libtest prints
    /// `test <name> ... ` without a newline before running the test, so the first report
    /// shares its line.)
    fn reports(&mut self) -> impl Iterator<Item = (String, u64)> + use<> {
        BufReader::new(self.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| {
                let mut words = line.split_whitespace().rev();
                let number = words.next()?.parse().ok()?;
                Some((words.next()?.to_owned(), number))
            })
    }

    /// Sends SIGKILL (`Child::kill`) and waits until the child is gone.
    fn kill(self) {
        let _ = self.kill_request.send(());
        self.killed.recv().unwrap();
    }
}

/// The versions the writer gives row `key` in generation `generation`.
fn row_of_generation(key: u64, generation: u64) -> RowVersions {
    // A new site name every 10 generations, so that site ids are allocated in the same
    // transactions as the rows that use them.
    let epoch_site = format!("epoch-{}", generation / 10);
    let merged: VersionVector = [
        (WRITER_SITE.to_owned(), generation),
        ("other".to_owned(), key + 1),
        (epoch_site.clone(), 1),
    ]
    .into_iter()
    .collect();
    let mut behind = merged.clone();
    behind.set(WRITER_SITE, generation - 1);
    RowVersions {
        held: [
            (WRITER_SITE.to_owned(), merged.clone()),
            (epoch_site, behind),
        ]
        .into(),
        merged,
        deleted_at: None,
        payload: Vec::new(),
    }
}

/// The writer child: one transaction per generation, each updating every row, the position
/// and the pending queue, then reporting the committed generation on stdout.
fn run_writer(dir: &Path) {
    let store = StateStore::open(dir).unwrap();
    let started = Instant::now();
    let mut generation = store.position::<u64>(WRITER_SITE).unwrap().unwrap_or(0);
    while started.elapsed() < CHILD_LIFETIME {
        generation += 1;
        store
            .write(|w| {
                for key in 0..ROWS {
                    w.put_row_versions(
                        MAPPING,
                        &key.to_be_bytes(),
                        &row_of_generation(key, generation),
                    )?;
                }
                w.put_pending(TARGET_SITE, generation, &generation)?;
                w.remove_pending(TARGET_SITE, generation - 1)?;
                w.save_position(WRITER_SITE, &generation)?;
                Ok::<_, StateError>(())
            })
            .unwrap();
        // Fails (and ends the child) once the parent is gone.
        println!("committed {generation}");
    }
}

#[test]
fn sigkill_never_leaves_half_a_transaction() {
    if let Some(dir) = std::env::var_os(WRITER_ENV) {
        run_writer(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut previous = 0;
    // How many commits the parent waits for before each kill: the kill then lands somewhere
    // in the next transaction (building it, writing pages, or in the fsync of its commit).
    for commits_before_kill in [
        1, 5, 2, 17, 3, 1, 9, 30, 4, 2, 12, 1, 7, 1, 3, 22, 2, 6, 1, 11,
    ] {
        let mut child = SelfChild::spawn(
            "sigkill_never_leaves_half_a_transaction",
            WRITER_ENV,
            dir.path(),
        );
        let mut reports = child.reports();
        let mut reported = previous;
        for _ in 0..commits_before_kill {
            let (word, generation) = reports
                .next()
                .expect("the writer stopped before it was killed");
            assert_eq!(word, "committed");
            reported = generation;
        }
        child.kill();
        // Commits it reported between our last read and the kill.
        for (_, generation) in reports {
            reported = reported.max(generation);
        }

        let store = StateStore::open(dir.path()).unwrap();
        let generation = store.position::<u64>(WRITER_SITE).unwrap().unwrap();
        assert!(
            generation == reported || generation == reported + 1,
            "position {generation}, but the writer reported {reported} as its last commit"
        );
        for key in 0..ROWS {
            let row = store.row_versions(MAPPING, &key.to_be_bytes()).unwrap();
            assert_eq!(
                row,
                Some(row_of_generation(key, generation)),
                "row {key} after a kill at generation {generation}"
            );
        }
        assert_eq!(
            store.pending::<u64>(TARGET_SITE).unwrap(),
            vec![(generation, generation)]
        );
        store.close().unwrap();
        previous = generation;
    }
}

#[test]
fn a_store_held_by_another_process_is_refused() {
    if let Some(dir) = std::env::var_os(HOLDER_ENV) {
        let store = StateStore::open(Path::new(&dir)).unwrap();
        println!("open 1");
        // Hold the store until the parent kills us (or closes our stdin).
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut rest);
        drop(store);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = SelfChild::spawn(
        "a_store_held_by_another_process_is_refused",
        HOLDER_ENV,
        dir.path(),
    );
    assert_eq!(child.reports().next(), Some(("open".to_owned(), 1)));

    let err = StateStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StateError::InUse { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "state directory {} is in use by another duplex process",
            dir.path().display()
        )),
        "{err}"
    );

    // The lock dies with the process, even when it is killed.
    child.kill();
    StateStore::open(dir.path()).unwrap();
}
