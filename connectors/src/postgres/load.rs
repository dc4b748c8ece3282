//! The backfill's target-side statements on PostgreSQL (see [`crate::load`]).

use crate::foreign_keys::TargetForeignKeys;
use crate::load::AdminError;
use crate::{SiteConnection, TableName};

use super::{connect, quote_ident};

const EMPTY: &str = "checking that the target table is empty";
const MARKERS: &str = "deleting the backfill's range markers";
const LIST: &str = "listing the sources of duplex.positions";
const RENAME: &str = "taking over a duplex.positions row";
const FOREIGN_KEYS: &str = "reading the target tables' foreign keys";
const FORGET: &str = "deleting a duplex.positions row";

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

/// Deletes the `duplex.positions` rows whose source is `LIKE pattern` (`!` escapes).
pub async fn delete_positions_like(site: &SiteConnection, pattern: &str) -> Result<(), AdminError> {
    let client = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(MARKERS))?;
    client
        .execute(
            "DELETE FROM duplex.positions WHERE source LIKE $1 ESCAPE '!'",
            &[&pattern],
        )
        .await
        .map_err(AdminError::doing(MARKERS))?;
    Ok(())
}

/// Deletes the `duplex.positions` row of `source` (exactly that name).
pub async fn delete_position(site: &SiteConnection, source: &str) -> Result<(), AdminError> {
    let client = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(FORGET))?;
    client
        .execute("DELETE FROM duplex.positions WHERE source = $1", &[&source])
        .await
        .map_err(AdminError::doing(FORGET))?;
    Ok(())
}

/// The sources of `duplex.positions` rows (none when the table does not exist).
pub async fn position_sources(site: &SiteConnection) -> Result<Vec<String>, AdminError> {
    let client = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(LIST))?;
    let exists: bool = client
        .query_one("SELECT to_regclass('duplex.positions') IS NOT NULL", &[])
        .await
        .map_err(AdminError::doing(LIST))?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query("SELECT source FROM duplex.positions ORDER BY source", &[])
        .await
        .map_err(AdminError::doing(LIST))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Renames the `duplex.positions` row of `from` to `to`, unless a row of `to` exists; true
/// when it did (one statement: of two processes racing, one renames).
pub async fn rename_position(
    site: &SiteConnection,
    from: &str,
    to: &str,
) -> Result<bool, AdminError> {
    let client = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(RENAME))?;
    let renamed = client
        .execute(
            "UPDATE duplex.positions SET source = $2 WHERE source = $1 \
             AND NOT EXISTS (SELECT 1 FROM duplex.positions WHERE source = $2)",
            &[&from, &to],
        )
        .await
        .map_err(AdminError::doing(RENAME))?;
    Ok(renamed == 1)
}

/// The foreign keys of `tables` and whether duplex's sessions may turn their checks off (see
/// [`crate::foreign_keys`]): tried on a session of this call's own, closed afterwards.
pub async fn target_foreign_keys(
    site: &SiteConnection,
    tables: &[TableName],
) -> Result<TargetForeignKeys, AdminError> {
    let client = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(FOREIGN_KEYS))?;
    let checks = super::apply::relax_foreign_keys(&client)
        .await
        .map_err(AdminError::doing(FOREIGN_KEYS))?;
    let mut keys = Vec::new();
    for table in tables {
        keys.extend(
            super::catalog::foreign_keys(&client, table)
                .await
                .map_err(AdminError::doing(FOREIGN_KEYS))?,
        );
    }
    Ok(TargetForeignKeys { checks, keys })
}
