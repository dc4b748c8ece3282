//! The merge engine on the bus: `duplex run --role reader` publishes the two-way sites'
//! changes (with their echo markers) and `duplex run --role coordinator` decides from them,
//! as separate processes around a real `nats-server -js` started by the test.

mod harness;

use std::time::Duration;

use duplex_testkit::{NatsServer, PgDatabase, shared_pg};
use harness::sites::conflicts;
use harness::{Duplex, rows, wait_for, wait_slot_active};

/// How long a test waits for the sites to converge before it fails.
const CATCH_UP: Duration = Duration::from_secs(90);

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL, note text)";

/// Two PostgreSQL sites `items` both ways, over a bus.
struct Sites {
    a: PgDatabase,
    b: PgDatabase,
}

impl Sites {
    fn new() -> Sites {
        let a = shared_pg().create_database();
        let b = shared_pg().create_database();
        a.execute_as_duplex(ITEMS).unwrap();
        b.execute_as_duplex(ITEMS).unwrap();
        Sites { a, b }
    }

    fn config(&self, nats: &NatsServer, bus: &str) -> String {
        format!(
            "[sites.{a}]\nkind = \"postgres\"\nurl = \"{au}\"\n\n\
             [sites.{b}]\nkind = \"postgres\"\nurl = \"{bu}\"\n\n\
             [bus]\nkind = \"nats\"\nurl = \"{nats}\"\n{bus}\n\n\
             [[mappings]]\nname = \"items\"\ntables = {{ {a} = \"public.items\", {b} = \"public.items\" }}\n\
             direction = \"both\"\nconflict = \"last-writer-wins\"\n",
            a = self.a.name(),
            au = self.a.url(),
            b = self.b.name(),
            bu = self.b.url(),
            nats = nats.url(),
        )
    }

    fn rows(db: &PgDatabase) -> Result<Vec<Vec<String>>, String> {
        db.psql("SELECT id, qty, COALESCE(note, '') FROM items ORDER BY id")
            .map(|text| rows(&text, '|'))
            .map_err(|e| e.to_string())
    }

