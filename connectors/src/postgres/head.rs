//! The log head of a PostgreSQL site (see [`crate::head`]).

use tokio_postgres::Client;

use crate::head::{LogHead, SlotWal};

use super::Lsn;

/// The current WAL position and what the slot `slot` keeps, in one statement.
pub(crate) async fn read(client: &Client, slot: &str) -> Result<LogHead, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT pg_current_wal_lsn()::text, s.active, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint \
             FROM (SELECT 1) AS one \
             LEFT JOIN pg_replication_slots s ON s.slot_name = $1",
            &[&slot],
        )
        .await?;
    let current: String = row.get(0);
    let active: Option<bool> = row.get(1);
    Ok(LogHead::Postgres {
        // The server's own text form always parses.
        current: current.parse().unwrap_or(Lsn(0)),
        slot: active.map(|active| SlotWal {
            retained_bytes: row.get(2),
            behind_bytes: row.get(3),
            active,
        }),
    })
}
