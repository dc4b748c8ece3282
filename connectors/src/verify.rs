//! What `duplex verify` needs of a site besides reading rows, whatever its kind.
//!
//! Verify compares a source's rows with a target's while `duplex run` streams, so a row can
//! differ only because its latest change is still in flight. To tell the two apart it reads
//! each source range in a fresh snapshot together with a position at or after the end of
//! every transaction that snapshot sees ([`crate::AnySnapshot::renew`]), and re-checks a
//! differing row only once the target has committed past that position: the position the
//! target's `duplex.positions` records for the source ([`recorded_position`]), or, for a
//! PostgreSQL source, the position its slot is confirmed to ([`confirmed_position`]), which
//! duplex advances only when every target committed everything before it (and which also
//! moves while the source is quiet). Each function connects for its one statement.

use crate::load::AdminError;
use crate::{Position, SiteConnection, SiteKind};

/// The position `site`'s `duplex.positions` records for the source named `source` (none when
/// it records none).
pub async fn recorded_position(
    site: &SiteConnection,
    source: &str,
) -> Result<Option<Position>, AdminError> {
    match site.kind {
        SiteKind::Postgres => crate::postgres::recorded_position(site, source).await,
        SiteKind::Mysql => crate::mysql::recorded_position(site, source).await,
        SiteKind::Mssql => crate::mssql::verify::recorded_position(site, source).await,
    }
}

/// The position up to which every target of the source `site` has committed, as the source
/// itself knows it: PostgreSQL, duplex's slot's confirmed position; MySQL/MariaDB and SQL
/// Server keep no such thing on the server (`None`).
pub async fn confirmed_position(site: &SiteConnection) -> Result<Option<Position>, AdminError> {
    match site.kind {
        SiteKind::Postgres => crate::postgres::confirmed_position(site).await,
        SiteKind::Mysql | SiteKind::Mssql => Ok(None),
    }
}
