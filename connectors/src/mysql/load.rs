//! The backfill's target-side statements on MySQL/MariaDB (see [`crate::load`]).

use mysql_async::prelude::Queryable;

use crate::load::AdminError;
use crate::{SiteConnection, TableName};

use super::{connect, quote_ident};

const EMPTY: &str = "checking that the target table is empty";
const MARKERS: &str = "deleting the backfill's range markers";

/// Whether `table` holds no rows.
pub async fn table_is_empty(site: &SiteConnection, table: &TableName) -> Result<bool, AdminError> {
    let mut conn = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(EMPTY))?;
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM {}.{})",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    );
    let any: Option<i64> = conn
        .query_first(sql)
        .await
        .map_err(AdminError::doing(EMPTY))?;
    let _ = conn.disconnect().await;
    Ok(any == Some(0))
}

/// Deletes the `duplex.positions` rows whose source is `LIKE pattern`.
pub async fn delete_positions_like(site: &SiteConnection, pattern: &str) -> Result<(), AdminError> {
    let mut conn = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(MARKERS))?;
    conn.exec_drop(
        "DELETE FROM duplex.positions WHERE source LIKE ?",
        (pattern,),
    )
    .await
    .map_err(AdminError::doing(MARKERS))?;
    let _ = conn.disconnect().await;
    Ok(())
}
