//! The target side of the initial load (backfill), whatever the target's kind: whether a
//! target table is empty, and deleting the backfill's range markers from `duplex.positions`.
//! The rows themselves go through [`crate::AnyApplier::load`], the target's bulk path.
//!
//! Each function connects for its one statement and closes again; they run once per target
//! and table, never per row.

use std::error::Error;

use crate::{SiteConnection, SiteKind, TableName};

/// An administrative statement failed: what duplex was doing, and the driver's error (kept as
/// the source, so its SQLSTATE or error code stays readable).
#[derive(Debug, thiserror::Error)]
#[error("{doing}")]
pub struct AdminError {
    /// What duplex was doing, e.g. `creating the publication`.
    pub doing: &'static str,
    /// Cause.
    #[source]
    pub source: Box<dyn Error + Send + Sync>,
}

impl AdminError {
    /// An error of `doing`.
    pub fn new(doing: &'static str, source: impl Error + Send + Sync + 'static) -> AdminError {
        AdminError {
            doing,
            source: Box::new(source),
        }
    }

    /// Wraps an error with what duplex was doing (for `map_err`).
    pub fn doing<E: Error + Send + Sync + 'static>(
        doing: &'static str,
    ) -> impl FnOnce(E) -> AdminError {
        move |source| AdminError::new(doing, source)
    }
}

/// Whether `table` on `site` holds no rows.
pub async fn table_is_empty(site: &SiteConnection, table: &TableName) -> Result<bool, AdminError> {
    match site.kind {
        SiteKind::Postgres => crate::postgres::table_is_empty(site, table).await,
        SiteKind::Mysql => crate::mysql::table_is_empty(site, table).await,
        SiteKind::Mssql => crate::mssql::load::table_is_empty(site, table).await,
    }
}

/// Deletes the rows of `duplex.positions` on `site` whose source matches the SQL `LIKE`
/// pattern `pattern` (the backfill's range markers of one mapping), with `!` as its escape
/// character on every kind.
pub async fn delete_positions_like(site: &SiteConnection, pattern: &str) -> Result<(), AdminError> {
    match site.kind {
        SiteKind::Postgres => crate::postgres::delete_positions_like(site, pattern).await,
        SiteKind::Mysql => crate::mysql::delete_positions_like(site, pattern).await,
        SiteKind::Mssql => crate::mssql::load::delete_positions_like(site, pattern).await,
    }
}

/// Deletes the `duplex.positions` row of `source` (exactly that name) on `site`; the table
/// must exist.
pub async fn delete_position(site: &SiteConnection, source: &str) -> Result<(), AdminError> {
    match site.kind {
        SiteKind::Postgres => crate::postgres::delete_position(site, source).await,
        SiteKind::Mysql => crate::mysql::delete_position(site, source).await,
        SiteKind::Mssql => crate::mssql::load::delete_position(site, source).await,
    }
}

/// The sources of the `duplex.positions` rows on `site` (none when the table does not exist).
pub async fn position_sources(site: &SiteConnection) -> Result<Vec<String>, AdminError> {
    match site.kind {
        SiteKind::Postgres => crate::postgres::position_sources(site).await,
        SiteKind::Mysql => crate::mysql::position_sources(site).await,
        SiteKind::Mssql => crate::mssql::positions::position_sources(site).await,
    }
}

/// Renames the `duplex.positions` row of `from` on `site` to `to` unless `to` has one; true
/// when it did.
pub async fn rename_position(
    site: &SiteConnection,
    from: &str,
    to: &str,
) -> Result<bool, AdminError> {
    match site.kind {
        SiteKind::Postgres => crate::postgres::rename_position(site, from, to).await,
        SiteKind::Mysql => crate::mysql::rename_position(site, from, to).await,
        SiteKind::Mssql => crate::mssql::positions::rename_position(site, from, to).await,
    }
}
