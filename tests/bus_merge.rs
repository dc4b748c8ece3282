//! The merge engine on the bus: `duplex run --role reader` publishes the two-way sites'
//! changes (with their echo markers), `duplex run --role coordinator` decides from them and
//! publishes its writes, and `duplex run --role writer --site S` applies them to each site,
//! as separate processes around a real `nats-server -js` started by the test; a PostgreSQL
//! site `a` and a MariaDB site `b`.

mod harness;

use std::time::Duration;

use duplex_testkit::{MariaDatabase, NatsServer, PgDatabase, shared_mariadb, shared_pg};
use harness::sites::conflicts;
use harness::{Duplex, rows, wait_for, wait_slot_active};

/// How long a test waits for the sites to converge before it fails.
const CATCH_UP: Duration = Duration::from_secs(90);

const PG_ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL, note text)";
const MY_ITEMS: &str =
    "CREATE TABLE items (id INT PRIMARY KEY, qty INT NOT NULL, note TEXT) ENGINE=InnoDB";
type Rows = Vec<Vec<String>>;

const SELECT: &str = "SELECT id, qty, COALESCE(note, '') FROM items ORDER BY id";

/// A PostgreSQL site and a MariaDB site, `items` both ways, over a bus.
struct Sites {
    a: PgDatabase,
    b: MariaDatabase,
}

impl Sites {
    fn new() -> Sites {
        let a = shared_pg().create_database();
        let b = shared_mariadb().create_database();
        a.execute_as_duplex(PG_ITEMS).unwrap();
        b.sql(MY_ITEMS).unwrap();
        Sites { a, b }
    }

