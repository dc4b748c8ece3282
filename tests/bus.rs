//! The bus roles end to end: `duplex run --role reader` and `--role writer --site S` as
//! separate processes around a real `nats-server -js` started by the test.

mod harness;

use std::collections::BTreeMap;
use std::time::Duration;

use duplex_testkit::{MariaDatabase, NatsServer, PgDatabase, shared_mariadb, shared_pg};
use harness::metrics::{free_port, get, sample_with, status};
use harness::pg::table_rows;
use harness::{Duplex, drop_slot, rows, wait_for, wait_slot_active};

/// How long a test waits for replication to catch up before it fails.
const CATCH_UP: Duration = Duration::from_secs(60);

const PG_ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL, note text)";
const MY_ITEMS: &str =
    "CREATE TABLE items (id INT PRIMARY KEY, qty INT NOT NULL, note TEXT) ENGINE=InnoDB";

/// A source, a PostgreSQL target `wms` and (optionally) a MariaDB target `erp`.
struct Sites {
    source: PgDatabase,
    wms: PgDatabase,
    erp: Option<MariaDatabase>,
}

impl Sites {
    fn new(with_erp: bool) -> Sites {
        let source = shared_pg().create_database();
        let wms = shared_pg().create_database();
        source.execute_as_duplex(PG_ITEMS).unwrap();
        source
            .psql("ALTER TABLE items REPLICA IDENTITY FULL")
            .unwrap();
        wms.execute_as_duplex(PG_ITEMS).unwrap();
        let erp = with_erp.then(|| {
            let erp = shared_mariadb().create_database();
            erp.sql(MY_ITEMS).unwrap();
            erp
        });
        Sites { source, wms, erp }
    }

    /// The configuration every process of the test shares (each has its own state
    /// directory beside its copy), with `bus` lines added to `[bus]`.
    fn config(&self, nats: &NatsServer, bus: &str) -> String {
        let src = self.source.name();
        let mut text = format!(
            "[sites.{src}]\nkind = \"postgres\"\nurl = \"{}\"\n\n\
             [sites.wms]\nkind = \"postgres\"\nurl = \"{}\"\n\n",
            self.source.url(),
            self.wms.url()
        );
        if let Some(erp) = &self.erp {
            text += &format!("[sites.erp]\nkind = \"mysql\"\nurl = \"{}\"\n\n", erp.url());
        }
        text += &format!(
            "[bus]\nkind = \"nats\"\nurl = \"{}\"\n{bus}\n\n\
             [[mappings]]\nname = \"items_wms\"\ntables = {{ {src} = \"public.items\", wms = \"public.items\" }}\n\
             direction = \"{src}->wms\"\n",
            nats.url()
        );
        if let Some(erp) = &self.erp {
            text += &format!(
                "\n[[mappings]]\nname = \"items_erp\"\ntables = {{ {src} = \"public.items\", erp = \"{}.items\" }}\n\
                 direction = \"{src}->erp\"\n",
                erp.name()
            );
        }
        text
    }

    fn source_rows(&self) -> Vec<Vec<String>> {
        table_rows(&self.source, "items")
    }

    /// The source's current WAL position, as a number.
    fn wal_now(&self) -> u64 {
        lsn(&self.source.psql("SELECT pg_current_wal_lsn()").unwrap())
    }

    /// The slot's confirmed position.
    fn confirmed(&self) -> u64 {
        let text = self
            .source
            .psql("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE database = current_database()")
            .unwrap();
        if text.trim().is_empty() {
            0
        } else {
            lsn(&text)
        }
    }
}

fn lsn(text: &str) -> u64 {
    let (high, low) = text.trim().split_once('/').unwrap();
    (u64::from_str_radix(high, 16).unwrap() << 32) | u64::from_str_radix(low, 16).unwrap()
}

fn erp_rows(erp: &MariaDatabase) -> Vec<Vec<String>> {
    rows(
        &erp.sql("SELECT id, qty, COALESCE(note, '') FROM items ORDER BY id")
            .unwrap(),
        '\t',
    )
}

