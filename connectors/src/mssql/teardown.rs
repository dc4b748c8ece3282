//! `duplex teardown` on SQL Server (see [`crate::teardown`]). A SQL Server source holds nothing
//! of duplex's: its changes are read from the change tables of capture instances the DBA
//! enabled, and those are never touched (other readers may use them; `sys.sp_cdc_disable_table`
//! is the DBA's to run). A target holds schema `duplex` of its database with
//! `duplex.positions` and `duplex.claims`: this deployment's rows go, and the schema with its
//! two tables once nothing else is in it.
//!
//! # Dropping the schema only when it is empty
//! SQL Server's DDL is transactional, so the check and the drop run in one transaction
//! ([`DROP_IF_EMPTY`]): exclusive table locks on both tables, held to its end, make a writer
//! that comes meanwhile wait for the commit; the check then sees every row committed before, and
//! nothing can be added between the check and the drop. A writer that waited fails on the
//! dropped table and creates the schema again on its next attempt, as on a new database. A
//! capture instance that captures `duplex.positions` (two-way links reading this database) goes
//! with the table: SQL Server drops the capture instance of a table that is dropped.

use super::MssqlClient;
use crate::SiteConnection;
use crate::load::AdminError;
use crate::teardown::{Found, Leftovers};

const FIND: &str = "looking for what duplex created on a SQL Server site";
const REMOVE: &str = "removing what duplex created on a SQL Server site";

/// Whether schema `duplex` exists, and the objects in it other than its two tables (one result
/// set each): `(name, type)` of every top-level object.
pub const FIND_SCHEMA: &str = "SELECT CASE WHEN SCHEMA_ID(N'duplex') IS NULL THEN 0 ELSE 1 END; \
     SELECT o.name, o.type_desc FROM sys.objects AS o \
     WHERE o.schema_id = SCHEMA_ID(N'duplex') AND o.parent_object_id = 0 \
     AND NOT (o.type = 'U' AND o.name IN (N'positions', N'claims')) ORDER BY o.name";

/// The claims (scope, deployment); nothing when the table does not exist.
pub const CLAIMS: &str = "IF OBJECT_ID(N'duplex.claims', N'U') IS NOT NULL \
     SELECT scope, deployment FROM duplex.claims ORDER BY scope";

/// Deletes the `duplex.positions` row of source `@P1`.
pub const DELETE_POSITION: &str = "DELETE FROM duplex.positions WHERE source = @P1";

/// Deletes the `duplex.claims` row of scope `@P1`.
pub const DELETE_CLAIM: &str = "DELETE FROM duplex.claims WHERE scope = @P1";

/// Drops both tables and schema `duplex` in one transaction, under exclusive locks on both
/// tables, when neither holds a row and nothing else is in the schema; its last result is one
/// row, 1 when it dropped them, 0 when it left them (see the module doc).
pub const DROP_IF_EMPTY: &str = "SET XACT_ABORT ON; BEGIN TRANSACTION; \
     DECLARE @busy int = 0; \
     IF OBJECT_ID(N'duplex.positions', N'U') IS NOT NULL \
         EXEC sys.sp_executesql N'SELECT @b = COUNT(*) FROM (SELECT TOP (1) 1 AS x \
             FROM duplex.positions WITH (TABLOCKX, HOLDLOCK)) AS t', N'@b int OUTPUT', \
             @b = @busy OUTPUT; \
     IF @busy = 0 AND OBJECT_ID(N'duplex.claims', N'U') IS NOT NULL \
         EXEC sys.sp_executesql N'SELECT @b = COUNT(*) FROM (SELECT TOP (1) 1 AS x \
             FROM duplex.claims WITH (TABLOCKX, HOLDLOCK)) AS t', N'@b int OUTPUT', \
             @b = @busy OUTPUT; \
     IF @busy = 0 AND EXISTS (SELECT 1 FROM sys.objects WHERE schema_id = SCHEMA_ID(N'duplex') \
         AND parent_object_id = 0 AND NOT (type = 'U' AND name IN (N'positions', N'claims'))) \
         SET @busy = 1; \
     IF @busy = 0 AND SCHEMA_ID(N'duplex') IS NOT NULL \
     BEGIN \
         IF OBJECT_ID(N'duplex.positions', N'U') IS NOT NULL DROP TABLE duplex.positions; \
         IF OBJECT_ID(N'duplex.claims', N'U') IS NOT NULL DROP TABLE duplex.claims; \
         DROP SCHEMA duplex; \
     END; \
     COMMIT TRANSACTION; \
     SELECT CASE WHEN @busy = 0 THEN 1 ELSE 0 END";