    /// Runs SQL as an application would: on `a` (PostgreSQL) or `b` (MariaDB).
    fn exec(&self, on_a: bool, sql: &str) -> String {
        match on_a {
            true => self.a.psql(sql),
            false => self.b.sql(sql),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Both sites' `items`: (a, b).
    fn rows(&self) -> Result<(Rows, Rows), String> {
        let a = self.a.psql(SELECT).map_err(|e| e.to_string())?;
        let b = self.b.sql(SELECT).map_err(|e| e.to_string())?;
        Ok((rows(&a, '|'), rows(&b, '\t')))
    }

    fn config(&self, nats: &NatsServer, bus: &str) -> String {
        format!(
            "[sites.{a}]\nkind = \"postgres\"\nurl = \"{au}\"\n\n\
             [sites.{b}]\nkind = \"mysql\"\nurl = \"{bu}\"\n\n\
             [bus]\nkind = \"nats\"\nurl = \"{nats}\"\n{bus}\n\n\
             [[mappings]]\nname = \"items\"\ntables = {{ {a} = \"public.items\", {b} = \"{b}.items\" }}\n\
             direction = \"both\"\nconflict = \"prefer:{b}\"\n",
            a = self.a.name(),
            au = self.a.url(),
            b = self.b.name(),
            bu = self.b.url(),
            nats = nats.url(),
        )
    }

    /// Waits until both sites hold the same `count` rows; `processes` must keep running.
    fn wait_same(&self, count: usize, processes: &mut [&mut Duplex]) -> Vec<Vec<String>> {
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for("the two sites to converge", CATCH_UP, || {
                for process in processes.iter_mut() {
                    process.assert_running();
                }
                let (a, b) = self.rows()?;
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
    }

    /// Releases a stopped reader's slot and its claim on the publication by hand, as its
    /// refusal to share them with another deployment says, so another reader can start.
    fn release_reader_claims(&self) {
        harness::pg::drop_all_slots(&self.a);
        for publication in rows(&self.exec(true, "SELECT pubname FROM pg_publication"), '|') {
            self.exec(
                true,
                &format!("COMMENT ON PUBLICATION \"{}\" IS NULL", publication[0]),
            );
        }
    }
}

fn start(config: &str, args: &[&str]) -> Duplex {
    let mut duplex = Duplex::new(config);
    duplex.start_with(args);
    duplex
}

const READER: &[&str] = &["--role", "reader"];
const COORDINATOR: &[&str] = &["--role", "coordinator"];

/// The writers of both sites: (a, b).
struct Writers {
    a: Duplex,
    b: Duplex,
    args_a: [String; 3],
    args_b: [String; 3],
}

impl Writers {
    fn start(config: &str, sites: &Sites) -> Writers {
        let args = |site: &str| {
            [
                "--role".to_owned(),
                "writer".to_owned(),
                format!("--site={site}"),
            ]
        };
        let (args_a, args_b) = (args(sites.a.name()), args(sites.b.name()));
        Writers {
            a: start(config, &args_a.each_ref().map(String::as_str)),
            b: start(config, &args_b.each_ref().map(String::as_str)),
            args_a,
            args_b,
        }
    }

    fn restart_a(&mut self) {
        self.a
            .start_with(&self.args_a.each_ref().map(String::as_str));
    }

    fn restart_b(&mut self) {
        self.b
            .start_with(&self.args_b.each_ref().map(String::as_str));
    }

    fn kill(&mut self) {
        self.a.kill();
        self.b.kill();
    }
}

/// Starts the reader and waits until it streams from both sites (the PostgreSQL slot
/// streamed from, the MariaDB binlog position recorded).
fn start_reader(sites: &Sites, reader: &mut Duplex) {
    let before = reader.log_text().matches("bus reader started").count();
    reader.start_with(READER);
    wait_slot_active(&sites.a, reader);
    wait_for("the reader to read both sites", CATCH_UP, || {
        reader.assert_running();
        let started = reader.log_text().matches("bus reader started").count();
        if started >= before + 2 {
            Ok(())
        } else {
            Err(format!("{} started", started - before))
        }
    });
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
    sites.exec(
        true,
        &format!(
            "INSERT INTO items SELECT g, 1, 'a' FROM generate_series({a}, {}) g",
            a + 4
        ),
    );
    sites.exec(
        false,
        &format!(
            "INSERT INTO items SELECT seq, 1, 'b' FROM seq_{b}_to_{}",
            b + 4
        ),
    );
    sites.exec(
        round % 2 == 0,
        &format!(
            "UPDATE items SET note = 'round {round}' WHERE id = {}",
            2 + round % 9
        ),
    );
}

#[test]
fn two_way_over_the_bus_converges_exactly_once_across_kills_and_a_nats_restart() {
    let mut nats = NatsServer::start().unwrap();
    let sites = Sites::new();
    let config = sites.config(&nats, "");
    let mut reader = Duplex::new(&config);
    start_reader(&sites, &mut reader);
    let mut coordinator = start(&config, COORDINATOR);
    wait_coordinating(&mut coordinator, 1);
    let mut writers = Writers::start(&config, &sites);
    sites
        .a
        .psql("INSERT INTO items SELECT g, 0, 'seed' FROM generate_series(1, 10) g")
        .unwrap();
    let mut count = 10;
    sites.wait_same(
        count,
        &mut [
            &mut reader,
            &mut coordinator,
            &mut writers.a,
            &mut writers.b,
        ],
    );

    // Changes on both sides while each process is SIGKILLed mid-stream.
    for round in 0..8 {
        workload(&sites, round);
        count += 10;
        if round == 2 {
            reader.kill();
            start_reader(&sites, &mut reader);
        }
        if round == 3 {
            writers.a.kill();
            writers.restart_a();
        }
        if round == 4 {
            // Every process sees the bus go away and come back mid-stream.
            nats.restart().unwrap();
        }
        if round == 5 {
            coordinator.kill();
            coordinator.start_with(COORDINATOR);
        }
        if round == 6 {
            writers.b.kill();
            writers.restart_b();
        }
    }
    sites.wait_same(
        count,
        &mut [
            &mut reader,
            &mut coordinator,
            &mut writers.a,
            &mut writers.b,
        ],
    );

    // A site's writer down: the coordinator goes on deciding (the writes wait in the bus),
    // and the writer catches up when it is back.
    writers.b.kill();
    workload(&sites, 10);
    count += 10;
    wait_for("site a to hold site b's new rows", CATCH_UP, || {
        coordinator.assert_running();
        writers.a.assert_running();
        let (a, b) = sites.rows()?;
        if a.len() == count && b.len() < count {
            Ok(())
        } else {
            Err(format!("a has {} rows, b {}", a.len(), b.len()))
        }
    });
    writers.restart_b();
    sites.wait_same(
        count,
        &mut [
            &mut reader,
            &mut coordinator,
            &mut writers.a,
            &mut writers.b,
        ],
    );

    // A conflict: both sites change row 1 while the coordinator is down (neither change can
    // have seen the other); b's wins everywhere (`prefer:b`: MariaDB commit times have whole
    // seconds, so last-writer-wins could not tell these two apart), logged once.
    coordinator.kill();
    sites
        .a
        .psql("UPDATE items SET note = 'from a' WHERE id = 1")
        .unwrap();
    sites.exec(false, "UPDATE items SET note = 'from b' WHERE id = 1");
    Sites::wait_published(&sites.a, &mut reader);
    coordinator.start_with(COORDINATOR);
    let rows = sites.wait_same(
        count,
        &mut [
            &mut reader,
            &mut coordinator,
            &mut writers.a,
            &mut writers.b,
        ],
    );
    assert_eq!(rows[0], ["1", "0", "from b"], "the preferred site wins");

    // The decision is not made again after another crash of each process.
    coordinator.kill();
    reader.kill();
    writers.kill();
    workload(&sites, 8);
    count += 10;
    start_reader(&sites, &mut reader);
    coordinator.start_with(COORDINATOR);
    writers.restart_a();
    writers.restart_b();
    let rows = sites.wait_same(
        count,
        &mut [
            &mut reader,
            &mut coordinator,
            &mut writers.a,
            &mut writers.b,
        ],
    );

    let log = conflicts(&coordinator);
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0]["status"], "resolved", "{log:#?}");
    assert_eq!(log[0]["winner"], sites.b.name(), "{log:#?}");
    // Nothing lost, nothing written twice: exact counts, and the insert-only rows add up.
    let inserted: Vec<&Vec<String>> = rows
        .iter()
        .filter(|row| row[0].parse::<i32>().unwrap() >= 100)
        .collect();
    assert_eq!(inserted.len(), 100);
    let sum: i64 = inserted
        .iter()
        .map(|row| row[1].parse::<i64>().unwrap())
        .sum();
    assert_eq!(sum, 100);
    for (id, row) in (1..=10).zip(&rows) {
        assert_eq!(row[0], id.to_string());
    }
    for (on_a, yes) in [(true, "t"), (false, "1")] {
        let distinct = sites.exec(on_a, "SELECT count(DISTINCT id) = count(*) FROM items");
        assert_eq!(distinct.trim(), yes);
    }
    // A second coordinator (another state directory) is refused at start (the sites hold the
    // first one's writes and claims), before it touches the streams: the first goes on.
    let mut second = start(&config, COORDINATOR);
    second.assert_stopped_saying(&["another duplex"]);
    assert!(!second.log_text().contains("consuming the stream"));
    workload(&sites, 9);
    count += 10;
    sites.wait_same(
        count,
        &mut [
            &mut reader,
            &mut coordinator,
            &mut writers.a,
            &mut writers.b,
        ],
    );
    assert_eq!(conflicts(&coordinator).len(), 1);

    let log = coordinator.log_text();
    assert!(
        log.contains("consuming the stream") && log.contains("-merge_"),
        "the coordinator read the bus"
    );
    assert!(
        reader.log_text().contains("bus reader started"),
        "the reader published the sites"
    );
    for writer in [&writers.a, &writers.b] {
        assert!(
            writer
                .log_text()
                .contains("writing the merge engine's writes from the bus"),
            "the writers applied the engine's writes"
        );
    }
    coordinator.kill();
    reader.kill();
    writers.kill();
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
    let mut writers = Writers::start(&config, &sites);
    workload(&sites, 0);
    sites.wait_same(
        10,
        &mut [
            &mut reader,
            &mut coordinator,
            &mut writers.a,
            &mut writers.b,
        ],
    );
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
    writers.kill();
    sites.drop_slots();
}

#[test]
fn a_writer_behind_its_outbox_streams_retention_stops_and_the_coordinator_publishes_again() {
    let nats = NatsServer::start().unwrap();
    let sites = Sites::new();
    // The coordinator applies `[bus]`'s retention to the outbox streams, the reader to the
    // merge streams: only the outbox streams are small.
    let config = sites.config(&nats, "");
    let small = sites.config(&nats, "max_bytes = 4096");
    let mut reader = Duplex::new(&config);
    start_reader(&sites, &mut reader);
    let mut coordinator = start(&small, COORDINATOR);
    wait_coordinating(&mut coordinator, 1);
    let mut writers = Writers::start(&config, &sites);
    workload(&sites, 0);
    let mut count = 10;
    sites.wait_same(
        count,
        &mut [
            &mut reader,
            &mut coordinator,
            &mut writers.a,
            &mut writers.b,
        ],
    );
    // Site b's writer is away while far more than 4096 bytes of writes for b are decided:
    // the oldest leave b's outbox stream before b's writer is back.
    writers.b.kill();
    for round in 1..30 {
        workload(&sites, round);
        count += 10;
    }
    wait_for("site a to hold every row", CATCH_UP, || {
        coordinator.assert_running();
        writers.a.assert_running();
        let (a, _) = sites.rows()?;
        if a.len() == count {
            Ok(())
        } else {
            Err(format!("a has {} rows", a.len()))
        }
    });
    writers.restart_b();
    wait_for("b's writer to find its stream short", CATCH_UP, || {
        writers.b.assert_running();
        let log = writers.b.log_text();
        if log.contains("no longer holds the merge engine's writes") {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    let log = writers.b.log_text();
    assert!(
        log.contains("retention") && log.contains("Restart the coordinator"),
        "{log}"
    );
    // As the error says: the coordinator, restarted with a retention that holds them,
    // publishes again what b lacks, from its state directory; b's writer, trying again
    // meanwhile, applies it, each write once.
    coordinator.kill();
    std::fs::write(coordinator.config_path(), &config).unwrap();
    coordinator.start_with(COORDINATOR);
    let rows = sites.wait_same(
        count,
        &mut [
            &mut reader,
            &mut coordinator,
            &mut writers.a,
            &mut writers.b,
        ],
    );
    let inserted: Vec<&Vec<String>> = rows
        .iter()
        .filter(|row| row[0].parse::<i32>().unwrap() >= 100)
        .collect();
    assert_eq!(inserted.len(), count);
    assert!(inserted.iter().all(|row| row[1] == "1"), "{inserted:?}");
    assert!(
        coordinator
            .log_text()
            .contains("publishing again every write after the ones the site holds"),
        "the coordinator found the stream short"
    );
    coordinator.kill();
    reader.kill();
    writers.kill();
    sites.drop_slots();
}

#[test]
fn a_two_way_backfill_hands_over_to_the_bus_roles() {
    let nats = NatsServer::start().unwrap();
    let sites = Sites::new();
    sites
        .a
        .psql("INSERT INTO items SELECT g, g, 'seed' FROM generate_series(1, 50) g")
        .unwrap();
    let config = sites.config(&nats, "");
    // The copy runs with the reader's state directory: the slot it makes is the reader's, and
    // the handover it leaves on b is the bus's, which the coordinator reads.
    let mut reader = Duplex::new(&config);
    let copied = reader.command(&["backfill", "--from", sites.a.name()]);
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    assert_eq!(sites.rows().unwrap().1.len(), 50, "b holds the copy");
    // Changed on a after the copy, before any role runs: streamed from the handover.
    sites.exec(
        true,
        "UPDATE items SET note = 'after the copy' WHERE id = 1",
    );
    sites.exec(true, "INSERT INTO items VALUES (51, 51, 'after the copy')");
    start_reader(&sites, &mut reader);
    let mut coordinator = start(&config, COORDINATOR);
    wait_coordinating(&mut coordinator, 1);
    let mut writers = Writers::start(&config, &sites);
    workload(&sites, 0);
    let rows = sites.wait_same(
        61,
        &mut [
            &mut reader,
            &mut coordinator,
            &mut writers.a,
            &mut writers.b,
        ],
    );
    assert_eq!(rows[0], ["1", "1", "after the copy"]);
    assert!(rows.iter().any(|row| row[0] == "51"));
    let sum: i64 = rows.iter().map(|row| row[1].parse::<i64>().unwrap()).sum();
    // 1..=51 once each, and round 0's ten inserted rows with qty 1.
    assert_eq!(sum, (1..=51).sum::<i64>() + 10);
    assert!(conflicts(&coordinator).is_empty());
    assert!(
        coordinator
            .log_text()
            .contains("starting at the handover position of a backfill"),
        "the coordinator read a from the copy's handover"
    );
    coordinator.kill();
    reader.kill();
    writers.kill();
    sites.drop_slots();
}

#[test]
fn a_writer_never_makes_a_claim_and_passes_over_writes_of_an_engine_without_one() {
    let nats = NatsServer::start().unwrap();
    let sites = Sites::new();
    let config = sites.config(&nats, "");
    let mut reader = Duplex::new(&config);
    start_reader(&sites, &mut reader);
    let mut coordinator = start(&config, COORDINATOR);
    wait_coordinating(&mut coordinator, 1);
    let mut writers = Writers::start(&config, &sites);
    workload(&sites, 0);
    sites.wait_same(
        10,
        &mut [
            &mut reader,
            &mut coordinator,
            &mut writers.a,
            &mut writers.b,
        ],
    );
    // Writes for b wait in its outbox stream; then the engine's claim on b is removed by hand
    // (as a DBA starting the two-way mappings over would) while the engine is stopped.
    writers.b.kill();
    workload(&sites, 1);
    let observer = Duplex::new(&config);
    let outbox = format!("duplex-outbox_{}", sites.b.name());
    wait_for("the writes for b to be published", CATCH_UP, || {
        coordinator.assert_running();
        let out = observer.command(&["status", "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))?;
        let last = json["bus"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["stream"] == outbox.as_str()))
            .and_then(|stream| stream["last_sequence"].as_u64())
            .unwrap_or(0);
        // Round 0's five rows of a in one message, round 1's in another.
        if last >= 2 {
            Ok(())
        } else {
            Err(format!("{json}"))
        }
    });
    coordinator.kill();
    let scope = format!("merge:{}", sites.b.name());
    sites.exec(
        false,
        &format!("DELETE FROM duplex.claims WHERE scope = '{scope}'"),
    );
    writers.restart_b();
    wait_for("b's writer to pass over the writes", CATCH_UP, || {
        writers.b.assert_running();
        let log = writers.b.log_text();
        if log.contains("passing over writes numbered by a deployment that does not hold") {
            Ok(())
        } else {
            Err(log
                .chars()
                .rev()
                .take(3000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect())
        }
    });
    let (_, b) = sites.rows().unwrap();
    assert_eq!(b.len(), 15, "no write of the unclaimed engine landed");
    let claims = sites.exec(
        false,
        &format!("SELECT count(*) FROM duplex.claims WHERE scope = '{scope}'"),
    );
    assert_eq!(claims.trim(), "0", "the writer made no claim");
    reader.kill();
    writers.kill();
    sites.drop_slots();
}

#[test]
fn a_coordinator_stops_when_a_new_reader_started_after_what_it_decided() {
    let nats = NatsServer::start().unwrap();
    let sites = Sites::new();
    let first = sites.config(&nats, "stream_prefix = \"one\"");
    let mut reader = Duplex::new(&first);
    start_reader(&sites, &mut reader);
    let mut coordinator = start(&first, COORDINATOR);
    wait_coordinating(&mut coordinator, 1);
    let mut writers = Writers::start(&first, &sites);
    workload(&sites, 0);
    sites.wait_same(
        10,
        &mut [
            &mut reader,
            &mut coordinator,
            &mut writers.a,
            &mut writers.b,
        ],
    );
    coordinator.kill();
    reader.kill();
    writers.kill();
    // Committed while nothing reads the sites, then a new reader (its own state directory,
    // a new stream) reads them from now on: what lies in between is in no stream. (The old
    // reader's slot and its claim on the publication are released by hand, as its refusal
    // to share them with another deployment says.)
    workload(&sites, 1);
    sites.release_reader_claims();
    let second = sites.config(&nats, "stream_prefix = \"two\"");
    let mut new_reader = Duplex::new(&second);
    start_reader(&sites, &mut new_reader);
    workload(&sites, 2);
    std::fs::write(coordinator.config_path(), &second).unwrap();
    coordinator.start_with(COORDINATOR);
    coordinator.assert_stopped_saying(&[
        "no longer holds what the merge engine needs",
        "never published",
    ]);
    new_reader.kill();
    sites.drop_slots();
}

#[test]
fn status_shows_and_teardown_removes_the_merge_streams_of_this_prefix_and_nothing_else() {
    let nats = NatsServer::start().unwrap();
    let sites = Sites::new();
    // Another deployment's merge streams on the same server, under a prefix this one's is a
    // prefix of: never touched.
    let other = sites.config(&nats, "stream_prefix = \"one_eu\"");
    let mut other_reader = Duplex::new(&other);
    start_reader(&sites, &mut other_reader);
    assert_eq!(other_reader.terminate(), 0);
    sites.release_reader_claims();

    let config = sites.config(&nats, "stream_prefix = \"one\"");
    let mut reader = Duplex::new(&config);
    start_reader(&sites, &mut reader);
    let mut coordinator = start(&config, COORDINATOR);
    wait_coordinating(&mut coordinator, 1);
    let mut writers = Writers::start(&config, &sites);
    workload(&sites, 0);
    sites.wait_same(
        10,
        &mut [
            &mut reader,
            &mut coordinator,
            &mut writers.a,
            &mut writers.b,
        ],
    );
    // `status` reads the merge streams from JetStream: the coordinator's consumer of each
    // catches up with what the reader published, and takes no lease; each outbox stream's
    // writer consumer catches up with what the coordinator published, under its lease.
    let observer = Duplex::new(&config);
    wait_for(
        "the coordinator to have decided every message",
        CATCH_UP,
        || {
            let out = observer.command(&["status", "--json"]);
            let json: serde_json::Value = serde_json::from_slice(&out.stdout)
                .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))?;
            for site in [sites.a.name(), sites.b.name()] {
                let stream = json["bus"]
                    .as_array()
                    .and_then(|all| {
                        all.iter()
                            .find(|s| s["stream"] == format!("one-merge_{site}").as_str())
                    })
                    .ok_or_else(|| format!("no merge stream of {site} in {json}"))?;
                let consumer = &stream["consumers"][0];
                let last = stream["last_sequence"].as_u64().unwrap_or(0);
                if stream["merge"] != true
                    || consumer["consumer"] != "coordinator"
                    || !consumer["lease_holder"].is_null()
                    || last == 0
                    || consumer["lag_messages"] != 0
                {
                    return Err(format!("{stream}"));
                }
                let outbox = json["bus"]
                    .as_array()
                    .and_then(|all| {
                        all.iter()
                            .find(|s| s["stream"] == format!("one-outbox_{site}").as_str())
                    })
                    .ok_or_else(|| format!("no outbox stream of {site} in {json}"))?;
                let consumer = &outbox["consumers"][0];
                if consumer["consumer"] != format!("writer-{site}").as_str()
                    || !consumer["lease_holder"].is_string()
                    || outbox["last_sequence"].as_u64().unwrap_or(0) == 0
                    || consumer["lag_messages"] != 0
                {
                    return Err(format!("{outbox}"));
                }
            }
            Ok(())
        },
    );
    assert_eq!(coordinator.terminate(), 0);
    assert_eq!(reader.terminate(), 0);
    assert_eq!(writers.a.terminate(), 0);
    assert_eq!(writers.b.terminate(), 0);

    let removed = reader.command(&["teardown"]);
    let stdout = String::from_utf8_lossy(&removed.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&removed.stderr);
    assert!(removed.status.success(), "{stdout}{stderr}");
    for site in [sites.a.name(), sites.b.name()] {
        assert!(
            stdout.contains(&format!(
                "removed JetStream stream one-merge_{site} and its consumers coordinator\n"
            )),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "removed JetStream stream one-outbox_{site} and its consumers writer-{site}\n"
            )),
            "{stdout}"
        );
        assert!(
            !stdout.contains(&format!("one_eu-merge_{site}")),
            "{stdout}"
        );
    }
    // Asked again, the server holds nothing more of this prefix; the other prefix's streams
    // are still there (its own teardown finds them).
    let again = reader.command(&["teardown"]);
    let stdout = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(
        again.status.success()
            && stdout.contains("(stream prefix one):\n  nothing of this configuration\n"),
        "{stdout}"
    );
    let found = other_reader.command(&["teardown"]);
    let stdout = String::from_utf8_lossy(&found.stdout).into_owned();
    assert!(
        found.status.success()
            && [sites.a.name(), sites.b.name()]
                .iter()
                .all(|site| stdout
                    .contains(&format!("removed JetStream stream one_eu-merge_{site}\n"))),
        "{stdout}{}",
        String::from_utf8_lossy(&found.stderr)
    );
    sites.drop_slots();
}
