//! The bus from a MariaDB source: `duplex run --role reader` on the binlog, `--role writer`
//! into PostgreSQL, around a real `nats-server -js`; every source transaction lands exactly
//! once although the reader is SIGKILLed again and again while it publishes.
//!
//! Exactly once is checked twice: the target equals the source row for row, and the writer
//! (which runs throughout) committed exactly as many transactions as the source did
//! (`duplex_transactions_total`: a transaction the target already held is not counted, and a
//! re-published one would be applied twice only if the writer did not skip it).

mod harness;

use std::time::Duration;

use duplex_testkit::{MariaDatabase, NatsServer, PgDatabase, shared_mariadb, shared_pg};
use harness::metrics::{free_port, get, sample_with};
use harness::pg::table_rows;
use harness::{Duplex, rows, wait_for};

const CATCH_UP: Duration = Duration::from_secs(60);

const MY_ITEMS: &str =
    "CREATE TABLE items (id INT PRIMARY KEY, qty INT NOT NULL, note TEXT) ENGINE=InnoDB";
const PG_ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL, note text)";

const READER: &[&str] = &["--role", "reader"];
const WRITER: &[&str] = &["--role", "writer", "--site", "wms"];

fn source_rows(source: &MariaDatabase) -> Vec<Vec<String>> {
    rows(
        &source
            .sql("SELECT id, qty, COALESCE(note, '') FROM items ORDER BY id")
            .unwrap(),
        '\t',
    )
}

/// Round `round`: ten inserts in one transaction and, after the first, an update and a
/// delete of earlier rows in another; the number of transactions committed.
fn workload(source: &MariaDatabase, round: i32) -> u64 {
    let base = round * 10;
    source
        .sql(&format!(
            "INSERT INTO items SELECT seq, seq % 7, concat('note ', seq) FROM seq_{}_to_{}",
            base + 1,
            base + 10
        ))
        .unwrap();
    if round == 0 {
        return 1;
    }
    source
        .sql(&format!(
            "START TRANSACTION; UPDATE items SET qty = qty + 100 WHERE id = {}; DELETE FROM items WHERE id = {}; COMMIT",
            base - 3,
            base - 9
        ))
        .unwrap();
    2
}

/// Waits until `needle` is in the log of `duplex`.
fn wait_logged(duplex: &mut Duplex, needle: &str) {
    wait_for(needle, CATCH_UP, || {
        duplex.assert_running();
        if duplex.log_text().contains(needle) {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
}

fn config(source: &MariaDatabase, wms: &PgDatabase, nats: &NatsServer) -> String {
    let src = source.name();
    format!(
        "[sites.{src}]\nkind = \"mysql\"\nurl = \"{}\"\n\n\
         [sites.wms]\nkind = \"postgres\"\nurl = \"{}\"\n\n\
         [bus]\nkind = \"nats\"\nurl = \"{}\"\n\n\
         [[mappings]]\nname = \"items\"\ntables = {{ {src} = \"{src}.items\", wms = \"public.items\" }}\n\
         direction = \"{src}->wms\"\n",
        source.url(),
        wms.url(),
        nats.url()
    )
}

#[test]
fn a_mariadb_source_lands_exactly_once_through_the_bus_across_reader_kills() {
    let nats = NatsServer::start().unwrap();
    let source = shared_mariadb().create_database();
    source.sql(MY_ITEMS).unwrap();
    let wms = shared_pg().create_database();
    wms.execute_as_duplex(PG_ITEMS).unwrap();
    let config = config(&source, &wms, &nats);
    let port = free_port();
    let mut reader = Duplex::new(&config);
    reader.start_with(READER);
    // A never-backfilled MariaDB source is read from the binlog position at its first start.
    wait_logged(&mut reader, "bus reader started");
    let mut writer = Duplex::new(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n{config}"
    ));
    writer.start_with(WRITER);
    wait_logged(&mut writer, "link started");

    let mut committed = 0;
    let mut starts = 1;
    for round in 0..15 {
        committed += workload(&source, round);
        if round % 3 == 1 {
            // Right after commits, while the reader publishes them; the next round once it
            // streams again.
            reader.kill();
            reader.start_with(READER);
            starts += 1;
            wait_for("the reader to start again", CATCH_UP, || {
                reader.assert_running();
                match reader.log_text().matches("bus reader started").count() {
                    n if n >= starts => Ok(()),
                    n => Err(format!("started {n} times")),
                }
            });
        }
    }
    let expected = source_rows(&source);
    wait_for("the target to equal the source", CATCH_UP, || {
        reader.assert_running();
        writer.assert_running();
        let got = table_rows(&wms, "items");
        if got == expected {
            Ok(())
        } else {
            Err(format!(
                "wms has {} rows, source {}",
                got.len(),
                expected.len()
            ))
        }
    });
    let labels = [("target", "wms")];
    let transactions = || -> Result<f64, String> {
        let (_, text) = get(port, "/metrics")?;
        sample_with(&text, "duplex_transactions_total", &labels)
            .ok_or_else(|| format!("no duplex_transactions_total in:\n{text}"))
    };
    wait_for(
        "the writer to count every transaction",
        CATCH_UP,
        || match transactions()? {
            n if n == committed as f64 => Ok(()),
            n => Err(format!("{n} of {committed}")),
        },
    );
    assert_eq!(transactions().unwrap(), committed as f64);
    let positions = wms.psql("SELECT source FROM duplex.positions").unwrap();
    assert_eq!(positions.trim(), format!("{}@bus-duplex", source.name()));
}
