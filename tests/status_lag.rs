//! Lag in bytes and positions in `duplex status` and `/metrics`, and what `status` reads from
//! the state store when nothing runs: each source on its own server, so the log holds only
//! what the test writes.
//!
//! - MariaDB -> PostgreSQL: while the target's server is down, the lag in bytes is at least
//!   the binlog written meanwhile and the transaction waits in the target's queue; once it
//!   caught up the lag is exactly 0 again, nothing is queued, and the target's position is the
//!   source's binlog position.
//! - PostgreSQL -> PostgreSQL: the same in WAL, and the slot retains at least that WAL while
//!   the target is down; the target's committed position passes the WAL position read before
//!   it went down.
//! - Stopped: `status` reports from the state store the acknowledged position and the
//!   finished backfill with exactly the rows it copied.

mod harness;

use duplex_testkit::{MariaOptions, MariaServer, PgOptions, PgServer, Shutdown};
use harness::metrics::{free_port, get, sample, status};
use harness::pg::{table_rows, wait_equal};
use harness::{Duplex, REPLICATION_GUARD, drop_slot, parse_lsn, wait_for, wait_slot_active};

/// The `duplex_lag_bytes` sample of link `link` (source `source`) into `target`, once the log
/// head was read.
fn lag_bytes(port: u16, link: &str, source: &str, target: &str) -> Result<f64, String> {
    let (_, text) = get(port, "/metrics")?;
    sample(
        &text,
        "duplex_lag_bytes",
        &format!("link=\"{link}\",source=\"{source}\",target=\"{target}\""),
    )
    .ok_or_else(|| format!("no duplex_lag_bytes sample in:\n{text}"))
}

/// `SHOW MASTER STATUS` of a MariaDB server: (file, offset).
fn binlog_position(server: &MariaServer) -> (String, u64) {
    let text = server.sql("", "SHOW MASTER STATUS").unwrap();
    let mut fields = text.split('\t');
    let file = fields.next().unwrap().trim().to_owned();
    let offset = fields.next().unwrap().trim().parse().unwrap();
    (file, offset)
}