/// Waits until every target equals the source row for row; `processes` must keep running.
fn wait_equal(sites: &Sites, processes: &mut [&mut Duplex]) {
    let expected = sites.source_rows();
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("the targets to equal the source", CATCH_UP, || {
            for process in processes.iter_mut() {
                process.assert_running();
            }
            let wms = table_rows(&sites.wms, "items");
            if wms != expected {
                return Err(format!(
                    "wms has {} rows, source {}",
                    wms.len(),
                    expected.len()
                ));
            }
            if let Some(erp) = &sites.erp {
                let got = erp_rows(erp);
                if got != expected {
                    return Err(format!(
                        "erp has {} rows, source {}",
                        got.len(),
                        expected.len()
                    ));
                }
            }
            Ok(())
        })
    }));
    if let Err(panic) = waited {
        for process in processes.iter() {
            eprintln!("--- process log ---\n{}", process.log_text());
        }
        std::panic::resume_unwind(panic);
    }
}

/// Round `round` of the workload: ten inserts in one transaction, an update and a delete of
/// earlier rows in another.
fn workload(source: &PgDatabase, round: i32) {
    let base = round * 10;
    source
        .execute_as_duplex(&format!(
            "INSERT INTO items SELECT g, g % 7, 'note ' || g FROM generate_series({}, {}) g",
            base + 1,
            base + 10
        ))
        .unwrap();
    if round > 0 {
        source
            .execute_as_duplex(&format!(
                "BEGIN; UPDATE items SET qty = qty + 100 WHERE id = {}; DELETE FROM items WHERE id = {}; COMMIT",
                base - 3,
                base - 9
            ))
            .unwrap();
    }
}

fn start(config: &str, args: &[&str]) -> Duplex {
    let mut duplex = Duplex::new(config);
    duplex.start_with(args);
    duplex
}

/// Starts the reader and waits until it streams from its slot (a commit before that is
/// outside the stream of a never-backfilled mapping).
fn start_reader(sites: &Sites, config: &str) -> Duplex {
    let mut reader = start(config, READER);
    wait_slot_active(&sites.source, &mut reader);
    reader
}

/// Stops the reader and drops its slot, so no WAL stays pinned.
fn finish(sites: &Sites, mut reader: Duplex) {
    reader.kill();
    drop_slot(&sites.source);
}

const READER: &[&str] = &["--role", "reader"];

fn writer(site: &str) -> Vec<&str> {
    vec!["--role", "writer", "--site", site]
}

/// A small pseudo-random sequence (xorshift), its seed printed so a failing schedule can be
/// replayed with `DUPLEX_TEST_SEED`.
struct Random(u64);

