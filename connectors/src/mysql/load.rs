//! The backfill's target-side statements on MySQL/MariaDB (see [`crate::load`]).

use mysql_async::prelude::Queryable;

use crate::foreign_keys::{ForeignKeyChecks, TargetForeignKeys};
use crate::load::AdminError;
use crate::{SiteConnection, TableName};

use super::{connect, quote_ident};

const EMPTY: &str = "checking that the target table is empty";
const MARKERS: &str = "deleting the backfill's range markers";
const LIST: &str = "listing the sources of duplex.positions";
const RENAME: &str = "taking over a duplex.positions row";
const FOREIGN_KEYS: &str = "reading the tables' foreign keys";
const FORGET: &str = "deleting a duplex.positions row";

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

/// Deletes the `duplex.positions` rows whose source is `LIKE pattern` (`!` escapes).
pub async fn delete_positions_like(site: &SiteConnection, pattern: &str) -> Result<(), AdminError> {
    let mut conn = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(MARKERS))?;
    conn.exec_drop(
        "DELETE FROM duplex.positions WHERE source LIKE ? ESCAPE '!'",
        (pattern,),
    )
    .await
    .map_err(AdminError::doing(MARKERS))?;
    let _ = conn.disconnect().await;
    Ok(())
}

/// Deletes the `duplex.positions` row of `source` (exactly that name).
pub async fn delete_position(site: &SiteConnection, source: &str) -> Result<(), AdminError> {
    let mut conn = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(FORGET))?;
    conn.exec_drop("DELETE FROM duplex.positions WHERE source = ?", (source,))
        .await
        .map_err(AdminError::doing(FORGET))?;
    let _ = conn.disconnect().await;
    Ok(())
}

/// The sources of `duplex.positions` rows (none when the table does not exist).
pub async fn position_sources(site: &SiteConnection) -> Result<Vec<String>, AdminError> {
    let mut conn = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(LIST))?;
    let exists: Option<i64> = conn
        .query_first(
            "SELECT 1 FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = 'duplex' AND TABLE_NAME = 'positions'",
        )
        .await
        .map_err(AdminError::doing(LIST))?;
    if exists.is_none() {
        let _ = conn.disconnect().await;
        return Ok(Vec::new());
    }
    let sources: Vec<String> = conn
        .query("SELECT source FROM duplex.positions ORDER BY source")
        .await
        .map_err(AdminError::doing(LIST))?;
    let _ = conn.disconnect().await;
    Ok(sources)
}

/// Renames the `duplex.positions` row of `from` to `to`, unless a row of `to` exists; true
/// when it did (one statement: of two processes racing, one renames; the other fails on the
/// primary key or finds no row).
pub async fn rename_position(
    site: &SiteConnection,
    from: &str,
    to: &str,
) -> Result<bool, AdminError> {
    let mut conn = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(RENAME))?;
    let result = conn
        .exec_drop(
            "UPDATE duplex.positions SET source = ? WHERE source = ?",
            (to, from),
        )
        .await;
    let renamed = match result {
        Ok(()) => conn.affected_rows() == 1,
        // ER_DUP_ENTRY: a row of `to` exists.
        Err(mysql_async::Error::Server(e)) if e.code == 1062 => false,
        Err(e) => return Err(AdminError::new(RENAME, e)),
    };
    let _ = conn.disconnect().await;
    Ok(renamed)
}

/// The foreign keys of `tables`; duplex's sessions always turn their checks off here
/// (`foreign_key_checks = 0` needs no privilege, see [`crate::foreign_keys`]).
pub async fn target_foreign_keys(
    site: &SiteConnection,
    tables: &[TableName],
) -> Result<TargetForeignKeys, AdminError> {
    let mut conn = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(FOREIGN_KEYS))?;
    let mut keys = Vec::new();
    for table in tables {
        keys.extend(
            super::catalog::foreign_keys(&mut conn, table)
                .await
                .map_err(AdminError::doing(FOREIGN_KEYS))?,
        );
    }
    let _ = conn.disconnect().await;
    Ok(TargetForeignKeys {
        checks: ForeignKeyChecks::Off {
            setting: "foreign_key_checks = 0",
        },
        keys,
    })
}