#[test]
fn mariadb_lag_in_bytes_rises_while_the_target_is_down_and_returns_to_zero() {
    let maria = MariaServer::start(MariaOptions::default()).unwrap();
    let source = maria.create_database();
    source
        .sql("CREATE TABLE items (id INT PRIMARY KEY, v VARCHAR(50) NOT NULL)")
        .unwrap();
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let target = pg.create_database();
    target
        .execute_as_duplex("CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL)")
        .unwrap();
    let port = free_port();
    let config = format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [sites.store]\nkind = \"mysql\"\nurl = \"{}\"\n\n\
         [sites.erp]\nkind = \"postgres\"\nurl = \"{}\"\n\n\
         [[mappings]]\nname = \"items\"\ntables = {{ store = \"{}.items\", erp = \"public.items\" }}\n\
         direction = \"store->erp\"\n",
        source.url(),
        target.url(),
        source.name()
    );
    let mut duplex = Duplex::run(&config);
    wait_for("the link to start", REPLICATION_GUARD, || {
        duplex.assert_running();
        duplex
            .log_text()
            .contains("link started")
            .then_some(())
            .ok_or_else(|| "not yet".to_owned())
    });
    let link = "store -> erp";
    let count = |n: usize| {
        let target = &target;
        move || {
            let rows = table_rows(target, "items");
            (rows.len() == n)
                .then_some(())
                .ok_or(format!("{} rows", rows.len()))
        }
    };
    source.sql("INSERT INTO items VALUES (1, 'one')").unwrap();
    wait_for("the first row", REPLICATION_GUARD, count(1));
    wait_for("no lag in bytes", REPLICATION_GUARD, || {
        duplex.assert_running();
        match lag_bytes(port, link, "store", "erp")? {
            0.0 => Ok(()),
            other => Err(format!("{other} bytes")),
        }
    });
    // Caught up: the target holds the source's binlog position.
    let (file, offset) = binlog_position(&maria);
    let (_, json) = status(&duplex);
    let erp = &json["report"]["links"][0]["targets"][0];
    assert!(
        erp["position"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{file}:{offset} ")),
        "{json}"
    );
    assert_eq!(erp["lag_bytes"], 0, "{json}");
    assert!(
        json["report"]["links"][0]["source_position"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{file}:{offset}")),
        "{json}"
    );

    pg.shut_down(Shutdown::Fast).unwrap();
    let before = binlog_position(&maria);
    source
        .sql("INSERT INTO items SELECT seq, concat('row ', seq) FROM seq_2_to_2001")
        .unwrap();
    let after = binlog_position(&maria);
    assert_eq!(before.0, after.0, "the binlog rotated");
    let written = (after.1 - before.1) as f64;
    wait_for(
        "the lag in bytes to cover the binlog written",
        REPLICATION_GUARD,
        || match lag_bytes(port, link, "store", "erp")? {
            lag if lag >= written => Ok(()),
            other => Err(format!("{other} bytes, {written} written")),
        },
    );

    let queued = format!("link=\"{link}\",source=\"store\",target=\"erp\"");
    wait_for(
        "the transaction to wait in the target's queue",
        REPLICATION_GUARD,
        || {
            let (_, text) = get(port, "/metrics")?;
            match sample(&text, "duplex_queued_transactions", &queued) {
                Some(n) if n >= 1.0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    );

    pg.start_again().unwrap();
    wait_for("every row", REPLICATION_GUARD, count(2001));
    wait_for("no lag in bytes again", REPLICATION_GUARD, || {
        duplex.assert_running();
        match lag_bytes(port, link, "store", "erp")? {
            0.0 => Ok(()),
            other => Err(format!("{other} bytes")),
        }
    });
    let (code, json) = status(&duplex);
    assert_eq!(code, 0, "{json}");
    assert_eq!(
        json["report"]["links"][0]["targets"][0]["queued_transactions"], 0,
        "{json}"
    );
    assert!(
        json["report"]["links"][0]["targets"][0]["position"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:{} ", after.0, after.1)),
        "{json}"
    );
    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
}

#[test]
fn postgres_lag_in_bytes_retained_wal_and_the_stored_status() {
    let source_server = PgServer::start(PgOptions::default()).unwrap();
    let source = source_server.create_database();
    source
        .execute_as_duplex("CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL)")
        .unwrap();
    source
        .psql("INSERT INTO items SELECT g, 'old ' || g FROM generate_series(1, 3000) g")
        .unwrap();
    let target_server = PgServer::start(PgOptions::default()).unwrap();
    let target = target_server.create_database();
    target
        .execute_as_duplex("CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL)")
        .unwrap();
    let port = free_port();
    let config = format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n{}",
        harness::pg::one_way_config(&source, &target, "items")
    );
    let mut duplex = Duplex::new(&config);

    // The backfill copies the 3,000 rows; status, with nothing running, reads it from the
    // state store.
    let output = duplex.command(&["backfill"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (code, json) = status(&duplex);
    assert_eq!(code, 2, "{json}");
    let backfill = &json["stored"]["backfills"][0];
    assert_eq!(backfill["mapping"], "items", "{json}");
    assert_eq!(backfill["copied"], 3000, "{json}");
    assert_eq!(backfill["complete"], true, "{json}");
    assert_eq!(backfill["ranges_done"], backfill["ranges"], "{json}");

    duplex.start();
    wait_slot_active(&source, &mut duplex);
    let link = format!("{} -> wms", source.name());
    source
        .psql("UPDATE items SET v = 'new' WHERE id = 1")
        .unwrap();
    wait_equal(&source, &target, &mut duplex, "items", "the update");

    let before = parse_lsn(&source.psql("SELECT pg_current_wal_insert_lsn()").unwrap()).unwrap();
    target_server.shut_down(Shutdown::Fast).unwrap();
    source
        .psql("INSERT INTO items SELECT g, 'row ' || g FROM generate_series(3001, 23000) g")
        .unwrap();
    let after = parse_lsn(&source.psql("SELECT pg_current_wal_insert_lsn()").unwrap()).unwrap();
    let written = (after - before) as f64;
    let retained = format!("link=\"{link}\",source=\"{}\"", source.name());
    wait_for(
        "the lag in bytes and the retained WAL to cover the WAL written",
        REPLICATION_GUARD,
        || {
            let lag = lag_bytes(port, &link, source.name(), "wms")?;
            let (_, text) = get(port, "/metrics")?;
            let kept = sample(&text, "duplex_slot_retained_bytes", &retained)
                .ok_or_else(|| format!("no retained WAL in:\n{text}"))?;
            if lag >= written && kept >= written {
                Ok(())
            } else {
                Err(format!("lag {lag}, retained {kept}, {written} written"))
            }
        },
    );

    target_server.start_again().unwrap();
    wait_equal(
        &source,
        &target,
        &mut duplex,
        "items",
        "the rows written while down",
    );
    let json = wait_for(
        "the target's position past the WAL read before it went down",
        REPLICATION_GUARD,
        || {
            let (_, json) = status(&duplex);
            let position = json["report"]["links"][0]["targets"][0]["position"]
                .as_str()
                .and_then(parse_lsn);
            match position {
                Some(lsn) if lsn > before => Ok(json),
                other => Err(format!("{other:?}: {json}")),
            }
        },
    );
    assert!(
        json["report"]["links"][0]["source_position"]
            .as_str()
            .and_then(parse_lsn)
            .is_some_and(|lsn| lsn > before),
        "{json}"
    );
    // Nothing else writes to this server: the lag falls to a small part of what was written
    // (background WAL such as autovacuum's counts until the reader passes it).
    wait_for(
        "the lag in bytes to fall",
        REPLICATION_GUARD,
        || match lag_bytes(port, &link, source.name(), "wms")? {
            lag if lag < written / 10.0 => Ok(()),
            other => Err(format!("{other} bytes, {written} written")),
        },
    );

    assert_eq!(duplex.terminate(), 0, "{}", duplex.log_text());
    // Stopped: the state store says where the source was acknowledged.
    let (code, json) = status(&duplex);
    assert_eq!(code, 2, "{json}");
    let stored = &json["stored"]["links"][0];
    assert_eq!(stored["source"], source.name(), "{json}");
    assert!(
        stored["acknowledged"]
            .as_str()
            .and_then(parse_lsn)
            .is_some_and(|lsn| lsn > before),
        "{json}"
    );
    assert_eq!(stored["targets"][0]["dead_letters"], 0, "{json}");
    drop_slot(&source);
}