impl Random {
    fn new() -> Random {
        let seed = std::env::var("DUPLEX_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .subsec_nanos() as u64
                    | 1
            });
        eprintln!("kill schedule seed: DUPLEX_TEST_SEED={seed}");
        Random(seed)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn reader_and_writers_replicate_exactly_once_through_kills_and_a_nats_restart() {
    let mut nats = NatsServer::start().unwrap();
    let sites = Sites::new(true);
    let config = sites.config(&nats, "lease_ttl = \"2s\"");
    let mut reader = start_reader(&sites, &config);
    let mut wms = start(&config, &writer("wms"));
    let mut erp = start(&config, &writer("erp"));
    // Each process is SIGKILLed twice, in rounds and at moments drawn at random: 0-250 ms
    // after a round's commits, while they are being read, published, consumed or applied.
    let mut random = Random::new();
    let mut kills: Vec<(i32, usize)> = Vec::new();
    for process in 0..3 {
        while kills.iter().filter(|(_, p)| *p == process).count() < 2 {
            let round = 1 + random.below(22) as i32;
            if round != 12 && !kills.iter().any(|(r, _)| *r == round) {
                kills.push((round, process));
            }
        }
    }
    for round in 0..24 {
        workload(&sites.source, round);
        if round == 12 {
            nats.restart().unwrap();
        }
        if let Some((_, process)) = kills.iter().find(|(r, _)| *r == round) {
            std::thread::sleep(Duration::from_millis(random.below(250)));
            let (duplex, args) = match process {
                0 => (&mut reader, READER.to_vec()),
                1 => (&mut wms, writer("wms")),
                _ => (&mut erp, writer("erp")),
            };
            duplex.kill();
            duplex.start_with(&args);
        }
    }
    wait_equal(&sites, &mut [&mut reader, &mut wms, &mut erp]);
    // Exactly one position row per target: nothing keyed by a writer's own state directory.
    let positions = sites
        .wms
        .psql("SELECT source FROM duplex.positions")
        .unwrap();
    assert_eq!(
        positions.trim(),
        format!("{}@bus-duplex", sites.source.name())
    );
    finish(&sites, reader);
}
#[test]
fn a_stopped_writer_does_not_pin_wal_and_catches_up() {
    let nats = NatsServer::start().unwrap();
    let sites = Sites::new(false);
    let config = sites.config(&nats, "");
    let mut reader = start_reader(&sites, &config);
    let mut wms = start(&config, &writer("wms"));
    workload(&sites.source, 0);
    wait_equal(&sites, &mut [&mut reader, &mut wms]);
    wms.kill();
    for round in 1..6 {
        workload(&sites.source, round);
    }
    let written = sites.wal_now();
    wait_for(
        "the slot to be confirmed past the last commit while the writer is down",
        CATCH_UP,
        || {
            reader.assert_running();
            let confirmed = sites.confirmed();
            if confirmed >= written {
                Ok(())
            } else {
                Err(format!("confirmed {confirmed:X}, written {written:X}"))
            }
        },
    );
    assert_ne!(
        table_rows(&sites.wms, "items"),
        sites.source_rows(),
        "the target cannot have caught up without its writer"
    );
    wms.start_with(&writer("wms"));
    wait_equal(&sites, &mut [&mut reader, &mut wms]);
    finish(&sites, reader);
}
#[test]
fn a_second_writer_waits_and_takes_over_when_the_first_dies() {
    let nats = NatsServer::start().unwrap();
    let sites = Sites::new(false);
    let config = sites.config(&nats, "lease_ttl = \"2s\"");
    let mut reader = start_reader(&sites, &config);
    let mut first = start(&config, &writer("wms"));
    wait_for("the first writer to take the lease", CATCH_UP, || {
        first.assert_running();
        if first.log_text().contains("took the writer lease") {
            Ok(())
        } else {
            Err("no lease yet".into())
        }
    });
    let mut second = start(&config, &writer("wms"));
    wait_for("the second writer to wait", CATCH_UP, || {
        second.assert_running();
        if second.log_text().contains("another writer holds the lease") {
            Ok(())
        } else {
            Err("not waiting yet".into())
        }
    });
    workload(&sites.source, 0);
    wait_equal(&sites, &mut [&mut reader, &mut first, &mut second]);
    assert!(!second.log_text().contains("took the writer lease"));
    first.kill();
    for round in 1..4 {
        workload(&sites.source, round);
    }
    wait_equal(&sites, &mut [&mut reader, &mut second]);
    assert!(second.log_text().contains("took the writer lease"));
    finish(&sites, reader);
}
#[test]
fn a_writer_behind_the_streams_retention_stops_naming_backfill() {
    let nats = NatsServer::start().unwrap();
    let sites = Sites::new(false);
    let config = sites.config(&nats, "max_bytes = 4096");
    let mut reader = start_reader(&sites, &config);
    let mut wms = start(&config, &writer("wms"));
    workload(&sites.source, 0);
    wait_equal(&sites, &mut [&mut reader, &mut wms]);
    wms.kill();
    // Far more than 4096 bytes of transactions: the oldest are dropped as they come.
    for round in 1..30 {
        workload(&sites.source, round);
    }
    let written = sites.wal_now();
    wait_for("the reader to publish everything", CATCH_UP, || {
        reader.assert_running();
        let confirmed = sites.confirmed();
        if confirmed >= written {
            Ok(())
        } else {
            Err(format!("confirmed {confirmed:X}, written {written:X}"))
        }
    });
    wms.start_with(&writer("wms"));
    wms.assert_stopped_saying(&["retention", "duplex backfill --resync"]);
    finish(&sites, reader);
}

#[test]
fn a_writer_paused_while_the_retention_drops_what_it_had_not_read_stops_instead_of_skipping() {
    let nats = NatsServer::start().unwrap();
    let sites = Sites::new(false);
    let config = sites.config(&nats, "max_bytes = 4096");
    let mut reader = start_reader(&sites, &config);
    let mut wms = start(&config, &writer("wms"));
    workload(&sites.source, 0);
    wait_equal(&sites, &mut [&mut reader, &mut wms]);
    // The writer is frozen mid-stream (its consumer stays, its pull requests stay open for at
    // most a few hundred messages) while far more transactions than the stream keeps, and than
    // those requests cover, are published: the stream drops what the writer had not read.
    harness::signal(&wms, "STOP");
    sites
        .source
        .execute_as_duplex(
            "DO $$ BEGIN FOR i IN 1001..2000 LOOP INSERT INTO items VALUES (i, 1, 'paused'); COMMIT; END LOOP; END $$",
        )
        .unwrap();
    let written = sites.wal_now();
    wait_for("the reader to publish everything", CATCH_UP, || {
        reader.assert_running();
        let confirmed = sites.confirmed();
        if confirmed >= written {
            Ok(())
        } else {
            Err(format!("confirmed {confirmed:X}, written {written:X}"))
        }
    });
    harness::signal(&wms, "CONT");
    // Before the feed checked every message against the one before it, the writer went on
    // after the gap and the dropped rows were lost without a word.
    wms.assert_stopped_saying(&["retention", "duplex backfill --resync"]);
    finish(&sites, reader);
}

#[test]
fn a_large_transaction_goes_in_parts_and_lands_once_across_a_writer_kill() {
    let nats = NatsServer::start().unwrap();
    let sites = Sites::new(false);
    let config = sites.config(&nats, "");
    let mut reader = start_reader(&sites, &config);
    workload(&sites.source, 0);
    // Two parts of 10,000 changes and the final piece.
    sites
        .source
        .execute_as_duplex(
            "INSERT INTO items SELECT g, g % 7, 'large ' || g FROM generate_series(1001, 26000) g",
        )
        .unwrap();
    workload(&sites.source, 1);
    let written = sites.wal_now();
    wait_for("the reader to publish everything", CATCH_UP, || {
        reader.assert_running();
        let confirmed = sites.confirmed();
        if confirmed >= written {
            Ok(())
        } else {
            Err(format!("confirmed {confirmed:X}, written {written:X}"))
        }
    });
    let mut wms = start(&config, &writer("wms"));
    wait_for("the writer to start applying", CATCH_UP, || {
        wms.assert_running();
        if wms.log_text().contains("link started") {
            Ok(())
        } else {
            Err("not started".into())
        }
    });
    wms.kill();
    wms.start_with(&writer("wms"));
    wait_equal(&sites, &mut [&mut reader, &mut wms]);
    finish(&sites, reader);
}

/// The consumer of `target` on the source's stream in `status --json` of a configuration copy
/// that runs nothing (status reads the bus itself).
fn consumer(observer: &Duplex, sites: &Sites, target: &str) -> serde_json::Value {
    let (_, json) = status(observer);
    let stream = json["bus"]
        .as_array()
        .unwrap_or_else(|| panic!("no bus in {json}"))
        .iter()
        .find(|s| s["source"] == sites.source.name())
        .unwrap_or_else(|| panic!("no stream of the source in {json}"))
        .clone();
    let found = stream["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["target"] == target)
        .unwrap_or_else(|| panic!("no consumer of {target} in {json}"))
        .clone();
    let mut found = found;
    found["stream_last_sequence"] = stream["last_sequence"].clone();
    found
}

/// Waits until `target`'s consumer has nothing pending and no lag; returns it.
fn wait_caught_up(observer: &Duplex, sites: &Sites, target: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_for("the consumer to have nothing pending", CATCH_UP, || {
        last = consumer(observer, sites, target);
        if last["pending"] == 0 && last["lag_messages"] == 0 && last["ack_pending"] == 0 {
            Ok(())
        } else {
            Err(format!("{last}"))
        }
    });
    last
}

#[test]
fn status_and_metrics_show_pending_messages_lag_and_the_lease_holder() {
    let nats = NatsServer::start().unwrap();
    let sites = Sites::new(true);
    let config = sites.config(&nats, "");
    let port = free_port();
    let wms_config = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n{config}");
    let observer = Duplex::new(&config);
    let mut reader = start_reader(&sites, &config);
    let mut wms = start(&wms_config, &writer("wms"));
    let mut erp = start(&config, &writer("erp"));
    workload(&sites.source, 0);
    wait_equal(&sites, &mut [&mut reader, &mut wms, &mut erp]);
    let before = wait_caught_up(&observer, &sites, "erp");
    let erp_pid = erp.pid().unwrap();
    assert!(
        before["lease_holder"]
            .as_str()
            .is_some_and(|h| h.contains(&format!("pid {erp_pid},"))),
        "{before}"
    );
    assert!(before["lease_since"].is_string(), "{before}");
    let applied = before["applied_sequence"].as_u64().unwrap();
    assert_eq!(before["stream_last_sequence"], applied, "{before}");

    // The erp writer stops cleanly (giving up its lease); N source transactions follow.
    assert_eq!(erp.terminate(), 0);
    const N: u64 = 7;
    for i in 0..N {
        sites
            .source
            .execute_as_duplex(&format!(
                "INSERT INTO items VALUES ({}, 1, 'late')",
                1000 + i
            ))
            .unwrap();
    }
    let mut stopped = serde_json::Value::Null;
    wait_for("the stream to hold the N transactions", CATCH_UP, || {
        reader.assert_running();
        stopped = consumer(&observer, &sites, "erp");
        if stopped["stream_last_sequence"] == applied + N {
            Ok(())
        } else {
            Err(format!("{stopped}"))
        }
    });
    assert_eq!(stopped["pending"], N, "{stopped}");
    assert_eq!(stopped["lag_messages"], N, "{stopped}");
    assert_eq!(stopped["applied_sequence"], applied, "{stopped}");
    assert!(stopped["oldest_unapplied_seconds"].as_f64().unwrap() >= 0.0);
    assert!(stopped["lease_holder"].is_null(), "{stopped}");
    let text = String::from_utf8(observer.command(&["status"]).stdout).unwrap();
    assert!(
        text.contains(&format!(
            "erp (writer-erp): {N} pending, 0 delivered unacknowledged, applied up to sequence {applied}, {N} behind"
        )) && text.contains("no writer holds the lease"),
        "{text}"
    );
    // The running writer of wms: nothing pending, its lease held, in status and /metrics.
    let wms_pid = wms.pid().unwrap();
    let running = wait_caught_up(&observer, &sites, "wms");
    assert!(
        running["lease_holder"]
            .as_str()
            .is_some_and(|h| h.contains(&format!("pid {wms_pid},"))),
        "{running}"
    );
    let stream = format!("duplex_{}", sites.source.name());
    wait_for(
        "/metrics of the wms writer to show its consumer",
        CATCH_UP,
        || {
            wms.assert_running();
            let (_, text) = get(port, "/metrics")?;
            let labels = [("stream", stream.as_str()), ("target", "wms")];
            let pending = sample_with(&text, "duplex_bus_pending_messages", &labels);
            let lag = sample_with(&text, "duplex_bus_lag_messages", &labels);
            let lease = sample_with(&text, "duplex_bus_lease_held", &labels);
            if pending == Some(0.0) && lag == Some(0.0) && lease == Some(1.0) {
                Ok(())
            } else {
                Err(format!("pending {pending:?}, lag {lag:?}, lease {lease:?}"))
            }
        },
    );

    // Restarted, the erp writer takes the lease and applies the N transactions.
    erp.start_with(&writer("erp"));
    wait_equal(&sites, &mut [&mut reader, &mut wms, &mut erp]);
    let after = wait_caught_up(&observer, &sites, "erp");
    assert_eq!(after["applied_sequence"], applied + N, "{after}");
    let erp_pid = erp.pid().unwrap();
    assert!(
        after["lease_holder"]
            .as_str()
            .is_some_and(|h| h.contains(&format!("pid {erp_pid},"))),
        "{after}"
    );
    finish(&sites, reader);
}

#[test]
fn teardown_removes_the_bus_position_rows_once_no_writer_holds_the_lease() {
    let nats = NatsServer::start().unwrap();
    let sites = Sites::new(false);
    let config = sites.config(&nats, "");
    let mut reader = start_reader(&sites, &config);
    let mut wms = start(&config, &writer("wms"));
    workload(&sites.source, 0);
    wait_equal(&sites, &mut [&mut reader, &mut wms]);
    let key = format!("{}@bus-duplex", sites.source.name());
    let positions = || {
        sites
            .wms
            .psql("SELECT source FROM duplex.positions")
            .unwrap()
    };
    assert_eq!(positions().trim(), key);

    // The reader's state directory is free once it stopped, but wms's writer still applies.
    assert_eq!(reader.terminate(), 0);
    let refused = reader.command(&["teardown", "--site", "wms"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("holds the lease of this site") && stderr.contains("nothing was removed"),
        "{stderr}"
    );
    assert_eq!(positions().trim(), key);

    // Stopped, the writer gives up its lease: the row goes, and the schema with it.
    assert_eq!(wms.terminate(), 0);
    let stdout = teardown(&wms, &["--site", "wms"]);
    assert!(
        stdout.contains(&format!("removed duplex.positions row {key}"))
            && stdout.contains(&format!(
                "removed JetStream consumer writer-wms of stream duplex_{}",
                sites.source.name()
            )),
        "{stdout}"
    );
    assert_eq!(
        sites
            .wms
            .psql("SELECT to_regclass('duplex.positions') IS NULL")
            .unwrap()
            .trim(),
        "t",
        "{stdout}"
    );
    finish(&sites, reader);
}

/// `duplex status --json` of a running role (through its control socket), once it says
/// healthy and `ready` accepts its `report.role` and the stream's last sequence as `status`
/// read it from JetStream.
fn wait_role(
    process: &mut Duplex,
    what: &str,
    ready: impl Fn(&serde_json::Value, &serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for(what, CATCH_UP, || {
        process.assert_running();
        let (code, json) = status(process);
        let role = &json["report"]["role"];
        match code == 0 && ready(role, &json["bus"][0]["last_sequence"]) {
            true => Ok(json),
            false => Err(format!("exit {code}: {json}")),
        }
    })
}

#[test]
fn status_asks_a_running_reader_and_writers_through_their_control_sockets() {
    let nats = NatsServer::start().unwrap();
    let sites = Sites::new(false);
    let config = sites.config(&nats, "lease_ttl = \"2s\"");
    let mut reader = start_reader(&sites, &config);
    let mut wms = start(&config, &writer("wms"));
    workload(&sites.source, 0);
    workload(&sites.source, 1);
    wait_equal(&sites, &mut [&mut reader, &mut wms]);
    let stream = format!("duplex_{}", sites.source.name());

    // The reader: what JetStream stored, up to the stream's last sequence, and what the
    // source was acknowledged up to.
    let json = wait_role(
        &mut reader,
        "the reader to report its stream",
        |role, last| {
            last.is_u64()
                && role["streams"][0]["last_sequence"] == *last
                && role["streams"][0]["published"].is_string()
                && role["streams"][0]["acknowledged"].is_string()
        },
    );
    let last = json["bus"][0]["last_sequence"].as_u64().unwrap();
    let role = &json["report"]["role"];
    assert_eq!(role["role"], "reader", "{json}");
    let published = &role["streams"][0];
    assert_eq!(published["source"], sites.source.name(), "{json}");
    assert_eq!(published["stream"], stream, "{json}");
    let link = &json["report"]["links"][0];
    assert_eq!(link["state"]["state"], "streaming", "{json}");
    let text = String::from_utf8(reader.command(&["status"]).stdout).unwrap();
    assert!(
        text.contains(&format!(
            "{} -> stream {stream}: published up to {}",
            sites.source.name(),
            published["published"].as_str().unwrap()
        )) && text.contains(&format!("(last sequence {last})")),
        "{text}"
    );

    // The writer: its lease, the sequence its target committed, nothing pending, no lag.
    let json = wait_role(
        &mut wms,
        "the writer to report what it applied",
        |role, _| role["streams"][0]["applied_sequence"] == last,
    );
    let role = &json["report"]["role"];
    assert_eq!(role["role"], "writer", "{json}");
    assert_eq!(role["site"], "wms", "{json}");
    assert_eq!(role["lease_held"], true, "{json}");
    assert!(role["lease_since"].is_string(), "{json}");
    let applied = &role["streams"][0];
    assert_eq!(applied["stream"], stream, "{json}");
    assert_eq!(applied["pending"], 0, "{json}");
    assert_eq!(applied["lag_messages"], 0, "{json}");
    let target = &json["report"]["links"][0]["targets"][0];
    assert_eq!(target["site"], "wms", "{json}");
    assert_eq!(target["lag_seconds"], 0.0, "{json}");
    let text = String::from_utf8(wms.command(&["status"]).stdout).unwrap();
    assert!(
        text.contains("bus writer of wms: holds the lease since")
            && text.contains(&format!(
                "stream {stream} (from {}): applied up to sequence {last}, 0 pending, 0 behind",
                sites.source.name()
            )),
        "{text}"
    );

    // A second writer of wms waits for the lease, and says so.
    let mut standby = start(&config, &writer("wms"));
    let json = wait_role(
        &mut standby,
        "the second writer to report waiting",
        |role, _| role["role"] == "writer",
    );
    assert_eq!(json["report"]["role"]["lease_held"], false, "{json}");
    let text = String::from_utf8(standby.command(&["status"]).stdout).unwrap();
    assert!(
        text.contains("bus writer of wms: waiting for the lease"),
        "{text}"
    );
    finish(&sites, reader);
}

/// Runs `work` with a JetStream client of `nats`.
fn with_jetstream<T, F: std::future::Future<Output = T>>(
    nats: &NatsServer,
    work: impl FnOnce(async_nats::jetstream::Context) -> F,
) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        work(async_nats::jetstream::new(client)).await
    })
}

/// Every JetStream stream on `nats`, with its consumers.
fn jetstream(nats: &NatsServer) -> BTreeMap<String, Vec<String>> {
    use futures_util::TryStreamExt;
    with_jetstream(nats, |context| async move {
        let names: Vec<String> = context.stream_names().try_collect().await.unwrap();
        let mut all = BTreeMap::new();
        for name in names {
            let stream = context.get_stream(&name).await.unwrap();
            let mut consumers: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
            consumers.sort();
            all.insert(name, consumers);
        }
        all
    })
}

/// Streams of another deployment on the same NATS server, whose prefix `duplex_eu` starts
/// with this one's: a source stream with a writer's consumer, and a lease stream.
fn other_deployment(nats: &NatsServer, source: &str) {
    use async_nats::jetstream::{consumer, stream};
    with_jetstream(nats, |context| async move {
        let created = context
            .create_stream(stream::Config {
                name: format!("duplex_eu_{source}"),
                subjects: vec![format!("duplex_eu.{source}")],
                ..Default::default()
            })
            .await
            .unwrap();
        created
            .create_consumer(consumer::pull::Config {
                durable_name: Some("writer-wms".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        context
            .create_stream(stream::Config {
                name: "duplex_eu_leases".into(),
                subjects: vec!["duplex_eu_leases.*".into()],
                ..Default::default()
            })
            .await
            .unwrap();
    });
}

/// `duplex teardown args` with `process`'s configuration and state directory, which must
/// succeed; its output.
fn teardown(process: &Duplex, args: &[&str]) -> String {
    let mut all = vec!["teardown"];
    all.extend(args);
    let done = process.command(&all);
    let stdout = String::from_utf8_lossy(&done.stdout).into_owned();
    assert!(
        done.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    stdout
}

#[test]
fn teardown_removes_this_prefixs_streams_once_no_writer_holds_a_lease_and_nothing_else() {
    let nats = NatsServer::start().unwrap();
    let sites = Sites::new(false);
    let config = sites.config(&nats, "");
    let source = sites.source.name().to_owned();
    other_deployment(&nats, &source);
    let mut reader = start_reader(&sites, &config);
    let mut wms = start(&config, &writer("wms"));
    workload(&sites.source, 0);
    wait_equal(&sites, &mut [&mut reader, &mut wms]);
    let stream = format!("duplex_{source}");
    let others = BTreeMap::from([
        (format!("duplex_eu_{source}"), vec!["writer-wms".to_owned()]),
        ("duplex_eu_leases".to_owned(), Vec::new()),
    ]);
    let mut ours = others.clone();
    ours.insert(stream.clone(), vec!["writer-wms".to_owned()]);
    ours.insert("duplex_leases".to_owned(), Vec::new());
    ours.insert("duplex-identity".to_owned(), Vec::new());
    assert_eq!(jetstream(&nats), ours);

    // The writer of wms holds its lease: teardown refuses, removing nothing.
    assert_eq!(reader.terminate(), 0);
    let refused = reader.command(&["teardown"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("site wms: the bus writer")
            && stderr.contains("holds the lease of this site")
            && stderr.contains("nothing was removed"),
        "{stderr}"
    );
    assert_eq!(jetstream(&nats), ours);

    // Stopped, the writer gives up its lease: this prefix's streams and consumers go, the
    // other deployment's stay.
    assert_eq!(wms.terminate(), 0);
    let stdout = teardown(&reader, &[]);
    assert!(
        stdout.contains(&format!(
            "bus {} (stream prefix duplex):\n  removed JetStream stream {stream} and its consumers writer-wms\n  removed JetStream stream duplex_leases (the writers' leases)\n",
            nats.url()
        )),
        "{stdout}"
    );
    assert_eq!(jetstream(&nats), others, "{stdout}");

    // Again: nothing left to remove.
    let stdout = teardown(&reader, &[]);
    assert!(
        stdout.contains("(stream prefix duplex):\n  nothing of this configuration\n")
            && stdout.contains("Removed 0 object(s)"),
        "{stdout}"
    );
    assert_eq!(jetstream(&nats), others);
}

#[test]
fn a_writer_started_while_nats_is_down_waits_for_it_and_then_applies() {
    let mut nats = NatsServer::start().unwrap();
    let sites = Sites::new(false);
    let config = sites.config(&nats, "");
    let mut reader = start_reader(&sites, &config);
    nats.shut_down();
    // Started while nothing answers on the bus's port: it waits instead of exiting.
    let mut wms = start(&config, &writer("wms"));
    wait_for("the writer to wait for the bus", CATCH_UP, || {
        wms.assert_running();
        if wms.log_text().contains("the bus does not answer yet") {
            Ok(())
        } else {
            Err("not waiting yet".into())
        }
    });
    nats.start_again().unwrap();
    workload(&sites.source, 0);
    wait_equal(&sites, &mut [&mut reader, &mut wms]);
    finish(&sites, reader);
}
