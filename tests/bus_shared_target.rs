//! Two bus deployments with the same `stream_prefix` (each with a NATS server of its own) and a
//! source of the same name, writing into two databases of one MariaDB server, whose
//! `duplex.positions` is server-wide: they would share the row `<source>@bus-duplex` and the
//! second would skip every transaction of its own source that the first's row already passed.
//! The second bus's writer finds the target claimed by the first bus and stops, saying what to
//! change, before it applies anything; the first goes on.

mod harness;

use std::time::Duration;

use duplex_testkit::{MariaDatabase, NatsServer, PgDatabase, shared_mariadb, shared_pg};
use harness::pg::table_rows;
use harness::{Duplex, rows, wait_for};

const CATCH_UP: Duration = Duration::from_secs(60);

const PG_ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL)";
const MY_ITEMS: &str = "CREATE TABLE items (id INT PRIMARY KEY, qty INT NOT NULL) ENGINE=InnoDB";

/// One bus deployment: its source `store`, its target `erp` and its NATS server, with the
/// default stream prefix.
struct Deployment {
    /// The source's site name, the same in both deployments (unique to the test run: the
    /// shared MariaDB server keeps the claims of earlier runs).
    site: String,
    source: PgDatabase,
    erp: MariaDatabase,
    nats: NatsServer,
}

impl Deployment {
    fn new(site: &str) -> Deployment {
        let source = shared_pg().create_database();
        source.execute_as_duplex(PG_ITEMS).unwrap();
        let erp = shared_mariadb().create_database();
        erp.sql(MY_ITEMS).unwrap();
        Deployment {
            site: site.to_owned(),
            source,
            erp,
            nats: NatsServer::start().unwrap(),
        }
    }

    fn config(&self) -> String {
        format!(
            "[sites.{site}]\nkind = \"postgres\"\nurl = \"{}\"\n\n\
             [sites.erp]\nkind = \"mysql\"\nurl = \"{}\"\n\n\
             [bus]\nkind = \"nats\"\nurl = \"{}\"\n\n\
             [[mappings]]\nname = \"items\"\n\
             tables = {{ {site} = \"public.items\", erp = \"{}.items\" }}\n\
             direction = \"{site}->erp\"\n",
            self.source.url(),
            self.erp.url(),
            self.nats.url(),
            self.erp.name(),
            site = self.site,
        )
    }

    fn erp_rows(&self) -> Vec<Vec<String>> {
        rows(
            &self
                .erp
                .sql("SELECT id, qty FROM items ORDER BY id")
                .unwrap(),
            '\t',
        )
    }

    /// Starts this deployment's reader and waits until it streams from its slot (a commit
    /// before that is outside the stream of a never-backfilled mapping).
    fn start_reader(&self) -> Duplex {
        let mut reader = Duplex::new(&self.config());
        reader.start_with(&["--role", "reader"]);
        // The site is named `store` in both deployments, so the slot is not the one
        // `harness::pg_slot` names: any slot of the database, created and streamed from.
        wait_for("the reader to stream from its slot", CATCH_UP, || {
            reader.assert_running();
            let streamed = self
                .source
                .psql(
                    "SELECT count(*) FROM pg_replication_slots s \
                     JOIN pg_stat_replication r ON r.pid = s.active_pid \
                     WHERE s.database = current_database() AND s.confirmed_flush_lsn IS NOT NULL",
                )
                .map_err(|e| e.to_string())?;
            if streamed.trim() == "1" {
                Ok(())
            } else {
                Err("not streamed from yet".into())
            }
        });
        reader
    }

    /// Drops the reader's slot once the reader let go of it.
    fn drop_slot(&self) {
        wait_for("the slot to be dropped", CATCH_UP, || {
            self.source
                .psql(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE database = current_database()",
                )
                .map(drop)
                .map_err(|e| e.to_string())
        });
    }

    fn start_writer(&self) -> Duplex {
        let mut writer = Duplex::new(&self.config());
        writer.start_with(&["--role", "writer", "--site", "erp"]);
        writer
    }

    /// Waits until `erp` equals the source, with `processes` running.
    fn wait_equal(&self, processes: &mut [&mut Duplex]) {
        wait_for("the bus to copy the source's rows", CATCH_UP, || {
            for process in processes.iter_mut() {
                process.assert_running();
            }
            let (got, want) = (self.erp_rows(), table_rows(&self.source, "items"));
            if got == want {
                Ok(())
            } else {
                Err(format!("erp has {} rows of {}", got.len(), want.len()))
            }
        });
    }

    fn insert(&self, from: i32, to: i32) {
        self.source
            .execute_as_duplex(&format!(
                "INSERT INTO items SELECT g, g * 10 FROM generate_series({from}, {to}) g"
            ))
            .unwrap();
    }
}

#[test]
fn a_second_bus_with_the_same_prefix_stops_instead_of_sharing_a_targets_positions() {
    let site = format!("store_{}", std::process::id());
    let first = Deployment::new(&site);
    let second = Deployment::new(&site);
    let mut first_reader = first.start_reader();
    let mut first_writer = first.start_writer();
    first.insert(1, 50);
    first.wait_equal(&mut [&mut first_reader, &mut first_writer]);

    // The second bus's source commits its rows before the first's next ones, and the first
    // applies those before the second's writer starts: the first's position row is then past
    // the second's rows, and shared, it would make the second skip them all.
    let mut second_reader = second.start_reader();
    second.insert(1, 20);
    first.insert(51, 60);
    first.wait_equal(&mut [&mut first_reader, &mut first_writer]);
    let mut second_writer = second.start_writer();
    let code = wait_for("the second bus's writer to stop", CATCH_UP, || {
        second_writer
            .exit_code()
            .ok_or_else(|| format!("still running:\n{}", second_writer.log_text()))
    });
    assert_ne!(code, 0, "{}", second_writer.log_text());
    let log = second_writer.log_text();
    assert!(
        log.contains("two bus deployments with the same stream_prefix and a source of the same name write into this database")
            && log.contains("Give each deployment its own stream_prefix"),
        "{log}"
    );
    assert!(second.erp_rows().is_empty(), "nothing was applied");
    assert!(
        log.contains(&format!("the duplex.positions row {site}@bus-duplex")),
        "{log}"
    );

    // The first bus goes on.
    first.insert(61, 70);
    first.wait_equal(&mut [&mut first_reader, &mut first_writer]);
    assert_eq!(first.erp_rows().len(), 70);

    for process in [
        &mut first_writer,
        &mut first_reader,
        &mut second_writer,
        &mut second_reader,
    ] {
        process.kill();
    }
    first.drop_slot();
    second.drop_slot();
}