    /// Waits until both sites hold the same `count` rows; `processes` must keep running.
    fn wait_same(&self, count: usize, processes: &mut [&mut Duplex]) -> Vec<Vec<String>> {
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for("the two sites to converge", CATCH_UP, || {
                for process in processes.iter_mut() {
                    process.assert_running();
                }
                let (a, b) = (Sites::rows(&self.a)?, Sites::rows(&self.b)?);
                if a == b && a.len() == count {
                    Ok(a)
                } else {
                    Err(format!("a has {} rows, b {}", a.len(), b.len()))
                }
            })
        }));
        match waited {
            Ok(rows) => rows,
            Err(panic) => {
                for process in processes.iter() {
                    eprintln!("--- process log ---\n{}", process.log_text());
                }
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// The site's current WAL position.
    fn wal_now(db: &PgDatabase) -> u64 {
        harness::parse_lsn(&db.psql("SELECT pg_current_wal_lsn()").unwrap()).unwrap()
    }

    /// The confirmed position of duplex's slot on `db` (0: none yet).
    fn confirmed(db: &PgDatabase) -> u64 {
        let text = db
            .psql("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE database = current_database()")
            .unwrap();
        harness::parse_lsn(&text).unwrap_or(0)
    }

    /// Waits until the reader acknowledged everything committed on `db` so far (JetStream
    /// stored it).
    fn wait_published(db: &PgDatabase, reader: &mut Duplex) {
        let written = Sites::wal_now(db);
        wait_for("the reader to publish everything", CATCH_UP, || {
            reader.assert_running();
            let confirmed = Sites::confirmed(db);
            if confirmed >= written {
                Ok(())
            } else {
                Err(format!("confirmed {confirmed:X}, written {written:X}"))
            }
        });
    }

    fn drop_slots(&self) {
        harness::pg::drop_all_slots(&self.a);
        harness::pg::drop_all_slots(&self.b);
    }
}

fn start(config: &str, args: &[&str]) -> Duplex {
    let mut duplex = Duplex::new(config);
    duplex.start_with(args);
    duplex
}

const READER: &[&str] = &["--role", "reader"];
const COORDINATOR: &[&str] = &["--role", "coordinator"];

/// Starts the reader and waits until it streams from both slots.
fn start_reader(sites: &Sites, reader: &mut Duplex) {
    reader.start_with(READER);
    wait_slot_active(&sites.a, reader);
    wait_slot_active(&sites.b, reader);
}

/// Waits until the coordinator consumes both sites' streams.
fn wait_coordinating(coordinator: &mut Duplex, starts: usize) {
    wait_for("the coordinator to read both streams", CATCH_UP, || {
        coordinator.assert_running();
        let reading = coordinator
            .log_text()
            .matches("merge engine reading site")
            .count();
        if reading >= 2 * starts {
            Ok(())
        } else {
            Err(format!("{reading} reading"))
        }
    });
}

/// Round `round`: five inserts on each site (insert-only rows, qty 1, ids apart per site) and
/// an update of a seeded row on one of them.
fn workload(sites: &Sites, round: i32) {
    let (a, b) = (100 + round * 10, 1000 + round * 10);
    sites
        .a
        .psql(&format!(
            "INSERT INTO items SELECT g, 1, 'a' FROM generate_series({a}, {}) g",
            a + 4
        ))
        .unwrap();
    sites
        .b
        .psql(&format!(
            "INSERT INTO items SELECT g, 1, 'b' FROM generate_series({b}, {}) g",
            b + 4
        ))
        .unwrap();
    let site = if round % 2 == 0 { &sites.a } else { &sites.b };
    site.psql(&format!(
        "UPDATE items SET note = 'round {round}' WHERE id = {}",
        2 + round % 9
    ))
    .unwrap();
}

#[test]
fn two_way_over_the_bus_converges_exactly_once_across_kills() {
    let nats = NatsServer::start().unwrap();
    let sites = Sites::new();
    let config = sites.config(&nats, "");
    let mut reader = Duplex::new(&config);
    start_reader(&sites, &mut reader);
    let mut coordinator = start(&config, COORDINATOR);
    wait_coordinating(&mut coordinator, 1);
    sites
        .a
        .psql("INSERT INTO items SELECT g, 0, 'seed' FROM generate_series(1, 10) g")
        .unwrap();
    let mut count = 10;
    sites.wait_same(count, &mut [&mut reader, &mut coordinator]);

    // Changes on both sides while each process is SIGKILLed mid-stream.
    for round in 0..8 {
        workload(&sites, round);
        count += 10;
        if round == 2 {
            reader.kill();
            start_reader(&sites, &mut reader);
        }
        if round == 5 {
            coordinator.kill();
            coordinator.start_with(COORDINATOR);
        }
    }
    sites.wait_same(count, &mut [&mut reader, &mut coordinator]);

    // A conflict: both sites change row 1 while the coordinator is down (neither change can
    // have seen the other); the later one wins everywhere, logged once.
    coordinator.kill();
    sites
        .a
        .psql("UPDATE items SET note = 'from a' WHERE id = 1")
        .unwrap();
    sites
        .b
        .psql("UPDATE items SET note = 'from b' WHERE id = 1")
        .unwrap();
    Sites::wait_published(&sites.a, &mut reader);
    Sites::wait_published(&sites.b, &mut reader);
    coordinator.start_with(COORDINATOR);
    let rows = sites.wait_same(count, &mut [&mut reader, &mut coordinator]);
    assert_eq!(rows[0], ["1", "0", "from b"], "the later commit wins");

    // The decision is not made again after another crash of each process.
    coordinator.kill();
    reader.kill();
    workload(&sites, 8);
    count += 10;
    start_reader(&sites, &mut reader);
    coordinator.start_with(COORDINATOR);
    let rows = sites.wait_same(count, &mut [&mut reader, &mut coordinator]);

    let log = conflicts(&coordinator);
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0]["status"], "resolved", "{log:#?}");
    // Nothing lost, nothing written twice: exact counts, and the insert-only rows add up.
    let inserted: Vec<&Vec<String>> = rows
        .iter()
        .filter(|row| row[0].parse::<i32>().unwrap() >= 100)
        .collect();
    assert_eq!(inserted.len(), 90);
    let sum: i64 = inserted
        .iter()
        .map(|row| row[1].parse::<i64>().unwrap())
        .sum();
    assert_eq!(sum, 90);
    for (id, row) in (1..=10).zip(&rows) {
        assert_eq!(row[0], id.to_string());
    }
    for site in [&sites.a, &sites.b] {
        let distinct = site
            .psql("SELECT count(DISTINCT id) = count(*) FROM items")
            .unwrap();
        assert_eq!(distinct.trim(), "t");
    }
    let log = coordinator.log_text();
    assert!(
        log.contains("consuming the stream") && log.contains("-merge_"),
        "the coordinator read the bus"
    );
    assert!(
        reader.log_text().contains("bus reader started"),
        "the reader published the sites"
    );
    coordinator.kill();
    reader.kill();
    sites.drop_slots();
}

#[test]
fn a_coordinator_behind_the_streams_retention_stops_naming_backfill() {
    let nats = NatsServer::start().unwrap();
    let sites = Sites::new();
    let config = sites.config(&nats, "max_bytes = 4096");
    let mut reader = Duplex::new(&config);
    start_reader(&sites, &mut reader);
    let mut coordinator = start(&config, COORDINATOR);
    wait_coordinating(&mut coordinator, 1);
    workload(&sites, 0);
    sites.wait_same(10, &mut [&mut reader, &mut coordinator]);
    coordinator.kill();
    // Far more than 4096 bytes of transactions: the oldest are dropped as they come.
    for round in 1..30 {
        workload(&sites, round);
    }
    Sites::wait_published(&sites.a, &mut reader);
    coordinator.start_with(COORDINATOR);
    coordinator.assert_stopped_saying(&[
        "no longer holds what the merge engine needs",
        "retention",
        "duplex backfill --from",
    ]);
    reader.kill();
    sites.drop_slots();
}
