//! The backfill's target-side statements on PostgreSQL (see [`crate::load`]).

use crate::load::AdminError;
use crate::{SiteConnection, TableName};

use super::{connect, quote_ident};

const EMPTY: &str = "checking that the target table is empty";
const MARKERS: &str = "deleting the backfill's range markers";

/// Whether `table` holds no rows.
pub async fn table_is_empty(site: &SiteConnection, table: &TableName) -> Result<bool, AdminError> {
    let client = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(EMPTY))?;
    let sql = format!(
        "SELECT NOT EXISTS (SELECT 1 FROM {}.{})",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(AdminError::doing(EMPTY))?;
    Ok(row.get(0))
}

/// Deletes the `duplex.positions` rows whose source is `LIKE pattern`.
pub async fn delete_positions_like(site: &SiteConnection, pattern: &str) -> Result<(), AdminError> {
    let client = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(MARKERS))?;
    client
        .execute(
            "DELETE FROM duplex.positions WHERE source LIKE $1",
            &[&pattern],
        )
        .await
        .map_err(AdminError::doing(MARKERS))?;
    Ok(())
}
