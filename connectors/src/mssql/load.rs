//! The target side of a backfill into SQL Server (see [`crate::load`]): whether a target table
//! is empty, deleting the backfill's range markers and a position row, and the foreign keys
//! of the target tables (the backfill copies a referenced table before the tables referencing
//! it: SQL Server has no session setting that turns the checks off, so a session there always
//! checks them, [`ForeignKeyChecks::On`]).
//!
//! Each function connects for its one statement and closes again.

use tiberius::ToSql;

use super::sql::quote_table;
use super::{MssqlClient, connect};
use crate::foreign_keys::{ForeignKey, ForeignKeyChecks, TargetForeignKeys};
use crate::load::AdminError;
use crate::{SiteConnection, TableName};

/// Deletes the `duplex.positions` rows whose source is `LIKE @P1`, `!` escaping `%`, `_` and
/// itself in the pattern (as on the other kinds).
pub const DELETE_POSITIONS_LIKE: &str = "IF OBJECT_ID(N'duplex.positions', N'U') IS NOT NULL \
     DELETE FROM duplex.positions WHERE source LIKE @P1 ESCAPE N'!'";

/// Deletes the `duplex.positions` row of source `@P1`.
pub const DELETE_POSITION: &str = "DELETE FROM duplex.positions WHERE source = @P1";

/// The enforced foreign keys of table `@P1`: name, referenced schema and table, and the
/// `ON DELETE` / `ON UPDATE` actions as `sys.foreign_keys` spells them (`NO_ACTION`,
/// `CASCADE`, `SET_NULL`, `SET_DEFAULT`). A disabled key (`NOCHECK`) is not checked and
/// runs no action, so it is left out.
pub const FOREIGN_KEYS_QUERY: &str = "SELECT fk.name, \
     OBJECT_SCHEMA_NAME(fk.referenced_object_id), OBJECT_NAME(fk.referenced_object_id), \
     fk.delete_referential_action_desc, fk.update_referential_action_desc \
     FROM sys.foreign_keys fk \
     WHERE fk.parent_object_id = OBJECT_ID(@P1) AND fk.is_disabled = 0 ORDER BY fk.name";

/// Whether `table` holds no rows (the statement for it).
pub fn is_empty_sql(table: &TableName) -> String {
    format!(
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM {}) THEN 0 ELSE 1 END",
        quote_table(table)
    )
}

/// A `sys.foreign_keys` action as SQL spells it (`SET_NULL` is `SET NULL`).
pub fn action(desc: &str) -> String {
    desc.replace('_', " ")
}

/// Whether `table` on `site` holds no rows.
pub async fn table_is_empty(site: &SiteConnection, table: &TableName) -> Result<bool, AdminError> {
    const DOING: &str = "checking that a target table is empty";
    let mut client = session(site, DOING).await?;
    let row = client
        .simple_query(is_empty_sql(table))
        .await
        .map_err(AdminError::doing(DOING))?
        .into_row()
        .await
        .map_err(AdminError::doing(DOING))?;
    Ok(row.and_then(|r| r.get::<i32, _>(0)) == Some(1))
}

/// Deletes the `duplex.positions` rows whose source matches the `LIKE` pattern `pattern`
/// (the backfill's markers of one mapping; `!` is its escape character).
pub async fn delete_positions_like(site: &SiteConnection, pattern: &str) -> Result<(), AdminError> {
    execute(
        site,
        DELETE_POSITIONS_LIKE,
        &[&pattern],
        "deleting backfill markers",
    )
    .await
}

/// Deletes the `duplex.positions` row of `source` (exactly that name).
pub async fn delete_position(site: &SiteConnection, source: &str) -> Result<(), AdminError> {
    execute(
        site,
        DELETE_POSITION,
        &[&source],
        "deleting a row of duplex.positions",
    )
    .await
}

/// The enforced foreign keys declared on `tables` of `site`, checked in every session.
pub async fn target_foreign_keys(
    site: &SiteConnection,
    tables: &[TableName],
) -> Result<TargetForeignKeys, AdminError> {
    const DOING: &str = "reading the foreign keys of the target tables";
    let mut client = session(site, DOING).await?;
    let mut keys = Vec::new();
    for table in tables {
        let name = quote_table(table);
        let rows = client
            .query(FOREIGN_KEYS_QUERY, &[&name])
            .await
            .map_err(AdminError::doing(DOING))?
            .into_first_result()
            .await
            .map_err(AdminError::doing(DOING))?;
        let text = |r: &tiberius::Row, i: usize| r.get::<&str, _>(i).unwrap_or_default().to_owned();
        keys.extend(rows.iter().map(|r| ForeignKey {
            name: text(r, 0),
            table: table.clone(),
            references: TableName::new(text(r, 1), text(r, 2)),
            on_delete: action(&text(r, 3)),
            on_update: action(&text(r, 4)),
            deferrable: false,
        }));
    }
    Ok(TargetForeignKeys {
        checks: ForeignKeyChecks::On,
        keys,
    })
}

async fn session(site: &SiteConnection, doing: &'static str) -> Result<MssqlClient, AdminError> {
    connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(doing))
}

async fn execute(
    site: &SiteConnection,
    sql: &'static str,
    params: &[&dyn ToSql],
    doing: &'static str,
) -> Result<(), AdminError> {
    session(site, doing)
        .await?
        .execute(sql, params)
        .await
        .map_err(AdminError::doing(doing))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_quote_names_and_escape_like_patterns_as_the_other_kinds_do() {
        assert_eq!(
            is_empty_sql(&TableName::new("dbo", "order]s")),
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM [dbo].[order]]s]) THEN 0 ELSE 1 END"
        );
        assert!(DELETE_POSITIONS_LIKE.ends_with("LIKE @P1 ESCAPE N'!'"));
        assert_eq!(action("SET_NULL"), "SET NULL");
        assert_eq!(action("NO_ACTION"), "NO ACTION");
        assert_eq!(action("CASCADE"), "CASCADE");
        let key = ForeignKey {
            name: "fk".into(),
            table: TableName::new("dbo", "lines"),
            references: TableName::new("dbo", "orders"),
            on_delete: action("NO_ACTION"),
            on_update: action("CASCADE"),
            deferrable: false,
        };
        assert_eq!(key.actions(), vec!["ON UPDATE CASCADE".to_owned()]);
    }
}
