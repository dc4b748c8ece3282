//! What `duplex verify` reads on PostgreSQL besides rows (see [`crate::verify`]): where a
//! fresh read stands in the WAL, what a target committed of a source, and how far the source's
//! slot is confirmed.

use tokio_postgres::Client;

use crate::load::AdminError;
use crate::{Position, SiteConnection};

use super::{Lsn, PgError, PgSnapshotError, connect};

const RENEW: &str = "starting a fresh read transaction";
const POSITION: &str = "reading duplex.positions";
const SLOT: &str = "reading the slot's confirmed position";

/// Ends `client`'s read transaction and begins a new repeatable-read one whose snapshot is
/// taken by the statement reading the WAL insert position: every transaction the new snapshot
/// sees had its commit record inserted before that statement, so it ends at or before the
/// returned position.
pub(super) async fn renew(client: &Client) -> Result<Lsn, PgSnapshotError> {
    client
        .batch_execute("COMMIT; BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(PgError::query(RENEW))?;
    let row = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(PgError::query(RENEW))?;
    let text: String = row.get(0);
    text.parse().map_err(|_| {
        PgSnapshotError::Protocol(format!(
            "pg_current_wal_insert_lsn() returned {text:?}, not an LSN"
        ))
    })
}

/// The position `site`'s `duplex.positions` records for `source` (none without the table or
/// the row).
pub async fn recorded_position(
    site: &SiteConnection,
    source: &str,
) -> Result<Option<Position>, AdminError> {
    let client = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(POSITION))?;
    let row = client
        .query_opt(
            "SELECT position FROM duplex.positions \
             WHERE to_regclass('duplex.positions') IS NOT NULL AND source = $1",
            &[&source],
        )
        .await;
    let row = match row {
        Ok(row) => row,
        // The table does not exist: nothing committed yet.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => None,
        Err(e) => return Err(AdminError::new(POSITION, e)),
    };
    Ok(row.and_then(|r| serde_json::from_str(&r.get::<_, String>(0)).ok()))
}

/// The position duplex's slot on `site` is confirmed up to: every target of the site has
/// committed every transaction of the mapped tables ending at or before it (`None` without the
/// slot).
pub async fn confirmed_position(site: &SiteConnection) -> Result<Option<Position>, AdminError> {
    let client = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(SLOT))?;
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&super::slot_name(site)],
        )
        .await
        .map_err(AdminError::doing(SLOT))?;
    Ok(row
        .and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|t| t.parse::<Lsn>().ok())
        .map(Position::Postgres))
}