/// What is in schema `duplex` of `site`'s database.
pub(crate) async fn find(site: &SiteConnection) -> Result<Found, AdminError> {
    let mut client = super::connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(FIND))?;
    let sets = results(&mut client, FIND_SCHEMA).await?;
    let exists = sets
        .first()
        .and_then(|rows| rows.first())
        .is_some_and(|row| row.first().is_some_and(|v| v == "1"));
    if !exists {
        return Ok((Vec::new(), Vec::new(), None, Vec::new()));
    }
    let others = sets
        .get(1)
        .into_iter()
        .flatten()
        .map(|row| format!("duplex.{} ({})", row[0], row[1].to_lowercase()))
        .collect();
    drop(client);
    let positions = super::positions::position_sources(site).await?;
    let mut client = super::connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(FIND))?;
    let claims = results(&mut client, CLAIMS)
        .await?
        .into_iter()
        .flatten()
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect();
    Ok((positions, claims, Some("schema duplex".to_owned()), others))
}

/// Removes `leftovers` from `site`.
pub(crate) async fn remove(
    site: &SiteConnection,
    leftovers: &Leftovers,
) -> Result<Vec<String>, AdminError> {
    let mut client = super::connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(REMOVE))?;
    let mut done = Vec::new();
    for source in &leftovers.positions {
        client
            .execute(DELETE_POSITION, &[source])
            .await
            .map_err(AdminError::doing("deleting rows of duplex.positions"))?;
        done.push(format!("duplex.positions row {source}"));
    }
    for scope in &leftovers.claims {
        client
            .execute(DELETE_CLAIM, &[scope])
            .await
            .map_err(AdminError::doing("deleting rows of duplex.claims"))?;
        done.push(format!("duplex.claims row {scope}"));
    }
    if leftovers.drops_bookkeeping() {
        let sets = results(&mut client, DROP_IF_EMPTY).await?;
        let dropped = sets
            .last()
            .and_then(|rows| rows.first())
            .is_some_and(|row| row.first().is_some_and(|v| v == "1"));
        if dropped {
            done.push("schema duplex (duplex.positions, duplex.claims)".to_owned());
        }
    }
    Ok(done)
}

/// Every result set of `sql`, each value as text (`""` for NULL): the queries here return
/// text and `int`s only.
async fn results(client: &mut MssqlClient, sql: &str) -> Result<Vec<Vec<Vec<String>>>, AdminError> {
    let sets = client
        .simple_query(sql)
        .await
        .map_err(AdminError::doing(REMOVE))?
        .into_results()
        .await
        .map_err(AdminError::doing(REMOVE))?;
    Ok(sets
        .iter()
        .map(|rows| {
            rows.iter()
                .map(|row| (0..row.len()).map(|i| text(row, i)).collect())
                .collect()
        })
        .collect())
}

/// Column `i` of `row` as text.
fn text(row: &tiberius::Row, i: usize) -> String {
    if let Ok(Some(value)) = row.try_get::<&str, _>(i) {
        return value.to_owned();
    }
    if let Ok(Some(value)) = row.try_get::<i32, _>(i) {
        return value.to_string();
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_goes_only_in_one_transaction_under_exclusive_locks_when_empty() {
        let begin = DROP_IF_EMPTY.find("BEGIN TRANSACTION").unwrap();
        let lock = DROP_IF_EMPTY.find("TABLOCKX, HOLDLOCK").unwrap();
        let drop = DROP_IF_EMPTY.find("DROP SCHEMA duplex").unwrap();
        let commit = DROP_IF_EMPTY.find("COMMIT TRANSACTION").unwrap();
        assert!(begin < lock && lock < drop && drop < commit);
        assert!(DROP_IF_EMPTY.starts_with("SET XACT_ABORT ON"));
        // Both tables are locked and counted before anything is dropped.
        assert_eq!(DROP_IF_EMPTY.matches("TABLOCKX, HOLDLOCK").count(), 2);
        assert!(DROP_IF_EMPTY.find("FROM duplex.claims").unwrap() < drop);
        // Any other object in the schema keeps it.
        assert!(DROP_IF_EMPTY.contains("parent_object_id = 0"));
    }

    #[test]
    fn capture_instances_are_never_touched() {
        for sql in [
            FIND_SCHEMA,
            CLAIMS,
            DELETE_POSITION,
            DELETE_CLAIM,
            DROP_IF_EMPTY,
        ] {
            assert!(!sql.contains("sp_cdc"), "{sql}");
        }
    }
}
